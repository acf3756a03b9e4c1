//! The frames that steer a session: HelloAck, Done, Abort, Ack, and the failure codes
//! they carry. HelloAck, Ack and Abort have frozen layouts (see the version policy).

use std::fmt;
use std::io::Write;

use helper_abi::record::Kind;

use super::{
    check_version, invalid, write_frame, FrameError, MessageType, Parser, COMMIT_LEN,
    MAX_REASON_LEN, PROTOCOL_VERSION,
};

/// Why a migration failed, on the wire: the status byte of a HelloAck, Ack or Abort
/// (0 there means success and is not a `FailureCode`). Peers branch on this, never on
/// the reason text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FailureCode {
    /// The peer's protocol version is not one this side reads.
    UnsupportedVersion = 1,
    /// The Hello does not match the target's configuration (memory size or layout,
    /// helper region, vCPUs, guest mode, lanes).
    Incompatible = 2,
    /// The two sides boot different firmware.
    FirmwareMismatch = 3,
    /// The target cannot take a guest yet: not attested, or no migration secret.
    NotReady = 4,
    /// The peer sent a malformed frame or a frame out of order.
    Protocol = 5,
    /// A sealed record or the manifest failed verification (tampering, replay,
    /// reordering, withheld pages).
    Integrity = 6,
    /// An operator cancelled the migration.
    Cancelled = 7,
    /// A local failure: I/O, KVM, resources.
    Internal = 8,
}

impl FailureCode {
    /// Every code, in wire order. This is the one table of the status byte's meanings.
    pub const ALL: [FailureCode; 8] = [
        FailureCode::UnsupportedVersion,
        FailureCode::Incompatible,
        FailureCode::FirmwareMismatch,
        FailureCode::NotReady,
        FailureCode::Protocol,
        FailureCode::Integrity,
        FailureCode::Cancelled,
        FailureCode::Internal,
    ];

    /// The wire byte.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            FailureCode::UnsupportedVersion => "unsupported protocol version",
            FailureCode::Incompatible => "configurations do not match",
            FailureCode::FirmwareMismatch => "firmware differs",
            FailureCode::NotReady => "target not ready (attestation or migration secret missing)",
            FailureCode::Protocol => "protocol violation",
            FailureCode::Integrity => "integrity check failed",
            FailureCode::Cancelled => "cancelled",
            FailureCode::Internal => "internal failure",
        }
    }
}

impl TryFrom<u8> for FailureCode {
    type Error = u8;

    /// Decodes a nonzero status byte; an undefined one comes back as the error.
    fn try_from(code: u8) -> Result<Self, u8> {
        FailureCode::ALL
            .into_iter()
            .find(|c| c.code() == code)
            .ok_or(code)
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Checks a reason string: 1..=MAX_REASON_LEN bytes, no control characters (the other
/// side prints it to an operator's terminal).
fn check_reason(kind: MessageType, reason: &str) -> Result<(), FrameError> {
    if reason.is_empty() {
        return Err(invalid(
            kind,
            "reason",
            "empty; a failure must say why".to_string(),
        ));
    }
    if reason.len() > MAX_REASON_LEN {
        return Err(FrameError::TooLong {
            kind,
            len: 1 + reason.len(),
            max: 1 + MAX_REASON_LEN,
        });
    }
    if let Some((at, c)) = reason.char_indices().find(|(_, c)| c.is_control()) {
        return Err(invalid(
            kind,
            "reason",
            format!("control character {:?} at byte {at}", c),
        ));
    }
    Ok(())
}

fn decode_reason(kind: MessageType, bytes: &[u8]) -> Result<String, FrameError> {
    let s = std::str::from_utf8(bytes).map_err(|e| {
        invalid(
            kind,
            "reason",
            format!("not UTF-8 after byte {}", e.valid_up_to()),
        )
    })?;
    check_reason(kind, s)?;
    Ok(s.to_string())
}

fn decode_code(kind: MessageType, status: u8) -> Result<FailureCode, FrameError> {
    FailureCode::try_from(status)
        .map_err(|c| invalid(kind, "status", format!("undefined failure code {c}")))
}

/// The shared frozen layout: `status u8 ‖ reason`.
fn encode_status(
    w: &mut impl Write,
    version: u16,
    kind: MessageType,
    outcome: Option<(FailureCode, &str)>,
) -> Result<(), FrameError> {
    if version == 0 {
        return Err(invalid(kind, "version", "0 is no version".to_string()));
    }
    match outcome {
        None => write_frame(w, version, kind, &[0], &[]),
        Some((code, reason)) => {
            check_reason(kind, reason)?;
            write_frame(w, version, kind, &[code.code()], reason.as_bytes())
        }
    }
}

/// Decodes `status u8 ‖ reason`: None for success (status 0, no reason).
fn decode_status(
    kind: MessageType,
    version: u16,
    payload: &[u8],
) -> Result<Option<(FailureCode, String)>, FrameError> {
    check_version(version)?;
    kind.check_len(payload.len())?;
    let mut p = Parser::new(kind, payload);
    let status = p.u8("status")?;
    let reason = p.rest();
    if status == 0 {
        if !reason.is_empty() {
            return Err(invalid(
                kind,
                "reason",
                format!(
                    "{} bytes on a success status, which carries none",
                    reason.len()
                ),
            ));
        }
        return Ok(None);
    }
    let code = decode_code(kind, status)?;
    Ok(Some((code, decode_reason(kind, reason)?)))
}

/// Target → source, answering the Hello.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HelloAck {
    /// The target takes the migration; the source may send round 0.
    Accepted,
    /// The target refuses; both sides close, the source guest keeps running.
    Refused {
        /// Why, for the source to act on.
        code: FailureCode,
        /// Why, for the operator.
        reason: String,
    },
}

impl HelloAck {
    /// Writes the frame in this build's version.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        self.encode_as(PROTOCOL_VERSION, w)
    }

    /// Writes the frame with `version` in its header. The layout is frozen, so a target
    /// refusing a source whose version it cannot read answers in that version.
    pub fn encode_as(&self, version: u16, w: &mut impl Write) -> Result<(), FrameError> {
        let outcome = match self {
            HelloAck::Accepted => None,
            HelloAck::Refused { code, reason } => Some((*code, reason.as_str())),
        };
        encode_status(w, version, MessageType::HelloAck, outcome)
    }

    /// Decodes a payload.
    pub fn decode(version: u16, payload: &[u8]) -> Result<HelloAck, FrameError> {
        Ok(
            match decode_status(MessageType::HelloAck, version, payload)? {
                None => HelloAck::Accepted,
                Some((code, reason)) => HelloAck::Refused { code, reason },
            },
        )
    }
}

/// Target → source, after Done: whether the guest now runs on the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// The target verified everything and resumed the guest: the source may quit.
    Completed,
    /// The target did not resume the guest: the source resumes its own.
    Failed {
        /// Why, for the source to act on.
        code: FailureCode,
        /// Why, for the operator.
        reason: String,
    },
}

