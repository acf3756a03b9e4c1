//! Fuzz target for the migration helper's request decoding, where the host talks to
//! guest code: requests, GPA lists, handshake messages and record windows of any bytes,
//! in any order, on either side of a keyed session, through
//! `mirror_helper::fuzzing::exercise`, the same path the seed replay test runs
//! (`crates/helper/tests/fuzz_seeds.rs`). It asserts, besides no panic, that responses
//! echo their request, statuses are defined, and guest memory changes only through an
//! accepted IMPORT (target) or a commit or release of the "migrated out" page (source).
//!   cargo +nightly fuzz run helper_requests fuzz/corpus/helper_requests fuzz/seeds/helper_requests
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mirror_helper::fuzzing::exercise(data);
});
