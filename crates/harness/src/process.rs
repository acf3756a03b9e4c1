//! A `sevmirror run` child process: its control socket, console file and stderr file in a
//! working directory, killed (and reaped) when dropped — also when a test panics.
//!
//! Two ways to drive it: [`Channel::Qmp`] keeps one QMP connection (the demo and the
//! benchmarks), [`Channel::Ctl`] runs `sevmirror ctl` per command, as a user or a script
//! would (the KVM integration tests, which test that path too).

use crate::{json_u64, HarnessError, Result};
use qmp::QmpClient;
use serde_json::Value;
use std::{
    ffi::OsStr,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::Duration,
};

/// How long a QMP connection waits for a reply.
const QMP_TIMEOUT: Duration = Duration::from_secs(60);

/// How commands reach the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// One QMP connection, kept open.
    Qmp,
    /// `sevmirror ctl` per command.
    Ctl,
}

/// Where and how to start a VMM.
#[derive(Clone, Debug)]
pub struct Spawn {
    /// The `sevmirror` executable.
    pub exe: PathBuf,
    /// Where its socket, console and stderr files go.
    pub dir: PathBuf,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// How to drive it.
    pub channel: Channel,
    /// What dropping it does.
    pub on_drop: OnDrop,
}

/// What happens to a VMM process when its handle is dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDrop {
    /// `quit`, a grace period, then a kill.
    Quit,
    /// A kill at once (tests: a panicking test must not wait).
    Kill,
}

/// One `sevmirror run` process.
pub struct VmmProcess {
    name: String,
    exe: PathBuf,
    api: PathBuf,
    console: PathBuf,
    stderr: PathBuf,
    channel: Channel,
    on_drop: OnDrop,
    child: Option<Child>,
    qmp: Option<QmpClient>,
}

impl VmmProcess {
    /// Starts `sevmirror run --api DIR/NAME.sock --serial DIR/NAME.console ARGS…` (stderr
    /// to DIR/NAME.stderr); returns at once. See [`VmmProcess::wait_api`].
    pub fn start(spawn: &Spawn, name: &str, args: &[impl AsRef<OsStr>]) -> Result<VmmProcess> {
        VmmProcess::start_on(spawn, name, args, None)
    }

