//! The mirror's helper vCPUs as the migration engine's sealer (source) and opener
//! (target): one lane per helper vCPU, each with its own record window.

use helper_abi::{
    mailbox::{Op, Request, Role},
    record::MANIFEST_RECORD_SIZE,
};
use migration::engine::{Opener, Sealer};
use vmm::mirror::{HelperError, HelperVcpu};

/// Record window each lane uses (one request at a time per lane).
const WINDOW: u16 = 0;

/// Helper vCPUs driven by one migration.
pub struct HelperLanes {
    helpers: Vec<HelperVcpu>,
    max_batch: usize,
}

fn describe(e: HelperError) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(next) = source {
        s.push_str(": ");
        s.push_str(&next.to_string());
        source = next.source();
    }
    s
}

impl HelperLanes {
    /// Lanes over `helpers`, at most `max_batch` pages per request (the helper's limit,
    /// from INFO).
    pub fn new(helpers: Vec<HelperVcpu>, max_batch: usize) -> HelperLanes {
        HelperLanes {
            helpers,
            max_batch: max_batch.max(1),
        }
    }

    /// Gives the helper vCPUs back.
    pub fn into_helpers(self) -> Vec<HelperVcpu> {
        self.helpers
    }

    fn lane(&mut self, lane: usize) -> Result<&mut HelperVcpu, String> {
        let n = self.helpers.len();
        self.helpers
            .get_mut(lane)
            .ok_or_else(|| format!("lane {lane} of {n} helper vCPUs"))
    }

    /// Clears every lane and the session, then derives the source's keys for
    /// `session_id`; returns the helper's nonce for the Hello.
    pub fn start_source(&mut self, session_id: [u8; 16]) -> Result<[u8; 16], String> {
        self.reset()?;
        let resp = self
            .lane(0)?
            .call_ok(
                Request {
                    op: Op::KEYS.0,
                    role: Role::SOURCE.0,
                    session_id,
                    ..Request::default()
                },
                &[],
            )
            .map_err(describe)?;
        Ok(resp.nonce)
    }

    /// Clears every lane and the session (a new migration starts from nothing).
    pub fn reset(&mut self) -> Result<(), String> {
        for h in &mut self.helpers {
            h.call_ok(
                Request {
                    op: Op::RESET.0,
                    ..Request::default()
                },
                &[],
            )
            .map_err(describe)?;
        }
        Ok(())
    }
}

impl Sealer for HelperLanes {
    fn lanes(&self) -> usize {
        self.helpers.len()
    }

    fn max_batch(&self) -> usize {
        self.max_batch
    }

    fn seal(
        &mut self,
        lane: usize,
        round: u32,
        gpas: &[u64],
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let h = self.lane(lane)?;
        let resp = h
            .call_ok(
                Request {
                    op: Op::EXPORT.0,
                    window: u32::from(WINDOW),
                    count: gpas.len() as u32,
                    round,
                    ..Request::default()
                },
                gpas,
            )
            .map_err(describe)?;
        let len = resp.bytes as usize;
        if len > h.window_size() {
            return Err(format!(
                "the helper reports {len} bytes of records in a {}-byte window",
                h.window_size()
            ));
        }
        let start = out.len();
        out.resize(start + len, 0);
        h.read_window(WINDOW, 0, &mut out[start..])
            .map_err(describe)
    }

    fn manifest(&mut self, round: u32) -> Result<[u8; MANIFEST_RECORD_SIZE], String> {
        let h = self.lane(0)?;
        h.call_ok(
            Request {
                op: Op::FINISH.0,
                window: u32::from(WINDOW),
                round,
                ..Request::default()
            },
            &[],
        )
        .map_err(describe)?;
        let mut record = [0u8; MANIFEST_RECORD_SIZE];
        h.read_window(WINDOW, 0, &mut record).map_err(describe)?;
        Ok(record)
    }
}

impl Opener for HelperLanes {
    fn lanes(&self) -> usize {
        self.helpers.len()
    }

    fn keys(&mut self, session_id: &[u8; 16], source_nonce: &[u8; 16]) -> Result<(), String> {
        self.reset()?;
        self.lane(0)?
            .call_ok(
                Request {
                    op: Op::KEYS.0,
                    role: Role::TARGET.0,
                    session_id: *session_id,
                    peer_nonce: *source_nonce,
                    ..Request::default()
                },
                &[],
            )
            .map(drop)
            .map_err(describe)
    }

    fn open(&mut self, lane: usize, records: &[u8]) -> Result<(), String> {
        let h = self.lane(lane)?;
        if records.len() > h.window_size() {
            return Err(format!(
                "a batch of {} bytes does not fit the helper's {}-byte window",
                records.len(),
                h.window_size()
            ));
        }
        let count = helper_abi::record::walk(records, records.len()).count() as u32;
        h.write_window(WINDOW, 0, records).map_err(describe)?;
        h.call_ok(
            Request {
                op: Op::IMPORT.0,
                window: u32::from(WINDOW),
                count,
                bytes: records.len() as u32,
                ..Request::default()
            },
            &[],
        )
        .map(drop)
        .map_err(describe)
    }

    fn verify_manifest(
        &mut self,
        lane: usize,
        record: &[u8; MANIFEST_RECORD_SIZE],
    ) -> Result<(), String> {
        let h = self.lane(lane)?;
        h.write_window(WINDOW, 0, record).map_err(describe)?;
        h.call_ok(
            Request {
                op: Op::FINISH.0,
                window: u32::from(WINDOW),
                bytes: record.len() as u32,
                ..Request::default()
            },
            &[],
        )
        .map(drop)
        .map_err(describe)
    }
}
