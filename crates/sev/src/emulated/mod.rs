//! The emulated PSP: an [`SevBackend`] in software, faithful at the boundaries the host
//! observes (docs/architecture.md §3): the firmware's commands, state machines, status
//! codes and byte formats (AMD SEV API spec 0.24), and the kernel's rules and errno
//! values in front of them (`arch/x86/kvm/svm/sev.c`, `drivers/crypto/ccp/sev-dev.c`).
//!
//! # What it reports
//! - API version **0.24, build 1** ([`FIRMWARE`]); the launch measurement binds it, so
//!   guest owners verify with `--api-major 0 --api-minor 24 --build-id 1`.
//! - ASIDs as CPUID 0x8000001F would announce them: ECX (max) = [`MAX_SEV_ASID`] = 15,
//!   EDX (min SEV ASID) = [`MIN_SEV_ASID`] = 8, so SEV guests use 8..=15 and SEV-ES guests
//!   1..=7, like real parts with ES ASIDs below the SEV range. Running out is EBUSY at
//!   KVM_SEV_INIT (the kernel's `sev_asid_new`), not a firmware status.
//! - SEV-ES support as configured ([`EsSupport`], default available): PLATFORM_STATUS's
//!   ES flag, `KVM_SEV_ES_INIT` (ENOTTY without it, as when the kernel's `sev_es_enabled`
//!   is off) and `KVM_X86_SEV_ES_VM` VMs (EINVAL at creation without it).
//!
//! # Model
//! VMs are keyed by [`VmRef`] and must be introduced ([`SevBackend::vm_created`], with
//! their KVM VM type; [`EmulatedPsp::add_vm`] where no KVM VM stands behind them) before
//! any command, and their vCPUs announced ([`SevBackend::vcpu_created`]): a command
//! naming an unknown or destroyed VM is EBADF, as an ioctl on a closed fd. A VM becomes an
//! SEV VM at [`SevBackend::init_vm`] (an ASID and an empty encryption context: legacy init
//! on a default VM, INIT2 on an SEV-typed one); LAUNCH_START creates the firmware guest
//! (handle, policy, transport keys, VEK, launch digest). Mirrors share the owner's context; the
//! context (ASID, key, guest) lives until the owner *and* all its mirrors are destroyed.
//! Each VM keeps the guest handle the kernel keeps in `kvm_sev_info`: set by LAUNCH_START
//! on the owner, copied by `copy_enc_context_from` (a mirror copied before its owner's
//! LAUNCH_START keeps 0) and moved by `move_enc_context_from`. The kernel issues firmware
//! commands through the `/dev/sev` fd it recorded together with the handle; with none
//! recorded (fd 0, not `/dev/sev`) `sev_issue_cmd` fails with EBADF, so every guest
//! command on a VM whose handle is 0 is EBADF. SEV-ES vCPUs are tracked per VM in
//! creation order; LAUNCH_UPDATE_VMSA encrypts each one's VMSA into a [`VmsaSlot`] and
//! marks that vCPU (not the VM) protected.
//!
//! Where the kernel answers before the firmware (no SEV VM: ENOTTY; mirror restrictions:
//! EINVAL; dead VM: EIO; empty buffers: EINVAL) the error is [`SevError::Kernel`];
//! firmware refusals are [`SevError::Firmware`] with the spec's status. A command that
//! fails changes nothing, except that LAUNCH_UPDATE_VMSA, like the kernel's loop over the
//! vCPUs, keeps the vCPUs it finished before the one that failed.
//!
//! Failure → code, per command (besides the kernel rules above):
//!
//! | command            | failure                                   | code                   |
//! |--------------------|-------------------------------------------|------------------------|
//! | any                | VM never announced, or destroyed          | EBADF                  |
//! | INIT               | vCPUs exist / already SEV                 | EINVAL                 |
//! | INIT               | legacy init on an SEV-typed VM, INIT2 whose mode is not the VM type's | EINVAL |
//! | ES_INIT            | platform without SEV-ES                   | ENOTTY                 |
//! | INIT               | no free ASID                              | EBUSY                  |
//! | LAUNCH_START       | platform UNINIT (after FACTORY_RESET)     | INVALID_PLATFORM_STATE |
//! | LAUNCH_START       | reserved policy bits set                  | INVALID_PARAM          |
//! | LAUNCH_START       | policy needs a newer API / ES mismatch    | POLICY_FAILURE         |
//! | LAUNCH_START       | session: see [`crate::session`]           | INVALID_LENGTH, INVALID_CERTIFICATE, BAD_MEASUREMENT |
//! | LAUNCH_START       | guest already launched (ASID bound)       | ASID_OWNED             |
//! | any guest command  | VM's handle is 0 (no LAUNCH_START yet, or a mirror copied before it) | EBADF |
//! | any guest command  | wrong guest state ([`state`])             | INVALID_GUEST_STATE    |
//! | LAUNCH_UPDATE_DATA | empty                                     | EINVAL                 |
//! | LAUNCH_UPDATE_DATA | address / length not 16-byte multiples    | INVALID_ADDRESS / INVALID_LENGTH |
//! | LAUNCH_UPDATE_VMSA | not an SEV-ES VM                          | ENOTTY                 |
//! | LAUNCH_UPDATE_VMSA | no vCPUs                                  | success, no firmware call |
//! | LAUNCH_UPDATE_VMSA | not one VMSA per vCPU                     | EINVAL                 |
//! | LAUNCH_UPDATE_VMSA | a vCPU already protected, or its DR7 not the reset value | EINVAL |
//! | LAUNCH_SECRET      | see [`crate::secret`]                     | EINVAL, INVALID_LENGTH, INVALID_ADDRESS, BAD_MEASUREMENT, UNSUPPORTED, INVALID_PARAM |
//! | DBG_*              | empty                                     | EINVAL                 |
//! | DBG_*              | policy NODBG                              | POLICY_FAILURE         |
//! | FACTORY_RESET      | guests exist (WORKING)                    | EBUSY                  |

