//! The `scribble` test option (guest-abi `fwcfg::FILE_SCRIBBLE`): the guest does what an
//! OS that ignores its memory map would do to the migration helper, so that the helper's
//! self-check can be seen refusing (mirror-helper `integrity`).
//!
//! It waits until the helper has served its first request (its mirror is attached and the
//! helper checked itself against its boot-time digests at least once), then overwrites
//! the helper's IDT page, a reserved page the running helper does not otherwise touch
//! (it takes no exceptions), and returns; the workload then runs as usual. From then on
//! every request the helper gets is refused with `CORRUPTED`; the guest's own memory is
//! untouched.

use crate::{cpu, fwcfg::FwCfg, helper, println};
use guest_abi::{fwcfg as abi, layout};
use helper_abi::region;

/// How long to wait for the helper's first request before scribbling anyway.
const WAIT_MS: u64 = 30_000;

/// Whether the host asked for the scribble.
pub fn requested() -> bool {
    FwCfg::probe().is_ok_and(|fw| fw.find(abi::FILE_SCRIBBLE).is_ok())
}

/// Waits for the helper's first request, then writes over its IDT.
pub fn run(tsc_khz: u64) {
    let deadline = cpu::Deadline::after_ms(WAIT_MS, tsc_khz);
    while helper::requests_served() == 0 && !deadline.passed() {
        cpu::sleep_until(cpu::rdtsc().saturating_add(10 * tsc_khz));
    }
    let idt = layout::HELPER_REGION_BASE + region::IDT;
    // SAFETY: the helper's IDT page is reserved RAM, identity-mapped; writing it is the
    // point of this test option (the helper only reads it, and checks it).
    unsafe { core::ptr::write_bytes(idt as *mut u8, 0x5a, layout::PAGE_SIZE as usize) };
    println!(
        "scribble: wrote {} bytes over the migration helper's IDT at {idt:#x} (after {} helper requests)",
        layout::PAGE_SIZE,
        helper::requests_served()
    );
}
