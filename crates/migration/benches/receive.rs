//! The target's stream thread per GiB of sealed records, two ways: each PageBatch read
//! into a buffer and then copied into a record window (the target before issue 14), and
//! read from the socket straight into the window (`FrameReader::read_next` and
//! `read_records`, what the VMM does now), its record headers then copied out of the
//! window once and checked (`PageBatchHeader::check_records`).
//!
//!     cargo bench -p migration --bench receive [-- --gib N]
//!
//! A writer thread sends N GiB (default 1) of 1 MiB PageBatch frames (256 page records
//! each) over a UNIX socket pair; the receiving thread's CPU time comes from
//! `/proc/thread-self/schedstat`. Best of five runs per way (the machine is shared). The
//! window is a plain buffer here, guest memory in the VMM; the direct path reads from a
//! second handle on the same socket where the VMM reads from the descriptor it is given.

use helper_abi::record::{self, Kind};
use migration::{
    frames::{Frame, PageBatch, MAX_PAYLOAD_LEN},
    fuzzing::fake_record,
    FrameReader, Incoming, Next, RecordDest,
};
use std::{
    io::{BufReader, Read, Write},
    os::{fd::BorrowedFd, unix::net::UnixStream},
    time::{Duration, Instant},
};

/// One PageBatch frame of 256 page records.
fn batch_frame() -> Vec<u8> {
    let mut records = Vec::new();
    for i in 0..256u64 {
        records.extend(fake_record(Kind::PAGE, 0, 1, 0x10_0000 + i * 4096, i + 1));
    }
    let mut wire = Vec::new();
    PageBatch {
        lane: 0,
        round: 1,
        records: &records,
    }
    .encode(&mut wire)
    .expect("a valid batch");
    wire
}

/// Nanoseconds this thread has run on a CPU.
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Sends `frames` copies of `frame`, then closes.
fn feed(mut to: UnixStream, frame: Vec<u8>, frames: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for _ in 0..frames {
            if to.write_all(&frame).is_err() {
                return;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    })
}

/// The window as a record destination: what was buffered is copied, the rest read from
/// the socket into place.
struct Window<'a> {
    window: &'a mut [u8],
    at: usize,
    socket: &'a UnixStream,
}

impl RecordDest for Window<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.window[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
        Ok(())
    }

    fn read_from(&mut self, _fd: BorrowedFd<'_>, len: usize) -> std::io::Result<()> {
        let mut s = self.socket;
        s.read_exact(&mut self.window[self.at..self.at + len])?;
        self.at += len;
        Ok(())
    }
}

/// The old path: frame into a buffer, records copied into the window. (CPU ns, wall.)
fn copy_path(frame: &[u8], frames: usize) -> (u64, Duration) {
    let (tx, rx) = UnixStream::pair().expect("a socket pair");
    let writer = feed(tx, frame.to_vec(), frames);
    let mut reader = FrameReader::new(BufReader::with_capacity(1 << 16, rx), Incoming::Capture);
    let mut buf = vec![0u8; MAX_PAYLOAD_LEN];
    let mut window = vec![0u8; MAX_PAYLOAD_LEN];
    let (cpu0, t0) = (thread_cpu_ns(), Instant::now());
    let mut records = 0;
    while let Ok(f) = reader.read_frame(&mut buf) {
        if let Frame::PageBatch(b) = f {
            // What the engine and the lanes did: count the records, note their pages,
            // copy them into the window.
            records += b.count().unwrap_or(0) as usize;
            records += b.iter().count();
            window[..b.records.len()].copy_from_slice(b.records);
        }
    }
    let out = (thread_cpu_ns() - cpu0, t0.elapsed());
    assert_eq!(records, 2 * 256 * frames);
    let _ = writer.join();
    out
}

/// The new path: records from the socket into the window, headers copied out once.
fn direct_path(frame: &[u8], frames: usize) -> (u64, Duration) {
    let (tx, rx) = UnixStream::pair().expect("a socket pair");
    let writer = feed(tx, frame.to_vec(), frames);
    let socket = rx.try_clone().expect("a second handle");
    let mut reader = FrameReader::new(BufReader::with_capacity(4096, rx), Incoming::Capture);
    let mut buf = vec![0u8; MAX_PAYLOAD_LEN];
    let mut window = vec![0u8; MAX_PAYLOAD_LEN];
    let (cpu0, t0) = (thread_cpu_ns(), Instant::now());
    let mut records = 0;
    while let Ok(next) = reader.read_next(&mut buf) {
        if let Next::Batch(start) = next {
            let mut dest = Window {
                window: &mut window,
                at: 0,
                socket: &socket,
            };
            reader
                .read_records(|from| from.read_into(&mut dest))
                .expect("the stream")
                .expect("the window");
            let located = start
                .header
                .check_records(|at, out| {
                    out.copy_from_slice(&window[at..at + record::HEADER_SIZE]);
                    Ok::<(), ()>(())
                })
                .expect("valid records");
            records += located.len();
        }
    }
    let out = (thread_cpu_ns() - cpu0, t0.elapsed());
    assert_eq!(records, 256 * frames);
    let _ = writer.join();
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let gib: usize = args
        .iter()
        .position(|a| a == "--gib")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(1);
    let frame = batch_frame();
    let frames = gib * 1024 * 1024 * 1024 / (256 * 4096);
    let records_gib = (frames * (frame.len() - 24)) as f64 / (1u64 << 30) as f64;
    println!(
        "receiving {frames} PageBatch frames of {} bytes ({records_gib:.2} GiB of records, {gib} GiB of pages), best of 5",
        frame.len()
    );
    for (name, path) in [
        (
            "into a buffer, then copied into the window",
            copy_path as fn(&[u8], usize) -> (u64, Duration),
        ),
        ("from the socket straight into the window", direct_path),
    ] {
        let mut best: Option<(u64, Duration)> = None;
        for _ in 0..5 {
            let r = path(&frame, frames);
            if best.is_none_or(|b| r.0 < b.0) {
                best = Some(r);
            }
        }
        let (cpu, wall) = best.expect("five runs");
        println!(
            "{name}: {:.0} ms of the receiving thread's CPU per GiB of pages ({:.2} GiB/s wall)",
            cpu as f64 / 1e6 / gib as f64,
            gib as f64 / wall.as_secs_f64()
        );
    }
}
