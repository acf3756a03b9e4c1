//! KVM tests: boot the embedded firmware (and broken variants of it) on real KVM.
//! Each test prints a loud SKIPPED line and passes where /dev/kvm is missing.

use guest_abi::fwcfg;
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use vmm::{vm::VmOutcome, ConsoleOut, Firmware, KvmSystem, Vm, VmConfig};

fn kvm() -> Option<KvmSystem> {
    if !KvmSystem::available() {
        eprintln!("SKIPPED: /dev/kvm is missing; this KVM test did not run");
        return None;
    }
    Some(KvmSystem::open().expect("open /dev/kvm"))
}

fn vm(
    kvm: &KvmSystem,
    image: Vec<u8>,
    mem_mib: u64,
    vcpus: u32,
    workload: &str,
) -> (Vm, Arc<Mutex<Vec<u8>>>) {
    let (console, out) = ConsoleOut::capture();
    let vm = Vm::new(
        kvm,
        VmConfig {
            mem_size: mem_mib << 20,
            vcpus,
            firmware: Firmware::load(image).expect("valid firmware"),
            console,
            fw_cfg_files: vec![(fwcfg::FILE_WORKLOAD.into(), workload.as_bytes().to_vec())],
            sev: None,
        },
    )
    .expect("create VM");
    (vm, out)
}

