//! Services CPL3 code asks of the firmware's CPL0 part.
//!
//! CPL3 executes `ud2` followed by the two marker bytes [`MARKER`]; the CPL0 #UD handler
//! recognises the marker, performs the service named in `rax` with arguments in `rdi`,
//! `rsi`, `rdx`, `r8`, puts the result in `rax` and resumes after the marker. Guest CPL0 is
//! emulated on these machines (~40 µs per call), so services are for rare operations only:
//! port I/O for fw_cfg, MSRs for the local APIC, halting a CPU.

/// Bytes following `ud2` (0F 0B) that mark a service call: "SV".
pub const MARKER: [u8; 2] = *b"SV";
/// The four instruction bytes of a service call as the #UD handler reads them (LE).
pub const CALL_BYTES_LE: u32 = u32::from_le_bytes([0x0F, 0x0B, MARKER[0], MARKER[1]]);

/// `out`: rdi = port, rsi = width (1, 2 or 4), rdx = value.
pub const OUT: u64 = 1;
/// `in`: rdi = port, rsi = width (1, 2 or 4); returns the value read.
pub const IN: u64 = 2;
/// `wrmsr`: rdi = MSR index, rsi = value.
pub const WRMSR: u64 = 3;
/// `rdmsr`: rdi = MSR index; returns the value.
pub const RDMSR: u64 = 4;
/// Park this CPU with interrupts off (`cli; hlt` forever). Never returns.
pub const HALT: u64 = 5;
/// `vmmcall` with KVM's hypercall ABI (rax = number, rbx/rcx/rdx = arguments): rdi =
/// number, rsi, rdx, r8 = arguments; returns the hypercall's result. Only where the VMM
/// advertises hypercall exits: on the development machines VMMCALL never exits (docs/architecture.md §4).
pub const VMMCALL: u64 = 6;
/// Sleep until the TSC reaches rdi (x2APIC TSC-deadline timer, `sti; hlt`): the vCPU
/// costs the host nothing meanwhile. Returns when the timer (or another interrupt) fires.
pub const SLEEP_UNTIL: u64 = 7;
/// `cpuid` as the VMM configured it: rdi = leaf, rsi = subleaf; returns
/// rax = ebx << 32 | eax and rdx = edx << 32 | ecx. On the development machines a CPUID at
/// CPL3 runs natively and reports the host's values, not the VMM's (KVM_SET_CPUID2 only
/// governs the emulated CPL0), so guest configuration such as SEV is read through here.
pub const CPUID: u64 = 8;
/// Wait for an interrupt (`sti; hlt; cli`), for SEV-ES guests, which program the timer
/// through the GHCB and acknowledge it themselves (see [`TIMER_VECTOR_ES`]).
pub const STI_HLT: u64 = 9;
/// Return from the SEV-ES #VC handler: reload the registers from this CPU's #VC frame slot
/// (guest-abi `layout::vc_frame_gpa`) and IRETQ to its RIP (CPL3 only). Never returns.
pub const VC_RETURN: u64 = 10;
/// Test service: raise a #VC as the CPU would for the instruction at rsi, with error code
/// (exit code) rdi and rax = r8, the other registers as the caller left them; the #VC
/// handler resumes after that instruction. The CPU never raises #VC on the development
/// machines (docs/architecture.md §4), so this is how the firmware's tests drive the
/// vector-29 stub, the CPL3 handler and VC_RETURN end to end.
pub const RAISE_VC: u64 = 11;
/// SEV-ES migration target: hold this CPU (AP reset hold through the GHCB MSR protocol,
/// at CPL0 and touching no memory, since the guest's pages arrive meanwhile) until the
/// VMM releases it, then resume the state saved in its slot (guest-abi
/// `layout::vcpu_save`) as a starting AP does. Never returns.
pub const INCOMING_HOLD: u64 = 12;
/// Hand off to a kernel the firmware loaded (direct boot): rdi = the 64-bit entry point,
/// rsi = its zero page. At CPL0 with interrupts off, loads a GDT with a flat 64-bit code
/// descriptor at 0x10 and a flat data descriptor at 0x18 (Linux's `__BOOT_CS` and
/// `__BOOT_DS`), CS = 0x10, DS = ES = SS = 0x18, FS = GS = 0, and jumps to rdi with RSI =
/// the zero page and the other general registers zero. Never returns.
pub const HANDOFF: u64 = 13;
/// Interrupt vector of the firmware's timer.
pub const TIMER_VECTOR: u64 = 0x40;
/// Interrupt vector of the timer under SEV-ES: its handler only returns (an EOI is an
/// x2APIC MSR write, which raises #VC at CPL0); the sleeper sends the EOI through the
/// GHCB once it wakes.
pub const TIMER_VECTOR_ES: u64 = 0x41;
/// Value returned for an unknown service number.
pub const UNKNOWN: u64 = u64::MAX;
