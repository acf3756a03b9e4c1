//! `sevmirror platform`: the SEV platform's status, certificate export, factory reset and
//! PDH rotation, on the hardware (`/dev/sev`) or the emulated platform (identity kept in a
//! state directory, `sev_platform::identity`).
//!
//! The exported files are what `sevctl export` writes: `cert_chain.cert` is PDH ‖ PEK ‖
//! OCA ‖ CEK, four 0x824-byte AMD certificates, and `pdh.cert` is the first of them alone
//! (what `sevctl session` and `sevmirror owner session` read).

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use sev_platform::{
    backend::{BackendKind, PlatformCerts},
    hw::HwBackend,
    identity::{self, IdentityError, PlatformIdentity},
    EmulatedPsp, SevBackend, SevError,
};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Name of the PDH certificate `platform export` writes.
pub const PDH_FILE: &str = "pdh.cert";
/// Name of the certificate chain `platform export` writes.
pub const CHAIN_FILE: &str = "cert_chain.cert";

/// `sevmirror platform`.
#[derive(Args, Debug)]
pub struct PlatformArgs {
    /// What to do with the platform.
    #[command(subcommand)]
    pub command: PlatformCommand,
}

/// The `platform` subcommands.
#[derive(Subcommand, Debug)]
pub enum PlatformCommand {
    /// Print the platform's API version, build id, state and guest count.
    ///
    /// PLATFORM_STATUS. The emulated platform lives in each VMM process: here its state
    /// is that of a fresh process (UNINIT, 0 guests); the guests of a running
    /// `sevmirror run` are counted by that process only.
    Status(StatusArgs),
    /// Write the platform's certificates as `sevctl export` does.
    ///
    /// DIR/pdh.cert (the PDH certificate) and DIR/cert_chain.cert (PDH, PEK, OCA, CEK:
    /// 4 x 2084 bytes, AMD's certificate format). Give pdh.cert to guest
    /// owners (`sevmirror owner session --pdh`, `sevctl session`).
    Export(ExportArgs),
    /// Factory reset: new OCA, PEK and PDH (the CEK stays); repairs a damaged state dir.
    ///
    /// FACTORY_RESET. Sessions made for the old PDH stop working. On a damaged emulated
    /// state directory, recreates the identity and says so.
    Reset(PlatformSelect),
    /// Generate a new PDH.
    ///
    /// PDH_GEN. Sessions made for the old PDH stop working; export the new one.
    RotatePdh(PlatformSelect),
}

/// Which SEV platform a command talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendChoice {
    /// The hardware: /dev/sev.
    Hw,
    /// The software PSP, its identity in --platform-dir.
    Emulated,
}

/// The platform options every `platform` subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct PlatformSelect {
    /// Where the emulated platform keeps its identity (default: $SEVMIRROR_PLATFORM_DIR,
    /// else $XDG_STATE_HOME/sevmirror/platform, else ~/.local/state/sevmirror/platform;
    /// created on first use).
    #[arg(long, value_name = "DIR")]
    pub platform_dir: Option<PathBuf>,

    /// SEV platform: "hw" (/dev/sev) or "emulated" (the software PSP). Default: hw when
    /// /dev/sev exists, otherwise emulated.
    #[arg(long, value_enum, value_name = "hw|emulated")]
    pub sev_backend: Option<BackendChoice>,
}

/// `sevmirror platform status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub platform: PlatformSelect,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `sevmirror platform export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub platform: PlatformSelect,

    /// Directory to write pdh.cert and cert_chain.cert into (created if missing; existing
    /// files are replaced).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
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

impl Platform {
    /// The platform behind the common interface.
    pub fn backend(&self) -> &dyn SevBackend {
        match self {
            Platform::Emulated { psp, .. } => psp.as_ref(),
            Platform::Hw(hw) => hw,
        }
    }

    fn describe(&self) -> String {
        match self {
            Platform::Emulated { dir, .. } => format!("emulated (identity in {})", dir.display()),
            Platform::Hw(_) => format!("hardware ({})", sev_platform::hw::SEV_DEVICE),
        }
    }
}

/// Where the platform is: the backend and, for the emulated one, its state directory.
pub enum Location {
    /// /dev/sev.
    Hw,
    /// The emulated platform in this directory.
    Emulated(PathBuf),
}

impl PlatformSelect {
    /// Resolves the defaults: hw when /dev/sev exists, else emulated (saying so once on
    /// stderr); the emulated platform's directory.
    pub fn locate(&self) -> anyhow::Result<Location> {
        let choice = match self.sev_backend {
            Some(choice) => choice,
            None if HwBackend::available() => BackendChoice::Hw,
            None => BackendChoice::Emulated,
        };
        Ok(match choice {
            BackendChoice::Hw => Location::Hw,
            BackendChoice::Emulated => {
                let dir = match &self.platform_dir {
                    Some(dir) => dir.clone(),
                    None => identity::default_dir().map_err(SevError::from)?,
                };
                if self.sev_backend.is_none() {
                    log::warn!(
                        "no {}: using the emulated SEV platform (identity in {})",
                        sev_platform::hw::SEV_DEVICE,
                        dir.display()
                    );
                }
                Location::Emulated(dir)
            }
        })
    }

