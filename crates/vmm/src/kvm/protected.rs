//! The emulated SEV-ES CPU: what the hardware and KVM do for a vCPU whose register state is
//! protected, done here for the plain KVM vCPUs of the emulated platform.
//!
//! On SEV-ES hardware the CPU loads a vCPU's state from its encrypted VMSA at VMRUN and
//! saves it there at #VMEXIT, KVM refuses the register ioctls (EINVAL,
//! `kvm_arch_vcpu_ioctl_get_regs` & co. with `guest_state_protected`), and an AP starts at
//! its VMSA's RIP on its first SIPI, whatever the vector (`sev_vcpu_deliver_sipi_vector`).
//! On the development machines there is no such CPU: the vCPU is a plain KVM vCPU and the
//! emulated platform keeps its state in a [`VmsaSlot`] (docs/architecture.md §3.2). This
//! module is that CPU, and the only code that moves state between KVM and a slot:
//!
//! - [`KvmVcpu::vmrun`] loads the slot's state into KVM before the vCPU runs (its first run,
//!   and every run after a pause);
//! - [`KvmVcpu::vmexit`] saves KVM's state into the slot when the vCPU thread pauses or
//!   stops, so between runs the state lives only in the slot (ciphertext to the host);
//! - [`KvmVcpu::start_protected_ap`] is the first SIPI: the AP becomes runnable at its
//!   VMSA's entry (the firmware's SEV-ES reset block), the vector ignored.
//!
//! Every other register accessor of [`KvmVcpu`] refuses a protected vCPU with EINVAL, as
//! KVM does; the MSRs KVM itself emulates (local APIC, TSC deadline) stay reachable for the
//! GHCB's MSR exits ([`KvmVcpu::guest_msr_read`]), as they are for KVM's own GHCB handling.
//!
//! The pure part — which x2APIC ICR writes are INIT and SIPI, and the AP start-up state they
//! drive — is at the end ([`decode_icr`], [`ApState`]).

use super::{KvmError, KvmVcpu};
use kvm_bindings::{kvm_mp_state, kvm_msr_entry, kvm_xcr, kvm_xcrs, Msrs, KVM_MP_STATE_RUNNABLE};
use sev_platform::vmsa::{kvm::VMSA_MSRS, VmsaSlot};
use std::sync::Arc;

/// x2APIC ICR (`MSR 0x830`).
pub const MSR_X2APIC_ICR: u32 = 0x830;
/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;

/// How a vCPU's register state is protected.
#[derive(Debug, Default)]
pub enum Protection {
    /// Not protected: plain and SEV guests, and SEV-ES vCPUs before LAUNCH_UPDATE_VMSA.
    #[default]
    None,
    /// SEV-ES on hardware: the CPU keeps the VMSA and KVM refuses the register ioctls
    /// itself; the VMM only refuses them first.
    Hardware,
    /// SEV-ES on the emulated platform: the state lives in the slot between runs.
    Emulated(EmulatedCpu),
}

/// An emulated SEV-ES vCPU's VMSA and what of it KVM can hold on this host.
#[derive(Debug)]
pub struct EmulatedCpu {
    slot: Arc<VmsaSlot>,
    /// The [`VMSA_MSRS`] KVM reads and writes for this vCPU (TSC_AUX needs RDTSCP, ...).
    msrs: Vec<u32>,
    /// Whether KVM_GET/SET_XCRS work for this vCPU.
    xcrs: bool,
    /// Whether KVM holds the vCPU's state now (between `vmrun` and `vmexit`).
    loaded: bool,
}

impl Protection {
    /// Whether the host must not read or set the vCPU's registers.
    pub fn is_protected(&self) -> bool {
        !matches!(self, Protection::None)
    }
}

/// MSRs KVM emulates itself (not in the VMSA), which it serves for an SEV-ES guest's GHCB
/// MSR exits and lets the VMM reach for a protected vCPU: the APIC base, the x2APIC
/// registers, the TSC deadline.
pub fn kvm_emulated_msr(index: u32) -> bool {
    matches!(index, MSR_APIC_BASE | MSR_TSC_DEADLINE | 0x800..=0x8ff)
}

fn einval(vcpu: u32, op: &'static str) -> KvmError {
    KvmError::Protected { vcpu, op }
}

