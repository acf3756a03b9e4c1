//! The real helper over host memory, for tests, fuzzing and benchmarks (feature `host`):
//! a guest's RAM, its helper state, and helper vCPUs with their mailboxes, driven the way
//! a VMM drives the firmware's helper — a request in the control page, the message and
//! GPA list next to it, records in a window. Nothing here is used by the firmware.

extern crate std;

use crate::{
    engine::Entropy, secret::SECRET_TABLE_GUID, shared_list::SharedList, GuestMemory, Helper,
    HelperLayout, LaneState, Mailbox, SessionState,
};
use helper_abi::{
    handshake::{KeyReply, KeyShare},
    mailbox::{
        Op, Request, Response, Status, GPA_LIST_OFFSET, MESSAGE_OFFSET, MESSAGE_SIZE,
        REQUEST_OFFSET, RESPONSE_OFFSET,
    },
    MIGRATION_SECRET_GUID, PAGE_SIZE,
};
use sha2::{Digest, Sha256};
use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    vec,
    vec::Vec,
};

/// Guest RAM shared between a fake VM and its helper.
pub type Ram = Arc<Mutex<Vec<u8>>>;

fn lock(ram: &Mutex<Vec<u8>>) -> MutexGuard<'_, Vec<u8>> {
    ram.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a fake guest keeps what the helper reads and writes (all in its one RAM range
/// starting at 0).
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    /// Bytes of RAM.
    pub ram: u64,
    /// The helper region (base, size).
    pub region: (u64, u64),
    /// The guest's shared-page list.
    pub shared_list: u64,
    /// The launch secret page.
    pub secret: u64,
    /// The "migrated out" page.
    pub migration_state: u64,
    /// SHA-256 of the "firmware" this helper runs.
    pub firmware_hash: [u8; 32],
    /// Batch limit.
    pub max_batch: u32,
    /// Bytes per record window.
    pub window_size: usize,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            ram: 1 << 20,
            region: (0x8_0000, 0x2_0000),
            shared_list: 0x1000,
            secret: 0x2000,
            migration_state: 0x4000,
            firmware_hash: [0xf1; 32],
            max_batch: 64,
            window_size: 64 * helper_abi::record::PAGE_RECORD_SIZE,
        }
    }
}

/// The guest owner's launch secret table with (or without) a migration secret.
pub fn secret_table(secret: Option<[u8; 32]>) -> Vec<u8> {
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

/// Guest memory behind a lock.
pub struct Memory(pub Ram);

impl GuestMemory for Memory {
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) {
        let ram = lock(&self.0);
        if let Some(page) = ram.get(gpa as usize..gpa as usize + PAGE_SIZE) {
            out.copy_from_slice(page);
        }
    }

    fn write_page(&self, gpa: u64, data: &[u8; PAGE_SIZE]) {
        let mut ram = lock(&self.0);
        if let Some(page) = ram.get_mut(gpa as usize..gpa as usize + PAGE_SIZE) {
            page.copy_from_slice(data);
        }
    }
}

/// A helper vCPU's mailbox: control page and windows, as plain host memory.
pub struct HostMailbox {
    /// The control page.
    pub control: Mutex<Vec<u8>>,
    /// The record windows.
    pub windows: Vec<Mutex<Vec<u8>>>,
    /// Called the first time the helper reads a window in a request (tests use it to
    /// act "while the request is inside").
    #[allow(clippy::type_complexity)]
    pub hook: Mutex<Option<std::boxed::Box<dyn FnOnce() + Send>>>,
}

impl HostMailbox {
    fn new(windows: usize, size: usize) -> HostMailbox {
        HostMailbox {
            control: Mutex::new(vec![0; PAGE_SIZE]),
            windows: (0..windows).map(|_| Mutex::new(vec![0; size])).collect(),
            hook: Mutex::new(None),
        }
    }

    /// A copy of `len` bytes of window `w`.
    pub fn window(&self, w: usize, len: usize) -> Vec<u8> {
        lock(&self.windows[w])[..len].to_vec()
    }

    /// Fills window `w` from its start.
    pub fn fill_window(&self, w: usize, data: &[u8]) {
        lock(&self.windows[w])[..data.len()].copy_from_slice(data);
    }
}

impl Mailbox for HostMailbox {
    fn read_control(&self, at: usize, out: &mut [u8]) {
        out.copy_from_slice(&lock(&self.control)[at..at + out.len()]);
    }

    fn write_control(&self, at: usize, data: &[u8]) {
        lock(&self.control)[at..at + data.len()].copy_from_slice(data);
    }

