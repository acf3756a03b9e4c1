//! `sevmirror bench migrate`: live migration over loopback between two processes, side by
//! side from one run — this VMM's plain migration, helper migration with 1..N helper
//! vCPUs, QEMU's plain precopy where it is installed — next to the machine's limits
//! (AES-256-GCM on one core, loopback TCP). Figures are printed, never asserted.

use crate::{
    cpu_seconds, json_u64,
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
    /// The `sevmirror` executable that runs each VMM.
    pub exe: PathBuf,
}

/// One configuration's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// "plain", "helper-N", "helper-1-zero" (short records for private zero
    /// pages: a leak, see docs/migration.md), "qemu", "qemu-prealloc".
    pub name: String,
    /// GiB of guest RAM per second of migration.
    pub throughput_gib_s: f64,
    /// From `migrate` to completion, as the source reports it.
    pub total_ms: u64,
    /// Time the guest did not run.
    pub downtime_ms: u64,
    /// CPU seconds of the source and target processes during the migration.
    pub cpu_s: f64,
    /// Precopy rounds, the final stop-and-copy included.
    pub rounds: u64,
    /// Bytes on the stream.
    pub transferred_bytes: u64,
    /// Whether the migrated guest checked out ("pass"), failed ("fail"), or was not
    /// checked (QEMU: its guest cannot report).
    pub verdict: &'static str,
}

