//! The firmware's side of SMP: the real-mode trampoline and what an AP does at CPL3
//! (guest-rt `smp` sends the IPIs).

use crate::{boot, es, ghcb, globals};
use core::sync::atomic::Ordering;
use guest_abi::layout;

/// Copies the real-mode AP entry code to the trampoline page, where a plain (not SEV-ES)
/// AP starts after INIT-SIPI-SIPI with vector `AP_TRAMPOLINE >> 12`. Boot CPU, before any
/// AP starts; done before a hand-off too, since the OS starts its APs the same way.
pub fn install_trampoline() {
    if es::active() {
        // An SEV-ES AP starts at the reset block's entry in ROM, whatever the vector.
        return;
    }
    let code = boot::ap_trampoline_code();
    // SAFETY: the trampoline page is reserved RAM below 1 MiB, identity-mapped, and no AP
    // runs yet; the code is a few dozen bytes, far less than the page.
    unsafe {
        core::ptr::copy_nonoverlapping(code.as_ptr(), layout::AP_TRAMPOLINE as *mut u8, code.len());
    }
}

/// Where an AP goes once at CPL3: its GHCB (SEV-ES), then the OS if the firmware handed
/// off to one, or else the workload's share.
pub fn ap_main(cpu_index: usize) -> ! {
    if es::active() && ghcb::establish(cpu_index).is_err() {
        // Without a GHCB nothing can be reported; the boot CPU's wait times out.
        es::terminate()
    }
    let g = globals::get();
    // Direct boot of an ELF OS: the OS started this AP, and it enters the OS as the boot
    // CPU did (ELF hand-off protocol, docs/architecture.md §8).
    let entry = g.handoff_entry.load(Ordering::Acquire);
    if entry != 0 {
        crate::cpu::handoff(entry, g.handoff_zero_page.load(Ordering::Relaxed))
    }
    guest_workloads::ap_join(cpu_index)
}
