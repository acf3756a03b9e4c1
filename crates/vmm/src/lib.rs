//! sevmirror's virtual machine monitor on KVM.
//!
//! Guest RAM lives in a memfd; the firmware ROM is mapped read-only at the top of 4 GiB;
//! one thread runs each vCPU; a 16550, a QEMU-compatible fw_cfg, a debug-exit port and
//! the MMIO guest-services page are the devices. [`memory::HostView`] is the only way the
//! VMM touches guest RAM. Every KVM ioctl is issued in [`kvm`], including those the SEV
//! platform's hardware backend needs (through `sev_platform::kvm::KvmOps`).
//!
//! Above the VM: [`control`] is the controller a program drives (one VM, its run state,
//! its mirror's helper, its migrations; its own command, reply, event and error types) and
//! its launch-sequence builder; [`migrate`] runs migration jobs with the VM and the helper
//! vCPUs behind the engine's traits; [`process`] handles termination signals.
//!
//! Dependencies: the ABI crates, `sev-platform` and `migration`; never the control
//! protocol (`qmp`), the harness or the binary (docs/architecture.md §2).
//!
//! Trust: everything the guest does (port and MMIO accesses, DMA descriptors, exit
//! codes) is untrusted input; it is decoded by pure device models and can never panic
//! the VMM.

pub mod console;
pub mod control;
pub mod devices;
pub mod direct_boot;
pub mod firmware;
pub mod kvm;
pub mod measure;
pub mod memory;
pub mod migrate;
pub mod mirror;
pub mod process;
pub mod sev;
pub mod vcpu;
pub mod vm;

pub use console::ConsoleOut;
pub use direct_boot::{DirectBoot, DirectBootError};
pub use firmware::{Firmware, FirmwareError};
pub use kvm::KvmSystem;
pub use vm::{Vm, VmConfig, VmError, VmOutcome};
