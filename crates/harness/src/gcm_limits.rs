//! The AES-256-GCM limits the benchmarks print beside their rows: the helper's own record
//! code (`mirror_helper::crypto::RecordKey`) run by each kernel `record-gcm` carries, in
//! this process on one core, and `openssl speed -evp aes-256-gcm` on the same machine.
//!
//! Both seal and open 4 KiB records, the helper's page size. The in-process figures are
//! an upper bound for one helper vCPU: the mirror adds its exits, the window and the
//! page-state walk. `cargo bench -p record-gcm` calls [`openssl_speed`] too.

use helper_abi::record::{Kind, RecordHeader};
use mirror_helper::crypto::RecordKey;
use record_gcm::Kernel;
use serde::Serialize;
use std::{
    process::Command,
    time::{Duration, Instant},
};

/// Bytes of one record's payload: a guest page.
pub const RECORD_BYTES: usize = 4096;

/// Records sealed, then opened, per timed step (1 MiB of payload: what one helper window
/// holds at the helper's largest batch).
const BATCH: usize = 256;

const GIB: f64 = (1u64 << 30) as f64;

/// Why a limit could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum GcmLimitError {
    /// `record-gcm` refused the kernel (this CPU or its OS state lacks something).
    #[error("kernel {kernel} cannot run here")]
    Kernel {
        /// The kernel.
        kernel: &'static str,
        /// Why.
        #[source]
        source: record_gcm::Error,
    },
    /// A record the kernel had just sealed did not open: the kernel is broken.
    #[error("kernel {0}: a record it sealed did not open")]
    Roundtrip(&'static str),
    /// `openssl` could not be started (not installed?).
    #[error("cannot run openssl (Debian: apt-get install openssl)")]
    OpensslNotRun(#[source] std::io::Error),
    /// `openssl speed` exited with an error.
    #[error("openssl speed failed ({status}): {stderr}")]
    OpensslFailed {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The end of what it printed on stderr.
        stderr: String,
    },
    /// `openssl speed -mr` printed no AES-256-GCM rate.
    #[error("openssl speed printed no AES-256-GCM rate (looked for a +F: line)")]
    OpensslNoRate,
    /// The rate line did not hold a positive number.
    #[error("openssl speed: unreadable rate line {0:?}")]
    OpensslRate(String),
}

/// Seal and open rates of one kernel through the helper's record code.
#[derive(Clone, Debug, Serialize)]
pub struct KernelRate {
    /// `record-gcm`'s name for the kernel.
    pub kernel: &'static str,
    /// Whether it is the one the helper picks on this CPU (`Kernel::best()`).
    pub best: bool,
    /// GiB/s of payload sealed, one core (None: not run here).
    pub seal_gib_s: Option<f64>,
    /// GiB/s of payload opened (tag checked), one core.
    pub open_gib_s: Option<f64>,
    /// Why it was not run.
    pub not_run: Option<String>,
}

/// `openssl speed -evp aes-256-gcm` for 4 KiB buffers.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct OpensslRate {
    /// GiB/s encrypting.
    pub seal_gib_s: f64,
    /// GiB/s decrypting (`-decrypt`).
    pub open_gib_s: f64,
}

/// Every kernel's rates (the ones this CPU lacks say why), fastest kernel first;
/// `budget` is spent per kernel and direction, the best of three slices kept (the
/// machine is shared).
pub fn kernel_rates(budget: Duration) -> Vec<KernelRate> {
    let best = Kernel::best();
    Kernel::ALL
        .into_iter()
        .map(|kernel| {
            let measured = match kernel.missing() {
                Some(why) => Err(why.to_string()),
                None => record_rates(kernel, budget).map_err(|e| crate::error_chain(&e)),
            };
            let (seal, open, not_run) = match measured {
                Ok((s, o)) => (Some(s), Some(o), None),
                Err(why) => (None, None, Some(why)),
            };
            KernelRate {
                kernel: kernel.name(),
                best: kernel == best,
                seal_gib_s: seal,
                open_gib_s: open,
                not_run,
            }
        })
        .collect()
}

/// The kernel the helper picks here, among `rates`.
pub fn best(rates: &[KernelRate]) -> Option<&KernelRate> {
    rates.iter().find(|r| r.best && r.seal_gib_s.is_some())
}

/// Seal and open rates (GiB/s of payload, one core) of `kernel` through `RecordKey`:
/// batches of 256 page records sealed, then opened, each pass timed on its own.
pub fn record_rates(kernel: Kernel, budget: Duration) -> Result<(f64, f64), GcmLimitError> {
    let key = RecordKey::with_kernel(&[7; 32], [1; 16], kernel).map_err(|source| {
        GcmLimitError::Kernel {
            kernel: kernel.name(),
            source,
        }
    })?;
    let header = |seq: u64| RecordHeader {
        kind: Kind::PAGE,
        lane: 0,
        flags: 0,
        round: 1,
        gpa: (seq % (1 << 18)) * RECORD_BYTES as u64,
        version: 1,
        len: RECORD_BYTES as u32,
        seq,
    };
    let mut pages = vec![[0x5au8; RECORD_BYTES]; BATCH];
    let mut tags = vec![[0u8; 16]; BATCH];
    let slice = budget / 3;
    let (mut best_seal, mut best_open) = (0f64, 0f64);
    let mut seq = 0u64;
    for _ in 0..3 {
        let (mut sealing, mut opening, mut records) = (Duration::ZERO, Duration::ZERO, 0u64);
        let start = Instant::now();
        while start.elapsed() < slice || records == 0 {
            let t0 = Instant::now();
            for (i, (page, tag)) in pages.iter_mut().zip(tags.iter_mut()).enumerate() {
                *tag = key.seal(&header(seq + i as u64), page);
            }
            let t1 = Instant::now();
            for (i, (page, tag)) in pages.iter_mut().zip(tags.iter()).enumerate() {
                key.open(&header(seq + i as u64), page, tag)
                    .map_err(|_| GcmLimitError::Roundtrip(kernel.name()))?;
            }
            opening += t1.elapsed();
            sealing += t1 - t0;
            seq += BATCH as u64;
            records += BATCH as u64;
        }
        let bytes = (records * RECORD_BYTES as u64) as f64;
        best_seal = best_seal.max(bytes / sealing.as_secs_f64().max(1e-9) / GIB);
        best_open = best_open.max(bytes / opening.as_secs_f64().max(1e-9) / GIB);
    }
    Ok((best_seal, best_open))
}

