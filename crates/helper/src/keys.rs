//! The session's key schedule: the X25519 key agreement between the two helpers, the
//! transcript they authenticate, and every key and tag derived from them. Pure functions
//! (no state, no I/O), so the host can run them too: the guest owner's break-glass abort
//! ([`owner_abort_token`]) is computed by `sevmirror owner abort` with this code.
//!
//! ```text
//!  secret = the guest owner's 32-byte migration secret (LAUNCH_SECRET)
//!  PRK_o  = HKDF-Extract(salt = "sevmirror/v2 owner", ikm = secret)
//!  K_hs   = HKDF-Expand(PRK_o, "sevmirror/v2 handshake mac key", 32)
//!  salt_s = HKDF-Expand(PRK_o, "sevmirror/v2 session salt", 32)
//!  K_own  = HKDF-Expand(PRK_o, "sevmirror/v2 owner abort key", 32)
//!
//!  TH     = SHA-256("sevmirror/v2 transcript" ‖ version u16 LE ‖ session id (16)
//!                   ‖ Hello hash (32) ‖ firmware hash (32) ‖ Ns (32) ‖ Ps (32)
//!                   ‖ Nt (32) ‖ Pt (32))
//!  MAC_t  = HMAC-SHA256(K_hs, "sevmirror/v2 target confirms" ‖ TH)
//!  MAC_s  = HMAC-SHA256(K_hs, "sevmirror/v2 source confirms" ‖ TH)
//!
//!  Z      = X25519(own ephemeral secret, peer share), refused if all zero
//!  PRK_s  = HKDF-Extract(salt = salt_s, ikm = Z)
//!  K_rec ‖ K_blob ‖ K_abort = HKDF-Expand(PRK_s, "sevmirror/v2 session keys" ‖ TH, 96)
//!
//!  page, manifest, commit records: AES-256-GCM(K_rec), nonce = lane id ‖ sequence
//!  blob records: HMAC-SHA256(K_blob, "sevmirror/v2 blob" ‖ header ‖ payload)[..16]
//!  target's abort token: HMAC-SHA256(K_abort, "sevmirror/v2 target aborts" ‖ TH)
//!  owner's abort token:  HMAC-SHA256(K_own,   "sevmirror/v2 owner aborts" ‖ TH)
//! ```
//!
//! What this buys: a recorded session is useless to any other target (its own nonce and
//! share make another TH, and the source's MAC covers TH); the record keys come from the
//! ephemeral X25519 secrets, wiped after use, so a migration secret that leaks later does
//! not decrypt a recording (forward secrecy). What it does not: the MACs prove the peer
//! holds the owner's migration secret and runs the same firmware, not that it is one
//! particular attested machine — any target once given the secret stays a valid peer
//! until the owner rotates it.

use helper_abi::{
    handshake::{MAC_LEN, NONCE_LEN, SHARE_LEN},
    record::{RecordHeader, TAG_SIZE},
    DIGEST_LEN, MIGRATION_SECRET_LEN,
};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

type HmacSha256 = Hmac<Sha256>;

/// Protocol version bound into every transcript.
pub const TRANSCRIPT_VERSION: u16 = 2;

const OWNER_SALT: &[u8] = b"sevmirror/v2 owner";
const HANDSHAKE_KEY_INFO: &[u8] = b"sevmirror/v2 handshake mac key";
const SESSION_SALT_INFO: &[u8] = b"sevmirror/v2 session salt";
const OWNER_ABORT_KEY_INFO: &[u8] = b"sevmirror/v2 owner abort key";
const TRANSCRIPT_LABEL: &[u8] = b"sevmirror/v2 transcript";
const TARGET_CONFIRMS: &[u8] = b"sevmirror/v2 target confirms";
const SOURCE_CONFIRMS: &[u8] = b"sevmirror/v2 source confirms";
const SESSION_KEYS_INFO: &[u8] = b"sevmirror/v2 session keys";
const BLOB_LABEL: &[u8] = b"sevmirror/v2 blob";
const TARGET_ABORTS: &[u8] = b"sevmirror/v2 target aborts";
const OWNER_ABORTS: &[u8] = b"sevmirror/v2 owner aborts";

