//! The helper end to end on the host: a source guest's pages sealed by a source helper,
//! carried by a (possibly hostile) host, opened by a target helper into a target guest.

use helper_abi::{
    mailbox::{
        Op, Request, Response, Role, Status, GPA_LIST_OFFSET, REQUEST_OFFSET, RESPONSE_OFFSET,
    },
    record::{self, walk},
    MIGRATION_SECRET_GUID, PAGE_SIZE,
};
use mirror_helper::{
    engine::Entropy, secret::SECRET_TABLE_GUID, shared_list::SharedList, GuestMemory, Helper,
    HelperLayout, LaneState, Mailbox, SessionState,
};
use std::{cell::RefCell, sync::atomic::AtomicU32};

const RAM: u64 = 1 << 20; // 256 pages
const REGION: (u64, u64) = (0x8_0000, 0x2_0000); // 32 pages, never migrated
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

struct Shared {
    control: RefCell<Vec<u8>>,
    windows: RefCell<Vec<Vec<u8>>>,
}

impl Mailbox for Shared {
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

/// A guest with a migration secret, some pages of data, and its helper.
struct Guest {
    ram: Ram,
    layout: HelperLayout,
    session: SessionState,
    versions: Vec<AtomicU32>,
    lanes: Vec<LaneState>,
    mailbox: Shared,
    next_id: u32,
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

impl Guest {
    fn new(secret: Option<[u8; 32]>, fill: impl Fn(u64) -> u8) -> Guest {
        let mut mem = vec![0u8; RAM as usize];
        for page in 0..RAM / PAGE_SIZE as u64 {
            let v = fill(page);
            mem[(page as usize) * PAGE_SIZE..][..PAGE_SIZE].fill(v);
        }
        let mut list = [0u8; PAGE_SIZE];
        SharedList::new().encode(&mut list);
        mem[SHARED_LIST as usize..][..PAGE_SIZE].copy_from_slice(&list);
        let t = secret_table(secret);
        mem[SECRET.0 as usize..][..PAGE_SIZE].fill(0);
        mem[SECRET.0 as usize..][..t.len()].copy_from_slice(&t);
        Guest {
            ram: Ram(RefCell::new(mem)),
            layout: HelperLayout::new(&[(0, RAM)], REGION, SHARED_LIST, SECRET).unwrap(),
            session: SessionState::new(),
            versions: (0..RAM / PAGE_SIZE as u64)
                .map(|_| AtomicU32::new(0))
                .collect(),
            lanes: vec![LaneState::new(0), LaneState::new(1)],
            mailbox: Shared {
                control: RefCell::new(vec![0; PAGE_SIZE]),
                windows: RefCell::new(vec![vec![0; WINDOW]; 2]),
            },
            next_id: 1,
        }
    }

    fn call(&mut self, lane: usize, req: Request, gpas: &[u64]) -> Response {
        let mut req = req;
        req.id = self.next_id;
        self.next_id += 1;
        self.mailbox.write_control(REQUEST_OFFSET, &req.encode());
        let list: Vec<u8> = gpas.iter().flat_map(|g| g.to_le_bytes()).collect();
        self.mailbox.write_control(GPA_LIST_OFFSET, &list);
        let mut helper = Helper {
            layout: &self.layout,
            memory: &self.ram,
            session: &self.session,
            versions: &self.versions,
            lane: &mut self.lanes[lane],
            entropy: Counter(0),
            region: REGION,
            max_batch: 64,
        };
        helper.serve(&self.mailbox);
        let mut raw = [0u8; Response::SIZE];
        self.mailbox.read_control(RESPONSE_OFFSET, &mut raw);
        let resp = Response::decode(&raw);
        assert_eq!(resp.id, req.id, "response must echo the request id");
        resp
    }

    fn keys(&mut self, role: Role, session_id: [u8; 16], peer_nonce: [u8; 16]) -> Response {
        self.call(
            0,
            Request {
                op: Op::KEYS.0,
                role: role.0,
                session_id,
                peer_nonce,
                ..Default::default()
            },
            &[],
        )
    }

    /// Seals `gpas` on `lane` in `round`; returns the window bytes.
    fn export(&mut self, lane: usize, round: u32, gpas: &[u64]) -> Result<Vec<u8>, (Status, u32)> {
        let r = self.call(
            lane,
            Request {
                op: Op::EXPORT.0,
                window: 0,
                count: gpas.len() as u32,
                round,
                ..Default::default()
            },
            gpas,
        );
        if r.status() != Status::OK {
            return Err((r.status(), r.index));
        }
        Ok(self.mailbox.windows.borrow()[0][..r.bytes as usize].to_vec())
    }

