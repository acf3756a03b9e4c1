//! State the helper keeps across requests: the session (shared by all helper vCPUs, in
//! the helper region) and each vCPU's lane.
//!
//! Every field is valid when zeroed, so the firmware creates the state by zeroing
//! reserved memory. Shared fields are atomics; the key bytes are written only while the
//! state word says DERIVING (one vCPU won the compare-exchange) and read only once it
//! says KEYED.

use crate::crypto::{self, RecordKey};
use core::{
    cell::UnsafeCell,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
};

/// No session.
pub const NONE: u32 = 0;
/// One vCPU is deriving keys.
pub const DERIVING: u32 = 1;
/// Keys are ready.
pub const KEYED: u32 = 2;
/// The manifest was produced (source) or verified (target): no more pages move.
pub const FINISHED: u32 = 3;
/// One vCPU is resetting the session.
pub const RESETTING: u32 = 4;

/// The session shared by all helper vCPUs.
#[repr(C)]
pub struct SessionState {
    /// NONE, DERIVING, KEYED, FINISHED or RESETTING.
    pub state: AtomicU32,
    /// helper-abi `Role` value.
    pub role: AtomicU32,
    /// Bumped whenever keys change, so lanes notice and re-key.
    pub generation: AtomicU32,
    _pad: u32,
    key: UnsafeCell<[u8; 32]>,
    session_id: UnsafeCell<[u8; 16]>,
    nonce: UnsafeCell<[u8; 16]>,
    /// Requests served by all vCPUs.
    pub requests: AtomicU64,
    /// Page bytes sealed.
    pub bytes_sealed: AtomicU64,
    /// Page bytes opened.
    pub bytes_opened: AtomicU64,
    /// Zero-page records sealed or opened.
    pub zero_pages: AtomicU64,
}

// SAFETY: the UnsafeCell fields are written only by the vCPU that moved `state` from
// NONE to DERIVING (or from KEYED/FINISHED to RESETTING) with a compare-exchange, and
// read only after an acquire load observes KEYED or FINISHED, which the writer
// published with a release store after writing.
unsafe impl Sync for SessionState {}

impl Default for SessionState {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionState {
    /// A state with no session (the same as zeroed memory).
    pub const fn new() -> Self {
        SessionState {
            state: AtomicU32::new(NONE),
            role: AtomicU32::new(0),
            generation: AtomicU32::new(0),
            _pad: 0,
            key: UnsafeCell::new([0; 32]),
            session_id: UnsafeCell::new([0; 16]),
            nonce: UnsafeCell::new([0; 16]),
            requests: AtomicU64::new(0),
            bytes_sealed: AtomicU64::new(0),
            bytes_opened: AtomicU64::new(0),
            zero_pages: AtomicU64::new(0),
        }
    }

    /// Installs keys: the caller must have moved `state` NONE -> DERIVING.
    pub(crate) fn install(
        &self,
        role: u32,
        key: &[u8; 32],
        session_id: &[u8; 16],
        nonce: &[u8; 16],
    ) {
        // SAFETY: exclusive by the DERIVING protocol (see the Sync impl).
        unsafe {
            *self.key.get() = *key;
            *self.session_id.get() = *session_id;
            *self.nonce.get() = *nonce;
        }
        self.role.store(role, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.state.store(KEYED, Ordering::Release);
    }

    /// Wipes the keys: the caller must have moved `state` to RESETTING.
    pub(crate) fn wipe(&self) {
        // SAFETY: exclusive by the RESETTING protocol (see the Sync impl).
        unsafe {
            crypto::wipe(&mut *self.key.get());
            *self.session_id.get() = [0; 16];
            *self.nonce.get() = [0; 16];
        }
        self.role.store(0, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.state.store(NONE, Ordering::Release);
    }

    /// The record key and the source nonce, if keys are ready (KEYED or FINISHED).
    pub(crate) fn key(&self) -> Option<(RecordKey, [u8; 16])> {
        match self.state.load(Ordering::Acquire) {
            KEYED | FINISHED => {
                // SAFETY: published before KEYED with a release store (see the Sync impl).
                let (key, id, nonce) =
                    unsafe { (*self.key.get(), *self.session_id.get(), *self.nonce.get()) };
                Some((RecordKey::new(&key, id), nonce))
            }
            _ => None,
        }
    }
}

/// One helper vCPU's private state: its lane's sequence numbers and cached key.
pub struct LaneState {
    /// The lane (the helper vCPU index).
    pub lane: u8,
    /// Next sequence number this lane seals (source) or expects (target).
    pub next_seq: u64,
    generation: u32,
    key: Option<RecordKey>,
}

impl LaneState {
    /// A fresh lane.
    pub fn new(lane: u8) -> Self {
        LaneState {
            lane,
            next_seq: 1,
            generation: 0,
            key: None,
        }
    }

    /// The session key for this lane, re-derived (and the sequence restarted) when the
    /// session changed since the lane last used it.
    pub(crate) fn key(&mut self, session: &SessionState) -> Option<&RecordKey> {
        let generation = session.generation.load(Ordering::Acquire);
        if self.key.is_none() || self.generation != generation {
            let (key, _) = session.key()?;
            self.key = Some(key);
            self.generation = generation;
            self.next_seq = 1;
        }
        self.key.as_ref()
    }
}
