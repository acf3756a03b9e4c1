//! SEV-ES live migration end to end on KVM: two `sevmirror run` processes, an SEV-ES
//! guest with 2 vCPUs running the dirty workload, helper vCPUs measured at both launches,
//! the guest owner in this process (`harness::scenario::Stage::with_sev_es`), and the
//! attacker's relay between the VMMs where a test needs it.
//!
//! What moves how: each vCPU saves its registers into its private slot in guest memory
//! (guest-abi `layout::vcpu_save`) when the source stops and holds; the slot travels
//! sealed like any page; on the target every vCPU starts from its measured reset VMSA and
//! restores its slot ("vCPU n: resumed from its saved state" on the target's console).
//! What the tests assert: the target runs the guest only whole; anything wrong before the
//! commit — the target or the source killed, a saved state tampered with or replayed, a
//! target that is not an SEV-ES VM with as many measured helpers, a record for a vCPU that
//! does not exist — is refused before the target guest runs, and the source guest runs on
//! (its vCPUs leave their hold; another migration of it checks out).

use harness::{
    owner::EsLaunch,
    process::VmmProcess,
    relay::{Action, FrameRelay, RawFrame},
    scenario::{Config, Stage},
};
use helper_abi::record::{RecordHeader, HEADER_SIZE};
use migration::frames::MessageType;
use serde_json::Value;
use std::{path::Path, time::Duration};

/// Only a guard against hangs.
const PATIENCE: Duration = Duration::from_secs(90);
/// The first page of vCPU 0's saved-state slot: its registers, written only when it saves.
const SAVED_STATE: u64 = guest_abi::layout::VCPU_SAVE_BASE;
/// The source's launch: 2 guest vCPUs, 1 helper vCPU.
const SOURCE: EsLaunch = EsLaunch {
    vcpus: 2,
    helpers: 1,
};

fn kvm_present(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    eprintln!("SKIPPED: /dev/kvm is missing; the KVM test {test} did not run");
    false
}

fn config() -> Config {
    Config {
        mem: 128 << 20,
        vcpus: SOURCE.vcpus,
        helpers: SOURCE.helpers,
        dirty_rate: 1000,
        sev: true,
        downtime_limit_ms: None,
        warmup: Duration::from_millis(200),
        exe: env!("CARGO_BIN_EXE_sevmirror").into(),
        pin: None,
    }
}

/// A platform, an owner who launches SEV-ES guests like the source, a working directory.
fn stage() -> Stage {
    Stage::new(config()).unwrap().with_sev_es()
}

/// The attested source, its dirty workload running on both vCPUs' guest.
fn source(stage: &Stage) -> VmmProcess {
    let vm = stage.launch_dirty("src", 1000, None).unwrap();
    vm.wait_console("filled; rewriting", PATIENCE).unwrap();
    vm
}

/// An attested target waiting on a kernel-chosen port; its port.
fn target(stage: &Stage, name: &str) -> (VmmProcess, u16) {
    stage.launch_incoming(name, None).unwrap()
}

fn migrate(src: &mut VmmProcess, port: u16) {
    src.migrate(port).unwrap();
}

/// Polls `query-migrate` until its status is one of `want`; the reply.
fn wait_migration(vm: &mut VmmProcess, want: &[&str]) -> Value {
    vm.wait_migration_status(want, PATIENCE).unwrap()
}

fn relay(
    port: u16,
    forward: impl FnMut(usize, &RawFrame) -> Action + Send + 'static,
) -> FrameRelay {
    FrameRelay::start(
        port,
        PATIENCE,
        Box::new(forward),
        Box::new(|_, _| Action::Forward),
    )
    .unwrap()
}

/// The target refused before its guest ran: it exits 1, and no vCPU restored a state
/// and no workload line appeared there.
fn assert_target_refused(t: &mut VmmProcess) {
    let status = t.wait_exit(PATIENCE).unwrap();
    let err = t.stderr_text();
    assert_eq!(status.code(), Some(1), "{}: {err}", t.name());
    assert!(
        err.contains("the incoming migration failed"),
        "{}: {err}",
        t.name()
    );
    let console = t.console();
    assert!(
        !console.contains("resumed from its saved state") && !console.contains("dirty:"),
        "the guest ran there: {console}"
    );
}

/// The source failed its migration and runs its guest again.
fn assert_source_runs(src: &mut VmmProcess, info: &Value) {
    assert!(
        matches!(info["status"].as_str(), Some("failed" | "cancelled")),
        "{info}"
    );
    assert_eq!(src.status(), "running");
}

