//! The migration helper's self-check on KVM: SEV does not keep a guest out of its own
//! helper's region (that needs SNP's VMPLs), so the helper checks its static structures
//! before every request. A guest that writes into the region (the `scribble` test option:
//! it overwrites the helper's IDT once the helper has served its first request) gets
//! every later request refused with `CORRUPTED`, naming the structure, while its own
//! memory stays intact. Prints SKIPPED without /dev/kvm.

use fwtable::Guid;
use guest_abi::{fwcfg, services::Request as GuestRequest};
use helper_abi::{
    mailbox::{Op, Request, Status},
    MIGRATION_SECRET_GUID,
};
use sev_platform::{
    emulated::EmulatedPsp,
    owner::{self, Measured},
    Policy, SevBackend,
};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use vmm::{
    mirror::HelperError,
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

type Console = Arc<Mutex<Vec<u8>>>;

fn text(out: &Console) -> String {
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

fn wait_for(out: &Console, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = text(out);
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

/// An SEV guest running the dirty workload, its owner's migration secret injected,
/// scribbling on its helper if `scribble`.
fn guest(kvm: &KvmSystem, psp: &Arc<EmulatedPsp>, scribble: bool) -> (Vm, Console) {
    let policy = Policy(0);
    let session = owner::session(&psp.export_certs().unwrap().pdh, policy).unwrap();
    let backend: Arc<dyn SevBackend> = psp.clone();
    let (console, out) = ConsoleOut::capture();
    let mut files = vec![
        (fwcfg::FILE_WORKLOAD.to_string(), b"dirty".to_vec()),
        (fwcfg::FILE_DIRTY_RATE.to_string(), b"2000".to_vec()),
    ];
    if scribble {
        files.push((fwcfg::FILE_SCRIBBLE.to_string(), vec![]));
    }
    let mut vm = Vm::new(
        kvm,
        VmConfig {
            mem_size: 128 << 20,
            vcpus: 1,
            firmware: Firmware::load(firmware_image::IMAGE.to_vec()).unwrap(),
            console,
            fw_cfg_files: files,
            sev: Some(SevConfig {
                backend,
                policy,
                session: Some(session.launch_session()),
                transport: HypercallTransport::ServicesPage,
            }),
        },
    )
    .unwrap();
    let started = vm.sev_launch_start().unwrap();
    let measured = vm.sev_launch_measure(started).unwrap();
    let verified = owner::verify(
        Measured::Firmware(firmware_image::IMAGE),
        psp.firmware_version(),
        policy,
        session.keys.tik(),
        &owner::encode_base64(&measured.measurement().0),
    )
    .unwrap();
    let secret = (Guid::from_bytes(MIGRATION_SECRET_GUID), vec![0x5e; 32]);
    let packet = owner::secret(&session.keys, &verified, &[secret]).unwrap();
    vm.sev_inject_secret(&measured, &packet.header, &packet.ciphertext, None)
        .unwrap();
    vm.sev_launch_finish(measured).unwrap();
    vm.start().unwrap();
    (vm, out)
}

fn refused_as_corrupted(result: Result<helper_abi::mailbox::Response, HelperError>) -> u32 {
    match result {
        Err(HelperError::Refused {
            status: Status::CORRUPTED,
            index: Some(i),
            ..
        }) => i,
        other => panic!("not refused as CORRUPTED: {other:?}"),
    }
}

#[test]
fn kvm_a_guest_that_writes_into_its_helpers_region_is_refused_and_keeps_its_memory() {
    let Some(kvm) = kvm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    let (mut vm, out) = guest(&kvm, &psp, true);
    wait_for(&out, "migration helper ready");
    // Attaching runs INFO: the helper's first request, checked and served.
    let mut mirror = vm.attach_mirror(&kvm, 1).unwrap();
    assert_eq!(mirror.info().status(), Status::OK);
    let line = wait_for(&out, "scribble: wrote");
    eprintln!("{line}");

    // From now on every request is refused, whatever it asks, naming the IDT (index 2,
    // mirror-helper's `integrity::Structure::Idt`).
    let helper = &mut mirror.helpers_mut()[0];
    let info = Request {
        op: Op::INFO.0,
        ..Request::default()
    };
    assert_eq!(refused_as_corrupted(helper.call_ok(info, &[])), 2);
    let start = Request {
        op: Op::HS_START.0,
        bytes: 32,
        session_id: [1; 16],
        ..Request::default()
    };
    let r = helper.call_ok_with(start, &[], &[0x4e; 32]).map(|(r, _)| r);
    assert_eq!(refused_as_corrupted(r), 2, "no session can start");
    let export = Request {
        op: Op::EXPORT.0,
        count: 1,
        ..Request::default()
    };
    assert_eq!(
        refused_as_corrupted(helper.call_ok(export, &[0x40_0000])),
        2
    );
    let err = helper.call_ok(info, &[]).unwrap_err().to_string();
    assert!(err.contains("CORRUPTED"), "{err}");

    // The guest itself never noticed: its memory checks out.
    wait_for(&out, "filled; rewriting");
    vm.request_guest(GuestRequest::VERIFY_AND_EXIT);
    match vm.wait() {
        VmOutcome::GuestExit(0) => {}
        other => panic!("{other:?}\n{}", text(&out)),
    }
    assert!(text(&out).contains("dirty: verify PASS"));
}

#[test]
fn kvm_an_untouched_helper_passes_its_self_check_request_after_request() {
    let Some(kvm) = kvm() else { return };
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    let (mut vm, out) = guest(&kvm, &psp, false);
    wait_for(&out, "filled; rewriting");
    let mut mirror = vm.attach_mirror(&kvm, 2).unwrap();
    // Both helper vCPUs have entered (each set its TSS busy, bumped the slot counter,
    // walked the page tables): none of that trips the check.
    for _ in 0..20 {
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
            assert_eq!(r.status(), Status::OK);
        }
    }
    vm.stop();
}