    /// As [`VmmProcess::start`], pinned to `cpus` (a `taskset -c` list) when given.
    pub fn start_on(
        spawn: &Spawn,
        name: &str,
        args: &[impl AsRef<OsStr>],
        cpus: Option<&str>,
    ) -> Result<VmmProcess> {
        let file = |ext: &str| spawn.dir.join(format!("{name}.{ext}"));
        let (api, console, stderr) = (file("sock"), file("console"), file("stderr"));
        let child = crate::pin::command(&spawn.exe, cpus)
            .arg("run")
            .arg("--api")
            .arg(&api)
            .arg("--serial")
            .arg(&console)
            .args(args)
            .envs(spawn.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).map_err(HarnessError::io(format!(
                "cannot create {}",
                stderr.display()
            )))?)
            .spawn()
            .map_err(HarnessError::io(format!("cannot start the {name} VMM")))?;
        Ok(VmmProcess {
            name: name.to_string(),
            exe: spawn.exe.clone(),
            api,
            console,
            stderr,
            channel: spawn.channel,
            on_drop: spawn.on_drop,
            child: Some(child),
            qmp: None,
        })
    }

    /// Starts the VMM and waits (up to `timeout`) for its control socket, which appears
    /// just before the guest starts.
    pub fn spawn(
        spawn: &Spawn,
        name: &str,
        args: &[impl AsRef<OsStr>],
        timeout: Duration,
    ) -> Result<VmmProcess> {
        VmmProcess::spawn_on(spawn, name, args, timeout, None)
    }

    /// As [`VmmProcess::spawn`], pinned to `cpus` (a `taskset -c` list) when given.
    pub fn spawn_on(
        spawn: &Spawn,
        name: &str,
        args: &[impl AsRef<OsStr>],
        timeout: Duration,
        cpus: Option<&str>,
    ) -> Result<VmmProcess> {
        let mut vm = VmmProcess::start_on(spawn, name, args, cpus)?;
        vm.wait_api(timeout)?;
        Ok(vm)
    }

    /// Waits for the control socket; an error with the VMM's stderr if it exited first.
    pub fn wait_api(&mut self, timeout: Duration) -> Result<()> {
        let up = crate::wait_for(timeout, || {
            if self.exited().is_some() {
                return Some(false);
            }
            match self.channel {
                Channel::Ctl => self.api.exists().then_some(true),
                Channel::Qmp => {
                    let c = QmpClient::connect(&self.api, Some(QMP_TIMEOUT)).ok()?;
                    self.qmp = Some(c);
                    Some(true)
                }
            }
        });
        match up {
            Some(true) => Ok(()),
            Some(false) => {
                self.kill();
                Err(HarnessError::NotStarted {
                    name: self.name.clone(),
                    stderr: self.stderr_text(),
                })
            }
            None => {
                self.kill();
                Err(HarnessError::Timeout(format!(
                    "the {} VMM's control socket",
                    self.name
                )))
            }
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its control socket.
    pub fn api(&self) -> &Path {
        &self.api
    }

    /// Runs one control command; the `return` value.
    pub fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value> {
        match self.channel {
            Channel::Qmp => {
                let c = match &mut self.qmp {
                    Some(c) => c,
                    None => {
                        self.qmp
                            .insert(QmpClient::connect(&self.api, Some(QMP_TIMEOUT)).map_err(
                                |source| HarnessError::Qmp {
                                    vmm: self.name.clone(),
                                    command: command.into(),
                                    source,
                                },
                            )?)
                    }
                };
                c.execute(command, args.unwrap_or(Value::Null))
                    .map_err(|source| HarnessError::Qmp {
                        vmm: self.name.clone(),
                        command: command.into(),
                        source,
                    })
            }
            Channel::Ctl => {
                let mut c = Command::new(&self.exe);
                c.arg("ctl").arg("--api").arg(&self.api).arg(command);
                if let Some(a) = args {
                    c.arg(a.to_string());
                }
                let o = c
                    .output()
                    .map_err(HarnessError::io("cannot run sevmirror ctl"))?;
                if !o.status.success() {
                    return Err(HarnessError::Ctl {
                        vmm: self.name.clone(),
                        command: command.into(),
                        stderr: String::from_utf8_lossy(&o.stderr).trim_end().to_string(),
                    });
                }
                serde_json::from_slice(&o.stdout).map_err(|e| {
                    HarnessError::Unexpected(format!("{}: {command}: not JSON: {e}", self.name))
                })
            }
        }
    }

    /// `query-status`'s status ("gone" if the VMM does not answer).
    pub fn status(&mut self) -> String {
        self.execute("query-status", None)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_string))
            .unwrap_or_else(|| "gone".to_string())
    }

    /// The port an incoming VMM listens on (`--incoming tcp:HOST:0` picks one).
    pub fn port(&mut self) -> Result<u16> {
        let info = self.execute("query-migrate", None)?;
        info["socket-address"][0]["port"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| {
                HarnessError::Unexpected(format!(
                    "{} does not say where it listens: {info}",
                    self.name
                ))
            })
    }

    /// The launch measurement (base64), as `query-sev-launch-measure` gives it.
    pub fn measurement(&mut self) -> Result<String> {
        let v = self.execute("query-sev-launch-measure", None)?;
        v["data"].as_str().map(str::to_string).ok_or_else(|| {
            HarnessError::Unexpected(format!("{}: no launch measurement in {v}", self.name))
        })
    }

    /// Caps the migration stream at `bytes_per_sec` (0: no cap).
    pub fn set_max_bandwidth(&mut self, bytes_per_sec: u64) -> Result<()> {
        self.execute(
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": bytes_per_sec })),
        )
        .map(drop)
    }

    /// Starts migrating to the target listening on loopback `port`.
    pub fn migrate(&mut self, port: u16) -> Result<()> {
        self.execute(
            "migrate",
            Some(serde_json::json!({ "uri": format!("tcp:127.0.0.1:{port}") })),
        )
        .map(drop)
    }

    /// Polls `query-migrate` (every 25 ms, each reply to `seen`) until the outgoing
    /// migration ends; the final reply.
    pub fn wait_migration_end(
        &mut self,
        timeout: Duration,
        mut seen: impl FnMut(&Value),
    ) -> Result<Value> {
        let mut failure = None;
        let end = crate::wait_for(timeout, || match self.execute("query-migrate", None) {
            Ok(info) => {
                seen(&info);
                matches!(
                    info["status"].as_str(),
                    Some("completed" | "failed" | "cancelled")
                )
                .then_some(info)
            }
            Err(e) => {
                failure = Some(e);
                Some(Value::Null)
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        end.ok_or_else(|| HarnessError::Timeout(format!("{}'s migration to end", self.name)))
    }

    /// Polls `query-migrate` until its status is one of `want`; that reply.
    pub fn wait_migration_status(&mut self, want: &[&str], timeout: Duration) -> Result<Value> {
        let mut last = Value::Null;
        let found = crate::wait_for(timeout, || {
            last = self.execute("query-migrate", None).ok()?;
            want.contains(&last["status"].as_str()?)
                .then(|| last.clone())
        });
        found.ok_or_else(|| {
            HarnessError::Timeout(format!(
                "{}: a migration status in {want:?} (last reply: {last})",
                self.name
            ))
        })
    }

    /// Bytes on the stream so far, as `query-migrate` counts them.
    pub fn transferred(info: &Value) -> u64 {
        json_u64(info, &["ram", "transferred"])
    }

    /// Its console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits until the console shows `what`; the console then.
    pub fn wait_console(&self, what: &str, timeout: Duration) -> Result<String> {
        crate::wait_for(timeout, || {
            let c = self.console();
            c.contains(what).then_some(c)
        })
        .ok_or_else(|| {
            HarnessError::Timeout(format!(
                "{what:?} on {}'s console\n  {}",
                self.name,
                self.tail()
            ))
        })
    }

    /// The first whole console line containing `what`, once one is there.
    pub fn wait_console_line(&self, what: &str, timeout: Duration) -> Option<String> {
        crate::wait_for(timeout, || {
            self.console()
                .split_inclusive('\n')
                .find(|l| l.ends_with('\n') && l.contains(what))
                .map(|l| l.trim_end().to_string())
        })
    }

    /// What it printed on stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The end of its console and stderr, for an error message.
    pub fn tail(&self) -> String {
        let last = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n    ")
        };
        format!(
            "{} console:\n    {}\n  {} stderr:\n    {}",
            self.name,
            last(self.console()),
            self.name,
            last(self.stderr_text())
        )
    }

    /// Its exit status, if it has exited (reaping it).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let status = crate::wait_for(timeout, || self.exited())
            .ok_or_else(|| HarnessError::Timeout(format!("{} to exit", self.name)))?;
        self.child = None;
        Ok(status)
    }

    /// Kills it (and reaps it).
    pub fn kill(&mut self) {
        self.qmp = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks it to quit, waits up to `grace`, then kills it.
    pub fn quit(&mut self, grace: Duration) {
        if self.child.is_none() {
            return;
        }
        let _ = self.execute("quit", None);
        if crate::wait_for(grace, || self.exited()).is_some() {
            self.child = None;
        }
        self.kill();
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        match self.on_drop {
            OnDrop::Quit => self.quit(Duration::from_secs(3)),
            OnDrop::Kill => self.kill(),
        }
    }
}
