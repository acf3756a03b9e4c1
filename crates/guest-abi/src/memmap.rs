//! The firmware's memory map: the VMM's RAM ranges with the firmware's reservations carved
//! out, and a page allocator over what is left.
//!
//! The RAM list comes from the host (fw_cfg `etc/e820`), which a confidential guest does
//! not trust: ranges are page-aligned inward, sorted, merged, and capped in number, and
//! the firmware refuses to run when its own fixed areas are not backed by RAM.

use crate::layout;

/// Most regions a map holds; extra RAM ranges from the host are rejected.
pub const MAX_REGIONS: usize = 32;

/// What a region of guest RAM is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    /// Free for workloads.
    Usable,
    /// Page tables, descriptor tables, stacks, the AP trampoline.
    Firmware,
    /// The SEV secret page and hash table.
    SevArea,
    /// The mirror migration helper's region.
    Helper,
}

impl RegionKind {
    /// Short lower-case name for logs.
    pub fn name(self) -> &'static str {
        match self {
            RegionKind::Usable => "usable",
            RegionKind::Firmware => "firmware",
            RegionKind::SevArea => "sev",
            RegionKind::Helper => "helper",
        }
    }
}

/// A contiguous, page-aligned range of guest-physical memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub base: u64,
    /// Length in bytes (a multiple of the page size, never zero).
    pub size: u64,
    /// What it is used for.
    pub kind: RegionKind,
}

impl Region {
    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// Why a memory map could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// The host described more RAM ranges than the map holds.
    TooManyRegions,
    /// A reserved area (base, size) is not entirely backed by RAM.
    ReservationNotInRam(u64, u64),
    /// A RAM range's end overflows the address space.
    RangeOverflow(u64, u64),
}

impl core::fmt::Display for MapError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MapError::TooManyRegions => write!(f, "more than {MAX_REGIONS} memory regions"),
            MapError::ReservationNotInRam(b, s) => {
                write!(
                    f,
                    "reserved area {b:#x}+{s:#x} is not backed by RAM (too little memory?)"
                )
            }
            MapError::RangeOverflow(b, s) => write!(f, "RAM range {b:#x}+{s:#x} overflows"),
        }
    }
}

/// The firmware's fixed reservations, given the helper region's size (0 for none).
pub fn firmware_reservations(helper_size: u64) -> [(u64, u64, RegionKind); 5] {
    [
        (0, layout::PAGE_SIZE, RegionKind::Firmware),
        (
            layout::AP_TRAMPOLINE,
            layout::PAGE_SIZE,
            RegionKind::Firmware,
        ),
        (
            layout::FW_AREA_BASE,
            layout::FW_AREA_END - layout::FW_AREA_BASE,
            RegionKind::Firmware,
        ),
        (
            layout::SEV_AREA_BASE,
            layout::SEV_AREA_END - layout::SEV_AREA_BASE,
            RegionKind::SevArea,
        ),
        (layout::HELPER_REGION_BASE, helper_size, RegionKind::Helper),
    ]
}

/// A sorted list of non-overlapping regions.
#[derive(Clone, Debug)]
pub struct MemoryMap {
    regions: [Region; MAX_REGIONS],
    len: usize,
}

const EMPTY: Region = Region {
    base: 0,
    size: 0,
    kind: RegionKind::Usable,
};

fn align_down(v: u64) -> u64 {
    v & !(layout::PAGE_SIZE - 1)
}

impl MemoryMap {
    /// An empty map.
    pub const fn new() -> Self {
        MemoryMap {
            regions: [EMPTY; MAX_REGIONS],
            len: 0,
        }
    }

