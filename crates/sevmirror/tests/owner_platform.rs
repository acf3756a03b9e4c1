//! `sevmirror platform`, `owner` and `measure` as a user runs them: each subcommand as a
//! subprocess against a temporary `--platform-dir`, checked against the emulated PSP
//! driven in-process (launches over a `VecMemory` holding the firmware image), plus the
//! whole owner round trip through `sevmirror run --sev --paused` and its control socket
//! where KVM is present.

use harness::process::{Channel, OnDrop, Spawn, VmmProcess};
use sev_platform::{
    backend::{LaunchMeasurement, LaunchSession, SecretHeader, VmRef},
    certs::{SevCert, Usage, CERT_SIZE},
    identity::{CHIP_FILE, OWNER_FILE},
    memory::VecMemory,
    owner, secret_table, EmulatedPsp, Policy, SevBackend,
};
use sha2::{Digest, Sha256};
use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

const MIGRATION_GUID: &str = "dd785603-80b4-4e8d-abcf-5b10f9a32dde";
const DISK_GUID: &str = "736869e5-84f0-4973-92ec-06879ce3da0b";

fn sevmirror(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sevmirror"))
        .args(args)
        .env_remove("SEVMIRROR_LOG")
        .output()
        .expect("run sevmirror")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs sevmirror and requires exit 0; returns stdout.
fn ok(args: &[&str]) -> String {
    let o = sevmirror(args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "sevmirror {args:?}\nstdout: {}\nstderr: {}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

/// Runs sevmirror and requires a failure with `code` whose message contains `needle`; never
/// a panic. Exit 1 (a failed operation) is one `sevmirror: error:` line; exit 2 is a clap
/// usage error (its first line names the problem, then usage and a hint may follow).
fn fails(args: &[&str], code: i32, needle: &str) -> String {
    let o = sevmirror(args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "sevmirror {args:?}: {err}");
    assert!(
        !err.contains("panicked"),
        "sevmirror {args:?} panicked: {err}"
    );
    if code == 1 {
        assert_eq!(
            err.lines().count(),
            1,
            "sevmirror {args:?}: not one line:\n{err}"
        );
        assert!(err.starts_with("sevmirror: error: "), "{err}");
    } else {
        assert!(err.starts_with("error: "), "sevmirror {args:?}: {err}");
    }
    assert!(
        err.contains(needle),
        "sevmirror {args:?}: {needle:?} not in {err}"
    );
    err
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::Builder::new()
                .prefix("sevmirror-owner-")
                .tempdir()
                .unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn p(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    fn platform_dir(&self) -> PathBuf {
        self.path("platform")
    }

    /// `platform SUB --platform-dir D --sev-backend emulated EXTRA…`.
    fn platform(&self, sub: &str, extra: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["platform", sub, "--platform-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(self.p("platform"));
        v.extend(["--sev-backend".into(), "emulated".into()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    fn export(&self, sub: &str) -> (Vec<u8>, Vec<u8>) {
        let out = self.p(sub);
        ok(&strs(&self.platform("export", &["--dir", &out])));
        let pdh = std::fs::read(self.path(sub).join("pdh.cert")).unwrap();
        let chain = std::fs::read(self.path(sub).join("cert_chain.cert")).unwrap();
        (pdh, chain)
    }

    fn psp(&self) -> EmulatedPsp {
        EmulatedPsp::open(&self.platform_dir()).unwrap()
    }

    /// `owner session` for the exported PDH; returns the session directory.
    fn session(&self, policy: &str) -> PathBuf {
        self.export("export");
        let out = self.p("session");
        ok(&[
            "owner",
            "session",
            "--pdh",
            &self.p("export/pdh.cert"),
            "--policy",
            policy,
            "--out",
            &out,
        ]);
        self.path("session")
    }

    fn write(&self, name: &str, data: &[u8]) -> String {
        std::fs::write(self.path(name), data).unwrap();
        self.p(name)
    }
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn read_session(dir: &Path, name: &str) -> LaunchSession {
    let godh = std::fs::read_to_string(dir.join(format!("{name}_godh.b64"))).unwrap();
    let session = std::fs::read_to_string(dir.join(format!("{name}_session.b64"))).unwrap();
    owner::launch_session_from_base64(&godh, &session).unwrap()
}

const MEM_BASE: u64 = 0x10_0000;
const VM: VmRef = VmRef(7);

/// A guest launched on `psp` in-process: `image` at MEM_BASE, a page for the secret after
/// it.
struct Launched {
    mem: VecMemory,
    measurement: LaunchMeasurement,
    secret_gpa: u64,
}

fn launch(psp: &EmulatedPsp, policy: u32, session: &LaunchSession, image: &[u8]) -> Launched {
    let mut data = image.to_vec();
    let secret_gpa = MEM_BASE + data.len() as u64;
    data.resize(data.len() + 0x2000, 0);
    let mem = VecMemory::with_data(MEM_BASE, data);
    psp.add_vm(VM, sev_platform::backend::KvmVmType::Default)
        .unwrap();
    psp.init_vm(VM, false).unwrap();
    psp.launch_start(VM, Policy(policy), Some(session)).unwrap();
    psp.launch_update_data(VM, &mem, MEM_BASE, image.len() as u64)
        .unwrap();
    let measurement = psp.launch_measure(VM).unwrap();
    Launched {
        mem,
        measurement,
        secret_gpa,
    }
}

impl Launched {
    fn b64(&self) -> String {
        owner::encode_base64(&self.measurement.0)
    }

    /// Injects a packet; returns the secret table's entries as the guest sees them.
    fn inject(
        &self,
        psp: &EmulatedPsp,
        header: &[u8],
        payload: &[u8],
    ) -> Result<Vec<(String, Vec<u8>)>, sev_platform::SevError> {
        let header = SecretHeader::from_bytes(header).expect("52-byte header");
        psp.launch_secret(VM, &self.mem, &header, payload, self.secret_gpa)?;
        let area = self.mem.snapshot(self.secret_gpa, payload.len()).unwrap();
        Ok(secret_table::parse(&area)
            .unwrap()
            .into_iter()
            .map(|(g, d)| (g.to_string(), d.to_vec()))
            .collect())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------- platform

#[test]
fn platform_status_prints_version_state_and_guest_count() {
    let e = Env::new();
    let out = ok(&strs(&e.platform("status", &[])));
    for want in [
        "api version: 0.24",
        "build id:    1",
        "state:       UNINIT",
        "guests:      0 (this process only",
        "emulated (identity in ",
    ] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    // The identity was created on first use.
    assert!(e.platform_dir().join(CHIP_FILE).exists());
    assert!(e.platform_dir().join(OWNER_FILE).exists());
    let json: serde_json::Value =
        serde_json::from_str(&ok(&strs(&e.platform("status", &["--json"])))).unwrap();
    assert_eq!(json["backend"], "emulated");
    assert_eq!(json["api-major"], 0);
    assert_eq!(json["api-minor"], 24);
    assert_eq!(json["build-id"], 1);
    assert_eq!(json["state"], "UNINIT");
    assert_eq!(json["guest-count"], 0);
    let (pdh, _) = e.export("x");
    assert_eq!(json["pdh-sha256"], hex(&Sha256::digest(&pdh)));
}

#[test]
fn platform_default_dir_comes_from_the_environment() {
    let e = Env::new();
    let o = Command::new(env!("CARGO_BIN_EXE_sevmirror"))
        .args(["platform", "status", "--sev-backend", "emulated", "--json"])
        .env("SEVMIRROR_PLATFORM_DIR", e.platform_dir())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["platform-dir"], e.p("platform"));
    assert!(e.platform_dir().join(OWNER_FILE).exists());
}

/// Parses the four certificates of a chain and checks every signature.
fn check_chain(pdh: &[u8], chain: &[u8]) -> [SevCert; 4] {
    use sev::certs::sev::{sev::Chain, Verifiable};
    use sev::parser::Decoder;
    assert_eq!(pdh.len(), CERT_SIZE);
    assert_eq!(chain.len(), 4 * CERT_SIZE);
    assert_eq!(
        pdh,
        &chain[..CERT_SIZE],
        "pdh.cert is the chain's first certificate"
    );
    let cert = |i: usize, u: Usage| {
        SevCert::parse_as(&chain[i * CERT_SIZE..(i + 1) * CERT_SIZE], u).unwrap()
    };
    let (pdh_c, pek, oca, cek) = (
        cert(0, Usage::PDH),
        cert(1, Usage::PEK),
        cert(2, Usage::OCA),
        cert(3, Usage::CEK),
    );
    pdh_c.verify_signed_by(&pek).unwrap();
    pek.verify_signed_by(&oca).unwrap();
    pek.verify_signed_by(&cek).unwrap();
    oca.verify_signed_by(&oca).unwrap();
    // And independently with the virtee crate, as sevctl reads it.
    let virtee = Chain::decode(&mut &chain[..], ()).unwrap();
    (&virtee).verify().expect("virtee verifies the chain");
    [pdh_c, pek, oca, cek]
}

#[test]
fn platform_export_writes_the_files_sevctl_export_writes() {
    let e = Env::new();
    let out = ok(&strs(&e.platform("export", &["--dir", &e.p("exp/nested")])));
    assert!(
        out.contains("pdh.cert") && out.contains("cert_chain.cert"),
        "{out}"
    );
    let pdh = std::fs::read(e.path("exp/nested/pdh.cert")).unwrap();
    let chain = std::fs::read(e.path("exp/nested/cert_chain.cert")).unwrap();
    check_chain(&pdh, &chain);
    // The same identity on the next run, and what the PSP exports in-process.
    let (pdh2, chain2) = e.export("again");
    assert_eq!((&pdh, &chain), (&pdh2, &chain2));
    assert_eq!(e.psp().export_certs().unwrap().chain, chain);
}

#[test]
fn platform_rotate_pdh_changes_only_the_pdh_and_old_sessions_stop_working() {
    let e = Env::new();
    let (pdh, chain) = e.export("before");
    let old = owner::session(&pdh, Policy(0)).unwrap();
    let out = ok(&strs(&e.platform("rotate-pdh", &[])));
    assert!(out.contains("new PDH"), "{out}");
    let (pdh2, chain2) = e.export("after");
    assert_ne!(pdh, pdh2);
    assert_eq!(
        chain[CERT_SIZE..],
        chain2[CERT_SIZE..],
        "PEK, OCA, CEK stay"
    );
    check_chain(&pdh2, &chain2);
    let psp = e.psp();
    psp.add_vm(VM, sev_platform::backend::KvmVmType::Default)
        .unwrap();
    psp.init_vm(VM, false).unwrap();
    let err = psp
        .launch_start(VM, Policy(0), Some(&old.launch_session()))
        .unwrap_err();
    assert!(err.status().is_some(), "{err}");
    let new = owner::session(&pdh2, Policy(0)).unwrap();
    psp.launch_start(VM, Policy(0), Some(&new.launch_session()))
        .unwrap();
}

#[test]
fn platform_reset_replaces_oca_pek_pdh_and_keeps_the_cek() {
    let e = Env::new();
    let (_, chain) = e.export("before");
    let out = ok(&strs(&e.platform("reset", &[])));
    assert!(out.contains("platform reset"), "{out}");
    let (pdh2, chain2) = e.export("after");
    check_chain(&pdh2, &chain2);
    for i in 0..3 {
        let r = i * CERT_SIZE..(i + 1) * CERT_SIZE;
        assert_ne!(chain[r.clone()], chain2[r], "certificate {i} is new");
    }
    assert_eq!(
        chain[3 * CERT_SIZE..],
        chain2[3 * CERT_SIZE..],
        "the CEK stays"
    );
}

#[test]
fn platform_a_damaged_state_dir_is_one_clear_line_and_reset_repairs_it() {
    let e = Env::new();
    e.export("before");
    let owner_file = e.platform_dir().join(OWNER_FILE);
    let mut bytes = std::fs::read(&owner_file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&owner_file, &bytes).unwrap();
    for sub in ["status", "export", "rotate-pdh"] {
        let extra: &[&str] = if sub == "export" {
            &["--dir", "/nonexistent-never-created"]
        } else {
            &[]
        };
        let err = fails(&strs(&e.platform(sub, extra)), 1, OWNER_FILE);
        assert!(err.starts_with("sevmirror: error: "), "{err}");
        assert!(err.contains("platform reset"), "says how to recover: {err}");
        assert_eq!(std::fs::read(&owner_file).unwrap(), bytes, "left as it was");
    }
    assert!(!Path::new("/nonexistent-never-created").exists());
    // A missing chip file next to an owner file is damage too.
    let out = ok(&strs(&e.platform("reset", &[])));
    assert!(
        out.contains("damaged") && out.contains("recreated"),
        "{out}"
    );
    let (pdh, chain) = e.export("after");
    check_chain(&pdh, &chain);
    std::fs::remove_file(e.platform_dir().join(CHIP_FILE)).unwrap();
    fails(&strs(&e.platform("status", &[])), 1, CHIP_FILE);
    let out = ok(&strs(&e.platform("reset", &[])));
    assert!(out.contains("damaged"), "{out}");
    ok(&strs(&e.platform("status", &[])));
}

#[test]
fn platform_hw_backend_without_dev_sev_is_a_clear_error() {
    if Path::new("/dev/sev").exists() {
        eprintln!("SKIPPED: /dev/sev exists; this test checks the error on machines without it");
        return;
    }
    for sub in ["status", "rotate-pdh"] {
        fails(
            &["platform", sub, "--sev-backend", "hw"],
            1,
            "--sev-backend emulated",
        );
    }
    fails(
        &[
            "platform",
            "export",
            "--sev-backend",
            "hw",
            "--dir",
            "/tmp/x",
        ],
        1,
        "/dev/sev",
    );
    fails(
        &["platform", "status", "--sev-backend", "tpm"],
        2,
        "--sev-backend",
    );
}

// ---------------------------------------------------------------- owner session

#[test]
fn owner_session_writes_sevctl_named_files_that_launch_on_the_psp() {
    let e = Env::new();
    let dir = e.session("0x3");
    for (name, len, mode) in [
        ("vm_tek.bin", 16, 0o600),
        ("vm_tik.bin", 16, 0o600),
        ("vm_godh.b64", 0, 0o644),
        ("vm_session.b64", 0, 0o644),
    ] {
        let meta = std::fs::metadata(dir.join(name)).unwrap();
        if len > 0 {
            assert_eq!(meta.len(), len, "{name}");
        }
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name}");
    }
    let s = read_session(&dir, "vm");
    assert_eq!(s.godh_cert.len(), CERT_SIZE);
    assert_eq!(s.session.len(), 128);
    SevCert::parse_as(&s.godh_cert, Usage::PDH).unwrap();
    let psp = e.psp();
    let l = launch(&psp, 3, &s, firmware_image::IMAGE);
    // The TIK on disk is the one the PSP unwrapped.
    let tik: [u8; 16] = std::fs::read(dir.join("vm_tik.bin"))
        .unwrap()
        .try_into()
        .unwrap();
    owner::verify(
        owner::Measured::Firmware(firmware_image::IMAGE),
        psp.firmware_version(),
        Policy(3),
        &tik,
        &l.b64(),
    )
    .unwrap();

    // The chain file works as --pdh too, and --name sets the prefix.
    ok(&[
        "owner",
        "session",
        "--pdh",
        &e.p("export/cert_chain.cert"),
        "--policy",
        "3",
        "--out",
        &e.p("named"),
        "--name",
        "guest7",
    ]);
    read_session(&e.path("named"), "guest7");
}

// ---------------------------------------------------------------- owner verify

#[test]
fn owner_verify_accepts_the_psp_measurement_and_rejects_any_other_launch() {
    let e = Env::new();
    let dir = e.session("1");
    let psp = e.psp();
    let l = launch(&psp, 1, &read_session(&dir, "vm"), firmware_image::IMAGE);
    let m = l.b64();
    let tik = e.p("session/vm_tik.bin");
    let fw = e.p("fw.bin");
    ok(&["firmware", "--out", &fw]);
    let digest = ok(&["measure", "--firmware", &fw]).trim().to_string();
    let base = ["owner", "verify", "--tik", &tik, "--measurement", &m];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    // The embedded firmware alone (the launch above booted no kernel), a file, a digest;
    // explicit platform version.
    for extra in [
        &["--policy", "1", "--no-kernel"][..],
        &["--policy", "0x1", "--firmware", &fw],
        &["--policy", "1", "--digest", &digest],
        &[
            "--policy",
            "1",
            "--no-kernel",
            "--api-major",
            "0",
            "--api-minor",
            "24",
            "--build",
            "1",
        ],
    ] {
        let out = ok(&strs(&with(extra)));
        assert!(out.starts_with("measurement OK"), "{out}");
        assert!(out.contains(&digest), "{out}");
    }
    // Everything else is a mismatch: exit 1, one line.
    let other_fw = e.write("other.bin", &{
        let mut v = firmware_image::IMAGE.to_vec();
        v[100] ^= 1;
        v
    });
    let mut other_m = l.measurement.0;
    other_m[0] ^= 1;
    let other_m = owner::encode_base64(&other_m);
    let other_tik = e.write("other_tik.bin", &[0x55; 16]);
    let cases: Vec<Vec<String>> = vec![
        // By default the owner expects the embedded guest OS too, as `run` boots it.
        with(&["--policy", "1"]),
        with(&["--policy", "0", "--no-kernel"]),
        with(&["--policy", "1", "--firmware", &other_fw]),
        with(&["--policy", "1", "--digest", &"00".repeat(32)]),
        with(&["--policy", "1", "--no-kernel", "--build", "2"]),
        with(&["--policy", "1", "--no-kernel", "--api-minor", "23"]),
        [
            "owner",
            "verify",
            "--tik",
            &tik,
            "--policy",
            "1",
            "--no-kernel",
            "--measurement",
            &other_m,
        ]
        .map(String::from)
        .to_vec(),
        [
            "owner",
            "verify",
            "--tik",
            &other_tik,
            "--policy",
            "1",
            "--no-kernel",
            "--measurement",
            &m,
        ]
        .map(String::from)
        .to_vec(),
    ];
    for args in cases {
        let err = fails(&strs(&args), 1, "measurement MISMATCH");
        assert!(err.contains("do not send secrets"), "{err}");
    }
}

// ---------------------------------------------------------------- owner secret

#[test]
fn owner_secret_packets_open_on_the_psp_and_carry_the_table() {
    let e = Env::new();
    let dir = e.session("0");
    let psp = e.psp();
    let l = launch(&psp, 0, &read_session(&dir, "vm"), firmware_image::IMAGE);
    let m = l.b64();
    let disk = e.write("disk.key", b"the disk key of this guest");
    let mig = e.p("migration.bin");
    ok(&["owner", "migration-secret", "--out", &mig]);
    let mig_bytes = std::fs::read(&mig).unwrap();
    let (tek, tik) = (e.p("session/vm_tek.bin"), e.p("session/vm_tik.bin"));
    let (hdr, payload) = (e.p("hdr.bin"), e.p("payload.bin"));
    let out = ok(&[
        "owner",
        "secret",
        "--tek",
        &tek,
        "--tik",
        &tik,
        "--measurement",
        &m,
        "--secret",
        &format!("{DISK_GUID}:{disk}"),
        "--migration-secret",
        &mig,
        "--header-out",
        &hdr,
        "--secret-out",
        &payload,
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let header = owner::decode_base64("h", json["packet-header"].as_str().unwrap()).unwrap();
    let secret = owner::decode_base64("s", json["secret"].as_str().unwrap()).unwrap();
    assert_eq!(header, std::fs::read(&hdr).unwrap());
    assert_eq!(secret, std::fs::read(&payload).unwrap());
    assert_eq!(header.len(), 52);
    assert_eq!(secret.len() % 16, 0);

    // A tampered packet is refused (BAD_MEASUREMENT) and changes nothing.
    let mut bad = secret.clone();
    bad[0] ^= 1;
    let err = l.inject(&psp, &header, &bad).unwrap_err();
    assert!(err.to_string().contains("BAD_MEASUREMENT"), "{err}");

    let entries = l.inject(&psp, &header, &secret).unwrap();
    assert_eq!(
        entries,
        vec![
            (
                DISK_GUID.to_string(),
                b"the disk key of this guest".to_vec()
            ),
            (MIGRATION_GUID.to_string(), mig_bytes),
        ]
    );

    // Without files the JSON is the default output; a packet for another measurement
    // does not open.
    let mut other = l.measurement.0;
    other[5] ^= 1;
    let other = owner::encode_base64(&other);
    let out = ok(&[
        "owner",
        "secret",
        "--tek",
        &tek,
        "--tik",
        &tik,
        "--measurement",
        &other,
        "--secret",
        &format!("{DISK_GUID}:{disk}"),
    ]);
    let json: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let h = owner::decode_base64("h", json["packet-header"].as_str().unwrap()).unwrap();
    let s = owner::decode_base64("s", json["secret"].as_str().unwrap()).unwrap();
    let err = l.inject(&psp, &h, &s).unwrap_err();
    assert!(err.to_string().contains("BAD_MEASUREMENT"), "{err}");
}

#[test]
fn owner_migration_secret_is_32_fresh_private_bytes_and_never_replaced() {
    let e = Env::new();
    let (a, b) = (e.p("a.bin"), e.p("b.bin"));
    ok(&["owner", "migration-secret", "--out", &a]);
    ok(&["owner", "migration-secret", "--out", &b]);
    let (x, y) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!((x.len(), y.len()), (32, 32));
    assert_ne!(x, y);
    let mode = std::fs::metadata(&a).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    fails(
        &["owner", "migration-secret", "--out", &a],
        1,
        "never replaced",
    );
    assert_eq!(std::fs::read(&a).unwrap(), x);
}

// ---------------------------------------------------------------- measure

#[test]
fn measure_of_our_firmware_is_the_sha256_of_the_image() {
    let e = Env::new();
    let fw = e.p("fw.bin");
    ok(&["firmware", "--out", &fw]);
    let want = hex(&Sha256::digest(std::fs::read(&fw).unwrap()));
    assert_eq!(ok(&["measure", "--firmware", &fw]).trim(), want);
    assert_eq!(
        ok(&["measure", "--firmware", &fw, "--mode", "sev"]).trim(),
        want
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["measure", "--firmware", &fw, "--json"])).unwrap();
    assert_eq!(json["launch-digest"], want);
    assert_eq!(json["mode"], "sev");
    assert_eq!(json["size"], firmware_image::IMAGE.len());
    let b64 = owner::decode_base64("d", json["launch-digest-base64"].as_str().unwrap()).unwrap();
    assert_eq!(hex(&b64), want);
    // What the PSP measures for a launch of that image.
    let psp = EmulatedPsp::new(sev_platform::PlatformIdentity::generate().unwrap());
    let s = owner::session(&psp.export_certs().unwrap().pdh, Policy(0)).unwrap();
    let l = launch(&psp, 0, &s.launch_session(), firmware_image::IMAGE);
    let digest: [u8; 32] = b64.try_into().unwrap();
    owner::verify(
        owner::Measured::Digest(digest),
        psp.firmware_version(),
        Policy(0),
        s.keys.tik(),
        &l.b64(),
    )
    .unwrap();
    println!("measure: embedded firmware {want}");
}

#[test]
fn measure_of_debians_ovmf_is_a_digest() {
    let path = "/usr/share/ovmf/OVMF.fd";
    if !Path::new(path).exists() {
        eprintln!("SKIPPED: {path} not installed (apt-get install ovmf); OVMF digest not checked");
        return;
    }
    let out = ok(&["measure", "--firmware", path]);
    let digest = out.trim();
    assert_eq!(digest.len(), 64, "{out}");
    assert!(digest.bytes().all(|c| c.is_ascii_hexdigit()), "{out}");
    assert_eq!(digest, hex(&Sha256::digest(std::fs::read(path).unwrap())));
    println!("measure: {path} {digest}");
}

// ---------------------------------------------------------------- bad input

#[test]
fn bad_inputs_are_one_clear_line_and_a_nonzero_exit() {
    let e = Env::new();
    e.session("1");
    let (tek, tik) = (e.p("session/vm_tek.bin"), e.p("session/vm_tik.bin"));
    let (_, chain) = e.export("export");
    let pek = e.write("pek.cert", &chain[CERT_SIZE..2 * CERT_SIZE]);
    let short = e.write("short.bin", &[1; 15]);
    let small = e.write("small.cert", &[0; 100]);
    let empty = e.write("empty.bin", b"");
    let mig31 = e.write("mig31.bin", &[7; 31]);
    let data = e.write("data.bin", b"x");
    let missing = e.p("missing");
    let m = owner::encode_base64(&[0u8; 48]);
    let m47 = owner::encode_base64(&[0u8; 47]);
    let out = e.p("out");
    let dup = format!("{DISK_GUID}:{data}");
    let secret = |extra: &[&str]| -> Vec<String> {
        [
            "owner",
            "secret",
            "--tek",
            &tek,
            "--tik",
            &tik,
            "--measurement",
            &m,
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let s = |v: &[&str]| -> Vec<String> { v.iter().map(|s| s.to_string()).collect() };
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        // session
        (
            s(&[
                "owner", "session", "--pdh", &missing, "--policy", "1", "--out", &out,
            ]),
            1,
            "cannot read PDH certificate",
        ),
        (
            s(&[
                "owner", "session", "--pdh", &small, "--policy", "1", "--out", &out,
            ]),
            1,
            "100 bytes",
        ),
        (
            s(&[
                "owner", "session", "--pdh", &pek, "--policy", "1", "--out", &out,
            ]),
            1,
            "PDH certificate is unusable",
        ),
        (
            s(&[
                "owner", "session", "--pdh", &pek, "--policy", "0x40", "--out", &out,
            ]),
            1,
            "reserved bits",
        ),
        (
            s(&[
                "owner", "session", "--pdh", &pek, "--policy", "lots", "--out", &out,
            ]),
            2,
            "--policy",
        ),
        (
            s(&[
                "owner", "session", "--pdh", &pek, "--policy", "1", "--out", &out, "--name", "a/b",
            ]),
            1,
            "--name",
        ),
        // verify
        (
            s(&[
                "owner",
                "verify",
                "--tik",
                &missing,
                "--policy",
                "1",
                "--measurement",
                &m,
            ]),
            1,
            "cannot read TIK file",
        ),
        (
            s(&[
                "owner",
                "verify",
                "--tik",
                &short,
                "--policy",
                "1",
                "--measurement",
                &m,
            ]),
            1,
            "15 bytes, expected 16",
        ),
        (
            s(&[
                "owner",
                "verify",
                "--tik",
                &tik,
                "--policy",
                "1",
                "--measurement",
                "!!!!",
            ]),
            1,
            "not valid base64",
        ),
        (
            s(&[
                "owner",
                "verify",
                "--tik",
                &tik,
                "--policy",
                "1",
                "--measurement",
                &m47,
            ]),
            1,
            "47 bytes, expected 48",
        ),
        (
            s(&[
                "owner",
                "verify",
                "--tik",
                &tik,
                "--policy",
                "1",
                "--measurement",
                &m,
                "--digest",
                "xyz",
            ]),
            2,
            "64 hex digits",
        ),
        (
            s(&[
                "owner",
                "verify",
                "--tik",
                &tik,
                "--policy",
                "1",
                "--measurement",
                &m,
                "--firmware",
                &missing,
            ]),
            1,
            "cannot read firmware",
        ),
        (
            s(&[
                "owner",
                "verify",
                "--tik",
                &tik,
                "--policy",
                "1",
                "--measurement",
                &m,
                "--firmware",
                &data,
                "--digest",
                &"0".repeat(64),
            ]),
            2,
            "--digest",
        ),
        (
            s(&[
                "owner",
                "verify",
                "--tik",
                &tik,
                "--policy",
                "1",
                "--measurement",
                &m,
                "--api-major",
                "300",
            ]),
            2,
            "--api-major",
        ),
        // secret
        (secret(&["--secret", "not-a-guid:/x"]), 2, "not a GUID"),
        (secret(&["--secret", "no-colon"]), 2, "GUID:FILE"),
        (
            secret(&["--secret", &format!("{DISK_GUID}:{missing}")]),
            1,
            "cannot read secret",
        ),
        (
            secret(&["--migration-secret", &mig31]),
            1,
            "31 bytes, expected 32",
        ),
        (
            secret(&["--secret", &format!("{MIGRATION_GUID}:{data}")]),
            1,
            "expected 32",
        ),
        (
            secret(&["--secret", &dup, "--secret", &dup]),
            1,
            "given twice",
        ),
        (secret(&[]), 2, "--secret"),
        (
            secret(&["--secret", &dup, "--header-out", &out]),
            2,
            "--secret-out",
        ),
        (
            s(&[
                "owner",
                "secret",
                "--tek",
                &short,
                "--tik",
                &tik,
                "--measurement",
                &m,
                "--secret",
                &dup,
            ]),
            1,
            "TEK file",
        ),
        (
            s(&[
                "owner",
                "secret",
                "--tek",
                &tek,
                "--tik",
                &tik,
                "--measurement",
                "@@",
                "--secret",
                &dup,
            ]),
            1,
            "not valid base64",
        ),
        // measure
        (
            s(&["measure", "--firmware", &missing]),
            1,
            "cannot read firmware",
        ),
        (s(&["measure", "--firmware", &empty]), 1, "is empty"),
        (
            s(&["measure", "--firmware", &data, "--mode", "sev-es"]),
            2,
            "needs --vcpus",
        ),
        (
            s(&["measure", "--firmware", &data, "--vcpus", "2"]),
            2,
            "only for an SEV-ES launch",
        ),
        (
            s(&[
                "measure",
                "--firmware",
                &data,
                "--mode",
                "sev-es",
                "--vcpus",
                "2",
                "--vcpu-type",
                "Skylake",
            ]),
            2,
            "unknown vCPU type",
        ),
        (
            s(&[
                "measure",
                "--firmware",
                &data,
                "--mode",
                "sev-es",
                "--vcpus",
                "2",
                "--vcpu-type",
                "EPYC",
            ]),
            1,
            "cannot compute the SEV-ES VMSAs",
        ),
        (
            s(&["measure", "--firmware", &data, "--mode", "snp"]),
            2,
            "not supported",
        ),
        // platform
        (
            e.platform("export", &["--dir", &format!("{data}/sub")]),
            1,
            "cannot create directory",
        ),
    ];
    for (args, code, needle) in cases {
        fails(&strs(&args), code, needle);
    }
    assert!(!e.path("out").exists(), "nothing was written on failure");
}

// ---------------------------------------------------------------- the round trip (KVM)

fn kvm_and_sev_run() -> bool {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: /dev/kvm is missing; the owner round trip through `run` did not run");
        return false;
    }
    let help = ok(&["run", "--help"]);
    if !help.contains("--session-file") || !help.contains("--paused") {
        eprintln!("SKIPPED: `sevmirror run` has no --session-file/--paused yet; the owner round trip did not run");
        return false;
    }
    true
}

/// How the harness starts `sevmirror run` here: driven by `sevmirror ctl`, killed when the
/// test ends (or panics).
fn spawner(dir: &Path) -> Spawn {
    Spawn {
        exe: env!("CARGO_BIN_EXE_sevmirror").into(),
        dir: dir.to_path_buf(),
        env: Vec::new(),
        channel: Channel::Ctl,
        on_drop: OnDrop::Kill,
    }
}

fn ctl(vmm: &mut VmmProcess, cmd: &str, args: Option<&str>) -> serde_json::Value {
    let args = args.map(|a| serde_json::from_str(a).unwrap());
    vmm.execute(cmd, args).unwrap_or_else(|e| panic!("{e}"))
}

/// The whole owner round trip with sevmirror's own tools: export PDH → owner session →
/// `run --sev --paused` with those files → query-sev-launch-measure → owner verify →
/// owner secret → sev-inject-launch-secret → cont → the guest prints each secret's
/// SHA-256.
#[test]
fn kvm_owner_round_trip_through_run_and_the_control_socket() {
    if !kvm_and_sev_run() {
        return;
    }
    let e = Env::new();
    e.session("0x1");
    let mut vmm = VmmProcess::spawn(
        &spawner(&e.path("")),
        "vm",
        &[
            "--mem",
            "128M",
            "--workload",
            "idle",
            "--sev",
            "--sev-backend",
            "emulated",
            "--platform-dir",
            &e.p("platform"),
            "--policy",
            "0x1",
            "--dh-cert-file",
            &e.p("session/vm_godh.b64"),
            "--session-file",
            &e.p("session/vm_session.b64"),
            "--paused",
        ],
        Duration::from_secs(30),
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let sev = ctl(&mut vmm, "query-sev", None);
    assert_eq!(sev["state"], "launch-secret", "{sev}");
    let m = ctl(&mut vmm, "query-sev-launch-measure", None)["data"]
        .as_str()
        .unwrap()
        .to_string();
    let num = |k: &str| sev[k].as_u64().unwrap().to_string();
    let out = ok(&[
        "owner",
        "verify",
        "--tik",
        &e.p("session/vm_tik.bin"),
        "--policy",
        "0x1",
        "--measurement",
        &m,
        "--api-major",
        &num("api-major"),
        "--api-minor",
        &num("api-minor"),
        "--build",
        &num("build-id"),
    ]);
    assert!(out.starts_with("measurement OK"), "{out}");
    let key = b"owner's disk key, 32 bytes long!";
    let disk = e.write("disk.key", key);
    let mig = e.p("migration.bin");
    ok(&["owner", "migration-secret", "--out", &mig]);
    let packet = ok(&[
        "owner",
        "secret",
        "--tek",
        &e.p("session/vm_tek.bin"),
        "--tik",
        &e.p("session/vm_tik.bin"),
        "--measurement",
        &m,
        "--secret",
        &format!("{DISK_GUID}:{disk}"),
        "--migration-secret",
        &mig,
        "--json",
    ]);
    ctl(&mut vmm, "sev-inject-launch-secret", Some(packet.trim()));
    ctl(&mut vmm, "cont", None);
    let want = [
        (DISK_GUID.to_string(), hex(&Sha256::digest(key))),
        (
            MIGRATION_GUID.to_string(),
            hex(&Sha256::digest(std::fs::read(&mig).unwrap())),
        ),
    ];
    harness::wait_for(Duration::from_secs(30), || {
        let log = vmm.console();
        want.iter()
            .all(|(guid, sha)| {
                BufReader::new(log.as_bytes())
                    .lines()
                    .map_while(Result::ok)
                    .any(|l| l.contains(&format!("sev: secret {guid}")) && l.contains(sha))
            })
            .then_some(())
    })
    .expect("timed out waiting for the guest's secret lines");
    let log = vmm.console();
    for line in log.lines().filter(|l| l.contains("sev: secret")) {
        println!("guest: {line}");
    }
    let sev = ctl(&mut vmm, "query-sev", None);
    assert_eq!(sev["state"], "running", "{sev}");
    ctl(&mut vmm, "quit", None);
    let status = vmm.wait_exit(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn owner_abort_writes_the_break_glass_token_for_one_committed_session() {
    use migration::recovery::{hex, AbortTokenFile, CommitFile, TokenOrigin};
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    ok(&["owner", "migration-secret", "--out", &p("mig.bin")]);
    let secret: [u8; 32] = std::fs::read(p("mig.bin")).unwrap().try_into().unwrap();
    let session: [u8; 32] = core::array::from_fn(|i| i as u8 ^ 0x5a);
    let commit = CommitFile {
        transcript: session,
        record: [0xc0; helper_abi::record::COMMIT_RECORD_SIZE],
    };
    std::fs::write(p("commit.bin"), commit.encode()).unwrap();
    // The owner must state the decision; without it nothing is written.
    fails(
        &[
            "owner",
            "abort",
            "--migration-secret",
            &p("mig.bin"),
            "--commit-file",
            &p("commit.bin"),
            "--out",
            &p("a.bin"),
        ],
        2,
        "--target-never-ran",
    );
    assert!(!dir.path().join("a.bin").exists());
    let want = mirror_helper::keys::owner_abort_token(&secret, &session);
    for (how, value) in [
        ("--commit-file", p("commit.bin")),
        ("--session", hex(&session)),
    ] {
        ok(&[
            "owner",
            "abort",
            "--migration-secret",
            &p("mig.bin"),
            how,
            &value,
            "--target-never-ran",
            "--out",
            &p("a.bin"),
        ]);
        let token = AbortTokenFile::decode(&std::fs::read(p("a.bin")).unwrap()).unwrap();
        assert_eq!(token.origin, TokenOrigin::Owner);
        assert_eq!(token.transcript, session);
        assert_eq!(token.tag, want, "{how}");
    }
    fails(
        &[
            "owner",
            "abort",
            "--migration-secret",
            &p("mig.bin"),
            "--session",
            "abcd",
            "--target-never-ran",
            "--out",
            &p("b.bin"),
        ],
        2,
        "64 hex digits",
    );
    std::fs::write(p("not-a-commit.bin"), b"garbage").unwrap();
    fails(
        &[
            "owner",
            "abort",
            "--migration-secret",
            &p("mig.bin"),
            "--commit-file",
            &p("not-a-commit.bin"),
            "--target-never-ran",
            "--out",
            &p("b.bin"),
        ],
        1,
        "is not a commit file",
    );
}
