//! Serving one request: the helper's request loop body.
//!
//! Each helper vCPU runs [`Helper::serve`] for every request the VMM leaves in its
//! mailbox. The rules it enforces:
//! - GPAs must be page-aligned RAM outside the helper region; EXPORT also refuses pages
//!   the guest shares with the host (those travel in the clear, outside the helper).
//! - Every record is copied into private memory before it is checked; only records that
//!   authenticate, carry the lane's next sequence number, and a version newer than any
//!   accepted for their page are written, and only to that page.
//! - Plaintext never touches shared memory: pages are copied into a private buffer,
//!   encrypted there, and only ciphertext goes to the window.
//! - The manifest (FINISH) covers every private page; the source refuses to produce it
//!   while any private page was never sealed, and the target accepts it only if every
//!   version it holds matches.

use crate::{
    crypto::{derive_key, ManifestHash},
    layout::HelperLayout,
    secret::find_migration_secret,
    session::{self, LaneState, SessionState},
    shared_list::SharedList,
};
use core::sync::atomic::{AtomicU32, Ordering};
use helper_abi::{
    mailbox::{Op, Request, Response, Role, Status, GPA_LIST_OFFSET, REQUEST_OFFSET},
    record::{self, Kind, RecordHeader, HEADER_SIZE, MANIFEST_PAYLOAD_SIZE, TAG_SIZE},
    ABI_VERSION, MAX_BATCH, PAGE_SIZE,
};

/// Marks a version-table entry whose page is being written (target).
const LOCKED: u32 = 1 << 31;

/// The helper's access to guest memory (through its own page tables, in the guest's
/// encryption context).
pub trait GuestMemory {
    /// Copies the page at `gpa` (page-aligned RAM) into `out`.
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]);
    /// Writes the page at `gpa` (page-aligned RAM).
    fn write_page(&self, gpa: u64, data: &[u8; PAGE_SIZE]);
}

/// The helper's access to its mailbox (shared with the host): every method copies.
pub trait Mailbox {
    /// Copies `out.len()` bytes from offset `at` of the control page.
    fn read_control(&self, at: usize, out: &mut [u8]);
    /// Copies `data` to offset `at` of the control page.
    fn write_control(&self, at: usize, data: &[u8]);
    /// Copies `out.len()` bytes from offset `at` of record window `window`.
    fn read_window(&self, window: usize, at: usize, out: &mut [u8]);
    /// Copies `data` to offset `at` of record window `window`.
    fn write_window(&self, window: usize, at: usize, data: &[u8]);
    /// Number of windows.
    fn windows(&self) -> usize;
    /// Size of each window in bytes.
    fn window_size(&self) -> usize;
}

/// A source of randomness (RDRAND in the firmware).
pub trait Entropy {
    /// Fills `out`; false if no randomness is available.
    fn fill(&mut self, out: &mut [u8]) -> bool;
}

/// One helper vCPU's view of the helper.
pub struct Helper<'a, M: GuestMemory, E: Entropy> {
    /// Memory layout, fixed at boot.
    pub layout: &'a HelperLayout,
    /// Guest memory.
    pub memory: &'a M,
    /// The session all helper vCPUs share.
    pub session: &'a SessionState,
    /// Per-page versions (index: RAM page number), shared by all helper vCPUs.
    pub versions: &'a [AtomicU32],
    /// This vCPU's lane.
    pub lane: &'a mut LaneState,
    /// Randomness for the source nonce.
    pub entropy: E,
    /// The whole helper region (base, size), reported by INFO.
    pub region: (u64, u64),
    /// Batch limit (at most [`MAX_BATCH`]).
    pub max_batch: u32,
}

/// A refusal: the status and the index of the offending GPA or record.
struct Refusal(Status, u32);

impl From<Status> for Refusal {
    fn from(s: Status) -> Self {
        Refusal(s, 0)
    }
}

