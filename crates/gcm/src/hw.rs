//! What every hardware kernel shares: the AES-256 key schedule, the table of powers of
//! H, and GHASH on single xmm values.
//!
//! GHASH representation (as in Intel's CLMUL white paper and the Linux/BoringSSL
//! VAES kernels): blocks are byte-reversed on load, so a field element is a 128-bit
//! integer whose bit 127 is the coefficient of x^0. In that form a carry-less product
//! is the field product times x, and Montgomery reduction with the constant
//! 0xC2000000000000000000000000000001 (x^128 + x^127 + x^126 + x^121 + 1, GHASH's
//! polynomial written backwards) removes the low 128 bits. Storing every power of H
//! multiplied by x^-1 cancels the extra x, so `reduce(clmul(X, H^i·x^-1)) = X·H^i` with
//! no shifts on the data path.

use core::arch::x86_64::*;

/// Blocks per step of the widest kernels, and so the number of powers of H kept.
pub const POWERS: usize = 16;

/// GHASH's polynomial in the byte-reversed domain: the low 128 bits of
/// x^128 + x^127 + x^126 + x^121 + 1.
const POLY: u128 = 0xC200_0000_0000_0000_0000_0000_0000_0001;

/// An AES-256 key schedule and the powers of H for one key, laid out for the kernels.
#[derive(Clone)]
#[repr(C, align(64))]
pub struct HwKey {
    /// H^16·x^-1, H^15·x^-1, ..., H^1·x^-1 (byte-reversed form), then 4 zero entries:
    /// the `n` powers for an `n`-block group are `h[16 - n..16]`, and a group padded
    /// with zero blocks to a whole number of vectors may read up to 3 entries past H^1
    /// (their products with zero blocks are zero).
    pub h: [u128; POWERS + 4],
    /// For the AES-NI kernel's Karatsuba middle products: entry `i` holds
    /// `lo64(h[i]) ^ hi64(h[i])` in both halves.
    pub hk: [u128; POWERS + 4],
    /// The 15 encryption round keys.
    pub rk: [u128; 15],
}

impl Drop for HwKey {
    fn drop(&mut self) {
        let words = self.h.iter_mut().chain(&mut self.hk).chain(&mut self.rk);
        for w in words {
            // SAFETY: `w` is a valid, exclusive reference to a u128 of this key.
            unsafe { core::ptr::write_volatile(w, 0) };
        }
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }
}

/// The 128-bit value as an xmm register (low qword first, as x86 stores a u128).
#[inline]
#[target_feature(enable = "sse2")]
pub fn to_xmm(v: u128) -> __m128i {
    _mm_set_epi64x((v >> 64) as i64, v as i64)
}

/// The xmm register as a u128.
#[inline]
#[target_feature(enable = "sse4.1")]
pub fn from_xmm(v: __m128i) -> u128 {
    let lo = _mm_extract_epi64::<0>(v) as u64;
    let hi = _mm_extract_epi64::<1>(v) as u64;
    u128::from(lo) | u128::from(hi) << 64
}

/// Reverses the 16 bytes.
#[inline]
#[target_feature(enable = "ssse3")]
pub fn bswap(v: __m128i) -> __m128i {
    _mm_shuffle_epi8(
        v,
        _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
    )
}

/// Loads 16 bytes.
#[inline]
#[target_feature(enable = "sse2")]
pub fn load(b: &[u8; 16]) -> __m128i {
    // SAFETY: `b` is 16 readable bytes; the load has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// Stores 16 bytes.
#[inline]
#[target_feature(enable = "sse2")]
pub fn store(b: &mut [u8; 16], v: __m128i) {
    // SAFETY: `b` is 16 writable bytes; the store has no alignment requirement.
    unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) }
}

/// Montgomery reduction of the 256-bit product `hi·2^128 + mi·2^64 + lo` to 128 bits.
#[inline]
#[target_feature(enable = "sse2,pclmulqdq")]
pub fn reduce(lo: __m128i, mi: __m128i, hi: __m128i) -> __m128i {
    let poly = to_xmm(POLY);
    // Clear the low qword of `lo`: add lo0·g, shift right by 64 bits.
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let mi = _mm_xor_si128(_mm_xor_si128(mi, _mm_shuffle_epi32::<0x4e>(lo)), t);
    // The same for the low qword of the new middle.
    let t = _mm_clmulepi64_si128::<0x10>(mi, poly);
    _mm_xor_si128(_mm_xor_si128(hi, _mm_shuffle_epi32::<0x4e>(mi)), t)
}

