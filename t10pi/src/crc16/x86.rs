//! x86-64 CRC-16/T10-DIF kernels: carry-less multiply folding over 128-bit
//! (PCLMULQDQ, 8 lanes), 256-bit (VPCLMULQDQ in AVX2 registers, 8 x 2 lanes)
//! and 512-bit (VPCLMULQDQ in AVX-512 registers, 4 x 4 lanes) registers, each
//! with a fused copy variant that stores every loaded vector before folding it.
//!
//! The 128- and 256-bit kernels share one scheme (see `consts`): the first
//! 128/256 bytes are loaded byte-reversed per 16-byte chunk, the seed is XORed
//! into the top of the first chunk, every accumulator is folded over the
//! stride of one loop iteration, then all chunks are folded to the last one in
//! parallel with the per-distance multipliers, leftover 16-byte chunks are
//! folded serially, a Barrett step gives the CRC and a tail shorter than 16
//! bytes goes through the table kernel. The 512-bit kernel folds the same way
//! but in the bit-reflected domain (GFNI instead of byte shuffles, see
//! [`refl_pair`]) and prefetches its input into L1; it shares the tail steps.

use std::arch::x86_64::*;

use super::consts::{fold_pair, xpow_mod, BARRETT_MU, K64, K80, POLY_FULL};
use super::table;

/// PCLMULQDQ and the SSE levels the 128-bit kernel uses.
pub(crate) fn has_pclmul() -> bool {
    is_x86_feature_detected!("pclmulqdq")
        && is_x86_feature_detected!("ssse3")
        && is_x86_feature_detected!("sse4.1")
}

/// VPCLMULQDQ with AVX2 registers.
pub(crate) fn has_vpclmul256() -> bool {
    has_pclmul() && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("vpclmulqdq")
}

/// VPCLMULQDQ with AVX-512 registers, byte shuffles and GFNI.
pub(crate) fn has_vpclmul512() -> bool {
    has_vpclmul256()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("gfni")
}

/// Fold multipliers for `n` chunks spaced `stride_bits` apart, each moved to
/// the position of the last one: entry i is `fold_pair(stride_bits*(n-1-i))`.
const fn to_last<const N: usize>(stride_bits: u32) -> [(u64, u64); N] {
    let mut a = [(0u64, 0u64); N];
    let mut i = 0;
    while i < N {
        a[i] = fold_pair(stride_bits * (N - 1 - i) as u32);
        i += 1;
    }
    a
}

/// 128-bit kernel: 8 chunks per iteration (1024 bits), 8 chunks to reduce.
const K128_LOOP: (u64, u64) = fold_pair(1024);
const K128_REDUCE: [(u64, u64); 8] = to_last::<8>(128);
/// One chunk forward (serial tail folds).
const K128_ONE: (u64, u64) = fold_pair(128);
/// 256-bit kernel: 16 chunks per iteration (2048 bits), 16 chunks to reduce.
const K2048_LOOP: (u64, u64) = fold_pair(2048);
const K16_REDUCE: [(u64, u64); 16] = to_last::<16>(128);

#[inline]
#[target_feature(enable = "sse2")]
fn pair128(k: (u64, u64)) -> __m128i {
    _mm_set_epi64x(k.0 as i64, k.1 as i64)
}

#[inline]
#[target_feature(enable = "sse2")]
fn bswap128() -> __m128i {
    _mm_setr_epi8(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0)
}

/// `hi(a)*hi(k) ^ lo(a)*lo(k)`: moves chunk `a` forward by the distance of `k`.
#[inline]
#[target_feature(enable = "pclmulqdq,sse2")]
fn fold128(a: __m128i, k: __m128i) -> __m128i {
    _mm_xor_si128(
        _mm_clmulepi64_si128::<0x11>(a, k),
        _mm_clmulepi64_si128::<0x00>(a, k),
    )
}

