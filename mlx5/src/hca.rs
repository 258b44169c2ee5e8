//! The device half's objects: the HCA (mkey, PSV, CQ and QP tables, fault list),
//! CQs with their 64-byte CQE rings, QPs with their send and receive WQE rings, and
//! the QP state machine (error transition and flushing).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use crate::bulk::OutFrame;
use crate::sync::Mutex;
use crate::sync::Sender;
use parking_lot::RwLock;
use t10pi::{PiError, PiErrorKind};
use verbs::cm::{ConnEvents, DisconnectReason};
use verbs::notify::Signal;
use verbs::{QpInitAttr, QpState};

use crate::fault::{FaultDirection, FaultScope, FaultSpec};
use crate::layout::{self, sig_syndrome, syndrome, Cqe, CQE_SIZE, WQE_BB};
use crate::mr::MkeyTable;
use crate::transport::TxItem;

/// A table keyed by the device's 32-bit object numbers (mkeys, QPNs, CQNs, PSV
/// indices).
pub type IdMap<V> = HashMap<u32, V, BuildHasherDefault<IdHasher>>;

/// Hashes an object number: numbers are distinct, so one multiplication spreads
/// them (SipHash's defence against chosen keys buys nothing here and costs a
/// lookup on every WQE and SGE).
#[derive(Debug, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A completion queue: a ring of 64-byte CQEs with ownership bits. The device
/// writes at the producer index; the driver reads at the consumer index.
#[derive(Debug)]
pub struct Cq {
    /// CQ number.
    pub id: u32,
    ring: Mutex<CqRing>,
    signal: Arc<Signal>,
}

#[derive(Debug)]
struct CqRing {
    cqes: Vec<[u8; CQE_SIZE]>,
    log_size: u32,
    pi: u32,
    ci: u32,
    overruns: u64,
}

impl Cq {
    /// A CQ of at least `entries` CQEs.
    pub fn new(id: u32, entries: u32, signal: Arc<Signal>) -> Cq {
        let size = entries.max(2).next_power_of_two();
        let mut init = [0u8; CQE_SIZE];
        init[63] = layout::cqe_op::INVALID << 4;
        Cq {
            id,
            ring: Mutex::new(CqRing {
                cqes: vec![init; size as usize],
                log_size: size.trailing_zeros(),
                pi: 0,
                ci: 0,
                overruns: 0,
            }),
            signal,
        }
    }

    /// Device side: writes one CQE and raises the completion event.
    pub fn push(&self, cqe: &Cqe) {
        {
            let mut r = self.ring.lock();
            let size = r.cqes.len() as u32;
            if r.pi.wrapping_sub(r.ci) >= size {
                r.overruns += 1;
                tracing::error!(cq = self.id, "CQ overrun: completion dropped");
                return;
            }
            let idx = (r.pi & (size - 1)) as usize;
            let owner = (r.pi >> r.log_size) & 1 == 1;
            let mut b = [0u8; CQE_SIZE];
            cqe.encode(&mut b, owner);
            r.cqes[idx] = b;
            r.pi = r.pi.wrapping_add(1);
        }
        self.signal.raise();
    }

    /// Raises the completion event without a CQE (a waiter looks again).
    pub fn wake(&self) {
        self.signal.raise();
    }

    /// Driver side: takes the next CQE the device has written, if any.
    pub fn pop_raw(&self) -> Option<[u8; CQE_SIZE]> {
        let mut r = self.ring.lock();
        let size = r.cqes.len() as u32;
        let idx = (r.ci & (size - 1)) as usize;
        let b = r.cqes[idx];
        let sw_owner = (r.ci >> r.log_size) & 1;
        if b[63] >> 4 == layout::cqe_op::INVALID || u32::from(b[63] & 1) != sw_owner {
            return None;
        }
        r.ci = r.ci.wrapping_add(1);
        Some(b)
    }

    /// CQEs dropped because the ring was full.
    pub fn overruns(&self) -> u64 {
        self.ring.lock().overruns
    }
}

