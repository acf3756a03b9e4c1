//! What the `migration_frames` fuzz target runs on each input, and the sessions its seed
//! corpus (`fuzz/seeds/migration_frames/`) is made of. The seed replay test drives the
//! same [`exercise`], so every seed and every crash kept there stays fixed.

use helper_abi::record::{self, Kind, RecordHeader};

use crate::codec::{CodecError, FrameReader, Incoming};
use crate::frames::{
    Abort, AbortToken, Ack, DeviceState, Done, FailureCode, Frame, FrameHeader, GpaRange,
    GuestMode, Hello, HelloAck, KeyConfirm, KeyReply, KeyShare, Manifest, PageBatch, PageData,
    PlainPage, PlainPages, ProtocolError, Ready, ReceiverState, RoundEnd, SharedList, SharedRange,
    SharedRanges, VcpuState, MAX_PAYLOAD_LEN, PAGE_SIZE, PROTOCOL_VERSION,
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
/// codec checks framing only, so the bytes need not be real ciphertext. Fixed-size kinds
/// get their size; blobs their largest.
pub fn fake_record(kind: Kind, lane: u8, round: u32, gpa: u64, seq: u64) -> Vec<u8> {
    let len = kind.payload_bounds().map_or(0, |(_, max)| max);
    fake_record_of(kind, lane, round, gpa, seq, len)
}

/// Like [`fake_record`], with a payload of `len` bytes.
pub fn fake_record_of(kind: Kind, lane: u8, round: u32, gpa: u64, seq: u64, len: usize) -> Vec<u8> {
    let header = RecordHeader {
        kind,
        lane,
        flags: 0,
        round,
        gpa,
        version: if kind.is_page() { round + 1 } else { 0 },
        // At most a window: fits.
        len: len as u32,
        seq,
    };
    let mut r = header.encode().to_vec();
    r.extend((0..len + record::TAG_SIZE).map(|i| (i as u64 ^ gpa ^ seq) as u8));
    r
}

/// A shared-list blob record of `ranges` (the list in the clear, a patterned tag).
pub fn fake_list_record(lane: u8, round: u32, seq: u64, ranges: &[(u64, u64)]) -> Vec<u8> {
    let mut list = b"SHRD".to_vec();
    list.extend((ranges.len() as u32).to_le_bytes());
    for (gpa, pages) in ranges {
        list.extend(gpa.to_le_bytes());
        list.extend(pages.to_le_bytes());
    }
    let mut r = fake_record_of(Kind::SHARED_LIST, lane, round, 0, seq, list.len());
    r[record::HEADER_SIZE..record::HEADER_SIZE + list.len()].copy_from_slice(&list);
    r
}

/// Rewrites the version field of every frame header in an encoded stream.
pub fn with_version(mut stream: Vec<u8>, version: u16) -> Vec<u8> {
    let mut at = 0;
    while at + FrameHeader::SIZE <= stream.len() {
        stream[at + 4..at + 6].copy_from_slice(&version.to_le_bytes());
        let len = u32::from_le_bytes([
            stream[at + 8],
            stream[at + 9],
            stream[at + 10],
            stream[at + 11],
        ]);
        at += FrameHeader::SIZE + len as usize;
    }
    stream
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
        helper_nonce: [0; 16],
        page_size: PAGE_SIZE as u32,
        vcpus: 2,
        es_helpers: 0,
        cpu: None,
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
        es_helpers: 0,
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

/// A whole SEV migration as one end sees it: Hello, HelloAck, the helpers' key
/// agreement, two precopy rounds of sealed lists and batches, shared pages and plain
/// copies, stop-and-copy, sealed device and vCPU state, the manifest, Ready, Done with the
/// commit, Ack.
pub fn sev_session() -> Vec<u8> {
    let page_a = [0x11u8; PAGE_SIZE];
    let list0 = fake_list_record(0, 0, 1, &[(0x9_0000, 2)]);
    let mut batch0 = fake_record(Kind::PAGE, 0, 0, 0x1000, 2);
    batch0.extend(fake_record(Kind::PAGE, 0, 0, 0x2000, 3));
    batch0.extend(fake_record(Kind::PAGE, 0, 0, 0x3000, 4));
    let batch0b = fake_record(Kind::ZERO, 1, 0, 0x10_0000, 1);
    let list1 = fake_list_record(0, 1, 5, &[(0x9_0000, 2)]);
    let batch1 = fake_record(Kind::PAGE, 0, 1, 0x1000, 6);
    let device = fake_record_of(Kind::DEVICE_STATE, 0, 1, 0, 7, 23);
    let vcpu0 = fake_record_of(Kind::VCPU_STATE, 0, 1, 0, 8, 300);
    let vcpu1 = fake_record_of(Kind::VCPU_STATE, 0, 1, 1, 9, 300);
    let mut manifest = [0u8; record::MANIFEST_RECORD_SIZE];
    manifest.copy_from_slice(&fake_record(Kind::MANIFEST, 0, 1, 0, 10));
    let mut commit = [0u8; record::COMMIT_RECORD_SIZE];
    commit.copy_from_slice(&fake_record(Kind::COMMIT, 0, 1, 0, 11));
    encode_all(&[
        Frame::Hello(sev_hello()),
        Frame::HelloAck(HelloAck::Accepted),
        Frame::KeyShare(KeyShare {
            nonce: [0x31; 32],
            share: [0x32; 32],
        }),
        Frame::KeyReply(KeyReply {
            nonce: [0x33; 32],
            share: [0x34; 32],
            mac: [0x35; 32],
        }),
        Frame::KeyConfirm(KeyConfirm { mac: [0x36; 32] }),
        Frame::SharedList(SharedList { record: &list0 }),
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
        Frame::SharedList(SharedList { record: &list1 }),
        Frame::PageBatch(PageBatch {
            lane: 0,
            round: 1,
            records: &batch1,
        }),
        Frame::SharedRanges(SharedRanges {
            ranges: vec![SharedRange {
                gpa: 0x9_0000,
                pages: 2,
            }],
        }),
        Frame::RoundEnd(RoundEnd {
            round: 1,
            pages_sent: 1,
            dirty_remaining: 0,
        }),
        Frame::DeviceState(DeviceState { blob: &device }),
        Frame::VcpuState(VcpuState {
            index: 0,
            blob: &vcpu0,
        }),
        Frame::VcpuState(VcpuState {
            index: 1,
            blob: &vcpu1,
        }),
        Frame::Manifest(Manifest { record: manifest }),
        Frame::Ready(Ready),
        Frame::Done(Done {
            commit: Some(commit),
        }),
        Frame::Ack(Ack::Completed),
    ])
}

/// An SEV migration whose target gave the committed session up: its AbortToken and
/// Abort after Done.
pub fn sev_aborted_after_commit() -> Vec<u8> {
    let sev = sev_session();
    // Everything up to the Ack (the last frame: a 12-byte header and a 1-byte status).
    let mut s = sev[..sev.len() - FrameHeader::SIZE - 1].to_vec();
    let tail = encode_all(&[
        Frame::AbortToken(AbortToken { tag: [0x77; 32] }),
        Frame::Abort(Abort {
            code: FailureCode::Integrity,
            reason: "the commit record did not verify".into(),
        }),
    ]);
    s.extend(tail);
    s
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
        Frame::Done(Done::default()),
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

/// A plain-guest migration in protocol version 1 (the version before this one, still
/// read): its Hello carries the version-1 helper nonce field.
pub fn plain_session_v1() -> Vec<u8> {
    let mut hello = Vec::new();
    Hello {
        version: 1,
        ..plain_hello()
    }
    .encode(&mut hello)
    .expect("a valid version-1 Hello");
    let rest = plain_session();
    // Skip the version-2 Hello of the plain session.
    let hello_len = u32::from_le_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
    hello.extend(with_version(
        rest[FrameHeader::SIZE + hello_len..].to_vec(),
        1,
    ));
    hello
}

/// [`sev_session`] of an SEV-ES guest: its Hello says so and names 2 measured helpers
/// (the rest of a session is the same on the wire).
pub fn sev_es_session() -> Vec<u8> {
    let sev = sev_session();
    let first = sev
        .get(8..12)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .expect("the sample session starts with a frame header");
    let mut out = encode_all(&[Frame::Hello(Hello {
        mode: GuestMode::SevEs,
        es_helpers: 2,
        ..sev_hello()
    })]);
    out.extend_from_slice(sev.get(FrameHeader::SIZE + first..).unwrap_or_default());
    out
}

/// The seed corpus: file name and bytes.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let sev = sev_session();
    let truncated = sev.get(..sev.len() / 2).unwrap_or_default().to_vec();
    // The first frame's version byte set to one past this build's.
    let mut next = plain_session();
    if let Some(b) = next.get_mut(4) {
        *b = (PROTOCOL_VERSION + 1) as u8;
    }
    vec![
        ("sev-session.bin", sev),
        ("sev-es-session.bin", sev_es_session()),
        ("sev-aborted-after-commit.bin", sev_aborted_after_commit()),
        ("plain-session.bin", plain_session()),
        ("plain-session-v1.bin", plain_session_v1()),
        ("refused-hello.bin", refused_session()),
        ("aborted-round0.bin", aborted_session()),
        ("sev-session-truncated.bin", truncated),
        ("version-3-hello.bin", next),
        ("empty.bin", Vec::new()),
    ]
}
