//! `sevmirror measure`: the launch digest an SEV launch of a firmware image produces, as
//! QEMU + OVMF users get it: QEMU hands the whole flash image to one LAUNCH_UPDATE_DATA
//! (`sev_encrypt_flash`), so the digest is SHA-256 of the file
//! (`sev_platform::measure::expected_digest`; `sevctl measurement build --firmware`
//! computes the same). No VMSAs (SEV-ES).
//!
//! With `--kernel` (measured direct boot, QEMU's `-kernel/-initrd/-append` with
//! `kernel-hashes=on`), QEMU then writes the SEV hashes table (`os_loader::hashes`: the
//! SHA-256 of kernel, initrd and command line, padded to 176 bytes) into the page the
//! firmware's footer entry 7255371f-3a3b-4b04-927b-1da6efa8d454 names and measures those
//! 176 bytes with a second LAUNCH_UPDATE_DATA: the digest is SHA-256(firmware ‖ table),
//! wherever the page is (`sev-snp-measure --mode sev` computes the same). A firmware
//! without that entry, or with an empty one (Debian's OVMF.fd), cannot check a kernel;
//! QEMU and sev-snp-measure refuse it, and so does this command.

use anyhow::{bail, Context};
use clap::Args;
use fwtable::{guid, EntryValue, Table};
use os_loader::hashes::{self, BlobHasher, SevHashes};
use serde_json::json;
use sev_platform::{measure::LaunchDigest, owner::encode_base64};
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

    /// The launch type. Only "sev": SEV-ES digests also cover every vCPU's initial VMSA
    /// (it depends on the VMM and the CPU model) and are not supported.
    #[arg(long, value_name = "sev", default_value = "sev", value_parser = parse_mode)]
    pub mode: Mode,

    #[command(flatten)]
    pub kernel: KernelArgs,

    /// Print one JSON object (digest in hex and base64, the form `sevctl measurement build
    /// --launch-digest` takes) instead of the hex digest.
    #[arg(long)]
    pub json: bool,
}

/// The measured direct boot options of `measure` and `owner verify` (QEMU's `-kernel`,
/// `-initrd`, `-append` with `kernel-hashes=on`).
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

/// Reads a firmware image, capped at [`MAX_FIRMWARE`].
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

/// SHA-256 of a file, read in chunks (an initrd can be large).
fn hash_file(what: &str, path: &Path) -> anyhow::Result<hashes::Hash> {
    let mut file = std::fs::File::open(path)
        .with_context(|| format!("cannot read {what} {}", path.display()))?;
    let mut h = BlobHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {what} {}", path.display()))?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// Checks that `image` declares a hashes-table area QEMU would write the table into, as
/// QEMU's `sev_add_kernel_loader_hashes` does (entry present, base non-zero, room for the
/// padded table); returns its base and size.
pub fn hashes_area(image: &[u8]) -> anyhow::Result<(u32, u32)> {
    const WHY: &str = "it cannot check a --kernel (QEMU and sev-snp-measure refuse it too); use a firmware built for measured direct boot (ours, or OVMF's AmdSev build)";
    let table = Table::parse(image)
        .map_err(|e| anyhow::anyhow!("the firmware has no OVMF footer table ({e}): {WHY}"))?;
    let entry = table
        .find(guid::SEV_HASH_TABLE)
        .context("the firmware's footer table is malformed")?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the firmware has no SEV hashes table entry ({}): {WHY}",
                guid::SEV_HASH_TABLE
            )
        })?;
    let area = match EntryValue::decode(image, &entry) {
        Ok(EntryValue::SevHashTable(area)) => area,
        Ok(other) => bail!("unexpected SEV hashes table entry {other:?}"),
        Err(e) => bail!("the firmware's SEV hashes table entry is malformed: {e}"),
    };
    if area.base == 0 {
        bail!(
            "the firmware's SEV hashes table entry is empty (base {:#x}, size {:#x}): {WHY}",
            area.base,
            area.size
        );
    }
    if (area.size as usize) < hashes::PADDED_SIZE {
        bail!(
            "the firmware's SEV hashes table area ({:#x}+{:#x}) is smaller than the {}-byte table: {WHY}",
            area.base,
            area.size,
            hashes::PADDED_SIZE
        );
    }
    Ok((area.base, area.size))
}