/// A 32-byte key or digest.
pub type Key = [u8; 32];

/// Which side computes or checks a handshake MAC. Each has its own label, so a MAC one
/// side sent can never pass as the other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The helper that exports the guest.
    Source,
    /// The helper that imports it.
    Target,
}

/// The keys derived from the owner's migration secret alone (the same for every
/// session): they authenticate handshakes and the owner's abort.
pub struct OwnerKeys {
    /// Key of the handshake MACs.
    pub handshake: Key,
    /// Salt of the session key derivation.
    pub session_salt: Key,
    /// Key of the owner's abort token.
    pub owner_abort: Key,
}

impl Drop for OwnerKeys {
    fn drop(&mut self) {
        self.handshake.zeroize();
        self.session_salt.zeroize();
        self.owner_abort.zeroize();
    }
}

/// Derives the keys that come from the migration secret alone.
pub fn owner_keys(secret: &[u8; MIGRATION_SECRET_LEN]) -> OwnerKeys {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(OWNER_SALT), secret);
    let mut keys = OwnerKeys {
        handshake: [0; 32],
        session_salt: [0; 32],
        owner_abort: [0; 32],
    };
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand(HANDSHAKE_KEY_INFO, &mut keys.handshake);
    let _ = hk.expand(SESSION_SALT_INFO, &mut keys.session_salt);
    let _ = hk.expand(OWNER_ABORT_KEY_INFO, &mut keys.owner_abort);
    keys
}

/// Everything the transcript hash covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transcript {
    /// The session id the VMMs agreed on.
    pub session_id: [u8; 16],
    /// SHA-256 of the Hello frame the VMMs exchanged.
    pub hello_hash: [u8; DIGEST_LEN],
    /// SHA-256 of the firmware image this helper runs.
    pub firmware_hash: [u8; DIGEST_LEN],
    /// The source helper's nonce.
    pub source_nonce: [u8; NONCE_LEN],
    /// The source helper's X25519 share.
    pub source_share: [u8; SHARE_LEN],
    /// The target helper's nonce.
    pub target_nonce: [u8; NONCE_LEN],
    /// The target helper's X25519 share.
    pub target_share: [u8; SHARE_LEN],
}

impl Transcript {
    /// The transcript hash TH.
    pub fn hash(&self) -> Key {
        let mut h = Sha256::new();
        h.update(TRANSCRIPT_LABEL);
        h.update(TRANSCRIPT_VERSION.to_le_bytes());
        h.update(self.session_id);
        h.update(self.hello_hash);
        h.update(self.firmware_hash);
        h.update(self.source_nonce);
        h.update(self.source_share);
        h.update(self.target_nonce);
        h.update(self.target_share);
        h.finalize().into()
    }
}

