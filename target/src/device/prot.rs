//! The protection decision per command: [`check_prot`] turns the CDB's PROTECT field,
//! the direction, the LUN's PI type, the fabric's capability and the CDB length into
//! INSERT / STRIP / PASS plus the checks (one pure function, as LIO's `sbc_check_prot`),
//! and [`ProtPlan`] adds the T10-PI domains the transport applies.
//!
//! Rules (DESIGN.md section 5):
//! - LUN formatted with PI and PROTECT != 0: PASS (wire DIF <-> stored PI).
//! - PROTECT == 0 on a PI LUN: INSERT on write (the target generates PI with the LUN's
//!   application tag), STRIP on read.
//! - PROTECT != 0 on a LUN without PI, values 6/7, PROTECT != 0 with Type 2 on a
//!   10/12/16-byte CDB, or PROTECT != 0 over a fabric that cannot carry PI:
//!   ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h) pointing at the PROTECT field.
//! - 32-byte CDBs exist only for Type 2: elsewhere INVALID COMMAND OPERATION CODE.
//! - Checks per WRPROTECT: 0 and 3 none, 1 and 5 guard + ref, 2 ref, 4 guard; per
//!   RDPROTECT (and VRPROTECT): 0, 1, 5 guard + ref, 2 ref, 3 none, 4 guard. The ref
//!   tag is checked for Type 1, and for Type 2 only on 32-byte CDBs (whose expected
//!   initial reference tag defines it); never for Type 3.

use scsi::ExpectedTags;
use t10pi::{check_mask, DifType, GuardType, T10DifDomain, TUPLE_SIZE};

use super::reason::SenseReason;

/// Which way the blocks move relative to the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtDir {
    /// Data-out to the medium (WRITE, WRITE AND VERIFY, WRITE SAME, COMPARE AND WRITE).
    Write,
    /// From the medium (READ, VERIFY: checks as RDPROTECT).
    Read,
}

/// What happens to PI between the wire and the stored (memory) form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtOp {
    /// No PI anywhere (LUN without PI).
    None,
    /// Write: the wire has no PI; the target generates it for the medium.
    Insert,
    /// Read: the medium's PI is checked and removed; the wire has none.
    Strip,
    /// PI on the wire and on the medium: checked and kept.
    Pass,
}

/// The table part of the decision: operation and checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProtDecision {
    /// INSERT / STRIP / PASS / none.
    pub op: ProtOp,
    /// Checks to apply ([`t10pi::check_mask`] bits).
    pub check_mask: u8,
}

/// Decides the protection operation and checks for one command.
///
/// `protect` is RDPROTECT/WRPROTECT/VRPROTECT as in the CDB, `lun_pi` the LUN's
/// protection type (`None`: formatted without PI), `fabric_pi_capable` whether the
/// transport can carry PI on the wire, `cdb_len` the CDB's length. Errors point at
/// the PROTECT field (byte 1, or byte 10 of a 32-byte CDB, bit 7).
pub fn check_prot(
    protect: u8,
    dir: ProtDir,
    lun_pi: Option<DifType>,
    fabric_pi_capable: bool,
    cdb_len: usize,
) -> Result<ProtDecision, SenseReason> {
    let field = SenseReason::cdb(if cdb_len == 32 { 10 } else { 1 }, Some(7));
    if cdb_len == 32 && lun_pi != Some(DifType::Type2) {
        return Err(SenseReason::InvalidOpcode);
    }
    if protect > 5 {
        return Err(field);
    }
    let Some(pi) = lun_pi else {
        return if protect == 0 {
            Ok(ProtDecision {
                op: ProtOp::None,
                check_mask: 0,
            })
        } else {
            Err(field)
        };
    };
    if protect != 0 && (!fabric_pi_capable || (pi == DifType::Type2 && cdb_len != 32)) {
        return Err(field);
    }
    let reft = match pi {
        DifType::Type1 => check_mask::REFTAG,
        DifType::Type2 if cdb_len == 32 => check_mask::REFTAG,
        _ => 0,
    };
    let guard_ref = check_mask::GUARD | reft;
    let mask = match (dir, protect) {
        (ProtDir::Write, 0 | 3) => 0,
        (ProtDir::Write, 1 | 5) => guard_ref,
        (ProtDir::Write, 2) => reft,
        (ProtDir::Write, _) => check_mask::GUARD,
        (ProtDir::Read, 0 | 1 | 5) => guard_ref,
        (ProtDir::Read, 2) => reft,
        (ProtDir::Read, 3) => 0,
        (ProtDir::Read, _) => check_mask::GUARD,
    };
    let op = match (dir, protect) {
        (_, p) if p != 0 => ProtOp::Pass,
        (ProtDir::Write, _) => ProtOp::Insert,
        (ProtDir::Read, _) => ProtOp::Strip,
    };
    Ok(ProtDecision {
        op,
        check_mask: mask,
    })
}

