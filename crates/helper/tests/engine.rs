//! The helper end to end on the host: a source guest's pages sealed by a source helper,
//! carried by a (possibly hostile) host, opened by a target helper into a target guest.

mod common;

use common::*;
use helper_abi::{
    mailbox::{info_flags, GcmKernel, Op, Phase, Request, Status},
    record::{self, Kind, RecordHeader, HEADER_SIZE},
    PAGE_SIZE,
};
use mirror_helper::{
    crypto,
    host::{self, Guest, Spec},
    shared_list::SharedList,
};

#[test]
fn pages_travel_sealed_and_arrive_intact_and_the_manifest_and_commit_agree() {
    let (src, dst, th) = pair(1);
    let gpa = 0x3000;
    let records = src.export(0, 1, &[gpa]).unwrap();
    // The plaintext never appears in what the host carries.
    assert!(!records.windows(64).any(|w| w == &src.guest.page(gpa)[..64]));
    dst.import(0, &records).unwrap();
    migrate_all(&src, &dst, 2);
    for g in all_pages(&src) {
        if g != src.guest.spec.secret && g != src.guest.spec.shared_list {
            assert_eq!(dst.guest.page(g), src.guest.page(g), "page {g:#x}");
        }
    }
    let manifest = src.manifest(0).unwrap();
    assert_eq!(dst.verify(0, &manifest), Status::OK);
    assert!(!src.guest.migrated_out());
    let (commit, src_th) = src.commit(0).unwrap();
    assert_eq!(src_th, th);
    assert!(
        src.guest.migrated_out(),
        "the source is flagged before the commit leaves"
    );
    assert_eq!(dst.accept_commit(0, &commit), Status::OK);
    assert!(!dst.guest.migrated_out());
    let info = dst.op(0, Op::INFO).response;
    assert_eq!(
        info.info_flags & info_flags::INCOMING,
        0,
        "the target guest runs now"
    );
    // Once committed, nothing more is accepted.
    let (src2, _, _) = pair(1);
    let late = src2.export(0, 2, &[gpa]).unwrap();
    assert_eq!(dst.import(0, &late).unwrap_err().0, Status::BAD_STATE);
}

#[test]
fn private_zero_pages_are_full_records_unless_the_leaky_option_is_asked_for() {
    let (src, dst, _) = pair(1);
    // Page 8 is zero, page 9 is not: by default both are page records, same size.
    let records = src.export(0, 1, &[0x8000, 0x9000]).unwrap();
    assert_eq!(records.len(), 2 * record::PAGE_RECORD_SIZE);
    dst.import(0, &records).unwrap();
    assert_eq!(dst.guest.page(0x8000), vec![0; PAGE_SIZE]);
    // With the option, the zero page becomes a 48-byte record (and the host learns it).
    let short = src
        .export_flags(0, 2, &[0x8000, 0x9000], ZERO_FLAG)
        .unwrap();
    assert_eq!(
        short.len(),
        record::ZERO_RECORD_SIZE + record::PAGE_RECORD_SIZE
    );
    dst.import(0, &short).unwrap();
    assert_eq!(dst.guest.page(0x8000), vec![0; PAGE_SIZE]);
    // A forged zero record (tag of a real one, kind flipped) does not authenticate.
    let mut forged = src.export(0, 3, &[0x9000]).unwrap();
    forged[0] = Kind::ZERO.0;
    forged[20..24].copy_from_slice(&0u32.to_le_bytes());
    forged.truncate(record::ZERO_RECORD_SIZE);
    assert_eq!(dst.import(0, &forged).unwrap_err().0, Status::AUTH_FAILED);
    // Unknown flag bits are refused.
    assert_eq!(
        src.export_flags(0, 4, &[0x9000], 0x80).unwrap_err().0,
        Status::BAD_REQUEST
    );
}

#[test]
fn any_flipped_bit_is_rejected_and_nothing_is_written() {
    let (src, dst, _) = pair(1);
    let records = src.export(0, 1, &[0x3000]).unwrap();
    for bit in [0, 8 * 10, 8 * 40, 8 * 2000, 8 * (records.len() - 1)] {
        let mut bad = records.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let before = dst.guest.page(0x3000);
        let err = dst.import(0, &bad).unwrap_err().0;
        assert!(
            matches!(err, Status::AUTH_FAILED | Status::BAD_RECORD),
            "bit {bit}: {err}"
        );
        assert_eq!(
            dst.guest.page(0x3000),
            before,
            "a rejected record must not touch memory"
        );
    }
    dst.import(0, &records).unwrap();
}

