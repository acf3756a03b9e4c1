//! One live migration between two `sevmirror run` processes on this machine, staged the
//! way a cloud would: an SEV platform, a guest owner who attests both VMs and gives each
//! the same migration secret, a source running the dirty workload, a target waiting with
//! `--incoming`, and the migration over loopback. `demo` and `bench migrate` use it.
//!
//! The owner's side runs in this process (it holds the TEK/TIK and the secret); the
//! VMMs are child processes that only ever receive what a host receives.

use anyhow::{bail, Context};
use qmp::QmpClient;
use serde_json::{json, Value};
use sev_platform::{
    crypto::{random_bytes, TransportKeys},
    emulated::EmulatedPsp,
    measure::FirmwareVersion,
    owner::{self, Measured},
    Policy, SevBackend,
};
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How long a child may take to create its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the target guest may take to report its memory check.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// The policy the owner asks for: QEMU's default (no debugging).
const POLICY: Policy = Policy(Policy::NODBG);

/// What to migrate, and how.
#[derive(Clone, Debug)]
pub struct Config {
    /// Guest RAM in bytes.
    pub mem: u64,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// Helper vCPUs on each side (SEV).
    pub helpers: u16,
    /// Pages per second the dirty workload rewrites.
    pub dirty_rate: u64,
    /// An SEV guest through the helper (true) or a plain guest copied by the VMM.
    pub sev: bool,
    /// `downtime-limit`, ms (None: the default).
    pub downtime_limit_ms: Option<u64>,
    /// How long the workload runs before the migration starts.
    pub warmup: Duration,
}

/// What happened.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The source's final `query-migrate`.
    pub migration: Value,
    /// "completed", "failed", …
    pub status: String,
    /// The target guest's own memory check: Some(true) for "verify PASS".
    pub verified: Option<bool>,
    /// The target guest's check line.
    pub verify_line: Option<String>,
    /// `query-status` of the source and the target after the migration.
    pub source_state: String,
    /// See `source_state`.
    pub target_state: String,
    /// CPU seconds the source and target processes used from `migrate` to completion.
    pub cpu_s: f64,
}

impl Outcome {
    fn number(&self, path: &[&str]) -> u64 {
        json_u64(&self.migration, path)
    }

    /// Milliseconds from `migrate` to completion (the source's count).
    pub fn total_ms(&self) -> u64 {
        self.number(&["total-time"])
    }

    /// Milliseconds the guest did not run.
    pub fn downtime_ms(&self) -> u64 {
        self.number(&["downtime"])
    }

    /// Precopy rounds, the final stop-and-copy included.
    pub fn rounds(&self) -> u64 {
        self.number(&["ram", "dirty-sync-count"])
    }

    /// Bytes on the stream.
    pub fn transferred(&self) -> u64 {
        self.number(&["ram", "transferred"])
    }

    /// Bytes of guest RAM.
    pub fn mem_bytes(&self) -> u64 {
        self.number(&["ram", "total"])
    }

    /// Guest RAM moved per second of migration, GiB/s.
    pub fn throughput_gib_s(&self) -> f64 {
        let secs = self.total_ms() as f64 / 1e3;
        if secs <= 0.0 {
            return 0.0;
        }
        self.mem_bytes() as f64 / secs / (1u64 << 30) as f64
    }

    /// Whether everything a user expects held: the migration completed, the target runs
    /// the guest and its memory checked out, the source handed the guest over.
    pub fn passed(&self) -> bool {
        self.status == "completed"
            && self.verified == Some(true)
            && self.target_state == "running"
            && self.source_state == "postmigrate"
    }
}

/// A `sevmirror run` child with its control connection.
struct Vmm {
    name: &'static str,
    child: Child,
    qmp: QmpClient,
    console: PathBuf,
    stderr: PathBuf,
}

