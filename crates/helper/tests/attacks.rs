//! The attacker's kit against the helper, host side: a hostile host drives the real
//! helper logic (requests in any order, on any vCPU, at any moment, and any bytes in the
//! windows and messages). Each test asserts that the target refuses and the source is
//! intact — or, after its commit, stopped and recoverable.
//!
//! The KVM versions of the lane and RESET attacks (real firmware entry under /dev/kvm)
//! are in crates/vmm/tests/helper_lanes_kvm.rs.

mod common;

use common::*;
use helper_abi::{
    mailbox::{info_flags, Op, Origin, Phase, Request, Status},
    record::{RecordHeader, HEADER_SIZE},
};
use mirror_helper::{
    host::{self, Guest, Spec},
    keys,
};
use std::sync::{Arc, Mutex};

fn nonce(records: &[u8]) -> [u8; 12] {
    RecordHeader::decode(records[..HEADER_SIZE].try_into().unwrap())
        .unwrap()
        .nonce()
}

/// Failed before the fix (attacks_before.rs, two_vcpus_on_one_lane_never_seal_under_one_nonce):
/// the host chose the lane (RSI) and two vCPUs sealed under one (key, nonce).
#[test]
fn two_vcpus_never_share_a_lane_id_or_a_nonce() {
    let (src, _, _) = pair(1);
    // A second vCPU asking for lane 0 (the host's choice) is refused ...
    assert!(src.guest.vcpu_with_lane(0).is_err());
    // ... and one the entry point hands out gets a fresh lane id.
    let second = src.guest.vcpu();
    assert_ne!(second.lane.lane(), src.vcpus[0].lane.lane());
    let a = src.export(0, 1, &[0x3000]).unwrap();
    let r = src.guest.call(
        &second,
        Request {
            op: Op::EXPORT.0,
            count: 1,
            round: 1,
            ..Default::default()
        },
        &[0x5000],
        &[],
    );
    assert_eq!(r.status(), Status::OK);
    let b = second.mailbox.window(0, r.response.bytes as usize);
    assert_ne!(nonce(&a), nonce(&b));
}

/// Failed before the fix (attacks_before.rs,
/// import_into_a_guest_that_already_runs_is_refused): RESET + KEYS re-opened IMPORT.
#[test]
fn import_into_a_guest_that_already_runs_is_refused() {
    let (src, dst, _) = verified(1);
    let old = {
        // A record of this session the host kept.
        let (s2, _, _) = pair(1);
        s2.export(0, 1, &[0x3000]).unwrap()
    };
    let (commit, _) = src.commit(0).unwrap();
    assert_eq!(dst.accept_commit(0, &commit), Status::OK);
    // The guest runs. The host resets the helper and tries to key it as a target again,
    // to replay old records into the running guest.
    assert_eq!(dst.reset(0), Status::OK);
    let (src2, _) = unkeyed(1);
    let share = host::start(&src2.guest, &src2.vcpus[0], SESSION, HELLO).unwrap();
    assert_eq!(
        host::respond(&dst.guest, &dst.vcpus[0], SESSION, HELLO, &share),
        Err(Status::NOT_INCOMING)
    );
    assert_eq!(dst.import(0, &old).unwrap_err().0, Status::NO_KEYS);
}

fn in_flight_attack(op: Op, message: Vec<u8>) -> Status {
    let (src, dst, _) = pair(2);
    let records = src.export(0, 1, &[0x3000]).unwrap();
    let seen = Arc::new(Mutex::new(None));
    // While vCPU 0 is inside IMPORT, vCPU 1 sends `op`.
    let dst = Arc::new(dst);
    {
        let (d, seen) = (dst.clone(), seen.clone());
        *dst.vcpus[0].mailbox.hook.lock().unwrap() = Some(Box::new(move || {
            let r = d.call(
                1,
                Request {
                    op: op.0,
                    bytes: message.len() as u32,
                    session_id: SESSION,
                    ..Default::default()
                },
                &[],
                &message,
            );
            *seen.lock().unwrap() = Some(r.status());
        }));
    }
    assert_eq!(
        dst.import(0, &records),
        Ok(1),
        "the import itself completes"
    );
    let got = seen.lock().unwrap().expect("the hook ran");
    got
}

/// Failed before the fix (attacks_before.rs,
/// reset_while_another_vcpu_is_inside_a_request_is_refused): RESET succeeded.
#[test]
fn reset_or_rekeying_while_another_vcpu_is_inside_a_request_is_refused() {
    assert_eq!(in_flight_attack(Op::RESET, vec![]), Status::BUSY);
    assert_eq!(
        in_flight_attack(Op::HS_RESPOND, vec![0x11; 96]),
        Status::BUSY
    );
    assert_eq!(in_flight_attack(Op::FINISH, vec![]), Status::BUSY);
    assert_eq!(in_flight_attack(Op::ABORT, vec![]), Status::BUSY);
}