/// Driver bookkeeping for one posted send WR (at the index of its last WQE).
#[derive(Clone, Copy, Debug)]
pub struct WrMeta {
    /// Caller's cookie.
    pub wr_id: u64,
    /// Completion opcode.
    pub opcode: verbs::WcOpcode,
    /// Ring index just after the WR's WQEs (the SQ space it frees).
    pub next: u32,
}

/// The send queue: a ring of 64-byte basic blocks.
#[derive(Debug)]
pub struct SqRing {
    /// Ring bytes.
    pub buf: Vec<u8>,
    /// Ring size in basic blocks (a power of two).
    pub bbs: u32,
    /// Driver producer index (basic blocks).
    pub pi: u32,
    /// Device consumer index.
    pub dev_ci: u32,
    /// Driver: index up to which the ring is free again.
    pub tail: u32,
    /// Driver: per-index WR bookkeeping.
    pub wr: Vec<Option<WrMeta>>,
}

impl SqRing {
    fn new(bbs: u32) -> SqRing {
        SqRing {
            buf: vec![0; bbs as usize * WQE_BB],
            bbs,
            pi: 0,
            dev_ci: 0,
            tail: 0,
            wr: vec![None; bbs as usize],
        }
    }
    /// The basic block at index `at` (wrapping).
    pub fn bb(&self, at: u32) -> &[u8] {
        let s = ((at & (self.bbs - 1)) as usize) * WQE_BB;
        &self.buf[s..s + WQE_BB]
    }
    /// Copies `n` basic blocks starting at index `at` (wrapping) out of the ring.
    pub fn read_bbs(&self, at: u32, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n * WQE_BB);
        for i in 0..n as u32 {
            let s = ((at.wrapping_add(i) & (self.bbs - 1)) as usize) * WQE_BB;
            out.extend_from_slice(&self.buf[s..s + WQE_BB]);
        }
        out
    }
    /// Writes whole basic blocks at index `at` (wrapping).
    pub fn write_bbs(&mut self, at: u32, bytes: &[u8]) {
        for (i, bb) in bytes.chunks(WQE_BB).enumerate() {
            let s = ((at.wrapping_add(i as u32) & (self.bbs - 1)) as usize) * WQE_BB;
            self.buf[s..s + bb.len()].copy_from_slice(bb);
        }
    }
}

/// The receive queue: a ring of WQEs, each `stride` bytes of data segments.
#[derive(Debug)]
pub struct RqRing {
    /// Ring bytes.
    pub buf: Vec<u8>,
    /// Number of WQEs (a power of two).
    pub wqes: u32,
    /// Bytes per WQE.
    pub stride: usize,
    /// Device consumer index.
    pub head: u32,
    /// Driver producer index.
    pub tail: u32,
    /// Driver: wr_id per index.
    pub wr_id: Vec<u64>,
}

/// One send WQE the requester has started and not yet completed.
#[derive(Debug)]
pub struct Inflight {
    /// Message sequence number (remote operations).
    pub psn: Option<u32>,
    /// WQE index for the CQE.
    pub wqe_index: u16,
    /// WQE opcode.
    pub opcode: u8,
    /// Whether a successful completion is reported.
    pub signaled: bool,
    /// Bytes moved.
    pub byte_len: u32,
    /// The request frame, kept for RNR retransmission.
    pub frame: Option<OutFrame>,
    /// Scatter list of an RDMA READ.
    pub read_sges: Option<Vec<layout::DataSeg>>,
    /// Outcome: `Some(0)` success, `Some(syndrome)` error, `None` pending.
    pub status: Option<u8>,
    /// RNR NAKs received for this request.
    pub rnr_count: u32,
}

/// A live connection of a QP.
#[derive(Debug)]
pub struct Link {
    /// Requester events.
    pub req: Sender<crate::requester::ReqEvent>,
    /// SQ execution (doorbell fast path).
    pub sq: Arc<crate::requester::SqExec>,
    /// Frames to the socket.
    pub tx: Sender<TxItem>,
    /// CM connection events.
    pub events: Arc<ConnEvents>,
    /// The receive path (rx thread or poll mode).
    pub rx: Arc<crate::receive::RxPort>,
}

