//! The responder: executes incoming requests in PSN order. SEND lands in the next
//! posted receive (or is refused with an RNR NAK), WRITE is placed at the rkey,
//! READ is served from the rkey; each is acknowledged or NAKed.
//!
//! ACKs are coalesced as a real responder does: one cumulative ACK covers every
//! request handled since the last one, sent when the receive thread has no more
//! bytes buffered (or after [`Responder::ACK_EVERY`] requests), before a NAK or a
//! READ response, and before the receive completions of the SENDs it covers.

use std::sync::Arc;

use verbs::QpState;

use crate::dma::{self, DmaError};
use crate::frame::{self, nak, Header, Op};
use crate::hca::{Hca, Qp};
use crate::layout::{syndrome, Cqe};
use crate::transport::Replies;

/// Responder states, as rxe names them, for traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RespState {
    /// Waiting for the next request in order.
    Ready,
    /// An RNR NAK was sent for `psn`; later requests are dropped until it returns.
    RnrWait(u32),
    /// A request was NAKed with an error; the requester's QP is going to error and
    /// every later request is dropped.
    Failed,
}

/// Per-connection responder state.
#[derive(Debug)]
pub struct Responder {
    expected_psn: u32,
    state: RespState,
    /// The last PSN executed and not yet acknowledged.
    unacked: Option<u32>,
    /// Requests covered by `unacked`.
    unacked_count: u32,
    /// Receive completions held until their ACK is queued.
    held: Vec<Cqe>,
}

impl Default for Responder {
    fn default() -> Self {
        Responder::new()
    }
}

impl Responder {
    /// Expecting PSN 0.
    pub fn new() -> Responder {
        Responder {
            expected_psn: 0,
            state: RespState::Ready,
            unacked: None,
            unacked_count: 0,
            held: Vec::new(),
        }
    }

    /// Requests acknowledged by one ACK at most, under a continuous stream.
    pub const ACK_EVERY: u32 = 16;

    /// Records `psn` as executed; sends the ACK once [`Self::ACK_EVERY`] requests
    /// wait for it.
    fn ack_later(&mut self, qp: &Qp, tx: &Replies, psn: u32) {
        self.unacked = Some(psn);
        self.unacked_count += 1;
        if self.unacked_count >= Self::ACK_EVERY {
            self.flush(qp, tx);
        }
    }

