//! Fuzz target for the migration stream: arbitrary bytes go to the frame reader as a
//! captured session (both directions), every decoded frame is fed to the receiver state
//! machine and re-encoded and decoded again, all through
//! `migration::fuzzing::exercise`, the same path the seed replay test runs
//! (`crates/migration/tests/fuzz_seeds.rs`).
//!   cargo +nightly fuzz run migration_frames fuzz/corpus/migration_frames fuzz/seeds/migration_frames
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let summary = migration::fuzzing::exercise(data);
    // Formatting the errors is part of the surface a peer reaches (logs, QMP replies).
    let _ = summary.end.to_string();
    if let Err(e) = summary.state {
        let _ = e.to_string();
    }
});
