//! `sevmirror ctl` as a user runs it, against a real `QmpServer` with a fake `Controller`:
//! the return value on stdout, QMP errors and connection problems as one line on stderr,
//! usage errors with exit status 2.

use qmp::{
    ControlError, Controller, EventSender, QmpCommand, QmpReply, QmpServer, RunState, StatusInfo,
};
use serde_json::{json, Value};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records every command; answers `query-status` and accepts the rest.
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<QmpCommand>>,
}

impl Fake {
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
            QmpCommand::QueryMigrate => Ok(QmpReply::Migration(Box::default())),
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
    let d = std::env::temp_dir().join(format!("sevmirror-ctl-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TmpDir(d)
}

/// The dir comes first so that it is dropped last, after the server.
fn serve(name: &str) -> (TmpDir, QmpServer, Arc<Fake>, PathBuf) {
    let dir = tmpdir(name);
    let path = dir.join("vm.sock");
    let fake = Arc::new(Fake::default());
    let server = QmpServer::bind(&path, fake.clone(), EventSender::new()).unwrap();
    (dir, server, fake, path)
}

fn ctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sevmirror"))
        .arg("ctl")
        .args(args)
        .output()
        .expect("run sevmirror ctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn ctl_prints_the_return_value_and_qmp_errors() {
    let (_dir, _server, fake, path) = serve("ctl");
    let sock = path.to_str().unwrap();

    let o = ctl(&["--api", sock, "query-status"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        serde_json::from_slice::<Value>(&o.stdout).unwrap(),
        json!({"running": true, "singlestep": false, "status": "running"})
    );
    assert!(
        text(&o.stdout).contains("\n  \"running\": true"),
        "pretty: {}",
        text(&o.stdout)
    );

    let o = ctl(&[
        "--api",
        sock,
        "--timeout",
        "5",
        "migrate",
        r#"{"uri":"tcp:127.0.0.1:4444"}"#,
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).trim(), "{}");
    assert!(fake.seen().contains(&QmpCommand::Migrate(qmp::Migrate {
        uri: "tcp:127.0.0.1:4444".into(),
        commit_file: None,
    })));

    let o = ctl(&["--api", sock, "frob"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        text(&o.stderr),
        "sevmirror: CommandNotFound: The command frob has not been found\n"
    );

    let o = ctl(&["--api", sock, "migrate", r#"{"url":"tcp:h:1"}"#]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "sevmirror: GenericError: Parameter 'url' is unexpected\n"
    );
}

#[test]
fn ctl_connection_problems_are_one_line_and_exit_1() {
    let d = tmpdir("ctl-conn");
    let missing = d.join("missing.sock");
    let o = ctl(&["--api", missing.to_str().unwrap(), "query-status"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "sevmirror: error: cannot connect to {}",
            missing.display()
        )),
        "{err}"
    );

    // A stale socket file: nobody listening.
    let stale = d.join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let o = ctl(&["--api", stale.to_str().unwrap(), "query-status"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("Connection refused"),
        "{}",
        text(&o.stderr)
    );

    // Something that never greets: the timeout applies.
    let silent = d.join("silent.sock");
    let l = UnixListener::bind(&silent).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_secs(2));
        drop(s);
    });
    let started = Instant::now();
    let o = ctl(&[
        "--api",
        silent.to_str().unwrap(),
        "--timeout",
        "0.3",
        "query-status",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        text(&o.stderr),
        "sevmirror: error: timed out after 0.3 s waiting for the QMP greeting\n"
    );
    t.join().unwrap();
}

#[test]
fn ctl_usage_errors_exit_2() {
    let cases: [&[&str]; 5] = [
        &["--api", "/nonexistent.sock", "migrate", "{not json"],
        &["--api", "/nonexistent.sock", "migrate", "[1,2]"],
        &[
            "--api",
            "/nonexistent.sock",
            "--timeout",
            "0",
            "query-status",
        ],
        &["--api", "/nonexistent.sock"],
        &["query-status"],
    ];
    for args in cases {
        let o = ctl(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o.stderr));
        assert!(o.stdout.is_empty());
    }
    let o = ctl(&["--api", "/x.sock", "migrate", "[1]"]);
    assert!(text(&o.stderr).contains("ARGS-JSON"), "{}", text(&o.stderr));
}
