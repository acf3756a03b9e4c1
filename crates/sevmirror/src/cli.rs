//! The command line.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// sevmirror: a VMM for AMD SEV guests that live-migrates them through a migration helper
/// running in a mirror VM that shares the guest's encryption context.
#[derive(Parser, Debug)]
#[command(name = "sevmirror", version, about, long_about = None)]
pub struct Cli {
    /// Log more (repeat for more detail); SEVMIRROR_LOG=debug works too.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// The whole story on this machine: attest an SEV guest and a target VM as their
    /// owner, live-migrate the running guest through the mirror helper, check it on
    /// arrival, and report.
    Demo(crate::demo::DemoArgs),
    /// Run a VM with the built-in firmware (or --firmware FILE).
    Run(RunArgs),
    /// List the footer GUID table of a firmware image (ours or OVMF's).
    Inspect(InspectArgs),
    /// Write the embedded firmware image to a file.
    Firmware(FirmwareArgs),
    /// Measure: the migration helper's sealing and opening speed.
    Bench(crate::bench::BenchArgs),
    /// Send one QMP command to a running VM's control socket (`run --api PATH`) and print
    /// the result as JSON.
    Ctl(CtlArgs),
    /// The SEV platform: status, certificate export, factory reset, PDH rotation.
    Platform(crate::platform_cmd::PlatformArgs),
    /// The guest owner's side of an SEV launch: session, measurement check, secrets
    /// (files interchangeable with sevctl's).
    Owner(crate::owner_cmd::OwnerArgs),
    /// Print the SEV or SEV-ES launch digest of a firmware image (ours or OVMF), as
    /// QEMU+OVMF launches measure it.
    Measure(crate::measure_cmd::MeasureArgs),
}

/// `sevmirror run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Guest RAM, e.g. 256M or 2G (a bare number means MiB; at least 64M, a multiple of 2M).
    #[arg(long, default_value = "256M", value_parser = parse_mem)]
    pub mem: u64,

    /// Number of vCPUs (1 to 32).
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,

    /// Firmware image to boot instead of the embedded one.
    #[arg(long, value_name = "FILE")]
    pub firmware: Option<PathBuf>,

    /// Where the guest console goes: "stdio", "none", or a file path.
    #[arg(long, default_value = "stdio", value_name = "stdio|none|FILE")]
    pub serial: String,

    /// Workload of the guest OS (or of the firmware with --no-kernel): "selftest" (fill and verify all free RAM, exit with the
    /// verdict), "idle" (stay up until stopped), "dirty" (keep rewriting pages at
    /// --dirty-rate, verify on request) or "canary" (one private and one shared page with
    /// a known pattern, then idle).
    #[arg(long, default_value = "selftest", value_name = "NAME")]
    pub workload: String,

    /// Pages per second the `dirty` workload rewrites (0: as fast as it can).
    #[arg(long, default_value_t = 1000, value_name = "PAGES")]
    pub dirty_rate: u64,

    /// Kernel to boot directly (QEMU's -kernel): a Linux bzImage or an ELF guest OS,
    /// handed to the firmware through fw_cfg; the firmware loads it and jumps to it.
    /// Under --sev the launch also measures the SEV hashes table of kernel, initrd and
    /// command line (what `measure --kernel` computes), and the firmware refuses anything
    /// that does not match it. Default with the embedded firmware: sevmirror's own guest
    /// OS (embedded too), which runs --workload.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,

    /// Boot the firmware alone, without the embedded guest OS: the firmware then runs
    /// --workload itself (its own tests; the launch measures no hashes table).
    #[arg(long, conflicts_with = "kernel")]
    pub no_kernel: bool,

    /// Initrd passed with --kernel (QEMU's -initrd).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line passed with --kernel (QEMU's -append).
    #[arg(long, value_name = "TEXT", requires = "kernel")]
    pub append: Option<String>,

    /// Extra fw_cfg file: name=NAME,file=PATH or name=NAME,string=TEXT (as QEMU's -fw_cfg).
    #[arg(long = "fw-cfg", value_name = "SPEC")]
    pub fw_cfg: Vec<String>,

    /// Print boot milestones and exit counts on stderr when the VM stops.
    #[arg(long)]
    pub boot_trace: bool,

    /// QMP control socket to create (QEMU's protocol and command names; see `sevmirror ctl`).
    #[arg(long, value_name = "SOCKET")]
    pub api: Option<PathBuf>,

    /// Where a migration keeps the files that recover it when its connection is lost
    /// after the commit (docs/migration.md): a source's commit file, a target's abort
    /// token. Default: the directory of --api, else the working directory. QMP commands
    /// may name their own files.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Helper vCPUs to start in the mirror VM of an SEV guest (0: no mirror). The mirror
    /// shares the guest's encryption context and runs the firmware's migration helper.
    /// Default 1, and 0 for an SEV-ES guest (policy bit 0x4): its helper vCPUs' VMSAs are
    /// measured at its launch (`measure --mode sev-es --helpers N` computes that digest),
    /// and it migrates only with them, into a target launched with as many.
    #[arg(long, value_name = "N")]
    pub helpers: Option<u16>,

    /// Do not run the guest until `cont` arrives on the control socket (QEMU's -S). An SEV
    /// guest stops after LAUNCH_MEASURE, so its owner can check the measurement and inject
    /// secrets first.
    #[arg(long)]
    pub paused: bool,

    /// Wait for a guest migrating in on tcp:HOST:PORT (QEMU's -incoming) instead of
    /// booting one: the firmware starts only its migration helper and parks, and the
    /// guest runs once the source's stream is verified. Port 0 picks a free port
    /// (`query-migrate` shows it). An SEV target is attested and given the migration
    /// secret like any launch (--paused, then the owner's secret, then cont).
    #[arg(long, value_name = "tcp:HOST:PORT", value_parser = parse_uri)]
    pub incoming: Option<migration::uri::Uri>,

    /// CPU features not to give the guest, by their /proc/cpuinfo names (e.g.
    /// avx512f,vaes): a migration target refuses a guest that was given a feature its
    /// own CPU lacks, naming it, so a guest that must move between these hosts is run
    /// without it (as QEMU's -cpu host,-avx512f).
    #[arg(long, value_name = "FEATURES", value_delimiter = ',', value_parser = parse_cpu_feature)]
    pub cpu_hide: Vec<migration::cpu::Feature>,

    #[command(flatten)]
    pub sev: SevArgs,
}

