//! A running machine: one VM, its control socket and its event loop.
//!
//! Everything that changes the VM happens on the thread that runs [`Machine::run`]: vCPU
//! outcomes, signals and control-socket commands all arrive on one channel, so the VM
//! and its run state have a single owner and need no locks. The QMP layer only decodes
//! and encodes; this module turns [`QmpCommand`]s into VM operations.

use crate::qmp::{
    ControlError, Controller, EventSender, HelperInfo, HelperState, QmpCommand, QmpEvent, QmpReply,
    RunState as QmpRunState, SevCapability, SevGuestType, SevInfo, SevLaunchMeasureInfo, SevState,
    ShutdownCause, StatusInfo,
};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use sev_platform::{backend::SecretHeader, SevBackend};
use std::{
    sync::{
        mpsc::{self, Receiver, Sender},
        Arc, Mutex,
    },
    time::Duration,
};
use vmm::{
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
    helpers: u16,
    mirror: Option<vmm::mirror::Mirror>,
    mirror_failed: bool,
    vm: Vm,
    state: RunState,
    launch: Option<LaunchMeasured>,
    backend: Option<Arc<dyn SevBackend>>,
    events: EventSender,
    inbox: Receiver<Input>,
    tx: Sender<Input>,
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
        helpers: u16,
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
            helpers,
            mirror: None,
            mirror_failed: false,
            vm,
            state: RunState::Prelaunch,
            launch,
            backend,
            events: EventSender::new(),
            inbox,
            tx,
        }
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
            RunState::Prelaunch => {
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
            RunState::Running => return Ok(()),
            other => return Err(ControlError::not_permitted("cont", qmp_state(other))),
        }
        self.transition(RunEvent::Continue)?;
        self.events.send(&QmpEvent::Resume);
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
        if self.backend.is_none() || self.helpers == 0 || self.mirror.is_some() {
            return;
        }
        match self.vm.attach_mirror(&self.kvm, self.helpers) {
            Ok(m) => {
                log::info!(
                    "mirror VM attached: {} helper vCPU(s), helper region {:#x}+{:#x}",
                    self.helpers,
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
            QmpCommand::Migrate(_)
            | QmpCommand::QueryMigrate
            | QmpCommand::MigrateCancel
            | QmpCommand::MigrateSetParameters(_) => Err(ControlError::generic(
                "live migration is not available in this build yet",
            )),
        }
    }

    /// Runs the loop until the VM ends or `quit` arrives; stops the VM.
    pub fn run(mut self) -> (Ending, Trace) {
        let ending = loop {
            let Ok(input) = self.inbox.recv() else {
                break Ending::Quit;
            };
            match input {
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
        self.mirror = None;
        self.vm.stop();
        self.trace.exits = self.vm.exit_stats().to_vec();
        (ending, self.trace)
    }
}
