//! sevmirror's virtual machine monitor on KVM.
//!
//! Guest RAM lives in a memfd; the firmware ROM is mapped read-only at the top of 4 GiB;
//! one thread runs each vCPU; a 16550, a QEMU-compatible fw_cfg, a debug-exit port and
//! the MMIO guest-services page are the devices. [`memory::HostView`] is the only way the
//! VMM touches guest RAM. KVM ioctls are confined to [`kvm`].
//!
//! Trust: everything the guest does (port and MMIO accesses, DMA descriptors, exit
//! codes) is untrusted input; it is decoded by pure device models and can never panic
//! the VMM.

pub mod console;
pub mod control;
pub mod devices;
pub mod firmware;
pub mod kvm;
pub mod memory;
pub mod migrate;
pub mod mirror;
pub mod process;
pub mod sev;
pub mod vcpu;
pub mod vm;

pub use console::ConsoleOut;
pub use firmware::{Firmware, FirmwareError};
pub use kvm::KvmSystem;
pub use vm::{Vm, VmConfig, VmError, VmOutcome};