/// A QP's state, read without a lock: the requester looks at it for every WQE
/// it executes, from whichever thread rang the doorbell.
#[derive(Debug)]
pub struct StateCell(AtomicU8);

impl StateCell {
    const ALL: [QpState; 6] = [
        QpState::Reset,
        QpState::Init,
        QpState::Rtr,
        QpState::Rts,
        QpState::Sqd,
        QpState::Error,
    ];

    fn code(s: QpState) -> u8 {
        Self::ALL.iter().position(|&x| x == s).unwrap_or(5) as u8
    }

    fn state(c: u8) -> QpState {
        Self::ALL
            .get(usize::from(c))
            .copied()
            .unwrap_or(QpState::Error)
    }

    /// A cell holding `s`.
    pub fn new(s: QpState) -> StateCell {
        StateCell(AtomicU8::new(Self::code(s)))
    }

    /// The current state.
    pub fn get(&self) -> QpState {
        Self::state(self.0.load(Ordering::Acquire))
    }

    /// Sets `s`.
    pub fn set(&self, s: QpState) {
        self.0.store(Self::code(s), Ordering::Release);
    }

    /// Sets `s` and returns the state it replaced.
    pub fn swap(&self, s: QpState) -> QpState {
        Self::state(self.0.swap(Self::code(s), Ordering::AcqRel))
    }

    /// Moves from `from` to `to`; when the state is not `from`, leaves it and
    /// returns it.
    pub fn transition(&self, from: QpState, to: QpState) -> Result<(), QpState> {
        self.0
            .compare_exchange(
                Self::code(from),
                Self::code(to),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| ())
            .map_err(Self::state)
    }
}

/// A queue pair.
#[derive(Debug)]
pub struct Qp {
    /// QP number.
    pub qpn: u32,
    /// Protection domain.
    pub pd: u32,
    /// Send CQ.
    pub send_cq: Arc<Cq>,
    /// Receive CQ.
    pub recv_cq: Arc<Cq>,
    /// Creation attributes.
    pub attr: QpInitAttr,
    /// Send ring.
    pub sq: Mutex<SqRing>,
    /// Receive ring.
    pub rq: Mutex<RqRing>,
    /// State.
    pub state: StateCell,
    /// Connection.
    pub link: Mutex<Option<Link>>,
    /// Requests started and not completed, in order.
    pub inflight: Mutex<VecDeque<Inflight>>,
    /// Recycled frame buffers.
    pub bufs: crate::transport::BufPool,
    /// Raised on asynchronous events (the send queue stopped in SQD).
    pub events: Mutex<Option<Arc<Signal>>>,
}

impl Qp {
    /// A QP in the INIT state.
    pub fn new(qpn: u32, pd: u32, send_cq: Arc<Cq>, recv_cq: Arc<Cq>, attr: QpInitAttr) -> Qp {
        let bbs = (attr.max_send_wr.max(1) * 8).next_power_of_two();
        let wqes = attr.max_recv_wr.max(1).next_power_of_two();
        let stride =
            (attr.max_recv_sge.max(1) as usize * layout::DataSeg::SIZE).next_power_of_two();
        Qp {
            qpn,
            pd,
            send_cq,
            recv_cq,
            sq: Mutex::new(SqRing::new(bbs)),
            rq: Mutex::new(RqRing {
                buf: vec![0; wqes as usize * stride],
                wqes,
                stride,
                head: 0,
                tail: 0,
                wr_id: vec![0; wqes as usize],
            }),
            attr,
            state: StateCell::new(QpState::Init),
            link: Mutex::new(None),
            inflight: Mutex::new(VecDeque::new()),
            bufs: crate::transport::BufPool::default(),
            events: Mutex::new(None),
        }
    }

    /// Current state.
    pub fn state(&self) -> QpState {
        self.state.get()
    }

