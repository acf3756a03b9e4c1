//! The control socket's adapter: QMP commands become the VMM controller's commands, and
//! its replies, errors and events become QMP's. The only place where the two meet: the
//! controller never sees JSON or QMP types, and the `qmp` crate never sees the VMM.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use migration::{
    engine::{chain, Progress, Status, ZeroPages},
    recovery::hex,
};
use qmp::{
    AbortIncomingInfo, ControlError as QmpError, HelperInfo, InetAddress, MigrationInfo,
    MigrationStats, MigrationStatus, QmpCommand, QmpEvent, QmpReply, SevCapability, SevGuestType,
    SevInfo, SevLaunchMeasureInfo, SevState, StatusInfo,
};
use sev_platform::backend::SecretHeader;
use std::{path::PathBuf, sync::Arc, time::Duration};
use vmm::{
    control::{
        Command, ControlError, ControllerHandle, Event, HelperState, HelperStatus, LaunchSecret,
        MigrateTo, MigrationEvent, MigrationParameters, Reply, RunState, ShutdownCause,
    },
    migrate::Direction,
};

/// The controller behind a QMP server.
pub struct QmpAdapter {
    handle: Arc<ControllerHandle>,
}

impl QmpAdapter {
    /// Serves QMP with the controller behind `handle`.
    pub fn new(handle: Arc<ControllerHandle>) -> QmpAdapter {
        QmpAdapter { handle }
    }
}

impl qmp::Controller for QmpAdapter {
    fn execute(&self, cmd: QmpCommand) -> Result<QmpReply, QmpError> {
        let cmd = command(cmd)?;
        self.handle.execute(cmd).map(reply).map_err(|e| error(&e))
    }
}

/// The controller's command for a QMP command; the arguments QMP carries as text (base64
/// packets, the URI) are decoded here.
pub fn command(cmd: QmpCommand) -> Result<Command, QmpError> {
    Ok(match cmd {
        QmpCommand::QueryStatus => Command::QueryStatus,
        QmpCommand::Cont => Command::Cont,
        QmpCommand::Stop => Command::Stop,
        QmpCommand::Quit => Command::Quit,
        QmpCommand::QuerySev => Command::QuerySev,
        QmpCommand::QuerySevLaunchMeasure => Command::QueryLaunchMeasure,
        QmpCommand::SevInjectLaunchSecret(args) => {
            let header = B64
                .decode(args.packet_header.trim())
                .map_err(|e| QmpError::generic(format!("packet-header is not base64: {e}")))?;
            let header = SecretHeader::from_bytes(&header).ok_or_else(|| {
                QmpError::generic(format!(
                    "packet-header must be {} bytes",
                    SecretHeader::SIZE
                ))
            })?;
            let secret = B64
                .decode(args.secret.trim())
                .map_err(|e| QmpError::generic(format!("secret is not base64: {e}")))?;
            Command::InjectLaunchSecret(LaunchSecret {
                header,
                secret,
                gpa: args.gpa,
            })
        }
        QmpCommand::QuerySevCapabilities => Command::QuerySevCapabilities,
        QmpCommand::QueryHelper => Command::QueryHelper,
        QmpCommand::Migrate(m) => Command::Migrate(MigrateTo {
            uri: m
                .uri
                .parse()
                .map_err(|e: migration::uri::UriError| QmpError::generic(e.to_string()))?,
            commit_file: m.commit_file.map(PathBuf::from),
        }),
        QmpCommand::QueryMigrate => Command::QueryMigrate,
        QmpCommand::MigrateCancel => Command::MigrateCancel,
        QmpCommand::MigrateSetParameters(p) => {
            Command::SetMigrationParameters(MigrationParameters {
                downtime_limit: p.downtime_limit.map(Duration::from_millis),
                max_bandwidth: p.max_bandwidth,
                zero_pages: p.zero_page_records.map(|leak| match leak {
                    true => ZeroPages::ShortRecords,
                    false => ZeroPages::Sealed,
                }),
            })
        }
        QmpCommand::MigrateRelease(r) => Command::MigrateRelease(PathBuf::from(r.token_file)),
        QmpCommand::MigrateCommit(c) => Command::MigrateCommit(PathBuf::from(c.commit_file)),
        QmpCommand::MigrateAbortIncoming(a) => {
            Command::MigrateAbortIncoming(a.token_file.map(PathBuf::from))
        }
    })
}

