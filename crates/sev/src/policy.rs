//! The guest policy (AMD SEV API spec 0.24, §3 "Guest Policy"): a 32-bit field the guest
//! owner sets at launch and the firmware enforces for the guest's lifetime.

use std::fmt;

/// A guest policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Policy(pub u32);

impl Policy {
    /// Debugging of the guest is disallowed (DBG_DECRYPT/DBG_ENCRYPT fail).
    pub const NODBG: u32 = 1 << 0;
    /// Sharing keys with other guests is disallowed.
    pub const NOKS: u32 = 1 << 1;
    /// SEV-ES is required.
    pub const ES: u32 = 1 << 2;
    /// Sending the guest to another platform is disallowed.
    pub const NOSEND: u32 = 1 << 3;
    /// The guest must not be sent outside the domain.
    pub const DOMAIN: u32 = 1 << 4;
    /// The guest must not be sent to another platform without SEV.
    pub const SEV: u32 = 1 << 5;
    /// Bits that are defined; the rest (up to the API version) must be zero.
    pub const DEFINED: u32 = 0x3f | 0xffff << 16;

    /// Whether all of `bits` are set.
    pub fn has(self, bits: u32) -> bool {
        self.0 & bits == bits
    }

    /// Minimum firmware API major version the guest requires (bits 23:16).
    pub fn api_major(self) -> u8 {
        (self.0 >> 16) as u8
    }

    /// Minimum firmware API minor version the guest requires (bits 31:24).
    pub fn api_minor(self) -> u8 {
        (self.0 >> 24) as u8
    }

    /// Whether a firmware of API version `major.minor` may run this guest.
    pub fn allows_api(self, major: u8, minor: u8) -> bool {
        (major, minor) >= (self.api_major(), self.api_minor())
    }

    /// The policy as the little-endian bytes measured and MACed by the firmware.
    pub fn to_le_bytes(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)?;
        let names = [
            (Self::NODBG, "NODBG"),
            (Self::NOKS, "NOKS"),
            (Self::ES, "ES"),
            (Self::NOSEND, "NOSEND"),
            (Self::DOMAIN, "DOMAIN"),
            (Self::SEV, "SEV"),
        ];
        let set: Vec<&str> = names
            .iter()
            .filter(|(b, _)| self.has(*b))
            .map(|(_, n)| *n)
            .collect();
        if !set.is_empty() {
            write!(f, " ({})", set.join("|"))?;
        }
        if self.api_major() != 0 || self.api_minor() != 0 {
            write!(f, " api>={}.{}", self.api_major(), self.api_minor())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_and_api_version() {
        let p = Policy(Policy::NODBG | Policy::NOSEND | 0x0118 << 16);
        assert!(p.has(Policy::NODBG) && p.has(Policy::NOSEND) && !p.has(Policy::ES));
        assert_eq!((p.api_major(), p.api_minor()), (0x18, 0x01));
        assert!(p.allows_api(0x18, 0x01) && p.allows_api(0x19, 0) && !p.allows_api(0x18, 0));
        assert_eq!(p.to_string(), "0x1180009 (NODBG|NOSEND) api>=24.1");
    }
}
