//! The guest's GHCB client: one function per exit kind.
//!
//! Each call prepares a private copy of the GHCB as edk2's `CcExitVmgInit` +
//! `CcExitVmgExit` do (save area cleared, standard usage, the negotiated protocol version,
//! the exit code and both exit information words valid, the fields the exit needs written
//! and marked valid), hands it to the [`Vmgexit`] transport, and reads the answer from the
//! copy the transport brings back: the result code must say success and every field the
//! exit returns must be marked valid, or the call fails (never a value made up from a
//! stale field).

use guest_abi::ghcb::{
    ioio::{Direction, IoioInfo, Size},
    msr::{CpuidRegister, MsrRequest, MsrResponse},
    psc::{self, PscDesc},
    service::Call,
    ExitCode, Field, Ghcb, GhcbError, PROTOCOL_VERSION, SHARED_BUFFER_LEN,
};

/// How a request reaches the hypervisor.
pub trait Vmgexit {
    /// GPA of this CPU's GHCB page (scratch areas point into its shared buffer).
    fn ghcb_gpa(&self) -> u64;
    /// Copies `ghcb` to the shared GHCB page, performs VMGEXIT (on the development
    /// machines: writes the services page's VMGEXIT register), and copies the page back
    /// into `ghcb`.
    fn vmgexit(&mut self, ghcb: &mut Ghcb);
    /// GHCB MSR protocol: writes `request` to the GHCB MSR, performs VMGEXIT, and returns
    /// what the MSR holds afterwards.
    fn msr_exchange(&mut self, request: u64) -> u64;
    /// Writes the GHCB MSR without VMGEXIT (to point it at the GHCB page).
    fn write_msr(&mut self, value: u64);
}

/// Why the GHCB could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EstablishError {
    /// The hypervisor's answer was not the expected MSR protocol response.
    Protocol(GhcbError),
    /// The hypervisor does not speak our protocol version.
    Version {
        /// Lowest version it speaks.
        min: u16,
        /// Highest version it speaks.
        max: u16,
    },
}

impl core::fmt::Display for EstablishError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            EstablishError::Protocol(e) => write!(f, "GHCB MSR protocol: {e}"),
            EstablishError::Version { min, max } => write!(
                f,
                "the hypervisor speaks GHCB protocol {min}..={max}, not {PROTOCOL_VERSION}"
            ),
        }
    }
}

/// Negotiates the protocol version by the MSR protocol (SEV information request) and
/// points the GHCB MSR at the GHCB page. Returns the C-bit position the hypervisor
/// reports.
///
/// The GPA is not registered (GHCB GPA registration request): that request is defined
/// for SEV-SNP, and KVM terminates an SEV-ES guest that makes it
/// (`sev_handle_vmgexit_msr_protocol`).
pub fn establish(t: &mut impl Vmgexit) -> Result<u8, EstablishError> {
    let resp = MsrResponse::decode(t.msr_exchange(MsrRequest::SevInfo.encode()))
        .map_err(EstablishError::Protocol)?;
    let MsrResponse::SevInfo { max, min, cbit } = resp else {
        return Err(EstablishError::Protocol(GhcbError::MsrProtocol(
            resp.encode(),
        )));
    };
    if !(min..=max).contains(&PROTOCOL_VERSION) {
        return Err(EstablishError::Version { min, max });
    }
    t.write_msr(MsrRequest::Ghcb { gpa: t.ghcb_gpa() }.encode());
    Ok(cbit)
}

/// CPUID by the MSR protocol (four exchanges; subleaf 0), usable before the GHCB is set
/// up. Leaves the GHCB MSR pointing at the GHCB page again.
pub fn msr_cpuid(t: &mut impl Vmgexit, leaf: u32) -> Result<[u32; 4], GhcbError> {
    let mut out = [0u32; 4];
    for register in CpuidRegister::ALL {
        let raw = t.msr_exchange(
            MsrRequest::Cpuid {
                function: leaf,
                register,
            }
            .encode(),
        );
        match MsrResponse::decode(raw)? {
            MsrResponse::Cpuid { register: r, value } if r == register => {
                out[register.index()] = value
            }
            _ => return Err(GhcbError::MsrProtocol(raw)),
        }
    }
    t.write_msr(MsrRequest::Ghcb { gpa: t.ghcb_gpa() }.encode());
    Ok(out)
}

