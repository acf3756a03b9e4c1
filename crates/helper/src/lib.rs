//! The migration helper: what runs inside the guest's trust boundary, on a mirror VM's
//! vCPU, to move an SEV guest's private pages without the host ever seeing them.
//!
//! The firmware (`firmware/src/helper.rs`) runs [`engine::Helper::serve`] at CPL3 for each
//! request the VMM leaves in a helper vCPU's mailbox. The same code runs on the host in
//! tests and benchmarks. It is `no_std` and touches memory only through the
//! [`engine::GuestMemory`] and [`engine::Mailbox`] traits, so nothing here holds a
//! reference into memory the host can change.
//!
//! Trust: the mailbox, the GPA lists, the record windows and every record are written by
//! an untrusted host, which also decides when each helper vCPU runs. The helper copies
//! what it reads out of shared memory once, checks the copy, and only then acts; it never
//! writes outside guest RAM it was asked to import into (and its own "migrated out"
//! page), and never outside RAM at all. Sessions come from an authenticated X25519 key
//! agreement with the peer helper ([`keys`]); a one-word gate ([`gate`]) keeps the shared
//! session consistent however the host interleaves helper vCPUs; a commit decides which
//! copy of the guest may run ([`engine`] has the state machine).
//!
//! Must not depend on anything with I/O or allocation: it runs in the firmware.

#![no_std]

#[cfg(any(test, feature = "host"))]
extern crate std;

pub mod crypto;
pub mod engine;
#[cfg(feature = "host")]
pub mod fuzzing;
pub mod gate;
#[cfg(feature = "host")]
pub mod host;
pub mod integrity;
pub mod keys;
pub mod layout;
pub mod secret;
pub mod session;
pub mod shared_list;

pub use engine::{GuestMemory, Helper, Mailbox};
pub use layout::HelperLayout;
pub use session::{LaneState, SessionState};
