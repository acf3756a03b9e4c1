//! The AVX-512 kernel: VAES and VPCLMULQDQ on zmm registers, 16 blocks (4 vectors of 4)
//! per step. Each step runs the 14 AES rounds of 16 counter blocks and, between the
//! first rounds, the GHASH of 16 ciphertext blocks against H^16..H^1 (schoolbook
//! products summed over all 16 blocks, one Montgomery reduction per step, reduced in
//! the vector and folded to one block while the last rounds run).
//!
//! Everything here runs only after `cpu` has confirmed AVX-512F/BW/VL, VAES,
//! VPCLMULQDQ and the XCR0 state for zmm registers (the `Vaes512` kernel).

use crate::hw::{self, gcm_driver, HwKey, POWERS};
use core::arch::x86_64::*;

/// Bytes per step.
const C: usize = 256;

type V = __m512i;

gcm_driver!("avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,avx2,aes,pclmulqdq,sse4.1,ssse3");

/// The round keys broadcast to every lane.
struct Ctx {
    rk: [V; 15],
}

impl Ctx {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,sse4.1")]
    fn new(key: &HwKey) -> Ctx {
        let mut rk = [_mm512_setzero_si512(); 15];
        for (v, k) in rk.iter_mut().zip(&key.rk) {
            *v = _mm512_broadcast_i32x4(hw::to_xmm(*k));
        }
        Ctx { rk }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn bswap(v: V) -> V {
    let mask = _mm512_broadcast_i32x4(_mm_set_epi8(
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
    ));
    _mm512_shuffle_epi8(v, mask)
}

/// The four 64-byte vectors of a step's data.
#[inline]
#[target_feature(enable = "avx512f")]
fn load4(b: &[u8; C]) -> [V; 4] {
    let mut v = [_mm512_setzero_si512(); 4];
    for (i, x) in v.iter_mut().enumerate() {
        // SAFETY: bytes 64*i..64*i+64 of `b` are in bounds (i < 4); unaligned load.
        *x = unsafe { _mm512_loadu_si512(b.as_ptr().add(64 * i).cast()) };
    }
    v
}

#[inline]
#[target_feature(enable = "avx512f")]
fn store4(b: &mut [u8; C], v: [V; 4]) {
    for (i, x) in v.iter().enumerate() {
        // SAFETY: bytes 64*i..64*i+64 of `b` are in bounds (i < 4); unaligned store.
        unsafe { _mm512_storeu_si512(b.as_mut_ptr().add(64 * i).cast(), *x) };
    }
}

/// Four powers of H starting at table index `i` (`i + 4 <= POWERS + 4`).
#[inline]
#[target_feature(enable = "avx512f")]
fn powers(key: &HwKey, i: usize) -> V {
    let four = &key.h[i..][..4];
    // SAFETY: `four` is 64 readable bytes; unaligned load.
    unsafe { _mm512_loadu_si512(four.as_ptr().cast()) }
}

/// Block-reversed ciphertext for GHASH, with the running hash folded into block 0.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn ghash_input(c: [V; 4], y: __m128i) -> [V; 4] {
    [
        _mm512_xor_si512(bswap(c[0]), _mm512_zextsi128_si512(y)),
        bswap(c[1]),
        bswap(c[2]),
        bswap(c[3]),
    ]
}

/// The 16 counter blocks of a step, byte order restored for AES, and the counter
/// advanced past them.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn counters(ctr: &mut __m128i) -> [V; 4] {
    let base = _mm512_add_epi32(
        _mm512_broadcast_i32x4(*ctr),
        _mm512_set_epi32(0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0),
    );
    let four = _mm512_broadcast_i32x4(_mm_set_epi32(0, 0, 0, 4));
    let c1 = _mm512_add_epi32(base, four);
    let c2 = _mm512_add_epi32(c1, four);
    let c3 = _mm512_add_epi32(c2, four);
    *ctr = _mm_add_epi32(*ctr, _mm_set_epi32(0, 0, 0, 16));
    [bswap(base), bswap(c1), bswap(c2), bswap(c3)]
}

