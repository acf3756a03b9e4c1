//! The AES-NI kernel: plain SSE (no AVX state needed), 8 blocks per step. Each step runs
//! the 14 AES rounds of 8 counter blocks and, one block after each of the first eight
//! rounds, the Karatsuba products (3 PCLMULQDQ per block: low, high, and middle from the
//! precomputed `lo ^ hi` of each power) of the previous 8 ciphertext blocks against
//! H^8..H^1, summed and reduced once per step.
//!
//! Everything here runs only after `cpu` has confirmed AES-NI, PCLMULQDQ, SSSE3 and
//! SSE4.1 (the `AesNi` kernel).

use crate::hw::{self, gcm_driver, HwKey, POWERS};
use core::arch::x86_64::*;

/// Bytes per step.
const C: usize = 128;
/// Blocks per step.
const N: usize = C / 16;

gcm_driver!("aes,pclmulqdq,sse4.1,ssse3");

/// The round keys in xmm registers.
struct Ctx {
    rk: [__m128i; 15],
}

impl Ctx {
    #[inline]
    #[target_feature(enable = "sse4.1")]
    fn new(key: &HwKey) -> Ctx {
        Ctx {
            rk: hw::round_keys(key),
        }
    }
}

#[inline]
#[target_feature(enable = "sse2")]
fn load_all(b: &[u8; C]) -> [__m128i; N] {
    let mut v = [_mm_setzero_si128(); N];
    for (x, b) in v.iter_mut().zip(b.as_chunks::<16>().0) {
        *x = hw::load(b);
    }
    v
}

#[inline]
#[target_feature(enable = "sse2")]
fn store_all(b: &mut [u8; C], v: [__m128i; N]) {
    for (x, b) in v.iter().zip(b.as_chunks_mut::<16>().0) {
        hw::store(b, *x);
    }
}

/// Block-reversed ciphertext for GHASH, with the running hash folded into block 0.
#[inline]
#[target_feature(enable = "ssse3")]
fn ghash_input(c: [__m128i; N], y: __m128i) -> [__m128i; N] {
    let mut g = [_mm_setzero_si128(); N];
    for (g, c) in g.iter_mut().zip(c) {
        *g = hw::bswap(c);
    }
    g[0] = _mm_xor_si128(g[0], y);
    g
}

/// The 8 counter blocks of a step, byte order restored for AES, and the counter
/// advanced past them.
#[inline]
#[target_feature(enable = "ssse3")]
fn counters(ctr: &mut __m128i) -> [__m128i; N] {
    let one = _mm_set_epi32(0, 0, 0, 1);
    let mut out = [_mm_setzero_si128(); N];
    for o in out.iter_mut() {
        *o = hw::bswap(*ctr);
        *ctr = _mm_add_epi32(*ctr, one);
    }
    out
}

/// Accumulates the Karatsuba products of block `x` and the power at table index `i`:
/// lo += x0·h0, hi += x1·h1, mi += (x0^x1)·(h0^h1).
#[inline]
#[target_feature(enable = "sse2,pclmulqdq")]
fn mul_acc(acc: &mut (__m128i, __m128i, __m128i), key: &HwKey, x: __m128i, i: usize) {
    let h = hw::load_u128(&key.h[i]);
    let hk = hw::load_u128(&key.hk[i]);
    acc.0 = _mm_xor_si128(acc.0, _mm_clmulepi64_si128::<0x00>(x, h));
    acc.2 = _mm_xor_si128(acc.2, _mm_clmulepi64_si128::<0x11>(x, h));
    let xk = _mm_xor_si128(x, _mm_shuffle_epi32::<0x4e>(x));
    acc.1 = _mm_xor_si128(acc.1, _mm_clmulepi64_si128::<0x00>(xk, hk));
}

/// The reduced sum: Karatsuba's middle term is mi ^ lo ^ hi.
#[inline]
#[target_feature(enable = "sse2,pclmulqdq")]
fn reduce(acc: (__m128i, __m128i, __m128i)) -> __m128i {
    let mi = _mm_xor_si128(acc.1, _mm_xor_si128(acc.0, acc.2));
    hw::reduce(acc.0, mi, acc.2)
}

#[inline]
#[target_feature(enable = "sse2")]
fn zero3() -> (__m128i, __m128i, __m128i) {
    let z = _mm_setzero_si128();
    (z, z, z)
}

