//! Direct boot: when fw_cfg carries a kernel (QEMU's `-kernel/-initrd/-append` items, see
//! guest-abi `fwcfg`), the firmware loads it and hands off to it instead of running a
//! built-in workload.
//!
//! The steps, after the SEV set-up and `helper_init` (so the helper's region is already
//! reserved in the map the kernel gets):
//!
//! 1. Under SEV, copy the hashes page (measured at launch) once into private memory and
//!    parse the copy; no table with a kernel present is a refusal, as in OVMF.
//! 2. Read the setup and kernel items into a staging copy of the file in private RAM (the
//!    highest room below 4 GiB; the loader places nothing there), and under SEV check its
//!    SHA-256 against the table before parsing anything else.
//! 3. Read the command line (checked against the kernel's maximum before it is read, and
//!    against the table), plan the load with os-loader (E820 with every firmware region
//!    reserved, placement of kernel, zero page, command line and initrd), read the initrd
//!    straight to its place and check it.
//! 4. Write the zero page, the command line and the kernel, report, and jump: CPL0, 64-bit,
//!    RSI = the zero page (svc `HANDOFF`; os-loader's `load` module documents both
//!    hand-off protocols). With `opt/sevmirror/stop-at-handoff` it stops before the jump
//!    instead, leaving memory for the host to inspect (tests; Linux cannot run here).
//!
//! Everything fw_cfg delivers is the host's: it is used only from the private copy, and
//! under SEV only once its hash matched the measured table. Under SEV a measured table
//! with no kernel in fw_cfg is refused too: the owner attested a launch that boots that
//! kernel, not the built-in workloads. Every refusal is one console
//! line and an exit status (guest-abi `exit_code::BAD_KERNEL`, `KERNEL_NOT_MEASURED`).

use crate::{cpu, fwcfg::FwCfg, println, services};
use core::sync::atomic::Ordering;
use guest_abi::{
    fwcfg as abi, layout,
    memmap::MemoryMap,
    services::{exit_code, Event},
};
use os_loader::{
    hashes::{Blob, BlobHasher, HashTable, HashTableError},
    load::{self, KernelFormat, Layout, LoadError},
    place::{self, Claims, Request},
    GuestWriter, Span, WriteError,
};

/// Longest command line read (its NUL included): above every kernel's maximum this loader
/// accepts (Linux's is 2047 on x86, the ELF protocol's 4095).
const CMDLINE_BUF: usize = load::MAX_ELF_CMDLINE + 1;
/// Everything the loader places stays below 4 GiB.
const LOW_LIMIT: u64 = 1 << 32;

/// Why the kernel is refused, with the exit status it ends with.
enum Refusal {
    /// Not bootable as given.
    Bad(BootError),
    /// Does not match the measurement (SEV).
    NotMeasured(HashTableError),
}

/// What is wrong with a kernel that is not a hash mismatch.
enum BootError {
    /// fw_cfg failed.
    FwCfg(crate::fwcfg::FwCfgError),
    /// The loader refused it.
    Load(LoadError),
    /// No room below 4 GiB for the staging copy of the file.
    NoStaging(u64),
    /// Setup and kernel sizes overflow.
    TooLarge,
    /// The command line item does not end with its NUL.
    CmdlineUnterminated,
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BootError::FwCfg(e) => write!(f, "reading it from fw_cfg: {e}"),
            BootError::Load(e) => write!(f, "{e}"),
            BootError::NoStaging(n) => {
                write!(f, "no room for its {n}-byte file in RAM below 4 GiB")
            }
            BootError::TooLarge => f.write_str("its setup and kernel sizes overflow"),
            BootError::CmdlineUnterminated => {
                f.write_str("the command line item does not end with a NUL byte")
            }
        }
    }
}

impl From<crate::fwcfg::FwCfgError> for Refusal {
    fn from(e: crate::fwcfg::FwCfgError) -> Refusal {
        Refusal::Bad(BootError::FwCfg(e))
    }
}

impl From<LoadError> for Refusal {
    fn from(e: LoadError) -> Refusal {
        Refusal::Bad(BootError::Load(e))
    }
}

impl From<BootError> for Refusal {
    fn from(e: BootError) -> Refusal {
        Refusal::Bad(e)
    }
}

impl From<HashTableError> for Refusal {
    fn from(e: HashTableError) -> Refusal {
        Refusal::NotMeasured(e)
    }
}

/// Guest RAM through the boot CPU's identity map, limited to usable RAM of the map.
struct Ram<'m>(&'m MemoryMap);

impl Ram<'_> {
    fn check(&self, gpa: u64, len: u64) -> Result<(), WriteError> {
        let err = WriteError { gpa, len };
        let span = Span::new(gpa, len).ok_or(err)?;
        if len == 0 || place::in_usable_ram(self.0, &span) {
            Ok(())
        } else {
            Err(err)
        }
    }
}

