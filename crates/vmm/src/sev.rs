//! SEV guests in the VMM: the launch sequence (a typestate: start, the VMSAs of an SEV-ES
//! guest, measure, secrets, finish), what the guest sees of SEV (CPUID 0x8000001F, the
//! SEV_STATUS MSR), and the guest's page-conversion hypercall.

use crate::{
    kvm::{KvmSystem, KvmVm},
    memory::{HostView, LaunchView, Visibility},
    vm::{Vm, VmError},
};
use guest_abi::{layout, services::hcall};
use kvm_bindings::kvm_cpuid_entry2;
use sev_platform::{
    backend::{
        BackendKind, GuestStatus, KvmVmType, LaunchMeasurement, LaunchMemory, LaunchSession,
        SecretHeader, VmRef,
    },
    hw::{vm_type_for, SevMode},
    vmsa::{ResetVmsas, VcpuType, VmmType},
    Policy, SevBackend, SevError,
};
use std::sync::Arc;

/// The vCPU model an SEV-ES launch uses unless told otherwise (its family/model/stepping
/// is in every measured VMSA; `sevmirror measure --mode sev-es --vcpu-type EPYC-v4`).
pub const DEFAULT_VCPU_TYPE: &str = "EPYC-v4";

/// SEV_STATUS (AMD APM vol. 2 §15.34.10): bit 0 SEV enabled, bit 1 SEV-ES enabled.
pub const MSR_SEV_STATUS: u32 = 0xc001_0131;
/// The MSRs (base, count) an SEV-ES guest reads and writes without a #VC, because KVM does
/// not intercept them for an SEV-ES vCPU (their values live in the VMSA;
/// `sev_es_init_vmcb` and the direct-access MSRs of `arch/x86/kvm/svm/svm.c`): EFER, PAT,
/// the SYSENTER and SYSCALL MSRs, the FS/GS bases, KernelGSBase, TSC_AUX, XSS. (SEV_STATUS
/// and the GHCB MSR need no #VC either; on the emulated platform the VMM serves them.)
pub const ES_MSRS_WITHOUT_VC: &[(u32, u32)] = &[
    (0x174, 3),       // SYSENTER_CS, _ESP, _EIP
    (0x277, 1),       // PAT
    (0xda0, 1),       // XSS
    (0xc000_0080, 5), // EFER, STAR, LSTAR, CSTAR, SFMASK
    (0xc000_0100, 4), // FS_BASE, GS_BASE, KernelGSBase, TSC_AUX
];

/// SEV_STATUS bit 1: SEV-ES is active.
pub const SEV_STATUS_ES: u64 = 1 << 1;
/// CPUID 0x8000001F EAX bit 3: SEV-ES.
pub const CPUID_SEV_ES: u32 = 1 << 3;
/// KVM's paravirtual feature bit for KVM_HC_MAP_GPA_RANGE (leaf 0x40000001 EAX).
pub const KVM_FEATURE_HC_MAP_GPA_RANGE: u32 = 1 << 16;
/// `-KVM_EINVAL` as the guest reads it.
const HC_EINVAL: u64 = (-22i64) as u64;

/// How the guest reaches the host for hypercalls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HypercallTransport {
    /// The guest-services page (works everywhere, the only way on kvm_pvm).
    ServicesPage,
    /// VMMCALL, seen as KVM_EXIT_HYPERCALL (SEV hardware hosts).
    Vmmcall,
}

/// What the user asked for an SEV guest.
#[derive(Clone)]
pub struct SevConfig {
    /// The platform.
    pub backend: Arc<dyn SevBackend>,
    /// The guest policy.
    pub policy: Policy,
    /// The guest owner's DH certificate and session; without them the platform makes
    /// its own transport keys.
    pub session: Option<LaunchSession>,
    /// How the guest announces page conversions.
    pub transport: HypercallTransport,
}

/// Where an SEV guest is in its launch (SEV API spec 0.24 §6 guest states).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchPhase {
    /// KVM_SEV_INIT done; LAUNCH_START not yet.
    Initialized,
    /// LAUNCH_START and LAUNCH_UPDATE_DATA done (LUPDATE).
    Updating,
    /// LAUNCH_MEASURE done (LSECRET).
    Measured,
    /// LAUNCH_FINISH done: the guest may run.
    Finished,
}

