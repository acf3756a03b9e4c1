//! sevmirror's guest OS.
//!
//! An ELF kernel that the firmware loads and enters by the ELF hand-off protocol
//! (crates/loader `load`, docs/architecture.md §8): CPL0 in 64-bit mode with RSI = the
//! zero page. Its CPL0 part is entry.s (its own page tables, GDT and IDT) and guest-rt's
//! rt.s (per-CPU set-up, exception and service stubs), linked with guest-rt's `os`
//! layout: everything it keeps lives in its own image, which the loader places only in
//! RAM the firmware's map says is usable. Then every CPU runs Rust at CPL3, where the
//! development machines run guest code natively (CPL0 is emulated ~5000x slower), and
//! reaches the VMM through the guest-services page.
//!
//! It takes its memory map from the zero page's E820 table and never touches what that
//! map does not call RAM (the firmware's working area, the SEV area, the migration
//! helper's region, the services page), nor its own image. What it shares with the
//! firmware by protocol (guest-abi `layout`): the services page, the SEV shared list
//! (page conversions it announces are recorded there, for the helper) and the page the
//! helper marks "migrated out" (it only reads it). Its APs are started by INIT-SIPI-SIPI
//! with the firmware's trampoline vector; the firmware brings each one up and hands it
//! over at this same entry.
//!
//! It runs the workloads the VMM names in fw_cfg (`opt/sevmirror/workload`): `selftest`
//! (the default), `idle`, `dirty`, `canary`, and the SEV-ES tests `vctest` (its #VC
//! handler and GHCB against the VMM) and `bypass-*`; and the `scribble` test option, an OS that
//! breaks its map on purpose (`workloads::scribble`).

#![no_std]
#![no_main]

// Linked for its memcpy/memset/memcmp/bcmp symbols.
extern crate sevmirror_firmware_mem;

mod entry;
mod workloads;

use guest_abi::{
    layout::PAGE_SIZE,
    memmap::{MemoryMap, RegionKind},
    services::{exit_code, Event},
};
use guest_rt::{cpu, es, fwcfg, ghcb, layout, paging, println, services};
use guest_workloads::Workload;
use os_loader::boot_params::{BootParams, BOOT_PARAMS_SIZE, HEADER_MAGIC};

extern "C" {
    /// First byte of the OS's code (its runtime area lies below).
    static __os_image_start: u8;
    /// One past the OS image's last byte.
    static __os_image_end: u8;
}

/// E820 type of usable RAM.
const E820_RAM: u32 = 1;

/// Where every CPU enters Rust, at CPL3, from rt.s.
#[no_mangle]
extern "C" fn sevm_rust_entry(cpu_index: u64) -> ! {
    if cpu_index == 0 {
        bsp_main()
    } else {
        ap_main(cpu_index as usize)
    }
}

/// Prints an error line and stops the VM with `code`.
fn fail(code: u64, what: core::fmt::Arguments<'_>) -> ! {
    println!("os: error: {what}");
    services::exit(code)
}

/// The configuration the VMM passes through fw_cfg.
struct Config {
    settings: guest_workloads::config::Settings,
    workload: Workload,
}

fn read_config(fw: &fwcfg::FwCfg) -> Config {
    let settings = guest_workloads::config::read(fw)
        .unwrap_or_else(|e| fail(exit_code::BAD_CONFIG, format_args!("{e}")));
    let mut buf = [0u8; guest_workloads::config::MAX_NAME];
    let workload = match guest_workloads::config::workload_name(fw, &mut buf) {
        Err(e) => fail(exit_code::BAD_CONFIG, format_args!("{e}")),
        Ok(None) => Workload::SelfTest,
        Ok(Some(name)) => Workload::from_name(name).unwrap_or_else(|| {
            fail(
                exit_code::BAD_CONFIG,
                format_args!(
                    "unknown workload {:?}",
                    core::str::from_utf8(name).unwrap_or("<not UTF-8>")
                ),
            )
        }),
    };
    Config { settings, workload }
}

/// The OS image's bounds (its runtime area included).
fn image() -> (u64, u64) {
    // Linker-script symbols: only their addresses are taken.
    let (start, end) = (
        core::ptr::addr_of!(__os_image_start) as u64,
        core::ptr::addr_of!(__os_image_end) as u64,
    );
    if start < layout::AREA_END {
        fail(
            exit_code::FAIL,
            format_args!("the OS image at {start:#x} overlaps its runtime area (ends {:#x}): link.ld and guest-rt's layout disagree", layout::AREA_END),
        );
    }
    (layout::AREA_BASE, end)
}

