//! One iSER connection, from the CM connect request to disconnect: the private-data
//! check and accept, the login over SENDs (one login receive buffer; the full receive
//! ring is posted before the final Login Response), then the full feature phase.
//!
//! One receive path reads the receive CQ and dispatches: SCSI commands are started in
//! CmdSN order, each as a task holding a command slot of [`super::io`] (as many slots
//! as the session's queue depth), and may complete out of order; unsolicited Data-Out
//! is routed by ITT to its command's task. NOP, Text, task management and Logout are
//! answered by the receive path (task management after the commands it names
//! answered, Logout after all of them). Every SEND is stamped with StatSN, ExpCmdSN and
//! MaxCmdSN under the lock it is queued under, so StatSN follows send order; the queued
//! work requests of all commands go out together once per turn of the runtime.
//! Commands on RAM LUNs run on the connection's runtime; others on the blocking pool.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use iscsi::codec::Action;
use iscsi::iser::{
    target_plan, IserCmHdr, IserControl, IserHeader, IserMessage, RemoteBuffer, ISER_HEADER_LEN,
};
use iscsi::login::{TargetLogin, TargetLoginConfig, TargetStep};
use iscsi::negotiate::{NegotiatedParams, SessionType};
use iscsi::pdu::{
    reject_pdu, DataOut, Header, LogoutReason, LogoutRequest, LogoutResponseCode, NopIn, NopOut,
    PduLimits, RejectReason, Residual, Role, ScsiCommand, ScsiResponse, TextRequest, TextResponse,
    TmfFunction, TmfRequest, TmfResponse, TmfResponseCode, BHS_LEN, RESERVED_TAG,
};
use iscsi::text::{split_text, TextKeys};
use iscsi::{Codec, Pdu};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::{Id as TaskId, JoinError, JoinSet};
use verbs::cm::{CmConnection, ConnectRequest};
use verbs::{Cq, SendFlags, SendWr, WorkCompletion};

use super::adapter::{self, IserLoginPolicy};
use super::io::{
    self, clip, recv_slot_len, CmdSlot, Fabric, Lease, LocalView, Pending, Poller, Pool, RecvRing,
    SendBuf, SigFallback, LOGIN_DATA, LOGIN_WR, MAX_CHAIN,
};
use super::{IserContext, IserError};
use crate::device::ProtPlan;
use crate::registry::{ConnectionInfo, Session};
use crate::service::{Completion, LunSummary, Nexus, ResetScope, ScsiService, Transfer};
use crate::session::lun::{execute_into_on, execute_on, illegal_request, lun_number};
use crate::session::task::{logout_response, residual};
use crate::stats::IoCounters;
use iscsi::seq::{CmdVerdict, CmdWindow, Sn};

/// How long one login PDU may take to arrive.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long unsolicited Data-Out of one command may take to arrive.
const DATA_OUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Receive buffers beyond the queue depth, for immediate PDUs (NOP-Out, TMF, Logout).
const EXTRA_RECVS: u32 = 4;
/// Largest RDMA READ/WRITE the target issues.
const MAX_RDMA_OP: u32 = 1 << 20;
/// Receive completions taken from the CQ at once.
const RECV_BATCH: usize = 16;

/// The CM private data the target answers with: ZBVA_NOT_SUP, and SEND_W_INV_NOT_SUP
/// when it will not invalidate the initiator's STags (the initiator asked so).
pub fn accept_private_data(initiator: &IserCmHdr) -> [u8; 4] {
    let h = IserCmHdr {
        zbva_not_supported: true,
        send_w_inv_not_supported: initiator.send_w_inv_not_supported,
    };
    let mut out = [0u8; 4];
    out.copy_from_slice(&h.to_bytes(&()));
    out
}

/// Serve one connect request until the connection ends. Never panics on peer input.
pub async fn serve(
    req: ConnectRequest,
    device: verbs::Context,
    portal: String,
    ctx: Arc<IserContext>,
) {
    let peer = req.peer().to_owned();
    match serve_inner(req, device, portal, ctx).await {
        Ok(()) => tracing::debug!(%peer, "iSER connection closed"),
        Err(IserError::Closed) => tracing::debug!(%peer, "iSER connection closed by the peer"),
        Err(e) => tracing::info!(%peer, error = %e, "iSER connection ended"),
    }
}

async fn serve_inner(
    req: ConnectRequest,
    device: verbs::Context,
    portal: String,
    ctx: Arc<IserContext>,
) -> Result<(), IserError> {
    let ours_on_reject = [0x80u8, 0, 0, 0];
    let hdr = match IserCmHdr::from_private_data(req.private_data()) {
        Ok(h) if h.zbva_not_supported => h,
        Ok(_) => {
            tracing::info!(
                peer = req.peer(),
                "rejecting iSER connect: initiator wants zero-based VAs"
            );
            req.reject(&ours_on_reject)?;
            return Ok(());
        }
        Err(e) => {
            tracing::info!(peer = req.peer(), error = %e, "rejecting iSER connect: bad iser_cm_hdr");
            req.reject(&ours_on_reject)?;
            return Ok(());
        }
    };
    let peer = req.peer().to_owned();
    let depth = ctx.policy.queue_depth.max(1);
    let fab = Arc::new(Fabric::new(&device, depth + EXTRA_RECVS)?);
    let _poller = Poller::start(&fab);
    let login_ring = RecvRing::new(&fab.pd, 1, recv_slot_len(LOGIN_DATA as u32))?;
    let mut wr = login_ring.recv_wr(0);
    wr.wr_id = LOGIN_WR;
    fab.qp.post_recv_one(wr)?;
    let send_len = ISER_HEADER_LEN
        + BHS_LEN
        + io::AHS_ROOM
        + (ctx.limits.initiator_recv_data_segment_length as usize).max(LOGIN_DATA)
        + 4;
    let send = SendBuf::new(&fab.pd, send_len)?;
    let cm = req.accept(&fab.qp, &accept_private_data(&hdr))?;
    let send_inv = !hdr.send_w_inv_not_supported;

    let Some(logged) = login(&fab, &login_ring, &send, &cm, &ctx, &peer, &portal).await? else {
        cm.disconnect();
        return Ok(());
    };
    drop(login_ring);
    drop(send);
    let LoggedIn {
        params,
        session,
        nexus,
        target,
        cid,
        exp_cmd_sn,
        stat_sn,
        ring,
    } = logged;
    let service = target
        .as_deref()
        .and_then(|t| ctx.registry.target(t))
        .map(|t| t.service.clone());
    let lun_counters = target
        .as_deref()
        .and_then(|t| ctx.registry.target(t))
        .map(|t| t.counters.clone())
        .unwrap_or_default();
    let session_counters: Arc<[Arc<IoCounters>]> = Arc::from([session.counters.clone()]);
    let luns: HashMap<u64, LunView> = service
        .as_ref()
        .map(|s| {
            s.luns()
                .into_iter()
                .map(|l| {
                    let mut counters = vec![session.counters.clone()];
                    counters.extend(lun_counters.get(&l.lun).cloned());
                    let app_tag = target
                        .as_ref()
                        .and_then(|t| ctx.app_tags.get(&(t.clone(), l.lun)).copied())
                        .unwrap_or(0);
                    let view = LunView {
                        summary: Arc::new(l),
                        app_tag,
                        counters: Arc::from(counters),
                    };
                    (view.summary.lun, view)
                })
                .collect()
        })
        .unwrap_or_default();
    let sends = (0..depth + EXTRA_RECVS)
        .map(|_| SendBuf::new(&fab.pd, send_len))
        .collect::<Result<Vec<_>, _>>()?;
    let slots = (0..depth)
        .map(|_| CmdSlot::new(&fab.pd))
        .collect::<Result<Vec<_>, _>>()?;
    let sh = Arc::new(Shared {
        fab: fab.clone(),
        sends: Pool::new(sends),
        slots: Pool::new(slots),
        sn: Mutex::new(SnState {
            stat_sn,
            window: CmdWindow::new(exp_cmd_sn, depth),
        }),
        params,
        session: session.clone(),
        nexus,
        target,
        service,
        session_counters,
        luns,
        send_inv,
        ctx: ctx.clone(),
    });
    let mut c = Conn {
        sh,
        ring,
        cid,
        depth,
        held: BTreeMap::new(),
        tasks: JoinSet::new(),
        running: HashMap::new(),
        data_out: HashMap::new(),
        text_pending: HashMap::new(),
        next_ttt: 1,
        closing: false,
    };
    let r = c.full_feature(&cm).await;
    // Disconnect: flush everything posted, end the command tasks; MRs and the QP are
    // freed when the last task let go of them.
    let _ = fab.qp.to_error();
    cm.disconnect();
    c.tasks.shutdown().await;
    ctx.registry.close_session(&session);
    if let Some(s) = &c.sh.service {
        s.nexus_lost(&c.sh.nexus);
    }
    r
}

