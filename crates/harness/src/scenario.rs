//! One live migration between two `sevmirror run` processes on this machine, staged the
//! way a cloud would: an SEV platform, a guest owner who attests both VMs and gives each
//! the same migration secret, a source running the dirty workload, a target waiting with
//! `--incoming`, and the migration over loopback. `demo` and `bench migrate` use it.
//!
//! The owner's side runs in this process (it holds the TEK/TIK and the secret); the
//! VMMs are child processes that only ever receive what a host receives.

use crate::{
    cpu_seconds, json_u64,
    owner::{EsLaunch, Owner},
    pin::PinPlan,
    process::{Channel, OnDrop, Spawn, VmmProcess},
    HarnessError, Result,
};
use serde_json::{json, Value};
use sev_platform::{emulated::EmulatedPsp, SevBackend};
use std::{fmt, path::PathBuf, time::Duration};

/// How long a child may take to create its control socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the target guest may take to report its memory check.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a migration may take (a guard against hangs, not a figure).
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(600);

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
    /// The `sevmirror` executable that runs each VMM.
    pub exe: PathBuf,
    /// CPUs of the source and of the target process (None: anywhere).
    pub pin: Option<PinPlan>,
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
    /// SEV-ES: the target guest's line for each vCPU that restored its saved state, in
    /// vCPU order (None for other guests).
    pub es_resumed: Option<Vec<Option<String>>>,
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
            && self
                .es_resumed
                .as_ref()
                .is_none_or(|lines| lines.iter().all(Option::is_some))
    }
}

/// A scenario's working directory and parties.
pub struct Stage {
    dir: tempfile::TempDir,
    config: Config,
    owner: Option<Owner>,
    /// Both VMs are SEV-ES guests.
    es: bool,
    /// More `migrate-set-parameters` members for the source.
    parameters: serde_json::Map<String, Value>,
}

impl Stage {
    /// Sets up the platform (SEV) and the owner in a fresh directory.
    pub fn new(config: Config) -> Result<Stage> {
        let dir = tempfile::Builder::new()
            .prefix("sevmirror-demo-")
            .tempdir()
            .map_err(HarnessError::io("cannot create a working directory"))?;
        let owner = if config.sev {
            let psp = EmulatedPsp::open(&dir.path().join("platform"))?;
            Some(Owner::new(psp.export_certs()?.pdh)?)
        } else {
            None
        };
        Ok(Stage {
            dir,
            config,
            owner,
            es: false,
            parameters: serde_json::Map::new(),
        })
    }

    /// Makes both VMs SEV-ES guests (policy bit ES, `--helpers` measured at launch): the
    /// owner expects each launch digest to cover the guest's and the helpers' VMSAs, and
    /// the vCPUs' state moves through guest memory. (SEV only; a plain stage ignores it.)
    pub fn with_sev_es(mut self) -> Stage {
        let launch = EsLaunch {
            vcpus: self.config.vcpus,
            helpers: self.config.helpers,
        };
        self.set_sev_es(Some(launch));
        self
    }

    /// Launches the next VMs as SEV-ES guests of `launch`'s vCPUs and helper vCPUs, or
    /// (None) as plain SEV guests with the configured helpers (SEV stages only): a test
    /// stages targets that do not fit the source this way.
    pub fn set_sev_es(&mut self, launch: Option<EsLaunch>) {
        let Some(owner) = self.owner.as_mut() else {
            return;
        };
        owner.expect_sev(launch);
        if let Some(l) = launch {
            self.config.vcpus = l.vcpus;
            self.config.helpers = l.helpers;
        }
        self.es = launch.is_some();
    }

    /// Sets `migrate-set-parameters` member `name` on the source before it migrates
    /// (e.g. `zero-page-records`).
    pub fn with_parameter(mut self, name: &str, value: Value) -> Stage {
        self.parameters.insert(name.to_string(), value);
        self
    }

