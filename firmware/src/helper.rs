//! The migration helper runtime: what `helper_init` prepares at boot, and the loop a
//! mirror vCPU runs at CPL3 once the measured entry point (boot.s,
//! `sevm_helper_entry32`) has brought it into long mode.
//!
//! The helper region (helper-abi `region`) is reserved in every memory map the firmware
//! hands on, so nothing the guest does after boot reaches it. It holds the helper's own
//! page tables, descriptor tables, stacks, its shared state and version table (private),
//! and one mailbox per helper vCPU (shared with the host). The helper keeps no state in
//! the guest's own firmware areas: the guest keeps running while the helper works.

use core::{
    mem::offset_of,
    sync::atomic::{AtomicU32, Ordering},
};
use guest_abi::{
    ghcb::{
        msr::{MsrRequest, MSR_GHCB},
        service::Call,
        Ghcb, PAGE_LEN,
    },
    layout,
    layout::selector,
    services,
};
use guest_rt::sev;
use helper_abi::{
    mailbox::{doorbell, Status},
    region, MAX_BATCH, MAX_HELPER_VCPUS, PAGE_SIZE, WINDOWS_PER_VCPU,
};
use mirror_helper::{
    engine::Entropy,
    integrity::{Checker, Digests, Mask, Range, StaticMemory, Structure},
    GuestMemory, Helper, HelperLayout, Mailbox, SessionState,
};
use sha2::{Digest, Sha256};
use vc_handler::client::{self, GhcbClient, Vmgexit};

/// The helper's shared state (at region + CONTEXT): valid when zeroed, written once by
/// `init` before any helper vCPU exists. Everything from `layout` up to `integrity` is
/// static after `init` and covered by the self-check ([`Structure::Context`]).
#[repr(C)]
pub struct HelperContext {
    session: SessionState,
    layout: HelperLayout,
    versions_gpa: u64,
    versions_len: u64,
    region: (u64, u64),
    /// Pages of page tables `init` built (PML4, PDPT, directories).
    page_table_pages: u64,
    /// The self-check's key and the digests `init` recorded (not part of any digest).
    integrity: Integrity,
}

/// The self-check's record (mirror-helper `integrity`).
#[repr(C)]
struct Integrity {
    /// Drawn from RDRAND at boot.
    key: [u8; 32],
    /// The structures' digests right after `init` built them.
    expected: Digests,
}

const _: () = assert!(core::mem::size_of::<HelperContext>() as u64 <= region::CONTEXT_SIZE);
// The session state comes first: a test OS finds the request count at region + CONTEXT +
// mirror-helper's REQUESTS_OFFSET (the `scribble` option).
const _: () = assert!(core::mem::offset_of!(HelperContext, session) == 0);

/// Why the helper could not be prepared (the guest then runs without one).
#[derive(Clone, Copy, Debug)]
pub enum InitError {
    /// The region does not lie in the first RAM range.
    NoRoom(u64),
    /// The RAM map is not one the helper can track.
    Layout,
    /// The host refused to share the mailboxes.
    Share(u64),
    /// The AES-256-GCM kernel the helper would use failed its known-answer test.
    SelfTest(record_gcm::SelfTestError),
    /// RDRAND gave no key for the self-check.
    NoEntropy,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            InitError::NoRoom(size) => write!(f, "no room for the {size:#x}-byte helper region"),
            InitError::Layout => f.write_str("the RAM map has too many ranges for the helper"),
            InitError::Share(e) => write!(
                f,
                "the host refused to share the helper mailboxes (error {e:#x})"
            ),
            InitError::SelfTest(e) => write!(f, "{e}"),
            InitError::NoEntropy => f.write_str("the CPU gave no random numbers (RDRAND)"),
        }
    }
}

/// The helper region's size for this RAM.
pub fn region_size(ram: &[(u64, u64)]) -> u64 {
    region::region_size(ram.iter().map(|r| r.1 / PAGE_SIZE as u64).sum())
}

fn base() -> u64 {
    layout::HELPER_REGION_BASE
}

fn zero(gpa: u64, len: u64) {
    // SAFETY: callers pass ranges inside the helper region, which is reserved RAM that
    // only this code (on the boot CPU, before any helper vCPU exists) touches.
    unsafe { core::ptr::write_bytes(gpa as *mut u8, 0, len as usize) };
}

