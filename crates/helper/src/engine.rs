//! Serving one request: the helper's request loop body, and its state machine.
//!
//! Each helper vCPU runs [`Helper::serve`] for every request the VMM leaves in its
//! mailbox. The session's phase (helper-abi `Phase`, kept in the [`crate::gate::Gate`])
//! decides what is allowed:
//!
//! ```text
//!  source:  IDLE --HS_START--> SOURCE_STARTED --HS_FINISH (target's MAC ok)--> SOURCE_KEYED
//!           SOURCE_KEYED: EXPORT, SEAL_BLOB  --FINISH--> SOURCE_MANIFESTED
//!           SOURCE_MANIFESTED --COMMIT (flag "migrated out")--> SOURCE_COMMITTED
//!           commitment --RELEASE (abort token of that session)--> cleared
//!  target:  IDLE --HS_RESPOND (incoming only)--> TARGET_RESPONDED
//!           TARGET_RESPONDED --HS_CONFIRM (source's MAC ok)--> TARGET_KEYED
//!           TARGET_KEYED: IMPORT, OPEN_BLOB  --FINISH (manifest ok)--> TARGET_VERIFIED
//!           TARGET_VERIFIED --COMMIT (source's commit ok)--> TARGET_COMMITTED (not
//!             incoming any more: nothing is ever imported again)
//!           TARGET_RESPONDED/KEYED/VERIFIED --ABORT--> TARGET_ABORTED (never commits)
//!  any phase, nothing inside --RESET--> IDLE (keys, lanes, versions wiped; the
//!           commitment, the "migrated out" flag and the incoming flag stay)
//! ```
//!
//! Every refusal is a status; nothing waits. The rules on data:
//! - GPAs must be page-aligned RAM outside the helper region; EXPORT also refuses pages
//!   the guest shares with the host (those travel in the clear, outside the helper).
//! - Every record is copied into private memory before it is checked; only records that
//!   authenticate, carry their lane's next sequence number, and (pages) a version newer
//!   than any accepted for their page are acted on, and pages are written only there.
//! - Plaintext never touches shared memory: pages are copied into a private buffer,
//!   encrypted there, and only ciphertext goes to the window.
//! - The manifest covers every private page, the number of records and each lane's last
//!   sequence number; the target accepts it only if all of that matches what it
//!   accepted.

use crate::{
    crypto::{self, ManifestHash, RecordKey},
    gate::{Alone, Closed, Shared},
    keys::{self, BlobMac, Ephemeral, Side, Transcript},
    layout::HelperLayout,
    secret::find_migration_secret,
    session::{LaneSlot, LaneState, SessionState},
    shared_list::SharedList,
};
use core::sync::atomic::{AtomicU32, Ordering};
use helper_abi::{
    handshake::{KeyReply, KeyShare, MAC_LEN},
    mailbox::{
        flags, info_flags, GcmKernel, Op, Origin, Phase, Request, Response, Status,
        GPA_LIST_OFFSET, MESSAGE_OFFSET, REQUEST_OFFSET, RESPONSE_OFFSET,
    },
    record::{
        self, Kind, ManifestPayload, RecordHeader, COMMIT_PAYLOAD_SIZE, COMMIT_RECORD_SIZE,
        HEADER_SIZE, MANIFEST_PAYLOAD_SIZE, MANIFEST_RECORD_SIZE, TAG_SIZE,
    },
    ABI_VERSION, MAX_BATCH, MAX_LANES, PAGE_SIZE,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

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
    /// The guest as the firmware described it at boot.
    pub layout: &'a HelperLayout,
    /// Guest memory.
    pub memory: &'a M,
    /// The session all helper vCPUs share.
    pub session: &'a SessionState,
    /// Per-page versions (index: RAM page number), shared by all helper vCPUs.
    pub versions: &'a [AtomicU32],
    /// This vCPU's lane id and mailbox slot.
    pub lane: &'a LaneState,
    /// Randomness for nonces and ephemeral keys.
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

/// What a request leaves in the message area.
struct Message {
    bytes: [u8; 128],
    len: usize,
}

impl Message {
    fn put(&mut self, data: &[u8]) {
        let end = (self.len + data.len()).min(self.bytes.len());
        let n = end - self.len;
        self.bytes[self.len..end].copy_from_slice(&data[..n]);
        self.len = end;
    }
}

/// The status for a request whose phase does not fit.
fn wrong_phase(phase: Phase) -> Status {
    match phase {
        Phase::IDLE | Phase::SOURCE_STARTED | Phase::TARGET_RESPONDED => Status::NO_KEYS,
        Phase::SOURCE_COMMITTED => Status::MIGRATED_OUT,
        _ => Status::BAD_STATE,
    }
}

fn closed(c: Closed) -> Refusal {
    match c {
        Closed::Busy => Status::BUSY.into(),
        Closed::Phase(p) => wrong_phase(p).into(),
    }
}

/// Holds a target lane while a request opens its records; frees it on drop.
struct LaneHold<'a>(&'a LaneSlot);

