//! The interface between the VMM and an SEV platform, emulated or hardware.
//!
//! The methods follow the KVM SEV API (`Documentation/virt/kvm/x86/amd-memory-encryption.rst`,
//! `KVM_MEMORY_ENCRYPT_OP` sub-commands) and the `/dev/sev` platform commands, so the
//! hardware backend is a thin layer over the ioctls and the emulated PSP answers with the
//! same state checks, status codes and errno values.

use crate::{
    kvm::KvmOps,
    policy::Policy,
    status::SevStatus,
    vmsa::{Vmsa, VmsaSlot},
};
use std::{fmt, sync::Arc};

/// Size of a page as the platform measures and encrypts it.
pub const PAGE_SIZE: usize = 4096;

/// A KVM VM as the platform knows it: an identity the VMM assigns, unique among the VMs it
/// creates (the emulated PSP keys its guests by it; the hardware backend finds the VM's
/// KVM handle by it, see [`SevBackend::vm_created`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VmRef(pub u64);

/// The type a KVM VM was created with: the `KVM_CREATE_VM` argument (`KVM_X86_*_VM`,
/// `arch/x86/include/uapi/asm/kvm.h`). It decides how the VM becomes an SEV VM: the legacy
/// `KVM_SEV_INIT`/`KVM_SEV_ES_INIT` on a default VM, `KVM_SEV_INIT2` on an SEV-typed one
/// (Linux 6.10+), and for SEV-ES whether the VMSAs carry the vCPUs' FPU state
/// ([`crate::vmsa::reset`]). An intra-host move needs both VMs of the same type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvmVmType {
    /// `KVM_X86_DEFAULT_VM` (0).
    Default,
    /// `KVM_X86_SEV_VM` (2).
    Sev,
    /// `KVM_X86_SEV_ES_VM` (3).
    SevEs,
}

impl KvmVmType {
    /// The `KVM_CREATE_VM` argument.
    pub fn raw(self) -> u64 {
        match self {
            KvmVmType::Default => 0,
            KvmVmType::Sev => 2,
            KvmVmType::SevEs => 3,
        }
    }
}

/// Which implementation stands behind the trait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The software PSP (docs/architecture.md §3, The emulated platform).
    Emulated,
    /// `/dev/sev` and `KVM_MEMORY_ENCRYPT_OP`.
    Hardware,
}

/// Platform state (SEV API spec §5.1.2). Values this crate does not know stay raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformState {
    /// Not initialised.
    Uninit,
    /// Initialised, no guests.
    Init,
    /// Initialised, at least one guest.
    Working,
    /// A value the firmware reported that this crate does not know.
    Other(u8),
}

impl PlatformState {
    /// Decodes the firmware's value.
    pub fn from_raw(v: u8) -> Self {
        match v {
            0 => PlatformState::Uninit,
            1 => PlatformState::Init,
            2 => PlatformState::Working,
            v => PlatformState::Other(v),
        }
    }

    /// The firmware's value.
    pub fn raw(self) -> u8 {
        match self {
            PlatformState::Uninit => 0,
            PlatformState::Init => 1,
            PlatformState::Working => 2,
            PlatformState::Other(v) => v,
        }
    }
}

impl fmt::Display for PlatformState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlatformState::Uninit => f.write_str("UNINIT"),
            PlatformState::Init => f.write_str("INIT"),
            PlatformState::Working => f.write_str("WORKING"),
            PlatformState::Other(v) => write!(f, "unknown ({v})"),
        }
    }
}

/// Guest state (SEV API spec §5.1.3, GSTATE). Values this crate does not know stay raw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestState {
    /// No guest context, or not launched.
    Uninit,
    /// LAUNCH_START done; accepting LAUNCH_UPDATE_*.
    LaunchUpdate,
    /// LAUNCH_MEASURE done; accepting LAUNCH_SECRET.
    LaunchSecret,
    /// LAUNCH_FINISH (or RECEIVE_FINISH) done.
    Running,
    /// SEND_START done; sending.
    SendUpdate,
    /// RECEIVE_START done; receiving.
    ReceiveUpdate,
    /// SEND_FINISH done.
    Sent,
    /// A value the firmware reported that this crate does not know.
    Other(u8),
}

