//! Live migration inside a running machine: the engine of the `migration` crate, driven
//! by an outgoing thread (QMP `migrate`) or an incoming one (`run --incoming`), with the
//! VMM and the mirror's helper vCPUs behind the engine's traits.
//!
//! The machine loop keeps sole ownership of the VM: a migration thread reads memory
//! through the host view and the dirty log, and asks the loop (over its inbox) to pause,
//! resume, save or load the vCPUs. The helper vCPUs move to the migration thread for the
//! duration of a migration and come back when it ends.

pub mod guest;
pub mod lanes;
pub mod report;

use crate::machine::Input;
use guest::{Layout, MachineLink, VmSource, VmTarget};
use lanes::HelperLanes;
use migration::{
    engine::{self, LocalGuest, MigrationError, Progress, SourceOptions, Status},
    frames::{FailureCode, GpaRange, Hello, HelloAck},
    uri::Uri,
};
use std::{
    io::Read,
    net::{Shutdown, TcpListener, TcpStream, ToSocketAddrs},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::Sender,
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};
use vmm::{memory::HostView, mirror::HelperVcpu};

/// How long the source waits to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a side waits for a frame from the other (the target may be prefaulting or
/// its owner attesting it; the source may be sealing a large round).
const STREAM_TIMEOUT: Duration = Duration::from_secs(60);
/// How long an incoming connection waits for this VM to be ready (launched by its
/// owner, helper attached).
const READY_TIMEOUT: Duration = Duration::from_secs(50);

/// What a migration thread asks of the machine loop.
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

/// The machine loop's answer.
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
        helpers: Option<(Vec<HelperVcpu>, usize)>,
    },
}

/// Which way a migration goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// This VM's guest leaves.
    Outgoing,
    /// A guest arrives into this VM.
    Incoming,
}

/// A migration thread's outcome, sent to the machine loop.
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
}

impl Default for Parameters {
    fn default() -> Self {
        Parameters {
            downtime_limit: SourceOptions::default().downtime_limit,
            max_bandwidth: Arc::new(AtomicU64::new(0)),
        }
    }
}

/// A migration in progress (or finished), as `query-migrate` and `migrate_cancel` see
/// it.
pub struct Job {
    /// Which way it goes.
    pub direction: Direction,
    /// Live figures.
    pub progress: Arc<Mutex<Progress>>,
    cancel: Arc<AtomicBool>,
    socket: Arc<Mutex<Option<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
    /// Where an incoming migration listens.
    pub listening: Option<std::net::SocketAddr>,
}

impl Job {
    /// Whether the thread still runs.
    pub fn active(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Whether `cancel` was called.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Stops the migration: the engine sees the flag, and a blocked read or write sees
    /// its socket shut down.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
        if let Ok(guard) = self.socket.lock() {
            if let Some(s) = guard.as_ref() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Waits for the thread (after `cancel`, or once it reported its end).
    pub fn join(&mut self) {
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
    /// The helper vCPUs and their batch limit (SEV).
    pub helpers: Option<(Vec<HelperVcpu>, usize)>,
    /// Precopy policy and bandwidth cap.
    pub options: SourceOptions,
}

/// Records the end of a failed migration in its figures.
fn mark_failed(progress: &Mutex<Progress>, status: Status, e: &MigrationError) {
    let mut p = progress.lock().unwrap_or_else(|p| p.into_inner());
    p.status = status;
    p.error = Some(e.chain());
}

fn session_id() -> Result<[u8; 16], MigrationError> {
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .map_err(|e| MigrationError::Vm(format!("cannot read /dev/urandom: {e}")))?;
    Ok(id)
}

fn connect(uri: &Uri) -> Result<TcpStream, MigrationError> {
    let authority = uri.authority();
    let addrs = authority
        .to_socket_addrs()
        .map_err(|e| MigrationError::Vm(format!("cannot resolve {uri}: {e}")))?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(MigrationError::Vm(match last {
        Some(e) => {
            format!("cannot connect to {uri}: {e} (is the target running with --incoming {uri}?)")
        }
        None => format!("{uri} resolves to no address"),
    }))
}

fn prepare_stream(s: &TcpStream) -> Result<(), MigrationError> {
    let setup = || -> std::io::Result<()> {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(STREAM_TIMEOUT))?;
        s.set_write_timeout(Some(STREAM_TIMEOUT))
    };
    setup().map_err(|e| MigrationError::Vm(format!("cannot set up the socket: {e}")))
}

fn clone_stream(s: &TcpStream) -> Result<TcpStream, MigrationError> {
    s.try_clone()
        .map_err(|e| MigrationError::Vm(format!("cannot duplicate the socket: {e}")))
}

/// Drops the job's handle on the connection once the migration is over, so the
/// connection closes with the thread's own ends instead of staying open for good.
fn close(socket: &Mutex<Option<TcpStream>>) {
    if let Ok(mut s) = socket.lock() {
        s.take();
    }
}

/// Starts an outgoing migration on its own thread; its end arrives as
/// [`Input::MigrationEnded`].
pub fn start_outgoing(plan: Outgoing, tx: Sender<Input>) -> std::io::Result<Job> {
    let progress = Arc::new(Mutex::new(Progress {
        status: Status::Setup,
        ..Progress::default()
    }));
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
                } = plan;
                // The lanes live outside the attempt so their vCPUs come back whatever
                // happens inside it.
                let mut lanes = None;
                let result = (|| {
                    if let Some((h, batch)) = helpers {
                        lanes = Some(lanes_for(h, batch)?);
                    }
                    let stream = connect(&uri)?;
                    prepare_stream(&stream)?;
                    if let Ok(mut s) = socket.lock() {
                        *s = Some(clone_stream(&stream)?);
                    }
                    if cancel.load(Ordering::Relaxed) {
                        return Err(MigrationError::Cancelled);
                    }
                    hello.session_id = session_id()?;
                    let writer = clone_stream(&stream)?;
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
                let _ = tx.send(Input::MigrationEnded(Ended {
                    direction: Direction::Outgoing,
                    result,
                    helpers: returned,
                }));
            })?
    };
    Ok(Job {
        direction: Direction::Outgoing,
        progress,
        cancel,
        socket,
        thread: Some(thread),
        listening: None,
    })
}

