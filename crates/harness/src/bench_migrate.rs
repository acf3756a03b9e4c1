//! `sevmirror bench migrate`: live migration over loopback between two processes, side by
//! side from one run — this VMM's plain migration, helper migration with 1..N helper
//! vCPUs, and the QEMU migrations a user would compare it with (plain precopy by default
//! and with a prefaulted target, over TLS, multifd with 2 channels with and without TLS)
//! — next to the machine's limits (the helper's AES-256-GCM per kernel and `openssl
//! speed` on one core, loopback TCP). Figures are printed, never asserted.
//!
//! A row that cannot run (QEMU missing, a failed run) says why and the others still run.

use crate::{
    chart::Sample,
    cpu_seconds, error_chain,
    gcm_limits::{self, KernelRate, OpensslRate},
    json_u64,
    pin::PinPlan,
    qemu_tls,
    scenario::{Config, Outcome, Stage},
    wait_for, HarnessError, Result,
};
use qmp::QmpClient;
use serde::Serialize;
use serde_json::{json, Value};
use std::{
    fmt,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// What `bench migrate` measures.
#[derive(Clone, Debug)]
pub struct MigrateBench {
    /// Guest RAM of every run.
    pub mem: u64,
    /// Measure helper migration with 1 to N helper vCPUs.
    pub helpers: u16,
    /// Pages per second the guest rewrites while it migrates (1 is idle).
    pub dirty_rate: u64,
    /// Runs per configuration; the row is the median by total time.
    pub runs: u32,
    /// Pause between runs: freed memory stays fast for a while on these machines.
    pub settle: Duration,
    /// Skip QEMU even where it is installed.
    pub no_qemu: bool,
    /// Pin the source and the target processes to disjoint CPU sets.
    pub pin: Option<PinPlan>,
    /// The `sevmirror` executable that runs each VMM.
    pub exe: PathBuf,
}

/// One configuration's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// "plain", "helper-N", "helper-1-zero" (short records for private zero pages: a
    /// leak, see docs/migration.md), "es-helper-1" (an SEV-ES guest: helper measured at
    /// launch, vCPU state through guest memory), "qemu", "qemu-prealloc", "qemu-tls",
    /// "qemu-multifd2", "qemu-multifd2-tls".
    pub name: String,
    /// GiB of guest RAM per second of migration.
    pub throughput_gib_s: f64,
    /// From `migrate` to completion, as the source reports it.
    pub total_ms: u64,
    /// Time the guest did not run.
    pub downtime_ms: u64,
    /// From `migrate` to the first page (`setup-time`): connecting, the Hello and, for
    /// helper rows, the helpers' key agreement.
    pub setup_ms: u64,
    /// CPU seconds of the source and target processes during the migration.
    pub cpu_s: f64,
    /// Precopy rounds, the final stop-and-copy included.
    pub rounds: u64,
    /// Bytes on the stream.
    pub transferred_bytes: u64,
    /// Whether the migrated guest checked out ("pass"), failed ("fail"), was not checked
    /// (QEMU: its guest cannot report; "unchecked"), or the row did not run ("not run").
    pub verdict: &'static str,
    /// Why the row did not run, or what it could not check.
    pub note: Option<String>,
    /// Bytes on the stream over time, from `query-migrate` polled every 25 ms.
    pub samples: Vec<Sample>,
}

impl Row {
    /// A row that could not be measured, and why.
    fn not_run(name: &str, why: String) -> Row {
        Row {
            name: name.to_string(),
            throughput_gib_s: 0.0,
            total_ms: 0,
            downtime_ms: 0,
            setup_ms: 0,
            cpu_s: 0.0,
            rounds: 0,
            transferred_bytes: 0,
            verdict: "not run",
            note: Some(why),
            samples: Vec::new(),
        }
    }

    /// Whether it was measured (a failed migration was measured too).
    pub fn ran(&self) -> bool {
        self.verdict != "not run"
    }
}

/// The machine's limits, measured in the same run.
#[derive(Debug, Serialize)]
pub struct Limits {
    /// The helper's record code per kernel, in-process, one core, 4 KiB records.
    pub kernels: Vec<KernelRate>,
    /// `openssl speed -evp aes-256-gcm -bytes 4096` (None: see `openssl_error`).
    pub openssl: Option<OpensslRate>,
    /// Why `openssl speed` gave no figure.
    pub openssl_error: Option<String>,
    /// Loopback TCP, one connection, 1 MiB writes.
    pub tcp_gib_s: f64,
}

/// The figures of `bench migrate`.
#[derive(Debug, Serialize)]
pub struct MigrateReport {
    /// Guest RAM.
    pub mem_bytes: u64,
    /// Pages per second the guest rewrote.
    pub dirty_rate_pages_s: u64,
    /// Runs per row.
    pub runs: u32,
    /// CPUs of this machine.
    pub cpus: usize,
    /// Its CPU model (/proc/cpuinfo).
    pub cpu_model: String,
    /// The 1-, 5- and 15-minute load averages before the first run.
    pub load_before: Option<[f64; 3]>,
    /// The same after the last.
    pub load_after: Option<[f64; 3]>,
    /// Where the source and the target ran, if pinned.
    pub pin: Option<PinPlan>,
    /// One row per configuration, in the order measured.
    pub rows: Vec<Row>,
    /// The machine's limits.
    pub limits: Limits,
}

