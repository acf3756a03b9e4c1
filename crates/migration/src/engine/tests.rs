//! The engine end to end without KVM: fake VMs over plain memory, the real helper logic
//! of `mirror-helper` as sealer and opener, a socket pair, and a relay in between that
//! can tamper with the stream the way a hostile host could.

use super::{
    source::{migrate, RecordSink, Sealed, Sealer, SourceOptions, SourceVm},
    target::{receive, LocalGuest, Opener, TargetVm},
    MigrationError, Progress, Status,
};
use crate::{
    codec::{FrameReader, Incoming},
    frames::{Frame, GpaRange, GuestMode, Hello, MAX_PAYLOAD_LEN, PROTOCOL_VERSION},
};
use helper_abi::{
    mailbox::{
        Op, Request, Response, Role, Status as HStatus, GPA_LIST_OFFSET, REQUEST_OFFSET,
        RESPONSE_OFFSET,
    },
    record::{MANIFEST_RECORD_SIZE, PAGE_RECORD_SIZE},
    MIGRATION_SECRET_GUID, PAGE_SIZE,
};
use mirror_helper::{
    engine::Entropy, secret::SECRET_TABLE_GUID, shared_list::SharedList, GuestMemory, Helper,
    HelperLayout, LaneState, Mailbox, SessionState,
};
use std::{
    cell::RefCell,
    collections::BTreeSet,
    io::{Read, Write},
    os::unix::net::UnixStream,
    sync::{atomic::AtomicBool, atomic::AtomicU32, Arc, Mutex},
    time::Duration,
};

const PAGES: u64 = 96;
const RAM: u64 = PAGES * PAGE_SIZE as u64;
const REGION: (u64, u64) = (64 * 4096, 16 * 4096);
const SHARED_LIST: u64 = 4096;
const SECRET: (u64, u64) = (2 * 4096, 4096);
const SHARED_PAGE: u64 = 3 * 4096;
const CANARY: &[u8; 16] = b"PRIVATE-CANARY!!";

type Ram = Arc<Mutex<Vec<u8>>>;

struct Mem(Ram);

impl GuestMemory for Mem {
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) {
        out.copy_from_slice(&self.0.lock().unwrap()[gpa as usize..][..PAGE_SIZE]);
    }
    fn write_page(&self, gpa: u64, data: &[u8; PAGE_SIZE]) {
        self.0.lock().unwrap()[gpa as usize..][..PAGE_SIZE].copy_from_slice(data);
    }
}

struct Windows {
    control: RefCell<Vec<u8>>,
    windows: RefCell<Vec<Vec<u8>>>,
}

impl Mailbox for Windows {
    fn read_control(&self, at: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.control.borrow()[at..at + out.len()]);
    }
    fn write_control(&self, at: usize, data: &[u8]) {
        self.control.borrow_mut()[at..at + data.len()].copy_from_slice(data);
    }
    fn read_window(&self, w: usize, at: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.windows.borrow()[w][at..at + out.len()]);
    }
    fn write_window(&self, w: usize, at: usize, data: &[u8]) {
        self.windows.borrow_mut()[w][at..at + data.len()].copy_from_slice(data);
    }
    fn windows(&self) -> usize {
        1
    }
    fn window_size(&self) -> usize {
        32 * PAGE_RECORD_SIZE
    }
}

struct Rng(u8);

impl Entropy for Rng {
    fn fill(&mut self, out: &mut [u8]) -> bool {
        self.0 = self.0.wrapping_add(1);
        out.fill(self.0);
        true
    }
}

/// The real helper over fake guest memory, with one mailbox per lane.
struct FakeHelper {
    mem: Mem,
    layout: HelperLayout,
    session: SessionState,
    versions: Vec<AtomicU32>,
    lanes: Vec<(LaneState, Windows)>,
    /// Sealed batches not yet sent, oldest first.
    done: std::collections::VecDeque<(Sealed, Vec<u8>)>,
}

impl FakeHelper {
    fn new(ram: Ram, lanes: usize) -> FakeHelper {
        FakeHelper {
            mem: Mem(ram),
            layout: HelperLayout::new(&[(0, RAM)], REGION, SHARED_LIST, SECRET).unwrap(),
            session: SessionState::new(),
            versions: (0..PAGES).map(|_| AtomicU32::new(0)).collect(),
            lanes: (0..lanes)
                .map(|i| {
                    (
                        LaneState::new(i as u8),
                        Windows {
                            control: RefCell::new(vec![0; PAGE_SIZE]),
                            windows: RefCell::new(vec![vec![0; 32 * PAGE_RECORD_SIZE]]),
                        },
                    )
                })
                .collect(),
            done: Default::default(),
        }
    }