/// Final reduction of a 128-bit value `R` congruent to the message to the CRC
/// `R*x^16 mod P`, in vector registers: the steps of
/// [`consts::barrett_reduce`](super::consts::barrett_reduce) with 4 carry-less
/// multiplies and no round trip through general registers.
#[inline]
#[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
fn reduce128(r: __m128i) -> u16 {
    let k = _mm_set_epi64x(K64 as i64, K80 as i64);
    let barrett = _mm_set_epi64x(POLY_FULL as i64, BARRETT_MU as i64);
    // t = hi*(x^80 mod P) + lo*x^16 (degree < 80).
    let t = _mm_xor_si128(
        _mm_clmulepi64_si128::<0x01>(r, k),
        _mm_slli_si128::<2>(_mm_move_epi64(r)),
    );
    // v = t_hi*(x^64 mod P) + t_lo (degree < 64).
    let v = _mm_xor_si128(_mm_clmulepi64_si128::<0x11>(t, k), _mm_move_epi64(t));
    // q = floor(floor(v / x^16) * mu / x^48).
    let q = _mm_srli_si128::<6>(_mm_clmulepi64_si128::<0x00>(
        _mm_srli_epi64::<16>(v),
        barrett,
    ));
    // crc = (v + q*P) mod x^16.
    let c = _mm_xor_si128(v, _mm_clmulepi64_si128::<0x10>(q, barrett));
    _mm_cvtsi128_si32(c) as u16
}

/// Loads 16 bytes at `src + off`, stores them to `dst + off` when `COPY`, and
/// returns them byte-reversed (first byte most significant).
///
/// # Safety
/// `src + off .. + 16` must be readable, and writable at `dst` when `COPY`.
#[inline]
#[target_feature(enable = "sse2,ssse3")]
unsafe fn take128<const COPY: bool>(
    src: *const u8,
    dst: *mut u8,
    off: usize,
    sh: __m128i,
) -> __m128i {
    // SAFETY: the caller guarantees 16 readable bytes at src + off; unaligned load.
    let v = unsafe { _mm_loadu_si128(src.add(off).cast()) };
    if COPY {
        // SAFETY: the caller guarantees 16 writable bytes at dst + off; unaligned store.
        unsafe { _mm_storeu_si128(dst.add(off).cast(), v) };
    }
    _mm_shuffle_epi8(v, sh)
}

/// Serial 16-byte folds from `off` while a whole chunk remains, reduction, and
/// the table kernel on the tail shorter than 16 bytes.
///
/// # Safety
/// `src[..len]` readable; `dst[..len]` writable when `COPY`; `off <= len`.
#[inline]
#[target_feature(enable = "pclmulqdq,sse2,ssse3,sse4.1")]
unsafe fn finish<const COPY: bool>(
    mut acc: __m128i,
    src: *const u8,
    dst: *mut u8,
    len: usize,
    mut off: usize,
) -> u16 {
    let sh = bswap128();
    let k = pair128(K128_ONE);
    while off + 16 <= len {
        // SAFETY: off + 16 <= len, inside the caller's buffers.
        let v = unsafe { take128::<COPY>(src, dst, off, sh) };
        acc = _mm_xor_si128(fold128(acc, k), v);
        off += 16;
    }
    let crc = reduce128(acc);
    if off == len {
        return crc;
    }
    // SAFETY: off < len; the caller guarantees src[..len] readable.
    let tail = unsafe { std::slice::from_raw_parts(src.add(off), len - off) };
    if COPY {
        // SAFETY: the caller guarantees dst[..len] writable and not overlapping src.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.add(off), len - off) };
        table::crc_copy(crc, out, tail)
    } else {
        table::crc(crc, tail)
    }
}

