//! T1 tests of the frame reader: whole sessions, truncation at every byte, garbage,
//! oversize lengths, direction and version checks.

use std::io::{self, BufReader, Read};
use std::os::fd::BorrowedFd;

use super::*;
use crate::frames::tests::{samples, XorShift};
use crate::frames::{
    Abort, Ack, Done, FrameError, HelloAck, ReceiverState, RoundEnd, MAX_PAYLOAD_LEN,
};
use crate::fuzzing;

fn buf() -> Vec<u8> {
    vec![0u8; MAX_PAYLOAD_LEN]
}

#[test]
fn a_whole_session_streams_through_a_vec() {
    let samples = samples();
    // A whole SEV session, both directions, in the order one end saw it.
    let wire = fuzzing::sev_session();
    let mut reader = FrameReader::new(&wire[..], Incoming::Capture);
    let mut b = buf();
    let mut state = ReceiverState::default();
    let mut kinds = Vec::new();
    loop {
        let frame = match reader.read_frame(&mut b) {
            Ok(f) => f,
            Err(e) => {
                assert!(e.is_clean_eof(), "{e}");
                assert_eq!(
                    e.to_string(),
                    format!(
                        "the peer closed the stream between frames (at stream offset {})",
                        wire.len()
                    )
                );
                break;
            }
        };
        state = state.next(frame.message_type()).unwrap();
        kinds.push(frame.message_type());
    }
    assert_eq!(state, ReceiverState::Completed);
    assert_eq!(reader.offset(), wire.len() as u64);
    assert_eq!(reader.frames() as usize, kinds.len());
    assert_eq!(reader.session_version(), Some(2));
    assert_eq!(kinds.len(), 21);

    // Every sample, back to back, reads back equal.
    let mut wire = Vec::new();
    for (bytes, _) in &samples {
        wire.extend_from_slice(bytes);
    }
    let mut reader = FrameReader::new(&wire[..], Incoming::Capture);
    for (_, want) in &samples {
        assert_eq!(&reader.read_frame(&mut b).unwrap(), want);
    }
    assert!(reader.read_frame(&mut b).unwrap_err().is_clean_eof());
}

#[test]
fn page_batches_are_decoded_in_place_in_the_callers_buffer() {
    let (wire, _) = samples()
        .into_iter()
        .find(|(_, f)| f.message_type() == MessageType::PageBatch)
        .unwrap();
    let mut b = buf();
    let start = b.as_ptr() as usize;
    let mut reader = FrameReader::new(&wire[..], Incoming::FromSource);
    let Frame::PageBatch(batch) = reader.read_frame(&mut b).unwrap() else {
        panic!("not a batch")
    };
    // The records are the caller's buffer, past the 12-byte batch header: no copy.
    assert_eq!(batch.records.as_ptr() as usize, start + 12);
    assert_eq!(batch.iter().count(), 2);
}

#[test]
fn truncation_at_every_byte_is_an_error_that_says_where() {
    for (wire, frame) in samples() {
        let kind = frame.message_type();
        for cut in 0..wire.len() {
            let mut b = buf();
            let mut reader = FrameReader::new(&wire[..cut], Incoming::Capture);
            let e = reader.read_frame(&mut b).unwrap_err();
            let CodecError::Io { at, source } = &e else {
                panic!("{kind} cut at {cut}: {e:?}")
            };
            assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof);
            let want = if cut == 0 {
                StreamPosition::BetweenFrames { offset: 0 }
            } else if cut < FrameHeader::SIZE {
                StreamPosition::InHeader {
                    offset: 0,
                    got: cut,
                }
            } else {
                StreamPosition::InPayload {
                    offset: 0,
                    kind,
                    got: cut - FrameHeader::SIZE,
                    len: wire.len() - FrameHeader::SIZE,
                }
            };
            assert_eq!(*at, want);
            assert_eq!(e.is_clean_eof(), cut == 0);
            if cut >= FrameHeader::SIZE {
                assert!(
                    e.to_string().starts_with(&format!(
                        "the peer closed the stream in the middle of a {kind} frame"
                    )),
                    "{e}"
                );
            }
            // The reader stops for good.
            assert!(matches!(
                reader.read_frame(&mut b),
                Err(CodecError::Stopped)
            ));
        }
    }
}

