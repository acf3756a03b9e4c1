//! What the `migration_frames` fuzz target runs on each input, and the sessions its seed
//! corpus (`fuzz/seeds/migration_frames/`) is made of. The seed replay test drives the
//! same [`exercise`], so every seed and every crash kept there stays fixed.

use helper_abi::record::{self, Kind, RecordHeader};

use crate::codec::{CodecError, FrameReader, Incoming};
use crate::frames::{
    Abort, Ack, DeviceState, Done, FailureCode, Frame, GpaRange, GuestMode, Hello, HelloAck,
    Manifest, PageBatch, PageData, PlainPage, PlainPages, ProtocolError, ReceiverState, RoundEnd,
    SharedRange, SharedRanges, VcpuState, MAX_PAYLOAD_LEN, PAGE_SIZE, PROTOCOL_VERSION,
};

/// What [`exercise`] saw.
#[derive(Debug)]
pub struct Summary {
    /// Frames decoded.
    pub frames: usize,
    /// The session state after the last frame, or the first out-of-order frame.
    pub state: Result<ReceiverState, ProtocolError>,
    /// Why reading stopped (a clean EOF when the input was whole frames).
    pub end: CodecError,
}

/// Reads `data` as a captured session (both directions), feeding the state machine, and
/// checks on every frame it decodes that re-encoding it and decoding the result gives the
/// same frame. Errors in `data` end the read; a panic here is a bug.
pub fn exercise(data: &[u8]) -> Summary {
    let mut reader = FrameReader::new(data, Incoming::Capture);
    // Zeroed pages come from the allocator untouched: only what a frame fills costs.
    let mut buf = vec![0u8; MAX_PAYLOAD_LEN];
    let mut state: Result<ReceiverState, ProtocolError> = Ok(ReceiverState::default());
    let mut frames = 0;
    let mut again = vec![0u8; MAX_PAYLOAD_LEN];
    let end = loop {
        let frame = match reader.read_frame(&mut buf) {
            Ok(frame) => frame,
            Err(e) => break e,
        };
        frames += 1;
        state = state.and_then(|s| s.next(frame.message_type()));
        if let Frame::PageBatch(batch) = &frame {
            let header = batch.header().expect("a decoded batch frames its records");
            assert_eq!(batch.iter().count(), header.count as usize);
        }
        let mut wire = Vec::new();
        frame
            .encode(&mut wire)
            .expect("a decoded frame encodes again");
        let mut second = FrameReader::new(&wire[..], Incoming::Capture);
        let decoded = second
            .read_frame(&mut again)
            .expect("a re-encoded frame decodes");
        assert_eq!(decoded, frame, "re-encoding changed the frame");
        assert!(
            second
                .read_frame(&mut again)
                .is_err_and(|e| e.is_clean_eof()),
            "re-encoding wrote more than one frame"
        );
    };
    Summary { frames, state, end }
}

/// A sealed-looking record: a valid header, a patterned payload, a patterned tag. The
/// codec checks framing only, so the bytes need not be real ciphertext.
pub fn fake_record(kind: Kind, lane: u8, round: u32, gpa: u64, seq: u64) -> Vec<u8> {
    let len = kind.payload_len().unwrap_or(0);
    let header = RecordHeader {
        kind,
        lane,
        flags: 0,
        round,
        gpa,
        version: round + 1,
        // At most a page: fits.
        len: len as u32,
        seq,
    };
    let mut r = header.encode().to_vec();
    r.extend((0..len + record::TAG_SIZE).map(|i| (i as u64 ^ gpa ^ seq) as u8));
    r
}

fn sev_hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        mode: GuestMode::Sev,
        mem_size: 0x20_0000,
        ram: vec![
            GpaRange {
                base: 0,
                size: 0xa_0000,
            },
            GpaRange {
                base: 0x10_0000,
                size: 0x16_0000,
            },
        ],
        firmware_digest: [0x5a; 32],
        helper_region: GpaRange {
            base: 0x18_0000,
            size: 0x8_0000,
        },
        lanes: 2,
        session_id: *b"session-id-0001!",
        helper_nonce: *b"helper-nonce-01!",
        page_size: PAGE_SIZE as u32,
        vcpus: 2,
    }
}

fn plain_hello() -> Hello {
    Hello {
        mode: GuestMode::Plain,
        mem_size: 0x10_0000,
        ram: vec![GpaRange {
            base: 0,
            size: 0x10_0000,
        }],
        helper_region: GpaRange::default(),
        lanes: 0,
        helper_nonce: [0; 16],
        vcpus: 1,
        ..sev_hello()
    }
}

fn encode_all(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out).expect("sample frames are valid");
    }
    out
}

