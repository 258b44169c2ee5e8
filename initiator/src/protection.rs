//! Per-command protection (DESIGN section 5): the policy and the LUN's capabilities
//! select the protection operation and the CDB's RDPROTECT/WRPROTECT field, and over
//! iSCSI/TCP the `t10pi` engine does in software what a signature MR does over iSER.
//! A failed check on data the initiator handles becomes CHECK CONDITION, ILLEGAL
//! REQUEST, 10h/01h-03h in descriptor format with INFORMATION = the failing LBA.

use conf::protection::{HostGuard, ProtectionMode, ProtectionPolicy};
use scsi::{asc, Form, Sense, SenseKey};
use t10pi::{DifType, GuardType, PiBuf, PiBufMut, PiError, PiErrorKind, T10DifDomain, TUPLE_SIZE};

use crate::lun::LunInfo;

/// Data direction of a block command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Data-In (READ).
    Read,
    /// Data-Out (WRITE).
    Write,
}

/// The protection operation of one command, in Linux iSER's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtOp {
    /// No PI anywhere on this path.
    None,
    /// Host data without PI; the initiator generates PI for the wire.
    WriteInsert,
    /// Wire DIF verified and removed; the host gets data only.
    ReadStrip,
    /// Host DIX PI verified and carried on the wire.
    WritePass,
    /// Wire DIF verified and delivered to the host as DIX PI.
    ReadPass,
    /// Host DIX PI verified and dropped; the LUN has no PI.
    WriteStrip,
    /// Wire data without PI; the initiator generates PI for the host.
    ReadInsert,
}

impl ProtOp {
    /// The operation for a mode and a direction (the table of DESIGN section 5).
    pub fn select(mode: ProtectionMode, dir: Direction) -> ProtOp {
        match (mode, dir) {
            (ProtectionMode::Off, _) => ProtOp::None,
            (ProtectionMode::Insert, Direction::Write) => ProtOp::WriteInsert,
            (ProtectionMode::Insert, Direction::Read) => ProtOp::ReadStrip,
            (ProtectionMode::Pass, Direction::Write) => ProtOp::WritePass,
            (ProtectionMode::Pass, Direction::Read) => ProtOp::ReadPass,
            (ProtectionMode::Strip, Direction::Write) => ProtOp::WriteStrip,
            (ProtectionMode::Strip, Direction::Read) => ProtOp::ReadInsert,
        }
    }

    /// True when the wire carries interleaved PI (8 bytes after each block).
    pub fn pi_on_wire(self) -> bool {
        matches!(
            self,
            ProtOp::WriteInsert | ProtOp::ReadStrip | ProtOp::WritePass | ProtOp::ReadPass
        )
    }

    /// True when the host supplies or receives a separate (DIX) PI buffer.
    pub fn pi_in_memory(self) -> bool {
        matches!(
            self,
            ProtOp::WritePass | ProtOp::ReadPass | ProtOp::WriteStrip | ProtOp::ReadInsert
        )
    }
}

/// Everything one READ or WRITE needs to know about protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandProtection {
    /// The operation.
    pub op: ProtOp,
    /// RDPROTECT/WRPROTECT for the CDB.
    pub protect: u8,
    /// CDB form: 32-byte for Type 2 with PI on the wire, else 10 or 16 by LBA range.
    pub form: Form,
    /// The per-byte check mask applied to PI the initiator verifies.
    pub check_mask: u8,
    /// Logical block size (protection interval).
    pub block_size: u32,
    /// The LUN's protection type, when formatted with PI.
    pub pi_type: Option<u8>,
    /// Application tag generated (insert) and expected (when checked).
    pub app_tag: u16,
    /// Guard type of the host's DIX PI (pass, strip).
    pub host_guard: GuardType,
}

impl CommandProtection {
    /// Decide protection for a command of `dir` covering `lba .. lba + blocks` on `lun`
    /// under `policy` (already checked against the LUN at login).
    pub fn select(
        policy: &ProtectionPolicy,
        lun: &LunInfo,
        dir: Direction,
        lba: u64,
        blocks: u32,
    ) -> Self {
        let op = ProtOp::select(policy.mode, dir);
        let protect = policy.protect_field();
        let end = lba.saturating_add(u64::from(blocks));
        let form = if op.pi_on_wire() && lun.pi_type == Some(2) {
            Form::ThirtyTwo
        } else if end > u64::from(u32::MAX) || blocks > u32::from(u16::MAX) {
            Form::Sixteen
        } else {
            Form::Ten
        };
        let checks = policy.check_set();
        CommandProtection {
            op,
            protect,
            form,
            check_mask: checks.check_mask(),
            block_size: lun.block_size,
            pi_type: lun.pi_type,
            app_tag: policy.app_tag,
            host_guard: match policy.host_guard {
                HostGuard::Crc => GuardType::Crc,
                HostGuard::Csum => GuardType::Csum,
            },
        }
    }