    fn spawn(&self, name: &str, extra: &[String], cpus: Option<&str>) -> Result<VmmProcess> {
        let spawn = Spawn {
            exe: self.config.exe.clone(),
            dir: self.dir.path().to_path_buf(),
            env: Vec::new(),
            channel: Channel::Qmp,
            on_drop: OnDrop::Quit,
        };
        let mut args = vec![
            "--mem".to_string(),
            format!("{}M", self.config.mem >> 20),
            "--vcpus".to_string(),
            self.config.vcpus.to_string(),
        ];
        args.extend_from_slice(extra);
        VmmProcess::spawn_on(&spawn, name, &args, START_TIMEOUT, cpus)
    }

    /// The working directory (sockets, consoles, the platform, recovery files).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The guest owner (SEV).
    pub fn owner(&self) -> Option<&Owner> {
        self.owner.as_ref()
    }

    /// The guest owner (SEV), to change what it expects.
    pub fn owner_mut(&mut self) -> Option<&mut Owner> {
        self.owner.as_mut()
    }

    /// Launches a VM: as an owner-attested SEV guest or a plain one; `extra` are more
    /// `run` options (a workload, `--incoming`); `cpus` pins the process (taskset list).
    pub fn launch(
        &self,
        name: &str,
        mut extra: Vec<String>,
        cpus: Option<&str>,
    ) -> Result<VmmProcess> {
        let Some(owner) = &self.owner else {
            return self.spawn(name, &extra, cpus);
        };
        let session = owner.session(self.dir.path(), name)?;
        extra.extend(owner.run_args(&session));
        extra.extend([
            "--helpers".to_string(),
            self.config.helpers.to_string(),
            "--platform-dir".to_string(),
            self.dir.path().join("platform").display().to_string(),
        ]);
        let mut vm = self.spawn(name, &extra, cpus)?;
        owner.attest_and_start(&mut vm, &session.keys)?;
        Ok(vm)
    }

    /// An attested target waiting for a migration on a kernel-chosen loopback port; the
    /// port.
    pub fn launch_incoming(&self, name: &str, cpus: Option<&str>) -> Result<(VmmProcess, u16)> {
        let mut vm = self.launch(
            name,
            vec!["--incoming".into(), "tcp:127.0.0.1:0".into()],
            cpus,
        )?;
        let port = vm.port()?;
        Ok((vm, port))
    }

    /// An attested guest running the `dirty` workload, rewriting `rate` pages/s.
    pub fn launch_dirty(&self, name: &str, rate: u64, cpus: Option<&str>) -> Result<VmmProcess> {
        self.launch(
            name,
            vec![
                "--workload".into(),
                "dirty".into(),
                "--dirty-rate".into(),
                rate.to_string(),
            ],
            cpus,
        )
    }