impl GuestWriter for Ram<'_> {
    fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), WriteError> {
        self.check(gpa, data.len() as u64)?;
        // SAFETY: the range is usable RAM of the firmware's map (checked), identity-mapped,
        // and the loader writes only ranges it placed, which nothing else references.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), gpa as *mut u8, data.len()) };
        Ok(())
    }

    fn zero(&mut self, gpa: u64, len: u64) -> Result<(), WriteError> {
        self.check(gpa, len)?;
        // SAFETY: as for `write`.
        unsafe { core::ptr::write_bytes(gpa as *mut u8, 0, len as usize) };
        Ok(())
    }
}

/// The measured hashes table, copied out of the hashes page once.
struct Measured {
    page: [u8; layout::SEV_HASH_TABLE_SIZE as usize],
}

impl Measured {
    fn copy() -> Measured {
        let mut page = [0u8; layout::SEV_HASH_TABLE_SIZE as usize];
        // SAFETY: the hashes page is reserved RAM of the SEV area, identity-mapped, private
        // under SEV; it is copied once and only the copy is parsed.
        unsafe {
            core::ptr::copy_nonoverlapping(
                layout::SEV_HASH_TABLE_BASE as *const u8,
                page.as_mut_ptr(),
                page.len(),
            )
        };
        Measured { page }
    }

    fn table(&self) -> Result<HashTable<'_>, HashTableError> {
        HashTable::parse(&self.page)
    }
}

/// Loads and starts the kernel fw_cfg carries, if it carries one; returns only if it does
/// not. `map` is the firmware's memory map (RAM with its reservations, the helper's region
/// among them); `sev` whether SEV is active (the kernel must then match the measurement).
pub fn boot_if_given(map: &MemoryMap, sev: bool) {
    let Ok(fw) = FwCfg::probe() else {
        return;
    };
    if fw.read_u32(abi::KEY_KERNEL_SIZE).unwrap_or(0) == 0 {
        // No kernel. Under SEV a launch that measured a hashes table was meant to boot
        // the kernel it names: the host withholding it gets no built-in workload instead.
        if sev && Measured::copy().table().is_ok() {
            println!(
                "firmware: error: the launch measured an SEV hashes table (a kernel to boot) but fw_cfg carries no kernel: refusing to run without it"
            );
            services::exit(exit_code::KERNEL_NOT_MEASURED)
        }
        return;
    }
    let e = match load_and_hand_off(&fw, map, sev) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    match e {
        Refusal::Bad(e) => {
            println!("firmware: error: cannot boot the kernel: {e}");
            services::exit(exit_code::BAD_KERNEL)
        }
        Refusal::NotMeasured(HashTableError::NoTable) => {
            println!(
                "firmware: error: a kernel was given but no SEV hashes table was measured at launch: refusing to boot it"
            );
            services::exit(exit_code::KERNEL_NOT_MEASURED)
        }
        Refusal::NotMeasured(e) => {
            println!("firmware: error: {e}");
            services::exit(exit_code::KERNEL_NOT_MEASURED)
        }
    }
}

/// Checks a blob's hash against the table, under SEV.
fn verify(table: Option<&HashTable<'_>>, blob: Blob, hash: BlobHasher) -> Result<(), Refusal> {
    match table {
        Some(t) => Ok(t.verify_hash(blob, &hash.finish())?),
        None => Ok(()),
    }
}

