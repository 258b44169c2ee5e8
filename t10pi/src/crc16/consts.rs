//! Constants of CRC-16/T10-DIF computed at compile time by `const fn`: the
//! slice-by-16 tables, the folding multipliers `x^n mod P` and the Barrett
//! quotient `floor(x^64 / P)`.
//!
//! How the folding constants are used (non-reflected CRC, polynomials over
//! GF(2), bit i of an integer = coefficient of x^i): the message is split into
//! 128-bit chunks, each loaded big-endian so that the first byte is the most
//! significant. A chunk `A = A_hi*x^64 + A_lo` that lies `D` bits before the
//! chunk `B` it is folded into becomes `A*x^D + B ≡ A_hi*(x^(D+64) mod P) +
//! A_lo*(x^D mod P) + B (mod P)`, i.e. two 64x64 carry-less multiplies by
//! [`xpow_mod`] constants; the product has degree < 80, so it fits the lane.
//! At the end the remaining 128-bit value `R` is congruent to the message,
//! and CRC = `R*x^16 mod P`, obtained by two more folds (`x^80`, `x^64`) down
//! to a 64-bit value and a Barrett reduction with [`BARRETT_MU`]:
//! `q = floor(floor(V/x^16) * mu / x^48)`, `crc = V + q*P` (exact over GF(2)
//! for deg V < 64; see [`barrett_reduce`]). The seed is XORed into the top 16
//! bits of the first chunk, which is what a CRC's initial value does.

/// The generator polynomial without its x^16 term.
pub const POLY: u16 = 0x8BB7;
/// The generator polynomial with its x^16 term, `P(x)`.
pub const POLY_FULL: u64 = 0x1_8BB7;

/// `x^n mod P` as a 16-bit polynomial.
pub const fn xpow_mod(n: u32) -> u64 {
    let mut r: u32 = 1;
    let mut i = 0;
    while i < n {
        r <<= 1;
        if r & 0x1_0000 != 0 {
            r ^= POLY_FULL as u32;
        }
        i += 1;
    }
    r as u64
}

/// `floor(x^n / P)` for 16 <= n <= 79 (polynomial long division).
pub(crate) const fn xpow_div(n: u32) -> u64 {
    let mut rem: u128 = 1u128 << n;
    let mut q: u64 = 0;
    let mut i = n - 16 + 1;
    while i > 0 {
        let shift = i - 1;
        if rem & (1u128 << (shift + 16)) != 0 {
            q |= 1u64 << shift;
            rem ^= (POLY_FULL as u128) << shift;
        }
        i -= 1;
    }
    q
}

/// Barrett quotient `mu = floor(x^64 / P)` (degree 48).
pub const BARRETT_MU: u64 = xpow_div(64);

/// Carry-less 64x64 -> 128 multiply in plain Rust (reference for the SIMD code).
pub const fn clmul_soft(a: u64, b: u64) -> u128 {
    let mut r: u128 = 0;
    let mut i = 0;
    while i < 64 {
        if (b >> i) & 1 != 0 {
            r ^= (a as u128) << i;
        }
        i += 1;
    }
    r
}

/// Reduces a 128-bit value `R` congruent to the message to `R*x^16 mod P`,
/// the CRC, using a caller-supplied carry-less multiply.
#[inline(always)]
pub fn barrett_reduce(r: u128, clmul: impl Fn(u64, u64) -> u128) -> u16 {
    let hi = (r >> 64) as u64;
    let lo = r as u64;
    // R*x^16 = hi*x^80 + lo*x^16 ≡ hi*(x^80 mod P) + lo*x^16: degree < 80.
    let t = clmul(hi, K80) ^ ((lo as u128) << 16);
    // Fold the top 16 bits once more: t_hi*x^64 ≡ t_hi*(x^64 mod P): degree < 64.
    let v = (clmul((t >> 64) as u64, K64) as u64) ^ (t as u64);
    // Barrett: q = floor(floor(v / x^16) * mu / x^48), remainder = v + q*P.
    let q = (clmul(v >> 16, BARRETT_MU) >> 48) as u64;
    (v ^ clmul(q, POLY_FULL) as u64) as u16
}