/// 128-bit kernel body.
///
/// # Safety
/// `src[..len]` readable; `dst[..len]` writable and disjoint from src when `COPY`.
#[inline]
#[target_feature(enable = "pclmulqdq,sse2,ssse3,sse4.1")]
unsafe fn body128<const COPY: bool>(seed: u16, src: *const u8, dst: *mut u8, len: usize) -> u16 {
    if len < 128 {
        // SAFETY: the caller guarantees src[..len] readable (and dst[..len] writable when COPY).
        let s = unsafe { std::slice::from_raw_parts(src, len) };
        if COPY {
            // SAFETY: as above; dst is disjoint from src.
            let d = unsafe { std::slice::from_raw_parts_mut(dst, len) };
            return table::crc_copy(seed, d, s);
        }
        return table::crc(seed, s);
    }
    let sh = bswap128();
    let mut x = [_mm_setzero_si128(); 8];
    for (i, xi) in x.iter_mut().enumerate() {
        // SAFETY: 16 * 8 = 128 <= len.
        *xi = unsafe { take128::<COPY>(src, dst, 16 * i, sh) };
    }
    x[0] = _mm_xor_si128(x[0], _mm_set_epi64x(i64::from(seed) << 48, 0));
    let k = pair128(K128_LOOP);
    let mut off = 128;
    while off + 128 <= len {
        for (i, xi) in x.iter_mut().enumerate() {
            // SAFETY: off + 128 <= len.
            let v = unsafe { take128::<COPY>(src, dst, off + 16 * i, sh) };
            *xi = _mm_xor_si128(fold128(*xi, k), v);
        }
        off += 128;
    }
    let mut acc = _mm_setzero_si128();
    for (xi, kp) in x.iter().zip(K128_REDUCE) {
        acc = _mm_xor_si128(acc, fold128(*xi, pair128(kp)));
    }
    // SAFETY: off <= len and the buffers are the caller's.
    unsafe { finish::<COPY>(acc, src, dst, len, off) }
}

/// 256-bit kernel body.
///
/// # Safety
/// As [`body128`].
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq,pclmulqdq,sse2,ssse3,sse4.1")]
unsafe fn body256<const COPY: bool>(seed: u16, src: *const u8, dst: *mut u8, len: usize) -> u16 {
    if len < 256 {
        // SAFETY: same contract.
        return unsafe { body128::<COPY>(seed, src, dst, len) };
    }
    let sh = _mm256_broadcastsi128_si256(bswap128());
    let take = |off: usize| {
        // SAFETY: every call below has off + 32 <= len.
        let v = unsafe { _mm256_loadu_si256(src.add(off).cast()) };
        if COPY {
            // SAFETY: off + 32 <= len inside dst, which the caller made writable.
            unsafe { _mm256_storeu_si256(dst.add(off).cast(), v) };
        }
        _mm256_shuffle_epi8(v, sh)
    };
    let fold = |a: __m256i, k: __m256i| {
        _mm256_xor_si256(
            _mm256_clmulepi64_epi128::<0x11>(a, k),
            _mm256_clmulepi64_epi128::<0x00>(a, k),
        )
    };
    let mut y = [_mm256_setzero_si256(); 8];
    for (i, yi) in y.iter_mut().enumerate() {
        *yi = take(32 * i);
    }
    y[0] = _mm256_xor_si256(y[0], _mm256_set_epi64x(0, 0, i64::from(seed) << 48, 0));
    let (khi, klo) = K2048_LOOP;
    let k = _mm256_set_epi64x(khi as i64, klo as i64, khi as i64, klo as i64);
    let mut off = 256;
    while off + 256 <= len {
        for (i, yi) in y.iter_mut().enumerate() {
            *yi = _mm256_xor_si256(fold(*yi, k), take(off + 32 * i));
        }
        off += 256;
    }
    let mut acc = _mm256_setzero_si256();
    for (i, yi) in y.iter().enumerate() {
        let (a, b) = (K16_REDUCE[2 * i], K16_REDUCE[2 * i + 1]);
        let kr = _mm256_set_epi64x(b.0 as i64, b.1 as i64, a.0 as i64, a.1 as i64);
        acc = _mm256_xor_si256(acc, fold(*yi, kr));
    }
    let acc = _mm_xor_si128(
        _mm256_castsi256_si128(acc),
        _mm256_extracti128_si256::<1>(acc),
    );
    // SAFETY: off <= len and the buffers are the caller's.
    unsafe { finish::<COPY>(acc, src, dst, len, off) }
}

