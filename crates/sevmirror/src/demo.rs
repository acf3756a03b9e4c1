//! `sevmirror demo`: the whole story on one machine — platform, guest owner, an SEV
//! guest under load, its live migration through the mirror helper to a second VMM, and
//! the guest's own check of its memory on arrival.

use crate::scenario::{Config, Outcome, Stage};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::{io::IsTerminal, time::Duration};

/// `sevmirror demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Guest RAM (e.g. 512M, 1G; at least 64M, a multiple of 2M).
    #[arg(long, default_value = "1G", value_parser = crate::cli::parse_mem_arg)]
    pub mem: u64,

    /// Helper vCPUs in each side's mirror VM: each seals or opens its own lane of pages.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub helpers: u16,

    /// Pages per second the guest's dirty workload rewrites during the migration.
    #[arg(long, default_value_t = 2000, value_name = "PAGES")]
    pub dirty_rate: u64,

    /// Print one JSON object (verdict, sizes, rounds, times, throughput) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The report's numbers as JSON.
pub fn report_json(o: &Outcome, helpers: u16, dirty_rate: u64) -> serde_json::Value {
    json!({
        "verdict": if o.passed() { "pass" } else { "fail" },
        "status": o.status,
        "mem_bytes": o.mem_bytes(),
        "helpers": helpers,
        "dirty_rate_pages_s": dirty_rate,
        "rounds": o.rounds(),
        "total_ms": o.total_ms(),
        "downtime_ms": o.downtime_ms(),
        "transferred_bytes": o.transferred(),
        "throughput_gib_s": (o.throughput_gib_s() * 1000.0).round() / 1000.0,
        "target_verify": o.verify_line,
        "source_state": o.source_state,
        "target_state": o.target_state,
        "error": o.migration.get("error-desc"),
    })
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
        vcpus: 1,
        helpers: args.helpers,
        dirty_rate: args.dirty_rate,
        sev: true,
        downtime_limit_ms: None,
        warmup: Duration::from_millis(500),
    };
    let say = |line: &str| {
        if !args.json {
            eprintln!("{line}");
        }
    };
    say(&format!(
        "sevmirror demo: an SEV guest with {} MiB of RAM, rewriting {} pages/s, moves to a second VMM through {} helper vCPU(s)",
        args.mem >> 20,
        args.dirty_rate,
        args.helpers
    ));
    say("  platform: emulated SEV firmware; owner: checks both launch measurements, then injects the migration secret");
    let stage = Stage::new(config)?;
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
    if args.json {
        println!("{}", report_json(&outcome, args.helpers, args.dirty_rate));
    } else {
        print_report(&outcome);
    }
    Ok(if outcome.passed() { 0 } else { 1 })
}

fn print_report(o: &Outcome) {
    println!("migration {}:", o.status);
    println!(
        "  guest RAM        {} MiB, sent in {} round(s), {:.1} MiB on the wire",
        o.mem_bytes() >> 20,
        o.rounds(),
        o.transferred() as f64 / (1 << 20) as f64
    );
    println!(
        "  total time       {} ms ({:.2} GiB/s of guest RAM)",
        o.total_ms(),
        o.throughput_gib_s()
    );
    println!("  downtime         {} ms", o.downtime_ms());
    println!("  source / target  {} / {}", o.source_state, o.target_state);
    match &o.verify_line {
        Some(line) => println!("  target guest     {}", line.trim()),
        None => println!("  target guest     did not report a memory check"),
    }
    if let Some(e) = o.migration.get("error-desc").and_then(|e| e.as_str()) {
        println!("  error            {e}");
    }
    println!("verdict: {}", if o.passed() { "PASS" } else { "FAIL" });
}
