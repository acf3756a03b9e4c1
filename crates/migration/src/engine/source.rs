//! The source: precopy rounds while the guest runs, stop-and-copy once the dirty set fits
//! the downtime budget, then device and vCPU state, the helper's manifest, and the wait
//! for the target's confirmation.

use super::{update, MigrationError, Progress, Status};
use crate::{
    codec::{FrameReader, Incoming},
    frames::{
        Abort, Ack, DeviceState, Done, Frame, Hello, HelloAck, Manifest, PageBatch, PageData,
        PlainPage, PlainPages, RoundEnd, SharedRange, SharedRanges, VcpuState, MAX_PAYLOAD_LEN,
    },
};
use helper_abi::PAGE_SIZE;
use std::{
    io::{Read, Write},
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

/// Pages per PlainPages frame.
const PLAIN_BATCH: usize = 256;

/// What the source engine needs from the VM.
pub trait SourceVm {
    /// Every page to migrate, page-aligned, increasing (an SEV guest's helper region is
    /// never migrated and must not be listed).
    fn pages(&self) -> Vec<u64>;
    /// Whether the guest keeps the page private (always false for a plain guest).
    fn is_private(&self, gpa: u64) -> bool;
    /// The pages the guest shares with the host, as (gpa, pages) runs (SEV only).
    fn shared_ranges(&self) -> Vec<(u64, u64)>;
    /// A page as the host sees it (only plain guests' and shared pages are read).
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) -> Result<(), String>;
    /// Starts logging the guest's writes.
    fn start_dirty_log(&mut self) -> Result<(), String>;
    /// Pages written since the last call (migratable ones only).
    fn take_dirty(&mut self) -> Result<Vec<u64>, String>;
    /// Stops logging.
    fn stop_dirty_log(&mut self);
    /// Stops the guest's vCPUs.
    fn pause(&mut self) -> Result<(), String>;
    /// Lets them run again.
    fn resume(&mut self);
    /// The devices' state.
    fn device_state(&mut self) -> Result<Vec<u8>, String>;
    /// Each vCPU's state, in index order.
    fn vcpu_states(&mut self) -> Result<Vec<Vec<u8>>, String>;
}

/// The source's migration helper: seals private pages into records (SEV only).
pub trait Sealer {
    /// Helper vCPUs (lanes).
    fn lanes(&self) -> usize;
    /// Most pages per request.
    fn max_batch(&self) -> usize;
    /// Seals `gpas` on `lane` in `round`, appending the records to `out`.
    fn seal(
        &mut self,
        lane: usize,
        round: u32,
        gpas: &[u64],
        out: &mut Vec<u8>,
    ) -> Result<(), String>;
    /// The sealed manifest, made on lane 0 once everything was sealed.
    fn manifest(
        &mut self,
        round: u32,
    ) -> Result<[u8; helper_abi::record::MANIFEST_RECORD_SIZE], String>;
}

/// Precopy policy.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Stop and copy once the dirty set would take at most this long to send.
    pub downtime_limit: Duration,
    /// Stop and copy after this many rounds whatever the dirty set.
    pub max_rounds: u32,
    /// How long to wait for the target to confirm after Done.
    pub confirm_timeout: Duration,
    /// Pages per helper request (at most the helper's limit).
    pub batch: usize,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            downtime_limit: Duration::from_millis(300),
            max_rounds: 30,
            confirm_timeout: Duration::from_secs(60),
            batch: helper_abi::MAX_BATCH,
        }
    }
}

/// A `Write` that counts bytes.
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Source<'a, R, W> {
    reader: FrameReader<R>,
    out: Counting<W>,
    vm: &'a mut dyn SourceVm,
    sealer: Option<&'a mut dyn Sealer>,
    options: &'a SourceOptions,
    progress: &'a Mutex<Progress>,
    cancel: &'a AtomicBool,
    started: Instant,
    paused_at: Option<Instant>,
    buf: Vec<u8>,
    records: Vec<u8>,
}