/// Everything a transport needs to move one command's blocks: the operation, whether
/// the wire carries 8 bytes of PI per block, the checks, and the two T10-PI domains.
///
/// The memory domain describes the stored PI as the device server hands it over in
/// DIX form (CRC guard; ref tag = LBA for Type 1, the CDB's expected initial
/// reference tag for Type 2 32-byte CDBs, 0xFFFFFFFF for Type 3; the LUN's app tag,
/// or the 32-byte CDB's expected app tag and mask). The wire domain is the same
/// T10 format, so PASS keeps tuples unchanged. Checks are made in the domain of the
/// source side: the wire domain on writes, the memory domain on reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProtPlan {
    /// Direction of the blocks.
    pub dir: ProtDir,
    /// The PI operation.
    pub op: ProtOp,
    /// The wire stream interleaves an 8-byte tuple after every block.
    pub wire_has_pi: bool,
    /// Checks to apply ([`t10pi::check_mask`] bits).
    pub check_mask: u8,
    /// Domain of the stored PI (DIX memory), when the LUN has PI.
    pub mem: Option<T10DifDomain>,
    /// Domain of the wire PI, when the wire carries PI.
    pub wire: Option<T10DifDomain>,
    /// LBA of the first block.
    pub first_lba: u64,
    /// Blocks per instance.
    pub blocks: u32,
    /// Number of back-to-back instances of the block range on the wire (2 for
    /// COMPARE AND WRITE: verify data then write data, each starting at `first_lba`).
    pub instances: u32,
    /// Logical block size (the protection interval).
    pub block_size: u32,
}

impl ProtPlan {
    /// A plan without PI for `blocks` blocks at `lba`.
    pub fn none(dir: ProtDir, block_size: u32, first_lba: u64, blocks: u32) -> Self {
        ProtPlan {
            dir,
            op: ProtOp::None,
            wire_has_pi: false,
            check_mask: 0,
            mem: None,
            wire: None,
            first_lba,
            blocks,
            instances: 1,
            block_size,
        }
    }

