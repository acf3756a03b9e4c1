//! Mirror VMs: a second KVM VM that shares a running SEV guest's memory and encryption
//! context (`KVM_CAP_VM_COPY_ENC_CONTEXT_FROM`, applied by the SEV platform) and runs the
//! migration helper — code measured at launch as part of the guest's firmware — on its
//! own vCPUs.
//!
//! A helper vCPU starts at the firmware's declared 32-bit entry point (the only state a
//! VMM can give it without guest secrets), takes a slot from the helper's private counter
//! (its stack, mailbox and lane id: the VMM chooses none of them) and announces it with
//! its first doorbell; from then on it serves that mailbox's requests at CPL3. Slots are
//! never reused: a second mirror of the same guest gets the slots the first left. A call
//! is synchronous: the VMM writes the request into the shared control page, runs the vCPU
//! until the helper rings the doorbell, and reads the response. No interrupt controller,
//! no polling.
//!
//! Plain SEV: the mirror is attached once the guest's firmware reports its helper ready
//! ([`Vm::attach_mirror`]); the VMM sets each helper vCPU's registers to the entry, and
//! the doorbell is an MMIO write. SEV-ES: the mirror and its helper vCPUs are created
//! during the owner's launch ([`Vm::sev_launch_mirror`]), each VMSA built from the
//! firmware's helper descriptor and measured by the mirror's LAUNCH_UPDATE_VMSA before the
//! owner's LAUNCH_MEASURE; from then on no register of a helper vCPU can be set, and the
//! helpers are only run ([`Mirror::start`] once the helper is ready). The doorbell and
//! every other exit go through the helper's own GHCB and are served from it alone
//! (`es`); a helper run before its anchor exists holds (AP reset hold) and is run again
//! later. Such a mirror is never attached again.

mod es;

use crate::{
    devices::services::{FaultReport, ServicesLatch, ServicesRequest},
    kvm::{
        kick::{RunRegistration, Watchdog},
        KvmError, KvmSystem, KvmVcpu, KvmVm, RunResult, Slot,
    },
    memory::{GuestRam, HostView, MemoryError, Rom},
    sev::{patch_cpuid, HypercallTransport, LaunchStarted, MSR_SEV_STATUS},
    vm::Vm,
};
use guest_abi::layout::PAGE_SIZE;
use helper_abi::{
    descriptor::HelperDescriptor,
    mailbox::{
        doorbell, GcmKernel, Op, Request, Response, Status, GPA_LIST_OFFSET, MESSAGE_OFFSET,
        MESSAGE_SIZE, REQUEST_OFFSET, RESPONSE_OFFSET,
    },
};
use kvm_bindings::kvm_segment;
use kvm_ioctls::VcpuExit;
use sev_platform::{backend::KvmVmType, SevBackend, SevError};
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

