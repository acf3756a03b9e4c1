//! One helper vCPU's mailbox: a shared control page (request, response, GPA list)
//! followed by its record windows.
//!
//! The VMM writes a request, runs the helper vCPU until it rings the doorbell, and reads
//! the response. The helper copies the request (and the GPA list) out of shared memory
//! once, validates the copy, and never reads the control page again for that request.

use crate::{le32, le64, put32, put64};

/// Offset of the request in the control page.
pub const REQUEST_OFFSET: usize = 0;
/// Offset of the response in the control page.
pub const RESPONSE_OFFSET: usize = 0x100;
/// Offset of the GPA list (u64 LE each) in the control page.
pub const GPA_LIST_OFFSET: usize = 0x800;

const _: () = assert!(GPA_LIST_OFFSET + 8 * crate::MAX_BATCH <= crate::PAGE_SIZE);
const _: () = assert!(RESPONSE_OFFSET + Response::SIZE <= GPA_LIST_OFFSET);

/// What the VMM asks of the helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Op(pub u32);

impl Op {
    /// Report the ABI version, limits and region.
    pub const INFO: Op = Op(1);
    /// Derive session keys from the migration secret and a session id.
    pub const KEYS: Op = Op(2);
    /// Seal the listed private pages into records in a window (source).
    pub const EXPORT: Op = Op(3);
    /// Verify the records in a window and write their pages privately (target).
    pub const IMPORT: Op = Op(4);
    /// Source: seal the manifest into a window. Target: verify the manifest in a window.
    pub const FINISH: Op = Op(5);
    /// Forget the session: keys, counters, versions.
    pub const RESET: Op = Op(6);

    /// Short name for logs.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Op::INFO => "INFO",
            Op::KEYS => "KEYS",
            Op::EXPORT => "EXPORT",
            Op::IMPORT => "IMPORT",
            Op::FINISH => "FINISH",
            Op::RESET => "RESET",
            _ => return None,
        })
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status(pub u32);

macro_rules! statuses {
    ($($name:ident = $v:expr, $text:expr;)*) => {
        impl Status {
            $(
                #[doc = $text]
                pub const $name: Status = Status($v);
            )*
            /// Every defined status.
            pub const ALL: &'static [Status] = &[$(Status::$name),*];

            /// What the status means, or None for an undefined value.
            pub fn description(self) -> Option<&'static str> {
                match self.0 {
                    $($v => Some($text),)*
                    _ => None,
                }
            }

            /// The status's name, or None for an undefined value.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($v => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

statuses! {
    OK = 0, "done";
    BAD_REQUEST = 1, "the request is malformed or names an unknown operation";
    NO_SECRET = 2, "the guest holds no migration secret, so no keys can be derived";
    NO_KEYS = 3, "no session keys yet (KEYS first)";
    BAD_STATE = 4, "the request does not fit the session's state or role";
    BAD_GPA = 5, "a GPA is unaligned, outside RAM, or inside the helper region";
    BATCH_TOO_LARGE = 6, "more pages than a window or the batch limit holds";
    BAD_RECORD = 7, "a record is malformed (kind, length, lane or bounds)";
    AUTH_FAILED = 8, "a record does not authenticate (tampered, wrong session or key)";
    REORDER = 9, "a record's sequence number is not the next one of its lane";
    REPLAY = 10, "a record carries a version no newer than one already accepted";
    INCOMPLETE = 11, "a private page was never sealed (source) or is being written (target)";
    MANIFEST_MISMATCH = 12, "the source's manifest does not match the pages accepted here";
    BUSY = 13, "another helper vCPU is using the same state";
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.name(), self.description()) {
            (Some(n), Some(d)) => write!(f, "{n} ({d})"),
            _ => write!(f, "unknown helper status {}", self.0),
        }
    }
}

/// The helper's side of a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Role(pub u32);

impl Role {
    /// Exports pages (the migration source).
    pub const SOURCE: Role = Role(1);
    /// Imports pages (the migration target).
    pub const TARGET: Role = Role(2);
}

/// A request (64 bytes at [`REQUEST_OFFSET`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub op: u32,
    /// Chosen by the VMM, echoed in the response.
    pub id: u32,
    /// Record window used by EXPORT, IMPORT and FINISH.
    pub window: u32,
    /// EXPORT: GPAs in the list. IMPORT: records in the window.
    pub count: u32,
    /// EXPORT: the migration round (bound into each record).
    pub round: u32,
    /// KEYS: [`Role`].
    pub role: u32,
    /// IMPORT/FINISH: bytes of records in the window.
    pub bytes: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// KEYS: the session id the VMMs agreed on.
    pub session_id: [u8; 16],
    /// KEYS (target): the source helper's nonce.
    pub peer_nonce: [u8; 16],
}

impl Request {
    /// Encoded size.
    pub const SIZE: usize = 64;

