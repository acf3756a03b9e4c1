//! One helper vCPU's mailbox: a shared control page (request, response, handshake
//! message, GPA list) followed by its record windows.
//!
//! The VMM writes a request, runs the helper vCPU until it rings the doorbell, and reads
//! the response. The helper copies the request (the GPA list, the message) out of shared
//! memory once, validates the copy, and never reads the control page again for that
//! request.
//!
//! Which mailbox a helper vCPU serves is the helper's choice, not the host's: the entry
//! point takes a slot from a counter in the helper's private region and announces it
//! with its first doorbell ([`doorbell::ready`]).

use crate::{le32, le64, put32, put64};

/// Offset of the request in the control page.
pub const REQUEST_OFFSET: usize = 0;
/// Offset of the response in the control page.
pub const RESPONSE_OFFSET: usize = 0x100;
/// Offset of the handshake message area (in and out) in the control page.
pub const MESSAGE_OFFSET: usize = 0x200;
/// Size of the message area.
pub const MESSAGE_SIZE: usize = 0x600;
/// Offset of the GPA list (u64 LE each) in the control page.
pub const GPA_LIST_OFFSET: usize = 0x800;

const _: () = assert!(GPA_LIST_OFFSET + 8 * crate::MAX_BATCH <= crate::PAGE_SIZE);
const _: () = assert!(RESPONSE_OFFSET + Response::SIZE <= MESSAGE_OFFSET);
const _: () = assert!(MESSAGE_OFFSET + MESSAGE_SIZE <= GPA_LIST_OFFSET);
const _: () = assert!(REQUEST_OFFSET + Request::SIZE <= RESPONSE_OFFSET);

/// What the VMM asks of the helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Op(pub u32);

impl Op {
    /// Report the ABI version, limits, region, lane and state; the message area gets
    /// the SHA-256 of the firmware image and the committed session's transcript hash.
    pub const INFO: Op = Op(1);
    /// Seal the listed private pages into records in a window (source, keyed).
    pub const EXPORT: Op = Op(3);
    /// Verify the records in a window and write their pages privately (target, keyed,
    /// incoming guest that never ran).
    pub const IMPORT: Op = Op(4);
    /// Source: seal the manifest into a window. Target: verify the manifest in a window.
    pub const FINISH: Op = Op(5);
    /// Forget the session (keys, lane sequences, versions); only when no request is in
    /// flight. Never clears a commitment or the "migrated out" flag.
    pub const RESET: Op = Op(6);
    /// Source: start a session. In: session id (request), Hello hash (message). Out:
    /// the [`crate::handshake::KeyShare`] (message).
    pub const HS_START: Op = Op(7);
    /// Target: answer a KeyShare. In: session id, message = Hello hash ‖ KeyShare. Out:
    /// the [`crate::handshake::KeyReply`].
    pub const HS_RESPOND: Op = Op(8);
    /// Source: check the target's KeyReply (message) and derive the keys. Out: message
    /// = [`crate::handshake::KeyConfirm`] ‖ transcript hash.
    pub const HS_FINISH: Op = Op(9);
    /// Target: check the source's KeyConfirm (message); pages may flow after. Out:
    /// message = transcript hash.
    pub const HS_CONFIRM: Op = Op(10);
    /// Source: authenticate a blob (kind and index in the request) the VMM placed at
    /// offset `record::HEADER_SIZE` of a window; the helper writes the header before it
    /// and the tag after it.
    pub const SEAL_BLOB: Op = Op(11);
    /// Target: verify a blob record in a window; the response names its kind and index.
    /// A shared-list record is also kept as the session's current list.
    pub const OPEN_BLOB: Op = Op(12);
    /// Source (manifest sealed): seal the commit record into a window and mark the
    /// guest "migrated out"; the message gets the transcript hash. Target (manifest
    /// verified): verify the commit record; the guest may run after.
    pub const COMMIT: Op = Op(13);
    /// Target: give up a session not committed, for good. Out: message = the
    /// [`crate::handshake::AbortToken`].
    pub const ABORT: Op = Op(14);
    /// Source: release a committed guest with an abort token (message) from the target
    /// or the owner ([`Origin`] in `kind`); clears "migrated out".
    pub const RELEASE: Op = Op(15);

    /// Every operation.
    pub const ALL: [Op; 14] = [
        Op::INFO,
        Op::EXPORT,
        Op::IMPORT,
        Op::FINISH,
        Op::RESET,
        Op::HS_START,
        Op::HS_RESPOND,
        Op::HS_FINISH,
        Op::HS_CONFIRM,
        Op::SEAL_BLOB,
        Op::OPEN_BLOB,
        Op::COMMIT,
        Op::ABORT,
        Op::RELEASE,
    ];