#[test]
fn truncated_second_frame_reports_its_stream_offset() {
    let mut wire = Vec::new();
    Done::default().encode(&mut wire).unwrap();
    let first = wire.len();
    RoundEnd {
        round: 1,
        pages_sent: 2,
        dirty_remaining: 3,
    }
    .encode(&mut wire)
    .unwrap();
    wire.pop();
    let mut reader = FrameReader::new(&wire[..], Incoming::Capture);
    let mut b = buf();
    reader.read_frame(&mut b).unwrap();
    let e = reader.read_frame(&mut b).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("the peer closed the stream in the middle of a RoundEnd frame (after 19 of 20 payload bytes, frame at stream offset {first})")
    );
}

#[test]
fn oversize_lengths_are_refused_before_reading_the_payload() {
    /// A stream that holds the header and then fails the test if read further.
    struct HeaderOnly {
        header: [u8; FrameHeader::SIZE],
        at: usize,
    }
    impl Read for HeaderOnly {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let rest = &self.header[self.at..];
            assert!(!rest.is_empty(), "the reader asked for payload bytes");
            let n = rest.len().min(out.len());
            out[..n].copy_from_slice(&rest[..n]);
            self.at += n;
            Ok(n)
        }
    }
    for kind in MessageType::ALL {
        let (_, max) = kind.payload_bounds();
        for len in [max as u32 + 1, u32::MAX] {
            let header = FrameHeader {
                version: 1,
                kind,
                len,
            }
            .encode();
            // A buffer far too small: the cap check must come first anyway.
            let mut b = [0u8; 16];
            let mut reader = FrameReader::new(HeaderOnly { header, at: 0 }, Incoming::Capture);
            let e = reader.read_frame(&mut b).unwrap_err();
            match &e {
                CodecError::Frame {
                    offset: 0,
                    source: FrameError::TooLong { .. } | FrameError::WrongLength { .. },
                } => {}
                other => panic!("{kind} len {len}: {other:?}"),
            }
            assert_eq!(e.failure_code(), FailureCode::Protocol);
        }
    }
}

#[test]
fn a_small_buffer_is_an_error_not_a_panic() {
    let mut wire = Vec::new();
    RoundEnd {
        round: 0,
        pages_sent: 0,
        dirty_remaining: 0,
    }
    .encode(&mut wire)
    .unwrap();
    let mut b = [0u8; 19];
    let e = FrameReader::new(&wire[..], Incoming::FromSource)
        .read_frame(&mut b)
        .unwrap_err();
    assert!(matches!(
        e,
        CodecError::BufferTooSmall {
            kind: MessageType::RoundEnd,
            len: 20,
            have: 19
        }
    ));
    // A buffer just large enough works.
    let mut b = [0u8; 20];
    FrameReader::new(&wire[..], Incoming::FromSource)
        .read_frame(&mut b)
        .unwrap();
}

#[test]
fn frames_travel_in_their_direction_only() {
    let mut ack = Vec::new();
    Ack::Completed.encode(&mut ack).unwrap();
    let mut done = Vec::new();
    Done::default().encode(&mut done).unwrap();
    let mut abort = Vec::new();
    Abort {
        code: FailureCode::Cancelled,
        reason: "cancel".into(),
    }
    .encode(&mut abort)
    .unwrap();
    let mut b = buf();
    let read = |wire: &[u8], incoming, b: &mut [u8]| {
        FrameReader::new(wire, incoming)
            .read_frame(b)
            .map(|f| f.message_type())
            .map_err(|e| e.to_string())
    };
    assert_eq!(
        read(&ack, Incoming::FromSource, &mut b),
        Err("Ack frame at stream offset 0 cannot come from the source".into())
    );
    assert_eq!(
        read(&done, Incoming::FromTarget, &mut b),
        Err("Done frame at stream offset 0 cannot come from the target".into())
    );
    assert_eq!(
        read(&ack, Incoming::FromTarget, &mut b),
        Ok(MessageType::Ack)
    );
    assert_eq!(
        read(&done, Incoming::FromSource, &mut b),
        Ok(MessageType::Done)
    );
    for incoming in [
        Incoming::FromSource,
        Incoming::FromTarget,
        Incoming::Capture,
    ] {
        assert_eq!(read(&abort, incoming, &mut b), Ok(MessageType::Abort));
    }
}

