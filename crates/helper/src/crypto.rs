//! Sealing and opening of records, and the manifest hash.
//!
//! - Key: the session's record key from the authenticated key agreement ([`crate::keys`]),
//!   fresh for every session, so (lane id, sequence) nonces never repeat under one key.
//! - Records: AES-256-GCM (`record-gcm`: the fastest kernel the CPU and its XCR0 allow,
//!   chosen when the key is made, i.e. once per session and lane); nonce = lane ‖
//!   sequence number; AAD = label ‖ session id ‖ record header, binding GPA, round,
//!   version, lane and sequence to the payload.
//! - Manifest: SHA-256 over a label and (GPA u64 LE ‖ version u32 LE) of every private
//!   page in increasing GPA order.

use helper_abi::{mailbox::GcmKernel, record::RecordHeader};
use record_gcm::{Aes256Gcm, Kernel};
use sha2::{Digest, Sha256};

/// AAD prefix of every record.
const AAD_LABEL: &[u8; 20] = b"sevmirror-record-v1\0";
/// Prefix of the manifest hash.
const MANIFEST_LABEL: &[u8] = b"sevmirror-manifest-v1";

/// A record did not authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthFailed;

/// The session's record key, ready to seal or open.
#[derive(Clone)]
pub struct RecordKey {
    cipher: Aes256Gcm,
    session_id: [u8; 16],
}

impl core::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RecordKey")
            .field("kernel", &self.cipher.kernel())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl RecordKey {
    /// A key for `session_id` from the derived key bytes, run by the fastest AES-GCM
    /// kernel this CPU supports.
    pub fn new(key: &[u8; 32], session_id: [u8; 16]) -> Self {
        RecordKey {
            cipher: Aes256Gcm::new(key),
            session_id,
        }
    }

    /// As [`RecordKey::new`], run by `kernel` (benchmarks and tests).
    pub fn with_kernel(
        key: &[u8; 32],
        session_id: [u8; 16],
        kernel: Kernel,
    ) -> Result<Self, record_gcm::Error> {
        Ok(RecordKey {
            cipher: Aes256Gcm::with_kernel(key, kernel)?,
            session_id,
        })
    }

    /// The AES-GCM kernel that runs this key.
    pub fn kernel(&self) -> Kernel {
        self.cipher.kernel()
    }
}

/// The kernel a mailbox code names (None: BEST or an undefined code).
pub fn kernel_of(code: GcmKernel) -> Option<Kernel> {
    match code {
        GcmKernel::VAES512 => Some(Kernel::Vaes512),
        GcmKernel::VAES256 => Some(Kernel::Vaes256),
        GcmKernel::AESNI => Some(Kernel::AesNi),
        GcmKernel::PORTABLE => Some(Kernel::Portable),
        _ => None,
    }
}

/// The mailbox code of a kernel.
pub fn code_of(kernel: Kernel) -> GcmKernel {
    match kernel {
        Kernel::Vaes512 => GcmKernel::VAES512,
        Kernel::Vaes256 => GcmKernel::VAES256,
        Kernel::AesNi => GcmKernel::AESNI,
        Kernel::Portable => GcmKernel::PORTABLE,
    }
}

/// The kernel a session is to run on, for the code its handshake request named: the
/// fastest the CPU supports for BEST; a named kernel only if the CPU can run it and it
/// passes the known-answer self-test now (the boot's self-test checked only the fastest
/// one). None: refused.
pub fn session_kernel(code: GcmKernel) -> Option<Kernel> {
    if code == GcmKernel::BEST {
        return Some(Kernel::best());
    }
    let k = kernel_of(code)?;
    (k.is_supported() && record_gcm::self_test(k).is_ok()).then_some(k)
}

impl RecordKey {
    /// As [`RecordKey::new`], run by the session's kernel (`code`, from its handshake;
    /// the fastest if the code is BEST or, which the handshake never lets through,
    /// names a kernel this CPU cannot run).
    pub fn for_session(key: &[u8; 32], session_id: [u8; 16], code: GcmKernel) -> Self {
        kernel_of(code)
            .and_then(|k| RecordKey::with_kernel(key, session_id, k).ok())
            .unwrap_or_else(|| RecordKey::new(key, session_id))
    }

    fn aad(&self, header: &RecordHeader) -> [u8; 20 + 16 + helper_abi::record::HEADER_SIZE] {
        let mut aad = [0u8; 20 + 16 + helper_abi::record::HEADER_SIZE];
        aad[..20].copy_from_slice(AAD_LABEL);
        aad[20..36].copy_from_slice(&self.session_id);
        aad[36..].copy_from_slice(&header.encode());
        aad
    }

