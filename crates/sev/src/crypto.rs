//! Symmetric primitives of the SEV launch protocol, shared by the PSP side and the guest
//! owner side: HMAC-SHA256, the NIST SP 800-108 counter-mode KDF, AES-128-CTR, and the
//! transport keys (TEK, TIK).
//!
//! AMD SEV API spec 0.24 §2.2 ("Key Management") names the primitives; the exact KDF
//! input layout (counter ‖ label ‖ 0x00 ‖ context ‖ L, all integers little-endian) is
//! the one AMD's `sev-tool` (`Command::kdf`) and the virtee `sev` crate
//! (`session/key.rs`) use against real firmware.

use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::fmt;
use zeroize::{Zeroize, ZeroizeOnDrop};

type HmacSha256 = Hmac<Sha256>;
type Aes128Ctr = ctr::Ctr128BE<Aes128>;

/// Size of an HMAC-SHA256 tag.
pub const MAC_SIZE: usize = 32;

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the system random number generator failed: {0}")]
pub struct RandomError(getrandom::Error);

/// `N` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut out = [0u8; N];
    getrandom::getrandom(&mut out).map_err(RandomError)?;
    Ok(out)
}

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; MAC_SIZE] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA256 of `parts` under `key`, compared in constant time.
pub fn hmac_sha256_verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(tag).is_ok()
}