/// Migrates the guest: `hello` describes it; `reader`/`writer` are the two directions of
/// the stream (the reader should time out, e.g. a socket read timeout, so a vanished
/// target cannot hang the source). On any failure the guest is running again when this
/// returns.
#[allow(clippy::too_many_arguments)]
pub fn migrate<'a, R: Read, W: Write>(
    reader: R,
    writer: W,
    hello: &Hello,
    vm: &'a mut dyn SourceVm,
    sealer: Option<&'a mut dyn Sealer>,
    options: &'a SourceOptions,
    progress: &'a Mutex<Progress>,
    cancel: &'a AtomicBool,
) -> Result<(), MigrationError> {
    update(progress, |p| {
        *p = Progress {
            status: Status::Setup,
            total_bytes: hello.mem_size,
            ..Progress::default()
        }
    });
    let mut s = Source {
        reader: FrameReader::new(reader, Incoming::FromTarget),
        out: Counting {
            inner: writer,
            bytes: 0,
        },
        vm,
        sealer,
        options,
        progress,
        cancel,
        started: Instant::now(),
        paused_at: None,
        buf: vec![0u8; MAX_PAYLOAD_LEN],
        records: Vec::with_capacity(MAX_PAYLOAD_LEN),
    };
    let result = s.run(hello);
    s.vm.stop_dirty_log();
    let total_ms = s.started.elapsed().as_millis() as u64;
    match &result {
        Ok(()) => {
            let downtime = s.paused_at.map(|t| t.elapsed().as_millis() as u64);
            update(progress, |p| {
                p.status = Status::Completed;
                p.downtime_ms = downtime;
                p.total_ms = total_ms;
                p.remaining_bytes = 0;
            });
        }
        Err(e) => {
            if s.paused_at.is_some() {
                s.vm.resume();
            }
            if !matches!(
                e,
                MigrationError::Aborted { .. } | MigrationError::Refused { .. }
            ) {
                // Best effort: the target may already be gone.
                let _ = Abort {
                    code: e.code(),
                    reason: e.chain().chars().take(1000).collect(),
                }
                .encode(&mut s.out);
                let _ = s.out.flush();
            }
            let status = if matches!(e, MigrationError::Cancelled) {
                Status::Cancelled
            } else {
                Status::Failed
            };
            update(progress, |p| {
                p.status = status;
                p.total_ms = total_ms;
                p.error = Some(e.chain());
            });
        }
    }
    result
}