struct LoggedIn {
    params: NegotiatedParams,
    session: Arc<Session>,
    nexus: Nexus,
    target: Option<String>,
    cid: u16,
    exp_cmd_sn: u32,
    stat_sn: u32,
    ring: RecvRing,
}

fn random_fill(buf: &mut [u8]) {
    if getrandom::getrandom(buf).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
}

/// Waits for one receive completion; returns (slot, bytes received).
async fn next_recv(cq: &Cq, timeout: Option<Duration>) -> Result<(u64, usize), IserError> {
    let wc = match timeout {
        Some(t) => tokio::time::timeout(t, cq.next())
            .await
            .map_err(|_| IserError::Timeout("receive"))??,
        None => cq.next().await?,
    };
    received(&wc)
}

/// The receive slot and length of a receive completion, or why the receive failed.
fn received(wc: &WorkCompletion) -> Result<(u64, usize), IserError> {
    if wc.status == verbs::WcStatus::WrFlushErr {
        return Err(IserError::Closed);
    }
    if !wc.is_ok() {
        return Err(IserError::Completion {
            wr_id: wc.wr_id,
            what: "receive",
            status: wc.status,
        });
    }
    Ok((wc.wr_id, wc.byte_len as usize))
}

/// One iSER SEND of `pdu` (optionally invalidating the initiator's `inv` STag).
async fn send_pdu(
    fab: &Fabric,
    send: &SendBuf,
    mut before: Vec<SendWr>,
    pdu: Pdu,
    inv: Option<u32>,
) -> Result<(), IserError> {
    let msg = IserMessage {
        header: IserHeader::Control(IserControl::default()),
        pdu: Some(pdu),
    };
    let bytes = msg.to_bytes(&PduLimits {
        max_recv_data_segment_length: u32::MAX,
    });
    let sge = send.load(&bytes)?;
    before.push(match inv {
        Some(rkey) => SendWr::send_with_inv(0, sge, rkey),
        None => SendWr::send(0, sge),
    });
    fab.run(before, "SEND").await
}

async fn login(
    fab: &Fabric,
    login_ring: &RecvRing,
    send: &SendBuf,
    cm: &CmConnection,
    ctx: &IserContext,
    peer: &str,
    portal: &str,
) -> Result<Option<LoggedIn>, IserError> {
    let mut random = [0u8; 37];
    random_fill(&mut random);
    let cfg = TargetLoginConfig {
        portal_group_tag: ctx.policy.tpgt,
        initial_stat_sn: u32::from_be_bytes([0, random[0], random[1], random[2]]),
        queue_depth: ctx.policy.queue_depth.max(1),
        new_tsih: ctx.registry.reserve_tsih(),
        chap_id: random[3],
        chap_challenge: random[5..].to_vec(),
        ..TargetLoginConfig::default()
    };
    let policy = IserLoginPolicy {
        inner: &ctx.policy,
        limits: ctx.limits,
    };
    let mut machine = TargetLogin::new(cfg);
    let limits = PduLimits {
        max_recv_data_segment_length: LOGIN_DATA as u32,
    };
    loop {
        let (slot, len) = tokio::select! {
            r = next_recv(&fab.recv_cq, Some(LOGIN_TIMEOUT)) => r?,
            _ = cm.disconnected() => return Err(IserError::Closed),
        };
        if slot != LOGIN_WR {
            return Err(IserError::Protocol(
                "unexpected receive during login".into(),
            ));
        }
        let bytes = login_ring.take(0, len)?;
        let pdu = match IserMessage::decode(&bytes, &limits) {
            Ok(IserMessage {
                header: IserHeader::Control(_),
                pdu: Some(p),
            }) => p,
            Ok(_) => {
                tracing::info!(%peer, "iSER Hello or HelloReply during login; closing");
                return Ok(None);
            }
            Err(e) => {
                tracing::info!(%peer, error = %e, "malformed PDU during login; closing");
                return Ok(None);
            }
        };
        let Ok(step) = machine.handle_request(&pdu, &policy) else {
            return Ok(None);
        };
        match step {
            TargetStep::Continue(resp) => {
                let mut wr = login_ring.recv_wr(0);
                wr.wr_id = LOGIN_WR;
                fab.qp.post_recv_one(wr)?;
                send_pdu(fab, send, Vec::new(), resp, None).await?;
            }
            TargetStep::Failed { response, error } => {
                tracing::info!(%peer, %error, "iSER login refused");
                send_pdu(fab, send, Vec::new(), response, None).await?;
                return Ok(None);
            }
            TargetStep::Complete { response, outcome } => {
                let p = &outcome.params;
                if p.session_type == SessionType::Normal && !p.rdma_extensions {
                    tracing::info!(%peer, "normal session over iSER without RDMAExtensions=Yes; closing");
                    return Ok(None);
                }
                let data = p.target_recv_data_segment_length.max(LOGIN_DATA as u32);
                let depth = ctx.policy.queue_depth.max(1) + EXTRA_RECVS;
                let ring = RecvRing::new(&fab.pd, depth as usize, recv_slot_len(data))?;
                // The full ring goes up before the final Login Response, so the first
                // command cannot meet an empty receive queue.
                ring.post_all(&fab.qp)?;
                let info = ConnectionInfo {
                    cid: outcome.cid,
                    peer: peer.to_owned(),
                    portal: format!("iser:{portal}"),
                    digests: (false, false),
                };
                let session = ctx.registry.open_session(
                    outcome.tsih,
                    &outcome.initiator_name,
                    outcome.isid.0,
                    outcome.target_name.as_deref(),
                    info,
                );
                send_pdu(fab, send, Vec::new(), response, None).await?;
                tracing::info!(
                    %peer,
                    initiator = %outcome.initiator_name,
                    target = outcome.target_name.as_deref().unwrap_or("(discovery)"),
                    tsih = session.tsih,
                    target_recv = p.target_recv_data_segment_length,
                    initiator_recv = p.initiator_recv_data_segment_length,
                    "iSER login complete"
                );
                let nexus = Nexus {
                    initiator: outcome.initiator_name.clone(),
                    isid: outcome.isid.0,
                    tsih: session.tsih,
                };
                return Ok(Some(LoggedIn {
                    params: outcome.params.clone(),
                    session,
                    nexus,
                    target: outcome.target_name.clone(),
                    cid: outcome.cid,
                    exp_cmd_sn: outcome.exp_cmd_sn,
                    stat_sn: outcome.next_stat_sn,
                    ring,
                }));
            }
        }
    }
}

/// A received control-type message: the iSER header and its PDU.
#[derive(Debug)]
struct Msg {
    iser: IserControl,
    pdu: Pdu,
}

/// The command slot of a pipelined read, released with its chain: the signature
/// MR's status is read once the chain completed (every use of a signature MR is
/// followed by a status check; a failure was answered by the fallback, which read
/// it first), then the slot goes back to its pool.
struct CheckedSlot {
    lease: Lease<CmdSlot>,
    itt: u32,
}

impl Drop for CheckedSlot {
    fn drop(&mut self) {
        let status = self.lease.get().and_then(io::sig_status);
        match status {
            Ok(None) => {}
            Ok(Some(e)) => tracing::error!(
                itt = self.itt,
                offset = e.sig_err_offset,
                "signature error found after a pipelined response completed"
            ),
            Err(e) => tracing::debug!(itt = self.itt, error = %e, "signature status unread"),
        }
    }
}

/// What a command's data phases moved, for its counters and residual.
#[derive(Debug, Clone, Copy)]
struct Moved {
    /// Data-In bytes the device server produced (wire view).
    data_in: u64,
    /// Data-In bytes sent to the initiator.
    sent: u32,
    /// Data-Out bytes received.
    data_out: u32,
    /// Data-Out bytes the CDB describes.
    out_len: u32,
}

