//! One iSCSI session over TCP, async on tokio: connect and log in, then full feature
//! phase with one reader task and one writer task. Commands are tagged (ITT) and many
//! may be in flight; each waits for a slot in the target's CmdSN window (MaxCmdSN).
//! The reader reassembles Data-In, answers R2Ts with Data-Out, answers target NOP-Ins
//! and completes tasks. A keepalive pings with NOP-Out when the connection is idle and
//! closes it when the answer does not come in time. A command that times out is
//! aborted (ABORT TASK, then LOGICAL UNIT RESET); logout closes the session cleanly.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use iscsi::negotiate::{DigestKind, LocalParams, NegotiatedParams};
use iscsi::pdu::{
    Header, LogoutReason, LogoutRequest, NopOut, Pdu, PduLimits, RejectReason, ScsiCommand,
    TaskAttr, TextRequest, TmfFunction, TmfRequest, TmfResponseCode, WireConfig, RESERVED_TAG,
};
use iscsi::seq::{CmdSequencer, Sn, TagAllocator};
use iscsi::text::{TextAssembler, TextKeys};
use iscsi::{Codec, Framer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::command::{answer_r2t, data_out_pdus, Completion, DataInAssembler, WriteParams};
use crate::discovery::{parse_send_targets, DiscoveredTarget};
use crate::error::Error;
use crate::login::{random_isid, ChapConfig, Login, LoginConfig, LoginStep};

/// How to reach and log in to one target (or a discovery portal).
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our InitiatorName.
    pub initiator_name: String,
    /// TargetName; `None` for a discovery session.
    pub target_name: Option<String>,
    /// The target's iSCSI/TCP portal.
    pub portal: SocketAddr,
    /// CHAP credentials.
    pub chap: Option<ChapConfig>,
    /// Ask for HeaderDigest=CRC32C.
    pub header_digest: bool,
    /// Ask for DataDigest=CRC32C.
    pub data_digest: bool,
    /// Idle time before a NOP-Out ping; zero turns the keepalive off.
    pub nop_interval: Duration,
    /// Time to wait for the NOP-In answer.
    pub nop_timeout: Duration,
    /// Time before an outstanding command is aborted.
    pub command_timeout: Duration,
    /// Time allowed for connect plus login.
    pub login_timeout: Duration,
    /// The MaxRecvDataSegmentLength we declare.
    pub max_recv_data_segment_length: u32,
}

impl SessionConfig {
    /// Defaults: no CHAP, no digests, NOP every 5 s with 5 s timeout, 30 s commands.
    pub fn new(
        initiator_name: impl Into<String>,
        target_name: Option<String>,
        portal: SocketAddr,
    ) -> Self {
        SessionConfig {
            initiator_name: initiator_name.into(),
            target_name,
            portal,
            chap: None,
            header_digest: false,
            data_digest: false,
            nop_interval: Duration::from_secs(5),
            nop_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(15),
            max_recv_data_segment_length: 262_144,
        }
    }

    /// From a configured session of `conf`.
    pub fn from_conf(initiator: &conf::Iqn, s: &conf::initiator::Session) -> Result<Self, Error> {
        let mut c = SessionConfig::new(
            initiator.as_str(),
            Some(s.target.as_str().to_owned()),
            s.portal.0,
        );
        c.header_digest = s.header_digest == conf::initiator::Digest::Crc32c;
        c.data_digest = s.data_digest == conf::initiator::Digest::Crc32c;
        c.nop_interval = Duration::from_secs(u64::from(s.nop_interval));
        c.nop_timeout = Duration::from_secs(u64::from(s.nop_timeout.max(1)));
        c.command_timeout = Duration::from_secs(u64::from(s.command_timeout.max(1)));
        if let Some(chap) = &s.chap {
            let secret = chap.secret().ok_or_else(|| {
                Error::Invalid(format!(
                    "session {}: chap secret not loaded",
                    s.target.as_str()
                ))
            })?;
            c.chap = Some(ChapConfig {
                username: chap.username.clone(),
                secret: secret.expose().as_bytes().to_vec(),
                target_secret: s
                    .mutual_chap
                    .as_ref()
                    .and_then(|m| m.secret())
                    .map(|m| m.expose().as_bytes().to_vec()),
            });
        }
        Ok(c)
    }