/// Binds `uri` for an incoming migration (at once, so a busy port is reported at start).
pub fn listen(uri: &Uri) -> std::io::Result<TcpListener> {
    TcpListener::bind(uri.authority())
}

/// Waits on its own thread for the source on `listener` and receives the guest; its
/// end arrives as [`Input::MigrationEnded`].
pub fn start_incoming(listener: TcpListener, tx: Sender<Input>) -> std::io::Result<Job> {
    let listening = listener.local_addr().ok();
    let progress = Arc::new(Mutex::new(Progress::default()));
    let cancel = Arc::new(AtomicBool::new(false));
    let socket = Arc::new(Mutex::new(None));
    let thread = {
        let (progress, socket, cancel) = (progress.clone(), socket.clone(), cancel.clone());
        let link = MachineLink::new(tx.clone());
        std::thread::Builder::new()
            .name("migrate-in".into())
            .spawn(move || {
                let mut helpers = Vec::new();
                let result =
                    receive_one(&listener, &link, &progress, &socket, &cancel, &mut helpers);
                close(&socket);
                if let Err(e) = &result {
                    mark_failed(&progress, Status::Failed, e);
                }
                let _ = tx.send(Input::MigrationEnded(Ended {
                    direction: Direction::Incoming,
                    result,
                    helpers,
                }));
            })?
    };
    Ok(Job {
        direction: Direction::Incoming,
        progress,
        cancel,
        socket,
        thread: Some(thread),
        listening,
    })
}

/// Waits for one connection, giving up when `cancel` is set.
fn accept(
    listener: &TcpListener,
    cancel: &AtomicBool,
) -> Result<(TcpStream, std::net::SocketAddr), MigrationError> {
    let failed = |e: std::io::Error| MigrationError::Vm(format!("cannot accept the source: {e}"));
    listener.set_nonblocking(true).map_err(failed)?;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false).map_err(failed)?;
                return Ok((stream, peer));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if cancel.load(Ordering::Relaxed) {
                    return Err(MigrationError::Cancelled);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(failed(e)),
        }
    }
}

/// Asks the machine until it is ready to receive (or the wait is over).
fn wait_ready(link: &MachineLink) -> Result<MachineReply, String> {
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

fn receive_one(
    listener: &TcpListener,
    link: &MachineLink,
    progress: &Mutex<Progress>,
    socket: &Mutex<Option<TcpStream>>,
    cancel: &AtomicBool,
    helpers_out: &mut Vec<HelperVcpu>,
) -> Result<(), MigrationError> {
    let (stream, peer) = accept(listener, cancel)?;
    log::info!("incoming migration from {peer}");
    prepare_stream(&stream)?;
    if let Ok(mut s) = socket.lock() {
        *s = Some(clone_stream(&stream)?);
    }
    let (local, layout, view, helpers) = match wait_ready(link) {
        Ok(MachineReply::Incoming {
            local,
            layout,
            view,
            helpers,
        }) => (local, layout, view, helpers),
        Ok(_) => return Err(MigrationError::Vm("unexpected answer from the VM".into())),
        Err(why) => {
            let reason = format!("the target is not ready: {why}");
            let mut w = clone_stream(&stream)?;
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
    let writer = clone_stream(&stream)?;
    let mut lanes = match helpers {
        Some((h, batch)) => Some(lanes_for(h, batch)?),
        None => None,
    };
    let mut target = VmTarget::new(view, layout, local, link.clone());
    let result = engine::receive(
        stream,
        writer,
        &mut target,
        lanes.as_mut().map(|l| l as &mut dyn engine::Opener),
        progress,
    );
    if let Some(l) = lanes {
        *helpers_out = l.into_helpers();
    }
    result
}

/// Puts the helper vCPUs on their lanes' threads (if a thread cannot be created, the
/// vCPUs already handed over are lost to this VM's later migrations).
fn lanes_for(helpers: Vec<HelperVcpu>, batch: usize) -> Result<HelperLanes, MigrationError> {
    let count = helpers.len();
    HelperLanes::new(helpers, batch).map_err(|e| {
        MigrationError::Vm(format!(
            "cannot start threads for {count} helper vCPU(s): {e}"
        ))
    })
}

/// The Hello's description of a VM's RAM.
pub fn gpa_ranges(layout: &Layout) -> Vec<GpaRange> {
    layout
        .ram
        .iter()
        .map(|&(base, size)| GpaRange { base, size })
        .collect()
}
