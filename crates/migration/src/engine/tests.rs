//! The engine end to end without KVM: fake VMs over plain memory, the real helper logic
//! of `mirror-helper` as sealer and opener, a socket pair, and a relay in between that
//! can tamper with the stream the way a hostile host could.

use super::{
    source::{migrate, RecordSink, Sealed, Sealer, SourceOptions, SourceVm, ZeroPages},
    target::{receive, BatchWindow, LocalGuest, Opener, PendingCommit, Received, TargetVm},
    MigrationError, PartError, Progress, Status,
};
use crate::{
    codec::{FrameReader, Incoming, RecordDest, RecordSource},
    cpu::{self, CpuFeatures, GuestCpu},
    frames::{
        AbortToken, FailureCode, Frame, GpaRange, GuestMode, Hello, KeyConfirm, KeyReply, KeyShare,
        MessageType, Ready, MAX_PAYLOAD_LEN, PROTOCOL_VERSION,
    },
};
use helper_abi::{
    handshake,
    mailbox::{flags, Op, Origin, Request, Status as HStatus},
    record::{self, Kind, COMMIT_RECORD_SIZE, MANIFEST_RECORD_SIZE, PAGE_RECORD_SIZE},
    PAGE_SIZE,
};
use mirror_helper::{
    host::{self, Guest, Reply, Spec, Vcpu},
    keys,
};
use std::{
    collections::{BTreeSet, VecDeque},
    io::{Read, Write},
    os::{fd::BorrowedFd, unix::net::UnixStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

const PAGES: u64 = 96;
const RAM: u64 = PAGES * PAGE_SIZE as u64;
const REGION: (u64, u64) = (64 * 4096, 16 * 4096);
const SHARED_LIST: u64 = 4096;
const SECRET: (u64, u64) = (2 * 4096, 4096);
const SHARED_PAGE: u64 = 3 * 4096;
const FLAG_PAGE: u64 = 4 * 4096;
const CANARY: &[u8; 16] = b"PRIVATE-CANARY!!";
const MIGRATION_SECRET: [u8; 32] = [0x5e; 32];

type Ram = Arc<Mutex<Vec<u8>>>;

fn spec() -> Spec {
    Spec {
        ram: RAM,
        region: REGION,
        shared_list: SHARED_LIST,
        secret: SECRET.0,
        migration_state: FLAG_PAGE,
        firmware_hash: [9; 32],
        max_batch: 32,
        window_size: 32 * PAGE_RECORD_SIZE,
    }
}

/// The real helper over fake guest memory, with one vCPU (lane) per mailbox.
struct FakeHelper {
    guest: Guest,
    vcpus: Vec<Vcpu>,
    /// Sealed batches not yet sent, oldest first.
    done: VecDeque<(Sealed, Vec<u8>)>,
    /// The records of the batch received last, not yet imported (target).
    received: Option<Vec<u8>>,
    /// Refusals show later, as the VMM's lanes report them: at the next receive (while
    /// it waits for a window) or drain, not at the import that failed.
    defer_refusals: bool,
    /// A refusal not yet reported (with `defer_refusals`).
    deferred: Option<PartError>,
}

impl FakeHelper {
    fn new(guest: Guest, lanes: usize) -> FakeHelper {
        let vcpus = (0..lanes).map(|_| guest.vcpu()).collect();
        FakeHelper {
            guest,
            vcpus,
            done: VecDeque::new(),
            received: None,
            defer_refusals: false,
            deferred: None,
        }
    }

    fn ok(&self, lane: usize, req: Request, gpas: &[u64], msg: &[u8]) -> Result<Reply, PartError> {
        let r = self.guest.call(&self.vcpus[lane], req, gpas, msg);
        match r.status() {
            HStatus::OK => Ok(r),
            s => Err(format!(
                "helper: {s} (item {}) in {}",
                r.response.index,
                Op(req.op).name().unwrap_or("?")
            )
            .into()),
        }
    }

    fn window(&self, lane: usize, w: usize, len: usize) -> Vec<u8> {
        self.vcpus[lane].mailbox.window(w, len)
    }

    fn fill(&self, lane: usize, w: usize, at: usize, data: &[u8]) {
        let mut bytes = vec![0u8; at];
        bytes.extend_from_slice(data);
        self.vcpus[lane].mailbox.fill_window(w, &bytes);
    }
}

impl Sealer for FakeHelper {
    fn lanes(&self) -> usize {
        self.vcpus.len()
    }
    fn max_batch(&self) -> usize {
        32
    }
    fn depth(&self) -> usize {
        2
    }
    fn start(
        &mut self,
        session_id: &[u8; 16],
        hello_hash: &[u8; 32],
    ) -> Result<KeyShare, PartError> {
        let m = host::start(&self.guest, &self.vcpus[0], *session_id, *hello_hash)
            .map_err(|s| format!("helper: {s}"))?;
        Ok(handshake::KeyShare::decode(&m).into())
    }
    fn finish_handshake(&mut self, reply: &KeyReply) -> Result<(KeyConfirm, [u8; 32]), PartError> {
        let bytes = handshake::KeyReply::from(*reply).encode();
        let (mac, th) = host::finish(&self.guest, &self.vcpus[0], &bytes)
            .map_err(|s| format!("helper: {s}"))?;
        Ok((KeyConfirm { mac }, th))
    }
    fn submit(
        &mut self,
        lane: usize,
        round: u32,
        gpas: &[u64],
        zero: ZeroPages,
    ) -> Result<(), PartError> {
        let r = self.ok(
            lane,
            Request {
                op: Op::EXPORT.0,
                count: gpas.len() as u32,
                round,
                flags: match zero {
                    ZeroPages::Sealed => 0,
                    ZeroPages::ShortRecords => flags::ZERO_RECORDS,
                },
                ..Default::default()
            },
            gpas,
            &[],
        )?;
        let records = self.window(lane, 0, r.response.bytes as usize);
        let sealed = Sealed {
            lane,
            round,
            count: r.response.count,
            bytes: records.len(),
            window: 0,
        };
        self.done.push_back((sealed, records));
        Ok(())
    }
    fn wait(&mut self) -> Result<Sealed, PartError> {
        self.done
            .front()
            .map(|d| d.0)
            .ok_or_else(|| "nothing in flight".into())
    }
    fn send(&mut self, batch: &Sealed, out: &mut dyn RecordSink) -> std::io::Result<()> {
        let (sealed, records) = self.done.pop_front().expect("send after wait");
        assert_eq!(&sealed, batch);
        out.write_all(&records)
    }
    fn seal_blob(
        &mut self,
        kind: Kind,
        index: u32,
        round: u32,
        blob: &[u8],
    ) -> Result<Vec<u8>, PartError> {
        self.fill(0, 0, record::HEADER_SIZE, blob);
        let r = self.ok(
            0,
            Request {
                op: Op::SEAL_BLOB.0,
                kind: u32::from(kind.0),
                index,
                round,
                bytes: blob.len() as u32,
                ..Default::default()
            },
            &[],
            &[],
        )?;
        Ok(self.window(0, 0, r.response.bytes as usize))
    }
    fn manifest(&mut self, round: u32) -> Result<[u8; MANIFEST_RECORD_SIZE], PartError> {
        self.ok(
            0,
            Request {
                op: Op::FINISH.0,
                round,
                ..Default::default()
            },
            &[],
            &[],
        )?;
        Ok(self.window(0, 0, MANIFEST_RECORD_SIZE).try_into().unwrap())
    }
    fn commit(&mut self, round: u32) -> Result<([u8; COMMIT_RECORD_SIZE], [u8; 32]), PartError> {
        let r = self.ok(
            0,
            Request {
                op: Op::COMMIT.0,
                round,
                ..Default::default()
            },
            &[],
            &[],
        )?;
        let th = r
            .message
            .try_into()
            .map_err(|_| "no transcript".to_string())?;
        Ok((
            self.window(0, 0, COMMIT_RECORD_SIZE).try_into().unwrap(),
            th,
        ))
    }
    fn release(&mut self, token: &AbortToken) -> Result<(), PartError> {
        self.ok(
            0,
            Request {
                op: Op::RELEASE.0,
                kind: Origin::TARGET.0,
                bytes: 32,
                ..Default::default()
            },
            &[],
            &token.tag,
        )
        .map(drop)
    }
}

impl Opener for FakeHelper {
    fn lanes(&self) -> usize {
        self.vcpus.len()
    }
    fn respond(
        &mut self,
        session_id: &[u8; 16],
        hello_hash: &[u8; 32],
        share: &KeyShare,
    ) -> Result<KeyReply, PartError> {
        let m = host::respond(
            &self.guest,
            &self.vcpus[0],
            *session_id,
            *hello_hash,
            &handshake::KeyShare::from(*share).encode(),
        )
        .map_err(|s| format!("helper: {s}"))?;
        Ok(handshake::KeyReply::decode(&m).into())
    }
    fn confirm(&mut self, confirm: &KeyConfirm) -> Result<[u8; 32], PartError> {
        host::confirm_target(&self.guest, &self.vcpus[0], &confirm.mac)
            .map_err(|s| format!("helper: {s}").into())
    }
    fn receive(
        &mut self,
        lane: usize,
        from: &mut dyn RecordSource,
    ) -> Result<BatchWindow, PartError> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        // The fake's windows are plain memory: the records land in a staging buffer
        // (through a duplicate of the stream's descriptor for the part that was not
        // buffered), and IMPORT fills the window from it.
        struct Staging(Vec<u8>);
        impl RecordDest for Staging {
            fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
                self.0.extend_from_slice(bytes);
                Ok(())
            }
            fn read_from(&mut self, fd: BorrowedFd<'_>, len: usize) -> std::io::Result<()> {
                let mut f = std::fs::File::from(fd.try_clone_to_owned()?);
                let at = self.0.len();
                self.0.resize(at + len, 0);
                f.read_exact(&mut self.0[at..])
            }
        }
        let mut staging = Staging(Vec::with_capacity(from.len()));
        from.read_into(&mut staging)?;
        let bytes = staging.0.len();
        self.received = Some(staging.0);
        Ok(BatchWindow {
            lane,
            window: 0,
            bytes,
        })
    }
    fn read_window(
        &mut self,
        batch: &BatchWindow,
        offset: usize,
        out: &mut [u8],
    ) -> Result<(), PartError> {
        let records = self.received.as_ref().ok_or("no batch received")?;
        assert_eq!(records.len(), batch.bytes);
        out.copy_from_slice(
            records
                .get(offset..offset + out.len())
                .ok_or("read past the batch")?,
        );
        Ok(())
    }
    fn import(&mut self, batch: BatchWindow, count: u32) -> Result<(), PartError> {
        let records = self.received.take().ok_or("no batch received")?;
        self.fill(batch.lane, 0, 0, &records);
        let result = self
            .ok(
                batch.lane,
                Request {
                    op: Op::IMPORT.0,
                    count,
                    bytes: records.len() as u32,
                    ..Default::default()
                },
                &[],
                &[],
            )
            .map(drop);
        match result {
            Err(e) if self.defer_refusals => {
                self.deferred.get_or_insert(e);
                Ok(())
            }
            r => r,
        }
    }
    fn discard(&mut self, _: BatchWindow) {
        self.received = None;
    }
    fn drain(&mut self) -> Result<(), PartError> {
        match self.deferred.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    fn open_blob(&mut self, rec: &[u8]) -> Result<(Kind, u32), PartError> {
        self.fill(0, 0, 0, rec);
        let r = self.ok(
            0,
            Request {
                op: Op::OPEN_BLOB.0,
                bytes: rec.len() as u32,
                ..Default::default()
            },
            &[],
            &[],
        )?;
        Ok((Kind(r.response.kind as u8), r.response.index))
    }
    fn verify_manifest(&mut self, rec: &[u8; MANIFEST_RECORD_SIZE]) -> Result<(), PartError> {
        self.fill(0, 0, 0, rec);
        self.ok(
            0,
            Request {
                op: Op::FINISH.0,
                bytes: rec.len() as u32,
                ..Default::default()
            },
            &[],
            &[],
        )
        .map(drop)
    }
    fn commit(&mut self, rec: &[u8; COMMIT_RECORD_SIZE]) -> Result<(), PartError> {
        self.fill(0, 0, 0, rec);
        self.ok(
            0,
            Request {
                op: Op::COMMIT.0,
                bytes: rec.len() as u32,
                ..Default::default()
            },
            &[],
            &[],
        )
        .map(drop)
    }
    fn abort(&mut self) -> Result<AbortToken, PartError> {
        let r = self.ok(
            0,
            Request {
                op: Op::ABORT.0,
                ..Default::default()
            },
            &[],
            &[],
        )?;
        Ok(AbortToken {
            tag: r.message.try_into().map_err(|_| "no token".to_string())?,
        })
    }
}

/// Guest RAM: page p holds a pattern of p (every 7th page zero), page 5 a canary.
fn guest_ram(fill: bool) -> Ram {
    let mut mem = vec![0u8; RAM as usize];
    if fill {
        for p in 0..PAGES {
            if p % 7 != 0 {
                mem[(p * 4096) as usize..][..PAGE_SIZE].fill(p as u8);
            }
        }
        for chunk in mem[5 * 4096..6 * 4096].chunks_mut(16) {
            chunk.copy_from_slice(CANARY);
        }
    }
    Arc::new(Mutex::new(mem))
}

struct FakeSource {
    ram: Ram,
    sev: bool,
    dirty: BTreeSet<u64>,
    logging: bool,
    paused: bool,
    resumed: bool,
    writes: u64,
    /// The commit it was asked to keep (the VMM's commit file).
    saved_commit: Option<([u8; 32], [u8; COMMIT_RECORD_SIZE])>,
    /// Keeping the commit fails (a full disk).
    fail_save: bool,
}

impl FakeSource {
    fn pages(&self) -> Vec<u64> {
        (0..PAGES)
            .map(|p| p * 4096)
            .filter(|&g| !self.sev || !(REGION.0..REGION.0 + REGION.1).contains(&g))
            .collect()
    }
}

impl SourceVm for FakeSource {
    fn pages(&self) -> Vec<u64> {
        FakeSource::pages(self)
    }
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) -> Result<(), PartError> {
        if self.sev && gpa != SHARED_PAGE {
            return Err(format!("the host must not read private page {gpa:#x}").into());
        }
        out.copy_from_slice(&self.ram.lock().unwrap()[gpa as usize..][..PAGE_SIZE]);
        Ok(())
    }
    fn start_dirty_log(&mut self) -> Result<(), PartError> {
        self.logging = true;
        Ok(())
    }
    fn take_dirty(&mut self) -> Result<Vec<u64>, PartError> {
        // The guest keeps running: a few pages change between looks, unless paused.
        if !self.paused {
            for k in 0..6u64 {
                let p = 6 + (self.writes * 5 + k * 11) % 50;
                self.ram.lock().unwrap()[(p * 4096) as usize] = self.writes as u8 ^ 0xa5;
                self.dirty.insert(p * 4096);
            }
            self.writes += 1;
        }
        Ok(std::mem::take(&mut self.dirty).into_iter().collect())
    }
    fn stop_dirty_log(&mut self) {
        self.logging = false;
    }
    fn pause(&mut self) -> Result<(), PartError> {
        self.paused = true;
        Ok(())
    }
    fn resume(&mut self) {
        self.paused = false;
        self.resumed = true;
    }
    fn device_state(&mut self) -> Result<Vec<u8>, PartError> {
        Ok(b"devices".to_vec())
    }
    fn vcpu_states(&mut self) -> Result<Vec<Vec<u8>>, PartError> {
        Ok(vec![b"vcpu0".to_vec(), b"vcpu1".to_vec()])
    }
    fn save_commit(
        &mut self,
        transcript: &[u8; 32],
        record: &[u8; COMMIT_RECORD_SIZE],
    ) -> Result<(), PartError> {
        if self.fail_save {
            return Err("no space left on the device".into());
        }
        self.saved_commit = Some((*transcript, *record));
        Ok(())
    }
}

