//! SEV platform certificates in AMD's format (AMD SEV API spec 0.24, appendix C.1): a
//! fixed 0x824-byte structure holding one public key and up to two signatures.
//!
//! Layout (all integers little-endian; checked against real Naples and Rome chains in the
//! virtee `sev` crate's test data and AMD `sev-tool`'s `sev_cert`):
//!
//! | offset | size  | field                                                     |
//! |--------|-------|-----------------------------------------------------------|
//! | 0x000  | 4     | version (1)                                               |
//! | 0x004  | 1 + 1 | API major, minor of the firmware that made the key        |
//! | 0x006  | 2     | reserved                                                  |
//! | 0x008  | 4     | public key usage ([`Usage`])                              |
//! | 0x00c  | 4     | public key algorithm ([`Algo`])                           |
//! | 0x010  | 0x404 | public key; ECC: curve u32, Qx\[72\], Qy\[72\] (LE), zero |
//! | 0x414  | 4 + 4 | signature 1: signer usage, algorithm                      |
//! | 0x41c  | 0x200 | signature 1; ECDSA: R\[72\], S\[72\] (LE), zero           |
//! | 0x61c  | 4 + 4 | signature 2: signer usage, algorithm                      |
//! | 0x624  | 0x200 | signature 2                                               |
//!
//! A signature covers bytes 0x000..0x414 (the body), hashed with the signer's algorithm.
//! This module builds, parses and verifies the ECDSA/ECDH P-384 certificates SEV uses for
//! OCA, PEK, PDH and CEK; RSA keys (AMD's ARK/ASK) are recognised but not verified here.

use openssl::{
    bn::{BigNum, BigNumContext, BigNumRef},
    ec::{EcGroup, EcKey, EcKeyRef},
    ecdsa::EcdsaSig,
    nid::Nid,
    pkey::{Private, Public},
};
use sha2::{Digest, Sha256, Sha384};
use std::fmt;

/// Size of an SEV certificate.
pub const CERT_SIZE: usize = 0x824;
/// Size of the signed part (version through public key).
pub const BODY_SIZE: usize = 0x414;

const OFF_USAGE: usize = 0x008;
const OFF_ALGO: usize = 0x00c;
const OFF_KEY: usize = 0x010;
const OFF_SIG: [usize; 2] = [0x414, 0x61c];
const SIG_AREA: usize = 0x208;
/// Size of one coordinate or signature component field.
const COMPONENT: usize = 72;
/// Bytes of a P-384 coordinate.
const P384_BYTES: usize = 48;

/// Key usage (AMD SEV API spec 0.24, appendix C.1, table 115).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Usage(pub u32);

impl Usage {
    /// AMD Root Key.
    pub const ARK: Usage = Usage(0x0000);
    /// AMD Signing Key.
    pub const ASK: Usage = Usage(0x0013);
    /// No key (an empty signature slot).
    pub const INVALID: Usage = Usage(0x1000);
    /// Owner Certificate Authority.
    pub const OCA: Usage = Usage(0x1001);
    /// Platform Endorsement Key.
    pub const PEK: Usage = Usage(0x1002);
    /// Platform Diffie-Hellman key.
    pub const PDH: Usage = Usage(0x1003);
    /// Chip Endorsement Key.
    pub const CEK: Usage = Usage(0x1004);

    /// The spec's name, if the value is defined.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Usage::ARK => "ARK",
            Usage::ASK => "ASK",
            Usage::INVALID => "INVALID",
            Usage::OCA => "OCA",
            Usage::PEK => "PEK",
            Usage::PDH => "PDH",
            Usage::CEK => "CEK",
            _ => return None,
        })
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "usage {:#x}", self.0),
        }
    }
}

/// Key or signature algorithm (AMD SEV API spec 0.24, appendix C.1, table 116).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Algo(pub u32);

impl Algo {
    /// No algorithm (empty signature slot).
    pub const NONE: Algo = Algo(0x0000);
    /// RSA-PSS with SHA-256.
    pub const RSA_SHA256: Algo = Algo(0x0001);
    /// ECDSA with SHA-256.
    pub const ECDSA_SHA256: Algo = Algo(0x0002);
    /// ECDH key, SHA-256.
    pub const ECDH_SHA256: Algo = Algo(0x0003);
    /// RSA-PSS with SHA-384.
    pub const RSA_SHA384: Algo = Algo(0x0101);
    /// ECDSA with SHA-384.
    pub const ECDSA_SHA384: Algo = Algo(0x0102);
    /// ECDH key, SHA-384.
    pub const ECDH_SHA384: Algo = Algo(0x0103);

