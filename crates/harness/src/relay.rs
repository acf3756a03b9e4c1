//! TCP relays between a migration source and its target: what a host, or anyone on the
//! wire, sees of a migration and can do to it.
//!
//! - [`Relay`] records everything the source sends.
//! - [`FrameRelay`] is the attacker's relay: it splits both directions into frames (by
//!   their 12-byte headers, whatever the payload) and lets a test record, drop, replace,
//!   inject, reorder or flip any of them, or cut the connection at any frame. [`replay`]
//!   plays a recording to a fresh target.

use migration::frames::{FrameHeader, MessageType, MAX_PAYLOAD_LEN};
use std::{
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{mpsc, Arc, Mutex},
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

/// One frame as it crossed the wire: its header and payload bytes, whatever they say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    bytes: Vec<u8>,
}

impl RawFrame {
    /// A frame from its bytes (header and payload).
    pub fn from_bytes(bytes: Vec<u8>) -> RawFrame {
        RawFrame { bytes }
    }

    /// Encodes a typed frame.
    pub fn encode(
        f: impl FnOnce(&mut Vec<u8>) -> Result<(), migration::frames::FrameError>,
    ) -> RawFrame {
        let mut bytes = Vec::new();
        // Frames built by a test are well-formed; a bad one is the test's bug.
        f(&mut bytes).expect("a frame the test builds encodes");
        RawFrame { bytes }
    }

    /// Its type, if the header names one.
    pub fn kind(&self) -> Option<MessageType> {
        self.bytes
            .get(6)
            .and_then(|&c| MessageType::try_from(c).ok())
    }

    /// Whether it is a frame of type `kind`.
    pub fn is(&self, kind: MessageType) -> bool {
        self.kind() == Some(kind)
    }

    /// The whole frame.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        self.bytes.get(FrameHeader::SIZE..).unwrap_or_default()
    }

    /// The same frame with payload byte `at` (counted from the end if it is past the
    /// payload) flipped.
    pub fn flipped(&self, at: usize) -> RawFrame {
        let mut bytes = self.bytes.clone();
        let len = self.payload().len();
        if len > 0 {
            bytes[FrameHeader::SIZE + at.min(len - 1)] ^= 0x20;
        }
        RawFrame { bytes }
    }
}

/// What a [`FrameRelay`] does with one frame.
#[derive(Clone, Debug)]
pub enum Action {
    /// Pass it on.
    Forward,
    /// Swallow it; the connection stays.
    Drop,
    /// Send these in its place (none: as Drop).
    Replace(Vec<RawFrame>),
    /// Close both directions here: the frame and everything after it are lost.
    Cut,
}

/// Decides, per frame, what a [`FrameRelay`] does: called with the frame's index in its
/// direction and the frame.
pub type Filter = Box<dyn FnMut(usize, &RawFrame) -> Action + Send>;

/// Everything each side sent, frame by frame (before the relay's actions).
#[derive(Clone, Debug, Default)]
pub struct Recording {
    /// Source to target.
    pub forward: Vec<RawFrame>,
    /// Target to source.
    pub back: Vec<RawFrame>,
}

impl Recording {
    /// The source's frames of type `kind`.
    pub fn from_source(&self, kind: MessageType) -> Vec<RawFrame> {
        self.forward
            .iter()
            .filter(|f| f.is(kind))
            .cloned()
            .collect()
    }

    /// Everything the source sent, as one byte stream.
    pub fn source_stream(&self) -> Vec<u8> {
        self.forward.iter().flat_map(|f| f.bytes.clone()).collect()
    }
}

/// The attacker's relay on loopback: frames both ways through a filter each, every frame
/// recorded.
pub struct FrameRelay {
    port: u16,
    recording: Arc<Mutex<Recording>>,
    done: mpsc::Receiver<()>,
}

impl FrameRelay {
    /// Listens on a free loopback port; forwards the first connection to loopback port
    /// `to` (connecting the moment the target listens, for up to `patience`), passing
    /// frames from the source through `forward` and frames from the target through
    /// `back`.
    pub fn start(
        to: u16,
        patience: Duration,
        forward: Filter,
        back: Filter,
    ) -> std::io::Result<FrameRelay> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let recording = Arc::new(Mutex::new(Recording::default()));
        let (done_tx, done) = mpsc::channel();
        let rec = recording.clone();
        std::thread::Builder::new()
            .name("frame-relay".into())
            .spawn(move || {
                if let Err(e) = relay_frames(&listener, to, patience, forward, back, &rec) {
                    log::warn!("frame relay: {e}");
                }
                let _ = done_tx.send(());
            })?;
        Ok(FrameRelay {
            port,
            recording,
            done,
        })
    }

    /// A relay that only records.
    pub fn recording(to: u16, patience: Duration) -> std::io::Result<FrameRelay> {
        FrameRelay::start(
            to,
            patience,
            Box::new(|_, _| Action::Forward),
            Box::new(|_, _| Action::Forward),
        )
    }

    /// The port the source should connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What crossed so far.
    pub fn recorded(&self) -> Recording {
        self.recording
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until both directions closed (up to `timeout`); what crossed.
    pub fn finish(&self, timeout: Duration) -> Option<Recording> {
        self.done
            .recv_timeout(timeout)
            .ok()
            .map(|()| self.recorded())
    }
}

/// Reads one frame (header, then the length it states, capped); None at the end.
fn read_raw(r: &mut impl Read) -> Option<RawFrame> {
    let mut header = [0u8; FrameHeader::SIZE];
    r.read_exact(&mut header).ok()?;
    let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if len > MAX_PAYLOAD_LEN {
        return None;
    }
    let mut bytes = header.to_vec();
    bytes.resize(FrameHeader::SIZE + len, 0);
    r.read_exact(&mut bytes[FrameHeader::SIZE..]).ok()?;
    Some(RawFrame { bytes })
}

