//! sevmirror's guest runtime: what the firmware and the guest OS both run.
//!
//! Guest CPL0 is emulated ~5000x slower than CPL3 on the development machines and CPL3
//! cannot do port I/O (docs/architecture.md §4), so each image keeps its CPL0 part to the
//! per-CPU set-up and rare services of rt.s and runs its Rust at CPL3: it reaches the VMM
//! through the MMIO guest-services page (`services`) and asks CPL0 by `ud2` service calls
//! (`cpu`) for port I/O, MSRs and halting. Under SEV-ES the same calls go through each
//! CPU's GHCB (`ghcb`, `es`), a #VC is reflected to the CPL3 handler (`vc`), and each vCPU
//! saves and restores its own registers for a migration (`es_state`).
//!
//! The runtime's state lives at the addresses of [`layout`]: the firmware's reserved
//! working area, or with feature `os` the guest OS's own memory. Images provide
//! `sevm_rust_entry(cpu)` (where every CPU enters Rust) and `sevm_svc_image` (their own
//! service numbers).

#![no_std]

pub mod console;
pub mod cpu;
pub mod es;
pub mod es_state;
pub mod fwcfg;
pub mod ghcb;
pub mod globals;
pub mod layout;
pub mod migration;
pub mod paging;
mod rt;
pub mod services;
pub mod sev;
pub mod smp;
pub mod vc;

/// How this image names itself on the console ("firmware: …", "os: …").
pub const NAME: &str = if cfg!(feature = "os") {
    "os"
} else {
    "firmware"
};
