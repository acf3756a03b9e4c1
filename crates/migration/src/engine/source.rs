//! The source: the helpers' key agreement (SEV), precopy rounds while the guest runs,
//! stop-and-copy once the dirty set fits the downtime budget, then device and vCPU state,
//! the helper's manifest, the target's Ready, the commit, and the wait for the target's
//! confirmation.
//!
//! Before the commit any failure leaves the guest running. The commit flags the guest
//! "migrated out" in its own memory (the source helper does that when it seals the
//! commit record): from then on this guest runs again only if the target's helper aborts
//! the session (its AbortToken, checked by the source helper) or the guest owner does
//! (`owner abort`, later).

use super::{chain, update, MigrationError, PartError, Progress, Status};
use crate::frames::{
    AbortToken, FailureCode, KeyConfirm, KeyReply, KeyShare, SharedList, RECORD_OVERHEAD,
};
use crate::{
    codec::{FrameReader, Incoming},
    frames::{
        Abort, Ack, DeviceState, Done, Frame, FrameError, Hello, HelloAck, Manifest, MessageType,
        PageBatchHeader, PageData, PlainPage, PlainPages, RoundEnd, VcpuState, MAX_PAYLOAD_LEN,
    },
};
use helper_abi::{
    record::{Kind, COMMIT_RECORD_SIZE, HEADER_SIZE, MANIFEST_RECORD_SIZE},
    PAGE_SIZE,
};
use sha2::{Digest, Sha256};
use std::{
    io::{BufWriter, Read, Write},
    os::fd::{AsFd, BorrowedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Bytes buffered before a write to the stream.
const STREAM_BUFFER: usize = 1 << 20;

/// Pages per PlainPages frame.
const PLAIN_BATCH: usize = 256;

/// What the source engine needs from the VM.
pub trait SourceVm {
    /// Every page to migrate, page-aligned, increasing (an SEV guest's helper region is
    /// never migrated and must not be listed).
    fn pages(&self) -> Vec<u64>;
    /// A page as the host sees it (only plain guests' and shared pages are read; which
    /// pages an SEV guest shares, its own sealed list says).
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) -> Result<(), PartError>;
    /// Starts logging the guest's writes.
    fn start_dirty_log(&mut self) -> Result<(), PartError>;
    /// Pages written since the last call (migratable ones only).
    fn take_dirty(&mut self) -> Result<Vec<u64>, PartError>;
    /// Stops logging.
    fn stop_dirty_log(&mut self);
    /// Stops the guest's vCPUs.
    fn pause(&mut self) -> Result<(), PartError>;
    /// Lets them run again.
    fn resume(&mut self);
    /// The devices' state.
    fn device_state(&mut self) -> Result<Vec<u8>, PartError>;
    /// Each vCPU's state, in index order.
    fn vcpu_states(&mut self) -> Result<Vec<Vec<u8>>, PartError>;
    /// Keeps the helper's sealed commit record of the session with transcript hash
    /// `transcript` where an operator finds it (the VMM: a commit file), before it goes
    /// on the wire: a commit lost with the connection then still reaches the target. If
    /// this fails, the commit is not sent and the target is asked to abort instead.
    fn save_commit(
        &mut self,
        transcript: &[u8; 32],
        record: &[u8; COMMIT_RECORD_SIZE],
    ) -> Result<(), PartError>;
}

/// How private pages that are all zero travel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZeroPages {
    /// Sealed like any other page: every private page is a record of the same size, and
    /// the host learns nothing about its contents. The default.
    #[default]
    Sealed,
    /// As 48-byte zero records: less to send, but the host learns which private pages
    /// are zero (a leak the guest owner must accept).
    ShortRecords,
}

