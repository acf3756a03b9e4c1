//! The mirror's helper vCPUs as the migration engine's sealer (source) and opener
//! (target). Each helper vCPU is a lane with its own thread — a vCPU always runs on the
//! thread that created its watchdog, and lanes seal or open in parallel — and two record
//! windows, so the engine sends batch k from one window while the lane seals batch k+1
//! into the other. Sealed records go to the socket straight from the window.

use helper_abi::{
    mailbox::{Op, Request, Response, Role},
    record::MANIFEST_RECORD_SIZE,
};
use migration::engine::{Opener, RecordSink, Sealed, Sealer};
use std::{
    collections::VecDeque,
    sync::mpsc::{self, Receiver, Sender},
    thread::JoinHandle,
};
use vmm::{
    memory::HostView,
    mirror::{HelperError, HelperVcpu},
};

/// The error and its causes on one line.
fn describe(e: HelperError) -> String {
    format!("{:#}", anyhow::Error::new(e))
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
    result: Result<Response, String>,
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
    refused: Option<String>,
}

fn serve(mut helper: HelperVcpu, jobs: Receiver<Job>, done: Sender<Done>) -> HelperVcpu {
    let lane = usize::from(helper.index());
    while let Ok(job) = jobs.recv() {
        let result = helper.call_ok(job.req, &job.gpas).map_err(describe);
        let answer = Done {
            lane,
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
    pub fn new(helpers: Vec<HelperVcpu>, max_batch: usize) -> std::io::Result<HelperLanes> {
        let view = match helpers.first() {
            Some(h) => h.view().clone(),
            None => return Err(std::io::Error::other("no helper vCPUs")),
        };
        let (done_tx, done) = mpsc::channel();
        let mut lanes = Vec::with_capacity(helpers.len());
        for h in helpers {
            let windows: Vec<u64> = (0..h.windows()).map(|w| h.window_gpa(w)).collect();
            let window_size = h.window_size();
            let (jobs, rx) = mpsc::channel();
            let done_tx = done_tx.clone();
            let thread = std::thread::Builder::new()
                .name(format!("helper-{}", h.index()))
                .spawn(move || serve(h, rx, done_tx))?;
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
            refused: None,
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

    fn lane(&mut self, lane: usize) -> Result<&mut Lane, String> {
        let n = self.lanes.len();
        self.lanes
            .get_mut(lane)
            .ok_or_else(|| format!("lane {lane} of {n} helper vCPUs"))
    }

    /// Hands a request to a lane's thread.
    fn start(&mut self, lane: usize, req: Request, gpas: Vec<u64>) -> Result<(), String> {
        let jobs = self
            .lane(lane)?
            .jobs
            .as_ref()
            .ok_or("the lane has stopped")?;
        jobs.send(Job { req, gpas })
            .map_err(|_| format!("helper vCPU {lane} has stopped"))?;
        self.in_flight += 1;
        Ok(())
    }

    /// The next answer of any lane.
    fn next(&mut self) -> Result<Done, String> {
        if let Some(d) = self.early.pop_front() {
            return Ok(d);
        }
        let d = self
            .done
            .recv()
            .map_err(|_| "every helper vCPU has stopped".to_string())?;
        self.in_flight -= 1;
        Ok(d)
    }

    /// Runs one request on `lane` and waits for its answer (nothing else in flight).
    fn call(&mut self, lane: usize, req: Request) -> Result<Response, String> {
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
    fn reset(&mut self) -> Result<(), String> {
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
    pub fn start_source(&mut self, session_id: [u8; 16]) -> Result<[u8; 16], String> {
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
    fn take_window(&mut self, lane: usize) -> Result<(usize, u64, usize), String> {
        let l = self.lane(lane)?;
        let w = l
            .free
            .pop()
            .ok_or_else(|| format!("lane {lane} has no free record window"))?;
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

    fn submit(&mut self, lane: usize, round: u32, gpas: &[u64]) -> Result<(), String> {
        let (window, _, _) = self.take_window(lane)?;
        self.start(
            lane,
            Request {
                op: Op::EXPORT.0,
                window: window as u32,
                count: gpas.len() as u32,
                round,
                ..Request::default()
            },
            gpas.to_vec(),
        )
    }

    fn wait(&mut self) -> Result<Sealed, String> {
        let d = self.next()?;
        let resp = d.result?;
        let size = self.lane(d.lane)?.window_size;
        let bytes = resp.bytes as usize;
        if bytes > size {
            return Err(format!(
                "helper vCPU {} reports {bytes} bytes of records in a {size}-byte window",
                d.lane
            ));
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
                    out.write_all(&copy)
                        .map_err(|e| vmm::memory::MemoryError::Stream {
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

    fn manifest(&mut self, round: u32) -> Result<[u8; MANIFEST_RECORD_SIZE], String> {
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
                .map_err(|e| format!("cannot read the manifest: {e}"))
        });
        self.free_window(0, window);
        read.map(|()| record)
    }
}

impl HelperLanes {
    /// Collects finished opens until at most `keep` are in flight; remembers the first
    /// refusal.
    fn settle(&mut self, keep: usize) -> Result<(), String> {
        while self.in_flight > keep {
            let d = self.next()?;
            self.free_window(d.lane, d.window);
            if let Err(e) = d.result {
                self.refused.get_or_insert(e);
            }
        }
        match &self.refused {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }
}

impl Opener for HelperLanes {
    fn lanes(&self) -> usize {
        self.lanes.len()
    }

    fn keys(&mut self, session_id: &[u8; 16], source_nonce: &[u8; 16]) -> Result<(), String> {
        self.reset()?;
        self.call(
            0,
            Request {
                op: Op::KEYS.0,
                role: Role::TARGET.0,
                session_id: *session_id,
                peer_nonce: *source_nonce,
                ..Request::default()
            },
        )
        .map(drop)
    }

    fn submit(&mut self, lane: usize, records: &[u8]) -> Result<(), String> {
        // Wait for one of this lane's windows to come free.
        while self.lane(lane)?.free.is_empty() {
            let d = self.next()?;
            self.free_window(d.lane, d.window);
            if let Err(e) = d.result {
                self.refused.get_or_insert(e);
            }
        }
        self.settle(usize::MAX)?;
        let (window, gpa, size) = self.take_window(lane)?;
        if records.len() > size {
            self.free_window(lane, window);
            return Err(format!(
                "a batch of {} bytes does not fit the helper's {size}-byte window",
                records.len()
            ));
        }
        if let Err(e) = self.view.write(gpa, records) {
            self.free_window(lane, window);
            return Err(format!("cannot fill the record window: {e}"));
        }
        let count = helper_abi::record::walk(records, records.len()).count() as u32;
        self.start(
            lane,
            Request {
                op: Op::IMPORT.0,
                window: window as u32,
                count,
                bytes: records.len() as u32,
                ..Request::default()
            },
            Vec::new(),
        )
    }

    fn drain(&mut self) -> Result<(), String> {
        self.settle(0)
    }

    fn verify_manifest(
        &mut self,
        lane: usize,
        record: &[u8; MANIFEST_RECORD_SIZE],
    ) -> Result<(), String> {
        self.drain()?;
        let (window, gpa, _) = self.take_window(lane)?;
        let result = self
            .view
            .write(gpa, record)
            .map_err(|e| format!("cannot fill the record window: {e}"))
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
        result.map(drop)
    }
}
