//! sevmirror's harness: the steps a demo, a benchmark and a KVM integration test share.
//!
//! - [`process`]: a `sevmirror run` child process with its control socket, console and
//!   stderr, driven over QMP or with `sevmirror ctl` as a user would.
//! - [`owner`]: the guest owner in this process: sessions, attestation, secrets.
//! - [`scenario`]: one live migration staged the way a cloud would — platform, owner,
//!   source under load, attested target, migration over loopback — and its outcome.
//! - [`bench_helper`] and [`bench_migrate`]: the figures `sevmirror bench` prints;
//!   [`gcm_limits`] (the helper's AES-256-GCM per kernel, `openssl speed`), [`qemu_tls`]
//!   (certificates for QEMU's TLS migration), [`pin`] (disjoint CPU sets for the source
//!   and the target) and [`chart`] (the SVG of `bench migrate --svg`) serve them.
//! - [`relay`]: a TCP relay that records what a migration source sends.
//!
//! Figures are measured and printed, never asserted. Trust: the harness starts the
//! processes it talks to; what they print is still parsed defensively (a missing field is
//! an error or a zero, never a panic).
//!
//! Dependencies: the libraries (`vmm`, `qmp`, `sev-platform`, the ABI crates); never the
//! binary, which it runs as a child process by path.

#![forbid(unsafe_code)]

pub mod bench_helper;
pub mod bench_migrate;
pub mod chart;
pub mod gcm_limits;
pub mod owner;
pub mod pin;
pub mod process;
pub mod qemu_tls;
pub mod relay;
pub mod scenario;

use serde_json::Value;
use std::time::{Duration, Instant};

/// Why a harness step failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A file, directory, socket or process operation failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A VMM process ended before its control socket came up.
    #[error("the {name} VMM did not start:\n{stderr}")]
    NotStarted {
        /// The VMM's name.
        name: String,
        /// What it printed.
        stderr: String,
    },
    /// A QMP command failed.
    #[error("{vmm}: {command}")]
    Qmp {
        /// The VMM's name.
        vmm: String,
        /// The command.
        command: String,
        /// The client's error.
        #[source]
        source: qmp::ClientError,
    },
    /// `sevmirror ctl` failed.
    #[error("{vmm}: {command}: {stderr}")]
    Ctl {
        /// The VMM's name.
        vmm: String,
        /// The command.
        command: String,
        /// What `ctl` printed.
        stderr: String,
    },
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// A reply or a console lacks what the step needs.
    #[error("{0}")]
    Unexpected(String),
    /// Arguments out of range.
    #[error("{0}")]
    Usage(String),
    /// A step of the guest owner failed.
    #[error("owner: {what}")]
    Owner {
        /// The step.
        what: &'static str,
        /// Why.
        #[source]
        source: sev_platform::owner::OwnerError,
    },
    /// The SEV platform refused.
    #[error(transparent)]
    Sev(#[from] sev_platform::SevError),
    /// No randomness.
    #[error("no random bytes")]
    Random(#[from] sev_platform::crypto::RandomError),
    /// A VM of the in-process benchmarks failed.
    #[error(transparent)]
    Vm(#[from] vmm::VmError),
    /// KVM failed.
    #[error(transparent)]
    Kvm(#[from] vmm::kvm::KvmError),
    /// The mirror VM could not be attached.
    #[error(transparent)]
    Mirror(#[from] vmm::mirror::MirrorError),
    /// A helper call failed.
    #[error(transparent)]
    Helper(#[from] vmm::mirror::HelperError),
    /// The firmware image is unusable.
    #[error(transparent)]
    Firmware(#[from] vmm::FirmwareError),
    /// A report could not be encoded.
    #[error("cannot encode the report")]
    Json(#[from] serde_json::Error),
}

impl HarnessError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}

/// The harness's result.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// Polls `check` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The number at `path` in a QMP reply (0 where it is missing).
pub fn json_u64(reply: &Value, path: &[&str]) -> u64 {
    path.iter()
        .fold(reply, |v, key| &v[*key])
        .as_u64()
        .unwrap_or(0)
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut e = e;
    while let Some(next) = e.source() {
        s.push_str(": ");
        s.push_str(&next.to_string());
        e = next;
    }
    s
}

/// CPU seconds (user + system) process `pid` has used so far; 0 if unknown.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may hold spaces; fields resume after its closing parenthesis.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    match vmm::process::clock_ticks_per_second() {
        Some(hz) => ticks as f64 / hz as f64,
        None => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_in_replies_and_missing_ones() {
        let v = serde_json::json!({"ram": {"total": 7}, "status": "active"});
        assert_eq!(json_u64(&v, &["ram", "total"]), 7);
        assert_eq!(json_u64(&v, &["ram", "absent"]), 0);
        assert_eq!(json_u64(&v, &["status"]), 0);
    }

    #[test]
    fn this_process_has_used_some_cpu_and_a_dead_pid_none() {
        let burn = Instant::now();
        while burn.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds(std::process::id()) > 0.0);
        assert_eq!(cpu_seconds(u32::MAX), 0.0);
        assert_eq!(wait_for(Duration::from_millis(30), || None::<()>), None);
        assert_eq!(wait_for(Duration::from_millis(30), || Some(1)), Some(1));
    }
}
