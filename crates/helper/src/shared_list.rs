//! The guest's own record of the pages it shares with the host.
//!
//! The firmware's `map_gpa_range()` keeps this list in a private page of guest memory.
//! It is guest state (migrated with the guest), and it is how the helper knows which
//! pages are private without asking the host: shared pages are copied by the host in
//! the clear, every other page must travel sealed, and the manifest covers exactly those.
//!
//! Format (one page, little-endian): "SHRD", u32 count, then `count` × (u64 gpa, u64
//! pages), sorted, non-overlapping, page-aligned.

use helper_abi::PAGE_SIZE;

/// Most shared ranges the list holds.
pub const MAX_RANGES: usize = (PAGE_SIZE - 8) / 16;
const MAGIC: [u8; 4] = *b"SHRD";

/// The list, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedList {
    ranges: [(u64, u64); MAX_RANGES],
    len: usize,
}

/// Why the list could not take a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SharedListError {
    /// More ranges than one page holds.
    Full,
}

impl Default for SharedList {
    fn default() -> Self {
        Self::new()
    }
}

impl SharedList {
    /// An empty list: every page private.
    pub const fn new() -> Self {
        SharedList {
            ranges: [(0, 0); MAX_RANGES],
            len: 0,
        }
    }

    /// Decodes a list page; anything malformed (no magic, bad count, unsorted or
    /// unaligned ranges) reads as an empty list, i.e. "every page private", which is the
    /// safe reading: it makes the manifest demand more, never less.
    pub fn decode(page: &[u8; PAGE_SIZE]) -> Self {
        let mut list = SharedList::new();
        if page[..4] != MAGIC {
            return list;
        }
        let count = u32::from_le_bytes([page[4], page[5], page[6], page[7]]) as usize;
        if count > MAX_RANGES {
            return list;
        }
        let mut prev_end = 0;
        for i in 0..count {
            let at = 8 + 16 * i;
            let gpa = u64::from_le_bytes(page[at..at + 8].try_into().unwrap_or([0; 8]));
            let pages = u64::from_le_bytes(page[at + 8..at + 16].try_into().unwrap_or([0; 8]));
            let end = pages
                .checked_mul(PAGE_SIZE as u64)
                .and_then(|len| gpa.checked_add(len));
            match end {
                Some(end) if pages > 0 && gpa % PAGE_SIZE as u64 == 0 && gpa >= prev_end => {
                    list.ranges[i] = (gpa, pages);
                    prev_end = end;
                }
                _ => return SharedList::new(),
            }
        }
        list.len = count;
        list
    }

    /// Bytes of the compact encoding ([`SharedList::encode_compact`]).
    pub fn compact_len(&self) -> usize {
        8 + 16 * self.len
    }

    /// Encodes the list into the first [`SharedList::compact_len`] bytes of `out` (the
    /// page format without the trailing zeros): the payload of a sealed shared-list
    /// record.
    pub fn encode_compact(&self, out: &mut [u8; PAGE_SIZE]) -> usize {
        self.encode(out);
        self.compact_len()
    }

    /// Decodes a compact list strictly: exactly `8 + 16 * count` bytes, magic, sorted,
    /// aligned, non-empty ranges. None for anything else (a sealed list is the source
    /// helper's own output, so a malformed one is refused, not read leniently).
    pub fn parse(bytes: &[u8]) -> Option<SharedList> {
        if bytes.len() < 8 || bytes.len() > PAGE_SIZE || bytes.get(..4)? != MAGIC {
            return None;
        }
        let count = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
        if count > MAX_RANGES || bytes.len() != 8 + 16 * count {
            return None;
        }
        let mut page = [0u8; PAGE_SIZE];
        page[..bytes.len()].copy_from_slice(bytes);
        let list = SharedList::decode(&page);
        (list.len == count).then_some(list)
    }

    /// Encodes the list into a page.
    pub fn encode(&self, page: &mut [u8; PAGE_SIZE]) {
        page.fill(0);
        page[..4].copy_from_slice(&MAGIC);
        page[4..8].copy_from_slice(&(self.len as u32).to_le_bytes());
        for (i, &(gpa, pages)) in self.ranges().iter().enumerate() {
            let at = 8 + 16 * i;
            page[at..at + 8].copy_from_slice(&gpa.to_le_bytes());
            page[at + 8..at + 16].copy_from_slice(&pages.to_le_bytes());
        }
    }