/// The source's migration helper (SEV only): runs its side of the key agreement, seals
/// private pages, the shared list and the machine state into records, then the manifest
/// and the commit.
///
/// Sealing is pipelined: the engine submits batches to lanes (helper vCPUs, each with
/// `depth()` record windows) and sends each finished batch while later ones are sealed.
/// Everything else runs on one lane with no batch in flight.
pub trait Sealer {
    /// Helper vCPUs (lanes).
    fn lanes(&self) -> usize;
    /// Most pages per batch.
    fn max_batch(&self) -> usize;
    /// Batches one lane may have sealed or sealing but not yet sent (its windows).
    fn depth(&self) -> usize;
    /// Starts a session (HS_START) bound to `session_id` and the Hello's hash: the key
    /// share for the target.
    fn start(
        &mut self,
        session_id: &[u8; 16],
        hello_hash: &[u8; 32],
    ) -> Result<KeyShare, PartError>;
    /// Checks the target's reply and derives the keys (HS_FINISH): the confirmation for
    /// the target and the transcript hash.
    fn finish_handshake(&mut self, reply: &KeyReply) -> Result<(KeyConfirm, [u8; 32]), PartError>;
    /// Starts sealing `gpas` on `lane` in `round`.
    fn submit(
        &mut self,
        lane: usize,
        round: u32,
        gpas: &[u64],
        zero: ZeroPages,
    ) -> Result<(), PartError>;
    /// Waits for the next finished batch of any lane (each lane's in submission order).
    fn wait(&mut self) -> Result<Sealed, PartError>;
    /// Writes a finished batch's records to `out` (straight from the helper's window
    /// where it can) and frees its window.
    fn send(&mut self, batch: &Sealed, out: &mut dyn RecordSink) -> std::io::Result<()>;
    /// Seals a blob (SEAL_BLOB) of `kind` (the shared list, whose bytes the helper reads
    /// from the guest itself and `blob` is ignored; the device state; vCPU `index`'s
    /// state): the whole record.
    fn seal_blob(
        &mut self,
        kind: Kind,
        index: u32,
        round: u32,
        blob: &[u8],
    ) -> Result<Vec<u8>, PartError>;
    /// The sealed manifest, made on lane 0 once everything was sealed and sent.
    fn manifest(&mut self, round: u32) -> Result<[u8; MANIFEST_RECORD_SIZE], PartError>;
    /// Commits (COMMIT): the guest is "migrated out" from here; the commit record and
    /// the session's transcript hash.
    fn commit(&mut self, round: u32) -> Result<([u8; COMMIT_RECORD_SIZE], [u8; 32]), PartError>;
    /// Releases a committed guest with the target helper's abort token (RELEASE).
    fn release(&mut self, token: &AbortToken) -> Result<(), PartError>;
}

/// A batch of records a lane finished sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sealed {
    /// The lane.
    pub lane: usize,
    /// The round it was sealed in.
    pub round: u32,
    /// Records in it.
    pub count: u32,
    /// Bytes of records.
    pub bytes: usize,
    /// Which of the lane's windows holds them.
    pub window: usize,
}

/// Where a batch's records go: the stream, right after the batch's frame header.
pub trait RecordSink {
    /// The stream's descriptor, to write straight from guest memory (None: use
    /// `write_all`).
    fn fd(&self) -> Option<BorrowedFd<'_>>;
    /// Writes bytes to the stream.
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

/// Precopy policy.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Stop and copy once the dirty set would take at most this long to send.
    pub downtime_limit: Duration,
    /// Stop and copy after this many rounds whatever the dirty set.
    pub max_rounds: u32,
    /// How long to wait for the target to confirm after Done.
    pub confirm_timeout: Duration,
    /// Pages per helper request (at most the helper's limit).
    pub batch: usize,
    /// Bytes per second on the stream, 0 for no limit; read continuously, so a change
    /// applies to a running migration.
    pub max_bandwidth: Arc<AtomicU64>,
    /// How private zero pages travel (SEV).
    pub zero_pages: ZeroPages,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            downtime_limit: Duration::from_millis(300),
            max_rounds: 30,
            confirm_timeout: Duration::from_secs(60),
            batch: helper_abi::MAX_BATCH,
            max_bandwidth: Arc::new(AtomicU64::new(0)),
            zero_pages: ZeroPages::Sealed,
        }
    }
}

