//! From what an ioctl returned to a [`SevError`], and what the kernel's refusals mean.
//!
//! Pure functions: the backend feeds them the ioctl's return value, `errno` and the
//! firmware status the kernel wrote back; the tests feed them made-up results.

use super::ioctl::SEV_RET_NO_FW_CALL;
use crate::{SevError, SevStatus};

/// The outcome of one SEV ioctl.
///
/// - `rc >= 0`: success (the kernel returns 0 whatever stale value `error` holds).
/// - `rc < 0` and a firmware status (`fw_error` not 0, not `SEV_RET_NO_FW_CALL`): the
///   firmware refused the command — [`SevError::Firmware`] with the command's SEV API name
///   (`op` without its `KVM_SEV_` prefix). The kernel turns every firmware failure into
///   `-EIO`, so the status is what says why.
/// - `rc < 0` otherwise: the kernel refused before or without the firmware —
///   [`SevError::Kernel`] with `op` and `errno`.
pub(crate) fn result(
    op: &'static str,
    rc: libc::c_int,
    errno: i32,
    fw_error: u32,
) -> Result<(), SevError> {
    if rc >= 0 {
        return Ok(());
    }
    if fw_error != 0 && fw_error != SEV_RET_NO_FW_CALL {
        return Err(SevError::Firmware {
            command: op.strip_prefix("KVM_SEV_").unwrap_or(op),
            status: SevStatus(fw_error),
        });
    }
    Err(SevError::Kernel { op, errno })
}