#[test]
fn the_session_version_may_not_change() {
    let mut wire = Vec::new();
    Done::default().encode(&mut wire).unwrap();
    let mut reader = FrameReader::new(&wire[..], Incoming::Capture);
    // Pretend the session started at another version.
    reader.session_version = Some(7);
    let e = reader.read_frame(&mut buf()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Done frame at stream offset 0 is protocol version 2, but the session runs version 7"
    );
    assert_eq!(e.failure_code(), FailureCode::Protocol);
    // A version-1 session (the one before) does not switch to 2 midway either.
    let v1 = crate::fuzzing::plain_session_v1();
    let mut reader = FrameReader::new(&v1[..], Incoming::Capture);
    let mut b = buf();
    reader.read_frame(&mut b).unwrap();
    assert_eq!(reader.session_version(), Some(1));
    let mut mixed = v1.clone();
    let hello_len = u32::from_le_bytes(v1[8..12].try_into().unwrap()) as usize;
    mixed[FrameHeader::SIZE + hello_len + 4] = 2;
    let mut reader = FrameReader::new(&mixed[..], Incoming::Capture);
    reader.read_frame(&mut b).unwrap();
    assert!(matches!(
        reader.read_frame(&mut b),
        Err(CodecError::VersionChanged {
            found: 2,
            session: 1,
            ..
        })
    ));
}

#[test]
fn io_errors_and_interrupted_reads() {
    /// Yields one byte per read, interrupted every other call, then fails or ends.
    struct Flaky<'a> {
        data: &'a [u8],
        calls: usize,
        then: Option<io::ErrorKind>,
    }
    impl Read for Flaky<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                return Err(io::Error::new(io::ErrorKind::Interrupted, "signal"));
            }
            match (self.data.split_first(), self.then) {
                (Some((b, rest)), _) => {
                    out[0] = *b;
                    self.data = rest;
                    Ok(1)
                }
                (None, Some(kind)) => Err(io::Error::new(kind, "reset")),
                (None, None) => Ok(0),
            }
        }
    }
    let mut wire = Vec::new();
    HelloAck::Refused {
        code: FailureCode::NotReady,
        reason: "no migration secret yet".into(),
    }
    .encode(&mut wire)
    .unwrap();
    let mut b = buf();
    let mut reader = FrameReader::new(
        Flaky {
            data: &wire,
            calls: 0,
            then: None,
        },
        Incoming::FromTarget,
    );
    assert!(matches!(
        reader.read_frame(&mut b).unwrap(),
        Frame::HelloAck(HelloAck::Refused {
            code: FailureCode::NotReady,
            ..
        })
    ));
    assert!(reader.read_frame(&mut b).unwrap_err().is_clean_eof());

    let mut reader = FrameReader::new(
        Flaky {
            data: &wire[..20],
            calls: 0,
            then: Some(io::ErrorKind::ConnectionReset),
        },
        Incoming::FromTarget,
    );
    let e = reader.read_frame(&mut b).unwrap_err();
    assert!(!e.is_clean_eof());
    assert_eq!(
        e.to_string(),
        format!(
            "reading the stream failed in the middle of a HelloAck frame (after 8 of {} payload bytes, frame at stream offset 0)",
            wire.len() - 12
        )
    );
    assert_eq!(e.failure_code(), FailureCode::Internal);
    // The source is kept for the CLI's error chain, not formatted into the message.
    assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "reset");

    // A reset between frames is not a clean close.
    let mut reader = FrameReader::new(
        Flaky {
            data: &[],
            calls: 0,
            then: Some(io::ErrorKind::ConnectionReset),
        },
        Incoming::FromTarget,
    );
    let e = reader.read_frame(&mut b).unwrap_err();
    assert!(!e.is_clean_eof());
    assert!(e
        .to_string()
        .starts_with("reading the stream failed between frames"));
}

