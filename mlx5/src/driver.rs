//! The driver half: implements the verbs provider table. Work requests are encoded
//! as mlx5 WQEs into the SQ/RQ rings followed by a doorbell; completions are decoded
//! from the CQE ring (SIGERR CQEs are consumed here and recorded on the signature
//! MR, as mlx5_ib does with its radix tree of signature mkeys).

use std::collections::HashSet;
use std::sync::Arc;

use crate::sync::Mutex;
use verbs::cm::{CmAddr, CmError, ConnEvents, ConnParam, DisconnectReason, RequestSink};
use verbs::notify::Signal;
use verbs::poll::PollLookup;
use verbs::provider::{ConnectionOps, ContextOps, DeviceAttr, ListenOps, MrKeys};
use verbs::sig::{MrStatusCheck, SigErr, SigErrType};
use verbs::{
    AccessFlags, DmaBuf, QpInitAttr, QpState, RecvWr, Result, SendFlags, SendOp, SendWr,
    VerbsError, WcOpcode, WcStatus, WorkCompletion,
};

use crate::fault::FaultSpec;
use crate::hca::{Cq, Hca, IdMap, Qp, WrMeta};
use crate::layout::{
    self, opcode, sig_syndrome, syndrome, Bsf, Cqe, CtrlSeg, DataSeg, Klm, MkeySeg, RaddrSeg,
    SetPsvSeg, StrideBlockCtrl, StrideBlockEntry, UmrCtrlSeg, WQE_BB,
};
use crate::mr::{Mapping, MkeyKind, Segment};
use crate::requester::ReqEvent;

#[derive(Debug, Default)]
struct SigStatus {
    checked: bool,
    err: Option<SigErr>,
}

/// A soft mlx5 device: the verbs provider table over one software HCA.
#[derive(Debug)]
pub struct Mlx5Device {
    hca: Arc<Hca>,
    pds: Mutex<HashSet<u32>>,
    sig: Mutex<IdMap<SigStatus>>,
}

impl Mlx5Device {
    /// A new device named `name` (faults from `MLX5_SOFT_FAULT` are armed).
    pub fn new(name: &str) -> Arc<Mlx5Device> {
        Arc::new(Mlx5Device {
            hca: Arc::new(Hca::new(name)),
            pds: Mutex::new(HashSet::new()),
            sig: Mutex::new(IdMap::default()),
        })
    }

    /// A verbs context on this device.
    pub fn context(self: &Arc<Self>) -> verbs::Context {
        verbs::Context::open_with(Arc::clone(self) as Arc<dyn ContextOps>)
    }

    /// Arms a fault.
    pub fn inject_fault(&self, f: FaultSpec) {
        self.hca.add_fault(f);
    }

    /// Disarms all faults.
    pub fn clear_faults(&self) {
        self.hca.clear_faults();
    }

    /// Faults still armed.
    pub fn armed_faults(&self) -> Vec<FaultSpec> {
        self.hca.faults.lock().clone()
    }

    fn qp(&self, qpn: u32) -> Result<Arc<Qp>> {
        self.hca.qp(qpn)
    }

    /// Rings `qp`'s doorbell after WQEs were posted. The posting thread executes
    /// them itself when no other thread is at the send queue, as a real HCA starts
    /// on the doorbell write: no thread hop, and the data the poster just wrote is
    /// still in its cache when the gather (or the signature engine's pass over it)
    /// reads it. Otherwise the requester thread, which may have looked at the ring
    /// before these WQEs landed, is told.
    fn doorbell(&self, qp: &Arc<Qp>) {
        let link = qp
            .link
            .lock()
            .as_ref()
            .map(|l| (Arc::clone(&l.sq), l.req.clone()));
        if let Some((sq, req)) = link {
            if !sq.try_execute(&self.hca, qp) {
                let _ = req.send(ReqEvent::Doorbell);
            }
            return;
        }
        // Not connected (error state): the device flushes right away.
        let mut sq = crate::requester::SqState::default();
        crate::requester::process_sq(&self.hca, qp, &mut sq, &mut |_| true);
    }
}

