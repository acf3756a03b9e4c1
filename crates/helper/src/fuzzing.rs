//! What the `helper_requests` fuzz target runs on each input, and the sessions its seed
//! corpus (`fuzz/seeds/helper_requests/`) is made of: the helper's request decoding as
//! the host reaches it — the request, the GPA list, the handshake message and the record
//! windows, any bytes, in any order, on either side of a session. The seed replay test
//! drives the same [`exercise`], so every seed and every crash kept there stays fixed.
//!
//! An input is a list of steps:
//!
//! ```text
//!  kind u8 ‖ vcpu u8 ‖ ...
//!   kind 0 (source) or 1 (target): control_len u16 ‖ control bytes (written over the
//!          start of the control page: request at 0, message at 0x200, GPA list at
//!          0x800; what they do not reach keeps its bytes)
//!          ‖ window_len u16 ‖ window bytes (written to both record windows); then the
//!          helper serves the request
//!   kind 2 (carry, as a VMM would): len u32 ‖ copies the source vCPU's window 0 to the
//!          target vCPU's windows
//!   kind 3 (carry the message): copies the source vCPU's message area to the target
//!          vCPU's and back the other way
//! ```
//!
//! The session starts keyed (a fixed-seed handshake, so seeds holding real records stay
//! valid). After every step [`exercise`] checks what a hostile host must never achieve:
//! a response that does not echo the request, an undefined status, a message longer than
//! its area, target memory changed by anything but an IMPORT that accepted records, or
//! source memory changed by anything but a commit or a release (of the flag page only).

extern crate std;

use crate::host::{self, Guest, Spec, Vcpu};
use crate::Mailbox;
use helper_abi::{
    mailbox::{Op, Request, Response, Status, MESSAGE_OFFSET, MESSAGE_SIZE, RESPONSE_OFFSET},
    record::{Kind, HEADER_SIZE, PAGE_RECORD_SIZE},
    PAGE_SIZE,
};
use std::{vec, vec::Vec};

const SECRET: [u8; 32] = [0x5e; 32];

/// A small guest (32 pages, 24 migratable): every step snapshots both guests' RAM.
fn spec() -> Spec {
    Spec {
        ram: 0x2_0000,
        region: (0x1_8000, 0x8000),
        shared_list: 0x1000,
        secret: 0x2000,
        migration_state: 0x4000,
        firmware_hash: [0xf1; 32],
        max_batch: 16,
        window_size: 16 * PAGE_RECORD_SIZE,
    }
}

/// What [`exercise`] saw.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Requests served.
    pub requests: usize,
    /// Requests answered OK.
    pub ok: usize,
    /// Records the target accepted.
    pub imported: u64,
    /// Whether the source ended "migrated out".
    pub migrated_out: bool,
}

struct Pair {
    src: Guest,
    dst: Guest,
    sv: Vec<Vcpu>,
    dv: Vec<Vcpu>,
}

