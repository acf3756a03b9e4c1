//! The default firmware image, built from `firmware/` by this crate's build script and
//! embedded, so `sevmirror` needs no firmware file.
//!
//! The image is a flat 1 MiB ROM ending at 4 GiB with an OVMF-compatible footer GUID
//! table. It is trusted input for the VMM only in the sense that the user chose it; the
//! VMM still parses its table defensively (a `--firmware FILE` goes through the same path).

/// The firmware image bytes.
pub static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/firmware.bin"));

/// Guest addresses of a few firmware symbols (for tests and diagnostics).
pub mod symbols {
    include!(concat!(env!("OUT_DIR"), "/symbols.rs"));
}

#[cfg(test)]
mod tests {
    use super::IMAGE;
    use fwtable::{guid, EntryValue, Table};
    use guest_abi::layout;

    #[test]
    fn image_is_a_rom_ending_at_4gib_with_a_reset_vector() {
        assert_eq!(IMAGE.len() as u64, layout::FW_IMAGE_SIZE);
        // jmp near (E9) at 0xFFFFFFF0.
        assert_eq!(IMAGE[IMAGE.len() - 16], 0xe9);
    }

    #[test]
    fn table_declares_sev_areas_and_the_services_page() {
        let table = Table::parse(IMAGE).unwrap();
        let value = |g| {
            let entry = table.find(g).unwrap().unwrap();
            EntryValue::decode(IMAGE, &entry).unwrap()
        };
        match value(guid::SEV_SECRET_BLOCK) {
            EntryValue::SevSecretBlock(a) => {
                assert_eq!(u64::from(a.base), layout::SEV_SECRET_BASE);
                assert_eq!(u64::from(a.size), layout::SEV_SECRET_SIZE);
            }
            other => panic!("{other:?}"),
        }
        match value(guid::SERVICES_DESCRIPTOR) {
            EntryValue::Services(d) => assert_eq!(d.services_gpa, layout::SERVICES_GPA),
            other => panic!("{other:?}"),
        }
        match value(guid::SEV_ES_RESET_BLOCK) {
            // The AP entry code lives in the image's last 4 KiB.
            EntryValue::SevEsResetBlock(r) => {
                assert!(u64::from(r.reset_address()) >= (1 << 32) - 0x1000)
            }
            other => panic!("{other:?}"),
        }
        let report = fwtable::report(IMAGE).unwrap();
        assert_eq!(report.entries.len(), 6);
        let helper = table.find(guid::MIRROR_HELPER_DESCRIPTOR).unwrap().unwrap();
        let d = helper_abi::descriptor::HelperDescriptor::decode(helper.data).unwrap();
        assert_eq!(u64::from(d.entry32), crate::symbols::HELPER_ENTRY32);
        assert_eq!(d.region_base, layout::HELPER_REGION_BASE);
    }
}