/// The VMM's record of an SEV guest.
pub(crate) struct SevGuest {
    pub(crate) config: SevConfig,
    pub(crate) vm_ref: VmRef,
    pub(crate) handle: Option<u32>,
    pub(crate) phase: LaunchPhase,
    pub(crate) measurement: Option<LaunchMeasurement>,
    /// SEV-ES (the policy's ES bit): vCPU state encrypted in VMSAs.
    pub(crate) es: bool,
}

/// The KVM VM type to create for a guest, and the type the SEV platform is told it has.
///
/// The hardware backend gets what the kernel offers for the mode (QEMU's choice,
/// `hw::vm_type_for`), for both. The emulated platform runs its guests on plain VMs (the
/// only type this machine's KVM has; docs/architecture.md §4) and models a kernel with the
/// SEV VM types for SEV-ES guests: `KVM_X86_SEV_ES_VM` and `KVM_SEV_INIT2`, so the VMSAs
/// carry the vCPUs' FPU state as `sevmirror measure --mode sev-es` (and sev-snp-measure)
/// computes by default (`--vmm-type qemu`). Plain SEV guests keep the legacy
/// `KVM_SEV_INIT` there (their digest is the same either way).
pub fn vm_types(sev: Option<&SevConfig>, kvm: &KvmSystem) -> (KvmVmType, KvmVmType) {
    let Some(sev) = sev else {
        return (KvmVmType::Default, KvmVmType::Default);
    };
    let mode = SevMode::from_policy(sev.policy);
    match (sev.backend.kind(), mode) {
        (BackendKind::Hardware, mode) => {
            let t = vm_type_for(kvm.supported_vm_types(), mode);
            (t, t)
        }
        (BackendKind::Emulated, SevMode::Sev) => (KvmVmType::Default, KvmVmType::Default),
        (BackendKind::Emulated, SevMode::SevEs) => (KvmVmType::Default, KvmVmType::SevEs),
    }
}

impl SevGuest {
    /// Introduces the fresh VM to the platform as a VM of `platform_type` (see
    /// [`vm_types`]), then KVM_SEV_INIT (KVM_SEV_ES_INIT, or INIT2, for an SEV-ES policy)
    /// and the SEV_STATUS and GHCB MSR exits.
    pub(crate) fn init(
        kvm_vm: &Arc<KvmVm>,
        config: SevConfig,
        platform_type: KvmVmType,
    ) -> Result<SevGuest, VmError> {
        let vm_ref = kvm_vm.sev_ref();
        let es = config.policy.has(Policy::ES);
        // The VM exists for the platform from now on (both backends refuse commands on
        // VMs they were not told about, as the kernel does on a closed fd) until the
        // SevGuest is dropped, on the error paths below too.
        config
            .backend
            .vm_created(vm_ref, platform_type, kvm_vm.clone())?;
        let guest = SevGuest {
            config,
            vm_ref,
            handle: None,
            phase: LaunchPhase::Initialized,
            measurement: None,
            es,
        };
        guest.config.backend.init_vm(vm_ref, es)?;
        if es && guest.config.backend.kind() == BackendKind::Emulated {
            // Emulated SEV-ES: every MSR access that raises #VC on hardware exits (and
            // strict mode stops the guest there); SEV_STATUS and the GHCB MSR exit too,
            // the VMM serves them.
            kvm_vm.trap_msrs_except(ES_MSRS_WITHOUT_VC)?;
        } else {
            kvm_vm.trap_msrs(&[MSR_SEV_STATUS, guest_abi::ghcb::msr::MSR_GHCB])?;
        }
        if guest.config.transport == HypercallTransport::Vmmcall {
            kvm_vm.enable_hypercall_exit(hcall::MAP_GPA_RANGE)?;
        }
        Ok(guest)
    }

    /// The value of SEV_STATUS for this guest: bit 0 SEV, bit 1 SEV-ES.
    pub(crate) fn status_msr(&self) -> u64 {
        1 | u64::from(self.es) << 1
    }
}

impl Drop for SevGuest {
    /// The VM is gone for the platform (its context is released, or kept for its mirrors),
    /// whether the VM ran or failed half-built.
    fn drop(&mut self) {
        self.config.backend.vm_destroyed(self.vm_ref);
    }
}

