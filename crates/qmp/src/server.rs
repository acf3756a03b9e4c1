//! The QMP server on a UNIX socket, and the event broadcaster.
//!
//! Threads: one accepting; per client a reader (frames requests, runs them through a
//! [`Session`] and the [`Controller`]) and a writer (drains a bounded queue of lines —
//! responses and events — to the socket, so a slow client never blocks the VMM). At most
//! [`MAX_CLIENTS`] clients at once. A client whose event queue overflows is disconnected
//! rather than letting events pile up without bound.

use super::command::Controller;
use super::reply::QmpEvent;
use super::wire::{self, Frame, Framer, Mode, Session, MAX_REQUEST_BYTES};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

/// Most clients connected at once; further connections are closed at once.
pub const MAX_CLIENTS: usize = 16;

/// Lines (responses and events) queued per client before it counts as stuck.
const QUEUE_LINES: usize = 256;

/// How long a write to a client may block before the client is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long dropping the server waits for client threads to finish.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A live process already serves this path.
    #[error("another process is listening on {path}")]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// The path exists and is not a socket; it is left alone.
    #[error("{path} exists and is not a socket")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// The path could not be examined.
    #[error("cannot inspect {path}")]
    Inspect {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Probing an existing socket failed other than by "connection refused".
    #[error("cannot tell whether a process listens on {path}")]
    Probe {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A stale socket file could not be removed.
    #[error("cannot remove the stale socket {path}")]
    RemoveStale {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Binding the socket failed.
    #[error("cannot listen on {path}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The socket could not be made private (mode 0600).
    #[error("cannot restrict {path} to mode 0600")]
    Permissions {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The accepting thread could not be started.
    #[error("cannot start the control socket thread")]
    Spawn {
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the control socket down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Subscriber {
    id: u64,
    server: u64,
    mode: Mode,
    tx: SyncSender<String>,
    conn: UnixStream,
}

#[derive(Default)]
struct Registry {
    subs: Mutex<Vec<Subscriber>>,
    next_id: AtomicU64,
}

/// Sends [`QmpEvent`]s to every client that has completed capabilities negotiation.
///
/// Cheap to clone; create it first, give clones to the VMM (its [`Controller`] included),
/// then pass one to [`QmpServer::bind`]. Sending with no client connected does nothing.
#[derive(Clone, Default)]
pub struct EventSender {
    registry: Arc<Registry>,
}

impl std::fmt::Debug for EventSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventSender")
            .field("clients", &lock(&self.registry.subs).len())
            .finish()
    }
}

impl EventSender {
    /// A sender with no clients yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Broadcasts `event`, time-stamped now. Never blocks: a client whose queue is full
    /// is disconnected.
    pub fn send(&self, event: &QmpEvent) {
        let line = wire::event_line(event, SystemTime::now());
        let subs = lock(&self.registry.subs);
        for s in subs.iter().filter(|s| s.mode == Mode::Command) {
            match s.tx.try_send(line.clone()) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {
                    log::warn!(
                        "qmp: client {} does not read its events; disconnecting it",
                        s.id
                    );
                    let _ = s.conn.shutdown(Shutdown::Both);
                }
            }
        }
    }

    /// Number of clients that receive events (negotiated).
    pub fn listeners(&self) -> usize {
        lock(&self.registry.subs)
            .iter()
            .filter(|s| s.mode == Mode::Command)
            .count()
    }

    fn register(&self, server: u64, tx: SyncSender<String>, conn: UnixStream) -> Option<u64> {
        let mut subs = lock(&self.registry.subs);
        if subs.iter().filter(|s| s.server == server).count() >= MAX_CLIENTS {
            return None;
        }
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        subs.push(Subscriber {
            id,
            server,
            mode: Mode::Negotiation,
            tx,
            conn,
        });
        Some(id)
    }

    fn set_mode(&self, id: u64, mode: Mode) {
        if let Some(s) = lock(&self.registry.subs).iter_mut().find(|s| s.id == id) {
            s.mode = mode;
        }
    }

    fn unregister(&self, id: u64) {
        lock(&self.registry.subs).retain(|s| s.id != id);
    }

    /// Ends reading on every connection of `server`; their threads then wind down.
    fn hang_up(&self, server: u64) {
        for s in lock(&self.registry.subs)
            .iter()
            .filter(|s| s.server == server)
        {
            let _ = s.conn.shutdown(Shutdown::Read);
        }
    }
}

static NEXT_SERVER: AtomicU64 = AtomicU64::new(1);
static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

struct Shared {
    id: u64,
    controller: Arc<dyn Controller>,
    events: EventSender,
    stopping: AtomicBool,
    threads: Mutex<usize>,
    idle: Condvar,
}

/// Counts a running client thread; uncounts it however the thread ends.
struct ThreadToken(Arc<Shared>);

impl ThreadToken {
    fn new(shared: &Arc<Shared>) -> Self {
        *lock(&shared.threads) += 1;
        Self(Arc::clone(shared))
    }
}

impl Drop for ThreadToken {
    fn drop(&mut self) {
        let mut n = lock(&self.0.threads);
        *n = n.saturating_sub(1);
        self.0.idle.notify_all();
    }
}

/// A QMP server listening on a UNIX socket. Dropping it stops accepting, removes the
/// socket file (if it is still ours), hangs up on every client and waits briefly for
/// their threads; responses already computed (such as `quit`'s `{}`) are still written.
pub struct QmpServer {
    path: PathBuf,
    file_id: Option<(u64, u64)>,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for QmpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpServer")
            .field("path", &self.path)
            .finish()
    }
}

impl QmpServer {
    /// Listens on `path` (mode 0600) and serves `controller`; `events` broadcasts to the
    /// clients of this server. A stale socket file (nobody listening) is replaced; a live
    /// one, or any other file, is an error.
    pub fn bind(
        path: impl AsRef<Path>,
        controller: Arc<dyn Controller>,
        events: EventSender,
    ) -> Result<Self, ServerError> {
        let path = path.as_ref().to_path_buf();
        clear_stale(&path)?;
        let listener = bind_private(&path)?;
        let file_id = std::fs::metadata(&path).ok().map(|m| (m.dev(), m.ino()));
        let shared = Arc::new(Shared {
            id: NEXT_SERVER.fetch_add(1, Ordering::Relaxed),
            controller,
            events,
            stopping: AtomicBool::new(false),
            threads: Mutex::new(0),
            idle: Condvar::new(),
        });
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("qmp-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))
            .map_err(|source| {
                let _ = std::fs::remove_file(&path);
                ServerError::Spawn { source }
            })?;
        log::info!("qmp: listening on {}", path.display());
        Ok(Self {
            path,
            file_id,
            shared,
            accept: Some(accept),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for QmpServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| Some((m.dev(), m.ino())) == self.file_id);
        // Wake the accepting thread with a connection of our own. If the file is gone or
        // someone else's now, leave the thread: it exits at its next connection or with
        // the process.
        if let Some(accept) = self.accept.take() {
            if ours && UnixStream::connect(&self.path).is_ok() {
                let _ = accept.join();
            }
        }
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
        self.shared.events.hang_up(self.shared.id);
        let deadline = Instant::now() + STOP_WAIT;
        let mut n = lock(&self.shared.threads);
        while *n > 0 {
            let now = Instant::now();
            if now >= deadline {
                log::warn!("qmp: {} client thread(s) still busy at shutdown", *n);
                break;
            }
            n = match self.shared.idle.wait_timeout(n, deadline - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// Removes a socket file nobody listens on; refuses live sockets and other files.
fn clear_stale(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Inspect {
                path: path.into(),
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket { path: path.into() });
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(ServerError::InUse { path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("qmp: removing the stale socket {}", path.display());
            std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
                path: path.into(),
                source,
            })
        }
        Err(source) => Err(ServerError::Probe {
            path: path.into(),
            source,
        }),
    }
}

/// Binds with mode 0600 from the first moment clients can reach the socket: bind under
/// a temporary name in the same directory, restrict, then rename into place. If the
/// temporary name cannot be bound (e.g. too long for `sun_path`), bind in place and
/// restrict at once.
fn bind_private(path: &Path) -> Result<UnixListener, ServerError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let tmp = dir.join(format!(
        ".sevmirror-qmp-{}-{}",
        std::process::id(),
        NEXT_TMP.fetch_add(1, Ordering::Relaxed)
    ));
    let private = std::fs::Permissions::from_mode(0o600);
    if let Ok(listener) = UnixListener::bind(&tmp) {
        let moved = std::fs::set_permissions(&tmp, private.clone())
            .and_then(|()| std::fs::rename(&tmp, path));
        return match moved {
            Ok(()) => Ok(listener),
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                Err(ServerError::Bind {
                    path: path.into(),
                    source,
                })
            }
        };
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.into(),
        source,
    })?;
    if let Err(source) = std::fs::set_permissions(path, private) {
        let _ = std::fs::remove_file(path);
        return Err(ServerError::Permissions {
            path: path.into(),
            source,
        });
    }
    Ok(listener)
}

fn accept_loop(listener: &UnixListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        match conn {
            Ok(stream) => start_client(shared, stream),
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                log::warn!("qmp: accept failed: {e}");
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn start_client(shared: &Arc<Shared>, stream: UnixStream) {
    let (tx, rx) = mpsc::sync_channel::<String>(QUEUE_LINES);
    let clones = stream
        .try_clone()
        .and_then(|a| Ok((a, stream.try_clone()?)));
    let (writer, registered) = match clones {
        Ok(c) => c,
        Err(e) => {
            log::warn!("qmp: cannot set up a client connection: {e}");
            return;
        }
    };
    let Some(id) = shared.events.register(shared.id, tx.clone(), registered) else {
        log::warn!("qmp: {MAX_CLIENTS} clients already connected; refusing another");
        return;
    };
    if tx.try_send(wire::greeting_line()).is_err() {
        shared.events.unregister(id);
        return;
    }
    let wtoken = ThreadToken::new(shared);
    let spawned_writer = thread::Builder::new()
        .name(format!("qmp-write-{id}"))
        .spawn(move || write_loop(writer, &rx, wtoken));
    if let Err(e) = spawned_writer {
        log::warn!("qmp: cannot start a client thread: {e}");
        shared.events.unregister(id);
        return;
    }
    let rtoken = ThreadToken::new(shared);
    let reader_shared = Arc::clone(shared);
    let spawned_reader = thread::Builder::new()
        .name(format!("qmp-read-{id}"))
        .spawn(move || {
            let _token = rtoken;
            read_loop(&reader_shared, id, stream, &tx);
            reader_shared.events.unregister(id);
            log::debug!("qmp: client {id} disconnected");
        });
    if let Err(e) = spawned_reader {
        log::warn!("qmp: cannot start a client thread: {e}");
        shared.events.unregister(id);
        return;
    }
    log::debug!("qmp: client {id} connected");
}

fn write_loop(mut conn: UnixStream, rx: &Receiver<String>, _token: ThreadToken) {
    let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
    for line in rx {
        if let Err(e) = conn.write_all(line.as_bytes()) {
            log::debug!("qmp: client write failed: {e}");
            break;
        }
    }
    // Also ends the reader if the client stopped reading.
    let _ = conn.shutdown(Shutdown::Both);
}

fn read_loop(shared: &Shared, id: u64, mut conn: UnixStream, tx: &SyncSender<String>) {
    let mut session = Session::new();
    let mut framer = Framer::new(MAX_REQUEST_BYTES);
    let mut frames: Vec<Frame> = Vec::new();
    let mut buf = vec![0u8; 8192];
    loop {
        let n = match conn.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::debug!("qmp: client {id} read failed: {e}");
                return;
            }
        };
        framer.feed(buf.get(..n).unwrap_or_default(), &mut frames);
        for frame in frames.drain(..) {
            let before = session.mode();
            let response = session.handle(frame, shared.controller.as_ref());
            if session.mode() != before {
                shared.events.set_mode(id, session.mode());
            }
            if tx.send(response).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ControlError, QmpCommand, QmpReply};
    use std::io::{BufRead, BufReader};

    struct Nop;
    impl Controller for Nop {
        fn execute(&self, _cmd: QmpCommand) -> Result<QmpReply, ControlError> {
            Ok(QmpReply::Empty)
        }
    }

    /// A private temp dir, removed when dropped.
    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    impl std::ops::Deref for Dir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    fn dir(name: &str) -> Dir {
        let d =
            std::env::temp_dir().join(format!("sevmirror-qmp-unit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    #[test]
    fn socket_is_private_and_removed_on_drop() {
        let d = dir("private");
        let path = d.join("s.sock");
        let server = QmpServer::bind(&path, Arc::new(Nop), EventSender::new()).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(&*d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, [std::ffi::OsString::from("s.sock")]);
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn live_sockets_and_other_files_are_refused_stale_ones_replaced() {
        let d = dir("stale");
        let path = d.join("s.sock");
        let first = QmpServer::bind(&path, Arc::new(Nop), EventSender::new()).unwrap();
        let err = QmpServer::bind(&path, Arc::new(Nop), EventSender::new()).unwrap_err();
        assert!(matches!(err, ServerError::InUse { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("another process is listening on {}", path.display())
        );
        drop(first);

        // A socket file with nobody behind it.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let server = QmpServer::bind(&path, Arc::new(Nop), EventSender::new()).unwrap();
        drop(server);

        std::fs::write(&path, b"not a socket").unwrap();
        let err = QmpServer::bind(&path, Arc::new(Nop), EventSender::new()).unwrap_err();
        assert!(matches!(err, ServerError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"not a socket");
    }

    #[test]
    fn a_missing_directory_is_a_bind_error() {
        let d = dir("nodir");
        let path = d.join("no/such/dir/s.sock");
        let err = QmpServer::bind(&path, Arc::new(Nop), EventSender::new()).unwrap_err();
        assert!(matches!(err, ServerError::Bind { .. }), "{err}");
    }

    #[test]
    fn greeting_arrives_and_events_wait_for_negotiation() {
        let d = dir("greet");
        let path = d.join("s.sock");
        let events = EventSender::new();
        let server = QmpServer::bind(&path, Arc::new(Nop), events.clone()).unwrap();
        let conn = UnixStream::connect(&path).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("{\"QMP\":") && line.ends_with("\r\n"),
            "{line:?}"
        );
        // Not negotiated: no events.
        events.send(&QmpEvent::Stop);
        (&conn)
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"return\":{}}\r\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while events.listeners() == 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        events.send(&QmpEvent::Resume);
        line.clear();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("{\"event\":\"RESUME\""), "{line:?}");
        drop(server);
        line.clear();
        assert_eq!(r.read_line(&mut line).unwrap(), 0, "hung up after drop");
    }
}