    /// Device side: the data segments of the next posted receive, and its index.
    pub fn take_recv(&self) -> Option<(u16, Vec<layout::DataSeg>)> {
        let mut rq = self.rq.lock();
        if rq.head == rq.tail {
            return None;
        }
        let idx = rq.head & (rq.wqes - 1);
        let at = idx as usize * rq.stride;
        let mut sges = Vec::new();
        for seg in rq.buf[at..at + rq.stride].chunks(layout::DataSeg::SIZE) {
            match layout::DataSeg::decode(seg) {
                Ok(d) if d.lkey != layout::DataSeg::INVALID_LKEY => sges.push(d),
                _ => break,
            }
        }
        rq.head = rq.head.wrapping_add(1);
        Some((rq.head.wrapping_sub(1) as u16, sges))
    }

    /// Completes, in order, every finished request at the front of the in-flight list.
    pub fn complete_front(&self) {
        self.complete_front_of(&mut self.inflight.lock());
    }

    /// Appends a request the requester finished at once (a local operation, or one
    /// refused before it reached the wire) and completes what is done at the
    /// front, under one lock. Returns whether the request failed.
    pub fn retire(&self, entry: Inflight) -> bool {
        let failed = entry.status.is_some_and(|s| s != 0);
        let mut q = self.inflight.lock();
        q.push_back(entry);
        self.complete_front_of(&mut q);
        failed
    }

    /// An ACK of `psn`: everything up to it is done ([`Qp::ack_through`]), and the
    /// finished front completes, under one lock.
    pub fn acknowledge(&self, psn: u32) {
        let mut q = self.inflight.lock();
        Self::ack_in(&mut q, psn, true);
        self.complete_front_of(&mut q);
    }

    fn complete_front_of(&self, q: &mut VecDeque<Inflight>) {
        while let Some(front) = q.front() {
            let Some(st) = front.status else { break };
            let Some(mut e) = q.pop_front() else { break };
            if let Some(OutFrame::Built(f)) = e.frame.take() {
                self.bufs.put(f);
            }
            if st == 0 {
                if e.signaled {
                    self.send_cq.push(&Cqe::Req {
                        sop: e.opcode,
                        qpn: self.qpn,
                        wqe_counter: e.wqe_index,
                        byte_cnt: e.byte_len,
                    });
                }
            } else if st != syndrome::WR_FLUSH_ERR || e.signaled {
                self.send_cq.push(&Cqe::Err {
                    responder: false,
                    syndrome: st,
                    vendor_err_synd: 0,
                    wqe_opcode: e.opcode,
                    qpn: self.qpn,
                    wqe_counter: e.wqe_index,
                });
            }
        }
    }

    /// Marks every pending request before `psn` (not RDMA READs) done; a NAK or ACK
    /// of `psn` implies the responder processed all of them.
    pub fn ack_through(&self, psn: u32, inclusive: bool) {
        Self::ack_in(&mut self.inflight.lock(), psn, inclusive);
    }

    fn ack_in(q: &mut VecDeque<Inflight>, psn: u32, inclusive: bool) {
        for e in q.iter_mut() {
            if let (Some(p), None) = (e.psn, e.status) {
                let d = p.wrapping_sub(psn) as i32;
                if (d < 0 || (inclusive && d == 0)) && e.read_sges.is_none() {
                    e.status = Some(0);
                }
            }
        }
    }

    /// Sets the status of the request with `psn`.
    pub fn set_status(&self, psn: u32, st: u8) {
        if let Some(e) = self.inflight.lock().iter_mut().find(|e| e.psn == Some(psn)) {
            e.status = Some(st);
        }
    }

    /// Signature pipelining: a transfer failed its signature check, so the send
    /// queue stops after it (RTS -> SQD) and the owner hears of it
    /// (`IBV_EVENT_SQ_DRAINED`). Called after the SIGERR CQE is written, so a
    /// consumer that polls the CQ on this event finds the error.
    pub fn drain_on_sig_error(&self) {
        if self.state.transition(QpState::Rts, QpState::Sqd).is_err() {
            return;
        }
        tracing::debug!(qpn = self.qpn, "signature error: send queue drained (SQD)");
        if let Some(events) = self.events.lock().as_ref() {
            events.raise();
        }
    }

