//! `sevmirror owner`: the guest owner's side of an SEV launch, with files interchangeable
//! with `sevctl session`, `sevctl measurement build` and `sevctl secret build`
//! (`sev_platform::owner` does the cryptography).
//!
//! Files:
//! - `session` writes `NAME_godh.b64` and `NAME_session.b64` (base64, for the host:
//!   `run --dh-cert-file`/`--session-file`, QEMU's `sev-guest` properties of the same
//!   names) and `NAME_tek.bin`/`NAME_tik.bin` (16 raw bytes each, mode 0600, the owner's
//!   secrets).
//! - `secret` writes the 52-byte LAUNCH_SECRET packet header and the encrypted secret table
//!   as raw files (`--header-out`, `--secret-out`, as `sevctl secret build` writes them)
//!   and/or prints `{"packet-header": B64, "secret": B64}`, the arguments of QMP
//!   `sev-inject-launch-secret`.
//! - `migration-secret` writes 32 random bytes (mode 0600).
//! - `abort` writes an abort token file (migration::recovery) for a committed session:
//!   the owner's break-glass abort, which `migrate-release` hands to the source's helper.
//!
//! Every file read here is untrusted: sizes are capped before reading and checked after.

use crate::{
    cli::parse_u32,
    measure_cmd::{self, usage_error, EsArgs, Mode},
};
use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand};
use fwtable::Guid;
use migration::recovery::hex;
use serde_json::json;
use sev_platform::owner_files::{read_array, read_capped, read_key, write_file};
use sev_platform::{
    certs::CERT_SIZE,
    crypto::TransportKeys,
    emulated,
    measure::FirmwareVersion,
    owner::{self, Measured, OwnerError},
    secret::MAX_SECRET,
    Policy,
};
use std::{fs, path::PathBuf};

/// `sevmirror owner`.
#[derive(Args, Debug)]
pub struct OwnerArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: OwnerCommand,
}

/// The `owner` subcommands.
#[derive(Subcommand, Debug)]
pub enum OwnerCommand {
    /// Make a launch session for a platform's PDH (as `sevctl session`).
    ///
    /// Writes NAME_godh.b64 and NAME_session.b64 (give them to the host: `sevmirror run --sev
    /// --dh-cert-file … --session-file …`) and NAME_tek.bin, NAME_tik.bin (keep them).
    Session(SessionArgs),
    /// Check a launch measurement against the launch you expect.
    ///
    /// The measurement is what QMP query-sev-launch-measure reports as "data"; it is
    /// checked against the firmware, platform version and policy you expect. Prints
    /// "measurement OK" and exits 0, or explains the mismatch and exits 1.
    Verify(VerifyArgs),
    /// Build a launch secret packet (as `sevctl secret build`).
    ///
    /// A LAUNCH_SECRET packet carrying a secret table, bound to the verified measurement,
    /// for QMP sev-inject-launch-secret.
    Secret(SecretArgs),
    /// Write a fresh 32-byte migration secret.
    ///
    /// Inject the same file into the source and
    /// the target guest (`owner secret --migration-secret FILE`): their migration helpers
    /// authenticate each other with it.
    MigrationSecret(MigrationSecretArgs),
    /// Break-glass: abort a committed migration whose target is gone for good.
    ///
    /// A source whose helper committed the guest to a target that never confirmed stays
    /// stopped ("awaiting-abort"). Normally the target's own abort token releases it. If
    /// the target host is gone, you — the guest owner — may decide that the target never
    /// ran the guest and release the source yourself: this writes a token (an HMAC under
    /// a key derived from your migration secret over the session's transcript hash) that
    /// the source's helper accepts for that one session (`migrate-release`). If the target
    /// did run the guest after all, the guest then runs twice: decide only when you know.
    Abort(AbortArgs),
}

/// `sevmirror owner session`.
#[derive(Args, Debug)]
pub struct SessionArgs {
    /// The platform's PDH certificate (`platform export`'s pdh.cert, or its
    /// cert_chain.cert, whose first certificate is the PDH; `sevctl export` output works).
    #[arg(long, value_name = "FILE")]
    pub pdh: PathBuf,

    /// Guest policy (AMD SEV API §3; decimal or 0x hex), e.g. 0x1 (no debugging).
    #[arg(long, value_name = "N", value_parser = parse_u32)]
    pub policy: u32,

