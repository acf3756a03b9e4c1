//! sevmirror's guest firmware.
//!
//! Boots like OVMF from the top of 4 GiB: 16-bit reset vector, 32-bit set-up, long mode
//! (boot.s, then guest-rt's rt.s: the only code that runs at CPL0), then every CPU drops
//! to CPL3 and runs Rust. On the development machines guest CPL0 is emulated ~5000x
//! slower than CPL3 and CPL3 cannot do port I/O, so CPL3 reaches the VMM through the MMIO
//! guest-services page and asks CPL0 (by `ud2` service calls) only for port I/O, MSRs and
//! halting.
//!
//! Its job: SEV detection and set-up, the migration helper (`helper`), the launch
//! secret's report, then the kernel fw_cfg carries (`direct_boot`: sevmirror's own guest
//! OS unless the host gives another), or without one the workloads itself
//! (guest-workloads, for its own tests).
//!
//! The image is ROM: it has no writable statics (the linker script checks); shared state
//! lives in RAM at the fixed addresses of guest-abi's `layout`. Everything the VMM says
//! (fw_cfg contents) is parsed defensively.

#![no_std]
#![no_main]

// Linked for its memcpy/memset/memcmp/bcmp symbols.
extern crate sevmirror_firmware_mem;

mod boot;
mod direct_boot;
mod helper;
mod sev;
mod smp;
mod workloads;

use guest_abi::{
    fwcfg as fwcfg_abi, layout,
    memmap::{firmware_reservations, MemoryMap, RegionKind, MAX_REGIONS},
    services::{exit_code, Event},
};
use guest_rt::{cpu, es, fwcfg, ghcb, globals, migration, paging, println, services};
use guest_workloads::Workload;

/// Where every CPU enters Rust, at CPL3, from boot.s.
#[no_mangle]
extern "C" fn sevm_rust_entry(cpu_index: u64) -> ! {
    if cpu_index == 0 {
        bsp_main()
    } else {
        smp::ap_main(cpu_index as usize)
    }
}

/// Prints an error line and stops the VM with `code`.
fn fail(code: u64, what: core::fmt::Arguments<'_>) -> ! {
    println!("firmware: error: {what}");
    services::exit(code)
}

/// The configuration the VMM passes through fw_cfg.
struct Config {
    /// Pages per second for the dirty workload.
    dirty_rate: u64,
    /// This boot only prepares a migration target.
    incoming: bool,
    /// Guest RAM as the host describes it (normalised).
    ram: MemoryMap,
    /// RAM with the firmware's reservations carved out.
    map: MemoryMap,
    ncpus: u32,
    tsc_khz: u64,
}

fn read_config() -> Config {
    let fw =
        fwcfg::FwCfg::probe().unwrap_or_else(|e| fail(exit_code::BAD_CONFIG, format_args!("{e}")));

    let mut e820 = [0u8; fwcfg_abi::E820_ENTRY_SIZE * MAX_REGIONS];
    let size = fw
        .read_file(fwcfg_abi::FILE_E820, &mut e820)
        .unwrap_or_else(|e| {
            fail(
                exit_code::BAD_CONFIG,
                format_args!("{}: {e}", fwcfg_abi::FILE_E820),
            )
        });
    let entries = e820[..size.min(e820.len())]
        .chunks_exact(fwcfg_abi::E820_ENTRY_SIZE)
        .filter_map(|e| {
            let base = u64::from_le_bytes(e.get(0..8)?.try_into().ok()?);
            let len = u64::from_le_bytes(e.get(8..16)?.try_into().ok()?);
            let kind = u32::from_le_bytes(e.get(16..20)?.try_into().ok()?);
            (kind == fwcfg_abi::E820_RAM).then_some((base, len))
        });
    let ram = MemoryMap::build(entries, &[])
        .unwrap_or_else(|e| fail(exit_code::BAD_CONFIG, format_args!("memory map: {e}")));
    let mut ranges = [(0u64, 0u64); MAX_REGIONS];
    for (slot, r) in ranges.iter_mut().zip(ram.regions()) {
        *slot = (r.base, r.size);
    }
    let helper_size = helper::region_size(&ranges[..ram.regions().len()]);
    let map = MemoryMap::build(
        ram.regions().iter().map(|r| (r.base, r.size)),
        &firmware_reservations(helper_size),
    )
    .unwrap_or_else(|e| fail(exit_code::BAD_CONFIG, format_args!("memory map: {e}")));

    let settings = guest_workloads::config::read(&fw)
        .unwrap_or_else(|e| fail(exit_code::BAD_CONFIG, format_args!("{e}")));
    let incoming = fw.find(fwcfg_abi::FILE_INCOMING).is_ok();
    Config {
        incoming,
        dirty_rate: settings.dirty_rate,
        ram,
        map,
        ncpus: settings.ncpus,
        tsc_khz: settings.tsc_khz,
    }
}

