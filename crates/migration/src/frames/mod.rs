//! # The migration wire format, protocol version 2
//!
//! One TCP connection carries a migration. The source VMM writes frames to the target;
//! the target writes a few frames back on the same connection (the *return path*). Each
//! frame is a fixed 12-byte [`FrameHeader`] followed by a payload whose layout depends on
//! the frame's [`MessageType`]. All integers are little-endian. There is no padding and no
//! alignment: fields follow each other byte for byte.
//!
//! For an SEV guest, everything that decides what the target guest becomes is made and
//! checked by the two migration helpers (guest code in the mirror VMs), never by the
//! VMMs: the helpers first agree on a fresh session with an authenticated X25519 key
//! agreement (KeyShare, KeyReply, KeyConfirm; helper-abi `handshake`) bound to the Hello's
//! hash; private pages travel as records the source's helper sealed (AES-256-GCM); the
//! guest's shared-page list, the device state and every vCPU's state travel as records
//! the source's helper authenticated; the manifest lists every page, the number of
//! records and each lane's last sequence number; and the source helper's commit record
//! (in Done) is what lets the target run the guest — after which the source guest never
//! runs again unless the target's helper gives the session up (AbortToken). The hosts
//! carry all of it verbatim; this module checks its framing, nothing more.
//!
//! ## A whole migration (SEV)
//!
//! ```text
//!  source VMM (guest running)                             target VMM (booted incoming,
//!   + helper in its mirror VM                              attested, migration secret)
//!      |                                                        |
//!      |--- Hello {mode, mem size, RAM ranges, firmware ------->| checks it against its
//!      |           digest, helper region, lanes, session id,    | own guest
//!      |           page size, vCPUs, guest CPU}                 |
//!      |<-- HelloAck accepted ----------------------------------|  (or refused: both close;
//!      |                                                        |   the guest keeps running)
//!      |--- KeyShare {Ns, Ps}        (source helper HS_START) ->| target helper HS_RESPOND
//!      |<-- KeyReply {Nt, Pt, MAC_t} ---------------------------|
//!   source helper HS_FINISH: checks MAC_t                       |
//!      |--- KeyConfirm {MAC_s} -------------------------------->| HS_CONFIRM: checks MAC_s
//!      |                                                        |
//!      |  round 1: every page once                              |
//!      |--- SharedList {sealed list} -------------------------->| helper verifies it; the
//!      |                                                        | page states follow it
//!      |--- PlainPages {pages the list shares} ---------------->| written as they are
//!      |--- PageBatch {lane, round, sealed records} ----------->| helper IMPORTs
//!      |--- RoundEnd {round, pages sent, dirty remaining} ----->| progress
//!      |  rounds 2..n-1: the list again, then the pages dirtied since, and pages the list
//!      |  made private again                                    |
//!      |  guest paused: stop-and-copy, round n, same frames     |
//!      |--- DeviceState {sealed device state} ----------------->| helper verifies
//!      |--- VcpuState {i, sealed vCPU i state} ... ------------>| helper verifies
//!      |--- Manifest {sealed manifest} ------------------------>| helper checks pages,
//!      |<-- Ready ----------------------------------------------| records, lanes
//!   source helper COMMIT: guest flagged "migrated out"          |
//!      |--- Done {sealed commit record} ----------------------->| helper checks the commit:
//!      |<-- Ack completed --------------------------------------| the guest runs here
//!   source quits (its guest never runs again)                   |
//!
//!  Failure paths:
//!   before the commit, either side: Abort {code, reason}; the source resumes its guest,
//!   the target discards what it received and never runs the guest (a stream that ends
//!   early counts as an Abort). A target that holds a session first sends its helper's
//!   AbortToken, then the Abort.
//!   after the commit: the source resumes only if the target's AbortToken verifies at the
//!   source helper (RELEASE); without it (lost stream, withheld token) it stays stopped,
//!   "awaiting abort", until the target's token or the guest owner's break-glass abort
//!   arrives by another way. The source kept the commit record in a file before Done
//!   (crate::recovery): a target whose stream ends after its Ready does not give up but
//!   waits for that file, or for its operator's abort (whose token is kept in a file
//!   too). A source that is cancelled after the commit sends Abort on the live
//!   connection, asking the target for its token.
//! ```
//!
//! A plain guest has no helper: Hello, HelloAck, rounds of PlainPages and RoundEnd,
//! DeviceState, VcpuState, Done (empty), Ack — no key agreement, no list, no manifest,
//! no commit.
//!
//! ## Receiver state diagram
//!
//! [`ReceiverState`] is the order of frames on a connection. Both ends feed it every
//! frame that crosses the connection, in the order they send or receive them. Any pair
//! not drawn here is a [`ProtocolError`] (e.g. a PageBatch before the HelloAck, a second
//! Manifest, anything after Done but the target's Ack, AbortToken or Abort).
//!
//! ```text
//!               Hello                  HelloAck
//!  AwaitHello -------> AwaitHelloAck ----------> Accepted --KeyShare--> KeyShared
//!                                                   |                      |
//!                              page frames, RoundEnd|               KeyReply
//!                              (plain guests)       |                      v
//!                                                   |   Keyed <--KeyConfirm-- KeyReplied
//!                                                   v     |
//!                     RoundOpen <-----------------------+  page frames, RoundEnd
//!                       |  ^  page frames                  (page frames: PageBatch,
//!              RoundEnd |  |                               PlainPages, SharedList,
//!                       v  |                               SharedRanges)
//!                     RoundClosed ---RoundEnd---> RoundClosed
//!                       | DeviceState
//!                       v
//!                     Devices --VcpuState--> Vcpus --VcpuState--> Vcpus
//!                                              |  \
//!                                    Manifest  |   \ Done (plain)
//!                                              v    \
//!                                         Manifested  \
//!                                              | Ready \
//!                                              v        v
//!                                            Ready --Done--> Done --Ack--> Completed
//!
//!  KeyReplied .. Done --AbortToken--> Aborting --Abort--> Aborted
//!  every state but Completed and Aborted --Abort--> Aborted
//! ```
//!
//! The same as a table (`ReceiverState::next`, tested pair by pair):
//!
//! | state           | legal frame → next state                                       |
//! |-----------------|----------------------------------------------------------------|
//! | `AwaitHello`    | Hello → `AwaitHelloAck`                                        |
//! | `AwaitHelloAck` | HelloAck → `Accepted`                                          |
//! | `Accepted`      | KeyShare → `KeyShared`; page frames → `RoundOpen`; RoundEnd → `RoundClosed` |
//! | `KeyShared`     | KeyReply → `KeyReplied`                                        |
//! | `KeyReplied`    | KeyConfirm → `Keyed`                                           |
//! | `Keyed`         | page frames → `RoundOpen`; RoundEnd → `RoundClosed`            |
//! | `RoundOpen`     | page frames → `RoundOpen`; RoundEnd → `RoundClosed`            |
//! | `RoundClosed`   | page frames → `RoundOpen`; RoundEnd → `RoundClosed`; DeviceState → `Devices` |
//! | `Devices`       | VcpuState → `Vcpus`                                            |
//! | `Vcpus`         | VcpuState → `Vcpus`; Manifest → `Manifested`; Done → `Done`    |
//! | `Manifested`    | Ready → `Ready`                                                |
//! | `Ready`         | Done → `Done`                                                  |
//! | `Done`          | Ack → `Completed`                                              |
//! | `Aborting`      | Abort → `Aborted`                                              |
//! | `Completed`, `Aborted` | nothing                                                 |
//! | `KeyReplied` to `Done` | also AbortToken → `Aborting`                            |
//! | every other     | also Abort → `Aborted`                                         |
//!
//! A HelloAck or Ack moves the state whether it accepts or refuses; after a refusal, or
//! a failed Ack, nothing more is sent and both ends close. What the state diagram cannot
//! see is checked by the migration engine: the key agreement before anything else for
//! an SEV guest, PageBatch lanes below `lanes`, one VcpuState per vCPU index, a Manifest,
//! Ready and a commit in Done exactly for SEV guests, pages inside the RAM ranges and
//! outside the helper region, clear pages only where the guest's verified list shares
//! them.
//!
//! ## Version policy
//!
//! - [`PROTOCOL_VERSION`] is the version this build writes (today 2). Every frame header
//!   carries the version of its layout; the source writes its own version in every frame,
//!   so the Hello's version is the session's.
//! - A receiver accepts its own version N and the one before, N-1
//!   ([`SUPPORTED_VERSIONS`]: 1 and 2), and rejects anything else with
//!   [`FrameError::UnsupportedVersion`], whose message names what it accepts. A frame
//!   whose version differs from the session's is an error
//!   ([`crate::CodecError::VersionChanged`]).
//! - Version 1 is still decoded, but only a plain guest migrates with it: a version-1
//!   SEV session had no authenticated key agreement and no commit, and the target
//!   refuses its Hello (`UnsupportedVersion`; a downgrade is never accepted). The
//!   version-2 frames (13–18) do not exist in version 1; a version-1 Hello carries the
//!   helper nonce field (tag 8), a version-2 Hello must not.
//! - The 12-byte frame header and the HelloAck, Ack and Abort payloads are frozen: every
//!   version lays them out the same. A target that cannot read the source's version
//!   therefore still answers `HelloAck refused {UnsupportedVersion}` written *in the
//!   source's version* ([`HelloAck::encode_as`]), and the source understands it.
//! - Anything an older receiver would misread bumps the version: a new frame type, a
//!   changed layout, a new mandatory Hello field, a new [`GuestMode`] or [`FailureCode`].
//!   A new Hello field marked optional ([`HELLO_FIELD_OPTIONAL`]) does not: receivers
//!   that do not know it skip it. Nor does a new guest mode whose Hellos every older
//!   receiver refuses rather than misreads, with fields that only that mode carries: SEV-ES
//!   (mode 2, with its `es helpers` field) came in version 2 this way, and a version-2
//!   receiver that does not know it answers `HelloAck refused` (unknown mode or field).
//! - When N+1 is introduced, the decoders for N stay (a target must take a stream from
//!   an N source); N-1's go.
//!
//! ## Frame header
//!
//! ```text
//!  offset size field
//!  0      4    magic, the bytes "SMIG"
//!  4      2    version (u16), the layout of this frame: 2 (or 1)
//!  6      1    type (u8), a MessageType code, see below
//!  7      1    flags (u8), reserved, must be 0
//!  8      4    payload length (u32), checked against the type's cap before any payload
//!               byte is read
//!  12     len  payload
//! ```
//!
//! ## Frame types and payloads
//!
//! | code | type           | direction | payload bytes           | since |
//! |------|----------------|-----------|-------------------------|-------|
//! | 1    | `Hello`        | S → T     | 0 ..= 4096              | 1     |
//! | 2    | `HelloAck`     | T → S     | 1 ..= 1025              | 1     |
//! | 3    | `PageBatch`    | S → T     | 12 ..= 1 060 876        | 1     |
//! | 4    | `PlainPages`   | S → T     | 8 ..= 1 050 888         | 1     |
//! | 5    | `SharedRanges` | S → T     | 4 ..= 1 048 580         | 1     |
//! | 6    | `DeviceState`  | S → T     | 0 ..= 1 048 624         | 1     |
//! | 7    | `VcpuState`    | S → T     | 4 ..= 65 588            | 1     |
//! | 8    | `RoundEnd`     | S → T     | 20                      | 1     |
//! | 9    | `Manifest`     | S → T     | 160 (v1: 96)            | 1     |
//! | 10   | `Done`         | S → T     | 0, or 80 (SEV, v2)      | 1     |
//! | 11   | `Abort`        | both      | 1 ..= 1025              | 1     |
//! | 12   | `Ack`          | T → S     | 1 ..= 1025              | 1     |
//! | 13   | `KeyShare`     | S → T     | 64                      | 2     |
//! | 14   | `KeyReply`     | T → S     | 96                      | 2     |
//! | 15   | `KeyConfirm`   | S → T     | 32                      | 2     |
//! | 16   | `SharedList`   | S → T     | 56 ..= 4144             | 2     |
//! | 17   | `Ready`        | T → S     | 0                       | 2     |
//! | 18   | `AbortToken`   | T → S     | 32                      | 2     |
//!
//! **Hello** (code 1): a list of fields, each `tag u16 ‖ len u16 ‖ value[len]`, in any
//! order (writers use ascending tags). Every field below is mandatory and may appear
//! once; a tag with bit 15 ([`HELLO_FIELD_OPTIONAL`]) set is optional and skipped when
//! unknown; any other unknown tag is an error. The target hashes the Hello frame exactly
//! as it arrived (header and payload) and its helper binds that hash into the session's
//! transcript, so a Hello changed on the way fails the key agreement.
//!
//! ```text
//!  tag     len        field            value
//!  0x0001  1          guest mode       u8: 0 plain, 1 SEV, 2 SEV-ES
//!  0x0002  8          mem size         u64 bytes of guest RAM, = sum of the RAM ranges
//!  0x0003  16 * n     RAM ranges       n = 1..=64 times (base u64, size u64), 4 KiB
//!                                      aligned, non-empty, ascending, not overlapping
//!  0x0004  32         firmware digest  SHA-256 of the firmware image both sides boot
//!  0x0005  16         helper region    base u64, size u64: SEV: non-empty, aligned,
//!                                      inside RAM; plain: zero
//!  0x0006  2          lanes            u16 source helper vCPUs: SEV 1..=256 (a target
//!                                      takes up to helper-abi MAX_LANES = 8), plain 0
//!  0x0007  16         session id       16 bytes, not all zero (bound into the helpers'
//!                                      transcript)
//!  0x0008  16         helper nonce     version 1 only: the source helper's nonce
//!  0x0009  4          page size        u32, 4096
//!  0x000a  4          vcpus            u32, 1..=1024
//!  0x0040  2          es helpers       u16: SEV-ES only (mandatory there, absent
//!                                      otherwise): the helper vCPUs whose VMSAs the
//!                                      guest's launch measured, 1..=256; the target
//!                                      must have been launched with as many
//!  0x8001  52         guest CPU        optional: the CPU the source's VMM gave the
//!                                      guest: vendor [12] (CPUID.0 EBX, EDX, ECX) ‖
//!                                      signature u32 (CPUID.1:EAX) ‖ 9 feature words
//!                                      u32: CPUID.1 ECX, EDX; (7,0) EBX, ECX, EDX;
//!                                      (7,1) EAX; 80000001h ECX, EDX; (0Dh,1) EAX
//! ```
//!
//! A target that finds the guest CPU field refuses (`Incompatible`) unless the CPUID
//! table it configured for its own VM has every feature of [`crate::cpu::FEATURES`] the
//! guest was given, naming each one it lacks ([`crate::cpu::check_compatible`]). The
//! field is optional (added without a version change); a Hello without it is not
//! checked.
//!
//! An SEV-ES guest's vCPU registers do not travel in VcpuState: each vCPU saved them
//! into its own private page before the source paused (guest-abi `layout::vcpu_save`),
//! and that page travels sealed like any other. Its VcpuState frames carry what the host
//! keeps of each vCPU (local APIC, APIC base, TSC, TSC deadline), authenticated by the
//! helper like a plain vCPU's registers.
//!
//! **HelloAck** (2), **Ack** (12), **Abort** (11), frozen layouts:
//!
//! ```text
//!  0  1    status u8: 0 = accepted (HelloAck) / completed (Ack), never 0 in an Abort;
//!          otherwise a FailureCode
//!  1  n    reason, UTF-8, no control characters: empty exactly when status is 0,
//!          otherwise 1..=1024 bytes
//! ```
//!
//! **KeyShare** (13): `nonce [32] ‖ X25519 share [32]` (the source helper's).
//! **KeyReply** (14): `nonce [32] ‖ X25519 share [32] ‖ MAC [32]` (the target helper's;
//! the MAC is HMAC-SHA256 under a key derived from the owner's migration secret, with
//! the target's label, over the transcript hash). **KeyConfirm** (15): `MAC [32]` (the
//! source helper's, with the source's label). The transcript and the key schedule are
//! mirror-helper's `keys` module.
//!
//! **SharedList** (16), at the start of every round of an SEV guest: one blob record
//! (helper-abi `record`, kind SHARED_LIST) the source helper made from the guest's own
//! list: `header [32] ‖ "SHRD" ‖ count u32 ‖ count × (gpa u64, pages u64) ‖ tag [16]`,
//! the ranges page-aligned, non-empty, ascending, not overlapping. The list is in the
//! clear (the host knows which pages are shared); the tag authenticates it.
//!
//! **PageBatch** (3), the sealed records of one helper EXPORT:
//!
//! ```text
//!  0   2   lane u16, the source helper vCPU that sealed them (< 256)
//!  2   2   reserved u16, 0
//!  4   4   round u32
//!  8   4   count u32, records that follow: 1..=256
//!  12  ..  records, verbatim: count times (32-byte header ‖ payload ‖ 16-byte tag), page
//!          (4144 bytes) or zero-page (48 bytes, only with the zero-record option)
//!          records whose header round equals the batch's, filling the payload exactly
//! ```
//!
//! **PlainPages** (4), pages the host copies itself (plain guests, pages an SEV guest's
//! list shares):
//!
//! ```text
//!  0   4   round u32
//!  4   4   count u32: 1..=256
//!  8   ..  count entries: gpa u64 (4 KiB aligned, strictly ascending)
//!                         ‖ flags u8 (bit 0: zero page, no data follows; others 0)
//!                         ‖ 4096 bytes of page data unless bit 0 is set
//! ```
//!
//! **SharedRanges** (5): `count u32 (0..=65536) ‖ count × (gpa u64, pages u64 >= 1)`,
//! ascending, not overlapping. Version 1's host-declared page states; in version 2 a
//! source need not send it, and a target accepts it only if it repeats the guest's
//! sealed list exactly.
//!
//! **DeviceState** (6): the VMM's device-state blob (plain guests, 0..=1 MiB); for an SEV
//! guest, the blob record (kind DEVICE_STATE) around it.
//!
//! **VcpuState** (7): `index u32 (< 1024) ‖ blob`: the VMM's vCPU state (plain, 0..=64
//! KiB); for an SEV guest, the blob record (kind VCPU_STATE, whose index must be the
//! frame's) around it.
//!
//! **RoundEnd** (8): `round u32 ‖ pages sent u64 ‖ dirty pages remaining u64`.
//!
//! **Manifest** (9): the helper's sealed manifest record, 160 bytes verbatim
//! (`helper_abi::record::MANIFEST_RECORD_SIZE`), its header of kind MANIFEST; its
//! encrypted payload counts the pages and records and lists each lane's last sequence
//! number. A version-1 manifest (96 bytes) is refused.
//!
//! **Ready** (17): empty.
//!
//! **Done** (10): empty (plain guests), or the source helper's sealed commit record, 80
//! bytes (`helper_abi::record::COMMIT_RECORD_SIZE`, kind COMMIT).
//!
//! **AbortToken** (18): `tag [32]`, HMAC-SHA256 under the session's abort key over the
//! transcript hash: the target helper's promise never to commit the session.