    /// Directory for the four files (created if missing; existing files are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// File-name prefix, as `sevctl session --name`.
    #[arg(long, value_name = "NAME", default_value = owner::DEFAULT_NAME)]
    pub name: String,
}

/// `sevmirror owner verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The session's TIK (NAME_tik.bin: 16 raw bytes).
    #[arg(long, value_name = "FILE")]
    pub tik: PathBuf,

    /// The guest policy the session was made for (decimal or 0x hex).
    #[arg(long, value_name = "N", value_parser = parse_u32)]
    pub policy: u32,

    /// The 48-byte LAUNCH_MEASURE blob, base64: `sevmirror ctl --api S
    /// query-sev-launch-measure` prints it as "data".
    #[arg(long, value_name = "BASE64")]
    pub measurement: String,

    /// The firmware image the guest should have been launched with (default: the
    /// firmware embedded in sevmirror, what `run` boots without --firmware, with the
    /// embedded guest OS unless --kernel or --no-kernel says otherwise).
    #[arg(long, value_name = "FILE", conflicts_with = "digest")]
    pub firmware: Option<PathBuf>,

    /// The expected launch digest instead of a firmware image: 64 hex digits, as
    /// `sevmirror measure` prints it.
    #[arg(long, value_name = "HEX", value_parser = parse_digest, conflicts_with = "kernel")]
    pub digest: Option<[u8; 32]>,

    /// The kernel, initrd and command line the guest should have been booted with
    /// (measured direct boot: the digest covers the firmware's SEV hashes table).
    #[command(flatten)]
    pub kernel: crate::measure_cmd::KernelArgs,

    /// The platform's API major version (QMP query-sev "api-major"; default: the emulated
    /// platform's).
    #[arg(long, value_name = "M", value_parser = parse_u8, default_value_t = emulated::API_MAJOR)]
    pub api_major: u8,

    /// The platform's API minor version (query-sev "api-minor").
    #[arg(long, value_name = "N", value_parser = parse_u8, default_value_t = emulated::API_MINOR)]
    pub api_minor: u8,

    /// The platform's firmware build id (query-sev "build-id").
    #[arg(long, value_name = "B", value_parser = parse_u8, default_value_t = emulated::BUILD)]
    pub build: u8,

    /// The launch type, "sev" or "sev-es" (default: what the policy's ES bit says).
    #[arg(long, value_name = "sev|sev-es", value_parser = crate::measure_cmd::parse_mode)]
    pub mode: Option<Mode>,

    /// The SEV-ES options, as for `sevmirror measure`.
    #[command(flatten)]
    pub es: EsArgs,
}

/// One `--secret GUID:FILE`.
#[derive(Clone, Debug)]
pub struct SecretSpec {
    /// The entry's GUID.
    pub guid: Guid,
    /// The file holding its data.
    pub file: PathBuf,
}

/// `sevmirror owner secret`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("payload").required(true).multiple(true).args(["secrets", "migration_secret"])))]
pub struct SecretArgs {
    /// The session's TEK (NAME_tek.bin: 16 raw bytes).
    #[arg(long, value_name = "FILE")]
    pub tek: PathBuf,

    /// The session's TIK (NAME_tik.bin: 16 raw bytes).
    #[arg(long, value_name = "FILE")]
    pub tik: PathBuf,

    /// The launch measurement, base64, as verified with `owner verify` (the packet is
    /// bound to it and the platform refuses it for any other launch).
    #[arg(long, value_name = "BASE64")]
    pub measurement: String,

    /// A secret table entry: its GUID and the file with its data (repeatable; the guest
    /// sees the entries in this order).
    #[arg(long = "secret", value_name = "GUID:FILE", value_parser = parse_secret_spec)]
    pub secrets: Vec<SecretSpec>,

    /// The migration secret (exactly 32 bytes, see `owner migration-secret`), added as the
    /// entry dd785603-80b4-4e8d-abcf-5b10f9a32dde the migration helper reads.
    #[arg(long, value_name = "FILE")]
    pub migration_secret: Option<PathBuf>,

    /// Write the 52-byte packet header here, raw (as `sevctl secret build` writes it).
    #[arg(long, value_name = "FILE", requires = "secret_out")]
    pub header_out: Option<PathBuf>,

    /// Write the encrypted secret table here, raw (as `sevctl secret build` writes it).
    #[arg(long, value_name = "FILE", requires = "header_out")]
    pub secret_out: Option<PathBuf>,

