//! The "migrated out" check every workload runs (guest-abi `migration`): once this
//! guest's migration helper committed a migration, this copy of the guest must never run
//! again, so each CPU parks as soon as it sees the flag — within
//! `CHECK_INTERVAL_MS` (10 ms) of the commit.

use crate::layout;
use crate::{cpu, println};
use guest_abi::migration;

/// Whether the helper marked this guest "migrated out".
pub fn migrated_out() -> bool {
    // SAFETY: MIGRATION_STATE is a page of the SEV area, reserved RAM in every memory
    // map, identity-mapped; only the helper writes it. A volatile read: the helper (on
    // another VM's vCPU) changes it behind the compiler's back.
    let word = unsafe { core::ptr::read_volatile(layout::MIGRATION_STATE as *const u64) };
    migration::is_migrated_out(word)
}

/// Parks this CPU for good if the guest migrated out. Under SEV-ES it also asks the host
/// whether to save this vCPU's state for a migration (`es_state::checkpoint`).
pub fn check() {
    if migrated_out() {
        println!(
            "{}: vCPU {}: this guest migrated out; it stops here for good",
            crate::NAME,
            cpu::apic_id()
        );
        cpu::halt()
    }
    if crate::es::active() {
        crate::es_state::checkpoint();
    }
}

/// A migration target's boot CPU once its helper is ready: waits for the guest. Plain
/// SEV: halted, and the VMM loads the received registers. SEV-ES: held at CPL0 until the
/// pages arrived, then it resumes its saved state itself (boot.s, `INCOMING_HOLD`).
pub fn await_incoming() -> ! {
    if crate::es::active() {
        cpu::incoming_hold()
    }
    cpu::halt()
}

/// Waits (halted between checks) until the VMM stops the VM, checking the flag every
/// `CHECK_INTERVAL_MS`: the idle loop of the boot CPU and the APs.
pub fn idle(tsc_khz: u64) -> ! {
    let tick = tsc_khz.max(1) * migration::CHECK_INTERVAL_MS;
    loop {
        check();
        cpu::sleep_until(cpu::rdtsc().saturating_add(tick));
    }
}