use std::fmt;
use std::io::{self, Write};

use thiserror::Error;

mod control;
mod hello;
mod helper;
mod machine;
mod pages;
mod session;

pub use control::{Abort, Ack, Done, FailureCode, HelloAck};
pub use hello::{GpaRange, GuestMode, Hello, HelloField, HELLO_FIELD_OPTIONAL, HELLO_GUEST_CPU};
pub use helper::{check_record, AbortToken, KeyConfirm, KeyReply, KeyShare, Ready, SharedList};
pub use machine::{DeviceState, Manifest, VcpuState};
pub use pages::{
    BatchCheckError, PageBatch, PageBatchHeader, PageData, PlainPage, PlainPages, RoundEnd,
    SharedRange, SharedRanges,
};
pub use session::{ProtocolError, ReceiverState};

/// The protocol version this build writes. Version 2: the helpers' authenticated key
/// agreement, sealed shared list, device and vCPU state, the commit (Ready, Done with
/// the commit record) and the target's abort token.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest version this build reads: N-1, but never 0 (no version 0 exists).
pub const MIN_PROTOCOL_VERSION: u16 = if PROTOCOL_VERSION > 1 {
    PROTOCOL_VERSION - 1
} else {
    1
};

/// The versions a receiver accepts: N and N-1.
pub const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u16> =
    MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"SMIG";

