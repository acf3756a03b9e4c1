//! Parsing the footer table of an image.
//!
//! Layout (edk2 `OvmfPkg/ResetVector/Ia16/ResetVectorVtf0.nasm.inc`, QEMU
//! `hw/i386/pc_sysfw_ovmf.c`), offsets counted back from the image end `E`:
//!
//! ```text
//!   E - 32 - total            table start
//!   ...                       entry N   (walked last)
//!   ...                       entry 1   (walked first)
//!   E - 50 .. E - 48          u16 LE total  (includes these 2 bytes and the GUID)
//!   E - 48 .. E - 32          footer GUID 96b582de-1fb2-45f7-baea-a366c55a082d
//!   E - 32 .. E               AP entry, VTF signature, reset vector
//!
//!   entry = data ‖ u16 LE len ‖ GUID      (len = data + 2 + 16)
//! ```

use core::iter::FusedIterator;

use crate::guid::{self, Guid};
use crate::TableError;

/// Bytes after the table: the footer GUID ends this far before the image end.
pub const BYTES_AFTER_TABLE: usize = 32;
/// Size of an entry's `u16` length plus its GUID, and of the footer.
pub const ENTRY_OVERHEAD: usize = 2 + Guid::SIZE;
/// Smallest image that can hold a footer.
pub const MIN_IMAGE_LEN: usize = BYTES_AFTER_TABLE + ENTRY_OVERHEAD;

/// `len` bytes at `offset`, or `Truncated`.
pub(crate) fn bytes_at(image: &[u8], offset: usize, len: usize) -> Result<&[u8], TableError> {
    offset
        .checked_add(len)
        .and_then(|end| image.get(offset..end))
        .ok_or(TableError::Truncated { offset, len })
}

/// `N` bytes at `offset` as an array, or `Truncated`.
pub(crate) fn array_at<const N: usize>(image: &[u8], offset: usize) -> Result<[u8; N], TableError> {
    let mut out = [0u8; N];
    out.copy_from_slice(bytes_at(image, offset, N)?);
    Ok(out)
}

pub(crate) fn u16_at(image: &[u8], offset: usize) -> Result<u16, TableError> {
    array_at(image, offset).map(u16::from_le_bytes)
}

/// A validated footer of an image; its entries are checked as they are walked.
#[derive(Debug, Clone, Copy)]
pub struct Table<'a> {
    image: &'a [u8],
    /// Offset of the first byte of the table (the farthest entry's data).
    start: usize,
    /// Offset of the footer's `u16` length: the walk starts here.
    entries_end: usize,
}

/// One entry of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The entry's GUID.
    pub guid: Guid,
    /// The entry's data (without its length and GUID).
    pub data: &'a [u8],
    /// Offset of `data` within the image.
    pub offset: usize,
}

impl Entry<'_> {
    /// Name of the entry's GUID, if known.
    pub fn name(&self) -> Option<&'static str> {
        guid::known_name(&self.guid)
    }
}

impl<'a> Table<'a> {
    /// Finds and checks the footer of `image` (the whole firmware file, or
    /// any tail of it that ends where the file ends).
    ///
    /// Only the footer is checked here; the entries are checked by
    /// [`Table::entries`], which reports the first broken one.
    pub fn parse(image: &'a [u8]) -> Result<Table<'a>, TableError> {
        let image_len = image.len();
        if image_len == 0 {
            return Err(TableError::ImageEmpty);
        }
        // `image_len >= MIN_IMAGE_LEN` makes every subtraction below safe.
        let Some(table_end) = image_len
            .checked_sub(BYTES_AFTER_TABLE)
            .filter(|_| image_len >= MIN_IMAGE_LEN)
        else {
            return Err(TableError::ImageTooSmall {
                len: image_len,
                min: MIN_IMAGE_LEN,
            });
        };
        let guid_offset = table_end - Guid::SIZE;
        let found = Guid::from_bytes(array_at(image, guid_offset)?);
        if found != guid::FOOTER {
            return Err(TableError::NoFooter {
                offset: guid_offset,
            });
        }
        let len_offset = guid_offset - 2;
        let total = u16_at(image, len_offset)?;
        if usize::from(total) < ENTRY_OVERHEAD {
            return Err(TableError::TableLengthTooSmall {
                offset: len_offset,
                len: total,
            });
        }
        let Some(start) = table_end.checked_sub(usize::from(total)) else {
            return Err(TableError::TableOutsideImage {
                offset: len_offset,
                len: total,
            });
        };
        Ok(Table {
            image,
            start,
            entries_end: len_offset,
        })
    }

    /// The image the table was parsed from.
    pub fn image(&self) -> &'a [u8] {
        self.image
    }

