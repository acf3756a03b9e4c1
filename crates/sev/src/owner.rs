//! The guest owner's side of an SEV launch, interchangeable with `sevctl`:
//!
//! - [`session`]: a LAUNCH_START session for a platform's PDH certificate, made with the
//!   virtee `sev` crate's `Session::start_pdh` exactly as `sevctl session` does; its
//!   files ([`OwnerSession::write_files`]) are named and encoded like sevctl's:
//!   `NAME_godh.b64` and `NAME_session.b64` (standard base64 of the 0x824-byte GODH
//!   certificate and the 128-byte session buffer, what QEMU's `dh-cert-file` and
//!   `session-file` read), `NAME_tek.bin` and `NAME_tik.bin` (16 raw bytes each).
//!   sevctl's default NAME is `vm` ([`DEFAULT_NAME`]).
//! - [`verify`]: the expected measurement from the firmware image (or its digest), the
//!   platform's API version and build, the policy and the TIK, checked against the
//!   base64 LAUNCH_MEASURE blob (QEMU's `query-sev-launch-measure` `data`), as `sevctl
//!   measurement build` computes it.
//! - [`secret`]: a LAUNCH_SECRET packet carrying a secret table, as `sevctl secret build`
//!   makes it (sevctl writes the header and payload as raw files; QEMU's
//!   `sev-inject-launch-secret` takes them base64-encoded: [`SecretPacket::header_b64`],
//!   [`SecretPacket::secret_b64`]).

use crate::{
    backend::{LaunchMeasurement, LaunchSession},
    crypto::TransportKeys,
    measure::{expected_digest, verify_measurement, FirmwareVersion, MeasurementMismatch},
    policy::Policy,
    secret::{seal, SealError, SecretPacket},
    secret_table::{self, SecretTableError},
    session::{godh_public_key, SessionBlob, SessionError},
};
use base64::Engine;
use fwtable::Guid;
use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// sevctl's default file-name prefix.
pub const DEFAULT_NAME: &str = "vm";