/// Pumps frames from `from` to `to` through `filter`; on a cut, closes `cut` too.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    mut filter: Filter,
    record: impl Fn(RawFrame),
    cut: &[&TcpStream],
) {
    let mut index = 0;
    while let Some(frame) = read_raw(&mut from) {
        record(frame.clone());
        let out = match filter(index, &frame) {
            Action::Forward => vec![frame],
            Action::Drop => Vec::new(),
            Action::Replace(frames) => frames,
            Action::Cut => {
                for s in cut {
                    let _ = s.shutdown(Shutdown::Both);
                }
                return;
            }
        };
        for f in out {
            if to.write_all(&f.bytes).is_err() {
                return;
            }
        }
        index += 1;
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn relay_frames(
    listener: &TcpListener,
    to: u16,
    patience: Duration,
    forward: Filter,
    back: Filter,
    recording: &Arc<Mutex<Recording>>,
) -> std::io::Result<()> {
    let (source, _) = listener.accept()?;
    let start = Instant::now();
    let target = loop {
        match TcpStream::connect(("127.0.0.1", to)) {
            Ok(s) => break s,
            Err(e) if start.elapsed() > patience => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let (s2, t2) = (source.try_clone()?, target.try_clone()?);
    let (s3, t3) = (source.try_clone()?, target.try_clone()?);
    let rec = recording.clone();
    let back_pump = std::thread::Builder::new()
        .name("frame-relay-back".into())
        .spawn(move || {
            pump(
                t2,
                s2,
                back,
                |f| rec.lock().unwrap_or_else(|e| e.into_inner()).back.push(f),
                &[&s3, &t3],
            )
        })?;
    let rec = recording.clone();
    let (s4, t4) = (source.try_clone()?, target.try_clone()?);
    pump(
        source,
        target,
        forward,
        |f| {
            rec.lock()
                .unwrap_or_else(|e| e.into_inner())
                .forward
                .push(f)
        },
        &[&s4, &t4],
    );
    let _ = back_pump.join();
    Ok(())
}

/// Plays `stream` (a recorded source) to a target listening on loopback port `to` and
/// returns what the target answered, frame by frame, once it closed.
pub fn replay(to: u16, stream: &[u8], patience: Duration) -> std::io::Result<Vec<RawFrame>> {
    let start = Instant::now();
    let mut target = loop {
        match TcpStream::connect(("127.0.0.1", to)) {
            Ok(s) => break s,
            Err(e) if start.elapsed() > patience => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    target.set_read_timeout(Some(patience))?;
    let mut reader = target.try_clone()?;
    let answers = std::thread::spawn(move || {
        let mut out = Vec::new();
        while let Some(f) = read_raw(&mut reader) {
            out.push(f);
        }
        out
    });
    // The target may stop reading (it refused): what it does not take is lost.
    let _ = target.write_all(stream);
    let _ = target.shutdown(Shutdown::Write);
    answers
        .join()
        .map_err(|_| std::io::Error::other("the replay's reader panicked"))
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

    #[test]
    fn the_frame_relay_drops_replaces_and_cuts_as_told_and_records_both_ways() {
        use migration::frames::{Ack, Done, Ready, RoundEnd};
        let target = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = target.local_addr().unwrap().port();
        let forward: Filter = Box::new(|i, f| match i {
            0 => Action::Drop,
            1 => Action::Replace(vec![f.clone(), f.clone()]),
            _ => Action::Forward,
        });
        let relay = FrameRelay::start(
            to,
            Duration::from_secs(10),
            forward,
            Box::new(|_, f| match f.is(MessageType::Ack) {
                true => Action::Cut,
                false => Action::Forward,
            }),
        )
        .unwrap();
        let far = std::thread::spawn(move || {
            let (mut s, _) = target.accept().unwrap();
            let mut got = Vec::new();
            while let Some(f) = read_raw(&mut s) {
                got.push(f.kind());
                if got.len() == 3 {
                    s.write_all(RawFrame::encode(|w| Ready.encode(w)).bytes())
                        .unwrap();
                    s.write_all(RawFrame::encode(|w| Ack::Completed.encode(w)).bytes())
                        .unwrap();
                }
            }
            got
        });
        let mut source = TcpStream::connect(("127.0.0.1", relay.port())).unwrap();
        let round = |n| {
            RawFrame::encode(|w| {
                RoundEnd {
                    round: n,
                    pages_sent: 0,
                    dirty_remaining: 0,
                }
                .encode(w)
            })
        };
        for f in [
            round(1),
            round(2),
            RawFrame::encode(|w| Done { commit: None }.encode(w)),
        ] {
            source.write_all(f.bytes()).unwrap();
        }
        let mut answer = Vec::new();
        while let Some(f) = read_raw(&mut source) {
            answer.push(f.kind());
        }
        // Round 1 was dropped, round 2 doubled; the Ack cut the connection.
        assert_eq!(
            far.join().unwrap(),
            [
                Some(MessageType::RoundEnd),
                Some(MessageType::RoundEnd),
                Some(MessageType::Done)
            ]
        );
        assert_eq!(answer, [Some(MessageType::Ready)]);
        let rec = relay.finish(Duration::from_secs(10)).unwrap();
        assert_eq!(rec.forward.len(), 3);
        assert_eq!(rec.back.len(), 2);
        assert_eq!(rec.from_source(MessageType::RoundEnd).len(), 2);
        let flipped = rec.forward[0].flipped(0);
        assert_ne!(flipped.payload(), rec.forward[0].payload());
        assert_eq!(flipped.bytes()[..12], rec.forward[0].bytes()[..12]);
    }
}
