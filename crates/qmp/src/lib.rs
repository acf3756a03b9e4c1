//! QEMU's machine protocol (QMP) on a UNIX socket, server and client: the control socket of
//! a sevmirror VMM, as a library with no knowledge of the VMM behind it.
//!
//! Existing QMP tooling (`qmp-shell`, `socat`, libvirt-style scripts, `sevctl` walk-throughs)
//! talks to sevmirror as it talks to QEMU: same framing, same command names and field
//! spellings, same error classes and messages. References, checked against QEMU's tree:
//! `docs/interop/qmp-spec.rst` (framing, greeting, negotiation, errors, events),
//! `qapi/qmp-dispatch.c` and `monitor/qmp.c` (request checks, negotiation gate),
//! `qapi/qobject-input-visitor.c` and `include/qapi/qmp/qerror.h` (argument errors),
//! `qapi/error.json` (classes), `qapi/run-state.json`, `qapi/misc-target.json` (QEMU 7.2;
//! `qapi/misc-i386.json` since 10.0) and `qapi/migration.json` (QEMU 7.2 members).
//!
//! Layers, outermost last:
//! - [`wire`]: pure protocol state machine — framing with a length cap, request checks,
//!   the capabilities gate, `id` echo, encoding of returns, errors and events.
//! - [`command`] and [`reply`]: the typed boundary. The VMM implements [`Controller`]
//!   and sees only [`QmpCommand`] in and [`QmpReply`] / [`ControlError`] out; it never
//!   sees JSON, and this module never sees VMM types.
//! - [`server`]: [`QmpServer`] on a UNIX socket (mode 0600, a thread pair per client) and
//!   [`EventSender`], which broadcasts [`QmpEvent`]s to every negotiated client.
//! - [`client`]: [`QmpClient`], used by `sevmirror ctl`, the harness and tests.
//! - [`fuzzing`]: the path the `qmp_requests` fuzz target and its seed replay test drive
//!   (framing, negotiation, request checks, command and argument decoding).
//!
//! Dependencies: serde, serde_json, thiserror, log and std only. This crate must not depend
//! on the VMM (`vmm`), the SEV platform or the binary: the binary owns the adapter that maps
//! [`QmpCommand`]s to the VMM controller's commands and its replies back.
//!
//! Trust: a client of the socket may stop, resume, migrate or quit the VM, so the socket
//! is created 0600 and its directory should be private too. Its input is still parsed as
//! hostile: every request is length-capped before parsing, nesting is bounded by the
//! JSON parser, and no input reaches a panic.

#![forbid(unsafe_code)]

mod args;
pub mod client;
pub mod command;
pub mod error;
pub mod fuzzing;
pub mod reply;
pub mod server;
pub mod wire;

pub use client::{ClientError, QmpClient, QmpErrorReply, ReceivedEvent};
pub use command::{
    Controller, Migrate, MigrateAbortIncoming, MigrateCommit, MigrateRelease, MigrateSetParameters,
    QmpCommand, SevInjectLaunchSecret,
};
pub use error::{ControlError, ErrorClass};
pub use reply::{
    AbortIncomingInfo, HelperInfo, HelperState, InetAddress, MigrationInfo, MigrationStats,
    MigrationStatus, QmpEvent, QmpReply, RunState, SevCapability, SevGuestType, SevInfo,
    SevLaunchMeasureInfo, SevState, ShutdownCause, StatusInfo,
};
pub use server::{EventSender, QmpServer, ServerError};
