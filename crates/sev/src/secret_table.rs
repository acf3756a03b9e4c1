//! The GUID-keyed secret table guest owners inject with LAUNCH_SECRET (the format of the
//! Linux `efi_secret` driver, `drivers/virt/coco/efi_secret/efi_secret.c`, "Structure of
//! the EFI secret area", and of `sevctl secret build`):
//!
//! | offset | size | field                                                         |
//! |--------|------|---------------------------------------------------------------|
//! | 0      | 16   | header GUID `1e74f542-71dd-4d66-963e-ef4287ff173b` (EFI layout) |
//! | 16     | 4    | u32 LE length of the table: header + all entries, no padding  |
//! | 20     | ...  | entries: GUID (16) ‖ u32 LE length (20 + data) ‖ data         |
//!
//! `sevctl` then pads the table with zeros to a multiple of 16 bytes (the padding is not
//! counted in the length); [`build`] does the same. [`parse`] follows the kernel driver:
//! the table length must cover the header and fit the buffer, every entry length must be
//! at least 20 and fit what is left, entries with the null GUID are deleted ones and
//! skipped, fewer than 20 bytes left end the walk.

use fwtable::Guid;

/// The header GUID (`EFI_SECRET_TABLE_HEADER_GUID`).
pub const TABLE_GUID: Guid = Guid::parse("1e74f542-71dd-4d66-963e-ef4287ff173b");
/// Size of the table header and of an entry header.
pub const HEADER_SIZE: usize = 20;
const NULL_GUID: Guid = Guid::from_bytes([0; 16]);

/// A secret table that cannot be built or read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretTableError {
    /// The table would not fit a u32 length.
    #[error("secret table would be {len} bytes, too large")]
    TooLarge {
        /// Bytes needed.
        len: usize,
    },
    /// The buffer does not start with the table header GUID.
    #[error("no secret table: header GUID is {found}")]
    NoTable {
        /// The GUID found.
        found: Guid,
    },
    /// The buffer is shorter than a header.
    #[error("secret table buffer is {len} bytes, shorter than its 20-byte header")]
    Truncated {
        /// Bytes given.
        len: usize,
    },
    /// The table length is impossible.
    #[error("secret table length {len} is outside 20..={available}")]
    TableLength {
        /// Length in the header.
        len: u32,
        /// Bytes available.
        available: usize,
    },
    /// An entry length is impossible.
    #[error("secret entry at offset {offset} has length {len}, outside 20..={left}")]
    EntryLength {
        /// Offset of the entry.
        offset: usize,
        /// Its length field.
        len: u32,
        /// Bytes left in the table.
        left: usize,
    },
}

/// Builds a padded secret table from `entries`, in order.
pub fn build(entries: &[(Guid, &[u8])]) -> Result<Vec<u8>, SecretTableError> {
    let total = entries
        .iter()
        .try_fold(HEADER_SIZE, |acc, (_, data)| {
            acc.checked_add(HEADER_SIZE)?.checked_add(data.len())
        })
        .ok_or(SecretTableError::TooLarge { len: usize::MAX })?;
    let total32 = u32::try_from(total).map_err(|_| SecretTableError::TooLarge { len: total })?;
    let mut out = Vec::with_capacity(total.next_multiple_of(16));
    out.extend_from_slice(TABLE_GUID.as_bytes());
    out.extend_from_slice(&total32.to_le_bytes());
    for (guid, data) in entries {
        let len = u32::try_from(HEADER_SIZE + data.len()).expect("bounded by the total");
        out.extend_from_slice(guid.as_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(data);
    }
    out.resize(total.next_multiple_of(16), 0);
    Ok(out)
}

fn guid_at(b: &[u8], off: usize) -> Guid {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[off..off + 16]);
    Guid::from_bytes(g)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// Reads the secret table at the start of `area` (untrusted bytes): the live entries in
/// order, borrowing their data.
pub fn parse(area: &[u8]) -> Result<Vec<(Guid, &[u8])>, SecretTableError> {
    if area.len() < HEADER_SIZE {
        return Err(SecretTableError::Truncated { len: area.len() });
    }
    let guid = guid_at(area, 0);
    if guid != TABLE_GUID {
        return Err(SecretTableError::NoTable { found: guid });
    }
    let len = u32_at(area, 16);
    let table_len = len as usize;
    if table_len < HEADER_SIZE || table_len > area.len() {
        return Err(SecretTableError::TableLength {
            len,
            available: area.len(),
        });
    }
    let mut entries = Vec::new();
    let mut off = HEADER_SIZE;
    while table_len - off >= HEADER_SIZE {
        let left = table_len - off;
        let elen = u32_at(area, off + 16);
        let elen_usize = elen as usize;
        if elen_usize < HEADER_SIZE || elen_usize > left {
            return Err(SecretTableError::EntryLength {
                offset: off,
                len: elen,
                left,
            });
        }
        let guid = guid_at(area, off);
        if guid != NULL_GUID {
            entries.push((guid, &area[off + HEADER_SIZE..off + elen_usize]));
        }
        off += elen_usize;
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Guid = Guid::parse("736870e5-84f0-4973-92ec-06879ce3da0b");
    const B: Guid = Guid::parse("83c83f7f-1356-4975-8b7e-d3a0b54312c6");

    #[test]
    fn layout_matches_sevctl() {
        // sevctl: entry = GUID (bytes_le) ‖ len (u32 LE, 16 + 4 + data) ‖ data; table =
        // same with the header GUID around the entries, then zero padding to 16.
        let t = build(&[(A, b"hello")]).unwrap();
        assert_eq!(t.len(), 48);
        assert_eq!(&t[..16], TABLE_GUID.as_bytes());
        assert_eq!(t[0..4], [0x42, 0xf5, 0x74, 0x1e], "EFI GUID layout");
        assert_eq!(u32::from_le_bytes(t[16..20].try_into().unwrap()), 45);
        assert_eq!(&t[20..36], A.as_bytes());
        assert_eq!(u32::from_le_bytes(t[36..40].try_into().unwrap()), 25);
        assert_eq!(&t[40..45], b"hello");
        assert!(t[45..].iter().all(|&b| b == 0));
    }

    #[test]
    fn round_trip_and_deleted_entries() {
        let t = build(&[(A, b"one"), (NULL_GUID, b"gone"), (B, b"")]).unwrap();
        assert_eq!(t.len() % 16, 0);
        assert_eq!(parse(&t).unwrap(), vec![(A, &b"one"[..]), (B, &b""[..])]);
        assert_eq!(parse(&build(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn hostile_tables_are_rejected() {
        let good = build(&[(A, b"data")]).unwrap();
        assert_eq!(
            parse(&good[..19]),
            Err(SecretTableError::Truncated { len: 19 })
        );
        let mut no = good.clone();
        no[0] ^= 1;
        assert!(matches!(parse(&no), Err(SecretTableError::NoTable { .. })));
        for bad_len in [0u32, 19, 1000, u32::MAX] {
            let mut t = good.clone();
            t[16..20].copy_from_slice(&bad_len.to_le_bytes());
            assert!(
                matches!(parse(&t), Err(SecretTableError::TableLength { .. })),
                "{bad_len}"
            );
        }
        for bad_entry in [0u32, 19, 25, u32::MAX] {
            let mut t = good.clone();
            t[36..40].copy_from_slice(&bad_entry.to_le_bytes());
            assert!(
                matches!(parse(&t), Err(SecretTableError::EntryLength { .. })),
                "{bad_entry}"
            );
        }
    }
}
