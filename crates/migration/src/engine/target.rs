//! The target: checks the source's Hello against its own guest, runs its helper's side of
//! the key agreement, applies pages as they come (sealed ones through its helper, which
//! verifies them; clear ones only where the guest's own sealed list shares the page), and
//! runs the guest only after its helper verified every record, the manifest and the
//! source helper's commit. Once it has the session's keys, any failure makes its helper
//! abort the session and sends the AbortToken that lets a committed source run again.

use super::{
    chain,
    source::{blob_payload, in_spans, to_spans},
    update, MigrationError, PartError, Progress, Status,
};
use crate::{
    codec::{BatchStart, CodecError, FrameReader, Incoming, Next, RecordSource},
    cpu::{check_compatible, GuestCpu},
    frames::{
        check_record, Abort, AbortToken, Ack, BatchCheckError, FailureCode, Frame, FrameError,
        GpaRange, GuestMode, Hello, HelloAck, KeyConfirm, KeyReply, KeyShare, MessageType,
        PageData, Ready, ReceiverState, MAX_PAYLOAD_LEN,
    },
};
use helper_abi::{
    record::{self, Kind, COMMIT_RECORD_SIZE, MANIFEST_RECORD_SIZE},
    PAGE_SIZE,
};
use sha2::{Digest, Sha256};
use std::{
    collections::BTreeSet,
    io::{BufReader, Read, Write},
    os::fd::AsFd,
    sync::Mutex,
    time::Instant,
};

/// What the target engine needs from its VM.
pub trait TargetVm {
    /// This VM's guest, to compare with the source's Hello.
    fn local(&self) -> LocalGuest;
    /// Replaces the record of shared pages (SEV) with the guest's own list, as the
    /// target's helper verified it: these become shared, all other migratable pages
    /// private. (A guest-originated request: the helper is guest code.)
    fn set_shared(&mut self, ranges: &[(u64, u64)]) -> Result<(), PartError>;
    /// Writes a page as the host (None: a zero page).
    fn write_page(&mut self, gpa: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), PartError>;
    /// Loads the vCPU and device state and runs the guest.
    fn finish(&mut self, vcpus: Vec<Vec<u8>>, device: Vec<u8>) -> Result<(), PartError>;
    /// Keeps this side's abort token of the session with transcript hash `transcript`
    /// (all zero when the key agreement did not get that far) where an operator finds
    /// it (the VMM: an abort token file), before it goes on the wire: if the source
    /// committed and the token is lost with the connection, the token still releases it.
    fn keep_abort_token(
        &mut self,
        transcript: &[u8; 32],
        token: &AbortToken,
    ) -> Result<(), PartError>;
}

/// How a receive ended well.
#[derive(Debug)]
pub enum Received {
    /// The guest runs here.
    Running,
    /// The stream ended after this side's helper verified everything and said Ready,
    /// before the commit arrived. The source may have committed and be waiting: the
    /// verified state waits here for the commit (from the source's commit file) or for
    /// the operator's abort.
    AwaitingCommit(PendingCommit),
}

/// A target whose helper verified the whole guest and waits for the source helper's
/// commit, which the stream did not bring (see [`Received::AwaitingCommit`]).
#[derive(Debug)]
pub struct PendingCommit {
    vcpus: Vec<Vec<u8>>,
    device: Vec<u8>,
    transcript: [u8; 32],
    lost: String,
}

impl PendingCommit {
    /// The session's transcript hash (what the source's commit file names).
    pub fn transcript(&self) -> [u8; 32] {
        self.transcript
    }

    /// How the stream ended.
    pub fn lost(&self) -> &str {
        &self.lost
    }

    /// Has the helper verify the source helper's commit `record` (from its commit file)
    /// and runs the guest. If the helper refuses the record, the target still waits and
    /// comes back; if the VM cannot run after the helper committed, it does not.
    pub fn commit(
        self,
        record: &[u8; COMMIT_RECORD_SIZE],
        vm: &mut dyn TargetVm,
        opener: &mut dyn Opener,
        progress: &Mutex<Progress>,
    ) -> Result<(), Box<(Option<PendingCommit>, MigrationError)>> {
        if let Err(e) = opener.commit(record) {
            return Err(Box::new((Some(self), MigrationError::Helper(e))));
        }
        let PendingCommit { vcpus, device, .. } = self;
        match vm.finish(vcpus, device) {
            Ok(()) => {
                update(progress, |p| {
                    p.status = Status::Completed;
                    p.error = None;
                });
                Ok(())
            }
            Err(e) => {
                let e = MigrationError::Vm(e);
                update(progress, |p| {
                    p.status = Status::Failed;
                    p.error = Some(e.chain());
                });
                Err(Box::new((None, e)))
            }
        }
    }