mod asid;
mod command;
pub mod state;

#[cfg(test)]
mod es_tests;
#[cfg(test)]
mod tests;

pub use asid::{AsidKind, AsidPool};
pub use command::SevCommandId;

use crate::{
    backend::{
        BackendKind, GuestState, GuestStatus, KvmVmType, LaunchMeasurement, LaunchMemory,
        LaunchSession, PageCipher, PlatformCerts, PlatformState, PlatformStatus, Refusal,
        SecretHeader, SevBackend, SevError, VmRef, PAGE_SIZE,
    },
    crypto::{random_bytes, TransportKeys},
    identity::PlatformIdentity,
    kvm::KvmOps,
    measure::{launch_measurement, FirmwareVersion, LaunchDigest},
    memcrypt::XtsPageCipher,
    policy::Policy,
    status::SevStatus,
    vmsa::{Vmsa, VmsaSlot},
};
use state::{guest_transition, platform_transition, GuestCommand, PlatformEvent};
use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

/// API major version the emulated firmware reports.
pub const API_MAJOR: u8 = 0;
/// API minor version the emulated firmware reports.
pub const API_MINOR: u8 = 24;
/// Build id the emulated firmware reports.
pub const BUILD: u8 = 1;
/// The emulated firmware's version, as PLATFORM_STATUS reports it.
pub const FIRMWARE: FirmwareVersion = FirmwareVersion {
    api_major: API_MAJOR,
    api_minor: API_MINOR,
    build: BUILD,
};
/// Lowest SEV (non-ES) ASID; CPUID 0x8000001F EDX.
pub const MIN_SEV_ASID: u32 = 8;
/// Highest ASID; CPUID 0x8000001F ECX (number of encrypted guests supported at once).
pub const MAX_SEV_ASID: u32 = 15;
/// Host address of the first VMSA page: the emulation gives every encrypted VMSA a page
/// address of its own above any guest-physical address, as the kernel allocates each
/// vCPU's VMSA in host memory, so equal states encrypt differently.
const VMSA_SPA_BASE: u64 = 1 << 52;
/// DR7's reset value (bit 10 is fixed to 1); `sev_es_sync_vmsa` refuses any other.
const DR7_FIXED_1: u64 = 0x400;

/// Whether the emulated platform offers SEV-ES (CPUID 0x8000001F EAX bit 3 and the
/// firmware's CONFIG_ES on real parts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EsSupport {
    /// SEV-ES guests can be launched.
    #[default]
    Available,
    /// Only plain SEV.
    Absent,
}

/// Whether a VM is in an intra-host migration (the kernel's `migration_in_progress`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Migration {
    /// Not migrating.
    Idle,
    /// Migrating: copy/move of its encryption context fails with EBUSY.
    InProgress,
}

/// A VM's role in its encryption context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Owner,
    Mirror,
}

/// How a context was initialised: it decides what KVM puts into the VMSAs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitKind {
    /// `KVM_SEV_INIT` / `KVM_SEV_ES_INIT` on a default VM: no FPU state in the VMSA.
    Legacy,
    /// `KVM_SEV_INIT2` on an SEV-typed VM: the vCPU's FPU state goes into the VMSA.
    Init2,
}

/// The SEV part of a VM: the kernel's `kvm_sev_info` as far as the rules need it.
#[derive(Debug)]
struct VmSev {
    ctx: u64,
    role: Role,
    /// The firmware handle the kernel holds for this VM (0: none, commands are EBADF).
    handle: u32,
}

/// A VM the platform knows (an open VM fd, for the kernel).
#[derive(Debug)]
struct VmEntry {
    vm_type: KvmVmType,
    /// One entry per vCPU in creation order: its encrypted VMSA once LAUNCH_UPDATE_VMSA
    /// protected it (`guest_state_protected`).
    vcpus: Vec<Option<Arc<VmsaSlot>>>,
    migrating: bool,
    /// Moved from (`kvm_vm_dead`): every ioctl fails with EIO.
    dead: bool,
    sev: Option<VmSev>,
}

impl VmEntry {
    fn new(vm_type: KvmVmType) -> VmEntry {
        VmEntry {
            vm_type,
            vcpus: Vec::new(),
            migrating: false,
            dead: false,
            sev: None,
        }
    }
}

/// The firmware's guest, from LAUNCH_START on.
#[derive(Debug)]
struct Guest {
    handle: u32,
    policy: Policy,
    state: GuestState,
    keys: TransportKeys,
    digest: LaunchDigest,
    /// The LAUNCH_MEASURE HMAC, which LAUNCH_SECRET packets bind.
    measurement: Option<[u8; 32]>,
    cipher: Arc<XtsPageCipher>,
}

/// An encryption context: what an owner and its mirrors share.
#[derive(Debug)]
struct Context {
    asid: u32,
    es: bool,
    init: InitKind,
    owner: Option<VmRef>,
    mirrors: BTreeSet<VmRef>,
    guest: Option<Guest>,
}

