//! The SEV hashes table of measured direct boot, byte for byte as QEMU writes it and OVMF
//! reads it.
//!
//! When a guest under SEV is started with `-kernel/-initrd/-append`, QEMU hashes the three
//! blobs it passes through fw_cfg, writes this table into the guest page the firmware's
//! footer entry `7255371f-3a3b-4b04-927b-1da6efa8d454` names, and measures the table with
//! LAUNCH_UPDATE_DATA right after the flash image (QEMU `target/i386/sev.c`
//! `sev_add_kernel_loader_hashes`, `docs/system/i386/amd-memory-encryption.rst`: the launch
//! digest is `SHA256(firmware ‖ PaddedSevHashTable ‖ VMSAs)`). The firmware hashes what
//! fw_cfg delivered and refuses to boot on any difference (edk2
//! `OvmfPkg/Library/BlobVerifierLib/BlobVerifierSevHashes.c`).
//!
//! Layout (packed, little-endian; GUIDs in EFI byte order):
//!
//! ```text
//!   0x00  GUID 9438d606-4f22-4cc9-b479-a793d411fd21  (table)
//!   0x10  u16  168                                     (table length, padding excluded)
//!   0x12  GUID 97d02dd8-bd20-4c94-aa78-e7714d36ab2a  u16 50  SHA-256(cmdline ‖ NUL)
//!   0x44  GUID 44baf731-3a2f-4bd7-9af1-41e29169781d  u16 50  SHA-256(initrd)   (empty: of "")
//!   0x76  GUID 4de79437-abd2-427f-b835-d5b172d2045b  u16 50  SHA-256(setup ‖ kernel)
//!   0xa8  8 zero bytes: padding to a multiple of 16 (LAUNCH_UPDATE_DATA's granule)
//! ```
//!
//! The kernel hash covers the whole bzImage file: QEMU hashes the setup sectors and the
//! protected-mode kernel it passes as two fw_cfg items, both unmodified under SEV.

use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// A GUID in EFI byte order.
type RawGuid = [u8; 16];

/// EFI byte order of a GUID given as its five text fields.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> RawGuid {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// The table's GUID, 9438d606-4f22-4cc9-b479-a793d411fd21 (QEMU `sev_hash_table_header_guid`,
/// edk2 `SEV_HASH_TABLE_GUID`).
pub const TABLE_GUID: RawGuid = guid(
    0x9438_d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
/// The kernel entry's GUID, 4de79437-abd2-427f-b835-d5b172d2045b.
pub const KERNEL_GUID: RawGuid = guid(
    0x4de7_9437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);
/// The initrd entry's GUID, 44baf731-3a2f-4bd7-9af1-41e29169781d.
pub const INITRD_GUID: RawGuid = guid(
    0x44ba_f731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
/// The command line entry's GUID, 97d02dd8-bd20-4c94-aa78-e7714d36ab2a.
pub const CMDLINE_GUID: RawGuid = guid(
    0x97d0_2dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);

/// GUID + `u16` length.
const HEADER_SIZE: usize = 16 + 2;
/// One entry: GUID, `u16` length, SHA-256.
pub const ENTRY_SIZE: usize = HEADER_SIZE + 32;
/// The table without padding (its own length field).
pub const TABLE_SIZE: usize = HEADER_SIZE + 3 * ENTRY_SIZE;
/// The table as measured: padded with zeros to a multiple of 16.
pub const PADDED_SIZE: usize = (TABLE_SIZE + 15) & !15;

const _: () = assert!(TABLE_SIZE == 168 && PADDED_SIZE == 176);

/// Most entries a parsed table may hold (QEMU writes 3; unknown GUIDs are skipped).
const MAX_ENTRIES: usize = 16;

/// One of the blobs the table vouches for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blob {
    /// The kernel file (setup ‖ protected-mode kernel).
    Kernel,
    /// The initrd (possibly empty).
    Initrd,
    /// The command line including its terminating NUL.
    Cmdline,
}

impl Blob {
    /// Every blob, in the table's order.
    pub const ALL: [Blob; 3] = [Blob::Cmdline, Blob::Initrd, Blob::Kernel];

    /// The entry's GUID.
    pub const fn guid(self) -> RawGuid {
        match self {
            Blob::Kernel => KERNEL_GUID,
            Blob::Initrd => INITRD_GUID,
            Blob::Cmdline => CMDLINE_GUID,
        }
    }

    /// Lower-case name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Blob::Kernel => "kernel",
            Blob::Initrd => "initrd",
            Blob::Cmdline => "command line",
        }
    }
}

