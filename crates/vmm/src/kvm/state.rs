//! A vCPU's architectural state as KVM exposes it, and its encoding for migration.
//!
//! The state is KVM's own structures (registers, segment and control registers, FPU/SSE,
//! local APIC, a set of MSRs, the multiprocessor state and pending events). They are
//! plain old data, so the encoding is their bytes with a version, a tag and a length per
//! part. A decoder checks every length before it copies, so a hostile stream can set odd
//! register values (the guest's problem) but never make the VMM read or write out of
//! bounds.

use super::{KvmError, KvmVcpu};
use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events,
    Msrs,
};

/// MSRs carried with a vCPU: the TSC (so time stays continuous), its deadline (the
/// firmware's timer), and the syscall/segment MSRs a guest OS may use.
pub const MIGRATED_MSRS: &[u32] = &[
    0x10,        // IA32_TSC
    0x6e0,       // IA32_TSC_DEADLINE
    0x1a0,       // IA32_MISC_ENABLE
    0x277,       // IA32_PAT
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SFMASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
];

/// Encoding version.
const VERSION: u32 = 1;

/// Part tags.
mod tag {
    pub const REGS: u32 = 1;
    pub const SREGS: u32 = 2;
    pub const FPU: u32 = 3;
    pub const LAPIC: u32 = 4;
    pub const MP_STATE: u32 = 5;
    pub const EVENTS: u32 = 6;
    pub const MSRS: u32 = 7;
}

/// Why a state blob could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// The blob ended early.
    #[error("vCPU state ends early (at byte {0})")]
    Truncated(usize),
    /// An unknown version.
    #[error("vCPU state version {0} is not supported (this VMM knows version 1)")]
    Version(u32),
    /// A part has the wrong size for its type.
    #[error("vCPU state part {tag} is {len} bytes, expected {expected}")]
    PartSize {
        /// The part.
        tag: u32,
        /// Its length.
        len: usize,
        /// What it must be.
        expected: usize,
    },
    /// A part is missing or given twice.
    #[error("vCPU state part {0} is missing or given twice")]
    Parts(u32),
    /// An unknown part.
    #[error("vCPU state has an unknown part {0}")]
    UnknownPart(u32),
}

/// The state of one vCPU.
#[derive(Clone)]
pub struct VcpuState {
    regs: kvm_regs,
    sregs: kvm_sregs,
    fpu: kvm_fpu,
    lapic: kvm_lapic_state,
    mp_state: kvm_mp_state,
    events: kvm_vcpu_events,
    msrs: Vec<(u32, u64)>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &format_args!("{:#x}", self.regs.rip))
            .field("cr3", &format_args!("{:#x}", self.sregs.cr3))
            .field("mp_state", &self.mp_state.mp_state)
            .finish_non_exhaustive()
    }
}

/// A plain-old-data KVM structure as bytes.
///
/// # Safety
/// `T` must be a bindgen structure of integers and arrays of integers (no pointers,
/// references or enums with invalid values): every bit pattern is then a valid `T`.
unsafe trait Pod: Copy + Default {}
// SAFETY: all of these are bindgen structs/unions of integers and integer arrays.
unsafe impl Pod for kvm_regs {}
// SAFETY: as above.
unsafe impl Pod for kvm_sregs {}
// SAFETY: as above.
unsafe impl Pod for kvm_fpu {}
// SAFETY: as above.
unsafe impl Pod for kvm_lapic_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_mp_state {}
// SAFETY: as above.
unsafe impl Pod for kvm_vcpu_events {}

fn bytes_of<T: Pod>(v: &T) -> &[u8] {
    // SAFETY: `T: Pod` has no padding-dependent invariants and `v` is a valid reference
    // to size_of::<T>() bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), std::mem::size_of::<T>()) }
}

fn from_bytes<T: Pod>(tag: u32, b: &[u8]) -> Result<T, StateError> {
    if b.len() != std::mem::size_of::<T>() {
        return Err(StateError::PartSize {
            tag,
            len: b.len(),
            expected: std::mem::size_of::<T>(),
        });
    }
    let mut v = T::default();
    // SAFETY: lengths match; `T: Pod` makes any bytes a valid value; the regions are
    // distinct (a local and a borrowed slice).
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), b.len()) };
    Ok(v)
}