impl KvmVcpu {
    /// Marks the vCPU's state protected by the emulated platform from now on (after
    /// LAUNCH_UPDATE_VMSA encrypted it into `slot`). Its registers in KVM are loaded from
    /// the slot before it next runs.
    pub fn protect_emulated(&mut self, slot: Arc<VmsaSlot>) {
        let msrs = VMSA_MSRS
            .iter()
            .copied()
            .filter(|&m| self.raw_msrs_read(&[m]).is_ok_and(|v| v.len() == 1))
            .collect();
        let xcrs = self.fd.get_xcrs().is_ok();
        self.protection = Protection::Emulated(EmulatedCpu {
            slot,
            msrs,
            xcrs,
            loaded: false,
        });
    }

    /// Marks the vCPU's state protected by the hardware (the kernel keeps it).
    pub fn protect_hardware(&mut self) {
        self.protection = Protection::Hardware;
    }

    /// Whether the vCPU's registers are out of the host's reach.
    pub fn is_protected(&self) -> bool {
        self.protection.is_protected()
    }

    /// Whether the emulated platform protects this vCPU (its exits then follow the
    /// emulated SEV-ES rules).
    pub fn is_emulated_es(&self) -> bool {
        matches!(self.protection, Protection::Emulated(_))
    }

    /// Refuses an accessor on a protected vCPU (EINVAL, as KVM).
    pub(super) fn check_unprotected(&self, op: &'static str) -> Result<(), KvmError> {
        if self.is_protected() {
            return Err(einval(self.id, op));
        }
        Ok(())
    }

    /// VMRUN: loads the vCPU's state from its VMSA slot into KVM if KVM does not hold it.
    /// A no-op for vCPUs the emulated platform does not protect.
    pub fn vmrun(&mut self) -> Result<(), KvmError> {
        let id = self.id;
        let Protection::Emulated(cpu) = &self.protection else {
            return Ok(());
        };
        if cpu.loaded {
            return Ok(());
        }
        let vmsa = cpu.slot.vmrun_load();
        let reg = |e| KvmError::Registers(id, e);
        let base = self.fd.get_sregs().map_err(reg)?;
        self.fd.set_sregs(&vmsa.kvm_sregs(&base)).map_err(reg)?;
        self.fd.set_regs(&vmsa.kvm_regs()).map_err(reg)?;
        self.fd.set_fpu(&vmsa.kvm_fpu()).map_err(reg)?;
        self.fd.set_debug_regs(&vmsa.kvm_debugregs()).map_err(reg)?;
        if cpu.xcrs && vmsa.xcr0 != 0 {
            let mut xcrs = kvm_xcrs {
                nr_xcrs: 1,
                ..Default::default()
            };
            xcrs.xcrs[0] = kvm_xcr {
                xcr: 0,
                reserved: 0,
                value: vmsa.xcr0,
            };
            self.fd.set_xcrs(&xcrs).map_err(reg)?;
        }
        let entries: Vec<kvm_msr_entry> = cpu
            .msrs
            .iter()
            .filter_map(|&index| {
                Some(kvm_msr_entry {
                    index,
                    data: vmsa.msr(index)?,
                    ..Default::default()
                })
            })
            .collect();
        self.raw_msrs_write(&entries)?;
        if let Protection::Emulated(cpu) = &mut self.protection {
            cpu.loaded = true;
        }
        Ok(())
    }

    /// #VMEXIT: saves the vCPU's state from KVM into its VMSA slot (completing a pending
    /// I/O or MMIO first, so the saved RIP is past the instruction). Until the next
    /// [`KvmVcpu::vmrun`] the state lives only in the slot. A no-op for vCPUs the emulated
    /// platform does not protect, and for one whose state is already in its slot.
    pub fn vmexit(&mut self) -> Result<(), KvmError> {
        let id = self.id;
        match &self.protection {
            Protection::Emulated(cpu) if cpu.loaded => {}
            _ => return Ok(()),
        }
        self.settle()?;
        let Protection::Emulated(cpu) = &self.protection else {
            return Ok(());
        };
        let reg = |e| KvmError::Registers(id, e);
        let mut vmsa = cpu.slot.vmrun_load();
        let regs = self.fd.get_regs().map_err(reg)?;
        let sregs = self.fd.get_sregs().map_err(reg)?;
        vmsa.update_from_kvm(&regs, &sregs);
        vmsa.update_fpu_from_kvm(&self.fd.get_fpu().map_err(reg)?);
        vmsa.update_debugregs_from_kvm(&self.fd.get_debug_regs().map_err(reg)?);
        if cpu.xcrs {
            let xcrs = self.fd.get_xcrs().map_err(reg)?;
            if let Some(x) = xcrs
                .xcrs
                .iter()
                .take(xcrs.nr_xcrs as usize)
                .find(|x| x.xcr == 0)
            {
                vmsa.xcr0 = x.value;
            }
        }
        let msrs = cpu.msrs.clone();
        for (index, value) in msrs.iter().zip(self.raw_msrs_read(&msrs)?) {
            vmsa.set_msr(*index, value);
        }
        if let Protection::Emulated(cpu) = &mut self.protection {
            cpu.slot.vmexit_save(&vmsa);
            cpu.loaded = false;
        }
        Ok(())
    }

