//! The hardware SEV backend: [`SevBackend`] over the real ioctls — `/dev/sev`
//! (`SEV_ISSUE_CMD`) for platform commands, `KVM_MEMORY_ENCRYPT_OP` on the VM fd for guest
//! commands, `KVM_ENABLE_CAP` for the mirror and move capabilities.
//!
//! # What the VMM must do
//!
//! 1. **Create the VM with the type [`HwBackend::vm_type`] returns** (the argument of
//!    `KVM_CREATE_VM`, e.g. `Kvm::create_vm_with_type`): `KVM_X86_SEV_VM` (2) or
//!    `KVM_X86_SEV_ES_VM` (3) on kernels that list them in `KVM_CAP_VM_TYPES` (6.10+),
//!    else `KVM_X86_DEFAULT_VM` (0). [`SevBackend::init_vm`] then issues `KVM_SEV_INIT2`
//!    on the first kind and the legacy `KVM_SEV_INIT`/`KVM_SEV_ES_INIT` on the second; it
//!    also falls back to the legacy command when `KVM_SEV_INIT2` says EINVAL because the
//!    VM was created with the default type. For SEV-ES the two paths measure differently:
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
//! 3. **File descriptors**: `VmRef` is the raw VM fd; it must stay open while commands run.
//!    The kernel records the `/dev/sev` fd *number* at LAUNCH_START and issues later
//!    firmware commands through it, so the `HwBackend` that launched a guest must live (and
//!    keep `/dev/sev` open) as long as that guest. For `copy_enc_context_from` the mirror
//!    must be a fresh VM (not SEV, no vCPUs); for `move_enc_context_from` the destination
//!    must be a fresh VM of the same VM type as the source.
//! 4. `vm_destroyed` does nothing: closing the VM fd makes the kernel DEACTIVATE and
//!    DECOMMISSION the guest (after its last mirror is gone; mirrors hold a reference on
//!    their owner).
//!
//! Operations that only need KVM (`copy_enc_context_from`, `move_enc_context_from`,
//! `register_region`) work on a [`HwBackend::kvm_only`] backend, which opens `/dev/sev`
//! only when a PSP command first needs it.

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
    vmsa::{Vmsa, VmsaSlot},
    Policy, SevError,
};
use errors::result;
use ioctl::{
    BarePspCmd, BareSevCmd, DbgDecrypt, DbgEncrypt, EncRegion, GuestRange, LaunchMeasure,
    LaunchSecret, LaunchStart, LaunchUpdateData, PdhCertExport, PspPayload, RegionOp, SevCmd,
    SevIssueCmd, SevPayload, SevUserDataStatus,
};
use kvm_bindings::{kvm_sev_guest_status, kvm_sev_init};
use std::{
    fs::OpenOptions,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::Path,
    sync::{Arc, OnceLock},
};

/// The SEV firmware device.
pub const SEV_DEVICE: &str = "/dev/sev";
/// The KVM device (asked which VM types it supports).
pub const KVM_DEVICE: &str = "/dev/kvm";

/// Size of the LAUNCH_MEASURE blob (SEV API spec 0.24 §6.5: 32-byte HMAC, 16-byte nonce).
const MEASUREMENT_LEN: usize = 48;
/// Largest LAUNCH_UPDATE_DATA one ioctl takes (`len` is a `__u32`), page aligned.
const MAX_UPDATE_CHUNK: u64 = 0xffff_f000;

/// Which SEV flavour a guest uses (for [`HwBackend::vm_type`]).
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
    fn init2_vm_type(self) -> u64 {
        match self {
            SevMode::Sev => KVM_X86_SEV_VM,
            SevMode::SevEs => KVM_X86_SEV_ES_VM,
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
pub fn vm_type_for(supported_vm_types: u64, mode: SevMode) -> u64 {
    let t = mode.init2_vm_type();
    if supported_vm_types & (1 << t) != 0 {
        t
    } else {
        KVM_X86_DEFAULT_VM
    }
}

/// The hardware SEV platform.
///
/// Cheap to share (`Arc<dyn SevBackend>`); the kernel serialises commands itself.
#[derive(Debug)]
pub struct HwBackend {
    /// `/dev/sev`, opened on construction ([`HwBackend::open`]) or on the first PSP command
    /// ([`HwBackend::kvm_only`]).
    sev: OnceLock<OwnedFd>,
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
        }
    }

    /// Whether this machine has an SEV device (`/dev/sev` exists).
    pub fn available() -> bool {
        Path::new(SEV_DEVICE).exists()
    }

    /// The `KVM_CREATE_VM` type the VMM must create an SEV guest of `mode` with on this
    /// kernel (see the module docs), asking `/dev/kvm` for `KVM_CAP_VM_TYPES`.
    pub fn vm_type(mode: SevMode) -> Result<u64, SevError> {
        let kvm = open_device(KVM_DEVICE)?;
        Ok(vm_type_for(supported_vm_types(kvm.as_raw_fd()), mode))
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
        region_op(vm, RegionOp::Register, mem, gpa, len)
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
        region_op(vm, RegionOp::Unregister, mem, gpa, len)
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
        let sev = self.sev_fd()?;
        let mut cmd = SevCmd::new(payload, sev);
        let out = ioctl::memory_encrypt_op(vm.0, &mut cmd);
        result(P::ID.kernel_name(), out.rc, out.errno, cmd.fw_error())
    }

    /// `KVM_MEMORY_ENCRYPT_OP` for a command without an argument struct.
    fn bare_op(&self, vm: VmRef, bare: BareSevCmd) -> Result<(), SevError> {
        let sev = self.sev_fd()?;
        let mut cmd = SevCmd::bare(bare, sev);
        let out = ioctl::memory_encrypt_op(vm.0, &mut cmd);
        result(bare.id().kernel_name(), out.rc, out.errno, cmd.fw_error())
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
            op: if path == SEV_DEVICE {
                "open /dev/sev"
            } else {
                "open /dev/kvm"
            },
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        }),
    }
}

