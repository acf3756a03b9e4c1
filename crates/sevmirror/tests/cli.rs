//! The `sevmirror` command as a user runs it: exit codes, output, and one clear error line
//! for bad input.

use std::process::{Command, Output};

fn sevmirror(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sevmirror"))
        .args(args)
        .output()
        .expect("run sevmirror")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn have_kvm() -> bool {
    let ok = std::path::Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("SKIPPED: /dev/kvm is missing; this KVM test did not run");
    }
    ok
}

fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sevmirror-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn kvm_run_prints_the_selftest_summary_and_exits_0() {
    if !have_kvm() {
        return;
    }
    let o = sevmirror(&["run", "--mem", "128M", "--vcpus", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("selftest: PASS"), "{}", stdout(&o));
}

#[test]
fn kvm_run_boots_the_embedded_guest_os_unless_told_no_kernel() {
    if !have_kvm() {
        return;
    }
    // By default the firmware loads the embedded OS, which runs the workload on every vCPU
    // within the memory map it was given (its own image carved out of it).
    let o = sevmirror(&["run", "--mem", "128M", "--vcpus", "2"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    let usable = |prefix: &str, marker: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("{out}"));
        let before = line.split(marker).next().unwrap();
        before
            .rsplit(' ')
            .find(|w| !w.is_empty())
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        out.contains("firmware: loaded ELF kernel at 0x400000"),
        "{out}"
    );
    assert!(
        out.contains("2 vCPU(s)") && out.contains("selftest: PASS"),
        "{out}"
    );
    let firmware_mib = usable("firmware: 2 vCPU(s)", " MiB usable");
    let os_mib = usable(
        "os: sevmirror guest OS",
        " MiB usable of the firmware's map",
    );
    assert!(os_mib < firmware_mib, "{out}");
    // --no-kernel: the firmware runs the workload itself.
    let o = sevmirror(&["run", "--mem", "128M", "--no-kernel"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("firmware: no kernel: running workload selftest"),
        "{out}"
    );
    assert!(
        out.contains("selftest: PASS") && !out.contains("os: "),
        "{out}"
    );
}

#[test]
fn kvm_the_guest_os_serves_its_vcs_through_its_own_ghcb_under_sev_es() {
    if !have_kvm() {
        return;
    }
    let platform = tmp("os-es-platform");
    let base = [
        "run",
        "--mem",
        "128M",
        "--sev",
        "--sev-backend",
        "emulated",
        "--platform-dir",
        platform.to_str().unwrap(),
        "--policy",
        "0x5",
        "--workload",
    ];
    // The OS's #VC handler and GHCB client, driven against the VMM (synthetic frames and
    // #VCs raised through its own vector-29 stub).
    let o = sevmirror(&[&base[..], &["vctest"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("os: sevmirror guest OS") && out.contains(", SEV-ES"),
        "{out}"
    );
    assert!(out.lines().any(|l| l.starts_with("vctest: PASS")), "{out}");
    assert!(out.contains("vctest: raised!"), "{out}");
    // A plain port access from the OS is stopped by the VMM's strict mode, naming it.
    let o = sevmirror(&[&base[..], &["bypass-pio"]].concat());
    assert_ne!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("os: sevmirror guest OS"),
        "{}",
        stdout(&o)
    );
    assert!(
        stderr(&o).contains("port I/O write of 1 bytes to 0x80"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn kvm_serial_to_a_file_collects_both_consoles() {
    if !have_kvm() {
        return;
    }
    let path = tmp("serial.log");
    let o = sevmirror(&["run", "--mem", "64M", "--serial", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let log = std::fs::read_to_string(&path).unwrap();
    // The reset banner comes from CPL0 through the 16550, the rest through the services
    // page; both land in the same file in order.
    let banner = log
        .find("sevmirror firmware: reset")
        .expect("serial banner");
    let summary = log.find("selftest: PASS").expect("summary");
    assert!(banner < summary, "{log}");
    assert!(stdout(&o).is_empty());
}

#[test]
fn bad_sizes_are_a_usage_error() {
    for bad in ["lots", "12Q", ""] {
        let o = sevmirror(&["run", "--mem", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("--mem"), "{}", stderr(&o));
    }
}

#[test]
fn too_little_memory_is_one_clear_line() {
    if !have_kvm() {
        return;
    }
    let o = sevmirror(&["run", "--mem", "32M"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("at least 64 MiB"), "{err}");
}

#[test]
fn broken_firmware_files_are_refused_with_the_reason() {
    let image = firmware_image_bytes();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty.fd", vec![], "empty"),
        ("short.fd", image[..100].to_vec(), "multiple of 4 KiB"),
        (
            "truncated.fd",
            image[..image.len() - 4096].to_vec(),
            "GUID table",
        ),
        ("huge.fd", vec![0; 32 << 20], "16 MiB"),
    ];
    for (name, bytes, want) in cases {
        let path = tmp(name);
        std::fs::write(&path, bytes).unwrap();
        let o = sevmirror(&["run", "--firmware", path.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        assert!(stderr(&o).contains(want), "{name}: {}", stderr(&o));
    }
    let o = sevmirror(&["run", "--firmware", "/nonexistent/fw.fd"]);
    assert!(
        stderr(&o).contains("cannot read firmware /nonexistent/fw.fd"),
        "{}",
        stderr(&o)
    );
}

fn firmware_image_bytes() -> Vec<u8> {
    let path = tmp("embedded.fd");
    let o = sevmirror(&["firmware", "--out", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    std::fs::read(path).unwrap()
}

#[test]
fn inspect_decodes_our_firmware_as_json() {
    let path = tmp("ours.fd");
    std::fs::write(&path, firmware_image_bytes()).unwrap();
    let o = sevmirror(&["inspect", path.to_str().unwrap(), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let entries = v["entries"].as_array().unwrap();
    let find = |kind: &str| {
        entries
            .iter()
            .find(|e| e["decoded"]["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {v}"))
    };
    assert_eq!(find("sev_secret_block")["decoded"]["base"], 0x80_0000);
    assert_eq!(
        find("services_descriptor")["decoded"]["services_gpa"],
        0xfe00_0000u64
    );
    assert!(
        find("sev_metadata")["decoded"]["sections"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );
    assert_eq!(
        find("sev_es_reset_block")["decoded"]["cs_base"],
        0xffff_0000u64
    );
}

#[test]
fn inspect_decodes_debians_ovmf() {
    let path = "/usr/share/ovmf/OVMF.fd";
    if !std::path::Path::new(path).exists() {
        eprintln!("SKIPPED: {path} not installed (apt-get install ovmf)");
        return;
    }
    let o = sevmirror(&["inspect", path, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let kinds: Vec<_> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["decoded"]["kind"].as_str().unwrap().to_string())
        .collect();
    for want in [
        "sev_es_reset_block",
        "sev_secret_block",
        "sev_hash_table",
        "sev_metadata",
    ] {
        assert!(kinds.iter().any(|k| k == want), "{want} missing: {kinds:?}");
    }
    let text = sevmirror(&["inspect", path]);
    assert!(stdout(&text).contains("SEV-ES reset block"));
}

#[test]
fn inspect_says_clearly_when_there_is_no_table() {
    let path = tmp("zeros.bin");
    std::fs::write(&path, vec![0u8; 8192]).unwrap();
    let o = sevmirror(&["inspect", path.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no OVMF footer GUID table"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn firmware_out_writes_the_embedded_image() {
    let image = firmware_image_bytes();
    assert_eq!(image.len(), 1 << 20);
}

#[test]
fn kvm_run_sev_es_boots_the_selftest_with_and_without_measured_helpers() {
    if !have_kvm() {
        return;
    }
    let platform = tmp("es-platform");
    let platform = platform.to_str().unwrap();
    let base = [
        "run",
        "--mem",
        "128M",
        "--sev",
        "--sev-backend",
        "emulated",
        "--platform-dir",
        platform,
        "--policy",
        "0x5",
    ];
    let o = sevmirror(&[&base[..], &["--vcpus", "2", "--boot-trace"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("SEV active with SEV-ES") && stdout(&o).contains("selftest: PASS"),
        "{}",
        stdout(&o)
    );
    // The boot trace counts the VMGEXITs; under SEV-ES no exit is plain port I/O, and the
    // CPL0 banner on the 16550 is not printed.
    assert!(
        stderr(&o).contains("VMGEXITs (SEV-ES): cpuid"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains(" 0 port I/O,"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("sevmirror firmware: reset"));

    // With helper vCPUs measured at the launch: they start once the firmware's helper is
    // ready, and the guest runs as before.
    let o = sevmirror(&[&base[..], &["--helpers", "2", "-v"]].concat());
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("selftest: PASS"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("measured mirror started: 2 helper vCPU(s)"),
        "{}",
        stderr(&o)
    );
}
