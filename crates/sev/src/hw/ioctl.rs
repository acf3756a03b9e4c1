//! The kernel ABI the hardware backend speaks: command ids, the argument structs, and the
//! `/dev/sev` ioctl (`SEV_ISSUE_CMD`, the only ioctl this crate issues; the KVM ones go
//! through [`crate::kvm::KvmOps`], which the VMM implements in `vmm/src/kvm`).
//!
//! Checked against:
//! - `include/uapi/linux/kvm.h` — `struct kvm_enable_cap`, `struct kvm_enc_region`;
//! - `arch/x86/include/uapi/asm/kvm.h` — `enum sev_cmd_id`, `struct kvm_sev_cmd`,
//!   `kvm_sev_init`, `kvm_sev_launch_start`, `kvm_sev_launch_update_data`,
//!   `kvm_sev_launch_secret`, `kvm_sev_launch_measure`, `kvm_sev_guest_status`,
//!   `kvm_sev_dbg`, `KVM_X86_{DEFAULT,SEV,SEV_ES}_VM` (the SEV structs moved there from
//!   `linux/kvm.h` in Linux 6.9; the layout did not change);
//! - `include/uapi/linux/psp-sev.h` — the `/dev/sev` command ids, `struct sev_issue_cmd`,
//!   `sev_user_data_status`, `sev_user_data_pdh_cert_export` (all `__packed`),
//!   `SEV_ISSUE_CMD`, `SEV_STATUS_FLAGS_CONFIG_ES`, `SEV_RET_NO_FW_CALL`;
//! - `arch/x86/kvm/svm/sev.c` and `drivers/crypto/ccp/sev-dev.c` — which struct each
//!   command reads and writes back, and which commands read no struct at all.
//!
//! The KVM structs come from kvm-bindings 0.14 (its x86_64 bindings carry them); the
//! `/dev/sev` structs are not there and are defined here. Every struct that carries a user
//! pointer is wrapped in a `#[repr(C)]` struct with a lifetime, built only from borrowed
//! buffers, so a buffer cannot be freed while the kernel may still point at it (CONTRIBUTING.md,
//! "unsafe").

use crate::backend::{LaunchMemory, MemoryAccessError};
use crate::SevError;
use kvm_bindings::{
    kvm_enable_cap, kvm_enc_region, kvm_sev_cmd, kvm_sev_dbg, kvm_sev_guest_status, kvm_sev_init,
    kvm_sev_launch_measure, kvm_sev_launch_secret, kvm_sev_launch_start,
    kvm_sev_launch_update_data,
};
use std::{
    marker::PhantomData,
    mem::{offset_of, size_of},
    os::fd::{AsRawFd, BorrowedFd},
};

// ---------------------------------------------------------------------------------------
// ioctl numbers (`include/uapi/asm-generic/ioctl.h`: dir << 30 | size << 16 | type << 8 | nr)
// ---------------------------------------------------------------------------------------

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

const fn ioc(dir: u64, ty: u8, nr: u8, size: usize) -> libc::Ioctl {
    ((dir << 30) | ((size as u64) << 16) | ((ty as u64) << 8) | nr as u64) as libc::Ioctl
}

/// `SEV_ISSUE_CMD` = `_IOWR('S', 0x0, struct sev_issue_cmd)` on `/dev/sev`.
pub(crate) const SEV_ISSUE_CMD: libc::Ioctl = ioc(
    IOC_READ | IOC_WRITE,
    b'S',
    0x0,
    size_of::<SevIssueCmd<'static>>(),
);

/// `KVM_X86_DEFAULT_VM` (asm/kvm.h): a plain VM; SEV via legacy `KVM_SEV_INIT`/`ES_INIT`.
pub const KVM_X86_DEFAULT_VM: u64 = 0;
/// `KVM_X86_SEV_VM` (asm/kvm.h): an SEV VM, initialised with `KVM_SEV_INIT2`.
pub const KVM_X86_SEV_VM: u64 = 2;
/// `KVM_X86_SEV_ES_VM` (asm/kvm.h): an SEV-ES VM, initialised with `KVM_SEV_INIT2`.
pub const KVM_X86_SEV_ES_VM: u64 = 3;

/// `SEV_FW_BLOB_MAX_SIZE` (`include/linux/psp-sev.h`): the largest blob (DH certificate,
/// session, secret, measurement, certificate) the kernel copies to or from the PSP.
pub(crate) const SEV_FW_BLOB_MAX_SIZE: usize = 0x4000;

/// `SEV_STATUS_FLAGS_CONFIG_ES` (psp-sev.h): PLATFORM_STATUS flags bit 8, SEV-ES
/// initialised. Bit 0 is OWNER (SEV API spec 0.24 §5.5: 1 = externally owned).
pub(crate) const SEV_STATUS_FLAGS_CONFIG_ES: u32 = 0x0100;
/// PLATFORM_STATUS flags bit 0, OWNER.
pub(crate) const SEV_STATUS_FLAGS_OWNER: u32 = 0x0001;

/// `SEV_RET_NO_FW_CALL` (psp-sev.h, `-1` as the `u32` the ABI carries): the kernel failed
/// before it called the firmware, so the status says nothing about the firmware.
pub(crate) const SEV_RET_NO_FW_CALL: u32 = u32::MAX;

// ---------------------------------------------------------------------------------------
// Command ids
// ---------------------------------------------------------------------------------------

macro_rules! command_ids {
    (
        $(#[$meta:meta])* $ty:ident, $prefix:literal;
        $($name:ident = $value:expr, $text:expr;)*
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(pub u32);

        impl $ty {
            $(
                #[doc = $text]
                pub const $name: $ty = $ty($value);
            )*

            /// Every id the kernel headers define, in order.
            pub const ALL: &'static [$ty] = &[$($ty::$name),*];

            /// The command's name as the SEV API spec and the firmware know it, if the
            /// id is defined (e.g. `LAUNCH_START`).
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// The constant's name in the kernel header (e.g. `KVM_SEV_LAUNCH_START`),
            /// or a placeholder for an id the headers do not define.
            pub fn kernel_name(self) -> &'static str {
                match self.0 {
                    $($value => concat!($prefix, stringify!($name)),)*
                    _ => concat!($prefix, "<unknown>"),
                }
            }
        }
    };
}

