//! Termination signals: SIGINT and SIGTERM are blocked in every thread and collected by
//! one thread with `sigwait`, which reports them as VM events. Blocking them before any
//! vCPU thread starts keeps signal handling out of the vCPU threads (which use their own
//! real-time signal for kicks).

use vmm::vcpu::{EventSink, VmEvent};

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
pub fn name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}
