//! Sealed records: what the source helper writes into a window and the target helper
//! reads back, with the host (two of them) carrying the bytes in between.
//!
//! A record is a 32-byte header, a payload and a 16-byte tag. The header is always
//! authenticated. Page, zero, manifest and commit records are AES-256-GCM: the payload is
//! encrypted, the header and session id are the AAD, the nonce is the lane id and the
//! lane's sequence number. Blob records (the shared-page list, device and vCPU state) are
//! authenticated, not encrypted — their contents are the host's to know — with a
//! truncated HMAC-SHA256 over the header and payload under a key of their own.
//!
//! Every record of a session takes the next sequence number of its lane, so the target
//! sees a gap or a replay at once, and the manifest lists each lane's last number so it
//! also sees a withheld tail.
//!
//! ```text
//!  0      1      2        4        8              16        20      24        32
//!  | kind | lane | flags  | round  | gpa or index | version | len   |  seq    | payload | tag |
//! ```

use crate::{le32, le64, put32, put64, DIGEST_LEN, MAX_LANES, PAGE_SIZE};

/// Header size.
pub const HEADER_SIZE: usize = 32;
/// Tag size (AES-GCM tag, or HMAC-SHA256 truncated to 128 bits).
pub const TAG_SIZE: usize = 16;
/// Size of a page record.
pub const PAGE_RECORD_SIZE: usize = HEADER_SIZE + PAGE_SIZE + TAG_SIZE;
/// Size of a zero-page record (no payload: the page is all zero, still authenticated).
/// Only with the zero-record option (it tells the host which pages are zero).
pub const ZERO_RECORD_SIZE: usize = HEADER_SIZE + TAG_SIZE;
/// Manifest payload, see [`ManifestPayload`].
pub const MANIFEST_PAYLOAD_SIZE: usize = 8 + DIGEST_LEN + 8 + 8 * MAX_LANES;
/// Size of a manifest record.
pub const MANIFEST_RECORD_SIZE: usize = HEADER_SIZE + MANIFEST_PAYLOAD_SIZE + TAG_SIZE;
/// Commit payload: SHA-256 of the manifest payload it commits to.
pub const COMMIT_PAYLOAD_SIZE: usize = DIGEST_LEN;
/// Size of a commit record.
pub const COMMIT_RECORD_SIZE: usize = HEADER_SIZE + COMMIT_PAYLOAD_SIZE + TAG_SIZE;
/// Most bytes of a shared-list blob (one page).
pub const MAX_SHARED_LIST_LEN: usize = PAGE_SIZE;
/// Most bytes of a device-state blob.
pub const MAX_DEVICE_STATE_LEN: usize = 1 << 20;
/// Most bytes of a vCPU-state blob.
pub const MAX_VCPU_STATE_LEN: usize = 64 << 10;

/// What a record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind(pub u8);

impl Kind {
    /// A 4 KiB page, encrypted.
    pub const PAGE: Kind = Kind(1);
    /// A page that is all zero: no payload.
    pub const ZERO: Kind = Kind(2);
    /// The source's manifest: every page it sealed with its last version, the records of
    /// the session and each lane's last sequence number.
    pub const MANIFEST: Kind = Kind(3);
    /// Blob: the guest's shared-page list (helper `shared_list` format), authenticated.
    pub const SHARED_LIST: Kind = Kind(4);
    /// Blob: the VMM's device state, authenticated.
    pub const DEVICE_STATE: Kind = Kind(5);
    /// Blob: one vCPU's state (the header's index names the vCPU), authenticated.
    pub const VCPU_STATE: Kind = Kind(6);
    /// The source's commit: from now on the source guest never runs again unless the
    /// target (or the owner) aborts this session.
    pub const COMMIT: Kind = Kind(7);

    /// The smallest and largest payload of this kind, or None for an unknown kind.
    pub fn payload_bounds(self) -> Option<(usize, usize)> {
        let fixed = |n| Some((n, n));
        match self {
            Kind::PAGE => fixed(PAGE_SIZE),
            Kind::ZERO => fixed(0),
            Kind::MANIFEST => fixed(MANIFEST_PAYLOAD_SIZE),
            Kind::COMMIT => fixed(COMMIT_PAYLOAD_SIZE),
            Kind::SHARED_LIST => Some((0, MAX_SHARED_LIST_LEN)),
            Kind::DEVICE_STATE => Some((0, MAX_DEVICE_STATE_LEN)),
            Kind::VCPU_STATE => Some((0, MAX_VCPU_STATE_LEN)),
            _ => None,
        }
    }