command_ids! {
    /// A `KVM_MEMORY_ENCRYPT_OP` sub-command (`enum sev_cmd_id`, arch/x86/include/uapi/
    /// asm/kvm.h). Ids the kernel may add later keep their raw value.
    SevCmdId, "KVM_SEV_";
    INIT = 0, "Legacy SEV init of a `KVM_X86_DEFAULT_VM` (no argument struct).";
    ES_INIT = 1, "Legacy SEV-ES init of a `KVM_X86_DEFAULT_VM` (no argument struct).";
    LAUNCH_START = 2, "LAUNCH_START (`struct kvm_sev_launch_start`).";
    LAUNCH_UPDATE_DATA = 3, "LAUNCH_UPDATE_DATA (`struct kvm_sev_launch_update_data`).";
    LAUNCH_UPDATE_VMSA = 4, "LAUNCH_UPDATE_VMSA of every vCPU (no argument struct).";
    LAUNCH_SECRET = 5, "LAUNCH_SECRET (`struct kvm_sev_launch_secret`).";
    LAUNCH_MEASURE = 6, "LAUNCH_MEASURE (`struct kvm_sev_launch_measure`).";
    LAUNCH_FINISH = 7, "LAUNCH_FINISH (no argument struct).";
    SEND_START = 8, "SEND_START.";
    SEND_UPDATE_DATA = 9, "SEND_UPDATE_DATA.";
    SEND_UPDATE_VMSA = 10, "SEND_UPDATE_VMSA.";
    SEND_FINISH = 11, "SEND_FINISH.";
    RECEIVE_START = 12, "RECEIVE_START.";
    RECEIVE_UPDATE_DATA = 13, "RECEIVE_UPDATE_DATA.";
    RECEIVE_UPDATE_VMSA = 14, "RECEIVE_UPDATE_VMSA.";
    RECEIVE_FINISH = 15, "RECEIVE_FINISH.";
    GUEST_STATUS = 16, "GUEST_STATUS (`struct kvm_sev_guest_status`).";
    DBG_DECRYPT = 17, "DBG_DECRYPT (`struct kvm_sev_dbg`).";
    DBG_ENCRYPT = 18, "DBG_ENCRYPT (`struct kvm_sev_dbg`).";
    CERT_EXPORT = 19, "CERT_EXPORT.";
    GET_ATTESTATION_REPORT = 20, "GET_ATTESTATION_REPORT.";
    SEND_CANCEL = 21, "SEND_CANCEL.";
    INIT2 = 22, "SEV/SEV-ES init of a `KVM_X86_SEV{,_ES}_VM` (`struct kvm_sev_init`, Linux 6.10+).";
    SNP_LAUNCH_START = 100, "SNP_LAUNCH_START.";
    SNP_LAUNCH_UPDATE = 101, "SNP_LAUNCH_UPDATE.";
    SNP_LAUNCH_FINISH = 102, "SNP_LAUNCH_FINISH.";
    SNP_ENABLE_REQ_CERTS = 103, "SNP_ENABLE_REQ_CERTS (newest kernels only).";
}

command_ids! {
    /// A `/dev/sev` platform command (`SEV_ISSUE_CMD`'s `cmd`, the anonymous enum in
    /// include/uapi/linux/psp-sev.h). Ids the kernel may add later keep their raw value.
    PspCmdId, "SEV_";
    FACTORY_RESET = 0, "FACTORY_RESET (no argument struct).";
    PLATFORM_STATUS = 1, "PLATFORM_STATUS (`struct sev_user_data_status`).";
    PEK_GEN = 2, "PEK_GEN (no argument struct).";
    PEK_CSR = 3, "PEK_CSR.";
    PDH_GEN = 4, "PDH_GEN (no argument struct).";
    PDH_CERT_EXPORT = 5, "PDH_CERT_EXPORT (`struct sev_user_data_pdh_cert_export`).";
    PEK_CERT_IMPORT = 6, "PEK_CERT_IMPORT.";
    GET_ID = 7, "GET_ID (deprecated).";
    GET_ID2 = 8, "GET_ID2.";
    SNP_PLATFORM_STATUS = 9, "SNP_PLATFORM_STATUS.";
    SNP_COMMIT = 10, "SNP_COMMIT.";
    SNP_SET_CONFIG = 11, "SNP_SET_CONFIG.";
    SNP_VLEK_LOAD = 12, "SNP_VLEK_LOAD.";
}

// ---------------------------------------------------------------------------------------
// Layout checks of the kvm-bindings structs against the header (T0)
// ---------------------------------------------------------------------------------------

const _: () = {
    assert!(size_of::<kvm_sev_cmd>() == 24);
    assert!(offset_of!(kvm_sev_cmd, id) == 0);
    assert!(offset_of!(kvm_sev_cmd, pad0) == 4);
    assert!(offset_of!(kvm_sev_cmd, data) == 8);
    assert!(offset_of!(kvm_sev_cmd, error) == 16);
    assert!(offset_of!(kvm_sev_cmd, sev_fd) == 20);

    assert!(size_of::<kvm_sev_init>() == 48);
    assert!(offset_of!(kvm_sev_init, vmsa_features) == 0);
    assert!(offset_of!(kvm_sev_init, flags) == 8);
    assert!(offset_of!(kvm_sev_init, ghcb_version) == 12);
    assert!(offset_of!(kvm_sev_init, pad1) == 14);
    assert!(offset_of!(kvm_sev_init, pad2) == 16);

    assert!(size_of::<kvm_sev_launch_start>() == 40);
    assert!(offset_of!(kvm_sev_launch_start, handle) == 0);
    assert!(offset_of!(kvm_sev_launch_start, policy) == 4);
    assert!(offset_of!(kvm_sev_launch_start, dh_uaddr) == 8);
    assert!(offset_of!(kvm_sev_launch_start, dh_len) == 16);
    assert!(offset_of!(kvm_sev_launch_start, pad0) == 20);
    assert!(offset_of!(kvm_sev_launch_start, session_uaddr) == 24);
    assert!(offset_of!(kvm_sev_launch_start, session_len) == 32);
    assert!(offset_of!(kvm_sev_launch_start, pad1) == 36);

    assert!(size_of::<kvm_sev_launch_update_data>() == 16);
    assert!(offset_of!(kvm_sev_launch_update_data, uaddr) == 0);
    assert!(offset_of!(kvm_sev_launch_update_data, len) == 8);
    assert!(offset_of!(kvm_sev_launch_update_data, pad0) == 12);

    assert!(size_of::<kvm_sev_launch_secret>() == 48);
    assert!(offset_of!(kvm_sev_launch_secret, hdr_uaddr) == 0);
    assert!(offset_of!(kvm_sev_launch_secret, hdr_len) == 8);
    assert!(offset_of!(kvm_sev_launch_secret, pad0) == 12);
    assert!(offset_of!(kvm_sev_launch_secret, guest_uaddr) == 16);
    assert!(offset_of!(kvm_sev_launch_secret, guest_len) == 24);
    assert!(offset_of!(kvm_sev_launch_secret, pad1) == 28);
    assert!(offset_of!(kvm_sev_launch_secret, trans_uaddr) == 32);
    assert!(offset_of!(kvm_sev_launch_secret, trans_len) == 40);
    assert!(offset_of!(kvm_sev_launch_secret, pad2) == 44);

    assert!(size_of::<kvm_sev_launch_measure>() == 16);
    assert!(offset_of!(kvm_sev_launch_measure, uaddr) == 0);
    assert!(offset_of!(kvm_sev_launch_measure, len) == 8);
    assert!(offset_of!(kvm_sev_launch_measure, pad0) == 12);

    assert!(size_of::<kvm_sev_guest_status>() == 12);
    assert!(offset_of!(kvm_sev_guest_status, handle) == 0);
    assert!(offset_of!(kvm_sev_guest_status, policy) == 4);
    assert!(offset_of!(kvm_sev_guest_status, state) == 8);

    assert!(size_of::<kvm_sev_dbg>() == 24);
    assert!(offset_of!(kvm_sev_dbg, src_uaddr) == 0);
    assert!(offset_of!(kvm_sev_dbg, dst_uaddr) == 8);
    assert!(offset_of!(kvm_sev_dbg, len) == 16);
    assert!(offset_of!(kvm_sev_dbg, pad0) == 20);

    assert!(size_of::<kvm_enc_region>() == 16);
    assert!(offset_of!(kvm_enc_region, addr) == 0);
    assert!(offset_of!(kvm_enc_region, size) == 8);

    assert!(size_of::<kvm_enable_cap>() == 104);
    assert!(offset_of!(kvm_enable_cap, cap) == 0);
    assert!(offset_of!(kvm_enable_cap, flags) == 4);
    assert!(offset_of!(kvm_enable_cap, args) == 8);
    assert!(offset_of!(kvm_enable_cap, pad) == 40);
};

// ---------------------------------------------------------------------------------------
// Errors for lengths the ABI cannot carry
// ---------------------------------------------------------------------------------------