#[test]
fn a_recorded_handshake_replayed_to_a_fresh_target_is_refused() {
    // The host records the source's side of a session ...
    let (src, _) = unkeyed(1);
    let share = host::start(&src.guest, &src.vcpus[0], SESSION, HELLO).unwrap();
    let first = Side::new(
        Guest::new(Spec::default(), Some(SECRET), |_| 0).incoming(),
        1,
    );
    let reply = host::respond(&first.guest, &first.vcpus[0], SESSION, HELLO, &share).unwrap();
    let (confirm, _) = host::finish(&src.guest, &src.vcpus[0], &reply).unwrap();
    let records = src.export(0, 1, &[0x3000]).unwrap();
    // ... and replays it to a fresh target holding the same secret: the target's own
    // nonce and share make another transcript, so the source's MAC does not verify.
    let fresh = Side::new(
        Guest::new(Spec::default(), Some(SECRET), |_| 0).incoming(),
        1,
    );
    host::respond(&fresh.guest, &fresh.vcpus[0], SESSION, HELLO, &share).unwrap();
    assert_eq!(
        host::confirm_target(&fresh.guest, &fresh.vcpus[0], &confirm),
        Err(Status::BAD_PEER)
    );
    assert_eq!(fresh.import(0, &records).unwrap_err().0, Status::NO_KEYS);
    // Even the target the session was made with opens a replayed record only once.
    host::confirm_target(&first.guest, &first.vcpus[0], &confirm).unwrap();
    first.import(0, &records).unwrap();
    assert_eq!(first.import(0, &records).unwrap_err().0, Status::REORDER);
}

#[test]
fn a_reflected_mac_or_a_low_order_share_is_refused() {
    // The host sends the target's own MAC back as the source's confirmation.
    let (src, dst) = unkeyed(1);
    let share = host::start(&src.guest, &src.vcpus[0], SESSION, HELLO).unwrap();
    let reply = host::respond(&dst.guest, &dst.vcpus[0], SESSION, HELLO, &share).unwrap();
    let reflected: [u8; 32] = reply[64..].try_into().unwrap();
    assert_eq!(
        host::confirm_target(&dst.guest, &dst.vcpus[0], &reflected),
        Err(Status::BAD_PEER)
    );
    // A zero share makes X25519's result zero: refused on either side.
    let (src, dst) = unkeyed(1);
    let mut share = host::start(&src.guest, &src.vcpus[0], SESSION, HELLO).unwrap();
    share[32..].fill(0);
    assert_eq!(
        host::respond(&dst.guest, &dst.vcpus[0], SESSION, HELLO, &share),
        Err(Status::WEAK_KEY)
    );
    let mut reply = [0u8; 96];
    reply[..32].fill(9);
    assert_eq!(
        host::finish(&src.guest, &src.vcpus[0], &reply),
        Err(Status::WEAK_KEY)
    );
    assert_eq!(src.op(0, Op::INFO).response.phase(), Phase::IDLE);
}

#[test]
fn a_previous_attempts_manifest_is_refused() {
    let (src, dst) = unkeyed(1);
    let run = |hello: [u8; 32]| {
        assert_eq!(src.reset(0), Status::OK);
        assert_eq!(dst.reset(0), Status::OK);
        host::handshake(
            &src.guest,
            &src.vcpus[0],
            &dst.guest,
            &dst.vcpus[0],
            SESSION,
            hello,
        )
        .unwrap();
        migrate_all(&src, &dst, 1);
        src.manifest(0).unwrap()
    };
    let old = run(HELLO);
    // A second attempt with the same guest, session id and Hello: the old manifest
    // belongs to another session key.
    let _new = run(HELLO);
    assert_eq!(dst.verify(0, &old), Status::AUTH_FAILED);
}

/// The source's commitment, and what may end it.
#[test]
fn a_lost_commit_keeps_the_source_migrated_out_until_the_target_aborts() {
    let (src, dst, _) = verified(1);
    let (_lost, th) = src.commit(0).unwrap();
    assert!(src.guest.migrated_out());
    // The commit never reached the target. The source stays out through a RESET and
    // refuses a new migration (no clone to a second target).
    assert_eq!(src.reset(0), Status::OK);
    assert!(src.guest.migrated_out());
    assert_eq!(
        host::start(&src.guest, &src.vcpus[0], SESSION, HELLO),
        Err(Status::MIGRATED_OUT)
    );
    let info = src.op(0, Op::INFO);
    assert_eq!(
        info.response.info_flags & info_flags::MIGRATED_OUT,
        info_flags::MIGRATED_OUT
    );
    assert_eq!(&info.message[32..], &th);
    // The target gives the session up; after that it can never commit it.
    let token = dst.abort(0).unwrap();
    assert_eq!(dst.accept_commit(0, &_lost), Status::BAD_STATE);
    assert_eq!(src.release(0, Origin::TARGET, &token), Status::OK);
    assert!(!src.guest.migrated_out());
    assert_eq!(
        src.op(0, Op::INFO).response.info_flags & info_flags::MIGRATED_OUT,
        0
    );
    assert!(host::start(&src.guest, &src.vcpus[0], SESSION, HELLO).is_ok());
}

