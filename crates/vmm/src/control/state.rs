//! The controller's state: one enum, the data each state needs carried in its variant, and
//! the one function that moves it. Pure: no VM, no KVM; the tests run anywhere.
//!
//! ```text
//!                cont                stop                 migrate: stop-and-copy
//!  Prelaunch ──────────▶ Running ◀──────────▶ Paused ─────────────────┐
//!   {launch}              │ ▲        cont                             ▼
//!                         │ └──── migration failed ──── FinishMigrate {resume}
//!                         │   (back to Running or Paused, as before)   │ completed
//!                         └──── stop-and-copy ──────────▶              ▼
//!                                                                 PostMigrate
//!   FinishMigrate ──committed, unconfirmed──▶ MigratedOut {resume, transcript}
//!   MigratedOut ──the session's abort verified (migrate-release)──▶ Running or Paused
//!  Incoming::Unstarted {launch} ──cont──▶ Booting ──firmware parked──▶ Parked
//!      ──stream starts──▶ Receiving ──guest received──▶ Running
//!  any state ──vCPU failure──▶ InternalError;   guest exit ──▶ Shutdown
//! ```
//!
//! [`RunState`] is the data-free name of a state as QMP's `query-status` reports it
//! (QEMU's `RunState` names); the four incoming sub-states all report `inmigrate`, and a
//! migrated-out source reports `postmigrate` like one whose migration completed (its
//! migration's own status, `awaiting-abort`, tells them apart).

use crate::sev::LaunchMeasured;
use std::fmt;

/// Where the VM is in its life, by QEMU's name (`query-status` "status").
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

/// Where a migration target is.
#[derive(Debug)]
pub enum Incoming {
    /// Not started yet. An SEV target carries its measured launch until its owner lets it
    /// finish (`cont`).
    Unstarted {
        /// The launch, while the owner may still inject secrets.
        launch: Option<LaunchMeasured>,
    },
    /// Started: the firmware boots and starts its migration helper.
    Booting,
    /// The firmware parked: it writes no more guest memory, which may now be replaced.
    Parked,
    /// The vCPUs are stopped and the stream writes guest memory.
    Receiving,
}

/// What a source returns to when its migration fails after stop-and-copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resume {
    /// The guest ran: it runs again.
    Running,
    /// The guest was paused: it stays paused (as in QEMU).
    Paused,
}

/// The controller's state.
#[derive(Debug)]
pub enum State {
    /// Built, never run. An SEV guest waiting for its owner carries its measured launch.
    Prelaunch {
        /// The launch, while the owner may still inject secrets.
        launch: Option<LaunchMeasured>,
    },
    /// vCPUs running (an outgoing migration may be copying in precopy).
    Running,
    /// Stopped by the operator.
    Paused,
    /// A migration target.
    Incoming(Incoming),
    /// A migration source in stop-and-copy.
    FinishMigrate {
        /// Where a failure returns to.
        resume: Resume,
    },
    /// The guest runs on the target now.
    PostMigrate,
    /// The source's helper committed the guest to a target that did not confirm: the
    /// guest is "migrated out" and must not run here unless an abort of that session
    /// (the target helper's token, or the guest owner's) verifies at the helper.
    MigratedOut {
        /// Where a verified abort returns to.
        resume: Resume,
        /// The committed session's transcript hash.
        transcript: [u8; 32],
    },
    /// The guest stopped itself, or a signal stopped the VM.
    Shutdown,
    /// A vCPU failed.
    InternalError,
}

impl State {
    /// The state's name for `query-status`.
    pub fn run_state(&self) -> RunState {
        match self {
            State::Prelaunch { .. } => RunState::Prelaunch,
            State::Running => RunState::Running,
            State::Paused => RunState::Paused,
            State::Incoming(_) => RunState::InMigrate,
            State::FinishMigrate { .. } => RunState::FinishMigrate,
            State::PostMigrate | State::MigratedOut { .. } => RunState::PostMigrate,
            State::Shutdown => RunState::Shutdown,
            State::InternalError => RunState::InternalError,
        }
    }

    /// The measured SEV launch waiting for its owner, if there is one.
    pub fn launch(&self) -> Option<&LaunchMeasured> {
        match self {
            State::Prelaunch { launch } | State::Incoming(Incoming::Unstarted { launch }) => {
                launch.as_ref()
            }
            _ => None,
        }
    }

