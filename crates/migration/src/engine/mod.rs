//! The migration engine: precopy on the source, apply-and-verify on the target, as
//! sequential state machines over a byte stream.
//!
//! The engine knows the protocol and the precopy policy; it reaches the VM only through
//! the traits here, which the VMM implements (and tests implement over plain memory and
//! the real helper logic of `mirror-helper`). It never sees plaintext of private pages:
//! those leave the source only as records sealed by the source's helper and enter the
//! target only through the target's helper, which verifies them.
//!
//! Failure rules: any error before the source pauses its guest leaves the guest running;
//! after the pause, the source resumes it unless its helper committed. The commit (SEV)
//! comes after the target's helper verified the manifest and said Ready; from then on the
//! source resumes only when the target helper's abort token for the session verifies,
//! and otherwise stays stopped ([`Status::AwaitingAbort`], [`MigrationError::Committed`]):
//! a guest never runs in two places. The target runs the guest only after its helper
//! verified every record, the manifest and the source helper's commit record.

pub mod source;
pub mod target;

#[cfg(test)]
mod tests;

use crate::{
    codec::CodecError,
    frames::{FailureCode, FrameError},
};
use std::{sync::Mutex, time::Duration};

pub use source::{migrate, RecordSink, Sealed, Sealer, SourceOptions, SourceVm, ZeroPages};
pub use target::{receive, BatchWindow, LocalGuest, Opener, PendingCommit, Received, TargetVm};

