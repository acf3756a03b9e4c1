//! One entry point that runs every parser and the whole load on untrusted bytes: the fuzz
//! target `fuzz/fuzz_targets/os_loader.rs` and the seed replay test
//! (`tests/fuzz_seeds.rs`) both call [`exercise`], so a crash found by fuzzing stays fixed.

use guest_abi::memmap::{firmware_reservations, MemoryMap};

use crate::hashes::{Blob, HashTable};
use crate::load::{load, prepare, Layout};
use crate::{GuestWriter, Span, WriteError};

const MIB: u64 = 1 << 20;
const LOW_RAM: u64 = 256 * MIB;
const HIGH_RAM: Span = Span {
    base: 1 << 32,
    size: 64 * MIB,
};

/// Accepts writes that land in the fake guest's RAM and drops the bytes.
struct Sink;

impl GuestWriter for Sink {
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), WriteError> {
        self.zero(gpa, data.len() as u64)
    }

    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), WriteError> {
        let span = Span::new(gpa, len).ok_or(WriteError { gpa, len })?;
        let low = Span {
            base: 0,
            size: LOW_RAM,
        };
        if low.contains(&span) || HIGH_RAM.contains(&span) {
            Ok(())
        } else {
            Err(WriteError { gpa, len })
        }
    }
}

/// Parses `data` as a hashes table, a bzImage and an ELF file, and loads it (with a
/// slice of it as initrd and command line) into a 320 MiB guest laid out like ours.
/// Must return, never panic, for any input.
pub fn exercise(data: &[u8]) {
    if let Ok(table) = HashTable::parse(data) {
        for blob in Blob::ALL {
            let _ = table.verify(blob, data);
        }
    }
    let Ok(map) = MemoryMap::build(
        [(0, LOW_RAM), (HIGH_RAM.base, HIGH_RAM.size)],
        &firmware_reservations(2 * MIB),
    ) else {
        return;
    };
    let mmio = [Span {
        base: guest_abi::layout::SERVICES_GPA,
        size: guest_abi::layout::PAGE_SIZE,
    }];
    let layout = Layout {
        map: &map,
        mmio: &mmio,
    };
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (head, _) = data.split_at(split);
    let cmdline: &[u8] = if head.contains(&0) { &[] } else { head };
    let _ = load(data, head, cmdline, &layout, &mut Sink);
    // As the firmware loads: its staging copy of the file avoided, the initrd its own.
    let _ = crate::bzimage::fw_cfg_setup_len(data);
    let staging = Span {
        base: LOW_RAM - 16 * MIB,
        size: 16 * MIB,
    };
    if let Ok(p) = prepare(data, head.len() as u64, cmdline, &layout, &[staging]) {
        let _ = p.write(&mut Sink);
    }
}
