//! SEV as the guest sees it: detecting it the architectural way, announcing page
//! conversions to the host, and reading the guest owner's launch secret.

use crate::{cpu, es, println, services};
use guest_abi::{layout, services::hcall};
use mirror_helper::shared_list::SharedList;
use sha2::{Digest, Sha256};

/// SEV_STATUS (AMD APM vol. 2, "Secure Encrypted Virtualization").
const MSR_SEV_STATUS: u32 = 0xc001_0131;
/// Hypervisor CPUID leaf with KVM's feature bits.
const CPUID_KVM_FEATURES: u32 = 0x4000_0001;
/// KVM_FEATURE_HC_MAP_GPA_RANGE: the host takes KVM_HC_MAP_GPA_RANGE by VMMCALL.
const KVM_FEATURE_HC_MAP_GPA_RANGE: u32 = 1 << 16;
/// GUID of the standard SEV launch-secret table (edk2 `SevLaunchSecret.h`, Linux
/// `drivers/virt/coco/efi_secret`): `1e74f542-71dd-4d66-963e-ef4287ff173b`.
pub const SECRET_TABLE_GUID: fwtable::Guid =
    fwtable::Guid::parse("1e74f542-71dd-4d66-963e-ef4287ff173b");

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

/// The secret area the image declares (SEV secret block of its own GUID table).
fn secret_area() -> Option<(u64, u64)> {
    // SAFETY: the firmware image is mapped read-only at FW_IMAGE_BASE for its full size
    // and never changes.
    let rom = unsafe {
        core::slice::from_raw_parts(
            layout::FW_IMAGE_BASE as *const u8,
            layout::FW_IMAGE_SIZE as usize,
        )
    };
    let table = fwtable::Table::parse(rom).ok()?;
    let entry = table.find(fwtable::guid::SEV_SECRET_BLOCK).ok()??;
    let area = fwtable::SevArea::decode(entry.data).ok()?;
    Some((u64::from(area.base), u64::from(area.size)))
}

/// Prints, for each entry of the injected secret table, its GUID and the SHA-256 of its
/// data (never the data). Returns the number of entries.
pub fn report_secrets() -> usize {
    let Some((base, size)) = secret_area() else {
        println!("sev: the firmware declares no secret area");
        return 0;
    };
    let mut area = [0u8; layout::SEV_SECRET_SIZE as usize];
    let len = (size as usize).min(area.len());
    // SAFETY: the secret area is reserved RAM of this guest (SEV area), identity-mapped;
    // it is copied once and only the copy is parsed.
    unsafe { core::ptr::copy_nonoverlapping(base as *const u8, area.as_mut_ptr(), len) };
    let entries = parse_secret_table(&area[..len]);
    match entries {
        None => {
            println!("sev: no launch secret in the secret area at {base:#x}");
            0
        }
        Some(entries) => {
            let mut n = 0;
            for (guid, data) in entries {
                let digest = Sha256::digest(data);
                let mut hex = [0u8; 64];
                for (i, b) in digest.iter().enumerate() {
                    hex[2 * i] = b"0123456789abcdef"[(b >> 4) as usize];
                    hex[2 * i + 1] = b"0123456789abcdef"[(b & 15) as usize];
                }
                let hex = core::str::from_utf8(&hex).unwrap_or("?");
                println!("sev: secret {guid}: {} bytes, sha256 {hex}", data.len());
                n += 1;
            }
            if n == 0 {
                println!("sev: the launch secret table is empty");
            }
            n
        }
    }
}

/// The entries (GUID, data) of a secret table, or None when `area` holds no table.
/// Entries that do not fit end the walk.
fn parse_secret_table(area: &[u8]) -> Option<impl Iterator<Item = (fwtable::Guid, &[u8])>> {
    let guid: [u8; 16] = area.get(0..16)?.try_into().ok()?;
    if fwtable::Guid::from_bytes(guid) != SECRET_TABLE_GUID {
        return None;
    }
    let total = u32::from_le_bytes(area.get(16..20)?.try_into().ok()?) as usize;
    let table = area.get(..total.min(area.len()))?;
    let mut at = 20;
    Some(core::iter::from_fn(move || {
        let guid: [u8; 16] = table.get(at..at + 16)?.try_into().ok()?;
        let len = u32::from_le_bytes(table.get(at + 16..at + 20)?.try_into().ok()?) as usize;
        let data = table.get(at + 20..at.checked_add(len)?)?;
        if len < 20 {
            return None;
        }
        at += len;
        Some((fwtable::Guid::from_bytes(guid), data))
    }))
}
