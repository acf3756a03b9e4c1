//! The guest owner's launch secret, as the firmware reports it (SEV detection and page
//! conversions are guest-rt's `sev`).

use guest_abi::layout;
use guest_rt::println;
use sha2::{Digest, Sha256};

/// GUID of the standard SEV launch-secret table (edk2 `SevLaunchSecret.h`, Linux
/// `drivers/virt/coco/efi_secret`): `1e74f542-71dd-4d66-963e-ef4287ff173b`.
pub const SECRET_TABLE_GUID: fwtable::Guid =
    fwtable::Guid::parse("1e74f542-71dd-4d66-963e-ef4287ff173b");

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