/// A `Write` that counts bytes and keeps to the bandwidth limit.
struct Metered<W> {
    inner: W,
    bytes: u64,
    limit: Arc<AtomicU64>,
    /// Start, bytes and limit of the current accounting window (a new limit starts one).
    window: (Instant, u64, u64),
}

impl<W> Metered<W> {
    fn new(inner: W, limit: Arc<AtomicU64>) -> Self {
        Metered {
            inner,
            bytes: 0,
            limit,
            window: (Instant::now(), 0, 0),
        }
    }

    /// Counts `n` bytes sent and sleeps as long as the limit requires.
    fn account(&mut self, n: u64) {
        self.bytes += n;
        let limit = self.limit.load(Ordering::Relaxed);
        let now = Instant::now();
        if limit != self.window.2 {
            self.window = (now, 0, limit);
        }
        self.window.1 += n;
        if limit == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.window.1 as f64 / limit as f64);
        let wait = due.saturating_sub(now.duration_since(self.window.0));
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

impl<W: Write> Write for Metered<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.account(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The stream under the buffer, for records sent straight from guest memory.
struct Direct<'a, W: Write + AsFd>(&'a mut BufWriter<W>);

impl<W: Write + AsFd> RecordSink for Direct<'_, W> {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.0.get_ref().as_fd())
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.0.get_mut().write_all(bytes)
    }
}

struct Source<'a, R, W: Write + AsFd> {
    reader: FrameReader<R>,
    out: Metered<BufWriter<W>>,
    vm: &'a mut dyn SourceVm,
    sealer: Option<&'a mut dyn Sealer>,
    options: &'a SourceOptions,
    progress: &'a Mutex<Progress>,
    cancel: &'a AtomicBool,
    started: Instant,
    paused_at: Option<Instant>,
    /// Set once the helper committed (the guest is "migrated out"), until an abort of
    /// the session released it: the committed session's transcript hash.
    committed: Option<[u8; 32]>,
    /// An Abort went to the target after the commit (to get its abort token).
    asked_abort: bool,
    /// The shared ranges of the last sealed list (SEV), (first page GPA, end GPA).
    shared: Vec<(u64, u64)>,
    buf: Vec<u8>,
}