    /// Bytes per block on the wire.
    pub fn wire_block(&self) -> u32 {
        if self.op.pi_on_wire() {
            self.block_size + TUPLE_SIZE as u32
        } else {
            self.block_size
        }
    }

    fn dif_type(&self) -> DifType {
        match self.pi_type {
            Some(2) => DifType::Type2,
            Some(3) => DifType::Type3,
            _ => DifType::Type1,
        }
    }

    /// The domain for `lba` with guard `bg`: Type 1/2 ref tag = low 32 bits of the LBA
    /// (the 32-byte CDB carries the same value as expected initial ref tag), Type 3 a
    /// fixed 0xFFFFFFFF-free value of 0; app tag from the policy, compared in full when
    /// the app check is asked for.
    pub fn domain(&self, bg: GuardType, lba: u64) -> T10DifDomain {
        let ref_tag = match self.dif_type() {
            DifType::Type3 => 0,
            _ => lba as u32,
        };
        let mask = if self.check_mask & t10pi::check_mask::APPTAG != 0 {
            0xFFFF
        } else {
            0
        };
        T10DifDomain::new(self.dif_type(), bg, self.block_size, ref_tag)
            .with_app_tag(self.app_tag, mask)
    }

    /// The wire buffer of a write: `data` (N blocks) and, for pass/strip, the host's
    /// DIX `pi` (N x 8). Host PI that fails its check becomes the returned sense.
    pub fn build_write(
        &self,
        lba: u64,
        data: &[u8],
        pi: Option<&[u8]>,
    ) -> Result<Result<Vec<u8>, Sense>, crate::Error> {
        let bs = self.block_size as usize;
        if bs == 0 || !data.len().is_multiple_of(bs) {
            return Err(crate::Error::Invalid(format!(
                "write of {} bytes is not a whole number of {bs}-byte blocks",
                data.len()
            )));
        }
        let blocks = (data.len() / bs) as u64;
        let wire_dom = self.domain(GuardType::Crc, lba);
        let host_dom = self.domain(self.host_guard, lba);
        let need_pi = || -> Result<&[u8], crate::Error> {
            let pi = pi.ok_or_else(|| {
                crate::Error::Invalid("protection mode needs the host's PI buffer".into())
            })?;
            if pi.len() as u64 != blocks * TUPLE_SIZE as u64 {
                return Err(crate::Error::Invalid(format!(
                    "PI buffer has {} bytes, {} blocks need {}",
                    pi.len(),
                    blocks,
                    blocks * 8
                )));
            }
            Ok(pi)
        };
        match self.op {
            ProtOp::None => Ok(Ok(data.to_vec())),
            ProtOp::WriteInsert => {
                let mut wire = vec![0u8; blocks as usize * (bs + TUPLE_SIZE)];
                t10pi::insert(&wire_dom, data, &mut wire, 0)?;
                Ok(Ok(wire))
            }
            ProtOp::WritePass => {
                let pi = need_pi()?;
                let mut wire = vec![0u8; blocks as usize * (bs + TUPLE_SIZE)];
                match t10pi::pass(
                    &host_dom,
                    self.check_mask,
                    PiBuf::Dix { data, pi },
                    &wire_dom,
                    PiBufMut::Dif(&mut wire),
                    0,
                ) {
                    Ok(()) => Ok(Ok(wire)),
                    Err(t10pi::Error::Pi(e)) => Ok(Err(pi_sense(&e, lba, self.block_size))),
                    Err(t10pi::Error::Layout(e)) => Err(e.into()),
                }
            }
            ProtOp::WriteStrip => {
                let pi = need_pi()?;
                match t10pi::verify(&host_dom, self.check_mask, data, pi, 0) {
                    Ok(()) => Ok(Ok(data.to_vec())),
                    Err(t10pi::Error::Pi(e)) => Ok(Err(pi_sense(&e, lba, self.block_size))),
                    Err(t10pi::Error::Layout(e)) => Err(e.into()),
                }
            }
            ProtOp::ReadStrip | ProtOp::ReadPass | ProtOp::ReadInsert => Err(
                crate::Error::Invalid("build_write called for a read".into()),
            ),
        }
    }

