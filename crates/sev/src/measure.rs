//! The launch digest and the LAUNCH_MEASURE measurement (AMD SEV API spec 0.24 §6.5).
//!
//! - Launch digest: SHA-256 over the plaintext of every LAUNCH_UPDATE_DATA in order, then
//!   (SEV-ES) every LAUNCH_UPDATE_VMSA page.
//! - Measurement: HMAC-SHA256(TIK, 0x04 ‖ API_MAJOR ‖ API_MINOR ‖ BUILD ‖ POLICY (u32 LE)
//!   ‖ DIGEST ‖ MNONCE), returned by LAUNCH_MEASURE as MEASUREMENT (32) ‖ MNONCE (16).
//!   The same formula as virtee `Session::verify`, `sevctl measurement build` and AMD
//!   `sev-tool`'s `calculate_measurement` (API ≥ 0.17).

use crate::{
    backend::{LaunchMeasurement, PAGE_SIZE},
    crypto::{hmac_sha256, hmac_sha256_verify},
    policy::Policy,
    vmsa::Vmsa,
};
use sha2::{Digest, Sha256};

/// Context byte of the LAUNCH_MEASURE HMAC.
const MEASURE_CONTEXT: u8 = 0x04;

/// Firmware API version and build, as PLATFORM_STATUS reports them and the measurement
/// binds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FirmwareVersion {
    /// API major version.
    pub api_major: u8,
    /// API minor version.
    pub api_minor: u8,
    /// Build id.
    pub build: u8,
}

/// The running launch digest of one guest.
#[derive(Clone, Debug, Default)]
pub struct LaunchDigest {
    hash: Sha256,
}

impl LaunchDigest {
    /// An empty digest (LAUNCH_START).
    pub fn new() -> LaunchDigest {
        LaunchDigest::default()
    }

    /// Adds LAUNCH_UPDATE_DATA plaintext.
    pub fn update_data(&mut self, plaintext: &[u8]) {
        self.hash.update(plaintext);
    }

    /// Adds one VMSA page (LAUNCH_UPDATE_VMSA, SEV-ES).
    pub fn update_vmsa(&mut self, vmsa: &[u8; PAGE_SIZE]) {
        self.hash.update(vmsa);
    }

    /// The digest so far.
    pub fn value(&self) -> [u8; 32] {
        self.hash.clone().finalize().into()
    }
}

/// The launch digest QEMU + OVMF users get for `firmware_image` with SEV (not ES) and no
/// kernel hashes: QEMU passes the whole flash image to one LAUNCH_UPDATE_DATA, both for
/// `-bios` (`x86_bios_rom_init`) and for pflash unit 0 (`pc_system_flash_map`), through
/// `x86_firmware_configure` → `sev_encrypt_flash` (QEMU `hw/i386/pc_sysfw.c`,
/// `target/i386/sev.c`); `sevctl measurement build --firmware` computes the same.
pub fn expected_digest(firmware_image: &[u8]) -> [u8; 32] {
    Sha256::digest(firmware_image).into()
}

/// The launch digest of an SEV-ES launch of `firmware_image` with no kernel hashes: the
/// image (one LAUNCH_UPDATE_DATA, as for [`expected_digest`]) then every vCPU's VMSA in
/// vCPU index order, the order `KVM_SEV_LAUNCH_UPDATE_VMSA` issues them
/// (`kvm_for_each_vcpu`). `sev-snp-measure --mode seves` and `sevctl measurement build
/// --num-cpus --vmsa-cpu0 --vmsa-cpu1` compute the same; [`crate::vmsa::ResetVmsas`]
/// builds the VMSAs QEMU + KVM measure.
pub fn expected_es_digest(firmware_image: &[u8], vmsas: &[Vmsa]) -> [u8; 32] {
    let mut d = LaunchDigest::new();
    d.update_data(firmware_image);
    for v in vmsas {
        d.update_vmsa(&v.to_bytes());
    }
    d.value()
}

/// The 32-byte LAUNCH_MEASURE HMAC.
pub fn measurement_mac(
    tik: &[u8; 16],
    fw: FirmwareVersion,
    policy: Policy,
    digest: &[u8; 32],
    mnonce: &[u8; 16],
) -> [u8; 32] {
    hmac_sha256(
        tik,
        &[
            &[MEASURE_CONTEXT, fw.api_major, fw.api_minor, fw.build],
            &policy.to_le_bytes(),
            digest,
            mnonce,
        ],
    )
}

