//! The `sevmirror` command: command-line parsing and one small module per subcommand, each
//! calling the libraries (`vmm` for VMs, `qmp` for the control socket, `sev-platform` for
//! the platform and the guest owner, `harness` for the demo and the benchmarks).

#![forbid(unsafe_code)]

mod adapter;
mod bench;
mod cli;
mod ctl;
mod demo;
mod inspect;
mod measure_cmd;
mod owner_cmd;
mod platform_cmd;
mod run;

use clap::Parser;
use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::new().filter_or("SEVMIRROR_LOG", level))
        .format_timestamp_millis()
        .init();
    let result = match &cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Run(args) => run::run(args),
        Command::Bench(args) => bench::run(args).map(|()| 0),
        Command::Inspect(args) => inspect::run(args).map(|()| 0),
        Command::Firmware(args) => write_images(args).map(|()| 0),
        Command::Ctl(args) => ctl::run(&args.api, args.timeout, &args.command, args.args.clone()),
        Command::Platform(args) => platform_cmd::run(args).map(|()| 0),
        Command::Owner(args) => owner_cmd::run(args).map(|()| 0),
        Command::Measure(args) => measure_cmd::run(args).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sevmirror: error: {e:#}");
            std::process::exit(1);
        }
    }
}

/// `sevmirror firmware`: the embedded firmware image, and the embedded guest OS if asked.
fn write_images(args: &cli::FirmwareArgs) -> anyhow::Result<()> {
    let write = |path: &std::path::Path, bytes: &[u8]| {
        std::fs::write(path, bytes)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
    };
    write(&args.out, firmware_image::IMAGE)?;
    if let Some(path) = &args.os_out {
        write(path, os_image::IMAGE)?;
    }
    Ok(())
}