/// The target runs the guest whole: every vCPU restored its state, and the workload's
/// check of every page passed.
fn assert_target_runs_it(dst: &VmmProcess) {
    for i in 0..SOURCE.vcpus {
        let what = format!("vCPU {i}: resumed from its saved state");
        assert!(
            dst.wait_console_line(&what, PATIENCE).is_some(),
            "{}: no {what:?}: {}",
            dst.name(),
            dst.tail()
        );
    }
    let line = dst
        .wait_console_line("dirty: verify", PATIENCE)
        .unwrap_or_else(|| panic!("no memory check on {}: {}", dst.name(), dst.tail()));
    assert!(line.contains("verify PASS"), "{line}");
}

/// The guest is whole and its vCPUs answer the host again (a vCPU still held could not
/// save for a second migration): it migrates to a clean target, which runs it.
fn assert_intact_by_moving(stage: &Stage, src: &mut VmmProcess, name: &str) {
    let (mut dst, port) = target(stage, name);
    migrate(src, port);
    let info = wait_migration(src, &["completed", "failed", "cancelled"]);
    assert_eq!(info["status"], "completed", "{info}");
    assert_target_runs_it(&dst);
    assert_eq!(dst.status(), "running");
}

/// The records of a PageBatch frame: (header, offset of the record in the frame).
fn records(f: &RawFrame) -> Vec<(RecordHeader, usize)> {
    let p = f.payload();
    let mut out = Vec::new();
    let mut at = 12;
    while at + HEADER_SIZE <= p.len() {
        let h: [u8; HEADER_SIZE] = p[at..at + HEADER_SIZE].try_into().unwrap();
        let Ok(h) = RecordHeader::decode(&h) else {
            break;
        };
        out.push((h, migration::frames::FrameHeader::SIZE + at));
        at += HEADER_SIZE + h.len as usize + 16;
    }
    out
}

/// Whether `f` is a PageBatch carrying vCPU 0's saved registers: the record of its slot's
/// first page after round 1 (the page changes only when the vCPU saves, at the stop).
fn carries_saved_state(f: &RawFrame) -> Option<usize> {
    if !f.is(MessageType::PageBatch) {
        return None;
    }
    records(f)
        .into_iter()
        .find(|(h, _)| h.gpa == SAVED_STATE && h.round > 1)
        .map(|(_, at)| at)
}

#[test]
fn kvm_es_the_guest_moves_with_every_vcpu_restoring_its_own_state() {
    if !kvm_present("kvm_es_the_guest_moves_with_every_vcpu_restoring_its_own_state") {
        return;
    }
    let outcome = stage().run(|_| {}).unwrap();
    assert!(outcome.passed(), "{outcome:?}");
    let resumed = outcome.es_resumed.expect("an SEV-ES stage");
    assert_eq!(resumed.len(), 2);
    assert!(resumed.iter().all(Option::is_some), "{resumed:?}");
}

#[test]
fn kvm_es_a_target_killed_after_the_source_saved_leaves_the_source_running() {
    if !kvm_present("kvm_es_a_target_killed_after_the_source_saved_leaves_the_source_running") {
        return;
    }
    let stage = stage();
    let mut src = source(&stage);
    let (mut dst, port) = target(&stage, "dst");
    // The host holds the manifest back: the source's vCPUs have saved their state and
    // hold, and it waits for the target's Ready. Then the target dies.
    let wire = relay(port, |_, f| match f.is(MessageType::Manifest) {
        true => Action::Drop,
        false => Action::Forward,
    });
    migrate(&mut src, wire.port());
    let saved = harness::wait_for(PATIENCE, || {
        let r = wire.recorded();
        r.forward
            .iter()
            .any(|f| f.is(MessageType::Manifest))
            .then_some(())
    });
    assert!(saved.is_some(), "the source never sent its manifest");
    assert_ne!(src.status(), "running", "paused for stop-and-copy");
    dst.kill();
    let info = wait_migration(&mut src, &["completed", "failed", "cancelled"]);
    assert_source_runs(&mut src, &info);
    assert!(!dst.console().contains("resumed from its saved state"));
    assert_intact_by_moving(&stage, &mut src, "dst2");
}

#[test]
fn kvm_es_a_source_killed_after_it_saved_never_lets_the_target_run_the_guest() {
    if !kvm_present("kvm_es_a_source_killed_after_it_saved_never_lets_the_target_run_the_guest") {
        return;
    }
    let stage = stage();
    let mut src = source(&stage);
    let (mut dst, port) = target(&stage, "dst");
    let wire = relay(port, |_, f| match f.is(MessageType::Manifest) {
        true => Action::Drop,
        false => Action::Forward,
    });
    migrate(&mut src, wire.port());
    let saved = harness::wait_for(PATIENCE, || {
        let r = wire.recorded();
        r.forward
            .iter()
            .any(|f| f.is(MessageType::Manifest))
            .then_some(())
    });
    assert!(saved.is_some(), "the source never sent its manifest");
    // Everything but the manifest arrived, the saved states included.
    assert!(wire
        .recorded()
        .forward
        .iter()
        .any(|f| carries_saved_state(f).is_some()));
    src.kill();
    assert_target_refused(&mut dst);
}

