//! LAUNCH_SECRET packets (AMD SEV API spec 0.24 §6.6): the guest owner encrypts a secret
//! with AES-128-CTR under the TEK and MACs it with the TIK, binding the launch
//! measurement; the PSP checks and decrypts it into guest memory.
//!
//! Header (52 bytes, [`SecretHeader`]): FLAGS (u32 LE) ‖ IV (16) ‖ MAC (32), where
//! MAC = HMAC-SHA256(TIK, 0x01 ‖ FLAGS ‖ IV ‖ GUEST_LENGTH (u32 LE) ‖ TRANS_LENGTH
//! (u32 LE) ‖ CIPHERTEXT ‖ MEASUREMENT) and MEASUREMENT is the 32-byte HMAC LAUNCH_MEASURE
//! returned (virtee `Session<Verified>::secret`, `sevctl secret build`, AMD `sev-tool`
//! `create_launch_secret_header` for API ≥ 0.17). QEMU (`sev_inject_launch_secret`)
//! passes GUEST_LENGTH = TRANS_LENGTH = the ciphertext length; so do we.
//!
//! Checks, in order, and what each failure returns:
//!
//! | check                                               | result                 |
//! |-----------------------------------------------------|------------------------|
//! | empty secret (kernel `sev_pin_memory`, `psp_copy_user_blob`) | errno EINVAL  |
//! | longer than the kernel copies (KMALLOC_MAX_SIZE, 4 MiB) | errno EINVAL        |
//! | length not a multiple of 16                         | INVALID_LENGTH         |
//! | guest address not 16-byte aligned                   | INVALID_ADDRESS        |
//! | MAC mismatch (wrong TIK, measurement, or tampered)  | BAD_MEASUREMENT        |
//! | FLAGS.COMPRESSED set (not supported here)           | UNSUPPORTED            |
//! | other FLAGS bits set                                | INVALID_PARAM          |
//!
//! The 16-byte rules follow the SEV firmware's 16-byte memory-encryption granule (the
//! kernel rounds DBG_* to 16 bytes for the same reason) and `sevctl`, which pads the
//! secret table to 16 bytes. Whether the secret lands inside the firmware's secret area
//! is the VMM's check ([`check_in_area`]); the PSP does not know the area.

pub use crate::backend::Refusal;
use crate::{
    backend::SecretHeader,
    crypto::{
        aes128_ctr, hmac_sha256, hmac_sha256_verify, random_bytes, RandomError, TransportKeys,
    },
    status::SevStatus,
};
use zeroize::Zeroizing;

/// FLAGS bit: the packet is compressed (spec §6.6; not supported by this platform).
pub const FLAG_COMPRESSED: u32 = 1;
/// Context byte of the packet MAC.
const SECRET_CONTEXT: u8 = 0x01;
/// Largest secret the kernel copies to the PSP (`psp_copy_user_blob`, KMALLOC_MAX_SIZE).
pub const MAX_SECRET: usize = 4 << 20;
/// Granule of lengths and guest addresses.
pub const GRANULE: usize = 16;

/// A secret packet that cannot be injected.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No data.
    #[error("secret is empty")]
    Empty,
    /// More data than the kernel passes to the firmware.
    #[error("secret is {len} bytes, more than the {MAX_SECRET} bytes the kernel accepts")]
    TooLarge {
        /// Bytes given.
        len: usize,
    },
    /// Length not a multiple of 16.
    #[error("secret is {len} bytes, not a multiple of 16 (pad it, as sevctl does)")]
    Length {
        /// Bytes given.
        len: usize,
    },
    /// Guest address not 16-byte aligned.
    #[error("secret guest address {gpa:#x} is not 16-byte aligned")]
    Address {
        /// The address.
        gpa: u64,
    },
    /// MAC mismatch.
    #[error("secret packet MAC does not verify (wrong TIK or measurement, or tampered)")]
    BadMac,
    /// FLAGS the platform does not support.
    #[error("secret packet flags {flags:#x} are not supported (only 0)")]
    Flags {
        /// The flags.
        flags: u32,
    },
    /// The secret does not fit the firmware's secret area.
    #[error("secret {gpa:#x}+{len:#x} is outside the firmware's secret area {base:#x}+{size:#x}")]
    OutsideArea {
        /// Target address.
        gpa: u64,
        /// Secret length.
        len: u64,
        /// Area start.
        base: u64,
        /// Area size.
        size: u64,
    },
}

