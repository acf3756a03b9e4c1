//! `sevmirror bench helper`: figures, printed, never asserted.
//!
//! It measures the migration helper itself: an SEV guest (on the emulated
//! platform) fills its memory with data, a mirror VM's helper vCPUs seal every private page
//! (EXPORT) in batches of several sizes, and a second guest's helper opens them (IMPORT).
//! In the mirror the helper runs the kernel it picks itself (the fastest this CPU offers);
//! then, on one helper vCPU with memory the mirror has touched already, each session asks
//! both helpers for one kernel (HS_START/HS_RESPOND's kernel field, which may only name a
//! kernel the helper's CPU runs): every kernel's rate inside the mirror. Next to those
//! rows, the helper's own record code (`RecordKey::with_kernel`) seals and opens pages in
//! this process with every kernel the CPU supports: each kernel's limit per helper vCPU
//! without the mirror.

use crate::{
    gcm_limits::{self, KernelRate},
    HarnessError, Result,
};
use guest_abi::{fwcfg, layout};
use helper_abi::{
    mailbox::{GcmKernel, Op, Request},
    record::PAGE_RECORD_SIZE,
    MIGRATION_SECRET_GUID,
};
use serde::Serialize;
use sev_platform::{emulated::EmulatedPsp, owner, Policy, SevBackend};
use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};
use vmm::{
    memory::Visibility,
    mirror::{HelperVcpu, Mirror},
    sev::{HypercallTransport, SevConfig},
    ConsoleOut, Firmware, KvmSystem, Vm, VmConfig,
};

/// What `bench helper` measures.
#[derive(Clone, Debug)]
pub struct HelperBench {
    /// Guest RAM (filled with data before measuring).
    pub mem: u64,
    /// Most helper vCPUs to measure with (1..=N).
    pub helpers: u16,
    /// Batch sizes to measure.
    pub batches: Vec<u32>,
}

/// One measurement.
#[derive(Debug, Serialize)]
pub struct HelperRow {
    /// "export" or "import".
    pub op: &'static str,
    /// Helper vCPUs.
    pub helpers: u16,
    /// Pages per request.
    pub batch: u32,
    /// Pages moved.
    pub pages: u64,
    /// Pages per second.
    pub pages_per_s: f64,
    /// MiB of guest memory per second.
    pub mib_per_s: f64,
    /// The AES-256-GCM kernel the helper ran the session on (as its handshake response
    /// says).
    pub kernel: &'static str,
}

/// One kernel inside the mirror: 1 helper vCPU per side, the largest batch, warm memory.
#[derive(Debug, Serialize)]
pub struct MirrorKernelRow {
    /// The kernel asked for.
    pub kernel: &'static str,
    /// EXPORT (seal), MiB of guest memory per second.
    pub export_mib_s: Option<f64>,
    /// IMPORT (open), MiB of guest memory per second.
    pub import_mib_s: Option<f64>,
    /// Why it did not run (the helper refused the kernel).
    pub not_run: Option<String>,
}

/// The figures of `bench helper`.
#[derive(Debug, Serialize)]
pub struct HelperReport {
    /// One row per operation, helper count and batch size: in the mirror, with the
    /// kernel the helper picked.
    pub rows: Vec<HelperRow>,
    /// The kernel the helper reported at boot ("firmware: helper AES-256-GCM kernel …").
    pub mirror_kernel: Option<String>,
    /// Each kernel inside the mirror, asked for in the handshake.
    pub mirror_kernels: Vec<MirrorKernelRow>,
    /// The batch of `mirror_kernels`.
    pub mirror_kernels_batch: u32,
    /// The helpers' key agreement (HS_START, HS_RESPOND, HS_FINISH, HS_CONFIRM, each a
    /// mailbox round trip into a mirror): median and fastest ms, and how many were timed.
    pub handshake_ms: Option<(f64, f64, usize)>,
    /// The helper's record code in this process, one core, 4 KiB pages, per kernel.
    pub kernels: Vec<KernelRate>,
    /// Guest RAM.
    pub mem_bytes: u64,
    /// Pages the helper sealed and opened in each row.
    #[serde(skip)]
    pub private_pages: usize,
}

