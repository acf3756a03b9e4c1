//! The mirror's helper vCPUs as the migration engine's sealer (source) and opener
//! (target). Each helper vCPU is a lane with its own thread — a vCPU always runs on the
//! thread that created its watchdog, and lanes seal or open in parallel — and two record
//! windows, so the engine sends batch k from one window while the lane seals batch k+1
//! into the other. Sealed records go to the socket straight from the window.

use helper_abi::{
    handshake,
    mailbox::{flags, Op, Origin, Request, Response},
    record::{Kind, COMMIT_RECORD_SIZE, HEADER_SIZE, MANIFEST_RECORD_SIZE},
};
use migration::{
    engine::{Opener, RecordSink, Sealed, Sealer, ZeroPages},
    frames::{AbortToken, KeyConfirm, KeyReply, KeyShare},
};
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
    message: Vec<u8>,
}

/// A lane's answer.
struct Done {
    lane: usize,
    window: usize,
    round: u32,
    result: Result<(Response, Vec<u8>), String>,
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
        let result = helper
            .call_ok_with(job.req, &job.gpas, &job.message)
            .map_err(describe);
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
    pub fn new(mut helpers: Vec<HelperVcpu>, max_batch: usize) -> std::io::Result<HelperLanes> {
        let view = match helpers.first() {
            Some(h) => h.view().clone(),
            None => return Err(std::io::Error::other("no helper vCPUs")),
        };
        // A lane's frames carry its helper's lane id (the slot its entry took), which the
        // records' headers carry too: lane i must be the helper in slot i.
        helpers.sort_by_key(HelperVcpu::index);
        if let Some((i, h)) = helpers
            .iter()
            .enumerate()
            .find(|(i, h)| usize::from(h.index()) != *i)
        {
            return Err(std::io::Error::other(format!(
                "helper vCPU {i} holds slot {}: a migration needs the helpers in slots 0..{} (an earlier mirror took the others; slots are never reused)",
                h.index(),
                helpers.len()
            )));
        }
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
        self.start_with(lane, req, gpas, Vec::new())
    }

    /// Hands a request with a message to a lane's thread.
    fn start_with(
        &mut self,
        lane: usize,
        req: Request,
        gpas: Vec<u64>,
        message: Vec<u8>,
    ) -> Result<(), String> {
        let jobs = self
            .lane(lane)?
            .jobs
            .as_ref()
            .ok_or("the lane has stopped")?;
        jobs.send(Job { req, gpas, message })
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
        self.call_with(lane, req, Vec::new()).map(|(r, _)| r)
    }

