//! CPU access from CPL3: service calls into CPL0, the TSC, feature checks.

use core::arch::x86_64::{__cpuid, _rdtsc};
use guest_abi::svc;

/// Asks CPL0 for service `nr` (see guest-abi's `svc` module) and returns its result.
fn call(nr: u64, a0: u64, a1: u64, a2: u64) -> u64 {
    call4(nr, a0, a1, a2, 0)
}

/// Like [`call`], with a fourth argument in r8.
fn call4(nr: u64, a0: u64, a1: u64, a2: u64, a3: u64) -> u64 {
    let ret: u64;
    // SAFETY: `ud2` + marker traps to the CPL0 #UD handler in boot.s, which performs the
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

/// CPUID as the VMM configured it, executed at CPL0 (eax, ebx, ecx, edx). A CPUID at
/// CPL3 reports the host CPU on the development machines.
pub fn vmm_cpuid(leaf: u32, subleaf: u32) -> [u32; 4] {
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

/// Writes a 16-bit word to an I/O port.
pub fn outw(port: u16, value: u16) {
    call(svc::OUT, port.into(), 2, value.into());
}

/// Writes a 32-bit word to an I/O port.
pub fn outl(port: u16, value: u32) {
    call(svc::OUT, port.into(), 4, value.into());
}

/// Reads a byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    call(svc::IN, port.into(), 1, 0) as u8
}

/// Writes a model-specific register.
pub fn wrmsr(msr: u32, value: u64) {
    call(svc::WRMSR, msr.into(), value, 0);
}

/// Reads a model-specific register.
pub fn rdmsr(msr: u32) -> u64 {
    call(svc::RDMSR, msr.into(), 0, 0)
}

/// A KVM hypercall by VMMCALL (from CPL0, where KVM accepts it).
pub fn vmmcall(nr: u64, args: [u64; 3]) -> u64 {
    call4(svc::VMMCALL, nr, args[0], args[1], args[2])
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
    call(svc::SLEEP_UNTIL, deadline, 0, 0);
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no side effects and is allowed at CPL3 (CR4.TSD is clear).
    unsafe { _rdtsc() }
}

/// The initial APIC ID of this CPU, which the VMM makes equal to the vCPU index.
pub fn apic_id() -> u32 {
    vmm_cpuid(1, 0)[1] >> 24
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
