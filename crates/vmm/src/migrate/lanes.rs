//! The mirror's helper vCPUs as the migration engine's sealer (source) and opener
//! (target). Each helper vCPU is a lane with its own thread — a vCPU always runs on the
//! thread that created its watchdog, and lanes seal or open in parallel — and two record
//! windows, so the engine sends batch k from one window while the lane seals batch k+1
//! into the other. Sealed records go to the socket straight from the window, and on the
//! target come from the socket straight into one.

use crate::{
    memory::{HostView, MemoryError},
    mirror::{HelperError, HelperVcpu},
};
use helper_abi::{
    handshake,
    mailbox::{flags, Op, Origin, Request, Response},
    record::{Kind, COMMIT_RECORD_SIZE, HEADER_SIZE, MANIFEST_RECORD_SIZE},
};
use migration::{
    engine::{BatchWindow, Opener, PartError, RecordSink, Sealed, Sealer, ZeroPages},
    frames::{AbortToken, KeyConfirm, KeyReply, KeyShare},
    RecordDest, RecordSource,
};
use std::{
    collections::VecDeque,
    os::fd::BorrowedFd,
    sync::mpsc::{self, Receiver, Sender},
    thread::JoinHandle,
};

/// Why a lane could not seal or open.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// Lanes need at least one helper vCPU.
    #[error("no helper vCPUs")]
    NoHelpers,
    /// A lane's frames and its records carry the lane id its helper's entry took: lane i
    /// must be the helper in slot i, and an earlier mirror took slot `slot`'s place.
    #[error("helper vCPU {lane} holds slot {slot}: a migration needs the helpers in slots 0..{lanes} (an earlier mirror took the others; slots are never reused)")]
    SlotGap {
        /// The lane.
        lane: usize,
        /// The slot its helper holds.
        slot: u16,
        /// Lanes there are.
        lanes: usize,
    },
    /// A lane's thread could not be started.
    #[error("cannot start a thread for helper vCPU {lane}")]
    Thread {
        /// The lane.
        lane: u16,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// The helper vCPU failed or refused the request.
    #[error("helper vCPU {lane}")]
    Helper {
        /// The lane.
        lane: usize,
        /// What the helper (or its vCPU) reported.
        #[source]
        source: HelperError,
    },
    /// The engine named a lane that does not exist.
    #[error("lane {lane} of {lanes} helper vCPUs")]
    NoSuchLane {
        /// The lane asked for.
        lane: usize,
        /// Lanes there are.
        lanes: usize,
    },
    /// A lane's thread is gone.
    #[error("helper vCPU {0} has stopped")]
    Stopped(usize),
    /// Every lane's thread is gone.
    #[error("every helper vCPU has stopped")]
    AllStopped,
    /// The engine asked for more batches than a lane has windows.
    #[error("lane {0} has no free record window")]
    NoFreeWindow(usize),
    /// The helper claims more record bytes than its window holds.
    #[error("helper vCPU {lane} reports {bytes} bytes of records in a {size}-byte window")]
    Overfull {
        /// The lane.
        lane: usize,
        /// Bytes claimed.
        bytes: usize,
        /// Window size.
        size: usize,
    },
    /// A batch's records could not be read from the migration stream into a window.
    #[error("cannot receive a batch into the record window")]
    Receive(#[source] std::io::Error),
    /// A received batch is larger than a record window.
    #[error("a batch of {len} bytes does not fit the helper's {size}-byte window")]
    TooLarge {
        /// The batch.
        len: usize,
        /// Window size.
        size: usize,
    },
    /// Records could not be written into a window.
    #[error("cannot fill the record window")]
    Fill(#[source] MemoryError),
    /// A sealed record could not be read back from its window.
    #[error("cannot read the record window")]
    ReadWindow(#[source] MemoryError),
    /// The helper answered with a message or record of the wrong size.
    #[error("the helper's {what} is {got} bytes, not {want}")]
    Size {
        /// What it answered.
        what: &'static str,
        /// Bytes it gave.
        got: usize,
        /// Bytes it should have.
        want: usize,
    },
    /// The helper reports a record kind that does not exist.
    #[error("the helper reports record kind {0}")]
    BadKind(u32),
    /// A batch was already refused (the engine stops at the first refusal).
    #[error("an earlier batch was refused")]
    AlreadyRefused,
}

/// The first refusal seen while opening, until the engine has been told.
enum Refusal {
    /// None so far.
    None,
    /// Seen, not yet reported.
    Pending(LaneError),
    /// Reported.
    Reported,
}

/// A request for a lane's thread.
struct Job {
    req: Request,
    gpas: Vec<u64>,
    message: Vec<u8>,
}

/// A lane's answer.
struct Done {
    lane: usize,
    window: usize,
    round: u32,
    result: Result<(Response, Vec<u8>), LaneError>,
}

/// One helper vCPU on its thread.
struct Lane {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<HelperVcpu>>,
    /// GPA of each record window.
    windows: Vec<u64>,
    window_size: usize,
    /// Windows not holding a batch, lowest first.
    free: Vec<usize>,
}

/// Helper vCPUs driven by one migration.
pub struct HelperLanes {
    lanes: Vec<Lane>,
    done: Receiver<Done>,
    /// Answers that arrived while waiting for another one.
    early: VecDeque<Done>,
    view: HostView,
    max_batch: usize,
    in_flight: usize,
    /// The first refusal seen while opening (target).
    refused: Refusal,
}

fn serve(mut helper: HelperVcpu, jobs: Receiver<Job>, done: Sender<Done>) -> HelperVcpu {
    let lane = helper.index();
    while let Ok(job) = jobs.recv() {
        let result = helper
            .call_ok_with(job.req, &job.gpas, &job.message)
            .map_err(|source| LaneError::Helper {
                lane: usize::from(lane),
                source,
            });
        let answer = Done {
            lane: usize::from(lane),
            window: job.req.window as usize,
            round: job.req.round,
            result,
        };
        if done.send(answer).is_err() {
            break;
        }
    }
    helper
}

impl HelperLanes {
    /// Lanes over `helpers` (each moves to its own thread), at most `max_batch` pages per
    /// request (the helper's limit, from INFO).
    pub fn new(mut helpers: Vec<HelperVcpu>, max_batch: usize) -> Result<HelperLanes, LaneError> {
        let view = match helpers.first() {
            Some(h) => h.view().clone(),
            None => return Err(LaneError::NoHelpers),
        };
        // A lane's frames carry its helper's lane id (the slot its entry took), which the
        // records' headers carry too: lane i must be the helper in slot i.
        helpers.sort_by_key(HelperVcpu::index);
        if let Some((lane, h)) = helpers
            .iter()
            .enumerate()
            .find(|(i, h)| usize::from(h.index()) != *i)
        {
            return Err(LaneError::SlotGap {
                lane,
                slot: h.index(),
                lanes: helpers.len(),
            });
        }
        let (done_tx, done) = mpsc::channel();
        let mut lanes = Vec::with_capacity(helpers.len());
        for h in helpers {
            let windows: Vec<u64> = (0..h.windows()).map(|w| h.window_gpa(w)).collect();
            let window_size = h.window_size();
            let (jobs, rx) = mpsc::channel();
            let done_tx = done_tx.clone();
            let lane = h.index();
            let thread = std::thread::Builder::new()
                .name(format!("helper-{lane}"))
                .spawn(move || serve(h, rx, done_tx))
                .map_err(|source| LaneError::Thread { lane, source })?;
            lanes.push(Lane {
                jobs: Some(jobs),
                thread: Some(thread),
                free: (0..windows.len()).collect(),
                windows,
                window_size,
            });
        }
        Ok(HelperLanes {
            lanes,
            done,
            early: VecDeque::new(),
            view,
            max_batch: max_batch.max(1),
            in_flight: 0,
            refused: Refusal::None,
        })
    }

    /// Stops the lanes' threads and gives the helper vCPUs back.
    pub fn into_helpers(mut self) -> Vec<HelperVcpu> {
        for lane in &mut self.lanes {
            lane.jobs = None;
        }
        self.lanes
            .iter_mut()
            .filter_map(|l| l.thread.take())
            .filter_map(|t| t.join().ok())
            .collect()
    }

    fn lane(&mut self, lane: usize) -> Result<&mut Lane, LaneError> {
        let lanes = self.lanes.len();
        self.lanes
            .get_mut(lane)
            .ok_or(LaneError::NoSuchLane { lane, lanes })
    }

    /// Hands a request to a lane's thread.
    fn start(&mut self, lane: usize, req: Request, gpas: Vec<u64>) -> Result<(), LaneError> {
        self.start_with(lane, req, gpas, Vec::new())
    }

    /// Hands a request with a message to a lane's thread.
    fn start_with(
        &mut self,
        lane: usize,
        req: Request,
        gpas: Vec<u64>,
        message: Vec<u8>,
    ) -> Result<(), LaneError> {
        let jobs = self
            .lane(lane)?
            .jobs
            .as_ref()
            .ok_or(LaneError::Stopped(lane))?;
        jobs.send(Job { req, gpas, message })
            .map_err(|_| LaneError::Stopped(lane))?;
        self.in_flight += 1;
        Ok(())
    }

    /// The next answer of any lane.
    fn next(&mut self) -> Result<Done, LaneError> {
        if let Some(d) = self.early.pop_front() {
            return Ok(d);
        }
        let d = self.done.recv().map_err(|_| LaneError::AllStopped)?;
        self.in_flight -= 1;
        Ok(d)
    }

    /// Runs one request on `lane` and waits for its answer (nothing else in flight).
    fn call(&mut self, lane: usize, req: Request) -> Result<Response, LaneError> {
        self.call_with(lane, req, Vec::new()).map(|(r, _)| r)
    }

    /// Like `call`, with a message in and out.
    fn call_with(
        &mut self,
        lane: usize,
        req: Request,
        message: Vec<u8>,
    ) -> Result<(Response, Vec<u8>), LaneError> {
        self.start_with(lane, req, Vec::new(), message)?;
        loop {
            let d = self.next()?;
            if d.lane == lane {
                return d.result;
            }
            self.early.push_back(d);
        }
    }

    /// Clears every lane and the session (a new migration starts from nothing).
    fn reset(&mut self) -> Result<(), LaneError> {
        for lane in 0..self.lanes.len() {
            self.call(
                lane,
                Request {
                    op: Op::RESET.0,
                    ..Request::default()
                },
            )?;
        }
        Ok(())
    }

    /// Runs a record-window request on lane 0 with `data` at `at` of a window first;
    /// the response, the message, and `out` bytes of the window after (all the bytes
    /// the helper reports, if `out` is None).
    fn window_call(
        &mut self,
        mut req: Request,
        at: usize,
        data: &[u8],
        out: Option<usize>,
    ) -> Result<(Response, Vec<u8>, Vec<u8>), LaneError> {
        let (window, gpa, size) = self.take_window(0)?;
        req.window = window as u32;
        let result = (|| {
            if at + data.len() > size {
                return Err(LaneError::TooLarge {
                    len: at + data.len(),
                    size,
                });
            }
            if !data.is_empty() {
                self.view
                    .write(gpa + at as u64, data)
                    .map_err(LaneError::Fill)?;
            }
            let (resp, message) = self.call_with(0, req, Vec::new())?;
            let len = out.unwrap_or(resp.bytes as usize);
            if len > size {
                return Err(LaneError::Overfull {
                    lane: 0,
                    bytes: len,
                    size,
                });
            }
            let mut bytes = vec![0u8; len];
            self.view
                .read(gpa, &mut bytes)
                .map_err(LaneError::ReadWindow)?;
            Ok((resp, message, bytes))
        })();
        self.free_window(0, window);
        result
    }

    /// Takes a free window of `lane`.
    fn take_window(&mut self, lane: usize) -> Result<(usize, u64, usize), LaneError> {
        let l = self.lane(lane)?;
        let w = l.free.pop().ok_or(LaneError::NoFreeWindow(lane))?;
        Ok((w, l.windows[w], l.window_size))
    }

    fn free_window(&mut self, lane: usize, window: usize) {
        if let Some(l) = self.lanes.get_mut(lane) {
            if !l.free.contains(&window) {
                l.free.push(window);
                l.free.sort_unstable_by(|a, b| b.cmp(a));
            }
        }
    }
}

impl Sealer for HelperLanes {
    fn lanes(&self) -> usize {
        self.lanes.len()
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn depth(&self) -> usize {
        self.lanes.first().map_or(1, |l| l.windows.len().max(1))
    }

    fn start(
        &mut self,
        session_id: &[u8; 16],
        hello_hash: &[u8; 32],
    ) -> Result<KeyShare, PartError> {
        // A new migration starts from nothing: a failed one's session goes first.
        self.reset()?;
        let (_, m) = self.call_with(
            0,
            Request {
                op: Op::HS_START.0,
                bytes: 32,
                session_id: *session_id,
                ..Request::default()
            },
            hello_hash.to_vec(),
        )?;
        let m: [u8; handshake::KeyShare::SIZE] = exact(m, "key share")?;
        Ok(handshake::KeyShare::decode(&m).into())
    }

    fn finish_handshake(&mut self, reply: &KeyReply) -> Result<(KeyConfirm, [u8; 32]), PartError> {
        let bytes = handshake::KeyReply::from(*reply).encode();
        let (_, m) = self.call_with(
            0,
            Request {
                op: Op::HS_FINISH.0,
                bytes: bytes.len() as u32,
                ..Request::default()
            },
            bytes.to_vec(),
        )?;
        let m: [u8; 64] = exact(m, "confirmation")?;
        let mut c = KeyConfirm { mac: [0; 32] };
        c.mac.copy_from_slice(&m[..32]);
        let mut t = [0u8; 32];
        t.copy_from_slice(&m[32..]);
        Ok((c, t))
    }

    fn submit(
        &mut self,
        lane: usize,
        round: u32,
        gpas: &[u64],
        zero: ZeroPages,
    ) -> Result<(), PartError> {
        let (window, _, _) = self.take_window(lane)?;
        Ok(HelperLanes::start(
            self,
            lane,
            Request {
                op: Op::EXPORT.0,
                window: window as u32,
                count: gpas.len() as u32,
                round,
                flags: match zero {
                    ZeroPages::Sealed => 0,
                    ZeroPages::ShortRecords => flags::ZERO_RECORDS,
                },
                ..Request::default()
            },
            gpas.to_vec(),
        )?)
    }

    fn wait(&mut self) -> Result<Sealed, PartError> {
        let d = self.next()?;
        let (resp, _) = d.result?;
        let size = self.lane(d.lane)?.window_size;
        let bytes = resp.bytes as usize;
        if bytes > size {
            return Err(LaneError::Overfull {
                lane: d.lane,
                bytes,
                size,
            }
            .into());
        }
        Ok(Sealed {
            lane: d.lane,
            round: d.round,
            count: resp.count,
            bytes,
            window: d.window,
        })
    }

    fn send(&mut self, batch: &Sealed, out: &mut dyn RecordSink) -> std::io::Result<()> {
        let gpa = self
            .lanes
            .get(batch.lane)
            .and_then(|l| l.windows.get(batch.window))
            .copied()
            .ok_or_else(|| std::io::Error::other("no such record window"))?;
        // The lane seals into its other window meanwhile; this one is ours until freed.
        let result = match out.fd() {
            Some(fd) => {
                let mut fd = fd;
                self.view.write_shared_to(gpa, batch.bytes, &mut fd)
            }
            None => {
                let mut copy = vec![0u8; batch.bytes];
                self.view.read(gpa, &mut copy).and_then(|()| {
                    out.write_all(&copy).map_err(|e| MemoryError::Stream {
                        gpa,
                        len: batch.bytes,
                        source: Box::new(e),
                    })
                })
            }
        };
        self.free_window(batch.lane, batch.window);
        result.map_err(std::io::Error::other)
    }

    fn seal_blob(
        &mut self,
        kind: Kind,
        index: u32,
        round: u32,
        blob: &[u8],
    ) -> Result<Vec<u8>, PartError> {
        let req = Request {
            op: Op::SEAL_BLOB.0,
            kind: u32::from(kind.0),
            index,
            round,
            bytes: blob.len() as u32,
            ..Request::default()
        };
        Ok(self
            .window_call(req, HEADER_SIZE, blob, None)
            .map(|(_, _, record)| record)?)
    }

    fn manifest(&mut self, round: u32) -> Result<[u8; MANIFEST_RECORD_SIZE], PartError> {
        let req = Request {
            op: Op::FINISH.0,
            round,
            ..Request::default()
        };
        let (_, _, record) = self.window_call(req, 0, &[], Some(MANIFEST_RECORD_SIZE))?;
        Ok(exact(record, "manifest")?)
    }

    fn commit(&mut self, round: u32) -> Result<([u8; COMMIT_RECORD_SIZE], [u8; 32]), PartError> {
        let req = Request {
            op: Op::COMMIT.0,
            round,
            ..Request::default()
        };
        let (_, th, record) = self.window_call(req, 0, &[], Some(COMMIT_RECORD_SIZE))?;
        Ok((
            exact(record, "commit record")?,
            exact(th, "transcript hash")?,
        ))
    }

    fn release(&mut self, token: &AbortToken) -> Result<(), PartError> {
        Ok(self.release_with(Origin::TARGET, &token.tag)?)
    }
}

/// A record window being filled from the migration stream (the target's no-copy path).
struct WindowDest<'a> {
    view: &'a HostView,
    /// Where the next bytes go.
    gpa: u64,
    /// A failure on the memory side (the stream's own failures are the reader's).
    failed: Option<MemoryError>,
}

impl RecordDest for WindowDest<'_> {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        // What the stream reader had buffered already: one copy of at most its buffer.
        match self.view.write(self.gpa, bytes) {
            Ok(()) => {
                self.gpa += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let copy = std::io::Error::other(e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
        }
    }

    fn read_from(&mut self, fd: BorrowedFd<'_>, len: usize) -> std::io::Result<()> {
        let mut fd = fd;
        match self.view.read_shared_from(self.gpa, len, &mut fd) {
            Ok(()) => {
                self.gpa += len as u64;
                Ok(())
            }
            // The socket failed (or ended): the reader reports it with its position.
            Err(MemoryError::Stream { source, .. }) => Err(match source.downcast() {
                Ok(io) => *io,
                Err(other) => std::io::Error::other(other),
            }),
            Err(e) => {
                let copy = std::io::Error::other(e.to_string());
                self.failed = Some(e);
                Err(copy)
            }
        }
    }
}

/// `bytes` as an array of exactly `N`, or the helper answered wrongly.
fn exact<const N: usize>(bytes: Vec<u8>, what: &'static str) -> Result<[u8; N], LaneError> {
    let got = bytes.len();
    bytes
        .try_into()
        .map_err(|_| LaneError::Size { what, got, want: N })
}

impl HelperLanes {
    /// Releases a committed source guest (RELEASE) with a 32-byte token from `origin`:
    /// the target helper's abort token, or the guest owner's break-glass token.
    pub fn release_with(&mut self, origin: Origin, tag: &[u8; 32]) -> Result<(), LaneError> {
        self.call_with(
            0,
            Request {
                op: Op::RELEASE.0,
                kind: origin.0,
                bytes: 32,
                ..Request::default()
            },
            tag.to_vec(),
        )
        .map(drop)
    }
}

impl HelperLanes {
    /// Collects finished opens until at most `keep` are in flight; remembers the first
    /// refusal.
    fn settle(&mut self, keep: usize) -> Result<(), LaneError> {
        while self.in_flight > keep {
            let d = self.next()?;
            self.free_window(d.lane, d.window);
            if let Err(e) = d.result {
                self.refuse(e);
            }
        }
        match std::mem::replace(&mut self.refused, Refusal::Reported) {
            Refusal::None => {
                self.refused = Refusal::None;
                Ok(())
            }
            Refusal::Pending(e) => Err(e),
            Refusal::Reported => Err(LaneError::AlreadyRefused),
        }
    }

    /// Keeps the first refusal.
    fn refuse(&mut self, e: LaneError) {
        if matches!(self.refused, Refusal::None) {
            self.refused = Refusal::Pending(e);
        }
    }
}

impl Opener for HelperLanes {
    fn lanes(&self) -> usize {
        self.lanes.len()
    }

    fn respond(
        &mut self,
        session_id: &[u8; 16],
        hello_hash: &[u8; 32],
        share: &KeyShare,
    ) -> Result<KeyReply, PartError> {
        self.reset()?;
        let mut m = hello_hash.to_vec();
        m.extend_from_slice(&handshake::KeyShare::from(*share).encode());
        let (_, reply) = self.call_with(
            0,
            Request {
                op: Op::HS_RESPOND.0,
                bytes: m.len() as u32,
                session_id: *session_id,
                ..Request::default()
            },
            m,
        )?;
        let reply: [u8; handshake::KeyReply::SIZE] = exact(reply, "key reply")?;
        Ok(handshake::KeyReply::decode(&reply).into())
    }

    fn confirm(&mut self, confirm: &KeyConfirm) -> Result<[u8; 32], PartError> {
        let (_, th) = self.call_with(
            0,
            Request {
                op: Op::HS_CONFIRM.0,
                bytes: 32,
                ..Request::default()
            },
            confirm.mac.to_vec(),
        )?;
        Ok(exact(th, "transcript hash")?)
    }

    fn receive(
        &mut self,
        lane: usize,
        from: &mut dyn RecordSource,
    ) -> Result<BatchWindow, PartError> {
        // Wait for one of this lane's windows to come free.
        while self.lane(lane)?.free.is_empty() {
            let d = self.next()?;
            self.free_window(d.lane, d.window);
            if let Err(e) = d.result {
                self.refuse(e);
            }
        }
        self.settle(usize::MAX)?;
        let (window, gpa, size) = self.take_window(lane)?;
        let len = from.len();
        if len > size {
            self.free_window(lane, window);
            return Err(LaneError::TooLarge { len, size }.into());
        }
        // The records go from the socket into the window through the host view, which
        // takes them only into shared memory (the window is the helper's shared mailbox
        // memory).
        let mut dest = WindowDest {
            view: &self.view,
            gpa,
            failed: None,
        };
        if let Err(e) = from.read_into(&mut dest) {
            let failed = dest.failed.take();
            self.free_window(lane, window);
            return Err(match failed {
                Some(memory) => LaneError::Fill(memory),
                None => LaneError::Receive(e),
            }
            .into());
        }
        Ok(BatchWindow {
            lane,
            window,
            bytes: len,
        })
    }

    fn read_window(
        &mut self,
        batch: &BatchWindow,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), PartError> {
        let gpa = self
            .lanes
            .get(batch.lane)
            .and_then(|l| l.windows.get(batch.window))
            .copied()
            .ok_or(LaneError::NoSuchLane {
                lane: batch.lane,
                lanes: self.lanes.len(),
            })?;
        let end = offset.checked_add(out.len()).filter(|&e| e <= batch.bytes);
        if end.is_none() {
            return Err(LaneError::TooLarge {
                len: offset.saturating_add(out.len()),
                size: batch.bytes,
            }
            .into());
        }
        self.view
            .read(gpa + offset as u64, out)
            .map_err(|e| LaneError::ReadWindow(e).into())
    }

    fn import(&mut self, batch: BatchWindow, count: u32) -> Result<(), PartError> {
        Ok(HelperLanes::start(
            self,
            batch.lane,
            Request {
                op: Op::IMPORT.0,
                window: batch.window as u32,
                count,
                bytes: batch.bytes as u32,
                ..Request::default()
            },
            Vec::new(),
        )?)
    }

    fn discard(&mut self, batch: BatchWindow) {
        self.free_window(batch.lane, batch.window);
    }

    fn drain(&mut self) -> Result<(), PartError> {
        Ok(self.settle(0)?)
    }

    fn open_blob(&mut self, record: &[u8]) -> Result<(Kind, u32), PartError> {
        self.settle(0)?;
        let req = Request {
            op: Op::OPEN_BLOB.0,
            bytes: record.len() as u32,
            ..Request::default()
        };
        let (resp, _, _) = self.window_call(req, 0, record, Some(0))?;
        let kind = u8::try_from(resp.kind)
            .map(Kind)
            .map_err(|_| LaneError::BadKind(resp.kind))?;
        Ok((kind, resp.index))
    }

    fn verify_manifest(&mut self, record: &[u8; MANIFEST_RECORD_SIZE]) -> Result<(), PartError> {
        self.settle(0)?;
        let req = Request {
            op: Op::FINISH.0,
            bytes: record.len() as u32,
            ..Request::default()
        };
        Ok(self.window_call(req, 0, record, Some(0)).map(drop)?)
    }

    fn commit(&mut self, record: &[u8; COMMIT_RECORD_SIZE]) -> Result<(), PartError> {
        self.settle(0)?;
        let req = Request {
            op: Op::COMMIT.0,
            bytes: record.len() as u32,
            ..Request::default()
        };
        Ok(self.window_call(req, 0, record, Some(0)).map(drop)?)
    }

    fn abort(&mut self) -> Result<AbortToken, PartError> {
        Ok(self.abort_session()?)
    }
}

impl HelperLanes {
    /// Gives the target's session up for good (ABORT): the token that releases the
    /// source. Whatever is still in flight finishes first (the helper refuses ABORT while
    /// a request is inside); its outcome no longer matters.
    pub fn abort_session(&mut self) -> Result<AbortToken, LaneError> {
        let _ = self.settle(0);
        let (_, tag) = self.call_with(
            0,
            Request {
                op: Op::ABORT.0,
                ..Request::default()
            },
            Vec::new(),
        )?;
        Ok(AbortToken {
            tag: exact(tag, "abort token")?,
        })
    }
}