    /// Moves the QP to the error state: flushes in-flight requests and posted
    /// receives, closes the connection and reports the disconnect.
    pub fn to_error(&self, reason: DisconnectReason) {
        if self.state.swap(QpState::Error) == QpState::Error {
            return;
        }
        tracing::debug!(qpn = self.qpn, ?reason, "QP to error");
        for e in self.inflight.lock().iter_mut() {
            if e.status.is_none() {
                e.status = Some(syndrome::WR_FLUSH_ERR);
            }
        }
        self.complete_front();
        self.flush_rq();
        if let Some(l) = self.link.lock().as_ref() {
            let _ = l.tx.send(TxItem::Shutdown);
            let _ = l.req.send(crate::requester::ReqEvent::Doorbell);
            l.events.disconnected(reason);
        }
    }

    /// Flushes every posted receive (QP in error).
    pub fn flush_rq(&self) {
        while let Some((idx, _)) = self.take_recv() {
            self.recv_cq.push(&Cqe::Err {
                responder: true,
                syndrome: syndrome::WR_FLUSH_ERR,
                vendor_err_synd: 0,
                wqe_opcode: 0,
                qpn: self.qpn,
                wqe_counter: idx,
            });
        }
    }
}

/// The device: tables of everything the driver created.
#[derive(Debug)]
pub struct Hca {
    /// Device name.
    pub name: String,
    /// Memory keys.
    pub mkeys: MkeyTable,
    /// PSV index -> signature mkey it belongs to.
    pub psv_owner: Mutex<IdMap<u32>>,
    /// CQs.
    pub cqs: RwLock<IdMap<Arc<Cq>>>,
    /// QPs.
    pub qps: RwLock<IdMap<Arc<Qp>>>,
    /// Armed faults.
    pub faults: Mutex<Vec<FaultSpec>>,
    armed: AtomicU32,
    /// Object number allocator.
    pub next_id: AtomicU32,
    /// PI engine.
    pub engine: t10pi::Engine,
}

impl Hca {
    /// The QP numbered `qpn`.
    pub fn qp(&self, qpn: u32) -> Result<Arc<Qp>, verbs::VerbsError> {
        self.qps
            .read()
            .get(&qpn)
            .cloned()
            .ok_or(verbs::VerbsError::UnknownHandle {
                what: "qp",
                id: qpn,
            })
    }

