//! The shared CPL0 runtime (rt.s), linked with this image's addresses (`layout`).

use crate::layout::{self, boot_info, selector, vcpu_save};
use guest_abi::{
    ghcb::{self, service::Call, ExitCode, Field, ValidBitmap},
    services, svc,
};
use vc_handler::frame::{self, VcFrame};

/// The valid bitmap's upper quadword of the fault report rt.s builds in a GHCB.
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
// rt.s's sevm_svc_vc_return loads the registers at these offsets of the frame slot.
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
const _: () = assert!(layout::USTACK_SIZE == 1 << 16);
const _: () = assert!(layout::TSS_STRIDE == 1 << 7);
// rt.s addresses everything with 32-bit immediates and displacements.
const _: () = assert!(layout::AREA_END <= 1 << 31);

core::arch::global_asm!(
    include_str!("rt.s"),
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
    SEL_KDATA = const selector::KERNEL_DATA,
    SEL_UDATA = const selector::USER_DATA,
    SEL_UCODE64 = const selector::USER_CODE64,
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
    SVC_STI_HLT = const svc::STI_HLT,
    SVC_VC_RETURN = const svc::VC_RETURN,
    SVC_RAISE_VC = const svc::RAISE_VC,
    BOOT_INFO = const layout::BOOT_INFO,
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
    VCPU_SAVE_BASE = const layout::VCPU_SAVE_BASE,
    VCPU_SAVE_SHIFT = const 13,
    SAVE_STATE = const vcpu_save::STATE,
    SAVE_CPU = const vcpu_save::CPU,
    SAVE_RSP = const vcpu_save::RSP,
    SAVE_SAVED = const vcpu_save::SAVED,
    SAVE_RESUMING = const vcpu_save::RESUMING,
    SAVE_KERNEL_RESUME = const vcpu_save::KERNEL_RESUME,
);

// boot_info's SEV_STATUS is the first word of the page: rt.s tests `[BOOT_INFO]` directly.
const _: () = assert!(boot_info::SEV_STATUS == 0);
