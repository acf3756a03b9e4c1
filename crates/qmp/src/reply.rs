//! Typed replies and events, encoded with QEMU's member names.
//!
//! Each type cites the QAPI schema it follows. Optional members are `Option`s and are left
//! out of the JSON when `None`, as QEMU leaves them out.

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::{json, Value};

/// Declares a C-like enum whose wire spelling is given per variant: the match arms are the
/// one table, from which `name`, `from_name`, `ALL` and `Serialize` are generated.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $var:ident = $wire:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $var, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var,)+];

            /// The wire spelling.
            pub fn name(self) -> &'static str {
                match self {
                    $( $name::$var => $wire, )+
                }
            }

            /// Decodes a wire spelling; `None` for one this build does not know.
            pub fn from_name(s: &str) -> Option<Self> {
                match s {
                    $( $wire => Some($name::$var), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.name())
            }
        }
    };
}

wire_enum! {
    /// The VM run state (`qapi/run-state.json`, `RunState`; the subset sevmirror uses).
    pub enum RunState {
        /// Started with `--paused` (QEMU `-S`); the guest has not run yet.
        Prelaunch = "prelaunch",
        /// The guest is running.
        Running = "running",
        /// Paused by `stop`.
        Paused = "paused",
        /// Waiting for an incoming migration.
        InMigrate = "inmigrate",
        /// Paused after a successful outgoing migration.
        PostMigrate = "postmigrate",
        /// Paused to finish an outgoing migration (stop-and-copy).
        FinishMigrate = "finish-migrate",
        /// The guest has shut down.
        Shutdown = "shutdown",
        /// An internal error prevents further guest execution.
        InternalError = "internal-error",
        /// The guest OS panicked.
        GuestPanicked = "guest-panicked",
    }
}

/// `query-status` (`qapi/run-state.json`, `StatusInfo`).
///
/// On the wire: `{"running": bool, "singlestep": false, "status": RunState}`. `running` is
/// derived from `status` as QEMU derives it (`runstate_is_running`); `singlestep` is the
/// member QEMU 7.2 still sends, always false here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusInfo {
    /// The run state.
    pub status: RunState,
}

impl Serialize for StatusInfo {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("StatusInfo", 3)?;
        st.serialize_field("running", &(self.status == RunState::Running))?;
        st.serialize_field("singlestep", &false)?;
        st.serialize_field("status", &self.status)?;
        st.end()
    }
}

wire_enum! {
    /// The SEV guest state (`qapi/misc-target.json`, `SevState`).
    pub enum SevState {
        /// Not initialised.
        Uninit = "uninit",
        /// Launch in progress: plaintext data and register state being imported.
        LaunchUpdate = "launch-update",
        /// Launch in progress: measured, ciphertext (secrets) being imported.
        LaunchSecret = "launch-secret",
        /// Fully launched or migrated in.
        Running = "running",
        /// Being migrated out.
        SendUpdate = "send-update",
        /// Being migrated in.
        ReceiveUpdate = "receive-update",
    }
}

wire_enum! {
    /// The kind of SEV guest (`qapi/misc-i386.json`, `SevGuestType`, QEMU ≥ 9.1).
    ///
    /// QEMU reports both SEV and SEV-ES guests as `"sev"` (SEV-ES is policy bit 2); its
    /// other value, `"sev-snp"`, is not supported by sevmirror.
    pub enum SevGuestType {
        /// A SEV or SEV-ES guest.
        Sev = "sev",
    }
}

/// `query-sev` (`qapi/misc-target.json`, `SevInfo`; `sev-type` as QEMU ≥ 9.1 adds it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SevInfo {
    /// True if SEV is active for this guest.
    pub enabled: bool,
    /// SEV API major version of the platform.
    pub api_major: u8,
    /// SEV API minor version of the platform.
    pub api_minor: u8,
    /// Firmware build id.
    pub build_id: u8,
    /// The guest policy.
    pub policy: u32,
    /// The guest state.
    pub state: SevState,
    /// The firmware guest handle.
    pub handle: u32,
    /// The kind of SEV guest.
    pub sev_type: SevGuestType,
}