    /// The first SIPI to a protected AP (emulated platform): it becomes runnable and
    /// starts at its VMSA's RIP when it next runs (`vmrun` loads the state).
    pub fn start_protected_ap(&mut self) -> Result<(), KvmError> {
        if !self.is_emulated_es() {
            return Err(einval(self.id, "start a protected AP"));
        }
        self.fd
            .set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(|e| KvmError::Registers(self.id, e))
    }

    /// RDMSR of an MSR KVM emulates ([`kvm_emulated_msr`]), as KVM serves a GHCB MSR exit;
    /// `None` for any other MSR (the guest raises #GP) or when KVM refuses it.
    pub fn guest_msr_read(&self, index: u32) -> Option<u64> {
        if !kvm_emulated_msr(index) {
            return None;
        }
        self.raw_msrs_read(&[index]).ok()?.first().copied()
    }

    /// WRMSR of an MSR KVM emulates ([`kvm_emulated_msr`]); false for any other MSR or when
    /// KVM refuses the value (the guest raises #GP).
    pub fn guest_msr_write(&self, index: u32, value: u64) -> bool {
        kvm_emulated_msr(index)
            && self
                .raw_msrs_write(&[kvm_msr_entry {
                    index,
                    data: value,
                    ..Default::default()
                }])
                .is_ok()
    }

    /// KVM_GET_MSRS of `indices`: the values of those KVM returned (it stops at the first
    /// it refuses).
    pub(super) fn raw_msrs_read(&self, indices: &[u32]) -> Result<Vec<u64>, KvmError> {
        let id = self.id;
        let mut msrs = Msrs::from_entries(
            &indices
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
        Ok(msrs.as_slice()[..n].iter().map(|e| e.data).collect())
    }

    /// KVM_SET_MSRS of `entries`; an error unless KVM took all of them.
    pub(super) fn raw_msrs_write(&self, entries: &[kvm_msr_entry]) -> Result<(), KvmError> {
        let id = self.id;
        let msrs = Msrs::from_entries(entries)
            .map_err(|_| KvmError::Registers(id, kvm_ioctls::Error::new(libc::E2BIG)))?;
        let n = self
            .fd
            .set_msrs(&msrs)
            .map_err(|e| KvmError::Registers(id, e))?;
        if n != entries.len() {
            return Err(KvmError::Registers(
                id,
                kvm_ioctls::Error::new(libc::EINVAL),
            ));
        }
        Ok(())
    }
}

/// Which CPUs an IPI goes to (x2APIC ICR destination and shorthand).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpiTargets {
    /// The CPU with this x2APIC ID.
    One(u32),
    /// The sender itself.
    Itself,
    /// Every CPU.
    All,
    /// Every CPU but the sender.
    AllButSelf,
}

impl IpiTargets {
    /// Whether vCPU `id` receives an IPI `sender` sent to these targets.
    pub fn includes(self, id: u32, sender: u32) -> bool {
        match self {
            IpiTargets::One(t) => t == id,
            IpiTargets::Itself => id == sender,
            IpiTargets::All => true,
            IpiTargets::AllButSelf => id != sender,
        }
    }
}

/// An INIT or a start-up IPI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartIpi {
    /// INIT.
    Init,
    /// Start-up (the vector does not matter to a protected AP).
    Sipi,
}

/// What a write to the x2APIC ICR asks for (Intel SDM vol. 3 §11.12.9; AMD APM vol. 2
/// §16.5): an INIT or SIPI, which the emulated SEV-ES platform handles as KVM's SEV-ES code
/// does, or any other IPI, which goes to KVM's local APIC as it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcrWrite {
    /// INIT or SIPI to these targets.
    Start(StartIpi, IpiTargets),
    /// Anything else (fixed, NMI, logical destinations, INIT level de-assert, ...).
    Other,
}