/// Adjusts a vCPU's CPUID for SEV (or, with `None`, hides SEV from a plain guest):
/// leaf 0x8000001F advertises SEV with a C-bit position of 0 — on the emulated platform
/// encryption happens at the host boundary, so the guest's page tables need no C-bit —
/// and KVM's MAP_GPA_RANGE feature bit says which hypercall transport to use.
pub fn patch_cpuid(
    cpuid: &mut kvm_bindings::CpuId,
    sev: Option<HypercallTransport>,
) -> Result<(), VmError> {
    let leaf = 0x8000_001f;
    let mut found = false;
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x8000_0000 if sev.is_some() => e.eax = e.eax.max(leaf),
            0x8000_001f => {
                found = true;
                // EAX bit 1: SEV; EBX[5:0] C-bit position, [11:6] physical address
                // reduction; ECX: encrypted guests supported; EDX: minimum SEV ASID.
                (e.eax, e.ebx, e.ecx, e.edx) = match sev {
                    Some(_) => (1 << 1, 0, 15, 1),
                    None => (0, 0, 0, 0),
                };
            }
            0x4000_0001 => {
                e.eax &= !KVM_FEATURE_HC_MAP_GPA_RANGE;
                if sev == Some(HypercallTransport::Vmmcall) {
                    e.eax |= KVM_FEATURE_HC_MAP_GPA_RANGE;
                }
            }
            _ => {}
        }
    }
    if !found && sev.is_some() {
        cpuid
            .push(kvm_cpuid_entry2 {
                function: leaf,
                eax: 1 << 1,
                ecx: 15,
                edx: 1,
                ..Default::default()
            })
            .map_err(|_| VmError::Cpuid)?;
    }
    Ok(())
}

/// Announces SEV-ES in CPUID 0x8000001F EAX (bit 3) on a table [`patch_cpuid`] made for an
/// SEV guest.
pub fn patch_cpuid_es(cpuid: &mut kvm_bindings::CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == 0x8000_001f {
            e.eax |= CPUID_SEV_ES;
        }
    }
}

/// The C-bit position and the physical-address reduction the guest's CPUID 0x8000001F
/// announces (EBX[5:0] and EBX[11:6]): what `query-sev-capabilities` reports. Both 0 on
/// the emulated platform, where encryption happens at the host boundary
/// (docs/architecture.md §3).
pub fn cbit_and_reduction(cpuid: &[kvm_cpuid_entry2]) -> Option<(u32, u32)> {
    cpuid
        .iter()
        .find(|e| e.function == 0x8000_001f)
        .map(|e| (e.ebx & 0x3f, (e.ebx >> 6) & 0x3f))
}

/// Carries out KVM_HC_MAP_GPA_RANGE (`Documentation/virt/kvm/x86/hypercalls.rst`):
/// args = gpa, page count, attributes (bits 3:0 page size 4K/2M/1G, bit 4 encrypted).
/// Returns 0, or `-KVM_EINVAL` for a malformed or out-of-RAM range (nothing changes then).
pub(crate) fn map_gpa_range(view: &HostView, args: [u64; 3]) -> u64 {
    let [gpa, npages, attrs] = args;
    let page_size = match attrs & 0xf {
        0 => layout::PAGE_SIZE,
        1 => layout::LARGE_PAGE_SIZE,
        2 => 1 << 30,
        _ => return HC_EINVAL,
    };
    if attrs & !0x1f != 0 || !gpa.is_multiple_of(page_size) {
        return HC_EINVAL;
    }
    let Some(len) = npages.checked_mul(page_size) else {
        return HC_EINVAL;
    };
    let v = if attrs & hcall::MAP_GPA_RANGE_ENCRYPTED != 0 {
        Visibility::Private
    } else {
        Visibility::Shared
    };
    match view.convert(gpa, len, v) {
        Ok(()) => 0,
        Err(_) => HC_EINVAL,
    }
}

/// LAUNCH_START and the firmware's LAUNCH_UPDATE_DATA are done: the guest is in LUPDATE.
/// For an SEV-ES guest, [`Vm::sev_launch_update_vmsa`] comes next (then, with helper
/// vCPUs, `Vm::sev_launch_mirror`).
pub struct LaunchStarted {
    /// LAUNCH_UPDATE_VMSA is done.
    vmsas: bool,
    /// The SEV hashes table is measured.
    hashes: bool,
}

impl LaunchStarted {
    /// Whether the owner's LAUNCH_UPDATE_VMSA is done (a mirror's VMSAs come after it).
    pub(crate) fn vmsas_done(&self) -> bool {
        self.vmsas
    }
}

/// LAUNCH_MEASURE is done: the guest owner may check the measurement and inject
/// secrets before the launch finishes.
#[derive(Debug)]
pub struct LaunchMeasured {
    measurement: LaunchMeasurement,
}

