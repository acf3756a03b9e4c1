//! Which SEV platform a command talks to, and opening it: `/dev/sev`, or the emulated PSP
//! with its identity in a state directory. One rule for every command that needs one
//! (`run --sev`, `platform …`): hardware when `/dev/sev` exists, unless told otherwise.

use crate::{
    backend::{BackendKind, PlatformCerts},
    hw::HwBackend,
    identity::{self, IdentityError, PlatformIdentity},
    EmulatedPsp, SevBackend, SevError,
};
use std::path::{Path, PathBuf};

/// Name of the PDH certificate an export writes (what `sevctl session` reads).
pub const PDH_FILE: &str = "pdh.cert";
/// Name of the certificate chain an export writes: PDH ‖ PEK ‖ OCA ‖ CEK.
pub const CHAIN_FILE: &str = "cert_chain.cert";

/// Where the platform is: the backend and, for the emulated one, its state directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// /dev/sev.
    Hw,
    /// The emulated platform with its identity in this directory.
    Emulated(PathBuf),
}

/// An opened platform.
pub enum Platform {
    /// The software PSP and its state directory.
    Emulated {
        /// The PSP.
        psp: Box<EmulatedPsp>,
        /// Its state directory.
        dir: PathBuf,
    },
    /// /dev/sev.
    Hw(HwBackend),
}

/// What a factory reset did.
#[derive(Debug)]
pub enum ResetOutcome {
    /// New OCA, PEK and PDH (the CEK stays).
    Reset,
    /// The emulated state was damaged (the reason) and was made anew.
    Recreated(String),
}

impl Location {
    /// Resolves the defaults: `kind`, else hardware when /dev/sev exists, else the
    /// emulated platform in `dir` or the default state directory (saying so on stderr
    /// when it was not asked for).
    pub fn resolve(kind: Option<BackendKind>, dir: Option<&Path>) -> Result<Location, SevError> {
        let asked = kind.is_some();
        let kind = kind.unwrap_or(if HwBackend::available() {
            BackendKind::Hardware
        } else {
            BackendKind::Emulated
        });
        Ok(match kind {
            BackendKind::Hardware => Location::Hw,
            BackendKind::Emulated => {
                let dir = match dir {
                    Some(d) => d.to_path_buf(),
                    None => identity::default_dir()?,
                };
                if !asked {
                    log::warn!(
                        "no {}: using the emulated SEV platform (identity in {})",
                        crate::hw::SEV_DEVICE,
                        dir.display()
                    );
                }
                Location::Emulated(dir)
            }
        })
    }

    /// Opens the platform (creating the emulated identity on first use).
    pub fn open(self) -> Result<Platform, SevError> {
        Ok(match self {
            Location::Hw => Platform::Hw(HwBackend::open()?),
            Location::Emulated(dir) => Platform::Emulated {
                psp: Box::new(EmulatedPsp::open(&dir)?),
                dir,
            },
        })
    }

    /// FACTORY_RESET. On the emulated platform a damaged state directory (files invalid or
    /// missing) is made anew instead, with the reason in the outcome.
    pub fn factory_reset(&self) -> Result<ResetOutcome, SevError> {
        let dir = match self {
            Location::Hw => {
                HwBackend::open()?.factory_reset()?;
                return Ok(ResetOutcome::Reset);
            }
            Location::Emulated(dir) => dir,
        };
        match PlatformIdentity::load_or_create(dir) {
            Ok(id) => {
                EmulatedPsp::new(id).factory_reset()?;
                Ok(ResetOutcome::Reset)
            }
            Err(damage @ (IdentityError::Invalid { .. } | IdentityError::Partial { .. })) => {
                let why = match &damage {
                    IdentityError::Invalid { file, why } => format!("{}: {why}", file.display()),
                    IdentityError::Partial { missing } => {
                        format!("{} is missing", missing.display())
                    }
                    _ => damage.to_string(),
                };
                PlatformIdentity::recreate(dir)?;
                Ok(ResetOutcome::Recreated(why))
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Platform {
    /// The platform behind the common interface.
    pub fn backend(&self) -> &dyn SevBackend {
        match self {
            Platform::Emulated { psp, .. } => psp.as_ref(),
            Platform::Hw(hw) => hw,
        }
    }

    /// The platform as a shared backend (what a VM launch holds).
    pub fn into_shared(self) -> std::sync::Arc<dyn SevBackend> {
        match self {
            Platform::Emulated { psp, .. } => std::sync::Arc::from(psp as Box<dyn SevBackend>),
            Platform::Hw(hw) => std::sync::Arc::new(hw),
        }
    }

    /// One line for people: which platform, and where its identity lives.
    pub fn describe(&self) -> String {
        match self {
            Platform::Emulated { dir, .. } => format!("emulated (identity in {})", dir.display()),
            Platform::Hw(_) => format!("hardware ({})", crate::hw::SEV_DEVICE),
        }
    }
}

/// Writes [`PDH_FILE`] and [`CHAIN_FILE`] into `dir` (created if missing, files
/// replaced), as `sevctl export` does; returns their paths.
pub fn write_export(dir: &Path, certs: &PlatformCerts) -> std::io::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let pdh = dir.join(PDH_FILE);
    let chain = dir.join(CHAIN_FILE);
    std::fs::write(&pdh, &certs.pdh)?;
    std::fs::write(&chain, &certs.chain)?;
    Ok((pdh, chain))
}