    /// Builds the map from RAM ranges `(base, size)` and reservations `(base, size, kind)`.
    ///
    /// Each reservation must lie entirely in RAM; zero-sized reservations are ignored.
    pub fn build(
        ram: impl IntoIterator<Item = (u64, u64)>,
        reservations: &[(u64, u64, RegionKind)],
    ) -> Result<Self, MapError> {
        let mut map = MemoryMap::new();
        for (base, size) in ram {
            let end = base
                .checked_add(size)
                .ok_or(MapError::RangeOverflow(base, size))?;
            let start = align_down(base.saturating_add(layout::PAGE_SIZE - 1));
            let end = align_down(end);
            if end > start {
                map.add_usable(start, end)?;
            }
        }
        for &(base, size, kind) in reservations {
            if size == 0 {
                continue;
            }
            let end = base
                .checked_add(size)
                .ok_or(MapError::RangeOverflow(base, size))?;
            let (base, end) = (align_down(base), align_down(end + layout::PAGE_SIZE - 1));
            map.reserve(base, end, kind)?;
        }
        Ok(map)
    }

    /// The regions, sorted by address.
    pub fn regions(&self) -> &[Region] {
        &self.regions[..self.len]
    }

    /// The usable regions, sorted by address.
    pub fn usable(&self) -> impl Iterator<Item = &Region> + '_ {
        self.regions()
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
    }

    /// Total bytes of the given kind.
    pub fn bytes(&self, kind: RegionKind) -> u64 {
        self.regions()
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.size)
            .sum()
    }

    /// One past the highest mapped byte (0 for an empty map).
    pub fn top(&self) -> u64 {
        self.regions().last().map_or(0, Region::end)
    }

    fn insert(&mut self, region: Region) -> Result<(), MapError> {
        if self.len == MAX_REGIONS {
            return Err(MapError::TooManyRegions);
        }
        let pos = self.regions[..self.len]
            .iter()
            .position(|r| r.base > region.base)
            .unwrap_or(self.len);
        self.regions.copy_within(pos..self.len, pos + 1);
        self.regions[pos] = region;
        self.len += 1;
        Ok(())
    }

    fn remove(&mut self, index: usize) {
        self.regions.copy_within(index + 1..self.len, index);
        self.len -= 1;
    }

    /// Adds usable RAM [start, end), merging with usable neighbours it touches.
    fn add_usable(&mut self, mut start: u64, mut end: u64) -> Result<(), MapError> {
        let mut i = 0;
        while i < self.len {
            let r = self.regions[i];
            if r.base <= end && start <= r.end() {
                start = start.min(r.base);
                end = end.max(r.end());
                self.remove(i);
            } else {
                i += 1;
            }
        }
        self.insert(Region {
            base: start,
            size: end - start,
            kind: RegionKind::Usable,
        })
    }

    /// Turns [start, end) of usable RAM into a region of `kind`.
    fn reserve(&mut self, start: u64, end: u64, kind: RegionKind) -> Result<(), MapError> {
        let Some(i) = self
            .regions()
            .iter()
            .position(|r| r.kind == RegionKind::Usable && r.base <= start && end <= r.end())
        else {
            return Err(MapError::ReservationNotInRam(start, end - start));
        };
        let r = self.regions[i];
        self.remove(i);
        for (b, e, k) in [
            (r.base, start, RegionKind::Usable),
            (start, end, kind),
            (end, r.end(), RegionKind::Usable),
        ] {
            if e > b {
                self.insert(Region {
                    base: b,
                    size: e - b,
                    kind: k,
                })?;
            }
        }
        Ok(())
    }
}

impl Default for MemoryMap {
    fn default() -> Self {
        Self::new()
    }
}

/// Hands out page-aligned chunks of usable memory, lowest address first.
#[derive(Clone, Debug)]
pub struct PageAllocator {
    map: MemoryMap,
    region: usize,
    next: u64,
}

impl PageAllocator {
    /// An allocator over the usable regions of `map`.
    pub fn new(map: &MemoryMap) -> Self {
        PageAllocator {
            map: map.clone(),
            region: 0,
            next: 0,
        }
    }

    /// Allocates `pages` contiguous pages, or `None` when no usable region has room.
    pub fn alloc_pages(&mut self, pages: u64) -> Option<u64> {
        let want = pages.checked_mul(layout::PAGE_SIZE)?;
        while self.region < self.map.len {
            let r = self.map.regions[self.region];
            if r.kind == RegionKind::Usable {
                let start = self.next.max(r.base);
                if let Some(end) = start.checked_add(want) {
                    if end <= r.end() {
                        self.next = end;
                        return Some(start);
                    }
                }
            }
            self.region += 1;
        }
        None
    }

