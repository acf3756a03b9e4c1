//! CPL0: the assembly that boots each CPU (boot.s): reset, 32-bit set-up, the switch to
//! long mode, the helper's entry, and the firmware's own service calls. The per-CPU
//! set-up and the services every image shares are guest-rt's (rt.s).

use guest_abi::{
    ghcb::msr::MsrRequest,
    layout::{self, boot_info, selector},
    services, svc,
};
use helper_abi::{mailbox::doorbell, region};

const _: () = assert!(layout::KSTACK_SIZE == 1 << 13);
// The APs' real-mode stack top (boot.s sevm_ap16) is a 16-bit offset from SS = 0.
const _: () = assert!(layout::AP_TRAMPOLINE + layout::PAGE_SIZE <= 0xffff);
const _: () = assert!(layout::USTACK_SIZE == 1 << 16);
const _: () = assert!(
    region::KSTACK_SIZE == layout::KSTACK_SIZE && region::USTACK_SIZE == layout::USTACK_SIZE
);
// boot.s and guest-rt's rt.s work on the same areas: the runtime's layout must be the
// firmware's.
const _: () = assert!(
    guest_rt::layout::GDT == layout::GDT
        && guest_rt::layout::IDT == layout::IDT
        && guest_rt::layout::BOOT_INFO == layout::BOOT_INFO
        && guest_rt::layout::KSTACKS == layout::KSTACKS
        && guest_rt::layout::USTACKS == layout::USTACKS
        && guest_rt::layout::PML4 == layout::PML4
);

core::arch::global_asm!(
    include_str!("boot.s"),
    PML4 = const layout::PML4,
    PDPT = const layout::PDPT,
    PD_BASE = const layout::PD_BASE,
    GDT = const layout::GDT,
    IDT = const layout::IDT,
    KSTACKS = const layout::KSTACKS,
    KSTACK_SIZE = const layout::KSTACK_SIZE,
    KSTACK_SHIFT = const 13,
    USTACK_SIZE = const layout::USTACK_SIZE,
    USTACK_SHIFT = const 16,
    SEL_KCODE64 = const selector::KERNEL_CODE64,
    SEL_KDATA = const selector::KERNEL_DATA,
    SEL_UDATA = const selector::USER_DATA,
    SEL_UCODE64 = const selector::USER_CODE64,
    SEL_KCODE32 = const selector::KERNEL_CODE32,
    SEL_TSS0 = const selector::TSS0,
    SERVICES = const layout::SERVICES_GPA,
    TIMER_VECTOR = const svc::TIMER_VECTOR,
    TIMER_VECTOR_ES = const svc::TIMER_VECTOR_ES,
    SVC_HANDOFF = const svc::HANDOFF,
    BOOT_INFO = const layout::BOOT_INFO,
    BI_XCR0 = const boot_info::XCR0,
    VMGEXIT = const services::VMGEXIT,
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
    HELPER_TERMINATE_NO_SLOT = const MsrRequest::Terminate {
        set: doorbell::ES_TERMINATE_SET,
        reason: doorbell::ES_NO_SLOT,
    }
    .encode(),
    HELPER_TERMINATE_PROTOCOL = const MsrRequest::Terminate {
        set: doorbell::ES_TERMINATE_SET,
        reason: doorbell::ES_PROTOCOL,
    }
    .encode(),
    SVC_INCOMING_HOLD = const svc::INCOMING_HOLD,
    AP_STACK_TOP = const layout::AP_TRAMPOLINE + layout::PAGE_SIZE,
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