impl GuestState {
    /// Decodes the firmware's value.
    pub fn from_raw(v: u8) -> Self {
        match v {
            0 => GuestState::Uninit,
            1 => GuestState::LaunchUpdate,
            2 => GuestState::LaunchSecret,
            3 => GuestState::Running,
            4 => GuestState::SendUpdate,
            5 => GuestState::ReceiveUpdate,
            6 => GuestState::Sent,
            v => GuestState::Other(v),
        }
    }

    /// The firmware's value.
    pub fn raw(self) -> u8 {
        match self {
            GuestState::Uninit => 0,
            GuestState::LaunchUpdate => 1,
            GuestState::LaunchSecret => 2,
            GuestState::Running => 3,
            GuestState::SendUpdate => 4,
            GuestState::ReceiveUpdate => 5,
            GuestState::Sent => 6,
            GuestState::Other(v) => v,
        }
    }

    /// QEMU's name for the state (`query-sev` "state").
    pub fn qemu_name(self) -> &'static str {
        match self {
            GuestState::Uninit => "uninit",
            GuestState::LaunchUpdate => "launch-update",
            GuestState::LaunchSecret => "launch-secret",
            GuestState::Running => "running",
            GuestState::SendUpdate => "send-update",
            GuestState::ReceiveUpdate => "receive-update",
            GuestState::Sent => "sent",
            GuestState::Other(_) => "unknown",
        }
    }
}

/// Platform status (PLATFORM_STATUS, SEV API spec §5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlatformStatus {
    /// Firmware API major version.
    pub api_major: u8,
    /// Firmware API minor version.
    pub api_minor: u8,
    /// Firmware build id.
    pub build: u8,
    /// Platform state.
    pub state: PlatformState,
    /// Whether the platform is owned externally (otherwise self-owned).
    pub owned_externally: bool,
    /// Whether SEV-ES is initialised/available.
    pub es: bool,
    /// Number of valid guests the firmware maintains.
    pub guest_count: u32,
}

/// Status of one guest (GUEST_STATUS, SEV API spec §6.12).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestStatus {
    /// Firmware handle of the guest.
    pub handle: u32,
    /// Its policy.
    pub policy: Policy,
    /// Its ASID.
    pub asid: u32,
    /// Its state.
    pub state: GuestState,
}

/// The platform's certificates in AMD's SEV certificate format (SEV API spec appendix C).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlatformCerts {
    /// The PDH certificate (one AMD certificate).
    pub pdh: Vec<u8>,
    /// PDH ‖ PEK ‖ OCA ‖ CEK, as `sevctl export` writes `cert_chain.cert`.
    pub chain: Vec<u8>,
}

impl PlatformCerts {
    /// PEK ‖ OCA ‖ CEK: the certificate buffer PDH_CERT_EXPORT itself fills (AMD SEV API
    /// spec 0.24 §5.10; virtee `pdh_cert_export` reads it as `[Certificate; 3]`), which
    /// QEMU's `query-sev-capabilities` returns base64-encoded as `cert-chain`.
    pub fn firmware_chain(&self) -> &[u8] {
        self.chain.get(self.pdh.len()..).unwrap_or(&[])
    }
}

/// What the guest owner supplies to LAUNCH_START: their Diffie-Hellman certificate and the
/// session blob, as raw bytes (QEMU's `dh-cert-file` / `session-file` after base64).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchSession {
    /// The guest owner's DH certificate (an AMD SEV certificate).
    pub godh_cert: Vec<u8>,
    /// The session blob (nonce, wrapped TEK/TIK, IV, wrap MAC, policy MAC).
    pub session: Vec<u8>,
}

/// The 48 bytes LAUNCH_MEASURE returns: the measurement (HMAC) then the nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchMeasurement(pub [u8; 48]);

impl LaunchMeasurement {
    /// HMAC-SHA256 over the launch (SEV API spec §6.5).
    pub fn measurement(&self) -> [u8; 32] {
        self.0[..32].try_into().expect("32 of 48 bytes")
    }

    /// The firmware's nonce.
    pub fn mnonce(&self) -> [u8; 16] {
        self.0[32..].try_into().expect("16 of 48 bytes")
    }
}

/// Header of a LAUNCH_SECRET packet (SEV API spec §6.6), 52 bytes as QEMU's
/// `packet-header`: flags, IV, MAC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SecretHeader {
    /// Flags (bit 0: COMPRESSED, must be clear).
    pub flags: u32,
    /// AES-128-CTR IV.
    pub iv: [u8; 16],
    /// HMAC-SHA256 with the TIK.
    pub mac: [u8; 32],
}