    /// Short name for logs.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Op::INFO => "INFO",
            Op::EXPORT => "EXPORT",
            Op::IMPORT => "IMPORT",
            Op::FINISH => "FINISH",
            Op::RESET => "RESET",
            Op::HS_START => "HS_START",
            Op::HS_RESPOND => "HS_RESPOND",
            Op::HS_FINISH => "HS_FINISH",
            Op::HS_CONFIRM => "HS_CONFIRM",
            Op::SEAL_BLOB => "SEAL_BLOB",
            Op::OPEN_BLOB => "OPEN_BLOB",
            Op::COMMIT => "COMMIT",
            Op::ABORT => "ABORT",
            Op::RELEASE => "RELEASE",
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
    NO_SECRET = 2, "the guest holds no migration secret, so no session can be authenticated";
    NO_KEYS = 3, "no session keys yet (the handshake comes first)";
    BAD_STATE = 4, "the request does not fit the session's state or role";
    BAD_GPA = 5, "a GPA is unaligned, outside RAM, inside the helper region, or shared";
    BATCH_TOO_LARGE = 6, "more pages than a window or the batch limit holds";
    BAD_RECORD = 7, "a record is malformed (kind, length, index or bounds)";
    AUTH_FAILED = 8, "a record does not authenticate (tampered, wrong session or key)";
    REORDER = 9, "a record's sequence number is not the next one of its lane";
    REPLAY = 10, "a record carries a version no newer than one already accepted";
    INCOMPLETE = 11, "a private page was never sealed (source) or is being written (target)";
    MANIFEST_MISMATCH = 12, "the source's manifest does not match the pages and records accepted here";
    BUSY = 13, "another helper vCPU is inside a request that needs the session alone";
    BAD_PEER = 14, "the peer's handshake does not verify (other secret, firmware or Hello, or a replayed handshake)";
    WEAK_KEY = 15, "the key agreement gave an all-zero secret (a non-contributory key share)";
    MIGRATED_OUT = 16, "this guest committed its migration to a target: only an abort verified by that target or the owner releases it";
    NOT_INCOMING = 17, "only a guest booted for an incoming migration that never ran may import";
    NO_ENTROPY = 18, "the CPU gave no random numbers";
    BAD_TOKEN = 19, "the abort token does not verify for the committed session";
    NOT_COMMITTED = 20, "there is no committed session to release";
    CORRUPTED = 21, "the helper's own structures (page tables, descriptor tables, anchor, layout or code) no longer match what it recorded at boot: the guest wrote into the helper's region, so the helper serves nothing (the response's index names the structure)";
    UNSUPPORTED_KERNEL = 22, "the CPU cannot run the AES-GCM kernel asked for, or it failed its self-test";
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match (self.name(), self.description()) {
            (Some(n), Some(d)) => write!(f, "{n} ({d})"),
            _ => write!(f, "unknown helper status {}", self.0),
        }
    }
}

/// Who issued an abort token ([`Op::RELEASE`]'s `kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin(pub u32);

impl Origin {
    /// The target's helper ([`Op::ABORT`]).
    pub const TARGET: Origin = Origin(1);
    /// The guest owner's break-glass abort (a MAC under the migration secret).
    pub const OWNER: Origin = Origin(2);
}

/// The session's phase as the response reports it (not an input: the helper keeps it
/// in private memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Phase(pub u32);

impl Phase {
    /// No session.
    pub const IDLE: Phase = Phase(0);
    /// A request that needs the session alone is running.
    pub const BUSY: Phase = Phase(1);
    /// Source: key share sent, waiting for the target's reply.
    pub const SOURCE_STARTED: Phase = Phase(2);
    /// Target: reply sent, waiting for the source's confirmation.
    pub const TARGET_RESPONDED: Phase = Phase(3);
    /// Source: keyed, sealing.
    pub const SOURCE_KEYED: Phase = Phase(4);
    /// Target: keyed, opening.
    pub const TARGET_KEYED: Phase = Phase(5);
    /// Source: manifest sealed; only COMMIT (or RESET) follows.
    pub const SOURCE_MANIFESTED: Phase = Phase(6);
    /// Target: manifest verified; only COMMIT or ABORT follows.
    pub const TARGET_VERIFIED: Phase = Phase(7);
    /// Source: committed; the guest is "migrated out".
    pub const SOURCE_COMMITTED: Phase = Phase(8);
    /// Target: committed; the guest may run, and nothing is imported ever again.
    pub const TARGET_COMMITTED: Phase = Phase(9);
    /// Target: aborted; this session never commits.
    pub const TARGET_ABORTED: Phase = Phase(10);