#[test]
fn a_waiting_read_survives_timeouts_anywhere_in_a_frame_and_gives_up_when_told() {
    /// Times out before every byte, so the frame arrives between a dozen timeouts.
    struct Slow<'a> {
        data: &'a [u8],
        ready: bool,
    }
    impl Read for Slow<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.ready = !self.ready;
            match (self.ready, self.data.split_first()) {
                (false, _) => Err(io::Error::new(io::ErrorKind::WouldBlock, "poll")),
                (true, Some((b, rest))) => {
                    out[0] = *b;
                    self.data = rest;
                    Ok(1)
                }
                (true, None) => Ok(0),
            }
        }
    }
    let mut wire = Vec::new();
    Ack::Completed.encode(&mut wire).unwrap();
    let mut b = buf();
    let mut waits = 0;
    let mut reader = FrameReader::new(
        Slow {
            data: &wire,
            ready: true,
        },
        Incoming::FromTarget,
    );
    let frame = reader
        .read_frame_waiting(&mut b, &mut || {
            waits += 1;
            true
        })
        .unwrap();
    assert!(matches!(frame, Frame::Ack(Ack::Completed)));
    assert_eq!(waits, wire.len(), "one wait before every byte");

    // Told to stop waiting in the middle of the header: a timeout error, and the reader
    // is done (the bytes it had are gone with it).
    let mut left = 5;
    let mut reader = FrameReader::new(
        Slow {
            data: &wire,
            ready: true,
        },
        Incoming::FromTarget,
    );
    let e = reader
        .read_frame_waiting(&mut b, &mut || {
            left -= 1;
            left > 0
        })
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(matches!(
        reader.read_frame(&mut b).unwrap_err(),
        CodecError::Stopped
    ));
    // The plain read never waits.
    let mut reader = FrameReader::new(
        Slow {
            data: &wire,
            ready: true,
        },
        Incoming::FromTarget,
    );
    assert!(reader.read_frame(&mut b).unwrap_err().is_timeout());
}

#[test]
fn invalid_frames_report_their_offset_and_cause() {
    let mut wire = Vec::new();
    Done::default().encode(&mut wire).unwrap();
    let mut bad = Vec::new();
    Done::default().encode(&mut bad).unwrap();
    bad[4] = 9;
    wire.extend(&bad);
    let mut reader = FrameReader::new(&wire[..], Incoming::Capture);
    let mut b = buf();
    reader.read_frame(&mut b).unwrap();
    let e = reader.read_frame(&mut b).unwrap_err();
    assert_eq!(e.to_string(), "invalid frame at stream offset 12");
    assert!(matches!(
        &e,
        CodecError::Frame {
            source: FrameError::UnsupportedVersion { found: 9, .. },
            ..
        }
    ));
    assert_eq!(e.failure_code(), FailureCode::UnsupportedVersion);
}

#[test]
fn random_streams_and_flipped_sessions_never_panic() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    let sessions = [
        fuzzing::sev_session(),
        fuzzing::plain_session(),
        fuzzing::aborted_session(),
    ];
    for i in 0..3000 {
        let data = match i % 3 {
            // Pure garbage.
            0 => {
                let len = rng.below(200);
                rng.bytes(len)
            }
            // Garbage behind a valid header prefix (reaches the payload decoders).
            1 => {
                let mut d = b"SMIG\x01\x00".to_vec();
                d.push(1 + rng.below(12) as u8);
                d.push(0);
                let len = rng.below(300) as u32;
                d.extend(len.to_le_bytes());
                let extra = rng.below(2);
                let body = rng.bytes(len as usize + extra);
                d.extend(body);
                d
            }
            // A real session with bytes flipped, cut or duplicated.
            _ => {
                let mut d = sessions[rng.below(sessions.len())].clone();
                for _ in 0..1 + rng.below(3) {
                    let at = rng.below(d.len());
                    match rng.below(3) {
                        0 => d[at] ^= 1 << rng.below(8),
                        1 => d.truncate(at),
                        _ => {
                            let b = d[at];
                            d.insert(at, b);
                        }
                    }
                    if d.is_empty() {
                        break;
                    }
                }
                d
            }
        };
        let summary = fuzzing::exercise(&data);
        // Whatever happened, the reader ended in an error it can name.
        assert!(!summary.end.to_string().is_empty());
    }
}

/// A stream backed by a socket (the no-copy path reads from its descriptor), fed with
/// `wire` by a thread and closed after it.
fn socket_with(wire: Vec<u8>) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let (mut feed, stream) = std::os::unix::net::UnixStream::pair().unwrap();
    std::thread::spawn(move || {
        let _ = feed.write_all(&wire);
    });
    stream
}

