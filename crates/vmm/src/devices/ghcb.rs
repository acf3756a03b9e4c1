//! The VMM's side of the GHCB: what an SEV-ES guest asks for at VMGEXIT, served from the
//! GHCB alone (guest-abi `ghcb`; AMD 56421).
//!
//! Under SEV-ES the VMM cannot read or set the guest's registers. A VMGEXIT (on the
//! development machines, a write to the services page's VMGEXIT register) means one of two
//! things, depending on the vCPU's GHCB MSR:
//! - the MSR holds a GHCB MSR protocol request ([`GhcbMsr::exchange`]): answer it in the
//!   MSR;
//! - the MSR holds the GPA of the guest's GHCB ([`vmgexit`]): copy that page (it must be
//!   shared), [`decode`] one request from the copy, [`serve`] it through a [`GhcbHost`],
//!   [`encode_response`] (or [`encode_error`]) into the copy and write the copy back.
//!
//! The rules are KVM's (`arch/x86/kvm/svm/sev.c`): the request checks of
//! `sev_es_validate_vmgexit`; the MSR protocol of `sev_handle_vmgexit_msr_protocol`,
//! including that an SEV-ES guest asking to register its GHCB GPA (an SNP request) is
//! terminated; errors reported as "malformed input" with a reason code
//! (`sw_exit_info_1` = 2, `sw_exit_info_2` = reason), refused MSRs as a #GP for the guest
//! to raise (`sw_exit_info_1` = 1, `sw_exit_info_2` = the event). Where this VMM differs,
//! it is narrower: scratch areas must lie in the GHCB's shared buffer, and string I/O is
//! refused (the firmware uses neither).

use super::services::FaultReport;
use crate::memory::{HostView, MemoryError, Visibility};
use guest_abi::{
    ghcb::{
        ioio::{Direction, IoioInfo, Mode, Size},
        msr::{MsrRequest, MsrResponse},
        psc::{self, PscDesc},
        result,
        service::Call,
        EventInjection, ExitCode, Field, Ghcb, GhcbError, PAGE_LEN, PROTOCOL_MAX, PROTOCOL_MIN,
    },
    layout::PAGE_SIZE,
    services::Event,
};
use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// Which SEV flavour's GHCB rules apply to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMode {
    /// SEV-ES: no GPA registration, no page-state change exit (both SNP-only in KVM).
    SevEs,
    /// SEV-SNP: the GHCB must be registered; page-state changes are served.
    SevSnp,
}

/// A guest-services call made through the GHCB (sevmirror's own exit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceRequest {
    /// Append bytes to the console.
    Console(Vec<u8>),
    /// Stop the VM with this status.
    Exit(u64),
    /// A boot milestone.
    Event(Event),
    /// The migration helper finished a request.
    Doorbell(u64),
    /// A fatal guest exception.
    Fault(FaultReport),
    /// Take the host's pending request to the workload.
    TakeRequest,
    /// Does the host ask this vCPU to save its state and hold (SEV-ES migration)?
    Checkpoint,
}

/// One request, decoded from a GHCB.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GhcbRequest {
    /// CPUID.
    Cpuid {
        /// EAX.
        leaf: u32,
        /// ECX.
        subleaf: u32,
        /// XCR0, given with leaf 0xD.
        xcr0: Option<u64>,
    },
    /// RDMSR.
    RdMsr {
        /// ECX.
        index: u32,
    },
    /// WRMSR.
    WrMsr {
        /// ECX.
        index: u32,
        /// EDX:EAX.
        value: u64,
    },
    /// IN or OUT.
    Io {
        /// Port.
        port: u16,
        /// Operand size.
        size: Size,
        /// Direction.
        dir: Direction,
        /// The value written (OUT; 0 for IN).
        value: u32,
    },
    /// MMIO read.
    MmioRead {
        /// Address.
        gpa: u64,
        /// Length (1..=2032).
        len: usize,
    },
    /// MMIO write.
    MmioWrite {
        /// Address.
        gpa: u64,
        /// The bytes (1..=2032).
        data: Vec<u8>,
    },
    /// Page-state change (SNP).
    PageStateChange(Box<PscDesc>),
    /// VMMCALL (KVM hypercall ABI).
    Vmmcall {
        /// Hypercall number (RAX).
        nr: u64,
        /// RBX, RCX, RDX, RSI (0 where not marked valid, as KVM reads them).
        args: [u64; 4],
        /// The caller's CPL.
        cpl: u8,
    },
    /// A guest-services call.
    Service(ServiceRequest),
    /// AP reset hold: hold the vCPU until the host releases it.
    ApResetHold,
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GhcbResponse {
    /// Done; nothing returned (WRMSR, OUT, MMIO write).
    Done,
    /// CPUID: EAX, EBX, ECX, EDX.
    Cpuid([u32; 4]),
    /// RDMSR: EDX:EAX.
    RdMsr(u64),
    /// IN: the value read.
    IoIn(u32),
    /// MMIO read: the bytes (as many as asked).
    MmioRead(Vec<u8>),
    /// Page-state change: the descriptor with its progress, and the status.
    PageStateChange(Box<PscDesc>, u64),
    /// RAX of a VMMCALL or a services call.
    Rax(u64),
    /// The guest must raise this exception (e.g. #GP for an MSR the VMM refuses).
    Exception(EventInjection),
    /// AP reset hold: `sw_exit_info_2` = 1, "released". The vCPU does not run again
    /// until the host releases it, so the answer can be written when the hold begins.
    HoldReleased,
}