    /// Short name for logs.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Phase::IDLE => "idle",
            Phase::BUSY => "busy",
            Phase::SOURCE_STARTED => "source-started",
            Phase::TARGET_RESPONDED => "target-responded",
            Phase::SOURCE_KEYED => "source-keyed",
            Phase::TARGET_KEYED => "target-keyed",
            Phase::SOURCE_MANIFESTED => "source-manifested",
            Phase::TARGET_VERIFIED => "target-verified",
            Phase::SOURCE_COMMITTED => "source-committed",
            Phase::TARGET_COMMITTED => "target-committed",
            Phase::TARGET_ABORTED => "target-aborted",
            _ => return None,
        })
    }
}

/// Request flag bits.
pub mod flags {
    /// EXPORT: seal an all-zero private page as a short zero record. This tells the
    /// host which private pages are zero (a leak); without it every private page is a
    /// full, constant-size record.
    pub const ZERO_RECORDS: u32 = 1;
    /// HS_START, HS_RESPOND: bits 8..=11 name the AES-256-GCM kernel the session's
    /// records are to run on, a [`super::GcmKernel`] (0, [`super::GcmKernel::BEST`]: the
    /// helper's own choice, the fastest its CPU supports). For benchmarks that compare
    /// kernels inside the mirror: every kernel is the same AES-256-GCM, constant time,
    /// checked by the helper's known-answer self-test before the session uses it, and
    /// the helper refuses one its CPU cannot run (UNSUPPORTED_KERNEL), so a host can
    /// only make the helper slower, never weaker (docs/threat-model.md).
    pub const KERNEL_MASK: u32 = 0xf << KERNEL_SHIFT;
    /// Position of the kernel bits in `flags`.
    pub const KERNEL_SHIFT: u32 = 8;
}

/// An AES-256-GCM kernel of the helper's record code (`record-gcm`), as the mailbox
/// names it: HS_START and HS_RESPOND take one in their flags, and their responses say
/// which one the session runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GcmKernel(pub u32);

impl GcmKernel {
    /// In a request: the helper's choice. In a response: not reported (a helper of an
    /// earlier build).
    pub const BEST: GcmKernel = GcmKernel(0);
    /// RustCrypto `aes-gcm`, the portable fallback.
    pub const PORTABLE: GcmKernel = GcmKernel(1);
    /// AES-NI and PCLMULQDQ on xmm registers.
    pub const AESNI: GcmKernel = GcmKernel(2);
    /// VAES and VPCLMULQDQ on ymm registers.
    pub const VAES256: GcmKernel = GcmKernel(3);
    /// VAES and VPCLMULQDQ on zmm registers.
    pub const VAES512: GcmKernel = GcmKernel(4);
    /// Every kernel a request may name, fastest first.
    pub const ALL: [GcmKernel; 4] = [
        GcmKernel::VAES512,
        GcmKernel::VAES256,
        GcmKernel::AESNI,
        GcmKernel::PORTABLE,
    ];

    /// The kernel's name as `record-gcm` reports it, or None for BEST and undefined
    /// values.
    pub fn name(self) -> Option<&'static str> {
        match self {
            GcmKernel::PORTABLE => Some("portable"),
            GcmKernel::AESNI => Some("aesni"),
            GcmKernel::VAES256 => Some("vaes256"),
            GcmKernel::VAES512 => Some("vaes512"),
            _ => None,
        }
    }

    /// The kernel a request's flags name.
    pub fn from_flags(flags: u32) -> GcmKernel {
        GcmKernel((flags & flags::KERNEL_MASK) >> flags::KERNEL_SHIFT)
    }

    /// The flags bits that name this kernel.
    pub fn flags(self) -> u32 {
        (self.0 << flags::KERNEL_SHIFT) & flags::KERNEL_MASK
    }
}

/// INFO response flag bits ([`Response::info_flags`]).
pub mod info_flags {
    /// The guest was booted for an incoming migration and never ran.
    pub const INCOMING: u32 = 1;
    /// The guest committed a migration and is "migrated out".
    pub const MIGRATED_OUT: u32 = 2;
}

