//! The requester: consumes send WQEs from the SQ ring (the device reads the bytes
//! the driver wrote), executes local operations (UMR for REG_MR,
//! REG_MR_INTEGRITY and LOCAL_INV; SET_PSV; NOP), turns SEND/WRITE/READ into
//! frames, and retransmits after an RNR NAK (go-back-N from the NAKed PSN) until
//! the QP's RNR retry count is used up. On a signature-pipelining QP the SQ stops
//! (SQD) after a SEND or RDMA WRITE whose data failed a signature check; what was
//! posted behind it waits until the driver moves the QP back to RTS.
//!
//! The SQ is executed by whoever holds the QP's [`SqExec`] lock: the thread that
//! rings the doorbell when the lock is free (no thread wake-up on the fast path, as
//! a real HCA starts on the doorbell write), otherwise the requester thread, which
//! also owns RNR retransmission. Behind that lock is the one buffer every large
//! frame through the signature engine is converted into (see [`crate::bulk`]).
//!
//! The ringing thread never waits on the socket, as posting to a hardware queue
//! never blocks: when the socket is full it stops after the frame at hand (the
//! wire keeps what the socket did not take) and the requester thread, which may
//! wait, sends the rest and executes what is left of the SQ. A peer that stops
//! reading therefore holds up only its own connection's requester thread, never
//! a thread that posts work for other connections too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sync::{Mutex, Receiver, RecvTimeoutError};
use verbs::cm::DisconnectReason;
use verbs::sig::SigDomain;
use verbs::{AccessFlags, QpState};

use crate::bulk::{self, Converted, Gathered, OutFrame, Wired};
use crate::dma::{self, DmaError};
use crate::frame::{self, FrameBuilder, Header, Op};
use crate::hca::{Hca, Inflight, Qp};
use crate::layout::{
    self, opcode, syndrome, Bsf, CtrlSeg, DataSeg, Klm, MkeySeg, RaddrSeg, SetPsvSeg,
    StrideBlockCtrl, StrideBlockEntry, UmrCtrlSeg, CTRL_CQ_UPDATE, CTRL_FENCE,
};
use crate::mr::{Mapping, MkeyKind, Resolved, SigBinding};
use crate::transport::Wire;

/// Events for the requester thread.
#[derive(Debug, Clone, Copy)]
pub enum ReqEvent {
    /// New WQEs were posted (or the QP changed state).
    Doorbell,
    /// The responder had no receive for `psn`; retry after `delay`.
    Rnr {
        /// NAKed PSN.
        psn: u32,
        /// Responder's RNR timer.
        delay: Duration,
    },
    /// The QP is destroyed.
    Stop,
}

/// The send side of a connected QP: the requester's state, behind the lock that
/// serializes SQ execution and retransmission, and the socket the frames go to.
#[derive(Debug)]
pub struct SqExec {
    state: Mutex<SqState>,
    wire: Arc<Wire>,
}

/// What the requester carries from one WQE to the next.
#[derive(Debug, Default)]
pub struct SqState {
    /// PSN of the next request.
    pub next_psn: u32,
    /// The frame buffer the signature engine converts large payloads into: written
    /// to the socket at once and reused, so the conversion's output stays in the
    /// cache of the thread that sends it.
    convert: Vec<u8>,
}

impl SqState {
    /// Largest conversion buffer kept between frames.
    const KEEP_CONVERT: usize = 4 << 20;

    /// Builds the frame of `c` in the conversion buffer, its payload written by
    /// `fill`; [`SqState::send_converted`] then writes it.
    fn convert(
        &mut self,
        c: &Converted,
        fill: impl FnOnce(&mut [u8]) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let mut b = FrameBuilder::sized(std::mem::take(&mut self.convert), &c.header, c.len);
        let filled = fill(b.payload_mut());
        self.convert = b.finish();
        filled
    }

    /// Hands the frame built by [`SqState::convert`] to `send` (and returns what
    /// it says), then lets go of an unusually large buffer.
    fn send_converted(&mut self, send: &mut dyn FnMut(Wired<'_>) -> bool) -> bool {
        let go_on = send(Wired::Bytes(&self.convert));
        if self.convert.capacity() > Self::KEEP_CONVERT {
            self.convert = Vec::new();
        }
        go_on
    }
}

impl SqExec {
    /// Starts at PSN 0 on `wire`.
    pub fn new(wire: Arc<Wire>) -> SqExec {
        SqExec {
            state: Mutex::new(SqState::default()),
            wire,
        }
    }