    fn call(&mut self, lane: usize, req: Request, gpas: &[u64]) -> Response {
        let (state, mailbox) = &mut self.lanes[lane];
        mailbox.write_control(REQUEST_OFFSET, &req.encode());
        let list: Vec<u8> = gpas.iter().flat_map(|g| g.to_le_bytes()).collect();
        mailbox.write_control(GPA_LIST_OFFSET, &list);
        Helper {
            layout: &self.layout,
            memory: &self.mem,
            session: &self.session,
            versions: &self.versions,
            lane: state,
            entropy: Rng(lane as u8),
            region: REGION,
            max_batch: 32,
        }
        .serve(mailbox);
        let mut raw = [0u8; Response::SIZE];
        mailbox.read_control(RESPONSE_OFFSET, &mut raw);
        Response::decode(&raw)
    }

    fn ok(&mut self, lane: usize, req: Request, gpas: &[u64]) -> Result<Response, String> {
        let r = self.call(lane, req, gpas);
        match r.status() {
            HStatus::OK => Ok(r),
            s => Err(format!("helper: {s} (item {})", r.index)),
        }
    }
}

impl Sealer for FakeHelper {
    fn lanes(&self) -> usize {
        self.lanes.len()
    }
    fn max_batch(&self) -> usize {
        32
    }
    fn depth(&self) -> usize {
        2
    }
    fn submit(&mut self, lane: usize, round: u32, gpas: &[u64]) -> Result<(), String> {
        let r = self.ok(
            lane,
            Request {
                op: Op::EXPORT.0,
                count: gpas.len() as u32,
                round,
                ..Default::default()
            },
            gpas,
        )?;
        let mut records = vec![0u8; r.bytes as usize];
        self.lanes[lane].1.read_window(0, 0, &mut records);
        let sealed = Sealed {
            lane,
            round,
            count: r.count,
            bytes: records.len(),
            window: 0,
        };
        self.done.push_back((sealed, records));
        Ok(())
    }
    fn wait(&mut self) -> Result<Sealed, String> {
        self.done
            .front()
            .map(|d| d.0)
            .ok_or_else(|| "nothing in flight".to_string())
    }
    fn send(&mut self, batch: &Sealed, out: &mut dyn RecordSink) -> std::io::Result<()> {
        let (sealed, records) = self.done.pop_front().expect("send after wait");
        assert_eq!(&sealed, batch);
        out.write_all(&records)
    }
    fn manifest(&mut self, round: u32) -> Result<[u8; MANIFEST_RECORD_SIZE], String> {
        self.ok(
            0,
            Request {
                op: Op::FINISH.0,
                round,
                ..Default::default()
            },
            &[],
        )?;
        let mut rec = [0u8; MANIFEST_RECORD_SIZE];
        self.lanes[0].1.read_window(0, 0, &mut rec);
        Ok(rec)
    }
}

impl Opener for FakeHelper {
    fn lanes(&self) -> usize {
        self.lanes.len()
    }
    fn keys(&mut self, session_id: &[u8; 16], nonce: &[u8; 16]) -> Result<(), String> {
        self.ok(
            0,
            Request {
                op: Op::KEYS.0,
                role: Role::TARGET.0,
                session_id: *session_id,
                peer_nonce: *nonce,
                ..Default::default()
            },
            &[],
        )
        .map(|_| ())
    }
    fn submit(&mut self, lane: usize, records: &[u8]) -> Result<(), String> {
        let count = helper_abi::record::walk(records, records.len()).count() as u32;
        self.lanes[lane].1.write_window(0, 0, records);
        self.ok(
            lane,
            Request {
                op: Op::IMPORT.0,
                count,
                bytes: records.len() as u32,
                ..Default::default()
            },
            &[],
        )
        .map(|_| ())
    }
    fn drain(&mut self) -> Result<(), String> {
        Ok(())
    }
    fn verify_manifest(
        &mut self,
        lane: usize,
        record: &[u8; MANIFEST_RECORD_SIZE],
    ) -> Result<(), String> {
        self.lanes[lane].1.write_window(0, 0, record);
        self.ok(
            lane,
            Request {
                op: Op::FINISH.0,
                bytes: record.len() as u32,
                ..Default::default()
            },
            &[],
        )
        .map(|_| ())
    }
}

