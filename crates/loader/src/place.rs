//! Finding room in usable RAM for what the loader places: the kernel, the zero page, the
//! command line, the initrd.
//!
//! A placement lies entirely inside one usable region of the firmware's memory map (so
//! never in a reserved one) and overlaps nothing placed before it. Searches are bounded:
//! each step moves past one earlier placement, and there are at most [`MAX_CLAIMS`].

use guest_abi::memmap::{MemoryMap, RegionKind};

use crate::Span;

/// Most ranges one load places (ELF segments, zero page, command line, initrd).
pub const MAX_CLAIMS: usize = 24;

/// Why a range could not be claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// More placements than [`MAX_CLAIMS`].
    #[error("more than {MAX_CLAIMS} ranges to place")]
    TooMany,
    /// The range overlaps one placed before.
    #[error("{new:x?} overlaps {old:x?}, placed before it")]
    Overlap {
        /// The range being placed.
        new: Span,
        /// The earlier placement it overlaps.
        old: Span,
    },
}

/// Ranges placed so far.
#[derive(Clone, Copy, Debug)]
pub struct Claims {
    spans: [Span; MAX_CLAIMS],
    len: usize,
}

impl Default for Claims {
    fn default() -> Self {
        Self::new()
    }
}

impl Claims {
    /// Nothing placed yet.
    pub const fn new() -> Claims {
        Claims {
            spans: [Span { base: 0, size: 0 }; MAX_CLAIMS],
            len: 0,
        }
    }

    /// The placed ranges, in the order placed.
    pub fn spans(&self) -> &[Span] {
        self.spans.get(..self.len).unwrap_or(&[])
    }

    /// The first earlier placement overlapping `span`.
    pub fn overlapping(&self, span: &Span) -> Option<Span> {
        self.spans().iter().copied().find(|s| s.overlaps(span))
    }

    /// Records `span` as placed; empty spans are not recorded.
    pub fn claim(&mut self, span: Span) -> Result<(), ClaimError> {
        if span.size == 0 {
            return Ok(());
        }
        if let Some(old) = self.overlapping(&span) {
            return Err(ClaimError::Overlap { new: span, old });
        }
        let slot = self.spans.get_mut(self.len).ok_or(ClaimError::TooMany)?;
        *slot = span;
        self.len += 1;
        Ok(())
    }
}

/// `true` when `span` lies inside one usable region of `map`.
pub fn in_usable_ram(map: &MemoryMap, span: &Span) -> bool {
    map.usable().any(|r| {
        Span {
            base: r.base,
            size: r.size,
        }
        .contains(span)
    })
}

/// `v` rounded up to `align` (a power of two), or `None` on overflow.
pub const fn align_up(v: u64, align: u64) -> Option<u64> {
    match v.checked_add(align - 1) {
        Some(x) => Some(x & !(align - 1)),
        None => None,
    }
}

/// `v` rounded down to `align` (a power of two).
pub const fn align_down(v: u64, align: u64) -> u64 {
    v & !(align - 1)
}

/// What to look for: `size` bytes aligned to `align` (a power of two), starting at or
/// above `min` and ending at or below `limit`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    /// Bytes needed (non-zero).
    pub size: u64,
    /// Alignment of the start, a power of two.
    pub align: u64,
    /// Lowest acceptable start.
    pub min: u64,
    /// Highest acceptable end (exclusive).
    pub limit: u64,
}

impl Request {
    fn valid(&self) -> bool {
        self.size != 0 && self.align.is_power_of_two()
    }
}

/// The lowest range satisfying `req` in usable RAM that overlaps no claim.
pub fn lowest(map: &MemoryMap, claims: &Claims, req: &Request) -> Option<Span> {
    if !req.valid() {
        return None;
    }
    for r in map.usable() {
        let lo = r.base.max(req.min);
        let hi = r.end().min(req.limit);
        let mut start = align_up(lo, req.align)?;
        // Each pass either returns or moves `start` past a claim's end, so this loop runs
        // at most `claims.len() + 1` times.
        while let Some(span) = Span::new(start, req.size) {
            if span.end() > hi {
                break;
            }
            match claims.overlapping(&span) {
                Some(c) => match align_up(c.end(), req.align) {
                    Some(next) => start = next,
                    None => break,
                },
                None => return Some(span),
            }
        }
    }
    None
}

