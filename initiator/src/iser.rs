//! The iSER transport (RFC 7145) on `verbs`: CM connect with `iser_cm_hdr` private data
//! (ZBVA_NOT_SUP | SEND_W_INV_NOT_SUP), login as SENDs carrying the 28-byte iSER header
//! (RDMAExtensions=Yes and the iSER keys), a receive ring, and per SCSI command a
//! registered buffer advertised as Read or Write STag/VA. With PI, the buffer is a
//! signature MR with the domains of DESIGN section 5, and after the SCSI Response the
//! MR's status is checked: a signature error becomes ILLEGAL REQUEST 10h/0xh with the
//! failing LBA, overriding the target's status.
//!
//! Over iSER the initiator offers ImmediateData=No and InitialR2T=Yes, so every data
//! byte moves by RDMA (the target READs write data from the Write STag and WRITEs read
//! data to the Read STag); PDUs never carry data segments for SCSI commands.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use iscsi::iser::{IserCmHdr, IserControl, IserHeader, IserMessage, RemoteBuffer};
use iscsi::negotiate::{LocalParams, NegotiatedParams};
use iscsi::pdu::{
    Header, LogoutReason, LogoutRequest, NopOut, Pdu, PduLimits, Residual, ScsiCommand, TaskAttr,
    TmfFunction, TmfRequest, TmfResponseCode, RESERVED_TAG,
};
use iscsi::seq::{CmdSequencer, Sn, TagAllocator};
use iscsi::Codec;
use t10pi::{PiError, PiErrorKind, TUPLE_SIZE};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tracing::{debug, info, warn};
use verbs::cm::{CmAddr, CmConnection, ConnParam};
use verbs::{
    AccessFlags, Context, Cq, DmaBuf, Mr, Pd, Qp, QpInitAttr, RecvWr, SendBatch, SendFlags, SendWr,
    SigAttrs, SigDomain, SigErrType, SigMr, WcOpcode,
};

use crate::command::{parse_sense_segment, Completion};
use crate::error::Error;
use crate::login::{random_isid, Login, LoginConfig, LoginStep};
use crate::protection::{pi_sense, CommandProtection, ProtOp};
use crate::session::{DataDir, SessionConfig};

/// Receive buffers posted at once.
const RING: usize = 64;
/// Our InitiatorRecvDataSegmentLength.
const RECV_SEGMENT: u32 = 8192;
/// Bytes of one receive buffer: iSER header, BHS, an AHS allowance, data.
const RECV_BUF: usize = 28 + 48 + 256 + RECV_SEGMENT as usize;
/// Most tasks in flight.
const MAX_TASKS: usize = 64;
const SEND_TAG: u64 = 1 << 40;

/// Where and how to reach a target over iSER.
#[derive(Debug, Clone)]
pub struct IserConfig {
    /// Names, CHAP and timers (the portal and digests are not used).
    pub session: SessionConfig,
    /// The target's iSER listen address on the fabric.
    pub fabric: CmAddr,
    /// The verbs device; `None` opens the soft mlx5 device.
    pub context: Option<Context>,
}

