//! The session gate: one atomic word that holds the session's phase and how many
//! requests are inside it, so that "which state is the session in" and "is anyone using
//! it" are always read and changed together.
//!
//! ```text
//!  bits 31..16  phase (helper-abi `Phase`)
//!  bits 15..0   requests inside the session (shared entries)
//! ```
//!
//! Requests that only read the session's keys (EXPORT, IMPORT, SEAL_BLOB, OPEN_BLOB)
//! enter it shared: the phase must allow them and stays, the count goes up. Requests that
//! change the session (the handshake, FINISH, COMMIT, ABORT, RELEASE, RESET) enter it
//! alone: one compare-exchange from (allowed phase, count 0) to (BUSY, 0), so nothing else
//! is inside while they write keys, and nothing can enter until they publish the next
//! phase. A host that runs helper vCPUs in any interleaving, or stops one inside a
//! request, can at worst get BUSY back: it can never make a request see half-written
//! keys or reset a session another vCPU is using.

use core::sync::atomic::{AtomicU32, Ordering};
use helper_abi::mailbox::Phase;

const COUNT_MASK: u32 = 0xffff;

/// The gate word.
#[repr(transparent)]
pub struct Gate(AtomicU32);

/// Why a request could not enter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// Another request holds the session alone, or (for a request that needs it alone)
    /// some request is inside.
    Busy,
    /// The phase does not allow the request.
    Phase(Phase),
}

fn pack(phase: Phase, count: u32) -> u32 {
    phase.0 << 16 | (count & COUNT_MASK)
}

fn phase_of(word: u32) -> Phase {
    Phase(word >> 16)
}

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A gate with no session (the same as zeroed memory).
    pub const fn new() -> Gate {
        Gate(AtomicU32::new(0))
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        phase_of(self.0.load(Ordering::Acquire))
    }

    /// Requests inside the session now.
    pub fn inside(&self) -> u32 {
        self.0.load(Ordering::Acquire) & COUNT_MASK
    }

    /// Enters the session shared, if `allowed` accepts its phase.
    pub fn enter_shared(&self, allowed: impl Fn(Phase) -> bool) -> Result<Shared<'_>, Closed> {
        let mut word = self.0.load(Ordering::Acquire);
        loop {
            let phase = phase_of(word);
            if phase == Phase::BUSY {
                return Err(Closed::Busy);
            }
            if !allowed(phase) {
                return Err(Closed::Phase(phase));
            }
            if word & COUNT_MASK == COUNT_MASK {
                return Err(Closed::Busy);
            }
            match self
                .0
                .compare_exchange_weak(word, word + 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Ok(Shared { gate: self, phase }),
                Err(now) => word = now,
            }
        }
    }

    /// Enters the session alone, if nothing is inside and `allowed` accepts its phase.
    pub fn enter_alone(&self, allowed: impl Fn(Phase) -> bool) -> Result<Alone<'_>, Closed> {
        let word = self.0.load(Ordering::Acquire);
        let phase = phase_of(word);
        // Busy first: while anything is inside, the answer is BUSY whatever the phase.
        if phase == Phase::BUSY || word & COUNT_MASK != 0 {
            return Err(Closed::Busy);
        }
        if !allowed(phase) {
            return Err(Closed::Phase(phase));
        }
        self.0
            .compare_exchange(
                word,
                pack(Phase::BUSY, 0),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .map_err(|_| Closed::Busy)?;
        Ok(Alone {
            gate: self,
            from: phase,
            to: phase,
        })
    }
}

/// A shared entry; leaves on drop.
pub struct Shared<'a> {
    gate: &'a Gate,
    phase: Phase,
}

impl Shared<'_> {
    /// The phase the request entered in (it does not change while any request is
    /// inside).
    pub fn phase(&self) -> Phase {
        self.phase
    }
}

impl Drop for Shared<'_> {
    fn drop(&mut self) {
        self.gate.0.fetch_sub(1, Ordering::Release);
    }
}

/// Sole use of the session; publishes the next phase on drop (the phase it entered in,
/// unless [`Alone::set`] chose another).
pub struct Alone<'a> {
    gate: &'a Gate,
    from: Phase,
    to: Phase,
}

impl Alone<'_> {
    /// The phase the request entered in.
    pub fn from(&self) -> Phase {
        self.from
    }

    /// The phase to publish when the request leaves.
    pub fn set(&mut self, phase: Phase) {
        self.to = phase;
    }
}

impl Drop for Alone<'_> {
    fn drop(&mut self) {
        // Release: everything written while alone is visible to whoever enters next.
        self.gate.0.store(pack(self.to, 0), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_enters_alone_while_a_request_is_inside_and_vice_versa() {
        let g = Gate::new();
        let any = |_| true;
        let shared = g.enter_shared(any).unwrap();
        assert_eq!(g.enter_alone(any).err(), Some(Closed::Busy));
        let second = g.enter_shared(any).unwrap();
        assert_eq!(g.inside(), 2);
        drop(shared);
        drop(second);
        let mut alone = g.enter_alone(any).unwrap();
        assert_eq!(g.phase(), Phase::BUSY);
        assert_eq!(g.enter_shared(any).err(), Some(Closed::Busy));
        assert_eq!(g.enter_alone(any).err(), Some(Closed::Busy));
        alone.set(Phase::SOURCE_KEYED);
        drop(alone);
        assert_eq!((g.phase(), g.inside()), (Phase::SOURCE_KEYED, 0));
    }

    #[test]
    fn the_phase_decides_who_may_enter() {
        let g = Gate::new();
        assert_eq!(
            g.enter_shared(|p| p == Phase::SOURCE_KEYED).err(),
            Some(Closed::Phase(Phase::IDLE))
        );
        let alone = g.enter_alone(|p| p == Phase::IDLE).unwrap();
        assert_eq!(alone.from(), Phase::IDLE);
        drop(alone);
        assert_eq!(g.phase(), Phase::IDLE, "an unchanged phase is restored");
    }

    #[test]
    fn concurrent_shared_entries_all_leave() {
        let g = Gate::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        if let Ok(e) = g.enter_shared(|_| true) {
                            drop(e);
                        }
                    }
                });
            }
            s.spawn(|| {
                for _ in 0..1000 {
                    if let Ok(mut a) = g.enter_alone(|_| true) {
                        a.set(Phase::IDLE);
                    }
                }
            });
        });
        assert_eq!((g.phase(), g.inside()), (Phase::IDLE, 0));
    }
}
