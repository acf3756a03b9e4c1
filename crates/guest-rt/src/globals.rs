//! State shared by all CPUs, kept in a fixed RAM page (the image itself is read-only).

use crate::layout;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use guest_abi::memmap::MemoryMap;

/// What one CPU reports back from its share of the workload.
#[repr(C)]
pub struct CpuReport {
    /// Set (release) once the other fields are final.
    pub done: AtomicBool,
    /// Bytes this CPU checked.
    pub bytes: AtomicU64,
    /// Words that did not hold the expected value.
    pub mismatches: AtomicU64,
    /// Address of the first mismatch (meaningful when `mismatches` > 0).
    pub first_bad: AtomicU64,
    /// TSC ticks spent filling and verifying.
    pub fill_ticks: AtomicU64,
    /// TSC ticks spent verifying.
    pub verify_ticks: AtomicU64,
}

/// The shared page. The boot CPU zeroes it before anything else runs and writes the
/// configuration fields before it releases the APs (`go`); the APs only read them after.
#[repr(C)]
pub struct Globals {
    /// Console lock, so lines from different CPUs do not interleave.
    pub console_lock: AtomicBool,
    /// APs that have reached CPL3 and wait for `go`.
    pub aps_online: AtomicU32,
    /// Released by the boot CPU once the configuration fields are written.
    pub go: AtomicBool,
    /// Whether released APs should park instead of taking a share of the self-test.
    pub idle: AtomicBool,
    /// Number of CPUs taking part.
    pub ncpus: AtomicU32,
    /// Per-boot seed of the self-test pattern.
    pub seed: AtomicU64,
    /// TSC rate in kHz.
    pub tsc_khz: AtomicU64,
    /// The dirty workload's progress: generation << 32 | position.
    pub dirty_state: AtomicU64,
    /// The dirty workload's pattern seed.
    pub dirty_seed: AtomicU64,
    /// Direct boot (firmware): the ELF OS's entry point, non-zero once the firmware
    /// handed off to it; an AP the OS starts then enters the OS there too.
    pub handoff_entry: AtomicU64,
    /// Direct boot (firmware): the zero page the OS was given (RSI at its entry).
    pub handoff_zero_page: AtomicU64,
    /// The memory map, written by the boot CPU before `go`.
    pub map: MemoryMap,
    /// One report per CPU.
    pub reports: [CpuReport; layout::MAX_VCPUS],
}

const _: () = assert!(core::mem::size_of::<Globals>() as u64 <= layout::PAGE_SIZE);

/// The shared page.
pub fn get() -> &'static Globals {
    // SAFETY: GLOBALS is a page of RAM reserved for this struct in every memory map; it
    // is zeroed by `init` before any CPU reads it, all fields are valid when zeroed
    // (atomics, plain integers, a map with no regions), and `map` is written only by the
    // boot CPU through `set_map` before the APs are released.
    unsafe { &*(layout::GLOBALS as *const Globals) }
}

/// Zeroes the shared page. Called once by the boot CPU before the APs start.
pub fn init() {
    // SAFETY: the page is reserved RAM, identity-mapped, and no other CPU runs yet.
    unsafe { core::ptr::write_bytes(layout::GLOBALS as *mut u8, 0, layout::PAGE_SIZE as usize) }
}

/// Publishes the memory map. Boot CPU only, before `go` is released.
pub fn set_map(map: &MemoryMap) {
    // SAFETY: only the boot CPU calls this, before releasing the APs (release store of
    // `go`); nobody holds a reference into `map` yet.
    unsafe {
        core::ptr::write(
            core::ptr::addr_of!(get().map) as *mut MemoryMap,
            map.clone(),
        );
    }
}

/// Releases the APs to park (the idle workload).
pub fn release_aps_idle() {
    get().idle.store(true, Ordering::Relaxed);
    release_aps();
}

/// Releases the APs to take their share of the self-test.
pub fn release_aps() {
    get().go.store(true, Ordering::Release);
}
