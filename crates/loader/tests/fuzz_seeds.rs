//! Replays every seed of the `os_loader` fuzz target (`fuzz/seeds/os_loader/`) through
//! `os_loader::fuzzing::exercise`, the path the target runs, plus a few thousand
//! deterministic mutants of each (byte flips, length fields set to extremes,
//! truncations): none may panic or hang. Crashes found by fuzzing go into that folder.

use std::path::Path;

use guest_abi::memmap::{firmware_reservations, MemoryMap};
use os_loader::{
    hashes::{HashTable, HashTableError},
    load::{load, Layout, LoadError},
    GuestWriter, WriteError,
};

fn seeds() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/os_loader");
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    assert!(v.len() >= 9, "seeds missing in {}", dir.display());
    v
}

struct Null;
impl GuestWriter for Null {
    fn write(&mut self, _: u64, _: &[u8]) -> Result<(), WriteError> {
        Ok(())
    }
    fn zero(&mut self, _: u64, _: u64) -> Result<(), WriteError> {
        Ok(())
    }
}

#[test]
fn seeds_load_or_fail_as_named() {
    let map = MemoryMap::build([(0, 256 << 20)], &firmware_reservations(2 << 20)).unwrap();
    let layout = Layout {
        map: &map,
        mmio: &[],
    };
    for (name, data) in seeds() {
        os_loader::fuzzing::exercise(&data);
        let loaded = load(&data, &[], b"", &layout, &mut Null);
        let table = HashTable::parse(&data);
        match name.as_str() {
            "bzimage-2.15.bin" | "elf-one-segment.bin" => assert!(loaded.is_ok(), "{name}"),
            "bzimage-protocol-2.05.bin" => assert!(
                matches!(loaded, Err(LoadError::BzImage(_))),
                "{name}: {loaded:?}"
            ),
            "elf-in-helper-region.bin" => assert!(
                matches!(loaded, Err(LoadError::SegmentNotInRam { .. })),
                "{name}: {loaded:?}"
            ),
            "hashes-table.bin" => {
                table.unwrap();
            }
            "hashes-entry-len-zero.bin" => assert!(
                matches!(table, Err(HashTableError::BadEntry { len: 0, .. })),
                "{name}"
            ),
            _ => assert!(loaded.is_err(), "{name}"),
        }
    }
}

#[test]
fn mutants_of_every_seed_never_panic() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Offsets of the length and address fields the parsers trust least.
    let hot = [
        0x01f1, 0x01f4, 0x0201, 0x0206, 0x0211, 0x022c, 0x0230, 0x0234, 0x0236, 0x0238, 0x0258,
        0x0260, 0x10, 0x12, 0x18, 0x20, 0x36, 0x38, 64, 72, 80, 88, 96, 104, 16, 17, 0x22, 0x54,
        0x86,
    ];
    for (_, seed) in seeds() {
        for round in 0..1500 {
            let mut m = seed.clone();
            if m.is_empty() {
                m = vec![0; 1 + (next() % 600) as usize];
            }
            let len = m.len() as u64;
            match round % 3 {
                0 => {
                    for _ in 0..1 + next() % 8 {
                        let at = (next() % len) as usize;
                        m[at] ^= 1 << (next() % 8);
                    }
                }
                1 => {
                    let at = hot[(next() % hot.len() as u64) as usize];
                    let fill = [0x00, 0xff, 0x7f, 0x80][(next() % 4) as usize];
                    for b in m.iter_mut().skip(at).take(8) {
                        *b = fill;
                    }
                }
                _ => m.truncate((next() % (len + 1)) as usize),
            }
            os_loader::fuzzing::exercise(&m);
        }
    }
}
