//! The workloads of sevmirror's guests, chosen by the VMM through fw_cfg (`--workload
//! NAME`): the guest OS runs them, and the firmware runs them itself when it boots no
//! kernel (`run --no-kernel`, its own tests, QEMU's benchmark row). They run at CPL3 on
//! guest-rt, every CPU on its share, and check the migrated-out flag as they go.

#![no_std]

pub mod canary;
pub mod config;
pub mod dirty;
pub mod selftest;

use core::sync::atomic::Ordering;
use guest_rt::{cpu, globals, migration, println, services};

/// What an AP does once released: park (idle) or its share of the self-test.
pub fn run_share(cpu_index: usize) {
    let g = globals::get();
    if g.idle.load(Ordering::Relaxed) {
        return;
    }
    let ncpus = g.ncpus.load(Ordering::Acquire) as usize;
    selftest::run_share(cpu_index, ncpus);
}