/// AES-CTR keystream for one step, no GHASH.
#[inline]
#[target_feature(enable = "aes,ssse3")]
fn keystream(ctx: &Ctx, ctr: &mut __m128i) -> [__m128i; N] {
    let mut s = counters(ctr);
    for x in s.iter_mut() {
        *x = _mm_xor_si128(*x, ctx.rk[0]);
    }
    for k in &ctx.rk[1..14] {
        for x in s.iter_mut() {
            *x = _mm_aesenc_si128(*x, *k);
        }
    }
    for x in s.iter_mut() {
        *x = _mm_aesenclast_si128(*x, ctx.rk[14]);
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
                inout(xmm_reg) $s[0], inout(xmm_reg) $s[1],
                inout(xmm_reg) $s[2], inout(xmm_reg) $s[3],
                inout(xmm_reg) $s[4], inout(xmm_reg) $s[5],
                inout(xmm_reg) $s[6], inout(xmm_reg) $s[7],
                inout(xmm_reg) $acc.0, inout(xmm_reg) $acc.1, inout(xmm_reg) $acc.2,
                inout(reg) $p,
                options(pure, nomem, nostack, preserves_flags),
            )
        }
    };
}

/// AES-CTR keystream for one step, stitched with the GHASH of the 8 blocks at `src`
/// (with the running hash `y` folded into the first): one block's products after each
/// of the first eight rounds, the reduction after the ninth.
// The last fence's copy of the source offset is not needed.
#[allow(unused_assignments)]
#[inline]
#[target_feature(enable = "aes,pclmulqdq,ssse3")]
fn keystream_ghash(
    ctx: &Ctx,
    key: &HwKey,
    ctr: &mut __m128i,
    src: &[u8; C],
    y: __m128i,
) -> ([__m128i; N], __m128i) {
    let mut s = counters(ctr);
    for x in s.iter_mut() {
        *x = _mm_xor_si128(*x, ctx.rk[0]);
    }
    let mut acc = zero3();
    let p = src.as_ptr();
    // Zero, but the compiler cannot know: the loads of the GHASH source depend on it,
    // so they stay after the fence that last passed it.
    let mut o = 0usize;
    macro_rules! round {
        ($r:expr) => {
            for x in s.iter_mut() {
                *x = _mm_aesenc_si128(*x, ctx.rk[$r]);
            }
        };
    }
    macro_rules! round_mul {
        ($r:expr) => {
            round!($r);
            // SAFETY: `p` is `src`'s address and `o` is 0 (the fences pass it unchanged);
            // bytes 16*($r-1).. +16 lie within its C = 128 bytes.
            let x = hw::bswap(unsafe { _mm_loadu_si128(p.add(o + 16 * ($r - 1)).cast()) });
            let x = if $r == 1 { _mm_xor_si128(x, y) } else { x };
            mul_acc(&mut acc, key, x, POWERS - N + $r - 1);
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
    let y = reduce(acc);
    round!(10);
    round!(11);
    round!(12);
    round!(13);
    for x in s.iter_mut() {
        *x = _mm_aesenclast_si128(*x, ctx.rk[14]);
    }
    (s, y)
}

#[inline]
#[target_feature(enable = "sse2")]
fn xor_all(mut a: [__m128i; N], b: [__m128i; N]) -> [__m128i; N] {
    for (a, b) in a.iter_mut().zip(b) {
        *a = _mm_xor_si128(*a, b);
    }
    a
}

#[inline]
#[target_feature(enable = "aes,pclmulqdq,ssse3")]
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
#[target_feature(enable = "aes,pclmulqdq,ssse3")]
fn step_open(ctx: &Ctx, key: &HwKey, ctr: &mut __m128i, y: __m128i, data: &mut [u8; C]) -> __m128i {
    let (ks, y) = keystream_ghash(ctx, key, ctr, data, y);
    store_all(data, xor_all(load_all(data), ks));
    y
}

#[inline]
#[target_feature(enable = "pclmulqdq,ssse3")]
fn ghash_n(_ctx: &Ctx, key: &HwKey, y: __m128i, blocks: &[u8; C], n: usize) -> __m128i {
    let g = ghash_input(load_all(blocks), y);
    let mut acc = zero3();
    for (j, x) in g.iter().enumerate().take(n) {
        mul_acc(&mut acc, key, *x, POWERS - n + j);
    }
    reduce(acc)
}
