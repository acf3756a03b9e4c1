//! `sevmirror bench`: figures, printed, never asserted (the measuring is the harness's).

use clap::{Args, Subcommand};
use harness::{
    bench_helper::{self, HelperBench},
    bench_migrate::{self, MigrateBench},
    chart,
    pin::PinPlan,
};
use std::{path::PathBuf, time::Duration};

/// `sevmirror bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

/// What to measure.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Pages per second the migration helper seals (EXPORT) and opens (IMPORT), against
    /// batch size and helper vCPUs, next to this machine's AES-256-GCM speed.
    Helper(HelperBenchArgs),
    /// Live migration over loopback: plain, through 1..N helper vCPUs, and QEMU's
    /// migrations where installed (plain, prefaulted target, TLS, multifd with and without
    /// TLS), next to the helper's AES-256-GCM per kernel, `openssl speed` and loopback TCP.
    Migrate(MigrateBenchArgs),
}

/// `sevmirror bench helper`.
#[derive(Args, Debug)]
pub struct HelperBenchArgs {
    /// Guest RAM (filled with data before measuring).
    #[arg(long, default_value = "512M", value_parser = crate::cli::parse_mem)]
    pub mem: u64,
    /// Most helper vCPUs to measure with (1..=N).
    #[arg(long, default_value_t = 2)]
    pub helpers: u16,
    /// Batch sizes to measure, comma-separated.
    #[arg(long, default_value = "16,64,128,256", value_delimiter = ',')]
    pub batches: Vec<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `sevmirror bench migrate`.
#[derive(Args, Debug)]
pub struct MigrateBenchArgs {
    /// Guest RAM of every run.
    #[arg(long, default_value = "1G", value_parser = crate::cli::parse_mem)]
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
    /// Run the source and the target on disjoint halves of this machine's CPUs (taskset),
    /// as on two hosts; needs 2 CPUs or more.
    #[arg(long)]
    pub pin: bool,
    /// Also draw the rows (throughput, downtime, bytes sent over time) into this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long, conflicts_with = "markdown")]
    pub json: bool,
    /// Print the tables as markdown (as docs/performance.md shows them).
    #[arg(long)]
    pub markdown: bool,
}

/// Runs `sevmirror bench …`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    match &args.what {
        BenchCommand::Helper(a) => {
            let bench = HelperBench {
                mem: a.mem,
                helpers: a.helpers,
                batches: a.batches.clone(),
            };
            let report = bench_helper::run(&bench, |msg| {
                if !a.json {
                    eprintln!("bench: {msg}");
                }
            })?;
            print(a.json, &report, &report)
        }
        BenchCommand::Migrate(a) => {
            let bench = MigrateBench {
                mem: a.mem,
                helpers: a.helpers,
                dirty_rate: a.dirty_rate,
                runs: a.runs,
                settle: Duration::from_secs(a.settle),
                no_qemu: a.no_qemu,
                pin: if a.pin {
                    Some(PinPlan::for_this_machine()?)
                } else {
                    None
                },
                exe: std::env::current_exe()?,
            };
            let report = bench_migrate::run(&bench, |line| {
                if !a.json {
                    eprintln!("bench: {line}");
                }
            })?;
            if let Some(path) = &a.svg {
                chart::write_svg(&report, path)?;
                if !a.json {
                    eprintln!("bench: chart written to {}", path.display());
                }
            }
            if a.markdown {
                print!("{}", report.markdown());
                return Ok(());
            }
            print(a.json, &report, &report)
        }
    }
}

fn print(
    json: bool,
    report: &impl serde::Serialize,
    text: &impl std::fmt::Display,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{text}");
    }
    Ok(())
}