/// The field product `a·b·x` (so `gmul(X, H·x^-1) = X·H`).
#[inline]
#[target_feature(enable = "sse2,pclmulqdq")]
pub fn gmul(a: __m128i, b: __m128i) -> __m128i {
    let lo = _mm_clmulepi64_si128::<0x00>(a, b);
    let hi = _mm_clmulepi64_si128::<0x11>(a, b);
    let mi = _mm_xor_si128(
        _mm_clmulepi64_si128::<0x01>(a, b),
        _mm_clmulepi64_si128::<0x10>(a, b),
    );
    reduce(lo, mi, hi)
}

/// Encrypts one block (the round keys are already xmm values).
#[inline]
#[target_feature(enable = "aes")]
pub fn encrypt_block(rk: &[__m128i; 15], block: __m128i) -> __m128i {
    let mut b = _mm_xor_si128(block, rk[0]);
    for k in &rk[1..14] {
        b = _mm_aesenc_si128(b, *k);
    }
    _mm_aesenclast_si128(b, rk[14])
}

/// The round keys as xmm values.
#[inline]
#[target_feature(enable = "sse2")]
pub fn round_keys(key: &HwKey) -> [__m128i; 15] {
    let mut rk = [_mm_setzero_si128(); 15];
    for (x, k) in rk.iter_mut().zip(&key.rk) {
        *x = to_xmm(*k);
    }
    rk
}

/// One step of the AES-256 key expansion: `prev ^ (prev << 32) ^ (prev << 64) ^
/// (prev << 96) ^ t`, with `t` the broadcast word from AESKEYGENASSIST.
#[inline]
#[target_feature(enable = "sse2")]
fn expand_step(prev: __m128i, t: __m128i) -> __m128i {
    let mut a = prev;
    a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
    a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
    a = _mm_xor_si128(a, _mm_slli_si128::<4>(a));
    _mm_xor_si128(a, t)
}

/// The AES-256 encryption key schedule (FIPS 197 §5.2) with AESKEYGENASSIST.
#[target_feature(enable = "sse2,aes")]
fn expand_key(key: &[u8; 32]) -> [__m128i; 15] {
    let mut rk = [_mm_setzero_si128(); 15];
    // SAFETY: both halves of `key` are 16 readable bytes; unaligned loads.
    unsafe {
        rk[0] = _mm_loadu_si128(key.as_ptr().cast());
        rk[1] = _mm_loadu_si128(key.as_ptr().add(16).cast());
    }
    // Even round keys take RotWord(SubWord(w)) ^ Rcon of the last word of the previous
    // odd key; odd ones SubWord of the last word of the previous even key.
    macro_rules! even {
        ($i:expr, $rcon:expr) => {
            let t = _mm_shuffle_epi32::<0xff>(_mm_aeskeygenassist_si128::<$rcon>(rk[$i - 1]));
            rk[$i] = expand_step(rk[$i - 2], t);
        };
    }
    macro_rules! odd {
        ($i:expr) => {
            let t = _mm_shuffle_epi32::<0xaa>(_mm_aeskeygenassist_si128::<0>(rk[$i - 1]));
            rk[$i] = expand_step(rk[$i - 2], t);
        };
    }
    even!(2, 0x01);
    odd!(3);
    even!(4, 0x02);
    odd!(5);
    even!(6, 0x04);
    odd!(7);
    even!(8, 0x08);
    odd!(9);
    even!(10, 0x10);
    odd!(11);
    even!(12, 0x20);
    odd!(13);
    even!(14, 0x40);
    rk
}

