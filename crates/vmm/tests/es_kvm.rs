//! KVM tests of SEV-ES guests on the emulated platform: the launch (VMSAs measured as
//! `measure --mode sev-es` computes them), the workloads on 1 and 2 vCPUs, vCPU state the
//! host can neither read nor set (it lives in the VMSA slots between runs), the strict mode
//! that stops a guest bypassing its GHCB, and bad launch requests refused with the guest
//! and the platform intact. Each test prints a loud SKIPPED line where /dev/kvm is missing.

use guest_abi::{fwcfg, services::Request as GuestRequest};
use sev_platform::{
    backend::PlatformState,
    emulated::{EmulatedPsp, EsSupport},
    measure::expected_es_digest,
    owner::{self, Measured},
    vmsa::{ResetVmsas, VcpuType, VmmType},
    PlatformIdentity, Policy, SevBackend,
};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use vmm::{
    control::{LaunchError, MachineBuilder},
    sev::{HypercallTransport, SevConfig},
    vcpu::VcpuError,
    vm::{VmError, VmOutcome},
    ConsoleOut, Firmware, KvmSystem, Vm, VmConfig,
};

const ES: Policy = Policy(Policy::ES);

fn kvm() -> Option<KvmSystem> {
    if !KvmSystem::available() {
        eprintln!("SKIPPED: /dev/kvm is missing; this KVM test did not run");
        return None;
    }
    Some(KvmSystem::open().expect("open /dev/kvm"))
}

fn platform() -> (tempfile::TempDir, Arc<EmulatedPsp>) {
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    (dir, psp)
}

fn epyc() -> VcpuType {
    VcpuType::from_name("EPYC-v4").unwrap()
}

fn vm_config(
    workload: &str,
    vcpus: u32,
    backend: Arc<dyn SevBackend>,
    policy: Policy,
) -> (VmConfig, Arc<Mutex<Vec<u8>>>) {
    let (console, out) = ConsoleOut::capture();
    let config = VmConfig {
        mem_size: 128 << 20,
        vcpus,
        firmware: Firmware::load(firmware_image::IMAGE.to_vec()).unwrap(),
        console,
        fw_cfg_files: vec![
            (fwcfg::FILE_WORKLOAD.into(), workload.as_bytes().to_vec()),
            (fwcfg::FILE_DIRTY_RATE.into(), b"2000".to_vec()),
        ],
        sev: Some(SevConfig {
            backend,
            policy,
            session: None,
            transport: HypercallTransport::ServicesPage,
        }),
    };
    (config, out)
}

/// An SEV-ES guest running `workload` on `vcpus` vCPUs: built, launched with its VMSAs,
/// measured and finished, not started.
fn launched(
    kvm: &KvmSystem,
    psp: &Arc<EmulatedPsp>,
    workload: &str,
    vcpus: u32,
) -> (Vm, Arc<Mutex<Vec<u8>>>) {
    let (config, out) = vm_config(workload, vcpus, psp.clone(), ES);
    let mut vm = Vm::new(kvm, config).expect("create VM");
    let started = vm.sev_launch_start().unwrap();
    let started = vm.sev_launch_update_vmsa(started, epyc()).unwrap();
    let measured = vm.sev_launch_measure(started).unwrap();
    vm.sev_launch_finish(measured).unwrap();
    (vm, out)
}

