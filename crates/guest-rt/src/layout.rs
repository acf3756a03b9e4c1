//! Where this image keeps the runtime's state: the firmware in its reserved working area
//! (guest-abi `layout`), the guest OS (feature `os`) in memory of its own, inside its ELF
//! image, which the loader places only in RAM the firmware's map says is usable.
//!
//! Both images share the protocol addresses the firmware and the OS agree on (guest-abi
//! `layout`): the services page, and the SEV area's shared list, migrated-out page and
//! saved-state slots (SEV-ES migration: a target's firmware restores what the OS saved
//! there), which the firmware reserves and documents as the OS's to use
//! (docs/architecture.md §8).

pub use guest_abi::layout::{
    boot_info, selector, vcpu_save, HIGH_RAM_BASE, KSTACK_SIZE, MAX_VCPUS, MIGRATION_STATE,
    PAGE_SIZE, PD_COUNT, SERVICES_GPA, SEV_SHARED_LIST, TSS_STRIDE, USTACK_SIZE, VCPU_SAVE_BASE,
    VCPU_SAVE_STRIDE, VC_FRAME_BUSY, VC_FRAME_STRIDE,
};

#[cfg(not(feature = "os"))]
pub use guest_abi::layout::{
    BOOT_INFO, FWCFG_DMA_PAGE, GDT, GHCB_BASE, GLOBALS, IDT, KSTACKS, PDPT, PD_BASE, PML4,
    TSS_BASE, USTACKS, VC_FRAMES,
};

/// End of the runtime's state (everything above is at lower addresses).
#[cfg(not(feature = "os"))]
pub const AREA_END: u64 = guest_abi::layout::SEV_AREA_END;

#[cfg(feature = "os")]
mod os {
    use super::{KSTACK_SIZE, MAX_VCPUS, PAGE_SIZE, PD_COUNT, USTACK_SIZE};

    /// Start of the OS's own area (its linker script puts a zeroed segment here): the
    /// 4 MiB below the firmware's SEV area, which the firmware's map leaves usable.
    pub const AREA_BASE: u64 = 0x40_0000;
    /// Page-map level 4 of the OS's identity map.
    pub const PML4: u64 = AREA_BASE;
    /// Page-directory-pointer table covering the first 512 GiB.
    pub const PDPT: u64 = AREA_BASE + 0x1000;
    /// First page directory; page directory `n` maps GiB `n`.
    pub const PD_BASE: u64 = AREA_BASE + 0x2000;
    /// Global descriptor table.
    pub const GDT: u64 = PD_BASE + PD_COUNT * PAGE_SIZE;
    /// Interrupt descriptor table.
    pub const IDT: u64 = GDT + PAGE_SIZE;
    /// Task-state segments.
    pub const TSS_BASE: u64 = IDT + PAGE_SIZE;
    /// What the OS's CPL0 entry learned (guest-abi `layout::boot_info` offsets).
    pub const BOOT_INFO: u64 = TSS_BASE + PAGE_SIZE;
    /// Cross-CPU state (guest-rt `globals`).
    pub const GLOBALS: u64 = BOOT_INFO + PAGE_SIZE;
    /// Per-CPU #VC frame slots (two pages).
    pub const VC_FRAMES: u64 = GLOBALS + PAGE_SIZE;
    /// The OS's fw_cfg DMA bounce page (shared with the host under SEV).
    pub const FWCFG_DMA_PAGE: u64 = VC_FRAMES + 2 * PAGE_SIZE;
    /// Kernel stacks.
    pub const KSTACKS: u64 = (FWCFG_DMA_PAGE + PAGE_SIZE).next_multiple_of(0x1_0000);
    /// User stacks.
    pub const USTACKS: u64 = KSTACKS + KSTACK_SIZE * MAX_VCPUS as u64;
    /// Per-CPU GHCB pages (SEV-ES).
    pub const GHCB_BASE: u64 = USTACKS + USTACK_SIZE * MAX_VCPUS as u64;
    /// End of the OS's area: its code follows.
    pub const AREA_END: u64 = GHCB_BASE + PAGE_SIZE * MAX_VCPUS as u64;
    const _: () = assert!(AREA_END <= guest_abi::layout::SEV_AREA_BASE);
    const _: () = assert!(AREA_BASE >= guest_abi::layout::FW_AREA_END);
}
#[cfg(feature = "os")]
pub use os::*;

/// Top of the given CPU's kernel stack.
pub const fn kstack_top(cpu: usize) -> u64 {
    KSTACKS + KSTACK_SIZE * (cpu as u64 + 1)
}

/// The given CPU's #VC frame slot.
pub const fn vc_frame_gpa(cpu: usize) -> u64 {
    VC_FRAMES + VC_FRAME_STRIDE * cpu as u64
}

/// The given CPU's GHCB page.
pub const fn ghcb_gpa(cpu: usize) -> u64 {
    GHCB_BASE + PAGE_SIZE * cpu as u64
}

/// The given CPU's saved-state slot (SEV-ES migration).
pub const fn vcpu_save_gpa(cpu: usize) -> u64 {
    VCPU_SAVE_BASE + VCPU_SAVE_STRIDE * cpu as u64
}

/// Top of the given CPU's user stack.
pub const fn ustack_top(cpu: usize) -> u64 {
    USTACKS + USTACK_SIZE * (cpu as u64 + 1)
}