/// Keeps the records it is given, and counts how they came.
#[derive(Default)]
struct Keep {
    bytes: Vec<u8>,
    from_buffer: usize,
    from_fd: usize,
}

impl RecordDest for Keep {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.bytes.extend_from_slice(bytes);
        self.from_buffer += bytes.len();
        Ok(())
    }

    fn read_from(&mut self, fd: BorrowedFd<'_>, len: usize) -> io::Result<()> {
        let mut f = std::fs::File::from(fd.try_clone_to_owned()?);
        let at = self.bytes.len();
        self.bytes.resize(at + len, 0);
        f.read_exact(&mut self.bytes[at..])?;
        self.from_fd += len;
        Ok(())
    }
}

#[test]
fn batch_records_move_straight_to_their_destination_and_match_the_decoded_frames() {
    let wire = fuzzing::sev_session();
    // What read_frame decodes: the records of every batch.
    let mut want = Vec::new();
    let mut reader = FrameReader::new(&wire[..], Incoming::Capture);
    let mut b = buf();
    while let Ok(f) = reader.read_frame(&mut b) {
        if let Frame::PageBatch(batch) = f {
            want.push((batch.header().unwrap(), batch.records.to_vec()));
        }
    }
    assert!(!want.is_empty());
    // Whatever the reader's buffer holds when a batch starts comes as a slice, the rest
    // from the descriptor.
    for capacity in [16, 4096, 1 << 16] {
        let stream = socket_with(wire.clone());
        let mut reader = FrameReader::new(
            BufReader::with_capacity(capacity, stream),
            Incoming::Capture,
        );
        let mut got = Vec::new();
        let (mut from_buffer, mut from_fd) = (0, 0);
        let mut frames = 0;
        loop {
            match reader.read_next(&mut b) {
                Ok(Next::Frame(_)) => {}
                Ok(Next::Batch(start)) => {
                    let mut keep = Keep::default();
                    let len = reader
                        .read_records(|from| {
                            let len = from.len();
                            from.read_into(&mut keep).map(|()| len)
                        })
                        .unwrap()
                        .unwrap();
                    assert_eq!(len, keep.bytes.len());
                    from_buffer += keep.from_buffer;
                    from_fd += keep.from_fd;
                    got.push((start.header, keep.bytes));
                }
                Err(e) => {
                    assert!(e.is_clean_eof(), "{e}");
                    break;
                }
            }
            frames += 1;
        }
        assert_eq!(got, want, "capacity {capacity}");
        assert_eq!(reader.offset(), wire.len() as u64);
        assert_eq!(reader.frames(), frames);
        if capacity == 16 {
            // At most what the buffer held when the batch's headers were taken from it.
            assert!(from_buffer <= 16 * got.len(), "{from_buffer}");
            assert!(from_fd > 0);
        }
        if capacity == 1 << 16 {
            assert_eq!(from_fd, 0, "this session's batches fit the buffer");
        }
    }
}