    /// Gives the session up for good: the helper aborts it (it will never commit it)
    /// and its token, kept through `vm` first, is what releases the source.
    pub fn abort(
        self,
        vm: &mut dyn TargetVm,
        opener: &mut dyn Opener,
        progress: &Mutex<Progress>,
    ) -> Result<AbortToken, MigrationError> {
        let token = opener.abort().map_err(MigrationError::Helper)?;
        let kept = vm.keep_abort_token(&self.transcript, &token);
        update(progress, |p| {
            p.status = Status::Failed;
            p.error =
                Some("the operator aborted the session while it waited for the commit".into());
        });
        kept.map_err(MigrationError::Vm)?;
        Ok(token)
    }
}

/// What the target knows of its own guest: the source must describe the same one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalGuest {
    /// Plain or SEV.
    pub mode: GuestMode,
    /// Guest RAM, ascending.
    pub ram: Vec<GpaRange>,
    /// SHA-256 of the firmware image this VM booted.
    pub firmware_digest: [u8; 32],
    /// The helper region (zero for plain guests).
    pub helper_region: GpaRange,
    /// Guest vCPUs.
    pub vcpus: u32,
    /// SEV-ES: the helper vCPUs this guest's launch measured (0 otherwise).
    pub es_helpers: u16,
    /// The CPU this VM's VMM gives its guest (None: not known, nothing is checked).
    pub cpu: Option<GuestCpu>,
}

impl LocalGuest {
    /// Checks that this VM's CPU has every feature the source's guest was given (when
    /// both are known): a guest that found a feature at boot uses it from then on.
    pub fn check_cpu(&self, hello: &Hello) -> Result<(), MigrationError> {
        match (&hello.cpu, &self.cpu) {
            (Some(guest), Some(ours)) => check_compatible(guest, ours).map_err(MigrationError::Cpu),
            _ => Ok(()),
        }
    }

    /// Checks the source's Hello against this guest; the error says what differs.
    pub fn check(&self, hello: &Hello) -> Result<(), MigrationError> {
        let differs = |what: &str, theirs: String, ours: String| {
            Err(MigrationError::Incompatible(format!(
                "{what}: the source has {theirs}, this target {ours}; start the target with the same options as the source"
            )))
        };
        if hello.mode != self.mode {
            return differs(
                "guest mode",
                hello.mode.name().to_string(),
                format!("{} VM", self.mode.name().trim_end_matches(" guest")),
            );
        }
        if hello.es_helpers != self.es_helpers {
            return differs(
                "helper vCPUs measured at launch (SEV-ES: an SEV-ES guest moves only into a VM launched with as many, --helpers)",
                hello.es_helpers.to_string(),
                self.es_helpers.to_string(),
            );
        }
        if hello.ram != self.ram {
            return differs(
                "guest RAM",
                describe_ram(&hello.ram),
                describe_ram(&self.ram),
            );
        }
        if hello.vcpus != self.vcpus {
            return differs("vCPUs", hello.vcpus.to_string(), self.vcpus.to_string());
        }
        if hello.helper_region != self.helper_region {
            return differs(
                "the helper region",
                describe_ram(&[hello.helper_region]),
                describe_ram(&[self.helper_region]),
            );
        }
        if hello.firmware_digest != self.firmware_digest {
            return Err(MigrationError::Refused {
                code: FailureCode::FirmwareMismatch,
                reason: format!(
                    "the source booted firmware {}, this target {}; both must boot the same image",
                    hex(&hello.firmware_digest),
                    hex(&self.firmware_digest)
                ),
            });
        }
        Ok(())
    }
}

