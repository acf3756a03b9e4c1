//! `sevmirror run`: boot a VM and wait for it to end.

use crate::{cli::RunArgs, signals};
use anyhow::{bail, Context};
use guest_abi::fwcfg;
use std::{fs::File, io::Write};
use vmm::{vm::VmOutcome, ConsoleOut, Firmware, KvmSystem, Vm, VmConfig};

/// Loads `--firmware FILE`, or the embedded image.
pub fn load_firmware(path: Option<&std::path::Path>) -> anyhow::Result<Firmware> {
    let image = match path {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("cannot read firmware {}", p.display()))?
        }
        None => firmware_image::IMAGE.to_vec(),
    };
    let what = path.map_or_else(
        || "the embedded firmware".to_string(),
        |p| p.display().to_string(),
    );
    Firmware::load(image).with_context(|| format!("cannot use {what}"))
}

/// The console sink named by `--serial`.
pub fn console(spec: &str) -> anyhow::Result<ConsoleOut> {
    let out: Box<dyn Write + Send> = match spec {
        "stdio" => Box::new(std::io::stdout()),
        "none" => Box::new(std::io::sink()),
        path => Box::new(
            File::create(path).with_context(|| format!("cannot create serial output {path}"))?,
        ),
    };
    Ok(ConsoleOut::new(out))
}

/// Parses one `--fw-cfg name=NAME,file=PATH|string=TEXT`.
pub fn fw_cfg_file(spec: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let mut name = None;
    let mut data = None;
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("name", v)) => name = Some(v.to_string()),
            Some(("file", v)) => {
                data = Some(std::fs::read(v).with_context(|| format!("--fw-cfg: cannot read {v}"))?)
            }
            Some(("string", v)) => data = Some(v.as_bytes().to_vec()),
            _ => bail!("--fw-cfg {spec:?}: expected name=NAME,file=PATH or name=NAME,string=TEXT"),
        }
    }
    match (name, data) {
        (Some(n), Some(d)) => Ok((n, d)),
        _ => bail!("--fw-cfg {spec:?}: both name= and file= (or string=) are needed"),
    }
}

/// Runs the VM; returns the process exit code.
pub fn run(args: &RunArgs) -> anyhow::Result<i32> {
    let firmware = load_firmware(args.firmware.as_deref())?;
    let console = console(&args.serial)?;
    let mut files = vec![(
        fwcfg::FILE_WORKLOAD.to_string(),
        args.workload.clone().into_bytes(),
    )];
    for spec in &args.fw_cfg {
        files.push(fw_cfg_file(spec)?);
    }
    let kvm = KvmSystem::open()?;
    signals::block_termination();
    let mut vm = Vm::new(
        &kvm,
        VmConfig {
            mem_size: args.mem,
            vcpus: args.vcpus,
            firmware,
            console,
            fw_cfg_files: files,
            sev: None,
        },
    )?;
    signals::forward_termination(vm.event_sink());
    vm.start()?;
    let outcome = vm.wait();
    vm.stop();
    if args.boot_trace {
        for m in vm.milestones() {
            eprintln!(
                "boot-trace: vCPU {} {} at {:.3} ms",
                m.vcpu,
                m.event.name().unwrap_or("event"),
                m.at.as_secs_f64() * 1e3
            );
        }
        for (i, s) in vm.exit_stats().iter().enumerate() {
            let kvm: Vec<String> = s.kvm.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let kvm = if kvm.is_empty() {
                "n/a".to_string()
            } else {
                kvm.join(", ")
            };
            eprintln!(
                "boot-trace: vCPU {i} exits to the VMM: {} port I/O, {} MMIO, {} other; KVM counters: {kvm}",
                s.pio, s.mmio, s.other
            );
        }
    }
    Ok(match outcome {
        VmOutcome::GuestExit(status) => i32::from(vmm::devices::services::exit_status(status)),
        VmOutcome::Fault { vcpu, report } => {
            eprintln!("sevmirror: vCPU {vcpu}: {report}");
            1
        }
        VmOutcome::Failed { vcpu, error } => {
            eprintln!("sevmirror: vCPU {vcpu}: {error}");
            1
        }
        VmOutcome::Signal(sig) => {
            eprintln!("sevmirror: stopped by {}", signals::name(sig));
            0
        }
    })
}