impl LaunchMeasured {
    /// The 48 bytes LAUNCH_MEASURE returned.
    pub fn measurement(&self) -> LaunchMeasurement {
        self.measurement
    }

    /// A measured launch for the controller's state tests (no VM behind it).
    #[cfg(test)]
    pub(crate) fn for_tests() -> LaunchMeasured {
        LaunchMeasured {
            measurement: LaunchMeasurement([0; 48]),
        }
    }
}

fn sev_mut(vm: &mut Vm) -> Result<&mut SevGuest, VmError> {
    vm.sev.as_mut().ok_or(VmError::NotSev)
}

impl Vm {
    /// LAUNCH_START with the configured policy and session, then LAUNCH_UPDATE_DATA over
    /// the whole firmware image, as QEMU does for OVMF's flash.
    pub fn sev_launch_start(&mut self) -> Result<LaunchStarted, VmError> {
        let rom_range = self.rom.gpa_range();
        let view = LaunchView::new(&self.ram, &self.rom);
        let sev = self.sev.as_mut().ok_or(VmError::NotSev)?;
        let handle = sev.config.backend.launch_start(
            sev.vm_ref,
            sev.config.policy,
            sev.config.session.as_ref(),
        )?;
        sev.handle = Some(handle);
        sev.phase = LaunchPhase::Updating;
        sev.config.backend.launch_update_data(
            sev.vm_ref,
            &view,
            rom_range.start,
            rom_range.end - rom_range.start,
        )?;
        Ok(LaunchStarted {
            vmsas: false,
            hashes: false,
        })
    }

    /// Measured direct boot: writes the SEV hashes table (`DirectBoot::hashes_table`) at
    /// the start of the page the firmware's footer names and measures those bytes with a
    /// LAUNCH_UPDATE_DATA, right after the firmware and before any VMSA, as QEMU's
    /// `sev_add_kernel_loader_hashes` does for `-kernel` with `kernel-hashes=on`. The
    /// launch digest is then SHA-256(firmware ‖ table [‖ VMSAs]), what `sevmirror measure
    /// --kernel ...` and sev-snp-measure compute. The table is plaintext the host writes
    /// before the guest exists (through the platform's launch view, as QEMU copies it into
    /// guest RAM); LAUNCH_UPDATE_DATA makes it the guest's, private and measured.
    pub fn sev_launch_update_hashes(
        &mut self,
        started: LaunchStarted,
        table: &[u8; os_loader::hashes::PADDED_SIZE],
    ) -> Result<LaunchStarted, VmError> {
        if started.vmsas || started.hashes {
            return Err(VmError::HashesOutOfOrder);
        }
        let (gpa, _) = self.firmware_hashes_area.ok_or(VmError::NoHashesArea)?;
        let view = LaunchView::new(&self.ram, &self.rom);
        let sev = self.sev.as_ref().ok_or(VmError::NotSev)?;
        view.write_plain(gpa, table).map_err(|e| {
            VmError::Memory(crate::memory::MemoryError::OutOfRange {
                gpa: e.gpa,
                len: e.len as usize,
            })
        })?;
        sev.config
            .backend
            .launch_update_data(sev.vm_ref, &view, gpa, table.len() as u64)?;
        Ok(LaunchStarted {
            hashes: true,
            ..started
        })
    }