impl SecretHeader {
    /// Encoded size.
    pub const SIZE: usize = 52;

    /// Decodes the 52-byte header.
    pub fn from_bytes(b: &[u8]) -> Option<SecretHeader> {
        if b.len() != Self::SIZE {
            return None;
        }
        Some(SecretHeader {
            flags: u32::from_le_bytes(b[0..4].try_into().ok()?),
            iv: b[4..20].try_into().ok()?,
            mac: b[20..52].try_into().ok()?,
        })
    }

    /// Encodes the header.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0u8; Self::SIZE];
        out[0..4].copy_from_slice(&self.flags.to_le_bytes());
        out[4..20].copy_from_slice(&self.iv);
        out[20..52].copy_from_slice(&self.mac);
        out
    }
}

/// A guest-memory access outside guest RAM (or the firmware image).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest-physical range {gpa:#x}+{len:#x} is not guest memory")]
pub struct MemoryAccessError {
    /// First byte.
    pub gpa: u64,
    /// Length.
    pub len: u64,
}

/// Guest memory as the platform sees it during launch and for debug commands.
///
/// The VMM implements this over its own mappings. The hardware backend passes host
/// addresses to the kernel (as `KVM_SEV_LAUNCH_UPDATE_DATA` etc. take); the emulated PSP
/// reads and writes the bytes as the guest sees them. Callers guarantee no vCPU of the
/// guest runs while launch commands access its memory.
pub trait LaunchMemory {
    /// Host virtual address of guest memory [gpa, gpa + len), if it is one contiguous
    /// mapping the VMM owns.
    fn host_addr(&self, gpa: u64, len: u64) -> Option<u64>;
    /// Reads guest memory as the guest sees it.
    fn read_plain(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryAccessError>;
    /// Writes guest memory as the guest will see it.
    fn write_plain(&self, gpa: u64, data: &[u8]) -> Result<(), MemoryAccessError>;
}

/// The memory-encryption transform of an emulated guest: what the host sees of a private
/// page (ciphertext under the guest's VEK) and what a host write to a private page becomes.
/// Hardware guests have none: their memory is really encrypted.
pub trait PageCipher: Send + Sync {
    /// Turns the guest's view of the page at `gpa` into the host's view, in place.
    fn encrypt_page(&self, gpa: u64, page: &mut [u8; PAGE_SIZE]);
    /// Turns bytes the host wrote into what the guest will read, in place.
    fn decrypt_page(&self, gpa: u64, page: &mut [u8; PAGE_SIZE]);
}

/// A failed platform operation.
#[derive(Debug, thiserror::Error)]
pub enum SevError {
    /// The SEV firmware (or emulated PSP) refused the command with this status.
    #[error("SEV {command} failed: {status}")]
    Firmware {
        /// The command, e.g. "LAUNCH_START".
        command: &'static str,
        /// The firmware's status.
        status: SevStatus,
    },
    /// The kernel (or the emulated kernel rules) refused the operation with this errno.
    #[error("{op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Kernel {
        /// The operation, e.g. "KVM_CAP_VM_COPY_ENC_CONTEXT_FROM".
        op: &'static str,
        /// The errno value.
        errno: i32,
    },
    /// No SEV device on this machine.
    #[error("no SEV platform: {0} (use --sev-backend emulated on machines without SEV hardware)")]
    NoDevice(String),
    /// Input from the guest owner or the user is malformed.
    #[error("{what} is malformed: {why}")]
    Malformed {
        /// What was being read, e.g. "session blob".
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The platform state directory could not be used.
    #[error("platform state in {dir}: {why}")]
    State {
        /// The directory.
        dir: String,
        /// What went wrong.
        why: String,
    },
    /// A guest-memory access fell outside guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryAccessError),
}

impl SevError {
    /// The firmware status, if the firmware refused the command.
    pub fn status(&self) -> Option<SevStatus> {
        match self {
            SevError::Firmware { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The errno, if the kernel (rules) refused the operation.
    pub fn errno(&self) -> Option<i32> {
        match self {
            SevError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// Who refused an operation, and with which code: the kernel (an errno, before the
/// firmware sees the command) or the firmware (a status). Lets pure functions say how
/// they fail without building the [`SevError`] themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The kernel's checks refused it with this errno.
    Errno(i32),
    /// The firmware refused it with this status.
    Status(SevStatus),
}

impl Refusal {
    /// The error for `command` (firmware name, e.g. "LAUNCH_SECRET") or `op` (kernel
    /// name, e.g. "KVM_SEV_LAUNCH_SECRET").
    pub fn into_error(self, command: &'static str, op: &'static str) -> SevError {
        match self {
            Refusal::Errno(errno) => SevError::Kernel { op, errno },
            Refusal::Status(status) => SevError::Firmware { command, status },
        }
    }
}

/// An SEV platform: launch commands for guests plus platform management.
pub trait SevBackend: Send + Sync {
    /// Which implementation this is.
    fn kind(&self) -> BackendKind;

    /// PLATFORM_STATUS.
    fn platform_status(&self) -> Result<PlatformStatus, SevError>;
    /// PDH_CERT_EXPORT: the PDH and the chain PDH ‖ PEK ‖ OCA ‖ CEK.
    fn export_certs(&self) -> Result<PlatformCerts, SevError>;
    /// PDH_GEN: a new Platform Diffie-Hellman key (sessions made for the old one fail).
    fn rotate_pdh(&self) -> Result<(), SevError>;
    /// FACTORY_RESET: new platform identity (OCA, PEK, PDH); fails while guests exist.
    fn factory_reset(&self) -> Result<(), SevError>;

    /// `KVM_CREATE_VM` made a VM of `vm_type`, which the VMM names `vm` from now on; `kvm`
    /// is the VMM's handle of it. Called once per VM, before any other method names it:
    /// both backends answer EBADF (as the kernel answers a closed fd) for a VM they were
    /// not introduced to, or that [`SevBackend::vm_destroyed`] released. The hardware
    /// backend issues its KVM ioctls for `vm` through `kvm`, and keeps the handle (so the
    /// VM fd stays open) until `vm_destroyed`; it picks `KVM_SEV_INIT2` or the legacy init
    /// by `vm_type`. The emulated PSP applies the kernel's rules itself and needs no
    /// handle: it records the type (it decides the init command, the VMSAs' FPU state and
    /// whether two VMs may move a context between them) and refuses a type it lacks
    /// (EINVAL: `KVM_X86_SEV_ES_VM` without SEV-ES). Introducing a `vm` again names a new
    /// VM: whatever the platform knew under it is released first, as by `vm_destroyed`.
    fn vm_created(
        &self,
        vm: VmRef,
        vm_type: KvmVmType,
        kvm: Arc<dyn KvmOps>,
    ) -> Result<(), SevError>;
    /// `KVM_CREATE_VCPU` created the next vCPU of `vm`. vCPUs are indexed in creation
    /// order, the order `KVM_SEV_LAUNCH_UPDATE_VMSA` measures them in; after the first,
    /// SEV init and becoming a mirror are refused. EBADF for a VM the platform does not
    /// know, EIO for one whose context was moved away.
    fn vcpu_created(&self, vm: VmRef) -> Result<(), SevError>;

    /// KVM_SEV_INIT (or KVM_SEV_ES_INIT with `es`; KVM_SEV_INIT2 on an SEV-typed VM):
    /// make `vm` an SEV VM.
    fn init_vm(&self, vm: VmRef, es: bool) -> Result<(), SevError>;
    /// KVM_SEV_LAUNCH_START: returns the guest handle. Without a session the platform
    /// generates the transport keys itself (the guest then cannot receive secrets).
    fn launch_start(
        &self,
        vm: VmRef,
        policy: Policy,
        session: Option<&LaunchSession>,
    ) -> Result<u32, SevError>;
    /// KVM_SEV_LAUNCH_UPDATE_DATA: measure and encrypt [gpa, gpa + len) in place.
    fn launch_update_data(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        len: u64,
    ) -> Result<(), SevError>;
    /// KVM_SEV_LAUNCH_UPDATE_VMSA (SEV-ES): encrypt and measure the VMSA of every vCPU of
    /// `vm`, in vCPU index order, after the firmware's LAUNCH_UPDATE_DATA and before
    /// LAUNCH_MEASURE; from then on those vCPUs' state is protected (per vCPU: one created
    /// later is not). `vmsas[i]` is vCPU `i`'s register state as the kernel's
    /// `sev_es_sync_vmsa` sees it, one per vCPU created (for the reset state:
    /// [`crate::vmsa::ResetVmsas`]). The emulated platform measures these, after applying
    /// what the kernel itself fixes (SEV features; no FPU state on a legacy
    /// `KVM_SEV_ES_INIT` VM). On hardware the kernel builds them from the registers the VMM
    /// set with `KVM_SET_REGS`/`KVM_SET_SREGS`/`KVM_SET_XSAVE`, so those must hold the same
    /// state; the slice is not passed down.
    fn launch_update_vmsa(&self, vm: VmRef, vmsas: &[Vmsa]) -> Result<(), SevError>;
    /// KVM_SEV_LAUNCH_MEASURE.
    fn launch_measure(&self, vm: VmRef) -> Result<LaunchMeasurement, SevError>;
    /// KVM_SEV_LAUNCH_SECRET: verify the packet and decrypt `secret` into guest memory at `gpa`.
    fn launch_secret(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        header: &SecretHeader,
        secret: &[u8],
        gpa: u64,
    ) -> Result<(), SevError>;
    /// KVM_SEV_LAUNCH_FINISH.
    fn launch_finish(&self, vm: VmRef) -> Result<(), SevError>;
    /// KVM_SEV_GUEST_STATUS.
    fn guest_status(&self, vm: VmRef) -> Result<GuestStatus, SevError>;
    /// KVM_SEV_DBG_DECRYPT: read guest memory in the clear (fails with NODBG).
    fn dbg_decrypt(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        out: &mut [u8],
    ) -> Result<(), SevError>;
    /// KVM_SEV_DBG_ENCRYPT: write guest memory through the guest's key (fails with NODBG).
    fn dbg_encrypt(
        &self,
        vm: VmRef,
        mem: &dyn LaunchMemory,
        gpa: u64,
        data: &[u8],
    ) -> Result<(), SevError>;

    /// KVM_CAP_VM_COPY_ENC_CONTEXT_FROM on `mirror` with `owner`: the mirror shares the
    /// owner's ASID and key (kernel rules and errno values, docs/architecture.md §3.1).
    fn copy_enc_context_from(&self, mirror: VmRef, owner: VmRef) -> Result<(), SevError>;
    /// KVM_CAP_VM_MOVE_ENC_CONTEXT_FROM on `dst` with `src`: moves the context (and the
    /// source's mirrors); the source is dead afterwards.
    fn move_enc_context_from(&self, dst: VmRef, src: VmRef) -> Result<(), SevError>;

    /// The transform for the host's view of `vm`'s private pages (emulated platforms only).
    fn page_cipher(&self, vm: VmRef) -> Option<Arc<dyn PageCipher>>;
    /// The protected state of vCPU `vcpu` (creation index) of `vm`, once
    /// LAUNCH_UPDATE_VMSA has encrypted it, on the emulated platform: the VMM must then
    /// refuse to read or set that vCPU's registers (EINVAL, as KVM does for a VM with
    /// protected state), show only [`VmsaSlot::host_view`] (ciphertext) of it, and let the
    /// emulation's vCPU runner alone move the state between the slot and KVM
    /// ([`VmsaSlot::vmrun_load`], [`VmsaSlot::vmexit_save`]). `None` for a vCPU whose
    /// state is not protected, and always on hardware, where the CPU keeps the VMSA and
    /// the kernel refuses the register ioctls itself.
    fn protected_vcpu_state(&self, vm: VmRef, vcpu: u32) -> Option<Arc<VmsaSlot>>;
    /// The VM is being destroyed: release its context (its ASID outlives it while
    /// mirrors hold it).
    fn vm_destroyed(&self, vm: VmRef);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_including_unknown_values() {
        for v in 0..=255u8 {
            assert_eq!(PlatformState::from_raw(v).raw(), v);
            assert_eq!(GuestState::from_raw(v).raw(), v);
        }
        assert_eq!(GuestState::from_raw(1).qemu_name(), "launch-update");
        assert_eq!(PlatformState::from_raw(9).to_string(), "unknown (9)");
    }

    #[test]
    fn secret_header_is_52_bytes_and_round_trips() {
        let h = SecretHeader {
            flags: 0,
            iv: [7; 16],
            mac: [9; 32],
        };
        let b = h.to_bytes();
        assert_eq!(SecretHeader::from_bytes(&b), Some(h));
        assert_eq!(SecretHeader::from_bytes(&b[..51]), None);
    }

    #[test]
    fn measurement_splits_into_hmac_and_nonce() {
        let mut raw = [1u8; 48];
        raw[32..].fill(2);
        let m = LaunchMeasurement(raw);
        assert_eq!(m.measurement(), [1; 32]);
        assert_eq!(m.mnonce(), [2; 16]);
    }
}
