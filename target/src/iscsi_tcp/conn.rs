//! One iSCSI/TCP connection, from the first Login Request to close: the login phase,
//! then the full feature phase (commands, Data-Out and R2T, task management, text,
//! NOP, logout), a writer task that stamps StatSN/ExpCmdSN/MaxCmdSN in send order, and
//! the NOP-In keepalive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iscsi::codec::Action;
use iscsi::digest::{crc32c, crc32c_append, digest_to_wire};
use iscsi::negotiate::{NegotiatedParams, SessionType};
use iscsi::pdu::{
    reject_pdu, DataOut, Header, LogoutReason, LogoutRequest, LogoutResponseCode, NopIn, NopOut,
    R2t, RejectReason, Role, ScsiCommand, TextRequest, TextResponse, TmfFunction, TmfRequest,
    TmfResponse, TmfResponseCode, WireConfig, BHS_LEN, RESERVED_TAG,
};
use iscsi::text::{split_text, TextKeys};
use iscsi::{Codec, Framer, Pdu};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::command::{self, Answer, Job};
use super::pool::CommandPool;
use crate::registry::{ConnectionInfo, Registry, Session};
use crate::service::{Completion, Nexus, ResetScope, ScsiService, Transfer};
use crate::session::login::PortalPolicy;
use crate::session::lun::{illegal_request, lun_number};
use crate::session::task::{logout_response, CmdSnCheck, CmdWindow, DataOutBuffer, R2tSchedule};
use iscsi::login::{TargetLogin, TargetLoginConfig, TargetStep};

/// Largest Data-Out the target buffers for one command.
pub const MAX_WRITE: u32 = 64 << 20;
/// How long one login PDU may take to arrive.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What every connection of a portal shares.
#[derive(Debug)]
pub struct PortalContext {
    /// Login rules and our operational values.
    pub policy: Arc<PortalPolicy>,
    /// Sessions and LUNs.
    pub registry: Arc<Registry>,
    /// Idle time before a NOP-In ping (zero = off).
    pub nop_in_interval: Duration,
    /// Time to wait for the ping's answer before dropping the connection.
    pub nop_in_timeout: Duration,
    /// The TCP portals, for SendTargets' TargetAddress.
    pub portals: Vec<SocketAddr>,
    /// Turns true when the daemon shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Runs SCSI commands off the async runtime.
    pub pool: Arc<CommandPool>,
}

/// Sequence numbers shared between the reader and the writer of a connection.
#[derive(Debug)]
struct Sn {
    exp_cmd_sn: AtomicU32,
    max_cmd_sn: AtomicU32,
}

enum Out {
    Pdus(Vec<Pdu>),
    Close,
}

/// Serve one accepted TCP connection until it closes.
pub async fn serve(stream: TcpStream, peer: SocketAddr, ctx: Arc<PortalContext>) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    match login(stream, peer, local, &ctx).await {
        Ok(Some((stream, framer, outcome))) => full_feature(stream, framer, outcome, ctx).await,
        Ok(None) => {}
        Err(e) => tracing::debug!(%peer, error = %e, "connection ended during login"),
    }
}

/// What the login phase hands to the full feature phase.
struct LoggedIn {
    params: NegotiatedParams,
    session: Arc<Session>,
    nexus: Nexus,
    target: Option<String>,
    cid: u16,
    exp_cmd_sn: u32,
    stat_sn: u32,
    local: Option<SocketAddr>,
}

