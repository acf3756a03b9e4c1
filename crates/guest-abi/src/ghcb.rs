//! The GHCB: the page an SEV-ES guest shares with its hypervisor to have its exits served.
//!
//! Source: AMD "SEV-ES Guest-Hypervisor Communication Block Standardization" (publication
//! 56421, revision 2.0x). Every offset below was checked against Linux
//! `arch/x86/include/asm/svm.h` (`struct ghcb_save_area`, `struct ghcb`, whose reserved
//! fields are named by offset) and against the qword indices of edk2
//! `MdePkg/Include/Register/Amd/Ghcb.h` (`GHCB_REGISTER`); the const asserts at the end of
//! this file pin both.
//!
//! Under SEV-ES the hypervisor cannot read or set the guest's registers. For each exit the
//! guest copies what it chooses to share into the GHCB's save area, marks every field it
//! wrote in the valid bitmap, puts the exit code and exit information in `sw_exit_code`,
//! `sw_exit_info_1/2`, and executes VMGEXIT. The hypervisor serves the request from the
//! GHCB alone, writes back only the fields the specification says it returns (marking them
//! valid), and reports errors in `sw_exit_info_1/2`. On the development machines VMGEXIT
//! cannot exit (docs/architecture.md §4, Machine facts); a write to the guest-services page's
//! [`crate::services::VMGEXIT`] register stands in for it.
//!
//! Both sides work on a private copy, [`Ghcb`]: copy the shared page once, validate the
//! copy, act only on the copy, copy the result out. Nothing here holds a reference into
//! shared memory.
//!
//! Submodules: [`ioio`] (the IOIO exit information), [`psc`] (page-state change
//! descriptors), [`msr`] (the GHCB MSR protocol), [`service`] (sevmirror's own exit code
//! for the guest-services calls).

pub mod ioio;
pub mod msr;
pub mod psc;
pub mod service;

use core::ops::Range;

/// Size of the GHCB page.
pub const PAGE_LEN: usize = 4096;

/// GHCB protocol versions the VMM speaks (56421 §2.2: version 1 is SEV-ES, version 2 adds
/// GPA registration, AP reset hold, the hypervisor feature request and SNP).
pub const PROTOCOL_MIN: u16 = 1;
/// Highest protocol version the VMM speaks.
pub const PROTOCOL_MAX: u16 = 2;
/// The version sevmirror's firmware negotiates and writes into `protocol_version`.
pub const PROTOCOL_VERSION: u16 = 2;
/// `ghcb_usage` of the standard GHCB format (the only one defined by the specification).
pub const USAGE_STANDARD: u32 = 0;

/// Byte offsets in the GHCB page (56421 Table 3, "GHCB layout").
pub mod offset {
    /// Current privilege level (1 byte).
    pub const CPL: usize = 0x0cb;
    /// XSS (MSR 0xDA0).
    pub const XSS: usize = 0x140;
    /// DR7.
    pub const DR7: usize = 0x160;
    /// RIP.
    pub const RIP: usize = 0x178;
    /// RSP.
    pub const RSP: usize = 0x1d8;
    /// RAX.
    pub const RAX: usize = 0x1f8;
    /// RCX.
    pub const RCX: usize = 0x308;
    /// RDX.
    pub const RDX: usize = 0x310;
    /// RBX.
    pub const RBX: usize = 0x318;
    /// RBP.
    pub const RBP: usize = 0x328;
    /// RSI.
    pub const RSI: usize = 0x330;
    /// RDI.
    pub const RDI: usize = 0x338;
    /// R8; R9..R15 follow at 8-byte steps.
    pub const R8: usize = 0x340;
    /// R15.
    pub const R15: usize = 0x378;
    /// Exit code of the request.
    pub const SW_EXIT_CODE: usize = 0x390;
    /// First exit information word (request) / result code (response).
    pub const SW_EXIT_INFO_1: usize = 0x398;
    /// Second exit information word (request) / result detail (response).
    pub const SW_EXIT_INFO_2: usize = 0x3a0;
    /// GPA of the scratch area (data of MMIO, string I/O, page-state changes).
    pub const SW_SCRATCH: usize = 0x3a8;
    /// XCR0 (needed with CPUID leaf 0xD).
    pub const XCR0: usize = 0x3e8;
    /// Valid bitmap: bit n covers the qword at byte offset 8n of the save area.
    pub const VALID_BITMAP: usize = 0x3f0;
    /// Size of the valid bitmap.
    pub const VALID_BITMAP_LEN: usize = 16;
    /// GPA of the x87 state (SNP).
    pub const X87_STATE_GPA: usize = 0x400;
    /// End of the defined save area (Linux `EXPECTED_GHCB_SAVE_AREA_SIZE` = 1032).
    pub const SAVE_AREA_END: usize = 0x408;
    /// Shared buffer (scratch area inside the GHCB).
    pub const SHARED_BUFFER: usize = 0x800;
    /// Size of the shared buffer.
    pub const SHARED_BUFFER_LEN: usize = 2032;
    /// Negotiated protocol version (u16).
    pub const PROTOCOL_VERSION: usize = 0xffa;
    /// GHCB usage (u32): 0 = standard format.
    pub const GHCB_USAGE: usize = 0xffc;
}

/// Largest transfer that fits in the shared buffer.
pub const SHARED_BUFFER_LEN: usize = offset::SHARED_BUFFER_LEN;

/// A save-area field that has a bit in the valid bitmap (the ones this project uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Field {
    /// CPL (a single byte at 0xCB; its qword's bit, 25, covers it).
    Cpl,
    /// RAX.
    Rax,
    /// RBX.
    Rbx,
    /// RCX.
    Rcx,
    /// RDX.
    Rdx,
    /// RSI.
    Rsi,
    /// Exit code.
    SwExitCode,
    /// Exit information 1.
    SwExitInfo1,
    /// Exit information 2.
    SwExitInfo2,
    /// Scratch area GPA.
    SwScratch,
    /// XCR0.
    Xcr0,
}