    /// Offset of the first byte of the table.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Total table length as stored in the footer (entries + 18).
    pub fn len(&self) -> usize {
        self.entries_end + ENTRY_OVERHEAD - self.start
    }

    /// `true` if the table has no entries (only the footer).
    pub fn is_empty(&self) -> bool {
        self.entries_end == self.start
    }

    /// Walks the entries from the footer backwards (the order QEMU and OVMF
    /// use: the entry written last in the file comes first).
    ///
    /// Yields `Err` once for the first broken entry and then stops. Each step
    /// moves back by at least 18 bytes, so the walk ends after at most
    /// `len() / 18` items.
    pub fn entries(&self) -> Entries<'a> {
        Entries {
            image: self.image,
            start: self.start,
            cursor: self.entries_end,
            done: false,
        }
    }

    /// The first entry (in walk order) with `guid`. Fails if a broken entry
    /// comes before it.
    pub fn find(&self, guid: Guid) -> Result<Option<Entry<'a>>, TableError> {
        for entry in self.entries() {
            let entry = entry?;
            if entry.guid == guid {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Walks all entries and returns how many there are, or the first error.
    pub fn validate(&self) -> Result<usize, TableError> {
        let mut count = 0;
        for entry in self.entries() {
            entry?;
            count += 1;
        }
        Ok(count)
    }
}

/// Iterator over the entries of a [`Table`], from the footer backwards.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    image: &'a [u8],
    start: usize,
    /// End of the next entry (one past its GUID).
    cursor: usize,
    done: bool,
}

impl<'a> Entries<'a> {
    fn step(&mut self) -> Result<Entry<'a>, TableError> {
        // Invariant: start <= cursor <= image.len(), cursor - start >= 18.
        let len_offset = self.cursor - ENTRY_OVERHEAD;
        let guid_offset = len_offset + 2;
        let len = u16_at(self.image, len_offset)?;
        let entry_len = usize::from(len);
        if entry_len < ENTRY_OVERHEAD {
            return Err(TableError::EntryTooShort {
                offset: len_offset,
                len,
            });
        }
        if entry_len > self.cursor - self.start {
            return Err(TableError::EntryOverlapsTableStart {
                offset: len_offset,
                len,
                table_start: self.start,
            });
        }
        let guid = Guid::from_bytes(array_at(self.image, guid_offset)?);
        let data_offset = self.cursor - entry_len;
        let data = bytes_at(self.image, data_offset, entry_len - ENTRY_OVERHEAD)?;
        self.cursor = data_offset;
        Ok(Entry {
            guid,
            data,
            offset: data_offset,
        })
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, TableError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let remaining = self.cursor.saturating_sub(self.start);
        if remaining == 0 {
            self.done = true;
            return None;
        }
        if remaining < ENTRY_OVERHEAD {
            self.done = true;
            return Some(Err(TableError::TableLeftover {
                offset: self.start,
                len: remaining,
            }));
        }
        let result = self.step();
        if result.is_err() {
            self.done = true;
        }
        Some(result)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.done {
            return (0, Some(0));
        }
        let remaining = self.cursor.saturating_sub(self.start);
        // One item per 18 bytes at most, plus one error item.
        (0, Some(remaining / ENTRY_OVERHEAD + 1))
    }
}

