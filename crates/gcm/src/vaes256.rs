//! The AVX2 kernel: VAES and VPCLMULQDQ on ymm registers, 16 blocks (8 vectors of 2)
//! per step, structured like the AVX-512 kernel (see `vaes512`): the GHASH of the 16
//! previous ciphertext blocks against H^16..H^1 runs between the first AES rounds, with
//! one Montgomery reduction per step.
//!
//! Everything here runs only after `cpu` has confirmed AVX2, VAES, VPCLMULQDQ and the
//! XCR0 state for ymm registers (the `Vaes256` kernel).

use crate::hw::{self, gcm_driver, HwKey, POWERS};
use core::arch::x86_64::*;

/// Bytes per step.
const C: usize = 256;
/// Vectors per step.
const N: usize = C / 32;

type V = __m256i;

gcm_driver!("avx2,vaes,vpclmulqdq,aes,pclmulqdq,sse4.1,ssse3");

/// The round keys broadcast to both lanes.
struct Ctx {
    rk: [V; 15],
}

impl Ctx {
    #[inline]
    #[target_feature(enable = "avx2,sse4.1")]
    fn new(key: &HwKey) -> Ctx {
        let mut rk = [_mm256_setzero_si256(); 15];
        for (v, k) in rk.iter_mut().zip(&key.rk) {
            *v = _mm256_broadcastsi128_si256(hw::to_xmm(*k));
        }
        Ctx { rk }
    }
}

#[inline]
#[target_feature(enable = "avx2")]
fn bswap(v: V) -> V {
    let mask = _mm256_broadcastsi128_si256(_mm_set_epi8(
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    ));
    _mm256_shuffle_epi8(v, mask)
}

#[inline]
#[target_feature(enable = "avx2")]
fn load_all(b: &[u8; C]) -> [V; N] {
    let mut v = [_mm256_setzero_si256(); N];
    for (i, x) in v.iter_mut().enumerate() {
        // SAFETY: bytes 32*i..32*i+32 of `b` are in bounds (i < N); unaligned load.
        *x = unsafe { _mm256_loadu_si256(b.as_ptr().add(32 * i).cast()) };
    }
    v
}

#[inline]
#[target_feature(enable = "avx2")]
fn store_all(b: &mut [u8; C], v: [V; N]) {
    for (i, x) in v.iter().enumerate() {
        // SAFETY: bytes 32*i..32*i+32 of `b` are in bounds (i < N); unaligned store.
        unsafe { _mm256_storeu_si256(b.as_mut_ptr().add(32 * i).cast(), *x) };
    }
}

/// Two powers of H starting at table index `i` (`i + 2 <= POWERS + 4`).
#[inline]
#[target_feature(enable = "avx2")]
fn powers(key: &HwKey, i: usize) -> V {
    let two = &key.h[i..][..2];
    // SAFETY: `two` is 32 readable bytes; unaligned load.
    unsafe { _mm256_loadu_si256(two.as_ptr().cast()) }
}

/// Block-reversed ciphertext for GHASH, with the running hash folded into block 0.
#[inline]
#[target_feature(enable = "avx2")]
fn ghash_input(c: [V; N], y: __m128i) -> [V; N] {
    let mut g = [_mm256_setzero_si256(); N];
    for (g, c) in g.iter_mut().zip(c) {
        *g = bswap(c);
    }
    g[0] = _mm256_xor_si256(g[0], _mm256_zextsi128_si256(y));
    g
}

/// The 16 counter blocks of a step, byte order restored for AES, and the counter
/// advanced past them.
#[inline]
#[target_feature(enable = "avx2")]
fn counters(ctr: &mut __m128i) -> [V; N] {
    let two = _mm256_broadcastsi128_si256(_mm_set_epi32(0, 0, 0, 2));
    let mut c = _mm256_add_epi32(
        _mm256_broadcastsi128_si256(*ctr),
        _mm256_set_epi32(0, 0, 0, 1, 0, 0, 0, 0),
    );
    let mut out = [_mm256_setzero_si256(); N];
    for o in out.iter_mut() {
        *o = bswap(c);
        c = _mm256_add_epi32(c, two);
    }
    *ctr = _mm_add_epi32(*ctr, _mm_set_epi32(0, 0, 0, 16));
    out
}