impl Vmm {
    fn execute(&mut self, command: &str, args: Value) -> anyhow::Result<Value> {
        self.qmp
            .execute(command, args)
            .with_context(|| format!("{}: {command}", self.name))
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn status(&mut self) -> String {
        self.execute("query-status", Value::Null)
            .ok()
            .and_then(|v| v["status"].as_str().map(str::to_string))
            .unwrap_or_else(|| "gone".to_string())
    }

    /// The end of its console and stderr, for an error message.
    fn tail(&self) -> String {
        let last = |p: &Path| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(5)..].join("\n    ")
        };
        format!(
            "{} console:\n    {}\n  {} stderr:\n    {}",
            self.name,
            last(&self.console),
            self.name,
            last(&self.stderr)
        )
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.qmp.execute("quit", Value::Null);
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest owner: one session per VM it launches, and the migration secret.
struct Owner {
    pdh: Vec<u8>,
    migration_secret: [u8; 32],
}

impl Owner {
    /// Makes a session for the next VM, writing the host's two files into `dir`.
    fn session(&self, dir: &Path, name: &str) -> anyhow::Result<(TransportKeys, PathBuf, PathBuf)> {
        let s = owner::session(&self.pdh, POLICY).context("owner: cannot make a session")?;
        let files = s
            .write_files(dir, name)
            .context("owner: cannot write the session")?;
        Ok((s.keys, files.godh, files.session))
    }

    /// Checks the VM's launch measurement and, only if it matches our firmware, injects
    /// the migration secret and lets the launch finish.
    fn attest_and_start(&self, vm: &mut Vmm, keys: &TransportKeys) -> anyhow::Result<()> {
        let data = vm.execute("query-sev-launch-measure", Value::Null)?;
        let data = data["data"]
            .as_str()
            .context("query-sev-launch-measure returned no data")?
            .to_string();
        let sev = vm.execute("query-sev", Value::Null)?;
        let version = FirmwareVersion {
            api_major: sev["api-major"].as_u64().unwrap_or(0) as u8,
            api_minor: sev["api-minor"].as_u64().unwrap_or(0) as u8,
            build: sev["build-id"].as_u64().unwrap_or(0) as u8,
        };
        let measurement = owner::verify(
            Measured::Firmware(firmware_image::IMAGE),
            version,
            POLICY,
            keys.tik(),
            &data,
        )
        .with_context(|| format!("owner: the {} launch measurement does not verify", vm.name))?;
        let guid = fwtable::Guid::from_bytes(helper_abi::MIGRATION_SECRET_GUID);
        let packet = owner::secret(
            keys,
            &measurement,
            &[(guid, self.migration_secret.to_vec())],
        )
        .context("owner: cannot build the secret")?;
        vm.execute(
            "sev-inject-launch-secret",
            json!({
                "packet-header": packet.header_b64(),
                "secret": packet.secret_b64(),
            }),
        )?;
        vm.execute("cont", Value::Null)?;
        Ok(())
    }
}

/// CPU seconds (user + system) process `pid` has used so far; 0 if unknown.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz <= 0 {
        return 0.0;
    }
    ticks as f64 / hz as f64
}

/// The number at `path` in a QMP reply (0 where it is missing).
pub fn json_u64(reply: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(reply, |v, key| &v[*key])
        .as_u64()
        .unwrap_or(0)
}

/// Polls `check` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A scenario's working directory and parties.
pub struct Stage {
    dir: tempfile::TempDir,
    config: Config,
    owner: Option<Owner>,
}

impl Stage {
    /// Sets up the platform (SEV) and the owner in a fresh directory.
    pub fn new(config: Config) -> anyhow::Result<Stage> {
        let dir = tempfile::Builder::new()
            .prefix("sevmirror-demo-")
            .tempdir()
            .context("cannot create a working directory")?;
        let owner = if config.sev {
            let psp = EmulatedPsp::open(&dir.path().join("platform"))
                .context("cannot set up the emulated SEV platform")?;
            let pdh = psp.export_certs().context("cannot export the PDH")?.pdh;
            let migration_secret =
                random_bytes::<32>().context("no random bytes for the migration secret")?;
            Some(Owner {
                pdh,
                migration_secret,
            })
        } else {
            None
        };
        Ok(Stage { dir, config, owner })
    }

