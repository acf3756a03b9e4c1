//! The workloads of sevmirror's guests, chosen by the VMM through fw_cfg (`--workload
//! NAME`): the guest OS runs them, and the firmware runs them itself when it boots no
//! kernel (`run --no-kernel`, its own tests, QEMU's benchmark row). Besides the memory
//! workloads, `vctest` and `bypass-*` test the SEV-ES path of whichever image runs them. They run at CPL3 on
//! guest-rt, every CPU on its share, and check the migrated-out flag as they go.

#![no_std]

pub mod bypass;
pub mod canary;
pub mod config;
pub mod dirty;
pub mod selftest;
pub mod vctest;

use core::sync::atomic::Ordering;
use guest_abi::{
    memmap::{MemoryMap, PageAllocator},
    services::{exit_code, Event},
};
use guest_rt::{cpu, globals, migration, println, services, sev::Sev};

/// Publishes what the APs need to their share (the memory map, the CPU count, the TSC
/// rate, the self-test's seed) in the cross-CPU page. Boot CPU, before the APs start.
pub fn publish(map: &MemoryMap, settings: &config::Settings) {
    let g = globals::get();
    globals::set_map(map);
    g.ncpus.store(settings.ncpus, Ordering::Relaxed);
    g.tsc_khz.store(settings.tsc_khz, Ordering::Relaxed);
    g.seed.store(cpu::rdtsc() | 1, Ordering::Relaxed);
}

/// Runs `workload` on the boot CPU, releasing the APs (which wait in [`ap_join`]) to their
/// share or to park. `map` is the memory the workloads may use; `sev` how the guest runs.
pub fn run(
    workload: Workload,
    map: &MemoryMap,
    settings: &config::Settings,
    sev: Option<Sev>,
) -> ! {
    match workload {
        Workload::Idle => {
            println!("idle: halted until the VMM stops the VM");
            services::event(Event::WORKLOAD_START);
            globals::release_aps_idle();
            migration::idle(settings.tsc_khz)
        }
        Workload::SelfTest => selftest::run(settings.ncpus, settings.tsc_khz),
        Workload::Dirty => {
            globals::release_aps_idle();
            dirty::run(settings.dirty_rate, settings.tsc_khz)
        }
        Workload::VcTest => vctest::run(sev.is_some_and(|s| s.es)),
        Workload::Bypass(access) => bypass::run(access),
        Workload::Canary => {
            let mut alloc = PageAllocator::new(map);
            if canary::run(&mut alloc, sev.is_some()).is_none() {
                println!("{}: error: canary: no memory", guest_rt::NAME);
                services::exit(exit_code::FAIL)
            }
            services::event(Event::WORKLOAD_START);
            globals::release_aps_idle();
            migration::idle(settings.tsc_khz)
        }
    }
}

/// What an AP does once it is set up (under SEV-ES, its GHCB established): check in, wait
/// to be released, take its share or park.
pub fn ap_join(cpu_index: usize) -> ! {
    let g = globals::get();
    g.aps_online.fetch_add(1, Ordering::AcqRel);
    while !g.go.load(Ordering::Acquire) {
        migration::check();
        core::hint::spin_loop();
    }
    run_share(cpu_index);
    migration::idle(g.tsc_khz.load(Ordering::Relaxed))
}

/// What an AP does once released: park (idle) or its share of the self-test.
pub fn run_share(cpu_index: usize) {
    let g = globals::get();
    if g.idle.load(Ordering::Relaxed) {
        return;
    }
    let ncpus = g.ncpus.load(Ordering::Acquire) as usize;
    selftest::run_share(cpu_index, ncpus);
}

/// The workloads a guest runs (the guest OS, or the firmware without a kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Fill all free RAM with a position-dependent pattern and verify it.
    SelfTest,
    /// Stay up, halted, until the VMM stops the VM.
    Idle,
    /// Write a known canary into one private and one shared page, then idle: shows what
    /// the host can and cannot see of guest memory.
    Canary,
    /// Keep rewriting pages at a set rate; verify them on the host's request.
    Dirty,
    /// Enter the SEV-ES #VC handler with synthetic frames against the real VMM.
    VcTest,
    /// Make one plain port or MMIO access (the VMM's SEV-ES strict mode must stop it).
    Bypass(bypass::Access),
}

impl Workload {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SelfTest => "selftest",
            Workload::Idle => "idle",
            Workload::Canary => "canary",
            Workload::Dirty => "dirty",
            Workload::VcTest => "vctest",
            Workload::Bypass(bypass::Access::Pio) => "bypass-pio",
            Workload::Bypass(bypass::Access::Mmio) => "bypass-mmio",
            Workload::Bypass(bypass::Access::Msr) => "bypass-msr",
        }
    }

    /// Parses a workload name (surrounding whitespace ignored).
    pub fn from_name(name: &[u8]) -> Option<Workload> {
        match name.trim_ascii() {
            b"selftest" => Some(Workload::SelfTest),
            b"idle" => Some(Workload::Idle),
            b"canary" => Some(Workload::Canary),
            b"dirty" => Some(Workload::Dirty),
            b"vctest" => Some(Workload::VcTest),
            b"bypass-pio" => Some(Workload::Bypass(bypass::Access::Pio)),
            b"bypass-mmio" => Some(Workload::Bypass(bypass::Access::Mmio)),
            b"bypass-msr" => Some(Workload::Bypass(bypass::Access::Msr)),
            _ => None,
        }
    }
}