    /// Like `call`, with a message in and out.
    fn call_with(
        &mut self,
        lane: usize,
        req: Request,
        message: Vec<u8>,
    ) -> Result<(Response, Vec<u8>), String> {
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

    /// Runs a record-window request on lane 0 with `data` at `at` of a window first;
    /// the response and `out` bytes of the window after.
    fn window_call(
        &mut self,
        mut req: Request,
        at: usize,
        data: &[u8],
        out: Option<usize>,
    ) -> Result<(Response, Vec<u8>, Vec<u8>), String> {
        let (window, gpa, size) = self.take_window(0)?;
        req.window = window as u32;
        let result = (|| {
            if at + data.len() > size {
                return Err(format!(
                    "{} bytes do not fit the helper's {size}-byte window",
                    at + data.len()
                ));
            }
            if !data.is_empty() {
                self.view
                    .write(gpa + at as u64, data)
                    .map_err(|e| format!("cannot fill the record window: {e}"))?;
            }
            let (resp, message) = self.call_with(0, req, Vec::new())?;
            let len = out.unwrap_or(resp.bytes as usize);
            if len > size {
                return Err(format!(
                    "the helper reports {len} bytes in a {size}-byte window"
                ));
            }
            let mut bytes = vec![0u8; len];
            self.view
                .read(gpa, &mut bytes)
                .map_err(|e| format!("cannot read the record window: {e}"))?;
            Ok((resp, message, bytes))
        })();
        self.free_window(0, window);
        result
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

    fn start(&mut self, session_id: &[u8; 16], hello_hash: &[u8; 32]) -> Result<KeyShare, String> {
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
        let m: [u8; handshake::KeyShare::SIZE] = m
            .try_into()
            .map_err(|_| "the helper's key share has the wrong size".to_string())?;
        Ok(handshake::KeyShare::decode(&m).into())
    }

    fn finish_handshake(&mut self, reply: &KeyReply) -> Result<(KeyConfirm, [u8; 32]), String> {
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
        match (m.get(..32), m.get(32..64)) {
            (Some(mac), Some(th)) => {
                let mut c = KeyConfirm { mac: [0; 32] };
                c.mac.copy_from_slice(mac);
                let mut t = [0u8; 32];
                t.copy_from_slice(th);
                Ok((c, t))
            }
            _ => Err("the helper's confirmation has the wrong size".into()),
        }
    }

    fn submit(
        &mut self,
        lane: usize,
        round: u32,
        gpas: &[u64],
        zero: ZeroPages,
    ) -> Result<(), String> {
        let (window, _, _) = self.take_window(lane)?;
        self.start(
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
        )
    }

    fn wait(&mut self) -> Result<Sealed, String> {
        let d = self.next()?;
        let (resp, _) = d.result?;
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

    fn seal_blob(
        &mut self,
        kind: Kind,
        index: u32,
        round: u32,
        blob: &[u8],
    ) -> Result<Vec<u8>, String> {
        let req = Request {
            op: Op::SEAL_BLOB.0,
            kind: u32::from(kind.0),
            index,
            round,
            bytes: blob.len() as u32,
            ..Request::default()
        };
        self.window_call(req, HEADER_SIZE, blob, None)
            .map(|(_, _, record)| record)
    }

    fn manifest(&mut self, round: u32) -> Result<[u8; MANIFEST_RECORD_SIZE], String> {
        let req = Request {
            op: Op::FINISH.0,
            round,
            ..Request::default()
        };
        let (_, _, record) = self.window_call(req, 0, &[], Some(MANIFEST_RECORD_SIZE))?;
        record
            .try_into()
            .map_err(|_| "the manifest has the wrong size".into())
    }

    fn commit(&mut self, round: u32) -> Result<([u8; COMMIT_RECORD_SIZE], [u8; 32]), String> {
        let req = Request {
            op: Op::COMMIT.0,
            round,
            ..Request::default()
        };
        let (_, th, record) = self.window_call(req, 0, &[], Some(COMMIT_RECORD_SIZE))?;
        let record = record
            .try_into()
            .map_err(|_| "the commit record has the wrong size".to_string())?;
        let th = th
            .try_into()
            .map_err(|_| "the helper gave no transcript hash".to_string())?;
        Ok((record, th))
    }

    fn release(&mut self, token: &AbortToken) -> Result<(), String> {
        self.call_with(
            0,
            Request {
                op: Op::RELEASE.0,
                kind: Origin::TARGET.0,
                bytes: 32,
                ..Request::default()
            },
            token.tag.to_vec(),
        )
        .map(drop)
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

    fn respond(
        &mut self,
        session_id: &[u8; 16],
        hello_hash: &[u8; 32],
        share: &KeyShare,
    ) -> Result<KeyReply, String> {
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
        let reply: [u8; handshake::KeyReply::SIZE] = reply
            .try_into()
            .map_err(|_| "the helper's key reply has the wrong size".to_string())?;
        Ok(handshake::KeyReply::decode(&reply).into())
    }

    fn confirm(&mut self, confirm: &KeyConfirm) -> Result<[u8; 32], String> {
        let (_, th) = self.call_with(
            0,
            Request {
                op: Op::HS_CONFIRM.0,
                bytes: 32,
                ..Request::default()
            },
            confirm.mac.to_vec(),
        )?;
        th.try_into()
            .map_err(|_| "the helper gave no transcript hash".into())
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

    fn open_blob(&mut self, record: &[u8]) -> Result<(Kind, u32), String> {
        self.drain()?;
        let req = Request {
            op: Op::OPEN_BLOB.0,
            bytes: record.len() as u32,
            ..Request::default()
        };
        let (resp, _, _) = self.window_call(req, 0, record, Some(0))?;
        let kind = u8::try_from(resp.kind)
            .map(Kind)
            .map_err(|_| format!("the helper reports record kind {}", resp.kind))?;
        Ok((kind, resp.index))
    }

    fn verify_manifest(&mut self, record: &[u8; MANIFEST_RECORD_SIZE]) -> Result<(), String> {
        self.drain()?;
        let req = Request {
            op: Op::FINISH.0,
            bytes: record.len() as u32,
            ..Request::default()
        };
        self.window_call(req, 0, record, Some(0)).map(drop)
    }

    fn commit(&mut self, record: &[u8; COMMIT_RECORD_SIZE]) -> Result<(), String> {
        self.drain()?;
        let req = Request {
            op: Op::COMMIT.0,
            bytes: record.len() as u32,
            ..Request::default()
        };
        self.window_call(req, 0, record, Some(0)).map(drop)
    }

    fn abort(&mut self) -> Result<AbortToken, String> {
        // Whatever is still in flight finishes first (the helper refuses ABORT while a
        // request is inside); its outcome no longer matters.
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
            tag: tag
                .try_into()
                .map_err(|_| "the helper's abort token has the wrong size".to_string())?,
        })
    }
}
