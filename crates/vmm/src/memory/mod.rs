//! Guest memory: RAM in a memfd (so a mirror VM or another process can map the same
//! pages), the firmware ROM, and [`HostView`], the only way the VMM reads or writes guest
//! RAM.

use guest_abi::layout;
use std::{ffi::CString, fs::File, os::fd::FromRawFd, sync::Arc};
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
    /// An access fell outside guest RAM.
    #[error("guest-physical range {gpa:#x}+{len:#x} is not RAM")]
    OutOfRange {
        /// First byte.
        gpa: u64,
        /// Length.
        len: usize,
    },
}

/// A region of guest RAM as KVM needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRegion {
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
    pub fn regions(&self) -> Vec<RamRegion> {
        self.mem
            .iter()
            .map(|r| RamRegion {
                gpa: r.start_addr().0,
                size: r.len(),
                host_addr: r.as_ptr() as u64,
            })
            .collect()
    }

    /// Touches every page so the guest's first accesses do not pay the host's page-fault
    /// cost (slow on these machines, DESIGN §2).
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

/// The host's view of guest RAM: every VMM access to guest memory goes through here.
///
/// For a plain guest it reads and writes the bytes as they are. (A SEV guest's view
/// translates private pages; see the sev platform.)
#[derive(Clone)]
pub struct HostView {
    ram: Arc<GuestRam>,
}

impl HostView {
    /// A view of `ram`.
    pub fn new(ram: Arc<GuestRam>) -> Self {
        HostView { ram }
    }

    /// Copies guest memory at `gpa` into `buf`.
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.ram
            .mem
            .read_slice(buf, GuestAddress(gpa))
            .map_err(|_| MemoryError::OutOfRange {
                gpa,
                len: buf.len(),
            })
    }

    /// Copies `data` into guest memory at `gpa`.
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryError> {
        self.ram
            .mem
            .write_slice(data, GuestAddress(gpa))
            .map_err(|_| MemoryError::OutOfRange {
                gpa,
                len: data.len(),
            })
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

    /// The ROM as a memory slot would need it.
    pub fn region(&self) -> RamRegion {
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

    #[test]
    fn host_view_reads_back_what_it_wrote_and_rejects_holes() {
        let ram = Arc::new(GuestRam::new(64 * MIB).unwrap());
        let view = HostView::new(ram.clone());
        view.write(0x1234, b"canary").unwrap();
        let mut buf = [0u8; 6];
        view.read(0x1234, &mut buf).unwrap();
        assert_eq!(&buf, b"canary");
        assert!(view.read(64 * MIB - 2, &mut buf).is_err());
        assert!(view.write(layout::SERVICES_GPA, b"x").is_err());
        assert_eq!(ram.regions().len(), 1);
    }
}