impl Field {
    /// Every field, for tests and dumps.
    pub const ALL: [Field; 11] = [
        Field::Cpl,
        Field::Rax,
        Field::Rbx,
        Field::Rcx,
        Field::Rdx,
        Field::Rsi,
        Field::SwExitCode,
        Field::SwExitInfo1,
        Field::SwExitInfo2,
        Field::SwScratch,
        Field::Xcr0,
    ];

    /// Byte offset of the field in the page.
    pub const fn offset(self) -> usize {
        match self {
            Field::Cpl => offset::CPL,
            Field::Rax => offset::RAX,
            Field::Rbx => offset::RBX,
            Field::Rcx => offset::RCX,
            Field::Rdx => offset::RDX,
            Field::Rsi => offset::RSI,
            Field::SwExitCode => offset::SW_EXIT_CODE,
            Field::SwExitInfo1 => offset::SW_EXIT_INFO_1,
            Field::SwExitInfo2 => offset::SW_EXIT_INFO_2,
            Field::SwScratch => offset::SW_SCRATCH,
            Field::Xcr0 => offset::XCR0,
        }
    }

    /// Its bit in the valid bitmap: the index of the qword that holds it.
    pub const fn valid_bit(self) -> u32 {
        (self.offset() / 8) as u32
    }

    /// Width in bytes (CPL is one byte, the others eight).
    pub const fn width(self) -> usize {
        match self {
            Field::Cpl => 1,
            _ => 8,
        }
    }
}

/// The valid bitmap, as a 128-bit little-endian number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ValidBitmap(pub u128);

impl ValidBitmap {
    /// The bitmap with exactly these fields marked.
    pub const fn of(fields: &[Field]) -> Self {
        let mut bits = 0u128;
        let mut i = 0;
        while i < fields.len() {
            bits |= 1 << fields[i].valid_bit();
            i += 1;
        }
        ValidBitmap(bits)
    }

    /// Whether `field` is marked.
    pub const fn contains(self, field: Field) -> bool {
        self.0 & (1 << field.valid_bit()) != 0
    }

    /// The first field of `required` that is not marked, if any.
    pub fn first_missing(self, required: ValidBitmap) -> Option<Field> {
        Field::ALL
            .into_iter()
            .find(|f| required.contains(*f) && !self.contains(*f))
    }
}

/// An exit code (`sw_exit_code`): the SVM exit codes of the AMD APM vol. 2 appendix C and
/// the VMGEXIT-only codes of 56421 §4.1 (Table 6). Codes come from the guest: decode with
/// the consts, keep unknown ones as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitCode(pub u64);

impl ExitCode {
    /// CPUID: rax = leaf, rcx = subleaf (and xcr0 for leaf 0xD); returns rax..rdx.
    pub const CPUID: ExitCode = ExitCode(0x72);
    /// IN/OUT/INS/OUTS: exit_info_1 = [`ioio::IoioInfo`]; rax = value (OUT); returns rax (IN).
    pub const IOIO: ExitCode = ExitCode(0x7b);
    /// RDMSR (exit_info_1 = 0) / WRMSR (exit_info_1 = 1): rcx = MSR, rax:rdx = value.
    pub const MSR: ExitCode = ExitCode(0x7c);
    /// VMMCALL: rax = hypercall number, cpl, rbx/rcx/rdx/rsi = arguments (KVM's ABI);
    /// returns rax.
    pub const VMMCALL: ExitCode = ExitCode(0x81);
    /// Nested page fault: the #VC error code of an MMIO access (never a GHCB exit code).
    pub const NPF: ExitCode = ExitCode(0x400);
    /// MMIO read: exit_info_1 = GPA, exit_info_2 = length, data returned at sw_scratch.
    pub const MMIO_READ: ExitCode = ExitCode(0x8000_0001);
    /// MMIO write: exit_info_1 = GPA, exit_info_2 = length, data at sw_scratch.
    pub const MMIO_WRITE: ExitCode = ExitCode(0x8000_0002);
    /// NMI complete.
    pub const NMI_COMPLETE: ExitCode = ExitCode(0x8000_0003);
    /// AP reset hold (Linux `SVM_VMGEXIT_AP_HLT_LOOP`): park an AP until INIT-SIPI. Not
    /// served yet; defined for the SEV-ES AP start-up to come.
    pub const AP_RESET_HOLD: ExitCode = ExitCode(0x8000_0004);
    /// AP jump table (SEV-ES AP start-up).
    pub const AP_JUMP_TABLE: ExitCode = ExitCode(0x8000_0005);
    /// Page-state change: the shared buffer holds a [`psc::PscDesc`].
    pub const PSC: ExitCode = ExitCode(0x8000_0010);
    /// Hypervisor feature request.
    pub const HV_FEATURES: ExitCode = ExitCode(0x8000_fffd);
    /// Termination request.
    pub const TERMINATE: ExitCode = ExitCode(0x8000_fffe);
    /// The guest reports an event it cannot handle (exit_info_1 = the #VC error code).
    pub const UNSUPPORTED: ExitCode = ExitCode(0x8000_ffff);
    /// sevmirror's own exit: a guest-services call ([`service`]). Not in the
    /// specification: it sits in the VMGEXIT-defined 0x8000_xxxx window, far from the codes
    /// 56421 assigns (upwards from 0x8000_0001, downwards from 0x8000_FFFF). A hypervisor
    /// that does not know it answers "malformed input, invalid event".
    pub const SEVMIRROR_SERVICE: ExitCode = ExitCode(0x8000_f000);

