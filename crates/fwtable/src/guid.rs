//! GUIDs in EFI binary layout and the GUIDs known to live in the footer table.

use core::fmt;

use crate::TableError;

/// A GUID stored in EFI (`EFI_GUID`) binary layout: the first three fields
/// (`u32`, `u16`, `u16`) little-endian, the last eight bytes in text order.
/// This is Python's `uuid.UUID(bytes_le=...)` and QEMU's
/// `qemu_uuid_bswap(qemu_uuid_parse(...))`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid([u8; 16]);

/// Value of one hex digit, or `None`.
const fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl Guid {
    /// Size of a GUID in bytes.
    pub const SIZE: usize = 16;

    /// Parses canonical text (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, either
    /// case) into EFI layout. Usable in `const` items.
    pub const fn try_parse(text: &str) -> Result<Guid, TableError> {
        let s = text.as_bytes();
        if s.len() != 36 || s[8] != b'-' || s[13] != b'-' || s[18] != b'-' || s[23] != b'-' {
            return Err(TableError::GuidText);
        }
        // Big-endian (text order) bytes first.
        let mut be = [0u8; 16];
        let mut i = 0; // index into the text
        let mut o = 0; // index into `be`
        while i < 36 {
            if i == 8 || i == 13 || i == 18 || i == 23 {
                i += 1;
                continue;
            }
            let (hi, lo) = match (hex_val(s[i]), hex_val(s[i + 1])) {
                (Some(hi), Some(lo)) => (hi, lo),
                _ => return Err(TableError::GuidText),
            };
            be[o] = (hi << 4) | lo;
            o += 1;
            i += 2;
        }
        // Swap the first three fields into little-endian.
        Ok(Guid([
            be[3], be[2], be[1], be[0], be[5], be[4], be[7], be[6], be[8], be[9], be[10], be[11],
            be[12], be[13], be[14], be[15],
        ]))
    }

    /// Parses a GUID literal at compile time.
    ///
    /// Meant for `const` items: a malformed literal fails the build. For text
    /// that comes from a user or a file use [`Guid::try_parse`] or `FromStr`.
    pub const fn parse(text: &str) -> Guid {
        match Guid::try_parse(text) {
            Ok(guid) => guid,
            Err(_) => panic!("malformed GUID literal"),
        }
    }

    /// Wraps 16 bytes already in EFI layout (as read from a firmware image).
    pub const fn from_bytes(bytes: [u8; 16]) -> Guid {
        Guid(bytes)
    }

    /// The 16 bytes in EFI layout (as written to a firmware image).
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl core::str::FromStr for Guid {
    type Err = TableError;

    fn from_str(s: &str) -> Result<Guid, TableError> {
        Guid::try_parse(s)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
        )?;
        for (i, byte) in b[8..].iter().enumerate() {
            if i == 2 {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

/// Table footer GUID, 48 bytes before the end of the image
/// (edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.nasm.inc`; QEMU
/// `hw/i386/pc_sysfw_ovmf.c` `OVMF_TABLE_FOOTER_GUID`).
pub const FOOTER: Guid = Guid::parse("96b582de-1fb2-45f7-baea-a366c55a082d");

/// SEV-ES reset block: `u32` = AP reset IP (bits 15:0) and CS base bits 31:16
/// (edk2 `ResetVectorVtf0.nasm.inc` `sevEsResetBlock`; QEMU `SEV_INFO_BLOCK_GUID`).
pub const SEV_ES_RESET_BLOCK: Guid = Guid::parse("00f771de-1a7e-4fcb-890e-68c77e2fb44e");

/// SEV secret block: `u32` base, `u32` size of the LAUNCH_SECRET area
/// (edk2 `ResetVectorVtf0.nasm.inc` `sevSecretBlock`; QEMU `SEV_SECRET_GUID`).
pub const SEV_SECRET_BLOCK: Guid = Guid::parse("4c2eb361-7d9b-4cc3-8081-127c90d3d294");

/// SEV hash table block: `u32` base, `u32` size of the kernel/initrd/cmdline
/// hash table (edk2 `ResetVectorVtf0.nasm.inc` `sevFwHashBlock`; QEMU
/// `SEV_HASH_TABLE_RV_GUID`).
pub const SEV_HASH_TABLE: Guid = Guid::parse("7255371f-3a3b-4b04-927b-1da6efa8d454");

/// SEV metadata offset: `u32` = distance from the end of the image to the
/// "ASEV" header (edk2 `OvmfPkg/ResetVector/X64/OvmfSevMetadata.nasm.inc`).
pub const SEV_METADATA: Guid = Guid::parse("dc886566-984a-4798-a75e-5585a7bf67cc");

/// TDX metadata offset: `u32` = distance from the end of the image to the
/// "TDVF" descriptor (edk2 `OvmfPkg/ResetVector/X64/IntelTdxMetadata.nasm.inc`;
/// QEMU `hw/i386/tdvf.c` `TDX_METADATA_OFFSET_GUID`).
pub const TDX_METADATA: Guid = Guid::parse("e47a6535-984a-4798-865e-4685a7bf8ec2");

/// IGVM parameter metadata offset: `u32` = distance from the end of the image
/// to an "IGVM" header (edk2 `OvmfPkg/ResetVector/X64/IgvmMetadata.nasm.inc`,
/// added after edk2-stable2022.11).
pub const IGVM_METADATA: Guid = Guid::parse("784fa70e-3176-4677-8a20-04b68699e374");

/// SEV-SNP boot block of the pre-upstream SNP patches for QEMU and OVMF
/// (2021 RFC series, `SEV_SNP_BOOT_BLOCK_GUID`); never merged into edk2.
pub const SEV_SNP_BOOT_BLOCK: Guid = Guid::parse("bd39c0c2-2f8e-4243-83e8-1b74cebcb7d9");

/// Reset vector entry read by coconut-svsm's IGVM builder
/// (`OVMF_RESET_VECTOR_GUID`: `u32` vector address, `u32` compatibility mask);
/// not emitted by upstream edk2.
pub const OVMF_RESET_VECTOR: Guid = Guid::parse("813d7b2c-9558-4d88-8b31-1427a85abe69");

/// SVSM information block of coconut-svsm firmware images (`SVSM_INFO_GUID`).
pub const SVSM_INFO: Guid = Guid::parse("a789a612-0597-4c4b-a49f-cbb1fe9d1ddd");

/// This project's guest-services descriptor: where the MMIO guest-services
/// page is (see [`ServicesDescriptor`](crate::ServicesDescriptor)).
pub const SERVICES_DESCRIPTOR: Guid = Guid::parse("729aebd5-f860-4e4e-94bb-b55fa5fa630a");

/// This project's mirror helper descriptor (entry point and region of the
/// migration helper; layout versioned by its first `u16`, see
/// [`MirrorHelperRaw`](crate::MirrorHelperRaw)).
pub const MIRROR_HELPER_DESCRIPTOR: Guid = Guid::parse("316739c7-2233-4c79-8605-f42df59c6913");

/// Every GUID this crate can name, with its name.
pub const KNOWN: &[(Guid, &str)] = &[
    (FOOTER, "OVMF table footer"),
    (SEV_ES_RESET_BLOCK, "SEV-ES reset block"),
    (SEV_SECRET_BLOCK, "SEV secret block"),
    (SEV_HASH_TABLE, "SEV hash table block"),
    (SEV_METADATA, "SEV metadata offset"),
    (TDX_METADATA, "TDX metadata offset"),
    (IGVM_METADATA, "IGVM metadata offset"),
    (SEV_SNP_BOOT_BLOCK, "SEV-SNP boot block (pre-upstream)"),
    (OVMF_RESET_VECTOR, "OVMF reset vector (coconut-svsm)"),
    (SVSM_INFO, "SVSM information block"),
    (SERVICES_DESCRIPTOR, "sevmirror guest-services descriptor"),
    (
        MIRROR_HELPER_DESCRIPTOR,
        "sevmirror mirror helper descriptor",
    ),
];

/// Human name of a known GUID.
pub fn known_name(guid: &Guid) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|(known, _)| known == guid)
        .map(|&(_, name)| name)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::ToString;

    use super::*;

    #[test]
    fn footer_guid_matches_ovmf_bytes() {
        // Bytes as written by edk2 ResetVectorVtf0 (`DB 0xDE, 0x82, ...`).
        let bytes = [
            0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a,
            0x08, 0x2d,
        ];
        assert_eq!(FOOTER.as_bytes(), &bytes);
        assert_eq!(Guid::from_bytes(bytes), FOOTER);
        assert_eq!(FOOTER.to_string(), "96b582de-1fb2-45f7-baea-a366c55a082d");
    }

    #[test]
    fn sev_es_reset_guid_matches_ovmf_bytes() {
        let bytes = [
            0xde, 0x71, 0xf7, 0x00, 0x7e, 0x1a, 0xcb, 0x4f, 0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f,
            0xb4, 0x4e,
        ];
        assert_eq!(SEV_ES_RESET_BLOCK.as_bytes(), &bytes);
    }

    #[test]
    fn display_round_trips_for_every_known_guid() {
        for (guid, name) in KNOWN {
            let text = guid.to_string();
            assert_eq!(text, text.to_lowercase());
            assert_eq!(Guid::try_parse(&text), Ok(*guid), "{name}");
            assert_eq!(known_name(guid), Some(*name));
        }
    }

    #[test]
    fn parse_accepts_upper_case() {
        assert_eq!(
            Guid::try_parse("DC886566-984A-4798-A75E-5585A7BF67CC"),
            Ok(SEV_METADATA)
        );
    }

    #[test]
    fn parse_rejects_bad_text() {
        for bad in [
            "",
            "96b582de-1fb2-45f7-baea-a366c55a082",
            "96b582de-1fb2-45f7-baea-a366c55a082dd",
            "96b582de1fb2-45f7-baea-a366c55a082d0",
            "96b582de-1fb2-45f7-baea-a366c55a082g",
            "96b582de-1fb2-45f7-baea_a366c55a082d",
            "+6b582de-1fb2-45f7-baea-a366c55a082d",
            "96b582dé-1fb2-45f7-baea-a366c55a082",
        ] {
            assert_eq!(Guid::try_parse(bad), Err(TableError::GuidText), "{bad:?}");
            assert!(bad.parse::<Guid>().is_err());
        }
    }

    #[test]
    fn unknown_guid_has_no_name() {
        assert_eq!(known_name(&Guid::from_bytes([0; 16])), None);
    }
}
