//! One thread per vCPU: run it, route its exits to the devices, obey commands.
//!
//! Commands arrive on a channel together with a kick (see [`crate::kvm::kick`]), so a
//! vCPU stuck in KVM_RUN still sees them. Terminal outcomes (guest exit, guest fault,
//! vCPU failure) are reported as [`VmEvent`]s and end the thread.

mod ghcb;

use crate::{
    console::ConsoleOut,
    devices::{
        services::{FaultReport, ServicesLatch, ServicesRequest},
        PioBus, PioOutcome,
    },
    kvm::{
        es_state::EsVcpuState,
        kick::{Kicker, RunRegistration},
        protected::{ap_transition, ApState, StartIpi},
        state::VcpuState,
        KvmError, KvmVcpu, RunResult,
    },
    memory::HostView,
    sev::{map_gpa_range, MSR_SEV_STATUS},
};
use guest_abi::{ghcb::msr::MSR_GHCB, layout, services::Event};
use kvm_ioctls::VcpuExit;
use std::collections::BTreeMap;
use std::{
    os::unix::thread::JoinHandleExt,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, Sender},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Why a vCPU stopped working.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// The guest triple-faulted.
    #[error("guest triple fault (KVM_EXIT_SHUTDOWN) near rip {rip:#x}")]
    TripleFault {
        /// Last known instruction pointer.
        rip: u64,
    },
    /// KVM could not emulate an instruction (on these machines all guest CPL0 code is
    /// emulated, and the emulator lacks many instructions).
    #[error("KVM could not emulate the instruction at rip {rip:#x} (CPL{cpl}; sub-error {suberror}, data {data:x?})")]
    Emulation {
        /// Instruction pointer.
        rip: u64,
        /// Privilege level.
        cpl: u8,
        /// KVM's sub-error code.
        suberror: u32,
        /// KVM's diagnostic words (the instruction bytes for emulation failures).
        data: Vec<u64>,
    },
    /// VM entry failed.
    #[error("VM entry failed (hardware reason {reason:#x}) at rip {rip:#x}")]
    FailEntry {
        /// Hardware failure reason.
        reason: u64,
        /// Instruction pointer.
        rip: u64,
    },
    /// An exit the VMM does not handle.
    #[error("unexpected exit {exit} at rip {rip:#x}")]
    UnexpectedExit {
        /// Exit description.
        exit: String,
        /// Instruction pointer.
        rip: u64,
    },
    /// A KVM ioctl failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// An SEV-ES VMGEXIT could not be answered (the GHCB is private or not RAM).
    #[error("cannot serve the guest's VMGEXIT")]
    Vmgexit(#[source] crate::devices::ghcb::VmgexitError),
    /// An exit of an SEV-ES guest that on SEV-ES hardware raises #VC in the guest instead
    /// of reaching the VMM (strict mode of the emulated platform: the guest bypassed its
    /// GHCB, so it would not run on hardware).
    #[error("SEV-ES strict mode: the guest's {exit} reached the VMM outside the GHCB (on SEV-ES hardware it raises #VC in the guest)")]
    EsStrict {
        /// The exit, e.g. "port I/O write to 0x3f8".
        exit: String,
    },
    /// The emulated SEV-ES CPU could not move the vCPU's state between KVM and its VMSA.
    #[error("cannot move vCPU {vcpu}'s state between KVM and its VMSA")]
    Vmsa {
        /// The vCPU.
        vcpu: u32,
        /// What failed.
        #[source]
        source: KvmError,
    },
    /// An SEV-ES guest asked to be stopped through the GHCB MSR protocol, or broke one of
    /// its rules (KVM stops such a guest the same way).
    #[error("the SEV-ES guest requested termination (reason set {set}, reason {reason})")]
    GuestTerminated {
        /// Reason-code set (0 = general).
        set: u8,
        /// Reason code.
        reason: u8,
    },
}