    /// A short name for logs, or `None` for a code this crate does not define.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            ExitCode::CPUID => "cpuid",
            ExitCode::IOIO => "ioio",
            ExitCode::MSR => "msr",
            ExitCode::VMMCALL => "vmmcall",
            ExitCode::NPF => "npf",
            ExitCode::MMIO_READ => "mmio-read",
            ExitCode::MMIO_WRITE => "mmio-write",
            ExitCode::NMI_COMPLETE => "nmi-complete",
            ExitCode::AP_RESET_HOLD => "ap-reset-hold",
            ExitCode::AP_JUMP_TABLE => "ap-jump-table",
            ExitCode::PSC => "page-state-change",
            ExitCode::HV_FEATURES => "hv-features",
            ExitCode::TERMINATE => "terminate",
            ExitCode::UNSUPPORTED => "unsupported-event",
            ExitCode::SEVMIRROR_SERVICE => "sevmirror-service",
            _ => return None,
        })
    }
}

/// Result codes the hypervisor puts in `sw_exit_info_1[31:0]` (56421 §4.1.6).
pub mod result {
    /// Done; nothing for the guest to do.
    pub const NO_ACTION: u64 = 0;
    /// The guest must raise the exception described in `sw_exit_info_2` (an
    /// [`super::EventInjection`]), e.g. #GP for an MSR the hypervisor refuses.
    pub const ISSUE_EXCEPTION: u64 = 1;
    /// The request was malformed; `sw_exit_info_2[31:0]` holds a [`super::reason`].
    pub const MALFORMED_INPUT: u64 = 2;
}

/// Reasons for [`result::MALFORMED_INPUT`] (56421 §4.1.6; Linux `GHCB_ERR_*`).
pub mod reason {
    /// The GHCB is not at the registered GPA.
    pub const NOT_REGISTERED: u64 = 1;
    /// `ghcb_usage` is not one the hypervisor serves.
    pub const INVALID_USAGE: u64 = 2;
    /// The scratch area is invalid (outside the shared buffer, or too long).
    pub const INVALID_SCRATCH_AREA: u64 = 3;
    /// A field the request needs is not marked valid.
    pub const MISSING_INPUT: u64 = 4;
    /// A field holds a value outside its defined range.
    pub const INVALID_INPUT: u64 = 5;
    /// The exit code is unknown or not served.
    pub const INVALID_EVENT: u64 = 6;
}

/// An event in the VMCB EVENTINJ format (APM vol. 2 §15.20), as the hypervisor returns it
/// in `sw_exit_info_2` with [`result::ISSUE_EXCEPTION`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EventInjection(pub u64);

impl EventInjection {
    const VALID: u64 = 1 << 31;
    const TYPE_EXCEPTION: u64 = 3 << 8;
    const TYPE_MASK: u64 = 7 << 8;

    /// #UD.
    pub const UD: EventInjection = EventInjection::exception(6);
    /// #GP(0).
    pub const GP: EventInjection = EventInjection::exception(13);

    /// A valid exception event without error code.
    pub const fn exception(vector: u8) -> Self {
        EventInjection(vector as u64 | Self::TYPE_EXCEPTION | Self::VALID)
    }

    /// The vector.
    pub const fn vector(self) -> u8 {
        self.0 as u8
    }

    /// Whether this is a valid exception (not an interrupt or NMI).
    pub const fn is_exception(self) -> bool {
        self.0 & Self::VALID != 0 && self.0 & Self::TYPE_MASK == Self::TYPE_EXCEPTION
    }
}

/// Why a GHCB request or response was refused. `Copy` and string-free so the firmware can
/// use it; [`GhcbError::reason`] maps it to the specification's reason codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GhcbError {
    /// `ghcb_usage` is not [`USAGE_STANDARD`].
    Usage(u32),
    /// A field the request (or response) needs is not marked valid.
    MissingField(Field),
    /// The exit code is unknown or not served.
    UnknownExitCode(u64),
    /// An exit-information word outside its defined values.
    InvalidExitInfo(u64),
    /// The scratch area is not wholly inside the GHCB's shared buffer.
    Scratch {
        /// GPA the guest gave.
        gpa: u64,
        /// Length of the transfer.
        len: u64,
    },
    /// A transfer length outside what the exit allows.
    Length(u64),
    /// IOIO exit information with reserved bits set or no single operand size.
    Ioio(u64),
    /// A page-state change header with entry indices out of range.
    PscHeader {
        /// Index of the first entry to process.
        cur: u16,
        /// Index of the last entry.
        end: u16,
    },
    /// A page-state change entry with reserved bits, an unknown operation or page size.
    PscEntry(u16),
    /// A GHCB MSR value with an undefined or unexpected code in bits 11:0.
    MsrProtocol(u64),
    /// A guest-services call number that does not exist.
    UnknownService(u64),
    /// Response: the hypervisor found the request malformed, with this reason.
    Malformed(u64),
    /// Response: the hypervisor asks the guest to raise this exception.
    Exception(EventInjection),
    /// Response: `sw_exit_info_1` holds an undefined result code.
    BadResult(u64),
    /// Response: a page-state change failed with this `sw_exit_info_2` ([`psc`] codes),
    /// or made no progress.
    PscFailed(u64),
}

impl GhcbError {
    /// The reason code a hypervisor reports for this error with
    /// [`result::MALFORMED_INPUT`].
    pub fn reason(self) -> u64 {
        match self {
            GhcbError::Usage(_) => reason::INVALID_USAGE,
            GhcbError::MissingField(_) => reason::MISSING_INPUT,
            GhcbError::UnknownExitCode(_) | GhcbError::UnknownService(_) => reason::INVALID_EVENT,
            GhcbError::Scratch { .. } => reason::INVALID_SCRATCH_AREA,
            GhcbError::InvalidExitInfo(_)
            | GhcbError::Length(_)
            | GhcbError::Ioio(_)
            | GhcbError::PscHeader { .. }
            | GhcbError::PscEntry(_)
            | GhcbError::MsrProtocol(_)
            | GhcbError::Malformed(_)
            | GhcbError::Exception(_)
            | GhcbError::BadResult(_)
            | GhcbError::PscFailed(_) => reason::INVALID_INPUT,
        }
    }
}

