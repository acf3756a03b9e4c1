//! Where guest console output goes: the serial port and the services page's console
//! register both write here, in the order the guest produced the bytes.

use std::{
    io::Write,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

/// A shared, thread-safe console sink.
#[derive(Clone)]
pub struct ConsoleOut {
    inner: Arc<Mutex<Box<dyn Write + Send>>>,
    failed: Arc<AtomicBool>,
}

impl ConsoleOut {
    /// A console writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        ConsoleOut {
            inner: Arc::new(Mutex::new(out)),
            failed: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A console that keeps its output in memory (for tests and the demo's log capture).
    pub fn capture() -> (Self, Arc<Mutex<Vec<u8>>>) {
        let buf = Arc::new(Mutex::new(Vec::new()));
        (ConsoleOut::new(Box::new(SharedBuf(buf.clone()))), buf)
    }

    /// Appends guest bytes. A failing sink is reported once and otherwise ignored: the
    /// guest must not stop because the host cannot print.
    pub fn write(&self, bytes: &[u8]) {
        let mut out = match self.inner.lock() {
            Ok(out) => out,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
            if !self.failed.swap(true, Ordering::Relaxed) {
                log::warn!("console output failed, further output is dropped: {e}");
            }
        }
    }
}

/// A `Write` into a shared byte vector.
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock() {
            Ok(mut v) => v.extend_from_slice(buf),
            Err(poisoned) => poisoned.into_inner().extend_from_slice(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A `Write` adapter so the serial device can own a handle to the shared console.
pub struct ConsoleWriter(pub ConsoleOut);

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