    /// LAUNCH_UPDATE_VMSA (SEV-ES): every vCPU's registers are set to its reset state for
    /// `vcpu_type`, as QEMU sets them before this command (the boot vCPU at the reset
    /// vector, the others at the AP entry of the firmware's SEV-ES reset block,
    /// `sev_platform::vmsa::ResetVmsas`), then the platform encrypts and measures them in
    /// vCPU order. From then on the host can neither read nor set those vCPUs' registers
    /// (EINVAL, as KVM), and on the emulated platform their state lives in their VMSA slots
    /// between runs (`kvm::protected`).
    pub fn sev_launch_update_vmsa(
        &mut self,
        started: LaunchStarted,
        vcpu_type: VcpuType,
    ) -> Result<LaunchStarted, VmError> {
        let sev = self.sev.as_ref().ok_or(VmError::NotSev)?;
        if !sev.es {
            return Err(VmError::NotEs);
        }
        if started.vmsas || !self.handles.is_empty() {
            return Err(VmError::VmsasDone);
        }
        // QEMU + KVM_SEV_INIT2 reset state; the platform drops the FPU part itself for a
        // legacy KVM_SEV_ES_INIT VM, as the kernel does.
        let vmsas = ResetVmsas::for_firmware(self.rom.bytes(), vcpu_type, VmmType::Qemu)
            .and_then(|r| r.all(self.pending.len() as u32))
            .map_err(VmError::Vmsa)?;
        for (vcpu, vmsa) in self.pending.iter().zip(&vmsas) {
            let base = vcpu.sregs()?;
            vcpu.set_sregs(&vmsa.kvm_sregs(&base))?;
            vcpu.set_regs(&vmsa.kvm_regs())?;
            vcpu.set_fpu(&vmsa.kvm_fpu())?;
        }
        let (backend, vm_ref) = (sev.config.backend.clone(), sev.vm_ref);
        let result = backend.launch_update_vmsa(vm_ref, &vmsas);
        // Whatever the outcome, the vCPUs the platform encrypted are protected from now on
        // (a failure keeps those done before it, as the kernel's loop does).
        for (index, vcpu) in (0u32..).zip(self.pending.iter_mut()) {
            match backend.protected_vcpu_state(vm_ref, index) {
                Some(slot) => vcpu.protect_emulated(slot),
                None if result.is_ok() && backend.kind() == BackendKind::Hardware => {
                    vcpu.protect_hardware()
                }
                None => {}
            }
        }
        result?;
        Ok(LaunchStarted {
            vmsas: true,
            ..started
        })
    }

    /// LAUNCH_MEASURE (for an SEV-ES guest, after [`Vm::sev_launch_update_vmsa`]).
    pub fn sev_launch_measure(
        &mut self,
        started: LaunchStarted,
    ) -> Result<LaunchMeasured, VmError> {
        let sev = sev_mut(self)?;
        if sev.es && !started.vmsas {
            return Err(VmError::VmsasMissing);
        }
        let measurement = sev.config.backend.launch_measure(sev.vm_ref)?;
        sev.phase = LaunchPhase::Measured;
        sev.measurement = Some(measurement);
        Ok(LaunchMeasured { measurement })
    }

    /// LAUNCH_SECRET: the packet is verified by the platform and decrypted into guest
    /// memory at `gpa` (default: the firmware's secret area), which must lie inside the
    /// secret area the firmware declares.
    pub fn sev_inject_secret(
        &mut self,
        _measured: &LaunchMeasured,
        header: &SecretHeader,
        secret: &[u8],
        gpa: Option<u64>,
    ) -> Result<(), VmError> {
        let (base, size) = self.firmware_secret_area.ok_or(VmError::NoSecretArea)?;
        let gpa = gpa.unwrap_or(base);
        let fits = gpa >= base
            && (gpa - base)
                .checked_add(secret.len() as u64)
                .is_some_and(|end| end <= size);
        if !fits {
            return Err(VmError::SecretOutsideArea {
                gpa,
                len: secret.len(),
                base,
                size,
            });
        }
        let view = LaunchView::new(&self.ram, &self.rom);
        let sev = self.sev.as_ref().ok_or(VmError::NotSev)?;
        sev.config
            .backend
            .launch_secret(sev.vm_ref, &view, header, secret, gpa)?;
        Ok(())
    }

    /// LAUNCH_FINISH: after this the guest may run and nothing more is measured.
    pub fn sev_launch_finish(&mut self, _measured: LaunchMeasured) -> Result<(), VmError> {
        let sev = sev_mut(self)?;
        sev.config.backend.launch_finish(sev.vm_ref)?;
        sev.phase = LaunchPhase::Finished;
        Ok(())
    }

    /// The platform's view of this guest (`query-sev`), if it is an SEV guest.
    pub fn sev_status(&self) -> Option<Result<GuestStatus, SevError>> {
        let sev = self.sev.as_ref()?;
        Some(sev.config.backend.guest_status(sev.vm_ref))
    }

    /// KVM_SEV_DBG_DECRYPT: guest memory in the clear (refused under a NODBG policy).
    pub fn sev_dbg_decrypt(&self, gpa: u64, out: &mut [u8]) -> Result<(), VmError> {
        let view = LaunchView::new(&self.ram, &self.rom);
        let sev = self.sev.as_ref().ok_or(VmError::NotSev)?;
        sev.config
            .backend
            .dbg_decrypt(sev.vm_ref, &view, gpa, out)?;
        Ok(())
    }

    /// The launch measurement, once taken.
    pub fn sev_measurement(&self) -> Option<LaunchMeasurement> {
        self.sev.as_ref()?.measurement
    }