const GIB: f64 = (1u64 << 30) as f64;

/// Loopback TCP throughput: one connection, 1 MiB writes, `total` bytes.
pub fn tcp_gib_s(total: usize) -> Result<f64> {
    const CHUNK: usize = 1 << 20;
    let listener =
        TcpListener::bind("127.0.0.1:0").map_err(HarnessError::io("cannot listen on loopback"))?;
    let addr = listener
        .local_addr()
        .map_err(HarnessError::io("cannot listen on loopback"))?;
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0;
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(got),
                n => got += n,
            }
        }
    });
    let mut s = TcpStream::connect(addr).map_err(HarnessError::io("cannot connect on loopback"))?;
    let data = vec![0x5au8; CHUNK];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&data)
            .map_err(HarnessError::io("cannot write on loopback"))?;
        sent += CHUNK;
    }
    drop(s);
    let got = reader
        .join()
        .map_err(|_| HarnessError::Unexpected("the loopback reader panicked".into()))?
        .map_err(HarnessError::io("cannot read on loopback"))?;
    if got != sent {
        return Err(HarnessError::Unexpected(format!(
            "loopback lost bytes: {got} of {sent}"
        )));
    }
    Ok(sent as f64 / t0.elapsed().as_secs_f64() / GIB)
}

fn row_from(name: String, o: &Outcome, samples: Vec<Sample>) -> Row {
    Row {
        name,
        throughput_gib_s: o.throughput_gib_s(),
        total_ms: o.total_ms(),
        downtime_ms: o.downtime_ms(),
        setup_ms: json_u64(&o.migration, &["setup-time"]),
        cpu_s: o.cpu_s,
        rounds: o.rounds(),
        transferred_bytes: o.transferred(),
        verdict: if o.passed() { "pass" } else { "fail" },
        note: (!o.passed()).then(|| {
            o.migration["error-desc"]
                .as_str()
                .or(o.verify_line.as_deref())
                .unwrap_or("the target guest did not check out")
                .to_string()
        }),
        samples,
    }
}

/// The median row by total time (failed runs count as slowest).
fn median(mut rows: Vec<Row>) -> Option<Row> {
    rows.sort_by_key(|r| (r.verdict == "fail", r.total_ms));
    let mid = rows.len().checked_sub(1)? / 2;
    rows.into_iter().nth(mid)
}

/// Runs `f` `runs` times with `settle` between runs, and keeps the median; the first
/// error ends the row.
fn measure(
    runs: u32,
    settle: Duration,
    first: &mut bool,
    mut f: impl FnMut() -> Result<Row>,
) -> Result<Row> {
    let mut rows = Vec::new();
    for _ in 0..runs.max(1) {
        if !std::mem::take(first) {
            std::thread::sleep(settle);
        }
        rows.push(f()?);
    }
    median(rows).ok_or_else(|| HarnessError::Unexpected("no run".into()))
}

/// One of QEMU's migrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QemuVariant {
    /// The row's name.
    pub name: &'static str,
    /// `-mem-prealloc` on the target: its RAM prefaulted before the stream starts, as
    /// ours is.
    pub prealloc: bool,
    /// Over TLS (`tls-creds-x509`, both peers verified).
    pub tls: bool,
    /// Multifd with this many channels (None: one migration stream).
    pub multifd_channels: Option<u8>,
}

/// QEMU's rows, in the order measured: its default (what most users run), then the same
/// with the target prefaulted (as ours always is), and the encrypted and multi-channel
/// variants, all prefaulted so that only the stream differs from `qemu-prealloc`.
pub const QEMU_VARIANTS: [QemuVariant; 5] = [
    QemuVariant {
        name: "qemu",
        prealloc: false,
        tls: false,
        multifd_channels: None,
    },
    QemuVariant {
        name: "qemu-prealloc",
        prealloc: true,
        tls: false,
        multifd_channels: None,
    },
    QemuVariant {
        name: "qemu-tls",
        prealloc: true,
        tls: true,
        multifd_channels: None,
    },
    QemuVariant {
        name: "qemu-multifd2",
        prealloc: true,
        tls: false,
        multifd_channels: Some(2),
    },
    QemuVariant {
        name: "qemu-multifd2-tls",
        prealloc: true,
        tls: true,
        multifd_channels: Some(2),
    },
];

/// The id of the TLS credentials object on both QEMU command lines.
const TLS_ID: &str = "tls0";

