//! Live migration end to end on KVM, as a user runs it: every VM is a `sevmirror run`
//! process with a control socket, the guest owner's steps are `sevmirror owner …`
//! commands, and the host drives everything with `sevmirror ctl`. Each test lives in its
//! own temp dir (sockets, consoles, an emulated SEV platform) and picks its ports from the
//! kernel, so the tests run in parallel. The VMM processes and the recording relay are
//! the harness's (`harness::process`, `harness::relay`), shared with the demo.

use harness::{
    process::{Channel, OnDrop, Spawn, VmmProcess},
    relay::Relay,
};
use serde_json::{json, Value};
use std::{
    fs::File,
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};
use tempfile::TempDir;

/// An owner's secret besides the migration secret (the GUID of a disk key).
const DISK_GUID: &str = "736869e5-84f0-4973-92ec-06879ce3da0b";
/// The canary workload's pattern, written over one private and one shared page.
const CANARY: &[u8; 16] = b"SEVMIRROR-CANARY";
const PAGE: usize = 4096;
/// Only a guard against hangs: nothing here should take more than a few seconds.
const PATIENCE: Duration = Duration::from_secs(60);
/// Slow enough that a 128 MiB migration is still running when the test intervenes.
const SLOW_BYTES_PER_SEC: u64 = 10_000_000;

