//! A TCP relay between a migration source and its target that records everything the
//! source sends — what a host (or anyone on the wire) sees of a migration.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

/// A relay listening on loopback.
pub struct Relay {
    port: u16,
    capture: mpsc::Receiver<Vec<u8>>,
}

impl Relay {
    /// Listens on a free loopback port and forwards the first connection to loopback port
    /// `to` (connecting the moment the target listens, for up to `patience`).
    pub fn start(to: u16, patience: Duration) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (done, capture) = mpsc::channel();
        std::thread::Builder::new()
            .name("relay".into())
            .spawn(move || {
                let sent = forward(&listener, to, patience).unwrap_or_else(|e| {
                    log::warn!("relay: {e}");
                    Vec::new()
                });
                let _ = done.send(sent);
            })?;
        Ok(Relay { port, capture })
    }

    /// The port the source should connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything the source sent, once it closed the connection (None if it did not
    /// within `timeout`).
    pub fn sent(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.capture.recv_timeout(timeout).ok()
    }
}

fn forward(listener: &TcpListener, to: u16, patience: Duration) -> std::io::Result<Vec<u8>> {
    let (mut from_source, _) = listener.accept()?;
    // The target may not listen yet: connect the moment it does.
    let start = Instant::now();
    let mut to_target = loop {
        match TcpStream::connect(("127.0.0.1", to)) {
            Ok(s) => break s,
            Err(e) if start.elapsed() > patience => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let (mut back_from, mut back_to) = (to_target.try_clone()?, from_source.try_clone()?);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut back_from, &mut back_to);
        let _ = back_to.shutdown(Shutdown::Write);
    });
    let (mut sent, mut buf, mut forwarding) = (Vec::new(), vec![0u8; 1 << 16], true);
    loop {
        let n = match from_source.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        sent.extend_from_slice(&buf[..n]);
        // Once the target is gone, keep recording what the source still sends.
        forwarding = forwarding && to_target.write_all(&buf[..n]).is_ok();
    }
    let _ = to_target.shutdown(Shutdown::Write);
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_forwards_both_ways_and_records_what_the_source_sent() {
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = target.local_addr().unwrap().port();
        let relay = Relay::start(to, Duration::from_secs(10)).unwrap();
        let echo = std::thread::spawn(move || {
            let (mut s, _) = target.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            s.write_all(b"ack").unwrap();
            got
        });
        let mut source = TcpStream::connect(("127.0.0.1", relay.port())).unwrap();
        source.write_all(b"page data").unwrap();
        source.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        source.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, b"ack");
        assert_eq!(echo.join().unwrap(), b"page data");
        assert_eq!(relay.sent(Duration::from_secs(10)).unwrap(), b"page data");
    }
}