/// The error of a VM or helper behind the engine's traits ([`SourceVm`], [`TargetVm`],
/// [`Sealer`], [`Opener`]): the implementation's own `thiserror` enum, boxed. Boxing keeps
/// the traits object-safe and this crate independent of the VMM, while the error keeps its
/// type (callers may downcast it) and its chain of causes.
pub type PartError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The stream failed (I/O, framing, or a frame in the wrong place).
    #[error("migration stream")]
    Stream(#[from] CodecError),
    /// Writing to the peer failed.
    #[error("cannot send to the peer")]
    Send(#[from] FrameError),
    /// The target refused the guest.
    #[error("the target refused the migration ({code}): {reason}")]
    Refused {
        /// Why, as a code.
        code: FailureCode,
        /// Why, in words.
        reason: String,
    },
    /// The peer gave up.
    #[error("the peer aborted the migration ({code}): {reason}")]
    Aborted {
        /// Why, as a code.
        code: FailureCode,
        /// Why, in words.
        reason: String,
    },
    /// The two sides do not describe the same guest.
    #[error("the source and the target do not match: {0}")]
    Incompatible(String),
    /// The target's CPU lacks features the guest was given on the source.
    #[error("the target cannot run the guest")]
    Cpu(#[source] Box<crate::cpu::CpuMismatch>),
    /// A frame breaks a rule the codec cannot check alone.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A record or the manifest breaks a rule of the stream (checked by the engine).
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// The migration helper refused a record or the manifest, or could not serve.
    #[error("the migration helper")]
    Helper(#[source] PartError),
    /// The VM could not do its part.
    #[error("the VM")]
    Vm(#[source] PartError),
    /// The connection to the peer could not be made or set up.
    #[error("the migration connection")]
    Transport(#[from] crate::transport::TransportError),
    /// An SEV guest was to migrate without its helper, or a plain guest with one.
    #[error("an SEV guest needs its helper, a plain guest none")]
    HelperMismatch,
    /// The helper finished a batch the stream cannot describe.
    #[error(
        "the helper returned a batch of {bytes} bytes on lane {lane}, more than a frame carries"
    )]
    OversizedBatch {
        /// The lane.
        lane: usize,
        /// Bytes of records.
        bytes: usize,
    },
    /// The operator cancelled.
    #[error("the migration was cancelled")]
    Cancelled,
    /// The target never confirmed.
    #[error("the target did not confirm the migration within {0:?}")]
    NoConfirmation(Duration),
    /// The source's helper committed the session and no abort of it came back: the guest
    /// is "migrated out" and stays stopped until the target's helper or the guest owner
    /// aborts this session (its transcript hash names it).
    #[error("the guest committed to the target (session {}) and the target did not confirm: {reason}; it stays stopped until the target's abort token or the guest owner's abort for this session releases it", hex(transcript))]
    Committed {
        /// The committed session's transcript hash.
        transcript: [u8; 32],
        /// What went wrong after the commit.
        reason: String,
    },
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl MigrationError {
    /// The status byte to tell the peer.
    pub fn code(&self) -> FailureCode {
        match self {
            MigrationError::Stream(e) => e.failure_code(),
            MigrationError::Send(_) | MigrationError::NoConfirmation(_) => FailureCode::Protocol,
            MigrationError::Refused { code, .. } | MigrationError::Aborted { code, .. } => *code,
            MigrationError::Incompatible(_) | MigrationError::Cpu(_) => FailureCode::Incompatible,
            MigrationError::Protocol(_) => FailureCode::Protocol,
            MigrationError::Integrity(_) | MigrationError::Helper(_) => FailureCode::Integrity,
            MigrationError::Vm(_)
            | MigrationError::Transport(_)
            | MigrationError::HelperMismatch
            | MigrationError::OversizedBatch { .. }
            | MigrationError::Committed { .. } => FailureCode::Internal,
            MigrationError::Cancelled => FailureCode::Cancelled,
        }
    }

    /// The error and its causes on one line.
    pub fn chain(&self) -> String {
        chain(self)
    }
}

/// An error and its causes on one line, `: `-separated.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut e = e;
    while let Some(next) = e.source() {
        s.push_str(": ");
        s.push_str(&next.to_string());
        e = next;
    }
    s
}

impl From<crate::frames::Abort> for MigrationError {
    fn from(a: crate::frames::Abort) -> Self {
        MigrationError::Aborted {
            code: a.code,
            reason: a.reason,
        }
    }
}

/// Where a migration stands (QEMU's `MigrationStatus` subset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Status {
    /// Nothing started.
    #[default]
    None,
    /// Connecting, exchanging Hello.
    Setup,
    /// Copying.
    Active,
    /// Done: the target runs the guest.
    Completed,
    /// Failed; see `error`.
    Failed,
    /// Cancelled by the operator.
    Cancelled,
    /// Source: its helper committed; waiting for the target's Ack (the guest no longer
    /// runs here).
    Committing,
    /// Source: committed, and the target neither confirmed nor aborted: the guest stays
    /// stopped until an abort of the session (the target's token or the owner's) releases
    /// it. See `transcript`.
    AwaitingAbort,
    /// Target: its helper verified everything and said Ready, and the stream ended before
    /// the commit arrived. The source may have committed: this side waits for the commit
    /// from the source's commit file, or for the operator's abort (see
    /// [`target::PendingCommit`]). See `transcript`.
    AwaitingCommit,
}

/// Live figures, shared with `query-migrate`.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The status.
    pub status: Status,
    /// Bytes of guest RAM.
    pub total_bytes: u64,
    /// Bytes put on the stream so far.
    pub transferred_bytes: u64,
    /// Bytes still to send (the dirty set after the last round).
    pub remaining_bytes: u64,
    /// Pages sent (sealed or plain).
    pub pages: u64,
    /// Pages sent as zero-page flags.
    pub zero_pages: u64,
    /// Precopy rounds started.
    pub rounds: u32,
    /// Pages dirtied per second in the last round.
    pub dirty_rate: u64,
    /// Stream bytes per second in the last round.
    pub throughput: u64,
    /// Milliseconds from the start to Hello accepted.
    pub setup_ms: u64,
    /// Milliseconds the guest did not run (source: pause to confirmation).
    pub downtime_ms: Option<u64>,
    /// Milliseconds the last round's dirty set would take at the last throughput.
    pub expected_downtime_ms: u64,
    /// Milliseconds since the start.
    pub total_ms: u64,
    /// Why it failed.
    pub error: Option<String>,
    /// The session's transcript hash (source: once committed, what the guest owner's
    /// break-glass abort is computed over; target: once its helper confirmed the key
    /// agreement).
    pub transcript: Option<[u8; 32]>,
}

/// Updates shared progress without ever failing (a poisoned lock still holds figures).
pub(crate) fn update(progress: &Mutex<Progress>, f: impl FnOnce(&mut Progress)) {
    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut p);
}
