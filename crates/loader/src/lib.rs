//! The firmware's OS loader, as pure functions: what to put where in guest RAM to start a
//! Linux bzImage (x86 boot protocol) or an ELF64 kernel (our own guest OS), and the SEV
//! kernel hashes table that measured direct boot checks them against.
//!
//! - [`bzimage`]: the setup header of a bzImage (`Documentation/arch/x86/boot.rst`), its
//!   split into setup and protected-mode kernel, and where the kernel may go
//!   (`pref_address`, `kernel_alignment`, `init_size`).
//! - [`elf`]: ELF64 executables: header and `PT_LOAD` checks.
//! - [`boot_params`]: the zero page (`struct boot_params`) and its setup header, `repr(C,
//!   packed)` with the kernel's offsets asserted at compile time.
//! - [`e820`]: the E820 map handed to the OS, built from guest-abi's memory map: the
//!   firmware's regions (its working area, the SEV secret and hashes pages, the migration
//!   helper's region) and the guest-services MMIO page are `E820_RESERVED`.
//! - [`place`]: placement of the kernel, the zero page, the command line and the initrd in
//!   usable RAM.
//! - [`hashes`]: the SEV hashes table in QEMU/OVMF's byte layout (build, parse, verify).
//! - [`load`] ties them together: [`load::plan_linux`] and [`load::plan_elf`] decide the
//!   addresses, [`load::load_linux`] and [`load::load_elf`] also write the guest through a
//!   [`GuestWriter`] and return the [`load::Handoff`] (entry point, zero page address).
//!
//! # Dependencies
//! `no_std`, no `alloc`: the firmware links this crate. It depends on guest-abi (memory
//! map types, fixed layout), `sha2` and `thiserror` (both without default features) and on
//! nothing that does I/O; guest memory is reached only through [`GuestWriter`].
//!
//! # Trust
//! Kernel, initrd and command line come from the host (fw_cfg) and are hostile until the
//! hashes table vouches for them; a kernel image is parsed before it is hashed. Every
//! parser here reads with `get()`, checks lengths and sums with checked arithmetic and
//! returns an error instead of panicking. The memory map is the firmware's own (already
//! validated by guest-abi). Under SEV, the hashes table lives in a private page measured at
//! launch; the caller copies it out once and parses the copy.

#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod boot_params;
pub mod bzimage;
pub mod e820;
pub mod elf;
pub mod fuzzing;
pub mod hashes;
pub mod load;
pub mod place;

pub use load::{Handoff, KernelFormat, Layout, LoadError};

/// A range of guest-physical memory; `base + size` never overflows once constructed by
/// this crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Span {
    /// A span, or `None` when `base + size` overflows.
    pub const fn new(base: u64, size: u64) -> Option<Span> {
        match base.checked_add(size) {
            Some(_) => Some(Span { base, size }),
            None => None,
        }
    }

    /// One past the last byte (saturating; spans built by [`Span::new`] never saturate).
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// `true` when the two spans share at least one byte.
    pub const fn overlaps(&self, other: &Span) -> bool {
        self.base < other.end() && other.base < self.end()
    }

    /// `true` when `other` lies entirely inside `self`.
    pub const fn contains(&self, other: &Span) -> bool {
        self.base <= other.base && other.end() <= self.end()
    }
}

/// A guest-memory write that failed: the range was not writable guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot write guest memory {gpa:#x}+{len:#x}")]
pub struct WriteError {
    /// First guest-physical byte of the failed write.
    pub gpa: u64,
    /// Its length.
    pub len: u64,
}

/// Where the loader writes: guest RAM as the firmware (identity-mapped) or a test sees it.
///
/// The loader only writes ranges inside usable regions of the memory map it was given;
/// implementations still check bounds and fail with [`WriteError`] rather than panic.
pub trait GuestWriter {
    /// Copies `data` to guest-physical address `gpa`.
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), WriteError>;

    /// Sets `len` bytes at `gpa` to zero (an ELF segment's `.bss`).
    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), WriteError>;
}

/// A fake guest for tests: a byte vector standing for RAM from `base`.
#[cfg(test)]
pub(crate) mod testmem {
    use super::{GuestWriter, WriteError};
    use std::vec;
    use std::vec::Vec;

    /// RAM `[base, base + bytes.len())`, plus a log of the writes made.
    pub struct FakeRam {
        pub base: u64,
        pub bytes: Vec<u8>,
        pub writes: Vec<(u64, u64)>,
    }

    impl FakeRam {
        pub fn new(base: u64, size: usize) -> FakeRam {
            FakeRam {
                base,
                bytes: vec![0xa5; size],
                writes: Vec::new(),
            }
        }

        fn range(&mut self, gpa: u64, len: u64) -> Result<&mut [u8], WriteError> {
            let err = WriteError { gpa, len };
            let start = usize::try_from(gpa.checked_sub(self.base).ok_or(err)?).map_err(|_| err)?;
            let end = start
                .checked_add(usize::try_from(len).map_err(|_| err)?)
                .ok_or(err)?;
            self.writes.push((gpa, len));
            self.bytes.get_mut(start..end).ok_or(err)
        }

        pub fn read(&self, gpa: u64, len: usize) -> &[u8] {
            let start = (gpa - self.base) as usize;
            &self.bytes[start..start + len]
        }
    }

    impl GuestWriter for FakeRam {
        fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), WriteError> {
            self.range(gpa, data.len() as u64)?.copy_from_slice(data);
            Ok(())
        }

        fn zero(&mut self, gpa: u64, len: u64) -> Result<(), WriteError> {
            self.range(gpa, len)?.fill(0);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_refuse_overflow_and_compare_by_bytes() {
        assert_eq!(Span::new(u64::MAX, 1), None);
        let a = Span::new(0x1000, 0x1000).unwrap();
        let b = Span::new(0x1fff, 1).unwrap();
        let c = Span::new(0x2000, 1).unwrap();
        assert!(a.overlaps(&b) && !a.overlaps(&c) && !c.overlaps(&a));
        assert!(a.contains(&b) && !a.contains(&c));
    }
}
