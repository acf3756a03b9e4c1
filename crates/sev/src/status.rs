//! Status codes the SEV firmware returns (AMD SEV API spec 0.24, §4.4 "Status Codes").

use std::fmt;

/// A status code from the SEV firmware (or the emulated PSP). Codes this crate does not
/// know keep their raw value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SevStatus(pub u32);

macro_rules! statuses {
    ($($name:ident = $value:expr, $text:expr;)*) => {
        impl SevStatus {
            $(
                #[doc = $text]
                pub const $name: SevStatus = SevStatus($value);
            )*

            /// The spec's name of the code, if it is defined.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// What the code means, if it is defined.
            pub fn description(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($text),)*
                    _ => None,
                }
            }

            /// Every defined code.
            pub const ALL: &'static [SevStatus] = &[$(SevStatus::$name),*];
        }
    };
}

statuses! {
    SUCCESS = 0x00, "the command completed";
    INVALID_PLATFORM_STATE = 0x01, "the platform state is invalid for this command";
    INVALID_GUEST_STATE = 0x02, "the guest state is invalid for this command";
    INVALID_CONFIG = 0x03, "the platform configuration is invalid";
    INVALID_LENGTH = 0x04, "a memory buffer is too small";
    ALREADY_OWNED = 0x05, "the platform is already owned";
    INVALID_CERTIFICATE = 0x06, "the certificate is invalid";
    POLICY_FAILURE = 0x07, "the request is not allowed by the guest policy";
    INACTIVE = 0x08, "the guest is inactive";
    INVALID_ADDRESS = 0x09, "the address is invalid";
    BAD_SIGNATURE = 0x0a, "a signature is invalid";
    BAD_MEASUREMENT = 0x0b, "a measurement (MAC) did not match";
    ASID_OWNED = 0x0c, "the ASID is already owned";
    INVALID_ASID = 0x0d, "the ASID is invalid";
    WBINVD_REQUIRED = 0x0e, "WBINVD must be issued first";
    DF_FLUSH_REQUIRED = 0x0f, "DF_FLUSH must be issued first";
    INVALID_GUEST = 0x10, "the guest handle is invalid";
    INVALID_COMMAND = 0x11, "the command is invalid";
    ACTIVE = 0x12, "the guest is active";
    HWERROR_PLATFORM = 0x13, "hardware error (platform)";
    HWERROR_UNSAFE = 0x14, "hardware error (unsafe)";
    UNSUPPORTED = 0x15, "the feature is not supported";
    INVALID_PARAM = 0x16, "a parameter is invalid";
    RESOURCE_LIMIT = 0x17, "out of a resource needed to complete the command";
    SECURE_DATA_INVALID = 0x18, "the part-specific integrity check failed";
}

impl fmt::Display for SevStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.name(), self.description()) {
            (Some(name), Some(text)) => write!(f, "{name} ({:#04x}: {text})", self.0),
            _ => write!(f, "unknown SEV status {:#x}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_defined_code_round_trips_and_unknown_ones_keep_their_value() {
        for &s in SevStatus::ALL {
            assert_eq!(SevStatus(s.0), s);
            assert!(s.to_string().contains(s.name().unwrap()));
        }
        assert_eq!(SevStatus::ALL.len(), 0x19);
        let unknown = SevStatus(0x99);
        assert_eq!(unknown.name(), None);
        assert_eq!(unknown.to_string(), "unknown SEV status 0x99");
    }
}
