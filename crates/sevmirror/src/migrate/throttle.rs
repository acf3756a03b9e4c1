//! A bandwidth cap on the migration stream (`max-bandwidth`).

use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// A writer that sleeps as needed to stay under `limit` bytes per second (0: no limit).
/// The limit is read on every write, so a change applies at once.
pub struct Throttled<W> {
    inner: W,
    limit: Arc<AtomicU64>,
    window_start: Instant,
    window_bytes: u64,
    window_limit: u64,
}

impl<W: Write> Throttled<W> {
    /// Wraps `inner`.
    pub fn new(inner: W, limit: Arc<AtomicU64>) -> Self {
        Throttled {
            inner,
            limit,
            window_start: Instant::now(),
            window_bytes: 0,
            window_limit: 0,
        }
    }

    /// How long to wait after `bytes` more, at `limit` bytes/s.
    fn delay(&mut self, bytes: u64, now: Instant) -> Duration {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit != self.window_limit {
            // A new limit starts a new accounting window.
            (self.window_start, self.window_bytes, self.window_limit) = (now, 0, limit);
        }
        self.window_bytes += bytes;
        if limit == 0 {
            return Duration::ZERO;
        }
        let due = Duration::from_secs_f64(self.window_bytes as f64 / limit as f64);
        due.saturating_sub(now.duration_since(self.window_start))
    }
}

impl<W: Write> Write for Throttled<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let wait = self.delay(n as u64, Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_keeps_the_average_at_the_limit_and_zero_means_none() {
        let limit = Arc::new(AtomicU64::new(1000));
        let mut t = Throttled::new(Vec::new(), limit.clone());
        let start = Instant::now();
        // 500 bytes at 1000 B/s are due 0.5 s after the window started.
        assert_eq!(t.delay(500, start), Duration::from_millis(500));
        assert_eq!(
            t.delay(500, start + Duration::from_millis(700)),
            Duration::from_millis(300)
        );
        limit.store(0, Ordering::Relaxed);
        assert_eq!(
            t.delay(1 << 30, start + Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