impl HwKey {
    /// The schedule and powers of H for `key`.
    ///
    /// # Safety
    /// The CPU must have AES-NI, PCLMULQDQ, SSSE3 and SSE4.1 (every hardware kernel
    /// checks these).
    #[target_feature(enable = "sse2,ssse3,sse4.1,aes,pclmulqdq")]
    pub unsafe fn new(key: &[u8; 32]) -> HwKey {
        let rk = expand_key(key);
        // H = E(K, 0^128), byte-reversed, times x^-1: shift left by one bit in the
        // reversed domain and reduce the bit that falls out.
        let h = from_xmm(bswap(encrypt_block(&rk, _mm_setzero_si128())));
        let h1 = (h << 1) ^ if h >> 127 == 1 { POLY } else { 0 };
        let mut powers = [0u128; POWERS + 4];
        let mut p = to_xmm(h1);
        for i in (0..POWERS).rev() {
            powers[i] = from_xmm(p);
            p = gmul(p, to_xmm(h1));
        }
        let mut hk = [0u128; POWERS + 4];
        for (k, h) in hk.iter_mut().zip(&powers) {
            let folded = (*h as u64) ^ ((*h >> 64) as u64);
            *k = u128::from(folded) | u128::from(folded) << 64;
        }
        let mut rk_words = [0u128; 15];
        for (w, k) in rk_words.iter_mut().zip(&rk) {
            *w = from_xmm(*k);
        }
        HwKey {
            h: powers,
            hk,
            rk: rk_words,
        }
    }
}

/// The counter block J0 = nonce ‖ 1 in the byte-reversed domain, where GCM's 32-bit
/// big-endian counter is the low dword and counts up with a 32-bit add.
#[inline]
#[target_feature(enable = "sse2,ssse3")]
pub fn j0_reversed(nonce: &[u8; 12]) -> __m128i {
    let mut b = [0u8; 16];
    b[..12].copy_from_slice(nonce);
    b[15] = 1;
    bswap(load(&b))
}

/// The GHASH input that closes a message: bit lengths of the AAD and the text, both
/// big-endian.
#[inline]
pub fn lengths_block(aad_len: usize, text_len: usize) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(aad_len as u64 * 8).to_be_bytes());
    b[8..].copy_from_slice(&(text_len as u64 * 8).to_be_bytes());
    b
}

/// The 128-bit word at `v` as an xmm register.
#[inline]
#[target_feature(enable = "sse2")]
pub fn load_u128(v: &u128) -> __m128i {
    // SAFETY: `v` is 16 readable bytes.
    unsafe { _mm_loadu_si128((v as *const u128).cast()) }
}

/// One GHASH block: `(y ^ block)·H`.
#[inline]
#[target_feature(enable = "sse2,ssse3,pclmulqdq")]
pub fn ghash_one(key: &HwKey, y: __m128i, block: &[u8; 16]) -> __m128i {
    gmul(
        _mm_xor_si128(y, bswap(load(block))),
        load_u128(&key.h[POWERS - 1]),
    )
}

/// Whether two tags are equal, in time independent of where they differ.
#[inline]
pub fn tags_equal(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y));
    core::hint::black_box(diff) == 0
}

/// Zeroes `bytes` in a way the compiler keeps.
pub fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, exclusive reference to one byte.
        unsafe { core::ptr::write_volatile(b, 0) };
    }
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}