impl FusedIterator for Entries<'_> {}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::guid::{SEV_ES_RESET_BLOCK, SEV_SECRET_BLOCK};

    /// Image of `size` zero bytes with `table` (entries only) and a footer
    /// whose length field is `total` placed before the last 32 bytes.
    fn image_with(size: usize, entries: &[u8], total: u16) -> Vec<u8> {
        let mut img = vec![0u8; size];
        let table_end = size - 32;
        let footer = table_end - 18;
        img[footer..footer + 2].copy_from_slice(&total.to_le_bytes());
        img[footer + 2..table_end].copy_from_slice(guid::FOOTER.as_bytes());
        img[footer - entries.len()..footer].copy_from_slice(entries);
        img
    }

    fn entry(guid: Guid, data: &[u8], len: u16) -> Vec<u8> {
        let mut v = data.to_vec();
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(guid.as_bytes());
        v
    }

    #[test]
    fn empty_and_short_images() {
        assert_eq!(Table::parse(&[]).unwrap_err(), TableError::ImageEmpty);
        for len in [1, 31, 32, 47, 48, 49] {
            assert_eq!(
                Table::parse(&vec![0u8; len]).unwrap_err(),
                TableError::ImageTooSmall { len, min: 50 }
            );
        }
    }

    #[test]
    fn no_footer() {
        let img = vec![0u8; 4096];
        assert_eq!(
            Table::parse(&img).unwrap_err(),
            TableError::NoFooter { offset: 4096 - 48 }
        );
    }

    #[test]
    fn minimal_image_with_empty_table() {
        let img = image_with(50, &[], 18);
        let t = Table::parse(&img).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.len(), 18);
        assert_eq!(t.start(), 0);
        assert_eq!(t.entries().count(), 0);
        assert_eq!(t.validate(), Ok(0));
        assert_eq!(t.find(SEV_SECRET_BLOCK), Ok(None));
    }

    #[test]
    fn footer_length_zero_and_too_small() {
        for total in [0u16, 1, 17] {
            let img = image_with(4096, &[], total);
            assert_eq!(
                Table::parse(&img).unwrap_err(),
                TableError::TableLengthTooSmall {
                    offset: 4096 - 50,
                    len: total
                }
            );
        }
    }

    #[test]
    fn footer_length_outside_file() {
        let img = image_with(100, &[], 69);
        assert_eq!(
            Table::parse(&img).unwrap_err(),
            TableError::TableOutsideImage {
                offset: 50,
                len: 69
            }
        );
        // Exactly reaching offset 0 is fine.
        let img = image_with(100, &[], 68);
        let t = Table::parse(&img).unwrap();
        assert_eq!(t.start(), 0);
        // 50 bytes of zeros: length field 0 at the first entry.
        assert_eq!(
            t.entries().next(),
            Some(Err(TableError::EntryTooShort { offset: 32, len: 0 }))
        );
        let img = image_with(100, &[], u16::MAX);
        assert!(matches!(
            Table::parse(&img),
            Err(TableError::TableOutsideImage { .. })
        ));
    }

    #[test]
    fn walks_entries_backwards() {
        let mut entries = entry(SEV_SECRET_BLOCK, &[1, 2, 3, 4, 5, 6, 7, 8], 26);
        entries.extend(entry(SEV_ES_RESET_BLOCK, &[4, 0xb0, 0x80, 0], 22));
        let img = image_with(256, &entries, 18 + 26 + 22);
        let t = Table::parse(&img).unwrap();
        let got: Vec<_> = t.entries().map(Result::unwrap).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].guid, SEV_ES_RESET_BLOCK);
        assert_eq!(got[0].data, &[4, 0xb0, 0x80, 0]);
        assert_eq!(got[0].offset, 256 - 50 - 22);
        assert_eq!(got[0].name(), Some("SEV-ES reset block"));
        assert_eq!(got[1].guid, SEV_SECRET_BLOCK);
        assert_eq!(got[1].data, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(got[1].offset, 256 - 50 - 22 - 26);
        assert_eq!(t.find(SEV_SECRET_BLOCK), Ok(Some(got[1])));
        assert_eq!(t.validate(), Ok(2));
    }

    #[test]
    fn entry_with_empty_data() {
        let e = entry(SEV_SECRET_BLOCK, &[], 18);
        let img = image_with(128, &e, 36);
        let t = Table::parse(&img).unwrap();
        let only = t.entries().next().unwrap().unwrap();
        assert!(only.data.is_empty());
        assert_eq!(t.validate(), Ok(1));
    }

    #[test]
    fn entry_length_too_short() {
        for len in [0u16, 1, 17] {
            let e = entry(SEV_SECRET_BLOCK, &[0; 8], len);
            let img = image_with(256, &e, 18 + 26);
            let t = Table::parse(&img).unwrap();
            let mut it = t.entries();
            assert_eq!(
                it.next(),
                Some(Err(TableError::EntryTooShort {
                    offset: 256 - 50 - 18,
                    len
                }))
            );
            assert_eq!(it.next(), None);
            assert_eq!(it.next(), None);
        }
    }

    #[test]
    fn entry_overlapping_table_start() {
        // The entry claims 27 bytes but the table only holds 26 of entries.
        let e = entry(SEV_SECRET_BLOCK, &[0; 8], 27);
        let img = image_with(256, &e, 18 + 26);
        let t = Table::parse(&img).unwrap();
        assert_eq!(
            t.entries().next(),
            Some(Err(TableError::EntryOverlapsTableStart {
                offset: 256 - 50 - 18,
                len: 27,
                table_start: 256 - 32 - 44
            }))
        );
        assert_eq!(
            t.find(SEV_ES_RESET_BLOCK),
            Err(TableError::EntryOverlapsTableStart {
                offset: 256 - 50 - 18,
                len: 27,
                table_start: 256 - 32 - 44
            })
        );
    }

    #[test]
    fn stray_bytes_at_table_start() {
        let mut entries = vec![0xaa; 5];
        entries.extend(entry(SEV_ES_RESET_BLOCK, &[0; 4], 22));
        let img = image_with(256, &entries, 18 + 22 + 5);
        let t = Table::parse(&img).unwrap();
        let mut it = t.entries();
        assert!(it.next().unwrap().is_ok());
        assert_eq!(
            it.next(),
            Some(Err(TableError::TableLeftover {
                offset: 256 - 32 - 45,
                len: 5
            }))
        );
        assert_eq!(it.next(), None);
        assert_eq!(
            t.validate(),
            Err(TableError::TableLeftover {
                offset: 256 - 32 - 45,
                len: 5
            })
        );
    }

    /// A chain of minimal (18-byte) entries: the longest walk possible. It
    /// terminates after exactly total/18 steps, which is the bound the
    /// iterator documents; there is no length that keeps the cursor still.
    #[test]
    fn longest_chain_terminates_within_bound() {
        let n = 3000;
        let mut entries = Vec::new();
        for _ in 0..n {
            entries.extend(entry(SEV_SECRET_BLOCK, &[], 18));
        }
        let total = u16::try_from(18 * (n + 1)).unwrap();
        let img = image_with(entries.len() + 50, &entries, total);
        let t = Table::parse(&img).unwrap();
        let it = t.entries();
        assert_eq!(it.size_hint().1, Some(n + 1));
        assert_eq!(t.entries().count(), n);
        assert!(t.entries().all(|e| e.is_ok()));
    }

    /// Every possible entry length at the first position: the walk always
    /// ends, within the documented bound.
    #[test]
    fn every_entry_length_terminates() {
        let mut img = image_with(2048, &[], 1024);
        let len_offset = 2048 - 50 - 18;
        for len in 0..=u16::MAX {
            img[len_offset..len_offset + 2].copy_from_slice(&len.to_le_bytes());
            let t = Table::parse(&img).unwrap();
            let bound = t.entries().size_hint().1.unwrap();
            let mut steps = 0;
            for _ in t.entries() {
                steps += 1;
                assert!(steps <= bound);
            }
        }
    }
}
