//! The `sevmirror` command.

mod cli;
mod inspect;
mod machine;
mod qmp;
mod run;
mod signals;
mod size;

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
        Command::Run(args) => run::run(args),
        Command::Inspect(args) => inspect::run(args).map(|()| 0),
        Command::Firmware(args) => std::fs::write(&args.out, firmware_image::IMAGE)
            .map(|()| 0)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", args.out.display())),
        Command::Ctl(args) => {
            qmp::ctl::run(&args.api, args.timeout, &args.command, args.args.clone())
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("sevmirror: error: {e:#}");
            std::process::exit(1);
        }
    }
}
