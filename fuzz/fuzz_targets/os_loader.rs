//! Fuzz target for the OS loader: the SEV hashes table parser, the bzImage and ELF
//! parsers and a whole load into a fake guest, all through
//! `os_loader::fuzzing::exercise`, the same path the seed replay test runs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    os_loader::fuzzing::exercise(data);
});
