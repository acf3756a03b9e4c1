//! The target: checks the source's Hello against its own guest, applies pages as they
//! come (sealed ones through its helper, which verifies them), and runs the guest only
//! after the helper verified the manifest and every frame up to Done was accepted.

use super::{chain, update, MigrationError, PartError, Progress, Status};
use crate::{
    codec::{FrameReader, Incoming},
    frames::{
        Abort, Ack, FailureCode, Frame, FrameError, GpaRange, GuestMode, Hello, HelloAck,
        MessageType, PageData, ReceiverState, MAX_PAYLOAD_LEN,
    },
};
use helper_abi::{record::MANIFEST_RECORD_SIZE, PAGE_SIZE};
use std::{
    io::{BufReader, Read, Write},
    sync::Mutex,
    time::Instant,
};

/// What the target engine needs from its VM.
pub trait TargetVm {
    /// This VM's guest, to compare with the source's Hello.
    fn local(&self) -> LocalGuest;
    /// Replaces the record of shared pages (SEV): these become shared, all other
    /// migratable pages private.
    fn set_shared(&mut self, ranges: &[(u64, u64)]) -> Result<(), PartError>;
    /// Whether the page is shared (a plain guest's pages all are).
    fn is_shared(&self, gpa: u64) -> bool;
    /// Writes a page as the host (None: a zero page).
    fn write_page(&mut self, gpa: u64, data: Option<&[u8; PAGE_SIZE]>) -> Result<(), PartError>;
    /// Loads the vCPU and device state and runs the guest.
    fn finish(&mut self, vcpus: Vec<Vec<u8>>, device: Vec<u8>) -> Result<(), PartError>;
}

/// What the target knows of its own guest: the source must describe the same one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalGuest {
    /// Plain or SEV.
    pub mode: GuestMode,
    /// Guest RAM, ascending.
    pub ram: Vec<GpaRange>,
    /// SHA-256 of the firmware image this VM booted.
    pub firmware_digest: [u8; 32],
    /// The helper region (zero for plain guests).
    pub helper_region: GpaRange,
    /// Guest vCPUs.
    pub vcpus: u32,
}

impl LocalGuest {
    /// Checks the source's Hello against this guest; the error says what differs.
    pub fn check(&self, hello: &Hello) -> Result<(), MigrationError> {
        let differs = |what: &str, theirs: String, ours: String| {
            Err(MigrationError::Incompatible(format!(
                "{what}: the source has {theirs}, this target {ours}; start the target with the same options as the source"
            )))
        };
        if hello.mode != self.mode {
            return differs(
                "guest mode",
                format!("{:?}", hello.mode),
                format!("{:?}", self.mode),
            );
        }
        if hello.ram != self.ram {
            return differs(
                "guest RAM",
                describe_ram(&hello.ram),
                describe_ram(&self.ram),
            );
        }
        if hello.vcpus != self.vcpus {
            return differs("vCPUs", hello.vcpus.to_string(), self.vcpus.to_string());
        }
        if hello.helper_region != self.helper_region {
            return differs(
                "the helper region",
                describe_ram(&[hello.helper_region]),
                describe_ram(&[self.helper_region]),
            );
        }
        if hello.firmware_digest != self.firmware_digest {
            return Err(MigrationError::Refused {
                code: FailureCode::FirmwareMismatch,
                reason: format!(
                    "the source booted firmware {}, this target {}; both must boot the same image",
                    hex(&hello.firmware_digest),
                    hex(&self.firmware_digest)
                ),
            });
        }
        Ok(())
    }
}

