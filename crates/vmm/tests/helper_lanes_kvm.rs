//! The migration helper's lanes under /dev/kvm, with the real firmware: a hostile VMM
//! driving mirror VMs of one guest the way the host could — a second mirror attached to
//! a guest whose first mirror holds a session (two vCPUs entering as one lane, as the
//! old register-chosen lane allowed), more helper vCPUs than slots, a RESET or a new
//! key agreement (the old KEYS) sent from one helper vCPU while another seals, RESET and
//! a new session to import into a guest that already runs. What the helper entry
//! (boot.s) and its private slot counter guarantee: no two helper vCPUs ever seal under
//! one nonce, no stack is shared, nothing that changes the session lands inside another
//! vCPU's request, and a guest that ran never imports. And the commit end to end: the
//! source helper's commit parks the source guest's workload (the "migrated out" check),
//! refuses a second migration, and the target helper takes the commit.
//!
//! Each test prints a loud SKIPPED line where /dev/kvm is missing.

use fwtable::Guid;
use guest_abi::{fwcfg, layout};
use helper_abi::{
    mailbox::{Op, Request, Status},
    record::{walk, RecordHeader, HEADER_SIZE},
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
    mirror::{handshake, HelperError, HelperVcpu, MirrorError},
    sev::{HypercallTransport, SevConfig},
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

/// Whether a guest runs its workload or waits as a migration target.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Boot {
    Normal,
    Incoming,
}

/// An SEV guest launched by an owner who gives it the migration secret.
fn owned_guest(
    kvm: &KvmSystem,
    psp: &Arc<EmulatedPsp>,
    workload: &str,
    boot: Boot,
) -> (Vm, Arc<Mutex<Vec<u8>>>) {
    let policy = Policy(0);
    let pdh = psp.export_certs().unwrap().pdh;
    let session = owner::session(&pdh, policy).unwrap();
    let backend: Arc<dyn SevBackend> = psp.clone();
    let (console, out) = ConsoleOut::capture();
    let mut vm = Vm::new(
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
            .chain((boot == Boot::Incoming).then(|| (fwcfg::FILE_INCOMING.into(), Vec::new())))
            .collect(),
            sev: Some(SevConfig {
                backend,
                policy,
                session: Some(session.launch_session()),
                transport: HypercallTransport::ServicesPage,
            }),
        },
    )
    .expect("create VM");
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
    let packet = owner::secret(
        &session.keys,
        &verified,
        &[(Guid::from_bytes(MIGRATION_SECRET_GUID), vec![0x5e; 32])],
    )
    .unwrap();
    vm.sev_inject_secret(&measured, &packet.header, &packet.ciphertext, None)
        .unwrap();
    vm.sev_launch_finish(measured).unwrap();
    vm.start().unwrap();
    wait_for(&out, "migration helper ready");
    (vm, out)
}

fn wait_for(out: &Arc<Mutex<Vec<u8>>>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&out.lock().unwrap()).contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?}:\n{}",
            String::from_utf8_lossy(&out.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Seals `gpas` on `h`; the records.
fn export(h: &mut HelperVcpu, gpas: &[u64]) -> Result<Vec<u8>, HelperError> {
    let r = h.call_ok(
        Request {
            op: Op::EXPORT.0,
            count: gpas.len() as u32,
            round: 1,
            ..Default::default()
        },
        gpas,
    )?;
    let mut records = vec![0u8; r.bytes as usize];
    h.read_window(0, 0, &mut records)?;
    Ok(records)
}

fn import(t: &mut HelperVcpu, records: &[u8]) -> Result<(), HelperError> {
    t.write_window(1, 0, records)?;
    t.call_ok(
        Request {
            op: Op::IMPORT.0,
            window: 1,
            count: walk(records, records.len()).count() as u32,
            bytes: records.len() as u32,
            ..Default::default()
        },
        &[],
    )
    .map(drop)
}

fn nonces(records: &[u8]) -> Vec<[u8; 12]> {
    walk(records, records.len())
        .map(|l| {
            let h = &records[l.unwrap().offset..][..HEADER_SIZE];
            RecordHeader::decode(h.try_into().unwrap()).unwrap().nonce()
        })
        .collect()
}

/// Pages of the guest's firmware data area: private, migratable, never in the region.
const PAGES: [u64; 4] = [
    layout::PML4,
    layout::GDT,
    layout::IDT,
    layout::SEV_SECRET_BASE,
];

#[test]
fn kvm_a_second_mirror_never_seals_under_the_first_ones_nonces() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let (src, _src_out) = owned_guest(&kvm, &psp, "dirty", Boot::Normal);
    let (dst, _dst_out) = owned_guest(&kvm, &psp, "idle", Boot::Incoming);
    let mut first = src.attach_mirror(&kvm, 1).unwrap();
    let mut target = dst.attach_mirror(&kvm, 1).unwrap();
    let (a, t) = (&mut first.helpers_mut()[0], &mut target.helpers_mut()[0]);
    handshake(a, t, [0x21; 16], [0x4e; 32]).unwrap();
    let from_first = export(a, &PAGES[..2]).unwrap();
    // The host attaches a second mirror to the same guest while the session lives: its
    // helper vCPU starts at the same measured entry, with whatever registers the host
    // likes (the old entry took its index from RSI: two vCPUs sealed on lane 0 from
    // sequence 1, under one key). Now it takes the next slot, so its own lane id.
    let mut second = src.attach_mirror(&kvm, 1).unwrap();
    let b = &mut second.helpers_mut()[0];
    assert_ne!(
        b.index(),
        first.helpers_mut()[0].index(),
        "two vCPUs on one slot"
    );
    let from_second = export(b, &PAGES[2..]).unwrap();
    let (na, nb) = (nonces(&from_first), nonces(&from_second));
    assert!(
        na.iter().all(|n| !nb.contains(n)),
        "a nonce was used twice under one key: {na:x?} / {nb:x?}"
    );
    // Both lanes' records are genuine and open at the target, each exactly once.
    let t = &mut target.helpers_mut()[0];
    import(t, &from_first).unwrap();
    import(t, &from_second).unwrap();
    let again = import(t, &from_second).unwrap_err();
    assert!(
        matches!(
            again,
            HelperError::Refused {
                status: Status::REORDER,
                ..
            }
        ),
        "{again}"
    );
}