/// Something that happened to the VM, reported to its owner.
#[derive(Debug)]
pub enum VmEvent {
    /// The guest asked to stop with this status.
    GuestExit {
        /// Reporting vCPU.
        vcpu: u32,
        /// Exit status.
        status: u64,
    },
    /// The guest reported a fatal exception.
    Fault {
        /// Reporting vCPU.
        vcpu: u32,
        /// The exception.
        report: FaultReport,
    },
    /// A vCPU could not go on.
    Failed {
        /// The vCPU.
        vcpu: u32,
        /// What went wrong.
        error: VcpuError,
    },
    /// A boot milestone, with the time since the VM started.
    Milestone {
        /// Reporting vCPU.
        vcpu: u32,
        /// The milestone.
        event: Event,
        /// Time since start.
        at: Duration,
    },
    /// A vCPU acknowledged a pause.
    Paused {
        /// The vCPU.
        vcpu: u32,
    },
    /// An SEV-ES vCPU entered AP reset hold (it saved its state if the host asked it to;
    /// a migration target's boot CPU holds until the guest arrived).
    Held {
        /// The vCPU.
        vcpu: u32,
    },
    /// The process received a termination signal.
    Signal(i32),
}

/// Where a VM's events go: a channel, or the owner's own dispatcher.
pub type EventSink = Arc<dyn Fn(VmEvent) + Send + Sync>;

/// Orders for a vCPU thread.
#[derive(Debug)]
pub enum VcpuCommand {
    /// Stop running guest code and wait (acknowledged with [`VmEvent::Paused`]).
    Pause,
    /// Run again after a pause.
    Resume,
    /// End the thread.
    Stop,
    /// Send back the vCPU's state (while paused).
    Save(Sender<Result<VcpuState, KvmError>>),
    /// Load a state into the vCPU (while paused).
    Restore(Box<VcpuState>, Sender<Result<(), KvmError>>),
    /// An INIT or SIPI another vCPU of an emulated SEV-ES guest sent through its GHCB.
    StartIpi(StartIpi),
    /// SEV-ES: ask the vCPU, at its next checkpoint question, to save its state into
    /// guest memory and enter AP reset hold (acknowledged on the hold channel).
    RequestHold,
    /// SEV-ES: withdraw the request and let a held vCPU run again (its hold answers
    /// "released"). A vCPU told to hold that has not held yet is released as it holds.
    ReleaseHold,
    /// SEV-ES: send back the host's part of the vCPU (while paused).
    SavePlatform(Sender<Result<EsVcpuState, KvmError>>),
    /// SEV-ES: load the host's part of a vCPU (while paused or held).
    RestorePlatform(Box<EsVcpuState>, Sender<Result<(), KvmError>>),
}

/// Exit counts of one vCPU.
#[derive(Clone, Debug, Default)]
pub struct ExitStats {
    /// KVM's own counters (`exits`, `insn_emulation`) where the kernel reports them.
    pub kvm: Vec<(String, u64)>,
    /// Port I/O exits.
    pub pio: u64,
    /// MMIO exits.
    pub mmio: u64,
    /// Other exits.
    pub other: u64,
    /// SEV-ES: VMGEXITs served, by GHCB exit code name (`msr-protocol` for the GHCB MSR
    /// protocol).
    pub ghcb: BTreeMap<&'static str, u64>,
    /// SEV-ES: GHCB requests refused as malformed (the guest got the reason).
    pub ghcb_refused: u64,
}

