//! The completer: turns ACKs, NAKs and READ responses into completions of the
//! requests in flight, in order; RNR NAKs go back to the requester for retry.

use std::time::Duration;

use crate::sync::Sender;
use verbs::cm::DisconnectReason;

use crate::dma::{self, DmaError};
use crate::frame::{nak, Header, Op};
use crate::hca::{Hca, Qp};
use crate::layout::{syndrome, DataSeg};
use crate::requester::ReqEvent;

/// Handles one response frame.
pub fn handle(hca: &Hca, qp: &Qp, h: &Header, payload: &mut [u8], req: &Sender<ReqEvent>) {
    match h.op {
        Op::Ack => qp.acknowledge(h.psn),
        Op::ReadResp => {
            let Some(sges) = read_sges(qp, h.psn) else {
                qp.ack_through(h.psn, false);
                qp.to_error(DisconnectReason::Transport(format!(
                    "READ response for unknown PSN {}",
                    h.psn
                )));
                return;
            };
            let st = match dma::scatter_local(hca, qp, &sges, payload, &qp.send_cq) {
                Ok(()) => 0,
                Err(DmaError::Length) => syndrome::LOCAL_LENGTH_ERR,
                Err(DmaError::Access(_)) => syndrome::LOCAL_PROT_ERR,
                Err(DmaError::Layout) => syndrome::LOCAL_QP_OP_ERR,
            };
            finish_read(qp, h.psn, st, req);
        }
        Op::Nak => {
            if h.key == nak::RNR {
                let _ = req.send(ReqEvent::Rnr {
                    psn: h.psn,
                    delay: Duration::from_micros(u64::from(h.len)),
                });
                return;
            }
            qp.ack_through(h.psn, false);
            let st = match h.key {
                nak::REMOTE_ACCESS => syndrome::REMOTE_ACCESS_ERR,
                nak::INVALID_REQ => syndrome::REMOTE_INVAL_REQ_ERR,
                _ => syndrome::REMOTE_OP_ERR,
            };
            qp.set_status(h.psn, st);
            qp.to_error(DisconnectReason::Local);
            qp.complete_front();
        }
        _ => {}
    }
}

/// The scatter list of the RDMA READ in flight as `psn`.
pub fn read_sges(qp: &Qp, psn: u32) -> Option<Vec<DataSeg>> {
    qp.inflight
        .lock()
        .iter()
        .find(|e| e.psn == Some(psn))
        .and_then(|e| e.read_sges.clone())
}

/// Completes the RDMA READ `psn`, whose response the receive thread placed in
/// plain memory itself.
pub fn read_placed(qp: &Qp, psn: u32, req: &Sender<ReqEvent>) {
    finish_read(qp, psn, 0, req);
}

fn finish_read(qp: &Qp, psn: u32, st: u8, req: &Sender<ReqEvent>) {
    qp.ack_through(psn, false);
    qp.set_status(psn, st);
    if st != 0 {
        qp.to_error(DisconnectReason::Local);
    }
    qp.complete_front();
    // A fenced WQE may be waiting for this READ.
    let _ = req.send(ReqEvent::Doorbell);
}
