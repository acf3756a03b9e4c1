//! Fuzz target for the footer GUID table: parse, walk, find, every decoder,
//! the builder round trip and the report (text and JSON), all through
//! `fwtable::fuzzing::exercise`, the same path the seed replay test runs.
//!   cargo +nightly fuzz run fwtable fuzz/corpus/fwtable fuzz/seeds/fwtable
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(report) = fwtable::fuzzing::exercise(data) {
        let _ = serde_json::to_string(&report);
    }
});
