//! Writing a footer table, without allocating.
//!
//! Entries are written in the order they are added, from low to high
//! addresses, and the footer comes last. The parser walks from the footer
//! backwards, so the first entry added is the one walked last: the same
//! relation as between OVMF's source order and QEMU's lookup order.

use core::ops::Range;

use crate::guid::{self, Guid};
use crate::table::{BYTES_AFTER_TABLE, ENTRY_OVERHEAD};
use crate::TableError;

/// Builds a table into a caller-provided buffer.
///
/// ```
/// use fwtable::{guid, SevArea, Table};
///
/// let mut image = [0u8; 4096];
/// let secret = SevArea { base: 0x80_0000, size: 0x1000 }.encode();
/// let range = fwtable::place_in_image(&mut image, &[(guid::SEV_SECRET_BLOCK, &secret[..])])?;
/// assert_eq!(range.end, 4096 - 32);
/// let table = Table::parse(&image)?;
/// assert_eq!(table.find(guid::SEV_SECRET_BLOCK)?.map(|e| e.data), Some(&secret[..]));
/// # Ok::<(), fwtable::TableError>(())
/// ```
#[derive(Debug)]
pub struct TableBuilder<'b> {
    buf: &'b mut [u8],
    pos: usize,
}

impl<'b> TableBuilder<'b> {
    /// Starts a table at the beginning of `buf`.
    pub fn new(buf: &'b mut [u8]) -> TableBuilder<'b> {
        TableBuilder { buf, pos: 0 }
    }

    /// Bytes a table holding `entries` takes, footer included.
    pub fn table_len(entries: &[(Guid, &[u8])]) -> Result<usize, TableError> {
        let mut total = ENTRY_OVERHEAD;
        for (_, data) in entries {
            total = total.saturating_add(entry_len(data)?);
        }
        if total > usize::from(u16::MAX) {
            return Err(TableError::TableTooLong { len: total });
        }
        Ok(total)
    }

    /// Appends an entry (`data ‖ u16 len ‖ GUID`).
    pub fn add(&mut self, guid: Guid, data: &[u8]) -> Result<&mut Self, TableError> {
        let len = entry_len(data)?;
        let end = self.pos + len;
        if end + ENTRY_OVERHEAD > usize::from(u16::MAX) {
            return Err(TableError::TableTooLong {
                len: end + ENTRY_OVERHEAD,
            });
        }
        write_entry(self.buf, self.pos, guid, data, len)?;
        self.pos = end;
        Ok(self)
    }

    /// Appends the footer (total length + footer GUID) and returns the
    /// table's length. The table is `buf[..len]` and belongs right before the
    /// last 32 bytes of the image.
    pub fn finish(self) -> Result<usize, TableError> {
        let total = self.pos + ENTRY_OVERHEAD;
        write_footer(self.buf, self.pos, total)?;
        Ok(total)
    }
}

/// Length of the entry holding `data`, checked against the `u16` field.
fn entry_len(data: &[u8]) -> Result<usize, TableError> {
    data.len()
        .checked_add(ENTRY_OVERHEAD)
        .filter(|&n| n <= usize::from(u16::MAX))
        .ok_or(TableError::EntryTooLong { len: data.len() })
}

fn write_entry(
    buf: &mut [u8],
    at: usize,
    guid: Guid,
    data: &[u8],
    len: usize,
) -> Result<(), TableError> {
    let available = buf.len().saturating_sub(at);
    let len16 = u16::try_from(len).map_err(|_| TableError::EntryTooLong { len: data.len() })?;
    let dst = buf.get_mut(at..at + len).ok_or(TableError::NoRoom {
        needed: len,
        available,
    })?;
    let (d, tail) = dst.split_at_mut(data.len());
    d.copy_from_slice(data);
    tail[..2].copy_from_slice(&len16.to_le_bytes());
    tail[2..].copy_from_slice(guid.as_bytes());
    Ok(())
}

fn write_footer(buf: &mut [u8], at: usize, total: usize) -> Result<(), TableError> {
    let available = buf.len().saturating_sub(at);
    let total16 = u16::try_from(total).map_err(|_| TableError::TableTooLong { len: total })?;
    let dst = buf
        .get_mut(at..at + ENTRY_OVERHEAD)
        .ok_or(TableError::NoRoom {
            needed: ENTRY_OVERHEAD,
            available,
        })?;
    dst[..2].copy_from_slice(&total16.to_le_bytes());
    dst[2..].copy_from_slice(guid::FOOTER.as_bytes());
    Ok(())
}

/// Writes a table holding `entries` (first = farthest from the footer) so that
/// it ends 32 bytes before the end of `image`, where OVMF has it. Returns the
/// byte range the table occupies. The 32 bytes after it are not touched.
pub fn place_in_image(
    image: &mut [u8],
    entries: &[(Guid, &[u8])],
) -> Result<Range<usize>, TableError> {
    let total = TableBuilder::table_len(entries)?;
    let needed = total + BYTES_AFTER_TABLE;
    let Some(start) = image.len().checked_sub(needed) else {
        return Err(TableError::NoRoom {
            needed,
            available: image.len(),
        });
    };
    let end = start + total;
    let region = image.get_mut(start..end).ok_or(TableError::NoRoom {
        needed,
        available: end,
    })?;
    let mut builder = TableBuilder::new(region);
    for &(guid, data) in entries {
        builder.add(guid, data)?;
    }
    builder.finish()?;
    Ok(start..end)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::guid::{
        MIRROR_HELPER_DESCRIPTOR, SERVICES_DESCRIPTOR, SEV_ES_RESET_BLOCK, SEV_HASH_TABLE,
        SEV_SECRET_BLOCK,
    };
    use crate::{ServicesDescriptor, SevArea, SevEsResetBlock, Table};

    #[test]
    fn builds_ovmf_byte_layout() {
        // Same layout as the tail of Debian's OVMF.fd for the reset block.
        let mut buf = [0u8; 64];
        let mut b = TableBuilder::new(&mut buf);
        b.add(SEV_ES_RESET_BLOCK, &[0x04, 0xb0, 0x80, 0x00])
            .unwrap();
        let len = b.finish().unwrap();
        assert_eq!(len, 40);
        let mut expect = vec![0x04, 0xb0, 0x80, 0x00, 22, 0];
        expect.extend_from_slice(SEV_ES_RESET_BLOCK.as_bytes());
        expect.extend_from_slice(&[40, 0]);
        expect.extend_from_slice(guid::FOOTER.as_bytes());
        assert_eq!(&buf[..len], &expect[..]);
    }

    #[test]
    fn round_trip_keeps_entries_and_order() {
        let reset = SevEsResetBlock {
            ip: 0xb004,
            cs_base: 0x80_0000,
        }
        .encode()
        .unwrap();
        let secret = SevArea {
            base: 0x80_d000,
            size: 0x1000,
        }
        .encode();
        let hash = SevArea { base: 0, size: 0 }.encode();
        let services = ServicesDescriptor {
            flags: 0,
            services_gpa: 0xfe00_0000,
        }
        .encode();
        let helper = [1u8, 0, 0xaa, 0xbb, 0xcc];
        let entries: [(Guid, &[u8]); 6] = [
            (MIRROR_HELPER_DESCRIPTOR, &helper),
            (SERVICES_DESCRIPTOR, &services),
            (SEV_HASH_TABLE, &hash),
            (SEV_SECRET_BLOCK, &secret),
            (SEV_ES_RESET_BLOCK, &reset),
            (SEV_SECRET_BLOCK, &[]),
        ];
        let mut image = vec![0x5au8; 8192];
        let range = place_in_image(&mut image, &entries).unwrap();
        assert_eq!(range.end, 8192 - 32);
        assert_eq!(range.len(), TableBuilder::table_len(&entries).unwrap());
        assert!(image[range.end..].iter().all(|&b| b == 0x5a));
        assert!(image[..range.start].iter().all(|&b| b == 0x5a));

        let table = Table::parse(&image).unwrap();
        assert_eq!(table.start(), range.start);
        assert_eq!(table.len(), range.len());
        let walked: Vec<_> = table.entries().map(Result::unwrap).collect();
        // Walk order is the reverse of the order written.
        let written: Vec<_> = entries.iter().rev().copied().collect();
        assert_eq!(walked.len(), written.len());
        for (e, (guid, data)) in walked.iter().zip(written) {
            assert_eq!(e.guid, guid);
            assert_eq!(e.data, data);
            assert_eq!(&image[e.offset..e.offset + e.data.len()], data);
        }
        // The first added is walked last, and `find` returns the walk's first.
        assert_eq!(walked.last().unwrap().guid, MIRROR_HELPER_DESCRIPTOR);
        assert!(table
            .find(SEV_SECRET_BLOCK)
            .unwrap()
            .unwrap()
            .data
            .is_empty());
    }

    #[test]
    fn empty_table_round_trip() {
        let mut image = [0u8; 50];
        let range = place_in_image(&mut image, &[]).unwrap();
        assert_eq!(range, 0..18);
        let t = Table::parse(&image).unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn does_not_fit() {
        let mut image = [0u8; 60];
        assert_eq!(
            place_in_image(&mut image, &[(SEV_SECRET_BLOCK, &[0; 8])]),
            Err(TableError::NoRoom {
                needed: 26 + 18 + 32,
                available: 60
            })
        );
        assert!(image.iter().all(|&b| b == 0));

        let mut buf = [0u8; 30];
        let mut b = TableBuilder::new(&mut buf);
        assert_eq!(
            b.add(SEV_SECRET_BLOCK, &[0; 20]).err(),
            Some(TableError::NoRoom {
                needed: 38,
                available: 30
            })
        );
        b.add(SEV_SECRET_BLOCK, &[0; 8]).unwrap();
        assert_eq!(
            b.finish(),
            Err(TableError::NoRoom {
                needed: 18,
                available: 4
            })
        );
    }

    #[test]
    fn too_long_for_u16() {
        let big = vec![0u8; 65_535 - 17];
        assert_eq!(
            TableBuilder::table_len(&[(SEV_SECRET_BLOCK, &big)]),
            Err(TableError::EntryTooLong { len: big.len() })
        );
        let half = vec![0u8; 40_000];
        assert_eq!(
            TableBuilder::table_len(&[(SEV_SECRET_BLOCK, &half), (SEV_SECRET_BLOCK, &half)]),
            Err(TableError::TableTooLong {
                len: 2 * (40_000 + 18) + 18
            })
        );
        let mut buf = vec![0u8; 100_000];
        let mut b = TableBuilder::new(&mut buf);
        b.add(SEV_SECRET_BLOCK, &half).unwrap();
        assert!(matches!(
            b.add(SEV_SECRET_BLOCK, &half),
            Err(TableError::TableTooLong { .. })
        ));
        // The largest table that fits the u16 still parses.
        let max = vec![0u8; 65_535 - 36];
        let mut image = vec![0u8; 70_000];
        let range = place_in_image(&mut image, &[(SEV_HASH_TABLE, &max)]).unwrap();
        assert_eq!(range.len(), 65_535);
        let t = Table::parse(&image).unwrap();
        assert_eq!(t.validate(), Ok(1));
    }
}