#[test]
fn kvm_helper_slots_are_never_handed_out_twice() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let (src, _out) = owned_guest(&kvm, &psp, "idle", Boot::Normal);
    let mut first = src.attach_mirror(&kvm, 2).unwrap();
    let mut second = src.attach_mirror(&kvm, 1).unwrap();
    let mut slots: Vec<u16> = first.helpers_mut().iter().map(HelperVcpu::index).collect();
    slots.push(second.helpers_mut()[0].index());
    slots.sort_unstable();
    assert_eq!(slots, [0, 1, 2]);
    // Every slot is taken: a further helper vCPU parks and says so.
    match src.attach_mirror(&kvm, 1) {
        Err(MirrorError::Start(_, HelperError::NoSlot)) => {}
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a fourth helper vCPU got a slot"),
    }
}

#[test]
fn kvm_a_reset_from_another_helper_vcpu_never_lands_inside_a_seal() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let (src, _src_out) = owned_guest(&kvm, &psp, "dirty", Boot::Normal);
    let (dst, _dst_out) = owned_guest(&kvm, &psp, "idle", Boot::Incoming);
    let mut mirror = src.attach_mirror(&kvm, 2).unwrap();
    let mut target = dst.attach_mirror(&kvm, 1).unwrap();
    let mut helpers = mirror.take_helpers();
    let t = &mut target.helpers_mut()[0];
    handshake(&mut helpers[0], t, [0x31; 16], [0x4e; 32]).unwrap();
    // Every page of the first 16 MiB outside the firmware's own areas the helper names.
    let gpas: Vec<u64> = (0x20_0000u64..0x100_0000)
        .step_by(4096)
        .filter(|g| !(layout::SEV_AREA_BASE..layout::SEV_AREA_END).contains(g))
        .take(64)
        .collect();
    let mut resetter = helpers.pop().unwrap();
    let mut sealer = helpers.pop().unwrap();
    // One vCPU seals batch after batch; the other sends RESET as fast as it can.
    let (sealed, resets) = std::thread::scope(|s| {
        let seal = s.spawn(|| {
            let mut ok = Vec::new();
            for _ in 0..20 {
                match export(&mut sealer, &gpas) {
                    Ok(r) => ok.push(r),
                    Err(HelperError::Refused {
                        status: Status::NO_KEYS | Status::BUSY,
                        ..
                    }) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            ok
        });
        let reset = s.spawn(|| {
            let mut statuses = Vec::new();
            for _ in 0..200 {
                let r = resetter
                    .call(
                        Request {
                            op: Op::RESET.0,
                            ..Default::default()
                        },
                        &[],
                    )
                    .unwrap();
                statuses.push(r.status());
                if r.status() == Status::OK {
                    break;
                }
            }
            statuses
        });
        (seal.join().unwrap(), reset.join().unwrap())
    });
    assert!(
        resets.iter().all(|&s| s == Status::OK || s == Status::BUSY),
        "{resets:?}"
    );
    // Every batch the helper reported sealed was sealed whole under the session's key:
    // the target opens each (a RESET inside a seal would have wiped the key mid-batch).
    for records in &sealed {
        import(t, records).unwrap();
    }
}

/// Every page the helper must seal: RAM outside its region that the guest keeps private.
fn private_pages(vm: &Vm, region: (u64, u64)) -> Vec<u64> {
    let view = vm.host_view();
    let states = view.page_states().cloned();
    let mut out = Vec::new();
    let mut index = 0u64;
    for r in vm.ram_regions() {
        for p in 0..r.size / layout::PAGE_SIZE {
            let gpa = r.gpa + p * layout::PAGE_SIZE;
            let private = states
                .as_ref()
                .is_none_or(|s| s.get(index) == vmm::memory::Visibility::Private);
            if private && !(region.0..region.0 + region.1).contains(&gpa) {
                out.push(gpa);
            }
            index += 1;
        }
    }
    out
}

/// A record-window request on `h` with `record` in window 0; the response.
fn window_call(
    h: &mut HelperVcpu,
    op: Op,
    record: &[u8],
) -> Result<helper_abi::mailbox::Response, HelperError> {
    h.write_window(0, 0, record)?;
    h.call_ok(
        Request {
            op: op.0,
            bytes: record.len() as u32,
            ..Default::default()
        },
        &[],
    )
}

#[test]
fn kvm_a_committed_guest_stops_running_and_only_the_target_runs_it() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let (src, src_out) = owned_guest(&kvm, &psp, "dirty", Boot::Normal);
    let (dst, _dst_out) = owned_guest(&kvm, &psp, "idle", Boot::Incoming);
    wait_for(&src_out, "dirty: ");
    let mut source = src.attach_mirror(&kvm, 1).unwrap();
    let mut target = dst.attach_mirror(&kvm, 1).unwrap();
    let region = (source.info().region_base, source.info().region_size);
    let (s, t) = (&mut source.helpers_mut()[0], &mut target.helpers_mut()[0]);
    handshake(s, t, [0x41; 16], [0x4e; 32]).unwrap();
    // Every private page, sealed by the source's helper and opened by the target's.
    for chunk in private_pages(&src, region).chunks(256) {
        let records = export(s, chunk).unwrap();
        import(t, &records).unwrap();
    }
    let m = s
        .call_ok(
            Request {
                op: Op::FINISH.0,
                ..Default::default()
            },
            &[],
        )
        .unwrap();
    let mut manifest = vec![0u8; m.bytes as usize];
    s.read_window(0, 0, &mut manifest).unwrap();
    window_call(t, Op::FINISH, &manifest).unwrap();
    // The source commits: its guest is "migrated out" from here, and its workload, which
    // checks the flag every 10 ms, parks.
    let c = s
        .call_ok(
            Request {
                op: Op::COMMIT.0,
                ..Default::default()
            },
            &[],
        )
        .unwrap();
    wait_for(&src_out, "this guest migrated out; it stops here for good");
    // A second migration of the committed guest (a clone to another target) is refused,
    // also after a RESET.
    s.call_ok(
        Request {
            op: Op::RESET.0,
            ..Default::default()
        },
        &[],
    )
    .unwrap();
    let clone = s.call_with(
        Request {
            op: Op::HS_START.0,
            bytes: 32,
            session_id: [0x42; 16],
            ..Default::default()
        },
        &[],
        &[0x4e; 32],
    );
    assert_eq!(clone.unwrap().0.status(), Status::MIGRATED_OUT);
    // The target takes the commit; its guest may run, and never imports again.
    let mut commit = vec![0u8; c.bytes as usize];
    s.read_window(0, 0, &mut commit).unwrap();
    window_call(t, Op::COMMIT, &commit).unwrap();
    let info = t
        .call_ok(
            Request {
                op: Op::INFO.0,
                ..Default::default()
            },
            &[],
        )
        .unwrap();
    assert_eq!(
        info.info_flags & helper_abi::mailbox::info_flags::INCOMING,
        0
    );
}