fn text(out: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

fn boot_selftest(vcpus: u32) {
    let Some(kvm) = kvm() else { return };
    let (mut vm, out) = vm(&kvm, firmware_image::IMAGE.to_vec(), 128, vcpus, "selftest");
    vm.start().unwrap();
    let outcome = vm.wait();
    vm.stop();
    let console = text(&out);
    assert!(
        matches!(outcome, VmOutcome::GuestExit(0)),
        "{outcome:?}\n{console}"
    );
    assert!(
        console.contains("sevmirror firmware: reset"),
        "serial (CPL0) output missing:\n{console}"
    );
    let line = console
        .lines()
        .find(|l| l.starts_with("selftest: PASS"))
        .unwrap_or_else(|| panic!("no self-test line:\n{console}"));
    assert!(line.contains(&format!("on {vcpus} vCPU(s)")), "{line}");
    // The boot CPU reached CPL3 and reported its milestones through the services page.
    let names: Vec<_> = vm
        .milestones()
        .iter()
        .filter_map(|m| m.event.name())
        .collect();
    assert_eq!(names.first(), Some(&"cpl3-entry"), "{names:?}");
    for want in [
        "helper-ready",
        "configured",
        "workload-start",
        "workload-done",
    ] {
        assert!(names.contains(&want), "{want} missing: {names:?}");
    }
}

#[test]
fn kvm_boots_firmware_selftest_passes_on_one_vcpu() {
    boot_selftest(1);
}

#[test]
fn kvm_boots_firmware_selftest_passes_on_two_vcpus_with_aps_started() {
    boot_selftest(2);
}

#[test]
fn kvm_idle_guest_stops_promptly_when_asked() {
    let Some(kvm) = kvm() else { return };
    let (mut vm, out) = vm(&kvm, firmware_image::IMAGE.to_vec(), 64, 2, "idle");
    vm.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&out).contains("idle: halted") {
        assert!(
            Instant::now() < deadline,
            "idle guest never came up:\n{}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let t = Instant::now();
    vm.stop();
    assert_eq!(
        vm.exit_stats().len(),
        2,
        "a halted vCPU thread did not stop"
    );
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn kvm_unknown_workload_is_reported_by_the_guest() {
    let Some(kvm) = kvm() else { return };
    let (mut vm, out) = vm(&kvm, firmware_image::IMAGE.to_vec(), 64, 1, "bogus");
    vm.start().unwrap();
    let outcome = vm.wait();
    assert!(matches!(outcome, VmOutcome::GuestExit(3)), "{outcome:?}");
    assert!(text(&out).contains("unknown workload \"bogus\""));
}

/// The image with its 16-byte reset vector replaced.
fn with_reset_vector(code: &[u8]) -> Vec<u8> {
    let mut image = firmware_image::IMAGE.to_vec();
    let at = image.len() - 16;
    image[at..at + 16].fill(0);
    image[at..at + code.len()].copy_from_slice(code);
    image
}

#[test]
fn kvm_triple_fault_is_a_clear_error_not_a_hang() {
    let Some(kvm) = kvm() else { return };
    // ud2 as the first 64-bit instruction, before any IDT is loaded: #UD finds no gate,
    // nor does the #NP or #DF that follow, so the CPU shuts down.
    let mut image = firmware_image::IMAGE.to_vec();
    let at = (firmware_image::symbols::ENTRY64 - guest_abi::layout::FW_IMAGE_BASE) as usize;
    image[at..at + 2].copy_from_slice(&[0x0f, 0x0b]);
    let (mut vm, _) = vm(&kvm, image, 64, 1, "selftest");
    vm.start().unwrap();
    let outcome = vm.wait();
    match outcome {
        VmOutcome::Failed { vcpu: 0, error } => {
            let msg = error.to_string();
            assert!(msg.contains("triple fault") && msg.contains("rip"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn kvm_garbage_code_is_a_clear_error_not_a_hang() {
    let Some(kvm) = kvm() else { return };
    // xorps xmm2, xmm2 at the reset vector: KVM's emulator (all CPL0 code here) cannot run
    // it, and on a real CPU it faults with no IDT; either way the VM must stop cleanly.
    let image = with_reset_vector(&[0x0f, 0x57, 0xd2, 0xf4]);
    let (mut vm, _) = vm(&kvm, image, 64, 1, "selftest");
    vm.start().unwrap();
    match vm.wait() {
        VmOutcome::Failed { vcpu: 0, error } => {
            let msg = error.to_string();
            assert!(msg.contains("rip"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn kvm_too_little_ram_is_refused_before_boot() {
    let Some(kvm) = kvm() else { return };
    let err = Vm::new(
        &kvm,
        VmConfig {
            mem_size: 32 << 20,
            vcpus: 1,
            firmware: Firmware::load(firmware_image::IMAGE.to_vec()).unwrap(),
            console: ConsoleOut::capture().0,
            fw_cfg_files: vec![],
            sev: None,
        },
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("at least 64 MiB"), "{err}");
}

#[test]
fn kvm_pause_and_resume_mid_selftest_keeps_memory_intact() {
    let Some(kvm) = kvm() else { return };
    let (mut vm, out) = vm(&kvm, firmware_image::IMAGE.to_vec(), 512, 2, "selftest");
    vm.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&out).contains("firmware:") {
        assert!(
            Instant::now() < deadline,
            "guest never printed:\n{}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        vm.pause(Duration::from_secs(2)),
        "vCPUs did not acknowledge the pause"
    );
    let before = text(&out);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(text(&out), before, "a paused guest kept printing");
    vm.resume();
    let outcome = vm.wait();
    assert!(
        matches!(outcome, VmOutcome::GuestExit(0)),
        "{outcome:?}\n{}",
        text(&out)
    );
    assert!(text(&out).contains("selftest: PASS"));
}

#[test]
fn kvm_dirty_workload_keeps_writing_and_verifies_on_request() {
    let Some(kvm) = kvm() else { return };
    let (console, out) = ConsoleOut::capture();
    let mut vm = Vm::new(
        &kvm,
        VmConfig {
            mem_size: 128 << 20,
            vcpus: 1,
            firmware: Firmware::load(firmware_image::IMAGE.to_vec()).unwrap(),
            console,
            fw_cfg_files: vec![
                (fwcfg::FILE_WORKLOAD.into(), b"dirty".to_vec()),
                (fwcfg::FILE_DIRTY_RATE.into(), b"20000".to_vec()),
            ],
            sev: None,
        },
    )
    .unwrap();
    vm.start().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text(&out).contains("dirty: ") {
        assert!(Instant::now() < deadline, "{}", text(&out));
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    vm.request_guest(guest_abi::services::Request::VERIFY);
    while !text(&out).contains("verify PASS") {
        assert!(Instant::now() < deadline, "{}", text(&out));
        std::thread::sleep(Duration::from_millis(5));
    }
    // Pausing in the middle of a page write and resuming must not confuse the check.
    assert!(vm.pause(Duration::from_secs(2)));
    vm.resume();
    vm.request_guest(guest_abi::services::Request::VERIFY_AND_EXIT);
    let outcome = vm.wait();
    assert!(
        matches!(outcome, VmOutcome::GuestExit(0)),
        "{outcome:?}\n{}",
        text(&out)
    );
    let log = text(&out);
    let gen = |line: &str| -> u64 {
        line.split("generation ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let checks: Vec<&str> = log.lines().filter(|l| l.contains("verify PASS")).collect();
    assert_eq!(checks.len(), 2, "{log}");
    assert!(gen(checks[1]) >= gen(checks[0]));
}
