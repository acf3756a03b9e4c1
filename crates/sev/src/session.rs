//! The PSP side of LAUNCH_START with a guest owner session (AMD SEV API spec 0.24 §6.2,
//! key schedule §2.2): check the guest owner's Diffie-Hellman certificate (GODH), derive
//! the shared secret with the PDH private key, derive KEK and KIK, verify and unwrap the
//! transport keys, verify the policy MAC.
//!
//! The session buffer is 128 bytes (`sev_session_buf` in AMD `sev-tool`, `Session` in
//! virtee `launch/sev.rs`, what `sevctl session` base64-encodes and QEMU's
//! `session-file` passes through KVM unchanged):
//!
//! | offset | size | field                                            |
//! |--------|------|--------------------------------------------------|
//! | 0x00   | 16   | NONCE                                            |
//! | 0x10   | 32   | WRAP_TK: AES-128-CTR(KEK, WRAP_IV, TEK ‖ TIK)    |
//! | 0x30   | 16   | WRAP_IV                                          |
//! | 0x40   | 32   | WRAP_MAC: HMAC-SHA256(KIK, WRAP_TK)              |
//! | 0x60   | 32   | POLICY_MAC: HMAC-SHA256(TIK, POLICY as u32 LE)   |
//!
//! Key schedule: Z = ECDH(PDH private, GODH public) (the x coordinate as OpenSSL returns
//! it, big-endian, as AMD `sev-tool` and virtee use against real firmware);
//! master = KDF(Z, "sev-master-secret", NONCE); KEK = KDF(master, "sev-kek", "");
//! KIK = KDF(master, "sev-kik", ""); all 16 bytes (see [`crate::crypto::kdf`]).
//!
//! Failure statuses (spec §4.4 codes; the spec's LAUNCH_START action list names
//! INVALID_CERTIFICATE for an unusable DH certificate and BAD_MEASUREMENT for integrity
//! failures of the wrapped keys and policy; length faults use INVALID_LENGTH):
//!
//! | failure                                            | status              |
//! |----------------------------------------------------|---------------------|
//! | session buffer not 128 bytes                       | INVALID_LENGTH      |
//! | GODH not 0x824 bytes                               | INVALID_LENGTH      |
//! | GODH malformed, not PDH/ECDH, not P-384, bad point | INVALID_CERTIFICATE |
//! | WRAP_MAC mismatch                                  | BAD_MEASUREMENT     |
//! | POLICY_MAC mismatch                                | BAD_MEASUREMENT     |
//!
//! The GODH's signature slots are not checked: nothing on the platform could verify them
//! (AMD `sev-tool` notes the firmware does not validate the GODH signature, and
//! `sevctl`/virtee send it unsigned).

use crate::{
    certs::{CertError, SevCert, Usage},
    crypto::{aes128_ctr, hmac_sha256, hmac_sha256_verify, kdf, TransportKeys},
    policy::Policy,
    status::SevStatus,
};
use openssl::{
    derive::Deriver,
    ec::{EcKey, EcKeyRef},
    pkey::{PKey, Private, Public},
};
use zeroize::Zeroizing;

/// Size of the LAUNCH_START session buffer.
pub const SESSION_SIZE: usize = 128;

/// The LAUNCH_START session buffer (see the module documentation for the layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionBlob {
    /// Context for the master secret derivation.
    pub nonce: [u8; 16],
    /// TEK ‖ TIK encrypted with the KEK.
    pub wrap_tk: [u8; 32],
    /// IV of the key wrap.
    pub wrap_iv: [u8; 16],
    /// HMAC-SHA256 of `wrap_tk` under the KIK.
    pub wrap_mac: [u8; 32],
    /// HMAC-SHA256 of the policy under the TIK.
    pub policy_mac: [u8; 32],
}

impl SessionBlob {
    /// Decodes a session buffer; its length must be exactly [`SESSION_SIZE`].
    pub fn parse(bytes: &[u8]) -> Result<SessionBlob, SessionError> {
        let b: &[u8; SESSION_SIZE] = bytes
            .try_into()
            .map_err(|_| SessionError::SessionLength { len: bytes.len() })?;
        let mut s = SessionBlob {
            nonce: [0; 16],
            wrap_tk: [0; 32],
            wrap_iv: [0; 16],
            wrap_mac: [0; 32],
            policy_mac: [0; 32],
        };
        s.nonce.copy_from_slice(&b[0x00..0x10]);
        s.wrap_tk.copy_from_slice(&b[0x10..0x30]);
        s.wrap_iv.copy_from_slice(&b[0x30..0x40]);
        s.wrap_mac.copy_from_slice(&b[0x40..0x60]);
        s.policy_mac.copy_from_slice(&b[0x60..0x80]);
        Ok(s)
    }

