//! The GHCB MSR protocol (56421 §2.3.1, Table 2; Linux `arch/x86/include/asm/sev-common.h`).
//!
//! MSR 0xC001_0130 holds either the GPA of the guest's GHCB (bits 11:0 zero) or a request
//! or response whose code is in bits 11:0 and whose data is in bits 63:12. A guest writes
//! a request, executes VMGEXIT, and reads the hypervisor's response from the same MSR.
//! This is how a guest talks to the hypervisor before it has a GHCB: to learn the
//! protocol versions, to read CPUID, to register its GHCB's GPA, and to ask for
//! termination.

use super::GhcbError;

/// The GHCB MSR (`MSR_AMD64_SEV_ES_GHCB`).
pub const MSR_GHCB: u32 = 0xc001_0130;

/// Codes in bits 11:0 (56421 Table 2; Linux `GHCB_MSR_*`).
pub mod code {
    /// The value is the GHCB's GPA.
    pub const GHCB_GPA: u64 = 0x000;
    /// SEV information response.
    pub const SEV_INFO_RESP: u64 = 0x001;
    /// SEV information request.
    pub const SEV_INFO_REQ: u64 = 0x002;
    /// CPUID request.
    pub const CPUID_REQ: u64 = 0x004;
    /// CPUID response.
    pub const CPUID_RESP: u64 = 0x005;
    /// AP reset hold request.
    pub const AP_RESET_HOLD_REQ: u64 = 0x006;
    /// AP reset hold response.
    pub const AP_RESET_HOLD_RESP: u64 = 0x007;
    /// GHCB GPA registration request.
    pub const REGISTER_GPA_REQ: u64 = 0x012;
    /// GHCB GPA registration response.
    pub const REGISTER_GPA_RESP: u64 = 0x013;
    /// Hypervisor feature request.
    pub const HV_FEATURES_REQ: u64 = 0x080;
    /// Hypervisor feature response.
    pub const HV_FEATURES_RESP: u64 = 0x081;
    /// Termination request.
    pub const TERMINATE_REQ: u64 = 0x100;
}

const CODE_MASK: u64 = 0xfff;
/// Bits 51:0 of the data field (a GFN).
const GFN_MASK: u64 = (1 << 52) - 1;

/// The register a CPUID request asks for (bits 31:30).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidRegister {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl CpuidRegister {
    /// All four, in order.
    pub const ALL: [CpuidRegister; 4] = [
        CpuidRegister::Eax,
        CpuidRegister::Ebx,
        CpuidRegister::Ecx,
        CpuidRegister::Edx,
    ];

    const fn bits(self) -> u64 {
        match self {
            CpuidRegister::Eax => 0,
            CpuidRegister::Ebx => 1,
            CpuidRegister::Ecx => 2,
            CpuidRegister::Edx => 3,
        }
    }

    const fn from_bits(b: u64) -> Self {
        match b & 3 {
            0 => CpuidRegister::Eax,
            1 => CpuidRegister::Ebx,
            2 => CpuidRegister::Ecx,
            _ => CpuidRegister::Edx,
        }
    }

    /// The index of this register in an `[eax, ebx, ecx, edx]` array.
    pub const fn index(self) -> usize {
        self.bits() as usize
    }
}

/// What the guest writes to the GHCB MSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrRequest {
    /// The GHCB is at this page-aligned GPA; a VMGEXIT now means "serve the GHCB".
    Ghcb {
        /// Page-aligned GPA.
        gpa: u64,
    },
    /// Which protocol versions does the hypervisor speak?
    SevInfo,
    /// One register of CPUID `function` (subleaf 0; no XCR0).
    Cpuid {
        /// Leaf.
        function: u32,
        /// Register wanted.
        register: CpuidRegister,
    },
    /// Register the GHCB at this GFN: the hypervisor serves a GHCB only there.
    RegisterGpa {
        /// GPA >> 12.
        gfn: u64,
    },
    /// Which optional features does the hypervisor offer?
    HvFeatures,
    /// AP reset hold (56421 §4.1.9, the MSR-protocol form of `SVM_VMGEXIT_AP_RESET_HOLD`):
    /// hold this vCPU until the hypervisor releases it, which it says in the response.
    ApResetHold,
    /// Stop the guest, with a reason.
    Terminate {
        /// Reason-code set (0 = general, 1 = Linux, ...), 4 bits.
        set: u8,
        /// Reason code within the set.
        reason: u8,
    },
}

