//! KVM test of the SEV-ES GHCB path end to end: the firmware's `vctest` workload enters
//! its #VC handler with synthetic frames for each instruction kind and raises #VCs through
//! boot.s's vector-29 stub, and the handler's GHCB requests are served by the VMM from the
//! GHCB alone (`devices::ghcb`); every GHCB exit the firmware uses is counted. Prints a
//! loud SKIPPED line where /dev/kvm is missing.

use guest_abi::fwcfg;
use sev_platform::{emulated::EmulatedPsp, vmsa::VcpuType, Policy, SevBackend};
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

/// An SEV guest with `policy` running `workload`, launched (with its VMSAs under SEV-ES)
/// and started.
fn launched(
    kvm: &KvmSystem,
    psp: Arc<EmulatedPsp>,
    policy: Policy,
    workload: &str,
) -> (Vm, Arc<Mutex<Vec<u8>>>) {
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
    let mut started = vm.sev_launch_start().unwrap();
    if policy.has(Policy::ES) {
        let epyc = VcpuType::from_name("EPYC-v4").unwrap();
        started = vm.sev_launch_update_vmsa(started, epyc).unwrap();
    }
    let measured = vm.sev_launch_measure(started).unwrap();
    vm.sev_launch_finish(measured).unwrap();
    vm.start().unwrap();
    (vm, out)
}

#[test]
fn kvm_sev_es_vc_handler_cases_are_served_through_the_ghcb() {
    let Some(kvm) = kvm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    let (mut vm, out) = launched(&kvm, psp, Policy(Policy::ES), "vctest");
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
    // Bytes an MMIO write wrote after a #VC raised through boot.s's stub, served by the
    // CPL3 handler, returned through VC_RETURN.
    assert!(console.contains("vctest: raised!\n"), "{console}");
    // Every GHCB exit the firmware uses reached the VMM through the GHCB, and the
    // malformed requests were refused, not served.
    let stats = &vm.exit_stats()[0];
    for exit in [
        "cpuid",
        "ioio",
        "msr",
        "vmmcall",
        "mmio-read",
        "mmio-write",
        "sevmirror-service",
        "msr-protocol",
    ] {
        assert!(
            stats.ghcb.get(exit).copied().unwrap_or(0) > 0,
            "no {exit} VMGEXIT: {:?}",
            stats.ghcb
        );
    }
    assert_eq!(stats.ghcb_refused, 3, "{:?}", stats.ghcb);
    assert_eq!(stats.pio, 0, "an SEV-ES guest makes no plain port I/O exit");
}

#[test]
fn kvm_a_plain_sev_guest_has_no_ghcb() {
    let Some(kvm) = kvm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    let (mut vm, out) = launched(&kvm, psp, Policy(0), "vctest");
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