impl<R: Read, W: Write> Source<'_, R, W> {
    fn check_cancel(&self) -> Result<(), MigrationError> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(MigrationError::Cancelled);
        }
        Ok(())
    }

    fn run(&mut self, hello: &Hello) -> Result<(), MigrationError> {
        if self.sealer.is_some() != (hello.mode == crate::frames::GuestMode::Sev) {
            return Err(MigrationError::Vm(
                "an SEV guest needs its helper, a plain guest none".into(),
            ));
        }
        hello.encode(&mut self.out)?;
        self.out
            .flush()
            .map_err(|e| MigrationError::Vm(format!("cannot send: {e}")))?;
        match self.reader.read_frame(&mut self.buf)? {
            Frame::HelloAck(HelloAck::Accepted) => {}
            Frame::HelloAck(HelloAck::Refused { code, reason }) => {
                return Err(MigrationError::Refused { code, reason })
            }
            Frame::Abort(a) => {
                return Err(MigrationError::Aborted {
                    code: a.code,
                    reason: a.reason,
                })
            }
            other => {
                return Err(MigrationError::Protocol(format!(
                    "expected HelloAck, got {}",
                    other.message_type()
                )))
            }
        }
        let setup_ms = self.started.elapsed().as_millis() as u64;
        update(self.progress, |p| {
            p.status = Status::Active;
            p.setup_ms = setup_ms;
        });

        self.vm.start_dirty_log().map_err(MigrationError::Vm)?;
        let mut pages = self.vm.pages();
        let mut round = 0;
        loop {
            round += 1;
            self.check_cancel()?;
            let t0 = Instant::now();
            let bytes0 = self.out.bytes;
            let sent = pages.len() as u64;
            self.send_pages(round, &pages)?;
            let elapsed = t0.elapsed().as_secs_f64().max(1e-6);
            pages = self.vm.take_dirty().map_err(MigrationError::Vm)?;
            let throughput = ((self.out.bytes - bytes0) as f64 / elapsed) as u64;
            let remaining = pages.len() as u64 * PAGE_SIZE as u64;
            let expected_ms = (remaining as f64 / throughput.max(1) as f64 * 1e3) as u64;
            RoundEnd {
                round,
                pages_sent: sent,
                dirty_remaining: pages.len() as u64,
            }
            .encode(&mut self.out)?;
            let total_ms = self.started.elapsed().as_millis() as u64;
            let transferred = self.out.bytes;
            update(self.progress, |p| {
                p.rounds = round;
                p.throughput = throughput;
                p.dirty_rate = (pages.len() as f64 / elapsed) as u64;
                p.remaining_bytes = remaining;
                p.expected_downtime_ms = expected_ms;
                p.transferred_bytes = transferred;
                p.total_ms = total_ms;
            });
            if expected_ms <= self.options.downtime_limit.as_millis() as u64
                || round >= self.options.max_rounds
            {
                break;
            }
        }

        // Stop and copy.
        self.check_cancel()?;
        self.vm.pause().map_err(MigrationError::Vm)?;
        self.paused_at = Some(Instant::now());
        round += 1;
        let mut last = pages;
        last.extend(self.vm.take_dirty().map_err(MigrationError::Vm)?);
        last.sort_unstable();
        last.dedup();
        let sent = last.len() as u64;
        self.send_pages(round, &last)?;
        RoundEnd {
            round,
            pages_sent: sent,
            dirty_remaining: 0,
        }
        .encode(&mut self.out)?;
        let device = self.vm.device_state().map_err(MigrationError::Vm)?;
        DeviceState { blob: &device }.encode(&mut self.out)?;
        for (index, blob) in self
            .vm
            .vcpu_states()
            .map_err(MigrationError::Vm)?
            .iter()
            .enumerate()
        {
            VcpuState {
                index: index as u32,
                blob,
            }
            .encode(&mut self.out)?;
        }
        if let Some(sealer) = self.sealer.as_deref_mut() {
            let record = sealer.manifest(round).map_err(MigrationError::Integrity)?;
            Manifest { record }.encode(&mut self.out)?;
        }
        Done.encode(&mut self.out)?;
        self.out
            .flush()
            .map_err(|e| MigrationError::Vm(format!("cannot send: {e}")))?;
        let transferred = self.out.bytes;
        update(self.progress, |p| {
            p.rounds = round;
            p.transferred_bytes = transferred;
        });
        // The caller's read timeout bounds this wait (`confirm_timeout` is what it
        // should be set to).
        match self.reader.read_frame(&mut self.buf) {
            Ok(Frame::Ack(Ack::Completed)) => Ok(()),
            Ok(Frame::Ack(Ack::Failed { code, reason })) => {
                Err(MigrationError::Aborted { code, reason })
            }
            Ok(Frame::Abort(a)) => Err(MigrationError::Aborted {
                code: a.code,
                reason: a.reason,
            }),
            Ok(other) => Err(MigrationError::Protocol(format!(
                "expected the target's Ack, got {}",
                other.message_type()
            ))),
            Err(e) if e.is_timeout() => {
                Err(MigrationError::NoConfirmation(self.options.confirm_timeout))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Sends one round's pages: the shared set first (SEV), then sealed batches for
    /// private pages and plain frames for the rest.
    fn send_pages(&mut self, round: u32, pages: &[u64]) -> Result<(), MigrationError> {
        let (private, plain): (Vec<u64>, Vec<u64>) = match self.sealer {
            Some(_) => {
                let ranges = self
                    .vm
                    .shared_ranges()
                    .into_iter()
                    .map(|(gpa, pages)| SharedRange { gpa, pages })
                    .collect();
                SharedRanges { ranges }.encode(&mut self.out)?;
                pages.iter().partition(|&&g| self.vm.is_private(g))
            }
            None => (Vec::new(), pages.to_vec()),
        };
        let mut data = vec![[0u8; PAGE_SIZE]; PLAIN_BATCH];
        let mut zeros = 0;
        for chunk in plain.chunks(PLAIN_BATCH) {
            self.check_cancel()?;
            for (gpa, page) in chunk.iter().zip(data.iter_mut()) {
                self.vm.read_page(*gpa, page).map_err(MigrationError::Vm)?;
            }
            let entries = chunk
                .iter()
                .zip(data.iter())
                .map(|(&gpa, page)| PlainPage {
                    gpa,
                    data: if page.iter().all(|&b| b == 0) {
                        zeros += 1;
                        PageData::Zero
                    } else {
                        PageData::Bytes(page)
                    },
                })
                .collect();
            PlainPages {
                round,
                pages: entries,
            }
            .encode(&mut self.out)?;
        }
        if let Some(sealer) = self.sealer.as_deref_mut() {
            let lanes = sealer.lanes().max(1);
            let batch = self.options.batch.min(sealer.max_batch()).max(1);
            for (i, chunk) in private.chunks(batch).enumerate() {
                if self.cancel.load(Ordering::Relaxed) {
                    return Err(MigrationError::Cancelled);
                }
                let lane = i % lanes;
                self.records.clear();
                sealer
                    .seal(lane, round, chunk, &mut self.records)
                    .map_err(MigrationError::Integrity)?;
                PageBatch {
                    lane: lane as u16,
                    round,
                    records: &self.records,
                }
                .encode(&mut self.out)?;
            }
        }
        let (n, transferred) = (pages.len() as u64, self.out.bytes);
        update(self.progress, |p| {
            p.pages += n;
            p.zero_pages += zeros;
            p.transferred_bytes = transferred;
        });
        Ok(())
    }
}
