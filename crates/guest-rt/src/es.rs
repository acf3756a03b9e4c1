//! SEV-ES in the guest: whether it is on, which CPU this is, and how to give up.
//!
//! The boot CPU reads SEV_STATUS at CPL0 before anything else (the firmware's boot.s, the
//! OS's entry.s) and leaves it in
//! the boot-info page (guest-abi `layout::boot_info`); from then on every exit the firmware
//! makes goes through its CPU's GHCB when SEV-ES is on: the services calls, fw_cfg's port
//! I/O, CPUID, the MSRs of the local APIC, page-state announcements (see `cpu`,
//! `services`, `sev`, `smp`). Only three MSRs stay CPL0 instructions: SEV_STATUS, the
//! GHCB MSR and EFER, which SEV-ES hardware serves without a #VC.

use crate::layout::{self, boot_info};
use guest_abi::ghcb::msr::{MsrRequest, MSR_GHCB};

/// SEV_STATUS (MSR 0xC001_0131).
pub const MSR_SEV_STATUS: u32 = 0xc001_0131;
/// EFER.
const MSR_EFER: u32 = 0xc000_0080;

fn boot_info(offset: u64) -> u64 {
    // SAFETY: the boot-info page is reserved RAM, identity-mapped, written by the boot
    // CPU's CPL0 code before any Rust code runs and never again; reading it is a plain
    // load of a value that no longer changes.
    unsafe { core::ptr::read_volatile((layout::BOOT_INFO + offset) as *const u64) }
}

/// SEV_STATUS as the boot CPU read it (0 without SEV).
pub fn sev_status() -> u64 {
    boot_info(boot_info::SEV_STATUS)
}

/// Whether SEV-ES is active: every exit goes through the GHCB.
pub fn active() -> bool {
    sev_status() & 3 == 3
}

/// XCR0 as boot.s set it under SEV-ES (1, x87 only, where it set none).
pub fn xcr0() -> u64 {
    match boot_info(boot_info::XCR0) {
        0 => 1,
        x => x,
    }
}

/// Whether SEV-ES hardware serves this MSR without a #VC (the CPL0 instructions do).
pub fn msr_without_vc(msr: u32) -> bool {
    matches!(msr, MSR_SEV_STATUS | MSR_GHCB | MSR_EFER)
}

/// This CPU's index, from its stack pointer: every CPU runs its CPL3 code on its own user
/// stack (guest-abi `layout::ustack_top`), so no CPUID (an exit) is needed.
pub fn current_cpu() -> usize {
    let rsp: u64;
    // SAFETY: reads the stack pointer; no memory access, no side effect.
    unsafe { core::arch::asm!("mov {}, rsp", out(reg) rsp, options(nomem, nostack)) };
    (rsp.saturating_sub(layout::USTACKS) / layout::USTACK_SIZE) as usize
}

/// Asks the host to stop the guest through the GHCB MSR protocol (no GHCB needed) and
/// parks: the last resort when the GHCB itself fails.
pub fn terminate() -> ! {
    let request = MsrRequest::Terminate { set: 0, reason: 0 }.encode();
    crate::cpu::wrmsr(MSR_GHCB, request);
    crate::ghcb::doorbell();
    crate::cpu::halt()
}