/// Accumulates the schoolbook product of `x` and `h` into (lo, mi, hi).
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn mul_acc(acc: &mut (V, V, V), x: V, h: V) {
    acc.0 = _mm256_xor_si256(acc.0, _mm256_clmulepi64_epi128::<0x00>(x, h));
    acc.1 = _mm256_xor_si256(
        acc.1,
        _mm256_xor_si256(
            _mm256_clmulepi64_epi128::<0x01>(x, h),
            _mm256_clmulepi64_epi128::<0x10>(x, h),
        ),
    );
    acc.2 = _mm256_xor_si256(acc.2, _mm256_clmulepi64_epi128::<0x11>(x, h));
}

/// Montgomery reduction, lane by lane (see `hw::reduce`), then the XOR of both lanes.
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn reduce_fold(acc: (V, V, V)) -> __m128i {
    let poly = _mm256_broadcastsi128_si256(hw::to_xmm(0xC200_0000_0000_0000_0000_0000_0000_0001));
    let t = _mm256_clmulepi64_epi128::<0x10>(acc.0, poly);
    let mi = _mm256_xor_si256(
        _mm256_xor_si256(acc.1, _mm256_shuffle_epi32::<0x4e>(acc.0)),
        t,
    );
    let t = _mm256_clmulepi64_epi128::<0x10>(mi, poly);
    let r = _mm256_xor_si256(_mm256_xor_si256(acc.2, _mm256_shuffle_epi32::<0x4e>(mi)), t);
    _mm_xor_si128(
        _mm256_extracti128_si256::<0>(r),
        _mm256_extracti128_si256::<1>(r),
    )
}

#[inline]
#[target_feature(enable = "avx2")]
fn zero3() -> (V, V, V) {
    let z = _mm256_setzero_si256();
    (z, z, z)
}

/// AES-CTR keystream for one step, no GHASH.
#[inline]
#[target_feature(enable = "avx2,vaes")]
fn keystream(ctx: &Ctx, ctr: &mut __m128i) -> [V; N] {
    let mut s = counters(ctr);
    for x in s.iter_mut() {
        *x = _mm256_xor_si256(*x, ctx.rk[0]);
    }
    for k in &ctx.rk[1..14] {
        for x in s.iter_mut() {
            *x = _mm256_aesenc_epi128(*x, *k);
        }
    }
    for x in s.iter_mut() {
        *x = _mm256_aesenclast_epi128(*x, ctx.rk[14]);
    }
    s
}

/// Pins the order of a step's work (see `vaes512`): an empty asm statement that passes
/// the AES states, the GHASH accumulators and the GHASH source offset through
/// registers, so AES rounds and GHASH products reach the CPU interleaved.
macro_rules! fence {
    ($s:ident, $acc:ident, $p:ident) => {
        // SAFETY: the template is only a comment: no instruction, no memory access, no
        // flags.
        unsafe {
            core::arch::asm!(
                "/* fence {} {} {} {} {} {} {} {} {} {} {} {} */",
                inout(ymm_reg) $s[0], inout(ymm_reg) $s[1],
                inout(ymm_reg) $s[2], inout(ymm_reg) $s[3],
                inout(ymm_reg) $s[4], inout(ymm_reg) $s[5],
                inout(ymm_reg) $s[6], inout(ymm_reg) $s[7],
                inout(ymm_reg) $acc.0, inout(ymm_reg) $acc.1, inout(ymm_reg) $acc.2,
                inout(reg) $p,
                options(pure, nomem, nostack, preserves_flags),
            )
        }
    };
}