    /// Builds the plan from a decision and the command's geometry and tags.
    /// `lun_pi` must be the type passed to [`check_prot`]; `tags` are the 32-byte
    /// CDB's expected tags; `lun_app_tag` is used when the target generates PI.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        dir: ProtDir,
        d: ProtDecision,
        lun_pi: Option<DifType>,
        block_size: u32,
        first_lba: u64,
        blocks: u32,
        tags: Option<ExpectedTags>,
        lun_app_tag: u16,
    ) -> Self {
        let mut plan = ProtPlan::none(dir, block_size, first_lba, blocks);
        let Some(pi) = lun_pi else {
            return plan;
        };
        let mut mask = d.check_mask;
        let dom = match pi {
            DifType::Type1 => T10DifDomain::type1(GuardType::Crc, block_size, first_lba as u32),
            DifType::Type2 => {
                let r = tags.map_or(first_lba as u32, |t| t.ref_tag);
                T10DifDomain::type2(GuardType::Crc, block_size, r)
            }
            DifType::Type3 => T10DifDomain::type3(GuardType::Crc, block_size, 0xFFFF_FFFF),
        };
        let dom = match tags {
            Some(t) if d.op != ProtOp::Insert => {
                if t.app_tag_mask != 0 && mask != 0 {
                    mask |= check_mask::APPTAG;
                }
                dom.with_app_tag(t.app_tag, t.app_tag_mask)
            }
            _ => dom.with_app_tag(lun_app_tag, 0xFFFF),
        };
        plan.op = d.op;
        plan.check_mask = mask;
        plan.mem = Some(dom);
        plan.wire_has_pi = d.op == ProtOp::Pass;
        plan.wire = plan.wire_has_pi.then_some(dom);
        plan
    }

    /// Bytes per block on the wire.
    pub fn wire_stride(&self) -> usize {
        self.block_size as usize + if self.wire_has_pi { TUPLE_SIZE } else { 0 }
    }

    /// Total bytes of the blocks on the wire (all instances).
    pub fn wire_len(&self) -> usize {
        self.wire_stride() * self.blocks as usize * self.instances as usize
    }

    /// Bytes of data in memory (all instances).
    pub fn data_len(&self) -> usize {
        self.block_size as usize * self.blocks as usize * self.instances as usize
    }

    /// Bytes of PI in memory (all instances), 0 when the LUN has no PI.
    pub fn pi_len(&self) -> usize {
        if self.mem.is_some() {
            TUPLE_SIZE * self.blocks as usize * self.instances as usize
        } else {
            0
        }
    }

    /// The LBA of block `index` of the transfer (counting across instances).
    pub fn lba_of(&self, index: u64) -> u64 {
        let per = u64::from(self.blocks.max(1));
        self.first_lba + index % per
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use check_mask::{GUARD as G, REFTAG as R};
    use DifType::*;
    use ProtDir::*;
    use ProtOp as Op;

    fn ok(op: ProtOp, check_mask: u8) -> Result<ProtDecision, SenseReason> {
        Ok(ProtDecision { op, check_mask })
    }

    #[test]
    fn decision_table() {
        let bad1 = Err(SenseReason::cdb(1, Some(7)));
        let bad10 = Err(SenseReason::cdb(10, Some(7)));
        #[rustfmt::skip]
        type Row = (u8, ProtDir, Option<DifType>, bool, usize, Result<ProtDecision, SenseReason>);
        let table: &[Row] = &[
            // LUN without PI
            (0, Write, None, true, 10, ok(Op::None, 0)),
            (0, Read, None, true, 16, ok(Op::None, 0)),
            (1, Write, None, true, 10, bad1),
            (3, Read, None, true, 16, bad1),
            (0, Read, None, true, 32, Err(SenseReason::InvalidOpcode)),
            // Type 1, WRPROTECT
            (0, Write, Some(Type1), true, 10, ok(Op::Insert, 0)),
            (1, Write, Some(Type1), true, 10, ok(Op::Pass, G | R)),
            (2, Write, Some(Type1), true, 16, ok(Op::Pass, R)),
            (3, Write, Some(Type1), true, 12, ok(Op::Pass, 0)),
            (4, Write, Some(Type1), true, 16, ok(Op::Pass, G)),
            (5, Write, Some(Type1), true, 16, ok(Op::Pass, G | R)),
            (6, Write, Some(Type1), true, 16, bad1),
            (7, Write, Some(Type1), true, 10, bad1),
            // Type 1, RDPROTECT
            (0, Read, Some(Type1), true, 10, ok(Op::Strip, G | R)),
            (1, Read, Some(Type1), true, 10, ok(Op::Pass, G | R)),
            (2, Read, Some(Type1), true, 10, ok(Op::Pass, R)),
            (3, Read, Some(Type1), true, 10, ok(Op::Pass, 0)),
            (4, Read, Some(Type1), true, 10, ok(Op::Pass, G)),
            (5, Read, Some(Type1), true, 10, ok(Op::Pass, G | R)),
            (6, Read, Some(Type1), true, 10, bad1),
            // Type 3: never the ref tag
            (0, Write, Some(Type3), true, 16, ok(Op::Insert, 0)),
            (1, Write, Some(Type3), true, 16, ok(Op::Pass, G)),
            (2, Write, Some(Type3), true, 16, ok(Op::Pass, 0)),
            (4, Write, Some(Type3), true, 16, ok(Op::Pass, G)),
            (0, Read, Some(Type3), true, 16, ok(Op::Strip, G)),
            (1, Read, Some(Type3), true, 16, ok(Op::Pass, G)),
            (2, Read, Some(Type3), true, 16, ok(Op::Pass, 0)),
            (3, Read, Some(Type3), true, 16, ok(Op::Pass, 0)),
            (5, Read, Some(Type3), true, 16, ok(Op::Pass, G)),
            (
                1,
                Read,
                Some(Type3),
                true,
                32,
                Err(SenseReason::InvalidOpcode),
            ),
            // Type 2: PROTECT only on 32-byte CDBs
            (1, Write, Some(Type2), true, 10, bad1),
            (1, Read, Some(Type2), true, 16, bad1),
            (0, Read, Some(Type2), true, 16, ok(Op::Strip, G)),
            (0, Write, Some(Type2), true, 10, ok(Op::Insert, 0)),
            (1, Write, Some(Type2), true, 32, ok(Op::Pass, G | R)),
            (1, Read, Some(Type2), true, 32, ok(Op::Pass, G | R)),
            (0, Read, Some(Type2), true, 32, ok(Op::Strip, G | R)),
            (6, Read, Some(Type2), true, 32, bad10),
            // Fabric without PI: only INSERT/STRIP
            (0, Write, Some(Type1), false, 10, ok(Op::Insert, 0)),
            (0, Read, Some(Type1), false, 10, ok(Op::Strip, G | R)),
            (1, Write, Some(Type1), false, 10, bad1),
        ];
        for (i, (p, dir, pi, fabric, len, want)) in table.iter().enumerate() {
            assert_eq!(
                check_prot(*p, *dir, *pi, *fabric, *len),
                *want,
                "row {i}: protect {p} {dir:?} {pi:?} len {len}"
            );
        }
    }

    #[test]
    fn plan_domains() {
        let d = check_prot(1, Write, Some(Type1), true, 16).unwrap();
        let p = ProtPlan::build(Write, d, Some(Type1), 512, 0x1_0000_0010, 4, None, 0x1234);
        assert!(p.wire_has_pi);
        let m = p.mem.unwrap();
        assert_eq!(
            (m.ref_tag, m.ref_remap, m.app_escape, m.ref_escape),
            (0x10, true, true, false)
        );
        assert_eq!(p.wire, p.mem);
        assert_eq!(p.wire_len(), 4 * 520);
        assert_eq!(p.pi_len(), 32);

        let d = check_prot(0, Write, Some(Type3), true, 16).unwrap();
        let p = ProtPlan::build(Write, d, Some(Type3), 4096, 5, 2, None, 0xBEEF);
        let m = p.mem.unwrap();
        assert_eq!(
            (m.ref_tag, m.ref_remap, m.ref_escape, m.app_tag),
            (0xFFFF_FFFF, false, true, 0xBEEF)
        );
        assert_eq!(
            (p.op, p.wire, p.wire_len()),
            (ProtOp::Insert, None, 2 * 4096)
        );

        let tags = ExpectedTags {
            ref_tag: 77,
            app_tag: 0x55AA,
            app_tag_mask: 0xFF00,
        };
        let d = check_prot(1, Read, Some(Type2), true, 32).unwrap();
        let p = ProtPlan::build(Read, d, Some(Type2), 512, 1000, 1, Some(tags), 0);
        let m = p.mem.unwrap();
        assert_eq!(
            (m.ref_tag, m.app_tag, m.apptag_check_mask),
            (77, 0x55AA, 0xFF00)
        );
        assert_eq!(p.check_mask, G | R | check_mask::APPTAG);
    }
}
