//! The OS's CPL0 entry (entry.s), linked with guest-rt's layout for the OS.

use guest_abi::{layout::selector, svc};
use guest_rt::layout;

/// Offsets of the OS's boot-info page past guest-abi's (SEV_STATUS 0x0, XCR0 0x8).
pub mod boot_info {
    /// The zero page the firmware handed over (the boot CPU's RSI).
    pub const ZERO_PAGE: u64 = 0x10;
    /// Non-zero once the boot CPU has built the OS's tables: later entrants are APs.
    pub const BSP_DONE: u64 = 0x18;
}

/// The hand-off GDT's code selector (`__BOOT_CS`), what CS holds at the entry.
const SEL_BOOT_CS: u16 = 0x10;

core::arch::global_asm!(
    include_str!("entry.s"),
    BOOT_INFO = const layout::BOOT_INFO,
    BI_BSP_DONE = const boot_info::BSP_DONE,
    BI_ZERO_PAGE = const boot_info::ZERO_PAGE,
    IDT = const layout::IDT,
    GDT = const layout::GDT,
    PML4 = const layout::PML4,
    PDPT = const layout::PDPT,
    PD_BASE = const layout::PD_BASE,
    KSTACKS = const layout::KSTACKS,
    KSTACK_SIZE = const layout::KSTACK_SIZE,
    SEL_BOOT_CS = const SEL_BOOT_CS,
    SEL_KCODE64 = const selector::KERNEL_CODE64,
    TIMER_VECTOR = const svc::TIMER_VECTOR,
    TIMER_VECTOR_ES = const svc::TIMER_VECTOR_ES,
);

/// A word of the boot-info page.
pub fn boot_info(offset: u64) -> u64 {
    // SAFETY: the boot-info page is in the OS's area, identity-mapped, written by the
    // boot CPU's CPL0 entry before any Rust runs.
    unsafe { core::ptr::read_volatile((layout::BOOT_INFO + offset) as *const u64) }
}
