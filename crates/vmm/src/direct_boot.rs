//! Direct boot: a kernel, an initrd and a command line handed to the firmware through
//! fw_cfg, as QEMU hands over `-kernel/-initrd/-append` (`hw/i386/x86-common.c`
//! `x86_load_linux`), and, under SEV, the hashes table that measures them.
//!
//! The fw_cfg items (guest-abi `fwcfg`):
//!
//! | item | contents |
//! |---|---|
//! | `KERNEL_SIZE`, `KERNEL_DATA` | a bzImage's protected-mode kernel, or a whole ELF file |
//! | `SETUP_SIZE`, `SETUP_DATA` | a bzImage's setup sectors, unmodified; empty for an ELF file |
//! | `INITRD_SIZE`, `INITRD_DATA` | the initrd (absent without one, as in QEMU) |
//! | `CMDLINE_SIZE`, `CMDLINE_DATA` | the command line and its NUL (always present) |
//! | `KERNEL_ADDR`, `SETUP_ADDR`, `CMDLINE_ADDR` | QEMU's suggested addresses (0x100000, 0x10000, 0x20000) |
//! | `INITRD_ADDR` | 0 (QEMU computes one for its option ROM; firmware that places the initrd itself ignores it) |
//! | file `etc/boot/kernel` | the whole kernel file, as QEMU 9.2 and later pass it |
//!
//! A file is split as QEMU splits it (`os_loader::bzimage::fw_cfg_setup_len`): "HdrS" at
//! 0x202 makes it a Linux kernel, anything else goes whole in the kernel item. The setup
//! header is never patched: QEMU patches it only for guests without SEV, for its own
//! option ROM, and our firmware builds the zero page itself; so the setup and kernel
//! items always add up to the file, whose SHA-256 the hashes table carries.
//!
//! The VMM does not judge the kernel beyond that split: the firmware parses it and says
//! what is wrong with it (a guest's loader must not trust the host's checks anyway).

use guest_abi::fwcfg;
use os_loader::hashes::{SevHashes, PADDED_SIZE};

/// Why a kernel cannot be passed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectBootError {
    /// The kernel file is empty.
    #[error("the kernel file is empty")]
    EmptyKernel,
    /// A Linux header whose setup sectors run past the end of the file.
    #[error("invalid kernel header: its setup sectors run past the end of the {len}-byte file")]
    SetupPastEnd {
        /// The file's length.
        len: usize,
    },
    /// A blob larger than a fw_cfg item can describe.
    #[error("the {what} is {len} bytes; a fw_cfg item holds less than 4 GiB")]
    TooLarge {
        /// Which blob.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The command line contains a NUL byte (it travels NUL-terminated).
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
}

/// QEMU's suggested load address of the protected-mode kernel.
const QEMU_KERNEL_ADDR: u32 = 0x10_0000;
/// QEMU's suggested address of the setup sectors ("high and recent kernel").
const QEMU_SETUP_ADDR: u32 = 0x1_0000;
/// QEMU's suggested address of the command line.
const QEMU_CMDLINE_ADDR: u32 = 0x2_0000;

/// A kernel, initrd and command line for the firmware to boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectBoot {
    kernel: Vec<u8>,
    initrd: Option<Vec<u8>>,
    cmdline: String,
    setup_len: usize,
}

fn fits(what: &'static str, len: usize) -> Result<u32, DirectBootError> {
    u32::try_from(len).map_err(|_| DirectBootError::TooLarge { what, len })
}

impl DirectBoot {
    /// Checks what can be checked without parsing the kernel: a non-empty file that splits
    /// as QEMU splits it, sizes that fit fw_cfg, a command line without NUL.
    pub fn new(
        kernel: Vec<u8>,
        initrd: Option<Vec<u8>>,
        cmdline: String,
    ) -> Result<DirectBoot, DirectBootError> {
        if kernel.is_empty() {
            return Err(DirectBootError::EmptyKernel);
        }
        fits("kernel", kernel.len())?;
        if let Some(i) = &initrd {
            fits("initrd", i.len())?;
        }
        fits("command line", cmdline.len() + 1)?;
        if cmdline.contains('\0') {
            return Err(DirectBootError::CmdlineNul);
        }
        let setup_len = os_loader::bzimage::fw_cfg_setup_len(&kernel)
            .ok_or(DirectBootError::SetupPastEnd { len: kernel.len() })?;
        Ok(DirectBoot {
            kernel,
            initrd,
            cmdline,
            setup_len,
        })
    }