    fn local_params(&self) -> LocalParams {
        // CRC32C is preferred when asked for; None stays acceptable so that a target
        // without digests still logs in (the result is in `params()`).
        let digest = |on: bool| {
            if on {
                vec![DigestKind::Crc32c, DigestKind::None]
            } else {
                vec![DigestKind::None]
            }
        };
        LocalParams {
            header_digest: digest(self.header_digest),
            data_digest: digest(self.data_digest),
            initial_r2t: false,
            immediate_data: true,
            max_recv_data_segment_length: self.max_recv_data_segment_length,
            max_burst_length: 1 << 20,
            first_burst_length: 65_536,
            ..LocalParams::default()
        }
    }
}

/// Data direction and buffers of one SCSI command.
#[derive(Debug, Clone)]
pub enum DataDir {
    /// No data.
    None,
    /// Data-In of this many bytes.
    Read(u32),
    /// Data-Out of these bytes.
    Write(Vec<u8>),
}

#[derive(Debug)]
enum Reply {
    Scsi(Completion),
    Pdu(Pdu),
}

#[derive(Debug)]
enum TaskKind {
    Scsi {
        asm: DataInAssembler,
        data_out: Arc<Vec<u8>>,
    },
    Other,
}

#[derive(Debug)]
struct Task {
    kind: TaskKind,
    done: oneshot::Sender<Result<Reply, Error>>,
}

#[derive(Debug)]
struct State {
    seq: CmdSequencer,
    exp_stat_sn: u32,
    tags: TagAllocator,
    tasks: HashMap<u32, Task>,
    closed: Option<String>,
    /// A Logout Response arrived: the connection ending next is the logout.
    logged_out: bool,
}