/// `x^64 mod P`.
pub const K64: u64 = xpow_mod(64);
/// `x^80 mod P`.
pub const K80: u64 = xpow_mod(80);

/// The pair of multipliers that moves a 128-bit chunk `bits` bits forward:
/// `(x^(bits+64) mod P, x^bits mod P)` for the high and low 64-bit halves.
pub(crate) const fn fold_pair(bits: u32) -> (u64, u64) {
    (xpow_mod(bits + 64), xpow_mod(bits))
}

/// Slice-by-16 tables: `TABLES[k][v] = v(x) * x^(16 + 8k) mod P`.
pub static TABLES: [[u16; 256]; 16] = make_tables();

const fn make_tables() -> [[u16; 256]; 16] {
    let mut t = [[0u16; 256]; 16];
    let mut v = 0;
    while v < 256 {
        let mut crc = (v as u16) << 8;
        let mut b = 0;
        while b < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ POLY
            } else {
                crc << 1
            };
            b += 1;
        }
        t[0][v] = crc;
        v += 1;
    }
    let mut k = 1;
    while k < 16 {
        let mut v = 0;
        while v < 256 {
            let prev = t[k - 1][v];
            t[k][v] = (prev << 8) ^ t[0][(prev >> 8) as usize];
            v += 1;
        }
        k += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time CRC straight from the definition.
    fn bitwise(data: &[u8]) -> u16 {
        let mut crc: u16 = 0;
        for &b in data {
            crc ^= u16::from(b) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ POLY
                } else {
                    crc << 1
                };
            }
        }
        crc
    }

    #[test]
    fn xpow_mod_matches_crc_of_a_one_bit_message() {
        // CRC of [0x01, 0 x k] = x^(8k) * x^16 mod P.
        for k in 0..600u32 {
            let mut msg = vec![0u8; k as usize + 1];
            msg[0] = 1;
            assert_eq!(xpow_mod(8 * k + 16), u64::from(bitwise(&msg)), "k {k}");
        }
        assert_eq!(xpow_mod(0), 1);
        assert_eq!(xpow_mod(16), u64::from(POLY));
    }

    #[test]
    fn barrett_mu_is_the_quotient() {
        // x^64 = mu*P + (x^64 mod P).
        assert_eq!(
            clmul_soft(BARRETT_MU, POLY_FULL) ^ u128::from(K64),
            1u128 << 64
        );
        assert_eq!(BARRETT_MU >> 48, 1, "degree 48");
    }

    #[test]
    fn barrett_reduce_matches_bitwise_on_128_bit_values() {
        let mut x: u128 = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210;
        for _ in 0..2000 {
            x = x.wrapping_mul(0x2545_F491_4F6C_DD1D_9E37_79B9_7F4A_7C15) ^ (x >> 61);
            let bytes = x.to_be_bytes();
            assert_eq!(barrett_reduce(x, clmul_soft), bitwise(&bytes));
        }
    }

    #[test]
    fn fold_pair_moves_a_chunk() {
        // Folding chunk A over one chunk B equals the CRC of A||B.
        let a: u128 = 0xDEAD_BEEF_0011_2233_4455_6677_8899_AABB;
        let b: u128 = 0x0F1E_2D3C_4B5A_6978_8796_A5B4_C3D2_E1F0;
        let (khi, klo) = fold_pair(128);
        let folded = clmul_soft((a >> 64) as u64, khi) ^ clmul_soft(a as u64, klo) ^ b;
        let mut msg = a.to_be_bytes().to_vec();
        msg.extend_from_slice(&b.to_be_bytes());
        assert_eq!(barrett_reduce(folded, clmul_soft), bitwise(&msg));
    }

    #[test]
    fn tables_match_bitwise() {
        for v in 0..=255u8 {
            let mut msg = [0u8; 16];
            msg[0] = v;
            for (k, table) in TABLES.iter().enumerate() {
                assert_eq!(table[usize::from(v)], bitwise(&msg[..k + 1]));
            }
        }
    }
}
