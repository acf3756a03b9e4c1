//! The contract between the migration helper (which runs in the guest firmware, on a
//! mirror VM's vCPU) and the VMM: the helper descriptor in the firmware's GUID table, the
//! mailbox each helper vCPU serves, and the sealed page records that travel from the
//! source helper through two untrusted hosts to the target helper.
//!
//! `no_std`, no dependencies. Every structure has an explicit little-endian encoding with
//! a fixed size; decoders check sizes and reject unknown values. The VMM never trusts
//! what the helper writes beyond these formats, and the helper treats every byte of the
//! mailbox as hostile: it copies a request out once and validates the copy.

#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod descriptor;
pub mod handshake;
pub mod mailbox;
pub mod record;
pub mod region;

/// Version of this ABI (descriptor, mailbox and record formats). Version 2: the helper
/// entry takes its lane from a private counter, sessions come from an authenticated key
/// agreement between the two helpers, and a commit decides which side runs the guest.
pub const ABI_VERSION: u16 = 2;

/// A page, the unit the helper moves.
pub const PAGE_SIZE: usize = 4096;

/// Most helper vCPUs a firmware provides mailboxes for.
pub const MAX_HELPER_VCPUS: usize = 3;

/// Lane ids a helper hands out (the helper entry refuses more). Every record's nonce
/// starts with its lane id, and the manifest lists each lane's final sequence number.
pub const MAX_LANES: usize = 8;

const _: () = assert!(MAX_HELPER_VCPUS <= MAX_LANES);

/// Length of the SHA-256 digests and HMAC-SHA256 tags the handshake uses.
pub const DIGEST_LEN: usize = 32;

/// Most pages in one EXPORT or IMPORT request (records in one window).
pub const MAX_BATCH: usize = 256;

/// Record windows per helper vCPU, so the VMM can send one while the helper fills the
/// other.
pub const WINDOWS_PER_VCPU: usize = 2;

/// GUID (EFI byte order) of the 32-byte migration secret in the guest owner's launch
/// secret table: `dd785603-80b4-4e8d-abcf-5b10f9a32dde`.
pub const MIGRATION_SECRET_GUID: [u8; 16] = [
    0x03, 0x56, 0x78, 0xdd, 0xb4, 0x80, 0x8d, 0x4e, 0xab, 0xcf, 0x5b, 0x10, 0xf9, 0xa3, 0x2d, 0xde,
];

/// Length of the migration secret.
pub const MIGRATION_SECRET_LEN: usize = 32;

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