impl Moved {
    /// A command answered before any data moved.
    fn out_only(out_len: u32) -> Moved {
        Moved {
            data_in: 0,
            sent: 0,
            data_out: 0,
            out_len,
        }
    }
}

/// StatSN and the CmdSN window, changed together with the SEND they stamp.
struct SnState {
    stat_sn: u32,
    window: CmdWindow,
}

/// What the receive path and the command tasks of one connection share.
struct Shared {
    fab: Arc<Fabric>,
    sends: Arc<Pool<SendBuf>>,
    slots: Arc<Pool<CmdSlot>>,
    sn: Mutex<SnState>,
    params: NegotiatedParams,
    session: Arc<Session>,
    nexus: Nexus,
    target: Option<String>,
    service: Option<Arc<dyn ScsiService>>,
    /// The session's I/O counters (commands to no LUN).
    session_counters: Arc<[Arc<IoCounters>]>,
    /// The target's LUNs as this connection sees them.
    luns: HashMap<u64, LunView>,
    send_inv: bool,
    ctx: Arc<IserContext>,
}

/// What a connection keeps of one LUN of its target, looked up per command.
struct LunView {
    summary: Arc<LunSummary>,
    /// The application tag the LUN's INSERT policy stamps (0 when none is set).
    app_tag: u16,
    /// The session's and the LUN's I/O counters.
    counters: Arc<[Arc<IoCounters>]>,
}

/// The receive path of one connection.
struct Conn {
    sh: Arc<Shared>,
    ring: RecvRing,
    cid: u16,
    /// Commands the session may queue (the window's depth).
    depth: u32,
    /// Commands received ahead of ExpCmdSN, by CmdSN.
    held: BTreeMap<u32, Msg>,
    /// The running SCSI commands.
    tasks: JoinSet<Result<(), IserError>>,
    /// ITT and LUN field of each running command, by task.
    running: HashMap<TaskId, (u32, u64)>,
    /// Where unsolicited Data-Out goes, by the ITT of the command collecting it.
    data_out: HashMap<u32, mpsc::UnboundedSender<Msg>>,
    text_pending: HashMap<u32, Vec<Vec<u8>>>,
    next_ttt: u32,
    closing: bool,
}

/// What a received message turned into.
enum Received {
    Msg(Msg),
    /// Malformed: answered with a Reject (or the connection must close).
    Rejected,
}

impl Conn {
    async fn full_feature(&mut self, cm: &CmConnection) -> Result<(), IserError> {
        let mut closed = self.sh.session.closed();
        let mut shutdown = self.sh.ctx.shutdown.clone();
        // Receive completions are taken in batches: the other events are looked at
        // once per batch rather than once per message.
        let mut recvs: VecDeque<WorkCompletion> = VecDeque::with_capacity(RECV_BATCH);
        let mut batch = Vec::with_capacity(RECV_BATCH);
        while !self.closing {
            let Some(wc) = recvs.pop_front() else {
                // The answers of the commands just run go out now.
                self.sh.fab.ring_now();
                tokio::select! {
                    r = self.sh.fab.recv_cq.next_batch(&mut batch, RECV_BATCH) => {
                        r?;
                        recvs.extend(batch.drain(..));
                    }
                    Some(t) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                        self.finished(t)?;
                    }
                    _ = cm.disconnected() => return Err(IserError::Closed),
                    r = closed.changed() => {
                        if r.is_err() || *closed.borrow() {
                            tracing::debug!(tsih = self.sh.session.tsih, "session closed");
                            return Ok(());
                        }
                    }
                    r = shutdown.changed() => {
                        if r.is_err() || *shutdown.borrow() {
                            return Ok(());
                        }
                    }
                }
                continue;
            };
            let (slot, len) = received(&wc)?;
            match self.receive(slot, len).await? {
                Received::Msg(m) => self.on_msg(m).await?,
                Received::Rejected => {}
            }
        }
        Ok(())
    }

    /// Copies a receive out of its slot, reposts the slot, and decodes it.
    async fn receive(&mut self, slot: u64, len: usize) -> Result<Received, IserError> {
        let slot = usize::try_from(slot).unwrap_or(usize::MAX);
        let bytes = self.ring.take(slot, len)?;
        self.sh.fab.qp.post_recv_one(self.ring.recv_wr(slot))?;
        let limits = self.sh.params.recv_limits(Role::Target);
        match IserMessage::decode(&bytes, &limits) {
            Ok(IserMessage {
                header: IserHeader::Control(iser),
                pdu: Some(pdu),
            }) => Ok(Received::Msg(Msg { iser, pdu })),
            Ok(_) => Err(IserError::Protocol(
                "iSER Hello in full feature phase".into(),
            )),
            Err(e) => {
                let Some(bhs) = bytes
                    .get(ISER_HEADER_LEN..ISER_HEADER_LEN + BHS_LEN)
                    .and_then(|b| <[u8; BHS_LEN]>::try_from(b).ok())
                else {
                    return Err(IserError::Protocol(format!("short iSER message: {e}")));
                };
                // A SEND delimits its PDU, so framing is never lost over iSER: every
                // malformed PDU with a whole BHS is answered with a Reject and the
                // connection carries on.
                let reason = match e.action() {
                    Action::Reject(reason) => reason,
                    Action::CloseConnection => RejectReason::ProtocolError,
                };
                tracing::debug!(error = %e, ?reason, "malformed PDU; Reject");
                self.reject(reason, &bhs).await?;
                Ok(Received::Rejected)
            }
        }
    }

    /// Stamps StatSN/ExpCmdSN/MaxCmdSN and sends `pdu` as one SEND.
    async fn send(&self, pdu: Pdu, inv: Option<u32>) -> Result<(), IserError> {
        self.sh.send(pdu, inv).await
    }

    async fn reject(&self, reason: RejectReason, bhs: &[u8; BHS_LEN]) -> Result<(), IserError> {
        self.sh.reject(reason, bhs).await
    }
}

impl Shared {
    /// Stamps StatSN/ExpCmdSN/MaxCmdSN and sends `pdu` as one SEND.
    async fn send(&self, pdu: Pdu, inv: Option<u32>) -> Result<(), IserError> {
        self.send_after(DataIn::default(), pdu, inv).await
    }

    /// Like [`Shared::send`], with `before` (Data-In RDMA WRITEs) posted ahead of the
    /// SEND in one chain: RC executes them in order, so the data is placed before
    /// the initiator sees the response. The PDU is stamped and the chain posted under
    /// the StatSN lock; its completions are awaited after the lock is released.
    /// With a pipelined check the response is posted with a fence right behind the
    /// Data-In, and a fallback that rewrites it, same StatSN, as CHECK CONDITION.
    async fn send_after(
        &self,
        data_in: DataIn,
        pdu: Pdu,
        inv: Option<u32>,
    ) -> Result<(), IserError> {
        match self.post_after(data_in, pdu, inv, None).await? {
            Some(pending) => pending.wait("SEND").await,
            None => Ok(()),
        }
    }

