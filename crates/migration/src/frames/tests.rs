//! T1 tests of the frame layouts: round trips, golden bytes, and rejection of every
//! malformed field.

use helper_abi::record::{
    Kind, COMMIT_RECORD_SIZE, MANIFEST_RECORD_SIZE, PAGE_RECORD_SIZE, ZERO_RECORD_SIZE,
};

use super::*;
use crate::fuzzing::{fake_list_record, fake_record, fake_record_of};

/// A small deterministic PRNG for the garbage loops.
pub(crate) struct XorShift(pub(crate) u64);

impl XorShift {
    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

pub(crate) fn sev_hello() -> Hello {
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
        firmware_digest: [7; 32],
        helper_region: GpaRange {
            base: 0x20_0000,
            size: 0x6_0000,
        },
        lanes: 3,
        session_id: [1; 16],
        helper_nonce: [0; 16],
        page_size: 4096,
        vcpus: 4,
        es_helpers: 0,
        cpu: None,
    }
}

/// A version-1 SEV Hello: it still had the source helper's nonce.
pub(crate) fn sev_hello_v1() -> Hello {
    Hello {
        version: 1,
        helper_nonce: [2; 16],
        ..sev_hello()
    }
}

pub(crate) fn plain_hello() -> Hello {
    Hello {
        mode: GuestMode::Plain,
        helper_region: GpaRange::default(),
        lanes: 0,
        helper_nonce: [0; 16],
        ..sev_hello()
    }
}

/// One encoded frame of every type (both outcomes of HelloAck and Ack), with the frame
/// it must decode to.
pub(crate) fn samples() -> Vec<(Vec<u8>, Frame<'static>)> {
    let mut batch = fake_record(Kind::PAGE, 2, 5, 0x1000, 10);
    batch.extend(fake_record(Kind::ZERO, 2, 5, 0x3000, 11));
    let batch: &'static [u8] = Vec::leak(batch);
    let page: &'static [u8; PAGE_SIZE] = Box::leak(Box::new([0xab; PAGE_SIZE]));
    let blob: &'static [u8] = Vec::leak((0..=255u8).cycle().take(3000).collect());
    let sealed_blob: &'static [u8] = Vec::leak(fake_record_of(Kind::VCPU_STATE, 1, 5, 3, 7, 300));
    let list: &'static [u8] = Vec::leak(fake_list_record(0, 5, 8, &[(0x9_0000, 2)]));
    let mut manifest = [0u8; MANIFEST_LEN];
    manifest.copy_from_slice(&fake_record(Kind::MANIFEST, 0, 9, 0, 99));
    let mut commit = [0u8; COMMIT_LEN];
    commit.copy_from_slice(&fake_record(Kind::COMMIT, 0, 9, 0, 100));
    let frames = vec![
        Frame::Hello(sev_hello()),
        Frame::Hello(plain_hello()),
        Frame::HelloAck(HelloAck::Accepted),
        Frame::HelloAck(HelloAck::Refused {
            code: FailureCode::Incompatible,
            reason: "mem size 0x200000 differs from the target's 0x400000".into(),
        }),
        Frame::PageBatch(PageBatch {
            lane: 2,
            round: 5,
            records: batch,
        }),
        Frame::PlainPages(PlainPages {
            round: 5,
            pages: vec![
                PlainPage {
                    gpa: 0x9_0000,
                    data: PageData::Zero,
                },
                PlainPage {
                    gpa: 0x9_1000,
                    data: PageData::Bytes(page),
                },
            ],
        }),
        Frame::SharedRanges(SharedRanges {
            ranges: vec![
                SharedRange {
                    gpa: 0x9_0000,
                    pages: 2,
                },
                SharedRange {
                    gpa: 0x10_0000,
                    pages: 1,
                },
            ],
        }),
        Frame::SharedRanges(SharedRanges::default()),
        Frame::DeviceState(DeviceState { blob }),
        Frame::DeviceState(DeviceState { blob: &[] }),
        Frame::VcpuState(VcpuState { index: 3, blob }),
        Frame::VcpuState(VcpuState {
            index: 3,
            blob: sealed_blob,
        }),
        Frame::RoundEnd(RoundEnd {
            round: 5,
            pages_sent: 1 << 40,
            dirty_remaining: 17,
        }),
        Frame::Manifest(Manifest { record: manifest }),
        Frame::Done(Done::default()),
        Frame::Done(Done {
            commit: Some(commit),
        }),
        Frame::KeyShare(KeyShare {
            nonce: [1; 32],
            share: [2; 32],
        }),
        Frame::KeyReply(KeyReply {
            nonce: [3; 32],
            share: [4; 32],
            mac: [5; 32],
        }),
        Frame::KeyConfirm(KeyConfirm { mac: [6; 32] }),
        Frame::SharedList(SharedList { record: list }),
        Frame::Ready(Ready),
        Frame::AbortToken(AbortToken { tag: [7; 32] }),
        Frame::Abort(Abort {
            code: FailureCode::Integrity,
            reason: "record 3 of lane 2 failed authentication — ünïcödé".into(),
        }),
        Frame::Ack(Ack::Completed),
        Frame::Ack(Ack::Failed {
            code: FailureCode::Integrity,
            reason: "manifest hash differs".into(),
        }),
    ];
    frames
        .into_iter()
        .map(|f| {
            let mut wire = Vec::new();
            f.encode(&mut wire).unwrap();
            (wire, f)
        })
        .collect()
}

fn header_of(wire: &[u8]) -> FrameHeader {
    FrameHeader::decode(wire[..FrameHeader::SIZE].try_into().unwrap()).unwrap()
}

fn decode_wire(wire: &[u8]) -> Result<Frame<'_>, FrameError> {
    let header = FrameHeader::decode(wire[..FrameHeader::SIZE].try_into().unwrap())?;
    Frame::decode(&header, &wire[FrameHeader::SIZE..])
}

/// Decodes a payload of `kind` at this build's version.
fn decode_payload(kind: MessageType, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    let header = FrameHeader {
        version: PROTOCOL_VERSION,
        kind,
        len: payload.len() as u32,
    };
    Frame::decode(&header, payload)
}