/// The values a helper vCPU writes to the doorbell.
pub mod doorbell {
    /// A request is done; the response is in the mailbox.
    pub const DONE: u64 = 1;
    /// Added to the slot in the first doorbell: "serving mailbox `slot`".
    pub const READY_BASE: u64 = 0x100;
    /// The entry point found no free slot (every slot was taken by an earlier helper
    /// vCPU) and parked: slots are never reused.
    pub const NO_SLOT: u64 = 0x200;
    /// The entry point found no valid anchor (the helper was never prepared).
    pub const NO_ANCHOR: u64 = 0x201;
    /// SEV-ES: the reason-code set of the GHCB MSR protocol termination request a helper
    /// entry makes when it cannot go on (its VMSA cannot be reset, so it cannot park for
    /// the host to restart it). A set of sevmirror's own: 0 and 1 are the general and
    /// Linux sets (56421 §2.3.1).
    pub const ES_TERMINATE_SET: u8 = 0xe;
    /// Reason in [`ES_TERMINATE_SET`]: every helper slot was taken ([`NO_SLOT`]).
    pub const ES_NO_SLOT: u8 = 1;
    /// Reason in [`ES_TERMINATE_SET`]: the GHCB MSR protocol failed at the entry.
    pub const ES_PROTOCOL: u8 = 2;
    /// Reason in [`ES_TERMINATE_SET`]: the helper could not set up its GHCB.
    pub const ES_NO_GHCB: u8 = 3;

    /// The first doorbell of a helper vCPU that serves mailbox `slot`.
    pub const fn ready(slot: u64) -> u64 {
        READY_BASE + slot
    }

    /// The slot a first doorbell announces, if it is one.
    pub fn slot(value: u64) -> Option<u64> {
        value
            .checked_sub(READY_BASE)
            .filter(|&s| s < crate::MAX_HELPER_VCPUS as u64)
    }
}