fn load_and_hand_off(
    fw: &FwCfg,
    map: &MemoryMap,
    sev: bool,
) -> Result<core::convert::Infallible, Refusal> {
    let measured = sev.then(Measured::copy);
    let table = measured.as_ref().map(Measured::table).transpose()?;

    let setup_len = u64::from(fw.read_u32(abi::KEY_SETUP_SIZE)?);
    let kernel_len = u64::from(fw.read_u32(abi::KEY_KERNEL_SIZE)?);
    let initrd_len = u64::from(fw.read_u32(abi::KEY_INITRD_SIZE)?);
    let cmdline_len = u64::from(fw.read_u32(abi::KEY_CMDLINE_SIZE)?);
    let file_len = setup_len
        .checked_add(kernel_len)
        .ok_or(BootError::TooLarge)?;
    println!(
        "firmware: direct boot: kernel of {file_len} bytes ({setup_len} setup), initrd of {initrd_len} bytes, command line of {} bytes",
        cmdline_len.saturating_sub(1)
    );

    // The staging copy of the file: as high below 4 GiB as it fits (the kernel goes low,
    // the initrd high but below it).
    let staging = place::align_up(file_len, layout::PAGE_SIZE)
        .and_then(|size| {
            place::highest(
                map,
                &Claims::new(),
                &Request {
                    size,
                    align: layout::PAGE_SIZE,
                    min: 0,
                    limit: LOW_LIMIT,
                },
            )
        })
        .ok_or(BootError::NoStaging(file_len))?;
    let mut hasher = BlobHasher::new();
    // SAFETY: the staging span is usable RAM of the map, identity-mapped, not yet used
    // by anything (the loader avoids it below).
    unsafe {
        fw.read_to_ram(abi::KEY_SETUP_DATA, staging.base, setup_len, |b| {
            hasher.update(b)
        })?;
        fw.read_to_ram(
            abi::KEY_KERNEL_DATA,
            staging.base + setup_len,
            kernel_len,
            |b| hasher.update(b),
        )?;
    }
    verify(table.as_ref(), Blob::Kernel, hasher)?;
    // SAFETY: the staging copy was just written and nothing else references it; from here
    // on it is only read, until the hand-off.
    let file = unsafe { core::slice::from_raw_parts(staging.base as *const u8, file_len as usize) };

    // The command line: its size is checked against the kernel's maximum before anything
    // is read, then its bytes against the table.
    let max = load::cmdline_max(file)?;
    let text_len = cmdline_len.saturating_sub(1);
    if text_len > max as u64 || cmdline_len > CMDLINE_BUF as u64 {
        return Err(LoadError::CmdlineTooLong {
            len: text_len as usize,
            max,
        }
        .into());
    }
    let mut cmdline = [0u8; CMDLINE_BUF];
    let cmdline = &mut cmdline[..cmdline_len as usize];
    fw.read(abi::KEY_CMDLINE_DATA, cmdline)?;
    let mut h = BlobHasher::new();
    h.update(cmdline);
    verify(table.as_ref(), Blob::Cmdline, h)?;
    let text = match cmdline.split_last() {
        Some((0, text)) => text,
        Some(_) => return Err(BootError::CmdlineUnterminated.into()),
        None => &[][..],
    };

    let mmio = [Span {
        base: layout::SERVICES_GPA,
        size: layout::PAGE_SIZE,
    }];
    let guest = Layout { map, mmio: &mmio };
    let prepared = load::prepare(file, initrd_len, text, &guest, &[staging])?;
    let plan = *prepared.plan();

    // The initrd, straight to where the plan put it.
    let mut h = BlobHasher::new();
    if let Some(rd) = plan.initrd {
        // SAFETY: the plan placed the initrd in usable RAM, clear of everything else.
        unsafe { fw.read_to_ram(abi::KEY_INITRD_DATA, rd.base, rd.size, |b| h.update(b))? };
    }
    verify(table.as_ref(), Blob::Initrd, h)?;
    match &table {
        Some(_) => println!(
            "firmware: SEV: kernel, initrd and command line match the measured hashes table"
        ),
        None => println!("firmware: no SEV: the kernel is booted without a measurement to check"),
    }

    let format = prepared.format();
    let handoff = prepared.write(&mut Ram(map))?;
    let entry = handoff.plan.entry;
    let zero_page = handoff.plan.boot_params.base;
    let (rd_base, rd_size) = plan.initrd.map_or((0, 0), |s| (s.base, s.size));
    println!(
        "firmware: loaded {} kernel at {:#x}+{:#x}: entry {entry:#x}, boot_params {zero_page:#x}, command line {:#x}, initrd {rd_base:#x}+{rd_size:#x}",
        match format {
            KernelFormat::BzImage => "bzImage",
            KernelFormat::Elf => "ELF",
        },
        plan.kernel.base,
        plan.kernel.size,
        plan.cmdline.base,
    );
    services::event(Event::KERNEL_HANDOFF);
    if fw.find(abi::FILE_STOP_AT_HANDOFF).is_ok() {
        println!(
            "firmware: stop-at-handoff: stopping instead of jumping to {entry:#x} with RSI = {zero_page:#x}"
        );
        services::exit(exit_code::HANDOFF_STOPPED)
    }
    if format == KernelFormat::Elf {
        // The OS starts its APs with INIT-SIPI-SIPI: each comes up through the firmware's
        // AP path (the trampoline, or the SEV-ES reset block) and enters the OS where this
        // CPU does (smp::ap_main).
        crate::smp::install_trampoline();
        let g = crate::globals::get();
        g.handoff_zero_page.store(zero_page, Ordering::Relaxed);
        g.handoff_entry.store(entry, Ordering::Release);
    }
    println!("firmware: handing off to {entry:#x} at CPL0 with RSI = {zero_page:#x}");
    cpu::handoff(entry, zero_page)
}