#[derive(Debug)]
struct Inner {
    cfg: SessionConfig,
    params: NegotiatedParams,
    write: WriteParams,
    wire: WireConfig,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    st: Mutex<State>,
    window: Notify,
    closed_tx: watch::Sender<bool>,
    last_rx: Mutex<Instant>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A logged-in session. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

/// Most tasks in flight per session.
const MAX_TASKS: usize = 128;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn set_exp_stat_sn(h: &mut Header, sn: u32) {
    match h {
        Header::NopOut(h) => h.exp_stat_sn = sn,
        Header::ScsiCommand(h) => h.exp_stat_sn = sn,
        Header::TmfRequest(h) => h.exp_stat_sn = sn,
        Header::TextRequest(h) => h.exp_stat_sn = sn,
        Header::DataOut(h) => h.exp_stat_sn = sn,
        Header::LogoutRequest(h) => h.exp_stat_sn = sn,
        _ => {}
    }
}

async fn read_pdu(stream: &mut TcpStream, framer: &mut Framer) -> Result<Pdu, Error> {
    let mut buf = vec![0u8; 4096];
    // Bounded: each round takes at least one byte toward the current PDU.
    loop {
        if let Some(r) = framer.poll() {
            return r.map_err(Error::Framing);
        }
        let want = framer.needed().min(buf.len());
        if want == 0 {
            return Err(Error::Protocol("framer stopped".into()));
        }
        let n = stream
            .read(&mut buf[..want])
            .await
            .map_err(|e| Error::io("reading a Login Response", e))?;
        if n == 0 {
            return Err(Error::ConnectionLost(
                "the target closed the connection during login".into(),
            ));
        }
        framer.feed(&buf[..n]);
    }
}

impl Session {
    /// Connect to the portal and log in.
    pub async fn connect(cfg: SessionConfig) -> Result<Session, Error> {
        let deadline = cfg.login_timeout;
        match tokio::time::timeout(deadline, Self::connect_inner(cfg.clone())).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectionLost(format!(
                "connect and login to {} took longer than {deadline:?}",
                cfg.portal
            ))),
        }
    }

    async fn connect_inner(cfg: SessionConfig) -> Result<Session, Error> {
        let target = cfg
            .target_name
            .clone()
            .unwrap_or_else(|| "discovery".into());
        let mut stream = TcpStream::connect(cfg.portal)
            .await
            .map_err(|e| Error::io(format!("connecting to {}", cfg.portal), e))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Error::io("setting TCP_NODELAY", e))?;
        let mut mutual_random = vec![0u8; 17];
        // Without randomness mutual CHAP still works, with a weaker challenge.
        let _ = getrandom::getrandom(&mut mutual_random);
        let login_cfg = LoginConfig {
            initiator_name: cfg.initiator_name.clone(),
            target_name: cfg.target_name.clone(),
            isid: random_isid(),
            tsih: 0,
            cmd_sn: 1,
            local: cfg.local_params(),
            chap: cfg.chap.clone(),
            mutual_random,
        };
        let login_wire = WireConfig {
            digests: iscsi::Digests::NONE,
            limits: PduLimits {
                max_recv_data_segment_length: 65_536,
            },
        };
        let mut framer = Framer::new(login_wire);
        let (mut login, mut req) = Login::new(login_cfg, 0).map_err(|e| Error::Login {
            target: target.clone(),
            source: e,
        })?;
        let outcome = loop {
            let bytes = req.to_bytes(&login_wire);
            stream
                .write_all(&bytes)
                .await
                .map_err(|e| Error::io("sending a Login Request", e))?;
            let rsp = read_pdu(&mut stream, &mut framer).await?;
            match login.handle(&rsp).map_err(|e| Error::Login {
                target: target.clone(),
                source: e,
            })? {
                LoginStep::Send(next) => req = next,
                LoginStep::Done(out) => break out,
            }
        };
        let params = outcome.params;
        debug!(?params, "login complete");
        let wire = WireConfig {
            digests: params.digests(),
            limits: params.recv_limits(iscsi::pdu::Role::Initiator),
        };
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::unbounded_channel();
        let (closed_tx, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            write: WriteParams::from_negotiated(&params),
            params,
            wire,
            tx,
            st: Mutex::new(State {
                seq: CmdSequencer::new(outcome.cmd_sn, outcome.exp_cmd_sn, outcome.max_cmd_sn),
                exp_stat_sn: outcome.exp_stat_sn,
                tags: TagAllocator::new(1, MAX_TASKS),
                tasks: HashMap::new(),
                closed: None,
                logged_out: false,
            }),
            window: Notify::new(),
            closed_tx,
            last_rx: Mutex::new(Instant::now()),
            tasks: Mutex::new(Vec::new()),
            cfg,
        });
        let writer = tokio::spawn(writer_task(Arc::downgrade(&inner), wr, rx));
        let reader = tokio::spawn(reader_task(inner.clone(), rd, Framer::new(wire)));
        let mut handles = vec![writer, reader];
        if !inner.cfg.nop_interval.is_zero() {
            handles.push(tokio::spawn(keepalive_task(Arc::downgrade(&inner))));
        }
        *lock(&inner.tasks) = handles;
        info!(target = %target, portal = %inner.cfg.portal, "logged in");
        Ok(Session { inner })
    }

    /// The negotiated parameters.
    pub fn params(&self) -> &NegotiatedParams {
        &self.inner.params
    }

    /// The configuration the session was made with.
    pub fn config(&self) -> &SessionConfig {
        &self.inner.cfg
    }

    /// Why the session closed, once it has.
    pub fn closed_reason(&self) -> Option<String> {
        lock(&self.inner.st).closed.clone()
    }

    /// Wait until the session closes.
    pub async fn wait_closed(&self) {
        let mut rx = self.inner.closed_tx.subscribe();
        // Bounded: the value only changes once, to true.
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Close the connection without logout, failing every outstanding task.
    pub fn abort(&self, reason: &str) {
        self.inner.close(reason);
    }

    /// Run one SCSI command on `lun` (the 8-byte LUN field) and wait for its status.
    pub async fn execute(&self, lun: u64, cdb: &[u8], dir: DataDir) -> Result<Completion, Error> {
        let timeout = self.inner.cfg.command_timeout;
        let (edtl, read, write, data_out) = match dir {
            DataDir::None => (0u32, false, false, Vec::new()),
            DataDir::Read(n) => (n, true, false, Vec::new()),
            DataDir::Write(buf) => {
                let n = u32::try_from(buf.len())
                    .map_err(|_| Error::Invalid("write larger than 4 GiB".into()))?;
                (n, false, true, buf)
            }
        };
        let data_out = Arc::new(data_out);
        let plan = self.inner.write.plan(if write { edtl } else { 0 });
        let cdb = cdb.to_vec();
        let wp = self.inner.write;
        let kind = TaskKind::Scsi {
            asm: DataInAssembler::new(if read { edtl } else { 0 }),
            data_out: data_out.clone(),
        };
        let (itt, cmd_sn, rx) = self
            .inner
            .submit(false, None, timeout, kind, |itt, cmd_sn| {
                let mut pdus = vec![Pdu::with_data(
                    ScsiCommand {
                        immediate: false,
                        final_: plan.unsolicited == 0,
                        read,
                        write,
                        attr: TaskAttr::Simple,
                        lun,
                        itt,
                        expected_data_transfer_length: edtl,
                        cmd_sn,
                        exp_stat_sn: 0,
                        cdb,
                        bidi_read_length: None,
                    },
                    data_out[..plan.immediate as usize].to_vec(),
                )];
                pdus.extend(data_out_pdus(
                    lun,
                    itt,
                    RESERVED_TAG,
                    &data_out,
                    plan.immediate,
                    plan.unsolicited,
                    wp.max_send_segment,
                ));
                pdus
            })
            .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(Reply::Scsi(c)))) => Ok(c),
            Ok(Ok(Ok(Reply::Pdu(p)))) => Err(Error::Protocol(format!(
                "unexpected reply opcode {:#x} to a SCSI command",
                p.header.opcode_byte()
            ))),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::ConnectionLost(
                self.closed_reason()
                    .unwrap_or_else(|| "task dropped".into()),
            )),
            Err(_) => Err(self.recover_task(lun, itt, cmd_sn).await),
        }
    }

    /// ABORT TASK for a timed-out command, then LOGICAL UNIT RESET if that fails, then
    /// the connection; returns the timeout error describing what was done.
    async fn recover_task(&self, lun: u64, itt: u32, cmd_sn: u32) -> Error {
        let secs = self.inner.cfg.command_timeout.as_secs() as u32;
        warn!(itt, cmd_sn, "command timed out; sending ABORT TASK");
        let abort = self.tmf(TmfFunction::AbortTask, lun, itt, cmd_sn).await;
        let recovery = match abort {
            Ok(TmfResponseCode::Complete | TmfResponseCode::TaskDoesNotExist) => {
                "ABORT TASK succeeded".to_owned()
            }
            other => {
                warn!(?other, "ABORT TASK failed; sending LOGICAL UNIT RESET");
                match self
                    .tmf(TmfFunction::LogicalUnitReset, lun, RESERVED_TAG, cmd_sn)
                    .await
                {
                    Ok(TmfResponseCode::Complete) => {
                        format!("ABORT TASK failed ({other:?}); LOGICAL UNIT RESET succeeded")
                    }
                    r => {
                        self.inner.close("task recovery failed");
                        format!("ABORT TASK failed ({other:?}); LOGICAL UNIT RESET failed ({r:?}); connection closed")
                    }
                }
            }
        };
        self.inner.finish(
            itt,
            Err(Error::Timeout {
                secs,
                recovery: recovery.clone(),
            }),
        );
        Error::Timeout { secs, recovery }
    }

    /// Send a task management function and wait for its response.
    pub async fn tmf(
        &self,
        function: TmfFunction,
        lun: u64,
        referenced: u32,
        ref_cmd_sn: u32,
    ) -> Result<TmfResponseCode, Error> {
        let rsp = self
            .exchange(
                true,
                None,
                self.inner.cfg.command_timeout,
                move |itt, cmd_sn| {
                    Pdu::new(TmfRequest {
                        immediate: true,
                        function,
                        lun,
                        itt,
                        referenced_task_tag: referenced,
                        cmd_sn,
                        exp_stat_sn: 0,
                        ref_cmd_sn,
                        exp_data_sn: 0,
                    })
                },
            )
            .await?;
        match rsp.header {
            Header::TmfResponse(h) => Ok(h.response),
            other => Err(Error::Protocol(format!(
                "TMF answered by opcode {:#x}",
                other.opcode_byte()
            ))),
        }
    }

    /// Send a NOP-Out ping and wait for the NOP-In; returns the round trip.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let start = Instant::now();
        self.exchange(true, None, self.inner.cfg.nop_timeout, |itt, cmd_sn| {
            Pdu::new(NopOut {
                immediate: true,
                lun: 0,
                itt,
                ttt: RESERVED_TAG,
                cmd_sn,
                exp_stat_sn: 0,
            })
        })
        .await?;
        Ok(start.elapsed())
    }

    /// SendTargets=All on a (discovery) session.
    pub async fn send_targets(&self) -> Result<Vec<DiscoveredTarget>, Error> {
        let mut asm = TextAssembler::default();
        let mut ttt = RESERVED_TAG;
        let mut itt = None;
        let mut first = true;
        let mut all = TextKeys::new();
        // Bounded by the assembler's total size limit and this round cap.
        for _ in 0..64 {
            let data = if first {
                b"SendTargets=All\0".to_vec()
            } else {
                Vec::new()
            };
            first = false;
            let t = ttt;
            let rsp = self
                .exchange(
                    false,
                    itt,
                    self.inner.cfg.command_timeout,
                    move |itt, cmd_sn| {
                        Pdu::with_data(
                            TextRequest {
                                immediate: false,
                                final_: true,
                                continue_: false,
                                lun: 0,
                                itt,
                                ttt: t,
                                cmd_sn,
                                exp_stat_sn: 0,
                            },
                            data,
                        )
                    },
                )
                .await?;
            let Header::TextResponse(h) = &rsp.header else {
                return Err(Error::Protocol(format!(
                    "Text Request answered by opcode {:#x}",
                    rsp.header.opcode_byte()
                )));
            };
            itt = Some(h.itt);
            ttt = h.ttt;
            let keys = asm
                .push_keys(&rsp.data, h.continue_)
                .map_err(|e| Error::Protocol(format!("SendTargets text: {e}")))?;
            if let Some(keys) = keys {
                // F clear without C: this part is complete, more follows on request.
                all.0.extend(keys.0);
                if h.final_ {
                    return Ok(parse_send_targets(&all));
                }
            }
        }
        Err(Error::Protocol("SendTargets response did not end".into()))
    }

    /// Log out (close the session) and close the connection.
    pub async fn logout(&self) -> Result<(), Error> {
        let r = self
            .exchange(true, None, Duration::from_secs(10), |itt, cmd_sn| {
                Pdu::new(LogoutRequest {
                    immediate: true,
                    reason: LogoutReason::CloseSession,
                    itt,
                    cid: 0,
                    cmd_sn,
                    exp_stat_sn: 0,
                })
            })
            .await;
        self.inner.close("logged out");
        match r?.header {
            Header::LogoutResponse(h) => {
                debug!(response = ?h.response, "logout response");
                Ok(())
            }
            other => Err(Error::Protocol(format!(
                "Logout answered by opcode {:#x}",
                other.opcode_byte()
            ))),
        }
    }

    async fn exchange(
        &self,
        immediate: bool,
        itt: Option<u32>,
        wait: Duration,
        build: impl FnOnce(u32, u32) -> Pdu,
    ) -> Result<Pdu, Error> {
        let (task, _, rx) = self
            .inner
            .submit(immediate, itt, wait, TaskKind::Other, |itt, sn| {
                vec![build(itt, sn)]
            })
            .await?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(Ok(Reply::Pdu(p)))) => Ok(p),
            Ok(Ok(Ok(Reply::Scsi(_)))) => Err(Error::Protocol(
                "SCSI completion for a non-SCSI task".into(),
            )),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::ConnectionLost(
                self.closed_reason()
                    .unwrap_or_else(|| "task dropped".into()),
            )),
            Err(_) => {
                self.inner
                    .finish(task, Err(Error::ConnectionLost("no answer".into())));
                Err(Error::ConnectionLost(format!("no answer within {wait:?}")))
            }
        }
    }
}

