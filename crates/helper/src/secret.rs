//! Finding the migration secret in the guest owner's launch secret table (the standard
//! GUID-keyed table: header GUID `1e74f542-71dd-4d66-963e-ef4287ff173b` ‖ u32 total
//! length, then entries GUID ‖ u32 length (header included) ‖ data).

use helper_abi::{MIGRATION_SECRET_GUID, MIGRATION_SECRET_LEN};

/// GUID of the secret table header, EFI byte order.
pub const SECRET_TABLE_GUID: [u8; 16] = [
    0x42, 0xf5, 0x74, 0x1e, 0xdd, 0x71, 0x66, 0x4d, 0x96, 0x3e, 0xef, 0x42, 0x87, 0xff, 0x17, 0x3b,
];

/// The migration secret, if `area` holds a secret table with a 32-byte entry under
/// [`MIGRATION_SECRET_GUID`]. Malformed tables yield None.
pub fn find_migration_secret(area: &[u8]) -> Option<[u8; MIGRATION_SECRET_LEN]> {
    if area.get(0..16)? != SECRET_TABLE_GUID {
        return None;
    }
    let total = u32::from_le_bytes(area.get(16..20)?.try_into().ok()?) as usize;
    let table = area.get(..total)?;
    let mut at = 20;
    while at + 20 <= table.len() {
        let guid = table.get(at..at + 16)?;
        let len = u32::from_le_bytes(table.get(at + 16..at + 20)?.try_into().ok()?) as usize;
        if len < 20 {
            return None;
        }
        let data = table.get(at + 20..at.checked_add(len)?)?;
        if guid == MIGRATION_SECRET_GUID {
            return data.try_into().ok();
        }
        at += len;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
        let mut t = SECRET_TABLE_GUID.to_vec();
        t.extend_from_slice(&[0; 4]);
        for (g, d) in entries {
            t.extend_from_slice(g);
            t.extend_from_slice(&(20 + d.len() as u32).to_le_bytes());
            t.extend_from_slice(d);
        }
        let len = t.len() as u32;
        t[16..20].copy_from_slice(&len.to_le_bytes());
        t.resize(4096, 0);
        t
    }

    #[test]
    fn finds_the_secret_among_other_entries() {
        let t = table(&[([1; 16], b"disk key"), (MIGRATION_SECRET_GUID, &[7; 32])]);
        assert_eq!(find_migration_secret(&t), Some([7; 32]));
    }

    #[test]
    fn no_table_wrong_length_or_garbage_means_no_secret() {
        assert_eq!(find_migration_secret(&[0u8; 4096]), None);
        assert_eq!(
            find_migration_secret(&table(&[(MIGRATION_SECRET_GUID, &[7; 16])])),
            None
        );
        let mut t = table(&[([1; 16], b"x"), (MIGRATION_SECRET_GUID, &[7; 32])]);
        t[36..40].copy_from_slice(&3u32.to_le_bytes()); // entry length < header
        assert_eq!(find_migration_secret(&t), None);
        let mut t = table(&[(MIGRATION_SECRET_GUID, &[7; 32])]);
        t[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(find_migration_secret(&t), None);
    }
}