/// The seal and open entry points of a kernel module, written once.
///
/// The module provides `C` (bytes per step, a multiple of 16 up to 256), `Ctx` (the
/// round keys in the kernel's registers) with `Ctx::new(&HwKey)`, and
///
/// - `step_seal(ctx, key, ctr, y, prev, data) -> y`: encrypts the `C`-byte `data` in
///   place with the counters from `ctr` (advancing it), while hashing `prev` (the
///   previous step's ciphertext) into `y` if there is one;
/// - `step_open(ctx, key, ctr, y, data) -> y`: hashes the ciphertext `data` into `y`
///   and decrypts it in place;
/// - `ghash_n(ctx, key, y, blocks, n) -> y`: hashes the first `n` (1..=C/16) blocks,
///   where blocks past `n` up to the kernel's vector width are zero.
///
/// Lengths up to [`crate::MAX_TEXT`] keep GCM's 32-bit counter (it starts at 2) from
/// wrapping, so the kernels count with plain 32-bit adds; the callers check the length.
macro_rules! gcm_driver {
    ($features:literal) => {
        /// Encrypts `data` in place and returns the tag.
        #[target_feature(enable = $features)]
        pub(crate) fn seal(
            key: &$crate::hw::HwKey,
            nonce: &[u8; 12],
            aad: &[u8],
            data: &mut [u8],
        ) -> [u8; 16] {
            use core::arch::x86_64::*;
            let ctx = Ctx::new(key);
            let j0 = $crate::hw::j0_reversed(nonce);
            let mut y = ghash_bytes(&ctx, key, _mm_setzero_si128(), aad);
            let mut ctr = _mm_add_epi32(j0, _mm_set_epi32(0, 0, 0, 1));
            let len = data.len();
            let (chunks, rest) = data.as_chunks_mut::<C>();
            for i in 0..chunks.len() {
                let (done, todo) = chunks.split_at_mut(i);
                y = step_seal(&ctx, key, &mut ctr, y, done.last(), &mut todo[0]);
            }
            if let Some(last) = chunks.last() {
                y = ghash_n(&ctx, key, y, last, C / 16);
            }
            if !rest.is_empty() {
                let n = rest.len();
                let mut buf = [0u8; C];
                buf[..n].copy_from_slice(rest);
                step_seal(&ctx, key, &mut ctr, y, None, &mut buf);
                rest.copy_from_slice(&buf[..n]);
                // Only ciphertext is left in `buf`; GHASH wants the partial block
                // zero-padded.
                buf[n..].fill(0);
                y = ghash_n(&ctx, key, y, &buf, n.div_ceil(16));
            }
            finish(key, j0, y, aad.len(), len)
        }

        /// Verifies the tag and decrypts `data` in place; on a mismatch `data` is
        /// zeroed and the result is false.
        #[target_feature(enable = $features)]
        pub(crate) fn open(
            key: &$crate::hw::HwKey,
            nonce: &[u8; 12],
            aad: &[u8],
            data: &mut [u8],
            tag: &[u8; 16],
        ) -> bool {
            use core::arch::x86_64::*;
            let ctx = Ctx::new(key);
            let j0 = $crate::hw::j0_reversed(nonce);
            let mut y = ghash_bytes(&ctx, key, _mm_setzero_si128(), aad);
            let mut ctr = _mm_add_epi32(j0, _mm_set_epi32(0, 0, 0, 1));
            let len = data.len();
            let (chunks, rest) = data.as_chunks_mut::<C>();
            for chunk in chunks.iter_mut() {
                y = step_open(&ctx, key, &mut ctr, y, chunk);
            }
            if !rest.is_empty() {
                let n = rest.len();
                let mut buf = [0u8; C];
                buf[..n].copy_from_slice(rest);
                y = ghash_n(&ctx, key, y, &buf, n.div_ceil(16));
                step_seal(&ctx, key, &mut ctr, y, None, &mut buf);
                rest.copy_from_slice(&buf[..n]);
                $crate::hw::wipe(&mut buf);
            }
            let ok = $crate::hw::tags_equal(&finish(key, j0, y, aad.len(), len), tag);
            if !ok {
                $crate::hw::wipe(data);
            }
            ok
        }

        /// GHASH over `bytes`, zero-padded to whole blocks.
        #[inline]
        #[target_feature(enable = $features)]
        fn ghash_bytes(
            ctx: &Ctx,
            key: &$crate::hw::HwKey,
            mut y: core::arch::x86_64::__m128i,
            bytes: &[u8],
        ) -> core::arch::x86_64::__m128i {
            let (chunks, rest) = bytes.as_chunks::<C>();
            for chunk in chunks {
                y = ghash_n(ctx, key, y, chunk, C / 16);
            }
            if !rest.is_empty() {
                let mut buf = [0u8; C];
                buf[..rest.len()].copy_from_slice(rest);
                y = ghash_n(ctx, key, y, &buf, rest.len().div_ceil(16));
            }
            y
        }

        /// Hashes the lengths block and masks the result with E(K, J0).
        #[inline]
        #[target_feature(enable = $features)]
        fn finish(
            key: &$crate::hw::HwKey,
            j0: core::arch::x86_64::__m128i,
            y: core::arch::x86_64::__m128i,
            aad_len: usize,
            text_len: usize,
        ) -> [u8; 16] {
            use $crate::hw;
            let y = hw::ghash_one(key, y, &hw::lengths_block(aad_len, text_len));
            let mask = hw::encrypt_block(&hw::round_keys(key), hw::bswap(j0));
            let mut tag = [0u8; 16];
            hw::store(
                &mut tag,
                core::arch::x86_64::_mm_xor_si128(hw::bswap(y), mask),
            );
            tag
        }
    };
}
pub(crate) use gcm_driver;
