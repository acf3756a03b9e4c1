//! Linux bzImage files, by the x86 boot protocol (`Documentation/arch/x86/boot.rst`).
//!
//! A bzImage is the real-mode setup (`(setup_sects + 1) * 512` bytes; the setup header
//! sits at 0x1f1 in its first sector) followed by the protected-mode kernel, which the
//! loader copies to its load address. This loader enters the kernel through the 64-bit
//! entry point (load address + 0x200, boot.rst "64-bit Boot Protocol"), so it needs
//! protocol 2.06 or newer (`cmdline_size`) and `XLF_KERNEL_64` (2.12); the setup code
//! itself is never run.

use crate::boot_params::{
    SetupHeader, BOOT_FLAG, HEADER_MAGIC, LOADED_HIGH, SETUP_HEADER_OFFSET, SETUP_HEADER_SIZE,
    XLF_CAN_BE_LOADED_ABOVE_4G, XLF_KERNEL_64,
};

/// Oldest boot protocol accepted: 2.06 has `cmdline_size`.
pub const MIN_PROTOCOL: u16 = 0x0206;
/// The protocol that added `xloadflags`, where `XLF_KERNEL_64` says the 64-bit entry exists.
pub const PROTOCOL_XLOADFLAGS: u16 = 0x020c;
/// Offset of the 64-bit entry point from the load address.
pub const ENTRY64_OFFSET: u64 = 0x200;
/// Load address of a kernel that names no `pref_address` (boot.rst: 0x100000).
pub const DEFAULT_LOAD_ADDRESS: u64 = 0x10_0000;
/// Setup sectors when `setup_sects` is 0 (boot.rst: "if this field is 0, the real value is 4").
const DEFAULT_SETUP_SECTS: u8 = 4;

/// Offsets of the fields checked before the header is decoded.
const BOOT_FLAG_AT: usize = 0x1fe;
const JUMP_LEN_AT: usize = 0x201;
const MAGIC_AT: usize = 0x202;
const VERSION_AT: usize = 0x206;
/// The header must reach through `init_size` (0x260..0x264, protocol 2.10).
const HEADER_END_MIN: usize = 0x264;
/// End of the header this loader knows (after `kernel_info_offset`).
const HEADER_END_MAX: usize = SETUP_HEADER_OFFSET + SETUP_HEADER_SIZE;

/// What is wrong with a bzImage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BzError {
    /// Too short to hold a setup header.
    #[error("{len} bytes is too short for a bzImage setup header")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// No 0xAA55 boot flag at 0x1fe or no "HdrS" at 0x202.
    #[error("not a Linux bzImage (no boot flag 0xAA55 / \"HdrS\" header)")]
    NotBzImage,
    /// Boot protocol older than [`MIN_PROTOCOL`].
    #[error("boot protocol {}.{:02} is too old: this loader needs 2.06 or newer", version >> 8, version & 0xff)]
    ProtocolTooOld {
        /// The kernel's protocol version.
        version: u16,
    },
    /// The header ends before the fields its protocol version promises.
    #[error("setup header ends at {end:#x}, before init_size (needs {HEADER_END_MIN:#x})")]
    HeaderTruncated {
        /// Where the header says it ends (0x202 + the jump's offset byte).
        end: usize,
    },
    /// Not `LOADED_HIGH`: a zImage, loaded at 0x10000, which this loader does not do.
    #[error("not a bzImage: the kernel does not load high (an old zImage)")]
    NotLoadedHigh,
    /// No 64-bit entry point (`XLF_KERNEL_64`, protocol 2.12).
    #[error("the kernel has no 64-bit entry point (xloadflags lacks XLF_KERNEL_64; protocol {}.{:02})", version >> 8, version & 0xff)]
    No64BitEntry {
        /// The kernel's protocol version.
        version: u16,
    },
    /// `kernel_alignment` of a relocatable kernel is not a power of two of at least 4 KiB.
    #[error("kernel_alignment {align:#x} is not a power of two of at least 4 KiB")]
    BadAlignment {
        /// The header's `kernel_alignment`.
        align: u32,
    },
    /// The file is shorter than its setup sectors.
    #[error("setup is {setup_len:#x} bytes but the file has only {len:#x}")]
    SetupTruncated {
        /// `(setup_sects + 1) * 512`.
        setup_len: usize,
        /// File length.
        len: usize,
    },
    /// The protected-mode kernel is shorter than `syssize` says, or empty.
    #[error("protected-mode kernel is {have:#x} bytes, syssize says {want:#x}")]
    KernelTruncated {
        /// `syssize * 16`.
        want: u64,
        /// Bytes after the setup.
        have: u64,
    },
}