    /// Runs the whole story; `progress` sees each `query-migrate` reply while it runs.
    pub fn run(&self, progress: impl FnMut(&Value)) -> Result<Outcome> {
        let pin = self.config.pin.as_ref();
        let (mut target, port) =
            self.launch_incoming("target", pin.map(PinPlan::target_list).as_deref())?;
        let mut source = self.launch_dirty(
            "source",
            self.config.dirty_rate,
            pin.map(PinPlan::source_list).as_deref(),
        )?;
        // The workload is running once it reports its first pass.
        source.wait_console("dirty: ", START_TIMEOUT).map_err(|_| {
            HarnessError::Unexpected(format!(
                "the source guest's workload did not start\n  {}",
                source.tail()
            ))
        })?;
        std::thread::sleep(self.config.warmup);
        let mut parameters = self.parameters.clone();
        if let Some(ms) = self.config.downtime_limit_ms {
            parameters.insert("downtime-limit".into(), json!(ms));
        }
        if !parameters.is_empty() {
            source.execute("migrate-set-parameters", Some(Value::Object(parameters)))?;
        }
        let cpu = |s: &VmmProcess, t: &VmmProcess| cpu_seconds(s.pid()) + cpu_seconds(t.pid());
        let cpu_before = cpu(&source, &target);
        source.migrate(port)?;
        let migration = source.wait_migration_end(MIGRATION_TIMEOUT, progress)?;
        let cpu_s = cpu(&source, &target) - cpu_before;
        let status = migration["status"].as_str().unwrap_or("").to_string();
        let check = if status == "completed" {
            target.wait_console_line("dirty: verify", VERIFY_TIMEOUT)
        } else {
            None
        };
        // SEV-ES: every vCPU restores its own saved state on the target (the boot CPU
        // first, then each AP it starts).
        let es_resumed = self.es.then(|| {
            (0..self.config.vcpus)
                .map(|i| {
                    let what = format!("vCPU {i}: resumed from its saved state");
                    match status.as_str() {
                        "completed" => target.wait_console_line(&what, VERIFY_TIMEOUT),
                        _ => None,
                    }
                })
                .collect()
        });
        let outcome = Outcome {
            verified: check.as_ref().map(|l| l.contains("verify PASS")),
            verify_line: check,
            source_state: source.status(),
            target_state: target.status(),
            migration,
            status,
            cpu_s,
            es_resumed,
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

/// The demo's report: an outcome with the settings it ran with.
pub struct Report<'a> {
    /// What happened.
    pub outcome: &'a Outcome,
    /// Helper vCPUs on each side.
    pub helpers: u16,
    /// Pages per second the guest rewrote.
    pub dirty_rate: u64,
}

impl Report<'_> {
    /// The report's numbers as one JSON object.
    pub fn json(&self) -> Value {
        let o = self.outcome;
        json!({
            "verdict": if o.passed() { "pass" } else { "fail" },
            "status": o.status,
            "mem_bytes": o.mem_bytes(),
            "helpers": self.helpers,
            "dirty_rate_pages_s": self.dirty_rate,
            "rounds": o.rounds(),
            "total_ms": o.total_ms(),
            "downtime_ms": o.downtime_ms(),
            "transferred_bytes": o.transferred(),
            "throughput_gib_s": (o.throughput_gib_s() * 1000.0).round() / 1000.0,
            "target_verify": o.verify_line,
            "source_state": o.source_state,
            "target_state": o.target_state,
            "es_resumed": o.es_resumed,
            "error": o.migration.get("error-desc"),
        })
    }
}

impl fmt::Display for Report<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.outcome;
        writeln!(f, "migration {}:", o.status)?;
        writeln!(
            f,
            "  guest RAM        {} MiB, sent in {} round(s), {:.1} MiB on the wire",
            o.mem_bytes() >> 20,
            o.rounds(),
            o.transferred() as f64 / (1 << 20) as f64
        )?;
        writeln!(
            f,
            "  total time       {} ms ({:.2} GiB/s of guest RAM)",
            o.total_ms(),
            o.throughput_gib_s()
        )?;
        writeln!(f, "  downtime         {} ms", o.downtime_ms())?;
        writeln!(
            f,
            "  source / target  {} / {}",
            o.source_state, o.target_state
        )?;
        match &o.verify_line {
            Some(line) => writeln!(f, "  target guest     {}", line.trim())?,
            None => writeln!(f, "  target guest     did not report a memory check")?,
        }
        for (i, line) in o.es_resumed.iter().flatten().enumerate() {
            match line {
                Some(l) => writeln!(f, "  target vCPU {i}    {}", l.trim())?,
                None => writeln!(f, "  target vCPU {i}    did not report restoring its state")?,
            }
        }
        if let Some(e) = o.migration.get("error-desc").and_then(|e| e.as_str()) {
            writeln!(f, "  error            {e}")?;
        }
        write!(f, "verdict: {}", if o.passed() { "PASS" } else { "FAIL" })
    }
}
