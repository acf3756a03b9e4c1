//! SEV-ES migration: a vCPU's register state moves through guest memory.
//!
//! On SEV-ES the VMSAs are pages the host allocates and the guest cannot address, so
//! neither the host nor the migration helper can read or write a vCPU's registers. Instead
//! each vCPU saves its own state into its private slot (guest-abi `layout::vcpu_save`)
//! when the host asks, and parks in AP reset hold (the GHCB specification's pattern,
//! `SVM_VMGEXIT_AP_RESET_HOLD`); the slot then moves with the guest's pages, sealed by
//! the helper. On the target every vCPU starts from its measured reset VMSA and, once the
//! pages arrived, finds its slot and restores it (rt.s `sevm_resume`, then
//! [`sevm_resume_user`] here) — the approach of the IBM SEV-ES migration proof of concept.
//!
//! - The host asks through the GHCB: every workload's periodic check
//!   (`migration::check`) asks, at most every `vcpu_save::POLL_INTERVAL_US`, whether the
//!   host wants this vCPU to save and hold (sevmirror's Checkpoint service exit). An
//!   SEV-ES host cannot make a vCPU do anything else: it only answers the guest's exits.
//! - `sevm_save_and_hold` (assembly, CPL3) saves every general-purpose register, RFLAGS,
//!   its own return address and stack pointer, and the XSAVE state, marks the slot SAVED,
//!   and calls the hold on the stack below the saved one (so nothing the saved frames hold
//!   changes before the pages leave). If the host releases the hold (the migration failed
//!   before the commit) the slot is cleared and the call returns `RELEASED`: the vCPU
//!   never lost its registers. On the target the same call returns `RESTORED`.
//! - After a restore the vCPU sets up what is not register state: its GHCB MSR, and (the
//!   boot CPU) the other CPUs, which it starts with INIT-SIPI-SIPI: each starts at its
//!   measured reset VMSA and resumes its own slot. The local APIC and the TSC are the
//!   host's state and arrive in the migration stream (docs/migration.md).
//! - The slots are the firmware's (guest-abi `layout::vcpu_save`), whichever image saves:
//!   on a target it is the firmware that boots, holds and finds them. The guest OS, whose
//!   page tables and descriptor tables are its own, records its CPL0 resume entry in the
//!   slot (`KERNEL_RESUME`); the firmware hands the CPU that claimed the slot to it, and
//!   the OS reloads its tables before the same CPL3 restore (docs/architecture.md §8).

use crate::layout::{self, vcpu_save};
use crate::{cpu, es, ghcb, globals, println};
use core::sync::atomic::Ordering;
use guest_abi::ghcb::service::Call;

