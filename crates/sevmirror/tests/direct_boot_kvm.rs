//! `sevmirror run --kernel/--initrd/--append` end to end, as a host and a guest owner run
//! it: the launch of `run --sev --paused --kernel …` measures exactly what `measure
//! --kernel …` computes (and sev-snp-measure, where installed), `owner verify` with the
//! same options says OK and without them says MISMATCH, and once started the firmware
//! checks what fw_cfg delivered against the measured table and loads it (it stops at the
//! hand-off here: Linux cannot run on these machines). SEV and SEV-ES. The kernel is
//! Debian's bzImage when `.ci/run` fetched it, else a synthetic one. Prints SKIPPED
//! without /dev/kvm.

mod support;

use harness::process::{Channel, OnDrop, Spawn, VmmProcess};
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};
use tempfile::TempDir;

const PATIENCE: Duration = Duration::from_secs(60);
const APPEND: &str = "console=ttyS0 root=/dev/vda1 ro";

fn kvm_present(test: &str) -> bool {
    if Path::new("/dev/kvm").exists() {
        return true;
    }
    eprintln!("SKIPPED: /dev/kvm is missing; the KVM test {test} did not run");
    false
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Debian's vmlinuz (`$SEVMIRROR_TEST_BZIMAGE` or `.ci/run`'s copy), else a synthetic
/// bzImage with the header the firmware checks.
fn kernel_bytes() -> Vec<u8> {
    let path = std::env::var_os("SEVMIRROR_TEST_BZIMAGE")
        .map(PathBuf::from)
        .or_else(|| {
            let dir =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ci/debian-kernel/boot");
            let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().contains("vmlinuz-"))
                .collect();
            found.sort();
            found.pop()
        });
    if let Some(bytes) = path.and_then(|p| std::fs::read(p).ok()) {
        return bytes;
    }
    eprintln!("NOTE: no Debian kernel image; testing with a synthetic bzImage");
    let mut f: Vec<u8> = (0..3 * 512 + 0x1_0000).map(|i| (i % 251) as u8).collect();
    f[0x1f1..0x26c].fill(0);
    f[0x1f1] = 2;
    f[0x1f4..0x1f8].copy_from_slice(&(0x1_0000u32 / 16).to_le_bytes());
    f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
    f[0x200..0x202].copy_from_slice(&0x6aebu16.to_le_bytes());
    f[0x202..0x206].copy_from_slice(b"HdrS");
    f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    f[0x211] = 1;
    f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
    f[0x230..0x234].copy_from_slice(&0x20_0000u32.to_le_bytes());
    f[0x234] = 1;
    f[0x236..0x238].copy_from_slice(&0x7fu16.to_le_bytes());
    f[0x238..0x23c].copy_from_slice(&0x7ffu32.to_le_bytes());
    f[0x258..0x260].copy_from_slice(&0x100_0000u64.to_le_bytes());
    f[0x260..0x264].copy_from_slice(&0x40_0000u32.to_le_bytes());
    f
}

struct Lab {
    dir: TempDir,
}

