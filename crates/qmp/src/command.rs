//! Typed commands: what the VMM's [`Controller`] receives, and their decoding from a QMP
//! request's `execute` name and `arguments` object.

use super::args::{from_args, ArgError};
use super::error::ControlError;
use super::reply::QmpReply;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The VMM side of the control socket.
///
/// The server calls `execute` from the client's thread, so several calls may run at once
/// (one per connected client); the VMM serialises what needs serialising. A command that
/// is illegal in the current state returns an error naming that state (see
/// [`ControlError::not_permitted`]). `quit` returns `Ok(QmpReply::Empty)` and starts the
/// shutdown without waiting for it: the reply is written after `execute` returns, and the
/// VMM then drops the [`QmpServer`](super::QmpServer) before the process exits.
pub trait Controller: Send + Sync {
    /// Runs one command and returns its reply; the server encodes either side.
    fn execute(&self, cmd: QmpCommand) -> Result<QmpReply, ControlError>;
}

/// A command for the VMM, decoded and type-checked (QEMU's names in the variant docs).
///
/// `qmp_capabilities`, `query-version` and `query-commands` are answered by the protocol
/// layer itself and never reach the [`Controller`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QmpCommand {
    /// `query-status` → [`QmpReply::Status`].
    QueryStatus,
    /// `cont`: finish the launch if paused before it, resume the guest → `{}`.
    Cont,
    /// `stop`: pause the guest → `{}`.
    Stop,
    /// `quit`: shut down the VMM → `{}`.
    Quit,
    /// `query-sev` → [`QmpReply::Sev`].
    QuerySev,
    /// `query-sev-launch-measure` → [`QmpReply::SevLaunchMeasure`].
    QuerySevLaunchMeasure,
    /// `sev-inject-launch-secret` → `{}`.
    SevInjectLaunchSecret(SevInjectLaunchSecret),
    /// `query-sev-capabilities` → [`QmpReply::SevCapabilities`].
    QuerySevCapabilities,
    /// `query-helper` (sevmirror's own) → [`QmpReply::Helper`].
    QueryHelper,
    /// `migrate`: start an outgoing migration and return at once → `{}`.
    Migrate(Migrate),
    /// `query-migrate` → [`QmpReply::Migration`].
    QueryMigrate,
    /// `migrate_cancel` → `{}` (succeeds even with no migration running, as in QEMU).
    MigrateCancel,
    /// `migrate-set-parameters` → `{}`.
    MigrateSetParameters(MigrateSetParameters),
    /// `migrate-release` (sevmirror's own): a migrated-out source runs again once an
    /// abort of its committed session verifies → `{}`.
    MigrateRelease(MigrateRelease),
    /// `migrate-commit` (sevmirror's own): a target waiting for the commit takes it from
    /// the source's commit file → `{}`.
    MigrateCommit(MigrateCommit),
    /// `migrate-abort-incoming` (sevmirror's own): a target gives its session up for
    /// good → [`QmpReply::AbortIncoming`].
    MigrateAbortIncoming(MigrateAbortIncoming),
}

