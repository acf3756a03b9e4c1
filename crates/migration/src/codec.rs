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
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd};

use thiserror::Error;

use crate::frames::{
    Direction, FailureCode, Frame, FrameError, FrameHeader, MessageType, PageBatchHeader,
    MAX_PAYLOAD_LEN, PAGE_BATCH_HEADER_LEN,
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
    /// The next frame was asked for before the records of the last PageBatch were read
    /// ([`FrameReader::read_records`]).
    #[error("the records of the PageBatch at stream offset {0} were not read")]
    RecordsPending(u64),
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
            CodecError::Io { .. }
            | CodecError::BufferTooSmall { .. }
            | CodecError::Stopped
            | CodecError::RecordsPending(_) => FailureCode::Internal,
        }
    }
}

/// What [`FrameReader::read_next`] read.
#[derive(Debug)]
pub enum Next<'b> {
    /// A whole frame.
    Frame(Frame<'b>),
    /// The start of a PageBatch: its header is checked, its records are still in the
    /// stream, for [`FrameReader::read_records`] to move straight to where they go.
    Batch(BatchStart),
}

/// A PageBatch whose records are still in the stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchStart {
    /// The batch's header (lane, round, count, bytes of records), checked.
    pub header: PageBatchHeader,
    /// Stream offset of the frame.
    pub offset: u64,
}

/// Where the records of a PageBatch go on the target: one of its helper's record
/// windows in guest memory (the no-copy receive path; the VMM implements it).
pub trait RecordDest {
    /// Takes the next `bytes` of the records: bytes the reader had already buffered.
    fn put(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Reads exactly the next `len` bytes of the records from `fd` (the stream, nothing
    /// left in the reader's buffer) straight into place.
    fn read_from(&mut self, fd: BorrowedFd<'_>, len: usize) -> io::Result<()>;
}

/// The records of a PageBatch, still in the stream (see [`FrameReader::read_records`]).
pub trait RecordSource {
    /// Bytes of records.
    fn len(&self) -> usize;
    /// Whether there are none (never, for a checked batch).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Moves every byte of the records into `dest`: what the reader had buffered as a
    /// slice, the rest straight from the stream's descriptor. On an error the stream is
    /// out of sync and the reader stops.
    fn read_into(&mut self, dest: &mut dyn RecordDest) -> io::Result<()>;
}

/// A batch's records being read ([`RecordSource`] over a buffered stream).
struct PendingRecords<'a, S> {
    inner: &'a mut BufReader<S>,
    len: usize,
    got: usize,
    failed: Option<io::Error>,
}

impl<S: Read + AsFd> RecordSource for PendingRecords<'_, S> {
    fn len(&self) -> usize {
        self.len
    }

    fn read_into(&mut self, dest: &mut dyn RecordDest) -> io::Result<()> {
        let result = (|| {
            let left = self.len - self.got;
            let buffered = self.inner.buffer();
            let n = buffered.len().min(left);
            if n > 0 {
                dest.put(buffered.get(..n).unwrap_or_default())?;
                self.inner.consume(n);
                self.got += n;
            }
            let left = self.len - self.got;
            if left > 0 {
                // Nothing is buffered now, so the next bytes of the stream are the
                // descriptor's.
                dest.read_from(self.inner.get_ref().as_fd(), left)?;
                self.got += left;
            }
            Ok(())
        })();
        result.map_err(|e: io::Error| {
            let copy = io::Error::new(e.kind(), "the migration stream failed");
            self.failed.get_or_insert(e);
            copy
        })
    }
}

/// A PageBatch returned by [`FrameReader::read_next`] whose records are still unread.
#[derive(Clone, Copy, Debug)]
struct Pending {
    offset: u64,
    header: FrameHeader,
    records_len: usize,
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
    pending: Option<Pending>,
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
            pending: None,
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

