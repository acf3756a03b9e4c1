//! The #VC handler (SEV-ES): the firmware's side of vc-handler's handler core.
//!
//! On SEV-ES hardware every CPUID, RDMSR/WRMSR, IN/OUT and MMIO access raises #VC (vector
//! 29, error code = exit code); this handler decodes the instruction, serves it through
//! the CPU's GHCB and steps over it. On the development machines the CPU never raises #VC,
//! so [`handle`] is entered with synthetic frames (the `vctest` workload) and the IDT's
//! vector 29 still leads to boot.s's fatal-exception report.
//!
//! Wiring a real #VC needs a CPL0 stub that reflects the exception to CPL3, because Rust
//! never runs at CPL0 here (emulated ~5000x slower and without SSE on these machines):
//! push the GPRs to form a [`VcFrame`] on the kernel stack, copy it to a per-CPU frame
//! page, IRETQ to a CPL3 entry that calls [`handle_at_rip`] on it and then returns with a
//! `ud2` service ("VC_RETURN") that reloads the GPRs from the frame page and IRETQs to the
//! frame's RIP/CS/RFLAGS/RSP/SS. A #VC raised at CPL0 itself (boot.s's `in`/`out`,
//! `rdmsr`/`wrmsr`, `cpuid`) cannot be reflected; under SEV-ES those CPL0 sites must go
//! through the GHCB instead (see the issue 12 report).

use crate::ghcb::CpuGhcb;
use guest_abi::layout;
use vc_handler::{
    client::GhcbClient,
    decode::MAX_LEN,
    frame::VcFrame,
    handler::{self, VcEnv, VcError},
};

/// The firmware's environment: identity-mapped, MMIO only on the guest-services page,
/// XSAVE never enabled.
struct FirmwareEnv;

impl VcEnv for FirmwareEnv {
    fn mmio_gpa(&self, linear: u64, len: usize) -> Option<u64> {
        let end = linear.checked_add(len as u64)?;
        (linear >= layout::SERVICES_GPA && end <= layout::SERVICES_GPA + layout::PAGE_SIZE)
            .then_some(linear)
    }

    fn xcr0(&self) -> u64 {
        // CR4.OSXSAVE stays clear, so XCR0 holds its reset value: x87 state only.
        1
    }
}

/// Serves a #VC whose faulting instruction is `insn` (the bytes at `frame.rip`).
pub fn handle(
    frame: &mut VcFrame,
    insn: &[u8],
    ghcb: &mut GhcbClient<CpuGhcb>,
) -> Result<(), VcError> {
    handler::handle(frame, insn, ghcb, &FirmwareEnv)
}

/// Serves a #VC, reading the faulting instruction at `frame.rip`.
pub fn handle_at_rip(frame: &mut VcFrame, ghcb: &mut GhcbClient<CpuGhcb>) -> Result<(), VcError> {
    let mut insn = [0u8; MAX_LEN];
    // Never read across the end of the 32-bit address space (the ROM ends there).
    let n = match (1u64 << 32).checked_sub(frame.rip) {
        Some(room) if room > 0 => (room.min(MAX_LEN as u64)) as usize,
        _ => MAX_LEN,
    };
    for (i, b) in insn.iter_mut().enumerate().take(n) {
        // SAFETY: RIP points at the instruction that raised the #VC, in the identity-mapped
        // code of this firmware; the bytes read stay within its mapping (clamped at 4 GiB
        // above) and are only read.
        *b = unsafe { core::ptr::read_volatile((frame.rip + i as u64) as *const u8) };
    }
    handle(frame, &insn[..n], ghcb)
}
