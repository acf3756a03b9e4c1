//! The #VC handler (SEV-ES): the firmware's side of vc-handler's handler core.
//!
//! On SEV-ES hardware every CPUID, RDMSR/WRMSR, IN/OUT and MMIO access raises #VC (vector
//! 29, error code = exit code); this handler decodes the instruction, serves it through
//! the CPU's GHCB and steps over it, as OVMF's `CcExitVcHandler` does. Rust never runs at
//! CPL0 here (it is emulated ~5000x slower there, without SSE), so rt.s's vector-29 stub
//! reflects a #VC raised at CPL3 to [`sevm_vc_rust_entry`] at CPL3: it copies the frame
//! (vc-handler's [`VcFrame`]) to this CPU's frame slot (guest-abi `layout::vc_frame_gpa`)
//! and IRETQs here on the interrupted stack, below its red zone; the handler writes the
//! served registers back into the slot and returns through the VC_RETURN service, which
//! reloads them and IRETQs to the instruction after the faulting one. A #VC at CPL0 cannot
//! be reflected: the CPL0 code never executes what raises one under SEV-ES (boot.s asks
//! through the GHCB MSR protocol instead).
//!
//! On the development machines the CPU never raises #VC, so the `vctest` workload drives
//! this path with the RAISE_VC test service (a #UD frame turned into a #VC frame, then the
//! same stub), and enters [`handle`] with synthetic frames for each instruction kind.

use crate::layout;
use crate::{cpu, es, ghcb, println, services};
use vc_handler::{
    client::GhcbClient,
    decode::MAX_LEN,
    frame::VcFrame,
    handler::{self, VcEnv, VcError},
};

/// The firmware's environment: identity-mapped, MMIO only on the guest-services page, XCR0
/// as boot.s set it.
struct FirmwareEnv;

impl VcEnv for FirmwareEnv {
    fn mmio_gpa(&self, linear: u64, len: usize) -> Option<u64> {
        let end = linear.checked_add(len as u64)?;
        (linear >= layout::SERVICES_GPA && end <= layout::SERVICES_GPA + layout::PAGE_SIZE)
            .then_some(linear)
    }

    fn xcr0(&self) -> u64 {
        es::xcr0()
    }
}

/// Serves a #VC whose faulting instruction is `insn` (the bytes at `frame.rip`).
pub fn handle(
    frame: &mut VcFrame,
    insn: &[u8],
    ghcb: &mut GhcbClient<ghcb::CpuGhcb>,
) -> Result<(), VcError> {
    handler::handle(frame, insn, ghcb, &FirmwareEnv)
}

/// Serves a #VC, reading the faulting instruction at `frame.rip`.
pub fn handle_at_rip(
    frame: &mut VcFrame,
    ghcb: &mut GhcbClient<ghcb::CpuGhcb>,
) -> Result<(), VcError> {
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

/// Where rt.s's vector-29 stub enters CPL3 with this CPU's frame slot (`slot`).
#[no_mangle]
extern "C" fn sevm_vc_rust_entry(slot: u64) -> ! {
    let cpu = es::current_cpu();
    if slot != layout::vc_frame_gpa(cpu) {
        // The stub passes the slot it derived from the kernel stack; they always agree.
        services::fault(29, 0, 0, slot)
    }
    let frame_ptr = slot as *mut VcFrame;
    // SAFETY: the slot is this CPU's, RAM of this image's runtime area, identity-mapped,
    // written by the stub before it entered here and used by nothing else until
    // VC_RETURN; it is copied once and only the copy is used.
    let mut frame = unsafe { core::ptr::read_volatile(frame_ptr) };
    let (rip, code) = (frame.rip, frame.error_code);
    match handle_at_rip(&mut frame, &mut ghcb::client()) {
        Ok(()) => {
            // SAFETY: as above; VC_RETURN reloads the registers from here.
            unsafe { core::ptr::write_volatile(frame_ptr, frame) };
            cpu::vc_return()
        }
        Err(e) => {
            println!(
                "{}: #VC at {rip:#x} (exit {code:#x}) not served: {e}",
                crate::NAME
            );
            services::fault(29, rip, code, 0)
        }
    }
}