/// The SEV hashes table a launch of `image` with these options measures after the
/// firmware, or `None` without `--kernel`.
pub fn kernel_hashes_table(
    image: &[u8],
    args: &KernelArgs,
) -> anyhow::Result<Option<[u8; hashes::PADDED_SIZE]>> {
    let Some(kernel) = &args.kernel else {
        return Ok(None);
    };
    hashes_area(image)?;
    let mut head = Vec::new();
    std::fs::File::open(kernel)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .with_context(|| format!("cannot read kernel {}", kernel.display()))?;
    if let Err(e) = os_loader::load::detect(&head) {
        log::warn!(
            "{}: {e}; the digest is that of its bytes, but the firmware will not boot it",
            kernel.display()
        );
    }
    let hashes = SevHashes {
        kernel: hash_file("kernel", kernel)?,
        initrd: match &args.initrd {
            Some(path) => hash_file("initrd", path)?,
            None => hashes::sha256(&[]),
        },
        cmdline: hashes::cmdline_hash(args.append.as_deref().unwrap_or("").as_bytes()),
    };
    Ok(Some(hashes.table()))
}

/// The launch digest: the firmware's LAUNCH_UPDATE_DATA, then the hashes table's.
pub fn launch_digest(image: &[u8], table: Option<&[u8]>) -> [u8; 32] {
    let mut d = LaunchDigest::new();
    d.update_data(image);
    if let Some(t) = table {
        d.update_data(t);
    }
    d.value()
}

/// Runs `sevmirror measure`.
pub fn run(args: &MeasureArgs) -> anyhow::Result<()> {
    let path = &args.firmware;
    let image = read_firmware(path)?;
    if fwtable::report(&image).is_err() && args.kernel.kernel.is_none() {
        log::warn!(
            "{} has no OVMF footer GUID table: QEMU cannot launch it under SEV (no reset vector or SEV metadata); the digest is that of the bytes",
            path.display()
        );
    }
    let table = kernel_hashes_table(&image, &args.kernel)
        .with_context(|| format!("cannot measure {} with --kernel", path.display()))?;
    let digest = launch_digest(&image, table.as_ref().map(|t| &t[..]));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    if args.json {
        let mut v = json!({
            "firmware": path.display().to_string(),
            "size": image.len(),
            "mode": args.mode.name(),
            "launch-digest": hex,
            "launch-digest-base64": encode_base64(&digest),
        });
        if let (Some(t), Some(k)) = (&table, &args.kernel.kernel) {
            v["kernel"] = json!(k.display().to_string());
            v["initrd"] = json!(args.kernel.initrd.as_ref().map(|p| p.display().to_string()));
            v["append"] = json!(args.kernel.append);
            v["kernel-hashes-table"] =
                json!(t.iter().map(|b| format!("{b:02x}")).collect::<String>());
        }
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

    #[test]
    fn our_firmware_declares_a_hashes_area_qemu_would_use() {
        // The page lies in RAM outside the image, as OVMF AmdSev's does: QEMU writes the
        // table there and measures only the table, after the flash.
        let (base, size) = hashes_area(firmware_image::IMAGE).unwrap();
        assert_eq!(u64::from(base), guest_abi::layout::SEV_HASH_TABLE_BASE);
        assert_eq!(u64::from(size), guest_abi::layout::SEV_HASH_TABLE_SIZE);
        assert!(hashes_area(&[0u8; 4096]).is_err());
    }

    #[test]
    fn the_digest_is_the_image_then_the_table() {
        use sha2::{Digest, Sha256};
        let table = SevHashes::of(b"k", b"", b"").table();
        let both: [u8; 32] = Sha256::new()
            .chain_update(b"image")
            .chain_update(table)
            .finalize()
            .into();
        assert_eq!(launch_digest(b"image", Some(&table)), both);
        assert_eq!(
            launch_digest(b"image", None),
            sev_platform::measure::expected_digest(b"image")
        );
    }
}