    fn import(&mut self, lane: usize, records: &[u8]) -> Result<u32, (Status, u32)> {
        let count = walk(records, records.len()).count() as u32;
        self.mailbox.windows.borrow_mut()[1][..records.len()].copy_from_slice(records);
        let r = self.call(
            lane,
            Request {
                op: Op::IMPORT.0,
                window: 1,
                count,
                bytes: records.len() as u32,
                ..Default::default()
            },
            &[],
        );
        if r.status() != Status::OK {
            return Err((r.status(), r.index));
        }
        Ok(r.count)
    }

    fn finish_source(&mut self, lane: usize) -> Result<Vec<u8>, Status> {
        let r = self.call(
            lane,
            Request {
                op: Op::FINISH.0,
                window: 0,
                ..Default::default()
            },
            &[],
        );
        if r.status() != Status::OK {
            return Err(r.status());
        }
        Ok(self.mailbox.windows.borrow()[0][..r.bytes as usize].to_vec())
    }

    fn finish_target(&mut self, lane: usize, manifest: &[u8]) -> Status {
        self.mailbox.windows.borrow_mut()[0][..manifest.len()].copy_from_slice(manifest);
        self.call(
            lane,
            Request {
                op: Op::FINISH.0,
                window: 0,
                bytes: manifest.len() as u32,
                ..Default::default()
            },
            &[],
        )
        .status()
    }