impl SecretError {
    /// Who refuses it, and with which code (module documentation table).
    pub fn refusal(&self) -> Refusal {
        match self {
            SecretError::Empty | SecretError::TooLarge { .. } | SecretError::OutsideArea { .. } => {
                Refusal::Errno(libc::EINVAL)
            }
            SecretError::Length { .. } => Refusal::Status(SevStatus::INVALID_LENGTH),
            SecretError::Address { .. } => Refusal::Status(SevStatus::INVALID_ADDRESS),
            SecretError::BadMac => Refusal::Status(SevStatus::BAD_MEASUREMENT),
            SecretError::Flags { flags } if flags & FLAG_COMPRESSED != 0 => {
                Refusal::Status(SevStatus::UNSUPPORTED)
            }
            SecretError::Flags { .. } => Refusal::Status(SevStatus::INVALID_PARAM),
        }
    }
}

fn packet_mac_parts(
    header_flags: u32,
    iv: &[u8; 16],
    ciphertext: &[u8],
) -> Result<[u8; 25], SecretError> {
    let len = u32::try_from(ciphertext.len()).map_err(|_| SecretError::TooLarge {
        len: ciphertext.len(),
    })?;
    let mut fixed = [0u8; 25];
    fixed[0] = SECRET_CONTEXT;
    fixed[1..5].copy_from_slice(&header_flags.to_le_bytes());
    fixed[5..21].copy_from_slice(iv);
    // GUEST_LENGTH then TRANS_LENGTH: equal, as QEMU sends them.
    fixed[21..25].copy_from_slice(&len.to_le_bytes());
    Ok(fixed)
}

/// A sealed secret: header and ciphertext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretPacket {
    /// FLAGS, IV, MAC.
    pub header: SecretHeader,
    /// AES-128-CTR(TEK, IV, secret).
    pub ciphertext: Vec<u8>,
}

impl SecretPacket {
    /// The 52-byte header (`sevctl secret build`'s header file).
    pub fn header_bytes(&self) -> [u8; SecretHeader::SIZE] {
        self.header.to_bytes()
    }

    /// The header, base64 (QEMU `sev-inject-launch-secret` `packet-header`).
    pub fn header_b64(&self) -> String {
        crate::owner::encode_base64(&self.header.to_bytes())
    }

    /// The ciphertext, base64 (QEMU `sev-inject-launch-secret` `secret`).
    pub fn secret_b64(&self) -> String {
        crate::owner::encode_base64(&self.ciphertext)
    }
}

/// The guest owner's side: seals `plaintext` for the launch whose LAUNCH_MEASURE HMAC is
/// `measurement`, with a random IV and FLAGS 0.
pub fn seal(
    keys: &TransportKeys,
    measurement: &[u8; 32],
    plaintext: &[u8],
) -> Result<SecretPacket, SealError> {
    let iv: [u8; 16] = random_bytes()?;
    seal_with_iv(keys, measurement, plaintext, iv)
}

/// [`seal`] with a given IV (tests and reproducible packets).
pub fn seal_with_iv(
    keys: &TransportKeys,
    measurement: &[u8; 32],
    plaintext: &[u8],
    iv: [u8; 16],
) -> Result<SecretPacket, SealError> {
    let mut ciphertext = plaintext.to_vec();
    aes128_ctr(keys.tek(), &iv, &mut ciphertext);
    let fixed = packet_mac_parts(0, &iv, &ciphertext).map_err(SealError::Secret)?;
    let len4 = &fixed[21..25];
    let mac = hmac_sha256(keys.tik(), &[&fixed, len4, &ciphertext, measurement]);
    Ok(SecretPacket {
        header: SecretHeader { flags: 0, iv, mac },
        ciphertext,
    })
}

/// Sealing a secret failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// No random IV.
    #[error(transparent)]
    Random(#[from] RandomError),
    /// The secret cannot be sent.
    #[error(transparent)]
    Secret(SecretError),
}

/// The PSP side: checks the packet (table in the module documentation) and returns the
/// plaintext to write at `gpa`.
pub fn open(
    keys: &TransportKeys,
    measurement: &[u8; 32],
    header: &SecretHeader,
    ciphertext: &[u8],
    gpa: u64,
) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let len = ciphertext.len();
    if len == 0 {
        return Err(SecretError::Empty);
    }
    if len > MAX_SECRET {
        return Err(SecretError::TooLarge { len });
    }
    if !len.is_multiple_of(GRANULE) {
        return Err(SecretError::Length { len });
    }
    if !gpa.is_multiple_of(GRANULE as u64) {
        return Err(SecretError::Address { gpa });
    }
    let fixed = packet_mac_parts(header.flags, &header.iv, ciphertext)?;
    let len4 = &fixed[21..25];
    if !hmac_sha256_verify(
        keys.tik(),
        &[&fixed, len4, ciphertext, measurement],
        &header.mac,
    ) {
        return Err(SecretError::BadMac);
    }
    if header.flags != 0 {
        return Err(SecretError::Flags {
            flags: header.flags,
        });
    }
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    aes128_ctr(keys.tek(), &header.iv, &mut plain);
    Ok(plain)
}

