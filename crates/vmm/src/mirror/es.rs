//! A helper vCPU of an SEV-ES guest's mirror: its exits come only through its own GHCB
//! (in the helper region, shared) and are served from the GHCB alone, as KVM's SEV-ES code
//! serves any vCPU's (`devices::ghcb`). The doorbell is sevmirror's Doorbell service exit;
//! the entry's MSR-protocol exchanges are its CPUID questions, an AP reset hold when it
//! finds no helper prepared yet ([`HelperError::NotReady`]: the VMM runs it again later;
//! the MSR already holds the "released" answer), and a termination request when it cannot
//! go on. Every other exit is one a helper could only make by bypassing its GHCB (strict
//! mode, as for the guest's own vCPUs).

use super::{HelperError, HelperVcpu};
use crate::{
    devices::ghcb::{cpuid_lookup, vmgexit, GhcbHost, GuestMode, MsrExchange, ServiceRequest},
    kvm::RunResult,
    memory::Visibility,
    sev::MSR_SEV_STATUS,
};
use guest_abi::{ghcb::msr::MSR_GHCB, services as regs};
use helper_abi::mailbox::doorbell;
use kvm_bindings::kvm_cpuid_entry2;
use kvm_ioctls::VcpuExit;
use std::time::Instant;

/// SEV_STATUS of an SEV-ES guest: SEV and SEV-ES enabled.
const SEV_STATUS_ES: u64 = 3;
/// `-KVM_ENOSYS`: the helper makes no hypercalls.
const HC_ENOSYS: u64 = (-1000i64) as u64;

/// What serving an SEV-ES helper's GHCB needs.
pub(super) struct HelperEs {
    /// The helper vCPU's CPUID table (its CPUID questions are answered from it).
    cpuid: Vec<kvm_cpuid_entry2>,
}

impl HelperEs {
    pub(super) fn new(cpuid: Vec<kvm_cpuid_entry2>) -> HelperEs {
        HelperEs { cpuid }
    }
}

/// The VMM as an SEV-ES helper's GHCB host: the doorbell and the helper's reports; the
/// helper needs nothing else of the host, so everything else is refused.
#[derive(Default)]
struct HelperHost<'a> {
    cpuid: &'a [kvm_cpuid_entry2],
    /// The doorbell's status, once rung.
    doorbell: Option<u64>,
    /// A report that ends the call.
    failure: Option<HelperError>,
    /// The helper asked for AP reset hold through its GHCB.
    holds: bool,
    index: u16,
}