/// QMP's name of a run state.
pub fn run_state(s: RunState) -> qmp::RunState {
    match s {
        RunState::Prelaunch => qmp::RunState::Prelaunch,
        RunState::Running => qmp::RunState::Running,
        RunState::Paused => qmp::RunState::Paused,
        RunState::InMigrate => qmp::RunState::InMigrate,
        RunState::FinishMigrate => qmp::RunState::FinishMigrate,
        RunState::PostMigrate => qmp::RunState::PostMigrate,
        RunState::Shutdown => qmp::RunState::Shutdown,
        RunState::InternalError => qmp::RunState::InternalError,
    }
}

/// QMP's reply for a controller reply.
pub fn reply(r: Reply) -> QmpReply {
    match r {
        Reply::Done => QmpReply::Empty,
        Reply::Status(s) => QmpReply::Status(StatusInfo {
            status: run_state(s),
        }),
        Reply::Sev { platform, guest } => QmpReply::Sev(SevInfo {
            enabled: true,
            api_major: platform.api_major,
            api_minor: platform.api_minor,
            build_id: platform.build,
            policy: guest.policy.0,
            state: SevState::from_name(guest.state.qemu_name()).unwrap_or(SevState::Uninit),
            handle: guest.handle,
            sev_type: SevGuestType::Sev,
        }),
        Reply::LaunchMeasure(m) => QmpReply::SevLaunchMeasure(SevLaunchMeasureInfo {
            data: B64.encode(m.0),
        }),
        Reply::SevCapabilities(c) => QmpReply::SevCapabilities(SevCapability {
            pdh: B64.encode(&c.pdh),
            cert_chain: B64.encode(&c.cert_chain),
            cpu0_id: B64.encode(&c.chip_id),
            // What the guest's CPUID 0x8000001F announces: 0 and 0 on the emulated
            // platform, which encrypts at the host boundary (docs/architecture.md §3).
            cbitpos: c.cbitpos,
            reduced_phys_bits: c.reduced_phys_bits,
        }),
        Reply::Helper(h) => QmpReply::Helper(helper_info(h)),
        Reply::Migration(m) => {
            let mut info = match &m.job {
                Some(job) => {
                    let mut info = info(&job.progress, job.cancelling, job.listening);
                    if job.direction == Direction::Incoming && job.progress.status == Status::None {
                        // Listening, nothing received yet: QEMU says "setup".
                        info.status = Some(MigrationStatus::Setup);
                    }
                    info
                }
                None => MigrationInfo::default(),
            };
            if let Some(job) = &m.job {
                let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
                info.session = job.progress.transcript.map(|t| hex(&t));
                info.commit_file = path(&job.commit_file);
                info.abort_token_file = path(&job.abort_token_file);
            }
            if !m.blocked.is_empty() {
                info.blocked_reasons = Some(m.blocked.iter().map(ToString::to_string).collect());
            }
            QmpReply::Migration(Box::new(info))
        }
        Reply::Aborted {
            transcript,
            token_file,
        } => QmpReply::AbortIncoming(AbortIncomingInfo {
            session: (transcript != [0; 32]).then(|| hex(&transcript)),
            token_file: token_file.map(|p| p.display().to_string()),
        }),
    }
}

fn helper_info(h: HelperStatus) -> HelperInfo {
    HelperInfo {
        state: match h.state {
            HelperState::None => qmp::HelperState::None,
            HelperState::Ready => qmp::HelperState::Ready,
            HelperState::Failed => qmp::HelperState::Failed,
        },
        vcpus: h.vcpus,
        region_base: h.region_base,
        region_size: h.region_size,
        descriptor_version: h.descriptor_version,
        requests: h.requests,
        bytes_sealed: h.bytes_sealed,
        bytes_opened: h.bytes_opened,
    }
}

/// QMP's error for a controller error: QEMU's wording for an illegal command, the error
/// and its causes on one line for the rest.
pub fn error(e: &ControlError) -> QmpError {
    match e {
        ControlError::NotPermitted { command, state } => {
            QmpError::not_permitted(command, run_state(*state))
        }
        other => QmpError::generic(chain(other)),
    }
}

