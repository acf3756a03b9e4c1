//! The "migrated out" flag: how a guest learns that its migration helper committed a
//! migration, so that this copy of the guest must never run again.
//!
//! The source's helper writes [`MIGRATED_OUT`] into the first word of the private page
//! [`crate::layout::MIGRATION_STATE`] when it seals the commit record, followed by the
//! committed session's transcript hash; it clears the page only when an abort of that
//! session verifies (from the target's helper or the guest owner). Every workload of
//! the firmware calls its check at least every 10 ms and parks the CPU once the flag is
//! set; a guest OS would do the same from its timer tick.
//!
//! The flag rests on memory integrity: under plain SEV and SEV-ES a host that replays
//! an older ciphertext of this page clears it (SEV-SNP's RMP stops that), and under
//! plain SEV the host can move a vCPU's RIP past the check (SEV-ES stops that). The VMM
//! refuses to run a migrated-out guest as well.

/// First word of [`crate::layout::MIGRATION_STATE`] once the guest migrated out
/// ("MIGRATED" in ASCII, little-endian).
pub const MIGRATED_OUT: u64 = u64::from_le_bytes(*b"MIGRATED");

/// Offset in the page of the committed session's transcript hash (32 bytes).
pub const TRANSCRIPT_OFFSET: usize = 8;

/// Whether `first_word` (the first u64 of the page) says the guest migrated out.
pub const fn is_migrated_out(first_word: u64) -> bool {
    first_word == MIGRATED_OUT
}

/// The most time a workload may run between two checks of the flag.
pub const CHECK_INTERVAL_MS: u64 = 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_word_means_migrated_out() {
        assert!(is_migrated_out(MIGRATED_OUT));
        assert!(!is_migrated_out(0));
        assert!(!is_migrated_out(MIGRATED_OUT ^ 1));
    }
}
