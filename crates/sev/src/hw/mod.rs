//! The hardware SEV backend: [`SevBackend`] over the real ioctls — `/dev/sev`
//! (`SEV_ISSUE_CMD`, issued here) for platform commands, and, through the VMM's
//! [`KvmOps`] handle of each VM, `KVM_MEMORY_ENCRYPT_OP` for guest commands and
//! `KVM_ENABLE_CAP` for the mirror and move capabilities.
//!
//! # What the VMM must do
//!
//! 1. **Create the VM with the type [`vm_type_for`] returns** for the mask `/dev/kvm`
//!    reports for `KVM_CAP_VM_TYPES` (the argument of `KVM_CREATE_VM`, e.g.
//!    `Kvm::create_vm_with_type`): `KVM_X86_SEV_VM` (2) or `KVM_X86_SEV_ES_VM` (3) on
//!    kernels that list them (6.10+), else `KVM_X86_DEFAULT_VM` (0), and tell the backend
//!    that type in [`SevBackend::vm_created`]. [`SevBackend::init_vm`] then issues
//!    `KVM_SEV_INIT2` on the first kind and the legacy `KVM_SEV_INIT`/`KVM_SEV_ES_INIT`
//!    on the second, as sev.c requires; an init whose mode is not the SEV VM type's is
//!    EINVAL before any ioctl (the emulated platform's rule; sev.c would silently take the
//!    type's mode). For SEV-ES the two paths measure differently:
//!    `KVM_SEV_INIT2` puts the FPU/AVX state and GHCB protocol version 2 into the VMSA, the
//!    legacy path does not (sev.c keeps the old measurement), so the guest owner must know
//!    which one the host used. On an INIT2 SEV-ES VM KVM also refuses (rather than
//!    ignores) register reads and writes once a vCPU's VMSA is encrypted
//!    (`has_protected_state`).
//! 2. **Order**: `init_vm` before creating any vCPU (sev.c refuses INIT with vCPUs); then
//!    [`SevBackend::launch_start`], [`SevBackend::launch_update_data`] for the firmware
//!    image, for SEV-ES [`SevBackend::launch_update_vmsa`] after all vCPUs exist and their
//!    registers are set (mirror vCPUs included: they must be created after
//!    `copy_enc_context_from` and get their VMSA before the owner's LAUNCH_FINISH), then
//!    [`SevBackend::launch_measure`], [`SevBackend::launch_secret`],
//!    [`SevBackend::launch_finish`]. Register guest RAM with
//!    [`HwBackend::register_region`] (QEMU does it for every RAM block) so the kernel pins
//!    it for the guest's lifetime.
//! 3. **VMs**: introduce every VM with [`SevBackend::vm_created`] (its [`VmRef`], KVM
//!    type and the VMM's [`KvmOps`] handle, which keeps the VM fd open) and each of its
//!    vCPUs with [`SevBackend::vcpu_created`]; a `VmRef` the backend was not given is
//!    EBADF, as a bad fd is for the kernel. The kernel records the `/dev/sev` fd
//!    *number* at LAUNCH_START and issues later firmware commands through it, so the
//!    `HwBackend` that launched a guest must live (and keep `/dev/sev` open) as long as
//!    that guest. For `copy_enc_context_from` the mirror must be a fresh VM (not SEV, no
//!    vCPUs); for `move_enc_context_from` the destination must be a fresh VM of the same
//!    VM type as the source.
//! 4. `vm_destroyed` drops the backend's handle: closing the VM fd makes the kernel
//!    DEACTIVATE and DECOMMISSION the guest (after its last mirror is gone; mirrors hold a
//!    reference on their owner).
//!
//! Operations that only need KVM (`copy_enc_context_from`, `move_enc_context_from`,
//! `register_region`) work on a [`HwBackend::kvm_only`] backend, which opens `/dev/sev`
//! only when a PSP command first needs it. The tests that run them against this machine's
//! KVM live with the VMM (`crates/vmm/tests/sev_hw_kvm.rs`), which owns the KVM handles.

mod errors;
mod ioctl;

pub use errors::explain;
pub use ioctl::{PspCmdId, SevCmdId, KVM_X86_DEFAULT_VM, KVM_X86_SEV_ES_VM, KVM_X86_SEV_VM};

