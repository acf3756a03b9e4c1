//! Fixed guest-physical layout shared by the firmware and the VMM.
//!
//! The firmware runs from a read-only image at the top of 4 GiB (like OVMF) and keeps all
//! of its mutable state in RAM at the fixed addresses below, which it reserves in every
//! memory map it hands on. Everything here is a plain constant so the firmware's
//! assembly can use it through `const` operands.

/// Size of a small page.
pub const PAGE_SIZE: u64 = 0x1000;
/// Size of a large (2 MiB) page, the granularity of the firmware's identity map.
pub const LARGE_PAGE_SIZE: u64 = 0x20_0000;
/// Most vCPUs the firmware supports (per-CPU stacks and TSSs are sized for this).
pub const MAX_VCPUS: usize = 32;

/// Size of the firmware image; it ends at 4 GiB so the reset vector is at 0xFFFF_FFF0.
pub const FW_IMAGE_SIZE: u64 = 0x10_0000;
/// Guest-physical address where the firmware image is mapped (read-only).
pub const FW_IMAGE_BASE: u64 = (1 << 32) - FW_IMAGE_SIZE;

/// RAM below this address is mapped low; the rest of guest RAM starts at 4 GiB.
pub const LOW_RAM_LIMIT: u64 = 0xC000_0000;
/// First guest-physical address of RAM above the 32-bit hole.
pub const HIGH_RAM_BASE: u64 = 1 << 32;
/// Largest guest RAM the firmware's page tables can map.
pub const MAX_RAM: u64 = 64 << 30;
/// Smallest guest RAM the firmware can run in: its reserved areas plus room to work.
pub const MIN_RAM: u64 = 64 << 20;

/// Real-mode page the application processors start in (SIPI vector = this >> 12).
pub const AP_TRAMPOLINE: u64 = 0x8000;

/// Start of the firmware's working area: page tables, descriptor tables, stacks.
pub const FW_AREA_BASE: u64 = 0x10_0000;
/// Page-map level 4 of the identity map.
pub const PML4: u64 = 0x10_0000;
/// Page-directory-pointer table covering the first 512 GiB.
pub const PDPT: u64 = 0x10_1000;
/// First page directory; page directory `n` maps GiB `n` of the address space.
pub const PD_BASE: u64 = 0x10_2000;
/// Page directories available (one per GiB of mapped address space).
pub const PD_COUNT: u64 = (HIGH_RAM_BASE + MAX_RAM) >> 30;
/// Global descriptor table (fixed entries, then one 16-byte TSS descriptor per CPU).
pub const GDT: u64 = 0x15_0000;
/// Interrupt descriptor table (256 gates).
pub const IDT: u64 = 0x15_1000;
/// Task-state segments, `TSS_STRIDE` bytes apart, one per CPU.
pub const TSS_BASE: u64 = 0x15_2000;
/// Distance between consecutive TSSs.
pub const TSS_STRIDE: u64 = 0x80;
/// Page where the boot CPU's CPL0 code leaves what it learned before any Rust ran (see
/// [`boot_info`]); the other CPUs and the CPL3 code read it.
pub const BOOT_INFO: u64 = 0x15_3000;
/// Page the firmware keeps its cross-CPU state in (see the firmware's `globals`).
pub const GLOBALS: u64 = 0x15_4000;
/// Per-CPU #VC frame pages (SEV-ES): the vector-29 stub copies the exception frame to CPU
/// n's slot at `VC_FRAMES + n * VC_FRAME_STRIDE` for the CPL3 handler (see
/// [`vc_frame_gpa`]).
pub const VC_FRAMES: u64 = 0x15_5000;
/// Distance between consecutive #VC frame slots.
pub const VC_FRAME_STRIDE: u64 = 0x100;
/// Offset, in a #VC frame slot, of the word that is non-zero while the CPU's #VC handler
/// runs (after the 0xB0-byte frame).
pub const VC_FRAME_BUSY: u64 = 0xb0;
/// Page the firmware uses as its fw_cfg DMA bounce buffer (shared with the host).
pub const FWCFG_DMA_PAGE: u64 = 0x15_8000;
/// Kernel (CPL0) stacks, `KSTACK_SIZE` each; the lower half of each is the IST stack.
pub const KSTACKS: u64 = 0x16_0000;
/// Size of one CPU's kernel stack.
pub const KSTACK_SIZE: u64 = 0x2000;
/// User (CPL3) stacks, `USTACK_SIZE` each.
pub const USTACKS: u64 = 0x20_0000;
/// Size of one CPU's user stack.
pub const USTACK_SIZE: u64 = 0x1_0000;
/// End of the firmware's working area.
pub const FW_AREA_END: u64 = USTACKS + USTACK_SIZE * MAX_VCPUS as u64;

