//! Extending the boot identity map to RAM above 4 GiB.
//!
//! boot.s maps the low 4 GiB with 2 MiB pages before paging is on. RAM above 4 GiB is
//! mapped here, from CPL3 (the page tables are ordinary user-accessible RAM): each new
//! page directory is filled completely before the PDPT entry that makes it visible is
//! written, so no CPU ever walks a half-built table, and no TLB flush is needed because
//! the entries replaced were not present.

use crate::layout;

const PRESENT_WRITABLE_USER: u64 = 0x7;
const LARGE: u64 = 0x80;
const GIB: u64 = 1 << 30;

/// Identity-maps [4 GiB, `top`) with 2 MiB pages. Boot CPU only, before the APs start.
pub fn map_high_ram(top: u64) {
    let last_gib = top.div_ceil(GIB).min(layout::PD_COUNT);
    for gib in (layout::HIGH_RAM_BASE / GIB)..last_gib {
        let pd = (layout::PD_BASE + gib * layout::PAGE_SIZE) as *mut u64;
        for i in 0..512 {
            let entry = (gib * GIB + (i << 21)) | PRESENT_WRITABLE_USER | LARGE;
            // SAFETY: page directory `gib` is reserved firmware RAM (layout::PD_BASE ..
            // + PD_COUNT pages) that no PDPT entry points to yet.
            unsafe { pd.add(i as usize).write_volatile(entry) };
        }
        let pdpte = (layout::PDPT + gib * 8) as *mut u64;
        // SAFETY: PDPT is the live page-directory-pointer table; entry `gib` (>= 4) was
        // not present, so publishing it affects no existing translation.
        unsafe { pdpte.write_volatile(pd as u64 | PRESENT_WRITABLE_USER) };
    }
}
