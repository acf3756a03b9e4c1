//! The files that get a committed migration unstuck when its connection is gone
//! (docs/migration.md, "When something fails").
//!
//! - A [`CommitFile`] holds the source helper's sealed commit record. The source VMM
//!   writes it *before* the commit goes on the wire, so a commit lost with the connection
//!   can still reach the target: its VMM takes it from the file (`migrate-commit`) as it
//!   would from the stream, and its helper verifies it the same way.
//! - An [`AbortTokenFile`] holds an abort of a committed session: the target helper's
//!   token (the target gave the session up for good and never runs the guest), or the
//!   guest owner's break-glass token (`sevmirror owner abort`: the owner's word that the
//!   target never ran it). The source VMM hands it to its helper (`migrate-release`),
//!   which lets the guest run again only if the token verifies for the committed
//!   session.
//!
//! Neither file is secret: the commit record is sealed under the session's key and a
//! token is a MAC. Both name the session by its transcript hash, so a file for another
//! session is refused with a clear message before any helper sees it; the helpers' own
//! checks are what decides. The files are hostile input like any other: fixed size,
//! magic and version checked, no trailing bytes.
//!
//! ```text
//!  commit file (8 + 2 + 2 + 32 + 80 = 124 bytes)
//!   0   8  magic "SMCOMMIT"
//!   8   2  version (u16 LE) = 1
//!  10   2  reserved, 0
//!  12  32  transcript hash of the committed session
//!  44  80  the commit record, as the source helper sealed it
//!
//!  abort token file (8 + 2 + 2 + 32 + 32 = 76 bytes)
//!   0   8  magic "SMABORT\0"
//!   8   2  version (u16 LE) = 1
//!  10   2  origin (u16 LE): 1 the target's helper, 2 the guest owner
//!  12  32  transcript hash of the aborted session
//!  44  32  the token
//! ```

use helper_abi::{mailbox::Origin, record::COMMIT_RECORD_SIZE};

/// The only layout version of both files.
pub const FILE_VERSION: u16 = 1;

/// Why a recovery file is unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryFileError {
    /// The file has the wrong size for its kind.
    #[error("{what} is {got} bytes, not {want}")]
    Size {
        /// Which kind of file.
        what: &'static str,
        /// Its size.
        got: usize,
        /// The size of that kind.
        want: usize,
    },
    /// The file does not start with the kind's magic.
    #[error("not {what} (wrong magic)")]
    Magic {
        /// Which kind of file was expected.
        what: &'static str,
    },
    /// A layout version this build does not read.
    #[error("{what} version {found} (this build reads version {FILE_VERSION})")]
    Version {
        /// Which kind of file.
        what: &'static str,
        /// The file's version.
        found: u16,
    },
    /// A reserved field is not zero.
    #[error("{what} has a non-zero reserved field")]
    Reserved {
        /// Which kind of file.
        what: &'static str,
    },
    /// The token's origin is neither the target nor the owner.
    #[error("abort token file of unknown origin {0}")]
    Origin(u16),
}

const COMMIT_MAGIC: &[u8; 8] = b"SMCOMMIT";
const TOKEN_MAGIC: &[u8; 8] = b"SMABORT\0";
const COMMIT_WHAT: &str = "a commit file";
const TOKEN_WHAT: &str = "an abort token file";

/// Splits `bytes` into a fixed header and checks size, magic and version; the u16 after
/// the version, and the body.
fn open<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    what: &'static str,
    size: usize,
) -> Result<(u16, &'a [u8]), RecoveryFileError> {
    if bytes.len() != size {
        return Err(RecoveryFileError::Size {
            what,
            got: bytes.len(),
            want: size,
        });
    }
    let (head, body) = bytes.split_at(12);
    if head.get(..8) != Some(magic.as_slice()) {
        return Err(RecoveryFileError::Magic { what });
    }
    let word = |at: usize| u16::from_le_bytes([head[at], head[at + 1]]);
    if word(8) != FILE_VERSION {
        return Err(RecoveryFileError::Version {
            what,
            found: word(8),
        });
    }
    Ok((word(10), body))
}

/// The source helper's sealed commit, saved before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitFile {
    /// The committed session's transcript hash.
    pub transcript: [u8; 32],
    /// The commit record as the source helper sealed it.
    pub record: [u8; COMMIT_RECORD_SIZE],
}

impl CommitFile {
    /// Encoded size.
    pub const SIZE: usize = 12 + 32 + COMMIT_RECORD_SIZE;

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        out.extend_from_slice(COMMIT_MAGIC);
        out.extend_from_slice(&FILE_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(&self.transcript);
        out.extend_from_slice(&self.record);
        out
    }

    /// Reads a commit file.
    pub fn decode(bytes: &[u8]) -> Result<CommitFile, RecoveryFileError> {
        let (reserved, body) = open(bytes, COMMIT_MAGIC, COMMIT_WHAT, Self::SIZE)?;
        if reserved != 0 {
            return Err(RecoveryFileError::Reserved { what: COMMIT_WHAT });
        }
        let (transcript, record) = body.split_at(32);
        Ok(CommitFile {
            transcript: transcript.try_into().expect("split at 32"),
            record: record.try_into().expect("the size was checked"),
        })
    }
}

/// Who gave a committed session up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenOrigin {
    /// The target's helper: it aborted the session and will never commit it.
    Target,
    /// The guest owner's break-glass abort: the owner decided the target never ran the
    /// guest.
    Owner,
}