/// What the vCPU thread shares with the rest of the VMM.
pub struct VcpuContext {
    /// Port devices.
    pub bus: Arc<PioBus>,
    /// Guest console.
    pub console: ConsoleOut,
    /// Base of the guest-services page.
    pub services_gpa: u64,
    /// Where events go.
    pub events: EventSink,
    /// Where pause acknowledgements go.
    pub acks: Sender<u32>,
    /// When the VM started (for milestones).
    pub started: Instant,
    /// The host's view of guest RAM (page conversions are recorded in it).
    pub view: HostView,
    /// The SEV_STATUS MSR value, for an SEV guest.
    pub sev_status: Option<u64>,
    /// A pending request to the workload (guest-abi `services::Request`), taken when the
    /// guest reads it.
    pub guest_request: Arc<AtomicU64>,
    /// Set once the firmware reports its migration helper ready.
    pub helper_ready: Arc<std::sync::atomic::AtomicBool>,
    /// Where a vCPU says it entered AP reset hold (SEV-ES).
    pub holds: Sender<u32>,
    /// An SEV-ES guest on the emulated platform: its exits follow the SEV-ES rules (served
    /// from the GHCB, strict mode), its APs start on their first SIPI. `None` otherwise.
    pub es: Option<EsContext>,
}

/// What the vCPUs of an SEV-ES guest on the emulated platform share.
#[derive(Clone)]
pub struct EsContext {
    /// Every vCPU's command channel, by vCPU index (= x2APIC ID): the INIT and SIPI a vCPU
    /// sends through its GHCB reach the others here.
    pub peers: Arc<[Sender<VcpuCommand>]>,
}

/// The controlling end of a vCPU thread.
pub struct VcpuHandle {
    id: u32,
    thread: Option<JoinHandle<ExitStats>>,
    kicker: Kicker,
    commands: Sender<VcpuCommand>,
}

impl VcpuHandle {
    /// Starts a thread running `vcpu`.
    pub fn spawn(
        vcpu: KvmVcpu,
        ctx: VcpuContext,
        commands: Sender<VcpuCommand>,
        inbox: Receiver<VcpuCommand>,
    ) -> std::io::Result<VcpuHandle> {
        let id = vcpu.id();
        crate::kvm::kick::install_handler();
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || VcpuThread::new(vcpu, ctx, inbox).run())?;
        let kicker = Kicker::new(thread.as_pthread_t());
        Ok(VcpuHandle {
            id,
            thread: Some(thread),
            kicker,
            commands,
        })
    }

    /// The vCPU index.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Sends a command and kicks the thread out of KVM_RUN to see it.
    pub fn command(&self, cmd: VcpuCommand) {
        if self.commands.send(cmd).is_ok() && self.thread.is_some() {
            self.kicker.kick();
        }
    }

    /// Stops the thread and waits for it (kicking until it is gone, at most `timeout`).
    /// Returns its exit counts, or `None` if it did not stop in time.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStats> {
        let thread = self.thread.as_ref()?;
        let _ = self.commands.send(VcpuCommand::Stop);
        let deadline = Instant::now() + timeout;
        while !thread.is_finished() {
            if Instant::now() > deadline {
                log::warn!("vCPU {} did not stop within {timeout:?}", self.id);
                return None;
            }
            self.kicker.kick();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.thread.take()?.join().ok()
    }
}

impl Drop for VcpuHandle {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// `-KVM_ENOSYS`, for hypercalls the VMM does not provide.
const HC_ENOSYS: u64 = (-1000i64) as u64;

/// Runs a hypercall from either transport (VMMCALL exit or the services page).
fn hypercall(ctx: &VcpuContext, nr: u64, args: [u64; 3]) -> u64 {
    match nr {
        guest_abi::services::hcall::MAP_GPA_RANGE if ctx.sev_status.is_some() => {
            map_gpa_range(&ctx.view, args)
        }
        _ => {
            log::debug!("unsupported hypercall {nr}");
            HC_ENOSYS
        }
    }
}

/// Where the loop goes after an exit.
enum Flow {
    Continue,
    /// Report this and end the thread.
    End(VmEvent),
    /// The vCPU halted with interrupts off: wait for commands.
    Halted,
    /// The guest rang VMGEXIT (the services page's register): serve its GHCB exit once the
    /// exit's borrow of the vCPU has ended.
    Vmgexit,
    /// The vCPU entered AP reset hold: it runs again only once released.
    Held,
}

/// Where an SEV-ES vCPU stands with the host's hold request (AP reset hold).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Hold {
    /// The host asks the vCPU to save its state and hold.
    pub(crate) requested: bool,
    /// The vCPU's checkpoint question was answered "hold" since the last request.
    pub(crate) told: bool,
    /// The vCPU is in AP reset hold.
    pub(crate) held: bool,
    /// Released before it held: its next hold ends at once.
    pub(crate) release_pending: bool,
}

