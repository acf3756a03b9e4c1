//! Live migration of a running VM: the engine of the `migration` crate, driven by an
//! outgoing thread (`migrate`) or an incoming one (`--incoming`), with this VMM and the
//! mirror's helper vCPUs behind the engine's traits.
//!
//! The controller ([`crate::control`]) keeps sole ownership of the VM: a migration thread
//! reads memory through the host view and the dirty log, and asks the controller (over a
//! [`MachineLink`]) to pause, resume, save or load the vCPUs. The helper vCPUs move to the
//! migration thread for the duration of a migration and come back when it ends.
//!
//! - [`guest`]: [`VmSource`] and [`VmTarget`], the VM as the engine's `SourceVm` and
//!   `TargetVm`, and [`Layout`], the RAM that migrates.
//! - [`lanes`]: [`HelperLanes`], the helper vCPUs as the engine's sealer and opener.
//! - this module: the [`Job`] threads and the messages between them and the controller.

pub mod guest;
pub mod lanes;

pub use guest::{write_durably, Layout, VmPartError, VmSource, VmTarget};
pub use lanes::{HelperLanes, LaneError};

use crate::{
    control::BadTransition, kvm::state::StateError, memory::HostView, mirror::HelperVcpu,
    vm::VmError,
};
use migration::{
    engine::{
        self, chain, LocalGuest, MigrationError, PendingCommit, Progress, Received, SourceOptions,
        Status,
    },
    frames::{AbortToken, FailureCode, GpaRange, Hello, HelloAck},
    recovery::{hex, CommitFile},
    transport,
    uri::Uri,
};
use std::{
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, Sender},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How long the controller may take to pause, save or load the VM.
const MACHINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an incoming connection waits for this VM to be ready (launched by its owner,
/// helper attached).
const READY_TIMEOUT: Duration = Duration::from_secs(50);
/// The source's read timeout: its engine polls the return path this often (a cancel
/// after the commit must reach the target without dropping the connection; the
/// engine's `confirm_timeout` is the real limit of each wait).
const SOURCE_POLL: Duration = Duration::from_millis(100);

/// The files that recover a migration whose connection is gone (migration::recovery):
/// where they go, and where they went.
#[derive(Clone, Debug, Default)]
pub struct RecoveryFiles {
    /// Where files without a path of their own go (`run --state-dir`).
    pub dir: PathBuf,
    /// Where the source's commit goes, if the operator named a file (`migrate`'s
    /// `commit-file`).
    pub commit_file: Option<PathBuf>,
    /// Where the target's abort token goes, if the operator named a file
    /// (`migrate-abort-incoming`'s `token-file`).
    pub token_file: Option<PathBuf>,
    /// The commit file written (source).
    pub commit: Option<PathBuf>,
    /// The abort token file written (target).
    pub abort_token: Option<PathBuf>,
}

impl RecoveryFiles {
    /// Files in `dir`.
    pub fn in_dir(dir: PathBuf) -> RecoveryFiles {
        RecoveryFiles {
            dir,
            ..RecoveryFiles::default()
        }
    }

    /// Where the commit of session `transcript` goes.
    pub fn commit_path(&self, transcript: &[u8; 32]) -> PathBuf {
        self.commit_file.clone().unwrap_or_else(|| {
            self.dir
                .join(format!("sevmirror-commit-{}.bin", &hex(transcript)[..16]))
        })
    }

    /// Where the abort token of session `transcript` goes.
    pub fn token_path(&self, transcript: &[u8; 32]) -> PathBuf {
        self.token_file.clone().unwrap_or_else(|| {
            self.dir
                .join(format!("sevmirror-abort-{}.bin", &hex(transcript)[..16]))
        })
    }
}

/// What an incoming migration that waits for the commit did with an operator's command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved {
    /// The helper took the commit: the guest runs here.
    Committed,
    /// The helper gave the session up for good.
    Aborted {
        /// The session's transcript hash (zero if the key agreement was not complete).
        transcript: [u8; 32],
        /// Its token.
        token: AbortToken,
        /// Where the token file went.
        file: Option<PathBuf>,
    },
}

/// Where an operator's command to an incoming migration gets its answer.
pub struct ResolveReply(Option<ReplyFn>);