/// Decodes one request from a private copy of the guest's GHCB at `ghcb_gpa`. Any error
/// is for the guest ([`encode_error`]); nothing here trusts a field that is not marked
/// valid, and every length is checked against the shared buffer.
pub fn decode(page: &Ghcb, ghcb_gpa: u64, mode: GuestMode) -> Result<GhcbRequest, GhcbError> {
    let code = page.check_request()?;
    let info1 = page.get(Field::SwExitInfo1);
    let info2 = page.get(Field::SwExitInfo2);
    let valid_or_0 = |f| page.get_valid(f).unwrap_or(0);
    Ok(match code {
        ExitCode::CPUID => GhcbRequest::Cpuid {
            leaf: page.get(Field::Rax) as u32,
            subleaf: page.get(Field::Rcx) as u32,
            xcr0: page.get_valid(Field::Xcr0),
        },
        ExitCode::MSR if info1 == 0 => GhcbRequest::RdMsr {
            index: page.get(Field::Rcx) as u32,
        },
        ExitCode::MSR => GhcbRequest::WrMsr {
            index: page.get(Field::Rcx) as u32,
            value: page.get(Field::Rdx) << 32 | (page.get(Field::Rax) & 0xffff_ffff),
        },
        ExitCode::IOIO => {
            let io = IoioInfo::decode(info1)?;
            if io.string == Mode::String {
                return Err(GhcbError::InvalidExitInfo(info1));
            }
            GhcbRequest::Io {
                port: io.port,
                size: io.size,
                dir: io.dir,
                value: match io.dir {
                    Direction::Out => (page.get(Field::Rax) & io.size.mask()) as u32,
                    Direction::In => 0,
                },
            }
        }
        ExitCode::MMIO_READ | ExitCode::MMIO_WRITE => {
            if info2 == 0 {
                return Err(GhcbError::Length(0));
            }
            let range = page.scratch(ghcb_gpa, info2)?;
            if code == ExitCode::MMIO_READ {
                GhcbRequest::MmioRead {
                    gpa: info1,
                    len: range.len(),
                }
            } else {
                GhcbRequest::MmioWrite {
                    gpa: info1,
                    data: page.shared_buffer()[range].to_vec(),
                }
            }
        }
        ExitCode::PSC => {
            if mode != GuestMode::SevSnp {
                return Err(GhcbError::UnknownExitCode(code.0));
            }
            let range = page.scratch(ghcb_gpa, psc::HEADER_LEN as u64)?;
            let desc = PscDesc::decode(&page.shared_buffer()[range.start..])?;
            GhcbRequest::PageStateChange(Box::new(desc))
        }
        ExitCode::VMMCALL => GhcbRequest::Vmmcall {
            nr: page.get(Field::Rax),
            args: [
                valid_or_0(Field::Rbx),
                valid_or_0(Field::Rcx),
                valid_or_0(Field::Rdx),
                valid_or_0(Field::Rsi),
            ],
            cpl: page.get(Field::Cpl) as u8,
        },
        ExitCode::SEVMIRROR_SERVICE => GhcbRequest::Service(match Call::from_number(info1)? {
            Call::Console => {
                if info2 == 0 {
                    return Err(GhcbError::Length(0));
                }
                let range = page.scratch(ghcb_gpa, info2)?;
                ServiceRequest::Console(page.shared_buffer()[range].to_vec())
            }
            Call::Exit => ServiceRequest::Exit(info2),
            Call::Event => ServiceRequest::Event(Event(info2)),
            Call::Doorbell => ServiceRequest::Doorbell(info2),
            Call::Fault => ServiceRequest::Fault(FaultReport {
                vector: info2 as u8,
                cpl: (info2 >> 8) as u8 & 3,
                rip: page.get(Field::Rbx),
                error: page.get(Field::Rcx),
                addr: page.get(Field::Rdx),
            }),
            Call::TakeRequest => ServiceRequest::TakeRequest,
            Call::Checkpoint => ServiceRequest::Checkpoint,
        }),
        ExitCode::AP_RESET_HOLD => GhcbRequest::ApResetHold,
        other => return Err(GhcbError::UnknownExitCode(other.0)),
    })
}

/// Starts an answer: clears the valid bitmap (so the guest sees only what the VMM
/// returns) and reports success.
fn begin_answer(page: &mut Ghcb, info1: u64, info2: u64) {
    page.clear_valid_bitmap();
    page.set(Field::SwExitInfo1, info1);
    page.set(Field::SwExitInfo2, info2);
}

/// Writes `resp` into the GHCB copy the request was decoded from (its scratch field
/// still says where the data goes), marking exactly the fields the exit returns.
pub fn encode_response(page: &mut Ghcb, ghcb_gpa: u64, resp: &GhcbResponse) {
    let scratch = |page: &Ghcb, len: usize| page.scratch(ghcb_gpa, len as u64).ok();
    match resp {
        GhcbResponse::Exception(event) => {
            begin_answer(page, result::ISSUE_EXCEPTION, event.0);
            return;
        }
        GhcbResponse::MmioRead(data) => {
            if let Some(range) = scratch(page, data.len()) {
                page.shared_buffer_mut()[range].copy_from_slice(data);
            }
        }
        GhcbResponse::PageStateChange(desc, _) => {
            if let Some(range) = scratch(page, psc::HEADER_LEN) {
                // The decoded descriptor came from this buffer, so it fits again.
                let _ = desc.encode(&mut page.shared_buffer_mut()[range.start..]);
            }
        }
        _ => {}
    }
    let info2 = match resp {
        GhcbResponse::PageStateChange(_, status) => *status,
        GhcbResponse::HoldReleased => 1,
        _ => 0,
    };
    begin_answer(page, result::NO_ACTION, info2);
    match *resp {
        GhcbResponse::Cpuid(r) => {
            for (f, v) in [Field::Rax, Field::Rbx, Field::Rcx, Field::Rdx]
                .into_iter()
                .zip(r)
            {
                page.set(f, v.into());
            }
        }
        GhcbResponse::RdMsr(v) => {
            page.set(Field::Rax, v & 0xffff_ffff);
            page.set(Field::Rdx, v >> 32);
        }
        GhcbResponse::IoIn(v) => page.set(Field::Rax, v.into()),
        GhcbResponse::Rax(v) => page.set(Field::Rax, v),
        GhcbResponse::Done
        | GhcbResponse::MmioRead(_)
        | GhcbResponse::PageStateChange(..)
        | GhcbResponse::Exception(_)
        | GhcbResponse::HoldReleased => {}
    }
}

/// Reports a malformed request to the guest: `sw_exit_info_1` = 2 (malformed input),
/// `sw_exit_info_2` = the reason code.
pub fn encode_error(page: &mut Ghcb, error: GhcbError) {
    begin_answer(page, result::MALFORMED_INPUT, error.reason());
}

/// What the VMM does for a served request. Implemented by the vCPU loop over its
/// devices, and by test fakes.
pub trait GhcbHost {
    /// CPUID as the VMM configured the vCPU.
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4];
    /// RDMSR; `None` makes the guest raise #GP.
    fn rdmsr(&mut self, index: u32) -> Option<u64>;
    /// WRMSR; `false` makes the guest raise #GP.
    fn wrmsr(&mut self, index: u32, value: u64) -> bool;
    /// IN: fills `data`.
    fn io_in(&mut self, port: u16, data: &mut [u8]);
    /// OUT.
    fn io_out(&mut self, port: u16, data: &[u8]);
    /// MMIO read: fills `data`.
    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]);
    /// MMIO write.
    fn mmio_write(&mut self, gpa: u64, data: &[u8]);
    /// A KVM hypercall (RAX = nr; RBX, RCX, RDX, RSI): returns RAX.
    fn hypercall(&mut self, nr: u64, args: [u64; 4]) -> u64;
    /// Converts `pages` 4 KiB pages at `gpa`; false if the VMM refuses.
    fn convert(&mut self, gpa: u64, pages: u64, v: Visibility) -> bool;
    /// A guest-services call: returns RAX.
    fn service(&mut self, req: ServiceRequest) -> u64;
    /// AP reset hold: the vCPU holds from this exit until the host releases it.
    fn ap_reset_hold(&mut self);
}

