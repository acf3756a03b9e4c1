//! `sevmirror measure`: the launch digest an SEV or SEV-ES launch of a firmware image
//! produces, as QEMU + OVMF users get it. The digest is SHA-256 over what the launch
//! measures, in order:
//!
//! 1. The firmware: QEMU hands the whole flash image to one LAUNCH_UPDATE_DATA
//!    (`sev_encrypt_flash`). For plain SEV without a kernel that is all
//!    (`sev_platform::measure::expected_digest`; `sevctl measurement build --firmware`
//!    computes the same).
//! 2. With `--kernel` (measured direct boot, QEMU's `-kernel/-initrd/-append` with
//!    `kernel-hashes=on`), the SEV hashes table (`os_loader::hashes`: the SHA-256 of
//!    kernel, initrd and command line, padded to 176 bytes), which QEMU writes into the
//!    page the firmware's footer entry 7255371f-3a3b-4b04-927b-1da6efa8d454 names and
//!    measures with a second LAUNCH_UPDATE_DATA, wherever the page is. A firmware without that entry, or
//!    with an empty one (Debian's OVMF.fd), cannot check a kernel; QEMU and sev-snp-measure
//!    refuse it, and so does this command.
//! 3. For SEV-ES (`--mode sev-es`), every vCPU's initial VMSA in vCPU order, which KVM
//!    measures at LAUNCH_UPDATE_VMSA after all the data (`sev_platform::vmsa::ResetVmsas`).
//! 4. For SEV-ES with `--helpers N`, the VMSAs of the N migration-helper vCPUs of the
//!    guest's mirror VM, in helper order: sevmirror creates the mirror during the launch
//!    and its LAUNCH_UPDATE_VMSA (on the mirror, which shares the owner's context) comes
//!    after the owner's and before LAUNCH_MEASURE, so the kernel measures the owner's
//!    vCPUs first, then the mirror's. Each is built from the firmware's helper descriptor
//!    (`vmm::firmware::helper_vmsas`: its entry point in 32-bit flat protected mode, its
//!    segments, a stack in the helper region).
//!
//! `sev-snp-measure --mode sev|seves [--kernel ...]` computes the same digests (for SEV-ES
//! with the default `--vmm-type qemu`), and so does sevctl's `measurement build` with
//! `sevctl vmsa build` files for SEV-ES without a kernel (`--vmm-type qemu-es-init`).

use anyhow::{bail, Context};
use clap::{Args, CommandFactory};
use fwtable::{guid, EntryValue, Table};
use os_loader::hashes::{self, BlobHasher, SevHashes};
use serde_json::json;
use sev_platform::{
    measure::LaunchDigest,
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

/// What kind of launch to compute the digest of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Plain SEV: the firmware pages (and the kernel hashes) only.
    Sev,
    /// SEV-ES: the firmware pages (and the kernel hashes), then the VMSAs.
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

/// The launch mode with what its VMSAs depend on.
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
        /// Migration-helper vCPUs measured after the guest's.
        helpers: u16,
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
                es.helpers.map(|_| "--helpers"),
                es.dump_vmsa.as_ref().map(|_| "--dump-vmsa"),
            ]
            .into_iter()
            .flatten()
            .collect();
            if given.is_empty() {
                Ok(LaunchSpec::Sev)
            } else {
                Err(format!(
                    "{}: only for an SEV-ES launch (--mode sev-es); a plain SEV digest has no VMSAs",
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
                helpers: es.helpers.unwrap_or(0),
            })
        }
    }
}

/// A computed launch digest and what it covers after the firmware.
#[derive(Debug)]
pub struct Computed {
    /// The launch digest.
    pub digest: [u8; 32],
    /// The SEV hashes table measured after the firmware (with `--kernel`).
    pub hashes_table: Option<[u8; hashes::PADDED_SIZE]>,
    /// The VMSAs measured after the data, in vCPU order, then the helpers' (none for
    /// SEV).
    pub vmsas: Vec<Vmsa>,
}

/// The digest of launching `image` as `spec` says, booting `kernel` directly if it names
/// one.
/// `embedded_firmware`: `image` is the embedded firmware, which boots the embedded guest
/// OS unless `kernel` says otherwise.
pub fn compute(
    image: &[u8],
    spec: &LaunchSpec,
    kernel: &KernelArgs,
    embedded_firmware: bool,
) -> anyhow::Result<Computed> {
    let hashes_table = kernel_hashes_table(image, kernel, embedded_firmware)?;
    let vmsas = match *spec {
        LaunchSpec::Sev => Vec::new(),
        LaunchSpec::SevEs {
            vcpus,
            vcpu_type,
            vmm,
            helpers,
        } => {
            let mut vmsas = ResetVmsas::for_firmware(image, vcpu_type, vmm)
                .and_then(|reset| reset.all(vcpus))
                .context("cannot compute the SEV-ES VMSAs")?;
            if helpers > 0 {
                vmsas.extend(
                    vmm::firmware::image_helper_vmsas(image, helpers, vmm)
                        .context("cannot compute the helper vCPUs' VMSAs")?,
                );
            }
            vmsas
        }
    };
    Ok(Computed {
        digest: launch_digest(image, hashes_table.as_ref().map(|t| &t[..]), &vmsas),
        hashes_table,
        vmsas,
    })
}

