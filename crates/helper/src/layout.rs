//! What the helper knows about the guest: the RAM ranges it may read and write, its own
//! region (never exported or imported), where the guest keeps its shared-page list, its
//! launch secret and its "migrated out" flag, and the SHA-256 of the firmware image it
//! runs. Fixed at boot by the guest firmware, from its own memory map and image, before
//! any host request is served.

use helper_abi::PAGE_SIZE;

/// Most RAM ranges the helper tracks.
pub const MAX_RAM_RANGES: usize = 8;

/// The helper's memory layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelperLayout {
    ram: [(u64, u64); MAX_RAM_RANGES],
    ranges: usize,
    /// The helper region (base, size): excluded from migration.
    pub region: (u64, u64),
    /// GPA of the guest's shared-page list.
    pub shared_list_gpa: u64,
    /// The guest's SEV secret area (base, size).
    pub secret_area: (u64, u64),
    /// GPA of the page the helper marks "migrated out" when it commits (guest-abi
    /// `layout::MIGRATION_STATE`); 0 until set, and the helper never commits then.
    pub migration_state_gpa: u64,
    /// SHA-256 of the firmware image this helper runs (bound into every handshake).
    pub firmware_hash: [u8; 32],
}

/// Why a layout was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// More RAM ranges than the helper tracks.
    TooManyRanges,
    /// A range is not page-aligned, empty, overlaps or is out of order.
    BadRange,
}

impl HelperLayout {
    /// A layout over `ram` (sorted, page-aligned, non-overlapping ranges).
    pub fn new(
        ram: &[(u64, u64)],
        region: (u64, u64),
        shared_list_gpa: u64,
        secret_area: (u64, u64),
    ) -> Result<Self, LayoutError> {
        if ram.len() > MAX_RAM_RANGES {
            return Err(LayoutError::TooManyRanges);
        }
        let page = PAGE_SIZE as u64;
        let mut prev_end = 0;
        for &(base, size) in ram {
            let end = base.checked_add(size).ok_or(LayoutError::BadRange)?;
            if size == 0 || base % page != 0 || size % page != 0 || base < prev_end {
                return Err(LayoutError::BadRange);
            }
            prev_end = end;
        }
        let mut r = [(0, 0); MAX_RAM_RANGES];
        r[..ram.len()].copy_from_slice(ram);
        Ok(HelperLayout {
            ram: r,
            ranges: ram.len(),
            region,
            shared_list_gpa,
            secret_area,
            migration_state_gpa: 0,
            firmware_hash: [0; 32],
        })
    }

    /// The same layout with the "migrated out" page and the firmware hash set.
    pub fn with_identity(mut self, migration_state_gpa: u64, firmware_hash: [u8; 32]) -> Self {
        self.migration_state_gpa = migration_state_gpa;
        self.firmware_hash = firmware_hash;
        self
    }

    /// The RAM ranges.
    pub fn ram(&self) -> &[(u64, u64)] {
        &self.ram[..self.ranges]
    }

    /// Pages of RAM.
    pub fn pages(&self) -> u64 {
        self.ram().iter().map(|r| r.1 / PAGE_SIZE as u64).sum()
    }

    /// The RAM page number of `gpa` (ranges laid end to end), if `gpa` is RAM.
    pub fn page_index(&self, gpa: u64) -> Option<u64> {
        let mut base = 0;
        for &(start, size) in self.ram() {
            if gpa >= start && gpa - start < size {
                return Some(base + (gpa - start) / PAGE_SIZE as u64);
            }
            base += size / PAGE_SIZE as u64;
        }
        None
    }

    /// Whether `gpa` is inside the helper region.
    pub fn in_region(&self, gpa: u64) -> bool {
        gpa >= self.region.0 && gpa - self.region.0 < self.region.1
    }

    /// The page index of `gpa` if the host may name it: page-aligned RAM outside the
    /// helper region.
    pub fn migratable(&self, gpa: u64) -> Option<u64> {
        if !gpa.is_multiple_of(PAGE_SIZE as u64) || self.in_region(gpa) {
            return None;
        }
        self.page_index(gpa)
    }

    /// Every RAM page outside the helper region, in increasing GPA order, with its index.
    pub fn migratable_pages(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let mut index = 0u64;
        self.ram().iter().flat_map(move |&(start, size)| {
            let first = index;
            index += size / PAGE_SIZE as u64;
            (0..size / PAGE_SIZE as u64)
                .map(move |i| (start + i * PAGE_SIZE as u64, first + i))
                .filter(|&(gpa, _)| !self.in_region(gpa))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> HelperLayout {
        HelperLayout::new(
            &[(0, 0x10_000), (0x1_0000_0000, 0x4000)],
            (0x4000, 0x2000),
            0x8000,
            (0x9000, 0x1000),
        )
        .unwrap()
    }

    #[test]
    fn pages_are_numbered_across_the_hole() {
        let l = layout();
        assert_eq!(l.pages(), 16 + 4);
        assert_eq!(l.page_index(0x1_0000_2000), Some(18));
        assert_eq!(l.page_index(0x10_000), None);
    }

    #[test]
    fn the_host_may_only_name_aligned_ram_outside_the_region() {
        let l = layout();
        assert_eq!(l.migratable(0x3000), Some(3));
        assert_eq!(l.migratable(0x3008), None);
        assert_eq!(l.migratable(0x5000), None);
        assert_eq!(l.migratable(0xfe00_0000), None);
        let pages: std::vec::Vec<_> = l.migratable_pages().map(|p| p.0).collect();
        assert_eq!(pages.len(), 18);
        assert!(!pages.contains(&0x4000) && !pages.contains(&0x5000));
        assert_eq!(pages.last(), Some(&0x1_0000_3000));
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert_eq!(
            HelperLayout::new(&[(0, 0x1001)], (0, 0), 0, (0, 0)),
            Err(LayoutError::BadRange)
        );
        assert_eq!(
            HelperLayout::new(&[(0x2000, 0x1000), (0x1000, 0x1000)], (0, 0), 0, (0, 0)),
            Err(LayoutError::BadRange)
        );
        assert_eq!(
            HelperLayout::new(&[(0, 0x1000); 9], (0, 0), 0, (0, 0)),
            Err(LayoutError::TooManyRanges)
        );
    }
}
