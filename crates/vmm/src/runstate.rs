//! The VM's run state as the control socket reports it (QEMU's `RunState` names), and
//! the one function that moves it.

use std::fmt;

/// Where the VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    /// Created but never run (an SEV guest waiting for its owner, or `--paused`).
    Prelaunch,
    /// vCPUs running.
    Running,
    /// Stopped by the operator (`stop`).
    Paused,
    /// A migration target waiting for (or receiving) the guest.
    InMigrate,
    /// A migration source in stop-and-copy.
    FinishMigrate,
    /// A migration source whose guest now runs on the target.
    PostMigrate,
    /// The guest stopped itself.
    Shutdown,
    /// A vCPU failed.
    InternalError,
}

impl RunState {
    /// QEMU's name (`query-status` "status").
    pub fn qemu_name(self) -> &'static str {
        match self {
            RunState::Prelaunch => "prelaunch",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::InMigrate => "inmigrate",
            RunState::FinishMigrate => "finish-migrate",
            RunState::PostMigrate => "postmigrate",
            RunState::Shutdown => "shutdown",
            RunState::InternalError => "internal-error",
        }
    }

    /// Whether guest code runs.
    pub fn is_running(self) -> bool {
        self == RunState::Running
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qemu_name())
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunEvent {
    /// `cont`.
    Continue,
    /// `stop`.
    Stop,
    /// The source entered stop-and-copy.
    StopAndCopy,
    /// The migration completed (source: guest handed over; target: guest received).
    MigrationDone,
    /// The migration failed or was cancelled.
    MigrationFailed,
    /// The guest asked to stop.
    GuestExit,
    /// A vCPU failed.
    Failure,
}

/// A transition the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {event:?} while the VM is {from}")]
pub struct BadTransition {
    /// The state.
    pub from: RunState,
    /// The event.
    pub event: RunEvent,
}

/// The state after `event` in state `from`.
pub fn next(from: RunState, event: RunEvent) -> Result<RunState, BadTransition> {
    use RunEvent as E;
    use RunState as S;
    let bad = Err(BadTransition { from, event });
    match (from, event) {
        (S::Prelaunch | S::Paused, E::Continue) => Ok(S::Running),
        (S::Running, E::Continue) => Ok(S::Running),
        // As in QEMU: `cont` on an incoming VM lets it run once the migration lands (here
        // it also finishes an SEV launch, so the parked firmware can start its helper).
        (S::InMigrate, E::Continue) => Ok(S::InMigrate),
        (S::Running | S::Paused, E::Stop) => Ok(S::Paused),
        (S::Running | S::Paused, E::StopAndCopy) => Ok(S::FinishMigrate),
        (S::FinishMigrate, E::MigrationDone) => Ok(S::PostMigrate),
        (S::InMigrate, E::MigrationDone) => Ok(S::Running),
        (S::FinishMigrate, E::MigrationFailed) => Ok(S::Running),
        (S::InMigrate, E::MigrationFailed) => Ok(S::InMigrate),
        (S::Running | S::Paused | S::FinishMigrate | S::Prelaunch, E::GuestExit) => Ok(S::Shutdown),
        (_, E::Failure) => Ok(S::InternalError),
        (
            S::Prelaunch | S::PostMigrate | S::Shutdown | S::InternalError,
            E::Continue | E::Stop | E::StopAndCopy,
        )
        | (S::InMigrate, E::Stop | E::StopAndCopy)
        | (S::FinishMigrate, E::Continue | E::Stop | E::StopAndCopy)
        | (
            S::Prelaunch | S::Running | S::Paused | S::PostMigrate | S::Shutdown | S::InternalError,
            E::MigrationDone | E::MigrationFailed,
        )
        | (S::InMigrate | S::PostMigrate | S::Shutdown | S::InternalError, E::GuestExit) => bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: [RunState; 8] = [
        RunState::Prelaunch,
        RunState::Running,
        RunState::Paused,
        RunState::InMigrate,
        RunState::FinishMigrate,
        RunState::PostMigrate,
        RunState::Shutdown,
        RunState::InternalError,
    ];
    const EVENTS: [RunEvent; 7] = [
        RunEvent::Continue,
        RunEvent::Stop,
        RunEvent::StopAndCopy,
        RunEvent::MigrationDone,
        RunEvent::MigrationFailed,
        RunEvent::GuestExit,
        RunEvent::Failure,
    ];

    /// Every (state, event) pair, as a table: `-` is refused.
    #[test]
    fn transition_table() {
        use RunState as S;
        let expect: [[Option<RunState>; 7]; 8] = [
            // Continue, Stop, StopAndCopy, MigrationDone, MigrationFailed, GuestExit, Failure
            [
                Some(S::Running),
                None,
                None,
                None,
                None,
                Some(S::Shutdown),
                Some(S::InternalError),
            ],
            [
                Some(S::Running),
                Some(S::Paused),
                Some(S::FinishMigrate),
                None,
                None,
                Some(S::Shutdown),
                Some(S::InternalError),
            ],
            [
                Some(S::Running),
                Some(S::Paused),
                Some(S::FinishMigrate),
                None,
                None,
                Some(S::Shutdown),
                Some(S::InternalError),
            ],
            [
                Some(S::InMigrate),
                None,
                None,
                Some(S::Running),
                Some(S::InMigrate),
                None,
                Some(S::InternalError),
            ],
            [
                None,
                None,
                None,
                Some(S::PostMigrate),
                Some(S::Running),
                Some(S::Shutdown),
                Some(S::InternalError),
            ],
            [None, None, None, None, None, None, Some(S::InternalError)],
            [None, None, None, None, None, None, Some(S::InternalError)],
            [None, None, None, None, None, None, Some(S::InternalError)],
        ];
        for (i, &from) in STATES.iter().enumerate() {
            for (j, &event) in EVENTS.iter().enumerate() {
                let got = next(from, event).ok();
                assert_eq!(got, expect[i][j], "{from:?} + {event:?}");
            }
        }
    }

    #[test]
    fn refusals_name_the_state() {
        let e = next(RunState::Shutdown, RunEvent::Continue).unwrap_err();
        assert_eq!(e.to_string(), "cannot Continue while the VM is shutdown");
    }
}