    /// The kernel file.
    pub fn kernel(&self) -> &[u8] {
        &self.kernel
    }

    /// The initrd, if any.
    pub fn initrd(&self) -> Option<&[u8]> {
        self.initrd.as_deref()
    }

    /// The command line (without its NUL).
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Bytes of the file in the setup item (0 for anything but a Linux kernel).
    pub fn setup_len(&self) -> usize {
        self.setup_len
    }

    /// The SHA-256 of kernel, initrd (of nothing without one) and command line (with its
    /// NUL), as QEMU computes them for `kernel-hashes=on`.
    pub fn hashes(&self) -> SevHashes {
        SevHashes::of(
            &self.kernel,
            self.initrd.as_deref().unwrap_or(&[]),
            self.cmdline.as_bytes(),
        )
    }

    /// The padded SEV hashes table the launch measures after the firmware.
    pub fn hashes_table(&self) -> [u8; PADDED_SIZE] {
        self.hashes().table()
    }

    /// The numbered fw_cfg items, as QEMU sets them (key, contents).
    pub fn fw_cfg_items(&self) -> Vec<(u16, Vec<u8>)> {
        let le = |v: u32| v.to_le_bytes().to_vec();
        let (setup, kernel) = self.kernel.split_at(self.setup_len);
        // The sizes were checked to fit u32 in `new`.
        let len = |b: &[u8]| le(b.len() as u32);
        let mut cmdline = self.cmdline.as_bytes().to_vec();
        cmdline.push(0);
        let mut items = vec![
            (fwcfg::KEY_KERNEL_ADDR, le(QEMU_KERNEL_ADDR)),
            (fwcfg::KEY_KERNEL_SIZE, len(kernel)),
            (fwcfg::KEY_KERNEL_DATA, kernel.to_vec()),
            (fwcfg::KEY_SETUP_ADDR, le(QEMU_SETUP_ADDR)),
            (fwcfg::KEY_SETUP_SIZE, len(setup)),
            (fwcfg::KEY_SETUP_DATA, setup.to_vec()),
            (fwcfg::KEY_CMDLINE_ADDR, le(QEMU_CMDLINE_ADDR)),
            (fwcfg::KEY_CMDLINE_SIZE, len(&cmdline)),
            (fwcfg::KEY_CMDLINE_DATA, cmdline),
        ];
        if let Some(initrd) = &self.initrd {
            items.extend([
                (fwcfg::KEY_INITRD_ADDR, le(0)),
                (fwcfg::KEY_INITRD_SIZE, len(initrd)),
                (fwcfg::KEY_INITRD_DATA, initrd.clone()),
            ]);
        }
        items
    }