    /// Posts what [`Shared::send_after`] sends. With `hold` (what the chain uses,
    /// such as the command's slot) nobody waits: `hold`, the send buffer and the
    /// send-queue credits are released when the chain completes.
    async fn post_after(
        &self,
        data_in: DataIn,
        mut pdu: Pdu,
        inv: Option<u32>,
        hold: Option<Box<dyn Send>>,
    ) -> Result<Option<Pending>, IserError> {
        let DataIn {
            wrs: mut before,
            mut check,
        } = data_in;
        if before.len() >= MAX_CHAIN {
            // Too long for one chain: the data go first, then the response alone.
            self.fab
                .run(std::mem::take(&mut before), "RDMA WRITE (Data-In)")
                .await?;
        }
        let buf = self.sends.take().await?;
        let credits = self.fab.credits(before.len() + 1).await?;
        let pending = {
            let mut guard = self.sn.lock();
            let sn = &mut *guard;
            let (exp, max) = (sn.window.exp_cmd_sn(), sn.window.max_cmd_sn());
            let advance = |sn: &mut u32| {
                let s = *sn;
                *sn = sn.wrapping_add(1);
                s
            };
            match &mut pdu.header {
                Header::ScsiResponse(h) => {
                    h.stat_sn = advance(&mut sn.stat_sn);
                    (h.exp_cmd_sn, h.max_cmd_sn) = (exp, max);
                }
                Header::TmfResponse(h) => {
                    h.stat_sn = advance(&mut sn.stat_sn);
                    (h.exp_cmd_sn, h.max_cmd_sn) = (exp, max);
                }
                Header::TextResponse(h) => {
                    h.stat_sn = advance(&mut sn.stat_sn);
                    (h.exp_cmd_sn, h.max_cmd_sn) = (exp, max);
                }
                Header::LogoutResponse(h) => {
                    h.stat_sn = advance(&mut sn.stat_sn);
                    (h.exp_cmd_sn, h.max_cmd_sn) = (exp, max);
                }
                Header::Reject(h) => {
                    h.stat_sn = advance(&mut sn.stat_sn);
                    (h.exp_cmd_sn, h.max_cmd_sn) = (exp, max);
                }
                Header::NopIn(h) => {
                    // A NOP-In answering a NOP-Out advances StatSN; an unsolicited one not.
                    h.stat_sn = if h.itt != RESERVED_TAG {
                        advance(&mut sn.stat_sn)
                    } else {
                        sn.stat_sn
                    };
                    (h.exp_cmd_sn, h.max_cmd_sn) = (exp, max);
                }
                _ => {}
            }
            let inv = inv.filter(|_| self.send_inv);
            let msg = IserMessage {
                header: IserHeader::Control(IserControl::default()),
                pdu: Some(pdu),
            };
            let bytes = msg.to_bytes(&PduLimits {
                max_recv_data_segment_length: u32::MAX,
            });
            let send_buf = buf.get()?;
            let sge = send_buf.load(&bytes)?;
            let response = move |sge| match inv {
                Some(rkey) => SendWr::send_with_inv(0, sge, rkey),
                None => SendWr::send(0, sge),
            };
            let fallback = match (check.take(), &msg.pdu) {
                (
                    Some(c),
                    Some(Pdu {
                        header: Header::ScsiResponse(h),
                        ..
                    }),
                ) => {
                    let (h, send_buf) = (*h, send_buf.clone());
                    Some(SigFallback {
                        sig_lkey: c.sig_lkey,
                        respond: Box::new(move |e| {
                            let (status, sense) = (c.on_error)(e);
                            let msg = IserMessage {
                                header: IserHeader::Control(IserControl::default()),
                                pdu: Some(with_sense(&h, status, &sense)),
                            };
                            let bytes = msg.to_bytes(&PduLimits {
                                max_recv_data_segment_length: u32::MAX,
                            });
                            Ok(response(send_buf.load(&bytes)?))
                        }),
                    })
                }
                _ => None,
            };
            let buf: Box<dyn Send> = Box::new(buf);
            match (fallback, hold) {
                (Some(f), Some(hold)) => {
                    let mut wr = response(sge);
                    wr.flags = wr.flags | SendFlags::FENCE;
                    before.push(wr);
                    self.fab
                        .post_pipelined(before, credits, f, Some(Box::new((hold, buf))))?;
                    None
                }
                (Some(f), None) => {
                    let mut wr = response(sge);
                    wr.flags = wr.flags | SendFlags::FENCE;
                    before.push(wr);
                    self.fab
                        .post_pipelined(before, credits, f, None)?
                        .map(|p| p.holding(buf))
                }
                (None, Some(hold)) => {
                    before.push(response(sge));
                    self.fab
                        .post_released(before, credits, Box::new((hold, buf)))?;
                    None
                }
                (None, None) => {
                    before.push(response(sge));
                    Some(self.fab.post_batched(before, credits)?.holding(buf))
                }
            }
        };
        Ok(pending)
    }

    async fn reject(&self, reason: RejectReason, bhs: &[u8; BHS_LEN]) -> Result<(), IserError> {
        let pdu = reject_pdu(reason, bhs, 0, 0, 0);
        self.send(pdu, None).await
    }
}

impl Conn {
    /// CmdSN ordering, then dispatch; commands held ahead of ExpCmdSN follow once
    /// the gap closes. A delivered command's slot of the window is released when it
    /// is delivered (its task is bounded by the command slots instead), so every
    /// response carries MaxCmdSN = ExpCmdSN + queue depth - 1.
    async fn on_msg(&mut self, msg: Msg) -> Result<(), IserError> {
        let h = &msg.pdu.header;
        let Some(sn) = h.cmd_sn() else {
            return self.dispatch(msg).await;
        };
        let immediate = h.immediate();
        let verdict = {
            let mut s = self.sh.sn.lock();
            let v = s.window.check(sn, immediate);
            if v == CmdVerdict::Deliver && !immediate {
                s.window.complete();
            }
            v
        };
        match verdict {
            CmdVerdict::Deliver => {
                self.dispatch(msg).await?;
                loop {
                    let next = {
                        let mut s = self.sh.sn.lock();
                        let exp = s.window.exp_cmd_sn();
                        match self.held.remove(&exp) {
                            Some(next) if s.window.check(exp, false) == CmdVerdict::Deliver => {
                                s.window.complete();
                                Some(next)
                            }
                            Some(_) => continue,
                            None => None,
                        }
                    };
                    match next {
                        Some(next) => self.dispatch(next).await?,
                        None => break,
                    }
                }
            }
            CmdVerdict::Hold => {
                if self.held.len() < self.depth as usize {
                    self.held.insert(sn, msg);
                }
            }
            CmdVerdict::Drop => {
                tracing::debug!(
                    cmd_sn = sn,
                    exp = self.sh.sn.lock().window.exp_cmd_sn(),
                    "CmdSN outside the window; ignored"
                );
            }
        }
        Ok(())
    }

    async fn dispatch(&mut self, msg: Msg) -> Result<(), IserError> {
        let bhs = msg.pdu.bhs_bytes();
        if let Header::DataOut(d) = &msg.pdu.header {
            // Unsolicited Data-Out goes to the task of the command collecting it.
            let itt = d.itt;
            if d.ttt == RESERVED_TAG {
                if let Some(tx) = self.data_out.get(&itt) {
                    match tx.send(msg) {
                        Ok(()) => return Ok(()),
                        Err(_) => {
                            self.data_out.remove(&itt);
                        }
                    }
                }
            }
            // Solicited data moves by RDMA READ; anything else names no task
            // awaiting data.
            return self.reject(RejectReason::ProtocolError, &bhs).await;
        }
        match msg.pdu.header {
            Header::ScsiCommand(cmd) => self.spawn_command(msg.iser, cmd, msg.pdu.data).await,
            Header::NopOut(n) => self.on_nop_out(n, msg.pdu.data).await,
            Header::TmfRequest(t) => {
                // The commands the function names answer first: ABORT TASK waits for
                // its task, the task set and LUN functions for the LUN's commands.
                let (rtt, lun) = (t.referenced_task_tag, t.lun);
                match t.function {
                    TmfFunction::AbortTask => self.wait_for(|itt, _| itt == rtt).await?,
                    TmfFunction::AbortTaskSet
                    | TmfFunction::ClearTaskSet
                    | TmfFunction::LogicalUnitReset => self.wait_for(|_, l| l == lun).await?,
                    _ => self.wait_for(|_, _| true).await?,
                }
                self.on_tmf(t).await
            }
            Header::TextRequest(t) => self.on_text(t, &msg.pdu.data).await,
            Header::LogoutRequest(l) => {
                self.wait_for(|_, _| true).await?;
                self.on_logout(l).await
            }
            Header::SnackRequest(_) => self.reject(RejectReason::SnackReject, &bhs).await,
            _ => self.reject(RejectReason::CommandNotSupported, &bhs).await,
        }
    }