impl<M: GuestMemory, E: Entropy> Helper<'_, M, E> {
    /// Reads the request from `mailbox`, carries it out, writes the response.
    pub fn serve(&mut self, mailbox: &impl Mailbox) {
        let mut raw = [0u8; Request::SIZE];
        mailbox.read_control(REQUEST_OFFSET, &mut raw);
        let req = Request::decode(&raw);
        self.session.requests.fetch_add(1, Ordering::Relaxed);
        let mut resp = Response {
            id: req.id,
            lane: u32::from(self.lane.lane),
            ..Response::default()
        };
        let result = match Op(req.op) {
            Op::INFO => {
                self.info(&mut resp);
                Ok(())
            }
            Op::KEYS => self.keys(&req, &mut resp),
            Op::EXPORT => self.export(&req, mailbox, &mut resp),
            Op::IMPORT => self.import(&req, mailbox, &mut resp),
            Op::FINISH => self.finish(&req, mailbox, &mut resp),
            Op::RESET => self.reset(),
            _ => Err(Status::BAD_REQUEST.into()),
        };
        if let Err(Refusal(status, index)) = result {
            resp.status = status.0;
            resp.index = index;
        }
        self.stats(&mut resp);
        mailbox.write_control(helper_abi::mailbox::RESPONSE_OFFSET, &resp.encode());
    }

    fn stats(&self, resp: &mut Response) {
        let s = self.session;
        resp.requests = s.requests.load(Ordering::Relaxed);
        resp.bytes_sealed = s.bytes_sealed.load(Ordering::Relaxed);
        resp.bytes_opened = s.bytes_opened.load(Ordering::Relaxed);
        resp.zero_pages = s.zero_pages.load(Ordering::Relaxed);
    }

    fn info(&self, resp: &mut Response) {
        resp.abi_version = u32::from(ABI_VERSION);
        resp.max_batch = self.max_batch;
        resp.region_base = self.region.0;
        resp.region_size = self.region.1;
        resp.ram_pages = self.layout.pages();
    }

    fn keys(&mut self, req: &Request, resp: &mut Response) -> Result<(), Refusal> {
        let role = Role(req.role);
        if role != Role::SOURCE && role != Role::TARGET {
            return Err(Status::BAD_REQUEST.into());
        }
        let secret = self.migration_secret().ok_or(Status::NO_SECRET)?;
        self.session
            .state
            .compare_exchange(
                session::NONE,
                session::DERIVING,
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .map_err(|s| {
                if s == session::DERIVING {
                    Status::BUSY
                } else {
                    Status::BAD_STATE
                }
            })?;
        let mut nonce = req.peer_nonce;
        if role == Role::SOURCE && !self.entropy.fill(&mut nonce) {
            self.session.state.store(session::NONE, Ordering::Release);
            return Err(Status::BAD_STATE.into());
        }
        let mut key = derive_key(&secret, &req.session_id, &nonce);
        self.session.install(role.0, &key, &req.session_id, &nonce);
        crate::crypto::wipe(&mut key);
        if role == Role::SOURCE {
            resp.nonce = nonce;
        }
        Ok(())
    }

    fn migration_secret(&self) -> Option<[u8; 32]> {
        let (base, size) = self.layout.secret_area;
        let mut page = [0u8; PAGE_SIZE];
        if size == 0 || size > PAGE_SIZE as u64 || base % PAGE_SIZE as u64 != 0 {
            return None;
        }
        self.memory.read_page(base, &mut page);
        let secret = find_migration_secret(&page[..size as usize]);
        crate::crypto::wipe(&mut page);
        secret
    }

    fn shared_list(&self) -> SharedList {
        let mut page = [0u8; PAGE_SIZE];
        self.memory
            .read_page(self.layout.shared_list_gpa, &mut page);
        SharedList::decode(&page)
    }

    fn require(&self, role: Role) -> Result<(), Refusal> {
        match self.session.state.load(Ordering::Acquire) {
            session::KEYED if self.session.role.load(Ordering::Relaxed) == role.0 => Ok(()),
            session::NONE | session::DERIVING => Err(Status::NO_KEYS.into()),
            _ => Err(Status::BAD_STATE.into()),
        }
    }

    fn window(&self, req: &Request, mailbox: &impl Mailbox) -> Result<usize, Refusal> {
        let w = req.window as usize;
        if w >= mailbox.windows() {
            return Err(Status::BAD_REQUEST.into());
        }
        Ok(w)
    }

    fn export(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        resp: &mut Response,
    ) -> Result<(), Refusal> {
        self.require(Role::SOURCE)?;
        let window = self.window(req, mailbox)?;
        let count = req.count as usize;
        if count > self.max_batch as usize
            || count > MAX_BATCH
            || count * record::PAGE_RECORD_SIZE > mailbox.window_size()
        {
            return Err(Status::BATCH_TOO_LARGE.into());
        }
        // Copy the whole list once, then validate every entry before sealing anything.
        let mut raw = [0u8; 8 * MAX_BATCH];
        mailbox.read_control(GPA_LIST_OFFSET, &mut raw[..8 * count]);
        let mut gpas = [(0u64, 0u64); MAX_BATCH];
        let shared = self.shared_list();
        for (i, chunk) in raw[..8 * count].chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            let gpa = u64::from_le_bytes(b);
            let index = self
                .layout
                .migratable(gpa)
                .ok_or(Refusal(Status::BAD_GPA, i as u32))?;
            if shared.is_shared(gpa) {
                return Err(Refusal(Status::BAD_GPA, i as u32));
            }
            gpas[i] = (gpa, index);
        }
        let key = self.lane.key(self.session).ok_or(Status::NO_KEYS)?.clone();
        let mut page = [0u8; PAGE_SIZE];
        let mut at = 0;
        let (mut sealed, mut zeros) = (0u64, 0u64);
        for &(gpa, index) in &gpas[..count] {
            self.memory.read_page(gpa, &mut page);
            let zero = page.iter().all(|&b| b == 0);
            let version = self.versions[index as usize]
                .fetch_add(1, Ordering::AcqRel)
                .wrapping_add(1);
            let header = RecordHeader {
                kind: if zero { Kind::ZERO } else { Kind::PAGE },
                lane: self.lane.lane,
                flags: 0,
                round: req.round,
                gpa,
                version,
                len: if zero { 0 } else { PAGE_SIZE as u32 },
                seq: self.lane.next_seq,
            };
            self.lane.next_seq += 1;
            let payload = if zero { &mut page[..0] } else { &mut page[..] };
            let tag = key.seal(&header, payload);
            mailbox.write_window(window, at, &header.encode());
            mailbox.write_window(window, at + HEADER_SIZE, payload);
            mailbox.write_window(window, at + HEADER_SIZE + payload.len(), &tag);
            at += header.record_size();
            if zero {
                zeros += 1;
            } else {
                sealed += PAGE_SIZE as u64;
            }
        }
        crate::crypto::wipe(&mut page);
        self.session
            .bytes_sealed
            .fetch_add(sealed, Ordering::Relaxed);
        self.session.zero_pages.fetch_add(zeros, Ordering::Relaxed);
        resp.count = count as u32;
        resp.bytes = at as u32;
        Ok(())
    }

    fn import(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        resp: &mut Response,
    ) -> Result<(), Refusal> {
        self.require(Role::TARGET)?;
        let window = self.window(req, mailbox)?;
        let (count, bytes) = (req.count as usize, req.bytes as usize);
        if count > self.max_batch as usize || count > MAX_BATCH || bytes > mailbox.window_size() {
            return Err(Status::BATCH_TOO_LARGE.into());
        }
        let key = self.lane.key(self.session).ok_or(Status::NO_KEYS)?.clone();
        let mut record = [0u8; record::PAGE_RECORD_SIZE];
        let mut page = [0u8; PAGE_SIZE];
        let mut at = 0;
        let (mut opened, mut zeros) = (0u64, 0u64);
        for i in 0..count {
            let bad = |s: Status| Refusal(s, i as u32);
            // Copy the header, check it, then copy the rest of the record once.
            if at + HEADER_SIZE > bytes {
                return Err(bad(Status::BAD_RECORD));
            }
            mailbox.read_window(window, at, &mut record[..HEADER_SIZE]);
            let raw: [u8; HEADER_SIZE] = record[..HEADER_SIZE]
                .try_into()
                .map_err(|_| bad(Status::BAD_RECORD))?;
            let header = RecordHeader::decode(&raw).map_err(|_| bad(Status::BAD_RECORD))?;
            let size = header.record_size();
            if header.kind == Kind::MANIFEST || header.lane != self.lane.lane || at + size > bytes {
                return Err(bad(Status::BAD_RECORD));
            }
            mailbox.read_window(window, at + HEADER_SIZE, &mut record[HEADER_SIZE..size]);
            let (payload, tag) = record[HEADER_SIZE..size].split_at_mut(header.len as usize);
            let tag: [u8; TAG_SIZE] = (&*tag).try_into().map_err(|_| bad(Status::BAD_RECORD))?;
            key.open(&header, payload, &tag)
                .map_err(|_| bad(Status::AUTH_FAILED))?;
            if header.seq != self.lane.next_seq {
                return Err(bad(Status::REORDER));
            }
            let index = self
                .layout
                .migratable(header.gpa)
                .ok_or(bad(Status::BAD_GPA))?;
            if header.version == 0 || header.version & LOCKED != 0 {
                return Err(bad(Status::BAD_RECORD));
            }
            let slot = &self.versions[index as usize];
            let current = slot.load(Ordering::Acquire);
            if current & LOCKED != 0 {
                return Err(bad(Status::BUSY));
            }
            if header.version <= current {
                return Err(bad(Status::REPLAY));
            }
            slot.compare_exchange(
                current,
                current | LOCKED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_err(|_| bad(Status::BUSY))?;
            if header.kind == Kind::ZERO {
                page.fill(0);
                zeros += 1;
            } else {
                page.copy_from_slice(payload);
                opened += PAGE_SIZE as u64;
            }
            self.memory.write_page(header.gpa, &page);
            slot.store(header.version, Ordering::Release);
            self.lane.next_seq += 1;
            at += size;
            resp.count = i as u32 + 1;
        }
        crate::crypto::wipe(&mut page);
        crate::crypto::wipe(&mut record);
        self.session
            .bytes_opened
            .fetch_add(opened, Ordering::Relaxed);
        self.session.zero_pages.fetch_add(zeros, Ordering::Relaxed);
        resp.bytes = at as u32;
        Ok(())
    }

    /// The manifest of the pages as this helper knows them: count and hash, or the index
    /// of a page that makes it impossible (never sealed, or being written).
    fn manifest(&self, require_sealed: bool) -> Result<(u64, [u8; 32]), Refusal> {
        let shared = self.shared_list();
        let mut hash = ManifestHash::new();
        for (gpa, index) in self.layout.migratable_pages() {
            if shared.is_shared(gpa) {
                continue;
            }
            let v = self.versions[index as usize].load(Ordering::Acquire);
            if v & LOCKED != 0 || (require_sealed && v == 0) {
                return Err(Refusal(Status::INCOMPLETE, index as u32));
            }
            hash.add(gpa, v);
        }
        Ok(hash.finish())
    }

    fn finish(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        resp: &mut Response,
    ) -> Result<(), Refusal> {
        let window = self.window(req, mailbox)?;
        let role = Role(self.session.role.load(Ordering::Relaxed));
        self.require(role)?;
        let key = self.lane.key(self.session).ok_or(Status::NO_KEYS)?.clone();
        if role == Role::SOURCE {
            let (pages, hash) = self.manifest(true)?;
            let mut payload = [0u8; MANIFEST_PAYLOAD_SIZE];
            payload[..8].copy_from_slice(&pages.to_le_bytes());
            payload[8..40].copy_from_slice(&hash);
            payload[40..48].copy_from_slice(&(self.lane.next_seq - 1).to_le_bytes());
            let header = RecordHeader {
                kind: Kind::MANIFEST,
                lane: self.lane.lane,
                flags: 0,
                round: req.round,
                gpa: 0,
                version: 0,
                len: MANIFEST_PAYLOAD_SIZE as u32,
                seq: self.lane.next_seq,
            };
            self.lane.next_seq += 1;
            let tag = key.seal(&header, &mut payload);
            mailbox.write_window(window, 0, &header.encode());
            mailbox.write_window(window, HEADER_SIZE, &payload);
            mailbox.write_window(window, HEADER_SIZE + MANIFEST_PAYLOAD_SIZE, &tag);
            resp.count = 1;
            resp.bytes = header.record_size() as u32;
        } else {
            let mut rec = [0u8; record::MANIFEST_RECORD_SIZE];
            if (req.bytes as usize) < rec.len() {
                return Err(Status::BAD_RECORD.into());
            }
            mailbox.read_window(window, 0, &mut rec);
            let raw: [u8; HEADER_SIZE] = rec[..HEADER_SIZE]
                .try_into()
                .map_err(|_| Status::BAD_RECORD)?;
            let header = RecordHeader::decode(&raw).map_err(|_| Status::BAD_RECORD)?;
            if header.kind != Kind::MANIFEST || header.lane != self.lane.lane {
                return Err(Status::BAD_RECORD.into());
            }
            let (payload, tag) = rec[HEADER_SIZE..].split_at_mut(MANIFEST_PAYLOAD_SIZE);
            let tag: [u8; TAG_SIZE] = (&*tag).try_into().map_err(|_| Status::BAD_RECORD)?;
            key.open(&header, payload, &tag)
                .map_err(|_| Status::AUTH_FAILED)?;
            if header.seq != self.lane.next_seq {
                return Err(Status::REORDER.into());
            }
            let (pages, hash) = self.manifest(false)?;
            let mut expect = [0u8; 40];
            expect[..8].copy_from_slice(&pages.to_le_bytes());
            expect[8..].copy_from_slice(&hash);
            if payload[..40] != expect {
                return Err(Status::MANIFEST_MISMATCH.into());
            }
            self.lane.next_seq += 1;
            resp.count = 1;
        }
        self.session
            .state
            .compare_exchange(
                session::KEYED,
                session::FINISHED,
                Ordering::AcqRel,
                Ordering::Relaxed,
            )
            .map_err(|_| Status::BUSY)?;
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Refusal> {
        let s = &self.session.state;
        let from = s.load(Ordering::Acquire);
        if from == session::DERIVING || from == session::RESETTING {
            return Err(Status::BUSY.into());
        }
        s.compare_exchange(
            from,
            session::RESETTING,
            Ordering::AcqRel,
            Ordering::Relaxed,
        )
        .map_err(|_| Status::BUSY)?;
        for v in self.versions {
            v.store(0, Ordering::Relaxed);
        }
        self.session.wipe();
        *self.lane = LaneState::new(self.lane.lane);
        Ok(())
    }
}
