//! State the helper keeps across requests, in its private region: the session all
//! helper vCPUs share, the lanes, and the commitment that outlives sessions.
//!
//! Every field is an atomic and valid when zeroed, so the firmware creates the state by
//! zeroing reserved memory, and no interleaving of helper vCPUs can be undefined
//! behaviour. Which interleavings are *meaningful* is the [`Gate`]'s job: key material
//! is written only by a request that holds the session alone and read only by requests
//! inside it, so a request never sees keys half-written or wiped under it.

use crate::gate::Gate;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use helper_abi::{mailbox::Status, MAX_LANES};

/// `W` 64-bit words of bytes (keys, hashes, nonces), stored as atomics.
pub struct Words<const W: usize>([AtomicU64; W]);

impl<const W: usize> Default for Words<W> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const W: usize> Words<W> {
    /// All zero.
    pub const fn new() -> Self {
        Words([const { AtomicU64::new(0) }; W])
    }

    /// Reads the bytes into `out` (which must be `8 * W` long).
    pub fn load_into(&self, out: &mut [u8]) {
        for (w, chunk) in self.0.iter().zip(out.chunks_exact_mut(8)) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
    }

    /// Writes the bytes from `data` (which must be `8 * W` long).
    pub fn store_from(&self, data: &[u8]) {
        for (w, chunk) in self.0.iter().zip(data.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
    }

    /// Zeroes the bytes.
    pub fn wipe(&self) {
        for w in &self.0 {
            w.store(0, Ordering::Relaxed);
        }
    }
}

/// 32 bytes.
pub type Bytes32 = Words<4>;
/// 16 bytes.
pub type Bytes16 = Words<2>;

impl Bytes32 {
    /// The bytes.
    pub fn load(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        self.load_into(&mut b);
        b
    }
}

impl Bytes16 {
    /// The bytes.
    pub fn load(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        self.load_into(&mut b);
        b
    }
}

/// One lane id's place in the session.
#[derive(Default)]
pub struct LaneSlot {
    /// Source: the last sequence number this lane sealed. Target: the last one it
    /// accepted from the source's lane of this id.
    pub seq: AtomicU64,
    /// Target: a helper vCPU is opening this lane's records (one at a time, in order).
    pub busy: AtomicU32,
}

impl LaneSlot {
    /// A lane that sealed or accepted nothing.
    pub const fn new() -> Self {
        LaneSlot {
            seq: AtomicU64::new(0),
            busy: AtomicU32::new(0),
        }
    }
}

/// What the source keeps of a committed session, across RESET and new sessions, until
/// an abort of that very session verifies.
#[derive(Default)]
pub struct Commitment {
    /// 1 while committed.
    pub committed: AtomicU32,
    /// The committed session's transcript hash.
    pub transcript: Bytes32,
    /// The abort token the target's helper would send for it (computed at commit, so
    /// it can be checked after the session's keys are gone).
    pub target_token: Bytes32,
}

impl Commitment {
    /// No commitment.
    pub const fn new() -> Self {
        Commitment {
            committed: AtomicU32::new(0),
            transcript: Words::new(),
            target_token: Words::new(),
        }
    }

    /// Whether a session is committed.
    pub fn is_committed(&self) -> bool {
        self.committed.load(Ordering::Acquire) != 0
    }
}

/// The session shared by all helper vCPUs, and what outlives it. `repr(C)`, so that
/// [`REQUESTS_OFFSET`] is the same in every image built from this source.
#[derive(Default)]
#[repr(C)]
pub struct SessionState {
    /// Phase and requests inside.
    pub gate: Gate,
    /// Lane ids handed out (bit per id): each at most once per boot.
    claimed: AtomicU32,
    /// 1 while the guest was booted for an incoming migration and never ran (cleared
    /// when the target commits, for good).
    incoming: AtomicU32,
    /// Bumped whenever a session is keyed.
    pub generation: AtomicU32,
    /// The session id the VMMs agreed on.
    pub session_id: Bytes16,
    /// Source between HS_START and HS_FINISH: the Hello hash, own nonce, share and
    /// ephemeral secret.
    pub hello_hash: Bytes32,
    /// See `hello_hash`.
    pub own_nonce: Bytes32,
    /// See `hello_hash`.
    pub own_share: Bytes32,
    /// See `hello_hash`; wiped by HS_FINISH whatever its outcome.
    pub ephemeral: Bytes32,
    /// Target between HS_RESPOND and HS_CONFIRM: the source MAC to expect.
    pub expected_mac: Bytes32,
    /// The transcript hash.
    pub transcript: Bytes32,
    /// AES-256-GCM key of records.
    pub record_key: Bytes32,
    /// HMAC key of blob records.
    pub blob_key: Bytes32,
    /// HMAC key of the target's abort token.
    pub abort_key: Bytes32,
    /// SHA-256 of the manifest payload sealed (source) or verified (target).
    pub manifest_digest: Bytes32,
    /// Per lane id.
    pub lanes: [LaneSlot; MAX_LANES],
    /// Records sealed (source) or accepted (target) in this session.
    pub records: AtomicU64,
    /// Kept across sessions: the committed session (source).
    pub commitment: Commitment,
    /// Requests served by all vCPUs.
    pub requests: AtomicU64,
    /// Page bytes sealed.
    pub bytes_sealed: AtomicU64,
    /// Page bytes opened.
    pub bytes_opened: AtomicU64,
    /// Zero-page records sealed or opened.
    pub zero_pages: AtomicU64,
    /// The AES-256-GCM kernel the session's records run on, as the handshake asked for
    /// it (helper-abi `GcmKernel`; 0: the fastest the CPU supports).
    pub kernel: AtomicU32,
}

/// Where [`SessionState::requests`] lies in the state. The firmware's helper context
/// starts with the state, so a test OS that ignores its memory map finds the helper's
/// request count there (the `scribble` option waits for the first request).
pub const REQUESTS_OFFSET: usize = core::mem::offset_of!(SessionState, requests);

impl SessionState {
    /// A state with no session (the same as zeroed memory).
    pub const fn new() -> Self {
        SessionState {
            gate: Gate::new(),
            claimed: AtomicU32::new(0),
            incoming: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            session_id: Words::new(),
            hello_hash: Words::new(),
            own_nonce: Words::new(),
            own_share: Words::new(),
            ephemeral: Words::new(),
            expected_mac: Words::new(),
            transcript: Words::new(),
            record_key: Words::new(),
            blob_key: Words::new(),
            abort_key: Words::new(),
            manifest_digest: Words::new(),
            lanes: [const { LaneSlot::new() }; MAX_LANES],
            records: AtomicU64::new(0),
            commitment: Commitment::new(),
            requests: AtomicU64::new(0),
            bytes_sealed: AtomicU64::new(0),
            bytes_opened: AtomicU64::new(0),
            zero_pages: AtomicU64::new(0),
            kernel: AtomicU32::new(0),
        }
    }

