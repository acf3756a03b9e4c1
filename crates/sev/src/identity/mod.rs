//! The emulated platform's identity: its four P-384 key pairs and their certificates in
//! AMD's format, kept in a state directory.
//!
//! - **CEK** (Chip Endorsement Key). On real parts it is derived from chip fuses and
//!   signed by AMD's ASK. There is no AMD root here, so the emulated CEK is
//!   **self-signed** (signature slot 1: usage CEK, ECDSA-SHA256); `sevctl verify` will
//!   therefore report the ASK→CEK link as invalid, as for any non-AMD chain. A factory
//!   reset keeps it, as on hardware.
//! - **OCA** (Owner Certificate Authority): self-signed (the platform is self-owned).
//! - **PEK** (Platform Endorsement Key): signed by the OCA (slot 1) and the CEK (slot 2),
//!   as real chains are.
//! - **PDH** (Platform Diffie-Hellman key, ECDH): signed by the PEK. PDH_GEN replaces it.
//!
//! All four carry the emulated firmware's API version, as real self-owned chains do.
//!
//! # State directory
//! [`default_dir`]: `$SEVMIRROR_PLATFORM_DIR`, else `$XDG_STATE_HOME/sevmirror/platform`,
//! else `~/.local/state/sevmirror/platform`. Created on first use with mode 0700. It
//! holds two files, each written atomically (temporary file in the directory, fsync,
//! rename, fsync of the directory) while holding an exclusive `flock` on `.lock`, so two
//! processes creating the identity at once end up with one:
//!
//! - `chip-identity.bin`: the CEK (written once);
//! - `owner-identity.bin`: OCA, PEK and PDH (rewritten by PDH_GEN and FACTORY_RESET, in
//!   one rename, so a crash leaves either the old or the new owner identity).
//!
//! File format: magic `SMPLATF\0`, u32 version (1), u32 kind (1 chip, 2 owner), u32 record
//! count, then per record u32 usage, the 0x824-byte certificate, u32 key length and the
//! private key (PKCS#8 DER), then SHA-256 of everything before. Loading checks all of it
//! plus the chain (signatures, key/certificate agreement); any defect is an
//! [`IdentityError::Invalid`] naming the file, and nothing is rewritten.

use crate::{
    backend::{PlatformCerts, SevError},
    certs::{Algo, CertError, SevCert, Usage, CERT_SIZE},
};
use openssl::{
    bn::BigNumContext,
    ec::{EcGroup, EcKey, EcKeyRef},
    nid::Nid,
    pkey::{PKey, Private},
};
use sha2::{Digest, Sha256};
use std::{
    env,
    ffi::OsString,
    fmt, fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// Name of the file holding the CEK.
pub const CHIP_FILE: &str = "chip-identity.bin";
/// Name of the file holding OCA, PEK and PDH.
pub const OWNER_FILE: &str = "owner-identity.bin";
const LOCK_FILE: &str = ".lock";
const MAGIC: &[u8; 8] = b"SMPLATF\0";
const FORMAT_VERSION: u32 = 1;
const KIND_CHIP: u32 = 1;
const KIND_OWNER: u32 = 2;
const MAX_FILE: u64 = 64 * 1024;
const MAX_KEY: usize = 4096;

/// The platform identity could not be loaded, created or stored.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No directory was given and none can be derived from the environment.
    #[error("no platform state directory: set SEVMIRROR_PLATFORM_DIR, XDG_STATE_HOME or HOME, or pass --platform-dir")]
    NoDefaultDir,
    /// A file-system operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was attempted ("create", "read", "rename", ...).
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A state file is corrupt, truncated, foreign or inconsistent.
    #[error("{}: {why} (the file was left as it is; `sevmirror platform reset` recreates the identity)", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The owner identity exists but the chip identity that signed it does not.
    #[error("{} is missing while {} exists (`sevmirror platform reset` recreates the identity)", missing.display(), OWNER_FILE)]
    Partial {
        /// The missing file.
        missing: PathBuf,
    },
    /// Generating or signing keys failed.
    #[error("generating the platform keys failed")]
    Generate(#[source] CertError),
}

impl IdentityError {
    /// The directory or file the error is about, for [`SevError::State`].
    fn location(&self) -> String {
        match self {
            IdentityError::NoDefaultDir | IdentityError::Generate(_) => String::from("(none)"),
            IdentityError::Io { path, .. } => path.display().to_string(),
            IdentityError::Invalid { file, .. } => file.display().to_string(),
            IdentityError::Partial { missing } => missing.display().to_string(),
        }
    }
}

impl From<IdentityError> for SevError {
    fn from(e: IdentityError) -> SevError {
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why.push_str(": ");
            why.push_str(&s.to_string());
            source = s.source();
        }
        SevError::State {
            dir: e.location(),
            why,
        }
    }
}