fn text(out: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

fn wait_for(out: &Arc<Mutex<Vec<u8>>>, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let t = text(out);
        // Only whole lines: the console arrives a few bytes at a time.
        if let Some(line) = t
            .split_inclusive('\n')
            .find(|l| l.ends_with('\n') && l.contains(what))
        {
            return line.trim_end().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {what:?} in the console:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn find_all(view: &vmm::memory::HostView, needle: &[u8], ram: u64) -> Vec<u64> {
    let mut hits = Vec::new();
    let mut chunk = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < ram {
        view.read(at, &mut chunk).unwrap();
        for (i, w) in chunk.windows(needle.len()).enumerate() {
            if w == needle {
                hits.push(at + i as u64);
            }
        }
        at += chunk.len() as u64;
    }
    hits
}

fn errno(e: &VmError) -> Option<i32> {
    match e {
        VmError::Kvm(k) => k.errno(),
        _ => None,
    }
}

#[test]
fn kvm_es_workloads_run_on_one_and_two_vcpus() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    for vcpus in [1, 2] {
        // The self-test: every vCPU fills and verifies its share, then the guest exits.
        let (mut vm, out) = launched(&kvm, &psp, "selftest", vcpus);
        vm.start().unwrap();
        let outcome = vm.wait();
        vm.stop();
        let console = text(&out);
        assert!(
            matches!(outcome, VmOutcome::GuestExit(0)),
            "{vcpus} vCPUs: {outcome:?}\n{console}"
        );
        assert!(
            console.contains(&format!("on {vcpus} vCPU(s)")) && console.contains("selftest: PASS"),
            "{console}"
        );
        assert!(console.contains("SEV active with SEV-ES"), "{console}");
        let stats = vm.exit_stats();
        assert_eq!(stats.len(), vcpus as usize);
        assert!(
            stats.iter().all(|s| s.pio == 0),
            "port I/O only through the GHCB"
        );
        assert!(stats[0].ghcb.get("ioio").is_some_and(|&n| n > 0), "fw_cfg");

        // Idle: up and halted until stopped.
        let (mut vm, out) = launched(&kvm, &psp, "idle", vcpus);
        vm.start().unwrap();
        wait_for(&out, "idle: halted until the VMM stops the VM");
        vm.stop();

        // Dirty: rewrites pages on the timer (x2APIC and TSC deadline through the GHCB),
        // takes the host's request through the GHCB, verifies and exits.
        let (mut vm, out) = launched(&kvm, &psp, "dirty", vcpus);
        vm.start().unwrap();
        wait_for(&out, "dirty: ");
        std::thread::sleep(Duration::from_millis(100));
        vm.request_guest(GuestRequest::VERIFY_AND_EXIT);
        let outcome = vm.wait();
        vm.stop();
        assert!(
            matches!(outcome, VmOutcome::GuestExit(0)),
            "{outcome:?}\n{}",
            text(&out)
        );
        assert!(text(&out).contains("dirty: verify PASS"), "{}", text(&out));

        // Canary: the host sees the canary only in the page the guest shared.
        let ram = 128u64 << 20;
        let (mut vm, out) = launched(&kvm, &psp, "canary", vcpus);
        vm.start().unwrap();
        let line = wait_for(&out, "canary: private page");
        let hex = |s: &str| u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap();
        let shared = hex(line.split("shared page ").nth(1).unwrap());
        let hits = find_all(&vm.host_view(), b"SEVMIRROR-CANARY", ram);
        assert!(!hits.is_empty(), "the shared canary must be visible");
        assert!(
            hits.iter().all(|&a| a / 4096 == shared / 4096),
            "canary visible outside the shared page {shared:#x}: {hits:x?}"
        );
        vm.stop();
    }
}

#[test]
fn kvm_es_vcpu_state_is_out_of_the_hosts_reach_and_lives_in_the_vmsa() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let (mut vm, out) = launched(&kvm, &psp, "dirty", 2);
    let vm_ref = vm.sev_ref();
    let slot = psp
        .protected_vcpu_state(vm_ref, 0)
        .expect("vCPU 0 is protected");
    let image = firmware_image::IMAGE;
    let reset = ResetVmsas::for_firmware(image, epyc(), VmmType::Qemu).unwrap();
    // Before the first run the slot holds the measured reset state; the host sees only
    // ciphertext of it.
    assert_eq!(slot.vmrun_load(), reset.vcpu(0));
    let host = slot.host_view();
    assert_ne!(host, reset.vcpu(0).to_bytes());
    assert!(
        host.windows(8).all(|w| w != 0xfff0u64.to_le_bytes()),
        "no plaintext register in the host's view of the VMSA"
    );

    vm.start().unwrap();
    wait_for(&out, "dirty: ");
    assert!(vm.pause(Duration::from_secs(5)));
    // Paused: the state went back to the slot (#VMEXIT), so it is no longer the reset
    // state, and the host can neither read it nor load another one (EINVAL, as KVM).
    let saved = slot.vmrun_load();
    assert_ne!(
        saved.rip,
        reset.vcpu(0).rip,
        "the slot holds the running state"
    );
    assert_ne!(slot.host_view(), host);
    let err = vm.save_vcpus().unwrap_err();
    assert_eq!(errno(&err), Some(libc::EINVAL), "{err}");
    assert!(err.to_string().contains("protected"), "{err}");

    // A state saved from a plain guest cannot be loaded into the SEV-ES vCPUs either.
    let (mut plain_cfg, _) = vm_config("idle", 2, psp.clone(), Policy(0));
    plain_cfg.sev = None;
    let mut plain = Vm::new(&kvm, plain_cfg).unwrap();
    plain.start().unwrap();
    assert!(plain.pause(Duration::from_secs(5)));
    let states = plain
        .save_vcpus()
        .expect("a plain guest's state can be saved");
    plain.stop();
    let err = vm.restore_vcpus(states).unwrap_err();
    assert_eq!(errno(&err), Some(libc::EINVAL), "{err}");

    // Resumed, the vCPUs load their state from the slots (VMRUN) and go on where they
    // were: the workload's memory check still passes.
    vm.resume();
    std::thread::sleep(Duration::from_millis(100));
    vm.request_guest(GuestRequest::VERIFY_AND_EXIT);
    let outcome = vm.wait();
    vm.stop();
    assert!(
        matches!(outcome, VmOutcome::GuestExit(0)),
        "{outcome:?}\n{}",
        text(&out)
    );
    assert!(text(&out).contains("dirty: verify PASS"));
    // Stopped: the last state is in the slot too.
    assert_ne!(slot.vmrun_load(), saved);
}

#[test]
fn kvm_es_launch_measures_the_vmsas_as_measure_computes() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    for vcpus in [1, 2, 4] {
        let policy = Policy(Policy::ES | Policy::NODBG);
        let session = owner::session(&psp.export_certs().unwrap().pdh, policy).unwrap();
        let (mut config, _out) = vm_config("idle", vcpus, psp.clone(), policy);
        if let Some(s) = config.sev.as_mut() {
            s.session = Some(session.launch_session());
        }
        let mut vm = Vm::new(&kvm, config).unwrap();
        let started = vm.sev_launch_start().unwrap();
        let started = vm.sev_launch_update_vmsa(started, epyc()).unwrap();
        let measured = vm.sev_launch_measure(started).unwrap();
        let reset = ResetVmsas::for_firmware(firmware_image::IMAGE, epyc(), VmmType::Qemu)
            .unwrap()
            .all(vcpus)
            .unwrap();
        let digest = expected_es_digest(firmware_image::IMAGE, &reset);
        let b64 = owner::encode_base64(&measured.measurement().0);
        owner::verify(
            Measured::Digest(digest),
            psp.firmware_version(),
            policy,
            session.keys.tik(),
            &b64,
        )
        .unwrap_or_else(|e| panic!("{vcpus} vCPUs: {e}"));
        // The same launch without the VMSAs (a plain SEV digest) does not verify.
        assert!(owner::verify(
            Measured::Firmware(firmware_image::IMAGE),
            psp.firmware_version(),
            policy,
            session.keys.tik(),
            &b64,
        )
        .is_err());
        let status = vm.sev_status().unwrap().unwrap();
        assert_eq!(status.policy, policy);
        assert_eq!(status.state.qemu_name(), "launch-secret");
    }
}