/// What answers an operator's command.
type ReplyFn = Box<dyn FnOnce(Result<Resolved, String>) + Send>;

impl ResolveReply {
    /// Answers with `f`.
    pub fn new(f: impl FnOnce(Result<Resolved, String>) + Send + 'static) -> ResolveReply {
        ResolveReply(Some(Box::new(f)))
    }

    fn send(mut self, r: Result<Resolved, String>) {
        if let Some(f) = self.0.take() {
            f(r);
        }
    }
}

impl Drop for ResolveReply {
    fn drop(&mut self) {
        // Never leave the operator without an answer.
        if let Some(f) = self.0.take() {
            f(Err(
                "the incoming migration ended before it could act on the command".into(),
            ));
        }
    }
}

/// An operator's command to an incoming migration whose helper verified the guest and
/// waits for the commit.
pub enum IncomingCommand {
    /// Take the commit from the source's commit file.
    Commit(CommitFile, ResolveReply),
    /// Give the session up (the token goes to the token file).
    Abort(ResolveReply),
}

/// What a migration thread asks of the controller.
#[derive(Debug)]
pub enum MachineRequest {
    /// Stop the guest's vCPUs for stop-and-copy.
    Pause,
    /// The migration failed after the pause: run the guest again.
    Resume,
    /// Save the (paused) vCPUs and devices.
    SaveState,
    /// Incoming: describe this VM and hand over the helper vCPUs, if ready.
    PrepareIncoming,
    /// Incoming: load the received vCPU and device state and run the guest.
    Run {
        /// Each vCPU's state, in index order.
        vcpus: Vec<Vec<u8>>,
        /// The devices' state.
        device: Vec<u8>,
    },
}

impl MachineRequest {
    /// A short name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            MachineRequest::Pause => "pause",
            MachineRequest::Resume => "resume",
            MachineRequest::SaveState => "save-state",
            MachineRequest::PrepareIncoming => "prepare-incoming",
            MachineRequest::Run { .. } => "run",
        }
    }
}

/// The controller's answer.
pub enum MachineReply {
    /// Done.
    Done,
    /// The saved state.
    State {
        /// Each vCPU's state, in index order.
        vcpus: Vec<Vec<u8>>,
        /// The devices' state.
        device: Vec<u8>,
    },
    /// This VM, ready to receive.
    Incoming {
        /// What the source must match.
        local: LocalGuest,
        /// Its RAM and helper region.
        layout: Layout,
        /// Its host view of memory.
        view: HostView,
        /// The helper vCPUs and their batch limit (SEV).
        helpers: Option<Helpers>,
    },
}

/// Helper vCPUs lent to a migration, with the most pages one request may carry.
pub struct Helpers {
    /// The vCPUs.
    pub vcpus: Vec<HelperVcpu>,
    /// Pages per request (the helper's limit, from its INFO).
    pub max_batch: usize,
}

/// Why the helper vCPUs cannot be lent to a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HelperUnavailable {
    /// The mirror VM could not be attached.
    #[error("the migration helper failed to start (see the log)")]
    Failed,
    /// The VM runs without a mirror.
    #[error("the VM runs without a migration helper (--helpers 0)")]
    Disabled,
    /// The guest has not reported its helper ready.
    #[error("the migration helper is not ready yet (the guest is still booting)")]
    NotReady,
    /// Another migration holds them.
    #[error("the helper vCPUs are busy with another migration")]
    Busy,
}