    fn is_ecdsa(self) -> bool {
        self == Algo::ECDSA_SHA256 || self == Algo::ECDSA_SHA384
    }

    fn is_ecdh(self) -> bool {
        self == Algo::ECDH_SHA256 || self == Algo::ECDH_SHA384
    }

    fn is_rsa(self) -> bool {
        self == Algo::RSA_SHA256 || self == Algo::RSA_SHA384
    }

    fn is_known(self) -> bool {
        self == Algo::NONE || self.is_ecdsa() || self.is_ecdh() || self.is_rsa()
    }
}

/// Elliptic curve id (AMD SEV API spec 0.24, appendix C.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Curve(pub u32);

impl Curve {
    /// NIST P-256.
    pub const P256: Curve = Curve(1);
    /// NIST P-384, the curve SEV uses for OCA, PEK, PDH and CEK.
    pub const P384: Curve = Curve(2);
}

/// A certificate that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// Wrong size.
    #[error("certificate is {len} bytes, expected {CERT_SIZE:#x}")]
    Length {
        /// Bytes given.
        len: usize,
    },
    /// Unsupported certificate version.
    #[error("certificate version {0} is not supported (expected 1)")]
    Version(u32),
    /// Unknown usage or algorithm value.
    #[error("unknown {field} value {value:#x}")]
    UnknownValue {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u32,
    },
    /// The certificate has another usage than required.
    #[error("certificate is a {found} certificate, expected {expected}")]
    WrongUsage {
        /// Required usage.
        expected: Usage,
        /// Usage found.
        found: Usage,
    },
    /// The key algorithm does not fit the use.
    #[error("{usage} key algorithm {algo:#x} is not usable here")]
    WrongAlgo {
        /// Usage of the key.
        usage: Usage,
        /// Its algorithm.
        algo: u32,
    },
    /// The key is not on P-384.
    #[error("public key curve {0} is not P-384")]
    Curve(u32),
    /// The public key is not a valid point.
    #[error("public key is not a valid P-384 point")]
    BadPoint(#[source] openssl::error::ErrorStack),
    /// No signature slot carries a valid signature by the expected signer.
    #[error("{subject} certificate carries no valid signature by the {signer} key")]
    BadSignature {
        /// Usage of the certificate checked.
        subject: Usage,
        /// Usage of the expected signer.
        signer: Usage,
    },
    /// Both signature slots are taken.
    #[error("certificate has no free signature slot")]
    NoFreeSlot,
    /// OpenSSL failed on a well-formed input.
    #[error("OpenSSL failed")]
    Crypto(#[source] openssl::error::ErrorStack),
}

/// One SEV certificate, structurally validated: right size, version 1, known usage and
/// algorithm values.
#[derive(Clone, PartialEq, Eq)]
pub struct SevCert {
    bytes: Box<[u8; CERT_SIZE]>,
}

fn le32(b: &[u8], off: usize) -> u32 {
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(v)
}

fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes `n` little-endian into a 72-byte field.
fn put_component(field: &mut [u8], n: &BigNumRef) -> Result<(), CertError> {
    let be = n.to_vec();
    if be.len() > COMPONENT {
        return Err(CertError::Crypto(openssl::error::ErrorStack::get()));
    }
    field[..COMPONENT].fill(0);
    for (i, byte) in be.iter().rev().enumerate() {
        field[i] = *byte;
    }
    Ok(())
}

fn read_component(field: &[u8], len: usize) -> Result<BigNum, CertError> {
    let be: Vec<u8> = field[..len].iter().rev().copied().collect();
    BigNum::from_slice(&be).map_err(CertError::Crypto)
}

fn p384() -> Result<EcGroup, CertError> {
    EcGroup::from_curve_name(Nid::SECP384R1).map_err(CertError::Crypto)
}

impl SevCert {
    /// Parses and structurally validates a certificate. Untrusted input is fine: nothing
    /// here panics, and keys and signatures are checked by [`SevCert::public_key`] and
    /// [`SevCert::verify_signed_by`].
    pub fn parse(bytes: &[u8]) -> Result<SevCert, CertError> {
        let arr: [u8; CERT_SIZE] = bytes
            .try_into()
            .map_err(|_| CertError::Length { len: bytes.len() })?;
        let cert = SevCert {
            bytes: Box::new(arr),
        };
        let version = le32(&cert.bytes[..], 0);
        if version != 1 {
            return Err(CertError::Version(version));
        }
        if cert.usage().name().is_none() || cert.usage() == Usage::INVALID {
            return Err(CertError::UnknownValue {
                field: "public key usage",
                value: cert.usage().0,
            });
        }
        if !cert.algo().is_known() || cert.algo() == Algo::NONE {
            return Err(CertError::UnknownValue {
                field: "public key algorithm",
                value: cert.algo().0,
            });
        }
        for slot in 0..2 {
            let (usage, algo) = cert.sig_slot(slot);
            if usage.name().is_none() {
                return Err(CertError::UnknownValue {
                    field: "signature usage",
                    value: usage.0,
                });
            }
            if !algo.is_known() {
                return Err(CertError::UnknownValue {
                    field: "signature algorithm",
                    value: algo.0,
                });
            }
        }
        Ok(cert)
    }

    /// Parses a certificate and requires `usage`.
    pub fn parse_as(bytes: &[u8], usage: Usage) -> Result<SevCert, CertError> {
        let cert = SevCert::parse(bytes)?;
        if cert.usage() != usage {
            return Err(CertError::WrongUsage {
                expected: usage,
                found: cert.usage(),
            });
        }
        Ok(cert)
    }

    /// The encoded certificate.
    pub fn as_bytes(&self) -> &[u8; CERT_SIZE] {
        &self.bytes
    }

    /// API version recorded in the certificate (major, minor).
    pub fn api_version(&self) -> (u8, u8) {
        (self.bytes[4], self.bytes[5])
    }

    /// The public key's usage.
    pub fn usage(&self) -> Usage {
        Usage(le32(&self.bytes[..], OFF_USAGE))
    }

    /// The public key's algorithm.
    pub fn algo(&self) -> Algo {
        Algo(le32(&self.bytes[..], OFF_ALGO))
    }

    /// Usage and algorithm of signature slot `slot` (0 or 1).
    pub fn sig_slot(&self, slot: usize) -> (Usage, Algo) {
        let off = OFF_SIG[slot & 1];
        (
            Usage(le32(&self.bytes[..], off)),
            Algo(le32(&self.bytes[..], off + 4)),
        )
    }

    /// The ECC public key (P-384), validated as a point on the curve.
    pub fn public_key(&self) -> Result<EcKey<Public>, CertError> {
        let algo = self.algo();
        if !algo.is_ecdsa() && !algo.is_ecdh() {
            return Err(CertError::WrongAlgo {
                usage: self.usage(),
                algo: algo.0,
            });
        }
        let curve = le32(&self.bytes[..], OFF_KEY);
        if Curve(curve) != Curve::P384 {
            return Err(CertError::Curve(curve));
        }
        let qx = read_component(&self.bytes[OFF_KEY + 4..], P384_BYTES)?;
        let qy = read_component(&self.bytes[OFF_KEY + 4 + COMPONENT..], P384_BYTES)?;
        let group = p384()?;
        let key = EcKey::from_public_key_affine_coordinates(&group, &qx, &qy)
            .map_err(CertError::BadPoint)?;
        key.check_key().map_err(CertError::BadPoint)?;
        Ok(key)
    }

    /// Builds an unsigned certificate for `key` (both signature slots empty).
    pub fn build(
        usage: Usage,
        algo: Algo,
        api: (u8, u8),
        key: &EcKeyRef<Private>,
    ) -> Result<SevCert, CertError> {
        let mut b = Box::new([0u8; CERT_SIZE]);
        put32(&mut b[..], 0, 1);
        b[4] = api.0;
        b[5] = api.1;
        put32(&mut b[..], OFF_USAGE, usage.0);
        put32(&mut b[..], OFF_ALGO, algo.0);
        put32(&mut b[..], OFF_KEY, Curve::P384.0);
        let mut ctx = BigNumContext::new().map_err(CertError::Crypto)?;
        let mut x = BigNum::new().map_err(CertError::Crypto)?;
        let mut y = BigNum::new().map_err(CertError::Crypto)?;
        key.public_key()
            .affine_coordinates(key.group(), &mut x, &mut y, &mut ctx)
            .map_err(CertError::Crypto)?;
        put_component(&mut b[OFF_KEY + 4..OFF_KEY + 4 + COMPONENT], &x)?;
        put_component(
            &mut b[OFF_KEY + 4 + COMPONENT..OFF_KEY + 4 + 2 * COMPONENT],
            &y,
        )?;
        for off in OFF_SIG {
            put32(&mut b[..], off, Usage::INVALID.0);
        }
        Ok(SevCert { bytes: b })
    }

    /// Signs the body with `key` (whose certificate has usage `signer` and algorithm
    /// `signer_algo`, an ECDSA algorithm) into the first free slot.
    pub fn sign(
        &mut self,
        signer: Usage,
        signer_algo: Algo,
        key: &EcKeyRef<Private>,
    ) -> Result<(), CertError> {
        if !signer_algo.is_ecdsa() {
            return Err(CertError::WrongAlgo {
                usage: signer,
                algo: signer_algo.0,
            });
        }
        let slot = (0..2)
            .find(|&s| self.sig_slot(s).0 == Usage::INVALID)
            .ok_or(CertError::NoFreeSlot)?;
        let digest = self.body_digest(signer_algo);
        let sig = EcdsaSig::sign(&digest, key).map_err(CertError::Crypto)?;
        let off = OFF_SIG[slot];
        let b = &mut self.bytes[..];
        put32(b, off, signer.0);
        put32(b, off + 4, signer_algo.0);
        b[off + 8..off + SIG_AREA].fill(0);
        put_component(&mut b[off + 8..off + 8 + COMPONENT], sig.r())?;
        put_component(
            &mut b[off + 8 + COMPONENT..off + 8 + 2 * COMPONENT],
            sig.s(),
        )?;
        Ok(())
    }

    fn body_digest(&self, algo: Algo) -> Vec<u8> {
        let body = &self.bytes[..BODY_SIZE];
        if algo == Algo::ECDSA_SHA384 || algo == Algo::ECDH_SHA384 || algo == Algo::RSA_SHA384 {
            Sha384::digest(body).to_vec()
        } else {
            Sha256::digest(body).to_vec()
        }
    }

    /// Verifies that one of the signature slots holds a valid signature by `signer`'s key:
    /// the slot's usage and algorithm must be the signer's (as firmware and `sev-tool`
    /// require) and the ECDSA signature must verify over the body.
    pub fn verify_signed_by(&self, signer: &SevCert) -> Result<(), CertError> {
        let bad = CertError::BadSignature {
            subject: self.usage(),
            signer: signer.usage(),
        };
        if !signer.algo().is_ecdsa() {
            return Err(bad);
        }
        let key = signer.public_key()?;
        for (slot, sig_off) in OFF_SIG.iter().enumerate() {
            let (usage, algo) = self.sig_slot(slot);
            if usage != signer.usage() || algo != signer.algo() {
                continue;
            }
            let off = sig_off + 8;
            let r = read_component(&self.bytes[off..], COMPONENT)?;
            let s = read_component(&self.bytes[off + COMPONENT..], COMPONENT)?;
            let Ok(sig) = EcdsaSig::from_private_components(r, s) else {
                continue;
            };
            if sig.verify(&self.body_digest(algo), &key).unwrap_or(false) {
                return Ok(());
            }
        }
        Err(bad)
    }
}

impl fmt::Debug for SevCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (major, minor) = self.api_version();
        let (u1, a1) = self.sig_slot(0);
        let (u2, a2) = self.sig_slot(1);
        let id = Sha256::digest(&self.bytes[..BODY_SIZE]);
        write!(
            f,
            "SevCert {{ {} algo {:#x} api {major}.{minor} sigs [{u1}/{:#x}, {u2}/{:#x}] body-sha256 {:02x}{:02x}{:02x}{:02x}.. }}",
            self.usage(),
            self.algo().0,
            a1.0,
            a2.0,
            id[0],
            id[1],
            id[2],
            id[3]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> EcKey<Private> {
        EcKey::generate(&p384().unwrap()).unwrap()
    }

    #[test]
    fn built_certificate_has_the_amd_layout() {
        let k = key();
        let mut c = SevCert::build(Usage::PEK, Algo::ECDSA_SHA256, (0, 24), &k).unwrap();
        c.sign(Usage::OCA, Algo::ECDSA_SHA256, &k).unwrap();
        let b = c.as_bytes();
        assert_eq!(b.len(), 0x824);
        assert_eq!(b[0..8], [1, 0, 0, 0, 0, 24, 0, 0]);
        assert_eq!(b[8..0x14], [0x02, 0x10, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(b[0x414..0x41c], [0x01, 0x10, 0, 0, 2, 0, 0, 0]);
        assert_eq!(b[0x61c..0x624], [0x00, 0x10, 0, 0, 0, 0, 0, 0]);
        // Qx, Qy occupy 48 of their 72 bytes; the key area after them is zero.
        assert!(b[0x14 + 48..0x14 + 72].iter().all(|&x| x == 0));
        assert!(b[0xa4..0x414].iter().all(|&x| x == 0));
        let again = SevCert::parse(b).unwrap();
        assert_eq!(again, c);
        assert_eq!(again.usage(), Usage::PEK);
        let oca = SevCert::build(Usage::OCA, Algo::ECDSA_SHA256, (0, 24), &k).unwrap();
        again.verify_signed_by(&oca).unwrap();
    }

    #[test]
    fn signature_by_another_key_or_usage_is_rejected() {
        let (k1, k2) = (key(), key());
        let oca = {
            let mut c = SevCert::build(Usage::OCA, Algo::ECDSA_SHA256, (0, 24), &k1).unwrap();
            c.sign(Usage::OCA, Algo::ECDSA_SHA256, &k1).unwrap();
            c
        };
        let mut pek = SevCert::build(Usage::PEK, Algo::ECDSA_SHA256, (0, 24), &k2).unwrap();
        pek.sign(Usage::OCA, Algo::ECDSA_SHA256, &k2).unwrap();
        assert!(matches!(
            pek.verify_signed_by(&oca),
            Err(CertError::BadSignature { .. })
        ));
        let mut pek = SevCert::build(Usage::PEK, Algo::ECDSA_SHA256, (0, 24), &k2).unwrap();
        pek.sign(Usage::CEK, Algo::ECDSA_SHA256, &k1).unwrap();
        assert!(
            pek.verify_signed_by(&oca).is_err(),
            "slot usage must be the signer's"
        );
        pek.sign(Usage::OCA, Algo::ECDSA_SHA256, &k1).unwrap();
        pek.verify_signed_by(&oca).unwrap();
        assert!(matches!(
            pek.sign(Usage::OCA, Algo::ECDSA_SHA256, &k1),
            Err(CertError::NoFreeSlot)
        ));
        // A flipped body bit breaks the signature.
        let mut bytes = *pek.as_bytes();
        bytes[0x20] ^= 1;
        let tampered = SevCert::parse(&bytes).unwrap();
        assert!(tampered.verify_signed_by(&oca).is_err());
    }

    #[test]
    fn malformed_certificates_are_rejected_without_panicking() {
        let k = key();
        let good = *SevCert::build(Usage::PDH, Algo::ECDH_SHA256, (0, 24), &k)
            .unwrap()
            .as_bytes();
        assert!(matches!(
            SevCert::parse(&good[..100]),
            Err(CertError::Length { len: 100 })
        ));
        let mut v = good;
        v[0] = 2;
        assert!(matches!(SevCert::parse(&v), Err(CertError::Version(2))));
        let mut u = good;
        u[8] = 0x77;
        assert!(matches!(
            SevCert::parse(&u),
            Err(CertError::UnknownValue { .. })
        ));
        let mut curve = good;
        curve[0x10] = 1;
        assert!(matches!(
            SevCert::parse(&curve).unwrap().public_key(),
            Err(CertError::Curve(1))
        ));
        let mut point = good;
        point[0x14] ^= 0xff;
        assert!(matches!(
            SevCert::parse(&point).unwrap().public_key(),
            Err(CertError::BadPoint(_))
        ));
        assert!(matches!(
            SevCert::parse_as(&good, Usage::PEK),
            Err(CertError::WrongUsage { .. })
        ));
        // Every single-byte corruption of the header either parses or fails cleanly.
        for i in 0..0x20 {
            let mut c = good;
            c[i] = c[i].wrapping_add(0x5a);
            if let Ok(cert) = SevCert::parse(&c) {
                let _ = cert.public_key();
            }
        }
    }

    #[test]
    fn virtee_decodes_and_verifies_our_certificates() {
        use sev::certs::sev::{sev::Certificate, Verifiable};
        use sev::parser::Decoder;
        let k = key();
        let mut oca = SevCert::build(Usage::OCA, Algo::ECDSA_SHA256, (0, 24), &k).unwrap();
        oca.sign(Usage::OCA, Algo::ECDSA_SHA256, &k).unwrap();
        let theirs = Certificate::decode(&mut &oca.as_bytes()[..], ()).unwrap();
        (&theirs, &theirs).verify().unwrap();
        // And their encoding of it is byte-identical.
        let mut out = Vec::new();
        sev::parser::Encoder::encode(&theirs, &mut out, ()).unwrap();
        assert_eq!(out, oca.as_bytes().to_vec());
    }
}
