//! The control socket end to end: a real `QmpServer` on a UNIX socket in a temp dir with a
//! fake `Controller`, and the client library against it. (`sevmirror ctl` against the same
//! kind of server is tested with the binary, in `crates/sevmirror/tests/ctl.rs`.)

use qmp::{
    ClientError, ControlError, Controller, EventSender, MigrationStatus, QmpClient, QmpCommand,
    QmpEvent, QmpReply, QmpServer, RunState, SevGuestType, SevInfo, SevState, ShutdownCause,
    StatusInfo,
};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Option<Duration> = Some(Duration::from_secs(10));

/// Records every command; answers with canned replies; emits events like a VMM would.
struct Fake {
    seen: Mutex<Vec<QmpCommand>>,
    events: EventSender,
    quit: AtomicBool,
}

impl Fake {
    fn new(events: EventSender) -> Arc<Self> {
        Arc::new(Self {
            seen: Mutex::new(Vec::new()),
            events,
            quit: AtomicBool::new(false),
        })
    }

    fn seen(&self) -> Vec<QmpCommand> {
        self.seen.lock().unwrap().clone()
    }
}

impl Controller for Fake {
    fn execute(&self, cmd: QmpCommand) -> Result<QmpReply, ControlError> {
        self.seen.lock().unwrap().push(cmd.clone());
        match cmd {
            QmpCommand::QueryStatus => Ok(QmpReply::Status(StatusInfo {
                status: RunState::Running,
            })),
            QmpCommand::QuerySev => Ok(QmpReply::Sev(SevInfo {
                enabled: true,
                api_major: 0,
                api_minor: 24,
                build_id: 15,
                policy: 1,
                state: SevState::Running,
                handle: 1,
                sev_type: SevGuestType::Sev,
            })),
            QmpCommand::Stop => {
                self.events.send(&QmpEvent::Stop);
                Ok(QmpReply::Empty)
            }
            QmpCommand::Cont => Err(ControlError::not_permitted("cont", RunState::InMigrate)),
            QmpCommand::Quit => {
                self.quit.store(true, Ordering::SeqCst);
                self.events.send(&QmpEvent::Shutdown {
                    reason: ShutdownCause::HostQmpQuit,
                });
                Ok(QmpReply::Empty)
            }
            QmpCommand::QueryMigrate => Ok(QmpReply::Migration(Box::default())),
            QmpCommand::QueryHelper => {
                // Slow on purpose, for the timeout test.
                std::thread::sleep(Duration::from_millis(1500));
                Err(ControlError::generic("No migration helper is attached"))
            }
            _ => Ok(QmpReply::Empty),
        }
    }
}

/// A private temp dir, removed when dropped.
struct TmpDir(PathBuf);

