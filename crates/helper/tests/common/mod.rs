//! A source and a target guest with their helpers, and the steps of a migration between
//! them, for the helper's host-side tests.

#![allow(dead_code)]

use helper_abi::{
    mailbox::{flags, Op, Origin, Request, Status},
    record::{self, Kind},
    PAGE_SIZE,
};
use mirror_helper::host::{self, Guest, Reply, Spec, Vcpu};

pub const SECRET: [u8; 32] = [0x5e; 32];
pub const SESSION: [u8; 16] = [0xa1; 16];
pub const HELLO: [u8; 32] = [0x4e; 32];

/// A guest, keeping its helper vCPUs.
pub struct Side {
    pub guest: Guest,
    pub vcpus: Vec<Vcpu>,
}

impl Side {
    pub fn new(guest: Guest, vcpus: usize) -> Side {
        let v = (0..vcpus).map(|_| guest.vcpu()).collect();
        Side { guest, vcpus: v }
    }

    pub fn call(&self, lane: usize, req: Request, gpas: &[u64], msg: &[u8]) -> Reply {
        self.guest.call(&self.vcpus[lane], req, gpas, msg)
    }

    pub fn op(&self, lane: usize, op: Op) -> Reply {
        self.guest.op(&self.vcpus[lane], op)
    }

    /// Seals `gpas` on `lane`; the window's bytes.
    pub fn export(&self, lane: usize, round: u32, gpas: &[u64]) -> Result<Vec<u8>, (Status, u32)> {
        self.export_flags(lane, round, gpas, 0)
    }

    pub fn export_flags(
        &self,
        lane: usize,
        round: u32,
        gpas: &[u64],
        flags: u32,
    ) -> Result<Vec<u8>, (Status, u32)> {
        let r = self.call(
            lane,
            Request {
                op: Op::EXPORT.0,
                count: gpas.len() as u32,
                round,
                flags,
                ..Default::default()
            },
            gpas,
            &[],
        );
        if r.status() != Status::OK {
            return Err((r.status(), r.response.index));
        }
        Ok(self.vcpus[lane]
            .mailbox
            .window(0, r.response.bytes as usize))
    }

