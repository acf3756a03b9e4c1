//! T1 tests of the frame reader: whole sessions, truncation at every byte, garbage,
//! oversize lengths, direction and version checks.

use std::io::{self, Read};

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