    /// Like [`FrameReader::read_frame`], but stops a PageBatch after its 12-byte batch
    /// header ([`Next::Batch`]): the caller then moves its records with
    /// [`FrameReader::read_records`] (straight into a helper's window, where they go)
    /// before it reads the next frame, and checks them
    /// ([`PageBatchHeader::check_records`]). Every other frame is read and decoded as
    /// `read_frame` does.
    pub fn read_next<'b>(&mut self, buf: &'b mut [u8]) -> Result<Next<'b>, CodecError> {
        if self.stopped {
            return Err(CodecError::Stopped);
        }
        if let Some(p) = self.pending {
            self.stopped = true;
            return Err(CodecError::RecordsPending(p.offset));
        }
        let result = self
            .read_header(&mut || false)
            .and_then(|(offset, header)| {
                let len = header.len as usize;
                if header.kind != MessageType::PageBatch || len < PAGE_BATCH_HEADER_LEN {
                    return self
                        .read_payload(offset, header, buf, &mut || false)
                        .map(Next::Frame);
                }
                let mut head = [0u8; PAGE_BATCH_HEADER_LEN];
                read_full(&mut self.inner, &mut head, &mut || false).map_err(|(got, source)| {
                    CodecError::Io {
                        at: StreamPosition::InPayload {
                            offset,
                            kind: header.kind,
                            got,
                            len,
                        },
                        source,
                    }
                })?;
                let records_len = len - PAGE_BATCH_HEADER_LEN;
                let batch = PageBatchHeader::decode(header.version, &head, records_len)
                    .map_err(|source| CodecError::Frame { offset, source })?;
                self.pending = Some(Pending {
                    offset,
                    header,
                    records_len,
                });
                Ok(Next::Batch(BatchStart {
                    header: batch,
                    offset,
                }))
            });
        if result.is_err() {
            self.stopped = true;
        }
        result
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
        if let Some(p) = self.pending {
            return Err(CodecError::RecordsPending(p.offset));
        }
        let (offset, header) = self.read_header(keep_waiting)?;
        self.read_payload(offset, header, buf, keep_waiting)
    }

    /// Reads and checks the next frame header: its stream offset and the header.
    fn read_header(
        &mut self,
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<(u64, FrameHeader), CodecError> {
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
        Ok((offset, header))
    }

    /// Reads the payload of the frame whose header was just read, and decodes it.
    fn read_payload<'b>(
        &mut self,
        offset: u64,
        header: FrameHeader,
        buf: &'b mut [u8],
        keep_waiting: &mut dyn FnMut() -> bool,
    ) -> Result<Frame<'b>, CodecError> {
        let kind = header.kind;
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

impl<S: Read + AsFd> FrameReader<BufReader<S>> {
    /// Moves the records of the PageBatch [`FrameReader::read_next`] just returned:
    /// `f` gets them as a [`RecordSource`] and must move all of them
    /// ([`RecordSource::read_into`]); what `f` returns comes back. If the stream fails
    /// meanwhile, or `f` leaves records unread, the reader stops (the stream is out of
    /// sync) and the error says where.
    pub fn read_records<T>(
        &mut self,
        f: impl FnOnce(&mut dyn RecordSource) -> T,
    ) -> Result<T, CodecError> {
        if self.stopped {
            return Err(CodecError::Stopped);
        }
        let Some(pending) = self.pending.take() else {
            self.stopped = true;
            return Err(CodecError::Io {
                at: StreamPosition::BetweenFrames {
                    offset: self.offset,
                },
                source: io::Error::other("no PageBatch's records are waiting to be read"),
            });
        };
        let mut records = PendingRecords {
            inner: &mut self.inner,
            len: pending.records_len,
            got: 0,
            failed: None,
        };
        let out = f(&mut records);
        let (got, failed) = (records.got, records.failed);
        let len = pending.header.len as usize;
        let at = StreamPosition::InPayload {
            offset: pending.offset,
            kind: MessageType::PageBatch,
            got: PAGE_BATCH_HEADER_LEN + got,
            len,
        };
        if let Some(source) = failed {
            self.stopped = true;
            return Err(CodecError::Io { at, source });
        }
        if got != pending.records_len {
            self.stopped = true;
            return Err(CodecError::Io {
                at,
                source: io::Error::other("the batch's records were not read in full"),
            });
        }
        self.offset += (FrameHeader::SIZE + len) as u64;
        self.frames += 1;
        self.last = Some(pending.header);
        Ok(out)
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
