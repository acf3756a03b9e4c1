//! The platform and guest state machines of the SEV firmware (AMD SEV API spec 0.24
//! §5.1.2 "Platform States", §5.1.3 and §6.1 "Guest States"), as pure transition
//! functions.

use crate::{
    backend::{GuestState, PlatformState, Refusal},
    status::SevStatus,
};

/// A guest command the state machine gates (each the firmware command of the same name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestCommand {
    /// LAUNCH_UPDATE_DATA (§6.3).
    LaunchUpdateData,
    /// LAUNCH_UPDATE_VMSA (§6.4).
    LaunchUpdateVmsa,
    /// LAUNCH_MEASURE (§6.5).
    LaunchMeasure,
    /// LAUNCH_SECRET (§6.6).
    LaunchSecret,
    /// LAUNCH_FINISH (§6.7).
    LaunchFinish,
    /// GUEST_STATUS (§6.12).
    GuestStatus,
    /// DBG_DECRYPT (§7.1).
    DbgDecrypt,
    /// DBG_ENCRYPT (§7.2).
    DbgEncrypt,
}

impl GuestCommand {
    /// Every command.
    pub const ALL: [GuestCommand; 8] = [
        GuestCommand::LaunchUpdateData,
        GuestCommand::LaunchUpdateVmsa,
        GuestCommand::LaunchMeasure,
        GuestCommand::LaunchSecret,
        GuestCommand::LaunchFinish,
        GuestCommand::GuestStatus,
        GuestCommand::DbgDecrypt,
        GuestCommand::DbgEncrypt,
    ];
}

/// The guest state after `cmd` in state `from`, or INVALID_GUEST_STATE.
///
/// LAUNCH_UPDATE_* need LUPDATE; LAUNCH_MEASURE moves LUPDATE → LSECRET; LAUNCH_SECRET
/// needs LSECRET; LAUNCH_FINISH moves LSECRET → RUNNING; GUEST_STATUS and DBG_* work in
/// every state of a live guest. SEND/RECEIVE states accept only status and debug
/// commands (the migration commands themselves are not emulated yet).
pub fn guest_transition(from: GuestState, cmd: GuestCommand) -> Result<GuestState, SevStatus> {
    use GuestCommand as C;
    use GuestState as S;
    let bad = Err(SevStatus::INVALID_GUEST_STATE);
    match (from, cmd) {
        (S::LaunchUpdate, C::LaunchUpdateData | C::LaunchUpdateVmsa) => Ok(S::LaunchUpdate),
        (S::LaunchUpdate, C::LaunchMeasure) => Ok(S::LaunchSecret),
        (S::LaunchSecret, C::LaunchSecret) => Ok(S::LaunchSecret),
        (S::LaunchSecret, C::LaunchFinish) => Ok(S::Running),
        (
            S::Uninit
            | S::LaunchUpdate
            | S::LaunchSecret
            | S::Running
            | S::SendUpdate
            | S::ReceiveUpdate
            | S::Sent,
            C::GuestStatus | C::DbgDecrypt | C::DbgEncrypt,
        ) => Ok(from),
        (S::LaunchUpdate, C::LaunchSecret | C::LaunchFinish)
        | (S::LaunchSecret, C::LaunchUpdateData | C::LaunchUpdateVmsa | C::LaunchMeasure)
        | (
            S::Uninit | S::Running | S::SendUpdate | S::ReceiveUpdate | S::Sent,
            C::LaunchUpdateData
            | C::LaunchUpdateVmsa
            | C::LaunchMeasure
            | C::LaunchSecret
            | C::LaunchFinish,
        )
        | (S::Other(_), _) => bad,
    }
}

/// Something that changes the platform state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformEvent {
    /// INIT (the kernel's `sev_platform_init`, done when a VM becomes an SEV VM).
    Init,
    /// A guest context was created (LAUNCH_START).
    GuestCreated,
    /// A guest was decommissioned; `remaining` guests are left.
    GuestDecommissioned {
        /// Guests still alive.
        remaining: u32,
    },
    /// FACTORY_RESET through `/dev/sev`: the kernel refuses it while guests exist
    /// (EBUSY) and shuts an INIT platform down first (`sev_ioctl_do_reset`).
    FactoryReset,
}

impl PlatformEvent {
    /// Representative events, one per kind and outcome.
    pub const ALL: [PlatformEvent; 5] = [
        PlatformEvent::Init,
        PlatformEvent::GuestCreated,
        PlatformEvent::GuestDecommissioned { remaining: 0 },
        PlatformEvent::GuestDecommissioned { remaining: 1 },
        PlatformEvent::FactoryReset,
    ];
}

