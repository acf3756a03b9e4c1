//! Reading frames from a byte stream.
//!
//! [`FrameReader`] reads one frame at a time from any [`Read`]: it reads the 12-byte
//! header, checks magic, version, type, flags, the type's length cap, the direction and
//! the session's version, and only then reads the payload — into a buffer the caller
//! owns, from which the decoded [`Frame`] borrows its records, pages and blobs.
//!
//! Writing needs no type of its own: every frame type has `encode(&self, w)`, and
//! [`crate::frames::PageBatchHeader::encode`] is the zero-copy path for records.
//!
//! ```
//! use migration::frames::{Done, Frame, ReceiverState, MAX_PAYLOAD_LEN, MessageType};
//! use migration::{FrameReader, Incoming};
//!
//! # let mut wire = Vec::new();
//! # migration::frames::Abort { code: migration::frames::FailureCode::Cancelled,
//! #     reason: "operator".into() }.encode(&mut wire).unwrap();
//! // `wire` is anything that implements Read: a TcpStream, a slice.
//! let mut reader = FrameReader::new(&wire[..], Incoming::FromSource);
//! let mut buf = vec![0u8; MAX_PAYLOAD_LEN];
//! let mut state = ReceiverState::default();
//! loop {
//!     let frame = match reader.read_frame(&mut buf) {
//!         Ok(frame) => frame,
//!         // The peer closed between frames: fine only if the session is over.
//!         Err(e) if e.is_clean_eof() && state.is_final() => break,
//!         Err(e) => panic!("{e}"), // a real receiver answers with an Abort and stops
//!     };
//!     state = state.next(frame.message_type()).expect("frame in order");
//!     match frame {
//!         Frame::Abort(abort) => println!("source aborted: {}", abort.reason),
//!         Frame::PageBatch(batch) => { /* hand batch.records to the helper */ }
//!         _ => {}
//!     }
//! }
//! assert_eq!(state, ReceiverState::Aborted);
//! ```

use std::fmt;
use std::io::{self, Read};

use thiserror::Error;

use crate::frames::{
    Direction, FailureCode, Frame, FrameError, FrameHeader, MessageType, MAX_PAYLOAD_LEN,
};

/// Which frames a stream may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The target's reader: frames the source writes (and Abort).
    FromSource,
    /// The source's reader of the return path: HelloAck, Ack, Abort.
    FromTarget,
    /// A recording of both directions in the order one end saw them (tests, fuzzing,
    /// captures).
    Capture,
}

impl Incoming {
    fn admits(self, kind: MessageType) -> bool {
        match (self, kind.direction()) {
            (Incoming::Capture, _) | (_, Direction::Either) => true,
            (Incoming::FromSource, Direction::SourceToTarget) => true,
            (Incoming::FromTarget, Direction::TargetToSource) => true,
            (Incoming::FromSource, Direction::TargetToSource) => false,
            (Incoming::FromTarget, Direction::SourceToTarget) => false,
        }
    }

    fn peer(self) -> &'static str {
        match self {
            Incoming::FromSource => "source",
            Incoming::FromTarget => "target",
            Incoming::Capture => "either side",
        }
    }
}

/// Where in the stream a read stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamPosition {
    /// At a frame boundary: nothing of the next frame had arrived.
    BetweenFrames {
        /// Stream offset of the boundary.
        offset: u64,
    },
    /// Inside a frame header.
    InHeader {
        /// Stream offset of the frame.
        offset: u64,
        /// Header bytes that had arrived.
        got: usize,
    },
    /// Inside a payload.
    InPayload {
        /// Stream offset of the frame.
        offset: u64,
        /// The frame's type.
        kind: MessageType,
        /// Payload bytes that had arrived.
        got: usize,
        /// The payload's length.
        len: usize,
    },
}

impl fmt::Display for StreamPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            StreamPosition::BetweenFrames { offset } => {
                write!(f, "between frames (at stream offset {offset})")
            }
            StreamPosition::InHeader { offset, got } => write!(
                f,
                "in the middle of a frame header (after {got} of {} bytes, frame at stream offset {offset})",
                FrameHeader::SIZE
            ),
            StreamPosition::InPayload {
                offset,
                kind,
                got,
                len,
            } => write!(
                f,
                "in the middle of a {kind} frame (after {got} of {len} payload bytes, frame at stream offset {offset})"
            ),
        }
    }
}

