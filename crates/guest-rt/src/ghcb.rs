//! This CPU's GHCB (SEV-ES): the transport under vc-handler's GHCB client.
//!
//! Each CPU has a GHCB page in the SEV area (guest-abi `layout::ghcb_gpa`), shared with
//! the host. A request is copied into the page, VMGEXIT is rung, and the answer is copied
//! out once: the host may change the page at any time, so only that copy is used.
//!
//! On the development machines VMGEXIT never exits (docs/architecture.md §4): a write to
//! the services page's VMGEXIT register stands in for it ([`doorbell`]; on SEV-ES hardware
//! this is the one line that becomes `rep vmmcall`). The GHCB MSR (0xC001_0130) is written
//! and read at CPL0 through the `ud2` service calls (SEV-ES hardware serves it without a
//! #VC); the VMM traps it and keeps it per vCPU, as the VMSA does on hardware. Setting up
//! costs two CPL0 round trips (SEV information request, then the GHCB's GPA); every
//! request after that is one MMIO exit.

use crate::layout;
use crate::{cpu, es, sev};
use guest_abi::{
    ghcb::{msr::MSR_GHCB, Ghcb, PAGE_LEN},
    services,
};
use vc_handler::client::{self, EstablishError, GhcbClient, Vmgexit};

/// The GHCB of one CPU.
pub struct CpuGhcb {
    cpu: usize,
}

/// Rings VMGEXIT (its stand-in: the services page's VMGEXIT register).
pub fn doorbell() {
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
    // SAFETY: the services page is identity-mapped, has no memslot behind it, and every
    // access exits to the VMM; the write touches no guest memory. The VMM has served the
    // GHCB by the time the write completes.
    unsafe { core::ptr::write_volatile((layout::SERVICES_GPA + services::VMGEXIT) as *mut u64, 0) };
    core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
}

impl Vmgexit for CpuGhcb {
    fn ghcb_gpa(&self) -> u64 {
        layout::ghcb_gpa(self.cpu)
    }

    fn vmgexit(&mut self, ghcb: &mut Ghcb) {
        let page = self.ghcb_gpa() as *mut u8;
        // SAFETY: the page is this CPU's GHCB, reserved RAM of the SEV area, identity-
        // mapped, used by no other code; the copy covers exactly one page.
        unsafe { core::ptr::copy_nonoverlapping(ghcb.page().as_ptr(), page, PAGE_LEN) };
        doorbell();
        let mut answer = [0u8; PAGE_LEN];
        // SAFETY: as above; the host's answer is copied once and only the copy is read.
        unsafe { core::ptr::copy_nonoverlapping(page, answer.as_mut_ptr(), PAGE_LEN) };
        *ghcb = Ghcb::from_page(&answer);
    }

    fn msr_exchange(&mut self, request: u64) -> u64 {
        cpu::wrmsr(MSR_GHCB, request);
        doorbell();
        cpu::rdmsr(MSR_GHCB)
    }

    fn write_msr(&mut self, value: u64) {
        cpu::wrmsr(MSR_GHCB, value);
    }
}

/// Why the GHCB could not be set up.
#[derive(Clone, Copy, Debug)]
pub enum GhcbInitError {
    /// The host refused to share the GHCB pages (its error code).
    Share(u64),
    /// The MSR protocol failed.
    Establish(EstablishError),
}

impl core::fmt::Display for GhcbInitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GhcbInitError::Share(e) => {
                write!(f, "the host refused to share the GHCB pages (error {e:#x})")
            }
            GhcbInitError::Establish(e) => write!(f, "{e}"),
        }
    }
}

/// Sets up CPU `cpu`'s GHCB: negotiates the protocol version and points the GHCB MSR at
/// the page. Each CPU does this for itself, first thing at CPL3.
///
/// The page is shared from its first VMGEXIT on: on hardware the guest shares it by
/// clearing the C-bit of its mapping, which needs no channel to the host yet; the
/// emulated platform stands in for that (docs/architecture.md §3.2). [`record_shared`]
/// then records the pages in the guest's shared list and announces them.
pub fn establish(cpu: usize) -> Result<(), GhcbInitError> {
    client::establish(&mut CpuGhcb { cpu })
        .map(drop)
        .map_err(GhcbInitError::Establish)
}

/// Records the GHCB pages of every CPU this image supports as shared, in the guest's
/// shared list, and announces them to the host (KVM_HC_MAP_GPA_RANGE through the boot
/// CPU's GHCB). Boot CPU, before the APs start: conversions happen there only.
pub fn record_shared() -> Result<(), GhcbInitError> {
    sev::map_gpa_range(
        layout::ghcb_gpa(0),
        layout::MAX_VCPUS as u64,
        sev::Visibility::Shared,
    )
    .map_err(GhcbInitError::Share)
}

/// A client on this CPU's GHCB (established already).
pub fn client() -> GhcbClient<CpuGhcb> {
    GhcbClient::new(CpuGhcb {
        cpu: es::current_cpu(),
    })
}