struct FakeTarget {
    ram: Ram,
    sev: bool,
    mem_size: u64,
    shared: BTreeSet<u64>,
    ran: Option<(Vec<Vec<u8>>, Vec<u8>)>,
    /// The abort token it was asked to keep (the VMM's token file).
    kept_token: Option<([u8; 32], AbortToken)>,
    /// The CPU its VMM gives its guest.
    cpu: Option<GuestCpu>,
}

impl TargetVm for FakeTarget {
    fn local(&self) -> LocalGuest {
        LocalGuest {
            mode: if self.sev {
                GuestMode::Sev
            } else {
                GuestMode::Plain
            },
            ram: vec![GpaRange {
                base: 0,
                size: self.mem_size,
            }],
            firmware_digest: [9; 32],
            helper_region: if self.sev {
                GpaRange {
                    base: REGION.0,
                    size: REGION.1,
                }
            } else {
                GpaRange { base: 0, size: 0 }
            },
            vcpus: 2,
            es_helpers: 0,
            cpu: self.cpu,
        }
    }
    fn set_shared(&mut self, ranges: &[(u64, u64)]) -> Result<(), PartError> {
        self.shared = ranges
            .iter()
            .flat_map(|&(g, n)| (0..n).map(move |i| g + i * 4096))
            .collect();
        Ok(())
    }
    fn write_page(&mut self, gpa: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), PartError> {
        if self.sev && !self.shared.contains(&gpa) {
            return Err(format!("the engine wrote the private page {gpa:#x} in the clear").into());
        }
        let mut ram = self.ram.lock().unwrap();
        let page = ram
            .get_mut(gpa as usize..gpa as usize + PAGE_SIZE)
            .ok_or("outside RAM")?;
        match data {
            Some(d) => page.copy_from_slice(d),
            None => page.fill(0),
        }
        Ok(())
    }
    fn finish(&mut self, vcpus: Vec<Vec<u8>>, device: Vec<u8>) -> Result<(), PartError> {
        self.ran = Some((vcpus, device));
        Ok(())
    }
    fn keep_abort_token(
        &mut self,
        transcript: &[u8; 32],
        token: &AbortToken,
    ) -> Result<(), PartError> {
        self.kept_token = Some((*transcript, *token));
        Ok(())
    }
}

