//! The OS's CPL0 entry (entry.s), linked with guest-rt's layout for the OS.

use guest_abi::{layout::selector, svc};
use guest_rt::layout;

/// Offsets of the OS's boot-info page past guest-abi's (SEV_STATUS 0x0, XCR0 0x8).
pub mod boot_info {
    /// The zero page the firmware handed over (the boot CPU's RSI).
    pub const ZERO_PAGE: u64 = 0x10;
    /// Non-zero once the boot CPU has built the OS's tables: later entrants are APs.
    pub const BSP_DONE: u64 = 0x18;
    /// CR4 as the boot CPU found it (the firmware's choice of OSXSAVE).
    pub const CR4: u64 = 0x20;
}

/// The hand-off GDT's code selector (`__BOOT_CS`), what CS holds at the entry.
const SEL_BOOT_CS: u16 = 0x10;

core::arch::global_asm!(
    include_str!("entry.s"),
    BOOT_INFO = const layout::BOOT_INFO,
    BI_BSP_DONE = const boot_info::BSP_DONE,
    BI_ZERO_PAGE = const boot_info::ZERO_PAGE,
    BI_CR4 = const boot_info::CR4,
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

/// Under SEV-ES, records XCR0 in the boot-info page, where guest-rt reads it (the #VC
/// handler's CPUID leaf 0xD, the XSAVE mask of a saved vCPU state): the firmware set it
/// on every CPU before the hand-off, so it is read (XGETBV works at CPL3) rather than
/// chosen again. Without CR4.OSXSAVE there is no XCR0: the word stays 0 (FXSAVE).
pub fn record_xcr0() {
    const CR4_OSXSAVE: u64 = 1 << 18;
    if boot_info(boot_info::CR4) & CR4_OSXSAVE == 0 {
        return;
    }
    let (lo, hi): (u32, u32);
    // SAFETY: XGETBV(0) reads XCR0; it is allowed at any privilege level once
    // CR4.OSXSAVE is set (checked above) and has no side effects.
    unsafe {
        core::arch::asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    let xcr0 = u64::from(hi) << 32 | u64::from(lo);
    // SAFETY: the boot-info page is the OS's, identity-mapped; only the boot CPU writes
    // this word, before the APs start.
    unsafe {
        core::ptr::write_volatile(
            (layout::BOOT_INFO + guest_abi::layout::boot_info::XCR0) as *mut u64,
            xcr0,
        )
    };
}