struct VcpuThread {
    vcpu: KvmVcpu,
    ctx: VcpuContext,
    inbox: Receiver<VcpuCommand>,
    latch: ServicesLatch,
    stats: ExitStats,
    /// The vCPU's CPUID table, which SEV-ES CPUID exits are answered from.
    cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// Where a protected AP is in its start-up (emulated SEV-ES); `Running` otherwise.
    ap: ApState,
    /// The host's hold request and the vCPU's hold (SEV-ES).
    hold: Hold,
}

impl VcpuThread {
    fn new(vcpu: KvmVcpu, ctx: VcpuContext, inbox: Receiver<VcpuCommand>) -> Self {
        let cpuid = vcpu.cpuid().unwrap_or_else(|e| {
            log::warn!(
                "vCPU {}: {e}; SEV-ES CPUID exits will read zeros",
                vcpu.id()
            );
            Vec::new()
        });
        // Under emulated SEV-ES an AP waits for INIT and SIPI before it ever runs (KVM keeps
        // it in wait-for-SIPI; its registers come from its VMSA, not from the vector).
        let ap = if ctx.es.is_some() && vcpu.id() != 0 {
            ApState::WaitForInit
        } else {
            ApState::Running
        };
        VcpuThread {
            cpuid,
            vcpu,
            ctx,
            inbox,
            latch: ServicesLatch::default(),
            stats: ExitStats::default(),
            ap,
            hold: Hold::default(),
        }
    }

    fn run(mut self) -> ExitStats {
        // SAFETY: the run page belongs to `self.vcpu`, which outlives the registration
        // (dropped at the end of this function, before `self`).
        let _registration = unsafe { RunRegistration::register(self.vcpu.run_page()) };
        self.run_loop();
        // #VMEXIT for good: a protected vCPU's state goes back to its VMSA.
        self.save_to_vmsa();
        self.stats.kvm = self.vcpu.kvm_counters();
        self.stats
    }

    /// Emulated SEV-ES: the vCPU's state from KVM into its VMSA slot (a no-op otherwise).
    fn save_to_vmsa(&mut self) {
        if let Err(e) = self.vcpu.vmexit() {
            log::warn!("vCPU {}: {e}", self.vcpu.id());
        }
    }

    /// An INIT or SIPI from another vCPU (emulated SEV-ES): the first SIPI after INIT
    /// starts this AP at its VMSA's entry.
    fn start_ipi(&mut self, ipi: StartIpi) {
        let (next, start) = ap_transition(self.ap, ipi);
        self.ap = next;
        if start {
            if let Err(e) = self.vcpu.start_protected_ap() {
                log::warn!("vCPU {}: cannot start: {e}", self.vcpu.id());
            }
        }
    }