fn hello(sev: bool, lanes: u16) -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        mode: if sev {
            GuestMode::Sev
        } else {
            GuestMode::Plain
        },
        mem_size: RAM,
        ram: vec![GpaRange { base: 0, size: RAM }],
        firmware_digest: [9; 32],
        helper_region: if sev {
            GpaRange {
                base: REGION.0,
                size: REGION.1,
            }
        } else {
            GpaRange { base: 0, size: 0 }
        },
        lanes: if sev { lanes } else { 0 },
        session_id: [0x42; 16],
        helper_nonce: [0; 16],
        page_size: 4096,
        vcpus: 2,
        es_helpers: 0,
        cpu: None,
    }
}

/// Called for each frame (index, frame, scratch) and returns the encoded frames to
/// forward in its place; an empty one closes the direction there.
type FrameEdit = dyn Fn(usize, Frame<'_>, &mut Vec<Vec<u8>>) -> Vec<Vec<u8>> + Send + Sync;

/// What the relay between source and target does to frames from the source.
#[derive(Clone)]
enum Tamper {
    None,
    /// Flip one byte at this stream offset.
    FlipByte(usize),
    /// Cut the stream after this many bytes.
    Truncate(usize),
    /// Frame-level edits: called for each frame (index, frame) and returns the frames to
    /// forward in its place.
    Frames(Arc<FrameEdit>),
}

/// How one run is set up.
#[derive(Clone)]
struct Setup {
    sev: bool,
    lanes: usize,
    target_secret: Option<[u8; 32]>,
    target_mem: u64,
    target_firmware: [u8; 32],
    forward: Tamper,
    /// Frame-level edits of the return path (target to source).
    back: Option<Arc<FrameEdit>>,
    zero_pages: ZeroPages,
    /// The operator cancels once the source shows `Committing`.
    cancel_after_commit: bool,
    /// Keeping the commit record fails at the source.
    fail_save: bool,
    /// The CPU the source's Hello says the guest was given.
    source_cpu: Option<GuestCpu>,
    /// The CPU the target's VMM gives its guest.
    target_cpu: Option<GuestCpu>,
    /// The target's helper reports a refused import later, as the VMM's lanes do.
    defer_refusals: bool,
}

impl Setup {
    fn sev(lanes: usize) -> Setup {
        Setup {
            sev: true,
            lanes,
            target_secret: Some(MIGRATION_SECRET),
            target_mem: RAM,
            target_firmware: [9; 32],
            forward: Tamper::None,
            back: None,
            zero_pages: ZeroPages::Sealed,
            cancel_after_commit: false,
            fail_save: false,
            source_cpu: None,
            target_cpu: None,
            defer_refusals: false,
        }
    }

    fn plain() -> Setup {
        Setup {
            sev: false,
            lanes: 1,
            target_secret: None,
            ..Setup::sev(1)
        }
    }

    fn forward(self, t: Tamper) -> Setup {
        Setup { forward: t, ..self }
    }

    fn back(self, edit: Arc<FrameEdit>) -> Setup {
        Setup {
            back: Some(edit),
            ..self
        }
    }
}

struct Outcome {
    source: Result<(), MigrationError>,
    target: Result<Received, MigrationError>,
    src: FakeSource,
    dst: FakeTarget,
    dst_ram: Ram,
    /// The source's helper (SEV), for its flag and a later release.
    sealer: FakeHelper,
    /// The target's helper (SEV), for a commit or an abort after the stream.
    opener: FakeHelper,
    stream: Vec<u8>,
    progress: Progress,
}

fn encode_frame(f: &Frame<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    f.encode(&mut v).unwrap();
    v
}

fn relay_frames(
    from: UnixStream,
    mut to: UnixStream,
    incoming: Incoming,
    edit: Arc<FrameEdit>,
    capture: Arc<Mutex<Vec<u8>>>,
) {
    let mut reader = FrameReader::new(from, incoming);
    let mut buf = vec![0u8; MAX_PAYLOAD_LEN];
    let mut held = Vec::new();
    let mut i = 0;
    while let Ok(frame) = reader.read_frame(&mut buf) {
        for bytes in edit(i, frame, &mut held) {
            if bytes.is_empty() {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            capture.lock().unwrap().extend_from_slice(&bytes);
            if to.write_all(&bytes).is_err() {
                return;
            }
        }
        i += 1;
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn relay(mut from: UnixStream, mut to: UnixStream, tamper: Tamper, capture: Arc<Mutex<Vec<u8>>>) {
    match tamper {
        Tamper::Frames(edit) => return relay_frames(from, to, Incoming::FromSource, edit, capture),
        tamper => {
            let mut at = 0usize;
            let mut buf = [0u8; 8192];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let chunk = &mut buf[..n];
                if let Tamper::FlipByte(o) = tamper {
                    if (at..at + n).contains(&o) {
                        chunk[o - at] ^= 0x40;
                    }
                }
                let keep = match tamper {
                    Tamper::Truncate(limit) => limit.saturating_sub(at).min(n),
                    _ => n,
                };
                capture.lock().unwrap().extend_from_slice(&chunk[..keep]);
                if to.write_all(&chunk[..keep]).is_err() || keep < n {
                    break;
                }
                at += n;
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// A source guest (canary, shared page 3) and its helper.
fn source_helper(lanes: usize) -> (Ram, FakeHelper) {
    let ram = guest_ram(true);
    let guest = Guest::over(spec(), Some(MIGRATION_SECRET), ram.clone());
    guest.share(SHARED_PAGE, 1);
    (ram, FakeHelper::new(guest, lanes))
}

/// A fresh incoming target guest and its helper.
fn target_helper(secret: Option<[u8; 32]>, firmware: [u8; 32], lanes: usize) -> (Ram, FakeHelper) {
    let ram = guest_ram(false);
    let guest = Guest::over(
        Spec {
            firmware_hash: firmware,
            ..spec()
        },
        secret,
        ram.clone(),
    )
    .incoming();
    (ram, FakeHelper::new(guest, lanes))
}

fn run(setup: Setup) -> Outcome {
    let Setup {
        sev,
        lanes,
        target_secret,
        target_mem,
        target_firmware,
        forward,
        back,
        zero_pages,
        cancel_after_commit,
        fail_save,
        source_cpu,
        target_cpu,
        defer_refusals,
    } = setup;
    let (src_ram, mut sealer) = source_helper(lanes);
    let (dst_ram, mut opener) = target_helper(target_secret, target_firmware, lanes);
    opener.defer_refusals = defer_refusals;
    let (src_sock, relay_in) = UnixStream::pair().unwrap();
    let (relay_out, dst_sock) = UnixStream::pair().unwrap();
    // The source polls, as the VMM makes it (a short read timeout, waited through);
    // the target blocks up to its stream timeout.
    src_sock
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    dst_sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let capture = Arc::new(Mutex::new(Vec::new()));
    let back_capture = Arc::new(Mutex::new(Vec::new()));
    let back = {
        let (mut from, mut to) = (
            relay_out.try_clone().unwrap(),
            relay_in.try_clone().unwrap(),
        );
        let cap = back_capture.clone();
        std::thread::spawn(move || match back {
            Some(edit) => relay_frames(from, to, Incoming::FromTarget, edit, cap),
            None => {
                let _ = std::io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
            }
        })
    };
    let fwd = {
        let cap = capture.clone();
        std::thread::spawn(move || relay(relay_in, relay_out, forward, cap))
    };
    let dst_handle = {
        let ram = dst_ram.clone();
        std::thread::spawn(move || {
            let mut dst = FakeTarget {
                ram,
                sev,
                mem_size: target_mem,
                shared: BTreeSet::new(),
                ran: None,
                kept_token: None,
                cpu: target_cpu,
            };
            let mut opener = opener;
            let progress = Mutex::new(Progress::default());
            let r = receive(
                dst_sock.try_clone().unwrap(),
                dst_sock,
                &mut dst,
                if sev {
                    Some(&mut opener as &mut dyn Opener)
                } else {
                    None
                },
                &progress,
            );
            (r, dst, opener)
        })
    };
    let mut src = FakeSource {
        ram: src_ram.clone(),
        sev,
        dirty: BTreeSet::new(),
        logging: false,
        paused: false,
        resumed: false,
        writes: 0,
        saved_commit: None,
        fail_save,
    };
    let progress = Arc::new(Mutex::new(Progress::default()));
    let cancel = Arc::new(AtomicBool::new(false));
    let canceller = cancel_after_commit.then(|| {
        let (progress, cancel) = (progress.clone(), cancel.clone());
        std::thread::spawn(move || {
            let committing = harness_wait(|| progress.lock().unwrap().status == Status::Committing);
            if committing {
                cancel.store(true, Ordering::Relaxed);
            }
        })
    });
    let options = SourceOptions {
        downtime_limit: Duration::from_millis(0),
        max_rounds: 4,
        batch: 8,
        zero_pages,
        ..Default::default()
    };
    let source = migrate(
        src_sock.try_clone().unwrap(),
        src_sock,
        &Hello {
            cpu: source_cpu,
            ..hello(sev, lanes as u16)
        },
        &mut src,
        if sev {
            Some(&mut sealer as &mut dyn Sealer)
        } else {
            None
        },
        &options,
        &progress,
        &cancel,
    );
    if let Some(c) = canceller {
        c.join().unwrap();
    }
    let (target, dst, opener) = dst_handle.join().unwrap();
    let _ = fwd.join();
    let _ = back.join();
    let stream = capture.lock().unwrap().clone();
    let progress = progress.lock().unwrap().clone();
    Outcome {
        source,
        target,
        src,
        dst,
        dst_ram,
        sealer,
        opener,
        stream,
        progress,
    }
}

/// Polls `done` for up to 30 s; whether it came true.
fn harness_wait(mut done: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// The target refused, never ran the guest, and the source runs it again, not flagged.
fn assert_safe_failure(o: &Outcome, what: &str) {
    assert!(o.target.is_err(), "{what}: the target accepted");
    assert!(o.dst.ran.is_none(), "{what}: the target ran the guest");
    assert!(o.source.is_err(), "{what}: the source thinks it succeeded");
    assert!(!o.src.paused, "{what}: the source guest was left paused");
    assert!(!o.src.logging, "{what}: dirty logging left on");
    assert!(
        !o.sealer.guest.migrated_out(),
        "{what}: the source guest is flagged migrated out"
    );
}

/// Every migratable page equal (but the "migrated out" page, which the source's helper
/// set after the last seal).
fn migratable_equal(o: &Outcome) {
    let (a, b) = (o.src.ram.lock().unwrap(), o.dst_ram.lock().unwrap());
    for p in o.src.pages().into_iter().filter(|&p| p != FLAG_PAGE) {
        let r = p as usize..p as usize + PAGE_SIZE;
        assert_eq!(a[r.clone()], b[r], "page {p:#x} differs");
    }
}

/// An SEV-ES guest goes only to an SEV-ES VM launched with as many measured helpers; an
/// SEV or plain guest never to an SEV-ES VM.
#[test]
fn an_sev_es_guest_goes_only_to_an_sev_es_target_with_as_many_measured_helpers() {
    let es = Hello {
        mode: GuestMode::SevEs,
        es_helpers: 2,
        ..hello(true, 2)
    };
    let local = |mode, es_helpers| LocalGuest {
        mode,
        ram: es.ram.clone(),
        firmware_digest: es.firmware_digest,
        helper_region: es.helper_region,
        vcpus: es.vcpus,
        es_helpers,
        cpu: None,
    };
    local(GuestMode::SevEs, 2).check(&es).unwrap();
    for (target, says) in [
        (
            local(GuestMode::Sev, 0),
            "an SEV-ES guest, this target an SEV VM",
        ),
        (local(GuestMode::SevEs, 1), "measured at launch"),
        (local(GuestMode::Plain, 0), "guest mode"),
    ] {
        match target.check(&es) {
            Err(MigrationError::Incompatible(why)) => assert!(why.contains(says), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    assert!(local(GuestMode::SevEs, 2).check(&hello(true, 2)).is_err());
}

#[test]
fn a_plain_guest_migrates_with_every_page_and_its_state() {
    let o = run(Setup::plain());
    o.source.as_ref().unwrap();
    o.target.as_ref().unwrap();
    migratable_equal(&o);
    let (vcpus, device) = o.dst.ran.as_ref().unwrap();
    assert_eq!(vcpus, &[b"vcpu0".to_vec(), b"vcpu1".to_vec()]);
    assert_eq!(device, b"devices");
    assert_eq!(o.progress.status, Status::Completed);
    assert!(o.progress.rounds >= 2 && o.progress.downtime_ms.is_some());
    assert!(!o.src.resumed, "a migrated source stays stopped");
}

#[test]
fn an_sev_guest_migrates_sealed_commits_and_no_private_plaintext_crosses_the_wire() {
    for lanes in [1, 2] {
        let o = run(Setup::sev(lanes));
        o.source.as_ref().unwrap();
        o.target.as_ref().unwrap();
        migratable_equal(&o);
        let (vcpus, device) = o.dst.ran.as_ref().unwrap();
        assert_eq!(vcpus, &[b"vcpu0".to_vec(), b"vcpu1".to_vec()]);
        assert_eq!(device, b"devices");
        assert!(
            !o.stream.windows(CANARY.len()).any(|w| w == CANARY),
            "canary in the stream"
        );
        assert!(
            !o.stream.windows(32).any(|w| w == MIGRATION_SECRET),
            "migration secret in the stream"
        );
        // The shared page travels in the clear (it is the host's anyway).
        assert!(o.stream.windows(64).any(|w| w == [3u8; 64]));
        // The source is stopped for good and flagged; the target is not.
        assert!(o.sealer.guest.migrated_out());
        assert!(!o.src.resumed);
        assert!(o.progress.transcript.is_some());
        let flag = &o.dst_ram.lock().unwrap()[FLAG_PAGE as usize..][..8];
        assert_ne!(flag, b"MIGRATED");
    }
}

/// The record kinds of every PageBatch in a captured stream.
fn batch_kinds(stream: &[u8]) -> Vec<Kind> {
    let mut r = FrameReader::new(stream, Incoming::FromSource);
    let mut buf = vec![0u8; MAX_PAYLOAD_LEN];
    let mut kinds = Vec::new();
    while let Ok(f) = r.read_frame(&mut buf) {
        if let Frame::PageBatch(b) = f {
            kinds.extend(b.iter().map(|l| l.header.kind));
        }
    }
    kinds
}

#[test]
fn private_zero_pages_are_full_records_unless_the_owner_accepts_the_leak() {
    let sealed = run(Setup::sev(1));
    sealed.target.as_ref().unwrap();
    let kinds = batch_kinds(&sealed.stream);
    assert!(!kinds.is_empty() && kinds.iter().all(|&k| k == Kind::PAGE));
    let short = run(Setup {
        zero_pages: ZeroPages::ShortRecords,
        ..Setup::sev(1)
    });
    short.target.as_ref().unwrap();
    migratable_equal(&short);
    assert!(batch_kinds(&short.stream).contains(&Kind::ZERO));
    assert!(short.stream.len() < sealed.stream.len());
}

#[test]
fn a_flipped_byte_anywhere_stops_the_migration_or_lands_in_shared_memory() {
    let len = run(Setup::sev(2)).stream.len();
    for i in 0..60 {
        let at = if i < 40 {
            i * 7
        } else {
            (len / 20) * (i - 39) - 1
        };
        let o = run(Setup::sev(2).forward(Tamper::FlipByte(at)));
        if o.target.is_ok() {
            // The host may write shared pages whenever it likes, so their bytes travel
            // unprotected; every private page must still be exactly the source's.
            let (a, b) = (o.src.ram.lock().unwrap(), o.dst_ram.lock().unwrap());
            for p in o
                .src
                .pages()
                .into_iter()
                .filter(|&p| p != SHARED_PAGE && p != FLAG_PAGE)
            {
                let r = p as usize..p as usize + PAGE_SIZE;
                assert_eq!(
                    a[r.clone()],
                    b[r],
                    "flip at {at}: private page {p:#x} differs"
                );
            }
            continue;
        }
        assert_safe_failure(&o, &format!("flip at {at}"));
    }
}

#[test]
fn a_truncated_stream_is_refused_and_the_source_resumes() {
    // Cuts inside the first frames, at fixed offsets (every run has them) ...
    for cut in [0, 5, 200] {
        let o = run(Setup::plain().forward(Tamper::Truncate(cut)));
        assert_safe_failure(&o, &format!("cut at {cut}"));
    }
    for cut in [0, 100, 300] {
        let o = run(Setup::sev(1).forward(Tamper::Truncate(cut)));
        assert_safe_failure(&o, &format!("SEV cut at {cut}"));
    }
    // ... and inside later frames, found by kind: how many rounds a run takes depends on
    // its timing, so offsets measured on another run may lie past this one's end.
    for (sev, kind, at) in [
        (false, MessageType::PlainPages, None),
        (false, MessageType::Done, Some(11)),
        (true, MessageType::PageBatch, None),
        (true, MessageType::Manifest, Some(100)),
    ] {
        let o = run(if sev { Setup::sev(1) } else { Setup::plain() }.forward(cut_inside(kind, at)));
        assert_safe_failure(&o, &format!("sev {sev}: cut inside the first {kind}"));
    }
}

/// Forwards the stream up to `at` bytes (None: half) into the first frame of `kind`,
/// then closes it.
fn cut_inside(kind: MessageType, at: Option<usize>) -> Tamper {
    Tamper::Frames(Arc::new(
        move |_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| {
            let bytes = encode_frame(&f);
            if f.message_type() == kind {
                let at = at.unwrap_or(bytes.len() / 2).min(bytes.len() - 1);
                vec![bytes[..at].to_vec(), Vec::new()]
            } else {
                vec![bytes]
            }
        },
    ))
}

fn is_batch(f: &Frame<'_>) -> bool {
    matches!(f, Frame::PageBatch(_))
}

#[test]
fn a_record_replayed_from_an_earlier_round_is_refused() {
    let edit = Arc::new(|_: usize, f: Frame<'_>, held: &mut Vec<Vec<u8>>| {
        let bytes = encode_frame(&f);
        match &f {
            Frame::PageBatch(b) if b.round == 1 && held.is_empty() => {
                held.push(bytes.clone());
                vec![bytes]
            }
            // Round 2 always exists (it is the stop-and-copy when precopy ends early).
            Frame::PageBatch(b) if b.round >= 2 && held.len() == 1 => {
                let old = held[0].clone();
                held.push(vec![]);
                vec![old, bytes]
            }
            _ => vec![bytes],
        }
    });
    let o = run(Setup::sev(1).forward(Tamper::Frames(edit)));
    assert_safe_failure(&o, "replay");
    assert!(
        matches!(o.target, Err(MigrationError::Helper(_))),
        "{:?}",
        o.target.err()
    );
}

/// A refused batch whose refusal shows only when the next batch waits for a window (as
/// the VMM's lanes report it) is reported as the helper's refusal, not as a stream
/// whose records were left unread (failed before the fix: "the batch's records were not
/// read in full").
#[test]
fn a_refusal_found_while_waiting_for_a_window_is_the_reported_cause() {
    let edit = Arc::new(|_: usize, f: Frame<'_>, held: &mut Vec<Vec<u8>>| match &f {
        Frame::PageBatch(b) if held.is_empty() => {
            held.push(vec![]);
            let mut records = b.records.to_vec();
            records[record::HEADER_SIZE + 7] ^= 1;
            vec![encode_frame(&Frame::PageBatch(crate::frames::PageBatch {
                records: &records,
                ..*b
            }))]
        }
        _ => vec![encode_frame(&f)],
    });
    let o = run(Setup {
        defer_refusals: true,
        ..Setup::sev(1).forward(Tamper::Frames(edit))
    });
    assert_safe_failure(&o, "spoiled record");
    let err = o.target.as_ref().unwrap_err();
    assert!(matches!(err, MigrationError::Helper(_)), "{err:?}");
    assert!(err.chain().contains("AUTH_FAILED"), "{}", err.chain());
}

#[test]
fn a_reordered_batch_is_refused() {
    let edit = Arc::new(|_: usize, f: Frame<'_>, held: &mut Vec<Vec<u8>>| {
        let bytes = encode_frame(&f);
        if is_batch(&f) && held.is_empty() {
            held.push(bytes);
            return vec![];
        }
        if is_batch(&f) && held.len() == 1 {
            let first = held.pop().unwrap();
            held.push(vec![]);
            held.push(vec![]);
            return vec![bytes, first];
        }
        vec![bytes]
    });
    let o = run(Setup::sev(1).forward(Tamper::Frames(edit)));
    assert_safe_failure(&o, "reorder");
}

#[test]
fn withholding_a_lanes_last_batch_fails_the_manifest() {
    // Hold back each lane-1 batch until the next one arrives, and never send the last:
    // lane 1 then shows no gap, so only the manifest (each lane's last sequence number)
    // can notice the records that never arrived.
    let edit = Arc::new(|_: usize, f: Frame<'_>, held: &mut Vec<Vec<u8>>| match &f {
        Frame::PageBatch(b) if b.lane == 1 => {
            let previous = held.pop();
            held.push(encode_frame(&f));
            previous.into_iter().collect()
        }
        _ => vec![encode_frame(&f)],
    });
    let o = run(Setup::sev(2).forward(Tamper::Frames(edit)));
    assert_safe_failure(&o, "withheld");
    let err = o.target.unwrap_err().chain();
    assert!(err.contains("MANIFEST_MISMATCH"), "{err}");
}

/// A CPU with the named features.
fn cpu_with(vendor: &[u8; 12], signature: u32, names: &[&str]) -> GuestCpu {
    let mut words = [0u32; cpu::FeatureWord::ALL.len()];
    for name in names {
        let f = cpu::feature(name).unwrap();
        let i = cpu::FeatureWord::ALL
            .iter()
            .position(|w| *w == f.word)
            .unwrap();
        words[i] |= 1 << f.bit;
    }
    GuestCpu {
        vendor: *vendor,
        signature,
        features: CpuFeatures::from_words(words),
    }
}

#[test]
fn a_target_whose_cpu_lacks_a_feature_the_guest_was_given_refuses_naming_it() {
    let epyc = cpu_with(
        b"AuthenticAMD",
        0x00a1_0f11,
        &["sse2", "aes", "pclmulqdq", "avx2", "avx512f", "vaes"],
    );
    let xeon_without_avx512 = cpu_with(
        b"GenuineIntel",
        0x0005_0657,
        &["sse2", "aes", "pclmulqdq", "avx2", "vaes", "sha_ni"],
    );
    for setup in [Setup::plain(), Setup::sev(2)] {
        let sev = setup.sev;
        let o = run(Setup {
            source_cpu: Some(epyc),
            target_cpu: Some(xeon_without_avx512),
            ..setup
        });
        assert_safe_failure(&o, "cpu");
        assert_eq!(o.progress.pages, 0, "refused before any page moved");
        match &o.target {
            Err(MigrationError::Cpu(m)) => assert_eq!(m.missing, ["avx512f"]),
            other => panic!("sev {sev}: {other:?}"),
        }
        match &o.source {
            Err(MigrationError::Refused { code, reason }) => {
                assert_eq!(*code, FailureCode::Incompatible);
                assert!(
                    reason.contains("the target CPU (GenuineIntel family 6 model 85 stepping 7) lacks avx512f, which the guest was given on the source (AuthenticAMD family 25 model 17 stepping 1)"),
                    "{reason}"
                );
            }
            other => panic!("sev {sev}: {other:?}"),
        }
    }

    // Another vendor with every feature the guest has, or a source that does not say:
    // the guest moves.
    for (source_cpu, target_cpu) in [
        (Some(xeon_without_avx512), Some(epyc_with_sha(epyc))),
        (None, Some(xeon_without_avx512)),
        (Some(epyc), None),
    ] {
        let o = run(Setup {
            source_cpu,
            target_cpu,
            ..Setup::sev(1)
        });
        o.source.as_ref().unwrap();
        assert!(o.dst.ran.is_some());
    }
}

fn epyc_with_sha(c: GuestCpu) -> GuestCpu {
    let mut words = c.features.words();
    let f = cpu::feature("sha_ni").unwrap();
    words[f.word as usize] |= 1 << f.bit;
    GuestCpu {
        features: CpuFeatures::from_words(words),
        ..c
    }
}

#[test]
fn a_target_with_other_memory_firmware_or_secret_refuses_before_anything_moves() {
    let o = run(Setup {
        target_mem: RAM * 2,
        ..Setup::plain()
    });
    assert_safe_failure(&o, "memory size");
    assert!(
        matches!(&o.source, Err(MigrationError::Refused { .. })),
        "{:?}",
        o.source
    );
    assert!(o.source.as_ref().unwrap_err().to_string().contains("RAM"));
    assert_eq!(o.progress.pages, 0);

    // No secret: the target's helper cannot answer the key share.
    let o = run(Setup {
        target_secret: None,
        ..Setup::sev(1)
    });
    assert_safe_failure(&o, "no secret");
    let msg = o.source.as_ref().unwrap_err().chain();
    assert!(msg.contains("NO_SECRET"), "{msg}");
    assert!(
        matches!(
            o.source,
            Err(MigrationError::Aborted {
                code: FailureCode::NotReady,
                ..
            })
        ),
        "{msg}"
    );
    assert_eq!(o.progress.pages, 0);

    // Another secret or another firmware image: the handshake MACs do not verify.
    for (what, setup) in [
        (
            "other secret",
            Setup {
                target_secret: Some([0x11; 32]),
                ..Setup::sev(1)
            },
        ),
        (
            "other firmware",
            Setup {
                target_firmware: [8; 32],
                ..Setup::sev(1)
            },
        ),
    ] {
        let o = run(setup);
        assert_safe_failure(&o, what);
        let msg = o.source.as_ref().unwrap_err().chain();
        assert!(msg.contains("BAD_PEER"), "{what}: {msg}");
        assert_eq!(o.progress.pages, 0, "{what}");
    }
}

#[test]
fn a_target_that_vanishes_leaves_the_source_running() {
    let edit = Arc::new(|i: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| {
        // Forward the Hello and a few frames, then stop relaying entirely.
        if i > 5 {
            return vec![];
        }
        vec![encode_frame(&f)]
    });
    let o = run(Setup::plain().forward(Tamper::Frames(edit.clone())));
    assert_safe_failure(&o, "vanished");
    let o = run(Setup::sev(1).forward(Tamper::Frames(edit)));
    assert_safe_failure(&o, "vanished (SEV)");
}

#[test]
fn the_target_rejects_frames_that_break_the_rules_for_its_guest() {
    // A plain page for a private page of an SEV guest.
    let edit = Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
        Frame::PlainPages(p) => {
            let mut p = p.clone();
            for page in &mut p.pages {
                page.gpa = 5 * 4096;
            }
            p.pages.truncate(1);
            vec![encode_frame(&Frame::PlainPages(p))]
        }
        _ => vec![encode_frame(&f)],
    });
    let o = run(Setup::sev(1).forward(Tamper::Frames(edit)));
    assert_safe_failure(&o, "plain private page");
    assert!(o.target.unwrap_err().to_string().contains("in the clear"));
}

// ---- the attacker's kit: recordings, forged state, lost commits -----------------------

/// Feeds a recorded stream to a fresh target (with the same migration secret) and
/// returns what it did.
fn replay_to_fresh_target(
    stream: Vec<u8>,
    lanes: usize,
) -> (Result<Received, MigrationError>, FakeTarget) {
    let (dst_ram, mut opener) = target_helper(Some(MIGRATION_SECRET), [9; 32], lanes);
    let (mut feed, dst_sock) = UnixStream::pair().unwrap();
    dst_sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let writer = std::thread::spawn(move || {
        let _ = feed.write_all(&stream);
        let _ = feed.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = feed.read_to_end(&mut sink);
    });
    let mut dst = FakeTarget {
        ram: dst_ram,
        sev: true,
        mem_size: RAM,
        shared: BTreeSet::new(),
        ran: None,
        kept_token: None,
        cpu: None,
    };
    let progress = Mutex::new(Progress::default());
    let r = receive(
        dst_sock.try_clone().unwrap(),
        dst_sock,
        &mut dst,
        Some(&mut opener as &mut dyn Opener),
        &progress,
    );
    let _ = writer.join();
    (r, dst)
}

/// Failed before the fix (the recording made a fresh target run the guest).
#[test]
fn a_recorded_migration_replayed_to_a_fresh_target_never_runs_there() {
    let o = run(Setup::sev(1));
    o.target.as_ref().unwrap();
    let (r, dst) = replay_to_fresh_target(o.stream.clone(), 1);
    assert!(dst.ran.is_none(), "the recording cloned the guest");
    let err = r.unwrap_err().chain();
    assert!(err.contains("BAD_PEER"), "{err}");
}

/// Failed before the fix (the target ran with host bytes in the private canary page).
#[test]
fn a_private_page_redeclared_shared_and_sent_in_the_clear_is_refused() {
    // In the last round the host declares the canary page (private, already imported)
    // shared and sends its own bytes for it.
    let forged = [0x66u8; PAGE_SIZE];
    let shared = crate::frames::SharedRanges {
        ranges: vec![
            crate::frames::SharedRange {
                gpa: SHARED_PAGE,
                pages: 1,
            },
            crate::frames::SharedRange {
                gpa: 5 * 4096,
                pages: 1,
            },
        ],
    };
    let plain = crate::frames::PlainPages {
        round: 99,
        pages: vec![crate::frames::PlainPage {
            gpa: 5 * 4096,
            data: crate::frames::PageData::Bytes(&forged),
        }],
    };
    let frames = [
        encode_frame(&Frame::SharedRanges(shared)),
        encode_frame(&Frame::PlainPages(plain.clone())),
    ];
    // With the SharedRanges frame, and without it.
    for skip in [0, 1] {
        let inject: Vec<Vec<u8>> = frames[skip..].to_vec();
        let edit = Arc::new(
            move |_: usize, f: Frame<'_>, held: &mut Vec<Vec<u8>>| match &f {
                Frame::DeviceState(_) if held.is_empty() => {
                    held.push(vec![]);
                    let mut out = inject.clone();
                    out.push(encode_frame(&f));
                    out
                }
                _ => vec![encode_frame(&f)],
            },
        );
        let o = run(Setup::sev(1).forward(Tamper::Frames(edit)));
        assert_safe_failure(&o, "re-declared shared");
        let page = &o.dst_ram.lock().unwrap()[5 * 4096..6 * 4096];
        assert_ne!(page, forged, "the forged bytes landed in the private page");
    }
}

#[test]
fn a_forged_or_replayed_shared_list_is_refused() {
    // The host swaps the last round's sealed list for the first round's (which it
    // recorded): the sequence numbers give it away.
    let edit = Arc::new(|_: usize, f: Frame<'_>, held: &mut Vec<Vec<u8>>| match &f {
        Frame::SharedList(_) if held.is_empty() => {
            held.push(encode_frame(&f));
            vec![encode_frame(&f)]
        }
        Frame::SharedList(_) => vec![held[0].clone()],
        _ => vec![encode_frame(&f)],
    });
    let o = run(Setup::sev(1).forward(Tamper::Frames(edit)));
    assert_safe_failure(&o, "replayed list");
    // The host edits a list to share the canary page: the tag gives it away.
    let edit = Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
        Frame::SharedList(l) => {
            let mut rec = l.record.to_vec();
            let at = record::HEADER_SIZE + 8;
            rec[at..at + 8].copy_from_slice(&(5u64 * 4096).to_le_bytes());
            vec![encode_frame(&Frame::SharedList(
                crate::frames::SharedList { record: &rec },
            ))]
        }
        _ => vec![encode_frame(&f)],
    });
    let o = run(Setup::sev(1).forward(Tamper::Frames(edit)));
    assert_safe_failure(&o, "edited list");
    let err = o.target.unwrap_err().chain();
    assert!(err.contains("AUTH_FAILED"), "{err}");
}

fn tamper_test(what: &str, edit: Arc<FrameEdit>) -> Outcome {
    let o = run(Setup::sev(1).forward(Tamper::Frames(edit)));
    assert_safe_failure(&o, what);
    o
}

/// Failed before the fix (the target ran with the host's registers).
#[test]
fn tampered_vcpu_state_is_refused() {
    // Changed bytes, and vCPU 1's (authentic) state passed as vCPU 0's.
    tamper_test(
        "vCPU state",
        Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
            Frame::VcpuState(v) if v.index == 0 => {
                let mut blob = v.blob.to_vec();
                blob[record::HEADER_SIZE] ^= 1;
                vec![encode_frame(&Frame::VcpuState(crate::frames::VcpuState {
                    index: 0,
                    blob: &blob,
                }))]
            }
            _ => vec![encode_frame(&f)],
        }),
    );
    tamper_test(
        "vCPU state swapped",
        Arc::new(|_: usize, f: Frame<'_>, held: &mut Vec<Vec<u8>>| match &f {
            Frame::VcpuState(v) if v.index == 0 => {
                held.push(v.blob.to_vec());
                vec![]
            }
            Frame::VcpuState(v) => vec![
                encode_frame(&Frame::VcpuState(crate::frames::VcpuState {
                    index: 0,
                    blob: v.blob,
                })),
                encode_frame(&Frame::VcpuState(crate::frames::VcpuState {
                    index: 1,
                    blob: &held[0],
                })),
            ],
            _ => vec![encode_frame(&f)],
        }),
    );
}