/// A checked setup header: enough to plan a load (the VMM's fw_cfg hands the firmware
/// the setup sectors and the kernel separately, so the kernel bytes need not be here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BzHeader {
    hdr: SetupHeader,
    setup_len: usize,
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([*s.first()?, *s.get(1)?]))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    let mut v = [0u8; 4];
    v.copy_from_slice(s);
    Some(u32::from_le_bytes(v))
}

impl BzHeader {
    /// Checks the setup header at the start of `bytes` (the setup sectors or the whole
    /// file).
    pub fn parse(bytes: &[u8]) -> Result<BzHeader, BzError> {
        let too_short = BzError::TooShort { len: bytes.len() };
        if le16(bytes, BOOT_FLAG_AT).ok_or(too_short)? != BOOT_FLAG
            || le32(bytes, MAGIC_AT).ok_or(too_short)? != HEADER_MAGIC
        {
            return Err(BzError::NotBzImage);
        }
        let version = le16(bytes, VERSION_AT).ok_or(too_short)?;
        if version < MIN_PROTOCOL {
            return Err(BzError::ProtocolTooOld { version });
        }
        // The jump at 0x200 skips the header: 0x202 + its offset byte is the header's end.
        let end = usize::from(*bytes.get(JUMP_LEN_AT).ok_or(too_short)?) + MAGIC_AT;
        if end < HEADER_END_MIN {
            return Err(BzError::HeaderTruncated { end });
        }
        let copy_end = end.min(HEADER_END_MAX);
        let src = bytes.get(SETUP_HEADER_OFFSET..copy_end).ok_or(too_short)?;
        // Fields past an older kernel's header stay zero, as boot.rst asks of loaders
        // ("copy the setup header ... to the zero page, the rest zeroed").
        let mut raw = [0u8; SETUP_HEADER_SIZE];
        if let Some(dst) = raw.get_mut(..src.len()) {
            dst.copy_from_slice(src);
        }
        let hdr = SetupHeader::decode(&raw);
        if hdr.loadflags & LOADED_HIGH == 0 {
            return Err(BzError::NotLoadedHigh);
        }
        if version < PROTOCOL_XLOADFLAGS || hdr.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(BzError::No64BitEntry { version });
        }
        let align = hdr.kernel_alignment;
        if hdr.relocatable_kernel != 0 && (!align.is_power_of_two() || align < 0x1000) {
            return Err(BzError::BadAlignment { align });
        }
        let sects = match hdr.setup_sects {
            0 => DEFAULT_SETUP_SECTS,
            n => n,
        };
        let setup_len = (usize::from(sects) + 1) * 512;
        Ok(BzHeader { hdr, setup_len })
    }

    /// The setup header as the file has it.
    pub fn header(&self) -> SetupHeader {
        self.hdr
    }

    /// Boot protocol version (major << 8 | minor).
    pub fn version(&self) -> u16 {
        self.hdr.version
    }

    /// Bytes of real-mode setup before the protected-mode kernel.
    pub fn setup_len(&self) -> usize {
        self.setup_len
    }

    /// How the kernel may be placed.
    pub fn placement(&self) -> KernelPlacement {
        let pref = match self.hdr.pref_address {
            0 => DEFAULT_LOAD_ADDRESS,
            p => p,
        };
        if self.hdr.relocatable_kernel != 0 {
            KernelPlacement::Relocatable {
                min: pref,
                align: u64::from(self.hdr.kernel_alignment),
            }
        } else {
            KernelPlacement::Fixed { at: pref }
        }
    }

    /// Bytes the kernel needs from its load address: `init_size`, or the protected-mode
    /// code if that is longer.
    pub fn load_size(&self, kernel_len: u64) -> u64 {
        u64::from(self.hdr.init_size).max(kernel_len)
    }

    /// `true` when the kernel accepts its zero page, command line and initrd above 4 GiB.
    pub fn above_4g_ok(&self) -> bool {
        self.hdr.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G != 0
    }
}

/// Where a kernel may be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelPlacement {
    /// Relocatable: any `align`-aligned address at or above `min` (its `pref_address`).
    /// Below that, the kernel's decompressor would move itself up to `pref_address`
    /// (`arch/x86/boot/compressed/head_64.S`) no matter what the memory map says there.
    Relocatable {
        /// Lowest load address.
        min: u64,
        /// Alignment (`kernel_alignment`).
        align: u64,
    },
    /// Not relocatable: exactly at `pref_address`.
    Fixed {
        /// The load address.
        at: u64,
    },
}

/// A whole bzImage file, split into setup and protected-mode kernel.
#[derive(Clone, Copy, Debug)]
pub struct BzImage<'a> {
    header: BzHeader,
    setup: &'a [u8],
    kernel: &'a [u8],
}