/// How long `attach_mirror` waits for a booting guest to prepare its helper.
pub const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a helper request may take before the VMM gives up on the helper.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a mirror could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// The owner is not an SEV guest (the kernel answers EINVAL to the same request).
    #[error(
        "a mirror VM shares an SEV guest's encryption context, and this VM is not an SEV guest"
    )]
    NotSev,
    /// The firmware declares no helper.
    #[error("the firmware declares no migration helper, so a mirror VM would have nothing measured to run")]
    NoHelper,
    /// More helper vCPUs than the firmware provides.
    #[error("{asked} helper vCPUs requested; the firmware provides mailboxes for {max}")]
    TooManyHelpers {
        /// Requested.
        asked: u16,
        /// Provided.
        max: u16,
    },
    /// The owner's SEV launch has not finished.
    #[error("the guest has not finished its SEV launch yet")]
    NotLaunched,
    /// The owner is an SEV-ES guest: its mirror is created and measured during the launch
    /// ([`Vm::sev_launch_mirror`]) and never attached afterwards.
    #[error("the guest is an SEV-ES guest: its mirror's helper vCPUs are measured at launch (--helpers at launch), and a mirror is never attached to it afterwards")]
    SevEs,
    /// An SEV-ES mirror asked for a guest that is not SEV-ES, or outside its launch.
    #[error("a mirror with measured helper VMSAs belongs to an SEV-ES guest's launch, after its LAUNCH_UPDATE_VMSA and before LAUNCH_MEASURE")]
    NotEsLaunch,
    /// The helper VMSAs cannot be built from the descriptor.
    #[error("cannot build the helper VMSAs")]
    HelperVmsas(#[source] crate::firmware::HelperVmsaError),
    /// The guest's firmware has not prepared its helper (it is still booting, or failed).
    #[error("the guest's firmware did not report its migration helper ready within {0:?}")]
    HelperNotReady(Duration),
    /// The platform refused to share the encryption context.
    #[error("the SEV platform refused to copy the encryption context to the mirror")]
    CopyContext(#[source] SevError),
    /// The platform refused the mirror VM or one of its vCPUs.
    #[error("the SEV platform refused the mirror VM or one of its vCPUs")]
    Platform(#[source] SevError),
    /// A KVM operation failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A helper vCPU did not come up.
    #[error("helper vCPU {0} did not start")]
    Start(u16, #[source] HelperError),
}

/// Why a helper call failed.
#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    /// The mailbox is not reachable through the host view.
    #[error("cannot reach the helper mailbox")]
    Mailbox(#[source] MemoryError),
    /// The helper did not answer in time.
    #[error("the helper did not answer within {0:?}")]
    Timeout(Duration),
    /// The helper faulted.
    #[error("the helper faulted: {0}")]
    Fault(FaultReport),
    /// The helper panicked or exited.
    #[error("the helper stopped (status {0})")]
    Stopped(u64),
    /// The helper's vCPU exited in a way a helper never should.
    #[error("unexpected exit from the helper vCPU: {exit} at rip {rip:#x}")]
    UnexpectedExit {
        /// What happened.
        exit: String,
        /// Where.
        rip: u64,
    },
    /// The response does not belong to the request.
    #[error("the helper's response is for request {got}, not {want}")]
    StaleResponse {
        /// Expected id.
        want: u32,
        /// Seen id.
        got: u32,
    },
    /// The helper refused the request.
    #[error("the helper refused {op}: {status}{}", index.map_or(String::new(), |i| format!(" (item {i})")))]
    Refused {
        /// The operation.
        op: &'static str,
        /// Its status.
        status: Status,
        /// The offending GPA or record, when the status names one.
        index: Option<u32>,
    },
    /// A KVM operation failed.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// The watchdog timer could not be created.
    #[error("cannot create the helper watchdog timer")]
    Watchdog(#[source] std::io::Error),
    /// The entry point found every helper slot taken and parked.
    #[error("every helper slot of this guest is taken (helper vCPUs started before keep theirs: slots are never reused)")]
    NoSlot,
    /// The first doorbell did not announce a slot.
    #[error("the helper vCPU announced {0:#x} instead of its mailbox slot")]
    BadDoorbell(u64),
    /// A message longer than the mailbox's message area.
    #[error("a {0}-byte message does not fit the mailbox")]
    MessageTooLong(usize),
    /// SEV-ES: the helper vCPU found no helper prepared yet and holds (AP reset hold);
    /// run it again once the guest's firmware reported its helper ready.
    #[error("the helper is not ready yet (the helper vCPU found no anchor and holds; it is run again later)")]
    NotReady,
    /// SEV-ES: the helper vCPU asked to be stopped (GHCB MSR protocol termination).
    #[error("the helper vCPU asked to be stopped (reason set {set:#x}, reason {reason})")]
    Terminated {
        /// Reason-code set (`doorbell::ES_TERMINATE_SET` is sevmirror's).
        set: u8,
        /// Reason.
        reason: u8,
    },
    /// SEV-ES: an exit a helper could only cause by bypassing its GHCB (on hardware it
    /// raises #VC in the helper instead).
    #[error("SEV-ES strict mode: the helper's {0} reached the VMM outside its GHCB")]
    EsStrict(String),
    /// SEV-ES: the helper's GHCB could not be served.
    #[error("cannot serve the helper's VMGEXIT")]
    Vmgexit(#[source] crate::devices::ghcb::VmgexitError),
}

/// One helper vCPU of a mirror, with its mailbox.
pub struct HelperVcpu {
    index: u16,
    /// Whether the helper announced its slot (its first doorbell).
    started: bool,
    vcpu: KvmVcpu,
    view: HostView,
    descriptor: HelperDescriptor,
    services_gpa: u64,
    latch: ServicesLatch,
    next_id: u32,
    watchdog: Option<Watchdog>,
    timeout: Duration,
    last: Response,
    /// SEV-ES: what serving the helper's GHCB needs.
    es: Option<es::HelperEs>,
}

impl HelperVcpu {
    /// The host's handle on this helper vCPU. Under SEV-ES every register accessor
    /// refuses it (EINVAL): its state is in its measured VMSA.
    pub fn kvm_vcpu(&self) -> &KvmVcpu {
        &self.vcpu
    }

    /// The helper vCPU's index (its lane).
    pub fn index(&self) -> u16 {
        self.index
    }

    /// The most recent response (its statistics are the helper's).
    pub fn last_response(&self) -> &Response {
        &self.last
    }

    /// Sets how long a call may take.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// GPA of record window `window`.
    pub fn window_gpa(&self, window: u16) -> u64 {
        self.descriptor.window_gpa(self.index, window)
    }

    /// Record windows this vCPU has.
    pub fn windows(&self) -> u16 {
        self.descriptor.windows_per_vcpu
    }

    /// The host's view of the guest's memory (windows and control pages are shared).
    pub fn view(&self) -> &HostView {
        &self.view
    }

    /// Bytes per record window.
    pub fn window_size(&self) -> usize {
        self.descriptor.window_size as usize
    }

    /// Copies `out.len()` bytes at `offset` of record window `window`.
    pub fn read_window(
        &self,
        window: u16,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), HelperError> {
        self.view
            .read(self.window_gpa(window) + offset as u64, out)
            .map_err(HelperError::Mailbox)
    }

    /// Copies `data` to `offset` of record window `window`.
    pub fn write_window(&self, window: u16, offset: usize, data: &[u8]) -> Result<(), HelperError> {
        self.view
            .write(self.window_gpa(window) + offset as u64, data)
            .map_err(HelperError::Mailbox)
    }

    /// Sends a request (with an EXPORT's GPA list) and waits for the response. A refusal
    /// by the helper is `Ok` with its status; use [`HelperVcpu::call_ok`] to treat it as an
    /// error.
    pub fn call(&mut self, req: Request, gpas: &[u64]) -> Result<Response, HelperError> {
        self.call_with(req, gpas, &[]).map(|(r, _)| r)
    }

    /// Like [`HelperVcpu::call`], with a message in the mailbox's message area (the
    /// handshake steps, RELEASE); returns the message the helper wrote back.
    pub fn call_with(
        &mut self,
        mut req: Request,
        gpas: &[u64],
        message: &[u8],
    ) -> Result<(Response, Vec<u8>), HelperError> {
        if message.len() > MESSAGE_SIZE {
            return Err(HelperError::MessageTooLong(message.len()));
        }
        req.id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let control = self.descriptor.control_gpa(self.index);
        if !message.is_empty() {
            self.view
                .write(control + MESSAGE_OFFSET as u64, message)
                .map_err(HelperError::Mailbox)?;
        }
        self.view
            .write(control + REQUEST_OFFSET as u64, &req.encode())
            .map_err(HelperError::Mailbox)?;
        if !gpas.is_empty() {
            let list: Vec<u8> = gpas.iter().flat_map(|g| g.to_le_bytes()).collect();
            self.view
                .write(control + GPA_LIST_OFFSET as u64, &list)
                .map_err(HelperError::Mailbox)?;
        }
        self.run_until_doorbell()?;
        let mut raw = [0u8; Response::SIZE];
        self.view
            .read(control + RESPONSE_OFFSET as u64, &mut raw)
            .map_err(HelperError::Mailbox)?;
        let resp = Response::decode(&raw);
        if resp.id != req.id {
            return Err(HelperError::StaleResponse {
                want: req.id,
                got: resp.id,
            });
        }
        let mut out = vec![0u8; (resp.message_len as usize).min(MESSAGE_SIZE)];
        if !out.is_empty() {
            self.view
                .read(control + MESSAGE_OFFSET as u64, &mut out)
                .map_err(HelperError::Mailbox)?;
        }
        self.last = resp;
        Ok((resp, out))
    }

    /// Like [`HelperVcpu::call`], with a refusal as an error.
    pub fn call_ok(&mut self, req: Request, gpas: &[u64]) -> Result<Response, HelperError> {
        self.call_ok_with(req, gpas, &[]).map(|(r, _)| r)
    }

    /// Like [`HelperVcpu::call_with`], with a refusal as an error.
    pub fn call_ok_with(
        &mut self,
        req: Request,
        gpas: &[u64],
        message: &[u8],
    ) -> Result<(Response, Vec<u8>), HelperError> {
        let op = Op(req.op).name().unwrap_or("request");
        let (resp, out) = self.call_with(req, gpas, message)?;
        match resp.status() {
            Status::OK => Ok((resp, out)),
            status => Err(HelperError::Refused {
                op,
                status,
                index: match status {
                    Status::BAD_GPA
                    | Status::BAD_RECORD
                    | Status::AUTH_FAILED
                    | Status::REORDER
                    | Status::REPLAY
                    | Status::INCOMPLETE
                    | Status::CORRUPTED => Some(resp.index),
                    _ => None,
                },
            }),
        }
    }

    /// Runs the vCPU until the helper rings the doorbell; the value it wrote.
    fn run_until_doorbell(&mut self) -> Result<u64, HelperError> {
        if !self
            .watchdog
            .as_ref()
            .is_some_and(Watchdog::is_for_current_thread)
        {
            self.watchdog = Some(Watchdog::for_current_thread().map_err(HelperError::Watchdog)?);
        }
        // SAFETY: the run page belongs to `self.vcpu`, which outlives this registration
        // (dropped at the end of this function).
        let _registration = unsafe { RunRegistration::register(self.vcpu.run_page()) };
        let deadline = Instant::now() + self.timeout;
        if let Some(w) = &self.watchdog {
            w.arm(self.timeout);
        }
        let result = self.run_loop(deadline);
        if let Some(w) = &self.watchdog {
            w.disarm();
        }
        result
    }

    fn run_loop(&mut self, deadline: Instant) -> Result<u64, HelperError> {
        if self.es.is_some() {
            return self.run_loop_es(deadline);
        }
        let doorbell = self.descriptor.doorbell_gpa;
        let services = self.services_gpa;
        loop {
            let failure = match self.vcpu.run()? {
                RunResult::Exit(VcpuExit::MmioWrite(addr, data)) if addr == doorbell => {
                    let mut v = [0u8; 8];
                    let n = data.len().min(8);
                    v[..n].copy_from_slice(&data[..n]);
                    return Ok(u64::from_le_bytes(v));
                }
                RunResult::Exit(VcpuExit::MmioWrite(addr, data))
                    if addr.wrapping_sub(services) < PAGE_SIZE =>
                {
                    match self.latch.write(addr - services, data) {
                        ServicesRequest::Fault(report) => Some(HelperError::Fault(report)),
                        ServicesRequest::Exit(status) => Some(HelperError::Stopped(status)),
                        ServicesRequest::Console(bytes) => {
                            log::debug!(
                                "helper {}: {}",
                                self.index,
                                String::from_utf8_lossy(bytes)
                            );
                            None
                        }
                        _ => None,
                    }
                }
                RunResult::Exit(VcpuExit::MmioRead(_, data)) => {
                    data.fill(0xff);
                    None
                }
                // The entry reads SEV_STATUS first (served by the VMM, as on hardware).
                RunResult::Exit(VcpuExit::X86Rdmsr(msr)) if msr.index == MSR_SEV_STATUS => {
                    *msr.data = 1;
                    *msr.error = 0;
                    None
                }
                RunResult::Exit(exit) => Some(HelperError::UnexpectedExit {
                    exit: format!("{exit:?}"),
                    rip: 0,
                }),
                RunResult::Interrupted => {
                    self.vcpu.set_immediate_exit(false);
                    (Instant::now() >= deadline).then_some(HelperError::Timeout(self.timeout))
                }
                RunResult::Again => None,
            };
            if let Some(mut error) = failure {
                if let HelperError::UnexpectedExit { rip, .. } = &mut error {
                    *rip = self.vcpu.regs().map(|r| r.rip).unwrap_or(0);
                }
                return Err(error);
            }
        }
    }
}

/// A mirror VM with its helper vCPUs.
pub struct Mirror {
    // Drop order: vCPUs, then the VM, then the memory they map.
    helpers: Vec<HelperVcpu>,
    kvm_vm: Arc<KvmVm>,
    backend: Arc<dyn SevBackend>,
    descriptor: HelperDescriptor,
    info: Response,
    started: bool,
    /// SEV-ES: the helper vCPUs the launch measured (0 for a plain-SEV mirror).
    measured: u16,
    _ram: Arc<GuestRam>,
    _rom: Arc<Rom>,
}

impl Mirror {
    /// Runs every helper vCPU that has not announced its slot yet until it does, then asks
    /// the helper for its INFO. A helper of an SEV-ES mirror that finds no helper prepared
    /// yet holds: [`HelperError::NotReady`], and a later call runs it (and the others)
    /// again. Does nothing once every helper runs.
    pub fn start(&mut self) -> Result<(), MirrorError> {
        if self.started {
            return Ok(());
        }
        let max = self.descriptor.max_vcpus;
        for (i, helper) in self.helpers.iter_mut().enumerate() {
            if helper.started {
                continue;
            }
            let i = i as u16;
            let first = helper
                .run_until_doorbell()
                .map_err(|e| MirrorError::Start(i, e))?;
            helper.index = match doorbell::slot(first) {
                Some(slot) if slot < u64::from(max) => slot as u16,
                _ if first == doorbell::NO_SLOT => {
                    return Err(MirrorError::Start(i, HelperError::NoSlot))
                }
                _ => return Err(MirrorError::Start(i, HelperError::BadDoorbell(first))),
            };
            helper.started = true;
        }
        self.helpers.sort_by_key(HelperVcpu::index);
        let first = self
            .helpers
            .first_mut()
            .ok_or(MirrorError::TooManyHelpers { asked: 0, max })?;
        self.info = first
            .call_ok(
                Request {
                    op: Op::INFO.0,
                    ..Request::default()
                },
                &[],
            )
            .map_err(|e| MirrorError::Start(0, e))?;
        self.started = true;
        Ok(())
    }

    /// Whether every helper vCPU announced its slot and the helper answered INFO.
    pub fn started(&self) -> bool {
        self.started
    }

    /// Helper vCPUs in the mirror (at home: not those lent to a migration).
    pub fn vcpus(&self) -> usize {
        self.helpers.len()
    }

    /// SEV-ES: how many helper vCPUs the guest's launch measured (0 for a plain-SEV
    /// mirror, whose helpers are not measured).
    pub fn measured_helpers(&self) -> u16 {
        self.measured
    }

    /// The helper vCPUs.
    pub fn helpers_mut(&mut self) -> &mut [HelperVcpu] {
        &mut self.helpers
    }

    /// Takes the helper vCPUs out (e.g. to run them on their own threads).
    pub fn take_helpers(&mut self) -> Vec<HelperVcpu> {
        std::mem::take(&mut self.helpers)
    }

    /// Gives back helper vCPUs taken with [`Mirror::take_helpers`].
    pub fn return_helpers(&mut self, helpers: Vec<HelperVcpu>) {
        self.helpers.extend(helpers);
        self.helpers.sort_by_key(HelperVcpu::index);
    }

    /// The firmware's helper descriptor.
    pub fn descriptor(&self) -> &HelperDescriptor {
        &self.descriptor
    }

    /// What INFO reported when the helper started (region, limits).
    pub fn info(&self) -> &Response {
        &self.info
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.helpers.clear();
        self.backend.vm_destroyed(self.kvm_vm.sev_ref());
    }
}

/// Tells the platform a VM is gone when dropped, unless disarmed (`vm` = None).
struct Forget {
    backend: Arc<dyn SevBackend>,
    vm: Option<sev_platform::backend::VmRef>,
}

impl Drop for Forget {
    fn drop(&mut self) {
        if let Some(vm) = self.vm {
            self.backend.vm_destroyed(vm);
        }
    }
}

fn flat32(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Runs the helpers' key agreement between a source helper vCPU and a target one, the
/// messages carried verbatim (what two honest VMMs do over the migration stream):
/// the transcript hash both agreed on.
pub fn handshake(
    src: &mut HelperVcpu,
    dst: &mut HelperVcpu,
    session_id: [u8; 16],
    hello_hash: [u8; 32],
) -> Result<[u8; 32], HelperError> {
    handshake_with(src, dst, session_id, hello_hash, GcmKernel::BEST).map(|k| k.transcript)
}

/// A session between two helpers, as [`handshake_with`] made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyedSession {
    /// The transcript hash both agreed on.
    pub transcript: [u8; 32],
    /// The AES-256-GCM kernel the source helper seals with.
    pub source_kernel: GcmKernel,
    /// The one the target helper opens with.
    pub target_kernel: GcmKernel,
}

/// As [`handshake`], with both helpers asked to run the session's records on `kernel`
/// (benchmarks that compare kernels inside the mirror; BEST: each helper's own choice).
/// A helper whose CPU cannot run it refuses (UNSUPPORTED_KERNEL).
pub fn handshake_with(
    src: &mut HelperVcpu,
    dst: &mut HelperVcpu,
    session_id: [u8; 16],
    hello_hash: [u8; 32],
    kernel: GcmKernel,
) -> Result<KeyedSession, HelperError> {
    let (started, share) = src.call_ok_with(
        Request {
            op: Op::HS_START.0,
            bytes: 32,
            session_id,
            flags: kernel.flags(),
            ..Request::default()
        },
        &[],
        &hello_hash,
    )?;
    let mut m = hello_hash.to_vec();
    m.extend_from_slice(&share);
    let (responded, reply) = dst.call_ok_with(
        Request {
            op: Op::HS_RESPOND.0,
            bytes: m.len() as u32,
            session_id,
            flags: kernel.flags(),
            ..Request::default()
        },
        &[],
        &m,
    )?;
    let (_, confirm) = src.call_ok_with(
        Request {
            op: Op::HS_FINISH.0,
            bytes: reply.len() as u32,
            ..Request::default()
        },
        &[],
        &reply,
    )?;
    let mac = confirm.get(..32).unwrap_or_default();
    let (_, transcript) = dst.call_ok_with(
        Request {
            op: Op::HS_CONFIRM.0,
            bytes: 32,
            ..Request::default()
        },
        &[],
        mac,
    )?;
    let mut th = [0u8; 32];
    if transcript.len() == 32 {
        th.copy_from_slice(&transcript);
    }
    Ok(KeyedSession {
        transcript: th,
        source_kernel: GcmKernel(started.kernel),
        target_kernel: GcmKernel(responded.kernel),
    })
}

/// A mirror VM being built: the KVM VM on the owner's memory, known to the platform
/// with the owner's context; the platform forgets it again if it is dropped before it
/// becomes a [`Mirror`].
struct MirrorVm {
    kvm_vm: Arc<KvmVm>,
    forget: Forget,
    backend: Arc<dyn SevBackend>,
}

impl Vm {
    /// The mirror VM on this guest's memory (RAM and ROM slots), introduced to the
    /// platform as a VM of `platform_type` and given the owner's encryption context, with
    /// its MSR exits set up: SEV_STATUS (and, SEV-ES, every MSR that raises #VC there).
    fn mirror_vm(
        &self,
        kvm: &KvmSystem,
        kvm_type: KvmVmType,
        platform_type: KvmVmType,
    ) -> Result<MirrorVm, MirrorError> {
        let sev = self.sev.as_ref().ok_or(MirrorError::NotSev)?;
        let mirror = Arc::new(kvm.create_vm_with_type(kvm_type)?);
        let rom = self.rom.region();
        for (slot, (r, read_only)) in (0u32..).zip(
            self.ram
                .regions()
                .into_iter()
                .map(|r| (r, false))
                .chain(std::iter::once((rom, true))),
        ) {
            // SAFETY: the RAM and ROM mappings are kept alive by the Mirror (it holds
            // Arcs to both) for as long as the mirror VM exists.
            unsafe {
                mirror.map(Slot {
                    slot,
                    gpa: r.gpa,
                    size: r.size,
                    host_addr: r.host_addr,
                    read_only,
                    log_dirty: false,
                })?;
            }
        }
        let backend = sev.config.backend.clone();
        // Until the Mirror exists (its Drop does it), a failure makes the platform forget
        // the mirror VM again.
        let forget = Forget {
            backend: backend.clone(),
            vm: Some(mirror.sev_ref()),
        };
        backend
            .vm_created(mirror.sev_ref(), platform_type, mirror.clone())
            .map_err(MirrorError::Platform)?;
        backend
            .copy_enc_context_from(mirror.sev_ref(), sev.vm_ref)
            .map_err(MirrorError::CopyContext)?;
        if sev.es && backend.kind() == sev_platform::backend::BackendKind::Emulated {
            // As for the owner (SevGuest::init): every MSR that raises #VC on hardware
            // exits, so the helper's strict mode sees it.
            mirror.trap_msrs_except(crate::sev::ES_MSRS_WITHOUT_VC)?;
        } else {
            mirror.trap_msrs(&[MSR_SEV_STATUS, guest_abi::ghcb::msr::MSR_GHCB])?;
        }
        Ok(MirrorVm {
            kvm_vm: mirror,
            forget,
            backend,
        })
    }

    /// A helper vCPU of the mirror, not started.
    fn helper_vcpu(
        &self,
        kvm: &KvmSystem,
        mirror: &MirrorVm,
        index: u16,
        descriptor: HelperDescriptor,
        es: bool,
    ) -> Result<HelperVcpu, MirrorError> {
        let mut cpuid = kvm.cpuid_for(u32::from(index))?;
        patch_cpuid(&mut cpuid, Some(HypercallTransport::ServicesPage)).map_err(|_| {
            MirrorError::Kvm(KvmError::SupportedCpuid(kvm_ioctls::Error::new(
                libc::E2BIG,
            )))
        })?;
        if es {
            crate::sev::patch_cpuid_es(&mut cpuid);
        }
        let vcpu = mirror.kvm_vm.create_vcpu(u32::from(index), &cpuid)?;
        mirror
            .backend
            .vcpu_created(mirror.kvm_vm.sev_ref())
            .map_err(MirrorError::Platform)?;
        Ok(HelperVcpu {
            index,
            started: false,
            es: es.then(|| es::HelperEs::new(cpuid.as_slice().to_vec())),
            vcpu,
            view: self.host_view(),
            descriptor,
            services_gpa: self.services_gpa,
            latch: ServicesLatch::default(),
            next_id: 1,
            watchdog: None,
            timeout: DEFAULT_CALL_TIMEOUT,
            last: Response::default(),
        })
    }

    /// Creates a mirror VM on this guest's memory, shares its SEV context with it, and
    /// starts `helpers` helper vCPUs at the firmware's declared entry point (plain SEV;
    /// an SEV-ES guest's mirror is made at its launch, [`Vm::sev_launch_mirror`]).
    pub fn attach_mirror(&self, kvm: &KvmSystem, helpers: u16) -> Result<Mirror, MirrorError> {
        let sev = self.sev.as_ref().ok_or(MirrorError::NotSev)?;
        if sev.es {
            return Err(MirrorError::SevEs);
        }
        if self.sev_phase() != Some(crate::sev::LaunchPhase::Finished) {
            return Err(MirrorError::NotLaunched);
        }
        let descriptor = *self.helper.as_ref().ok_or(MirrorError::NoHelper)?;
        let deadline = Instant::now() + HELPER_READY_TIMEOUT;
        while !self.helper_ready.load(std::sync::atomic::Ordering::Acquire) {
            if Instant::now() >= deadline {
                return Err(MirrorError::HelperNotReady(HELPER_READY_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if helpers == 0 || helpers > descriptor.max_vcpus {
            return Err(MirrorError::TooManyHelpers {
                asked: helpers,
                max: descriptor.max_vcpus,
            });
        }
        let mut mirror = self.mirror_vm(kvm, KvmVmType::Default, KvmVmType::Default)?;
        let mut vcpus = Vec::new();
        for index in 0..helpers {
            let helper = self.helper_vcpu(kvm, &mirror, index, descriptor, false)?;
            let entry = descriptor.entry(index);
            let mut sregs = helper.vcpu.sregs()?;
            sregs.cs = flat32(entry.code_selector, 0xb);
            let data = flat32(entry.data_selector, 0x3);
            (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
            sregs.cr0 = 0x11; // PE | ET
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
            helper.vcpu.set_sregs(&sregs)?;
            let mut regs = helper.vcpu.regs()?;
            // No register carries anything in: the entry takes its slot itself.
            regs.rip = u64::from(entry.rip);
            regs.rsp = entry.rsp;
            regs.rflags = 2;
            helper.vcpu.set_regs(&regs)?;
            vcpus.push(helper);
        }
        let mut m = Mirror {
            helpers: vcpus,
            kvm_vm: mirror.kvm_vm.clone(),
            backend: mirror.backend.clone(),
            descriptor,
            info: Response::default(),
            started: false,
            measured: 0,
            _ram: self.ram.clone(),
            _rom: self.rom.clone(),
        };
        mirror.forget.vm = None;
        m.start()?;
        Ok(m)
    }

    /// SEV-ES launch, after the owner's LAUNCH_UPDATE_VMSA and before its LAUNCH_MEASURE:
    /// creates the mirror VM and `helpers` helper vCPUs, sets each one's registers to the
    /// VMSA the firmware's helper descriptor declares (`firmware::helper_vmsas`: the
    /// measured entry in 32-bit flat protected mode, its segments, a stack in the helper
    /// region), and has the mirror's LAUNCH_UPDATE_VMSA encrypt and measure them, in
    /// helper order, into the owner's launch digest (after the owner's VMSAs: the digest
    /// is SHA-256(firmware ‖ guest VMSAs ‖ helper VMSAs)). From then on no helper register
    /// can be set; the helpers run once the guest's helper is ready ([`Mirror::start`]).
    pub fn sev_launch_mirror(
        &mut self,
        started: LaunchStarted,
        kvm: &KvmSystem,
        helpers: u16,
    ) -> Result<(LaunchStarted, Mirror), MirrorError> {
        let sev = self.sev.as_ref().ok_or(MirrorError::NotSev)?;
        if !sev.es || !started.vmsas_done() {
            return Err(MirrorError::NotEsLaunch);
        }
        let descriptor = *self.helper.as_ref().ok_or(MirrorError::NoHelper)?;
        if helpers == 0 || helpers > descriptor.max_vcpus {
            return Err(MirrorError::TooManyHelpers {
                asked: helpers,
                max: descriptor.max_vcpus,
            });
        }
        let vmsas =
            crate::firmware::helper_vmsas(&descriptor, helpers, sev_platform::vmsa::VmmType::Qemu)
                .map_err(MirrorError::HelperVmsas)?;
        let (kvm_type, platform_type) = crate::sev::vm_types(Some(&sev.config), kvm);
        let mut mirror = self.mirror_vm(kvm, kvm_type, platform_type)?;
        let mut vcpus = Vec::new();
        for (index, vmsa) in (0u16..).zip(&vmsas) {
            let helper = self.helper_vcpu(kvm, &mirror, index, descriptor, true)?;
            // What QEMU does for the owner's vCPUs before LAUNCH_UPDATE_VMSA: the
            // registers the VMSA will hold.
            let base = helper.vcpu.sregs()?;
            helper.vcpu.set_sregs(&vmsa.kvm_sregs(&base))?;
            helper.vcpu.set_regs(&vmsa.kvm_regs())?;
            helper.vcpu.set_fpu(&vmsa.kvm_fpu())?;
            vcpus.push(helper);
        }
        let (backend, mirror_ref) = (mirror.backend.clone(), mirror.kvm_vm.sev_ref());
        let result = backend.launch_update_vmsa(mirror_ref, &vmsas);
        // As for the owner: the vCPUs the platform encrypted are protected from now on.
        for (index, helper) in (0u32..).zip(vcpus.iter_mut()) {
            match backend.protected_vcpu_state(mirror_ref, index) {
                Some(slot) => helper.vcpu.protect_emulated(slot),
                None if result.is_ok()
                    && backend.kind() == sev_platform::backend::BackendKind::Hardware =>
                {
                    helper.vcpu.protect_hardware()
                }
                None => {}
            }
        }
        result.map_err(MirrorError::Platform)?;
        let m = Mirror {
            helpers: vcpus,
            kvm_vm: mirror.kvm_vm.clone(),
            backend,
            descriptor,
            info: Response::default(),
            started: false,
            measured: helpers,
            _ram: self.ram.clone(),
            _rom: self.rom.clone(),
        };
        mirror.forget.vm = None;
        Ok((started, m))
    }
}
