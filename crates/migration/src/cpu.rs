//! The CPU a guest was given, as the Hello carries it, and the check a target makes
//! before it takes a guest from another host.
//!
//! A guest learns its CPU's features once (CPUID at boot) and uses them from then on:
//! moved to a host whose CPU lacks one, it takes #UD at the first such instruction. So
//! the source's Hello carries the CPU model and the feature words of the CPUID table its
//! VMM configured for the guest ([`GuestCpu`]), and the target compares them with the
//! table it configured for its own VM ([`check_compatible`]): every feature the guest was
//! given must be in the target's, or the target refuses before any page moves, naming
//! each feature it lacks. The model (vendor, family, model, stepping) is carried for
//! those messages only: the hosts of one migration may be an AMD EPYC and an Intel Xeon.
//!
//! What counts is [`FEATURES`]: the instruction-set extensions (and the few CPU
//! protection features an OS turns on) a guest may use, by the names Linux prints in
//! `/proc/cpuinfo`. Other bits of the same words (the OS-controlled OSXSAVE, the
//! hypervisor bit, platform bits such as x2APIC that the VMM sets on every host) are
//! carried and not compared.
//!
//! Trust: the CPU fields are the source host's statement about the CPUID it gave the
//! guest, which the host controls anyway. The check protects the guest from a host
//! move that would crash it, not from a host; for an SEV guest the Hello is bound into
//! the helpers' transcript, so a middlebox cannot change it unnoticed.

use std::fmt;

