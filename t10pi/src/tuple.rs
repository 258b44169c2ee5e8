//! The 8-byte T10 PI tuple (guard, application tag, reference tag), big-endian.

/// Size of one PI tuple in bytes.
pub const TUPLE_SIZE: usize = 8;

/// One protection-information tuple as carried after each protection interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Tuple {
    /// Guard: CRC-16/T10-DIF or IP checksum of the interval.
    pub guard: u16,
    /// Application tag.
    pub app_tag: u16,
    /// Reference tag.
    pub ref_tag: u32,
}

impl Tuple {
    /// The tuple of freshly formatted PI: every byte 0xFF (escaped).
    pub const FORMATTED: Tuple = Tuple {
        guard: 0xFFFF,
        app_tag: 0xFFFF,
        ref_tag: 0xFFFF_FFFF,
    };

    /// Big-endian wire form: guard (2), app tag (2), ref tag (4).
    #[inline]
    pub fn to_bytes(&self) -> [u8; TUPLE_SIZE] {
        let g = self.guard.to_be_bytes();
        let a = self.app_tag.to_be_bytes();
        let r = self.ref_tag.to_be_bytes();
        [g[0], g[1], a[0], a[1], r[0], r[1], r[2], r[3]]
    }

    /// Parses the big-endian wire form.
    #[inline]
    pub fn from_bytes(b: &[u8; TUPLE_SIZE]) -> Tuple {
        Tuple {
            guard: u16::from_be_bytes([b[0], b[1]]),
            app_tag: u16::from_be_bytes([b[2], b[3]]),
            ref_tag: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// Parses the first 8 bytes of `b`; `None` when `b` is shorter.
    #[inline]
    pub fn from_slice(b: &[u8]) -> Option<Tuple> {
        let head: &[u8; TUPLE_SIZE] = b.get(..TUPLE_SIZE)?.try_into().ok()?;
        Some(Tuple::from_bytes(head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_endian_layout() {
        let t = Tuple {
            guard: 0x1234,
            app_tag: 0x5678,
            ref_tag: 0x9ABC_DEF0,
        };
        let b = t.to_bytes();
        assert_eq!(b, [0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE, 0xF0]);
        assert_eq!(Tuple::from_bytes(&b), t);
        assert_eq!(Tuple::from_slice(&b[..7]), None);
        assert_eq!(Tuple::FORMATTED.to_bytes(), [0xFF; 8]);
    }
}
