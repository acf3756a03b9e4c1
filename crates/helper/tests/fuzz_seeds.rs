//! Replays every seed of the `helper_requests` fuzz target
//! (`fuzz/seeds/helper_requests/`) through the path the target runs,
//! `mirror_helper::fuzzing::exercise`. Crashes found by fuzzing are added to that folder,
//! so this test keeps them fixed.
//!
//! The seeds are sessions built by `mirror_helper::fuzzing::seeds`; regenerate them with
//! `HELPER_BLESS=1 cargo test -p mirror-helper --test fuzz_seeds`.

use std::path::{Path, PathBuf};

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/helper_requests")
}

#[test]
fn generated_seeds_are_current() {
    let dir = seeds_dir();
    let bless = std::env::var_os("HELPER_BLESS").is_some();
    for (name, bytes) in mirror_helper::fuzzing::seeds() {
        let path = dir.join(name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (HELPER_BLESS=1 regenerates)", path.display()));
        assert!(
            on_disk == bytes,
            "{} differs from what the code builds (HELPER_BLESS=1 regenerates)",
            path.display()
        );
    }
}

#[test]
fn generated_seeds_end_as_expected() {
    for (name, bytes) in mirror_helper::fuzzing::seeds() {
        let s = mirror_helper::fuzzing::exercise(&bytes);
        match name {
            "migration.bin" => {
                assert_eq!(s.ok, s.requests, "{name}: every request succeeds: {s:?}");
                assert_eq!(s.imported, 24, "{name}: every page once: {s:?}");
                assert!(s.migrated_out, "{name}: the source committed");
            }
            "abort-and-release.bin" => {
                assert_eq!(s.ok, s.requests, "{name}: {s:?}");
                assert!(
                    !s.migrated_out,
                    "{name}: the target's abort released the source"
                );
            }
            "refusals.bin" => {
                assert_eq!(s.ok, 0, "{name}: {s:?}");
                assert_eq!(s.requests, 9, "{name}");
            }
            "migration-truncated.bin" => assert!(!s.migrated_out, "{name}"),
            "empty.bin" => assert_eq!(s.requests, 0),
            other => panic!("no expectation for generated seed {other}"),
        }
    }
}

#[test]
fn replay_all_seeds() {
    let dir = seeds_dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert!(
        paths.len() >= mirror_helper::fuzzing::seeds().len(),
        "too few seeds in {}",
        dir.display()
    );
    for path in &paths {
        let data = std::fs::read(path).unwrap();
        let s = mirror_helper::fuzzing::exercise(&data);
        println!("{}: {s:?}", path.file_name().unwrap().to_string_lossy());
    }
}