use crate::{
    backend::{
        BackendKind, GuestState, GuestStatus, KvmVmType, LaunchMeasurement, LaunchMemory,
        LaunchSession, PageCipher, PlatformCerts, PlatformState, PlatformStatus, SecretHeader,
        SevBackend, VmRef,
    },
    kvm::{Errno, KvmOps, KVM_CAP_VM_COPY_ENC_CONTEXT_FROM, KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM},
    vmsa::{Vmsa, VmsaSlot},
    Policy, SevError,
};
use errors::result;
use ioctl::{
    BarePspCmd, BareSevCmd, DbgDecrypt, DbgEncrypt, EncRegion, GuestRange, LaunchMeasure,
    LaunchSecret, LaunchStart, LaunchUpdateData, PdhCertExport, PspPayload, RegionOp, SevCmd,
    SevIssueCmd, SevPayload, SevUserDataStatus,
};
use kvm_bindings::{kvm_enable_cap, kvm_sev_guest_status, kvm_sev_init};
use std::{
    collections::HashMap,
    fs::OpenOptions,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::Path,
    sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError},
};

/// The SEV firmware device.
pub const SEV_DEVICE: &str = "/dev/sev";

/// Size of the LAUNCH_MEASURE blob (SEV API spec 0.24 §6.5: 32-byte HMAC, 16-byte nonce).
const MEASUREMENT_LEN: usize = 48;
/// Largest LAUNCH_UPDATE_DATA one ioctl takes (`len` is a `__u32`), page aligned.
const MAX_UPDATE_CHUNK: u64 = 0xffff_f000;

/// Which SEV flavour a guest uses (for [`vm_type_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SevMode {
    /// SEV: memory encryption.
    Sev,
    /// SEV-ES: memory and register state encryption.
    SevEs,
}

impl SevMode {
    /// The mode a policy asks for (SEV-ES iff the policy's ES bit is set).
    pub fn from_policy(policy: Policy) -> SevMode {
        if policy.has(Policy::ES) {
            SevMode::SevEs
        } else {
            SevMode::Sev
        }
    }

    /// The `KVM_X86_*_VM` type for `KVM_SEV_INIT2`.
    fn init2_vm_type(self) -> KvmVmType {
        match self {
            SevMode::Sev => KvmVmType::Sev,
            SevMode::SevEs => KvmVmType::SevEs,
        }
    }

    /// The legacy init command (for `KVM_X86_DEFAULT_VM`).
    fn legacy_init(self) -> BareSevCmd {
        match self {
            SevMode::Sev => BareSevCmd::Init,
            SevMode::SevEs => BareSevCmd::EsInit,
        }
    }
}

/// The `KVM_CREATE_VM` type for a guest of `mode`, given the mask `KVM_CHECK_EXTENSION
/// (KVM_CAP_VM_TYPES)` returned (0 on kernels before 6.10): the SEV VM type when the
/// kernel supports it (then `KVM_SEV_INIT2` is used), else `KVM_X86_DEFAULT_VM` (legacy
/// `KVM_SEV_INIT`/`KVM_SEV_ES_INIT`). The same choice QEMU makes (`sev_kvm_type`).
pub fn vm_type_for(supported_vm_types: u64, mode: SevMode) -> KvmVmType {
    let t = mode.init2_vm_type();
    if supported_vm_types & (1 << t.raw()) != 0 {
        t
    } else {
        KvmVmType::Default
    }
}

/// What the backend knows of a VM the VMM introduced.
struct HwVm {
    /// The VMM's KVM handle: every KVM ioctl for the VM goes through it.
    kvm: Arc<dyn KvmOps>,
    /// The type it was created with: picks the init command.
    vm_type: KvmVmType,
    /// vCPUs created so far (LAUNCH_UPDATE_VMSA takes one VMSA per vCPU).
    vcpus: usize,
}

/// The hardware SEV platform.
///
/// Cheap to share (`Arc<dyn SevBackend>`); the kernel serialises commands itself.
pub struct HwBackend {
    /// `/dev/sev`, opened on construction ([`HwBackend::open`]) or on the first PSP command
    /// ([`HwBackend::kvm_only`]).
    sev: OnceLock<OwnedFd>,
    /// Each VM the VMM introduced ([`SevBackend::vm_created`]).
    vms: Mutex<HashMap<VmRef, HwVm>>,
}

impl std::fmt::Debug for HwBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HwBackend")
            .field("sev", &self.sev)
            .finish_non_exhaustive()
    }
}

impl HwBackend {
    /// Opens `/dev/sev` (read-write, close-on-exec). Fails with [`SevError::NoDevice`]
    /// where there is none.
    pub fn open() -> Result<HwBackend, SevError> {
        let backend = HwBackend::kvm_only();
        backend.sev_fd()?;
        Ok(backend)
    }

