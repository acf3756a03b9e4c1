//! KVM tests of SEV guests on the emulated platform: the guest owner's launch round trip,
//! what the host can see of guest memory, and the mirror VM's migration helper moving
//! pages between two guests. Each test prints a loud SKIPPED line where /dev/kvm is
//! missing.

use fwtable::Guid;
use guest_abi::{fwcfg, layout, services::Request as GuestRequest};
use helper_abi::{
    mailbox::{Op, Request, Status},
    record::walk,
    MIGRATION_SECRET_GUID,
};
use sev_platform::{
    emulated::EmulatedPsp,
    owner::{self, Measured},
    Policy, SevBackend,
};
use sha2::{Digest, Sha256};
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

fn platform() -> (tempfile::TempDir, Arc<EmulatedPsp>) {
    let dir = tempfile::tempdir().unwrap();
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform")).unwrap());
    (dir, psp)
}

/// A guest running `workload`, as an SEV guest when `sev` is given; "incoming" is an
/// idle guest booted as a migration target.
fn guest(kvm: &KvmSystem, workload: &str, sev: Option<SevConfig>) -> (Vm, Arc<Mutex<Vec<u8>>>) {
    let (console, out) = ConsoleOut::capture();
    let (workload, incoming) = match workload {
        "incoming" => ("idle", true),
        w => (w, false),
    };
    let vm = Vm::new(
        kvm,
        VmConfig {
            mem_size: 128 << 20,
            vcpus: 1,
            firmware: Firmware::load(firmware_image::IMAGE.to_vec()).unwrap(),
            console,
            fw_cfg_files: [
                (fwcfg::FILE_WORKLOAD.into(), workload.as_bytes().to_vec()),
                (fwcfg::FILE_DIRTY_RATE.into(), b"2000".to_vec()),
            ]
            .into_iter()
            .chain(incoming.then(|| (fwcfg::FILE_INCOMING.into(), Vec::new())))
            .collect(),
            sev,
        },
    )
    .expect("create VM");
    (vm, out)
}

fn text(out: &Arc<Mutex<Vec<u8>>>) -> String {
    String::from_utf8_lossy(&out.lock().unwrap()).into_owned()
}

fn wait_for(out: &Arc<Mutex<Vec<u8>>>, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
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

const TEST_GUID: &str = "9cd4c1d0-5c88-4f1b-8e6a-4b0f6c2f3a11";

/// Launches an SEV guest the way a guest owner would: session, measurement check, a
/// secret with `entries`, finish, run.
fn owned_guest(
    kvm: &KvmSystem,
    psp: &Arc<EmulatedPsp>,
    workload: &str,
    entries: &[(Guid, Vec<u8>)],
) -> (Vm, Arc<Mutex<Vec<u8>>>) {
    let policy = Policy(0);
    let pdh = psp.export_certs().unwrap().pdh;
    let session = owner::session(&pdh, policy).unwrap();
    let backend: Arc<dyn SevBackend> = psp.clone();
    let (mut vm, out) = guest(
        kvm,
        workload,
        Some(SevConfig {
            backend,
            policy,
            session: Some(session.launch_session()),
            transport: HypercallTransport::ServicesPage,
        }),
    );
    let started = vm.sev_launch_start().unwrap();
    let measured = vm.sev_launch_measure(started).unwrap();
    let reported = owner::encode_base64(&measured.measurement().0);
    let verified = owner::verify(
        Measured::Firmware(firmware_image::IMAGE),
        psp.firmware_version(),
        policy,
        session.keys.tik(),
        &reported,
    )
    .expect("the owner accepts the measurement of our firmware");
    let packet = owner::secret(&session.keys, &verified, entries).unwrap();
    vm.sev_inject_secret(&measured, &packet.header, &packet.ciphertext, None)
        .unwrap();
    vm.sev_launch_finish(measured).unwrap();
    vm.start().unwrap();
    (vm, out)
}

fn migration_secret() -> (Guid, Vec<u8>) {
    (Guid::from_bytes(MIGRATION_SECRET_GUID), vec![0x5e; 32])
}

#[test]
fn kvm_sev_owner_round_trip_the_guest_reports_the_secrets_hash() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let data = b"owner's disk key, 32 bytes long!".to_vec();
    let guid: Guid = TEST_GUID.parse().unwrap();
    let (mut vm, out) = owned_guest(&kvm, &psp, "idle", &[(guid, data.clone())]);
    wait_for(&out, "firmware: SEV active");
    let line = wait_for(&out, &format!("sev: secret {guid}"));
    let want = Sha256::digest(&data);
    let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
    assert!(line.contains(&hex), "{line} (want sha256 {hex})");
    // The platform reports the guest as launched and running.
    let status = vm.sev_status().unwrap().unwrap();
    assert_eq!(status.state.qemu_name(), "running");
    vm.stop();
}