/// Why the controller could not serve a migration thread's request.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The controller is gone (the VM stopped).
    #[error("the VM has stopped")]
    Gone,
    /// The controller did not answer in time.
    #[error("the VM did not answer in time")]
    NoAnswer,
    /// The vCPUs did not acknowledge a pause.
    #[error("the vCPUs did not stop in time")]
    PauseTimeout,
    /// The vCPUs could not be saved.
    #[error("cannot save the vCPUs")]
    SaveVcpus(#[source] VmError),
    /// The devices could not be saved.
    #[error("cannot save the devices")]
    SaveDevices(#[source] VmError),
    /// This VM does not wait for a migration (or no longer).
    #[error("the VM is {0}, not waiting for a migration")]
    NotIncoming(crate::control::RunState),
    /// An SEV target whose owner has not finished the launch.
    #[error("the guest owner has not finished this VM's launch yet (inject the migration secret, then cont)")]
    LaunchPending,
    /// A target that was never started.
    #[error("the VM has not started yet (cont)")]
    NotStarted,
    /// The target's firmware has not parked yet: it would write over received pages.
    #[error("the firmware is still starting")]
    Booting,
    /// The helper vCPUs cannot be lent.
    #[error(transparent)]
    Helpers(#[from] HelperUnavailable),
    /// A received vCPU state does not decode.
    #[error("the state of vCPU {index} is unusable")]
    VcpuState {
        /// The vCPU.
        index: usize,
        /// Why.
        #[source]
        source: StateError,
    },
    /// The received vCPU state could not be loaded.
    #[error("cannot load the vCPU state")]
    LoadVcpus(#[source] VmError),
    /// SEV-ES: vCPUs did not save their state into guest memory when asked.
    #[error("SEV-ES vCPUs {0:?} did not save their state and hold within the time allowed (a vCPU answers at its next checkpoint, every few ms while its workload runs; a halted vCPU never does)")]
    HoldTimeout(Vec<u32>),
    /// SEV-ES: a received vCPU record does not decode.
    #[error("the SEV-ES record of vCPU {index} is unusable")]
    EsVcpuState {
        /// The vCPU.
        index: usize,
        /// Why.
        #[source]
        source: crate::kvm::es_state::EsStateError,
    },
    /// SEV-ES: the host's part of the vCPUs could not be read.
    #[error("cannot save the SEV-ES vCPUs' local APIC and timers")]
    SavePlatform(#[source] VmError),
    /// SEV-ES: the host's part of the vCPUs could not be loaded.
    #[error("cannot load the SEV-ES vCPUs' local APIC and timers")]
    LoadPlatform(#[source] VmError),
    /// The received device state could not be loaded.
    #[error("cannot load the device state")]
    LoadDevices(#[source] VmError),
    /// The run state does not allow the step.
    #[error(transparent)]
    State(#[from] BadTransition),
}

/// What a migration thread sends the controller.
pub enum ToMachine {
    /// A request and where its answer goes.
    Request(MachineRequest, Sender<Result<MachineReply, MachineError>>),
    /// The thread finished.
    Ended(Ended),
}

/// A migration thread's line to the controller.
#[derive(Clone)]
pub struct MachineLink {
    send: Arc<dyn Fn(ToMachine) -> bool + Send + Sync>,
}

impl MachineLink {
    /// A link that hands each message to `send` (false: the controller is gone).
    pub fn new(send: impl Fn(ToMachine) -> bool + Send + Sync + 'static) -> MachineLink {
        MachineLink {
            send: Arc::new(send),
        }
    }

    /// Asks the controller to do `request` and waits for its answer.
    pub fn ask(&self, request: MachineRequest) -> Result<MachineReply, MachineError> {
        let (reply, answer) = mpsc::channel();
        if !(self.send)(ToMachine::Request(request, reply)) {
            return Err(MachineError::Gone);
        }
        answer
            .recv_timeout(MACHINE_TIMEOUT)
            .map_err(|_| MachineError::NoAnswer)?
    }

    fn ended(&self, ended: Ended) {
        let _ = (self.send)(ToMachine::Ended(ended));
    }
}

/// Why a migration thread could not do its own part (the engine's `Vm` or `Helper`
/// errors carry these).
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// No randomness for the session id.
    #[error("no random bytes for the session id")]
    Random(#[source] sev_platform::crypto::RandomError),
    /// The controller answered a request with the wrong kind of reply.
    #[error("the VM answered {0} with another kind of reply")]
    UnexpectedReply(&'static str),
}

/// Which way a migration goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// This VM's guest leaves.
    Outgoing,
    /// A guest arrives into this VM.
    Incoming,
}

/// A migration thread's outcome, sent to the controller.
pub struct Ended {
    /// Which way it went.
    pub direction: Direction,
    /// Why it failed, if it did.
    pub result: Result<(), MigrationError>,
    /// The helper vCPUs it borrowed.
    pub helpers: Vec<HelperVcpu>,
}

/// Migration parameters (`migrate-set-parameters`).
#[derive(Clone, Debug)]
pub struct Parameters {
    /// Longest tolerated pause of the guest.
    pub downtime_limit: Duration,
    /// Bytes per second on the stream (0: unlimited); applies at once, also to a running
    /// migration.
    pub max_bandwidth: Arc<AtomicU64>,
    /// How private zero pages travel (the next migration).
    pub zero_pages: engine::ZeroPages,
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            downtime_limit: SourceOptions::default().downtime_limit,
            max_bandwidth: Arc::new(AtomicU64::new(0)),
            zero_pages: engine::ZeroPages::Sealed,
        }
    }
}

/// A migration in progress (or finished), as `query-migrate` and `migrate_cancel` see it.
pub struct Job {
    /// Which way it goes.
    pub direction: Direction,
    /// Live figures.
    pub progress: Arc<Mutex<Progress>>,
    /// Its recovery files.
    pub files: Arc<Mutex<RecoveryFiles>>,
    cancel: Arc<AtomicBool>,
    socket: Arc<Mutex<Option<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
    /// Incoming: the operator's commands once the helper waits for the commit.
    commands: Option<Sender<IncomingCommand>>,
    /// Where an incoming migration listens.
    pub listening: Option<SocketAddr>,
}

impl Job {
    /// Whether the thread still runs.
    pub fn active(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Whether the controller has joined the thread (it heard of the end and moved the
    /// run state accordingly).
    pub fn joined(&self) -> bool {
        self.thread.is_none()
    }

    /// Whether `cancel` was called.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// A copy of the live figures.
    pub fn progress(&self) -> Progress {
        self.progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the migration: the engine sees the flag, and a blocked read or write sees its
    /// socket shut down. After the source's commit the connection stays: the engine asks
    /// the target for an abort over it, and only the target's token releases the guest.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        if self.direction == Direction::Outgoing && self.progress().status == Status::Committing {
            return;
        }
        self.interrupt();
    }

    /// Stops the migration now, whatever its state: the VMM is ending. (A committed
    /// source's guest stays migrated out; only the connection is dropped.)
    pub fn abandon(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        self.interrupt();
    }

    /// Shuts the connection down (a blocked read or write fails at once).
    fn interrupt(&self) {
        if let Ok(guard) = self.socket.lock() {
            if let Some(s) = guard.as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Hands an operator's command to an incoming migration. If it still reads the
    /// stream, the stream is cut first: after Ready its helper then waits for the
    /// command; before Ready the session is given up (and an abort is answered with the
    /// token kept then). A command that finds no running incoming migration is dropped,
    /// and its reply says so.
    pub fn resolve(&self, command: IncomingCommand) {
        let Some(tx) = self.commands.as_ref().filter(|_| self.active()) else {
            return;
        };
        if tx.send(command).is_ok() {
            self.interrupt();
        }
    }

    /// Waits for the thread (after `cancel`, or once it reported its end). An incoming
    /// migration waiting for the operator's command stops waiting: the command channel
    /// closes first.
    pub fn join(&mut self) {
        self.commands = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Everything an outgoing migration needs.
pub struct Outgoing {
    /// Where to.
    pub uri: Uri,
    /// The guest as the Hello describes it (session id and nonce are filled in here).
    pub hello: Hello,
    /// The VM.
    pub source: VmSource,
    /// The helper vCPUs (SEV).
    pub helpers: Option<Helpers>,
    /// Precopy policy and bandwidth cap.
    pub options: SourceOptions,
    /// Where the commit file goes (the same as `source`'s).
    pub files: Arc<Mutex<RecoveryFiles>>,
}

/// Records the end of a failed migration in its figures (a committed one stays
/// `AwaitingAbort`, as the engine left it).
fn mark_failed(progress: &Mutex<Progress>, status: Status, e: &MigrationError) {
    let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
    if !matches!(e, MigrationError::Committed { .. }) {
        p.status = status;
    }
    p.error = Some(e.chain());
}

fn session_id() -> Result<[u8; 16], MigrationError> {
    sev_platform::crypto::random_bytes::<16>()
        .map_err(|e| MigrationError::Vm(Box::new(JobError::Random(e))))
}

/// Drops the job's handle on the connection once the migration is over, so the connection
/// closes with the thread's own ends instead of staying open for good.
fn close(socket: &Mutex<Option<TcpStream>>) {
    if let Ok(mut s) = socket.lock() {
        s.take();
    }
}

/// Keeps a second handle on the connection where `cancel` can shut it down.
fn expose(socket: &Mutex<Option<TcpStream>>, stream: &TcpStream) -> Result<(), MigrationError> {
    if let Ok(mut s) = socket.lock() {
        *s = Some(transport::duplicate(stream)?);
    }
    Ok(())
}

/// Starts an outgoing migration on its own thread; its end arrives over `link` as
/// [`ToMachine::Ended`].
pub fn start_outgoing(plan: Outgoing, link: MachineLink) -> std::io::Result<Job> {
    let progress = Arc::new(Mutex::new(Progress {
        status: Status::Setup,
        ..Progress::default()
    }));
    let files = plan.files.clone();
    let cancel = Arc::new(AtomicBool::new(false));
    let socket = Arc::new(Mutex::new(None));
    let thread = {
        let (progress, cancel, socket) = (progress.clone(), cancel.clone(), socket.clone());
        std::thread::Builder::new()
            .name("migrate-out".into())
            .spawn(move || {
                let Outgoing {
                    uri,
                    mut hello,
                    mut source,
                    helpers,
                    options,
                    files: _,
                } = plan;
                // The lanes live outside the attempt so their vCPUs come back whatever
                // happens inside it.
                let mut lanes = None;
                let result = (|| {
                    if let Some(h) = helpers {
                        lanes = Some(lanes_for(h)?);
                    }
                    let stream = transport::connect(&uri)?;
                    transport::prepare(&stream)?;
                    // The engine waits through short timeouts (see SOURCE_POLL).
                    stream.set_read_timeout(Some(SOURCE_POLL)).map_err(|e| {
                        MigrationError::Transport(transport::TransportError::Setup(e))
                    })?;
                    expose(&socket, &stream)?;
                    if cancel.load(Ordering::Relaxed) {
                        return Err(MigrationError::Cancelled);
                    }
                    hello.session_id = session_id()?;
                    let writer = transport::duplicate(&stream)?;
                    engine::migrate(
                        stream,
                        writer,
                        &hello,
                        &mut source,
                        lanes.as_mut().map(|l| l as &mut dyn engine::Sealer),
                        &options,
                        &progress,
                        &cancel,
                    )
                })();
                let returned = lanes.map(HelperLanes::into_helpers).unwrap_or_default();
                let result = match result {
                    // A committed guest stays committed whoever asked to cancel.
                    Err(e @ MigrationError::Committed { .. }) => Err(e),
                    Err(_) if cancel.load(Ordering::Relaxed) => Err(MigrationError::Cancelled),
                    other => other,
                };
                close(&socket);
                if let Err(e) = &result {
                    let status = if matches!(e, MigrationError::Cancelled) {
                        Status::Cancelled
                    } else {
                        Status::Failed
                    };
                    mark_failed(&progress, status, e);
                }
                link.ended(Ended {
                    direction: Direction::Outgoing,
                    result,
                    helpers: returned,
                });
            })?
    };
    Ok(Job {
        direction: Direction::Outgoing,
        progress,
        files,
        cancel,
        socket,
        thread: Some(thread),
        commands: None,
        listening: None,
    })
}

/// Waits on its own thread for the source on `listener` and receives the guest; its end
/// arrives over `link` as [`ToMachine::Ended`]. An abort token goes to `files`.
pub fn start_incoming(
    listener: TcpListener,
    link: MachineLink,
    files: Arc<Mutex<RecoveryFiles>>,
) -> std::io::Result<Job> {
    let listening = listener.local_addr().ok();
    let progress = Arc::new(Mutex::new(Progress::default()));
    let cancel = Arc::new(AtomicBool::new(false));
    let socket = Arc::new(Mutex::new(None));
    let (commands, inbox) = mpsc::channel();
    let thread = {
        let (progress, socket, cancel, files) = (
            progress.clone(),
            socket.clone(),
            cancel.clone(),
            files.clone(),
        );
        std::thread::Builder::new()
            .name("migrate-in".into())
            .spawn(move || {
                let mut helpers = Vec::new();
                let incoming = Incoming {
                    listener: &listener,
                    link: &link,
                    progress: &progress,
                    socket: &socket,
                    cancel: &cancel,
                    files: &files,
                    commands: &inbox,
                };
                let result = incoming.receive(&mut helpers);
                close(&socket);
                if let Err(e) = &result {
                    mark_failed(&progress, Status::Failed, e);
                }
                // Commands that came too late get their answer (the job is over).
                while let Ok(command) = inbox.try_recv() {
                    answer_late(command, &result, &files);
                }
                link.ended(Ended {
                    direction: Direction::Incoming,
                    result,
                    helpers,
                });
            })?
    };
    Ok(Job {
        direction: Direction::Incoming,
        progress,
        files,
        cancel,
        socket,
        thread: Some(thread),
        commands: Some(commands),
        listening,
    })
}

/// Answers a command that reached an incoming migration once it was over.
fn answer_late(
    command: IncomingCommand,
    result: &Result<(), MigrationError>,
    files: &Mutex<RecoveryFiles>,
) {
    let (reply, abort) = match command {
        IncomingCommand::Commit(_, reply) => (reply, false),
        IncomingCommand::Abort(reply) => (reply, true),
    };
    // An abort asked while the stream still ran: the session was given up as the
    // stream was cut, and its token kept then.
    let kept = files
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .abort_token
        .clone();
    if let (true, Err(_), Some(path)) = (abort, result, kept) {
        let token = std::fs::read(&path)
            .ok()
            .and_then(|b| migration::recovery::AbortTokenFile::decode(&b).ok());
        if let Some(t) = token {
            reply.send(Ok(Resolved::Aborted {
                transcript: t.transcript,
                token: AbortToken { tag: t.tag },
                file: Some(path),
            }));
            return;
        }
    }
    let answer = match result {
        Ok(()) => Err("the incoming migration completed: the guest runs here".to_string()),
        Err(e) => {
            let file = files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .abort_token
                .clone();
            match file {
                Some(f) => Err(format!(
                    "the incoming migration had already failed and given its session up ({}); its abort token is in {}",
                    e.chain(),
                    f.display()
                )),
                None => Err(format!("the incoming migration had already failed: {}", e.chain())),
            }
        }
    };
    reply.send(answer);
}

/// Asks the controller until it is ready to receive (or the wait is over).
fn wait_ready(link: &MachineLink) -> Result<MachineReply, MachineError> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match link.ask(MachineRequest::PrepareIncoming) {
            Ok(reply) => return Ok(reply),
            Err(why) if Instant::now() >= deadline => return Err(why),
            Err(why) => {
                log::info!("incoming migration waits: {why}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// An incoming migration's thread and what it works with.
struct Incoming<'a> {
    listener: &'a TcpListener,
    link: &'a MachineLink,
    progress: &'a Mutex<Progress>,
    socket: &'a Mutex<Option<TcpStream>>,
    cancel: &'a AtomicBool,
    files: &'a Arc<Mutex<RecoveryFiles>>,
    commands: &'a Receiver<IncomingCommand>,
}

impl Incoming<'_> {
    /// Receives one guest (see [`engine::receive`]); if the stream ends after Ready,
    /// waits for the operator to commit it from the source's commit file or to abort.
    fn receive(&self, helpers_out: &mut Vec<HelperVcpu>) -> Result<(), MigrationError> {
        let (link, progress, socket) = (self.link, self.progress, self.socket);
        let Some((stream, peer)) = transport::accept(self.listener, self.cancel)? else {
            return Err(MigrationError::Cancelled);
        };
        log::info!("incoming migration from {peer}");
        transport::prepare(&stream)?;
        expose(socket, &stream)?;
        let (local, layout, view, helpers) = match wait_ready(link) {
            Ok(MachineReply::Incoming {
                local,
                layout,
                view,
                helpers,
            }) => (local, layout, view, helpers),
            Ok(_) => {
                return Err(MigrationError::Vm(Box::new(JobError::UnexpectedReply(
                    "prepare-incoming",
                ))))
            }
            Err(why) => {
                let reason = format!("the target is not ready: {}", chain(&why));
                let mut w = transport::duplicate(&stream)?;
                let _ = HelloAck::Refused {
                    code: FailureCode::NotReady,
                    reason: reason.clone(),
                }
                .encode(&mut w);
                return Err(MigrationError::Refused {
                    code: FailureCode::NotReady,
                    reason,
                });
            }
        };
        let writer = transport::duplicate(&stream)?;
        let mut lanes = match helpers {
            Some(h) => Some(lanes_for(h)?),
            None => None,
        };
        let mut target = VmTarget::new(view, layout, local, link.clone(), self.files.clone());
        let result = engine::receive(
            stream,
            writer,
            &mut target,
            lanes.as_mut().map(|l| l as &mut dyn engine::Opener),
            progress,
        );
        let result = match (result, lanes.as_mut()) {
            (Ok(Received::Running), _) => Ok(()),
            (Ok(Received::AwaitingCommit(pending)), Some(lanes)) => {
                self.await_commit(pending, &mut target, lanes)
            }
            (Ok(Received::AwaitingCommit(_)), None) => Err(MigrationError::HelperMismatch),
            (Err(e), _) => Err(e),
        };
        if let Some(l) = lanes {
            *helpers_out = l.into_helpers();
        }
        result
    }

    /// The helper verified the guest and the stream is gone: the operator commits it
    /// from the source's commit file or aborts the session (the VM stays as it is until
    /// then; quitting leaves the session undecided, for the guest owner's abort).
    fn await_commit(
        &self,
        mut pending: PendingCommit,
        target: &mut VmTarget,
        lanes: &mut HelperLanes,
    ) -> Result<(), MigrationError> {
        let transcript = pending.transcript();
        log::warn!(
            "{}; waiting for the commit of session {} (migrate-commit with the source's commit file) or an abort (migrate-abort-incoming)",
            pending.lost(),
            hex(&transcript)
        );
        loop {
            let Ok(command) = self.commands.recv() else {
                return Err(MigrationError::Protocol(format!(
                    "the VM ended while session {} waited for its commit",
                    hex(&transcript)
                )));
            };
            match command {
                IncomingCommand::Commit(file, reply) => {
                    if file.transcript != transcript {
                        reply.send(Err(format!(
                            "the commit file is for session {}; this target waits for session {}",
                            hex(&file.transcript),
                            hex(&transcript)
                        )));
                        continue;
                    }
                    match pending
                        .commit(&file.record, target, lanes, self.progress)
                        .map_err(|b| *b)
                    {
                        Ok(()) => {
                            reply.send(Ok(Resolved::Committed));
                            log::info!("the commit from the file verified: the guest runs here");
                            return Ok(());
                        }
                        Err((Some(back), e)) => {
                            reply.send(Err(format!(
                                "the helper refused the commit record: {}",
                                e.chain()
                            )));
                            pending = back;
                        }
                        Err((None, e)) => {
                            reply.send(Err(e.chain()));
                            return Err(e);
                        }
                    }
                }
                IncomingCommand::Abort(reply) => {
                    return match pending.abort(target, lanes, self.progress) {
                        Ok(token) => {
                            let file = self
                                .files
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .abort_token
                                .clone();
                            reply.send(Ok(Resolved::Aborted {
                                transcript,
                                token,
                                file,
                            }));
                            Err(MigrationError::Aborted {
                                code: FailureCode::Cancelled,
                                reason: "the operator gave the session up while it waited for the commit".into(),
                            })
                        }
                        Err(e) => {
                            reply.send(Err(e.chain()));
                            Err(e)
                        }
                    };
                }
            }
        }
    }
}

/// Puts the helper vCPUs on their lanes' threads (if a thread cannot be created, the vCPUs
/// already handed over are lost to this VM's later migrations).
fn lanes_for(helpers: Helpers) -> Result<HelperLanes, MigrationError> {
    HelperLanes::new(helpers.vcpus, helpers.max_batch)
        .map_err(|e| MigrationError::Helper(Box::new(e)))
}

/// The Hello's description of a VM's RAM.
pub fn gpa_ranges(layout: &Layout) -> Vec<GpaRange> {
    layout
        .ram
        .iter()
        .map(|&(base, size)| GpaRange { base, size })
        .collect()
}