impl TokenOrigin {
    /// The helper's name for it (the RELEASE request's origin).
    pub fn helper_origin(self) -> Origin {
        match self {
            TokenOrigin::Target => Origin::TARGET,
            TokenOrigin::Owner => Origin::OWNER,
        }
    }

    /// A word for messages.
    pub fn name(self) -> &'static str {
        match self {
            TokenOrigin::Target => "target",
            TokenOrigin::Owner => "owner",
        }
    }

    fn code(self) -> u16 {
        match self {
            TokenOrigin::Target => 1,
            TokenOrigin::Owner => 2,
        }
    }

    fn from_code(code: u16) -> Result<TokenOrigin, RecoveryFileError> {
        match code {
            1 => Ok(TokenOrigin::Target),
            2 => Ok(TokenOrigin::Owner),
            other => Err(RecoveryFileError::Origin(other)),
        }
    }
}

/// An abort of a committed session, for the source's helper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortTokenFile {
    /// Who aborted it.
    pub origin: TokenOrigin,
    /// The aborted session's transcript hash.
    pub transcript: [u8; 32],
    /// The token (a MAC the source helper checks).
    pub tag: [u8; 32],
}

impl AbortTokenFile {
    /// Encoded size.
    pub const SIZE: usize = 12 + 32 + 32;

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::SIZE);
        out.extend_from_slice(TOKEN_MAGIC);
        out.extend_from_slice(&FILE_VERSION.to_le_bytes());
        out.extend_from_slice(&self.origin.code().to_le_bytes());
        out.extend_from_slice(&self.transcript);
        out.extend_from_slice(&self.tag);
        out
    }

    /// Reads an abort token file.
    pub fn decode(bytes: &[u8]) -> Result<AbortTokenFile, RecoveryFileError> {
        let (origin, body) = open(bytes, TOKEN_MAGIC, TOKEN_WHAT, Self::SIZE)?;
        let (transcript, tag) = body.split_at(32);
        Ok(AbortTokenFile {
            origin: TokenOrigin::from_code(origin)?,
            transcript: transcript.try_into().expect("split at 32"),
            tag: tag.try_into().expect("the size was checked"),
        })
    }
}

/// A transcript hash as operators see it: lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses a 32-byte transcript hash written as 64 hex digits.
pub fn parse_transcript(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit() -> CommitFile {
        CommitFile {
            transcript: [7; 32],
            record: [0xc0; COMMIT_RECORD_SIZE],
        }
    }

    fn token(origin: TokenOrigin) -> AbortTokenFile {
        AbortTokenFile {
            origin,
            transcript: [9; 32],
            tag: [0xab; 32],
        }
    }

    #[test]
    fn both_files_round_trip_at_their_fixed_size() {
        let c = commit();
        let bytes = c.encode();
        assert_eq!(bytes.len(), CommitFile::SIZE);
        assert_eq!(bytes.len(), 124);
        assert_eq!(&bytes[..8], b"SMCOMMIT");
        assert_eq!(CommitFile::decode(&bytes), Ok(c));
        for origin in [TokenOrigin::Target, TokenOrigin::Owner] {
            let t = token(origin);
            let bytes = t.encode();
            assert_eq!(bytes.len(), AbortTokenFile::SIZE);
            assert_eq!(bytes.len(), 76);
            assert_eq!(AbortTokenFile::decode(&bytes), Ok(t));
        }
        assert_eq!(TokenOrigin::Target.helper_origin(), Origin::TARGET);
        assert_eq!(TokenOrigin::Owner.helper_origin(), Origin::OWNER);
    }

    #[test]
    fn damaged_or_foreign_files_are_refused_with_a_reason() {
        let c = commit().encode();
        let t = token(TokenOrigin::Target).encode();
        // Every truncation and one extra byte.
        for n in 0..c.len() {
            assert!(matches!(
                CommitFile::decode(&c[..n]),
                Err(RecoveryFileError::Size { .. })
            ));
        }
        let mut long = c.clone();
        long.push(0);
        assert_eq!(
            CommitFile::decode(&long).unwrap_err().to_string(),
            "a commit file is 125 bytes, not 124"
        );
        // One kind is not the other, even at the other's size.
        let mut padded = t.clone();
        padded.resize(CommitFile::SIZE, 0);
        assert_eq!(
            CommitFile::decode(&padded),
            Err(RecoveryFileError::Magic {
                what: "a commit file"
            })
        );
        let mut v2 = c.clone();
        v2[8] = 2;
        assert_eq!(
            CommitFile::decode(&v2).unwrap_err().to_string(),
            "a commit file version 2 (this build reads version 1)"
        );
        let mut reserved = c.clone();
        reserved[11] = 1;
        assert!(matches!(
            CommitFile::decode(&reserved),
            Err(RecoveryFileError::Reserved { .. })
        ));
        for origin in [0u8, 3, 0xff] {
            let mut bad = t.clone();
            bad[10] = origin;
            assert_eq!(
                AbortTokenFile::decode(&bad),
                Err(RecoveryFileError::Origin(u16::from(origin)))
            );
        }
    }

    #[test]
    fn transcripts_print_and_parse_as_hex() {
        let th: [u8; 32] = core::array::from_fn(|i| i as u8 * 7);
        let text = hex(&th);
        assert_eq!(text.len(), 64);
        assert_eq!(parse_transcript(&text), Some(th));
        assert_eq!(parse_transcript(&format!("  {text}\n")), Some(th));
        assert_eq!(parse_transcript(&text[..62]), None);
        assert_eq!(parse_transcript(&text.replace('0', "g")), None);
        assert_eq!(parse_transcript(&"é".repeat(32)), None);
    }
}
