//! VMGEXIT for SEV-ES vCPUs on the emulated platform: the vCPU loop as the [`GhcbHost`] of
//! `devices::ghcb`, doing what KVM's SEV-ES code (`sev_handle_vmgexit`) does on hardware.
//!
//! Every request is carried out by the same code that serves the plain exits: port I/O by
//! the port bus, MMIO to the guest-services page and the services calls by the services
//! register writes they stand for, hypercalls by the hypercall handler. Only the channel
//! differs: the values come from the GHCB, never from the vCPU's registers. MSRs are what
//! KVM serves itself: SEV_STATUS, and the MSRs KVM emulates (local APIC, TSC deadline),
//! forwarded to KVM; an INIT or SIPI written to the x2APIC ICR goes to the target APs as
//! KVM's SEV-ES code handles it (`kvm::protected`: the first SIPI starts a protected AP at
//! its VMSA's entry).

use super::{
    hypercall, EsContext, ExitStats, Flow, Hold, VcpuCommand, VcpuContext, VcpuError, VcpuThread,
    VmEvent,
};
use crate::{
    devices::{
        ghcb::{cpuid_lookup, GhcbHost, GuestMode, MsrExchange, ServiceRequest, VmgexitOutcome},
        services::ServicesLatch,
        PioOutcome,
    },
    kvm::{
        protected::{decode_icr, IcrWrite, MSR_APIC_BASE, MSR_X2APIC_ICR},
        KvmVcpu,
    },
    memory::Visibility,
    sev::MSR_SEV_STATUS,
};
use guest_abi::ghcb::ExitCode;
use guest_abi::{layout, services as regs};
use kvm_bindings::kvm_cpuid_entry2;
use std::sync::atomic::Ordering;

/// SEV_STATUS bit 1: SEV-ES is active.
const SEV_STATUS_ES: u64 = 1 << 1;

/// The GHCB rules for this guest, or `None` if it is not an SEV-ES guest (which then has
/// no GHCB: VMGEXIT is ignored and the GHCB MSR raises #GP, as on hardware).
pub(super) fn guest_mode(ctx: &VcpuContext) -> Option<GuestMode> {
    ctx.sev_status
        .filter(|s| s & SEV_STATUS_ES != 0)
        .map(|_| GuestMode::SevEs)
}

struct Host<'a> {
    ctx: &'a VcpuContext,
    latch: &'a mut ServicesLatch,
    cpuid: &'a [kvm_cpuid_entry2],
    vcpu: &'a KvmVcpu,
    id: u32,
    /// Set when a request ends the VM (exit, fault, debug-exit port).
    end: Option<VmEvent>,
    /// The host's hold request; `told` set when a checkpoint question is answered "hold".
    hold: &'a mut Hold,
    /// Set when the vCPU asks for AP reset hold.
    holds: bool,
}

/// x2APIC mode (IA32_APIC_BASE.EXTD): the x2APIC MSRs exist only then.
const APIC_BASE_EXTD: u64 = 1 << 10;

impl Host<'_> {
    /// A services register write, served as if the guest had made it on the page.
    fn services_write(&mut self, offset: u64, data: &[u8]) {
        if offset == regs::VMGEXIT {
            // A GHCB request cannot ring VMGEXIT again: it would serve the same page
            // recursively.
            log::debug!(
                "vCPU {}: VMGEXIT requested from inside a GHCB exit",
                self.id
            );
            return;
        }
        let flow = VcpuThread::services_write(self.ctx, self.latch, self.id, offset, data);
        if let Flow::End(event) = flow {
            self.end.get_or_insert(event);
        }
    }

    fn services_offset(&self, gpa: u64, len: usize) -> Option<u64> {
        gpa.checked_sub(self.ctx.services_gpa)
            .filter(|&o| o.saturating_add(len as u64) <= layout::PAGE_SIZE)
    }
}