/// Decodes an x2APIC ICR value: delivery mode (10:8), destination mode (11), level (14),
/// trigger (15), shorthand (19:18), destination (63:32).
pub fn decode_icr(value: u64) -> IcrWrite {
    let mode = (value >> 8) & 7;
    let logical = value & (1 << 11) != 0;
    let assert = value & (1 << 14) != 0;
    let level_triggered = value & (1 << 15) != 0;
    let kind = match mode {
        5 if assert || !level_triggered => StartIpi::Init,
        6 => StartIpi::Sipi,
        _ => return IcrWrite::Other,
    };
    let targets = match (value >> 18) & 3 {
        0 if logical => return IcrWrite::Other,
        0 => IpiTargets::One((value >> 32) as u32),
        1 => IpiTargets::Itself,
        2 => IpiTargets::All,
        _ => IpiTargets::AllButSelf,
    };
    IcrWrite::Start(kind, targets)
}

/// Where a protected AP stands in its start-up (KVM's `mp_state` and
/// `received_first_sipi` for an SEV-ES vCPU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApState {
    /// Created; waits for INIT.
    WaitForInit,
    /// INIT received; waits for a SIPI.
    WaitForSipi,
    /// Started at its VMSA's entry.
    Running,
}

/// What an AP in `state` does on `ipi`: its next state, and whether it starts now. A SIPI
/// without INIT first is ignored (as the local APIC ignores it), and so is anything sent
/// to a running AP: restarting one goes through the GHCB's AP reset hold, which the
/// emulated platform does not serve.
pub fn ap_transition(state: ApState, ipi: StartIpi) -> (ApState, bool) {
    match (state, ipi) {
        (ApState::WaitForInit, StartIpi::Init) => (ApState::WaitForSipi, false),
        (ApState::WaitForInit, StartIpi::Sipi) => (ApState::WaitForInit, false),
        (ApState::WaitForSipi, StartIpi::Init) => (ApState::WaitForSipi, false),
        (ApState::WaitForSipi, StartIpi::Sipi) => (ApState::Running, true),
        (ApState::Running, StartIpi::Init | StartIpi::Sipi) => (ApState::Running, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icr_writes_decode_to_init_sipi_or_other() {
        // What the firmware sends: INIT assert, then SIPI with vector 8, to APIC ID 2.
        assert_eq!(
            decode_icr(2 << 32 | 0x4500),
            IcrWrite::Start(StartIpi::Init, IpiTargets::One(2))
        );
        assert_eq!(
            decode_icr(2 << 32 | 0x4608),
            IcrWrite::Start(StartIpi::Sipi, IpiTargets::One(2))
        );
        // Shorthands.
        assert_eq!(
            decode_icr(0xc4500),
            IcrWrite::Start(StartIpi::Init, IpiTargets::AllButSelf)
        );
        assert_eq!(
            decode_icr(0x84608),
            IcrWrite::Start(StartIpi::Sipi, IpiTargets::All)
        );
        assert_eq!(
            decode_icr(0x44608),
            IcrWrite::Start(StartIpi::Sipi, IpiTargets::Itself)
        );
        // A fixed IPI, an NMI, the level-triggered INIT de-assert, a logical destination.
        for v in [1 << 32 | 0x40, 1 << 32 | 0x400, 0x8500, 1 << 32 | 0xcd00] {
            assert_eq!(decode_icr(v), IcrWrite::Other, "{v:#x}");
        }
        let t = IpiTargets::AllButSelf;
        assert!(t.includes(1, 0) && !t.includes(0, 0));
        assert!(IpiTargets::One(3).includes(3, 0) && !IpiTargets::One(3).includes(2, 0));
    }

    #[test]
    fn an_ap_starts_on_its_first_sipi_after_init_only() {
        use ApState::*;
        use StartIpi::*;
        let cases = [
            (WaitForInit, Init, WaitForSipi, false),
            (WaitForInit, Sipi, WaitForInit, false),
            (WaitForSipi, Init, WaitForSipi, false),
            (WaitForSipi, Sipi, Running, true),
            (Running, Init, Running, false),
            (Running, Sipi, Running, false),
        ];
        for (from, ipi, to, start) in cases {
            assert_eq!(ap_transition(from, ipi), (to, start), "{from:?} {ipi:?}");
        }
    }

    #[test]
    fn only_kvm_emulated_msrs_are_reachable_on_a_protected_vcpu() {
        for m in [0x1b, 0x6e0, 0x800, 0x80b, 0x830, 0x832, 0x8ff] {
            assert!(kvm_emulated_msr(m), "{m:#x}");
        }
        for m in [0x10, 0x277, 0xc000_0080, 0xc000_0081, 0xc001_0130, 0x900] {
            assert!(!kvm_emulated_msr(m), "{m:#x}");
        }
    }
}
