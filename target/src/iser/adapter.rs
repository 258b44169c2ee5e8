//! What the iSER portal needs from the login policy and the device server, expressed
//! through their public interfaces: the login policy with the iSER keys added, the
//! protection plan of a block command (for the signature MR), and PI sense data for
//! a signature error the HCA reported.
//!
//! The device server is reached through [`ScsiService`](crate::service::ScsiService),
//! whose data are in wire form (PI interleaved when the plan puts it on the wire). The
//! plan is therefore rebuilt here from the CDB with the device server's own
//! [`check_prot`] and [`ProtPlan::build`]; see [`HcaPlan`] for how each operation
//! maps onto the signature MR.

use iscsi::chap::ChapCredentials;
use iscsi::login::{AuthRequirement, LoginPolicy, TargetLookup};
use iscsi::negotiate::{DigestKind, LocalParams};
use iscsi::pdu::Isid;
use scsi::{Cdb, Form, RwKind, SenseFormat};
use t10pi::{DifType, PiErrorKind, TUPLE_SIZE};
use verbs::{SigAttrs, SigDomain, SigErr, SigErrType};

use super::IserLimits;
use crate::device::{check_prot, PiFailure, ProtDir, ProtOp, ProtPlan};
use crate::service::LunSummary;
use crate::session::login::PortalPolicy;

/// The TCP portals' login policy with RDMAExtensions=Yes and the iSER receive
/// lengths; digests are never offered over iSER.
#[derive(Debug)]
pub struct IserLoginPolicy<'a> {
    /// The shared policy (targets, ACLs, CHAP, operational values).
    pub inner: &'a PortalPolicy,
    /// iSER receive lengths.
    pub limits: IserLimits,
}

impl LoginPolicy for IserLoginPolicy<'_> {
    fn lookup_target(&self, target_name: &str) -> TargetLookup {
        self.inner.lookup_target(target_name)
    }

    fn authorize(&self, initiator_name: &str, target_name: Option<&str>) -> bool {
        self.inner.authorize(initiator_name, target_name)
    }

    fn discovery_auth(&self) -> AuthRequirement {
        self.inner.discovery_auth()
    }

    fn allow_discovery(&self) -> bool {
        self.inner.allow_discovery()
    }

    fn chap_credentials(
        &self,
        chap_name: &str,
        target_name: Option<&str>,
    ) -> Option<ChapCredentials> {
        self.inner.chap_credentials(chap_name, target_name)
    }

    fn local_params(&self, target_name: Option<&str>) -> LocalParams {
        LocalParams {
            header_digest: vec![DigestKind::None],
            data_digest: vec![DigestKind::None],
            rdma_extensions: true,
            initiator_recv_data_segment_length: self.limits.initiator_recv_data_segment_length,
            target_recv_data_segment_length: self.limits.target_recv_data_segment_length,
            ..self.inner.local_params(target_name)
        }
    }

    fn session_exists(&self, isid: Isid, tsih: u16) -> bool {
        self.inner.session_exists(isid, tsih)
    }
}

/// How one block command's PI is applied by the signature MR.
///
/// The device server's [`ScsiService`](crate::service::ScsiService) takes and returns
/// blocks in wire form, so the command buffer always holds DIF-interleaved blocks
/// (data + 8-byte tuple per block) and the signature MR translates between that
/// memory view and the wire:
/// - PASS (PROTECT != 0): memory DIF, wire DIF, the CDB's checks;
/// - INSERT (WRPROTECT 0 on a Type 1/3 LUN): memory DIF, wire none: the HCA
///   generates the tuples as the data arrive; the device server is handed the CDB
///   with WRPROTECT 1, so it verifies and stores them as a PASS;
/// - STRIP (RDPROTECT 0 on a Type 1/3 LUN): the HCA checks the memory tuples with
///   RDPROTECT 0's checks and sends data only.
///
/// On reads the HCA runs the CDB's checks on every block it sends, so the device
/// server only fetches the blocks with their PI (it is given RDPROTECT 3: PI
/// transferred, not checked), as LIO leaves the checks of DIN_PASS and DIN_STRIP
/// to a fabric that offloads them. Writes whose every byte comes through the HCA
/// (no immediate or unsolicited data) are registered with DIX memory: the HCA
/// checks (PASS) or generates (INSERT) the tuples and splits them from the data
/// into the command buffer, and the device server stores both as given
/// ([`HcaPlan::dix_cdb`], WRPROTECT 3). A Type 2 32-byte CDB is passed unchanged
/// (the device server then checks again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HcaPlan {
    /// The command's own plan (operation, checks, first LBA, geometry).
    pub plan: ProtPlan,
    /// The signature attributes to bind.
    pub attrs: SigAttrs,
    /// The CDB the device server is given with the blocks in wire form (WRPROTECT 1
    /// for INSERT; RDPROTECT 3 for reads on 10/12/16-byte CDBs).
    pub device_cdb: Vec<u8>,
    /// The CDB the device server is given with the blocks in DIX form after the
    /// HCA checked or generated every tuple (RDPROTECT/WRPROTECT 3 on 10/12/16-byte
    /// CDBs: stored or fetched, not checked again).
    pub dix_cdb: Vec<u8>,
    /// Bytes of the command buffer: blocks with their tuples.
    pub mem_len: usize,
    /// Bytes on the wire.
    pub wire_len: usize,
}