fn perms(a: AccessFlags) -> u8 {
    let mut f = layout::PERM_LOCAL_READ | layout::MKC_ACCESS_MODE_KLMS;
    if a.contains(AccessFlags::LOCAL_WRITE) {
        f |= layout::PERM_LOCAL_WRITE;
    }
    if a.contains(AccessFlags::REMOTE_READ) {
        f |= layout::PERM_REMOTE_READ;
    }
    if a.contains(AccessFlags::REMOTE_WRITE) {
        f |= layout::PERM_REMOTE_WRITE;
    }
    f
}

/// Largest CQ the soft HCA creates (`max_cqe`).
const MAX_CQE: u32 = 1 << 20;

fn bad(msg: &str) -> VerbsError {
    VerbsError::InvalidArgument(msg.to_string())
}

/// One WQE being built: control segment plus body.
struct Wqe {
    bytes: Vec<u8>,
}

impl Wqe {
    fn new() -> Wqe {
        Wqe {
            bytes: vec![0u8; CtrlSeg::SIZE],
        }
    }
    fn seg(&mut self, size: usize) -> &mut [u8] {
        let at = self.bytes.len();
        self.bytes.resize(at + size, 0);
        &mut self.bytes[at..]
    }
    fn finish(mut self, ctrl: CtrlSeg) -> Vec<u8> {
        let ds = self.bytes.len() / layout::WQE_DS;
        CtrlSeg {
            ds: ds as u8,
            ..ctrl
        }
        .encode(&mut self.bytes[..CtrlSeg::SIZE]);
        let padded = self.bytes.len().div_ceil(WQE_BB) * WQE_BB;
        self.bytes.resize(padded, 0);
        self.bytes
    }
}

