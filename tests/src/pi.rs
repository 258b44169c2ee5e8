//! Host-side T10 PI for the tests: DIX tuples (8 bytes per block, big-endian guard,
//! application tag, reference tag) as a host in pass mode writes them, and checks of
//! tuples read back or found in a LUN's `.pi` sidecar.

use t10pi::{crc16_t10dif, TUPLE_SIZE};

/// T10 protection type of a LUN under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiType {
    /// Reference tag = low 32 bits of the LBA, checked.
    Type1,
    /// Reference tag = the expected initial reference tag of the 32-byte CDB (the
    /// initiator uses the LBA), incremented per block; checked.
    Type2,
    /// Reference tag not defined (not checked).
    Type3,
}

impl PiType {
    /// The configuration's `protection.type`.
    pub fn number(self) -> u8 {
        match self {
            PiType::Type1 => 1,
            PiType::Type2 => 2,
            PiType::Type3 => 3,
        }
    }
}

/// One decoded tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    /// CRC-16/T10-DIF of the block.
    pub guard: u16,
    /// Application tag.
    pub app: u16,
    /// Reference tag.
    pub reference: u32,
}

impl Tuple {
    /// Decodes 8 big-endian bytes.
    pub fn parse(b: &[u8; TUPLE_SIZE]) -> Self {
        Tuple {
            guard: u16::from_be_bytes([b[0], b[1]]),
            app: u16::from_be_bytes([b[2], b[3]]),
            reference: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// The 8 bytes.
    pub fn to_bytes(self) -> [u8; TUPLE_SIZE] {
        let mut b = [0u8; TUPLE_SIZE];
        b[..2].copy_from_slice(&self.guard.to_be_bytes());
        b[2..4].copy_from_slice(&self.app.to_be_bytes());
        b[4..].copy_from_slice(&self.reference.to_be_bytes());
        b
    }
}

/// The tuple a host generates for `block` at `lba`: CRC guard, `app`, and the LBA as
/// reference tag for Types 1 and 2 (Type 3 has none: the host writes `0x5A5A5A5A + index`,
/// which nobody checks, so the test sees that it travels unchanged).
pub fn tuple_for(ty: PiType, block: &[u8], lba: u64, index: u32, app: u16) -> Tuple {
    Tuple {
        guard: crc16_t10dif(0, block),
        app,
        reference: match ty {
            PiType::Type1 | PiType::Type2 => lba as u32,
            PiType::Type3 => 0x5A5A_5A5A_u32.wrapping_add(index),
        },
    }
}

/// DIX PI for `data` (whole blocks of `interval` bytes) starting at `first_lba`.
pub fn dix(ty: PiType, data: &[u8], interval: usize, first_lba: u64, app: u16) -> Vec<u8> {
    data.chunks(interval)
        .enumerate()
        .flat_map(|(i, b)| tuple_for(ty, b, first_lba + i as u64, i as u32, app).to_bytes())
        .collect()
}

/// The tuples of a DIX buffer.
pub fn tuples(pi: &[u8]) -> Vec<Tuple> {
    pi.chunks_exact(TUPLE_SIZE)
        .map(|c| {
            let mut b = [0u8; TUPLE_SIZE];
            b.copy_from_slice(c);
            Tuple::parse(&b)
        })
        .collect()
}
