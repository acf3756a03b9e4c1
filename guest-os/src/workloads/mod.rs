//! The OS's workloads, chosen by the VMM through fw_cfg (`--workload NAME`).

pub mod scribble;

pub use guest_workloads::{canary, dirty, run_share};

/// The workloads this OS knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Fill all free RAM with a position-dependent pattern and verify it.
    SelfTest,
    /// Stay up, halted, until the VMM stops the VM.
    Idle,
    /// Write a known canary into one private and one shared page, then idle: shows what
    /// the host can and cannot see of guest memory.
    Canary,
    /// Keep rewriting pages at a set rate; verify them on the host's request.
    Dirty,
}

impl Workload {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SelfTest => "selftest",
            Workload::Idle => "idle",
            Workload::Canary => "canary",
            Workload::Dirty => "dirty",
        }
    }

    /// Parses a workload name (surrounding whitespace ignored).
    pub fn from_name(name: &[u8]) -> Option<Workload> {
        match name.trim_ascii() {
            b"selftest" => Some(Workload::SelfTest),
            b"idle" => Some(Workload::Idle),
            b"canary" => Some(Workload::Canary),
            b"dirty" => Some(Workload::Dirty),
            _ => None,
        }
    }
}
