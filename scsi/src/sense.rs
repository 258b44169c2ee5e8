//! Sense data (SPC-4 4.5): sense keys, and the [`Sense`] value built into and parsed
//! from fixed (70h/71h) and descriptor (72h/73h) formats, with the INFORMATION field
//! and the sense-key-specific field pointer.

use std::fmt;

use thiserror::Error;

use crate::asc::{self, AscPair};

/// A sense key (4 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SenseKey(pub u8);

impl SenseKey {
    /// 0h
    pub const NO_SENSE: SenseKey = SenseKey(0x0);
    /// 1h
    pub const RECOVERED_ERROR: SenseKey = SenseKey(0x1);
    /// 2h
    pub const NOT_READY: SenseKey = SenseKey(0x2);
    /// 3h
    pub const MEDIUM_ERROR: SenseKey = SenseKey(0x3);
    /// 4h
    pub const HARDWARE_ERROR: SenseKey = SenseKey(0x4);
    /// 5h
    pub const ILLEGAL_REQUEST: SenseKey = SenseKey(0x5);
    /// 6h
    pub const UNIT_ATTENTION: SenseKey = SenseKey(0x6);
    /// 7h
    pub const DATA_PROTECT: SenseKey = SenseKey(0x7);
    /// 8h
    pub const BLANK_CHECK: SenseKey = SenseKey(0x8);
    /// 9h
    pub const VENDOR_SPECIFIC: SenseKey = SenseKey(0x9);
    /// Ah
    pub const COPY_ABORTED: SenseKey = SenseKey(0xA);
    /// Bh
    pub const ABORTED_COMMAND: SenseKey = SenseKey(0xB);
    /// Dh
    pub const VOLUME_OVERFLOW: SenseKey = SenseKey(0xD);
    /// Eh
    pub const MISCOMPARE: SenseKey = SenseKey(0xE);
    /// Fh
    pub const COMPLETED: SenseKey = SenseKey(0xF);

    /// The key's name in SPC's words.
    pub fn name(self) -> &'static str {
        match self.0 & 0x0F {
            0x0 => "NO SENSE",
            0x1 => "RECOVERED ERROR",
            0x2 => "NOT READY",
            0x3 => "MEDIUM ERROR",
            0x4 => "HARDWARE ERROR",
            0x5 => "ILLEGAL REQUEST",
            0x6 => "UNIT ATTENTION",
            0x7 => "DATA PROTECT",
            0x8 => "BLANK CHECK",
            0x9 => "VENDOR SPECIFIC",
            0xA => "COPY ABORTED",
            0xB => "ABORTED COMMAND",
            0xD => "VOLUME OVERFLOW",
            0xE => "MISCOMPARE",
            0xF => "COMPLETED",
            _ => "RESERVED",
        }
    }
}

impl fmt::Display for SenseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The sense-key-specific field pointer (ILLEGAL REQUEST): which byte, and optionally
/// which bit, of the CDB or parameter list was invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// C/D: true when the field is in the CDB, false when in the parameter list.
    pub in_cdb: bool,
    /// The bit (0..=7) of the byte, when BPV is set: the most significant bit of the field.
    pub bit: Option<u8>,
    /// The byte offset of the (first byte of the) invalid field.
    pub byte: u16,
}

impl FieldPointer {
    /// A pointer into the CDB.
    pub fn cdb(byte: u16, bit: Option<u8>) -> Self {
        FieldPointer {
            in_cdb: true,
            bit,
            byte,
        }
    }

    /// A pointer into the parameter list (data-out buffer).
    pub fn parameter(byte: u16, bit: Option<u8>) -> Self {
        FieldPointer {
            in_cdb: false,
            bit,
            byte,
        }
    }

    /// The three sense-key-specific bytes with SKSV set.
    pub fn to_bytes(self) -> [u8; 3] {
        let mut b0 = 0x80;
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }

    /// Decodes the three sense-key-specific bytes; `None` when SKSV is clear.
    pub fn from_bytes(b: [u8; 3]) -> Option<Self> {
        if b[0] & 0x80 == 0 {
            return None;
        }
        Some(FieldPointer {
            in_cdb: b[0] & 0x40 != 0,
            bit: (b[0] & 0x08 != 0).then_some(b[0] & 0x07),
            byte: u16::from_be_bytes([b[1], b[2]]),
        })
    }
}

/// Which sense data format to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SenseFormat {
    /// Response code 70h/71h.
    Fixed,
    /// Response code 72h/73h.
    Descriptor,
}

