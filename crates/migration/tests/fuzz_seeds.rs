//! Replays every seed of the `migration_frames` fuzz target
//! (`fuzz/seeds/migration_frames/`) through the path the target runs,
//! `migration::fuzzing::exercise`. Crashes found by fuzzing are added to that folder, so
//! this test keeps them fixed.
//!
//! The seeds are encoded sessions built by `migration::fuzzing::seeds`; regenerate them
//! with `MIGRATION_BLESS=1 cargo test -p migration --test fuzz_seeds`.

use std::path::{Path, PathBuf};

use migration::frames::{FrameError, ReceiverState};
use migration::CodecError;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/migration_frames")
}

#[test]
fn generated_seeds_are_current() {
    let dir = seeds_dir();
    let bless = std::env::var_os("MIGRATION_BLESS").is_some();
    for (name, bytes) in migration::fuzzing::seeds() {
        let path = dir.join(name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &bytes).unwrap();
            continue;
        }
        let on_disk = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (MIGRATION_BLESS=1 regenerates)", path.display()));
        assert!(
            on_disk == bytes,
            "{} differs from what the code builds (MIGRATION_BLESS=1 regenerates)",
            path.display()
        );
    }
}

#[test]
fn generated_seeds_end_as_expected() {
    for (name, bytes) in migration::fuzzing::seeds() {
        let s = migration::fuzzing::exercise(&bytes);
        match name {
            "sev-session.bin"
            | "sev-es-session.bin"
            | "plain-session.bin"
            | "plain-session-v1.bin" => {
                assert!(s.end.is_clean_eof(), "{name}: {}", s.end);
                assert_eq!(s.state, Ok(ReceiverState::Completed), "{name}");
            }
            "sev-aborted-after-commit.bin" => {
                assert!(s.end.is_clean_eof(), "{name}: {}", s.end);
                assert_eq!(s.state, Ok(ReceiverState::Aborted), "{name}");
            }
            "refused-hello.bin" => {
                assert!(s.end.is_clean_eof(), "{name}: {}", s.end);
                assert_eq!((s.frames, s.state), (2, Ok(ReceiverState::Accepted)));
            }
            "aborted-round0.bin" => {
                assert!(s.end.is_clean_eof(), "{name}: {}", s.end);
                assert_eq!(s.state, Ok(ReceiverState::Aborted), "{name}");
            }
            "sev-session-truncated.bin" => {
                assert!(
                    matches!(s.end, CodecError::Io { .. }),
                    "{name}: {:?}",
                    s.end
                );
                assert!(!s.end.is_clean_eof());
            }
            "version-3-hello.bin" => {
                assert_eq!(s.frames, 0);
                assert!(
                    matches!(
                        s.end,
                        CodecError::Frame {
                            source: FrameError::UnsupportedVersion { found: 3, .. },
                            ..
                        }
                    ),
                    "{name}: {:?}",
                    s.end
                );
            }
            "empty.bin" => {
                assert_eq!(s.frames, 0);
                assert!(s.end.is_clean_eof());
            }
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
        paths.len() >= migration::fuzzing::seeds().len(),
        "too few seeds in {}",
        dir.display()
    );
    for path in &paths {
        let data = std::fs::read(path).unwrap();
        let s = migration::fuzzing::exercise(&data);
        println!(
            "{}: {} frames, state {:?}, ended: {}",
            path.file_name().unwrap().to_string_lossy(),
            s.frames,
            s.state,
            s.end
        );
    }
}
