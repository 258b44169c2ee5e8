//! One connection's verbs resources and the data movement of SCSI commands: the
//! queue pair with its send and receive CQs (the send CQ read by one poller that
//! wakes each work request's waiter), the receive ring, pools of send buffers and of
//! command slots (a command buffer plus a signature MR each, one per command in
//! flight). Data-Out is fetched with RDMA READs from the initiator's Write STag;
//! Data-In is delivered with RDMA WRITEs to its Read STag; when the command's plan
//! puts PI on the wire both go through the signature MR and its status is checked
//! after every transfer.
//!
//! On a QP with signature pipelining the SCSI Response of a read goes out right
//! behind its Data-In, without waiting for the WRITEs to complete: if the HCA finds
//! bad PI it stops the send queue (SQD) before the response, and the poller
//! replaces that response with the CHECK CONDITION its command registered
//! ([`SigFallback`]), reposting everything that was queued behind it in the same
//! order (so StatSN stays in order on the wire) before resuming the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use iscsi::iser::{RdmaOp, ISER_HEADER_LEN};
use iscsi::pdu::BHS_LEN;
use verbs::sig::MrStatusCheck;
use verbs::{
    AccessFlags, Cq, DmaBuf, Mr, Pd, Qp, QpInitAttr, QpState, RecvWr, SendBatch, SendFlags, SendWr,
    Sge, SigAttrs, SigErr, SigMr, WcOpcode, WorkCompletion,
};

use super::IserError;

/// How long one work request may take before the connection is declared dead.
pub const WR_TIMEOUT: Duration = Duration::from_secs(30);

/// Room for AHS (extended CDB, bidirectional read length) in a receive buffer.
pub const AHS_ROOM: usize = 260;

/// Largest data transfer of one command the portal buffers.
pub const MAX_TRANSFER: usize = 64 << 20;

/// The login receive buffer's data room (MaxRecvDataSegmentLength during login).
pub const LOGIN_DATA: usize = 8192;

/// `wr_id` of the single login receive.
pub const LOGIN_WR: u64 = u64::MAX;

/// Bytes of one receive buffer for `data` bytes of data segment.
pub fn recv_slot_len(data: u32) -> usize {
    ISER_HEADER_LEN + BHS_LEN + AHS_ROOM + data as usize + 4
}

/// The verbs objects of one connection. The send CQ is read by one poller task
/// ([`Fabric::poll_completions`]) that hands each work completion to the waiter of its
/// `wr_id`, so several commands can have work requests in flight at once.
#[derive(Debug)]
pub struct Fabric {
    /// Protection domain.
    pub pd: Pd,
    /// CQ of the send queue (SENDs, RDMA, registrations).
    pub send_cq: Cq,
    /// CQ of the receive queue.
    pub recv_cq: Cq,
    /// The RC queue pair.
    pub qp: Qp,
    next_wr: AtomicU64,
    /// Waiters by `wr_id`; `None` once the poller stopped (the connection is dead).
    waiters: Mutex<Option<HashMap<u64, Waiter>>>,
    /// Free send-queue entries.
    credits: Arc<Semaphore>,
    /// Work requests waiting for the next doorbell of [`Fabric::ring_doorbells`].
    outbox: SendBatch,
    /// Held while a batch of the outbox is posted.
    doorbell: Mutex<()>,
    /// Whether the QP pipelines signature checks (responses posted behind the
    /// Data-In they depend on, see the module comment).
    pub pipelining: bool,
    /// On a pipelining QP: the send WRs posted and not yet known complete, in
    /// posting order (what is reposted after a signature error).
    posted: Mutex<VecDeque<SendWr>>,
    /// Replacements of pipelined responses, by the response's `wr_id`.
    fallbacks: Mutex<HashMap<u64, SigFallback>>,
    /// `wr_id`s of completions not yet applied to `posted` (the poller does not
    /// wait for the doorbell, which posts under that lock).
    completed: Mutex<Vec<u64>>,
}

/// Who learns of a signaled work request's completion.
enum Waiter {
    /// A task awaiting it ([`Pending::wait`]).
    Task(oneshot::Sender<WorkCompletion>),
    /// Nobody: what the chain used (send-queue credits, buffers) is released when
    /// it completes, and a failure ends the connection
    /// ([`Fabric::post_released`]).
    Release(Box<dyn Send>),
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Waiter::Task(_) => f.write_str("Task"),
            Waiter::Release(_) => f.write_str("Release"),
        }
    }
}

/// How to replace a pipelined response whose Data-In failed its signature check.
pub struct SigFallback {
    /// The signature MR the Data-In went through.
    pub sig_lkey: u32,
    /// Builds the SEND of the replacement response for the error.
    pub respond: ReplacementOf,
}

/// Builds the replacement response's SEND for a signature error.
pub type ReplacementOf = Box<dyn FnOnce(&SigErr) -> Result<SendWr, IserError> + Send>;

impl std::fmt::Debug for SigFallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigFallback")
            .field("sig_lkey", &self.sig_lkey)
            .finish_non_exhaustive()
    }
}

/// Send-queue entries a connection keeps below its `max_send_wr`.
const SEND_CREDITS: usize = 120;
/// Largest chain [`Fabric::run`] posts at once.
pub const MAX_CHAIN: usize = 64;

