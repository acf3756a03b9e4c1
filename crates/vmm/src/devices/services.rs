//! The guest-services page (guest-abi `services`), decoded per vCPU.
//!
//! Every access to the page exits to the vCPU's own thread, so the argument latches live
//! in a per-vCPU [`ServicesLatch`] and vCPUs never see each other's values. Decoding is
//! pure; the vCPU loop carries out what it returns.

use super::ghcb::GhcbMsr;
use guest_abi::services::{self as regs, Event};
use std::fmt;

/// Latched registers of one vCPU.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServicesLatch {
    hcall_args: [u64; 3],
    hcall_result: u64,
    fault_rip: u64,
    fault_error: u64,
    fault_addr: u64,
    /// The vCPU's GHCB MSR (SEV-ES), which VMGEXIT reads.
    pub ghcb_msr: GhcbMsr,
}

/// A fatal guest exception, as the firmware's CPL0 handler reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultReport {
    /// Exception vector.
    pub vector: u8,
    /// Privilege level the exception came from.
    pub cpl: u8,
    /// Faulting instruction.
    pub rip: u64,
    /// Error code (0 where the exception has none).
    pub error: u64,
    /// CR2 (meaningful for page faults).
    pub addr: u64,
}

/// Short mnemonic of an exception vector.
pub fn exception_name(vector: u8) -> &'static str {
    match vector {
        0 => "#DE divide error",
        1 => "#DB debug",
        2 => "NMI",
        3 => "#BP breakpoint",
        4 => "#OF overflow",
        5 => "#BR bound range",
        6 => "#UD invalid opcode",
        7 => "#NM device not available",
        8 => "#DF double fault",
        10 => "#TS invalid TSS",
        11 => "#NP segment not present",
        12 => "#SS stack fault",
        13 => "#GP general protection",
        14 => "#PF page fault",
        16 => "#MF x87 error",
        17 => "#AC alignment check",
        18 => "#MC machine check",
        19 => "#XM SIMD exception",
        20 => "#VE virtualization exception",
        21 => "#CP control protection",
        29 => "#VC VMM communication",
        30 => "#SX security exception",
        _ => "reserved exception",
    }
}

impl fmt::Display for FaultReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "guest exception {} (vector {}) at rip {:#x} (CPL{}), error code {:#x}",
            exception_name(self.vector),
            self.vector,
            self.rip,
            self.cpl,
            self.error
        )?;
        if self.vector == 14 {
            write!(f, ", address {:#x}", self.addr)?;
        }
        Ok(())
    }
}

/// What a write to the page asks the VMM to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServicesRequest<'a> {
    /// Nothing beyond latching a value.
    None,
    /// Append bytes to the console.
    Console(&'a [u8]),
    /// Stop the VM with this status.
    Exit(u64),
    /// A fatal guest exception.
    Fault(FaultReport),
    /// Run hypercall `nr` with the latched arguments; the result goes to `set_result`.
    Hypercall {
        /// Call number.
        nr: u64,
        /// Latched arguments.
        args: [u64; 3],
    },
    /// A boot milestone.
    Event(Event),
    /// The migration helper finished a request.
    Doorbell(u64),
    /// VMGEXIT (SEV-ES): serve this vCPU's GHCB exit (see `super::ghcb::vmgexit`).
    Vmgexit,
    /// A write to an undefined register.
    Unknown {
        /// Offset in the page.
        offset: u64,
    },
}

