//! Which kernel this CPU can run: CPUID for the instructions, XGETBV for the register
//! state the operating system (here: the firmware's CPL0 entry) has enabled.
//!
//! A CPU that has AVX-512 still faults on the first zmm instruction if XCR0 does not
//! enable the opmask and ZMM state, so every vector kernel checks both. The answer is
//! returned, never cached: the firmware has no writable statics, and the caller keeps
//! the choice in its own state (`Aes256Gcm` holds it).
//!
//! On the development machines (kvm_pvm) CPUID and XGETBV at guest CPL3 return the
//! host's values; on hardware they return the guest's own CPUID table and XCR0.

use core::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};

/// An AES-256-GCM implementation this crate carries, fastest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// VAES + VPCLMULQDQ on zmm registers (AVX-512F/BW/VL): 16 blocks per step.
    Vaes512,
    /// VAES + VPCLMULQDQ on ymm registers (AVX2): 16 blocks per step.
    Vaes256,
    /// AES-NI + PCLMULQDQ on xmm registers (SSE only): 8 blocks of AES interleaved with
    /// Karatsuba GHASH over precomputed powers of H.
    AesNi,
    /// RustCrypto `aes-gcm` (with whatever its own backend selects).
    Portable,
}

/// Why a kernel cannot run here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// The CPU lacks an instruction set extension (CPUID).
    Cpu(&'static str),
    /// The OS has not enabled a register state (CR4.OSXSAVE or an XCR0 bit).
    OsState(&'static str),
}

impl core::fmt::Display for Missing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Missing::Cpu(what) => write!(f, "the CPU lacks {what}"),
            Missing::OsState(what) => write!(f, "the OS has not enabled {what}"),
        }
    }
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 4] = [
        Kernel::Vaes512,
        Kernel::Vaes256,
        Kernel::AesNi,
        Kernel::Portable,
    ];

    /// A short name for reports ("vaes512", "vaes256", "aesni", "portable").
    pub const fn name(self) -> &'static str {
        match self {
            Kernel::Vaes512 => "vaes512",
            Kernel::Vaes256 => "vaes256",
            Kernel::AesNi => "aesni",
            Kernel::Portable => "portable",
        }
    }

    /// The fastest kernel this CPU (and its XCR0) can run.
    pub fn best() -> Kernel {
        let f = Features::read();
        Kernel::ALL
            .into_iter()
            .find(|k| f.missing(*k).is_none())
            .unwrap_or(Kernel::Portable)
    }

    /// Whether this kernel can run here.
    pub fn is_supported(self) -> bool {
        self.missing().is_none()
    }

    /// What this CPU lacks for the kernel, if anything.
    pub fn missing(self) -> Option<Missing> {
        Features::read().missing(self)
    }
}

impl core::fmt::Display for Kernel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

// CPUID.1:ECX
const PCLMULQDQ: u32 = 1 << 1;
const SSSE3: u32 = 1 << 9;
const SSE41: u32 = 1 << 19;
const AES: u32 = 1 << 25;
const OSXSAVE: u32 = 1 << 27;
const AVX: u32 = 1 << 28;
// CPUID.(7,0):EBX
const AVX2: u32 = 1 << 5;
const AVX512F: u32 = 1 << 16;
const AVX512BW: u32 = 1 << 30;
const AVX512VL: u32 = 1 << 31;
// CPUID.(7,0):ECX
const VAES: u32 = 1 << 9;
const VPCLMULQDQ: u32 = 1 << 10;
// XCR0
const XCR0_SSE: u64 = 1 << 1;
const XCR0_AVX: u64 = 1 << 2;
/// Opmask, ZMM_Hi256 and Hi16_ZMM.
const XCR0_AVX512: u64 = 0b111 << 5;

/// The CPUID words and XCR0 the kernels depend on.
#[derive(Clone, Copy, Debug)]
struct Features {
    leaf1_ecx: u32,
    leaf7_ebx: u32,
    leaf7_ecx: u32,
    /// XCR0, or 0 when CR4.OSXSAVE is clear (XGETBV would fault).
    xcr0: u64,
}

impl Features {
    fn read() -> Features {
        let max_leaf = __cpuid(0).eax;
        let leaf1_ecx = __cpuid(1).ecx;
        let (leaf7_ebx, leaf7_ecx) = if max_leaf >= 7 {
            let r = __cpuid_count(7, 0);
            (r.ebx, r.ecx)
        } else {
            (0, 0)
        };
        let xcr0 = if leaf1_ecx & OSXSAVE != 0 {
            // SAFETY: CPUID.1:ECX.OSXSAVE says CR4.OSXSAVE is set, which is what makes
            // XGETBV legal (it raises #UD otherwise); XCR0 (ECX = 0) always exists then.
            unsafe { xgetbv0() }
        } else {
            0
        };
        Features {
            leaf1_ecx,
            leaf7_ebx,
            leaf7_ecx,
            xcr0,
        }
    }

