//! `sevmirror measure`: the launch digest an SEV or SEV-ES launch of a firmware image
//! produces, as QEMU + OVMF users get it. QEMU hands the whole flash image to one
//! LAUNCH_UPDATE_DATA (`sev_encrypt_flash`), so the SEV digest is SHA-256 of the file
//! (`sev_platform::measure::expected_digest`; `sevctl measurement build --firmware`
//! computes the same). For SEV-ES, KVM then measures every vCPU's initial VMSA in vCPU
//! order (`expected_es_digest` over `sev_platform::vmsa::ResetVmsas`): the same digest as
//! `sev-snp-measure --mode seves --vmm-type QEMU` (the default `--vmm-type qemu`) or as
//! sevctl's `measurement build` with `sevctl vmsa build` files (`--vmm-type
//! qemu-es-init`). No kernel hashes (`-kernel` with `kernel-hashes=on` adds a table this
//! command does not build).

use anyhow::{bail, Context};
use clap::{Args, CommandFactory};
use serde_json::json;
use sev_platform::{
    measure::{expected_digest, expected_es_digest},
    owner::encode_base64,
    vmsa::{ResetVmsas, VcpuType, VmmType, Vmsa},
};
use std::{
    io::Read,
    path::{Path, PathBuf},
};

/// Largest firmware image read (far above any flash image QEMU maps below 4 GiB).
pub const MAX_FIRMWARE: usize = 64 << 20;

/// `sevmirror measure`.
#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// The firmware image: ours (`sevmirror firmware --out FILE`) or an OVMF build such
    /// as /usr/share/ovmf/OVMF.fd.
    #[arg(long, value_name = "FILE")]
    pub firmware: PathBuf,

    /// The launch type: "sev" (the firmware pages only) or "sev-es" (then every vCPU's
    /// initial VMSA too: give --vcpus and --vcpu-type).
    #[arg(long, value_name = "sev|sev-es", default_value = "sev", value_parser = parse_mode)]
    pub mode: Mode,

    /// The SEV-ES options.
    #[command(flatten)]
    pub es: EsArgs,

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

    /// SEV-ES: also write each measured VMSA to DIR/vmsa<N>.bin (created if missing), as
    /// sev-snp-measure --dump-vmsa names them.
    #[arg(long, value_name = "DIR")]
    pub dump_vmsa: Option<PathBuf>,
}

/// What kind of launch to compute the digest of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain SEV: the firmware pages only.
    Sev,
    /// SEV-ES: the firmware pages, then the VMSAs.
    SevEs,
}

impl Mode {
    /// The command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sev => "sev",
            Mode::SevEs => "sev-es",
        }
    }
}

/// `--mode`: "sev" or "sev-es" (also "seves", sev-snp-measure's spelling); SNP is refused
/// with the reason.
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "sev" => Ok(Mode::Sev),
        "sev-es" | "es" | "seves" => Ok(Mode::SevEs),
        "sev-snp" | "snp" => Err(String::from(
            "SEV-SNP is not supported (it has its own launch digest); \"sev\" and \"sev-es\" are",
        )),
        _ => Err(format!("{s:?}: expected \"sev\" or \"sev-es\"")),
    }
}

/// `--vcpu-type`.
pub fn parse_vcpu_type(s: &str) -> Result<VcpuType, String> {
    VcpuType::from_name(s).map_err(|e| e.to_string())
}

/// `--vmm-type`.
pub fn parse_vmm_type(s: &str) -> Result<VmmType, String> {
    VmmType::from_name(s).map_err(|e| e.to_string())
}

/// A launch whose digest can be computed from the firmware alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchSpec {
    /// Plain SEV.
    Sev,
    /// SEV-ES with these vCPUs.
    SevEs {
        /// How many.
        vcpus: u32,
        /// Which model.
        vcpu_type: VcpuType,
        /// Whose reset state.
        vmm: VmmType,
    },
}

