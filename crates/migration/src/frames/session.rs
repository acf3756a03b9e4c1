//! The order of frames on a connection: [`ReceiverState`] and its one transition
//! function (the diagram is in the [`super`] module documentation).

use std::fmt;

use thiserror::Error;

use super::MessageType;

/// Where a session stands, as far as the order of frames goes. Both ends feed it every
/// frame crossing the connection, in the order they send or receive them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReceiverState {
    /// Nothing yet: a Hello opens the session.
    #[default]
    AwaitHello,
    /// The Hello crossed; the source waits for the target's HelloAck.
    AwaitHelloAck,
    /// A round is under way: page and shared-range frames.
    RoundOpen,
    /// A RoundEnd closed the round: another round, or the device state.
    RoundClosed,
    /// The DeviceState arrived: vCPU states follow.
    Devices,
    /// One or more VcpuState frames arrived.
    Vcpus,
    /// The Manifest arrived: Done follows.
    Manifested,
    /// Done arrived: only the target's Ack (or its Abort, if the frames crossed) is left.
    Done,
    /// The Ack crossed: the session is over.
    Completed,
    /// An Abort crossed: the session is over.
    Aborted,
}

impl ReceiverState {
    /// Every state.
    pub const ALL: [ReceiverState; 10] = [
        ReceiverState::AwaitHello,
        ReceiverState::AwaitHelloAck,
        ReceiverState::RoundOpen,
        ReceiverState::RoundClosed,
        ReceiverState::Devices,
        ReceiverState::Vcpus,
        ReceiverState::Manifested,
        ReceiverState::Done,
        ReceiverState::Completed,
        ReceiverState::Aborted,
    ];

    /// The state after `msg`, or the protocol error that `msg` is here.
    pub fn next(self, msg: MessageType) -> Result<ReceiverState, ProtocolError> {
        self.step(msg).ok_or(ProtocolError { state: self, msg })
    }

    /// Is the session over (Completed or Aborted)?
    pub fn is_final(self) -> bool {
        match self {
            ReceiverState::Completed | ReceiverState::Aborted => true,
            ReceiverState::AwaitHello
            | ReceiverState::AwaitHelloAck
            | ReceiverState::RoundOpen
            | ReceiverState::RoundClosed
            | ReceiverState::Devices
            | ReceiverState::Vcpus
            | ReceiverState::Manifested
            | ReceiverState::Done => false,
        }
    }

    /// The frame types legal in this state.
    pub fn legal(self) -> impl Iterator<Item = MessageType> {
        MessageType::ALL
            .into_iter()
            .filter(move |m| self.step(*m).is_some())
    }