/// Accumulates the schoolbook product of `x` and `h` into (lo, mi, hi).
#[inline]
#[target_feature(enable = "avx512f,vpclmulqdq")]
fn mul_acc(acc: &mut (V, V, V), x: V, h: V) {
    acc.0 = _mm512_xor_si512(acc.0, _mm512_clmulepi64_epi128::<0x00>(x, h));
    acc.1 = _mm512_xor_si512(
        acc.1,
        _mm512_xor_si512(
            _mm512_clmulepi64_epi128::<0x01>(x, h),
            _mm512_clmulepi64_epi128::<0x10>(x, h),
        ),
    );
    acc.2 = _mm512_xor_si512(acc.2, _mm512_clmulepi64_epi128::<0x11>(x, h));
}

/// Montgomery reduction, lane by lane (see `hw::reduce`): first half.
#[inline]
#[target_feature(enable = "avx512f,vpclmulqdq")]
fn reduce_lo(acc: &mut (V, V, V), poly: V) {
    let t = _mm512_clmulepi64_epi128::<0x10>(acc.0, poly);
    acc.1 = _mm512_xor_si512(
        _mm512_xor_si512(acc.1, _mm512_shuffle_epi32::<0x4e>(acc.0)),
        t,
    );
}

/// Second half: the reduced lanes.
#[inline]
#[target_feature(enable = "avx512f,vpclmulqdq")]
fn reduce_hi(acc: &(V, V, V), poly: V) -> V {
    let t = _mm512_clmulepi64_epi128::<0x10>(acc.1, poly);
    _mm512_xor_si512(
        _mm512_xor_si512(acc.2, _mm512_shuffle_epi32::<0x4e>(acc.1)),
        t,
    )
}

/// The XOR of the four lanes.
#[inline]
#[target_feature(enable = "avx512f,avx2")]
fn fold(v: V) -> __m128i {
    let a = _mm256_xor_si256(
        _mm512_extracti64x4_epi64::<0>(v),
        _mm512_extracti64x4_epi64::<1>(v),
    );
    _mm_xor_si128(
        _mm256_extracti128_si256::<0>(a),
        _mm256_extracti128_si256::<1>(a),
    )
}