impl Mlx5Device {
    /// Encodes one send WR as its WQE(s).
    fn encode_wr(&self, qp: &Qp, wr: &SendWr) -> Result<Vec<(CtrlSeg, Vec<u8>)>> {
        let signaled = wr.flags.contains(SendFlags::SIGNALED) || qp.attr.sq_sig_all;
        let mut fm = if signaled { layout::CTRL_CQ_UPDATE } else { 0 };
        if wr.flags.contains(SendFlags::FENCE) {
            fm |= layout::CTRL_FENCE;
        }
        if wr.flags.contains(SendFlags::SOLICITED) {
            fm |= layout::CTRL_SOLICITED;
        }
        let ctrl = |op: u8, imm: u32, fm_ce_se: u8| CtrlSeg {
            opcode: op,
            qpn: qp.qpn,
            fm_ce_se,
            imm,
            ..CtrlSeg::default()
        };
        if wr.sg_list.len() > qp.attr.max_send_sge as usize {
            return Err(bad("gather list longer than max_send_sge"));
        }
        if wr.total_len() > crate::frame::MAX_PAYLOAD as u64 {
            return Err(bad("message larger than the device's max_msg_size"));
        }
        let data = |w: &mut Wqe| {
            for s in &wr.sg_list {
                DataSeg {
                    byte_count: s.length,
                    lkey: s.lkey,
                    addr: s.addr,
                }
                .encode(w.seg(DataSeg::SIZE));
            }
        };
        let mut out = Vec::new();
        match &wr.op {
            SendOp::Send | SendOp::SendWithInv { .. } => {
                let mut w = Wqe::new();
                data(&mut w);
                let (op, imm) = match wr.op {
                    SendOp::SendWithInv { invalidate_rkey } => {
                        (opcode::SEND_INVAL, invalidate_rkey)
                    }
                    _ => (opcode::SEND, 0),
                };
                let c = ctrl(op, imm, fm);
                out.push((c, w.finish(c)));
            }
            SendOp::RdmaWrite { remote_addr, rkey } | SendOp::RdmaRead { remote_addr, rkey } => {
                let mut w = Wqe::new();
                RaddrSeg {
                    raddr: *remote_addr,
                    rkey: *rkey,
                }
                .encode(w.seg(RaddrSeg::SIZE));
                data(&mut w);
                let op = if matches!(wr.op, SendOp::RdmaWrite { .. }) {
                    opcode::RDMA_WRITE
                } else {
                    opcode::RDMA_READ
                };
                let c = ctrl(op, 0, fm);
                out.push((c, w.finish(c)));
            }
            SendOp::LocalInv { key } => {
                let mut w = Wqe::new();
                UmrCtrlSeg {
                    flags: layout::UMR_INLINE,
                    ..Default::default()
                }
                .encode(w.seg(UmrCtrlSeg::SIZE));
                MkeySeg {
                    status: layout::MKEY_STATUS_FREE,
                    ..Default::default()
                }
                .encode(w.seg(MkeySeg::SIZE));
                let c = ctrl(opcode::UMR, *key, fm);
                out.push((c, w.finish(c)));
            }
            SendOp::RegMr { mr, range, access } => {
                let mut w = Wqe::new();
                UmrCtrlSeg {
                    flags: layout::UMR_INLINE,
                    xlt_octowords: 1,
                    ..Default::default()
                }
                .encode(w.seg(UmrCtrlSeg::SIZE));
                MkeySeg {
                    flags: perms(*access),
                    qpn_mkey7_0: 0xffff_ff00 | (mr & 0xff),
                    flags_pd: layout::MKEY_REMOTE_INVAL | qp.pd,
                    start_addr: range.addr,
                    len: u64::from(range.length),
                    xlt_oct_size: 1,
                    ..Default::default()
                }
                .encode(w.seg(MkeySeg::SIZE));
                Klm {
                    bcount: range.length,
                    key: range.lkey,
                    va: range.addr,
                }
                .encode(w.seg(64));
                let c = ctrl(opcode::UMR, *mr, fm);
                out.push((c, w.finish(c)));
            }
            SendOp::RegMrIntegrity {
                mr,
                data,
                prot,
                sig,
                access,
            } => {
                let (psv_mem, psv_wire) = self
                    .hca
                    .mkeys
                    .inspect(*mr, |m| (m.kind == MkeyKind::Sig).then_some(m.psv))
                    .flatten()
                    .ok_or(VerbsError::UnknownHandle {
                        what: "sig mr",
                        id: *mr,
                    })?;
                let iv = sig
                    .interval()
                    .ok_or_else(|| bad("signature attributes without a T10-DIF domain"))?;
                if let (Some(m), Some(w)) = (sig.mem.dif(), sig.wire.dif()) {
                    if m.pi_interval != w.pi_interval {
                        return Err(bad("memory and wire protection intervals differ"));
                    }
                }
                let iv64 = u64::from(iv);
                let blocks = match prot {
                    Some(p) => {
                        if sig.mem.dif().is_none() {
                            return Err(bad("a protection SGE needs a T10-DIF memory domain"));
                        }
                        if u64::from(data.length) % iv64 != 0
                            || u64::from(p.length) < u64::from(data.length) / iv64 * 8
                        {
                            return Err(bad("data is not whole intervals or PI is too short"));
                        }
                        u64::from(data.length) / iv64
                    }
                    None => {
                        let per = if sig.mem.dif().is_some() {
                            iv64 + 8
                        } else {
                            iv64
                        };
                        if u64::from(data.length) % per != 0 {
                            return Err(bad("data is not whole protection intervals"));
                        }
                        u64::from(data.length) / per
                    }
                };
                let wire_len = sig.wire_len(blocks).unwrap_or(0);
                let bsf = Bsf::build(
                    sig.check_mask,
                    &sig.mem,
                    &sig.wire,
                    (blocks * iv64) as u32,
                    psv_mem,
                    psv_wire,
                )
                .ok_or_else(|| bad("protection interval not supported by mlx5 (512 or 4096)"))?;
                {
                    let mut st = self.sig.lock();
                    let s = st.entry(*mr).or_default();
                    if !s.checked {
                        return Err(VerbsError::SigStatusNotChecked { key: *mr });
                    }
                }
                let mut w = Wqe::new();
                let xlt = if prot.is_some() { 3 } else { 1 };
                UmrCtrlSeg {
                    flags: layout::UMR_INLINE,
                    xlt_octowords: xlt,
                    bsf_octowords: layout::MKEY_BSF_OCTO_SIZE,
                    ..Default::default()
                }
                .encode(w.seg(UmrCtrlSeg::SIZE));
                MkeySeg {
                    flags: perms(*access),
                    qpn_mkey7_0: 0xffff_ff00 | (mr & 0xff),
                    flags_pd: layout::MKEY_REMOTE_INVAL | layout::MKEY_BSF_EN | qp.pd,
                    start_addr: data.addr,
                    len: wire_len,
                    bsfs_octo_size: u32::from(layout::MKEY_BSF_OCTO_SIZE),
                    xlt_oct_size: u32::from(xlt),
                    ..Default::default()
                }
                .encode(w.seg(MkeySeg::SIZE));
                let t = w.seg(64);
                match prot {
                    None => Klm {
                        bcount: data.length,
                        key: data.lkey,
                        va: data.addr,
                    }
                    .encode(t),
                    Some(p) => {
                        StrideBlockCtrl {
                            bcount_per_cycle: iv + 8,
                            op: layout::STRIDE_BLOCK_OP,
                            repeat_count: blocks as u32,
                            num_entries: 2,
                        }
                        .encode(t);
                        StrideBlockEntry {
                            stride: iv as u16,
                            bcount: iv as u16,
                            key: data.lkey,
                            va: data.addr,
                        }
                        .encode(&mut t[16..]);
                        StrideBlockEntry {
                            stride: 8,
                            bcount: 8,
                            key: p.lkey,
                            va: p.addr,
                        }
                        .encode(&mut t[32..]);
                    }
                }
                bsf.encode(w.seg(Bsf::SIZE));
                let c = ctrl(opcode::UMR, *mr, 0);
                out.push((c, w.finish(c)));
                for (i, (psv, dom)) in [(psv_mem, &sig.mem), (psv_wire, &sig.wire)]
                    .into_iter()
                    .enumerate()
                {
                    let mut w = Wqe::new();
                    SetPsvSeg::for_domain(psv, dom).encode(w.seg(SetPsvSeg::SIZE));
                    let c = ctrl(opcode::SET_PSV, 0, if i == 1 { fm } else { 0 });
                    out.push((c, w.finish(c)));
                }
                self.sig.lock().entry(*mr).or_default().checked = false;
            }
        }
        Ok(out)
    }
}