/// Failed before the fix (the target ran with the host's device state).
#[test]
fn tampered_device_state_is_refused() {
    tamper_test(
        "device state",
        Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
            Frame::DeviceState(d) => {
                let mut blob = d.blob.to_vec();
                blob[record::HEADER_SIZE + 1] ^= 1;
                vec![encode_frame(&Frame::DeviceState(
                    crate::frames::DeviceState { blob: &blob },
                ))]
            }
            _ => vec![encode_frame(&f)],
        }),
    );
}

/// Failed before the fix (the target accepted a Hello the source never sent).
#[test]
fn a_tampered_hello_is_refused() {
    // An optional field the target does not know: it skips it, but the Hello is not the
    // one the source sent, so the two helpers' transcripts differ.
    let o = tamper_test(
        "Hello",
        Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
            Frame::Hello(_) => {
                let mut bytes = encode_frame(&f);
                bytes.extend_from_slice(&[0x42, 0x80, 1, 0, 0x42]);
                let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) + 5;
                bytes[8..12].copy_from_slice(&len.to_le_bytes());
                vec![bytes]
            }
            _ => vec![encode_frame(&f)],
        }),
    );
    let err = o.source.unwrap_err().chain();
    assert!(err.contains("BAD_PEER"), "{err}");
    assert_eq!(o.progress.pages, 0, "nothing moved");
}