fn hmac(key: &Key) -> HmacSha256 {
    <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

fn tag_of(key: &Key, label: &[u8], transcript_hash: &Key) -> [u8; MAC_LEN] {
    let mut m = hmac(key);
    m.update(label);
    m.update(transcript_hash);
    m.finalize().into_bytes().into()
}

/// The handshake MAC `side` sends over the transcript hash.
pub fn handshake_mac(keys: &OwnerKeys, side: Side, transcript_hash: &Key) -> [u8; MAC_LEN] {
    let label = match side {
        Side::Source => SOURCE_CONFIRMS,
        Side::Target => TARGET_CONFIRMS,
    };
    tag_of(&keys.handshake, label, transcript_hash)
}

/// Compares two tags in constant time.
pub fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// An ephemeral X25519 key pair.
pub struct Ephemeral {
    secret: Key,
    /// The public share to send.
    pub share: [u8; SHARE_LEN],
}

impl Drop for Ephemeral {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl Ephemeral {
    /// A key pair from 32 random bytes (wiped here).
    pub fn from_random(random: &mut Key) -> Ephemeral {
        let secret = *random;
        random.zeroize();
        let share = x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES);
        Ephemeral { secret, share }
    }

    /// The secret scalar, to keep between two requests (the caller wipes its copy).
    pub fn secret(&self) -> Key {
        self.secret
    }

    /// The key pair whose secret a previous request kept.
    pub fn from_secret(secret: Key) -> Ephemeral {
        let share = x25519_dalek::x25519(secret, x25519_dalek::X25519_BASEPOINT_BYTES);
        Ephemeral { secret, share }
    }

    /// The shared secret with `peer`, or None if it is all zero (a low-order,
    /// non-contributory share: the peer would know the result without a secret).
    /// Consumes the key pair, which wipes its secret.
    pub fn agree(self, peer: &[u8; SHARE_LEN]) -> Option<SharedSecret> {
        let z = x25519_dalek::x25519(self.secret, *peer);
        let zero: bool = z.ct_eq(&[0u8; 32]).into();
        let shared = SharedSecret(z);
        (!zero).then_some(shared)
    }
}

/// An X25519 shared secret, wiped when dropped.
pub struct SharedSecret(Key);

impl Drop for SharedSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The keys of one session.
pub struct SessionKeys {
    /// AES-256-GCM key of page, manifest and commit records.
    pub record: Key,
    /// HMAC key of blob records.
    pub blob: Key,
    /// HMAC key of the target's abort token.
    pub abort: Key,
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.record.zeroize();
        self.blob.zeroize();
        self.abort.zeroize();
    }
}

/// Derives the session's keys from the shared secret, the owner's salt and TH.
pub fn session_keys(owner: &OwnerKeys, z: &SharedSecret, transcript_hash: &Key) -> SessionKeys {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(&owner.session_salt), &z.0);
    let mut okm = [0u8; 96];
    let info = [SESSION_KEYS_INFO, transcript_hash.as_slice()];
    // 96 bytes is far below the 8160-byte limit.
    let _ = hk.expand_multi_info(&info, &mut okm);
    let mut keys = SessionKeys {
        record: [0; 32],
        blob: [0; 32],
        abort: [0; 32],
    };
    keys.record.copy_from_slice(&okm[..32]);
    keys.blob.copy_from_slice(&okm[32..64]);
    keys.abort.copy_from_slice(&okm[64..]);
    okm.zeroize();
    keys
}

/// An incremental blob tag: feed the header, then the payload in pieces.
pub struct BlobMac(HmacSha256);

impl BlobMac {
    /// Starts the tag of a blob record with `header`.
    pub fn new(key: &Key, header: &RecordHeader) -> BlobMac {
        let mut m = hmac(key);
        m.update(BLOB_LABEL);
        m.update(&header.encode());
        BlobMac(m)
    }

    /// Adds payload bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The 16-byte tag.
    pub fn finish(self) -> [u8; TAG_SIZE] {
        let full = self.0.finalize().into_bytes();
        let mut tag = [0u8; TAG_SIZE];
        tag.copy_from_slice(&full[..TAG_SIZE]);
        tag
    }
}

/// The target's abort token under the session's abort key for transcript hash `th`.
pub fn target_abort_token(abort_key: &Key, transcript_hash: &Key) -> [u8; MAC_LEN] {
    tag_of(abort_key, TARGET_ABORTS, transcript_hash)
}