/// Posted work requests whose completions have not been awaited yet.
pub struct Pending {
    waiters: Vec<oneshot::Receiver<WorkCompletion>>,
    _credits: OwnedSemaphorePermit,
    /// What the work requests use, kept until they completed.
    held: Vec<Box<dyn Send>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("waiters", &self.waiters.len())
            .finish_non_exhaustive()
    }
}

impl Pending {
    /// Keeps `h` (a buffer the work requests use) until [`Pending::wait`] returns.
    pub fn holding(mut self, h: Box<dyn Send>) -> Pending {
        self.held.push(h);
        self
    }

    /// Waits for every completion of the chain; the first failed one is the error.
    /// A work request that never completes is the poller's watchdog's business
    /// ([`Fabric::poll_completions`]): it fails the QP, which flushes this one.
    pub async fn wait(self, what: &'static str) -> Result<(), IserError> {
        for w in self.waiters {
            match w.await {
                Err(_) => return Err(IserError::Closed),
                Ok(wc) => check_wc(&wc, what)?,
            }
        }
        Ok(())
    }
}

impl Fabric {
    /// PD, CQs and a QP deep enough for `recv_depth` receives.
    pub fn new(device: &verbs::Context, recv_depth: u32) -> Result<Fabric, IserError> {
        let pd = device.alloc_pd()?;
        let send_cq = device.create_cq(256)?;
        let recv_cq = device.create_cq(recv_depth + 16)?;
        let pipelining = device.query_device()?.sig_pipelining;
        let attr = QpInitAttr {
            // Room for a second copy of what is outstanding: after a signature
            // error the cancelled WRs stay in the queue (as NOPs) next to their
            // reposts.
            max_send_wr: 2 * SEND_CREDITS as u32 + 16,
            sig_pipelining: pipelining,
            max_recv_wr: recv_depth + 1,
            max_send_sge: 2,
            max_recv_sge: 1,
            ..QpInitAttr::default()
        };
        let qp = pd.create_qp(&send_cq, &recv_cq, &attr)?;
        Ok(Fabric {
            pd,
            send_cq,
            recv_cq,
            qp,
            next_wr: AtomicU64::new(0),
            waiters: Mutex::new(Some(HashMap::new())),
            credits: Arc::new(Semaphore::new(SEND_CREDITS)),
            outbox: SendBatch::new(),
            doorbell: Mutex::new(()),
            pipelining,
            posted: Mutex::new(VecDeque::new()),
            fallbacks: Mutex::new(HashMap::new()),
            completed: Mutex::new(Vec::new()),
        })
    }