#[test]
fn kvm_a_new_key_agreement_from_another_helper_vcpu_never_lands_inside_a_seal() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let (src, _src_out) = owned_guest(&kvm, &psp, "dirty", Boot::Normal);
    let (dst, _dst_out) = owned_guest(&kvm, &psp, "idle", Boot::Incoming);
    let mut mirror = src.attach_mirror(&kvm, 2).unwrap();
    let mut target = dst.attach_mirror(&kvm, 1).unwrap();
    let mut helpers = mirror.take_helpers();
    let t = &mut target.helpers_mut()[0];
    handshake(&mut helpers[0], t, [0x51; 16], [0x4e; 32]).unwrap();
    let gpas: Vec<u64> = (0x20_0000u64..0x100_0000)
        .step_by(4096)
        .filter(|g| !(layout::SEV_AREA_BASE..layout::SEV_AREA_END).contains(g))
        .take(64)
        .collect();
    let mut rekeyer = helpers.pop().unwrap();
    let mut sealer = helpers.pop().unwrap();
    // One vCPU seals; the other tries to start a new session (the old KEYS) as fast as
    // it can. A keyed session is never restarted (BAD_STATE), and nothing that changes
    // the session enters while a request is inside (BUSY): a seal never mixes two
    // sessions' keys or restarts a lane's sequence.
    let (sealed, starts) = std::thread::scope(|s| {
        let seal = s.spawn(|| {
            let mut ok = Vec::new();
            for _ in 0..20 {
                match export(&mut sealer, &gpas) {
                    Ok(r) => ok.push(r),
                    Err(HelperError::Refused { status, .. }) => {
                        assert_ne!(status, Status::OK);
                        break;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            ok
        });
        let start = s.spawn(|| {
            let mut statuses = Vec::new();
            for _ in 0..200 {
                let (r, _) = rekeyer
                    .call_with(
                        Request {
                            op: Op::HS_START.0,
                            bytes: 32,
                            session_id: [0x52; 16],
                            ..Default::default()
                        },
                        &[],
                        &[0x4e; 32],
                    )
                    .unwrap();
                statuses.push(r.status());
                if r.status() == Status::OK {
                    break;
                }
            }
            statuses
        });
        (seal.join().unwrap(), start.join().unwrap())
    });
    assert!(
        starts
            .iter()
            .all(|&s| s == Status::BAD_STATE || s == Status::BUSY),
        "{starts:?}"
    );
    assert_eq!(sealed.len(), 20, "the session was never disturbed");
    // Every batch reported sealed opens at the target under the first session.
    for records in &sealed {
        import(t, records).unwrap();
    }
}

#[test]
fn kvm_a_guest_that_runs_never_imports_again() {
    let Some(kvm) = kvm() else { return };
    let (_dir, psp) = platform();
    let (src, _src_out) = owned_guest(&kvm, &psp, "dirty", Boot::Normal);
    let (dst, _dst_out) = owned_guest(&kvm, &psp, "idle", Boot::Incoming);
    let (other, _other_out) = owned_guest(&kvm, &psp, "dirty", Boot::Normal);
    let mut source = src.attach_mirror(&kvm, 1).unwrap();
    let mut target = dst.attach_mirror(&kvm, 1).unwrap();
    let mut spare = other.attach_mirror(&kvm, 1).unwrap();
    let region = (source.info().region_base, source.info().region_size);
    let (s, t) = (&mut source.helpers_mut()[0], &mut target.helpers_mut()[0]);
    handshake(s, t, [0x61; 16], [0x4e; 32]).unwrap();
    // The whole guest moves; the host keeps the first batch's records.
    let mut kept = Vec::new();
    for chunk in private_pages(&src, region).chunks(256) {
        let records = export(s, chunk).unwrap();
        import(t, &records).unwrap();
        if kept.is_empty() {
            kept = records;
        }
    }
    let m = s
        .call_ok(
            Request {
                op: Op::FINISH.0,
                ..Default::default()
            },
            &[],
        )
        .unwrap();
    let mut manifest = vec![0u8; m.bytes as usize];
    s.read_window(0, 0, &mut manifest).unwrap();
    window_call(t, Op::FINISH, &manifest).unwrap();
    let c = s
        .call_ok(
            Request {
                op: Op::COMMIT.0,
                ..Default::default()
            },
            &[],
        )
        .unwrap();
    let mut commit = vec![0u8; c.bytes as usize];
    s.read_window(0, 0, &mut commit).unwrap();
    window_call(t, Op::COMMIT, &commit).unwrap();
    // The guest runs at the target. The host resets its helper and keys it as a target
    // again (the old RESET + KEYS), to replay the records it kept into the running guest.
    t.call_ok(
        Request {
            op: Op::RESET.0,
            ..Default::default()
        },
        &[],
    )
    .unwrap();
    let o = &mut spare.helpers_mut()[0];
    let again = handshake(o, t, [0x62; 16], [0x4e; 32]).unwrap_err();
    assert!(
        matches!(
            again,
            HelperError::Refused {
                status: Status::NOT_INCOMING,
                ..
            }
        ),
        "{again}"
    );
    let replayed = import(t, &kept).unwrap_err();
    assert!(
        matches!(replayed, HelperError::Refused { .. }),
        "{replayed}"
    );
    // A guest booted normally (it runs) never takes records either.
    o.call_ok(
        Request {
            op: Op::RESET.0,
            ..Default::default()
        },
        &[],
    )
    .unwrap();
    let never = import(o, &kept).unwrap_err();
    assert!(matches!(never, HelperError::Refused { .. }), "{never}");
}