fn describe_ram(ranges: &[GpaRange]) -> String {
    let total: u64 = ranges.iter().map(|r| r.size).sum();
    let list: Vec<String> = ranges
        .iter()
        .map(|r| format!("{:#x}+{:#x}", r.base, r.size))
        .collect();
    format!("{} MiB ({})", total >> 20, list.join(", "))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The target's migration helper (SEV only).
pub trait Opener {
    /// Helper vCPUs (lanes).
    fn lanes(&self) -> usize;
    /// Answers the source helper's key share (HS_RESPOND); fails without the guest
    /// owner's migration secret, or for a guest that is not an incoming one.
    fn respond(
        &mut self,
        session_id: &[u8; 16],
        hello_hash: &[u8; 32],
        share: &KeyShare,
    ) -> Result<KeyReply, PartError>;
    /// Checks the source helper's confirmation (HS_CONFIRM): the transcript hash.
    fn confirm(&mut self, confirm: &KeyConfirm) -> Result<[u8; 32], PartError>;
    /// Moves a batch's records (all `from.len()` bytes) from the stream straight into
    /// one of `lane`'s record windows (the no-copy receive path), waiting for a window
    /// to come free; nothing is opened yet. A refusal of an earlier batch may show here.
    fn receive(
        &mut self,
        lane: usize,
        from: &mut dyn RecordSource,
    ) -> Result<BatchWindow, PartError>;
    /// Copies `out.len()` bytes at `offset` of a received batch out of its window: the
    /// record headers the engine checks, each read once.
    fn read_window(
        &mut self,
        batch: &BatchWindow,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), PartError>;
    /// Starts verifying a received batch of `count` records and writing their pages
    /// privately (each lane's batches in order). A refusal of this or an earlier batch
    /// may show here or at the next `drain`.
    fn import(&mut self, batch: BatchWindow, count: u32) -> Result<(), PartError>;
    /// Gives a received batch's window back unopened (the engine refused the batch).
    fn discard(&mut self, batch: BatchWindow);
    /// Waits until every submitted batch was opened; the first refusal, if any.
    fn drain(&mut self) -> Result<(), PartError>;
    /// Verifies a blob record (OPEN_BLOB); its kind and index.
    fn open_blob(&mut self, record: &[u8]) -> Result<(Kind, u32), PartError>;
    /// Verifies the source's manifest against the records and pages accepted.
    fn verify_manifest(&mut self, record: &[u8; MANIFEST_RECORD_SIZE]) -> Result<(), PartError>;
    /// Verifies the source helper's commit record; the guest may run after.
    fn commit(&mut self, record: &[u8; COMMIT_RECORD_SIZE]) -> Result<(), PartError>;
    /// Gives the session up for good (ABORT): the token that releases the source.
    fn abort(&mut self) -> Result<AbortToken, PartError>;
}

/// A batch's records in one of a lane's record windows, not yet opened (see
/// [`Opener::receive`]).
#[derive(Debug, PartialEq, Eq)]
pub struct BatchWindow {
    /// The lane (helper vCPU) whose window holds it.
    pub lane: usize,
    /// Which of the lane's windows.
    pub window: usize,
    /// Bytes of records in it.
    pub bytes: usize,
}

/// Receives a guest. On success it runs (the VM's `finish` was called and the source was
/// told); on failure it never ran, and the source was told why (best effort), with the
/// helper's abort token once a session existed. Sealed records go from `reader` straight
/// into the helper's record windows, so `reader` must be a descriptor (a socket).
pub fn receive<'a, R: Read + AsFd, W: Write>(
    reader: R,
    mut writer: W,
    vm: &'a mut dyn TargetVm,
    opener: Option<&'a mut dyn Opener>,
    progress: &'a Mutex<Progress>,
) -> Result<Received, MigrationError> {
    let started = Instant::now();
    update(progress, |p| {
        *p = Progress {
            status: Status::Setup,
            ..Progress::default()
        }
    });
    // Headers and small frames come out of one buffer; large payloads bypass it, and
    // sealed records go from the socket straight into the helper's windows. The buffer
    // is small because what it holds of a batch's records when the batch starts is
    // copied into the window (one read of at most this much per batch).
    let mut reader = FrameReader::new(
        BufReader::with_capacity(RECEIVE_BUFFER, reader),
        Incoming::FromSource,
    );
    let mut buf = vec![0u8; MAX_PAYLOAD_LEN];
    let mut ctx = Receive {
        vm,
        opener,
        progress,
        hello: None,
        state: ReceiverState::default(),
        keyed: false,
        committed: false,
        shared: None,
        imported_since_list: BTreeSet::new(),
        must_reimport: BTreeSet::new(),
        vcpus: Vec::new(),
        device: None,
        manifest_ok: false,
        transcript: None,
    };
    let result = match ctx.run(&mut reader, &mut writer, &mut buf) {
        Ok(Ended::Running) => Ok(Received::Running),
        Ok(Ended::LostAfterReady(lost)) => ctx.pending(lost).map(Received::AwaitingCommit),
        Err(e) => Err(e),
    };
    let total_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(Received::Running) => {
            let _ = Ack::Completed.encode(&mut writer);
            let _ = writer.flush();
            update(progress, |p| {
                p.status = Status::Completed;
                p.total_ms = total_ms;
            });
        }
        Ok(Received::AwaitingCommit(pending)) => {
            let transcript = pending.transcript;
            update(progress, |p| {
                p.status = Status::AwaitingCommit;
                p.total_ms = total_ms;
                p.transcript = Some(transcript);
                p.error = Some(pending.lost.clone());
            });
        }
        Err(e) => {
            // With a session, the helper gives it up for good first: its token is what
            // lets a source that already committed run again. It is kept (a file) before
            // it goes on the wire, which may be gone.
            if ctx.keyed && !ctx.committed {
                if let Some(opener) = ctx.opener.as_deref_mut() {
                    // A helper that cannot abort (it committed after all) sends no
                    // token; the source then waits for the owner.
                    if let Ok(token) = opener.abort() {
                        let transcript = ctx.transcript.unwrap_or([0; 32]);
                        if let Err(why) = ctx.vm.keep_abort_token(&transcript, &token) {
                            update(progress, |p| {
                                p.error =
                                    Some(format!("cannot keep the abort token: {}", chain(&*why)));
                            });
                        }
                        let _ = token.encode(&mut writer);
                    }
                }
            }
            if !matches!(e, MigrationError::Aborted { .. }) {
                // The source words a refusal itself ("the target refused the migration
                // (code): …"): send it only the reason, not this side's whole message.
                let reason = match e {
                    MigrationError::Refused { reason, .. } => reason.clone(),
                    other => other.chain(),
                };
                let reason: String = reason.chars().take(1000).collect();
                let _ = if ctx.hello.is_some() && ctx.state == ReceiverState::default() {
                    HelloAck::Refused {
                        code: e.code(),
                        reason,
                    }
                    .encode(&mut writer)
                } else {
                    Abort {
                        code: e.code(),
                        reason,
                    }
                    .encode(&mut writer)
                };
            } else if ctx.keyed && !ctx.committed {
                // The source aborted; it still gets the token (and an Abort after it, as
                // the protocol wants).
                let _ = Abort {
                    code: FailureCode::Cancelled,
                    reason: "the source aborted".into(),
                }
                .encode(&mut writer);
            }
            let _ = writer.flush();
            update(progress, |p| {
                p.status = Status::Failed;
                p.total_ms = total_ms;
                p.error = Some(e.chain());
            });
        }
    }
    result
}

