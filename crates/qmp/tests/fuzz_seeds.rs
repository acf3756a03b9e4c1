//! Replays every seed of the `qmp_requests` fuzz target (`fuzz/seeds/qmp_requests/`)
//! through the path the target runs, `qmp::fuzzing::exercise`. Crashes found by fuzzing
//! are added to that folder, so this test keeps them fixed.
//!
//! The generated seeds come from `qmp::fuzzing::seeds`; regenerate them with
//! `QMP_BLESS=1 cargo test -p qmp --test fuzz_seeds`.

use std::path::{Path, PathBuf};

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/qmp_requests")
}

#[test]
fn generated_seeds_are_current() {
    let dir = seeds_dir();
    let bless = std::env::var_os("QMP_BLESS").is_some();
    for (name, bytes) in qmp::fuzzing::seeds() {
        let path = dir.join(name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (QMP_BLESS=1 regenerates)", path.display()));
        assert!(
            on_disk == bytes,
            "{} differs from what the code builds (QMP_BLESS=1 regenerates)",
            path.display()
        );
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
        paths.len() >= qmp::fuzzing::seeds().len(),
        "too few seeds in {}",
        dir.display()
    );
    for path in &paths {
        let data = std::fs::read(path).unwrap();
        let s = qmp::fuzzing::exercise(&data);
        println!(
            "{}: {} texts, {} errors, commands {:?}",
            path.file_name().unwrap().to_string_lossy(),
            s.frames,
            s.errors,
            s.commands
        );
    }
}
