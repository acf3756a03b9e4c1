//! `sevmirror run`: build a VM (launching it under SEV if asked), serve its control
//! socket, and run it until it ends.

use crate::{
    adapter::{self, QmpAdapter},
    cli::{RunArgs, SevArgs},
    platform_cmd::BackendChoice,
};
use anyhow::{bail, Context};
use guest_abi::fwcfg;
use qmp::{EventSender, QmpServer};
use sev_platform::{owner, platform::Location, Policy, SevBackend};
use std::{fs::File, io::Write, path::PathBuf, sync::Arc};
use vmm::{
    control::{Ending, MachineBuilder, Trace},
    process,
    sev::{HypercallTransport, SevConfig},
    vm::VmOutcome,
    ConsoleOut, DirectBoot, Firmware, KvmSystem, VmConfig,
};

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

/// The kernel, initrd and command line of `--kernel/--initrd/--append`; without
/// `--kernel`, the embedded guest OS when the firmware is the embedded one (and not
/// `--no-kernel`): a firmware from a file boots only what it is given, as QEMU's `-bios`.
pub fn direct_boot(args: &RunArgs) -> anyhow::Result<Option<DirectBoot>> {
    let Some(kernel) = &args.kernel else {
        if args.no_kernel || args.firmware.is_some() {
            return Ok(None);
        }
        let boot = DirectBoot::new(os_image::IMAGE.to_vec(), None, String::new())
            .context("the embedded guest OS")?;
        return Ok(Some(boot));
    };
    let read = |what: &str, p: &std::path::Path| {
        std::fs::read(p).with_context(|| format!("cannot read {what} {}", p.display()))
    };
    let image = read("kernel", kernel)?;
    let initrd = args
        .initrd
        .as_deref()
        .map(|p| read("initrd", p))
        .transpose()?;
    let boot = DirectBoot::new(image, initrd, args.append.clone().unwrap_or_default())
        .with_context(|| format!("--kernel {}", kernel.display()))?;
    Ok(Some(boot))
}

/// The SEV platform `--sev-backend` names (default: hardware when /dev/sev exists).
pub fn sev_backend(
    backend: Option<BackendChoice>,
    platform_dir: Option<&PathBuf>,
) -> anyhow::Result<Arc<dyn SevBackend>> {
    let kind = backend.map(BackendChoice::kind);
    let location = Location::resolve(kind, platform_dir.map(|d| d.as_path()))?;
    Ok(location.open()?.into_shared())
}

fn sev_config(args: &SevArgs) -> anyhow::Result<Option<SevConfig>> {
    if !args.sev {
        return Ok(None);
    }
    let backend = sev_backend(args.sev_backend, args.platform_dir.as_ref())?;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let session = match (&args.dh_cert_file, &args.session_file) {
        (Some(cert), Some(session)) => Some(
            owner::launch_session_from_base64(&read(cert)?, &read(session)?)
                .context("the guest owner's session files are not usable")?,
        ),
        _ => None,
    };
    let transport = match args.hypercall.as_str() {
        "services" => HypercallTransport::ServicesPage,
        "vmmcall" => HypercallTransport::Vmmcall,
        other => bail!("--hypercall {other:?}: expected services or vmmcall"),
    };
    Ok(Some(SevConfig {
        backend,
        policy: Policy(args.policy),
        session,
        transport,
    }))
}

fn print_trace(trace: &Trace) {
    for m in &trace.milestones {
        eprintln!(
            "boot-trace: vCPU {} {} at {:.3} ms",
            m.vcpu,
            m.event.name().unwrap_or("event"),
            m.at.as_secs_f64() * 1e3
        );
    }
    for (i, s) in trace.exits.iter().enumerate() {
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
        if !s.ghcb.is_empty() {
            let ghcb: Vec<String> = s.ghcb.iter().map(|(k, v)| format!("{k} {v}")).collect();
            eprintln!(
                "boot-trace: vCPU {i} VMGEXITs (SEV-ES): {}; {} refused as malformed",
                ghcb.join(", "),
                s.ghcb_refused
            );
        }
    }
}

