//! A running machine: one VM, its control socket and its event loop.
//!
//! Everything that changes the VM happens on the thread that runs [`Machine::run`]: vCPU
//! outcomes, signals and control-socket commands all arrive on one channel, so the VM
//! and its run state have a single owner and need no locks. The QMP layer only decodes
//! and encodes; this module turns [`QmpCommand`]s into VM operations.

use crate::{
    migrate::{
        self,
        guest::{Layout, MachineLink, VmSource},
        Direction, Ended, Job, MachineReply, MachineRequest, Parameters,
    },
    qmp::{
        ControlError, Controller, EventSender, HelperInfo, HelperState, MigrationInfo,
        MigrationStatus, QmpCommand, QmpEvent, QmpReply, RunState as QmpRunState, SevCapability,
        SevGuestType, SevInfo, SevLaunchMeasureInfo, SevState, ShutdownCause, StatusInfo,
    },
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use migration::{
    engine::{LocalGuest, MigrationError, SourceOptions},
    frames::{GpaRange, GuestMode, Hello, PROTOCOL_VERSION},
};
use sev_platform::{backend::SecretHeader, Policy, SevBackend};
use std::{
    sync::{
        mpsc::{self, Receiver, Sender},
        Arc, Mutex,
    },
    time::Duration,
};
use vmm::{
    kvm::state::VcpuState,
    runstate::{self, RunEvent, RunState},
    sev::LaunchMeasured,
    vcpu::VmEvent,
    vm::VmOutcome,
    Vm,
};

/// How long a control command may wait for the machine loop.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long vCPUs get to acknowledge a pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// What reaches the machine loop.
pub enum Input {
    /// Something the VM reported.
    Vm(VmEvent),
    /// A control command and where its reply goes.
    Control(QmpCommand, Sender<Result<QmpReply, ControlError>>),
    /// A migration thread needs the VM.
    Migration(MachineRequest, Sender<Result<MachineReply, String>>),
    /// A migration thread finished.
    MigrationEnded(Ended),
}

/// The `Controller` the QMP server calls: it forwards each command to the machine loop
/// and waits for the reply.
pub struct ChannelController {
    tx: Mutex<Sender<Input>>,
}

impl Controller for ChannelController {
    fn execute(&self, cmd: QmpCommand) -> Result<QmpReply, ControlError> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let sent = match self.tx.lock() {
            Ok(tx) => tx.send(Input::Control(cmd, reply_tx)).is_ok(),
            Err(_) => false,
        };
        if !sent {
            return Err(ControlError::generic("the VM is shutting down"));
        }
        reply_rx
            .recv_timeout(REPLY_TIMEOUT)
            .unwrap_or_else(|_| Err(ControlError::generic("the VMM did not answer in time")))
    }
}

/// How the machine ended.
#[derive(Debug)]
pub enum Ending {
    /// The VM ended this way.
    Vm(VmOutcome),
    /// `quit` on the control socket.
    Quit,
    /// The incoming migration failed; the guest never ran here.
    IncomingFailed(String),
}

/// What the machine is, beyond its VM.
pub struct MachineOptions {
    /// Helper vCPUs to attach to an SEV guest's mirror (0: none).
    pub helpers: u16,
    /// The VM waits for an incoming migration (`--incoming`).
    pub incoming: bool,
    /// SHA-256 of the firmware image (both sides of a migration must boot the same).
    pub firmware_digest: [u8; 32],
    /// The guest's policy (SEV).
    pub policy: Option<Policy>,
}

/// What the machine saw on the way, for `--boot-trace`.
#[derive(Debug, Default)]
pub struct Trace {
    /// Boot milestones.
    pub milestones: Vec<vmm::vm::Milestone>,
    /// Exit counts of each vCPU.
    pub exits: Vec<vmm::vcpu::ExitStats>,
}

/// The machine: a VM with its run state.
pub struct Machine {
    trace: Trace,
    kvm: Arc<vmm::KvmSystem>,
    options: MachineOptions,
    mirror: Option<vmm::mirror::Mirror>,
    mirror_failed: bool,
    vm: Vm,
    state: RunState,
    launch: Option<LaunchMeasured>,
    backend: Option<Arc<dyn SevBackend>>,
    events: EventSender,
    inbox: Receiver<Input>,
    tx: Sender<Input>,
    params: Parameters,
    job: Option<Job>,
    /// Whether the guest ran when the outgoing migration started (it runs again if the
    /// migration fails).
    was_running: bool,
    /// The firmware of an incoming VM reached its CONFIGURED milestone: it has parked
    /// (or is about to) and writes no more guest memory.
    parked: bool,
}

