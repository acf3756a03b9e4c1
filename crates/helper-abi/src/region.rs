//! Layout of the helper region: what the firmware's `helper_init` reserves at boot and
//! the helper entry point picks up. Offsets are from the region base.
//!
//! ```text
//!  0x00000  anchor page      (private)  what the 32-bit entry point reads, and the
//!                                       slot counter it takes its slot and lane from
//!  0x01000  GDT              (private)  fixed selectors + one TSS per helper vCPU
//!  0x02000  IDT              (private)
//!  0x03000  TSSs             (private)
//!  0x04000  context          (private)  layout, firmware hash, session, commitment
//!  0x08000  page tables      (private)  PML4, PDPT, page directories
//!  0x50000  kernel stacks    (private)
//!  0x58000  user stacks      (private)
//!  0xf0000  GHCBs            (shared)   SEV-ES: one GHCB page per helper vCPU
//!  0x100000 mailboxes        (shared)   control page + record windows per helper vCPU
//!  ...      version table    (private)  u32 per RAM page, sized by guest RAM
//! ```

use crate::{record::PAGE_RECORD_SIZE, MAX_BATCH, MAX_HELPER_VCPUS, PAGE_SIZE, WINDOWS_PER_VCPU};

/// Anchor page.
pub const ANCHOR: u64 = 0x0000;
/// GDT page.
pub const GDT: u64 = 0x1000;
/// IDT page.
pub const IDT: u64 = 0x2000;
/// TSS page.
pub const TSS: u64 = 0x3000;
/// The helper's shared state (session, commitment, layout): [`CONTEXT_SIZE`] bytes.
pub const CONTEXT: u64 = 0x4000;
/// Bytes reserved for the context.
pub const CONTEXT_SIZE: u64 = 0x4000;
/// First page-table page (PML4), then the PDPT, then page directories.
pub const PAGE_TABLES: u64 = 0x8000;
/// Page directories available (one per GiB of address space mapped).
pub const PAGE_DIRECTORIES: u64 = 68;
/// Kernel stacks, [`KSTACK_SIZE`] each.
pub const KSTACKS: u64 = 0x5_0000;
/// Size of one helper vCPU's kernel stack (the lower half is its IST stack).
pub const KSTACK_SIZE: u64 = 0x2000;
/// User stacks, [`USTACK_SIZE`] each.
pub const USTACKS: u64 = 0x5_8000;
/// Size of one helper vCPU's user stack.
pub const USTACK_SIZE: u64 = 0x1_0000;
/// SEV-ES: helper vCPU `slot`'s GHCB page is at `GHCBS + slot * PAGE_SIZE` (shared with
/// the host by `helper_init`, like the mailboxes): the helper's doorbell and its other
/// exits go through it, never through the guest's own GHCBs.
pub const GHCBS: u64 = 0xf_0000;
/// First mailbox.
pub const MAILBOXES: u64 = 0x10_0000;
/// Bytes per record window: [`MAX_BATCH`] page records, page-rounded.
pub const WINDOW_SIZE: u64 =
    ((MAX_BATCH * PAGE_RECORD_SIZE) as u64).div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
/// Bytes from one mailbox to the next: a control page and the windows.
pub const MAILBOX_STRIDE: u64 = PAGE_SIZE as u64 + WINDOWS_PER_VCPU as u64 * WINDOW_SIZE;
/// End of the fixed part; the version table starts here.
pub const STATIC_SIZE: u64 = MAILBOXES + MAX_HELPER_VCPUS as u64 * MAILBOX_STRIDE;

/// Size of the whole region for a guest with `ram_pages` pages of RAM.
pub const fn region_size(ram_pages: u64) -> u64 {
    STATIC_SIZE + (4 * ram_pages).div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64
}

/// The anchor page, as the entry point reads it (offsets in bytes).
pub mod anchor {
    /// "SMHANCH1" when valid.
    pub const MAGIC: u64 = 0x3148_434e_4148_4d53;
    /// Offset of the magic.
    pub const MAGIC_OFF: u64 = 0;
    /// CR3 for helper vCPUs (u64).
    pub const CR3: u64 = 8;
    /// GDT pseudo-descriptor (u16 limit, u64 base) at this offset.
    pub const GDTR: u64 = 16;
    /// IDT pseudo-descriptor (u16 limit, u64 base) at this offset.
    pub const IDTR: u64 = 32;
    /// Helper vCPUs provided (u64).
    pub const VCPUS: u64 = 48;
    /// Base of the kernel stacks (u64).
    pub const KSTACKS: u64 = 56;
    /// Base of the user stacks (u64).
    pub const USTACKS: u64 = 64;
    /// GPA of the context page, passed to the Rust entry (u64).
    pub const CONTEXT: u64 = 72;
    /// Slot counter (u32): each helper vCPU entering takes the next value with `lock
    /// xadd` before it touches a stack, and uses it as its stack slot, mailbox and lane
    /// id. Values are never handed out twice, so no two vCPUs (two at once, or a later
    /// mirror) ever share a stack or a nonce prefix; an entry past `VCPUS` parks.
    pub const NEXT_SLOT: u64 = 80;
}

const _: () = assert!(CONTEXT + CONTEXT_SIZE <= PAGE_TABLES);
const _: () = assert!(PAGE_TABLES + (2 + PAGE_DIRECTORIES) * PAGE_SIZE as u64 <= KSTACKS);
const _: () = assert!(KSTACKS + MAX_HELPER_VCPUS as u64 * KSTACK_SIZE <= USTACKS);
const _: () = assert!(USTACKS + MAX_HELPER_VCPUS as u64 * USTACK_SIZE <= GHCBS);
const _: () = assert!(GHCBS + (MAX_HELPER_VCPUS * PAGE_SIZE) as u64 <= MAILBOXES);
const _: () = assert!(WINDOW_SIZE >= (MAX_BATCH * PAGE_RECORD_SIZE) as u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_region_stays_under_one_percent_of_a_1_gib_guest() {
        let gib_pages = (1u64 << 30) / PAGE_SIZE as u64;
        let size = region_size(gib_pages);
        assert!(
            size * 100 < 1 << 30,
            "helper region {size:#x} is 1% or more of 1 GiB"
        );
        // And it grows with RAM only by the version table (4 bytes per page).
        assert_eq!(region_size(2 * gib_pages) - size, gib_pages * 4);
    }
}