fn io_verb(source: &io::Error) -> &'static str {
    if source.kind() == io::ErrorKind::UnexpectedEof {
        "the peer closed the stream"
    } else {
        "reading the stream failed"
    }
}

/// Why no frame could be read.
#[derive(Debug, Error)]
pub enum CodecError {
    /// The stream ended or failed. With `at` = [`StreamPosition::BetweenFrames`] and an
    /// `UnexpectedEof` source this is a clean close ([`CodecError::is_clean_eof`]);
    /// anywhere else the stream was cut inside a frame.
    #[error("{} {at}", io_verb(.source))]
    Io {
        /// Where the read stopped.
        at: StreamPosition,
        /// The reader's error (`UnexpectedEof` when the peer closed).
        #[source]
        source: io::Error,
    },
    /// The frame's header or payload is invalid.
    #[error("invalid frame at stream offset {offset}")]
    Frame {
        /// Stream offset of the frame.
        offset: u64,
        /// What is wrong with it.
        #[source]
        source: FrameError,
    },
    /// A frame the peer on this stream never writes (e.g. an Ack from the source).
    #[error("{kind} frame at stream offset {offset} cannot come from the {peer}")]
    WrongDirection {
        /// The frame's type.
        kind: MessageType,
        /// Stream offset of the frame.
        offset: u64,
        /// Who writes this stream.
        peer: &'static str,
    },
    /// A frame whose version differs from the session's (the first frame's).
    #[error("{kind} frame at stream offset {offset} is protocol version {found}, but the session runs version {session}")]
    VersionChanged {
        /// The frame's type.
        kind: MessageType,
        /// Stream offset of the frame.
        offset: u64,
        /// Its version.
        found: u16,
        /// The session's version.
        session: u16,
    },
    /// The caller's buffer cannot hold a payload within the type's cap.
    #[error("{kind} payload of {len} bytes does not fit the {have}-byte read buffer (pass frames::MAX_PAYLOAD_LEN = {MAX_PAYLOAD_LEN} bytes)")]
    BufferTooSmall {
        /// The frame's type.
        kind: MessageType,
        /// The payload's length.
        len: usize,
        /// The buffer's length.
        have: usize,
    },
    /// An earlier error left the stream out of sync; this reader reads no more.
    #[error("the frame reader stopped after an earlier error")]
    Stopped,
}

impl CodecError {
    /// Did the peer close the stream cleanly, between two frames?
    pub fn is_clean_eof(&self) -> bool {
        matches!(
            self,
            CodecError::Io {
                at: StreamPosition::BetweenFrames { .. },
                source,
            } if source.kind() == io::ErrorKind::UnexpectedEof
        )
    }

    /// Did the read time out (a read timeout on the underlying socket)?
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            CodecError::Io { source, .. }
                if matches!(source.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
        )
    }

    /// The failure code to put in the Abort that answers this error.
    pub fn failure_code(&self) -> FailureCode {
        match self {
            CodecError::Frame { source, .. } => source.failure_code(),
            CodecError::WrongDirection { .. } | CodecError::VersionChanged { .. } => {
                FailureCode::Protocol
            }
            CodecError::Io { .. } | CodecError::BufferTooSmall { .. } | CodecError::Stopped => {
                FailureCode::Internal
            }
        }
    }
}

/// Reads frames from a stream, one at a time, into a caller-provided buffer.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    incoming: Incoming,
    session_version: Option<u16>,
    offset: u64,
    frames: u64,
    stopped: bool,
    last: Option<FrameHeader>,
}

impl<R: Read> FrameReader<R> {
    /// A reader of `inner`, which carries the frames `incoming` says.
    pub fn new(inner: R, incoming: Incoming) -> FrameReader<R> {
        FrameReader {
            inner,
            incoming,
            session_version: None,
            offset: 0,
            frames: 0,
            stopped: false,
            last: None,
        }
    }