/// The default state directory (see the module documentation).
pub fn default_dir() -> Result<PathBuf, IdentityError> {
    default_dir_from(|name| env::var_os(name))
}

/// [`default_dir`] over an arbitrary environment lookup.
fn default_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, IdentityError> {
    let nonempty = |name: &str| var(name).filter(|s| !s.is_empty());
    if let Some(dir) = nonempty("SEVMIRROR_PLATFORM_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(state) = nonempty("XDG_STATE_HOME") {
        let state = PathBuf::from(state);
        // The XDG base directory spec: relative values are invalid and must be ignored.
        if state.is_absolute() {
            return Ok(state.join("sevmirror").join("platform"));
        }
    }
    if let Some(home) = nonempty("HOME") {
        return Ok(PathBuf::from(home).join(".local/state/sevmirror/platform"));
    }
    Err(IdentityError::NoDefaultDir)
}

/// A P-384 key pair and its certificate. `Debug` shows the certificate only.
#[derive(Clone)]
pub(crate) struct KeyPair {
    pub(crate) cert: SevCert,
    pub(crate) key: EcKey<Private>,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair {{ cert: {:?}, key: <redacted> }}", self.cert)
    }
}

fn p384() -> Result<EcGroup, CertError> {
    EcGroup::from_curve_name(Nid::SECP384R1).map_err(CertError::Crypto)
}

impl KeyPair {
    /// A new key with an unsigned certificate.
    fn generate(usage: Usage, algo: Algo) -> Result<KeyPair, CertError> {
        let group = p384()?;
        let key = EcKey::generate(&group).map_err(CertError::Crypto)?;
        let (major, minor) = (crate::emulated::API_MAJOR, crate::emulated::API_MINOR);
        let cert = SevCert::build(usage, algo, (major, minor), &key)?;
        Ok(KeyPair { cert, key })
    }

    /// Signs `other`'s certificate with this key.
    fn sign(&self, other: &mut KeyPair) -> Result<(), CertError> {
        other
            .cert
            .sign(self.cert.usage(), self.cert.algo(), &self.key)
    }

    fn key_der(&self) -> Result<Vec<u8>, CertError> {
        PKey::from_ec_key(self.key.clone())
            .and_then(|k| k.private_key_to_pkcs8())
            .map_err(CertError::Crypto)
    }
}

/// Whether `key`'s public point is the one in `cert`.
fn key_matches(cert: &SevCert, key: &EcKeyRef<Private>) -> Result<bool, CertError> {
    let public = cert.public_key()?;
    let mut ctx = BigNumContext::new().map_err(CertError::Crypto)?;
    public
        .public_key()
        .eq(public.group(), key.public_key(), &mut ctx)
        .map_err(CertError::Crypto)
}

fn new_chip() -> Result<KeyPair, CertError> {
    let mut cek = KeyPair::generate(Usage::CEK, Algo::ECDSA_SHA256)?;
    let signer = cek.clone();
    signer.sign(&mut cek)?;
    Ok(cek)
}

fn new_pdh(pek: &KeyPair) -> Result<KeyPair, CertError> {
    let mut pdh = KeyPair::generate(Usage::PDH, Algo::ECDH_SHA256)?;
    pek.sign(&mut pdh)?;
    Ok(pdh)
}

/// New OCA, PEK and PDH under `cek`.
fn new_owner(cek: &KeyPair) -> Result<[KeyPair; 3], CertError> {
    let mut oca = KeyPair::generate(Usage::OCA, Algo::ECDSA_SHA256)?;
    let signer = oca.clone();
    signer.sign(&mut oca)?;
    let mut pek = KeyPair::generate(Usage::PEK, Algo::ECDSA_SHA256)?;
    oca.sign(&mut pek)?;
    cek.sign(&mut pek)?;
    let pdh = new_pdh(&pek)?;
    Ok([oca, pek, pdh])
}