impl core::fmt::Display for GhcbError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            GhcbError::Usage(u) => write!(f, "GHCB usage {u:#x} is not the standard format"),
            GhcbError::MissingField(field) => {
                write!(f, "GHCB field {field:?} is needed but not marked valid")
            }
            GhcbError::UnknownExitCode(c) => write!(f, "unknown or unserved exit code {c:#x}"),
            GhcbError::InvalidExitInfo(v) => write!(f, "invalid exit information {v:#x}"),
            GhcbError::Scratch { gpa, len } => write!(
                f,
                "scratch area {gpa:#x}+{len:#x} is not inside the GHCB shared buffer"
            ),
            GhcbError::Length(l) => write!(f, "transfer length {l} out of range"),
            GhcbError::Ioio(v) => write!(f, "malformed IOIO exit information {v:#x}"),
            GhcbError::PscHeader { cur, end } => {
                write!(f, "page-state change entries {cur}..={end} out of range")
            }
            GhcbError::PscEntry(i) => write!(f, "malformed page-state change entry {i}"),
            GhcbError::MsrProtocol(v) => write!(f, "unexpected GHCB MSR value {v:#x}"),
            GhcbError::UnknownService(n) => write!(f, "unknown guest-services call {n}"),
            GhcbError::Malformed(r) => {
                write!(f, "the hypervisor found the request malformed (reason {r})")
            }
            GhcbError::Exception(e) => write!(
                f,
                "the hypervisor asks for exception {} (event {:#x})",
                e.vector(),
                e.0
            ),
            GhcbError::BadResult(r) => write!(f, "undefined GHCB result code {r:#x}"),
            GhcbError::PscFailed(r) => write!(f, "page-state change failed ({r:#x})"),
        }
    }
}

/// A private copy of a GHCB page with typed accessors.
#[derive(Clone, PartialEq, Eq)]
pub struct Ghcb {
    page: [u8; PAGE_LEN],
}

impl core::fmt::Debug for Ghcb {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ghcb")
            .field(
                "sw_exit_code",
                &format_args!("{:#x}", self.get(Field::SwExitCode)),
            )
            .field(
                "sw_exit_info_1",
                &format_args!("{:#x}", self.get(Field::SwExitInfo1)),
            )
            .field(
                "sw_exit_info_2",
                &format_args!("{:#x}", self.get(Field::SwExitInfo2)),
            )
            .field("valid", &format_args!("{:#x}", self.valid_bitmap().0))
            .field("usage", &self.usage())
            .field("version", &self.protocol_version())
            .finish_non_exhaustive()
    }
}

impl Default for Ghcb {
    fn default() -> Self {
        Self::zeroed()
    }
}

fn le64(page: &[u8; PAGE_LEN], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&page[at..at + 8]);
    u64::from_le_bytes(b)
}

impl Ghcb {
    /// An all-zero page: no field valid, standard usage, protocol version 0.
    pub const fn zeroed() -> Self {
        Ghcb {
            page: [0; PAGE_LEN],
        }
    }

    /// A copy of `page` (the only way bytes from shared memory get in).
    pub fn from_page(page: &[u8; PAGE_LEN]) -> Self {
        Ghcb { page: *page }
    }

    /// The page bytes, to copy out to shared memory.
    pub fn page(&self) -> &[u8; PAGE_LEN] {
        &self.page
    }

    /// A fresh request page as OVMF's `CcExitVmgInit` prepares it: the save area (and its
    /// valid bitmap) zeroed, the shared buffer kept, standard usage and `version` set.
    pub fn begin(&mut self, version: u16) {
        self.page[..offset::SHARED_BUFFER].fill(0);
        self.set_usage(USAGE_STANDARD);
        self.set_protocol_version(version);
    }

    /// The raw value of `field` (whether or not it is marked valid).
    pub fn get(&self, field: Field) -> u64 {
        match field.width() {
            1 => u64::from(self.page[field.offset()]),
            _ => le64(&self.page, field.offset()),
        }
    }

    /// The value of `field` if it is marked valid.
    pub fn get_valid(&self, field: Field) -> Option<u64> {
        self.is_valid(field).then(|| self.get(field))
    }

    /// Whether `field` is marked valid.
    pub fn is_valid(&self, field: Field) -> bool {
        self.valid_bitmap().contains(field)
    }

    /// Writes `field` and marks it valid.
    pub fn set(&mut self, field: Field, value: u64) {
        let at = field.offset();
        match field.width() {
            1 => self.page[at] = value as u8,
            _ => self.page[at..at + 8].copy_from_slice(&value.to_le_bytes()),
        }
        let bit = field.valid_bit() as usize;
        self.page[offset::VALID_BITMAP + bit / 8] |= 1 << (bit % 8);
    }

    /// The valid bitmap.
    pub fn valid_bitmap(&self) -> ValidBitmap {
        let mut b = [0u8; offset::VALID_BITMAP_LEN];
        b.copy_from_slice(
            &self.page[offset::VALID_BITMAP..offset::VALID_BITMAP + offset::VALID_BITMAP_LEN],
        );
        ValidBitmap(u128::from_le_bytes(b))
    }