/// `len` as the `__u32` the ABI carries, refusing blobs the kernel would refuse anyway
/// (it copies at most [`SEV_FW_BLOB_MAX_SIZE`] bytes) with a message naming the input.
pub(crate) fn blob_len(what: &'static str, len: usize) -> Result<u32, SevError> {
    if len == 0 {
        return Err(SevError::Malformed {
            what,
            why: "it is empty".to_string(),
        });
    }
    if len > SEV_FW_BLOB_MAX_SIZE {
        return Err(SevError::Malformed {
            what,
            why: format!("{len} bytes, the kernel takes at most {SEV_FW_BLOB_MAX_SIZE}"),
        });
    }
    u32::try_from(len).map_err(|_| SevError::Malformed {
        what,
        why: format!("{len} bytes does not fit the kernel's 32-bit length"),
    })
}

fn guest_len32(range: &GuestRange<'_>) -> Result<u32, SevError> {
    u32::try_from(range.len).map_err(|_| {
        SevError::Memory(MemoryAccessError {
            gpa: range.gpa,
            len: range.len,
        })
    })
}

// ---------------------------------------------------------------------------------------
// Guest memory as the kernel sees it
// ---------------------------------------------------------------------------------------

/// Guest memory named by its host virtual address in the VMM's mapping, as the kernel
/// takes it (`uaddr`). It borrows the [`LaunchMemory`] that resolved it: by that trait's
/// contract the mapping lives at least as long as the `LaunchMemory`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GuestRange<'a> {
    gpa: u64,
    hva: u64,
    len: u64,
    _mem: PhantomData<&'a ()>,
}

impl<'a> GuestRange<'a> {
    /// Resolves [gpa, gpa + len) to one contiguous host mapping, or fails with
    /// [`SevError::Memory`] naming the range.
    pub(crate) fn resolve(mem: &'a dyn LaunchMemory, gpa: u64, len: u64) -> Result<Self, SevError> {
        let hva = mem
            .host_addr(gpa, len)
            .ok_or(SevError::Memory(MemoryAccessError { gpa, len }))?;
        Ok(GuestRange {
            gpa,
            hva,
            len,
            _mem: PhantomData,
        })
    }

    /// The part [offset, offset + len) of this range (both within it).
    pub(crate) fn sub(&self, offset: u64, len: u64) -> GuestRange<'a> {
        debug_assert!(offset.checked_add(len).is_some_and(|end| end <= self.len));
        GuestRange {
            gpa: self.gpa + offset,
            hva: self.hva + offset,
            len,
            _mem: PhantomData,
        }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }
}

// ---------------------------------------------------------------------------------------
// KVM_MEMORY_ENCRYPT_OP argument structs
// ---------------------------------------------------------------------------------------

/// A `KVM_MEMORY_ENCRYPT_OP` argument struct: what the kernel reads at `kvm_sev_cmd.data`
/// (and may write back) for command [`SevPayload::ID`].
///
/// # Safety
/// `Self` must have exactly the size and layout of the uapi struct the kernel copies in
/// and out for `ID` (`copy_from_user`/`copy_to_user` of `sizeof(params)` in sev.c), and
/// every user pointer inside it must stay valid for as long as `Self` lives, for reads or
/// writes as the command needs.
pub(crate) unsafe trait SevPayload {
    /// The sub-command that takes this struct.
    const ID: SevCmdId;
}

/// Commands whose handler in sev.c reads no argument struct (`data` is 0, as QEMU sends).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BareSevCmd {
    /// `KVM_SEV_INIT` (legacy; `sev_guest_init` ignores `data`).
    Init,
    /// `KVM_SEV_ES_INIT` (legacy).
    EsInit,
    /// `KVM_SEV_LAUNCH_UPDATE_VMSA` (every vCPU of the VM).
    LaunchUpdateVmsa,
    /// `KVM_SEV_LAUNCH_FINISH`.
    LaunchFinish,
}

impl BareSevCmd {
    /// The command id.
    pub(crate) fn id(self) -> SevCmdId {
        match self {
            BareSevCmd::Init => SevCmdId::INIT,
            BareSevCmd::EsInit => SevCmdId::ES_INIT,
            BareSevCmd::LaunchUpdateVmsa => SevCmdId::LAUNCH_UPDATE_VMSA,
            BareSevCmd::LaunchFinish => SevCmdId::LAUNCH_FINISH,
        }
    }
}

/// `struct kvm_sev_cmd`, pointing at a payload borrowed for `'a`.
#[repr(C)]
pub(crate) struct SevCmd<'a> {
    raw: kvm_sev_cmd,
    _payload: PhantomData<&'a mut ()>,
}

impl<'a> SevCmd<'a> {
    /// A command with its argument struct; the id comes from the payload's type.
    pub(crate) fn new<P: SevPayload>(payload: &'a mut P, sev: BorrowedFd<'a>) -> Self {
        SevCmd {
            raw: kvm_sev_cmd {
                id: P::ID.0,
                pad0: 0,
                data: payload as *mut P as u64,
                error: 0,
                sev_fd: fd_u32(sev),
            },
            _payload: PhantomData,
        }
    }

    /// A command that takes no argument struct.
    pub(crate) fn bare(cmd: BareSevCmd, sev: BorrowedFd<'a>) -> Self {
        SevCmd {
            raw: kvm_sev_cmd {
                id: cmd.id().0,
                pad0: 0,
                data: 0,
                error: 0,
                sev_fd: fd_u32(sev),
            },
            _payload: PhantomData,
        }
    }

    /// The command id.
    #[cfg(test)]
    pub(crate) fn id(&self) -> SevCmdId {
        SevCmdId(self.raw.id)
    }

    /// The firmware status the kernel wrote back (0 if the firmware was not reached).
    pub(crate) fn fw_error(&self) -> u32 {
        self.raw.error
    }

    /// The `kvm_sev_cmd` to hand to `KVM_MEMORY_ENCRYPT_OP`. Its `data` is 0 or points to
    /// the payload whose type fixed `id`, borrowed for `'a` (see [`SevPayload`]).
    pub(crate) fn raw_mut(&mut self) -> &mut kvm_sev_cmd {
        &mut self.raw
    }
}

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).expect("an open file descriptor is never negative")
}

// SAFETY: `kvm_sev_init` is the uapi struct `sev_guest_init2` copies in for INIT2 (the
// layout is asserted above); it carries no pointers.
unsafe impl SevPayload for kvm_sev_init {
    const ID: SevCmdId = SevCmdId::INIT2;
}

// SAFETY: `kvm_sev_guest_status` is the uapi struct `sev_guest_status` copies out (layout
// asserted above); it carries no pointers.
unsafe impl SevPayload for kvm_sev_guest_status {
    const ID: SevCmdId = SevCmdId::GUEST_STATUS;
}

/// `struct kvm_sev_launch_start` over the guest owner's DH certificate and session blob.
#[repr(C)]
pub(crate) struct LaunchStart<'a> {
    raw: kvm_sev_launch_start,
    _blobs: PhantomData<&'a [u8]>,
}

impl<'a> LaunchStart<'a> {
    /// LAUNCH_START with `policy`; without a certificate and session the firmware makes
    /// its own transport keys (sev.c passes null addresses through).
    pub(crate) fn new(policy: u32, owner: Option<(&'a [u8], &'a [u8])>) -> Result<Self, SevError> {
        let mut raw = kvm_sev_launch_start {
            policy,
            ..Default::default()
        };
        if let Some((dh_cert, session)) = owner {
            raw.dh_len = blob_len("guest owner DH certificate", dh_cert.len())?;
            raw.dh_uaddr = dh_cert.as_ptr() as u64;
            raw.session_len = blob_len("launch session blob", session.len())?;
            raw.session_uaddr = session.as_ptr() as u64;
        }
        Ok(LaunchStart {
            raw,
            _blobs: PhantomData,
        })
    }

