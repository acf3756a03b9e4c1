//! What the SEV platform needs from KVM, as a trait the VMM implements.
//!
//! This crate issues no KVM ioctl itself: the VMM's `vmm/src/kvm` is the one home of KVM
//! ioctls, and it implements [`KvmOps`] for each VM it creates over kvm-ioctls
//! (`encrypt_op_sev`, `register_enc_memory_region`, `enable_cap`).
//! The VMM introduces each VM to the platform with [`SevBackend::vm_created`] (with the
//! type it created the VM with, which decides the SEV init command) and each vCPU with
//! [`SevBackend::vcpu_created`]; the hardware backend keeps the handle until
//! [`SevBackend::vm_destroyed`] and issues `KVM_MEMORY_ENCRYPT_OP` (LAUNCH_UPDATE_VMSA
//! included), the encrypted-region registration and the `ENABLE_CAP`s of mirrors and
//! moves through it. The emulated PSP needs no handle (it applies the kernel's rules
//! itself, from the VM type and the vCPUs it was told about).
//!
//! The argument structs (`kvm_sev_cmd` and the payloads it points at, `kvm_enc_region`,
//! `kvm_enable_cap`) are kvm-bindings' types; the hardware backend builds them from
//! borrowed buffers (`hw`), which is what makes [`KvmOps::memory_encrypt_op`] sound to call.
//!
//! [`SevBackend::vm_created`]: crate::SevBackend::vm_created
//! [`SevBackend::vcpu_created`]: crate::SevBackend::vcpu_created
//! [`SevBackend::vm_destroyed`]: crate::SevBackend::vm_destroyed

use kvm_bindings::{kvm_enable_cap, kvm_enc_region, kvm_sev_cmd};
use std::{fmt, os::fd::BorrowedFd};

/// The errno a KVM ioctl failed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&std::io::Error::from_raw_os_error(self.0), f)
    }
}

/// `KVM_CAP_VM_COPY_ENC_CONTEXT_FROM` (kvm.h): on a fresh VM, share another VM's SEV
/// context (a mirror).
pub const KVM_CAP_VM_COPY_ENC_CONTEXT_FROM: u32 = 197;
/// `KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM` (kvm.h): move another VM's SEV context here.
pub const KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM: u32 = 206;
/// `KVM_CAP_VM_TYPES` (kvm.h): `KVM_CHECK_EXTENSION` returns a bit mask of the VM types
/// `KVM_CREATE_VM` accepts (Linux 6.10+, 0 before).
pub const KVM_CAP_VM_TYPES: u32 = 235;

/// The KVM ioctls the SEV platform issues on one VM.
pub trait KvmOps: Send + Sync {
    /// The VM's file descriptor: how another VM's `ENABLE_CAP` names this one (`args[0]`
    /// of the ENC_CONTEXT capabilities).
    fn vm_fd(&self) -> BorrowedFd<'_>;

    /// `KVM_MEMORY_ENCRYPT_OP` with `cmd`; the kernel writes the firmware status back into
    /// `cmd.error`.
    ///
    /// # Safety
    /// `cmd.data` must be 0 or point to the argument struct the kernel reads (and may
    /// write back) for `cmd.id`, with exactly that struct's size and layout, and every
    /// user pointer inside it must be valid for the reads and writes the command makes,
    /// for the duration of the call. `cmd.sev_fd` must be an open `/dev/sev`.
    unsafe fn memory_encrypt_op(&self, cmd: &mut kvm_sev_cmd) -> Result<(), Errno>;

    /// `KVM_MEMORY_ENCRYPT_REG_REGION`: the kernel pins the host range for the guest's
    /// lifetime (it validates the range; nothing is dereferenced on the caller's behalf).
    fn register_enc_region(&self, region: &kvm_enc_region) -> Result<(), Errno>;

    /// `KVM_MEMORY_ENCRYPT_UNREG_REGION` for a range registered before.
    fn unregister_enc_region(&self, region: &kvm_enc_region) -> Result<(), Errno>;

    /// `KVM_ENABLE_CAP` on the VM.
    fn enable_cap(&self, cap: &kvm_enable_cap) -> Result<(), Errno>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_numbers_are_the_kernels() {
        assert_eq!(
            KVM_CAP_VM_COPY_ENC_CONTEXT_FROM,
            kvm_bindings::KVM_CAP_VM_COPY_ENC_CONTEXT_FROM
        );
        assert_eq!(
            KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM,
            kvm_bindings::KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM
        );
        assert_eq!(KVM_CAP_VM_TYPES, kvm_bindings::KVM_CAP_VM_TYPES);
        assert_eq!(
            Errno(libc::EINVAL).to_string(),
            "Invalid argument (os error 22)"
        );
    }
}