    /// Turn the wire bytes of a read into host data (and DIX PI for pass/insert).
    /// A failed check becomes the returned sense (the data is not delivered).
    pub fn finish_read(
        &self,
        lba: u64,
        wire: &[u8],
    ) -> Result<Result<HostData, Sense>, crate::Error> {
        let bs = self.block_size as usize;
        let wb = self.wire_block() as usize;
        if bs == 0 || !wire.len().is_multiple_of(wb) {
            return Err(crate::Error::Protocol(format!(
                "read returned {} bytes, not a whole number of {wb}-byte blocks",
                wire.len()
            )));
        }
        let blocks = wire.len() / wb;
        let wire_dom = self.domain(GuardType::Crc, lba);
        let host_dom = self.domain(self.host_guard, lba);
        let fail = |e: t10pi::Error| -> Result<Result<HostData, Sense>, crate::Error> {
            match e {
                t10pi::Error::Pi(e) => Ok(Err(pi_sense(&e, lba, self.block_size))),
                t10pi::Error::Layout(e) => Err(e.into()),
            }
        };
        match self.op {
            ProtOp::None => Ok(Ok(HostData {
                data: wire.to_vec(),
                pi: None,
            })),
            ProtOp::ReadStrip => {
                let mut data = vec![0u8; blocks * bs];
                match t10pi::strip(&wire_dom, self.check_mask, wire, &mut data, 0) {
                    Ok(()) => Ok(Ok(HostData { data, pi: None })),
                    Err(e) => fail(e),
                }
            }
            ProtOp::ReadPass => {
                let mut data = vec![0u8; blocks * bs];
                let mut pi = vec![0u8; blocks * TUPLE_SIZE];
                let dst = PiBufMut::Dix {
                    data: &mut data,
                    pi: &mut pi,
                };
                match t10pi::pass(
                    &wire_dom,
                    self.check_mask,
                    PiBuf::Dif(wire),
                    &host_dom,
                    dst,
                    0,
                ) {
                    Ok(()) => Ok(Ok(HostData { data, pi: Some(pi) })),
                    Err(e) => fail(e),
                }
            }
            ProtOp::ReadInsert => {
                let mut pi = vec![0u8; blocks * TUPLE_SIZE];
                t10pi::generate(&host_dom, wire, &mut pi, 0)?;
                Ok(Ok(HostData {
                    data: wire.to_vec(),
                    pi: Some(pi),
                }))
            }
            ProtOp::WriteInsert | ProtOp::WritePass | ProtOp::WriteStrip => Err(
                crate::Error::Invalid("finish_read called for a write".into()),
            ),
        }
    }

    /// Generate host DIX PI for `data` (what a PI-aware host would supply), used when a
    /// pass/strip LUN is exported to a consumer that has no PI of its own (NBD).
    pub fn host_pi(&self, lba: u64, data: &[u8]) -> Result<Vec<u8>, crate::Error> {
        let blocks = data.len() / self.block_size.max(1) as usize;
        let mut pi = vec![0u8; blocks * TUPLE_SIZE];
        t10pi::generate(&self.domain(self.host_guard, lba), data, &mut pi, 0)?;
        Ok(pi)
    }
}

/// What a read delivers to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostData {
    /// Data, N x block size.
    pub data: Vec<u8>,
    /// DIX PI, N x 8 (pass and insert-on-read only).
    pub pi: Option<Vec<u8>>,
}

/// The sense data for a PI check that failed at the initiator: ILLEGAL REQUEST, ASC 10h
/// with ASCQ 01h (guard), 02h (application tag) or 03h (reference tag), INFORMATION =
/// `first_lba + wire_offset / (block_size + 8)`.
pub fn pi_sense(err: &PiError, first_lba: u64, block_size: u32) -> Sense {
    let pair = match err.kind {
        PiErrorKind::Guard => asc::LOGICAL_BLOCK_GUARD_CHECK_FAILED,
        PiErrorKind::AppTag => asc::LOGICAL_BLOCK_APPLICATION_TAG_CHECK_FAILED,
        PiErrorKind::RefTag => asc::LOGICAL_BLOCK_REFERENCE_TAG_CHECK_FAILED,
    };
    let lba = first_lba + err.wire_offset / (u64::from(block_size) + TUPLE_SIZE as u64);
    Sense::new(SenseKey::ILLEGAL_REQUEST, pair).with_information(lba)
}