/// What a kernel refusal means, in the terms of the rule that produced it
/// (`arch/x86/kvm/svm/sev.c`, `arch/x86/kvm/x86.c`, `drivers/crypto/ccp/sev-dev.c`), for
/// the errors whose bare errno says little. `None` for anything else.
///
/// The CLI prints it under the error; [`SevError`]'s own message stays the kernel's
/// answer (operation and errno).
pub fn explain(err: &SevError) -> Option<&'static str> {
    let SevError::Kernel { op, errno } = err else {
        return None;
    };
    let hint = match (*op, *errno) {
        ("KVM_CAP_VM_COPY_ENC_CONTEXT_FROM", libc::EINVAL) => {
            "the kernel copies an encryption context only from an SEV VM: the owner is not an SEV VM \
             (no KVM_SEV_INIT on it, or SEV is unavailable on this host), or it is itself a mirror or \
             an SEV-SNP VM; or the mirror is already an SEV VM, already has vCPUs, or flags were set"
        }
        ("KVM_CAP_VM_COPY_ENC_CONTEXT_FROM", libc::EBADF) | ("KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM", libc::EBADF) => {
            "the source file descriptor is not an open KVM VM"
        }
        ("KVM_CAP_VM_COPY_ENC_CONTEXT_FROM", libc::EBUSY) | ("KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM", libc::EBUSY) => {
            "one of the two VMs is in the middle of another context move, or a vCPU is being created"
        }
        ("KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM", libc::EINVAL) => {
            "the kernel moves an encryption context only from an SEV VM into a fresh VM of the same \
             type: the source is not an SEV VM (or is SEV-SNP), the destination is already an SEV VM \
             or of another VM type, or (SEV-ES) the vCPU counts differ or a source VMSA is not yet \
             encrypted"
        }
        (op, libc::ENOTTY) if op.starts_with("KVM_SEV_") || op.starts_with("KVM_MEMORY_ENCRYPT_") => {
            "KVM refused the SEV operation: this host's KVM has no SEV support (not an AMD host with \
             SEV enabled in kvm_amd), or the VM is not an SEV VM yet (KVM_SEV_INIT must come first), \
             or SEV-ES is unavailable"
        }
        (op, libc::EBADF) if op.starts_with("KVM_SEV_") => {
            "the /dev/sev file descriptor the kernel recorded at LAUNCH_START is no longer open"
        }
        ("KVM_SEV_INIT2", libc::EINVAL) | ("KVM_SEV_INIT", libc::EINVAL) | ("KVM_SEV_ES_INIT", libc::EINVAL) => {
            "KVM_SEV_INIT2 needs a VM created with type KVM_X86_SEV_VM or KVM_X86_SEV_ES_VM and the \
             legacy KVM_SEV_INIT/ES_INIT one created with KVM_X86_DEFAULT_VM; either way the VM must \
             not be an SEV VM yet and must have no vCPUs"
        }
        ("KVM_MEMORY_ENCRYPT_REG_REGION", libc::EINVAL) | ("KVM_MEMORY_ENCRYPT_UNREG_REGION", libc::EINVAL) => {
            "a mirror VM cannot (un)register memory (its owner does), or the region was never registered"
        }
        ("FACTORY_RESET", libc::EBUSY) => "guests are running on the platform (state WORKING)",
        (_, libc::EPERM) => "/dev/sev must be opened for writing for this command",
        _ => return None,
    };
    Some(hint)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_whatever_the_error_field_says() {
        assert!(result("KVM_SEV_LAUNCH_START", 0, 0, 0).is_ok());
        assert!(result("KVM_SEV_LAUNCH_START", 0, 0, 0x0a).is_ok());
        assert!(result("KVM_CHECK_EXTENSION", 4, 0, 0).is_ok());
    }

    #[test]
    fn firmware_status_wins_over_errno() {
        let e = result("KVM_SEV_LAUNCH_START", -1, libc::EIO, 0x0a).unwrap_err();
        match &e {
            SevError::Firmware { command, status } => {
                assert_eq!(*command, "LAUNCH_START");
                assert_eq!(*status, SevStatus::BAD_SIGNATURE);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(e.status(), Some(SevStatus::BAD_SIGNATURE));
        assert_eq!(e.errno(), None);
        assert!(e.to_string().contains("LAUNCH_START"), "{e}");
        assert!(e.to_string().contains("BAD_SIGNATURE"), "{e}");

        // /dev/sev commands carry their SEV API name already.
        let e = result("PDH_GEN", -1, libc::EIO, 0x01).unwrap_err();
        assert!(matches!(
            e,
            SevError::Firmware {
                command: "PDH_GEN",
                status: SevStatus::INVALID_PLATFORM_STATE
            }
        ));

        // Every defined status and an undefined one come through unchanged.
        for &s in SevStatus::ALL.iter().skip(1).chain(&[SevStatus(0x99)]) {
            let e = result("KVM_SEV_GUEST_STATUS", -1, libc::EIO, s.0).unwrap_err();
            assert_eq!(e.status(), Some(s));
        }
    }

    #[test]
    fn no_firmware_status_is_a_kernel_error() {
        let e = result("KVM_CAP_VM_COPY_ENC_CONTEXT_FROM", -1, libc::EINVAL, 0).unwrap_err();
        assert!(matches!(
            e,
            SevError::Kernel {
                op: "KVM_CAP_VM_COPY_ENC_CONTEXT_FROM",
                errno: libc::EINVAL
            }
        ));
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert_eq!(e.status(), None);
        let msg = e.to_string();
        assert!(
            msg.starts_with("KVM_CAP_VM_COPY_ENC_CONTEXT_FROM failed"),
            "{msg}"
        );
        assert!(msg.contains("Invalid argument"), "{msg}");

        // SEV_RET_NO_FW_CALL (-1): the firmware was never called.
        let e = result("KVM_SEV_INIT2", -1, libc::ENOMEM, u32::MAX).unwrap_err();
        assert!(matches!(
            e,
            SevError::Kernel {
                op: "KVM_SEV_INIT2",
                errno: libc::ENOMEM
            }
        ));
    }

    #[test]
    fn explanations_name_the_kernel_rule() {
        let copy = SevError::Kernel {
            op: "KVM_CAP_VM_COPY_ENC_CONTEXT_FROM",
            errno: libc::EINVAL,
        };
        assert!(explain(&copy).unwrap().contains("owner is not an SEV VM"));
        let mv = SevError::Kernel {
            op: "KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM",
            errno: libc::EINVAL,
        };
        assert!(explain(&mv).unwrap().contains("source is not an SEV VM"));
        let enotty = SevError::Kernel {
            op: "KVM_SEV_LAUNCH_START",
            errno: libc::ENOTTY,
        };
        assert!(explain(&enotty).unwrap().contains("no SEV support"));
        let region = SevError::Kernel {
            op: "KVM_MEMORY_ENCRYPT_REG_REGION",
            errno: libc::ENOTTY,
        };
        assert!(explain(&region).unwrap().contains("not an SEV VM"));
        let init2 = SevError::Kernel {
            op: "KVM_SEV_INIT2",
            errno: libc::EINVAL,
        };
        assert!(explain(&init2).unwrap().contains("KVM_X86_SEV_VM"));
        assert_eq!(
            explain(&SevError::Kernel {
                op: "KVM_SEV_LAUNCH_START",
                errno: libc::ENOMEM
            }),
            None
        );
        assert_eq!(explain(&SevError::NoDevice("x".into())), None);
        assert_eq!(
            explain(&SevError::Firmware {
                command: "LAUNCH_START",
                status: SevStatus::BAD_SIGNATURE
            }),
            None
        );
    }
}
