//! Kicking a vCPU thread out of KVM_RUN.
//!
//! The kicker sets nothing itself: it sends the thread a real-time signal whose handler
//! sets `immediate_exit` in that thread's own `kvm_run` page. If the thread is inside
//! KVM_RUN, the signal makes it return EINTR; if it is about to enter, `immediate_exit`
//! makes KVM_RUN return EINTR at once. Pause, stop and migration all rely on this, and on
//! these machines a VMMCALL spins inside KVM_RUN until a signal arrives
//! (docs/architecture.md §4, Machine facts).

use kvm_bindings::kvm_run;
use std::{cell::Cell, ptr, sync::Once};

thread_local! {
    static RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

/// The signal used for kicks.
pub fn signal() -> libc::c_int {
    libc::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int) {
    // Only a thread-local read and a store: async-signal-safe.
    let run = RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: the pointer was registered by this thread for the kvm_run mapping of
        // the vCPU it runs, and is cleared (by `RunRegistration::drop`) before that mapping
        // goes away; the signal is delivered to this same thread.
        unsafe { ptr::write_volatile(ptr::addr_of_mut!((*run).immediate_exit), 1) };
    }
}

/// Installs the kick handler (once per process).
pub fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sa` is fully initialised before use; the handler only touches
        // thread-local state and is installed without SA_RESTART so KVM_RUN returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signal(), &sa, ptr::null_mut());
        }
    });
}

/// While alive, kicks delivered to this thread set `immediate_exit` in `run`.
pub struct RunRegistration(());

impl RunRegistration {
    /// Registers this thread's vCPU `run` page.
    ///
    /// # Safety
    /// `run` must stay mapped until the returned value is dropped, on this thread.
    pub unsafe fn register(run: *mut kvm_run) -> RunRegistration {
        install_handler();
        RUN.with(|r| r.set(run));
        RunRegistration(())
    }
}

impl Drop for RunRegistration {
    fn drop(&mut self) {
        RUN.with(|r| r.set(ptr::null_mut()));
    }
}

/// Sends kicks to one vCPU thread.
#[derive(Clone, Copy, Debug)]
pub struct Kicker {
    thread: libc::pthread_t,
}

impl Kicker {
    /// A kicker for the given thread.
    pub fn new(thread: libc::pthread_t) -> Self {
        Kicker { thread }
    }

    /// Kicks the thread out of KVM_RUN (or makes its next KVM_RUN return at once).
    pub fn kick(&self) {
        // SAFETY: the owner of the thread's JoinHandle keeps the thread joinable (not yet
        // joined) while this kicker is used, so the pthread_t is valid.
        unsafe {
            libc::pthread_kill(self.thread, signal());
        }
    }
}

/// A per-thread timer that kicks the calling thread (out of KVM_RUN) when it expires,
/// so a vCPU that never exits (a hung helper, a VMMCALL on kvm_pvm) cannot hang the VMM.
pub struct Watchdog {
    timer: libc::timer_t,
    thread: libc::pid_t,
}

// SAFETY: a timer_t is a kernel handle usable from any thread; the timer always signals
// the thread recorded in `thread`, and callers check `is_for_current_thread`.
unsafe impl Send for Watchdog {}

impl Watchdog {
    /// A disarmed watchdog for the calling thread.
    pub fn for_current_thread() -> std::io::Result<Watchdog> {
        install_handler();
        // SAFETY: gettid has no preconditions.
        let thread = unsafe { libc::gettid() };
        // SAFETY: `ev` is fully initialised (zeroed, then the fields SIGEV_THREAD_ID uses);
        // `timer` receives the new handle on success.
        unsafe {
            let mut ev: libc::sigevent = std::mem::zeroed();
            ev.sigev_notify = libc::SIGEV_THREAD_ID;
            ev.sigev_signo = signal();
            ev.sigev_notify_thread_id = thread;
            let mut timer: libc::timer_t = ptr::null_mut();
            if libc::timer_create(libc::CLOCK_MONOTONIC, &mut ev, &mut timer) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(Watchdog { timer, thread })
        }
    }

    /// Whether this watchdog signals the calling thread.
    pub fn is_for_current_thread(&self) -> bool {
        // SAFETY: gettid has no preconditions.
        self.thread == unsafe { libc::gettid() }
    }

    /// Fires once after `after` (zero disarms).
    pub fn arm(&self, after: std::time::Duration) {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs() as libc::time_t,
                tv_nsec: after.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `timer` is a live timer owned by `self`; `spec` is initialised.
        unsafe { libc::timer_settime(self.timer, 0, &spec, ptr::null_mut()) };
    }

    /// Stops a pending expiry.
    pub fn disarm(&self) {
        self.arm(std::time::Duration::ZERO);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // SAFETY: `timer` is a live timer owned by `self`, deleted once.
        unsafe { libc::timer_delete(self.timer) };
    }
}