    /// Reads the send CQ until it fails, waking the waiter of every completion.
    /// Signature error CQEs are consumed by the provider while polling (they precede
    /// the completion of the transfer they belong to), so a waiter that wakes can
    /// read the signature MR's status. On a pipelining QP it also watches for the
    /// send queue stopping after a signature error and replaces the held response
    /// (`Fabric::replace_failed_response`). When the CQ fails every waiter is
    /// dropped.
    ///
    /// A watchdog looks at the oldest work request still awaited every half
    /// [`WR_TIMEOUT`]; one that has not completed for [`WR_TIMEOUT`] means the HCA
    /// or the link is stuck, and the QP is moved to error, which flushes every
    /// outstanding work request (one timer per connection rather than per command).
    pub async fn poll_completions(self: Arc<Self>) {
        let mut out = Vec::with_capacity(32);
        let mut watch_sqd = self.pipelining;
        let mut watchdog = tokio::time::interval(WR_TIMEOUT / 2);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // (oldest awaited wr_id, when the watchdog first saw it)
        let mut oldest: Option<(u64, tokio::time::Instant)> = None;
        loop {
            out.clear();
            let drained = tokio::select! {
                biased;
                r = self.send_cq.next_batch(&mut out, 32) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "send CQ failed");
                        break;
                    }
                    false
                }
                st = self.qp.sq_drained(), if watch_sqd => {
                    // In error the connection is going away; stop watching.
                    watch_sqd = matches!(st, Ok(QpState::Sqd));
                    watch_sqd
                }
                now = watchdog.tick() => {
                    let first = self.waiters.lock().as_ref().and_then(|m| m.keys().min().copied());
                    oldest = match (first, oldest) {
                        (Some(id), Some((seen, since))) if id == seen => {
                            if now.duration_since(since) >= WR_TIMEOUT {
                                tracing::error!(wr_id = id, secs = WR_TIMEOUT.as_secs(), "work request not completed in time; closing the connection");
                                let _ = self.qp.to_error();
                                // Every waiter learns the connection is gone, even
                                // if the flush never comes.
                                break;
                            }
                            Some((seen, since))
                        }
                        (Some(id), _) => Some((id, now)),
                        (None, _) => None,
                    };
                    continue;
                }
            };
            if drained {
                // What completed before the stop (the SIGERR CQE included).
                while matches!(self.send_cq.poll(&mut out, 64), Ok(n) if n > 0) {}
            }
            if self.pipelining {
                self.retire(&out);
            }
            let mut released = Vec::new();
            {
                let mut w = self.waiters.lock();
                let Some(map) = w.as_mut() else { break };
                for wc in out.drain(..) {
                    match map.remove(&wc.wr_id) {
                        Some(Waiter::Task(tx)) => {
                            let _ = tx.send(wc);
                        }
                        Some(Waiter::Release(held)) => {
                            if !wc.is_ok() && wc.status != verbs::WcStatus::WrFlushErr {
                                tracing::error!(wr_id = wc.wr_id, status = ?wc.status, "work request failed; closing the connection");
                                let _ = self.qp.to_error();
                            }
                            released.push(held);
                        }
                        None => {}
                    }
                }
            }
            // Returned to their pools outside the lock (that may wake a task).
            drop(released);
            if drained {
                if let Err(e) = self.replace_failed_response() {
                    tracing::error!(error = %e, "cannot resume the send queue after a signature error; closing the connection");
                    let _ = self.qp.to_error();
                }
            }
        }
        *self.waiters.lock() = None;
    }

    /// Records `done` for [`Fabric::apply_completions`], applying it at once
    /// unless the doorbell holds the list (it applies them after posting).
    fn retire(&self, done: &[WorkCompletion]) {
        self.completed.lock().extend(done.iter().map(|wc| wc.wr_id));
        if let Some(mut posted) = self.posted.try_lock() {
            self.apply_completions(&mut posted);
        }
    }

    /// Forgets the posted WRs that completions show done (RC completes in order: a
    /// completion covers every WR posted before it).
    fn apply_completions(&self, posted: &mut VecDeque<SendWr>) {
        let done = std::mem::take(&mut *self.completed.lock());
        if done.is_empty() {
            return;
        }
        let mut fallbacks = self.fallbacks.lock();
        for id in done {
            // Completions of cancelled WRs were taken off the list when reposted.
            if let Some(i) = posted.iter().position(|w| w.wr_id == id) {
                for w in posted.drain(..=i) {
                    fallbacks.remove(&w.wr_id);
                }
            }
        }
    }

    /// The send queue stopped after a Data-In transfer that failed its signature
    /// check. Finds the pipelined response behind it (the first whose signature
    /// MR reports an error), cancels it and every WR posted after it (none has
    /// run), posts its CHECK CONDITION replacement followed by the others in their
    /// order, with waiters and fallbacks moved to the new `wr_id`s, and resumes.
    fn replace_failed_response(&self) -> Result<(), IserError> {
        // Held across cancel and repost: no doorbell posts in between.
        let mut posted = self.posted.lock();
        self.apply_completions(&mut posted);
        let mut fallbacks = self.fallbacks.lock();
        let ops = self.pd.context().ops();
        let mut failed = None;
        for (i, wr) in posted.iter().enumerate() {
            if let Some(f) = fallbacks.get(&wr.wr_id) {
                if let Some(e) = ops.check_mr_status(f.sig_lkey, MrStatusCheck::SIG_STATUS)? {
                    failed = Some((i, e));
                    break;
                }
            }
        }
        let Some((at, err)) = failed else {
            tracing::warn!("send queue drained with no pipelined response to replace");
            self.qp.modify_sqd_to_rts()?;
            return Ok(());
        };
        let held: Vec<SendWr> = posted.drain(at..).collect();
        let mut reposts = Vec::with_capacity(held.len());
        {
            let mut w = self.waiters.lock();
            let waiters = w.as_mut().ok_or(IserError::Closed)?;
            for (k, mut wr) in held.into_iter().enumerate() {
                let old = wr.wr_id;
                if self.qp.cancel_posted_send_wrs(old)? != 1 {
                    return Err(IserError::Protocol(format!(
                        "work request {old} behind the failed transfer was not held"
                    )));
                }
                if let verbs::SendOp::RegMrIntegrity { mr, .. } = wr.op {
                    // Posting marked the MR's status unchecked, and the cancelled
                    // registration never ran: nothing to find, but the repost needs
                    // the status read.
                    if let Some(e) = ops.check_mr_status(mr, MrStatusCheck::SIG_STATUS)? {
                        return Err(IserError::Protocol(format!(
                            "signature MR {mr:#x} of a held registration reports {e:?}"
                        )));
                    }
                }
                if k == 0 {
                    let f = fallbacks.remove(&old).ok_or(IserError::Closed)?;
                    let flags = wr.flags;
                    wr = (f.respond)(&err)?;
                    wr.flags = flags;
                }
                wr.wr_id = self.next_wr.fetch_add(1, Ordering::Relaxed) & (u64::MAX >> 1);
                if let Some(tx) = waiters.remove(&old) {
                    waiters.insert(wr.wr_id, tx);
                }
                if let Some(f) = fallbacks.remove(&old) {
                    fallbacks.insert(wr.wr_id, f);
                }
                reposts.push(wr);
            }
        }
        self.qp.post_send(&reposts)?;
        tracing::debug!(
            reposted = reposts.len() - 1,
            "pipelined response replaced after a signature error"
        );
        posted.extend(reposts);
        self.qp.modify_sqd_to_rts()?;
        Ok(())
    }

    /// Send-queue room for `n` work requests (waits while other commands use it).
    pub async fn credits(&self, n: usize) -> Result<OwnedSemaphorePermit, IserError> {
        let n = u32::try_from(n.clamp(1, SEND_CREDITS)).unwrap_or(1);
        self.credits
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| IserError::Closed)
    }

    /// Queues `wrs` (their `wr_id`s are replaced) holding `credits`; never waits.
    /// The work requests join the ones other commands queue in the same turn of
    /// the runtime, and [`Fabric::ring_doorbells`] posts them together: one
    /// doorbell, and on the soft HCA one socket write, for the responses of every
    /// command that finished meanwhile. Chains keep their order.
    pub fn post_batched(
        &self,
        wrs: Vec<SendWr>,
        credits: OwnedSemaphorePermit,
    ) -> Result<Pending, IserError> {
        let (wrs, pending) = self.prepare(wrs, credits, None)?;
        self.outbox.queue(wrs);
        pending.ok_or(IserError::Protocol("chain posted without a waiter".into()))
    }

    /// Like [`Fabric::post_batched`] for a chain nobody waits for: `hold` (what
    /// its work requests use) and `credits` are released when it completes, and a
    /// failed completion moves the QP to error, which ends the connection.
    pub fn post_released(
        &self,
        wrs: Vec<SendWr>,
        credits: OwnedSemaphorePermit,
        hold: Box<dyn Send>,
    ) -> Result<(), IserError> {
        let (wrs, _) = self.prepare(wrs, credits, Some(hold))?;
        self.outbox.queue(wrs);
        Ok(())
    }

    /// Like [`Fabric::post_batched`] for a chain that ends with a pipelined
    /// response: `fallback` replaces it if the chain's Data-In fails its check.
    /// With `hold` nobody waits (as [`Fabric::post_released`]; the replacement
    /// inherits the release) and the result is `None`.
    pub fn post_pipelined(
        &self,
        wrs: Vec<SendWr>,
        credits: OwnedSemaphorePermit,
        fallback: SigFallback,
        hold: Option<Box<dyn Send>>,
    ) -> Result<Option<Pending>, IserError> {
        let released = hold.is_some();
        let (wrs, pending) = self.prepare(wrs, credits, hold)?;
        if let Some(last) = wrs.last() {
            self.fallbacks.lock().insert(last.wr_id, fallback);
        }
        self.outbox.queue(wrs);
        match pending {
            None if !released => Err(IserError::Protocol("chain posted without a waiter".into())),
            p => Ok(p),
        }
    }

    /// Posts what [`Fabric::post_batched`] queued, once per turn of the runtime.
    /// Runs until the connection's tasks are dropped.
    pub async fn ring_doorbells(self: Arc<Self>) {
        loop {
            self.outbox.next_turn().await;
            self.ring_now();
        }
    }

    /// Posts what is queued now rather than at the doorbell task's next turn: the
    /// receive path does so after each batch of commands it ran in place, so that
    /// their answers do not wait for the batch that follows.
    pub fn ring_now(&self) {
        // Held from taking to posting: batches reach the send queue in order.
        let _doorbell = self.doorbell.lock();
        let wrs = self.outbox.take();
        if wrs.is_empty() {
            return;
        }
        let mut posted = self.pipelining.then(|| self.posted.lock());
        match self.qp.post_send(&wrs) {
            Ok(()) => {
                if let Some(p) = posted.as_mut() {
                    p.extend(wrs);
                    self.apply_completions(p);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "posting queued work requests failed");
                // Their waiters see the connection closed.
                self.forget(&wrs);
            }
        }
    }

    /// Assigns `wr_id`s, signals only the last work request (RC completes them in
    /// order, and one that fails flushes the rest, the last one included) and
    /// registers its waiter: a task's ([`Pending`]), or `hold` and the credits to
    /// release on completion.
    fn prepare(
        &self,
        mut wrs: Vec<SendWr>,
        credits: OwnedSemaphorePermit,
        hold: Option<Box<dyn Send>>,
    ) -> Result<(Vec<SendWr>, Option<Pending>), IserError> {
        let mut waiters = Vec::with_capacity(1);
        let last = wrs.len().saturating_sub(1);
        for (i, wr) in wrs.iter_mut().enumerate() {
            wr.wr_id = self.next_wr.fetch_add(1, Ordering::Relaxed) & (u64::MAX >> 1);
            if i < last {
                wr.flags = SendFlags(wr.flags.0 & !SendFlags::SIGNALED.0);
            } else {
                wr.flags = wr.flags | SendFlags::SIGNALED;
            }
        }
        let Some(wr) = wrs.last() else {
            // Nothing to wait for; what `hold` held is free at once.
            let pending = hold.is_none().then(|| Pending {
                waiters: Vec::new(),
                _credits: credits,
                held: Vec::new(),
            });
            return Ok((wrs, pending));
        };
        let mut w = self.waiters.lock();
        let map = w.as_mut().ok_or(IserError::Closed)?;
        match hold {
            Some(hold) => {
                map.insert(wr.wr_id, Waiter::Release(Box::new((hold, credits))));
                drop(w);
                Ok((wrs, None))
            }
            None => {
                let (tx, rx) = oneshot::channel();
                map.insert(wr.wr_id, Waiter::Task(tx));
                drop(w);
                waiters.push(rx);
                Ok((
                    wrs,
                    Some(Pending {
                        waiters,
                        _credits: credits,
                        held: Vec::new(),
                    }),
                ))
            }
        }
    }

    /// Drops the waiters of work requests that were never posted.
    fn forget(&self, wrs: &[SendWr]) {
        if let Some(map) = self.waiters.lock().as_mut() {
            for wr in wrs {
                map.remove(&wr.wr_id);
            }
        }
    }

    /// Posts `wrs` in chains the send queue can hold and waits for every completion.
    pub async fn run(&self, wrs: Vec<SendWr>, what: &'static str) -> Result<(), IserError> {
        let mut wrs = wrs;
        while !wrs.is_empty() {
            let rest = wrs.split_off(wrs.len().min(MAX_CHAIN));
            let credits = self.credits(wrs.len()).await?;
            self.post_batched(wrs, credits)?.wait(what).await?;
            wrs = rest;
        }
        Ok(())
    }
}