impl Inner {
    /// Wait for an ITT and (for non-immediate PDUs) a CmdSN in the window, then queue
    /// the PDUs `build` makes, in CmdSN order.
    async fn submit(
        &self,
        immediate: bool,
        fixed_itt: Option<u32>,
        wait: Duration,
        kind: TaskKind,
        build: impl FnOnce(u32, u32) -> Vec<Pdu>,
    ) -> Result<(u32, u32, oneshot::Receiver<Result<Reply, Error>>), Error> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut build = Some(build);
        let mut kind = Some(kind);
        loop {
            let notified = self.window.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = lock(&self.st);
                if let Some(reason) = &st.closed {
                    return Err(Error::ConnectionLost(reason.clone()));
                }
                let window_open = immediate || st.seq.may_send();
                let itt = match fixed_itt {
                    Some(t) if window_open && !st.tasks.contains_key(&t) => Some(t),
                    Some(_) => None,
                    None if window_open => st.tags.alloc(),
                    None => None,
                };
                if let Some(itt) = itt {
                    let cmd_sn = st.seq.next(immediate).unwrap_or_else(|| st.seq.cmd_sn());
                    let (tx, rx) = oneshot::channel();
                    if let (Some(build), Some(kind)) = (build.take(), kind.take()) {
                        st.tasks.insert(itt, Task { kind, done: tx });
                        for pdu in build(itt, cmd_sn) {
                            self.queue(&mut st, pdu);
                        }
                    }
                    return Ok((itt, cmd_sn, rx));
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::Timeout {
                    secs: wait.as_secs() as u32,
                    recovery: "never sent: no CmdSN window or task slot".into(),
                });
            }
        }
    }

    fn queue(&self, st: &mut State, mut pdu: Pdu) {
        set_exp_stat_sn(&mut pdu.header, st.exp_stat_sn);
        let bytes = pdu.to_bytes(&self.wire);
        if self.tx.send(bytes).is_err() {
            st.closed.get_or_insert_with(|| "writer stopped".into());
        }
    }

    fn finish(&self, itt: u32, r: Result<Reply, Error>) {
        let task = {
            let mut st = lock(&self.st);
            let t = st.tasks.remove(&itt);
            if t.is_some() {
                st.tags.free(itt);
            }
            t
        };
        if let Some(t) = task {
            let _ = t.done.send(r);
        }
        self.window.notify_waiters();
    }

    fn close(&self, reason: &str) {
        let tasks: Vec<Task> = {
            let mut st = lock(&self.st);
            if st.closed.is_none() {
                let reason = if st.logged_out { "logged out" } else { reason };
                info!(reason, "session closed");
                st.closed = Some(reason.to_owned());
            }
            let itts: Vec<u32> = st.tasks.keys().copied().collect();
            for t in &itts {
                st.tags.free(*t);
            }
            st.tasks.drain().map(|(_, t)| t).collect()
        };
        for t in tasks {
            let _ = t.done.send(Err(Error::ConnectionLost(reason.to_owned())));
        }
        self.window.notify_waiters();
        self.closed_tx.send_replace(true);
        for h in lock(&self.tasks).drain(..) {
            h.abort();
        }
    }

    fn handle_pdu(&self, pdu: Pdu) -> Result<(), Error> {
        *lock(&self.last_rx) = Instant::now();
        let mut st = lock(&self.st);
        if let Some((stat_sn, exp, max)) = pdu.header.stat_fields() {
            st.seq.update(exp, max);
            let advances = match &pdu.header {
                Header::DataIn(h) => h.status.is_some(),
                Header::NopIn(h) => h.itt != RESERVED_TAG,
                Header::R2t(_) => false,
                _ => true,
            };
            if advances && Sn(stat_sn).ge(Sn(st.exp_stat_sn)) {
                st.exp_stat_sn = stat_sn.wrapping_add(1);
            }
        }
        self.window.notify_waiters();
        let itt = pdu.header.itt();
        match &pdu.header {
            Header::DataIn(h) => {
                let Some(Task {
                    kind: TaskKind::Scsi { asm, .. },
                    ..
                }) = st.tasks.get_mut(&itt)
                else {
                    return Err(Error::Protocol(format!("Data-In for unknown ITT {itt:#x}")));
                };
                match asm.data_in(h, &pdu.data) {
                    Ok(None) => Ok(()),
                    Ok(Some(c)) => {
                        drop(st);
                        self.finish(itt, Ok(Reply::Scsi(c)));
                        Ok(())
                    }
                    Err(e) => Err(Error::Protocol(e.to_string())),
                }
            }
            Header::ScsiResponse(h) => {
                let Some(Task {
                    kind: TaskKind::Scsi { asm, .. },
                    ..
                }) = st.tasks.get_mut(&itt)
                else {
                    return Err(Error::Protocol(format!(
                        "SCSI Response for unknown ITT {itt:#x}"
                    )));
                };
                let r = asm.response(h, &pdu.data);
                drop(st);
                match r {
                    Ok(c) => self.finish(itt, Ok(Reply::Scsi(c))),
                    Err(crate::command::ReassemblyError::TargetFailure(code)) => {
                        self.finish(itt, Err(Error::TargetFailure(code)))
                    }
                    Err(e) => return Err(Error::Protocol(e.to_string())),
                }
                Ok(())
            }
            Header::R2t(h) => {
                let Some(Task {
                    kind: TaskKind::Scsi { data_out, .. },
                    ..
                }) = st.tasks.get(&itt)
                else {
                    return Err(Error::Protocol(format!("R2T for unknown ITT {itt:#x}")));
                };
                let pdus = answer_r2t(h, data_out, &self.write).map_err(Error::Protocol)?;
                for p in pdus {
                    self.queue(&mut st, p);
                }
                Ok(())
            }
            Header::NopIn(h) => {
                if h.ttt != RESERVED_TAG {
                    // The target pings: answer with its TTT, echoing the data.
                    let cmd_sn = st.seq.cmd_sn();
                    let reply = NopOut {
                        immediate: true,
                        lun: h.lun,
                        itt: RESERVED_TAG,
                        ttt: h.ttt,
                        cmd_sn,
                        exp_stat_sn: 0,
                    };
                    self.queue(&mut st, Pdu::with_data(reply, pdu.data.clone()));
                }
                if h.itt != RESERVED_TAG {
                    drop(st);
                    self.finish(itt, Ok(Reply::Pdu(pdu)));
                }
                Ok(())
            }
            Header::TmfResponse(_) | Header::TextResponse(_) | Header::LogoutResponse(_) => {
                if matches!(pdu.header, Header::LogoutResponse(_)) {
                    st.logged_out = true;
                }
                drop(st);
                self.finish(itt, Ok(Reply::Pdu(pdu)));
                Ok(())
            }
            Header::Reject(h) => {
                let rejected = pdu
                    .data
                    .get(16..20)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                drop(st);
                warn!(reason = ?h.reason, ?rejected, "target rejected a PDU");
                if let Some(t) = rejected {
                    self.finish(t, Err(Error::Rejected(h.reason)));
                }
                if matches!(h.reason, RejectReason::DataDigestError) {
                    return Err(Error::Rejected(h.reason));
                }
                Ok(())
            }
            Header::AsyncMessage(h) => {
                drop(st);
                warn!(event = ?h.async_event, "asynchronous message from the target");
                match h.async_event {
                    iscsi::pdu::AsyncEvent::LogoutRequest
                    | iscsi::pdu::AsyncEvent::DropConnection
                    | iscsi::pdu::AsyncEvent::DropAllConnections => Err(Error::ConnectionLost(
                        format!("target asked to end the connection ({:?})", h.async_event),
                    )),
                    _ => Ok(()),
                }
            }
            other => Err(Error::Protocol(format!(
                "unexpected opcode {:#x} in full feature phase",
                other.opcode_byte()
            ))),
        }
    }
}

