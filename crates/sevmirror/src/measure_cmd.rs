//! `sevmirror measure`: the launch digest an SEV launch of a firmware image produces, as
//! QEMU + OVMF users get it: QEMU hands the whole flash image to one LAUNCH_UPDATE_DATA
//! (`sev_encrypt_flash`), so the digest is SHA-256 of the file
//! (`sev_platform::measure::expected_digest`; `sevctl measurement build --firmware`
//! computes the same). No kernel hashes (`-kernel` with `kernel-hashes=on` adds a table
//! this command does not build), no VMSAs (SEV-ES).

use anyhow::{bail, Context};
use clap::Args;
use serde_json::json;
use sev_platform::{measure::expected_digest, owner::encode_base64};
use std::{io::Read, path::PathBuf};

/// Largest firmware image read (far above any flash image QEMU maps below 4 GiB).
pub const MAX_FIRMWARE: usize = 64 << 20;

/// `sevmirror measure`.
#[derive(Args, Debug)]
pub struct MeasureArgs {
    /// The firmware image: ours (`sevmirror firmware --out FILE`) or an OVMF build such
    /// as /usr/share/ovmf/OVMF.fd.
    #[arg(long, value_name = "FILE")]
    pub firmware: PathBuf,

    /// The launch type. Only "sev": SEV-ES digests also cover every vCPU's initial VMSA
    /// (it depends on the VMM and the CPU model) and are not supported.
    #[arg(long, value_name = "sev", default_value = "sev", value_parser = parse_mode)]
    pub mode: Mode,

    /// Print one JSON object (digest in hex and base64, the form `sevctl measurement build
    /// --launch-digest` takes) instead of the hex digest.
    #[arg(long)]
    pub json: bool,
}

/// What kind of launch to compute the digest of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain SEV: the firmware pages only.
    Sev,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sev => "sev",
        }
    }
}

/// `--mode`: "sev"; SEV-ES and SNP are refused with the reason.
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "sev" => Ok(Mode::Sev),
        "sev-es" | "es" | "seves" => Err(String::from(
            "SEV-ES is not supported: its launch digest also covers each vCPU's initial VMSA, \
             which depends on the VMM and CPU model; only \"sev\" is",
        )),
        "sev-snp" | "snp" => Err(String::from(
            "SEV-SNP is not supported (it has its own launch digest); only \"sev\" is",
        )),
        _ => Err(format!("{s:?}: only \"sev\" is supported")),
    }
}

/// Runs `sevmirror measure`.
pub fn run(args: &MeasureArgs) -> anyhow::Result<()> {
    let path = &args.firmware;
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
    if fwtable::report(&image).is_err() {
        log::warn!(
            "{} has no OVMF footer GUID table: QEMU cannot launch it under SEV (no reset vector or SEV metadata); the digest is that of the bytes",
            path.display()
        );
    }
    let digest = expected_digest(&image);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if args.json {
        let v = json!({
            "firmware": path.display().to_string(),
            "size": image.len(),
            "mode": args.mode.name(),
            "launch-digest": hex,
            "launch-digest-base64": encode_base64(&digest),
        });
        println!("{v}");
    } else {
        println!("{hex}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sev_mode_is_accepted_and_es_says_why() {
        assert_eq!(parse_mode("sev"), Ok(Mode::Sev));
        assert_eq!(parse_mode("SEV"), Ok(Mode::Sev));
        assert!(parse_mode("sev-es").unwrap_err().contains("VMSA"));
        assert!(parse_mode("snp").unwrap_err().contains("not supported"));
        assert!(parse_mode("tdx").is_err());
    }
}