/// The send-CQ poller and the doorbell task of a connection; both end when this
/// is dropped.
#[derive(Debug)]
pub struct Poller(tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>);

impl Poller {
    /// Starts the tasks of `fab` on the current runtime.
    pub fn start(fab: &Arc<Fabric>) -> Poller {
        Poller(
            tokio::spawn(fab.clone().poll_completions()),
            tokio::spawn(fab.clone().ring_doorbells()),
        )
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.0.abort();
        self.1.abort();
    }
}

/// A fixed set of `T`s lent to one user at a time; [`Pool::take`] waits while all
/// are out, and a [`Lease`] returns its item when dropped.
#[derive(Debug)]
pub struct Pool<T> {
    free: Mutex<Vec<T>>,
    available: Semaphore,
}

impl<T> Pool<T> {
    /// A pool of `items`.
    pub fn new(items: Vec<T>) -> Arc<Pool<T>> {
        let n = items.len();
        Arc::new(Pool {
            free: Mutex::new(items),
            available: Semaphore::new(n),
        })
    }

    /// Lends one item, waiting while none is free.
    pub async fn take(self: &Arc<Self>) -> Result<Lease<T>, IserError> {
        let permit = self
            .available
            .acquire()
            .await
            .map_err(|_| IserError::Closed)?;
        permit.forget();
        let item = self.free.lock().pop();
        match item {
            Some(item) => Ok(Lease {
                item: Some(item),
                pool: self.clone(),
            }),
            None => {
                self.available.add_permits(1);
                Err(IserError::Protocol("resource pool out of step".into()))
            }
        }
    }
}