    /// Encodes the request.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        for (i, v) in [
            self.op,
            self.id,
            self.window,
            self.count,
            self.round,
            self.role,
            self.bytes,
            self.reserved,
        ]
        .into_iter()
        .enumerate()
        {
            put32(&mut b, 4 * i, v);
        }
        b[32..48].copy_from_slice(&self.session_id);
        b[48..64].copy_from_slice(&self.peer_nonce);
        b
    }

    /// Decodes a request (any 64 bytes decode; the helper validates the fields).
    pub fn decode(b: &[u8; Self::SIZE]) -> Request {
        let mut session_id = [0u8; 16];
        session_id.copy_from_slice(&b[32..48]);
        let mut peer_nonce = [0u8; 16];
        peer_nonce.copy_from_slice(&b[48..64]);
        Request {
            op: le32(b, 0),
            id: le32(b, 4),
            window: le32(b, 8),
            count: le32(b, 12),
            round: le32(b, 16),
            role: le32(b, 20),
            bytes: le32(b, 24),
            reserved: le32(b, 28),
            session_id,
            peer_nonce,
        }
    }
}

/// A response (128 bytes at [`RESPONSE_OFFSET`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// [`Status`].
    pub status: u32,
    /// The request's id.
    pub id: u32,
    /// Records produced (EXPORT, FINISH) or accepted (IMPORT).
    pub count: u32,
    /// Bytes of records written to the window (EXPORT, FINISH).
    pub bytes: u32,
    /// Index of the offending GPA or record, when the status names one.
    pub index: u32,
    /// INFO: the ABI version.
    pub abi_version: u32,
    /// INFO: most records per request.
    pub max_batch: u32,
    /// INFO: the lane (helper vCPU index) this vCPU seals and opens.
    pub lane: u32,
    /// INFO: first byte of the whole helper region.
    pub region_base: u64,
    /// INFO: size of the whole helper region (fixed part and version table).
    pub region_size: u64,
    /// INFO: pages of guest RAM the helper knows.
    pub ram_pages: u64,
    /// KEYS (source): the nonce the target needs for the same keys.
    pub nonce: [u8; 16],
    /// Requests this helper (all its vCPUs) served.
    pub requests: u64,
    /// Page bytes sealed so far.
    pub bytes_sealed: u64,
    /// Page bytes opened so far.
    pub bytes_opened: u64,
    /// Records (pages) carrying the zero flag so far.
    pub zero_pages: u64,
}

impl Response {
    /// Encoded size.
    pub const SIZE: usize = 120;

    /// Encodes the response.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        for (i, v) in [
            self.status,
            self.id,
            self.count,
            self.bytes,
            self.index,
            self.abi_version,
            self.max_batch,
            self.lane,
        ]
        .into_iter()
        .enumerate()
        {
            put32(&mut b, 4 * i, v);
        }
        put64(&mut b, 32, self.region_base);
        put64(&mut b, 40, self.region_size);
        put64(&mut b, 48, self.ram_pages);
        b[56..72].copy_from_slice(&self.nonce);
        put64(&mut b, 72, self.requests);
        put64(&mut b, 80, self.bytes_sealed);
        put64(&mut b, 88, self.bytes_opened);
        put64(&mut b, 96, self.zero_pages);
        b
    }

    /// Decodes a response.
    pub fn decode(b: &[u8; Self::SIZE]) -> Response {
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&b[56..72]);
        Response {
            status: le32(b, 0),
            id: le32(b, 4),
            count: le32(b, 8),
            bytes: le32(b, 12),
            index: le32(b, 16),
            abi_version: le32(b, 20),
            max_batch: le32(b, 24),
            lane: le32(b, 28),
            region_base: le64(b, 32),
            region_size: le64(b, 40),
            ram_pages: le64(b, 48),
            nonce,
            requests: le64(b, 72),
            bytes_sealed: le64(b, 80),
            bytes_opened: le64(b, 88),
            zero_pages: le64(b, 96),
        }
    }

    /// The status as a type.
    pub fn status(&self) -> Status {
        Status(self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_round_trip() {
        let r = Request {
            op: Op::EXPORT.0,
            id: 7,
            window: 1,
            count: 256,
            round: 3,
            role: Role::SOURCE.0,
            bytes: 9,
            reserved: 0,
            session_id: [5; 16],
            peer_nonce: [6; 16],
        };
        assert_eq!(Request::decode(&r.encode()), r);
        let s = Response {
            status: Status::REPLAY.0,
            id: 7,
            count: 3,
            bytes: 12432,
            index: 2,
            abi_version: 1,
            max_batch: 256,
            lane: 1,
            region_base: 0x100_0000,
            region_size: 0x60_0000,
            ram_pages: 65536,
            nonce: [1; 16],
            requests: 99,
            bytes_sealed: 1 << 30,
            bytes_opened: 2,
            zero_pages: 17,
        };
        assert_eq!(Response::decode(&s.encode()), s);
    }

    #[test]
    fn every_status_has_a_name_and_unknown_ones_say_so() {
        for &s in Status::ALL {
            assert_eq!(Status(s.0), s);
            assert!(s.name().is_some() && s.description().is_some());
        }
        let mut text = [0u8; 64];
        let mut w = Writer(&mut text, 0);
        core::fmt::write(&mut w, format_args!("{}", Status(99))).unwrap();
        assert_eq!(&w.0[..w.1], b"unknown helper status 99");
        assert_eq!(Op(42).name(), None);
        assert_eq!(Op::IMPORT.name(), Some("IMPORT"));
    }

    struct Writer<'a>(&'a mut [u8], usize);
    impl core::fmt::Write for Writer<'_> {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            self.0[self.1..self.1 + s.len()].copy_from_slice(s.as_bytes());
            self.1 += s.len();
            Ok(())
        }
    }
}