impl TmpDir {
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("sevmirror-qmp-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

/// The dir comes first so that it is dropped last, after the server.
fn serve(name: &str) -> (TmpDir, QmpServer, Arc<Fake>, EventSender, PathBuf) {
    let dir = tmpdir(name);
    let path = dir.join("vm.sock");
    let events = EventSender::new();
    let fake = Fake::new(events.clone());
    let server = QmpServer::bind(&path, fake.clone(), events.clone()).unwrap();
    (dir, server, fake, events, path)
}

fn wait_for(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn client_runs_commands_and_gets_typed_replies_on_the_wire() {
    let (_dir, _server, fake, _events, path) = serve("basic");
    let mut c = QmpClient::connect(&path, T).unwrap();
    assert_eq!(c.greeting()["capabilities"], json!([]));
    assert_eq!(
        c.greeting()["version"]["qemu"],
        json!({"micro": 0, "minor": 0, "major": 0})
    );

    assert_eq!(
        c.execute("query-status", Value::Null).unwrap(),
        json!({"running": true, "singlestep": false, "status": "running"})
    );
    assert_eq!(
        c.execute("query-sev", json!({})).unwrap(),
        json!({"enabled": true, "api-major": 0, "api-minor": 24, "build-id": 15, "policy": 1,
               "state": "running", "handle": 1, "sev-type": "sev"})
    );
    assert_eq!(c.execute("query-migrate", Value::Null).unwrap(), json!({}));
    assert_eq!(
        c.execute("migrate", json!({"uri": "tcp:127.0.0.1:4444"}))
            .unwrap(),
        json!({})
    );
    assert_eq!(
        c.execute("migrate-set-parameters", json!({"downtime-limit": 300}))
            .unwrap(),
        json!({})
    );

    let err = |r: Result<Value, ClientError>| match r {
        Err(ClientError::Qmp(e)) => (e.class, e.desc),
        other => panic!("expected a QMP error, got {other:?}"),
    };
    assert_eq!(
        err(c.execute("cont", Value::Null)),
        (
            "GenericError".into(),
            "The command 'cont' isn't permitted in 'inmigrate' state".into()
        )
    );
    assert_eq!(
        err(c.execute("frob", Value::Null)),
        (
            "CommandNotFound".into(),
            "The command frob has not been found".into()
        )
    );
    assert_eq!(
        err(c.execute("migrate", json!({"uri": "tcp:h:1", "foo": 1}))),
        (
            "GenericError".into(),
            "Parameter 'foo' is unexpected".into()
        )
    );
    assert_eq!(
        err(c.execute("sev-inject-launch-secret", json!({"secret": "AA=="}))),
        (
            "GenericError".into(),
            "Parameter 'packet-header' is missing".into()
        )
    );
    assert!(matches!(
        c.execute("stop", json!([1])),
        Err(ClientError::BadArguments { .. })
    ));

    // Only well-formed commands reached the VMM.
    let seen = fake.seen();
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(
        seen[3],
        QmpCommand::Migrate(qmp::Migrate {
            uri: "tcp:127.0.0.1:4444".into(),
            commit_file: None,
        })
    );
    assert_eq!(
        seen[4],
        QmpCommand::MigrateSetParameters(qmp::MigrateSetParameters {
            downtime_limit: Some(300),
            max_bandwidth: None,
            zero_page_records: None,
        })
    );
}

#[test]
fn two_clients_at_once_both_get_every_event() {
    let (_dir, _server, fake, events, path) = serve("two");
    let mut a = QmpClient::connect(&path, T).unwrap();
    let mut b = QmpClient::connect(&path, T).unwrap();
    wait_for(|| events.listeners() == 2);

    // Interleaved commands on both connections.
    for _ in 0..20 {
        assert_eq!(
            a.execute("query-status", Value::Null).unwrap()["status"],
            "running"
        );
        assert_eq!(
            b.execute("query-sev", Value::Null).unwrap()["state"],
            "running"
        );
    }
    assert_eq!(fake.seen().len(), 40);

    events.send(&QmpEvent::Migration {
        status: MigrationStatus::Active,
    });
    events.send(&QmpEvent::MigrationPass { pass: 1 });
    events.send(&QmpEvent::Migration {
        status: MigrationStatus::Completed,
    });
    for c in [&mut a, &mut b] {
        let e = c
            .wait_event("MIGRATION_PASS", Duration::from_secs(10))
            .unwrap();
        assert_eq!(e.data, json!({"pass": 1}));
        assert!(e.seconds > 1_600_000_000, "{e:?}");
        assert!((0..1_000_000).contains(&e.microseconds));
        // Events read while waiting for another one are kept, in order.
        let e = c.wait_event("MIGRATION", Duration::from_secs(10)).unwrap();
        assert_eq!(e.data, json!({"status": "active"}));
        let e = c.wait_event("MIGRATION", Duration::from_secs(10)).unwrap();
        assert_eq!(e.data, json!({"status": "completed"}));
    }
    assert!(matches!(
        a.wait_event("RESUME", Duration::from_millis(100)),
        Err(ClientError::Timeout { .. })
    ));
}

#[test]
fn events_raised_during_a_command_are_kept_for_the_caller() {
    let (_dir, _server, _fake, _events, path) = serve("during");
    let mut c = QmpClient::connect(&path, T).unwrap();
    assert_eq!(c.execute("stop", Value::Null).unwrap(), json!({}));
    let evs = c.take_events();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert_eq!(evs[0].name, "STOP");
    assert_eq!(evs[0].data, Value::Null);
    assert!(c.take_events().is_empty());
}

#[test]
fn quit_answers_then_the_vmm_drops_the_server() {
    let (_dir, server, fake, _events, path) = serve("quit");
    let mut c = QmpClient::connect(&path, T).unwrap();
    assert_eq!(c.execute("quit", Value::Null).unwrap(), json!({}));
    assert!(fake.quit.load(Ordering::SeqCst));
    let e = c.wait_event("SHUTDOWN", Duration::from_secs(10)).unwrap();
    assert_eq!(e.data, json!({"guest": false, "reason": "host-qmp-quit"}));
    drop(server);
    assert!(!path.exists());
    assert!(matches!(
        c.execute("query-status", Value::Null),
        Err(ClientError::Closed { .. } | ClientError::Send { .. } | ClientError::Receive { .. })
    ));
}

/// A raw connection, as `socat` or a hand-written script would use it.
struct Raw {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Raw {
    fn open(path: &Path) -> Self {
        let w = UnixStream::connect(path).unwrap();
        w.set_read_timeout(T).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        let mut raw = Self { w, r };
        let greeting = raw.recv();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        assert!(line.ends_with("\r\n"), "{line:?}");
        serde_json::from_str(&line).unwrap()
    }
}

#[test]
fn raw_protocol_gate_garbage_and_length_cap() {
    let (_dir, _server, fake, _events, path) = serve("raw");
    let mut r = Raw::open(&path);
    r.send(b"{\"execute\": \"query-status\", \"id\": \"x\"}\n");
    assert_eq!(
        r.recv(),
        json!({"error": {"class": "CommandNotFound",
               "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": "x"})
    );
    // Pretty-printed, single-quoted, and two requests on one line all work.
    r.send(b"{\n  'execute': 'qmp_capabilities'\n}\n");
    assert_eq!(r.recv(), json!({"return": {}}));
    r.send(b"{\"execute\":\"query-status\",\"id\":1}{\"execute\":\"query-status\",\"id\":2}\n");
    assert_eq!(r.recv()["id"], 1);
    assert_eq!(r.recv()["id"], 2);

    // Garbage, then a request far over the cap, then a good request.
    r.send(b"\xff\xfe garbage\n");
    for _ in 0..2 {
        let v = r.recv();
        assert_eq!(v["error"]["class"], "GenericError", "{v}");
        assert!(
            v["error"]["desc"]
                .as_str()
                .unwrap()
                .starts_with("JSON parse error"),
            "{v}"
        );
    }
    let v = r.recv();
    assert!(
        v["error"]["desc"]
            .as_str()
            .unwrap()
            .starts_with("JSON parse error"),
        "{v}"
    );
    let mut huge = b"{\"execute\":\"migrate\",\"arguments\":{\"uri\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 3 << 20));
    huge.extend(b"\"}}\n");
    r.send(&huge);
    assert_eq!(
        r.recv(),
        json!({"error": {"class": "GenericError",
               "desc": "JSON parse error, request longer than 1048576 bytes"}})
    );
    r.send(b"{\"execute\":\"query-status\",\"id\":3}\r\n");
    assert_eq!(r.recv()["return"]["status"], "running");
    assert_eq!(fake.seen().len(), 3);
}

#[test]
fn client_timeouts_and_non_qmp_peers_are_clear_errors() {
    // A slow command.
    let (_dir, _server, _fake, _events, path) = serve("slow");
    let mut c = QmpClient::connect(&path, Some(Duration::from_millis(200))).unwrap();
    match c.execute("query-helper", Value::Null) {
        Err(ClientError::Timeout { what, timeout }) => {
            assert_eq!(what, "the reply to query-helper");
            assert_eq!(timeout, Duration::from_millis(200));
        }
        other => panic!("{other:?}"),
    }

    // A peer that greets with something else, and one that never greets.
    let d = tmpdir("peers");
    let chatty = d.join("chatty.sock");
    let silent = d.join("silent.sock");
    let l1 = UnixListener::bind(&chatty).unwrap();
    let l2 = UnixListener::bind(&silent).unwrap();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l1.accept().unwrap();
        s.write_all(b"{\"hello\": 1}\n").unwrap();
        let (s2, _) = l2.accept().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        drop((s, s2));
    });
    let e = QmpClient::connect(&chatty, T).unwrap_err();
    assert!(matches!(e, ClientError::NotQmp { .. }), "{e}");
    let e = QmpClient::connect(&silent, Some(Duration::from_millis(100))).unwrap_err();
    assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
    assert_eq!(
        e.to_string(),
        "timed out after 0.1 s waiting for the QMP greeting"
    );
    t.join().unwrap();

    let e = QmpClient::connect(d.join("absent.sock"), T).unwrap_err();
    assert!(matches!(e, ClientError::Connect { .. }), "{e}");
}

#[test]
fn too_many_clients_are_turned_away() {
    let (_dir, _server, _fake, events, path) = serve("many");
    let clients: Vec<QmpClient> = (0..qmp::server::MAX_CLIENTS)
        .map(|_| QmpClient::connect(&path, T).unwrap())
        .collect();
    wait_for(|| events.listeners() == qmp::server::MAX_CLIENTS);
    let e = QmpClient::connect(&path, T).unwrap_err();
    assert!(
        matches!(e, ClientError::Closed { .. } | ClientError::Receive { .. }),
        "{e}"
    );
    drop(clients);
    wait_for(|| events.listeners() == 0);
    QmpClient::connect(&path, T).unwrap();
}
