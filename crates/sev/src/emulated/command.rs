//! `KVM_MEMORY_ENCRYPT_OP` sub-command ids (`enum sev_cmd_id` in the kernel's
//! `include/uapi/linux/kvm.h`) and the kernel's gate in front of them
//! (`sev_mem_enc_ioctl` and `is_cmd_allowed_from_mirror` in `arch/x86/kvm/svm/sev.c`).

use std::fmt;

/// A `KVM_MEMORY_ENCRYPT_OP` sub-command id. Unknown values keep their number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SevCommandId(pub u32);

macro_rules! ids {
    ($($name:ident = $value:expr;)*) => {
        impl SevCommandId {
            $(
                #[doc = concat!("`KVM_SEV_", stringify!($name), "`.")]
                pub const $name: SevCommandId = SevCommandId($value);
            )*

            /// The kernel's name without the `KVM_SEV_` prefix, if the id is defined.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// Every defined id.
            pub const ALL: &'static [SevCommandId] = &[$(SevCommandId::$name),*];
        }
    };
}

ids! {
    INIT = 0;
    ES_INIT = 1;
    LAUNCH_START = 2;
    LAUNCH_UPDATE_DATA = 3;
    LAUNCH_UPDATE_VMSA = 4;
    LAUNCH_SECRET = 5;
    LAUNCH_MEASURE = 6;
    LAUNCH_FINISH = 7;
    SEND_START = 8;
    SEND_UPDATE_DATA = 9;
    SEND_UPDATE_VMSA = 10;
    SEND_FINISH = 11;
    RECEIVE_START = 12;
    RECEIVE_UPDATE_DATA = 13;
    RECEIVE_UPDATE_VMSA = 14;
    RECEIVE_FINISH = 15;
    GUEST_STATUS = 16;
    DBG_DECRYPT = 17;
    DBG_ENCRYPT = 18;
    CERT_EXPORT = 19;
    GET_ATTESTATION_REPORT = 20;
    SEND_CANCEL = 21;
    INIT2 = 22;
    SNP_LAUNCH_START = 100;
    SNP_LAUNCH_UPDATE = 101;
    SNP_LAUNCH_FINISH = 102;
}

impl SevCommandId {
    /// Whether the kernel knows the id (others fall to the `default: -EINVAL` case).
    pub fn is_defined(self) -> bool {
        self.name().is_some()
    }

    /// Whether a mirror VM may issue it (`is_cmd_allowed_from_mirror`): only
    /// LAUNCH_UPDATE_VMSA, GUEST_STATUS, DBG_DECRYPT and DBG_ENCRYPT.
    pub fn allowed_on_mirror(self) -> bool {
        matches!(
            self,
            SevCommandId::LAUNCH_UPDATE_VMSA
                | SevCommandId::GUEST_STATUS
                | SevCommandId::DBG_DECRYPT
                | SevCommandId::DBG_ENCRYPT
        )
    }

    /// The kernel's full name (`KVM_SEV_...`), for error messages.
    pub fn kvm_name(self) -> &'static str {
        match self {
            SevCommandId::INIT => "KVM_SEV_INIT",
            SevCommandId::ES_INIT => "KVM_SEV_ES_INIT",
            SevCommandId::LAUNCH_START => "KVM_SEV_LAUNCH_START",
            SevCommandId::LAUNCH_UPDATE_DATA => "KVM_SEV_LAUNCH_UPDATE_DATA",
            SevCommandId::LAUNCH_UPDATE_VMSA => "KVM_SEV_LAUNCH_UPDATE_VMSA",
            SevCommandId::LAUNCH_SECRET => "KVM_SEV_LAUNCH_SECRET",
            SevCommandId::LAUNCH_MEASURE => "KVM_SEV_LAUNCH_MEASURE",
            SevCommandId::LAUNCH_FINISH => "KVM_SEV_LAUNCH_FINISH",
            SevCommandId::GUEST_STATUS => "KVM_SEV_GUEST_STATUS",
            SevCommandId::DBG_DECRYPT => "KVM_SEV_DBG_DECRYPT",
            SevCommandId::DBG_ENCRYPT => "KVM_SEV_DBG_ENCRYPT",
            _ => "KVM_MEMORY_ENCRYPT_OP",
        }
    }
}

impl fmt::Display for SevCommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "KVM_SEV_{n}"),
            None => write!(f, "SEV command {}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_kernel_uapi_and_the_mirror_allow_list() {
        assert_eq!(SevCommandId::ALL.len(), 26);
        assert_eq!(SevCommandId::LAUNCH_UPDATE_VMSA.0, 4);
        assert_eq!(SevCommandId::GUEST_STATUS.0, 16);
        assert_eq!(SevCommandId::INIT2.0, 22);
        let allowed: Vec<u32> = (0..=200)
            .map(SevCommandId)
            .filter(|c| c.is_defined() && c.allowed_on_mirror())
            .map(|c| c.0)
            .collect();
        assert_eq!(allowed, [4, 16, 17, 18]);
        assert!(!SevCommandId(23).is_defined() && !SevCommandId(99).is_defined());
        assert_eq!(SevCommandId(7).to_string(), "KVM_SEV_LAUNCH_FINISH");
        assert_eq!(SevCommandId(50).to_string(), "SEV command 50");
    }
}
