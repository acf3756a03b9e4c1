//! What the `qmp_requests` fuzz target runs on each input, and the seed corpus
//! (`fuzz/seeds/qmp_requests/`) it starts from. The seed replay test drives the same
//! [`exercise`], so every seed and every crash kept there stays fixed.
//!
//! An input is what a control-socket client sends: bytes cut into JSON texts by the
//! [`Framer`], each handled by a [`Session`] (negotiation, request checks, command and
//! argument decoding) in front of a controller that answers every command with a reply
//! of the right kind. What must hold for any input: no panic; the framer cuts the same
//! texts whether the bytes come at once or one by one; every response is one line of one
//! JSON object with exactly one of `return` or `error`, echoing the request's `id`.

use crate::{
    command::{Controller, QmpCommand},
    error::ControlError,
    reply::{
        AbortIncomingInfo, HelperInfo, HelperState, MigrationInfo, QmpReply, RunState,
        SevCapability, SevGuestType, SevInfo, SevLaunchMeasureInfo, SevState, StatusInfo,
    },
    wire::{Frame, Framer, Session, MAX_REQUEST_BYTES},
};
use serde_json::Value;
use std::sync::Mutex;

/// What [`exercise`] saw.
#[derive(Debug, Default)]
pub struct Summary {
    /// Texts the framer cut (over-long ones included).
    pub frames: usize,
    /// Commands that reached the controller, by name.
    pub commands: Vec<&'static str>,
    /// Responses that were errors.
    pub errors: usize,
}

/// A controller that answers each command with a reply of its kind and records it.
#[derive(Default)]
struct Answering {
    seen: Mutex<Vec<&'static str>>,
}

impl Controller for Answering {
    fn execute(&self, cmd: QmpCommand) -> Result<QmpReply, ControlError> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.push(cmd.name());
        }
        Ok(match cmd {
            QmpCommand::QueryStatus => QmpReply::Status(StatusInfo {
                status: RunState::Running,
            }),
            QmpCommand::QuerySev => QmpReply::Sev(SevInfo {
                enabled: true,
                api_major: 0,
                api_minor: 24,
                build_id: 0,
                policy: 1,
                state: SevState::Running,
                handle: 1,
                sev_type: SevGuestType::Sev,
            }),
            QmpCommand::QuerySevLaunchMeasure => QmpReply::SevLaunchMeasure(SevLaunchMeasureInfo {
                data: String::new(),
            }),
            QmpCommand::QuerySevCapabilities => QmpReply::SevCapabilities(SevCapability {
                pdh: String::new(),
                cert_chain: String::new(),
                cpu0_id: String::new(),
                cbitpos: 0,
                reduced_phys_bits: 0,
            }),
            QmpCommand::QueryHelper => QmpReply::Helper(HelperInfo {
                state: HelperState::Ready,
                vcpus: 1,
                region_base: 0,
                region_size: 0,
                descriptor_version: 1,
                requests: 0,
                bytes_sealed: 0,
                bytes_opened: 0,
            }),
            QmpCommand::QueryMigrate => QmpReply::Migration(Box::<MigrationInfo>::default()),
            QmpCommand::MigrateAbortIncoming(_) => {
                QmpReply::AbortIncoming(AbortIncomingInfo::default())
            }
            QmpCommand::Cont
            | QmpCommand::Stop
            | QmpCommand::Quit
            | QmpCommand::SevInjectLaunchSecret(_)
            | QmpCommand::Migrate(_)
            | QmpCommand::MigrateCancel
            | QmpCommand::MigrateSetParameters(_)
            | QmpCommand::MigrateRelease(_)
            | QmpCommand::MigrateCommit(_) => QmpReply::Empty,
        })
    }
}

/// The `id` of a text, if it is a JSON object with one (what a response must echo).
fn request_id(text: &[u8]) -> Option<Value> {
    match serde_json::from_slice::<Value>(text) {
        Ok(Value::Object(mut o)) => o.remove("id"),
        _ => None,
    }
}

/// Runs `data` through a QMP session as a client's bytes; asserts the invariants in the
/// module doc (a failed assertion is a bug, like a panic).
pub fn exercise(data: &[u8]) -> Summary {
    let mut whole = Vec::new();
    Framer::new(MAX_REQUEST_BYTES).feed(data, &mut whole);
    let mut bytewise = Vec::new();
    let mut framer = Framer::new(MAX_REQUEST_BYTES);
    for b in data.chunks(1) {
        framer.feed(b, &mut bytewise);
    }
    assert_eq!(
        whole, bytewise,
        "the framer depends on how the bytes arrive"
    );
    let controller = Answering::default();
    let mut session = Session::new();
    let mut summary = Summary {
        frames: whole.len(),
        ..Summary::default()
    };
    for frame in whole {
        let id = match &frame {
            Frame::Text(t) => request_id(t),
            Frame::TooLong => None,
        };
        let line = session.handle(frame, &controller);
        assert!(
            line.ends_with('\n') && line.matches('\n').count() == 1,
            "a response is one line: {line:?}"
        );
        let v: Value = serde_json::from_str(&line).expect("a response is JSON");
        let Value::Object(o) = v else {
            panic!("a response is an object: {line}");
        };
        assert!(
            o.contains_key("return") != o.contains_key("error"),
            "a response has one of return and error: {line}"
        );
        if o.contains_key("error") {
            summary.errors += 1;
            let e = &o["error"];
            assert!(e["class"].is_string() && e["desc"].is_string(), "{line}");
        }
        if let Some(id) = id {
            // An id is echoed verbatim whenever the request was an object carrying one.
            assert_eq!(o.get("id"), Some(&id), "{line}");
        }
    }
    summary.commands = controller
        .seen
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    summary
}