    fn read_window(&self, w: usize, at: usize, out: &mut [u8]) {
        let hook = self.hook.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(hook) = hook {
            hook();
        }
        out.copy_from_slice(&lock(&self.windows[w])[at..at + out.len()]);
    }

    fn write_window(&self, w: usize, at: usize, data: &[u8]) {
        lock(&self.windows[w])[at..at + data.len()].copy_from_slice(data);
    }

    fn windows(&self) -> usize {
        self.windows.len()
    }

    fn window_size(&self) -> usize {
        self.windows.first().map_or(0, |w| lock(w).len())
    }
}

/// Test randomness: a guest's seed and a counter through SHA-256. Guests made with
/// [`Guest::new`] get a seed no other guest of the process has, so every nonce and
/// ephemeral key differs, as RDRAND's would; [`Guest::seeded`] repeats a run exactly
/// (fuzzing).
struct Draws<'a> {
    seed: u64,
    counter: &'a AtomicU64,
}

static SEEDS: AtomicU64 = AtomicU64::new(1 << 32);

impl Entropy for Draws<'_> {
    fn fill(&mut self, out: &mut [u8]) -> bool {
        for chunk in out.chunks_mut(32) {
            let n = self.counter.fetch_add(1, Ordering::Relaxed);
            let d: [u8; 32] = Sha256::new()
                .chain_update(b"sevmirror test entropy")
                .chain_update(self.seed.to_le_bytes())
                .chain_update(n.to_le_bytes())
                .finalize()
                .into();
            chunk.copy_from_slice(&d[..chunk.len()]);
        }
        true
    }
}

/// A guest and its helper's state.
pub struct Guest {
    /// Its RAM.
    pub ram: Ram,
    /// What the helper knows of it.
    pub layout: HelperLayout,
    /// The helper's shared state.
    pub session: SessionState,
    /// The version table.
    pub versions: Vec<AtomicU32>,
    /// Its spec.
    pub spec: Spec,
    memory: Memory,
    next_lane: AtomicU32,
    seed: u64,
    draws: AtomicU64,
}

/// One helper vCPU: its lane and mailbox.
pub struct Vcpu {
    /// Lane id and slot.
    pub lane: LaneState,
    /// Its mailbox.
    pub mailbox: HostMailbox,
    next_id: AtomicU32,
}

/// A response and the message the helper wrote with it.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The response.
    pub response: Response,
    /// The message area's bytes (`message_len` of them).
    pub message: Vec<u8>,
}

impl Reply {
    /// The status.
    pub fn status(&self) -> Status {
        self.response.status()
    }

    /// Ok(self) for OK, the status otherwise.
    pub fn ok(self) -> Result<Reply, Status> {
        match self.status() {
            Status::OK => Ok(self),
            s => Err(s),
        }
    }
}

impl Guest {
    /// A guest whose page `p` holds `fill(p)` in every byte, with `secret` as its
    /// migration secret, an empty shared list, and nothing migrated out.
    pub fn new(spec: Spec, secret: Option<[u8; 32]>, fill: impl Fn(u64) -> u8) -> Guest {
        let mut mem = vec![0u8; spec.ram as usize];
        for page in 0..spec.ram / PAGE_SIZE as u64 {
            mem[(page as usize) * PAGE_SIZE..][..PAGE_SIZE].fill(fill(page));
        }
        Guest::over(spec, secret, Arc::new(Mutex::new(mem)))
    }

    /// A guest over existing RAM (its secret, list and flag pages are written here).
    pub fn over(spec: Spec, secret: Option<[u8; 32]>, ram: Ram) -> Guest {
        {
            let mut mem = lock(&ram);
            let mut list = [0u8; PAGE_SIZE];
            SharedList::new().encode(&mut list);
            mem[spec.shared_list as usize..][..PAGE_SIZE].copy_from_slice(&list);
            let t = secret_table(secret);
            mem[spec.secret as usize..][..PAGE_SIZE].fill(0);
            mem[spec.secret as usize..][..t.len()].copy_from_slice(&t);
            mem[spec.migration_state as usize..][..PAGE_SIZE].fill(0);
        }
        let layout = HelperLayout::new(
            &[(0, spec.ram)],
            spec.region,
            spec.shared_list,
            (spec.secret, PAGE_SIZE as u64),
        )
        .expect("the test spec is a valid layout")
        .with_identity(spec.migration_state, spec.firmware_hash);
        Guest {
            memory: Memory(ram.clone()),
            ram,
            layout,
            session: SessionState::new(),
            versions: (0..spec.ram / PAGE_SIZE as u64)
                .map(|_| AtomicU32::new(0))
                .collect(),
            spec,
            next_lane: AtomicU32::new(0),
            seed: SEEDS.fetch_add(1, Ordering::Relaxed),
            draws: AtomicU64::new(0),
        }
    }

