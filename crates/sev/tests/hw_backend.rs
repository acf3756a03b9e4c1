//! The hardware SEV backend without KVM: the development machines have `/dev/kvm` but no
//! `/dev/sev` (docs/architecture.md §3, The emulated platform), so opening `/dev/sev` fails
//! with `NoDevice` and every PSP command says so. Where `/dev/sev` exists the first test
//! runs a real PLATFORM_STATUS instead. The backend's KVM ioctls (the mirror and move
//! capabilities, region registration) go through the VMM's KVM handles and are tested
//! with them: `crates/vmm/tests/sev_hw_kvm.rs`.

use sev_platform::{
    backend::{BackendKind, VmRef},
    hw::HwBackend,
    SevBackend, SevError,
};
use std::path::Path;

#[test]
fn open_without_dev_sev_is_no_device_naming_dev_sev() {
    if Path::new("/dev/sev").exists() {
        eprintln!(
            "SKIPPED open_without_dev_sev_is_no_device_naming_dev_sev: /dev/sev exists; \
             running a real PLATFORM_STATUS instead"
        );
        assert!(HwBackend::available());
        let hw = HwBackend::open().expect("open /dev/sev");
        let status = hw.platform_status().expect("PLATFORM_STATUS");
        eprintln!("PLATFORM_STATUS: {status:?}");
        return;
    }

    assert!(!HwBackend::available());
    let err = HwBackend::open().expect_err("there is no /dev/sev here");
    match &err {
        SevError::NoDevice(why) => assert_eq!(why, "/dev/sev does not exist"),
        other => panic!("expected NoDevice, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("/dev/sev does not exist"), "{msg}");
    assert!(msg.contains("--sev-backend emulated"), "{msg}");
    eprintln!("HwBackend::open(): {msg}");
}

#[test]
fn psp_commands_on_a_kvm_only_backend_need_dev_sev() {
    if Path::new("/dev/sev").exists() {
        eprintln!("SKIPPED psp_commands_on_a_kvm_only_backend_need_dev_sev: /dev/sev exists");
        return;
    }
    let hw = HwBackend::kvm_only();
    assert_eq!(hw.kind(), BackendKind::Hardware);
    assert!(hw.page_cipher(VmRef(0)).is_none());
    assert!(matches!(hw.platform_status(), Err(SevError::NoDevice(_))));
    assert!(matches!(hw.export_certs(), Err(SevError::NoDevice(_))));
    assert!(matches!(hw.rotate_pdh(), Err(SevError::NoDevice(_))));
    assert!(matches!(hw.factory_reset(), Err(SevError::NoDevice(_))));
    // A guest command opens /dev/sev before it touches the VM fd.
    assert!(matches!(
        hw.launch_finish(VmRef(u64::MAX)),
        Err(SevError::NoDevice(_))
    ));
}