/// Migrates the guest: `hello` describes it; `reader`/`writer` are the two directions of
/// the stream (the reader should time out, e.g. a socket read timeout, so a vanished
/// target cannot hang the source). On any failure the guest is running again when this
/// returns.
#[allow(clippy::too_many_arguments)]
pub fn migrate<'a, R: Read, W: Write + AsFd>(
    reader: R,
    writer: W,
    hello: &Hello,
    vm: &'a mut dyn SourceVm,
    sealer: Option<&'a mut dyn Sealer>,
    options: &'a SourceOptions,
    progress: &'a Mutex<Progress>,
    cancel: &'a AtomicBool,
) -> Result<(), MigrationError> {
    update(progress, |p| {
        *p = Progress {
            status: Status::Setup,
            total_bytes: hello.mem_size,
            ..Progress::default()
        }
    });
    let mut s = Source {
        reader: FrameReader::new(reader, Incoming::FromTarget),
        // Small frames and plain-page entries go out in large writes: a syscall per 4 KiB
        // page is what made plain migration slow on this machine.
        out: Metered::new(
            BufWriter::with_capacity(STREAM_BUFFER, writer),
            options.max_bandwidth.clone(),
        ),
        vm,
        sealer,
        options,
        progress,
        cancel,
        started: Instant::now(),
        paused_at: None,
        committed: None,
        asked_abort: false,
        shared: Vec::new(),
        buf: vec![0u8; MAX_PAYLOAD_LEN],
    };
    let result = s.run(hello);
    s.vm.stop_dirty_log();
    let total_ms = s.started.elapsed().as_millis() as u64;
    match &result {
        Ok(()) => {
            let downtime = s.paused_at.map(|t| t.elapsed().as_millis() as u64);
            update(progress, |p| {
                p.status = Status::Completed;
                p.downtime_ms = downtime;
                p.total_ms = total_ms;
                p.remaining_bytes = 0;
            });
        }
        Err(e) if s.committed.is_some() => {
            // The guest committed to the target and no abort released it: it stays
            // stopped ("migrated out" in its own memory), and the target is not told to
            // abort (it may have committed too).
            update(progress, |p| {
                p.status = Status::AwaitingAbort;
                p.total_ms = total_ms;
                p.error = Some(e.chain());
            });
        }
        Err(e) => {
            if s.paused_at.is_some() {
                s.vm.resume();
            }
            if !matches!(
                e,
                MigrationError::Aborted { .. } | MigrationError::Refused { .. }
            ) {
                // Best effort: the target may already be gone.
                let _ = Abort {
                    code: e.code(),
                    reason: e.chain().chars().take(1000).collect(),
                }
                .encode(&mut s.out);
                let _ = s.out.flush();
            }
            let status = if matches!(e, MigrationError::Cancelled) {
                Status::Cancelled
            } else {
                Status::Failed
            };
            update(progress, |p| {
                p.status = status;
                p.total_ms = total_ms;
                p.error = Some(e.chain());
            });
        }
    }
    result
}