fn qmp_state(s: RunState) -> QmpRunState {
    match s {
        RunState::Prelaunch => QmpRunState::Prelaunch,
        RunState::Running => QmpRunState::Running,
        RunState::Paused => QmpRunState::Paused,
        RunState::InMigrate => QmpRunState::InMigrate,
        RunState::FinishMigrate => QmpRunState::FinishMigrate,
        RunState::PostMigrate => QmpRunState::PostMigrate,
        RunState::Shutdown => QmpRunState::Shutdown,
        RunState::InternalError => QmpRunState::InternalError,
    }
}

impl Machine {
    /// A machine around `vm`, which is built but not started. `launch` is the measured
    /// SEV launch when the guest waits for its owner (`--paused`).
    pub fn new(
        kvm: Arc<vmm::KvmSystem>,
        mut vm: Vm,
        launch: Option<LaunchMeasured>,
        backend: Option<Arc<dyn SevBackend>>,
        options: MachineOptions,
    ) -> Machine {
        let (tx, inbox) = mpsc::channel();
        let sink = tx.clone();
        let sink = Mutex::new(sink);
        vm.route_events(Arc::new(move |e| {
            if let Ok(tx) = sink.lock() {
                let _ = tx.send(Input::Vm(e));
            }
        }));
        Machine {
            trace: Trace::default(),
            kvm,
            mirror: None,
            mirror_failed: false,
            vm,
            state: if options.incoming {
                RunState::InMigrate
            } else {
                RunState::Prelaunch
            },
            options,
            launch,
            backend,
            events: EventSender::new(),
            inbox,
            tx,
            params: Parameters::default(),
            job: None,
            was_running: false,
            parked: false,
        }
    }

    /// Waits on `listener` for the source of an incoming migration (`--incoming`).
    pub fn listen(&mut self, listener: std::net::TcpListener) -> std::io::Result<()> {
        // First touches of guest RAM are slow here (DESIGN §2): pay them while waiting.
        let prefault = self.vm.prefault_job();
        std::thread::Builder::new()
            .name("prefault".into())
            .spawn(move || {
                let t0 = std::time::Instant::now();
                match prefault() {
                    Ok(()) => log::info!("guest RAM prefaulted in {:?}", t0.elapsed()),
                    Err(e) => log::warn!("cannot prefault guest RAM: {e}"),
                }
            })?;
        self.job = Some(migrate::start_incoming(listener, self.tx.clone())?);
        Ok(())
    }

    /// The controller for a QMP server.
    pub fn controller(&self) -> Arc<ChannelController> {
        Arc::new(ChannelController {
            tx: Mutex::new(self.tx.clone()),
        })
    }

    /// Where the VM's events go (for the signal thread).
    pub fn event_sink(&self) -> vmm::vcpu::EventSink {
        self.vm.event_sink()
    }

    /// The event broadcaster for a QMP server.
    pub fn qmp_events(&self) -> EventSender {
        self.events.clone()
    }

    /// Runs the guest now (no `--paused`), finishing an SEV launch first.
    pub fn start(&mut self) -> Result<(), ControlError> {
        self.cont()
    }

    fn transition(&mut self, event: RunEvent) -> Result<(), ControlError> {
        self.state =
            runstate::next(self.state, event).map_err(|e| ControlError::generic(e.to_string()))?;
        Ok(())
    }