/// The page size of the protocol: the only one a Hello may announce.
pub const PAGE_SIZE: usize = helper_abi::PAGE_SIZE;

/// Cap on a Hello payload.
pub const MAX_HELLO_LEN: usize = 4096;
/// Most RAM ranges a Hello carries.
pub const MAX_RAM_RANGES: usize = 64;
/// Most source helper vCPUs (record headers carry the lane in a byte).
pub const MAX_LANES: u16 = 256;
/// Most vCPUs a guest may have (KVM's default `KVM_MAX_VCPUS` on x86).
pub const MAX_VCPUS: u32 = 1024;
/// Cap on a reason string (HelloAck, Ack, Abort), in bytes of UTF-8.
pub const MAX_REASON_LEN: usize = 1024;
/// Most sealed records in a PageBatch: one helper window (helper-abi `MAX_BATCH`).
pub const MAX_BATCH_RECORDS: usize = helper_abi::MAX_BATCH;
/// Bytes of a PageBatch payload before the records.
pub const PAGE_BATCH_HEADER_LEN: usize = 12;
/// Cap on the record bytes of a PageBatch: a full window of page records.
pub const MAX_BATCH_RECORD_BYTES: usize = MAX_BATCH_RECORDS * helper_abi::record::PAGE_RECORD_SIZE;
/// Most entries in a PlainPages frame.
pub const MAX_PLAIN_PAGES: usize = 256;
/// Bytes of a PlainPages payload before the entries.
pub const PLAIN_PAGES_HEADER_LEN: usize = 8;
/// Bytes of a PlainPages entry before its page data (gpa, flags).
pub const PLAIN_ENTRY_HEADER_LEN: usize = 9;
/// Most ranges in a SharedRanges frame.
pub const MAX_SHARED_RANGES: usize = 65536;
/// Bytes a blob record adds to its blob (header and tag).
pub const RECORD_OVERHEAD: usize = helper_abi::record::HEADER_SIZE + helper_abi::record::TAG_SIZE;
/// Cap on a DeviceState blob: the VMM's state (1 MiB), and for SEV guests the helper's
/// record around it.
pub const MAX_DEVICE_STATE_LEN: usize = helper_abi::record::MAX_DEVICE_STATE_LEN + RECORD_OVERHEAD;
/// Cap on a VcpuState blob: 64 KiB, and for SEV guests the record around it.
pub const MAX_VCPU_STATE_LEN: usize = helper_abi::record::MAX_VCPU_STATE_LEN + RECORD_OVERHEAD;
/// Size of a RoundEnd payload.
pub const ROUND_END_LEN: usize = 20;
/// Size of a Manifest payload: one sealed manifest record.
pub const MANIFEST_LEN: usize = helper_abi::record::MANIFEST_RECORD_SIZE;
/// Size of a version-1 Manifest payload (decoded only to be refused: version 1 has no
/// authenticated key agreement).
pub const MANIFEST_V1_LEN: usize = 96;
/// Size of an SEV Done payload: the source helper's sealed commit record.
pub const COMMIT_LEN: usize = helper_abi::record::COMMIT_RECORD_SIZE;
/// Smallest SharedList payload: a record of an empty list.
pub const MIN_SHARED_LIST_LEN: usize = RECORD_OVERHEAD + 8;
/// Largest SharedList payload: a record of a full one-page list.
pub const MAX_SHARED_LIST_LEN: usize = RECORD_OVERHEAD + helper_abi::record::MAX_SHARED_LIST_LEN;

