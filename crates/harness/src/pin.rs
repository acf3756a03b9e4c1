//! Disjoint CPU sets for a migration's source and target, so each side has cores of its
//! own as on two hosts (`bench migrate --pin`). Processes are pinned at start by running
//! them under `taskset -c LIST`; every thread they create inherits the set.

use serde::Serialize;
use std::{fmt, process::Command};

/// Which CPUs each side of a migration may run on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PinPlan {
    /// The source's CPUs.
    pub source: Vec<usize>,
    /// The target's CPUs.
    pub target: Vec<usize>,
}

/// Why there is no plan.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// Fewer than two CPUs are allowed to this process.
    #[error("pinning needs at least 2 CPUs; this process may use {0}")]
    TooFewCpus(usize),
    /// The allowed-CPU list could not be read.
    #[error("cannot read the CPUs this process may use (/proc/self/status Cpus_allowed_list)")]
    Unreadable,
    /// `taskset` is missing.
    #[error("taskset is not installed (Debian: util-linux)")]
    NoTaskset,
}

impl PinPlan {
    /// Splits `cpus` into two halves of equal size, the source on the lower CPUs; with an
    /// odd count the last CPU is left to everything else (this harness, the machine).
    pub fn split(cpus: &[usize]) -> Result<PinPlan, PinError> {
        let mut cpus = cpus.to_vec();
        cpus.sort_unstable();
        cpus.dedup();
        if cpus.len() < 2 {
            return Err(PinError::TooFewCpus(cpus.len()));
        }
        let half = cpus.len() / 2;
        Ok(PinPlan {
            source: cpus[..half].to_vec(),
            target: cpus[half..2 * half].to_vec(),
        })
    }

    /// The plan for the CPUs this process may use, checking that `taskset` runs.
    pub fn for_this_machine() -> Result<PinPlan, PinError> {
        let status =
            std::fs::read_to_string("/proc/self/status").map_err(|_| PinError::Unreadable)?;
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .ok_or(PinError::Unreadable)?;
        let cpus = parse_cpu_list(list).ok_or(PinError::Unreadable)?;
        let plan = PinPlan::split(&cpus)?;
        let taskset = Command::new("taskset")
            .arg("-V")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        if !taskset.is_ok_and(|s| s.success()) {
            return Err(PinError::NoTaskset);
        }
        Ok(plan)
    }

    /// The source's CPUs as `taskset -c` takes them.
    pub fn source_list(&self) -> String {
        cpu_list(&self.source)
    }

    /// The target's CPUs as `taskset -c` takes them.
    pub fn target_list(&self) -> String {
        cpu_list(&self.target)
    }
}

impl fmt::Display for PinPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "source on CPU {}, target on CPU {}",
            self.source_list(),
            self.target_list()
        )
    }
}

/// A command line that runs `program` on `cpus` (`taskset -c LIST program`), or
/// `program` itself when `cpus` is None.
pub fn command(program: impl AsRef<std::ffi::OsStr>, cpus: Option<&str>) -> Command {
    match cpus {
        Some(list) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(list).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A CPU list as the kernel prints it (`0-3,8,10-11`); None if malformed.
pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut out = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                // A range wider than any machine is a malformed line, not a CPU set.
                if a > b || b - a > 1 << 16 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    Some(out)
}

/// `cpus` as a `taskset -c` list (sorted, ranges collapsed).
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut cpus = cpus.to_vec();
    cpus.sort_unstable();
    cpus.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_as_the_kernel_prints_them() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("\t0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(parse_cpu_list("3"), Some(vec![3]));
        for bad in ["x", "2-1", "0-", "-3", "0-99999999"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad}");
        }
        assert_eq!(cpu_list(&[5, 0, 1, 2, 7, 8, 1]), "0-2,5,7-8");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn the_two_sides_get_disjoint_halves() {
        // This machine: two CPUs, one each.
        let two = PinPlan::split(&[0, 1]).unwrap();
        assert_eq!(
            (two.source_list(), two.target_list()),
            ("0".into(), "1".into())
        );
        let eight = PinPlan::split(&(0..8).collect::<Vec<_>>()).unwrap();
        assert_eq!(eight.source, vec![0, 1, 2, 3]);
        assert_eq!(eight.target, vec![4, 5, 6, 7]);
        // Odd counts leave one CPU to the rest; sets never overlap.
        let odd = PinPlan::split(&[4, 2, 9]).unwrap();
        assert_eq!((odd.source, odd.target), (vec![2], vec![4]));
        assert_eq!(two.to_string(), "source on CPU 0, target on CPU 1");
    }

    #[test]
    fn one_cpu_is_not_enough() {
        assert!(matches!(PinPlan::split(&[0]), Err(PinError::TooFewCpus(1))));
        assert!(matches!(
            PinPlan::split(&[3, 3]),
            Err(PinError::TooFewCpus(1))
        ));
        assert!(matches!(PinPlan::split(&[]), Err(PinError::TooFewCpus(0))));
    }

    #[test]
    fn an_unpinned_command_is_the_program_itself() {
        let c = command("qemu-system-x86_64", None);
        assert_eq!(c.get_program(), "qemu-system-x86_64");
        let c = command("qemu-system-x86_64", Some("1"));
        assert_eq!(c.get_program(), "taskset");
        let args: Vec<_> = c.get_args().collect();
        assert_eq!(args, ["-c", "1", "qemu-system-x86_64"]);
    }
}
