//! `sevmirror platform`: the SEV platform's status, certificate export, factory reset and
//! PDH rotation, on the hardware (`/dev/sev`) or the emulated platform (identity kept in a
//! state directory, `sev_platform::identity`).
//!
//! The exported files are what `sevctl export` writes: `cert_chain.cert` is PDH ‖ PEK ‖
//! OCA ‖ CEK, four 0x824-byte AMD certificates, and `pdh.cert` is the first of them alone
//! (what `sevctl session` and `sevmirror owner session` read).

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use migration::recovery::hex;
use serde_json::json;
use sev_platform::{
    backend::BackendKind,
    platform::{write_export, Location, Platform, ResetOutcome},
};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

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

impl BackendChoice {
    /// The platform kind it names.
    pub fn kind(self) -> BackendKind {
        match self {
            BackendChoice::Hw => BackendKind::Hardware,
            BackendChoice::Emulated => BackendKind::Emulated,
        }
    }
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

impl PlatformSelect {
    /// Where the platform is (sev_platform `Location::resolve`).
    pub fn locate(&self) -> anyhow::Result<Location> {
        let kind = self.sev_backend.map(BackendChoice::kind);
        Ok(Location::resolve(kind, self.platform_dir.as_deref())?)
    }

    /// Opens the platform (creating the emulated identity on first use).
    pub fn open(&self) -> anyhow::Result<Platform> {
        Ok(self.locate()?.open()?)
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
    let (pdh, chain) = write_export(&args.dir, &certs).with_context(|| {
        format!(
            "cannot create directory {} and write the certificates into it",
            args.dir.display()
        )
    })?;
    println!("wrote {} (PDH certificate)", pdh.display());
    println!("wrote {} (PDH, PEK, OCA, CEK)", chain.display());
    Ok(())
}

fn reset(args: &PlatformSelect) -> anyhow::Result<()> {
    let location = args.locate()?;
    let outcome = location.factory_reset()?;
    let place = match &location {
        Location::Emulated(dir) => format!(" in {}", dir.display()),
        Location::Hw => String::new(),
    };
    match outcome {
        ResetOutcome::Reset => {
            println!("platform reset: new OCA, PEK and PDH{place} (the CEK stays); export the PDH again")
        }
        ResetOutcome::Recreated(why) => println!(
            "platform state{place} was damaged ({why}); recreated it with a new OCA, PEK and PDH; export the PDH again"
        ),
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