    /// A backend that has not opened `/dev/sev`: the KVM-only operations
    /// (`copy_enc_context_from`, `move_enc_context_from`, `register_region`) work without
    /// it, and the first PSP command opens it (or fails with [`SevError::NoDevice`]).
    pub fn kvm_only() -> HwBackend {
        HwBackend {
            sev: OnceLock::new(),
            vms: Mutex::new(HashMap::new()),
        }
    }

    /// Whether this machine has an SEV device (`/dev/sev` exists).
    pub fn available() -> bool {
        Path::new(SEV_DEVICE).exists()
    }

    /// `KVM_MEMORY_ENCRYPT_REG_REGION`: pin guest RAM [gpa, gpa + len) of `vm` for the
    /// guest's lifetime (the kernel unpins it when the VM is destroyed). Not on mirrors.
    pub fn register_region(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        len: u64,
    ) -> Result<(), SevError> {
        self.region_op(vm, RegionOp::Register, mem, gpa, len)
    }

    /// `KVM_MEMORY_ENCRYPT_UNREG_REGION`: undo [`HwBackend::register_region`] for exactly
    /// the same range.
    pub fn unregister_region(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        len: u64,
    ) -> Result<(), SevError> {
        self.region_op(vm, RegionOp::Unregister, mem, gpa, len)
    }

    /// The VMs, whatever a panicking holder of the lock left: every change is one map
    /// operation, complete or not made.
    fn vms(&self) -> MutexGuard<'_, HashMap<VmRef, HwVm>> {
        self.vms.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `f` of what the backend knows of `vm`; EBADF (as the kernel answers a bad fd) for a
    /// VM the VMM never introduced or already destroyed.
    fn with_vm<T>(
        &self,
        vm: VmRef,
        op: &'static str,
        f: impl FnOnce(&mut HwVm) -> T,
    ) -> Result<T, SevError> {
        self.vms().get_mut(&vm).map(f).ok_or(SevError::Kernel {
            op,
            errno: libc::EBADF,
        })
    }

    /// The KVM handle of `vm`; EBADF for a VM the backend does not know.
    fn kvm(&self, vm: VmRef, op: &'static str) -> Result<Arc<dyn KvmOps>, SevError> {
        self.with_vm(vm, op, |v| v.kvm.clone())
    }

    /// `/dev/sev`, opening it on first use.
    fn sev_fd(&self) -> Result<BorrowedFd<'_>, SevError> {
        if let Some(fd) = self.sev.get() {
            return Ok(fd.as_fd());
        }
        let fd = open_device(SEV_DEVICE)?;
        // Another thread may have won the race; its fd is as good as ours, ours is closed.
        let _ = self.sev.set(fd);
        Ok(self.sev.get().expect("set just above").as_fd())
    }

    /// `KVM_MEMORY_ENCRYPT_OP` with an argument struct; the command id comes from its type.
    fn encrypt_op<P: SevPayload>(&self, vm: VmRef, payload: &mut P) -> Result<(), SevError> {
        let name = P::ID.kernel_name();
        let sev = self.sev_fd()?;
        let kvm = self.kvm(vm, name)?;
        let mut cmd = SevCmd::new(payload, sev);
        // SAFETY: `cmd` was built from `payload`, whose type fixed the command id
        // (`SevPayload`: exactly the uapi struct the kernel copies in and out for that id,
        // every user pointer inside borrowed for the payload's lifetime), and `payload`
        // is borrowed by `cmd` for the whole call. `sev_fd` is the open /dev/sev above.
        let out = unsafe { kvm.memory_encrypt_op(cmd.raw_mut()) };
        let fw = cmd.fw_error();
        status(name, out, fw)
    }

    /// `KVM_MEMORY_ENCRYPT_OP` for a command without an argument struct.
    fn bare_op(&self, vm: VmRef, bare: BareSevCmd) -> Result<(), SevError> {
        let name = bare.id().kernel_name();
        let sev = self.sev_fd()?;
        let kvm = self.kvm(vm, name)?;
        let mut cmd = SevCmd::bare(bare, sev);
        // SAFETY: a bare command's `data` is 0: the kernel reads no argument struct for
        // it (`BareSevCmd`); `sev_fd` is the open /dev/sev above.
        let out = unsafe { kvm.memory_encrypt_op(cmd.raw_mut()) };
        let fw = cmd.fw_error();
        status(name, out, fw)
    }

    /// `SEV_ISSUE_CMD` with an argument struct.
    fn psp_op<P: PspPayload>(&self, payload: &mut P) -> Result<(), SevError> {
        let sev = self.sev_fd()?;
        let mut cmd = SevIssueCmd::new(payload);
        let out = ioctl::sev_issue_cmd(sev, &mut cmd);
        result(psp_name(P::ID), out.rc, out.errno, cmd.fw_error())
    }

    /// `SEV_ISSUE_CMD` for a command without an argument struct.
    fn psp_bare(&self, bare: BarePspCmd) -> Result<(), SevError> {
        let sev = self.sev_fd()?;
        let mut cmd = SevIssueCmd::bare(bare);
        let out = ioctl::sev_issue_cmd(sev, &mut cmd);
        result(psp_name(bare.id()), out.rc, out.errno, cmd.fw_error())
    }
}

