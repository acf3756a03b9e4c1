//! The launch digest an SEV or SEV-ES launch of a firmware image
//! produces, as QEMU + OVMF users get it, computed from files alone (no KVM): what
//! `sevmirror measure` prints and `owner verify` expects. The digest is SHA-256 over what the launch
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
//!    ([`crate::firmware::helper_vmsas`]: its entry point in 32-bit flat protected mode, its
//!    segments, a stack in the helper region).
//!
//! `sev-snp-measure --mode sev|seves [--kernel ...]` computes the same digests (for SEV-ES
//! with the default `--vmm-type qemu`), and so does sevctl's `measurement build` with
//! `sevctl vmsa build` files for SEV-ES without a kernel (`--vmm-type qemu-es-init`).

use crate::firmware::{image_helper_vmsas, HelperVmsaError};
use fwtable::{guid, EntryValue, Table};
use os_loader::hashes::{self, BlobHasher, SevHashes};
use sev_platform::{
    measure::LaunchDigest,
    vmsa::{ResetVmsas, VcpuType, VmmType, Vmsa, VmsaError},
};
use std::{
    io::Read,
    path::{Path, PathBuf},
};

/// Largest firmware image read (far above any flash image QEMU maps below 4 GiB).
pub const MAX_FIRMWARE: usize = 64 << 20;

/// Why a firmware without a usable hashes-table area cannot be measured with a kernel.
const NO_KERNEL_CHECK: &str = "it cannot check a --kernel (QEMU and sev-snp-measure refuse it too); use a firmware built for measured direct boot (ours, or OVMF's AmdSev build)";

/// Why a launch digest cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file is ("firmware", "kernel", "initrd").
        what: &'static str,
        /// Which file.
        path: PathBuf,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// The firmware file is empty.
    #[error("firmware {} is empty", .0.display())]
    EmptyFirmware(PathBuf),
    /// The firmware file is larger than any flash image.
    #[error("firmware {} is larger than {} MiB; that is no flash image", .0.display(), MAX_FIRMWARE >> 20)]
    FirmwareTooLarge(PathBuf),
    /// The firmware declares no area QEMU would write the kernel hashes table into.
    #[error("{0}: {NO_KERNEL_CHECK}")]
    NoHashesArea(String),
    /// The SEV-ES reset VMSAs cannot be built for this firmware.
    #[error("cannot compute the SEV-ES VMSAs: {0}")]
    ResetVmsas(#[source] VmsaError),
    /// The helper vCPUs' VMSAs cannot be built for this firmware.
    #[error("cannot compute the helper vCPUs' VMSAs: {0}")]
    HelperVmsas(#[source] HelperVmsaError),
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// Which file or directory.
        path: PathBuf,
        /// The OS's reason.
        source: std::io::Error,
    },
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

    /// "sev" or "sev-es" (also "seves", sev-snp-measure's spelling); SNP is refused with
    /// the reason.
    pub fn parse(s: &str) -> Result<Mode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
        "sev" => Ok(Mode::Sev),
        "sev-es" | "es" | "seves" => Ok(Mode::SevEs),
        "sev-snp" | "snp" => Err(String::from(
            "SEV-SNP is not supported (it has its own launch digest); \"sev\" and \"sev-es\" are",
        )),
        _ => Err(format!("{s:?}: expected \"sev\" or \"sev-es\"")),
    }
    }
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

/// The SEV-ES options as given (`measure`, `owner verify`): each `None` if absent.
#[derive(Clone, Copy, Debug, Default)]
pub struct EsOptions {
    /// --vcpus.
    pub vcpus: Option<u32>,
    /// --vcpu-type.
    pub vcpu_type: Option<VcpuType>,
    /// --vmm-type (default: QEMU's).
    pub vmm_type: Option<VmmType>,
    /// --helpers (default 0).
    pub helpers: Option<u16>,
    /// --dump-vmsa was given.
    pub dump_vmsa: bool,
}

