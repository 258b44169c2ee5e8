//! Portable CRC-16/T10-DIF: slice-by-16 table lookups, byte-at-a-time tail.

use super::consts::TABLES;

/// Advances `crc` over one byte.
#[inline(always)]
fn byte(crc: u16, b: u8) -> u16 {
    (crc << 8) ^ TABLES[0][usize::from((crc >> 8) as u8 ^ b)]
}

/// Advances `crc` over 16 bytes.
#[inline(always)]
fn sixteen(crc: u16, c: &[u8; 16]) -> u16 {
    let [h, l] = crc.to_be_bytes();
    let t = &TABLES;
    t[15][usize::from(c[0] ^ h)]
        ^ t[14][usize::from(c[1] ^ l)]
        ^ t[13][usize::from(c[2])]
        ^ t[12][usize::from(c[3])]
        ^ t[11][usize::from(c[4])]
        ^ t[10][usize::from(c[5])]
        ^ t[9][usize::from(c[6])]
        ^ t[8][usize::from(c[7])]
        ^ t[7][usize::from(c[8])]
        ^ t[6][usize::from(c[9])]
        ^ t[5][usize::from(c[10])]
        ^ t[4][usize::from(c[11])]
        ^ t[3][usize::from(c[12])]
        ^ t[2][usize::from(c[13])]
        ^ t[1][usize::from(c[14])]
        ^ t[0][usize::from(c[15])]
}

/// CRC-16/T10-DIF of `data` continuing from `seed` (0 for a fresh CRC).
pub fn crc(seed: u16, data: &[u8]) -> u16 {
    let mut crc = seed;
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        let c: &[u8; 16] = c.try_into().unwrap_or(&[0; 16]);
        crc = sixteen(crc, c);
    }
    for &b in chunks.remainder() {
        crc = byte(crc, b);
    }
    crc
}

/// Copies `src` into `dst[..src.len()]` and returns the CRC of `src`, in one pass.
/// `dst` must be at least as long as `src` (checked by the callers).
pub fn crc_copy(seed: u16, dst: &mut [u8], src: &[u8]) -> u16 {
    let mut crc = seed;
    let dst = &mut dst[..src.len()];
    let mut s = src.chunks_exact(16);
    let mut d = dst.chunks_exact_mut(16);
    for (c, o) in (&mut s).zip(&mut d) {
        let c: &[u8; 16] = c.try_into().unwrap_or(&[0; 16]);
        o.copy_from_slice(c);
        crc = sixteen(crc, c);
    }
    for (&b, o) in s.remainder().iter().zip(d.into_remainder()) {
        *o = b;
        crc = byte(crc, b);
    }
    crc
}