impl GhcbHost for HelperHost<'_> {
    fn cpuid(&mut self, leaf: u32, subleaf: u32) -> [u32; 4] {
        cpuid_lookup(self.cpuid, leaf, subleaf)
    }

    fn rdmsr(&mut self, index: u32) -> Option<u64> {
        (index == MSR_SEV_STATUS).then_some(SEV_STATUS_ES)
    }

    fn wrmsr(&mut self, _index: u32, _value: u64) -> bool {
        false
    }

    fn io_in(&mut self, _port: u16, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn io_out(&mut self, port: u16, _data: &[u8]) {
        log::debug!("helper {}: ignored OUT to {port:#x}", self.index);
    }

    fn mmio_read(&mut self, _gpa: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn mmio_write(&mut self, gpa: u64, _data: &[u8]) {
        log::debug!("helper {}: ignored MMIO write at {gpa:#x}", self.index);
    }

    fn hypercall(&mut self, _nr: u64, _args: [u64; 4]) -> u64 {
        HC_ENOSYS
    }

    fn convert(&mut self, _gpa: u64, _pages: u64, _v: Visibility) -> bool {
        // The helper never converts pages; only the guest's own vCPUs may.
        false
    }

    fn service(&mut self, req: ServiceRequest) -> u64 {
        match req {
            ServiceRequest::Doorbell(status) => {
                self.doorbell.get_or_insert(status);
            }
            ServiceRequest::Console(bytes) => {
                log::debug!("helper {}: {}", self.index, String::from_utf8_lossy(&bytes));
            }
            ServiceRequest::Exit(status) => {
                self.failure.get_or_insert(HelperError::Stopped(status));
            }
            ServiceRequest::Fault(report) => {
                self.failure.get_or_insert(HelperError::Fault(report));
            }
            ServiceRequest::Event(_) | ServiceRequest::TakeRequest | ServiceRequest::Checkpoint => {
            }
        }
        0
    }

    fn ap_reset_hold(&mut self) {
        self.holds = true;
    }
}

impl HelperVcpu {
    /// The run loop of an SEV-ES helper vCPU (see the module documentation); returns the
    /// doorbell's status.
    pub(super) fn run_loop_es(&mut self, deadline: Instant) -> Result<u64, HelperError> {
        let vmgexit_gpa = self.services_gpa + regs::VMGEXIT;
        loop {
            // VMRUN: the helper's state comes from its VMSA if KVM does not hold it.
            self.vcpu.vmrun()?;
            let strict = |what: String| Err(HelperError::EsStrict(what));
            match self.vcpu.run()? {
                RunResult::Exit(VcpuExit::MmioWrite(addr, _)) if addr == vmgexit_gpa => {
                    if let Some(status) = self.serve_ghcb()? {
                        return Ok(status);
                    }
                }
                RunResult::Exit(VcpuExit::X86Rdmsr(msr)) => match msr.index {
                    MSR_SEV_STATUS => {
                        *msr.data = SEV_STATUS_ES;
                        *msr.error = 0;
                    }
                    MSR_GHCB => {
                        *msr.data = self.latch.ghcb_msr.read();
                        *msr.error = 0;
                    }
                    index => return strict(format!("RDMSR {index:#x}")),
                },
                RunResult::Exit(VcpuExit::X86Wrmsr(msr)) => match msr.index {
                    MSR_GHCB => {
                        self.latch.ghcb_msr.write(msr.data);
                        *msr.error = 0;
                    }
                    index => return strict(format!("WRMSR {index:#x}")),
                },
                RunResult::Exit(VcpuExit::MmioWrite(addr, data)) => {
                    return strict(format!("MMIO write of {} bytes at {addr:#x}", data.len()))
                }
                RunResult::Exit(VcpuExit::MmioRead(addr, data)) => {
                    return strict(format!("MMIO read of {} bytes at {addr:#x}", data.len()))
                }
                RunResult::Exit(VcpuExit::IoOut(port, _) | VcpuExit::IoIn(port, _)) => {
                    return strict(format!("port I/O at {port:#x}"))
                }
                RunResult::Exit(exit) => {
                    return Err(HelperError::UnexpectedExit {
                        exit: format!("{exit:?}"),
                        // The registers are the VMSA's: the host cannot read them.
                        rip: 0,
                    });
                }
                RunResult::Interrupted => {
                    self.vcpu.set_immediate_exit(false);
                    if Instant::now() >= deadline {
                        return Err(HelperError::Timeout(self.timeout));
                    }
                }
                RunResult::Again => {}
            }
        }
    }

    /// One VMGEXIT: the MSR protocol or one request from the helper's GHCB. The doorbell's
    /// status, if it rang.
    fn serve_ghcb(&mut self) -> Result<Option<u64>, HelperError> {
        let Some(es) = &self.es else {
            return Ok(None);
        };
        let cbit = (cpuid_lookup(&es.cpuid, 0x8000_001f, 0)[1] & 0x3f) as u8;
        let mut host = HelperHost {
            cpuid: &es.cpuid,
            index: self.index,
            ..HelperHost::default()
        };
        let mut msr = self.latch.ghcb_msr;
        // A GHCB of the helper's own: its slot's page in the helper region, never one of
        // the guest's (the MSR protocol's values have low bits set; a GPA has none).
        let value = msr.read();
        let d = &self.descriptor;
        let own = value >= d.ghcb_gpa
            && value < d.ghcb_gpa + u64::from(d.max_vcpus) * guest_abi::layout::PAGE_SIZE;
        if value & 0xfff == 0 && !own {
            return Err(HelperError::EsStrict(format!(
                "VMGEXIT with a GHCB at {value:#x}, outside the helper's GHCB pages"
            )));
        }
        let outcome = vmgexit(&mut msr, GuestMode::SevEs, cbit, &self.view, &mut host)
            .map_err(HelperError::Vmgexit)?;
        self.latch.ghcb_msr = msr;
        if let Some(e) = host.failure {
            return Err(e);
        }
        match outcome {
            crate::devices::ghcb::VmgexitOutcome::Msr(MsrExchange::ApResetHold) => {
                Err(HelperError::NotReady)
            }
            crate::devices::ghcb::VmgexitOutcome::Msr(MsrExchange::Terminate {
                set: doorbell::ES_TERMINATE_SET,
                reason: doorbell::ES_NO_SLOT,
            }) => Err(HelperError::NoSlot),
            crate::devices::ghcb::VmgexitOutcome::Msr(MsrExchange::Terminate { set, reason }) => {
                Err(HelperError::Terminated { set, reason })
            }
            _ if host.holds => Err(HelperError::NotReady),
            _ => Ok(host.doorbell),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::services::FaultReport;

    #[test]
    fn the_helper_host_takes_the_doorbell_and_refuses_the_rest() {
        let mut h = HelperHost::default();
        assert_eq!(h.rdmsr(MSR_SEV_STATUS), Some(3));
        assert_eq!(h.rdmsr(0x1b), None, "#GP: the helper reads no other MSR");
        assert!(!h.wrmsr(0x830, 0));
        assert!(!h.convert(0x10_0000, 1, Visibility::Shared));
        assert_eq!(h.hypercall(12, [0; 4]), HC_ENOSYS);
        assert_eq!(h.service(ServiceRequest::Checkpoint), 0);
        h.service(ServiceRequest::Doorbell(doorbell::ready(1)));
        h.service(ServiceRequest::Doorbell(doorbell::DONE));
        assert_eq!(
            h.doorbell,
            Some(doorbell::ready(1)),
            "the first ring counts"
        );
        h.service(ServiceRequest::Fault(FaultReport {
            vector: 14,
            cpl: 3,
            rip: 0,
            error: 0,
            addr: 0,
        }));
        assert!(matches!(h.failure, Some(HelperError::Fault(_))));
        h.ap_reset_hold();
        assert!(h.holds);
    }
}