/// QMP's event for a controller event.
pub fn event(e: Event) -> QmpEvent {
    match e {
        Event::Resume => QmpEvent::Resume,
        Event::Stop => QmpEvent::Stop,
        Event::Shutdown(cause) => QmpEvent::Shutdown {
            reason: match cause {
                ShutdownCause::HostQuit => qmp::ShutdownCause::HostQmpQuit,
                ShutdownCause::HostSignal => qmp::ShutdownCause::HostSignal,
                ShutdownCause::GuestShutdown => qmp::ShutdownCause::GuestShutdown,
                ShutdownCause::GuestPanic => qmp::ShutdownCause::GuestPanic,
            },
        },
        Event::Migration(m) => QmpEvent::Migration {
            status: match m {
                MigrationEvent::Setup => MigrationStatus::Setup,
                MigrationEvent::Completed => MigrationStatus::Completed,
                MigrationEvent::Failed => MigrationStatus::Failed,
                MigrationEvent::Cancelled => MigrationStatus::Cancelled,
                MigrationEvent::AwaitingAbort => MigrationStatus::AwaitingAbort,
            },
        },
    }
}

/// QEMU's status name for an engine status.
pub fn status(s: Status) -> MigrationStatus {
    match s {
        Status::None => MigrationStatus::None,
        Status::Setup => MigrationStatus::Setup,
        Status::Active => MigrationStatus::Active,
        Status::Completed => MigrationStatus::Completed,
        Status::Failed => MigrationStatus::Failed,
        Status::Cancelled => MigrationStatus::Cancelled,
        Status::Committing => MigrationStatus::Committing,
        Status::AwaitingAbort => MigrationStatus::AwaitingAbort,
        Status::AwaitingCommit => MigrationStatus::AwaitingCommit,
    }
}