/// The workload the VMM names (the self-test if it names none).
fn workload(fw: &fwcfg::FwCfg) -> Workload {
    let mut buf = [0u8; guest_workloads::config::MAX_NAME];
    match guest_workloads::config::workload_name(fw, &mut buf) {
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
    }
}

fn bsp_main() -> ! {
    globals::init();
    // Under SEV-ES every exit from here on goes through this CPU's GHCB.
    if es::active() && ghcb::establish(0).is_err() {
        es::terminate()
    }
    services::event(Event::CPL3_ENTRY);
    if let Some(missing) = cpu::missing_features().next() {
        fail(
            exit_code::MISSING_CPU_FEATURE,
            format_args!("the CPU does not report {missing}; the VMM must pass the host's CPUID bits through"),
        );
    }
    let sev = guest_rt::sev::detect();
    guest_rt::sev::init_shared_list();
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
    let config = read_config();
    paging::map_high_ram(config.map.top());
    let ram: [(u64, u64); MAX_REGIONS] = core::array::from_fn(|i| {
        config
            .ram
            .regions()
            .get(i)
            .map_or((0, 0), |r| (r.base, r.size))
    });
    let boot = if config.incoming {
        helper::Boot::Incoming
    } else {
        helper::Boot::Normal
    };
    match helper::init(
        &ram[..config.ram.regions().len()],
        config.ram.top(),
        sev.is_some(),
        boot,
    ) {
        Ok((base, size)) => {
            println!(
                "firmware: migration helper ready: region {base:#x}+{size:#x} ({} KiB)",
                size >> 10
            );
            services::event(Event::HELPER_READY);
        }
        Err(e) => println!("firmware: migration helper unavailable: {e}"),
    }
    let mib = |b: u64| b >> 20;
    println!(
        "firmware: {} vCPU(s), {} MiB RAM, {} MiB usable",
        config.ncpus,
        mib(config.map.regions().iter().map(|r| r.size).sum()),
        mib(config.map.bytes(RegionKind::Usable)),
    );
    if let Some(s) = sev {
        // The C-bit position and address reduction the VMM's CPUID announces (what the
        // host's query-sev-capabilities reports too).
        let ebx = cpu::vmm_cpuid(0x8000_001f, 0)[1];
        println!(
            "firmware: SEV active{} (C-bit {}, reduced physical address bits {})",
            if s.es { " with SEV-ES" } else { "" },
            ebx & 0x3f,
            (ebx >> 6) & 0x3f
        );
        sev::report_secrets();
    }
    services::event(Event::CONFIGURED);
    if config.incoming {
        // A migration target: the guest's state arrives through the helper; this CPU's
        // registers will be replaced (SEV-ES: it restores them itself), so it only waits.
        println!("firmware: waiting for an incoming migration");
        migration::await_incoming();
    }
    // Direct boot: a kernel from fw_cfg takes the place of the built-in workloads (and
    // starts the other CPUs itself). Returns only without one.
    direct_boot::boot_if_given(&config.map, sev.is_some());
    // No kernel: the firmware runs the workload itself (`run --no-kernel`).
    let workload = fwcfg::FwCfg::probe()
        .map(|fw| workload(&fw))
        .unwrap_or_else(|e| fail(exit_code::BAD_CONFIG, format_args!("{e}")));
    println!("firmware: no kernel: running workload {}", workload.name());

    let settings = guest_workloads::config::Settings {
        ncpus: config.ncpus,
        tsc_khz: config.tsc_khz,
        dirty_rate: config.dirty_rate,
    };
    guest_workloads::publish(&config.map, &settings);
    if config.ncpus > 1 {
        smp::install_trampoline();
        if let Err(t) = guest_rt::smp::start_aps(config.ncpus, config.tsc_khz) {
            fail(
                exit_code::FAIL,
                format_args!("only {} of {} APs came up", t.online, config.ncpus - 1),
            );
        }
        services::event(Event::APS_STARTED);
    }
    if workloads::scribble::requested() {
        workloads::scribble::run(config.tsc_khz);
    }
    guest_workloads::run(workload, &config.map, &settings, sev)
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
    let _ = writeln!(Raw, "firmware: panic on vCPU {}: {info}", cpu::apic_id());
    services::exit(exit_code::PANIC)
}