    /// Whether the VM waits for (or receives) an incoming migration.
    pub fn is_incoming(&self) -> bool {
        matches!(self, State::Incoming(_))
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.run_state(), f)
    }
}

/// What moves the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// `cont` finished the launch (if any) and started the vCPUs.
    Launched,
    /// `cont` on a paused (or running) guest.
    Continue,
    /// `stop`.
    Stop,
    /// The firmware of an incoming VM reported CONFIGURED: it parks.
    Parked,
    /// The incoming stream starts writing guest memory (the vCPUs are stopped).
    Receive,
    /// The source entered stop-and-copy.
    StopAndCopy,
    /// The migration completed (source: guest handed over; target: guest received).
    MigrationDone,
    /// The outgoing migration failed after stop-and-copy.
    MigrationFailed,
    /// The outgoing migration's helper committed session `transcript` and no
    /// confirmation or abort of it came back.
    CommitUnconfirmed([u8; 32]),
    /// An abort of the committed session verified at the source's helper.
    Released,
    /// The guest asked to stop, or a termination signal arrived.
    GuestExit,
    /// A vCPU failed.
    Failure,
}

/// A transition the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot {trigger:?} while the VM is {from}")]
pub struct BadTransition {
    /// The state, by name.
    pub from: RunState,
    /// The trigger.
    pub trigger: Trigger,
}

/// The state after `trigger` in state `from`. Data a new state needs comes from the old
/// one (the launch is consumed by whoever finishes it before [`Trigger::Launched`]).
pub fn next(from: &State, trigger: Trigger) -> Result<State, BadTransition> {
    use Incoming as I;
    use State as S;
    use Trigger as T;
    let bad = Err(BadTransition {
        from: from.run_state(),
        trigger,
    });
    match (from, trigger) {
        (S::Prelaunch { .. }, T::Launched) => Ok(S::Running),
        (S::Incoming(I::Unstarted { .. }), T::Launched) => Ok(S::Incoming(I::Booting)),
        (S::Paused | S::Running, T::Continue) => Ok(S::Running),
        (S::Running | S::Paused, T::Stop) => Ok(S::Paused),
        (S::Incoming(I::Booting), T::Parked) => Ok(S::Incoming(I::Parked)),
        (S::Incoming(I::Parked), T::Receive) => Ok(S::Incoming(I::Receiving)),
        (S::Running, T::StopAndCopy) => Ok(S::FinishMigrate {
            resume: Resume::Running,
        }),
        (S::Paused, T::StopAndCopy) => Ok(S::FinishMigrate {
            resume: Resume::Paused,
        }),
        (S::FinishMigrate { .. }, T::MigrationDone) => Ok(S::PostMigrate),
        (S::Incoming(I::Receiving), T::MigrationDone) => Ok(S::Running),
        (S::FinishMigrate { resume }, T::MigrationFailed)
        | (S::MigratedOut { resume, .. }, T::Released) => Ok(match resume {
            Resume::Running => S::Running,
            Resume::Paused => S::Paused,
        }),
        (S::FinishMigrate { resume }, T::CommitUnconfirmed(transcript)) => Ok(S::MigratedOut {
            resume: *resume,
            transcript,
        }),
        (
            S::Prelaunch { .. }
            | S::Running
            | S::Paused
            | S::FinishMigrate { .. }
            | S::MigratedOut { .. },
            T::GuestExit,
        ) => Ok(S::Shutdown),
        (_, T::Failure) => Ok(S::InternalError),
        (
            S::Prelaunch { .. },
            T::Continue
            | T::Stop
            | T::Parked
            | T::Receive
            | T::StopAndCopy
            | T::MigrationDone
            | T::MigrationFailed
            | T::CommitUnconfirmed(_)
            | T::Released,
        )
        | (
            S::Running | S::Paused,
            T::Launched
            | T::Parked
            | T::Receive
            | T::MigrationDone
            | T::MigrationFailed
            | T::CommitUnconfirmed(_)
            | T::Released,
        )
        | (
            S::Incoming(I::Unstarted { .. }),
            T::Continue
            | T::Stop
            | T::Parked
            | T::Receive
            | T::StopAndCopy
            | T::MigrationDone
            | T::MigrationFailed
            | T::CommitUnconfirmed(_)
            | T::Released
            | T::GuestExit,
        )
        | (
            S::Incoming(I::Booting),
            T::Launched
            | T::Continue
            | T::Stop
            | T::Receive
            | T::StopAndCopy
            | T::MigrationDone
            | T::MigrationFailed
            | T::CommitUnconfirmed(_)
            | T::Released
            | T::GuestExit,
        )
        | (
            S::Incoming(I::Parked),
            T::Launched
            | T::Continue
            | T::Stop
            | T::Parked
            | T::StopAndCopy
            | T::MigrationDone
            | T::MigrationFailed
            | T::CommitUnconfirmed(_)
            | T::Released
            | T::GuestExit,
        )
        | (
            S::Incoming(I::Receiving),
            T::Launched
            | T::Continue
            | T::Stop
            | T::Parked
            | T::Receive
            | T::StopAndCopy
            | T::MigrationFailed
            | T::CommitUnconfirmed(_)
            | T::Released
            | T::GuestExit,
        )
        | (
            S::FinishMigrate { .. },
            T::Launched
            | T::Continue
            | T::Stop
            | T::Parked
            | T::Receive
            | T::StopAndCopy
            | T::Released,
        )
        | (
            S::MigratedOut { .. },
            T::Launched
            | T::Continue
            | T::Stop
            | T::Parked
            | T::Receive
            | T::StopAndCopy
            | T::MigrationDone
            | T::MigrationFailed
            | T::CommitUnconfirmed(_),
        )
        | (
            S::PostMigrate | S::Shutdown | S::InternalError,
            T::Launched
            | T::Continue
            | T::Stop
            | T::Parked
            | T::Receive
            | T::StopAndCopy
            | T::MigrationDone
            | T::MigrationFailed
            | T::CommitUnconfirmed(_)
            | T::Released
            | T::GuestExit,
        ) => bad,
    }
}