/// A whole SEV migration as one end sees it: Hello, HelloAck, two precopy rounds of
/// sealed batches, shared pages and plain copies, stop-and-copy, device and vCPU state,
/// the manifest, Done, Ack.
pub fn sev_session() -> Vec<u8> {
    let page_a = [0x11u8; PAGE_SIZE];
    let mut batch0 = fake_record(Kind::PAGE, 0, 0, 0x1000, 1);
    batch0.extend(fake_record(Kind::ZERO, 0, 0, 0x2000, 2));
    batch0.extend(fake_record(Kind::PAGE, 0, 0, 0x3000, 3));
    let batch0b = fake_record(Kind::ZERO, 1, 0, 0x10_0000, 1);
    let batch1 = fake_record(Kind::PAGE, 0, 1, 0x1000, 4);
    let mut manifest = [0u8; record::MANIFEST_RECORD_SIZE];
    manifest.copy_from_slice(&fake_record(Kind::MANIFEST, 0, 2, 0, 5));
    let shared = SharedRanges {
        ranges: vec![SharedRange {
            gpa: 0x9_0000,
            pages: 2,
        }],
    };
    encode_all(&[
        Frame::Hello(sev_hello()),
        Frame::HelloAck(HelloAck::Accepted),
        Frame::SharedRanges(shared.clone()),
        Frame::PageBatch(PageBatch {
            lane: 0,
            round: 0,
            records: &batch0,
        }),
        Frame::PageBatch(PageBatch {
            lane: 1,
            round: 0,
            records: &batch0b,
        }),
        Frame::PlainPages(PlainPages {
            round: 0,
            pages: vec![
                PlainPage {
                    gpa: 0x9_0000,
                    data: PageData::Bytes(&page_a),
                },
                PlainPage {
                    gpa: 0x9_1000,
                    data: PageData::Zero,
                },
            ],
        }),
        Frame::RoundEnd(RoundEnd {
            round: 0,
            pages_sent: 6,
            dirty_remaining: 1,
        }),
        Frame::PageBatch(PageBatch {
            lane: 0,
            round: 1,
            records: &batch1,
        }),
        Frame::SharedRanges(shared),
        Frame::RoundEnd(RoundEnd {
            round: 1,
            pages_sent: 1,
            dirty_remaining: 0,
        }),
        Frame::DeviceState(DeviceState {
            blob: b"serial:0;pit:1;ioapic:2",
        }),
        Frame::VcpuState(VcpuState {
            index: 0,
            blob: &[0xc0; 300],
        }),
        Frame::VcpuState(VcpuState {
            index: 1,
            blob: &[0xc1; 300],
        }),
        Frame::Manifest(Manifest { record: manifest }),
        Frame::Done(Done),
        Frame::Ack(Ack::Completed),
    ])
}

/// A whole plain-guest migration: every page as PlainPages.
pub fn plain_session() -> Vec<u8> {
    let page = [0x42u8; PAGE_SIZE];
    encode_all(&[
        Frame::Hello(plain_hello()),
        Frame::HelloAck(HelloAck::Accepted),
        Frame::PlainPages(PlainPages {
            round: 0,
            pages: vec![
                PlainPage {
                    gpa: 0,
                    data: PageData::Zero,
                },
                PlainPage {
                    gpa: 0x1000,
                    data: PageData::Bytes(&page),
                },
                PlainPage {
                    gpa: 0xf_f000,
                    data: PageData::Zero,
                },
            ],
        }),
        Frame::RoundEnd(RoundEnd {
            round: 0,
            pages_sent: 3,
            dirty_remaining: 0,
        }),
        Frame::DeviceState(DeviceState { blob: &[] }),
        Frame::VcpuState(VcpuState {
            index: 0,
            blob: b"regs",
        }),
        Frame::Done(Done),
        Frame::Ack(Ack::Failed {
            code: FailureCode::Internal,
            reason: "could not resume the guest".into(),
        }),
    ])
}

/// A target that refuses the Hello.
pub fn refused_session() -> Vec<u8> {
    encode_all(&[
        Frame::Hello(sev_hello()),
        Frame::HelloAck(HelloAck::Refused {
            code: FailureCode::FirmwareMismatch,
            reason: "firmware digest differs: target boots 5b5b…".into(),
        }),
    ])
}

/// A source that aborts in the middle of round 0.
pub fn aborted_session() -> Vec<u8> {
    let batch = fake_record(Kind::ZERO, 1, 0, 0x4000, 9);
    encode_all(&[
        Frame::Hello(sev_hello()),
        Frame::HelloAck(HelloAck::Accepted),
        Frame::PageBatch(PageBatch {
            lane: 1,
            round: 0,
            records: &batch,
        }),
        Frame::Abort(Abort {
            code: FailureCode::Cancelled,
            reason: "migrate_cancel".into(),
        }),
    ])
}

/// The seed corpus: file name and bytes.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let sev = sev_session();
    let truncated = sev.get(..sev.len() / 2).unwrap_or_default().to_vec();
    // The first frame's version byte set to 2.
    let mut v2 = plain_session();
    if let Some(b) = v2.get_mut(4) {
        *b = 2;
    }
    vec![
        ("sev-session.bin", sev),
        ("plain-session.bin", plain_session()),
        ("refused-hello.bin", refused_session()),
        ("aborted-round0.bin", aborted_session()),
        ("sev-session-truncated.bin", truncated),
        ("version-2-hello.bin", v2),
        ("empty.bin", Vec::new()),
    ]
}