#[cfg(test)]
mod tests {
    use super::*;
    use conf::protection::PiCheck;

    fn lun(pi_type: Option<u8>) -> LunInfo {
        LunInfo {
            lun: 0,
            block_size: 512,
            blocks: 1 << 20,
            pi_type,
            protect: pi_type.is_some(),
            vendor: String::new(),
            product: String::new(),
        }
    }

    fn policy(mode: ProtectionMode) -> ProtectionPolicy {
        ProtectionPolicy {
            mode,
            ..ProtectionPolicy::default()
        }
    }

    #[test]
    fn selection_table_matches_design_section_5() {
        use Direction::*;
        use ProtectionMode::*;
        let table = [
            (Off, Read, ProtOp::None, 0, 512),
            (Off, Write, ProtOp::None, 0, 512),
            (Insert, Write, ProtOp::WriteInsert, 1, 520),
            (Insert, Read, ProtOp::ReadStrip, 1, 520),
            (Pass, Write, ProtOp::WritePass, 1, 520),
            (Pass, Read, ProtOp::ReadPass, 1, 520),
            (Strip, Write, ProtOp::WriteStrip, 0, 512),
            (Strip, Read, ProtOp::ReadInsert, 0, 512),
        ];
        for (mode, dir, op, protect, wire_block) in table {
            let l = if mode == Strip || mode == Off {
                lun(None)
            } else {
                lun(Some(1))
            };
            let p = CommandProtection::select(&policy(mode), &l, dir, 0, 8);
            assert_eq!(
                (p.op, p.protect, p.wire_block()),
                (op, protect, wire_block),
                "{mode:?} {dir:?}"
            );
            assert_eq!(p.form, Form::Ten);
            assert_eq!(p.op.pi_in_memory(), mode.pi_in_memory());
        }
    }

    #[test]
    fn form_follows_type_and_range() {
        let p = CommandProtection::select(
            &policy(ProtectionMode::Insert),
            &lun(Some(2)),
            Direction::Read,
            0,
            8,
        );
        assert_eq!(p.form, Form::ThirtyTwo);
        let p = CommandProtection::select(
            &policy(ProtectionMode::Insert),
            &lun(Some(1)),
            Direction::Read,
            u64::from(u32::MAX),
            8,
        );
        assert_eq!(p.form, Form::Sixteen);
        let mut checks_none = policy(ProtectionMode::Insert);
        checks_none.checks = vec![];
        assert_eq!(
            CommandProtection::select(&checks_none, &lun(Some(1)), Direction::Read, 0, 1).protect,
            0b011
        );
        let mut guard_only = policy(ProtectionMode::Pass);
        guard_only.checks = vec![PiCheck::Guard];
        assert_eq!(
            CommandProtection::select(&guard_only, &lun(Some(1)), Direction::Read, 0, 1).protect,
            0b100
        );
    }

    #[test]
    fn insert_then_strip_round_trips_with_ref_tag_lba() {
        let p = CommandProtection::select(
            &policy(ProtectionMode::Insert),
            &lun(Some(1)),
            Direction::Write,
            1000,
            4,
        );
        let data: Vec<u8> = (0..4 * 512).map(|i| (i % 251) as u8).collect();
        let wire = p.build_write(1000, &data, None).unwrap().unwrap();
        assert_eq!(wire.len(), 4 * 520);
        let t = t10pi::testing::dif_tuple(&wire, 512, 2).unwrap();
        assert_eq!(t.ref_tag, 1002);
        let r = CommandProtection {
            op: ProtOp::ReadStrip,
            ..p
        };
        assert_eq!(r.finish_read(1000, &wire).unwrap().unwrap().data, data);
    }