    fn missing(&self, kernel: Kernel) -> Option<Missing> {
        let c1 = |bit: u32, what| (self.leaf1_ecx & bit == 0).then_some(Missing::Cpu(what));
        let b7 = |bit: u32, what| (self.leaf7_ebx & bit == 0).then_some(Missing::Cpu(what));
        let c7 = |bit: u32, what| (self.leaf7_ecx & bit == 0).then_some(Missing::Cpu(what));
        let os = |bits: u64, what| {
            if self.leaf1_ecx & OSXSAVE == 0 {
                Some(Missing::OsState("XSAVE (CR4.OSXSAVE)"))
            } else {
                (self.xcr0 & bits != bits).then_some(Missing::OsState(what))
            }
        };
        let aesni = || {
            c1(AES, "AES-NI")
                .or_else(|| c1(PCLMULQDQ, "PCLMULQDQ"))
                .or_else(|| c1(SSSE3, "SSSE3"))
                .or_else(|| c1(SSE41, "SSE4.1"))
        };
        let vaes256 = || {
            aesni()
                .or_else(|| c1(AVX, "AVX"))
                .or_else(|| b7(AVX2, "AVX2"))
                .or_else(|| c7(VAES, "VAES"))
                .or_else(|| c7(VPCLMULQDQ, "VPCLMULQDQ"))
                .or_else(|| os(XCR0_SSE | XCR0_AVX, "AVX state (XCR0 bits 1-2)"))
        };
        match kernel {
            Kernel::Portable => None,
            Kernel::AesNi => aesni(),
            Kernel::Vaes256 => vaes256(),
            Kernel::Vaes512 => vaes256()
                .or_else(|| b7(AVX512F, "AVX-512F"))
                .or_else(|| b7(AVX512BW, "AVX-512BW"))
                .or_else(|| b7(AVX512VL, "AVX-512VL"))
                .or_else(|| {
                    os(
                        XCR0_SSE | XCR0_AVX | XCR0_AVX512,
                        "AVX-512 state (XCR0 bits 5-7)",
                    )
                }),
        }
    }
}

/// XCR0.
///
/// # Safety
/// CR4.OSXSAVE must be set (CPUID.1:ECX.OSXSAVE).
#[target_feature(enable = "xsave")]
unsafe fn xgetbv0() -> u64 {
    // SAFETY: the caller checked CR4.OSXSAVE; reading XCR0 has no other precondition.
    unsafe { _xgetbv(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(leaf1_ecx: u32, leaf7_ebx: u32, leaf7_ecx: u32, xcr0: u64) -> Features {
        Features {
            leaf1_ecx,
            leaf7_ebx,
            leaf7_ecx,
            xcr0,
        }
    }

    const SSE_CRYPTO: u32 = AES | PCLMULQDQ | SSSE3 | SSE41;
    const ALL7_EBX: u32 = AVX2 | AVX512F | AVX512BW | AVX512VL;
    const ALL7_ECX: u32 = VAES | VPCLMULQDQ;

    #[test]
    fn vector_kernels_need_the_os_state_as_well_as_the_instructions() {
        // Everything present and enabled.
        let f = features(SSE_CRYPTO | AVX | OSXSAVE, ALL7_EBX, ALL7_ECX, 0xe7);
        assert_eq!(f.missing(Kernel::Vaes512), None);
        // XCR0 without the AVX-512 state: ymm only.
        let f = features(SSE_CRYPTO | AVX | OSXSAVE, ALL7_EBX, ALL7_ECX, 0x7);
        assert_eq!(
            f.missing(Kernel::Vaes512),
            Some(Missing::OsState("AVX-512 state (XCR0 bits 5-7)"))
        );
        assert_eq!(f.missing(Kernel::Vaes256), None);
        // No OSXSAVE: no vector kernel, whatever the CPU has (as on hardware whose
        // firmware did not enable XSAVE); AES-NI still runs.
        let f = features(SSE_CRYPTO | AVX, ALL7_EBX, ALL7_ECX, 0);
        assert_eq!(
            f.missing(Kernel::Vaes256),
            Some(Missing::OsState("XSAVE (CR4.OSXSAVE)"))
        );
        assert_eq!(f.missing(Kernel::AesNi), None);
    }

    #[test]
    fn kernels_need_their_instructions() {
        let f = features(
            SSE_CRYPTO | AVX | OSXSAVE,
            ALL7_EBX & !AVX512BW,
            ALL7_ECX,
            0xe7,
        );
        assert_eq!(f.missing(Kernel::Vaes512), Some(Missing::Cpu("AVX-512BW")));
        assert_eq!(f.missing(Kernel::Vaes256), None);
        let f = features(SSE_CRYPTO | AVX | OSXSAVE, ALL7_EBX, VPCLMULQDQ, 0xe7);
        assert_eq!(f.missing(Kernel::Vaes256), Some(Missing::Cpu("VAES")));
        let f = features(AES | SSSE3 | SSE41, 0, 0, 0);
        assert_eq!(f.missing(Kernel::AesNi), Some(Missing::Cpu("PCLMULQDQ")));
        assert_eq!(f.missing(Kernel::Portable), None);
    }
}