    /// Clears the valid bitmap (what the hypervisor does before writing its answer, so
    /// that only returned fields read as valid).
    pub fn clear_valid_bitmap(&mut self) {
        self.page[offset::VALID_BITMAP..offset::VALID_BITMAP + offset::VALID_BITMAP_LEN].fill(0);
    }

    /// The shared buffer.
    pub fn shared_buffer(&self) -> &[u8; SHARED_BUFFER_LEN] {
        self.page[offset::SHARED_BUFFER..offset::SHARED_BUFFER + SHARED_BUFFER_LEN]
            .try_into()
            .expect("the shared buffer range has the shared buffer's length")
    }

    /// The shared buffer, writable.
    pub fn shared_buffer_mut(&mut self) -> &mut [u8; SHARED_BUFFER_LEN] {
        (&mut self.page[offset::SHARED_BUFFER..offset::SHARED_BUFFER + SHARED_BUFFER_LEN])
            .try_into()
            .expect("the shared buffer range has the shared buffer's length")
    }

    /// `protocol_version`.
    pub fn protocol_version(&self) -> u16 {
        u16::from_le_bytes([
            self.page[offset::PROTOCOL_VERSION],
            self.page[offset::PROTOCOL_VERSION + 1],
        ])
    }

    /// Sets `protocol_version`.
    pub fn set_protocol_version(&mut self, v: u16) {
        self.page[offset::PROTOCOL_VERSION..offset::PROTOCOL_VERSION + 2]
            .copy_from_slice(&v.to_le_bytes());
    }

    /// `ghcb_usage`.
    pub fn usage(&self) -> u32 {
        let at = offset::GHCB_USAGE;
        u32::from_le_bytes([
            self.page[at],
            self.page[at + 1],
            self.page[at + 2],
            self.page[at + 3],
        ])
    }

    /// Sets `ghcb_usage`.
    pub fn set_usage(&mut self, usage: u32) {
        self.page[offset::GHCB_USAGE..offset::GHCB_USAGE + 4].copy_from_slice(&usage.to_le_bytes());
    }

    /// The exit code of a request, if marked valid.
    pub fn exit_code(&self) -> Option<ExitCode> {
        self.get_valid(Field::SwExitCode).map(ExitCode)
    }

    /// Checks a request as a hypervisor must before acting on it (the rules of Linux
    /// `sev_es_validate_vmgexit`, 56421 §4.1): standard usage; exit code and both exit
    /// information words valid; the exit code one this crate defines and a hypervisor
    /// serves; and every field that exit needs marked valid. Returns the exit code.
    pub fn check_request(&self) -> Result<ExitCode, GhcbError> {
        if self.usage() != USAGE_STANDARD {
            return Err(GhcbError::Usage(self.usage()));
        }
        for f in [Field::SwExitCode, Field::SwExitInfo1, Field::SwExitInfo2] {
            if !self.is_valid(f) {
                return Err(GhcbError::MissingField(f));
            }
        }
        let code = ExitCode(self.get(Field::SwExitCode));
        let info1 = self.get(Field::SwExitInfo1);
        let needed = match code {
            ExitCode::CPUID if self.get(Field::Rax) == 0xd => {
                ValidBitmap::of(&[Field::Rax, Field::Rcx, Field::Xcr0])
            }
            ExitCode::CPUID => ValidBitmap::of(&[Field::Rax, Field::Rcx]),
            ExitCode::IOIO => {
                let io = ioio::IoioInfo::decode(info1)?;
                match (io.string, io.dir) {
                    (ioio::Mode::String, _) => ValidBitmap::of(&[Field::SwScratch]),
                    (ioio::Mode::Single, ioio::Direction::Out) => ValidBitmap::of(&[Field::Rax]),
                    (ioio::Mode::Single, ioio::Direction::In) => ValidBitmap::default(),
                }
            }
            ExitCode::MSR => match info1 {
                0 => ValidBitmap::of(&[Field::Rcx]),
                1 => ValidBitmap::of(&[Field::Rcx, Field::Rax, Field::Rdx]),
                other => return Err(GhcbError::InvalidExitInfo(other)),
            },
            ExitCode::VMMCALL => ValidBitmap::of(&[Field::Rax, Field::Cpl]),
            ExitCode::MMIO_READ | ExitCode::MMIO_WRITE | ExitCode::PSC => {
                ValidBitmap::of(&[Field::SwScratch])
            }
            ExitCode::SEVMIRROR_SERVICE => service::Call::from_number(info1)?.request_fields(),
            // AP reset hold needs only the exit fields (56421 §4.1.9).
            ExitCode::AP_RESET_HOLD => ValidBitmap::default(),
            other => return Err(GhcbError::UnknownExitCode(other.0)),
        };
        match self.valid_bitmap().first_missing(needed) {
            Some(f) => Err(GhcbError::MissingField(f)),
            None => Ok(code),
        }
    }

    /// Checks the hypervisor's answer to a request of `code` (with `info1` as sent) as a
    /// guest must before using it: `sw_exit_info_1` says success, and every field the
    /// exit returns is marked valid (56421 §4.1.6; edk2 `CcExitVcHandler.c` checks the
    /// same).
    pub fn check_response(&self, code: ExitCode, info1: u64) -> Result<(), GhcbError> {
        let result = self.get(Field::SwExitInfo1);
        match result & 0xffff_ffff {
            result::NO_ACTION => {}
            result::ISSUE_EXCEPTION => {
                return Err(GhcbError::Exception(EventInjection(
                    self.get(Field::SwExitInfo2),
                )))
            }
            result::MALFORMED_INPUT => {
                return Err(GhcbError::Malformed(
                    self.get(Field::SwExitInfo2) & 0xffff_ffff,
                ))
            }
            _ => return Err(GhcbError::BadResult(result)),
        }
        let returned = match code {
            ExitCode::CPUID => ValidBitmap::of(&[Field::Rax, Field::Rbx, Field::Rcx, Field::Rdx]),
            ExitCode::MSR if info1 == 0 => ValidBitmap::of(&[Field::Rax, Field::Rdx]),
            ExitCode::IOIO => match ioio::IoioInfo::decode(info1) {
                Ok(io) if io.dir == ioio::Direction::In && io.string == ioio::Mode::Single => {
                    ValidBitmap::of(&[Field::Rax])
                }
                _ => ValidBitmap::default(),
            },
            ExitCode::VMMCALL | ExitCode::SEVMIRROR_SERVICE => ValidBitmap::of(&[Field::Rax]),
            _ => ValidBitmap::default(),
        };
        match self.valid_bitmap().first_missing(returned) {
            Some(f) => Err(GhcbError::MissingField(f)),
            None => Ok(()),
        }
    }