/// Asks the hypervisor to stop the guest (MSR protocol termination request; reason set
/// 0 = general). Returns only if the hypervisor ignores it.
pub fn terminate(t: &mut impl Vmgexit, set: u8, reason: u8) {
    t.msr_exchange(MsrRequest::Terminate { set, reason }.encode());
}

/// A GHCB client over a transport, with its private copy of the page.
pub struct GhcbClient<T> {
    transport: T,
    page: Ghcb,
}

fn low32(v: u64) -> u32 {
    v as u32
}

impl<T: Vmgexit> GhcbClient<T> {
    /// A client over `transport` (which must already be [`establish`]ed).
    pub fn new(transport: T) -> Self {
        GhcbClient {
            transport,
            page: Ghcb::zeroed(),
        }
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// The page as the hypervisor last returned it.
    pub fn page(&self) -> &Ghcb {
        &self.page
    }

    /// One request: fill, exit, check the answer.
    fn call(
        &mut self,
        code: ExitCode,
        info1: u64,
        info2: u64,
        fill: impl FnOnce(&mut Ghcb),
    ) -> Result<&Ghcb, GhcbError> {
        self.page.begin(PROTOCOL_VERSION);
        fill(&mut self.page);
        self.page.set(Field::SwExitCode, code.0);
        self.page.set(Field::SwExitInfo1, info1);
        self.page.set(Field::SwExitInfo2, info2);
        self.transport.vmgexit(&mut self.page);
        self.page.check_response(code, info1)?;
        Ok(&self.page)
    }

    fn scratch_gpa(&self) -> u64 {
        Ghcb::shared_buffer_gpa(self.transport.ghcb_gpa())
    }

    /// CPUID as the hypervisor configured it: `[eax, ebx, ecx, edx]`. `xcr0` is sent for
    /// leaf 0xD (whose sizes depend on it).
    pub fn cpuid(&mut self, leaf: u32, subleaf: u32, xcr0: u64) -> Result<[u32; 4], GhcbError> {
        let g = self.call(ExitCode::CPUID, 0, 0, |g| {
            g.set(Field::Rax, leaf.into());
            g.set(Field::Rcx, subleaf.into());
            if leaf == 0xd {
                g.set(Field::Xcr0, xcr0);
            }
        })?;
        Ok([
            low32(g.get(Field::Rax)),
            low32(g.get(Field::Rbx)),
            low32(g.get(Field::Rcx)),
            low32(g.get(Field::Rdx)),
        ])
    }

    /// RDMSR.
    pub fn rdmsr(&mut self, msr: u32) -> Result<u64, GhcbError> {
        let g = self.call(ExitCode::MSR, 0, 0, |g| g.set(Field::Rcx, msr.into()))?;
        Ok(u64::from(low32(g.get(Field::Rdx))) << 32 | u64::from(low32(g.get(Field::Rax))))
    }

    /// WRMSR.
    pub fn wrmsr(&mut self, msr: u32, value: u64) -> Result<(), GhcbError> {
        self.call(ExitCode::MSR, 1, 0, |g| {
            g.set(Field::Rcx, msr.into());
            g.set(Field::Rax, value & 0xffff_ffff);
            g.set(Field::Rdx, value >> 32);
        })
        .map(drop)
    }

    /// IN of `size` from `port`.
    pub fn io_in(&mut self, port: u16, size: Size) -> Result<u32, GhcbError> {
        let info = IoioInfo::new(port, size, Direction::In).encode();
        let g = self.call(ExitCode::IOIO, info, 0, |_| {})?;
        Ok((g.get(Field::Rax) & size.mask()) as u32)
    }

    /// OUT of the low `size` bytes of `value` to `port`.
    pub fn io_out(&mut self, port: u16, size: Size, value: u32) -> Result<(), GhcbError> {
        let info = IoioInfo::new(port, size, Direction::Out).encode();
        self.call(ExitCode::IOIO, info, 0, |g| {
            g.set(Field::Rax, u64::from(value) & size.mask())
        })
        .map(drop)
    }

    /// MMIO read of `out.len()` (1..=2032) bytes at `gpa`.
    pub fn mmio_read(&mut self, gpa: u64, out: &mut [u8]) -> Result<(), GhcbError> {
        let len = out.len();
        if !(1..=SHARED_BUFFER_LEN).contains(&len) {
            return Err(GhcbError::Length(len as u64));
        }
        let scratch = self.scratch_gpa();
        let g = self.call(ExitCode::MMIO_READ, gpa, len as u64, |g| {
            g.set(Field::SwScratch, scratch)
        })?;
        out.copy_from_slice(&g.shared_buffer()[..len]);
        Ok(())
    }

    /// MMIO write of `data` (1..=2032 bytes) at `gpa`.
    pub fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Result<(), GhcbError> {
        let len = data.len();
        if !(1..=SHARED_BUFFER_LEN).contains(&len) {
            return Err(GhcbError::Length(len as u64));
        }
        let scratch = self.scratch_gpa();
        self.call(ExitCode::MMIO_WRITE, gpa, len as u64, |g| {
            g.shared_buffer_mut()[..len].copy_from_slice(data);
            g.set(Field::SwScratch, scratch);
        })
        .map(drop)
    }

    /// VMMCALL with KVM's hypercall ABI: `nr` in RAX, arguments in RBX, RCX, RDX, RSI;
    /// returns RAX.
    pub fn vmmcall(&mut self, nr: u64, args: [u64; 4], cpl: u8) -> Result<u64, GhcbError> {
        let g = self.call(ExitCode::VMMCALL, 0, 0, |g| {
            g.set(Field::Rax, nr);
            g.set(Field::Rbx, args[0]);
            g.set(Field::Rcx, args[1]);
            g.set(Field::Rdx, args[2]);
            g.set(Field::Rsi, args[3]);
            g.set(Field::Cpl, cpl.into());
        })?;
        Ok(g.get(Field::Rax))
    }

    /// A page-state change: repeats the exit until the hypervisor has processed every
    /// entry (it may stop early), and fails on an error code or a round without
    /// progress. `desc` ends as the hypervisor last returned it.
    pub fn page_state_change(&mut self, desc: &mut PscDesc) -> Result<(), GhcbError> {
        let scratch = self.scratch_gpa();
        while !desc.pending().is_empty() {
            let before = desc.cur_entry;
            let mut encoded = [0u8; SHARED_BUFFER_LEN];
            let n = desc.encode(&mut encoded)?;
            let g = self.call(ExitCode::PSC, 0, 0, |g| {
                g.shared_buffer_mut()[..n].copy_from_slice(&encoded[..n]);
                g.set(Field::SwScratch, scratch);
            })?;
            let status = g.get(Field::SwExitInfo2);
            *desc = PscDesc::decode(g.shared_buffer())?;
            if status != psc::OK {
                return Err(GhcbError::PscFailed(status));
            }
            if desc.cur_entry <= before && !desc.pending().is_empty() {
                return Err(GhcbError::PscFailed(psc::ERROR_GENERIC));
            }
        }
        Ok(())
    }

    /// A guest-services call (sevmirror's own exit); returns the VMM's RAX.
    pub fn service(&mut self, call: Call, arg: u64, regs: [u64; 3]) -> Result<u64, GhcbError> {
        let g = self.call(ExitCode::SEVMIRROR_SERVICE, call.number(), arg, |g| {
            if call == Call::Fault {
                g.set(Field::Rbx, regs[0]);
                g.set(Field::Rcx, regs[1]);
                g.set(Field::Rdx, regs[2]);
            }
        })?;
        Ok(g.get(Field::Rax))
    }

    /// AP reset hold (56421 §4.1.9, `SVM_VMGEXIT_AP_RESET_HOLD`): the hypervisor holds this
    /// vCPU and answers only when it releases it, with a non-zero `sw_exit_info_2`.
    /// Returns whether it did (false: ask again, as Linux's `sev_es_ap_hlt_loop` does).
    pub fn ap_reset_hold(&mut self) -> Result<bool, GhcbError> {
        let g = self.call(ExitCode::AP_RESET_HOLD, 0, 0, |_| {})?;
        Ok(g.get_valid(Field::SwExitInfo2).is_some_and(|v| v != 0))
    }

    /// Console output through the services exit, up to a shared buffer per exit.
    pub fn console(&mut self, bytes: &[u8]) -> Result<(), GhcbError> {
        let scratch = self.scratch_gpa();
        for chunk in bytes.chunks(SHARED_BUFFER_LEN) {
            self.call(
                ExitCode::SEVMIRROR_SERVICE,
                Call::Console.number(),
                chunk.len() as u64,
                |g| {
                    g.shared_buffer_mut()[..chunk.len()].copy_from_slice(chunk);
                    g.set(Field::SwScratch, scratch);
                },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use guest_abi::ghcb::{
        msr::MSR_GHCB, psc::Entry, result, EventInjection, ValidBitmap, PROTOCOL_MAX, PROTOCOL_MIN,
    };

    /// GHCB page of the fake hypervisor's CPU.
    pub const GHCB_GPA: u64 = 0x81_0000;

    /// A fake hypervisor: records each request page, answers with `answer`.
    pub struct FakeHv<F> {
        pub answer: F,
        pub requests: [Option<Ghcb>; 4],
        pub count: usize,
        pub msr: u64,
        pub msr_log: [u64; 8],
        pub msr_count: usize,
    }

    impl<F: FnMut(&Ghcb, &mut Ghcb)> FakeHv<F> {
        pub fn new(answer: F) -> Self {
            FakeHv {
                answer,
                requests: [None, None, None, None],
                count: 0,
                msr: 0,
                msr_log: [0; 8],
                msr_count: 0,
            }
        }

        pub fn last(&self) -> &Ghcb {
            self.requests[(self.count - 1) % 4].as_ref().unwrap()
        }
    }

    impl<F: FnMut(&Ghcb, &mut Ghcb)> Vmgexit for FakeHv<F> {
        fn ghcb_gpa(&self) -> u64 {
            GHCB_GPA
        }
        fn vmgexit(&mut self, ghcb: &mut Ghcb) {
            assert_eq!(self.msr, GHCB_GPA, "the GHCB MSR must point at the page");
            let request = ghcb.clone();
            // A hypervisor clears the valid bitmap and returns only what it sets.
            let mut reply = ghcb.clone();
            reply.clear_valid_bitmap();
            reply.set(Field::SwExitInfo1, result::NO_ACTION);
            reply.set(Field::SwExitInfo2, 0);
            (self.answer)(&request, &mut reply);
            self.requests[self.count % 4] = Some(request);
            self.count += 1;
            *ghcb = reply;
        }
        fn msr_exchange(&mut self, request: u64) -> u64 {
            self.msr_log[self.msr_count % 8] = request;
            self.msr_count += 1;
            self.msr = match MsrRequest::decode(request) {
                Ok(MsrRequest::SevInfo) => MsrResponse::SevInfo {
                    max: PROTOCOL_MAX,
                    min: PROTOCOL_MIN,
                    cbit: 0,
                }
                .encode(),
                Ok(MsrRequest::Cpuid { function, register }) => MsrResponse::Cpuid {
                    register,
                    value: function + register.index() as u32,
                }
                .encode(),
                _ => 0,
            };
            self.msr
        }
        fn write_msr(&mut self, value: u64) {
            self.msr = value;
        }
    }

    /// A client whose fake hypervisor is set up.
    pub fn client<F: FnMut(&Ghcb, &mut Ghcb)>(answer: F) -> GhcbClient<FakeHv<F>> {
        let mut hv = FakeHv::new(answer);
        establish(&mut hv).unwrap();
        GhcbClient::new(hv)
    }

    #[test]
    fn establish_negotiates_the_version_and_points_the_msr_at_the_page() {
        let mut hv = FakeHv::new(|_: &Ghcb, _: &mut Ghcb| {});
        assert_eq!(establish(&mut hv), Ok(0));
        assert_eq!(hv.msr_log[0], MsrRequest::SevInfo.encode());
        assert_eq!(hv.msr_count, 1, "no GPA registration under SEV-ES");
        assert_eq!(hv.msr, GHCB_GPA);
        assert_eq!(MSR_GHCB, 0xc001_0130);
    }

    #[test]
    fn establish_refuses_a_hypervisor_without_our_version() {
        struct Old;
        impl Vmgexit for Old {
            fn ghcb_gpa(&self) -> u64 {
                GHCB_GPA
            }
            fn vmgexit(&mut self, _: &mut Ghcb) {}
            fn msr_exchange(&mut self, _: u64) -> u64 {
                MsrResponse::SevInfo {
                    max: 1,
                    min: 1,
                    cbit: 51,
                }
                .encode()
            }
            fn write_msr(&mut self, _: u64) {
                panic!("must not point the MSR at a GHCB it cannot use")
            }
        }
        assert_eq!(
            establish(&mut Old),
            Err(EstablishError::Version { min: 1, max: 1 })
        );
        struct Garbage;
        impl Vmgexit for Garbage {
            fn ghcb_gpa(&self) -> u64 {
                GHCB_GPA
            }
            fn vmgexit(&mut self, _: &mut Ghcb) {}
            fn msr_exchange(&mut self, request: u64) -> u64 {
                request
            }
            fn write_msr(&mut self, _: u64) {}
        }
        assert_eq!(
            establish(&mut Garbage),
            Err(EstablishError::Protocol(GhcbError::MsrProtocol(2)))
        );
    }

    #[test]
    fn msr_cpuid_asks_for_each_register() {
        let mut hv = FakeHv::new(|_: &Ghcb, _: &mut Ghcb| {});
        assert_eq!(
            msr_cpuid(&mut hv, 0x8000_001f),
            Ok([0x8000_001f, 0x8000_0020, 0x8000_0021, 0x8000_0022])
        );
        assert_eq!(hv.msr_count, 4);
        assert_eq!(hv.msr, GHCB_GPA, "restored for the next GHCB exit");
    }

    #[test]
    fn cpuid_sends_leaf_and_subleaf_and_reads_four_registers() {
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            assert_eq!(req.check_request(), Ok(ExitCode::CPUID));
            let leaf = req.get(Field::Rax);
            reply.set(Field::Rax, leaf + 1);
            reply.set(Field::Rbx, 0xffff_ffff_0000_0002);
            reply.set(Field::Rcx, req.get(Field::Rcx));
            reply.set(Field::Rdx, 4);
        });
        assert_eq!(c.cpuid(7, 1, 1), Ok([8, 2, 1, 4]));
        let req = c.transport().last().clone();
        assert_eq!(
            req.valid_bitmap(),
            ValidBitmap::of(&[
                Field::Rax,
                Field::Rcx,
                Field::SwExitCode,
                Field::SwExitInfo1,
                Field::SwExitInfo2
            ]),
            "only what CPUID needs is shared"
        );
        assert_eq!(c.cpuid(0xd, 0, 7), Ok([0xe, 2, 0, 4]));
        assert_eq!(c.transport().last().get_valid(Field::Xcr0), Some(7));
    }

    #[test]
    fn answers_missing_a_returned_field_are_refused() {
        let mut c = client(|_: &Ghcb, reply: &mut Ghcb| {
            reply.set(Field::Rax, 1);
            reply.set(Field::Rbx, 1);
            reply.set(Field::Rcx, 1);
        });
        assert_eq!(c.cpuid(1, 0, 1), Err(GhcbError::MissingField(Field::Rdx)));
    }

    #[test]
    fn msr_reads_combine_edx_eax_and_writes_split_them() {
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            if req.get(Field::SwExitInfo1) == 0 {
                assert_eq!(req.get(Field::Rcx), 0xc001_0131);
                reply.set(Field::Rax, 0xffff_ffff_0000_0003);
                reply.set(Field::Rdx, 0x1);
            } else {
                assert_eq!(
                    (
                        req.get(Field::Rcx),
                        req.get(Field::Rax),
                        req.get(Field::Rdx)
                    ),
                    (0x1b, 0xfee0_0d00, 0x1)
                );
            }
        });
        assert_eq!(c.rdmsr(0xc001_0131), Ok(0x1_0000_0003));
        assert_eq!(c.wrmsr(0x1b, 0x1_fee0_0d00), Ok(()));
        assert_eq!(c.transport().last().check_request(), Ok(ExitCode::MSR));
    }