impl<'a> BzImage<'a> {
    /// Checks a bzImage file and splits it.
    pub fn parse(file: &'a [u8]) -> Result<BzImage<'a>, BzError> {
        let header = BzHeader::parse(file)?;
        let setup_len = header.setup_len();
        let (Some(setup), Some(kernel)) = (file.get(..setup_len), file.get(setup_len..)) else {
            return Err(BzError::SetupTruncated {
                setup_len,
                len: file.len(),
            });
        };
        let want = u64::from(header.hdr.syssize) * 16;
        let have = kernel.len() as u64;
        if have < want || have == 0 {
            return Err(BzError::KernelTruncated { want, have });
        }
        Ok(BzImage {
            header,
            setup,
            kernel,
        })
    }

    /// The checked header.
    pub fn header(&self) -> &BzHeader {
        &self.header
    }

    /// The real-mode setup sectors (never run by this loader; part of the kernel's hash).
    pub fn setup(&self) -> &'a [u8] {
        self.setup
    }

    /// The protected-mode kernel, copied to the load address.
    pub fn kernel(&self) -> &'a [u8] {
        self.kernel
    }
}

/// How many leading bytes of a kernel file go in fw_cfg's setup item, as QEMU splits it
/// (`hw/i386/x86-common.c` `x86_load_linux`): a file with "HdrS" at 0x202 is a Linux
/// kernel whose first `(setup_sects + 1) * 512` bytes (`setup_sects` 0 meaning 4) are its
/// setup, passed unmodified (QEMU patches the header only for guests without SEV, for its
/// own option ROM; sevmirror's firmware builds the zero page itself, so it never does);
/// the rest goes in the kernel item. Any other file (an ELF OS) goes whole in the kernel
/// item: 0 bytes of setup. `None` when the setup sectors run past the end of the file
/// (QEMU refuses such a file: "invalid kernel header").
pub fn fw_cfg_setup_len(file: &[u8]) -> Option<usize> {
    if le32(file, MAGIC_AT) != Some(HEADER_MAGIC) {
        return Some(0);
    }
    let sects = match file.get(SETUP_HEADER_OFFSET).copied() {
        Some(0) | None => DEFAULT_SETUP_SECTS,
        Some(n) => n,
    };
    let len = (usize::from(sects) + 1) * 512;
    (len <= file.len()).then_some(len)
}

