//! The VMM controller: one VM, its run state, its mirror's helper, its migrations.
//!
//! Everything that changes the VM happens on the thread that runs [`Controller::run`]:
//! vCPU outcomes, signals, control commands and migration threads' requests all arrive on
//! one channel, so the VM and its state have a single owner and need no locks. Other
//! threads reach it through a [`ControllerHandle`], with the controller's own [`Command`],
//! [`Reply`] and [`ControlError`] types; what happens is reported as [`Event`]s to an
//! injected listener. The controller knows nothing of QMP: the binary maps its control
//! socket's commands to these and back.
//!
//! The state is one enum, [`State`]; which command is legal in which state and where each
//! step leads are pure functions ([`state::check`], [`state::next`]) with their own tests.
//! The mirror's helper has its own small lifecycle ([`HelperSlot`]): it is attached by the
//! guest (when its firmware reports the helper ready) whatever the run state, so it is
//! not folded into the run state's variants.

mod build;
mod es;
mod recovery;
pub mod state;

pub use build::{LaunchError, MachineBuilder};
pub use state::{BadTransition, CommandKind, Incoming, Resume, RunState, State, Trigger, Verdict};

use crate::{
    kvm::state::VcpuState,
    migrate::{
        self, Direction, Ended, HelperUnavailable, Helpers, Job, Layout, MachineError, MachineLink,
        MachineReply, MachineRequest, Parameters, RecoveryFiles, ToMachine, VmSource,
    },
    mirror::Mirror,
    vcpu::VmEvent,
    vm::{Milestone, VmError, VmOutcome},
    KvmSystem, Vm,
};
use migration::{
    engine::{LocalGuest, MigrationError, Progress, SourceOptions, Status, ZeroPages},
    frames::{GpaRange, GuestMode, Hello, PROTOCOL_VERSION},
    recovery::{hex, RecoveryFileError},
    uri::Uri,
};
use sev_platform::{
    backend::{GuestStatus, LaunchMeasurement, PlatformStatus, SecretHeader},
    Policy, SevBackend, SevError,
};
use std::{
    fmt,
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    sync::{
        mpsc::{self, Receiver, Sender},
        Arc, Mutex,
    },
    time::Duration,
};

/// How long a command may wait for the controller.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long vCPUs get to acknowledge a pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A command for the controller.
#[derive(Debug)]
pub enum Command {
    /// The run state.
    QueryStatus,
    /// Finish the launch if the guest waits before it, or resume a paused guest.
    Cont,
    /// Pause the guest.
    Stop,
    /// End the controller (the reply comes first).
    Quit,
    /// The SEV platform's and the guest's status.
    QuerySev,
    /// The launch measurement.
    QueryLaunchMeasure,
    /// LAUNCH_SECRET: the guest owner's packet, while the launch waits for it.
    InjectLaunchSecret(LaunchSecret),
    /// The platform's certificates and identity.
    QuerySevCapabilities,
    /// The mirror's migration helper.
    QueryHelper,
    /// Start an outgoing migration (returns at once).
    Migrate(MigrateTo),
    /// The current (or last) migration.
    QueryMigrate,
    /// Cancel the running migration (nothing to do without one).
    MigrateCancel,
    /// Change the migration parameters.
    SetMigrationParameters(MigrationParameters),
    /// Source, migrated out: release the guest with an abort of its committed session
    /// (an abort token file, the target helper's or the guest owner's).
    MigrateRelease(PathBuf),
    /// Target waiting for the commit: take it from the source's commit file.
    MigrateCommit(PathBuf),
    /// Target: give the incoming session up for good; the token goes to this file (or
    /// one in the state directory).
    MigrateAbortIncoming(Option<PathBuf>),
}

/// Where an outgoing migration goes.
#[derive(Clone, Debug)]
pub struct MigrateTo {
    /// The target's URI.
    pub uri: Uri,
    /// Where the commit record is kept (None: a file in the state directory).
    pub commit_file: Option<PathBuf>,
}

impl Command {
    /// The command's kind, for [`state::check`].
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::Cont => CommandKind::Cont,
            Command::Stop => CommandKind::Stop,
            Command::Migrate(_) => CommandKind::Migrate,
            Command::InjectLaunchSecret(_) => CommandKind::InjectSecret,
            Command::MigrateRelease(_) => CommandKind::Release,
            Command::MigrateCommit(_) | Command::MigrateAbortIncoming(_) => {
                CommandKind::ResolveIncoming
            }
            Command::QueryStatus
            | Command::Quit
            | Command::QuerySev
            | Command::QueryLaunchMeasure
            | Command::QuerySevCapabilities
            | Command::QueryHelper
            | Command::QueryMigrate
            | Command::MigrateCancel
            | Command::SetMigrationParameters(_) => CommandKind::Other,
        }
    }

    /// A short name, as the refusal of an illegal command names it.
    pub fn name(&self) -> &'static str {
        match self {
            Command::QueryStatus => "query-status",
            Command::Cont => "cont",
            Command::Stop => "stop",
            Command::Quit => "quit",
            Command::QuerySev => "query-sev",
            Command::QueryLaunchMeasure => "query-sev-launch-measure",
            Command::InjectLaunchSecret(_) => "sev-inject-launch-secret",
            Command::QuerySevCapabilities => "query-sev-capabilities",
            Command::QueryHelper => "query-helper",
            Command::Migrate(_) => "migrate",
            Command::QueryMigrate => "query-migrate",
            Command::MigrateCancel => "migrate_cancel",
            Command::SetMigrationParameters(_) => "migrate-set-parameters",
            Command::MigrateRelease(_) => "migrate-release",
            Command::MigrateCommit(_) => "migrate-commit",
            Command::MigrateAbortIncoming(_) => "migrate-abort-incoming",
        }
    }
}