    fn spawn(&self, name: &'static str, extra: &[String]) -> anyhow::Result<Vmm> {
        let dir = self.dir.path();
        let api = dir.join(format!("{name}.sock"));
        let console = dir.join(format!("{name}.console"));
        let stderr = dir.join(format!("{name}.stderr"));
        let exe = std::env::current_exe().context("cannot find the sevmirror executable")?;
        let mut cmd = Command::new(exe);
        cmd.arg("run")
            .arg("--mem")
            .arg(format!("{}M", self.config.mem >> 20))
            .arg("--vcpus")
            .arg(self.config.vcpus.to_string())
            .arg("--api")
            .arg(&api)
            .arg("--serial")
            .arg(&console)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(&stderr)
                    .with_context(|| format!("cannot create {}", stderr.display()))?,
            );
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start the {name} VMM"))?;
        let qmp = wait_for(START_TIMEOUT, || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(None);
            }
            QmpClient::connect(&api, Some(Duration::from_secs(60)))
                .ok()
                .map(Some)
        })
        .flatten();
        let Some(qmp) = qmp else {
            let _ = child.kill();
            let _ = child.wait();
            let err = std::fs::read_to_string(&stderr).unwrap_or_default();
            bail!("the {name} VMM did not start:\n{err}");
        };
        Ok(Vmm {
            name,
            child,
            qmp,
            console,
            stderr,
        })
    }

    /// Launches a VM: as an owner-attested SEV guest or a plain one.
    fn launch(&self, name: &'static str, mut extra: Vec<String>) -> anyhow::Result<Vmm> {
        let Some(owner) = &self.owner else {
            return self.spawn(name, &extra);
        };
        let (keys, godh, session) = owner.session(self.dir.path(), name)?;
        extra.extend([
            "--sev".to_string(),
            "--paused".to_string(),
            "--helpers".to_string(),
            self.config.helpers.to_string(),
            "--platform-dir".to_string(),
            self.dir.path().join("platform").display().to_string(),
            "--dh-cert-file".to_string(),
            godh.display().to_string(),
            "--session-file".to_string(),
            session.display().to_string(),
        ]);
        let mut vm = self.spawn(name, &extra)?;
        owner.attest_and_start(&mut vm, &keys)?;
        Ok(vm)
    }

    /// Runs the whole story; `progress` sees each `query-migrate` reply while it runs.
    pub fn run(&self, mut progress: impl FnMut(&Value)) -> anyhow::Result<Outcome> {
        let mut target = self.launch(
            "target",
            vec!["--incoming".into(), "tcp:127.0.0.1:0".into()],
        )?;
        let mut source = self.launch(
            "source",
            vec![
                "--workload".into(),
                "dirty".into(),
                "--dirty-rate".into(),
                self.config.dirty_rate.to_string(),
            ],
        )?;
        let port = target.execute("query-migrate", Value::Null)?["socket-address"][0]["port"]
            .as_str()
            .and_then(|p| p.parse::<u16>().ok())
            .context("the target does not say where it listens")?;
        // The workload is running once it reports its first pass.
        if wait_for(START_TIMEOUT, || {
            source.console().contains("dirty: ").then_some(())
        })
        .is_none()
        {
            bail!(
                "the source guest's workload did not start\n  {}",
                source.tail()
            );
        }
        std::thread::sleep(self.config.warmup);
        if let Some(ms) = self.config.downtime_limit_ms {
            source.execute("migrate-set-parameters", json!({ "downtime-limit": ms }))?;
        }
        let cpu = |s: &Vmm, t: &Vmm| cpu_seconds(s.child.id()) + cpu_seconds(t.child.id());
        let cpu_before = cpu(&source, &target);
        source.execute("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }))?;
        let migration = loop {
            let info = source.execute("query-migrate", Value::Null)?;
            progress(&info);
            match info["status"].as_str() {
                Some("completed" | "failed" | "cancelled") => break info,
                _ => std::thread::sleep(Duration::from_millis(25)),
            }
        };
        let cpu_s = cpu(&source, &target) - cpu_before;
        let status = migration["status"].as_str().unwrap_or("").to_string();
        let check = if status == "completed" {
            wait_for(VERIFY_TIMEOUT, || {
                target
                    .console()
                    .lines()
                    .find(|l| l.contains("dirty: verify"))
                    .map(str::to_string)
            })
        } else {
            None
        };
        let outcome = Outcome {
            verified: check.as_ref().map(|l| l.contains("verify PASS")),
            verify_line: check,
            source_state: source.status(),
            target_state: target.status(),
            migration,
            status,
            cpu_s,
        };
        if !outcome.passed() {
            log::warn!(
                "the migration did not check out\n  {}\n  {}",
                source.tail(),
                target.tail()
            );
        }
        Ok(outcome)
    }
}