    fn page(&self, gpa: u64) -> Vec<u8> {
        self.ram.0.borrow()[gpa as usize..gpa as usize + PAGE_SIZE].to_vec()
    }
}

const SECRET_BYTES: [u8; 32] = [0x5e; 32];
const SESSION: [u8; 16] = [0xa1; 16];

/// Source with data in every page (zero pages every 8th), target blank, keyed.
fn pair() -> (Guest, Guest) {
    let mut src = Guest::new(Some(SECRET_BYTES), |p| {
        if p % 8 == 0 {
            0
        } else {
            (p as u8) | 1
        }
    });
    let mut dst = Guest::new(Some(SECRET_BYTES), |_| 0xee);
    let r = src.keys(Role::SOURCE, SESSION, [0; 16]);
    assert_eq!(r.status(), Status::OK);
    assert_eq!(
        dst.keys(Role::TARGET, SESSION, r.nonce).status(),
        Status::OK
    );
    (src, dst)
}

/// Every page the manifest covers: all RAM outside the helper region.
fn all_pages() -> Vec<u64> {
    (0..RAM / PAGE_SIZE as u64)
        .map(|p| p * PAGE_SIZE as u64)
        .filter(|&g| !(REGION.0..REGION.0 + REGION.1).contains(&g))
        .collect()
}

fn migrate_all(src: &mut Guest, dst: &mut Guest, round: u32) {
    for chunk in all_pages().chunks(64) {
        let records = src.export(0, round, chunk).unwrap();
        dst.import(0, &records).unwrap();
    }
}

#[test]
fn pages_travel_sealed_and_arrive_intact_and_the_manifest_agrees() {
    let (mut src, mut dst) = pair();
    let gpa = 0x3000;
    let records = src.export(0, 1, &[gpa]).unwrap();
    // The plaintext never appears in what the host carries.
    assert!(!records.windows(64).any(|w| w == &src.page(gpa)[..64]));
    dst.import(0, &records).unwrap();
    migrate_all(&mut src, &mut dst, 2);
    for g in all_pages() {
        if g != SECRET.0 && g != SHARED_LIST {
            assert_eq!(dst.page(g), src.page(g), "page {g:#x}");
        }
    }
    let manifest = src.finish_source(0).unwrap();
    assert_eq!(dst.finish_target(0, &manifest), Status::OK);
    // Once verified, nothing more is accepted.
    let (mut src2, _) = pair();
    let late = src2.export(0, 2, &[gpa]).unwrap();
    assert_eq!(dst.import(0, &late).unwrap_err().0, Status::BAD_STATE);
}

#[test]
fn zero_pages_travel_as_authenticated_flags() {
    let (mut src, mut dst) = pair();
    let records = src.export(0, 1, &[0x8000, 0x9000]).unwrap(); // page 8 is zero, page 9 is not
    assert_eq!(
        records.len(),
        record::ZERO_RECORD_SIZE + record::PAGE_RECORD_SIZE
    );
    dst.import(0, &records).unwrap();
    assert_eq!(dst.page(0x8000), vec![0; PAGE_SIZE]);
    // A forged zero record (tag of a real one, kind flipped) does not authenticate.
    let mut forged = src.export(0, 2, &[0x9000]).unwrap();
    forged[0] = record::Kind::ZERO.0;
    forged[20..24].copy_from_slice(&0u32.to_le_bytes());
    forged.truncate(record::ZERO_RECORD_SIZE);
    assert_eq!(dst.import(0, &forged).unwrap_err().0, Status::AUTH_FAILED);
}

#[test]
fn any_flipped_bit_is_rejected_and_nothing_is_written() {
    let (mut src, mut dst) = pair();
    let records = src.export(0, 1, &[0x3000]).unwrap();
    for bit in [0, 8 * 10, 8 * 40, 8 * 2000, 8 * (records.len() - 1)] {
        let mut bad = records.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let before = dst.page(0x3000);
        let err = dst.import(0, &bad).unwrap_err().0;
        assert!(
            matches!(err, Status::AUTH_FAILED | Status::BAD_RECORD),
            "bit {bit}: {err}"
        );
        assert_eq!(
            dst.page(0x3000),
            before,
            "a rejected record must not touch memory"
        );
    }
    dst.import(0, &records).unwrap();
}

#[test]
fn a_target_with_another_session_or_secret_opens_nothing() {
    let (mut src, _) = pair();
    let records = src.export(0, 1, &[0x3000]).unwrap();
    let nonce = {
        let mut g = Guest::new(Some(SECRET_BYTES), |_| 0);
        g.keys(Role::SOURCE, SESSION, [0; 16]).nonce
    };
    let mut other_session = Guest::new(Some(SECRET_BYTES), |_| 0);
    other_session.keys(Role::TARGET, [0xb2; 16], nonce);
    assert_eq!(
        other_session.import(0, &records).unwrap_err().0,
        Status::AUTH_FAILED
    );
    let mut other_secret = Guest::new(Some([1; 32]), |_| 0);
    other_secret.keys(Role::TARGET, SESSION, nonce);
    assert_eq!(
        other_secret.import(0, &records).unwrap_err().0,
        Status::AUTH_FAILED
    );
    let mut no_secret = Guest::new(None, |_| 0);
    assert_eq!(
        no_secret.keys(Role::TARGET, SESSION, nonce).status(),
        Status::NO_SECRET
    );
    assert_eq!(
        no_secret.import(0, &records).unwrap_err().0,
        Status::NO_KEYS
    );
}

#[test]
fn replayed_and_reordered_records_are_refused() {
    let (mut src, mut dst) = pair();
    let first = src.export(0, 1, &[0x3000]).unwrap();
    let second = src.export(0, 2, &[0x3000]).unwrap();
    // Reordered: the second before the first.
    assert_eq!(dst.import(0, &second).unwrap_err().0, Status::REORDER);
    dst.import(0, &first).unwrap();
    dst.import(0, &second).unwrap();
    // Replayed: the first again.
    assert_eq!(dst.import(0, &first).unwrap_err().0, Status::REORDER);
    // An older version of a page arriving on another lane after a newer one.
    let old = src.export(1, 3, &[0x4000]).unwrap();
    let new = src.export(0, 4, &[0x4000]).unwrap();
    dst.import(0, &new).unwrap();
    assert_eq!(dst.import(1, &old).unwrap_err().0, Status::REPLAY);
    // A record for another lane is not this vCPU's to open.
    let other = src.export(1, 5, &[0x5000]).unwrap();
    assert_eq!(dst.import(0, &other).unwrap_err().0, Status::BAD_RECORD);
}

#[test]
fn a_withheld_newest_version_fails_the_manifest() {
    let (mut src, mut dst) = pair();
    migrate_all(&mut src, &mut dst, 1);
    // The page changes and is sealed again, but the host drops that record.
    src.ram.write_page(0x3000, &[0x77; PAGE_SIZE]);
    let _dropped = src.export(0, 2, &[0x3000]).unwrap();
    let manifest = src.finish_source(0).unwrap();
    // The sequence gap shows at once ...
    assert_eq!(dst.finish_target(0, &manifest), Status::REORDER);
    // ... and on another lane (no gap) the versions do.
    let (mut src, mut dst) = pair();
    migrate_all(&mut src, &mut dst, 1);
    let _dropped = src.export(1, 2, &[0x3000]).unwrap();
    let manifest = src.finish_source(0).unwrap();
    assert_eq!(dst.finish_target(0, &manifest), Status::MANIFEST_MISMATCH);
}

#[test]
fn the_source_refuses_a_manifest_while_a_private_page_was_never_sealed() {
    let (mut src, _) = pair();
    let pages = all_pages();
    for chunk in pages[..pages.len() - 1].chunks(64) {
        src.export(0, 1, chunk).unwrap();
    }
    assert_eq!(src.finish_source(0).unwrap_err(), Status::INCOMPLETE);
    src.export(0, 1, &pages[pages.len() - 1..]).unwrap();
    assert!(src.finish_source(0).is_ok());
}

#[test]
fn shared_pages_are_not_exported_and_not_in_the_manifest() {
    let (mut src, mut dst) = pair();
    let mut list = SharedList::new();
    list.set(0x6000, 1, true).unwrap();
    let mut page = [0u8; PAGE_SIZE];
    list.encode(&mut page);
    src.ram.write_page(SHARED_LIST, &page);
    assert_eq!(
        src.export(0, 1, &[0x6000]).unwrap_err(),
        (Status::BAD_GPA, 0)
    );
    let private: Vec<u64> = all_pages().into_iter().filter(|&g| g != 0x6000).collect();
    for chunk in private.chunks(64) {
        let records = src.export(0, 1, chunk).unwrap();
        dst.import(0, &records).unwrap();
    }
    let manifest = src.finish_source(0).unwrap();
    // The target learned the shared list with the list page itself.
    assert_eq!(dst.finish_target(0, &manifest), Status::OK);
}

#[test]
fn bad_gpas_are_refused_before_anything_is_sealed() {
    let (mut src, _) = pair();
    for (gpas, index) in [
        (vec![0x3000, 0x3008], 1),   // unaligned
        (vec![RAM], 0),              // outside RAM
        (vec![0x3000, REGION.0], 1), // the helper's own region
        (vec![0xfe00_0000], 0),      // MMIO
    ] {
        assert_eq!(
            src.export(0, 1, &gpas).unwrap_err(),
            (Status::BAD_GPA, index),
            "{gpas:x?}"
        );
    }
    let too_many: Vec<u64> = (0..65).map(|i| i * PAGE_SIZE as u64).collect();
    assert_eq!(
        src.export(0, 1, &too_many).unwrap_err().0,
        Status::BATCH_TOO_LARGE
    );
    // Nothing was sealed: the first real export gets version 1 for page 3.
    let records = src.export(0, 1, &[0x3000]).unwrap();
    assert_eq!(u32::from_le_bytes(records[16..20].try_into().unwrap()), 1);
}

#[test]
fn keys_are_set_once_per_session_and_reset_starts_over() {
    let (mut src, _) = pair();
    assert_eq!(
        src.keys(Role::SOURCE, SESSION, [0; 16]).status(),
        Status::BAD_STATE
    );
    assert_eq!(
        src.call(
            0,
            Request {
                op: Op::IMPORT.0,
                ..Default::default()
            },
            &[]
        )
        .status(),
        Status::BAD_STATE
    );
    assert_eq!(
        src.call(
            0,
            Request {
                op: Op::RESET.0,
                ..Default::default()
            },
            &[]
        )
        .status(),
        Status::OK
    );
    assert_eq!(src.export(0, 1, &[0x3000]).unwrap_err().0, Status::NO_KEYS);
    let again = src.keys(Role::SOURCE, SESSION, [0; 16]);
    assert_eq!(again.status(), Status::OK);
}

#[test]
fn info_reports_the_region_and_limits() {
    let mut g = Guest::new(None, |_| 0);
    let r = g.call(
        1,
        Request {
            op: Op::INFO.0,
            ..Default::default()
        },
        &[],
    );
    assert_eq!(r.status(), Status::OK);
    assert_eq!((r.region_base, r.region_size), REGION);
    assert_eq!((r.abi_version, r.max_batch, r.lane), (1, 64, 1));
    assert_eq!(r.ram_pages, RAM / PAGE_SIZE as u64);
}

#[test]
fn garbage_requests_never_panic_or_write_memory() {
    let (mut src, mut dst) = pair();
    let before = dst.ram.0.borrow().clone();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..2000 {
        let mut raw = [0u8; Request::SIZE];
        raw.iter_mut().for_each(|b| *b = next() as u8);
        let op = (next() % 8) as u32;
        raw[..4].copy_from_slice(&op.to_le_bytes());
        raw[8..12].copy_from_slice(&((next() % 3) as u32).to_le_bytes());
        raw[12..16].copy_from_slice(&((next() % 70) as u32).to_le_bytes());
        let mut req = Request::decode(&raw);
        if op == Op::RESET.0 || op == Op::KEYS.0 {
            req.op = Op::INFO.0;
        }
        let mut window = vec![0u8; WINDOW];
        window.iter_mut().for_each(|b| *b = next() as u8);
        dst.mailbox.windows.borrow_mut()[0].copy_from_slice(&window);
        dst.mailbox.windows.borrow_mut()[1].copy_from_slice(&window);
        let gpas: Vec<u64> = (0..70).map(|_| next()).collect();
        let _ = dst.call((next() % 2) as usize, req, &gpas);
        let _ = src.call((next() % 2) as usize, req, &gpas);
    }
    assert_eq!(
        *dst.ram.0.borrow(),
        before,
        "garbage must never be written to guest memory"
    );
}
