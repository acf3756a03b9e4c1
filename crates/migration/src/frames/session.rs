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
    /// The target accepted: the helpers' key agreement (SEV) or the first round (plain).
    Accepted,
    /// The source helper's KeyShare crossed: the target's KeyReply follows.
    KeyShared,
    /// The target helper's KeyReply crossed: the source's KeyConfirm follows.
    KeyReplied,
    /// The key agreement is complete: the first round follows.
    Keyed,
    /// A round is under way: page, shared-list and shared-range frames.
    RoundOpen,
    /// A RoundEnd closed the round: another round, or the device state.
    RoundClosed,
    /// The DeviceState arrived: vCPU states follow.
    Devices,
    /// One or more VcpuState frames arrived.
    Vcpus,
    /// The Manifest arrived: the target's Ready follows (SEV).
    Manifested,
    /// The target's helper verified the manifest: the source's Done (with its commit) follows.
    Ready,
    /// Done arrived: only the target's Ack (or its AbortToken and Abort) is left.
    Done,
    /// The target's AbortToken crossed: its Abort follows.
    Aborting,
    /// The Ack crossed: the session is over.
    Completed,
    /// An Abort crossed: the session is over.
    Aborted,
}

impl ReceiverState {
    /// Every state.
    pub const ALL: [ReceiverState; 16] = [
        ReceiverState::AwaitHello,
        ReceiverState::AwaitHelloAck,
        ReceiverState::Accepted,
        ReceiverState::KeyShared,
        ReceiverState::KeyReplied,
        ReceiverState::Keyed,
        ReceiverState::RoundOpen,
        ReceiverState::RoundClosed,
        ReceiverState::Devices,
        ReceiverState::Vcpus,
        ReceiverState::Manifested,
        ReceiverState::Ready,
        ReceiverState::Done,
        ReceiverState::Aborting,
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
            | ReceiverState::Accepted
            | ReceiverState::KeyShared
            | ReceiverState::KeyReplied
            | ReceiverState::Keyed
            | ReceiverState::RoundOpen
            | ReceiverState::RoundClosed
            | ReceiverState::Devices
            | ReceiverState::Vcpus
            | ReceiverState::Manifested
            | ReceiverState::Ready
            | ReceiverState::Done
            | ReceiverState::Aborting => false,
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
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::SharedList
                | M::Ready
                | M::AbortToken => None,
            },
            S::AwaitHelloAck => match msg {
                M::HelloAck => Some(S::Accepted),
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
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::SharedList
                | M::Ready
                | M::AbortToken => None,
            },
            S::Accepted => match msg {
                M::PageBatch | M::PlainPages | M::SharedRanges | M::SharedList => {
                    Some(S::RoundOpen)
                }
                M::RoundEnd => Some(S::RoundClosed),
                M::Abort => Some(S::Aborted),
                M::KeyShare => Some(S::KeyShared),
                M::Hello
                | M::HelloAck
                | M::DeviceState
                | M::VcpuState
                | M::Manifest
                | M::Done
                | M::Ack
                | M::KeyReply
                | M::KeyConfirm
                | M::Ready
                | M::AbortToken => None,
            },
            S::KeyShared => match msg {
                M::Abort => Some(S::Aborted),
                M::KeyReply => Some(S::KeyReplied),
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
                | M::Ack
                | M::KeyShare
                | M::KeyConfirm
                | M::SharedList
                | M::Ready
                | M::AbortToken => None,
            },
            S::KeyReplied => match msg {
                M::Abort => Some(S::Aborted),
                M::KeyConfirm => Some(S::Keyed),
                M::AbortToken => Some(S::Aborting),
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
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::SharedList
                | M::Ready => None,
            },
            S::Keyed => match msg {
                M::PageBatch | M::PlainPages | M::SharedRanges | M::SharedList => {
                    Some(S::RoundOpen)
                }
                M::RoundEnd => Some(S::RoundClosed),
                M::Abort => Some(S::Aborted),
                M::AbortToken => Some(S::Aborting),
                M::Hello
                | M::HelloAck
                | M::DeviceState
                | M::VcpuState
                | M::Manifest
                | M::Done
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::Ready => None,
            },
            S::RoundOpen => match msg {
                M::PageBatch | M::PlainPages | M::SharedRanges | M::SharedList => {
                    Some(S::RoundOpen)
                }
                M::RoundEnd => Some(S::RoundClosed),
                M::Abort => Some(S::Aborted),
                M::AbortToken => Some(S::Aborting),
                M::Hello
                | M::HelloAck
                | M::DeviceState
                | M::VcpuState
                | M::Manifest
                | M::Done
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::Ready => None,
            },
            S::RoundClosed => match msg {
                M::PageBatch | M::PlainPages | M::SharedRanges | M::SharedList => {
                    Some(S::RoundOpen)
                }
                M::DeviceState => Some(S::Devices),
                M::RoundEnd => Some(S::RoundClosed),
                M::Abort => Some(S::Aborted),
                M::AbortToken => Some(S::Aborting),
                M::Hello
                | M::HelloAck
                | M::VcpuState
                | M::Manifest
                | M::Done
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::Ready => None,
            },
            S::Devices => match msg {
                M::VcpuState => Some(S::Vcpus),
                M::Abort => Some(S::Aborted),
                M::AbortToken => Some(S::Aborting),
                M::Hello
                | M::HelloAck
                | M::PageBatch
                | M::PlainPages
                | M::SharedRanges
                | M::DeviceState
                | M::RoundEnd
                | M::Manifest
                | M::Done
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::SharedList
                | M::Ready => None,
            },
            S::Vcpus => match msg {
                M::VcpuState => Some(S::Vcpus),
                M::Manifest => Some(S::Manifested),
                M::Done => Some(S::Done),
                M::Abort => Some(S::Aborted),
                M::AbortToken => Some(S::Aborting),
                M::Hello
                | M::HelloAck
                | M::PageBatch
                | M::PlainPages
                | M::SharedRanges
                | M::DeviceState
                | M::RoundEnd
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::SharedList
                | M::Ready => None,
            },
            S::Manifested => match msg {
                M::Abort => Some(S::Aborted),
                M::Ready => Some(S::Ready),
                M::AbortToken => Some(S::Aborting),
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
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::SharedList => None,
            },
            S::Ready => match msg {
                M::Done => Some(S::Done),
                M::Abort => Some(S::Aborted),
                M::AbortToken => Some(S::Aborting),
                M::Hello
                | M::HelloAck
                | M::PageBatch
                | M::PlainPages
                | M::SharedRanges
                | M::DeviceState
                | M::VcpuState
                | M::RoundEnd
                | M::Manifest
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::SharedList
                | M::Ready => None,
            },
            S::Done => match msg {
                M::Abort => Some(S::Aborted),
                M::Ack => Some(S::Completed),
                M::AbortToken => Some(S::Aborting),
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
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::SharedList
                | M::Ready => None,
            },
            S::Aborting => match msg {
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
                | M::Done
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::SharedList
                | M::Ready
                | M::AbortToken => None,
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
                | M::Ack
                | M::KeyShare
                | M::KeyReply
                | M::KeyConfirm
                | M::SharedList
                | M::Ready
                | M::AbortToken => None,
            },
        }
    }

    /// Where the session stands, for messages.
    pub const fn describe(self) -> &'static str {
        match self {
            ReceiverState::AwaitHello => "before the Hello",
            ReceiverState::AwaitHelloAck => "after the Hello, before the target's HelloAck",
            ReceiverState::Accepted => "after the HelloAck",
            ReceiverState::KeyShared => "after the KeyShare, before the KeyReply",
            ReceiverState::KeyReplied => "after the KeyReply, before the KeyConfirm",
            ReceiverState::Keyed => "after the KeyConfirm, before the first round",
            ReceiverState::RoundOpen => "inside a round",
            ReceiverState::RoundClosed => "between rounds",
            ReceiverState::Devices => "after the DeviceState, before any VcpuState",
            ReceiverState::Vcpus => "after the VcpuState frames",
            ReceiverState::Manifested => "after the Manifest, before the target's Ready",
            ReceiverState::Ready => "after the target's Ready, before Done",
            ReceiverState::Done => "after Done, while waiting for the target's Ack",
            ReceiverState::Aborting => "after the target's AbortToken, before its Abort",
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
        (S::AwaitHelloAck, M::HelloAck, S::Accepted),
        (S::AwaitHelloAck, M::Abort, S::Aborted),
        (S::Accepted, M::PageBatch, S::RoundOpen),
        (S::Accepted, M::PlainPages, S::RoundOpen),
        (S::Accepted, M::SharedRanges, S::RoundOpen),
        (S::Accepted, M::RoundEnd, S::RoundClosed),
        (S::Accepted, M::Abort, S::Aborted),
        (S::Accepted, M::KeyShare, S::KeyShared),
        (S::Accepted, M::SharedList, S::RoundOpen),
        (S::KeyShared, M::Abort, S::Aborted),
        (S::KeyShared, M::KeyReply, S::KeyReplied),
        (S::KeyReplied, M::Abort, S::Aborted),
        (S::KeyReplied, M::KeyConfirm, S::Keyed),
        (S::KeyReplied, M::AbortToken, S::Aborting),
        (S::Keyed, M::PageBatch, S::RoundOpen),
        (S::Keyed, M::PlainPages, S::RoundOpen),
        (S::Keyed, M::SharedRanges, S::RoundOpen),
        (S::Keyed, M::RoundEnd, S::RoundClosed),
        (S::Keyed, M::Abort, S::Aborted),
        (S::Keyed, M::SharedList, S::RoundOpen),
        (S::Keyed, M::AbortToken, S::Aborting),
        (S::RoundOpen, M::PageBatch, S::RoundOpen),
        (S::RoundOpen, M::PlainPages, S::RoundOpen),
        (S::RoundOpen, M::SharedRanges, S::RoundOpen),
        (S::RoundOpen, M::RoundEnd, S::RoundClosed),
        (S::RoundOpen, M::Abort, S::Aborted),
        (S::RoundOpen, M::SharedList, S::RoundOpen),
        (S::RoundOpen, M::AbortToken, S::Aborting),
        (S::RoundClosed, M::PageBatch, S::RoundOpen),
        (S::RoundClosed, M::PlainPages, S::RoundOpen),
        (S::RoundClosed, M::SharedRanges, S::RoundOpen),
        (S::RoundClosed, M::DeviceState, S::Devices),
        (S::RoundClosed, M::RoundEnd, S::RoundClosed),
        (S::RoundClosed, M::Abort, S::Aborted),
        (S::RoundClosed, M::SharedList, S::RoundOpen),
        (S::RoundClosed, M::AbortToken, S::Aborting),
        (S::Devices, M::VcpuState, S::Vcpus),
        (S::Devices, M::Abort, S::Aborted),
        (S::Devices, M::AbortToken, S::Aborting),
        (S::Vcpus, M::VcpuState, S::Vcpus),
        (S::Vcpus, M::Manifest, S::Manifested),
        (S::Vcpus, M::Done, S::Done),
        (S::Vcpus, M::Abort, S::Aborted),
        (S::Vcpus, M::AbortToken, S::Aborting),
        (S::Manifested, M::Abort, S::Aborted),
        (S::Manifested, M::Ready, S::Ready),
        (S::Manifested, M::AbortToken, S::Aborting),
        (S::Ready, M::Done, S::Done),
        (S::Ready, M::Abort, S::Aborted),
        (S::Ready, M::AbortToken, S::Aborting),
        (S::Done, M::Abort, S::Aborted),
        (S::Done, M::Ack, S::Completed),
        (S::Done, M::AbortToken, S::Aborting),
        (S::Aborting, M::Abort, S::Aborted),
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
        assert_eq!(S::ALL.len() * M::ALL.len(), 288);
    }

    #[test]
    fn all_lists_every_variant_once() {
        // A match with no wildcard: adding a variant fails to compile here until ALL
        // is updated too.
        fn index(s: ReceiverState) -> usize {
            match s {
                S::AwaitHello => 0,
                S::AwaitHelloAck => 1,
                S::Accepted => 2,
                S::KeyShared => 3,
                S::KeyReplied => 4,
                S::Keyed => 5,
                S::RoundOpen => 6,
                S::RoundClosed => 7,
                S::Devices => 8,
                S::Vcpus => 9,
                S::Manifested => 10,
                S::Ready => 11,
                S::Done => 12,
                S::Aborting => 13,
                S::Completed => 14,
                S::Aborted => 15,
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
        assert!(
            e.to_string()
                .ends_with("(legal there: Abort, Ack, AbortToken)"),
            "{e}"
        );
        let e = S::Vcpus.next(M::Ready).unwrap_err();
        assert!(e.to_string().contains("Manifest"), "{e}");
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
            M::KeyShare,
            M::KeyReply,
            M::KeyConfirm,
            M::SharedList,
            M::PageBatch,
            M::PlainPages,
            M::RoundEnd,
            M::RoundEnd,
            M::DeviceState,
            M::VcpuState,
            M::Manifest,
            M::Ready,
            M::Done,
            M::Ack,
        ];
        let aborted_after_commit = [
            M::Hello,
            M::HelloAck,
            M::KeyShare,
            M::KeyReply,
            M::KeyConfirm,
            M::SharedList,
            M::RoundEnd,
            M::DeviceState,
            M::VcpuState,
            M::Manifest,
            M::Ready,
            M::Done,
            M::AbortToken,
            M::Abort,
        ];
        for session in [&plain[..], &sev[..]] {
            let end = session
                .iter()
                .try_fold(S::default(), |s, m| s.next(*m))
                .unwrap();
            assert_eq!(end, S::Completed);
        }
        let end = aborted_after_commit
            .iter()
            .try_fold(S::default(), |s, m| s.next(*m))
            .unwrap();
        assert_eq!(end, S::Aborted);
    }
}
