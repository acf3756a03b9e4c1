//! AES-256-GCM for the migration helper's page records, at the core's limit.
//!
//! Four kernels (see [`Kernel`]): stitched VAES/VPCLMULQDQ on zmm and on ymm registers,
//! a stitched AES-NI/PCLMULQDQ kernel on xmm registers (8 blocks, Karatsuba GHASH over
//! precomputed powers of H), and RustCrypto's `aes-gcm` as the portable fallback.
//! [`Kernel::best`] picks one at run time from CPUID and XGETBV; the choice lives in the
//! [`Aes256Gcm`] value the caller holds, never in a static — the crate has no writable
//! statics at all, so it runs in the firmware's ROM image.
//!
//! Records are sealed and opened in place with a detached 16-byte tag, a 12-byte
//! nonce and any AAD. Contract of [`Aes256Gcm::open_in_place`]: on a tag mismatch the
//! buffer is zeroed (no plaintext or ciphertext of a forged record is left behind). The
//! vector kernels decrypt while they hash, so during the call the buffer holds
//! plaintext before the tag is known: pass a buffer nobody else can read (the helper
//! copies records out of shared memory before opening them).

#![no_std]

#[cfg(test)]
extern crate std;

mod aesni;
mod cpu;
mod hw;
mod selftest;
mod vaes256;
mod vaes512;

pub use cpu::{Kernel, Missing};
pub use selftest::{self_test, SelfTestError};

use aes_gcm::aead::{AeadInPlace, KeyInit};

/// Key length in bytes.
pub const KEY_LEN: usize = 32;
/// Nonce length in bytes.
pub const NONCE_LEN: usize = 12;
/// Tag length in bytes.
pub const TAG_LEN: usize = 16;
/// The longest text GCM allows (2^39 - 256 bits): with the counter starting at 2 it
/// never wraps, which the kernels rely on.
pub const MAX_TEXT: usize = (1 << 36) - 32;
/// The longest AAD this crate accepts (GCM's length block holds 2^64 - 1 bits).
pub const MAX_AAD: usize = (1 << 61) - 1;

/// Why sealing or opening failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The requested kernel cannot run on this CPU.
    #[error("the {0} AES-GCM kernel cannot run here: {1}")]
    Unsupported(Kernel, Missing),
    /// The text or AAD is longer than GCM allows.
    #[error("the text or AAD is longer than AES-GCM allows")]
    TooLong,
    /// The tag does not match: the record was not sealed with this key, nonce and AAD,
    /// or it was changed since.
    #[error("the AES-GCM tag does not match")]
    AuthFailed,
}

/// An AES-256-GCM key bound to the kernel that runs it.
#[derive(Clone)]
pub struct Aes256Gcm {
    inner: Inner,
}

/// The key in the form its kernel wants. A hardware variant exists only if `cpu`
/// confirmed the kernel's instructions and register state (see `with_kernel`).
#[derive(Clone)]
enum Inner {
    Vaes512(hw::HwKey),
    Vaes256(hw::HwKey),
    AesNi(hw::HwKey),
    Portable(aes_gcm::Aes256Gcm),
}

impl core::fmt::Debug for Aes256Gcm {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Aes256Gcm")
            .field("kernel", &self.kernel())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Aes256Gcm {
    /// A key run by the fastest kernel this CPU supports ([`Kernel::best`]).
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        match Self::with_kernel(key, Kernel::best()) {
            Ok(k) => k,
            // `best` only returns kernels that passed the same check.
            Err(_) => Self::portable(key),
        }
    }

    /// A key run by `kernel`, if this CPU supports it.
    pub fn with_kernel(key: &[u8; KEY_LEN], kernel: Kernel) -> Result<Self, Error> {
        if let Some(missing) = kernel.missing() {
            return Err(Error::Unsupported(kernel, missing));
        }
        let hw = || {
            // SAFETY: every hardware kernel requires AES-NI, PCLMULQDQ, SSSE3 and
            // SSE4.1, and `kernel.missing()` just confirmed them.
            unsafe { hw::HwKey::new(key) }
        };
        let inner = match kernel {
            Kernel::Vaes512 => Inner::Vaes512(hw()),
            Kernel::Vaes256 => Inner::Vaes256(hw()),
            Kernel::AesNi => Inner::AesNi(hw()),
            Kernel::Portable => return Ok(Self::portable(key)),
        };
        Ok(Aes256Gcm { inner })
    }

    fn portable(key: &[u8; KEY_LEN]) -> Self {
        Aes256Gcm {
            inner: Inner::Portable(aes_gcm::Aes256Gcm::new(key.into())),
        }
    }

    /// The kernel that runs this key.
    pub fn kernel(&self) -> Kernel {
        match self.inner {
            Inner::Vaes512(_) => Kernel::Vaes512,
            Inner::Vaes256(_) => Kernel::Vaes256,
            Inner::AesNi(_) => Kernel::AesNi,
            Inner::Portable(_) => Kernel::Portable,
        }
    }

    /// Encrypts `data` in place and returns the tag over `aad` and the ciphertext.
    /// A nonce must never be used twice with one key.
    pub fn seal_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; TAG_LEN], Error> {
        if data.len() > MAX_TEXT || aad.len() > MAX_AAD {
            return Err(Error::TooLong);
        }
        // In each arm: the variant exists only after `with_kernel` confirmed the
        // kernel's CPU features and XCR0 state, and the lengths are within
        // MAX_TEXT/MAX_AAD, as the kernels' 32-bit counters require.
        Ok(match &self.inner {
            // SAFETY: see above (AVX-512F/BW/VL, VAES, VPCLMULQDQ, ZMM state).
            Inner::Vaes512(k) => unsafe { vaes512::seal(k, nonce, aad, data) },
            // SAFETY: see above (AVX2, VAES, VPCLMULQDQ, YMM state).
            Inner::Vaes256(k) => unsafe { vaes256::seal(k, nonce, aad, data) },
            // SAFETY: see above (AES-NI, PCLMULQDQ, SSSE3, SSE4.1).
            Inner::AesNi(k) => unsafe { aesni::seal(k, nonce, aad, data) },
            Inner::Portable(c) => c
                .encrypt_in_place_detached(nonce.into(), aad, data)
                .map_err(|_| Error::TooLong)?
                .into(),
        })
    }

    /// Verifies `tag` and decrypts `data` in place. On [`Error::AuthFailed`] `data` is
    /// zeroed.
    pub fn open_in_place(
        &self,
        nonce: &[u8; NONCE_LEN],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), Error> {
        if data.len() > MAX_TEXT || aad.len() > MAX_AAD {
            return Err(Error::TooLong);
        }
        let ok = match &self.inner {
            // SAFETY: as in `seal_in_place`.
            Inner::Vaes512(k) => unsafe { vaes512::open(k, nonce, aad, data, tag) },
            // SAFETY: as in `seal_in_place`.
            Inner::Vaes256(k) => unsafe { vaes256::open(k, nonce, aad, data, tag) },
            // SAFETY: as in `seal_in_place`.
            Inner::AesNi(k) => unsafe { aesni::open(k, nonce, aad, data, tag) },
            Inner::Portable(c) => {
                let ok = c
                    .decrypt_in_place_detached(nonce.into(), aad, data, tag.into())
                    .is_ok();
                if !ok {
                    hw::wipe(data);
                }
                ok
            }
        };
        if ok {
            Ok(())
        } else {
            Err(Error::AuthFailed)
        }
    }
}
