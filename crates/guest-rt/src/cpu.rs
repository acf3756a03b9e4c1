//! CPU access from CPL3: service calls into CPL0, the TSC, feature checks. Under SEV-ES
//! the port I/O, CPUID, MSRs (but those served without a #VC) and hypercalls go through
//! this CPU's GHCB instead (`es`, `ghcb`).

use crate::{es, ghcb};
use core::arch::x86_64::{__cpuid, _rdtsc};
use guest_abi::{ghcb::ioio::Size, svc};

/// IA32_APIC_BASE.
const MSR_APIC_BASE: u32 = 0x1b;
/// x2APIC mode and APIC enable in IA32_APIC_BASE.
const APIC_BASE_X2APIC_ON: u64 = (1 << 10) | (1 << 11);
/// x2APIC spurious-interrupt vector register, LVT timer, EOI.
const MSR_X2APIC_SVR: u32 = 0x80f;
const MSR_X2APIC_LVT_TIMER: u32 = 0x832;
const MSR_X2APIC_EOI: u32 = 0x80b;
/// IA32_TSC_DEADLINE.
const MSR_TSC_DEADLINE: u32 = 0x6e0;

/// A GHCB request the firmware cannot do without failed: the host refuses to serve it,
/// so stop (the guest could not go on correctly; on hardware the #VC handler would raise
/// the exception the host asked for).
fn ghcb_failed(what: &str, e: guest_abi::ghcb::GhcbError) -> ! {
    crate::println!(
        "{}: SEV-ES: {what} through the GHCB failed: {e}",
        crate::NAME
    );
    crate::services::exit(guest_abi::services::exit_code::FAIL)
}

/// Asks CPL0 for service `nr` (see guest-abi's `svc` module) and returns its result.
fn call(nr: u64, a0: u64, a1: u64, a2: u64) -> u64 {
    call4(nr, a0, a1, a2, 0)
}

