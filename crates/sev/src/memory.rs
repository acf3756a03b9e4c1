//! [`VecMemory`]: guest memory in a `Vec`, a [`LaunchMemory`] for tests and tools that
//! drive the emulated PSP without a VM (e.g. computing what a launch would measure).

use crate::backend::{LaunchMemory, MemoryAccessError};
use std::sync::Mutex;

/// `len` bytes of guest memory starting at guest-physical `base`, plaintext.
#[derive(Debug)]
pub struct VecMemory {
    base: u64,
    bytes: Mutex<Vec<u8>>,
}

impl VecMemory {
    /// Zeroed memory at `[base, base + len)`.
    pub fn new(base: u64, len: usize) -> VecMemory {
        VecMemory {
            base,
            bytes: Mutex::new(vec![0; len]),
        }
    }

    /// Memory at `base` holding `data`.
    pub fn with_data(base: u64, data: Vec<u8>) -> VecMemory {
        VecMemory {
            base,
            bytes: Mutex::new(data),
        }
    }

    /// A copy of `[gpa, gpa + len)`.
    pub fn snapshot(&self, gpa: u64, len: usize) -> Result<Vec<u8>, MemoryAccessError> {
        let mut out = vec![0; len];
        self.read_plain(gpa, &mut out)?;
        Ok(out)
    }

    fn range(
        &self,
        gpa: u64,
        len: usize,
        total: usize,
    ) -> Result<std::ops::Range<usize>, MemoryAccessError> {
        let err = MemoryAccessError {
            gpa,
            len: len as u64,
        };
        let start = gpa.checked_sub(self.base).ok_or(err)?;
        let start = usize::try_from(start).map_err(|_| err)?;
        let end = start.checked_add(len).filter(|&e| e <= total).ok_or(err)?;
        Ok(start..end)
    }
}

impl LaunchMemory for VecMemory {
    fn host_addr(&self, _gpa: u64, _len: u64) -> Option<u64> {
        None
    }

    fn read_plain(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryAccessError> {
        let bytes = self
            .bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = self.range(gpa, buf.len(), bytes.len())?;
        buf.copy_from_slice(&bytes[r]);
        Ok(())
    }

    fn write_plain(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryAccessError> {
        let mut bytes = self
            .bytes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let r = self.range(gpa, data.len(), bytes.len())?;
        bytes[r].copy_from_slice(data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_outside_the_range_fail() {
        let m = VecMemory::new(0x1000, 0x100);
        m.write_plain(0x10f0, &[1; 0x10]).unwrap();
        assert_eq!(m.snapshot(0x10f0, 0x10).unwrap(), vec![1; 0x10]);
        assert!(m.write_plain(0x10f1, &[1; 0x10]).is_err());
        assert!(m.read_plain(0xfff, &mut [0; 1]).is_err());
        assert!(m.read_plain(u64::MAX, &mut [0; 2]).is_err());
    }
}