    /// The named fw_cfg files (name, contents): `etc/boot/kernel`.
    pub fn fw_cfg_files(&self) -> Vec<(String, Vec<u8>)> {
        vec![(fwcfg::FILE_BOOT_KERNEL.to_string(), self.kernel.clone())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A file with a Linux setup header ("HdrS", `setup_sects` = `sects`) and `len` bytes.
    fn linux(sects: u8, len: usize) -> Vec<u8> {
        let mut f: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f[0x1f1] = sects;
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f
    }

    fn items(b: &DirectBoot) -> BTreeMap<u16, Vec<u8>> {
        b.fw_cfg_items().into_iter().collect()
    }

    fn u32_of(v: &[u8]) -> u32 {
        u32::from_le_bytes(v.try_into().unwrap())
    }

    #[test]
    fn a_bzimage_is_split_into_setup_and_kernel_as_qemu_splits_it() {
        let file = linux(3, 0x3000);
        let b = DirectBoot::new(file.clone(), Some(vec![7; 100]), "console=ttyS0".into()).unwrap();
        let it = items(&b);
        assert_eq!(u32_of(&it[&fwcfg::KEY_SETUP_SIZE]), 0x800);
        assert_eq!(it[&fwcfg::KEY_SETUP_DATA], &file[..0x800]);
        assert_eq!(u32_of(&it[&fwcfg::KEY_KERNEL_SIZE]), 0x2800);
        assert_eq!(it[&fwcfg::KEY_KERNEL_DATA], &file[0x800..]);
        assert_eq!(u32_of(&it[&fwcfg::KEY_KERNEL_ADDR]), 0x10_0000);
        assert_eq!(u32_of(&it[&fwcfg::KEY_SETUP_ADDR]), 0x1_0000);
        assert_eq!(u32_of(&it[&fwcfg::KEY_CMDLINE_SIZE]), 14);
        assert_eq!(it[&fwcfg::KEY_CMDLINE_DATA], b"console=ttyS0\0");
        assert_eq!(u32_of(&it[&fwcfg::KEY_INITRD_SIZE]), 100);
        assert_eq!(it[&fwcfg::KEY_INITRD_DATA], vec![7; 100]);
        assert_eq!(
            b.fw_cfg_files(),
            vec![("etc/boot/kernel".to_string(), file.clone())]
        );
        // The hashes are the file's, the initrd's and the command line's with its NUL,
        // and the setup and kernel items add up to the file.
        let h = b.hashes();
        let mut joined = it[&fwcfg::KEY_SETUP_DATA].clone();
        joined.extend_from_slice(&it[&fwcfg::KEY_KERNEL_DATA]);
        assert_eq!(h.kernel, os_loader::hashes::sha256(&joined));
        assert_eq!(h.initrd, os_loader::hashes::sha256(&[7; 100]));
        assert_eq!(
            h.cmdline,
            os_loader::hashes::sha256(&it[&fwcfg::KEY_CMDLINE_DATA])
        );
        assert_eq!(b.hashes_table(), h.table());
    }

    #[test]
    fn anything_else_goes_whole_in_the_kernel_item() {
        let elf = b"\x7fELF and then some".to_vec();
        let b = DirectBoot::new(elf.clone(), None, String::new()).unwrap();
        let it = items(&b);
        assert_eq!(u32_of(&it[&fwcfg::KEY_SETUP_SIZE]), 0);
        assert!(it[&fwcfg::KEY_SETUP_DATA].is_empty());
        assert_eq!(it[&fwcfg::KEY_KERNEL_DATA], elf);
        // No initrd: no initrd items (the firmware reads size 0), the empty initrd's hash.
        assert!(!it.contains_key(&fwcfg::KEY_INITRD_SIZE));
        assert_eq!(b.hashes().initrd, os_loader::hashes::sha256(&[]));
        // The command line is always there, if only its NUL.
        assert_eq!(it[&fwcfg::KEY_CMDLINE_DATA], b"\0");
        assert_eq!(u32_of(&it[&fwcfg::KEY_CMDLINE_SIZE]), 1);
        // setup_sects 0 means 4.
        let b = DirectBoot::new(linux(0, 0x1000), None, String::new()).unwrap();
        assert_eq!(b.setup_len(), 0xa00);
    }

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert_eq!(
            DirectBoot::new(vec![], None, String::new()),
            Err(DirectBootError::EmptyKernel)
        );
        assert_eq!(
            DirectBoot::new(linux(200, 0x2000), None, String::new()),
            Err(DirectBootError::SetupPastEnd { len: 0x2000 })
        );
        assert_eq!(
            DirectBoot::new(vec![1], None, "a\0b".into()),
            Err(DirectBootError::CmdlineNul)
        );
        let e = DirectBoot::new(linux(200, 0x2000), None, String::new()).unwrap_err();
        assert!(e.to_string().contains("setup sectors run past the end"));
    }
}