fn psp_name(id: PspCmdId) -> &'static str {
    id.name().unwrap_or("SEV_ISSUE_CMD")
}

/// The backend's error for a KVM ioctl's outcome and the firmware status it wrote back.
fn status(op: &'static str, out: Result<(), Errno>, fw_error: u32) -> Result<(), SevError> {
    match out {
        Ok(()) => result(op, 0, 0, fw_error),
        Err(Errno(errno)) => result(op, -1, errno, fw_error),
    }
}

/// Opens a device read-write and close-on-exec, with the errors a user can act on.
fn open_device(path: &'static str) -> Result<OwnedFd, SevError> {
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => Ok(OwnedFd::from(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(SevError::NoDevice(format!("{path} does not exist")))
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENXIO) | Some(libc::ENODEV)) => Err(
            SevError::NoDevice(format!("{path} exists but no driver is behind it")),
        ),
        Err(e) => Err(SevError::Kernel {
            op: "open /dev/sev",
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }),
    }
}

impl HwBackend {
    fn region_op(
        &self,
        vm: VmRef,
        op: RegionOp,
        mem: &dyn LaunchMemory,
        gpa: u64,
        len: u64,
    ) -> Result<(), SevError> {
        let name = match op {
            RegionOp::Register => "KVM_MEMORY_ENCRYPT_REG_REGION",
            RegionOp::Unregister => "KVM_MEMORY_ENCRYPT_UNREG_REGION",
        };
        // Memory first: a range the VMM has no mapping for never reaches the kernel.
        let range = GuestRange::resolve(mem, gpa, len)?;
        let region = EncRegion::new(range);
        let kvm = self.kvm(vm, name)?;
        let out = match op {
            RegionOp::Register => kvm.register_enc_region(region.raw()),
            RegionOp::Unregister => kvm.unregister_enc_region(region.raw()),
        };
        status(name, out, 0)
    }

    /// `KVM_ENABLE_CAP(cap)` on `dst` with `args[0]` = `src`'s VM fd, flags 0.
    fn enable_cap_from(
        &self,
        op: &'static str,
        cap: u32,
        dst: VmRef,
        src: VmRef,
    ) -> Result<(), SevError> {
        let (dst, src) = (self.kvm(dst, op)?, self.kvm(src, op)?);
        let mut raw = kvm_enable_cap {
            cap,
            ..Default::default()
        };
        raw.args[0] = fd_arg(src.vm_fd());
        status(op, dst.enable_cap(&raw), 0)
    }
}

fn platform_status_from(raw: SevUserDataStatus) -> PlatformStatus {
    let flags = raw.flags;
    PlatformStatus {
        api_major: raw.api_major,
        api_minor: raw.api_minor,
        build: raw.build,
        state: PlatformState::from_raw(raw.state),
        owned_externally: flags & ioctl::SEV_STATUS_FLAGS_OWNER != 0,
        es: flags & ioctl::SEV_STATUS_FLAGS_CONFIG_ES != 0,
        guest_count: raw.guest_count,
    }
}

fn guest_status_from(raw: kvm_sev_guest_status) -> GuestStatus {
    GuestStatus {
        handle: raw.handle,
        policy: Policy(raw.policy),
        // KVM_SEV_GUEST_STATUS reports handle, policy and state only; the ASID stays
        // inside the kernel.
        asid: 0,
        state: u8::try_from(raw.state).map_or(GuestState::Other(u8::MAX), GuestState::from_raw),
    }
}

/// Checks the lengths a length query returned before anything is allocated.
fn queried_len(what: &'static str, len: u32) -> Result<usize, SevError> {
    let len = len as usize;
    if len == 0 || len > ioctl::SEV_FW_BLOB_MAX_SIZE {
        return Err(SevError::Malformed {
            what,
            why: format!("the firmware asked for {len} bytes"),
        });
    }
    Ok(len)
}