/// The memory map the firmware handed over (the zero page's E820 table), with the OS's
/// own image carved out: what the workloads may use.
fn memory_map() -> MemoryMap {
    let zero_page = entry::boot_info(entry::boot_info::ZERO_PAGE);
    let mut page = [0u8; BOOT_PARAMS_SIZE];
    // SAFETY: the firmware placed the zero page in usable RAM, identity-mapped, and passed
    // its address in RSI; nothing else uses it. It is copied once, before any workload
    // may overwrite it, and only the copy is parsed.
    unsafe {
        core::ptr::copy_nonoverlapping(zero_page as *const u8, page.as_mut_ptr(), page.len())
    };
    let params = BootParams::decode(&page);
    let (magic, version) = ({ params.hdr.header }, { params.hdr.version });
    if magic != HEADER_MAGIC || version < os_loader::load::ELF_HANDOFF_VERSION {
        fail(
            exit_code::BAD_CONFIG,
            format_args!("no ELF hand-off zero page at {zero_page:#x} (header {magic:#x}, version {version})"),
        );
    }
    let ram = params
        .e820()
        .filter(|e| ({ e.kind }) == E820_RAM)
        .map(|e| ({ e.addr }, { e.size }));
    let (base, end) = image();
    MemoryMap::build(ram, &[(base, end - base, RegionKind::Firmware)])
        .unwrap_or_else(|e| fail(exit_code::BAD_CONFIG, format_args!("memory map: {e}")))
}

fn bsp_main() -> ! {
    // Under SEV-ES every exit from here on goes through this CPU's GHCB.
    if es::active() {
        entry::record_xcr0();
        if ghcb::establish(0).is_err() {
            es::terminate()
        }
    }
    if let Some(missing) = cpu::missing_features().next() {
        fail(
            exit_code::MISSING_CPU_FEATURE,
            format_args!("the CPU does not report {missing}; the VMM must pass the host's CPUID bits through"),
        );
    }
    let map = memory_map();
    let sev = guest_rt::sev::detect();
    if es::active() {
        if let Err(e) = ghcb::record_shared() {
            fail(exit_code::BAD_CONFIG, format_args!("SEV-ES: {e}"));
        }
    }
    if sev.is_some() {
        // fw_cfg DMA goes through this page: the host must be able to read it.
        if let Err(e) = guest_rt::sev::map_gpa_range(
            layout::FWCFG_DMA_PAGE,
            1,
            guest_rt::sev::Visibility::Shared,
        ) {
            fail(
                exit_code::BAD_CONFIG,
                format_args!("the host refused to share the fw_cfg DMA page (error {e:#x})"),
            );
        }
    }
    let fw =
        fwcfg::FwCfg::probe().unwrap_or_else(|e| fail(exit_code::BAD_CONFIG, format_args!("{e}")));
    let config = read_config(&fw);
    paging::map_high_ram(map.top());
    let (base, end) = image();
    let mib = |b: u64| b >> 20;
    println!(
        "os: sevmirror guest OS at {base:#x}..{end:#x}: {} vCPU(s), {} MiB usable of the firmware's map, workload {}{}",
        config.settings.ncpus,
        mib(map.bytes(RegionKind::Usable)),
        config.workload.name(),
        match sev {
            Some(s) if s.es => ", SEV-ES",
            Some(_) => ", SEV",
            None => "",
        }
    );

    guest_workloads::publish(&map, &config.settings);
    if config.settings.ncpus > 1 {
        if let Err(t) = guest_rt::smp::start_aps(config.settings.ncpus, config.settings.tsc_khz) {
            fail(
                exit_code::FAIL,
                format_args!(
                    "only {} of {} APs came up",
                    t.online,
                    config.settings.ncpus - 1
                ),
            );
        }
        services::event(Event::APS_STARTED);
    }
    if workloads::scribble::requested(&fw) {
        workloads::scribble::run(config.settings.tsc_khz);
    }
    guest_workloads::run(config.workload, &map, &config.settings, sev)
}

/// Where an AP goes once at CPL3: its GHCB (SEV-ES), then the workload's share.
fn ap_main(cpu_index: usize) -> ! {
    if es::active() && ghcb::establish(cpu_index).is_err() {
        // Without a GHCB nothing can be reported; the boot CPU's wait times out.
        es::terminate()
    }
    guest_workloads::ap_join(cpu_index)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write as _;
    // No console lock here: the panicking CPU may hold it.
    struct Raw;
    impl core::fmt::Write for Raw {
        fn write_str(&mut self, s: &str) -> core::fmt::Result {
            services::console_write(s.as_bytes());
            Ok(())
        }
    }
    let _ = writeln!(Raw, "os: panic on vCPU {}: {info}", cpu::apic_id());
    services::exit(exit_code::PANIC)
}

const _: () = assert!(PAGE_SIZE == 0x1000);