    /// The guest handle the firmware assigned (valid after success).
    pub(crate) fn handle(&self) -> u32 {
        self.raw.handle
    }
}

// SAFETY: `#[repr(C)]` with `kvm_sev_launch_start` first and a zero-sized marker, so the
// layout is the uapi struct's (asserted below); `dh_uaddr`/`session_uaddr` are null or
// point to slices borrowed for `'a`, with the lengths of those slices; the kernel only
// reads them (psp_copy_user_blob) and writes back the struct itself.
unsafe impl SevPayload for LaunchStart<'_> {
    const ID: SevCmdId = SevCmdId::LAUNCH_START;
}

/// `struct kvm_sev_launch_update_data` over guest memory.
#[repr(C)]
pub(crate) struct LaunchUpdateData<'a> {
    raw: kvm_sev_launch_update_data,
    _guest: PhantomData<&'a ()>,
}

impl<'a> LaunchUpdateData<'a> {
    /// Encrypt and measure `range` in place (at most 4 GiB - 1 at a time).
    pub(crate) fn new(range: GuestRange<'a>) -> Result<Self, SevError> {
        Ok(LaunchUpdateData {
            raw: kvm_sev_launch_update_data {
                uaddr: range.hva,
                len: guest_len32(&range)?,
                pad0: 0,
            },
            _guest: PhantomData,
        })
    }
}

// SAFETY: layout is the uapi struct's (asserted below); `uaddr`/`len` name guest memory in
// the VMM's mapping, alive for `'a` by the `LaunchMemory` contract; the kernel pins and
// encrypts it in place and writes nothing back into the struct.
unsafe impl SevPayload for LaunchUpdateData<'_> {
    const ID: SevCmdId = SevCmdId::LAUNCH_UPDATE_DATA;
}

/// `struct kvm_sev_launch_measure`: a length query (null buffer) or a buffer to fill.
#[repr(C)]
pub(crate) struct LaunchMeasure<'a> {
    raw: kvm_sev_launch_measure,
    _buf: PhantomData<&'a mut [u8]>,
}

impl<'a> LaunchMeasure<'a> {
    /// The length query QEMU does first: `len == 0` makes sev.c ask the firmware for the
    /// size and write it back into `len`.
    pub(crate) fn query() -> LaunchMeasure<'static> {
        LaunchMeasure {
            raw: kvm_sev_launch_measure::default(),
            _buf: PhantomData,
        }
    }

    /// Fill `buf` with the measurement blob.
    pub(crate) fn new(buf: &'a mut [u8]) -> Result<Self, SevError> {
        Ok(LaunchMeasure {
            raw: kvm_sev_launch_measure {
                len: blob_len("LAUNCH_MEASURE buffer", buf.len())?,
                uaddr: buf.as_mut_ptr() as u64,
                pad0: 0,
            },
            _buf: PhantomData,
        })
    }

    /// The length the kernel wrote back.
    pub(crate) fn len(&self) -> u32 {
        self.raw.len
    }
}

// SAFETY: layout is the uapi struct's (asserted below); `uaddr` is null (query) or points
// to a mutable slice borrowed for `'a` of exactly `len` bytes; sev.c copies at most
// `params.len` bytes into it and writes the struct back.
unsafe impl SevPayload for LaunchMeasure<'_> {
    const ID: SevCmdId = SevCmdId::LAUNCH_MEASURE;
}

/// `struct kvm_sev_launch_secret`: packet header and encrypted secret from the guest
/// owner, and the guest memory it lands in.
#[repr(C)]
pub(crate) struct LaunchSecret<'a> {
    raw: kvm_sev_launch_secret,
    _bufs: PhantomData<&'a [u8]>,
}

impl<'a> LaunchSecret<'a> {
    /// Inject `trans` (encrypted with the TEK, authenticated by `hdr`) into `guest`.
    pub(crate) fn new(
        hdr: &'a [u8],
        guest: GuestRange<'a>,
        trans: &'a [u8],
    ) -> Result<Self, SevError> {
        let trans_len = blob_len("launch secret", trans.len())?;
        if u64::from(trans_len) != guest.len {
            return Err(SevError::Malformed {
                what: "launch secret",
                why: format!(
                    "{} bytes but the guest range has {}",
                    trans.len(),
                    guest.len
                ),
            });
        }
        Ok(LaunchSecret {
            raw: kvm_sev_launch_secret {
                hdr_uaddr: hdr.as_ptr() as u64,
                hdr_len: blob_len("launch secret packet header", hdr.len())?,
                pad0: 0,
                guest_uaddr: guest.hva,
                guest_len: trans_len,
                pad1: 0,
                trans_uaddr: trans.as_ptr() as u64,
                trans_len,
                pad2: 0,
            },
            _bufs: PhantomData,
        })
    }
}

// SAFETY: layout is the uapi struct's (asserted below); `hdr_uaddr`/`trans_uaddr` point to
// slices borrowed for `'a` with their lengths (the kernel only reads them);
// `guest_uaddr`/`guest_len` name guest memory alive for `'a` (`LaunchMemory` contract),
// which the firmware writes; the struct itself is not written back.
unsafe impl SevPayload for LaunchSecret<'_> {
    const ID: SevCmdId = SevCmdId::LAUNCH_SECRET;
}

/// `struct kvm_sev_dbg` for DBG_DECRYPT: guest memory → a host buffer, in the clear.
#[repr(C)]
pub(crate) struct DbgDecrypt<'a> {
    raw: kvm_sev_dbg,
    _dst: PhantomData<&'a mut [u8]>,
}

impl<'a> DbgDecrypt<'a> {
    /// Decrypt `dst.len()` bytes of guest memory at `gpa` into `dst`.
    pub(crate) fn new(
        mem: &'a dyn LaunchMemory,
        gpa: u64,
        dst: &'a mut [u8],
    ) -> Result<Self, SevError> {
        let src = GuestRange::resolve(mem, gpa, dst.len() as u64)?;
        Ok(DbgDecrypt {
            raw: kvm_sev_dbg {
                src_uaddr: src.hva,
                dst_uaddr: dst.as_mut_ptr() as u64,
                len: guest_len32(&src)?,
                pad0: 0,
            },
            _dst: PhantomData,
        })
    }
}

// SAFETY: layout is the uapi struct's (asserted below); `src_uaddr` names `len` bytes of
// guest memory alive for `'a` (`LaunchMemory` contract); `dst_uaddr` is a mutable slice
// borrowed for `'a` of exactly `len` bytes, which sev_dbg_crypt writes (page by page,
// never past `len`); the struct is only read.
unsafe impl SevPayload for DbgDecrypt<'_> {
    const ID: SevCmdId = SevCmdId::DBG_DECRYPT;
}

/// `struct kvm_sev_dbg` for DBG_ENCRYPT: a host buffer → guest memory, through the
/// guest's key.
#[repr(C)]
pub(crate) struct DbgEncrypt<'a> {
    raw: kvm_sev_dbg,
    _src: PhantomData<&'a [u8]>,
}

impl<'a> DbgEncrypt<'a> {
    /// Encrypt `src` into guest memory at `gpa`.
    pub(crate) fn new(
        mem: &'a dyn LaunchMemory,
        gpa: u64,
        src: &'a [u8],
    ) -> Result<Self, SevError> {
        let dst = GuestRange::resolve(mem, gpa, src.len() as u64)?;
        Ok(DbgEncrypt {
            raw: kvm_sev_dbg {
                src_uaddr: src.as_ptr() as u64,
                dst_uaddr: dst.hva,
                len: guest_len32(&dst)?,
                pad0: 0,
            },
            _src: PhantomData,
        })
    }
}