impl SevBackend for HwBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Hardware
    }

    fn platform_status(&self) -> Result<PlatformStatus, SevError> {
        let mut raw = SevUserDataStatus::default();
        self.psp_op(&mut raw)?;
        Ok(platform_status_from(raw))
    }

    fn export_certs(&self) -> Result<PlatformCerts, SevError> {
        // Length query first (sev-dev.c: null addresses ask the firmware for the sizes; it
        // answers INVALID_LENGTH and fills them in), then the real export.
        let mut query = PdhCertExport::query();
        let queried = self.psp_op(&mut query);
        let (pdh_len, chain_len) = query.lens();
        if pdh_len == 0 || chain_len == 0 {
            queried?;
        }
        let mut pdh = vec![0u8; queried_len("PDH_CERT_EXPORT PDH length", pdh_len)?];
        let mut chain = vec![0u8; queried_len("PDH_CERT_EXPORT chain length", chain_len)?];
        let mut export = PdhCertExport::new(&mut pdh, &mut chain)?;
        self.psp_op(&mut export)?;
        let (pdh_len, chain_len) = export.lens();
        pdh.truncate(pdh_len as usize);
        chain.truncate(chain_len as usize);
        // The firmware's chain is PEK ‖ OCA ‖ CEK (virtee `Firmware::pdh_cert_export`);
        // `sevctl export` writes PDH ‖ PEK ‖ OCA ‖ CEK.
        let mut full = Vec::with_capacity(pdh.len() + chain.len());
        full.extend_from_slice(&pdh);
        full.extend_from_slice(&chain);
        Ok(PlatformCerts { pdh, chain: full })
    }

    fn rotate_pdh(&self) -> Result<(), SevError> {
        self.psp_bare(BarePspCmd::PdhGen)
    }

    fn factory_reset(&self) -> Result<(), SevError> {
        self.psp_bare(BarePspCmd::FactoryReset)
    }

    fn vm_created(
        &self,
        vm: VmRef,
        vm_type: KvmVmType,
        kvm: Arc<dyn KvmOps>,
    ) -> Result<(), SevError> {
        // The kernel itself refused KVM_CREATE_VM for a type it lacks. A handle this
        // replaces is dropped: that VM is gone for the backend, as after vm_destroyed.
        self.vms().insert(
            vm,
            HwVm {
                kvm,
                vm_type,
                vcpus: 0,
            },
        );
        Ok(())
    }

    fn vcpu_created(&self, vm: VmRef) -> Result<(), SevError> {
        // The kernel knows the vCPUs; the count only checks LAUNCH_UPDATE_VMSA's slice.
        self.with_vm(vm, "KVM_CREATE_VCPU", |v| v.vcpus += 1)
    }

    fn init_vm(&self, vm: VmRef, es: bool) -> Result<(), SevError> {
        let mode = if es { SevMode::SevEs } else { SevMode::Sev };
        // sev.c: KVM_SEV_INIT2 only on KVM_X86_SEV{,_ES}_VM (whose type is the mode),
        // legacy INIT/ES_INIT only on KVM_X86_DEFAULT_VM.
        match self.with_vm(vm, "KVM_SEV_INIT", |v| v.vm_type)? {
            KvmVmType::Default => self.bare_op(vm, mode.legacy_init()),
            t if t == mode.init2_vm_type() => self.encrypt_op(vm, &mut kvm_sev_init::default()),
            _ => Err(SevError::Kernel {
                op: SevCmdId::INIT2.kernel_name(),
                errno: libc::EINVAL,
            }),
        }
    }

    fn launch_start(
        &self,
        vm: VmRef,
        policy: Policy,
        session: Option<&LaunchSession>,
    ) -> Result<u32, SevError> {
        let owner = session.map(|s| (s.godh_cert.as_slice(), s.session.as_slice()));
        let mut start = LaunchStart::new(policy.0, owner)?;
        self.encrypt_op(vm, &mut start)?;
        Ok(start.handle())
    }

    fn launch_update_data(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        len: u64,
    ) -> Result<(), SevError> {
        if len == 0 {
            return Ok(());
        }
        let range = GuestRange::resolve(mem, gpa, len)?;
        // The digest is over the bytes in order, so splitting changes nothing.
        let mut offset = 0;
        while offset < range.len() {
            let chunk = (range.len() - offset).min(MAX_UPDATE_CHUNK);
            let mut update = LaunchUpdateData::new(range.sub(offset, chunk))?;
            self.encrypt_op(vm, &mut update)?;
            offset += chunk;
        }
        Ok(())
    }

    /// `KVM_SEV_LAUNCH_UPDATE_VMSA` (no argument struct) through the VM's [`KvmOps`]: the
    /// kernel syncs every vCPU's VMSA from the registers the VMM set and measures them in
    /// vCPU order. `vmsas` is the state the VMM set; the kernel does not take it, but a
    /// slice that is not one VMSA per vCPU is EINVAL here, as on the emulated platform.
    fn launch_update_vmsa(&self, vm: VmRef, vmsas: &[Vmsa]) -> Result<(), SevError> {
        let id = BareSevCmd::LaunchUpdateVmsa;
        if self.with_vm(vm, id.id().kernel_name(), |v| v.vcpus)? != vmsas.len() {
            return Err(SevError::Kernel {
                op: id.id().kernel_name(),
                errno: libc::EINVAL,
            });
        }
        self.bare_op(vm, id)
    }

    fn launch_measure(&self, vm: VmRef) -> Result<LaunchMeasurement, SevError> {
        // Length query first, as QEMU does: the answer counts even though the command
        // "fails" with INVALID_LENGTH.
        let mut query = LaunchMeasure::query();
        let queried = self.encrypt_op(vm, &mut query);
        let len = query.len();
        if len == 0 {
            queried?;
        }
        if len as usize != MEASUREMENT_LEN {
            return Err(SevError::Malformed {
                what: "LAUNCH_MEASURE reply",
                why: format!("the firmware reports {len} bytes, the SEV API has {MEASUREMENT_LEN}"),
            });
        }
        let mut blob = [0u8; MEASUREMENT_LEN];
        let mut measure = LaunchMeasure::new(&mut blob)?;
        self.encrypt_op(vm, &mut measure)?;
        Ok(LaunchMeasurement(blob))
    }

    fn launch_secret(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        header: &SecretHeader,
        secret: &[u8],
        gpa: u64,
    ) -> Result<(), SevError> {
        let hdr = header.to_bytes();
        let guest = GuestRange::resolve(mem, gpa, secret.len() as u64)?;
        let mut packet = LaunchSecret::new(&hdr, guest, secret)?;
        self.encrypt_op(vm, &mut packet)
    }

    fn launch_finish(&self, vm: VmRef) -> Result<(), SevError> {
        self.bare_op(vm, BareSevCmd::LaunchFinish)
    }

    fn guest_status(&self, vm: VmRef) -> Result<GuestStatus, SevError> {
        let mut raw = kvm_sev_guest_status::default();
        self.encrypt_op(vm, &mut raw)?;
        Ok(guest_status_from(raw))
    }

    fn dbg_decrypt(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        out: &mut [u8],
    ) -> Result<(), SevError> {
        if out.is_empty() {
            return Ok(());
        }
        let mut dbg = DbgDecrypt::new(mem, gpa, out)?;
        self.encrypt_op(vm, &mut dbg)
    }

    fn dbg_encrypt(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), SevError> {
        if data.is_empty() {
            return Ok(());
        }
        let mut dbg = DbgEncrypt::new(mem, gpa, data)?;
        self.encrypt_op(vm, &mut dbg)
    }

    fn copy_enc_context_from(&self, mirror: VmRef, owner: VmRef) -> Result<(), SevError> {
        // KVM_ENABLE_CAP on the mirror's fd, args[0] = owner fd, flags 0 (sev.c
        // sev_vm_copy_enc_context_from). Needs no /dev/sev.
        self.enable_cap_from(
            "KVM_CAP_VM_COPY_ENC_CONTEXT_FROM",
            KVM_CAP_VM_COPY_ENC_CONTEXT_FROM,
            mirror,
            owner,
        )
    }

    fn move_enc_context_from(&self, dst: VmRef, src: VmRef) -> Result<(), SevError> {
        // KVM_ENABLE_CAP on the destination's fd, args[0] = source fd (sev.c
        // sev_vm_move_enc_context_from); the source is dead afterwards.
        self.enable_cap_from(
            "KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM",
            KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM,
            dst,
            src,
        )
    }

    fn page_cipher(&self, _vm: VmRef) -> Option<Arc<dyn PageCipher>> {
        // Real SEV memory is encrypted by the memory controller; the host view needs none.
        None
    }

    fn protected_vcpu_state(&self, _vm: VmRef, _vcpu: u32) -> Option<Arc<VmsaSlot>> {
        // The CPU keeps the VMSA; the kernel refuses register access itself.
        None
    }

    fn vm_destroyed(&self, vm: VmRef) {
        // Dropping the handle lets the VMM close the VM fd: the kernel then deactivates
        // and decommissions the guest (sev_vm_destroy), after its last mirror is gone.
        self.vms().remove(&vm);
    }
}