/// A CPU feature by its `/proc/cpuinfo` name.
fn parse_cpu_feature(s: &str) -> Result<migration::cpu::Feature, String> {
    migration::cpu::feature(s).ok_or_else(|| {
        let names: Vec<&str> = migration::cpu::FEATURES.iter().map(|f| f.name).collect();
        format!("unknown CPU feature {s:?}; known: {}", names.join(", "))
    })
}

/// The SEV options of `sevmirror run` (QEMU `sev-guest` conventions).
#[derive(Args, Debug)]
pub struct SevArgs {
    /// Run the guest under AMD SEV: its memory is encrypted and its launch measured.
    #[arg(long)]
    pub sev: bool,

    /// Guest policy (SEV API §3; decimal or 0x hex). QEMU's default, 0x1, forbids
    /// debugging (DBG_DECRYPT); bit 0x4 asks for SEV-ES (vCPU state encrypted in VMSAs,
    /// exits served through the GHCB), e.g. 0x5.
    #[arg(long, default_value = "0x1", value_parser = parse_u32, requires = "sev")]
    pub policy: u32,

    /// SEV-ES: the vCPU model (QEMU -cpu) whose family/model/stepping every measured VMSA
    /// holds; `sevmirror measure --mode sev-es --vcpus N --vcpu-type TYPE` computes the
    /// same digest.
    #[arg(long, value_name = "TYPE", default_value = vmm::sev::DEFAULT_VCPU_TYPE,
          value_parser = crate::measure_cmd::parse_vcpu_type, requires = "sev")]
    pub vcpu_type: sev_platform::vmsa::VcpuType,

    /// Guest owner's Diffie-Hellman certificate, base64 (QEMU's dh-cert-file; from
    /// `sevmirror owner session` or `sevctl session`).
    #[arg(long, value_name = "FILE", requires_all = ["sev", "session_file"])]
    pub dh_cert_file: Option<PathBuf>,

    /// Launch session blob, base64 (QEMU's session-file).
    #[arg(long, value_name = "FILE", requires_all = ["sev", "dh_cert_file"])]
    pub session_file: Option<PathBuf>,

    /// Where the emulated platform keeps its identity (default: $SEVMIRROR_PLATFORM_DIR,
    /// else $XDG_STATE_HOME/sevmirror/platform, else ~/.local/state/sevmirror/platform).
    #[arg(long, value_name = "DIR")]
    pub platform_dir: Option<PathBuf>,

    /// SEV platform: "hw" (/dev/sev and KVM) or "emulated" (the software PSP). Default: hw
    /// when /dev/sev exists, otherwise emulated.
    #[arg(long, value_enum, value_name = "hw|emulated")]
    pub sev_backend: Option<crate::platform_cmd::BackendChoice>,

    /// How the guest announces page conversions: "services" (the guest-services page;
    /// works everywhere) or "vmmcall" (KVM_HC_MAP_GPA_RANGE by VMMCALL, as on SEV hosts;
    /// it hangs on kvm_pvm).
    #[arg(
        long,
        default_value = "services",
        value_name = "services|vmmcall",
        requires = "sev"
    )]
    pub hypercall: String,
}

/// `sevmirror inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Firmware image, e.g. /usr/share/ovmf/OVMF.fd.
    pub file: PathBuf,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sevmirror firmware`.
#[derive(Args, Debug)]
pub struct FirmwareArgs {
    /// Where to write the image.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// Also write the embedded guest OS (an ELF kernel) here: the kernel `run` boots by
    /// default, for `measure --firmware FILE --kernel FILE` and QEMU's -kernel.
    #[arg(long, value_name = "FILE")]
    pub os_out: Option<PathBuf>,
}

/// `sevmirror ctl`.
#[derive(Args, Debug)]
pub struct CtlArgs {
    /// The VM's control socket.
    #[arg(long, value_name = "PATH")]
    pub api: PathBuf,

    /// Seconds to wait for the connection and for the reply.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = crate::ctl::parse_timeout)]
    pub timeout: std::time::Duration,

    /// The QMP command, e.g. query-status, query-sev, cont, migrate, query-migrate.
    pub command: String,

    /// The command's arguments as one JSON object, e.g. '{"uri":"tcp:127.0.0.1:4444"}'.
    #[arg(value_name = "ARGS-JSON", value_parser = crate::ctl::parse_args_json)]
    pub args: Option<serde_json::Map<String, serde_json::Value>>,
}

fn parse_uri(s: &str) -> Result<migration::uri::Uri, String> {
    s.parse()
        .map_err(|e: migration::uri::UriError| e.to_string())
}

/// A u32 in decimal or with a 0x prefix.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a 32-bit number (decimal or 0x hex)"))
}

/// A memory size argument (see `vmm::memory::size::parse_size`).
pub fn parse_mem(s: &str) -> Result<u64, String> {
    vmm::memory::size::parse_size(s).map_err(|e| e.to_string())
}
