//! `sevmirror measure`: prints the launch digest an SEV or SEV-ES launch of a firmware
//! image produces (`vmm::measure` computes it, and says what it covers).

use anyhow::Context;
use clap::{Args, CommandFactory};
use migration::recovery::hex;
use os_loader::hashes::SevHashes;
use serde_json::json;
use sev_platform::{
    owner::encode_base64,
    vmsa::{VcpuType, VmmType},
};
use std::path::PathBuf;
pub use vmm::measure::LaunchSpec;
pub use vmm::measure::Mode;
use vmm::measure::{
    compute_with_table, dump_vmsas, hashes_area, read_firmware, Computed, EsOptions, KernelFiles,
};

/// `sevmirror measure`.
#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// The firmware image: ours (`sevmirror firmware --out FILE`) or an OVMF build such
    /// as /usr/share/ovmf/OVMF.fd (default: the embedded firmware, booting the embedded
    /// guest OS unless --kernel or --no-kernel says otherwise, as `run` does).
    #[arg(long, value_name = "FILE")]
    pub firmware: Option<PathBuf>,

    /// The launch type: "sev" (the firmware pages only) or "sev-es" (then every vCPU's
    /// initial VMSA too: give --vcpus and --vcpu-type).
    #[arg(long, value_name = "sev|sev-es", default_value = "sev", value_parser = parse_mode)]
    pub mode: Mode,

    /// The SEV-ES options.
    #[command(flatten)]
    pub es: EsArgs,

    /// The measured direct boot options.
    #[command(flatten)]
    pub kernel: KernelArgs,

    /// Print one JSON object (digest in hex and base64, the form `sevctl measurement build
    /// --launch-digest` takes) instead of the hex digest.
    #[arg(long)]
    pub json: bool,
}

/// What an SEV-ES digest depends on besides the firmware (`measure`, `owner verify`).
#[derive(Args, Debug, Clone, Default)]
pub struct EsArgs {
    /// SEV-ES: the number of vCPUs the guest is launched with (QEMU -smp).
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,

    /// SEV-ES: the vCPU model (QEMU -cpu), e.g. EPYC-v4, EPYC-Rome, EPYC-Milan,
    /// EPYC-Genoa; its family/model/stepping is in every VMSA's RDX.
    #[arg(long, value_name = "TYPE", value_parser = parse_vcpu_type)]
    pub vcpu_type: Option<VcpuType>,

    /// SEV-ES: whose reset state the VMSAs hold: "qemu" (QEMU on Linux >= 6.10 with
    /// KVM_SEV_INIT2, sev-snp-measure's default), "qemu-es-init" (the legacy
    /// KVM_SEV_ES_INIT: no FPU state, what sevctl's `vmsa build` makes) or "ec2".
    #[arg(long, value_name = "VMM", value_parser = parse_vmm_type)]
    pub vmm_type: Option<VmmType>,

    /// SEV-ES: the migration-helper vCPUs the guest's mirror gets at launch (`run
    /// --helpers N`); their VMSAs are measured after the guest's (default 0: none).
    #[arg(long, value_name = "N")]
    pub helpers: Option<u16>,

    /// SEV-ES: also write each measured VMSA to DIR/vmsa<N>.bin (created if missing), as
    /// sev-snp-measure --dump-vmsa names them, in the order measured: the guest's vCPUs,
    /// then the helpers' (numbered on).
    #[arg(long, value_name = "DIR")]
    pub dump_vmsa: Option<PathBuf>,
}

/// The measured direct boot options of `measure` and `owner verify` (QEMU's `-kernel`,
/// `-initrd`, `-append` with `kernel-hashes=on`), for SEV and SEV-ES alike.
#[derive(Args, Debug, Default, Clone)]
pub struct KernelArgs {
    /// Kernel booted directly (a bzImage, or an ELF guest OS): the digest then covers the
    /// SEV hashes table of kernel, initrd and command line.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,

    /// Initrd passed with --kernel (none: the empty initrd's hash).
    #[arg(long, value_name = "FILE", requires = "kernel")]
    pub initrd: Option<PathBuf>,

    /// Kernel command line passed with --kernel (none: the empty line).
    #[arg(long, value_name = "TEXT", requires = "kernel")]
    pub append: Option<String>,

    /// With the embedded firmware: a launch without a kernel (`run --no-kernel`), not the
    /// embedded guest OS that `run` boots by default.
    #[arg(long, conflicts_with = "kernel")]
    pub no_kernel: bool,
}

impl KernelArgs {
    /// Whether a launch of the embedded firmware with these options boots the embedded
    /// guest OS (what `run` does without --kernel and --no-kernel).
    pub fn embedded_os(&self, embedded_firmware: bool) -> bool {
        embedded_firmware && self.kernel.is_none() && !self.no_kernel
    }
}

impl KernelArgs {
    /// The files, if a kernel is given.
    pub fn files(&self) -> Option<KernelFiles<'_>> {
        Some(KernelFiles {
            kernel: self.kernel.as_deref()?,
            initrd: self.initrd.as_deref(),
            append: self.append.as_deref(),
        })
    }
}

/// `--mode` (vmm `Mode::parse`).
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::parse(s)
}