/// One 32-bit register of a CPUID leaf that holds feature bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FeatureWord {
    /// CPUID.1:ECX.
    Leaf1Ecx = 0,
    /// CPUID.1:EDX.
    Leaf1Edx = 1,
    /// CPUID.(7,0):EBX.
    Leaf7Ebx = 2,
    /// CPUID.(7,0):ECX.
    Leaf7Ecx = 3,
    /// CPUID.(7,0):EDX.
    Leaf7Edx = 4,
    /// CPUID.(7,1):EAX.
    Leaf7S1Eax = 5,
    /// CPUID.80000001h:ECX.
    Ext1Ecx = 6,
    /// CPUID.80000001h:EDX.
    Ext1Edx = 7,
    /// CPUID.(0Dh,1):EAX (XSAVE extensions).
    LeafDS1Eax = 8,
}

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuidReg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl FeatureWord {
    /// Every word, in wire order.
    pub const ALL: [FeatureWord; 9] = [
        FeatureWord::Leaf1Ecx,
        FeatureWord::Leaf1Edx,
        FeatureWord::Leaf7Ebx,
        FeatureWord::Leaf7Ecx,
        FeatureWord::Leaf7Edx,
        FeatureWord::Leaf7S1Eax,
        FeatureWord::Ext1Ecx,
        FeatureWord::Ext1Edx,
        FeatureWord::LeafDS1Eax,
    ];

    /// Where the word lives: CPUID leaf, subleaf and register.
    pub const fn location(self) -> (u32, u32, CpuidReg) {
        match self {
            FeatureWord::Leaf1Ecx => (1, 0, CpuidReg::Ecx),
            FeatureWord::Leaf1Edx => (1, 0, CpuidReg::Edx),
            FeatureWord::Leaf7Ebx => (7, 0, CpuidReg::Ebx),
            FeatureWord::Leaf7Ecx => (7, 0, CpuidReg::Ecx),
            FeatureWord::Leaf7Edx => (7, 0, CpuidReg::Edx),
            FeatureWord::Leaf7S1Eax => (7, 1, CpuidReg::Eax),
            FeatureWord::Ext1Ecx => (0x8000_0001, 0, CpuidReg::Ecx),
            FeatureWord::Ext1Edx => (0x8000_0001, 0, CpuidReg::Edx),
            FeatureWord::LeafDS1Eax => (0xd, 1, CpuidReg::Eax),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A CPU feature a guest may use: its `/proc/cpuinfo` name and its CPUID bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Feature {
    /// The name Linux prints in `/proc/cpuinfo`.
    pub name: &'static str,
    /// The word that holds it.
    pub word: FeatureWord,
    /// Its bit in the word.
    pub bit: u8,
}

const fn f(name: &'static str, word: FeatureWord, bit: u8) -> Feature {
    Feature { name, word, bit }
}

/// The features the compatibility check compares (Intel SDM vol. 2A, CPUID; AMD APM
/// vol. 3, appendix E). Instruction-set extensions and the protection features an OS
/// enables; not platform bits the VMM decides (APIC, x2APIC, MTRR, TSC deadline) nor
/// OS-controlled ones (OSXSAVE, OSPKE).
pub const FEATURES: &[Feature] = {
    use FeatureWord::*;
    &[
        // CPUID.1:EDX
        f("fpu", Leaf1Edx, 0),
        f("tsc", Leaf1Edx, 4),
        f("msr", Leaf1Edx, 5),
        f("pae", Leaf1Edx, 6),
        f("cx8", Leaf1Edx, 8),
        f("sep", Leaf1Edx, 11),
        f("pge", Leaf1Edx, 13),
        f("cmov", Leaf1Edx, 15),
        f("pat", Leaf1Edx, 16),
        f("pse36", Leaf1Edx, 17),
        f("clflush", Leaf1Edx, 19),
        f("mmx", Leaf1Edx, 23),
        f("fxsr", Leaf1Edx, 24),
        f("sse", Leaf1Edx, 25),
        f("sse2", Leaf1Edx, 26),
        // CPUID.1:ECX
        f("pni", Leaf1Ecx, 0),
        f("pclmulqdq", Leaf1Ecx, 1),
        f("ssse3", Leaf1Ecx, 9),
        f("fma", Leaf1Ecx, 12),
        f("cx16", Leaf1Ecx, 13),
        f("pcid", Leaf1Ecx, 17),
        f("sse4_1", Leaf1Ecx, 19),
        f("sse4_2", Leaf1Ecx, 20),
        f("movbe", Leaf1Ecx, 22),
        f("popcnt", Leaf1Ecx, 23),
        f("aes", Leaf1Ecx, 25),
        f("xsave", Leaf1Ecx, 26),
        f("avx", Leaf1Ecx, 28),
        f("f16c", Leaf1Ecx, 29),
        f("rdrand", Leaf1Ecx, 30),
        // CPUID.(7,0):EBX
        f("fsgsbase", Leaf7Ebx, 0),
        f("bmi1", Leaf7Ebx, 3),
        f("hle", Leaf7Ebx, 4),
        f("avx2", Leaf7Ebx, 5),
        f("smep", Leaf7Ebx, 7),
        f("bmi2", Leaf7Ebx, 8),
        f("erms", Leaf7Ebx, 9),
        f("invpcid", Leaf7Ebx, 10),
        f("rtm", Leaf7Ebx, 11),
        f("avx512f", Leaf7Ebx, 16),
        f("avx512dq", Leaf7Ebx, 17),
        f("rdseed", Leaf7Ebx, 18),
        f("adx", Leaf7Ebx, 19),
        f("smap", Leaf7Ebx, 20),
        f("avx512ifma", Leaf7Ebx, 21),
        f("clflushopt", Leaf7Ebx, 23),
        f("clwb", Leaf7Ebx, 24),
        f("avx512cd", Leaf7Ebx, 28),
        f("sha_ni", Leaf7Ebx, 29),
        f("avx512bw", Leaf7Ebx, 30),
        f("avx512vl", Leaf7Ebx, 31),
        // CPUID.(7,0):ECX
        f("avx512vbmi", Leaf7Ecx, 1),
        f("umip", Leaf7Ecx, 2),
        f("pku", Leaf7Ecx, 3),
        f("waitpkg", Leaf7Ecx, 5),
        f("avx512_vbmi2", Leaf7Ecx, 6),
        f("gfni", Leaf7Ecx, 8),
        f("vaes", Leaf7Ecx, 9),
        f("vpclmulqdq", Leaf7Ecx, 10),
        f("avx512_vnni", Leaf7Ecx, 11),
        f("avx512_bitalg", Leaf7Ecx, 12),
        f("avx512_vpopcntdq", Leaf7Ecx, 14),
        f("la57", Leaf7Ecx, 16),
        f("rdpid", Leaf7Ecx, 22),
        f("movdiri", Leaf7Ecx, 27),
        f("movdir64b", Leaf7Ecx, 28),
        // CPUID.(7,0):EDX
        f("fsrm", Leaf7Edx, 4),
        f("avx512_vp2intersect", Leaf7Edx, 8),
        f("serialize", Leaf7Edx, 14),
        f("amx_bf16", Leaf7Edx, 22),
        f("avx512_fp16", Leaf7Edx, 23),
        f("amx_tile", Leaf7Edx, 24),
        f("amx_int8", Leaf7Edx, 25),
        // CPUID.(7,1):EAX
        f("avx_vnni", Leaf7S1Eax, 4),
        f("avx512_bf16", Leaf7S1Eax, 5),
        // CPUID.80000001h:ECX
        f("lahf_lm", Ext1Ecx, 0),
        f("abm", Ext1Ecx, 5),
        f("sse4a", Ext1Ecx, 6),
        f("misalignsse", Ext1Ecx, 7),
        f("3dnowprefetch", Ext1Ecx, 8),
        f("xop", Ext1Ecx, 11),
        f("fma4", Ext1Ecx, 16),
        f("tbm", Ext1Ecx, 21),
        // CPUID.80000001h:EDX
        f("syscall", Ext1Edx, 11),
        f("nx", Ext1Edx, 20),
        f("mmxext", Ext1Edx, 22),
        f("fxsr_opt", Ext1Edx, 25),
        f("pdpe1gb", Ext1Edx, 26),
        f("rdtscp", Ext1Edx, 27),
        f("lm", Ext1Edx, 29),
        // CPUID.(0Dh,1):EAX
        f("xsaveopt", LeafDS1Eax, 0),
        f("xsavec", LeafDS1Eax, 1),
        f("xgetbv1", LeafDS1Eax, 2),
        f("xsaves", LeafDS1Eax, 3),
    ]
};

/// The feature called `name` (a `/proc/cpuinfo` name), if [`FEATURES`] has it.
pub fn feature(name: &str) -> Option<Feature> {
    FEATURES.iter().copied().find(|f| f.name == name)
}

/// The feature words of a CPUID table, in [`FeatureWord::ALL`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuFeatures {
    words: [u32; FeatureWord::ALL.len()],
}

impl CpuFeatures {
    /// The words as read from the table.
    pub const fn from_words(words: [u32; FeatureWord::ALL.len()]) -> CpuFeatures {
        CpuFeatures { words }
    }

    /// The raw words.
    pub const fn words(&self) -> [u32; FeatureWord::ALL.len()] {
        self.words
    }

    /// One word.
    pub fn word(&self, w: FeatureWord) -> u32 {
        self.words[w.index()]
    }

    /// Whether the table has `f`.
    pub fn has(&self, f: Feature) -> bool {
        self.word(f.word) & (1 << f.bit) != 0
    }

    /// The named features the table has, in [`FEATURES`] order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        FEATURES.iter().filter(|f| self.has(**f)).map(|f| f.name)
    }
}

/// The CPU model and features a VMM gave its guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestCpu {
    /// CPUID.0:EBX, EDX, ECX: "AuthenticAMD", "GenuineIntel".
    pub vendor: [u8; 12],
    /// CPUID.1:EAX: stepping, model, family and their extended fields.
    pub signature: u32,
    /// The feature words.
    pub features: CpuFeatures,
}

