//! `sevmirror demo`, the main job, end to end with a small guest: the same story as
//! `cargo run --release -- demo`.

use serde_json::Value;
use std::process::Command;

#[test]
fn kvm_the_demo_migrates_an_attested_sev_guest_and_the_guest_checks_out() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: /dev/kvm is missing; the demo test did not run");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sevmirror"))
        .args(["demo", "--mem", "128M", "--helpers", "2", "--json"])
        .output()
        .expect("run sevmirror demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(report["verdict"], "pass", "{report:#}\n{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert_eq!(report["mem_bytes"], 128u64 << 20);
    assert_eq!(report["source_state"], "postmigrate");
    assert_eq!(report["target_state"], "running");
    assert!(report["target_verify"]
        .as_str()
        .is_some_and(|l| l.contains("verify PASS")));
    // At least one precopy round and the stop-and-copy round.
    assert!(
        report["rounds"].as_u64().is_some_and(|r| r >= 2),
        "{report}"
    );
    for key in ["total_ms", "downtime_ms", "throughput_gib_s"] {
        assert!(report[key].is_number(), "{key} missing: {report}");
    }
}

#[test]
fn kvm_the_sev_es_demo_moves_a_2_vcpu_guest_whose_vcpus_restore_themselves() {
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: /dev/kvm is missing; the SEV-ES demo test did not run");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_sevmirror"))
        .args(["demo", "--sev-es", "--mem", "128M", "--json"])
        .output()
        .expect("run sevmirror demo --sev-es");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(report["verdict"], "pass", "{report:#}\n{stderr}");
    assert!(out.status.success(), "{stderr}");
    assert_eq!(report["target_state"], "running");
    let resumed = report["es_resumed"].as_array().expect("an SEV-ES report");
    assert_eq!(resumed.len(), 2, "{report}");
    for (i, line) in resumed.iter().enumerate() {
        let line = line.as_str().unwrap_or_default();
        assert!(
            line.contains(&format!("vCPU {i}: resumed from its saved state")),
            "{report}"
        );
    }
}
