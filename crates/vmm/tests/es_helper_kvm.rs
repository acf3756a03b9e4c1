//! KVM tests of an SEV-ES guest's migration helper: its helper vCPUs are made during the
//! launch, their VMSAs built from the firmware's helper descriptor and measured after the
//! guest's; from then on the host cannot set a register of theirs; a helper vCPU run
//! before the guest prepared its helper holds and starts when run again later; the
//! owner's digest covers the helpers (their entry, their count). Each test prints a loud
//! SKIPPED line where /dev/kvm is missing.

use fwtable::{guid, Guid, Table};
use guest_abi::fwcfg;
use helper_abi::{
    mailbox::{Op, Request},
    MIGRATION_SECRET_GUID,
};
use sev_platform::{
    emulated::EmulatedPsp,
    measure::expected_es_digest,
    owner::{self, Measured, OwnerError},
    vmsa::{ResetVmsas, VcpuType, VmmType, Vmsa},
    Policy, SevBackend,
};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use vmm::{
    firmware::image_helper_vmsas,
    kvm::KvmError,
    mirror::{HelperError, Mirror, MirrorError},
    sev::{HypercallTransport, SevConfig},
    ConsoleOut, Firmware, KvmSystem, Vm, VmConfig,
};

const ES: Policy = Policy(Policy::ES | Policy::NODBG);

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