impl<'a> LaneHold<'a> {
    fn take(slot: &'a LaneSlot) -> Result<LaneHold<'a>, Refusal> {
        slot.busy
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .map_err(|_| Status::BUSY)?;
        Ok(LaneHold(slot))
    }
}

impl Drop for LaneHold<'_> {
    fn drop(&mut self) {
        self.0.busy.store(0, Ordering::Release);
    }
}

impl<'a, M: GuestMemory, E: Entropy> Helper<'a, M, E> {
    /// Reads the request from `mailbox`, carries it out, writes the response (and the
    /// message, if the request produced one).
    pub fn serve(&mut self, mailbox: &impl Mailbox) {
        let mut raw = [0u8; Request::SIZE];
        mailbox.read_control(REQUEST_OFFSET, &mut raw);
        let req = Request::decode(&raw);
        self.session.requests.fetch_add(1, Ordering::Relaxed);
        let mut resp = Response {
            id: req.id,
            lane: u32::from(self.lane.lane()),
            slot: self.lane.slot(),
            ..Response::default()
        };
        let mut msg = Message {
            bytes: [0; 128],
            len: 0,
        };
        // Flags each operation may carry; any other bit is refused.
        let allowed_flags = match Op(req.op) {
            Op::EXPORT => flags::ZERO_RECORDS,
            Op::HS_START | Op::HS_RESPOND => flags::KERNEL_MASK,
            _ => 0,
        };
        let result = if req.reserved != 0 || req.flags & !allowed_flags != 0 {
            Err(Status::BAD_REQUEST.into())
        } else {
            match Op(req.op) {
                Op::INFO => {
                    self.info(&mut resp, &mut msg);
                    Ok(())
                }
                Op::EXPORT => self.export(&req, mailbox, &mut resp),
                Op::IMPORT => self.import(&req, mailbox, &mut resp),
                Op::FINISH => self.finish(&req, mailbox, &mut resp),
                Op::RESET => self.reset(),
                Op::HS_START => self.hs_start(&req, mailbox, &mut msg, &mut resp),
                Op::HS_RESPOND => self.hs_respond(&req, mailbox, &mut msg, &mut resp),
                Op::HS_FINISH => self.hs_finish(&req, mailbox, &mut msg),
                Op::HS_CONFIRM => self.hs_confirm(&req, mailbox, &mut msg),
                Op::SEAL_BLOB => self.seal_blob(&req, mailbox, &mut resp),
                Op::OPEN_BLOB => self.open_blob(&req, mailbox, &mut resp),
                Op::COMMIT => self.commit(&req, mailbox, &mut resp, &mut msg),
                Op::ABORT => self.abort(&mut msg),
                Op::RELEASE => self.release(&req, mailbox),
                _ => Err(Status::BAD_REQUEST.into()),
            }
        };
        if let Err(Refusal(status, index)) = result {
            resp.status = status.0;
            resp.index = index;
        }
        self.stats(&mut resp);
        resp.phase = self.session.gate.phase().0;
        if msg.len > 0 {
            mailbox.write_control(MESSAGE_OFFSET, &msg.bytes[..msg.len]);
            resp.message_len = msg.len as u32;
        }
        msg.bytes.zeroize();
        mailbox.write_control(RESPONSE_OFFSET, &resp.encode());
    }

    /// Answers the request in `mailbox` with `status` and `index` without acting on it:
    /// nothing of the session, the versions or the guest changes, nothing is sealed or
    /// opened, the message area is not written. What the firmware does when the helper's
    /// self-check fails ([`crate::integrity`]: `Status::CORRUPTED`, the index naming the
    /// structure).
    pub fn refuse(&self, mailbox: &impl Mailbox, status: Status, index: u32) {
        let mut raw = [0u8; Request::SIZE];
        mailbox.read_control(REQUEST_OFFSET, &mut raw);
        let req = Request::decode(&raw);
        self.session.requests.fetch_add(1, Ordering::Relaxed);
        let mut resp = Response {
            id: req.id,
            lane: u32::from(self.lane.lane()),
            slot: self.lane.slot(),
            status: status.0,
            index,
            ..Response::default()
        };
        self.stats(&mut resp);
        resp.phase = self.session.gate.phase().0;
        mailbox.write_control(RESPONSE_OFFSET, &resp.encode());
    }

    fn stats(&self, resp: &mut Response) {
        let s = self.session;
        resp.requests = s.requests.load(Ordering::Relaxed);
        resp.bytes_sealed = s.bytes_sealed.load(Ordering::Relaxed);
        resp.bytes_opened = s.bytes_opened.load(Ordering::Relaxed);
        resp.zero_pages = s.zero_pages.load(Ordering::Relaxed);
    }