/// A LAUNCH_SECRET packet from the guest owner.
#[derive(Clone, Debug)]
pub struct LaunchSecret {
    /// The packet header (flags, IV, MAC).
    pub header: SecretHeader,
    /// The encrypted secret.
    pub secret: Vec<u8>,
    /// Where it goes (default: the firmware's secret area).
    pub gpa: Option<u64>,
}

/// New migration parameters; `None` keeps the current value.
#[derive(Clone, Copy, Debug, Default)]
pub struct MigrationParameters {
    /// Longest tolerated pause of the guest.
    pub downtime_limit: Option<Duration>,
    /// Bytes per second on the stream, 0 for no limit.
    pub max_bandwidth: Option<u64>,
    /// How private zero pages travel (the short records leak which pages are zero).
    pub zero_pages: Option<ZeroPages>,
}

/// A command's answer.
#[derive(Debug)]
pub enum Reply {
    /// Done; nothing to report.
    Done,
    /// The run state.
    Status(RunState),
    /// The platform's and the guest's SEV status.
    Sev {
        /// The platform.
        platform: PlatformStatus,
        /// The guest.
        guest: GuestStatus,
    },
    /// The launch measurement.
    LaunchMeasure(LaunchMeasurement),
    /// The platform's certificates and identity.
    SevCapabilities(SevCapabilities),
    /// The mirror's migration helper.
    Helper(HelperStatus),
    /// The current (or last) migration.
    Migration(MigrationStatus),
    /// The incoming session was given up for good.
    Aborted {
        /// Its transcript hash (zero if the key agreement was not complete).
        transcript: [u8; 32],
        /// Where its abort token went.
        token_file: Option<PathBuf>,
    },
}

/// The platform's certificates and identity (`query-sev-capabilities`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SevCapabilities {
    /// The Platform Diffie-Hellman certificate.
    pub pdh: Vec<u8>,
    /// The certificate chain the guest owner checks (PEK, OCA, CEK).
    pub cert_chain: Vec<u8>,
    /// The chip's identity (the emulated platform has none: a stable stand-in).
    pub chip_id: Vec<u8>,
    /// The C-bit position the guest's CPUID 0x8000001F announces (0 on the emulated
    /// platform; docs/architecture.md §3).
    pub cbitpos: u32,
    /// The physical-address bits lost to encryption, as the same leaf announces.
    pub reduced_phys_bits: u32,
}

/// Where the mirror's migration helper is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HelperState {
    /// No helper: a plain guest, `--helpers 0`, or not attached yet.
    None,
    /// Attached and serving.
    Ready,
    /// Attaching it failed.
    Failed,
}

/// The mirror's migration helper (`query-helper`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelperStatus {
    /// Where it is.
    pub state: HelperState,
    /// Helper vCPUs in the mirror (0 while none is attached).
    pub vcpus: u32,
    /// The helper region (never migrated).
    pub region_base: u64,
    /// Its size.
    pub region_size: u64,
    /// The helper descriptor's version.
    pub descriptor_version: u32,
    /// Requests served (all helper vCPUs).
    pub requests: u64,
    /// Page bytes sealed.
    pub bytes_sealed: u64,
    /// Page bytes opened.
    pub bytes_opened: u64,
}

/// Why this guest cannot leave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// The owner's policy forbids sending it.
    NoSend(Policy),
    /// An SEV-ES guest launched without helper vCPUs: its vCPU state can only leave
    /// through helpers its launch measured.
    SevEs,
    /// The VM waits for an incoming migration.
    Incoming,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::NoSend(p) => write!(
                f,
                "the guest owner's policy {:#x} has NOSEND (bit 3): this guest must not be migrated",
                p.0
            ),
            Blocker::SevEs => f.write_str(
                "SEV-ES guests migrate only through helper vCPUs measured at their launch, and this one was launched without (run --helpers N)",
            ),
            Blocker::Incoming => f.write_str("this VM waits for an incoming migration"),
        }
    }
}

/// A migration, as `query-migrate` sees it.
#[derive(Clone, Debug)]
pub struct JobStatus {
    /// Which way.
    pub direction: Direction,
    /// Its figures.
    pub progress: Progress,
    /// Cancelled, and its thread still winds down.
    pub cancelling: bool,
    /// Where an incoming migration listens.
    pub listening: Option<SocketAddr>,
    /// The source's commit file, once written.
    pub commit_file: Option<PathBuf>,
    /// The target's abort token file, once written.
    pub abort_token_file: Option<PathBuf>,
}

/// The current (or last) migration and what keeps this guest from leaving.
#[derive(Clone, Debug)]
pub struct MigrationStatus {
    /// The migration, if one ran or runs.
    pub job: Option<JobStatus>,
    /// Why the guest cannot leave (never listed for an incoming VM).
    pub blocked: Vec<Blocker>,
}

/// Why the guest stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownCause {
    /// The `quit` command.
    HostQuit,
    /// A termination signal.
    HostSignal,
    /// The guest asked to stop.
    GuestShutdown,
    /// A guest fault or a vCPU failure.
    GuestPanic,
}

/// What a migration's status became.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationEvent {
    /// An outgoing migration started.
    Setup,
    /// It completed.
    Completed,
    /// It failed.
    Failed,
    /// It was cancelled.
    Cancelled,
    /// The source committed and the target did not confirm: the guest waits for an
    /// abort of the session.
    AwaitingAbort,
}

impl MigrationEvent {
    /// The status's name, as QEMU spells it (sevmirror's own where QEMU has none).
    pub fn name(self) -> &'static str {
        match self {
            MigrationEvent::Setup => "setup",
            MigrationEvent::Completed => "completed",
            MigrationEvent::Failed => "failed",
            MigrationEvent::Cancelled => "cancelled",
            MigrationEvent::AwaitingAbort => "awaiting-abort",
        }
    }
}