impl HcaPlan {
    /// Bytes of data (without tuples) in the command buffer.
    pub fn data_len(&self) -> usize {
        self.plan.blocks as usize * self.plan.block_size as usize
    }
}

/// The CDB with its RDPROTECT/WRPROTECT field (byte 1, bits 7:5) set to `protect`.
fn with_protect(cdb: &[u8], protect: u8) -> Vec<u8> {
    let mut c = cdb.to_vec();
    if let Some(b) = c.get_mut(1) {
        *b = (*b & 0x1f) | (protect << 5);
    }
    c
}

/// The signature-MR plan of `cdb` on `lun` (whose stored PI carries `app_tag` when
/// the target generates it), or `None` when no PI moves: LUN without PI, a command
/// other than READ/WRITE(10/12/16/32), zero blocks, or one the device server will
/// refuse (it reports the sense). INSERT and STRIP are offered for Types 1 and 3 on
/// 10/12/16-byte CDBs; Type 2 needs the 32-byte CDB's tags and stays in software.
pub fn hca_plan(lun: &LunSummary, cdb: &[u8], app_tag: u16) -> Option<HcaPlan> {
    let pi = match lun.pi_type {
        1 => DifType::Type1,
        2 => DifType::Type2,
        3 => DifType::Type3,
        _ => return None,
    };
    let Ok(Cdb::ReadWrite(rw)) = Cdb::parse(cdb) else {
        return None;
    };
    let dir = match rw.kind {
        RwKind::Read => ProtDir::Read,
        RwKind::Write => ProtDir::Write,
        _ => return None,
    };
    if rw.blocks == 0 {
        return None;
    }
    let d = check_prot(rw.protect, dir, Some(pi), true, cdb.len()).ok()?;
    let plan = ProtPlan::build(
        dir,
        d,
        Some(pi),
        lun.block_size,
        rw.lba,
        rw.blocks,
        rw.tags,
        app_tag,
    );
    let mem = plan.mem?;
    let blocks = rw.blocks as usize;
    let bs = lun.block_size as usize;
    let mem_len = blocks * (bs + TUPLE_SIZE);
    let rewritable =
        pi != DifType::Type2 && matches!(rw.form, Form::Ten | Form::Twelve | Form::Sixteen);
    let read = dir == ProtDir::Read;
    let dix_cdb = if rewritable {
        with_protect(cdb, 3)
    } else {
        cdb.to_vec()
    };
    let (attrs, device_cdb, wire_len) = match plan.op {
        ProtOp::Pass => (
            SigAttrs {
                check_mask: plan.check_mask,
                mem: SigDomain::T10Dif(mem),
                wire: SigDomain::T10Dif(plan.wire.unwrap_or(mem)),
            },
            if read && rewritable {
                with_protect(cdb, 3)
            } else {
                cdb.to_vec()
            },
            mem_len,
        ),
        ProtOp::Insert | ProtOp::Strip if rewritable => (
            SigAttrs {
                check_mask: plan.check_mask,
                mem: SigDomain::T10Dif(mem),
                wire: SigDomain::None,
            },
            with_protect(cdb, if read { 3 } else { 1 }),
            blocks * bs,
        ),
        _ => return None,
    };
    Some(HcaPlan {
        plan,
        attrs,
        device_cdb,
        dix_cdb,
        mem_len,
        wire_len,
    })
}

