//! `sevmirror bench migrate`: live migration over loopback between two processes, side by
//! side from one run — this VMM's plain migration, helper migration with 1..N helper
//! vCPUs, QEMU's plain precopy where it is installed — next to the machine's limits
//! (AES-256-GCM on one core, loopback TCP). Figures are printed, never asserted.

use crate::scenario::{self, Config, Outcome, Stage};
use anyhow::{bail, Context};
use clap::Args;
use qmp::QmpClient;
use serde::Serialize;
use serde_json::{json, Value};
use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// `sevmirror bench migrate`.
#[derive(Args, Debug)]
pub struct MigrateBenchArgs {
    /// Guest RAM of every run.
    #[arg(long, default_value = "1G", value_parser = crate::cli::parse_mem_arg)]
    pub mem: u64,
    /// Measure helper migration with 1 to N helper vCPUs.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub helpers: u16,
    /// Pages per second the guest rewrites while it migrates (it first fills all its
    /// memory with data; 1 is idle).
    #[arg(long, default_value_t = 1, value_name = "PAGES")]
    pub dirty_rate: u64,
    /// Runs per configuration; the row is the median by total time.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub runs: u32,
    /// Seconds to wait between runs: freed memory stays fast for a while on these
    /// machines, and a run right after another would measure that instead.
    #[arg(long, default_value_t = 8, value_name = "SECS")]
    pub settle: u64,
    /// Skip QEMU even where qemu-system-x86_64 is installed.
    #[arg(long)]
    pub no_qemu: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One configuration's figures.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// "plain", "helper-N", "qemu", "qemu-prealloc".
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

#[derive(Debug, Serialize)]
struct Report {
    mem_bytes: u64,
    dirty_rate_pages_s: u64,
    runs: u32,
    cpus: usize,
    rows: Vec<Row>,
    limits: Limits,
}

const GIB: f64 = (1u64 << 30) as f64;

/// Loopback TCP throughput: one connection, 1 MiB writes, `total` bytes.
pub fn tcp_gib_s(total: usize) -> anyhow::Result<f64> {
    const CHUNK: usize = 1 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on loopback")?;
    let addr = listener.local_addr()?;
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
    let mut s = TcpStream::connect(addr).context("cannot connect on loopback")?;
    let data = vec![0x5au8; CHUNK];
    let t0 = Instant::now();
    let mut sent = 0;
    while sent < total {
        s.write_all(&data)?;
        sent += CHUNK;
    }
    drop(s);
    let got = reader
        .join()
        .map_err(|_| anyhow::anyhow!("the loopback reader panicked"))??;
    if got != sent {
        bail!("loopback lost bytes: {got} of {sent}");
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
    mut f: impl FnMut() -> anyhow::Result<Row>,
) -> anyhow::Result<Row> {
    let mut rows = Vec::new();
    for _ in 0..runs.max(1) {
        if !std::mem::take(first) {
            std::thread::sleep(settle);
        }
        rows.push(f()?);
    }
    median(rows).context("no run")
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
) -> anyhow::Result<Qemu> {
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
    let mut child = cmd.spawn().context("cannot start qemu-system-x86_64")?;
    let qmp = scenario::wait_for(Duration::from_secs(20), || {
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
            bail!("QEMU ({name}) did not start")
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

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// QEMU's own plain precopy of our firmware's dirty workload (it fills its RAM, then
/// rewrites at the given rate), max-bandwidth unlimited; `prealloc` prefaults the
/// target's RAM (-mem-prealloc).
fn qemu_row(args: &MigrateBenchArgs, prealloc: bool) -> anyhow::Result<Row> {
    let dir = tempfile::Builder::new()
        .prefix("sevmirror-bench-qemu-")
        .tempdir()?;
    let firmware = dir.path().join("firmware.bin");
    std::fs::write(&firmware, firmware_image::IMAGE)?;
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
    if scenario::wait_for(Duration::from_secs(60), || {
        (rss(pid) >= args.mem * 95 / 100).then_some(())
    })
    .is_none()
    {
        bail!("the QEMU guest did not fill its memory in time");
    }
    std::thread::sleep(Duration::from_millis(500));
    source.qmp.execute(
        "migrate-set-parameters",
        json!({ "max-bandwidth": 100u64 << 30 }),
    )?;
    let cpu = |s: &Qemu, t: &Qemu| {
        scenario::cpu_seconds(s.child.id()) + scenario::cpu_seconds(t.child.id())
    };
    let cpu_before = cpu(&source, &target);
    source
        .qmp
        .execute("migrate", json!({ "uri": format!("tcp:127.0.0.1:{port}") }))?;
    let info = loop {
        let info = source.qmp.execute("query-migrate", Value::Null)?;
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
    let n = |path: &[&str]| scenario::json_u64(&info, path);
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

/// `sevmirror bench migrate`.
pub fn run(args: &MigrateBenchArgs) -> anyhow::Result<()> {
    if args.helpers == 0 || usize::from(args.helpers) > helper_abi::MAX_HELPER_VCPUS {
        bail!("--helpers must be 1 to {}", helper_abi::MAX_HELPER_VCPUS);
    }
    let say = |line: String| {
        if !args.json {
            eprintln!("bench: {line}");
        }
    };
    let settle = Duration::from_secs(args.settle);
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
    };
    let ours = |name: String, sev: bool, helpers: u16| -> anyhow::Result<Row> {
        let outcome = Stage::new(config(sev, helpers))?.run(|_| {})?;
        Ok(row_from(name, &outcome))
    };
    let mut push = |row: Row| {
        say(format!(
            "{}: {:.2} GiB/s, {} ms, downtime {} ms, {:.2} CPU s, {}",
            row.name, row.throughput_gib_s, row.total_ms, row.downtime_ms, row.cpu_s, row.verdict
        ));
        rows.push(row);
    };
    push(measure(args.runs, settle, &mut first, || {
        ours("plain".into(), false, 1)
    })?);
    for n in 1..=args.helpers {
        push(measure(args.runs, settle, &mut first, || {
            ours(format!("helper-{n}"), true, n)
        })?);
    }
    if !args.no_qemu && qemu_installed() {
        for prealloc in [false, true] {
            match measure(args.runs, settle, &mut first, || qemu_row(args, prealloc)) {
                Ok(row) => push(row),
                Err(e) => say(format!("QEMU run skipped: {e:#}")),
            }
        }
    } else if !args.no_qemu {
        say("qemu-system-x86_64 is not installed (Debian: qemu-system-x86): no QEMU row".into());
    }
    let limits = Limits {
        aes_gcm_gib_s: crate::bench::aes_gcm_mib_s(Duration::from_secs(1)) / 1024.0,
        tcp_gib_s: tcp_gib_s(4 << 30)?,
    };
    let report = Report {
        mem_bytes: args.mem,
        dirty_rate_pages_s: args.dirty_rate,
        runs: args.runs,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rows,
        limits,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "live migration over loopback, {} MiB guest, dirty workload at {} pages/s, {} CPU(s), median of {} run(s)",
        args.mem >> 20,
        args.dirty_rate,
        report.cpus,
        args.runs
    );
    println!(
        "{:<14} {:>9} {:>9} {:>10} {:>7} {:>7} {:>10}",
        "", "GiB/s", "total ms", "downtime", "CPU s", "rounds", "verdict"
    );
    for r in &report.rows {
        println!(
            "{:<14} {:>9.2} {:>9} {:>10} {:>7.2} {:>7} {:>10}",
            r.name, r.throughput_gib_s, r.total_ms, r.downtime_ms, r.cpu_s, r.rounds, r.verdict
        );
    }
    println!(
        "limits: AES-256-GCM one core {:.2} GiB/s (the helper's code, in-process); loopback TCP {:.2} GiB/s",
        report.limits.aes_gcm_gib_s, report.limits.tcp_gib_s
    );
    Ok(())
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
