//! The canary workload: a known pattern in one private and one shared page, so a test (or
//! a curious operator) can check that the host sees only the shared one in the clear.

use crate::println;
use guest_abi::{layout::PAGE_SIZE, memmap::PageAllocator};
use guest_rt::sev;

/// The 16 bytes written over both pages.
pub const CANARY: [u8; 16] = *b"SEVMIRROR-CANARY";

fn fill(page: u64) {
    for i in 0..(PAGE_SIZE as usize / CANARY.len()) {
        // SAFETY: `page` is a usable RAM page this workload allocated for itself.
        unsafe {
            core::ptr::copy_nonoverlapping(
                CANARY.as_ptr(),
                (page as *mut u8).add(i * CANARY.len()),
                CANARY.len(),
            )
        };
    }
}

/// Writes the canaries; returns (private page, shared page), or None without memory.
pub fn run(alloc: &mut PageAllocator, sev_active: bool) -> Option<(u64, u64)> {
    let private = alloc.alloc_pages(1)?;
    let shared = alloc.alloc_pages(1)?;
    fill(private);
    if sev_active {
        if let Err(e) = sev::map_gpa_range(shared, 1, sev::Visibility::Shared) {
            println!("canary: the host refused to share {shared:#x} (error {e:#x})");
            return None;
        }
    }
    fill(shared);
    println!("canary: private page {private:#x}, shared page {shared:#x}");
    Some((private, shared))
}