/// How to start and set up both QEMUs of one variant.
#[derive(Clone, Debug, PartialEq)]
pub struct QemuPlan {
    /// Extra arguments of the target (which waits with `-incoming defer`).
    pub target_args: Vec<String>,
    /// Extra arguments of the source.
    pub source_args: Vec<String>,
    /// `migrate-set-capabilities` for both, if any.
    pub capabilities: Option<Value>,
    /// `migrate-set-parameters` for both (before `migrate-incoming` and `migrate`).
    pub parameters: Value,
}

impl QemuVariant {
    /// The command lines and settings for this variant; `tls_dir` holds the
    /// [`qemu_tls::FILES`] when it uses TLS.
    pub fn plan(&self, tls_dir: &Path) -> QemuPlan {
        let mut target_args = vec!["-incoming".to_string(), "defer".to_string()];
        let mut source_args = Vec::new();
        if self.prealloc {
            target_args.push("-mem-prealloc".into());
        }
        let mut parameters = serde_json::Map::new();
        // Unlimited: QEMU's default cap (32 MiB/s in 7.2) would measure the cap.
        parameters.insert("max-bandwidth".into(), json!(100u64 << 30));
        if self.tls {
            let creds = |endpoint: &str| {
                format!(
                    "tls-creds-x509,id={TLS_ID},dir={},endpoint={endpoint},verify-peer=on",
                    tls_dir.display()
                )
            };
            target_args.extend(["-object".to_string(), creds("server")]);
            source_args.extend(["-object".to_string(), creds("client")]);
            parameters.insert("tls-creds".into(), json!(TLS_ID));
        }
        let capabilities = self.multifd_channels.map(|n| {
            parameters.insert("multifd-channels".into(), json!(n));
            json!({ "capabilities": [{ "capability": "multifd", "state": true }] })
        });
        QemuPlan {
            target_args,
            source_args,
            capabilities,
            parameters: Value::Object(parameters),
        }
    }
}

/// A QEMU process with its QMP socket.
struct Qemu {
    child: Child,
    qmp: QmpClient,
}

impl Qemu {
    fn execute(&mut self, command: &str, args: Value) -> Result<Value> {
        self.qmp
            .execute(command, args)
            .map_err(|source| HarnessError::Qmp {
                vmm: "QEMU".into(),
                command: command.into(),
                source,
            })
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.qmp.execute("quit", Value::Null);
        std::thread::sleep(Duration::from_millis(200));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The TSC frequency in kHz, as our firmware needs it under QEMU (which does not pass it).
fn tsc_khz() -> u64 {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(2_000_000, |mhz| (mhz * 1000.0) as u64)
}

/// The CPU model /proc/cpuinfo names first ("unknown" if none).
pub fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_string(), |(_, m)| m.trim().to_string())
}

/// The three load averages of /proc/loadavg.
pub fn load_average(loadavg: &str) -> Option<[f64; 3]> {
    let mut f = loadavg.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([f.next()??, f.next()??, f.next()??])
}

fn load_now() -> Option<[f64; 3]> {
    load_average(&std::fs::read_to_string("/proc/loadavg").ok()?)
}

fn spawn_qemu(
    dir: &Path,
    name: &str,
    firmware: &Path,
    args: &MigrateBench,
    extra: &[String],
    cpus: Option<&str>,
) -> Result<Qemu> {
    let sock = dir.join(format!("{name}.qmp"));
    let stderr = dir.join(format!("{name}.stderr"));
    let mut cmd = crate::pin::command("qemu-system-x86_64", cpus);
    cmd.args(["-accel", "kvm", "-cpu", "host,-arch-capabilities"])
        .args(["-m", &format!("{}M", args.mem >> 20)])
        .arg("-bios")
        .arg(firmware)
        .args(["-display", "none", "-serial", "none", "-monitor", "none"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args(["-fw_cfg", "name=opt/sevmirror/workload,string=dirty"])
        .arg("-fw_cfg")
        .arg(format!(
            "name=opt/sevmirror/dirty-rate,string={}",
            args.dirty_rate
        ))
        .arg("-fw_cfg")
        .arg(format!("name=opt/sevmirror/tsc-khz,string={}", tsc_khz()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::create(&stderr).map_err(HarnessError::io(format!(
                "cannot create {}",
                stderr.display()
            )))?,
        );
    let mut child = cmd
        .spawn()
        .map_err(HarnessError::io("cannot start qemu-system-x86_64"))?;
    let qmp = wait_for(Duration::from_secs(20), || {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(None);
        }
        QmpClient::connect(&sock, Some(Duration::from_secs(60)))
            .ok()
            .map(Some)
    })
    .flatten();
    match qmp {
        Some(qmp) => Ok(Qemu { child, qmp }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            let said = std::fs::read_to_string(&stderr).unwrap_or_default();
            Err(HarnessError::Unexpected(format!(
                "QEMU ({name}) did not start: {}",
                said.trim()
            )))
        }
    }
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb << 10)
}

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(HarnessError::io("cannot find a free port"))
}

