//! The CPUID table given to each vCPU (pure: no ioctls here).
//!
//! KVM_GET_SUPPORTED_CPUID on kvm_pvm hides AES, PCLMULQDQ, SSSE3 and SSE4.x although
//! they execute correctly at guest CPL3 (docs/architecture.md §4), and crypto code that checks CPUID
//! would fall back to slow software paths. We pass the host's own bits for exactly these
//! extensions through. AVX and XSAVE stay hidden: they need CR4.OSXSAVE, which the
//! firmware does not set (its CPL0 part is emulated and must not use them).

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use migration::cpu::{CpuFeatures, CpuidReg, Feature, FeatureWord, GuestCpu};

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

/// The entry for `function`/`index` (the index counts only where KVM marks it
/// significant).
fn entry_mut(
    entries: &mut [kvm_cpuid_entry2],
    function: u32,
    index: u32,
) -> Option<&mut kvm_cpuid_entry2> {
    entries.iter_mut().find(|e| {
        e.function == function
            && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
    })
}

fn reg_mut(e: &mut kvm_cpuid_entry2, reg: CpuidReg) -> &mut u32 {
    match reg {
        CpuidReg::Eax => &mut e.eax,
        CpuidReg::Ebx => &mut e.ebx,
        CpuidReg::Ecx => &mut e.ecx,
        CpuidReg::Edx => &mut e.edx,
    }
}

/// The CPU a table gives the guest: vendor, signature and the feature words the Hello
/// carries (a leaf the table lacks reads as zero).
pub fn guest_cpu(entries: &[kvm_cpuid_entry2]) -> GuestCpu {
    let mut table = entries.to_vec();
    let mut read = |function: u32, index: u32, reg: CpuidReg| {
        entry_mut(&mut table, function, index).map_or(0, |e| *reg_mut(e, reg))
    };
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&read(0, 0, CpuidReg::Ebx).to_le_bytes());
    vendor[4..8].copy_from_slice(&read(0, 0, CpuidReg::Edx).to_le_bytes());
    vendor[8..].copy_from_slice(&read(0, 0, CpuidReg::Ecx).to_le_bytes());
    let signature = read(1, 0, CpuidReg::Eax);
    let words = FeatureWord::ALL.map(|w| {
        let (function, index, reg) = w.location();
        read(function, index, reg)
    });
    GuestCpu {
        vendor,
        signature,
        features: CpuFeatures::from_words(words),
    }
}

/// Clears `features` from the table, so the guest is not given them (a guest that must
/// be able to move to hosts without them).
pub fn hide(entries: &mut [kvm_cpuid_entry2], features: &[Feature]) {
    for f in features {
        let (function, index, reg) = f.word.location();
        if let Some(e) = entry_mut(entries, function, index) {
            *reg_mut(e, reg) &= !(1u32 << f.bit);
        }
    }
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

    fn indexed(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
            ..Default::default()
        }
    }

    #[test]
    fn the_guest_cpu_is_read_from_the_table_and_hidden_features_are_cleared() {
        let mut e = [
            entry(0),
            entry(1),
            indexed(7, 0),
            indexed(7, 1),
            indexed(0xd, 0),
            indexed(0xd, 1),
            entry(0x8000_0001),
        ];
        // "AuthenticAMD" as CPUID.0 returns it: EBX "Auth", EDX "enti", ECX "cAMD".
        e[0].ebx = u32::from_le_bytes(*b"Auth");
        e[0].edx = u32::from_le_bytes(*b"enti");
        e[0].ecx = u32::from_le_bytes(*b"cAMD");
        e[1].eax = 0x00a1_0f11;
        e[1].ecx = 1 << 25; // aes
        e[2].ebx = 1 << 16 | 1 << 5; // avx512f, avx2
        e[3].eax = 1 << 5; // avx512_bf16, in subleaf 1
        e[4].eax = 0x2e7; // leaf 0xD subleaf 0: not a feature word
        e[5].eax = 1; // xsaveopt
        e[6].edx = 1 << 29; // lm
        let cpu = guest_cpu(&e);
        assert_eq!(
            cpu.to_string(),
            "AuthenticAMD family 25 model 17 stepping 1"
        );
        assert_eq!(
            cpu.features.names().collect::<Vec<_>>(),
            ["aes", "avx2", "avx512f", "avx512_bf16", "lm", "xsaveopt"]
        );

        let names = ["avx512f", "aes", "avx512_bf16", "xsaveopt"];
        let hidden: Vec<Feature> = names
            .iter()
            .map(|n| migration::cpu::feature(n).unwrap())
            .collect();
        hide(&mut e, &hidden);
        let cpu = guest_cpu(&e);
        assert_eq!(cpu.features.names().collect::<Vec<_>>(), ["avx2", "lm"]);
        assert_eq!(e[4].eax, 0x2e7, "subleaf 0 untouched");
        // A table without the leaves reads as no features, and hiding changes nothing.
        let mut empty: [kvm_cpuid_entry2; 0] = [];
        hide(&mut empty, &hidden);
        assert_eq!(guest_cpu(&empty).features.names().count(), 0);
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