#[inline]
#[target_feature(enable = "avx512f")]
fn zero3() -> (V, V, V) {
    let z = _mm512_setzero_si512();
    (z, z, z)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn poly() -> V {
    _mm512_broadcast_i32x4(hw::to_xmm(0xC200_0000_0000_0000_0000_0000_0000_0001))
}

/// AES-CTR keystream for one step, no GHASH.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,vaes")]
fn keystream(ctx: &Ctx, ctr: &mut __m128i) -> [V; 4] {
    let mut s = counters(ctr);
    for x in s.iter_mut() {
        *x = _mm512_xor_si512(*x, ctx.rk[0]);
    }
    for k in &ctx.rk[1..14] {
        for x in s.iter_mut() {
            *x = _mm512_aesenc_epi128(*x, *k);
        }
    }
    for x in s.iter_mut() {
        *x = _mm512_aesenclast_epi128(*x, ctx.rk[14]);
    }
    s
}

/// Pins the order of a step's work: an empty asm statement that passes the AES states,
/// the GHASH accumulators and the GHASH source offset through registers, so the
/// compiler cannot hoist all GHASH work above the AES rounds (which starves the AES
/// chains on an in-order front end); the CPU gets them interleaved, round by round.
macro_rules! fence {
    ($s:ident, $acc:ident, $p:ident) => {
        // SAFETY: the template is empty: no instruction, no memory access, no flags.
        unsafe {
            core::arch::asm!(
                "/* fence {} {} {} {} {} {} {} {} */",
                inout(zmm_reg) $s[0], inout(zmm_reg) $s[1],
                inout(zmm_reg) $s[2], inout(zmm_reg) $s[3],
                inout(zmm_reg) $acc.0, inout(zmm_reg) $acc.1, inout(zmm_reg) $acc.2,
                inout(reg) $p,
                options(pure, nomem, nostack, preserves_flags),
            )
        }
    };
}

/// AES-CTR keystream for one step, stitched with the GHASH of the 16 blocks at `src`
/// (with the running hash `y` folded into the first). Returns the keystream and the
/// new hash.
// The last fence's copy of the source offset is not needed.
#[allow(unused_assignments)]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,avx2")]
fn keystream_ghash(
    ctx: &Ctx,
    key: &HwKey,
    ctr: &mut __m128i,
    src: &[u8; C],
    y: __m128i,
) -> ([V; 4], __m128i) {
    let mut s = counters(ctr);
    for x in s.iter_mut() {
        *x = _mm512_xor_si512(*x, ctx.rk[0]);
    }
    let poly = poly();
    let mut acc = zero3();
    let p = src.as_ptr();
    // Zero, but the compiler cannot know: the loads of the GHASH source depend on it,
    // so they stay after the fence that last passed it.
    let mut o = 0usize;
    macro_rules! round {
        ($r:expr) => {
            for x in s.iter_mut() {
                *x = _mm512_aesenc_epi128(*x, ctx.rk[$r]);
            }
        };
    }
    macro_rules! round_mul {
        ($r:expr) => {
            round!($r);
            // SAFETY: `p` is `src`'s address and `o` is 0 (the fences pass it unchanged);
            // bytes 64*($r-1).. +64 lie within its C = 256 bytes.
            let x = bswap(unsafe { _mm512_loadu_si512(p.add(o + 64 * ($r - 1)).cast()) });
            let x = if $r == 1 {
                _mm512_xor_si512(x, _mm512_zextsi128_si512(y))
            } else {
                x
            };
            mul_acc(&mut acc, x, powers(key, 4 * ($r - 1)));
            fence!(s, acc, o);
        };
    }
    fence!(s, acc, o);
    round_mul!(1);
    round_mul!(2);
    round_mul!(3);
    round_mul!(4);
    round!(5);
    reduce_lo(&mut acc, poly);
    fence!(s, acc, o);
    round!(6);
    let r = reduce_hi(&acc, poly);
    round!(7);
    let y = fold(r);
    round!(8);
    round!(9);
    round!(10);
    round!(11);
    round!(12);
    round!(13);
    for x in s.iter_mut() {
        *x = _mm512_aesenclast_epi128(*x, ctx.rk[14]);
    }
    (s, y)
}

#[inline]
#[target_feature(enable = "avx512f")]
fn xor4(a: [V; 4], b: [V; 4]) -> [V; 4] {
    [
        _mm512_xor_si512(a[0], b[0]),
        _mm512_xor_si512(a[1], b[1]),
        _mm512_xor_si512(a[2], b[2]),
        _mm512_xor_si512(a[3], b[3]),
    ]
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,avx2")]
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
            store4(data, xor4(load4(data), ks));
            y
        }
        Some(prev) => {
            let (ks, y) = keystream_ghash(ctx, key, ctr, prev, y);
            store4(data, xor4(load4(data), ks));
            y
        }
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,vaes,vpclmulqdq,avx2")]
fn step_open(ctx: &Ctx, key: &HwKey, ctr: &mut __m128i, y: __m128i, data: &mut [u8; C]) -> __m128i {
    let (ks, y) = keystream_ghash(ctx, key, ctr, data, y);
    store4(data, xor4(load4(data), ks));
    y
}

#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,vpclmulqdq,avx2")]
fn ghash_n(_ctx: &Ctx, key: &HwKey, y: __m128i, blocks: &[u8; C], n: usize) -> __m128i {
    let g = ghash_input(load4(blocks), y);
    let mut acc = zero3();
    for (v, x) in g.iter().enumerate().take(n.div_ceil(4)) {
        mul_acc(&mut acc, *x, powers(key, POWERS - n + 4 * v));
    }
    let poly = poly();
    reduce_lo(&mut acc, poly);
    fold(reduce_hi(&acc, poly))
}