/// The machine's limits, measured in the same run.
#[derive(Debug, Serialize)]
pub struct Limits {
    /// AES-256-GCM sealing 4 KiB pages on one core, with the helper's own code.
    pub aes_gcm_gib_s: f64,
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
    /// One row per configuration.
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

fn row_from(name: String, o: &Outcome) -> Row {
    Row {
        name,
        throughput_gib_s: o.throughput_gib_s(),
        total_ms: o.total_ms(),
        downtime_ms: o.downtime_ms(),
        cpu_s: o.cpu_s,
        rounds: o.rounds(),
        transferred_bytes: o.transferred(),
        verdict: if o.passed() { "pass" } else { "fail" },
    }
}

/// The median row by total time (failed runs count as slowest).
fn median(mut rows: Vec<Row>) -> Option<Row> {
    rows.sort_by_key(|r| (r.verdict == "fail", r.total_ms));
    let mid = rows.len().checked_sub(1)? / 2;
    rows.into_iter().nth(mid)
}

/// Runs `f` `runs` times with `settle` between runs, and keeps the median.
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

/// A QEMU process with its QMP socket.
struct Qemu {
    child: Child,
    qmp: QmpClient,
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

fn spawn_qemu(
    dir: &Path,
    name: &str,
    firmware: &Path,
    mem: u64,
    dirty_rate: u64,
    extra: &[String],
) -> Result<Qemu> {
    let sock = dir.join(format!("{name}.qmp"));
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "kvm", "-cpu", "host,-arch-capabilities"])
        .args(["-m", &format!("{}M", mem >> 20)])
        .arg("-bios")
        .arg(firmware)
        .args(["-display", "none", "-serial", "none", "-monitor", "none"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .args(["-fw_cfg", "name=opt/sevmirror/workload,string=dirty"])
        .arg("-fw_cfg")
        .arg(format!("name=opt/sevmirror/dirty-rate,string={dirty_rate}"))
        .arg("-fw_cfg")
        .arg(format!("name=opt/sevmirror/tsc-khz,string={}", tsc_khz()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
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
            Err(HarnessError::Unexpected(format!(
                "QEMU ({name}) did not start"
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

/// QEMU's own plain precopy of our firmware's dirty workload (it fills its RAM, then
/// rewrites at the given rate), max-bandwidth unlimited; `prealloc` prefaults the
/// target's RAM (-mem-prealloc).
fn qemu_row(args: &MigrateBench, prealloc: bool) -> Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("sevmirror-bench-qemu-")
        .tempdir()
        .map_err(HarnessError::io("cannot create a working directory"))?;
    let firmware = dir.path().join("firmware.bin");
    std::fs::write(&firmware, firmware_image::IMAGE)
        .map_err(HarnessError::io("cannot write the firmware image"))?;
    let port = free_port()?;
    let mut incoming = vec!["-incoming".to_string(), format!("tcp:127.0.0.1:{port}")];
    if prealloc {
        incoming.push("-mem-prealloc".into());
    }
    let mut target = spawn_qemu(
        dir.path(),
        "target",
        &firmware,
        args.mem,
        args.dirty_rate,
        &incoming,
    )?;
    let mut source = spawn_qemu(
        dir.path(),
        "source",
        &firmware,
        args.mem,
        args.dirty_rate,
        &[],
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
    let qmp = |what: &str| {
        let command = what.to_string();
        move |source| HarnessError::Qmp {
            vmm: "QEMU".into(),
            command,
            source,
        }
    };
    source
        .qmp
        .execute(
            "migrate-set-parameters",
            json!({ "max-bandwidth": 100u64 << 30 }),
        )
        .map_err(qmp("migrate-set-parameters"))?;
    let cpu = |s: &Qemu, t: &Qemu| cpu_seconds(s.child.id()) + cpu_seconds(t.child.id());
    let cpu_before = cpu(&source, &target);
    source
        .qmp
        .execute("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }))
        .map_err(qmp("migrate"))?;
    let info = loop {
        let info = source
            .qmp
            .execute("query-migrate", Value::Null)
            .map_err(qmp("query-migrate"))?;
        match info["status"].as_str() {
            Some("completed" | "failed" | "cancelled") => break info,
            _ => std::thread::sleep(Duration::from_millis(25)),
        }
    };
    let cpu_s = cpu(&source, &target) - cpu_before;
    let running = target
        .qmp
        .execute("query-status", Value::Null)
        .ok()
        .and_then(|v| v["status"].as_str().map(str::to_string));
    let n = |path: &[&str]| json_u64(&info, path);
    let total_ms = n(&["total-time"]);
    Ok(Row {
        name: if prealloc { "qemu-prealloc" } else { "qemu" }.to_string(),
        throughput_gib_s: if total_ms == 0 {
            0.0
        } else {
            args.mem as f64 / (total_ms as f64 / 1e3) / GIB
        },
        total_ms,
        downtime_ms: n(&["downtime"]),
        cpu_s,
        rounds: n(&["ram", "dirty-sync-count"]),
        transferred_bytes: n(&["ram", "transferred"]),
        verdict: match (info["status"].as_str(), running.as_deref()) {
            (Some("completed"), Some("running")) => "unchecked",
            _ => "fail",
        },
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
    };
    let ours = |name: String, sev: bool, helpers: u16| -> Result<Row> {
        let outcome = Stage::new(config(sev, helpers))?.run(|_| {})?;
        Ok(row_from(name, &outcome))
    };
    let mut push = |row: Row, say: &mut dyn FnMut(String)| {
        say(format!(
            "{}: {:.2} GiB/s, {} ms, downtime {} ms, {:.2} CPU s, {}",
            row.name, row.throughput_gib_s, row.total_ms, row.downtime_ms, row.cpu_s, row.verdict
        ));
        rows.push(row);
    };
    push(
        measure(args.runs, args.settle, &mut first, || {
            ours("plain".into(), false, 1)
        })?,
        &mut say,
    );
    for n in 1..=args.helpers {
        push(
            measure(args.runs, args.settle, &mut first, || {
                ours(format!("helper-{n}"), true, n)
            })?,
            &mut say,
        );
    }
    // The same with the owner's leaky option: private zero pages as 48-byte records.
    push(
        measure(args.runs, args.settle, &mut first, || {
            let outcome = Stage::new(config(true, 1))?
                .with_parameter("zero-page-records", json!(true))
                .run(|_| {})?;
            Ok(row_from("helper-1-zero".into(), &outcome))
        })?,
        &mut say,
    );
    if !args.no_qemu && qemu_installed() {
        for prealloc in [false, true] {
            match measure(args.runs, args.settle, &mut first, || {
                qemu_row(args, prealloc)
            }) {
                Ok(row) => push(row, &mut say),
                Err(e) => say(format!("QEMU run skipped: {}", chain(&e))),
            }
        }
    } else if !args.no_qemu {
        say("qemu-system-x86_64 is not installed (Debian: qemu-system-x86): no QEMU row".into());
    }
    let limits = Limits {
        aes_gcm_gib_s: crate::bench_helper::aes_gcm_mib_s(Duration::from_secs(1)) / 1024.0,
        tcp_gib_s: tcp_gib_s(4 << 30)?,
    };
    Ok(MigrateReport {
        mem_bytes: args.mem,
        dirty_rate_pages_s: args.dirty_rate,
        runs: args.runs,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rows,
        limits,
    })
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut e = e;
    while let Some(next) = e.source() {
        s.push_str(": ");
        s.push_str(&next.to_string());
        e = next;
    }
    s
}

impl fmt::Display for MigrateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "live migration over loopback, {} MiB guest, dirty workload at {} pages/s, {} CPU(s), median of {} run(s)",
            self.mem_bytes >> 20,
            self.dirty_rate_pages_s,
            self.cpus,
            self.runs
        )?;
        writeln!(
            f,
            "{:<14} {:>9} {:>9} {:>10} {:>7} {:>7} {:>10}",
            "", "GiB/s", "total ms", "downtime", "CPU s", "rounds", "verdict"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<14} {:>9.2} {:>9} {:>10} {:>7.2} {:>7} {:>10}",
                r.name, r.throughput_gib_s, r.total_ms, r.downtime_ms, r.cpu_s, r.rounds, r.verdict
            )?;
        }
        write!(
            f,
            "limits: AES-256-GCM one core {:.2} GiB/s (the helper's code, in-process); loopback TCP {:.2} GiB/s",
            self.limits.aes_gcm_gib_s, self.limits.tcp_gib_s
        )
    }
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
            cpu_s: 0.0,
            rounds: 0,
            transferred_bytes: 0,
            verdict,
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
}