    /// Runs `cmd` in place, or as a task once it has to wait; one that may receive
    /// unsolicited Data-Out gets a route for it by ITT. Commands waiting for a slot
    /// are bounded too.
    async fn spawn_command(
        &mut self,
        iser: IserControl,
        cmd: ScsiCommand,
        immediate: Vec<u8>,
    ) -> Result<(), IserError> {
        for _ in 0..=self.depth {
            if self.tasks.len() < 2 * self.depth as usize {
                break;
            }
            if let Some(r) = self.tasks.join_next_with_id().await {
                self.finished(r)?;
            }
        }
        let route = if cmd.write && !self.sh.params.initial_r2t && !cmd.final_ {
            self.data_out.retain(|_, tx| !tx.is_closed());
            let (tx, rx) = mpsc::unbounded_channel();
            self.data_out.insert(cmd.itt, tx);
            Some(rx)
        } else {
            None
        };
        let sh = self.sh.clone();
        let (itt, lun) = (cmd.itt, cmd.lun);
        let mut run = Box::pin(async move { sh.run_command(iser, cmd, immediate, route).await });
        // Run to the end in place when nothing makes the command wait (an in-memory
        // read: its answer is posted, and its slot released when that completes),
        // which saves a task per command. Otherwise it goes on as a task of its own,
        // whose first poll registers the wakers this one could not.
        let mut cx = Context::from_waker(Waker::noop());
        if let Poll::Ready(r) = run.as_mut().poll(&mut cx) {
            return r;
        }
        let task = self.tasks.spawn(run);
        self.running.insert(task.id(), (itt, lun));
        Ok(())
    }

    /// Books a finished command task; one that failed ends the connection.
    fn finished(
        &mut self,
        r: Result<(TaskId, Result<(), IserError>), JoinError>,
    ) -> Result<(), IserError> {
        match r {
            Ok((id, r)) => {
                self.running.remove(&id);
                r
            }
            Err(e) => {
                self.running.remove(&e.id());
                Err(IserError::Protocol(format!("command task failed: {e}")))
            }
        }
    }

    /// Waits until no running command matches `pending(ITT, LUN field)`.
    async fn wait_for(&mut self, pending: impl Fn(u32, u64) -> bool) -> Result<(), IserError> {
        while self.running.values().any(|&(itt, lun)| pending(itt, lun)) {
            match self.tasks.join_next_with_id().await {
                Some(r) => self.finished(r)?,
                None => self.running.clear(),
            }
        }
        Ok(())
    }

    async fn on_nop_out(&mut self, n: NopOut, data: Vec<u8>) -> Result<(), IserError> {
        if n.itt == RESERVED_TAG {
            // The answer to a NOP-In ping (or a ping that wants no answer).
            return Ok(());
        }
        let max = self.sh.params.max_send_data_segment(Role::Target) as usize;
        let mut data = data;
        data.truncate(max);
        let pdu = Pdu::with_data(
            NopIn {
                lun: n.lun,
                itt: n.itt,
                ttt: RESERVED_TAG,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
            },
            data,
        );
        self.send(pdu, None).await
    }
}

impl Shared {
    fn counters_for(&self, lun: Option<u64>) -> Arc<[Arc<IoCounters>]> {
        match lun.and_then(|l| self.luns.get(&l)) {
            Some(v) => v.counters.clone(),
            None => self.session_counters.clone(),
        }
    }

    /// Collects the unsolicited Data-Out PDUs of `cmd` (routed to `route` by the
    /// receive path) into the command buffer, up to `until` bytes. Returns the bytes
    /// received.
    async fn collect_data_out(
        &self,
        slot: &CmdSlot,
        route: &mut mpsc::UnboundedReceiver<Msg>,
        cmd: &ScsiCommand,
        have: u32,
        until: u32,
    ) -> Result<u32, IserError> {
        let mut got = have;
        let deadline = tokio::time::Instant::now() + DATA_OUT_TIMEOUT;
        // Each Data-Out carries at least one byte, so `until` bounds the PDUs.
        for _ in 0..=until {
            if got >= until {
                break;
            }
            let m = match tokio::time::timeout_at(deadline, route.recv()).await {
                Err(_) => return Err(IserError::Timeout("unsolicited Data-Out")),
                Ok(None) => return Err(IserError::Closed),
                Ok(Some(m)) => m,
            };
            match &m.pdu.header {
                Header::DataOut(d) if d.itt == cmd.itt && d.ttt == RESERVED_TAG => {
                    let d: DataOut = *d;
                    let end = d.buffer_offset.checked_add(m.pdu.data.len() as u32);
                    match end {
                        Some(end) if end <= until && !m.pdu.data.is_empty() => {
                            let buf = slot
                                .data()
                                .ok_or(IserError::Protocol("command buffer missing".into()))?;
                            buf.write_at(d.buffer_offset as usize, &m.pdu.data)?;
                            got = got.max(end);
                            if d.final_ {
                                break;
                            }
                        }
                        _ => {
                            let bhs = m.pdu.bhs_bytes();
                            self.reject(RejectReason::ProtocolError, &bhs).await?;
                            return Ok(got);
                        }
                    }
                }
                _ => {
                    let bhs = m.pdu.bhs_bytes();
                    self.reject(RejectReason::ProtocolError, &bhs).await?;
                }
            }
        }
        Ok(got)
    }

    async fn reject_cmd(&self, cmd: &ScsiCommand, why: String) -> Result<(), IserError> {
        tracing::debug!(error = %why, itt = cmd.itt, "SCSI Command rejected");
        let bhs = Pdu::new(cmd.clone()).bhs_bytes();
        self.reject(RejectReason::ProtocolError, &bhs).await
    }

    /// One command's task: takes a command slot (waiting while all are in use), runs
    /// the command, and answers Data-Out still routed to it with Reject.
    async fn run_command(
        self: Arc<Self>,
        iser: IserControl,
        cmd: ScsiCommand,
        immediate: Vec<u8>,
        mut route: Option<mpsc::UnboundedReceiver<Msg>>,
    ) -> Result<(), IserError> {
        let lease = self.slots.take().await?;
        let _busy = self.ctx.stats.enter();
        let r = self
            .on_command(lease, iser, cmd, immediate, route.as_mut())
            .await;
        if let Some(mut rx) = route {
            rx.close();
            while let Ok(m) = rx.try_recv() {
                self.reject(RejectReason::ProtocolError, &m.pdu.bhs_bytes())
                    .await?;
            }
        }
        r
    }