fn wait_for(out: &Arc<Mutex<Vec<u8>>>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !text(out).contains(what) {
        assert!(Instant::now() < deadline, "no {what:?}:\n{}", text(out));
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The digest an owner expects for `image` launched under SEV-ES with `vcpus` guest vCPUs
/// and `helpers` helper vCPUs: the image, the guest's reset VMSAs, then the helpers'.
fn owner_digest(image: &[u8], vcpus: u32, helpers: u16) -> [u8; 32] {
    let epyc = VcpuType::from_name("EPYC-v4").unwrap();
    let mut vmsas: Vec<Vmsa> = ResetVmsas::for_firmware(image, epyc, VmmType::Qemu)
        .unwrap()
        .all(vcpus)
        .unwrap();
    vmsas.extend(image_helper_vmsas(image, helpers, VmmType::Qemu).unwrap());
    expected_es_digest(image, &vmsas)
}

/// A launched guest: the VM, its mirror, its console.
type Launched = (Vm, Mirror, Arc<Mutex<Vec<u8>>>);

/// A guest of `image` launched under SEV-ES with `helpers` helper vCPUs measured, checked
/// by an owner who expects `expected`; the VM and its mirror, not started, or the owner's
/// refusal.
fn launch(
    kvm: &KvmSystem,
    psp: &Arc<EmulatedPsp>,
    image: &[u8],
    helpers: u16,
    expected: [u8; 32],
) -> Result<Launched, OwnerError> {
    let pdh = psp.export_certs().unwrap().pdh;
    let session = owner::session(&pdh, ES).unwrap();
    let backend: Arc<dyn SevBackend> = psp.clone();
    let (console, out) = ConsoleOut::capture();
    let mut vm = Vm::new(
        kvm,
        VmConfig {
            mem_size: 128 << 20,
            vcpus: 1,
            firmware: Firmware::load(image.to_vec()).unwrap(),
            console,
            fw_cfg_files: vec![(fwcfg::FILE_WORKLOAD.into(), b"idle".to_vec())],
            sev: Some(SevConfig {
                backend,
                policy: ES,
                session: Some(session.launch_session()),
                transport: HypercallTransport::ServicesPage,
            }),
        },
    )
    .expect("create VM");
    let started = vm.sev_launch_start().unwrap();
    let started = vm
        .sev_launch_update_vmsa(started, VcpuType::from_name("EPYC-v4").unwrap())
        .unwrap();
    let (started, mirror) = vm.sev_launch_mirror(started, kvm, helpers).unwrap();
    let measured = vm.sev_launch_measure(started).unwrap();
    let verified = owner::verify(
        Measured::Digest(expected),
        psp.firmware_version(),
        ES,
        session.keys.tik(),
        &owner::encode_base64(&measured.measurement().0),
    )?;
    let packet = owner::secret(
        &session.keys,
        &verified,
        &[(Guid::from_bytes(MIGRATION_SECRET_GUID), vec![0x5e; 32])],
    )
    .unwrap();
    vm.sev_inject_secret(&measured, &packet.header, &packet.ciphertext, None)
        .unwrap();
    vm.sev_launch_finish(measured).unwrap();
    Ok((vm, mirror, out))
}

#[test]
fn kvm_es_helper_vcpus_are_measured_at_launch_and_the_host_cannot_set_their_registers() {
    let Some(kvm) = kvm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    let image = firmware_image::IMAGE;
    let (mut vm, mut mirror, out) = launch(&kvm, &psp, image, 2, owner_digest(image, 1, 2))
        .expect("the owner's digest covers the guest's and the helpers' VMSAs");

    // Run before the guest booted: no anchor yet. A measured VMSA cannot be reset, so the
    // entry holds (AP reset hold) instead of parking, and is run again later.
    match mirror.start() {
        Err(MirrorError::Start(0, HelperError::NotReady)) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(!mirror.started());

    // The host may not set (or read) a helper vCPU's registers after the launch.
    for h in mirror.helpers_mut() {
        let vcpu = h.kvm_vcpu();
        let regs = kvm_bindings::kvm_regs {
            rip: firmware_image::symbols::HELPER_ENTRY32 + 4,
            ..Default::default()
        };
        assert!(matches!(
            vcpu.set_regs(&regs),
            Err(KvmError::Protected { .. })
        ));
        let err = vcpu.set_regs(&regs).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "as KVM answers: {err}");
        assert!(matches!(vcpu.regs(), Err(KvmError::Protected { .. })));
        assert!(matches!(
            vcpu.set_sregs(&Default::default()),
            Err(KvmError::Protected { .. })
        ));
        assert!(matches!(
            vcpu.set_fpu(&Default::default()),
            Err(KvmError::Protected { .. })
        ));
    }

    vm.start().unwrap();
    wait_for(&out, "migration helper ready");
    mirror
        .start()
        .expect("the helper vCPUs start once the guest prepared the helper");
    assert!(mirror.started());
    let slots: Vec<u16> = mirror.helpers_mut().iter().map(|h| h.index()).collect();
    assert_eq!(slots, [0, 1], "each took its own slot");
    assert_eq!(
        mirror.info().region_base,
        guest_abi::layout::HELPER_REGION_BASE
    );
    // Each serves its mailbox through its own GHCB: a request answered on both.
    for h in mirror.helpers_mut() {
        let r = h
            .call_ok(
                Request {
                    op: Op::INFO.0,
                    ..Request::default()
                },
                &[],
            )
            .unwrap();
        assert_eq!(r.region_base, guest_abi::layout::HELPER_REGION_BASE);
    }
    drop(mirror);
    vm.stop();
}

/// `image` with the helper descriptor's entry point moved by `by` bytes.
fn moved_helper_entry(image: &[u8], by: u32) -> Vec<u8> {
    let table = Table::parse(image).unwrap();
    let entry = table.find(guid::MIRROR_HELPER_DESCRIPTOR).unwrap().unwrap();
    let at = entry.data.as_ptr() as usize - image.as_ptr() as usize + 8;
    let mut out = image.to_vec();
    let old = u32::from_le_bytes(out[at..at + 4].try_into().unwrap());
    out[at..at + 4].copy_from_slice(&(old + by).to_le_bytes());
    out
}

#[test]
fn kvm_es_the_owner_refuses_a_firmware_whose_helper_entry_changed_or_another_helper_count() {
    let Some(kvm) = kvm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    let image = firmware_image::IMAGE;
    let expected = owner_digest(image, 1, 1);

    // The helper VMSAs themselves change with the entry and the count (not only the
    // image bytes: the same image with another count is another digest).
    let moved = moved_helper_entry(image, 4);
    assert_ne!(
        image_helper_vmsas(&moved, 1, VmmType::Qemu).unwrap()[0].rip,
        image_helper_vmsas(image, 1, VmmType::Qemu).unwrap()[0].rip
    );
    assert_ne!(owner_digest(image, 1, 2), expected);
    assert_ne!(owner_digest(image, 2, 1), expected);

    // A host that launches the firmware with a moved helper entry: refused.
    match launch(&kvm, &psp, &moved, 1, expected) {
        Err(OwnerError::Mismatch(_)) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("the owner accepted a firmware whose helper entry moved"),
    }
    // ... or with another helper count than the owner expects.
    match launch(&kvm, &psp, image, 2, expected) {
        Err(OwnerError::Mismatch(_)) => {}
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("the owner accepted two helpers instead of one"),
    }
    // The honest launch verifies.
    assert!(launch(&kvm, &psp, image, 1, expected).is_ok());
}
