//! SEV as the guest sees it: detecting it the architectural way and announcing page
//! conversions to the host (recorded in the guest's shared list, which the migration
//! helper reads).

use crate::layout;
use crate::{cpu, es, services};
use guest_abi::services::hcall;
use mirror_helper::shared_list::SharedList;

/// SEV_STATUS (AMD APM vol. 2, "Secure Encrypted Virtualization").
const MSR_SEV_STATUS: u32 = 0xc001_0131;
/// Hypervisor CPUID leaf with KVM's feature bits.
const CPUID_KVM_FEATURES: u32 = 0x4000_0001;
/// KVM_FEATURE_HC_MAP_GPA_RANGE: the host takes KVM_HC_MAP_GPA_RANGE by VMMCALL.
const KVM_FEATURE_HC_MAP_GPA_RANGE: u32 = 1 << 16;
/// How this guest runs under SEV.
#[derive(Clone, Copy, Debug)]
pub struct Sev {
    /// SEV-ES is active too.
    pub es: bool,
}

/// Detects SEV: CPUID 0x8000001F says the CPU has it, then SEV_STATUS says it is active.
/// The MSR is only read when CPUID allows it, so a plain VM never takes a #GP here. CPUID
/// goes through CPL0 (see `cpu::vmm_cpuid`). Under SEV-ES, SEV_STATUS as boot.s read it
/// before anything else says so (a CPUID at CPL0 would raise #VC there).
pub fn detect() -> Option<Sev> {
    if es::active() {
        return Some(Sev { es: true });
    }
    if cpu::vmm_cpuid(0x8000_0000, 0)[0] < 0x8000_001f
        || cpu::vmm_cpuid(0x8000_001f, 0)[0] & (1 << 1) == 0
    {
        return None;
    }
    let status = cpu::rdmsr(MSR_SEV_STATUS);
    (status & 1 != 0).then_some(Sev {
        es: status & (1 << 1) != 0,
    })
}

/// Whether the host takes hypercalls by VMMCALL (it says so in KVM's CPUID leaf). On the
/// development machines it does not: VMMCALL never exits there (docs/architecture.md
/// §4), and the guest-services page carries the same call instead.
fn vmmcall_transport() -> bool {
    let sig = cpu::vmm_cpuid(0x4000_0000, 0);
    let kvm = [sig[1], sig[2], sig[3]] == [0x4b4d_564b, 0x564b_4d56, 0x4d];
    kvm && cpu::vmm_cpuid(CPUID_KVM_FEATURES, 0)[0] & KVM_FEATURE_HC_MAP_GPA_RANGE != 0
}

/// Whether a page is encrypted with the guest's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(
    dead_code,
    reason = "pages only become shared so far; the helper converts back"
)]
pub enum Visibility {
    /// Encrypted (private to the guest).
    Private,
    /// Shared with the host in the clear.
    Shared,
}

/// Starts the guest's record of shared pages (empty: everything private). Boot CPU,
/// before the first conversion.
pub fn init_shared_list() {
    let mut page = [0u8; layout::PAGE_SIZE as usize];
    SharedList::new().encode(&mut page);
    // SAFETY: the list page is reserved RAM of the SEV area, identity-mapped, and only
    // the boot CPU touches it until the APs start.
    unsafe {
        core::ptr::copy_nonoverlapping(
            page.as_ptr(),
            layout::SEV_SHARED_LIST as *mut u8,
            page.len(),
        )
    };
}

/// The shared list after the conversion, or None if it would not fit.
fn updated_shared_list(gpa: u64, pages: u64, v: Visibility) -> Option<SharedList> {
    let mut page = [0u8; layout::PAGE_SIZE as usize];
    // SAFETY: as in `init_shared_list`; conversions happen on the boot CPU only.
    unsafe {
        core::ptr::copy_nonoverlapping(
            layout::SEV_SHARED_LIST as *const u8,
            page.as_mut_ptr(),
            page.len(),
        )
    };
    let mut list = SharedList::decode(&page);
    list.set(gpa, pages, v == Visibility::Shared).ok()?;
    Some(list)
}

fn store_shared_list(list: &SharedList) {
    let mut page = [0u8; layout::PAGE_SIZE as usize];
    list.encode(&mut page);
    // SAFETY: as in `init_shared_list`.
    unsafe {
        core::ptr::copy_nonoverlapping(
            page.as_ptr(),
            layout::SEV_SHARED_LIST as *mut u8,
            page.len(),
        )
    };
}

/// Tells the host that `pages` 4 KiB pages at `gpa` change visibility
/// (KVM_HC_MAP_GPA_RANGE) and records it in the guest's shared list; returns the
/// host's error code on failure (u64::MAX if the list is full).
pub fn map_gpa_range(gpa: u64, pages: u64, v: Visibility) -> Result<(), u64> {
    let list = updated_shared_list(gpa, pages, v).ok_or(u64::MAX)?;
    let attrs = hcall::MAP_GPA_RANGE_PAGE_SZ_4K
        | match v {
            Visibility::Private => hcall::MAP_GPA_RANGE_ENCRYPTED,
            Visibility::Shared => 0,
        };
    let args = [gpa, pages, attrs];
    // Under SEV-ES VMMCALL is the GHCB's VMMCALL exit, as KVM serves it for SEV-ES guests.
    let ret = if es::active() || vmmcall_transport() {
        cpu::vmmcall(hcall::MAP_GPA_RANGE, args)
    } else {
        services::hypercall(hcall::MAP_GPA_RANGE, args)
    };
    match ret {
        0 => {
            store_shared_list(&list);
            Ok(())
        }
        e => Err(e),
    }
}