/// `KVM_CHECK_EXTENSION(KVM_CAP_VM_TYPES)` on `fd`; 0 where the kernel does not know it.
fn supported_vm_types(fd: i32) -> u64 {
    let out = ioctl::check_extension(fd, ioctl::KVM_CAP_VM_TYPES);
    u64::try_from(out.rc).unwrap_or(0)
}

fn region_op(
    vm: VmRef,
    op: RegionOp,
    mem: &dyn LaunchMemory,
    gpa: u64,
    len: u64,
) -> Result<(), SevError> {
    let range = GuestRange::resolve(mem, gpa, len)?;
    let region = EncRegion::new(range);
    let out = ioctl::enc_region(vm.0, op, &region);
    let name = match op {
        RegionOp::Register => "KVM_MEMORY_ENCRYPT_REG_REGION",
        RegionOp::Unregister => "KVM_MEMORY_ENCRYPT_UNREG_REGION",
    };
    result(name, out.rc, out.errno, 0)
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

    fn note_vm_created(&self, _vm: VmRef, _vm_type: KvmVmType) -> Result<(), SevError> {
        // The kernel knows its VMs and their types.
        Ok(())
    }

    fn note_vcpu_created(&self, _vm: VmRef) -> Result<(), SevError> {
        Ok(())
    }

    fn init_vm(&self, vm: VmRef, es: bool) -> Result<(), SevError> {
        let mode = if es { SevMode::SevEs } else { SevMode::Sev };
        // sev.c: KVM_SEV_INIT2 only on KVM_X86_SEV{,_ES}_VM, legacy INIT only on
        // KVM_X86_DEFAULT_VM; both are EINVAL on the other kind, with nothing changed.
        if vm_type_for(supported_vm_types(vm.0), mode) != KVM_X86_DEFAULT_VM {
            let mut init = kvm_sev_init::default();
            match self.encrypt_op(vm, &mut init) {
                Err(SevError::Kernel {
                    errno: libc::EINVAL,
                    ..
                }) => {
                    log::debug!("KVM_SEV_INIT2 refused (VM created as KVM_X86_DEFAULT_VM?); trying legacy init");
                }
                done => return done,
            }
        }
        self.bare_op(vm, mode.legacy_init())
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

    /// `KVM_SEV_LAUNCH_UPDATE_VMSA` (no argument struct): the kernel syncs every vCPU's
    /// VMSA from the registers the VMM set and measures them in vCPU order. `vmsas` is the
    /// state the VMM set; the kernel does not take it.
    fn launch_update_vmsa(&self, vm: VmRef, _vmsas: &[Vmsa]) -> Result<(), SevError> {
        self.bare_op(vm, BareSevCmd::LaunchUpdateVmsa)
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
        let out = ioctl::enable_cap(
            mirror.0,
            ioctl::KVM_CAP_VM_COPY_ENC_CONTEXT_FROM,
            fd_arg(owner),
        );
        result("KVM_CAP_VM_COPY_ENC_CONTEXT_FROM", out.rc, out.errno, 0)
    }

    fn move_enc_context_from(&self, dst: VmRef, src: VmRef) -> Result<(), SevError> {
        // KVM_ENABLE_CAP on the destination's fd, args[0] = source fd (sev.c
        // sev_vm_move_enc_context_from); the source is dead afterwards.
        let out = ioctl::enable_cap(dst.0, ioctl::KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM, fd_arg(src));
        result("KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM", out.rc, out.errno, 0)
    }

    fn page_cipher(&self, _vm: VmRef) -> Option<Arc<dyn PageCipher>> {
        // Real SEV memory is encrypted by the memory controller; the host view needs none.
        None
    }

    fn protected_vcpu_state(&self, _vm: VmRef, _vcpu: u32) -> Option<Arc<VmsaSlot>> {
        // The CPU keeps the VMSA; the kernel refuses register access itself.
        None
    }

    fn vm_destroyed(&self, _vm: VmRef) {
        // The kernel deactivates and decommissions the guest when the VM fd is closed
        // (sev_vm_destroy), after its last mirror is gone.
    }
}

/// A VM fd as `args[0]`: the kernel reads it as an `unsigned int`. A negative "fd" becomes
/// a value no open fd has, and the kernel answers EBADF.
fn fd_arg(vm: VmRef) -> u64 {
    u64::from(vm.0 as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemoryAccessError;

    #[test]
    fn vm_type_follows_kvm_cap_vm_types() {
        let none = 0;
        let sev_only = 1 << KVM_X86_SEV_VM;
        let both = (1 << KVM_X86_SEV_VM) | (1 << KVM_X86_SEV_ES_VM) | 1;
        assert_eq!(vm_type_for(none, SevMode::Sev), KVM_X86_DEFAULT_VM);
        assert_eq!(vm_type_for(none, SevMode::SevEs), KVM_X86_DEFAULT_VM);
        assert_eq!(vm_type_for(sev_only, SevMode::Sev), KVM_X86_SEV_VM);
        assert_eq!(vm_type_for(sev_only, SevMode::SevEs), KVM_X86_DEFAULT_VM);
        assert_eq!(vm_type_for(both, SevMode::SevEs), KVM_X86_SEV_ES_VM);
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
        assert_eq!(fd_arg(VmRef(7)), 7);
        assert_eq!(fd_arg(VmRef(-1)), u64::from(u32::MAX));
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
            .register_region(VmRef(-1), &NoMemory, 0x1000, 0x2000)
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