    /// The transition table. Exhaustive, no wildcard: a new state or type does not
    /// compile until every pair is decided.
    fn step(self, msg: MessageType) -> Option<ReceiverState> {
        use MessageType as M;
        use ReceiverState as S;
        match self {
            S::AwaitHello => match msg {
                M::Hello => Some(S::AwaitHelloAck),
                M::Abort => Some(S::Aborted),
                M::HelloAck
                | M::PageBatch
                | M::PlainPages
                | M::SharedRanges
                | M::DeviceState
                | M::VcpuState
                | M::RoundEnd
                | M::Manifest
                | M::Done
                | M::Ack => None,
            },
            S::AwaitHelloAck => match msg {
                M::HelloAck => Some(S::RoundOpen),
                M::Abort => Some(S::Aborted),
                M::Hello
                | M::PageBatch
                | M::PlainPages
                | M::SharedRanges
                | M::DeviceState
                | M::VcpuState
                | M::RoundEnd
                | M::Manifest
                | M::Done
                | M::Ack => None,
            },
            S::RoundOpen => match msg {
                M::PageBatch | M::PlainPages | M::SharedRanges => Some(S::RoundOpen),
                M::RoundEnd => Some(S::RoundClosed),
                M::Abort => Some(S::Aborted),
                M::Hello
                | M::HelloAck
                | M::DeviceState
                | M::VcpuState
                | M::Manifest
                | M::Done
                | M::Ack => None,
            },
            S::RoundClosed => match msg {
                M::PageBatch | M::PlainPages | M::SharedRanges => Some(S::RoundOpen),
                M::RoundEnd => Some(S::RoundClosed),
                M::DeviceState => Some(S::Devices),
                M::Abort => Some(S::Aborted),
                M::Hello | M::HelloAck | M::VcpuState | M::Manifest | M::Done | M::Ack => None,
            },
            S::Devices => match msg {
                M::VcpuState => Some(S::Vcpus),
                M::Abort => Some(S::Aborted),
                M::Hello
                | M::HelloAck
                | M::PageBatch
                | M::PlainPages
                | M::SharedRanges
                | M::DeviceState
                | M::RoundEnd
                | M::Manifest
                | M::Done
                | M::Ack => None,
            },
            S::Vcpus => match msg {
                M::VcpuState => Some(S::Vcpus),
                M::Manifest => Some(S::Manifested),
                M::Done => Some(S::Done),
                M::Abort => Some(S::Aborted),
                M::Hello
                | M::HelloAck
                | M::PageBatch
                | M::PlainPages
                | M::SharedRanges
                | M::DeviceState
                | M::RoundEnd
                | M::Ack => None,
            },
            S::Manifested => match msg {
                M::Done => Some(S::Done),
                M::Abort => Some(S::Aborted),
                M::Hello
                | M::HelloAck
                | M::PageBatch
                | M::PlainPages
                | M::SharedRanges
                | M::DeviceState
                | M::VcpuState
                | M::RoundEnd
                | M::Manifest
                | M::Ack => None,
            },
            S::Done => match msg {
                M::Ack => Some(S::Completed),
                M::Abort => Some(S::Aborted),
                M::Hello
                | M::HelloAck
                | M::PageBatch
                | M::PlainPages
                | M::SharedRanges
                | M::DeviceState
                | M::VcpuState
                | M::RoundEnd
                | M::Manifest
                | M::Done => None,
            },
            S::Completed | S::Aborted => match msg {
                M::Hello
                | M::HelloAck
                | M::PageBatch
                | M::PlainPages
                | M::SharedRanges
                | M::DeviceState
                | M::VcpuState
                | M::RoundEnd
                | M::Manifest
                | M::Done
                | M::Abort
                | M::Ack => None,
            },
        }
    }

    /// Where the session stands, for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            ReceiverState::AwaitHello => "before the Hello",
            ReceiverState::AwaitHelloAck => "after the Hello, before the target's HelloAck",
            ReceiverState::RoundOpen => "inside a round",
            ReceiverState::RoundClosed => "between rounds",
            ReceiverState::Devices => "after the DeviceState, before any VcpuState",
            ReceiverState::Vcpus => "after the VcpuState frames",
            ReceiverState::Manifested => "after the Manifest, before Done",
            ReceiverState::Done => "after Done, while waiting for the target's Ack",
            ReceiverState::Completed => "after the Ack, when the session is over",
            ReceiverState::Aborted => "after an Abort, when the session is over",
        }
    }
}

impl fmt::Display for ReceiverState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// A frame that is not legal where the session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
#[error("{msg} is not legal {state} (legal there: {})", LegalList(*state))]
pub struct ProtocolError {
    /// Where the session stood.
    pub state: ReceiverState,
    /// The frame type that arrived (or was about to be sent).
    pub msg: MessageType,
}

impl ProtocolError {
    /// The failure code to put in the Abort that answers this error.
    pub fn failure_code(&self) -> super::FailureCode {
        super::FailureCode::Protocol
    }
}

struct LegalList(ReceiverState);

