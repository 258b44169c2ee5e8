//! Logical units as the initiator sees them: the 8-byte LUN field (SAM peripheral and
//! flat addressing), and the capabilities read at login from standard INQUIRY,
//! READ CAPACITY(16) and REPORT LUNS.

use std::fmt;

/// The iSCSI LUN field for LUN `id`: peripheral device addressing below 256, flat
/// space addressing (01b) up to 16383.
pub fn encode_lun(id: u16) -> u64 {
    if id < 256 {
        u64::from(id) << 48
    } else {
        (0x4000 | u64::from(id & 0x3FFF)) << 48
    }
}

/// The LUN number of an 8-byte LUN field (peripheral or flat addressing), if it uses
/// either.
pub fn decode_lun(field: u64) -> Option<u16> {
    let first = (field >> 48) as u16;
    match first >> 14 {
        0b00 if first >> 8 == 0 => Some(first & 0xFF),
        0b01 => Some(first & 0x3FFF),
        _ => None,
    }
}

/// What the initiator learned of one LUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunInfo {
    /// LUN number.
    pub lun: u16,
    /// Logical block length in bytes.
    pub block_size: u32,
    /// Number of logical blocks.
    pub blocks: u64,
    /// Protection type 1..=3 when READ CAPACITY(16) reports PROT_EN.
    pub pi_type: Option<u8>,
    /// Standard INQUIRY PROTECT bit.
    pub protect: bool,
    /// T10 vendor identification.
    pub vendor: String,
    /// Product identification.
    pub product: String,
}

impl LunInfo {
    /// Capacity in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.block_size))
    }

    /// The capability summary `conf` checks policies against.
    pub fn caps(&self) -> conf::protection::LunCaps {
        conf::protection::LunCaps {
            pi_type: self.pi_type,
        }
    }
}

impl fmt::Display for LunInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} blocks of {} bytes, ", self.blocks, self.block_size)?;
        match self.pi_type {
            Some(t) => write!(
                f,
                "protection Type {t} (PROT_EN=1, INQUIRY PROTECT={})",
                u8::from(self.protect)
            ),
            None => write!(
                f,
                "no protection information (PROT_EN=0, INQUIRY PROTECT={})",
                u8::from(self.protect)
            ),
        }
    }
}

/// Fields of standard INQUIRY data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inquiry {
    /// PERIPHERAL DEVICE TYPE (0 = block device).
    pub device_type: u8,
    /// PERIPHERAL QUALIFIER (0 = connected).
    pub qualifier: u8,
    /// PROTECT bit (byte 5 bit 0).
    pub protect: bool,
    /// Vendor (bytes 8-15, trimmed).
    pub vendor: String,
    /// Product (bytes 16-31, trimmed).
    pub product: String,
}

/// Parse standard INQUIRY data (at least 36 bytes for the names; 6 for the flags).
pub fn parse_inquiry(b: &[u8]) -> Option<Inquiry> {
    if b.len() < 6 {
        return None;
    }
    let text = |r: std::ops::Range<usize>| {
        b.get(r)
            .map(|s| String::from_utf8_lossy(s).trim().to_owned())
            .unwrap_or_default()
    };
    Some(Inquiry {
        device_type: b[0] & 0x1F,
        qualifier: b[0] >> 5,
        protect: b[5] & 0x01 != 0,
        vendor: text(8..16),
        product: text(16..32),
    })
}

/// READ CAPACITY(16) parameter data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity16 {
    /// Number of blocks (RETURNED LOGICAL BLOCK ADDRESS + 1).
    pub blocks: u64,
    /// LOGICAL BLOCK LENGTH IN BYTES.
    pub block_size: u32,
    /// Protection type 1..=3 when PROT_EN is set.
    pub pi_type: Option<u8>,
    /// P_I_EXPONENT.
    pub p_i_exponent: u8,
}

/// Parse READ CAPACITY(16) data (at least 14 bytes).
pub fn parse_capacity16(b: &[u8]) -> Option<Capacity16> {
    if b.len() < 14 {
        return None;
    }
    let last = u64::from_be_bytes(b[0..8].try_into().ok()?);
    let block_size = u32::from_be_bytes(b[8..12].try_into().ok()?);
    let prot_en = b[12] & 0x01 != 0;
    let p_type = (b[12] >> 1) & 0x07;
    Some(Capacity16 {
        blocks: last.checked_add(1)?,
        block_size,
        pi_type: prot_en.then_some(p_type + 1),
        p_i_exponent: b[13] >> 4,
    })
}

/// READ CAPACITY(10) data: (blocks, block size).
pub fn parse_capacity10(b: &[u8]) -> Option<(u64, u32)> {
    if b.len() < 8 {
        return None;
    }
    let last = u32::from_be_bytes(b[0..4].try_into().ok()?);
    Some((
        u64::from(last) + 1,
        u32::from_be_bytes(b[4..8].try_into().ok()?),
    ))
}

/// LUN numbers in REPORT LUNS parameter data (entries with other addressing skipped).
pub fn parse_report_luns(b: &[u8]) -> Vec<u16> {
    let Some(len) = b
        .get(0..4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_be_bytes)
    else {
        return Vec::new();
    };
    let end = (8 + len as usize).min(b.len());
    b.get(8..end)
        .unwrap_or_default()
        .chunks_exact(8)
        .filter_map(|e| e.try_into().ok().map(u64::from_be_bytes))
        .filter_map(decode_lun)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_addressing_round_trips() {
        assert_eq!(encode_lun(0), 0);
        assert_eq!(encode_lun(5), 0x0005_0000_0000_0000);
        assert_eq!(encode_lun(300), 0x412C_0000_0000_0000);
        for id in [0, 1, 255, 256, 16383] {
            assert_eq!(decode_lun(encode_lun(id)), Some(id));
        }
        assert_eq!(decode_lun(0xC000_0000_0000_0000), None);
    }

    #[test]
    fn capacity16_reports_protection_type() {
        let mut b = [0u8; 32];
        b[0..8].copy_from_slice(&1023u64.to_be_bytes());
        b[8..12].copy_from_slice(&512u32.to_be_bytes());
        assert_eq!(parse_capacity16(&b).unwrap().pi_type, None);
        b[12] = (1 << 1) | 1; // Type 2
        b[13] = 0x30;
        let c = parse_capacity16(&b).unwrap();
        assert_eq!(
            (c.blocks, c.block_size, c.pi_type, c.p_i_exponent),
            (1024, 512, Some(2), 3)
        );
        assert!(parse_capacity16(&b[..10]).is_none());
    }

    #[test]
    fn inquiry_and_report_luns() {
        let mut inq = vec![0u8; 36];
        inq[5] = 1;
        inq[8..16].copy_from_slice(b"IET     ");
        inq[16..32].copy_from_slice(b"VIRTUAL-DISK    ");
        let i = parse_inquiry(&inq).unwrap();
        assert!(i.protect);
        assert_eq!(
            (i.vendor.as_str(), i.product.as_str()),
            ("IET", "VIRTUAL-DISK")
        );
        let mut rl = vec![0, 0, 0, 16, 0, 0, 0, 0];
        rl.extend_from_slice(&encode_lun(0).to_be_bytes());
        rl.extend_from_slice(&encode_lun(1).to_be_bytes());
        rl.extend_from_slice(&encode_lun(2).to_be_bytes()); // beyond the list length
        assert_eq!(parse_report_luns(&rl), vec![0, 1]);
        assert!(parse_report_luns(&[0, 0]).is_empty());
    }
}