async fn writer_task(
    inner: std::sync::Weak<Inner>,
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    while let Some(bytes) = rx.recv().await {
        if let Err(e) = wr.write_all(&bytes).await {
            if let Some(i) = inner.upgrade() {
                i.close(&format!("write failed: {e}"));
            }
            return;
        }
    }
    let _ = wr.shutdown().await;
}

async fn reader_task(inner: Arc<Inner>, mut rd: OwnedReadHalf, mut framer: Framer) {
    let mut buf = vec![0u8; 256 * 1024];
    let reason = loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => break "the target closed the connection".to_owned(),
            Ok(n) => n,
            Err(e) => break format!("read failed: {e}"),
        };
        let mut off = 0;
        let mut failed = None;
        // Bounded: every pass consumes bytes or ends on a broken framer.
        while off < n {
            let used = framer.feed(&buf[off..n]);
            off += used;
            while let Some(r) = framer.poll() {
                let res = match r {
                    Ok(pdu) => inner.handle_pdu(pdu),
                    Err(e) => Err(Error::Framing(e)),
                };
                if let Err(e) = res {
                    failed = Some(e.to_string());
                    break;
                }
            }
            if failed.is_some() || (used == 0 && framer.needed() == 0) {
                break;
            }
        }
        if let Some(f) = failed {
            break f;
        }
        if framer.is_broken() {
            break "framing error".to_owned();
        }
    };
    inner.close(&reason);
}

async fn keepalive_task(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        let interval = i.cfg.nop_interval;
        drop(i);
        tokio::time::sleep(interval).await;
        let Some(i) = inner.upgrade() else { return };
        if lock(&i.st).closed.is_some() {
            return;
        }
        let idle = lock(&i.last_rx).elapsed();
        if idle < interval {
            continue;
        }
        let s = Session { inner: i };
        if let Err(e) = s.ping().await {
            s.inner.close(&format!("NOP-Out not answered: {e}"));
            return;
        }
    }
}
