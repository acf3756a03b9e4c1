//! Sealed records: what the source helper writes into a window and the target helper
//! reads back, with the host (two of them) carrying the bytes in between.
//!
//! A record is a 32-byte header, a payload and a 16-byte AES-256-GCM tag. The header is
//! authenticated (it is part of the AAD together with the session id); the payload is
//! encrypted. The nonce is the lane (the sealing helper vCPU) and the lane's sequence
//! number, so no two records of a session share one.
//!
//! ```text
//!  0      1      2        4        8        16        20      24        32
//!  | kind | lane | flags  | round  |  gpa   | version | len   |  seq    | payload | tag |
//! ```

use crate::{le32, le64, put32, put64, PAGE_SIZE};

/// Header size.
pub const HEADER_SIZE: usize = 32;
/// AES-GCM tag size.
pub const TAG_SIZE: usize = 16;
/// Size of a page record.
pub const PAGE_RECORD_SIZE: usize = HEADER_SIZE + PAGE_SIZE + TAG_SIZE;
/// Size of a zero-page record (no payload: the page is all zero, still authenticated).
pub const ZERO_RECORD_SIZE: usize = HEADER_SIZE + TAG_SIZE;
/// Manifest payload: page count (u64), pages hash (32), records sealed (u64).
pub const MANIFEST_PAYLOAD_SIZE: usize = 48;
/// Size of a manifest record.
pub const MANIFEST_RECORD_SIZE: usize = HEADER_SIZE + MANIFEST_PAYLOAD_SIZE + TAG_SIZE;

/// What a record carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Kind(pub u8);

impl Kind {
    /// A 4 KiB page, encrypted.
    pub const PAGE: Kind = Kind(1);
    /// A page that is all zero: no payload.
    pub const ZERO: Kind = Kind(2);
    /// The source's manifest of every page it sealed with its last version.
    pub const MANIFEST: Kind = Kind(3);

    /// The payload length this kind must carry, or None for an unknown kind.
    pub fn payload_len(self) -> Option<usize> {
        match self {
            Kind::PAGE => Some(PAGE_SIZE),
            Kind::ZERO => Some(0),
            Kind::MANIFEST => Some(MANIFEST_PAYLOAD_SIZE),
            _ => None,
        }
    }
}

/// A record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// What follows.
    pub kind: Kind,
    /// The sealing helper vCPU (nonce prefix).
    pub lane: u8,
    /// Reserved, zero.
    pub flags: u16,
    /// Migration round the page was sealed in.
    pub round: u32,
    /// The page's guest-physical address (0 for a manifest).
    pub gpa: u64,
    /// The page's version: how many times the source sealed this page (starting at 1).
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
    /// Unknown kind, a length that does not fit the kind, or reserved bits set.
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
        match h.kind.payload_len() {
            Some(n) if n == h.len as usize && h.flags == 0 => Ok(h),
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
