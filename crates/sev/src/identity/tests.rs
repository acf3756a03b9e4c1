//! Tests of the platform identity and its state directory.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh empty directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = env::temp_dir().join(format!(
            "sevmirror-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn created_identity_reloads_identically_with_private_permissions() {
    let t = TempDir::new("id-reload");
    let dir = t.0.join("nested/platform");
    let a = PlatformIdentity::load_or_create(&dir).unwrap();
    let b = PlatformIdentity::load_or_create(&dir).unwrap();
    assert_eq!(a.certs(), b.certs());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    for f in [CHIP_FILE, OWNER_FILE] {
        assert_eq!(
            fs::metadata(dir.join(f)).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        3,
        "no temporary files are left behind: {names:?}"
    );
}

#[test]
fn chain_has_four_amd_certificates_that_virtee_verifies() {
    use sev::certs::sev::{sev::Chain, Verifiable};
    use sev::parser::Decoder;
    let id = PlatformIdentity::generate().unwrap();
    let certs = id.certs();
    assert_eq!(certs.chain.len(), 4 * 0x824);
    assert_eq!(certs.pdh, certs.chain[..0x824]);
    let chain = Chain::decode(&mut &certs.chain[..], ()).unwrap();
    let pdh = (&chain).verify().unwrap();
    let mut out = Vec::new();
    sev::parser::Encoder::encode(pdh, &mut out, ()).unwrap();
    assert_eq!(out, certs.pdh);
}

#[test]
fn rotate_and_reset_persist_and_keep_the_chip_key() {
    let t = TempDir::new("id-rotate");
    let mut id = PlatformIdentity::load_or_create(&t.0).unwrap();
    let before = id.certs();
    id.rotate_pdh().unwrap();
    let rotated = id.certs();
    assert_ne!(before.pdh, rotated.pdh);
    assert_eq!(
        before.chain[0x824..],
        rotated.chain[0x824..],
        "only the PDH changes"
    );
    assert_eq!(
        PlatformIdentity::load_or_create(&t.0).unwrap().certs(),
        rotated
    );
    id.factory_reset().unwrap();
    let reset = id.certs();
    assert_ne!(reset.chain[..3 * 0x824], rotated.chain[..3 * 0x824]);
    assert_eq!(
        reset.chain[3 * 0x824..],
        rotated.chain[3 * 0x824..],
        "CEK survives"
    );
    assert_eq!(
        PlatformIdentity::load_or_create(&t.0).unwrap().certs(),
        reset
    );
}

fn expect_invalid(dir: &Path, file: &str) -> String {
    let before = fs::read(dir.join(file)).ok();
    let err = PlatformIdentity::load_or_create(dir).unwrap_err();
    let after = fs::read(dir.join(file)).ok();
    assert_eq!(before, after, "a damaged file is left untouched");
    match &err {
        IdentityError::Invalid { file: f, .. } => assert!(f.ends_with(file), "{err}"),
        other => panic!("expected Invalid for {file}, got {other:?}"),
    }
    let sev: SevError = err.into();
    let text = sev.to_string();
    assert!(text.contains(file), "{text}");
    text
}

#[test]
fn each_damaged_file_gives_a_clear_error_naming_it() {
    let t = TempDir::new("id-corrupt");
    let good = PlatformIdentity::load_or_create(&t.0).unwrap().certs();
    for file in [CHIP_FILE, OWNER_FILE] {
        let path = t.0.join(file);
        let original = fs::read(&path).unwrap();
        // Truncated (a crash before the rename cannot do this, a full disk can).
        fs::write(&path, &original[..original.len() / 2]).unwrap();
        assert!(expect_invalid(&t.0, file).contains("checksum"));
        // One flipped bit.
        let mut flipped = original.clone();
        flipped[200] ^= 0x04;
        fs::write(&path, &flipped).unwrap();
        expect_invalid(&t.0, file);
        // A foreign file.
        fs::write(
            &path,
            b"hello, I am not a platform file at all, but long enough...",
        )
        .unwrap();
        assert!(expect_invalid(&t.0, file).contains("magic"));
        // Empty.
        fs::write(&path, b"").unwrap();
        expect_invalid(&t.0, file);
        fs::write(&path, &original).unwrap();
    }
    // Both restored: the same identity as before.
    assert_eq!(
        PlatformIdentity::load_or_create(&t.0).unwrap().certs(),
        good
    );
}

#[test]
fn owner_file_of_another_chip_is_rejected() {
    let (a, b) = (TempDir::new("id-mix-a"), TempDir::new("id-mix-b"));
    PlatformIdentity::load_or_create(&a.0).unwrap();
    PlatformIdentity::load_or_create(&b.0).unwrap();
    fs::copy(b.0.join(OWNER_FILE), a.0.join(OWNER_FILE)).unwrap();
    assert!(expect_invalid(&a.0, OWNER_FILE).contains("CEK"));
    // Swapped files (right checksum, wrong kind).
    fs::copy(b.0.join(CHIP_FILE), a.0.join(OWNER_FILE)).unwrap();
    assert!(expect_invalid(&a.0, OWNER_FILE).contains("kind"));
}

#[test]
fn missing_chip_file_is_not_silently_regenerated_and_recreate_recovers() {
    let t = TempDir::new("id-partial");
    let first = PlatformIdentity::load_or_create(&t.0).unwrap().certs();
    fs::remove_file(t.0.join(CHIP_FILE)).unwrap();
    assert!(matches!(
        PlatformIdentity::load_or_create(&t.0),
        Err(IdentityError::Partial { .. })
    ));
    let again = PlatformIdentity::recreate(&t.0).unwrap().certs();
    assert_ne!(again, first);
    assert_eq!(
        PlatformIdentity::load_or_create(&t.0).unwrap().certs(),
        again
    );
    // A crash after the chip file was written on first creation: the owner part is
    // made on the next start.
    fs::remove_file(t.0.join(OWNER_FILE)).unwrap();
    let healed = PlatformIdentity::load_or_create(&t.0).unwrap().certs();
    assert_eq!(healed.chain[3 * 0x824..], again.chain[3 * 0x824..]);
}

#[test]
fn concurrent_creation_yields_one_identity() {
    let t = TempDir::new("id-race");
    let dir = t.0.clone();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || PlatformIdentity::load_or_create(&dir).unwrap().certs())
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(results.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn debug_output_hides_private_keys() {
    let id = PlatformIdentity::generate().unwrap();
    let text = format!("{id:?}");
    assert!(
        text.contains("<redacted>") && !text.contains("EcKey"),
        "{text}"
    );
}

#[test]
fn default_dir_follows_the_environment_order() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    };
    let all: &'static [(&str, &str)] = &[
        ("SEVMIRROR_PLATFORM_DIR", "/x/explicit"),
        ("XDG_STATE_HOME", "/x/state"),
        ("HOME", "/x/home"),
    ];
    assert_eq!(
        default_dir_from(env(all)).unwrap(),
        PathBuf::from("/x/explicit")
    );
    assert_eq!(
        default_dir_from(env(&[
            ("SEVMIRROR_PLATFORM_DIR", ""),
            ("XDG_STATE_HOME", "/x/state"),
            ("HOME", "/h")
        ]))
        .unwrap(),
        PathBuf::from("/x/state/sevmirror/platform")
    );
    assert_eq!(
        default_dir_from(env(&[("XDG_STATE_HOME", "relative"), ("HOME", "/x/home")])).unwrap(),
        PathBuf::from("/x/home/.local/state/sevmirror/platform")
    );
    assert!(matches!(
        default_dir_from(env(&[])),
        Err(IdentityError::NoDefaultDir)
    ));
}