struct Receive<'a> {
    vm: &'a mut dyn TargetVm,
    opener: Option<&'a mut dyn Opener>,
    progress: &'a Mutex<Progress>,
    hello: Option<Hello>,
    state: ReceiverState,
    /// The helper holds the session's keys (SEV).
    keyed: bool,
    /// The helper accepted the source's commit.
    committed: bool,
    /// The guest's shared pages per the last list the helper verified, as (start, end)
    /// spans, outside the helper region; None before the first list.
    shared: Option<Vec<(u64, u64)>>,
    /// Pages imported sealed since that list: never overwritten by a clear page.
    imported_since_list: BTreeSet<u64>,
    /// Pages a list made private that were shared before: they must arrive sealed
    /// again (after that list) before the manifest.
    must_reimport: BTreeSet<u64>,
    vcpus: Vec<Option<Vec<u8>>>,
    device: Option<Vec<u8>>,
    manifest_ok: bool,
    /// The session's transcript hash, once the helper confirmed the key agreement.
    transcript: Option<[u8; 32]>,
}

/// How [`Receive::run`] ended without an error.
enum Ended {
    /// The guest runs.
    Running,
    /// The stream broke after Ready (why): the commit may still come from a file.
    LostAfterReady(CodecError),
}

fn integrity(e: String) -> MigrationError {
    MigrationError::Integrity(e)
}

/// Bytes the target's stream reader buffers.
const RECEIVE_BUFFER: usize = 4096;

