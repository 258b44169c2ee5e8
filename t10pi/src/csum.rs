//! IP-checksum guard: the 16-bit ones'-complement checksum that T10 PI allows
//! as a cheaper memory-domain guard (the Linux kernel's `ip_compute_csum`).
//!
//! Definition: read the data as big-endian 16-bit words (an odd trailing byte is
//! the high byte of a last word whose low byte is zero), add them with
//! end-around carry (ones'-complement addition) starting from the partial sum
//! `seed`, and complement the result. The guard field holds that value
//! big-endian. With seed 0 this is exactly `ip_compute_csum(data, len)` as stored
//! by the kernel's T10 IP-checksum profile; all-zero data gives 0xFFFF.

/// Ones'-complement fold of a wide sum to 16 bits (end-around carry).
#[inline]
fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s as u16
}

/// Ones'-complement sum of `data` as big-endian 16-bit words, not complemented.
#[inline]
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    // Sum little-endian words (the ones'-complement sum commutes with a byte
    // swap of every word, RFC 1071 section 2(B)), then swap once at the end.
    let mut chunks = data.chunks_exact(32);
    let mut acc = [0u64; 4];
    for c in &mut chunks {
        for (k, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes([
                c[8 * k],
                c[8 * k + 1],
                c[8 * k + 2],
                c[8 * k + 3],
                c[8 * k + 4],
                c[8 * k + 5],
                c[8 * k + 6],
                c[8 * k + 7],
            ]);
            *a += (w & 0xFFFF_FFFF) + (w >> 32);
        }
    }
    // Each accumulator grows by < 2^33 per 32 bytes: no overflow below 2^61 bytes.
    let mut sum: u64 = acc.iter().map(|&a| u64::from(fold(a))).sum();
    let mut words = chunks.remainder().chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_le_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last);
    }
    fold(sum).swap_bytes()
}

/// IP-checksum guard with an initial partial sum `seed` (0 for the kernel's
/// `ip_compute_csum`): `!(seed +' sum of big-endian words)`.
#[inline]
pub fn ip_checksum_seeded(seed: u16, data: &[u8]) -> u16 {
    !fold(u64::from(seed) + u64::from(ones_complement_sum(data)))
}

/// IP-checksum guard of `data` (seed 0), equal to Linux `ip_compute_csum`.
#[inline]
pub fn ip_checksum(data: &[u8]) -> u16 {
    ip_checksum_seeded(0, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Word-at-a-time reference straight from the definition.
    fn reference(seed: u16, data: &[u8]) -> u16 {
        let mut s: u32 = u32::from(seed);
        for w in data.chunks(2) {
            let v = u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]);
            s += u32::from(v);
            s = (s & 0xFFFF) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: words 0001 f203 f4f5 f6f7 sum to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(ones_complement_sum(&d), 0xddf2);
        assert_eq!(ip_checksum(&d), !0xddf2);
    }

    #[test]
    fn fixed_values() {
        assert_eq!(ip_checksum(&[]), 0xFFFF);
        assert_eq!(ip_checksum(&[0u8; 512]), 0xFFFF);
        assert_eq!(ip_checksum(&[0xFFu8; 512]), 0x0000);
        assert_eq!(ip_checksum(&[0x12]), !0x1200);
        assert_eq!(ip_checksum(&[0x12, 0x34, 0x56]), !(0x1234 + 0x5600));
    }

    #[test]
    fn matches_reference_on_all_lengths_and_seeds() {
        let data: Vec<u8> = (0..600u32)
            .map(|i| (i.wrapping_mul(167) >> 1) as u8)
            .collect();
        for len in 0..data.len() {
            for seed in [0u16, 1, 0x8000, 0xFFFE, 0xFFFF] {
                assert_eq!(
                    ip_checksum_seeded(seed, &data[..len]),
                    reference(seed, &data[..len]),
                    "len {len} seed {seed:#x}"
                );
            }
        }
    }
}