#[derive(Debug)]
struct Inner {
    identity: PlatformIdentity,
    es_support: EsSupport,
    platform: PlatformState,
    vms: HashMap<VmRef, VmEntry>,
    contexts: HashMap<u64, Context>,
    next_ctx: u64,
    next_handle: u32,
    next_vmsa_spa: u64,
    asids: AsidPool,
}

/// The software PSP (module documentation).
#[derive(Debug)]
pub struct EmulatedPsp {
    inner: Mutex<Inner>,
}

fn kernel(id: SevCommandId, errno: i32) -> SevError {
    SevError::Kernel {
        op: id.kvm_name(),
        errno,
    }
}

fn firmware(command: &'static str, status: SevStatus) -> SevError {
    SevError::Firmware { command, status }
}

fn random_error(command: &'static str) -> SevError {
    firmware(command, SevStatus::HWERROR_PLATFORM)
}

impl Inner {
    /// The VM fd `vm`, or EBADF (`op`) if it is not open.
    fn vm_entry(&mut self, vm: VmRef, op: &'static str) -> Result<&mut VmEntry, SevError> {
        self.vms.get_mut(&vm).ok_or(SevError::Kernel {
            op,
            errno: libc::EBADF,
        })
    }

    /// The kernel's gate in front of every `KVM_MEMORY_ENCRYPT_OP` on `vm`: EBADF on an
    /// fd that is not an open VM, EIO on a dead VM, EINVAL for commands a mirror may not
    /// issue and for unknown ids.
    fn gate(&mut self, vm: VmRef, id: SevCommandId) -> Result<(), SevError> {
        let entry = self.vm_entry(vm, id.kvm_name())?;
        if entry.dead {
            return Err(kernel(id, libc::EIO));
        }
        let mirror = matches!(&entry.sev, Some(s) if s.role == Role::Mirror);
        if mirror && !id.allowed_on_mirror() {
            return Err(kernel(id, libc::EINVAL));
        }
        if !id.is_defined() {
            return Err(kernel(id, libc::EINVAL));
        }
        Ok(())
    }

    /// Gate, then the VM's context id (ENOTTY when it is not an SEV VM, `!sev_guest`).
    fn sev_ctx(&mut self, vm: VmRef, id: SevCommandId) -> Result<u64, SevError> {
        self.gate(vm, id)?;
        self.vms
            .get(&vm)
            .and_then(|e| e.sev.as_ref())
            .map(|s| s.ctx)
            .ok_or(kernel(id, libc::ENOTTY))
    }

    fn context(&mut self, ctx: u64) -> &mut Context {
        self.contexts
            .get_mut(&ctx)
            .expect("a VM's context lives as long as the VM references it")
    }

    /// The firmware guest a command on `vm` reaches, gated: EBADF while the VM holds no
    /// handle (the kernel's `sev_issue_cmd` through the unset `/dev/sev` fd).
    fn guest(&mut self, vm: VmRef, id: SevCommandId) -> Result<&mut Guest, SevError> {
        let ctx = self.sev_ctx(vm, id)?;
        let handle = self
            .vms
            .get(&vm)
            .and_then(|e| e.sev.as_ref())
            .map_or(0, |s| s.handle);
        match self.context(ctx).guest.as_mut() {
            Some(g) if handle != 0 && g.handle == handle => Ok(g),
            _ => Err(kernel(id, libc::EBADF)),
        }
    }

    fn guest_count(&self) -> u32 {
        let n = self.contexts.values().filter(|c| c.guest.is_some()).count();
        u32::try_from(n).expect("at most MAX_SEV_ASID guests")
    }

    /// The VM fd `vm` is closed (`sev_vm_destroy`; see [`SevBackend::vm_destroyed`]).
    fn destroy(&mut self, vm: VmRef) {
        let Some(entry) = self.vms.remove(&vm) else {
            return;
        };
        let Some(sev) = entry.sev else {
            return;
        };
        let c = self.context(sev.ctx);
        match sev.role {
            Role::Mirror => {
                c.mirrors.remove(&vm);
            }
            Role::Owner => c.owner = None,
        }
        if c.owner.is_none() && c.mirrors.is_empty() {
            self.decommission(sev.ctx);
        }
    }

    /// DEACTIVATE + DECOMMISSION: frees the ASID, forgets the guest.
    fn decommission(&mut self, ctx: u64) {
        if let Some(c) = self.contexts.remove(&ctx) {
            self.asids.release(c.asid);
            if c.guest.is_some() {
                let remaining = self.guest_count();
                if let Ok(next) = platform_transition(
                    self.platform,
                    PlatformEvent::GuestDecommissioned { remaining },
                ) {
                    self.platform = next;
                }
            }
        }
    }
}

