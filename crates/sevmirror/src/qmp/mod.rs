//! The control socket: QEMU's machine protocol (QMP) on a UNIX socket, server and client.
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
//! - [`client`]: [`QmpClient`], used by `sevmirror ctl` ([`ctl`]), the demo and tests.
//!
//! Trust: a client of the socket may stop, resume, migrate or quit the VM, so the socket
//! is created 0600 and its directory should be private too. Its input is still parsed as
//! hostile: every request is length-capped before parsing, nesting is bounded by the
//! JSON parser, and no input reaches a panic.

// The server half is wired into `sevmirror run` by the VMM work (issues 4–6); until then
// the binary itself only uses the client, and the test crate includes this module.
#![allow(dead_code)]

mod args;
pub mod client;
pub mod command;
pub mod ctl;
pub mod error;
pub mod reply;
pub mod server;
pub mod wire;

// The VMM-facing API, re-exported for `run` (unused by the binary until it is wired in).
#[allow(unused_imports)]
pub use client::{ClientError, QmpClient, QmpErrorReply, ReceivedEvent};
#[allow(unused_imports)]
pub use command::{Controller, Migrate, MigrateSetParameters, QmpCommand, SevInjectLaunchSecret};
#[allow(unused_imports)]
pub use error::{ControlError, ErrorClass};
#[allow(unused_imports)]
pub use reply::{
    HelperInfo, HelperState, InetAddress, MigrationInfo, MigrationStats, MigrationStatus, QmpEvent,
    QmpReply, RunState, SevCapability, SevGuestType, SevInfo, SevLaunchMeasureInfo, SevState,
    ShutdownCause, StatusInfo,
};
#[allow(unused_imports)]
pub use server::{EventSender, QmpServer, ServerError};