    /// Reads the next frame. Its payload lands in `buf`, from which the frame borrows;
    /// `buf` must hold the largest payload expected (any frame: [`MAX_PAYLOAD_LEN`]).
    /// The header is checked before any payload byte is read, so a hostile length never
    /// reaches an allocation or a read. After any error the reader stops for good
    /// ([`CodecError::Stopped`]): the stream is out of sync.
    pub fn read_frame<'b>(&mut self, buf: &'b mut [u8]) -> Result<Frame<'b>, CodecError> {
        self.read_frame_waiting(buf, &mut || false)
    }

    /// Like [`FrameReader::read_frame`], for a stream whose reads time out often (a short
    /// socket read timeout used as a poll): each time a read times out, wherever in the
    /// frame, `keep_waiting` decides whether to read on (true) or to fail with the
    /// timeout (false). Bytes already read are kept, so waiting never loses sync. The
    /// callback is where a caller checks a deadline or a cancel request, or writes to
    /// the peer meanwhile.
    pub fn read_frame_waiting<'b>(
        &mut self,
        buf: &'b mut [u8],
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<Frame<'b>, CodecError> {
        if self.stopped {
            return Err(CodecError::Stopped);
        }
        let result = self.read_frame_inner(buf, keep_waiting);
        if result.is_err() {
            self.stopped = true;
        }
        result
    }

    fn read_frame_inner<'b>(
        &mut self,
        buf: &'b mut [u8],
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<Frame<'b>, CodecError> {
        let offset = self.offset;
        let mut raw = [0u8; FrameHeader::SIZE];
        read_full(&mut self.inner, &mut raw, keep_waiting).map_err(|(got, source)| {
            CodecError::Io {
                at: if got == 0 {
                    StreamPosition::BetweenFrames { offset }
                } else {
                    StreamPosition::InHeader { offset, got }
                },
                source,
            }
        })?;
        let header =
            FrameHeader::decode(&raw).map_err(|source| CodecError::Frame { offset, source })?;
        let kind = header.kind;
        if !self.incoming.admits(kind) {
            return Err(CodecError::WrongDirection {
                kind,
                offset,
                peer: self.incoming.peer(),
            });
        }
        match self.session_version {
            None => self.session_version = Some(header.version),
            Some(session) if session != header.version => {
                return Err(CodecError::VersionChanged {
                    kind,
                    offset,
                    found: header.version,
                    session,
                })
            }
            Some(_) => {}
        }
        let len = header.len as usize;
        let have = buf.len();
        let payload = buf
            .get_mut(..len)
            .ok_or(CodecError::BufferTooSmall { kind, len, have })?;
        read_full(&mut self.inner, payload, keep_waiting).map_err(|(got, source)| {
            CodecError::Io {
                at: StreamPosition::InPayload {
                    offset,
                    kind,
                    got,
                    len,
                },
                source,
            }
        })?;
        self.offset += (FrameHeader::SIZE + len) as u64;
        self.frames += 1;
        self.last = Some(header);
        let payload: &'b [u8] = payload;
        Frame::decode(&header, payload).map_err(|source| CodecError::Frame { offset, source })
    }

    /// The header of the last frame read: with the payload in the caller's buffer, the
    /// frame's exact bytes (a header decodes only from its one canonical encoding).
    pub fn last_header(&self) -> Option<FrameHeader> {
        self.last
    }

    /// The session's protocol version: the first frame's, once one was read.
    pub fn session_version(&self) -> Option<u16> {
        self.session_version
    }

    /// Bytes consumed from the stream (whole frames).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Frames read.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The stream, e.g. to set a timeout.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Fills `buf`, retrying interrupted reads, and timed-out ones while `keep_waiting` says
/// so. On failure returns how many bytes had arrived and the error (`UnexpectedEof` if
/// the stream ended).
fn read_full(
    r: &mut impl Read,
    buf: &mut [u8],
    keep_waiting: &mut dyn FnMut() -> bool,
) -> Result<(), (usize, io::Error)> {
    let mut got = 0;
    while got < buf.len() {
        let rest = buf.get_mut(got..).unwrap_or_default();
        match r.read(rest) {
            Ok(0) => {
                return Err((
                    got,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "the stream ended"),
                ))
            }
            // A reader reporting more than it was given is broken; clamp.
            Ok(n) => got = (got + n).min(buf.len()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && keep_waiting() => {}
            Err(e) => return Err((got, e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