    fn cont(&mut self) -> Result<(), ControlError> {
        match self.state {
            RunState::Prelaunch | RunState::InMigrate if !self.vm.started() => {
                if let Some(measured) = self.launch.take() {
                    self.vm
                        .sev_launch_finish(measured)
                        .map_err(|e| ControlError::generic(format!("LAUNCH_FINISH failed: {e}")))?;
                }
                self.vm
                    .start()
                    .map_err(|e| ControlError::generic(format!("cannot start the guest: {e}")))?;
            }
            RunState::Paused => self.vm.resume(),
            RunState::Running | RunState::InMigrate => return Ok(()),
            other => return Err(ControlError::not_permitted("cont", qmp_state(other))),
        }
        self.transition(RunEvent::Continue)?;
        if self.state == RunState::Running {
            self.events.send(&QmpEvent::Resume);
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), ControlError> {
        match self.state {
            RunState::Running => {
                if !self.vm.pause(PAUSE_TIMEOUT) {
                    return Err(ControlError::generic("the vCPUs did not stop in time"));
                }
            }
            RunState::Paused => return Ok(()),
            other => return Err(ControlError::not_permitted("stop", qmp_state(other))),
        }
        self.transition(RunEvent::Stop)?;
        self.events.send(&QmpEvent::Stop);
        Ok(())
    }

    fn backend(&self) -> Result<&Arc<dyn SevBackend>, ControlError> {
        self.backend
            .as_ref()
            .ok_or_else(|| ControlError::generic("SEV feature is not available"))
    }

    fn query_sev(&self) -> Result<QmpReply, ControlError> {
        let backend = self.backend()?;
        let platform = backend
            .platform_status()
            .map_err(|e| ControlError::generic(e.to_string()))?;
        let guest = match self.vm.sev_status() {
            Some(Ok(g)) => g,
            Some(Err(e)) => return Err(ControlError::generic(e.to_string())),
            None => return Err(ControlError::generic("SEV feature is not available")),
        };
        let state = SevState::from_name(guest.state.qemu_name()).unwrap_or(SevState::Uninit);
        Ok(QmpReply::Sev(SevInfo {
            enabled: true,
            api_major: platform.api_major,
            api_minor: platform.api_minor,
            build_id: platform.build,
            policy: guest.policy.0,
            state,
            handle: guest.handle,
            sev_type: SevGuestType::Sev,
        }))
    }

    fn inject_secret(
        &mut self,
        args: crate::qmp::SevInjectLaunchSecret,
    ) -> Result<QmpReply, ControlError> {
        let Some(measured) = &self.launch else {
            return Err(ControlError::generic(format!(
                "a launch secret can only be injected while an SEV guest waits after LAUNCH_MEASURE (run --sev --paused); the VM is {}",
                self.state
            )));
        };
        let header = B64
            .decode(args.packet_header.trim())
            .map_err(|e| ControlError::generic(format!("packet-header is not base64: {e}")))?;
        let header = SecretHeader::from_bytes(&header).ok_or_else(|| {
            ControlError::generic(format!(
                "packet-header must be {} bytes",
                SecretHeader::SIZE
            ))
        })?;
        let secret = B64
            .decode(args.secret.trim())
            .map_err(|e| ControlError::generic(format!("secret is not base64: {e}")))?;
        self.vm
            .sev_inject_secret(measured, &header, &secret, args.gpa)
            .map_err(|e| ControlError::generic(format!("LAUNCH_SECRET failed: {e}")))?;
        Ok(QmpReply::Empty)
    }

    fn capabilities(&self) -> Result<QmpReply, ControlError> {
        let certs = self
            .backend()?
            .export_certs()
            .map_err(|e| ControlError::generic(e.to_string()))?;
        // The emulated platform has no chip id; a stable stand-in from its identity.
        let cpu0_id = {
            use sha2::{Digest, Sha512};
            Sha512::digest(&certs.chain).to_vec()
        };
        Ok(QmpReply::SevCapabilities(SevCapability {
            pdh: B64.encode(&certs.pdh),
            cert_chain: B64.encode(certs.firmware_chain()),
            cpu0_id: B64.encode(cpu0_id),
            cbitpos: 0,
            reduced_phys_bits: 0,
        }))
    }

    /// Attaches the mirror VM once the guest's firmware has its helper ready.
    fn attach_mirror(&mut self) {
        let helpers = self.options.helpers;
        if self.backend.is_none() || helpers == 0 || self.mirror.is_some() {
            return;
        }
        match self.vm.attach_mirror(&self.kvm, helpers) {
            Ok(m) => {
                log::info!(
                    "mirror VM attached: {} helper vCPU(s), helper region {:#x}+{:#x}",
                    helpers,
                    m.info().region_base,
                    m.info().region_size
                );
                self.mirror = Some(m);
            }
            Err(e) => {
                log::warn!("cannot attach the migration helper's mirror VM: {e}");
                self.mirror_failed = true;
            }
        }
    }

    fn helper_info(&mut self) -> HelperInfo {
        let Some(m) = &mut self.mirror else {
            return HelperInfo {
                state: if self.mirror_failed {
                    HelperState::Failed
                } else {
                    HelperState::None
                },
                vcpus: 0,
                region_base: 0,
                region_size: 0,
                descriptor_version: 0,
                requests: 0,
                bytes_sealed: 0,
                bytes_opened: 0,
            };
        };
        let (base, size) = (m.info().region_base, m.info().region_size);
        let version = u32::from(helper_abi::descriptor::HelperDescriptor::VERSION);
        let helpers = m.helpers_mut();
        let last = |f: fn(&helper_abi::mailbox::Response) -> u64| {
            helpers
                .iter()
                .map(|h| f(h.last_response()))
                .max()
                .unwrap_or(0)
        };
        HelperInfo {
            state: HelperState::Ready,
            vcpus: helpers.len() as u32,
            region_base: base,
            region_size: size,
            descriptor_version: version,
            requests: last(|r| r.requests),
            bytes_sealed: last(|r| r.bytes_sealed),
            bytes_opened: last(|r| r.bytes_opened),
        }
    }

    fn execute(&mut self, cmd: QmpCommand) -> Result<QmpReply, ControlError> {
        match cmd {
            QmpCommand::QueryStatus => Ok(QmpReply::Status(StatusInfo {
                status: qmp_state(self.state),
            })),
            QmpCommand::Cont => self.cont().map(|()| QmpReply::Empty),
            QmpCommand::Stop => self.stop().map(|()| QmpReply::Empty),
            QmpCommand::Quit => Ok(QmpReply::Empty),
            QmpCommand::QuerySev => self.query_sev(),
            QmpCommand::QuerySevLaunchMeasure => match self.vm.sev_measurement() {
                Some(m) => Ok(QmpReply::SevLaunchMeasure(SevLaunchMeasureInfo {
                    data: B64.encode(m.0),
                })),
                None if self.backend.is_none() => {
                    Err(ControlError::generic("SEV feature is not available"))
                }
                None => Err(ControlError::generic(
                    "SEV launch measurement is not available",
                )),
            },
            QmpCommand::SevInjectLaunchSecret(args) => self.inject_secret(args),
            QmpCommand::QuerySevCapabilities => self.capabilities(),
            QmpCommand::QueryHelper => Ok(QmpReply::Helper(self.helper_info())),
            QmpCommand::Migrate(m) => self.migrate(&m.uri).map(|()| QmpReply::Empty),
            QmpCommand::QueryMigrate => Ok(QmpReply::Migration(self.query_migrate())),
            QmpCommand::MigrateCancel => {
                if let Some(job) = self.job.as_ref().filter(|j| j.active()) {
                    job.cancel();
                }
                Ok(QmpReply::Empty)
            }
            QmpCommand::MigrateSetParameters(p) => {
                if let Some(ms) = p.downtime_limit {
                    self.params.downtime_limit = Duration::from_millis(ms);
                }
                if let Some(bps) = p.max_bandwidth {
                    self.params
                        .max_bandwidth
                        .store(bps, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(QmpReply::Empty)
            }
        }
    }

    /// Why this guest cannot leave, if it cannot.
    fn blocked_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(p) = self.options.policy {
            if p.has(Policy::NOSEND) {
                reasons.push(format!(
                    "the guest owner's policy {:#x} has NOSEND (bit 3): this guest must not be migrated",
                    p.0
                ));
            }
            if p.has(Policy::ES) {
                reasons.push(
                    "SEV-ES guests keep their vCPU state encrypted; sevmirror does not migrate it yet"
                        .to_string(),
                );
            }
        }
        if self.options.incoming {
            reasons.push("this VM waits for an incoming migration".to_string());
        }
        reasons
    }

    fn query_migrate(&self) -> MigrationInfo {
        let blocked = self.blocked_reasons();
        let mut info = match &self.job {
            Some(job) => {
                let p = job
                    .progress
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let mut info =
                    migrate::report::info(&p, job.cancelled() && job.active(), job.listening);
                if job.direction == Direction::Incoming
                    && p.status == migration::engine::Status::None
                {
                    // Listening, nothing received yet: QEMU says "setup".
                    info.status = Some(MigrationStatus::Setup);
                }
                info
            }
            None => MigrationInfo::default(),
        };
        if !blocked.is_empty() && !self.options.incoming {
            info.blocked_reasons = Some(blocked);
        }
        info
    }

    /// The helper region, for an SEV guest with its mirror attached.
    fn helper_region(&self) -> Option<(u64, u64)> {
        self.mirror
            .as_ref()
            .map(|m| (m.info().region_base, m.info().region_size))
    }

    fn layout(&self) -> Layout {
        Layout {
            ram: self
                .vm
                .ram_regions()
                .iter()
                .map(|r| (r.gpa, r.size))
                .collect(),
            helper_region: self.helper_region(),
        }
    }

    fn local_guest(&self, layout: &Layout) -> LocalGuest {
        let (base, size) = layout.helper_region.unwrap_or((0, 0));
        LocalGuest {
            mode: if self.backend.is_some() {
                GuestMode::Sev
            } else {
                GuestMode::Plain
            },
            ram: migrate::gpa_ranges(layout),
            firmware_digest: self.options.firmware_digest,
            helper_region: GpaRange { base, size },
            vcpus: self.vm.vcpu_count() as u32,
        }
    }

    /// Takes the helper vCPUs out of the mirror for a migration thread.
    fn borrow_helpers(&mut self) -> Result<Option<(Vec<vmm::mirror::HelperVcpu>, usize)>, String> {
        if self.backend.is_none() {
            return Ok(None);
        }
        let Some(m) = self.mirror.as_mut() else {
            return Err(if self.mirror_failed {
                "the migration helper failed to start (see the log)".to_string()
            } else if self.options.helpers == 0 {
                "the VM runs without a migration helper (--helpers 0)".to_string()
            } else {
                "the migration helper is not ready yet (the guest is still booting)".to_string()
            });
        };
        let batch = m.info().max_batch as usize;
        let helpers = m.take_helpers();
        if helpers.is_empty() {
            return Err("the helper vCPUs are busy with another migration".to_string());
        }
        Ok(Some((helpers, batch)))
    }

    fn migrate(&mut self, uri: &str) -> Result<(), ControlError> {
        if self.job.as_ref().is_some_and(Job::active) {
            return Err(ControlError::generic(
                "There's a migration process in progress",
            ));
        }
        if let Some(reason) = self.blocked_reasons().into_iter().next() {
            return Err(ControlError::generic(format!("cannot migrate: {reason}")));
        }
        if !matches!(self.state, RunState::Running | RunState::Paused) {
            return Err(ControlError::not_permitted(
                "migrate",
                qmp_state(self.state),
            ));
        }
        let uri: migration::uri::Uri = uri
            .parse()
            .map_err(|e: migration::uri::UriError| ControlError::generic(e.to_string()))?;
        let helpers = self
            .borrow_helpers()
            .map_err(|why| ControlError::generic(format!("cannot migrate: {why}")))?;
        let layout = self.layout();
        let local = self.local_guest(&layout);
        let hello = Hello {
            version: PROTOCOL_VERSION,
            mode: local.mode,
            mem_size: layout.ram.iter().map(|r| r.1).sum(),
            ram: local.ram,
            firmware_digest: local.firmware_digest,
            helper_region: local.helper_region,
            lanes: helpers.as_ref().map_or(0, |h| h.0.len() as u16),
            session_id: [0; 16],
            helper_nonce: [0; 16],
            page_size: helper_abi::PAGE_SIZE as u32,
            vcpus: local.vcpus,
        };
        let source = VmSource::new(
            self.vm.host_view(),
            self.vm.dirty_tracker(),
            layout,
            MachineLink::new(self.tx.clone()),
        );
        let plan = migrate::Outgoing {
            uri,
            hello,
            source,
            helpers,
            options: SourceOptions {
                downtime_limit: self.params.downtime_limit,
                max_bandwidth: self.params.max_bandwidth.clone(),
                ..SourceOptions::default()
            },
        };
        match migrate::start_outgoing(plan, self.tx.clone()) {
            Ok(job) => {
                self.was_running = self.state == RunState::Running;
                self.job = Some(job);
                self.events.send(&QmpEvent::Migration {
                    status: MigrationStatus::Setup,
                });
                Ok(())
            }
            Err(e) => Err(ControlError::generic(format!(
                "cannot start the migration thread: {e}"
            ))),
        }
    }

    /// Serves a migration thread's request.
    fn serve_migration(&mut self, request: MachineRequest) -> Result<MachineReply, String> {
        match request {
            MachineRequest::Pause => {
                if self.state == RunState::Running && !self.vm.pause(PAUSE_TIMEOUT) {
                    return Err("the vCPUs did not stop in time".into());
                }
                self.transition(RunEvent::StopAndCopy).map_err(|e| e.desc)?;
                self.events.send(&QmpEvent::Stop);
                Ok(MachineReply::Done)
            }
            MachineRequest::Resume => {
                self.resume_after_failure();
                Ok(MachineReply::Done)
            }
            MachineRequest::SaveState => {
                let vcpus = self
                    .vm
                    .save_vcpus()
                    .map_err(|e| format!("cannot save the vCPUs: {e}"))?
                    .iter()
                    .map(VcpuState::to_bytes)
                    .collect();
                let device = self
                    .vm
                    .device_state()
                    .map_err(|e| format!("cannot save the devices: {e}"))?;
                Ok(MachineReply::State { vcpus, device })
            }
            MachineRequest::PrepareIncoming => self.prepare_incoming(),
            MachineRequest::Run { vcpus, device } => self.run_received(vcpus, &device),
        }
    }

    /// After a failed outgoing migration: the guest runs again if it ran before.
    fn resume_after_failure(&mut self) {
        if self.state != RunState::FinishMigrate {
            return;
        }
        if self.was_running {
            self.vm.resume();
            let _ = self.transition(RunEvent::MigrationFailed);
            self.events.send(&QmpEvent::Resume);
        } else {
            // It was paused before: back to paused, as QEMU does.
            self.state = RunState::Paused;
        }
    }

    fn prepare_incoming(&mut self) -> Result<MachineReply, String> {
        if !self.options.incoming || self.state != RunState::InMigrate {
            return Err(format!(
                "the VM is {}, not waiting for a migration",
                self.state
            ));
        }
        if !self.vm.started() {
            return Err(if self.launch.is_some() {
                "the guest owner has not finished this VM's launch yet (inject the migration secret, then cont)".into()
            } else {
                "the VM has not started yet (cont)".into()
            });
        }
        // Guest memory is replaced from here on: a firmware still booting would write
        // over received pages (and read them as its own data).
        if !self.parked {
            return Err("the firmware is still starting".into());
        }
        if !self.vm.pause(PAUSE_TIMEOUT) {
            return Err("the parked vCPUs did not stop in time".into());
        }
        let helpers = self.borrow_helpers()?;
        let layout = self.layout();
        let local = self.local_guest(&layout);
        Ok(MachineReply::Incoming {
            local,
            layout,
            view: self.vm.host_view(),
            helpers,
        })
    }

    fn run_received(&mut self, vcpus: Vec<Vec<u8>>, device: &[u8]) -> Result<MachineReply, String> {
        let states = vcpus
            .iter()
            .enumerate()
            .map(|(i, b)| {
                VcpuState::from_bytes(b)
                    .map_err(|e| format!("the state of vCPU {i} is unusable: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !self.vm.pause(PAUSE_TIMEOUT) {
            return Err("the parked vCPUs did not stop in time".into());
        }
        self.vm
            .restore_vcpus(states)
            .map_err(|e| format!("cannot load the vCPU state: {e}"))?;
        self.vm
            .restore_device_state(device)
            .map_err(|e| format!("cannot load the device state: {e}"))?;
        self.vm.resume();
        self.transition(RunEvent::MigrationDone)
            .map_err(|e| e.desc)?;
        // The workload checks its memory on arrival (the dirty workload's verify).
        self.vm.request_guest(guest_abi::services::Request::VERIFY);
        self.events.send(&QmpEvent::Resume);
        Ok(MachineReply::Done)
    }

    /// A migration thread ended; returns how the machine ends because of it, if it does.
    fn migration_ended(&mut self, ended: Ended) -> Option<Ending> {
        if let Some(m) = self.mirror.as_mut() {
            m.return_helpers(ended.helpers);
        }
        let cancelled = self.job.as_ref().is_some_and(Job::cancelled);
        if let Some(job) = self.job.as_mut() {
            job.join();
        }
        match (ended.direction, ended.result) {
            (Direction::Outgoing, Ok(())) => {
                let _ = self.transition(RunEvent::MigrationDone);
                self.events.send(&QmpEvent::Migration {
                    status: MigrationStatus::Completed,
                });
                log::info!("migration completed: the guest runs on the target");
                None
            }
            (Direction::Outgoing, Err(e @ MigrationError::Committed { .. })) => {
                // The helper committed: the guest is "migrated out" and must not run here
                // unless an abort of the session releases it (issue 11: the VMM phase
                // adds `cont` refusal, the awaiting-abort state and the owner's abort).
                log::error!("{}", e.chain());
                self.events.send(&QmpEvent::Migration {
                    status: MigrationStatus::Failed,
                });
                None
            }
            (Direction::Outgoing, Err(e)) => {
                self.resume_after_failure();
                let status = if cancelled || matches!(e, MigrationError::Cancelled) {
                    MigrationStatus::Cancelled
                } else {
                    MigrationStatus::Failed
                };
                log::warn!(
                    "migration {}: {}; the guest stays here",
                    status.name(),
                    e.chain()
                );
                self.events.send(&QmpEvent::Migration { status });
                None
            }
            (Direction::Incoming, Ok(())) => {
                self.events.send(&QmpEvent::Migration {
                    status: MigrationStatus::Completed,
                });
                log::info!("incoming migration completed: the guest runs here");
                None
            }
            (Direction::Incoming, Err(e)) => {
                self.events.send(&QmpEvent::Migration {
                    status: MigrationStatus::Failed,
                });
                Some(Ending::IncomingFailed(e.chain()))
            }
        }
    }

    /// Runs the loop until the VM ends or `quit` arrives; stops the VM.
    pub fn run(mut self) -> (Ending, Trace) {
        let ending = loop {
            let Ok(input) = self.inbox.recv() else {
                break Ending::Quit;
            };
            match input {
                Input::Migration(request, reply) => {
                    let _ = reply.send(self.serve_migration(request));
                }
                Input::MigrationEnded(ended) => {
                    if let Some(ending) = self.migration_ended(ended) {
                        break ending;
                    }
                }
                Input::Control(cmd, reply) => {
                    let quit = matches!(cmd, QmpCommand::Quit);
                    let _ = reply.send(self.execute(cmd));
                    if quit {
                        self.events.send(&QmpEvent::Shutdown {
                            reason: ShutdownCause::HostQmpQuit,
                        });
                        break Ending::Quit;
                    }
                }
                Input::Vm(event) => {
                    let outcome = match event {
                        VmEvent::GuestExit { status, .. } => VmOutcome::GuestExit(status),
                        VmEvent::Fault { vcpu, report } => VmOutcome::Fault { vcpu, report },
                        VmEvent::Failed { vcpu, error } => VmOutcome::Failed { vcpu, error },
                        VmEvent::Signal(sig) => VmOutcome::Signal(sig),
                        VmEvent::Milestone { vcpu, event, at } => {
                            self.trace
                                .milestones
                                .push(vmm::vm::Milestone { vcpu, event, at });
                            if event == guest_abi::services::Event::HELPER_READY {
                                self.attach_mirror();
                            }
                            if event == guest_abi::services::Event::CONFIGURED {
                                self.parked = true;
                            }
                            continue;
                        }
                        VmEvent::Paused { .. } => continue,
                    };
                    let (event, cause) = match outcome {
                        VmOutcome::GuestExit(_) => {
                            (RunEvent::GuestExit, ShutdownCause::GuestShutdown)
                        }
                        VmOutcome::Signal(_) => (RunEvent::GuestExit, ShutdownCause::HostSignal),
                        _ => (RunEvent::Failure, ShutdownCause::GuestPanic),
                    };
                    let _ = self.transition(event);
                    self.events.send(&QmpEvent::Shutdown { reason: cause });
                    break Ending::Vm(outcome);
                }
            }
        };
        if let Some(mut job) = self.job.take() {
            job.cancel();
            // Unblock a thread waiting for the VM: its requests now fail.
            drop(self.inbox);
            job.join();
        }
        self.mirror = None;
        self.vm.stop();
        self.trace.exits = self.vm.exit_stats().to_vec();
        (ending, self.trace)
    }
}