    #[test]
    fn corrupt_wire_data_becomes_descriptor_sense_with_failing_lba() {
        let p = CommandProtection::select(
            &policy(ProtectionMode::Insert),
            &lun(Some(1)),
            Direction::Write,
            5000,
            4,
        );
        let data = vec![7u8; 4 * 512];
        let mut wire = p.build_write(5000, &data, None).unwrap().unwrap();
        t10pi::testing::flip_dif_data_bit(&mut wire, 512, 2, 17).unwrap();
        let r = CommandProtection {
            op: ProtOp::ReadStrip,
            ..p
        };
        let sense = r.finish_read(5000, &wire).unwrap().unwrap_err();
        assert_eq!(sense.key, SenseKey::ILLEGAL_REQUEST);
        assert_eq!((sense.asc, sense.ascq), (0x10, 0x01));
        assert_eq!(sense.information, Some(5002));
        let bytes = sense.to_descriptor();
        assert_eq!(bytes[0], 0x72);
        assert_eq!(&bytes[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(u64::from_be_bytes(bytes[12..20].try_into().unwrap()), 5002);
        // A ref tag error in block 3 names LBA 5003 with ASCQ 03h.
        let mut wire = p.build_write(5000, &data, None).unwrap().unwrap();
        let mut t = t10pi::testing::dif_tuple(&wire, 512, 3).unwrap();
        t.ref_tag ^= 1;
        t10pi::testing::set_dif_tuple(&mut wire, 512, 3, &t).unwrap();
        let sense = r.finish_read(5000, &wire).unwrap().unwrap_err();
        assert_eq!(
            (sense.asc, sense.ascq, sense.information),
            (0x10, 0x03, Some(5003))
        );
    }

    #[test]
    fn pass_carries_host_pi_and_checks_it() {
        let mut pol = policy(ProtectionMode::Pass);
        pol.host_guard = HostGuard::Csum;
        pol.app_tag = 0x1234;
        pol.checks = vec![PiCheck::Guard, PiCheck::Ref, PiCheck::App];
        let p = CommandProtection::select(&pol, &lun(Some(1)), Direction::Write, 64, 2);
        let data = vec![0x5Au8; 1024];
        let pi = p.host_pi(64, &data).unwrap();
        let wire = p.build_write(64, &data, Some(&pi)).unwrap().unwrap();
        // CSUM in memory became CRC on the wire.
        let t = t10pi::testing::dif_tuple(&wire, 512, 0).unwrap();
        assert_eq!(t.guard, t10pi::crc16_t10dif(0, &data[..512]));
        assert_eq!((t.app_tag, t.ref_tag), (0x1234, 64));
        let r = CommandProtection {
            op: ProtOp::ReadPass,
            ..p
        };
        let back = r.finish_read(64, &wire).unwrap().unwrap();
        assert_eq!(back.data, data);
        assert_eq!(back.pi.unwrap(), pi);
        // Bad app tag from the host is refused before anything is sent.
        let mut bad = pi.clone();
        bad[8 + 2] ^= 0xFF;
        let sense = p.build_write(64, &data, Some(&bad)).unwrap().unwrap_err();
        assert_eq!(
            (sense.asc, sense.ascq, sense.information),
            (0x10, 0x02, Some(65))
        );
    }

    #[test]
    fn strip_verifies_host_pi_on_write_and_generates_on_read() {
        let p = CommandProtection::select(
            &policy(ProtectionMode::Strip),
            &lun(None),
            Direction::Write,
            10,
            2,
        );
        let data = vec![1u8; 1024];
        let pi = p.host_pi(10, &data).unwrap();
        assert_eq!(p.build_write(10, &data, Some(&pi)).unwrap().unwrap(), data);
        let mut bad = pi.clone();
        bad[0] ^= 1;
        let sense = p.build_write(10, &data, Some(&bad)).unwrap().unwrap_err();
        assert_eq!(
            (sense.asc, sense.ascq, sense.information),
            (0x10, 0x01, Some(10))
        );
        let r = CommandProtection {
            op: ProtOp::ReadInsert,
            ..p
        };
        let back = r.finish_read(10, &data).unwrap().unwrap();
        assert_eq!(back.pi.unwrap(), pi);
        assert!(
            p.build_write(10, &data, None).is_err(),
            "strip without host PI is a caller error"
        );
    }

    #[test]
    fn unwritten_blocks_with_all_ones_pi_are_escaped() {
        let p = CommandProtection::select(
            &policy(ProtectionMode::Insert),
            &lun(Some(1)),
            Direction::Read,
            0,
            2,
        );
        let mut wire = vec![0u8; 2 * 520];
        for b in 0..2 {
            wire[b * 520 + 512..b * 520 + 520].fill(0xFF);
        }
        assert_eq!(
            p.finish_read(0, &wire).unwrap().unwrap().data,
            vec![0u8; 1024]
        );
    }
}