/// One item lent by a [`Pool`].
#[derive(Debug)]
pub struct Lease<T> {
    item: Option<T>,
    pool: Arc<Pool<T>>,
}

impl<T> Lease<T> {
    /// The lent item.
    pub fn get(&self) -> Result<&T, IserError> {
        self.item
            .as_ref()
            .ok_or(IserError::Protocol("lease already returned".into()))
    }

    /// The lent item, mutably.
    pub fn get_mut(&mut self) -> Result<&mut T, IserError> {
        self.item
            .as_mut()
            .ok_or(IserError::Protocol("lease already returned".into()))
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            self.pool.free.lock().push(item);
            self.pool.available.add_permits(1);
        }
    }
}

fn check_wc(wc: &WorkCompletion, what: &'static str) -> Result<(), IserError> {
    if wc.is_ok() {
        Ok(())
    } else if wc.status == verbs::WcStatus::WrFlushErr {
        Err(IserError::Closed)
    } else {
        Err(IserError::Completion {
            wr_id: wc.wr_id,
            what,
            status: wc.status,
        })
    }
}

/// The receive buffers: `slots` buffers of `slot_len` bytes in one registration.
#[derive(Debug)]
pub struct RecvRing {
    mr: Mr,
    slot_len: usize,
    slots: usize,
}

impl RecvRing {
    /// Registers `slots` buffers of `slot_len` bytes.
    pub fn new(pd: &Pd, slots: usize, slot_len: usize) -> Result<RecvRing, IserError> {
        let len = slots
            .checked_mul(slot_len)
            .ok_or(IserError::Protocol("receive ring too large".into()))?;
        let mr = pd.reg_mr(len, AccessFlags::LOCAL_WRITE)?;
        Ok(RecvRing {
            mr,
            slot_len,
            slots,
        })
    }

    /// Number of buffers.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The receive work request of buffer `slot`.
    pub fn recv_wr(&self, slot: usize) -> RecvWr {
        RecvWr::new(
            slot as u64,
            self.mr.sge(slot * self.slot_len, self.slot_len as u32),
        )
    }

    /// Posts every buffer.
    pub fn post_all(&self, qp: &Qp) -> Result<(), IserError> {
        let wrs: Vec<RecvWr> = (0..self.slots).map(|s| self.recv_wr(s)).collect();
        qp.post_recv(&wrs)?;
        Ok(())
    }

    /// Copies the `len` received bytes out of buffer `slot`.
    pub fn take(&self, slot: usize, len: usize) -> Result<Vec<u8>, IserError> {
        if slot >= self.slots || len > self.slot_len {
            return Err(IserError::Protocol(format!(
                "receive completion for slot {slot} with {len} bytes"
            )));
        }
        Ok(self.mr.to_vec(slot * self.slot_len, len)?)
    }
}