/// The largest payload of any frame type: a buffer this large takes every frame
/// ([`crate::FrameReader::read_frame`]).
pub const MAX_PAYLOAD_LEN: usize = {
    let mut max = 0;
    let mut i = 0;
    while i < MessageType::ALL.len() {
        let (_, hi) = MessageType::ALL[i].payload_bounds();
        if hi > max {
            max = hi;
        }
        i += 1;
    }
    max
};

const _: () = assert!(MAX_PAYLOAD_LEN == PAGE_BATCH_HEADER_LEN + MAX_BATCH_RECORD_BYTES);
const _: () = assert!(MAX_PAYLOAD_LEN <= u32::MAX as usize);
const _: () = assert!(MAX_BATCH_RECORD_BYTES == 256 * 4144);

/// A frame type. The code is the header's type byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// Source → target: what the source is about to send.
    Hello = 1,
    /// Target → source: whether the target takes the migration.
    HelloAck = 2,
    /// Source → target: sealed records of one helper EXPORT.
    PageBatch = 3,
    /// Source → target: pages the host copies itself.
    PlainPages = 4,
    /// Source → target: the pages the guest shares with the host.
    SharedRanges = 5,
    /// Source → target: the VMM's device state.
    DeviceState = 6,
    /// Source → target: one vCPU's state.
    VcpuState = 7,
    /// Source → target: a round is complete.
    RoundEnd = 8,
    /// Source → target: the source helper's sealed manifest.
    Manifest = 9,
    /// Source → target: everything has been sent.
    Done = 10,
    /// Either way: the migration is abandoned.
    Abort = 11,
    /// Target → source: the outcome, after Done.
    Ack = 12,
    /// Source → target: the source helper's key share (version 2).
    KeyShare = 13,
    /// Target → source: the target helper's key share and MAC (version 2).
    KeyReply = 14,
    /// Source → target: the source helper's MAC (version 2).
    KeyConfirm = 15,
    /// Source → target: the guest's shared-page list, sealed (version 2).
    SharedList = 16,
    /// Target → source: manifest verified, waiting for the commit (version 2).
    Ready = 17,
    /// Target → source: the target helper's abort token (version 2).
    AbortToken = 18,
}