    /// The shared ranges (gpa, pages), sorted.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges[..self.len]
    }

    /// Whether the page at `gpa` is shared.
    pub fn is_shared(&self, gpa: u64) -> bool {
        let page = gpa / PAGE_SIZE as u64;
        self.ranges().iter().any(|&(g, n)| {
            let first = g / PAGE_SIZE as u64;
            page >= first && page - first < n
        })
    }

    /// Records that `pages` pages at `gpa` became shared (`true`) or private (`false`).
    /// The list stays sorted and merged; when it would overflow it stays unchanged.
    pub fn set(&mut self, gpa: u64, pages: u64, shared: bool) -> Result<(), SharedListError> {
        let p = PAGE_SIZE as u64;
        let (first, end) = (gpa / p, (gpa / p).saturating_add(pages));
        // Page-number intervals [a, b): the old ranges minus [first, end), plus it if shared.
        let mut parts = [(0u64, 0u64); MAX_RANGES + 2];
        let mut n = 0;
        for &(g, count) in self.ranges() {
            let (a, b) = (g / p, g / p + count);
            for part in [(a, first.min(b)), (end.max(a), b)] {
                if part.0 < part.1 {
                    parts[n] = part;
                    n += 1;
                }
            }
        }
        if shared && first < end {
            parts[n] = (first, end);
            n += 1;
        }
        let parts = &mut parts[..n];
        parts.sort_unstable();
        let mut out = SharedList::new();
        for &(a, b) in parts.iter() {
            match out.len.checked_sub(1) {
                Some(i) if out.ranges[i].0 / p + out.ranges[i].1 >= a => {
                    let start = out.ranges[i].0 / p;
                    out.ranges[i].1 = out.ranges[i].1.max(b - start);
                }
                _ if out.len == MAX_RANGES => return Err(SharedListError::Full),
                _ => {
                    out.ranges[out.len] = (a * p, b - a);
                    out.len += 1;
                }
            }
        }
        *self = out;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAGE_SIZE as u64;

    #[test]
    fn sharing_and_unsharing_keeps_the_list_sorted_and_merged() {
        let mut l = SharedList::new();
        l.set(10 * P, 2, true).unwrap();
        l.set(2 * P, 1, true).unwrap();
        l.set(12 * P, 3, true).unwrap();
        assert_eq!(l.ranges(), [(2 * P, 1), (10 * P, 5)]);
        l.set(11 * P, 2, false).unwrap();
        assert_eq!(l.ranges(), [(2 * P, 1), (10 * P, 1), (13 * P, 2)]);
        assert!(l.is_shared(13 * P + 8) && !l.is_shared(11 * P));
        l.set(0, 100, false).unwrap();
        assert!(l.ranges().is_empty());
    }

    #[test]
    fn round_trips_and_malformed_pages_read_as_all_private() {
        let mut l = SharedList::new();
        l.set(0x15_8000, 1, true).unwrap();
        let mut page = [0u8; PAGE_SIZE];
        l.encode(&mut page);
        assert_eq!(SharedList::decode(&page), l);
        let mut bad = page;
        bad[4] = 0xff; // count too large
        assert!(SharedList::decode(&bad).ranges().is_empty());
        let mut bad = page;
        bad[9] ^= 0x01; // unaligned gpa
        assert!(SharedList::decode(&bad).ranges().is_empty());
        assert!(SharedList::decode(&[0u8; PAGE_SIZE]).ranges().is_empty());
    }

    #[test]
    fn compact_lists_round_trip_and_only_exact_ones_parse() {
        let mut l = SharedList::new();
        l.set(0x3000, 2, true).unwrap();
        l.set(0x9000, 1, true).unwrap();
        let mut page = [0u8; PAGE_SIZE];
        let n = l.encode_compact(&mut page);
        assert_eq!(n, 8 + 32);
        assert_eq!(SharedList::parse(&page[..n]), Some(l));
        assert_eq!(SharedList::parse(&page[..n - 1]), None);
        assert_eq!(SharedList::parse(&page[..n + 16]), None);
        let mut bad = page;
        bad[8] = 1; // unaligned
        assert_eq!(SharedList::parse(&bad[..n]), None);
        assert_eq!(
            SharedList::parse(&page[..8]),
            None,
            "count 2 with no ranges"
        );
        let empty = SharedList::new();
        let n = empty.encode_compact(&mut page);
        assert_eq!(SharedList::parse(&page[..n]), Some(empty));
    }

    #[test]
    fn a_full_list_refuses_more_ranges() {
        let mut l = SharedList::new();
        for i in 0..MAX_RANGES as u64 {
            l.set(2 * i * P, 1, true).unwrap();
        }
        assert_eq!(
            l.set(2 * MAX_RANGES as u64 * P, 1, true),
            Err(SharedListError::Full)
        );
        assert_eq!(l.ranges().len(), MAX_RANGES);
    }
}
