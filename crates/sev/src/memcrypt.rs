//! The emulated memory-encryption transform (docs/architecture.md §3): what the host sees
//! of an SEV guest's private page is AES-128-XTS under the guest's VEK (Volume Encryption Key).
//!
//! One XTS data unit per 4 KiB page; the data unit number (the XTS "sector", IEEE P1619)
//! is the guest page frame number `gpa >> 12`, encoded little-endian into the 16-byte
//! tweak. Real SEV uses AES-128 with an address-based tweak too; the host view here is
//! not bit-compatible with hardware (nothing could check that), only equally opaque and
//! bound to the page address: the same plaintext on two pages gives unrelated
//! ciphertexts, and moving ciphertext between pages garbles it.

use crate::{
    backend::{PageCipher, PAGE_SIZE},
    crypto::{random_bytes, RandomError},
};
use aes::{cipher::KeyInit, Aes128};
use std::fmt;
use xts_mode::{get_tweak_default, Xts128};

/// AES-128-XTS under one guest's VEK. Shared (behind an `Arc`) by the guest and its
/// mirrors, as they share the ASID and thus the key. `Debug` does not show the key.
pub struct XtsPageCipher {
    xts: Xts128<Aes128>,
}

impl XtsPageCipher {
    /// A cipher under a fresh random VEK (two AES-128 keys).
    pub fn generate() -> Result<XtsPageCipher, RandomError> {
        let vek: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(random_bytes()?);
        Ok(XtsPageCipher::from_vek(&vek))
    }

    /// A cipher under a given VEK (data key ‖ tweak key).
    pub fn from_vek(vek: &[u8; 32]) -> XtsPageCipher {
        let data = Aes128::new(vek[..16].into());
        let tweak = Aes128::new(vek[16..].into());
        XtsPageCipher {
            xts: Xts128::new(data, tweak),
        }
    }

    fn tweak(gpa: u64) -> [u8; 16] {
        get_tweak_default(u128::from(gpa / PAGE_SIZE as u64))
    }
}

impl PageCipher for XtsPageCipher {
    fn encrypt_page(&self, gpa: u64, page: &mut [u8; PAGE_SIZE]) {
        self.xts.encrypt_sector(page, XtsPageCipher::tweak(gpa));
    }

    fn decrypt_page(&self, gpa: u64, page: &mut [u8; PAGE_SIZE]) {
        self.xts.decrypt_sector(page, XtsPageCipher::tweak(gpa));
    }
}

impl fmt::Debug for XtsPageCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XtsPageCipher { vek: <redacted> }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_round_trip_and_ciphertext_depends_on_address_and_key() {
        let c = XtsPageCipher::generate().unwrap();
        let plain = [0x5au8; PAGE_SIZE];
        let mut a = plain;
        c.encrypt_page(0x1000, &mut a);
        assert_ne!(a, plain);
        let mut b = plain;
        c.encrypt_page(0x2000, &mut b);
        assert_ne!(a, b, "same plaintext on another page looks different");
        let mut moved = a;
        c.decrypt_page(0x2000, &mut moved);
        assert_ne!(
            moved, plain,
            "ciphertext moved to another page does not decrypt"
        );
        c.decrypt_page(0x1000, &mut a);
        assert_eq!(a, plain);
        let other = XtsPageCipher::generate().unwrap();
        let mut d = plain;
        other.encrypt_page(0x1000, &mut d);
        let mut e = plain;
        c.encrypt_page(0x1000, &mut e);
        assert_ne!(d, e, "another guest's VEK gives another ciphertext");
        assert_eq!(format!("{c:?}"), "XtsPageCipher { vek: <redacted> }");
    }

    /// IEEE P1619 XTS-AES-128 vector 4 (data unit sequence number 0): first 16 bytes.
    #[test]
    fn matches_the_ieee_p1619_vector() {
        let mut vek = [0u8; 32];
        vek[..16].copy_from_slice(&[
            0x27, 0x18, 0x28, 0x18, 0x28, 0x45, 0x90, 0x45, 0x23, 0x53, 0x60, 0x28, 0x74, 0x71,
            0x35, 0x26,
        ]);
        vek[16..].copy_from_slice(&[
            0x31, 0x41, 0x59, 0x26, 0x53, 0x58, 0x97, 0x93, 0x23, 0x84, 0x62, 0x64, 0x33, 0x83,
            0x27, 0x95,
        ]);
        let c = XtsPageCipher::from_vek(&vek);
        // The vector's plaintext is 512 bytes 00..ff 00..ff; as a page, repeated.
        let mut page = [0u8; PAGE_SIZE];
        for (i, b) in page.iter_mut().enumerate() {
            *b = i as u8;
        }
        c.encrypt_page(0, &mut page);
        assert_eq!(
            page[..16],
            [
                0x27, 0xa7, 0x47, 0x9b, 0xef, 0xa1, 0xd4, 0x76, 0x48, 0x9f, 0x30, 0x8c, 0xd4, 0xcf,
                0xa6, 0xe2
            ]
        );
    }
}
