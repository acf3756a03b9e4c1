//! The only place that issues KVM ioctls: thin, typed wrappers around kvm-ioctls — the
//! VMM's own, and the ones the SEV platform needs (its [`KvmOps`] trait, implemented here
//! for [`KvmVm`]).

pub mod cpuid;
pub mod es_state;
pub mod kick;
pub mod protected;
pub mod state;
pub mod stats;

use kvm_bindings::{
    kvm_enable_cap, kvm_enc_region, kvm_regs, kvm_run, kvm_sev_cmd, kvm_sregs,
    kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use sev_platform::{
    backend::{KvmVmType, VmRef},
    kvm::{Errno, KvmOps, KVM_CAP_VM_TYPES},
};
use std::{
    os::fd::{AsRawFd, BorrowedFd},
    sync::atomic::{AtomicU64, Ordering},
};

/// The next VM's identity for the SEV platform.
static NEXT_VM: AtomicU64 = AtomicU64::new(1);

/// Flag of a read-only memory slot (`KVM_MEM_READONLY`).
const KVM_MEM_READONLY: u32 = 1 << 1;
/// Flag of a slot with dirty-page logging (`KVM_MEM_LOG_DIRTY_PAGES`).
const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1 << 0;

/// A failed KVM operation.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm could not be opened.
    #[error("cannot open /dev/kvm (is KVM available and are you allowed to use it?)")]
    Open(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_VM failed.
    #[error("cannot create a KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_IRQCHIP failed.
    #[error("cannot create the in-kernel interrupt controller")]
    CreateIrqchip(#[source] kvm_ioctls::Error),
    /// KVM_SET_USER_MEMORY_REGION failed.
    #[error("cannot map memory slot {slot} at {gpa:#x} ({size:#x} bytes)")]
    MapMemory {
        /// Slot number.
        slot: u32,
        /// Guest-physical base.
        gpa: u64,
        /// Size.
        size: u64,
        /// The ioctl error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("cannot read the supported CPUID")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// KVM_GET_TSC_KHZ failed.
    #[error("cannot read the TSC frequency of vCPU {0}")]
    TscKhz(u32, #[source] kvm_ioctls::Error),
    /// KVM_CREATE_VCPU failed.
    #[error("cannot create vCPU {0}")]
    CreateVcpu(u32, #[source] kvm_ioctls::Error),
    /// KVM_SET_CPUID2 failed.
    #[error("cannot set the CPUID of vCPU {0}")]
    SetCpuid(u32, #[source] kvm_ioctls::Error),
    /// KVM_GET_CPUID2 failed.
    #[error("cannot read the CPUID of vCPU {0}")]
    GetCpuid(u32, #[source] kvm_ioctls::Error),
    /// KVM_GET_LAPIC / KVM_SET_LAPIC failed.
    #[error("cannot refresh the local APIC of vCPU {0}")]
    Lapic(u32, #[source] kvm_ioctls::Error),
    /// Reading or writing vCPU registers failed.
    #[error("cannot access the registers of vCPU {0}")]
    Registers(u32, #[source] kvm_ioctls::Error),
    /// KVM_GET_DIRTY_LOG failed.
    #[error("cannot read the dirty log of memory slot {0}")]
    DirtyLog(u32, #[source] kvm_ioctls::Error),
    /// Enabling a capability or filter failed.
    #[error("cannot enable {0}")]
    Capability(&'static str, #[source] kvm_ioctls::Error),
    /// KVM_RUN failed with something other than EINTR/EAGAIN.
    #[error("KVM_RUN failed on vCPU {0}")]
    Run(u32, #[source] kvm_ioctls::Error),
    /// The vCPU's state is protected (SEV-ES, after LAUNCH_UPDATE_VMSA): the host can
    /// neither read nor set it. KVM answers EINVAL (see [`KvmError::errno`]).
    #[error("cannot {op} of vCPU {vcpu}: its state is protected (SEV-ES): the host can neither read nor set it")]
    Protected {
        /// The vCPU.
        vcpu: u32,
        /// What was attempted, e.g. "read the registers".
        op: &'static str,
    },
}

impl KvmError {
    /// The errno KVM answered (EINVAL for a protected vCPU, as KVM refuses its register
    /// ioctls), if the error is a refused ioctl.
    pub fn errno(&self) -> Option<i32> {
        match self {
            KvmError::Protected { .. } => Some(libc::EINVAL),
            KvmError::Open(e)
            | KvmError::CreateVm(e)
            | KvmError::CreateIrqchip(e)
            | KvmError::SupportedCpuid(e)
            | KvmError::TscKhz(_, e)
            | KvmError::CreateVcpu(_, e)
            | KvmError::SetCpuid(_, e)
            | KvmError::GetCpuid(_, e)
            | KvmError::Lapic(_, e)
            | KvmError::Registers(_, e)
            | KvmError::DirtyLog(_, e)
            | KvmError::Capability(_, e)
            | KvmError::Run(_, e) => Some(e.errno()),
            KvmError::MapMemory { source, .. } => Some(source.errno()),
        }
    }
}

/// The system KVM handle.
pub struct KvmSystem {
    kvm: Kvm,
}

impl KvmSystem {
    /// Opens /dev/kvm.
    pub fn open() -> Result<Self, KvmError> {
        Ok(KvmSystem {
            kvm: Kvm::new().map_err(KvmError::Open)?,
        })
    }

    /// Whether /dev/kvm exists on this machine (for tests that need it).
    pub fn available() -> bool {
        std::path::Path::new("/dev/kvm").exists()
    }

    /// Creates an empty VM of the default type (`KVM_X86_DEFAULT_VM`).
    pub fn create_vm(&self) -> Result<KvmVm, KvmError> {
        self.create_vm_with_type(KvmVmType::Default)
    }

    /// Creates an empty VM of `vm_type` (the SEV types need a kernel that lists them in
    /// [`KvmSystem::supported_vm_types`]).
    pub fn create_vm_with_type(&self, vm_type: KvmVmType) -> Result<KvmVm, KvmError> {
        let fd = self
            .kvm
            .create_vm_with_type(vm_type.raw())
            .map_err(KvmError::CreateVm)?;
        Ok(KvmVm {
            fd,
            id: VmRef(NEXT_VM.fetch_add(1, Ordering::Relaxed)),
            vm_type,
        })
    }

    /// The mask of VM types `KVM_CREATE_VM` accepts (`KVM_CAP_VM_TYPES`; 0 on kernels
    /// before 6.10), from which the hardware SEV backend picks an SEV guest's type
    /// (`sev_platform::hw::vm_type_for`).
    pub fn supported_vm_types(&self) -> u64 {
        let c = libc::c_ulong::from(KVM_CAP_VM_TYPES);
        u64::try_from(self.kvm.check_extension_raw(c)).unwrap_or(0)
    }

    /// KVM's supported CPUID, adjusted for vCPU `vcpu_id` (see [`cpuid::patch`]); the
    /// caller adds the SEV leaves.
    pub fn cpuid_for(&self, vcpu_id: u32) -> Result<kvm_bindings::CpuId, KvmError> {
        let mut cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(KvmError::SupportedCpuid)?;
        cpuid::patch(cpuid.as_mut_slice(), vcpu_id, cpuid::host_leaf1_ecx());
        Ok(cpuid)
    }
}

/// One KVM VM.
pub struct KvmVm {
    fd: VmFd,
    id: VmRef,
    vm_type: KvmVmType,
}

/// A memory slot to map: guest-physical range backed by host memory.
#[derive(Clone, Copy, Debug)]
pub struct Slot {
    /// Slot number.
    pub slot: u32,
    /// Guest-physical base.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// Host virtual address of the backing memory.
    pub host_addr: u64,
    /// Whether the guest may only read it.
    pub read_only: bool,
    /// Whether KVM logs writes to it.
    pub log_dirty: bool,
}

impl KvmVm {
    /// Creates the in-kernel LAPIC/IOAPIC/PIC (needed for INIT-SIPI-SIPI).
    pub fn create_irqchip(&self) -> Result<(), KvmError> {
        self.fd.create_irq_chip().map_err(KvmError::CreateIrqchip)
    }

    /// Maps (or remaps, with new flags) a memory slot.
    ///
    /// # Safety
    /// `slot.host_addr .. + slot.size` must be a mapping that stays valid for as long as
    /// this VM exists or until the slot is remapped elsewhere.
    pub unsafe fn map(&self, slot: Slot) -> Result<(), KvmError> {
        let mut flags = 0;
        if slot.read_only {
            flags |= KVM_MEM_READONLY;
        }
        if slot.log_dirty {
            flags |= KVM_MEM_LOG_DIRTY_PAGES;
        }
        let region = kvm_userspace_memory_region {
            slot: slot.slot,
            flags,
            guest_phys_addr: slot.gpa,
            memory_size: slot.size,
            userspace_addr: slot.host_addr,
        };
        // SAFETY: the caller guarantees the host range outlives the mapping.
        unsafe { self.fd.set_user_memory_region(region) }.map_err(|source| KvmError::MapMemory {
            slot: slot.slot,
            gpa: slot.gpa,
            size: slot.size,
            source,
        })
    }

    /// Makes guest reads and writes of `msrs` exit to the VMM (KVM_CAP_X86_USER_SPACE_MSR
    /// with an MSR filter); the VMM answers them (SEV_STATUS and, for SEV-ES, the GHCB MSR
    /// on the emulated platform).
    pub fn trap_msrs(&self, msrs: &[u32]) -> Result<(), KvmError> {
        use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
            args: [u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
            ..Default::default()
        };
        self.fd
            .enable_cap(&cap)
            .map_err(|e| KvmError::Capability("KVM_CAP_X86_USER_SPACE_MSR", e))?;
        // A zero bit denies the access, which the capability turns into an exit.
        let deny = [0u8; 1];
        let ranges: Vec<MsrFilterRange<'_>> = msrs
            .iter()
            .map(|&base| MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base,
                msr_count: 1,
                bitmap: &deny,
            })
            .collect();
        self.fd
            .set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
            .map_err(|e| KvmError::Capability("KVM_X86_SET_MSR_FILTER", e))
    }

    /// Makes every guest read and write of an MSR exit to the VMM, except the ranges
    /// (base, count) in `allowed`, which KVM serves as usual (KVM_CAP_X86_USER_SPACE_MSR
    /// with a deny-by-default MSR filter). KVM never filters the x2APIC range 0x800-0x8ff.
    pub fn trap_msrs_except(&self, allowed: &[(u32, u32)]) -> Result<(), KvmError> {
        use kvm_ioctls::{MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
            args: [u64::from(kvm_bindings::KVM_MSR_EXIT_REASON_FILTER), 0, 0, 0],
            ..Default::default()
        };
        self.fd
            .enable_cap(&cap)
            .map_err(|e| KvmError::Capability("KVM_CAP_X86_USER_SPACE_MSR", e))?;
        // A set bit allows the access; every range here is allowed whole (at most 64).
        let allow = [0xffu8; 8];
        let ranges: Vec<MsrFilterRange<'_>> = allowed
            .iter()
            .map(|&(base, count)| MsrFilterRange {
                flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
                base,
                msr_count: count.min(64),
                bitmap: &allow,
            })
            .collect();
        self.fd
            .set_msr_filter(MsrFilterDefaultAction::DENY, &ranges)
            .map_err(|e| KvmError::Capability("KVM_X86_SET_MSR_FILTER", e))
    }

    /// Makes hypercall `nr` exit to the VMM (KVM_CAP_EXIT_HYPERCALL).
    pub fn enable_hypercall_exit(&self, nr: u64) -> Result<(), KvmError> {
        let cap = kvm_bindings::kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_EXIT_HYPERCALL,
            args: [1 << nr, 0, 0, 0],
            ..Default::default()
        };
        self.fd
            .enable_cap(&cap)
            .map_err(|e| KvmError::Capability("KVM_CAP_EXIT_HYPERCALL", e))
    }

    /// The dirty bitmap of `slot` (one bit per 4 KiB page, `size` bytes of slot) since the
    /// last call; reading it clears it.
    pub fn dirty_log(&self, slot: u32, size: u64) -> Result<Vec<u64>, KvmError> {
        self.fd
            .get_dirty_log(slot, size as usize)
            .map_err(|e| KvmError::DirtyLog(slot, e))
    }

    /// Creates vCPU `id` with the given CPUID.
    pub fn create_vcpu(&self, id: u32, cpuid: &kvm_bindings::CpuId) -> Result<KvmVcpu, KvmError> {
        let fd = self
            .fd
            .create_vcpu(u64::from(id))
            .map_err(|e| KvmError::CreateVcpu(id, e))?;
        fd.set_cpuid2(cpuid)
            .map_err(|e| KvmError::SetCpuid(id, e))?;
        Ok(KvmVcpu {
            id,
            fd,
            protection: protected::Protection::None,
        })
    }

    /// The VM's identity for the SEV platform (unique among this process's VMs).
    pub fn sev_ref(&self) -> VmRef {
        self.id
    }

    /// The type the VM was created with (what the SEV platform must be told).
    pub fn vm_type(&self) -> KvmVmType {
        self.vm_type
    }
}

/// The KVM errno of a failed ioctl.
fn errno(e: kvm_ioctls::Error) -> Errno {
    Errno(e.errno())
}

impl KvmOps for KvmVm {
    fn vm_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd is owned by `self.fd` and stays open as long as `self`, which the
        // returned borrow cannot outlive.
        unsafe { BorrowedFd::borrow_raw(self.fd.as_raw_fd()) }
    }

    unsafe fn memory_encrypt_op(&self, cmd: &mut kvm_sev_cmd) -> Result<(), Errno> {
        // kvm-ioctls' wrapper is a safe fn, but the kernel follows `cmd.data`: the caller's
        // contract (this fn's `# Safety`) is what makes the call sound.
        self.fd.encrypt_op_sev(cmd).map_err(errno)
    }

    fn register_enc_region(&self, region: &kvm_enc_region) -> Result<(), Errno> {
        self.fd.register_enc_memory_region(region).map_err(errno)
    }

    fn unregister_enc_region(&self, region: &kvm_enc_region) -> Result<(), Errno> {
        self.fd.unregister_enc_memory_region(region).map_err(errno)
    }

    fn enable_cap(&self, cap: &kvm_enable_cap) -> Result<(), Errno> {
        self.fd.enable_cap(cap).map_err(errno)
    }
}

/// What KVM_RUN returned.
pub enum RunResult<'a> {
    /// The vCPU exited with this reason.
    Exit(VcpuExit<'a>),
    /// The run was interrupted by a signal (a kick) or `immediate_exit`.
    Interrupted,
    /// KVM asks to run again (an AP's first run may return EAGAIN here).
    Again,
}

/// One vCPU.
pub struct KvmVcpu {
    id: u32,
    fd: VcpuFd,
    /// Whether the host may reach its registers ([`protected`]).
    protection: protected::Protection,
}

impl KvmVcpu {
    /// The vCPU index.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Runs the vCPU until it exits.
    pub fn run(&mut self) -> Result<RunResult<'_>, KvmError> {
        let id = self.id;
        match self.fd.run() {
            Ok(exit) => Ok(RunResult::Exit(exit)),
            Err(e) if e.errno() == libc::EINTR => Ok(RunResult::Interrupted),
            Err(e) if e.errno() == libc::EAGAIN => Ok(RunResult::Again),
            Err(e) => Err(KvmError::Run(id, e)),
        }
    }

    /// Sets or clears `immediate_exit` in this vCPU's run page.
    pub fn set_immediate_exit(&mut self, on: bool) {
        self.fd.set_kvm_immediate_exit(u8::from(on));
    }

    /// The run page, for registering with [`kick::RunRegistration`].
    pub fn run_page(&mut self) -> *mut kvm_run {
        self.fd.get_kvm_run()
    }

    /// Completes a pending I/O or MMIO exit without running guest code, so the registers
    /// can be read and written consistently (after such an exit KVM would otherwise
    /// finish the instruction first and lose a new RIP; docs/architecture.md §4).
    pub fn settle(&mut self) -> Result<(), KvmError> {
        self.set_immediate_exit(true);
        let result = match self.fd.run() {
            Ok(_) => Ok(()),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
            Err(e) => Err(KvmError::Run(self.id, e)),
        };
        self.set_immediate_exit(false);
        result
    }

    /// General-purpose registers (EINVAL for a protected vCPU).
    pub fn regs(&self) -> Result<kvm_regs, KvmError> {
        self.check_unprotected("read the registers")?;
        self.fd
            .get_regs()
            .map_err(|e| KvmError::Registers(self.id, e))
    }

    /// Sets the general-purpose registers (EINVAL for a protected vCPU).
    pub fn set_regs(&self, regs: &kvm_regs) -> Result<(), KvmError> {
        self.check_unprotected("set the registers")?;
        self.fd
            .set_regs(regs)
            .map_err(|e| KvmError::Registers(self.id, e))
    }

    /// Segment and control registers (EINVAL for a protected vCPU).
    pub fn sregs(&self) -> Result<kvm_sregs, KvmError> {
        self.check_unprotected("read the segment registers")?;
        self.fd
            .get_sregs()
            .map_err(|e| KvmError::Registers(self.id, e))
    }

    /// Sets the segment and control registers (EINVAL for a protected vCPU).
    pub fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), KvmError> {
        self.check_unprotected("set the segment registers")?;
        self.fd
            .set_sregs(sregs)
            .map_err(|e| KvmError::Registers(self.id, e))
    }

    /// Reads and writes back the local APIC state. After all vCPUs exist this makes KVM
    /// rebuild its APIC map; without it xAPIC IPIs to APs are dropped here
    /// (docs/architecture.md §4).
    pub fn refresh_lapic(&self) -> Result<(), KvmError> {
        let lapic = self
            .fd
            .get_lapic()
            .map_err(|e| KvmError::Lapic(self.id, e))?;
        self.fd
            .set_lapic(&lapic)
            .map_err(|e| KvmError::Lapic(self.id, e))
    }

    /// The x87 and SSE state (EINVAL for a protected vCPU).
    pub fn fpu(&self) -> Result<kvm_bindings::kvm_fpu, KvmError> {
        self.check_unprotected("read the FPU state")?;
        self.fd
            .get_fpu()
            .map_err(|e| KvmError::Registers(self.id, e))
    }

    /// Sets the x87 and SSE state (EINVAL for a protected vCPU).
    pub fn set_fpu(&self, fpu: &kvm_bindings::kvm_fpu) -> Result<(), KvmError> {
        self.check_unprotected("set the FPU state")?;
        self.fd
            .set_fpu(fpu)
            .map_err(|e| KvmError::Registers(self.id, e))
    }

    /// Reads MSRs `indices` (EINVAL for a protected vCPU, except the MSRs KVM emulates
    /// itself, as KVM allows: `protected::kvm_emulated_msr`). Returns the values KVM gave,
    /// in order; it stops at the first MSR it refuses.
    pub fn msrs(&self, indices: &[u32]) -> Result<Vec<u64>, KvmError> {
        if !indices.iter().all(|&m| protected::kvm_emulated_msr(m)) {
            self.check_unprotected("read the MSRs")?;
        }
        self.raw_msrs_read(indices)
    }

    /// Writes MSRs (index, value) (EINVAL for a protected vCPU, except the MSRs KVM
    /// emulates itself); an error unless KVM takes all of them.
    pub fn set_msrs(&self, entries: &[(u32, u64)]) -> Result<(), KvmError> {
        if !entries.iter().all(|&(m, _)| protected::kvm_emulated_msr(m)) {
            self.check_unprotected("set the MSRs")?;
        }
        let entries: Vec<kvm_bindings::kvm_msr_entry> = entries
            .iter()
            .map(|&(index, data)| kvm_bindings::kvm_msr_entry {
                index,
                data,
                ..Default::default()
            })
            .collect();
        self.raw_msrs_write(&entries)
    }

    /// The CPUID table the vCPU was given (what the VMM answers an SEV-ES guest's CPUID
    /// exits from).
    pub fn cpuid(&self) -> Result<Vec<kvm_bindings::kvm_cpuid_entry2>, KvmError> {
        self.fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map(|c| c.as_slice().to_vec())
            .map_err(|e| KvmError::GetCpuid(self.id, e))
    }

    /// Replaces the vCPU's CPUID table (only before its first KVM_RUN: KVM refuses a
    /// different table after it).
    pub fn set_cpuid(&self, entries: &[kvm_bindings::kvm_cpuid_entry2]) -> Result<(), KvmError> {
        let cpuid = kvm_bindings::CpuId::from_entries(entries)
            .map_err(|_| KvmError::SetCpuid(self.id, kvm_ioctls::Error::new(libc::E2BIG)))?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|e| KvmError::SetCpuid(self.id, e))
    }

    /// The guest TSC frequency in kHz.
    pub fn tsc_khz(&self) -> Result<u32, KvmError> {
        self.fd
            .get_tsc_khz()
            .map_err(|e| KvmError::TscKhz(self.id, e))
    }

    /// KVM's counters of this vCPU: exits and emulated instructions, where reported.
    pub fn kvm_counters(&self) -> Vec<(String, u64)> {
        stats::read(&self.fd, &["exits", "insn_emulation"])
    }

    /// Details of the last KVM_EXIT_INTERNAL_ERROR: sub-error and data words.
    pub fn internal_error(&mut self) -> (u32, Vec<u64>) {
        let run = self.fd.get_kvm_run();
        // SAFETY: after KVM_EXIT_INTERNAL_ERROR the `internal` member of the union is the
        // one KVM filled in; ndata is clamped to the array length.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let n = (internal.ndata as usize).min(internal.data.len());
        (internal.suberror, internal.data[..n].to_vec())
    }
}