#[test]
fn kvm_sev_a_wrong_secret_packet_is_refused_and_the_launch_can_go_on() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let policy = Policy(0);
    let session = owner::session(&psp.export_certs().unwrap().pdh, policy).unwrap();
    let backend: Arc<dyn SevBackend> = psp.clone();
    let (mut vm, _out) = guest(
        &kvm,
        "idle",
        Some(SevConfig {
            backend,
            policy,
            session: Some(session.launch_session()),
            transport: HypercallTransport::ServicesPage,
        }),
    );
    let started = vm.sev_launch_start().unwrap();
    let measured = vm.sev_launch_measure(started).unwrap();
    let m = measured.measurement();
    let mut packet = owner::secret(&session.keys, &m, &[migration_secret()]).unwrap();
    packet.ciphertext[0] ^= 1;
    let err = vm
        .sev_inject_secret(&measured, &packet.header, &packet.ciphertext, None)
        .unwrap_err();
    assert!(err.to_string().contains("BAD_MEASUREMENT"), "{err}");
    // Outside the secret area: refused by the VMM before the platform sees it.
    let err = vm
        .sev_inject_secret(
            &measured,
            &packet.header,
            &packet.ciphertext,
            Some(0x10_0000),
        )
        .unwrap_err();
    assert!(err.to_string().contains("secret area"), "{err}");
    packet.ciphertext[0] ^= 1;
    vm.sev_inject_secret(&measured, &packet.header, &packet.ciphertext, None)
        .unwrap();
    vm.sev_launch_finish(measured).unwrap();
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

