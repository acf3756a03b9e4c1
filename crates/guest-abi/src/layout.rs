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
/// Per-CPU saved-state slots (SEV-ES migration), [`VCPU_SAVE_STRIDE`] bytes each (CPU n's
/// at `VCPU_SAVE_BASE + n * VCPU_SAVE_STRIDE`, see [`vcpu_save`]): when the host asks, a
/// vCPU saves its register state here and enters AP reset hold, and on a migration
/// target each vCPU starts from its measured reset VMSA, finds its slot and restores it.
/// Private, migrated like any guest page (sealed by the helper).
pub const VCPU_SAVE_BASE: u64 = 0x84_0000;
/// Distance between consecutive saved-state slots.
pub const VCPU_SAVE_STRIDE: u64 = 0x2000;
/// End of the SEV area.
pub const SEV_AREA_END: u64 = VCPU_SAVE_BASE + VCPU_SAVE_STRIDE * MAX_VCPUS as u64;

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

/// The given CPU's saved-state slot (SEV-ES migration).
pub const fn vcpu_save_gpa(cpu: usize) -> u64 {
    VCPU_SAVE_BASE + VCPU_SAVE_STRIDE * cpu as u64
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

/// A saved-state slot ([`VCPU_SAVE_BASE`]): offsets in bytes. The firmware's assembly
/// (boot.s) writes and reads these, so they are plain constants.
///
/// A vCPU saves its state by calling `sevm_save_and_hold` at CPL3: every general-purpose
/// register, RFLAGS, the stack pointer and return address of that call, and its
/// x87/SSE/AVX state (XSAVE with the XCR0 mask in [`vcpu_save::XCR0`], or FXSAVE when it
/// is 0); [`vcpu_save::STATE`] becomes [`vcpu_save::SAVED`] last. A vCPU that resumes on
/// the source clears the slot; one that restores on a target claims it first
/// (SAVED -> RESUMING with `lock cmpxchg`, so no two vCPUs restore one state) and clears it
/// once it runs.
pub mod vcpu_save {
    /// `u64`: [`EMPTY`], [`SAVED`] or [`RESUMING`].
    pub const STATE: u64 = 0x00;
    /// `u64`: the CPU index that saved the slot.
    pub const CPU: u64 = 0x08;
    /// `u64`: the XSAVE component mask (XCR0 when saved); 0 means FXSAVE.
    pub const XCR0: u64 = 0x10;
    /// `u64`: RFLAGS.
    pub const RFLAGS: u64 = 0x18;
    /// `u64`: where the vCPU continues (the return address of the saving call).
    pub const RIP: u64 = 0x20;
    /// `u64`: the stack pointer after that return.
    pub const RSP: u64 = 0x28;
    /// General-purpose registers, `u64` each, in this order: RAX, RBX, RCX, RDX, RSI, RDI,
    /// RBP, R8 .. R15.
    pub const GPRS: u64 = 0x30;
    /// Offset of RAX (the first of [`GPRS`]).
    pub const RAX: u64 = GPRS;
    /// Offset of RBX.
    pub const RBX: u64 = GPRS + 0x08;
    /// Offset of RCX.
    pub const RCX: u64 = GPRS + 0x10;
    /// Offset of RDX.
    pub const RDX: u64 = GPRS + 0x18;
    /// Offset of RSI.
    pub const RSI: u64 = GPRS + 0x20;
    /// Offset of RDI.
    pub const RDI: u64 = GPRS + 0x28;
    /// Offset of RBP.
    pub const RBP: u64 = GPRS + 0x30;
    /// Offset of R8 (R9 .. R15 follow).
    pub const R8: u64 = GPRS + 0x38;
    /// `u64`: 0, or the CPL0 address a restoring CPU jumps to once it claimed the slot
    /// (64-bit mode on the firmware's tables, RDI = the slot, R15 = the CPU index): a
    /// kernel with page tables and descriptor tables of its own (sevmirror's guest OS)
    /// sets it when it saves, and reloads them there before its own CPL3 restore. The
    /// firmware's own saves leave it 0.
    pub const KERNEL_RESUME: u64 = 0x100;
    /// The XSAVE (or FXSAVE) area, 64-byte aligned, up to [`LAST_POLL`].
    pub const XSAVE_AREA: u64 = 0x400;
    /// `u64`, not part of the state: the TSC of this CPU's last checkpoint question to the
    /// host (the firmware asks at most every [`POLL_INTERVAL_US`]). The slot's last word,
    /// in its second page: the first page (the registers) changes only when the vCPU saves.
    pub const LAST_POLL: u64 = super::VCPU_SAVE_STRIDE - 8;
    /// Bytes the XSAVE area may use (x87 to AVX-512 take about 2.7 KiB).
    pub const XSAVE_AREA_SIZE: u64 = LAST_POLL - XSAVE_AREA;
    /// Nothing saved.
    pub const EMPTY: u64 = 0;
    /// A complete saved state ("VCPUSAVD", little-endian).
    pub const SAVED: u64 = u64::from_le_bytes(*b"VCPUSAVD");
    /// Claimed by the vCPU that restores it ("RESUMING").
    pub const RESUMING: u64 = u64::from_le_bytes(*b"RESUMING");
    /// Least time between two checkpoint questions of one CPU, microseconds: each is an
    /// exit, and the workloads' check runs far more often than the 10 ms it promises.
    pub const POLL_INTERVAL_US: u64 = 2000;
    /// What `sevm_save_and_hold` returns when the host released the hold on the source
    /// (nothing was restored; the slot is cleared).
    pub const RELEASED: u64 = 2;
    /// What it returns on a migration target, after the restore.
    pub const RESTORED: u64 = 1;

    const _: () = assert!(R8 + 8 * 8 <= KERNEL_RESUME && KERNEL_RESUME + 8 <= XSAVE_AREA);
    const _: () = assert!(XSAVE_AREA_SIZE >= 0xb00 && LAST_POLL >= super::PAGE_SIZE);
    const _: () =
        assert!(XSAVE_AREA.is_multiple_of(64) && super::VCPU_SAVE_STRIDE.is_multiple_of(64));
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
const _: () = assert!(MIGRATION_STATE + PAGE_SIZE <= GHCB_BASE);
const _: () = assert!(GHCB_BASE + PAGE_SIZE * MAX_VCPUS as u64 <= VCPU_SAVE_BASE);
const _: () = assert!(selector::TSS0 as u64 + 16 * MAX_VCPUS as u64 <= PAGE_SIZE);