    /// The same guest with a fixed entropy seed: the same requests give the same bytes.
    pub fn seeded(mut self, seed: u64) -> Guest {
        self.seed = seed;
        self
    }

    /// Marks the guest as booted for an incoming migration.
    pub fn incoming(self) -> Guest {
        self.session.set_incoming();
        self
    }

    /// A helper vCPU with the next lane id, as the firmware's entry point hands them out.
    pub fn vcpu(&self) -> Vcpu {
        let id = self.next_lane.fetch_add(1, Ordering::Relaxed);
        self.vcpu_with_lane(id)
            .expect("fresh lane ids from the counter are never taken")
    }

    /// A helper vCPU that asks for lane id `lane` (a hostile host choosing it).
    pub fn vcpu_with_lane(&self, lane: u32) -> Result<Vcpu, Status> {
        Ok(Vcpu {
            lane: self.session.claim_lane(lane, lane)?,
            mailbox: HostMailbox::new(2, self.spec.window_size),
            next_id: AtomicU32::new(1),
        })
    }

    /// Runs one request on `vcpu`: writes it, its GPA list and message, serves it, and
    /// reads back the response and message.
    pub fn call(&self, vcpu: &Vcpu, req: Request, gpas: &[u64], message: &[u8]) -> Reply {
        let mut req = req;
        req.id = vcpu.next_id.fetch_add(1, Ordering::Relaxed);
        let mb = &vcpu.mailbox;
        mb.write_control(REQUEST_OFFSET, &req.encode());
        let list: Vec<u8> = gpas.iter().flat_map(|g| g.to_le_bytes()).collect();
        if !list.is_empty() {
            let n = list.len().min(PAGE_SIZE - GPA_LIST_OFFSET);
            mb.write_control(GPA_LIST_OFFSET, &list[..n]);
        }
        if !message.is_empty() {
            let n = message.len().min(MESSAGE_SIZE);
            mb.write_control(MESSAGE_OFFSET, &message[..n]);
        }
        self.serve(vcpu);
        let mut raw = [0u8; Response::SIZE];
        mb.read_control(RESPONSE_OFFSET, &mut raw);
        let response = Response::decode(&raw);
        let mut message = vec![0u8; (response.message_len as usize).min(MESSAGE_SIZE)];
        mb.read_control(MESSAGE_OFFSET, &mut message);
        Reply { response, message }
    }

    /// Serves whatever request is in `vcpu`'s control page.
    pub fn serve(&self, vcpu: &Vcpu) {
        Helper {
            layout: &self.layout,
            memory: &self.memory,
            session: &self.session,
            versions: &self.versions,
            lane: &vcpu.lane,
            entropy: Draws {
                seed: self.seed,
                counter: &self.draws,
            },
            region: self.spec.region,
            max_batch: self.spec.max_batch,
        }
        .serve(&vcpu.mailbox);
    }

    /// Answers whatever request is in `vcpu`'s control page with a refusal, as the
    /// firmware does when the helper's self-check fails.
    pub fn refuse(&self, vcpu: &Vcpu, status: Status, index: u32) {
        Helper {
            layout: &self.layout,
            memory: &self.memory,
            session: &self.session,
            versions: &self.versions,
            lane: &vcpu.lane,
            entropy: Draws {
                seed: self.seed,
                counter: &self.draws,
            },
            region: self.spec.region,
            max_batch: self.spec.max_batch,
        }
        .refuse(&vcpu.mailbox, status, index);
    }

    /// A simple request (no list, no message).
    pub fn op(&self, vcpu: &Vcpu, op: Op) -> Reply {
        self.call(
            vcpu,
            Request {
                op: op.0,
                ..Request::default()
            },
            &[],
            &[],
        )
    }

    /// A page's bytes.
    pub fn page(&self, gpa: u64) -> Vec<u8> {
        lock(&self.ram)[gpa as usize..gpa as usize + PAGE_SIZE].to_vec()
    }

    /// Writes a page.
    pub fn write_page(&self, gpa: u64, data: &[u8; PAGE_SIZE]) {
        self.memory.write_page(gpa, data);
    }