fn value(data: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = data.len().min(8);
    word[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(word)
}

impl ServicesLatch {
    /// Decodes a guest write of `data` at `offset` into the page.
    pub fn write<'a>(&mut self, offset: u64, data: &'a [u8]) -> ServicesRequest<'a> {
        let v = value(data);
        match offset {
            regs::CONSOLE => return ServicesRequest::Console(data),
            regs::EXIT => return ServicesRequest::Exit(v),
            regs::HCALL => {
                return ServicesRequest::Hypercall {
                    nr: v,
                    args: self.hcall_args,
                }
            }
            regs::HCALL_ARG0 => self.hcall_args[0] = v,
            regs::HCALL_ARG1 => self.hcall_args[1] = v,
            regs::HCALL_ARG2 => self.hcall_args[2] = v,
            regs::FAULT_RIP => self.fault_rip = v,
            regs::FAULT_ERROR => self.fault_error = v,
            regs::FAULT_ADDR => self.fault_addr = v,
            regs::FAULT => {
                return ServicesRequest::Fault(FaultReport {
                    vector: v as u8,
                    cpl: (v >> 8) as u8 & 3,
                    rip: self.fault_rip,
                    error: self.fault_error,
                    addr: self.fault_addr,
                })
            }
            regs::EVENT => return ServicesRequest::Event(Event(v)),
            regs::DOORBELL => return ServicesRequest::Doorbell(v),
            regs::VMGEXIT => return ServicesRequest::Vmgexit,
            _ => return ServicesRequest::Unknown { offset },
        }
        ServicesRequest::None
    }

    /// The value a guest read of `offset` returns.
    pub fn read(&self, offset: u64) -> u64 {
        match offset {
            regs::HCALL_RESULT => self.hcall_result,
            _ => u64::MAX,
        }
    }

    /// Stores the result of the hypercall just made.
    pub fn set_result(&mut self, result: u64) {
        self.hcall_result = result;
    }
}

/// Maps a guest exit status to a process exit code: values above 255 become 255, so a
/// failure can never wrap around to look like success.
pub fn exit_status(code: u64) -> u8 {
    u8::try_from(code).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_bytes_pass_through_at_their_width() {
        let mut l = ServicesLatch::default();
        assert_eq!(
            l.write(regs::CONSOLE, b"abc"),
            ServicesRequest::Console(b"abc")
        );
    }

    #[test]
    fn fault_reports_carry_the_latched_values() {
        let mut l = ServicesLatch::default();
        l.write(regs::FAULT_RIP, &0xfff0_1234u64.to_le_bytes());
        l.write(regs::FAULT_ERROR, &2u64.to_le_bytes());
        l.write(regs::FAULT_ADDR, &0xdead_0000u64.to_le_bytes());
        let value = (14u64 | 3 << 8).to_le_bytes();
        let req = l.write(regs::FAULT, &value);
        let ServicesRequest::Fault(report) = req else {
            panic!("{req:?}")
        };
        assert_eq!(
            (report.vector, report.cpl, report.rip),
            (14, 3, 0xfff0_1234)
        );
        let text = report.to_string();
        assert!(
            text.contains("#PF page fault") && text.contains("0xdead0000"),
            "{text}"
        );
    }

    #[test]
    fn hypercalls_use_this_vcpus_latched_arguments() {
        let (mut a, mut b) = (ServicesLatch::default(), ServicesLatch::default());
        a.write(regs::HCALL_ARG0, &0x1000u64.to_le_bytes());
        a.write(regs::HCALL_ARG1, &4u64.to_le_bytes());
        b.write(regs::HCALL_ARG0, &0x9000u64.to_le_bytes());
        assert_eq!(
            a.write(regs::HCALL, &12u64.to_le_bytes()),
            ServicesRequest::Hypercall {
                nr: 12,
                args: [0x1000, 4, 0]
            }
        );
        a.set_result(7);
        assert_eq!(a.read(regs::HCALL_RESULT), 7);
        assert_eq!(b.read(regs::HCALL_RESULT), 0);
    }

    #[test]
    fn unknown_offsets_and_short_writes_are_harmless() {
        let mut l = ServicesLatch::default();
        assert_eq!(
            l.write(0xff8, &[1]),
            ServicesRequest::Unknown { offset: 0xff8 }
        );
        assert_eq!(l.write(regs::EXIT, &[3]), ServicesRequest::Exit(3));
        assert_eq!(l.read(0x800), u64::MAX);
    }

    #[test]
    fn the_vmgexit_register_asks_for_the_ghcb_exit() {
        let mut l = ServicesLatch::default();
        assert_eq!(
            l.write(regs::VMGEXIT, &0u64.to_le_bytes()),
            ServicesRequest::Vmgexit
        );
    }

    #[test]
    fn exit_status_saturates() {
        assert_eq!(exit_status(0), 0);
        assert_eq!(exit_status(3), 3);
        assert_eq!(exit_status(256), 255);
    }
}