    /// Where the scratch area of a `len`-byte transfer lies in the shared buffer, for a
    /// GHCB at `ghcb_gpa`: `sw_scratch` must be valid and the whole transfer inside the
    /// shared buffer. (The specification allows a scratch area outside the GHCB; this
    /// project's guests never use one and its VMM refuses it, which keeps every transfer
    /// inside the one page the VMM copies.)
    pub fn scratch(&self, ghcb_gpa: u64, len: u64) -> Result<Range<usize>, GhcbError> {
        let gpa = self
            .get_valid(Field::SwScratch)
            .ok_or(GhcbError::MissingField(Field::SwScratch))?;
        let bad = GhcbError::Scratch { gpa, len };
        let start = gpa
            .checked_sub(ghcb_gpa)
            .and_then(|o| o.checked_sub(offset::SHARED_BUFFER as u64))
            .ok_or(bad)?;
        let end = start.checked_add(len).ok_or(bad)?;
        if end > SHARED_BUFFER_LEN as u64 {
            return Err(bad);
        }
        Ok(start as usize..end as usize)
    }

    /// GPA of the shared buffer of a GHCB at `ghcb_gpa` (what a guest puts in
    /// `sw_scratch`).
    pub const fn shared_buffer_gpa(ghcb_gpa: u64) -> u64 {
        ghcb_gpa + offset::SHARED_BUFFER as u64
    }
}

// Linux `struct ghcb_save_area`: reserved fields named by offset, then its size.
const _: () = assert!(offset::CPL == 0xcb && offset::XSS == 0xcc + 116);
const _: () = assert!(offset::DR7 == 0x148 + 24 && offset::RIP == 0x168 + 16);
const _: () = assert!(offset::RSP == 0x180 + 88 && offset::RAX == 0x1e0 + 24);
const _: () = assert!(offset::RCX == 0x200 + 264 && offset::RBP == 0x320 + 8);
const _: () = assert!(offset::R15 == offset::R8 + 7 * 8);
const _: () = assert!(offset::SW_EXIT_CODE == 0x380 + 16 && offset::XCR0 == 0x3b0 + 56);
const _: () = assert!(offset::SAVE_AREA_END == 1032);
// Linux `struct ghcb`: shared buffer at 2048, 2032 bytes, 10 reserved, version, usage.
const _: () = assert!(offset::SHARED_BUFFER + offset::SHARED_BUFFER_LEN == 0xff0);
const _: () = assert!(offset::PROTOCOL_VERSION == 0xff0 + 10 && offset::GHCB_USAGE + 4 == PAGE_LEN);
// edk2 `GHCB_REGISTER`: qword indices, which are also the valid-bitmap bits.
const _: () = assert!(Field::Cpl.valid_bit() == 25 && Field::Rax.valid_bit() == 63);
const _: () = assert!(offset::RSP / 8 == 59 && offset::RIP / 8 == 47);
const _: () = assert!(Field::Rcx.valid_bit() == 97 && Field::Rdx.valid_bit() == 98);
const _: () = assert!(Field::Rbx.valid_bit() == 99 && offset::RBP / 8 == 101);
const _: () = assert!(Field::Rsi.valid_bit() == 102 && offset::R15 / 8 == 111);
const _: () = assert!(Field::Xcr0.valid_bit() == 125);
const _: () = assert!(offset::VALID_BITMAP == 126 * 8);

#[cfg(test)]
mod tests {
    use super::*;

    fn request(code: ExitCode, info1: u64, info2: u64) -> Ghcb {
        let mut g = Ghcb::zeroed();
        g.begin(PROTOCOL_VERSION);
        g.set(Field::SwExitCode, code.0);
        g.set(Field::SwExitInfo1, info1);
        g.set(Field::SwExitInfo2, info2);
        g
    }

    #[test]
    fn fields_land_at_the_spec_offsets_and_mark_their_bit() {
        let expected = [
            (Field::Cpl, 0xcb, 25),
            (Field::Rax, 0x1f8, 63),
            (Field::Rcx, 0x308, 97),
            (Field::Rdx, 0x310, 98),
            (Field::Rbx, 0x318, 99),
            (Field::Rsi, 0x330, 102),
            (Field::SwExitCode, 0x390, 114),
            (Field::SwExitInfo1, 0x398, 115),
            (Field::SwExitInfo2, 0x3a0, 116),
            (Field::SwScratch, 0x3a8, 117),
            (Field::Xcr0, 0x3e8, 125),
        ];
        for (field, off, bit) in expected {
            let mut g = Ghcb::zeroed();
            g.set(field, 0x0102_0304_0506_0708);
            assert_eq!(field.offset(), off, "{field:?}");
            assert_eq!(field.valid_bit(), bit, "{field:?}");
            assert_eq!(g.page()[off], 0x08, "{field:?} low byte");
            if field.width() == 8 {
                assert_eq!(g.page()[off + 7], 0x01, "{field:?} high byte");
            }
            assert_eq!(g.valid_bitmap(), ValidBitmap(1 << bit), "{field:?}");
            let byte = offset::VALID_BITMAP + bit as usize / 8;
            assert_eq!(g.page()[byte], 1 << (bit % 8), "{field:?} bitmap byte");
        }
        let mut g = Ghcb::zeroed();
        g.set_protocol_version(2);
        g.set_usage(0x1122_3344);
        assert_eq!(&g.page()[0xffa..], &[2, 0, 0x44, 0x33, 0x22, 0x11]);
        g.shared_buffer_mut()[0] = 0xaa;
        g.shared_buffer_mut()[SHARED_BUFFER_LEN - 1] = 0xbb;
        assert_eq!((g.page()[0x800], g.page()[0xfef]), (0xaa, 0xbb));
    }

