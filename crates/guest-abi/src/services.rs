//! Register map of the MMIO guest-services page.
//!
//! On these machines guest CPL3 code cannot do port I/O (kvm_pvm drops IOPL) and VMMCALL
//! never reaches the VMM, so the firmware reaches the VMM by writing to a page of
//! guest-physical address space that has no memslot: each access exits to the VMM as
//! `KVM_EXIT_MMIO`. The page's address is declared in the firmware's GUID table. The VMM
//! keeps the latched argument registers per vCPU, so vCPUs never see each other's values.
//!
//! All registers are 64 bits wide unless noted; offsets are from the page base.

/// Console output: a write of N bytes (1, 2, 4 or 8) appends those N bytes to the console.
pub const CONSOLE: u64 = 0x000;
/// Guest exit: the written value becomes the VMM's exit status (values above 255 map to 255).
pub const EXIT: u64 = 0x008;
/// Hypercall doorbell: writing the call number runs it with the latched `HCALL_ARG*`.
pub const HCALL: u64 = 0x010;
/// Hypercall result of this vCPU's last call (read).
pub const HCALL_RESULT: u64 = 0x018;
/// First hypercall argument latch.
pub const HCALL_ARG0: u64 = 0x020;
/// Second hypercall argument latch.
pub const HCALL_ARG1: u64 = 0x028;
/// Third hypercall argument latch.
pub const HCALL_ARG2: u64 = 0x030;
/// Fault report: writing `vector | cpl << 8` reports a fatal guest exception with the
/// latched `FAULT_RIP`, `FAULT_ERROR` and `FAULT_ADDR`; the VMM stops the VM.
pub const FAULT: u64 = 0x040;
/// Faulting instruction pointer latch.
pub const FAULT_RIP: u64 = 0x048;
/// Exception error code latch.
pub const FAULT_ERROR: u64 = 0x050;
/// Fault address (CR2) latch.
pub const FAULT_ADDR: u64 = 0x058;
/// Boot milestone: the written [`Event`] code is timestamped by the VMM.
pub const EVENT: u64 = 0x060;
/// Migration-helper doorbell: the helper vCPU writes its status when a request is done.
pub const DOORBELL: u64 = 0x080;
/// Host request to the workload (read): a [`Request`] code, or 0 for none; reading
/// takes the request.
pub const REQUEST: u64 = 0x088;
/// VMGEXIT stand-in (SEV-ES): a write (any value) makes the VMM serve this vCPU's GHCB
/// exit as VMGEXIT does on hardware: the GHCB at the GPA this vCPU's GHCB MSR holds, or
/// the GHCB MSR protocol request it holds (guest-abi `ghcb`). VMGEXIT itself never exits
/// on the development machines (docs/architecture.md §4, Machine facts).
pub const VMGEXIT: u64 = 0x090;

/// What the host may ask a running workload to do (read from [`REQUEST`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request(pub u64);

impl Request {
    /// Nothing pending.
    pub const NONE: Request = Request(0);
    /// Verify memory now, report, and keep running.
    pub const VERIFY: Request = Request(1);
    /// Verify memory now, report, and stop with the verdict as exit status.
    pub const VERIFY_AND_EXIT: Request = Request(2);
}

/// Hypercall numbers; they follow KVM's `include/uapi/linux/kvm_para.h`.
pub mod hcall {
    /// `KVM_HC_MAP_GPA_RANGE`: args = gpa, page count, attributes.
    pub const MAP_GPA_RANGE: u64 = 12;
    /// Attribute bit: the range becomes encrypted (private); clear means shared.
    pub const MAP_GPA_RANGE_ENCRYPTED: u64 = 1 << 4;
    /// Page-size field value for 4 KiB pages.
    pub const MAP_GPA_RANGE_PAGE_SZ_4K: u64 = 0;
}

/// Boot milestones a guest reports through [`EVENT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event(pub u64);

impl Event {
    /// The boot CPU reached its first CPL3 instruction.
    pub const CPL3_ENTRY: Event = Event(1);
    /// The firmware has read its configuration and memory map.
    pub const CONFIGURED: Event = Event(2);
    /// All application processors are running at CPL3.
    pub const APS_STARTED: Event = Event(3);
    /// The workload has started.
    pub const WORKLOAD_START: Event = Event(4);
    /// The workload finished its main phase (for the self-test: verified memory).
    pub const WORKLOAD_DONE: Event = Event(5);
    /// The migration helper's region is prepared: a mirror may start helper vCPUs.
    pub const HELPER_READY: Event = Event(6);
    /// The firmware loaded the kernel it was given (direct boot) and hands off to it.
    pub const KERNEL_HANDOFF: Event = Event(7);

    /// A short name for logs, or `None` for an unknown code.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Event::CPL3_ENTRY => "cpl3-entry",
            Event::CONFIGURED => "configured",
            Event::APS_STARTED => "aps-started",
            Event::WORKLOAD_START => "workload-start",
            Event::WORKLOAD_DONE => "workload-done",
            Event::HELPER_READY => "helper-ready",
            Event::KERNEL_HANDOFF => "kernel-handoff",
            _ => return None,
        })
    }
}

/// Exit status the firmware uses when it fails before its workload can report.
pub mod exit_code {
    /// The workload passed.
    pub const PASS: u64 = 0;
    /// The workload ran and found a problem (for the self-test: a memory mismatch).
    pub const FAIL: u64 = 1;
    /// The firmware's configuration from the VMM was unusable.
    pub const BAD_CONFIG: u64 = 3;
    /// The CPU lacks an instruction set extension the firmware was built for.
    pub const MISSING_CPU_FEATURE: u64 = 4;
    /// The kernel given for direct boot was refused: not ELF or bzImage, a protocol too
    /// old, an initrd or command line that does not fit, unreadable fw_cfg items.
    pub const BAD_KERNEL: u64 = 5;
    /// Under SEV, what fw_cfg delivered does not match the SEV hashes table measured at
    /// launch (or no table was measured): the firmware refuses to boot it.
    pub const KERNEL_NOT_MEASURED: u64 = 6;
    /// `opt/sevmirror/stop-at-handoff`: the kernel was loaded and the firmware stopped
    /// where it would have jumped to it.
    pub const HANDOFF_STOPPED: u64 = 7;
    /// The firmware panicked (a bug).
    pub const PANIC: u64 = 101;
}