    /// Runs one command in the slot `lease` lends. Its answer is posted and, unless
    /// a pipelined check must be read after the transfer, not waited for: the
    /// slot returns to its pool when the answer's chain completes.
    async fn on_command(
        &self,
        mut lease: Lease<CmdSlot>,
        iser: IserControl,
        cmd: ScsiCommand,
        immediate: Vec<u8>,
        route: Option<&mut mpsc::UnboundedReceiver<Msg>>,
    ) -> Result<(), IserError> {
        let slot = lease.get_mut()?;
        let Some(service) = self.service.clone() else {
            // Discovery sessions carry no SCSI commands.
            return self
                .reject_cmd(&cmd, "SCSI Command in a discovery session".into())
                .await;
        };
        let lun = lun_number(cmd.lun).filter(|l| service.has_lun(*l));
        let edtl = cmd.expected_data_transfer_length;
        let transfer = match lun {
            Some(l) => service.transfer(l, &cmd.cdb),
            None => Transfer::None,
        };
        let view = lun.and_then(|l| self.luns.get(&l));
        let summary = view.map(|v| v.summary.clone());
        let app_tag = view.map_or(0, |v| v.app_tag);
        let hca = summary
            .as_ref()
            .and_then(|s| adapter::hca_plan(s, &cmd.cdb, app_tag))
            .filter(|h| h.wire_len == edtl as usize);
        let counters = self.counters_for(lun);
        // RDMA operations split on whole wire blocks, so that both sides' signature
        // MRs are accessed on block boundaries.
        let chunk = adapter::rdma_chunk(
            self.params.max_burst_length.min(MAX_RDMA_OP),
            adapter::wire_block(summary.as_deref(), &cmd.cdb),
        );
        // The STags the command's data transfer needs must be there.
        let unsolicited_max = (immediate.len() as u32).min(edtl);
        if let Err(e) = target_plan(&cmd, &iser, unsolicited_max, chunk, chunk) {
            if cmd.write && self.params.initial_r2t || cmd.read {
                return self.reject_cmd(&cmd, e.to_string()).await;
            }
        }

        // ---- Data-Out -------------------------------------------------------
        let out_len = match transfer {
            Transfer::Out(n) => n,
            _ => 0,
        };
        let want = edtl.min(out_len);
        if edtl as usize > io::MAX_TRANSFER {
            return self.invalid_field(&cmd, &iser, out_len, &counters).await;
        }
        // (CDB for the device server, bytes of Data-Out in the command buffer)
        let mut device_out: Option<(Vec<u8>, usize)> = None;
        // Where the PI starts when the HCA split a write's tuples from its blocks.
        let mut write_dix_split = None;
        let mut pi_failure: Option<(u8, Vec<u8>)> = None;
        if cmd.write && want > 0 {
            let buf_len = hca
                .as_ref()
                .map_or(want as usize, |h| h.mem_len.max(want as usize));
            if slot.buffer(&self.fab.pd, buf_len).is_err() {
                return self.invalid_field(&cmd, &iser, out_len, &counters).await;
            }
            let imm = (immediate.len() as u32).min(want);
            if imm > 0 {
                if let Some(buf) = slot.data() {
                    buf.write_at(0, &immediate[..imm as usize])?;
                }
            }
            let mut unsolicited = imm;
            let first_burst = self.params.first_burst_length.min(want);
            if !self.params.initial_r2t && !cmd.final_ && unsolicited < first_burst {
                if let Some(route) = route {
                    unsolicited = self
                        .collect_data_out(slot, route, &cmd, unsolicited, first_burst)
                        .await?;
                }
            }
            let p = match target_plan(&cmd, &iser, unsolicited, chunk, chunk) {
                Ok(p) => p,
                Err(e) => return self.reject_cmd(&cmd, e.to_string()).await,
            };
            let reads = clip(&p.rdma_reads, want);
            // Through the signature MR when the unsolicited part ends on a block of
            // the wire view (PASS), or when there is none (INSERT: the HCA generates
            // every tuple).
            let checked = hca.as_ref().filter(|h| match h.plan.op {
                crate::device::ProtOp::Pass => {
                    (unsolicited as usize).is_multiple_of(h.plan.wire_stride())
                }
                _ => unsolicited == 0,
            });
            match checked {
                Some(h) => {
                    // With no unsolicited part the HCA checks every block, and it
                    // splits the tuples from the data (DIX memory) for the device
                    // server to store as they are; otherwise memory keeps the wire
                    // form the unsolicited part arrived in, and the device server
                    // checks that part.
                    let split = (unsolicited == 0).then(|| h.data_len());
                    let mut wrs = vec![io::sig_reg_wr(slot, h.mem_len, split, h.attrs)?];
                    wrs.extend(io::read_wrs(slot, &reads, LocalView::Signature)?);
                    self.fab.run(wrs, "REG_MR_INTEGRITY + RDMA READ").await?;
                    if let Some(e) = io::sig_status(slot)? {
                        pi_failure = Some(pi_check_failed(
                            self.session.tsih,
                            summary.as_deref(),
                            &h.plan,
                            &e,
                        ));
                    }
                    let cdb = match split {
                        Some(_) => h.dix_cdb.clone(),
                        None => h.device_cdb.clone(),
                    };
                    device_out = Some((cdb, h.mem_len));
                    write_dix_split = split.map(|s| (s, h.plan.block_size));
                }
                None => {
                    let wrs = io::read_wrs(slot, &reads, LocalView::Plain)?;
                    self.fab.run(wrs, "RDMA READ (Data-Out)").await?;
                    device_out = Some((cmd.cdb.clone(), want as usize));
                }
            }
        }

        // ---- execute ----------------------------------------------------------
        // A read through the signature MR asks the device server for the blocks with
        // their PI (STRIP is applied by the HCA).
        let read_hca = hca
            .as_ref()
            .filter(|h| h.plan.dir == crate::device::ProtDir::Read);
        let (exec_cdb, out_bytes) = match device_out {
            Some(d) => d,
            None => (
                read_hca.map_or_else(|| cmd.cdb.clone(), |h| h.device_cdb.clone()),
                0,
            ),
        };
        let data_out_len = if cmd.write { want } else { 0 };
        let in_memory = lun.is_some_and(|l| service.in_memory(l));
        // A read's Data-In goes from the device server straight into the command
        // buffer: as much as the initiator takes, or the memory view the signature
        // MR turns into the wire view.
        let din_room = match read_hca {
            _ if !cmd.read || out_bytes > 0 || pi_failure.is_some() => 0,
            Some(h) => h.mem_len,
            None => edtl as usize,
        };
        // Where the PI starts when the device server wrote the blocks in DIX form.
        let mut dix_split = None;
        // (completion, Data-In length the command produced)
        let (mut completion, din_len) = if let Some((status, sense)) = pi_failure {
            // The data failed its check in the HCA: nothing reaches the medium.
            let c = Completion {
                status,
                sense,
                data_in: Vec::new(),
            };
            (c, 0)
        } else if din_room > 0 {
            let buf = slot.buffer(&self.fab.pd, din_room)?;
            let split = read_hca.map(adapter::HcaPlan::data_len);
            let (c, dix) = if in_memory {
                buf.with_mut(|b| {
                    read_into_buffer(
                        service.as_ref(),
                        &self.nexus,
                        lun,
                        &exec_cdb,
                        split,
                        &mut b[..din_room],
                    )
                })
            } else {
                // The command buffer is the start of its DmaBuf.
                let dma = Arc::clone(buf.buf());
                let nexus = self.nexus.clone();
                let svc = service.clone();
                tokio::task::spawn_blocking(move || {
                    dma.write(|b| {
                        read_into_buffer(
                            svc.as_ref(),
                            &nexus,
                            lun,
                            &exec_cdb,
                            split,
                            &mut b[..din_room],
                        )
                    })
                })
                .await
                .map_err(|e| IserError::Protocol(format!("command task failed: {e}")))?
            };
            dix_split = split.filter(|_| dix);
            c
        } else {
            let c = if in_memory {
                // In place, reading the Data-Out straight from the command buffer.
                let run = |data: &[u8]| {
                    write_from_buffer(
                        service.as_ref(),
                        &self.nexus,
                        lun,
                        &exec_cdb,
                        write_dix_split,
                        data,
                    )
                };
                match slot.data().filter(|_| out_bytes > 0) {
                    Some(buf) => buf.with(|b| b.get(..out_bytes).map(run)).ok_or_else(|| {
                        IserError::Protocol("Data-Out longer than the command buffer".into())
                    })?,
                    None => run(&[]),
                }
            } else {
                let data = self.command_bytes(slot, out_bytes)?;
                let nexus = self.nexus.clone();
                let svc = service.clone();
                tokio::task::spawn_blocking(move || {
                    write_from_buffer(svc.as_ref(), &nexus, lun, &exec_cdb, write_dix_split, &data)
                })
                .await
                .map_err(|e| IserError::Protocol(format!("command task failed: {e}")))?
            };
            let len = c.data_in.len();
            if cmd.read && len > 0 {
                // Data-In of a command that had Data-Out too: into the buffer as well.
                let n = read_hca.map_or(edtl as usize, |h| h.mem_len).min(len);
                slot.buffer(&self.fab.pd, n)?.write_at(0, &c.data_in[..n])?;
            }
            (c, len)
        };

        // ---- Data-In ----------------------------------------------------------
        // The command buffer holds the Data-In (up to the room it was given).
        let mut sent = 0u32;
        let mut read_len = din_len;
        let mut data_in = DataIn::default();
        if cmd.read && din_len > 0 {
            let p = match target_plan(&cmd, &iser, 0, chunk, chunk) {
                Ok(p) => p,
                Err(e) => return self.reject_cmd(&cmd, e.to_string()).await,
            };
            match read_hca {
                Some(h) if din_len == h.mem_len => {
                    read_len = h.wire_len;
                    let writes = clip(&p.rdma_writes, h.wire_len as u32);
                    let mut wrs = vec![io::sig_reg_wr(slot, h.mem_len, dix_split, h.attrs)?];
                    wrs.extend(io::write_wrs(slot, &writes, LocalView::Signature)?);
                    sent = h.wire_len as u32;
                    if self.fab.pipelining && wrs.len() < MAX_CHAIN {
                        // The response follows at once; the HCA holds it if the
                        // check fails and the poller swaps in this CHECK CONDITION.
                        let (tsih, plan) = (self.session.tsih, h.plan);
                        let (lun, counters) = (summary.clone(), counters.clone());
                        data_in = DataIn {
                            wrs,
                            check: Some(PipelinedCheck {
                                sig_lkey: slot.sig().lkey(),
                                on_error: Box::new(move |e| {
                                    let (status, sense) =
                                        pi_check_failed(tsih, lun.as_deref(), &plan, e);
                                    for k in counters.iter() {
                                        k.record_sense(&sense);
                                    }
                                    (status, sense)
                                }),
                            }),
                        };
                    } else {
                        self.fab.run(wrs, "REG_MR_INTEGRITY + RDMA WRITE").await?;
                        if let Some(e) = io::sig_status(slot)? {
                            let (status, sense) =
                                pi_check_failed(self.session.tsih, summary.as_deref(), &h.plan, &e);
                            completion.status = status;
                            completion.sense = sense;
                        }
                    }
                }
                Some(h) => {
                    tracing::warn!(
                        got = din_len,
                        expected = h.mem_len,
                        "device server returned an unexpected read length"
                    );
                    read_len = 0;
                    completion = Completion::check_condition(
                        scsi::Sense::new(
                            scsi::SenseKey::HARDWARE_ERROR,
                            scsi::asc::INTERNAL_TARGET_FAILURE,
                        )
                        .to_bytes(scsi::SenseFormat::Fixed),
                    );
                }
                None => {
                    let send_len = din_len.min(edtl as usize) as u32;
                    let writes = clip(&p.rdma_writes, send_len);
                    // Posted in one chain with the SCSI Response that follows them.
                    data_in.wrs = io::write_wrs(slot, &writes, LocalView::Plain)?;
                    sent = send_len;
                }
            }
        }
        let pipelined = data_in.check.is_some();
        let moved = Moved {
            data_in: read_len as u64,
            sent,
            data_out: data_out_len,
            out_len,
        };
        let hold: Box<dyn Send> = if pipelined {
            Box::new(CheckedSlot {
                lease,
                itt: cmd.itt,
            })
        } else {
            Box::new(lease)
        };
        self.respond(
            &cmd,
            &iser,
            &completion,
            moved,
            &counters,
            data_in,
            Some(hold),
        )
        .await
    }