/// Drops Done (the commit) and closes the forward path.
fn lose_the_commit() -> Arc<FrameEdit> {
    Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
        Frame::Done(_) => vec![Vec::new()],
        _ => vec![encode_frame(&f)],
    })
}

/// The lost commit: the source committed (flagged, stopped, its commit kept), the target
/// verified everything and waits for the commit. Neither side gave up on its own.
fn lost_commit() -> (Outcome, PendingCommit) {
    let mut o = run(Setup::sev(1).forward(Tamper::Frames(lose_the_commit())));
    let transcript = match &o.source {
        Err(MigrationError::Committed { transcript, .. }) => *transcript,
        other => panic!("the source should wait for an abort: {other:?}"),
    };
    assert_eq!(o.progress.status, Status::AwaitingAbort);
    assert!(
        o.src.paused && !o.src.resumed,
        "the source guest must stay stopped"
    );
    assert!(o.sealer.guest.migrated_out());
    let (saved, _) = o
        .src
        .saved_commit
        .expect("the commit was kept before it was sent");
    assert_eq!(saved, transcript);
    assert!(o.dst.ran.is_none());
    assert!(
        o.dst.kept_token.is_none(),
        "the target must not give up on its own"
    );
    let pending = match std::mem::replace(&mut o.target, Ok(Received::Running)) {
        Ok(Received::AwaitingCommit(p)) => p,
        other => panic!("the target should wait for the commit: {other:?}"),
    };
    assert_eq!(pending.transcript(), transcript);
    (o, pending)
}