/// Checks that the SEV-ES options fit `mode`: all of --vcpus and --vcpu-type for sev-es,
/// none of them for sev. The error is a usage message.
pub fn launch_spec(mode: Mode, es: &EsArgs) -> Result<LaunchSpec, String> {
    match mode {
        Mode::Sev => {
            let given: Vec<&str> = [
                es.vcpus.map(|_| "--vcpus"),
                es.vcpu_type.map(|_| "--vcpu-type"),
                es.vmm_type.map(|_| "--vmm-type"),
                es.dump_vmsa.as_ref().map(|_| "--dump-vmsa"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if given.is_empty() {
                Ok(LaunchSpec::Sev)
            } else {
                Err(format!(
                    "{}: only for an SEV-ES launch (--mode sev-es); a plain SEV digest covers the firmware alone",
                    given.join(", ")
                ))
            }
        }
        Mode::SevEs => {
            let vcpus = es.vcpus.ok_or(
                "--mode sev-es needs --vcpus N: every vCPU's VMSA is part of the launch digest",
            )?;
            let max = sev_platform::vmsa::reset::MAX_VCPUS;
            if vcpus == 0 || vcpus > max {
                return Err(format!("--vcpus {vcpus}: expected 1 to {max}"));
            }
            let vcpu_type = es.vcpu_type.ok_or(
                "--mode sev-es needs --vcpu-type TYPE (e.g. EPYC-v4): the vCPU signature is in every VMSA",
            )?;
            Ok(LaunchSpec::SevEs {
                vcpus,
                vcpu_type,
                vmm: es.vmm_type.unwrap_or_default(),
            })
        }
    }
}

/// A computed launch digest and the VMSAs it covers (none for SEV).
#[derive(Debug)]
pub struct Computed {
    /// The launch digest.
    pub digest: [u8; 32],
    /// The VMSAs measured after the firmware, in vCPU order.
    pub vmsas: Vec<Vmsa>,
}

/// The digest of launching `image` as `spec` says.
pub fn compute(image: &[u8], spec: &LaunchSpec) -> anyhow::Result<Computed> {
    match *spec {
        LaunchSpec::Sev => Ok(Computed {
            digest: expected_digest(image),
            vmsas: Vec::new(),
        }),
        LaunchSpec::SevEs {
            vcpus,
            vcpu_type,
            vmm,
        } => {
            let reset = ResetVmsas::for_firmware(image, vcpu_type, vmm)
                .context("cannot compute the SEV-ES VMSAs")?;
            let vmsas = reset.all(vcpus)?;
            Ok(Computed {
                digest: expected_es_digest(image, &vmsas),
                vmsas,
            })
        }
    }
}

/// Writes `vmsas` to `dir/vmsa<N>.bin` (4096 bytes each).
pub fn dump_vmsas(dir: &Path, vmsas: &[Vmsa]) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let mut written = Vec::new();
    for (i, v) in vmsas.iter().enumerate() {
        let path = dir.join(format!("vmsa{i}.bin"));
        std::fs::write(&path, v.to_bytes())
            .with_context(|| format!("cannot write {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Reads a firmware image, capped at [`MAX_FIRMWARE`]; an empty file is an error.
pub fn read_firmware(path: &Path) -> anyhow::Result<Vec<u8>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read firmware {}", path.display()))?;
    let mut image = Vec::new();
    file.take(MAX_FIRMWARE as u64 + 1)
        .read_to_end(&mut image)
        .with_context(|| format!("cannot read firmware {}", path.display()))?;
    if image.is_empty() {
        bail!("firmware {} is empty", path.display());
    }
    if image.len() > MAX_FIRMWARE {
        bail!(
            "firmware {} is larger than {} MiB; that is no flash image",
            path.display(),
            MAX_FIRMWARE >> 20
        );
    }
    Ok(image)
}

/// Exits with a usage error (status 2), as clap does for malformed arguments.
pub fn usage_error(msg: &str) -> ! {
    crate::cli::Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `sevmirror measure`.
pub fn run(args: &MeasureArgs) -> anyhow::Result<()> {
    let spec = launch_spec(args.mode, &args.es).unwrap_or_else(|m| usage_error(&m));
    let path = &args.firmware;
    let image = read_firmware(path)?;
    if fwtable::report(&image).is_err() && spec == LaunchSpec::Sev {
        log::warn!(
            "{} has no OVMF footer GUID table: QEMU cannot launch it under SEV (no reset vector or SEV metadata); the digest is that of the bytes",
            path.display()
        );
    }
    let computed =
        compute(&image, &spec).with_context(|| format!("firmware {}", path.display()))?;
    let files = match &args.es.dump_vmsa {
        Some(dir) => dump_vmsas(dir, &computed.vmsas)?,
        None => Vec::new(),
    };
    let digest = hex(&computed.digest);
    if args.json {
        let mut v = json!({
            "firmware": path.display().to_string(),
            "size": image.len(),
            "mode": args.mode.name(),
            "launch-digest": digest,
            "launch-digest-base64": encode_base64(&computed.digest),
        });
        if let LaunchSpec::SevEs {
            vcpus,
            vcpu_type,
            vmm,
        } = spec
        {
            v["vcpus"] = json!(vcpus);
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
    fn modes_parse_and_snp_says_why() {
        assert_eq!(parse_mode("sev"), Ok(Mode::Sev));
        assert_eq!(parse_mode("SEV"), Ok(Mode::Sev));
        assert_eq!(parse_mode("sev-es"), Ok(Mode::SevEs));
        assert_eq!(parse_mode("seves"), Ok(Mode::SevEs));
        assert!(parse_mode("snp").unwrap_err().contains("not supported"));
        assert!(parse_mode("tdx").is_err());
    }

    #[test]
    fn es_options_must_fit_the_mode() {
        let none = EsArgs::default();
        assert_eq!(launch_spec(Mode::Sev, &none), Ok(LaunchSpec::Sev));
        let t = parse_vcpu_type("EPYC-Milan").unwrap();
        let es = EsArgs {
            vcpus: Some(2),
            vcpu_type: Some(t),
            ..EsArgs::default()
        };
        assert_eq!(
            launch_spec(Mode::SevEs, &es),
            Ok(LaunchSpec::SevEs {
                vcpus: 2,
                vcpu_type: t,
                vmm: VmmType::Qemu
            })
        );
        assert!(launch_spec(Mode::Sev, &es)
            .unwrap_err()
            .contains("--vcpus, --vcpu-type"));
        let no_type = EsArgs {
            vcpus: Some(2),
            ..EsArgs::default()
        };
        assert!(launch_spec(Mode::SevEs, &no_type)
            .unwrap_err()
            .contains("--vcpu-type"));
        assert!(launch_spec(Mode::SevEs, &none)
            .unwrap_err()
            .contains("--vcpus"));
        let zero = EsArgs {
            vcpus: Some(0),
            ..es.clone()
        };
        assert!(launch_spec(Mode::SevEs, &zero)
            .unwrap_err()
            .contains("1 to"));
        assert!(parse_vcpu_type("Skylake")
            .unwrap_err()
            .contains("EPYC-Genoa"));
        assert_eq!(parse_vmm_type("qemu-es-init"), Ok(VmmType::QemuEsInit));
        assert!(parse_vmm_type("gce").is_err());
    }

    #[test]
    fn es_digest_covers_the_vmsas_in_order() {
        let image = firmware_image::IMAGE;
        let spec = |vcpus| LaunchSpec::SevEs {
            vcpus,
            vcpu_type: parse_vcpu_type("EPYC-v4").unwrap(),
            vmm: VmmType::Qemu,
        };
        let one = compute(image, &spec(1)).unwrap();
        let two = compute(image, &spec(2)).unwrap();
        assert_eq!(two.vmsas[0], one.vmsas[0]);
        assert_ne!(two.vmsas[1], two.vmsas[0], "the AP starts elsewhere");
        let mut bytes = image.to_vec();
        bytes.extend_from_slice(&two.vmsas[0].to_bytes());
        bytes.extend_from_slice(&two.vmsas[1].to_bytes());
        assert_eq!(two.digest, expected_digest(&bytes));
        assert!(compute(&[0u8; 4096], &spec(1)).is_err(), "no reset block");
    }
}
