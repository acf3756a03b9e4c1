//! The VMM process: termination signals and the system facts programs built on the VMM
//! need, so that they themselves need no `unsafe`.
//!
//! SIGINT and SIGTERM are blocked in every thread and collected by one thread with
//! `sigwait`, which reports them as VM events. Blocking them before any vCPU thread starts
//! keeps signal handling out of the vCPU threads (which use their own real-time signal for
//! kicks).

use crate::vcpu::{EventSink, VmEvent};

fn termination_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the set they are given.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and threads it starts later).
pub fn block_termination() {
    let set = termination_set();
    // SAFETY: `set` is initialised; changing this thread's mask has no other effect.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Starts the thread that turns SIGINT/SIGTERM into [`VmEvent::Signal`].
pub fn forward_termination(events: EventSink) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let set = termination_set();
            let mut sig = 0;
            // SAFETY: `set` and `sig` are valid; the signals are blocked in all threads.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                events(VmEvent::Signal(sig));
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch for SIGINT/SIGTERM: {e}");
    }
}

/// The signal's name.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of the CPU times in
/// `/proc/PID/stat`; `None` if the system does not say.
pub fn clock_ticks_per_second() -> Option<u64> {
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|&hz| hz > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_ticks_and_the_signals_have_names() {
        assert!(clock_ticks_per_second().is_some_and(|hz| hz >= 100));
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(signal_name(libc::SIGINT), "SIGINT");
        assert_eq!(signal_name(libc::SIGHUP), "a signal");
    }
}