/// `query-sev-launch-measure` (`qapi/misc-target.json`, `SevLaunchMeasureInfo`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SevLaunchMeasureInfo {
    /// The 48-byte LAUNCH_MEASURE blob (measurement ‖ mnonce), base64.
    pub data: String,
}

/// `query-sev-capabilities` (`qapi/misc-target.json`, `SevCapability`; `cpu0-id` since
/// QEMU 7.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct SevCapability {
    /// The platform Diffie-Hellman certificate, base64.
    pub pdh: String,
    /// The PDH certificate chain (PDH ‖ PEK ‖ OCA ‖ CEK), base64.
    pub cert_chain: String,
    /// The unique id of CPU 0 (GET_ID), base64.
    pub cpu0_id: String,
    /// The C-bit position in page table entries.
    pub cbitpos: u32,
    /// Physical address bits lost when SEV is enabled.
    pub reduced_phys_bits: u32,
}

wire_enum! {
    /// The migration helper's state (sevmirror's own, for `query-helper`).
    pub enum HelperState {
        /// No mirror VM attached.
        None = "none",
        /// Attached and idle.
        Ready = "ready",
        /// Serving a request.
        Busy = "busy",
        /// Stopped after an error; see the VMM log.
        Failed = "failed",
    }
}

/// `query-helper` (sevmirror's own command): the mirror VM's migration helper.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct HelperInfo {
    /// The helper's state.
    pub state: HelperState,
    /// Number of helper vCPUs.
    pub vcpus: u32,
    /// Guest-physical base of the helper region.
    pub region_base: u64,
    /// Size of the helper region in bytes.
    pub region_size: u64,
    /// Version of the firmware's helper descriptor.
    pub descriptor_version: u32,
    /// Requests served so far.
    pub requests: u64,
    /// Bytes of guest memory sealed (exported) so far.
    pub bytes_sealed: u64,
    /// Bytes of guest memory opened (imported) so far.
    pub bytes_opened: u64,
}

wire_enum! {
    /// Migration status (`qapi/migration.json`, `MigrationStatus`; the subset sevmirror
    /// reaches — no postcopy, COLO or switchover pauses — and sevmirror's own states of
    /// an SEV migration's commit, which QEMU does not have).
    pub enum MigrationStatus {
        /// No migration has happened.
        None = "none",
        /// Initiated, connecting and setting up.
        Setup = "setup",
        /// Being cancelled.
        Cancelling = "cancelling",
        /// Cancelled.
        Cancelled = "cancelled",
        /// Copying.
        Active = "active",
        /// Finished successfully.
        Completed = "completed",
        /// Failed; `error-desc` says why.
        Failed = "failed",
        /// Source (sevmirror's own): the helper committed the guest to the target and
        /// waits for its confirmation; the guest no longer runs here.
        Committing = "committing",
        /// Source (sevmirror's own): committed, and the target neither confirmed nor gave
        /// the session up; the guest stays stopped until `migrate-release` with an abort
        /// of the session (`session` names it, `commit-file` holds the commit).
        AwaitingAbort = "awaiting-abort",
        /// Target (sevmirror's own): the helper verified the whole guest and the stream
        /// ended before the commit; it waits for `migrate-commit` with the source's commit
        /// file, or `migrate-abort-incoming`.
        AwaitingCommit = "awaiting-commit",
    }
}