fn write64(gpa: u64, v: u64) {
    // SAFETY: as for `zero`.
    unsafe { core::ptr::write_unaligned(gpa as *mut u64, v) };
}

fn write16(gpa: u64, v: u16) {
    // SAFETY: as for `zero`.
    unsafe { core::ptr::write_unaligned(gpa as *mut u16, v) };
}

/// SHA-256 of the firmware image as this guest runs it (the ROM at the top of 4 GiB):
/// each helper binds its own into every handshake, so two helpers agree only if they run
/// the same firmware.
pub fn firmware_hash() -> [u8; 32] {
    // SAFETY: the ROM is mapped read-only at [FW_IMAGE_BASE, 4 GiB) in the identity map
    // for the whole life of the guest; nothing writes it.
    let rom = unsafe {
        core::slice::from_raw_parts(
            layout::FW_IMAGE_BASE as *const u8,
            layout::FW_IMAGE_SIZE as usize,
        )
    };
    Sha256::digest(rom).into()
}

/// Whether this boot waits for an incoming migration (the guest has not run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boot {
    /// A normal boot: the guest runs.
    Normal,
    /// A migration target: the guest's state arrives through the helper.
    Incoming,
}

/// Prepares the helper region: page tables, descriptor tables, stacks, state, and
/// shares the mailboxes with the host (under SEV). `ram` is the host's RAM list as
/// page-aligned ranges; `top` the end of RAM. Boot CPU only.
pub fn init(
    ram: &[(u64, u64)],
    top: u64,
    sev_active: bool,
    boot: Boot,
) -> Result<(u64, u64), InitError> {
    // The kernel the helper vCPUs will choose (same CPUID; their entry enables the same
    // XCR0 state as this CPU's, boot.s `sevm_xstate`), checked on known answers before
    // anything is set up: a helper that would seal wrongly must not report ready.
    let kernel = record_gcm::Kernel::best();
    record_gcm::self_test(kernel).map_err(InitError::SelfTest)?;
    crate::println!("firmware: helper AES-256-GCM kernel {kernel}: self-test passed");
    let size = region_size(ram);
    let b = base();
    if !ram.iter().any(|&(s, l)| s <= b && b + size <= s + l) {
        return Err(InitError::NoRoom(size));
    }
    let pages: u64 = ram.iter().map(|r| r.1 / PAGE_SIZE as u64).sum();
    let helper_layout = HelperLayout::new(
        ram,
        (b, size),
        layout::SEV_SHARED_LIST,
        (layout::SEV_SECRET_BASE, layout::SEV_SECRET_SIZE),
    )
    .map_err(|_| InitError::Layout)?
    .with_identity(layout::MIGRATION_STATE, firmware_hash());

    zero(b, region::MAILBOXES);
    zero(b + region::STATIC_SIZE, size - region::STATIC_SIZE);

    let mut key = [0u8; 32];
    if !Rdrand.fill(&mut key) {
        return Err(InitError::NoEntropy);
    }

    // Page tables: identity map of [0, 4 GiB) and RAM above, 2 MiB pages, user-accessible
    // (the helper runs at CPL3), A/D clear.
    let pml4 = b + region::PAGE_TABLES;
    let pdpt = pml4 + PAGE_SIZE as u64;
    let pd0 = pdpt + PAGE_SIZE as u64;
    let gibs = top
        .max(1 << 32)
        .div_ceil(1 << 30)
        .min(region::PAGE_DIRECTORIES);
    write64(pml4, pdpt | 7);
    for g in 0..gibs {
        let pd = pd0 + g * PAGE_SIZE as u64;
        for i in 0..512 {
            write64(pd + 8 * i, ((g << 30) + (i << 21)) | 0x87);
        }
        write64(pdpt + 8 * g, pd | 7);
    }

    // GDT: the fixed selectors of the boot GDT, then one TSS per helper vCPU.
    let gdt = b + region::GDT;
    let fixed: [u64; 6] = [
        0,
        0x00af_9b00_0000_ffff,
        0x00cf_9300_0000_ffff,
        0x00cf_f300_0000_ffff,
        0x00af_fb00_0000_ffff,
        0x00cf_9b00_0000_ffff,
    ];
    for (i, d) in fixed.iter().enumerate() {
        write64(gdt + 8 * i as u64, *d);
    }
    for cpu in 0..MAX_HELPER_VCPUS as u64 {
        let tss = b + region::TSS + cpu * 0x80;
        let kstack = b + region::KSTACKS + cpu * region::KSTACK_SIZE;
        write64(tss + 4, kstack + region::KSTACK_SIZE);
        write64(tss + 36, kstack + region::KSTACK_SIZE / 2);
        write16(tss + 102, 104);
        let desc = gdt + u64::from(selector::TSS0) + 16 * cpu;
        let lo = 0x67
            | (tss & 0xffff) << 16
            | ((tss >> 16) & 0xff) << 32
            | 0x89 << 40
            | ((tss >> 24) & 0xff) << 56;
        write64(desc, lo);
        write64(desc + 8, tss >> 32);
    }

    // IDT: the exception gates the firmware built (they point into the image).
    // SAFETY: the firmware IDT is initialised by boot.s before any Rust runs; both
    // ranges are reserved RAM and do not overlap.
    unsafe {
        core::ptr::copy_nonoverlapping(
            layout::IDT as *const u8,
            (b + region::IDT) as *mut u8,
            32 * 16,
        )
    };

    // The shared state the helper vCPUs use.
    let ctx = (b + region::CONTEXT) as *mut HelperContext;
    let session = SessionState::new();
    if boot == Boot::Incoming {
        session.set_incoming();
    }
    // SAFETY: the context is reserved, zeroed and not yet used by any helper vCPU.
    unsafe {
        ctx.write(HelperContext {
            session,
            layout: helper_layout,
            versions_gpa: b + region::STATIC_SIZE,
            versions_len: pages,
            region: (b, size),
            page_table_pages: 2 + gibs,
            integrity: Integrity {
                key,
                expected: Digests::default(),
            },
        })
    };

    // The anchor the entry point reads.
    let a = b + region::ANCHOR;
    write64(a + region::anchor::CR3, pml4);
    write16(
        a + region::anchor::GDTR,
        selector::TSS0 + 16 * MAX_HELPER_VCPUS as u16 - 1,
    );
    write64(a + region::anchor::GDTR + 2, gdt);
    write16(a + region::anchor::IDTR, 256 * 16 - 1);
    write64(a + region::anchor::IDTR + 2, b + region::IDT);
    write64(a + region::anchor::VCPUS, MAX_HELPER_VCPUS as u64);
    write64(a + region::anchor::KSTACKS, b + region::KSTACKS);
    write64(a + region::anchor::USTACKS, b + region::USTACKS);
    write64(a + region::anchor::CONTEXT, b + region::CONTEXT);
    // The slot counter starts at 0 (the region was zeroed); the magic goes last.
    write64(a + region::anchor::MAGIC_OFF, region::anchor::MAGIC);

    // The self-check's reference: every static structure as it stands now. (A helper vCPU
    // started before this is written, by a hostile host, finds no match and serves
    // nothing.)
    let expected = Checker::new(&key).digests(&static_ranges(2 + gibs), &Direct);
    // SAFETY: as for the context write above.
    unsafe { core::ptr::addr_of_mut!((*ctx).integrity.expected).write(expected) };

    if sev_active {
        let mailbox_pages = MAX_HELPER_VCPUS as u64 * region::MAILBOX_STRIDE / PAGE_SIZE as u64;
        sev::map_gpa_range(
            b + region::MAILBOXES,
            mailbox_pages,
            sev::Visibility::Shared,
        )
        .map_err(InitError::Share)?;
        if crate::es::active() {
            // Each helper vCPU's own GHCB: its doorbell under SEV-ES.
            sev::map_gpa_range(
                b + region::GHCBS,
                MAX_HELPER_VCPUS as u64,
                sev::Visibility::Shared,
            )
            .map_err(InitError::Share)?;
        }
    }
    Ok((b, size))
}

