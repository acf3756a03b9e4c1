//! The emulated PSP: an [`SevBackend`] in software, faithful at the boundaries the host
//! observes (docs/architecture.md §3): the firmware's commands, state machines, status
//! codes and byte formats (AMD SEV API spec 0.24), and the kernel's rules and errno values in front of
//! them (`arch/x86/kvm/svm/sev.c`, `drivers/crypto/ccp/sev-dev.c`).
//!
//! # What it reports
//! - API version **0.24, build 1** ([`FIRMWARE`]); the launch measurement binds it, so
//!   guest owners verify with `--api-major 0 --api-minor 24 --build-id 1`.
//! - ASIDs as CPUID 0x8000001F would announce them: ECX (max) = [`MAX_SEV_ASID`] = 15,
//!   EDX (min SEV ASID) = [`MIN_SEV_ASID`] = 8, so SEV guests use 8..=15 and SEV-ES guests
//!   1..=7, like real parts with ES ASIDs below the SEV range. Running out is EBUSY at
//!   KVM_SEV_INIT (the kernel's `sev_asid_new`), not a firmware status.
//!
//! # Model
//! VMs are keyed by [`VmRef`]. A VM becomes an SEV VM at [`SevBackend::init_vm`] (an ASID
//! and an empty encryption context); LAUNCH_START creates the firmware guest (handle,
//! policy, transport keys, VEK, launch digest). Mirrors share the owner's context; the
//! context (ASID, key, guest) lives until the owner *and* all its mirrors are destroyed.
//! Where the kernel answers before the firmware (no SEV VM: ENOTTY; mirror restrictions:
//! EINVAL; dead VM: EIO; empty buffers: EINVAL) the error is [`SevError::Kernel`];
//! firmware refusals are [`SevError::Firmware`] with the spec's status. A command that
//! fails changes nothing.
//!
//! Failure → code, per command (besides the kernel rules above):
//!
//! | command            | failure                                   | code                   |
//! |--------------------|-------------------------------------------|------------------------|
//! | INIT               | vCPUs exist / already SEV                 | EINVAL                 |
//! | INIT               | no free ASID                              | EBUSY                  |
//! | LAUNCH_START       | platform UNINIT (after FACTORY_RESET)     | INVALID_PLATFORM_STATE |
//! | LAUNCH_START       | reserved policy bits set                  | INVALID_PARAM          |
//! | LAUNCH_START       | policy needs a newer API / ES mismatch    | POLICY_FAILURE         |
//! | LAUNCH_START       | session: see [`crate::session`]           | INVALID_LENGTH, INVALID_CERTIFICATE, BAD_MEASUREMENT |
//! | LAUNCH_START       | guest already launched (ASID bound)       | ASID_OWNED             |
//! | any guest command  | no LAUNCH_START yet (handle 0)            | INVALID_GUEST          |
//! | any guest command  | wrong guest state ([`state`])             | INVALID_GUEST_STATE    |
//! | LAUNCH_UPDATE_DATA | empty                                     | EINVAL                 |
//! | LAUNCH_UPDATE_DATA | address / length not 16-byte multiples    | INVALID_ADDRESS / INVALID_LENGTH |
//! | LAUNCH_SECRET      | see [`crate::secret`]                     | EINVAL, INVALID_LENGTH, INVALID_ADDRESS, BAD_MEASUREMENT, UNSUPPORTED, INVALID_PARAM |
//! | DBG_*              | empty                                     | EINVAL                 |
//! | DBG_*              | policy NODBG                              | POLICY_FAILURE         |
//! | FACTORY_RESET      | guests exist (WORKING)                    | EBUSY                  |

mod asid;
mod command;
pub mod state;

#[cfg(test)]
mod tests;

pub use asid::{AsidKind, AsidPool};
pub use command::SevCommandId;