core::arch::global_asm!(
    r#"
.section .text.es_state, "ax"
.code64

// u64 sevm_save_and_hold(u64 slot, u64 (*hold)(u64), u64 arg): saves this CPU's state into
// `slot` (its STATE word last), calls hold(arg) below the saved stack, and returns
// RELEASED once hold returns (the slot cleared again). A restore (sevm_resume_user)
// returns RESTORED from this call instead, with every register as it was at the call.
// The XSAVE mask is the slot's XCR0 word (0: FXSAVE), which the caller sets.
.global sevm_save_and_hold
sevm_save_and_hold:
    mov [rdi + {RAX}], rax
    mov [rdi + {RBX}], rbx
    mov [rdi + {RCX}], rcx
    mov [rdi + {RDX}], rdx
    mov [rdi + {RSI}], rsi
    mov [rdi + {RDI}], rdi
    mov [rdi + {RBP}], rbp
    mov [rdi + {R8} + 0x00], r8
    mov [rdi + {R8} + 0x08], r9
    mov [rdi + {R8} + 0x10], r10
    mov [rdi + {R8} + 0x18], r11
    mov [rdi + {R8} + 0x20], r12
    mov [rdi + {R8} + 0x28], r13
    mov [rdi + {R8} + 0x30], r14
    mov [rdi + {R8} + 0x38], r15
    lea rax, [rsp + 8]
    mov [rdi + {RSP}], rax
    mov rax, [rsp]
    mov [rdi + {RIP}], rax
    pushfq
    pop rax
    mov [rdi + {RFLAGS}], rax
    mov r8, rdx
    mov rcx, [rdi + {XCR0}]
    test rcx, rcx
    jz 1f
    mov eax, ecx
    shr rcx, 32
    mov edx, ecx
    xsave64 [rdi + {AREA}]
    jmp 2f
1:  fxsave64 [rdi + {AREA}]
2:  movabs rax, {SAVED}
    mov [rdi + {STATE}], rax
    push rbx
    mov rbx, rdi
    mov rdi, r8
    call rsi
    mov qword ptr [rbx + {STATE}], {EMPTY}
    pop rbx
    mov eax, {RELEASED}
    ret

// The CPL3 half of a resume (rt.s sevm_resume IRETQs here with rdi = the claimed slot):
// the XSAVE state, the stack with the saving call's return address, RFLAGS (IF and IOPL
// cannot change at CPL3), every general-purpose register, then a return from
// sevm_save_and_hold with RESTORED.
.global sevm_resume_user
sevm_resume_user:
    mov rcx, [rdi + {XCR0}]
    test rcx, rcx
    jz 1f
    mov eax, ecx
    shr rcx, 32
    mov edx, ecx
    xrstor64 [rdi + {AREA}]
    jmp 2f
1:  fxrstor64 [rdi + {AREA}]
2:  mov rsp, [rdi + {RSP}]
    sub rsp, 8
    mov rax, [rdi + {RIP}]
    mov [rsp], rax
    push qword ptr [rdi + {RFLAGS}]
    popfq
    mov rbx, [rdi + {RBX}]
    mov rcx, [rdi + {RCX}]
    mov rdx, [rdi + {RDX}]
    mov rsi, [rdi + {RSI}]
    mov rbp, [rdi + {RBP}]
    mov r8, [rdi + {R8} + 0x00]
    mov r9, [rdi + {R8} + 0x08]
    mov r10, [rdi + {R8} + 0x10]
    mov r11, [rdi + {R8} + 0x18]
    mov r12, [rdi + {R8} + 0x20]
    mov r13, [rdi + {R8} + 0x28]
    mov r14, [rdi + {R8} + 0x30]
    mov r15, [rdi + {R8} + 0x38]
    mov eax, {RESTORED}
    mov rdi, [rdi + {RDI}]
    ret
"#,
    STATE = const vcpu_save::STATE,
    XCR0 = const vcpu_save::XCR0,
    RFLAGS = const vcpu_save::RFLAGS,
    RIP = const vcpu_save::RIP,
    RSP = const vcpu_save::RSP,
    RAX = const vcpu_save::RAX,
    RBX = const vcpu_save::RBX,
    RCX = const vcpu_save::RCX,
    RDX = const vcpu_save::RDX,
    RSI = const vcpu_save::RSI,
    RDI = const vcpu_save::RDI,
    RBP = const vcpu_save::RBP,
    R8 = const vcpu_save::R8,
    AREA = const vcpu_save::XSAVE_AREA,
    SAVED = const vcpu_save::SAVED,
    EMPTY = const vcpu_save::EMPTY,
    RELEASED = const vcpu_save::RELEASED,
    RESTORED = const vcpu_save::RESTORED,
);

extern "C" {
    /// See the assembly above.
    fn sevm_save_and_hold(slot: u64, hold: extern "C" fn(u64) -> u64, arg: u64) -> u64;
}
// `sevm_resume_user` is entered only from rt.s (`sevm_resume`), by IRETQ.

/// Where a target's firmware sends the CPU that claimed this image's slot
/// (`vcpu_save::KERNEL_RESUME`): the guest OS's CPL0 resume (its entry.s), which loads the
/// OS's own page tables and descriptor tables first; 0 for the firmware, whose tables
/// are the ones the restoring CPU already runs on.
fn kernel_resume() -> u64 {
    #[cfg(feature = "os")]
    {
        extern "C" {
            /// The OS's CPL0 resume entry (guest-os entry.s).
            static sevm_kernel_resume: u8;
        }
        core::ptr::addr_of!(sevm_kernel_resume) as u64
    }
    #[cfg(not(feature = "os"))]
    {
        0
    }
}

fn slot_read(slot: u64, offset: u64) -> u64 {
    // SAFETY: `slot` is this CPU's saved-state slot (layout::vcpu_save_gpa): reserved
    // RAM of the SEV area, identity-mapped, used by this CPU alone; `offset` is one of
    // vcpu_save's fields inside it.
    unsafe { core::ptr::read_volatile((slot + offset) as *const u64) }
}