extern "C" {
    /// End of the image's code, constants and GOT (the linker script's `__rom_code_end`).
    static __rom_code_end: u8;
}

/// Where the last 4 KiB of the image start (entry code, boot GDT, GUID table).
const ROM_TOP: u64 = (1 << 32) - layout::PAGE_SIZE;

/// What the self-check covers (mirror-helper `integrity`), given the page-table pages
/// `init` built: the anchor (but its slot counter), GDT (but the TSS descriptors' busy
/// bits), IDT, TSSs, the context's static part, the page tables (but their A/D bits) and
/// the ROM the helper runs from: its code and constants, and the last page (entry code).
fn static_ranges(page_table_pages: u64) -> [Range; 8] {
    let b = base();
    let page = PAGE_SIZE as u64;
    let ctx_from = offset_of!(HelperContext, layout) as u64;
    let ctx_to = offset_of!(HelperContext, integrity) as u64;
    let tables = page_table_pages.min(2 + region::PAGE_DIRECTORIES);
    let code_end = core::ptr::addr_of!(__rom_code_end) as u64;
    [
        Range {
            structure: Structure::Anchor,
            gpa: b + region::ANCHOR,
            len: page,
            mask: Mask::Skip {
                at: region::anchor::NEXT_SLOT,
                len: 4,
            },
        },
        Range {
            structure: Structure::Gdt,
            gpa: b + region::GDT,
            len: page,
            mask: Mask::GdtTssBusy {
                from: u64::from(selector::TSS0),
            },
        },
        Range {
            structure: Structure::Idt,
            gpa: b + region::IDT,
            len: page,
            mask: Mask::None,
        },
        Range {
            structure: Structure::Tss,
            gpa: b + region::TSS,
            len: page,
            mask: Mask::None,
        },
        Range {
            structure: Structure::Context,
            gpa: b + region::CONTEXT + ctx_from,
            len: ctx_to - ctx_from,
            mask: Mask::None,
        },
        Range {
            structure: Structure::PageTables,
            gpa: b + region::PAGE_TABLES,
            len: tables * page,
            mask: Mask::PageTable,
        },
        Range {
            structure: Structure::Code,
            gpa: layout::FW_IMAGE_BASE,
            len: code_end.saturating_sub(layout::FW_IMAGE_BASE),
            mask: Mask::None,
        },
        Range {
            structure: Structure::Code,
            gpa: ROM_TOP,
            len: page,
            mask: Mask::None,
        },
    ]
}

