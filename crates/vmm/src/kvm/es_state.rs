//! What of an SEV-ES vCPU the host keeps and migrates itself: the state KVM holds outside
//! the encrypted VMSA.
//!
//! The registers of an SEV-ES vCPU are in its VMSA, out of the host's reach; they travel
//! through guest memory (the guest saves them itself, firmware `es_state`). What KVM
//! emulates for the vCPU is the host's state and the host moves it, in the migration
//! stream as a record the source helper authenticates: the local APIC (its registers,
//! timer included), IA32_APIC_BASE (x2APIC mode), the TSC (so time stays continuous for
//! the guest's deadlines) and IA32_TSC_DEADLINE. KVM lets the VMM read and set all of
//! these for a vCPU whose state is protected (`kvm_arch_vcpu_ioctl_get_lapic`, the MSRs
//! KVM emulates itself).
//!
//! The encoding is fixed: a magic, the 1 KiB LAPIC page, three MSRs. A decoder checks the
//! exact length and the magic, so a plain vCPU state (or anything else) is refused.

use super::{protected::MSR_APIC_BASE, protected::MSR_TSC_DEADLINE, KvmError, KvmVcpu};
use kvm_bindings::kvm_lapic_state;

/// IA32_TSC.
const MSR_TSC: u32 = 0x10;
/// "ESV1": this encoding.
const MAGIC: [u8; 4] = *b"ESV1";
/// Bytes of the LAPIC register page.
const LAPIC_LEN: usize = 1024;
/// Encoded size.
pub const ENCODED_LEN: usize = 4 + LAPIC_LEN + 3 * 8;

/// Why an SEV-ES vCPU record could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EsStateError {
    /// Not the encoded size.
    #[error("SEV-ES vCPU record is {0} bytes, expected {ENCODED_LEN}")]
    Length(usize),
    /// Another kind of record (e.g. a plain vCPU's registers).
    #[error("not an SEV-ES vCPU record (magic {0:02x?})")]
    Magic([u8; 4]),
}

/// The host's part of an SEV-ES vCPU.
#[derive(Clone, PartialEq, Eq)]
pub struct EsVcpuState {
    /// The local APIC's register page (`KVM_GET_LAPIC`).
    pub lapic: [u8; LAPIC_LEN],
    /// IA32_APIC_BASE.
    pub apic_base: u64,
    /// IA32_TSC.
    pub tsc: u64,
    /// IA32_TSC_DEADLINE.
    pub tsc_deadline: u64,
}

impl std::fmt::Debug for EsVcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsVcpuState")
            .field("apic_base", &format_args!("{:#x}", self.apic_base))
            .field("tsc", &self.tsc)
            .field("tsc_deadline", &self.tsc_deadline)
            .finish_non_exhaustive()
    }
}

impl EsVcpuState {
    /// The record's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.lapic);
        for v in [self.apic_base, self.tsc, self.tsc_deadline] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Decodes a record from untrusted bytes.
    pub fn from_bytes(b: &[u8]) -> Result<EsVcpuState, EsStateError> {
        if b.len() != ENCODED_LEN {
            return Err(EsStateError::Length(b.len()));
        }
        let magic: [u8; 4] = b[..4].try_into().expect("length checked");
        if magic != MAGIC {
            return Err(EsStateError::Magic(magic));
        }
        let mut lapic = [0u8; LAPIC_LEN];
        lapic.copy_from_slice(&b[4..4 + LAPIC_LEN]);
        let word = |i: usize| {
            let at = 4 + LAPIC_LEN + 8 * i;
            u64::from_le_bytes(b[at..at + 8].try_into().expect("length checked"))
        };
        Ok(EsVcpuState {
            lapic,
            apic_base: word(0),
            tsc: word(1),
            tsc_deadline: word(2),
        })
    }
}

fn lapic_bytes(l: &kvm_lapic_state) -> [u8; LAPIC_LEN] {
    let mut out = [0u8; LAPIC_LEN];
    for (o, r) in out.iter_mut().zip(l.regs.iter()) {
        *o = *r as u8;
    }
    out
}

impl KvmVcpu {
    /// The host's part of this vCPU (what KVM keeps outside a protected vCPU's VMSA).
    /// The vCPU must not be running.
    pub fn es_platform_state(&self) -> Result<EsVcpuState, KvmError> {
        let lapic = self
            .fd
            .get_lapic()
            .map_err(|e| KvmError::Lapic(self.id, e))?;
        let msrs = self.raw_msrs_read(&[MSR_APIC_BASE, MSR_TSC, MSR_TSC_DEADLINE])?;
        let [apic_base, tsc, tsc_deadline] = msrs[..] else {
            return Err(KvmError::Registers(
                self.id,
                kvm_ioctls::Error::new(libc::EINVAL),
            ));
        };
        Ok(EsVcpuState {
            lapic: lapic_bytes(&lapic),
            apic_base,
            tsc,
            tsc_deadline,
        })
    }

    /// Loads the host's part of a vCPU (from [`KvmVcpu::es_platform_state`] on the source).
    /// The vCPU must not be running. The APIC base goes first: it decides whether the
    /// LAPIC page is read in x2APIC form.
    pub fn set_es_platform_state(&self, state: &EsVcpuState) -> Result<(), KvmError> {
        use kvm_bindings::kvm_msr_entry;
        let entry = |index, data| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        self.raw_msrs_write(&[entry(MSR_APIC_BASE, state.apic_base)])?;
        let mut lapic = kvm_lapic_state::default();
        for (r, b) in lapic.regs.iter_mut().zip(state.lapic.iter()) {
            *r = *b as _;
        }
        self.fd
            .set_lapic(&lapic)
            .map_err(|e| KvmError::Lapic(self.id, e))?;
        self.raw_msrs_write(&[
            entry(MSR_TSC, state.tsc),
            entry(MSR_TSC_DEADLINE, state.tsc_deadline),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EsVcpuState {
        let mut lapic = [0u8; LAPIC_LEN];
        lapic[0x20] = 1;
        lapic[0x320] = 0x41;
        EsVcpuState {
            lapic,
            apic_base: 0xfee0_0d00,
            tsc: 123_456_789,
            tsc_deadline: 123_999_999,
        }
    }

    #[test]
    fn records_round_trip_and_anything_else_is_refused() {
        let s = sample();
        let b = s.to_bytes();
        assert_eq!(b.len(), ENCODED_LEN);
        assert_eq!(EsVcpuState::from_bytes(&b), Ok(s));
        for cut in [0, 3, 4, ENCODED_LEN - 1] {
            assert_eq!(
                EsVcpuState::from_bytes(&b[..cut]),
                Err(EsStateError::Length(cut))
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert!(EsVcpuState::from_bytes(&long).is_err());
        let mut other = b.clone();
        other[..4].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(
            EsVcpuState::from_bytes(&other),
            Err(EsStateError::Magic([1, 0, 0, 0]))
        );
    }
}
