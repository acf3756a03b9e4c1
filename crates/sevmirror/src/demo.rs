//! `sevmirror demo`: the whole story on one machine — platform, guest owner, an SEV
//! guest under load, its live migration through the mirror helper to a second VMM, and
//! the guest's own check of its memory on arrival.

use clap::Args;
use harness::scenario::{Config, Report, Stage};
use indicatif::{ProgressBar, ProgressStyle};
use std::{io::IsTerminal, time::Duration};

/// `sevmirror demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Guest RAM (e.g. 512M, 1G; at least 64M, a multiple of 2M).
    #[arg(long, default_value = "1G", value_parser = crate::cli::parse_mem)]
    pub mem: u64,

    /// Helper vCPUs in each side's mirror VM: each seals or opens its own lane of pages.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub helpers: u16,

    /// Pages per second the guest's dirty workload rewrites during the migration.
    #[arg(long, default_value_t = 2000, value_name = "PAGES")]
    pub dirty_rate: u64,

    /// An SEV-ES guest with 2 vCPUs: its helper vCPUs are measured at launch, and each
    /// vCPU saves its registers into guest memory when the source stops and restores them
    /// on the target (docs/migration.md, SEV-ES).
    #[arg(long)]
    pub sev_es: bool,

    /// Print one JSON object (verdict, sizes, rounds, times, throughput) instead of text.
    #[arg(long)]
    pub json: bool,
}

fn progress_bar(total: u64) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} migrating [{bar:30}] {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    Some(bar)
}

/// Runs the demo; returns the exit code (0: pass).
pub fn run(args: &DemoArgs) -> anyhow::Result<i32> {
    let config = Config {
        mem: args.mem,
        vcpus: if args.sev_es { 2 } else { 1 },
        helpers: args.helpers,
        dirty_rate: args.dirty_rate,
        sev: true,
        downtime_limit_ms: None,
        warmup: Duration::from_millis(500),
        exe: std::env::current_exe()?,
        pin: None,
    };
    let say = |line: &str| {
        if !args.json {
            eprintln!("{line}");
        }
    };
    say(&format!(
        "sevmirror demo: an {} guest with {} MiB of RAM, rewriting {} pages/s, moves to a second VMM through {} helper vCPU(s)",
        if args.sev_es { "SEV-ES" } else { "SEV" },
        args.mem >> 20,
        args.dirty_rate,
        args.helpers
    ));
    say("  platform: emulated SEV firmware; owner: checks both launch measurements, then injects the migration secret");
    if args.sev_es {
        say("  SEV-ES: 2 vCPUs; the helper VMSAs are part of each launch digest; each vCPU saves its registers into guest memory (AP reset hold) when the source stops and restores them on the target");
    }
    let mut stage = Stage::new(config)?;
    if args.sev_es {
        stage = stage.with_sev_es();
    }
    let bar = if args.json {
        None
    } else {
        progress_bar(args.mem)
    };
    let outcome = stage.run(|info| {
        if let Some(bar) = &bar {
            let ram = &info["ram"];
            let transferred = ram["transferred"].as_u64().unwrap_or(0);
            bar.set_position(transferred.min(args.mem));
            bar.set_message(format!(
                "round {} status {}",
                ram["dirty-sync-count"].as_u64().unwrap_or(0),
                info["status"].as_str().unwrap_or("")
            ));
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = Report {
        outcome: &outcome,
        helpers: args.helpers,
        dirty_rate: args.dirty_rate,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        println!("{report}");
    }
    Ok(if outcome.passed() { 0 } else { 1 })
}