    /// A copy of the first `len` bytes of the command buffer.
    fn command_bytes(&self, slot: &CmdSlot, len: usize) -> Result<Vec<u8>, IserError> {
        match slot.data() {
            Some(b) if len > 0 => Ok(b.to_vec(0, len)?),
            _ => Ok(Vec::new()),
        }
    }

    /// Records the command and sends its SCSI Response (invalidating the initiator's
    /// STag when SEND with invalidate is in use).
    ///
    /// Answers a command whose transfer length the portal cannot serve: CHECK
    /// CONDITION, ILLEGAL REQUEST, INVALID FIELD IN CDB, no data moved.
    async fn invalid_field(
        &self,
        cmd: &ScsiCommand,
        iser: &IserControl,
        out_len: u32,
        counters: &[Arc<IoCounters>],
    ) -> Result<(), IserError> {
        let c = Completion::check_condition(illegal_request((0x24, 0x00)));
        self.respond(
            cmd,
            iser,
            &c,
            Moved::out_only(out_len),
            counters,
            DataIn::default(),
            None,
        )
        .await
    }

    /// With `hold` the response is not waited for (see [`Shared::post_after`]).
    #[allow(clippy::too_many_arguments)]
    async fn respond(
        &self,
        cmd: &ScsiCommand,
        iser: &IserControl,
        c: &Completion,
        moved: Moved,
        counters: &[Arc<IoCounters>],
        data_in: DataIn,
        hold: Option<Box<dyn Send>>,
    ) -> Result<(), IserError> {
        for k in counters {
            k.record(
                &cmd.cdb,
                u64::from(moved.sent),
                u64::from(moved.data_out),
                &c.sense,
            );
        }
        let edtl = cmd.expected_data_transfer_length;
        let resid = if cmd.read {
            residual(edtl, moved.data_in)
        } else if cmd.write || moved.out_len > 0 {
            residual(edtl, u64::from(moved.out_len))
        } else if moved.data_in > 0 {
            residual(0, moved.data_in)
        } else {
            Residual::None
        };
        let h = ScsiResponse {
            bidi_read_residual: Residual::None,
            residual: resid,
            response: 0,
            status: c.status,
            itt: cmd.itt,
            snack_tag: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            exp_data_sn: 0,
        };
        let pdu = with_sense(&h, c.status, &c.sense);
        let inv = invalidate_stag(iser);
        match self.post_after(data_in, pdu, inv, hold).await? {
            Some(pending) => pending.wait("SEND").await,
            None => Ok(()),
        }
    }
}

impl Conn {
    async fn tmf_response(&mut self, itt: u32, response: TmfResponseCode) -> Result<(), IserError> {
        let pdu = Pdu::new(TmfResponse {
            response,
            itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        });
        self.send(pdu, None).await
    }

    async fn on_tmf(&mut self, t: TmfRequest) -> Result<(), IserError> {
        let Some(service) = self.sh.service.clone() else {
            return self.tmf_response(t.itt, TmfResponseCode::Rejected).await;
        };
        let lun = lun_number(t.lun).filter(|l| service.has_lun(*l));
        let needs_lun = matches!(
            t.function,
            TmfFunction::AbortTask
                | TmfFunction::AbortTaskSet
                | TmfFunction::ClearTaskSet
                | TmfFunction::LogicalUnitReset
        );
        if needs_lun && lun.is_none() {
            return self
                .tmf_response(t.itt, TmfResponseCode::LunDoesNotExist)
                .await;
        }
        // The commands the function names have answered (the receive path waited for
        // them), so only commands held ahead of ExpCmdSN can still be aborted.
        let code = match t.function {
            TmfFunction::AbortTask => {
                let rtt = t.referenced_task_tag;
                let held = self
                    .held
                    .iter()
                    .find(|(_, m)| m.pdu.header.itt() == rtt)
                    .map(|(sn, _)| *sn);
                match held {
                    Some(sn) => {
                        self.held.remove(&sn);
                        TmfResponseCode::Complete
                    }
                    // Never received (inside the window, before the TMF): aborted;
                    // already answered: it no longer exists.
                    None if {
                        let r = Sn(t.ref_cmd_sn);
                        let s = self.sh.sn.lock();
                        r.in_window(Sn(s.window.exp_cmd_sn()), Sn(s.window.max_cmd_sn()))
                            && r.lt(Sn(t.cmd_sn))
                    } =>
                    {
                        TmfResponseCode::Complete
                    }
                    None => TmfResponseCode::TaskDoesNotExist,
                }
            }
            TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet => {
                let raw = t.lun;
                self.held.retain(
                    |_, m| !matches!(&m.pdu.header, Header::ScsiCommand(c) if c.lun == raw),
                );
                service.reset(
                    &self.sh.nexus,
                    ResetScope::TaskSet {
                        lun: lun.unwrap_or(0),
                        clear: t.function == TmfFunction::ClearTaskSet,
                    },
                );
                TmfResponseCode::Complete
            }
            TmfFunction::LogicalUnitReset => {
                let raw = t.lun;
                self.held.retain(
                    |_, m| !matches!(&m.pdu.header, Header::ScsiCommand(c) if c.lun == raw),
                );
                service.reset(&self.sh.nexus, ResetScope::LogicalUnit(lun.unwrap_or(0)));
                TmfResponseCode::Complete
            }
            TmfFunction::TargetWarmReset => {
                self.held.clear();
                service.reset(&self.sh.nexus, ResetScope::Target);
                TmfResponseCode::Complete
            }
            TmfFunction::TargetColdReset => {
                self.held.clear();
                service.reset(&self.sh.nexus, ResetScope::Target);
                self.closing = true;
                TmfResponseCode::Complete
            }
            TmfFunction::TaskReassign => TmfResponseCode::ReassignmentNotSupported,
            _ => TmfResponseCode::NotSupported,
        };
        self.tmf_response(t.itt, code).await
    }

    fn send_targets(&self, what: &str) -> TextKeys {
        let mut out = TextKeys::new();
        let policy = &self.sh.ctx.policy;
        for t in &policy.targets {
            let listed = match what {
                "All" if self.sh.target.is_none() => true,
                "All" | "" => self.sh.target.as_deref() == Some(t.iqn.as_str()),
                name => {
                    name.eq_ignore_ascii_case(&t.iqn)
                        && (self.sh.target.is_none() || self.sh.target.as_deref() == Some(name))
                }
            };
            if !listed || !t.allows(&self.sh.nexus.initiator) {
                continue;
            }
            out.push("TargetName", t.iqn.clone());
            for p in &self.sh.ctx.portals {
                let host = match p {
                    std::net::SocketAddr::V4(a) => a.to_string(),
                    std::net::SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                };
                out.push("TargetAddress", format!("{host},{}", policy.tpgt));
            }
        }
        out
    }