/// Requests the helper has served (or refused) since boot: the `scribble` test option
/// waits for the first one (its mirror is attached and checked itself) before it writes.
pub fn requests_served() -> u64 {
    let ctx = (base() + region::CONTEXT) as *const HelperContext;
    // SAFETY: the context is reserved RAM written by `init` before this can be called (the
    // boot CPU runs workloads after `init`); the counter is an atomic the helper vCPUs
    // update, read here atomically.
    unsafe { (*ctx).session.requests.load(Ordering::Relaxed) }
}

/// Guest memory as the helper reaches it: through its identity map.
struct Direct;

impl StaticMemory for Direct {
    fn read(&self, gpa: u64, out: &mut [u8]) {
        // SAFETY: the self-check reads only its ranges: the helper region's fixed part and
        // the ROM, both mapped in every map the helper and the boot CPU use; it copies,
        // and only the copy is hashed.
        unsafe { core::ptr::copy_nonoverlapping(gpa as *const u8, out.as_mut_ptr(), out.len()) };
    }
}

impl GuestMemory for Direct {
    fn read_page(&self, gpa: u64, out: &mut [u8; PAGE_SIZE]) {
        // SAFETY: the engine only names page-aligned RAM (checked against the layout);
        // the helper's page tables map all RAM.
        unsafe { core::ptr::copy_nonoverlapping(gpa as *const u8, out.as_mut_ptr(), PAGE_SIZE) };
    }

    fn write_page(&self, gpa: u64, data: &[u8; PAGE_SIZE]) {
        // SAFETY: as for `read_page`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), gpa as *mut u8, PAGE_SIZE) };
    }
}

/// One helper vCPU's mailbox pages (shared with the host).
struct Pages {
    control: u64,
}

impl Pages {
    fn window(&self, w: usize) -> u64 {
        self.control + PAGE_SIZE as u64 + w as u64 * region::WINDOW_SIZE
    }

    fn copy_in(src: u64, out: &mut [u8]) {
        // SAFETY: callers stay inside this vCPU's mailbox (the engine bounds offsets by
        // the page and window sizes); it is mapped and shared memory the host may change
        // at any time, which is why it is only ever copied.
        unsafe { core::ptr::copy_nonoverlapping(src as *const u8, out.as_mut_ptr(), out.len()) };
    }