impl GuestCpu {
    /// Bytes of the wire form: vendor, signature, the feature words.
    pub const WIRE_LEN: usize = 12 + 4 + 4 * FeatureWord::ALL.len();

    /// The display family (base family plus the extended family when the base is 0xF).
    pub fn family(&self) -> u32 {
        let base = (self.signature >> 8) & 0xf;
        if base == 0xf {
            base + ((self.signature >> 20) & 0xff)
        } else {
            base
        }
    }

    /// The display model (with the extended model for families 6 and 0xF).
    pub fn model(&self) -> u32 {
        let base = (self.signature >> 4) & 0xf;
        let base_family = (self.signature >> 8) & 0xf;
        if base_family == 0x6 || base_family == 0xf {
            base | (((self.signature >> 16) & 0xf) << 4)
        } else {
            base
        }
    }

    /// The stepping.
    pub fn stepping(&self) -> u32 {
        self.signature & 0xf
    }

    /// The vendor string, with anything unprintable replaced.
    pub fn vendor_name(&self) -> String {
        self.vendor
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() {
                    char::from(b)
                } else {
                    '?'
                }
            })
            .collect()
    }

    /// The wire form (little-endian).
    pub fn encode(&self) -> [u8; Self::WIRE_LEN] {
        let mut b = [0u8; Self::WIRE_LEN];
        b[..12].copy_from_slice(&self.vendor);
        b[12..16].copy_from_slice(&self.signature.to_le_bytes());
        for (i, w) in self.features.words.iter().enumerate() {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// Decodes the wire form. Every value is acceptable: the words are what a table
    /// held.
    pub fn decode(b: &[u8; Self::WIRE_LEN]) -> GuestCpu {
        let le = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut vendor = [0u8; 12];
        vendor.copy_from_slice(&b[..12]);
        let mut words = [0u32; FeatureWord::ALL.len()];
        for (i, w) in words.iter_mut().enumerate() {
            *w = le(16 + 4 * i);
        }
        GuestCpu {
            vendor,
            signature: le(12),
            features: CpuFeatures { words },
        }
    }
}

impl fmt::Display for GuestCpu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} family {} model {} stepping {}",
            self.vendor_name(),
            self.family(),
            self.model(),
            self.stepping()
        )
    }
}