fn describe_ram(ranges: &[GpaRange]) -> String {
    let total: u64 = ranges.iter().map(|r| r.size).sum();
    let list: Vec<String> = ranges
        .iter()
        .map(|r| format!("{:#x}+{:#x}", r.base, r.size))
        .collect();
    format!("{} MiB ({})", total >> 20, list.join(", "))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The target's migration helper (SEV only).
pub trait Opener {
    /// Helper vCPUs (lanes).
    fn lanes(&self) -> usize;
    /// Derives the session keys (fails without the guest owner's migration secret).
    fn keys(&mut self, session_id: &[u8; 16], source_nonce: &[u8; 16]) -> Result<(), PartError>;
    /// Starts verifying a batch of records on `lane` and writing their pages privately
    /// (each lane's batches in order). A refusal of this or an earlier batch may show
    /// here or at the next `drain`.
    fn submit(&mut self, lane: usize, records: &[u8]) -> Result<(), PartError>;
    /// Waits until every submitted batch was opened; the first refusal, if any.
    fn drain(&mut self) -> Result<(), PartError>;
    /// Verifies the source's manifest against the pages accepted.
    fn verify_manifest(
        &mut self,
        lane: usize,
        record: &[u8; MANIFEST_RECORD_SIZE],
    ) -> Result<(), PartError>;
}

/// Receives a guest. On success it runs (the VM's `finish` was called and the source was
/// told); on failure it never ran, and the source was told why (best effort).
pub fn receive<'a, R: Read, W: Write>(
    reader: R,
    mut writer: W,
    vm: &'a mut dyn TargetVm,
    opener: Option<&'a mut dyn Opener>,
    progress: &'a Mutex<Progress>,
) -> Result<(), MigrationError> {
    let started = Instant::now();
    update(progress, |p| {
        *p = Progress {
            status: Status::Setup,
            ..Progress::default()
        }
    });
    // Headers and small frames come out of one buffer; large payloads bypass it.
    let mut reader = FrameReader::new(
        BufReader::with_capacity(1 << 16, reader),
        Incoming::FromSource,
    );
    let mut buf = vec![0u8; MAX_PAYLOAD_LEN];
    let mut ctx = Receive {
        vm,
        opener,
        progress,
        hello: None,
        state: ReceiverState::default(),
        vcpus: Vec::new(),
        device: None,
        manifest_ok: false,
    };
    let result = ctx.run(&mut reader, &mut writer, &mut buf);
    let total_ms = started.elapsed().as_millis() as u64;
    match &result {
        Ok(()) => {
            let _ = Ack::Completed.encode(&mut writer);
            let _ = writer.flush();
            update(progress, |p| {
                p.status = Status::Completed;
                p.total_ms = total_ms;
            });
        }
        Err(e) => {
            if !matches!(e, MigrationError::Aborted { .. }) {
                // The source words a refusal itself ("the target refused the migration
                // (code): …"): send it only the reason, not this side's whole message.
                let reason = match e {
                    MigrationError::Refused { reason, .. } => reason.clone(),
                    other => other.chain(),
                };
                let reason: String = reason.chars().take(1000).collect();
                let _ = if ctx.hello.is_some() && ctx.state == ReceiverState::default() {
                    HelloAck::Refused {
                        code: e.code(),
                        reason,
                    }
                    .encode(&mut writer)
                } else {
                    Abort {
                        code: e.code(),
                        reason,
                    }
                    .encode(&mut writer)
                };
                let _ = writer.flush();
            }
            update(progress, |p| {
                p.status = Status::Failed;
                p.total_ms = total_ms;
                p.error = Some(e.chain());
            });
        }
    }
    result
}

struct Receive<'a> {
    vm: &'a mut dyn TargetVm,
    opener: Option<&'a mut dyn Opener>,
    progress: &'a Mutex<Progress>,
    hello: Option<Hello>,
    state: ReceiverState,
    vcpus: Vec<Option<Vec<u8>>>,
    device: Option<Vec<u8>>,
    manifest_ok: bool,
}