/// A VM fd as `args[0]`: the kernel reads it as an `unsigned int`.
fn fd_arg(fd: BorrowedFd<'_>) -> u64 {
    u64::from(fd.as_raw_fd() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryAccessError;
    use kvm_bindings::{kvm_enc_region, kvm_sev_cmd};

    #[test]
    fn vm_type_follows_kvm_cap_vm_types() {
        let none = 0;
        let sev_only = 1 << KVM_X86_SEV_VM;
        let both = (1 << KVM_X86_SEV_VM) | (1 << KVM_X86_SEV_ES_VM) | 1;
        assert_eq!(vm_type_for(none, SevMode::Sev), KvmVmType::Default);
        assert_eq!(vm_type_for(none, SevMode::SevEs), KvmVmType::Default);
        assert_eq!(vm_type_for(sev_only, SevMode::Sev), KvmVmType::Sev);
        assert_eq!(vm_type_for(sev_only, SevMode::SevEs), KvmVmType::Default);
        assert_eq!(vm_type_for(both, SevMode::SevEs), KvmVmType::SevEs);
        assert_eq!(
            [KvmVmType::Default, KvmVmType::Sev, KvmVmType::SevEs].map(KvmVmType::raw),
            [KVM_X86_DEFAULT_VM, KVM_X86_SEV_VM, KVM_X86_SEV_ES_VM]
        );
        assert_eq!(
            SevMode::from_policy(Policy(Policy::ES | Policy::NODBG)),
            SevMode::SevEs
        );
        assert_eq!(SevMode::from_policy(Policy(Policy::NODBG)), SevMode::Sev);
        assert_eq!(SevMode::Sev.legacy_init(), BareSevCmd::Init);
        assert_eq!(SevMode::SevEs.legacy_init(), BareSevCmd::EsInit);
    }

    #[test]
    fn platform_status_decodes_flags_and_state() {
        let st = platform_status_from(SevUserDataStatus {
            api_major: 1,
            api_minor: 55,
            state: 2,
            flags: 0x0101,
            build: 21,
            guest_count: 3,
        });
        assert_eq!(
            st,
            PlatformStatus {
                api_major: 1,
                api_minor: 55,
                build: 21,
                state: PlatformState::Working,
                owned_externally: true,
                es: true,
                guest_count: 3,
            }
        );
        let st = platform_status_from(SevUserDataStatus {
            state: 7,
            ..Default::default()
        });
        assert_eq!(
            (st.state, st.owned_externally, st.es),
            (PlatformState::Other(7), false, false)
        );
    }

    #[test]
    fn guest_status_decodes_state_and_keeps_unknown_values() {
        let gs = guest_status_from(kvm_sev_guest_status {
            handle: 9,
            policy: 0x1,
            state: 2,
        });
        assert_eq!(
            gs,
            GuestStatus {
                handle: 9,
                policy: Policy(1),
                asid: 0,
                state: GuestState::LaunchSecret
            }
        );
        let odd = guest_status_from(kvm_sev_guest_status {
            handle: 1,
            policy: 0,
            state: 0x1_0000,
        });
        assert_eq!(odd.state, GuestState::Other(u8::MAX));
    }

    #[test]
    fn queried_lengths_are_capped_before_allocation() {
        assert_eq!(queried_len("x", 2084).unwrap(), 2084);
        assert!(queried_len("x", 0).is_err());
        assert!(queried_len("x", 0x4001).is_err());
    }

    #[test]
    fn fd_args_are_unsigned_ints() {
        let null = std::fs::File::open("/dev/null").unwrap();
        assert_eq!(fd_arg(null.as_fd()), null.as_raw_fd() as u64);
    }

    #[test]
    fn vms_the_vmm_never_introduced_are_ebadf_before_any_ioctl() {
        let hw = HwBackend::kvm_only();
        let err = hw.copy_enc_context_from(VmRef(1), VmRef(2)).unwrap_err();
        assert!(
            matches!(
                err,
                SevError::Kernel {
                    op: "KVM_CAP_VM_COPY_ENC_CONTEXT_FROM",
                    errno: libc::EBADF
                }
            ),
            "{err:?}"
        );
    }

    /// A VM that records the `KVM_MEMORY_ENCRYPT_OP` ids it is asked for and answers
    /// ENOTTY (as KVM does on a VM that is not SEV), touching nothing the command points at.
    struct RecordingVm {
        fd: std::fs::File,
        ids: Mutex<Vec<u32>>,
    }

    impl RecordingVm {
        fn new() -> Arc<RecordingVm> {
            Arc::new(RecordingVm {
                fd: std::fs::File::open("/dev/null").unwrap(),
                ids: Mutex::new(Vec::new()),
            })
        }

        fn ids(&self) -> Vec<u32> {
            self.ids.lock().unwrap().clone()
        }
    }

    impl KvmOps for RecordingVm {
        fn vm_fd(&self) -> BorrowedFd<'_> {
            self.fd.as_fd()
        }
        unsafe fn memory_encrypt_op(&self, cmd: &mut kvm_sev_cmd) -> Result<(), Errno> {
            self.ids.lock().unwrap().push(cmd.id);
            Err(Errno(libc::ENOTTY))
        }
        fn register_enc_region(&self, _region: &kvm_enc_region) -> Result<(), Errno> {
            Err(Errno(libc::ENOTTY))
        }
        fn unregister_enc_region(&self, _region: &kvm_enc_region) -> Result<(), Errno> {
            Err(Errno(libc::ENOTTY))
        }
        fn enable_cap(&self, _cap: &kvm_enable_cap) -> Result<(), Errno> {
            Err(Errno(libc::EINVAL))
        }
    }

    /// A backend whose "/dev/sev" is /dev/null: the recording VMs never pass it on.
    fn backend_without_psp() -> HwBackend {
        let hw = HwBackend::kvm_only();
        let null = std::fs::File::open("/dev/null").unwrap();
        hw.sev.set(OwnedFd::from(null)).unwrap();
        hw
    }

    #[test]
    fn the_vm_type_picks_the_init_command_and_vmsas_go_through_kvm_ops() {
        let hw = backend_without_psp();
        let (legacy, init2, es2) = (RecordingVm::new(), RecordingVm::new(), RecordingVm::new());
        hw.vm_created(VmRef(1), KvmVmType::Default, legacy.clone())
            .unwrap();
        hw.vm_created(VmRef(2), KvmVmType::Sev, init2.clone())
            .unwrap();
        hw.vm_created(VmRef(3), KvmVmType::SevEs, es2.clone())
            .unwrap();
        let enotty = |r: Result<(), SevError>| {
            assert_eq!(r.unwrap_err().errno(), Some(libc::ENOTTY));
        };
        enotty(hw.init_vm(VmRef(1), true));
        enotty(hw.init_vm(VmRef(2), false));
        enotty(hw.init_vm(VmRef(3), true));
        // The mode must be the SEV VM type's: refused before any ioctl.
        for (vm, es) in [(VmRef(2), true), (VmRef(3), false)] {
            assert_eq!(hw.init_vm(vm, es).unwrap_err().errno(), Some(libc::EINVAL));
        }
        assert_eq!(legacy.ids(), [SevCmdId::ES_INIT.0]);
        assert_eq!(init2.ids(), [SevCmdId::INIT2.0]);
        assert_eq!(es2.ids(), [SevCmdId::INIT2.0]);

        // LAUNCH_UPDATE_VMSA: one VMSA per vCPU the VMM announced, then KvmOps.
        hw.vcpu_created(VmRef(3)).unwrap();
        let err = hw.launch_update_vmsa(VmRef(3), &[]).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EINVAL), "{err:?}");
        enotty(hw.launch_update_vmsa(VmRef(3), &[Vmsa::zeroed()]));
        assert_eq!(
            es2.ids(),
            [SevCmdId::INIT2.0, SevCmdId::LAUNCH_UPDATE_VMSA.0]
        );

        // Destroyed or never introduced: EBADF, and KVM is not asked.
        hw.vm_destroyed(VmRef(3));
        for r in [
            hw.launch_update_vmsa(VmRef(3), &[Vmsa::zeroed()]),
            hw.vcpu_created(VmRef(3)),
            hw.init_vm(VmRef(4), false),
            hw.launch_finish(VmRef(4)),
        ] {
            assert_eq!(r.unwrap_err().errno(), Some(libc::EBADF));
        }
        assert_eq!(es2.ids().len(), 2);
    }

    struct NoMemory;
    impl LaunchMemory for NoMemory {
        fn host_addr(&self, _gpa: u64, _len: u64) -> Option<u64> {
            None
        }
        fn read_plain(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryAccessError> {
            Err(MemoryAccessError {
                gpa,
                len: buf.len() as u64,
            })
        }
        fn write_plain(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryAccessError> {
            Err(MemoryAccessError {
                gpa,
                len: data.len() as u64,
            })
        }
    }

    #[test]
    fn guest_ranges_without_a_host_mapping_are_memory_errors_before_any_ioctl() {
        // A kvm_only backend on a fd that is not a VM: memory is resolved first.
        let hw = HwBackend::kvm_only();
        let err = hw
            .register_region(VmRef(u64::MAX), &NoMemory, 0x1000, 0x2000)
            .unwrap_err();
        assert!(matches!(
            err,
            SevError::Memory(MemoryAccessError {
                gpa: 0x1000,
                len: 0x2000
            })
        ));
    }
}