/// The platform state after `event` in state `from`.
///
/// UNINIT → INIT on the first SEV VM; INIT → WORKING when a guest is created; WORKING →
/// INIT when the last guest is decommissioned; FACTORY_RESET leaves UNINIT (EBUSY while
/// WORKING). A guest cannot be created on an UNINIT platform (INVALID_PLATFORM_STATE).
pub fn platform_transition(
    from: PlatformState,
    event: PlatformEvent,
) -> Result<PlatformState, Refusal> {
    use PlatformEvent as E;
    use PlatformState as P;
    match (from, event) {
        (P::Uninit | P::Init, E::Init) => Ok(P::Init),
        (P::Working, E::Init) => Ok(P::Working),
        (P::Init | P::Working, E::GuestCreated) => Ok(P::Working),
        (P::Uninit, E::GuestCreated) => Err(Refusal::Status(SevStatus::INVALID_PLATFORM_STATE)),
        (P::Working, E::GuestDecommissioned { remaining: 0 }) => Ok(P::Init),
        (P::Working, E::GuestDecommissioned { .. }) => Ok(P::Working),
        (P::Uninit | P::Init, E::GuestDecommissioned { .. }) => Ok(from),
        (P::Uninit | P::Init, E::FactoryReset) => Ok(P::Uninit),
        (P::Working, E::FactoryReset) => Err(Refusal::Errno(libc::EBUSY)),
        (P::Other(_), _) => Err(Refusal::Status(SevStatus::INVALID_PLATFORM_STATE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use GuestCommand as C;
    use GuestState as S;

    const STATES: [GuestState; 8] = [
        S::Uninit,
        S::LaunchUpdate,
        S::LaunchSecret,
        S::Running,
        S::SendUpdate,
        S::ReceiveUpdate,
        S::Sent,
        S::Other(9),
    ];

    /// Every (state, command) pair against the expected table.
    #[test]
    fn guest_transition_table() {
        let expected = |s: GuestState, c: GuestCommand| -> Option<GuestState> {
            match c {
                C::LaunchUpdateData | C::LaunchUpdateVmsa => {
                    (s == S::LaunchUpdate).then_some(S::LaunchUpdate)
                }
                C::LaunchMeasure => (s == S::LaunchUpdate).then_some(S::LaunchSecret),
                C::LaunchSecret => (s == S::LaunchSecret).then_some(S::LaunchSecret),
                C::LaunchFinish => (s == S::LaunchSecret).then_some(S::Running),
                C::GuestStatus | C::DbgDecrypt | C::DbgEncrypt => {
                    (!matches!(s, S::Other(_))).then_some(s)
                }
            }
        };
        let mut pairs = 0;
        for s in STATES {
            for c in GuestCommand::ALL {
                let got = guest_transition(s, c);
                match expected(s, c) {
                    Some(next) => assert_eq!(got, Ok(next), "{s:?} {c:?}"),
                    None => assert_eq!(got, Err(SevStatus::INVALID_GUEST_STATE), "{s:?} {c:?}"),
                }
                pairs += 1;
            }
        }
        assert_eq!(pairs, 64);
    }

    /// Every (platform state, event) pair.
    #[test]
    fn platform_transition_table() {
        use PlatformState as P;
        let table: [(PlatformState, [Result<PlatformState, Refusal>; 5]); 4] = [
            (
                P::Uninit,
                [
                    Ok(P::Init),
                    Err(Refusal::Status(SevStatus::INVALID_PLATFORM_STATE)),
                    Ok(P::Uninit),
                    Ok(P::Uninit),
                    Ok(P::Uninit),
                ],
            ),
            (
                P::Init,
                [
                    Ok(P::Init),
                    Ok(P::Working),
                    Ok(P::Init),
                    Ok(P::Init),
                    Ok(P::Uninit),
                ],
            ),
            (
                P::Working,
                [
                    Ok(P::Working),
                    Ok(P::Working),
                    Ok(P::Init),
                    Ok(P::Working),
                    Err(Refusal::Errno(libc::EBUSY)),
                ],
            ),
            (
                P::Other(7),
                [Err(Refusal::Status(SevStatus::INVALID_PLATFORM_STATE)); 5],
            ),
        ];
        for (from, outcomes) in table {
            for (event, want) in PlatformEvent::ALL.into_iter().zip(outcomes) {
                assert_eq!(platform_transition(from, event), want, "{from:?} {event:?}");
            }
        }
    }
}