    /// Whether the kind is an authenticated clear blob (SEAL_BLOB / OPEN_BLOB).
    pub fn is_blob(self) -> bool {
        matches!(
            self,
            Kind::SHARED_LIST | Kind::DEVICE_STATE | Kind::VCPU_STATE
        )
    }

    /// Whether the kind carries a page (EXPORT / IMPORT).
    pub fn is_page(self) -> bool {
        matches!(self, Kind::PAGE | Kind::ZERO)
    }
}

/// The manifest's payload (encrypted in its record).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ManifestPayload {
    /// Private pages the manifest covers.
    pub pages: u64,
    /// SHA-256 over the (GPA, last version) of every private page, ascending.
    pub pages_hash: [u8; DIGEST_LEN],
    /// Records the session sealed before this one (pages and blobs, all lanes).
    pub records: u64,
    /// Each lane id's last sequence number before the manifest (0: the lane sealed
    /// nothing).
    pub last_seq: [u64; MAX_LANES],
}

impl ManifestPayload {
    /// The payload bytes.
    pub fn encode(&self) -> [u8; MANIFEST_PAYLOAD_SIZE] {
        let mut b = [0u8; MANIFEST_PAYLOAD_SIZE];
        put64(&mut b, 0, self.pages);
        b[8..40].copy_from_slice(&self.pages_hash);
        put64(&mut b, 40, self.records);
        for (i, s) in self.last_seq.iter().enumerate() {
            put64(&mut b, 48 + 8 * i, *s);
        }
        b
    }

    /// Decodes the payload (any bytes of the right size decode).
    pub fn decode(b: &[u8; MANIFEST_PAYLOAD_SIZE]) -> ManifestPayload {
        let mut m = ManifestPayload {
            pages: le64(b, 0),
            records: le64(b, 40),
            ..ManifestPayload::default()
        };
        m.pages_hash.copy_from_slice(&b[8..40]);
        for (i, s) in m.last_seq.iter_mut().enumerate() {
            *s = le64(b, 48 + 8 * i);
        }
        m
    }
}

/// A record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// What follows.
    pub kind: Kind,
    /// The sealing helper vCPU's lane id (nonce prefix), below [`MAX_LANES`].
    pub lane: u8,
    /// Reserved, zero.
    pub flags: u16,
    /// Migration round the page was sealed in.
    pub round: u32,
    /// The page's guest-physical address; a blob's index (the vCPU of a vCPU state);
    /// 0 otherwise.
    pub gpa: u64,
    /// The page's version: how many times the source sealed this page (starting at 1);
    /// 0 for other kinds.
    pub version: u32,
    /// Payload length.
    pub len: u32,
    /// The lane's sequence number.
    pub seq: u64,
}

/// Why bytes in a window are not a well-formed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The window ends inside a record.
    Truncated,
    /// Unknown kind, a length that does not fit the kind, a lane id out of range, or
    /// reserved bits set.
    Malformed,
}

impl RecordHeader {
    /// Encodes the header (it is also the AAD).
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0] = self.kind.0;
        b[1] = self.lane;
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        put32(&mut b, 4, self.round);
        put64(&mut b, 8, self.gpa);
        put32(&mut b, 16, self.version);
        put32(&mut b, 20, self.len);
        put64(&mut b, 24, self.seq);
        b
    }

    /// Decodes and checks a header.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<RecordHeader, RecordError> {
        let h = RecordHeader {
            kind: Kind(b[0]),
            lane: b[1],
            flags: u16::from_le_bytes([b[2], b[3]]),
            round: le32(b, 4),
            gpa: le64(b, 8),
            version: le32(b, 16),
            len: le32(b, 20),
            seq: le64(b, 24),
        };
        match h.kind.payload_bounds() {
            Some((lo, hi))
                if (lo..=hi).contains(&(h.len as usize))
                    && h.flags == 0
                    && usize::from(h.lane) < MAX_LANES =>
            {
                Ok(h)
            }
            _ => Err(RecordError::Malformed),
        }
    }

    /// The record's total size.
    pub fn record_size(&self) -> usize {
        HEADER_SIZE + self.len as usize + TAG_SIZE
    }

    /// The 96-bit GCM nonce: lane (u32 LE) then sequence number (u64 LE).
    pub fn nonce(&self) -> [u8; 12] {
        let mut n = [0u8; 12];
        n[0..4].copy_from_slice(&u32::from(self.lane).to_le_bytes());
        n[4..12].copy_from_slice(&self.seq.to_le_bytes());
        n
    }
}