/// Carries out a decoded request.
pub fn serve(req: GhcbRequest, host: &mut impl GhcbHost) -> GhcbResponse {
    match req {
        GhcbRequest::Cpuid { leaf, subleaf, .. } => GhcbResponse::Cpuid(host.cpuid(leaf, subleaf)),
        GhcbRequest::RdMsr { index } => match host.rdmsr(index) {
            Some(v) => GhcbResponse::RdMsr(v),
            None => GhcbResponse::Exception(EventInjection::GP),
        },
        GhcbRequest::WrMsr { index, value } => match host.wrmsr(index, value) {
            true => GhcbResponse::Done,
            false => GhcbResponse::Exception(EventInjection::GP),
        },
        GhcbRequest::Io {
            port,
            size,
            dir: Direction::In,
            ..
        } => {
            let mut data = [0u8; 4];
            host.io_in(port, &mut data[..size.bytes()]);
            GhcbResponse::IoIn(u32::from_le_bytes(data))
        }
        GhcbRequest::Io {
            port,
            size,
            dir: Direction::Out,
            value,
        } => {
            host.io_out(port, &value.to_le_bytes()[..size.bytes()]);
            GhcbResponse::Done
        }
        GhcbRequest::MmioRead { gpa, len } => {
            let mut data = vec![0u8; len];
            host.mmio_read(gpa, &mut data);
            GhcbResponse::MmioRead(data)
        }
        GhcbRequest::MmioWrite { gpa, data } => {
            host.mmio_write(gpa, &data);
            GhcbResponse::Done
        }
        GhcbRequest::PageStateChange(mut desc) => {
            let mut status = psc::OK;
            for i in desc.pending() {
                let Ok(entry) = desc.entry(i) else {
                    status = psc::ERROR_INVALID_ENTRY;
                    break;
                };
                let op = match entry.op {
                    psc::Operation::Private => Visibility::Private,
                    psc::Operation::Shared => Visibility::Shared,
                };
                let done = u64::from(entry.cur_page);
                let gpa = (entry.gfn << 12) + done * PAGE_SIZE;
                if !host.convert(gpa, entry.size.pages() - done, op) {
                    status = psc::ERROR_GENERIC;
                    break;
                }
                // `i` is pending, so it is a valid index.
                let _ = desc.complete(i);
            }
            GhcbResponse::PageStateChange(desc, status)
        }
        GhcbRequest::Vmmcall { nr, args, .. } => GhcbResponse::Rax(host.hypercall(nr, args)),
        GhcbRequest::Service(s) => GhcbResponse::Rax(host.service(s)),
        GhcbRequest::ApResetHold => {
            host.ap_reset_hold();
            GhcbResponse::HoldReleased
        }
    }
}

/// CPUID from a vCPU's table as KVM answers it: the entry for the leaf (and, where the
/// entry says the subleaf matters, the subleaf); zeros for a leaf the table lacks (what
/// AMD CPUs return past the last leaf).
pub fn cpuid_lookup(entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> [u32; 4] {
    entries
        .iter()
        .find(|e| {
            e.function == leaf
                && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == subleaf)
        })
        .map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx])
}

/// One vCPU's GHCB MSR (MSR 0xC001_0130), which the guest sets at CPL0 and the VMM
/// answers in on VMGEXIT.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GhcbMsr {
    value: u64,
    registered: Option<u64>,
}

/// What a VMGEXIT with the MSR protocol came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrExchange {
    /// The MSR holds the GHCB's GPA: serve the GHCB there.
    Ghcb {
        /// Page-aligned GPA.
        gpa: u64,
    },
    /// The response is in the MSR.
    Answered(MsrResponse),
    /// An undefined request: the MSR keeps its value (as KVM does).
    Ignored(u64),
    /// AP reset hold by the MSR protocol: the vCPU holds until the host releases it. The
    /// MSR already holds the answer it reads then ("released", result 1).
    ApResetHold,
    /// The guest asked to be stopped, or broke a rule KVM stops it for.
    Terminate {
        /// Reason-code set.
        set: u8,
        /// Reason code.
        reason: u8,
    },
}

/// KVM's reason for stopping a guest that breaks the MSR protocol (reason set 0,
/// `GHCB_SEV_ES_GEN_REQ`).
const TERMINATE_GENERAL: MsrExchange = MsrExchange::Terminate { set: 0, reason: 0 };

impl GhcbMsr {
    /// The value the guest reads.
    pub fn read(&self) -> u64 {
        self.value
    }

    /// A guest write (nothing is served until VMGEXIT).
    pub fn write(&mut self, value: u64) {
        self.value = value;
    }

    /// The GPA registered by an SNP guest.
    pub fn registered(&self) -> Option<u64> {
        self.registered
    }

    /// VMGEXIT: serves an MSR protocol request, or says where the GHCB is.
    /// `cbit` is the C-bit position the VMM announces; `cpuid` answers CPUID requests.
    pub fn exchange(
        &mut self,
        mode: GuestMode,
        cbit: u8,
        cpuid: impl FnOnce(u32) -> [u32; 4],
    ) -> MsrExchange {
        let request = match MsrRequest::decode(self.value) {
            Ok(r) => r,
            Err(_) => {
                log::debug!("undefined GHCB MSR request {:#x}", self.value);
                return MsrExchange::Ignored(self.value);
            }
        };
        let response = match request {
            MsrRequest::Ghcb { gpa } => {
                return match (mode, self.registered) {
                    (_, _) if gpa == 0 => TERMINATE_GENERAL,
                    (GuestMode::SevSnp, r) if r != Some(gpa) => TERMINATE_GENERAL,
                    _ => MsrExchange::Ghcb { gpa },
                };
            }
            MsrRequest::SevInfo => MsrResponse::SevInfo {
                max: PROTOCOL_MAX,
                min: PROTOCOL_MIN,
                cbit,
            },
            MsrRequest::Cpuid { function, register } => MsrResponse::Cpuid {
                register,
                value: cpuid(function)[register.index()],
            },
            MsrRequest::RegisterGpa { gfn } => match mode {
                GuestMode::SevEs => return TERMINATE_GENERAL,
                GuestMode::SevSnp => {
                    self.registered = Some(gfn << 12);
                    MsrResponse::RegisterGpa { gfn }
                }
            },
            MsrRequest::HvFeatures => MsrResponse::HvFeatures(match mode {
                GuestMode::SevEs => 0,
                // GHCB_HV_FT_SNP: the SNP base feature; AP creation is not offered.
                GuestMode::SevSnp => 1,
            }),
            MsrRequest::Terminate { set, reason } => return MsrExchange::Terminate { set, reason },
            MsrRequest::ApResetHold => {
                self.value = MsrResponse::ApResetHold { result: 1 }.encode();
                return MsrExchange::ApResetHold;
            }
        };
        self.value = response.encode();
        MsrExchange::Answered(response)
    }
}