fn wc_status(s: u8) -> WcStatus {
    match s {
        syndrome::LOCAL_LENGTH_ERR => WcStatus::LocalLengthErr,
        syndrome::LOCAL_QP_OP_ERR => WcStatus::LocalQpOpErr,
        syndrome::LOCAL_PROT_ERR => WcStatus::LocalProtErr,
        syndrome::WR_FLUSH_ERR => WcStatus::WrFlushErr,
        syndrome::MW_BIND_ERR => WcStatus::MwBindErr,
        syndrome::BAD_RESP_ERR => WcStatus::BadRespErr,
        syndrome::LOCAL_ACCESS_ERR => WcStatus::LocalAccessErr,
        syndrome::REMOTE_INVAL_REQ_ERR => WcStatus::RemoteInvalidReqErr,
        syndrome::REMOTE_ACCESS_ERR => WcStatus::RemoteAccessErr,
        syndrome::REMOTE_OP_ERR => WcStatus::RemoteOpErr,
        syndrome::TRANSPORT_RETRY_EXC_ERR => WcStatus::RetryExceeded,
        syndrome::RNR_RETRY_EXC_ERR => WcStatus::RnrRetryExceeded,
        _ => WcStatus::GeneralErr,
    }
}

/// Decodes a SIGERR CQE the way mlx5_ib's `get_sig_err_item` does.
pub fn sig_err_of(cqe: &Cqe) -> Option<SigErr> {
    let Cqe::SigErr {
        expected_trans_sig,
        actual_trans_sig,
        expected_reftag,
        actual_reftag,
        syndrome,
        mkey,
        err_offset,
        ..
    } = *cqe
    else {
        return None;
    };
    let (err_type, expected, actual) = if syndrome & sig_syndrome::GUARD != 0 {
        (
            SigErrType::BadGuard,
            expected_trans_sig >> 16,
            actual_trans_sig >> 16,
        )
    } else if syndrome & sig_syndrome::REFTAG != 0 {
        (SigErrType::BadRefTag, expected_reftag, actual_reftag)
    } else if syndrome & sig_syndrome::APPTAG != 0 {
        (
            SigErrType::BadAppTag,
            expected_trans_sig & 0xffff,
            actual_trans_sig & 0xffff,
        )
    } else {
        return None;
    };
    Some(SigErr {
        err_type,
        expected,
        actual,
        sig_err_offset: err_offset,
        key: mkey,
    })
}