    /// Executes the posted WQEs in the calling thread if no other thread is doing
    /// so, without ever waiting on the socket; returns false when the lock is
    /// taken or the socket is full, and the requester thread must then go on.
    pub fn try_execute(&self, hca: &Hca, qp: &Qp) -> bool {
        match self.state.try_lock() {
            Some(mut sq) => transmit(hca, qp, &mut sq, &self.wire, false),
            None => false,
        }
    }

    /// Executes the posted WQEs, waiting for the lock and for the socket.
    fn execute(&self, hca: &Hca, qp: &Qp) {
        transmit(hca, qp, &mut self.state.lock(), &self.wire, true);
    }
}

/// Runs the SQ and writes the request frames, then flushes the socket. Without
/// `wait` (a posting thread) it never waits, on the socket or on another writer:
/// it does nothing while another writer holds the wire, and when the socket is
/// full it stops after the frame at hand, whose unsent part the wire keeps; it
/// then returns false, leaving the rest of the SQ and the flush to a thread that
/// may wait. True when everything was written (or the QP failed).
fn transmit(hca: &Hca, qp: &Qp, sq: &mut SqState, wire: &Wire, wait: bool) -> bool {
    if wait {
        let mut failed = None;
        process_sq(hca, qp, sq, &mut |f| {
            if failed.is_none() {
                failed = wire.write_wired(f).err();
            }
            true
        });
        if let Some(e) = failed.or_else(|| wire.flush().err()) {
            qp.to_error(DisconnectReason::Transport(e.to_string()));
        }
        return true;
    }
    // Another writer holds the wire (it may be waiting on the socket): nothing
    // is taken, the requester thread goes on.
    let Some(mut w) = wire.try_now() else {
        return false;
    };
    // What an earlier poster left goes first; while it cannot, this poster adds
    // nothing behind it (the backlog stays one frame deep).
    let mut sent = w.flush();
    if matches!(sent, Ok(true)) {
        let mut failed = None;
        let mut full = false;
        process_sq(hca, qp, sq, &mut |f| {
            if failed.is_none() {
                match w.write_wired(f) {
                    Ok(true) => {}
                    Ok(false) => full = true,
                    Err(e) => failed = Some(e),
                }
            }
            !full
        });
        sent = match failed {
            Some(e) => Err(e),
            None if full => Ok(false),
            None => w.flush(),
        };
    }
    drop(w);
    match sent {
        Ok(true) => true,
        Ok(false) => {
            tracing::trace!(qpn = qp.qpn, "socket full: the requester thread goes on");
            false
        }
        Err(e) => {
            qp.to_error(DisconnectReason::Transport(e.to_string()));
            true
        }
    }
}

/// Requester thread body.
pub fn run(hca: Arc<Hca>, qp: Arc<Qp>, events: Receiver<ReqEvent>, exec: Arc<SqExec>) {
    let wire = Arc::clone(&exec.wire);
    let mut retx: Option<(Instant, u32)> = None;
    loop {
        let ev = match retx {
            Some((at, _)) => events.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match ev {
            Ok(ReqEvent::Doorbell) => exec.execute(&hca, &qp),
            Ok(ReqEvent::Rnr { psn, delay }) => {
                let mut exceeded = false;
                if let Some(e) = qp.inflight.lock().iter_mut().find(|e| e.psn == Some(psn)) {
                    e.rnr_count += 1;
                    exceeded = qp.attr.rnr_retry < 7 && e.rnr_count > u32::from(qp.attr.rnr_retry);
                }
                if exceeded {
                    qp.ack_through(psn, false);
                    qp.set_status(psn, syndrome::RNR_RETRY_EXC_ERR);
                    qp.to_error(DisconnectReason::Local);
                    qp.complete_front();
                    retx = None;
                } else {
                    retx = Some((Instant::now() + delay, psn));
                }
            }
            Ok(ReqEvent::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Err(RecvTimeoutError::Timeout) => {
                if let Some((_, psn)) = retx.take() {
                    // Holding the SQ lock: no new request is written in between.
                    let mut sq = exec.state.lock();
                    if qp.state() != QpState::Error {
                        // Go-back-N from the NAKed PSN. Collect first: the in-flight
                        // list is not locked while writing to the socket.
                        let frames: Vec<OutFrame> = qp
                            .inflight
                            .lock()
                            .iter()
                            .filter(|e| {
                                e.status.is_none()
                                    && e.psn.is_some_and(|p| p.wrapping_sub(psn) as i32 >= 0)
                            })
                            .filter_map(|e| e.frame.clone())
                            .collect();
                        match resend(&hca, &qp, &mut sq, &wire, &frames) {
                            Ok(()) => {}
                            Err(Resend::Memory(e)) => {
                                tracing::warn!(qpn = qp.qpn, error = ?e, "retransmission: the gather list cannot be read again");
                                qp.to_error(DisconnectReason::Local)
                            }
                            Err(Resend::Socket(e)) => {
                                qp.to_error(DisconnectReason::Transport(e.to_string()))
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Why a retransmission stopped.
enum Resend {
    /// The signature engine could not read a frame's gather list again.
    Memory(DmaError),
    /// The socket failed.
    Socket(std::io::Error),
}

/// Writes `frames` again, in order, then flushes; a converted frame's payload is
/// produced again from memory.
fn resend(
    hca: &Hca,
    qp: &Qp,
    sq: &mut SqState,
    wire: &Wire,
    frames: &[OutFrame],
) -> Result<(), Resend> {
    for f in frames {
        let mut written = Ok(());
        match f {
            OutFrame::Built(b) => written = wire.write(b),
            OutFrame::Gathered(g) => written = wire.write_gathered(g),
            OutFrame::Converted(c) => {
                sq.convert(c, |dst| dma::regather_local(hca, qp, &c.sges, dst))
                    .map_err(Resend::Memory)?;
                sq.send_converted(&mut |w| {
                    written = wire.write_wired(w);
                    true
                });
            }
        }
        written.map_err(Resend::Socket)?;
    }
    wire.flush().map_err(Resend::Socket)
}

/// Executes every WQE posted since the last doorbell.
/// Request frames go to `send` as they are built; when it returns false, the
/// WQEs after that frame's are left for the next call.
pub fn process_sq(hca: &Hca, qp: &Qp, sq: &mut SqState, send: &mut dyn FnMut(Wired<'_>) -> bool) {
    loop {
        let (ctrl, wqe) = {
            let mut sq = qp.sq.lock();
            // SQD (a signature error on a pipelining QP): WQEs wait for RTS.
            if sq.dev_ci == sq.pi || qp.state() == QpState::Sqd {
                break;
            }
            let ctrl = match CtrlSeg::decode(sq.bb(sq.dev_ci)) {
                Ok(c) => c,
                Err(_) => break,
            };
            // Fence: wait until every earlier RDMA READ has its response (the
            // completer rings the doorbell again when one arrives).
            if ctrl.fm_ce_se & CTRL_FENCE != 0
                && qp.state() != QpState::Error
                && qp
                    .inflight
                    .lock()
                    .iter()
                    .any(|e| e.read_sges.is_some() && e.status.is_none())
            {
                break;
            }
            let n = ctrl.num_bbs();
            let wqe = sq.read_bbs(sq.dev_ci, n);
            sq.dev_ci = sq.dev_ci.wrapping_add(n as u32);
            (ctrl, wqe)
        };
        let signaled = ctrl.fm_ce_se & CTRL_CQ_UPDATE != 0;
        let mut entry = Inflight {
            psn: None,
            wqe_index: ctrl.wqe_index,
            opcode: ctrl.opcode,
            signaled,
            byte_len: 0,
            frame: None,
            read_sges: None,
            status: None,
            rnr_count: 0,
        };
        if qp.state() == QpState::Error {
            entry.status = Some(syndrome::WR_FLUSH_ERR);
            qp.retire(entry);
            continue;
        }
        // A WQE shorter than its control segment has an empty body (and fails to
        // decode below) rather than taking the device down.
        let body = wqe
            .get(CtrlSeg::SIZE..usize::from(ctrl.ds) * layout::WQE_DS)
            .unwrap_or(&[]);
        // A remote operation in flight completes on its ACK or response (the
        // completer takes the QP to error on a NAK); what finishes here retires now.
        let mut go_on = true;
        let failed = match ctrl.opcode {
            opcode::SEND | opcode::SEND_INVAL | opcode::RDMA_WRITE | opcode::RDMA_READ => {
                match remote_op(hca, qp, &ctrl, body, send, sq, entry) {
                    Ok(g) => {
                        go_on = g;
                        false
                    }
                    Err(()) => true,
                }
            }
            opcode::UMR => {
                entry.status = Some(match umr(hca, qp, &ctrl, body) {
                    Ok(()) => 0,
                    Err(s) => s,
                });
                qp.retire(entry)
            }
            opcode::NOP => {
                // A cancelled WR: completes as it was asked to, moving nothing.
                entry.status = Some(0);
                qp.retire(entry)
            }
            opcode::SET_PSV => {
                entry.status = Some(match SetPsvSeg::decode(body) {
                    Ok(p) if set_psv(hca, &p) => 0,
                    _ => syndrome::MW_BIND_ERR,
                });
                qp.retire(entry)
            }
            _ => {
                entry.status = Some(syndrome::LOCAL_QP_OP_ERR);
                qp.retire(entry)
            }
        };
        if failed {
            qp.to_error(DisconnectReason::Local);
        }
        if !go_on {
            break;
        }
    }
}

fn data_segs(b: &[u8]) -> Vec<DataSeg> {
    b.chunks_exact(DataSeg::SIZE)
        .filter_map(|c| DataSeg::decode(c).ok())
        .filter(|d| d.byte_count > 0 || d.lkey != 0)
        .collect()
}

fn remote_op(
    hca: &Hca,
    qp: &Qp,
    ctrl: &CtrlSeg,
    body: &[u8],
    send: &mut dyn FnMut(Wired<'_>) -> bool,
    sq: &mut SqState,
    mut entry: Inflight,
) -> Result<bool, ()> {
    let (raddr, sges) = if matches!(ctrl.opcode, opcode::RDMA_WRITE | opcode::RDMA_READ) {
        let Ok(r) = RaddrSeg::decode(body) else {
            // A malformed WQE completes in error like any other.
            entry.status = Some(syndrome::LOCAL_QP_OP_ERR);
            qp.retire(entry);
            return Err(());
        };
        (Some(r), data_segs(&body[RaddrSeg::SIZE..]))
    } else {
        (None, data_segs(body))
    };
    let total: u64 = sges.iter().map(|s| u64::from(s.byte_count)).sum();
    let psn = sq.next_psn;
    let mut h = Header::new(Op::Send, psn);
    h.qpn = qp.qpn;
    let frame = match ctrl.opcode {
        opcode::RDMA_READ => {
            let r = raddr.unwrap_or_default();
            h.op = Op::ReadReq;
            h.key = r.rkey;
            h.addr = r.raddr;
            h.len = total.min(u64::from(u32::MAX)) as u32;
            entry.read_sges = Some(sges);
            OutFrame::Built(Arc::new(FrameBuilder::new(&h, 0).finish()))
        }
        op => {
            match op {
                opcode::SEND_INVAL => {
                    h.op = Op::SendInv;
                    h.key = ctrl.imm;
                }
                opcode::RDMA_WRITE => {
                    let r = raddr.unwrap_or_default();
                    h.op = Op::Write;
                    h.key = r.rkey;
                    h.addr = r.raddr;
                }
                _ => {}
            }
            let bulk = (total as usize >= bulk::BULK_MIN)
                .then(|| bulk::plain_segments(hca, qp.pd, &sges, total as usize, AccessFlags::NONE))
                .flatten();
            let gathered = match bulk {
                Some(segs) => Ok(OutFrame::Gathered(Arc::new(Gathered {
                    head: frame::header_bytes(&h, total as usize),
                    segs,
                }))),
                // Not plain: through the signature engine (or refused, which the
                // gather reports as it does for any frame).
                None if total as usize >= bulk::BULK_MIN => {
                    let c = Converted {
                        header: h,
                        sges,
                        len: total as usize,
                    };
                    sq.convert(&c, |dst| {
                        dma::gather_local(hca, qp, &c.sges, dst, &qp.send_cq)
                    })
                    .map(|()| OutFrame::Converted(Arc::new(c)))
                }
                None => {
                    let mut b =
                        FrameBuilder::sized(qp.bufs.for_frame(total as usize), &h, total as usize);
                    dma::gather_local(hca, qp, &sges, b.payload_mut(), &qp.send_cq)
                        .map(|()| OutFrame::Built(Arc::new(b.finish())))
                }
            };
            match gathered {
                Ok(f) => f,
                Err(e) => {
                    entry.status = Some(match e {
                        DmaError::Access(_) => syndrome::LOCAL_PROT_ERR,
                        DmaError::Length => syndrome::LOCAL_LENGTH_ERR,
                        DmaError::Layout => syndrome::LOCAL_QP_OP_ERR,
                    });
                    qp.retire(entry);
                    return Err(());
                }
            }
        }
    };
    entry.byte_len = total as u32;
    sq.next_psn = psn.wrapping_add(1);
    entry.psn = Some(psn);
    entry.frame = Some(frame.clone());
    qp.inflight.lock().push_back(entry);
    // Whether `send` can take more frames.
    Ok(match &frame {
        OutFrame::Built(b) => send(Wired::Bytes(b)),
        OutFrame::Gathered(g) => send(Wired::Gathered(g)),
        OutFrame::Converted(_) => sq.send_converted(send),
    })
}

fn access_of(flags: u8) -> AccessFlags {
    let mut a = AccessFlags::NONE;
    if flags & layout::PERM_LOCAL_WRITE != 0 {
        a = a | AccessFlags::LOCAL_WRITE;
    }
    if flags & layout::PERM_REMOTE_READ != 0 {
        a = a | AccessFlags::REMOTE_READ;
    }
    if flags & layout::PERM_REMOTE_WRITE != 0 {
        a = a | AccessFlags::REMOTE_WRITE;
    }
    a
}

fn plain(hca: &Hca, pd: u32, key: u32, va: u64, len: u64) -> Result<crate::mr::Segment, u8> {
    match hca.mkeys.resolve(key, pd, va, len, AccessFlags::NONE) {
        Ok(Resolved::Plain(s)) => Ok(s),
        _ => Err(syndrome::MW_BIND_ERR),
    }
}

/// Executes a UMR WQE: LOCAL_INV, REG_MR (one KLM) or REG_MR_INTEGRITY (KLM or
/// strided block + BSF).
fn umr(hca: &Hca, qp: &Qp, ctrl: &CtrlSeg, body: &[u8]) -> Result<(), u8> {
    let bad = |_| syndrome::MW_BIND_ERR;
    let uc = UmrCtrlSeg::decode(body).map_err(bad)?;
    let ms = MkeySeg::decode(&body[UmrCtrlSeg::SIZE..]).map_err(bad)?;
    let key = ctrl.imm;
    let (pd, kind) = hca
        .mkeys
        .inspect(key, |m| (m.pd, m.kind))
        .ok_or(syndrome::MW_BIND_ERR)?;
    if pd != qp.pd || kind == MkeyKind::Direct {
        return Err(syndrome::MW_BIND_ERR);
    }
    if ms.status & layout::MKEY_STATUS_FREE != 0 {
        hca.mkeys.update(key, |m| m.mapping = None);
        return Ok(());
    }
    let xlt = body
        .get(UmrCtrlSeg::SIZE + MkeySeg::SIZE..)
        .ok_or(syndrome::MW_BIND_ERR)?;
    let access = access_of(ms.flags);
    if ms.flags_pd & layout::MKEY_BSF_EN == 0 {
        if kind != MkeyKind::FastReg {
            return Err(syndrome::MW_BIND_ERR);
        }
        let k = Klm::decode(xlt).map_err(bad)?;
        let seg = plain(hca, qp.pd, k.key, k.va, u64::from(k.bcount))?;
        hca.mkeys.update(key, |m| {
            m.access = access;
            m.iova = ms.start_addr;
            m.len = u64::from(k.bcount);
            m.mapping = Some(Mapping::Direct(seg));
        });
        return Ok(());
    }
    if kind != MkeyKind::Sig {
        return Err(syndrome::MW_BIND_ERR);
    }
    let bsf = Bsf::decode(xlt.get(64..).ok_or(syndrome::MW_BIND_ERR)?).map_err(bad)?;
    let (mem, wire) = bsf.domains(0, 0).map_err(bad)?;
    let interval = wire
        .dif()
        .or(mem.dif())
        .map(|d| d.pi_interval)
        .ok_or(syndrome::MW_BIND_ERR)?;
    let iv = u64::from(interval);
    let (data, prot, blocks) = if uc.xlt_octowords == 1 {
        let k = Klm::decode(xlt).map_err(bad)?;
        let per = if mem.dif().is_some() { iv + 8 } else { iv };
        let len = u64::from(k.bcount);
        if len % per != 0 {
            return Err(syndrome::MW_BIND_ERR);
        }
        (plain(hca, qp.pd, k.key, k.va, len)?, None, len / per)
    } else {
        let sb = StrideBlockCtrl::decode(xlt).map_err(bad)?;
        let d = StrideBlockEntry::decode(xlt.get(16..).unwrap_or(&[])).map_err(bad)?;
        let p = StrideBlockEntry::decode(xlt.get(32..).unwrap_or(&[])).map_err(bad)?;
        let n = u64::from(sb.repeat_count);
        if sb.op != layout::STRIDE_BLOCK_OP
            || u64::from(sb.bcount_per_cycle) != iv + 8
            || u64::from(d.bcount) != iv
            || p.bcount != 8
            || mem.dif().is_none()
        {
            return Err(syndrome::MW_BIND_ERR);
        }
        (
            plain(hca, qp.pd, d.key, d.va, n * iv)?,
            Some(plain(hca, qp.pd, p.key, p.va, n * 8)?),
            n,
        )
    };
    let wire_block = if wire.dif().is_some() { iv + 8 } else { iv };
    if blocks * wire_block != ms.len {
        return Err(syndrome::MW_BIND_ERR);
    }
    let binding = SigBinding {
        data,
        prot,
        mem,
        wire,
        check_mask: bsf.check_byte_mask,
        interval,
        blocks,
    };
    hca.mkeys.update(key, |m| {
        m.access = access;
        m.iova = ms.start_addr;
        m.len = ms.len;
        m.mapping = Some(Mapping::Sig(Arc::new(binding)));
    });
    Ok(())
}

/// SET_PSV: loads the initial guard seed and tags of one domain of a sig mkey.
fn set_psv(hca: &Hca, p: &SetPsvSeg) -> bool {
    let Some(key) = hca.psv_owner.lock().get(&p.psv_num).copied() else {
        return false;
    };
    hca.mkeys.update(key, |m| {
        let is_mem = m.psv.0 == p.psv_num;
        if let Some(Mapping::Sig(b)) = &mut m.mapping {
            // A copy only if a transfer still holds the binding.
            let nb = Arc::make_mut(b);
            let d = if is_mem { &mut nb.mem } else { &mut nb.wire };
            if let SigDomain::T10Dif(d) = d {
                d.bg = (p.transient_sig >> 16) as u16;
                d.app_tag = p.transient_sig as u16;
                d.ref_tag = p.ref_tag;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hca::Cq;
    use crate::layout::{Cqe, WQE_BB};
    use verbs::notify::Signal;
    use verbs::QpInitAttr;

    #[test]
    fn an_rdma_write_wqe_without_its_remote_address_completes_in_error() {
        let hca = Hca::new("test");
        let cq = Arc::new(Cq::new(1, 16, Arc::new(Signal::new())));
        let qp = Qp::new(3, 1, Arc::clone(&cq), cq, QpInitAttr::default());
        qp.state.set(QpState::Rts);
        let mut bb = [0u8; WQE_BB];
        CtrlSeg {
            opmod: 0,
            wqe_index: 0,
            opcode: opcode::RDMA_WRITE,
            qpn: 3,
            ds: 1, // the control segment alone: no remote address segment
            fm_ce_se: CTRL_CQ_UPDATE,
            imm: 0,
        }
        .encode(&mut bb);
        {
            let mut sq = qp.sq.lock();
            sq.write_bbs(0, &bb);
            sq.pi = 1;
        }
        let mut sent = 0;
        process_sq(&hca, &qp, &mut SqState::default(), &mut |_| {
            sent += 1;
            true
        });
        assert_eq!(sent, 0, "nothing goes to the wire");
        let raw = qp.send_cq.pop_raw().expect("the WQE completes");
        match Cqe::decode(&raw) {
            Ok(Cqe::Err { syndrome: s, .. }) => assert_eq!(s, syndrome::LOCAL_QP_OP_ERR),
            other => panic!("expected an error CQE, got {other:?}"),
        }
        assert_eq!(qp.state(), QpState::Error);
        assert!(qp.inflight.lock().is_empty());
    }
}