/// The reply to `query-migrate` for a migration with these figures. `cancelling` is
/// set while a cancelled migration's thread winds down.
pub fn info(
    p: &Progress,
    cancelling: bool,
    listening: Option<std::net::SocketAddr>,
) -> MigrationInfo {
    let st = if cancelling && matches!(p.status, Status::Setup | Status::Active) {
        MigrationStatus::Cancelling
    } else {
        status(p.status)
    };
    let with_ram = matches!(p.status, Status::Active | Status::Completed);
    let normal = p.pages.saturating_sub(p.zero_pages);
    let seconds = (p.total_ms as f64 / 1e3).max(1e-3);
    MigrationInfo {
        status: Some(st),
        ram: with_ram.then(|| MigrationStats {
            transferred: p.transferred_bytes,
            remaining: p.remaining_bytes,
            total: p.total_bytes,
            duplicate: p.zero_pages,
            normal,
            normal_bytes: normal * 4096,
            dirty_pages_rate: p.dirty_rate,
            mbps: p.throughput as f64 * 8.0 / 1e6,
            dirty_sync_count: u64::from(p.rounds),
            page_size: 4096,
            pages_per_second: (p.pages as f64 / seconds) as u64,
            precopy_bytes: 0,
            downtime_bytes: 0,
        }),
        total_time: (p.status != Status::None).then_some(p.total_ms),
        expected_downtime: (p.status == Status::Active).then_some(p.expected_downtime_ms),
        downtime: if p.status == Status::Completed {
            p.downtime_ms
        } else {
            None
        },
        setup_time: with_ram.then_some(p.setup_ms),
        // Why it failed, or why it waits (a committed session that needs an operator).
        error_desc: if matches!(
            p.status,
            Status::Failed | Status::AwaitingAbort | Status::AwaitingCommit
        ) {
            p.error.clone()
        } else {
            None
        },
        blocked_reasons: None,
        socket_address: listening.map(|a| {
            vec![InetAddress {
                host: a.ip().to_string(),
                port: a.port(),
            }]
        }),
        session: None,
        commit_file: None,
        abort_token_file: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::control::{Blocker, JobStatus, MigrationStatus as Status2};

    #[test]
    fn qmp_arguments_are_decoded_or_refused_with_qemu_style_errors() {
        let secret = |header: &str, secret: &str| {
            command(QmpCommand::SevInjectLaunchSecret(
                qmp::SevInjectLaunchSecret {
                    packet_header: header.into(),
                    secret: secret.into(),
                    gpa: None,
                },
            ))
        };
        let e = secret("not base64!", "AAAA").unwrap_err();
        assert!(e.desc.starts_with("packet-header is not base64"), "{e}");
        let e = secret("AAAA", "AAAA").unwrap_err();
        assert_eq!(
            e.desc,
            format!("packet-header must be {} bytes", SecretHeader::SIZE)
        );
        let header = B64.encode([0u8; SecretHeader::SIZE]);
        let e = secret(&header, "%%").unwrap_err();
        assert!(e.desc.starts_with("secret is not base64"), "{e}");
        assert!(matches!(
            secret(&header, "AAAA"),
            Ok(Command::InjectLaunchSecret(LaunchSecret { ref secret, gpa: None, .. })) if secret == &[0, 0, 0]
        ));
        let e = command(QmpCommand::Migrate(qmp::Migrate {
            uri: "unix:/x".into(),
            commit_file: None,
        }))
        .unwrap_err();
        assert_eq!(e.class, qmp::ErrorClass::GenericError);
        assert!(matches!(
            command(QmpCommand::MigrateSetParameters(qmp::MigrateSetParameters {
                downtime_limit: Some(250),
                max_bandwidth: None,
                zero_page_records: Some(true),
            })),
            Ok(Command::SetMigrationParameters(MigrationParameters {
                downtime_limit: Some(d),
                max_bandwidth: None,
                zero_pages: Some(ZeroPages::ShortRecords),
            })) if d == Duration::from_millis(250)
        ));
    }

    #[test]
    fn illegal_commands_read_like_qemus_and_other_errors_carry_their_causes() {
        let e = error(&ControlError::NotPermitted {
            command: "cont",
            state: RunState::PostMigrate,
        });
        assert_eq!(
            e.desc,
            "The command 'cont' isn't permitted in 'postmigrate' state"
        );
        let e = error(&ControlError::Start(vmm::vm::VmError::NotStarted));
        assert_eq!(e.desc, "cannot start the guest: the VM has not started");
        let e = error(&ControlError::Blocked(Blocker::SevEs));
        assert!(e.desc.starts_with("cannot migrate: SEV-ES guests"), "{e}");
    }

    #[test]
    fn events_and_migration_replies_map_to_qmps() {
        assert_eq!(
            event(Event::Shutdown(ShutdownCause::HostQuit)),
            QmpEvent::Shutdown {
                reason: qmp::ShutdownCause::HostQmpQuit
            }
        );
        assert_eq!(
            event(Event::Migration(MigrationEvent::Cancelled)),
            QmpEvent::Migration {
                status: MigrationStatus::Cancelled
            }
        );
        // An incoming migration that has received nothing yet is in "setup", and says
        // where it listens.
        let listening = "127.0.0.1:4444".parse().ok();
        let QmpReply::Migration(info) = reply(Reply::Migration(Status2 {
            job: Some(JobStatus {
                direction: Direction::Incoming,
                progress: Progress::default(),
                cancelling: false,
                listening,
                commit_file: None,
                abort_token_file: None,
            }),
            blocked: Vec::new(),
        })) else {
            panic!("not a migration reply");
        };
        assert_eq!(info.status, Some(MigrationStatus::Setup));
        assert_eq!(info.socket_address.unwrap()[0].port, 4444);
        assert!(info.blocked_reasons.is_none());
        let QmpReply::Migration(info) = reply(Reply::Migration(Status2 {
            job: None,
            blocked: vec![Blocker::NoSend(sev_platform::Policy(0x9))],
        })) else {
            panic!("not a migration reply");
        };
        assert!(info.status.is_none());
        assert!(info.blocked_reasons.unwrap()[0].contains("NOSEND"));
    }

    #[test]
    fn a_completed_migration_reports_its_downtime_and_a_failed_one_its_reason() {
        let done = Progress {
            status: Status::Completed,
            total_bytes: 1 << 30,
            transferred_bytes: 5 << 20,
            pages: 1000,
            zero_pages: 600,
            rounds: 3,
            downtime_ms: Some(12),
            total_ms: 2000,
            ..Progress::default()
        };
        let i = info(&done, false, None);
        assert_eq!(i.status, Some(MigrationStatus::Completed));
        assert_eq!(i.downtime, Some(12));
        let ram = i.ram.unwrap();
        assert_eq!(
            (ram.normal, ram.duplicate, ram.dirty_sync_count),
            (400, 600, 3)
        );
        assert_eq!(ram.pages_per_second, 500);
        assert!(i.error_desc.is_none() && i.expected_downtime.is_none());

        let failed = Progress {
            status: Status::Failed,
            error: Some("the target refused".into()),
            ..Progress::default()
        };
        let i = info(&failed, false, None);
        assert_eq!(i.error_desc.as_deref(), Some("the target refused"));
        assert!(i.ram.is_none() && i.downtime.is_none());

        let active = Progress {
            status: Status::Active,
            ..Progress::default()
        };
        assert_eq!(
            info(&active, true, None).status,
            Some(MigrationStatus::Cancelling)
        );
    }
}