/// Reflected-domain fold multipliers for the 512-bit kernel.
///
/// That kernel never byte-swaps its data: it bit-reverses every byte with one
/// GF2P8AFFINEQB (which runs beside the carry-less multiplies instead of
/// competing with them for the shuffle port), which turns each little-endian
/// 16-byte load into `rev128(chunk)`, the chunk with all 128 bits mirrored.
/// Carry-less multiplication commutes with mirroring up to one bit:
/// `clmul(rev64(a), rev64(c)) = rev128(a*c*x)`. So a chunk is moved `d` bits
/// forward with `c = x^(d+63) mod P` for its high half (which sits in the low
/// qword once mirrored) and `c = x^(d-1) mod P` for its low half; the extra
/// factor x restores `x^(d+64)` and `x^d` modulo P. For `d = 0`, `x^-1 mod P`
/// exists because P has a constant term.
const fn refl_pair(bits: u32) -> (u64, u64) {
    let lo_half = if bits == 0 { X_INV } else { xpow_mod(bits - 1) };
    (xpow_mod(bits + 63).reverse_bits(), lo_half.reverse_bits())
}

/// `x^-1 mod P = (P + 1) / x`.
const X_INV: u64 = (super::consts::POLY_FULL ^ 1) >> 1;

const R2048_LOOP: (u64, u64) = refl_pair(2048);
const R16_REDUCE: [(u64, u64); 16] = {
    let mut a = [(0u64, 0u64); 16];
    let mut i = 0;
    while i < 16 {
        a[i] = refl_pair(128 * (15 - i) as u32);
        i += 1;
    }
    a
};

/// Distance of the 512-bit kernel's software prefetch.
const L1_PREFETCH_AHEAD: usize = 2048;

/// GF2P8AFFINEQB matrix that mirrors the bits of every byte.
const BIT_REVERSE_MATRIX: i64 = 0x8040_2010_0804_0201_u64 as i64;

/// 512-bit kernel body (reflected domain, see [`refl_pair`]).
///
/// # Safety
/// As [`body128`].
#[inline]
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,vpclmulqdq,gfni,avx2,pclmulqdq,sse2,ssse3,sse4.1"
)]
unsafe fn body512<const COPY: bool>(seed: u16, src: *const u8, dst: *mut u8, len: usize) -> u16 {
    if len < 256 {
        // SAFETY: same contract.
        return unsafe { body128::<COPY>(seed, src, dst, len) };
    }
    let mirror = _mm512_set1_epi64(BIT_REVERSE_MATRIX);
    let take = |off: usize| {
        // SAFETY: every call below has off + 64 <= len.
        let v = unsafe { _mm512_loadu_si512(src.add(off).cast()) };
        if COPY {
            // SAFETY: off + 64 <= len inside dst, which the caller made writable.
            unsafe { _mm512_storeu_si512(dst.add(off).cast(), v) };
        }
        _mm512_gf2p8affine_epi64_epi8::<0>(v, mirror)
    };
    let pair = |k: (u64, u64)| _mm_set_epi64x(k.1 as i64, k.0 as i64);
    // Software prefetch into L1 a fixed distance ahead: from L2 the hardware
    // prefetchers alone leave the loop waiting on loads (pibench: 1 MiB CRC
    // from about 85 to about 100 GB/s). A prefetch never faults, so the
    // address may lie past the buffer (wrapping_add: no pointer arithmetic UB).
    let prefetch =
        |off: usize| _mm_prefetch::<_MM_HINT_T0>(src.wrapping_add(off + L1_PREFETCH_AHEAD).cast());
    let mut z = [_mm512_setzero_si512(); 4];
    for (i, zi) in z.iter_mut().enumerate() {
        prefetch(64 * i);
        *zi = take(64 * i);
    }
    // The seed goes into the first 16 message bits: the low bits once mirrored.
    z[0] = _mm512_xor_si512(
        z[0],
        _mm512_set_epi64(0, 0, 0, 0, 0, 0, 0, i64::from(seed.reverse_bits())),
    );
    let k = _mm512_broadcast_i32x4(pair(R2048_LOOP));
    let mut off = 256;
    while off + 256 <= len {
        for (i, zi) in z.iter_mut().enumerate() {
            prefetch(off + 64 * i);
            let a = _mm512_clmulepi64_epi128::<0x00>(*zi, k);
            let b = _mm512_clmulepi64_epi128::<0x11>(*zi, k);
            *zi = _mm512_ternarylogic_epi64::<0x96>(a, b, take(off + 64 * i));
        }
        off += 256;
    }
    let mut acc = _mm512_setzero_si512();
    for (i, zi) in z.iter().enumerate() {
        let c = &R16_REDUCE[4 * i..4 * i + 4];
        let kr = _mm512_set_epi64(
            c[3].1 as i64,
            c[3].0 as i64,
            c[2].1 as i64,
            c[2].0 as i64,
            c[1].1 as i64,
            c[1].0 as i64,
            c[0].1 as i64,
            c[0].0 as i64,
        );
        let a = _mm512_clmulepi64_epi128::<0x00>(*zi, kr);
        let b = _mm512_clmulepi64_epi128::<0x11>(*zi, kr);
        acc = _mm512_ternarylogic_epi64::<0x96>(acc, a, b);
    }
    let half = _mm256_xor_si256(
        _mm512_castsi512_si256(acc),
        _mm512_extracti64x4_epi64::<1>(acc),
    );
    let folded = _mm_xor_si128(
        _mm256_castsi256_si128(half),
        _mm256_extracti128_si256::<1>(half),
    );
    // Back to the normal domain: mirror the bits of each byte, then the bytes.
    let unmirrored = _mm_gf2p8affine_epi64_epi8::<0>(folded, _mm_set1_epi64x(BIT_REVERSE_MATRIX));
    let acc = _mm_shuffle_epi8(unmirrored, bswap128());
    // SAFETY: off <= len and the buffers are the caller's.
    unsafe { finish::<COPY>(acc, src, dst, len, off) }
}