/// Whether a bench guest runs its workload or waits as a migration target (only an
/// incoming guest's helper takes the target's side of a session).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Boot {
    Normal,
    Incoming,
}

/// The AES-GCM kernel a guest's helper reported on its console at boot.
pub fn mirror_kernel(console: &str) -> Option<String> {
    const SAID: &str = "helper AES-256-GCM kernel ";
    let at = console.find(SAID)? + SAID.len();
    let name: String = console[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    (!name.is_empty()).then_some(name)
}

/// A guest whose memory is full of data, launched by an owner with a migration secret;
/// with the kernel its helper reported.
fn guest(
    kvm: &KvmSystem,
    psp: &Arc<EmulatedPsp>,
    mem: u64,
    workload: &str,
    helpers: u16,
    boot: Boot,
) -> Result<(Vm, Mirror, Option<String>)> {
    let policy = Policy(0);
    let session =
        owner::session(&psp.export_certs()?.pdh, policy).map_err(|source| HarnessError::Owner {
            what: "cannot make a session",
            source,
        })?;
    let backend: Arc<dyn SevBackend> = psp.clone();
    let (console, out) = ConsoleOut::capture();
    let mut vm = Vm::new(
        kvm,
        VmConfig {
            mem_size: mem,
            vcpus: 1,
            firmware: Firmware::load(firmware_image::IMAGE.to_vec())?,
            console,
            fw_cfg_files: [
                (fwcfg::FILE_WORKLOAD.into(), workload.as_bytes().to_vec()),
                (fwcfg::FILE_DIRTY_RATE.into(), b"1".to_vec()),
            ]
            .into_iter()
            .chain((boot == Boot::Incoming).then(|| (fwcfg::FILE_INCOMING.into(), Vec::new())))
            .collect(),
            sev: Some(SevConfig {
                backend,
                policy,
                session: Some(session.launch_session()),
                transport: HypercallTransport::ServicesPage,
            }),
        },
    )?;
    let started = vm.sev_launch_start()?;
    let measured = vm.sev_launch_measure(started)?;
    let secret = owner::secret(
        &session.keys,
        &measured.measurement(),
        &[(
            fwtable::Guid::from_bytes(MIGRATION_SECRET_GUID),
            vec![0x42; 32],
        )],
    )
    .map_err(|source| HarnessError::Owner {
        what: "cannot build the secret",
        source,
    })?;
    vm.sev_inject_secret(&measured, &secret.header, &secret.ciphertext, None)?;
    vm.sev_launch_finish(measured)?;
    vm.start()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let ready = if workload == "dirty" {
        "dirty: "
    } else {
        "helper ready"
    };
    while !String::from_utf8_lossy(&out.lock().unwrap_or_else(|p| p.into_inner())).contains(ready) {
        if Instant::now() > deadline {
            return Err(HarnessError::Timeout(format!(
                "the {workload} guest to come up"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let kernel = mirror_kernel(&String::from_utf8_lossy(
        &out.lock().unwrap_or_else(|p| p.into_inner()),
    ));
    let mirror = vm.attach_mirror(kvm, helpers)?;
    Ok((vm, mirror, kernel))
}

/// The pages the helper may seal: RAM outside its region that the guest keeps private.
fn private_pages(vm: &Vm, region: (u64, u64)) -> Vec<u64> {
    let view = vm.host_view();
    let states = view.page_states().cloned();
    let mem = vm.ram_regions();
    let mut out = Vec::new();
    let mut index = 0u64;
    for r in mem {
        for p in 0..r.size / layout::PAGE_SIZE {
            let gpa = r.gpa + p * layout::PAGE_SIZE;
            let private = states
                .as_ref()
                .is_none_or(|s| s.get(index) == Visibility::Private);
            if private && !(gpa >= region.0 && gpa < region.0 + region.1) {
                out.push(gpa);
            }
            index += 1;
        }
    }
    out
}

/// A fresh session between a source and a target helper (the key agreement), both
/// asked for `kernel`; the kernel the source's helper runs it on. The time the four
/// handshake requests took goes to `took`.
fn session(
    s: &mut HelperVcpu,
    d: &mut HelperVcpu,
    kernel: GcmKernel,
    took: &mut Vec<Duration>,
) -> Result<&'static str> {
    let t0 = Instant::now();
    let keyed = vmm::mirror::handshake_with(s, d, [0xbe; 16], [0x4e; 32], kernel)?;
    took.push(t0.elapsed());
    if kernel != GcmKernel::BEST && (keyed.source_kernel != kernel || keyed.target_kernel != kernel)
    {
        return Err(HarnessError::Unexpected(format!(
            "asked both helpers for kernel {}, they run {:?} and {:?}",
            kernel.name().unwrap_or("?"),
            keyed.source_kernel,
            keyed.target_kernel
        )));
    }
    Ok(keyed.source_kernel.name().unwrap_or("unreported"))
}

/// One export (timed, records dropped) and one export-import (import timed) of `pages`
/// on `n` helper vCPUs per side, each in a fresh session on `kernel`: the kernel used,
/// and the two times.
fn export_import(
    src: &mut Mirror,
    dst: &mut Mirror,
    n: usize,
    pages: &[u64],
    batch: u32,
    kernel: GcmKernel,
    handshakes: &mut Vec<Duration>,
) -> Result<(&'static str, Duration, Duration)> {
    let (s, d) = (&mut src.helpers_mut()[..n], &mut dst.helpers_mut()[..n]);
    for h in s.iter_mut().chain(d.iter_mut()) {
        reset(h)?;
    }
    // Export twice: timed without keeping records (the helper's speed), then in a fresh
    // session keeping them for the timed import.
    let used = session(&mut s[0], &mut d[0], kernel, handshakes)?;
    let (exported, _) = export(s, pages, batch, false)?;
    reset(&mut s[0])?;
    reset(&mut d[0])?;
    session(&mut s[0], &mut d[0], kernel, handshakes)?;
    let (_, lanes) = export(s, pages, batch, true)?;
    let imported = import(d, &lanes)?;
    Ok((used, exported, imported))
}

fn reset(h: &mut HelperVcpu) -> Result<()> {
    h.call_ok(
        Request {
            op: Op::RESET.0,
            ..Request::default()
        },
        &[],
    )?;
    Ok(())
}

/// Exports `pages` split across `helpers` (one thread each), keeping each batch's
/// records when `keep`; returns the elapsed time and the records per lane.
fn export(
    helpers: &mut [HelperVcpu],
    pages: &[u64],
    batch: u32,
    keep: bool,
) -> Result<(Duration, Vec<Vec<Vec<u8>>>)> {
    let n = helpers.len();
    let per = pages.len().div_ceil(n);
    let t0 = Instant::now();
    let results: Vec<Result<Vec<Vec<u8>>>> = std::thread::scope(|s| {
        let handles: Vec<_> = helpers
            .iter_mut()
            .zip(pages.chunks(per))
            .map(|(h, share)| {
                s.spawn(move || -> Result<Vec<Vec<u8>>> {
                    let mut kept = Vec::new();
                    for chunk in share.chunks(batch as usize) {
                        let r = h.call_ok(
                            Request {
                                op: Op::EXPORT.0,
                                count: chunk.len() as u32,
                                round: 1,
                                ..Request::default()
                            },
                            chunk,
                        )?;
                        if keep {
                            let mut records = vec![0u8; r.bytes as usize];
                            h.read_window(0, 0, &mut records)?;
                            kept.push(records);
                        }
                    }
                    Ok(kept)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(HarnessError::Unexpected("a helper thread panicked".into()))
                })
            })
            .collect()
    });
    let elapsed = t0.elapsed();
    let lanes = results.into_iter().collect::<Result<Vec<_>>>()?;
    Ok((elapsed, lanes))
}

fn import(helpers: &mut [HelperVcpu], lanes: &[Vec<Vec<u8>>]) -> Result<Duration> {
    let t0 = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = helpers
            .iter_mut()
            .zip(lanes)
            .map(|(h, batches)| {
                s.spawn(move || -> Result<()> {
                    for records in batches {
                        h.write_window(1, 0, records)?;
                        let count = helper_abi::record::walk(records, records.len()).count() as u32;
                        h.call_ok(
                            Request {
                                op: Op::IMPORT.0,
                                window: 1,
                                count,
                                bytes: records.len() as u32,
                                ..Request::default()
                            },
                            &[],
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(HarnessError::Unexpected("a helper thread panicked".into()))
                })
            })
            .collect()
    });
    results.into_iter().collect::<Result<()>>()?;
    Ok(t0.elapsed())
}

fn row(
    op: &'static str,
    helpers: u16,
    batch: u32,
    pages: u64,
    t: Duration,
    kernel: &'static str,
) -> HelperRow {
    let s = t.as_secs_f64().max(1e-9);
    HelperRow {
        op,
        helpers,
        batch,
        pages,
        pages_per_s: pages as f64 / s,
        mib_per_s: mib_per_s(pages, t),
        kernel,
    }
}

fn mib_per_s(pages: u64, t: Duration) -> f64 {
    (pages * 4096) as f64 / t.as_secs_f64().max(1e-9) / (1 << 20) as f64
}

/// Runs `bench helper`; `progress` hears each step.
pub fn run(bench: &HelperBench, mut progress: impl FnMut(&str)) -> Result<HelperReport> {
    if bench.helpers == 0 || bench.helpers as usize > helper_abi::MAX_HELPER_VCPUS {
        return Err(HarnessError::Usage(format!(
            "--helpers must be 1 to {}",
            helper_abi::MAX_HELPER_VCPUS
        )));
    }
    if let Some(b) = bench
        .batches
        .iter()
        .find(|&&b| b == 0 || b as usize > helper_abi::MAX_BATCH)
    {
        return Err(HarnessError::Usage(format!(
            "batch size {b} is out of range (1 to {})",
            helper_abi::MAX_BATCH
        )));
    }
    let kvm = KvmSystem::open()?;
    let dir = tempfile::tempdir().map_err(HarnessError::io(
        "cannot create a temporary platform directory",
    ))?;
    let psp = Arc::new(EmulatedPsp::open(&dir.path().join("platform"))?);
    progress("starting the source guest and filling its memory");
    let (src_vm, mut src, mirror_kernel) =
        guest(&kvm, &psp, bench.mem, "dirty", bench.helpers, Boot::Normal)?;
    progress("starting the target guest");
    let (_dst_vm, mut dst, _) =
        guest(&kvm, &psp, bench.mem, "idle", bench.helpers, Boot::Incoming)?;
    let region = (src.info().region_base, src.info().region_size);
    let pages = private_pages(&src_vm, region);
    let mut rows = Vec::new();
    let mut handshakes = Vec::new();
    for n in 1..=bench.helpers {
        for &batch in &bench.batches {
            let (used, exported, imported) = export_import(
                &mut src,
                &mut dst,
                n as usize,
                &pages,
                batch,
                GcmKernel::BEST,
                &mut handshakes,
            )?;
            let count = pages.len() as u64;
            rows.push(row("export", n, batch, count, exported, used));
            rows.push(row("import", n, batch, count, imported, used));
            progress(&format!(
                "{n} helper(s), batch {batch}, kernel {used}: export {:.0} MiB/s, import {:.0} MiB/s",
                mib_per_s(count, exported),
                mib_per_s(count, imported)
            ));
        }
    }
    // Every kernel inside the mirror, on memory the rows above have touched (the
    // mirror's first touches cost more than the crypto, docs/performance.md).
    let batch = bench.batches.iter().copied().max().unwrap_or(1);
    let mut mirror_kernels = Vec::new();
    for kernel in GcmKernel::ALL {
        let name = kernel.name().unwrap_or("?");
        let row = match export_import(
            &mut src,
            &mut dst,
            1,
            &pages,
            batch,
            kernel,
            &mut handshakes,
        ) {
            Ok((_, exported, imported)) => MirrorKernelRow {
                kernel: name,
                export_mib_s: Some(mib_per_s(pages.len() as u64, exported)),
                import_mib_s: Some(mib_per_s(pages.len() as u64, imported)),
                not_run: None,
            },
            Err(e) => MirrorKernelRow {
                kernel: name,
                export_mib_s: None,
                import_mib_s: None,
                not_run: Some(migration::engine::chain(&e)),
            },
        };
        progress(&match (row.export_mib_s, row.import_mib_s) {
            (Some(e), Some(i)) => {
                format!("in the mirror, kernel {name}: export {e:.0} MiB/s, import {i:.0} MiB/s")
            }
            _ => format!(
                "in the mirror, kernel {name}: not run: {}",
                row.not_run.as_deref().unwrap_or("")
            ),
        });
        mirror_kernels.push(row);
    }
    progress("sealing and opening in-process with every kernel");
    handshakes.sort_unstable();
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    Ok(HelperReport {
        handshake_ms: handshakes
            .get(handshakes.len() / 2)
            .zip(handshakes.first())
            .map(|(median, min)| (ms(median), ms(min), handshakes.len())),
        rows,
        mirror_kernel,
        mirror_kernels,
        mirror_kernels_batch: batch,
        kernels: gcm_limits::kernel_rates(Duration::from_millis(1500)),
        mem_bytes: bench.mem,
        private_pages: pages.len(),
    })
}

impl fmt::Display for HelperReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "migration helper, {} MiB guest ({} private pages), record {} bytes per page",
            self.mem_bytes >> 20,
            self.private_pages,
            PAGE_RECORD_SIZE
        )?;
        writeln!(
            f,
            "in the mirror, the helper's own choice (at boot it reported kernel {}):",
            self.mirror_kernel
                .as_deref()
                .unwrap_or("unknown (not on the console)")
        )?;
        writeln!(
            f,
            "{:<7} {:>7} {:>6} {:>12} {:>10}  kernel",
            "op", "helpers", "batch", "pages/s", "MiB/s"
        )?;
        for r in &self.rows {
            writeln!(
                f,
                "{:<7} {:>7} {:>6} {:>12.0} {:>10.0}  {}",
                r.op, r.helpers, r.batch, r.pages_per_s, r.mib_per_s, r.kernel
            )?;
        }
        if let Some((median, min, n)) = self.handshake_ms {
            writeln!(
                f,
                "key agreement in the mirrors (HS_START, HS_RESPOND, HS_FINISH, HS_CONFIRM): median {median:.2} ms, fastest {min:.2} ms, of {n}"
            )?;
        }
        writeln!(
            f,
            "in the mirror, each kernel asked for in the handshake (1 helper vCPU per side, batch {}, memory already touched):\n{:<10} {:>12} {:>12}",
            self.mirror_kernels_batch, "kernel", "export MiB/s", "import MiB/s"
        )?;
        for k in &self.mirror_kernels {
            match (k.export_mib_s, k.import_mib_s) {
                (Some(e), Some(i)) => writeln!(f, "{:<10} {:>12.0} {:>12.0}", k.kernel, e, i)?,
                _ => writeln!(
                    f,
                    "{:<10} not run: {}",
                    k.kernel,
                    k.not_run.as_deref().unwrap_or("")
                )?,
            }
        }
        write!(
            f,
            "in-process, the helper's record code (RecordKey::with_kernel), one core = one helper vCPU's limit, 4 KiB pages:\n{:<10} {:>10} {:>10}",
            "kernel", "seal MiB/s", "open MiB/s"
        )?;
        for k in &self.kernels {
            match (k.seal_gib_s, k.open_gib_s) {
                (Some(a), Some(b)) => write!(
                    f,
                    "\n{:<10} {:>10.0} {:>10.0}{}",
                    k.kernel,
                    a * 1024.0,
                    b * 1024.0,
                    if k.best {
                        "  (the helper's choice here)"
                    } else {
                        ""
                    }
                )?,
                _ => write!(
                    f,
                    "\n{:<10} not run: {}",
                    k.kernel,
                    k.not_run.as_deref().unwrap_or("")
                )?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helpers_kernel_is_read_from_its_console() {
        let console = "firmware: 1 vCPU(s)\nfirmware: helper AES-256-GCM kernel vaes512: self-test passed\nfirmware: migration helper ready\n";
        assert_eq!(mirror_kernel(console).as_deref(), Some("vaes512"));
        assert_eq!(
            mirror_kernel("firmware: migration helper unavailable: …"),
            None
        );
        assert_eq!(mirror_kernel("helper AES-256-GCM kernel : x"), None);
    }
}
