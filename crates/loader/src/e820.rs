//! The E820 map handed to the OS, derived from the firmware's memory map.
//!
//! Only usable RAM is `E820_RAM`. Everything the firmware keeps is `E820_RESERVED`:
//! - the migration helper's region: the helper keeps serving the mirror VM after the OS
//!   starts, from its stacks, heap, page tables and record windows;
//! - the SEV area: the secret page (the owner's secrets, the migration key), the hashes
//!   table page and the shared-page list the helper reads;
//! - the firmware's working area (page tables the OS enters on, GDT/IDT/TSS, stacks, the
//!   fw_cfg DMA page, which is *shared* with the host and must never be taken for private
//!   RAM by an SEV guest), page 0 and the AP trampoline;
//! - MMIO pages that have no RAM behind them, such as the guest-services page, so that the
//!   OS does not map them as RAM or hand them to a PCI BAR.

use guest_abi::memmap::{MemoryMap, RegionKind};

use crate::boot_params::{BootE820Entry, E820_MAX_ENTRIES};
use crate::Span;

/// An E820 region type (ACPI spec "Address Range Types"; Linux `enum e820_type`).
/// Types we do not produce are still representable, as a raw number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Type(pub u32);

impl E820Type {
    /// Usable RAM.
    pub const RAM: E820Type = E820Type(1);
    /// Reserved: the OS must not use it.
    pub const RESERVED: E820Type = E820Type(2);
    /// ACPI tables, reclaimable after they are parsed.
    pub const ACPI: E820Type = E820Type(3);
    /// ACPI non-volatile storage.
    pub const NVS: E820Type = E820Type(4);
    /// Unusable memory.
    pub const UNUSABLE: E820Type = E820Type(5);

    /// The E820 type the OS sees for a region of the firmware's map.
    pub const fn of(kind: RegionKind) -> E820Type {
        match kind {
            RegionKind::Usable => E820Type::RAM,
            RegionKind::Firmware | RegionKind::SevArea | RegionKind::Helper => E820Type::RESERVED,
        }
    }
}

/// Why no E820 map could be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum E820Error {
    /// More regions than the zero page's table holds.
    #[error("the memory map has more than {max} regions for the E820 table")]
    TooManyEntries {
        /// Capacity of the table.
        max: usize,
    },
    /// An MMIO range overlaps RAM or another MMIO range, or overflows.
    #[error("MMIO range {base:#x}+{size:#x} overlaps RAM or another range")]
    MmioOverlap {
        /// First byte.
        base: u64,
        /// Length.
        size: u64,
    },
}

/// An E820 map, sorted by address, non-overlapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Map {
    entries: [BootE820Entry; E820_MAX_ENTRIES],
    len: usize,
}

impl E820Map {
    /// The map for `map` plus the reserved MMIO ranges `mmio` (outside RAM).
    pub fn build(map: &MemoryMap, mmio: &[Span]) -> Result<E820Map, E820Error> {
        let mut out = E820Map {
            entries: [BootE820Entry {
                addr: 0,
                size: 0,
                kind: 0,
            }; E820_MAX_ENTRIES],
            len: 0,
        };
        for r in map.regions() {
            out.insert(r.base, r.size, E820Type::of(r.kind))?;
        }
        for m in mmio {
            if m.size == 0 {
                continue;
            }
            let span = Span::new(m.base, m.size).ok_or(E820Error::MmioOverlap {
                base: m.base,
                size: m.size,
            })?;
            if out.spans().any(|s| s.overlaps(&span)) {
                return Err(E820Error::MmioOverlap {
                    base: m.base,
                    size: m.size,
                });
            }
            out.insert(m.base, m.size, E820Type::RESERVED)?;
        }
        Ok(out)
    }