    /// Sends the pending ACK, then raises the receive completions it covers (so
    /// that nothing the ULP does on seeing them, a disconnect, overtakes it).
    pub fn flush(&mut self, qp: &Qp, tx: &Replies) {
        if let Some(psn) = self.unacked.take() {
            self.unacked_count = 0;
            self.reply(qp, tx, Op::Ack, psn, 0, 0, &[]);
        }
        for cqe in self.held.drain(..) {
            qp.recv_cq.push(&cqe);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn reply(&self, qp: &Qp, tx: &Replies, op: Op, psn: u32, key: u32, len: u32, payload: &[u8]) {
        let mut h = Header::new(op, psn);
        h.qpn = qp.qpn;
        h.key = key;
        h.len = len;
        tx.send(Arc::new(frame::encode(&h, payload)));
    }

    /// Whether the request `psn` will be executed (it is the next in order, no
    /// error stopped the responder and the QP is not in error); others are dropped.
    pub fn executes(&self, qp: &Qp, psn: u32) -> bool {
        psn == self.expected_psn && self.state != RespState::Failed && qp.state() != QpState::Error
    }

    /// Acknowledges the RDMA WRITE `psn`, whose payload the receive thread placed
    /// in plain memory itself after [`Responder::executes`] said it would run.
    pub fn placed_write(&mut self, qp: &Qp, tx: &Replies, psn: u32) {
        self.state = RespState::Ready;
        self.ack_later(qp, tx, psn);
        self.expected_psn = self.expected_psn.wrapping_add(1);
    }

    /// Handles one request frame.
    pub fn handle(&mut self, hca: &Hca, qp: &Qp, h: &Header, payload: &mut [u8], tx: &Replies) {
        if !self.executes(qp, h.psn) {
            tracing::trace!(qpn = qp.qpn, psn = h.psn, expected = self.expected_psn, state = ?self.state, "dropping request");
            return;
        }
        self.state = RespState::Ready;
        match h.op {
            Op::Send | Op::SendInv => {
                let Some((idx, sges)) = qp.take_recv() else {
                    self.flush(qp, tx);
                    self.state = RespState::RnrWait(h.psn);
                    let delay = qp.attr.min_rnr_timer.as_micros().min(u128::from(u32::MAX)) as u32;
                    self.reply(qp, tx, Op::Nak, h.psn, nak::RNR, delay, &[]);
                    return;
                };
                let inval = (h.op == Op::SendInv).then_some(h.key);
                let placed = dma::scatter_local(hca, qp, &sges, payload, &qp.recv_cq)
                    .map_err(|e| match e {
                        DmaError::Length => (syndrome::LOCAL_LENGTH_ERR, nak::INVALID_REQ),
                        DmaError::Access(_) => (syndrome::LOCAL_PROT_ERR, nak::REMOTE_OP),
                        DmaError::Layout => (syndrome::LOCAL_QP_OP_ERR, nak::REMOTE_OP),
                    })
                    .and_then(|()| match inval {
                        // Only fast-registration and signature keys of this PD can be
                        // invalidated remotely.
                        Some(k) if !hca.mkeys.invalidate_remote(k, qp.pd) => {
                            Err((syndrome::LOCAL_PROT_ERR, nak::INVALID_REQ))
                        }
                        _ => Ok(()),
                    });
                match placed {
                    Ok(()) => {
                        self.held.push(Cqe::Resp {
                            qpn: qp.qpn,
                            wqe_counter: idx,
                            byte_cnt: payload.len() as u32,
                            inval_rkey: inval,
                        });
                        self.ack_later(qp, tx, h.psn);
                    }
                    Err((syn, n)) => {
                        self.flush(qp, tx);
                        qp.recv_cq.push(&Cqe::Err {
                            responder: true,
                            syndrome: syn,
                            vendor_err_synd: 0,
                            wqe_opcode: 0,
                            qpn: qp.qpn,
                            wqe_counter: idx,
                        });
                        self.reply(qp, tx, Op::Nak, h.psn, n, 0, &[]);
                        self.state = RespState::Failed;
                    }
                }
            }
            Op::Write => match dma::scatter_remote(hca, qp, h.key, h.addr, payload, &qp.recv_cq) {
                Ok(()) => self.ack_later(qp, tx, h.psn),
                Err(_) => {
                    self.flush(qp, tx);
                    self.reply(qp, tx, Op::Nak, h.psn, nak::REMOTE_ACCESS, 0, &[]);
                    self.state = RespState::Failed;
                }
            },
            Op::ReadReq if h.len as usize > frame::MAX_PAYLOAD => {
                self.flush(qp, tx);
                self.reply(qp, tx, Op::Nak, h.psn, nak::INVALID_REQ, 0, &[]);
                self.state = RespState::Failed;
            }
            Op::ReadReq => {
                self.flush(qp, tx);
                let mut b = frame::FrameBuilder::sized(
                    qp.bufs.for_frame(h.len as usize),
                    &Header {
                        qpn: qp.qpn,
                        ..Header::new(Op::ReadResp, h.psn)
                    },
                    h.len as usize,
                );
                match dma::gather_remote(hca, qp, h.key, h.addr, b.payload_mut(), &qp.recv_cq) {
                    Ok(()) => {
                        tx.send(Arc::new(b.finish()));
                    }
                    Err(_) => {
                        self.reply(qp, tx, Op::Nak, h.psn, nak::REMOTE_ACCESS, 0, &[]);
                        self.state = RespState::Failed;
                    }
                }
            }
            _ => return,
        }
        if self.state == RespState::Ready {
            self.expected_psn = self.expected_psn.wrapping_add(1);
        }
    }
}