    /// Marks the guest as booted for an incoming migration (firmware, at boot, before
    /// any helper vCPU exists).
    pub fn set_incoming(&self) {
        self.incoming.store(1, Ordering::Release);
    }

    /// Whether the guest is incoming and never ran.
    pub fn incoming(&self) -> bool {
        self.incoming.load(Ordering::Acquire) != 0
    }

    /// The guest will run: it is no longer incoming, for good.
    pub(crate) fn clear_incoming(&self) {
        self.incoming.store(0, Ordering::Release);
    }

    /// Takes lane id `lane` for the helper vCPU serving mailbox `slot`. Each id is taken
    /// at most once per boot: a second vCPU asking for an id in use (two vCPUs on one
    /// lane, a re-attached mirror) is refused, so no two vCPUs ever seal under one nonce
    /// prefix.
    pub fn claim_lane(&self, lane: u32, slot: u32) -> Result<LaneState, Status> {
        if lane as usize >= MAX_LANES {
            return Err(Status::BAD_STATE);
        }
        let bit = 1u32 << lane;
        let before = self.claimed.fetch_or(bit, Ordering::AcqRel);
        if before & bit != 0 {
            return Err(Status::BUSY);
        }
        Ok(LaneState {
            lane: lane as u8,
            slot,
        })
    }

    /// Forgets the session: keys, transcript, lanes, counts. Callers hold the session
    /// alone. Never touches the commitment or the incoming flag.
    pub(crate) fn wipe(&self) {
        for w in [
            &self.hello_hash,
            &self.own_nonce,
            &self.own_share,
            &self.ephemeral,
            &self.expected_mac,
            &self.transcript,
            &self.record_key,
            &self.blob_key,
            &self.abort_key,
            &self.manifest_digest,
        ] {
            w.wipe();
        }
        self.session_id.wipe();
        self.kernel.store(0, Ordering::Relaxed);
        self.restart_lanes();
    }

    /// Zero sequence numbers and counts, for a freshly keyed session. Callers hold the
    /// session alone.
    pub(crate) fn restart_lanes(&self) {
        for l in &self.lanes {
            l.seq.store(0, Ordering::Relaxed);
            l.busy.store(0, Ordering::Relaxed);
        }
        self.records.store(0, Ordering::Relaxed);
    }
}

/// A helper vCPU's identity: the lane id it seals with and the mailbox it serves. Only
/// [`SessionState::claim_lane`] makes one.
#[derive(Debug, PartialEq, Eq)]
pub struct LaneState {
    lane: u8,
    slot: u32,
}

impl LaneState {
    /// The lane id (the first byte of this vCPU's nonces).
    pub fn lane(&self) -> u8 {
        self.lane
    }

    /// The mailbox slot.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_id_is_handed_out_once() {
        let s = SessionState::new();
        let a = s.claim_lane(0, 0).unwrap();
        assert_eq!((a.lane(), a.slot()), (0, 0));
        assert_eq!(s.claim_lane(0, 1), Err(Status::BUSY));
        assert!(s.claim_lane(1, 1).is_ok());
        assert_eq!(s.claim_lane(MAX_LANES as u32, 2), Err(Status::BAD_STATE));
    }

    #[test]
    fn words_round_trip_and_wipe() {
        let w = Bytes32::new();
        let v: [u8; 32] = core::array::from_fn(|i| i as u8);
        w.store_from(&v);
        assert_eq!(w.load(), v);
        w.wipe();
        assert_eq!(w.load(), [0; 32]);
    }
}