/// A control command, by kind (what [`check`] decides on).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandKind {
    /// `cont`.
    Cont,
    /// `stop`.
    Stop,
    /// `migrate`.
    Migrate,
    /// `sev-inject-launch-secret`.
    InjectSecret,
    /// `migrate-release`: an abort of the committed session lets the guest run again.
    Release,
    /// `migrate-commit` and `migrate-abort-incoming`: the operator decides an incoming
    /// session.
    ResolveIncoming,
    /// Everything else: queries, `quit`, `migrate_cancel`, `migrate-set-parameters`.
    Other,
}

/// What a command does in a state, decided before the VM is touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It acts.
    Act,
    /// It is legal but has nothing to do (`cont` on a running guest, `stop` on a paused one).
    Nothing,
    /// It is illegal in this state.
    Refused,
}

/// Whether `command` may run in `state`.
pub fn check(state: &State, command: CommandKind) -> Verdict {
    use CommandKind as C;
    use Incoming as I;
    use State as S;
    match (state, command) {
        (_, C::Other) => Verdict::Act,
        (S::Prelaunch { .. } | S::Incoming(I::Unstarted { .. }) | S::Paused, C::Cont) => {
            Verdict::Act
        }
        (S::Running | S::Incoming(I::Booting | I::Parked | I::Receiving), C::Cont) => {
            Verdict::Nothing
        }
        (S::Running, C::Stop) => Verdict::Act,
        (S::Paused, C::Stop) => Verdict::Nothing,
        (S::Running | S::Paused, C::Migrate) => Verdict::Act,
        (S::Prelaunch { launch: Some(_) }, C::InjectSecret)
        | (S::Incoming(I::Unstarted { launch: Some(_) }), C::InjectSecret) => Verdict::Act,
        (S::MigratedOut { .. }, C::Release) | (S::Incoming(_), C::ResolveIncoming) => Verdict::Act,
        (
            S::FinishMigrate { .. }
            | S::PostMigrate
            | S::MigratedOut { .. }
            | S::Shutdown
            | S::InternalError,
            C::Cont,
        )
        | (
            S::Prelaunch { .. }
            | S::Incoming(_)
            | S::FinishMigrate { .. }
            | S::PostMigrate
            | S::MigratedOut { .. }
            | S::Shutdown
            | S::InternalError,
            C::Stop | C::Migrate,
        )
        | (
            S::Prelaunch { launch: None }
            | S::Incoming(I::Unstarted { launch: None } | I::Booting | I::Parked | I::Receiving)
            | S::Running
            | S::Paused
            | S::FinishMigrate { .. }
            | S::PostMigrate
            | S::MigratedOut { .. }
            | S::Shutdown
            | S::InternalError,
            C::InjectSecret,
        )
        | (
            S::Prelaunch { .. }
            | S::Running
            | S::Paused
            | S::Incoming(_)
            | S::FinishMigrate { .. }
            | S::PostMigrate
            | S::Shutdown
            | S::InternalError,
            C::Release,
        )
        | (
            S::Prelaunch { .. }
            | S::Running
            | S::Paused
            | S::FinishMigrate { .. }
            | S::PostMigrate
            | S::MigratedOut { .. }
            | S::Shutdown
            | S::InternalError,
            C::ResolveIncoming,
        ) => Verdict::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One state of each kind, and its short name in the tables below.
    fn states() -> Vec<(&'static str, State)> {
        vec![
            ("pre", State::Prelaunch { launch: None }),
            ("run", State::Running),
            ("pau", State::Paused),
            (
                "in-u",
                State::Incoming(Incoming::Unstarted { launch: None }),
            ),
            ("in-b", State::Incoming(Incoming::Booting)),
            ("in-p", State::Incoming(Incoming::Parked)),
            ("in-r", State::Incoming(Incoming::Receiving)),
            (
                "fin-r",
                State::FinishMigrate {
                    resume: Resume::Running,
                },
            ),
            (
                "fin-p",
                State::FinishMigrate {
                    resume: Resume::Paused,
                },
            ),
            ("post", State::PostMigrate),
            (
                "out-r",
                State::MigratedOut {
                    resume: Resume::Running,
                    transcript: TH,
                },
            ),
            (
                "out-p",
                State::MigratedOut {
                    resume: Resume::Paused,
                    transcript: TH,
                },
            ),
            ("shut", State::Shutdown),
            ("err", State::InternalError),
        ]
    }

    const TH: [u8; 32] = [7; 32];

    const TRIGGERS: [Trigger; 12] = [
        Trigger::Launched,
        Trigger::Continue,
        Trigger::Stop,
        Trigger::Parked,
        Trigger::Receive,
        Trigger::StopAndCopy,
        Trigger::MigrationDone,
        Trigger::MigrationFailed,
        Trigger::CommitUnconfirmed(TH),
        Trigger::Released,
        Trigger::GuestExit,
        Trigger::Failure,
    ];

    /// The short name of a state's kind.
    fn name(s: &State) -> &'static str {
        match s {
            State::Prelaunch { .. } => "pre",
            State::Running => "run",
            State::Paused => "pau",
            State::Incoming(Incoming::Unstarted { .. }) => "in-u",
            State::Incoming(Incoming::Booting) => "in-b",
            State::Incoming(Incoming::Parked) => "in-p",
            State::Incoming(Incoming::Receiving) => "in-r",
            State::FinishMigrate {
                resume: Resume::Running,
            } => "fin-r",
            State::FinishMigrate {
                resume: Resume::Paused,
            } => "fin-p",
            State::PostMigrate => "post",
            State::MigratedOut {
                resume: Resume::Running,
                ..
            } => "out-r",
            State::MigratedOut {
                resume: Resume::Paused,
                ..
            } => "out-p",
            State::Shutdown => "shut",
            State::InternalError => "err",
        }
    }

    /// Every (state, trigger) pair: the state it leads to, `-` where it is refused.
    #[test]
    fn transition_table() {
        #[rustfmt::skip]
        let expect: [(&str, [&str; 12]); 14] = [
            //        Launched Continue Stop   Parked  Receive StopCopy Done    Failed  Commit   Released Exit    Failure
            ("pre",   ["run",  "-",     "-",   "-",    "-",    "-",     "-",    "-",    "-",     "-",     "shut", "err"]),
            ("run",   ["-",    "run",   "pau", "-",    "-",    "fin-r", "-",    "-",    "-",     "-",     "shut", "err"]),
            ("pau",   ["-",    "run",   "pau", "-",    "-",    "fin-p", "-",    "-",    "-",     "-",     "shut", "err"]),
            ("in-u",  ["in-b", "-",     "-",   "-",    "-",    "-",     "-",    "-",    "-",     "-",     "-",    "err"]),
            ("in-b",  ["-",    "-",     "-",   "in-p", "-",    "-",     "-",    "-",    "-",     "-",     "-",    "err"]),
            ("in-p",  ["-",    "-",     "-",   "-",    "in-r", "-",     "-",    "-",    "-",     "-",     "-",    "err"]),
            ("in-r",  ["-",    "-",     "-",   "-",    "-",    "-",     "run",  "-",    "-",     "-",     "-",    "err"]),
            ("fin-r", ["-",    "-",     "-",   "-",    "-",    "-",     "post", "run",  "out-r", "-",     "shut", "err"]),
            ("fin-p", ["-",    "-",     "-",   "-",    "-",    "-",     "post", "pau",  "out-p", "-",     "shut", "err"]),
            ("post",  ["-",    "-",     "-",   "-",    "-",    "-",     "-",    "-",    "-",     "-",     "-",    "err"]),
            ("out-r", ["-",    "-",     "-",   "-",    "-",    "-",     "-",    "-",    "-",     "run",   "shut", "err"]),
            ("out-p", ["-",    "-",     "-",   "-",    "-",    "-",     "-",    "-",    "-",     "pau",   "shut", "err"]),
            ("shut",  ["-",    "-",     "-",   "-",    "-",    "-",     "-",    "-",    "-",     "-",     "-",    "err"]),
            ("err",   ["-",    "-",     "-",   "-",    "-",    "-",     "-",    "-",    "-",     "-",     "-",    "err"]),
        ];
        for ((row, tos), (label, from)) in expect.iter().zip(states()) {
            assert_eq!(*row, label);
            for (&trigger, &to) in TRIGGERS.iter().zip(tos.iter()) {
                let got = next(&from, trigger).map(|s| name(&s)).unwrap_or("-");
                assert_eq!(got, to, "{label} + {trigger:?}");
            }
        }
    }

    /// Every (from, to) pair of state kinds: whether some trigger leads from one to the
    /// other. Derived from `next`, so a transition added by mistake shows up here too.
    #[test]
    fn every_from_to_pair() {
        let reachable: &[(&str, &[&str])] = &[
            ("pre", &["run", "shut", "err"]),
            ("run", &["run", "pau", "fin-r", "shut", "err"]),
            ("pau", &["run", "pau", "fin-p", "shut", "err"]),
            ("in-u", &["in-b", "err"]),
            ("in-b", &["in-p", "err"]),
            ("in-p", &["in-r", "err"]),
            ("in-r", &["run", "err"]),
            ("fin-r", &["post", "run", "out-r", "shut", "err"]),
            ("fin-p", &["post", "pau", "out-p", "shut", "err"]),
            ("post", &["err"]),
            ("out-r", &["run", "shut", "err"]),
            ("out-p", &["pau", "shut", "err"]),
            ("shut", &["err"]),
            ("err", &["err"]),
        ];
        let all = states();
        for (label, from) in &all {
            let allowed = reachable
                .iter()
                .find(|(l, _)| l == label)
                .map(|(_, to)| *to)
                .unwrap();
            for (to_label, _) in &all {
                let reaches = TRIGGERS
                    .iter()
                    .any(|&t| next(from, t).is_ok_and(|s| name(&s) == *to_label));
                assert_eq!(reaches, allowed.contains(to_label), "{label} -> {to_label}");
            }
        }
    }

    #[test]
    fn run_state_names_are_qemus_and_incoming_is_one_name() {
        let names: Vec<&str> = states()
            .iter()
            .map(|(_, s)| s.run_state().qemu_name())
            .collect();
        assert_eq!(
            names,
            [
                "prelaunch",
                "running",
                "paused",
                "inmigrate",
                "inmigrate",
                "inmigrate",
                "inmigrate",
                "finish-migrate",
                "finish-migrate",
                "postmigrate",
                "postmigrate",
                "postmigrate",
                "shutdown",
                "internal-error"
            ]
        );
        assert!(State::Running.run_state().is_running());
        assert!(!State::Paused.run_state().is_running());
    }

    /// Command legality in every state (pure: the controller asks before it acts).
    #[test]
    fn command_legality_per_state() {
        use CommandKind as C;
        #[rustfmt::skip]
        let expect: [(&str, [&str; 6]); 14] = [
            //        cont   stop   migrate inject release resolve (inject: no pending launch)
            ("pre",   ["act", "no",  "no",  "no",  "no",  "no"]),
            ("run",   ["nop", "act", "act", "no",  "no",  "no"]),
            ("pau",   ["act", "nop", "act", "no",  "no",  "no"]),
            ("in-u",  ["act", "no",  "no",  "no",  "no",  "act"]),
            ("in-b",  ["nop", "no",  "no",  "no",  "no",  "act"]),
            ("in-p",  ["nop", "no",  "no",  "no",  "no",  "act"]),
            ("in-r",  ["nop", "no",  "no",  "no",  "no",  "act"]),
            ("fin-r", ["no",  "no",  "no",  "no",  "no",  "no"]),
            ("fin-p", ["no",  "no",  "no",  "no",  "no",  "no"]),
            ("post",  ["no",  "no",  "no",  "no",  "no",  "no"]),
            ("out-r", ["no",  "no",  "no",  "no",  "act", "no"]),
            ("out-p", ["no",  "no",  "no",  "no",  "act", "no"]),
            ("shut",  ["no",  "no",  "no",  "no",  "no",  "no"]),
            ("err",   ["no",  "no",  "no",  "no",  "no",  "no"]),
        ];
        let word = |v| match v {
            Verdict::Act => "act",
            Verdict::Nothing => "nop",
            Verdict::Refused => "no",
        };
        for ((row, verdicts), (label, state)) in expect.iter().zip(states()) {
            assert_eq!(*row, label);
            let kinds = [
                C::Cont,
                C::Stop,
                C::Migrate,
                C::InjectSecret,
                C::Release,
                C::ResolveIncoming,
            ];
            for (&kind, &want) in kinds.iter().zip(verdicts.iter()) {
                assert_eq!(word(check(&state, kind)), want, "{label}: {kind:?}");
            }
            assert_eq!(check(&state, C::Other), Verdict::Act, "{label}: queries");
        }
    }

    #[test]
    fn a_secret_is_injected_only_while_a_measured_launch_waits() {
        let waiting = [
            State::Prelaunch {
                launch: Some(LaunchMeasured::for_tests()),
            },
            State::Incoming(Incoming::Unstarted {
                launch: Some(LaunchMeasured::for_tests()),
            }),
        ];
        for s in &waiting {
            assert!(s.launch().is_some());
            assert_eq!(check(s, CommandKind::InjectSecret), Verdict::Act, "{s:?}");
            assert_eq!(check(s, CommandKind::Cont), Verdict::Act, "{s:?}");
            // Once launched, the launch is gone with the old state.
            let after = next(s, Trigger::Launched).unwrap();
            assert!(after.launch().is_none());
            assert_eq!(check(&after, CommandKind::InjectSecret), Verdict::Refused);
        }
    }

    #[test]
    fn a_migrated_out_source_keeps_its_session_and_returns_where_it_was() {
        let fin = State::FinishMigrate {
            resume: Resume::Paused,
        };
        let out = next(&fin, Trigger::CommitUnconfirmed([9; 32])).unwrap();
        assert!(matches!(
            out,
            State::MigratedOut {
                resume: Resume::Paused,
                transcript: [9, ..]
            }
        ));
        assert_eq!(out.run_state(), RunState::PostMigrate);
        assert_eq!(check(&out, CommandKind::Cont), Verdict::Refused);
        assert!(matches!(next(&out, Trigger::Released), Ok(State::Paused)));
        // Nothing else lets the guest run: no cont, no new migration, no completion.
        for t in [
            Trigger::Continue,
            Trigger::Launched,
            Trigger::MigrationFailed,
        ] {
            assert!(next(&out, t).is_err(), "{t:?}");
        }
    }

    #[test]
    fn refusals_name_the_state() {
        let e = next(&State::Shutdown, Trigger::Continue).unwrap_err();
        assert_eq!(e.to_string(), "cannot Continue while the VM is shutdown");
    }
}