/// `--vcpu-type`.
pub fn parse_vcpu_type(s: &str) -> Result<VcpuType, String> {
    VcpuType::from_name(s).map_err(|e| e.to_string())
}

/// `--vmm-type`.
pub fn parse_vmm_type(s: &str) -> Result<VmmType, String> {
    VmmType::from_name(s).map_err(|e| e.to_string())
}

/// Checks that the SEV-ES options fit `mode` (vmm `LaunchSpec::from_options`). The error
/// is a usage message.
pub fn launch_spec(mode: Mode, es: &EsArgs) -> Result<LaunchSpec, String> {
    LaunchSpec::from_options(
        mode,
        &EsOptions {
            vcpus: es.vcpus,
            vcpu_type: es.vcpu_type,
            vmm_type: es.vmm_type,
            helpers: es.helpers,
            dump_vmsa: es.dump_vmsa.is_some(),
        },
    )
}

/// The launch digest of `image` as `spec` says, booting the kernel the options name: the
/// embedded guest OS when `image` is the embedded firmware and neither --kernel nor
/// --no-kernel is given (what `run` boots).
pub fn compute(
    image: &[u8],
    spec: &LaunchSpec,
    kernel: &KernelArgs,
    embedded_firmware: bool,
) -> anyhow::Result<Computed> {
    if kernel.embedded_os(embedded_firmware) {
        hashes_area(image)?;
        let table = SevHashes::of(os_image::IMAGE, &[], b"").table();
        return Ok(compute_with_table(image, spec, Some(table))?);
    }
    Ok(vmm::measure::compute(image, spec, kernel.files().as_ref())?)
}

/// Exits with a usage error (status 2), as clap does for malformed arguments.
pub fn usage_error(msg: &str) -> ! {
    crate::cli::Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}

/// Runs `sevmirror measure`.
pub fn run(args: &MeasureArgs) -> anyhow::Result<()> {
    let spec = launch_spec(args.mode, &args.es).unwrap_or_else(|m| usage_error(&m));
    let (image, name) = match &args.firmware {
        Some(path) => (read_firmware(path)?, path.display().to_string()),
        None => (
            firmware_image::IMAGE.to_vec(),
            String::from("the embedded firmware"),
        ),
    };
    let embedded = args.firmware.is_none();
    // SEV-ES and --kernel need the footer table themselves and say so if it is missing.
    if fwtable::report(&image).is_err() && spec == LaunchSpec::Sev && args.kernel.kernel.is_none() {
        log::warn!(
            "{name} has no OVMF footer GUID table: QEMU cannot launch it under SEV (no reset vector or SEV metadata); the digest is that of the bytes"
        );
    }
    let computed = compute(&image, &spec, &args.kernel, embedded)
        .with_context(|| format!("cannot measure {name}"))?;
    let files = match &args.es.dump_vmsa {
        Some(dir) => dump_vmsas(dir, &computed.vmsas)?,
        None => Vec::new(),
    };
    let digest = hex(&computed.digest);
    if args.json {
        let mut v = json!({
            "firmware": name,
            "size": image.len(),
            "mode": args.mode.name(),
            "launch-digest": digest,
            "launch-digest-base64": encode_base64(&computed.digest),
        });
        if let Some(t) = &computed.hashes_table {
            v["kernel"] = match &args.kernel.kernel {
                Some(k) => json!(k.display().to_string()),
                None => json!("the embedded guest OS"),
            };
            v["initrd"] = json!(args.kernel.initrd.as_ref().map(|p| p.display().to_string()));
            v["append"] = json!(args.kernel.append);
            v["kernel-hashes-table"] = json!(hex(t));
        }
        if let LaunchSpec::SevEs {
            vcpus,
            vcpu_type,
            vmm,
            helpers,
        } = spec
        {
            v["vcpus"] = json!(vcpus);
            v["helpers"] = json!(helpers);
            v["vcpu-type"] = json!(vcpu_type.name);
            v["vcpu-sig"] = json!(vcpu_type.signature());
            v["vmm-type"] = json!(vmm.name());
            v["vmsa-files"] = json!(files
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>());
        }
        println!("{v}");
    } else {
        println!("{digest}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn es_options_reach_the_spec_and_bad_names_say_what_is_known() {
        let t = parse_vcpu_type("EPYC-Milan").unwrap();
        let es = EsArgs {
            vcpus: Some(2),
            vcpu_type: Some(t),
            helpers: Some(1),
            ..EsArgs::default()
        };
        assert_eq!(
            launch_spec(Mode::SevEs, &es),
            Ok(LaunchSpec::SevEs {
                vcpus: 2,
                vcpu_type: t,
                vmm: VmmType::Qemu,
                helpers: 1,
            })
        );
        assert!(launch_spec(Mode::Sev, &es)
            .unwrap_err()
            .contains("--vcpus, --vcpu-type, --helpers"));
        assert!(parse_vcpu_type("Skylake")
            .unwrap_err()
            .contains("EPYC-Genoa"));
        assert_eq!(parse_vmm_type("qemu-es-init"), Ok(VmmType::QemuEsInit));
        assert!(parse_vmm_type("gce").is_err());
    }
}