impl QmpCommand {
    /// The wire names of the commands that reach the [`Controller`].
    pub const NAMES: &'static [&'static str] = &[
        "query-status",
        "cont",
        "stop",
        "quit",
        "query-sev",
        "query-sev-launch-measure",
        "sev-inject-launch-secret",
        "query-sev-capabilities",
        "query-helper",
        "migrate",
        "query-migrate",
        "migrate_cancel",
        "migrate-set-parameters",
        "migrate-release",
        "migrate-commit",
        "migrate-abort-incoming",
    ];

    /// The command's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            QmpCommand::QueryStatus => "query-status",
            QmpCommand::Cont => "cont",
            QmpCommand::Stop => "stop",
            QmpCommand::Quit => "quit",
            QmpCommand::QuerySev => "query-sev",
            QmpCommand::QuerySevLaunchMeasure => "query-sev-launch-measure",
            QmpCommand::SevInjectLaunchSecret(_) => "sev-inject-launch-secret",
            QmpCommand::QuerySevCapabilities => "query-sev-capabilities",
            QmpCommand::QueryHelper => "query-helper",
            QmpCommand::Migrate(_) => "migrate",
            QmpCommand::QueryMigrate => "query-migrate",
            QmpCommand::MigrateCancel => "migrate_cancel",
            QmpCommand::MigrateSetParameters(_) => "migrate-set-parameters",
            QmpCommand::MigrateRelease(_) => "migrate-release",
            QmpCommand::MigrateCommit(_) => "migrate-commit",
            QmpCommand::MigrateAbortIncoming(_) => "migrate-abort-incoming",
        }
    }

    /// Whether `reply` is the kind of reply this command has; the server refuses to send
    /// a mismatched one (a VMM bug) and reports an internal error instead.
    pub fn accepts(&self, reply: &QmpReply) -> bool {
        match self {
            QmpCommand::QueryStatus => matches!(reply, QmpReply::Status(_)),
            QmpCommand::QuerySev => matches!(reply, QmpReply::Sev(_)),
            QmpCommand::QuerySevLaunchMeasure => matches!(reply, QmpReply::SevLaunchMeasure(_)),
            QmpCommand::QuerySevCapabilities => matches!(reply, QmpReply::SevCapabilities(_)),
            QmpCommand::QueryHelper => matches!(reply, QmpReply::Helper(_)),
            QmpCommand::QueryMigrate => matches!(reply, QmpReply::Migration(_)),
            QmpCommand::MigrateAbortIncoming(_) => matches!(reply, QmpReply::AbortIncoming(_)),
            QmpCommand::MigrateRelease(_)
            | QmpCommand::MigrateCommit(_)
            | QmpCommand::Cont
            | QmpCommand::Stop
            | QmpCommand::Quit
            | QmpCommand::SevInjectLaunchSecret(_)
            | QmpCommand::Migrate(_)
            | QmpCommand::MigrateCancel
            | QmpCommand::MigrateSetParameters(_) => matches!(reply, QmpReply::Empty),
        }
    }
}

/// `sev-inject-launch-secret` (`qapi/misc-target.json`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SevInjectLaunchSecret {
    /// The LAUNCH_SECRET packet header (flags, IV, MAC), base64 as given.
    pub packet_header: String,
    /// The encrypted secret, base64 as given.
    pub secret: String,
    /// Where to inject it; absent means the secret area the firmware declares.
    pub gpa: Option<u64>,
}

/// `migrate` (`qapi/migration.json`, QEMU 7.2), plus sevmirror's `commit-file`.
///
/// QEMU 7.2 also takes `blk`, `inc`, `detach` and `resume`; the decoder accepts them,
/// ignores `detach` (QEMU ignores it too) and refuses `true` for the others, which need
/// block migration or postcopy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Migrate {
    /// The destination, e.g. `tcp:10.0.0.2:4444`, as given.
    pub uri: String,
    /// Where an SEV source keeps its helper's commit record before sending it (absent: a
    /// file in the VMM's state directory).
    pub commit_file: Option<String>,
}

/// The wire form of `migrate`'s arguments.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct MigrateArgs {
    uri: String,
    blk: Option<bool>,
    inc: Option<bool>,
    detach: Option<bool>,
    resume: Option<bool>,
    commit_file: Option<String>,
}

/// `migrate-release` (sevmirror's own).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MigrateRelease {
    /// The abort token file: the target's (`migrate-abort-incoming`) or the guest
    /// owner's (`sevmirror owner abort`).
    pub token_file: String,
}

/// `migrate-commit` (sevmirror's own).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MigrateCommit {
    /// The source's commit file.
    pub commit_file: String,
}

/// `migrate-abort-incoming` (sevmirror's own).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MigrateAbortIncoming {
    /// Where the abort token goes (absent: a file in the VMM's state directory).
    pub token_file: Option<String>,
}

/// `migrate-set-parameters` (`qapi/migration.json`, `MigrateSetParameters`): the members
/// sevmirror implements. Other QEMU 7.2 members are refused as not supported; unknown
/// ones as unexpected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MigrateSetParameters {
    /// Maximum tolerated downtime in milliseconds (0 to 2 000 000, as in QEMU).
    pub downtime_limit: Option<u64>,
    /// Maximum migration speed in bytes per second.
    pub max_bandwidth: Option<u64>,
    /// sevmirror's own: send an SEV guest's all-zero private pages as short records.
    /// Faster, and a leak: the host learns which private pages are zero. Off by default.
    pub zero_page_records: Option<bool>,
}

/// QEMU's bound on `downtime-limit` (`MAX_MIGRATE_DOWNTIME`, migration/options.c), ms.
const MAX_DOWNTIME_LIMIT_MS: u64 = 2_000 * 1_000;