/// Bytes of one block on the wire for `cdb` on `lun` (block + 8 when the CDB puts PI
/// on the wire), so that RDMA operations start on block boundaries of both sides'
/// signature MRs; 1 when the command moves no blocks.
pub fn wire_block(lun: Option<&LunSummary>, cdb: &[u8]) -> u32 {
    let Some(lun) = lun else {
        return 1;
    };
    match Cdb::parse(cdb) {
        Ok(Cdb::ReadWrite(rw)) if lun.pi_type != 0 && rw.protect != 0 => {
            lun.block_size + TUPLE_SIZE as u32
        }
        Ok(Cdb::ReadWrite(_)) => lun.block_size,
        _ => 1,
    }
}

/// The largest RDMA operation: `limit` rounded down to whole wire blocks (at least
/// one block).
pub fn rdma_chunk(limit: u32, wire_block: u32) -> u32 {
    let b = wire_block.max(1);
    (limit / b).max(1) * b
}

/// The failing field of a signature error in `t10pi` terms.
pub fn pi_kind(e: &SigErr) -> PiErrorKind {
    match e.err_type {
        SigErrType::BadGuard => PiErrorKind::Guard,
        SigErrType::BadAppTag => PiErrorKind::AppTag,
        SigErrType::BadRefTag => PiErrorKind::RefTag,
    }
}

/// Locates a signature error on the medium: LBA = first LBA + offset / (block + 8).
pub fn sig_failure(plan: &ProtPlan, e: &SigErr) -> PiFailure {
    PiFailure::from_wire_offset(plan, pi_kind(e), e.sig_err_offset, e.expected, e.actual)
}

/// Status and sense bytes for a signature error: CHECK CONDITION, ABORTED COMMAND,
/// 10h/01h..03h with the LBA in INFORMATION, in the LUN's sense format (descriptor
/// when the LBA needs more than 32 bits).
pub fn sig_sense(lun: &LunSummary, f: &PiFailure) -> (u8, Vec<u8>) {
    let reason = f.reason();
    let format = if lun.blocks > 1u64 << 32 {
        SenseFormat::Descriptor
    } else {
        SenseFormat::Fixed
    };
    let sense = reason
        .sense()
        .map(|s| s.to_bytes(format))
        .unwrap_or_default();
    (reason.status().0, sense)
}

#[cfg(test)]
mod tests {
    use super::*;
    use t10pi::check_mask;

    fn lun(pi_type: u8, block_size: u32) -> LunSummary {
        LunSummary {
            lun: 0,
            blocks: 1024,
            block_size,
            pi_type,
            backing: String::new(),
        }
    }