/// A request (64 bytes at [`REQUEST_OFFSET`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub op: u32,
    /// Chosen by the VMM, echoed in the response.
    pub id: u32,
    /// Record window used by EXPORT, IMPORT, FINISH, SEAL_BLOB, OPEN_BLOB, COMMIT.
    pub window: u32,
    /// EXPORT: GPAs in the list. IMPORT: records in the window.
    pub count: u32,
    /// EXPORT, SEAL_BLOB, FINISH, COMMIT: the migration round (bound into each record).
    pub round: u32,
    /// SEAL_BLOB: the record kind. RELEASE: the token's [`Origin`].
    pub kind: u32,
    /// IMPORT, FINISH, OPEN_BLOB, COMMIT (target): bytes of records in the window.
    /// SEAL_BLOB: bytes of the blob. HS_*, RELEASE: bytes of the message.
    pub bytes: u32,
    /// [`flags`] bits.
    pub flags: u32,
    /// SEAL_BLOB: the blob's index (the vCPU of a vCPU state, else 0).
    pub index: u32,
    /// Reserved, zero.
    pub reserved: u32,
    /// HS_START, HS_RESPOND: the session id the VMMs agreed on.
    pub session_id: [u8; 16],
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
            self.kind,
            self.bytes,
            self.flags,
            self.index,
            self.reserved,
        ]
        .into_iter()
        .enumerate()
        {
            put32(&mut b, 4 * i, v);
        }
        b[40..56].copy_from_slice(&self.session_id);
        b
    }

    /// Decodes a request (any 64 bytes decode; the helper validates the fields).
    pub fn decode(b: &[u8; Self::SIZE]) -> Request {
        let mut session_id = [0u8; 16];
        session_id.copy_from_slice(&b[40..56]);
        Request {
            op: le32(b, 0),
            id: le32(b, 4),
            window: le32(b, 8),
            count: le32(b, 12),
            round: le32(b, 16),
            kind: le32(b, 20),
            bytes: le32(b, 24),
            flags: le32(b, 28),
            index: le32(b, 32),
            reserved: le32(b, 36),
            session_id,
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
    /// Records produced (EXPORT, FINISH, SEAL_BLOB, COMMIT) or accepted (IMPORT).
    pub count: u32,
    /// Bytes of records written to the window, or accepted from it.
    pub bytes: u32,
    /// Index of the offending GPA or record, when the status names one. OPEN_BLOB: the
    /// verified blob's index.
    pub index: u32,
    /// INFO: the ABI version.
    pub abi_version: u32,
    /// INFO: most records per request.
    pub max_batch: u32,
    /// The lane id this vCPU seals and opens with (the first byte of its nonces).
    pub lane: u32,
    /// INFO: first byte of the whole helper region.
    pub region_base: u64,
    /// INFO: size of the whole helper region (fixed part and version table).
    pub region_size: u64,
    /// INFO: pages of guest RAM the helper knows.
    pub ram_pages: u64,
    /// The session's [`Phase`] after the request.
    pub phase: u32,
    /// Bytes the helper wrote to the message area.
    pub message_len: u32,
    /// Requests this helper (all its vCPUs) served.
    pub requests: u64,
    /// Page bytes sealed so far.
    pub bytes_sealed: u64,
    /// Page bytes opened so far.
    pub bytes_opened: u64,
    /// Zero-page records sealed or opened so far.
    pub zero_pages: u64,
    /// The mailbox slot this vCPU serves.
    pub slot: u32,
    /// OPEN_BLOB: the verified record's kind.
    pub kind: u32,
    /// INFO: [`info_flags`] bits.
    pub info_flags: u32,
    /// HS_START, HS_RESPOND: the AES-256-GCM kernel ([`GcmKernel`]) the session's
    /// records run on.
    pub kernel: u32,
}

impl Response {
    /// Encoded size.
    pub const SIZE: usize = 128;

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
        put32(&mut b, 56, self.phase);
        put32(&mut b, 60, self.message_len);
        put64(&mut b, 64, self.requests);
        put64(&mut b, 72, self.bytes_sealed);
        put64(&mut b, 80, self.bytes_opened);
        put64(&mut b, 88, self.zero_pages);
        put32(&mut b, 96, self.slot);
        put32(&mut b, 100, self.kind);
        put32(&mut b, 104, self.info_flags);
        put32(&mut b, 108, self.kernel);
        b
    }

    /// Decodes a response.
    pub fn decode(b: &[u8; Self::SIZE]) -> Response {
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
            phase: le32(b, 56),
            message_len: le32(b, 60),
            requests: le64(b, 64),
            bytes_sealed: le64(b, 72),
            bytes_opened: le64(b, 80),
            zero_pages: le64(b, 88),
            slot: le32(b, 96),
            kind: le32(b, 100),
            info_flags: le32(b, 104),
            kernel: le32(b, 108),
        }
    }

    /// The status as a type.
    pub fn status(&self) -> Status {
        Status(self.status)
    }

    /// The phase as a type.
    pub fn phase(&self) -> Phase {
        Phase(self.phase)
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
            kind: 6,
            bytes: 9,
            flags: flags::ZERO_RECORDS,
            index: 2,
            reserved: 0,
            session_id: [5; 16],
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
            phase: Phase::TARGET_KEYED.0,
            message_len: 96,
            requests: 99,
            bytes_sealed: 1 << 30,
            bytes_opened: 2,
            zero_pages: 17,
            slot: 2,
            kind: 6,
            info_flags: info_flags::INCOMING,
            kernel: GcmKernel::AESNI.0,
        };
        assert_eq!(Response::decode(&s.encode()), s);
        assert_eq!(&s.encode()[108..112], &[2, 0, 0, 0]);
    }

    #[test]
    fn a_kernel_travels_in_bits_8_to_11_of_the_flags() {
        for k in GcmKernel::ALL {
            let f = k.flags() | flags::ZERO_RECORDS;
            assert_eq!(GcmKernel::from_flags(f), k);
            assert_eq!(f & !flags::KERNEL_MASK, flags::ZERO_RECORDS);
            assert!(k.name().is_some());
        }
        assert_eq!(GcmKernel::from_flags(0), GcmKernel::BEST);
        assert_eq!(GcmKernel::BEST.name(), None);
        assert_eq!(GcmKernel(9).name(), None);
        assert_eq!(GcmKernel(0x1f).flags(), 0xf00, "only four bits");
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
        assert_eq!(Op(2).name(), None, "KEYS (version 1) is gone");
        for op in Op::ALL {
            assert!(op.name().is_some());
        }
        assert_eq!(Op::IMPORT.name(), Some("IMPORT"));
        for p in 0..=10 {
            assert!(Phase(p).name().is_some());
        }
        assert_eq!(Phase(11).name(), None);
    }

    #[test]
    fn the_first_doorbell_names_a_slot_and_nothing_else_does() {
        assert_eq!(doorbell::slot(doorbell::ready(2)), Some(2));
        assert_eq!(doorbell::slot(doorbell::DONE), None);
        assert_eq!(doorbell::slot(doorbell::NO_SLOT), None);
        assert_eq!(
            doorbell::slot(doorbell::ready(crate::MAX_HELPER_VCPUS as u64)),
            None
        );
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