#[test]
fn kvm_es_strict_mode_stops_a_guest_that_bypasses_its_ghcb() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    for (workload, exit) in [
        ("bypass-pio", "port I/O write of 1 bytes to 0x80"),
        ("bypass-mmio", "MMIO write of 8 bytes at 0xfe000000"),
        ("bypass-msr", "RDMSR 0x1b"),
    ] {
        let (mut vm, out) = launched(&kvm, &psp, workload, 1);
        vm.start().unwrap();
        let outcome = vm.wait();
        vm.stop();
        match outcome {
            VmOutcome::Failed {
                error: VcpuError::EsStrict { exit: e },
                ..
            } => assert_eq!(e, exit),
            other => panic!("{workload}: {other:?}\n{}", text(&out)),
        }
        assert!(!text(&out).contains("bypass: FAIL"));
        // The same access from a plain SEV guest is legitimate.
        let (config, out) = vm_config(workload, 1, psp.clone(), Policy(0));
        let mut vm = Vm::new(&kvm, config).unwrap();
        let started = vm.sev_launch_start().unwrap();
        let measured = vm.sev_launch_measure(started).unwrap();
        vm.sev_launch_finish(measured).unwrap();
        vm.start().unwrap();
        let outcome = vm.wait();
        vm.stop();
        assert!(
            matches!(outcome, VmOutcome::GuestExit(0)),
            "{outcome:?}\n{}",
            text(&out)
        );
    }
}