impl Lab {
    fn new() -> Lab {
        let lab = Lab {
            dir: tempfile::Builder::new()
                .prefix("sevmirror-direct-boot-")
                .tempdir()
                .unwrap(),
        };
        lab.ok(&[
            "platform",
            "export",
            "--sev-backend",
            "emulated",
            "--dir",
            &lab.p("certs"),
        ]);
        lab.ok(&["firmware", "--out", &lab.p("fw.bin")]);
        std::fs::write(lab.path("vmlinuz"), kernel_bytes()).unwrap();
        let initrd: Vec<u8> = (0..2_000_000u32).map(|i| (i % 239) as u8).collect();
        std::fs::write(lab.path("initrd.img"), initrd).unwrap();
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

    fn ok(&self, args: &[&str]) -> String {
        let o = self.sevmirror(args);
        assert!(
            o.status.success(),
            "sevmirror {args:?}: {}\n{}",
            o.status,
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// The kernel, initrd and command line options.
    fn kernel_args(&self) -> Vec<String> {
        vec![
            "--kernel".into(),
            self.p("vmlinuz"),
            "--initrd".into(),
            self.p("initrd.img"),
            "--append".into(),
            APPEND.into(),
        ]
    }

    /// `owner verify` of `measurement`; whether it said OK (anything but OK or MISMATCH
    /// fails the test).
    fn verify(&self, owner: &str, policy: &str, measurement: &str, extra: &[String]) -> bool {
        let tik = format!("{owner}/vm_tik.bin");
        let mut args: Vec<String> = [
            "owner",
            "verify",
            "--tik",
            &tik,
            "--policy",
            policy,
            "--measurement",
            measurement,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend_from_slice(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = self.sevmirror(&args);
        match o.status.code() {
            Some(0) => {
                assert!(text(&o.stdout).contains("measurement OK"));
                true
            }
            Some(1) => {
                assert!(text(&o.stderr).contains("MISMATCH"), "{}", text(&o.stderr));
                false
            }
            _ => panic!("owner verify: {}: {}", o.status, text(&o.stderr)),
        }
    }
}

/// `run --sev --policy P --paused --kernel …` (with `es` the SEV-ES options): the
/// measurement `query-sev-launch-measure` reports is what `measure --kernel …` computes,
/// and the owner's check says so; then the guest boots the kernel to its hand-off.
fn launch_with_a_kernel(policy: &str, es: &[&str]) {
    let lab = Lab::new();
    let owner = lab.p("owner");
    lab.ok(&[
        "owner",
        "session",
        "--policy",
        policy,
        "--pdh",
        &lab.p("certs/pdh.cert"),
        "--out",
        &owner,
    ]);
    let kernel = lab.kernel_args();
    let mode = if es.is_empty() { "sev" } else { "sev-es" };

    // What the owner computes from the firmware and the kernel she expects.
    let fw = lab.p("fw.bin");
    let mut args = vec!["measure", "--firmware", &fw, "--mode", mode];
    args.extend(es.iter().copied());
    args.extend(kernel.iter().map(String::as_str));
    let digest = lab.ok(&args).trim().to_string();
    assert_eq!(digest.len(), 64, "{digest}");
    if let Some(tool) = support::sev_snp_measure() {
        let snp_mode = if es.is_empty() { "sev" } else { "seves" };
        let mut cmd = Command::new(tool);
        cmd.args(["--mode", snp_mode, "--ovmf", &fw]);
        cmd.args(es);
        cmd.args(&kernel);
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "sev-snp-measure: {}", text(&o.stderr));
        assert_eq!(digest, text(&o.stdout).trim(), "measure vs sev-snp-measure");
        eprintln!("{mode}: measure --kernel … = sev-snp-measure = {digest}");
    }

    // The host launches it, paused after LAUNCH_MEASURE.
    let spawn = Spawn {
        exe: env!("CARGO_BIN_EXE_sevmirror").into(),
        dir: lab.dir.path().to_path_buf(),
        env: lab.env(),
        channel: Channel::Ctl,
        on_drop: OnDrop::Kill,
    };
    let godh = format!("{owner}/vm_godh.b64");
    let session = format!("{owner}/vm_session.b64");
    let mut run: Vec<String> = [
        "--sev",
        "--sev-backend",
        "emulated",
        "--policy",
        policy,
        "--dh-cert-file",
        &godh,
        "--session-file",
        &session,
        "--paused",
        "--fw-cfg",
        "name=opt/sevmirror/stop-at-handoff,string=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    run.extend(es.iter().map(|s| s.to_string()));
    run.extend(kernel.iter().cloned());
    let mut vm = VmmProcess::start(&spawn, "vm", &run).unwrap();
    vm.wait_api(PATIENCE).unwrap();
    let measurement = vm.measurement().unwrap();

    // The owner's check: with the kernel options (or the digest measure printed) OK,
    // without them a mismatch.
    let mut with_kernel: Vec<String> = es.iter().map(|s| s.to_string()).collect();
    with_kernel.extend(kernel.iter().cloned());
    assert!(lab.verify(&owner, policy, &measurement, &with_kernel));
    assert!(lab.verify(
        &owner,
        policy,
        &measurement,
        &["--digest".to_string(), digest]
    ));
    let without: Vec<String> = es.iter().map(|s| s.to_string()).collect();
    assert!(!lab.verify(&owner, policy, &measurement, &without));
    let mut other_cmdline = with_kernel.clone();
    *other_cmdline.last_mut().unwrap() = "console=ttyS0 init=/bin/sh".into();
    assert!(!lab.verify(&owner, policy, &measurement, &other_cmdline));

    // Started, the firmware finds kernel, initrd and command line as measured.
    vm.execute("cont", None).unwrap();
    let status = vm.wait_exit(PATIENCE).unwrap();
    let console = vm.console();
    assert_eq!(status.code(), Some(7), "{console}\n{}", vm.stderr_text());
    assert!(
        console.contains("SEV: kernel, initrd and command line match the measured hashes table"),
        "{console}"
    );
    assert!(
        console.contains("firmware: loaded bzImage kernel"),
        "{console}"
    );
    assert!(console.contains("stop-at-handoff"), "{console}");
}

#[test]
fn kvm_run_sev_with_a_kernel_measures_what_measure_computes_and_boots_it() {
    if !kvm_present("kvm_run_sev_with_a_kernel_measures_what_measure_computes_and_boots_it") {
        return;
    }
    launch_with_a_kernel("0x1", &[]);
}

#[test]
fn kvm_run_sev_es_with_a_kernel_measures_what_measure_computes_and_boots_it() {
    if !kvm_present("kvm_run_sev_es_with_a_kernel_measures_what_measure_computes_and_boots_it") {
        return;
    }
    launch_with_a_kernel("0x5", &["--vcpus", "1", "--vcpu-type", "EPYC-v4"]);
}

#[test]
fn kvm_run_with_a_kernel_and_a_firmware_without_a_hashes_table_is_refused() {
    if !kvm_present("kvm_run_with_a_kernel_and_a_firmware_without_a_hashes_table_is_refused") {
        return;
    }
    let lab = Lab::new();
    // Our firmware with its hashes-table entry emptied, as Debian's OVMF.fd has it.
    let mut image = std::fs::read(lab.path("fw.bin")).unwrap();
    let table = fwtable::Table::parse(&image).unwrap();
    let entry = table.find(fwtable::guid::SEV_HASH_TABLE).unwrap().unwrap();
    let at = entry.data.as_ptr() as usize - image.as_ptr() as usize;
    let len = entry.data.len();
    image[at..at + len].fill(0);
    std::fs::write(lab.path("nohash.bin"), &image).unwrap();
    let nohash = lab.p("nohash.bin");
    let mut args = vec![
        "run",
        "--sev",
        "--sev-backend",
        "emulated",
        "--firmware",
        &nohash,
        "--serial",
        "none",
    ];
    let kernel = lab.kernel_args();
    args.extend(kernel.iter().map(String::as_str));
    let o = lab.sevmirror(&args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no SEV hashes table area"), "{err}");
}