/// 128-bit PCLMULQDQ kernel.
///
/// # Safety
/// The CPU must support PCLMULQDQ, SSSE3 and SSE4.1 ([`has_pclmul`]).
#[inline]
#[target_feature(enable = "pclmulqdq,sse2,ssse3,sse4.1")]
pub(crate) unsafe fn crc_pclmul(seed: u16, data: &[u8]) -> u16 {
    // SAFETY: data is readable for its length; no copy.
    unsafe { body128::<false>(seed, data.as_ptr(), std::ptr::null_mut(), data.len()) }
}

/// 256-bit VPCLMULQDQ kernel.
///
/// # Safety
/// The CPU must support AVX2 and VPCLMULQDQ ([`has_vpclmul256`]).
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq,pclmulqdq,sse2,ssse3,sse4.1")]
pub(crate) unsafe fn crc_vpclmul256(seed: u16, data: &[u8]) -> u16 {
    // SAFETY: data is readable for its length; no copy.
    unsafe { body256::<false>(seed, data.as_ptr(), std::ptr::null_mut(), data.len()) }
}

/// 512-bit VPCLMULQDQ kernel.
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and VPCLMULQDQ ([`has_vpclmul512`]).
#[inline]
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,vpclmulqdq,gfni,avx2,pclmulqdq,sse2,ssse3,sse4.1"
)]
pub(crate) unsafe fn crc_vpclmul512(seed: u16, data: &[u8]) -> u16 {
    // SAFETY: data is readable for its length; no copy.
    unsafe { body512::<false>(seed, data.as_ptr(), std::ptr::null_mut(), data.len()) }
}

/// Fused copy + CRC, 128-bit kernel.
///
/// # Safety
/// As [`crc_pclmul`], and `dst.len() == src.len()`.
#[inline]
#[target_feature(enable = "pclmulqdq,sse2,ssse3,sse4.1")]
pub(crate) unsafe fn crc_copy_pclmul(seed: u16, dst: &mut [u8], src: &[u8]) -> u16 {
    debug_assert_eq!(dst.len(), src.len());
    // SAFETY: src readable, dst writable for src.len() bytes (caller contract); a
    // &mut and a & slice never overlap.
    unsafe { body128::<true>(seed, src.as_ptr(), dst.as_mut_ptr(), src.len()) }
}

