//! The SEV platform's own access to guest memory during launch and for debug commands:
//! the bytes as the guest sees them, and host addresses for the hardware ioctls.
//!
//! Only the platform uses this (through `sev_platform::backend::LaunchMemory`); the rest
//! of the VMM goes through [`super::HostView`].

use super::{GuestRam, Rom};
use sev_platform::backend::{LaunchMemory, MemoryAccessError};

/// Guest RAM and the firmware ROM as the platform sees them.
pub struct LaunchView<'a> {
    ram: &'a GuestRam,
    rom: &'a Rom,
}

impl<'a> LaunchView<'a> {
    /// The platform's view of `ram` and `rom`.
    pub fn new(ram: &'a GuestRam, rom: &'a Rom) -> Self {
        LaunchView { ram, rom }
    }

    fn rom_offset(&self, gpa: u64, len: u64) -> Option<usize> {
        let r = self.rom.gpa_range();
        (gpa >= r.start && gpa.checked_add(len)? <= r.end).then(|| (gpa - r.start) as usize)
    }
}

impl LaunchMemory for LaunchView<'_> {
    fn host_addr(&self, gpa: u64, len: u64) -> Option<u64> {
        match self.rom_offset(gpa, len) {
            Some(off) => Some(self.rom.region().host_addr + off as u64),
            None => self.ram.host_addr(gpa, len),
        }
    }

    fn read_plain(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryAccessError> {
        let err = MemoryAccessError {
            gpa,
            len: buf.len() as u64,
        };
        match self.rom_offset(gpa, buf.len() as u64) {
            Some(off) => {
                buf.copy_from_slice(self.rom.bytes().get(off..off + buf.len()).ok_or(err)?);
                Ok(())
            }
            None => self.ram.read_raw(gpa, buf).map_err(|_| err),
        }
    }

    fn write_plain(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryAccessError> {
        // The ROM is read-only for everyone, the platform included.
        self.ram
            .write_raw(gpa, data)
            .map_err(|_| MemoryAccessError {
                gpa,
                len: data.len() as u64,
            })
    }
}