/// Who writes a frame type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Only the source writes it.
    SourceToTarget,
    /// Only the target writes it (the return path).
    TargetToSource,
    /// Both do.
    Either,
}

impl MessageType {
    /// Every type, in code order.
    pub const ALL: [MessageType; 18] = [
        MessageType::Hello,
        MessageType::HelloAck,
        MessageType::PageBatch,
        MessageType::PlainPages,
        MessageType::SharedRanges,
        MessageType::DeviceState,
        MessageType::VcpuState,
        MessageType::RoundEnd,
        MessageType::Manifest,
        MessageType::Done,
        MessageType::Abort,
        MessageType::Ack,
        MessageType::KeyShare,
        MessageType::KeyReply,
        MessageType::KeyConfirm,
        MessageType::SharedList,
        MessageType::Ready,
        MessageType::AbortToken,
    ];

    /// The header's type byte.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The type's name, as in this spec.
    pub const fn name(self) -> &'static str {
        match self {
            MessageType::Hello => "Hello",
            MessageType::HelloAck => "HelloAck",
            MessageType::PageBatch => "PageBatch",
            MessageType::PlainPages => "PlainPages",
            MessageType::SharedRanges => "SharedRanges",
            MessageType::DeviceState => "DeviceState",
            MessageType::VcpuState => "VcpuState",
            MessageType::RoundEnd => "RoundEnd",
            MessageType::Manifest => "Manifest",
            MessageType::Done => "Done",
            MessageType::Abort => "Abort",
            MessageType::Ack => "Ack",
            MessageType::KeyShare => "KeyShare",
            MessageType::KeyReply => "KeyReply",
            MessageType::KeyConfirm => "KeyConfirm",
            MessageType::SharedList => "SharedList",
            MessageType::Ready => "Ready",
            MessageType::AbortToken => "AbortToken",
        }
    }

    /// Who writes frames of this type.
    pub const fn direction(self) -> Direction {
        match self {
            MessageType::HelloAck
            | MessageType::Ack
            | MessageType::KeyReply
            | MessageType::Ready
            | MessageType::AbortToken => Direction::TargetToSource,
            MessageType::Abort => Direction::Either,
            MessageType::KeyShare | MessageType::KeyConfirm | MessageType::SharedList => {
                Direction::SourceToTarget
            }
            MessageType::Hello
            | MessageType::PageBatch
            | MessageType::PlainPages
            | MessageType::SharedRanges
            | MessageType::DeviceState
            | MessageType::VcpuState
            | MessageType::RoundEnd
            | MessageType::Manifest
            | MessageType::Done => Direction::SourceToTarget,
        }
    }

    /// The smallest and largest payload a frame of this type may declare. A header that
    /// declares anything else is refused before a payload byte is read.
    pub const fn payload_bounds(self) -> (usize, usize) {
        match self {
            MessageType::Hello => (0, MAX_HELLO_LEN),
            MessageType::HelloAck | MessageType::Abort | MessageType::Ack => {
                (1, 1 + MAX_REASON_LEN)
            }
            MessageType::PageBatch => (
                PAGE_BATCH_HEADER_LEN,
                PAGE_BATCH_HEADER_LEN + MAX_BATCH_RECORD_BYTES,
            ),
            MessageType::PlainPages => (
                PLAIN_PAGES_HEADER_LEN,
                PLAIN_PAGES_HEADER_LEN + MAX_PLAIN_PAGES * (PLAIN_ENTRY_HEADER_LEN + PAGE_SIZE),
            ),
            MessageType::SharedRanges => (4, 4 + 16 * MAX_SHARED_RANGES),
            MessageType::DeviceState => (0, MAX_DEVICE_STATE_LEN),
            MessageType::VcpuState => (4, 4 + MAX_VCPU_STATE_LEN),
            MessageType::RoundEnd => (ROUND_END_LEN, ROUND_END_LEN),
            MessageType::Manifest => (MANIFEST_V1_LEN, MANIFEST_LEN),
            MessageType::Done => (0, COMMIT_LEN),
            MessageType::KeyShare => (
                helper_abi::handshake::KeyShare::SIZE,
                helper_abi::handshake::KeyShare::SIZE,
            ),
            MessageType::KeyReply => (
                helper_abi::handshake::KeyReply::SIZE,
                helper_abi::handshake::KeyReply::SIZE,
            ),
            MessageType::KeyConfirm | MessageType::AbortToken => {
                (helper_abi::DIGEST_LEN, helper_abi::DIGEST_LEN)
            }
            MessageType::SharedList => (MIN_SHARED_LIST_LEN, MAX_SHARED_LIST_LEN),
            MessageType::Ready => (0, 0),
        }
    }

    /// Checks a payload length against this type's bounds.
    pub fn check_len(self, len: usize) -> Result<(), FrameError> {
        let (min, max) = self.payload_bounds();
        if min == max && len != min {
            Err(FrameError::WrongLength {
                kind: self,
                len,
                expected: min,
            })
        } else if len > max {
            Err(FrameError::TooLong {
                kind: self,
                len,
                max,
            })
        } else if len < min {
            Err(FrameError::TooShort {
                kind: self,
                len,
                min,
            })
        } else {
            Ok(())
        }
    }
}

