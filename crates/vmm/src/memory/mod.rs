//! Guest memory: RAM in a memfd (so a mirror VM or another process can map the same
//! pages), the firmware ROM, and [`HostView`], the only way the VMM reads or writes guest
//! RAM.

mod launch;
pub mod size;
mod view;

pub use launch::LaunchView;
pub use view::{Encrypted, HostView, PageStates, Visibility};

use guest_abi::layout;
use std::{ffi::CString, fs::File, os::fd::FromRawFd};
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MmapRegion,
};

/// A failed memory operation.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The requested RAM size is unusable.
    #[error("RAM size {size:#x} is invalid: {why}")]
    BadSize {
        /// The size asked for.
        size: u64,
        /// What is wrong with it.
        why: &'static str,
    },
    /// memfd_create or ftruncate failed.
    #[error("cannot allocate {0:#x} bytes of guest RAM")]
    Allocate(u64, #[source] std::io::Error),
    /// Mapping the RAM or ROM failed.
    #[error("cannot map guest memory")]
    Map(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A transfer between guest memory and a stream failed.
    #[error("cannot move guest memory {gpa:#x}+{len:#x} to or from the stream")]
    Stream {
        /// First byte.
        gpa: u64,
        /// Length.
        len: usize,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A direct transfer of private memory was asked for.
    #[error("guest page {0:#x} is private: only shared memory moves straight to a stream")]
    NotShared(u64),
    /// An access fell outside guest RAM.
    #[error("guest-physical range {gpa:#x}+{len:#x} is not RAM")]
    OutOfRange {
        /// First byte.
        gpa: u64,
        /// Length.
        len: usize,
    },
    /// A shared list for a guest that does not arrive (or already runs): only the
    /// guest's own requests change a running guest's page states.
    #[error("the VM does not receive an incoming SEV guest: its page states follow only the guest's own requests")]
    NotReceiving,
}

/// A range of guest RAM as the rest of the VMM sees it: guest-physical only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// Guest-physical base.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
}

/// A region of guest RAM as KVM needs it (with its host mapping; inside the VMM only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RamRegion {
    /// Guest-physical base.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host virtual address of the first byte.
    pub host_addr: u64,
}

/// Where RAM of `size` bytes goes: below the 32-bit hole, then from 4 GiB.
pub fn ram_layout(size: u64) -> [(u64, u64); 2] {
    let low = size.min(layout::LOW_RAM_LIMIT);
    [(0, low), (layout::HIGH_RAM_BASE, size - low)]
}

/// Guest RAM backed by one memfd.
pub struct GuestRam {
    mem: GuestMemoryMmap,
    size: u64,
}

impl GuestRam {
    /// Allocates `size` bytes of zeroed RAM (lazily: pages are touched on first use).
    pub fn new(size: u64) -> Result<Self, MemoryError> {
        if size < layout::MIN_RAM {
            return Err(MemoryError::BadSize {
                size,
                why: "the firmware needs at least 64 MiB",
            });
        }
        if size > layout::MAX_RAM {
            return Err(MemoryError::BadSize {
                size,
                why: "at most 64 GiB is supported",
            });
        }
        if !size.is_multiple_of(layout::LARGE_PAGE_SIZE) {
            return Err(MemoryError::BadSize {
                size,
                why: "it must be a multiple of 2 MiB",
            });
        }
        let name = CString::new("sevmirror-ram").expect("no NUL in a literal");
        // SAFETY: memfd_create with a valid C string; the result is checked and owned.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(MemoryError::Allocate(size, std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(size)
            .map_err(|e| MemoryError::Allocate(size, e))?;
        let mut ranges = Vec::new();
        let mut offset = 0;
        for (gpa, len) in ram_layout(size) {
            if len > 0 {
                let f = file
                    .try_clone()
                    .map_err(|e| MemoryError::Allocate(size, e))?;
                ranges.push((
                    GuestAddress(gpa),
                    len as usize,
                    Some(FileOffset::new(f, offset)),
                ));
                offset += len;
            }
        }
        let mem = GuestMemoryMmap::from_ranges_with_files(ranges)
            .map_err(|e| MemoryError::Map(Box::new(e)))?;
        Ok(GuestRam { mem, size })
    }

    /// Total RAM in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RAM regions, for memory slots and the E820 map.
    pub(crate) fn regions(&self) -> Vec<RamRegion> {
        self.mem
            .iter()
            .map(|r| RamRegion {
                gpa: r.start_addr().0,
                size: r.len(),
                host_addr: r.as_ptr() as u64,
            })
            .collect()
    }

    /// Number of 4 KiB pages of RAM.
    pub fn pages(&self) -> u64 {
        self.size / layout::PAGE_SIZE
    }

    /// The RAM page number of `gpa` (RAM laid end to end), if `gpa` is RAM.
    pub fn page_index(&self, gpa: u64) -> Option<u64> {
        let mut base = 0;
        for r in self.mem.iter() {
            let start = r.start_addr().0;
            if gpa >= start && gpa - start < r.len() {
                return Some((base + gpa - start) / layout::PAGE_SIZE);
            }
            base += r.len();
        }
        None
    }

