//! The CPUID table given to each vCPU (pure: no ioctls here).
//!
//! KVM_GET_SUPPORTED_CPUID on kvm_pvm hides AES, PCLMULQDQ, SSSE3 and SSE4.x although
//! they execute correctly at guest CPL3 (docs/architecture.md §4), and crypto code that checks CPUID
//! would fall back to slow software paths. We pass the host's own bits for exactly these
//! extensions through. AVX and XSAVE stay hidden: they need CR4.OSXSAVE, which the
//! firmware does not set (its CPL0 part is emulated and must not use them).

use kvm_bindings::kvm_cpuid_entry2;

/// CPUID.1:ECX bits copied from the host.
pub const PASSTHROUGH_LEAF1_ECX: u32 = (1 << 1) // PCLMULQDQ
    | (1 << 9) // SSSE3
    | (1 << 19) // SSE4.1
    | (1 << 20) // SSE4.2
    | (1 << 23) // POPCNT
    | (1 << 25); // AES

/// CPUID.1:ECX bit: x2APIC, which the firmware uses to start APs.
pub const LEAF1_ECX_X2APIC: u32 = 1 << 21;

/// Adjusts `entries` (KVM's supported CPUID) for vCPU `vcpu_id`, given the host's
/// CPUID.1:ECX: pass the crypto/SSE bits through, advertise x2APIC, and set the APIC IDs
/// (leaf 1 EBX[31:24], leaf 0xB/0x1F EDX) to the vCPU index, which the firmware uses as
/// its CPU number.
pub fn patch(entries: &mut [kvm_cpuid_entry2], vcpu_id: u32, host_leaf1_ecx: u32) {
    for e in entries.iter_mut() {
        match e.function {
            1 => {
                e.ecx |= host_leaf1_ecx & PASSTHROUGH_LEAF1_ECX;
                e.ecx |= LEAF1_ECX_X2APIC;
                e.ebx = (e.ebx & 0x00ff_ffff) | (vcpu_id << 24);
            }
            0xb | 0x1f => e.edx = vcpu_id,
            _ => {}
        }
    }
}

/// CPUID.1:ECX of the host.
pub fn host_leaf1_ecx() -> u32 {
    core::arch::x86_64::__cpuid(1).ecx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            ..Default::default()
        }
    }

    #[test]
    fn passes_host_crypto_bits_and_numbers_the_vcpu() {
        let mut e = [entry(1), entry(0xb), entry(7)];
        e[0].ebx = 0xff00_0800; // stale APIC id, CLFLUSH size 8
        patch(&mut e, 3, u32::MAX);
        assert_eq!(e[0].ecx & PASSTHROUGH_LEAF1_ECX, PASSTHROUGH_LEAF1_ECX);
        assert_ne!(e[0].ecx & LEAF1_ECX_X2APIC, 0);
        assert_eq!(e[0].ebx, 0x0300_0800);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[2], entry(7));
    }

    #[test]
    fn never_advertises_what_the_host_lacks_or_avx() {
        let mut e = [entry(1)];
        patch(
            &mut e,
            0,
            1 << 25 | 1 << 28 /* AVX */ | 1 << 27, /* OSXSAVE */
        );
        assert_eq!(e[0].ecx & !LEAF1_ECX_X2APIC, 1 << 25);
    }
}