impl TryFrom<u8> for MessageType {
    type Error = FrameError;

    fn try_from(code: u8) -> Result<Self, FrameError> {
        MessageType::ALL
            .into_iter()
            .find(|t| t.code() == code)
            .ok_or(FrameError::UnknownType(code))
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The 12 bytes before every payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// The layout version of this frame.
    pub version: u16,
    /// What the payload is.
    pub kind: MessageType,
    /// Payload length in bytes.
    pub len: u32,
}

impl FrameHeader {
    /// Encoded size.
    pub const SIZE: usize = 12;

    /// A header for a payload of `len` bytes, checked against the type's bounds.
    pub fn new(version: u16, kind: MessageType, len: usize) -> Result<FrameHeader, FrameError> {
        check_version(version)?;
        kind.check_len(len)?;
        let len = u32::try_from(len).map_err(|_| FrameError::TooLong {
            kind,
            len,
            max: kind.payload_bounds().1,
        })?;
        Ok(FrameHeader { version, kind, len })
    }

    /// The header's bytes.
    pub fn encode(&self) -> [u8; FrameHeader::SIZE] {
        let mut b = [0u8; FrameHeader::SIZE];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&self.version.to_le_bytes());
        b[6] = self.kind.code();
        b[7] = 0;
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b
    }

    /// Decodes and checks a header: magic, then version (so that a newer peer's frames
    /// read as "unsupported version", not "unknown type"), type, flags, and the payload
    /// length against the type's bounds.
    pub fn decode(b: &[u8; FrameHeader::SIZE]) -> Result<FrameHeader, FrameError> {
        let [m0, m1, m2, m3, v0, v1, kind, flags, l0, l1, l2, l3] = *b;
        let magic = [m0, m1, m2, m3];
        if magic != MAGIC {
            return Err(FrameError::BadMagic { found: magic });
        }
        let version = u16::from_le_bytes([v0, v1]);
        check_version(version)?;
        let kind = MessageType::try_from(kind)?;
        if flags != 0 {
            return Err(FrameError::ReservedFlags { kind, flags });
        }
        let len = u32::from_le_bytes([l0, l1, l2, l3]);
        kind.check_len(len as usize)?;
        Ok(FrameHeader { version, kind, len })
    }
}