impl fmt::Display for LegalList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut any = false;
        for (i, m) in self.0.legal().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{m}")?;
            any = true;
        }
        if !any {
            f.write_str("nothing")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MessageType as M;
    use ReceiverState as S;

    /// Every legal transition, written out independently of `step`.
    const LEGAL: &[(ReceiverState, MessageType, ReceiverState)] = &[
        (S::AwaitHello, M::Hello, S::AwaitHelloAck),
        (S::AwaitHello, M::Abort, S::Aborted),
        (S::AwaitHelloAck, M::HelloAck, S::RoundOpen),
        (S::AwaitHelloAck, M::Abort, S::Aborted),
        (S::RoundOpen, M::PageBatch, S::RoundOpen),
        (S::RoundOpen, M::PlainPages, S::RoundOpen),
        (S::RoundOpen, M::SharedRanges, S::RoundOpen),
        (S::RoundOpen, M::RoundEnd, S::RoundClosed),
        (S::RoundOpen, M::Abort, S::Aborted),
        (S::RoundClosed, M::PageBatch, S::RoundOpen),
        (S::RoundClosed, M::PlainPages, S::RoundOpen),
        (S::RoundClosed, M::SharedRanges, S::RoundOpen),
        (S::RoundClosed, M::RoundEnd, S::RoundClosed),
        (S::RoundClosed, M::DeviceState, S::Devices),
        (S::RoundClosed, M::Abort, S::Aborted),
        (S::Devices, M::VcpuState, S::Vcpus),
        (S::Devices, M::Abort, S::Aborted),
        (S::Vcpus, M::VcpuState, S::Vcpus),
        (S::Vcpus, M::Manifest, S::Manifested),
        (S::Vcpus, M::Done, S::Done),
        (S::Vcpus, M::Abort, S::Aborted),
        (S::Manifested, M::Done, S::Done),
        (S::Manifested, M::Abort, S::Aborted),
        (S::Done, M::Ack, S::Completed),
        (S::Done, M::Abort, S::Aborted),
    ];

    #[test]
    fn every_state_and_message_pair() {
        let mut legal_seen = 0;
        for state in S::ALL {
            for msg in M::ALL {
                let expected = LEGAL
                    .iter()
                    .find(|(s, m, _)| *s == state && *m == msg)
                    .map(|(_, _, to)| *to);
                match (state.next(msg), expected) {
                    (Ok(to), Some(want)) => {
                        assert_eq!(to, want, "{state:?} --{msg}-->");
                        legal_seen += 1;
                    }
                    (Err(e), None) => {
                        assert_eq!(e, ProtocolError { state, msg });
                        let text = e.to_string();
                        assert!(text.starts_with(msg.name()), "{text}");
                        assert!(text.contains(state.describe()), "{text}");
                    }
                    (got, want) => panic!("{state:?} + {msg}: got {got:?}, table says {want:?}"),
                }
            }
        }
        assert_eq!(legal_seen, LEGAL.len());
        assert_eq!(S::ALL.len() * M::ALL.len(), 120);
    }

    #[test]
    fn all_lists_every_variant_once() {
        // A match with no wildcard: adding a variant fails to compile here until ALL
        // is updated too.
        fn index(s: ReceiverState) -> usize {
            match s {
                S::AwaitHello => 0,
                S::AwaitHelloAck => 1,
                S::RoundOpen => 2,
                S::RoundClosed => 3,
                S::Devices => 4,
                S::Vcpus => 5,
                S::Manifested => 6,
                S::Done => 7,
                S::Completed => 8,
                S::Aborted => 9,
            }
        }
        for (i, s) in S::ALL.into_iter().enumerate() {
            assert_eq!(index(s), i);
        }
    }

    #[test]
    fn only_completed_and_aborted_are_final() {
        for s in S::ALL {
            assert_eq!(s.is_final(), s.legal().next().is_none(), "{s:?}");
        }
    }

    #[test]
    fn errors_say_what_is_legal() {
        let e = S::AwaitHelloAck.next(M::PageBatch).unwrap_err();
        assert_eq!(
            e.to_string(),
            "PageBatch is not legal after the Hello, before the target's HelloAck (legal there: HelloAck, Abort)"
        );
        let e = S::Done.next(M::PageBatch).unwrap_err();
        assert!(e.to_string().ends_with("(legal there: Abort, Ack)"), "{e}");
        let e = S::Completed.next(M::Abort).unwrap_err();
        assert!(e.to_string().ends_with("(legal there: nothing)"), "{e}");
    }

    #[test]
    fn plain_and_sev_sessions_walk_to_completed() {
        let plain = [
            M::Hello,
            M::HelloAck,
            M::PlainPages,
            M::RoundEnd,
            M::PlainPages,
            M::RoundEnd,
            M::DeviceState,
            M::VcpuState,
            M::VcpuState,
            M::Done,
            M::Ack,
        ];
        let sev = [
            M::Hello,
            M::HelloAck,
            M::SharedRanges,
            M::PageBatch,
            M::PlainPages,
            M::RoundEnd,
            M::RoundEnd,
            M::DeviceState,
            M::VcpuState,
            M::Manifest,
            M::Done,
            M::Ack,
        ];
        for session in [&plain[..], &sev[..]] {
            let end = session
                .iter()
                .try_fold(S::default(), |s, m| s.next(*m))
                .unwrap();
            assert_eq!(end, S::Completed);
        }
    }
}