    /// The guest-physical address of RAM page `index` (the inverse of `page_index`).
    pub fn page_gpa(&self, index: u64) -> Option<u64> {
        let mut offset = index.checked_mul(layout::PAGE_SIZE)?;
        for r in self.mem.iter() {
            if offset < r.len() {
                return Some(r.start_addr().0 + offset);
            }
            offset -= r.len();
        }
        None
    }

    /// Host address of [gpa, gpa + len) if it lies in one RAM region.
    fn host_addr(&self, gpa: u64, len: u64) -> Option<u64> {
        self.mem.iter().find_map(|r| {
            let start = r.start_addr().0;
            let off = gpa.checked_sub(start)?;
            (off.checked_add(len)? <= r.len()).then(|| r.as_ptr() as u64 + off)
        })
    }

    /// Reads guest RAM as stored (for the host view and the platform only).
    fn read_raw(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemoryError::OutOfRange {
                gpa,
                len: buf.len(),
            })
    }

    /// Writes guest RAM as stored (for the host view and the platform only).
    fn write_raw(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| MemoryError::OutOfRange {
                gpa,
                len: data.len(),
            })
    }

    /// Writes `len` bytes at `gpa` to `out` straight from the mapping (no copy in
    /// between). For the host view's shared-memory path only.
    fn write_raw_to<F: vm_memory::WriteVolatile>(
        &self,
        gpa: u64,
        len: usize,
        out: &mut F,
    ) -> Result<(), MemoryError> {
        self.mem
            .write_all_volatile_to(GuestAddress(gpa), out, len)
            .map_err(|e| MemoryError::Stream {
                gpa,
                len,
                source: Box::new(e),
            })
    }

    /// Reads exactly `len` bytes from `from` straight into the mapping at `gpa` (no copy
    /// in between). For the host view's shared-memory path only.
    fn read_raw_from<F: vm_memory::ReadVolatile>(
        &self,
        gpa: u64,
        len: usize,
        from: &mut F,
    ) -> Result<(), MemoryError> {
        let stream = |source: Box<dyn std::error::Error + Send + Sync>| MemoryError::Stream {
            gpa,
            len,
            source,
        };
        // One read(2) may return less than asked (a socket hands over what has arrived):
        // read each slice in full, as Read::read_exact does.
        for slice in GuestMemoryBackend::get_slices(&self.mem, GuestAddress(gpa), len) {
            let mut slice = slice.map_err(|e| stream(Box::new(e)))?;
            from.read_exact_volatile(&mut slice).map_err(|e| match e {
                vm_memory::VolatileMemoryError::IOError(io) => stream(Box::new(io)),
                other => stream(Box::new(other)),
            })?;
        }
        Ok(())
    }

    /// Touches every page so the guest's first accesses do not pay the host's page-fault
    /// cost (slow on these machines, docs/architecture.md §4).
    pub fn prefault(&self) -> std::io::Result<()> {
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        for r in self.regions() {
            // SAFETY: the range is a live shared mapping owned by `self.mem`; populating
            // pages does not change their contents.
            let rc = unsafe {
                libc::madvise(
                    r.host_addr as *mut libc::c_void,
                    r.size as usize,
                    MADV_POPULATE_WRITE,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The firmware image, mapped read-only below 4 GiB.
pub struct Rom {
    region: MmapRegion,
    gpa: u64,
}

impl Rom {
    /// Copies `image` into fresh host memory to be mapped at 4 GiB - len.
    pub fn new(image: &[u8]) -> Result<Self, MemoryError> {
        let region = MmapRegion::new(image.len()).map_err(|e| MemoryError::Map(Box::new(e)))?;
        // SAFETY: the mapping is `image.len()` bytes, freshly created and not shared yet.
        unsafe { std::ptr::copy_nonoverlapping(image.as_ptr(), region.as_ptr(), image.len()) };
        Ok(Rom {
            gpa: (1u64 << 32) - image.len() as u64,
            region,
        })
    }

    /// The image bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the mapping is `size()` bytes, owned by `self`; the host never writes it
        // after `new`, and the guest sees it through a read-only memory slot.
        unsafe { std::slice::from_raw_parts(self.region.as_ptr(), self.region.size()) }
    }

    /// Guest-physical range of the image.
    pub fn gpa_range(&self) -> std::ops::Range<u64> {
        self.gpa..self.gpa + self.region.size() as u64
    }

    /// The ROM as a memory slot would need it.
    pub(crate) fn region(&self) -> RamRegion {
        RamRegion {
            gpa: self.gpa,
            size: self.region.size() as u64,
            host_addr: self.region.as_ptr() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn ram_above_3_gib_moves_to_4_gib() {
        assert_eq!(ram_layout(256 * MIB), [(0, 256 * MIB), (1 << 32, 0)]);
        assert_eq!(
            ram_layout(4096 * MIB),
            [(0, 3072 * MIB), (1 << 32, 1024 * MIB)]
        );
    }

    #[test]
    fn bad_sizes_are_refused_with_the_reason() {
        for (size, why) in [
            (16 * MIB, "64 MiB"),
            (65 << 30, "64 GiB"),
            (65 * MIB, "2 MiB"),
        ] {
            let msg = GuestRam::new(size).err().unwrap().to_string();
            assert!(msg.contains(why), "{msg}");
        }
    }
}
