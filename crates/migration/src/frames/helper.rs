//! The frames that carry what the two migration helpers say to each other (protocol
//! version 2): the key agreement (KeyShare, KeyReply, KeyConfirm), the sealed shared-page
//! list (SharedList), the target's Ready, and its AbortToken. The VMMs carry the bytes;
//! only the helpers can make or check them (helper-abi `handshake` and `record`).

use std::io::Write;

use helper_abi::{
    handshake::{self, MAC_LEN, NONCE_LEN, SHARE_LEN},
    record::{self, Kind, RecordHeader},
};

use super::{
    check_version, invalid, write_frame, FrameError, MessageType, Parser, PROTOCOL_VERSION,
};

/// Checks that `version` has the helper frames at all (they came with version 2).
fn since_v2(kind: MessageType, version: u16) -> Result<(), FrameError> {
    check_version(version)?;
    if version < 2 {
        return Err(invalid(
            kind,
            "frame",
            format!("{kind} frames do not exist in protocol version {version}"),
        ));
    }
    Ok(())
}

/// Source → target, right after the HelloAck (SEV): the source helper's nonce and
/// ephemeral X25519 share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyShare {
    /// The source helper's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Its X25519 share.
    pub share: [u8; SHARE_LEN],
}

/// Target → source (SEV): the target helper's nonce, share and MAC over the transcript.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyReply {
    /// The target helper's nonce.
    pub nonce: [u8; NONCE_LEN],
    /// Its X25519 share.
    pub share: [u8; SHARE_LEN],
    /// HMAC-SHA256 with the target's label over the transcript hash.
    pub mac: [u8; MAC_LEN],
}

/// Source → target (SEV): the source helper's MAC over the transcript. Nothing but the
/// key agreement moves before the target's helper verified it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyConfirm {
    /// HMAC-SHA256 with the source's label over the transcript hash.
    pub mac: [u8; MAC_LEN],
}

/// Target → source (SEV), after the Manifest: the target's helper verified every record
/// and the manifest, and waits for the commit. Empty; the source commits on it, and a
/// forged one only makes the source commit a session the target will then abort.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready;

/// Target → source (SEV), before an Abort: the target helper's promise never to commit
/// this session, which releases a source that committed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortToken {
    /// HMAC-SHA256 under the session's abort key over the transcript hash.
    pub tag: [u8; MAC_LEN],
}

/// Source → target (SEV), at the start of each round: the guest's own list of the pages
/// it shares with the host, as a blob record the source helper sealed (header ‖ list ‖
/// tag; the list is in the clear: the host knows which pages are shared). The target
/// takes its page states from this list only, once its helper verified it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedList<'a> {
    /// The record.
    pub record: &'a [u8],
}

impl From<handshake::KeyShare> for KeyShare {
    fn from(m: handshake::KeyShare) -> Self {
        KeyShare {
            nonce: m.nonce,
            share: m.share,
        }
    }
}

impl From<KeyShare> for handshake::KeyShare {
    fn from(m: KeyShare) -> Self {
        handshake::KeyShare {
            nonce: m.nonce,
            share: m.share,
        }
    }
}

impl From<handshake::KeyReply> for KeyReply {
    fn from(m: handshake::KeyReply) -> Self {
        KeyReply {
            nonce: m.nonce,
            share: m.share,
            mac: m.mac,
        }
    }
}

impl From<KeyReply> for handshake::KeyReply {
    fn from(m: KeyReply) -> Self {
        handshake::KeyReply {
            nonce: m.nonce,
            share: m.share,
            mac: m.mac,
        }
    }
}

impl KeyShare {
    /// Writes the frame.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        let bytes = handshake::KeyShare::from(*self).encode();
        write_frame(w, PROTOCOL_VERSION, MessageType::KeyShare, &bytes, &[])
    }

    /// Decodes a payload.
    pub fn decode(version: u16, payload: &[u8]) -> Result<KeyShare, FrameError> {
        let kind = MessageType::KeyShare;
        since_v2(kind, version)?;
        kind.check_len(payload.len())?;
        let mut p = Parser::new(kind, payload);
        let m = KeyShare {
            nonce: p.array("nonce")?,
            share: p.array("share")?,
        };
        p.finish()?;
        Ok(m)
    }
}

impl KeyReply {
    /// Writes the frame.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        let bytes = handshake::KeyReply::from(*self).encode();
        write_frame(w, PROTOCOL_VERSION, MessageType::KeyReply, &bytes, &[])
    }

    /// Decodes a payload.
    pub fn decode(version: u16, payload: &[u8]) -> Result<KeyReply, FrameError> {
        let kind = MessageType::KeyReply;
        since_v2(kind, version)?;
        kind.check_len(payload.len())?;
        let mut p = Parser::new(kind, payload);
        let m = KeyReply {
            nonce: p.array("nonce")?,
            share: p.array("share")?,
            mac: p.array("mac")?,
        };
        p.finish()?;
        Ok(m)
    }
}

impl KeyConfirm {
    /// Writes the frame.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        write_frame(w, PROTOCOL_VERSION, MessageType::KeyConfirm, &self.mac, &[])
    }

    /// Decodes a payload.
    pub fn decode(version: u16, payload: &[u8]) -> Result<KeyConfirm, FrameError> {
        let kind = MessageType::KeyConfirm;
        since_v2(kind, version)?;
        kind.check_len(payload.len())?;
        let mut p = Parser::new(kind, payload);
        let m = KeyConfirm {
            mac: p.array("mac")?,
        };
        p.finish()?;
        Ok(m)
    }
}

