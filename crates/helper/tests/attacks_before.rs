//! Attacks on the helper as the host could mount them against today's protocol. Each
//! asserts what a sound helper must do; on the code they were written against they fail.

use helper_abi::{
    mailbox::{
        Op, Request, Response, Role, Status, GPA_LIST_OFFSET, REQUEST_OFFSET, RESPONSE_OFFSET,
    },
    record::{self, RecordHeader, HEADER_SIZE},
    MIGRATION_SECRET_GUID, PAGE_SIZE,
};
use mirror_helper::{
    engine::Entropy, secret::SECRET_TABLE_GUID, shared_list::SharedList, GuestMemory, Helper,
    HelperLayout, LaneState, Mailbox, SessionState,
};
use std::{cell::RefCell, sync::atomic::AtomicU32};

const RAM: u64 = 1 << 20;
const REGION: (u64, u64) = (0x8_0000, 0x2_0000);
const SHARED_LIST: u64 = 0x1000;
const SECRET: (u64, u64) = (0x2000, 0x1000);
const WINDOW: usize = 64 * record::PAGE_RECORD_SIZE;

struct Ram(RefCell<Vec<u8>>);
impl GuestMemory for Ram {
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) {
        out.copy_from_slice(&self.0.borrow()[gpa as usize..gpa as usize + PAGE_SIZE]);
    }
    fn write_page(&self, gpa: u64, data: &[u8; PAGE_SIZE]) {
        self.0.borrow_mut()[gpa as usize..gpa as usize + PAGE_SIZE].copy_from_slice(data);
    }
}

struct Shared<'h> {
    control: RefCell<Vec<u8>>,
    windows: RefCell<Vec<Vec<u8>>>,
    /// Runs once, the first time the helper reads a window (mid-request).
    hook: RefCell<Option<Box<dyn FnOnce() + 'h>>>,
}
impl Mailbox for Shared<'_> {
    fn read_control(&self, at: usize, out: &mut [u8]) {
        out.copy_from_slice(&self.control.borrow()[at..at + out.len()]);
    }
    fn write_control(&self, at: usize, data: &[u8]) {
        self.control.borrow_mut()[at..at + data.len()].copy_from_slice(data);
    }
    fn read_window(&self, w: usize, at: usize, out: &mut [u8]) {
        if let Some(hook) = self.hook.borrow_mut().take() {
            hook();
        }
        out.copy_from_slice(&self.windows.borrow()[w][at..at + out.len()]);
    }
    fn write_window(&self, w: usize, at: usize, data: &[u8]) {
        self.windows.borrow_mut()[w][at..at + data.len()].copy_from_slice(data);
    }
    fn windows(&self) -> usize {
        2
    }
    fn window_size(&self) -> usize {
        WINDOW
    }
}

struct Counter(u8);
impl Entropy for Counter {
    fn fill(&mut self, out: &mut [u8]) -> bool {
        self.0 = self.0.wrapping_add(1);
        out.fill(self.0);
        true
    }
}

struct Guest {
    ram: Ram,
    layout: HelperLayout,
    session: SessionState,
    versions: Vec<AtomicU32>,
}

fn guest(fill: u8) -> Guest {
    let mut mem = vec![fill; RAM as usize];
    let mut list = [0u8; PAGE_SIZE];
    SharedList::new().encode(&mut list);
    mem[SHARED_LIST as usize..][..PAGE_SIZE].copy_from_slice(&list);
    let mut t = SECRET_TABLE_GUID.to_vec();
    t.extend_from_slice(&[0; 4]);
    t.extend_from_slice(&MIGRATION_SECRET_GUID);
    t.extend_from_slice(&52u32.to_le_bytes());
    t.extend_from_slice(&[0x5e; 32]);
    let len = t.len() as u32;
    t[16..20].copy_from_slice(&len.to_le_bytes());
    mem[SECRET.0 as usize..][..PAGE_SIZE].fill(0);
    mem[SECRET.0 as usize..][..t.len()].copy_from_slice(&t);
    Guest {
        ram: Ram(RefCell::new(mem)),
        layout: HelperLayout::new(&[(0, RAM)], REGION, SHARED_LIST, SECRET).unwrap(),
        session: SessionState::new(),
        versions: (0..RAM / 4096).map(|_| AtomicU32::new(0)).collect(),
    }
}

fn mailbox<'h>() -> Shared<'h> {
    Shared {
        control: RefCell::new(vec![0; PAGE_SIZE]),
        windows: RefCell::new(vec![vec![0; WINDOW]; 2]),
        hook: RefCell::new(None),
    }
}

