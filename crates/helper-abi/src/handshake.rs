//! The messages the two helpers exchange, through both VMMs, to agree on a fresh session
//! before any page moves (helper-abi version 2).
//!
//! ```text
//!  source helper                                            target helper
//!   HS_START(session id, Hello hash)
//!     ephemeral X25519 key s, nonce Ns
//!   -- KeyShare {Ns, Ps = X25519(s, 9)} ----------------------------->
//!                                           HS_RESPOND(session id, Hello hash, KeyShare)
//!                                             ephemeral t, nonce Nt; Z = X25519(t, Ps)
//!                                             TH = transcript hash; keys from Z and TH
//!   <-- KeyReply {Nt, Pt, MAC(K, "target" ‖ TH)} -----------------------
//!   HS_FINISH(KeyReply): Z = X25519(s, Pt), TH,
//!     checks the target's MAC, then keys
//!   -- KeyConfirm {MAC(K, "source" ‖ TH)} ----------------------------->
//!                                           HS_CONFIRM: checks the source's MAC
//! ```
//!
//! K is derived from the guest owner's migration secret; each side's MAC has its own
//! label, so neither can be reflected back. Nothing but these messages moves before the
//! peer's MAC verified. The transcript hash TH covers the protocol version, the session
//! id, the hash of the Hello the VMMs exchanged, the SHA-256 of the firmware image each
//! helper runs (its own: a target booting other firmware computes another TH), both
//! nonces and both shares.

use crate::DIGEST_LEN;

/// Length of a nonce.
pub const NONCE_LEN: usize = 32;
/// Length of an X25519 public key.
pub const SHARE_LEN: usize = 32;
/// Length of a handshake MAC (HMAC-SHA256).
pub const MAC_LEN: usize = DIGEST_LEN;

/// Source → target: the source helper's nonce and key share.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyShare {
    /// Fresh random bytes of the source helper.
    pub nonce: [u8; NONCE_LEN],
    /// The source's ephemeral X25519 public key.
    pub share: [u8; SHARE_LEN],
}

/// Target → source: the target helper's nonce, key share and MAC over the transcript.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyReply {
    /// Fresh random bytes of the target helper.
    pub nonce: [u8; NONCE_LEN],
    /// The target's ephemeral X25519 public key.
    pub share: [u8; SHARE_LEN],
    /// HMAC-SHA256 under the handshake key of the target label and the transcript hash.
    pub mac: [u8; MAC_LEN],
}

/// Source → target: the source helper's MAC over the transcript.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyConfirm {
    /// HMAC-SHA256 under the handshake key of the source label and the transcript hash.
    pub mac: [u8; MAC_LEN],
}

/// Target → source: the target helper's promise never to commit a session, which
/// releases a source that committed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortToken {
    /// HMAC-SHA256 under the session's abort key of the abort label and the transcript
    /// hash.
    pub tag: [u8; MAC_LEN],
}

impl KeyShare {
    /// Encoded size.
    pub const SIZE: usize = NONCE_LEN + SHARE_LEN;

    /// The message's bytes.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..NONCE_LEN].copy_from_slice(&self.nonce);
        b[NONCE_LEN..].copy_from_slice(&self.share);
        b
    }

    /// Decodes the message (any bytes of the right size decode).
    pub fn decode(b: &[u8; Self::SIZE]) -> KeyShare {
        let mut m = KeyShare {
            nonce: [0; NONCE_LEN],
            share: [0; SHARE_LEN],
        };
        m.nonce.copy_from_slice(&b[..NONCE_LEN]);
        m.share.copy_from_slice(&b[NONCE_LEN..]);
        m
    }
}

impl KeyReply {
    /// Encoded size.
    pub const SIZE: usize = NONCE_LEN + SHARE_LEN + MAC_LEN;

    /// The message's bytes.
    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..32].copy_from_slice(&self.nonce);
        b[32..64].copy_from_slice(&self.share);
        b[64..].copy_from_slice(&self.mac);
        b
    }

    /// Decodes the message (any bytes of the right size decode).
    pub fn decode(b: &[u8; Self::SIZE]) -> KeyReply {
        let mut m = KeyReply {
            nonce: [0; NONCE_LEN],
            share: [0; SHARE_LEN],
            mac: [0; MAC_LEN],
        };
        m.nonce.copy_from_slice(&b[..32]);
        m.share.copy_from_slice(&b[32..64]);
        m.mac.copy_from_slice(&b[64..]);
        m
    }
}

const _: () = assert!(KeyShare::SIZE == 64 && KeyReply::SIZE == 96);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let s = KeyShare {
            nonce: [1; 32],
            share: [2; 32],
        };
        assert_eq!(KeyShare::decode(&s.encode()), s);
        let r = KeyReply {
            nonce: [3; 32],
            share: [4; 32],
            mac: [5; 32],
        };
        assert_eq!(KeyReply::decode(&r.encode()), r);
        assert_eq!(&r.encode()[64..], &[5; 32]);
    }
}