impl LaunchSpec {
    /// Checks that the SEV-ES options fit `mode`: --vcpus and --vcpu-type for sev-es,
    /// none of them for sev. The error is a usage message naming the options.
    pub fn from_options(mode: Mode, es: &EsOptions) -> Result<LaunchSpec, String> {
        match mode {
            Mode::Sev => {
                let given: Vec<&str> = [
                    es.vcpus.map(|_| "--vcpus"),
                    es.vcpu_type.map(|_| "--vcpu-type"),
                    es.vmm_type.map(|_| "--vmm-type"),
                    es.helpers.map(|_| "--helpers"),
                    es.dump_vmsa.then_some("--dump-vmsa"),
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

    /// The measured vCPUs in words ("2 EPYC-v4 vCPU(s), …"), or `None` for plain SEV.
    pub fn describe_vcpus(&self) -> Option<String> {
        match *self {
            LaunchSpec::Sev => None,
            LaunchSpec::SevEs {
                vcpus,
                vcpu_type,
                vmm,
                helpers,
            } => Some(format!(
                "{vcpus} {} vCPU(s), {} reset state, {helpers} helper vCPU(s)",
                vcpu_type.name,
                vmm.name()
            )),
        }
    }
}

/// A kernel booted directly (QEMU's `-kernel/-initrd/-append`).
#[derive(Clone, Copy, Debug)]
pub struct KernelFiles<'a> {
    /// The kernel file.
    pub kernel: &'a Path,
    /// The initrd file, if any.
    pub initrd: Option<&'a Path>,
    /// The command line, if any.
    pub append: Option<&'a str>,
}

/// A computed launch digest and what it covers after the firmware.
#[derive(Debug)]
pub struct Computed {
    /// The launch digest.
    pub digest: [u8; 32],
    /// The SEV hashes table measured after the firmware (with a kernel).
    pub hashes_table: Option<[u8; hashes::PADDED_SIZE]>,
    /// The VMSAs measured after the data, in vCPU order, then the helpers' (none for
    /// SEV).
    pub vmsas: Vec<Vmsa>,
}

/// The digest of launching `image` as `spec` says, booting `kernel` directly if given.
pub fn compute(
    image: &[u8],
    spec: &LaunchSpec,
    kernel: Option<&KernelFiles<'_>>,
) -> Result<Computed, MeasureError> {
    let hashes_table = kernel.map(|k| kernel_hashes_table(image, k)).transpose()?;
    compute_with_table(image, spec, hashes_table)
}

/// The digest of launching `image` as `spec` says, measuring `hashes_table` after the
/// firmware if given (a kernel whose bytes are at hand rather than in files).
pub fn compute_with_table(
    image: &[u8],
    spec: &LaunchSpec,
    hashes_table: Option<[u8; hashes::PADDED_SIZE]>,
) -> Result<Computed, MeasureError> {
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
                .map_err(MeasureError::ResetVmsas)?;
            if helpers > 0 {
                vmsas.extend(
                    image_helper_vmsas(image, helpers, vmm).map_err(MeasureError::HelperVmsas)?,
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

/// Writes `vmsas` to `dir/vmsa<N>.bin` (4096 bytes each), as `sevctl vmsa build` files.
pub fn dump_vmsas(dir: &Path, vmsas: &[Vmsa]) -> Result<Vec<PathBuf>, MeasureError> {
    std::fs::create_dir_all(dir).map_err(|source| MeasureError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut written = Vec::new();
    for (i, v) in vmsas.iter().enumerate() {
        let path = dir.join(format!("vmsa{i}.bin"));
        if let Err(source) = std::fs::write(&path, v.to_bytes()) {
            return Err(MeasureError::Write { path, source });
        }
        written.push(path);
    }
    Ok(written)
}

/// Reads a firmware image, capped at [`MAX_FIRMWARE`]; an empty file is an error.
pub fn read_firmware(path: &Path) -> Result<Vec<u8>, MeasureError> {
    let read = |source| MeasureError::Read {
        what: "firmware",
        path: path.to_path_buf(),
        source,
    };
    let mut image = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_FIRMWARE as u64 + 1).read_to_end(&mut image))
        .map_err(read)?;
    if image.is_empty() {
        return Err(MeasureError::EmptyFirmware(path.to_path_buf()));
    }
    if image.len() > MAX_FIRMWARE {
        return Err(MeasureError::FirmwareTooLarge(path.to_path_buf()));
    }
    Ok(image)
}

/// SHA-256 of a file, read in chunks (an initrd can be large).
fn hash_file(what: &'static str, path: &Path) -> Result<hashes::Hash, MeasureError> {
    let read = |source| MeasureError::Read {
        what,
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read)?;
    let mut h = BlobHasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(read)?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
    }
}

/// Checks that `image` declares a hashes-table area QEMU would write the table into, as
/// QEMU's `sev_add_kernel_loader_hashes` does (entry present, base non-zero, room for the
/// padded table); returns its base and size.
pub fn hashes_area(image: &[u8]) -> Result<(u32, u32), MeasureError> {
    let no = |why: String| MeasureError::NoHashesArea(why);
    let table = Table::parse(image)
        .map_err(|e| no(format!("the firmware has no OVMF footer table ({e})")))?;
    let entry = table
        .find(guid::SEV_HASH_TABLE)
        .map_err(|e| no(format!("the firmware's footer table is malformed ({e})")))?
        .ok_or_else(|| {
            no(format!(
                "the firmware has no SEV hashes table entry ({})",
                guid::SEV_HASH_TABLE
            ))
        })?;
    let area = match EntryValue::decode(image, &entry) {
        Ok(EntryValue::SevHashTable(area)) => area,
        Ok(other) => return Err(no(format!("unexpected SEV hashes table entry {other:?}"))),
        Err(e) => {
            return Err(no(format!(
                "the firmware's SEV hashes table entry is malformed ({e})"
            )))
        }
    };
    if area.base == 0 {
        return Err(no(format!(
            "the firmware's SEV hashes table entry is empty (base {:#x}, size {:#x})",
            area.base, area.size
        )));
    }
    if (area.size as usize) < hashes::PADDED_SIZE {
        return Err(no(format!(
            "the firmware's SEV hashes table area ({:#x}+{:#x}) is smaller than the {}-byte table",
            area.base,
            area.size,
            hashes::PADDED_SIZE
        )));
    }
    Ok((area.base, area.size))
}

/// The SEV hashes table a launch of `image` booting `files` measures after the firmware.
/// A kernel the firmware could not boot is measured all the same (with a warning): the
/// digest is that of its bytes.
pub fn kernel_hashes_table(
    image: &[u8],
    files: &KernelFiles<'_>,
) -> Result<[u8; hashes::PADDED_SIZE], MeasureError> {
    hashes_area(image)?;
    let mut head = Vec::new();
    std::fs::File::open(files.kernel)
        .and_then(|f| f.take(64 << 10).read_to_end(&mut head))
        .map_err(|source| MeasureError::Read {
            what: "kernel",
            path: files.kernel.to_path_buf(),
            source,
        })?;
    if let Err(e) = os_loader::load::detect(&head) {
        log::warn!(
            "{}: {e}; the digest is that of its bytes, but the firmware will not boot it",
            files.kernel.display()
        );
    }
    let hashes = SevHashes {
        kernel: hash_file("kernel", files.kernel)?,
        initrd: match files.initrd {
            Some(path) => hash_file("initrd", path)?,
            None => hashes::sha256(&[]),
        },
        cmdline: hashes::cmdline_hash(files.append.unwrap_or("").as_bytes()),
    };
    Ok(hashes.table())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sev_platform::measure::{expected_digest, expected_es_digest};
    use sha2::{Digest, Sha256};

    fn es(vcpus: u32, helpers: u16) -> LaunchSpec {
        LaunchSpec::SevEs {
            vcpus,
            vcpu_type: VcpuType::from_name("EPYC-v4").unwrap(),
            vmm: VmmType::Qemu,
            helpers,
        }
    }

    #[test]
    fn modes_parse_and_snp_says_why() {
        assert_eq!(Mode::parse("sev"), Ok(Mode::Sev));
        assert_eq!(Mode::parse("SEV"), Ok(Mode::Sev));
        assert_eq!(Mode::parse("sev-es"), Ok(Mode::SevEs));
        assert_eq!(Mode::parse("seves"), Ok(Mode::SevEs));
        assert!(Mode::parse("snp").unwrap_err().contains("not supported"));
        assert!(Mode::parse("tdx").is_err());
    }

    #[test]
    fn es_options_must_fit_the_mode() {
        let none = EsOptions::default();
        assert_eq!(
            LaunchSpec::from_options(Mode::Sev, &none),
            Ok(LaunchSpec::Sev)
        );
        let t = VcpuType::from_name("EPYC-Milan").unwrap();
        let es = EsOptions {
            vcpus: Some(2),
            vcpu_type: Some(t),
            ..EsOptions::default()
        };
        assert_eq!(
            LaunchSpec::from_options(Mode::SevEs, &es),
            Ok(LaunchSpec::SevEs {
                vcpus: 2,
                vcpu_type: t,
                vmm: VmmType::Qemu,
                helpers: 0,
            })
        );
        let sev = |o: EsOptions| LaunchSpec::from_options(Mode::Sev, &o).unwrap_err();
        let es_err = |o: EsOptions| LaunchSpec::from_options(Mode::SevEs, &o).unwrap_err();
        assert!(sev(es).contains("--vcpus, --vcpu-type"));
        let helpers = EsOptions {
            helpers: Some(1),
            dump_vmsa: true,
            ..EsOptions::default()
        };
        assert!(sev(helpers).contains("--helpers, --dump-vmsa"));
        let no_type = EsOptions {
            vcpus: Some(2),
            ..EsOptions::default()
        };
        assert!(es_err(no_type).contains("--vcpu-type"));
        assert!(es_err(none).contains("--vcpus"));
        let zero = EsOptions {
            vcpus: Some(0),
            ..es
        };
        assert!(es_err(zero).contains("1 to"));
    }

    #[test]
    fn helper_vmsas_come_after_the_guests_and_change_the_digest() {
        let image = firmware_image::IMAGE;
        let plain = compute(image, &es(2, 0), None).unwrap();
        let one = compute(image, &es(2, 1), None).unwrap();
        let two = compute(image, &es(2, 2), None).unwrap();
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
        assert!(
            matches!(
                compute(image, &es(1, 9), None),
                Err(MeasureError::HelperVmsas(_))
            ),
            "3 at most"
        );
    }

    #[test]
    fn es_digest_covers_the_vmsas_in_order() {
        let image = firmware_image::IMAGE;
        let one = compute(image, &es(1, 0), None).unwrap();
        let two = compute(image, &es(2, 0), None).unwrap();
        assert_eq!(two.vmsas[0], one.vmsas[0]);
        assert_ne!(two.vmsas[1], two.vmsas[0], "the AP starts elsewhere");
        let mut bytes = image.to_vec();
        bytes.extend_from_slice(&two.vmsas[0].to_bytes());
        bytes.extend_from_slice(&two.vmsas[1].to_bytes());
        assert_eq!(two.digest, expected_digest(&bytes));
        assert_eq!(two.digest, expected_es_digest(image, &two.vmsas));
        assert!(
            matches!(
                compute(&[0u8; 4096], &es(1, 0), None),
                Err(MeasureError::ResetVmsas(_))
            ),
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
        let err = hashes_area(&[0u8; 4096]).unwrap_err();
        assert!(err.to_string().contains("cannot check a --kernel"), "{err}");
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
        let files = KernelFiles {
            kernel: &kernel,
            initrd: None,
            append: None,
        };
        let image = firmware_image::IMAGE;
        let with_es = compute(image, &es(2, 0), Some(&files)).unwrap();
        let table = with_es.hashes_table.expect("a kernel measures a table");
        assert_eq!(
            table,
            SevHashes::of(b"not a kernel, only bytes to hash", b"", b"").table()
        );
        let want: [u8; 32] = Sha256::new()
            .chain_update(image)
            .chain_update(table)
            .chain_update(with_es.vmsas[0].to_bytes())
            .chain_update(with_es.vmsas[1].to_bytes())
            .finalize()
            .into();
        assert_eq!(with_es.digest, want);
        let sev = compute(image, &LaunchSpec::Sev, Some(&files)).unwrap();
        assert_eq!(sev.hashes_table, Some(table));
        assert!(sev.vmsas.is_empty());
        assert_eq!(sev.digest, launch_digest(image, Some(&table), &[]));
    }

    #[test]
    fn unreadable_or_oversized_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.fd");
        let err = read_firmware(&missing).unwrap_err();
        assert!(err.to_string().contains("nope.fd"), "{err}");
        let empty = dir.path().join("empty.fd");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            read_firmware(&empty),
            Err(MeasureError::EmptyFirmware(_))
        ));
        let files = KernelFiles {
            kernel: &missing,
            initrd: None,
            append: None,
        };
        let err = compute(firmware_image::IMAGE, &LaunchSpec::Sev, Some(&files)).unwrap_err();
        assert!(err.to_string().contains("cannot read kernel"), "{err}");
    }
}
