//! The MMIO guest-services page: how CPL3 code reaches the VMM (guest-abi `services`).
//! Under SEV-ES the same calls go through this CPU's GHCB (sevmirror's services exit,
//! guest-abi `ghcb::service`): an MMIO access would raise #VC.

use crate::{es, ghcb};
use guest_abi::{ghcb::service::Call, layout::SERVICES_GPA, services};

fn reg(offset: u64) -> u64 {
    SERVICES_GPA + offset
}

fn write64(offset: u64, value: u64) {
    // SAFETY: the services page is identity-mapped, has no memslot behind it, and every
    // access exits to the VMM; the write touches no guest memory.
    unsafe { core::ptr::write_volatile(reg(offset) as *mut u64, value) }
}

fn read64(offset: u64) -> u64 {
    // SAFETY: as for `write64`; the VMM supplies the value read.
    unsafe { core::ptr::read_volatile(reg(offset) as *const u64) }
}

/// Appends bytes to the console, up to eight per exit (a GHCB shared buffer per exit
/// under SEV-ES). Console output that cannot be delivered is dropped.
pub fn console_write(bytes: &[u8]) {
    if es::active() {
        let _ = ghcb::client().console(bytes);
        return;
    }
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        write64(services::CONSOLE, u64::from_le_bytes(word));
    }
    let mut tail = chunks.remainder();
    while !tail.is_empty() {
        let addr = reg(services::CONSOLE);
        // SAFETY: as for `write64`; the access width tells the VMM how many bytes follow.
        unsafe {
            if let Some((head, rest)) = tail.split_first_chunk::<4>() {
                core::ptr::write_volatile(addr as *mut u32, u32::from_le_bytes(*head));
                tail = rest;
            } else if let Some((head, rest)) = tail.split_first_chunk::<2>() {
                core::ptr::write_volatile(addr as *mut u16, u16::from_le_bytes(*head));
                tail = rest;
            } else if let Some((&byte, rest)) = tail.split_first() {
                core::ptr::write_volatile(addr as *mut u8, byte);
                tail = rest;
            }
        }
    }
}

/// Stops the VM with `code` as the VMM's exit status.
pub fn exit(code: u64) -> ! {
    if es::active() {
        if ghcb::client().service(Call::Exit, code, [0; 3]).is_err() {
            es::terminate()
        }
        crate::cpu::halt()
    }
    write64(services::EXIT, code);
    crate::cpu::halt()
}

/// Reports a boot milestone for the VMM to timestamp.
pub fn event(event: services::Event) {
    if es::active() {
        let _ = ghcb::client().service(Call::Event, event.0, [0; 3]);
        return;
    }
    write64(services::EVENT, event.0);
}

/// Takes the host's pending request to the workload, if any.
pub fn take_request() -> services::Request {
    if es::active() {
        return services::Request(
            ghcb::client()
                .service(Call::TakeRequest, 0, [0; 3])
                .unwrap_or(0),
        );
    }
    services::Request(read64(services::REQUEST))
}

/// Reports a fatal exception the CPL3 code caught (the SEV-ES #VC handler's failures): the
/// VMM stops the VM. Then parks.
pub fn fault(vector: u8, rip: u64, error: u64, addr: u64) -> ! {
    if es::active() {
        if ghcb::client()
            .service(Call::Fault, u64::from(vector) | 3 << 8, [rip, error, addr])
            .is_err()
        {
            es::terminate()
        }
        crate::cpu::halt()
    }
    write64(services::FAULT_RIP, rip);
    write64(services::FAULT_ERROR, error);
    write64(services::FAULT_ADDR, addr);
    write64(services::FAULT, u64::from(vector) | 3 << 8);
    crate::cpu::halt()
}

/// Makes a hypercall with up to three arguments and returns its result.
#[allow(dead_code)]
pub fn hypercall(nr: u64, args: [u64; 3]) -> u64 {
    write64(services::HCALL_ARG0, args[0]);
    write64(services::HCALL_ARG1, args[1]);
    write64(services::HCALL_ARG2, args[2]);
    write64(services::HCALL, nr);
    read64(services::HCALL_RESULT)
}