/// One QEMU migration of our firmware's dirty workload (it fills its RAM, then rewrites
/// at the given rate).
fn qemu_row(args: &MigrateBench, variant: QemuVariant) -> Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("sevmirror-bench-qemu-")
        .tempdir()
        .map_err(HarnessError::io("cannot create a working directory"))?;
    let firmware = dir.path().join("firmware.bin");
    std::fs::write(&firmware, firmware_image::IMAGE)
        .map_err(HarnessError::io("cannot write the firmware image"))?;
    let tls_dir = dir.path().join("tls");
    if variant.tls {
        std::fs::create_dir(&tls_dir)
            .map_err(HarnessError::io("cannot create the certificate directory"))?;
        qemu_tls::write_x509_dir(&tls_dir)
            .map_err(|e| HarnessError::Unexpected(error_chain(&e)))?;
    }
    let plan = variant.plan(&tls_dir);
    let pin = args.pin.as_ref();
    let mut target = spawn_qemu(
        dir.path(),
        "target",
        &firmware,
        args,
        &plan.target_args,
        pin.map(PinPlan::target_list).as_deref(),
    )?;
    let mut source = spawn_qemu(
        dir.path(),
        "source",
        &firmware,
        args,
        &plan.source_args,
        pin.map(PinPlan::source_list).as_deref(),
    )?;
    let port = free_port()?;
    for q in [&mut target, &mut source] {
        if let Some(caps) = &plan.capabilities {
            q.execute("migrate-set-capabilities", caps.clone())?;
        }
        q.execute("migrate-set-parameters", plan.parameters.clone())?;
    }
    target.execute(
        "migrate-incoming",
        json!({ "uri": format!("tcp:127.0.0.1:{port}") }),
    )?;
    // Its console is not visible under QEMU: the guest has filled its memory once the
    // process holds it all.
    let pid = source.child.id();
    if wait_for(Duration::from_secs(60), || {
        (rss(pid) >= args.mem * 95 / 100).then_some(())
    })
    .is_none()
    {
        return Err(HarnessError::Timeout(
            "the QEMU guest to fill its memory".into(),
        ));
    }
    std::thread::sleep(Duration::from_millis(500));
    let cpu = |s: &Qemu, t: &Qemu| cpu_seconds(s.child.id()) + cpu_seconds(t.child.id());
    let cpu_before = cpu(&source, &target);
    let t0 = Instant::now();
    source.execute("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }))?;
    let mut samples = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    let info = loop {
        let info = source.execute("query-migrate", Value::Null)?;
        samples.extend(Sample::from_reply(&info, t0.elapsed()));
        match info["status"].as_str() {
            Some("completed" | "failed" | "cancelled") => break info,
            _ if Instant::now() > deadline => {
                return Err(HarnessError::Timeout("QEMU's migration to end".into()))
            }
            _ => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    let cpu_s = cpu(&source, &target) - cpu_before;
    let running = target
        .execute("query-status", Value::Null)
        .ok()
        .and_then(|v| v["status"].as_str().map(str::to_string));
    let n = |path: &[&str]| json_u64(&info, path);
    let total_ms = n(&["total-time"]);
    let completed = info["status"].as_str() == Some("completed");
    Ok(Row {
        name: variant.name.to_string(),
        throughput_gib_s: if total_ms == 0 {
            0.0
        } else {
            args.mem as f64 / (total_ms as f64 / 1e3) / GIB
        },
        total_ms,
        downtime_ms: n(&["downtime"]),
        setup_ms: n(&["setup-time"]),
        cpu_s,
        rounds: n(&["ram", "dirty-sync-count"]),
        transferred_bytes: n(&["ram", "transferred"]),
        verdict: match (completed, running.as_deref()) {
            (true, Some("running")) => "unchecked",
            _ => "fail",
        },
        note: if completed {
            None
        } else {
            Some(
                info["error-desc"]
                    .as_str()
                    .unwrap_or("QEMU's migration did not complete")
                    .to_string(),
            )
        },
        samples,
    })
}

fn qemu_installed() -> bool {
    Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `bench migrate`; `say` hears each step and row.
pub fn run(args: &MigrateBench, mut say: impl FnMut(String)) -> Result<MigrateReport> {
    if args.helpers == 0 || usize::from(args.helpers) > helper_abi::MAX_HELPER_VCPUS {
        return Err(HarnessError::Usage(format!(
            "--helpers must be 1 to {}",
            helper_abi::MAX_HELPER_VCPUS
        )));
    }
    let load_before = load_now();
    if let Some(pin) = &args.pin {
        say(format!("pinned: {pin}"));
    }
    if let Some([one, ..]) = load_before {
        if one >= 0.5 {
            say(format!(
                "!!! load average {one:.2}: other work shares these CPUs; figures will be low"
            ));
        }
    }
    let mut first = true;
    let mut rows = Vec::new();
    let config = |sev: bool, helpers: u16| Config {
        mem: args.mem,
        vcpus: 1,
        helpers,
        dirty_rate: args.dirty_rate,
        sev,
        downtime_limit_ms: None,
        warmup: Duration::from_millis(500),
        exe: args.exe.clone(),
        pin: args.pin.clone(),
    };
    let ours =
        |name: String, sev: bool, helpers: u16, parameters: &[(&str, Value)]| -> Result<Row> {
            let mut samples = Vec::new();
            // The stage calls back first right after `migrate` returns: the clock starts there.
            let mut since: Option<Instant> = None;
            let mut stage = Stage::new(config(sev, helpers))?;
            for (name, value) in parameters {
                stage = stage.with_parameter(name, value.clone());
            }
            let outcome = stage.run(|info| {
                let t0 = *since.get_or_insert_with(Instant::now);
                samples.extend(Sample::from_reply(info, t0.elapsed()));
            })?;
            Ok(row_from(name, &outcome, samples))
        };
    let mut push = |row: Row, say: &mut dyn FnMut(String)| {
        say(if row.ran() {
            format!(
                "{}: {:.2} GiB/s, {} ms, downtime {} ms, {:.2} CPU s, {}",
                row.name,
                row.throughput_gib_s,
                row.total_ms,
                row.downtime_ms,
                row.cpu_s,
                row.verdict
            )
        } else {
            format!(
                "!!! {}: NOT RUN: {}",
                row.name,
                row.note.as_deref().unwrap_or("")
            )
        });
        rows.push(row);
    };
    let ours_row =
        |name: String, sev: bool, helpers: u16, parameters: &[(&str, Value)], first: &mut bool| {
            measure(args.runs, args.settle, first, || {
                ours(name.clone(), sev, helpers, parameters)
            })
            .unwrap_or_else(|e| Row::not_run(&name, error_chain(&e)))
        };
    push(
        ours_row("plain".into(), false, 1, &[], &mut first),
        &mut say,
    );
    for n in 1..=args.helpers {
        push(
            ours_row(format!("helper-{n}"), true, n, &[], &mut first),
            &mut say,
        );
    }
    // The same with the owner's leaky option: private zero pages as 48-byte records.
    push(
        ours_row(
            "helper-1-zero".into(),
            true,
            1,
            &[("zero-page-records", json!(true))],
            &mut first,
        ),
        &mut say,
    );
    // SEV-ES beside plain SEV: the same guest, its helper measured at launch.
    push(
        measure(args.runs, args.settle, &mut first, || es_helper_row(args))
            .unwrap_or_else(|e| Row::not_run("es-helper-1", error_chain(&e))),
        &mut say,
    );
    let qemu_missing = if args.no_qemu {
        Some("skipped (--no-qemu)".to_string())
    } else if !qemu_installed() {
        Some("qemu-system-x86_64 is not installed (Debian: qemu-system-x86)".to_string())
    } else {
        None
    };
    for variant in QEMU_VARIANTS {
        let row = match &qemu_missing {
            Some(why) => Row::not_run(variant.name, why.clone()),
            None => measure(args.runs, args.settle, &mut first, || {
                qemu_row(args, variant)
            })
            .unwrap_or_else(|e| Row::not_run(variant.name, error_chain(&e))),
        };
        push(row, &mut say);
    }
    say("measuring AES-256-GCM per kernel (in-process) and openssl speed".into());
    let kernels = gcm_limits::kernel_rates(Duration::from_millis(1500));
    let (openssl, openssl_error) = match gcm_limits::openssl_rate(3) {
        Ok(r) => (Some(r), None),
        Err(e) => {
            let why = error_chain(&e);
            say(format!("!!! openssl speed: NOT RUN: {why}"));
            (None, Some(why))
        }
    };
    let limits = Limits {
        kernels,
        openssl,
        openssl_error,
        tcp_gib_s: tcp_gib_s(4 << 30)?,
    };
    Ok(MigrateReport {
        mem_bytes: args.mem,
        dirty_rate_pages_s: args.dirty_rate,
        runs: args.runs,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: cpu_model(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default()),
        load_before,
        load_after: load_now(),
        pin: args.pin.clone(),
        rows,
        limits,
    })
}

/// One of issue 14's targets, against this report's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Target {
    /// The target.
    pub what: String,
    /// The figures it was judged on.
    pub measured: String,
    /// Met, missed, or None where a row it needs did not run.
    pub met: Option<bool>,
}

impl MigrateReport {
    fn row(&self, name: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.name == name && r.ran())
    }

    /// A one-line title: what ran, where.
    pub fn title(&self) -> String {
        format!(
            "bench migrate: {} MiB guest, dirty {} pages/s, median of {}, {} × {}{}",
            self.mem_bytes >> 20,
            self.dirty_rate_pages_s,
            self.runs,
            self.cpus,
            self.cpu_model,
            self.pin
                .as_ref()
                .map_or_else(String::new, |p| format!(", pinned: {p}"))
        )
    }

    /// Issue 14's targets, each met or missed with its figure.
    pub fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        let best = gcm_limits::best(&self.limits.kernels);
        let ratio_target = |what: String,
                            num: Option<(String, f64)>,
                            den: Option<(String, f64)>,
                            at_least: f64| {
            match (num, den) {
                (Some((a, x)), Some((b, y))) if y > 0.0 => Target {
                    what,
                    measured: format!("{a} {x:.2} / {b} {y:.2} = {:.2}×", x / y),
                    met: Some(x / y >= at_least),
                },
                _ => Target {
                    what,
                    measured: "not measured".into(),
                    met: None,
                },
            }
        };
        out.push(ratio_target(
            "the helper's GCM ≥ 0.9× openssl speed (seal, 4 KiB, one core)".into(),
            best.and_then(|k| Some((format!("{} GiB/s", k.kernel), k.seal_gib_s?))),
            self.limits
                .openssl
                .map(|o| ("openssl GiB/s".to_string(), o.seal_gib_s)),
            0.9,
        ));
        let tput = |name: &str| {
            self.row(name)
                .map(|r| (name.to_string(), r.throughput_gib_s))
        };
        for (other, at_least) in [("plain", 0.5), ("qemu", 2.0), ("qemu-tls", 1.5)] {
            out.push(ratio_target(
                format!("helper-1 ≥ {at_least}× {other}"),
                tput("helper-1"),
                tput(other),
                at_least,
            ));
        }
        let helper1 = self.row("helper-1");
        if self.dirty_rate_pages_s <= 1 {
            out.push(Target {
                what: "idle downtime < 50 ms (helper-1)".into(),
                measured: helper1
                    .map_or("not measured".into(), |r| format!("{} ms", r.downtime_ms)),
                met: helper1.map(|r| r.downtime_ms < 50),
            });
        } else {
            out.push(Target {
                what: format!(
                    "converges with the guest dirtying {} pages/s (helper-1)",
                    self.dirty_rate_pages_s
                ),
                measured: helper1.map_or("not measured".into(), |r| {
                    format!(
                        "{}, {} rounds, downtime {} ms",
                        r.verdict, r.rounds, r.downtime_ms
                    )
                }),
                met: helper1.map(|r| r.verdict == "pass"),
            });
        }
        out
    }

    /// The report as markdown: the table, the limits and the targets.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("{}\n\n", self.title()));
        s.push_str("| row | GiB/s | total ms | downtime ms | setup ms | CPU s (both sides) | rounds | GiB sent | guest check |\n");
        s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &self.rows {
            if r.ran() {
                s.push_str(&format!(
                    "| {} | {:.2} | {} | {} | {} | {:.2} | {} | {:.2} | {} |\n",
                    r.name,
                    r.throughput_gib_s,
                    r.total_ms,
                    r.downtime_ms,
                    r.setup_ms,
                    r.cpu_s,
                    r.rounds,
                    r.transferred_bytes as f64 / GIB,
                    r.verdict
                ));
            } else {
                s.push_str(&format!(
                    "| {} | | | | | | | | **not run**: {} |\n",
                    r.name,
                    r.note.as_deref().unwrap_or("")
                ));
            }
        }
        s.push('\n');
        s.push_str(
            "AES-256-GCM on one core, 4 KiB records: the helper's record code per kernel, in-process\n\n",
        );
        s.push_str("| kernel | seal GiB/s | open GiB/s |\n|---|---:|---:|\n");
        for k in &self.limits.kernels {
            let name = if k.best {
                format!("{} (the helper's choice)", k.kernel)
            } else {
                k.kernel.to_string()
            };
            match (k.seal_gib_s, k.open_gib_s) {
                (Some(a), Some(b)) => s.push_str(&format!("| {name} | {a:.2} | {b:.2} |\n")),
                _ => s.push_str(&format!(
                    "| {name} | not run: {} | |\n",
                    k.not_run.as_deref().unwrap_or("")
                )),
            }
        }
        match (&self.limits.openssl, &self.limits.openssl_error) {
            (Some(o), _) => s.push_str(&format!(
                "| `openssl speed -evp aes-256-gcm -bytes 4096` | {:.2} | {:.2} (`-decrypt`) |\n",
                o.seal_gib_s, o.open_gib_s
            )),
            (None, why) => s.push_str(&format!(
                "| `openssl speed` | **not run**: {} | |\n",
                why.as_deref().unwrap_or("")
            )),
        }
        s.push_str(&format!(
            "\nLoopback TCP, one connection, 1 MiB writes: {:.2} GiB/s. Load average before/after: {} / {}.\n\n",
            self.limits.tcp_gib_s,
            load_text(self.load_before),
            load_text(self.load_after)
        ));
        s.push_str("| target (issue 14) | measured | |\n|---|---|---|\n");
        for t in self.targets() {
            s.push_str(&format!(
                "| {} | {} | {} |\n",
                t.what,
                t.measured,
                match t.met {
                    Some(true) => "met",
                    Some(false) => "**missed**",
                    None => "not measured",
                }
            ));
        }
        s
    }

    #[cfg(test)]
    pub(crate) fn example() -> MigrateReport {
        MigrateReport {
            mem_bytes: 1 << 30,
            dirty_rate_pages_s: 1,
            runs: 3,
            cpus: 2,
            cpu_model: "AMD EPYC".into(),
            load_before: Some([0.1, 0.2, 0.3]),
            load_after: None,
            pin: None,
            rows: Vec::new(),
            limits: Limits {
                kernels: Vec::new(),
                openssl: None,
                openssl_error: Some("cannot run openssl".into()),
                tcp_gib_s: 5.0,
            },
        }
    }
}