impl MsrRequest {
    /// The MSR value.
    pub const fn encode(self) -> u64 {
        match self {
            MsrRequest::Ghcb { gpa } => gpa & !CODE_MASK,
            MsrRequest::SevInfo => code::SEV_INFO_REQ,
            MsrRequest::Cpuid { function, register } => {
                (function as u64) << 32 | register.bits() << 30 | code::CPUID_REQ
            }
            MsrRequest::RegisterGpa { gfn } => (gfn & GFN_MASK) << 12 | code::REGISTER_GPA_REQ,
            MsrRequest::HvFeatures => code::HV_FEATURES_REQ,
            MsrRequest::ApResetHold => code::AP_RESET_HOLD_REQ,
            MsrRequest::Terminate { set, reason } => {
                ((set & 0xf) as u64) << 12 | (reason as u64) << 16 | code::TERMINATE_REQ
            }
        }
    }

    /// Decodes an MSR value a guest wrote. Codes this side does not serve (and responses)
    /// are refused; reserved data bits are ignored, as the specification asks of
    /// receivers.
    pub fn decode(v: u64) -> Result<Self, GhcbError> {
        Ok(match v & CODE_MASK {
            code::GHCB_GPA => MsrRequest::Ghcb { gpa: v },
            code::SEV_INFO_REQ => MsrRequest::SevInfo,
            code::CPUID_REQ => MsrRequest::Cpuid {
                function: (v >> 32) as u32,
                register: CpuidRegister::from_bits(v >> 30),
            },
            code::REGISTER_GPA_REQ => MsrRequest::RegisterGpa {
                gfn: (v >> 12) & GFN_MASK,
            },
            code::HV_FEATURES_REQ => MsrRequest::HvFeatures,
            code::AP_RESET_HOLD_REQ => MsrRequest::ApResetHold,
            code::TERMINATE_REQ => MsrRequest::Terminate {
                set: ((v >> 12) & 0xf) as u8,
                reason: (v >> 16) as u8,
            },
            _ => return Err(GhcbError::MsrProtocol(v)),
        })
    }
}

/// What the hypervisor leaves in the GHCB MSR after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrResponse {
    /// The protocol versions spoken and the C-bit position.
    SevInfo {
        /// Highest version.
        max: u16,
        /// Lowest version.
        min: u16,
        /// Page-table encryption bit (the C-bit) position.
        cbit: u8,
    },
    /// One CPUID register.
    Cpuid {
        /// Register.
        register: CpuidRegister,
        /// Its value.
        value: u32,
    },
    /// The registered GFN, or [`MsrResponse::REGISTER_FAILED`] when refused.
    RegisterGpa {
        /// GPA >> 12.
        gfn: u64,
    },
    /// Hypervisor features (bit 0 SNP, bit 1 SNP AP creation, ...).
    HvFeatures(u64),
    /// The answer to an AP reset hold: `result` (bits 63:12) is non-zero once the
    /// hypervisor released the vCPU; zero means "still held", and the guest asks again
    /// (Linux `sev_es_ap_hlt_loop`, KVM `sev_vcpu_deliver_sipi_vector`).
    ApResetHold {
        /// Non-zero: released.
        result: u64,
    },
}

impl MsrResponse {
    /// The GFN a registration response carries when the hypervisor refuses it (all ones).
    pub const REGISTER_FAILED: u64 = GFN_MASK;

    /// The MSR value.
    pub const fn encode(self) -> u64 {
        match self {
            MsrResponse::SevInfo { max, min, cbit } => {
                (max as u64) << 48 | (min as u64) << 32 | (cbit as u64) << 24 | code::SEV_INFO_RESP
            }
            MsrResponse::Cpuid { register, value } => {
                (value as u64) << 32 | register.bits() << 30 | code::CPUID_RESP
            }
            MsrResponse::RegisterGpa { gfn } => (gfn & GFN_MASK) << 12 | code::REGISTER_GPA_RESP,
            MsrResponse::HvFeatures(f) => (f & GFN_MASK) << 12 | code::HV_FEATURES_RESP,
            MsrResponse::ApResetHold { result } => {
                (result & GFN_MASK) << 12 | code::AP_RESET_HOLD_RESP
            }
        }
    }

