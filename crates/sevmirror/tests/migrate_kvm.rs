//! Live migration end to end on KVM, as a user runs it: every VM is a `sevmirror run`
//! process with a control socket, the guest owner's steps are `sevmirror owner …`
//! commands, and the host drives everything with `sevmirror ctl`. Each test lives in its
//! own temp dir (sockets, consoles, an emulated SEV platform) and picks its ports from the
//! kernel, so the tests run in parallel.

use serde_json::{json, Value};
use std::{
    fs::File,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
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

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
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

    fn command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sevmirror"));
        c.env("SEVMIRROR_PLATFORM_DIR", self.path("platform"))
            .env_remove("SEVMIRROR_LOG");
        c
    }

    fn sevmirror(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
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

    /// Starts `sevmirror run` with `mem` of RAM and `args`; returns once its control
    /// socket is up.
    fn spawn(&self, name: &str, mem: &str, args: &[&str]) -> Vm {
        let mut vm = self.start(name, mem, args);
        vm.wait_api();
        vm
    }

    /// Starts `sevmirror run` with `mem` of RAM and `args`.
    fn start(&self, name: &str, mem: &str, args: &[&str]) -> Vm {
        let mut vm = Vm {
            name: name.to_string(),
            api: self.path(&format!("{name}.sock")),
            serial: self.path(&format!("{name}.console")),
            stderr: self.path(&format!("{name}.stderr")),
            owner: self.path(&format!("{name}-owner")),
            child: None,
        };
        vm.child = Some(
            self.command()
                .args(["run", "--mem", mem, "--api"])
                .arg(&vm.api)
                .arg("--serial")
                .arg(&vm.serial)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(File::create(&vm.stderr).unwrap())
                .spawn()
                .unwrap(),
        );
        vm
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
    fn verify(&self, vm: &Vm, policy: &str, firmware: Option<&Path>) -> bool {
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
    fn give_secrets_and_cont(&self, vm: &Vm, extra: &[String]) {
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
        let vm = self.sev_paused(name, "0x1", args);
        assert!(
            self.verify(&vm, "0x1", None),
            "{name}: measurement mismatch"
        );
        self.give_secrets_and_cont(&vm, extra);
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

/// One `sevmirror run` process; killed (and reaped) when dropped, also on a panic.
struct Vm {
    name: String,
    api: PathBuf,
    serial: PathBuf,
    stderr: PathBuf,
    owner: PathBuf,
    child: Option<Child>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Vm {
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let mut status = None;
        wait_until(&format!("{} to exit", self.name), || {
            status = self.exited();
            status.is_some()
        });
        self.child = None;
        status.unwrap()
    }

    /// Waits for the control socket, which appears just before the guest starts.
    fn wait_api(&mut self) {
        let start = Instant::now();
        while !self.api.exists() {
            if let Some(status) = self.exited() {
                panic!("{} exited with {status}: {}", self.name, self.stderr());
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{}: no control socket",
                self.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    fn wait_console(&self, what: &str) -> String {
        wait_until(&format!("{what:?} on {}'s console", self.name), || {
            self.console().contains(what)
        });
        self.console()
    }

    fn owner_file(&self, name: &str) -> String {
        self.owner.join(name).to_str().unwrap().to_string()
    }

    /// `sevmirror ctl`: the result, or the error text it printed.
    fn try_ctl(&self, cmd: &str, args: Option<Value>) -> Result<Value, String> {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sevmirror"));
        c.arg("ctl").arg("--api").arg(&self.api).arg(cmd);
        if let Some(a) = args {
            c.arg(a.to_string());
        }
        let o = c.output().unwrap();
        if o.status.success() {
            Ok(serde_json::from_slice(&o.stdout).unwrap())
        } else {
            Err(text(&o.stderr))
        }
    }

    fn ctl(&self, cmd: &str, args: Option<Value>) -> Value {
        self.try_ctl(cmd, args)
            .unwrap_or_else(|e| panic!("{}: {cmd}: {e}", self.name))
    }

    fn status(&self) -> String {
        self.ctl("query-status", None)["status"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn measurement(&self) -> String {
        self.ctl("query-sev-launch-measure", None)["data"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// The port a `--incoming tcp:127.0.0.1:0` target listens on.
    fn port(&self) -> u16 {
        let info = self.ctl("query-migrate", None);
        info["socket-address"][0]["port"]
            .as_str()
            .unwrap_or_else(|| panic!("no listening port in {info}"))
            .parse()
            .unwrap()
    }

    fn slow_down(&self, bytes_per_sec: u64) {
        self.ctl(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": bytes_per_sec })),
        );
    }

    fn migrate(&self, port: u16) {
        self.ctl(
            "migrate",
            Some(json!({ "uri": format!("tcp:127.0.0.1:{port}") })),
        );
    }

    /// Waits until the outgoing migration is under way and has moved some memory, which
    /// `query-migrate` shows while the first pass over RAM still runs.
    fn wait_migration_active(&self) {
        let mut info = Value::Null;
        wait_until("an active migration that moved pages", || {
            info = self.ctl("query-migrate", None);
            assert!(
                matches!(info["status"].as_str(), Some("setup" | "active")),
                "the migration ended early: {info}"
            );
            info["status"] == "active" && info["ram"]["transferred"].as_u64() > Some(0)
        });
        assert_eq!(
            info["ram"]["dirty-sync-count"], 0,
            "no progress was shown during the first pass: {info}"
        );
    }

    /// Waits for the outgoing migration to end; returns the final `query-migrate`.
    fn wait_migration_end(&self) -> Value {
        let mut info = Value::Null;
        wait_until("the migration to end", || {
            info = self.ctl("query-migrate", None);
            matches!(
                info["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            )
        });
        info
    }

    /// Migrates to `target` on `port` and requires success (see `expect_completed`).
    fn migrate_and_complete(&self, target: &Vm, port: u16) {
        self.migrate(port);
        self.expect_completed(target);
    }

    /// The outgoing migration completes: the guest runs on `target` and the source is
    /// stopped for good.
    fn expect_completed(&self, target: &Vm) {
        let info = self.wait_migration_end();
        assert_eq!(info["status"], "completed", "{info}");
        assert_eq!(target.status(), "running");
        // The source's run state follows a moment after the migration's status (as in
        // QEMU, "finish-migrate" may still show in between).
        wait_until("the source to show postmigrate", || {
            let status = self.status();
            assert!(
                matches!(status.as_str(), "finish-migrate" | "postmigrate"),
                "the source is {status} after a completed migration"
            );
            status == "postmigrate"
        });
    }
}

/// The target of a failed incoming migration exits 1, saying why, and its guest never ran.
fn assert_incoming_failed(target: &mut Vm) {
    let status = target.wait_exit();
    let err = target.stderr();
    assert_eq!(status.code(), Some(1), "{}: {err}", target.name);
    assert!(
        err.contains("sevmirror: the incoming migration failed"),
        "{}: {err}",
        target.name
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

/// A TCP relay between source and target that records what the source sends.
struct Relay {
    port: u16,
    capture: mpsc::Receiver<Vec<u8>>,
}

impl Relay {
    /// Everything the source sent, once it closed the connection.
    fn sent(&self) -> Vec<u8> {
        self.capture
            .recv_timeout(PATIENCE)
            .expect("the source did not close the migration connection")
    }
}

fn relay(to: u16) -> Relay {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (done, capture) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut from_source, _) = listener.accept().unwrap();
        // The target may not listen yet: connect the moment it does.
        let start = Instant::now();
        let mut to_target = loop {
            match TcpStream::connect(("127.0.0.1", to)) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > PATIENCE => panic!("cannot reach the target: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        let (mut back_from, mut back_to) = (
            to_target.try_clone().unwrap(),
            from_source.try_clone().unwrap(),
        );
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_from, &mut back_to);
            let _ = back_to.shutdown(Shutdown::Write);
        });
        let (mut sent, mut buf, mut forwarding) = (Vec::new(), vec![0u8; 1 << 16], true);
        loop {
            let n = match from_source.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            sent.extend_from_slice(&buf[..n]);
            // Once the target is gone, keep recording what the source still sends.
            forwarding = forwarding && to_target.write_all(&buf[..n]).is_ok();
        }
        let _ = to_target.shutdown(Shutdown::Write);
        let _ = done.send(sent);
    });
    Relay { port, capture }
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
    let src = lab.plain("src", "dirty");
    src.wait_console("filled; rewriting");
    // The source is already waiting (through a relay) when the target starts, so the
    // stream arrives while the target's firmware may still be booting: the guest must
    // arrive intact all the same.
    let port = free_port();
    let wire = relay(port);
    src.migrate(wire.port);
    let mut dst = lab.start(
        "dst",
        "128M",
        &["--incoming", &format!("tcp:127.0.0.1:{port}")],
    );
    dst.wait_api();

    src.expect_completed(&dst);
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
    let src = lab.sev_running(
        "src",
        &["--workload", "canary"],
        &[format!("{DISK_GUID}:{}", lab.p("disk.key"))],
    );
    let console = src.wait_console("canary: private page");
    assert!(
        console.contains(&format!("sev: secret {DISK_GUID}: 64 bytes")),
        "{console}"
    );
    let dst = lab.sev_target("dst");
    let wire = relay(dst.port());

    src.migrate_and_complete(&dst, wire.port);

    let sent = wire.sent();
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
    let src = lab.sev_dirty_source();
    let mut doomed = lab.sev_target("doomed");
    src.slow_down(SLOW_BYTES_PER_SEC);
    src.migrate(doomed.port());
    src.wait_migration_active();
    doomed.kill();

    let info = src.wait_migration_end();
    assert_eq!(info["status"], "failed", "{info}");
    assert!(info["error-desc"].is_string(), "no reason given: {info}");
    assert_eq!(src.status(), "running");

    src.slow_down(0);
    let dst = lab.sev_target("dst");
    src.migrate_and_complete(&dst, dst.port());
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
    src.migrate(dst.port());
    src.wait_migration_active();
    src.kill();

    assert_incoming_failed(&mut dst);
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
    let src = lab.sev_dirty_source();

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
        !lab.verify(&dst, "0x1", None),
        "the owner accepted a target that booted other firmware"
    );
    // The measurement differs because of the image and nothing else.
    assert!(lab.verify(&dst, "0x1", Some(&lab.path("other.bin"))));

    // The host runs the target anyway, without the owner's secret.
    dst.ctl("cont", None);
    dst.wait_console("waiting for an incoming migration");
    src.migrate(dst.port());
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
    let src = lab.sev_dirty_source();
    // Same firmware, and the owner would accept it, but it never got the secret.
    let mut dst = lab.sev_paused("dst", "0x1", &["--incoming", "tcp:127.0.0.1:0"]);
    assert!(lab.verify(&dst, "0x1", None));
    dst.ctl("cont", None);
    dst.wait_console("waiting for an incoming migration");

    src.migrate(dst.port());
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
    let src = lab.plain("src", "dirty");
    src.wait_console("filled; rewriting");
    let mut dst = lab.plain_target("dst", "64M");
    let wire = relay(dst.port());

    src.migrate(wire.port);
    let info = src.wait_migration_end();
    assert_eq!(info["status"], "failed", "{info}");
    let why = info["error-desc"].as_str().unwrap();
    assert!(why.contains("guest RAM"), "{why}");
    let sent = wire.sent().len();
    assert!(sent < PAGE, "{sent} bytes crossed before the refusal");
    assert_eq!(src.status(), "running");
    assert_incoming_failed(&mut dst);
}

#[test]
fn kvm_migrate_cancel_leaves_the_guest_running_on_the_source() {
    if !kvm_present("kvm_migrate_cancel_leaves_the_guest_running_on_the_source") {
        return;
    }
    let lab = Lab::new();
    let src = lab.plain("src", "dirty");
    src.wait_console("filled; rewriting");
    let mut abandoned = lab.plain_target("abandoned", "128M");
    src.slow_down(SLOW_BYTES_PER_SEC);
    src.migrate(abandoned.port());
    src.wait_migration_active();
    src.ctl("migrate_cancel", None);

    let info = src.wait_migration_end();
    assert_eq!(info["status"], "cancelled", "{info}");
    assert_eq!(src.status(), "running");
    assert_incoming_failed(&mut abandoned);

    // Nothing was lost: the guest still moves, whole.
    src.slow_down(0);
    let dst = lab.plain_target("dst", "128M");
    src.migrate_and_complete(&dst, dst.port());
    assert_memory_intact(&dst);
}

#[test]
fn kvm_a_guest_whose_owner_forbids_sending_cannot_be_migrated() {
    if !kvm_present("kvm_a_guest_whose_owner_forbids_sending_cannot_be_migrated") {
        return;
    }
    let lab = Lab::sev();
    let src = lab.sev_paused("src", "0x9", &["--workload", "idle"]);
    assert!(lab.verify(&src, "0x9", None));
    lab.give_secrets_and_cont(&src, &[]);
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