use crate::{
    backend::{
        BackendKind, GuestState, GuestStatus, LaunchMeasurement, LaunchMemory, LaunchSession,
        PageCipher, PlatformCerts, PlatformState, PlatformStatus, Refusal, SecretHeader,
        SevBackend, SevError, VmRef, PAGE_SIZE,
    },
    crypto::{random_bytes, TransportKeys},
    identity::PlatformIdentity,
    measure::{launch_measurement, FirmwareVersion, LaunchDigest},
    memcrypt::XtsPageCipher,
    policy::Policy,
    status::SevStatus,
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

#[derive(Debug)]
struct VmSev {
    ctx: u64,
    role: Role,
    /// LAUNCH_UPDATE_VMSA done for its vCPUs (`guest_state_protected`).
    vmsa_protected: bool,
}

#[derive(Debug, Default)]
struct VmEntry {
    vcpus: u32,
    migrating: bool,
    /// Moved from (`kvm_vm_dead`): every ioctl fails with EIO.
    dead: bool,
    sev: Option<VmSev>,
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
    owner: Option<VmRef>,
    mirrors: BTreeSet<VmRef>,
    guest: Option<Guest>,
}

#[derive(Debug)]
struct Inner {
    identity: PlatformIdentity,
    platform: PlatformState,
    vms: HashMap<VmRef, VmEntry>,
    contexts: HashMap<u64, Context>,
    next_ctx: u64,
    next_handle: u32,
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
    /// The kernel's gate in front of every `KVM_MEMORY_ENCRYPT_OP` on `vm`: EIO on a dead
    /// VM, EINVAL for commands a mirror may not issue and for unknown ids.
    fn gate(&mut self, vm: VmRef, id: SevCommandId) -> Result<(), SevError> {
        let entry = self.vms.entry(vm).or_default();
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

    /// The launched guest of `vm`'s context (INVALID_GUEST before LAUNCH_START), gated.
    fn guest(
        &mut self,
        vm: VmRef,
        id: SevCommandId,
        command: &'static str,
    ) -> Result<&mut Guest, SevError> {
        let ctx = self.sev_ctx(vm, id)?;
        self.context(ctx)
            .guest
            .as_mut()
            .ok_or(firmware(command, SevStatus::INVALID_GUEST))
    }

    fn guest_count(&self) -> u32 {
        let n = self.contexts.values().filter(|c| c.guest.is_some()).count();
        u32::try_from(n).expect("at most MAX_SEV_ASID guests")
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
    /// A PSP with `identity`, in state UNINIT, no guests.
    pub fn new(identity: PlatformIdentity) -> EmulatedPsp {
        EmulatedPsp {
            inner: Mutex::new(Inner {
                identity,
                platform: PlatformState::Uninit,
                vms: HashMap::new(),
                contexts: HashMap::new(),
                next_ctx: 1,
                next_handle: 1,
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
    /// EIO if the VM is dead (moved from), EINVAL if `vm` is a mirror and `id` is not
    /// one of LAUNCH_UPDATE_VMSA, GUEST_STATUS, DBG_DECRYPT, DBG_ENCRYPT, EINVAL for an
    /// unknown id. The trait methods apply it themselves; the VMM may call it for the
    /// sub-commands the emulation does not implement.
    pub fn check_encrypt_op(&self, vm: VmRef, id: SevCommandId) -> Result<(), SevError> {
        self.lock().gate(vm, id)
    }

    /// The VM `vm` exists (its fd is open), so that naming it as a source of
    /// copy/move gives EINVAL rather than EBADF when it is not an SEV VM.
    pub fn note_vm_created(&self, vm: VmRef) {
        self.lock().vms.entry(vm).or_default();
    }

    /// A vCPU was created in `vm` (KVM_CREATE_VCPU). After that, KVM_SEV_INIT and
    /// becoming a mirror are EINVAL; SEV-ES moves compare vCPU counts. EIO on a dead VM.
    pub fn note_vcpu_created(&self, vm: VmRef) -> Result<(), SevError> {
        let mut inner = self.lock();
        let entry = inner.vms.entry(vm).or_default();
        if entry.dead {
            return Err(SevError::Kernel {
                op: "KVM_CREATE_VCPU",
                errno: libc::EIO,
            });
        }
        entry.vcpus += 1;
        Ok(())
    }

    /// Marks `vm` as (not) being in an intra-host migration; copy/move naming it fail
    /// with EBUSY meanwhile.
    pub fn set_migration(&self, vm: VmRef, migration: Migration) {
        self.lock().vms.entry(vm).or_default().migrating = migration == Migration::InProgress;
    }

    /// KVM_MEMORY_ENCRYPT_REG_REGION: ENOTTY on a non-SEV VM, EINVAL on a mirror (it
    /// does not own the context), EIO on a dead VM.
    pub fn register_region(&self, vm: VmRef) -> Result<(), SevError> {
        const OP: &str = "KVM_MEMORY_ENCRYPT_REG_REGION";
        let mut inner = self.lock();
        let entry = inner.vms.entry(vm).or_default();
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

    /// KVM_SEV_LAUNCH_UPDATE_VMSA (SEV-ES; allowed on mirrors): adds the VMSA of each of
    /// `vm`'s vCPUs, in vCPU order, to the launch digest and marks them protected. The
    /// VMM passes one page per vCPU it created (`vmsas.len()` must equal the vCPUs noted
    /// with [`EmulatedPsp::note_vcpu_created`], else EINVAL); ENOTTY on a non-ES VM;
    /// INVALID_GUEST_STATE outside LUPDATE (so mirror vCPUs must be added before the
    /// owner's LAUNCH_MEASURE). Like the kernel (`sev_launch_update_vmsa` has no such
    /// check), a repeated call measures the pages again.
    pub fn launch_update_vmsa(&self, vm: VmRef, vmsas: &[[u8; PAGE_SIZE]]) -> Result<(), SevError> {
        const ID: SevCommandId = SevCommandId::LAUNCH_UPDATE_VMSA;
        let mut inner = self.lock();
        let ctx = inner.sev_ctx(vm, ID)?;
        let vcpus = inner.vms.get(&vm).expect("gated above").vcpus;
        if !inner.context(ctx).es {
            return Err(kernel(ID, libc::ENOTTY));
        }
        if vmsas.len() != vcpus as usize {
            return Err(kernel(ID, libc::EINVAL));
        }
        let guest = inner
            .context(ctx)
            .guest
            .as_mut()
            .ok_or(firmware("LAUNCH_UPDATE_VMSA", SevStatus::INVALID_GUEST))?;
        guest_transition(guest.state, GuestCommand::LaunchUpdateVmsa)
            .map_err(|s| firmware("LAUNCH_UPDATE_VMSA", s))?;
        for vmsa in vmsas {
            guest.digest.update_vmsa(vmsa);
        }
        if let Some(sev) = inner.vms.get_mut(&vm).and_then(|e| e.sev.as_mut()) {
            sev.vmsa_protected = true;
        }
        Ok(())
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
            es: true,
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

    fn init_vm(&self, vm: VmRef, es: bool) -> Result<(), SevError> {
        let id = if es {
            SevCommandId::ES_INIT
        } else {
            SevCommandId::INIT
        };
        let mut inner = self.lock();
        inner.gate(vm, id)?;
        let entry = inner.vms.get(&vm).expect("gated above");
        if entry.vcpus > 0 || entry.sev.is_some() {
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
                owner: Some(vm),
                mirrors: BTreeSet::new(),
                guest: None,
            },
        );
        inner.vms.get_mut(&vm).expect("gated above").sev = Some(VmSev {
            ctx,
            role: Role::Owner,
            vmsa_protected: false,
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
        let guest = inner.guest(vm, ID, CMD)?;
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

    fn launch_measure(&self, vm: VmRef) -> Result<LaunchMeasurement, SevError> {
        const CMD: &str = "LAUNCH_MEASURE";
        let mut inner = self.lock();
        let guest = inner.guest(vm, SevCommandId::LAUNCH_MEASURE, CMD)?;
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
        let guest = inner.guest(vm, ID, CMD)?;
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
        let guest = inner.guest(vm, SevCommandId::LAUNCH_FINISH, CMD)?;
        guest.state = guest_transition(guest.state, GuestCommand::LaunchFinish)
            .map_err(|s| firmware(CMD, s))?;
        Ok(())
    }

    fn guest_status(&self, vm: VmRef) -> Result<GuestStatus, SevError> {
        const CMD: &str = "GUEST_STATUS";
        let mut inner = self.lock();
        let ctx = inner.sev_ctx(vm, SevCommandId::GUEST_STATUS)?;
        let c = inner.context(ctx);
        let asid = c.asid;
        let guest = c
            .guest
            .as_ref()
            .ok_or(firmware(CMD, SevStatus::INVALID_GUEST))?;
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
        let guest = inner.guest(vm, ID, CMD)?;
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
        let guest = inner.guest(vm, ID, CMD)?;
        guest_transition(guest.state, GuestCommand::DbgEncrypt).map_err(|s| firmware(CMD, s))?;
        if guest.policy.has(Policy::NODBG) {
            return Err(firmware(CMD, SevStatus::POLICY_FAILURE));
        }
        mem.write_plain(gpa, data)?;
        Ok(())
    }

    /// `sev_vm_copy_enc_context_from`: EIO on a dead mirror VM; EBADF if `owner` is not
    /// a known VM; EINVAL if mirror == owner; EBUSY if either is migrating; EINVAL if the
    /// mirror is already an SEV VM (so an ES mismatch cannot arise: the mirror takes the
    /// owner's ES flag), the owner is not an SEV VM or is itself a mirror, or the mirror
    /// has vCPUs.
    fn copy_enc_context_from(&self, mirror: VmRef, owner: VmRef) -> Result<(), SevError> {
        const OP: &str = "KVM_CAP_VM_COPY_ENC_CONTEXT_FROM";
        let err = |errno| SevError::Kernel { op: OP, errno };
        let mut inner = self.lock();
        let m = inner.vms.entry(mirror).or_default();
        if m.dead {
            return Err(err(libc::EIO));
        }
        let (m_sev, m_vcpus, m_migrating) = (m.sev.is_some(), m.vcpus, m.migrating);
        let Some(o) = inner.vms.get(&owner) else {
            return Err(err(libc::EBADF));
        };
        if mirror == owner {
            return Err(err(libc::EINVAL));
        }
        if m_migrating || o.migrating {
            return Err(err(libc::EBUSY));
        }
        let owner_ctx = match &o.sev {
            Some(s) if s.role == Role::Owner => s.ctx,
            _ => return Err(err(libc::EINVAL)),
        };
        if m_sev || m_vcpus > 0 {
            return Err(err(libc::EINVAL));
        }
        inner.context(owner_ctx).mirrors.insert(mirror);
        inner.vms.get_mut(&mirror).expect("entry made above").sev = Some(VmSev {
            ctx: owner_ctx,
            role: Role::Mirror,
            vmsa_protected: false,
        });
        Ok(())
    }

    /// `sev_vm_move_enc_context_from`: EIO on a dead destination; EBADF if `src` is not
    /// a known VM; EINVAL if dst == src; EBUSY if either is migrating; EINVAL if dst is
    /// already an SEV VM or src is not one; for SEV-ES, EINVAL unless both have the same
    /// number of vCPUs and src's VMSAs are encrypted. Moves the context (an owner keeps
    /// its mirrors, a mirror stays its owner's mirror); src is dead afterwards.
    fn move_enc_context_from(&self, dst: VmRef, src: VmRef) -> Result<(), SevError> {
        const OP: &str = "KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM";
        let err = |errno| SevError::Kernel { op: OP, errno };
        let mut inner = self.lock();
        let d = inner.vms.entry(dst).or_default();
        if d.dead {
            return Err(err(libc::EIO));
        }
        let (d_sev, d_vcpus, d_migrating) = (d.sev.is_some(), d.vcpus, d.migrating);
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
        if d_sev {
            return Err(err(libc::EINVAL));
        }
        let (ctx, role) = (s_sev.ctx, s_sev.role);
        if inner.context(ctx).es {
            let s = inner.vms.get(&src).expect("looked up above");
            let protected = s.sev.as_ref().is_some_and(|x| x.vmsa_protected);
            if s.vcpus != d_vcpus || (s.vcpus > 0 && !protected) {
                return Err(err(libc::EINVAL));
            }
        }
        let s = inner.vms.get_mut(&src).expect("looked up above");
        let sev = s.sev.take();
        s.dead = true;
        inner.vms.get_mut(&dst).expect("entry made above").sev = sev;
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

    /// The VM's fd is closed. A mirror drops its reference; an owner's context (ASID,
    /// key, guest) outlives it while mirrors hold it (`sev_vm_destroy`), and is
    /// decommissioned with the last of them.
    fn vm_destroyed(&self, vm: VmRef) {
        let mut inner = self.lock();
        let Some(entry) = inner.vms.remove(&vm) else {
            return;
        };
        let Some(sev) = entry.sev else {
            return;
        };
        let c = inner.context(sev.ctx);
        match sev.role {
            Role::Mirror => {
                c.mirrors.remove(&vm);
            }
            Role::Owner => c.owner = None,
        }
        if c.owner.is_none() && c.mirrors.is_empty() {
            inner.decommission(sev.ctx);
        }
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