fn secret_table(secret: Option<[u8; 32]>) -> Vec<u8> {
    let mut t = SECRET_TABLE_GUID.to_vec();
    t.extend_from_slice(&[0; 4]);
    if let Some(s) = secret {
        t.extend_from_slice(&MIGRATION_SECRET_GUID);
        t.extend_from_slice(&52u32.to_le_bytes());
        t.extend_from_slice(&s);
    }
    let len = t.len() as u32;
    t[16..20].copy_from_slice(&len.to_le_bytes());
    t
}

/// Guest RAM: page p holds a pattern of p, page 5 a canary, page 3 is shared.
fn guest_ram(secret: Option<[u8; 32]>, fill: bool) -> Ram {
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
    let mut list = SharedList::new();
    list.set(SHARED_PAGE, 1, true).unwrap();
    let mut page = [0u8; PAGE_SIZE];
    list.encode(&mut page);
    mem[SHARED_LIST as usize..][..PAGE_SIZE].copy_from_slice(&page);
    let t = secret_table(secret);
    mem[SECRET.0 as usize..][..PAGE_SIZE].fill(0);
    mem[SECRET.0 as usize..][..t.len()].copy_from_slice(&t);
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
    fn is_private(&self, gpa: u64) -> bool {
        self.sev && gpa != SHARED_PAGE
    }
    fn shared_ranges(&self) -> Vec<(u64, u64)> {
        vec![(SHARED_PAGE, 1)]
    }
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) -> Result<(), String> {
        if self.sev && self.is_private(gpa) {
            return Err(format!("the host must not read private page {gpa:#x}"));
        }
        out.copy_from_slice(&self.ram.lock().unwrap()[gpa as usize..][..PAGE_SIZE]);
        Ok(())
    }
    fn start_dirty_log(&mut self) -> Result<(), String> {
        self.logging = true;
        Ok(())
    }
    fn take_dirty(&mut self) -> Result<Vec<u64>, String> {
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
    fn pause(&mut self) -> Result<(), String> {
        self.paused = true;
        Ok(())
    }
    fn resume(&mut self) {
        self.paused = false;
        self.resumed = true;
    }
    fn device_state(&mut self) -> Result<Vec<u8>, String> {
        Ok(b"devices".to_vec())
    }
    fn vcpu_states(&mut self) -> Result<Vec<Vec<u8>>, String> {
        Ok(vec![b"vcpu0".to_vec(), b"vcpu1".to_vec()])
    }
}

struct FakeTarget {
    ram: Ram,
    sev: bool,
    mem_size: u64,
    shared: BTreeSet<u64>,
    ran: Option<(Vec<Vec<u8>>, Vec<u8>)>,
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
        }
    }
    fn set_shared(&mut self, ranges: &[(u64, u64)]) -> Result<(), String> {
        self.shared = ranges
            .iter()
            .flat_map(|&(g, n)| (0..n).map(move |i| g + i * 4096))
            .collect();
        Ok(())
    }
    fn is_shared(&self, gpa: u64) -> bool {
        !self.sev || self.shared.contains(&gpa)
    }
    fn write_page(&mut self, gpa: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), String> {
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
    fn finish(&mut self, vcpus: Vec<Vec<u8>>, device: Vec<u8>) -> Result<(), String> {
        self.ran = Some((vcpus, device));
        Ok(())
    }
}

fn hello(sev: bool, lanes: u16, nonce: [u8; 16]) -> Hello {
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
        helper_nonce: if sev { nonce } else { [0; 16] },
        page_size: 4096,
        vcpus: 2,
    }
}

/// Called for each frame (index, frame, scratch) and returns the encoded frames to
/// forward in its place.
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

struct Outcome {
    source: Result<(), MigrationError>,
    target: Result<(), MigrationError>,
    src: FakeSource,
    dst: FakeTarget,
    dst_ram: Ram,
    stream: Vec<u8>,
    progress: Progress,
}

fn encode_frame(f: &Frame<'_>) -> Vec<u8> {
    let mut v = Vec::new();
    f.encode(&mut v).unwrap();
    v
}

