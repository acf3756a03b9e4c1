//! Starting the application processors with INIT-SIPI-SIPI through the x2APIC.
//!
//! The in-kernel xAPIC drops IPIs on these machines unless the VMM refreshes the APs'
//! LAPIC state, while x2APIC ICR writes work (docs/architecture.md §4), so the boot CPU switches its
//! APIC to x2APIC mode first.
//!
//! Under SEV-ES the same IPIs go out as WRMSRs through the GHCB, and an AP starts where its
//! VMSA was measured to start, whatever the SIPI vector: at the AP entry of the firmware's
//! SEV-ES reset block (`sevm_ap16` in ROM; KVM's first SIPI to an SEV-ES vCPU,
//! `sev_vcpu_deliver_sipi_vector`). No trampoline is copied, and each AP sets up its own
//! GHCB before it checks in.

use crate::{cpu, globals};
use core::sync::atomic::Ordering;
use guest_abi::layout;

const MSR_APIC_BASE: u32 = 0x1b;
const APIC_BASE_EXTD: u64 = 1 << 10;
const APIC_BASE_ENABLE: u64 = 1 << 11;
const MSR_X2APIC_ICR: u32 = 0x830;
const ICR_INIT_ASSERT: u64 = 0x4500;
const ICR_STARTUP: u64 = 0x4600;

/// Why the APs did not all come up.
pub struct ApTimeout {
    /// APs that did reach CPL3.
    pub online: u32,
}

/// Starts CPUs 1..ncpus and waits until each has checked in (`globals::aps_online`).
/// Without SEV-ES an AP starts in real mode at the firmware's trampoline page
/// (guest-abi `layout::AP_TRAMPOLINE`), which the firmware fills before anything starts
/// APs: the firmware before its workloads, or before it hands off to the OS.
pub fn start_aps(ncpus: u32, tsc_khz: u64) -> Result<(), ApTimeout> {
    let base = cpu::rdmsr(MSR_APIC_BASE);
    cpu::wrmsr(MSR_APIC_BASE, base | APIC_BASE_ENABLE | APIC_BASE_EXTD);
    let vector = layout::AP_TRAMPOLINE >> 12;
    for apic_id in 1..u64::from(ncpus) {
        let dest = apic_id << 32;
        cpu::wrmsr(MSR_X2APIC_ICR, dest | ICR_INIT_ASSERT);
        cpu::wrmsr(MSR_X2APIC_ICR, dest | ICR_STARTUP | vector);
        cpu::wrmsr(MSR_X2APIC_ICR, dest | ICR_STARTUP | vector);
    }
    let online = &globals::get().aps_online;
    let deadline = cpu::Deadline::after_ms(2000, tsc_khz);
    while online.load(Ordering::Acquire) < ncpus - 1 {
        if deadline.passed() {
            return Err(ApTimeout {
                online: online.load(Ordering::Acquire),
            });
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// SEV-ES migration target, after the boot CPU restored its state: INIT-SIPI-SIPI to CPUs
/// 1..ncpus, as at boot. Each starts at its measured reset VMSA and, finding its saved
/// state in its slot, resumes it (rt.s `sevm_resume`); nothing waits for them here.
pub fn restart_aps(ncpus: u32) {
    let base = cpu::rdmsr(MSR_APIC_BASE);
    cpu::wrmsr(MSR_APIC_BASE, base | APIC_BASE_ENABLE | APIC_BASE_EXTD);
    let vector = layout::AP_TRAMPOLINE >> 12;
    for apic_id in 1..u64::from(ncpus.min(layout::MAX_VCPUS as u32)) {
        let dest = apic_id << 32;
        cpu::wrmsr(MSR_X2APIC_ICR, dest | ICR_INIT_ASSERT);
        cpu::wrmsr(MSR_X2APIC_ICR, dest | ICR_STARTUP | vector);
        cpu::wrmsr(MSR_X2APIC_ICR, dest | ICR_STARTUP | vector);
    }
}
