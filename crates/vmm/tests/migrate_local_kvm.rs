//! The VMM's migration primitives on KVM, without a network: dirty logging, pausing,
//! saving vCPU state on one VM and restoring it on another that booted in incoming mode.

use guest_abi::{fwcfg, services::Request};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use vmm::{memory::HostView, vm::VmOutcome, ConsoleOut, Firmware, KvmSystem, Vm, VmConfig};

fn kvm() -> Option<KvmSystem> {
    if !KvmSystem::available() {
        eprintln!("SKIPPED: /dev/kvm is missing; this KVM test did not run");
        return None;
    }
    Some(KvmSystem::open().expect("open /dev/kvm"))
}

fn vm(kvm: &KvmSystem, files: Vec<(String, Vec<u8>)>) -> (Vm, Arc<Mutex<Vec<u8>>>) {
    let (console, out) = ConsoleOut::capture();
    let vm = Vm::new(
        kvm,
        VmConfig {
            mem_size: 128 << 20,
            vcpus: 1,
            firmware: Firmware::load(firmware_image::IMAGE.to_vec()).unwrap(),
            console,
            fw_cfg_files: files,
            sev: None,
        },
    )
    .unwrap();
    (vm, out)
}

fn wait_for(out: &Arc<Mutex<Vec<u8>>>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&out.lock().unwrap()).contains(what) {
        assert!(
            Instant::now() < deadline,
            "no {what:?}:\n{}",
            String::from_utf8_lossy(&out.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn copy(from: &HostView, to: &HostView, gpas: impl IntoIterator<Item = u64>) -> usize {
    let mut page = [0u8; 4096];
    let mut n = 0;
    for gpa in gpas {
        from.read(gpa, &mut page).unwrap();
        to.write(gpa, &page).unwrap();
        n += 1;
    }
    n
}

#[test]
fn kvm_a_running_guest_moves_to_a_second_vm_and_its_memory_checks_out() {
    let Some(kvm) = kvm() else { return };
    let (mut src, src_out) = vm(
        &kvm,
        vec![
            (fwcfg::FILE_WORKLOAD.into(), b"dirty".to_vec()),
            (fwcfg::FILE_DIRTY_RATE.into(), b"20000".to_vec()),
        ],
    );
    src.start().unwrap();
    wait_for(&src_out, "dirty: ");
    let (mut dst, dst_out) = vm(&kvm, vec![(fwcfg::FILE_INCOMING.into(), vec![])]);
    dst.start().unwrap();
    wait_for(&dst_out, "waiting for an incoming migration");

    let tracker = src.dirty_tracker();
    tracker.start().unwrap();
    let (from, to) = (src.host_view(), dst.host_view());
    let all = (0..(128u64 << 20) / 4096).map(|p| p * 4096);
    copy(&from, &to, all);
    std::thread::sleep(Duration::from_millis(200));
    let dirty = tracker.take().unwrap();
    // 20000 pages/s for > 0.2 s, plus the copy time: thousands of pages, not all of RAM.
    assert!(
        dirty.len() > 1000 && dirty.len() < 32768,
        "{} dirty pages",
        dirty.len()
    );
    copy(&from, &to, dirty);

    assert!(src.pause(Duration::from_secs(2)));
    let last = tracker.take().unwrap();
    copy(&from, &to, last);
    let states = src.save_vcpus().unwrap();
    src.stop();

    assert!(dst.pause(Duration::from_secs(2)));
    dst.restore_vcpus(states).unwrap();
    dst.resume();
    dst.request_guest(Request::VERIFY_AND_EXIT);
    let outcome = dst.wait();
    let log = String::from_utf8_lossy(&dst_out.lock().unwrap()).into_owned();
    assert!(
        matches!(outcome, VmOutcome::GuestExit(0)),
        "{outcome:?}\n{log}"
    );
    assert!(log.contains("dirty: verify PASS"), "{log}");
}

#[test]
fn kvm_pages_left_behind_make_the_check_fail() {
    let Some(kvm) = kvm() else { return };
    let (mut src, src_out) = vm(
        &kvm,
        vec![
            (fwcfg::FILE_WORKLOAD.into(), b"dirty".to_vec()),
            (fwcfg::FILE_DIRTY_RATE.into(), b"20000".to_vec()),
        ],
    );
    src.start().unwrap();
    wait_for(&src_out, "dirty: ");
    let (mut dst, dst_out) = vm(&kvm, vec![(fwcfg::FILE_INCOMING.into(), vec![])]);
    dst.start().unwrap();
    wait_for(&dst_out, "waiting for an incoming migration");
    let (from, to) = (src.host_view(), dst.host_view());
    copy(&from, &to, (0..(128u64 << 20) / 4096).map(|p| p * 4096));
    std::thread::sleep(Duration::from_millis(300));
    // No dirty logging: the pages written since the copy are stale on the target. The
    // first copy alone is a consistent (older) snapshot when it takes less than a tick
    // of the workload, so bring the firmware's own state (below the helper region, where
    // the workload keeps its position) up to date: the data pages it claims to have
    // written since are left behind.
    assert!(src.pause(Duration::from_secs(2)));
    copy(&from, &to, (0..(16u64 << 20) / 4096).map(|p| p * 4096));
    let states = src.save_vcpus().unwrap();
    src.stop();
    assert!(dst.pause(Duration::from_secs(2)));
    dst.restore_vcpus(states).unwrap();
    dst.resume();
    dst.request_guest(Request::VERIFY_AND_EXIT);
    let outcome = dst.wait();
    let log = String::from_utf8_lossy(&dst_out.lock().unwrap()).into_owned();
    assert!(
        matches!(outcome, VmOutcome::GuestExit(1)),
        "{outcome:?}\n{log}"
    );
    assert!(String::from_utf8_lossy(&dst_out.lock().unwrap()).contains("dirty: verify FAIL"));
}
