//! `bypass-pio`, `bypass-mmio` and `bypass-msr`: an exit made the way a plain guest makes
//! it, for the VMM's SEV-ES strict mode to catch.
//!
//! Under SEV-ES every port access, MMIO access (but the VMGEXIT register) and most MSR
//! accesses raise #VC on hardware; the guest goes through its GHCB instead. These
//! workloads make one the plain way — an `out` at CPL0, a console write to the services
//! page, a `rdmsr` of IA32_APIC_BASE at CPL0 — as an unconverted site would: the VMM must
//! stop an SEV-ES guest there, naming the exit. For other guests the access is legitimate
//! and the workload passes.

use guest_abi::{
    layout::SERVICES_GPA,
    services::{exit_code, CONSOLE},
};
use guest_rt::{cpu, es, println, services};

/// Which plain access to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// `out 0x80, al` at CPL0.
    Pio,
    /// An 8-byte console write to the services page.
    Mmio,
    /// `rdmsr` of IA32_APIC_BASE (0x1b) at CPL0.
    Msr,
}

/// Makes the access; exits PASS if the guest is not an SEV-ES guest, FAIL if the VMM
/// served it for an SEV-ES guest.
pub fn run(access: Access) -> ! {
    println!("bypass: making a plain {access:?} access");
    match access {
        Access::Pio => cpu::outb_cpl0(0x80, 0),
        // SAFETY: the services page is identity-mapped, has no memslot behind it, and every
        // access exits to the VMM; the write touches no guest memory.
        Access::Mmio => unsafe {
            core::ptr::write_volatile(
                (SERVICES_GPA + CONSOLE) as *mut u64,
                u64::from_le_bytes(*b"bypass!\n"),
            )
        },
        Access::Msr => {
            cpu::rdmsr_cpl0(0x1b);
        }
    }
    if es::active() {
        println!("bypass: FAIL: the VMM served an SEV-ES guest's {access:?} access");
        services::exit(exit_code::FAIL)
    }
    println!("bypass: PASS (not an SEV-ES guest)");
    services::exit(exit_code::PASS)
}