    /// Where the launch stands, for an SEV guest.
    pub fn sev_phase(&self) -> Option<LaunchPhase> {
        self.sev.as_ref().map(|s| s.phase)
    }

    /// The guest's policy, for an SEV guest.
    pub fn sev_policy(&self) -> Option<Policy> {
        self.sev.as_ref().map(|s| s.config.policy)
    }

    /// Whether this is an SEV-ES guest.
    pub fn sev_es(&self) -> bool {
        self.sev.as_ref().is_some_and(|s| s.es)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Encrypted, GuestRam, PageStates};

    fn view() -> (HostView, Arc<PageStates>) {
        let ram = Arc::new(GuestRam::new(64 << 20).unwrap());
        let states = Arc::new(PageStates::new(ram.pages(), Visibility::Private));
        let view = HostView::encrypted(
            ram,
            Encrypted {
                states: states.clone(),
                cipher: None,
            },
        );
        (view, states)
    }

    #[test]
    fn map_gpa_range_converts_pages_both_ways() {
        let (view, states) = view();
        assert_eq!(map_gpa_range(&view, [0x15_8000, 2, 0]), 0);
        assert_eq!(states.get(0x158), Visibility::Shared);
        assert_eq!(states.get(0x159), Visibility::Shared);
        assert_eq!(states.get(0x15a), Visibility::Private);
        assert_eq!(
            map_gpa_range(&view, [0x15_8000, 1, hcall::MAP_GPA_RANGE_ENCRYPTED]),
            0
        );
        assert_eq!(states.get(0x158), Visibility::Private);
        // One 2 MiB page.
        assert_eq!(map_gpa_range(&view, [0x20_0000, 1, 1]), 0);
        assert_eq!(states.shared_count(), 1 + 512);
    }

    #[test]
    fn map_gpa_range_rejects_bad_requests_without_changing_anything() {
        let (view, states) = view();
        for args in [
            [0x1001, 1, 0],              // unaligned
            [0x1000, 1, 3],              // bad page size
            [0x1000, 1, 1 << 5],         // unknown attribute
            [64 << 20, 1, 0],            // past RAM
            [0x1000, u64::MAX, 0],       // overflow
            [0xfe00_0000, 1, 0],         // MMIO hole
            [(64 << 20) - 0x1000, 2, 0], // runs past the end
        ] {
            assert_eq!(map_gpa_range(&view, args), HC_EINVAL, "{args:x?}");
        }
        assert_eq!(states.shared_count(), 0);
    }

    #[test]
    fn cpuid_advertises_sev_only_to_sev_guests() {
        let mut cpuid = kvm_bindings::CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 0x8000_0000,
                eax: 0x8000_0008,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x4000_0001,
                eax: KVM_FEATURE_HC_MAP_GPA_RANGE | 1,
                ..Default::default()
            },
        ])
        .unwrap();
        let mut plain = cpuid.clone();
        patch_cpuid(&mut plain, None).unwrap();
        assert!(plain.as_slice().iter().all(|e| e.function != 0x8000_001f));
        assert_eq!(
            plain.as_slice()[1].eax,
            1,
            "MAP_GPA_RANGE hidden: VMMCALL hangs here"
        );

        patch_cpuid(&mut cpuid, Some(HypercallTransport::ServicesPage)).unwrap();
        let e = cpuid.as_slice();
        assert_eq!(e[0].eax, 0x8000_001f);
        let sev = e.iter().find(|e| e.function == 0x8000_001f).unwrap();
        assert_eq!(sev.eax & 2, 2);
        assert_eq!(sev.ebx & 0x3f, 0, "no C-bit on the emulated platform");
        assert_eq!(sev.eax & CPUID_SEV_ES, 0, "SEV-ES only for SEV-ES guests");
        assert_eq!(cbit_and_reduction(e), Some((0, 0)));
        patch_cpuid_es(&mut cpuid);
        let sev = cpuid.as_slice().iter().find(|e| e.function == 0x8000_001f);
        assert_eq!(sev.unwrap().eax, 2 | CPUID_SEV_ES);
        // The capabilities report what the leaf says, whatever it says.
        let leaf = kvm_cpuid_entry2 {
            function: 0x8000_001f,
            ebx: 51 | 1 << 6,
            ..Default::default()
        };
        assert_eq!(cbit_and_reduction(&[leaf]), Some((51, 1)));
        assert_eq!(cbit_and_reduction(&[]), None);
    }
}