    async fn on_text(&mut self, t: TextRequest, data: &[u8]) -> Result<(), IserError> {
        let max = self.sh.params.max_send_data_segment(Role::Target).max(512) as usize;
        if t.ttt != RESERVED_TAG {
            let (seg, rest) = match self.text_pending.remove(&t.ttt) {
                Some(mut rest) if !rest.is_empty() => {
                    let seg = rest.remove(0);
                    (seg, rest)
                }
                _ => (Vec::new(), Vec::new()),
            };
            return self.send_text(t.itt, t.lun, seg, rest, Some(t.ttt)).await;
        }
        let keys = TextKeys::parse(data).unwrap_or_default();
        let mut out = TextKeys::new();
        for (k, v) in keys.iter() {
            if k == "SendTargets" {
                out.0.extend(self.send_targets(v).0);
            } else if iscsi::negotiate::key_def(k).is_some() {
                out.push(k, iscsi::negotiate::REJECT);
            } else {
                out.push(k, iscsi::negotiate::NOT_UNDERSTOOD);
            }
        }
        let mut segs = split_text(&out.encode(), max);
        let first = if segs.is_empty() {
            Vec::new()
        } else {
            segs.remove(0)
        };
        self.send_text(t.itt, t.lun, first, segs, None).await
    }

    async fn send_text(
        &mut self,
        itt: u32,
        lun: u64,
        seg: Vec<u8>,
        rest: Vec<Vec<u8>>,
        ttt: Option<u32>,
    ) -> Result<(), IserError> {
        let more = !rest.is_empty();
        let ttt = if more {
            let ttt = ttt.unwrap_or_else(|| {
                let t = self.next_ttt;
                self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
                if self.next_ttt == RESERVED_TAG {
                    self.next_ttt = 1;
                }
                t
            });
            self.text_pending.insert(ttt, rest);
            ttt
        } else {
            RESERVED_TAG
        };
        let pdu = Pdu::with_data(
            TextResponse {
                final_: !more,
                continue_: more,
                lun,
                itt,
                ttt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
            },
            seg,
        );
        self.send(pdu, None).await
    }

    async fn on_logout(&mut self, l: LogoutRequest) -> Result<(), IserError> {
        let (response, pdu) = logout_response(&l, self.cid);
        if response == LogoutResponseCode::Success {
            self.held.clear();
            self.closing = true;
            if l.reason == LogoutReason::CloseSession {
                self.sh.session.close();
            }
            // As on the TCP portal: the nexus is released before the response.
            if let Some(s) = &self.sh.service {
                s.nexus_lost(&self.sh.nexus);
            }
        }
        self.send(pdu, None).await
    }
}

/// The STag the SCSI Response invalidates at the initiator: the Read STag, else the
/// Write STag (one registration per command, as Linux iSER uses it).
pub fn invalidate_stag(iser: &IserControl) -> Option<u32> {
    iser.read.or(iser.write).map(|b: RemoteBuffer| b.stag)
}

/// Status and sense for a PI check the HCA failed (logged as a warning).
fn pi_check_failed(
    tsih: u16,
    lun: Option<&LunSummary>,
    plan: &ProtPlan,
    e: &verbs::SigErr,
) -> (u8, Vec<u8>) {
    let f = adapter::sig_failure(plan, e);
    tracing::warn!(
        tsih,
        lun = lun.map(|l| l.lun),
        lba = f.lba,
        kind = %f.kind,
        expected = f.expected,
        actual = f.actual,
        "PI check failed in the HCA"
    );
    let fallback = LunSummary {
        lun: 0,
        blocks: 0,
        block_size: plan.block_size,
        pi_type: 1,
        backing: String::new(),
    };
    adapter::sig_sense(lun.unwrap_or(&fallback), &f)
}

/// Data-In RDMA WRITEs posted in one chain ahead of a SCSI Response, and, when
/// they go through a signature MR on a pipelining QP, the check that replaces the
/// response if the HCA finds bad PI.
#[derive(Default)]
struct DataIn {
    wrs: Vec<SendWr>,
    check: Option<PipelinedCheck>,
}

/// The signature MR of pipelined Data-In and the status and sense its failure
/// turns into (also counted on the LUN).
struct PipelinedCheck {
    sig_lkey: u32,
    on_error: SenseOf,
}

/// Status and sense data for a signature error.
type SenseOf = Box<dyn FnOnce(&verbs::SigErr) -> (u8, Vec<u8>) + Send>;

/// A SCSI Response with `status` and (when there is any) sense data.
/// Runs a read into the command buffer `b`: with `dix_split` (a read the signature
/// MR carries with its PI) the device server writes the blocks to `b[..split]`
/// and their PI after them, DIX form, when it can; otherwise the blocks in wire
/// form. Returns the completion with the Data-In length, and whether it is DIX.
fn read_into_buffer(
    service: &dyn ScsiService,
    nexus: &Nexus,
    lun: Option<u64>,
    cdb: &[u8],
    dix_split: Option<usize>,
    b: &mut [u8],
) -> ((Completion, usize), bool) {
    if let (Some(split), Some(l)) = (dix_split, lun) {
        if split <= b.len() {
            let (data, pi) = b.split_at_mut(split);
            if let Some(r) = service.execute_read_dix(nexus, l, cdb, data, pi) {
                return (r, true);
            }
        }
    }
    (execute_into_on(service, nexus, lun, cdb, &[], b), false)
}

/// Runs a command whose Data-Out is `data_out`: in DIX form when the HCA split
/// it (`dix_split`: where the tuples start, and the LUN's block size), else as
/// received.
fn write_from_buffer(
    service: &dyn ScsiService,
    nexus: &Nexus,
    lun: Option<u64>,
    cdb: &[u8],
    dix_split: Option<(usize, u32)>,
    data_out: &[u8],
) -> Completion {
    let (Some((split, interval)), Some(l)) = (dix_split, lun) else {
        return execute_on(service, nexus, lun, cdb, data_out);
    };
    let Some((data, pi)) = data_out.split_at_checked(split) else {
        return execute_on(service, nexus, lun, cdb, data_out);
    };
    if let Some(c) = service.execute_write_dix(nexus, l, cdb, data, pi) {
        return c;
    }
    // A service without the DIX entry point takes the blocks in wire form.
    let mut wire = vec![0u8; data_out.len()];
    match t10pi::interleave(interval, data, pi, &mut wire) {
        Ok(()) => execute_on(service, nexus, lun, cdb, &wire),
        Err(e) => {
            tracing::warn!(lun = l, error = %e, "DIX Data-Out does not fit the LUN's geometry");
            Completion::check_condition(
                scsi::Sense::new(
                    scsi::SenseKey::HARDWARE_ERROR,
                    scsi::asc::INTERNAL_TARGET_FAILURE,
                )
                .to_bytes(scsi::SenseFormat::Fixed),
            )
        }
    }
}

fn with_sense(h: &ScsiResponse, status: u8, sense: &[u8]) -> Pdu {
    let mut data = Vec::with_capacity(2 + sense.len());
    if !sense.is_empty() {
        data.extend_from_slice(&(sense.len() as u16).to_be_bytes());
        data.extend_from_slice(sense);
    }
    Pdu::with_data(ScsiResponse { status, ..*h }, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_mirrors_send_with_invalidate() {
        let both = IserCmHdr {
            zbva_not_supported: true,
            send_w_inv_not_supported: true,
        };
        assert_eq!(accept_private_data(&both), [0xc0, 0, 0, 0]);
        let inv_ok = IserCmHdr {
            zbva_not_supported: true,
            send_w_inv_not_supported: false,
        };
        assert_eq!(accept_private_data(&inv_ok), [0x80, 0, 0, 0]);
    }

    #[test]
    fn response_invalidates_read_stag_first() {
        let b = |stag| Some(RemoteBuffer { stag, va: 0x1000 });
        let both = IserControl {
            write: b(1),
            read: b(2),
        };
        assert_eq!(invalidate_stag(&both), Some(2));
        let w = IserControl {
            write: b(1),
            read: None,
        };
        assert_eq!(invalidate_stag(&w), Some(1));
        assert_eq!(invalidate_stag(&IserControl::default()), None);
    }
}