impl Receive<'_> {
    fn run<R: Read + AsFd, W: Write>(
        &mut self,
        reader: &mut FrameReader<BufReader<R>>,
        writer: &mut W,
        buf: &mut [u8],
    ) -> Result<Ended, MigrationError> {
        let hello = match reader.read_frame(buf)? {
            Frame::Hello(h) => h,
            other => {
                return Err(MigrationError::Protocol(format!(
                    "expected Hello, got {}",
                    other.message_type()
                )))
            }
        };
        // The hash of the Hello exactly as it arrived (the header re-encodes to the same
        // 12 bytes: the codec accepted it only in its one canonical form).
        let header = reader
            .last_header()
            .ok_or_else(|| MigrationError::Protocol("no Hello header".into()))?;
        let mut h = Sha256::new();
        h.update(header.encode());
        h.update(buf.get(..header.len as usize).unwrap_or(&[]));
        let hello_hash: [u8; 32] = h.finalize().into();
        self.hello = Some(hello.clone());
        self.accept(&hello)?;
        HelloAck::Accepted.encode(writer)?;
        flush(writer, MessageType::HelloAck)?;
        self.state = self
            .state
            .next(MessageType::Hello)
            .and_then(|s| s.next(MessageType::HelloAck))
            .map_err(|e| MigrationError::Protocol(e.to_string()))?;
        self.vcpus = vec![None; hello.vcpus as usize];
        if self.opener.is_some() {
            self.handshake(reader, writer, buf, &hello, &hello_hash)?;
        }
        update(self.progress, |p| {
            p.status = Status::Active;
            p.total_bytes = hello.mem_size;
        });
        loop {
            let next = match reader.read_next(buf) {
                Ok(next) => next,
                // After Ready the source may have committed: a broken stream is not a
                // reason to give the session up (the commit can come from its file).
                Err(e @ CodecError::Io { .. }) if self.manifest_ok => {
                    return Ok(Ended::LostAfterReady(e))
                }
                Err(e) => return Err(e.into()),
            };
            let kind = match &next {
                Next::Frame(frame) => frame.message_type(),
                Next::Batch(_) => MessageType::PageBatch,
            };
            self.state = self
                .state
                .next(kind)
                .map_err(|e| MigrationError::Protocol(e.to_string()))?;
            match next {
                Next::Batch(batch) => self.receive_batch(reader, batch, &hello)?,
                Next::Frame(frame) => {
                    if self.apply(frame, &hello, writer)? {
                        return self.finish(&hello).map(|()| Ended::Running);
                    }
                }
            }
        }
    }

    /// A batch of sealed records: from the stream straight into a helper window, its
    /// record headers checked (copied out of the window once), then opened by the
    /// helper.
    fn receive_batch<R: Read + AsFd>(
        &mut self,
        reader: &mut FrameReader<BufReader<R>>,
        batch: BatchStart,
        hello: &Hello,
    ) -> Result<(), MigrationError> {
        self.require_keys("sealed pages")?;
        let Some(opener) = self.opener.as_deref_mut() else {
            return Err(MigrationError::Protocol(
                "sealed pages for a plain guest".into(),
            ));
        };
        let head = batch.header;
        let lane = usize::from(head.lane);
        if lane >= usize::from(hello.lanes) {
            return Err(MigrationError::Protocol(format!(
                "a batch for lane {lane} of {}",
                hello.lanes
            )));
        }
        let lane = lane % opener.lanes().max(1);
        let mut received = None;
        let read = reader.read_records(|from| {
            let mut from = Watched {
                inner: from,
                read: false,
            };
            received = Some((opener.receive(lane, &mut from), from.read));
        });
        let window = match (received, read) {
            // A refusal (of an earlier batch, found while waiting for a window) before
            // any record was read is the cause; the reader's complaint that the records
            // were left unread only follows from it.
            (Some((Err(e), false)), _) => return Err(MigrationError::Helper(e)),
            (_, Err(e)) => return Err(e.into()),
            (Some((Ok(window), _)), Ok(())) => window,
            (Some((Err(e), true)), Ok(())) => return Err(MigrationError::Helper(e)),
            (None, Ok(())) => {
                return Err(MigrationError::Protocol(
                    "a batch's records were read without a window".into(),
                ))
            }
        };
        let records = match head
            .check_records(|offset, out| opener.read_window(&window, offset, out))
        {
            Ok(records) => records,
            Err(e) => {
                opener.discard(window);
                return Err(match e {
                    BatchCheckError::Frame(source) => MigrationError::Stream(CodecError::Frame {
                        offset: batch.offset,
                        source,
                    }),
                    BatchCheckError::Read(e) => MigrationError::Helper(e),
                });
            }
        };
        for r in &records {
            self.imported_since_list.insert(r.header.gpa);
            self.must_reimport.remove(&r.header.gpa);
        }
        opener
            .import(window, head.count)
            .map_err(MigrationError::Helper)?;
        let (n, bytes) = (u64::from(head.count), u64::from(head.records_len));
        update(self.progress, |p| {
            p.pages += n;
            p.transferred_bytes += bytes;
        });
        Ok(())
    }

    /// The verified state, waiting for the commit (the stream broke after Ready).
    fn pending(&mut self, lost: CodecError) -> Result<PendingCommit, MigrationError> {
        let transcript = self.transcript.ok_or_else(|| {
            MigrationError::Protocol("Ready without a confirmed key agreement".into())
        })?;
        let (vcpus, device) = self.state_to_load()?;
        update(self.progress, |p| p.transcript = Some(transcript));
        Ok(PendingCommit {
            vcpus,
            device,
            transcript,
            lost: format!(
                "the stream ended after Ready, before the commit: {}",
                chain(&lost)
            ),
        })
    }

    /// The received device and vCPU state, each vCPU's present.
    fn state_to_load(&mut self) -> Result<(Vec<Vec<u8>>, Vec<u8>), MigrationError> {
        let device = self.device.take().ok_or_else(|| {
            MigrationError::Protocol("the source finished without device state".into())
        })?;
        let vcpus = std::mem::take(&mut self.vcpus)
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.ok_or_else(|| MigrationError::Protocol(format!("no state for vCPU {i}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((vcpus, device))
    }

    /// The helpers' key agreement: nothing else is accepted before it.
    fn handshake<R: Read + AsFd, W: Write>(
        &mut self,
        reader: &mut FrameReader<BufReader<R>>,
        writer: &mut W,
        buf: &mut [u8],
        hello: &Hello,
        hello_hash: &[u8; 32],
    ) -> Result<(), MigrationError> {
        let Some(opener) = self.opener.as_deref_mut() else {
            return Ok(());
        };
        let share = match reader.read_frame(buf)? {
            Frame::KeyShare(s) => s,
            Frame::Abort(a) => return Err(a.into()),
            other => {
                return Err(MigrationError::Protocol(format!(
                    "expected the source's KeyShare, got {}",
                    other.message_type()
                )))
            }
        };
        self.state = self
            .state
            .next(MessageType::KeyShare)
            .map_err(|e| MigrationError::Protocol(e.to_string()))?;
        let reply = opener
            .respond(&hello.session_id, hello_hash, &share)
            .map_err(|e| MigrationError::Refused {
                code: FailureCode::NotReady,
                reason: chain(&*e),
            })?;
        self.keyed = true;
        reply.encode(writer)?;
        flush(writer, MessageType::KeyReply)?;
        self.state = self
            .state
            .next(MessageType::KeyReply)
            .map_err(|e| MigrationError::Protocol(e.to_string()))?;
        let confirm = match reader.read_frame(buf)? {
            Frame::KeyConfirm(c) => c,
            Frame::Abort(a) => return Err(a.into()),
            other => {
                return Err(MigrationError::Protocol(format!(
                    "expected the source's KeyConfirm, got {}",
                    other.message_type()
                )))
            }
        };
        self.state = self
            .state
            .next(MessageType::KeyConfirm)
            .map_err(|e| MigrationError::Protocol(e.to_string()))?;
        let transcript = opener.confirm(&confirm).map_err(MigrationError::Helper)?;
        self.transcript = Some(transcript);
        update(self.progress, |p| p.transcript = Some(transcript));
        Ok(())
    }

    fn accept(&mut self, hello: &Hello) -> Result<(), MigrationError> {
        match (hello.mode, &self.opener) {
            (GuestMode::Sev | GuestMode::SevEs, None) => {
                return Err(MigrationError::Incompatible(format!(
                    "the source sends {} to a VM without a migration helper",
                    hello.mode.name()
                )))
            }
            (GuestMode::Plain, Some(_)) => {
                return Err(MigrationError::Incompatible(
                    "the source sends a plain guest to an SEV VM".into(),
                ))
            }
            _ => {}
        }
        if hello.mode.has_helper() && hello.version < 2 {
            return Err(MigrationError::Refused {
                code: FailureCode::UnsupportedVersion,
                reason: format!(
                    "SEV guests migrate only with protocol version 2 (authenticated key agreement and commit); the source speaks version {}",
                    hello.version
                ),
            });
        }
        let local = self.vm.local();
        local.check(hello)?;
        local.check_cpu(hello)?;
        if usize::from(hello.lanes) > helper_abi::MAX_LANES {
            return Err(MigrationError::Incompatible(format!(
                "the source seals on {} helper vCPUs; helpers have {} lane ids",
                hello.lanes,
                helper_abi::MAX_LANES
            )));
        }
        Ok(())
    }

    fn require_keys(&self, what: &str) -> Result<(), MigrationError> {
        match (self.opener.is_some(), self.keyed) {
            (false, _) => Err(MigrationError::Protocol(format!(
                "{what} for a plain guest"
            ))),
            (true, false) => Err(MigrationError::Protocol(format!(
                "{what} before the helpers' key agreement"
            ))),
            (true, true) => Ok(()),
        }
    }

    /// Opens a blob record of `want` with the helper; its index and payload.
    fn open_blob<'r>(
        &mut self,
        kind: MessageType,
        record: &'r [u8],
        want: Kind,
    ) -> Result<(u32, &'r [u8]), MigrationError> {
        check_record(kind, record, want).map_err(|e| MigrationError::Protocol(e.to_string()))?;
        let opener = self
            .opener
            .as_deref_mut()
            .ok_or_else(|| MigrationError::Protocol(format!("{kind} record for a plain guest")))?;
        opener.drain().map_err(MigrationError::Helper)?;
        let (got, index) = opener.open_blob(record).map_err(MigrationError::Helper)?;
        if got != want {
            return Err(integrity(format!(
                "the helper verified a record of kind {} where a {} was due",
                got.0, want.0
            )));
        }
        Ok((index, blob_payload(record)))
    }

    /// Applies one frame; true once Done arrived.
    fn apply<W: Write>(
        &mut self,
        frame: Frame<'_>,
        hello: &Hello,
        writer: &mut W,
    ) -> Result<bool, MigrationError> {
        match frame {
            Frame::SharedList(l) => {
                self.require_keys("a SharedList")?;
                self.open_blob(MessageType::SharedList, l.record, Kind::SHARED_LIST)?;
                let ranges = l
                    .ranges()
                    .map_err(|e| MigrationError::Protocol(e.to_string()))?;
                // The guest's own list also names its helper's mailboxes: that region is
                // never migrated and keeps this target's own states.
                let mut clipped = Vec::new();
                for r in &ranges {
                    let end = r
                        .gpa
                        .saturating_add(r.pages.saturating_mul(PAGE_SIZE as u64));
                    for page in (r.gpa..end).step_by(PAGE_SIZE) {
                        if hello.migratable(page, page + PAGE_SIZE as u64) {
                            clipped.push(page);
                        } else if !in_region(hello, page) {
                            return Err(integrity(format!(
                                "the guest's shared list names {page:#x}, which is not guest RAM"
                            )));
                        }
                    }
                }
                let runs = runs_of(&clipped);
                let spans = to_spans(
                    &runs
                        .iter()
                        .map(|&(gpa, pages)| crate::frames::SharedRange { gpa, pages })
                        .collect::<Vec<_>>(),
                );
                if let Some(old) = &self.shared {
                    // Shared before, private now: the source seals them again after this
                    // list, and they must arrive before the manifest.
                    for &(start, end) in old {
                        for page in (start..end).step_by(PAGE_SIZE) {
                            if !in_spans(&spans, page) {
                                self.must_reimport.insert(page);
                            }
                        }
                    }
                }
                self.vm.set_shared(&runs).map_err(MigrationError::Vm)?;
                self.shared = Some(spans);
                self.imported_since_list.clear();
            }
            Frame::SharedRanges(s) => {
                // Version 2: only a repetition of the guest's sealed list is acceptable.
                self.require_keys("SharedRanges")?;
                let Some(shared) = &self.shared else {
                    return Err(MigrationError::Protocol(
                        "SharedRanges before the guest's sealed list".into(),
                    ));
                };
                let claimed = to_spans(&s.ranges);
                if s.ranges
                    .iter()
                    .flat_map(|r| {
                        (0..r.pages).map(move |i| r.gpa.saturating_add(i * PAGE_SIZE as u64))
                    })
                    .any(|g| hello.migratable(g, g + PAGE_SIZE as u64) && !in_spans(shared, g))
                    || shared.iter().any(|&(start, end)| {
                        (start..end)
                            .step_by(PAGE_SIZE)
                            .any(|g| !in_spans(&claimed, g))
                    })
                {
                    return Err(integrity(
                        "the source's SharedRanges differ from the guest's sealed list".into(),
                    ));
                }
            }
            Frame::PlainPages(p) => {
                for page in &p.pages {
                    if !hello.migratable(page.gpa, page.gpa.saturating_add(PAGE_SIZE as u64)) {
                        return Err(MigrationError::Protocol(format!(
                            "page {:#x} is not migratable guest RAM",
                            page.gpa
                        )));
                    }
                    if self.opener.is_some() {
                        let shared = self.shared.as_ref().is_some_and(|s| in_spans(s, page.gpa));
                        if !shared {
                            return Err(integrity(format!(
                                "the source sent the private page {:#x} in the clear (the guest's sealed list does not share it)",
                                page.gpa
                            )));
                        }
                        if self.imported_since_list.contains(&page.gpa) {
                            return Err(integrity(format!(
                                "a clear page for {:#x}, which arrived sealed after the list that shares it",
                                page.gpa
                            )));
                        }
                    }
                    let data = match page.data {
                        PageData::Zero => None,
                        PageData::Bytes(b) => Some(b),
                    };
                    self.vm
                        .write_page(page.gpa, data)
                        .map_err(MigrationError::Vm)?;
                }
                let n = p.pages.len() as u64;
                update(self.progress, |pr| pr.pages += n);
            }
            Frame::RoundEnd(r) => update(self.progress, |p| {
                p.rounds = r.round;
                p.remaining_bytes = r.dirty_remaining * PAGE_SIZE as u64;
            }),
            Frame::DeviceState(d) => {
                let blob = if self.opener.is_some() {
                    self.require_keys("DeviceState")?;
                    let (index, payload) =
                        self.open_blob(MessageType::DeviceState, d.blob, Kind::DEVICE_STATE)?;
                    if index != 0 {
                        return Err(integrity(format!("device state with index {index}")));
                    }
                    payload
                } else {
                    d.blob
                };
                if self.device.replace(blob.to_vec()).is_some() {
                    return Err(MigrationError::Protocol("device state sent twice".into()));
                }
            }
            Frame::VcpuState(v) => {
                let blob = if self.opener.is_some() {
                    self.require_keys("VcpuState")?;
                    let (index, payload) =
                        self.open_blob(MessageType::VcpuState, v.blob, Kind::VCPU_STATE)?;
                    if index != v.index {
                        return Err(integrity(format!(
                            "the frame for vCPU {} carries the sealed state of vCPU {index}",
                            v.index
                        )));
                    }
                    payload
                } else {
                    v.blob
                };
                let slot = self.vcpus.get_mut(v.index as usize).ok_or_else(|| {
                    MigrationError::Protocol(format!(
                        "state for vCPU {} of {}",
                        v.index, hello.vcpus
                    ))
                })?;
                if slot.replace(blob.to_vec()).is_some() {
                    return Err(MigrationError::Protocol(format!(
                        "vCPU {} state sent twice",
                        v.index
                    )));
                }
            }
            Frame::Manifest(m) => {
                self.require_keys("a manifest")?;
                let Some(opener) = self.opener.as_deref_mut() else {
                    return Err(MigrationError::Protocol(
                        "a manifest for a plain guest".into(),
                    ));
                };
                opener.drain().map_err(MigrationError::Helper)?;
                opener
                    .verify_manifest(&m.record)
                    .map_err(MigrationError::Helper)?;
                if let Some(page) = self.must_reimport.first() {
                    return Err(integrity(format!(
                        "page {page:#x} became private after it was shared, and did not arrive sealed again"
                    )));
                }
                self.manifest_ok = true;
                // Everything is verified: the source may commit.
                Ready.encode(writer)?;
                flush(writer, MessageType::Ready)?;
                self.state = self
                    .state
                    .next(MessageType::Ready)
                    .map_err(|e| MigrationError::Protocol(e.to_string()))?;
            }
            Frame::Done(d) => {
                match (self.opener.as_deref_mut(), d.commit) {
                    (None, None) => {}
                    (Some(opener), Some(record)) => {
                        if !self.manifest_ok {
                            return Err(integrity(
                                "the source finished without a verified manifest".into(),
                            ));
                        }
                        opener.commit(&record).map_err(MigrationError::Helper)?;
                        self.committed = true;
                    }
                    (Some(_), None) => {
                        return Err(MigrationError::Protocol(
                            "Done without the source helper's commit".into(),
                        ))
                    }
                    (None, Some(_)) => {
                        return Err(MigrationError::Protocol(
                            "a commit record for a plain guest".into(),
                        ))
                    }
                }
                return Ok(true);
            }
            Frame::Abort(a) => return Err(a.into()),
            other => {
                return Err(MigrationError::Protocol(format!(
                    "{} frame from the source",
                    other.message_type()
                )))
            }
        }
        Ok(false)
    }

    fn finish(&mut self, hello: &Hello) -> Result<(), MigrationError> {
        if hello.mode.has_helper() && !self.committed {
            return Err(integrity(
                "the source finished without a verified commit".into(),
            ));
        }
        let (vcpus, device) = self.state_to_load()?;
        self.vm.finish(vcpus, device).map_err(MigrationError::Vm)
    }
}

fn flush(w: &mut impl Write, kind: MessageType) -> Result<(), MigrationError> {
    w.flush()
        .map_err(|source| MigrationError::Send(FrameError::Write { kind, source }))
}

/// Whether `page` lies in the Hello's helper region.
fn in_region(hello: &Hello, page: u64) -> bool {
    let h = &hello.helper_region;
    h.size != 0 && page >= h.base && page - h.base < h.size
}

/// Sorted pages as (gpa, pages) runs.
fn runs_of(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &g in pages {
        match runs.last_mut() {
            Some((start, n)) if *start + *n * PAGE_SIZE as u64 == g => *n += 1,
            _ => runs.push((g, 1)),
        }
    }
    runs
}

const _: () = assert!(record::COMMIT_RECORD_SIZE == crate::frames::COMMIT_LEN);

/// A batch's records as the opener sees them, noting whether it began to read them.
struct Watched<'a> {
    inner: &'a mut dyn RecordSource,
    read: bool,
}

impl RecordSource for Watched<'_> {
    fn len(&self) -> usize {
        self.inner.len()
    }

    fn read_into(&mut self, dest: &mut dyn crate::codec::RecordDest) -> std::io::Result<()> {
        self.read = true;
        self.inner.read_into(dest)
    }
}