#[test]
fn a_forged_or_replayed_abort_does_not_release_the_source() {
    // An abort of an earlier session the target really gave up.
    let (src, dst, _) = pair(1);
    let old_token = dst.abort(0).unwrap();
    assert_eq!(src.reset(0), Status::OK);
    assert_eq!(dst.reset(0), Status::OK);
    host::handshake(
        &src.guest,
        &src.vcpus[0],
        &dst.guest,
        &dst.vcpus[0],
        SESSION,
        HELLO,
    )
    .unwrap();
    migrate_all(&src, &dst, 1);
    let m = src.manifest(0).unwrap();
    assert_eq!(dst.verify(0, &m), Status::OK);
    let (commit, th) = src.commit(0).unwrap();
    for (what, origin, token) in [
        ("an earlier session's abort", Origin::TARGET, old_token),
        ("made-up bytes", Origin::TARGET, [0x42; 32]),
        (
            "an owner token under another secret",
            Origin::OWNER,
            keys::owner_abort_token(&[1; 32], &th),
        ),
        (
            "the owner's token passed as the target's",
            Origin::TARGET,
            keys::owner_abort_token(&SECRET, &th),
        ),
    ] {
        assert_eq!(src.release(0, origin, &token), Status::BAD_TOKEN, "{what}");
        assert!(src.guest.migrated_out(), "{what}");
    }
    // The real target, still able to commit, does so; no abort exists for this session.
    assert_eq!(dst.accept_commit(0, &commit), Status::OK);
    assert_eq!(dst.op(0, Op::ABORT).status(), Status::BAD_STATE);
}

#[test]
fn the_owner_can_release_a_source_whose_target_is_gone() {
    let (src, _dst, _) = verified(1);
    let (_commit, th) = src.commit(0).unwrap();
    // The target host burned down. The owner decides the target never ran the guest
    // and computes the break-glass token from the transcript hash the source reports.
    let reported: [u8; 32] = src.op(0, Op::INFO).message[32..].try_into().unwrap();
    assert_eq!(reported, th);
    let token = keys::owner_abort_token(&SECRET, &reported);
    assert_eq!(
        src.reset(0),
        Status::OK,
        "a RESET in between changes nothing"
    );
    assert_eq!(src.release(0, Origin::OWNER, &token), Status::OK);
    assert!(!src.guest.migrated_out());
    assert_eq!(src.release(0, Origin::OWNER, &token), Status::NOT_COMMITTED);
}

#[test]
fn a_target_that_aborted_never_commits_and_one_that_committed_never_aborts() {
    let (src, dst, _) = verified(1);
    let (commit, _) = src.commit(0).unwrap();
    let token = dst.abort(0).unwrap();
    assert_eq!(
        dst.abort(0).unwrap(),
        token,
        "aborting again gives the same token"
    );
    assert_eq!(dst.accept_commit(0, &commit), Status::BAD_STATE);
    assert_eq!(dst.reset(0), Status::OK);
    assert_eq!(dst.accept_commit(0, &commit), Status::NO_KEYS);

    let (src, dst, _) = verified(1);
    let (commit, _) = src.commit(0).unwrap();
    assert_eq!(dst.accept_commit(0, &commit), Status::OK);
    assert_eq!(dst.op(0, Op::ABORT).status(), Status::BAD_STATE);
    assert_eq!(dst.reset(0), Status::OK);
    assert_eq!(dst.op(0, Op::ABORT).status(), Status::NO_KEYS);
}

#[test]
fn a_commit_from_another_session_or_before_the_manifest_is_refused() {
    let (src, dst, _) = verified(1);
    let (other_src, other_dst, _) = verified(1);
    let (foreign, _) = other_src.commit(0).unwrap();
    assert_eq!(dst.accept_commit(0, &foreign), Status::AUTH_FAILED);
    drop(other_dst);
    let (commit, _) = src.commit(0).unwrap();
    let mut flipped = commit.clone();
    flipped[HEADER_SIZE] ^= 1;
    assert_eq!(dst.accept_commit(0, &flipped), Status::AUTH_FAILED);
    assert_eq!(dst.accept_commit(0, &commit), Status::OK);
    // A target that has not verified a manifest takes no commit at all.
    let (_, dst2, _) = pair(1);
    assert_eq!(dst2.accept_commit(0, &commit), Status::BAD_STATE);
}

#[test]
fn a_committed_session_blocks_every_export_until_released() {
    let (src, dst, _) = verified(1);
    src.commit(0).unwrap();
    assert_eq!(
        src.export(0, 9, &[0x3000]).unwrap_err().0,
        Status::MIGRATED_OUT
    );
    assert_eq!(
        src.seal_blob(0, helper_abi::record::Kind::DEVICE_STATE, 0, b"x"),
        Err(Status::MIGRATED_OUT)
    );
    let token = dst.abort(0).unwrap();
    assert_eq!(src.release(0, Origin::TARGET, &token), Status::OK);
    assert_eq!(src.export(0, 9, &[0x3000]).unwrap_err().0, Status::NO_KEYS);
}