/// A guest-owner operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The PDH certificate cannot be used.
    #[error("PDH certificate is unusable")]
    Pdh(#[source] SessionError),
    /// The policy has reserved bits set (the firmware would refuse it, and sevctl's
    /// policy type would silently drop them).
    #[error("policy {0} has reserved bits set (bits 6-15 must be zero)")]
    Policy(Policy),
    /// The virtee session code failed.
    #[error("building the session failed: {0}")]
    Session(String),
    /// Base64 input is malformed.
    #[error("{what} is not valid base64")]
    Base64 {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
    /// A decoded blob has the wrong size.
    #[error("{what} is {len} bytes, expected {expected}")]
    Length {
        /// What it is.
        what: &'static str,
        /// Bytes found.
        len: usize,
        /// Bytes expected.
        expected: usize,
    },
    /// The measurement does not match.
    #[error(transparent)]
    Mismatch(#[from] MeasurementMismatch),
    /// The secret table cannot be built.
    #[error("building the secret table failed")]
    Table(#[source] SecretTableError),
    /// Sealing the secret failed.
    #[error("sealing the secret failed")]
    Seal(#[source] SealError),
    /// A file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Decodes base64 as QEMU's `g_base64_decode` accepts it from files: surrounding and
/// embedded whitespace (line breaks) are ignored.
pub fn decode_base64(what: &'static str, text: &str) -> Result<Vec<u8>, OwnerError> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .map_err(|source| OwnerError::Base64 { what, source })
}

/// Standard base64 with padding, no line breaks (what sevctl writes).
pub fn encode_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The LAUNCH_START input from the contents of QEMU-style `dh-cert-file` and
/// `session-file` (base64); sizes are checked by LAUNCH_START itself, as the firmware does.
pub fn launch_session_from_base64(
    godh_b64: &str,
    session_b64: &str,
) -> Result<LaunchSession, OwnerError> {
    Ok(LaunchSession {
        godh_cert: decode_base64("dh-cert-file", godh_b64)?,
        session: decode_base64("session-file", session_b64)?,
    })
}

/// A session made for one platform and policy, and the transport keys it carries.
#[derive(Debug, Clone)]
pub struct OwnerSession {
    /// The guest owner's DH certificate (0x824 bytes, AMD format).
    pub godh: Vec<u8>,
    /// The session buffer.
    pub session: SessionBlob,
    /// TEK and TIK, to keep for [`verify`] and [`secret`].
    pub keys: TransportKeys,
    /// The policy the session is bound to.
    pub policy: Policy,
}

/// The four files [`OwnerSession::write_files`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFiles {
    /// `NAME_godh.b64`.
    pub godh: PathBuf,
    /// `NAME_session.b64`.
    pub session: PathBuf,
    /// `NAME_tek.bin`.
    pub tek: PathBuf,
    /// `NAME_tik.bin`.
    pub tik: PathBuf,
}

impl OwnerSession {
    /// The GODH certificate, base64 (QEMU `dh-cert-file` contents).
    pub fn godh_b64(&self) -> String {
        encode_base64(&self.godh)
    }

    /// The session buffer, base64 (QEMU `session-file` contents).
    pub fn session_b64(&self) -> String {
        encode_base64(&self.session.to_bytes())
    }

    /// The LAUNCH_START input.
    pub fn launch_session(&self) -> LaunchSession {
        LaunchSession {
            godh_cert: self.godh.clone(),
            session: self.session.to_bytes().to_vec(),
        }
    }

    /// Writes the session as `sevctl session --name NAME` does, into `dir`. The key files
    /// are created with mode 0600.
    pub fn write_files(&self, dir: &Path, name: &str) -> Result<SessionFiles, OwnerError> {
        let files = SessionFiles {
            godh: dir.join(format!("{name}_godh.b64")),
            session: dir.join(format!("{name}_session.b64")),
            tek: dir.join(format!("{name}_tek.bin")),
            tik: dir.join(format!("{name}_tik.bin")),
        };
        let write = |path: &Path, bytes: &[u8], mode: u32| {
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(path)
                .and_then(|mut f| f.write_all(bytes))
                .map_err(|source| OwnerError::Write {
                    path: path.to_path_buf(),
                    source,
                })
        };
        write(&files.godh, self.godh_b64().as_bytes(), 0o644)?;
        write(&files.session, self.session_b64().as_bytes(), 0o644)?;
        write(&files.tek, self.keys.tek(), 0o600)?;
        write(&files.tik, self.keys.tik(), 0o600)?;
        Ok(files)
    }
}

/// `sevctl session PDH POLICY`: a new session (fresh TEK, TIK and GODH key) for the
/// platform whose PDH certificate is `pdh_cert`.
pub fn session(pdh_cert: &[u8], policy: Policy) -> Result<OwnerSession, OwnerError> {
    use sev::parser::{Decoder, Encoder};
    if policy.0 & !Policy::DEFINED != 0 {
        return Err(OwnerError::Policy(policy));
    }
    // Our strict parser first: the certificate is untrusted input.
    godh_public_key(pdh_cert).map_err(OwnerError::Pdh)?;
    let pdh = sev::certs::sev::sev::Certificate::decode(&mut &pdh_cert[..], ())
        .map_err(|e| OwnerError::Session(e.to_string()))?;
    let owner = sev::session::Session::try_from(virtee_policy(policy))
        .map_err(|e| OwnerError::Session(format!("no random transport keys: {e:?}")))?;
    let start = owner
        .start_pdh(pdh)
        .map_err(|e| OwnerError::Session(format!("{e:?}")))?;
    let mut godh = Vec::with_capacity(crate::certs::CERT_SIZE);
    start
        .cert
        .encode(&mut godh, ())
        .map_err(|e| OwnerError::Session(e.to_string()))?;
    let keys = TransportKeys::from_slices(&owner.tek, &owner.tik)
        .ok_or_else(|| OwnerError::Session(String::from("virtee keys are not 16 bytes")))?;
    Ok(OwnerSession {
        godh,
        session: SessionBlob {
            nonce: start.session.nonce,
            wrap_tk: start.session.wrap_tk,
            wrap_iv: start.session.wrap_iv,
            wrap_mac: start.session.wrap_mac,
            policy_mac: start.session.policy_mac,
        },
        keys,
        policy,
    })
}

/// The virtee policy with the same 32 bits. Not `Policy::from(u32)`: virtee 8 builds the
/// minimum-API field from the low nibbles of bits 16..24 only (`Version::from(u16)`), so
/// a policy with API bits would be MACed as another policy and LAUNCH_START would refuse
/// the session (BAD_MEASUREMENT) — on hardware as here.
pub(crate) fn virtee_policy(policy: Policy) -> sev::launch::sev::Policy {
    sev::launch::sev::Policy {
        flags: sev::launch::sev::PolicyFlags::from_bits_truncate(policy.0 as u16),
        minfw: sev::firmware::host::Version {
            major: policy.api_major(),
            minor: policy.api_minor(),
        },
    }
}

/// What the guest owner expects was launched.
#[derive(Clone, Copy, Debug)]
pub enum Measured<'a> {
    /// A launch digest computed elsewhere (`sevctl measurement build --launch-digest`).
    Digest([u8; 32]),
    /// A firmware image launched as QEMU does ([`expected_digest`]).
    Firmware(&'a [u8]),
}

/// Decodes a base64 LAUNCH_MEASURE blob (48 bytes).
pub fn decode_measurement(measurement_b64: &str) -> Result<LaunchMeasurement, OwnerError> {
    let raw = decode_base64("launch measurement", measurement_b64)?;
    let arr: [u8; 48] = raw.as_slice().try_into().map_err(|_| OwnerError::Length {
        what: "launch measurement",
        len: raw.len(),
        expected: 48,
    })?;
    Ok(LaunchMeasurement(arr))
}

/// Checks the platform's LAUNCH_MEASURE blob (base64, as QEMU's
/// `query-sev-launch-measure` returns it) against what the owner expects. Returns the
/// decoded measurement, which [`secret`] binds.
pub fn verify(
    measured: Measured<'_>,
    platform: FirmwareVersion,
    policy: Policy,
    tik: &[u8; 16],
    measurement_b64: &str,
) -> Result<LaunchMeasurement, OwnerError> {
    let reported = decode_measurement(measurement_b64)?;
    let digest = match measured {
        Measured::Digest(d) => d,
        Measured::Firmware(image) => expected_digest(image),
    };
    verify_measurement(tik, platform, policy, &digest, &reported)?;
    Ok(reported)
}

/// `sevctl secret build`: a secret table with `entries` (padded to 16 bytes) sealed for
/// the launch that reported `measurement`.
pub fn secret(
    keys: &TransportKeys,
    measurement: &LaunchMeasurement,
    entries: &[(Guid, Vec<u8>)],
) -> Result<SecretPacket, OwnerError> {
    let borrowed: Vec<(Guid, &[u8])> = entries.iter().map(|(g, d)| (*g, d.as_slice())).collect();
    let table = zeroize::Zeroizing::new(secret_table::build(&borrowed).map_err(OwnerError::Table)?);
    seal(keys, &measurement.measurement(), &table).map_err(OwnerError::Seal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PlatformIdentity;

    #[test]
    fn session_unwraps_on_the_psp_side_to_the_same_keys() {
        let id = PlatformIdentity::generate().unwrap();
        let policy = Policy(Policy::NODBG | Policy::NOKS);
        let s = session(id.pdh_cert().as_bytes(), policy).unwrap();
        assert_eq!(s.godh.len(), 0x824);
        let keys =
            crate::session::open_session(id.pdh_key(), &s.godh, &s.session.to_bytes(), policy)
                .unwrap();
        assert_eq!(keys, s.keys);
        // Round trip through the base64 files QEMU reads.
        let ls =
            launch_session_from_base64(&s.godh_b64(), &format!("{}\n", s.session_b64())).unwrap();
        assert_eq!(ls, s.launch_session());
    }

    #[test]
    fn sessions_carry_the_minimum_api_version_bits() {
        let id = PlatformIdentity::generate().unwrap();
        let policy = Policy(Policy::NOSEND | 0x18 << 24);
        let s = session(id.pdh_cert().as_bytes(), policy).unwrap();
        crate::session::open_session(id.pdh_key(), &s.godh, &s.session.to_bytes(), policy).unwrap();
        // virtee's own u32 conversion loses those bits.
        let lossy = sev::launch::sev::Policy::from(policy.0);
        assert_ne!(lossy, virtee_policy(policy));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let id = PlatformIdentity::generate().unwrap();
        assert!(matches!(
            session(id.pdh_cert().as_bytes(), Policy(1 << 6)),
            Err(OwnerError::Policy(_))
        ));
        assert!(matches!(
            session(&[0; 10], Policy(0)),
            Err(OwnerError::Pdh(_))
        ));
        let pek_like = &id.certs().chain[0x824..2 * 0x824];
        assert!(matches!(
            session(pek_like, Policy(0)),
            Err(OwnerError::Pdh(_))
        ));
        assert!(matches!(
            decode_measurement("AAAA"),
            Err(OwnerError::Length { len: 3, .. })
        ));
        assert!(matches!(
            decode_measurement("!!"),
            Err(OwnerError::Base64 { .. })
        ));
    }

    #[test]
    fn files_are_named_and_encoded_like_sevctl() {
        let t = crate::identity::tests::TempDir::new("owner-files");
        fs::create_dir_all(&t.0).unwrap();
        let id = PlatformIdentity::generate().unwrap();
        let s = session(id.pdh_cert().as_bytes(), Policy(0)).unwrap();
        let files = s.write_files(&t.0, DEFAULT_NAME).unwrap();
        assert!(files.godh.ends_with("vm_godh.b64") && files.tik.ends_with("vm_tik.bin"));
        assert_eq!(fs::read(&files.tek).unwrap(), s.keys.tek().to_vec());
        assert_eq!(fs::read(&files.tik).unwrap(), s.keys.tik().to_vec());
        let godh = decode_base64("godh", &fs::read_to_string(&files.godh).unwrap()).unwrap();
        assert_eq!(godh, s.godh);
        let blob = decode_base64("session", &fs::read_to_string(&files.session).unwrap()).unwrap();
        assert_eq!(blob, s.session.to_bytes().to_vec());
    }
}