/// Plaintext of `[gpa, gpa + len)` in page-bounded pieces.
fn for_each_piece(
    mem: &dyn LaunchMemory,
    gpa: u64,
    len: u64,
    mut f: impl FnMut(&[u8]),
) -> Result<(), SevError> {
    let mut buf = vec![0u8; PAGE_SIZE];
    let mut at = gpa;
    let end = gpa + len;
    while at < end {
        let page_end = (at / PAGE_SIZE as u64 + 1) * PAGE_SIZE as u64;
        let n = (page_end.min(end) - at) as usize;
        mem.read_plain(at, &mut buf[..n])?;
        f(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

impl EmulatedPsp {
    /// A PSP with `identity` and SEV-ES, in state UNINIT, no guests.
    pub fn new(identity: PlatformIdentity) -> EmulatedPsp {
        EmulatedPsp::with_es_support(identity, EsSupport::Available)
    }

    /// A PSP with `identity` that does or does not offer SEV-ES.
    pub fn with_es_support(identity: PlatformIdentity, es_support: EsSupport) -> EmulatedPsp {
        EmulatedPsp {
            inner: Mutex::new(Inner {
                identity,
                es_support,
                platform: PlatformState::Uninit,
                vms: HashMap::new(),
                contexts: HashMap::new(),
                next_ctx: 1,
                next_handle: 1,
                next_vmsa_spa: VMSA_SPA_BASE,
                asids: AsidPool::new(MIN_SEV_ASID, MAX_SEV_ASID),
            }),
        }
    }

    /// A PSP whose identity lives in `dir` (created on first use); see
    /// [`PlatformIdentity::load_or_create`]. A damaged directory is [`SevError::State`].
    pub fn open(dir: &Path) -> Result<EmulatedPsp, SevError> {
        Ok(EmulatedPsp::new(PlatformIdentity::load_or_create(dir)?))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every mutation is validated before it is applied, so a panic elsewhere while
        // the lock was held cannot have left the state half-changed.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The firmware version this PSP reports (and measurements bind).
    pub fn firmware_version(&self) -> FirmwareVersion {
        FIRMWARE
    }

    /// The kernel's checks in front of `KVM_MEMORY_ENCRYPT_OP` sub-command `id` on `vm`:
    /// EBADF if `vm` is not an open VM, EIO if the VM is dead (moved from), EINVAL if
    /// `vm` is a mirror and `id` is not one of LAUNCH_UPDATE_VMSA, GUEST_STATUS,
    /// DBG_DECRYPT, DBG_ENCRYPT, EINVAL for an unknown id. The trait methods apply it
    /// themselves; the VMM may call it for the sub-commands the emulation does not
    /// implement.
    pub fn check_encrypt_op(&self, vm: VmRef, id: SevCommandId) -> Result<(), SevError> {
        self.lock().gate(vm, id)
    }

    /// Marks `vm` as (not) being in an intra-host migration; copy/move naming it fail
    /// with EBUSY meanwhile. Ignored for a VM the platform does not know.
    pub fn set_migration(&self, vm: VmRef, migration: Migration) {
        if let Some(e) = self.lock().vms.get_mut(&vm) {
            e.migrating = migration == Migration::InProgress;
        }
    }

    /// KVM_MEMORY_ENCRYPT_REG_REGION: EBADF on an unknown VM, EIO on a dead one, ENOTTY on
    /// a non-SEV VM, EINVAL on a mirror (it does not own the context).
    pub fn register_region(&self, vm: VmRef) -> Result<(), SevError> {
        const OP: &str = "KVM_MEMORY_ENCRYPT_REG_REGION";
        let mut inner = self.lock();
        let entry = inner.vm_entry(vm, OP)?;
        let err = |errno| SevError::Kernel { op: OP, errno };
        if entry.dead {
            return Err(err(libc::EIO));
        }
        match &entry.sev {
            None => Err(err(libc::ENOTTY)),
            Some(s) if s.role == Role::Mirror => Err(err(libc::EINVAL)),
            Some(_) => Ok(()),
        }
    }

    /// What [`SevBackend::vm_created`] does on this platform, for callers with no KVM VM
    /// behind `vm` (tests, and simulations of a launch): the emulated PSP needs no KVM
    /// handle. `vm` names a new VM of `vm_type` from now on; a `KVM_X86_SEV_ES_VM` on a
    /// platform without SEV-ES is EINVAL (the kernel lists only supported types in
    /// `supported_vm_types`). Whatever the platform still knew under `vm` is released
    /// first, as by [`SevBackend::vm_destroyed`].
    pub fn add_vm(&self, vm: VmRef, vm_type: KvmVmType) -> Result<(), SevError> {
        let mut inner = self.lock();
        if vm_type == KvmVmType::SevEs && inner.es_support == EsSupport::Absent {
            return Err(SevError::Kernel {
                op: "KVM_CREATE_VM",
                errno: libc::EINVAL,
            });
        }
        inner.destroy(vm);
        inner.vms.insert(vm, VmEntry::new(vm_type));
        Ok(())
    }

    /// How many vCPUs of `vm` have protected state (LAUNCH_UPDATE_VMSA done for them), of
    /// how many; `None` for an unknown VM.
    pub fn protected_vcpus(&self, vm: VmRef) -> Option<(usize, usize)> {
        let inner = self.lock();
        let e = inner.vms.get(&vm)?;
        Some((
            e.vcpus.iter().filter(|v| v.is_some()).count(),
            e.vcpus.len(),
        ))
    }
}

impl SevBackend for EmulatedPsp {
    fn kind(&self) -> BackendKind {
        BackendKind::Emulated
    }

    fn platform_status(&self) -> Result<PlatformStatus, SevError> {
        let inner = self.lock();
        Ok(PlatformStatus {
            api_major: API_MAJOR,
            api_minor: API_MINOR,
            build: BUILD,
            state: inner.platform,
            owned_externally: false,
            es: inner.es_support == EsSupport::Available,
            guest_count: inner.guest_count(),
        })
    }

    fn export_certs(&self) -> Result<PlatformCerts, SevError> {
        Ok(self.lock().identity.certs())
    }

    /// PDH_GEN. Allowed in every platform state: the kernel initialises an UNINIT
    /// platform for it (`sev_ioctl_do_pek_pdh_gen`). Running guests keep their keys;
    /// sessions made for the old PDH fail LAUNCH_START from now on.
    fn rotate_pdh(&self) -> Result<(), SevError> {
        self.lock().identity.rotate_pdh().map_err(SevError::from)
    }

    fn factory_reset(&self) -> Result<(), SevError> {
        let mut inner = self.lock();
        let next = platform_transition(inner.platform, PlatformEvent::FactoryReset)
            .map_err(|r| r.into_error("FACTORY_RESET", "SEV_FACTORY_RESET"))?;
        inner.identity.factory_reset()?;
        inner.platform = next;
        Ok(())
    }

    /// `KVM_CREATE_VM`: `vm` names a new VM from now on; the emulation needs no KVM
    /// handle (see [`EmulatedPsp::add_vm`]).
    fn vm_created(
        &self,
        vm: VmRef,
        vm_type: KvmVmType,
        _kvm: Arc<dyn KvmOps>,
    ) -> Result<(), SevError> {
        self.add_vm(vm, vm_type)
    }

    /// `KVM_CREATE_VCPU`: after it, KVM_SEV_INIT and becoming a mirror are EINVAL; SEV-ES
    /// moves compare vCPU counts. EBADF on an unknown VM, EIO on a dead one.
    fn vcpu_created(&self, vm: VmRef) -> Result<(), SevError> {
        const OP: &str = "KVM_CREATE_VCPU";
        let mut inner = self.lock();
        let entry = inner.vm_entry(vm, OP)?;
        if entry.dead {
            return Err(SevError::Kernel {
                op: OP,
                errno: libc::EIO,
            });
        }
        entry.vcpus.push(None);
        Ok(())
    }

    /// `sev_guest_init` / `sev_guest_init2`: legacy `KVM_SEV_INIT`/`KVM_SEV_ES_INIT` on a
    /// default VM (ES_INIT is ENOTTY without SEV-ES), `KVM_SEV_INIT2` on an SEV-typed VM
    /// (whose type must be the mode asked for); EINVAL with vCPUs or when already SEV;
    /// EBUSY when no ASID of the kind is free.
    fn init_vm(&self, vm: VmRef, es: bool) -> Result<(), SevError> {
        let mut inner = self.lock();
        let vm_type = inner.vm_entry(vm, "KVM_SEV_INIT")?.vm_type;
        let (id, init) = match (vm_type, es) {
            (KvmVmType::Default, false) => (SevCommandId::INIT, InitKind::Legacy),
            (KvmVmType::Default, true) => (SevCommandId::ES_INIT, InitKind::Legacy),
            (KvmVmType::Sev | KvmVmType::SevEs, _) => (SevCommandId::INIT2, InitKind::Init2),
        };
        inner.gate(vm, id)?;
        if id == SevCommandId::ES_INIT && inner.es_support == EsSupport::Absent {
            return Err(kernel(id, libc::ENOTTY));
        }
        let type_mismatch = match vm_type {
            KvmVmType::Default => false,
            KvmVmType::Sev => es,
            KvmVmType::SevEs => !es,
        };
        let entry = inner.vms.get(&vm).expect("gated above");
        if type_mismatch || !entry.vcpus.is_empty() || entry.sev.is_some() {
            return Err(kernel(id, libc::EINVAL));
        }
        let next = platform_transition(inner.platform, PlatformEvent::Init)
            .map_err(|r| r.into_error("INIT", id.kvm_name()))?;
        let kind = if es { AsidKind::Es } else { AsidKind::Sev };
        let asid = inner.asids.allocate(kind).ok_or(kernel(id, libc::EBUSY))?;
        inner.platform = next;
        let ctx = inner.next_ctx;
        inner.next_ctx += 1;
        inner.contexts.insert(
            ctx,
            Context {
                asid,
                es,
                init,
                owner: Some(vm),
                mirrors: BTreeSet::new(),
                guest: None,
            },
        );
        inner.vms.get_mut(&vm).expect("gated above").sev = Some(VmSev {
            ctx,
            role: Role::Owner,
            handle: 0,
        });
        Ok(())
    }

    fn launch_start(
        &self,
        vm: VmRef,
        policy: Policy,
        session: Option<&LaunchSession>,
    ) -> Result<u32, SevError> {
        const CMD: &str = "LAUNCH_START";
        let mut inner = self.lock();
        let ctx = inner.sev_ctx(vm, SevCommandId::LAUNCH_START)?;
        let next_platform = platform_transition(inner.platform, PlatformEvent::GuestCreated)
            .map_err(|r| r.into_error(CMD, "KVM_SEV_LAUNCH_START"))?;
        if policy.0 & !Policy::DEFINED != 0 {
            return Err(firmware(CMD, SevStatus::INVALID_PARAM));
        }
        let es = inner.context(ctx).es;
        if !policy.allows_api(API_MAJOR, API_MINOR) || policy.has(Policy::ES) != es {
            return Err(firmware(CMD, SevStatus::POLICY_FAILURE));
        }
        let keys = match session {
            Some(s) => crate::session::open_session(
                inner.identity.pdh_key(),
                &s.godh_cert,
                &s.session,
                policy,
            )
            .map_err(|e| {
                log::debug!("LAUNCH_START refused the session: {e}");
                firmware(CMD, e.status())
            })?,
            None => TransportKeys::generate().map_err(|_| random_error(CMD))?,
        };
        // ACTIVATE binds the VM's ASID to the new handle; it is taken if the context
        // already has a guest (the kernel then decommissions the new handle).
        if inner.context(ctx).guest.is_some() {
            return Err(firmware("ACTIVATE", SevStatus::ASID_OWNED));
        }
        let cipher = Arc::new(XtsPageCipher::generate().map_err(|_| random_error(CMD))?);
        let handle = inner.next_handle;
        inner.next_handle = inner.next_handle.checked_add(1).unwrap_or(1);
        inner.context(ctx).guest = Some(Guest {
            handle,
            policy,
            state: GuestState::LaunchUpdate,
            keys,
            digest: LaunchDigest::new(),
            measurement: None,
            cipher,
        });
        if let Some(sev) = inner.vms.get_mut(&vm).and_then(|e| e.sev.as_mut()) {
            sev.handle = handle;
        }
        inner.platform = next_platform;
        Ok(handle)
    }

    fn launch_update_data(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        len: u64,
    ) -> Result<(), SevError> {
        const CMD: &str = "LAUNCH_UPDATE_DATA";
        const ID: SevCommandId = SevCommandId::LAUNCH_UPDATE_DATA;
        let mut inner = self.lock();
        inner.sev_ctx(vm, ID)?;
        if len == 0 || gpa.checked_add(len).is_none() {
            return Err(kernel(ID, libc::EINVAL));
        }
        let guest = inner.guest(vm, ID)?;
        guest_transition(guest.state, GuestCommand::LaunchUpdateData)
            .map_err(|s| firmware(CMD, s))?;
        if !gpa.is_multiple_of(16) {
            return Err(firmware(CMD, SevStatus::INVALID_ADDRESS));
        }
        if !len.is_multiple_of(16) {
            return Err(firmware(CMD, SevStatus::INVALID_LENGTH));
        }
        let mut digest = guest.digest.clone();
        for_each_piece(mem, gpa, len, |piece| digest.update_data(piece))?;
        guest.digest = digest;
        Ok(())
    }

    /// `sev_launch_update_vmsa`: ENOTTY unless an SEV-ES VM (a mirror takes its owner's
    /// ES flag); with no vCPUs, success without a firmware call. Otherwise, per vCPU in
    /// index order, what `sev_es_sync_vmsa` and the firmware do: EINVAL if the vCPU is
    /// already protected or its DR7 is not the reset value; then the kernel's part of the
    /// VMSA (SEV features = the VM's, 0 here; no FPU state after a legacy
    /// `KVM_SEV_ES_INIT`), LAUNCH_UPDATE_VMSA (EBADF without a handle,
    /// INVALID_GUEST_STATE outside LUPDATE: mirror vCPUs must come before the owner's
    /// LAUNCH_MEASURE) measures the page into the context's digest and encrypts it, and
    /// the vCPU is protected. A failure keeps the vCPUs done before it, as the kernel's
    /// loop does. `vmsas.len()` must equal the vCPUs created (EINVAL otherwise, before
    /// anything is done).
    fn launch_update_vmsa(&self, vm: VmRef, vmsas: &[Vmsa]) -> Result<(), SevError> {
        const CMD: &str = "LAUNCH_UPDATE_VMSA";
        const ID: SevCommandId = SevCommandId::LAUNCH_UPDATE_VMSA;
        let mut inner = self.lock();
        let ctx = inner.sev_ctx(vm, ID)?;
        let (es, init) = {
            let c = inner.context(ctx);
            (c.es, c.init)
        };
        if !es {
            return Err(kernel(ID, libc::ENOTTY));
        }
        let vcpus = inner.vms.get(&vm).expect("gated above").vcpus.len();
        if vmsas.len() != vcpus {
            return Err(kernel(ID, libc::EINVAL));
        }
        for (index, state) in vmsas.iter().enumerate() {
            let protected = inner.vms.get(&vm).expect("gated above").vcpus[index].is_some();
            if protected || state.dr7 & !DR7_FIXED_1 != 0 {
                return Err(kernel(ID, libc::EINVAL));
            }
            let mut synced = *state;
            synced.sev_features = 0;
            if init == InitKind::Legacy {
                synced.clear_fpu();
            }
            let spa = inner.next_vmsa_spa;
            let guest = inner.guest(vm, ID)?;
            guest_transition(guest.state, GuestCommand::LaunchUpdateVmsa)
                .map_err(|s| firmware(CMD, s))?;
            guest.digest.update_vmsa(&synced.to_bytes());
            let slot = Arc::new(VmsaSlot::new(guest.cipher.clone(), spa, &synced));
            inner.next_vmsa_spa += PAGE_SIZE as u64;
            inner.vms.get_mut(&vm).expect("gated above").vcpus[index] = Some(slot);
        }
        Ok(())
    }

    fn launch_measure(&self, vm: VmRef) -> Result<LaunchMeasurement, SevError> {
        const CMD: &str = "LAUNCH_MEASURE";
        let mut inner = self.lock();
        let guest = inner.guest(vm, SevCommandId::LAUNCH_MEASURE)?;
        let next = guest_transition(guest.state, GuestCommand::LaunchMeasure)
            .map_err(|s| firmware(CMD, s))?;
        let mnonce: [u8; 16] = random_bytes().map_err(|_| random_error(CMD))?;
        let m = launch_measurement(
            guest.keys.tik(),
            FIRMWARE,
            guest.policy,
            &guest.digest.value(),
            &mnonce,
        );
        guest.measurement = Some(m.measurement());
        guest.state = next;
        Ok(m)
    }

    fn launch_secret(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        header: &SecretHeader,
        secret: &[u8],
        gpa: u64,
    ) -> Result<(), SevError> {
        const CMD: &str = "LAUNCH_SECRET";
        const ID: SevCommandId = SevCommandId::LAUNCH_SECRET;
        let mut inner = self.lock();
        inner.sev_ctx(vm, ID)?;
        // The kernel's own checks come before the firmware sees anything.
        if secret.is_empty() || secret.len() > crate::secret::MAX_SECRET {
            return Err(kernel(ID, libc::EINVAL));
        }
        let guest = inner.guest(vm, ID)?;
        guest_transition(guest.state, GuestCommand::LaunchSecret).map_err(|s| firmware(CMD, s))?;
        let measurement = guest
            .measurement
            .ok_or(firmware(CMD, SevStatus::INVALID_GUEST_STATE))?;
        let plain = crate::secret::open(&guest.keys, &measurement, header, secret, gpa)
            .map_err(|e| e.refusal().into_error(CMD, ID.kvm_name()))?;
        mem.write_plain(gpa, &plain)?;
        Ok(())
    }

    fn launch_finish(&self, vm: VmRef) -> Result<(), SevError> {
        const CMD: &str = "LAUNCH_FINISH";
        let mut inner = self.lock();
        let guest = inner.guest(vm, SevCommandId::LAUNCH_FINISH)?;
        guest.state = guest_transition(guest.state, GuestCommand::LaunchFinish)
            .map_err(|s| firmware(CMD, s))?;
        Ok(())
    }

    fn guest_status(&self, vm: VmRef) -> Result<GuestStatus, SevError> {
        const CMD: &str = "GUEST_STATUS";
        let mut inner = self.lock();
        let ctx = inner.sev_ctx(vm, SevCommandId::GUEST_STATUS)?;
        let asid = inner.context(ctx).asid;
        let guest = inner.guest(vm, SevCommandId::GUEST_STATUS)?;
        guest_transition(guest.state, GuestCommand::GuestStatus).map_err(|s| firmware(CMD, s))?;
        Ok(GuestStatus {
            handle: guest.handle,
            policy: guest.policy,
            asid,
            state: guest.state,
        })
    }

    fn dbg_decrypt(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        out: &mut [u8],
    ) -> Result<(), SevError> {
        const CMD: &str = "DBG_DECRYPT";
        const ID: SevCommandId = SevCommandId::DBG_DECRYPT;
        let mut inner = self.lock();
        inner.sev_ctx(vm, ID)?;
        if out.is_empty() || gpa.checked_add(out.len() as u64).is_none() {
            return Err(kernel(ID, libc::EINVAL));
        }
        let guest = inner.guest(vm, ID)?;
        guest_transition(guest.state, GuestCommand::DbgDecrypt).map_err(|s| firmware(CMD, s))?;
        if guest.policy.has(Policy::NODBG) {
            return Err(firmware(CMD, SevStatus::POLICY_FAILURE));
        }
        mem.read_plain(gpa, out)?;
        Ok(())
    }

    fn dbg_encrypt(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), SevError> {
        const CMD: &str = "DBG_ENCRYPT";
        const ID: SevCommandId = SevCommandId::DBG_ENCRYPT;
        let mut inner = self.lock();
        inner.sev_ctx(vm, ID)?;
        if data.is_empty() || gpa.checked_add(data.len() as u64).is_none() {
            return Err(kernel(ID, libc::EINVAL));
        }
        let guest = inner.guest(vm, ID)?;
        guest_transition(guest.state, GuestCommand::DbgEncrypt).map_err(|s| firmware(CMD, s))?;
        if guest.policy.has(Policy::NODBG) {
            return Err(firmware(CMD, SevStatus::POLICY_FAILURE));
        }
        mem.write_plain(gpa, data)?;
        Ok(())
    }

    /// `sev_vm_copy_enc_context_from`: EBADF if `mirror` or `owner` is not an open VM; EIO
    /// on a dead mirror VM; EINVAL if mirror == owner; EBUSY if either is migrating; EINVAL
    /// if the mirror is already an SEV VM (so an ES mismatch cannot arise: the mirror takes
    /// the owner's ES flag), the owner is not an SEV VM or is itself a mirror, or the
    /// mirror has vCPUs. The mirror copies the owner's handle as it is now: one copied
    /// before the owner's LAUNCH_START keeps 0, and its guest commands fail (EBADF).
    fn copy_enc_context_from(&self, mirror: VmRef, owner: VmRef) -> Result<(), SevError> {
        const OP: &str = "KVM_CAP_VM_COPY_ENC_CONTEXT_FROM";
        let err = |errno| SevError::Kernel { op: OP, errno };
        let mut inner = self.lock();
        let m = inner.vm_entry(mirror, OP)?;
        if m.dead {
            return Err(err(libc::EIO));
        }
        let (m_sev, m_vcpus, m_migrating) = (m.sev.is_some(), m.vcpus.len(), m.migrating);
        let Some(o) = inner.vms.get(&owner) else {
            return Err(err(libc::EBADF));
        };
        if mirror == owner {
            return Err(err(libc::EINVAL));
        }
        if m_migrating || o.migrating {
            return Err(err(libc::EBUSY));
        }
        let (owner_ctx, handle) = match &o.sev {
            Some(s) if s.role == Role::Owner => (s.ctx, s.handle),
            _ => return Err(err(libc::EINVAL)),
        };
        if m_sev || m_vcpus > 0 {
            return Err(err(libc::EINVAL));
        }
        inner.context(owner_ctx).mirrors.insert(mirror);
        inner.vms.get_mut(&mirror).expect("looked up above").sev = Some(VmSev {
            ctx: owner_ctx,
            role: Role::Mirror,
            handle,
        });
        Ok(())
    }

    /// `sev_vm_move_enc_context_from`: EBADF if `dst` or `src` is not an open VM; EIO on a
    /// dead destination; EINVAL if dst == src; EBUSY if either is migrating; EINVAL if the
    /// two VMs' KVM types differ, dst is already an SEV VM or src is not one; for SEV-ES,
    /// EINVAL unless both have the same number of vCPUs and every source vCPU's VMSA is
    /// encrypted (`sev_check_source_vcpus`). Moves the context, the handle and (SEV-ES)
    /// each vCPU's VMSA to the vCPU of the same index (an owner keeps its mirrors, a
    /// mirror stays its owner's mirror); src is dead afterwards.
    fn move_enc_context_from(&self, dst: VmRef, src: VmRef) -> Result<(), SevError> {
        const OP: &str = "KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM";
        let err = |errno| SevError::Kernel { op: OP, errno };
        let mut inner = self.lock();
        let d = inner.vm_entry(dst, OP)?;
        if d.dead {
            return Err(err(libc::EIO));
        }
        let (d_type, d_sev, d_vcpus, d_migrating) =
            (d.vm_type, d.sev.is_some(), d.vcpus.len(), d.migrating);
        let Some(s) = inner.vms.get(&src) else {
            return Err(err(libc::EBADF));
        };
        if dst == src {
            return Err(err(libc::EINVAL));
        }
        if d_migrating || s.migrating {
            return Err(err(libc::EBUSY));
        }
        let Some(s_sev) = &s.sev else {
            return Err(err(libc::EINVAL));
        };
        if d_type != s.vm_type || d_sev {
            return Err(err(libc::EINVAL));
        }
        let (ctx, role) = (s_sev.ctx, s_sev.role);
        let es = inner.context(ctx).es;
        if es {
            let s = inner.vms.get(&src).expect("looked up above");
            if s.vcpus.len() != d_vcpus || s.vcpus.iter().any(Option::is_none) {
                return Err(err(libc::EINVAL));
            }
        }
        let s = inner.vms.get_mut(&src).expect("looked up above");
        let sev = s.sev.take();
        let slots: Vec<_> = if es {
            s.vcpus.iter_mut().map(Option::take).collect()
        } else {
            Vec::new()
        };
        s.dead = true;
        let d = inner.vms.get_mut(&dst).expect("looked up above");
        d.sev = sev;
        for (vcpu, slot) in d.vcpus.iter_mut().zip(slots) {
            *vcpu = slot;
        }
        let c = inner.context(ctx);
        match role {
            Role::Owner => c.owner = Some(dst),
            Role::Mirror => {
                c.mirrors.remove(&src);
                c.mirrors.insert(dst);
            }
        }
        Ok(())
    }

    fn page_cipher(&self, vm: VmRef) -> Option<Arc<dyn PageCipher>> {
        let inner = self.lock();
        let entry = inner.vms.get(&vm).filter(|e| !e.dead)?;
        let ctx = inner.contexts.get(&entry.sev.as_ref()?.ctx)?;
        let cipher: Arc<dyn PageCipher> = ctx.guest.as_ref()?.cipher.clone();
        Some(cipher)
    }

    fn protected_vcpu_state(&self, vm: VmRef, vcpu: u32) -> Option<Arc<VmsaSlot>> {
        let inner = self.lock();
        let entry = inner.vms.get(&vm).filter(|e| !e.dead)?;
        entry.vcpus.get(usize::try_from(vcpu).ok()?)?.clone()
    }

    /// The VM's fd is closed: commands naming it are EBADF from now on. A mirror drops
    /// its reference; an owner's context (ASID, key, guest) outlives it while mirrors hold
    /// it (`sev_vm_destroy`), and is decommissioned with the last of them.
    fn vm_destroyed(&self, vm: VmRef) {
        self.lock().destroy(vm);
    }
}

impl EmulatedPsp {
    /// The ASID the VM's context holds (owner or mirror), if it is a live SEV VM.
    pub fn asid(&self, vm: VmRef) -> Option<u32> {
        let inner = self.lock();
        let entry = inner.vms.get(&vm).filter(|e| !e.dead)?;
        inner.contexts.get(&entry.sev.as_ref()?.ctx).map(|c| c.asid)
    }

    /// Whether `asid` is held by some guest context (tests of ASID lifetime).
    pub fn asid_in_use(&self, asid: u32) -> bool {
        self.lock().asids.in_use(asid)
    }

    /// Refusal helper shared with the tests: the kernel errno or firmware status of an
    /// error, if it has one.
    pub fn refusal_of(err: &SevError) -> Option<Refusal> {
        err.status()
            .map(Refusal::Status)
            .or_else(|| err.errno().map(Refusal::Errno))
    }
}
