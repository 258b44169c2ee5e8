//! Data movement between registered memory and frame payloads: gather (local SGEs
//! or a remote range into a payload) and scatter (a payload into local SGEs or a
//! remote range), running the signature engine for every signature mkey touched.

use t10pi::PiError;
use verbs::AccessFlags;

use crate::fault::FaultDirection;
use crate::hca::{Cq, Hca, Qp};
use crate::layout::DataSeg;
use crate::mr::{AccessError, Resolved};
use crate::sig;

/// Why a gather or scatter failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmaError {
    /// Key, bounds, rights or alignment refused.
    Access(AccessError),
    /// The payload does not fit the scatter list.
    Length,
    /// The signature binding is inconsistent.
    Layout,
}

/// What a transfer is: the payload of the QP's own SEND or RDMA WRITE (a failed
/// check there stops the send queue of a signature-pipelining QP), the same payload
/// converted again for a retransmission (its checks were reported, and its faults
/// taken, when it was first sent), or anything else (RDMA READ responses served or
/// received, receives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transfer {
    OwnSend,
    Resend,
    Other,
}

/// A failed check does not fail the transfer: it becomes a SIGERR CQE on `sig_cq`
/// (and, for a send WQE of a signature-pipelining QP, stops its send queue).
fn report_sig(
    hca: &Hca,
    qp: &Qp,
    mkey: u32,
    sig_cq: &Cq,
    transfer: Transfer,
    r: Result<Option<PiError>, sig::SigLayoutError>,
) -> Result<(), DmaError> {
    match r {
        Ok(None) => Ok(()),
        Ok(Some(_)) if transfer == Transfer::Resend => Ok(()),
        Ok(Some(e)) => {
            hca.sig_error(sig_cq, qp.qpn, mkey, &e);
            if transfer == Transfer::OwnSend && qp.attr.sig_pipelining {
                qp.drain_on_sig_error();
            }
            Ok(())
        }
        Err(_) => Err(DmaError::Layout),
    }
}

/// Writes the bytes `r` maps (the wire view for a signature mkey) over all of
/// `dst`, which is exactly as long as the range `r` resolved.
fn gather_one(
    hca: &Hca,
    qp: &Qp,
    r: Resolved,
    dst: &mut [u8],
    sig_cq: &Cq,
    transfer: Transfer,
) -> Result<(), DmaError> {
    match r {
        Resolved::Plain(seg) => seg
            .buf
            .read_at(seg.offset, dst)
            .map_err(|_| DmaError::Layout),
        Resolved::Sig {
            binding,
            mkey,
            first_block,
            blocks,
        } => {
            let fault = match transfer {
                Transfer::Resend => None,
                _ => hca.take_fault(qp.qpn, mkey, FaultDirection::Outbound, first_block, blocks),
            };
            let r = sig::outbound(
                &hca.engine,
                &binding,
                first_block,
                blocks,
                dst,
                fault.as_ref(),
            );
            report_sig(hca, qp, mkey, sig_cq, transfer, r)
        }
    }
}

fn scatter_one(
    hca: &Hca,
    qp: &Qp,
    r: Resolved,
    data: &mut [u8],
    sig_cq: &Cq,
) -> Result<(), DmaError> {
    match r {
        Resolved::Plain(seg) => seg
            .buf
            .write_at(seg.offset, data)
            .map_err(|_| DmaError::Layout),
        Resolved::Sig {
            binding,
            mkey,
            first_block,
            blocks,
        } => {
            let fault = hca.take_fault(qp.qpn, mkey, FaultDirection::Inbound, first_block, blocks);
            let r = sig::inbound(&hca.engine, &binding, first_block, data, fault.as_ref());
            report_sig(hca, qp, mkey, sig_cq, Transfer::Other, r)
        }
    }
}

/// Writes the bytes of local SGEs (the wire view for signature mkeys) over all of
/// `dst`, which holds exactly their total length.
pub fn gather_local(
    hca: &Hca,
    qp: &Qp,
    sges: &[DataSeg],
    dst: &mut [u8],
    sig_cq: &Cq,
) -> Result<(), DmaError> {
    gather_sges(hca, qp, sges, dst, sig_cq, Transfer::OwnSend)
}

/// [`gather_local`] again for a retransmission: the signature engine converts the
/// memory as it is now, injects no fault and reports no check (the first
/// transmission did both).
pub fn regather_local(
    hca: &Hca,
    qp: &Qp,
    sges: &[DataSeg],
    dst: &mut [u8],
) -> Result<(), DmaError> {
    gather_sges(hca, qp, sges, dst, &qp.send_cq, Transfer::Resend)
}

fn gather_sges(
    hca: &Hca,
    qp: &Qp,
    sges: &[DataSeg],
    dst: &mut [u8],
    sig_cq: &Cq,
    transfer: Transfer,
) -> Result<(), DmaError> {
    let total: u64 = sges.iter().map(|s| u64::from(s.byte_count)).sum();
    if total != dst.len() as u64 {
        return Err(DmaError::Length);
    }
    let mut at = 0usize;
    for s in sges {
        let n = s.byte_count as usize;
        let r = hca
            .mkeys
            .resolve(s.lkey, qp.pd, s.addr, n as u64, AccessFlags::NONE)
            .map_err(DmaError::Access)?;
        gather_one(hca, qp, r, &mut dst[at..at + n], sig_cq, transfer)?;
        at += n;
    }
    Ok(())
}

/// Writes the remote range `rkey`/`addr` over all of `dst` (RDMA READ
/// responder); the range is `dst.len()` bytes long.
pub fn gather_remote(
    hca: &Hca,
    qp: &Qp,
    rkey: u32,
    addr: u64,
    dst: &mut [u8],
    sig_cq: &Cq,
) -> Result<(), DmaError> {
    let r = hca
        .mkeys
        .resolve(
            rkey,
            qp.pd,
            addr,
            dst.len() as u64,
            AccessFlags::REMOTE_READ,
        )
        .map_err(DmaError::Access)?;
    gather_one(hca, qp, r, dst, sig_cq, Transfer::Other)
}

/// Places `data` into local SGEs in order (receive, READ response). Local write
/// rights are required.
pub fn scatter_local(
    hca: &Hca,
    qp: &Qp,
    sges: &[DataSeg],
    data: &mut [u8],
    sig_cq: &Cq,
) -> Result<(), DmaError> {
    let total: u64 = sges.iter().map(|s| u64::from(s.byte_count)).sum();
    if (data.len() as u64) > total {
        return Err(DmaError::Length);
    }
    let mut at = 0usize;
    for s in sges {
        if at == data.len() {
            break;
        }
        let n = (s.byte_count as usize).min(data.len() - at);
        let r = hca
            .mkeys
            .resolve(s.lkey, qp.pd, s.addr, n as u64, AccessFlags::LOCAL_WRITE)
            .map_err(DmaError::Access)?;
        scatter_one(hca, qp, r, &mut data[at..at + n], sig_cq)?;
        at += n;
    }
    Ok(())
}

/// Places `data` at the remote range `rkey`/`addr` (RDMA WRITE responder).
pub fn scatter_remote(
    hca: &Hca,
    qp: &Qp,
    rkey: u32,
    addr: u64,
    data: &mut [u8],
    sig_cq: &Cq,
) -> Result<(), DmaError> {
    let r = hca
        .mkeys
        .resolve(
            rkey,
            qp.pd,
            addr,
            data.len() as u64,
            AccessFlags::REMOTE_WRITE,
        )
        .map_err(DmaError::Access)?;
    scatter_one(hca, qp, r, data, sig_cq)
}
