//! This CPU's GHCB (SEV-ES): the transport under vc-handler's GHCB client.
//!
//! Each CPU has a GHCB page in the SEV area (guest-abi `layout::ghcb_gpa`), shared with
//! the host. A request is copied into the page, VMGEXIT is rung, and the answer is copied
//! out once: the host may change the page at any time, so only that copy is used.
//!
//! On the development machines VMGEXIT never exits (DESIGN §2): a write to the services
//! page's VMGEXIT register stands in for it. The GHCB MSR (0xC001_0130) is written and
//! read at CPL0 through the `ud2` service calls; the VMM traps it and keeps it per vCPU,
//! as the VMSA does on hardware. Setting up costs two CPL0 round trips (SEV information
//! request, then the GHCB's GPA); every request after that is one MMIO exit.

use crate::{cpu, sev};
use guest_abi::{
    ghcb::{msr::MSR_GHCB, Ghcb, PAGE_LEN},
    layout, services,
};
use vc_handler::client::{self, EstablishError, GhcbClient, Vmgexit};

/// The GHCB of one CPU.
pub struct CpuGhcb {
    cpu: usize,
}

/// Rings the VMGEXIT stand-in.
fn doorbell() {
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

/// Shares the GHCB pages of CPUs `0..ncpus` with the host, in one conversion (boot CPU,
/// before the APs start: conversions happen on the boot CPU only).
///
/// The announcement goes through the services page here, before any GHCB exists. On
/// SEV-ES hardware a GHCB page needs no announcement to be usable (clearing the C-bit in
/// the guest's page table shares it); the announcement, which the VMM's page-state
/// record needs, would follow through the GHCB as a VMMCALL exit.
pub fn share_pages(ncpus: usize) -> Result<(), GhcbInitError> {
    sev::map_gpa_range(layout::ghcb_gpa(0), ncpus as u64, sev::Visibility::Shared)
        .map_err(GhcbInitError::Share)
}

/// Sets up CPU `cpu`'s GHCB (its page already shared): negotiates the protocol version and
/// points the GHCB MSR at the page. Returns the client for this CPU.
pub fn client(cpu: usize) -> Result<GhcbClient<CpuGhcb>, GhcbInitError> {
    let mut transport = CpuGhcb { cpu };
    client::establish(&mut transport).map_err(GhcbInitError::Establish)?;
    Ok(GhcbClient::new(transport))
}