fn call(g: &Guest, lane: &mut LaneState, mb: &Shared<'_>, req: Request, gpas: &[u64]) -> Response {
    mb.write_control(REQUEST_OFFSET, &req.encode());
    let list: Vec<u8> = gpas.iter().flat_map(|g| g.to_le_bytes()).collect();
    mb.write_control(GPA_LIST_OFFSET, &list);
    Helper {
        layout: &g.layout,
        memory: &g.ram,
        session: &g.session,
        versions: &g.versions,
        lane,
        entropy: Counter(0),
        region: REGION,
        max_batch: 64,
    }
    .serve(mb);
    let mut raw = [0u8; Response::SIZE];
    mb.read_control(RESPONSE_OFFSET, &mut raw);
    Response::decode(&raw)
}

fn keys(g: &Guest, lane: &mut LaneState, role: Role, nonce: [u8; 16]) -> Response {
    call(
        g,
        lane,
        &mailbox(),
        Request {
            op: Op::KEYS.0,
            role: role.0,
            session_id: [0xa1; 16],
            peer_nonce: nonce,
            ..Default::default()
        },
        &[],
    )
}

fn export(g: &Guest, lane: &mut LaneState, gpas: &[u64]) -> Vec<u8> {
    let mb = mailbox();
    let r = call(
        g,
        lane,
        &mb,
        Request {
            op: Op::EXPORT.0,
            count: gpas.len() as u32,
            round: 1,
            ..Default::default()
        },
        gpas,
    );
    assert_eq!(r.status(), Status::OK);
    let w = mb.windows.borrow()[0][..r.bytes as usize].to_vec();
    w
}

fn import(g: &Guest, lane: &mut LaneState, records: &[u8]) -> Status {
    let mb = mailbox();
    mb.windows.borrow_mut()[1][..records.len()].copy_from_slice(records);
    let count = record::walk(records, records.len()).count() as u32;
    call(
        g,
        lane,
        &mb,
        Request {
            op: Op::IMPORT.0,
            window: 1,
            count,
            bytes: records.len() as u32,
            ..Default::default()
        },
        &[],
    )
    .status()
}

fn header(records: &[u8]) -> RecordHeader {
    RecordHeader::decode(records[..HEADER_SIZE].try_into().unwrap()).unwrap()
}

#[test]
fn two_vcpus_on_one_lane_never_seal_under_one_nonce() {
    let src = guest(0x11);
    let mut a = LaneState::new(0);
    let mut b = LaneState::new(0);
    assert_eq!(
        keys(&src, &mut a, Role::SOURCE, [0; 16]).status(),
        Status::OK
    );
    let ra = export(&src, &mut a, &[0x3000]);
    let rb = export(&src, &mut b, &[0x4000]);
    assert_ne!(
        header(&ra).nonce(),
        header(&rb).nonce(),
        "two pages sealed under one (key, nonce)"
    );
}

#[test]
fn import_into_a_guest_that_already_runs_is_refused() {
    let src = guest(0x22);
    let dst = guest(0);
    let (mut s, mut t) = (LaneState::new(0), LaneState::new(0));
    let nonce = keys(&src, &mut s, Role::SOURCE, [0; 16]).nonce;
    assert_eq!(keys(&dst, &mut t, Role::TARGET, nonce).status(), Status::OK);
    let old = export(&src, &mut s, &[0x3000]);
    assert_eq!(import(&dst, &mut t, &old), Status::OK);
    // The guest runs on the target now. The host resets the helper, keys it again with
    // the recorded session and replays the old record into the running guest.
    let reset = Request {
        op: Op::RESET.0,
        ..Default::default()
    };
    call(&dst, &mut t, &mailbox(), reset, &[]);
    keys(&dst, &mut t, Role::TARGET, nonce);
    assert_ne!(
        import(&dst, &mut t, &old),
        Status::OK,
        "old records replayed into a running guest"
    );
}

#[test]
fn reset_while_another_vcpu_is_inside_a_request_is_refused() {
    let src = guest(0x33);
    let dst = guest(0);
    let (mut s, mut t) = (LaneState::new(0), LaneState::new(0));
    let nonce = keys(&src, &mut s, Role::SOURCE, [0; 16]).nonce;
    keys(&dst, &mut t, Role::TARGET, nonce);
    let records = export(&src, &mut s, &[0x3000]);
    // While lane 0 opens the batch, a second helper vCPU resets the session.
    let reset_status = RefCell::new(None);
    let mut other = LaneState::new(1);
    let mb = mailbox();
    mb.windows.borrow_mut()[1][..records.len()].copy_from_slice(&records);
    *mb.hook.borrow_mut() = Some(Box::new(|| {
        let r = call(
            &dst,
            &mut other,
            &mailbox(),
            Request {
                op: Op::RESET.0,
                ..Default::default()
            },
            &[],
        );
        *reset_status.borrow_mut() = Some(r.status());
    }));
    call(
        &dst,
        &mut t,
        &mb,
        Request {
            op: Op::IMPORT.0,
            window: 1,
            count: 1,
            bytes: records.len() as u32,
            ..Default::default()
        },
        &[],
    );
    assert_eq!(
        *reset_status.borrow(),
        Some(Status::BUSY),
        "RESET ran inside another vCPU's request"
    );
}