/// The VMM's check that a secret of `len` bytes at `gpa` lies inside the firmware's
/// secret area `[base, base + size)` (the SEV secret block of the firmware's GUID table).
pub fn check_in_area(gpa: u64, len: u64, base: u64, size: u64) -> Result<(), SecretError> {
    let inside = gpa >= base
        && gpa
            .checked_add(len)
            .zip(base.checked_add(size))
            .is_some_and(|(end, area_end)| end <= area_end);
    if inside {
        Ok(())
    } else {
        Err(SecretError::OutsideArea {
            gpa,
            len,
            base,
            size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TransportKeys {
        TransportKeys::new([0x11; 16], [0x22; 16])
    }

    #[test]
    fn sealed_packet_opens_to_the_plaintext() {
        let m = [5u8; 32];
        let secret = [0xabu8; 48];
        let p = seal(&keys(), &m, &secret).unwrap();
        assert_ne!(p.ciphertext, secret.to_vec());
        assert_eq!(
            &open(&keys(), &m, &p.header, &p.ciphertext, 0x1000).unwrap()[..],
            &secret
        );
    }

    #[test]
    fn every_refusal_has_its_code() {
        let m = [5u8; 32];
        let p = seal_with_iv(&keys(), &m, &[1u8; 32], [9; 16]).unwrap();
        let st = |e: SecretError| e.refusal();
        let open_err = |h: &SecretHeader, c: &[u8], gpa: u64, m: &[u8; 32]| {
            open(&keys(), m, h, c, gpa).unwrap_err()
        };
        assert_eq!(
            st(open_err(&p.header, &[], 0, &m)),
            Refusal::Errno(libc::EINVAL)
        );
        assert_eq!(
            st(open_err(&p.header, &vec![0; MAX_SECRET + 16], 0, &m)),
            Refusal::Errno(libc::EINVAL)
        );
        assert_eq!(
            st(open_err(&p.header, &p.ciphertext[..31], 0, &m)),
            Refusal::Status(SevStatus::INVALID_LENGTH)
        );
        assert_eq!(
            st(open_err(&p.header, &p.ciphertext, 8, &m)),
            Refusal::Status(SevStatus::INVALID_ADDRESS)
        );
        assert_eq!(
            st(open_err(&p.header, &p.ciphertext, 0, &[6; 32])),
            Refusal::Status(SevStatus::BAD_MEASUREMENT)
        );
        let mut ct = p.ciphertext.clone();
        ct[3] ^= 1;
        assert_eq!(open_err(&p.header, &ct, 0, &m), SecretError::BadMac);
        let mut iv = p.header;
        iv.iv[0] ^= 1;
        assert_eq!(open_err(&iv, &p.ciphertext, 0, &m), SecretError::BadMac);
        // Flags are MACed: a packet built with COMPRESSED set verifies but is unsupported.
        let with_flags = |flags: u32| {
            let fixed = packet_mac_parts(flags, &p.header.iv, &p.ciphertext).unwrap();
            let mac = hmac_sha256(keys().tik(), &[&fixed, &fixed[21..25], &p.ciphertext, &m]);
            SecretHeader {
                flags,
                iv: p.header.iv,
                mac,
            }
        };
        assert_eq!(
            st(open_err(&with_flags(1), &p.ciphertext, 0, &m)),
            Refusal::Status(SevStatus::UNSUPPORTED)
        );
        assert_eq!(
            st(open_err(&with_flags(2), &p.ciphertext, 0, &m)),
            Refusal::Status(SevStatus::INVALID_PARAM)
        );
        // Flipping flags without re-MACing is a MAC failure.
        let mut flipped = p.header;
        flipped.flags = 1;
        assert_eq!(
            open_err(&flipped, &p.ciphertext, 0, &m),
            SecretError::BadMac
        );
    }

    #[test]
    fn area_check_rejects_overflow_and_spill() {
        assert!(check_in_area(0x1000, 0x10, 0x1000, 0x1000).is_ok());
        assert!(check_in_area(0x1ff0, 0x10, 0x1000, 0x1000).is_ok());
        assert!(check_in_area(0x1ff0, 0x20, 0x1000, 0x1000).is_err());
        assert!(check_in_area(0xff0, 0x10, 0x1000, 0x1000).is_err());
        assert!(check_in_area(u64::MAX - 4, 0x10, 0, u64::MAX).is_err());
        assert_eq!(
            check_in_area(0, 1, 8, 8).unwrap_err().refusal(),
            Refusal::Errno(libc::EINVAL)
        );
    }
}