impl core::fmt::Display for Blob {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// SHA-256 of a command line as QEMU hashes it: the text and its terminating NUL.
pub fn cmdline_hash(text: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(text);
    h.update([0u8]);
    h.finalize().into()
}

/// A streaming SHA-256, for blobs read from fw_cfg piece by piece.
#[derive(Clone, Debug, Default)]
pub struct BlobHasher(Sha256);

impl BlobHasher {
    /// An empty hash.
    pub fn new() -> BlobHasher {
        BlobHasher(Sha256::new())
    }

    /// Adds bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest.
    pub fn finish(self) -> Hash {
        self.0.finalize().into()
    }
}

/// The three hashes the table carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SevHashes {
    /// SHA-256 of the kernel file.
    pub kernel: Hash,
    /// SHA-256 of the initrd (of nothing when there is none).
    pub initrd: Hash,
    /// SHA-256 of the command line and its NUL.
    pub cmdline: Hash,
}

impl SevHashes {
    /// The hashes QEMU computes for `-kernel kernel -initrd initrd -append cmdline`: no
    /// initrd is the empty one, no `-append` the empty command line (`cmdline` is the text
    /// without a terminator).
    pub fn of(kernel: &[u8], initrd: &[u8], cmdline: &[u8]) -> SevHashes {
        SevHashes {
            kernel: sha256(kernel),
            initrd: sha256(initrd),
            cmdline: cmdline_hash(cmdline),
        }
    }

    /// The hash for `blob`.
    pub fn get(&self, blob: Blob) -> &Hash {
        match blob {
            Blob::Kernel => &self.kernel,
            Blob::Initrd => &self.initrd,
            Blob::Cmdline => &self.cmdline,
        }
    }

    /// The padded table, as the VMM writes it into the hashes page and measures it.
    pub fn table(&self) -> [u8; PADDED_SIZE] {
        let mut t = [0u8; PADDED_SIZE];
        let mut w = Writer { buf: &mut t, at: 0 };
        w.put(&TABLE_GUID);
        w.put(&(TABLE_SIZE as u16).to_le_bytes());
        for blob in Blob::ALL {
            w.put(&blob.guid());
            w.put(&(ENTRY_SIZE as u16).to_le_bytes());
            w.put(self.get(blob));
        }
        t
    }
}

/// Appends into a fixed buffer whose size the caller has checked (the table's layout
/// constants add up to `PADDED_SIZE`, asserted above).
struct Writer<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, data: &[u8]) {
        let end = self.at + data.len();
        if let Some(dst) = self.buf.get_mut(self.at..end) {
            dst.copy_from_slice(data);
        }
        self.at = end;
    }
}

/// Why a table was refused or a blob did not verify.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HashTableError {
    /// The area is shorter than the table's header.
    #[error("SEV hashes area of {len} bytes is too short for a table")]
    TooShort {
        /// Area length.
        len: usize,
    },
    /// No table GUID at the start of the area (QEMU wrote no table: no `-kernel`).
    #[error("no SEV hashes table in the hashes page (was the guest launched without --kernel?)")]
    NoTable,
    /// The table's length field is smaller than its header or larger than the area.
    #[error("SEV hashes table length {len} is invalid for an area of {area} bytes")]
    BadLength {
        /// The length field.
        len: u16,
        /// Area length.
        area: usize,
    },
    /// An entry's length is smaller than its header or runs past the table.
    #[error("SEV hashes table entry at offset {offset:#x} has invalid length {len}")]
    BadEntry {
        /// Offset of the entry in the area.
        offset: usize,
        /// Its length field.
        len: u16,
    },
    /// More entries than this parser keeps.
    #[error("SEV hashes table has too many entries")]
    TooManyEntries,
    /// The same blob's GUID appears twice.
    #[error("SEV hashes table lists the {0} twice")]
    Duplicate(Blob),
    /// No entry for a blob.
    #[error("SEV hashes table has no {0} entry")]
    Missing(Blob),
    /// The entry for a blob is not a SHA-256.
    #[error("SEV hashes table's {blob} entry holds {len} bytes, not a SHA-256")]
    WrongHashSize {
        /// Which blob.
        blob: Blob,
        /// Bytes of hash in the entry.
        len: usize,
    },
    /// The blob's hash differs from the measured one.
    #[error("the {0} does not match the measured SEV hashes table: refusing to boot it")]
    Mismatch(Blob),
}