#[test]
fn a_batch_whose_records_are_not_moved_stops_the_reader() {
    let wire = fuzzing::sev_session();
    let mut b = buf();
    let first_batch = |reader: &mut FrameReader<BufReader<std::os::unix::net::UnixStream>>,
                       b: &mut Vec<u8>| loop {
        if let Next::Batch(start) = reader.read_next(b).unwrap() {
            return start;
        }
    };

    // The next frame before the records: refused, and the reader stops.
    let mut reader = FrameReader::new(BufReader::new(socket_with(wire.clone())), Incoming::Capture);
    let start = first_batch(&mut reader, &mut b);
    let e = reader.read_next(&mut b).unwrap_err();
    assert!(
        matches!(e, CodecError::RecordsPending(o) if o == start.offset),
        "{e}"
    );
    assert!(matches!(reader.read_next(&mut b), Err(CodecError::Stopped)));

    // Records left unread by the caller: the stream is out of sync.
    let mut reader = FrameReader::new(BufReader::new(socket_with(wire.clone())), Incoming::Capture);
    let start = first_batch(&mut reader, &mut b);
    let e = reader.read_records(|_| ()).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "in the middle of a PageBatch frame (after 12 of {} payload bytes, frame at stream offset {})",
            12 + start.header.records_len,
            start.offset
        )),
        "{e}"
    );
    assert!(matches!(reader.read_next(&mut b), Err(CodecError::Stopped)));

    // The stream ends inside the records: an I/O error that says where.
    let mut reader = FrameReader::new(BufReader::new(socket_with(wire.clone())), Incoming::Capture);
    let start = first_batch(&mut reader, &mut b);
    let cut = start.offset as usize + FrameHeader::SIZE + 12 + 100;
    let mut reader = FrameReader::new(
        BufReader::with_capacity(16, socket_with(wire[..cut].to_vec())),
        Incoming::Capture,
    );
    let again = first_batch(&mut reader, &mut b);
    assert_eq!(again, start);
    let mut keep = Keep::default();
    let inner = reader
        .read_records(|from| from.read_into(&mut keep))
        .unwrap_err();
    match &inner {
        CodecError::Io {
            at: StreamPosition::InPayload { got, kind, .. },
            source,
        } => {
            assert_eq!(*kind, MessageType::PageBatch);
            // The batch header and what the buffer held; not what the failed read got.
            assert!((12..12 + 16).contains(got), "{got}");
            assert_eq!(source.kind(), io::ErrorKind::UnexpectedEof);
        }
        other => panic!("{other:?}"),
    }
    // Asking for records when no batch is waiting is an error too.
    let mut reader = FrameReader::new(BufReader::new(socket_with(Vec::new())), Incoming::Capture);
    assert!(reader.read_records(|_| ()).is_err());
}

#[test]
fn records_checked_in_a_window_are_refused_exactly_as_a_decoded_batch() {
    use crate::frames::{BatchCheckError, PageBatch, PageBatchHeader};
    use helper_abi::record::{Kind, HEADER_SIZE};
    let mut records = fuzzing::fake_record(Kind::PAGE, 2, 5, 0x1000, 1);
    records.extend(fuzzing::fake_record(Kind::ZERO, 2, 5, 0x3000, 2));
    records.extend(fuzzing::fake_record(Kind::PAGE, 2, 5, 0x5000, 3));
    let mut rng = XorShift(0x5eed);
    let mut checked = 0;
    for i in 0..3000 {
        let mut r = records.clone();
        let mut count = 3u32;
        match i % 4 {
            // A header byte flipped.
            0 => {
                let at = [0, 4144, 4192][rng.below(3)] + rng.below(HEADER_SIZE);
                r[at] ^= 1 << rng.below(8);
            }
            // Cut short or extended.
            1 => r.truncate(rng.below(r.len())),
            2 => {
                let n = 1 + rng.below(100);
                r.extend(rng.bytes(n));
            }
            // Another declared count.
            _ => count = rng.below(5) as u32,
        }
        let mut payload = Vec::new();
        payload.extend_from_slice(&2u16.to_le_bytes());
        payload.extend_from_slice(&[0, 0]);
        payload.extend_from_slice(&5u32.to_le_bytes());
        payload.extend_from_slice(&count.to_le_bytes());
        let whole = [payload.clone(), r.clone()].concat();
        let decoded = PageBatch::decode(2, &whole);
        let head: [u8; 12] = payload.try_into().unwrap();
        let direct = PageBatchHeader::decode(2, &head, r.len()).and_then(|h| {
            let mut reads = Vec::new();
            let located = h
                .check_records(|at, out| {
                    reads.push(at);
                    out.copy_from_slice(&r[at..at + HEADER_SIZE]);
                    Ok::<(), ()>(())
                })
                .map_err(|e| match e {
                    BatchCheckError::Frame(f) => f,
                    BatchCheckError::Read(()) => unreachable!(),
                })?;
            // Each header was read once, at its record's offset.
            assert_eq!(reads, located.iter().map(|l| l.offset).collect::<Vec<_>>());
            Ok(located)
        });
        match (&decoded, &direct) {
            (Ok(d), Ok(located)) => {
                assert_eq!(d.iter().collect::<Vec<_>>(), *located);
                checked += 1;
            }
            // Both refuse; the direct path checks the declared count against the length
            // before it reads a record, so its reason may differ.
            (Err(_), Err(b)) => assert!(b.to_string().starts_with("PageBatch "), "{b}"),
            _ => panic!("case {i}: decode {decoded:?}, direct {direct:?}"),
        }
    }
    assert!(checked > 100, "{checked} valid cases");
}