#[test]
fn kvm_es_bad_launch_requests_are_refused_and_the_guest_still_runs() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let reset = ResetVmsas::for_firmware(firmware_image::IMAGE, epyc(), VmmType::Qemu).unwrap();

    // A vCPU count that does not match: EINVAL from the platform, nothing measured; the
    // VMM's own LAUNCH_UPDATE_VMSA then works and the guest runs.
    let (config, out) = vm_config("selftest", 2, psp.clone(), ES);
    let mut vm = Vm::new(&kvm, config).unwrap();
    let started = vm.sev_launch_start().unwrap();
    let err = psp
        .launch_update_vmsa(vm.sev_ref(), &reset.all(1).unwrap())
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
    assert!(psp.protected_vcpu_state(vm.sev_ref(), 0).is_none());
    let started = vm.sev_launch_update_vmsa(started, epyc()).unwrap();
    let measured = vm.sev_launch_measure(started).unwrap();
    let m = measured.measurement();

    // A VMSA request after LAUNCH_MEASURE: refused (the vCPUs are protected already; the
    // firmware would refuse it outside LUPDATE too), the measurement unchanged.
    let err = psp
        .launch_update_vmsa(vm.sev_ref(), &reset.all(2).unwrap())
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
    assert_eq!(vm.sev_measurement(), Some(m));
    assert_eq!(
        vm.sev_status().unwrap().unwrap().state.qemu_name(),
        "launch-secret"
    );
    vm.sev_launch_finish(measured).unwrap();
    vm.start().unwrap();
    assert!(
        matches!(vm.wait(), VmOutcome::GuestExit(0)),
        "{}",
        text(&out)
    );
    vm.stop();

    // LAUNCH_MEASURE of an SEV-ES guest before its VMSAs: refused by the VMM, the guest
    // still in LUPDATE on the platform.
    let (config, _) = vm_config("idle", 1, psp.clone(), ES);
    let mut vm = Vm::new(&kvm, config).unwrap();
    let started = vm.sev_launch_start().unwrap();
    let err = vm.sev_launch_measure(started).unwrap_err();
    assert!(matches!(err, VmError::VmsasMissing), "{err}");
    assert_eq!(
        vm.sev_status().unwrap().unwrap().state.qemu_name(),
        "launch-update"
    );
    drop(vm);

    // VMSAs for a guest whose policy does not ask for SEV-ES.
    let (config, _) = vm_config("idle", 1, psp.clone(), Policy(0));
    let mut vm = Vm::new(&kvm, config).unwrap();
    let started = vm.sev_launch_start().unwrap();
    let err = vm.sev_launch_update_vmsa(started, epyc()).err().unwrap();
    assert!(matches!(err, VmError::NotEs), "{err}");
    drop(vm);

    // An SEV-ES migration target without helper vCPUs measured at its launch: refused
    // before anything is built (an SEV-ES guest moves only into a VM with as many).
    let kvm = Arc::new(kvm);
    let (config, _) = vm_config("idle", 1, psp.clone(), ES);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = MachineBuilder::new(config)
        .incoming(listener)
        .build(kvm.clone())
        .err()
        .unwrap();
    assert!(
        matches!(err, LaunchError::EsIncomingWithoutHelpers),
        "{err}"
    );
    // A mirror attached to an SEV-ES guest after its launch is refused: its helpers'
    // VMSAs would not be measured.
    let (vm, _) = launched(&kvm, &psp, "idle", 1);
    let err = vm.attach_mirror(&kvm, 1).err().unwrap();
    assert!(err.to_string().contains("SEV-ES"), "{err}");
    drop(vm);

    // An SEV-ES policy on a platform without SEV-ES: refused before the platform hears of
    // the VM; a plain SEV guest launches on it afterwards.
    let no_es = Arc::new(EmulatedPsp::with_es_support(
        PlatformIdentity::generate().unwrap(),
        EsSupport::Absent,
    ));
    let (config, _) = vm_config("idle", 1, no_es.clone(), ES);
    let err = Vm::new(&kvm, config).err().unwrap();
    assert!(matches!(err, VmError::EsUnsupported { policy: 4 }), "{err}");
    let status = no_es.platform_status().unwrap();
    assert_eq!((status.guest_count, status.es), (0, false));
    assert_ne!(status.state, PlatformState::Working);
    let (config, out) = vm_config("selftest", 1, no_es.clone(), Policy(0));
    let mut vm = Vm::new(&kvm, config).unwrap();
    let started = vm.sev_launch_start().unwrap();
    let measured = vm.sev_launch_measure(started).unwrap();
    vm.sev_launch_finish(measured).unwrap();
    vm.start().unwrap();
    assert!(
        matches!(vm.wait(), VmOutcome::GuestExit(0)),
        "{}",
        text(&out)
    );
    vm.stop();
}