/// Checks that this build reads `version` (N or N-1).
pub fn check_version(version: u16) -> Result<(), FrameError> {
    if SUPPORTED_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(FrameError::UnsupportedVersion {
            found: version,
            min: MIN_PROTOCOL_VERSION,
            max: PROTOCOL_VERSION,
        })
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The stream does not start a frame here.
    #[error("bad frame magic {found:02x?}, expected \"SMIG\": the peer is not speaking the sevmirror migration protocol, or the stream lost sync")]
    BadMagic {
        /// The four bytes found.
        found: [u8; 4],
    },
    /// A version this build does not read.
    #[error("protocol version {found} is not supported: this build accepts versions {min} to {max} (its own and the one before)")]
    UnsupportedVersion {
        /// The version in the frame.
        found: u16,
        /// Oldest version accepted.
        min: u16,
        /// Newest version accepted.
        max: u16,
    },
    /// A type byte no frame type has.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// The header's reserved flags byte is not zero.
    #[error("{kind} frame header has reserved flags {flags:#04x} set")]
    ReservedFlags {
        /// The frame type.
        kind: MessageType,
        /// The flags byte.
        flags: u8,
    },
    /// A payload larger than its type allows.
    #[error("{kind} payload of {len} bytes exceeds the {max}-byte cap")]
    TooLong {
        /// The frame type.
        kind: MessageType,
        /// The declared or given length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// A payload smaller than its type needs.
    #[error("{kind} payload of {len} bytes is shorter than the {min}-byte minimum")]
    TooShort {
        /// The frame type.
        kind: MessageType,
        /// The declared length.
        len: usize,
        /// The minimum.
        min: usize,
    },
    /// A fixed-size payload of the wrong size.
    #[error("{kind} payload is {len} bytes, expected exactly {expected}")]
    WrongLength {
        /// The frame type.
        kind: MessageType,
        /// The declared length.
        len: usize,
        /// The fixed size.
        expected: usize,
    },
    /// The payload ends inside a field.
    #[error(
        "{kind} payload ends inside {field} at offset {offset}: {need} bytes needed, {have} left"
    )]
    Truncated {
        /// The frame type.
        kind: MessageType,
        /// The field being read.
        field: &'static str,
        /// Payload offset of the field.
        offset: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left in the payload.
        have: usize,
    },
    /// Bytes after the last field.
    #[error("{kind} payload has {extra} bytes after its last field at offset {offset}")]
    TrailingBytes {
        /// The frame type.
        kind: MessageType,
        /// Payload offset where the extra bytes start.
        offset: usize,
        /// How many.
        extra: usize,
    },
    /// A Hello field tag that is neither known nor marked optional.
    #[error("Hello field with unknown tag {tag:#06x} at offset {offset} is not marked optional (bit 15)")]
    UnknownField {
        /// The tag.
        tag: u16,
        /// Payload offset of the field.
        offset: usize,
    },
    /// A Hello field that appears twice.
    #[error("Hello field {name} (tag {tag:#06x}) appears twice, again at offset {offset}")]
    DuplicateField {
        /// The field's name (or "optional field" for an unknown optional tag).
        name: &'static str,
        /// The tag.
        tag: u16,
        /// Payload offset of the second occurrence.
        offset: usize,
    },
    /// A mandatory Hello field that is absent.
    #[error("Hello lacks the mandatory field {0}")]
    MissingField(HelloField),
    /// A field's value is out of range or inconsistent.
    #[error("{kind} {field}: {problem}")]
    Invalid {
        /// The frame type.
        kind: MessageType,
        /// The field.
        field: &'static str,
        /// What is wrong, with the values involved.
        problem: String,
    },
    /// Writing the frame failed.
    #[error("writing a {kind} frame failed")]
    Write {
        /// The frame type.
        kind: MessageType,
        /// The writer's error.
        #[source]
        source: io::Error,
    },
}

impl FrameError {
    /// The failure code to put in the Abort or refusal that answers this error.
    pub fn failure_code(&self) -> FailureCode {
        match self {
            FrameError::UnsupportedVersion { .. } => FailureCode::UnsupportedVersion,
            FrameError::Write { .. } => FailureCode::Internal,
            FrameError::BadMagic { .. }
            | FrameError::UnknownType(_)
            | FrameError::ReservedFlags { .. }
            | FrameError::TooLong { .. }
            | FrameError::TooShort { .. }
            | FrameError::WrongLength { .. }
            | FrameError::Truncated { .. }
            | FrameError::TrailingBytes { .. }
            | FrameError::UnknownField { .. }
            | FrameError::DuplicateField { .. }
            | FrameError::MissingField(_)
            | FrameError::Invalid { .. } => FailureCode::Protocol,
        }
    }
}

pub(crate) fn invalid(kind: MessageType, field: &'static str, problem: String) -> FrameError {
    FrameError::Invalid {
        kind,
        field,
        problem,
    }
}