    /// Takes every remaining usable byte, region by region, as `(base, size)` chunks.
    pub fn take_rest(&mut self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let next = self.next;
        let from = self.region;
        self.region = self.map.len;
        self.map.regions[from.min(self.map.len)..self.map.len]
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
            .filter_map(move |r| {
                let start = next.max(r.base);
                (start < r.end()).then(|| (start, r.end() - start))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn standard(ram: u64) -> MemoryMap {
        MemoryMap::build([(0, ram)], &firmware_reservations(2 * MIB)).unwrap()
    }

    #[test]
    fn reservations_are_carved_out_of_ram_and_sorted() {
        let map = standard(256 * MIB);
        let regions = map.regions();
        assert!(regions.windows(2).all(|w| w[0].end() <= w[1].base));
        assert_eq!(map.top(), 256 * MIB);
        let total: u64 = regions.iter().map(|r| r.size).sum();
        assert_eq!(total, 256 * MIB);
        assert_eq!(map.bytes(RegionKind::Helper), 2 * MIB);
        assert_eq!(
            map.bytes(RegionKind::SevArea),
            layout::SEV_AREA_END - layout::SEV_AREA_BASE
        );
        for r in map.usable() {
            for (b, s, _) in firmware_reservations(2 * MIB) {
                assert!(r.end() <= b || b + s <= r.base, "{r:?} overlaps {b:#x}");
            }
        }
    }

    #[test]
    fn unaligned_overlapping_and_unsorted_ram_is_normalised() {
        let map = MemoryMap::build(
            [
                (64 * MIB + 5, 64 * MIB),
                (0, 70 * MIB),
                (1 << 32, 3 * MIB + 7),
            ],
            &[],
        )
        .unwrap();
        let r = map.regions();
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].base, r[0].end()), (0, 128 * MIB));
        assert_eq!((r[1].base, r[1].size), (1 << 32, 3 * MIB));
    }

    #[test]
    fn too_little_ram_for_the_reservations_is_an_error() {
        let err = MemoryMap::build([(0, 16 * MIB)], &firmware_reservations(2 * MIB)).unwrap_err();
        assert_eq!(
            err,
            MapError::ReservationNotInRam(layout::HELPER_REGION_BASE, 2 * MIB)
        );
    }

    #[test]
    fn hostile_ram_lists_are_rejected_not_trusted() {
        let many = (0..100u64).map(|i| (i * 2 * MIB, MIB));
        assert_eq!(
            MemoryMap::build(many, &[]).unwrap_err(),
            MapError::TooManyRegions
        );
        assert_eq!(
            MemoryMap::build([(u64::MAX - 10, 100)], &[]).unwrap_err(),
            MapError::RangeOverflow(u64::MAX - 10, 100)
        );
        // Ranges smaller than a page vanish instead of producing empty regions.
        let map = MemoryMap::build([(10, 100)], &[]).unwrap();
        assert!(map.regions().is_empty());
    }

    #[test]
    fn allocator_hands_out_disjoint_usable_pages_then_the_rest() {
        let map = standard(128 * MIB);
        let mut a = PageAllocator::new(&map);
        let p1 = a.alloc_pages(4).unwrap();
        let p2 = a.alloc_pages(1).unwrap();
        assert_eq!(p2, p1 + 4 * layout::PAGE_SIZE);
        assert!(map
            .usable()
            .any(|r| r.base <= p1 && p1 + 4 * layout::PAGE_SIZE <= r.end()));
        let rest: u64 = a.take_rest().map(|(_, s)| s).sum();
        assert_eq!(rest + 5 * layout::PAGE_SIZE, map.bytes(RegionKind::Usable));
        assert_eq!(a.alloc_pages(1), None);
    }

    #[test]
    fn allocator_skips_regions_that_are_too_small() {
        let map = MemoryMap::build([(0, 8 * layout::PAGE_SIZE), (MIB, 4 * MIB)], &[]).unwrap();
        let mut a = PageAllocator::new(&map);
        assert_eq!(a.alloc_pages(16), Some(MIB));
        assert_eq!(a.alloc_pages(u64::MAX), None);
    }
}