fn load_text(load: Option<[f64; 3]>) -> String {
    load.map_or_else(
        || "unknown".to_string(),
        |[a, b, c]| format!("{a:.2} {b:.2} {c:.2}"),
    )
}

impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "live migration over loopback, {} MiB guest, dirty workload at {} pages/s, {} × {}, median of {} run(s){}",
            self.mem_bytes >> 20,
            self.dirty_rate_pages_s,
            self.cpus,
            self.cpu_model,
            self.runs,
            self.pin
                .as_ref()
                .map_or_else(String::new, |p| format!(", {p}"))
        )?;
        writeln!(
            f,
            "load average before: {}, after: {}",
            load_text(self.load_before),
            load_text(self.load_after)
        )?;
        writeln!(
            f,
            "{:<18} {:>7} {:>9} {:>9} {:>6} {:>7} {:>7} {:>9} {:>10}",
            "", "GiB/s", "total ms", "downtime", "setup", "CPU s", "rounds", "GiB sent", "verdict"
        )?;
        for r in &self.rows {
            if r.ran() {
                writeln!(
                    f,
                    "{:<18} {:>7.2} {:>9} {:>9} {:>6} {:>7.2} {:>7} {:>9.2} {:>10}",
                    r.name,
                    r.throughput_gib_s,
                    r.total_ms,
                    r.downtime_ms,
                    r.setup_ms,
                    r.cpu_s,
                    r.rounds,
                    r.transferred_bytes as f64 / GIB,
                    r.verdict
                )?;
            } else {
                writeln!(
                    f,
                    "{:<18} !!! NOT RUN: {}",
                    r.name,
                    r.note.as_deref().unwrap_or("")
                )?;
            }
        }
        writeln!(
            f,
            "AES-256-GCM, one core, 4 KiB records, the helper's record code in-process (GiB/s):"
        )?;
        for k in &self.limits.kernels {
            match (k.seal_gib_s, k.open_gib_s) {
                (Some(a), Some(b)) => writeln!(
                    f,
                    "  {:<10} seal {a:>6.2}  open {b:>6.2}{}",
                    k.kernel,
                    if k.best {
                        "  (the helper's choice)"
                    } else {
                        ""
                    }
                )?,
                _ => writeln!(
                    f,
                    "  {:<10} not run: {}",
                    k.kernel,
                    k.not_run.as_deref().unwrap_or("")
                )?,
            }
        }
        match (&self.limits.openssl, &self.limits.openssl_error) {
            (Some(o), _) => writeln!(
                f,
                "  {:<10} seal {:>6.2}  open {:>6.2}  (openssl speed -evp aes-256-gcm -bytes 4096)",
                "openssl", o.seal_gib_s, o.open_gib_s
            )?,
            (None, why) => writeln!(
                f,
                "  openssl    !!! NOT RUN: {}",
                why.as_deref().unwrap_or("")
            )?,
        }
        writeln!(
            f,
            "loopback TCP, one connection, 1 MiB writes: {:.2} GiB/s",
            self.limits.tcp_gib_s
        )?;
        write!(f, "targets (issue 14):")?;
        for t in self.targets() {
            write!(
                f,
                "\n  {:<12} {}: {}",
                match t.met {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "not measured",
                },
                t.what,
                t.measured
            )?;
        }
        Ok(())
    }
}