/// The seed corpus: (file name, bytes).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let lines = |ls: &[&str]| -> Vec<u8> {
        let mut out = Vec::new();
        for l in ls {
            out.extend_from_slice(l.as_bytes());
            out.push(b'\n');
        }
        out
    };
    let caps = r#"{"execute":"qmp_capabilities"}"#;
    vec![
        ("empty.bin", Vec::new()),
        (
            "every-command.bin",
            lines(&[
                caps,
                r#"{"execute":"query-version","id":1}"#,
                r#"{"execute":"query-commands","id":"two"}"#,
                r#"{"execute":"query-status","id":3}"#,
                r#"{"execute":"cont"}"#,
                r#"{"execute":"stop","id":[4]}"#,
                r#"{"execute":"query-sev"}"#,
                r#"{"execute":"query-sev-launch-measure"}"#,
                r#"{"execute":"sev-inject-launch-secret","arguments":{"packet-header":"AAAA","secret":"AAAA","gpa":8192}}"#,
                r#"{"execute":"query-sev-capabilities"}"#,
                r#"{"execute":"query-helper"}"#,
                r#"{"execute":"migrate","arguments":{"uri":"tcp:127.0.0.1:4444","commit-file":"/run/c.bin","detach":true}}"#,
                r#"{"execute":"query-migrate"}"#,
                r#"{"execute":"migrate_cancel"}"#,
                r#"{"execute":"migrate-set-parameters","arguments":{"downtime-limit":300,"max-bandwidth":1073741824,"zero-page-records":true}}"#,
                r#"{"execute":"migrate-release","arguments":{"token-file":"/run/t.bin"}}"#,
                r#"{"execute":"migrate-commit","arguments":{"commit-file":"/run/c.bin"}}"#,
                r#"{"execute":"migrate-abort-incoming","arguments":{"token-file":"/run/a.bin"}}"#,
                r#"{"execute":"quit","id":{"n":5}}"#,
            ]),
        ),
        (
            "bad-arguments.bin",
            lines(&[
                caps,
                r#"{"execute":"migrate","arguments":{"uri":7}}"#,
                r#"{"execute":"migrate","arguments":{"uri":"tcp:h:1","blk":true}}"#,
                r#"{"execute":"migrate-set-parameters","arguments":{"downtime-limit":-1}}"#,
                r#"{"execute":"migrate-set-parameters","arguments":{"multifd-channels":4}}"#,
                r#"{"execute":"migrate-set-parameters","arguments":{"zero-page-records":"yes"}}"#,
                r#"{"execute":"migrate-release","arguments":{}}"#,
                r#"{"execute":"migrate-commit","arguments":{"commit-file":"/c","force":1}}"#,
                r#"{"execute":"migrate-abort-incoming","arguments":{"token-file":1}}"#,
                r#"{"execute":"cont","arguments":{"verbose":true}}"#,
                r#"{"execute":"sev-inject-launch-secret","arguments":{"secret":"b"}}"#,
                r#"{"execute":"frobnicate","id":9}"#,
                r#"{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}"#,
            ]),
        ),
        (
            "before-negotiation.bin",
            lines(&[
                r#"{"execute":"query-status","id":1}"#,
                r#"{"execute":"qmp_capabilities","arguments":{"enable":["fast"]}}"#,
                caps,
                caps,
            ]),
        ),
        (
            "malformed.bin",
            [
                &b"{\"execute\":\"query-status\"\n"[..],
                b"[1,2,3]\n",
                b"\"text\"\n",
                b"{\"execute\":3}\n",
                b"{\"execute\":\"cont\",\"arguments\":[]}\n",
                b"{'execute':'query-status'}\n",
                b"\xff{\"execute\":\"qmp_capabilities\"}\n",
                b"}}}{{{\n",
                b"{\"execute\":\"cont\",\"control\":{}}\n",
            ]
            .concat(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_reaches_the_controller_once_negotiated() {
        let (_, every) = seeds()
            .into_iter()
            .find(|(n, _)| *n == "every-command.bin")
            .unwrap();
        let s = exercise(&every);
        for name in QmpCommand::NAMES {
            assert!(s.commands.contains(name), "{name}: {:?}", s.commands);
        }
        assert_eq!(s.errors, 0);
    }

    #[test]
    fn garbage_and_bad_arguments_are_errors_not_commands() {
        for name in [
            "bad-arguments.bin",
            "malformed.bin",
            "before-negotiation.bin",
        ] {
            let (_, bytes) = seeds().into_iter().find(|(n, _)| *n == name).unwrap();
            let s = exercise(&bytes);
            assert!(s.errors > 0, "{name}");
            assert!(s.commands.is_empty(), "{name}: {:?}", s.commands);
        }
    }
}