/// The guest owner's break-glass abort token for the committed session with transcript
/// hash `transcript_hash`: presenting it to the source's helper (RELEASE) says, on the
/// owner's word, that the target never ran the guest, and lets the source run again.
pub fn owner_abort_token(
    secret: &[u8; MIGRATION_SECRET_LEN],
    transcript_hash: &Key,
) -> [u8; MAC_LEN] {
    tag_of(
        &owner_keys(secret).owner_abort,
        OWNER_ABORTS,
        transcript_hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript() -> Transcript {
        Transcript {
            session_id: [1; 16],
            hello_hash: [2; 32],
            firmware_hash: [3; 32],
            source_nonce: [4; 32],
            source_share: [5; 32],
            target_nonce: [6; 32],
            target_share: [7; 32],
        }
    }

    #[test]
    fn every_transcript_field_changes_the_hash() {
        let base = transcript().hash();
        let mut seen = std::vec![base];
        for i in 0..7 {
            let mut t = transcript();
            match i {
                0 => t.session_id[0] ^= 1,
                1 => t.hello_hash[0] ^= 1,
                2 => t.firmware_hash[0] ^= 1,
                3 => t.source_nonce[0] ^= 1,
                4 => t.source_share[0] ^= 1,
                5 => t.target_nonce[0] ^= 1,
                _ => t.target_share[0] ^= 1,
            }
            let h = t.hash();
            assert!(!seen.contains(&h), "field {i} is not covered");
            seen.push(h);
        }
    }

    #[test]
    fn the_two_sides_macs_differ_and_depend_on_the_secret() {
        let th = transcript().hash();
        let k = owner_keys(&[9; 32]);
        let s = handshake_mac(&k, Side::Source, &th);
        let t = handshake_mac(&k, Side::Target, &th);
        assert_ne!(s, t, "a MAC must not be reflectable");
        assert_ne!(s, handshake_mac(&owner_keys(&[8; 32]), Side::Source, &th));
        assert!(tags_equal(&s, &handshake_mac(&k, Side::Source, &th)));
        assert!(!tags_equal(&s, &t));
    }

    #[test]
    fn both_sides_agree_on_the_session_keys() {
        let owner = owner_keys(&[9; 32]);
        let a = Ephemeral::from_random(&mut [0x11; 32]);
        let b = Ephemeral::from_random(&mut [0x22; 32]);
        let (pa, pb) = (a.share, b.share);
        let th = transcript().hash();
        let ka = session_keys(&owner, &a.agree(&pb).unwrap(), &th);
        let kb = session_keys(&owner, &b.agree(&pa).unwrap(), &th);
        assert_eq!(
            (ka.record, ka.blob, ka.abort),
            (kb.record, kb.blob, kb.abort)
        );
        assert_ne!(ka.record, ka.blob);
        // Another transcript, other keys.
        let c = Ephemeral::from_random(&mut [0x11; 32]);
        let other = session_keys(&owner, &c.agree(&pb).unwrap(), &[0; 32]);
        assert_ne!(other.record, ka.record);
    }

    #[test]
    fn a_low_order_share_is_refused() {
        // The identity and a point of order 8 give an all-zero shared secret.
        let zero = [0u8; 32];
        let mut order8 = [0u8; 32];
        order8[0] = 0xe0;
        order8[1..].copy_from_slice(&[
            0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
            0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f,
            0x49, 0xb8, 0x00,
        ]);
        for share in [zero, order8] {
            let e = Ephemeral::from_random(&mut [0x33; 32]);
            assert!(e.agree(&share).is_none());
        }
    }

    #[test]
    fn x25519_matches_rfc_7748() {
        // RFC 7748 §6.1: Alice's private key and public key.
        let alice = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2,
            0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5,
            0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let public = [
            0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e,
            0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e,
            0xaa, 0x9b, 0x4e, 0x6a,
        ];
        assert_eq!(Ephemeral::from_random(&mut alice.clone()).share, public);
    }

    #[test]
    fn the_owner_token_depends_on_secret_and_session() {
        let t = owner_abort_token(&[1; 32], &[2; 32]);
        assert_ne!(t, owner_abort_token(&[1; 32], &[3; 32]));
        assert_ne!(t, owner_abort_token(&[4; 32], &[2; 32]));
        let keys = session_keys(&owner_keys(&[1; 32]), &SharedSecret([5; 32]), &[2; 32]);
        assert_ne!(t, target_abort_token(&keys.abort, &[2; 32]));
    }
}