/// A buffer one SEND goes out of (one SEND in flight per buffer). Clones share
/// the buffer (a pipelined response's fallback rewrites it while it is held).
#[derive(Debug, Clone)]
pub struct SendBuf {
    mr: Arc<Mr>,
}

impl SendBuf {
    /// A send buffer of `len` bytes.
    pub fn new(pd: &Pd, len: usize) -> Result<SendBuf, IserError> {
        Ok(SendBuf {
            mr: Arc::new(pd.reg_mr(len, AccessFlags::NONE)?),
        })
    }

    /// Copies `msg` in and returns its SGE.
    pub fn load(&self, msg: &[u8]) -> Result<Sge, IserError> {
        if msg.len() > self.mr.len() {
            return Err(IserError::Protocol(format!(
                "{} byte message exceeds the {} byte send buffer",
                msg.len(),
                self.mr.len()
            )));
        }
        self.mr.write_at(0, msg)?;
        Ok(self.mr.sge(0, msg.len() as u32))
    }
}

/// The command buffer and signature MR one command uses while it runs.
#[derive(Debug)]
pub struct CmdSlot {
    data: Option<Mr>,
    sig: SigMr,
}

impl CmdSlot {
    /// A slot with one signature MR (one data and one metadata SGE).
    pub fn new(pd: &Pd) -> Result<CmdSlot, IserError> {
        Ok(CmdSlot {
            data: None,
            sig: pd.alloc_mr_integrity(1, 1)?,
        })
    }

    /// A registered buffer of at least `len` bytes (reused when big enough).
    pub fn buffer(&mut self, pd: &Pd, len: usize) -> Result<&Mr, IserError> {
        if len > MAX_TRANSFER {
            return Err(IserError::Protocol(format!(
                "data transfer of {len} bytes exceeds {MAX_TRANSFER}"
            )));
        }
        let fits = self.data.as_ref().is_some_and(|m| m.len() >= len);
        if !fits {
            // Whole pages, at least 64 KiB, so small commands do not re-register.
            let want = len.max(64 << 10).next_multiple_of(verbs::buf::PAGE_SIZE);
            self.data = None;
            let buf = DmaBuf::new(want)?;
            self.data = Some(pd.reg_buf(Arc::clone(&buf), 0, want, AccessFlags::LOCAL_WRITE)?);
        }
        self.data
            .as_ref()
            .ok_or(IserError::Protocol("command buffer missing".into()))
    }

    /// The current command buffer.
    pub fn data(&self) -> Option<&Mr> {
        self.data.as_ref()
    }

    /// The signature MR.
    pub fn sig(&self) -> &SigMr {
        &self.sig
    }
}

/// The registration binding the signature MR over the first `len` bytes of the
/// command buffer: blocks with interleaved tuples, or, with `dix_split`, the
/// blocks before that offset and their tuples after it (DIX). Posted in the same chain as the RDMA operations that use it: the
/// send queue executes in order, as a ULP chains IB_WR_REG_MR_INTEGRITY before its
/// RDMA work requests.
pub fn sig_reg_wr(
    pool: &CmdSlot,
    len: usize,
    dix_split: Option<usize>,
    attrs: SigAttrs,
) -> Result<SendWr, IserError> {
    let data = pool
        .data()
        .ok_or(IserError::Protocol("command buffer missing".into()))?;
    // A status never read (an earlier transfer failed midway) would block the
    // registration; it belongs to a command that is already answered.
    let _ = pool.sig.check_status()?;
    let (data_sge, prot) = match dix_split {
        Some(s) if s <= len => (data.sge(0, s as u32), Some(data.sge(s, (len - s) as u32))),
        _ => (data.sge(0, len as u32), None),
    };
    Ok(SendWr::reg_mr_integrity(
        0,
        pool.sig.lkey(),
        data_sge,
        prot,
        attrs,
        AccessFlags::LOCAL_WRITE,
    ))
}

/// Where one RDMA operation's local side lies: plain buffer or signature MR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalView {
    /// The command buffer's own key.
    Plain,
    /// The signature MR bound over the command buffer.
    Signature,
}

fn local_sge(pool: &CmdSlot, view: LocalView, offset: u32, len: u32) -> Result<Sge, IserError> {
    let data = pool
        .data()
        .ok_or(IserError::Protocol("command buffer missing".into()))?;
    let lkey = match view {
        LocalView::Plain => data.lkey(),
        LocalView::Signature => pool.sig.lkey(),
    };
    Ok(Sge {
        addr: data.addr() + u64::from(offset),
        length: len,
        lkey,
    })
}

/// RDMA READs of `ops` into the command buffer (Data-Out).
pub fn read_wrs(pool: &CmdSlot, ops: &[RdmaOp], view: LocalView) -> Result<Vec<SendWr>, IserError> {
    ops.iter()
        .map(|op| {
            let sge = local_sge(pool, view, op.buffer_offset, op.length)?;
            Ok(SendWr::rdma_read(0, sge, op.remote.va, op.remote.stag))
        })
        .collect()
}

/// RDMA WRITEs of `ops` out of the command buffer (Data-In).
pub fn write_wrs(
    pool: &CmdSlot,
    ops: &[RdmaOp],
    view: LocalView,
) -> Result<Vec<SendWr>, IserError> {
    ops.iter()
        .map(|op| {
            let sge = local_sge(pool, view, op.buffer_offset, op.length)?;
            Ok(SendWr::rdma_write(0, sge, op.remote.va, op.remote.stag))
        })
        .collect()
}