fn relay(mut from: UnixStream, mut to: UnixStream, tamper: Tamper, capture: Arc<Mutex<Vec<u8>>>) {
    match tamper {
        Tamper::Frames(edit) => {
            let mut reader = FrameReader::new(from, Incoming::FromSource);
            let mut buf = vec![0u8; MAX_PAYLOAD_LEN];
            let mut held = Vec::new();
            let mut i = 0;
            while let Ok(frame) = reader.read_frame(&mut buf) {
                for bytes in edit(i, frame, &mut held) {
                    capture.lock().unwrap().extend_from_slice(&bytes);
                    if to.write_all(&bytes).is_err() {
                        return;
                    }
                }
                i += 1;
            }
        }
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

fn run(
    sev: bool,
    lanes: usize,
    target_secret: Option<[u8; 32]>,
    target_mem: u64,
    tamper: Tamper,
) -> Outcome {
    let secret = Some([0x5e; 32]);
    let src_ram = guest_ram(secret, true);
    let dst_ram = guest_ram(target_secret, false);
    let (src_sock, relay_in) = UnixStream::pair().unwrap();
    let (relay_out, dst_sock) = UnixStream::pair().unwrap();
    for s in [&src_sock, &dst_sock] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let capture = Arc::new(Mutex::new(Vec::new()));
    // Return path: raw.
    let back = {
        let (mut from, mut to) = (
            relay_out.try_clone().unwrap(),
            relay_in.try_clone().unwrap(),
        );
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Write);
        })
    };
    let fwd = {
        let cap = capture.clone();
        std::thread::spawn(move || relay(relay_in, relay_out, tamper, cap))
    };
    let dst_handle = {
        let ram = dst_ram.clone();
        std::thread::spawn(move || {
            let mut dst = FakeTarget {
                ram: ram.clone(),
                sev,
                mem_size: target_mem,
                shared: BTreeSet::new(),
                ran: None,
            };
            let mut opener = FakeHelper::new(ram, lanes);
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
            (r, dst)
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
    };
    let mut sealer = FakeHelper::new(src_ram, lanes);
    let nonce = if sev {
        sealer
            .ok(
                0,
                Request {
                    op: Op::KEYS.0,
                    role: Role::SOURCE.0,
                    session_id: [0x42; 16],
                    ..Default::default()
                },
                &[],
            )
            .unwrap()
            .nonce
    } else {
        [0; 16]
    };
    let progress = Mutex::new(Progress::default());
    let options = SourceOptions {
        downtime_limit: Duration::from_millis(0),
        max_rounds: 4,
        batch: 8,
        ..Default::default()
    };
    let source = migrate(
        src_sock.try_clone().unwrap(),
        src_sock,
        &hello(sev, lanes as u16, nonce),
        &mut src,
        if sev {
            Some(&mut sealer as &mut dyn Sealer)
        } else {
            None
        },
        &options,
        &progress,
        &AtomicBool::new(false),
    );
    let (target, dst) = dst_handle.join().unwrap();
    let _ = fwd.join();
    let _ = back.join();
    let stream = capture.lock().unwrap().clone();
    Outcome {
        source,
        target,
        src,
        dst,
        dst_ram,
        stream,
        progress: progress.into_inner().unwrap(),
    }
}

fn assert_safe_failure(o: &Outcome, what: &str) {
    assert!(o.target.is_err(), "{what}: the target accepted");
    assert!(o.dst.ran.is_none(), "{what}: the target ran the guest");
    assert!(o.source.is_err(), "{what}: the source thinks it succeeded");
    assert!(!o.src.paused, "{what}: the source guest was left paused");
    assert!(!o.src.logging, "{what}: dirty logging left on");
}

fn migratable_equal(o: &Outcome) {
    let (a, b) = (o.src.ram.lock().unwrap(), o.dst_ram.lock().unwrap());
    for p in o.src.pages() {
        let r = p as usize..p as usize + PAGE_SIZE;
        assert_eq!(a[r.clone()], b[r], "page {p:#x} differs");
    }
}

#[test]
fn a_plain_guest_migrates_with_every_page_and_its_state() {
    let o = run(false, 1, None, RAM, Tamper::None);
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
fn an_sev_guest_migrates_sealed_and_no_private_plaintext_crosses_the_wire() {
    for lanes in [1, 2] {
        let o = run(true, lanes, Some([0x5e; 32]), RAM, Tamper::None);
        o.source.as_ref().unwrap();
        o.target.as_ref().unwrap();
        migratable_equal(&o);
        assert!(
            !o.stream.windows(CANARY.len()).any(|w| w == CANARY),
            "canary in the stream"
        );
        assert!(
            !o.stream.windows(32).any(|w| w == [0x5e; 32]),
            "migration secret in the stream"
        );
        // The shared page travels in the clear (it is the host's anyway).
        assert!(o.stream.windows(64).any(|w| w == [3u8; 64]));
    }
}

#[test]
fn a_flipped_byte_anywhere_stops_the_migration_or_lands_in_shared_memory() {
    let len = run(true, 2, Some([0x5e; 32]), RAM, Tamper::None)
        .stream
        .len();
    for i in 0..60 {
        let at = if i < 40 {
            i * 7
        } else {
            (len / 20) * (i - 39) - 1
        };
        let o = run(true, 2, Some([0x5e; 32]), RAM, Tamper::FlipByte(at));
        if o.target.is_ok() {
            // The host may write shared pages whenever it likes, so their bytes travel
            // unprotected; every private page must still be exactly the source's.
            let (a, b) = (o.src.ram.lock().unwrap(), o.dst_ram.lock().unwrap());
            for p in o.src.pages().into_iter().filter(|&p| p != SHARED_PAGE) {
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
    let len = run(false, 1, None, RAM, Tamper::None).stream.len();
    for cut in [0, 5, 200, len / 2, len - 1] {
        let o = run(false, 1, None, RAM, Tamper::Truncate(cut));
        assert_safe_failure(&o, &format!("cut at {cut}"));
    }
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
            Frame::PageBatch(b) if b.round == 3 && held.len() == 1 => {
                let old = held[0].clone();
                held.push(vec![]);
                vec![old, bytes]
            }
            _ => vec![bytes],
        }
    });
    let o = run(true, 1, Some([0x5e; 32]), RAM, Tamper::Frames(edit));
    assert_safe_failure(&o, "replay");
    assert!(
        matches!(o.target, Err(MigrationError::Integrity(_))),
        "{:?}",
        o.target.err()
    );
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
    let o = run(true, 1, Some([0x5e; 32]), RAM, Tamper::Frames(edit));
    assert_safe_failure(&o, "reorder");
}

#[test]
fn withholding_a_lanes_last_batch_fails_the_manifest() {
    // Hold back each lane-1 batch until the next one arrives, and never send the last:
    // lane 1 then shows no gap and lane 0 (which signs the manifest) is complete, so only
    // the manifest can notice the pages that never arrived.
    let edit = Arc::new(|_: usize, f: Frame<'_>, held: &mut Vec<Vec<u8>>| match &f {
        Frame::PageBatch(b) if b.lane == 1 => {
            let previous = held.pop();
            held.push(encode_frame(&f));
            previous.into_iter().collect()
        }
        _ => vec![encode_frame(&f)],
    });
    let o = run(true, 2, Some([0x5e; 32]), RAM, Tamper::Frames(edit));
    assert_safe_failure(&o, "withheld");
    let err = o.target.unwrap_err().chain();
    assert!(err.contains("MANIFEST_MISMATCH"), "{err}");
}

#[test]
fn a_target_with_other_memory_or_firmware_or_no_secret_refuses_before_anything_moves() {
    let o = run(false, 1, None, RAM * 2, Tamper::None);
    assert_safe_failure(&o, "memory size");
    assert!(
        matches!(&o.source, Err(MigrationError::Refused { .. })),
        "{:?}",
        o.source
    );
    assert!(o.source.as_ref().unwrap_err().to_string().contains("RAM"));
    assert_eq!(o.progress.pages, 0);

    let o = run(true, 1, None, RAM, Tamper::None);
    assert_safe_failure(&o, "no secret");
    let msg = o.source.as_ref().unwrap_err().chain();
    assert!(msg.contains("NO_SECRET"), "{msg}");
    assert_eq!(msg.matches("refused the migration").count(), 1, "{msg}");

    let o = run(true, 1, Some([0x11; 32]), RAM, Tamper::None);
    assert_safe_failure(&o, "other secret");
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
    let o = run(false, 1, None, RAM, Tamper::Frames(edit));
    assert_safe_failure(&o, "vanished");
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
    let o = run(true, 1, Some([0x5e; 32]), RAM, Tamper::Frames(edit));
    assert_safe_failure(&o, "plain private page");
    assert!(o.target.unwrap_err().to_string().contains("in the clear"));
}

/// Feeds a recorded stream to a fresh target (with the same migration secret) and
/// returns what it did.
fn replay_to_fresh_target(
    stream: Vec<u8>,
    lanes: usize,
) -> (Result<(), MigrationError>, FakeTarget) {
    let dst_ram = guest_ram(Some([0x5e; 32]), false);
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
        ram: dst_ram.clone(),
        sev: true,
        mem_size: RAM,
        shared: BTreeSet::new(),
        ran: None,
    };
    let mut opener = FakeHelper::new(dst_ram, lanes);
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

#[test]
fn a_recorded_migration_replayed_to_a_fresh_target_never_runs_there() {
    let o = run(true, 1, Some([0x5e; 32]), RAM, Tamper::None);
    o.target.as_ref().unwrap();
    let (r, dst) = replay_to_fresh_target(o.stream.clone(), 1);
    assert!(
        r.is_err() && dst.ran.is_none(),
        "the recording cloned the guest"
    );
}

#[test]
fn a_private_page_redeclared_shared_and_sent_in_the_clear_is_refused() {
    // In the last round the host declares the canary page (private, already imported)
    // shared and sends its own bytes for it.
    let edit = Arc::new(|_: usize, f: Frame<'_>, held: &mut Vec<Vec<u8>>| match &f {
        Frame::DeviceState(_) if held.is_empty() => {
            held.push(vec![]);
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
            let forged = [0x66u8; PAGE_SIZE];
            let plain = crate::frames::PlainPages {
                round: 99,
                pages: vec![crate::frames::PlainPage {
                    gpa: 5 * 4096,
                    data: crate::frames::PageData::Bytes(&forged),
                }],
            };
            let end = crate::frames::RoundEnd {
                round: 99,
                pages_sent: 1,
                dirty_remaining: 0,
            };
            vec![
                encode_frame(&Frame::SharedRanges(shared)),
                encode_frame(&Frame::PlainPages(plain)),
                encode_frame(&Frame::RoundEnd(end)),
                encode_frame(&f),
            ]
        }
        _ => vec![encode_frame(&f)],
    });
    let o = run(true, 1, Some([0x5e; 32]), RAM, Tamper::Frames(edit));
    assert!(
        o.target.is_err() && o.dst.ran.is_none(),
        "the target ran the guest with host bytes in a private page"
    );
}