// SAFETY: layout is the uapi struct's (asserted below); `src_uaddr` is a slice borrowed
// for `'a` of exactly `len` bytes (only read); `dst_uaddr` names `len` bytes of guest
// memory alive for `'a`; the struct is only read.
unsafe impl SevPayload for DbgEncrypt<'_> {
    const ID: SevCmdId = SevCmdId::DBG_ENCRYPT;
}

/// `struct kvm_enc_region` for `KVM_MEMORY_ENCRYPT_{,UN}REG_REGION`: guest RAM the kernel
/// pins for the guest's lifetime (what QEMU does for every RAM block of an SEV guest).
#[repr(C)]
pub(crate) struct EncRegion<'a> {
    raw: kvm_enc_region,
    _guest: PhantomData<&'a ()>,
}

impl<'a> EncRegion<'a> {
    /// The region covering `range`.
    pub(crate) fn new(range: GuestRange<'a>) -> Self {
        EncRegion {
            raw: kvm_enc_region {
                addr: range.hva,
                size: range.len,
            },
            _guest: PhantomData,
        }
    }

    /// The `kvm_enc_region` to hand to the region ioctls.
    pub(crate) fn raw(&self) -> &kvm_enc_region {
        &self.raw
    }
}

// ---------------------------------------------------------------------------------------
// /dev/sev argument structs (own definitions: kvm-bindings does not carry psp-sev.h)
// ---------------------------------------------------------------------------------------

/// `struct sev_issue_cmd` (psp-sev.h, `__packed`, 16 bytes), pointing at a payload
/// borrowed for `'a`.
#[repr(C, packed)]
pub(crate) struct SevIssueCmd<'a> {
    cmd: u32,
    data: u64,
    error: u32,
    _payload: PhantomData<&'a mut ()>,
}

/// A `/dev/sev` argument struct for command [`PspPayload::ID`].
///
/// # Safety
/// As [`SevPayload`]: the exact size and layout sev-dev.c copies in and out for `ID`, and
/// every user pointer inside valid for the struct's lifetime.
pub(crate) unsafe trait PspPayload {
    /// The command that takes this struct.
    const ID: PspCmdId;
}

/// `/dev/sev` commands whose handler reads no argument struct (PEK_GEN is one too; the
/// backend has no use for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BarePspCmd {
    /// FACTORY_RESET (`sev_ioctl_do_reset`).
    FactoryReset,
    /// PDH_GEN (`sev_ioctl_do_pek_pdh_gen`).
    PdhGen,
}

impl BarePspCmd {
    /// The command id.
    pub(crate) fn id(self) -> PspCmdId {
        match self {
            BarePspCmd::FactoryReset => PspCmdId::FACTORY_RESET,
            BarePspCmd::PdhGen => PspCmdId::PDH_GEN,
        }
    }
}

impl<'a> SevIssueCmd<'a> {
    /// A command with its argument struct; the id comes from the payload's type.
    pub(crate) fn new<P: PspPayload>(payload: &'a mut P) -> Self {
        SevIssueCmd {
            cmd: P::ID.0,
            data: payload as *mut P as u64,
            error: 0,
            _payload: PhantomData,
        }
    }

    /// A command that takes no argument struct.
    pub(crate) fn bare(cmd: BarePspCmd) -> SevIssueCmd<'static> {
        SevIssueCmd {
            cmd: cmd.id().0,
            data: 0,
            error: 0,
            _payload: PhantomData,
        }
    }

    /// The command id.
    #[cfg(test)]
    pub(crate) fn id(&self) -> PspCmdId {
        PspCmdId(self.cmd)
    }

    /// The firmware status the kernel wrote back.
    pub(crate) fn fw_error(&self) -> u32 {
        self.error
    }
}

/// `struct sev_user_data_status` (psp-sev.h, `__packed`, 12 bytes): PLATFORM_STATUS out.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct SevUserDataStatus {
    /// API major version.
    pub(crate) api_major: u8,
    /// API minor version.
    pub(crate) api_minor: u8,
    /// Platform state.
    pub(crate) state: u8,
    /// Flags: bit 0 OWNER, bit 8 CONFIG_ES.
    pub(crate) flags: u32,
    /// Firmware build id.
    pub(crate) build: u8,
    /// Number of valid guests.
    pub(crate) guest_count: u32,
}

// SAFETY: `#[repr(C, packed)]` with the uapi field order, 12 bytes (asserted below); no
// pointers; `sev_ioctl_do_platform_status` copies `sizeof(data)` = 12 bytes out.
unsafe impl PspPayload for SevUserDataStatus {
    const ID: PspCmdId = PspCmdId::PLATFORM_STATUS;
}

/// `struct sev_user_data_pdh_cert_export` (psp-sev.h, `__packed`, 24 bytes).
#[repr(C, packed)]
pub(crate) struct PdhCertExport<'a> {
    pdh_cert_address: u64,
    pdh_cert_len: u32,
    cert_chain_address: u64,
    cert_chain_len: u32,
    _bufs: PhantomData<&'a mut [u8]>,
}

impl<'a> PdhCertExport<'a> {
    /// The length query: with a null address sev-dev.c asks the firmware for the sizes
    /// and writes them back.
    pub(crate) fn query() -> PdhCertExport<'static> {
        PdhCertExport {
            pdh_cert_address: 0,
            pdh_cert_len: 0,
            cert_chain_address: 0,
            cert_chain_len: 0,
            _bufs: PhantomData,
        }
    }

    /// Export into `pdh` (one certificate) and `chain` (PEK ‖ OCA ‖ CEK).
    pub(crate) fn new(pdh: &'a mut [u8], chain: &'a mut [u8]) -> Result<Self, SevError> {
        Ok(PdhCertExport {
            pdh_cert_len: blob_len("PDH certificate buffer", pdh.len())?,
            pdh_cert_address: pdh.as_mut_ptr() as u64,
            cert_chain_len: blob_len("certificate chain buffer", chain.len())?,
            cert_chain_address: chain.as_mut_ptr() as u64,
            _bufs: PhantomData,
        })
    }

    /// The lengths the kernel wrote back: (PDH, chain).
    pub(crate) fn lens(&self) -> (u32, u32) {
        (self.pdh_cert_len, self.cert_chain_len)
    }
}

// SAFETY: `#[repr(C, packed)]` with the uapi field order and a zero-sized marker, 24 bytes
// (asserted below); the addresses are null (query) or mutable slices borrowed for `'a`
// with exactly the given lengths. sev-dev.c copies back the lengths the firmware reports,
// which for a buffer sized from the query are the same.
unsafe impl PspPayload for PdhCertExport<'_> {
    const ID: PspCmdId = PspCmdId::PDH_CERT_EXPORT;
}

