//! The known-answer self-test the firmware runs before its helper reports ready.
//!
//! Two vectors: the GCM specification's Test Case 16 (AES-256, 60-byte text, 20-byte
//! AAD; the whole ciphertext and tag are compared), and a 4157-byte text with a 68-byte
//! AAD (a helper record's AAD size) generated from a fixed pattern, which runs a
//! kernel's stitched loop and its tail: its tag, computed with OpenSSL (Python
//! `cryptography` 48) and checked against RustCrypto by this module's tests, covers
//! every ciphertext byte. Both are opened again, and a record with one tag bit flipped
//! must be refused with its buffer zeroed.

use crate::{Aes256Gcm, Error, Kernel};

/// Why the self-test failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelfTestError {
    /// The kernel cannot run on this CPU.
    #[error(transparent)]
    Unsupported(#[from] Error),
    /// A known answer came out wrong.
    #[error("AES-256-GCM self-test of the {kernel} kernel failed: {what}")]
    Failed {
        /// The kernel tested.
        kernel: Kernel,
        /// Which check failed.
        what: &'static str,
    },
}

/// Decodes a hex string at compile time.
const fn unhex<const N: usize>(s: &str) -> [u8; N] {
    let s = s.as_bytes();
    assert!(s.len() == 2 * N, "hex string length");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = (nibble(s[2 * i]) << 4) | nibble(s[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not a lowercase hex digit"),
    }
}

// GCM specification (McGrew & Viega), Test Case 16.
const TC16_KEY: [u8; 32] =
    unhex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308");
const TC16_NONCE: [u8; 12] = unhex("cafebabefacedbaddecaf888");
const TC16_AAD: [u8; 20] = unhex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
const TC16_PT: [u8; 60] = unhex(
    "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
     1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
);
const TC16_CT: [u8; 60] = unhex(
    "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
     8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
);
const TC16_TAG: [u8; 16] = unhex("76fc6ece0f4e1768cddf8853bb2d551b");

/// Length of the long vector's text: 16 steps of 256 bytes, 3 blocks and 13 bytes.
const LONG_LEN: usize = 4157;
/// Length of the long vector's AAD.
const LONG_AAD_LEN: usize = 68;
/// The long vector's tag (key, nonce, AAD and text from `pattern` with seeds 1-4).
const LONG_TAG: [u8; 16] = unhex("834966f7ca6335d0aa6db218697878d3");

/// Fills `out` with the test pattern: byte i is the top byte of
/// `i·0x9E3779B1 + seed·0x01000193` (mod 2^32).
fn pattern(seed: u32, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = ((i as u32)
            .wrapping_mul(0x9E37_79B1)
            .wrapping_add(seed.wrapping_mul(0x0100_0193))
            >> 24) as u8;
    }
}

fn pattern_array<const N: usize>(seed: u32) -> [u8; N] {
    let mut a = [0u8; N];
    pattern(seed, &mut a);
    a
}

/// Runs the known-answer tests on `kernel`.
pub fn self_test(kernel: Kernel) -> Result<(), SelfTestError> {
    let fail = |what| SelfTestError::Failed { kernel, what };

    let gcm = Aes256Gcm::with_kernel(&TC16_KEY, kernel)?;
    let mut buf = TC16_PT;
    let tag = gcm
        .seal_in_place(&TC16_NONCE, &TC16_AAD, &mut buf)
        .map_err(|_| fail("test case 16 could not be sealed"))?;
    if buf != TC16_CT {
        return Err(fail("test case 16: wrong ciphertext"));
    }
    if tag != TC16_TAG {
        return Err(fail("test case 16: wrong tag"));
    }
    if gcm
        .open_in_place(&TC16_NONCE, &TC16_AAD, &mut buf, &tag)
        .is_err()
        || buf != TC16_PT
    {
        return Err(fail("test case 16 did not open"));
    }

    let gcm = Aes256Gcm::with_kernel(&pattern_array::<32>(1), kernel)?;
    let nonce = pattern_array::<12>(2);
    let aad = pattern_array::<LONG_AAD_LEN>(3);
    let mut text = [0u8; LONG_LEN];
    pattern(4, &mut text);
    let tag = gcm
        .seal_in_place(&nonce, &aad, &mut text)
        .map_err(|_| fail("the long vector could not be sealed"))?;
    if tag != LONG_TAG {
        return Err(fail("the long vector: wrong tag"));
    }
    let sealed = text;
    if gcm.open_in_place(&nonce, &aad, &mut text, &tag).is_err() {
        return Err(fail("the long vector did not open"));
    }
    let mut expected = [0u8; LONG_LEN];
    pattern(4, &mut expected);
    if text != expected {
        return Err(fail("the long vector opened to the wrong text"));
    }
    let mut forged = sealed;
    let mut bad_tag = tag;
    bad_tag[15] ^= 1;
    if gcm.open_in_place(&nonce, &aad, &mut forged, &bad_tag) != Err(Error::AuthFailed) {
        return Err(fail("a wrong tag was accepted"));
    }
    if forged.iter().any(|b| *b != 0) {
        return Err(fail("a refused record was not zeroed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{AeadInPlace, KeyInit};

    /// The long vector's tag is what RustCrypto computes too (it came from OpenSSL).
    #[test]
    fn long_vector_tag_matches_rustcrypto() {
        let c = aes_gcm::Aes256Gcm::new((&pattern_array::<32>(1)).into());
        let mut text = [0u8; LONG_LEN];
        pattern(4, &mut text);
        let tag = c
            .encrypt_in_place_detached(
                (&pattern_array::<12>(2)).into(),
                &pattern_array::<LONG_AAD_LEN>(3),
                &mut text,
            )
            .unwrap();
        assert_eq!(<[u8; 16]>::from(tag), LONG_TAG);
    }

    #[test]
    fn test_case_16_matches_rustcrypto() {
        let c = aes_gcm::Aes256Gcm::new((&TC16_KEY).into());
        let mut buf = TC16_PT;
        let tag = c
            .encrypt_in_place_detached((&TC16_NONCE).into(), &TC16_AAD, &mut buf)
            .unwrap();
        assert_eq!(buf, TC16_CT);
        assert_eq!(<[u8; 16]>::from(tag), TC16_TAG);
    }
}