/// A VMGEXIT that could not be served at all: the guest cannot be answered, so the vCPU
/// stops.
#[derive(Debug, thiserror::Error)]
pub enum VmgexitError {
    /// The GHCB is not guest RAM.
    #[error("cannot access the guest's GHCB at {gpa:#x}")]
    Memory {
        /// GPA of the GHCB.
        gpa: u64,
        /// Why.
        #[source]
        source: MemoryError,
    },
}

/// What one VMGEXIT did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmgexitOutcome {
    /// An MSR protocol exchange (or an undefined request, ignored).
    Msr(MsrExchange),
    /// A GHCB request served, or refused as malformed (with the reason given to the guest).
    Ghcb {
        /// The exit code the guest gave.
        code: u64,
        /// Why it was refused, if it was.
        refused: Option<GhcbError>,
    },
}

/// Serves a VMGEXIT of a vCPU whose GHCB MSR is `msr`: the MSR protocol, or one request
/// from the GHCB page in guest memory (copied once; the answer written back whole).
pub fn vmgexit(
    msr: &mut GhcbMsr,
    mode: GuestMode,
    cbit: u8,
    view: &HostView,
    host: &mut impl GhcbHost,
) -> Result<VmgexitOutcome, VmgexitError> {
    let exchange = msr.exchange(mode, cbit, |leaf| host.cpuid(leaf, 0));
    let MsrExchange::Ghcb { gpa } = exchange else {
        return Ok(VmgexitOutcome::Msr(exchange));
    };
    if view.visibility(gpa) != Visibility::Shared {
        // On hardware a guest shares its GHCB by clearing the C-bit of the page's mapping,
        // before it has any channel to the host (KVM reads the page as it finds it). The
        // emulated platform has no C-bit (docs/architecture.md §3), so the page a vCPU's
        // GHCB MSR names is shared from its first VMGEXIT on: the stand-in for that
        // mapping change, and for nothing else (the firmware records the page in its
        // shared list and announces it through the GHCB afterwards, as Linux does).
        // What the guest wrote there is already the shared page: recorded, not
        // converted (a conversion would scramble it as SEV scrambles a remapped page).
        view.record_shared_mapping(gpa)
            .map_err(|source| VmgexitError::Memory { gpa, source })?;
    }
    let mut bytes = [0u8; PAGE_LEN];
    view.read(gpa, &mut bytes)
        .map_err(|source| VmgexitError::Memory { gpa, source })?;
    let mut page = Ghcb::from_page(&bytes);
    let code = page.get(Field::SwExitCode);
    let refused = match decode(&page, gpa, mode) {
        Ok(req) => {
            let resp = serve(req, host);
            encode_response(&mut page, gpa, &resp);
            None
        }
        Err(e) => {
            log::debug!("refused GHCB request (exit code {code:#x}): {e}");
            encode_error(&mut page, e);
            Some(e)
        }
    };
    view.write(gpa, page.page())
        .map_err(|source| VmgexitError::Memory { gpa, source })?;
    Ok(VmgexitOutcome::Ghcb { code, refused })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{Encrypted, GuestRam, PageStates};
    use guest_abi::ghcb::{
        msr::{CpuidRegister, MSR_GHCB},
        psc::{Entry, Operation, PageSize},
        reason, ValidBitmap, SHARED_BUFFER_LEN,
    };
    use std::sync::Arc;

    const GPA: u64 = 0x81_0000;
    const SCRATCH: u64 = GPA + 0x800;

    /// Records what it was asked and answers predictably.
    #[derive(Default)]
    struct FakeHost {
        log: Vec<String>,
        refuse_msrs: bool,
        refuse_convert: bool,
    }

    impl GhcbHost for FakeHost {
        fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
            self.log.push(format!("cpuid {leaf:#x} {subleaf}"));
            [leaf, subleaf, 0xc, 0xd]
        }
        fn rdmsr(&mut self, index: u32) -> Option<u64> {
            self.log.push(format!("rdmsr {index:#x}"));
            (!self.refuse_msrs).then_some(0x1234_5678_9abc_def0)
        }
        fn wrmsr(&mut self, index: u32, value: u64) -> bool {
            self.log.push(format!("wrmsr {index:#x} {value:#x}"));
            !self.refuse_msrs
        }
        fn io_in(&mut self, port: u16, data: &mut [u8]) {
            self.log.push(format!("in {port:#x} {}", data.len()));
            data.fill(0xab);
        }
        fn io_out(&mut self, port: u16, data: &[u8]) {
            self.log.push(format!("out {port:#x} {data:x?}"));
        }
        fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) {
            self.log.push(format!("mmio read {gpa:#x} {}", data.len()));
            for (i, b) in data.iter_mut().enumerate() {
                *b = i as u8;
            }
        }
        fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
            self.log.push(format!("mmio write {gpa:#x} {data:x?}"));
        }
        fn hypercall(&mut self, nr: u64, args: [u64; 4]) -> u64 {
            self.log.push(format!("hypercall {nr} {args:x?}"));
            0
        }
        fn convert(&mut self, gpa: u64, pages: u64, v: Visibility) -> bool {
            self.log.push(format!("convert {gpa:#x} {pages} {v:?}"));
            !self.refuse_convert
        }
        fn service(&mut self, req: ServiceRequest) -> u64 {
            self.log.push(format!("service {req:?}"));
            match req {
                ServiceRequest::TakeRequest => 2,
                _ => 0,
            }
        }
        fn ap_reset_hold(&mut self) {
            self.log.push("hold".into());
        }
    }

    fn request(code: ExitCode, info1: u64, info2: u64) -> Ghcb {
        let mut g = Ghcb::zeroed();
        g.begin(2);
        g.set(Field::SwExitCode, code.0);
        g.set(Field::SwExitInfo1, info1);
        g.set(Field::SwExitInfo2, info2);
        g
    }

    /// Decode, serve, encode, as `vmgexit` does; returns the answer page.
    fn round_trip(req: &Ghcb, mode: GuestMode, host: &mut FakeHost) -> Ghcb {
        let mut page = req.clone();
        match decode(&page, GPA, mode) {
            Ok(r) => {
                let resp = serve(r, host);
                encode_response(&mut page, GPA, &resp);
            }
            Err(e) => encode_error(&mut page, e),
        }
        page
    }

    fn malformed(page: &Ghcb) -> (u64, u64) {
        (page.get(Field::SwExitInfo1), page.get(Field::SwExitInfo2))
    }

    #[test]
    fn cpuid_answers_four_registers_and_nothing_else() {
        let mut g = request(ExitCode::CPUID, 0, 0);
        g.set(Field::Rax, 0x8000_001f);
        g.set(Field::Rcx, 1);
        g.set(Field::Rsi, 0x5151); // not part of CPUID: must not come back valid
        assert_eq!(
            decode(&g, GPA, GuestMode::SevEs),
            Ok(GhcbRequest::Cpuid {
                leaf: 0x8000_001f,
                subleaf: 1,
                xcr0: None
            })
        );
        let mut host = FakeHost::default();
        let a = round_trip(&g, GuestMode::SevEs, &mut host);
        assert_eq!(a.check_response(ExitCode::CPUID, 0), Ok(()));
        assert_eq!(
            a.valid_bitmap(),
            ValidBitmap::of(&[
                Field::Rax,
                Field::Rbx,
                Field::Rcx,
                Field::Rdx,
                Field::SwExitInfo1,
                Field::SwExitInfo2
            ])
        );
        assert_eq!(a.get(Field::Rax), 0x8000_001f);
        assert_eq!(a.get(Field::Rbx), 1);
        let mut no_rcx = request(ExitCode::CPUID, 0, 0);
        no_rcx.set(Field::Rax, 1);
        let a = round_trip(&no_rcx, GuestMode::SevEs, &mut host);
        assert_eq!(
            malformed(&a),
            (result::MALFORMED_INPUT, reason::MISSING_INPUT)
        );
        assert_eq!(
            host.log,
            ["cpuid 0x8000001f 1"],
            "refused requests are not served"
        );
    }

    #[test]
    fn msr_reads_and_writes_and_refusals_as_gp() {
        let mut host = FakeHost::default();
        let mut r = request(ExitCode::MSR, 0, 0);
        r.set(Field::Rcx, 0xc001_0131);
        let a = round_trip(&r, GuestMode::SevEs, &mut host);
        assert_eq!(a.check_response(ExitCode::MSR, 0), Ok(()));
        assert_eq!(
            (a.get(Field::Rax), a.get(Field::Rdx)),
            (0x9abc_def0, 0x1234_5678)
        );
        let mut w = request(ExitCode::MSR, 1, 0);
        w.set(Field::Rcx, 0x1b);
        w.set(Field::Rax, 0xffff_ffff_fee0_0d00); // only EAX counts
        w.set(Field::Rdx, 1);
        assert_eq!(
            decode(&w, GPA, GuestMode::SevEs),
            Ok(GhcbRequest::WrMsr {
                index: 0x1b,
                value: 0x1_fee0_0d00
            })
        );
        let a = round_trip(&w, GuestMode::SevEs, &mut host);
        assert_eq!(a.check_response(ExitCode::MSR, 1), Ok(()));
        host.refuse_msrs = true;
        let a = round_trip(&r, GuestMode::SevEs, &mut host);
        assert_eq!(
            a.check_response(ExitCode::MSR, 0),
            Err(GhcbError::Exception(EventInjection::GP))
        );
        let a = round_trip(&w, GuestMode::SevEs, &mut host);
        assert_eq!(
            malformed(&a),
            (result::ISSUE_EXCEPTION, EventInjection::GP.0)
        );
        let bad = request(ExitCode::MSR, 5, 0);
        let a = round_trip(&bad, GuestMode::SevEs, &mut host);
        assert_eq!(
            malformed(&a),
            (result::MALFORMED_INPUT, reason::INVALID_INPUT)
        );
    }

    #[test]
    fn port_io_in_and_out() {
        let mut host = FakeHost::default();
        let out = IoioInfo::new(0x3f8, Size::Byte, Direction::Out).encode();
        let mut g = request(ExitCode::IOIO, out, 0);
        g.set(Field::Rax, 0x4142);
        let a = round_trip(&g, GuestMode::SevEs, &mut host);
        assert_eq!(a.check_response(ExitCode::IOIO, out), Ok(()));
        let inw = IoioInfo::new(0x510, Size::Word, Direction::In).encode();
        let a = round_trip(
            &request(ExitCode::IOIO, inw, 0),
            GuestMode::SevEs,
            &mut host,
        );
        assert_eq!(a.check_response(ExitCode::IOIO, inw), Ok(()));
        assert_eq!(a.get(Field::Rax), 0xabab);
        assert_eq!(host.log, ["out 0x3f8 [42]", "in 0x510 2"]);
        let mut rep = IoioInfo::new(0x510, Size::Byte, Direction::In);
        rep.string = Mode::String;
        let mut s = request(ExitCode::IOIO, rep.encode(), 4);
        s.set(Field::SwScratch, SCRATCH);
        let a = round_trip(&s, GuestMode::SevEs, &mut host);
        assert_eq!(
            malformed(&a),
            (result::MALFORMED_INPUT, reason::INVALID_INPUT)
        );
        let a = round_trip(
            &request(ExitCode::IOIO, 0x12, 0),
            GuestMode::SevEs,
            &mut host,
        );
        assert_eq!(
            malformed(&a),
            (result::MALFORMED_INPUT, reason::INVALID_INPUT)
        );
    }

    #[test]
    fn mmio_reads_fill_the_scratch_area_and_writes_take_it() {
        let mut host = FakeHost::default();
        let mut r = request(ExitCode::MMIO_READ, 0xfe00_0088, 8);
        r.set(Field::SwScratch, SCRATCH + 16);
        let a = round_trip(&r, GuestMode::SevEs, &mut host);
        assert_eq!(a.check_response(ExitCode::MMIO_READ, 0xfe00_0088), Ok(()));
        assert_eq!(&a.shared_buffer()[16..24], &[0, 1, 2, 3, 4, 5, 6, 7]);
        let mut w = request(ExitCode::MMIO_WRITE, 0xfe00_0000, 3);
        w.set(Field::SwScratch, SCRATCH);
        w.shared_buffer_mut()[..3].copy_from_slice(b"abc");
        assert_eq!(
            decode(&w, GPA, GuestMode::SevEs),
            Ok(GhcbRequest::MmioWrite {
                gpa: 0xfe00_0000,
                data: b"abc".to_vec()
            })
        );
        round_trip(&w, GuestMode::SevEs, &mut host);
        assert_eq!(
            host.log,
            [
                "mmio read 0xfe000088 8",
                "mmio write 0xfe000000 [61, 62, 63]"
            ]
        );
    }

    #[test]
    fn mmio_lengths_and_scratch_areas_out_of_range_are_refused() {
        let mut host = FakeHost::default();
        let cases = [
            (SCRATCH, 0, reason::INVALID_INPUT),
            (
                SCRATCH,
                SHARED_BUFFER_LEN as u64 + 1,
                reason::INVALID_SCRATCH_AREA,
            ),
            (SCRATCH + 2000, 64, reason::INVALID_SCRATCH_AREA),
            (GPA + 0x3f8, 8, reason::INVALID_SCRATCH_AREA),
            (0x10_0000, 8, reason::INVALID_SCRATCH_AREA),
            (SCRATCH, u64::MAX, reason::INVALID_SCRATCH_AREA),
        ];
        for (scratch, len, why) in cases {
            for code in [ExitCode::MMIO_READ, ExitCode::MMIO_WRITE] {
                let mut g = request(code, 0xfe00_0000, len);
                g.set(Field::SwScratch, scratch);
                let a = round_trip(&g, GuestMode::SevEs, &mut host);
                assert_eq!(
                    malformed(&a),
                    (result::MALFORMED_INPUT, why),
                    "{code:?} {scratch:#x}+{len}"
                );
                assert_eq!(
                    a.valid_bitmap(),
                    ValidBitmap::of(&[Field::SwExitInfo1, Field::SwExitInfo2])
                );
            }
        }
        assert!(host.log.is_empty());
    }

    #[test]
    fn vmmcall_reads_only_valid_argument_registers() {
        let mut host = FakeHost::default();
        let mut g = request(ExitCode::VMMCALL, 0, 0);
        g.set(Field::Rax, 12);
        g.set(Field::Rbx, GPA);
        g.set(Field::Rcx, 32);
        g.set(Field::Cpl, 3);
        // RDX written but not marked valid: KVM reads it as 0.
        let mut bytes = *g.page();
        bytes[Field::Rdx.offset()] = 0x99;
        let g = Ghcb::from_page(&bytes);
        assert_eq!(
            decode(&g, GPA, GuestMode::SevEs),
            Ok(GhcbRequest::Vmmcall {
                nr: 12,
                args: [GPA, 32, 0, 0],
                cpl: 3
            })
        );
        let a = round_trip(&g, GuestMode::SevEs, &mut host);
        assert_eq!(a.check_response(ExitCode::VMMCALL, 0), Ok(()));
        assert_eq!(a.get(Field::Rax), 0);
    }

    #[test]
    fn page_state_changes_are_snp_only_and_convert_each_entry() {
        let mut host = FakeHost::default();
        let mut d = PscDesc::new();
        d.push(Entry::new(0x810, Operation::Shared, PageSize::Size4K))
            .unwrap();
        d.push(Entry::new(0x200, Operation::Private, PageSize::Size2M))
            .unwrap();
        let mut g = request(ExitCode::PSC, 0, 0);
        g.set(Field::SwScratch, SCRATCH);
        d.encode(g.shared_buffer_mut()).unwrap();
        let a = round_trip(&g, GuestMode::SevEs, &mut host);
        assert_eq!(
            malformed(&a),
            (result::MALFORMED_INPUT, reason::INVALID_EVENT)
        );
        assert!(host.log.is_empty(), "KVM serves no PSC for SEV-ES guests");

        let a = round_trip(&g, GuestMode::SevSnp, &mut host);
        assert_eq!(a.check_response(ExitCode::PSC, 0), Ok(()));
        assert_eq!(a.get(Field::SwExitInfo2), psc::OK);
        let back = PscDesc::decode(a.shared_buffer()).unwrap();
        assert!(back.pending().is_empty());
        assert_eq!(back.entry(1).unwrap().cur_page, 512);
        assert_eq!(
            host.log,
            ["convert 0x810000 1 Shared", "convert 0x200000 512 Private"]
        );

        host.log.clear();
        host.refuse_convert = true;
        let a = round_trip(&g, GuestMode::SevSnp, &mut host);
        assert_eq!(a.get(Field::SwExitInfo2), psc::ERROR_GENERIC);
        assert_eq!(PscDesc::decode(a.shared_buffer()).unwrap().cur_entry, 0);

        let mut too_many = request(ExitCode::PSC, 0, 0);
        too_many.set(Field::SwScratch, SCRATCH);
        too_many.shared_buffer_mut()[2..4].copy_from_slice(&253u16.to_le_bytes());
        let a = round_trip(&too_many, GuestMode::SevSnp, &mut host);
        assert_eq!(
            malformed(&a),
            (result::MALFORMED_INPUT, reason::INVALID_INPUT)
        );
    }

    #[test]
    fn services_decode_each_call() {
        let mut host = FakeHost::default();
        let call = |n: Call, arg| request(ExitCode::SEVMIRROR_SERVICE, n.number(), arg);
        let mut console = call(Call::Console, 5);
        console.set(Field::SwScratch, SCRATCH);
        console.shared_buffer_mut()[..5].copy_from_slice(b"hello");
        let mut fault = call(Call::Fault, 14 | 3 << 8);
        fault.set(Field::Rbx, 0x40_1000);
        fault.set(Field::Rcx, 2);
        fault.set(Field::Rdx, 0xdead_0000);
        let cases = [
            (console, ServiceRequest::Console(b"hello".to_vec())),
            (call(Call::Exit, 3), ServiceRequest::Exit(3)),
            (
                call(Call::Event, 4),
                ServiceRequest::Event(Event::WORKLOAD_START),
            ),
            (call(Call::Doorbell, 9), ServiceRequest::Doorbell(9)),
            (
                fault,
                ServiceRequest::Fault(FaultReport {
                    vector: 14,
                    cpl: 3,
                    rip: 0x40_1000,
                    error: 2,
                    addr: 0xdead_0000,
                }),
            ),
            (call(Call::TakeRequest, 0), ServiceRequest::TakeRequest),
            (call(Call::Checkpoint, 0), ServiceRequest::Checkpoint),
        ];
        for (g, want) in cases {
            assert_eq!(
                decode(&g, GPA, GuestMode::SevEs),
                Ok(GhcbRequest::Service(want.clone()))
            );
            let a = round_trip(&g, GuestMode::SevEs, &mut host);
            assert_eq!(a.check_response(ExitCode::SEVMIRROR_SERVICE, 0), Ok(()));
        }
        assert_eq!(a_rax(&call(Call::TakeRequest, 0), &mut host), 2);
        let a = round_trip(
            &request(ExitCode::SEVMIRROR_SERVICE, 99, 0),
            GuestMode::SevEs,
            &mut host,
        );
        assert_eq!(
            malformed(&a),
            (result::MALFORMED_INPUT, reason::INVALID_EVENT)
        );
        let mut empty = call(Call::Console, 0);
        empty.set(Field::SwScratch, SCRATCH);
        let a = round_trip(&empty, GuestMode::SevEs, &mut host);
        assert_eq!(
            malformed(&a),
            (result::MALFORMED_INPUT, reason::INVALID_INPUT)
        );
    }

    fn a_rax(g: &Ghcb, host: &mut FakeHost) -> u64 {
        round_trip(g, GuestMode::SevEs, host).get(Field::Rax)
    }

    #[test]
    fn unknown_codes_and_bad_usage_are_malformed_input() {
        let mut host = FakeHost::default();
        for code in [0x6e, 0x8000_0005, 0x8000_fffe, u64::MAX] {
            let a = round_trip(&request(ExitCode(code), 0, 0), GuestMode::SevEs, &mut host);
            assert_eq!(
                malformed(&a),
                (result::MALFORMED_INPUT, reason::INVALID_EVENT),
                "{code:#x}"
            );
        }
        let mut g = request(ExitCode::CPUID, 0, 0);
        g.set_usage(1);
        let a = round_trip(&g, GuestMode::SevEs, &mut host);
        assert_eq!(
            malformed(&a),
            (result::MALFORMED_INPUT, reason::INVALID_USAGE)
        );
        assert!(host.log.is_empty());
    }

    #[test]
    fn an_ap_reset_hold_is_answered_released_and_the_host_holds_the_vcpu() {
        let mut host = FakeHost::default();
        let g = request(ExitCode::AP_RESET_HOLD, 0, 0);
        assert_eq!(
            decode(&g, GPA, GuestMode::SevEs),
            Ok(GhcbRequest::ApResetHold)
        );
        let a = round_trip(&g, GuestMode::SevEs, &mut host);
        assert_eq!(host.log, ["hold"]);
        // What the guest reads when the host lets it run again (56421: non-zero
        // sw_exit_info_2 = released; Linux's sev_es_ap_hlt_loop checks exactly this).
        assert_eq!(a.check_response(ExitCode::AP_RESET_HOLD, 0), Ok(()));
        assert_eq!(a.get_valid(Field::SwExitInfo2), Some(1));
        // The MSR-protocol form: the answer is in the MSR when the vCPU runs again.
        let mut m = GhcbMsr::default();
        m.write(MsrRequest::ApResetHold.encode());
        assert_eq!(
            m.exchange(GuestMode::SevEs, 0, |_| [0; 4]),
            MsrExchange::ApResetHold
        );
        assert_eq!(
            MsrResponse::decode(m.read()),
            Ok(MsrResponse::ApResetHold { result: 1 })
        );
    }

    #[test]
    fn cpuid_lookup_honours_significant_subleaves() {
        let e = |function, index, flags, eax| kvm_cpuid_entry2 {
            function,
            index,
            flags,
            eax,
            ..Default::default()
        };
        let table = [
            e(1, 0, 0, 0x10),
            e(7, 0, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0x70),
            e(7, 1, KVM_CPUID_FLAG_SIGNIFCANT_INDEX, 0x71),
        ];
        assert_eq!(cpuid_lookup(&table, 1, 5)[0], 0x10, "subleaf ignored");
        assert_eq!(cpuid_lookup(&table, 7, 1)[0], 0x71);
        assert_eq!(cpuid_lookup(&table, 7, 2), [0; 4]);
        assert_eq!(cpuid_lookup(&table, 0x8000_0008, 0), [0; 4]);
    }

    #[test]
    fn msr_protocol_follows_kvm_for_sev_es() {
        let cpuid = |leaf: u32| [leaf, 1, 2, 3];
        let mut m = GhcbMsr::default();
        m.write(MsrRequest::SevInfo.encode());
        assert_eq!(
            m.exchange(GuestMode::SevEs, 0, cpuid),
            MsrExchange::Answered(MsrResponse::SevInfo {
                max: 2,
                min: 1,
                cbit: 0
            })
        );
        assert_eq!(m.read(), 0x0002_0001_0000_0001);
        m.write(
            MsrRequest::Cpuid {
                function: 0x8000_001f,
                register: CpuidRegister::Ebx,
            }
            .encode(),
        );
        m.exchange(GuestMode::SevEs, 0, cpuid);
        assert_eq!(
            MsrResponse::decode(m.read()),
            Ok(MsrResponse::Cpuid {
                register: CpuidRegister::Ebx,
                value: 1
            })
        );
        m.write(MsrRequest::HvFeatures.encode());
        m.exchange(GuestMode::SevEs, 0, cpuid);
        assert_eq!(
            MsrResponse::decode(m.read()),
            Ok(MsrResponse::HvFeatures(0))
        );
        // Undefined requests leave the MSR as it is.
        m.write(0x003);
        assert_eq!(
            m.exchange(GuestMode::SevEs, 0, cpuid),
            MsrExchange::Ignored(3)
        );
        assert_eq!(m.read(), 3);
        // Registration is SNP-only: KVM terminates an SEV-ES guest that asks.
        m.write(MsrRequest::RegisterGpa { gfn: 0x810 }.encode());
        assert_eq!(m.exchange(GuestMode::SevEs, 0, cpuid), TERMINATE_GENERAL);
        m.write(MsrRequest::Terminate { set: 1, reason: 4 }.encode());
        assert_eq!(
            m.exchange(GuestMode::SevEs, 0, cpuid),
            MsrExchange::Terminate { set: 1, reason: 4 }
        );
        m.write(GPA);
        assert_eq!(
            m.exchange(GuestMode::SevEs, 0, cpuid),
            MsrExchange::Ghcb { gpa: GPA }
        );
        m.write(0);
        assert_eq!(m.exchange(GuestMode::SevEs, 0, cpuid), TERMINATE_GENERAL);
        assert_eq!(MSR_GHCB, 0xc001_0130);
    }

    #[test]
    fn snp_guests_must_use_the_registered_ghcb() {
        let cpuid = |_| [0; 4];
        let mut m = GhcbMsr::default();
        m.write(GPA);
        assert_eq!(m.exchange(GuestMode::SevSnp, 0, cpuid), TERMINATE_GENERAL);
        m.write(MsrRequest::RegisterGpa { gfn: GPA >> 12 }.encode());
        assert_eq!(
            m.exchange(GuestMode::SevSnp, 0, cpuid),
            MsrExchange::Answered(MsrResponse::RegisterGpa { gfn: GPA >> 12 })
        );
        assert_eq!(m.registered(), Some(GPA));
        m.write(GPA);
        assert_eq!(
            m.exchange(GuestMode::SevSnp, 0, cpuid),
            MsrExchange::Ghcb { gpa: GPA }
        );
        m.write(GPA + 0x1000);
        assert_eq!(m.exchange(GuestMode::SevSnp, 0, cpuid), TERMINATE_GENERAL);
    }

    /// Deterministic xorshift, for the mutation test below.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn mutated_requests_get_an_answer_never_a_panic() {
        // Start from one valid request of each kind and flip random bytes of the save
        // area, the shared buffer and the usage/version words.
        let mut seeds = Vec::new();
        let mut cpuid = request(ExitCode::CPUID, 0, 0);
        cpuid.set(Field::Rax, 0xd);
        cpuid.set(Field::Rcx, 0);
        cpuid.set(Field::Xcr0, 1);
        seeds.push(cpuid);
        let mut mmio = request(ExitCode::MMIO_WRITE, 0xfe00_0000, 8);
        mmio.set(Field::SwScratch, SCRATCH);
        seeds.push(mmio);
        let mut psc_req = request(ExitCode::PSC, 0, 0);
        psc_req.set(Field::SwScratch, SCRATCH);
        let mut d = PscDesc::new();
        d.push(Entry::new(0x810, Operation::Shared, PageSize::Size4K))
            .unwrap();
        d.encode(psc_req.shared_buffer_mut()).unwrap();
        seeds.push(psc_req);
        let mut console = request(ExitCode::SEVMIRROR_SERVICE, Call::Console.number(), 4);
        console.set(Field::SwScratch, SCRATCH);
        seeds.push(console);
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut host = FakeHost::default();
        for round in 0..20_000 {
            let seed = &seeds[round % seeds.len()];
            let mut bytes = *seed.page();
            for _ in 0..1 + next(&mut state) % 4 {
                let r = next(&mut state);
                let at = match r % 4 {
                    0 => 0x390 + (r >> 8) as usize % 0x20,
                    1 => 0x3f0 + (r >> 8) as usize % 16,
                    2 => 0x800 + (r >> 8) as usize % 24,
                    _ => (r >> 8) as usize % PAGE_LEN,
                };
                bytes[at] ^= (r >> 32) as u8 | 1;
            }
            let page = Ghcb::from_page(&bytes);
            for mode in [GuestMode::SevEs, GuestMode::SevSnp] {
                let a = round_trip(&page, mode, &mut host);
                let info1 = a.get_valid(Field::SwExitInfo1);
                assert!(
                    matches!(info1, Some(0..=2)),
                    "round {round}: answer result {info1:?}"
                );
                assert_eq!(a.usage(), page.usage(), "the VMM never rewrites the usage");
            }
        }
    }

    fn ram() -> Arc<GuestRam> {
        Arc::new(GuestRam::new(64 << 20).unwrap())
    }

    #[test]
    fn vmgexit_serves_the_page_in_guest_memory() {
        let view = HostView::new(ram());
        let mut g = request(ExitCode::CPUID, 0, 0);
        g.set(Field::Rax, 7);
        g.set(Field::Rcx, 0);
        view.write(GPA, g.page()).unwrap();
        let mut msr = GhcbMsr::default();
        msr.write(GPA);
        let mut host = FakeHost::default();
        let out = vmgexit(&mut msr, GuestMode::SevEs, 0, &view, &mut host).unwrap();
        assert_eq!(
            out,
            VmgexitOutcome::Ghcb {
                code: 0x72,
                refused: None
            }
        );
        let mut bytes = [0u8; PAGE_LEN];
        view.read(GPA, &mut bytes).unwrap();
        let a = Ghcb::from_page(&bytes);
        assert_eq!(a.check_response(ExitCode::CPUID, 0), Ok(()));
        assert_eq!(a.get(Field::Rax), 7);

        // The MSR protocol goes through the same door.
        msr.write(MsrRequest::SevInfo.encode());
        let out = vmgexit(&mut msr, GuestMode::SevEs, 0, &view, &mut host).unwrap();
        assert!(matches!(
            out,
            VmgexitOutcome::Msr(MsrExchange::Answered(MsrResponse::SevInfo { .. }))
        ));
    }

    #[test]
    fn vmgexit_shares_the_ghcb_the_msr_names_and_refuses_one_outside_ram() {
        let ram = ram();
        let states = Arc::new(PageStates::new(ram.pages(), Visibility::Private));
        let view = HostView::encrypted(
            ram,
            Encrypted {
                states: states.clone(),
                cipher: None,
            },
        );
        let mut g = request(ExitCode::CPUID, 0, 0);
        g.set(Field::Rax, 7);
        g.set(Field::Rcx, 0);
        view.write(GPA, g.page()).unwrap();
        let mut msr = GhcbMsr::default();
        msr.write(GPA);
        let mut host = FakeHost::default();
        // The first VMGEXIT through a private page stands for the guest's C-bit change:
        // that page (and only that page) is shared from then on, and the request served.
        let out = vmgexit(&mut msr, GuestMode::SevEs, 0, &view, &mut host).unwrap();
        assert_eq!(
            out,
            VmgexitOutcome::Ghcb {
                code: ExitCode::CPUID.0,
                refused: None
            }
        );
        assert_eq!(view.visibility(GPA), Visibility::Shared);
        assert_eq!(states.shared_count(), 1);
        let mut bytes = [0u8; PAGE_LEN];
        view.read(GPA, &mut bytes).unwrap();
        assert_eq!(Ghcb::from_page(&bytes).get(Field::Rax), 7);

        msr.write(1 << 40);
        assert!(matches!(
            vmgexit(
                &mut msr,
                GuestMode::SevEs,
                0,
                &HostView::new(self::ram()),
                &mut host
            ),
            Err(VmgexitError::Memory { .. })
        ));
        let outside = HostView::encrypted(
            self::ram(),
            Encrypted {
                states,
                cipher: None,
            },
        );
        assert!(matches!(
            vmgexit(&mut msr, GuestMode::SevEs, 0, &outside, &mut host),
            Err(VmgexitError::Memory { .. })
        ));
    }
}