    #[test]
    fn a_refused_msr_comes_back_as_the_exception_to_raise() {
        let mut c = client(|_: &Ghcb, reply: &mut Ghcb| {
            reply.set(Field::SwExitInfo1, result::ISSUE_EXCEPTION);
            reply.set(Field::SwExitInfo2, EventInjection::GP.0);
        });
        assert_eq!(
            c.rdmsr(0x1234),
            Err(GhcbError::Exception(EventInjection::GP))
        );
    }

    #[test]
    fn port_io_uses_the_ioio_encoding() {
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            let io = IoioInfo::decode(req.get(Field::SwExitInfo1)).unwrap();
            if io.dir == Direction::In {
                reply.set(Field::Rax, 0xdead_beef_cafe_f00d);
            } else {
                assert_eq!(req.get_valid(Field::Rax), Some(0x34));
            }
        });
        assert_eq!(c.io_in(0x511, Size::Byte), Ok(0x0d));
        assert_eq!(
            c.transport().last().get(Field::SwExitInfo1),
            IoioInfo::new(0x511, Size::Byte, Direction::In).encode()
        );
        assert_eq!(c.io_in(0x514, Size::Dword), Ok(0xcafe_f00d));
        assert_eq!(c.io_out(0x80, Size::Byte, 0x1234), Ok(()));
    }

    #[test]
    fn mmio_goes_through_the_shared_buffer() {
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            let len = req.get(Field::SwExitInfo2);
            let range = req.scratch(GHCB_GPA, len).unwrap();
            if req.get(Field::SwExitCode) == ExitCode::MMIO_READ.0 {
                for (i, b) in reply.shared_buffer_mut()[range].iter_mut().enumerate() {
                    *b = i as u8 + 1;
                }
            } else {
                assert_eq!(&req.shared_buffer()[range], b"\x2a\x00\x00\x00");
            }
        });
        let mut out = [0u8; 8];
        assert_eq!(c.mmio_read(0xfe00_0018, &mut out), Ok(()));
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(c.transport().last().get(Field::SwScratch), GHCB_GPA + 0x800);
        assert_eq!(c.mmio_write(0xfe00_0000, &42u32.to_le_bytes()), Ok(()));
        assert_eq!(c.mmio_read(0, &mut []), Err(GhcbError::Length(0)));
        assert_eq!(
            c.mmio_write(0, &[0; SHARED_BUFFER_LEN + 1]),
            Err(GhcbError::Length(SHARED_BUFFER_LEN as u64 + 1))
        );
    }

    #[test]
    fn vmmcall_shares_kvm_hypercall_registers_and_cpl() {
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            assert_eq!(req.check_request(), Ok(ExitCode::VMMCALL));
            assert_eq!(
                [
                    req.get(Field::Rax),
                    req.get(Field::Rbx),
                    req.get(Field::Rcx),
                    req.get(Field::Rdx),
                    req.get(Field::Cpl)
                ],
                [12, 0x81_0000, 32, 0, 3]
            );
            reply.set(Field::Rax, 0);
        });
        assert_eq!(c.vmmcall(12, [0x81_0000, 32, 0, 0], 3), Ok(0));
    }

    #[test]
    fn page_state_changes_repeat_until_done_and_stop_on_errors() {
        // The hypervisor processes at most two entries per exit.
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            let mut d = PscDesc::decode(req.shared_buffer()).unwrap();
            for i in d.pending().take(2) {
                d.complete(i).unwrap();
            }
            d.encode(reply.shared_buffer_mut()).unwrap();
        });
        let mut d = PscDesc::new();
        for gfn in 0x810..0x815 {
            d.push(Entry::new(
                gfn,
                psc::Operation::Shared,
                psc::PageSize::Size4K,
            ))
            .unwrap();
        }
        assert_eq!(c.page_state_change(&mut d), Ok(()));
        assert_eq!(c.transport().count, 3);
        assert!(d.pending().is_empty());

        let mut failing = client(|_: &Ghcb, reply: &mut Ghcb| {
            reply.set(Field::SwExitInfo2, psc::ERROR_INVALID_ENTRY);
        });
        let mut d = PscDesc::new();
        d.push(Entry::new(
            1,
            psc::Operation::Private,
            psc::PageSize::Size4K,
        ))
        .unwrap();
        assert_eq!(
            failing.page_state_change(&mut d),
            Err(GhcbError::PscFailed(psc::ERROR_INVALID_ENTRY))
        );
        // A hypervisor that returns the descriptor untouched makes no progress.
        let mut lazy = client(|_: &Ghcb, _: &mut Ghcb| {});
        let mut d = PscDesc::new();
        d.push(Entry::new(
            1,
            psc::Operation::Private,
            psc::PageSize::Size4K,
        ))
        .unwrap();
        assert_eq!(
            lazy.page_state_change(&mut d),
            Err(GhcbError::PscFailed(psc::ERROR_GENERIC))
        );
    }

    #[test]
    fn ap_reset_hold_reports_whether_the_hypervisor_released_the_vcpu() {
        let mut released = 0;
        let mut c = client(move |req: &Ghcb, reply: &mut Ghcb| {
            assert_eq!(req.check_request(), Ok(ExitCode::AP_RESET_HOLD));
            reply.set(Field::SwExitInfo2, released);
            released += 1;
        });
        // Zero: still held (a spurious wake-up); the guest asks again.
        assert_eq!(c.ap_reset_hold(), Ok(false));
        assert_eq!(c.ap_reset_hold(), Ok(true));
        let mut c = client(|_: &Ghcb, reply: &mut Ghcb| {
            reply.set(Field::SwExitInfo1, result::MALFORMED_INPUT);
        });
        assert!(c.ap_reset_hold().is_err());
    }

    #[test]
    fn services_carry_the_call_number_argument_and_bytes() {
        let mut seen = [0u64; 3];
        let mut c = client(|req: &Ghcb, reply: &mut Ghcb| {
            assert_eq!(req.check_request(), Ok(ExitCode::SEVMIRROR_SERVICE));
            reply.set(Field::Rax, req.get(Field::SwExitInfo1) * 100);
        });
        assert_eq!(c.service(Call::Event, 4, [0; 3]), Ok(300));
        assert_eq!(c.service(Call::Fault, 14 | 3 << 8, [1, 2, 3]), Ok(500));
        let last = c.transport().last().clone();
        seen[0] = last.get(Field::Rbx);
        seen[1] = last.get(Field::Rcx);
        seen[2] = last.get(Field::Rdx);
        assert_eq!(seen, [1, 2, 3]);
        let text = [b'x'; SHARED_BUFFER_LEN + 10];
        assert_eq!(c.console(&text), Ok(()));
        assert_eq!(c.transport().count, 4, "two exits for 2042 bytes");
        assert_eq!(c.transport().last().get(Field::SwExitInfo2), 10);
    }
}