    fn info(&self, resp: &mut Response, msg: &mut Message) {
        resp.abi_version = u32::from(ABI_VERSION);
        resp.max_batch = self.max_batch;
        resp.region_base = self.region.0;
        resp.region_size = self.region.1;
        resp.ram_pages = self.layout.pages();
        let c = &self.session.commitment;
        let committed = c.is_committed();
        resp.info_flags = if self.session.incoming() {
            info_flags::INCOMING
        } else {
            0
        } | if committed {
            info_flags::MIGRATED_OUT
        } else {
            0
        };
        msg.put(&self.layout.firmware_hash);
        msg.put(&if committed {
            c.transcript.load()
        } else {
            [0; 32]
        });
    }

    fn shared(&self, allowed: impl Fn(Phase) -> bool) -> Result<Shared<'a>, Refusal> {
        let session: &'a SessionState = self.session;
        session.gate.enter_shared(allowed).map_err(closed)
    }

    /// Sole use of a session that must not exist yet (the handshake's first step).
    fn alone_idle(&self) -> Result<Alone<'a>, Refusal> {
        let session: &'a SessionState = self.session;
        session
            .gate
            .enter_alone(|p| p == Phase::IDLE)
            .map_err(|c| match c {
                Closed::Busy => Status::BUSY.into(),
                Closed::Phase(Phase::SOURCE_COMMITTED) => Status::MIGRATED_OUT.into(),
                // Another session exists: RESET first.
                Closed::Phase(_) => Status::BAD_STATE.into(),
            })
    }

    fn alone(&self, allowed: impl Fn(Phase) -> bool) -> Result<Alone<'a>, Refusal> {
        let session: &'a SessionState = self.session;
        session.gate.enter_alone(allowed).map_err(closed)
    }

    /// Copies the request's message (exactly `N` bytes) out of the control page.
    fn message<const N: usize>(
        &self,
        req: &Request,
        mailbox: &impl Mailbox,
    ) -> Result<[u8; N], Refusal> {
        if req.bytes as usize != N {
            return Err(Status::BAD_REQUEST.into());
        }
        let mut m = [0u8; N];
        mailbox.read_control(MESSAGE_OFFSET, &mut m);
        Ok(m)
    }

    fn migration_secret(&self) -> Option<[u8; 32]> {
        let (base, size) = self.layout.secret_area;
        let mut page = [0u8; PAGE_SIZE];
        if size == 0 || size > PAGE_SIZE as u64 || base % PAGE_SIZE as u64 != 0 {
            return None;
        }
        self.memory.read_page(base, &mut page);
        let secret = find_migration_secret(&page[..size as usize]);
        page.zeroize();
        secret
    }

    fn shared_list(&self) -> SharedList {
        let mut page = [0u8; PAGE_SIZE];
        self.memory
            .read_page(self.layout.shared_list_gpa, &mut page);
        SharedList::decode(&page)
    }

    fn window(&self, req: &Request, mailbox: &impl Mailbox) -> Result<usize, Refusal> {
        let w = req.window as usize;
        if w >= mailbox.windows() {
            return Err(Status::BAD_REQUEST.into());
        }
        Ok(w)
    }

    fn record_key(&self) -> RecordKey {
        let mut key = self.session.record_key.load();
        let k = RecordKey::for_session(
            &key,
            self.session.session_id.load(),
            GcmKernel(self.session.kernel.load(Ordering::Relaxed)),
        );
        key.zeroize();
        k
    }

    /// The kernel a handshake request names in its flags, checked (see
    /// [`crypto::session_kernel`]).
    fn requested_kernel(&self, req: &Request) -> Result<GcmKernel, Refusal> {
        let code = GcmKernel::from_flags(req.flags);
        match crypto::session_kernel(code) {
            Some(k) if code == GcmKernel::BEST => Ok(crypto::code_of(k)),
            Some(_) => Ok(code),
            None => Err(Status::UNSUPPORTED_KERNEL.into()),
        }
    }

    fn own_lane(&self) -> &LaneSlot {
        &self.session.lanes[usize::from(self.lane.lane())]
    }

    /// The next sequence number of this vCPU's lane (only this vCPU seals on it).
    fn next_seq(&self) -> u64 {
        self.own_lane().seq.fetch_add(1, Ordering::AcqRel) + 1
    }

    fn clear_versions(&self) {
        for v in self.versions {
            v.store(0, Ordering::Relaxed);
        }
    }

    // ---- handshake ------------------------------------------------------------------

    fn hs_start(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        msg: &mut Message,
        resp: &mut Response,
    ) -> Result<(), Refusal> {
        let mut alone = self.alone_idle()?;
        if self.session.commitment.is_committed() {
            return Err(Status::MIGRATED_OUT.into());
        }
        if self.session.incoming() {
            // A guest waiting for its own state has nothing to send.
            return Err(Status::BAD_STATE.into());
        }
        let kernel = self.requested_kernel(req)?;
        let hello_hash: [u8; 32] = self.message(req, mailbox)?;
        let mut secret = self.migration_secret().ok_or(Status::NO_SECRET)?;
        secret.zeroize();
        let mut nonce = [0u8; 32];
        let mut random = [0u8; 32];
        if !self.entropy.fill(&mut nonce) || !self.entropy.fill(&mut random) {
            random.zeroize();
            return Err(Status::NO_ENTROPY.into());
        }
        let eph = Ephemeral::from_random(&mut random);
        let s = self.session;
        s.wipe();
        s.session_id.store_from(&req.session_id);
        s.kernel.store(kernel.0, Ordering::Relaxed);
        resp.kernel = kernel.0;
        s.hello_hash.store_from(&hello_hash);
        s.own_nonce.store_from(&nonce);
        s.own_share.store_from(&eph.share);
        let mut esk = eph.secret();
        s.ephemeral.store_from(&esk);
        esk.zeroize();
        msg.put(
            &KeyShare {
                nonce,
                share: eph.share,
            }
            .encode(),
        );
        alone.set(Phase::SOURCE_STARTED);
        Ok(())
    }

    fn hs_respond(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        msg: &mut Message,
        resp: &mut Response,
    ) -> Result<(), Refusal> {
        let mut alone = self.alone_idle()?;
        if !self.session.incoming() {
            return Err(Status::NOT_INCOMING.into());
        }
        let kernel = self.requested_kernel(req)?;
        let m: [u8; 32 + KeyShare::SIZE] = self.message(req, mailbox)?;
        let mut hello_hash = [0u8; 32];
        hello_hash.copy_from_slice(&m[..32]);
        let share_bytes: [u8; KeyShare::SIZE] =
            m[32..].try_into().map_err(|_| Status::BAD_REQUEST)?;
        let peer = KeyShare::decode(&share_bytes);
        let mut secret = self.migration_secret().ok_or(Status::NO_SECRET)?;
        let owner = keys::owner_keys(&secret);
        secret.zeroize();
        let mut nonce = [0u8; 32];
        let mut random = [0u8; 32];
        if !self.entropy.fill(&mut nonce) || !self.entropy.fill(&mut random) {
            random.zeroize();
            return Err(Status::NO_ENTROPY.into());
        }
        let eph = Ephemeral::from_random(&mut random);
        let share = eph.share;
        let z = eph.agree(&peer.share).ok_or(Status::WEAK_KEY)?;
        let th = Transcript {
            session_id: req.session_id,
            hello_hash,
            firmware_hash: self.layout.firmware_hash,
            source_nonce: peer.nonce,
            source_share: peer.share,
            target_nonce: nonce,
            target_share: share,
        }
        .hash();
        let session_keys = keys::session_keys(&owner, &z, &th);
        drop(z);
        let mac = keys::handshake_mac(&owner, Side::Target, &th);
        let expected = keys::handshake_mac(&owner, Side::Source, &th);
        let s = self.session;
        s.wipe();
        self.clear_versions();
        s.session_id.store_from(&req.session_id);
        s.kernel.store(kernel.0, Ordering::Relaxed);
        resp.kernel = kernel.0;
        s.transcript.store_from(&th);
        s.record_key.store_from(&session_keys.record);
        s.blob_key.store_from(&session_keys.blob);
        s.abort_key.store_from(&session_keys.abort);
        s.expected_mac.store_from(&expected);
        s.generation.fetch_add(1, Ordering::Relaxed);
        msg.put(&KeyReply { nonce, share, mac }.encode());
        alone.set(Phase::TARGET_RESPONDED);
        Ok(())
    }

    fn hs_finish(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        msg: &mut Message,
    ) -> Result<(), Refusal> {
        let mut alone = self.alone(|p| p == Phase::SOURCE_STARTED)?;
        let reply = KeyReply::decode(&self.message(req, mailbox)?);
        let s = self.session;
        // The ephemeral secret is used once, whatever happens next: a failed handshake
        // leaves nothing to retry with.
        let mut esk = s.ephemeral.load();
        s.ephemeral.wipe();
        let eph = Ephemeral::from_secret(esk);
        esk.zeroize();
        alone.set(Phase::IDLE);
        let fail = |status: Status| {
            s.wipe();
            Refusal::from(status)
        };
        let mut secret = self
            .migration_secret()
            .ok_or_else(|| fail(Status::NO_SECRET))?;
        let owner = keys::owner_keys(&secret);
        secret.zeroize();
        let z = eph
            .agree(&reply.share)
            .ok_or_else(|| fail(Status::WEAK_KEY))?;
        let th = Transcript {
            session_id: s.session_id.load(),
            hello_hash: s.hello_hash.load(),
            firmware_hash: self.layout.firmware_hash,
            source_nonce: s.own_nonce.load(),
            source_share: s.own_share.load(),
            target_nonce: reply.nonce,
            target_share: reply.share,
        }
        .hash();
        let expected = keys::handshake_mac(&owner, Side::Target, &th);
        if !keys::tags_equal(&expected, &reply.mac) {
            return Err(fail(Status::BAD_PEER));
        }
        let session_keys = keys::session_keys(&owner, &z, &th);
        drop(z);
        let mac = keys::handshake_mac(&owner, Side::Source, &th);
        self.clear_versions();
        s.restart_lanes();
        s.transcript.store_from(&th);
        s.record_key.store_from(&session_keys.record);
        s.blob_key.store_from(&session_keys.blob);
        s.abort_key.store_from(&session_keys.abort);
        s.generation.fetch_add(1, Ordering::Relaxed);
        msg.put(&mac);
        msg.put(&th);
        alone.set(Phase::SOURCE_KEYED);
        Ok(())
    }

    fn hs_confirm(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        msg: &mut Message,
    ) -> Result<(), Refusal> {
        let mut alone = self.alone(|p| p == Phase::TARGET_RESPONDED)?;
        let mac: [u8; MAC_LEN] = self.message(req, mailbox)?;
        let s = self.session;
        let expected = s.expected_mac.load();
        s.expected_mac.wipe();
        if !keys::tags_equal(&expected, &mac) {
            s.wipe();
            alone.set(Phase::IDLE);
            return Err(Status::BAD_PEER.into());
        }
        msg.put(&s.transcript.load());
        alone.set(Phase::TARGET_KEYED);
        Ok(())
    }

    // ---- pages ----------------------------------------------------------------------

    fn export(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        resp: &mut Response,
    ) -> Result<(), Refusal> {
        let _inside = self.shared(|p| p == Phase::SOURCE_KEYED)?;
        let window = self.window(req, mailbox)?;
        if req.flags & !flags::ZERO_RECORDS != 0 {
            return Err(Status::BAD_REQUEST.into());
        }
        let zero_records = req.flags & flags::ZERO_RECORDS != 0;
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
        let key = self.record_key();
        let mut page = [0u8; PAGE_SIZE];
        let mut at = 0;
        let (mut sealed, mut zeros) = (0u64, 0u64);
        for &(gpa, index) in &gpas[..count] {
            self.memory.read_page(gpa, &mut page);
            let zero = zero_records && page.iter().all(|&b| b == 0);
            let version = self.versions[index as usize]
                .fetch_add(1, Ordering::AcqRel)
                .wrapping_add(1);
            let header = RecordHeader {
                kind: if zero { Kind::ZERO } else { Kind::PAGE },
                lane: self.lane.lane(),
                flags: 0,
                round: req.round,
                gpa,
                version,
                len: if zero { 0 } else { PAGE_SIZE as u32 },
                seq: self.next_seq(),
            };
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
        page.zeroize();
        let s = self.session;
        s.records.fetch_add(count as u64, Ordering::AcqRel);
        s.bytes_sealed.fetch_add(sealed, Ordering::Relaxed);
        s.zero_pages.fetch_add(zeros, Ordering::Relaxed);
        resp.count = count as u32;
        resp.bytes = at as u32;
        Ok(())
    }

    /// Reads and decodes the header at `at` of `window[..bytes]`.
    fn header_at(
        &self,
        mailbox: &impl Mailbox,
        window: usize,
        at: usize,
        bytes: usize,
    ) -> Result<RecordHeader, Status> {
        if at + HEADER_SIZE > bytes {
            return Err(Status::BAD_RECORD);
        }
        let mut raw = [0u8; HEADER_SIZE];
        mailbox.read_window(window, at, &mut raw);
        let header = RecordHeader::decode(&raw).map_err(|_| Status::BAD_RECORD)?;
        if at + header.record_size() > bytes {
            return Err(Status::BAD_RECORD);
        }
        Ok(header)
    }

    fn import(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        resp: &mut Response,
    ) -> Result<(), Refusal> {
        let _inside = self.shared(|p| p == Phase::TARGET_KEYED)?;
        if !self.session.incoming() {
            return Err(Status::NOT_INCOMING.into());
        }
        let window = self.window(req, mailbox)?;
        let (count, bytes) = (req.count as usize, req.bytes as usize);
        if count > self.max_batch as usize || count > MAX_BATCH || bytes > mailbox.window_size() {
            return Err(Status::BATCH_TOO_LARGE.into());
        }
        if count == 0 {
            return Ok(());
        }
        let key = self.record_key();
        let first = self
            .header_at(mailbox, window, 0, bytes)
            .map_err(|s| Refusal(s, 0))?;
        let lane = &self.session.lanes[usize::from(first.lane)];
        let _hold = LaneHold::take(lane)?;
        let mut record = [0u8; record::PAGE_RECORD_SIZE];
        let mut page = [0u8; PAGE_SIZE];
        let mut at = 0;
        let (mut opened, mut zeros) = (0u64, 0u64);
        let result = (|| {
            for i in 0..count {
                let bad = |s: Status| Refusal(s, i as u32);
                // Copy the header, check it, then copy the rest of the record once.
                let header = self.header_at(mailbox, window, at, bytes).map_err(bad)?;
                if !header.kind.is_page() || header.lane != first.lane {
                    return Err(bad(Status::BAD_RECORD));
                }
                let size = header.record_size();
                record[..HEADER_SIZE].copy_from_slice(&header.encode());
                mailbox.read_window(window, at + HEADER_SIZE, &mut record[HEADER_SIZE..size]);
                let (payload, tag) = record[HEADER_SIZE..size].split_at_mut(header.len as usize);
                let tag: [u8; TAG_SIZE] =
                    (&*tag).try_into().map_err(|_| bad(Status::BAD_RECORD))?;
                key.open(&header, payload, &tag)
                    .map_err(|_| bad(Status::AUTH_FAILED))?;
                if header.seq != lane.seq.load(Ordering::Acquire) + 1 {
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
                lane.seq.store(header.seq, Ordering::Release);
                self.session.records.fetch_add(1, Ordering::AcqRel);
                at += size;
                resp.count = i as u32 + 1;
            }
            Ok(())
        })();
        page.zeroize();
        record.zeroize();
        let s = self.session;
        s.bytes_opened.fetch_add(opened, Ordering::Relaxed);
        s.zero_pages.fetch_add(zeros, Ordering::Relaxed);
        resp.bytes = at as u32;
        result
    }

    // ---- blobs ----------------------------------------------------------------------

    fn seal_blob(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        resp: &mut Response,
    ) -> Result<(), Refusal> {
        let _inside = self.shared(|p| p == Phase::SOURCE_KEYED)?;
        let window = self.window(req, mailbox)?;
        let kind = u8::try_from(req.kind)
            .map(Kind)
            .map_err(|_| Status::BAD_REQUEST)?;
        if !kind.is_blob() || (kind != Kind::VCPU_STATE && req.index != 0) {
            return Err(Status::BAD_REQUEST.into());
        }
        // The shared list is the guest's own (private) record: the helper reads it
        // itself; the other blobs are the VMM's, placed in the window.
        let mut list = [0u8; PAGE_SIZE];
        let len = if kind == Kind::SHARED_LIST {
            self.shared_list().encode_compact(&mut list)
        } else {
            req.bytes as usize
        };
        let (_, max) = kind.payload_bounds().ok_or(Status::BAD_REQUEST)?;
        if len > max || HEADER_SIZE + len + TAG_SIZE > mailbox.window_size() {
            return Err(Status::BATCH_TOO_LARGE.into());
        }
        let header = RecordHeader {
            kind,
            lane: self.lane.lane(),
            flags: 0,
            round: req.round,
            gpa: u64::from(req.index),
            version: 0,
            len: len as u32,
            seq: self.next_seq(),
        };
        let mut key = self.session.blob_key.load();
        let mut mac = BlobMac::new(&key, &header);
        key.zeroize();
        if kind == Kind::SHARED_LIST {
            mac.update(&list[..len]);
            mailbox.write_window(window, HEADER_SIZE, &list[..len]);
        } else {
            // Copied in pieces: each byte is read once, and the tag covers what was read.
            let mut chunk = [0u8; PAGE_SIZE];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(PAGE_SIZE);
                mailbox.read_window(window, HEADER_SIZE + at, &mut chunk[..n]);
                mac.update(&chunk[..n]);
                at += n;
            }
        }
        mailbox.write_window(window, 0, &header.encode());
        mailbox.write_window(window, HEADER_SIZE + len, &mac.finish());
        self.session.records.fetch_add(1, Ordering::AcqRel);
        resp.count = 1;
        resp.bytes = header.record_size() as u32;
        Ok(())
    }

    fn open_blob(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        resp: &mut Response,
    ) -> Result<(), Refusal> {
        let _inside = self.shared(|p| p == Phase::TARGET_KEYED)?;
        let window = self.window(req, mailbox)?;
        let bytes = req.bytes as usize;
        if bytes > mailbox.window_size() {
            return Err(Status::BATCH_TOO_LARGE.into());
        }
        let header = self.header_at(mailbox, window, 0, bytes)?;
        if !header.kind.is_blob() || header.record_size() != bytes {
            return Err(Status::BAD_RECORD.into());
        }
        let index = u32::try_from(header.gpa).map_err(|_| Status::BAD_RECORD)?;
        if header.version != 0 || (header.kind != Kind::VCPU_STATE && index != 0) {
            return Err(Status::BAD_RECORD.into());
        }
        let lane = &self.session.lanes[usize::from(header.lane)];
        let _hold = LaneHold::take(lane)?;
        let len = header.len as usize;
        let mut key = self.session.blob_key.load();
        let mut mac = BlobMac::new(&key, &header);
        key.zeroize();
        let mut list = [0u8; PAGE_SIZE];
        let mut chunk = [0u8; PAGE_SIZE];
        let mut at = 0;
        while at < len {
            let n = (len - at).min(PAGE_SIZE);
            mailbox.read_window(window, HEADER_SIZE + at, &mut chunk[..n]);
            mac.update(&chunk[..n]);
            if header.kind == Kind::SHARED_LIST {
                // A list is at most one page: this is its only chunk.
                list[..n].copy_from_slice(&chunk[..n]);
            }
            at += n;
        }
        let mut tag = [0u8; TAG_SIZE];
        mailbox.read_window(window, HEADER_SIZE + len, &mut tag);
        if !keys::tags_equal(&mac.finish(), &tag) {
            return Err(Status::AUTH_FAILED.into());
        }
        if header.seq != lane.seq.load(Ordering::Acquire) + 1 {
            return Err(Status::REORDER.into());
        }
        if header.kind == Kind::SHARED_LIST && SharedList::parse(&list[..len]).is_none() {
            return Err(Status::BAD_RECORD.into());
        }
        lane.seq.store(header.seq, Ordering::Release);
        self.session.records.fetch_add(1, Ordering::AcqRel);
        resp.count = 1;
        resp.bytes = len as u32;
        resp.kind = u32::from(header.kind.0);
        resp.index = index;
        Ok(())
    }

    // ---- the end of a session -------------------------------------------------------

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

    /// Reads an encrypted record of `kind` (exactly `N` bytes) from `window`, opens it
    /// and checks it is its lane's next; returns its header and payload.
    fn open_final<const N: usize>(
        &self,
        req: &Request,
        mailbox: &impl Mailbox,
        kind: Kind,
    ) -> Result<(RecordHeader, [u8; N]), Refusal> {
        let window = self.window(req, mailbox)?;
        if req.bytes as usize != N {
            return Err(Status::BAD_RECORD.into());
        }
        let mut rec = [0u8; N];
        mailbox.read_window(window, 0, &mut rec);
        let raw: [u8; HEADER_SIZE] = rec[..HEADER_SIZE]
            .try_into()
            .map_err(|_| Status::BAD_RECORD)?;
        let header = RecordHeader::decode(&raw).map_err(|_| Status::BAD_RECORD)?;
        if header.kind != kind || header.record_size() != N {
            return Err(Status::BAD_RECORD.into());
        }
        let (payload, tag) = rec[HEADER_SIZE..].split_at_mut(header.len as usize);
        let tag: [u8; TAG_SIZE] = (&*tag).try_into().map_err(|_| Status::BAD_RECORD)?;
        self.record_key()
            .open(&header, payload, &tag)
            .map_err(|_| Status::AUTH_FAILED)?;
        let lane = &self.session.lanes[usize::from(header.lane)];
        if header.seq != lane.seq.load(Ordering::Acquire) + 1 {
            return Err(Status::REORDER.into());
        }
        Ok((header, rec))
    }

    /// Seals a final record (manifest, commit) on this vCPU's lane into `window`.
    fn seal_final(
        &self,
        mailbox: &impl Mailbox,
        window: usize,
        kind: Kind,
        round: u32,
        payload: &mut [u8],
        resp: &mut Response,
    ) {
        let header = RecordHeader {
            kind,
            lane: self.lane.lane(),
            flags: 0,
            round,
            gpa: 0,
            version: 0,
            len: payload.len() as u32,
            seq: self.next_seq(),
        };
        let tag = self.record_key().seal(&header, payload);
        mailbox.write_window(window, 0, &header.encode());
        mailbox.write_window(window, HEADER_SIZE, payload);
        mailbox.write_window(window, HEADER_SIZE + payload.len(), &tag);
        resp.count = 1;
        resp.bytes = header.record_size() as u32;
    }

    fn finish(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        resp: &mut Response,
    ) -> Result<(), Refusal> {
        let mut alone = self.alone(|p| p == Phase::SOURCE_KEYED || p == Phase::TARGET_KEYED)?;
        let s = self.session;
        if alone.from() == Phase::SOURCE_KEYED {
            let window = self.window(req, mailbox)?;
            let (pages, pages_hash) = self.manifest(true)?;
            let manifest = ManifestPayload {
                pages,
                pages_hash,
                records: s.records.load(Ordering::Acquire),
                last_seq: core::array::from_fn(|i| s.lanes[i].seq.load(Ordering::Acquire)),
            };
            let mut payload = manifest.encode();
            let digest: [u8; 32] = Sha256::digest(payload).into();
            s.manifest_digest.store_from(&digest);
            self.seal_final(
                mailbox,
                window,
                Kind::MANIFEST,
                req.round,
                &mut payload,
                resp,
            );
            alone.set(Phase::SOURCE_MANIFESTED);
        } else {
            let (header, rec) =
                self.open_final::<MANIFEST_RECORD_SIZE>(req, mailbox, Kind::MANIFEST)?;
            let payload: [u8; MANIFEST_PAYLOAD_SIZE] = rec
                [HEADER_SIZE..HEADER_SIZE + MANIFEST_PAYLOAD_SIZE]
                .try_into()
                .map_err(|_| Status::BAD_RECORD)?;
            let theirs = ManifestPayload::decode(&payload);
            let lanes_match = (0..MAX_LANES)
                .all(|i| theirs.last_seq[i] == s.lanes[i].seq.load(Ordering::Acquire));
            if !lanes_match || theirs.records != s.records.load(Ordering::Acquire) {
                return Err(Status::MANIFEST_MISMATCH.into());
            }
            let (pages, pages_hash) = self.manifest(false)?;
            if (pages, pages_hash) != (theirs.pages, theirs.pages_hash) {
                return Err(Status::MANIFEST_MISMATCH.into());
            }
            s.lanes[usize::from(header.lane)]
                .seq
                .store(header.seq, Ordering::Release);
            let digest: [u8; 32] = Sha256::digest(payload).into();
            s.manifest_digest.store_from(&digest);
            resp.count = 1;
            alone.set(Phase::TARGET_VERIFIED);
        }
        Ok(())
    }

    fn commit(
        &mut self,
        req: &Request,
        mailbox: &impl Mailbox,
        resp: &mut Response,
        msg: &mut Message,
    ) -> Result<(), Refusal> {
        let mut alone =
            self.alone(|p| p == Phase::SOURCE_MANIFESTED || p == Phase::TARGET_VERIFIED)?;
        let s = self.session;
        let th = s.transcript.load();
        if alone.from() == Phase::SOURCE_MANIFESTED {
            let window = self.window(req, mailbox)?;
            let flag = self.layout.migration_state_gpa;
            if !flag.is_multiple_of(PAGE_SIZE as u64) || self.layout.page_index(flag).is_none() {
                // Without a flag the source could run on after the target: never commit.
                return Err(Status::BAD_STATE.into());
            }
            // The flag and the commitment exist before the commit record leaves.
            let mut abort_key = s.abort_key.load();
            let token = keys::target_abort_token(&abort_key, &th);
            abort_key.zeroize();
            let c = &s.commitment;
            c.transcript.store_from(&th);
            c.target_token.store_from(&token);
            c.committed.store(1, Ordering::Release);
            let mut page = [0u8; PAGE_SIZE];
            page[..8].copy_from_slice(&guest_abi::migration::MIGRATED_OUT.to_le_bytes());
            page[8..40].copy_from_slice(&th);
            self.memory.write_page(flag, &page);
            let mut payload = s.manifest_digest.load();
            self.seal_final(mailbox, window, Kind::COMMIT, req.round, &mut payload, resp);
            alone.set(Phase::SOURCE_COMMITTED);
        } else {
            let (header, rec) =
                self.open_final::<COMMIT_RECORD_SIZE>(req, mailbox, Kind::COMMIT)?;
            let payload = &rec[HEADER_SIZE..HEADER_SIZE + COMMIT_PAYLOAD_SIZE];
            if !keys::tags_equal(payload, &s.manifest_digest.load()) {
                return Err(Status::MANIFEST_MISMATCH.into());
            }
            s.lanes[usize::from(header.lane)]
                .seq
                .store(header.seq, Ordering::Release);
            // From here the guest may run: nothing is ever imported into it again.
            s.clear_incoming();
            resp.count = 1;
            alone.set(Phase::TARGET_COMMITTED);
        }
        msg.put(&th);
        Ok(())
    }

    fn abort(&mut self, msg: &mut Message) -> Result<(), Refusal> {
        let mut alone = self.alone(|p| {
            matches!(
                p,
                Phase::TARGET_RESPONDED
                    | Phase::TARGET_KEYED
                    | Phase::TARGET_VERIFIED
                    | Phase::TARGET_ABORTED
            )
        })?;
        let s = self.session;
        let mut abort_key = s.abort_key.load();
        msg.put(&keys::target_abort_token(&abort_key, &s.transcript.load()));
        abort_key.zeroize();
        alone.set(Phase::TARGET_ABORTED);
        Ok(())
    }

    fn release(&mut self, req: &Request, mailbox: &impl Mailbox) -> Result<(), Refusal> {
        let mut alone = self.alone(|p| p == Phase::IDLE || p == Phase::SOURCE_COMMITTED)?;
        let s = self.session;
        let c = &s.commitment;
        if !c.is_committed() {
            return Err(Status::NOT_COMMITTED.into());
        }
        let token: [u8; MAC_LEN] = self.message(req, mailbox)?;
        let expected = match Origin(req.kind) {
            Origin::TARGET => c.target_token.load(),
            Origin::OWNER => {
                let mut secret = self.migration_secret().ok_or(Status::NO_SECRET)?;
                let t = keys::owner_abort_token(&secret, &c.transcript.load());
                secret.zeroize();
                t
            }
            _ => return Err(Status::BAD_REQUEST.into()),
        };
        if !keys::tags_equal(&expected, &token) {
            return Err(Status::BAD_TOKEN.into());
        }
        self.memory
            .write_page(self.layout.migration_state_gpa, &[0; PAGE_SIZE]);
        c.committed.store(0, Ordering::Release);
        c.transcript.wipe();
        c.target_token.wipe();
        s.wipe();
        alone.set(Phase::IDLE);
        Ok(())
    }

    fn reset(&mut self) -> Result<(), Refusal> {
        let mut alone = self.alone(|_| true)?;
        self.clear_versions();
        self.session.wipe();
        alone.set(Phase::IDLE);
        Ok(())
    }
}