/// The target cannot give the guest every feature it was given on the source.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the target CPU ({target}) lacks {}, which the guest was given on the source ({source_cpu}); start the source guest with `--cpu-hide {}` to migrate between these hosts", .missing.join(", "), .missing.join(","))]
pub struct CpuMismatch {
    /// The features the guest has and the target lacks, in [`FEATURES`] order (never
    /// empty).
    pub missing: Vec<&'static str>,
    /// The source guest's CPU.
    pub source_cpu: GuestCpu,
    /// The target's.
    pub target: GuestCpu,
}

/// Checks that a target whose VMM gives its guests `target` can run a guest that was
/// given `guest`: every feature of [`FEATURES`] the guest has, the target has too.
/// Vendor and model may differ.
pub fn check_compatible(guest: &GuestCpu, target: &GuestCpu) -> Result<(), Box<CpuMismatch>> {
    let missing: Vec<&'static str> = FEATURES
        .iter()
        .filter(|f| guest.features.has(**f) && !target.features.has(**f))
        .map(|f| f.name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Box::new(CpuMismatch {
            missing,
            source_cpu: *guest,
            target: *target,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// An EPYC (Zen 4) as the VMM of this project gives it to a guest (signature of
    /// family 25 model 17 stepping 1).
    fn epyc() -> GuestCpu {
        let mut words = [0u32; 9];
        for name in [
            "fpu",
            "tsc",
            "msr",
            "cx8",
            "cmov",
            "clflush",
            "mmx",
            "fxsr",
            "sse",
            "sse2",
            "pni",
            "pclmulqdq",
            "ssse3",
            "sse4_1",
            "sse4_2",
            "popcnt",
            "aes",
            "avx2",
            "bmi2",
            "avx512f",
            "avx512bw",
            "avx512vl",
            "vaes",
            "vpclmulqdq",
            "lm",
            "nx",
        ] {
            let f = feature(name).unwrap();
            words[f.word.index()] |= 1 << f.bit;
        }
        GuestCpu {
            vendor: *b"AuthenticAMD",
            signature: 0x00a1_0f11,
            features: CpuFeatures::from_words(words),
        }
    }

    fn without(cpu: &GuestCpu, names: &[&str]) -> GuestCpu {
        let mut words = cpu.features.words();
        for name in names {
            let f = feature(name).unwrap();
            words[f.word.index()] &= !(1 << f.bit);
        }
        GuestCpu {
            features: CpuFeatures::from_words(words),
            ..*cpu
        }
    }

    #[test]
    fn the_model_decodes_as_cpuinfo_prints_it() {
        let c = epyc();
        assert_eq!((c.family(), c.model(), c.stepping()), (25, 17, 1));
        assert_eq!(c.to_string(), "AuthenticAMD family 25 model 17 stepping 1");
        // Intel Sapphire Rapids: family 6 model 143 (0x8f) stepping 8.
        let xeon = GuestCpu {
            vendor: *b"GenuineIntel",
            signature: 0x0008_06f8,
            ..c
        };
        assert_eq!((xeon.family(), xeon.model(), xeon.stepping()), (6, 143, 8));
        // The extended model counts only for families 6 and 15.
        let odd = GuestCpu {
            signature: 0x000f_0512,
            ..c
        };
        assert_eq!((odd.family(), odd.model()), (5, 1));
        let unprintable = GuestCpu {
            vendor: [0; 12],
            ..c
        };
        assert_eq!(unprintable.vendor_name(), "????????????");
    }

    #[test]
    fn a_target_with_the_same_or_more_features_and_another_vendor_is_compatible() {
        let guest = without(&epyc(), &["avx512f", "avx512bw"]);
        assert_eq!(check_compatible(&guest, &guest), Ok(()));
        let intel = GuestCpu {
            vendor: *b"GenuineIntel",
            signature: 0x0008_06f8,
            ..epyc()
        };
        assert_eq!(check_compatible(&guest, &intel), Ok(()));
    }

    #[test]
    fn every_missing_feature_is_named_in_the_refusal() {
        let guest = epyc();
        for f in FEATURES.iter().filter(|f| guest.features.has(**f)) {
            let target = without(&guest, &[f.name]);
            let e = check_compatible(&guest, &target).unwrap_err();
            assert_eq!(e.missing, [f.name]);
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("the target CPU (AuthenticAMD family 25 model 17 stepping 1) lacks {}, which the guest was given", f.name)),
                "{msg}"
            );
            assert!(msg.contains(&format!("--cpu-hide {}", f.name)), "{msg}");
        }
        // Several at once: all of them, in table order.
        let target = without(&guest, &["vaes", "avx512f", "aes"]);
        let e = check_compatible(&guest, &target).unwrap_err();
        assert_eq!(e.missing, ["aes", "avx512f", "vaes"]);
        assert!(e.to_string().contains("lacks aes, avx512f, vaes, which"));
    }

    #[test]
    fn bits_outside_the_table_are_not_compared() {
        let guest = epyc();
        let mut words = guest.features.words();
        // OSXSAVE and the hypervisor bit (CPUID.1:ECX 27, 31), x2APIC (21).
        words[FeatureWord::Leaf1Ecx.index()] |= 1 << 27 | 1 << 31 | 1 << 21;
        let with_os_bits = GuestCpu {
            features: CpuFeatures::from_words(words),
            ..guest
        };
        assert_eq!(check_compatible(&with_os_bits, &guest), Ok(()));
    }

    #[test]
    fn the_table_has_unique_names_and_bits() {
        let names: HashSet<_> = FEATURES.iter().map(|f| f.name).collect();
        assert_eq!(names.len(), FEATURES.len());
        let bits: HashSet<_> = FEATURES.iter().map(|f| (f.word, f.bit)).collect();
        assert_eq!(bits.len(), FEATURES.len());
        assert!(FEATURES.iter().all(|f| f.bit < 32));
        assert_eq!(feature("avx512f").unwrap().word, FeatureWord::Leaf7Ebx);
        assert_eq!(feature("no-such-feature"), None);
    }

    #[test]
    fn the_wire_form_round_trips() {
        let c = epyc();
        let b = c.encode();
        assert_eq!(&b[..12], b"AuthenticAMD");
        assert_eq!(GuestCpu::decode(&b), c);
        assert_eq!(
            c.features.names().collect::<Vec<_>>()[..3],
            ["fpu", "tsc", "msr"]
        );
    }
}
