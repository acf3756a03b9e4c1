//! The AMD SEV platform as sevmirror's VMM sees it.
//!
//! [`backend::SevBackend`] is the one interface the VMM uses, with the command set KVM
//! exposes (`KVM_MEMORY_ENCRYPT_OP`) plus the platform commands of `/dev/sev`. Two
//! implementations stand behind it: the emulated PSP (the development machines have no
//! SEV hardware; it is faithful at every boundary the host can observe,
//! docs/architecture.md §3, The emulated platform) and the hardware backend (the real
//! ioctls).
//!
//! This crate must not depend on the VMM (or the migration crate, or the binary); the VMM
//! hands it guest memory through [`backend::LaunchMemory`] and its KVM VMs through
//! [`kvm::KvmOps`]: the only ioctls issued here are the `/dev/sev` ones.
//!
//! Trust: session blobs, certificates, secret packets and the platform state directory are
//! untrusted input and are validated before use.

pub mod backend;
pub mod certs;
pub mod crypto;
pub mod emulated;
pub mod hw;
pub mod identity;
pub mod kvm;
pub mod measure;
pub mod memcrypt;
pub mod memory;
pub mod owner;
pub mod owner_files;
pub mod platform;
pub mod policy;
pub mod secret;
pub mod secret_table;
pub mod session;
pub mod status;
pub mod vmsa;

pub use backend::{SevBackend, SevError};
pub use emulated::EmulatedPsp;
pub use identity::PlatformIdentity;
pub use policy::Policy;
pub use status::SevStatus;