/// The other `MigrateSetParameters` members of QEMU 7.2, refused as "not supported"
/// rather than "unexpected" so a script written for QEMU learns why.
const QEMU_MIGRATE_PARAMETERS: &[&str] = &[
    "announce-initial",
    "announce-max",
    "announce-rounds",
    "announce-step",
    "compress-level",
    "compress-threads",
    "compress-wait-thread",
    "decompress-threads",
    "throttle-trigger-threshold",
    "cpu-throttle-initial",
    "cpu-throttle-increment",
    "cpu-throttle-tailslow",
    "tls-creds",
    "tls-hostname",
    "tls-authz",
    "x-checkpoint-delay",
    "block-incremental",
    "multifd-channels",
    "xbzrle-cache-size",
    "max-postcopy-bandwidth",
    "max-cpu-throttle",
    "multifd-compression",
    "multifd-zlib-level",
    "multifd-zstd-level",
    "block-bitmap-mapping",
];

/// `qmp_capabilities`' arguments (`qapi/control.json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CapabilitiesArgs {
    /// Capabilities to enable.
    pub(crate) enable: Option<Vec<QmpCapability>>,
}

/// A QMP capability (`qapi/control.json`, `QMPCapability`). sevmirror offers none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum QmpCapability {
    /// Out-of-band execution.
    Oob,
}

impl QmpCapability {
    pub(crate) fn name(self) -> &'static str {
        match self {
            QmpCapability::Oob => "oob",
        }
    }
}

/// Arguments of a command that takes none: any member is "unexpected", as in QEMU.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoArgs {}

/// A decoded request: either for the protocol layer or for the VMM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// `qmp_capabilities`.
    Capabilities(CapabilitiesArgs),
    /// `query-version`.
    QueryVersion,
    /// `query-commands`.
    QueryCommands,
    /// A command for the [`Controller`].
    Vm(QmpCommand),
}

/// The names answered by the protocol layer itself.
pub(crate) const PROTOCOL_NAMES: &[&str] = &["qmp_capabilities", "query-version", "query-commands"];

fn arg_error(e: ArgError) -> ControlError {
    ControlError::generic(e.to_string())
}

fn no_args(args: Option<&Map<String, Value>>, cmd: Decoded) -> Result<Decoded, ControlError> {
    from_args::<NoArgs>(args).map_err(arg_error)?;
    Ok(cmd)
}

/// Decodes command `name` with `args` (absent = `{}`): unknown names are
/// `CommandNotFound`, bad arguments `GenericError` with QEMU's wording.
pub(crate) fn decode(
    name: &str,
    args: Option<&Map<String, Value>>,
) -> Result<Decoded, ControlError> {
    let vm = |c| Ok(Decoded::Vm(c));
    match name {
        "qmp_capabilities" => from_args(args)
            .map(Decoded::Capabilities)
            .map_err(arg_error),
        "query-version" => no_args(args, Decoded::QueryVersion),
        "query-commands" => no_args(args, Decoded::QueryCommands),
        "query-status" => no_args(args, Decoded::Vm(QmpCommand::QueryStatus)),
        "cont" => no_args(args, Decoded::Vm(QmpCommand::Cont)),
        "stop" => no_args(args, Decoded::Vm(QmpCommand::Stop)),
        "quit" => no_args(args, Decoded::Vm(QmpCommand::Quit)),
        "query-sev" => no_args(args, Decoded::Vm(QmpCommand::QuerySev)),
        "query-sev-launch-measure" => no_args(args, Decoded::Vm(QmpCommand::QuerySevLaunchMeasure)),
        "query-sev-capabilities" => no_args(args, Decoded::Vm(QmpCommand::QuerySevCapabilities)),
        "query-helper" => no_args(args, Decoded::Vm(QmpCommand::QueryHelper)),
        "query-migrate" => no_args(args, Decoded::Vm(QmpCommand::QueryMigrate)),
        "migrate_cancel" => no_args(args, Decoded::Vm(QmpCommand::MigrateCancel)),
        "sev-inject-launch-secret" => vm(QmpCommand::SevInjectLaunchSecret(
            from_args(args).map_err(arg_error)?,
        )),
        "migrate" => vm(QmpCommand::Migrate(decode_migrate(args)?)),
        "migrate-set-parameters" => vm(QmpCommand::MigrateSetParameters(
            decode_migrate_set_parameters(args)?,
        )),
        "migrate-release" => vm(QmpCommand::MigrateRelease(
            from_args(args).map_err(arg_error)?,
        )),
        "migrate-commit" => vm(QmpCommand::MigrateCommit(
            from_args(args).map_err(arg_error)?,
        )),
        "migrate-abort-incoming" => vm(QmpCommand::MigrateAbortIncoming(
            from_args(args).map_err(arg_error)?,
        )),
        _ => Err(ControlError::command_not_found(name)),
    }
}