#[test]
fn a_lost_commit_is_finished_on_the_target_from_the_sources_commit_file() {
    let (mut o, pending) = lost_commit();
    let (_, record) = o.src.saved_commit.unwrap();
    // A record of the wrong session (one flipped byte) is refused and the target still
    // waits; the right one runs the guest there, whole.
    let mut wrong = record;
    wrong[20] ^= 1;
    let progress = Mutex::new(Progress::default());
    let (pending, err) = *pending
        .commit(&wrong, &mut o.dst, &mut o.opener, &progress)
        .unwrap_err();
    assert!(matches!(err, MigrationError::Helper(_)), "{err:?}");
    let pending = pending.expect("still waiting");
    assert!(o.dst.ran.is_none());
    pending
        .commit(&record, &mut o.dst, &mut o.opener, &progress)
        .unwrap();
    assert_eq!(progress.lock().unwrap().status, Status::Completed);
    let (vcpus, device) = o.dst.ran.clone().expect("the target runs the guest");
    assert_eq!(vcpus, [b"vcpu0".to_vec(), b"vcpu1".to_vec()]);
    assert_eq!(device, b"devices");
    migratable_equal(&o);
    // The source stays stopped: only an abort of the session could release it, and a
    // target that committed never gives one.
    assert!(o.opener.ok(0, abort_request(), &[], &[]).is_err());
    assert!(o.sealer.guest.migrated_out());
}