#[test]
fn kvm_es_a_tampered_or_replayed_saved_state_is_refused_and_the_source_runs_on() {
    if !kvm_present("kvm_es_a_tampered_or_replayed_saved_state_is_refused_and_the_source_runs_on") {
        return;
    }
    let stage = stage();
    let mut src = source(&stage);

    // One bit of vCPU 0's saved registers flipped on the way.
    let (mut dst, port) = target(&stage, "flipped");
    let wire = relay(port, |_, f| match carries_saved_state(f) {
        Some(at) => Action::Replace(vec![f.flipped(at + HEADER_SIZE + 0x20 - 12)]),
        None => Action::Forward,
    });
    migrate(&mut src, wire.port());
    let info = wait_migration(&mut src, &["completed", "failed", "cancelled"]);
    assert_source_runs(&mut src, &info);
    assert_target_refused(&mut dst);
    assert!(
        dst.stderr_text().contains("AUTH_FAILED"),
        "{}",
        dst.stderr_text()
    );

    // A saved state from an earlier attempt: attempt 1 is cut before the commit (the
    // host keeps its saved state); attempt 2 gets that batch in place of its own.
    let (mut first, port) = target(&stage, "first");
    let wire = relay(port, |_, f| match f.is(MessageType::Manifest) {
        true => Action::Cut,
        false => Action::Forward,
    });
    migrate(&mut src, wire.port());
    let info = wait_migration(&mut src, &["completed", "failed", "cancelled"]);
    assert_source_runs(&mut src, &info);
    assert_target_refused(&mut first);
    let old: Vec<RawFrame> = wire
        .finish(PATIENCE)
        .unwrap()
        .forward
        .into_iter()
        .filter(|f| carries_saved_state(f).is_some())
        .collect();
    assert_eq!(old.len(), 1, "one batch carried vCPU 0's saved state");
    let (mut second, port) = target(&stage, "second");
    let wire = relay(port, move |_, f| match carries_saved_state(f) {
        Some(_) => Action::Replace(old.clone()),
        None => Action::Forward,
    });
    migrate(&mut src, wire.port());
    let info = wait_migration(&mut src, &["completed", "failed", "cancelled"]);
    assert_source_runs(&mut src, &info);
    assert_target_refused(&mut second);

    assert_intact_by_moving(&stage, &mut src, "dst");
}

#[test]
fn kvm_es_a_target_that_is_not_sev_es_or_measured_other_helpers_is_refused_at_the_hello() {
    if !kvm_present(
        "kvm_es_a_target_that_is_not_sev_es_or_measured_other_helpers_is_refused_at_the_hello",
    ) {
        return;
    }
    let mut stage = stage();
    let mut src = source(&stage);
    for (name, launch, says) in [
        ("plain-sev", None, "guest mode"),
        (
            "two-helpers",
            Some(EsLaunch {
                vcpus: SOURCE.vcpus,
                helpers: 2,
            }),
            "measured at launch",
        ),
    ] {
        stage.set_sev_es(launch);
        let (mut dst, port) = target(&stage, name);
        migrate(&mut src, port);
        let info = wait_migration(&mut src, &["completed", "failed", "cancelled"]);
        assert_source_runs(&mut src, &info);
        let why = info["error-desc"].as_str().unwrap_or_default();
        assert!(why.contains(says), "{name}: {why}");
        // The target said no at the Hello, before any page moved.
        assert_target_refused(&mut dst);
    }
    stage.set_sev_es(Some(SOURCE));
    assert_intact_by_moving(&stage, &mut src, "dst");
}

#[test]
fn kvm_es_a_vcpu_record_for_a_vcpu_that_does_not_exist_is_refused() {
    if !kvm_present("kvm_es_a_vcpu_record_for_a_vcpu_that_does_not_exist_is_refused") {
        return;
    }
    let stage = stage();
    let mut src = source(&stage);
    let (mut dst, port) = target(&stage, "dst");
    // After vCPU 1's record, the same record again for a vCPU 2 the guest does not have.
    let wire = relay(port, |_, f| {
        let index = f
            .payload()
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
        match (f.is(MessageType::VcpuState), index) {
            (true, Some(1)) => {
                let mut extra = f.bytes().to_vec();
                extra[migration::frames::FrameHeader::SIZE] = 2;
                Action::Replace(vec![f.clone(), RawFrame::from_bytes(extra)])
            }
            _ => Action::Forward,
        }
    });
    migrate(&mut src, wire.port());
    let info = wait_migration(&mut src, &["completed", "failed", "cancelled"]);
    assert_source_runs(&mut src, &info);
    assert_target_refused(&mut dst);
    assert_intact_by_moving(&stage, &mut src, "dst2");
}