/// The launch digest: the firmware's LAUNCH_UPDATE_DATA, the hashes table's (if any),
/// then LAUNCH_UPDATE_VMSA of every vCPU in order (SEV-ES; none for SEV).
pub fn launch_digest(image: &[u8], table: Option<&[u8]>, vmsas: &[Vmsa]) -> [u8; 32] {
    let mut d = LaunchDigest::new();
    d.update_data(image);
    if let Some(t) = table {
        d.update_data(t);
    }
    for v in vmsas {
        d.update_vmsa(&v.to_bytes());
    }
    d.value()
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
    embedded_firmware: bool,
) -> anyhow::Result<Option<[u8; hashes::PADDED_SIZE]>> {
    if args.embedded_os(embedded_firmware) {
        hashes_area(image)?;
        return Ok(Some(SevHashes::of(os_image::IMAGE, &[], b"").table()));
    }
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
    use sev_platform::measure::{expected_digest, expected_es_digest};
    use sha2::{Digest, Sha256};

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
                vmm: VmmType::Qemu,
                helpers: 0,
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

    fn es_spec(vcpus: u32) -> LaunchSpec {
        LaunchSpec::SevEs {
            vcpus,
            vcpu_type: parse_vcpu_type("EPYC-v4").unwrap(),
            vmm: VmmType::Qemu,
            helpers: 0,
        }
    }

    #[test]
    fn helper_vmsas_come_after_the_guests_and_change_the_digest() {
        let image = firmware_image::IMAGE;
        let no_kernel = KernelArgs::default();
        let with = |vcpus, helpers| LaunchSpec::SevEs {
            vcpus,
            vcpu_type: parse_vcpu_type("EPYC-v4").unwrap(),
            vmm: VmmType::Qemu,
            helpers,
        };
        let plain = compute(image, &es_spec(2), &no_kernel, false).unwrap();
        let one = compute(image, &with(2, 1), &no_kernel, false).unwrap();
        let two = compute(image, &with(2, 2), &no_kernel, false).unwrap();
        assert_eq!(one.vmsas.len(), 3);
        assert_eq!(one.vmsas[..2], plain.vmsas[..], "the guest's VMSAs first");
        assert_eq!(
            one.vmsas[2].rip,
            firmware_image::symbols::HELPER_ENTRY32,
            "the helper starts at the measured entry"
        );
        assert_eq!(two.vmsas[..3], one.vmsas[..], "helpers in order");
        assert_ne!(two.vmsas[3].rsp, two.vmsas[2].rsp, "each its own stack");
        let digests = [plain.digest, one.digest, two.digest];
        assert!(digests[0] != digests[1] && digests[1] != digests[2]);
        assert_eq!(one.digest, expected_es_digest(image, &one.vmsas));
        // The helper count belongs to SEV-ES.
        let es = EsArgs {
            helpers: Some(1),
            ..EsArgs::default()
        };
        assert!(launch_spec(Mode::Sev, &es)
            .unwrap_err()
            .contains("--helpers"));
        assert!(
            compute(image, &with(1, 9), &no_kernel, false).is_err(),
            "3 at most"
        );
    }

    #[test]
    fn es_digest_covers_the_vmsas_in_order() {
        let image = firmware_image::IMAGE;
        let no_kernel = KernelArgs::default();
        let one = compute(image, &es_spec(1), &no_kernel, false).unwrap();
        let two = compute(image, &es_spec(2), &no_kernel, false).unwrap();
        assert_eq!(two.vmsas[0], one.vmsas[0]);
        assert_ne!(two.vmsas[1], two.vmsas[0], "the AP starts elsewhere");
        let mut bytes = image.to_vec();
        bytes.extend_from_slice(&two.vmsas[0].to_bytes());
        bytes.extend_from_slice(&two.vmsas[1].to_bytes());
        assert_eq!(two.digest, expected_digest(&bytes));
        assert_eq!(two.digest, expected_es_digest(image, &two.vmsas));
        assert!(
            compute(&[0u8; 4096], &es_spec(1), &no_kernel, false).is_err(),
            "no reset block"
        );
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
    fn the_digest_is_the_image_then_the_table_then_the_vmsas() {
        let table = SevHashes::of(b"k", b"", b"").table();
        let both: [u8; 32] = Sha256::new()
            .chain_update(b"image")
            .chain_update(table)
            .finalize()
            .into();
        assert_eq!(launch_digest(b"image", Some(&table), &[]), both);
        assert_eq!(
            launch_digest(b"image", None, &[]),
            expected_digest(b"image")
        );

        // SEV-ES with a kernel: both LAUNCH_UPDATE_DATA blobs come before every VMSA.
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"not a kernel, only bytes to hash").unwrap();
        let args = KernelArgs {
            kernel: Some(kernel),
            ..KernelArgs::default()
        };
        let image = firmware_image::IMAGE;
        let es = compute(image, &es_spec(2), &args, false).unwrap();
        let table = es.hashes_table.expect("--kernel measures a table");
        assert_eq!(
            table,
            SevHashes::of(b"not a kernel, only bytes to hash", b"", b"").table()
        );
        let want: [u8; 32] = Sha256::new()
            .chain_update(image)
            .chain_update(table)
            .chain_update(es.vmsas[0].to_bytes())
            .chain_update(es.vmsas[1].to_bytes())
            .finalize()
            .into();
        assert_eq!(es.digest, want);
        let sev = compute(image, &LaunchSpec::Sev, &args, false).unwrap();
        assert_eq!(sev.hashes_table, Some(table));
        assert!(sev.vmsas.is_empty());
        assert_eq!(sev.digest, launch_digest(image, Some(&table), &[]));
    }
}