impl ContextOps for Mlx5Device {
    fn device_name(&self) -> &str {
        &self.hca.name
    }

    fn query_device(&self) -> Result<DeviceAttr> {
        Ok(DeviceAttr {
            name: self.hca.name.clone(),
            max_sge: 16,
            max_qp_wr: 4096,
            max_cqe: MAX_CQE,
            max_msg_size: crate::frame::MAX_PAYLOAD as u64,
            sig_offload: true,
            sig_pipelining: true,
        })
    }

    fn alloc_pd(&self) -> Result<u32> {
        let id = self.hca.alloc_id();
        self.pds.lock().insert(id);
        Ok(id)
    }

    fn dealloc_pd(&self, pd: u32) -> Result<()> {
        if self.pds.lock().remove(&pd) {
            Ok(())
        } else {
            Err(VerbsError::UnknownHandle { what: "pd", id: pd })
        }
    }

    fn reg_mr(
        &self,
        pd: u32,
        buf: Arc<DmaBuf>,
        offset: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<MrKeys> {
        if !self.pds.lock().contains(&pd) {
            return Err(VerbsError::UnknownHandle { what: "pd", id: pd });
        }
        let iova = buf.addr() + offset as u64;
        let seg = Segment { buf, offset, len };
        let key = self.hca.mkeys.create(
            MkeyKind::Direct,
            pd,
            access,
            iova,
            len as u64,
            Some(Mapping::Direct(seg)),
            (0, 0),
        );
        Ok(MrKeys {
            lkey: key,
            rkey: key,
        })
    }

    fn alloc_mr(&self, pd: u32, _max_sge: u32) -> Result<MrKeys> {
        let key =
            self.hca
                .mkeys
                .create(MkeyKind::FastReg, pd, AccessFlags::NONE, 0, 0, None, (0, 0));
        Ok(MrKeys {
            lkey: key,
            rkey: key,
        })
    }

    fn alloc_mr_integrity(&self, pd: u32, max_data_sge: u32, _max_meta_sge: u32) -> Result<MrKeys> {
        // A registration binds one data SGE and at most one PI SGE (each a range of
        // a registered MR), whatever the maxima asked for.
        if max_data_sge == 0 {
            return Err(bad("a signature MR needs at least one data SGE"));
        }
        if !self.pds.lock().contains(&pd) {
            return Err(VerbsError::UnknownHandle { what: "pd", id: pd });
        }
        let psv = (self.hca.alloc_id(), self.hca.alloc_id());
        let key = self
            .hca
            .mkeys
            .create(MkeyKind::Sig, pd, AccessFlags::NONE, 0, 0, None, psv);
        let mut owners = self.hca.psv_owner.lock();
        owners.insert(psv.0, key);
        owners.insert(psv.1, key);
        self.sig.lock().insert(
            key,
            SigStatus {
                checked: true,
                err: None,
            },
        );
        Ok(MrKeys {
            lkey: key,
            rkey: key,
        })
    }

    fn dereg_mr(&self, lkey: u32) -> Result<()> {
        let m = self
            .hca
            .mkeys
            .remove(lkey)
            .ok_or(VerbsError::UnknownHandle {
                what: "lkey",
                id: lkey,
            })?;
        if m.kind == MkeyKind::Sig {
            self.sig.lock().remove(&lkey);
            let mut owners = self.hca.psv_owner.lock();
            owners.remove(&m.psv.0);
            owners.remove(&m.psv.1);
        }
        Ok(())
    }

    fn check_mr_status(&self, lkey: u32, check: MrStatusCheck) -> Result<Option<SigErr>> {
        if check != MrStatusCheck::SIG_STATUS {
            return Err(bad("only SIG_STATUS can be checked"));
        }
        let mut st = self.sig.lock();
        let s = st.get_mut(&lkey).ok_or(VerbsError::UnknownHandle {
            what: "sig mr",
            id: lkey,
        })?;
        s.checked = true;
        Ok(s.err.take())
    }

    fn create_cq(&self, entries: u32, signal: Arc<Signal>) -> Result<u32> {
        // The ring is rounded up to a power of two: an unbounded size would overflow
        // that rounding or ask for gigabytes of CQEs.
        if entries > MAX_CQE {
            return Err(bad("CQ larger than max_cqe"));
        }
        let id = self.hca.alloc_id();
        self.hca
            .cqs
            .write()
            .insert(id, Arc::new(Cq::new(id, entries, signal)));
        Ok(id)
    }

    fn destroy_cq(&self, cq: u32) -> Result<()> {
        self.hca
            .cqs
            .write()
            .remove(&cq)
            .map(|_| ())
            .ok_or(VerbsError::UnknownHandle { what: "cq", id: cq })
    }

    /// A CQ is driven by its consumer when it is the receive CQ of exactly one
    /// connected QP: that QP's receive path then runs where the consumer waits.
    fn cq_poll_source(&self, cq: u32) -> PollLookup {
        let qps = self.hca.qps.read();
        let users: Vec<&Arc<Qp>> = qps
            .values()
            .filter(|qp| qp.recv_cq.id == cq || qp.send_cq.id == cq)
            .collect();
        match users.as_slice() {
            [] => PollLookup::Later,
            [qp] if qp.recv_cq.id == cq => match qp.link.lock().as_ref() {
                Some(l) => PollLookup::Ready(Arc::clone(&l.rx) as _),
                None => PollLookup::Later,
            },
            _ => PollLookup::Never,
        }
    }

    fn poll_cq(&self, cq: u32, out: &mut Vec<WorkCompletion>, max: usize) -> Result<usize> {
        let cq = self
            .hca
            .cqs
            .read()
            .get(&cq)
            .cloned()
            .ok_or(VerbsError::UnknownHandle { what: "cq", id: cq })?;
        if cq.overruns() > 0 {
            return Err(VerbsError::CqOverrun(cq.id));
        }
        let mut n = 0;
        while n < max {
            let Some(raw) = cq.pop_raw() else { break };
            let cqe = match Cqe::decode(&raw) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "undecodable CQE");
                    continue;
                }
            };
            let qpn = match cqe {
                Cqe::SigErr { .. } => {
                    if let Some(e) = sig_err_of(&cqe) {
                        if let Some(s) = self.sig.lock().get_mut(&e.key) {
                            s.err = Some(e);
                        }
                    }
                    continue;
                }
                Cqe::Req { qpn, .. } | Cqe::Resp { qpn, .. } | Cqe::Err { qpn, .. } => qpn,
            };
            let Ok(qp) = self.qp(qpn) else { continue };
            // The WR owning WQE `counter`: its bookkeeping sits at the index of the
            // WR's last WQE, at most one signature registration (6 BBs) ahead.
            let sq_meta = |counter: u16, search: bool| {
                let mut sq = qp.sq.lock();
                let span = if search { 8 } else { 1 };
                for k in 0..span {
                    let idx = ((u32::from(counter) + k) & (sq.bbs - 1)) as usize;
                    if let Some(m) = sq.wr[idx].take() {
                        sq.tail = m.next;
                        return Some(m);
                    }
                }
                None
            };
            let rq_id = |counter: u16| {
                let rq = qp.rq.lock();
                rq.wr_id[(u32::from(counter) & (rq.wqes - 1)) as usize]
            };
            let wc = match cqe {
                Cqe::Req {
                    wqe_counter,
                    byte_cnt,
                    ..
                } => {
                    let Some(m) = sq_meta(wqe_counter, false) else {
                        continue;
                    };
                    WorkCompletion {
                        wr_id: m.wr_id,
                        status: WcStatus::Success,
                        opcode: m.opcode,
                        byte_len: byte_cnt,
                        qp_num: qpn,
                        invalidated_rkey: None,
                        vendor_err: 0,
                    }
                }
                Cqe::Resp {
                    wqe_counter,
                    byte_cnt,
                    inval_rkey,
                    ..
                } => WorkCompletion {
                    wr_id: rq_id(wqe_counter),
                    status: WcStatus::Success,
                    opcode: WcOpcode::Recv,
                    byte_len: byte_cnt,
                    qp_num: qpn,
                    invalidated_rkey: inval_rkey,
                    vendor_err: 0,
                },
                Cqe::Err {
                    responder,
                    syndrome,
                    wqe_counter,
                    ..
                } => {
                    let (wr_id, opcode) = if responder {
                        (rq_id(wqe_counter), WcOpcode::Recv)
                    } else {
                        match sq_meta(wqe_counter, true) {
                            Some(m) => (m.wr_id, m.opcode),
                            None => continue,
                        }
                    };
                    WorkCompletion {
                        wr_id,
                        status: wc_status(syndrome),
                        opcode,
                        byte_len: 0,
                        qp_num: qpn,
                        invalidated_rkey: None,
                        vendor_err: u32::from(syndrome),
                    }
                }
                Cqe::SigErr { .. } => continue,
            };
            out.push(wc);
            n += 1;
        }
        Ok(n)
    }

    fn create_qp(&self, pd: u32, send_cq: u32, recv_cq: u32, attr: &QpInitAttr) -> Result<u32> {
        if !self.pds.lock().contains(&pd) {
            return Err(VerbsError::UnknownHandle { what: "pd", id: pd });
        }
        if attr.max_send_wr == 0
            || attr.max_send_wr > 4096
            || attr.max_recv_wr > 4096
            || attr.max_recv_sge > 16
            || attr.max_send_sge > 16
        {
            return Err(bad("queue sizes must be 1..=4096 WRs and at most 16 SGEs"));
        }
        let cqs = self.hca.cqs.read();
        let scq = cqs
            .get(&send_cq)
            .cloned()
            .ok_or(VerbsError::UnknownHandle {
                what: "cq",
                id: send_cq,
            })?;
        let rcq = cqs
            .get(&recv_cq)
            .cloned()
            .ok_or(VerbsError::UnknownHandle {
                what: "cq",
                id: recv_cq,
            })?;
        drop(cqs);
        let qpn = self.hca.alloc_id() & 0xff_ffff;
        self.hca
            .qps
            .write()
            .insert(qpn, Arc::new(Qp::new(qpn, pd, scq, rcq, attr.clone())));
        Ok(qpn)
    }

    fn destroy_qp(&self, qpn: u32) -> Result<()> {
        let qp = self
            .hca
            .qps
            .write()
            .remove(&qpn)
            .ok_or(VerbsError::UnknownHandle {
                what: "qp",
                id: qpn,
            })?;
        qp.to_error(DisconnectReason::Local);
        if let Some(l) = qp.link.lock().take() {
            let _ = l.req.send(ReqEvent::Stop);
            let _ = l.tx.send(crate::transport::TxItem::Shutdown);
        }
        Ok(())
    }

    fn query_qp_state(&self, qpn: u32) -> Result<QpState> {
        Ok(self.qp(qpn)?.state())
    }

    fn modify_qp_to_error(&self, qpn: u32) -> Result<()> {
        let qp = self.qp(qpn)?;
        qp.to_error(DisconnectReason::Local);
        self.doorbell(&qp);
        Ok(())
    }

    fn set_qp_event_signal(&self, qpn: u32, signal: Arc<Signal>) -> Result<()> {
        *self.qp(qpn)?.events.lock() = Some(signal);
        Ok(())
    }

    fn cancel_posted_send_wrs(&self, qpn: u32, wr_id: u64) -> Result<u32> {
        let qp = self.qp(qpn)?;
        let st = qp.state();
        if st != QpState::Sqd {
            return Err(VerbsError::InvalidQpState { qpn, state: st });
        }
        // In SQD the device has stopped at `dev_ci`: every WQE from there to the
        // producer index is still to be executed. A WR's bookkeeping sits at the
        // index of its last WQE, so WQEs are gathered until that one.
        let mut sq = qp.sq.lock();
        let mut at = sq.dev_ci;
        let mut wr_wqes = Vec::new();
        let mut cancelled = 0;
        while at != sq.pi {
            let mut ctrl = CtrlSeg::decode(&sq.read_bbs(at, 1))
                .map_err(|e| bad(&format!("send queue holds an undecodable WQE: {e}")))?;
            let next = at.wrapping_add(ctrl.num_bbs() as u32);
            ctrl.opcode = opcode::NOP;
            wr_wqes.push((at, ctrl));
            if let Some(m) = sq.wr[(at & (sq.bbs - 1)) as usize] {
                if m.wr_id == wr_id {
                    for (i, c) in wr_wqes.iter() {
                        let mut bb = sq.read_bbs(*i, 1);
                        c.encode(&mut bb[..CtrlSeg::SIZE]);
                        sq.write_bbs(*i, &bb);
                    }
                    cancelled += 1;
                }
                wr_wqes.clear();
            }
            at = next;
        }
        Ok(cancelled)
    }

    fn modify_qp_sqd_to_rts(&self, qpn: u32) -> Result<()> {
        let qp = self.qp(qpn)?;
        qp.state
            .transition(QpState::Sqd, QpState::Rts)
            .map_err(|state| VerbsError::InvalidQpState { qpn, state })?;
        self.doorbell(&qp);
        Ok(())
    }

    fn post_send(&self, qpn: u32, wrs: &[SendWr]) -> Result<()> {
        let qp = self.qp(qpn)?;
        let st = qp.state();
        if !matches!(st, QpState::Rts | QpState::Sqd | QpState::Error) {
            return Err(VerbsError::InvalidQpState { qpn, state: st });
        }
        for wr in wrs {
            let wqes = self.encode_wr(&qp, wr)?;
            let mut sq = qp.sq.lock();
            let need: u32 = wqes.iter().map(|(_, b)| (b.len() / WQE_BB) as u32).sum();
            if sq.pi.wrapping_sub(sq.tail) + need > sq.bbs {
                return Err(VerbsError::QueueFull("send"));
            }
            let count = wqes.len();
            for (i, (mut c, mut bytes)) in wqes.into_iter().enumerate() {
                let at = sq.pi;
                c.wqe_index = at as u16;
                c.ds = CtrlSeg::decode(&bytes).map(|d| d.ds).unwrap_or(1);
                c.encode(&mut bytes[..CtrlSeg::SIZE]);
                sq.write_bbs(at, &bytes);
                let next = at.wrapping_add((bytes.len() / WQE_BB) as u32);
                let idx = (at & (sq.bbs - 1)) as usize;
                sq.wr[idx] = (i + 1 == count).then_some(WrMeta {
                    wr_id: wr.wr_id,
                    opcode: wr.op.wc_opcode(),
                    next,
                });
                sq.pi = next;
            }
        }
        self.doorbell(&qp);
        Ok(())
    }

    fn post_recv(&self, qpn: u32, wrs: &[RecvWr]) -> Result<()> {
        let qp = self.qp(qpn)?;
        {
            let mut rq = qp.rq.lock();
            for wr in wrs {
                if wr.sg_list.len() > qp.attr.max_recv_sge as usize {
                    return Err(bad("scatter list longer than max_recv_sge"));
                }
                if rq.tail.wrapping_sub(rq.head) >= rq.wqes {
                    return Err(VerbsError::QueueFull("receive"));
                }
                let idx = rq.tail & (rq.wqes - 1);
                let at = idx as usize * rq.stride;
                let stride = rq.stride;
                let slot = &mut rq.buf[at..at + stride];
                slot.fill(0);
                for (i, s) in wr.sg_list.iter().enumerate() {
                    DataSeg {
                        byte_count: s.length,
                        lkey: s.lkey,
                        addr: s.addr,
                    }
                    .encode(&mut slot[i * 16..]);
                }
                if wr.sg_list.len() * 16 < stride {
                    DataSeg {
                        byte_count: 0,
                        lkey: DataSeg::INVALID_LKEY,
                        addr: 0,
                    }
                    .encode(&mut slot[wr.sg_list.len() * 16..]);
                }
                rq.wr_id[idx as usize] = wr.wr_id;
                rq.tail = rq.tail.wrapping_add(1);
            }
        }
        if qp.state() == QpState::Error {
            qp.flush_rq();
        }
        Ok(())
    }

    fn cm_listen(
        &self,
        addr: &CmAddr,
        requests: RequestSink,
    ) -> Result<Box<dyn ListenOps>, CmError> {
        crate::fabric::listen(&self.hca, addr, requests)
    }

    fn cm_connect(
        &self,
        qpn: u32,
        addr: &CmAddr,
        param: &ConnParam,
        events: Arc<ConnEvents>,
    ) -> Result<(Vec<u8>, Box<dyn ConnectionOps>), CmError> {
        crate::fabric::connect(&self.hca, qpn, addr, param, events)
    }
}