    fn copy_out(dst: u64, data: &[u8]) {
        // SAFETY: as for `copy_in`.
        unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), dst as *mut u8, data.len()) };
    }
}

impl Mailbox for Pages {
    fn read_control(&self, at: usize, out: &mut [u8]) {
        if at + out.len() <= PAGE_SIZE {
            Self::copy_in(self.control + at as u64, out);
        }
    }

    fn write_control(&self, at: usize, data: &[u8]) {
        if at + data.len() <= PAGE_SIZE {
            Self::copy_out(self.control + at as u64, data);
        }
    }

    fn read_window(&self, w: usize, at: usize, out: &mut [u8]) {
        if w < WINDOWS_PER_VCPU && at + out.len() <= region::WINDOW_SIZE as usize {
            Self::copy_in(self.window(w) + at as u64, out);
        }
    }

    fn write_window(&self, w: usize, at: usize, data: &[u8]) {
        if w < WINDOWS_PER_VCPU && at + data.len() <= region::WINDOW_SIZE as usize {
            Self::copy_out(self.window(w) + at as u64, data);
        }
    }

    fn windows(&self) -> usize {
        WINDOWS_PER_VCPU
    }

    fn window_size(&self) -> usize {
        region::WINDOW_SIZE as usize
    }
}

/// RDRAND, retried a few times as Intel and AMD recommend.
struct Rdrand;

impl Entropy for Rdrand {
    fn fill(&mut self, out: &mut [u8]) -> bool {
        for chunk in out.chunks_mut(8) {
            let mut v = 0u64;
            // SAFETY: RDRAND is available (checked at boot, `cpu::missing_features`) and
            // only writes `v`.
            let ok = (0..10).any(|_| unsafe { core::arch::x86_64::_rdrand64_step(&mut v) } == 1);
            if !ok {
                return false;
            }
            chunk.copy_from_slice(&v.to_le_bytes()[..chunk.len()]);
        }
        true
    }
}

/// A helper vCPU's own GHCB (SEV-ES): a shared page of the helper region, one per slot,
/// so the helper never touches the guest's GHCBs or boot-info page.
struct HelperGhcb {
    slot: u64,
}

impl Vmgexit for HelperGhcb {
    fn ghcb_gpa(&self) -> u64 {
        base() + region::GHCBS + self.slot * PAGE_SIZE as u64
    }

    fn vmgexit(&mut self, ghcb: &mut Ghcb) {
        let page = self.ghcb_gpa() as *mut u8;
        // SAFETY: the page is this slot's GHCB, in the reserved helper region, identity-
        // mapped in the helper's page tables and used by this vCPU alone; the copy covers
        // one page. The host's answer is copied once and only the copy is read.
        unsafe { core::ptr::copy_nonoverlapping(ghcb.page().as_ptr(), page, PAGE_LEN) };
        crate::ghcb::doorbell();
        let mut answer = [0u8; PAGE_LEN];
        // SAFETY: as above.
        unsafe { core::ptr::copy_nonoverlapping(page, answer.as_mut_ptr(), PAGE_LEN) };
        *ghcb = Ghcb::from_page(&answer);
    }

    fn msr_exchange(&mut self, request: u64) -> u64 {
        crate::cpu::wrmsr_cpl0(MSR_GHCB, request);
        crate::ghcb::doorbell();
        crate::cpu::rdmsr_cpl0(MSR_GHCB)
    }

    fn write_msr(&mut self, value: u64) {
        crate::cpu::wrmsr_cpl0(MSR_GHCB, value);
    }
}

/// How this helper vCPU reaches the VMM. One lives on each helper vCPU's stack for its
/// whole life (the firmware has no allocator to box the GHCB copy in).
#[allow(clippy::large_enum_variant)]
enum Doorbell {
    /// An MMIO write to the services page (plain SEV).
    Mmio,
    /// Sevmirror's Doorbell service exit through the helper's own GHCB (SEV-ES): the VMM
    /// takes the status from the GHCB alone.
    Ghcb(GhcbClient<HelperGhcb>),
}

impl Doorbell {
    /// SEV-ES when `sev_status` (as the entry read it) says so; the GHCB is set up here.
    fn new(slot: u64, sev_status: u64) -> Doorbell {
        if sev_status & 3 != 3 {
            return Doorbell::Mmio;
        }
        let mut ghcb = HelperGhcb { slot };
        if client::establish(&mut ghcb).is_err() {
            terminate(&mut ghcb, doorbell::ES_NO_GHCB);
        }
        Doorbell::Ghcb(GhcbClient::new(ghcb))
    }

