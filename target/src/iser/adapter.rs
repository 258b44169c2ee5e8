//! What the iSER portal needs from the login policy and the device server, expressed
//! through their public interfaces: the login policy with the iSER keys added, the
//! protection plan of a block command (for the signature MR), and PI sense data for
//! a signature error the HCA reported.
//!
//! The device server is reached through [`ScsiService`], whose data are in wire form
//! (PI interleaved when the plan puts it on the wire). The plan is therefore rebuilt
//! here from the CDB with the device server's own [`check_prot`] and
//! [`ProtPlan::build`], and the signature MR binds the wire-form buffer with the same
//! DIF domain on both sides (PASS, checked in the HCA); commands whose plan is INSERT
//! or STRIP move plain bytes and the device server generates or checks the PI.

use iscsi::chap::ChapCredentials;
use iscsi::login::{AuthRequirement, LoginPolicy, TargetLookup};
use iscsi::negotiate::{DigestKind, LocalParams};
use iscsi::pdu::Isid;
use scsi::{Cdb, RwKind, SenseFormat};
use t10pi::{DifType, PiErrorKind};
use verbs::{SigAttrs, SigDomain, SigErr, SigErrType};

use super::IserLimits;
use crate::device::{check_prot, PiFailure, ProtDir, ProtOp, ProtPlan};
use crate::iscsi_tcp::login::PortalPolicy;
use crate::service::LunSummary;

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

/// The protection plan of `cdb` on `lun` when its blocks carry PI on the wire
/// (a READ or WRITE with RDPROTECT/WRPROTECT != 0 on a PI LUN: PASS), else `None`.
/// Commands the device server will refuse also give `None`; it reports the sense.
pub fn wire_pi_plan(lun: &LunSummary, cdb: &[u8]) -> Option<ProtPlan> {
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
    if rw.blocks == 0 || rw.protect == 0 {
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
        0,
    );
    (plan.op == ProtOp::Pass && plan.wire_has_pi).then_some(plan)
}

/// Signature attributes for a PASS plan over a wire-form (DIF-interleaved) buffer:
/// the same DIF domain in memory and on the wire, the plan's checks.
pub fn pass_attrs(plan: &ProtPlan) -> Option<SigAttrs> {
    let dom = plan.wire.or(plan.mem)?;
    Some(SigAttrs {
        check_mask: plan.check_mask,
        mem: SigDomain::T10Dif(dom),
        wire: SigDomain::T10Dif(dom),
    })
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
    fn pass_only_with_pi_on_the_wire() {
        let t1 = lun(1, 512);
        let p = wire_pi_plan(&t1, &rw16(0x8a, 1, 100, 4)).expect("WRPROTECT 1 is PASS");
        assert_eq!(p.op, ProtOp::Pass);
        assert_eq!(p.wire_stride(), 520);
        assert_eq!(p.first_lba, 100);
        let a = pass_attrs(&p).unwrap();
        assert_eq!(a.check_mask, t10pi::check_mask::GUARD | t10pi::check_mask::REFTAG);
        assert_eq!(a.wire_len(4), Some(4 * 520));
        // PROTECT 0 on a PI LUN: INSERT/STRIP in the device server, no wire PI.
        assert!(wire_pi_plan(&t1, &rw16(0x88, 0, 0, 4)).is_none());
        // No PI LUN, or a bad PROTECT value: the device server answers.
        assert!(wire_pi_plan(&lun(0, 512), &rw16(0x88, 1, 0, 4)).is_none());
        assert!(wire_pi_plan(&t1, &rw16(0x88, 6, 0, 4)).is_none());
        // Type 3: no reference tag check.
        let p3 = wire_pi_plan(&lun(3, 4096), &rw16(0x88, 1, 0, 2)).unwrap();
        assert_eq!(p3.check_mask, t10pi::check_mask::GUARD);
        assert_eq!(p3.wire_stride(), 4104);
    }

    #[test]
    fn sig_error_names_the_lba() {
        let p = wire_pi_plan(&lun(1, 512), &rw16(0x88, 1, 1000, 8)).unwrap();
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
        assert_eq!(u32::from_be_bytes([sense[3], sense[4], sense[5], sense[6]]), 1003);
    }
}
