//! sevmirror's own guest OS, built from `guest-os/` by this crate's build script and
//! embedded: the kernel `sevmirror run` (and the demo, the tests and `bench`) boots by
//! default, and that `measure` and `owner verify` assume unless told `--kernel FILE`.
//!
//! It is an ELF executable the firmware loads by the ELF hand-off protocol (os-loader
//! `load`, docs/architecture.md §8); it runs the workloads (`selftest`, `idle`, `dirty`,
//! `canary`) the VMM names in fw_cfg.

/// The guest OS's ELF file.
pub static IMAGE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/guest-os.elf"));

#[cfg(test)]
mod tests {
    use super::IMAGE;
    use guest_abi::layout;
    use os_loader::load::{detect, KernelFormat};

    #[test]
    fn image_is_an_elf_kernel_the_loader_takes() {
        assert_eq!(detect(IMAGE).unwrap(), KernelFormat::Elf);
    }

    #[test]
    fn image_lies_between_the_firmware_area_and_the_sev_area() {
        let elf = os_loader::elf::ElfImage::parse(IMAGE).unwrap();
        for seg in elf.segments() {
            assert!(seg.paddr >= layout::FW_AREA_END, "{seg:?}");
            assert!(seg.paddr + seg.mem_size <= layout::SEV_AREA_BASE, "{seg:?}");
        }
    }
}