/// `check_mr_status` of the signature MR after a transfer.
pub fn sig_status(pool: &CmdSlot) -> Result<Option<SigErr>, IserError> {
    Ok(pool.sig.check_status()?)
}

/// Keeps only the parts of `ops` below `limit` bytes of the buffer.
pub fn clip(ops: &[RdmaOp], limit: u32) -> Vec<RdmaOp> {
    ops.iter()
        .filter(|op| op.buffer_offset < limit)
        .map(|op| RdmaOp {
            length: op.length.min(limit - op.buffer_offset),
            ..*op
        })
        .collect()
}

/// Whether a completion is a receive.
pub fn is_recv(wc: &WorkCompletion) -> bool {
    wc.opcode == WcOpcode::Recv
}

#[cfg(test)]
mod tests {
    use super::*;
    use t10pi::{GuardType, T10DifDomain};
    use verbs::cm::{self, CmAddr, CmListener, ConnParam};
    use verbs::sig::check_mask;
    use verbs::SigDomain;

    const T: Duration = Duration::from_secs(10);
    const RW: AccessFlags = AccessFlags(
        AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0 | AccessFlags::REMOTE_READ.0,
    );

    /// Three pipelined reads posted in one doorbell, the middle one's blocks with a
    /// bad guard: the peer receives the first response, the replacement of the
    /// second, then the third (posting order, as StatSN needs), and every waiter
    /// completes.
    /// A target fabric connected to a host QP on soft HCAs (over a UNIX socket).
    struct Pair {
        fab: Arc<Fabric>,
        hpd: Pd,
        hcq: Cq,
        hqp: Qp,
        _conns: (verbs::cm::CmConnection, verbs::cm::CmConnection),
        _dir: tempfile::TempDir,
    }