/// Base of the SEV area: secret page, hash table, reserved for the platform.
pub const SEV_AREA_BASE: u64 = 0x80_0000;
/// Page the guest owner's launch secret is injected into (LAUNCH_SECRET target).
pub const SEV_SECRET_BASE: u64 = 0x80_0000;
/// Size of the secret area.
pub const SEV_SECRET_SIZE: u64 = 0x1000;
/// Page reserved for the kernel/initrd/cmdline hash table (QEMU's SEV hashes). As in OVMF's
/// AmdSev build (`PcdQemuHashTableBase`) it is RAM outside the image: for measured direct
/// boot the VMM writes the 176-byte table (os-loader's `hashes` module) at its start and
/// measures those bytes with a LAUNCH_UPDATE_DATA after the image's, so the launch digest
/// is SHA-256(image ‖ table) wherever the page is, as sev-snp-measure computes it.
pub const SEV_HASH_TABLE_BASE: u64 = 0x80_1000;
/// Size of the hash table area.
pub const SEV_HASH_TABLE_SIZE: u64 = 0x1000;
/// Page where the guest records the pages it shares with the host (private, migrated
/// with the guest; the migration helper reads it to know which pages are private).
pub const SEV_SHARED_LIST: u64 = 0x80_2000;
/// Page where the migration helper records that this guest "migrated out": a source
/// whose helper committed a migration never runs again (see guest-abi's `migration`).
/// Private, in the SEV area (reserved in every memory map), written only by the helper.
pub const MIGRATION_STATE: u64 = 0x80_3000;
/// Per-CPU GHCB pages (SEV-ES), one page per CPU (CPU n's at `GHCB_BASE + n * 4 KiB`);
/// the firmware shares them with the host.
pub const GHCB_BASE: u64 = 0x81_0000;
/// End of the SEV area.
pub const SEV_AREA_END: u64 = GHCB_BASE + PAGE_SIZE * MAX_VCPUS as u64;

/// Base of the region reserved for the mirror migration helper. Its size grows with RAM
/// (see helper-abi's `region` module); it always ends below [`MIN_RAM`] plus a
/// thousandth of RAM.
pub const HELPER_REGION_BASE: u64 = 0x100_0000;

/// Guest-physical address of the MMIO guest-services page (no memslot behind it).
pub const SERVICES_GPA: u64 = 0xFE00_0000;

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

/// Top of the given CPU's user stack.
pub const fn ustack_top(cpu: usize) -> u64 {
    USTACKS + USTACK_SIZE * (cpu as u64 + 1)
}

/// Offsets in the [`BOOT_INFO`] page.
pub mod boot_info {
    /// SEV_STATUS (MSR 0xC001_0131) as the boot CPU read it at CPL0 before anything else:
    /// bit 0 SEV, bit 1 SEV-ES; 0 for a guest without SEV (whose CPU has no such MSR: the
    /// read's #GP is caught). Under SEV-ES the CPL0 code must not execute CPUID, IN/OUT or
    /// MMIO other than the VMGEXIT register (each raises #VC there) and reads this instead.
    pub const SEV_STATUS: u64 = 0x0;
    /// XCR0 as the CPL0 code set it under SEV-ES (0 if it did not), for the #VC handler's
    /// CPUID leaf 0xD requests.
    pub const XCR0: u64 = 0x8;
}

/// GDT selectors, identical in the ROM boot GDT and the RAM GDT.
pub mod selector {
    /// 64-bit kernel code.
    pub const KERNEL_CODE64: u16 = 0x08;
    /// Kernel data.
    pub const KERNEL_DATA: u16 = 0x10;
    /// User data, RPL 3.
    pub const USER_DATA: u16 = 0x18 | 3;
    /// 64-bit user code, RPL 3.
    pub const USER_CODE64: u16 = 0x20 | 3;
    /// 32-bit kernel code (used while switching modes).
    pub const KERNEL_CODE32: u16 = 0x28;
    /// TSS descriptor of CPU 0; CPU n's is at `TSS0 + 16 * n`.
    pub const TSS0: u16 = 0x30;
}

// The areas must not overlap each other.
const _: () = assert!(PD_BASE + PD_COUNT * PAGE_SIZE <= GDT);
const _: () = assert!(TSS_BASE + TSS_STRIDE * MAX_VCPUS as u64 <= BOOT_INFO);
const _: () = assert!(BOOT_INFO + PAGE_SIZE <= GLOBALS);
const _: () = assert!(GLOBALS + PAGE_SIZE <= VC_FRAMES);
const _: () = assert!(VC_FRAMES + VC_FRAME_STRIDE * MAX_VCPUS as u64 <= FWCFG_DMA_PAGE);
const _: () = assert!(VC_FRAME_BUSY + 8 <= VC_FRAME_STRIDE);
const _: () = assert!(FWCFG_DMA_PAGE + PAGE_SIZE <= KSTACKS);
const _: () = assert!(KSTACKS + KSTACK_SIZE * MAX_VCPUS as u64 <= USTACKS);
const _: () = assert!(FW_AREA_END <= SEV_AREA_BASE);
const _: () = assert!(SEV_AREA_END <= HELPER_REGION_BASE);
const _: () = assert!(SEV_SHARED_LIST + PAGE_SIZE <= MIGRATION_STATE);
const _: () = assert!(MIGRATION_STATE + PAGE_SIZE <= SEV_AREA_END);
const _: () = assert!(selector::TSS0 as u64 + 16 * MAX_VCPUS as u64 <= PAGE_SIZE);