/// A synthetic bzImage for tests: a valid 2.15 header, `setup_sects` 3, a 64 KiB kernel.
#[cfg(test)]
pub(crate) fn test_image() -> std::vec::Vec<u8> {
    let mut f = std::vec![0u8; 4 * 512 + 0x1_0000];
    let mut h = SetupHeader::ZERO;
    h.setup_sects = 3;
    h.syssize = 0x1000;
    h.boot_flag = BOOT_FLAG;
    h.jump = 0x6aeb; // jmp short, header ends at 0x202 + 0x6a = 0x26c
    h.header = HEADER_MAGIC;
    h.version = 0x020f;
    h.loadflags = LOADED_HIGH;
    h.code32_start = 0x10_0000;
    h.initrd_addr_max = 0x7fff_ffff;
    h.kernel_alignment = 0x20_0000;
    h.relocatable_kernel = 1;
    h.min_alignment = 21;
    h.xloadflags = 0x7f;
    h.cmdline_size = 0x7ff;
    h.pref_address = 0x100_0000;
    h.init_size = 0x40_0000;
    f[SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + SETUP_HEADER_SIZE].copy_from_slice(&h.encode());
    for (i, b) in f[4 * 512..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set16(f: &mut [u8], at: usize, v: u16) {
        f[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn a_valid_image_splits_into_setup_and_kernel() {
        let f = test_image();
        let bz = BzImage::parse(&f).unwrap();
        assert_eq!(bz.setup().len(), 4 * 512);
        assert_eq!(bz.kernel().len(), 0x1_0000);
        assert_eq!(bz.kernel()[1], 1);
        assert_eq!(bz.header().version(), 0x020f);
        assert_eq!(
            bz.header().placement(),
            KernelPlacement::Relocatable {
                min: 0x100_0000,
                align: 0x20_0000
            }
        );
        assert_eq!(bz.header().load_size(0x1_0000), 0x40_0000);
        assert!(bz.header().above_4g_ok());
    }

    #[test]
    fn not_a_bzimage() {
        assert_eq!(
            BzImage::parse(&[0u8; 100]).unwrap_err(),
            BzError::TooShort { len: 100 }
        );
        let mut f = test_image();
        f[0x202] = b'X';
        assert_eq!(BzImage::parse(&f).unwrap_err(), BzError::NotBzImage);
        let mut f = test_image();
        set16(&mut f, BOOT_FLAG_AT, 0);
        assert_eq!(BzImage::parse(&f).unwrap_err(), BzError::NotBzImage);
        let elf = [0x7f, b'E', b'L', b'F'].repeat(200);
        assert_eq!(BzImage::parse(&elf).unwrap_err(), BzError::NotBzImage);
    }

    #[test]
    fn old_protocols_are_refused_with_their_version() {
        let mut f = test_image();
        set16(&mut f, VERSION_AT, 0x0205);
        let e = BzImage::parse(&f).unwrap_err();
        assert_eq!(e, BzError::ProtocolTooOld { version: 0x0205 });
        assert_eq!(
            std::format!("{e}"),
            "boot protocol 2.05 is too old: this loader needs 2.06 or newer"
        );
        // 2.10 is new enough for cmdline_size but has no xloadflags: no 64-bit entry.
        set16(&mut f, VERSION_AT, 0x020a);
        assert_eq!(
            BzImage::parse(&f).unwrap_err(),
            BzError::No64BitEntry { version: 0x020a }
        );
        let mut f = test_image();
        set16(&mut f, 0x236, 0x7e);
        assert_eq!(
            BzImage::parse(&f).unwrap_err(),
            BzError::No64BitEntry { version: 0x020f }
        );
    }

    #[test]
    fn truncated_headers_and_files_are_refused() {
        let f = test_image();
        // Cut inside the header.
        for len in [0x1f0, 0x203, 0x207, 0x240] {
            assert_eq!(
                BzImage::parse(&f[..len]).unwrap_err(),
                BzError::TooShort { len },
                "len {len:#x}"
            );
        }
        // A header that claims to end before init_size.
        let mut g = f.clone();
        g[JUMP_LEN_AT] = 0x50;
        assert_eq!(
            BzImage::parse(&g).unwrap_err(),
            BzError::HeaderTruncated { end: 0x252 }
        );
        // Cut inside the setup sectors.
        assert_eq!(
            BzImage::parse(&f[..0x600]).unwrap_err(),
            BzError::SetupTruncated {
                setup_len: 0x800,
                len: 0x600
            }
        );
        // Cut inside the kernel.
        assert_eq!(
            BzImage::parse(&f[..0x800 + 0x8000]).unwrap_err(),
            BzError::KernelTruncated {
                want: 0x1_0000,
                have: 0x8000
            }
        );
        // The header alone is enough to plan with.
        assert!(BzHeader::parse(&f[..0x800]).is_ok());
    }

    #[test]
    fn header_flags_are_checked() {
        let mut f = test_image();
        f[0x211] = 0;
        assert_eq!(BzImage::parse(&f).unwrap_err(), BzError::NotLoadedHigh);
        let mut f = test_image();
        f[0x230..0x234].copy_from_slice(&0x30_0000u32.to_le_bytes());
        assert_eq!(
            BzImage::parse(&f).unwrap_err(),
            BzError::BadAlignment { align: 0x30_0000 }
        );
        // A fixed kernel's alignment does not matter; it goes to pref_address.
        f[0x234] = 0;
        let bz = BzImage::parse(&f).unwrap();
        assert_eq!(
            bz.header().placement(),
            KernelPlacement::Fixed { at: 0x100_0000 }
        );
        // setup_sects 0 means 4.
        let mut f = test_image();
        f[0x1f1] = 0;
        assert_eq!(BzHeader::parse(&f).unwrap().setup_len(), 5 * 512);
    }

    #[test]
    fn fw_cfg_split_is_qemus() {
        let f = test_image();
        assert_eq!(fw_cfg_setup_len(&f), Some(4 * 512));
        let mut g = f.clone();
        g[0x1f1] = 0;
        assert_eq!(fw_cfg_setup_len(&g), Some(5 * 512), "setup_sects 0 means 4");
        g[0x1f1] = 200;
        assert_eq!(fw_cfg_setup_len(&g[..0x2000]), None, "setup past the end");
        // Anything without "HdrS" goes whole in the kernel item.
        let elf = [0x7f, b'E', b'L', b'F'].repeat(300);
        assert_eq!(fw_cfg_setup_len(&elf), Some(0));
        assert_eq!(fw_cfg_setup_len(&[]), Some(0));
        // A bad Linux header is still split (the firmware reports what is wrong with it).
        let mut old = f.clone();
        set16(&mut old, VERSION_AT, 0x0200);
        assert_eq!(fw_cfg_setup_len(&old), Some(4 * 512));
    }

    #[test]
    fn fields_past_an_older_header_read_as_zero() {
        let mut f = test_image();
        // A 2.12 header ending at 0x268: kernel_info_offset is not part of it.
        f[JUMP_LEN_AT] = 0x66;
        set16(&mut f, VERSION_AT, 0x020c);
        f[0x268..0x26c].copy_from_slice(&[0xee; 4]);
        let h = BzHeader::parse(&f).unwrap().header();
        assert_eq!({ h.kernel_info_offset }, 0);
        assert_eq!({ h.init_size }, 0x40_0000);
    }
}