/// Why sense bytes could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SenseError {
    /// Fewer bytes than the format's header needs.
    #[error("sense data too short: {len} bytes, need at least {need}")]
    TooShort {
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The response code is not 70h..73h.
    #[error("unsupported sense response code {0:02X}h")]
    ResponseCode(u8),
    /// A descriptor runs past the end of the sense data.
    #[error("sense descriptor at byte {offset} runs past the end")]
    Descriptor {
        /// Byte offset of the descriptor header.
        offset: usize,
    },
}

/// Decoded sense data, independent of format.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sense {
    /// Sense key.
    pub key: SenseKey,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (for PI errors: the LBA of the first failing block; for
    /// MISCOMPARE: the byte offset of the first difference).
    pub information: Option<u64>,
    /// COMMAND-SPECIFIC INFORMATION field.
    pub command_specific: Option<u64>,
    /// Sense-key-specific field pointer (ILLEGAL REQUEST).
    pub field_pointer: Option<FieldPointer>,
    /// Deferred error (71h/73h) rather than current (70h/72h).
    pub deferred: bool,
}

/// Length of the fixed-format sense data this crate builds.
pub const FIXED_LEN: usize = 18;

impl Sense {
    /// Current sense with the given key and ASC/ASCQ and no other fields.
    pub fn new(key: SenseKey, (asc, ascq): AscPair) -> Self {
        Sense {
            key,
            asc,
            ascq,
            information: None,
            command_specific: None,
            field_pointer: None,
            deferred: false,
        }
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h) pointing at `byte`/`bit` of the CDB.
    pub fn invalid_field_in_cdb(byte: u16, bit: Option<u8>) -> Self {
        Sense::new(SenseKey::ILLEGAL_REQUEST, asc::INVALID_FIELD_IN_CDB)
            .with_field_pointer(FieldPointer::cdb(byte, bit))
    }

    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (26h/00h) pointing at a parameter byte.
    pub fn invalid_field_in_parameter_list(byte: u16, bit: Option<u8>) -> Self {
        Sense::new(
            SenseKey::ILLEGAL_REQUEST,
            asc::INVALID_FIELD_IN_PARAMETER_LIST,
        )
        .with_field_pointer(FieldPointer::parameter(byte, bit))
    }

    /// Sets the INFORMATION field.
    pub fn with_information(mut self, information: u64) -> Self {
        self.information = Some(information);
        self
    }

    /// Sets the sense-key-specific field pointer.
    pub fn with_field_pointer(mut self, fp: FieldPointer) -> Self {
        self.field_pointer = Some(fp);
        self
    }

    /// The ASC/ASCQ pair.
    pub fn asc_pair(&self) -> AscPair {
        (self.asc, self.ascq)
    }

    /// Builds the sense data in the requested format.
    pub fn to_bytes(&self, format: SenseFormat) -> Vec<u8> {
        match format {
            SenseFormat::Fixed => self.to_fixed().to_vec(),
            SenseFormat::Descriptor => self.to_descriptor(),
        }
    }