/// AES-CTR keystream for one step, stitched with the GHASH of the 16 blocks at `src`
/// (with the running hash `y` folded into the first): one vector's products after each
/// of the first eight rounds, the reduction after the ninth.
// The last fence's copy of the source offset is not needed.
#[allow(unused_assignments)]
#[inline]
#[target_feature(enable = "avx2,vaes,vpclmulqdq")]
fn keystream_ghash(
    ctx: &Ctx,
    key: &HwKey,
    ctr: &mut __m128i,
    src: &[u8; C],
    y: __m128i,
) -> ([V; N], __m128i) {
    let mut s = counters(ctr);
    for x in s.iter_mut() {
        *x = _mm256_xor_si256(*x, ctx.rk[0]);
    }
    let mut acc = zero3();
    let p = src.as_ptr();
    // Zero, but the compiler cannot know: the loads of the GHASH source depend on it,
    // so they stay after the fence that last passed it.
    let mut o = 0usize;
    macro_rules! round {
        ($r:expr) => {
            for x in s.iter_mut() {
                *x = _mm256_aesenc_epi128(*x, ctx.rk[$r]);
            }
        };
    }
    macro_rules! round_mul {
        ($r:expr) => {
            round!($r);
            // SAFETY: `p` is `src`'s address and `o` is 0 (the fences pass it unchanged);
            // bytes 32*($r-1).. +32 lie within its C = 256 bytes.
            let x = bswap(unsafe { _mm256_loadu_si256(p.add(o + 32 * ($r - 1)).cast()) });
            let x = if $r == 1 {
                _mm256_xor_si256(x, _mm256_zextsi128_si256(y))
            } else {
                x
            };
            mul_acc(&mut acc, x, powers(key, 2 * ($r - 1)));
            fence!(s, acc, o);
        };
    }
    fence!(s, acc, o);
    round_mul!(1);
    round_mul!(2);
    round_mul!(3);
    round_mul!(4);
    round_mul!(5);
    round_mul!(6);
    round_mul!(7);
    round_mul!(8);
    round!(9);
    let y = reduce_fold(acc);
    round!(10);
    round!(11);
    round!(12);
    round!(13);
    for x in s.iter_mut() {
        *x = _mm256_aesenclast_epi128(*x, ctx.rk[14]);
    }
    (s, y)
}

#[inline]
#[target_feature(enable = "avx2")]
fn xor_all(mut a: [V; N], b: [V; N]) -> [V; N] {
    for (a, b) in a.iter_mut().zip(b) {
        *a = _mm256_xor_si256(*a, b);
    }
    a
}

#[inline]
#[target_feature(enable = "avx2,vaes,vpclmulqdq")]
fn step_seal(
    ctx: &Ctx,
    key: &HwKey,
    ctr: &mut __m128i,
    y: __m128i,
    prev: Option<&[u8; C]>,
    data: &mut [u8; C],
) -> __m128i {
    match prev {
        None => {
            let ks = keystream(ctx, ctr);
            store_all(data, xor_all(load_all(data), ks));
            y
        }
        Some(prev) => {
            let (ks, y) = keystream_ghash(ctx, key, ctr, prev, y);
            store_all(data, xor_all(load_all(data), ks));
            y
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,vaes,vpclmulqdq")]
fn step_open(ctx: &Ctx, key: &HwKey, ctr: &mut __m128i, y: __m128i, data: &mut [u8; C]) -> __m128i {
    let (ks, y) = keystream_ghash(ctx, key, ctr, data, y);
    store_all(data, xor_all(load_all(data), ks));
    y
}

#[inline]
#[target_feature(enable = "avx2,vpclmulqdq")]
fn ghash_n(_ctx: &Ctx, key: &HwKey, y: __m128i, blocks: &[u8; C], n: usize) -> __m128i {
    let g = ghash_input(load_all(blocks), y);
    let mut acc = zero3();
    for (v, x) in g.iter().enumerate().take(n.div_ceil(2)) {
        mul_acc(&mut acc, *x, powers(key, POWERS - n + 2 * v));
    }
    reduce_fold(acc)
}