/// The platform's identity (AMD SEV API spec 0.24 §1.3.3, "Platform Ownership" and
/// appendix C). Persistent when loaded from a directory; in memory only when made with
/// [`PlatformIdentity::generate`].
pub struct PlatformIdentity {
    dir: Option<PathBuf>,
    cek: KeyPair,
    oca: KeyPair,
    pek: KeyPair,
    pdh: KeyPair,
}

impl fmt::Debug for PlatformIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformIdentity")
            .field("dir", &self.dir)
            .field("cek", &self.cek)
            .field("oca", &self.oca)
            .field("pek", &self.pek)
            .field("pdh", &self.pdh)
            .finish()
    }
}

/// An exclusive `flock` on the directory's lock file, released on drop.
struct DirLock {
    _file: fs::File,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn lock_dir(dir: &Path) -> Result<DirLock, IdentityError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err("create", dir))?;
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("open", &path))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| io_err("lock", &path)(io::Error::from(e)))?;
    Ok(DirLock { _file: file })
}

/// Writes `name` in `dir` atomically: temporary file, fsync, rename, fsync of `dir`.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), IdentityError> {
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let target = dir.join(name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all(bytes).map_err(io_err("write", &tmp))?;
    file.sync_all().map_err(io_err("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &target).map_err(io_err("rename into place", &target))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))?;
    Ok(())
}

fn encode(kind: u32, pairs: &[&KeyPair]) -> Result<Vec<u8>, IdentityError> {
    let mut out = Vec::with_capacity(4096 * pairs.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    let count = u32::try_from(pairs.len()).expect("at most three records");
    out.extend_from_slice(&count.to_le_bytes());
    for pair in pairs {
        let der = pair.key_der().map_err(IdentityError::Generate)?;
        out.extend_from_slice(&pair.cert.usage().0.to_le_bytes());
        out.extend_from_slice(pair.cert.as_bytes());
        let len = u32::try_from(der.len()).expect("a P-384 PKCS#8 key is ~185 bytes");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&der);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    Ok(out)
}

/// A bounds-checked reader over a state file.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(format!("truncated at byte {} (needed {n} more)", self.pos));
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Decodes a state file into its key pairs, checking everything but the chain.
fn decode(bytes: &[u8], kind: u32, usages: &[Usage]) -> Result<Vec<KeyPair>, String> {
    if bytes.len() < MAGIC.len() + 12 + 32 {
        return Err(format!(
            "file is {} bytes, too short to be a platform state file",
            bytes.len()
        ));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(String::from(
            "not a sevmirror platform state file (bad magic)",
        ));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return Err(String::from(
            "checksum mismatch (file is corrupt or truncated)",
        ));
    }
    let mut r = Reader {
        data: body,
        pos: MAGIC.len(),
    };
    let version = r.u32()?;
    if version != FORMAT_VERSION {
        return Err(format!(
            "format version {version} is not supported (expected {FORMAT_VERSION})"
        ));
    }
    let found_kind = r.u32()?;
    if found_kind != kind {
        return Err(format!(
            "file kind {found_kind} where kind {kind} was expected"
        ));
    }
    let count = r.u32()?;
    if count as usize != usages.len() {
        return Err(format!(
            "{count} records where {} were expected",
            usages.len()
        ));
    }
    let group = p384().map_err(|e| e.to_string())?;
    let mut pairs = Vec::with_capacity(usages.len());
    for &usage in usages {
        let rec_usage = Usage(r.u32()?);
        if rec_usage != usage {
            return Err(format!("record for {rec_usage} where {usage} was expected"));
        }
        let cert = SevCert::parse_as(r.take(CERT_SIZE)?, usage)
            .map_err(|e| format!("{usage} certificate: {e}"))?;
        let len = r.u32()? as usize;
        if len > MAX_KEY {
            return Err(format!("{usage} key is {len} bytes (at most {MAX_KEY})"));
        }
        let der = r.take(len)?;
        let key = PKey::private_key_from_pkcs8(der)
            .and_then(|k| k.ec_key())
            .map_err(|_| format!("{usage} private key is not a PKCS#8 EC key"))?;
        if key.group().curve_name() != group.curve_name() {
            return Err(format!("{usage} private key is not on P-384"));
        }
        key.check_key()
            .map_err(|_| format!("{usage} private key is invalid"))?;
        match key_matches(&cert, &key) {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "{usage} private key does not match its certificate"
                ))
            }
            Err(e) => return Err(format!("{usage} certificate: {e}")),
        }
        pairs.push(KeyPair { cert, key });
    }
    if r.pos != body.len() {
        return Err(format!(
            "{} unexpected bytes after the records",
            body.len() - r.pos
        ));
    }
    Ok(pairs)
}

