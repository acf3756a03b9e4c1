//! Fuzz target for the control socket: arbitrary bytes, as a QMP client would send them,
//! go through the framer, capabilities negotiation, request checks and the decoding of
//! every command's arguments, in front of a controller that answers each command with a
//! reply of its kind — all through `qmp::fuzzing::exercise`, the same path the seed
//! replay test runs (`crates/qmp/tests/fuzz_seeds.rs`). It asserts that the framer cuts
//! the same texts whatever the chunking, and that every response is one JSON line with
//! `return` or `error` and the request's `id`.
//!   cargo +nightly fuzz run qmp_requests fuzz/corpus/qmp_requests fuzz/seeds/qmp_requests
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = qmp::fuzzing::exercise(data);
});