    fn run_loop(&mut self) {
        let id = self.vcpu.id();
        loop {
            if !self.obey_commands(false) {
                return;
            }
            if self.ap != ApState::Running || self.hold.held {
                if !self.obey_commands(true) {
                    return;
                }
                continue;
            }
            // VMRUN: a protected vCPU's state comes from its VMSA if KVM does not hold it.
            if let Err(source) = self.vcpu.vmrun() {
                (self.ctx.events)(VmEvent::Failed {
                    vcpu: id,
                    error: VcpuError::Vmsa { vcpu: id, source },
                });
                return;
            }
            let flow = match self.vcpu.run() {
                Ok(RunResult::Exit(exit)) => {
                    Self::handle_exit(&self.ctx, &mut self.latch, &mut self.stats, id, exit)
                }
                Ok(RunResult::Interrupted) => {
                    self.vcpu.set_immediate_exit(false);
                    Flow::Continue
                }
                Ok(RunResult::Again) => Flow::Continue,
                Err(e) => Flow::End(VmEvent::Failed {
                    vcpu: id,
                    error: e.into(),
                }),
            };
            let flow = match flow {
                Flow::Vmgexit => ghcb::vmgexit(
                    &self.ctx,
                    &mut self.latch,
                    &mut self.stats,
                    &self.cpuid,
                    &self.vcpu,
                    &mut self.hold,
                ),
                other => other,
            };
            match flow {
                Flow::Continue | Flow::Vmgexit => {}
                Flow::Held => self.enter_hold(),
                Flow::Halted => {
                    if !self.obey_commands(true) {
                        return;
                    }
                }
                Flow::End(event) => {
                    let event = self.with_diagnostics(event);
                    (self.ctx.events)(event);
                    return;
                }
            }
        }
    }

    /// The vCPU entered AP reset hold: it stays there until released (or is released at
    /// once if that came first), and says so.
    fn enter_hold(&mut self) {
        self.hold.told = false;
        if std::mem::take(&mut self.hold.release_pending) {
            return;
        }
        self.hold.held = true;
        let id = self.vcpu.id();
        let _ = self.ctx.holds.send(id);
        (self.ctx.events)(VmEvent::Held { vcpu: id });
    }

    /// Handles queued commands; with `block`, waits for one. Returns false on Stop.
    fn obey_commands(&mut self, mut block: bool) -> bool {
        let mut paused = false;
        loop {
            let cmd = if block {
                match self.inbox.recv() {
                    Ok(c) => c,
                    Err(_) => return false,
                }
            } else {
                match self.inbox.try_recv() {
                    Ok(c) => c,
                    Err(std::sync::mpsc::TryRecvError::Empty) => return true,
                    Err(std::sync::mpsc::TryRecvError::Disconnected) => return false,
                }
            };
            match cmd {
                VcpuCommand::Save(reply) => {
                    let _ = reply.send(self.vcpu.save_state());
                }
                VcpuCommand::Restore(state, reply) => {
                    let _ = reply.send(self.vcpu.restore_state(&state));
                }
                VcpuCommand::Stop => return false,
                VcpuCommand::StartIpi(ipi) => {
                    self.start_ipi(ipi);
                    // A started AP runs now, unless it is paused.
                    if self.ap == ApState::Running && !paused {
                        block = false;
                    }
                }
                VcpuCommand::Pause => {
                    paused = true;
                    // #VMEXIT: while paused, a protected vCPU's state is only in its VMSA.
                    self.save_to_vmsa();
                    let _ = self.ctx.acks.send(self.vcpu.id());
                    (self.ctx.events)(VmEvent::Paused {
                        vcpu: self.vcpu.id(),
                    });
                    block = true;
                }
                VcpuCommand::Resume => {
                    paused = false;
                    block = false;
                }
                VcpuCommand::RequestHold => {
                    self.hold.requested = true;
                    self.hold.release_pending = false;
                }
                VcpuCommand::ReleaseHold => {
                    self.hold.requested = false;
                    if self.hold.held {
                        self.hold.held = false;
                        if !paused {
                            block = false;
                        }
                    } else if self.hold.told {
                        self.hold.release_pending = true;
                    }
                }
                VcpuCommand::SavePlatform(reply) => {
                    let _ = reply.send(self.vcpu.es_platform_state());
                }
                VcpuCommand::RestorePlatform(state, reply) => {
                    let _ = reply.send(self.vcpu.set_es_platform_state(&state));
                }
            }
        }
    }