    fn ring(&mut self, status: u64) {
        match self {
            Doorbell::Mmio => {
                // SAFETY: the services page is mapped in the helper's page tables and has
                // no memslot: the write exits to the VMM, which runs this vCPU again with
                // the next request.
                unsafe {
                    core::ptr::write_volatile(
                        (layout::SERVICES_GPA + services::DOORBELL) as *mut u64,
                        status,
                    )
                };
            }
            Doorbell::Ghcb(c) => {
                if c.service(Call::Doorbell, status, [0; 3]).is_err() {
                    terminate(c.transport(), doorbell::ES_NO_GHCB);
                }
            }
        }
    }
}

/// SEV-ES: asks the VMM to stop this helper vCPU (GHCB MSR protocol termination with
/// sevmirror's reason set), then parks.
fn terminate(ghcb: &mut HelperGhcb, reason: u8) -> ! {
    ghcb.msr_exchange(
        MsrRequest::Terminate {
            set: doorbell::ES_TERMINATE_SET,
            reason,
        }
        .encode(),
    );
    crate::cpu::halt()
}

/// Where a helper vCPU enters Rust, at CPL3 in the mirror VM (from boot.s). `slot` is
/// the value the entry point took from the anchor's counter: this vCPU's stack, mailbox
/// and lane id, never handed to another vCPU. `sev_status` is SEV_STATUS as the entry
/// read it (SEV-ES: the doorbell goes through the helper's own GHCB).
#[no_mangle]
extern "C" fn sevm_helper_rust_entry(slot: u64, context: u64, sev_status: u64) -> ! {
    let mut bell = Doorbell::new(slot, sev_status);
    // SAFETY: `context` comes from the anchor written by `init` (it is the context,
    // initialised before any helper vCPU could start); the versions table lies in the
    // reserved region and holds `versions_len` u32 counters, zeroed by `init`.
    let (ctx, versions) = unsafe {
        let ctx = &*(context as *const HelperContext);
        let versions = core::slice::from_raw_parts(
            ctx.versions_gpa as *const AtomicU32,
            ctx.versions_len as usize,
        );
        (ctx, versions)
    };
    // The slot is below MAX_HELPER_VCPUS (the entry point checked it against the anchor).
    let lane = match ctx.session.claim_lane(slot as u32, slot as u32) {
        Ok(lane) => lane,
        Err(_) => {
            // Cannot happen with slots from the counter; refuse to serve rather than
            // share a lane.
            bell.ring(doorbell::NO_SLOT);
            crate::cpu::halt()
        }
    };
    let pages = Pages {
        control: base() + region::MAILBOXES + slot * region::MAILBOX_STRIDE,
    };
    // The helper seals and opens only in its own region: its buffers are on this stack
    // and in its mailbox's windows. A stack anywhere else (an anchor rewritten before
    // this vCPU entered) means the region is not what `init` made: serve nothing.
    let probe = 0u8;
    let sp = core::ptr::addr_of!(probe) as u64;
    let stacks = base() + region::USTACKS;
    if !(stacks..stacks + MAX_HELPER_VCPUS as u64 * region::USTACK_SIZE).contains(&sp) {
        bell.ring(doorbell::NO_ANCHOR);
        crate::cpu::halt()
    }
    // The self-check, set up once per vCPU from the record `init` left (copied here: the
    // guest could change the context later, which the check then finds).
    let checker = Checker::new(&ctx.integrity.key);
    let expected = ctx.integrity.expected;
    let ranges = static_ranges(ctx.page_table_pages);
    bell.ring(doorbell::ready(slot));
    loop {
        let mut helper = Helper {
            layout: &ctx.layout,
            memory: &Direct,
            session: &ctx.session,
            versions,
            lane: &lane,
            entropy: Rdrand,
            region: ctx.region,
            max_batch: MAX_BATCH as u32,
        };
        match checker.verify(&expected, &ranges, &Direct) {
            Ok(()) => helper.serve(&pages),
            Err(structure) => helper.refuse(&pages, Status::CORRUPTED, structure as u32),
        }
        bell.ring(doorbell::DONE);
    }
}