fn pair() -> Pair {
    let src = Guest::new(spec(), Some(SECRET), |p| (p as u8) | 1).seeded(1);
    let dst = Guest::new(spec(), Some(SECRET), |_| 0).incoming().seeded(2);
    let sv = vec![src.vcpu(), src.vcpu()];
    let dv = vec![dst.vcpu(), dst.vcpu()];
    host::handshake(&src, &sv[0], &dst, &dv[0], [0xa1; 16], [0x4e; 32])
        .expect("a fixed handshake between two fresh helpers succeeds");
    Pair { src, dst, sv, dv }
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn u16(&mut self) -> Option<usize> {
        Some(usize::from(u16::from_le_bytes([self.u8()?, self.u8()?])))
    }

    fn u32(&mut self) -> Option<usize> {
        let b = self.bytes(4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    /// Up to `n` bytes (fewer at the end of the input).
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.is_empty() {
            return None;
        }
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(b)
    }
}

fn ram(g: &Guest) -> Vec<u8> {
    g.ram.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Serves one raw request on `vcpu` of `guest` and checks the response.
fn serve(guest: &Guest, vcpu: &Vcpu, control: &[u8], window: &[u8]) -> Response {
    let n = control.len().min(PAGE_SIZE);
    let mut head = [0u8; Request::SIZE];
    head[..n.min(Request::SIZE)].copy_from_slice(&control[..n.min(Request::SIZE)]);
    vcpu.mailbox.write_control(0, &head);
    vcpu.mailbox.write_control(0, &control[..n]);
    let size = vcpu.mailbox.window_size();
    let w = &window[..window.len().min(size)];
    vcpu.mailbox.fill_window(0, w);
    vcpu.mailbox.fill_window(1, w);
    let mut raw = [0u8; Request::SIZE];
    vcpu.mailbox.read_control(0, &mut raw);
    let req = Request::decode(&raw);
    guest.serve(vcpu);
    let mut out = [0u8; Response::SIZE];
    vcpu.mailbox.read_control(RESPONSE_OFFSET, &mut out);
    let resp = Response::decode(&out);
    assert_eq!(resp.id, req.id, "the response must echo the request");
    assert!(
        resp.status().name().is_some(),
        "undefined status {}",
        resp.status
    );
    assert!(resp.message_len as usize <= MESSAGE_SIZE);
    resp
}

/// Runs `data` as a list of steps against a keyed source and target; a panic is a bug.
pub fn exercise(data: &[u8]) -> Summary {
    let p = pair();
    let mut s = Summary::default();
    let mut input = Input(data);
    while let Some(kind) = input.u8() {
        let Some(vcpu) = input.u8() else { break };
        let lane = usize::from(vcpu) % 2;
        match kind % 4 {
            0 | 1 => {
                let Some(n) = input.u16() else { break };
                let control = input.bytes(n).unwrap_or(&[]).to_vec();
                let n = input.u16().unwrap_or(0);
                let window = input.bytes(n).unwrap_or(&[]).to_vec();
                let target = kind % 4 == 1;
                let (g, v) = if target {
                    (&p.dst, &p.dv[lane])
                } else {
                    (&p.src, &p.sv[lane])
                };
                let before = ram(g);
                let resp = serve(g, v, &control, &window);
                s.requests += 1;
                if resp.status() == Status::OK {
                    s.ok += 1;
                }
                let after = ram(g);
                let op = Op(u32::from_le_bytes([
                    control.first().copied().unwrap_or(0),
                    control.get(1).copied().unwrap_or(0),
                    control.get(2).copied().unwrap_or(0),
                    control.get(3).copied().unwrap_or(0),
                ]));
                if target {
                    if op == Op::IMPORT && resp.count > 0 {
                        s.imported += u64::from(resp.count);
                    } else {
                        assert!(
                            before == after,
                            "{op:?} ({}) changed the target's memory",
                            resp.status()
                        );
                    }
                } else {
                    let changed: Vec<usize> = before
                        .chunks(PAGE_SIZE)
                        .zip(after.chunks(PAGE_SIZE))
                        .enumerate()
                        .filter(|(_, (a, b))| a != b)
                        .map(|(i, _)| i)
                        .collect();
                    if !changed.is_empty() {
                        let flag = (spec().migration_state / PAGE_SIZE as u64) as usize;
                        assert!(
                            resp.status() == Status::OK
                                && (op == Op::COMMIT || op == Op::RELEASE)
                                && changed == [flag],
                            "{op:?} ({}) changed source pages {changed:?}",
                            resp.status()
                        );
                    }
                }
            }
            2 => {
                let Some(n) = input.u32() else { break };
                let size = p.sv[lane].mailbox.window_size();
                let bytes = p.sv[lane].mailbox.window(0, n.min(size));
                p.dv[lane].mailbox.fill_window(0, &bytes);
                p.dv[lane].mailbox.fill_window(1, &bytes);
            }
            _ => {
                let mut m = vec![0u8; MESSAGE_SIZE];
                p.sv[lane].mailbox.read_control(MESSAGE_OFFSET, &mut m);
                let mut back = vec![0u8; MESSAGE_SIZE];
                p.dv[lane].mailbox.read_control(MESSAGE_OFFSET, &mut back);
                p.dv[lane].mailbox.write_control(MESSAGE_OFFSET, &m);
                p.sv[lane].mailbox.write_control(MESSAGE_OFFSET, &back);
            }
        }
    }
    s.migrated_out = p.src.migrated_out();
    s
}

/// A step that serves `req` (with a GPA list or message) on `vcpu` of a side.
fn step(
    target: bool,
    vcpu: u8,
    req: Request,
    gpas: &[u64],
    message: &[u8],
    window: &[u8],
) -> Vec<u8> {
    let mut control = vec![0u8; PAGE_SIZE];
    control[..Request::SIZE].copy_from_slice(&req.encode());
    // At least the whole request travels (its zero fields too).
    control[MESSAGE_OFFSET..MESSAGE_OFFSET + message.len()].copy_from_slice(message);
    for (i, g) in gpas.iter().enumerate() {
        let at = helper_abi::mailbox::GPA_LIST_OFFSET + 8 * i;
        control[at..at + 8].copy_from_slice(&g.to_le_bytes());
    }
    // Trailing zeros need not travel: the control page is zeroed first.
    let end = control
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |i| i + 1)
        .max(Request::SIZE);
    let mut out = vec![u8::from(target), vcpu];
    out.extend((end as u16).to_le_bytes());
    out.extend(&control[..end]);
    out.extend((window.len() as u16).to_le_bytes());
    out.extend(window);
    out
}

fn carry(vcpu: u8, len: usize) -> Vec<u8> {
    let mut out = vec![2, vcpu];
    out.extend((len as u32).to_le_bytes());
    out
}

fn req(op: Op) -> Request {
    Request {
        op: op.0,
        ..Request::default()
    }
}

/// A whole migration as steps: seal every page, carry, import, the shared list and a
/// vCPU state, the manifest, the commit.
pub fn migration_session() -> Vec<u8> {
    let pages: Vec<u64> = {
        let g = Guest::new(spec(), None, |_| 0);
        g.migratable_pages()
    };
    let mut out = Vec::new();
    for chunk in pages.chunks(16) {
        out.extend(step(
            false,
            0,
            Request {
                count: chunk.len() as u32,
                round: 1,
                ..req(Op::EXPORT)
            },
            chunk,
            &[],
            &[],
        ));
        out.extend(carry(0, chunk.len() * PAGE_RECORD_SIZE));
        out.extend(step(
            true,
            0,
            Request {
                window: 1,
                count: chunk.len() as u32,
                bytes: (chunk.len() * PAGE_RECORD_SIZE) as u32,
                ..req(Op::IMPORT)
            },
            &[],
            &[],
            &[],
        ));
    }
    let blob = [0x77u8; 100];
    let mut window = vec![0u8; HEADER_SIZE];
    window.extend(blob);
    out.extend(step(
        false,
        0,
        Request {
            kind: u32::from(Kind::VCPU_STATE.0),
            index: 1,
            bytes: blob.len() as u32,
            ..req(Op::SEAL_BLOB)
        },
        &[],
        &[],
        &window,
    ));
    out.extend(carry(0, HEADER_SIZE + blob.len() + 16));
    out.extend(step(
        true,
        0,
        Request {
            bytes: (HEADER_SIZE + blob.len() + 16) as u32,
            ..req(Op::OPEN_BLOB)
        },
        &[],
        &[],
        &[],
    ));
    out.extend(step(false, 0, req(Op::FINISH), &[], &[], &[]));
    out.extend(carry(0, helper_abi::record::MANIFEST_RECORD_SIZE));
    out.extend(step(
        true,
        0,
        Request {
            bytes: helper_abi::record::MANIFEST_RECORD_SIZE as u32,
            ..req(Op::FINISH)
        },
        &[],
        &[],
        &[],
    ));
    out.extend(step(false, 0, req(Op::COMMIT), &[], &[], &[]));
    out.extend(carry(0, helper_abi::record::COMMIT_RECORD_SIZE));
    out.extend(step(
        true,
        0,
        Request {
            bytes: helper_abi::record::COMMIT_RECORD_SIZE as u32,
            ..req(Op::COMMIT)
        },
        &[],
        &[],
        &[],
    ));
    out
}

/// A commit that never reaches the target: the target aborts, and its token (carried
/// in the message area) releases the source.
pub fn abort_session() -> Vec<u8> {
    let mut out = migration_session();
    // Drop the last two steps: carrying the commit, and the target's COMMIT.
    let commit_step = step(
        true,
        0,
        Request {
            bytes: helper_abi::record::COMMIT_RECORD_SIZE as u32,
            ..req(Op::COMMIT)
        },
        &[],
        &[],
        &[],
    );
    out.truncate(out.len() - commit_step.len() - carry(0, 0).len());
    out.extend(step(true, 0, req(Op::ABORT), &[], &[], &[]));
    // The token lands in the target's message area; carry it over to the source.
    out.extend([3, 0]);
    out.extend(step(
        false,
        0,
        Request {
            kind: helper_abi::mailbox::Origin::TARGET.0,
            bytes: 32,
            ..req(Op::RELEASE)
        },
        &[],
        &[],
        &[],
    ));
    out.extend(step(false, 1, req(Op::RESET), &[], &[], &[]));
    out.extend(step(true, 0, req(Op::INFO), &[], &[], &[]));
    out
}

/// Requests out of place and malformed ones.
pub fn refusals_session() -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(step(
        true,
        0,
        Request {
            count: 1,
            ..req(Op::EXPORT)
        },
        &[0x3000],
        &[],
        &[],
    ));
    out.extend(step(
        false,
        0,
        Request {
            count: 2,
            ..req(Op::EXPORT)
        },
        &[0x3008, 0x6_0000],
        &[],
        &[],
    ));
    out.extend(step(
        false,
        1,
        Request {
            count: 300,
            ..req(Op::EXPORT)
        },
        &[],
        &[],
        &[],
    ));
    out.extend(step(
        false,
        0,
        Request {
            bytes: 96,
            ..req(Op::HS_RESPOND)
        },
        &[],
        &[0x11; 96],
        &[],
    ));
    out.extend(step(
        true,
        1,
        Request {
            window: 7,
            count: 1,
            bytes: 48,
            ..req(Op::IMPORT)
        },
        &[],
        &[],
        &[0xff; 48],
    ));
    out.extend(step(
        true,
        0,
        Request {
            bytes: 160,
            ..req(Op::FINISH)
        },
        &[],
        &[],
        &[0x42; 160],
    ));
    out.extend(step(
        false,
        0,
        Request {
            kind: 9,
            bytes: 10,
            ..req(Op::SEAL_BLOB)
        },
        &[],
        &[],
        &[],
    ));
    out.extend(step(
        false,
        0,
        Request {
            reserved: 1,
            ..req(Op::INFO)
        },
        &[],
        &[],
        &[],
    ));
    out.extend(step(true, 0, req(Op(77)), &[], &[], &[]));
    out
}

/// The seed corpus: file name and bytes.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let session = migration_session();
    let truncated = session[..session.len() / 3].to_vec();
    vec![
        ("migration.bin", session),
        ("migration-truncated.bin", truncated),
        ("abort-and-release.bin", abort_session()),
        ("refusals.bin", refusals_session()),
        ("empty.bin", Vec::new()),
    ]
}