    fn connected_pair() -> Pair {
        let target = mlx5::Mlx5Device::new("mlx5_t").context();
        let fab = Arc::new(Fabric::new(&target, 8).expect("fabric"));
        let host = mlx5::Mlx5Device::new("mlx5_h").context();
        let hpd = host.alloc_pd().unwrap();
        let hcq = host.create_cq(64).unwrap();
        let hqp = hpd.create_qp(&hcq, &hcq, &QpInitAttr::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let addr = CmAddr::Unix(dir.path().join("cm.sock"));
        let mut listener = CmListener::bind(&target, &addr).unwrap();
        let conns = std::thread::scope(|s| {
            let h = s.spawn(|| {
                cm::connect_blocking(&host, &hqp, &addr, &ConnParam::with_private_data(&[0]))
            });
            let req = listener.next_request_blocking(T).expect("connect request");
            let c = req.accept(&fab.qp, &[0]).unwrap();
            (c, h.join().unwrap().unwrap())
        });
        Pair {
            fab,
            hpd,
            hcq,
            hqp,
            _conns: conns,
            _dir: dir,
        }
    }

    /// A SEND the peer never takes (no receive posted, RNR retried forever) is
    /// ended by the poller's watchdog after [`WR_TIMEOUT`]: its waiter sees the
    /// connection closed and the QP is in error.
    #[test]
    fn watchdog_fails_a_work_request_that_never_completes() {
        let pair = connected_pair();
        let fab = &pair.fab;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let _poller = Poller::start(fab);
            let send_buf = SendBuf::new(&fab.pd, 64).unwrap();
            let wr = SendWr::send(0, send_buf.load(b"never received").unwrap());
            let credits = fab.credits(1).await.unwrap();
            let started = tokio::time::Instant::now();
            let r = fab
                .post_batched(vec![wr], credits)
                .unwrap()
                .wait("SEND")
                .await;
            assert!(matches!(r, Err(IserError::Closed)), "{r:?}");
            let waited = started.elapsed();
            assert!(
                waited >= WR_TIMEOUT && waited <= WR_TIMEOUT * 2,
                "failed after {waited:?}"
            );
        });
        assert_eq!(fab.qp.state().unwrap(), QpState::Error);
    }

    /// Waits until `held` has no other owner (the fabric released its chain).
    async fn released(held: &Arc<()>, deadline: tokio::time::Instant) {
        while Arc::strong_count(held) > 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "hold never released"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A chain posted with [`Fabric::post_released`] gives back what it held and
    /// its credits when it completes; one that fails (an RDMA WRITE to a key the
    /// peer does not have) does so too and moves the QP to error.
    #[test]
    fn released_chains_free_their_holds_and_a_failure_ends_the_connection() {
        let pair = connected_pair();
        let fab = &pair.fab;
        let inbox = pair.hpd.reg_mr(64, RW).unwrap();
        pair.hqp
            .post_recv_one(RecvWr::new(7, inbox.sge(0, 64)))
            .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let held = Arc::new(());
        rt.block_on(async {
            let _poller = Poller::start(fab);
            let send_buf = SendBuf::new(&fab.pd, 64).unwrap();
            let wr = SendWr::send(0, send_buf.load(b"answer").unwrap());
            let credits = fab.credits(1).await.unwrap();
            fab.post_released(vec![wr], credits, Box::new((held.clone(), send_buf)))
                .unwrap();
            let deadline = tokio::time::Instant::now() + T;
            released(&held, deadline).await;
            assert_eq!(fab.credits.available_permits(), SEND_CREDITS);
            assert_eq!(fab.qp.state().unwrap(), QpState::Rts);
            let mut wcs = Vec::new();
            pair.hcq.wait_blocking(&mut wcs, 1, T).unwrap();
            assert_eq!(wcs[0].wr_id, 7);
            assert_eq!(inbox.to_vec(0, 6).unwrap(), b"answer");

            let local = fab.pd.reg_mr(64, RW).unwrap();
            let wr = SendWr::rdma_write(0, local.sge(0, 64), inbox.addr(), inbox.rkey() ^ 0x5a5a);
            let credits = fab.credits(1).await.unwrap();
            fab.post_released(vec![wr], credits, Box::new((held.clone(), local)))
                .unwrap();
            released(&held, deadline).await;
            assert_eq!(fab.credits.available_permits(), SEND_CREDITS);
        });
        assert_eq!(fab.qp.state().unwrap(), QpState::Error);
    }

    #[test]
    fn failed_pipelined_response_is_replaced_in_place_and_the_rest_follow() {
        let Pair {
            fab,
            hpd,
            hcq,
            hqp,
            _conns,
            ..
        } = connected_pair();
        assert!(fab.pipelining);
        let inbox = hpd.reg_mr(3 * 64, RW).unwrap();
        for i in 0..3u64 {
            hqp.post_recv_one(RecvWr::new(i, inbox.sge(i as usize * 64, 64)))
                .unwrap();
        }

        // Per read: two 512-byte blocks with their tuples, a signature MR passing
        // them, the host's buffer, a send buffer and what replaces its response.
        let dom = T10DifDomain::type1(GuardType::Crc, 512, 0);
        let attrs = SigAttrs {
            check_mask: check_mask::GUARD | check_mask::REFTAG,
            mem: SigDomain::T10Dif(dom),
            wire: SigDomain::T10Dif(dom),
        };
        // One thread: the doorbell task runs only once all three chains are queued,
        // so the failing one has the third behind it in the send queue.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _poller = rt.block_on(async { Poller::start(&fab) });
        let mut keep = Vec::new();
        let pendings = rt.block_on(async {
            let mut pendings = Vec::new();
            for k in 0..3usize {
                let mut blocks = vec![0u8; 2 * 520];
                let data: Vec<u8> = (0..1024).map(|i| (i * 7 + k) as u8).collect();
                t10pi::insert(&dom, &data, &mut blocks, 0).unwrap();
                if k == 1 {
                    blocks[520 + 512] ^= 0x10; // guard of block 1
                }
                let buf = fab.pd.reg_mr(blocks.len(), RW).unwrap();
                buf.write_at(0, &blocks).unwrap();
                let sig = fab.pd.alloc_mr_integrity(1, 1).unwrap();
                let dest = hpd.reg_mr(blocks.len(), RW).unwrap();
                let mut reg =
                    SendWr::reg_mr_integrity(0, sig.lkey(), buf.sge_all(), None, attrs, RW);
                reg.flags = SendFlags(0);
                let sge = Sge {
                    addr: buf.addr(),
                    length: blocks.len() as u32,
                    lkey: sig.lkey(),
                };
                let write = SendWr::rdma_write(0, sge, dest.addr(), dest.rkey());
                let send_buf = SendBuf::new(&fab.pd, 64).unwrap();
                let mut response =
                    SendWr::send(0, send_buf.load(format!("good-{k}").as_bytes()).unwrap());
                response.flags = response.flags | SendFlags::FENCE;
                let replacement = send_buf.clone();
                let fallback = SigFallback {
                    sig_lkey: sig.lkey(),
                    respond: Box::new(move |e: &SigErr| {
                        assert_eq!(e.sig_err_offset, 520, "block 1 failed");
                        Ok(SendWr::send(
                            0,
                            replacement.load(format!("bad-{k}").as_bytes())?,
                        ))
                    }),
                };
                let credits = fab.credits(3).await.unwrap();
                pendings.push(
                    fab.post_pipelined(vec![reg, write, response], credits, fallback, None)
                        .unwrap()
                        .expect("a waiter"),
                );
                keep.push((buf, sig, dest, send_buf));
            }
            pendings
        });
        rt.block_on(async {
            for p in pendings {
                p.wait("pipelined read")
                    .await
                    .expect("every response completes");
            }
        });
        let got: Vec<String> = (0..3)
            .map(|_| {
                let wc = hcq.next_blocking(T).unwrap().expect("a response");
                assert!(wc.is_ok(), "{wc:?}");
                let at = wc.wr_id as usize * 64;
                String::from_utf8(inbox.to_vec(at, wc.byte_len as usize).unwrap()).unwrap()
            })
            .collect();
        assert_eq!(got, ["good-0", "bad-1", "good-2"]);
        // The failure was read (and cleared) by the replacement; the others are clean.
        for (_, sig, _, _) in &keep {
            assert_eq!(sig.check_status().unwrap(), None);
        }
        assert_eq!(fab.qp.state().unwrap(), QpState::Rts);
    }
}