impl Ready {
    /// Writes the frame.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        write_frame(w, PROTOCOL_VERSION, MessageType::Ready, &[], &[])
    }

    /// Decodes a payload (it must be empty).
    pub fn decode(version: u16, payload: &[u8]) -> Result<Ready, FrameError> {
        since_v2(MessageType::Ready, version)?;
        MessageType::Ready.check_len(payload.len())?;
        Ok(Ready)
    }
}

impl AbortToken {
    /// Writes the frame.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        write_frame(w, PROTOCOL_VERSION, MessageType::AbortToken, &self.tag, &[])
    }

    /// Decodes a payload.
    pub fn decode(version: u16, payload: &[u8]) -> Result<AbortToken, FrameError> {
        let kind = MessageType::AbortToken;
        since_v2(kind, version)?;
        kind.check_len(payload.len())?;
        let mut p = Parser::new(kind, payload);
        let m = AbortToken {
            tag: p.array("tag")?,
        };
        p.finish()?;
        Ok(m)
    }
}

/// Checks that `bytes` frame exactly one record of `want` (its header decodes, of that
/// kind, filling `bytes`); returns the header.
pub(crate) fn check_blob_record_any(
    kind: MessageType,
    bytes: &[u8],
    want: Kind,
) -> Result<RecordHeader, FrameError> {
    let raw: [u8; record::HEADER_SIZE] = bytes
        .get(..record::HEADER_SIZE)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| {
            invalid(
                kind,
                "record",
                format!("{} bytes, shorter than a record header", bytes.len()),
            )
        })?;
    let header = RecordHeader::decode(&raw).map_err(|_| {
        invalid(
            kind,
            "record",
            "header is malformed (unknown kind, length not fitting the kind, lane out of range, or reserved bits set)"
                .to_string(),
        )
    })?;
    if header.kind != want || header.record_size() != bytes.len() {
        return Err(invalid(
            kind,
            "record",
            format!(
                "a record of kind {} with a {}-byte payload in {} bytes; expected one record of kind {} filling the frame",
                header.kind.0,
                header.len,
                bytes.len(),
                want.0
            ),
        ));
    }
    Ok(header)
}

/// Checks that a blob of an SEV stream is one record of `want` (DeviceState, VcpuState:
/// the engine's check; the codec keeps those frames opaque, as plain guests send raw
/// state there).
pub fn check_record(
    kind: MessageType,
    bytes: &[u8],
    want: Kind,
) -> Result<RecordHeader, FrameError> {
    check_blob_record_any(kind, bytes, want)
}

impl<'a> SharedList<'a> {
    /// Checks the record's framing.
    pub fn validate(&self) -> Result<RecordHeader, FrameError> {
        check_blob_record_any(MessageType::SharedList, self.record, Kind::SHARED_LIST)
    }

    /// The list's bytes inside the record (not authenticated until the target's helper
    /// opened the record).
    pub fn list(&self) -> &'a [u8] {
        let end = self.record.len().saturating_sub(record::TAG_SIZE);
        self.record.get(record::HEADER_SIZE..end).unwrap_or(&[])
    }

    /// The list's ranges (gpa, pages), decoded strictly: "SHRD", a count, exactly that
    /// many ranges, page-aligned, non-empty, ascending without overlap. (Whether the
    /// record is authentic is the target helper's to say, not this decoder's.)
    pub fn ranges(&self) -> Result<Vec<super::SharedRange>, FrameError> {
        let kind = MessageType::SharedList;
        let list = self.list();
        let mut p = Parser::new(kind, list);
        if p.array::<4>("list magic")? != *b"SHRD" {
            return Err(invalid(kind, "list", "no SHRD magic".to_string()));
        }
        let count = p.u32("range count")? as usize;
        if list.len() != 8 + 16 * count {
            return Err(invalid(
                kind,
                "list",
                format!("{count} ranges in {} bytes", list.len()),
            ));
        }
        let mut ranges = Vec::with_capacity(count);
        let mut prev_end = 0u64;
        for i in 0..count {
            let gpa = p.u64("a range's gpa")?;
            let pages = p.u64("a range's pages")?;
            let end = pages
                .checked_mul(super::PAGE_SIZE as u64)
                .and_then(|len| gpa.checked_add(len));
            match end {
                Some(end) if pages > 0 && super::page_aligned(gpa) && gpa >= prev_end => {
                    prev_end = end;
                }
                _ => {
                    return Err(invalid(
                        kind,
                        "list",
                        format!("range {i} ({gpa:#x}, {pages} pages) is empty, unaligned, out of order or wraps"),
                    ))
                }
            }
            ranges.push(super::SharedRange { gpa, pages });
        }
        p.finish()?;
        Ok(ranges)
    }

    /// Writes the frame, the record straight from the caller's buffer.
    pub fn encode(&self, w: &mut impl Write) -> Result<(), FrameError> {
        self.validate()?;
        self.ranges()?;
        write_frame(
            w,
            PROTOCOL_VERSION,
            MessageType::SharedList,
            &[],
            self.record,
        )
    }

    /// Decodes a payload, borrowing the record from it.
    pub fn decode(version: u16, payload: &'a [u8]) -> Result<SharedList<'a>, FrameError> {
        let kind = MessageType::SharedList;
        since_v2(kind, version)?;
        kind.check_len(payload.len())?;
        let frame = SharedList { record: payload };
        frame.validate()?;
        frame.ranges()?;
        Ok(frame)
    }
}