fn tamper_test(what: &str, edit: Arc<FrameEdit>) {
    let o = run(true, 1, Some([0x5e; 32]), RAM, Tamper::Frames(edit));
    assert!(
        o.target.is_err() && o.dst.ran.is_none(),
        "{what}: the target ran the guest with the changed stream"
    );
}

#[test]
fn tampered_vcpu_state_is_refused() {
    tamper_test(
        "vCPU state",
        Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
            Frame::VcpuState(v) if v.index == 0 => {
                vec![encode_frame(&Frame::VcpuState(crate::frames::VcpuState {
                    index: 0,
                    blob: b"evil0",
                }))]
            }
            _ => vec![encode_frame(&f)],
        }),
    );
}

#[test]
fn tampered_device_state_is_refused() {
    tamper_test(
        "device state",
        Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
            Frame::DeviceState(_) => vec![encode_frame(&Frame::DeviceState(
                crate::frames::DeviceState {
                    blob: b"evil devices",
                },
            ))],
            _ => vec![encode_frame(&f)],
        }),
    );
}

#[test]
fn a_tampered_hello_is_refused() {
    // An optional field the target does not know: it skips it, but the Hello is not the
    // one the source sent.
    tamper_test(
        "Hello",
        Arc::new(|_: usize, f: Frame<'_>, _: &mut Vec<Vec<u8>>| match &f {
            Frame::Hello(_) => {
                let mut bytes = encode_frame(&f);
                bytes.extend_from_slice(&[0x01, 0x80, 1, 0, 0x42]);
                let len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) + 5;
                bytes[8..12].copy_from_slice(&len.to_le_bytes());
                vec![bytes]
            }
            _ => vec![encode_frame(&f)],
        }),
    );
}