fn abort_request() -> Request {
    Request {
        op: Op::ABORT.0,
        ..Default::default()
    }
}

#[test]
fn a_lost_commit_is_undone_with_the_targets_abort_token() {
    let (mut o, pending) = lost_commit();
    let progress = Mutex::new(Progress::default());
    let token = pending.abort(&mut o.dst, &mut o.opener, &progress).unwrap();
    let (kept_for, kept) = o
        .dst
        .kept_token
        .expect("the token was kept for the operator");
    assert_eq!(kept, token);
    assert_eq!(Some(kept_for), o.progress.transcript);
    // The source's helper checks it; the guest may run there again.
    o.sealer.release(&token).unwrap();
    assert!(!o.sealer.guest.migrated_out());
    // The target that aborted never commits, whatever comes.
    let (_, record) = o.src.saved_commit.unwrap();
    assert!(o.opener.ok(0, commit_request(), &[], &record).is_err());
    assert!(o.dst.ran.is_none());
}

fn commit_request() -> Request {
    Request {
        op: Op::COMMIT.0,
        bytes: COMMIT_RECORD_SIZE as u32,
        ..Default::default()
    }
}

/// Drops Done (the commit) and keeps the connection: the source waits for an Ack.
fn swallow_the_commit() -> Arc<FrameEdit> {
    Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
        Frame::Done(_) => vec![],
        _ => vec![encode_frame(&f)],
    })
}