impl GhcbHost for Host<'_> {
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        cpuid_lookup(self.cpuid, leaf, subleaf)
    }

    fn rdmsr(&mut self, index: u32) -> Option<u64> {
        match index {
            MSR_SEV_STATUS => self.ctx.sev_status,
            _ => self.vcpu.guest_msr_read(index),
        }
    }

    fn wrmsr(&mut self, index: u32, value: u64) -> bool {
        if index == MSR_X2APIC_ICR {
            if let (IcrWrite::Start(ipi, targets), Some(es)) = (decode_icr(value), &self.ctx.es) {
                // The ICR is an x2APIC register: without x2APIC mode the write is a #GP.
                let x2apic = self
                    .vcpu
                    .guest_msr_read(MSR_APIC_BASE)
                    .is_some_and(|b| b & APIC_BASE_EXTD != 0);
                if x2apic {
                    send_start_ipi(es, self.id, ipi, targets);
                }
                return x2apic;
            }
        }
        self.vcpu.guest_msr_write(index, value)
    }

    fn io_in(&mut self, port: u16, data: &mut [u8]) {
        self.ctx.bus.read(port, data);
    }

    fn io_out(&mut self, port: u16, data: &[u8]) {
        if let PioOutcome::DebugExit(status) = self.ctx.bus.write(port, data) {
            self.end.get_or_insert(VmEvent::GuestExit {
                vcpu: self.id,
                status,
            });
        }
    }

    fn mmio_read(&mut self, gpa: u64, data: &mut [u8]) {
        let value = match self.services_offset(gpa, data.len()) {
            Some(regs::REQUEST) => self.ctx.guest_request.swap(0, Ordering::AcqRel),
            Some(offset) => self.latch.read(offset),
            None => u64::MAX,
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(i).copied().unwrap_or(0xff);
        }
    }

    fn mmio_write(&mut self, gpa: u64, data: &[u8]) {
        match self.services_offset(gpa, data.len()) {
            Some(offset) => self.services_write(offset, data),
            None => log::debug!(
                "vCPU {}: ignored GHCB MMIO write of {} bytes at {gpa:#x}",
                self.id,
                data.len()
            ),
        }
    }

    fn hypercall(&mut self, nr: u64, args: [u64; 4]) -> u64 {
        hypercall(self.ctx, nr, [args[0], args[1], args[2]])
    }

    fn convert(&mut self, gpa: u64, pages: u64, v: Visibility) -> bool {
        pages
            .checked_mul(layout::PAGE_SIZE)
            .is_some_and(|len| self.ctx.view.convert(gpa, len, v).is_ok())
    }

    fn service(&mut self, req: ServiceRequest) -> u64 {
        match req {
            ServiceRequest::Console(bytes) => self.services_write(regs::CONSOLE, &bytes),
            ServiceRequest::Exit(status) => self.services_write(regs::EXIT, &status.to_le_bytes()),
            ServiceRequest::Event(e) => self.services_write(regs::EVENT, &e.0.to_le_bytes()),
            ServiceRequest::Doorbell(s) => self.services_write(regs::DOORBELL, &s.to_le_bytes()),
            ServiceRequest::Fault(f) => {
                self.services_write(regs::FAULT_RIP, &f.rip.to_le_bytes());
                self.services_write(regs::FAULT_ERROR, &f.error.to_le_bytes());
                self.services_write(regs::FAULT_ADDR, &f.addr.to_le_bytes());
                let v = u64::from(f.vector) | u64::from(f.cpl) << 8;
                self.services_write(regs::FAULT, &v.to_le_bytes());
            }
            ServiceRequest::TakeRequest => {
                return self.ctx.guest_request.swap(0, Ordering::AcqRel);
            }
            ServiceRequest::Checkpoint => {
                // Only an SEV-ES guest's vCPUs can be asked (this VMM serves GHCB exits
                // for no other guest).
                if self.hold.requested {
                    self.hold.told = true;
                    return 1;
                }
            }
        }
        0
    }

    fn ap_reset_hold(&mut self) {
        self.holds = true;
    }
}

/// Hands an INIT or SIPI to the vCPUs it targets (their threads apply it: `kvm::protected`).
fn send_start_ipi(
    es: &EsContext,
    sender: u32,
    ipi: crate::kvm::protected::StartIpi,
    targets: crate::kvm::protected::IpiTargets,
) {
    for (id, peer) in (0u32..).zip(es.peers.iter()) {
        if targets.includes(id, sender) {
            // A vCPU whose thread has ended has no use for it.
            let _ = peer.send(VcpuCommand::StartIpi(ipi));
        }
    }
}

/// A write to the services page's VMGEXIT register: serve the vCPU's GHCB exit.
pub(super) fn vmgexit(
    ctx: &VcpuContext,
    latch: &mut ServicesLatch,
    stats: &mut ExitStats,
    cpuid: &[kvm_cpuid_entry2],
    vcpu: &KvmVcpu,
    hold: &mut Hold,
) -> Flow {
    let id = vcpu.id();
    let Some(mode) = guest_mode(ctx) else {
        log::debug!("vCPU {id}: VMGEXIT from a guest without SEV-ES ignored");
        return Flow::Continue;
    };
    // The C-bit position the guest's CPUID leaf 0x8000001F announces (EBX[5:0]).
    let cbit = (cpuid_lookup(cpuid, 0x8000_001f, 0)[1] & 0x3f) as u8;
    let mut msr = latch.ghcb_msr;
    let mut host = Host {
        ctx,
        latch,
        cpuid,
        vcpu,
        id,
        end: None,
        hold,
        holds: false,
    };
    let result = crate::devices::ghcb::vmgexit(&mut msr, mode, cbit, &ctx.view, &mut host);
    let end = host.end.take();
    let holds = host.holds;
    latch.ghcb_msr = msr;
    let fail = |error| Flow::End(VmEvent::Failed { vcpu: id, error });
    match &result {
        Ok(VmgexitOutcome::Msr(_)) => *stats.ghcb.entry("msr-protocol").or_default() += 1,
        Ok(VmgexitOutcome::Ghcb { code, refused }) => {
            let name = ExitCode(*code).name().unwrap_or("unknown");
            *stats.ghcb.entry(name).or_default() += 1;
            stats.ghcb_refused += u64::from(refused.is_some());
        }
        Err(_) => {}
    }
    match result {
        Err(e) => fail(VcpuError::Vmgexit(e)),
        Ok(VmgexitOutcome::Msr(MsrExchange::Terminate { set, reason })) => {
            fail(VcpuError::GuestTerminated { set, reason })
        }
        Ok(VmgexitOutcome::Msr(MsrExchange::ApResetHold)) => Flow::Held,
        Ok(_) if holds => Flow::Held,
        Ok(_) => end.map_or(Flow::Continue, Flow::End),
    }
}
