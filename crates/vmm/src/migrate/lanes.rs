//! The mirror's helper vCPUs as the migration engine's sealer (source) and opener
//! (target). Each helper vCPU is a lane with its own thread — a vCPU always runs on the
//! thread that created its watchdog, and lanes seal or open in parallel — and two record
//! windows, so the engine sends batch k from one window while the lane seals batch k+1
//! into the other. Sealed records go to the socket straight from the window.

use crate::{
    memory::{HostView, MemoryError},
    mirror::{HelperError, HelperVcpu},
};
use helper_abi::{
    mailbox::{Op, Request, Response, Role},
    record::MANIFEST_RECORD_SIZE,
};
use migration::engine::{Opener, PartError, RecordSink, Sealed, Sealer};
use std::{
    collections::VecDeque,
    sync::mpsc::{self, Receiver, Sender},
    thread::JoinHandle,
};

/// Why a lane could not seal or open.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// Lanes need at least one helper vCPU.
    #[error("no helper vCPUs")]
    NoHelpers,
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
    /// The sealed manifest could not be read back.
    #[error("cannot read the manifest")]
    Manifest(#[source] MemoryError),
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
}

/// A lane's answer.
struct Done {
    lane: usize,
    window: usize,
    round: u32,
    result: Result<Response, LaneError>,
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
            .call_ok(job.req, &job.gpas)
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
    pub fn new(helpers: Vec<HelperVcpu>, max_batch: usize) -> Result<HelperLanes, LaneError> {
        let view = match helpers.first() {
            Some(h) => h.view().clone(),
            None => return Err(LaneError::NoHelpers),
        };
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
        let jobs = self
            .lane(lane)?
            .jobs
            .as_ref()
            .ok_or(LaneError::Stopped(lane))?;
        jobs.send(Job { req, gpas })
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
        self.start(lane, req, Vec::new())?;
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

    /// Clears every lane and the session, then derives the source's keys for
    /// `session_id`; returns the helper's nonce for the Hello.
    pub fn start_source(&mut self, session_id: [u8; 16]) -> Result<[u8; 16], LaneError> {
        self.reset()?;
        let resp = self.call(
            0,
            Request {
                op: Op::KEYS.0,
                role: Role::SOURCE.0,
                session_id,
                ..Request::default()
            },
        )?;
        Ok(resp.nonce)
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

    fn submit(&mut self, lane: usize, round: u32, gpas: &[u64]) -> Result<(), PartError> {
        let (window, _, _) = self.take_window(lane)?;
        Ok(self.start(
            lane,
            Request {
                op: Op::EXPORT.0,
                window: window as u32,
                count: gpas.len() as u32,
                round,
                ..Request::default()
            },
            gpas.to_vec(),
        )?)
    }

    fn wait(&mut self) -> Result<Sealed, PartError> {
        let d = self.next()?;
        let resp = d.result?;
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

    fn manifest(&mut self, round: u32) -> Result<[u8; MANIFEST_RECORD_SIZE], PartError> {
        let (window, gpa, _) = self.take_window(0)?;
        let result = self.call(
            0,
            Request {
                op: Op::FINISH.0,
                window: window as u32,
                round,
                ..Request::default()
            },
        );
        let mut record = [0u8; MANIFEST_RECORD_SIZE];
        let read = result.and_then(|_| {
            self.view
                .read(gpa, &mut record)
                .map_err(LaneError::Manifest)
        });
        self.free_window(0, window);
        Ok(read.map(|()| record)?)
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

    fn keys(&mut self, session_id: &[u8; 16], source_nonce: &[u8; 16]) -> Result<(), PartError> {
        self.reset()?;
        Ok(self
            .call(
                0,
                Request {
                    op: Op::KEYS.0,
                    role: Role::TARGET.0,
                    session_id: *session_id,
                    peer_nonce: *source_nonce,
                    ..Request::default()
                },
            )
            .map(drop)?)
    }

    fn submit(&mut self, lane: usize, records: &[u8]) -> Result<(), PartError> {
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
        if records.len() > size {
            self.free_window(lane, window);
            return Err(LaneError::TooLarge {
                len: records.len(),
                size,
            }
            .into());
        }
        if let Err(e) = self.view.write(gpa, records) {
            self.free_window(lane, window);
            return Err(LaneError::Fill(e).into());
        }
        let count = helper_abi::record::walk(records, records.len()).count() as u32;
        Ok(self.start(
            lane,
            Request {
                op: Op::IMPORT.0,
                window: window as u32,
                count,
                bytes: records.len() as u32,
                ..Request::default()
            },
            Vec::new(),
        )?)
    }

    fn drain(&mut self) -> Result<(), PartError> {
        Ok(self.settle(0)?)
    }

    fn verify_manifest(
        &mut self,
        lane: usize,
        record: &[u8; MANIFEST_RECORD_SIZE],
    ) -> Result<(), PartError> {
        self.settle(0)?;
        let (window, gpa, _) = self.take_window(lane)?;
        let result = self
            .view
            .write(gpa, record)
            .map_err(LaneError::Fill)
            .and_then(|()| {
                self.call(
                    lane,
                    Request {
                        op: Op::FINISH.0,
                        window: window as u32,
                        bytes: record.len() as u32,
                        ..Request::default()
                    },
                )
            });
        self.free_window(lane, window);
        Ok(result.map(drop)?)
    }
}