/// The 48-byte LAUNCH_MEASURE result for `mnonce`.
pub fn launch_measurement(
    tik: &[u8; 16],
    fw: FirmwareVersion,
    policy: Policy,
    digest: &[u8; 32],
    mnonce: &[u8; 16],
) -> LaunchMeasurement {
    let mut out = [0u8; 48];
    out[..32].copy_from_slice(&measurement_mac(tik, fw, policy, digest, mnonce));
    out[32..].copy_from_slice(mnonce);
    LaunchMeasurement(out)
}

/// The reported measurement does not match the expected launch.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("launch measurement does not match: the firmware image, platform version, policy or TIK differ from what the platform launched")]
pub struct MeasurementMismatch;

/// Checks a LAUNCH_MEASURE result against the expected digest (constant-time compare).
pub fn verify_measurement(
    tik: &[u8; 16],
    fw: FirmwareVersion,
    policy: Policy,
    digest: &[u8; 32],
    reported: &LaunchMeasurement,
) -> Result<(), MeasurementMismatch> {
    let mnonce = reported.mnonce();
    let ok = hmac_sha256_verify(
        tik,
        &[
            &[MEASURE_CONTEXT, fw.api_major, fw.api_minor, fw.build],
            &policy.to_le_bytes(),
            digest,
            &mnonce,
        ],
        &reported.measurement(),
    );
    if ok {
        Ok(())
    } else {
        Err(MeasurementMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The virtee `sev` crate's `session::initialized::verify` vector (API 0.18 build 15,
    /// policy 0, digest of nothing), which its authors took from a real platform.
    #[test]
    fn virtee_vector_verifies() {
        let digest = LaunchDigest::new().value();
        assert_eq!(digest, expected_digest(b""));
        let tik = [
            0x66, 0x32, 0x0d, 0xb7, 0x31, 0x58, 0xa3, 0x5a, 0x25, 0x5d, 0x05, 0x17, 0x58, 0xe9,
            0x5e, 0xd4,
        ];
        let mut raw = [0u8; 48];
        raw[..32].copy_from_slice(&[
            0x6f, 0xaa, 0xb2, 0xda, 0xae, 0x38, 0x9b, 0xcd, 0x34, 0x05, 0xa0, 0x5d, 0x6c, 0xaf,
            0xe3, 0x3c, 0x04, 0x14, 0xf7, 0xbe, 0xdd, 0x0b, 0xae, 0x19, 0xba, 0x5f, 0x38, 0xb7,
            0xfd, 0x16, 0x64, 0xea,
        ]);
        raw[32..].copy_from_slice(&[
            0x4f, 0xbe, 0x0b, 0xed, 0xba, 0xd6, 0xc8, 0x6a, 0xe8, 0xf6, 0x89, 0x71, 0xd1, 0x03,
            0xe5, 0x54,
        ]);
        let fw = FirmwareVersion {
            api_major: 0,
            api_minor: 0x12,
            build: 0x0f,
        };
        let reported = LaunchMeasurement(raw);
        verify_measurement(&tik, fw, Policy(0), &digest, &reported).unwrap();
        assert_eq!(
            launch_measurement(&tik, fw, Policy(0), &digest, &reported.mnonce()),
            reported
        );
        // Any other input changes the answer.
        let other_fw = FirmwareVersion { build: 0x10, ..fw };
        assert_eq!(
            verify_measurement(&tik, other_fw, Policy(0), &digest, &reported),
            Err(MeasurementMismatch)
        );
        assert!(verify_measurement(&tik, fw, Policy(1), &digest, &reported).is_err());
        assert!(
            verify_measurement(&tik, fw, Policy(0), &expected_digest(b"x"), &reported).is_err()
        );
    }

    #[test]
    fn digest_is_independent_of_how_updates_are_split() {
        let image: Vec<u8> = (0..3 * PAGE_SIZE + 100).map(|i| (i * 7) as u8).collect();
        let mut d = LaunchDigest::new();
        for chunk in image.chunks(PAGE_SIZE) {
            d.update_data(chunk);
        }
        assert_eq!(d.value(), expected_digest(&image));
        d.update_vmsa(&[1; PAGE_SIZE]);
        assert_ne!(d.value(), expected_digest(&image));
    }
}