impl VcpuState {
    /// Encodes the state: version, then (tag u32, length u32, bytes) per part.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = VERSION.to_le_bytes().to_vec();
        let mut part = |tag: u32, b: &[u8]| {
            out.extend_from_slice(&tag.to_le_bytes());
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        };
        part(tag::REGS, bytes_of(&self.regs));
        part(tag::SREGS, bytes_of(&self.sregs));
        part(tag::FPU, bytes_of(&self.fpu));
        part(tag::LAPIC, bytes_of(&self.lapic));
        part(tag::MP_STATE, bytes_of(&self.mp_state));
        part(tag::EVENTS, bytes_of(&self.events));
        let msrs: Vec<u8> = self
            .msrs
            .iter()
            .flat_map(|(i, v)| i.to_le_bytes().into_iter().chain(v.to_le_bytes()))
            .collect();
        part(tag::MSRS, &msrs);
        out
    }

    /// Decodes a state from untrusted bytes.
    pub fn from_bytes(b: &[u8]) -> Result<VcpuState, StateError> {
        let word = |at: usize| -> Result<u32, StateError> {
            b.get(at..at + 4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .ok_or(StateError::Truncated(at))
        };
        let version = word(0)?;
        if version != VERSION {
            return Err(StateError::Version(version));
        }
        let mut parts: [Option<&[u8]>; 8] = [None; 8];
        let mut at = 4;
        while at < b.len() {
            let (tag, len) = (word(at)?, word(at + 4)? as usize);
            let data = b
                .get(at + 8..at + 8 + len)
                .ok_or(StateError::Truncated(at))?;
            let slot = parts
                .get_mut(tag as usize)
                .filter(|_| tag != 0)
                .ok_or(StateError::UnknownPart(tag))?;
            if slot.replace(data).is_some() {
                return Err(StateError::Parts(tag));
            }
            at += 8 + len;
        }
        let get = |tag: u32| parts[tag as usize].ok_or(StateError::Parts(tag));
        let raw_msrs = get(tag::MSRS)?;
        if raw_msrs.len() % 12 != 0 || raw_msrs.len() / 12 > 64 {
            return Err(StateError::PartSize {
                tag: tag::MSRS,
                len: raw_msrs.len(),
                expected: 12 * MIGRATED_MSRS.len(),
            });
        }
        let msrs = raw_msrs
            .chunks_exact(12)
            .map(|c| {
                let idx = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                let val = u64::from_le_bytes(c[4..12].try_into().expect("8 of 12 bytes"));
                (idx, val)
            })
            .collect();
        Ok(VcpuState {
            regs: from_bytes(tag::REGS, get(tag::REGS)?)?,
            sregs: from_bytes(tag::SREGS, get(tag::SREGS)?)?,
            fpu: from_bytes(tag::FPU, get(tag::FPU)?)?,
            lapic: from_bytes(tag::LAPIC, get(tag::LAPIC)?)?,
            mp_state: from_bytes(tag::MP_STATE, get(tag::MP_STATE)?)?,
            events: from_bytes(tag::EVENTS, get(tag::EVENTS)?)?,
            msrs,
        })
    }

    /// The instruction pointer (for logs and tests).
    pub fn rip(&self) -> u64 {
        self.regs.rip
    }
}

