//! The dirty workload: keeps rewriting pages at a steady rate, the way a busy guest dirties
//! memory during a live migration, and can prove at any moment that every page holds what
//! it last wrote.
//!
//! Every usable page is first filled with generation 1. Then the workload sweeps the pages
//! in order, rewriting each with the next generation, `rate` pages per second (sleeping
//! on the APIC timer in between, so an idle host core stays idle). Its progress is one
//! word, generation << 32 | position, stored after each page: pages before the position
//! hold the current generation, pages after it the previous one, and the page at the
//! position may hold either (word by word: it may be half written when a snapshot is
//! taken). The host asks for a check through the services page (`REQUEST`); after a
//! migration the target asks the same of the guest it received.

use crate::{cpu, globals, migration, println, services};
use core::sync::atomic::Ordering;
use guest_abi::{
    layout::PAGE_SIZE,
    memmap::{Region, RegionKind},
    services::{exit_code, Event, Request},
};

/// Ticks between checks for host requests and rate deadlines (10 ms worth).
const TICK_MS: u64 = 10;

fn word(addr: u64, generation: u64, seed: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ generation.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) ^ seed
}

/// The usable pages, numbered across the memory map's usable regions.
struct Pages<'a> {
    regions: &'a [Region],
    count: u64,
}

impl<'a> Pages<'a> {
    fn new(regions: &'a [Region]) -> Self {
        let count = regions
            .iter()
            .filter(|r| r.kind == RegionKind::Usable)
            .map(|r| r.size / PAGE_SIZE)
            .sum();
        Pages { regions, count }
    }

    fn gpa(&self, mut index: u64) -> u64 {
        for r in self.regions.iter().filter(|r| r.kind == RegionKind::Usable) {
            let n = r.size / PAGE_SIZE;
            if index < n {
                return r.base + index * PAGE_SIZE;
            }
            index -= n;
        }
        0
    }
}

fn fill(gpa: u64, generation: u64, seed: u64) {
    // SAFETY: `gpa` is a usable page from the memory map, owned by this workload.
    let words = unsafe { core::slice::from_raw_parts_mut(gpa as *mut u64, PAGE_SIZE as usize / 8) };
    for (i, w) in words.iter_mut().enumerate() {
        *w = word(gpa + 8 * i as u64, generation, seed);
    }
}

/// Checks every page against the progress word; returns (bad pages, first bad GPA).
fn verify(pages: &Pages<'_>, state: u64, seed: u64) -> (u64, u64) {
    let (generation, position) = (state >> 32, state & 0xffff_ffff);
    let (mut bad, mut first) = (0, 0);
    for i in 0..pages.count {
        if i % 256 == 0 {
            migration::check();
        }
        let gpa = pages.gpa(i);
        // SAFETY: as in `fill`.
        let words =
            unsafe { core::slice::from_raw_parts(gpa as *const u64, PAGE_SIZE as usize / 8) };
        let ok = words.iter().enumerate().all(|(j, &w)| {
            let addr = gpa + 8 * j as u64;
            let (new, old) = (
                word(addr, generation, seed),
                word(addr, generation - 1, seed),
            );
            match i.cmp(&position) {
                core::cmp::Ordering::Less => w == new,
                core::cmp::Ordering::Greater => w == old,
                core::cmp::Ordering::Equal => w == new || w == old,
            }
        });
        if !ok {
            if bad == 0 {
                first = gpa;
            }
            bad += 1;
        }
    }
    (bad, first)
}

/// Runs the workload forever (or until asked to verify and exit).
pub fn run(rate: u64, tsc_khz: u64) -> ! {
    let g = globals::get();
    let pages = Pages::new(g.map.regions());
    if pages.count < 2 {
        println!("dirty: no usable memory");
        services::exit(exit_code::BAD_CONFIG);
    }
    let seed = cpu::rdtsc() | 1;
    g.dirty_seed.store(seed, Ordering::Relaxed);
    for i in 0..pages.count {
        if i % 256 == 0 {
            migration::check();
        }
        fill(pages.gpa(i), 1, seed);
    }
    g.dirty_state.store(2 << 32, Ordering::Release);
    println!(
        "dirty: {} pages ({} MiB) filled; rewriting {} pages/s",
        pages.count,
        (pages.count * PAGE_SIZE) >> 20,
        rate
    );
    services::event(Event::WORKLOAD_START);

    let tick = tsc_khz * TICK_MS;
    // Pages per tick: the rate spread over ticks (at least one page per tick when the
    // rate is not zero); rate 0 means as fast as possible, checking requests per batch.
    let per_tick = if rate == 0 {
        256
    } else {
        (rate * TICK_MS).div_ceil(1000)
    };
    let tick = if rate == 0 {
        0
    } else {
        tick * per_tick * 1000 / (rate * TICK_MS)
    };
    let mut deadline = cpu::rdtsc();
    loop {
        // At most one tick (10 ms, or one 256-page batch) between checks.
        migration::check();
        for _ in 0..per_tick {
            let state = g.dirty_state.load(Ordering::Relaxed);
            let (generation, position) = (state >> 32, state & 0xffff_ffff);
            fill(pages.gpa(position), generation, seed);
            let next = if position + 1 == pages.count {
                (generation + 1) << 32
            } else {
                generation << 32 | (position + 1)
            };
            g.dirty_state.store(next, Ordering::Release);
        }
        match services::take_request() {
            Request::NONE => {}
            request => {
                let state = g.dirty_state.load(Ordering::Acquire);
                let (bad, first) = verify(&pages, state, g.dirty_seed.load(Ordering::Relaxed));
                let (generation, position) = (state >> 32, state & 0xffff_ffff);
                if bad == 0 {
                    println!(
                        "dirty: verify PASS: {} pages consistent at generation {generation}, position {position}",
                        pages.count
                    );
                } else {
                    println!(
                        "dirty: verify FAIL: {bad} of {} pages inconsistent, first at {first:#x} (generation {generation}, position {position})",
                        pages.count
                    );
                }
                if request == Request::VERIFY_AND_EXIT {
                    services::exit(if bad == 0 {
                        exit_code::PASS
                    } else {
                        exit_code::FAIL
                    });
                }
            }
        }
        if tick > 0 {
            deadline += tick;
            let now = cpu::rdtsc();
            if deadline > now {
                cpu::sleep_until(deadline);
            } else {
                // Behind (e.g. after a pause or a migration): do not try to catch up.
                deadline = now;
            }
        }
    }
}