fn kvm_present(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    eprintln!("SKIPPED: /dev/kvm is missing; the KVM migration test {test} did not run");
    false
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A test's world: a temp dir holding the emulated SEV platform, the owner's files, the
/// VMs' sockets and consoles.
struct Lab {
    dir: TempDir,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            dir: tempfile::Builder::new()
                .prefix("sevmirror-migrate-")
                .tempdir()
                .unwrap(),
        }
    }

    /// A lab with an SEV platform, its exported PDH and the owner's migration secret
    /// (one file for the source and every target).
    fn sev() -> Lab {
        let lab = Lab::new();
        lab.ok(
            &["platform", "export", "--sev-backend", "emulated"],
            &["--dir", &lab.p("certs")],
        );
        lab.ok(
            &["owner", "migration-secret"],
            &["--out", &lab.p("mig.bin")],
        );
        lab
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![("SEVMIRROR_PLATFORM_DIR".into(), self.p("platform"))]
    }

    fn sevmirror(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sevmirror"))
            .envs(self.env())
            .env_remove("SEVMIRROR_LOG")
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `sevmirror A… B…`, requires success, returns stdout.
    fn ok(&self, a: &[&str], b: &[&str]) -> String {
        let args: Vec<&str> = a.iter().chain(b).copied().collect();
        let o = self.sevmirror(&args);
        assert!(
            o.status.success(),
            "sevmirror {args:?}: {}\n{}",
            o.status,
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// How the harness starts this lab's VMMs: driven by `sevmirror ctl`, killed when a
    /// test ends (or panics).
    fn spawner(&self) -> Spawn {
        Spawn {
            exe: env!("CARGO_BIN_EXE_sevmirror").into(),
            dir: self.dir.path().to_path_buf(),
            env: self.env(),
            channel: Channel::Ctl,
            on_drop: OnDrop::Kill,
        }
    }

    /// Starts `sevmirror run` with `mem` of RAM and `args`; returns once its control
    /// socket is up.
    fn spawn(&self, name: &str, mem: &str, args: &[&str]) -> Vm {
        let mut vm = self.start(name, mem, args);
        vm.wait_api();
        vm
    }

    /// Starts `sevmirror run` with `mem` of RAM and `args`.
    fn start(&self, name: &str, mem: &str, args: &[&str]) -> Vm {
        let mut all = vec!["--mem", mem];
        all.extend_from_slice(args);
        Vm {
            process: VmmProcess::start(&self.spawner(), name, &all).unwrap(),
            owner: self.path(&format!("{name}-owner")),
        }
    }

    /// A plain (unencrypted) guest running `workload`.
    fn plain(&self, name: &str, workload: &str) -> Vm {
        self.spawn(name, "128M", &["--workload", workload])
    }

    /// A plain target waiting on a kernel-chosen port.
    fn plain_target(&self, name: &str, mem: &str) -> Vm {
        self.spawn(name, mem, &["--incoming", "tcp:127.0.0.1:0"])
    }

    /// An SEV guest stopped after LAUNCH_MEASURE, launched with a fresh owner session for
    /// `policy`; `args` go to `run` as well.
    fn sev_paused(&self, name: &str, policy: &str, args: &[&str]) -> Vm {
        let owner = self.p(&format!("{name}-owner"));
        self.ok(
            &["owner", "session", "--policy", policy],
            &["--pdh", &self.p("certs/pdh.cert"), "--out", &owner],
        );
        let godh = format!("{owner}/vm_godh.b64");
        let session = format!("{owner}/vm_session.b64");
        let mut all = vec![
            "--sev",
            "--sev-backend",
            "emulated",
            "--policy",
            policy,
            "--helpers",
            "1",
            "--dh-cert-file",
            &godh,
            "--session-file",
            &session,
            "--paused",
        ];
        all.extend_from_slice(args);
        self.spawn(name, "128M", &all)
    }

    /// `owner verify` of `vm`'s launch measurement against the embedded firmware (or
    /// `firmware`); returns whether it passed.
    fn verify(&self, vm: &mut Vm, policy: &str, firmware: Option<&Path>) -> bool {
        let m = vm.measurement();
        let tik = vm.owner_file("vm_tik.bin");
        let mut args = vec![
            "owner",
            "verify",
            "--tik",
            &tik,
            "--policy",
            policy,
            "--measurement",
            &m,
        ];
        if let Some(f) = firmware {
            args.extend(["--firmware", f.to_str().unwrap()]);
        }
        let o = self.sevmirror(&args);
        match o.status.code() {
            Some(0) => true,
            Some(1) => {
                let err = text(&o.stderr);
                assert!(err.contains("MISMATCH"), "owner verify: {err}");
                false
            }
            _ => panic!("owner verify: {}: {}", o.status, text(&o.stderr)),
        }
    }

    /// The owner's secret packet for `vm` (the migration secret plus `extra`
    /// GUID:FILE secrets), injected; then `cont`.
    fn give_secrets_and_cont(&self, vm: &mut Vm, extra: &[String]) {
        let m = vm.measurement();
        let (tek, tik, mig) = (
            vm.owner_file("vm_tek.bin"),
            vm.owner_file("vm_tik.bin"),
            self.p("mig.bin"),
        );
        let mut args = vec![
            "owner",
            "secret",
            "--tek",
            &tek,
            "--tik",
            &tik,
            "--measurement",
            &m,
            "--migration-secret",
            &mig,
            "--json",
        ];
        for s in extra {
            args.extend(["--secret", s]);
        }
        let packet = self.ok(&args, &[]);
        vm.ctl(
            "sev-inject-launch-secret",
            Some(serde_json::from_str(&packet).unwrap()),
        );
        vm.ctl("cont", None);
    }

    /// An SEV guest its owner attested and gave the migration secret (and `extra`),
    /// running `args` (a workload, or --incoming).
    fn sev_running(&self, name: &str, args: &[&str], extra: &[String]) -> Vm {
        let mut vm = self.sev_paused(name, "0x1", args);
        assert!(
            self.verify(&mut vm, "0x1", None),
            "{name}: measurement mismatch"
        );
        self.give_secrets_and_cont(&mut vm, extra);
        vm
    }

    /// An attested SEV target waiting on a kernel-chosen port.
    fn sev_target(&self, name: &str) -> Vm {
        self.sev_running(name, &["--incoming", "tcp:127.0.0.1:0"], &[])
    }

    /// An SEV source running the dirty workload (pages rewritten and checked on arrival).
    fn sev_dirty_source(&self) -> Vm {
        let vm = self.sev_running("src", &["--workload", "dirty"], &[]);
        vm.wait_console("filled; rewriting");
        vm
    }
}

/// One `sevmirror run` process (the harness's), with where its owner's files are.
struct Vm {
    process: VmmProcess,
    owner: PathBuf,
}

impl Vm {
    fn name(&self) -> String {
        self.process.name().to_string()
    }

    fn kill(&mut self) {
        self.process.kill();
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        self.process.wait_exit(PATIENCE).unwrap()
    }

    fn wait_api(&mut self) {
        let name = self.name();
        self.process
            .wait_api(PATIENCE)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }

    fn stderr(&self) -> String {
        self.process.stderr_text()
    }

    fn console(&self) -> String {
        self.process.console()
    }

    fn wait_console(&self, what: &str) -> String {
        self.process
            .wait_console(what, PATIENCE)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn owner_file(&self, name: &str) -> String {
        self.owner.join(name).to_str().unwrap().to_string()
    }

    /// `sevmirror ctl`: the result, or the error text it printed.
    fn try_ctl(&mut self, cmd: &str, args: Option<Value>) -> Result<Value, String> {
        self.process.execute(cmd, args).map_err(|e| e.to_string())
    }

    fn ctl(&mut self, cmd: &str, args: Option<Value>) -> Value {
        let name = self.name();
        self.try_ctl(cmd, args)
            .unwrap_or_else(|e| panic!("{name}: {cmd}: {e}"))
    }

    fn status(&mut self) -> String {
        self.ctl("query-status", None)["status"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn measurement(&mut self) -> String {
        self.process.measurement().unwrap()
    }

    /// The port a `--incoming tcp:127.0.0.1:0` target listens on.
    fn port(&mut self) -> u16 {
        self.process.port().unwrap()
    }

    fn slow_down(&mut self, bytes_per_sec: u64) {
        self.process.set_max_bandwidth(bytes_per_sec).unwrap();
    }

    fn migrate(&mut self, port: u16) {
        self.process.migrate(port).unwrap();
    }

    /// Waits until the outgoing migration is under way and has moved some memory, which
    /// `query-migrate` shows while the first pass over RAM still runs.
    fn wait_migration_active(&mut self) {
        let info = harness::wait_for(PATIENCE, || {
            let info = self.ctl("query-migrate", None);
            assert!(
                matches!(info["status"].as_str(), Some("setup" | "active")),
                "the migration ended early: {info}"
            );
            (info["status"] == "active" && info["ram"]["transferred"].as_u64() > Some(0))
                .then_some(info)
        })
        .expect("timed out waiting for an active migration that moved pages");
        assert_eq!(
            info["ram"]["dirty-sync-count"], 0,
            "no progress was shown during the first pass: {info}"
        );
    }

    /// Waits for the outgoing migration to end; returns the final `query-migrate`.
    fn wait_migration_end(&mut self) -> Value {
        self.process.wait_migration_end(PATIENCE, |_| {}).unwrap()
    }

    /// Migrates to `target` on `port` and requires success (see `expect_completed`).
    fn migrate_and_complete(&mut self, target: &mut Vm, port: u16) {
        self.migrate(port);
        self.expect_completed(target);
    }

    /// The outgoing migration completes: the guest runs on `target` and the source is
    /// stopped for good.
    fn expect_completed(&mut self, target: &mut Vm) {
        let info = self.wait_migration_end();
        assert_eq!(info["status"], "completed", "{info}");
        assert_eq!(target.status(), "running");
        // The source's run state follows a moment after the migration's status (as in
        // QEMU, "finish-migrate" may still show in between).
        harness::wait_for(PATIENCE, || {
            let status = self.status();
            assert!(
                matches!(status.as_str(), "finish-migrate" | "postmigrate"),
                "the source is {status} after a completed migration"
            );
            (status == "postmigrate").then_some(())
        })
        .expect("timed out waiting for the source to show postmigrate");
    }
}

/// The target of a failed incoming migration exits 1, saying why, and its guest never ran.
fn assert_incoming_failed(target: &mut Vm) {
    let status = target.wait_exit();
    let err = target.stderr();
    assert_eq!(status.code(), Some(1), "{}: {err}", target.name());
    assert!(
        err.contains("sevmirror: the incoming migration failed"),
        "{}: {err}",
        target.name()
    );
    let console = target.console();
    assert!(console.contains("firmware: reset"), "no console: {console}");
    assert!(!console.contains("dirty:"), "a guest ran: {console}");
}

/// The dirty workload checked all its pages on arrival.
fn assert_memory_intact(target: &Vm) {
    let console = target.wait_console("dirty: verify");
    assert!(console.contains("dirty: verify PASS"), "{console}");
    assert!(!console.contains("verify FAIL"), "{console}");
}

/// A recording relay to loopback port `to`.
fn relay(to: u16) -> Relay {
    Relay::start(to, PATIENCE).unwrap()
}

/// Everything the source sent through `wire`, once it closed the connection.
fn sent(wire: &Relay) -> Vec<u8> {
    wire.sent(PATIENCE)
        .expect("the source did not close the migration connection")
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where `needle` occurs in `hay`.
fn find_all(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

// ------------------------------------------------------------------------------ tests

#[test]
fn kvm_a_plain_guest_moves_to_the_target_with_its_memory_intact() {
    if !kvm_present("kvm_a_plain_guest_moves_to_the_target_with_its_memory_intact") {
        return;
    }
    let lab = Lab::new();
    let mut src = lab.plain("src", "dirty");
    src.wait_console("filled; rewriting");
    // The source is already waiting (through a relay) when the target starts, so the
    // stream arrives while the target's firmware may still be booting: the guest must
    // arrive intact all the same.
    let port = free_port();
    let wire = relay(port);
    src.migrate(wire.port());
    let mut dst = lab.start(
        "dst",
        "128M",
        &["--incoming", &format!("tcp:127.0.0.1:{port}")],
    );
    dst.wait_api();

    src.expect_completed(&mut dst);
    assert_memory_intact(&dst);
    // The target stays the guest's home: the source cannot run it again.
    assert!(src.try_ctl("cont", None).is_err());
    assert_eq!(src.status(), "postmigrate");
}

#[test]
fn kvm_an_sev_guests_secrets_and_private_memory_never_cross_the_wire_in_the_clear() {
    if !kvm_present(
        "kvm_an_sev_guests_secrets_and_private_memory_never_cross_the_wire_in_the_clear",
    ) {
        return;
    }
    let lab = Lab::sev();
    let disk_key: Vec<u8> = {
        let mut k = vec![0u8; 64];
        File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut k)
            .unwrap();
        k
    };
    std::fs::write(lab.path("disk.key"), &disk_key).unwrap();
    let mut src = lab.sev_running(
        "src",
        &["--workload", "canary"],
        &[format!("{DISK_GUID}:{}", lab.p("disk.key"))],
    );
    let console = src.wait_console("canary: private page");
    assert!(
        console.contains(&format!("sev: secret {DISK_GUID}: 64 bytes")),
        "{console}"
    );
    let mut dst = lab.sev_target("dst");
    let wire = relay(dst.port());

    src.migrate_and_complete(&mut dst, wire.port());

    let sent = sent(&wire);
    let migration_secret = std::fs::read(lab.path("mig.bin")).unwrap();
    assert_eq!(migration_secret.len(), 32);
    assert!(
        find_all(&sent, &disk_key).is_empty(),
        "the disk key crossed the wire"
    );
    assert!(
        find_all(&sent, &migration_secret).is_empty(),
        "the migration secret crossed the wire"
    );
    // The shared page travels in the clear by design (the host reads it anyway): it
    // shows the capture saw the guest's memory. The private page's copy must not.
    let canaries = find_all(&sent, CANARY);
    assert_eq!(
        canaries.len(),
        PAGE / CANARY.len(),
        "canaries in the stream: {} (one shared page holds {})",
        canaries.len(),
        PAGE / CANARY.len()
    );
    assert_eq!(
        canaries.last().unwrap() - canaries.first().unwrap(),
        PAGE - CANARY.len(),
        "the canaries are not one contiguous page"
    );
}

#[test]
fn kvm_when_the_target_dies_mid_migration_the_guest_keeps_running_and_can_move_later() {
    if !kvm_present(
        "kvm_when_the_target_dies_mid_migration_the_guest_keeps_running_and_can_move_later",
    ) {
        return;
    }
    let lab = Lab::sev();
    let mut src = lab.sev_dirty_source();
    let mut doomed = lab.sev_target("doomed");
    src.slow_down(SLOW_BYTES_PER_SEC);
    let port = doomed.port();
    src.migrate(port);
    src.wait_migration_active();
    doomed.kill();

    let info = src.wait_migration_end();
    assert_eq!(info["status"], "failed", "{info}");
    assert!(info["error-desc"].is_string(), "no reason given: {info}");
    assert_eq!(src.status(), "running");

    src.slow_down(0);
    let mut dst = lab.sev_target("dst");
    let port = dst.port();
    src.migrate_and_complete(&mut dst, port);
    assert_memory_intact(&dst);
}

#[test]
fn kvm_when_the_source_dies_mid_migration_the_target_gives_up_without_running_a_guest() {
    if !kvm_present(
        "kvm_when_the_source_dies_mid_migration_the_target_gives_up_without_running_a_guest",
    ) {
        return;
    }
    let lab = Lab::sev();
    let mut src = lab.sev_dirty_source();
    let mut dst = lab.sev_target("dst");
    src.slow_down(SLOW_BYTES_PER_SEC);
    let port = dst.port();
    src.migrate(port);
    src.wait_migration_active();
    src.kill();

    assert_incoming_failed(&mut dst);
}

#[test]
fn kvm_a_guest_that_writes_into_its_helpers_region_gets_its_migration_refused_not_corrupted() {
    if !kvm_present(
        "kvm_a_guest_that_writes_into_its_helpers_region_gets_its_migration_refused_not_corrupted",
    ) {
        return;
    }
    let lab = Lab::sev();
    // The scribble test option: once its helper has served a request (the mirror is
    // attached), the guest overwrites the helper's IDT, as an OS ignoring its memory map
    // would.
    let mut src = lab.sev_running(
        "src",
        &[
            "--workload",
            "dirty",
            "--fw-cfg",
            "name=opt/sevmirror/scribble,string=1",
        ],
        &[],
    );
    src.wait_console("scribble: wrote");
    src.wait_console("filled; rewriting");
    let mut dst = lab.sev_target("dst");
    let port = dst.port();
    src.migrate(port);

    let info = src.wait_migration_end();
    assert_eq!(info["status"], "failed", "{info}");
    let why = info["error-desc"].as_str().unwrap_or_default();
    assert!(why.contains("CORRUPTED"), "{info}");
    eprintln!("the migration failed: {why}");
    // Refused, not corrupted: the guest stays where it is, running, and the target
    // never ran it.
    assert_eq!(src.status(), "running");
    assert_incoming_failed(&mut dst);
    assert!(!src.console().contains("verify FAIL"));
}

/// Flips one byte in the middle of the longest run of zero padding of `image`.
fn modified_firmware(image: &[u8]) -> Vec<u8> {
    let (mut best, mut run_start) = ((0, 0), 0);
    for (i, &b) in image.iter().enumerate() {
        if b != 0 {
            run_start = i + 1;
        } else if i + 1 - run_start > best.1 {
            best = (run_start, i + 1 - run_start);
        }
    }
    assert!(
        best.1 >= 64 * 1024,
        "no padding found in the firmware image"
    );
    let mut changed = image.to_vec();
    changed[best.0 + best.1 / 2] = 0xa5;
    changed
}

#[test]
fn kvm_a_target_booted_from_other_firmware_fails_attestation_and_gets_no_guest() {
    if !kvm_present("kvm_a_target_booted_from_other_firmware_fails_attestation_and_gets_no_guest") {
        return;
    }
    let lab = Lab::sev();
    let mut src = lab.sev_dirty_source();

    lab.ok(&["firmware", "--out"], &[&lab.p("fw.bin")]);
    let image = std::fs::read(lab.path("fw.bin")).unwrap();
    std::fs::write(lab.path("other.bin"), modified_firmware(&image)).unwrap();
    let other = lab.p("other.bin");
    let mut dst = lab.sev_paused(
        "dst",
        "0x1",
        &["--incoming", "tcp:127.0.0.1:0", "--firmware", &other],
    );
    assert!(
        !lab.verify(&mut dst, "0x1", None),
        "the owner accepted a target that booted other firmware"
    );
    // The measurement differs because of the image and nothing else.
    assert!(lab.verify(&mut dst, "0x1", Some(&lab.path("other.bin"))));

    // The host runs the target anyway, without the owner's secret.
    dst.ctl("cont", None);
    dst.wait_console("waiting for an incoming migration");
    let port = dst.port();
    src.migrate(port);
    let info = src.wait_migration_end();
    assert_eq!(info["status"], "failed", "{info}");
    let why = info["error-desc"].as_str().unwrap();
    assert!(why.contains("firmware"), "{why}");
    assert_eq!(src.status(), "running");
    assert_incoming_failed(&mut dst);
}

#[test]
fn kvm_a_target_without_the_migration_secret_is_refused() {
    if !kvm_present("kvm_a_target_without_the_migration_secret_is_refused") {
        return;
    }
    let lab = Lab::sev();
    let mut src = lab.sev_dirty_source();
    // Same firmware, and the owner would accept it, but it never got the secret.
    let mut dst = lab.sev_paused("dst", "0x1", &["--incoming", "tcp:127.0.0.1:0"]);
    assert!(lab.verify(&mut dst, "0x1", None));
    dst.ctl("cont", None);
    dst.wait_console("waiting for an incoming migration");

    let port = dst.port();
    src.migrate(port);
    let info = src.wait_migration_end();
    assert_eq!(info["status"], "failed", "{info}");
    let why = info["error-desc"].as_str().unwrap();
    assert!(why.contains("NO_SECRET"), "{why}");
    assert_eq!(src.status(), "running");
    assert_incoming_failed(&mut dst);
}

#[test]
fn kvm_a_target_with_other_memory_is_refused_before_any_page_moves() {
    if !kvm_present("kvm_a_target_with_other_memory_is_refused_before_any_page_moves") {
        return;
    }
    let lab = Lab::new();
    let mut src = lab.plain("src", "dirty");
    src.wait_console("filled; rewriting");
    let mut dst = lab.plain_target("dst", "64M");
    let wire = relay(dst.port());

    src.migrate(wire.port());
    let info = src.wait_migration_end();
    assert_eq!(info["status"], "failed", "{info}");
    let why = info["error-desc"].as_str().unwrap();
    assert!(why.contains("guest RAM"), "{why}");
    let sent = sent(&wire).len();
    assert!(sent < PAGE, "{sent} bytes crossed before the refusal");
    assert_eq!(src.status(), "running");
    assert_incoming_failed(&mut dst);
}

/// A feature this host's CPU has and the VMM gives guests: AES-NI (passed through from
/// the host), else SSE2 (every x86-64 CPU).
fn a_host_feature() -> &'static str {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has_aes = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "aes"));
    if has_aes {
        "aes"
    } else {
        "sse2"
    }
}

#[test]
fn kvm_a_target_whose_cpu_lacks_a_feature_the_guest_has_refuses_naming_it() {
    if !kvm_present("kvm_a_target_whose_cpu_lacks_a_feature_the_guest_has_refuses_naming_it") {
        return;
    }
    let feature = a_host_feature();
    let lab = Lab::new();
    let mut src = lab.plain("src", "dirty");
    src.wait_console("filled; rewriting");
    // `--cpu-hide` stands in for a target host whose CPU lacks the feature.
    let mut dst = lab.spawn(
        "dst",
        "128M",
        &["--incoming", "tcp:127.0.0.1:0", "--cpu-hide", feature],
    );
    let wire = relay(dst.port());

    src.migrate(wire.port());
    let info = src.wait_migration_end();
    assert_eq!(info["status"], "failed", "{info}");
    let why = info["error-desc"].as_str().unwrap();
    assert!(
        why.contains(&format!("lacks {feature}, which the guest was given")),
        "{why}"
    );
    let sent = sent(&wire).len();
    assert!(sent < PAGE, "{sent} bytes crossed before the refusal");
    assert_eq!(src.status(), "running");
    assert_incoming_failed(&mut dst);
    assert!(dst.stderr().contains(feature), "{}", dst.stderr());

    // A guest run without the feature moves to that target.
    let mut src = lab.spawn(
        "src2",
        "128M",
        &["--workload", "dirty", "--cpu-hide", feature],
    );
    src.wait_console("filled; rewriting");
    let mut dst = lab.spawn(
        "dst2",
        "128M",
        &["--incoming", "tcp:127.0.0.1:0", "--cpu-hide", feature],
    );
    let port = dst.port();
    src.migrate_and_complete(&mut dst, port);
    assert_memory_intact(&dst);
}

#[test]
fn kvm_migrate_cancel_leaves_the_guest_running_on_the_source() {
    if !kvm_present("kvm_migrate_cancel_leaves_the_guest_running_on_the_source") {
        return;
    }
    let lab = Lab::new();
    let mut src = lab.plain("src", "dirty");
    src.wait_console("filled; rewriting");
    let mut abandoned = lab.plain_target("abandoned", "128M");
    src.slow_down(SLOW_BYTES_PER_SEC);
    let port = abandoned.port();
    src.migrate(port);
    src.wait_migration_active();
    src.ctl("migrate_cancel", None);

    let info = src.wait_migration_end();
    assert_eq!(info["status"], "cancelled", "{info}");
    assert_eq!(src.status(), "running");
    assert_incoming_failed(&mut abandoned);

    // Nothing was lost: the guest still moves, whole.
    src.slow_down(0);
    let mut dst = lab.plain_target("dst", "128M");
    let port = dst.port();
    src.migrate_and_complete(&mut dst, port);
    assert_memory_intact(&dst);
}

#[test]
fn kvm_a_guest_whose_owner_forbids_sending_cannot_be_migrated() {
    if !kvm_present("kvm_a_guest_whose_owner_forbids_sending_cannot_be_migrated") {
        return;
    }
    let lab = Lab::sev();
    let mut src = lab.sev_paused("src", "0x9", &["--workload", "idle"]);
    assert!(lab.verify(&mut src, "0x9", None));
    lab.give_secrets_and_cont(&mut src, &[]);
    src.wait_console("idle: halted");

    let info = src.ctl("query-migrate", None);
    let reasons = info["blocked-reasons"].to_string();
    assert!(reasons.contains("NOSEND"), "{info}");
    // Nothing needs to listen: the refusal comes before any connection.
    let err = src
        .try_ctl("migrate", Some(json!({ "uri": "tcp:127.0.0.1:9" })))
        .unwrap_err();
    assert!(err.contains("NOSEND"), "{err}");
    let info = src.ctl("query-migrate", None);
    assert!(info["status"].is_null(), "a migration started: {info}");
    assert_eq!(src.status(), "running");
}