/// A parsed table borrowed from a copy of the hashes page.
#[derive(Clone, Copy, Debug)]
pub struct HashTable<'a> {
    entries: [(RawGuid, &'a [u8]); MAX_ENTRIES],
    len: usize,
}

impl<'a> HashTable<'a> {
    /// Parses the table at the start of `area` (a private copy of the hashes page).
    ///
    /// Stricter than OVMF, which stops at a malformed entry (and loops forever on a
    /// zero-length one): every entry must be well formed, and a blob's GUID must not
    /// repeat.
    pub fn parse(area: &'a [u8]) -> Result<HashTable<'a>, HashTableError> {
        let header = area
            .get(..HEADER_SIZE)
            .ok_or(HashTableError::TooShort { len: area.len() })?;
        let (guid, len) = header.split_at(16);
        if guid != TABLE_GUID {
            return Err(HashTableError::NoTable);
        }
        let len = u16::from_le_bytes([
            len.first().copied().unwrap_or(0),
            len.get(1).copied().unwrap_or(0),
        ]);
        let body = area
            .get(HEADER_SIZE..usize::from(len))
            .ok_or(HashTableError::BadLength {
                len,
                area: area.len(),
            })?;
        let mut table = HashTable {
            entries: [([0; 16], &[][..]); MAX_ENTRIES],
            len: 0,
        };
        let mut rest = body;
        let mut offset = HEADER_SIZE;
        while !rest.is_empty() {
            let entry_len = rest
                .get(16..18)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .ok_or(HashTableError::BadEntry { offset, len: 0 })?;
            let bad = HashTableError::BadEntry {
                offset,
                len: entry_len,
            };
            let n = usize::from(entry_len);
            if n < HEADER_SIZE {
                return Err(bad);
            }
            let entry = rest.get(..n).ok_or(bad)?;
            let mut g = [0u8; 16];
            g.copy_from_slice(entry.get(..16).ok_or(bad)?);
            let data = entry.get(HEADER_SIZE..).ok_or(bad)?;
            if let Some(blob) = Blob::ALL.into_iter().find(|b| b.guid() == g) {
                if table.find(blob).is_some() {
                    return Err(HashTableError::Duplicate(blob));
                }
            }
            let slot = table
                .entries
                .get_mut(table.len)
                .ok_or(HashTableError::TooManyEntries)?;
            *slot = (g, data);
            table.len += 1;
            rest = rest.get(n..).unwrap_or(&[]);
            offset += n;
        }
        Ok(table)
    }

    fn find(&self, blob: Blob) -> Option<&'a [u8]> {
        self.entries
            .get(..self.len)?
            .iter()
            .find(|(g, _)| *g == blob.guid())
            .map(|&(_, data)| data)
    }

    /// The measured hash of `blob`.
    pub fn expected(&self, blob: Blob) -> Result<Hash, HashTableError> {
        let data = self.find(blob).ok_or(HashTableError::Missing(blob))?;
        <Hash>::try_from(data).map_err(|_| HashTableError::WrongHashSize {
            blob,
            len: data.len(),
        })
    }

    /// Checks a blob's hash against the table.
    pub fn verify_hash(&self, blob: Blob, hash: &Hash) -> Result<(), HashTableError> {
        if self.expected(blob)? == *hash {
            Ok(())
        } else {
            Err(HashTableError::Mismatch(blob))
        }
    }

    /// Checks a blob as fw_cfg delivered it (for the command line: with its NUL, as
    /// QEMU's `FW_CFG_CMDLINE_DATA` carries it).
    pub fn verify(&self, blob: Blob, data: &[u8]) -> Result<(), HashTableError> {
        self.verify_hash(blob, &sha256(data))
    }

    /// Checks all three against `hashes`, naming the first that differs (kernel first).
    pub fn verify_all(&self, hashes: &SevHashes) -> Result<(), HashTableError> {
        for blob in [Blob::Kernel, Blob::Initrd, Blob::Cmdline] {
            self.verify_hash(blob, hashes.get(blob))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> std::vec::Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn guids_have_efi_byte_order() {
        // Python: uuid.UUID("9438d606-4f22-4cc9-b479-a793d411fd21").bytes_le
        assert_eq!(TABLE_GUID.to_vec(), hex("06d63894224fc94cb479a793d411fd21"));
        assert_eq!(
            KERNEL_GUID.to_vec(),
            hex("3794e74dd2ab7f42b835d5b172d2045b")
        );
        assert_eq!(
            INITRD_GUID.to_vec(),
            hex("31f7ba442f3ad74b9af141e29169781d")
        );
        assert_eq!(
            CMDLINE_GUID.to_vec(),
            hex("d82dd09720bd944caa78e7714d36ab2a")
        );
    }

    #[test]
    fn table_layout_matches_qemu() {
        let h = SevHashes::of(b"kernel", b"", b"console=ttyS0");
        let t = h.table();
        assert_eq!(&t[..16], &TABLE_GUID);
        assert_eq!(&t[16..18], &168u16.to_le_bytes());
        assert_eq!(&t[0x12..0x22], &CMDLINE_GUID);
        assert_eq!(&t[0x22..0x24], &50u16.to_le_bytes());
        assert_eq!(&t[0x24..0x44], &cmdline_hash(b"console=ttyS0"));
        assert_eq!(&t[0x44..0x54], &INITRD_GUID);
        // SHA-256("") is the empty initrd's hash.
        assert_eq!(
            t[0x56..0x76].to_vec(),
            hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(&t[0x76..0x86], &KERNEL_GUID);
        assert_eq!(&t[0x88..0xa8], &sha256(b"kernel"));
        assert_eq!(&t[0xa8..], &[0u8; 8]);
        // The command line is hashed with its NUL; no -append is "\0".
        assert_eq!(cmdline_hash(b"ab"), sha256(b"ab\0"));
        assert_eq!(SevHashes::of(b"k", b"", b"").cmdline, sha256(b"\0"));
    }

    #[test]
    fn the_built_table_verifies_its_blobs_and_names_a_mismatch() {
        let h = SevHashes::of(b"the kernel", b"the initrd", b"quiet");
        let mut page = [0u8; 4096];
        page[..PADDED_SIZE].copy_from_slice(&h.table());
        let t = HashTable::parse(&page).unwrap();
        t.verify(Blob::Kernel, b"the kernel").unwrap();
        t.verify(Blob::Initrd, b"the initrd").unwrap();
        t.verify(Blob::Cmdline, b"quiet\0").unwrap();
        t.verify_all(&h).unwrap();
        assert_eq!(
            t.verify(Blob::Kernel, b"the kerneL"),
            Err(HashTableError::Mismatch(Blob::Kernel))
        );
        assert_eq!(
            t.verify(Blob::Cmdline, b"quiet"),
            Err(HashTableError::Mismatch(Blob::Cmdline))
        );
        let other = SevHashes::of(b"the kernel", b"another initrd", b"quiet");
        assert_eq!(
            t.verify_all(&other),
            Err(HashTableError::Mismatch(Blob::Initrd))
        );
        assert_eq!(
            std::format!("{}", HashTableError::Mismatch(Blob::Initrd)),
            "the initrd does not match the measured SEV hashes table: refusing to boot it"
        );
    }

    #[test]
    fn malformed_tables_are_refused_without_looping() {
        let good = SevHashes::of(b"k", b"i", b"c").table();
        assert_eq!(
            HashTable::parse(&good[..10]).unwrap_err(),
            HashTableError::TooShort { len: 10 }
        );
        assert_eq!(
            HashTable::parse(&[0u8; 4096]).unwrap_err(),
            HashTableError::NoTable
        );
        // Length past the area.
        assert!(matches!(
            HashTable::parse(&good[..100]).unwrap_err(),
            HashTableError::BadLength {
                len: 168,
                area: 100
            }
        ));
        // Length smaller than the header.
        let mut t = good;
        t[16] = 5;
        assert!(matches!(
            HashTable::parse(&t).unwrap_err(),
            HashTableError::BadLength { len: 5, .. }
        ));
        // A zero-length entry (OVMF's walk would spin on it).
        let mut t = good;
        t[0x22] = 0;
        assert_eq!(
            HashTable::parse(&t).unwrap_err(),
            HashTableError::BadEntry {
                offset: 0x12,
                len: 0
            }
        );
        // An entry running past the table.
        let mut t = good;
        t[0x88 - 2] = 60;
        assert_eq!(
            HashTable::parse(&t).unwrap_err(),
            HashTableError::BadEntry {
                offset: 0x76,
                len: 60
            }
        );
        // A duplicate GUID.
        let mut t = good;
        t[0x44..0x54].copy_from_slice(&CMDLINE_GUID);
        assert_eq!(
            HashTable::parse(&t).unwrap_err(),
            HashTableError::Duplicate(Blob::Cmdline)
        );
    }

    #[test]
    fn missing_and_short_entries_are_named() {
        let good = SevHashes::of(b"k", b"i", b"c").table();
        // Unknown GUID in the kernel's place: skipped, then the kernel is missing.
        let mut t = good;
        t[0x76] ^= 0xff;
        let parsed = HashTable::parse(&t).unwrap();
        assert_eq!(
            parsed.verify(Blob::Kernel, b"k"),
            Err(HashTableError::Missing(Blob::Kernel))
        );
        parsed.verify(Blob::Initrd, b"i").unwrap();
        // A table whose kernel entry holds 20 bytes.
        let mut t = [0u8; 256];
        t[..16].copy_from_slice(&TABLE_GUID);
        t[16..18].copy_from_slice(&(18u16 + 38).to_le_bytes());
        t[18..34].copy_from_slice(&KERNEL_GUID);
        t[34..36].copy_from_slice(&38u16.to_le_bytes());
        let parsed = HashTable::parse(&t).unwrap();
        assert_eq!(
            parsed.expected(Blob::Kernel),
            Err(HashTableError::WrongHashSize {
                blob: Blob::Kernel,
                len: 20
            })
        );
    }
}