/// The highest range satisfying `req` in usable RAM that overlaps no claim.
pub fn highest(map: &MemoryMap, claims: &Claims, req: &Request) -> Option<Span> {
    if !req.valid() {
        return None;
    }
    for r in map
        .regions()
        .iter()
        .rev()
        .filter(|r| r.kind == RegionKind::Usable)
    {
        let lo = r.base.max(req.min);
        let mut end = r.end().min(req.limit);
        // Each pass either returns or moves `end` below a claim's start.
        while let Some(top) = end.checked_sub(req.size) {
            let start = align_down(top, req.align);
            if start < lo {
                break;
            }
            let span = Span {
                base: start,
                size: req.size,
            };
            match claims.overlapping(&span) {
                Some(c) => end = c.base,
                None => return Some(span),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const PAGE: u64 = 0x1000;

    fn map() -> MemoryMap {
        // Usable: [1M, 8M) and [16M, 32M).
        MemoryMap::build([(MIB, 7 * MIB), (16 * MIB, 16 * MIB)], &[]).unwrap()
    }

    fn req(size: u64, align: u64) -> Request {
        Request {
            size,
            align,
            min: 0,
            limit: u64::MAX,
        }
    }

    #[test]
    fn lowest_and_highest_stay_in_usable_ram() {
        let m = map();
        let c = Claims::new();
        assert_eq!(lowest(&m, &c, &req(PAGE, PAGE)).unwrap().base, MIB);
        assert_eq!(
            highest(&m, &c, &req(PAGE, PAGE)).unwrap().base,
            32 * MIB - PAGE
        );
        // Too big for the first region: goes to the second.
        assert_eq!(lowest(&m, &c, &req(10 * MIB, PAGE)).unwrap().base, 16 * MIB);
        // Bigger than any region.
        assert_eq!(lowest(&m, &c, &req(17 * MIB, PAGE)), None);
        assert_eq!(highest(&m, &c, &req(17 * MIB, PAGE)), None);
    }

    #[test]
    fn searches_skip_claims_and_respect_bounds() {
        let m = map();
        let mut c = Claims::new();
        c.claim(Span::new(MIB, 2 * MIB).unwrap()).unwrap();
        c.claim(Span::new(31 * MIB, MIB).unwrap()).unwrap();
        assert_eq!(lowest(&m, &c, &req(PAGE, PAGE)).unwrap().base, 3 * MIB);
        assert_eq!(
            highest(&m, &c, &req(PAGE, PAGE)).unwrap().base,
            31 * MIB - PAGE
        );
        let bounded = Request {
            size: MIB,
            align: 2 * MIB,
            min: 17 * MIB,
            limit: 20 * MIB,
        };
        assert_eq!(lowest(&m, &c, &bounded).unwrap().base, 18 * MIB);
        assert_eq!(highest(&m, &c, &bounded).unwrap().base, 18 * MIB);
        let impossible = Request {
            limit: 18 * MIB,
            ..bounded
        };
        assert_eq!(lowest(&m, &c, &impossible), None);
        assert_eq!(highest(&m, &c, &impossible), None);
    }

    #[test]
    fn invalid_requests_and_overflow_find_nothing() {
        let m = map();
        let c = Claims::new();
        assert_eq!(lowest(&m, &c, &req(0, PAGE)), None);
        assert_eq!(lowest(&m, &c, &req(PAGE, 3)), None);
        assert_eq!(highest(&m, &c, &req(u64::MAX, PAGE)), None);
        assert_eq!(lowest(&m, &c, &req(u64::MAX, PAGE)), None);
        let huge_align = req(PAGE, 1 << 63);
        assert_eq!(lowest(&m, &c, &huge_align), None);
    }

    #[test]
    fn claims_refuse_overlap_and_overflowing_count() {
        let mut c = Claims::new();
        c.claim(Span::new(0, PAGE).unwrap()).unwrap();
        let over = Span::new(PAGE - 1, 2).unwrap();
        assert_eq!(
            c.claim(over),
            Err(ClaimError::Overlap {
                new: over,
                old: Span::new(0, PAGE).unwrap()
            })
        );
        c.claim(Span { base: 5, size: 0 }).unwrap();
        for i in 1..MAX_CLAIMS as u64 {
            c.claim(Span::new(i * PAGE, PAGE).unwrap()).unwrap();
        }
        assert_eq!(
            c.claim(Span::new(1 << 40, PAGE).unwrap()),
            Err(ClaimError::TooMany)
        );
    }
}