    /// Records `pages` at `gpa` as shared in the guest's own list.
    pub fn share(&self, gpa: u64, pages: u64) {
        let mut page = [0u8; PAGE_SIZE];
        self.memory.read_page(self.spec.shared_list, &mut page);
        let mut list = SharedList::decode(&page);
        list.set(gpa, pages, true).expect("room in the list");
        list.encode(&mut page);
        self.memory.write_page(self.spec.shared_list, &page);
    }

    /// Whether the guest's "migrated out" flag is set.
    pub fn migrated_out(&self) -> bool {
        let mut w = [0u8; 8];
        w.copy_from_slice(&lock(&self.ram)[self.spec.migration_state as usize..][..8]);
        guest_abi::migration::is_migrated_out(u64::from_le_bytes(w))
    }

    /// Every page the manifest covers: RAM outside the helper region.
    pub fn migratable_pages(&self) -> Vec<u64> {
        self.layout.migratable_pages().map(|(g, _)| g).collect()
    }
}

/// The outcome of a whole handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// The transcript hash both sides agreed on.
    pub transcript: [u8; 32],
}

/// Runs the four handshake steps between a source and a target helper (the messages
/// carried verbatim, as honest VMMs would). Returns the first refusal.
pub fn handshake(
    src: &Guest,
    sv: &Vcpu,
    dst: &Guest,
    tv: &Vcpu,
    session_id: [u8; 16],
    hello_hash: [u8; 32],
) -> Result<Handshake, (Op, Status)> {
    let share = start(src, sv, session_id, hello_hash).map_err(|s| (Op::HS_START, s))?;
    let reply =
        respond(dst, tv, session_id, hello_hash, &share).map_err(|s| (Op::HS_RESPOND, s))?;
    let (confirm, th) = finish(src, sv, &reply).map_err(|s| (Op::HS_FINISH, s))?;
    let th2 = confirm_target(dst, tv, &confirm).map_err(|s| (Op::HS_CONFIRM, s))?;
    debug_assert_eq!(th, th2);
    Ok(Handshake { transcript: th })
}

/// HS_START: the source's KeyShare.
pub fn start(
    src: &Guest,
    v: &Vcpu,
    session_id: [u8; 16],
    hello_hash: [u8; 32],
) -> Result<[u8; KeyShare::SIZE], Status> {
    let r = src
        .call(
            v,
            Request {
                op: Op::HS_START.0,
                bytes: 32,
                session_id,
                ..Request::default()
            },
            &[],
            &hello_hash,
        )
        .ok()?;
    r.message.try_into().map_err(|_| Status::BAD_REQUEST)
}

/// HS_RESPOND: the target's KeyReply.
pub fn respond(
    dst: &Guest,
    v: &Vcpu,
    session_id: [u8; 16],
    hello_hash: [u8; 32],
    share: &[u8; KeyShare::SIZE],
) -> Result<[u8; KeyReply::SIZE], Status> {
    let mut m = hello_hash.to_vec();
    m.extend_from_slice(share);
    let r = dst
        .call(
            v,
            Request {
                op: Op::HS_RESPOND.0,
                bytes: m.len() as u32,
                session_id,
                ..Request::default()
            },
            &[],
            &m,
        )
        .ok()?;
    r.message.try_into().map_err(|_| Status::BAD_REQUEST)
}

/// HS_FINISH: the source's KeyConfirm and the transcript hash.
pub fn finish(
    src: &Guest,
    v: &Vcpu,
    reply: &[u8; KeyReply::SIZE],
) -> Result<([u8; 32], [u8; 32]), Status> {
    let r = src
        .call(
            v,
            Request {
                op: Op::HS_FINISH.0,
                bytes: reply.len() as u32,
                ..Request::default()
            },
            &[],
            reply,
        )
        .ok()?;
    let mut mac = [0u8; 32];
    let mut th = [0u8; 32];
    mac.copy_from_slice(r.message.get(..32).ok_or(Status::BAD_REQUEST)?);
    th.copy_from_slice(r.message.get(32..64).ok_or(Status::BAD_REQUEST)?);
    Ok((mac, th))
}

/// HS_CONFIRM: the transcript hash.
pub fn confirm_target(dst: &Guest, v: &Vcpu, confirm: &[u8; 32]) -> Result<[u8; 32], Status> {
    let r = dst
        .call(
            v,
            Request {
                op: Op::HS_CONFIRM.0,
                bytes: 32,
                ..Request::default()
            },
            &[],
            confirm,
        )
        .ok()?;
    r.message.try_into().map_err(|_| Status::BAD_REQUEST)
}
