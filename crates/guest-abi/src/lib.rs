//! The contract between sevmirror's firmware and its VMM.
//!
//! Both sides compile this crate: the firmware (`no_std`, bare metal) and the VMM. It holds
//! the fixed guest-physical layout the firmware reserves, the register map of the MMIO
//! guest-services page, the service numbers CPL3 code uses to reach CPL0, and the fw_cfg
//! names the VMM publishes. It has no dependencies and performs no I/O.
//!
//! Trust: the layout is fixed at build time and measured with the firmware; values the
//! guest writes to the services page are untrusted by the VMM and validated there.

#![no_std]
#![forbid(unsafe_code)]

pub mod fwcfg;
pub mod ghcb;
pub mod layout;
pub mod memmap;
pub mod migration;
pub mod services;
pub mod svc;
