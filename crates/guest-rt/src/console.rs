//! Line-buffered console on the guest-services page, and the `println!` macro.

use crate::{globals, services};
use core::{fmt, sync::atomic::Ordering};

/// Collects one line, then hands it to the services page under the console lock.
pub struct Console {
    buf: [u8; 160],
    len: usize,
}

impl Console {
    /// An empty line buffer.
    pub const fn new() -> Self {
        Console {
            buf: [0; 160],
            len: 0,
        }
    }

    /// Sends what is buffered.
    pub fn flush(&mut self) {
        let lock = &globals::get().console_lock;
        while lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        services::console_write(&self.buf[..self.len]);
        lock.store(false, Ordering::Release);
        self.len = 0;
    }
}

impl Default for Console {
    fn default() -> Self {
        Console::new()
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
            if b == b'\n' {
                self.flush();
            }
        }
        Ok(())
    }
}

/// Prints a formatted line to the console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut c = $crate::console::Console::new();
        let _ = writeln!(c, $($arg)*);
        c.flush();
    }};
}