/// The `ram` member of `query-migrate` (`qapi/migration.json`, `MigrationStats`).
///
/// Encodes every member QEMU 7.2 defines (all mandatory there); the ones that have no
/// meaning here (`skipped`, `postcopy-requests`, `multifd-bytes`, `postcopy-bytes`,
/// `dirty-sync-missed-zero-copy`) are always 0.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrationStats {
    /// Bytes sent to the target so far.
    pub transferred: u64,
    /// Bytes still to send (estimate).
    pub remaining: u64,
    /// Total bytes of guest RAM involved.
    pub total: u64,
    /// Zero pages sent as such.
    pub duplicate: u64,
    /// Pages sent with their contents.
    pub normal: u64,
    /// Bytes of page contents sent.
    pub normal_bytes: u64,
    /// Pages dirtied per second by the guest.
    pub dirty_pages_rate: u64,
    /// Throughput, megabits per second.
    pub mbps: f64,
    /// Dirty-log synchronisations so far (the number of precopy rounds).
    pub dirty_sync_count: u64,
    /// Bytes per page for the page counters (4096).
    pub page_size: u64,
    /// Pages sent per second.
    pub pages_per_second: u64,
    /// Bytes sent while the guest ran.
    pub precopy_bytes: u64,
    /// Bytes sent while the guest was stopped.
    pub downtime_bytes: u64,
}

impl Serialize for MigrationStats {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("MigrationStats", 18)?;
        st.serialize_field("transferred", &self.transferred)?;
        st.serialize_field("remaining", &self.remaining)?;
        st.serialize_field("total", &self.total)?;
        st.serialize_field("duplicate", &self.duplicate)?;
        st.serialize_field("skipped", &0u64)?;
        st.serialize_field("normal", &self.normal)?;
        st.serialize_field("normal-bytes", &self.normal_bytes)?;
        st.serialize_field("dirty-pages-rate", &self.dirty_pages_rate)?;
        // A JSON number must be finite; a NaN rate would make the reply invalid.
        let mbps = if self.mbps.is_finite() {
            self.mbps
        } else {
            0.0
        };
        st.serialize_field("mbps", &mbps)?;
        st.serialize_field("dirty-sync-count", &self.dirty_sync_count)?;
        st.serialize_field("postcopy-requests", &0u64)?;
        st.serialize_field("page-size", &self.page_size)?;
        st.serialize_field("multifd-bytes", &0u64)?;
        st.serialize_field("pages-per-second", &self.pages_per_second)?;
        st.serialize_field("precopy-bytes", &self.precopy_bytes)?;
        st.serialize_field("downtime-bytes", &self.downtime_bytes)?;
        st.serialize_field("postcopy-bytes", &0u64)?;
        st.serialize_field("dirty-sync-missed-zero-copy", &0u64)?;
        st.end()
    }
}

/// An address the migration stream uses, encoded as QEMU's `SocketAddress` of type
/// `inet` (`qapi/sockets.json`): `{"type": "inet", "host": HOST, "port": "PORT"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InetAddress {
    /// Host name or address.
    pub host: String,
    /// TCP port (a string on the wire, as in QEMU).
    pub port: u16,
}

impl Serialize for InetAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("SocketAddress", 3)?;
        st.serialize_field("type", "inet")?;
        st.serialize_field("host", &self.host)?;
        st.serialize_field("port", &self.port.to_string())?;
        st.end()
    }
}

/// `query-migrate` (`qapi/migration.json`, `MigrationInfo`, QEMU 7.2 members sevmirror
/// can fill). `MigrationInfo::default()` encodes as `{}`, QEMU's answer before the first
/// migration.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct MigrationInfo {
    /// Current status; absent before any migration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<MigrationStatus>,
    /// RAM statistics; present while `active` and once `completed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ram: Option<MigrationStats>,
    /// Milliseconds since the migration started (its total once ended).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_time: Option<u64>,
    /// Expected downtime in milliseconds; only while active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_downtime: Option<u64>,
    /// Actual downtime in milliseconds; only once completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downtime: Option<u64>,
    /// Milliseconds spent in setup before the first round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub setup_time: Option<u64>,
    /// Why the migration failed; only when `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_desc: Option<String>,
    /// Why an outgoing migration is impossible (e.g. the NOSEND policy bit); present and
    /// non-empty only when blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_reasons: Option<Vec<String>>,
    /// The addresses actually listened on (incoming side), e.g. the port chosen for 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_address: Option<Vec<InetAddress>>,
    /// sevmirror's own: the SEV session's transcript hash, hex (what a commit file, an
    /// abort token and the guest owner's break-glass abort name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// sevmirror's own: where the source kept its commit record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_file: Option<String>,
    /// sevmirror's own: where the target kept its abort token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort_token_file: Option<String>,
}

