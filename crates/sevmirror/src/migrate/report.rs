//! `query-migrate`: the engine's figures in QEMU's `MigrationInfo` shape.

use crate::qmp::{InetAddress, MigrationInfo, MigrationStats, MigrationStatus};
use migration::engine::{Progress, Status};

/// QEMU's status name for an engine status.
pub fn status(s: Status) -> MigrationStatus {
    match s {
        Status::None => MigrationStatus::None,
        Status::Setup => MigrationStatus::Setup,
        Status::Active => MigrationStatus::Active,
        Status::Completed => MigrationStatus::Completed,
        Status::Failed => MigrationStatus::Failed,
        Status::Cancelled => MigrationStatus::Cancelled,
        // QMP's own states for these come with the VMM phase (issue 11); until then a
        // committing source shows as active and one awaiting an abort as failed.
        Status::Committing => MigrationStatus::Active,
        Status::AwaitingAbort => MigrationStatus::Failed,
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
        error_desc: if p.status == Status::Failed {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