    fn spans(&self) -> impl Iterator<Item = Span> + '_ {
        self.entries().iter().map(|e| Span {
            base: e.addr,
            size: e.size,
        })
    }

    fn insert(&mut self, addr: u64, size: u64, kind: E820Type) -> Result<(), E820Error> {
        if self.len >= E820_MAX_ENTRIES {
            return Err(E820Error::TooManyEntries {
                max: E820_MAX_ENTRIES,
            });
        }
        let pos = self
            .entries()
            .iter()
            .position(|e| { e.addr } > addr)
            .unwrap_or(self.len);
        self.entries.copy_within(pos..self.len, pos + 1);
        if let Some(slot) = self.entries.get_mut(pos) {
            *slot = BootE820Entry {
                addr,
                size,
                kind: kind.0,
            };
        }
        self.len += 1;
        Ok(())
    }

    /// The entries, sorted by address.
    pub fn entries(&self) -> &[BootE820Entry] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// The whole table and the count, as the zero page stores them.
    pub fn table(&self) -> ([BootE820Entry; E820_MAX_ENTRIES], u8) {
        // `len <= E820_MAX_ENTRIES` (128) always fits a u8.
        (self.entries, self.len as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_abi::{layout, memmap::firmware_reservations};

    const MIB: u64 = 1 << 20;

    #[test]
    fn firmware_regions_and_mmio_are_reserved_the_rest_is_ram() {
        let map = MemoryMap::build(
            [(0, 3 * 1024 * MIB), (1 << 32, 1024 * MIB)],
            &firmware_reservations(4 * MIB),
        )
        .unwrap();
        let services = Span {
            base: layout::SERVICES_GPA,
            size: layout::PAGE_SIZE,
        };
        let e = E820Map::build(&map, &[services]).unwrap();
        let entries = e.entries();
        assert!(entries
            .windows(2)
            .all(|w| { w[0].addr } + { w[0].size } <= { w[1].addr }));
        let kind_at = |gpa: u64| {
            entries
                .iter()
                .find(|x| { x.addr } <= gpa && gpa < { x.addr } + { x.size })
                .map(|x| E820Type(x.kind))
        };
        assert_eq!(kind_at(0), Some(E820Type::RESERVED));
        assert_eq!(kind_at(layout::AP_TRAMPOLINE), Some(E820Type::RESERVED));
        assert_eq!(kind_at(layout::FWCFG_DMA_PAGE), Some(E820Type::RESERVED));
        assert_eq!(kind_at(layout::SEV_SECRET_BASE), Some(E820Type::RESERVED));
        assert_eq!(
            kind_at(layout::SEV_HASH_TABLE_BASE),
            Some(E820Type::RESERVED)
        );
        assert_eq!(
            kind_at(layout::HELPER_REGION_BASE),
            Some(E820Type::RESERVED)
        );
        assert_eq!(
            kind_at(layout::HELPER_REGION_BASE + 4 * MIB - 1),
            Some(E820Type::RESERVED)
        );
        assert_eq!(
            kind_at(layout::HELPER_REGION_BASE + 4 * MIB),
            Some(E820Type::RAM)
        );
        assert_eq!(kind_at(layout::SERVICES_GPA), Some(E820Type::RESERVED));
        assert_eq!(kind_at(1 << 32), Some(E820Type::RAM));
        assert_eq!(kind_at(0xd000_0000), None, "the PCI hole is not described");
        // Every byte of RAM is described exactly once.
        let ram: u64 = entries
            .iter()
            .filter(|x| x.kind != E820Type::RESERVED.0 || { x.addr } != layout::SERVICES_GPA)
            .map(|x| x.size)
            .sum();
        assert_eq!(ram, 4 * 1024 * MIB);
    }

    #[test]
    fn mmio_overlapping_ram_is_refused() {
        let map = MemoryMap::build([(0, 256 * MIB)], &[]).unwrap();
        let bad = Span {
            base: 255 * MIB,
            size: 2 * MIB,
        };
        assert_eq!(
            E820Map::build(&map, &[bad]),
            Err(E820Error::MmioOverlap {
                base: 255 * MIB,
                size: 2 * MIB
            })
        );
        let wraps = Span {
            base: u64::MAX,
            size: 2,
        };
        assert!(E820Map::build(&map, &[wraps]).is_err());
    }

    #[test]
    fn the_table_size_is_enforced() {
        let map = MemoryMap::build([(0, 256 * MIB)], &[]).unwrap();
        let many: std::vec::Vec<Span> = (0..200u64)
            .map(|i| Span {
                base: (1 << 40) + i * 0x2000,
                size: 0x1000,
            })
            .collect();
        assert_eq!(
            E820Map::build(&map, &many),
            Err(E820Error::TooManyEntries {
                max: E820_MAX_ENTRIES
            })
        );
    }
}