/// One record located in a window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Located {
    /// Its header.
    pub header: RecordHeader,
    /// Offset of the record in the window.
    pub offset: usize,
}

/// Walks the records in `window[..bytes]`: yields each header with its offset, or an
/// error (after which the walk stops). Never reads past `bytes` or the window.
pub fn walk(
    window: &[u8],
    bytes: usize,
) -> impl Iterator<Item = Result<Located, RecordError>> + '_ {
    let end = bytes.min(window.len());
    let window = &window[..end];
    let mut at = 0;
    let mut failed = false;
    core::iter::from_fn(move || {
        if failed || at >= end {
            return None;
        }
        let result = (|| {
            let raw: &[u8; HEADER_SIZE] = window
                .get(at..at + HEADER_SIZE)
                .and_then(|s| s.try_into().ok())
                .ok_or(RecordError::Truncated)?;
            let header = RecordHeader::decode(raw)?;
            if at + header.record_size() > end {
                return Err(RecordError::Truncated);
            }
            Ok(Located { header, offset: at })
        })();
        match &result {
            Ok(r) => at += r.header.record_size(),
            Err(_) => failed = true,
        }
        Some(result)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn header(kind: Kind, len: usize) -> RecordHeader {
        RecordHeader {
            kind,
            lane: 1,
            flags: 0,
            round: 2,
            gpa: 0x1000,
            version: 3,
            len: len as u32,
            seq: 4,
        }
    }

    #[test]
    fn headers_round_trip_and_nonces_are_lane_and_seq() {
        let h = header(Kind::PAGE, PAGE_SIZE);
        assert_eq!(RecordHeader::decode(&h.encode()), Ok(h));
        assert_eq!(h.nonce(), [1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(h.record_size(), PAGE_RECORD_SIZE);
    }

    #[test]
    fn bad_kinds_lengths_and_flags_are_malformed() {
        for h in [
            header(Kind(9), 0),
            header(Kind::PAGE, 100),
            header(Kind::ZERO, 1),
            header(Kind::VCPU_STATE, MAX_VCPU_STATE_LEN + 1),
            header(Kind::COMMIT, 31),
            RecordHeader {
                lane: MAX_LANES as u8,
                ..header(Kind::ZERO, 0)
            },
            RecordHeader {
                flags: 1,
                ..header(Kind::ZERO, 0)
            },
        ] {
            assert_eq!(
                RecordHeader::decode(&h.encode()),
                Err(RecordError::Malformed)
            );
        }
    }

    #[test]
    fn blobs_take_any_length_up_to_their_cap_and_manifests_round_trip() {
        for len in [0, 1, 4096] {
            let h = header(Kind::SHARED_LIST, len);
            assert_eq!(RecordHeader::decode(&h.encode()), Ok(h));
        }
        assert!(Kind::DEVICE_STATE.is_blob() && !Kind::PAGE.is_blob());
        let m = ManifestPayload {
            pages: 7,
            pages_hash: [3; 32],
            records: 99,
            last_seq: [1, 2, 3, 4, 5, 6, 7, 8],
        };
        assert_eq!(ManifestPayload::decode(&m.encode()), m);
        assert_eq!(MANIFEST_RECORD_SIZE, 32 + 112 + 16);
    }

    #[test]
    fn walk_finds_each_record_and_stops_at_truncation() {
        let mut w = [0u8; 2 * ZERO_RECORD_SIZE + PAGE_RECORD_SIZE];
        let z = header(Kind::ZERO, 0).encode();
        w[..HEADER_SIZE].copy_from_slice(&z);
        w[ZERO_RECORD_SIZE..ZERO_RECORD_SIZE + HEADER_SIZE]
            .copy_from_slice(&header(Kind::PAGE, PAGE_SIZE).encode());
        let second = ZERO_RECORD_SIZE + PAGE_RECORD_SIZE;
        w[second..second + HEADER_SIZE].copy_from_slice(&z);
        let offsets: Vec<usize> = walk(&w, w.len()).map(|r| r.unwrap().offset).collect();
        assert_eq!(offsets, [0, ZERO_RECORD_SIZE, second]);
        // Cut the last record short: the walk reports it and stops.
        let results: Vec<_> = walk(&w, w.len() - 1).collect();
        assert_eq!(results.len(), 3);
        assert_eq!(results[2], Err(RecordError::Truncated));
        // Garbage is malformed, not a panic.
        let junk = [0xffu8; 100];
        assert_eq!(walk(&junk, 100).next(), Some(Err(RecordError::Malformed)));
        assert_eq!(walk(&junk, 5).next(), Some(Err(RecordError::Truncated)));
    }
}
