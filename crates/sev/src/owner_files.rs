//! The guest owner's files, read as untrusted input (sizes capped before reading, checked
//! after) and written with the permissions their secrecy needs.

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// Why an owner file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// What the file is.
        what: String,
        /// Which file.
        path: PathBuf,
        /// The OS's reason.
        source: std::io::Error,
    },
    /// The file is longer than what it can be.
    #[error("{what} {} is larger than {max} bytes", path.display())]
    TooLarge {
        /// What the file is.
        what: String,
        /// Which file.
        path: PathBuf,
        /// The cap.
        max: usize,
    },
    /// A file that must hold exactly `expected` bytes.
    #[error("{what} {} is {len} bytes, expected {expected}", path.display())]
    Length {
        /// What the file is.
        what: String,
        /// Which file.
        path: PathBuf,
        /// Its length.
        len: usize,
        /// The length it must have.
        expected: usize,
    },
    /// A key file that is not 16 raw bytes.
    #[error("{name} file {} is {len} bytes, expected 16 raw bytes (NAME_{}.bin from `owner session` or `sevctl session`)", path.display(), name.to_ascii_lowercase())]
    KeyLength {
        /// "TEK" or "TIK".
        name: &'static str,
        /// Which file.
        path: PathBuf,
        /// Its length.
        len: usize,
    },
    /// The file could not be created or written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// Which file.
        path: PathBuf,
        /// The OS's reason.
        source: std::io::Error,
    },
}

/// Reads at most `max` bytes of `path`; a longer file is an error.
pub fn read_capped(what: &str, path: &Path, max: usize) -> Result<Vec<u8>, FileError> {
    let mut buf = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut buf))
        .map_err(|source| FileError::Read {
            what: what.into(),
            path: path.to_path_buf(),
            source,
        })?;
    if buf.len() > max {
        return Err(FileError::TooLarge {
            what: what.into(),
            path: path.to_path_buf(),
            max,
        });
    }
    Ok(buf)
}

/// A file of exactly `N` bytes.
pub fn read_array<const N: usize>(what: &str, path: &Path) -> Result<[u8; N], FileError> {
    let raw = read_capped(what, path, N)?;
    raw.as_slice().try_into().map_err(|_| FileError::Length {
        what: what.into(),
        path: path.to_path_buf(),
        len: raw.len(),
        expected: N,
    })
}

/// A 16-byte raw key file; `name` is "TEK" or "TIK".
pub fn read_key(name: &'static str, path: &Path) -> Result<[u8; 16], FileError> {
    let raw = read_capped(&format!("{name} file"), path, 64)?;
    raw.as_slice().try_into().map_err(|_| FileError::KeyLength {
        name,
        path: path.to_path_buf(),
        len: raw.len(),
    })
}

/// Creates `path` with `mode` (replacing it unless `create_new`), writes `bytes` and
/// syncs them.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32, create_new: bool) -> Result<(), FileError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).mode(mode);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    opts.open(path)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .map_err(|source| FileError::Write {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_misshapen_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("x_tik.bin");
        write_file(&key, &[7; 16], 0o600, true).unwrap();
        assert_eq!(read_key("TIK", &key).unwrap(), [7; 16]);
        assert!(
            matches!(
                write_file(&key, &[1], 0o600, true),
                Err(FileError::Write { .. })
            ),
            "create_new never replaces"
        );
        write_file(&key, &[7; 17], 0o600, false).unwrap();
        let err = read_key("TIK", &key).unwrap_err();
        assert!(err.to_string().contains("17 bytes, expected 16"), "{err}");
        write_file(&key, &[0; 65], 0o600, false).unwrap();
        assert!(matches!(
            read_key("TIK", &key),
            Err(FileError::TooLarge { max: 64, .. })
        ));
        let short = dir.path().join("secret");
        write_file(&short, &[1; 31], 0o600, true).unwrap();
        let err = read_array::<32>("migration secret", &short).unwrap_err();
        assert!(err.to_string().contains("31 bytes, expected 32"), "{err}");
        let err = read_capped("secret", &dir.path().join("none"), 10).unwrap_err();
        assert!(err.to_string().contains("cannot read secret"), "{err}");
    }
}