fn hello_payload(h: &Hello) -> Vec<u8> {
    let mut wire = Vec::new();
    h.encode(&mut wire).unwrap();
    wire.split_off(FrameHeader::SIZE)
}

/// Builds a Hello payload from raw (tag, value) fields.
fn fields(list: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (tag, value) in list {
        p.extend_from_slice(&tag.to_le_bytes());
        p.extend_from_slice(&(value.len() as u16).to_le_bytes());
        p.extend_from_slice(value);
    }
    p
}

/// The (tag, value) fields of an encoded Hello payload.
fn split_fields(payload: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < payload.len() {
        let tag = u16::from_le_bytes([payload[at], payload[at + 1]]);
        let len = u16::from_le_bytes([payload[at + 2], payload[at + 3]]) as usize;
        out.push((tag, payload[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    out
}

#[test]
fn every_type_round_trips() {
    let samples = samples();
    for t in MessageType::ALL {
        assert!(
            samples.iter().any(|(_, f)| f.message_type() == t),
            "no sample of {t}"
        );
    }
    for (wire, frame) in &samples {
        let header = header_of(wire);
        assert_eq!(header.kind, frame.message_type());
        assert_eq!(header.version, PROTOCOL_VERSION);
        assert_eq!(header.len as usize, wire.len() - FrameHeader::SIZE);
        assert_eq!(&decode_wire(wire).unwrap(), frame);
    }
}

#[test]
fn message_types_decode_from_their_codes_only() {
    for t in MessageType::ALL {
        assert_eq!(MessageType::try_from(t.code()).unwrap(), t);
        let (min, max) = t.payload_bounds();
        assert!(min <= max && max <= MAX_PAYLOAD_LEN, "{t}");
    }
    for code in [0u8, 19, 0x80, 0xff] {
        assert!(matches!(
            MessageType::try_from(code),
            Err(FrameError::UnknownType(c)) if c == code
        ));
    }
}

#[test]
fn golden_bytes_pin_the_layouts() {
    let mut w = Vec::new();
    Done::default().encode(&mut w).unwrap();
    assert_eq!(w, b"SMIG\x02\x00\x0a\x00\x00\x00\x00\x00");

    let mut w = Vec::new();
    RoundEnd {
        round: 0x0403_0201,
        pages_sent: 0x0c0b_0a09_0807_0605,
        dirty_remaining: 0x1413_1211_100f_0e0d,
    }
    .encode(&mut w)
    .unwrap();
    let mut want = b"SMIG\x02\x00\x08\x00\x14\x00\x00\x00".to_vec();
    want.extend(1..=20u8);
    assert_eq!(w, want);

    let mut w = Vec::new();
    HelloAck::Accepted.encode(&mut w).unwrap();
    assert_eq!(w, b"SMIG\x02\x00\x02\x00\x01\x00\x00\x00\x00");

    let mut w = Vec::new();
    Abort {
        code: FailureCode::Cancelled,
        reason: "stop".into(),
    }
    .encode(&mut w)
    .unwrap();
    assert_eq!(w, b"SMIG\x02\x00\x0b\x00\x05\x00\x00\x00\x07stop");

    let mut w = Vec::new();
    VcpuState {
        index: 0x0201,
        blob: b"xy",
    }
    .encode(&mut w)
    .unwrap();
    assert_eq!(w, b"SMIG\x02\x00\x07\x00\x06\x00\x00\x00\x01\x02\x00\x00xy");

    let mut w = Vec::new();
    SharedRanges {
        ranges: vec![SharedRange {
            gpa: 0x1000,
            pages: 3,
        }],
    }
    .encode(&mut w)
    .unwrap();
    let mut want = b"SMIG\x02\x00\x05\x00\x14\x00\x00\x00\x01\x00\x00\x00".to_vec();
    want.extend(0x1000u64.to_le_bytes());
    want.extend(3u64.to_le_bytes());
    assert_eq!(w, want);

    let record = fake_record(Kind::ZERO, 1, 2, 0x5000, 3);
    let mut w = Vec::new();
    PageBatch {
        lane: 1,
        round: 2,
        records: &record,
    }
    .encode(&mut w)
    .unwrap();
    let mut want = b"SMIG\x02\x00\x03\x00".to_vec();
    want.extend(((PAGE_BATCH_HEADER_LEN + ZERO_RECORD_SIZE) as u32).to_le_bytes());
    want.extend([1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0]);
    want.extend(&record);
    assert_eq!(w, want);

    let mut w = Vec::new();
    PlainPages {
        round: 9,
        pages: vec![PlainPage {
            gpa: 0x2000,
            data: PageData::Zero,
        }],
    }
    .encode(&mut w)
    .unwrap();
    let mut want = b"SMIG\x02\x00\x04\x00\x11\x00\x00\x00\x09\x00\x00\x00\x01\x00\x00\x00".to_vec();
    want.extend(0x2000u64.to_le_bytes());
    want.push(1);
    assert_eq!(w, want);

    // The Hello: fields in tag order, tag ‖ len ‖ value; version 2 has no helper nonce.
    let payload = hello_payload(&plain_hello());
    let f = split_fields(&payload);
    let tags: Vec<u16> = f.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, [1, 2, 3, 4, 5, 6, 7, 9, 10]);
    assert_eq!(f[0].1, [0]);
    assert_eq!(f[1].1, 0x20_0000u64.to_le_bytes());
    assert_eq!(f[2].1.len(), 32);
    assert_eq!(f[7].1, 4096u32.to_le_bytes());
    assert_eq!(f[8].1, 4u32.to_le_bytes());
    // Version 1 had it, between the session id and the page size.
    let mut wire = Vec::new();
    sev_hello_v1().encode(&mut wire).unwrap();
    assert_eq!(&wire[4..6], &[1, 0]);
    let tags: Vec<u16> = split_fields(&wire[FrameHeader::SIZE..])
        .iter()
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(tags, (1..=10).collect::<Vec<u16>>());

    // The helper frames: fixed layouts.
    let mut w = Vec::new();
    KeyConfirm { mac: [0xab; 32] }.encode(&mut w).unwrap();
    let mut want = b"SMIG\x02\x00\x0f\x00\x20\x00\x00\x00".to_vec();
    want.extend([0xab; 32]);
    assert_eq!(w, want);
    let mut w = Vec::new();
    KeyReply {
        nonce: [1; 32],
        share: [2; 32],
        mac: [3; 32],
    }
    .encode(&mut w)
    .unwrap();
    assert_eq!(&w[..12], b"SMIG\x02\x00\x0e\x00\x60\x00\x00\x00");
    assert_eq!((w[12], w[44], w[76]), (1, 2, 3));
    let mut w = Vec::new();
    Ready.encode(&mut w).unwrap();
    assert_eq!(w, b"SMIG\x02\x00\x11\x00\x00\x00\x00\x00");
}

#[test]
fn header_rejects_bad_magic_versions_types_and_flags() {
    let mut wire = Vec::new();
    Done::default().encode(&mut wire).unwrap();
    let decode = |b: &[u8]| FrameHeader::decode(b[..12].try_into().unwrap());

    let mut bad = wire.clone();
    bad[0] = b'X';
    let e = decode(&bad).unwrap_err();
    assert!(matches!(e, FrameError::BadMagic { found } if &found == b"XMIG"));
    assert!(e.to_string().contains("SMIG"), "{e}");

    for v in [0u16, 3, 0x100, u16::MAX] {
        let mut bad = wire.clone();
        bad[4..6].copy_from_slice(&v.to_le_bytes());
        let e = decode(&bad).unwrap_err();
        assert!(
            matches!(e, FrameError::UnsupportedVersion { found, min: 1, max: 2 } if found == v)
        );
        assert_eq!(
            e.to_string(),
            format!("protocol version {v} is not supported: this build accepts versions 1 to 2 (its own and the one before)")
        );
    }
    // Version 1 (the one before) is read.
    let mut v1 = wire.clone();
    v1[4] = 1;
    assert_eq!(decode(&v1).unwrap().version, 1);

    let mut bad = wire.clone();
    bad[6] = 0x42;
    let e = decode(&bad).unwrap_err();
    assert!(matches!(e, FrameError::UnknownType(0x42)));
    assert_eq!(e.to_string(), "unknown frame type 0x42");

    let mut bad = wire.clone();
    bad[7] = 0x80;
    let e = decode(&bad).unwrap_err();
    assert!(matches!(
        e,
        FrameError::ReservedFlags {
            kind: MessageType::Done,
            flags: 0x80
        }
    ));

    // A version this build does not read wins over an unknown type: a newer peer's
    // frames say "version", not "type".
    let mut bad = wire.clone();
    bad[4] = 3;
    bad[6] = 0x42;
    assert!(matches!(
        decode(&bad),
        Err(FrameError::UnsupportedVersion { found: 3, .. })
    ));
}

#[test]
fn lengths_beyond_each_cap_are_rejected_by_the_header() {
    for t in MessageType::ALL {
        let (min, max) = t.payload_bounds();
        for len in [max as u64 + 1, u32::MAX as u64] {
            let h = FrameHeader {
                version: 1,
                kind: t,
                len: len as u32,
            };
            let e = FrameHeader::decode(&h.encode()).unwrap_err();
            match e {
                FrameError::TooLong {
                    kind,
                    len: l,
                    max: m,
                } => {
                    assert_eq!((kind, l as u64, m), (t, len, max));
                }
                FrameError::WrongLength { kind, expected, .. } => {
                    assert_eq!((kind, expected), (t, min));
                    assert_eq!(min, max);
                }
                other => panic!("{t}: {other:?}"),
            }
        }
        if min > 0 {
            let h = FrameHeader {
                version: 1,
                kind: t,
                len: min as u32 - 1,
            };
            assert!(FrameHeader::decode(&h.encode()).is_err(), "{t}");
        }
    }
    let e = MessageType::PageBatch
        .check_len(MAX_PAYLOAD_LEN + 1)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "PageBatch payload of 1060877 bytes exceeds the 1060876-byte cap"
    );
    assert_eq!(
        MessageType::RoundEnd.check_len(19).unwrap_err().to_string(),
        "RoundEnd payload is 19 bytes, expected exactly 20"
    );
}

#[test]
fn the_caps_are_the_documented_ones() {
    assert_eq!(MAX_PAYLOAD_LEN, 12 + 256 * 4144);
    assert_eq!(MessageType::Hello.payload_bounds(), (0, 4096));
    assert_eq!(MessageType::PlainPages.payload_bounds().1, 8 + 256 * 4105);
    assert_eq!(MessageType::SharedRanges.payload_bounds().1, 4 + 16 * 65536);
    assert_eq!(MessageType::DeviceState.payload_bounds().1, (1 << 20) + 48);
    assert_eq!(MessageType::VcpuState.payload_bounds().1, 4 + 65536 + 48);
    assert_eq!(
        MessageType::Manifest.payload_bounds(),
        (96, MANIFEST_RECORD_SIZE)
    );
    assert_eq!(MANIFEST_RECORD_SIZE, 160);
    assert_eq!(MessageType::Done.payload_bounds(), (0, COMMIT_RECORD_SIZE));
    assert_eq!(COMMIT_RECORD_SIZE, 80);
    assert_eq!(MessageType::Abort.payload_bounds(), (1, 1025));
    assert_eq!(MessageType::KeyShare.payload_bounds(), (64, 64));
    assert_eq!(MessageType::KeyReply.payload_bounds(), (96, 96));
    assert_eq!(MessageType::KeyConfirm.payload_bounds(), (32, 32));
    assert_eq!(MessageType::SharedList.payload_bounds(), (56, 48 + 4096));
    assert_eq!(MessageType::Ready.payload_bounds(), (0, 0));
    assert_eq!(MessageType::AbortToken.payload_bounds(), (32, 32));
}

#[test]
fn truncated_payloads_of_self_delimiting_frames_are_errors() {
    // Blobs and reasons are delimited by the frame length alone (the codec test cuts
    // those at every stream offset); every other payload knows its own length.
    for (wire, frame) in samples() {
        let kind = frame.message_type();
        if matches!(
            frame,
            Frame::DeviceState(_)
                | Frame::VcpuState(_)
                | Frame::Abort(_)
                | Frame::HelloAck(HelloAck::Refused { .. })
                | Frame::Ack(Ack::Failed { .. })
        ) {
            continue;
        }
        // A Done with its commit cut to nothing is a plain guest's Done: legal.
        if matches!(frame, Frame::Done(_)) {
            let payload = &wire[FrameHeader::SIZE..];
            for cut in 1..payload.len() {
                assert!(
                    decode_payload(kind, &payload[..cut]).is_err(),
                    "Done cut at {cut}"
                );
            }
            continue;
        }
        let payload = &wire[FrameHeader::SIZE..];
        for cut in 0..payload.len() {
            assert!(
                decode_payload(kind, &payload[..cut]).is_err(),
                "{kind} decoded from {cut} of {} bytes",
                payload.len()
            );
        }
        // One byte too many is an error too (except where the tail is a blob).
        let mut longer = payload.to_vec();
        longer.push(0);
        assert!(decode_payload(kind, &longer).is_err(), "{kind} + 1 byte");
    }
}

#[test]
fn random_payloads_of_every_type_are_errors_not_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let samples = samples();
    for i in 0..20_000 {
        let t = MessageType::ALL[rng.below(MessageType::ALL.len())];
        let payload = if i % 2 == 0 {
            let (_, max) = t.payload_bounds();
            let len = rng.below(max.min(9000) + 1);
            rng.bytes(len)
        } else {
            // A valid payload of some type with a few bytes flipped.
            let (wire, _) = &samples[rng.below(samples.len())];
            let mut p = wire[FrameHeader::SIZE..].to_vec();
            for _ in 0..1 + rng.below(4) {
                if !p.is_empty() {
                    let at = rng.below(p.len());
                    p[at] ^= 1 << rng.below(8);
                }
            }
            p
        };
        let _ = decode_payload(t, &payload);
    }
}

#[test]
fn hello_field_rules() {
    let base = split_fields(&hello_payload(&sev_hello()));
    let ok = fields(&base);
    assert_eq!(
        decode_payload(MessageType::Hello, &ok).unwrap(),
        Frame::Hello(sev_hello())
    );

    // Any order.
    let mut reversed = base.clone();
    reversed.reverse();
    assert_eq!(
        decode_payload(MessageType::Hello, &fields(&reversed)).unwrap(),
        Frame::Hello(sev_hello())
    );

    // Unknown optional fields are skipped, anywhere.
    let mut with_optional = base.clone();
    with_optional.insert(3, (0x8042, vec![1, 2, 3]));
    with_optional.push((0xffff, vec![]));
    assert_eq!(
        decode_payload(MessageType::Hello, &fields(&with_optional)).unwrap(),
        Frame::Hello(sev_hello())
    );

    // ... but not twice.
    let mut twice_optional = base.clone();
    twice_optional.push((0x8042, vec![1]));
    twice_optional.push((0x8042, vec![2]));
    assert!(matches!(
        decode_payload(MessageType::Hello, &fields(&twice_optional)),
        Err(FrameError::DuplicateField { tag: 0x8042, .. })
    ));

    // Unknown mandatory fields are errors, with the offset.
    let mut unknown = base.clone();
    unknown.insert(1, (0x0042, vec![0]));
    let e = decode_payload(MessageType::Hello, &fields(&unknown)).unwrap_err();
    assert!(
        matches!(
            e,
            FrameError::UnknownField {
                tag: 0x42,
                offset: 5
            }
        ),
        "{e:?}"
    );

    // Every mandatory field of a version-2 SEV Hello (all but the helper nonce and the
    // SEV-ES field): missing, duplicated.
    let mandatory: Vec<HelloField> = HelloField::ALL
        .into_iter()
        .filter(|f| *f != HelloField::HelperNonce && *f != HelloField::EsHelpers)
        .collect();
    assert_eq!(base.len(), mandatory.len());
    for (i, field) in mandatory.into_iter().enumerate() {
        assert_eq!(base[i].0, field.tag());
        let mut missing = base.clone();
        missing.remove(i);
        let e = decode_payload(MessageType::Hello, &fields(&missing)).unwrap_err();
        assert!(
            matches!(e, FrameError::MissingField(f) if f == field),
            "{e:?}"
        );
        assert!(e.to_string().contains(field.name()), "{e}");

        let mut dup = base.clone();
        dup.push(base[i].clone());
        let e = decode_payload(MessageType::Hello, &fields(&dup)).unwrap_err();
        assert!(
            matches!(e, FrameError::DuplicateField { tag, .. } if tag == field.tag()),
            "{e:?}"
        );

        // A value one byte too long.
        let mut long = base.clone();
        long[i].1.push(0);
        assert!(
            decode_payload(MessageType::Hello, &fields(&long)).is_err(),
            "{field} one byte long"
        );
    }

    // The version-1 helper nonce is no field of version 2.
    let mut with_nonce = base.clone();
    with_nonce.push((8, vec![2; 16]));
    let e = decode_payload(MessageType::Hello, &fields(&with_nonce)).unwrap_err();
    assert!(e.to_string().contains("helper nonce"), "{e}");
    // ... while version 1 needs it.
    let v1 = split_fields(&{
        let mut w = Vec::new();
        sev_hello_v1().encode(&mut w).unwrap();
        w.split_off(FrameHeader::SIZE)
    });
    let header = |len: usize| FrameHeader {
        version: 1,
        kind: MessageType::Hello,
        len: len as u32,
    };
    let p = fields(&v1);
    assert_eq!(
        Frame::decode(&header(p.len()), &p).unwrap(),
        Frame::Hello(sev_hello_v1())
    );
    let without: Vec<_> = v1.iter().filter(|(t, _)| *t != 8).cloned().collect();
    let p = fields(&without);
    assert!(matches!(
        Frame::decode(&header(p.len()), &p),
        Err(FrameError::MissingField(HelloField::HelperNonce))
    ));

    // A field whose length runs past the payload.
    let mut cut = ok.clone();
    cut.truncate(ok.len() - 1);
    assert!(matches!(
        decode_payload(MessageType::Hello, &cut),
        Err(FrameError::Truncated { .. })
    ));
    assert!(matches!(
        decode_payload(MessageType::Hello, &[]),
        Err(FrameError::MissingField(HelloField::GuestMode))
    ));
}

/// An SEV-ES guest's Hello.
pub(crate) fn es_hello() -> Hello {
    Hello {
        mode: GuestMode::SevEs,
        es_helpers: 2,
        ..sev_hello()
    }
}

#[test]
fn an_sev_es_hello_names_the_helpers_its_launch_measured_and_no_other_hello_does() {
    let es = es_hello();
    let base = split_fields(&hello_payload(&es));
    assert_eq!(
        base.last(),
        Some(&(0x40, vec![2, 0])),
        "mode 2, then es helpers"
    );
    assert_eq!(base[0], (1, vec![2]));
    assert_eq!(
        decode_payload(MessageType::Hello, &fields(&base)).unwrap(),
        Frame::Hello(es.clone())
    );
    // Mandatory for SEV-ES.
    let missing: Vec<_> = base.iter().filter(|(t, _)| *t != 0x40).cloned().collect();
    assert!(matches!(
        decode_payload(MessageType::Hello, &fields(&missing)),
        Err(FrameError::MissingField(HelloField::EsHelpers))
    ));
    // Never zero, and absent for every other guest.
    let mut zero = base.clone();
    *zero.last_mut().unwrap() = (0x40, vec![0, 0]);
    let e = decode_payload(MessageType::Hello, &fields(&zero)).unwrap_err();
    assert!(e.to_string().contains("es helpers"), "{e}");
    let mut sev = split_fields(&hello_payload(&sev_hello()));
    sev.push((0x40, vec![2, 0]));
    let e = decode_payload(MessageType::Hello, &fields(&sev)).unwrap_err();
    assert!(e.to_string().contains("not SEV-ES"), "{e}");
    assert!(Hello {
        es_helpers: 1,
        ..sev_hello()
    }
    .encode(&mut Vec::new())
    .is_err());
    // A receiver that knew only modes 0 and 1 refused mode 2 as unknown: no misreading.
    assert!(GuestMode::try_from(3).is_err());
    assert!(GuestMode::SevEs.has_helper() && !GuestMode::Plain.has_helper());
}

#[test]
fn hello_values_are_validated_on_both_ends() {
    type Mutate = fn(&mut Hello);
    let cases: &[(&str, Mutate)] = &[
        ("page size", |h| h.page_size = 8192),
        ("RAM ranges", |h| h.ram.clear()),
        ("RAM ranges", |h| {
            h.ram = vec![
                GpaRange {
                    base: 0,
                    size: 0x1000,
                };
                65
            ]
        }),
        ("RAM ranges", |h| h.ram[0].base = 0x800),
        ("RAM ranges", |h| h.ram[1].size = 0),
        ("RAM ranges", |h| h.ram[1].base = 0x9_f000),
        ("RAM ranges", |h| h.ram.swap(0, 1)),
        ("RAM ranges", |h| {
            h.ram[1] = GpaRange {
                base: u64::MAX - 0xfff,
                size: 0x2000,
            }
        }),
        ("mem size", |h| h.mem_size += 0x1000),
        ("helper region", |h| h.helper_region.base = 0xa_0000),
        ("helper region", |h| h.helper_region.size = 0),
        ("helper region", |h| h.helper_region.size = 0x100),
        ("helper region", |h| h.helper_region.size = 0x20_0000),
        ("lanes", |h| h.lanes = 0),
        ("lanes", |h| h.lanes = 257),
        ("helper nonce", |h| h.helper_nonce = [2; 16]),
        ("session id", |h| h.session_id = [0; 16]),
        ("vcpus", |h| h.vcpus = 0),
        ("vcpus", |h| h.vcpus = MAX_VCPUS + 1),
    ];
    let plain_cases: &[(&str, Mutate)] = &[
        ("helper region", |h| h.helper_region.size = 0x1000),
        ("lanes", |h| h.lanes = 1),
        ("helper nonce", |h| h.helper_nonce = [9; 16]),
    ];
    let check = |mut h: Hello, field: &str, mutate: Mutate| {
        mutate(&mut h);
        // The encoder refuses it...
        let e = h.encode(&mut Vec::new()).unwrap_err();
        assert!(
            matches!(&e, FrameError::Invalid { kind: MessageType::Hello, field: f, .. } if *f == field),
            "{field}: {e:?}"
        );
        // ... and so does the decoder, given the same fields by hand.
        let payload = fields(
            &[
                (1, vec![h.mode as u8]),
                (2, h.mem_size.to_le_bytes().to_vec()),
                (
                    3,
                    h.ram
                        .iter()
                        .flat_map(|r| r.base.to_le_bytes().into_iter().chain(r.size.to_le_bytes()))
                        .collect(),
                ),
                (4, h.firmware_digest.to_vec()),
                (
                    5,
                    h.helper_region
                        .base
                        .to_le_bytes()
                        .into_iter()
                        .chain(h.helper_region.size.to_le_bytes())
                        .collect(),
                ),
                (6, h.lanes.to_le_bytes().to_vec()),
                (7, h.session_id.to_vec()),
                (8, h.helper_nonce.to_vec()),
                (9, h.page_size.to_le_bytes().to_vec()),
                (10, h.vcpus.to_le_bytes().to_vec()),
            ]
            .into_iter()
            // Version 2 has no helper nonce field: send one only when the case sets it.
            .filter(|(t, v)| *t != 8 || v.iter().any(|&b| b != 0))
            .collect::<Vec<_>>(),
        );
        let e = decode_payload(MessageType::Hello, &payload).unwrap_err();
        assert!(
            matches!(
                &e,
                FrameError::Invalid {
                    kind: MessageType::Hello,
                    ..
                }
            ),
            "{field}: {e:?}"
        );
        assert!(e.to_string().starts_with("Hello "), "{e}");
    };
    for (field, mutate) in cases {
        check(sev_hello(), field, *mutate);
    }
    for (field, mutate) in plain_cases {
        check(plain_hello(), field, *mutate);
    }

    // Unknown guest mode.
    let mut f = split_fields(&hello_payload(&sev_hello()));
    f[0].1 = vec![3];
    let e = decode_payload(MessageType::Hello, &fields(&f)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Hello guest mode: unknown mode 3 (0 plain, 1 SEV, 2 SEV-ES)"
    );

    // A version-1 SEV Hello without its nonce is refused.
    let h = Hello {
        helper_nonce: [0; 16],
        ..sev_hello_v1()
    };
    assert!(h.encode(&mut Vec::new()).is_err());

    // An unsupported version in the struct is refused by the encoder.
    let h = Hello {
        version: 3,
        ..sev_hello()
    };
    assert!(matches!(
        h.encode(&mut Vec::new()),
        Err(FrameError::UnsupportedVersion { found: 3, .. })
    ));
}

#[test]
fn page_batch_zero_copy_path_writes_the_same_bytes() {
    let mut records = fake_record(Kind::PAGE, 1, 4, 0x1000, 1);
    records.extend(fake_record(Kind::ZERO, 1, 4, 0x2000, 2));
    records.extend(fake_record(Kind::PAGE, 1, 4, 0x3000, 3));
    let batch = PageBatch {
        lane: 1,
        round: 4,
        records: &records,
    };
    let header = batch.header().unwrap();
    assert_eq!(
        header,
        PageBatchHeader {
            lane: 1,
            round: 4,
            count: 3,
            records_len: (2 * PAGE_RECORD_SIZE + ZERO_RECORD_SIZE) as u32
        }
    );
    let mut whole = Vec::new();
    batch.encode(&mut whole).unwrap();
    let mut split = Vec::new();
    header.encode(&mut split).unwrap();
    assert_eq!(split.len(), FrameHeader::SIZE + PAGE_BATCH_HEADER_LEN);
    split.extend_from_slice(&records);
    assert_eq!(split, whole);

    let offsets: Vec<usize> = batch.iter().map(|r| r.offset).collect();
    assert_eq!(
        offsets,
        [0, PAGE_RECORD_SIZE, PAGE_RECORD_SIZE + ZERO_RECORD_SIZE]
    );

    // The header alone refuses what no records could fill.
    for bad in [
        PageBatchHeader { count: 0, ..header },
        PageBatchHeader {
            count: 257,
            ..header
        },
        PageBatchHeader {
            lane: 256,
            ..header
        },
        PageBatchHeader {
            records_len: 3 * ZERO_RECORD_SIZE as u32 - 1,
            ..header
        },
        PageBatchHeader {
            records_len: 3 * PAGE_RECORD_SIZE as u32 + 1,
            ..header
        },
        PageBatchHeader {
            count: 256,
            records_len: MAX_BATCH_RECORD_BYTES as u32 + 1,
            ..header
        },
    ] {
        assert!(bad.encode(&mut Vec::new()).is_err(), "{bad:?}");
    }
    // A full window fits.
    PageBatchHeader {
        count: 256,
        records_len: MAX_BATCH_RECORD_BYTES as u32,
        ..header
    }
    .encode(&mut Vec::new())
    .unwrap();
}

#[test]
fn page_batch_framing_is_checked() {
    let rec = |kind, lane, round| fake_record(kind, lane, round, 0x1000, 1);
    let payload = |lane: u16, round: u32, count: u32, records: &[u8]| {
        let mut p = Vec::new();
        p.extend(lane.to_le_bytes());
        p.extend([0, 0]);
        p.extend(round.to_le_bytes());
        p.extend(count.to_le_bytes());
        p.extend_from_slice(records);
        p
    };
    let good = rec(Kind::PAGE, 1, 2);
    assert!(decode_payload(MessageType::PageBatch, &payload(1, 2, 1, &good)).is_ok());

    let problem = |p: &[u8]| match decode_payload(MessageType::PageBatch, p) {
        Err(FrameError::Invalid { field, problem, .. }) => format!("{field}: {problem}"),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        problem(&payload(1, 2, 2, &good)),
        "count: declares 2 records, but the 4144 record bytes hold 1"
    );
    assert_eq!(
        problem(&payload(1, 2, 0, &[])),
        "count: 0 records; 1 to 256 allowed"
    );
    assert!(problem(&payload(1, 2, 1, &rec(Kind::MANIFEST, 1, 2))).contains("kind 3"));
    assert!(problem(&payload(0, 2, 1, &good)).contains("lane 1 in round 2"));
    assert!(problem(&payload(1, 3, 1, &good)).contains("batch is lane 1 round 3"));
    assert!(problem(&payload(1, 2, 1, &good[..good.len() - 1])).contains("runs past the end"));
    let mut two = good.clone();
    two.extend(rec(Kind::ZERO, 1, 2));
    two[PAGE_RECORD_SIZE] = 9;
    assert_eq!(
        problem(&payload(1, 2, 2, &two)),
        "records: record 1 at offset 4144 has an unknown kind, a length that does not fit its kind, or reserved bits set"
    );
    assert!(problem(&payload(256, 2, 1, &good)).starts_with("lane"));
    let mut reserved = payload(1, 2, 1, &good);
    reserved[2] = 1;
    assert!(problem(&reserved).starts_with("reserved"));
    // More than 256 zero records in a payload under the cap.
    let many: Vec<u8> = (0..257).flat_map(|_| rec(Kind::ZERO, 1, 2)).collect();
    assert!(problem(&payload(1, 2, 257, &many)).starts_with("count"));
}

#[test]
fn plain_pages_entries_are_checked() {
    let page = [1u8; PAGE_SIZE];
    let build = |round: u32, entries: &[(u64, u8, bool)]| {
        let mut p = Vec::new();
        p.extend(round.to_le_bytes());
        p.extend((entries.len() as u32).to_le_bytes());
        for &(gpa, flags, data) in entries {
            p.extend(gpa.to_le_bytes());
            p.push(flags);
            if data {
                p.extend_from_slice(&page);
            }
        }
        p
    };
    let ok = build(0, &[(0x1000, 0, true), (0x2000, 1, false)]);
    let Frame::PlainPages(pp) = decode_payload(MessageType::PlainPages, &ok).unwrap() else {
        panic!()
    };
    assert_eq!(pp.pages[0].data, PageData::Bytes(&page));
    assert_eq!(pp.pages[1].data, PageData::Zero);

    for (entries, field) in [
        (vec![(0x1001, 1, false)], "gpa"),
        (vec![(0x2000, 1, false), (0x1000, 1, false)], "gpa"),
        (vec![(0x2000, 1, false), (0x2000, 1, false)], "gpa"),
        (vec![(0x2000, 2, false)], "flags"),
        (vec![(0x2000, 3, false)], "flags"),
    ] {
        let e = decode_payload(MessageType::PlainPages, &build(0, &entries)).unwrap_err();
        assert!(
            matches!(&e, FrameError::Invalid { field: f, .. } if *f == field),
            "{entries:?}: {e:?}"
        );
    }
    // A zero flag with page data after it: trailing bytes.
    assert!(matches!(
        decode_payload(MessageType::PlainPages, &build(0, &[(0x1000, 1, true)])),
        Err(FrameError::TrailingBytes { .. })
    ));
    // Count 0, count over the cap, count larger than the entries.
    let mut p = build(0, &[]);
    assert!(decode_payload(MessageType::PlainPages, &p).is_err());
    p[4..8].copy_from_slice(&257u32.to_le_bytes());
    assert!(decode_payload(MessageType::PlainPages, &p).is_err());
    let mut p = build(0, &[(0x1000, 1, false)]);
    p[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert!(matches!(
        decode_payload(MessageType::PlainPages, &p),
        Err(FrameError::Truncated { .. })
    ));
    // The encoder refuses what the decoder would.
    for pages in [
        vec![],
        vec![
            PlainPage {
                gpa: 0x2000,
                data: PageData::Zero,
            },
            PlainPage {
                gpa: 0x1000,
                data: PageData::Zero,
            },
        ],
    ] {
        assert!(PlainPages { round: 0, pages }
            .encode(&mut Vec::new())
            .is_err());
    }
}

#[test]
fn shared_ranges_are_checked_before_allocating() {
    // A count far beyond the bytes present: refused before any Vec is sized by it.
    let mut p = u32::MAX.to_le_bytes().to_vec();
    p.extend([0u8; 16]);
    let e = decode_payload(MessageType::SharedRanges, &p).unwrap_err();
    assert!(e.to_string().contains("declares 4294967295 ranges"), "{e}");

    for ranges in [
        vec![(0x1001u64, 1u64)],
        vec![(0x1000, 0)],
        vec![(0x3000, 1), (0x1000, 1)],
        vec![(0x1000, 2), (0x2000, 1)],
        vec![(!0xfffu64, 2)],
        vec![(0x1000, u64::MAX)],
    ] {
        let frame = SharedRanges {
            ranges: ranges
                .iter()
                .map(|&(gpa, pages)| SharedRange { gpa, pages })
                .collect(),
        };
        assert!(frame.encode(&mut Vec::new()).is_err(), "{ranges:?}");
        let mut p = (ranges.len() as u32).to_le_bytes().to_vec();
        for (gpa, pages) in &ranges {
            p.extend(gpa.to_le_bytes());
            p.extend(pages.to_le_bytes());
        }
        assert!(
            decode_payload(MessageType::SharedRanges, &p).is_err(),
            "{ranges:?}"
        );
    }
    // Adjacent ranges are fine.
    let adjacent = SharedRanges {
        ranges: vec![
            SharedRange {
                gpa: 0x1000,
                pages: 1,
            },
            SharedRange {
                gpa: 0x2000,
                pages: 1,
            },
        ],
    };
    adjacent.encode(&mut Vec::new()).unwrap();
}

#[test]
fn failure_codes_round_trip_and_undefined_ones_are_refused() {
    for (i, code) in FailureCode::ALL.into_iter().enumerate() {
        assert_eq!(code.code() as usize, i + 1);
        assert_eq!(FailureCode::try_from(code.code()), Ok(code));
        for frame in [
            Frame::HelloAck(HelloAck::Refused {
                code,
                reason: "r".into(),
            }),
            Frame::Ack(Ack::Failed {
                code,
                reason: "r".into(),
            }),
            Frame::Abort(Abort {
                code,
                reason: "r".into(),
            }),
        ] {
            let mut w = Vec::new();
            frame.encode(&mut w).unwrap();
            assert_eq!(w[FrameHeader::SIZE], code.code());
            assert_eq!(decode_wire(&w).unwrap(), frame);
        }
    }
    for undefined in [0u8, 9, 0xff] {
        assert_eq!(FailureCode::try_from(undefined), Err(undefined));
    }
    for kind in [MessageType::HelloAck, MessageType::Ack, MessageType::Abort] {
        let e = decode_payload(kind, b"\x09why").unwrap_err();
        assert!(e.to_string().contains("undefined failure code 9"), "{e}");
    }
}

#[test]
fn status_frames_check_their_reasons() {
    for kind in [MessageType::HelloAck, MessageType::Ack] {
        // Success carries no reason; a failure must carry one.
        assert!(decode_payload(kind, b"\x00").is_ok());
        assert!(decode_payload(kind, b"\x00x").is_err());
        assert!(decode_payload(kind, b"\x05").is_err());
    }
    assert!(decode_payload(MessageType::Abort, b"\x00").is_err());
    assert!(decode_payload(MessageType::Abort, b"\x00why").is_err());
    for bad in [
        &b"\x05bad\xffutf8"[..],
        b"\x05esc\x1b[2J",
        b"\x05new\nline",
        b"\x05\xe2\x82",
    ] {
        for kind in [MessageType::HelloAck, MessageType::Ack, MessageType::Abort] {
            let e = decode_payload(kind, bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    FrameError::Invalid {
                        field: "reason",
                        ..
                    }
                ),
                "{e:?}"
            );
        }
    }
    let max = "x".repeat(MAX_REASON_LEN);
    let abort = Abort {
        code: FailureCode::Internal,
        reason: max.clone(),
    };
    abort.encode(&mut Vec::new()).unwrap();
    let too_long = Abort {
        reason: max + "x",
        ..abort
    };
    assert!(matches!(
        too_long.encode(&mut Vec::new()),
        Err(FrameError::TooLong { .. })
    ));
    assert!(Abort {
        code: FailureCode::Internal,
        reason: String::new()
    }
    .encode(&mut Vec::new())
    .is_err());

    // Frozen layouts may be written in another version (a refusal of a newer source).
    let mut w = Vec::new();
    HelloAck::Refused {
        code: FailureCode::UnsupportedVersion,
        reason: "this target reads versions 1 to 1".into(),
    }
    .encode_as(7, &mut w)
    .unwrap();
    assert_eq!(&w[4..6], &7u16.to_le_bytes());
    assert_eq!(w[FrameHeader::SIZE], FailureCode::UnsupportedVersion.code());
    assert!(HelloAck::Accepted.encode_as(0, &mut Vec::new()).is_err());
}

#[test]
fn manifest_and_vcpu_state_are_checked() {
    let mut record = [0u8; MANIFEST_RECORD_SIZE];
    record.copy_from_slice(&fake_record(Kind::MANIFEST, 0, 1, 0, 1));
    Manifest { record }.encode(&mut Vec::new()).unwrap();
    let mut bad = record;
    bad[0] = Kind::PAGE.0;
    assert!(Manifest { record: bad }.encode(&mut Vec::new()).is_err());
    assert!(decode_payload(MessageType::Manifest, &bad).is_err());
    bad[0] = 0x77;
    assert!(decode_payload(MessageType::Manifest, &bad).is_err());

    let blob = vec![0u8; MAX_VCPU_STATE_LEN];
    VcpuState {
        index: 0,
        blob: &blob,
    }
    .encode(&mut Vec::new())
    .unwrap();
    let blob = vec![0u8; MAX_VCPU_STATE_LEN + 1];
    assert!(VcpuState {
        index: 0,
        blob: &blob
    }
    .encode(&mut Vec::new())
    .is_err());
    assert!(VcpuState {
        index: MAX_VCPUS,
        blob: &[]
    }
    .encode(&mut Vec::new())
    .is_err());
    assert!(decode_payload(MessageType::VcpuState, &MAX_VCPUS.to_le_bytes()).is_err());
    let blob = vec![0u8; MAX_DEVICE_STATE_LEN + 1];
    assert!(matches!(
        DeviceState { blob: &blob }.encode(&mut Vec::new()),
        Err(FrameError::TooLong { .. })
    ));
}

#[test]
fn write_errors_name_the_frame() {
    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    for (_, frame) in samples() {
        let e = frame.encode(&mut Broken).unwrap_err();
        assert!(
            matches!(&e, FrameError::Write { kind, .. } if *kind == frame.message_type()),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("writing a {} frame failed", frame.message_type())
        );
        assert_eq!(e.failure_code(), FailureCode::Internal);
    }
}

#[test]
fn the_guest_cpu_field_round_trips_and_is_checked() {
    use crate::cpu::{CpuFeatures, GuestCpu};
    let cpu = GuestCpu {
        vendor: *b"AuthenticAMD",
        signature: 0x00a1_0f11,
        features: CpuFeatures::from_words([
            0xfed8_3203,
            0x178b_fbff,
            0xf1bf_07ab,
            0x0040_5fce,
            0x1000_0010,
            0x0000_0020,
            0x7584_07ff,
            0x2fd3_fbff,
            0xf,
        ]),
    };
    for hello in [
        Hello {
            cpu: Some(cpu),
            ..sev_hello()
        },
        Hello {
            cpu: Some(cpu),
            ..plain_hello()
        },
        // SEV-ES: its es-helpers field (0x0040) first, the CPU after it.
        Hello {
            cpu: Some(cpu),
            ..es_hello()
        },
    ] {
        let payload = hello_payload(&hello);
        let f = split_fields(&payload);
        // The optional field comes last, tag 0x8001, 52 bytes.
        let (tag, value) = f.last().unwrap();
        assert_eq!(*tag, HELLO_GUEST_CPU);
        assert_eq!(value.len(), GuestCpu::WIRE_LEN);
        assert_eq!(value[..], cpu.encode()[..]);
        assert_eq!(
            decode_payload(MessageType::Hello, &payload).unwrap(),
            Frame::Hello(hello.clone())
        );
        // Without it: the same Hello with no CPU (an earlier version-2 source).
        let without: Vec<_> = f[..f.len() - 1].to_vec();
        assert_eq!(
            decode_payload(MessageType::Hello, &fields(&without)).unwrap(),
            Frame::Hello(Hello {
                cpu: None,
                ..hello.clone()
            })
        );
        // Twice, or of another length: refused, naming the field.
        let mut twice = f.clone();
        twice.push(f.last().unwrap().clone());
        assert!(matches!(
            decode_payload(MessageType::Hello, &fields(&twice)),
            Err(FrameError::DuplicateField {
                tag: HELLO_GUEST_CPU,
                ..
            })
        ));
        for len in [0, GuestCpu::WIRE_LEN - 1, GuestCpu::WIRE_LEN + 1] {
            let mut other = without.clone();
            other.push((HELLO_GUEST_CPU, vec![0; len]));
            let e = decode_payload(MessageType::Hello, &fields(&other)).unwrap_err();
            assert!(e.to_string().contains("guest CPU"), "{e}");
        }
    }
}