/// Where recovery files go: `--state-dir`, else beside the control socket, else here.
fn state_dir(args: &RunArgs) -> PathBuf {
    match (&args.state_dir, &args.api) {
        (Some(dir), _) => dir.clone(),
        (None, Some(api)) => match api.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
        (None, None) => PathBuf::from("."),
    }
}

/// Runs the VM; returns the process exit code.
pub fn run(args: &RunArgs) -> anyhow::Result<i32> {
    let firmware = load_firmware(args.firmware.as_deref())?;
    let console = console(&args.serial)?;
    let mut files = vec![
        (
            fwcfg::FILE_WORKLOAD.to_string(),
            args.workload.clone().into_bytes(),
        ),
        (
            fwcfg::FILE_DIRTY_RATE.to_string(),
            args.dirty_rate.to_string().into_bytes(),
        ),
    ];
    for spec in &args.fw_cfg {
        files.push(fw_cfg_file(spec)?);
    }
    // Bind first: a busy port is an error before anything is launched.
    let listener = match &args.incoming {
        Some(uri) => Some(
            migration::transport::listen(uri)
                .with_context(|| format!("--incoming {uri}: cannot listen"))?,
        ),
        None => None,
    };
    let kernel = direct_boot(args)?;
    let sev = sev_config(&args.sev)?;
    let es = sev.as_ref().is_some_and(|s| s.policy.has(Policy::ES));
    // An SEV-ES guest's helper vCPUs are part of its launch digest, so they are asked
    // for explicitly: without --helpers its digest is what QEMU's tools compute.
    let helpers = match (args.helpers, es) {
        (Some(n), _) => n,
        (None, true) => 0,
        (None, false) => 1,
    };
    let kvm = Arc::new(KvmSystem::open()?);
    process::block_termination();
    let mut builder = MachineBuilder::new(VmConfig {
        mem_size: args.mem,
        vcpus: args.vcpus,
        firmware,
        console,
        fw_cfg_files: files,
        sev,
    })
    .helpers(helpers)
    .vcpu_type(args.sev.vcpu_type)
    .hide_cpu_features(args.cpu_hide.clone())
    .state_dir(state_dir(args));
    if let Some(listener) = listener {
        builder = builder.incoming(listener);
    }
    if let Some(boot) = kernel {
        builder = builder.kernel(boot);
    }
    let mut controller = builder.build(kvm)?;
    let events = EventSender::new();
    let sender = events.clone();
    controller.on_event(Box::new(move |e| sender.send(&adapter::event(e))));
    let _server = match &args.api {
        Some(path) => Some(
            QmpServer::bind(path, Arc::new(QmpAdapter::new(controller.handle())), events)
                .with_context(|| format!("cannot serve the control socket {}", path.display()))?,
        ),
        None => None,
    };
    process::forward_termination(controller.event_sink());
    if !args.paused {
        controller
            .start()
            .map_err(|e| anyhow::anyhow!("{}", adapter::error(&e).desc))?;
    }
    let (ending, trace) = controller.run();
    if args.boot_trace {
        print_trace(&trace);
    }
    Ok(match ending {
        Ending::Quit => 0,
        Ending::IncomingFailed(why) => {
            eprintln!("sevmirror: the incoming migration failed: {}", why.chain());
            1
        }
        Ending::Vm(VmOutcome::GuestExit(status)) => {
            i32::from(vmm::devices::services::exit_status(status))
        }
        Ending::Vm(VmOutcome::Fault { vcpu, report }) => {
            eprintln!("sevmirror: vCPU {vcpu}: {report}");
            1
        }
        Ending::Vm(VmOutcome::Failed { vcpu, error }) => {
            eprintln!("sevmirror: vCPU {vcpu}: {error}");
            1
        }
        Ending::Vm(VmOutcome::Signal(sig)) => {
            eprintln!("sevmirror: stopped by {}", process::signal_name(sig));
            0
        }
    })
}