    fn rw16(op: u8, protect: u8, lba: u64, blocks: u32) -> Vec<u8> {
        let mut c = vec![0u8; 16];
        c[0] = op;
        c[1] = protect << 5;
        c[2..10].copy_from_slice(&lba.to_be_bytes());
        c[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn pass_insert_strip_domains() {
        let t1 = lun(1, 512);
        let p = hca_plan(&t1, &rw16(0x8a, 1, 100, 4), 0).expect("WRPROTECT 1 is PASS");
        assert_eq!(p.plan.op, ProtOp::Pass);
        assert_eq!((p.mem_len, p.wire_len), (4 * 520, 4 * 520));
        assert_eq!(p.device_cdb, rw16(0x8a, 1, 100, 4));
        // In DIX form the HCA checked every tuple: stored without a second check.
        assert_eq!(p.dix_cdb, rw16(0x8a, 3, 100, 4));
        assert_eq!(p.attrs.check_mask, check_mask::GUARD | check_mask::REFTAG);
        assert!(p.attrs.mem.dif().is_some() && p.attrs.wire.dif().is_some());
        // WRPROTECT 0: INSERT in the HCA; the device server verifies as WRPROTECT 1.
        let i = hca_plan(&t1, &rw16(0x8a, 0, 7, 2), 0x1234).unwrap();
        assert_eq!(i.plan.op, ProtOp::Insert);
        assert_eq!((i.mem_len, i.wire_len), (2 * 520, 2 * 512));
        assert_eq!(i.device_cdb, rw16(0x8a, 1, 7, 2));
        assert_eq!(i.dix_cdb, rw16(0x8a, 3, 7, 2));
        assert_eq!(i.attrs.wire, SigDomain::None);
        assert_eq!(i.attrs.mem.dif().unwrap().app_tag, 0x1234);
        // RDPROTECT 0: STRIP in the HCA with RDPROTECT 0's checks; the device
        // server only fetches (RDPROTECT 3), as for a PASS read.
        let s = hca_plan(&t1, &rw16(0x88, 0, 7, 2), 0).unwrap();
        assert_eq!(s.plan.op, ProtOp::Strip);
        assert_eq!(s.device_cdb, rw16(0x88, 3, 7, 2));
        let r = hca_plan(&t1, &rw16(0x88, 1, 7, 2), 0).unwrap();
        assert_eq!(
            (r.plan.op, r.device_cdb),
            (ProtOp::Pass, rw16(0x88, 3, 7, 2))
        );
        assert_eq!(r.attrs.check_mask, check_mask::GUARD | check_mask::REFTAG);
        assert_eq!(s.attrs.check_mask, check_mask::GUARD | check_mask::REFTAG);
        // No PI LUN, a bad PROTECT value, Type 2 without the 32-byte CDB: software.
        assert!(hca_plan(&lun(0, 512), &rw16(0x88, 1, 0, 4), 0).is_none());
        assert!(hca_plan(&t1, &rw16(0x88, 6, 0, 4), 0).is_none());
        assert!(hca_plan(&lun(2, 512), &rw16(0x88, 0, 0, 4), 0).is_none());
        assert!(hca_plan(&t1, &rw16(0x88, 0, 0, 0), 0).is_none());
        // Type 3: no reference tag check.
        let p3 = hca_plan(&lun(3, 4096), &rw16(0x88, 1, 0, 2), 0).unwrap();
        assert_eq!(p3.attrs.check_mask, check_mask::GUARD);
        assert_eq!(p3.wire_len, 2 * 4104);
    }

    #[test]
    fn rdma_operations_split_on_wire_blocks() {
        let t1 = lun(1, 512);
        assert_eq!(wire_block(Some(&t1), &rw16(0x8a, 1, 0, 1024)), 520);
        assert_eq!(wire_block(Some(&t1), &rw16(0x8a, 0, 0, 1024)), 512);
        assert_eq!(wire_block(Some(&lun(3, 4096)), &rw16(0x88, 3, 0, 9)), 4104);
        assert_eq!(wire_block(Some(&t1), &[0x12, 0, 0, 0, 36, 0]), 1);
        assert_eq!(wire_block(None, &rw16(0x88, 1, 0, 1)), 1);
        assert_eq!(rdma_chunk(262_144, 520), 504 * 520);
        assert_eq!(rdma_chunk(262_144, 4104), 63 * 4104);
        assert_eq!(rdma_chunk(262_144, 512), 262_144);
        assert_eq!(rdma_chunk(512, 4104), 4104);
        assert_eq!(rdma_chunk(1 << 20, 1), 1 << 20);
    }

    #[test]
    fn sig_error_names_the_lba() {
        let p = hca_plan(&lun(1, 512), &rw16(0x88, 1, 1000, 8), 0)
            .unwrap()
            .plan;
        let e = SigErr {
            err_type: SigErrType::BadRefTag,
            expected: 1003,
            actual: 7,
            sig_err_offset: 3 * 520,
            key: 9,
        };
        let f = sig_failure(&p, &e);
        assert_eq!(f.lba, 1003);
        let (status, sense) = sig_sense(&lun(1, 512), &f);
        assert_eq!(status, 0x02);
        assert_eq!(sense[0] & 0x7f, 0x70);
        assert_eq!(sense[2] & 0x0f, 0x0b);
        assert_eq!((sense[12], sense[13]), (0x10, 0x03));
        assert_eq!(
            u32::from_be_bytes([sense[3], sense[4], sense[5], sense[6]]),
            1003
        );
    }
}