/// Fused copy + CRC, 256-bit kernel.
///
/// # Safety
/// As [`crc_vpclmul256`], and `dst.len() == src.len()`.
#[inline]
#[target_feature(enable = "avx2,vpclmulqdq,pclmulqdq,sse2,ssse3,sse4.1")]
pub(crate) unsafe fn crc_copy_vpclmul256(seed: u16, dst: &mut [u8], src: &[u8]) -> u16 {
    debug_assert_eq!(dst.len(), src.len());
    // SAFETY: as crc_copy_pclmul.
    unsafe { body256::<true>(seed, src.as_ptr(), dst.as_mut_ptr(), src.len()) }
}

/// Fused copy + CRC, 512-bit kernel.
///
/// # Safety
/// As [`crc_vpclmul512`], and `dst.len() == src.len()`.
#[inline]
#[target_feature(
    enable = "avx512f,avx512bw,avx512vl,vpclmulqdq,gfni,avx2,pclmulqdq,sse2,ssse3,sse4.1"
)]
pub(crate) unsafe fn crc_copy_vpclmul512(seed: u16, dst: &mut [u8], src: &[u8]) -> u16 {
    debug_assert_eq!(dst.len(), src.len());
    // SAFETY: as crc_copy_pclmul.
    unsafe { body512::<true>(seed, src.as_ptr(), dst.as_mut_ptr(), src.len()) }
}

macro_rules! kernel_type {
    ($(#[$doc:meta])* $name:ident, $crc:ident, $copy:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub(crate) struct $name;

        impl super::Kernel for $name {
            #[inline(always)]
            unsafe fn crc(seed: u16, data: &[u8]) -> u16 {
                // SAFETY: the trait contract requires the kernel's CPU features.
                unsafe { $crc(seed, data) }
            }
            #[inline(always)]
            unsafe fn crc_copy(seed: u16, dst: &mut [u8], src: &[u8]) -> u16 {
                // SAFETY: the trait contract requires the kernel's CPU features and
                // equal lengths.
                unsafe { $copy(seed, dst, src) }
            }
        }
    };
}

kernel_type!(
    /// The 128-bit PCLMULQDQ kernel as a [`super::Kernel`].
    V128,
    crc_pclmul,
    crc_copy_pclmul
);
kernel_type!(
    /// The 256-bit VPCLMULQDQ kernel as a [`super::Kernel`].
    V256,
    crc_vpclmul256,
    crc_copy_vpclmul256
);
kernel_type!(
    /// The 512-bit VPCLMULQDQ kernel as a [`super::Kernel`].
    V512,
    crc_vpclmul512,
    crc_copy_vpclmul512
);

#[cfg(test)]
mod tests {
    use super::super::consts::{clmul_soft, POLY_FULL};
    use super::*;

    /// Polynomial remainder of a 128-bit value modulo P.
    fn mod_p(mut v: u128) -> u64 {
        for bit in (16..128).rev() {
            if v >> bit & 1 != 0 {
                v ^= u128::from(POLY_FULL) << (bit - 16);
            }
        }
        v as u64
    }

    #[test]
    fn x_inverse_is_the_inverse_of_x() {
        assert_eq!(mod_p(clmul_soft(X_INV, 2)), 1);
    }

    #[test]
    fn mirrored_clmul_gains_one_factor_of_x() {
        // clmul(rev64(a), rev64(c)) = rev128(a*c*x), the identity refl_pair relies on.
        let mut a: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..500 {
            a = a.rotate_left(7).wrapping_mul(0xBF58_476D_1CE4_E5B9) ^ 0x94D0_49BB_1331_11EB;
            let c = a >> 48;
            let mirrored = clmul_soft(a.reverse_bits(), c.reverse_bits());
            assert_eq!(mirrored, (clmul_soft(a, c) << 1).reverse_bits());
        }
        // And the reflected pairs move a chunk like the normal ones, modulo P.
        for bits in [0u32, 128, 256, 1024, 2048] {
            let (hi_refl, lo_refl) = refl_pair(bits);
            let (hi, lo) = fold_pair(bits);
            assert_eq!(
                mod_p(clmul_soft(hi_refl.reverse_bits(), 2)),
                hi,
                "bits {bits}"
            );
            assert_eq!(
                mod_p(clmul_soft(lo_refl.reverse_bits(), 2)),
                lo,
                "bits {bits}"
            );
        }
    }
}