    /// Print {"packet-header": B64, "secret": B64}, the arguments of `sevmirror ctl --api S
    /// sev-inject-launch-secret` (also the default output when no files are written).
    #[arg(long)]
    pub json: bool,
}

/// `sevmirror owner migration-secret`.
#[derive(Args, Debug)]
pub struct MigrationSecretArgs {
    /// Where to write the 32 random bytes (mode 0600; an existing file is not replaced).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `sevmirror owner abort`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("which").required(true).args(["session", "commit_file"])))]
pub struct AbortArgs {
    /// The migration secret you injected into the source and the target.
    #[arg(long, value_name = "FILE")]
    pub migration_secret: PathBuf,
    /// The committed session's transcript hash, 64 hex digits (the source's
    /// `query-migrate` shows it as "session").
    #[arg(long, value_name = "HEX")]
    pub session: Option<String>,
    /// Or the source's commit file, which names the session.
    #[arg(long, value_name = "FILE")]
    pub commit_file: Option<PathBuf>,
    /// Where to write the abort token file (give it to the source host: QMP
    /// `migrate-release {"token-file": …}`).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Your decision, stated: the target never ran the guest (it is gone and its disk
    /// will never run it). Without it nothing is written.
    #[arg(long)]
    pub target_never_ran: bool,
}

/// Runs an `owner` subcommand.
pub fn run(args: &OwnerArgs) -> anyhow::Result<()> {
    match &args.command {
        OwnerCommand::Session(a) => session(a),
        OwnerCommand::Verify(a) => verify(a),
        OwnerCommand::Secret(a) => secret(a),
        OwnerCommand::MigrationSecret(a) => migration_secret(a),
        OwnerCommand::Abort(a) => abort(a),
    }
}

/// A u8 in decimal or 0x hex (sevctl's "int or hex").
pub fn parse_u8(s: &str) -> Result<u8, String> {
    let v = parse_u32(s)?;
    u8::try_from(v).map_err(|_| format!("{s:?} is larger than 255"))
}

/// A launch digest: 64 hex digits.
pub fn parse_digest(s: &str) -> Result<[u8; 32], String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not a launch digest: expected 64 hex digits");
    if t.len() != 64 || !t.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = t.get(2 * i..2 * i + 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// `GUID:FILE`.
pub fn parse_secret_spec(s: &str) -> Result<SecretSpec, String> {
    let usage = "expected GUID:FILE, e.g. 736869e5-84f0-4973-92ec-06879ce3da0b:disk.key";
    let (guid, file) = s.split_once(':').ok_or_else(|| format!("{s:?}: {usage}"))?;
    let guid =
        Guid::try_parse(guid.trim()).map_err(|_| format!("{guid:?} is not a GUID ({usage})"))?;
    if file.is_empty() {
        return Err(format!("{s:?} names no file ({usage})"));
    }
    Ok(SecretSpec {
        guid,
        file: PathBuf::from(file),
    })
}

fn session(args: &SessionArgs) -> anyhow::Result<()> {
    if args.name.is_empty() || args.name.contains('/') {
        bail!(
            "--name {:?}: expected a file-name prefix without '/'",
            args.name
        );
    }
    let raw = read_capped("PDH certificate", &args.pdh, 4 * CERT_SIZE)?;
    // sevctl reads the first certificate of whatever file it is given; we accept the two
    // files `platform export` (and `sevctl export`) write.
    let pdh = match raw.len() {
        CERT_SIZE => &raw[..],
        n if n == 4 * CERT_SIZE => &raw[..CERT_SIZE],
        n => bail!(
            "{} is {n} bytes: expected a PDH certificate ({CERT_SIZE} bytes, pdh.cert) or a certificate chain ({} bytes, cert_chain.cert)",
            args.pdh.display(),
            4 * CERT_SIZE
        ),
    };
    let s = owner::session(pdh, Policy(args.policy))
        .with_context(|| format!("cannot make a session for {}", args.pdh.display()))?;
    fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create directory {}", args.out.display()))?;
    let files = s.write_files(&args.out, &args.name)?;
    println!(
        "wrote {} (for the host: --dh-cert-file)",
        files.godh.display()
    );
    println!(
        "wrote {} (for the host: --session-file)",
        files.session.display()
    );
    println!("wrote {} (TEK: keep it secret)", files.tek.display());
    println!("wrote {} (TIK: keep it secret)", files.tik.display());
    Ok(())
}

fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let tik = read_key("TIK", &args.tik)?;
    let policy = Policy(args.policy);
    let policy_mode = if policy.has(Policy::ES) {
        Mode::SevEs
    } else {
        Mode::Sev
    };
    let mode = args.mode.unwrap_or(policy_mode);
    if mode != policy_mode {
        usage_error(&format!(
            "--mode {} does not fit policy {policy}: the ES bit (0x4) decides whether the launch is SEV-ES",
            mode.name()
        ));
    }
    let image;
    let (digest, what) = match (&args.digest, &args.firmware) {
        (Some(d), _) => {
            if measure_cmd::launch_spec(Mode::Sev, &args.es).is_err() {
                usage_error("--digest is the whole launch digest: the SEV-ES options only apply to a firmware image");
            }
            (*d, String::from("the given digest"))
        }
        (None, firmware) => {
            let spec = measure_cmd::launch_spec(mode, &args.es).unwrap_or_else(|m| usage_error(&m));
            let (bytes, mut what) = match firmware {
                Some(path) => {
                    image = vmm::measure::read_firmware(path)?;
                    (image.as_slice(), path.display().to_string())
                }
                None => (firmware_image::IMAGE, String::from("the embedded firmware")),
            };
            let computed = measure_cmd::compute(bytes, &spec, &args.kernel, firmware.is_none())
                .with_context(|| format!("cannot compute the launch digest of {what}"))?;
            if let Some(dir) = &args.es.dump_vmsa {
                vmm::measure::dump_vmsas(dir, &computed.vmsas)?;
            }
            if let Some(kernel) = &args.kernel.kernel {
                what = format!("{what} with kernel {}", kernel.display());
            } else if args.kernel.embedded_os(firmware.is_none()) {
                what = format!("{what} booting the embedded guest OS");
            }
            if let Some(vcpus) = spec.describe_vcpus() {
                what = format!("{what} with {vcpus}");
            }
            (computed.digest, what)
        }
    };
    let fw = FirmwareVersion {
        api_major: args.api_major,
        api_minor: args.api_minor,
        build: args.build,
    };
    let expected = format!(
        "launch digest {} ({what}), API {}.{} build {}, policy {:#x}",
        hex(&digest),
        fw.api_major,
        fw.api_minor,
        fw.build,
        policy.0
    );
    match owner::verify(Measured::Digest(digest), fw, policy, &tik, &args.measurement) {
        Ok(_) => {
            println!("measurement OK: {expected}");
            Ok(())
        }
        Err(OwnerError::Mismatch(_)) => bail!(
            "measurement MISMATCH: expected {expected} with this TIK; the firmware, policy, platform version or session differ: do not send secrets to this guest"
        ),
        Err(e) => Err(e).context("cannot check the measurement"),
    }
}

fn secret(args: &SecretArgs) -> anyhow::Result<()> {
    let tek = read_key("TEK", &args.tek)?;
    let tik = read_key("TIK", &args.tik)?;
    let keys = TransportKeys::new(tek, tik);
    let measurement = owner::decode_measurement(&args.measurement)?;
    let migration_guid = Guid::from_bytes(helper_abi::MIGRATION_SECRET_GUID);
    let mut entries: Vec<(Guid, Vec<u8>)> = Vec::new();
    let mut total = 0usize;
    let specs = args
        .secrets
        .iter()
        .cloned()
        .chain(args.migration_secret.iter().map(|file| SecretSpec {
            guid: migration_guid,
            file: file.clone(),
        }));
    for spec in specs {
        if entries.iter().any(|(g, _)| *g == spec.guid) {
            bail!("secret {} is given twice", spec.guid);
        }
        let data = read_capped(
            &format!("secret {}", spec.guid),
            &spec.file,
            MAX_SECRET - total,
        )?;
        if spec.guid == migration_guid && data.len() != helper_abi::MIGRATION_SECRET_LEN {
            bail!(
                "migration secret {} is {} bytes, expected {} (make one with `sevmirror owner migration-secret`)",
                spec.file.display(),
                data.len(),
                helper_abi::MIGRATION_SECRET_LEN
            );
        }
        total += data.len();
        entries.push((spec.guid, data));
    }
    let packet = owner::secret(&keys, &measurement, &entries)?;
    if packet.ciphertext.len() > MAX_SECRET {
        bail!(
            "the secret table is {} bytes, more than the {MAX_SECRET} bytes LAUNCH_SECRET takes",
            packet.ciphertext.len()
        );
    }
    if let (Some(header), Some(payload)) = (&args.header_out, &args.secret_out) {
        write_file(header, &packet.header_bytes(), 0o644, false)?;
        write_file(payload, &packet.ciphertext, 0o644, false)?;
        if !args.json {
            println!(
                "wrote {} (packet header, {} bytes)",
                header.display(),
                packet.header_bytes().len()
            );
            println!(
                "wrote {} (secret, {} bytes)",
                payload.display(),
                packet.ciphertext.len()
            );
        }
    }
    if args.json || args.header_out.is_none() {
        println!(
            "{}",
            json!({"packet-header": packet.header_b64(), "secret": packet.secret_b64()})
        );
    }
    Ok(())
}

fn migration_secret(args: &MigrationSecretArgs) -> anyhow::Result<()> {
    if args.out.symlink_metadata().is_ok() {
        bail!(
            "{} exists; a migration secret is never replaced (remove the file first if you mean to)",
            args.out.display()
        );
    }
    let secret = sev_platform::crypto::random_bytes::<{ helper_abi::MIGRATION_SECRET_LEN }>()
        .context("no random bytes for the migration secret")?;
    write_file(&args.out, &secret, 0o600, true)?;
    println!(
        "wrote {} (32 random bytes: inject it into the source and the target with `owner secret --migration-secret`; keep it secret)",
        args.out.display()
    );
    Ok(())
}

fn abort(args: &AbortArgs) -> anyhow::Result<()> {
    use migration::recovery::{parse_transcript, AbortTokenFile, CommitFile, TokenOrigin};
    if !args.target_never_ran {
        usage_error(
            "owner abort releases a committed source only on your word that the target never ran the guest: say so with --target-never-ran",
        );
    }
    let transcript = match (&args.session, &args.commit_file) {
        (Some(text), _) => match parse_transcript(text) {
            Some(t) => t,
            None => usage_error(&format!(
                "--session {text:?}: expected the 64 hex digits query-migrate shows as \"session\""
            )),
        },
        (None, Some(path)) => {
            let bytes = read_capped("commit file", path, CommitFile::SIZE)?;
            CommitFile::decode(&bytes)
                .with_context(|| format!("{} is not a commit file", path.display()))?
                .transcript
        }
        (None, None) => usage_error("--session or --commit-file is needed"),
    };
    let secret = read_array::<{ helper_abi::MIGRATION_SECRET_LEN }>(
        "migration secret",
        &args.migration_secret,
    )?;
    let file = AbortTokenFile {
        origin: TokenOrigin::Owner,
        transcript,
        tag: mirror_helper::keys::owner_abort_token(&secret, &transcript),
    };
    write_file(&args.out, &file.encode(), 0o644, false)?;
    println!(
        "wrote {}: the guest owner's abort of session {} (hand it to the source: migrate-release)",
        args.out.display(),
        hex(&transcript)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_64_hex_digits() {
        let d = parse_digest(&"ab".repeat(32)).unwrap();
        assert_eq!(d, [0xab; 32]);
        assert!(parse_digest(&"ab".repeat(31)).is_err());
        assert!(parse_digest(&"zz".repeat(32)).is_err());
        assert!(parse_digest(&"é".repeat(32)).is_err());
        assert!(parse_digest(&format!("+{}", "a".repeat(63))).is_err());
    }

    #[test]
    fn secret_specs_need_a_guid_and_a_file() {
        let s = parse_secret_spec("dd785603-80b4-4e8d-abcf-5b10f9a32dde:/tmp/x:y").unwrap();
        assert_eq!(s.guid.as_bytes(), &helper_abi::MIGRATION_SECRET_GUID);
        assert_eq!(s.file, PathBuf::from("/tmp/x:y"));
        for bad in [
            "nocolon",
            "not-a-guid:/x",
            "dd785603-80b4-4e8d-abcf-5b10f9a32dde:",
        ] {
            assert!(parse_secret_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn u8_values_take_hex_and_refuse_overflow() {
        assert_eq!(parse_u8("0x18"), Ok(24));
        assert_eq!(parse_u8("24"), Ok(24));
        assert!(parse_u8("256").is_err());
        assert!(parse_u8("-1").is_err());
    }
}