/// Like [`call`], with a fourth argument in r8.
fn call4(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let ret: u64;
    // SAFETY: `ud2` + marker traps to the CPL0 #UD handler in rt.s, which performs the
    // service and resumes after the marker. It clobbers only the registers listed here
    // and uses its own (kernel) stack, so the CPL3 stack and red zone are untouched.
    unsafe {
        core::arch::asm!(
            "ud2",
            ".byte {m0}, {m1}",
            m0 = const svc::MARKER[0],
            m1 = const svc::MARKER[1],
            inlateout("rax") nr => ret,
            inlateout("rdi") a0 => _,
            inlateout("rsi") a1 => _,
            inlateout("rdx") a2 => _,
            lateout("rcx") _,
            inlateout("r8") a3 => _,
            lateout("r9") _,
            lateout("r10") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// CPUID as the VMM configured it, executed at CPL0 (eax, ebx, ecx, edx), or through the
/// GHCB under SEV-ES. A CPUID at CPL3 reports the host CPU on the development machines.
pub fn vmm_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
    if es::active() {
        return ghcb::client()
            .cpuid(leaf, subleaf, es::xcr0())
            .unwrap_or_else(|e| ghcb_failed("CPUID", e));
    }
    let (lo, hi): (u64, u64);
    // SAFETY: as in `call4`; the CPUID service returns its results in rax and rdx.
    unsafe {
        core::arch::asm!(
            "ud2",
            ".byte {m0}, {m1}",
            m0 = const svc::MARKER[0],
            m1 = const svc::MARKER[1],
            inlateout("rax") svc::CPUID => lo,
            inlateout("rdi") u64::from(leaf) => _,
            inlateout("rsi") u64::from(subleaf) => _,
            lateout("rdx") hi,
            lateout("rcx") _,
            lateout("r8") _,
            lateout("r9") _,
            lateout("r10") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32]
}

/// OUT through the GHCB (SEV-ES): an IOIO exit.
fn ghcb_out(port: u16, size: Size, value: u32) {
    if let Err(e) = ghcb::client().io_out(port, size, value) {
        ghcb_failed("OUT", e)
    }
}

/// `out` of a byte at CPL0 whatever the SEV mode: the plain exit an unconverted site
/// makes (the `bypass-pio` workload, for the VMM's SEV-ES strict mode to catch).
pub fn outb_cpl0(port: u16, value: u8) {
    call(svc::OUT, port.into(), 1, value.into());
}

/// `wrmsr` at CPL0 whatever the SEV mode: the helper's GHCB MSR (no #VC under SEV-ES; the
/// helper runs in the mirror VM, where the guest's boot-info page is not its business).
pub fn wrmsr_cpl0(msr: u32, value: u64) {
    call(svc::WRMSR, msr.into(), value, 0);
}

/// `rdmsr` at CPL0 whatever the SEV mode (the `bypass-msr` workload, as [`outb_cpl0`]).
pub fn rdmsr_cpl0(msr: u32) -> u64 {
    call(svc::RDMSR, msr.into(), 0, 0)
}

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, value: u16) {
    if es::active() {
        return ghcb_out(port, Size::Word, value.into());
    }
    call(svc::OUT, port.into(), 2, value.into());
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, value: u32) {
    if es::active() {
        return ghcb_out(port, Size::Dword, value);
    }
    call(svc::OUT, port.into(), 4, value.into());
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    if es::active() {
        return ghcb::client()
            .io_in(port, Size::Byte)
            .unwrap_or_else(|e| ghcb_failed("IN", e)) as u8;
    }
    call(svc::IN, port.into(), 1, 0) as u8
}

/// Writes a model-specific register: at CPL0, or under SEV-ES through the GHCB unless the
/// hardware serves it without a #VC ([`es::msr_without_vc`]).
pub fn wrmsr(msr: u32, value: u64) {
    if es::active() && !es::msr_without_vc(msr) {
        if let Err(e) = ghcb::client().wrmsr(msr, value) {
            ghcb_failed("WRMSR", e)
        }
        return;
    }
    call(svc::WRMSR, msr.into(), value, 0);
}

/// Reads a model-specific register (at CPL0, or through the GHCB as [`wrmsr`]).
pub fn rdmsr(msr: u32) -> u64 {
    if es::active() && !es::msr_without_vc(msr) {
        return ghcb::client()
            .rdmsr(msr)
            .unwrap_or_else(|e| ghcb_failed("RDMSR", e));
    }
    call(svc::RDMSR, msr.into(), 0, 0)
}

/// A KVM hypercall by VMMCALL (from CPL0, where KVM accepts it), or under SEV-ES as the
/// GHCB's VMMCALL exit (KVM's ABI: number in RAX, arguments in RBX, RCX, RDX).
pub fn vmmcall(nr: u64, args: [u64; 3]) -> u64 {
    if es::active() {
        return ghcb::client()
            .vmmcall(nr, [args[0], args[1], args[2], 0], 3)
            .unwrap_or_else(|e| ghcb_failed("VMMCALL", e));
    }
    call4(svc::VMMCALL, nr, args[0], args[1], args[2])
}

/// Returns from the SEV-ES #VC handler to the interrupted code, with the registers of
/// this CPU's #VC frame slot (the `VC_RETURN` service). Never returns here.
pub fn vc_return() -> ! {
    call(svc::VC_RETURN, 0, 0, 0);
    // The service never returns to its caller.
    loop {
        core::hint::spin_loop();
    }
}

/// SEV-ES migration target: holds this CPU at CPL0 until the VMM received the guest, then
/// resumes the state saved in its slot (the `INCOMING_HOLD` service). Never returns here.
pub fn incoming_hold() -> ! {
    call(svc::INCOMING_HOLD, 0, 0, 0);
    // The service never returns to its caller.
    loop {
        core::hint::spin_loop();
    }
}

/// Jumps to a loaded kernel at CPL0 (direct boot): 64-bit mode, interrupts off, the
/// hand-off GDT (CS 0x10, DS/ES/SS 0x18), RSI = `zero_page`, the other general registers
/// zero (guest-abi `svc::HANDOFF`). Never returns.
pub fn handoff(entry: u64, zero_page: u64) -> ! {
    call(svc::HANDOFF, entry, zero_page, 0);
    // The service never returns to its caller.
    loop {
        core::hint::spin_loop();
    }
}

/// Parks this CPU for good (`cli; hlt` at CPL0); the VMM can still stop it.
pub fn halt() -> ! {
    call(svc::HALT, 0, 0, 0);
    // The service never returns; if it somehow did, spin instead of running on.
    loop {
        core::hint::spin_loop();
    }
}

/// Sleeps (halted, costing the host nothing) until the TSC reaches `deadline`, or
/// another interrupt wakes the CPU.
pub fn sleep_until(deadline: u64) {
    if es::active() {
        return sleep_until_es(deadline);
    }
    call(svc::SLEEP_UNTIL, deadline, 0, 0);
}

/// [`sleep_until`] under SEV-ES: what the SLEEP_UNTIL service does at CPL0, with the
/// x2APIC and TSC-deadline MSRs written through the GHCB (KVM's local APIC serves them),
/// the timer on its SEV-ES vector, whose handler sends no EOI: this CPU does, through the
/// GHCB, once it wakes.
fn sleep_until_es(deadline: u64) {
    let base = rdmsr(MSR_APIC_BASE);
    if base & APIC_BASE_X2APIC_ON != APIC_BASE_X2APIC_ON {
        wrmsr(MSR_APIC_BASE, base | APIC_BASE_X2APIC_ON);
    }
    wrmsr(MSR_X2APIC_SVR, 0x1ff);
    wrmsr(MSR_X2APIC_LVT_TIMER, 0x40000 | svc::TIMER_VECTOR_ES);
    wrmsr(MSR_TSC_DEADLINE, deadline);
    call(svc::STI_HLT, 0, 0, 0);
    wrmsr(MSR_X2APIC_EOI, 0);
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is allowed at CPL3 (CR4.TSD is clear).
    unsafe { _rdtsc() }
}

/// The initial APIC ID of this CPU, which the VMM makes equal to the vCPU index.
pub fn apic_id() -> u32 {
    if es::active() {
        return es::current_cpu() as u32;
    }
    vmm_cpuid(1, 0)[1] >> 24
}

/// Raises a #VC at an instruction placed inline (`which`), as the CPU would (test service,
/// see guest-abi `svc::RAISE_VC`), with the exit code `exit`, RAX = `rax`, RBX = 0, RCX =
/// `rcx`, RDX = `rdx`: the vector-29 stub, the CPL3 #VC handler and VC_RETURN serve the
/// instruction through the GHCB and resume after it. Returns RAX, RBX, RCX, RDX as the
/// handler left them. (SEV-ES only; the CPU never raises #VC on the development machines.)
pub fn raise_vc(which: VcInstruction, exit: u64, rax: u64, rcx: u64, rdx: u64) -> [u64; 4] {
    let (a, b, c, d): (u64, u64, u64, u64);
    macro_rules! raise {
        ($insn:literal) => {
            // SAFETY: the RAISE_VC service turns this `ud2` into a #VC at label 2 (the
            // instruction `$insn`, never executed itself): the #VC handler serves it
            // through the GHCB, writes the registers it defines into the frame and resumes
            // at label 3 through VC_RETURN, which reloads every general-purpose register
            // from the frame. The handler runs on this stack below the red zone. RBX is
            // preserved around the sequence by hand (LLVM reserves it).
            unsafe {
                core::arch::asm!(
                    "xchg {b}, rbx",
                    "lea rsi, [rip + 2f]",
                    "ud2",
                    ".byte {m0}, {m1}",
                    concat!("2: ", $insn),
                    "3:",
                    "xchg {b}, rbx",
                    m0 = const svc::MARKER[0],
                    m1 = const svc::MARKER[1],
                    b = inout(reg) 0u64 => b,
                    inlateout("rax") svc::RAISE_VC => a,
                    inlateout("rdi") exit => _,
                    inlateout("r8") rax => _,
                    inlateout("rcx") rcx => c,
                    inlateout("rdx") rdx => d,
                    out("rsi") _,
                    out("r9") _,
                    out("r10") _,
                    out("r11") _,
                )
            }
        };
    }
    match which {
        VcInstruction::Cpuid => raise!("cpuid"),
        VcInstruction::Rdmsr => raise!("rdmsr"),
        VcInstruction::InDxAl => raise!("in al, dx"),
        VcInstruction::OutDxAx => raise!("out dx, ax"),
        VcInstruction::Vmmcall => raise!("vmmcall"),
        VcInstruction::MmioWrite => raise!("mov qword ptr [rax], rcx"),
    }
    [a, b, c, d]
}

/// The instructions [`raise_vc`] can raise a #VC at.
#[derive(Clone, Copy, Debug)]
pub enum VcInstruction {
    /// `cpuid`.
    Cpuid,
    /// `rdmsr`.
    Rdmsr,
    /// `in al, dx`.
    InDxAl,
    /// `out dx, ax`.
    OutDxAx,
    /// `vmmcall` (RBX is 0 here).
    Vmmcall,
    /// `mov qword ptr [rax], rcx`: an MMIO write (exit code NPF).
    MmioWrite,
}

/// Names of the instruction-set extensions this image was built for that the CPU lacks
/// (checked before any of them is used). This CPUID runs at CPL3, where the Rust code
/// runs: natively on kvm_pvm (the host CPU answers), through the VMM's table elsewhere
/// (which is why the VMM passes the host's bits through).
pub fn missing_features() -> impl Iterator<Item = &'static str> {
    let ecx = __cpuid(1).ecx;
    [
        (25, "aes"),
        (1, "pclmulqdq"),
        (9, "ssse3"),
        (19, "sse4.1"),
        (20, "sse4.2"),
        (23, "popcnt"),
        (30, "rdrand"),
    ]
    .into_iter()
    .filter(move |&(bit, _)| ecx & (1 << bit) == 0)
    .map(|(_, name)| name)
}

/// A deadline measured in TSC ticks.
pub struct Deadline(u64);

impl Deadline {
    /// A deadline `ms` milliseconds from now, given the TSC rate in kHz.
    pub fn after_ms(ms: u64, tsc_khz: u64) -> Self {
        Deadline(rdtsc().saturating_add(ms.saturating_mul(tsc_khz)))
    }

    /// Whether the deadline has passed.
    pub fn passed(&self) -> bool {
        rdtsc() >= self.0
    }
}