impl Ack {
    /// Writes the frame in this build's version.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        self.encode_as(PROTOCOL_VERSION, w)
    }

    /// Writes the frame with `version` in its header (frozen layout).
    pub fn encode_as(&self, version: u16, w: &mut impl Write) -> Result<(), FrameError> {
        let outcome = match self {
            Ack::Completed => None,
            Ack::Failed { code, reason } => Some((*code, reason.as_str())),
        };
        encode_status(w, version, MessageType::Ack, outcome)
    }

    /// Decodes a payload.
    pub fn decode(version: u16, payload: &[u8]) -> Result<Ack, FrameError> {
        Ok(match decode_status(MessageType::Ack, version, payload)? {
            None => Ack::Completed,
            Some((code, reason)) => Ack::Failed { code, reason },
        })
    }
}

/// Either way: the migration is abandoned. The sender closes the connection after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Abort {
    /// Why, for the peer to act on.
    pub code: FailureCode,
    /// Why, for the operator.
    pub reason: String,
}

impl Abort {
    /// Writes the frame in this build's version.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        self.encode_as(PROTOCOL_VERSION, w)
    }

    /// Writes the frame with `version` in its header (frozen layout).
    pub fn encode_as(&self, version: u16, w: &mut impl Write) -> Result<(), FrameError> {
        encode_status(
            w,
            version,
            MessageType::Abort,
            Some((self.code, &self.reason)),
        )
    }

    /// Decodes a payload; status 0 is an error here.
    pub fn decode(version: u16, payload: &[u8]) -> Result<Abort, FrameError> {
        match decode_status(MessageType::Abort, version, payload)? {
            None => Err(invalid(
                MessageType::Abort,
                "status",
                "0 (success) in an Abort".to_string(),
            )),
            Some((code, reason)) => Ok(Abort { code, reason }),
        }
    }
}

/// Source → target: everything has been sent. For a plain guest the payload is empty;
/// for an SEV guest (version 2) it is the source helper's sealed commit record, made
/// after the target said Ready: the target runs the guest only once its helper verified
/// it, and the source (flagged "migrated out" when it sealed it) never runs again unless
/// the target's helper aborts this session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Done {
    /// The commit record (SEV).
    pub commit: Option<[u8; COMMIT_LEN]>,
}

impl Done {
    /// Checks the commit record's framing (a header of kind COMMIT filling it).
    pub fn validate(&self) -> Result<(), FrameError> {
        if let Some(record) = &self.commit {
            super::helper::check_blob_record_any(MessageType::Done, record, Kind::COMMIT)?;
        }
        Ok(())
    }

    /// Writes the frame.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        self.validate()?;
        let payload: &[u8] = match &self.commit {
            Some(record) => record,
            None => &[],
        };
        write_frame(w, PROTOCOL_VERSION, MessageType::Done, payload, &[])
    }

    /// Decodes a payload: empty, or (version 2) a commit record.
    pub fn decode(version: u16, payload: &[u8]) -> Result<Done, FrameError> {
        let kind = MessageType::Done;
        check_version(version)?;
        kind.check_len(payload.len())?;
        if payload.is_empty() {
            return Ok(Done::default());
        }
        if version < 2 || payload.len() != COMMIT_LEN {
            return Err(FrameError::WrongLength {
                kind,
                len: payload.len(),
                expected: if version < 2 { 0 } else { COMMIT_LEN },
            });
        }
        let mut p = Parser::new(kind, payload);
        let frame = Done {
            commit: Some(p.array("commit record")?),
        };
        p.finish()?;
        frame.validate()?;
        Ok(frame)
    }
}