    /// Decodes the MSR value a guest reads back; anything but a response is refused.
    pub fn decode(v: u64) -> Result<Self, GhcbError> {
        Ok(match v & CODE_MASK {
            code::SEV_INFO_RESP => MsrResponse::SevInfo {
                max: (v >> 48) as u16,
                min: (v >> 32) as u16,
                cbit: (v >> 24) as u8,
            },
            code::CPUID_RESP => MsrResponse::Cpuid {
                register: CpuidRegister::from_bits(v >> 30),
                value: (v >> 32) as u32,
            },
            code::REGISTER_GPA_RESP => MsrResponse::RegisterGpa {
                gfn: (v >> 12) & GFN_MASK,
            },
            code::HV_FEATURES_RESP => MsrResponse::HvFeatures((v >> 12) & GFN_MASK),
            code::AP_RESET_HOLD_RESP => MsrResponse::ApResetHold {
                result: (v >> 12) & GFN_MASK,
            },
            _ => return Err(GhcbError::MsrProtocol(v)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_match_linux_sev_common_h() {
        // GHCB_MSR_SEV_INFO(2, 1, 51) as KVM answers on a real host.
        assert_eq!(
            MsrResponse::SevInfo {
                max: 2,
                min: 1,
                cbit: 51
            }
            .encode(),
            0x0002_0001_3300_0001
        );
        // GHCB_CPUID_REQ(0x8000001f, GHCB_CPUID_REQ_EBX)
        assert_eq!(
            MsrRequest::Cpuid {
                function: 0x8000_001f,
                register: CpuidRegister::Ebx
            }
            .encode(),
            0x8000_001f_4000_0004
        );
        // GHCB_MSR_REG_GPA_REQ_VAL(0x810)
        assert_eq!(MsrRequest::RegisterGpa { gfn: 0x810 }.encode(), 0x0081_0012);
        // GHCB_SEV_TERM_REASON(1, 4) | GHCB_MSR_TERM_REQ
        assert_eq!(
            MsrRequest::Terminate { set: 1, reason: 4 }.encode(),
            0x0004_1100
        );
        assert_eq!(MsrRequest::SevInfo.encode(), 2);
        assert_eq!(MsrRequest::HvFeatures.encode(), 0x80);
        // GHCB_MSR_AP_RESET_HOLD_REQ, and KVM's answer once a SIPI released the vCPU.
        assert_eq!(MsrRequest::ApResetHold.encode(), 0x006);
        assert_eq!(MsrResponse::ApResetHold { result: 1 }.encode(), 0x1007);
        assert_eq!(MsrRequest::Ghcb { gpa: 0x81_0000 }.encode(), 0x81_0000);
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            MsrRequest::Ghcb { gpa: 0x81_0000 },
            MsrRequest::SevInfo,
            MsrRequest::Cpuid {
                function: 0x8000_001f,
                register: CpuidRegister::Edx,
            },
            MsrRequest::RegisterGpa { gfn: 0xf_ffff_ffff },
            MsrRequest::HvFeatures,
            MsrRequest::ApResetHold,
            MsrRequest::Terminate { set: 0, reason: 1 },
        ];
        for r in requests {
            assert_eq!(MsrRequest::decode(r.encode()), Ok(r), "{r:?}");
        }
        let responses = [
            MsrResponse::SevInfo {
                max: 2,
                min: 1,
                cbit: 0,
            },
            MsrResponse::Cpuid {
                register: CpuidRegister::Ecx,
                value: 0xdead_beef,
            },
            MsrResponse::RegisterGpa { gfn: 0x810 },
            MsrResponse::RegisterGpa {
                gfn: MsrResponse::REGISTER_FAILED,
            },
            MsrResponse::HvFeatures(1),
            MsrResponse::ApResetHold { result: 0 },
            MsrResponse::ApResetHold { result: 1 },
        ];
        for r in responses {
            assert_eq!(MsrResponse::decode(r.encode()), Ok(r), "{r:?}");
        }
    }

    #[test]
    fn unknown_codes_and_mixed_up_directions_are_refused() {
        for v in [0x003, 0x008, 0x011, 0x014, 0x101, 0xfff] {
            assert_eq!(MsrRequest::decode(v), Err(GhcbError::MsrProtocol(v)));
        }
        // A response where a request belongs and the other way round.
        assert!(MsrRequest::decode(MsrResponse::HvFeatures(0).encode()).is_err());
        assert!(MsrResponse::decode(MsrRequest::SevInfo.encode()).is_err());
        assert!(
            MsrResponse::decode(0x81_0000).is_err(),
            "a GPA is no response"
        );
    }
}