impl IserConfig {
    /// The fabric address of a configured session: its `iser_portal`, else the TCP
    /// portal's IP with port 3261.
    pub fn fabric_for(s: &conf::initiator::Session) -> CmAddr {
        match &s.iser_portal {
            Some(conf::FabricAddr::Tcp(a)) => CmAddr::Tcp(a.to_string()),
            Some(conf::FabricAddr::Unix(p)) => CmAddr::Unix(p.clone()),
            None => CmAddr::Tcp(
                std::net::SocketAddr::new(s.portal.0.ip(), conf::initiator::DEFAULT_ISER_PORT)
                    .to_string(),
            ),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn verr(context: &str, e: impl std::fmt::Display) -> Error {
    Error::ConnectionLost(format!("{context}: {e}"))
}

#[derive(Debug)]
struct State {
    seq: CmdSequencer,
    exp_stat_sn: u32,
    tags: TagAllocator,
    tasks: HashMap<u32, oneshot::Sender<Result<Pdu, Error>>>,
    closed: Option<String>,
    /// A Logout Response arrived: the connection ending next is the logout.
    logged_out: bool,
}

#[derive(Debug)]
struct Inner {
    cfg: SessionConfig,
    params: OnceLock<NegotiatedParams>,
    pd: Pd,
    qp: Qp,
    cq: Cq,
    conn: Mutex<Option<CmConnection>>,
    ring: Vec<Mr>,
    sends: Mutex<HashMap<u64, Mr>>,
    /// Registered SEND buffers whose SEND completed, by size class, for the next
    /// messages (a fresh MR per message costs a zeroed page-aligned allocation and
    /// an mkey).
    send_bufs: Mutex<MrPool>,
    /// Data and host-PI buffers of protected commands (local only: the target sees
    /// them through the signature MR), reused the same way.
    io_bufs: Mutex<MrPool>,
    /// Memory of plain (unprotected) data buffers: the target is given their rkey,
    /// so each command registers its buffer anew (a fresh key), but the memory is
    /// reused.
    plain_bufs: Mutex<SizeClasses<Arc<DmaBuf>>>,
    next_wr: AtomicU64,
    login_tx: mpsc::UnboundedSender<Pdu>,
    st: Mutex<State>,
    window: Notify,
    closed_tx: watch::Sender<bool>,
    poller: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Work requests (SENDs, signature registrations) waiting for the next
    /// doorbell of [`ring_doorbells`].
    outbox: Arc<SendBatch>,
    doorbells: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Signature MRs of finished commands (status read), registered again by the
    /// next protected command instead of allocating one each time.
    sig_mrs: Mutex<Vec<SigMr>>,
    _ctx: Context,
}

/// A logged-in iSER session. Cloning shares it.
#[derive(Debug, Clone)]
pub struct IserSession {
    inner: Arc<Inner>,
}

/// The outcome of a protected READ or WRITE over iSER.
#[derive(Debug)]
pub struct ProtectedCompletion {
    /// Status, sense, residual and host data (reads).
    pub completion: Completion,
    /// Host DIX PI (pass reads, strip reads).
    pub pi: Option<Vec<u8>>,
    /// The sense built from a signature error the MR recorded, if any.
    pub sig_sense: Option<scsi::Sense>,
}

impl IserSession {
    /// Connect over the fabric and log in.
    pub async fn connect(cfg: IserConfig) -> Result<IserSession, Error> {
        let t = cfg.session.login_timeout;
        match tokio::time::timeout(t, Self::connect_inner(cfg.clone())).await {
            Ok(r) => r,
            Err(_) => Err(Error::ConnectionLost(format!(
                "iSER connect and login to {} took longer than {t:?}",
                cfg.fabric
            ))),
        }
    }

    async fn connect_inner(cfg: IserConfig) -> Result<IserSession, Error> {
        let target = cfg
            .session
            .target_name
            .clone()
            .unwrap_or_else(|| "discovery".into());
        let ctx = match cfg.context.clone() {
            Some(c) => c,
            None => {
                mlx5::register();
                Context::open(mlx5::SOFT_DEVICE)
                    .map_err(|e| verr("opening the soft mlx5 device", e))?
            }
        };
        let pd = ctx.alloc_pd().map_err(|e| verr("alloc_pd", e))?;
        let cq = ctx
            .create_cq(4 * RING as u32 + 1024)
            .map_err(|e| verr("create_cq", e))?;
        let attr = QpInitAttr {
            max_send_wr: 512,
            max_recv_wr: RING as u32,
            ..QpInitAttr::default()
        };
        let qp = pd
            .create_qp(&cq, &cq, &attr)
            .map_err(|e| verr("create_qp", e))?;
        let mut ring = Vec::with_capacity(RING);
        for i in 0..RING {
            let mr = pd
                .reg_mr(RECV_BUF, AccessFlags::LOCAL_WRITE)
                .map_err(|e| verr("registering the receive ring", e))?;
            qp.post_recv_one(RecvWr::new(i as u64, mr.sge_all()))
                .map_err(|e| verr("post_recv", e))?;
            ring.push(mr);
        }
        let hdr = IserCmHdr {
            zbva_not_supported: true,
            send_w_inv_not_supported: true,
        };
        let mut private = Vec::new();
        hdr.encode(&(), &mut private);
        let conn = verbs::cm::connect(
            &ctx,
            &qp,
            &cfg.fabric,
            &ConnParam::with_private_data(&private),
        )
        .await
        .map_err(|e| verr(&format!("iSER connect to {}", cfg.fabric), e))?;
        if let Err(e) = IserCmHdr::from_private_data(conn.peer_private_data()) {
            debug!("target's CM private data is not an iser_cm_hdr: {e}");
        }
        let (login_tx, mut login_rx) = mpsc::unbounded_channel();
        let (closed_tx, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            cfg: cfg.session.clone(),
            params: OnceLock::new(),
            pd,
            qp,
            cq,
            conn: Mutex::new(Some(conn)),
            ring,
            sends: Mutex::new(HashMap::new()),
            send_bufs: Mutex::new(MrPool::default()),
            io_bufs: Mutex::new(MrPool::default()),
            plain_bufs: Mutex::new(SizeClasses::default()),
            next_wr: AtomicU64::new(SEND_TAG),
            login_tx,
            st: Mutex::new(State {
                seq: CmdSequencer::new(1, 1, 1),
                exp_stat_sn: 0,
                tags: TagAllocator::new(1, MAX_TASKS),
                tasks: HashMap::new(),
                closed: None,
                logged_out: false,
            }),
            window: Notify::new(),
            closed_tx,
            poller: Mutex::new(None),
            outbox: Arc::new(SendBatch::new()),
            doorbells: Mutex::new(None),
            sig_mrs: Mutex::new(Vec::new()),
            _ctx: ctx,
        });
        *lock(&inner.poller) = Some(tokio::spawn(poller(Arc::downgrade(&inner))));
        *lock(&inner.doorbells) = Some(tokio::spawn(ring_doorbells(Arc::downgrade(&inner))));
        let session = IserSession { inner };

        let mut mutual_random = vec![0u8; 17];
        // Without randomness mutual CHAP still works, with a weaker challenge.
        let _ = getrandom::getrandom(&mut mutual_random);
        let local = LocalParams {
            rdma_extensions: true,
            immediate_data: false,
            initial_r2t: true,
            initiator_recv_data_segment_length: RECV_SEGMENT,
            max_burst_length: 1 << 20,
            ..LocalParams::default()
        };
        let login_cfg = LoginConfig {
            initiator_name: cfg.session.initiator_name.clone(),
            target_name: cfg.session.target_name.clone(),
            isid: random_isid(),
            tsih: 0,
            cmd_sn: 1,
            local,
            chap: cfg.session.chap.clone(),
            mutual_random,
        };
        let login_err = |e| Error::Login {
            target: target.clone(),
            source: e,
        };
        let (mut login, mut req) = Login::new(login_cfg, 0).map_err(login_err)?;
        let outcome = loop {
            session.inner.post_message(req, IserControl::default())?;
            let rsp = tokio::select! {
                r = login_rx.recv() => r.ok_or_else(|| Error::ConnectionLost("iSER connection closed during login".into()))?,
                _ = session.wait_closed() => return Err(Error::ConnectionLost(session.closed_reason().unwrap_or_default())),
            };
            match login.handle(&rsp).map_err(login_err)? {
                LoginStep::Send(next) => req = next,
                LoginStep::Done(out) => break out,
            }
        };
        if !outcome.params.rdma_extensions {
            session.abort("target refused RDMAExtensions");
            return Err(Error::Login {
                target,
                source: crate::LoginError::Protocol("the target answered RDMAExtensions=No".into()),
            });
        }
        {
            let mut st = lock(&session.inner.st);
            st.seq = CmdSequencer::new(outcome.cmd_sn, outcome.exp_cmd_sn, outcome.max_cmd_sn);
            st.exp_stat_sn = outcome.exp_stat_sn;
        }
        let _ = session.inner.params.set(outcome.params);
        if !session.inner.cfg.nop_interval.is_zero() {
            tokio::spawn(keepalive(Arc::downgrade(&session.inner)));
        }
        info!(target = %target, fabric = %cfg.fabric, "logged in over iSER");
        Ok(session)
    }

    /// The negotiated parameters (set when login finished, before the session is
    /// handed out).
    pub fn params(&self) -> Option<&NegotiatedParams> {
        self.inner.params.get()
    }

    /// Why the session closed, once it has.
    pub fn closed_reason(&self) -> Option<String> {
        lock(&self.inner.st).closed.clone()
    }

    /// Wait until the session closes.
    pub async fn wait_closed(&self) {
        let mut rx = self.inner.closed_tx.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Close the connection without logout.
    pub fn abort(&self, reason: &str) {
        self.inner.close(reason);
    }

    async fn submit(
        &self,
        pdu_of: impl FnOnce(u32, u32) -> Pdu,
        immediate: bool,
        control: IserControl,
        wait: Duration,
    ) -> Result<(u32, u32, oneshot::Receiver<Result<Pdu, Error>>), Error> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut pdu_of = Some(pdu_of);
        loop {
            let notified = self.inner.window.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = lock(&self.inner.st);
                if let Some(r) = &st.closed {
                    return Err(Error::ConnectionLost(r.clone()));
                }
                if immediate || st.seq.may_send() {
                    if let Some(itt) = st.tags.alloc() {
                        let cmd_sn = st.seq.next(immediate).unwrap_or_else(|| st.seq.cmd_sn());
                        let (tx, rx) = oneshot::channel();
                        st.tasks.insert(itt, tx);
                        let mut pdu = (pdu_of
                            .take()
                            .ok_or_else(|| Error::Protocol("submit reused".into()))?)(
                            itt, cmd_sn
                        );
                        set_exp_stat_sn(&mut pdu.header, st.exp_stat_sn);
                        drop(st);
                        self.inner.post_message(pdu, control)?;
                        return Ok((itt, cmd_sn, rx));
                    }
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

    async fn exchange(
        &self,
        wait: Duration,
        pdu_of: impl FnOnce(u32, u32) -> Pdu,
    ) -> Result<Pdu, Error> {
        let (itt, _, rx) = self
            .submit(pdu_of, true, IserControl::default(), wait)
            .await?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::ConnectionLost(
                self.closed_reason().unwrap_or_default(),
            )),
            Err(_) => {
                self.inner
                    .finish(itt, Err(Error::ConnectionLost("no answer".into())));
                Err(Error::ConnectionLost(format!("no answer within {wait:?}")))
            }
        }
    }

    /// A task management function.
    pub async fn tmf(
        &self,
        function: TmfFunction,
        lun: u64,
        referenced: u32,
        ref_cmd_sn: u32,
    ) -> Result<TmfResponseCode, Error> {
        let rsp = self
            .exchange(self.inner.cfg.command_timeout, move |itt, cmd_sn| {
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
            })
            .await?;
        match rsp.header {
            Header::TmfResponse(h) => Ok(h.response),
            other => Err(Error::Protocol(format!(
                "TMF answered by opcode {:#x}",
                other.opcode_byte()
            ))),
        }
    }

    /// NOP-Out ping.
    pub async fn ping(&self) -> Result<(), Error> {
        self.exchange(self.inner.cfg.nop_timeout, |itt, cmd_sn| {
            Pdu::new(NopOut {
                immediate: true,
                lun: 0,
                itt,
                ttt: RESERVED_TAG,
                cmd_sn,
                exp_stat_sn: 0,
            })
        })
        .await
        .map(|_| ())
    }

    /// Log out and close.
    pub async fn logout(&self) -> Result<(), Error> {
        let r = self
            .exchange(Duration::from_secs(10), |itt, cmd_sn| {
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
        r.map(|_| ())
    }

    /// Send a SCSI command whose data lives in registered memory advertised by
    /// `control`, and wait for the SCSI Response.
    async fn command(
        &self,
        lun: u64,
        cdb: &[u8],
        edtl: u32,
        read: bool,
        write: bool,
        control: IserControl,
    ) -> Result<(u8, Vec<u8>, Residual), Error> {
        let timeout = self.inner.cfg.command_timeout;
        let cdb = cdb.to_vec();
        let (itt, cmd_sn, rx) = self
            .submit(
                move |itt, cmd_sn| {
                    Pdu::new(ScsiCommand {
                        immediate: false,
                        final_: true,
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
                    })
                },
                false,
                control,
                timeout,
            )
            .await?;
        let rsp = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => {
                return Err(Error::ConnectionLost(
                    self.closed_reason().unwrap_or_default(),
                ))
            }
            Err(_) => return Err(self.recover(lun, itt, cmd_sn).await),
        };
        match rsp.header {
            Header::ScsiResponse(h) => {
                if h.response != 0 {
                    return Err(Error::TargetFailure(h.response));
                }
                let sense =
                    parse_sense_segment(&rsp.data).map_err(|e| Error::Protocol(e.to_string()))?;
                Ok((h.status, sense, h.residual))
            }
            other => Err(Error::Protocol(format!(
                "SCSI command answered by opcode {:#x} over iSER",
                other.opcode_byte()
            ))),
        }
    }

    async fn recover(&self, lun: u64, itt: u32, cmd_sn: u32) -> Error {
        let secs = self.inner.cfg.command_timeout.as_secs() as u32;
        let recovery = match self.tmf(TmfFunction::AbortTask, lun, itt, cmd_sn).await {
            Ok(TmfResponseCode::Complete | TmfResponseCode::TaskDoesNotExist) => {
                "ABORT TASK succeeded".to_owned()
            }
            other => match self
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
            },
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

    /// Run a command with data in a plain registered buffer (no PI).
    pub async fn execute(&self, lun: u64, cdb: &[u8], dir: DataDir) -> Result<Completion, Error> {
        let access =
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ | AccessFlags::REMOTE_WRITE;
        let (mr, edtl, read, write) = match &dir {
            DataDir::None => (None, 0, false, false),
            DataDir::Read(n) => (
                Some(self.inner.plain_buf((*n as usize).max(1), access)?),
                *n,
                true,
                false,
            ),
            DataDir::Write(b) => {
                let mr = self.inner.plain_buf(b.len().max(1), access)?;
                mr.write_at(0, b)
                    .map_err(|e| verr("filling the write buffer", e))?;
                (
                    Some(mr),
                    u32::try_from(b.len())
                        .map_err(|_| Error::Invalid("write larger than 4 GiB".into()))?,
                    false,
                    true,
                )
            }
        };
        let buf = mr.as_ref().map(|m| RemoteBuffer {
            stag: m.rkey(),
            va: m.addr(),
        });
        let control = IserControl {
            write: if write { buf } else { None },
            read: if read { buf } else { None },
        };
        let (status, sense, residual) = self.command(lun, cdb, edtl, read, write, control).await?;
        let data = match (&mr, read) {
            (Some(m), true) => {
                let n = match residual {
                    Residual::Underflow(u) => edtl.saturating_sub(u),
                    _ => edtl,
                };
                m.to_vec(0, n as usize)
                    .map_err(|e| verr("reading the read buffer", e))?
            }
            _ => Vec::new(),
        };
        if let Some(m) = mr {
            self.inner.recycle_plain(m);
        }
        Ok(Completion {
            status,
            sense,
            residual,
            data,
        })
    }

    /// A READ or WRITE whose data (and host PI) a signature MR moves with the domains
    /// of `p`; `write` carries the host data and PI of a write.
    pub async fn execute_protected(
        &self,
        lun: u64,
        cdb: &[u8],
        p: &CommandProtection,
        lba: u64,
        blocks: u32,
        write: Option<(&[u8], Option<&[u8]>)>,
    ) -> Result<ProtectedCompletion, Error> {
        if p.op == ProtOp::None {
            let dir = match write {
                Some((d, _)) => DataDir::Write(d.to_vec()),
                None => DataDir::Read(blocks * p.block_size),
            };
            let c = self.execute(lun, cdb, dir).await?;
            return Ok(ProtectedCompletion {
                completion: c,
                pi: None,
                sig_sense: None,
            });
        }
        let bs = p.block_size as usize;
        let n = blocks as usize;
        let access =
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_READ | AccessFlags::REMOTE_WRITE;
        // Local rights only: the target reaches them through the signature MR.
        let local = AccessFlags::LOCAL_WRITE;
        let data = self.inner.io_buf(n * bs, local)?;
        let pi = if p.op.pi_in_memory() {
            Some(self.inner.io_buf(n * TUPLE_SIZE, local)?)
        } else {
            None
        };
        if let Some((d, host_pi)) = write {
            if d.len() != n * bs {
                return Err(Error::Invalid(format!(
                    "write of {} bytes for {blocks} blocks",
                    d.len()
                )));
            }
            data.write_at(0, d)
                .map_err(|e| verr("filling the data buffer", e))?;
            if let Some(m) = &pi {
                let hp = host_pi.ok_or_else(|| {
                    Error::Invalid("protection mode needs the host's PI buffer".into())
                })?;
                if hp.len() != n * TUPLE_SIZE {
                    return Err(Error::Invalid(format!(
                        "PI buffer has {} bytes, {blocks} blocks need {}",
                        hp.len(),
                        n * TUPLE_SIZE
                    )));
                }
                m.write_at(0, hp)
                    .map_err(|e| verr("filling the PI buffer", e))?;
            }
        }
        let wire = SigDomain::T10Dif(p.domain(t10pi::GuardType::Crc, lba));
        let mem = SigDomain::T10Dif(p.domain(p.host_guard, lba));
        let attrs = match p.op {
            ProtOp::WriteInsert | ProtOp::ReadStrip => SigAttrs {
                check_mask: p.check_mask,
                mem: SigDomain::None,
                wire,
            },
            ProtOp::WritePass | ProtOp::ReadPass => SigAttrs {
                check_mask: p.check_mask,
                mem,
                wire,
            },
            ProtOp::WriteStrip | ProtOp::ReadInsert => SigAttrs {
                check_mask: p.check_mask,
                mem,
                wire: SigDomain::None,
            },
            ProtOp::None => SigAttrs::default(),
        };
        let pooled = lock(&self.inner.sig_mrs).pop();
        let sig = match pooled {
            Some(m) => m,
            None => self
                .inner
                .pd
                .alloc_mr_integrity(1, 1)
                .map_err(|e| verr("alloc_mr_integrity", e))?,
        };
        // Posted unsignaled ahead of the command's SEND: the send queue executes in
        // order, so the MR is valid before the target can touch it, and a failed
        // registration moves the QP to error, which fails the SEND (and the command).
        let wr_id = self.inner.next_wr.fetch_add(1, Ordering::Relaxed);
        let mut wr = SendWr::reg_mr_integrity(
            wr_id,
            sig.lkey(),
            data.sge(0, (n * bs) as u32),
            pi.as_ref().map(|m| m.sge(0, (n * TUPLE_SIZE) as u32)),
            attrs,
            access,
        );
        wr.flags = SendFlags(wr.flags.0 & !SendFlags::SIGNALED.0);
        self.inner.queue_send(wr);
        let wire_len = blocks * p.wire_block();
        let buf = Some(RemoteBuffer {
            stag: sig.rkey(),
            va: data.addr(),
        });
        let is_write = write.is_some();
        let control = IserControl {
            write: if is_write { buf } else { None },
            read: if is_write { None } else { buf },
        };
        let (status, sense, residual) = self
            .command(lun, cdb, wire_len, !is_write, is_write, control)
            .await?;
        let sig_sense = match sig.check_status().map_err(|e| verr("check_mr_status", e))? {
            Some(e) => {
                let kind = match e.err_type {
                    SigErrType::BadGuard => PiErrorKind::Guard,
                    SigErrType::BadAppTag => PiErrorKind::AppTag,
                    SigErrType::BadRefTag => PiErrorKind::RefTag,
                };
                let stride = u64::from(p.block_size) + TUPLE_SIZE as u64;
                let pe = PiError {
                    kind,
                    expected: e.expected,
                    actual: e.actual,
                    block: e.sig_err_offset / stride,
                    wire_offset: e.sig_err_offset,
                };
                warn!(lba, %e, "signature error on the iSER signature MR");
                Some(pi_sense(&pe, lba, p.block_size))
            }
            None => None,
        };
        // The response came after the target's last transfer and the status is
        // read: the MR can be registered again. (On any error above it is dropped,
        // as the target might still be using it.)
        lock(&self.inner.sig_mrs).push(sig);
        let (host, host_pi) = if is_write {
            (Vec::new(), None)
        } else {
            // The blocks the target reports having sent are the read's data; the
            // rest of a pooled buffer still holds an earlier read's bytes and is
            // returned as zeros, as a fresh buffer would give (clearing every
            // buffer before the read would cost a pass over it).
            let sent = match residual {
                Residual::Underflow(u) => wire_len.saturating_sub(u),
                _ => wire_len,
            };
            let covered = ((sent / p.wire_block()) as usize).min(n);
            let placed = |m: &Mr, unit: usize, what: &'static str| {
                let mut v = m.to_vec(0, covered * unit).map_err(|e| verr(what, e))?;
                v.resize(n * unit, 0);
                Ok::<_, Error>(v)
            };
            let d = placed(&data, bs, "reading the data buffer")?;
            let hp = match &pi {
                Some(m) => Some(placed(m, TUPLE_SIZE, "reading the PI buffer")?),
                None => None,
            };
            (d, hp)
        };
        {
            let mut pool = lock(&self.inner.io_bufs);
            let len = data.len();
            pool.put(data, len);
            if let Some(m) = pi {
                let len = m.len();
                pool.put(m, len);
            }
        }
        Ok(ProtectedCompletion {
            completion: Completion {
                status,
                sense,
                residual,
                data: host,
            },
            pi: host_pi,
            sig_sense,
        })
    }
}

/// Buffers by size class: powers of two from 256 bytes to 1 MiB, at most
/// [`SizeClasses::PER_CLASS`] and [`SizeClasses::CLASS_BYTES`] each (larger ones are
/// allocated every time and not kept).
#[derive(Debug)]
struct SizeClasses<T> {
    classes: [Vec<T>; 13],
}

impl<T> Default for SizeClasses<T> {
    fn default() -> Self {
        SizeClasses {
            classes: Default::default(),
        }
    }
}

/// Registered buffers (SENDs; data and host PI of protected commands).
type MrPool = SizeClasses<Mr>;

impl<T> SizeClasses<T> {
    const PER_CLASS: usize = 64;
    const CLASS_BYTES: usize = 8 << 20;
    const MIN: usize = 256;

    fn class_len(len: usize) -> usize {
        len.max(Self::MIN).next_power_of_two()
    }

    /// What to allocate for `len` bytes: its class, or exactly `len` when no class
    /// holds it.
    fn alloc_len(len: usize) -> usize {
        match Self::class(len) {
            Some(_) => Self::class_len(len),
            None => len,
        }
    }

    fn class(len: usize) -> Option<usize> {
        let i = (Self::class_len(len) / Self::MIN).trailing_zeros() as usize;
        (i < 13).then_some(i)
    }

    /// A free buffer that holds `len` bytes.
    fn take(&mut self, len: usize) -> Option<T> {
        Self::class(len).and_then(|c| self.classes[c].pop())
    }

    /// Keeps `item` (`len` bytes, no longer in use) unless its class is full.
    fn put(&mut self, item: T, len: usize) {
        if let Some(c) = Self::class(len).filter(|_| len.is_power_of_two()) {
            let keep = Self::PER_CLASS.min(Self::CLASS_BYTES / len);
            if self.classes[c].len() < keep {
                self.classes[c].push(item);
            }
        }
    }
}

fn set_exp_stat_sn(h: &mut Header, sn: u32) {
    match h {
        Header::NopOut(h) => h.exp_stat_sn = sn,
        Header::ScsiCommand(h) => h.exp_stat_sn = sn,
        Header::TmfRequest(h) => h.exp_stat_sn = sn,
        Header::TextRequest(h) => h.exp_stat_sn = sn,
        Header::LogoutRequest(h) => h.exp_stat_sn = sn,
        Header::LoginRequest(h) => h.exp_stat_sn = sn.max(h.exp_stat_sn),
        _ => {}
    }
}

impl Inner {
    fn post_message(&self, pdu: Pdu, control: IserControl) -> Result<(), Error> {
        let msg = IserMessage {
            header: IserHeader::Control(control),
            pdu: Some(pdu),
        };
        let limits = PduLimits {
            max_recv_data_segment_length: 1 << 24,
        };
        let bytes = msg.to_bytes(&limits);
        let pooled = lock(&self.send_bufs).take(bytes.len());
        let mr = match pooled {
            Some(m) => m,
            None => self
                .pd
                .reg_mr(MrPool::alloc_len(bytes.len()), AccessFlags::LOCAL_WRITE)
                .map_err(|e| verr("reg_mr for a SEND", e))?,
        };
        mr.write_at(0, &bytes)
            .map_err(|e| verr("filling a SEND", e))?;
        let wr_id = self.next_wr.fetch_add(1, Ordering::Relaxed);
        let sge = mr.sge(0, bytes.len() as u32);
        lock(&self.sends).insert(wr_id, mr);
        self.queue_send(SendWr::send(wr_id, sge));
        Ok(())
    }

    /// `len` bytes of plain-pool memory, registered with a key of their own. A
    /// reused buffer is not cleared: a read returns only the bytes the target
    /// reports having sent, and a write sends only what was written into it.
    fn plain_buf(&self, len: usize, access: AccessFlags) -> Result<Mr, Error> {
        let pooled = lock(&self.plain_bufs).take(len);
        let buf = match pooled {
            Some(b) => b,
            None => DmaBuf::new(SizeClasses::<Arc<DmaBuf>>::alloc_len(len))
                .map_err(|e| verr("allocating a buffer", e))?,
        };
        self.pd
            .reg_buf(buf, 0, len, access)
            .map_err(|e| verr("reg_mr", e))
    }

    /// Deregisters `mr` and keeps its memory for [`Inner::plain_buf`] when nothing
    /// else holds it.
    fn recycle_plain(&self, mr: Mr) {
        let buf = Arc::clone(mr.buf());
        drop(mr);
        if Arc::strong_count(&buf) == 1 {
            let len = buf.len();
            lock(&self.plain_bufs).put(buf, len);
        }
    }

    /// A buffer of at least `len` bytes from the I/O pool (registered with
    /// `access`); a reused one is not cleared (see [`IserSession::execute_protected`]).
    fn io_buf(&self, len: usize, access: AccessFlags) -> Result<Mr, Error> {
        let pooled = lock(&self.io_bufs).take(len);
        match pooled {
            Some(m) => Ok(m),
            None => self
                .pd
                .reg_mr(MrPool::alloc_len(len), access)
                .map_err(|e| verr("reg_mr", e)),
        }
    }

    /// Queues `wr` for the next doorbell of [`ring_doorbells`] (work requests go
    /// out in the order they are queued).
    fn queue_send(&self, wr: SendWr) {
        self.outbox.queue([wr]);
    }

    fn finish(&self, itt: u32, r: Result<Pdu, Error>) {
        let t = {
            let mut st = lock(&self.st);
            let t = st.tasks.remove(&itt);
            if t.is_some() {
                st.tags.free(itt);
            }
            t
        };
        if let Some(t) = t {
            let _ = t.send(r);
        }
        self.window.notify_waiters();
    }

    fn close(&self, reason: &str) {
        let tasks: Vec<_> = {
            let mut st = lock(&self.st);
            if st.closed.is_none() {
                let reason = if st.logged_out { "logged out" } else { reason };
                info!(reason, "iSER session closed");
                st.closed = Some(reason.to_owned());
            }
            let itts: Vec<u32> = st.tasks.keys().copied().collect();
            for t in itts {
                st.tags.free(t);
            }
            st.tasks.drain().map(|(_, t)| t).collect()
        };
        for t in tasks {
            let _ = t.send(Err(Error::ConnectionLost(reason.to_owned())));
        }
        self.window.notify_waiters();
        self.closed_tx.send_replace(true);
        if let Some(c) = lock(&self.conn).take() {
            c.disconnect();
        }
        if let Some(p) = lock(&self.poller).take() {
            p.abort();
        }
        if let Some(d) = lock(&self.doorbells).take() {
            d.abort();
        }
    }

    fn handle(&self, bytes: &[u8]) -> Result<(), Error> {
        let limits = PduLimits {
            max_recv_data_segment_length: RECV_SEGMENT.max(8192),
        };
        let msg = IserMessage::decode(bytes, &limits)
            .map_err(|e| Error::Protocol(format!("iSER message: {e}")))?;
        let Some(pdu) = msg.pdu else { return Ok(()) };
        if self.params.get().is_none() {
            let _ = self.login_tx.send(pdu);
            return Ok(());
        }
        let mut st = lock(&self.st);
        if let Some((stat_sn, exp, max)) = pdu.header.stat_fields() {
            st.seq.update(exp, max);
            let advances = !matches!(&pdu.header, Header::NopIn(h) if h.itt == RESERVED_TAG);
            if advances && Sn(stat_sn).ge(Sn(st.exp_stat_sn)) {
                st.exp_stat_sn = stat_sn.wrapping_add(1);
            }
        }
        self.window.notify_waiters();
        let itt = pdu.header.itt();
        match &pdu.header {
            Header::NopIn(h) => {
                if h.ttt != RESERVED_TAG {
                    let mut reply = Pdu::with_data(
                        NopOut {
                            immediate: true,
                            lun: h.lun,
                            itt: RESERVED_TAG,
                            ttt: h.ttt,
                            cmd_sn: st.seq.cmd_sn(),
                            exp_stat_sn: 0,
                        },
                        pdu.data.clone(),
                    );
                    set_exp_stat_sn(&mut reply.header, st.exp_stat_sn);
                    drop(st);
                    self.post_message(reply, IserControl::default())?;
                } else {
                    drop(st);
                }
                if h.itt != RESERVED_TAG {
                    self.finish(itt, Ok(pdu));
                }
                Ok(())
            }
            Header::ScsiResponse(_)
            | Header::TmfResponse(_)
            | Header::TextResponse(_)
            | Header::LogoutResponse(_) => {
                if matches!(pdu.header, Header::LogoutResponse(_)) {
                    st.logged_out = true;
                }
                drop(st);
                self.finish(itt, Ok(pdu));
                Ok(())
            }
            Header::Reject(h) => {
                drop(st);
                if let Some(b) = pdu.data.get(16..20) {
                    self.finish(
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                        Err(Error::Rejected(h.reason)),
                    );
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
                "opcode {:#x} is not sent over iSER",
                other.opcode_byte()
            ))),
        }
    }
}

async fn poller(inner: std::sync::Weak<Inner>) {
    let cq = match inner.upgrade() {
        Some(i) => i.cq.clone(),
        None => return,
    };
    let mut wcs = Vec::with_capacity(64);
    loop {
        wcs.clear();
        if let Err(e) = cq.next_batch(&mut wcs, 64).await {
            if let Some(i) = inner.upgrade() {
                i.close(&format!("CQ failed: {e}"));
            }
            return;
        }
        let Some(i) = inner.upgrade() else { return };
        for wc in &wcs {
            match wc.opcode {
                WcOpcode::Recv => {
                    if !wc.is_ok() {
                        i.close(&format!("receive completed with {:?}", wc.status));
                        return;
                    }
                    let Some(mr) = i.ring.get(wc.wr_id as usize) else {
                        continue;
                    };
                    let bytes = match mr.to_vec(0, wc.byte_len as usize) {
                        Ok(b) => b,
                        Err(e) => {
                            i.close(&format!("receive buffer: {e}"));
                            return;
                        }
                    };
                    if let Err(e) = i.qp.post_recv_one(RecvWr::new(wc.wr_id, mr.sge_all())) {
                        i.close(&format!("reposting a receive: {e}"));
                        return;
                    }
                    if let Err(e) = i.handle(&bytes) {
                        i.close(&e.to_string());
                        return;
                    }
                }
                _ => {
                    let buf = lock(&i.sends).remove(&wc.wr_id);
                    if let Some(mr) = buf.filter(|_| wc.is_ok()) {
                        let len = mr.len();
                        lock(&i.send_bufs).put(mr, len);
                    }
                    if !wc.is_ok() {
                        i.close(&format!("send completed with {:?}", wc.status));
                        return;
                    }
                }
            }
        }
    }
}

/// Posts the work requests queued by [`Inner::queue_send`] with one doorbell per
/// turn of the runtime ([`SendBatch`]), until the session ends.
async fn ring_doorbells(inner: std::sync::Weak<Inner>) {
    let Some(batch) = inner.upgrade().map(|i| Arc::clone(&i.outbox)) else {
        return;
    };
    batch
        .run(|wrs| {
            let Some(i) = inner.upgrade() else {
                return false;
            };
            if let Err(e) = i.qp.post_send(&wrs) {
                {
                    let mut sends = lock(&i.sends);
                    for wr in &wrs {
                        sends.remove(&wr.wr_id);
                    }
                }
                i.close(&format!("post_send failed: {e}"));
                return false;
            }
            true
        })
        .await
}

/// Ping every `nop_interval`; close the session when the NOP-In does not come back
/// within `nop_timeout`.
async fn keepalive(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(i) = inner.upgrade() else { return };
        let interval = i.cfg.nop_interval;
        drop(i);
        tokio::time::sleep(interval).await;
        let Some(i) = inner.upgrade() else { return };
        if lock(&i.st).closed.is_some() {
            return;
        }
        let s = IserSession { inner: i };
        if let Err(e) = s.ping().await {
            s.inner.close(&format!("NOP-Out not answered: {e}"));
            return;
        }
    }
}