/// One decoded frame. Byte-carrying frames borrow from the payload buffer they were
/// decoded from (no copy of records, pages or blobs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`HelloAck`].
    HelloAck(HelloAck),
    /// See [`PageBatch`].
    PageBatch(PageBatch<'a>),
    /// See [`PlainPages`].
    PlainPages(PlainPages<'a>),
    /// See [`SharedRanges`].
    SharedRanges(SharedRanges),
    /// See [`DeviceState`].
    DeviceState(DeviceState<'a>),
    /// See [`VcpuState`].
    VcpuState(VcpuState<'a>),
    /// See [`RoundEnd`].
    RoundEnd(RoundEnd),
    /// See [`Manifest`].
    Manifest(Manifest),
    /// See [`Done`].
    Done(Done),
    /// See [`Abort`].
    Abort(Abort),
    /// See [`Ack`].
    Ack(Ack),
    /// See [`KeyShare`].
    KeyShare(KeyShare),
    /// See [`KeyReply`].
    KeyReply(KeyReply),
    /// See [`KeyConfirm`].
    KeyConfirm(KeyConfirm),
    /// See [`SharedList`].
    SharedList(SharedList<'a>),
    /// See [`Ready`].
    Ready(Ready),
    /// See [`AbortToken`].
    AbortToken(AbortToken),
}

impl<'a> Frame<'a> {
    /// The frame's type.
    pub fn message_type(&self) -> MessageType {
        match self {
            Frame::Hello(_) => MessageType::Hello,
            Frame::HelloAck(_) => MessageType::HelloAck,
            Frame::PageBatch(_) => MessageType::PageBatch,
            Frame::PlainPages(_) => MessageType::PlainPages,
            Frame::SharedRanges(_) => MessageType::SharedRanges,
            Frame::DeviceState(_) => MessageType::DeviceState,
            Frame::VcpuState(_) => MessageType::VcpuState,
            Frame::RoundEnd(_) => MessageType::RoundEnd,
            Frame::Manifest(_) => MessageType::Manifest,
            Frame::Done(_) => MessageType::Done,
            Frame::Abort(_) => MessageType::Abort,
            Frame::Ack(_) => MessageType::Ack,
            Frame::KeyShare(_) => MessageType::KeyShare,
            Frame::KeyReply(_) => MessageType::KeyReply,
            Frame::KeyConfirm(_) => MessageType::KeyConfirm,
            Frame::SharedList(_) => MessageType::SharedList,
            Frame::Ready(_) => MessageType::Ready,
            Frame::AbortToken(_) => MessageType::AbortToken,
        }
    }

    /// Decodes the payload of a frame whose header was already checked. `payload` must be
    /// exactly `header.len` bytes.
    pub fn decode(header: &FrameHeader, payload: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let kind = header.kind;
        if payload.len() != header.len as usize {
            return Err(FrameError::WrongLength {
                kind,
                len: payload.len(),
                expected: header.len as usize,
            });
        }
        kind.check_len(payload.len())?;
        let v = header.version;
        Ok(match kind {
            MessageType::Hello => Frame::Hello(Hello::decode(v, payload)?),
            MessageType::HelloAck => Frame::HelloAck(HelloAck::decode(v, payload)?),
            MessageType::PageBatch => Frame::PageBatch(PageBatch::decode(v, payload)?),
            MessageType::PlainPages => Frame::PlainPages(PlainPages::decode(v, payload)?),
            MessageType::SharedRanges => Frame::SharedRanges(SharedRanges::decode(v, payload)?),
            MessageType::DeviceState => Frame::DeviceState(DeviceState::decode(v, payload)?),
            MessageType::VcpuState => Frame::VcpuState(VcpuState::decode(v, payload)?),
            MessageType::RoundEnd => Frame::RoundEnd(RoundEnd::decode(v, payload)?),
            MessageType::Manifest => Frame::Manifest(Manifest::decode(v, payload)?),
            MessageType::Done => Frame::Done(Done::decode(v, payload)?),
            MessageType::Abort => Frame::Abort(Abort::decode(v, payload)?),
            MessageType::Ack => Frame::Ack(Ack::decode(v, payload)?),
            MessageType::KeyShare => Frame::KeyShare(KeyShare::decode(v, payload)?),
            MessageType::KeyReply => Frame::KeyReply(KeyReply::decode(v, payload)?),
            MessageType::KeyConfirm => Frame::KeyConfirm(KeyConfirm::decode(v, payload)?),
            MessageType::SharedList => Frame::SharedList(SharedList::decode(v, payload)?),
            MessageType::Ready => Frame::Ready(Ready::decode(v, payload)?),
            MessageType::AbortToken => Frame::AbortToken(AbortToken::decode(v, payload)?),
        })
    }

    /// Writes the frame (header and payload).
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        match self {
            Frame::Hello(m) => m.encode(w),
            Frame::HelloAck(m) => m.encode(w),
            Frame::PageBatch(m) => m.encode(w),
            Frame::PlainPages(m) => m.encode(w),
            Frame::SharedRanges(m) => m.encode(w),
            Frame::DeviceState(m) => m.encode(w),
            Frame::VcpuState(m) => m.encode(w),
            Frame::RoundEnd(m) => m.encode(w),
            Frame::Manifest(m) => m.encode(w),
            Frame::Done(m) => m.encode(w),
            Frame::Abort(m) => m.encode(w),
            Frame::Ack(m) => m.encode(w),
            Frame::KeyShare(m) => m.encode(w),
            Frame::KeyReply(m) => m.encode(w),
            Frame::KeyConfirm(m) => m.encode(w),
            Frame::SharedList(m) => m.encode(w),
            Frame::Ready(m) => m.encode(w),
            Frame::AbortToken(m) => m.encode(w),
        }
    }
}

/// Writes a frame: the header and `head` in one `write_all` (both small), then `body`
/// straight from the caller's buffer. The version is the caller's to check (the frozen
/// reply layouts may be written in a version this build does not read).
pub(crate) fn write_frame(
    w: &mut impl Write,
    version: u16,
    kind: MessageType,
    head: &[u8],
    body: &[u8],
) -> Result<(), FrameError> {
    let len = head
        .len()
        .checked_add(body.len())
        .ok_or(FrameError::TooLong {
            kind,
            len: usize::MAX,
            max: kind.payload_bounds().1,
        })?;
    kind.check_len(len)?;
    let header = FrameHeader {
        version,
        kind,
        // check_len bounds it by the type's cap, below u32::MAX.
        len: len as u32,
    };
    let mut first = Vec::with_capacity(FrameHeader::SIZE + head.len());
    first.extend_from_slice(&header.encode());
    first.extend_from_slice(head);
    let result = w.write_all(&first).and_then(|()| {
        if body.is_empty() {
            Ok(())
        } else {
            w.write_all(body)
        }
    });
    result.map_err(|source| FrameError::Write { kind, source })
}

/// A bounds-checked little-endian reader over one payload. Every read goes through
/// `get()`; running off the end is [`FrameError::Truncated`], never a panic.
pub(crate) struct Parser<'a> {
    kind: MessageType,
    buf: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    pub(crate) fn new(kind: MessageType, buf: &'a [u8]) -> Parser<'a> {
        Parser { kind, buf, at: 0 }
    }

    pub(crate) fn offset(&self) -> usize {
        self.at
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.at)
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], FrameError> {
        let slice = self
            .at
            .checked_add(n)
            .and_then(|end| self.buf.get(self.at..end))
            .ok_or(FrameError::Truncated {
                kind: self.kind,
                field,
                offset: self.at,
                need: n,
                have: self.remaining(),
            })?;
        self.at += n;
        Ok(slice)
    }

    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], FrameError> {
        let s = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.at..).unwrap_or(&[]);
        self.at = self.buf.len();
        rest
    }

    /// Fails if bytes are left.
    pub(crate) fn finish(self) -> Result<(), FrameError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(FrameError::TrailingBytes {
                kind: self.kind,
                offset: self.at,
                extra,
            }),
        }
    }
}

/// Is `v` a multiple of the page size?
pub(crate) fn page_aligned(v: u64) -> bool {
    v % PAGE_SIZE as u64 == 0
}

#[cfg(test)]
pub(crate) mod tests;
