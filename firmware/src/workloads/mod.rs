//! Built-in workloads, chosen by the VMM through fw_cfg (`--workload NAME`).

pub mod bypass;
pub mod scribble;
pub mod vctest;

pub use guest_workloads::{canary, dirty, run_share};

/// The workloads this firmware knows.
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
    /// Enter the SEV-ES #VC handler with synthetic frames against the real VMM.
    VcTest,
    /// Make one plain port or MMIO access (the VMM's SEV-ES strict mode must stop it).
    Bypass(bypass::Access),
}

impl Workload {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Workload::SelfTest => "selftest",
            Workload::Idle => "idle",
            Workload::Canary => "canary",
            Workload::Dirty => "dirty",
            Workload::VcTest => "vctest",
            Workload::Bypass(bypass::Access::Pio) => "bypass-pio",
            Workload::Bypass(bypass::Access::Mmio) => "bypass-mmio",
            Workload::Bypass(bypass::Access::Msr) => "bypass-msr",
        }
    }

    /// Parses a workload name (surrounding whitespace ignored).
    pub fn from_name(name: &[u8]) -> Option<Workload> {
        match name.trim_ascii() {
            b"selftest" => Some(Workload::SelfTest),
            b"idle" => Some(Workload::Idle),
            b"canary" => Some(Workload::Canary),
            b"dirty" => Some(Workload::Dirty),
            b"vctest" => Some(Workload::VcTest),
            b"bypass-pio" => Some(Workload::Bypass(bypass::Access::Pio)),
            b"bypass-mmio" => Some(Workload::Bypass(bypass::Access::Mmio)),
            b"bypass-msr" => Some(Workload::Bypass(bypass::Access::Msr)),
            _ => None,
        }
    }
}
