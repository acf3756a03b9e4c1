//! KVM test of the SEV-ES GHCB path end to end: the firmware's `vctest` workload enters
//! its #VC handler with synthetic frames for each instruction kind, and the handler's
//! GHCB requests are served by the VMM from the GHCB alone (`devices::ghcb`). Prints a
//! loud SKIPPED line where /dev/kvm is missing, or where the platform cannot launch an
//! SEV-ES guest.

use guest_abi::fwcfg;
use sev_platform::{emulated::EmulatedPsp, Policy, SevBackend};
use std::sync::{Arc, Mutex};
use vmm::{
    sev::{HypercallTransport, SevConfig},
    vm::VmOutcome,
    ConsoleOut, Firmware, KvmSystem, Vm, VmConfig,
};

fn kvm() -> Option<KvmSystem> {
    if !KvmSystem::available() {
        eprintln!("SKIPPED: /dev/kvm is missing; this KVM test did not run");
        return None;
    }
    Some(KvmSystem::open().expect("open /dev/kvm"))
}

fn text(out: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

/// An SEV guest with `policy` running `workload`, launched and started; `None` when
/// the platform refuses to launch it.
fn launched(
    kvm: &KvmSystem,
    psp: Arc<EmulatedPsp>,
    policy: Policy,
    workload: &str,
) -> Option<(Vm, Arc<Mutex<Vec<u8>>>)> {
    let (console, out) = ConsoleOut::capture();
    let backend: Arc<dyn SevBackend> = psp;
    let mut vm = Vm::new(
        kvm,
        VmConfig {
            mem_size: 128 << 20,
            vcpus: 1,
            firmware: Firmware::load(firmware_image::IMAGE.to_vec()).unwrap(),
            console,
            fw_cfg_files: vec![(fwcfg::FILE_WORKLOAD.into(), workload.as_bytes().to_vec())],
            sev: Some(SevConfig {
                backend,
                policy,
                session: None,
                transport: HypercallTransport::ServicesPage,
            }),
        },
    )
    .expect("create VM");
    let started = match vm.sev_launch_start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("SKIPPED: the platform cannot launch this SEV guest yet: {e}");
            return None;
        }
    };
    let measured = vm.sev_launch_measure(started).unwrap();
    vm.sev_launch_finish(measured).unwrap();
    vm.start().unwrap();
    Some((vm, out))
}

#[test]
fn kvm_sev_es_vc_handler_cases_are_served_through_the_ghcb() {
    let Some(kvm) = kvm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    let Some((mut vm, out)) = launched(&kvm, psp, Policy(Policy::ES), "vctest") else {
        return;
    };
    let outcome = vm.wait();
    vm.stop();
    let console = text(&out);
    eprintln!("{console}");
    assert!(
        matches!(outcome, VmOutcome::GuestExit(0)),
        "{outcome:?}\n{console}"
    );
    assert!(
        console.lines().any(|l| l.starts_with("vctest: PASS")),
        "{console}"
    );
    // Bytes that reached the console only as MMIO through the #VC handler and the GHCB,
    // and through the GHCB services exit.
    assert!(console.contains("vctest: mmio, OK\n"), "{console}");
    assert!(
        console.contains("vctest: console through the GHCB services exit\n"),
        "{console}"
    );
}

#[test]
fn kvm_a_plain_sev_guest_has_no_ghcb() {
    let Some(kvm) = kvm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    let (mut vm, out) = launched(&kvm, psp, Policy(0), "vctest").expect("plain SEV launches");
    let outcome = vm.wait();
    vm.stop();
    let console = text(&out);
    assert!(
        matches!(outcome, VmOutcome::GuestExit(0)),
        "{outcome:?}\n{console}"
    );
    assert!(
        console.contains("vctest: SKIP: not an SEV-ES guest"),
        "{console}"
    );
}