// Layout of our own structs and of the lifetime wrappers (T0).
const _: () = {
    assert!(size_of::<SevIssueCmd<'static>>() == 16);
    assert!(offset_of!(SevIssueCmd<'static>, cmd) == 0);
    assert!(offset_of!(SevIssueCmd<'static>, data) == 4);
    assert!(offset_of!(SevIssueCmd<'static>, error) == 12);

    assert!(size_of::<SevUserDataStatus>() == 12);
    assert!(offset_of!(SevUserDataStatus, api_major) == 0);
    assert!(offset_of!(SevUserDataStatus, api_minor) == 1);
    assert!(offset_of!(SevUserDataStatus, state) == 2);
    assert!(offset_of!(SevUserDataStatus, flags) == 3);
    assert!(offset_of!(SevUserDataStatus, build) == 7);
    assert!(offset_of!(SevUserDataStatus, guest_count) == 8);

    assert!(size_of::<PdhCertExport<'static>>() == 24);
    assert!(offset_of!(PdhCertExport<'static>, pdh_cert_address) == 0);
    assert!(offset_of!(PdhCertExport<'static>, pdh_cert_len) == 8);
    assert!(offset_of!(PdhCertExport<'static>, cert_chain_address) == 12);
    assert!(offset_of!(PdhCertExport<'static>, cert_chain_len) == 20);

    assert!(size_of::<SevCmd<'static>>() == size_of::<kvm_sev_cmd>());
    assert!(offset_of!(SevCmd<'static>, raw) == 0);
    assert!(size_of::<LaunchStart<'static>>() == size_of::<kvm_sev_launch_start>());
    assert!(offset_of!(LaunchStart<'static>, raw) == 0);
    assert!(size_of::<LaunchUpdateData<'static>>() == size_of::<kvm_sev_launch_update_data>());
    assert!(offset_of!(LaunchUpdateData<'static>, raw) == 0);
    assert!(size_of::<LaunchMeasure<'static>>() == size_of::<kvm_sev_launch_measure>());
    assert!(offset_of!(LaunchMeasure<'static>, raw) == 0);
    assert!(size_of::<LaunchSecret<'static>>() == size_of::<kvm_sev_launch_secret>());
    assert!(offset_of!(LaunchSecret<'static>, raw) == 0);
    assert!(size_of::<DbgDecrypt<'static>>() == size_of::<kvm_sev_dbg>());
    assert!(offset_of!(DbgDecrypt<'static>, raw) == 0);
    assert!(size_of::<DbgEncrypt<'static>>() == size_of::<kvm_sev_dbg>());
    assert!(offset_of!(DbgEncrypt<'static>, raw) == 0);
    assert!(size_of::<EncRegion<'static>>() == size_of::<kvm_enc_region>());
    assert!(offset_of!(EncRegion<'static>, raw) == 0);
};

// ---------------------------------------------------------------------------------------
// The ioctl calls
// ---------------------------------------------------------------------------------------

/// What one ioctl returned: its return value and, when that is negative, `errno`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The ioctl's return value.
    pub(crate) rc: libc::c_int,
    /// `errno` after a failure, else 0.
    pub(crate) errno: i32,
}

fn outcome(rc: libc::c_int) -> Outcome {
    let errno = if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    };
    Outcome { rc, errno }
}

/// Which of the two region ioctls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RegionOp {
    /// `KVM_MEMORY_ENCRYPT_REG_REGION`.
    Register,
    /// `KVM_MEMORY_ENCRYPT_UNREG_REGION`.
    Unregister,
}

/// `SEV_ISSUE_CMD` on `/dev/sev`.
pub(crate) fn sev_issue_cmd(sev: BorrowedFd<'_>, cmd: &mut SevIssueCmd<'_>) -> Outcome {
    // SAFETY: `cmd` is a live, exclusively borrowed 16-byte `struct sev_issue_cmd`
    // (layout asserted) that sev_ioctl reads and writes back in place. Its `data` is 0 for
    // a bare command or points to the payload whose type fixed `cmd` (`PspPayload`),
    // borrowed for the command's lifetime. `sev` is an open fd (borrowed), opened from
    // /dev/sev by this backend.
    let rc = unsafe { libc::ioctl(sev.as_raw_fd(), SEV_ISSUE_CMD, cmd as *mut SevIssueCmd<'_>) };
    outcome(rc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_header_encoding() {
        assert_eq!(SEV_ISSUE_CMD, 0xc010_5300);
        assert_eq!(KVM_X86_SEV_VM, u64::from(kvm_bindings::KVM_X86_SEV_VM));
        assert_eq!(
            KVM_X86_SEV_ES_VM,
            u64::from(kvm_bindings::KVM_X86_SEV_ES_VM)
        );
    }

    #[test]
    fn sev_cmd_id_table_is_the_kernel_enum() {
        // 0..=22 contiguous, then the SNP block from 100.
        let expected: Vec<u32> = (0..=22).chain(100..=103).collect();
        let got: Vec<u32> = SevCmdId::ALL.iter().map(|c| c.0).collect();
        assert_eq!(got, expected);
        for (id, name) in [
            (0, "INIT"),
            (1, "ES_INIT"),
            (2, "LAUNCH_START"),
            (3, "LAUNCH_UPDATE_DATA"),
            (4, "LAUNCH_UPDATE_VMSA"),
            (5, "LAUNCH_SECRET"),
            (6, "LAUNCH_MEASURE"),
            (7, "LAUNCH_FINISH"),
            (16, "GUEST_STATUS"),
            (17, "DBG_DECRYPT"),
            (18, "DBG_ENCRYPT"),
            (21, "SEND_CANCEL"),
            (22, "INIT2"),
            (100, "SNP_LAUNCH_START"),
            (101, "SNP_LAUNCH_UPDATE"),
            (102, "SNP_LAUNCH_FINISH"),
        ] {
            assert_eq!(SevCmdId(id).name(), Some(name), "id {id}");
        }
        assert_eq!(SevCmdId::LAUNCH_START.kernel_name(), "KVM_SEV_LAUNCH_START");
        assert_eq!(SevCmdId(23).name(), None);
        assert_eq!(SevCmdId(99).kernel_name(), "KVM_SEV_<unknown>");
        // kvm-bindings agrees.
        assert_eq!(SevCmdId::INIT2.0, kvm_bindings::sev_cmd_id_KVM_SEV_INIT2);
        assert_eq!(
            SevCmdId::DBG_ENCRYPT.0,
            kvm_bindings::sev_cmd_id_KVM_SEV_DBG_ENCRYPT
        );
        assert_eq!(
            SevCmdId::SNP_LAUNCH_FINISH.0,
            kvm_bindings::sev_cmd_id_KVM_SEV_SNP_LAUNCH_FINISH
        );
    }

    #[test]
    fn psp_cmd_id_table_is_the_kernel_enum() {
        let got: Vec<u32> = PspCmdId::ALL.iter().map(|c| c.0).collect();
        assert_eq!(got, (0..=12).collect::<Vec<u32>>());
        assert_eq!(PspCmdId(0).name(), Some("FACTORY_RESET"));
        assert_eq!(PspCmdId(1).name(), Some("PLATFORM_STATUS"));
        assert_eq!(PspCmdId(2).name(), Some("PEK_GEN"));
        assert_eq!(PspCmdId(4).name(), Some("PDH_GEN"));
        assert_eq!(PspCmdId(5).name(), Some("PDH_CERT_EXPORT"));
        assert_eq!(PspCmdId::PDH_GEN.kernel_name(), "SEV_PDH_GEN");
        assert_eq!(PspCmdId(13).name(), None);
    }

    #[test]
    fn payload_types_fix_their_command_ids() {
        assert_eq!(<kvm_sev_init as SevPayload>::ID, SevCmdId::INIT2);
        assert_eq!(
            <kvm_sev_guest_status as SevPayload>::ID,
            SevCmdId::GUEST_STATUS
        );
        assert_eq!(<LaunchStart<'_> as SevPayload>::ID, SevCmdId::LAUNCH_START);
        assert_eq!(
            <LaunchUpdateData<'_> as SevPayload>::ID,
            SevCmdId::LAUNCH_UPDATE_DATA
        );
        assert_eq!(
            <LaunchMeasure<'_> as SevPayload>::ID,
            SevCmdId::LAUNCH_MEASURE
        );
        assert_eq!(
            <LaunchSecret<'_> as SevPayload>::ID,
            SevCmdId::LAUNCH_SECRET
        );
        assert_eq!(<DbgDecrypt<'_> as SevPayload>::ID, SevCmdId::DBG_DECRYPT);
        assert_eq!(<DbgEncrypt<'_> as SevPayload>::ID, SevCmdId::DBG_ENCRYPT);
        assert_eq!(
            <SevUserDataStatus as PspPayload>::ID,
            PspCmdId::PLATFORM_STATUS
        );
        assert_eq!(
            <PdhCertExport<'_> as PspPayload>::ID,
            PspCmdId::PDH_CERT_EXPORT
        );
        assert_eq!(BareSevCmd::Init.id(), SevCmdId::INIT);
        assert_eq!(BareSevCmd::EsInit.id(), SevCmdId::ES_INIT);
        assert_eq!(
            BareSevCmd::LaunchUpdateVmsa.id(),
            SevCmdId::LAUNCH_UPDATE_VMSA
        );
        assert_eq!(BareSevCmd::LaunchFinish.id(), SevCmdId::LAUNCH_FINISH);
        assert_eq!(BarePspCmd::FactoryReset.id(), PspCmdId::FACTORY_RESET);
        assert_eq!(BarePspCmd::PdhGen.id(), PspCmdId::PDH_GEN);
    }

    #[test]
    fn kvm_struct_sizes_and_offsets() {
        assert_eq!(size_of::<kvm_sev_cmd>(), 24);
        assert_eq!(
            [
                offset_of!(kvm_sev_cmd, id),
                offset_of!(kvm_sev_cmd, pad0),
                offset_of!(kvm_sev_cmd, data),
                offset_of!(kvm_sev_cmd, error),
                offset_of!(kvm_sev_cmd, sev_fd)
            ],
            [0, 4, 8, 16, 20]
        );
        assert_eq!(size_of::<kvm_sev_init>(), 48);
        assert_eq!(
            [
                offset_of!(kvm_sev_init, vmsa_features),
                offset_of!(kvm_sev_init, flags),
                offset_of!(kvm_sev_init, ghcb_version),
                offset_of!(kvm_sev_init, pad1),
                offset_of!(kvm_sev_init, pad2)
            ],
            [0, 8, 12, 14, 16]
        );
        assert_eq!(size_of::<kvm_sev_launch_start>(), 40);
        assert_eq!(
            [
                offset_of!(kvm_sev_launch_start, handle),
                offset_of!(kvm_sev_launch_start, policy),
                offset_of!(kvm_sev_launch_start, dh_uaddr),
                offset_of!(kvm_sev_launch_start, dh_len),
                offset_of!(kvm_sev_launch_start, pad0),
                offset_of!(kvm_sev_launch_start, session_uaddr),
                offset_of!(kvm_sev_launch_start, session_len),
                offset_of!(kvm_sev_launch_start, pad1)
            ],
            [0, 4, 8, 16, 20, 24, 32, 36]
        );
        assert_eq!(size_of::<kvm_sev_launch_update_data>(), 16);
        assert_eq!(
            [
                offset_of!(kvm_sev_launch_update_data, uaddr),
                offset_of!(kvm_sev_launch_update_data, len),
                offset_of!(kvm_sev_launch_update_data, pad0)
            ],
            [0, 8, 12]
        );
        assert_eq!(size_of::<kvm_sev_launch_secret>(), 48);
        assert_eq!(
            [
                offset_of!(kvm_sev_launch_secret, hdr_uaddr),
                offset_of!(kvm_sev_launch_secret, hdr_len),
                offset_of!(kvm_sev_launch_secret, pad0),
                offset_of!(kvm_sev_launch_secret, guest_uaddr),
                offset_of!(kvm_sev_launch_secret, guest_len),
                offset_of!(kvm_sev_launch_secret, pad1),
                offset_of!(kvm_sev_launch_secret, trans_uaddr),
                offset_of!(kvm_sev_launch_secret, trans_len),
                offset_of!(kvm_sev_launch_secret, pad2)
            ],
            [0, 8, 12, 16, 24, 28, 32, 40, 44]
        );
        assert_eq!(size_of::<kvm_sev_launch_measure>(), 16);
        assert_eq!(
            [
                offset_of!(kvm_sev_launch_measure, uaddr),
                offset_of!(kvm_sev_launch_measure, len),
                offset_of!(kvm_sev_launch_measure, pad0)
            ],
            [0, 8, 12]
        );
        assert_eq!(size_of::<kvm_sev_guest_status>(), 12);
        assert_eq!(
            [
                offset_of!(kvm_sev_guest_status, handle),
                offset_of!(kvm_sev_guest_status, policy),
                offset_of!(kvm_sev_guest_status, state)
            ],
            [0, 4, 8]
        );
        assert_eq!(size_of::<kvm_sev_dbg>(), 24);
        assert_eq!(
            [
                offset_of!(kvm_sev_dbg, src_uaddr),
                offset_of!(kvm_sev_dbg, dst_uaddr),
                offset_of!(kvm_sev_dbg, len),
                offset_of!(kvm_sev_dbg, pad0)
            ],
            [0, 8, 16, 20]
        );
        assert_eq!(size_of::<kvm_enc_region>(), 16);
        assert_eq!(
            [
                offset_of!(kvm_enc_region, addr),
                offset_of!(kvm_enc_region, size)
            ],
            [0, 8]
        );
        assert_eq!(size_of::<kvm_enable_cap>(), 104);
        assert_eq!(
            [
                offset_of!(kvm_enable_cap, cap),
                offset_of!(kvm_enable_cap, flags),
                offset_of!(kvm_enable_cap, args),
                offset_of!(kvm_enable_cap, pad)
            ],
            [0, 4, 8, 40]
        );
    }

    #[test]
    fn psp_struct_sizes_and_offsets() {
        assert_eq!(size_of::<SevIssueCmd<'static>>(), 16);
        assert_eq!(
            [
                offset_of!(SevIssueCmd<'static>, cmd),
                offset_of!(SevIssueCmd<'static>, data),
                offset_of!(SevIssueCmd<'static>, error)
            ],
            [0, 4, 12]
        );
        assert_eq!(size_of::<SevUserDataStatus>(), 12);
        assert_eq!(
            [
                offset_of!(SevUserDataStatus, api_major),
                offset_of!(SevUserDataStatus, api_minor),
                offset_of!(SevUserDataStatus, state),
                offset_of!(SevUserDataStatus, flags),
                offset_of!(SevUserDataStatus, build),
                offset_of!(SevUserDataStatus, guest_count)
            ],
            [0, 1, 2, 3, 7, 8]
        );
        assert_eq!(size_of::<PdhCertExport<'static>>(), 24);
        assert_eq!(
            [
                offset_of!(PdhCertExport<'static>, pdh_cert_address),
                offset_of!(PdhCertExport<'static>, pdh_cert_len),
                offset_of!(PdhCertExport<'static>, cert_chain_address),
                offset_of!(PdhCertExport<'static>, cert_chain_len)
            ],
            [0, 8, 12, 20]
        );
    }

    #[test]
    fn wrappers_have_the_layout_of_the_struct_they_wrap() {
        assert_eq!(size_of::<SevCmd<'static>>(), size_of::<kvm_sev_cmd>());
        assert_eq!(
            size_of::<LaunchStart<'static>>(),
            size_of::<kvm_sev_launch_start>()
        );
        assert_eq!(
            size_of::<LaunchUpdateData<'static>>(),
            size_of::<kvm_sev_launch_update_data>()
        );
        assert_eq!(
            size_of::<LaunchMeasure<'static>>(),
            size_of::<kvm_sev_launch_measure>()
        );
        assert_eq!(
            size_of::<LaunchSecret<'static>>(),
            size_of::<kvm_sev_launch_secret>()
        );
        assert_eq!(size_of::<DbgDecrypt<'static>>(), size_of::<kvm_sev_dbg>());
        assert_eq!(size_of::<DbgEncrypt<'static>>(), size_of::<kvm_sev_dbg>());
        assert_eq!(size_of::<EncRegion<'static>>(), size_of::<kvm_enc_region>());
        assert_eq!(
            std::mem::align_of::<SevCmd<'static>>(),
            std::mem::align_of::<kvm_sev_cmd>()
        );
    }

    struct FakeMemory {
        base: u64,
        size: u64,
    }

    impl LaunchMemory for FakeMemory {
        fn host_addr(&self, gpa: u64, len: u64) -> Option<u64> {
            (gpa.checked_add(len)? <= self.size).then_some(self.base + gpa)
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
    fn structs_carry_the_buffers_they_were_built_from() {
        let dev_null = std::fs::File::open("/dev/null").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&dev_null);

        let dh = [1u8; 2084];
        let session = [2u8; 132];
        let mut start = LaunchStart::new(0x5, Some((&dh, &session))).unwrap();
        assert_eq!(start.raw.policy, 5);
        assert_eq!(start.raw.dh_uaddr, dh.as_ptr() as u64);
        assert_eq!(start.raw.dh_len, 2084);
        assert_eq!(start.raw.session_uaddr, session.as_ptr() as u64);
        assert_eq!(start.raw.session_len, 132);
        let start_addr = &start as *const LaunchStart<'_> as u64;
        let cmd = SevCmd::new(&mut start, fd);
        assert_eq!(cmd.id(), SevCmdId::LAUNCH_START);
        assert_eq!(cmd.raw.data, start_addr);
        assert_eq!(cmd.raw.sev_fd, dev_null.as_raw_fd() as u32);
        assert_eq!(cmd.fw_error(), 0);

        let no_owner = LaunchStart::new(1, None).unwrap();
        assert_eq!((no_owner.raw.dh_uaddr, no_owner.raw.dh_len), (0, 0));
        assert_eq!(
            (no_owner.raw.session_uaddr, no_owner.raw.session_len),
            (0, 0)
        );

        let bare = SevCmd::bare(BareSevCmd::LaunchFinish, fd);
        assert_eq!((bare.id(), bare.raw.data), (SevCmdId::LAUNCH_FINISH, 0));

        let mem = FakeMemory {
            base: 0x7f00_0000_0000,
            size: 0x10_0000,
        };
        let range = GuestRange::resolve(&mem, 0x1000, 0x2000).unwrap();
        let update = LaunchUpdateData::new(range).unwrap();
        assert_eq!(
            (update.raw.uaddr, update.raw.len),
            (0x7f00_0000_1000, 0x2000)
        );
        let sub = range.sub(0x1000, 0x1000);
        assert_eq!(
            (sub.hva, sub.gpa, sub.len()),
            (0x7f00_0000_2000, 0x2000, 0x1000)
        );
        assert!(matches!(
            GuestRange::resolve(&mem, 0xff000, 0x2000),
            Err(SevError::Memory(MemoryAccessError {
                gpa: 0xff000,
                len: 0x2000
            }))
        ));

        let hdr = [0u8; 52];
        let secret = [3u8; 64];
        let target = GuestRange::resolve(&mem, 0x8000, 64).unwrap();
        let s = LaunchSecret::new(&hdr, target, &secret).unwrap();
        assert_eq!((s.raw.hdr_uaddr, s.raw.hdr_len), (hdr.as_ptr() as u64, 52));
        assert_eq!((s.raw.guest_uaddr, s.raw.guest_len), (0x7f00_0000_8000, 64));
        assert_eq!(
            (s.raw.trans_uaddr, s.raw.trans_len),
            (secret.as_ptr() as u64, 64)
        );
        let short = GuestRange::resolve(&mem, 0x8000, 32).unwrap();
        assert!(matches!(
            LaunchSecret::new(&hdr, short, &secret),
            Err(SevError::Malformed { .. })
        ));

        let mut out = [0u8; 48];
        let out_addr = out.as_ptr() as u64;
        let d = DbgDecrypt::new(&mem, 0x3000, &mut out).unwrap();
        assert_eq!(
            (d.raw.src_uaddr, d.raw.dst_uaddr, d.raw.len),
            (0x7f00_0000_3000, out_addr, 48)
        );
        let data = [9u8; 16];
        let e = DbgEncrypt::new(&mem, 0x4000, &data).unwrap();
        assert_eq!(
            (e.raw.src_uaddr, e.raw.dst_uaddr, e.raw.len),
            (data.as_ptr() as u64, 0x7f00_0000_4000, 16)
        );
        assert!(DbgDecrypt::new(&mem, 0x10_0000, &mut out).is_err());

        let mut buf = [0u8; 48];
        let m = LaunchMeasure::new(&mut buf).unwrap();
        assert_eq!(m.len(), 48);
        assert_eq!(
            (
                LaunchMeasure::query().raw.uaddr,
                LaunchMeasure::query().len()
            ),
            (0, 0)
        );

        let region = EncRegion::new(GuestRange::resolve(&mem, 0, 0x10_0000).unwrap());
        assert_eq!(
            (region.raw.addr, region.raw.size),
            (0x7f00_0000_0000, 0x10_0000)
        );

        let mut status = SevUserDataStatus::default();
        let status_addr = &status as *const SevUserDataStatus as u64;
        let issue = SevIssueCmd::new(&mut status);
        assert_eq!(
            (issue.id(), { issue.data }),
            (PspCmdId::PLATFORM_STATUS, status_addr)
        );
        let bare = SevIssueCmd::bare(BarePspCmd::PdhGen);
        assert_eq!(
            (bare.id(), { bare.data }, bare.fw_error()),
            (PspCmdId::PDH_GEN, 0, 0)
        );

        let (mut pdh, mut chain) = (vec![0u8; 2084], vec![0u8; 3 * 2084]);
        let (pdh_addr, chain_addr) = (pdh.as_ptr() as u64, chain.as_ptr() as u64);
        let export = PdhCertExport::new(&mut pdh, &mut chain).unwrap();
        assert_eq!(export.lens(), (2084, 6252));
        assert_eq!(
            ({ export.pdh_cert_address }, { export.cert_chain_address }),
            (pdh_addr, chain_addr)
        );
        assert_eq!(PdhCertExport::query().lens(), (0, 0));
    }

    #[test]
    fn blob_lengths_are_checked_before_the_kernel_sees_them() {
        assert_eq!(blob_len("x", 2084).unwrap(), 2084);
        assert_eq!(blob_len("x", SEV_FW_BLOB_MAX_SIZE).unwrap(), 0x4000);
        let too_big = blob_len("guest owner DH certificate", SEV_FW_BLOB_MAX_SIZE + 1).unwrap_err();
        assert!(
            too_big.to_string().contains("guest owner DH certificate"),
            "{too_big}"
        );
        assert!(too_big.to_string().contains("16384"), "{too_big}");
        assert!(matches!(
            blob_len("x", 0),
            Err(SevError::Malformed { what: "x", .. })
        ));
        let dh = [0u8; 0x4001];
        assert!(LaunchStart::new(0, Some((&dh, &[1u8; 4]))).is_err());
    }
}