/// `migrate-abort-incoming` (sevmirror's own): the session the target gave up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AbortIncomingInfo {
    /// The session's transcript hash, hex (absent if the key agreement did not complete:
    /// then nothing could have been committed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Where its abort token is (absent without a session).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<String>,
}

/// A command's successful result, as the [`Controller`](super::Controller) returns it.
#[derive(Clone, Debug, PartialEq)]
pub enum QmpReply {
    /// `{}`: the reply of commands that return nothing (`cont`, `stop`, `quit`,
    /// `migrate`, `migrate_cancel`, `migrate-set-parameters`, `sev-inject-launch-secret`).
    Empty,
    /// `query-status`.
    Status(StatusInfo),
    /// `query-sev`.
    Sev(SevInfo),
    /// `query-sev-launch-measure`.
    SevLaunchMeasure(SevLaunchMeasureInfo),
    /// `query-sev-capabilities`.
    SevCapabilities(SevCapability),
    /// `query-helper`.
    Helper(HelperInfo),
    /// `query-migrate` (boxed: by far the largest reply).
    Migration(Box<MigrationInfo>),
    /// `migrate-abort-incoming`.
    AbortIncoming(AbortIncomingInfo),
}

impl QmpReply {
    /// A short name of the variant, for diagnostics.
    pub fn kind(&self) -> &'static str {
        match self {
            QmpReply::Empty => "empty",
            QmpReply::Status(_) => "status",
            QmpReply::Sev(_) => "sev",
            QmpReply::SevLaunchMeasure(_) => "sev-launch-measure",
            QmpReply::SevCapabilities(_) => "sev-capabilities",
            QmpReply::Helper(_) => "helper",
            QmpReply::Migration(_) => "migration",
            QmpReply::AbortIncoming(_) => "abort-incoming",
        }
    }
}

impl Serialize for QmpReply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            QmpReply::Empty => s.serialize_map(Some(0))?.end(),
            QmpReply::Status(v) => v.serialize(s),
            QmpReply::Sev(v) => v.serialize(s),
            QmpReply::SevLaunchMeasure(v) => v.serialize(s),
            QmpReply::SevCapabilities(v) => v.serialize(s),
            QmpReply::Helper(v) => v.serialize(s),
            QmpReply::Migration(v) => v.serialize(s),
            QmpReply::AbortIncoming(v) => v.serialize(s),
        }
    }
}

wire_enum! {
    /// Why the VM shut down (`qapi/run-state.json`, `ShutdownCause`; the subset sevmirror
    /// produces).
    pub enum ShutdownCause {
        /// An error prevents further use of the guest.
        HostError = "host-error",
        /// The QMP command `quit`.
        HostQmpQuit = "host-qmp-quit",
        /// A signal such as SIGINT or SIGTERM.
        HostSignal = "host-signal",
        /// The guest asked to shut down.
        GuestShutdown = "guest-shutdown",
        /// The guest asked to reset, and a reset means shutdown here.
        GuestReset = "guest-reset",
        /// The guest panicked.
        GuestPanic = "guest-panic",
    }
}

impl ShutdownCause {
    /// True for the causes QEMU counts as guest-initiated (`shutdown_caused_by_guest`).
    pub fn caused_by_guest(self) -> bool {
        match self {
            ShutdownCause::HostError | ShutdownCause::HostQmpQuit | ShutdownCause::HostSignal => {
                false
            }
            ShutdownCause::GuestShutdown
            | ShutdownCause::GuestReset
            | ShutdownCause::GuestPanic => true,
        }
    }
}