fn decode_migrate(args: Option<&Map<String, Value>>) -> Result<Migrate, ControlError> {
    let a: MigrateArgs = from_args(args).map_err(arg_error)?;
    let unsupported = |member: &str, why: &str| {
        Err(ControlError::generic(format!(
            "Parameter '{member}' is not supported: {why}"
        )))
    };
    if a.blk == Some(true) {
        return unsupported("blk", "sevmirror has no block devices to migrate");
    }
    if a.inc == Some(true) {
        return unsupported("inc", "sevmirror has no block devices to migrate");
    }
    if a.resume == Some(true) {
        return unsupported(
            "resume",
            "sevmirror has no paused postcopy migration to resume",
        );
    }
    // `detach` exists "only for compatibility reasons and is ignored by QEMU".
    let _ = a.detach;
    Ok(Migrate {
        uri: a.uri,
        commit_file: a.commit_file,
    })
}

fn decode_migrate_set_parameters(
    args: Option<&Map<String, Value>>,
) -> Result<MigrateSetParameters, ControlError> {
    let p: MigrateSetParameters = from_args(args).map_err(|e| match &e {
        ArgError::Unexpected { path } if QEMU_MIGRATE_PARAMETERS.contains(&path.as_str()) => {
            ControlError::generic(format!("Parameter '{path}' is not supported by sevmirror"))
        }
        _ => arg_error(e),
    })?;
    if p.downtime_limit
        .is_some_and(|ms| ms > MAX_DOWNTIME_LIMIT_MS)
    {
        // QEMU's text, including its C member name (migrate_params_check).
        return Err(ControlError::generic(
            "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000 seconds",
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use serde_json::json;

    fn dec(name: &str, args: Value) -> Result<Decoded, ControlError> {
        match args {
            Value::Null => decode(name, None),
            Value::Object(m) => decode(name, Some(&m)),
            other => panic!("test bug: {other}"),
        }
    }

    fn vm(name: &str, args: Value) -> QmpCommand {
        match dec(name, args) {
            Ok(Decoded::Vm(c)) => c,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn err(name: &str, args: Value) -> String {
        let e = dec(name, args).unwrap_err();
        assert_eq!(e.class, ErrorClass::GenericError, "{e:?}");
        e.desc
    }

    #[test]
    fn commands_without_arguments_decode_and_refuse_members() {
        let cases = [
            ("query-status", QmpCommand::QueryStatus),
            ("cont", QmpCommand::Cont),
            ("stop", QmpCommand::Stop),
            ("quit", QmpCommand::Quit),
            ("query-sev", QmpCommand::QuerySev),
            (
                "query-sev-launch-measure",
                QmpCommand::QuerySevLaunchMeasure,
            ),
            ("query-sev-capabilities", QmpCommand::QuerySevCapabilities),
            ("query-helper", QmpCommand::QueryHelper),
            ("query-migrate", QmpCommand::QueryMigrate),
            ("migrate_cancel", QmpCommand::MigrateCancel),
        ];
        for (name, want) in cases {
            assert_eq!(vm(name, Value::Null), want);
            assert_eq!(vm(name, json!({})), want);
            assert_eq!(want.name(), name);
            assert_eq!(
                err(name, json!({"verbose": true})),
                "Parameter 'verbose' is unexpected",
                "{name}"
            );
        }
    }

    #[test]
    fn every_vm_command_name_round_trips() {
        for name in QmpCommand::NAMES {
            let args = match *name {
                "sev-inject-launch-secret" => json!({"packet-header": "", "secret": ""}),
                "migrate" => json!({"uri": "tcp:127.0.0.1:1"}),
                "migrate-release" => json!({"token-file": "/t"}),
                "migrate-commit" => json!({"commit-file": "/c"}),
                _ => json!({}),
            };
            assert_eq!(vm(name, args).name(), *name);
        }
    }

    #[test]
    fn sev_inject_launch_secret_decodes() {
        let c = vm(
            "sev-inject-launch-secret",
            json!({"packet-header": "aGVhZA==", "secret": "c2VjcmV0", "gpa": 8192}),
        );
        assert_eq!(
            c,
            QmpCommand::SevInjectLaunchSecret(SevInjectLaunchSecret {
                packet_header: "aGVhZA==".into(),
                secret: "c2VjcmV0".into(),
                gpa: Some(8192),
            })
        );
        let c = vm(
            "sev-inject-launch-secret",
            json!({"packet-header": "a", "secret": "b"}),
        );
        assert!(matches!(
            c,
            QmpCommand::SevInjectLaunchSecret(SevInjectLaunchSecret { gpa: None, .. })
        ));
        let name = "sev-inject-launch-secret";
        assert_eq!(
            err(name, json!({"secret": "b"})),
            "Parameter 'packet-header' is missing"
        );
        assert_eq!(
            err(name, json!({"packet-header": "a"})),
            "Parameter 'secret' is missing"
        );
        assert_eq!(
            err(name, json!({"packet_header": "a", "secret": "b"})),
            "Parameter 'packet_header' is unexpected"
        );
        assert_eq!(
            err(name, json!({"packet-header": "a", "secret": 3})),
            "Invalid parameter type for 'secret', expected: string"
        );
        assert_eq!(
            err(
                name,
                json!({"packet-header": "a", "secret": "b", "gpa": "0"})
            ),
            "Parameter 'gpa' expects uint64"
        );
    }

    #[test]
    fn migrate_decodes_qemu_7_2_members() {
        assert_eq!(
            vm("migrate", json!({"uri": "tcp:10.0.0.2:4444"})),
            QmpCommand::Migrate(Migrate {
                uri: "tcp:10.0.0.2:4444".into(),
                commit_file: None,
            })
        );
        assert_eq!(
            vm(
                "migrate",
                json!({"uri": "tcp:10.0.0.2:4444", "commit-file": "/var/lib/c.bin"})
            ),
            QmpCommand::Migrate(Migrate {
                uri: "tcp:10.0.0.2:4444".into(),
                commit_file: Some("/var/lib/c.bin".into()),
            })
        );
        assert_eq!(
            err("migrate", json!({"uri": "tcp:h:1", "commit-file": 3})),
            "Invalid parameter type for 'commit-file', expected: string"
        );
        let all_off = json!({"uri": "tcp:h:1", "blk": false, "inc": false, "detach": true,
                             "resume": false});
        assert!(matches!(vm("migrate", all_off), QmpCommand::Migrate(_)));
        assert_eq!(err("migrate", json!({})), "Parameter 'uri' is missing");
        assert_eq!(
            err("migrate", json!({"uri": "tcp:h:1", "foo": 1})),
            "Parameter 'foo' is unexpected"
        );
        assert_eq!(
            err("migrate", json!({"uri": 7})),
            "Invalid parameter type for 'uri', expected: string"
        );
        assert_eq!(
            err("migrate", json!({"uri": "tcp:h:1", "detach": "yes"})),
            "Invalid parameter type for 'detach', expected: boolean"
        );
        // Newer QEMU's `channels` is not a 7.2 member.
        assert_eq!(
            err("migrate", json!({"channels": []})),
            "Parameter 'channels' is unexpected"
        );
        for member in ["blk", "inc", "resume"] {
            let mut args = json!({"uri": "tcp:h:1"});
            args[member] = json!(true);
            let desc = err("migrate", args);
            assert!(
                desc.starts_with(&format!("Parameter '{member}' is not supported")),
                "{desc}"
            );
        }
    }

    #[test]
    fn migrate_set_parameters_decodes() {
        assert_eq!(
            vm(
                "migrate-set-parameters",
                json!({"downtime-limit": 300, "max-bandwidth": 1u64 << 30})
            ),
            QmpCommand::MigrateSetParameters(MigrateSetParameters {
                downtime_limit: Some(300),
                max_bandwidth: Some(1 << 30),
                zero_page_records: None,
            })
        );
        assert_eq!(
            vm("migrate-set-parameters", json!({"zero-page-records": true})),
            QmpCommand::MigrateSetParameters(MigrateSetParameters {
                zero_page_records: Some(true),
                ..MigrateSetParameters::default()
            })
        );
        assert_eq!(
            vm("migrate-set-parameters", json!({})),
            QmpCommand::MigrateSetParameters(MigrateSetParameters::default())
        );
        let name = "migrate-set-parameters";
        assert_eq!(
            err(name, json!({"downtime-limit": 2_000_001})),
            "Parameter 'downtime_limit' expects an integer in the range of 0 to 2000 seconds"
        );
        assert!(matches!(
            vm(name, json!({"downtime-limit": 2_000_000})),
            QmpCommand::MigrateSetParameters(_)
        ));
        assert_eq!(
            err(name, json!({"downtime-limit": -1})),
            "Parameter 'downtime-limit' expects uint64"
        );
        assert_eq!(
            err(name, json!({"max-bandwidth": "1G"})),
            "Parameter 'max-bandwidth' expects uint64"
        );
        assert_eq!(
            err(name, json!({"multifd-channels": 4})),
            "Parameter 'multifd-channels' is not supported by sevmirror"
        );
        assert_eq!(
            err(name, json!({"downtime_limit": 4})),
            "Parameter 'downtime_limit' is unexpected"
        );
    }

    #[test]
    fn the_commit_and_abort_commands_decode_their_files() {
        assert_eq!(
            vm("migrate-release", json!({"token-file": "/tmp/a.bin"})),
            QmpCommand::MigrateRelease(MigrateRelease {
                token_file: "/tmp/a.bin".into()
            })
        );
        assert_eq!(
            vm("migrate-commit", json!({"commit-file": "/tmp/c.bin"})),
            QmpCommand::MigrateCommit(MigrateCommit {
                commit_file: "/tmp/c.bin".into()
            })
        );
        assert_eq!(
            vm("migrate-abort-incoming", Value::Null),
            QmpCommand::MigrateAbortIncoming(MigrateAbortIncoming { token_file: None })
        );
        assert_eq!(
            vm("migrate-abort-incoming", json!({"token-file": "/t"})),
            QmpCommand::MigrateAbortIncoming(MigrateAbortIncoming {
                token_file: Some("/t".into())
            })
        );
        assert_eq!(
            err("migrate-release", json!({})),
            "Parameter 'token-file' is missing"
        );
        assert_eq!(
            err(
                "migrate-commit",
                json!({"commit-file": "/c", "force": true})
            ),
            "Parameter 'force' is unexpected"
        );
        assert_eq!(
            err("migrate-abort-incoming", json!({"token-file": 1})),
            "Invalid parameter type for 'token-file', expected: string"
        );
    }

    #[test]
    fn capabilities_arguments_decode() {
        assert_eq!(
            dec("qmp_capabilities", Value::Null).unwrap(),
            Decoded::Capabilities(CapabilitiesArgs::default())
        );
        assert_eq!(
            dec("qmp_capabilities", json!({"enable": ["oob"]})).unwrap(),
            Decoded::Capabilities(CapabilitiesArgs {
                enable: Some(vec![QmpCapability::Oob])
            })
        );
        assert_eq!(
            err("qmp_capabilities", json!({"enable": ["fast"]})),
            "Parameter 'enable[0]' does not accept value 'fast'"
        );
        assert_eq!(
            err("qmp_capabilities", json!({"enable": "oob"})),
            "Invalid parameter type for 'enable', expected: array"
        );
        assert_eq!(QmpCapability::Oob.name(), "oob");
    }

    #[test]
    fn unknown_commands_are_command_not_found() {
        for name in [
            "frobnicate",
            "",
            "Query-Status",
            "migrate-cancel",
            "query_status",
        ] {
            let e = dec(name, json!({})).unwrap_err();
            assert_eq!(e.class, ErrorClass::CommandNotFound);
            assert_eq!(e.desc, format!("The command {name} has not been found"));
        }
    }

    #[test]
    fn reply_kinds_match_commands() {
        use crate::reply::{RunState, StatusInfo};
        let status = QmpReply::Status(StatusInfo {
            status: RunState::Running,
        });
        assert!(QmpCommand::QueryStatus.accepts(&status));
        assert!(!QmpCommand::QueryStatus.accepts(&QmpReply::Empty));
        assert!(QmpCommand::Stop.accepts(&QmpReply::Empty));
        assert!(!QmpCommand::Stop.accepts(&status));
        assert!(QmpCommand::QueryMigrate.accepts(&QmpReply::Migration(Box::default())));
    }
}
