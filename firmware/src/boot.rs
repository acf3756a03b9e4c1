//! CPL0: the assembly that boots each CPU and serves CPL3's rare requests (boot.s).

use guest_abi::{
    ghcb::{self, msr::MsrRequest, service::Call, ExitCode, Field, ValidBitmap},
    layout::{self, boot_info, selector, vcpu_save},
    services, svc,
};
use helper_abi::{mailbox::doorbell, region};
use vc_handler::frame::{self, VcFrame};

/// The valid bitmap's upper quadword of the fault report boot.s builds in a GHCB.
const FAULT_VALID: ValidBitmap = ValidBitmap::of(&[
    Field::Rbx,
    Field::Rcx,
    Field::Rdx,
    Field::SwExitCode,
    Field::SwExitInfo1,
    Field::SwExitInfo2,
]);
const _: () = assert!(FAULT_VALID.0 as u64 == 0, "all in the upper quadword");
const _: () = assert!(layout::VC_FRAME_STRIDE == 1 << 8);
const _: () = assert!(frame::FRAME_SIZE as u64 <= layout::VC_FRAME_BUSY);
// boot.s's sevm_svc_vc_return loads the registers at these offsets of the frame slot.
const _: () = {
    use core::mem::offset_of;
    assert!(offset_of!(VcFrame, r15) == 0x00 && offset_of!(VcFrame, r14) == 0x08);
    assert!(offset_of!(VcFrame, r13) == 0x10 && offset_of!(VcFrame, r12) == 0x18);
    assert!(offset_of!(VcFrame, r11) == 0x20 && offset_of!(VcFrame, r10) == 0x28);
    assert!(offset_of!(VcFrame, r9) == 0x30 && offset_of!(VcFrame, r8) == 0x38);
    assert!(offset_of!(VcFrame, rdi) == 0x40 && offset_of!(VcFrame, rsi) == 0x48);
    assert!(offset_of!(VcFrame, rbp) == 0x50 && offset_of!(VcFrame, rbx) == 0x58);
    assert!(offset_of!(VcFrame, rdx) == 0x60 && offset_of!(VcFrame, rcx) == 0x68);
    assert!(offset_of!(VcFrame, rax) == 0x70);
};

const _: () = assert!(layout::KSTACK_SIZE == 1 << 13);
const _: () = assert!(layout::VCPU_SAVE_STRIDE == 1 << 13);
// The APs' real-mode stack top (boot.s sevm_ap16) is a 16-bit offset from SS = 0.
const _: () = assert!(layout::AP_TRAMPOLINE + layout::PAGE_SIZE <= 0xffff);
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
    TIMER_VECTOR_ES = const svc::TIMER_VECTOR_ES,
    SVC_STI_HLT = const svc::STI_HLT,
    SVC_VC_RETURN = const svc::VC_RETURN,
    SVC_RAISE_VC = const svc::RAISE_VC,
    SVC_HANDOFF = const svc::HANDOFF,
    BOOT_INFO = const layout::BOOT_INFO,
    BI_XCR0 = const boot_info::XCR0,
    VMGEXIT = const services::VMGEXIT,
    VC_FRAMES = const layout::VC_FRAMES,
    VC_STRIDE_SHIFT = const 8,
    VC_BUSY = const layout::VC_FRAME_BUSY,
    VC_FRAME_SIZE = const frame::FRAME_SIZE,
    VC_FRAME_VECTOR = const frame::VECTOR_OFFSET,
    VC_FRAME_RIP = const core::mem::offset_of!(VcFrame, rip),
    VC_FRAME_RFLAGS = const core::mem::offset_of!(VcFrame, rflags),
    VC_FRAME_RSP = const core::mem::offset_of!(VcFrame, rsp),
    GHCB_BASE = const layout::GHCB_BASE,
    GHCB_SAVE_END = const ghcb::offset::SAVE_AREA_END,
    GHCB_RBX = const ghcb::offset::RBX,
    GHCB_RCX = const ghcb::offset::RCX,
    GHCB_RDX = const ghcb::offset::RDX,
    GHCB_EXIT_CODE = const ghcb::offset::SW_EXIT_CODE,
    GHCB_INFO1 = const ghcb::offset::SW_EXIT_INFO_1,
    GHCB_INFO2 = const ghcb::offset::SW_EXIT_INFO_2,
    GHCB_VALID = const ghcb::offset::VALID_BITMAP,
    GHCB_VERSION = const ghcb::offset::PROTOCOL_VERSION,
    GHCB_USAGE = const ghcb::offset::GHCB_USAGE,
    GHCB_PROTOCOL = const ghcb::PROTOCOL_VERSION,
    CALL_FAULT = const Call::Fault.number(),
    EXIT_SERVICE = const ExitCode::SEVMIRROR_SERVICE.0,
    FAULT_VALID_HI = const (FAULT_VALID.0 >> 64) as u64,
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
    VCPU_SAVE_BASE = const layout::VCPU_SAVE_BASE,
    VCPU_SAVE_SHIFT = const 13,
    SAVE_STATE = const vcpu_save::STATE,
    SAVE_CPU = const vcpu_save::CPU,
    SAVE_RSP = const vcpu_save::RSP,
    SAVE_SAVED = const vcpu_save::SAVED,
    SAVE_RESUMING = const vcpu_save::RESUMING,
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