/// An asynchronous event, sent to every negotiated client with QEMU's name and data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QmpEvent {
    /// `STOP`: the guest stopped running (`qapi/run-state.json`).
    Stop,
    /// `RESUME`: the guest resumed (`qapi/run-state.json`).
    Resume,
    /// `SHUTDOWN` with `{"guest": bool, "reason": ShutdownCause}`; `guest` is derived from
    /// the cause (`qapi/run-state.json`).
    Shutdown {
        /// Why.
        reason: ShutdownCause,
    },
    /// `MIGRATION` with `{"status": MigrationStatus}` (`qapi/migration.json`).
    Migration {
        /// The new status.
        status: MigrationStatus,
    },
    /// `MIGRATION_PASS` with `{"pass": N}`, at the start of each precopy round, from 1
    /// (`qapi/migration.json`).
    MigrationPass {
        /// The round number.
        pass: u64,
    },
}

impl QmpEvent {
    /// The event name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            QmpEvent::Stop => "STOP",
            QmpEvent::Resume => "RESUME",
            QmpEvent::Shutdown { .. } => "SHUTDOWN",
            QmpEvent::Migration { .. } => "MIGRATION",
            QmpEvent::MigrationPass { .. } => "MIGRATION_PASS",
        }
    }

    /// The `data` member, or `None` where QEMU sends none.
    pub fn data(&self) -> Option<Value> {
        match self {
            QmpEvent::Stop | QmpEvent::Resume => None,
            QmpEvent::Shutdown { reason } => Some(json!({
                "guest": reason.caused_by_guest(),
                "reason": reason.name(),
            })),
            QmpEvent::Migration { status } => Some(json!({ "status": status.name() })),
            QmpEvent::MigrationPass { pass } => Some(json!({ "pass": pass })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn enc<T: Serialize>(v: &T) -> Value {
        serde_json::to_value(v).unwrap()
    }

    /// Every spelling round-trips, matches the expected QEMU text, and an unknown one is
    /// refused.
    fn check_enum<T: Copy + PartialEq + std::fmt::Debug + Serialize>(
        all: &[T],
        name: fn(T) -> &'static str,
        from: fn(&str) -> Option<T>,
        expected: &[&str],
    ) {
        let names: Vec<&str> = all.iter().map(|v| name(*v)).collect();
        assert_eq!(names, expected);
        for v in all {
            assert_eq!(from(name(*v)), Some(*v));
            assert_eq!(enc(v), json!(name(*v)));
        }
        assert_eq!(from("no-such-value"), None);
        assert_eq!(from(""), None);
    }

    #[test]
    fn enum_spellings_are_qemus() {
        check_enum(
            RunState::ALL,
            RunState::name,
            RunState::from_name,
            &[
                "prelaunch",
                "running",
                "paused",
                "inmigrate",
                "postmigrate",
                "finish-migrate",
                "shutdown",
                "internal-error",
                "guest-panicked",
            ],
        );
        check_enum(
            SevState::ALL,
            SevState::name,
            SevState::from_name,
            &[
                "uninit",
                "launch-update",
                "launch-secret",
                "running",
                "send-update",
                "receive-update",
            ],
        );
        check_enum(
            SevGuestType::ALL,
            SevGuestType::name,
            SevGuestType::from_name,
            &["sev"],
        );
        check_enum(
            HelperState::ALL,
            HelperState::name,
            HelperState::from_name,
            &["none", "ready", "busy", "failed"],
        );
        check_enum(
            MigrationStatus::ALL,
            MigrationStatus::name,
            MigrationStatus::from_name,
            &[
                "none",
                "setup",
                "cancelling",
                "cancelled",
                "active",
                "completed",
                "failed",
                "committing",
                "awaiting-abort",
                "awaiting-commit",
            ],
        );
        check_enum(
            ShutdownCause::ALL,
            ShutdownCause::name,
            ShutdownCause::from_name,
            &[
                "host-error",
                "host-qmp-quit",
                "host-signal",
                "guest-shutdown",
                "guest-reset",
                "guest-panic",
            ],
        );
    }

    #[test]
    fn status_info_derives_running_from_the_state() {
        assert_eq!(
            enc(&StatusInfo {
                status: RunState::Running
            }),
            json!({"running": true, "singlestep": false, "status": "running"})
        );
        for s in RunState::ALL.iter().filter(|s| **s != RunState::Running) {
            assert_eq!(
                enc(&StatusInfo { status: *s })["running"],
                json!(false),
                "{s}"
            );
        }
    }

    #[test]
    fn sev_replies_use_qemu_member_names() {
        let info = SevInfo {
            enabled: true,
            api_major: 0,
            api_minor: 24,
            build_id: 15,
            policy: 0x1,
            state: SevState::LaunchSecret,
            handle: 1,
            sev_type: SevGuestType::Sev,
        };
        assert_eq!(
            enc(&info),
            json!({"enabled": true, "api-major": 0, "api-minor": 24, "build-id": 15,
                   "policy": 1, "state": "launch-secret", "handle": 1, "sev-type": "sev"})
        );
        assert_eq!(
            enc(&SevLaunchMeasureInfo {
                data: "AAAA".into()
            }),
            json!({"data": "AAAA"})
        );
        let cap = SevCapability {
            pdh: "cGRo".into(),
            cert_chain: "Y2hhaW4=".into(),
            cpu0_id: "aWQ=".into(),
            cbitpos: 51,
            reduced_phys_bits: 1,
        };
        assert_eq!(
            enc(&cap),
            json!({"pdh": "cGRo", "cert-chain": "Y2hhaW4=", "cpu0-id": "aWQ=",
                   "cbitpos": 51, "reduced-phys-bits": 1})
        );
    }

    #[test]
    fn helper_info_is_kebab_case() {
        let h = HelperInfo {
            state: HelperState::Ready,
            vcpus: 2,
            region_base: 0x7f0_0000,
            region_size: 0x40_0000,
            descriptor_version: 1,
            requests: 10,
            bytes_sealed: 4096,
            bytes_opened: 0,
        };
        assert_eq!(
            enc(&h),
            json!({"state": "ready", "vcpus": 2, "region-base": 0x7f0_0000u64,
                   "region-size": 0x40_0000u64, "descriptor-version": 1, "requests": 10,
                   "bytes-sealed": 4096, "bytes-opened": 0})
        );
    }

    #[test]
    fn migration_info_before_the_first_migration_is_empty() {
        assert_eq!(enc(&MigrationInfo::default()), json!({}));
        let failed = MigrationInfo {
            status: Some(MigrationStatus::Failed),
            error_desc: Some("target refused the manifest".into()),
            ..Default::default()
        };
        assert_eq!(
            enc(&failed),
            json!({"status": "failed", "error-desc": "target refused the manifest"})
        );
    }

    #[test]
    fn a_committed_migration_names_its_session_and_recovery_files() {
        let info = MigrationInfo {
            status: Some(MigrationStatus::AwaitingAbort),
            error_desc: Some("no Ack".into()),
            session: Some("ab".repeat(32)),
            commit_file: Some("/run/sevmirror/c.bin".into()),
            ..Default::default()
        };
        assert_eq!(
            enc(&info),
            json!({"status": "awaiting-abort", "error-desc": "no Ack",
                   "session": "ab".repeat(32), "commit-file": "/run/sevmirror/c.bin"})
        );
        assert_eq!(
            enc(&QmpReply::AbortIncoming(AbortIncomingInfo {
                session: Some("cd".repeat(32)),
                token_file: Some("/t.bin".into()),
            })),
            json!({"session": "cd".repeat(32), "token-file": "/t.bin"})
        );
        assert_eq!(
            enc(&QmpReply::AbortIncoming(AbortIncomingInfo::default())),
            json!({})
        );
    }

    #[test]
    fn migration_info_encodes_every_qemu_7_2_ram_member() {
        let info = MigrationInfo {
            status: Some(MigrationStatus::Completed),
            ram: Some(MigrationStats {
                transferred: 1,
                remaining: 2,
                total: 3,
                duplicate: 4,
                normal: 5,
                normal_bytes: 6,
                dirty_pages_rate: 7,
                mbps: 8.5,
                dirty_sync_count: 9,
                page_size: 4096,
                pages_per_second: 10,
                precopy_bytes: 11,
                downtime_bytes: 12,
            }),
            total_time: Some(100),
            expected_downtime: None,
            downtime: Some(20),
            setup_time: Some(3),
            error_desc: None,
            blocked_reasons: Some(vec!["policy has NOSEND".into()]),
            socket_address: Some(vec![InetAddress {
                host: "127.0.0.1".into(),
                port: 4444,
            }]),
            session: None,
            commit_file: None,
            abort_token_file: None,
        };
        assert_eq!(
            enc(&info),
            json!({
                "status": "completed",
                "ram": {"transferred": 1, "remaining": 2, "total": 3, "duplicate": 4,
                        "skipped": 0, "normal": 5, "normal-bytes": 6,
                        "dirty-pages-rate": 7, "mbps": 8.5, "dirty-sync-count": 9,
                        "postcopy-requests": 0, "page-size": 4096, "multifd-bytes": 0,
                        "pages-per-second": 10, "precopy-bytes": 11, "downtime-bytes": 12,
                        "postcopy-bytes": 0, "dirty-sync-missed-zero-copy": 0},
                "total-time": 100, "downtime": 20, "setup-time": 3,
                "blocked-reasons": ["policy has NOSEND"],
                "socket-address": [{"type": "inet", "host": "127.0.0.1", "port": "4444"}]
            })
        );
    }

    #[test]
    fn a_non_finite_rate_still_encodes_as_json() {
        let stats = MigrationStats {
            mbps: f64::NAN,
            ..Default::default()
        };
        assert_eq!(enc(&stats)["mbps"], json!(0.0));
    }

    #[test]
    fn empty_reply_is_an_empty_object() {
        assert_eq!(enc(&QmpReply::Empty), json!({}));
        assert_eq!(
            enc(&QmpReply::Status(StatusInfo {
                status: RunState::Paused
            })),
            json!({"running": false, "singlestep": false, "status": "paused"})
        );
    }

    #[test]
    fn events_carry_qemu_names_and_data() {
        assert_eq!(QmpEvent::Stop.name(), "STOP");
        assert_eq!(QmpEvent::Stop.data(), None);
        assert_eq!(QmpEvent::Resume.name(), "RESUME");
        let quit = QmpEvent::Shutdown {
            reason: ShutdownCause::HostQmpQuit,
        };
        assert_eq!(quit.name(), "SHUTDOWN");
        assert_eq!(
            quit.data(),
            Some(json!({"guest": false, "reason": "host-qmp-quit"}))
        );
        let guest = QmpEvent::Shutdown {
            reason: ShutdownCause::GuestShutdown,
        };
        assert_eq!(
            guest.data(),
            Some(json!({"guest": true, "reason": "guest-shutdown"}))
        );
        let m = QmpEvent::Migration {
            status: MigrationStatus::Completed,
        };
        assert_eq!(
            (m.name(), m.data()),
            ("MIGRATION", Some(json!({"status": "completed"})))
        );
        let p = QmpEvent::MigrationPass { pass: 3 };
        assert_eq!(
            (p.name(), p.data()),
            ("MIGRATION_PASS", Some(json!({"pass": 3})))
        );
    }
}
