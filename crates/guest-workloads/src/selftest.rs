//! The memory self-test: every CPU fills its share of free RAM with a pattern that depends
//! on the address and a per-boot seed, then verifies it.

use crate::{cpu, globals, migration, println, services};
use core::sync::atomic::Ordering;
use guest_abi::memmap::{Region, RegionKind};
use guest_abi::services::{exit_code, Event};

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
            migration::check();
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
            migration::check();
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

/// The boot CPU's part of the self-test: releases the APs, does its share, waits for
/// theirs, prints the verdict and stops the VM with it.
pub fn run(ncpus: u32, tsc_khz: u64) -> ! {
    let g = globals::get();
    services::event(Event::WORKLOAD_START);
    let t0 = cpu::rdtsc();
    globals::release_aps();
    run_share(0, ncpus as usize);
    let reports = &g.reports[..ncpus as usize];
    while !reports.iter().all(|r| r.done.load(Ordering::Acquire)) {
        migration::check();
        core::hint::spin_loop();
    }
    let wall = cpu::rdtsc() - t0;
    services::event(Event::WORKLOAD_DONE);

    let sum = |f: fn(&globals::CpuReport) -> u64| reports.iter().map(f).sum::<u64>();
    let bytes = sum(|r| r.bytes.load(Ordering::Relaxed));
    let mismatches = sum(|r| r.mismatches.load(Ordering::Relaxed));
    let max = |f: fn(&globals::CpuReport) -> u64| reports.iter().map(f).max().unwrap_or(0);
    let fill = max(|r| r.fill_ticks.load(Ordering::Relaxed));
    let verify = max(|r| r.verify_ticks.load(Ordering::Relaxed));
    // MiB/s from bytes and TSC ticks, in integers (no floating point needed).
    let rate = |ticks: u64| {
        ((u128::from(bytes) * u128::from(tsc_khz) * 1000 / u128::from(ticks.max(1))) >> 20) as u64
    };
    let ms = wall / tsc_khz;
    if mismatches == 0 {
        println!(
            "selftest: PASS: {} MiB verified on {} vCPU(s) in {} ms (fill {} MiB/s, verify {} MiB/s)",
            bytes >> 20,
            ncpus,
            ms,
            rate(fill),
            rate(verify),
        );
        services::exit(exit_code::PASS)
    }
    let (cpu, first) = reports
        .iter()
        .enumerate()
        .find(|(_, r)| r.mismatches.load(Ordering::Relaxed) > 0)
        .map(|(i, r)| (i, r.first_bad.load(Ordering::Relaxed)))
        .unwrap_or((0, 0));
    println!(
        "selftest: FAIL: {mismatches} of {} words differ; first at {first:#x} (vCPU {cpu})",
        bytes / 8
    );
    services::exit(exit_code::FAIL)
}