#[test]
fn migrate_cancel_after_the_commit_asks_the_target_to_abort_and_its_token_releases_the_source() {
    let o = run(Setup {
        cancel_after_commit: true,
        ..Setup::sev(1).forward(Tamper::Frames(swallow_the_commit()))
    });
    assert!(
        matches!(o.source, Err(MigrationError::Cancelled)),
        "{:?}",
        o.source
    );
    assert_eq!(o.progress.status, Status::Cancelled);
    assert!(
        o.src.resumed && !o.src.paused,
        "the source guest runs again"
    );
    assert!(!o.sealer.guest.migrated_out());
    assert!(o.target.is_err());
    assert!(o.dst.ran.is_none());
    assert!(o.dst.kept_token.is_some(), "the target kept its token too");
}

#[test]
fn a_commit_that_cannot_be_kept_is_not_sent_and_the_source_runs_again() {
    let o = run(Setup {
        fail_save: true,
        ..Setup::sev(1)
    });
    assert_safe_failure(&o, "unsaved commit");
    let err = o.source.as_ref().unwrap_err().chain();
    assert!(err.contains("no space left"), "{err}");
    assert!(o.src.resumed);
    assert!(
        !batch_kinds(&o.stream).is_empty() && !o.stream.is_empty(),
        "the migration got as far as the commit"
    );
    let done = frames_of(&o.stream)
        .into_iter()
        .any(|k| k == crate::frames::MessageType::Done);
    assert!(!done, "the commit left without being kept");
}

/// The types of the frames in a capture.
fn frames_of(stream: &[u8]) -> Vec<crate::frames::MessageType> {
    let mut reader = FrameReader::new(stream, Incoming::FromSource);
    let mut buf = vec![0u8; MAX_PAYLOAD_LEN];
    let mut out = Vec::new();
    while let Ok(f) = reader.read_frame(&mut buf) {
        out.push(f.message_type());
    }
    out
}

#[test]
fn a_lost_commit_and_a_withheld_abort_keep_the_source_stopped_until_the_owner_releases_it() {
    let drop_token = Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
        Frame::AbortToken(_) => vec![],
        _ => vec![encode_frame(&f)],
    });
    let o = run(Setup::sev(1)
        .forward(Tamper::Frames(lose_the_commit()))
        .back(drop_token));
    assert!(o.dst.ran.is_none(), "the target never got the commit");
    let transcript = match &o.source {
        Err(MigrationError::Committed { transcript, .. }) => *transcript,
        other => panic!("{other:?}"),
    };
    // Stopped, flagged, and says so.
    assert!(o.src.paused && !o.src.resumed);
    assert!(o.sealer.guest.migrated_out());
    assert_eq!(o.progress.status, Status::AwaitingAbort);
    assert_eq!(o.progress.transcript, Some(transcript));
    // A forged owner token (another secret) changes nothing; the real one releases it.
    let release = |token: [u8; 32]| {
        o.sealer
            .ok(
                0,
                Request {
                    op: Op::RELEASE.0,
                    kind: Origin::OWNER.0,
                    bytes: 32,
                    ..Default::default()
                },
                &[],
                &token,
            )
            .map(drop)
    };
    let forged = keys::owner_abort_token(&[0x11; 32], &transcript);
    assert!(release(forged)
        .unwrap_err()
        .to_string()
        .contains("BAD_TOKEN"));
    assert!(o.sealer.guest.migrated_out());
    release(keys::owner_abort_token(&MIGRATION_SECRET, &transcript)).unwrap();
    assert!(!o.sealer.guest.migrated_out());
}

#[test]
fn a_forged_abort_token_does_not_release_a_committed_source() {
    // The network swaps the commit for an Abort (the target gives the session up and
    // sends its token), then swaps the token for a forged one.
    let abort_instead = Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
        Frame::Done(_) => vec![encode_frame(&Frame::Abort(crate::frames::Abort {
            code: FailureCode::Cancelled,
            reason: "forged".into(),
        }))],
        _ => vec![encode_frame(&f)],
    });
    let forge = Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
        Frame::AbortToken(_) => vec![encode_frame(&Frame::AbortToken(AbortToken {
            tag: [0x42; 32],
        }))],
        _ => vec![encode_frame(&f)],
    });
    let o = run(Setup::sev(1)
        .forward(Tamper::Frames(abort_instead))
        .back(forge));
    assert!(o.dst.ran.is_none());
    let err = o.source.as_ref().unwrap_err();
    assert!(matches!(err, MigrationError::Committed { .. }), "{err:?}");
    assert!(err.chain().contains("BAD_TOKEN"), "{}", err.chain());
    assert!(o.src.paused && o.sealer.guest.migrated_out());
}

#[test]
fn a_forged_ready_makes_the_source_commit_and_the_targets_abort_releases_it() {
    // The host tells the source "Ready" right after the key agreement, and spoils a
    // page record: the target refuses it and aborts; the committed source is released
    // by that abort.
    let early_ready = Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
        Frame::KeyReply(_) => vec![encode_frame(&f), encode_frame(&Frame::Ready(Ready))],
        _ => vec![encode_frame(&f)],
    });
    let spoil = Arc::new(|_: usize, f: Frame<'_>, held: &mut Vec<Vec<u8>>| match &f {
        Frame::PageBatch(b) if b.round > 1 && held.is_empty() => {
            held.push(vec![]);
            let mut records = b.records.to_vec();
            records[record::HEADER_SIZE + 7] ^= 1;
            vec![encode_frame(&Frame::PageBatch(crate::frames::PageBatch {
                records: &records,
                ..*b
            }))]
        }
        _ => vec![encode_frame(&f)],
    });
    let o = run(Setup::sev(1)
        .forward(Tamper::Frames(spoil))
        .back(early_ready));
    assert!(o.dst.ran.is_none());
    assert!(o.source.is_err());
    // Whether the source committed (it read the forged Ready) or not (it read the
    // target's Abort first), it runs again and is not flagged.
    assert!(!o.src.paused, "{:?}", o.source);
    assert!(!o.sealer.guest.migrated_out());
}

#[test]
fn a_version_1_sev_source_is_refused_before_anything_moves() {
    let (src_sock, dst_sock) = UnixStream::pair().unwrap();
    dst_sock
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut h = hello(true, 1);
    h.version = 1;
    h.helper_nonce = [7; 16];
    let mut wire = Vec::new();
    h.encode(&mut wire).unwrap();
    (&src_sock).write_all(&wire).unwrap();
    let (dst_ram, mut opener) = target_helper(Some(MIGRATION_SECRET), [9; 32], 1);
    let mut dst = FakeTarget {
        ram: dst_ram,
        sev: true,
        mem_size: RAM,
        shared: BTreeSet::new(),
        ran: None,
        kept_token: None,
        cpu: None,
    };
    let progress = Mutex::new(Progress::default());
    let r = receive(
        dst_sock.try_clone().unwrap(),
        dst_sock,
        &mut dst,
        Some(&mut opener as &mut dyn Opener),
        &progress,
    );
    assert!(
        matches!(
            r,
            Err(MigrationError::Refused {
                code: FailureCode::UnsupportedVersion,
                ..
            })
        ),
        "{r:?}"
    );
}
