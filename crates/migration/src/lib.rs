//! The migration stream between two sevmirror processes: the frames that carry a guest
//! from a source VMM to a target VMM, and the codec that reads them from a byte stream.
//!
//! - [`frames`] is the wire specification (sequence diagram, receiver state diagram,
//!   version policy, the byte layout of every frame) and the typed frames with their
//!   encoders and decoders.
//! - [`codec`] reads frames from any [`std::io::Read`] into a caller-provided buffer.
//! - [`cpu`] is the guest CPU the Hello carries and the check a target makes against
//!   its own CPU before it takes a guest from another host.
//! - [`uri`] parses the `tcp:HOST:PORT` migration URIs that QMP `migrate` and
//!   `--incoming` take.
//! - [`fuzzing`] is the path the `migration_frames` fuzz target and the seed replay test
//!   drive.
//!
//! - [`engine`] is the precopy sender and the verifying receiver, as sequential state
//!   machines over the stream; they reach the VM through traits the VMM implements.
//! - [`transport`] makes the TCP connection the stream runs on: connect, listen, accept,
//!   socket set-up.
//! - [`recovery`] is the layout of the files that finish or undo a committed migration
//!   whose connection is gone: the source's commit file and an abort token file.
//!
//! No KVM, no guest memory, no threads: the engine's only I/O is through the `Read` and
//! `Write` values callers hand in, and [`transport`] is the only code that opens sockets.
//! This crate must not depend on the VMM, the SEV platform crates or the binary (the
//! architecture test in `crates/harness/tests/layering.rs` enforces it).
//!
//! Trust: every byte read from the peer is hostile until a decoder accepted it. Decoders
//! check magic, version, type and the per-type length cap before a byte of payload is
//! read, and never panic. This crate checks framing only: for an SEV guest the helpers'
//! key agreement, the sealed records (pages, shared list, device and vCPU state), the
//! manifest and the commit are made and verified by the two migration helpers
//! (helper-abi, mirror-helper), not here; the engine only carries them and acts on what
//! the target's helper verified. The cross-frame rules that need the target's own
//! configuration (memory layout, helper region, vCPU indices, lanes, which pages the
//! guest shares) are the migration engine's.

#![forbid(unsafe_code)]

pub mod codec;
pub mod cpu;
pub mod engine;
pub mod frames;
pub mod fuzzing;
pub mod recovery;
pub mod transport;
pub mod uri;

pub use codec::{BatchStart, CodecError, FrameReader, Incoming, Next, RecordDest, RecordSource};
pub use frames::{Frame, FrameError, MessageType, ReceiverState, PROTOCOL_VERSION};
pub use uri::{Uri, UriError};