    pub fn import(&self, lane: usize, records: &[u8]) -> Result<u32, (Status, u32)> {
        let count = record::walk(records, records.len()).count() as u32;
        self.vcpus[lane].mailbox.fill_window(1, records);
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
            &[],
        );
        if r.status() != Status::OK {
            return Err((r.status(), r.response.index));
        }
        Ok(r.response.count)
    }

    /// Seals a blob; the record's bytes.
    pub fn seal_blob(
        &self,
        lane: usize,
        kind: Kind,
        index: u32,
        blob: &[u8],
    ) -> Result<Vec<u8>, Status> {
        let mb = &self.vcpus[lane].mailbox;
        let mut w = vec![0u8; record::HEADER_SIZE];
        w.extend_from_slice(blob);
        mb.fill_window(0, &w);
        let r = self.call(
            lane,
            Request {
                op: Op::SEAL_BLOB.0,
                kind: u32::from(kind.0),
                index,
                bytes: blob.len() as u32,
                round: 9,
                ..Default::default()
            },
            &[],
            &[],
        );
        let r = r.ok()?;
        Ok(mb.window(0, r.response.bytes as usize))
    }

    /// Opens a blob record; (kind, index).
    pub fn open_blob(&self, lane: usize, rec: &[u8]) -> Result<(u32, u32), Status> {
        self.vcpus[lane].mailbox.fill_window(1, rec);
        let r = self
            .call(
                lane,
                Request {
                    op: Op::OPEN_BLOB.0,
                    window: 1,
                    bytes: rec.len() as u32,
                    ..Default::default()
                },
                &[],
                &[],
            )
            .ok()?;
        Ok((r.response.kind, r.response.index))
    }

    /// FINISH on the source: the manifest record.
    pub fn manifest(&self, lane: usize) -> Result<Vec<u8>, Status> {
        let r = self
            .call(
                lane,
                Request {
                    op: Op::FINISH.0,
                    ..Default::default()
                },
                &[],
                &[],
            )
            .ok()?;
        Ok(self.vcpus[lane]
            .mailbox
            .window(0, r.response.bytes as usize))
    }

    /// FINISH on the target.
    pub fn verify(&self, lane: usize, manifest: &[u8]) -> Status {
        self.vcpus[lane].mailbox.fill_window(0, manifest);
        self.call(
            lane,
            Request {
                op: Op::FINISH.0,
                bytes: manifest.len() as u32,
                ..Default::default()
            },
            &[],
            &[],
        )
        .status()
    }

    /// COMMIT on the source: the commit record and the transcript hash.
    pub fn commit(&self, lane: usize) -> Result<(Vec<u8>, [u8; 32]), Status> {
        let r = self
            .call(
                lane,
                Request {
                    op: Op::COMMIT.0,
                    ..Default::default()
                },
                &[],
                &[],
            )
            .ok()?;
        let rec = self.vcpus[lane]
            .mailbox
            .window(0, r.response.bytes as usize);
        Ok((rec, r.message.try_into().unwrap()))
    }

    /// COMMIT on the target.
    pub fn accept_commit(&self, lane: usize, rec: &[u8]) -> Status {
        self.vcpus[lane].mailbox.fill_window(0, rec);
        self.call(
            lane,
            Request {
                op: Op::COMMIT.0,
                bytes: rec.len() as u32,
                ..Default::default()
            },
            &[],
            &[],
        )
        .status()
    }

    /// ABORT on the target: its token.
    pub fn abort(&self, lane: usize) -> Result<[u8; 32], Status> {
        let r = self.op(lane, Op::ABORT).ok()?;
        Ok(r.message.try_into().unwrap())
    }

    /// RELEASE on the source.
    pub fn release(&self, lane: usize, origin: Origin, token: &[u8; 32]) -> Status {
        self.call(
            lane,
            Request {
                op: Op::RELEASE.0,
                kind: origin.0,
                bytes: 32,
                ..Default::default()
            },
            &[],
            token,
        )
        .status()
    }

    pub fn reset(&self, lane: usize) -> Status {
        self.op(lane, Op::RESET).status()
    }
}

/// Source pages: data everywhere, every 8th page zero.
pub fn source_fill(p: u64) -> u8 {
    if p.is_multiple_of(8) {
        0
    } else {
        (p as u8) | 1
    }
}

/// A source with `lanes` helper vCPUs and a blank incoming target, not yet keyed.
pub fn unkeyed(lanes: usize) -> (Side, Side) {
    let src = Side::new(
        Guest::new(Spec::default(), Some(SECRET), source_fill),
        lanes,
    );
    let dst = Side::new(
        Guest::new(Spec::default(), Some(SECRET), |_| 0xee).incoming(),
        lanes,
    );
    (src, dst)
}

/// A keyed pair; returns the transcript hash too.
pub fn pair(lanes: usize) -> (Side, Side, [u8; 32]) {
    let (src, dst) = unkeyed(lanes);
    let hs = host::handshake(
        &src.guest,
        &src.vcpus[0],
        &dst.guest,
        &dst.vcpus[0],
        SESSION,
        HELLO,
    )
    .expect("handshake");
    (src, dst, hs.transcript)
}

/// Every page the manifest covers.
pub fn all_pages(g: &Side) -> Vec<u64> {
    g.guest.migratable_pages()
}

/// Moves every page from lane 0 to lane 0 in `round`.
pub fn migrate_all(src: &Side, dst: &Side, round: u32) {
    for chunk in all_pages(src).chunks(64) {
        let records = src.export(0, round, chunk).unwrap();
        dst.import(0, &records).unwrap();
    }
}

/// A whole migration up to a verified manifest; returns the commit-ready pair.
pub fn verified(lanes: usize) -> (Side, Side, [u8; 32]) {
    let (src, dst, th) = pair(lanes);
    migrate_all(&src, &dst, 1);
    let m = src.manifest(0).unwrap();
    assert_eq!(dst.verify(0, &m), Status::OK);
    (src, dst, th)
}

pub fn page(v: u8) -> [u8; PAGE_SIZE] {
    [v; PAGE_SIZE]
}

pub const ZERO_FLAG: u32 = flags::ZERO_RECORDS;