#[test]
fn kvm_es_a_guest_fault_is_reported_through_the_ghcb() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    // `ud2` as the first CPL3 instruction: boot.s's exception path reports the #UD. Under
    // SEV-ES it cannot write the services page (that would raise #VC): it builds the
    // fault service request in the CPU's GHCB and rings VMGEXIT.
    let mut image = firmware_image::IMAGE.to_vec();
    let at = (firmware_image::symbols::RUST_ENTRY - guest_abi::layout::FW_IMAGE_BASE) as usize;
    image[at..at + 2].copy_from_slice(&[0x0f, 0x0b]);
    for policy in [ES, Policy(0)] {
        let (mut config, out) = vm_config("selftest", 1, psp.clone(), policy);
        config.firmware = Firmware::load(image.clone()).unwrap();
        let mut vm = Vm::new(&kvm, config).unwrap();
        let mut started = vm.sev_launch_start().unwrap();
        if policy.has(Policy::ES) {
            started = vm.sev_launch_update_vmsa(started, epyc()).unwrap();
        }
        let measured = vm.sev_launch_measure(started).unwrap();
        vm.sev_launch_finish(measured).unwrap();
        vm.start().unwrap();
        let outcome = vm.wait();
        vm.stop();
        match outcome {
            VmOutcome::Fault { vcpu: 0, report } => {
                assert_eq!(
                    (report.vector, report.cpl, report.rip),
                    (6, 3, firmware_image::symbols::RUST_ENTRY),
                    "{policy:?}: {report}"
                );
            }
            other => panic!("{policy:?}: {other:?}\n{}", text(&out)),
        }
        let ghcb = &vm.exit_stats()[0].ghcb;
        assert_eq!(
            ghcb.get("sevmirror-service").is_some(),
            policy.has(Policy::ES),
            "{ghcb:?}"
        );
    }
}
