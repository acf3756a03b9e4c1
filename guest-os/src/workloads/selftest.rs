//! The memory self-test: every CPU fills its share of free RAM with a pattern that depends
//! on the address and a per-boot seed, then verifies it.

use crate::{cpu, globals};
use core::sync::atomic::Ordering;
use guest_abi::memmap::{Region, RegionKind};

/// Words filled or verified between two "migrated out" checks: 1 MiB, well under the
/// 10 ms the check allows even at 1 GB/s.
const CHECK_WORDS: usize = (1 << 20) / 8;

/// The expected word at `addr`.
#[inline(always)]
fn pattern(addr: u64, seed: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seed
}

/// The byte ranges of usable RAM that CPU `cpu_index` of `ncpus` owns: the usable regions
/// laid end to end and cut into equal, page-aligned shares.
fn share<'a>(
    regions: &'a [Region],
    cpu_index: usize,
    ncpus: usize,
) -> impl Iterator<Item = (u64, u64)> + 'a {
    let usable = || regions.iter().filter(|r| r.kind == RegionKind::Usable);
    let total: u64 = usable().map(|r| r.size).sum();
    let cut = |i: usize| (total / ncpus as u64 * i as u64) & !0xfff;
    let (lo, hi) = (
        cut(cpu_index),
        if cpu_index + 1 == ncpus {
            total
        } else {
            cut(cpu_index + 1)
        },
    );
    let mut offset = 0;
    usable().filter_map(move |r| {
        let (start, end) = (offset, offset + r.size);
        offset = end;
        let (s, e) = (start.max(lo), end.min(hi));
        (s < e).then(|| (r.base + (s - start), e - s))
    })
}

/// Fills and verifies this CPU's share and publishes the result in its report slot.
pub fn run_share(cpu_index: usize, ncpus: usize) {
    let g = globals::get();
    let seed = g.seed.load(Ordering::Acquire);
    let report = &g.reports[cpu_index];
    let (mut bytes, mut mismatches, mut first_bad) = (0, 0, 0);
    let t0 = cpu::rdtsc();
    for (base, size) in share(g.map.regions(), cpu_index, ncpus) {
        // SAFETY: the range is usable RAM from the memory map, identity-mapped, owned by
        // this CPU alone (shares are disjoint) and not used by the firmware itself.
        let words = unsafe { core::slice::from_raw_parts_mut(base as *mut u64, size as usize / 8) };
        for (c, chunk) in words.chunks_mut(CHECK_WORDS).enumerate() {
            crate::migration::check();
            let at = base + 8 * (c * CHECK_WORDS) as u64;
            for (i, w) in chunk.iter_mut().enumerate() {
                *w = pattern(at + 8 * i as u64, seed);
            }
        }
    }
    let t1 = cpu::rdtsc();
    for (base, size) in share(g.map.regions(), cpu_index, ncpus) {
        // SAFETY: as above.
        let words = unsafe { core::slice::from_raw_parts(base as *const u64, size as usize / 8) };
        for (c, chunk) in words.chunks(CHECK_WORDS).enumerate() {
            crate::migration::check();
            let at = base + 8 * (c * CHECK_WORDS) as u64;
            for (i, &w) in chunk.iter().enumerate() {
                let addr = at + 8 * i as u64;
                if w != pattern(addr, seed) {
                    if mismatches == 0 {
                        first_bad = addr;
                    }
                    mismatches += 1;
                }
            }
        }
        bytes += size;
    }
    let t2 = cpu::rdtsc();
    report.bytes.store(bytes, Ordering::Relaxed);
    report.mismatches.store(mismatches, Ordering::Relaxed);
    report.first_bad.store(first_bad, Ordering::Relaxed);
    report.fill_ticks.store(t1 - t0, Ordering::Relaxed);
    report.verify_ticks.store(t2 - t1, Ordering::Relaxed);
    report.done.store(true, Ordering::Release);
}