    /// Encrypts `payload` in place and returns the tag.
    pub fn seal(&self, header: &RecordHeader, payload: &mut [u8]) -> [u8; 16] {
        // Encryption only fails for payloads beyond GCM's limit (64 GiB); ours are <= 4 KiB.
        self.cipher
            .seal_in_place(&header.nonce(), &self.aad(header), payload)
            .unwrap_or([0; 16])
    }

    /// Verifies the tag and decrypts `payload` in place. On failure `payload` is
    /// zeroed. `payload` must be private memory: it holds plaintext before the tag is
    /// checked.
    pub fn open(
        &self,
        header: &RecordHeader,
        payload: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), AuthFailed> {
        self.cipher
            .open_in_place(&header.nonce(), &self.aad(header), payload, tag)
            .map_err(|_| AuthFailed)
    }
}

/// Incremental manifest hash over (GPA, version) pairs in increasing GPA order.
pub struct ManifestHash {
    hasher: Sha256,
    pages: u64,
}

impl Default for ManifestHash {
    fn default() -> Self {
        Self::new()
    }
}

impl ManifestHash {
    /// An empty manifest.
    pub fn new() -> Self {
        let mut hasher = Sha256::new();
        hasher.update(MANIFEST_LABEL);
        ManifestHash { hasher, pages: 0 }
    }

    /// Adds one page.
    pub fn add(&mut self, gpa: u64, version: u32) {
        let mut b = [0u8; 12];
        b[..8].copy_from_slice(&gpa.to_le_bytes());
        b[8..].copy_from_slice(&version.to_le_bytes());
        self.hasher.update(b);
        self.pages += 1;
    }

    /// Pages added and the hash.
    pub fn finish(self) -> (u64, [u8; 32]) {
        (self.pages, self.hasher.finalize().into())
    }
}

/// Zeroes key material in a way the compiler keeps.
pub fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, exclusive reference to one byte.
        unsafe { core::ptr::write_volatile(b, 0) };
    }
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use helper_abi::record::Kind;

    fn header(seq: u64) -> RecordHeader {
        RecordHeader {
            kind: Kind::PAGE,
            lane: 0,
            flags: 0,
            round: 1,
            gpa: 0x5000,
            version: 1,
            len: 4096,
            seq,
        }
    }

    #[test]
    fn sealed_pages_open_only_with_the_same_key_session_and_header() {
        let key = RecordKey::new(&[0x42; 32], [2; 16]);
        let mut page = [0x42u8; 4096];
        let tag = key.seal(&header(1), &mut page);
        assert_ne!(page, [0x42; 4096], "sealed payload is ciphertext");
        let mut copy = page;
        key.open(&header(1), &mut copy, &tag).unwrap();
        assert_eq!(copy, [0x42; 4096]);
        // A different header (here: sequence number) or session fails.
        let mut copy = page;
        assert_eq!(key.open(&header(2), &mut copy, &tag), Err(AuthFailed));
        let other = RecordKey::new(&[0x42; 32], [7; 16]);
        let mut copy = page;
        assert_eq!(other.open(&header(1), &mut copy, &tag), Err(AuthFailed));
        let mut copy = page;
        copy[100] ^= 1;
        assert_eq!(key.open(&header(1), &mut copy, &tag), Err(AuthFailed));
    }

    #[test]
    fn every_kernel_here_opens_what_every_other_sealed() {
        let key = [0x5a; 32];
        let keys: std::vec::Vec<RecordKey> = Kernel::ALL
            .iter()
            .filter_map(|k| RecordKey::with_kernel(&key, [2; 16], *k).ok())
            .collect();
        assert!(keys.iter().any(|k| k.kernel() == Kernel::Portable));
        assert_eq!(RecordKey::new(&key, [2; 16]).kernel(), Kernel::best());
        for sealer in &keys {
            let mut page = [0x42u8; 4096];
            let tag = sealer.seal(&header(7), &mut page);
            for opener in &keys {
                let mut copy = page;
                opener.open(&header(7), &mut copy, &tag).unwrap();
                assert_eq!(copy, [0x42; 4096], "{:?} -> {:?}", sealer, opener);
                let mut copy = page;
                copy[4095] ^= 1;
                assert_eq!(opener.open(&header(7), &mut copy, &tag), Err(AuthFailed));
                assert_eq!(copy, [0; 4096], "a refused record is zeroed");
            }
        }
    }

    #[test]
    fn manifests_differ_when_any_version_differs() {
        let mut a = ManifestHash::new();
        let mut b = ManifestHash::new();
        for (gpa, v) in [(0x1000, 1), (0x2000, 3)] {
            a.add(gpa, v);
            b.add(gpa, if gpa == 0x2000 { 2 } else { v });
        }
        assert_ne!(a.finish(), b.finish());
    }
}