impl Receive<'_> {
    fn run<R: Read, W: Write>(
        &mut self,
        reader: &mut FrameReader<R>,
        writer: &mut W,
        buf: &mut [u8],
    ) -> Result<(), MigrationError> {
        let hello = match reader.read_frame(buf)? {
            Frame::Hello(h) => h,
            other => {
                return Err(MigrationError::Protocol(format!(
                    "expected Hello, got {}",
                    other.message_type()
                )))
            }
        };
        self.hello = Some(hello.clone());
        self.accept(&hello)?;
        HelloAck::Accepted.encode(writer)?;
        writer.flush().map_err(|source| FrameError::Write {
            kind: MessageType::HelloAck,
            source,
        })?;
        self.state = self
            .state
            .next(crate::frames::MessageType::Hello)
            .and_then(|s| s.next(crate::frames::MessageType::HelloAck))
            .map_err(|e| MigrationError::Protocol(e.to_string()))?;
        self.vcpus = vec![None; hello.vcpus as usize];
        update(self.progress, |p| {
            p.status = Status::Active;
            p.total_bytes = hello.mem_size;
        });
        loop {
            let frame = reader.read_frame(buf)?;
            self.state = self
                .state
                .next(frame.message_type())
                .map_err(|e| MigrationError::Protocol(e.to_string()))?;
            if self.apply(frame, &hello)? {
                return self.finish(&hello);
            }
        }
    }

    fn accept(&mut self, hello: &Hello) -> Result<(), MigrationError> {
        match (hello.mode, &self.opener) {
            (GuestMode::Sev, None) => {
                return Err(MigrationError::Incompatible(
                    "the source sends an SEV guest to a plain VM".into(),
                ))
            }
            (GuestMode::Plain, Some(_)) => {
                return Err(MigrationError::Incompatible(
                    "the source sends a plain guest to an SEV VM".into(),
                ))
            }
            _ => {}
        }
        self.vm.local().check(hello)?;
        if let Some(opener) = self.opener.as_deref_mut() {
            if usize::from(hello.lanes) > opener.lanes() {
                return Err(MigrationError::Incompatible(format!(
                    "the source seals on {} helper vCPUs; this target has {}",
                    hello.lanes,
                    opener.lanes()
                )));
            }
            opener
                .keys(&hello.session_id, &hello.helper_nonce)
                .map_err(|e| MigrationError::Refused {
                    code: FailureCode::NotReady,
                    reason: chain(&*e),
                })?;
        }
        Ok(())
    }

    /// Applies one frame; true once Done arrived.
    fn apply(&mut self, frame: Frame<'_>, hello: &Hello) -> Result<bool, MigrationError> {
        match frame {
            Frame::SharedRanges(s) => {
                if self.opener.is_none() {
                    return Err(MigrationError::Protocol(
                        "SharedRanges for a plain guest".into(),
                    ));
                }
                for r in &s.ranges {
                    let end = r
                        .pages
                        .checked_mul(PAGE_SIZE as u64)
                        .and_then(|len| r.gpa.checked_add(len));
                    if !end.is_some_and(|end| hello.migratable(r.gpa, end)) {
                        return Err(MigrationError::Protocol(format!(
                            "shared range {:#x} x {} pages is not migratable guest RAM",
                            r.gpa, r.pages
                        )));
                    }
                }
                let ranges: Vec<(u64, u64)> = s.ranges.iter().map(|r| (r.gpa, r.pages)).collect();
                // Batches of the previous round land before the page states change.
                if let Some(opener) = self.opener.as_deref_mut() {
                    opener.drain().map_err(MigrationError::Helper)?;
                }
                self.vm.set_shared(&ranges).map_err(MigrationError::Vm)?;
            }
            Frame::PlainPages(p) => {
                for page in &p.pages {
                    if !hello.migratable(page.gpa, page.gpa.saturating_add(PAGE_SIZE as u64)) {
                        return Err(MigrationError::Protocol(format!(
                            "page {:#x} is not migratable guest RAM",
                            page.gpa
                        )));
                    }
                    if self.opener.is_some() && !self.vm.is_shared(page.gpa) {
                        return Err(MigrationError::Integrity(format!(
                            "the source sent the private page {:#x} in the clear",
                            page.gpa
                        )));
                    }
                    let data = match page.data {
                        PageData::Zero => None,
                        PageData::Bytes(b) => Some(b),
                    };
                    self.vm
                        .write_page(page.gpa, data)
                        .map_err(MigrationError::Vm)?;
                }
                let n = p.pages.len() as u64;
                update(self.progress, |pr| pr.pages += n);
            }
            Frame::PageBatch(b) => {
                let Some(opener) = self.opener.as_deref_mut() else {
                    return Err(MigrationError::Protocol(
                        "sealed pages for a plain guest".into(),
                    ));
                };
                let lane = usize::from(b.lane);
                if lane >= usize::from(hello.lanes) {
                    return Err(MigrationError::Protocol(format!(
                        "a batch for lane {lane} of {}",
                        hello.lanes
                    )));
                }
                opener
                    .submit(lane, b.records)
                    .map_err(MigrationError::Helper)?;
                let (n, bytes) = (b.count().map_or(0, u64::from), b.records.len() as u64);
                update(self.progress, |p| {
                    p.pages += n;
                    p.transferred_bytes += bytes;
                });
            }
            Frame::RoundEnd(r) => update(self.progress, |p| {
                p.rounds = r.round;
                p.remaining_bytes = r.dirty_remaining * PAGE_SIZE as u64;
            }),
            Frame::DeviceState(d) => {
                if self.device.replace(d.blob.to_vec()).is_some() {
                    return Err(MigrationError::Protocol("device state sent twice".into()));
                }
            }
            Frame::VcpuState(v) => {
                let slot = self.vcpus.get_mut(v.index as usize).ok_or_else(|| {
                    MigrationError::Protocol(format!(
                        "state for vCPU {} of {}",
                        v.index, hello.vcpus
                    ))
                })?;
                if slot.replace(v.blob.to_vec()).is_some() {
                    return Err(MigrationError::Protocol(format!(
                        "vCPU {} state sent twice",
                        v.index
                    )));
                }
            }
            Frame::Manifest(m) => {
                let Some(opener) = self.opener.as_deref_mut() else {
                    return Err(MigrationError::Protocol(
                        "a manifest for a plain guest".into(),
                    ));
                };
                let lane = usize::from(m.record[1]);
                if lane >= usize::from(hello.lanes) {
                    return Err(MigrationError::Protocol(format!(
                        "a manifest on lane {lane} of {}",
                        hello.lanes
                    )));
                }
                opener.drain().map_err(MigrationError::Helper)?;
                opener
                    .verify_manifest(lane, &m.record)
                    .map_err(MigrationError::Helper)?;
                self.manifest_ok = true;
            }
            Frame::Done(_) => return Ok(true),
            Frame::Abort(a) => return Err(a.into()),
            other => {
                return Err(MigrationError::Protocol(format!(
                    "{} frame from the source",
                    other.message_type()
                )))
            }
        }
        Ok(false)
    }

    fn finish(&mut self, hello: &Hello) -> Result<(), MigrationError> {
        if hello.mode == GuestMode::Sev && !self.manifest_ok {
            return Err(MigrationError::Integrity(
                "the source finished without a verified manifest".into(),
            ));
        }
        let device = self.device.take().ok_or_else(|| {
            MigrationError::Protocol("the source finished without device state".into())
        })?;
        let vcpus = std::mem::take(&mut self.vcpus)
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                s.ok_or_else(|| MigrationError::Protocol(format!("no state for vCPU {i}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.vm.finish(vcpus, device).map_err(MigrationError::Vm)
    }
}
