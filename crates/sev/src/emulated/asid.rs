//! ASID allocation as the kernel does it (`sev_asid_new`, `sev_asid_free`,
//! `__sev_recycle_asids` in `arch/x86/kvm/svm/sev.c`): SEV guests take ASIDs from
//! `min_sev_asid..=max_sev_asid`, SEV-ES guests from `1..min_sev_asid`; a freed ASID
//! goes to a reclaim set and is reused only once the range is exhausted (after the
//! DF_FLUSH the kernel issues then); with nothing to reclaim, allocation fails (EBUSY).

use std::collections::BTreeSet;

/// Which ASID range a guest draws from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AsidKind {
    /// Plain SEV: `min_sev_asid..=max_sev_asid`.
    Sev,
    /// SEV-ES: `1..min_sev_asid`.
    Es,
}

/// The platform's ASIDs.
#[derive(Clone, Debug)]
pub struct AsidPool {
    min_sev: u32,
    max_sev: u32,
    used: BTreeSet<u32>,
    reclaim: BTreeSet<u32>,
}

impl AsidPool {
    /// A pool with CPUID 0x8000001F EDX = `min_sev` and ECX = `max_sev`.
    pub fn new(min_sev: u32, max_sev: u32) -> AsidPool {
        AsidPool {
            min_sev,
            max_sev,
            used: BTreeSet::new(),
            reclaim: BTreeSet::new(),
        }
    }

    fn range(&self, kind: AsidKind) -> std::ops::RangeInclusive<u32> {
        match kind {
            AsidKind::Sev => self.min_sev..=self.max_sev,
            AsidKind::Es => 1..=self.min_sev.saturating_sub(1),
        }
    }

    fn first_free(&self, kind: AsidKind) -> Option<u32> {
        self.range(kind)
            .find(|a| *a != 0 && !self.used.contains(a) && !self.reclaim.contains(a))
    }

    /// Allocates the lowest free ASID of `kind`, recycling reclaimed ones if none is
    /// free. `None` when every ASID of the range is in use (the kernel's EBUSY).
    pub fn allocate(&mut self, kind: AsidKind) -> Option<u32> {
        let asid = match self.first_free(kind) {
            Some(a) => a,
            None => {
                // DF_FLUSH: every reclaimable ASID (of both ranges) becomes free again.
                if self.reclaim.is_empty() {
                    return None;
                }
                self.reclaim.clear();
                self.first_free(kind)?
            }
        };
        self.used.insert(asid);
        Some(asid)
    }

    /// Releases `asid` to the reclaim set.
    pub fn release(&mut self, asid: u32) {
        if self.used.remove(&asid) {
            self.reclaim.insert(asid);
        }
    }

    /// Whether `asid` is held by a guest context.
    pub fn in_use(&self, asid: u32) -> bool {
        self.used.contains(&asid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_exhaustion_and_deferred_reuse() {
        let mut p = AsidPool::new(4, 6);
        assert_eq!(p.allocate(AsidKind::Sev), Some(4));
        assert_eq!(p.allocate(AsidKind::Sev), Some(5));
        assert_eq!(p.allocate(AsidKind::Es), Some(1));
        p.release(4);
        assert!(!p.in_use(4));
        // A freed ASID is not reused while fresh ones remain.
        assert_eq!(p.allocate(AsidKind::Sev), Some(6));
        // Exhausted: the reclaim set is flushed and 4 comes back.
        assert_eq!(p.allocate(AsidKind::Sev), Some(4));
        assert_eq!(p.allocate(AsidKind::Sev), None);
        assert_eq!(p.allocate(AsidKind::Es), Some(2));
        assert_eq!(p.allocate(AsidKind::Es), Some(3));
        assert_eq!(p.allocate(AsidKind::Es), None);
        // No ES range when min is 1.
        assert_eq!(AsidPool::new(1, 3).allocate(AsidKind::Es), None);
    }
}