impl<R: Read, W: Write + AsFd> Source<'_, R, W> {
    fn check_cancel(&self) -> Result<(), MigrationError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(MigrationError::Cancelled);
        }
        Ok(())
    }

    fn run(&mut self, hello: &Hello) -> Result<(), MigrationError> {
        if self.sealer.is_some() != hello.mode.has_helper() {
            return Err(MigrationError::HelperMismatch);
        }
        // The Hello's bytes are hashed into the helpers' transcript: a Hello changed on
        // the way makes the target's helper compute another one, and the handshake fails.
        let mut hello_bytes = Vec::new();
        hello.encode(&mut hello_bytes)?;
        let hello_hash: [u8; 32] = Sha256::digest(&hello_bytes).into();
        self.out
            .write_all(&hello_bytes)
            .and_then(|()| self.out.flush())
            .map_err(|source| FrameError::Write {
                kind: MessageType::Hello,
                source,
            })?;
        match self.reply()? {
            Frame::HelloAck(HelloAck::Accepted) => {}
            Frame::HelloAck(HelloAck::Refused { code, reason }) => {
                return Err(MigrationError::Refused { code, reason })
            }
            Frame::Abort(a) => return Err(a.into()),
            other => {
                return Err(MigrationError::Protocol(format!(
                    "expected HelloAck, got {}",
                    other.message_type()
                )))
            }
        }
        if self.sealer.is_some() {
            self.handshake(hello, &hello_hash)?;
        }
        let setup_ms = self.started.elapsed().as_millis() as u64;
        update(self.progress, |p| {
            p.status = Status::Active;
            p.setup_ms = setup_ms;
        });

        self.vm.start_dirty_log().map_err(MigrationError::Vm)?;
        let mut pages = self.vm.pages();
        let mut round = 0;
        loop {
            round += 1;
            self.check_cancel()?;
            let t0 = Instant::now();
            let bytes0 = self.out.bytes;
            let sent = pages.len() as u64;
            self.send_pages(round, &pages)?;
            let elapsed = t0.elapsed().as_secs_f64().max(1e-6);
            pages = self.vm.take_dirty().map_err(MigrationError::Vm)?;
            let throughput = ((self.out.bytes - bytes0) as f64 / elapsed) as u64;
            let remaining = pages.len() as u64 * PAGE_SIZE as u64;
            let expected_ms = (remaining as f64 / throughput.max(1) as f64 * 1e3) as u64;
            RoundEnd {
                round,
                pages_sent: sent,
                dirty_remaining: pages.len() as u64,
            }
            .encode(&mut self.out)?;
            let total_ms = self.started.elapsed().as_millis() as u64;
            let transferred = self.out.bytes;
            update(self.progress, |p| {
                p.rounds = round;
                p.throughput = throughput;
                p.dirty_rate = (pages.len() as f64 / elapsed) as u64;
                p.remaining_bytes = remaining;
                p.expected_downtime_ms = expected_ms;
                p.transferred_bytes = transferred;
                p.total_ms = total_ms;
            });
            if expected_ms <= self.options.downtime_limit.as_millis() as u64
                || round >= self.options.max_rounds
            {
                break;
            }
        }

        // Stop and copy.
        self.check_cancel()?;
        self.vm.pause().map_err(MigrationError::Vm)?;
        self.paused_at = Some(Instant::now());
        round += 1;
        let mut last = pages;
        last.extend(self.vm.take_dirty().map_err(MigrationError::Vm)?);
        last.sort_unstable();
        last.dedup();
        let sent = last.len() as u64;
        self.send_pages(round, &last)?;
        RoundEnd {
            round,
            pages_sent: sent,
            dirty_remaining: 0,
        }
        .encode(&mut self.out)?;
        let device = self.vm.device_state().map_err(MigrationError::Vm)?;
        let vcpus = self.vm.vcpu_states().map_err(MigrationError::Vm)?;
        match self.sealer.as_deref_mut() {
            Some(sealer) => {
                let sealing = MigrationError::Helper;
                let record = sealer
                    .seal_blob(Kind::DEVICE_STATE, 0, round, &device)
                    .map_err(sealing)?;
                DeviceState { blob: &record }.encode(&mut self.out)?;
                for (index, blob) in vcpus.iter().enumerate() {
                    let index = index as u32;
                    let record = sealer
                        .seal_blob(Kind::VCPU_STATE, index, round, blob)
                        .map_err(sealing)?;
                    VcpuState {
                        index,
                        blob: &record,
                    }
                    .encode(&mut self.out)?;
                }
                let record = sealer.manifest(round).map_err(sealing)?;
                Manifest { record }.encode(&mut self.out)?;
            }
            None => {
                DeviceState { blob: &device }.encode(&mut self.out)?;
                for (index, blob) in vcpus.iter().enumerate() {
                    VcpuState {
                        index: index as u32,
                        blob,
                    }
                    .encode(&mut self.out)?;
                }
            }
        }
        let commit = match self.sealer.is_some() {
            true => Some(self.commit(round)?),
            false => None,
        };
        let sent = Done { commit }.encode(&mut self.out).and_then(|()| {
            self.out.flush().map_err(|source| FrameError::Write {
                kind: MessageType::Done,
                source,
            })
        });
        if let Err(e) = sent {
            // After the commit a failed send still reads what the target said: an abort
            // it sent before its end closed carries the token that releases the guest.
            return match self.committed {
                Some(_) => self.await_ack(Some(e.into())),
                None => Err(e.into()),
            };
        }
        let transferred = self.out.bytes;
        update(self.progress, |p| {
            p.rounds = round;
            p.transferred_bytes = transferred;
        });
        self.await_ack(None)
    }

    /// The helpers' key agreement, before anything else moves.
    fn handshake(&mut self, hello: &Hello, hello_hash: &[u8; 32]) -> Result<(), MigrationError> {
        let Some(sealer) = self.sealer.as_deref_mut() else {
            return Ok(());
        };
        let share = sealer
            .start(&hello.session_id, hello_hash)
            .map_err(MigrationError::Helper)?;
        share.encode(&mut self.out)?;
        self.out.flush().map_err(|source| FrameError::Write {
            kind: MessageType::KeyShare,
            source,
        })?;
        let reply = match self.reply()? {
            Frame::KeyReply(r) => r,
            Frame::Abort(a) => return Err(a.into()),
            other => {
                return Err(MigrationError::Protocol(format!(
                    "expected the target's KeyReply, got {}",
                    other.message_type()
                )))
            }
        };
        let Some(sealer) = self.sealer.as_deref_mut() else {
            return Ok(());
        };
        let (confirm, _transcript) = sealer
            .finish_handshake(&reply)
            .map_err(MigrationError::Helper)?;
        confirm.encode(&mut self.out)?;
        Ok(())
    }

    /// Waits for the target's Ready, then commits: the commit record for Done.
    fn commit(&mut self, round: u32) -> Result<[u8; COMMIT_RECORD_SIZE], MigrationError> {
        self.out.flush().map_err(|source| FrameError::Write {
            kind: MessageType::Manifest,
            source,
        })?;
        match self.reply()? {
            Frame::Ready(_) => {}
            Frame::Abort(a) => return Err(a.into()),
            Frame::AbortToken(_) => {
                // Not committed: no token is needed; the Abort that follows says why.
                return match self.reply() {
                    Ok(Frame::Abort(a)) => Err(a.into()),
                    _ => Err(MigrationError::Protocol(
                        "the target's AbortToken was not followed by its Abort".into(),
                    )),
                };
            }
            other => {
                return Err(MigrationError::Protocol(format!(
                    "expected the target's Ready, got {}",
                    other.message_type()
                )))
            }
        }
        let Some(sealer) = self.sealer.as_deref_mut() else {
            return Err(MigrationError::Protocol("a commit without a helper".into()));
        };
        let (record, transcript) = sealer.commit(round).map_err(MigrationError::Helper)?;
        self.committed = Some(transcript);
        update(self.progress, |p| {
            p.status = Status::Committing;
            p.transcript = Some(transcript);
        });
        if let Err(e) = self.vm.save_commit(&transcript, &record) {
            // Without its file a lost commit could not be recovered on the target: the
            // commit does not leave, and the target is asked to give the session up
            // (its token releases the guest here).
            let cause = MigrationError::Vm(e);
            self.asked_abort = true;
            let _ = Abort {
                code: FailureCode::Internal,
                reason: "the source could not save its commit record and asks the target to abort"
                    .into(),
            }
            .encode(&mut self.out);
            let _ = self.out.flush();
            return Err(self.await_ack(Some(cause)).err().unwrap_or_else(|| {
                MigrationError::Protocol("the target confirmed a commit it never got".into())
            }));
        }
        Ok(record)
    }

    /// The target's next frame. A read that times out (the caller's socket timeout; the
    /// VMM sets it short, to poll) only checks: the wait ends after `confirm_timeout`;
    /// a cancel before the commit ends it; a cancel after the commit asks the target,
    /// once, to abort the session (an Abort frame), and the wait goes on for its token.
    fn reply(&mut self) -> Result<Frame<'_>, MigrationError> {
        let deadline = Instant::now() + self.options.confirm_timeout;
        let patience = self.options.confirm_timeout;
        let mut why: Option<MigrationError> = None;
        let Source {
            reader,
            buf,
            out,
            cancel,
            committed,
            asked_abort,
            ..
        } = self;
        let result = reader.read_frame_waiting(buf, &mut || {
            if cancel.load(Ordering::Relaxed) {
                if committed.is_none() {
                    why = Some(MigrationError::Cancelled);
                    return false;
                }
                if !*asked_abort {
                    *asked_abort = true;
                    // Best effort: if the target is gone, the wait ends at the deadline
                    // and the guest waits for an abort by another way.
                    let _ = Abort {
                        code: FailureCode::Cancelled,
                        reason: "the operator cancelled after the commit: the source asks the target to give the session up".into(),
                    }
                    .encode(out);
                    let _ = out.flush();
                }
            }
            if Instant::now() >= deadline {
                why = Some(MigrationError::NoConfirmation(patience));
                return false;
            }
            true
        });
        result.map_err(|e| why.take().unwrap_or_else(|| e.into()))
    }

    /// After Done (or after an Abort in its place): the target's Ack. After a commit, a
    /// failure releases the guest only with the target helper's abort token. `cause` is
    /// why this side gave up, if it did.
    fn await_ack(&mut self, cause: Option<MigrationError>) -> Result<(), MigrationError> {
        let mut token: Option<AbortToken> = None;
        let failure = loop {
            match self.reply() {
                Ok(Frame::Ack(Ack::Completed)) => return Ok(()),
                Ok(Frame::Ack(Ack::Failed { code, reason })) => {
                    break MigrationError::Aborted { code, reason }
                }
                Ok(Frame::AbortToken(t)) if token.is_none() => token = Some(t),
                Ok(Frame::Abort(a)) => break a.into(),
                Ok(other) => {
                    break MigrationError::Protocol(format!(
                        "expected the target's Ack, got {}",
                        other.message_type()
                    ))
                }
                Err(e) => break e,
            }
        };
        let failure = match cause {
            Some(cause) => cause,
            None if self.asked_abort => MigrationError::Cancelled,
            None => failure,
        };
        let Some(transcript) = self.committed else {
            return Err(failure);
        };
        let released = match (token, self.sealer.as_deref_mut()) {
            (Some(t), Some(sealer)) => sealer.release(&t),
            _ => Err(PartError::from("the target sent no abort token")),
        };
        match released {
            Ok(()) => {
                // The target will never run this session: the guest may run here again.
                self.committed = None;
                Err(failure)
            }
            Err(why) => Err(MigrationError::Committed {
                transcript,
                reason: format!("{}; and {}", failure.chain(), chain(&*why)),
            }),
        }
    }

    /// Seals `private` on every lane, a few batches ahead of the stream, and sends each
    /// batch as it is ready.
    fn send_sealed(&mut self, round: u32, private: &[u64]) -> Result<(), MigrationError> {
        let Some(sealer) = self.sealer.as_deref_mut() else {
            return Ok(());
        };
        let lanes = sealer.lanes().max(1);
        let depth = sealer.depth().max(1);
        let batch = self.options.batch.min(sealer.max_batch()).max(1);
        let mut chunks = private.chunks(batch).enumerate().peekable();
        let mut in_flight = vec![0usize; lanes];
        let mut outstanding = 0usize;
        loop {
            // Keep every lane busy: batch i goes to lane i % lanes.
            while let Some(&(i, chunk)) = chunks.peek() {
                let lane = i % lanes;
                if in_flight[lane] >= depth {
                    break;
                }
                if self.cancel.load(Ordering::Relaxed) {
                    break;
                }
                sealer
                    .submit(lane, round, chunk, self.options.zero_pages)
                    .map_err(MigrationError::Helper)?;
                in_flight[lane] += 1;
                outstanding += 1;
                chunks.next();
            }
            if outstanding == 0 {
                break;
            }
            let done = sealer.wait().map_err(MigrationError::Helper)?;
            in_flight[done.lane] -= 1;
            outstanding -= 1;
            let oversized = |_| MigrationError::OversizedBatch {
                lane: done.lane,
                bytes: done.bytes,
            };
            let lane = u16::try_from(done.lane).map_err(oversized)?;
            let records_len = u32::try_from(done.bytes).map_err(oversized)?;
            PageBatchHeader {
                lane,
                round: done.round,
                count: done.count,
                records_len,
            }
            .encode(&mut self.out)?;
            let sent = |source| {
                MigrationError::Send(FrameError::Write {
                    kind: MessageType::PageBatch,
                    source,
                })
            };
            // The header is buffered; the records go out after it, from the window.
            self.out.inner.flush().map_err(sent)?;
            sealer
                .send(&done, &mut Direct(&mut self.out.inner))
                .map_err(sent)?;
            self.out.account(done.bytes as u64);
            let transferred = self.out.bytes;
            update(self.progress, |p| p.transferred_bytes = transferred);
        }
        self.check_cancel()
    }

    /// Sends one round's pages. SEV: first the guest's shared list as its helper sealed
    /// it, which decides what is private; pages the list no longer shares join the round
    /// (the target needs them sealed after the list that made them private). Then plain
    /// frames for shared pages (all pages of a plain guest) and sealed batches for
    /// private ones.
    fn send_pages(&mut self, round: u32, pages: &[u64]) -> Result<(), MigrationError> {
        let (private, plain): (Vec<u64>, Vec<u64>) = match self.sealer.as_deref_mut() {
            Some(sealer) => {
                let record = sealer
                    .seal_blob(Kind::SHARED_LIST, 0, round, &[])
                    .map_err(MigrationError::Helper)?;
                let list = SharedList { record: &record };
                let ranges = list.ranges().map_err(|e| {
                    MigrationError::Integrity(format!("the helper sealed a bad list: {e}"))
                })?;
                list.encode(&mut self.out)?;
                let shared = to_spans(&ranges);
                let became_private: Vec<u64> = self
                    .vm
                    .pages()
                    .into_iter()
                    .filter(|&g| in_spans(&self.shared, g) && !in_spans(&shared, g))
                    .collect();
                self.shared = shared;
                let mut all = pages.to_vec();
                all.extend(became_private);
                all.sort_unstable();
                all.dedup();
                all.into_iter().partition(|&g| !in_spans(&self.shared, g))
            }
            None => (Vec::new(), pages.to_vec()),
        };
        let mut data = vec![[0u8; PAGE_SIZE]; PLAIN_BATCH];
        let mut zeros = 0;
        for chunk in plain.chunks(PLAIN_BATCH) {
            self.check_cancel()?;
            for (gpa, page) in chunk.iter().zip(data.iter_mut()) {
                self.vm.read_page(*gpa, page).map_err(MigrationError::Vm)?;
            }
            let entries = chunk
                .iter()
                .zip(data.iter())
                .map(|(&gpa, page)| PlainPage {
                    gpa,
                    data: if page.iter().all(|&b| b == 0) {
                        zeros += 1;
                        PageData::Zero
                    } else {
                        PageData::Bytes(page)
                    },
                })
                .collect();
            PlainPages {
                round,
                pages: entries,
            }
            .encode(&mut self.out)?;
            // query-migrate shows the bytes moving during a round, not only after it.
            let transferred = self.out.bytes;
            update(self.progress, |p| p.transferred_bytes = transferred);
        }
        self.send_sealed(round, &private)?;
        let (n, transferred) = ((private.len() + plain.len()) as u64, self.out.bytes);
        update(self.progress, |p| {
            p.pages += n;
            p.zero_pages += zeros;
            p.transferred_bytes = transferred;
        });
        Ok(())
    }
}

/// Shared ranges as sorted (start GPA, end GPA) spans.
pub(crate) fn to_spans(ranges: &[crate::frames::SharedRange]) -> Vec<(u64, u64)> {
    ranges
        .iter()
        .map(|r| {
            (
                r.gpa,
                r.gpa
                    .saturating_add(r.pages.saturating_mul(PAGE_SIZE as u64)),
            )
        })
        .collect()
}

/// Whether `gpa` lies in one of the sorted `spans`.
pub(crate) fn in_spans(spans: &[(u64, u64)], gpa: u64) -> bool {
    let i = spans.partition_point(|&(start, _)| start <= gpa);
    i > 0 && gpa < spans[i - 1].1
}

/// The payload of a blob record (what a blob frame carries around it).
pub(crate) fn blob_payload(record: &[u8]) -> &[u8] {
    let end = record.len().saturating_sub(RECORD_OVERHEAD - HEADER_SIZE);
    record.get(HEADER_SIZE..end).unwrap_or(&[])
}