    /// Fixed format (70h, or 71h when deferred), 18 bytes. INFORMATION and
    /// COMMAND-SPECIFIC INFORMATION are 4 bytes here: a value above `u32::MAX` cannot be
    /// represented, so VALID is left clear (use [`Sense::to_descriptor`] for such LBAs).
    pub fn to_fixed(&self) -> [u8; FIXED_LEN] {
        let mut b = [0u8; FIXED_LEN];
        b[0] = if self.deferred { 0x71 } else { 0x70 };
        b[2] = self.key.0 & 0x0F;
        if let Some(info) = self.information.and_then(|i| u32::try_from(i).ok()) {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[7] = (FIXED_LEN - 8) as u8;
        if let Some(csi) = self.command_specific.and_then(|i| u32::try_from(i).ok()) {
            b[8..12].copy_from_slice(&csi.to_be_bytes());
        }
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(fp) = self.field_pointer {
            b[15..18].copy_from_slice(&fp.to_bytes());
        }
        b
    }

    /// Descriptor format (72h, or 73h when deferred) with an information descriptor
    /// (`00 0A 80 00` + 8 bytes), a command-specific information descriptor and a
    /// sense-key-specific descriptor as present.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[0] = if self.deferred { 0x73 } else { 0x72 };
        b[1] = self.key.0 & 0x0F;
        b[2] = self.asc;
        b[3] = self.ascq;
        if let Some(info) = self.information {
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(csi) = self.command_specific {
            b.extend_from_slice(&[0x01, 0x0A, 0x00, 0x00]);
            b.extend_from_slice(&csi.to_be_bytes());
        }
        if let Some(fp) = self.field_pointer {
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&fp.to_bytes());
            b.push(0x00);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }

    /// Parses fixed or descriptor sense data. The additional sense length is honoured
    /// but clipped to the bytes given; unknown descriptors are skipped.
    pub fn parse(b: &[u8]) -> Result<Sense, SenseError> {
        let code = *b.first().ok_or(SenseError::TooShort { len: 0, need: 1 })? & 0x7F;
        match code {
            0x70 | 0x71 => Self::parse_fixed(b, code == 0x71),
            0x72 | 0x73 => Self::parse_descriptor(b, code == 0x73),
            other => Err(SenseError::ResponseCode(other)),
        }
    }

    fn parse_fixed(b: &[u8], deferred: bool) -> Result<Sense, SenseError> {
        if b.len() < 8 {
            return Err(SenseError::TooShort {
                len: b.len(),
                need: 8,
            });
        }
        let end = (8 + b[7] as usize).min(b.len());
        let b = &b[..end];
        let byte = |i: usize| b.get(i).copied().unwrap_or(0);
        let be32 = |i: usize| u32::from_be_bytes([byte(i), byte(i + 1), byte(i + 2), byte(i + 3)]);
        let information = (b[0] & 0x80 != 0).then(|| u64::from(be32(3)));
        let csi = be32(8);
        let field_pointer = if b.len() >= 18 && b[2] & 0x0F == SenseKey::ILLEGAL_REQUEST.0 {
            FieldPointer::from_bytes([b[15], b[16], b[17]])
        } else {
            None
        };
        Ok(Sense {
            key: SenseKey(b[2] & 0x0F),
            asc: byte(12),
            ascq: byte(13),
            information,
            command_specific: (csi != 0).then_some(u64::from(csi)),
            field_pointer,
            deferred,
        })
    }

    fn parse_descriptor(b: &[u8], deferred: bool) -> Result<Sense, SenseError> {
        if b.len() < 8 {
            return Err(SenseError::TooShort {
                len: b.len(),
                need: 8,
            });
        }
        let end = (8 + b[7] as usize).min(b.len());
        let mut s = Sense::new(SenseKey(b[1] & 0x0F), (b[2], b[3]));
        s.deferred = deferred;
        let mut off = 8;
        while off + 2 <= end {
            let kind = b[off];
            let len = b[off + 1] as usize;
            let d = b.get(off..off + 2 + len).filter(|_| off + 2 + len <= end);
            let d = d.ok_or(SenseError::Descriptor { offset: off })?;
            match kind {
                0x00 | 0x01 if len >= 0x0A => {
                    let v = u64::from_be_bytes([d[4], d[5], d[6], d[7], d[8], d[9], d[10], d[11]]);
                    if kind == 0x00 {
                        if d[2] & 0x80 != 0 {
                            s.information = Some(v);
                        }
                    } else {
                        s.command_specific = Some(v);
                    }
                }
                0x02 if len >= 0x06 && s.key == SenseKey::ILLEGAL_REQUEST => {
                    s.field_pointer = FieldPointer::from_bytes([d[4], d[5], d[6]]);
                }
                _ => {}
            }
            off += 2 + len;
        }
        Ok(s)
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, ", self.key)?;
        match asc::name(self.asc, self.ascq) {
            Some(n) => write!(f, "{n} ({:02X}h/{:02X}h)", self.asc, self.ascq)?,
            None => write!(f, "ASC/ASCQ {:02X}h/{:02X}h", self.asc, self.ascq)?,
        }
        if let Some(i) = self.information {
            write!(f, ", INFORMATION=0x{i:X}")?;
        }
        if let Some(c) = self.command_specific {
            write!(f, ", COMMAND-SPECIFIC=0x{c:X}")?;
        }
        if let Some(fp) = self.field_pointer {
            let place = if fp.in_cdb { "CDB" } else { "PARAMETER" };
            write!(f, ", FIELD POINTER={place} byte {}", fp.byte)?;
            if let Some(bit) = fp.bit {
                write!(f, " bit {bit}")?;
            }
        }
        if self.deferred {
            f.write_str(" (deferred)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn fixed_guard_failure_with_information() {
        let s = Sense::new(
            SenseKey::ABORTED_COMMAND,
            asc::LOGICAL_BLOCK_GUARD_CHECK_FAILED,
        )
        .with_information(0x1234);
        assert_eq!(
            s.to_fixed().to_vec(),
            hex("F0 00 0B 00 00 12 34 0A 00 00 00 00 10 01 00 00 00 00")
        );
        assert_eq!(
            s.to_string(),
            "ABORTED COMMAND, LOGICAL BLOCK GUARD CHECK FAILED (10h/01h), INFORMATION=0x1234"
        );
        assert_eq!(Sense::parse(&s.to_fixed()).unwrap(), s);
    }

    #[test]
    fn descriptor_ref_tag_failure() {
        let s = Sense::new(
            SenseKey::ABORTED_COMMAND,
            asc::LOGICAL_BLOCK_REFERENCE_TAG_CHECK_FAILED,
        )
        .with_information(0x1_0000_0005);
        assert_eq!(
            s.to_descriptor(),
            hex("72 0B 10 03 00 00 00 0C 00 0A 80 00 00 00 00 01 00 00 00 05")
        );
        assert_eq!(Sense::parse(&s.to_descriptor()).unwrap(), s);
        // Does not fit in fixed format: VALID stays clear.
        assert_eq!(s.to_fixed()[0], 0x70);
    }

    #[test]
    fn invalid_field_pointer_fixed_and_descriptor() {
        let s = Sense::invalid_field_in_cdb(1, Some(7));
        assert_eq!(
            s.to_fixed().to_vec(),
            hex("70 00 05 00 00 00 00 0A 00 00 00 00 24 00 00 CF 00 01")
        );
        assert_eq!(
            s.to_descriptor(),
            hex("72 05 24 00 00 00 00 08 02 06 00 00 CF 00 01 00")
        );
        assert_eq!(
            s.to_string(),
            "ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h), FIELD POINTER=CDB byte 1 bit 7"
        );
        let p = Sense::invalid_field_in_parameter_list(300, None);
        assert_eq!(&p.to_fixed()[15..18], &[0x80, 0x01, 0x2C]);
        assert_eq!(Sense::parse(&p.to_fixed()).unwrap(), p);
    }

    #[test]
    fn parse_rejects_garbage() {
        assert_eq!(
            Sense::parse(&[]),
            Err(SenseError::TooShort { len: 0, need: 1 })
        );
        assert_eq!(
            Sense::parse(&[0x7F, 0, 0]),
            Err(SenseError::ResponseCode(0x7F))
        );
        assert!(matches!(
            Sense::parse(&[0x70, 0, 5]),
            Err(SenseError::TooShort { .. })
        ));
        // Descriptor claims 10 bytes but only 2 follow.
        let bad = hex("72 05 24 00 00 00 00 04 00 0A 80 00");
        assert_eq!(
            Sense::parse(&bad),
            Err(SenseError::Descriptor { offset: 8 })
        );
    }

    #[test]
    fn parse_short_fixed_sense() {
        // Some targets send fixed sense with additional length 6 (ends at ASCQ).
        let s = Sense::parse(&hex("70 00 06 00 00 00 00 06 00 00 00 00 29 00")).unwrap();
        assert_eq!(s.key, SenseKey::UNIT_ATTENTION);
        assert_eq!(s.asc_pair(), asc::POWER_ON_RESET);
    }

    fn arb_sense(descriptor: bool) -> impl Strategy<Value = Sense> {
        let info_max = if descriptor {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        };
        (
            0u8..16,
            any::<u8>(),
            any::<u8>(),
            proptest::option::of(0..=info_max),
            proptest::option::of(1..=info_max),
            proptest::option::of((any::<bool>(), proptest::option::of(0u8..8), any::<u16>())),
            any::<bool>(),
        )
            .prop_map(|(key, asc, ascq, information, csi, fp, deferred)| Sense {
                key: SenseKey(key),
                asc,
                ascq,
                information,
                command_specific: csi,
                field_pointer: if key == 5 {
                    fp.map(|(in_cdb, bit, byte)| FieldPointer { in_cdb, bit, byte })
                } else {
                    None
                },
                deferred,
            })
    }

    proptest! {
        #[test]
        fn fixed_round_trip(s in arb_sense(false)) {
            prop_assert_eq!(Sense::parse(&s.to_fixed()).unwrap(), s);
        }

        #[test]
        fn descriptor_round_trip(s in arb_sense(true)) {
            prop_assert_eq!(Sense::parse(&s.to_descriptor()).unwrap(), s);
        }

        #[test]
        fn parse_never_panics(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Sense::parse(&b);
        }
    }
}
