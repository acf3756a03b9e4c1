//! CPL0: the assembly that boots each CPU and serves CPL3's rare requests (boot.s).

use guest_abi::{layout, layout::selector, services, svc};
use helper_abi::region;

const _: () = assert!(layout::KSTACK_SIZE == 1 << 13);
const _: () = assert!(layout::USTACK_SIZE == 1 << 16);
const _: () = assert!(layout::TSS_STRIDE == 1 << 7);
const _: () = assert!(
    region::KSTACK_SIZE == layout::KSTACK_SIZE && region::USTACK_SIZE == layout::USTACK_SIZE
);

core::arch::global_asm!(
    include_str!("boot.s"),
    PML4 = const layout::PML4,
    PDPT = const layout::PDPT,
    PD_BASE = const layout::PD_BASE,
    GDT = const layout::GDT,
    GDT_LIMIT = const selector::TSS0 as u64 + 16 * layout::MAX_VCPUS as u64 - 1,
    IDT = const layout::IDT,
    TSS_BASE = const layout::TSS_BASE,
    TSS_SHIFT = const 7,
    KSTACKS = const layout::KSTACKS,
    KSTACK_SIZE = const layout::KSTACK_SIZE,
    KSTACK_SHIFT = const 13,
    USTACKS = const layout::USTACKS,
    USTACK_SIZE = const layout::USTACK_SIZE,
    USTACK_SHIFT = const 16,
    MAX_VCPUS = const layout::MAX_VCPUS,
    SEL_KCODE64 = const selector::KERNEL_CODE64,
    SEL_KDATA = const selector::KERNEL_DATA,
    SEL_UDATA = const selector::USER_DATA,
    SEL_UCODE64 = const selector::USER_CODE64,
    SEL_KCODE32 = const selector::KERNEL_CODE32,
    SEL_TSS0 = const selector::TSS0,
    SERVICES = const layout::SERVICES_GPA,
    FAULT = const services::FAULT,
    FAULT_RIP = const services::FAULT_RIP,
    FAULT_ERROR = const services::FAULT_ERROR,
    FAULT_ADDR = const services::FAULT_ADDR,
    SVC_CALL_BYTES = const svc::CALL_BYTES_LE,
    SVC_OUT = const svc::OUT,
    SVC_IN = const svc::IN,
    SVC_WRMSR = const svc::WRMSR,
    SVC_RDMSR = const svc::RDMSR,
    SVC_HALT = const svc::HALT,
    SVC_VMMCALL = const svc::VMMCALL,
    SVC_SLEEP_UNTIL = const svc::SLEEP_UNTIL,
    SVC_CPUID = const svc::CPUID,
    TIMER_VECTOR = const svc::TIMER_VECTOR,
    HELPER_ANCHOR = const layout::HELPER_REGION_BASE + region::ANCHOR,
    ANCHOR_MAGIC_LO = const region::anchor::MAGIC & 0xffff_ffff,
    ANCHOR_MAGIC_HI = const region::anchor::MAGIC >> 32,
    ANCHOR_CR3 = const region::anchor::CR3,
    ANCHOR_GDTR = const region::anchor::GDTR,
    ANCHOR_IDTR = const region::anchor::IDTR,
    ANCHOR_VCPUS = const region::anchor::VCPUS,
    ANCHOR_KSTACKS = const region::anchor::KSTACKS,
    ANCHOR_USTACKS = const region::anchor::USTACKS,
    ANCHOR_CONTEXT = const region::anchor::CONTEXT,
    ANCHOR_NEXT_SLOT = const region::anchor::NEXT_SLOT,
    DOORBELL = const services::DOORBELL,
    DOORBELL_NO_SLOT = const helper_abi::mailbox::doorbell::NO_SLOT,
    DOORBELL_NO_ANCHOR = const helper_abi::mailbox::doorbell::NO_ANCHOR,
);

extern "C" {
    /// First byte of the position-independent real-mode AP entry code.
    static sevm_ap16: u8;
    /// One past the last byte of the AP entry code.
    static sevm_ap16_end: u8;
}

/// The real-mode AP entry code, to be copied to the trampoline page.
pub fn ap_trampoline_code() -> &'static [u8] {
    // SAFETY: both symbols are labels in the read-only image, in the same section, in
    // this order; the bytes between them are the AP entry code and are never written.
    unsafe {
        let start = core::ptr::addr_of!(sevm_ap16);
        let end = core::ptr::addr_of!(sevm_ap16_end);
        core::slice::from_raw_parts(start, end as usize - start as usize)
    }
}