    /// Opens the platform (creating the emulated identity on first use).
    pub fn open(&self) -> anyhow::Result<Platform> {
        Ok(match self.locate()? {
            Location::Hw => Platform::Hw(HwBackend::open()?),
            Location::Emulated(dir) => Platform::Emulated {
                psp: Box::new(EmulatedPsp::open(&dir)?),
                dir,
            },
        })
    }
}

/// Runs a `platform` subcommand.
pub fn run(args: &PlatformArgs) -> anyhow::Result<()> {
    match &args.command {
        PlatformCommand::Status(a) => status(a),
        PlatformCommand::Export(a) => export(a),
        PlatformCommand::Reset(a) => reset(a),
        PlatformCommand::RotatePdh(a) => rotate_pdh(a),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let platform = args.platform.open()?;
    let backend = platform.backend();
    let s = backend.platform_status()?;
    let certs = backend.export_certs()?;
    let pdh = hex(&Sha256::digest(&certs.pdh));
    let (kind, dir) = match (&platform, backend.kind()) {
        (Platform::Emulated { dir, .. }, BackendKind::Emulated) => ("emulated", Some(dir)),
        _ => ("hw", None),
    };
    if args.json {
        let v = json!({
            "backend": kind,
            "platform-dir": dir.map(|d| d.display().to_string()),
            "api-major": s.api_major,
            "api-minor": s.api_minor,
            "build-id": s.build,
            "state": s.state.to_string(),
            "guest-count": s.guest_count,
            "owned-externally": s.owned_externally,
            "es": s.es,
            "pdh-sha256": pdh,
        });
        println!("{v}");
        return Ok(());
    }
    let per_process = if kind == "emulated" {
        " (this process only: emulated guests live in the `sevmirror run` that launched them)"
    } else {
        ""
    };
    println!("platform:    {}", platform.describe());
    println!("api version: {}.{}", s.api_major, s.api_minor);
    println!("build id:    {}", s.build);
    println!("state:       {}", s.state);
    println!("guests:      {}{per_process}", s.guest_count);
    println!(
        "owner:       {}",
        if s.owned_externally {
            "external"
        } else {
            "self-owned"
        }
    );
    println!("SEV-ES:      {}", if s.es { "yes" } else { "no" });
    println!("PDH SHA-256: {pdh}");
    Ok(())
}

/// Writes `bytes` to `path`, replacing it.
fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes the two export files into `dir`; returns their paths.
pub fn write_export(dir: &Path, certs: &PlatformCerts) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let pdh = dir.join(PDH_FILE);
    let chain = dir.join(CHAIN_FILE);
    write_file(&pdh, &certs.pdh)?;
    write_file(&chain, &certs.chain)?;
    Ok((pdh, chain))
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let platform = args.platform.open()?;
    let certs = platform.backend().export_certs()?;
    let expected = 4 * sev_platform::certs::CERT_SIZE;
    if certs.pdh.len() != sev_platform::certs::CERT_SIZE || certs.chain.len() != expected {
        bail!(
            "the platform exported a {}-byte PDH and a {}-byte chain, expected {} and {expected}",
            certs.pdh.len(),
            certs.chain.len(),
            sev_platform::certs::CERT_SIZE
        );
    }
    let (pdh, chain) = write_export(&args.dir, &certs)?;
    println!("wrote {} (PDH certificate)", pdh.display());
    println!("wrote {} (PDH, PEK, OCA, CEK)", chain.display());
    Ok(())
}

fn reset(args: &PlatformSelect) -> anyhow::Result<()> {
    let dir = match args.locate()? {
        Location::Hw => {
            HwBackend::open()?.factory_reset()?;
            println!("platform reset: new OCA, PEK and PDH; export the PDH again");
            return Ok(());
        }
        Location::Emulated(dir) => dir,
    };
    match PlatformIdentity::load_or_create(&dir) {
        Ok(id) => {
            EmulatedPsp::new(id).factory_reset()?;
            println!(
                "platform reset: new OCA, PEK and PDH in {} (the CEK stays); export the PDH again",
                dir.display()
            );
        }
        Err(damage @ (IdentityError::Invalid { .. } | IdentityError::Partial { .. })) => {
            let why = match &damage {
                IdentityError::Invalid { file, why } => format!("{}: {why}", file.display()),
                IdentityError::Partial { missing } => format!("{} is missing", missing.display()),
                _ => damage.to_string(),
            };
            PlatformIdentity::recreate(&dir).map_err(SevError::from)?;
            println!(
                "platform state in {} was damaged ({why}); recreated it with a new OCA, PEK and PDH; export the PDH again",
                dir.display()
            );
        }
        Err(e) => return Err(SevError::from(e).into()),
    }
    Ok(())
}

fn rotate_pdh(args: &PlatformSelect) -> anyhow::Result<()> {
    let platform = args.open()?;
    let backend = platform.backend();
    backend.rotate_pdh()?;
    let pdh = backend.export_certs()?.pdh;
    println!(
        "new PDH (SHA-256 {}); sessions made for the old one no longer work: export it again",
        hex(&Sha256::digest(&pdh))
    );
    Ok(())
}
