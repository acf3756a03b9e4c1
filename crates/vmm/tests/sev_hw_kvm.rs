//! The hardware SEV backend's KVM ioctls against this machine's kernel, through the VMM's
//! KVM handles (vmm/src/kvm is where every KVM ioctl is issued).
//!
//! There is no `/dev/sev` here (docs/architecture.md §3, The emulated platform), so these
//! tests show the backend really issues its KVM ioctls and reports the kernel's answer
//! clearly: the mirror/move capabilities, issued on two plain KVM VMs, come back EINVAL
//! because the owner is not an SEV VM; region registration on a plain VM is ENOTTY. Where
//! `/dev/kvm` is missing the tests print SKIPPED.

use sev_platform::{
    backend::{LaunchMemory, MemoryAccessError},
    hw::{self, HwBackend},
    SevBackend, SevError,
};
use std::{path::Path, sync::Arc};
use vmm::{kvm::KvmVm, KvmSystem};

/// Two fresh, plain (non-SEV) KVM VMs introduced to `hw`, or `None` (after a loud SKIPPED
/// line) without KVM.
fn two_plain_vms(test: &str, hw: &HwBackend) -> Option<(KvmSystem, Arc<KvmVm>, Arc<KvmVm>)> {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED {test}: /dev/kvm is missing");
        return None;
    }
    let kvm = match KvmSystem::open() {
        Ok(kvm) => kvm,
        Err(e) => {
            eprintln!("SKIPPED {test}: cannot open /dev/kvm: {e}");
            return None;
        }
    };
    let a = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM (owner)"));
    let b = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM (mirror)"));
    for vm in [&a, &b] {
        hw.vm_created(vm.sev_ref(), vm.vm_type(), vm.clone())
            .expect("the hardware backend takes any VM");
    }
    Some((kvm, a, b))
}

#[test]
fn kvm_copy_enc_context_from_a_plain_vm_is_einval() {
    // No /dev/sev needed: the capability is KVM's alone.
    let hw = HwBackend::kvm_only();
    let Some((_kvm, owner, mirror)) =
        two_plain_vms("kvm_copy_enc_context_from_a_plain_vm_is_einval", &hw)
    else {
        return;
    };
    let err = hw
        .copy_enc_context_from(mirror.sev_ref(), owner.sev_ref())
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
    let hw = HwBackend::kvm_only();
    let Some((_kvm, src, dst)) =
        two_plain_vms("kvm_move_enc_context_from_a_plain_vm_is_einval", &hw)
    else {
        return;
    };
    let err = hw
        .move_enc_context_from(dst.sev_ref(), src.sev_ref())
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
    let hw = HwBackend::kvm_only();
    let Some((_kvm, vm, _other)) =
        two_plain_vms("kvm_register_region_on_a_plain_vm_is_enotty", &hw)
    else {
        return;
    };
    let mem = BufferMemory(vec![0; 0x4000]);
    let err = hw
        .register_region(vm.sev_ref(), &mem, 0x1000, 0x2000)
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
        .register_region(vm.sev_ref(), &mem, 0x3000, 0x2000)
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
    // Without SEV in KVM the kernel lists no SEV VM type: legacy (default) VMs it is. The
    // type chosen is one KVM_CREATE_VM accepts, and the VM remembers it for the platform.
    let kvm = KvmSystem::open().expect("open /dev/kvm");
    let types = kvm.supported_vm_types();
    for mode in [hw::SevMode::Sev, hw::SevMode::SevEs] {
        let t = hw::vm_type_for(types, mode);
        let vm = kvm
            .create_vm_with_type(t)
            .unwrap_or_else(|e| panic!("KVM_CREATE_VM type {t:?} (mask {types:#x}): {e}"));
        assert_eq!(vm.vm_type(), t);
        eprintln!("{mode:?}: KVM_CREATE_VM type {t:?} (mask {types:#x})");
    }
}