fn slot_write(slot: u64, offset: u64, value: u64) {
    // SAFETY: as for `slot_read`.
    unsafe { core::ptr::write_volatile((slot + offset) as *mut u64, value) }
}

/// The XSAVE mask a save uses: XCR0 as boot.s set it (0 where it set none: FXSAVE).
fn xsave_mask() -> u64 {
    // SAFETY: the boot-info page is written by the boot CPU's CPL0 code before any Rust
    // runs and never changes afterwards.
    unsafe { core::ptr::read_volatile((layout::BOOT_INFO + layout::boot_info::XCR0) as *const u64) }
}

/// Asks the host, at most every `POLL_INTERVAL_US`, whether this vCPU is to save its
/// state and hold, and does so if it is. SEV-ES only; called from `migration::check`.
pub fn checkpoint() {
    let tsc_khz = globals::get().tsc_khz.load(Ordering::Relaxed);
    if tsc_khz == 0 {
        return;
    }
    let cpu = es::current_cpu();
    if cpu >= layout::MAX_VCPUS {
        return;
    }
    let slot = layout::vcpu_save_gpa(cpu);
    let now = cpu::rdtsc();
    let interval = vcpu_save::POLL_INTERVAL_US * tsc_khz / 1000;
    if now.wrapping_sub(slot_read(slot, vcpu_save::LAST_POLL)) < interval {
        return;
    }
    slot_write(slot, vcpu_save::LAST_POLL, now);
    let mut client = ghcb::client();
    if client.service(Call::Checkpoint, 0, [0; 3]) != Ok(1) {
        return;
    }
    let mask = xsave_mask();
    // The XSAVE state of the enabled components must fit the slot (CPUID 0xD: EBX is
    // its size for the XCR0 in force); a vCPU that cannot save does not hold, and the
    // host's migration gives up on it.
    let fits = mask == 0
        || client
            .cpuid(0xd, 0, mask)
            .is_ok_and(|r| u64::from(r[1]) <= vcpu_save::XSAVE_AREA_SIZE);
    if !fits {
        println!(
            "{}: vCPU {cpu}: its XSAVE state does not fit its slot; it cannot be migrated",
            crate::NAME
        );
        return;
    }
    slot_write(slot, vcpu_save::CPU, cpu as u64);
    slot_write(slot, vcpu_save::XCR0, mask);
    slot_write(slot, vcpu_save::KERNEL_RESUME, kernel_resume());
    // XSAVE writes only XSTATE_BV of the area's header; XRSTOR refuses a header whose
    // other bytes (XCOMP_BV, reserved) are not zero.
    for offset in (512..576).step_by(8) {
        slot_write(slot, vcpu_save::XSAVE_AREA + offset, 0);
    }
    // SAFETY: the slot is this CPU's and the XSAVE area inside it is 64-byte aligned
    // (guest-abi asserts it) and large enough for the state XCR0 enables (checked above);
    // `hold` is an extern "C" function that returns.
    let how = unsafe { sevm_save_and_hold(slot, hold, cpu as u64) };
    if how == vcpu_save::RESTORED {
        after_restore(cpu);
    }
}

/// The hold: AP reset hold through this CPU's GHCB until the host releases it (on the
/// source, after a migration that failed before its commit). Runs on the stack below the
/// saved one.
extern "C" fn hold(_cpu: u64) -> u64 {
    let mut client = ghcb::client();
    loop {
        match client.ap_reset_hold() {
            Ok(true) => return 0,
            Ok(false) => continue,
            // The host refuses the hold (or breaks the protocol): nothing safe is left.
            Err(_) => es::terminate(),
        }
    }
}

/// What a vCPU does once its state is restored on a migration target: its GHCB again,
/// the slot cleared, and (the boot CPU) the other CPUs started, each of which resumes its
/// own slot.
fn after_restore(cpu: usize) {
    if ghcb::establish(cpu).is_err() {
        es::terminate()
    }
    let slot = layout::vcpu_save_gpa(cpu);
    slot_write(slot, vcpu_save::STATE, vcpu_save::EMPTY);
    println!(
        "{}: vCPU {cpu}: resumed from its saved state (SEV-ES migration)",
        crate::NAME
    );
    if cpu == 0 {
        let ncpus = globals::get().ncpus.load(Ordering::Relaxed);
        crate::smp::restart_aps(ncpus);
    }
}
