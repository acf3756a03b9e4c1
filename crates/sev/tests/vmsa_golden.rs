//! Golden vectors for SEV-ES VMSAs and launch digests, computed by sev-snp-measure 0.0.13
//! and sevctl 0.6.2 (`tests/data/golden-vmsa/README.md` has every command). The VMSA pages
//! are compared byte for byte on any machine; the digests and measurements need the same
//! Debian OVMF.fd the vectors were made from and print SKIPPED without it.

use sev_platform::{
    measure::{expected_es_digest, launch_measurement, FirmwareVersion},
    vmsa::{ResetVmsas, VcpuType, VmmType, Vmsa},
    Policy,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// The AP entry of the OVMF.fd the vectors were made from (its SEV-ES reset block).
const OVMF_AP_ENTRY: u32 = 0x0080_b004;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden-vmsa")
        .join(rel)
}

fn page(rel: &str) -> Vmsa {
    let bytes = std::fs::read(data(rel)).unwrap();
    Vmsa::from_bytes(
        &bytes
            .as_slice()
            .try_into()
            .expect("a VMSA file is one page"),
    )
}

fn ours(vcpu_type: &str, vmm: VmmType) -> ResetVmsas {
    ResetVmsas {
        vcpu_type: VcpuType::from_name(vcpu_type).unwrap(),
        vmm,
        ap_entry: fwtable::SevEsResetBlock::from_raw(OVMF_AP_ENTRY),
    }
}

fn assert_same(what: &str, ours: &Vmsa, theirs: &Vmsa) {
    let diff: Vec<String> = ours.diff(theirs).iter().map(|d| d.to_string()).collect();
    assert!(
        diff.is_empty(),
        "{what}: ours vs theirs differ in {diff:#?}"
    );
    assert_eq!(ours.to_bytes(), theirs.to_bytes(), "{what}");
}

#[test]
fn vmsas_equal_sev_snp_measure_for_qemu_and_ec2() {
    for (dir, vcpu_type, vmm) in [
        ("snpm-EPYC-v4-QEMU", "EPYC-v4", VmmType::Qemu),
        ("snpm-EPYC-Milan-QEMU", "EPYC-Milan", VmmType::Qemu),
        ("snpm-EPYC-v4-ec2", "EPYC-v4", VmmType::Ec2),
    ] {
        let r = ours(vcpu_type, vmm);
        assert_same(
            &format!("{dir} vCPU 0"),
            &r.vcpu(0),
            &page(&format!("{dir}/vmsa0.bin")),
        );
        assert_same(
            &format!("{dir} vCPU 1"),
            &r.vcpu(1),
            &page(&format!("{dir}/vmsa1.bin")),
        );
    }
}

#[test]
fn vmsas_equal_sevctl_for_the_legacy_es_init() {
    for (dir, vcpu_type) in [
        ("sevctl-EPYC-v4", "EPYC-v4"),
        ("sevctl-EPYC-Milan", "EPYC-Milan"),
    ] {
        let r = ours(vcpu_type, VmmType::QemuEsInit);
        assert_same(
            &format!("{dir} vCPU 0"),
            &r.vcpu(0),
            &page(&format!("{dir}/vmsa0.bin")),
        );
        assert_same(
            &format!("{dir} vCPU 1"),
            &r.vcpu(1),
            &page(&format!("{dir}/vmsa1.bin")),
        );
    }
    // And the two tools differ exactly in the FPU control words.
    let fields: Vec<_> = page("sevctl-EPYC-v4/vmsa0.bin")
        .diff(&page("snpm-EPYC-v4-QEMU/vmsa0.bin"))
        .into_iter()
        .map(|d| d.field)
        .collect();
    assert_eq!(fields, ["mxcsr", "x87_fcw"]);
}

/// The OVMF.fd the vectors were computed from, or None (with a SKIPPED line).
fn golden_ovmf() -> Option<Vec<u8>> {
    let want = std::fs::read_to_string(data("ovmf-sha256.txt")).unwrap();
    let Ok(image) = std::fs::read(OVMF) else {
        eprintln!("SKIPPED: {OVMF} missing (apt-get install ovmf); digest vectors not checked");
        return None;
    };
    let got: String = Sha256::digest(&image)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != want.trim() {
        eprintln!(
            "SKIPPED: {OVMF} is not the image the vectors were made from (sha256 {got}); digest vectors not checked"
        );
        return None;
    }
    Some(image)
}

#[test]
fn digests_equal_sev_snp_measure_for_ovmf_at_1_2_4_vcpus() {
    let Some(image) = golden_ovmf() else { return };
    let table = std::fs::read_to_string(data("ovmf-digests.txt")).unwrap();
    let mut checked = 0;
    for line in table.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [vcpu_type, vmm, n, digest] = f[..] else {
            panic!("bad line {line:?}")
        };
        let vmm = VmmType::from_name(vmm).unwrap();
        let r =
            ResetVmsas::for_firmware(&image, VcpuType::from_name(vcpu_type).unwrap(), vmm).unwrap();
        assert_eq!(r.ap_entry.reset_address(), OVMF_AP_ENTRY);
        let ours = expected_es_digest(&image, &r.all(n.parse().unwrap()).unwrap());
        let hex: String = ours.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, digest, "{line}");
        checked += 1;
    }
    assert_eq!(checked, 24);
}

#[test]
fn measurements_equal_sevctl_measurement_build() {
    let Some(image) = golden_ovmf() else { return };
    let tik: [u8; 16] = std::fs::read(data("tik.bin")).unwrap().try_into().unwrap();
    let nonce: [u8; 16] = std::fs::read(data("nonce.bin"))
        .unwrap()
        .try_into()
        .unwrap();
    let fw = FirmwareVersion {
        api_major: 0,
        api_minor: 24,
        build: 1,
    };
    for (file, vmm, n) in [
        ("sevctl-measure-EPYC-v4-2cpus.b64", VmmType::QemuEsInit, 2),
        ("sevctl-measure-snpm-EPYC-v4-4cpus.b64", VmmType::Qemu, 4),
    ] {
        let r = ours("EPYC-v4", vmm);
        let digest = expected_es_digest(&image, &r.all(n).unwrap());
        let m = launch_measurement(&tik, fw, Policy(0x5), &digest, &nonce);
        let want = std::fs::read_to_string(data(file)).unwrap();
        assert_eq!(
            sev_platform::owner::encode_base64(&m.0),
            want.trim(),
            "{file}"
        );
    }
}
