//! The hardware SEV backend against this machine's kernel.
//!
//! The development machines have `/dev/kvm` but no `/dev/sev` (DESIGN §2), so these tests
//! show the backend really issues its ioctls and reports the kernel's answer clearly:
//! opening `/dev/sev` fails with `NoDevice`, and the mirror/move capabilities, issued on
//! two plain KVM VMs, come back EINVAL because the owner is not an SEV VM. Where
//! `/dev/sev` exists the first test runs a real PLATFORM_STATUS instead; where `/dev/kvm`
//! is missing the KVM tests print SKIPPED.

use kvm_ioctls::{Kvm, VmFd};
use sev_platform::{
    backend::{BackendKind, LaunchMemory, MemoryAccessError, VmRef},
    hw::{self, HwBackend},
    SevBackend, SevError,
};
use std::{os::fd::AsRawFd, path::Path};

/// Two fresh, plain (non-SEV) KVM VMs, or `None` (after a loud SKIPPED line) without KVM.
fn two_plain_vms(test: &str) -> Option<(Kvm, VmFd, VmFd)> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED {test}: /dev/kvm is missing");
        return None;
    }
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            eprintln!("SKIPPED {test}: cannot open /dev/kvm: {e}");
            return None;
        }
    };
    let a = kvm.create_vm().expect("KVM_CREATE_VM (owner)");
    let b = kvm.create_vm().expect("KVM_CREATE_VM (mirror)");
    Some((kvm, a, b))
}

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
        hw.launch_finish(VmRef(-1)),
        Err(SevError::NoDevice(_))
    ));
}

#[test]
fn kvm_copy_enc_context_from_a_plain_vm_is_einval() {
    let Some((_kvm, owner, mirror)) =
        two_plain_vms("kvm_copy_enc_context_from_a_plain_vm_is_einval")
    else {
        return;
    };
    // No /dev/sev needed: the capability is KVM's alone.
    let hw = HwBackend::kvm_only();
    let err = hw
        .copy_enc_context_from(VmRef(mirror.as_raw_fd()), VmRef(owner.as_raw_fd()))
        .expect_err("the owner is not an SEV VM");
    assert!(
        matches!(
            err,
            SevError::Kernel {
                op: "KVM_CAP_VM_COPY_ENC_CONTEXT_FROM",
                errno: libc::EINVAL
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("KVM_CAP_VM_COPY_ENC_CONTEXT_FROM failed"),
        "{msg}"
    );
    assert!(msg.contains("Invalid argument"), "{msg}");
    let hint = hw::explain(&err).expect("a known kernel rule");
    assert!(hint.contains("owner is not an SEV VM"), "{hint}");
    eprintln!("copy_enc_context_from: {msg}\n  {hint}");
}

#[test]
fn kvm_move_enc_context_from_a_plain_vm_is_einval() {
    let Some((_kvm, src, dst)) = two_plain_vms("kvm_move_enc_context_from_a_plain_vm_is_einval")
    else {
        return;
    };
    let hw = HwBackend::kvm_only();
    let err = hw
        .move_enc_context_from(VmRef(dst.as_raw_fd()), VmRef(src.as_raw_fd()))
        .expect_err("the source is not an SEV VM");
    assert!(
        matches!(
            err,
            SevError::Kernel {
                op: "KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM",
                errno: libc::EINVAL
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM failed"),
        "{msg}"
    );
    assert!(msg.contains("Invalid argument"), "{msg}");
    let hint = hw::explain(&err).expect("a known kernel rule");
    assert!(hint.contains("source is not an SEV VM"), "{hint}");
    eprintln!("move_enc_context_from: {msg}\n  {hint}");
}

/// Guest memory backed by a host buffer (never read or written here: the kernel refuses
/// before it pins anything on a plain VM).
struct BufferMemory(Vec<u8>);

impl LaunchMemory for BufferMemory {
    fn host_addr(&self, gpa: u64, len: u64) -> Option<u64> {
        let end = usize::try_from(gpa.checked_add(len)?).ok()?;
        (end <= self.0.len()).then(|| self.0.as_ptr() as u64 + gpa)
    }
    fn read_plain(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryAccessError> {
        Err(MemoryAccessError {
            gpa,
            len: buf.len() as u64,
        })
    }
    fn write_plain(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryAccessError> {
        Err(MemoryAccessError {
            gpa,
            len: data.len() as u64,
        })
    }
}

#[test]
fn kvm_register_region_on_a_plain_vm_is_enotty() {
    let Some((_kvm, vm, _other)) = two_plain_vms("kvm_register_region_on_a_plain_vm_is_enotty")
    else {
        return;
    };
    let hw = HwBackend::kvm_only();
    let mem = BufferMemory(vec![0; 0x4000]);
    let err = hw
        .register_region(VmRef(vm.as_raw_fd()), &mem, 0x1000, 0x2000)
        .expect_err("a plain VM has no encrypted memory");
    assert!(
        matches!(
            err,
            SevError::Kernel {
                op: "KVM_MEMORY_ENCRYPT_REG_REGION",
                errno: libc::ENOTTY
            }
        ),
        "{err:?}"
    );
    eprintln!(
        "register_region: {err}\n  {}",
        hw::explain(&err).unwrap_or("-")
    );
    // A range the VMM has no mapping for never reaches the kernel.
    let err = hw
        .register_region(VmRef(vm.as_raw_fd()), &mem, 0x3000, 0x2000)
        .expect_err("past the buffer");
    assert!(
        matches!(
            err,
            SevError::Memory(MemoryAccessError {
                gpa: 0x3000,
                len: 0x2000
            })
        ),
        "{err:?}"
    );
}

#[test]
fn kvm_vm_type_for_sev_guests_on_this_kernel() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED kvm_vm_type_for_sev_guests_on_this_kernel: /dev/kvm is missing");
        return;
    }
    // Without SEV in KVM the kernel lists no SEV VM type: legacy (default) VMs it is.
    for mode in [hw::SevMode::Sev, hw::SevMode::SevEs] {
        let t = HwBackend::vm_type(mode).expect("KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES)");
        assert!(
            [
                hw::KVM_X86_DEFAULT_VM,
                hw::KVM_X86_SEV_VM,
                hw::KVM_X86_SEV_ES_VM
            ]
            .contains(&t),
            "{t}"
        );
        eprintln!("{mode:?}: KVM_CREATE_VM type {t}");
    }
}