    #[test]
    fn values_round_trip_through_the_page_bytes() {
        let mut g = Ghcb::zeroed();
        for (i, f) in Field::ALL.into_iter().enumerate() {
            g.set(f, 0x1111_1111_1111_1111 * (i as u64 + 1));
        }
        let copy = Ghcb::from_page(g.page());
        for (i, f) in Field::ALL.into_iter().enumerate() {
            let v = 0x1111_1111_1111_1111 * (i as u64 + 1);
            let want = if f == Field::Cpl { v & 0xff } else { v };
            assert_eq!(copy.get_valid(f), Some(want), "{f:?}");
        }
        let mut cleared = copy.clone();
        cleared.clear_valid_bitmap();
        assert!(Field::ALL.iter().all(|&f| cleared.get_valid(f).is_none()));
        assert_eq!(cleared.get(Field::Rax), copy.get(Field::Rax));
    }

    #[test]
    fn begin_clears_the_save_area_but_keeps_the_shared_buffer() {
        let mut g = Ghcb::zeroed();
        g.set(Field::Rax, 5);
        g.set_usage(7);
        g.shared_buffer_mut()[3] = 9;
        g.begin(2);
        assert_eq!(g.valid_bitmap(), ValidBitmap(0));
        assert_eq!(g.get(Field::Rax), 0);
        assert_eq!((g.usage(), g.protocol_version()), (USAGE_STANDARD, 2));
        assert_eq!(g.shared_buffer()[3], 9);
    }

    #[test]
    fn requests_need_their_fields_marked_valid() {
        let mut g = request(ExitCode::CPUID, 0, 0);
        assert_eq!(g.check_request(), Err(GhcbError::MissingField(Field::Rax)));
        g.set(Field::Rax, 1);
        assert_eq!(g.check_request(), Err(GhcbError::MissingField(Field::Rcx)));
        g.set(Field::Rcx, 0);
        assert_eq!(g.check_request(), Ok(ExitCode::CPUID));
        g.set(Field::Rax, 0xd);
        assert_eq!(g.check_request(), Err(GhcbError::MissingField(Field::Xcr0)));
        g.set(Field::Xcr0, 1);
        assert_eq!(g.check_request(), Ok(ExitCode::CPUID));

        let mut w = request(ExitCode::MSR, 1, 0);
        w.set(Field::Rcx, 0x1b);
        w.set(Field::Rax, 0);
        assert_eq!(w.check_request(), Err(GhcbError::MissingField(Field::Rdx)));
        let mut r = request(ExitCode::MSR, 0, 0);
        r.set(Field::Rcx, 0x1b);
        assert_eq!(r.check_request(), Ok(ExitCode::MSR));
        let bad = request(ExitCode::MSR, 2, 0);
        assert_eq!(bad.check_request(), Err(GhcbError::InvalidExitInfo(2)));

        let mut v = request(ExitCode::VMMCALL, 0, 0);
        v.set(Field::Rax, 12);
        assert_eq!(v.check_request(), Err(GhcbError::MissingField(Field::Cpl)));
        v.set(Field::Cpl, 3);
        assert_eq!(v.check_request(), Ok(ExitCode::VMMCALL));

        for code in [ExitCode::MMIO_READ, ExitCode::MMIO_WRITE, ExitCode::PSC] {
            let mut m = request(code, 0xfe00_0000, 8);
            assert_eq!(
                m.check_request(),
                Err(GhcbError::MissingField(Field::SwScratch))
            );
            m.set(Field::SwScratch, 0x1800);
            assert_eq!(m.check_request(), Ok(code));
        }
    }

    #[test]
    fn io_requests_need_rax_only_for_single_out_and_scratch_for_strings() {
        use ioio::{Direction, IoioInfo, Mode, Size};
        let out = IoioInfo::new(0x3f8, Size::Byte, Direction::Out).encode();
        let mut g = request(ExitCode::IOIO, out, 0);
        assert_eq!(g.check_request(), Err(GhcbError::MissingField(Field::Rax)));
        g.set(Field::Rax, b'x'.into());
        assert_eq!(g.check_request(), Ok(ExitCode::IOIO));
        let inb = IoioInfo::new(0x3f8, Size::Byte, Direction::In).encode();
        assert_eq!(
            request(ExitCode::IOIO, inb, 0).check_request(),
            Ok(ExitCode::IOIO)
        );
        let mut ins = IoioInfo::new(0x3f8, Size::Word, Direction::In);
        ins.string = Mode::String;
        let g = request(ExitCode::IOIO, ins.encode(), 4);
        assert_eq!(
            g.check_request(),
            Err(GhcbError::MissingField(Field::SwScratch))
        );
        assert_eq!(
            request(ExitCode::IOIO, 0x30, 0).check_request(),
            Err(GhcbError::Ioio(0x30))
        );
    }