    /// A device with the faults of `MLX5_SOFT_FAULT`, if set.
    pub fn new(name: &str) -> Hca {
        let faults = match std::env::var("MLX5_SOFT_FAULT") {
            Ok(v) => match crate::fault::parse_list(&v) {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(error = %e, "ignoring MLX5_SOFT_FAULT");
                    Vec::new()
                }
            },
            Err(_) => Vec::new(),
        };
        Hca {
            name: name.to_string(),
            mkeys: MkeyTable::default(),
            psv_owner: Mutex::new(IdMap::default()),
            cqs: RwLock::new(IdMap::default()),
            qps: RwLock::new(IdMap::default()),
            armed: AtomicU32::new(faults.len() as u32),
            faults: Mutex::new(faults),
            next_id: AtomicU32::new(1),
            engine: t10pi::Engine::new(),
        }
    }

    /// A fresh object number.
    pub fn alloc_id(&self) -> u32 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Arms a fault.
    pub fn add_fault(&self, f: FaultSpec) {
        let mut v = self.faults.lock();
        v.push(f);
        self.armed.store(v.len() as u32, Ordering::Release);
    }

    /// Disarms all faults.
    pub fn clear_faults(&self) {
        self.faults.lock().clear();
        self.armed.store(0, Ordering::Release);
    }

    /// The fault that applies to blocks `first..first + n` of `mkey` on `qpn`
    /// moving in `dir`, removing it if it fires once.
    pub fn take_fault(
        &self,
        qpn: u32,
        mkey: u32,
        dir: FaultDirection,
        first: u64,
        n: u64,
    ) -> Option<FaultSpec> {
        if self.armed.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut v = self.faults.lock();
        let i = v.iter().position(|f| {
            let scope = match f.scope {
                FaultScope::Any => true,
                FaultScope::Mkey(k) => k == mkey,
                FaultScope::Qp(q) => q == qpn,
            };
            let d = f.direction == FaultDirection::Any || f.direction == dir;
            scope && d && f.block >= first && f.block < first + n
        })?;
        let f = v[i];
        if f.once {
            v.remove(i);
            self.armed.store(v.len() as u32, Ordering::Release);
        }
        Some(f)
    }

    /// Writes the SIGERR CQE for a failed check on `mkey` into `cq`.
    pub fn sig_error(&self, cq: &Cq, qpn: u32, mkey: u32, e: &PiError) {
        let (exp_sig, act_sig, exp_ref, act_ref, syn) = match e.kind {
            PiErrorKind::Guard => (e.expected << 16, e.actual << 16, 0, 0, sig_syndrome::GUARD),
            PiErrorKind::AppTag => (
                e.expected & 0xffff,
                e.actual & 0xffff,
                0,
                0,
                sig_syndrome::APPTAG,
            ),
            PiErrorKind::RefTag => (0, 0, e.expected, e.actual, sig_syndrome::REFTAG),
        };
        tracing::debug!(qpn, mkey, ?e, "signature error");
        cq.push(&Cqe::SigErr {
            expected_trans_sig: exp_sig,
            actual_trans_sig: act_sig,
            expected_reftag: exp_ref,
            actual_reftag: act_ref,
            syndrome: syn,
            mkey,
            err_offset: e.wire_offset,
            qpn,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qp() -> Qp {
        let cq = Arc::new(Cq::new(1, 16, Arc::new(Signal::new())));
        Qp::new(7, 1, Arc::clone(&cq), cq, QpInitAttr::default())
    }

    fn entry(psn: Option<u32>, status: Option<u8>) -> Inflight {
        Inflight {
            psn,
            wqe_index: 0,
            opcode: layout::opcode::SEND,
            signaled: true,
            byte_len: 0,
            frame: None,
            read_sges: None,
            status,
            rnr_count: 0,
        }
    }

    fn completions(q: &Qp) -> Vec<Cqe> {
        std::iter::from_fn(|| q.send_cq.pop_raw())
            .map(|raw| Cqe::decode(&raw).expect("CQE decodes"))
            .collect()
    }

    #[test]
    fn state_cell_transitions_only_from_the_expected_state() {
        let s = StateCell::new(QpState::Init);
        for st in StateCell::ALL {
            s.set(st);
            assert_eq!(s.get(), st);
        }
        s.set(QpState::Rts);
        assert_eq!(s.transition(QpState::Sqd, QpState::Rts), Err(QpState::Rts));
        assert_eq!(s.transition(QpState::Rts, QpState::Sqd), Ok(()));
        assert_eq!(s.get(), QpState::Sqd);
        assert_eq!(s.swap(QpState::Error), QpState::Sqd);
        assert_eq!(s.swap(QpState::Error), QpState::Error);
    }

    #[test]
    fn a_retired_local_request_completes_after_the_remote_one_before_it() {
        let q = qp();
        q.inflight.lock().push_back(entry(Some(0), None));
        assert!(!q.retire(entry(None, Some(0))));
        assert!(
            completions(&q).is_empty(),
            "the SEND in front is not acknowledged yet"
        );
        q.acknowledge(0);
        let done = completions(&q);
        assert_eq!(done.len(), 2);
        assert!(done.iter().all(|c| matches!(c, Cqe::Req { qpn: 7, .. })));
        assert!(q.inflight.lock().is_empty());
    }

    #[test]
    fn a_retired_failure_is_reported_and_completes_in_error() {
        let q = qp();
        assert!(q.retire(entry(None, Some(syndrome::LOCAL_QP_OP_ERR))));
        match completions(&q).as_slice() {
            [Cqe::Err { syndrome: s, .. }] => assert_eq!(*s, syndrome::LOCAL_QP_OP_ERR),
            other => panic!("expected one error CQE, got {other:?}"),
        }
    }
}