fn canary_pages(line: &str) -> (u64, u64) {
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let private = hex(line
        .split("private page ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap());
    let shared = hex(line.split("shared page ").nth(1).unwrap().trim());
    (private, shared)
}

#[test]
fn kvm_sev_the_host_sees_private_memory_only_as_ciphertext() {
    let Some(kvm) = kvm() else { return };
    let canary = b"SEVMIRROR-CANARY";
    let ram = 128u64 << 20;

    // A plain guest: the host sees both canaries (so the scan itself works).
    let (mut plain, out) = guest(&kvm, "canary", None);
    plain.start().unwrap();
    let (private, shared) = canary_pages(&wait_for(&out, "canary: private page"));
    let hits = find_all(&plain.host_view(), canary, ram);
    assert!(hits.iter().any(|&a| a / 4096 == private / 4096));
    assert!(hits.iter().any(|&a| a / 4096 == shared / 4096));
    plain.stop();

    // An SEV guest: only the page it announced as shared shows the canary, and the
    // launch secret never appears anywhere.
    let (_dir, psp) = platform();
    let secret = (
        TEST_GUID.parse().unwrap(),
        b"launch secret that must not leak".to_vec(),
    );
    let (mut vm, out) = owned_guest(&kvm, &psp, "canary", std::slice::from_ref(&secret));
    let (private, shared) = canary_pages(&wait_for(&out, "canary: private page"));
    let view = vm.host_view();
    let hits = find_all(&view, canary, ram);
    assert!(!hits.is_empty(), "the shared canary must be visible");
    assert!(
        hits.iter().all(|&a| a / 4096 == shared / 4096),
        "canary visible outside the shared page {shared:#x}: {hits:x?}"
    );
    assert!(
        find_all(&view, &secret.1, ram).is_empty(),
        "the launch secret leaked"
    );
    // The guest (and DBG_DECRYPT, as the policy allows debugging) still reads it.
    let mut plain = [0u8; 16];
    vm.sev_dbg_decrypt(private, &mut plain).unwrap();
    assert_eq!(&plain, canary);
    vm.stop();
}

fn call(
    helper: &mut vmm::mirror::HelperVcpu,
    req: Request,
    gpas: &[u64],
) -> helper_abi::mailbox::Response {
    helper.call(req, gpas).expect("helper call")
}

#[test]
fn kvm_mirror_helper_moves_private_pages_to_a_second_guest_and_rejects_tampering() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let canary = b"source guest's canary 32 bytes!!".to_vec();
    let guid: Guid = TEST_GUID.parse().unwrap();

    // The source keeps rewriting its memory while the helper works next to it.
    let (mut src, src_out) = owned_guest(
        &kvm,
        &psp,
        "dirty",
        &[(guid, canary.clone()), migration_secret()],
    );
    wait_for(&src_out, "dirty: ");
    let mut src_mirror = src.attach_mirror(&kvm, 1).unwrap();
    assert_eq!(src_mirror.info().region_base, layout::HELPER_REGION_BASE);

    // The target: another guest with the same migration secret and its own helper,
    // booted as a migration target.
    let other = (guid, b"target guest's own value 32 b!!!".to_vec());
    let (dst, _dst_out) = owned_guest(&kvm, &psp, "incoming", &[other, migration_secret()]);
    let mut dst_mirror = dst.attach_mirror(&kvm, 1).unwrap();
    let h = &mut src_mirror.helpers_mut()[0];
    let t = &mut dst_mirror.helpers_mut()[0];
    vmm::mirror::handshake(h, t, [0x11; 16], [0x4e; 32]).expect("the helpers agree on a session");

    // Seal the secret page (it holds the canary) and two firmware pages.
    let gpas = [layout::SEV_SECRET_BASE, layout::PML4, layout::GDT];
    let r = call(
        h,
        Request {
            op: Op::EXPORT.0,
            window: 0,
            count: 3,
            round: 1,
            ..Default::default()
        },
        &gpas,
    );
    assert_eq!(r.status(), Status::OK);
    let mut records = vec![0u8; r.bytes as usize];
    h.read_window(0, 0, &mut records).unwrap();
    assert_eq!(walk(&records, records.len()).count(), 3);
    assert!(
        !records.windows(canary.len()).any(|w| w == canary),
        "plaintext in sealed records"
    );
    // Refusals: a GPA in the helper's own region, and an unaligned one.
    let r = call(
        h,
        Request {
            op: Op::EXPORT.0,
            count: 1,
            ..Default::default()
        },
        &[layout::HELPER_REGION_BASE],
    );
    assert_eq!(r.status(), Status::BAD_GPA);
    let r = call(
        h,
        Request {
            op: Op::EXPORT.0,
            count: 1,
            ..Default::default()
        },
        &[0x1234],
    );
    assert_eq!(r.status(), Status::BAD_GPA);

    let import = |t: &mut vmm::mirror::HelperVcpu, bytes: &[u8]| {
        t.write_window(1, 0, bytes).unwrap();
        let count = walk(bytes, bytes.len()).count() as u32;
        call(
            t,
            Request {
                op: Op::IMPORT.0,
                window: 1,
                count,
                bytes: bytes.len() as u32,
                ..Default::default()
            },
            &[],
        )
    };
    let mut tampered = records.clone();
    tampered[100] ^= 0x20;
    assert_eq!(import(t, &tampered).status(), Status::AUTH_FAILED);
    let r = import(t, &records);
    assert_eq!(r.status(), Status::OK);
    assert_eq!(r.count, 3);
    assert_eq!(
        import(t, &records).status(),
        Status::REORDER,
        "a replay must be refused"
    );
    // The target guest's memory now holds the source's canary.
    let mut secret_page = vec![0u8; 4096];
    dst.sev_dbg_decrypt(layout::SEV_SECRET_BASE, &mut secret_page)
        .unwrap();
    assert!(secret_page.windows(canary.len()).any(|w| w == canary));
    // The helper's counters moved.
    assert!(t.last_response().bytes_opened >= 4096);
    let err = t
        .call_ok(
            Request {
                op: Op::EXPORT.0,
                count: 1,
                ..Default::default()
            },
            &[0x2000],
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            HelperError::Refused {
                status: Status::BAD_STATE,
                ..
            }
        ),
        "{err}"
    );

    // The source guest never noticed: its memory check still passes.
    src.request_guest(GuestRequest::VERIFY_AND_EXIT);
    match src.wait() {
        VmOutcome::GuestExit(0) => {}
        other => panic!("{other:?}\n{}", text(&src_out)),
    }
    assert!(text(&src_out).contains("dirty: verify PASS"));
}

#[test]
fn kvm_a_mirror_needs_an_sev_owner_and_a_helper() {
    let Some(kvm) = kvm() else { return };
    let (mut plain, _) = guest(&kvm, "idle", None);
    plain.start().unwrap();
    let err = plain.attach_mirror(&kvm, 1).err().unwrap();
    assert!(err.to_string().contains("not an SEV guest"), "{err}");
    plain.stop();
    let (_dir, psp) = platform();
    let (vm, _) = owned_guest(&kvm, &psp, "idle", &[migration_secret()]);
    let err = vm.attach_mirror(&kvm, 9).err().unwrap();
    assert!(
        err.to_string().contains("provides mailboxes for 3"),
        "{err}"
    );
}