    /// Fills in the guest RIP (and emulation details) of a failure.
    fn with_diagnostics(&mut self, event: VmEvent) -> VmEvent {
        let rip = self.vcpu.regs().map(|r| r.rip).unwrap_or(0);
        let cpl = self.vcpu.sregs().map(|s| s.cs.dpl).unwrap_or(0);
        match event {
            VmEvent::Failed { vcpu, error } => {
                let error = match error {
                    VcpuError::TripleFault { .. } => VcpuError::TripleFault { rip },
                    VcpuError::Emulation { .. } => {
                        let (suberror, data) = self.vcpu.internal_error();
                        VcpuError::Emulation {
                            rip,
                            cpl,
                            suberror,
                            data,
                        }
                    }
                    VcpuError::FailEntry { reason, .. } => VcpuError::FailEntry { reason, rip },
                    VcpuError::UnexpectedExit { exit, .. } => {
                        VcpuError::UnexpectedExit { exit, rip }
                    }
                    other => other,
                };
                VmEvent::Failed { vcpu, error }
            }
            other => other,
        }
    }

    fn handle_exit(
        ctx: &VcpuContext,
        latch: &mut ServicesLatch,
        stats: &mut ExitStats,
        id: u32,
        exit: VcpuExit<'_>,
    ) -> Flow {
        let fail = |error| Flow::End(VmEvent::Failed { vcpu: id, error });
        // Emulated SEV-ES: an exit the guest could only cause by bypassing its GHCB (on
        // hardware the CPU raises #VC for it instead) stops the VM, naming the exit.
        let strict = |exit: String| fail(VcpuError::EsStrict { exit });
        let es = ctx.es.is_some();
        let services_offset = |addr: u64| {
            addr.checked_sub(ctx.services_gpa)
                .filter(|&o| o < layout::PAGE_SIZE)
        };
        match exit {
            VcpuExit::IoOut(port, data) if es => strict(format!(
                "port I/O write of {} bytes to {port:#x}",
                data.len()
            )),
            VcpuExit::IoIn(port, data) if es => strict(format!(
                "port I/O read of {} bytes from {port:#x}",
                data.len()
            )),
            VcpuExit::IoOut(port, data) => {
                stats.pio += 1;
                match ctx.bus.write(port, data) {
                    PioOutcome::Handled => Flow::Continue,
                    PioOutcome::DebugExit(status) => {
                        Flow::End(VmEvent::GuestExit { vcpu: id, status })
                    }
                }
            }
            VcpuExit::IoIn(port, data) => {
                stats.pio += 1;
                ctx.bus.read(port, data);
                Flow::Continue
            }
            // The VMGEXIT stand-in is the one MMIO access an SEV-ES guest makes itself
            // (VMGEXIT never exits on these machines; docs/architecture.md §4).
            VcpuExit::MmioWrite(addr, _)
                if es && services_offset(addr) == Some(guest_abi::services::VMGEXIT) =>
            {
                stats.mmio += 1;
                Flow::Vmgexit
            }
            VcpuExit::MmioWrite(addr, data) if es => {
                strict(format!("MMIO write of {} bytes at {addr:#x}", data.len()))
            }
            VcpuExit::MmioRead(addr, data) if es => {
                strict(format!("MMIO read of {} bytes at {addr:#x}", data.len()))
            }
            VcpuExit::MmioWrite(addr, data) => {
                stats.mmio += 1;
                match services_offset(addr) {
                    Some(offset) => Self::services_write(ctx, latch, id, offset, data),
                    None => {
                        log::debug!(
                            "vCPU {id}: ignored MMIO write of {} bytes at {addr:#x}",
                            data.len()
                        );
                        Flow::Continue
                    }
                }
            }
            VcpuExit::MmioRead(addr, data) => {
                stats.mmio += 1;
                let value = match services_offset(addr) {
                    Some(guest_abi::services::REQUEST) => {
                        ctx.guest_request.swap(0, Ordering::AcqRel)
                    }
                    Some(offset) => latch.read(offset),
                    None => u64::MAX,
                };
                let bytes = value.to_le_bytes();
                let n = data.len().min(8);
                data[..n].copy_from_slice(&bytes[..n]);
                Flow::Continue
            }
            VcpuExit::Hlt => {
                stats.other += 1;
                Flow::Halted
            }
            VcpuExit::Shutdown => fail(VcpuError::TripleFault { rip: 0 }),
            VcpuExit::InternalError => fail(VcpuError::Emulation {
                rip: 0,
                cpl: 0,
                suberror: 0,
                data: Vec::new(),
            }),
            VcpuExit::FailEntry(reason, _) => fail(VcpuError::FailEntry { reason, rip: 0 }),
            VcpuExit::X86Rdmsr(msr) => {
                stats.other += 1;
                // SEV_STATUS and (SEV-ES) the GHCB MSR are read without a #VC on hardware.
                match (msr.index, ctx.sev_status) {
                    (MSR_SEV_STATUS, Some(value)) => {
                        *msr.data = value;
                        *msr.error = 0;
                    }
                    (MSR_GHCB, _) if ghcb::guest_mode(ctx).is_some() => {
                        *msr.data = latch.ghcb_msr.read();
                        *msr.error = 0;
                    }
                    (index, _) if es => return strict(format!("RDMSR {index:#x}")),
                    // Anything else the filter sent here: #GP, as for a missing MSR.
                    _ => *msr.error = 1,
                }
                Flow::Continue
            }
            VcpuExit::X86Wrmsr(msr) => {
                stats.other += 1;
                if msr.index == MSR_GHCB && ghcb::guest_mode(ctx).is_some() {
                    latch.ghcb_msr.write(msr.data);
                    *msr.error = 0;
                } else if es {
                    return strict(format!("WRMSR {:#x}", msr.index));
                } else {
                    *msr.error = 1;
                }
                Flow::Continue
            }
            VcpuExit::Hypercall(call) if es => strict(format!("VMMCALL hypercall {}", call.nr)),
            VcpuExit::Hypercall(call) => {
                stats.other += 1;
                *call.ret = hypercall(ctx, call.nr, [call.args[0], call.args[1], call.args[2]]);
                Flow::Continue
            }
            VcpuExit::SystemEvent(kind, _) => {
                stats.other += 1;
                // KVM_SYSTEM_EVENT_SHUTDOWN = 1; anything else (reset, crash) is a failure.
                if kind == 1 {
                    Flow::End(VmEvent::GuestExit {
                        vcpu: id,
                        status: 0,
                    })
                } else {
                    fail(VcpuError::UnexpectedExit {
                        exit: format!("system event {kind}"),
                        rip: 0,
                    })
                }
            }
            other => fail(VcpuError::UnexpectedExit {
                exit: format!("{other:?}"),
                rip: 0,
            }),
        }
    }