/// What the controller reports as it happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The guest runs (again).
    Resume,
    /// The guest stopped running.
    Stop,
    /// The VM is ending.
    Shutdown(ShutdownCause),
    /// A migration's status changed.
    Migration(MigrationEvent),
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The command is illegal in the current state.
    #[error("{command} is not permitted while the VM is {state}")]
    NotPermitted {
        /// The command.
        command: &'static str,
        /// The state, by name.
        state: RunState,
    },
    /// The VM is not an SEV guest.
    #[error("SEV feature is not available")]
    NoSev,
    /// No measurement yet.
    #[error("SEV launch measurement is not available")]
    NoMeasurement,
    /// The platform could not report its status or certificates.
    #[error(transparent)]
    Platform(SevError),
    /// The guest's SEV status could not be read.
    #[error(transparent)]
    GuestStatus(SevError),
    /// A launch secret arrived when no launch waits for one.
    #[error("a launch secret can only be injected while an SEV guest waits after LAUNCH_MEASURE (run --sev --paused); the VM is {0}")]
    NoLaunchWaiting(RunState),
    /// LAUNCH_SECRET failed.
    #[error("LAUNCH_SECRET failed")]
    LaunchSecret(#[source] VmError),
    /// LAUNCH_FINISH failed.
    #[error("LAUNCH_FINISH failed")]
    LaunchFinish(#[source] VmError),
    /// The vCPUs could not start.
    #[error("cannot start the guest")]
    Start(#[source] VmError),
    /// The vCPUs did not acknowledge a pause.
    #[error("the vCPUs did not stop in time")]
    PauseTimeout,
    /// A migration is running.
    #[error("There's a migration process in progress")]
    MigrationInProgress,
    /// The guest cannot leave.
    #[error("cannot migrate: {0}")]
    Blocked(Blocker),
    /// The helper vCPUs cannot be lent to the migration.
    #[error("cannot migrate: {0}")]
    NoHelpers(HelperUnavailable),
    /// The migration thread could not start.
    #[error("cannot start the migration thread")]
    MigrationThread(#[source] std::io::Error),
    /// The step is not allowed in the current state.
    #[error(transparent)]
    State(#[from] BadTransition),
    /// The controller has ended.
    #[error("the VM is shutting down")]
    ShuttingDown,
    /// The controller did not answer in time.
    #[error("the VMM did not answer in time")]
    NoAnswer,
    /// The guest committed to a target and must not run here.
    #[error("{command} is refused: the VM is postmigrate and its migration awaiting-abort — the guest committed to a target (session {}) that did not confirm, so it must not run here unless that session is aborted: get the target's abort token (migrate-abort-incoming on the target) or the guest owner's (sevmirror owner abort), then migrate-release", hex(transcript))]
    MigratedOut {
        /// The command.
        command: &'static str,
        /// The committed session.
        transcript: [u8; 32],
    },
    /// A recovery file could not be read.
    #[error("cannot read {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A recovery file is not usable.
    #[error("{} is unusable", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: RecoveryFileError,
    },
    /// The file is for another session.
    #[error("{} is for session {}, not for session {}", path.display(), hex(file), hex(ours))]
    OtherSession {
        /// The file.
        path: PathBuf,
        /// The file's session.
        file: [u8; 32],
        /// This VM's.
        ours: [u8; 32],
    },
    /// The helper refused to release the guest.
    #[error("the migration helper refused the {origin} abort token: the guest stays migrated out")]
    Release {
        /// Whose token it was.
        origin: &'static str,
        /// The helper's answer.
        #[source]
        source: crate::mirror::HelperError,
    },
    /// No helper vCPU to hand the token to.
    #[error("the migration helper is not attached")]
    NoHelper,
    /// No incoming migration to decide.
    #[error("no incoming migration is running")]
    NoIncoming,
    /// The incoming migration still receives: a commit file is taken only once the
    /// stream ended after Ready.
    #[error("the incoming migration is {0}: a commit file is taken only once its stream ended after its helper verified the guest (status awaiting-commit)")]
    NotAwaitingCommit(&'static str),
    /// The incoming migration could not do what the operator asked.
    #[error("{0}")]
    Resolve(String),
}

/// What reaches the controller.
enum Input {
    /// Something the VM reported.
    Vm(VmEvent),
    /// A command and where its reply goes.
    Command(Command, Sender<Result<Reply, ControlError>>),
    /// A migration thread's request or end.
    Migration(ToMachine),
}

/// How other threads reach the controller.
pub struct ControllerHandle {
    tx: Mutex<Sender<Input>>,
}

impl ControllerHandle {
    /// Runs `cmd` on the controller's thread and waits for the reply.
    pub fn execute(&self, cmd: Command) -> Result<Reply, ControlError> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let sent = match self.tx.lock() {
            Ok(tx) => tx.send(Input::Command(cmd, reply_tx)).is_ok(),
            Err(_) => false,
        };
        if !sent {
            return Err(ControlError::ShuttingDown);
        }
        reply_rx
            .recv_timeout(REPLY_TIMEOUT)
            .unwrap_or(Err(ControlError::NoAnswer))
    }
}

/// The status's name in `query-migrate`.
fn status_name(s: Status) -> &'static str {
    match s {
        Status::None => "none",
        Status::Setup => "setup",
        Status::Active => "active",
        Status::Completed => "completed",
        Status::Failed => "failed",
        Status::Cancelled => "cancelled",
        Status::Committing => "committing",
        Status::AwaitingAbort => "awaiting-abort",
        Status::AwaitingCommit => "awaiting-commit",
    }
}

/// How the controller ended.
#[derive(Debug)]
pub enum Ending {
    /// The VM ended this way.
    Vm(VmOutcome),
    /// `quit`.
    Quit,
    /// The incoming migration failed; the guest never ran here.
    IncomingFailed(MigrationError),
}

/// What the controller saw on the way, for `--boot-trace`.
#[derive(Debug, Default)]
pub struct Trace {
    /// Boot milestones.
    pub milestones: Vec<Milestone>,
    /// Exit counts of each vCPU.
    pub exits: Vec<crate::vcpu::ExitStats>,
}

/// The mirror VM and its migration helper.
pub enum HelperSlot {
    /// No helper wanted: a plain guest, or `--helpers 0`.
    Off,
    /// Waiting for the guest's firmware to report its helper ready.
    Waiting {
        /// Helper vCPUs to start.
        vcpus: u16,
    },
    /// SEV-ES: the mirror made and measured at the launch, its helpers not yet started
    /// (they start once the firmware reports its helper ready; never attached again).
    Measured(Box<Mirror>),
    /// Attached; its helper vCPUs are at home or lent to a migration.
    Attached(Box<Mirror>),
    /// Attaching failed (the reason went to the log).
    Failed,
}

/// Who hears the controller's events.
pub type EventListener = Box<dyn Fn(Event) + Send>;

/// How the VM came to be: launched here, or built to receive a migrating guest. Fixed for
/// the controller's life (a VM built as a target never sends its guest on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Launched here (booted, or launched under SEV).
    Launched,
    /// Built as a migration target (`--incoming`).
    Incoming,
}

/// The controller of one VM.
pub struct Controller {
    trace: Trace,
    kvm: Arc<KvmSystem>,
    vm: Vm,
    state: State,
    helper: HelperSlot,
    backend: Option<Arc<dyn SevBackend>>,
    origin: Origin,
    policy: Option<Policy>,
    firmware_digest: [u8; 32],
    listener: EventListener,
    inbox: Receiver<Input>,
    tx: Sender<Input>,
    params: Parameters,
    job: Option<Job>,
    /// Where recovery files go unless a command names one (`run --state-dir`).
    state_dir: PathBuf,
}

impl Controller {
    /// A controller for `vm`, built but not started, in `state` (see [`MachineBuilder`]);
    /// `mirror` is an SEV-ES guest's mirror measured at its launch.
    fn new(
        kvm: Arc<KvmSystem>,
        mut vm: Vm,
        state: State,
        backend: Option<Arc<dyn SevBackend>>,
        helpers: u16,
        firmware_digest: [u8; 32],
        mirror: Option<Mirror>,
    ) -> Controller {
        let (tx, inbox) = mpsc::channel();
        let sink = Mutex::new(tx.clone());
        vm.route_events(Arc::new(move |e| {
            if let Ok(tx) = sink.lock() {
                let _ = tx.send(Input::Vm(e));
            }
        }));
        let policy = vm.sev_policy();
        let origin = if state.is_incoming() {
            Origin::Incoming
        } else {
            Origin::Launched
        };
        Controller {
            origin,
            trace: Trace::default(),
            kvm,
            vm,
            state,
            helper: match mirror {
                Some(m) => HelperSlot::Measured(Box::new(m)),
                None if backend.is_some() && helpers > 0 => HelperSlot::Waiting { vcpus: helpers },
                None => HelperSlot::Off,
            },
            backend,
            policy,
            firmware_digest,
            listener: Box::new(|_| {}),
            inbox,
            tx,
            params: Parameters::default(),
            job: None,
            state_dir: PathBuf::from("."),
        }
    }

    /// Puts recovery files (a source's commit, a target's abort token) in `dir` unless a
    /// command names a file (the default is the working directory).
    pub fn set_state_dir(&mut self, dir: PathBuf) {
        self.state_dir = dir;
    }

    fn files(&self) -> Arc<Mutex<RecoveryFiles>> {
        Arc::new(Mutex::new(RecoveryFiles::in_dir(self.state_dir.clone())))
    }

    /// Sends the controller's events to `listener` (they go nowhere by default).
    pub fn on_event(&mut self, listener: EventListener) {
        self.listener = listener;
    }

    /// How other threads send commands.
    pub fn handle(&self) -> Arc<ControllerHandle> {
        Arc::new(ControllerHandle {
            tx: Mutex::new(self.tx.clone()),
        })
    }

    /// Where the VM's events go (for the signal thread).
    pub fn event_sink(&self) -> crate::vcpu::EventSink {
        self.vm.event_sink()
    }

    /// The state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Runs the guest now (no `--paused`), finishing an SEV launch first.
    pub fn start(&mut self) -> Result<(), ControlError> {
        self.cont()
    }

    fn emit(&self, event: Event) {
        (self.listener)(event);
    }

    fn advance(&mut self, trigger: Trigger) -> Result<(), BadTransition> {
        self.state = state::next(&self.state, trigger)?;
        Ok(())
    }

    fn link(&self) -> MachineLink {
        let tx = Mutex::new(self.tx.clone());
        MachineLink::new(move |m| match tx.lock() {
            Ok(tx) => tx.send(Input::Migration(m)).is_ok(),
            Err(_) => false,
        })
    }

    /// Waits on `listener` for the source of an incoming migration.
    fn listen(&mut self, listener: TcpListener) -> std::io::Result<()> {
        // First touches of guest RAM are slow on this kind of host (docs/architecture.md
        // §4, Machine facts): pay them while waiting.
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
        self.job = Some(migrate::start_incoming(
            listener,
            self.link(),
            self.files(),
        )?);
        Ok(())
    }

    fn not_permitted(&self, command: &Command) -> ControlError {
        match self.state {
            // A committed guest: say why, and what releases it.
            State::MigratedOut { transcript, .. } => ControlError::MigratedOut {
                command: command.name(),
                transcript,
            },
            _ => ControlError::NotPermitted {
                command: command.name(),
                state: self.state.run_state(),
            },
        }
    }

    fn cont(&mut self) -> Result<(), ControlError> {
        match state::check(&self.state, CommandKind::Cont) {
            Verdict::Nothing => return Ok(()),
            Verdict::Refused => return Err(self.not_permitted(&Command::Cont)),
            Verdict::Act => {}
        }
        if let State::Paused = self.state {
            self.vm.resume();
            self.advance(Trigger::Continue)?;
            self.emit(Event::Resume);
            return Ok(());
        }
        let launch = match &mut self.state {
            State::Prelaunch { launch } | State::Incoming(Incoming::Unstarted { launch }) => {
                launch.take()
            }
            _ => None,
        };
        if let Some(measured) = launch {
            self.vm
                .sev_launch_finish(measured)
                .map_err(ControlError::LaunchFinish)?;
        }
        self.vm.start().map_err(ControlError::Start)?;
        self.advance(Trigger::Launched)?;
        if self.state.run_state().is_running() {
            self.emit(Event::Resume);
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), ControlError> {
        match state::check(&self.state, CommandKind::Stop) {
            Verdict::Nothing => return Ok(()),
            Verdict::Refused => return Err(self.not_permitted(&Command::Stop)),
            Verdict::Act => {}
        }
        if !self.vm.pause(PAUSE_TIMEOUT) {
            return Err(ControlError::PauseTimeout);
        }
        self.advance(Trigger::Stop)?;
        self.emit(Event::Stop);
        Ok(())
    }

    fn backend(&self) -> Result<&Arc<dyn SevBackend>, ControlError> {
        self.backend.as_ref().ok_or(ControlError::NoSev)
    }

    fn query_sev(&self) -> Result<Reply, ControlError> {
        let platform = self
            .backend()?
            .platform_status()
            .map_err(ControlError::Platform)?;
        let guest = match self.vm.sev_status() {
            Some(g) => g.map_err(ControlError::GuestStatus)?,
            None => return Err(ControlError::NoSev),
        };
        Ok(Reply::Sev { platform, guest })
    }

    fn inject_secret(&mut self, secret: &LaunchSecret) -> Result<Reply, ControlError> {
        let Some(measured) = self.state.launch() else {
            return Err(ControlError::NoLaunchWaiting(self.state.run_state()));
        };
        self.vm
            .sev_inject_secret(measured, &secret.header, &secret.secret, secret.gpa)
            .map_err(ControlError::LaunchSecret)?;
        Ok(Reply::Done)
    }

    fn capabilities(&self) -> Result<Reply, ControlError> {
        let certs = self
            .backend()?
            .export_certs()
            .map_err(ControlError::Platform)?;
        // The emulated platform has no chip id; a stable stand-in from its identity.
        let chip_id = {
            use sha2::{Digest, Sha512};
            Sha512::digest(&certs.chain).to_vec()
        };
        let (cbitpos, reduced_phys_bits) = self.vm.sev_cbit().unwrap_or((0, 0));
        Ok(Reply::SevCapabilities(SevCapabilities {
            pdh: certs.pdh.clone(),
            cert_chain: certs.firmware_chain().to_vec(),
            chip_id,
            cbitpos,
            reduced_phys_bits,
        }))
    }

    /// Attaches the mirror VM once the guest's firmware has its helper ready (SEV-ES:
    /// starts the helpers of the mirror measured at the launch).
    fn attach_mirror(&mut self) {
        if matches!(self.helper, HelperSlot::Measured(_)) {
            return self.start_measured_mirror();
        }
        let HelperSlot::Waiting { vcpus } = self.helper else {
            return;
        };
        self.helper = match self.vm.attach_mirror(&self.kvm, vcpus) {
            Ok(m) => {
                log::info!(
                    "mirror VM attached: {} helper vCPU(s), helper region {:#x}+{:#x}",
                    vcpus,
                    m.info().region_base,
                    m.info().region_size
                );
                HelperSlot::Attached(Box::new(m))
            }
            Err(e) => {
                log::warn!(
                    "cannot attach the migration helper's mirror VM: {}",
                    migration::engine::chain(&e)
                );
                HelperSlot::Failed
            }
        };
    }

    fn helper_status(&mut self) -> HelperStatus {
        let none = |state| HelperStatus {
            state,
            vcpus: 0,
            region_base: 0,
            region_size: 0,
            descriptor_version: 0,
            requests: 0,
            bytes_sealed: 0,
            bytes_opened: 0,
        };
        let m = match &mut self.helper {
            HelperSlot::Attached(m) => m,
            HelperSlot::Failed => return none(HelperState::Failed),
            HelperSlot::Off | HelperSlot::Waiting { .. } | HelperSlot::Measured(_) => {
                return none(HelperState::None)
            }
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
        HelperStatus {
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

    fn execute(&mut self, cmd: Command) -> Result<Reply, ControlError> {
        match cmd {
            Command::QueryStatus => Ok(Reply::Status(self.state.run_state())),
            Command::Cont => self.cont().map(|()| Reply::Done),
            Command::Stop => self.stop().map(|()| Reply::Done),
            Command::Quit => Ok(Reply::Done),
            Command::QuerySev => self.query_sev(),
            Command::QueryLaunchMeasure => match self.vm.sev_measurement() {
                Some(m) => Ok(Reply::LaunchMeasure(m)),
                None if self.backend.is_none() => Err(ControlError::NoSev),
                None => Err(ControlError::NoMeasurement),
            },
            Command::InjectLaunchSecret(secret) => self.inject_secret(&secret),
            Command::QuerySevCapabilities => self.capabilities(),
            Command::QueryHelper => Ok(Reply::Helper(self.helper_status())),
            Command::Migrate(to) => self.migrate(to).map(|()| Reply::Done),
            Command::QueryMigrate => Ok(Reply::Migration(self.migration_status())),
            Command::MigrateCancel => {
                if let Some(job) = self.job.as_ref().filter(|j| j.active()) {
                    job.cancel();
                }
                Ok(Reply::Done)
            }
            Command::SetMigrationParameters(p) => {
                if let Some(limit) = p.downtime_limit {
                    self.params.downtime_limit = limit;
                }
                if let Some(bps) = p.max_bandwidth {
                    self.params
                        .max_bandwidth
                        .store(bps, std::sync::atomic::Ordering::Relaxed);
                }
                if let Some(zero) = p.zero_pages {
                    self.params.zero_pages = zero;
                }
                Ok(Reply::Done)
            }
            Command::MigrateRelease(path) => self.release(&path).map(|()| Reply::Done),
            // Answered by the incoming migration itself (see `resolve_incoming`).
            Command::MigrateCommit(_) | Command::MigrateAbortIncoming(_) => Err(
                ControlError::Resolve("the command reached the wrong handler".into()),
            ),
        }
    }

    /// Why this guest cannot leave, if it cannot.
    fn blockers(&self) -> Vec<Blocker> {
        let mut reasons = Vec::new();
        if let Some(p) = self.policy {
            if p.has(Policy::NOSEND) {
                reasons.push(Blocker::NoSend(p));
            }
            if p.has(Policy::ES) && matches!(self.helper, HelperSlot::Off) {
                reasons.push(Blocker::SevEs);
            }
        }
        if self.origin == Origin::Incoming {
            reasons.push(Blocker::Incoming);
        }
        reasons
    }

    fn migration_status(&self) -> MigrationStatus {
        let job = self.job.as_ref().map(|job| {
            let files = job.files.lock().unwrap_or_else(|e| e.into_inner());
            let mut progress = job.progress();
            // The engine records how the migration ended just before its thread tells the
            // controller, which then moves the run state (postmigrate, running, …). Until
            // it has, the migration is still finishing, so that query-migrate never reports
            // an end that query-status does not show yet.
            let ended = matches!(
                progress.status,
                Status::Completed | Status::Failed | Status::Cancelled | Status::AwaitingAbort
            );
            if ended && !job.joined() {
                progress.status = match (job.direction, progress.transcript) {
                    (Direction::Outgoing, Some(_)) => Status::Committing,
                    _ => Status::Active,
                };
            }
            let cancelling =
                job.cancelled() && job.active() && progress.status != Status::Committing;
            JobStatus {
                direction: job.direction,
                progress,
                cancelling,
                listening: job.listening,
                commit_file: files.commit.clone(),
                abort_token_file: files.abort_token.clone(),
            }
        });
        let blocked = match self.origin {
            Origin::Incoming => Vec::new(),
            Origin::Launched => self.blockers(),
        };
        MigrationStatus { job, blocked }
    }

    /// The helper region, for an SEV guest with its mirror attached.
    fn helper_region(&self) -> Option<(u64, u64)> {
        match &self.helper {
            HelperSlot::Attached(m) => Some((m.info().region_base, m.info().region_size)),
            _ => None,
        }
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
        let (mode, es_helpers) = match (&self.backend, &self.helper) {
            (None, _) => (GuestMode::Plain, 0),
            (Some(_), helper) if self.vm.sev_es() => (
                GuestMode::SevEs,
                match helper {
                    HelperSlot::Measured(m) | HelperSlot::Attached(m) => m.measured_helpers(),
                    HelperSlot::Off | HelperSlot::Waiting { .. } | HelperSlot::Failed => 0,
                },
            ),
            (Some(_), _) => (GuestMode::Sev, 0),
        };
        LocalGuest {
            mode,
            ram: migrate::gpa_ranges(layout),
            firmware_digest: self.firmware_digest,
            helper_region: GpaRange { base, size },
            vcpus: self.vm.vcpu_count() as u32,
            es_helpers,
            cpu: Some(self.vm.guest_cpu()),
        }
    }

    /// Takes the helper vCPUs out of the mirror for a migration thread (None: a plain
    /// guest, which needs none).
    fn borrow_helpers(&mut self) -> Result<Option<Helpers>, HelperUnavailable> {
        if self.backend.is_none() {
            return Ok(None);
        }
        let m = match &mut self.helper {
            HelperSlot::Attached(m) => m,
            HelperSlot::Failed => return Err(HelperUnavailable::Failed),
            HelperSlot::Off => return Err(HelperUnavailable::Disabled),
            HelperSlot::Waiting { .. } | HelperSlot::Measured(_) => {
                return Err(HelperUnavailable::NotReady)
            }
        };
        let max_batch = m.info().max_batch as usize;
        let vcpus = m.take_helpers();
        if vcpus.is_empty() {
            return Err(HelperUnavailable::Busy);
        }
        Ok(Some(Helpers { vcpus, max_batch }))
    }

    fn migrate(&mut self, to: MigrateTo) -> Result<(), ControlError> {
        if self.job.as_ref().is_some_and(Job::active) {
            return Err(ControlError::MigrationInProgress);
        }
        if matches!(self.state, State::MigratedOut { .. }) {
            return Err(self.not_permitted(&Command::Migrate(to)));
        }
        if let Some(reason) = self.blockers().into_iter().next() {
            return Err(ControlError::Blocked(reason));
        }
        if state::check(&self.state, CommandKind::Migrate) != Verdict::Act {
            return Err(self.not_permitted(&Command::Migrate(to)));
        }
        let MigrateTo { uri, commit_file } = to;
        let files = self.files();
        files.lock().unwrap_or_else(|e| e.into_inner()).commit_file = commit_file;
        let helpers = self.borrow_helpers().map_err(ControlError::NoHelpers)?;
        let layout = self.layout();
        let local = self.local_guest(&layout);
        let hello = Hello {
            version: PROTOCOL_VERSION,
            mode: local.mode,
            mem_size: layout.ram.iter().map(|r| r.1).sum(),
            ram: local.ram,
            firmware_digest: local.firmware_digest,
            helper_region: local.helper_region,
            lanes: helpers.as_ref().map_or(0, |h| h.vcpus.len() as u16),
            session_id: [0; 16],
            helper_nonce: [0; 16],
            page_size: helper_abi::PAGE_SIZE as u32,
            vcpus: local.vcpus,
            es_helpers: local.es_helpers,
            cpu: local.cpu,
        };
        let source = VmSource::new(
            self.vm.host_view(),
            self.vm.dirty_tracker(),
            layout,
            self.link(),
            files.clone(),
        );
        let plan = migrate::Outgoing {
            uri,
            hello,
            source,
            helpers,
            options: SourceOptions {
                downtime_limit: self.params.downtime_limit,
                max_bandwidth: self.params.max_bandwidth.clone(),
                zero_pages: self.params.zero_pages,
                ..SourceOptions::default()
            },
            files,
        };
        let job = migrate::start_outgoing(plan, self.link()).map_err(|e| {
            // The thread never started: the helper vCPUs it would have taken are lost to
            // later migrations, as the log says.
            log::warn!("cannot start the migration thread: {e}");
            ControlError::MigrationThread(e)
        })?;
        self.job = Some(job);
        self.emit(Event::Migration(MigrationEvent::Setup));
        Ok(())
    }

    /// Serves a migration thread's request.
    fn serve_migration(&mut self, request: MachineRequest) -> Result<MachineReply, MachineError> {
        match request {
            MachineRequest::Pause => {
                if self.vm.sev_es() {
                    // Each vCPU saves its registers into guest memory before it stops.
                    self.hold_for_migration()?;
                } else if matches!(self.state, State::Running) && !self.vm.pause(PAUSE_TIMEOUT) {
                    return Err(MachineError::PauseTimeout);
                }
                self.advance(Trigger::StopAndCopy)?;
                self.emit(Event::Stop);
                Ok(MachineReply::Done)
            }
            MachineRequest::Resume => {
                self.resume_after_failure();
                Ok(MachineReply::Done)
            }
            MachineRequest::SaveState if self.vm.sev_es() => self.save_es_state(),
            MachineRequest::SaveState => {
                let vcpus = self
                    .vm
                    .save_vcpus()
                    .map_err(MachineError::SaveVcpus)?
                    .iter()
                    .map(VcpuState::to_bytes)
                    .collect();
                let device = self.vm.device_state().map_err(MachineError::SaveDevices)?;
                Ok(MachineReply::State { vcpus, device })
            }
            MachineRequest::PrepareIncoming => self.prepare_incoming(),
            MachineRequest::Run { vcpus, device } if self.vm.sev_es() => {
                self.run_received_es(&vcpus, &device)
            }
            MachineRequest::Run { vcpus, device } => self.run_received(&vcpus, &device),
        }
    }

    /// After a failed outgoing migration: the guest runs again if it ran before.
    fn resume_after_failure(&mut self) {
        let State::FinishMigrate { resume } = self.state else {
            return;
        };
        if self.vm.sev_es() {
            // The vCPUs hold with their state saved in guest memory: let them go on (a
            // guest paused before the migration stays paused).
            self.vm.release_holds();
        }
        if resume == Resume::Running {
            self.vm.resume();
        }
        if self.advance(Trigger::MigrationFailed).is_ok() && resume == Resume::Running {
            self.emit(Event::Resume);
        }
    }

    fn prepare_incoming(&mut self) -> Result<MachineReply, MachineError> {
        match &self.state {
            State::Incoming(Incoming::Unstarted { launch: Some(_) }) => {
                return Err(MachineError::LaunchPending)
            }
            State::Incoming(Incoming::Unstarted { launch: None }) => {
                return Err(MachineError::NotStarted)
            }
            // Guest memory is replaced from here on: a firmware still booting would write
            // over received pages (and read them as its own data).
            State::Incoming(Incoming::Booting) => return Err(MachineError::Booting),
            State::Incoming(Incoming::Parked) => {}
            other => return Err(MachineError::NotIncoming(other.run_state())),
        }
        if !self.vm.pause(PAUSE_TIMEOUT) {
            return Err(MachineError::PauseTimeout);
        }
        let helpers = self.borrow_helpers()?;
        let layout = self.layout();
        let local = self.local_guest(&layout);
        self.advance(Trigger::Receive)?;
        let view = self.vm.host_view();
        // The arriving guest's verified shared list may set the page states now, and
        // until the guest runs.
        view.set_receiving(true);
        Ok(MachineReply::Incoming {
            local,
            layout,
            view,
            helpers,
        })
    }

    fn run_received(
        &mut self,
        vcpus: &[Vec<u8>],
        device: &[u8],
    ) -> Result<MachineReply, MachineError> {
        let states = vcpus
            .iter()
            .enumerate()
            .map(|(index, b)| {
                VcpuState::from_bytes(b).map_err(|source| MachineError::VcpuState { index, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !self.vm.pause(PAUSE_TIMEOUT) {
            return Err(MachineError::PauseTimeout);
        }
        // From here the guest's page states follow only its own requests.
        self.vm.host_view().set_receiving(false);
        self.vm
            .restore_vcpus(states)
            .map_err(MachineError::LoadVcpus)?;
        self.vm
            .restore_device_state(device)
            .map_err(MachineError::LoadDevices)?;
        self.vm.resume();
        self.advance(Trigger::MigrationDone)?;
        // The workload checks its memory on arrival (the dirty workload's verify).
        self.vm.request_guest(guest_abi::services::Request::VERIFY);
        self.emit(Event::Resume);
        Ok(MachineReply::Done)
    }

    /// A migration thread ended; returns how the controller ends because of it, if it does.
    fn migration_ended(&mut self, ended: Ended) -> Option<Ending> {
        if let HelperSlot::Attached(m) = &mut self.helper {
            m.return_helpers(ended.helpers);
        }
        let cancelled = self.job.as_ref().is_some_and(Job::cancelled);
        if let Some(job) = self.job.as_mut() {
            job.join();
        }
        match (ended.direction, ended.result) {
            (Direction::Outgoing, Ok(())) => {
                let _ = self.advance(Trigger::MigrationDone);
                self.emit(Event::Migration(MigrationEvent::Completed));
                log::info!("migration completed: the guest runs on the target");
                None
            }
            (Direction::Outgoing, Err(e @ MigrationError::Committed { transcript, .. })) => {
                // The helper committed: the guest is "migrated out" and must not run here
                // unless an abort of the session verifies (migrate-release).
                let _ = self.advance(Trigger::CommitUnconfirmed(transcript));
                let file = self
                    .job
                    .as_ref()
                    .and_then(|j| j.files.lock().ok().and_then(|f| f.commit.clone()));
                log::error!(
                    "{}; the commit record is in {}",
                    e.chain(),
                    file.map_or_else(|| "no file".to_string(), |f| f.display().to_string())
                );
                self.emit(Event::Migration(MigrationEvent::AwaitingAbort));
                None
            }
            (Direction::Outgoing, Err(e)) => {
                self.resume_after_failure();
                let status = if cancelled || matches!(e, MigrationError::Cancelled) {
                    MigrationEvent::Cancelled
                } else {
                    MigrationEvent::Failed
                };
                log::warn!(
                    "migration {}: {}; the guest stays here",
                    status.name(),
                    e.chain()
                );
                self.emit(Event::Migration(status));
                None
            }
            (Direction::Incoming, Ok(())) => {
                self.emit(Event::Migration(MigrationEvent::Completed));
                log::info!("incoming migration completed: the guest runs here");
                None
            }
            (Direction::Incoming, Err(e)) => {
                self.emit(Event::Migration(MigrationEvent::Failed));
                Some(Ending::IncomingFailed(e))
            }
        }
    }

    /// What a VM event means; `Some` when the controller ends because of it.
    fn vm_event(&mut self, event: VmEvent) -> Option<Ending> {
        let outcome = match event {
            VmEvent::GuestExit { status, .. } => VmOutcome::GuestExit(status),
            VmEvent::Fault { vcpu, report } => VmOutcome::Fault { vcpu, report },
            VmEvent::Failed { vcpu, error } => VmOutcome::Failed { vcpu, error },
            VmEvent::Signal(sig) => VmOutcome::Signal(sig),
            VmEvent::Milestone { vcpu, event, at } => {
                self.trace.milestones.push(Milestone { vcpu, event, at });
                if event == guest_abi::services::Event::HELPER_READY {
                    self.attach_mirror();
                }
                // An SEV-ES target's boot CPU parks when it holds (`VmEvent::Held`).
                if event == guest_abi::services::Event::CONFIGURED
                    && matches!(self.state, State::Incoming(Incoming::Booting))
                    && !self.vm.sev_es()
                {
                    let _ = self.advance(Trigger::Parked);
                }
                return None;
            }
            VmEvent::Held { vcpu } => {
                self.vcpu_held(vcpu);
                return None;
            }
            VmEvent::Paused { .. } => return None,
        };
        let (trigger, cause) = match outcome {
            VmOutcome::GuestExit(_) => (Trigger::GuestExit, ShutdownCause::GuestShutdown),
            VmOutcome::Signal(_) => (Trigger::GuestExit, ShutdownCause::HostSignal),
            VmOutcome::Fault { .. } | VmOutcome::Failed { .. } => {
                (Trigger::Failure, ShutdownCause::GuestPanic)
            }
        };
        let _ = self.advance(trigger);
        self.emit(Event::Shutdown(cause));
        Some(Ending::Vm(outcome))
    }

    /// Runs until the VM ends or `quit` arrives; stops the VM.
    pub fn run(mut self) -> (Ending, Trace) {
        let ending = loop {
            let Ok(input) = self.inbox.recv() else {
                break Ending::Quit;
            };
            match input {
                Input::Migration(ToMachine::Request(request, reply)) => {
                    let _ = reply.send(self.serve_migration(request));
                }
                Input::Migration(ToMachine::Ended(ended)) => {
                    if let Some(ending) = self.migration_ended(ended) {
                        break ending;
                    }
                }
                Input::Command(
                    cmd @ (Command::MigrateCommit(_) | Command::MigrateAbortIncoming(_)),
                    reply,
                ) => self.resolve_incoming(cmd, reply),
                Input::Command(cmd, reply) => {
                    let quit = matches!(cmd, Command::Quit);
                    let _ = reply.send(self.execute(cmd));
                    if quit {
                        self.emit(Event::Shutdown(ShutdownCause::HostQuit));
                        break Ending::Quit;
                    }
                }
                Input::Vm(event) => {
                    if let Some(ending) = self.vm_event(event) {
                        break ending;
                    }
                }
            }
        };
        if let Some(mut job) = self.job.take() {
            job.abandon();
            // Unblock a thread waiting for the VM: its requests now fail.
            drop(self.inbox);
            job.join();
        }
        self.helper = HelperSlot::Off;
        self.vm.stop();
        self.trace.exits = self.vm.exit_stats().to_vec();
        (ending, self.trace)
    }
}