/// NIST SP 800-108 KDF in counter mode with HMAC-SHA256 as PRF (AMD SEV API spec 0.24
/// §2.2.1): block i = HMAC(key, i (u32 LE) ‖ label ‖ 0x00 ‖ context ‖ L (u32 LE)), with
/// L the output length in bits; `out` is filled from the concatenated blocks.
pub fn kdf(key: &[u8], label: &[u8], context: &[u8], out: &mut [u8]) {
    let bits = u32::try_from(out.len() * 8).expect("KDF outputs are a few bytes long");
    for (i, chunk) in out.chunks_mut(MAC_SIZE).enumerate() {
        let counter = u32::try_from(i + 1).expect("KDF outputs are a few blocks long");
        let block = hmac_sha256(
            key,
            &[
                &counter.to_le_bytes(),
                label,
                &[0u8],
                context,
                &bits.to_le_bytes(),
            ],
        );
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

/// AES-128 in counter mode (128-bit big-endian counter starting at `iv`, as OpenSSL's
/// `aes-128-ctr`), applied in place; encryption and decryption are the same operation.
pub fn aes128_ctr(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) {
    let mut cipher = Aes128Ctr::new(key.into(), iv.into());
    cipher.apply_keystream(data);
}

/// The transport keys of one guest (AMD SEV API spec 0.24 §2.2.3): the Transport
/// Encryption Key (TEK, AES-128) and the Transport Integrity Key (TIK, HMAC-SHA256).
/// Wiped on drop; `Debug` does not show them.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct TransportKeys {
    tek: [u8; 16],
    tik: [u8; 16],
}

impl TransportKeys {
    /// Wraps a TEK and a TIK.
    pub fn new(tek: [u8; 16], tik: [u8; 16]) -> TransportKeys {
        TransportKeys { tek, tik }
    }

    /// Fresh random keys (what the firmware does at LAUNCH_START without a session, and
    /// what the guest owner does for a new session).
    pub fn generate() -> Result<TransportKeys, RandomError> {
        Ok(TransportKeys {
            tek: random_bytes()?,
            tik: random_bytes()?,
        })
    }

    /// Reads keys from the 16-byte TEK and TIK files `sevctl session` writes.
    pub fn from_slices(tek: &[u8], tik: &[u8]) -> Option<TransportKeys> {
        Some(TransportKeys {
            tek: tek.try_into().ok()?,
            tik: tik.try_into().ok()?,
        })
    }

    /// The Transport Encryption Key.
    pub fn tek(&self) -> &[u8; 16] {
        &self.tek
    }

    /// The Transport Integrity Key.
    pub fn tik(&self) -> &[u8; 16] {
        &self.tik
    }
}

impl fmt::Debug for TransportKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TransportKeys { tek: <redacted>, tik: <redacted> }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vector from the virtee `sev` crate's `session/key.rs` test `derive`, which its
    /// authors checked against real firmware sessions.
    #[test]
    fn kdf_matches_the_virtee_vector() {
        let mut master = [0u8; 16];
        kdf(&[0u8; 16], b"sev-master-secret", &[0u8; 16], &mut master);
        assert_eq!(
            master,
            [
                0xab, 0x4d, 0x26, 0x9f, 0xcc, 0x62, 0xbe, 0xdb, 0x45, 0x11, 0xd5, 0x6c, 0x38, 0x6c,
                0xe7, 0x06
            ]
        );
    }

    #[test]
    fn kdf_longer_than_one_block_continues_the_counter() {
        let mut long = [0u8; 48];
        kdf(b"k", b"label", b"ctx", &mut long);
        let first = hmac_sha256(
            b"k",
            &[
                &1u32.to_le_bytes(),
                b"label",
                &[0],
                b"ctx",
                &384u32.to_le_bytes(),
            ],
        );
        let second = hmac_sha256(
            b"k",
            &[
                &2u32.to_le_bytes(),
                b"label",
                &[0],
                b"ctx",
                &384u32.to_le_bytes(),
            ],
        );
        assert_eq!(&long[..32], &first);
        assert_eq!(&long[32..], &second[..16]);
    }

    /// virtee `session/key.rs` test `mac`: HMAC-SHA256 with a zero key over a zero policy.
    #[test]
    fn hmac_matches_the_virtee_vector_and_verifies() {
        let tag = hmac_sha256(&[0u8; 16], &[&[0u8; 4]]);
        assert_eq!(tag[..4], [0xaa, 0x78, 0x55, 0xe1]);
        assert_eq!(tag[28..], [0x52, 0x87, 0xb4, 0xaf]);
        assert!(hmac_sha256_verify(
            &[0u8; 16],
            &[&[0u8; 2], &[0u8; 2]],
            &tag
        ));
        let mut bad = tag;
        bad[31] ^= 1;
        assert!(!hmac_sha256_verify(&[0u8; 16], &[&[0u8; 4]], &bad));
        assert!(!hmac_sha256_verify(&[0u8; 16], &[&[0u8; 4]], &tag[..31]));
    }

    #[test]
    fn ctr_round_trips_and_matches_a_known_stream() {
        // NIST SP 800-38A F.5.1 (CTR-AES128.Encrypt), first block.
        let key = [
            0x2b, 0x7e, 0x15, 0x16, 0x28, 0xae, 0xd2, 0xa6, 0xab, 0xf7, 0x15, 0x88, 0x09, 0xcf,
            0x4f, 0x3c,
        ];
        let iv = [
            0xf0, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd,
            0xfe, 0xff,
        ];
        let plain = [
            0x6b, 0xc1, 0xbe, 0xe2, 0x2e, 0x40, 0x9f, 0x96, 0xe9, 0x3d, 0x7e, 0x11, 0x73, 0x93,
            0x17, 0x2a,
        ];
        let mut data = plain;
        aes128_ctr(&key, &iv, &mut data);
        assert_eq!(
            data,
            [
                0x87, 0x4d, 0x61, 0x91, 0xb6, 0x20, 0xe3, 0x26, 0x1b, 0xef, 0x68, 0x64, 0x99, 0x0d,
                0xb6, 0xce
            ]
        );
        aes128_ctr(&key, &iv, &mut data);
        assert_eq!(data, plain);
    }

    #[test]
    fn transport_keys_debug_hides_the_keys() {
        let keys = TransportKeys::new([0x41; 16], [0x42; 16]);
        let text = format!("{keys:?}");
        assert!(!text.contains("65") && !text.contains("41"), "{text}");
        assert!(TransportKeys::from_slices(&[0; 15], &[0; 16]).is_none());
        assert_ne!(
            TransportKeys::generate().unwrap(),
            TransportKeys::generate().unwrap()
        );
    }
}