fn random_fill(buf: &mut [u8]) {
    if getrandom::getrandom(buf).is_err() {
        // The OS random source failed: fall back to time-derived bytes (CHAP then
        // still differs per login).
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
}

async fn read_pdu(
    stream: &mut TcpStream,
    framer: &mut Framer,
    buf: &mut [u8],
    pending: &mut Vec<u8>,
) -> std::io::Result<Option<Result<Pdu, iscsi::FrameError>>> {
    loop {
        if let Some(p) = framer.poll() {
            return Ok(Some(p));
        }
        if !pending.is_empty() {
            let used = framer.feed(pending);
            pending.drain(..used);
            if used > 0 {
                continue;
            }
        }
        if framer.is_broken() {
            return Ok(None);
        }
        let n = stream.read(buf).await?;
        if n == 0 {
            return Ok(None);
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

async fn login(
    mut stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    ctx: &PortalContext,
) -> std::io::Result<Option<(TcpStream, (Framer, Vec<u8>), LoggedIn)>> {
    let mut framer = Framer::new(WireConfig::default());
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending = Vec::new();
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
    let mut machine = TargetLogin::new(cfg);
    let wire = WireConfig::default();
    loop {
        let pdu = match tokio::time::timeout(
            LOGIN_TIMEOUT,
            read_pdu(&mut stream, &mut framer, &mut buf, &mut pending),
        )
        .await
        {
            Err(_) => return Ok(None),
            Ok(r) => match r? {
                None => return Ok(None),
                Some(Ok(p)) => p,
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "malformed PDU during login");
                    return Ok(None);
                }
            },
        };
        let step = match machine.handle_request(&pdu, ctx.policy.as_ref()) {
            Ok(step) => step,
            Err(_) => return Ok(None),
        };
        match step {
            TargetStep::Continue(resp) => stream.write_all(&resp.to_bytes(&wire)).await?,
            TargetStep::Failed { response, error } => {
                tracing::info!(%peer, %error, "login refused");
                stream.write_all(&response.to_bytes(&wire)).await?;
                let _ = stream.shutdown().await;
                return Ok(None);
            }
            TargetStep::Complete { response, outcome } => {
                let p = &outcome.params;
                let info = ConnectionInfo {
                    cid: outcome.cid,
                    peer: peer.to_string(),
                    portal: local.map(|l| l.to_string()).unwrap_or_default(),
                    digests: (p.header_digest, p.data_digest),
                };
                let session = ctx.registry.open_session(
                    outcome.tsih,
                    &outcome.initiator_name,
                    outcome.isid.0,
                    outcome.target_name.as_deref(),
                    info,
                );
                stream.write_all(&response.to_bytes(&wire)).await?;
                tracing::info!(
                    %peer,
                    initiator = %outcome.initiator_name,
                    target = outcome.target_name.as_deref().unwrap_or("(discovery)"),
                    tsih = session.tsih,
                    header_digest = p.header_digest,
                    data_digest = p.data_digest,
                    "login complete"
                );
                let nexus = Nexus {
                    initiator: outcome.initiator_name.clone(),
                    isid: outcome.isid.0,
                    tsih: session.tsih,
                };
                framer.set_config(WireConfig {
                    digests: p.digests(),
                    limits: p.recv_limits(Role::Target),
                });
                return Ok(Some((
                    stream,
                    (framer, pending),
                    LoggedIn {
                        params: outcome.params.clone(),
                        session,
                        nexus,
                        target: outcome.target_name.clone(),
                        cid: outcome.cid,
                        exp_cmd_sn: outcome.exp_cmd_sn,
                        stat_sn: outcome.next_stat_sn,
                        local,
                    },
                )));
            }
        }
    }
}

/// Stamp StatSN/ExpCmdSN/MaxCmdSN on a target PDU in send order.
fn stamp(pdu: &mut Pdu, stat_sn: &mut u32, exp: u32, max: u32) {
    let next = *stat_sn;
    let mut advance = true;
    match &mut pdu.header {
        Header::DataIn(h) => {
            h.exp_cmd_sn = exp;
            h.max_cmd_sn = max;
            if h.status.is_some() {
                h.stat_sn = next;
            } else {
                advance = false;
            }
        }
        Header::ScsiResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (next, exp, max),
        Header::TmfResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (next, exp, max),
        Header::TextResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (next, exp, max),
        Header::LogoutResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (next, exp, max),
        Header::Reject(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (next, exp, max),
        Header::AsyncMessage(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (next, exp, max),
        Header::NopIn(h) => {
            (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (next, exp, max);
            advance = h.itt != RESERVED_TAG;
        }
        Header::R2t(h) => {
            (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (next, exp, max);
            advance = false;
        }
        _ => advance = false,
    }
    if advance {
        *stat_sn = next.wrapping_add(1);
    }
}

/// Padding (0-3 bytes) and data digest (0 or 4 bytes) after a data segment: the bytes
/// and how many of them to send.
type Tail = ([u8; 7], usize);

/// Encode a target PDU for the wire. Small PDUs go whole into `head`; a PDU with a
/// data segment of 4 KiB or more gets only its header (and header digest) in `head`,
/// and the data segment is returned with its padding and data digest, so that the
/// writer sends it without copying.
fn frame_head<'a>(p: &'a Pdu, wire: &WireConfig, head: &mut Vec<u8>) -> Option<(&'a [u8], Tail)> {
    if p.data.len() < 4096 || matches!(p.header, Header::ScsiCommand(_)) {
        p.encode(wire, head);
        return None;
    }
    let bhs = p.bhs_bytes();
    head.extend_from_slice(&bhs);
    if wire.digests.header {
        head.extend_from_slice(&digest_to_wire(crc32c(&bhs)));
    }
    let pad = (4 - p.data.len() % 4) % 4;
    let mut tail = [0u8; 7];
    let mut n = pad;
    if wire.digests.data {
        let crc = crc32c_append(crc32c(&p.data), &tail[..pad]);
        tail[pad..pad + 4].copy_from_slice(&digest_to_wire(crc));
        n += 4;
    }
    Some((&p.data, (tail, n)))
}

async fn writer(
    half: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    sn: Arc<Sn>,
    mut stat_sn: u32,
    wire: WireConfig,
) {
    let mut w = BufWriter::with_capacity(64 * 1024, half);
    let mut bytes = Vec::with_capacity(64 * 1024);
    while let Some(msg) = rx.recv().await {
        let mut batch = vec![msg];
        while let Ok(m) = rx.try_recv() {
            batch.push(m);
            if batch.len() >= 64 {
                break;
            }
        }
        let mut close = false;
        for m in batch {
            match m {
                Out::Pdus(pdus) => {
                    let exp = sn.exp_cmd_sn.load(Ordering::Acquire);
                    let max = sn.max_cmd_sn.load(Ordering::Acquire);
                    for mut p in pdus {
                        stamp(&mut p, &mut stat_sn, exp, max);
                        bytes.clear();
                        let data = frame_head(&p, &wire, &mut bytes);
                        if w.write_all(&bytes).await.is_err() {
                            return;
                        }
                        if let Some((data, tail)) = data {
                            // Large segments bypass the buffer (no extra copy).
                            if w.write_all(data).await.is_err()
                                || w.write_all(&tail.0[..tail.1]).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                }
                Out::Close => close = true,
            }
        }
        if w.flush().await.is_err() || close {
            let _ = w.shutdown().await;
            return;
        }
    }
    let _ = w.flush().await;
}

/// A write waiting for its Data-Out.
#[derive(Debug)]
struct Pending {
    buf: DataOutBuffer,
    schedule: R2tSchedule,
    /// Open R2Ts by TTT: (R2TSN, offset, length, next DataSN, bytes received).
    r2ts: HashMap<u32, (u32, u32, u32, u32, u32)>,
    /// End of the unsolicited region and the next unsolicited DataSN.
    unsolicited_end: u32,
    unsolicited_data_sn: u32,
}

#[derive(Debug)]
enum TaskState {
    /// Waiting for Data-Out.
    Receiving(Box<Pending>),
    /// Handed to the command pool.
    Running,
}

#[derive(Debug)]
struct Task {
    cmd: ScsiCommand,
    lun: Option<u64>,
    out_len: u32,
    state: TaskState,
    /// Aborted by a TMF while running: its response is dropped.
    aborted: bool,
}

/// A TMF response waiting for aborted tasks to finish.
#[derive(Debug)]
struct PendingTmf {
    itt: u32,
    waiting: HashSet<u32>,
}

struct Conn {
    ctx: Arc<PortalContext>,
    params: NegotiatedParams,
    session: Arc<Session>,
    nexus: Arc<Nexus>,
    service: Option<Arc<dyn ScsiService>>,
    target: Option<String>,
    cid: u16,
    local: Option<SocketAddr>,
    window: CmdWindow,
    sn: Arc<Sn>,
    out: mpsc::UnboundedSender<Out>,
    done_tx: mpsc::UnboundedSender<Vec<Answer>>,
    /// Commands ready to run, handed to the pool after each pass over received bytes.
    batch: Vec<Job>,
    tasks: HashMap<u32, Task>,
    ahead: BTreeMap<u32, Pdu>,
    tmfs: Vec<PendingTmf>,
    next_ttt: u32,
    text_pending: HashMap<u32, Vec<Vec<u8>>>,
    ping: Option<(u32, Instant)>,
    logout: Option<Pdu>,
    closing: bool,
}

async fn full_feature(
    stream: TcpStream,
    (mut framer, mut pending): (Framer, Vec<u8>),
    li: LoggedIn,
    ctx: Arc<PortalContext>,
) {
    let (mut rd, wr) = stream.into_split();
    let depth = ctx.policy.queue_depth.max(1);
    let window = CmdWindow {
        exp_cmd_sn: li.exp_cmd_sn,
        depth,
    };
    let sn = Arc::new(Sn {
        exp_cmd_sn: AtomicU32::new(window.exp_cmd_sn),
        max_cmd_sn: AtomicU32::new(window.max_cmd_sn()),
    });
    let wire = WireConfig {
        digests: li.params.digests(),
        limits: li.params.recv_limits(Role::Target),
    };
    let (out, out_rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer(wr, out_rx, sn.clone(), li.stat_sn, wire));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Vec<Answer>>();
    let service = li
        .target
        .as_deref()
        .and_then(|t| ctx.registry.target(t))
        .map(|t| t.service.clone());
    let mut closed = li.session.closed();
    let mut shutdown = ctx.shutdown.clone();
    let mut c = Conn {
        ctx: ctx.clone(),
        params: li.params,
        session: li.session,
        nexus: Arc::new(li.nexus),
        service,
        target: li.target,
        cid: li.cid,
        local: li.local,
        window,
        sn,
        out,
        done_tx,
        batch: Vec::new(),
        tasks: HashMap::new(),
        ahead: BTreeMap::new(),
        tmfs: Vec::new(),
        next_ttt: 1,
        text_pending: HashMap::new(),
        ping: None,
        logout: None,
        closing: false,
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut last_rx = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reading = true;
    loop {
        // Drain whole PDUs already buffered.
        while reading && !c.closing {
            if let Some(p) = framer.poll() {
                match p {
                    Ok(pdu) => c.on_pdu(pdu),
                    Err(e) => match e.action() {
                        Action::Reject(reason) => {
                            tracing::debug!(error = %e, "malformed PDU: Reject");
                            match e.bhs {
                                Some(bhs) => {
                                    c.reject(reason, &bhs);
                                    c.fail_data_out(&bhs);
                                }
                                None => reading = false,
                            }
                        }
                        Action::CloseConnection => {
                            tracing::info!(error = %e, "malformed PDU: closing the connection");
                            reading = false;
                        }
                    },
                }
                continue;
            }
            if pending.is_empty() {
                break;
            }
            let used = framer.feed(&pending);
            pending.drain(..used);
            if used == 0 && framer.is_broken() {
                reading = false;
            }
        }
        // Everything that became ready in this pass goes to the pool as one batch.
        c.submit();
        if c.closing
            && c.tasks
                .values()
                .all(|t| !matches!(t.state, TaskState::Running))
        {
            if let Some(resp) = c.logout.take() {
                // The session ends with its only connection: its SPC-2 reservation
                // and unit attentions go before the initiator hears that it may log
                // in again (it may do so before this connection is torn down).
                if let Some(service) = &c.service {
                    service.nexus_lost(&c.nexus);
                }
                c.send(vec![resp]);
            }
            break;
        }
        if !reading
            && c.tasks
                .values()
                .all(|t| !matches!(t.state, TaskState::Running))
        {
            break;
        }
        tokio::select! {
            r = rd.read(&mut buf), if reading && !c.closing => match r {
                Ok(0) | Err(_) => reading = false,
                Ok(n) => {
                    last_rx = Instant::now();
                    c.ping = None;
                    pending.extend_from_slice(&buf[..n]);
                }
            },
            Some(mut answers) = done_rx.recv() => {
                while let Ok(more) = done_rx.try_recv() {
                    answers.extend(more);
                }
                c.on_done(answers);
            }
            _ = tick.tick() => {
                if let Some((_, sent)) = c.ping {
                    if sent.elapsed() >= c.ctx.nop_in_timeout {
                        tracing::info!(initiator = %c.nexus.initiator, "no answer to NOP-In: closing the connection");
                        reading = false;
                    }
                } else if !c.ctx.nop_in_interval.is_zero() && last_rx.elapsed() >= c.ctx.nop_in_interval {
                    let ttt = c.new_ttt();
                    c.ping = Some((ttt, Instant::now()));
                    c.send(vec![Pdu::new(NopIn { lun: 0, itt: RESERVED_TAG, ttt, stat_sn: 0, exp_cmd_sn: 0, max_cmd_sn: 0 })]);
                }
            }
            r = closed.changed() => {
                if r.is_err() || *closed.borrow() {
                    reading = false;
                }
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    reading = false;
                }
            }
        }
    }
    let _ = c.out.send(Out::Close);
    drop(c.out);
    // I_T nexus loss: the reservation and unit attentions go at once, not after the
    // writer has flushed (the initiator may already be logging in again).
    if let Some(service) = &c.service {
        service.nexus_lost(&c.nexus);
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    ctx.registry.close_session(&c.session);
    tracing::debug!(initiator = %c.nexus.initiator, tsih = c.session.tsih, "connection closed");
}

impl Conn {
    fn send(&self, pdus: Vec<Pdu>) {
        let _ = self.out.send(Out::Pdus(pdus));
    }

    fn new_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    fn reject(&self, reason: RejectReason, bhs: &[u8; BHS_LEN]) {
        self.send(vec![reject_pdu(reason, bhs, 0, 0, 0)]);
    }

    fn publish_window(&self) {
        self.sn
            .exp_cmd_sn
            .store(self.window.exp_cmd_sn, Ordering::Release);
        self.sn
            .max_cmd_sn
            .store(self.window.max_cmd_sn(), Ordering::Release);
    }

    /// Apply the CmdSN rules to a command PDU; returns false when it must be ignored
    /// (or was held for later).
    fn accept_cmd_sn(&mut self, pdu: &Pdu) -> bool {
        let Some(cmd_sn) = pdu.header.cmd_sn() else {
            return true;
        };
        if pdu.header.immediate() {
            return true;
        }
        match self.window.check(cmd_sn) {
            CmdSnCheck::InOrder => {
                self.window.advance();
                self.publish_window();
                true
            }
            CmdSnCheck::Ahead => {
                if self.ahead.len() < self.window.depth as usize {
                    self.ahead.insert(cmd_sn, pdu.clone());
                }
                false
            }
            CmdSnCheck::OutOfWindow => {
                tracing::debug!(
                    cmd_sn,
                    exp = self.window.exp_cmd_sn,
                    "CmdSN outside the window: ignored"
                );
                false
            }
        }
    }

    fn on_pdu(&mut self, pdu: Pdu) {
        if !matches!(pdu.header, Header::DataOut(_)) && !self.accept_cmd_sn(&pdu) {
            return;
        }
        self.dispatch(pdu);
        // Commands held for a CmdSN gap that is now filled.
        while let Some(p) = self.ahead.remove(&self.window.exp_cmd_sn) {
            self.window.advance();
            self.publish_window();
            self.dispatch(p);
        }
    }

    fn dispatch(&mut self, pdu: Pdu) {
        let bhs = pdu.bhs_bytes();
        match pdu.header {
            Header::ScsiCommand(cmd) => self.on_command(cmd, pdu.data, &bhs),
            Header::DataOut(d) => self.on_data_out(d, &pdu.data, &bhs),
            Header::NopOut(n) => self.on_nop_out(n, pdu.data),
            Header::TmfRequest(t) => self.on_tmf(t),
            Header::TextRequest(t) => self.on_text(t, &pdu.data),
            Header::LogoutRequest(l) => self.on_logout(l),
            Header::SnackRequest(_) => self.reject(RejectReason::SnackReject, &bhs),
            Header::Vendor { .. } => self.reject(RejectReason::CommandNotSupported, &bhs),
            _ => self.reject(RejectReason::ProtocolError, &bhs),
        }
    }

    fn on_nop_out(&mut self, n: NopOut, data: Vec<u8>) {
        if n.itt == RESERVED_TAG {
            // The answer to our ping.
            if self.ping.is_some_and(|(t, _)| t == n.ttt) {
                self.ping = None;
            }
            return;
        }
        let mut data = data;
        data.truncate(self.params.max_send_data_segment(Role::Target) as usize);
        self.send(vec![Pdu::with_data(
            NopIn {
                lun: n.lun,
                itt: n.itt,
                ttt: RESERVED_TAG,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
            },
            data,
        )]);
    }

    fn on_command(&mut self, cmd: ScsiCommand, data: Vec<u8>, bhs: &[u8; BHS_LEN]) {
        let Some(service) = self.service.clone() else {
            // Discovery sessions carry no SCSI commands.
            self.reject(RejectReason::ProtocolError, bhs);
            return;
        };
        if cmd.itt == RESERVED_TAG || self.tasks.contains_key(&cmd.itt) {
            self.reject(
                if cmd.itt == RESERVED_TAG {
                    RejectReason::InvalidPduField
                } else {
                    RejectReason::TaskInProgress
                },
                bhs,
            );
            return;
        }
        if !data.is_empty() && (!cmd.write || !self.params.immediate_data) {
            self.reject(RejectReason::ProtocolError, bhs);
            return;
        }
        let lun = lun_number(cmd.lun).filter(|l| service.has_lun(*l));
        // Only a write needs the CDB's length before it runs (reads size themselves).
        let out_len = match lun
            .filter(|_| cmd.write)
            .map(|l| service.transfer(l, &cmd.cdb))
        {
            Some(Transfer::Out(n)) => n,
            _ => 0,
        };
        // Bytes to receive: what the CDB needs, bounded by what the initiator sends;
        // a block write the initiator under-sizes is cut to the blocks it covers.
        let mut cmd = cmd;
        let edtl = cmd.expected_data_transfer_length;
        let want = if !cmd.write {
            0
        } else if let Some(n) = crate::session::task::shorten_write(&mut cmd.cdb, out_len, edtl) {
            n
        } else {
            out_len.min(edtl)
        };
        if lun.is_some() && crate::session::task::caw_count_wrapped(&cmd.cdb, cmd.write, edtl) {
            let sense =
                scsi::Sense::invalid_field_in_cdb(13, None).to_bytes(scsi::SenseFormat::Fixed);
            self.complete_now(
                cmd,
                lun,
                out_len,
                Vec::new(),
                Completion::check_condition(sense),
            );
            return;
        }
        if want > MAX_WRITE {
            let c = Completion::check_condition(illegal_request((0x55, 0x00)));
            self.complete_now(cmd, lun, out_len, Vec::new(), c);
            return;
        }
        let mut buf = DataOutBuffer::new(want);
        let imm = data.len().min(want as usize);
        // Immediate data beyond what the CDB needs is dropped (reported as residual).
        let _ = buf.place(0, &data[..imm]);
        let edtl = cmd.expected_data_transfer_length;
        let unsolicited_end = if cmd.write && !cmd.final_ {
            self.params.first_burst_length.min(edtl)
        } else {
            data.len() as u32
        };
        let schedule = R2tSchedule::new(
            unsolicited_end.min(want),
            want,
            self.params.max_burst_length,
            self.params.max_outstanding_r2t,
        );
        let pending = Pending {
            buf,
            schedule,
            r2ts: HashMap::new(),
            unsolicited_end,
            unsolicited_data_sn: 0,
        };
        let itt = cmd.itt;
        self.tasks.insert(
            itt,
            Task {
                cmd,
                lun,
                out_len,
                state: TaskState::Receiving(Box::new(pending)),
                aborted: false,
            },
        );
        self.advance_write(itt);
    }

    /// Send the R2Ts now allowed, or start the command once all its data is in.
    fn advance_write(&mut self, itt: u32) {
        let Some(task) = self.tasks.get_mut(&itt) else {
            return;
        };
        let TaskState::Receiving(p) = &mut task.state else {
            return;
        };
        if p.buf.is_complete() {
            let TaskState::Receiving(p) = std::mem::replace(&mut task.state, TaskState::Running)
            else {
                return;
            };
            let data = p.buf.buf;
            self.start(itt, data);
            return;
        }
        let issue = p.schedule.issue();
        if issue.is_empty() {
            return;
        }
        let mut pdus = Vec::with_capacity(issue.len());
        let lun = task.cmd.lun;
        for (r2t_sn, range) in issue {
            let ttt = {
                let t = self.next_ttt;
                self.next_ttt = if t.wrapping_add(1) == RESERVED_TAG {
                    1
                } else {
                    t.wrapping_add(1)
                };
                t
            };
            let TaskState::Receiving(p) =
                &mut self.tasks.get_mut(&itt).expect("task present").state
            else {
                return;
            };
            p.r2ts.insert(ttt, (r2t_sn, range.offset, range.len, 0, 0));
            pdus.push(Pdu::new(R2t {
                lun,
                itt,
                ttt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                r2t_sn,
                buffer_offset: range.offset,
                desired_data_transfer_length: range.len,
            }));
        }
        self.send(pdus);
    }

    fn on_data_out(&mut self, d: DataOut, data: &[u8], bhs: &[u8; BHS_LEN]) {
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            // Data for a task that already completed or was aborted (e.g. unsolicited
            // data beyond what the CDB needed).
            tracing::trace!(itt = d.itt, "Data-Out for no open task: dropped");
            return;
        };
        let TaskState::Receiving(p) = &mut task.state else {
            return;
        };
        let mut burst_done = false;
        let ok = if d.ttt == RESERVED_TAG {
            // Unsolicited data: within the first burst, DataSN in order.
            let end = u64::from(d.buffer_offset) + data.len() as u64;
            let in_order = d.data_sn == p.unsolicited_data_sn;
            p.unsolicited_data_sn = p.unsolicited_data_sn.wrapping_add(1);
            if end > u64::from(p.unsolicited_end) || !in_order {
                false
            } else {
                // Bytes beyond what the CDB needs are dropped.
                let want = p.buf.len();
                let off = d.buffer_offset.min(want);
                let keep = (want - off).min(data.len() as u32) as usize;
                p.buf.place(off, &data[..keep]).is_ok()
            }
        } else {
            match p.r2ts.get_mut(&d.ttt) {
                None => false,
                Some((_, off, len, next_sn, got)) => {
                    let end = u64::from(d.buffer_offset) + data.len() as u64;
                    let fits = d.buffer_offset >= *off && end <= u64::from(*off) + u64::from(*len);
                    let in_order = d.data_sn == *next_sn;
                    *next_sn = next_sn.wrapping_add(1);
                    *got += data.len() as u32;
                    if d.final_ {
                        burst_done = *got == *len;
                    }
                    let placed = fits && in_order && p.buf.place(d.buffer_offset, data).is_ok();
                    placed && (!d.final_ || burst_done)
                }
            }
        };
        if !ok {
            tracing::info!(
                itt = d.itt,
                ttt = d.ttt,
                data_sn = d.data_sn,
                offset = d.buffer_offset,
                "bad Data-Out"
            );
            self.reject(RejectReason::ProtocolError, bhs);
            // Within-command recovery needs ErrorRecoveryLevel 1: end the task.
            if let Some(task) = self.tasks.remove(&d.itt) {
                let sense = scsi::Sense::new(scsi::SenseKey(0x0b), (0x4b, 0x00))
                    .to_bytes(scsi::SenseFormat::Fixed);
                self.complete_now(
                    task.cmd,
                    task.lun,
                    task.out_len,
                    Vec::new(),
                    Completion::check_condition(sense),
                );
            }
            return;
        }
        if burst_done {
            p.r2ts.remove(&d.ttt);
            p.schedule.burst_done();
        }
        self.advance_write(d.itt);
    }

    /// A Data-Out that was rejected (bad data digest, malformed) leaves a hole in its
    /// task's buffer; without within-command recovery (ErrorRecoveryLevel 0) the task
    /// ends with CHECK CONDITION, ABORTED COMMAND, PROTOCOL SERVICE CRC ERROR (47h/05h).
    fn fail_data_out(&mut self, bhs: &[u8; BHS_LEN]) {
        if bhs[0] & 0x3f != 0x05 {
            return;
        }
        let itt = u32::from_be_bytes([bhs[16], bhs[17], bhs[18], bhs[19]]);
        let receiving = self
            .tasks
            .get(&itt)
            .is_some_and(|t| matches!(t.state, TaskState::Receiving(_)));
        if let Some(task) = receiving.then(|| self.tasks.remove(&itt)).flatten() {
            let sense = scsi::Sense::new(scsi::SenseKey(0x0b), (0x47, 0x05))
                .to_bytes(scsi::SenseFormat::Fixed);
            self.complete_now(
                task.cmd,
                task.lun,
                task.out_len,
                Vec::new(),
                Completion::check_condition(sense),
            );
        }
    }

    fn job(
        &self,
        cmd: &ScsiCommand,
        lun: Option<u64>,
        out_len: u32,
        data_out: Vec<u8>,
    ) -> Option<Job> {
        let service = self.service.clone()?;
        let mut counters = vec![];
        if let (Some(l), Some(t)) = (
            lun,
            self.target
                .as_deref()
                .and_then(|t| self.ctx.registry.target(t)),
        ) {
            if let Some(k) = t.counters.get(&l) {
                counters.push(k.clone());
            }
        }
        counters.push(self.session.counters.clone());
        Some(Job {
            service,
            nexus: self.nexus.clone(),
            lun_field: cmd.lun,
            cdb: cmd.cdb.clone(),
            itt: cmd.itt,
            edtl: cmd.expected_data_transfer_length,
            read: cmd.read,
            out_len,
            data_out,
            max_segment: self.params.max_send_data_segment(Role::Target),
            max_burst: self.params.max_burst_length,
            counters,
        })
    }

    /// Queue a task whose Data-Out is complete for the command pool.
    fn start(&mut self, itt: u32, data_out: Vec<u8>) {
        let Some(task) = self.tasks.get(&itt) else {
            return;
        };
        if let Some(job) = self.job(&task.cmd, task.lun, task.out_len, data_out) {
            self.batch.push(job);
        }
    }

    /// Hand the queued commands to the pool.
    fn submit(&mut self) {
        if !self.batch.is_empty() {
            let jobs = std::mem::take(&mut self.batch);
            self.ctx.pool.submit(jobs, &self.done_tx);
        }
    }

    /// Answer a command without running it (errors found by the transport).
    fn complete_now(
        &mut self,
        cmd: ScsiCommand,
        lun: Option<u64>,
        out_len: u32,
        data_out: Vec<u8>,
        c: Completion,
    ) {
        if let Some(job) = self.job(&cmd, lun, out_len, data_out) {
            let a = command::answer(&job, c);
            self.send(a.pdus);
        }
    }

    /// Answers from the pool: forward those of tasks not aborted (in one message to
    /// the writer), then answer the TMFs that waited for aborted ones.
    fn on_done(&mut self, answers: Vec<Answer>) {
        let mut pdus = Vec::new();
        let mut ready = Vec::new();
        for a in answers {
            let Some(task) = self.tasks.remove(&a.itt) else {
                continue;
            };
            if task.aborted {
                self.tmfs.retain_mut(|t| {
                    t.waiting.remove(&a.itt);
                    if t.waiting.is_empty() {
                        ready.push(t.itt);
                        false
                    } else {
                        true
                    }
                });
            } else {
                pdus.extend(a.pdus);
            }
        }
        if !pdus.is_empty() {
            self.send(pdus);
        }
        for itt in ready {
            self.tmf_response(itt, TmfResponseCode::Complete);
        }
    }

    fn tmf_response(&self, itt: u32, response: TmfResponseCode) {
        self.send(vec![Pdu::new(TmfResponse {
            response,
            itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        })]);
    }

    /// Abort the tasks matching `pred`: those waiting for data are dropped, running
    /// ones lose their response. Returns the running ones to wait for.
    fn abort_where(&mut self, pred: impl Fn(&Task) -> bool) -> HashSet<u32> {
        let mut waiting = HashSet::new();
        let mut drop_now = Vec::new();
        for (itt, t) in &mut self.tasks {
            if !pred(t) {
                continue;
            }
            match t.state {
                TaskState::Running => {
                    t.aborted = true;
                    waiting.insert(*itt);
                }
                TaskState::Receiving(_) => drop_now.push(*itt),
            }
        }
        for itt in drop_now {
            self.tasks.remove(&itt);
        }
        waiting
    }

    fn on_tmf(&mut self, t: TmfRequest) {
        let Some(service) = self.service.clone() else {
            self.tmf_response(t.itt, TmfResponseCode::Rejected);
            return;
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
            self.tmf_response(t.itt, TmfResponseCode::LunDoesNotExist);
            return;
        }
        let waiting = match t.function {
            TmfFunction::AbortTask => {
                let rtt = t.referenced_task_tag;
                match self.tasks.get(&rtt) {
                    Some(task) if task.cmd.lun == t.lun => self.abort_where(|x| x.cmd.itt == rtt),
                    _ => {
                        // A command held for a CmdSN gap is dropped; otherwise RFC 7143
                        // section 11.6.1 decides from RefCmdSN.
                        let held = self
                            .ahead
                            .iter()
                            .find(|(_, p)| p.header.itt() == rtt)
                            .map(|(sn, _)| *sn);
                        let complete = match held {
                            Some(sn) => {
                                self.ahead.remove(&sn);
                                true
                            }
                            None => crate::session::task::abort_of_unreceived(
                                &self.window,
                                t.ref_cmd_sn,
                                t.cmd_sn,
                            ),
                        };
                        let code = if complete {
                            TmfResponseCode::Complete
                        } else {
                            TmfResponseCode::TaskDoesNotExist
                        };
                        self.tmf_response(t.itt, code);
                        return;
                    }
                }
            }
            TmfFunction::AbortTaskSet | TmfFunction::ClearTaskSet => {
                let raw = t.lun;
                let w = self.abort_where(|x| x.cmd.lun == raw);
                let clear = t.function == TmfFunction::ClearTaskSet;
                service.reset(
                    &self.nexus,
                    ResetScope::TaskSet {
                        lun: lun.unwrap_or(0),
                        clear,
                    },
                );
                w
            }
            TmfFunction::LogicalUnitReset => {
                let raw = t.lun;
                let w = self.abort_where(|x| x.cmd.lun == raw);
                service.reset(&self.nexus, ResetScope::LogicalUnit(lun.unwrap_or(0)));
                w
            }
            TmfFunction::TargetWarmReset => {
                let w = self.abort_where(|_| true);
                service.reset(&self.nexus, ResetScope::Target);
                w
            }
            TmfFunction::TargetColdReset => {
                self.abort_where(|_| true);
                service.reset(&self.nexus, ResetScope::Target);
                self.tmf_response(t.itt, TmfResponseCode::Complete);
                // A cold reset ends the connection after the response.
                self.closing = true;
                return;
            }
            TmfFunction::TaskReassign => {
                self.tmf_response(t.itt, TmfResponseCode::ReassignmentNotSupported);
                return;
            }
            _ => {
                self.tmf_response(t.itt, TmfResponseCode::NotSupported);
                return;
            }
        };
        if waiting.is_empty() {
            self.tmf_response(t.itt, TmfResponseCode::Complete);
        } else {
            self.tmfs.push(PendingTmf {
                itt: t.itt,
                waiting,
            });
        }
    }

    fn send_targets(&self, what: &str) -> TextKeys {
        let mut out = TextKeys::new();
        let policy = &self.ctx.policy;
        for t in &policy.targets {
            let listed = match what {
                "All" if self.target.is_none() => true,
                "All" | "" => self.target.as_deref() == Some(t.iqn.as_str()),
                name => {
                    name.eq_ignore_ascii_case(&t.iqn)
                        && (self.target.is_none() || self.target.as_deref() == Some(name))
                }
            };
            if !listed || !t.allows(&self.nexus.initiator) {
                continue;
            }
            out.push("TargetName", t.iqn.clone());
            for p in &self.ctx.portals {
                let addr = match (p.ip().is_unspecified(), self.local) {
                    (true, Some(l)) => SocketAddr::new(l.ip(), p.port()),
                    _ => *p,
                };
                let host = match addr {
                    SocketAddr::V4(a) => a.to_string(),
                    SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
                };
                out.push("TargetAddress", format!("{host},{}", policy.tpgt));
            }
        }
        out
    }

    fn on_text(&mut self, t: TextRequest, data: &[u8]) {
        let max = self.params.max_send_data_segment(Role::Target) as usize;
        if t.ttt != RESERVED_TAG {
            // The initiator asks for the rest of a long answer.
            if let Some(mut rest) = self.text_pending.remove(&t.ttt) {
                let seg = rest.remove(0);
                self.send_text(t.itt, t.lun, seg, rest, Some(t.ttt));
            } else {
                self.send_text(t.itt, t.lun, Vec::new(), Vec::new(), None);
            }
            return;
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
        let first = segs.remove(0);
        self.send_text(t.itt, t.lun, first, segs, None);
    }

    fn send_text(
        &mut self,
        itt: u32,
        lun: u64,
        seg: Vec<u8>,
        rest: Vec<Vec<u8>>,
        ttt: Option<u32>,
    ) {
        let more = !rest.is_empty();
        let ttt = if more {
            let ttt = ttt.unwrap_or_else(|| self.new_ttt());
            self.text_pending.insert(ttt, rest);
            ttt
        } else {
            RESERVED_TAG
        };
        self.send(vec![Pdu::with_data(
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
        )]);
    }

    fn on_logout(&mut self, l: LogoutRequest) {
        let (response, pdu) = logout_response(&l, self.cid);
        if response != LogoutResponseCode::Success {
            self.send(vec![pdu]);
            return;
        }
        // Tasks still waiting for data are terminated; running ones finish first.
        self.abort_where(|t| matches!(t.state, TaskState::Receiving(_)));
        if l.reason == LogoutReason::CloseSession {
            self.session.close();
        }
        self.logout = Some(pdu);
        self.closing = true;
    }
}

/// Whether a session type carries SCSI commands.
pub fn is_normal(params: &NegotiatedParams) -> bool {
    params.session_type == SessionType::Normal
}

#[cfg(test)]
mod tests {
    use super::*;
    use iscsi::pdu::{DataIn, Residual};
    use iscsi::Digests;

    #[test]
    fn split_framing_matches_the_codec() {
        for len in [0usize, 100, 4096, 4097, 65_538, 262_143] {
            for (header, data) in [(false, false), (true, false), (false, true), (true, true)] {
                let wire = WireConfig {
                    digests: Digests { header, data },
                    ..WireConfig::default()
                };
                let hdr = DataIn {
                    final_: true,
                    acknowledge: false,
                    residual: Residual::Underflow(3),
                    status: Some(0),
                    lun: 1 << 48,
                    itt: 9,
                    ttt: RESERVED_TAG,
                    stat_sn: 4,
                    exp_cmd_sn: 5,
                    max_cmd_sn: 6,
                    data_sn: 0,
                    buffer_offset: 0,
                };
                let p = Pdu::with_data(hdr, (0..len).map(|i| i as u8).collect());
                let mut head = Vec::new();
                let mut got = Vec::new();
                match frame_head(&p, &wire, &mut head) {
                    None => got.extend_from_slice(&head),
                    Some((data, (tail, n))) => {
                        got.extend_from_slice(&head);
                        got.extend_from_slice(data);
                        got.extend_from_slice(&tail[..n]);
                    }
                }
                assert_eq!(got, p.to_bytes(&wire), "len {len} digests {header}/{data}");
            }
        }
    }

    #[test]
    fn stat_sn_advances_only_for_status() {
        let mut sn = 10;
        let mut r2t = Pdu::new(R2t {
            lun: 0,
            itt: 1,
            ttt: 2,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            r2t_sn: 0,
            buffer_offset: 0,
            desired_data_transfer_length: 512,
        });
        stamp(&mut r2t, &mut sn, 3, 9);
        assert_eq!(sn, 10);
        assert_eq!(r2t.header.stat_fields(), Some((10, 3, 9)));
        let mut ping = Pdu::new(NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: 5,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        });
        stamp(&mut ping, &mut sn, 3, 9);
        assert_eq!(sn, 10);
        let mut tmf = Pdu::new(TmfResponse {
            response: TmfResponseCode::Complete,
            itt: 4,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
        });
        stamp(&mut tmf, &mut sn, 3, 9);
        assert_eq!((sn, tmf.header.stat_fields()), (11, Some((10, 3, 9))));
    }
}