impl KvmVcpu {
    /// Reads the vCPU's state (EINVAL for a protected vCPU). Completes a pending I/O or MMIO first (see `settle`), so
    /// the saved instruction pointer is after the instruction.
    pub fn save_state(&mut self) -> Result<VcpuState, KvmError> {
        self.check_unprotected("save the state")?;
        self.settle()?;
        let id = self.id;
        let mut msrs = Msrs::from_entries(
            &MIGRATED_MSRS
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect::<Vec<_>>(),
        )
        .map_err(|_| KvmError::Registers(id, kvm_ioctls::Error::new(libc::E2BIG)))?;
        let n = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(|e| KvmError::Registers(id, e))?;
        Ok(VcpuState {
            regs: self.fd.get_regs().map_err(|e| KvmError::Registers(id, e))?,
            sregs: self
                .fd
                .get_sregs()
                .map_err(|e| KvmError::Registers(id, e))?,
            fpu: self.fd.get_fpu().map_err(|e| KvmError::Registers(id, e))?,
            lapic: self.fd.get_lapic().map_err(|e| KvmError::Lapic(id, e))?,
            mp_state: self
                .fd
                .get_mp_state()
                .map_err(|e| KvmError::Registers(id, e))?,
            events: self
                .fd
                .get_vcpu_events()
                .map_err(|e| KvmError::Registers(id, e))?,
            msrs: msrs.as_slice()[..n]
                .iter()
                .map(|e| (e.index, e.data))
                .collect(),
        })
    }

    /// Loads a saved state into the vCPU (which must not be running; EINVAL for a
    /// protected vCPU).
    pub fn restore_state(&mut self, state: &VcpuState) -> Result<(), KvmError> {
        self.check_unprotected("load a state")?;
        self.settle()?;
        let id = self.id;
        let reg = |e| KvmError::Registers(id, e);
        self.fd.set_sregs(&state.sregs).map_err(reg)?;
        self.fd.set_regs(&state.regs).map_err(reg)?;
        self.fd.set_fpu(&state.fpu).map_err(reg)?;
        self.fd
            .set_lapic(&state.lapic)
            .map_err(|e| KvmError::Lapic(id, e))?;
        let entries: Vec<kvm_msr_entry> = state
            .msrs
            .iter()
            .filter(|(i, _)| MIGRATED_MSRS.contains(i))
            .map(|&(index, data)| kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        let msrs =
            Msrs::from_entries(&entries).map_err(|_| reg(kvm_ioctls::Error::new(libc::E2BIG)))?;
        self.fd.set_msrs(&msrs).map_err(reg)?;
        self.fd.set_vcpu_events(&state.events).map_err(reg)?;
        self.fd.set_mp_state(state.mp_state).map_err(reg)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> VcpuState {
        let regs = kvm_regs {
            rip: 0xfff0_1234,
            rax: 7,
            ..Default::default()
        };
        let sregs = kvm_sregs {
            cr3: 0x10_0000,
            ..Default::default()
        };
        VcpuState {
            regs,
            sregs,
            fpu: kvm_fpu::default(),
            lapic: kvm_lapic_state::default(),
            mp_state: kvm_mp_state { mp_state: 0 },
            events: kvm_vcpu_events::default(),
            msrs: vec![(0x10, 123), (0x6e0, 456)],
        }
    }

    #[test]
    fn state_round_trips() {
        let s = sample();
        let b = s.to_bytes();
        let back = VcpuState::from_bytes(&b).unwrap();
        assert_eq!(back.to_bytes(), b);
        assert_eq!(back.rip(), 0xfff0_1234);
    }

    #[test]
    fn hostile_blobs_are_refused_without_panicking() {
        let b = sample().to_bytes();
        for cut in 0..b.len() {
            assert!(VcpuState::from_bytes(&b[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = b.clone();
        bad[0] = 2;
        assert_eq!(
            VcpuState::from_bytes(&bad).unwrap_err(),
            StateError::Version(2)
        );
        let mut dup = b.clone();
        dup.extend_from_slice(&b[4..4 + 8 + std::mem::size_of::<kvm_regs>()]);
        assert_eq!(
            VcpuState::from_bytes(&dup).unwrap_err(),
            StateError::Parts(tag::REGS)
        );
        let mut unknown = b.clone();
        unknown.extend_from_slice(&[9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            VcpuState::from_bytes(&unknown).unwrap_err(),
            StateError::UnknownPart(9)
        );
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..1000 {
            let mut junk = b.clone();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % junk.len();
                junk[i] ^= (x >> 32) as u8;
            }
            let _ = VcpuState::from_bytes(&junk);
        }
    }
}
