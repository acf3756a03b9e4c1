//! The `scribble` test option (guest-abi `fwcfg::FILE_SCRIBBLE`): the OS does what an OS
//! that ignores its memory map would do to the migration helper, so that the helper's
//! self-check can be seen refusing (mirror-helper `integrity`, docs/architecture.md §9).
//! This is the one place the OS touches a region its map reserves, on purpose.
//!
//! It waits until the helper has served its first request (its mirror is attached and
//! the helper checked itself against its boot-time digests at least once): the request
//! count is the helper's, in its context (mirror-helper `session::REQUESTS_OFFSET`).
//! Then it overwrites the helper's IDT page, a reserved page the running helper does not
//! otherwise touch (it takes no exceptions), and returns; the workload then runs as
//! usual. From then on every request the helper gets is refused with `CORRUPTED`; the
//! guest's own memory is untouched.

use guest_abi::{fwcfg as abi, layout};
use guest_rt::{cpu, fwcfg::FwCfg, println};
use helper_abi::region;
use mirror_helper::session::REQUESTS_OFFSET;

/// How long to wait for the helper's first request before scribbling anyway.
const WAIT_MS: u64 = 30_000;

/// Whether the host asked for the scribble.
pub fn requested(fw: &FwCfg) -> bool {
    fw.find(abi::FILE_SCRIBBLE).is_ok()
}

/// Requests the helper has served since boot.
fn requests_served() -> u64 {
    let counter = layout::HELPER_REGION_BASE + region::CONTEXT + REQUESTS_OFFSET as u64;
    // SAFETY: the helper's context is RAM of its region, identity-mapped; the counter is
    // an aligned u64 the helper vCPUs update atomically. Reading it is this test option's
    // deliberate breach of the memory map (a read, unlike the write below).
    unsafe { core::ptr::read_volatile(counter as *const u64) }
}

/// Waits for the helper's first request, then overwrites the helper's IDT.
pub fn run(tsc_khz: u64) {
    let deadline = cpu::Deadline::after_ms(WAIT_MS, tsc_khz);
    while requests_served() == 0 && !deadline.passed() {
        cpu::sleep_until(cpu::rdtsc().saturating_add(10 * tsc_khz));
    }
    let idt = layout::HELPER_REGION_BASE + region::IDT;
    // SAFETY: the page is reserved RAM of the helper region, identity-mapped; nothing of
    // this OS uses it. Writing it is the point of this test option.
    unsafe { core::ptr::write_bytes(idt as *mut u8, 0x5a, layout::PAGE_SIZE as usize) };
    println!(
        "scribble: wrote {} bytes over the migration helper's IDT at {idt:#x} (after {} helper requests)",
        layout::PAGE_SIZE,
        requests_served()
    );
}