/// Which way `openssl speed` runs the cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Encrypt (seal): `openssl speed`'s default.
    Seal,
    /// Decrypt (open): `-decrypt`.
    Open,
}

/// `openssl speed -evp aes-256-gcm -bytes LEN -seconds S -mr` (one process, one core):
/// bytes per second.
pub fn openssl_speed(len: usize, seconds: u32, direction: Direction) -> Result<f64, GcmLimitError> {
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-evp", "aes-256-gcm", "-mr", "-bytes"])
        .arg(len.to_string())
        .args(["-seconds", &seconds.max(1).to_string()]);
    if direction == Direction::Open {
        cmd.arg("-decrypt");
    }
    let out = cmd.output().map_err(GcmLimitError::OpensslNotRun)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(GcmLimitError::OpensslFailed {
            status: out.status,
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
        });
    }
    parse_openssl_speed(&String::from_utf8_lossy(&out.stdout))
}

/// Both directions of [`openssl_speed`] for 4 KiB buffers, in GiB/s.
pub fn openssl_rate(seconds: u32) -> Result<OpensslRate, GcmLimitError> {
    let seal = openssl_speed(RECORD_BYTES, seconds, Direction::Seal)?;
    let open = openssl_speed(RECORD_BYTES, seconds, Direction::Open)?;
    Ok(OpensslRate {
        seal_gib_s: seal / GIB,
        open_gib_s: open / GIB,
    })
}

/// The AES-256-GCM rate in bytes per second from `openssl speed -mr`'s output, whose
/// result line is `+F:<index>:AES-256-GCM:<bytes/s for each -bytes size>`; with one size
/// given, the last field.
pub fn parse_openssl_speed(stdout: &str) -> Result<f64, GcmLimitError> {
    let line = stdout
        .lines()
        .map(str::trim)
        .find(|l| {
            let mut f = l.split(':');
            f.next() == Some("+F")
                && f.nth(1)
                    .is_some_and(|n| n.eq_ignore_ascii_case("AES-256-GCM"))
        })
        .ok_or(GcmLimitError::OpensslNoRate)?;
    line.rsplit(':')
        .next()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| GcmLimitError::OpensslRate(line.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl speed -evp aes-256-gcm -bytes 4096 -seconds 1 -mr` of OpenSSL 3.0.22.
    const MR: &str = "+H:4096\n+F:25:AES-256-GCM:2837848064.00\n";

    #[test]
    fn openssl_machine_readable_rates_are_read() {
        assert_eq!(parse_openssl_speed(MR).unwrap(), 2_837_848_064.0);
        // Several sizes: the last one is the size asked for with one -bytes.
        let two = "+H:16:4096\n+F:22:AES-256-GCM:1000.00:2000.50\n";
        assert_eq!(parse_openssl_speed(two).unwrap(), 2000.5);
        // Lower-case names and surrounding noise.
        let noisy = "Doing x\r\n  +F:3:aes-256-gcm:42.0  \r\nversion: 3\n";
        assert_eq!(parse_openssl_speed(noisy).unwrap(), 42.0);
    }

    #[test]
    fn openssl_output_without_a_usable_rate_is_an_error() {
        for text in [
            "",
            // The human-readable table (no -mr) is not what we ask for.
            "type 4096 bytes\nAES-256-GCM    2674958.34k\n",
            "+F:25:AES-128-GCM:100.0\n",
        ] {
            assert!(
                matches!(parse_openssl_speed(text), Err(GcmLimitError::OpensslNoRate)),
                "{text:?}"
            );
        }
        for text in [
            "+F:25:AES-256-GCM:fast\n",
            "+F:25:AES-256-GCM:0.00\n",
            "+F:25:AES-256-GCM:-5\n",
            "+F:25:AES-256-GCM:inf\n",
        ] {
            assert!(
                matches!(
                    parse_openssl_speed(text),
                    Err(GcmLimitError::OpensslRate(_))
                ),
                "{text:?}"
            );
        }
    }

    #[test]
    fn every_kernel_is_measured_or_says_why_not() {
        let rates = kernel_rates(Duration::from_millis(3));
        assert_eq!(rates.len(), Kernel::ALL.len());
        for r in &rates {
            match (&r.not_run, r.seal_gib_s, r.open_gib_s) {
                (None, Some(s), Some(o)) => assert!(s > 0.0 && o > 0.0, "{r:?}"),
                (Some(why), None, None) => assert!(!why.is_empty()),
                _ => panic!("half a measurement: {r:?}"),
            }
        }
        // The portable kernel runs everywhere, and the helper's choice is measured.
        assert!(rates
            .iter()
            .any(|r| r.kernel == "portable" && r.seal_gib_s.is_some()));
        assert_eq!(best(&rates).map(|r| r.kernel), Some(Kernel::best().name()));
    }
}