    /// Encodes the buffer.
    pub fn to_bytes(&self) -> [u8; SESSION_SIZE] {
        let mut b = [0u8; SESSION_SIZE];
        b[0x00..0x10].copy_from_slice(&self.nonce);
        b[0x10..0x30].copy_from_slice(&self.wrap_tk);
        b[0x30..0x40].copy_from_slice(&self.wrap_iv);
        b[0x40..0x60].copy_from_slice(&self.wrap_mac);
        b[0x60..0x80].copy_from_slice(&self.policy_mac);
        b
    }
}

/// LAUNCH_START refused the guest owner's session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session buffer has the wrong size.
    #[error("session buffer is {len} bytes, expected {SESSION_SIZE}")]
    SessionLength {
        /// Bytes given.
        len: usize,
    },
    /// The GODH certificate has the wrong size.
    #[error("guest owner DH certificate is {len} bytes, expected 0x824")]
    GodhLength {
        /// Bytes given.
        len: usize,
    },
    /// The GODH certificate is unusable.
    #[error("guest owner DH certificate is invalid")]
    Godh(#[source] CertError),
    /// The wrapped transport keys fail their integrity check (wrong PDH, or tampered).
    #[error("wrapped transport keys fail their MAC (session made for another PDH, or tampered)")]
    WrapMac,
    /// The policy MAC does not match the policy given to LAUNCH_START.
    #[error("policy {policy} does not match the session's policy MAC")]
    PolicyMac {
        /// The policy given to LAUNCH_START.
        policy: Policy,
    },
    /// ECDH failed on validated keys.
    #[error("ECDH key agreement failed")]
    Crypto(#[source] openssl::error::ErrorStack),
}

impl SessionError {
    /// The firmware status for this failure (module documentation table).
    pub fn status(&self) -> SevStatus {
        match self {
            SessionError::SessionLength { .. } | SessionError::GodhLength { .. } => {
                SevStatus::INVALID_LENGTH
            }
            SessionError::Godh(_) => SevStatus::INVALID_CERTIFICATE,
            SessionError::WrapMac | SessionError::PolicyMac { .. } => SevStatus::BAD_MEASUREMENT,
            SessionError::Crypto(_) => SevStatus::HWERROR_PLATFORM,
        }
    }
}

/// Checks a GODH certificate and returns its public key: version 1, usage PDH, an ECDH
/// key on P-384 (the PDH's curve), a valid point.
pub fn godh_public_key(cert: &[u8]) -> Result<EcKey<Public>, SessionError> {
    if cert.len() != crate::certs::CERT_SIZE {
        return Err(SessionError::GodhLength { len: cert.len() });
    }
    let cert = SevCert::parse_as(cert, Usage::PDH).map_err(SessionError::Godh)?;
    let algo = cert.algo();
    if algo != crate::certs::Algo::ECDH_SHA256 && algo != crate::certs::Algo::ECDH_SHA384 {
        return Err(SessionError::Godh(CertError::WrongAlgo {
            usage: Usage::PDH,
            algo: algo.0,
        }));
    }
    cert.public_key().map_err(SessionError::Godh)
}

/// The ECDH shared secret Z between `ours` (private) and `theirs` (public).
pub(crate) fn shared_secret(
    ours: &EcKeyRef<Private>,
    theirs: &EcKeyRef<Public>,
) -> Result<Zeroizing<Vec<u8>>, openssl::error::ErrorStack> {
    let ours = PKey::from_ec_key(ours.to_owned())?;
    let theirs = PKey::from_ec_key(theirs.to_owned())?;
    let mut deriver = Deriver::new(&ours)?;
    deriver.set_peer(&theirs)?;
    Ok(Zeroizing::new(deriver.derive_to_vec()?))
}

/// KEK and KIK from the shared secret and the nonce.
fn kek_kik(z: &[u8], nonce: &[u8; 16]) -> (Zeroizing<[u8; 16]>, Zeroizing<[u8; 16]>) {
    let mut master = Zeroizing::new([0u8; 16]);
    kdf(z, b"sev-master-secret", nonce, &mut master[..]);
    let mut kek = Zeroizing::new([0u8; 16]);
    let mut kik = Zeroizing::new([0u8; 16]);
    kdf(&master[..], b"sev-kek", &[], &mut kek[..]);
    kdf(&master[..], b"sev-kik", &[], &mut kik[..]);
    (kek, kik)
}

/// Unwraps the transport keys given the shared secret `z`: WRAP_MAC first, then
/// decryption, then POLICY_MAC against `policy`.
pub fn unwrap_with_secret(
    z: &[u8],
    blob: &SessionBlob,
    policy: Policy,
) -> Result<TransportKeys, SessionError> {
    let (kek, kik) = kek_kik(z, &blob.nonce);
    if !hmac_sha256_verify(&kik[..], &[&blob.wrap_tk], &blob.wrap_mac) {
        return Err(SessionError::WrapMac);
    }
    let mut tk = Zeroizing::new(blob.wrap_tk);
    aes128_ctr(&kek, &blob.wrap_iv, &mut tk[..]);
    let mut tek = [0u8; 16];
    let mut tik = [0u8; 16];
    tek.copy_from_slice(&tk[..16]);
    tik.copy_from_slice(&tk[16..]);
    let keys = TransportKeys::new(tek, tik);
    if !hmac_sha256_verify(keys.tik(), &[&policy.to_le_bytes()], &blob.policy_mac) {
        return Err(SessionError::PolicyMac { policy });
    }
    Ok(keys)
}

/// The guest owner's side of [`unwrap_with_secret`]: wraps `keys` for shared secret `z`.
pub fn wrap_with_secret(
    z: &[u8],
    nonce: [u8; 16],
    wrap_iv: [u8; 16],
    keys: &TransportKeys,
    policy: Policy,
) -> SessionBlob {
    let (kek, kik) = kek_kik(z, &nonce);
    let mut wrap_tk = [0u8; 32];
    wrap_tk[..16].copy_from_slice(keys.tek());
    wrap_tk[16..].copy_from_slice(keys.tik());
    aes128_ctr(&kek, &wrap_iv, &mut wrap_tk);
    SessionBlob {
        nonce,
        wrap_tk,
        wrap_iv,
        wrap_mac: hmac_sha256(&kik[..], &[&wrap_tk]),
        policy_mac: hmac_sha256(keys.tik(), &[&policy.to_le_bytes()]),
    }
}

/// LAUNCH_START's session processing: returns the guest's transport keys, or the reason
/// (with its firmware status) the session is refused.
pub fn open_session(
    pdh_key: &EcKeyRef<Private>,
    godh_cert: &[u8],
    session: &[u8],
    policy: Policy,
) -> Result<TransportKeys, SessionError> {
    let blob = SessionBlob::parse(session)?;
    let godh = godh_public_key(godh_cert)?;
    let z = shared_secret(pdh_key, &godh).map_err(SessionError::Crypto)?;
    unwrap_with_secret(&z, &blob, policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certs::Algo;
    use openssl::{ec::EcGroup, nid::Nid};

    fn p384_key() -> EcKey<Private> {
        EcKey::generate(&EcGroup::from_curve_name(Nid::SECP384R1).unwrap()).unwrap()
    }

    /// The virtee `sev` crate's `session::initialized::session` vector: zero nonce, IV,
    /// shared secret (16 bytes), TEK and TIK, default policy.
    #[test]
    fn zero_vector_from_virtee_unwraps_to_zero_keys() {
        let blob = SessionBlob {
            nonce: [0; 16],
            wrap_iv: [0; 16],
            wrap_tk: [
                0x21, 0x37, 0xbc, 0x7f, 0x9b, 0xb8, 0xbd, 0x7c, 0x3e, 0x55, 0xa5, 0x76, 0xa1, 0x5d,
                0x34, 0x54, 0xb3, 0x85, 0x6b, 0x8b, 0xa2, 0x7a, 0xfa, 0xdf, 0x46, 0xdc, 0xfe, 0xe9,
                0xf0, 0x2c, 0x02, 0xc4,
            ],
            wrap_mac: [
                0x31, 0x76, 0xc0, 0x75, 0x27, 0x38, 0xbd, 0x9d, 0x5e, 0x86, 0x68, 0x95, 0x34, 0x02,
                0x0f, 0x52, 0x8c, 0x08, 0x8f, 0x16, 0x23, 0x88, 0x26, 0xb0, 0x00, 0xb3, 0x27, 0xde,
                0xe6, 0xae, 0xed, 0x7d,
            ],
            policy_mac: [
                0xaa, 0x78, 0x55, 0xe1, 0x38, 0x39, 0xdd, 0x76, 0x7c, 0xd5, 0xda, 0x7c, 0x1f, 0xf5,
                0x03, 0x65, 0x40, 0xc9, 0x26, 0x4b, 0x7a, 0x80, 0x30, 0x29, 0x31, 0x5e, 0x55, 0x37,
                0x52, 0x87, 0xb4, 0xaf,
            ],
        };
        let keys = unwrap_with_secret(&[0; 16], &blob, Policy(0)).unwrap();
        assert_eq!(keys, TransportKeys::new([0; 16], [0; 16]));
        let again = wrap_with_secret(&[0; 16], [0; 16], [0; 16], &keys, Policy(0));
        assert_eq!(again, blob);
        assert_eq!(SessionBlob::parse(&blob.to_bytes()).unwrap(), blob);
    }

    fn session_for(
        pdh: &EcKeyRef<Private>,
        keys: &TransportKeys,
        policy: Policy,
    ) -> (Vec<u8>, [u8; 128]) {
        let godh_key = p384_key();
        let godh = SevCert::build(Usage::PDH, Algo::ECDH_SHA256, (0, 0), &godh_key).unwrap();
        let pdh_pub = EcKey::from_public_key(pdh.group(), pdh.public_key()).unwrap();
        let z = shared_secret(&godh_key, &pdh_pub).unwrap();
        let blob = wrap_with_secret(&z, [3; 16], [4; 16], keys, policy);
        (godh.as_bytes().to_vec(), blob.to_bytes())
    }

    #[test]
    fn session_opens_with_the_right_pdh_and_fails_with_the_right_status_otherwise() {
        let pdh = p384_key();
        let keys = TransportKeys::new([7; 16], [9; 16]);
        let (godh, blob) = session_for(&pdh, &keys, Policy(1));
        assert_eq!(open_session(&pdh, &godh, &blob, Policy(1)).unwrap(), keys);

        let status = |r: Result<TransportKeys, SessionError>| r.unwrap_err().status();
        assert_eq!(
            status(open_session(&p384_key(), &godh, &blob, Policy(1))),
            SevStatus::BAD_MEASUREMENT
        );
        assert_eq!(
            status(open_session(&pdh, &godh, &blob, Policy(0))),
            SevStatus::BAD_MEASUREMENT
        );
        assert_eq!(
            status(open_session(&pdh, &godh, &blob[..127], Policy(1))),
            SevStatus::INVALID_LENGTH
        );
        assert_eq!(
            status(open_session(&pdh, &godh[..0x823], &blob, Policy(1))),
            SevStatus::INVALID_LENGTH
        );
        for byte in [0x10, 0x2f, 0x40, 0x5f] {
            let mut bad = blob;
            bad[byte] ^= 0x01;
            assert_eq!(
                status(open_session(&pdh, &godh, &bad, Policy(1))),
                SevStatus::BAD_MEASUREMENT
            );
        }
        let mut bad = blob;
        bad[0x60] ^= 0x80;
        assert!(matches!(
            open_session(&pdh, &godh, &bad, Policy(1)),
            Err(SessionError::PolicyMac { .. })
        ));
        // The GODH must be a PDH-usage ECDH key on P-384 with a valid point.
        let mut not_pdh = godh.clone();
        not_pdh[8] = 0x02;
        assert_eq!(
            status(open_session(&pdh, &not_pdh, &blob, Policy(1))),
            SevStatus::INVALID_CERTIFICATE
        );
        let mut ecdsa = godh.clone();
        ecdsa[0xc] = 0x02;
        assert_eq!(
            status(open_session(&pdh, &ecdsa, &blob, Policy(1))),
            SevStatus::INVALID_CERTIFICATE
        );
        let mut off_curve = godh.clone();
        off_curve[0x20] ^= 0x01;
        assert_eq!(
            status(open_session(&pdh, &off_curve, &blob, Policy(1))),
            SevStatus::INVALID_CERTIFICATE
        );
        assert_eq!(
            status(open_session(&pdh, &[0u8; 0x824], &blob, Policy(1))),
            SevStatus::INVALID_CERTIFICATE
        );
    }
}