    #[test]
    fn bad_usage_unknown_codes_and_missing_exit_fields_are_refused() {
        let mut g = request(ExitCode(0x6e), 0, 0);
        assert_eq!(g.check_request(), Err(GhcbError::UnknownExitCode(0x6e)));
        g.set(Field::SwExitCode, ExitCode::AP_JUMP_TABLE.0);
        assert_eq!(
            g.check_request(),
            Err(GhcbError::UnknownExitCode(0x8000_0005)),
            "defined but not served"
        );
        g.set(Field::SwExitCode, ExitCode::AP_RESET_HOLD.0);
        assert_eq!(g.check_request(), Ok(ExitCode::AP_RESET_HOLD));
        g.set_usage(1);
        assert_eq!(g.check_request(), Err(GhcbError::Usage(1)));

        let mut g = Ghcb::zeroed();
        g.set(Field::SwExitCode, ExitCode::CPUID.0);
        g.set(Field::SwExitInfo1, 0);
        assert_eq!(
            g.check_request(),
            Err(GhcbError::MissingField(Field::SwExitInfo2))
        );
        let mut g = Ghcb::zeroed();
        g.set(Field::SwExitInfo1, 0);
        g.set(Field::SwExitInfo2, 0);
        // The exit code's bytes are there but its valid bit is not.
        g.page[offset::SW_EXIT_CODE] = 0x72;
        assert_eq!(
            g.check_request(),
            Err(GhcbError::MissingField(Field::SwExitCode))
        );
    }

    #[test]
    fn scratch_areas_must_lie_inside_the_shared_buffer() {
        let base = 0x81_0000;
        let buf = Ghcb::shared_buffer_gpa(base);
        let mut g = Ghcb::zeroed();
        assert_eq!(
            g.scratch(base, 8),
            Err(GhcbError::MissingField(Field::SwScratch))
        );
        g.set(Field::SwScratch, buf);
        assert_eq!(g.scratch(base, 8), Ok(0..8));
        assert_eq!(
            g.scratch(base, SHARED_BUFFER_LEN as u64),
            Ok(0..SHARED_BUFFER_LEN)
        );
        assert_eq!(
            g.scratch(base, SHARED_BUFFER_LEN as u64 + 1),
            Err(GhcbError::Scratch {
                gpa: buf,
                len: SHARED_BUFFER_LEN as u64 + 1
            })
        );
        assert!(g.scratch(base, u64::MAX).is_err(), "length overflow");
        g.set(Field::SwScratch, buf + 2024);
        assert_eq!(g.scratch(base, 8), Ok(2024..2032));
        assert!(
            g.scratch(base, 9).is_err(),
            "runs into the version/usage words"
        );
        for gpa in [buf - 1, base, base + 0x3f8, base + 0x1000, 0, u64::MAX] {
            g.set(Field::SwScratch, gpa);
            assert!(g.scratch(base, 1).is_err(), "{gpa:#x}");
        }
    }

    #[test]
    fn responses_report_success_exceptions_and_malformed_input() {
        let mut g = request(ExitCode::CPUID, 0, 0);
        g.clear_valid_bitmap();
        g.set(Field::SwExitInfo1, result::NO_ACTION);
        assert_eq!(
            g.check_response(ExitCode::CPUID, 0),
            Err(GhcbError::MissingField(Field::Rax))
        );
        for f in [Field::Rax, Field::Rbx, Field::Rcx, Field::Rdx] {
            g.set(f, 1);
        }
        assert_eq!(g.check_response(ExitCode::CPUID, 0), Ok(()));

        let mut e = Ghcb::zeroed();
        e.set(Field::SwExitInfo1, result::ISSUE_EXCEPTION);
        e.set(Field::SwExitInfo2, EventInjection::GP.0);
        assert_eq!(
            e.check_response(ExitCode::MSR, 0),
            Err(GhcbError::Exception(EventInjection::GP))
        );
        assert!(EventInjection::GP.is_exception());
        assert_eq!(EventInjection::GP.vector(), 13);
        assert_eq!(EventInjection::GP.0, 0x8000_030d);

        let mut m = Ghcb::zeroed();
        m.set(Field::SwExitInfo1, result::MALFORMED_INPUT);
        m.set(Field::SwExitInfo2, reason::INVALID_SCRATCH_AREA);
        assert_eq!(
            m.check_response(ExitCode::MMIO_READ, 0),
            Err(GhcbError::Malformed(3))
        );
        m.set(Field::SwExitInfo1, 7);
        assert_eq!(
            m.check_response(ExitCode::MMIO_READ, 0),
            Err(GhcbError::BadResult(7))
        );
        let mut w = Ghcb::zeroed();
        w.set(Field::SwExitInfo1, 0);
        assert_eq!(
            w.check_response(ExitCode::MSR, 1),
            Ok(()),
            "WRMSR returns nothing"
        );
        assert_eq!(
            w.check_response(ExitCode::MSR, 0),
            Err(GhcbError::MissingField(Field::Rax))
        );
    }

    #[test]
    fn errors_map_to_the_spec_reason_codes() {
        assert_eq!(GhcbError::Usage(1).reason(), 2);
        assert_eq!(GhcbError::Scratch { gpa: 0, len: 0 }.reason(), 3);
        assert_eq!(GhcbError::MissingField(Field::Rax).reason(), 4);
        assert_eq!(GhcbError::Length(0).reason(), 5);
        assert_eq!(GhcbError::PscHeader { cur: 0, end: 300 }.reason(), 5);
        assert_eq!(GhcbError::UnknownExitCode(0x6e).reason(), 6);
    }

    #[test]
    fn exit_code_names_cover_the_defined_codes_only() {
        assert_eq!(ExitCode::CPUID.name(), Some("cpuid"));
        assert_eq!(
            ExitCode::SEVMIRROR_SERVICE.name(),
            Some("sevmirror-service")
        );
        assert_eq!(ExitCode(0x8000_0006).name(), None);
    }
}