/// The "es-helper-1" row: `helper-1`'s guest under SEV-ES (policy bit ES, one helper vCPU
/// measured at launch, each vCPU's registers saved into guest memory at the stop and
/// restored on the target).
fn es_helper_row(args: &MigrateBench) -> Result<Row> {
    let mut samples = Vec::new();
    let mut since: Option<Instant> = None;
    let stage = Stage::new(Config {
        mem: args.mem,
        vcpus: 1,
        helpers: 1,
        dirty_rate: args.dirty_rate,
        sev: true,
        downtime_limit_ms: None,
        warmup: Duration::from_millis(500),
        exe: args.exe.clone(),
        pin: args.pin.clone(),
    })?
    .with_sev_es();
    let outcome = stage.run(|info| {
        let t0 = *since.get_or_insert_with(Instant::now);
        samples.extend(Sample::from_reply(info, t0.elapsed()));
    })?;
    Ok(row_from("es-helper-1".into(), &outcome, samples))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, total_ms: u64, verdict: &'static str) -> Row {
        Row {
            name: name.into(),
            throughput_gib_s: 0.0,
            total_ms,
            downtime_ms: 0,
            setup_ms: 0,
            cpu_s: 0.0,
            rounds: 0,
            transferred_bytes: 0,
            verdict,
            note: None,
            samples: Vec::new(),
        }
    }

    #[test]
    fn the_median_run_is_kept_and_failures_count_as_slowest() {
        let m = median(vec![
            row("a", 300, "pass"),
            row("b", 100, "fail"),
            row("c", 200, "pass"),
        ])
        .unwrap();
        assert_eq!(m.total_ms, 300);
        assert!(median(Vec::new()).is_none());
    }

    #[test]
    fn loopback_moves_every_byte() {
        assert!(tcp_gib_s(8 << 20).unwrap() > 0.0);
    }

    #[test]
    fn qemu_variants_set_up_tls_and_multifd_on_both_peers() {
        let dir = Path::new("/tmp/certs");
        let by_name = |n: &str| {
            QEMU_VARIANTS
                .iter()
                .find(|v| v.name == n)
                .unwrap()
                .plan(dir)
        };
        let default = by_name("qemu");
        assert_eq!(default.target_args, ["-incoming", "defer"]);
        assert!(default.source_args.is_empty() && default.capabilities.is_none());
        assert_eq!(default.parameters, json!({ "max-bandwidth": 100u64 << 30 }));
        // Every other row prefaults the target, as ours does, so only the stream differs.
        for v in &QEMU_VARIANTS[1..] {
            assert!(
                v.plan(dir)
                    .target_args
                    .contains(&"-mem-prealloc".to_string()),
                "{}",
                v.name
            );
        }
        let tls = by_name("qemu-multifd2-tls");
        assert_eq!(
            tls.target_args,
            [
                "-incoming",
                "defer",
                "-mem-prealloc",
                "-object",
                "tls-creds-x509,id=tls0,dir=/tmp/certs,endpoint=server,verify-peer=on"
            ]
        );
        assert_eq!(
            tls.source_args,
            [
                "-object",
                "tls-creds-x509,id=tls0,dir=/tmp/certs,endpoint=client,verify-peer=on"
            ]
        );
        assert_eq!(tls.parameters["tls-creds"], "tls0");
        assert_eq!(tls.parameters["multifd-channels"], 2);
        assert_eq!(
            tls.capabilities.unwrap()["capabilities"][0],
            json!({ "capability": "multifd", "state": true })
        );
        let plain_mfd = by_name("qemu-multifd2");
        assert!(plain_mfd.parameters.get("tls-creds").is_none());
        assert!(!plain_mfd.source_args.iter().any(|a| a.contains("tls")));
    }

    #[test]
    fn cpu_model_and_load_are_read_from_proc() {
        let info = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nmodel name\t: other\n";
        assert_eq!(cpu_model(info), "AMD EPYC 9R14");
        assert_eq!(cpu_model(""), "unknown");
        assert_eq!(
            load_average("0.31 2.05 1.50 3/412 9999\n"),
            Some([0.31, 2.05, 1.5])
        );
        assert_eq!(load_average("0.31 x"), None);
    }

    fn measured(name: &str, gib_s: f64, downtime_ms: u64) -> Row {
        Row {
            throughput_gib_s: gib_s,
            downtime_ms,
            ..row(name, 1000, "pass")
        }
    }

    #[test]
    fn targets_are_judged_on_the_rows_and_limits_of_the_run() {
        let mut r = MigrateReport::example();
        r.rows = vec![
            measured("plain", 3.0, 8),
            measured("helper-1", 1.2, 30),
            measured("qemu", 0.5, 200),
            Row::not_run("qemu-tls", "openssl missing".into()),
        ];
        r.limits.kernels = vec![KernelRate {
            kernel: "vaes512",
            best: true,
            seal_gib_s: Some(6.0),
            open_gib_s: Some(6.5),
            not_run: None,
        }];
        let t = r.targets();
        let met: Vec<Option<bool>> = t.iter().map(|t| t.met).collect();
        // GCM (openssl not run), plain 0.4× (missed), QEMU 2.4× (met), TLS (not run),
        // idle downtime 30 ms (met).
        assert_eq!(met, [None, Some(false), Some(true), None, Some(true)]);
        assert_eq!(t[2].measured, "helper-1 1.20 / qemu 0.50 = 2.40×");
        r.limits.openssl = Some(OpensslRate {
            seal_gib_s: 2.5,
            open_gib_s: 2.4,
        });
        assert_eq!(r.targets()[0].met, Some(true));
        // With the guest dirtying, the last target is convergence.
        r.dirty_rate_pages_s = 10_000;
        let last = r.targets().pop().unwrap();
        assert!(last.what.contains("10000 pages/s"));
        assert_eq!(last.met, Some(true));
        let md = r.markdown();
        assert!(md.contains("| qemu-tls | | | | | | | | **not run**: openssl missing |"));
        assert!(md.contains("| vaes512 (the helper's choice) | 6.00 | 6.50 |"));
        assert!(r
            .to_string()
            .contains("qemu-tls           !!! NOT RUN: openssl missing"));
    }
}