#[test]
fn a_target_with_another_secret_firmware_or_hello_fails_the_handshake() {
    /// What differs, the target's secret and spec, the Hello it saw, and the refusal.
    type Case = (&'static str, Option<[u8; 32]>, Spec, [u8; 32], Status);
    let cases: [Case; 4] = [
        (
            "other secret",
            Some([1; 32]),
            Spec::default(),
            HELLO,
            Status::BAD_PEER,
        ),
        (
            "other firmware",
            Some(SECRET),
            Spec {
                firmware_hash: [0xf2; 32],
                ..Spec::default()
            },
            HELLO,
            Status::BAD_PEER,
        ),
        (
            "other Hello",
            Some(SECRET),
            Spec::default(),
            [0x4f; 32],
            Status::BAD_PEER,
        ),
        ("no secret", None, Spec::default(), HELLO, Status::NO_SECRET),
    ];
    for (what, secret, spec, hello, want) in cases {
        let (src, _) = unkeyed(1);
        let dst = Side::new(Guest::new(spec, secret, |_| 0).incoming(), 1);
        let share = host::start(&src.guest, &src.vcpus[0], SESSION, HELLO).unwrap();
        let got = host::respond(&dst.guest, &dst.vcpus[0], SESSION, hello, &share)
            .and_then(|reply| host::finish(&src.guest, &src.vcpus[0], &reply).map(drop));
        assert_eq!(got, Err(want), "{what}");
        // Nothing moves: the source has no keys.
        assert_eq!(
            src.export(0, 1, &[0x3000]).unwrap_err().0,
            Status::NO_KEYS,
            "{what}"
        );
        assert_ne!(
            src.op(0, Op::INFO).response.phase(),
            Phase::SOURCE_KEYED,
            "{what}"
        );
    }
}

#[test]
fn replayed_and_reordered_records_are_refused() {
    let (src, dst, _) = pair(2);
    let first = src.export(0, 1, &[0x3000]).unwrap();
    let second = src.export(0, 2, &[0x3000]).unwrap();
    // Reordered: the second before the first.
    assert_eq!(dst.import(0, &second).unwrap_err().0, Status::REORDER);
    dst.import(0, &first).unwrap();
    dst.import(0, &second).unwrap();
    // Replayed: the first again.
    assert_eq!(dst.import(0, &first).unwrap_err().0, Status::REORDER);
    // Any target vCPU may open any source lane's records, in that lane's order.
    let lane1 = src.export(1, 3, &[0x6000]).unwrap();
    assert_eq!(dst.import(0, &lane1).unwrap(), 1);
    // An older version of a page arriving on another lane after a newer one.
    let old = src.export(1, 4, &[0x5000]).unwrap();
    let new = src.export(0, 5, &[0x5000]).unwrap();
    dst.import(0, &new).unwrap();
    assert_eq!(dst.import(1, &old).unwrap_err().0, Status::REPLAY);
    // A batch mixing two source lanes is refused.
    let mut mixed = src.export(0, 6, &[0x7000]).unwrap();
    mixed.extend(src.export(1, 6, &[0x7000]).unwrap());
    assert_eq!(dst.import(0, &mixed).unwrap_err(), (Status::BAD_RECORD, 1));
}

#[test]
fn a_withheld_record_fails_the_manifest() {
    // The page changes and is sealed again, but the host drops that record: the lane's
    // last sequence number in the manifest shows it.
    let (src, dst, _) = verified_pages_only(1);
    src.guest.write_page(0x3000, &page(0x77));
    let _dropped = src.export(0, 2, &[0x3000]).unwrap();
    let manifest = src.manifest(0).unwrap();
    // (Here the manifest's own sequence number already shows the gap.)
    assert_eq!(dst.verify(0, &manifest), Status::REORDER);
    // The same with the last record of a lane that seals nothing after it.
    let (src, dst, _) = verified_pages_only(2);
    let _dropped = src.export(1, 2, &[0x3000]).unwrap();
    let manifest = src.manifest(0).unwrap();
    assert_eq!(dst.verify(0, &manifest), Status::MANIFEST_MISMATCH);
    // And a dropped blob.
    let (src, dst, _) = verified_pages_only(1);
    let _dropped = src.seal_blob(0, Kind::DEVICE_STATE, 0, b"devices").unwrap();
    let manifest = src.manifest(0).unwrap();
    assert_eq!(dst.verify(0, &manifest), Status::REORDER);
    // A dropped blob on a lane that seals nothing after it: only the manifest's list of
    // last sequence numbers can show it.
    let (src, dst, _) = verified_pages_only(2);
    let _dropped = src.seal_blob(1, Kind::VCPU_STATE, 0, b"vcpu 0").unwrap();
    let manifest = src.manifest(0).unwrap();
    assert_eq!(dst.verify(0, &manifest), Status::MANIFEST_MISMATCH);
}

/// A keyed pair with every page moved, manifest not yet made.
fn verified_pages_only(lanes: usize) -> (Side, Side, [u8; 32]) {
    let (src, dst, th) = pair(lanes);
    migrate_all(&src, &dst, 1);
    (src, dst, th)
}

#[test]
fn the_source_refuses_a_manifest_while_a_private_page_was_never_sealed() {
    let (src, _, _) = pair(1);
    let pages = all_pages(&src);
    for chunk in pages[..pages.len() - 1].chunks(64) {
        src.export(0, 1, chunk).unwrap();
    }
    assert_eq!(src.manifest(0).unwrap_err(), Status::INCOMPLETE);
    src.export(0, 1, &pages[pages.len() - 1..]).unwrap();
    assert!(src.manifest(0).is_ok());
}

#[test]
fn shared_pages_are_not_exported_and_not_in_the_manifest() {
    let (src, dst, _) = pair(1);
    src.guest.share(0x6000, 1);
    assert_eq!(
        src.export(0, 1, &[0x6000]).unwrap_err(),
        (Status::BAD_GPA, 0)
    );
    let private: Vec<u64> = all_pages(&src)
        .into_iter()
        .filter(|&g| g != 0x6000)
        .collect();
    for chunk in private.chunks(64) {
        let records = src.export(0, 1, chunk).unwrap();
        dst.import(0, &records).unwrap();
    }
    let manifest = src.manifest(0).unwrap();
    // The target learned the shared list with the list page itself.
    assert_eq!(dst.verify(0, &manifest), Status::OK);
}

#[test]
fn the_sealed_shared_list_is_the_guests_own_and_opens_only_intact() {
    let (src, dst, _) = pair(1);
    src.guest.share(0x6000, 2);
    src.guest.share(0x9000, 1);
    // The VMM's window content is ignored: the helper reads the guest's list itself.
    let rec = src
        .seal_blob(0, Kind::SHARED_LIST, 0, b"the host's idea of the list")
        .unwrap();
    let header = RecordHeader::decode(rec[..HEADER_SIZE].try_into().unwrap()).unwrap();
    let list = SharedList::parse(&rec[HEADER_SIZE..HEADER_SIZE + header.len as usize]).unwrap();
    assert_eq!(list.ranges(), [(0x6000, 2), (0x9000, 1)]);
    let mut forged = rec.clone();
    forged[HEADER_SIZE + 8] ^= 0x10; // move a range
    assert_eq!(dst.open_blob(0, &forged), Err(Status::AUTH_FAILED));
    assert_eq!(
        dst.open_blob(0, &rec),
        Ok((u32::from(Kind::SHARED_LIST.0), 0))
    );
}

#[test]
fn blobs_are_authenticated_and_bound_to_their_kind_index_and_order() {
    let (src, dst, _) = pair(1);
    let vcpu1 = src
        .seal_blob(0, Kind::VCPU_STATE, 1, b"registers of vcpu 1")
        .unwrap();
    let device = src
        .seal_blob(0, Kind::DEVICE_STATE, 0, &[7u8; 5000])
        .unwrap();
    assert_eq!(
        src.seal_blob(0, Kind::DEVICE_STATE, 3, b"x"),
        Err(Status::BAD_REQUEST),
        "only vCPU state has an index"
    );
    assert_eq!(
        src.seal_blob(0, Kind::PAGE, 0, b"x"),
        Err(Status::BAD_REQUEST)
    );
    // Tampered payload, index or kind: refused.
    for (at, what) in [(HEADER_SIZE + 3, "payload"), (8, "index"), (0, "kind")] {
        let mut bad = vcpu1.clone();
        bad[at] ^= if at == 0 { 0x03 } else { 0x01 };
        let got = dst.open_blob(0, &bad);
        assert!(
            matches!(got, Err(Status::AUTH_FAILED | Status::BAD_RECORD)),
            "{what}: {got:?}"
        );
    }
    // Out of order: the device state was sealed after vCPU 1's.
    assert_eq!(dst.open_blob(0, &device), Err(Status::REORDER));
    assert_eq!(
        dst.open_blob(0, &vcpu1),
        Ok((u32::from(Kind::VCPU_STATE.0), 1))
    );
    assert_eq!(
        dst.open_blob(0, &device),
        Ok((u32::from(Kind::DEVICE_STATE.0), 0))
    );
    assert_eq!(dst.open_blob(0, &vcpu1), Err(Status::REORDER), "replayed");
}

#[test]
fn bad_gpas_are_refused_before_anything_is_sealed() {
    let (src, _, _) = pair(1);
    let region = src.guest.spec.region;
    let ram = src.guest.spec.ram;
    for (gpas, index) in [
        (vec![0x3000, 0x3008], 1),   // unaligned
        (vec![ram], 0),              // outside RAM
        (vec![0x3000, region.0], 1), // the helper's own region
        (vec![0xfe00_0000], 0),      // MMIO
    ] {
        assert_eq!(
            src.export(0, 1, &gpas).unwrap_err(),
            (Status::BAD_GPA, index),
            "{gpas:x?}"
        );
    }
    let too_many: Vec<u64> = (0..65).map(|i| i * PAGE_SIZE as u64).collect();
    assert_eq!(
        src.export(0, 1, &too_many).unwrap_err().0,
        Status::BATCH_TOO_LARGE
    );
    // Nothing was sealed: the first real export gets version 1 and sequence 1.
    let records = src.export(0, 1, &[0x3000]).unwrap();
    let h = RecordHeader::decode(records[..HEADER_SIZE].try_into().unwrap()).unwrap();
    assert_eq!((h.version, h.seq), (1, 1));
}

#[test]
fn info_reports_the_region_limits_lane_and_firmware() {
    let g = Side::new(Guest::new(Spec::default(), None, |_| 0).incoming(), 2);
    let r = g.op(1, Op::INFO);
    assert_eq!(r.status(), Status::OK);
    let spec = g.guest.spec;
    assert_eq!(
        (r.response.region_base, r.response.region_size),
        spec.region
    );
    assert_eq!(
        (
            r.response.abi_version,
            r.response.max_batch,
            r.response.lane
        ),
        (2, 64, 1)
    );
    assert_eq!(r.response.ram_pages, spec.ram / PAGE_SIZE as u64);
    assert_eq!(r.response.info_flags, info_flags::INCOMING);
    assert_eq!(&r.message[..32], &spec.firmware_hash);
    assert_eq!(&r.message[32..], &[0; 32], "nothing committed");
}

#[test]
fn requests_out_of_place_are_refused_with_a_status() {
    let (src, dst) = unkeyed(1);
    // Before any session.
    for op in [
        Op::EXPORT,
        Op::IMPORT,
        Op::SEAL_BLOB,
        Op::OPEN_BLOB,
        Op::FINISH,
        Op::COMMIT,
        Op::ABORT,
    ] {
        assert_eq!(src.op(0, op).status(), Status::NO_KEYS, "{op:?}");
    }
    assert_eq!(src.op(0, Op::RELEASE).status(), Status::NOT_COMMITTED);
    assert_eq!(src.op(0, Op::HS_FINISH).status(), Status::NO_KEYS);
    assert_eq!(dst.op(0, Op::HS_CONFIRM).status(), Status::NO_KEYS);
    assert_eq!(
        src.op(0, Op(2)).status(),
        Status::BAD_REQUEST,
        "KEYS is gone"
    );
    assert_eq!(src.op(0, Op(99)).status(), Status::BAD_REQUEST);
    // A guest that was not booted incoming never takes the target's role.
    let share = host::start(&dst.guest, &dst.vcpus[0], SESSION, HELLO);
    assert_eq!(
        share,
        Err(Status::BAD_STATE),
        "an incoming guest is no source"
    );
    let share = host::start(&src.guest, &src.vcpus[0], SESSION, HELLO).unwrap();
    assert_eq!(
        host::respond(&src.guest, &src.vcpus[0], SESSION, HELLO, &share),
        Err(Status::BAD_STATE),
        "the source's session is taken"
    );
    let other = Side::new(Guest::new(Spec::default(), Some(SECRET), |_| 0), 1);
    assert_eq!(
        host::respond(&other.guest, &other.vcpus[0], SESSION, HELLO, &share),
        Err(Status::NOT_INCOMING)
    );
    // Keyed: roles hold.
    let (src, dst, _) = pair(1);
    let rec = src.export(0, 1, &[0x3000]).unwrap();
    assert_eq!(src.import(0, &rec).unwrap_err().0, Status::BAD_STATE);
    assert_eq!(
        dst.export(0, 1, &[0x3000]).unwrap_err().0,
        Status::BAD_STATE
    );
    assert_eq!(src.op(0, Op::ABORT).status(), Status::BAD_STATE);
    assert_eq!(
        src.op(0, Op::COMMIT).status(),
        Status::BAD_STATE,
        "no manifest yet"
    );
    // Reserved fields must be zero.
    let r = src.call(
        0,
        Request {
            op: Op::INFO.0,
            reserved: 1,
            ..Default::default()
        },
        &[],
        &[],
    );
    assert_eq!(r.status(), Status::BAD_REQUEST);
}

#[test]
fn garbage_requests_never_panic_or_write_memory() {
    let (src, dst, _) = pair(2);
    let before = dst.guest.page(0x3000);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..2000 {
        let mut raw = [0u8; Request::SIZE];
        raw.iter_mut().for_each(|b| *b = next() as u8);
        let mut req = Request::decode(&raw);
        req.op = (next() % 16) as u32;
        req.window = (next() % 3) as u32;
        req.count = (next() % 70) as u32;
        req.bytes = (next() % 8000) as u32;
        req.reserved = 0;
        if next() % 2 == 0 {
            req.flags = 0;
        }
        if [Op::RESET.0, Op::ABORT.0].contains(&req.op) {
            req.op = Op::INFO.0;
        }
        let mut window = vec![0u8; 8192];
        window.iter_mut().for_each(|b| *b = next() as u8);
        let msg: Vec<u8> = (0..96).map(|_| next() as u8).collect();
        let gpas: Vec<u64> = (0..70).map(|_| next()).collect();
        for side in [&src, &dst] {
            let lane = (next() % 2) as usize;
            side.vcpus[lane].mailbox.fill_window(0, &window);
            side.vcpus[lane].mailbox.fill_window(1, &window);
            let _ = side.call(lane, req, &gpas, &msg);
        }
    }
    assert_eq!(
        dst.guest.page(0x3000),
        before,
        "garbage must never be written to guest memory"
    );
}

#[test]
fn a_refused_request_changes_nothing_and_says_why() {
    use mirror_helper::Mailbox;
    let (src, _dst, _) = pair(1);
    let gpa: u64 = 0x3000;
    let before = src.op(0, Op::INFO).response;
    let v = &src.vcpus[0];
    // An EXPORT in the mailbox, answered by the self-check's refusal instead.
    let req = Request {
        op: Op::EXPORT.0,
        id: 4242,
        count: 1,
        round: 1,
        ..Default::default()
    };
    v.mailbox
        .write_control(helper_abi::mailbox::REQUEST_OFFSET, &req.encode());
    v.mailbox
        .write_control(helper_abi::mailbox::GPA_LIST_OFFSET, &gpa.to_le_bytes());
    src.guest.refuse(v, Status::CORRUPTED, 5);
    let mut raw = [0u8; helper_abi::mailbox::Response::SIZE];
    v.mailbox
        .read_control(helper_abi::mailbox::RESPONSE_OFFSET, &mut raw);
    let r = helper_abi::mailbox::Response::decode(&raw);
    assert_eq!(r.status(), Status::CORRUPTED);
    assert_eq!((r.id, r.index, r.count, r.bytes), (4242, 5, 0, 0));
    assert_eq!(r.phase(), before.phase(), "the session is where it was");
    assert_eq!(r.bytes_sealed, before.bytes_sealed, "nothing sealed");
    assert!(
        v.mailbox.window(0, 64).iter().all(|&b| b == 0),
        "nothing written to the window"
    );
    // The helper serves normally once its structures check out again.
    assert!(src.export(0, 1, &[gpa]).is_ok());
    assert!(Status::CORRUPTED.to_string().contains("CORRUPTED"));
}

/// HS_START then HS_RESPOND with `flags`; the kernels the two responses name (or the
/// first refusal).
fn keyed_with(
    src: &Side,
    dst: &Side,
    src_flags: u32,
    dst_flags: u32,
) -> Result<(GcmKernel, GcmKernel), (Op, Status)> {
    let r = src.call(
        0,
        Request {
            op: Op::HS_START.0,
            bytes: 32,
            session_id: SESSION,
            flags: src_flags,
            ..Request::default()
        },
        &[],
        &HELLO,
    );
    if r.status() != Status::OK {
        return Err((Op::HS_START, r.status()));
    }
    let src_kernel = GcmKernel(r.response.kernel);
    let mut m = HELLO.to_vec();
    m.extend_from_slice(&r.message);
    let r = dst.call(
        0,
        Request {
            op: Op::HS_RESPOND.0,
            bytes: m.len() as u32,
            session_id: SESSION,
            flags: dst_flags,
            ..Request::default()
        },
        &[],
        &m,
    );
    if r.status() != Status::OK {
        return Err((Op::HS_RESPOND, r.status()));
    }
    let dst_kernel = GcmKernel(r.response.kernel);
    let reply: [u8; 96] = r.message.try_into().unwrap();
    let (confirm, _) = host::finish(&src.guest, &src.vcpus[0], &reply).unwrap();
    host::confirm_target(&dst.guest, &dst.vcpus[0], &confirm).unwrap();
    Ok((src_kernel, dst_kernel))
}

#[test]
fn a_session_runs_any_kernel_the_cpu_supports_and_every_pair_interoperates() {
    let supported: Vec<GcmKernel> = GcmKernel::ALL
        .into_iter()
        .filter(|k| crypto::kernel_of(*k).unwrap().is_supported())
        .collect();
    for k in GcmKernel::ALL
        .into_iter()
        .filter(|k| !supported.contains(k))
    {
        eprintln!(
            "!!! kernel {} NOT TESTED on this machine: the CPU cannot run it",
            k.name().unwrap()
        );
    }
    assert!(supported.contains(&GcmKernel::PORTABLE));
    for &sk in &supported {
        for &tk in &supported {
            let (src, dst) = unkeyed(1);
            let (s, t) = keyed_with(&src, &dst, sk.flags(), tk.flags()).unwrap();
            assert_eq!((s, t), (sk, tk), "the responses name the kernels asked for");
            migrate_all(&src, &dst, 1);
            let m = src.manifest(0).unwrap();
            assert_eq!(dst.verify(0, &m), Status::OK, "{sk:?} to {tk:?}");
            for g in all_pages(&src) {
                if g != src.guest.spec.secret && g != src.guest.spec.shared_list {
                    assert_eq!(dst.guest.page(g), src.guest.page(g), "page {g:#x}");
                }
            }
        }
    }
    // No kernel named: the helper's own choice, the fastest, and the response says so.
    let (src, dst) = unkeyed(1);
    let best = crypto::code_of(record_gcm::Kernel::best());
    assert_eq!(keyed_with(&src, &dst, 0, 0).unwrap(), (best, best));
}

#[test]
fn a_kernel_the_cpu_cannot_run_or_other_flag_bits_are_refused_and_nothing_starts() {
    for code in [5u32, 9, 15] {
        let (src, dst) = unkeyed(1);
        assert_eq!(
            keyed_with(&src, &dst, GcmKernel(code).flags(), 0).unwrap_err(),
            (Op::HS_START, Status::UNSUPPORTED_KERNEL)
        );
        assert_eq!(src.op(0, Op::INFO).response.phase(), Phase::IDLE);
        assert_eq!(
            keyed_with(&src, &dst, 0, GcmKernel(code).flags()).unwrap_err(),
            (Op::HS_RESPOND, Status::UNSUPPORTED_KERNEL)
        );
        assert_eq!(dst.op(0, Op::INFO).response.phase(), Phase::IDLE);
    }
    // Bits outside the kernel field, or a kernel on any other operation.
    let (src, dst) = unkeyed(1);
    assert_eq!(
        keyed_with(&src, &dst, 0x1000 | GcmKernel::PORTABLE.flags(), 0).unwrap_err(),
        (Op::HS_START, Status::BAD_REQUEST)
    );
    let (src, dst, _) = pair(1);
    assert_eq!(
        src.export_flags(0, 1, &[0x9000], GcmKernel::PORTABLE.flags())
            .unwrap_err()
            .0,
        Status::BAD_REQUEST
    );
    let r = dst.call(
        0,
        Request {
            op: Op::INFO.0,
            flags: GcmKernel::PORTABLE.flags(),
            ..Request::default()
        },
        &[],
        &[],
    );
    assert_eq!(r.status(), Status::BAD_REQUEST);
}
