//! SEV-ES #VC handling for sevmirror's firmware, as pure logic tested on the host.
//!
//! Under SEV-ES the CPU raises #VC (vector 29) for every exit the hypervisor would
//! otherwise serve from the guest's registers: CPUID, RDMSR/WRMSR, IN/OUT, MMIO (a nested
//! page fault on a GPA without memory), VMMCALL. The guest's handler decodes the faulting
//! instruction, asks the hypervisor through the GHCB for exactly what it needs, writes the
//! result into the interrupted registers and steps over the instruction, as OVMF's
//! `CcExitVcHandler` and Linux's `vc_handle_exitcode` do.
//!
//! - [`decode`]: the 64-bit instruction decoder for those instructions.
//! - [`frame`]: the exception frame the firmware's #VC stub saves ([`frame::VcFrame`]).
//! - [`client`]: the GHCB client: one call per exit kind over a [`client::Vmgexit`]
//!   transport (the firmware's copies the page to its shared GHCB and rings the VMGEXIT
//!   stand-in; tests use a fake hypervisor).
//! - [`handler`]: the #VC handler core tying them together.
//!
//! On the development machines the CPU never raises #VC (guests run on kvm_pvm,
//! docs/architecture.md §4), so these modules are exercised by host tests with synthetic
//! frames and a fake hypervisor, and by the firmware (its `vctest` workload raises #VCs
//! through its real vector-29 path with a test service; docs/architecture.md §3.2).
//!
//! Depends only on guest-abi (the GHCB layout). Trust: everything the hypervisor returns
//! arrives in a private copy of the GHCB and is checked (valid bits, result code) before
//! use; an MMIO access goes to the host only where [`handler::VcEnv::mmio_gpa`] allows it,
//! so a hypervisor cannot make the guest leak a register into a private page by faking a
//! #VC.

#![no_std]
#![forbid(unsafe_code)]

pub mod client;
pub mod decode;
pub mod frame;
pub mod handler;