    fn services_write(
        ctx: &VcpuContext,
        latch: &mut ServicesLatch,
        id: u32,
        offset: u64,
        data: &[u8],
    ) -> Flow {
        match latch.write(offset, data) {
            ServicesRequest::None => Flow::Continue,
            ServicesRequest::Console(bytes) => {
                ctx.console.write(bytes);
                Flow::Continue
            }
            ServicesRequest::Exit(status) => Flow::End(VmEvent::GuestExit { vcpu: id, status }),
            ServicesRequest::Fault(report) => Flow::End(VmEvent::Fault { vcpu: id, report }),
            ServicesRequest::Event(event) => {
                if event == Event::HELPER_READY {
                    ctx.helper_ready.store(true, Ordering::Release);
                }
                (ctx.events)(VmEvent::Milestone {
                    vcpu: id,
                    event,
                    at: ctx.started.elapsed(),
                });
                Flow::Continue
            }
            ServicesRequest::Hypercall { nr, args } => {
                latch.set_result(hypercall(ctx, nr, args));
                Flow::Continue
            }
            ServicesRequest::Doorbell(_) => Flow::Continue,
            ServicesRequest::Vmgexit => Flow::Vmgexit,
            ServicesRequest::Unknown { offset } => {
                log::debug!("vCPU {id}: write to undefined services register {offset:#x}");
                Flow::Continue
            }
        }
    }
}