fn read_capped(path: &Path) -> Result<Option<Vec<u8>>, IdentityError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let len = file.metadata().map_err(io_err("stat", path))?.len();
    if len > MAX_FILE {
        return Err(IdentityError::Invalid {
            file: path.to_path_buf(),
            why: format!("file is {len} bytes, larger than any platform state file"),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    io::Read::read_to_end(&mut io::Read::take(file, MAX_FILE + 1), &mut bytes)
        .map_err(io_err("read", path))?;
    Ok(Some(bytes))
}

fn load_chip(path: &Path) -> Result<Option<KeyPair>, IdentityError> {
    let Some(bytes) = read_capped(path)? else {
        return Ok(None);
    };
    let invalid = |why: String| IdentityError::Invalid {
        file: path.to_path_buf(),
        why,
    };
    let mut pairs = decode(&bytes, KIND_CHIP, &[Usage::CEK]).map_err(invalid)?;
    let cek = pairs
        .pop()
        .ok_or_else(|| invalid(String::from("no CEK record")))?;
    if cek.cert.algo() != Algo::ECDSA_SHA256 {
        return Err(invalid(String::from("CEK is not an ECDSA-SHA256 key")));
    }
    cek.cert
        .verify_signed_by(&cek.cert)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Some(cek))
}

fn load_owner(path: &Path, cek: &KeyPair) -> Result<Option<[KeyPair; 3]>, IdentityError> {
    let Some(bytes) = read_capped(path)? else {
        return Ok(None);
    };
    let invalid = |why: String| IdentityError::Invalid {
        file: path.to_path_buf(),
        why,
    };
    let pairs =
        decode(&bytes, KIND_OWNER, &[Usage::OCA, Usage::PEK, Usage::PDH]).map_err(invalid)?;
    let [oca, pek, pdh]: [KeyPair; 3] = pairs
        .try_into()
        .map_err(|_| invalid(String::from("wrong number of records")))?;
    let checks = [
        (
            oca.cert.algo() == Algo::ECDSA_SHA256,
            "OCA is not an ECDSA-SHA256 key",
        ),
        (
            pek.cert.algo() == Algo::ECDSA_SHA256,
            "PEK is not an ECDSA-SHA256 key",
        ),
        (
            pdh.cert.algo() == Algo::ECDH_SHA256,
            "PDH is not an ECDH key",
        ),
    ];
    for (ok, why) in checks {
        if !ok {
            return Err(invalid(String::from(why)));
        }
    }
    let chain = [
        (&oca.cert, &oca.cert),
        (&pek.cert, &oca.cert),
        (&pek.cert, &cek.cert),
        (&pdh.cert, &pek.cert),
    ];
    for (subject, signer) in chain {
        subject
            .verify_signed_by(signer)
            .map_err(|e| invalid(format!("{e} (does it belong to this chip identity?)")))?;
    }
    Ok(Some([oca, pek, pdh]))
}

impl PlatformIdentity {
    /// A new identity kept in memory only (tests, throw-away platforms).
    pub fn generate() -> Result<PlatformIdentity, IdentityError> {
        let cek = new_chip().map_err(IdentityError::Generate)?;
        let [oca, pek, pdh] = new_owner(&cek).map_err(IdentityError::Generate)?;
        Ok(PlatformIdentity {
            dir: None,
            cek,
            oca,
            pek,
            pdh,
        })
    }

    /// Loads the identity in `dir`, creating the directory and whatever part of the
    /// identity is missing. A damaged file is an error and stays untouched.
    pub fn load_or_create(dir: &Path) -> Result<PlatformIdentity, IdentityError> {
        let _lock = lock_dir(dir)?;
        let chip_path = dir.join(CHIP_FILE);
        let owner_path = dir.join(OWNER_FILE);
        let cek = match load_chip(&chip_path)? {
            Some(cek) => cek,
            None => {
                if owner_path.exists() {
                    return Err(IdentityError::Partial { missing: chip_path });
                }
                let cek = new_chip().map_err(IdentityError::Generate)?;
                write_atomic(dir, CHIP_FILE, &encode(KIND_CHIP, &[&cek])?)?;
                cek
            }
        };
        let [oca, pek, pdh] = match load_owner(&owner_path, &cek)? {
            Some(owner) => owner,
            None => {
                let owner = new_owner(&cek).map_err(IdentityError::Generate)?;
                write_atomic(
                    dir,
                    OWNER_FILE,
                    &encode(KIND_OWNER, &[&owner[0], &owner[1], &owner[2]])?,
                )?;
                owner
            }
        };
        Ok(PlatformIdentity {
            dir: Some(dir.to_path_buf()),
            cek,
            oca,
            pek,
            pdh,
        })
    }

    /// Recreates the identity in `dir` whatever state it is in (recovery from a damaged
    /// directory): keeps a valid CEK, makes new OCA, PEK and PDH.
    pub fn recreate(dir: &Path) -> Result<PlatformIdentity, IdentityError> {
        let _lock = lock_dir(dir)?;
        let cek = match load_chip(&dir.join(CHIP_FILE)) {
            Ok(Some(cek)) => cek,
            Ok(None) | Err(IdentityError::Invalid { .. }) => {
                let cek = new_chip().map_err(IdentityError::Generate)?;
                write_atomic(dir, CHIP_FILE, &encode(KIND_CHIP, &[&cek])?)?;
                cek
            }
            Err(e) => return Err(e),
        };
        let [oca, pek, pdh] = new_owner(&cek).map_err(IdentityError::Generate)?;
        write_atomic(dir, OWNER_FILE, &encode(KIND_OWNER, &[&oca, &pek, &pdh])?)?;
        Ok(PlatformIdentity {
            dir: Some(dir.to_path_buf()),
            cek,
            oca,
            pek,
            pdh,
        })
    }

    /// The state directory, if the identity is persistent.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The PDH certificate.
    pub fn pdh_cert(&self) -> &SevCert {
        &self.pdh.cert
    }

    /// The PDH private key (the PSP side of LAUNCH_START's ECDH).
    pub(crate) fn pdh_key(&self) -> &EcKeyRef<Private> {
        &self.pdh.key
    }

    /// PDH_CERT_EXPORT: the PDH certificate and the chain PDH ‖ PEK ‖ OCA ‖ CEK, as
    /// `sevctl export` writes `cert_chain.cert`.
    pub fn certs(&self) -> PlatformCerts {
        let mut chain = Vec::with_capacity(4 * CERT_SIZE);
        for pair in [&self.pdh, &self.pek, &self.oca, &self.cek] {
            chain.extend_from_slice(pair.cert.as_bytes());
        }
        PlatformCerts {
            pdh: self.pdh.cert.as_bytes().to_vec(),
            chain,
        }
    }

    fn store_owner(
        &self,
        oca: &KeyPair,
        pek: &KeyPair,
        pdh: &KeyPair,
    ) -> Result<(), IdentityError> {
        if let Some(dir) = &self.dir {
            let _lock = lock_dir(dir)?;
            write_atomic(dir, OWNER_FILE, &encode(KIND_OWNER, &[oca, pek, pdh])?)?;
        }
        Ok(())
    }

    /// PDH_GEN (AMD SEV API spec 0.24 §5.8): a new PDH signed by the PEK. Stored first,
    /// then used; on failure the identity is unchanged.
    pub fn rotate_pdh(&mut self) -> Result<(), IdentityError> {
        let pdh = new_pdh(&self.pek).map_err(IdentityError::Generate)?;
        self.store_owner(&self.oca, &self.pek, &pdh)?;
        self.pdh = pdh;
        Ok(())
    }

    /// The identity part of FACTORY_RESET (AMD SEV API spec 0.24 §5.5): new OCA, PEK and
    /// PDH; the CEK stays. Stored first, then used; on failure the identity is unchanged.
    pub fn factory_reset(&mut self) -> Result<(), IdentityError> {
        let [oca, pek, pdh] = new_owner(&self.cek).map_err(IdentityError::Generate)?;
        self.store_owner(&oca, &pek, &pdh)?;
        self.oca = oca;
        self.pek = pek;
        self.pdh = pdh;
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
