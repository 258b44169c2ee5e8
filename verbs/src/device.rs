//! Safe owners of device objects: [`Context`], [`Pd`], [`Mr`], [`SigMr`], [`Cq`],
//! [`Qp`]. Each holds its provider handle and releases it on drop; children keep
//! their parents alive through `Arc`s.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buf::DmaBuf;
use crate::error::{Result, VerbsError};
use crate::notify::Signal;
use crate::poll::{Driven, PollLookup, PollState, Woken};
use crate::provider::{open_by_name, ContextOps, DeviceAttr, MrKeys};
use crate::sig::{MrStatusCheck, SigErr};
use crate::wr::{AccessFlags, QpState, RecvWr, SendWr, Sge, WorkCompletion};

/// An open device (`ibv_context`). Cheap to clone.
#[derive(Clone)]
pub struct Context {
    ops: Arc<dyn ContextOps>,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("device", &self.ops.device_name())
            .finish()
    }
}

impl Context {
    /// Opens the device `name` from the registered providers.
    pub fn open(name: &str) -> Result<Context> {
        Ok(Context {
            ops: open_by_name(name)?,
        })
    }

    /// Wraps a provider's device directly.
    pub fn open_with(ops: Arc<dyn ContextOps>) -> Context {
        Context { ops }
    }

    /// The provider's operation table.
    pub fn ops(&self) -> &Arc<dyn ContextOps> {
        &self.ops
    }

    /// Device name.
    pub fn name(&self) -> &str {
        self.ops.device_name()
    }

    /// Device attributes.
    pub fn query_device(&self) -> Result<DeviceAttr> {
        self.ops.query_device()
    }

    /// Allocates a protection domain.
    pub fn alloc_pd(&self) -> Result<Pd> {
        let id = self.ops.alloc_pd()?;
        Ok(Pd {
            inner: Arc::new(PdInner {
                ctx: self.clone(),
                id,
            }),
        })
    }

    /// Creates a completion queue of at least `entries` entries.
    pub fn create_cq(&self, entries: u32) -> Result<Cq> {
        let signal = Arc::new(Signal::new());
        let id = self.ops.create_cq(entries, Arc::clone(&signal))?;
        Ok(Cq {
            inner: Arc::new(CqInner {
                ctx: self.clone(),
                id,
                signal,
                poll: parking_lot::Mutex::new(PollState::Unresolved),
            }),
        })
    }
}

#[derive(Debug)]
struct PdInner {
    ctx: Context,
    id: u32,
}

impl Drop for PdInner {
    fn drop(&mut self) {
        if let Err(e) = self.ctx.ops.dealloc_pd(self.id) {
            tracing::debug!(pd = self.id, error = %e, "dealloc_pd failed");
        }
    }
}

/// A protection domain. Cheap to clone; freed when the last clone and every object
/// created in it are gone.
#[derive(Clone, Debug)]
pub struct Pd {
    inner: Arc<PdInner>,
}

/// Attributes of a new RC queue pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QpInitAttr {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth.
    pub max_recv_wr: u32,
    /// Largest gather list.
    pub max_send_sge: u32,
    /// Largest scatter list.
    pub max_recv_sge: u32,
    /// Generate a completion for every send WR, signaled or not.
    pub sq_sig_all: bool,
    /// RNR retries for SENDs this QP makes (7 = retry forever).
    pub rnr_retry: u8,
    /// Delay this QP asks senders to wait after an RNR NAK (its min RNR timer).
    pub min_rnr_timer: Duration,
    /// Signature pipelining (`MLX5DV_QP_CREATE_SIG_PIPELINING`): the send queue
    /// stops in SQD right after a transfer that failed a signature check, so that
    /// a response posted behind it can be cancelled and replaced
    /// ([`Qp::cancel_posted_send_wrs`], [`Qp::modify_sqd_to_rts`]).
    pub sig_pipelining: bool,
}

impl Default for QpInitAttr {
    fn default() -> Self {
        QpInitAttr {
            max_send_wr: 256,
            max_recv_wr: 256,
            max_send_sge: 4,
            max_recv_sge: 4,
            sq_sig_all: false,
            rnr_retry: 7,
            min_rnr_timer: Duration::from_millis(1),
            sig_pipelining: false,
        }
    }
}

impl Pd {
    /// The provider's PD handle.
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// The device.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// Allocates a zeroed page-aligned buffer of `len` bytes and registers it.
    pub fn reg_mr(&self, len: usize, access: AccessFlags) -> Result<Mr> {
        self.reg_buf(DmaBuf::new(len)?, 0, len, access)
    }

    /// Registers `len` bytes of `buf` from `offset` (several MRs may share a buffer).
    pub fn reg_buf(
        &self,
        buf: Arc<DmaBuf>,
        offset: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<Mr> {
        if offset.checked_add(len).is_none_or(|end| end > buf.len()) {
            return Err(VerbsError::OutOfBounds {
                offset,
                len,
                size: buf.len(),
            });
        }
        let keys =
            self.inner
                .ctx
                .ops
                .reg_mr(self.inner.id, Arc::clone(&buf), offset, len, access)?;
        Ok(Mr {
            pd: self.clone(),
            buf,
            offset,
            len,
            keys,
            access,
        })
    }

    /// Allocates an unbound fast-registration MR (`ib_alloc_mr(IB_MR_TYPE_MEM_REG)`).
    pub fn alloc_mr(&self, max_sge: u32) -> Result<FastRegMr> {
        let keys = self.inner.ctx.ops.alloc_mr(self.inner.id, max_sge)?;
        Ok(FastRegMr {
            pd: self.clone(),
            keys,
        })
    }

    /// Allocates an unbound signature MR (`ib_alloc_mr_integrity`).
    pub fn alloc_mr_integrity(&self, max_data_sge: u32, max_meta_sge: u32) -> Result<SigMr> {
        let keys =
            self.inner
                .ctx
                .ops
                .alloc_mr_integrity(self.inner.id, max_data_sge, max_meta_sge)?;
        Ok(SigMr {
            pd: self.clone(),
            keys,
        })
    }

    /// Creates an RC queue pair.
    pub fn create_qp(&self, send_cq: &Cq, recv_cq: &Cq, attr: &QpInitAttr) -> Result<Qp> {
        let qpn = self
            .inner
            .ctx
            .ops
            .create_qp(self.inner.id, send_cq.id(), recv_cq.id(), attr)?;
        let events = Arc::new(Signal::new());
        match self
            .inner
            .ctx
            .ops
            .set_qp_event_signal(qpn, Arc::clone(&events))
        {
            Ok(()) | Err(VerbsError::Unsupported(_)) => {}
            Err(e) => {
                let _ = self.inner.ctx.ops.destroy_qp(qpn);
                return Err(e);
            }
        }
        Ok(Qp {
            pd: self.clone(),
            qpn,
            events,
            _send_cq: Arc::clone(&send_cq.inner),
            _recv_cq: Arc::clone(&recv_cq.inner),
        })
    }
}

/// A registered memory region that owns (a share of) its buffer.
#[derive(Debug)]
pub struct Mr {
    pd: Pd,
    buf: Arc<DmaBuf>,
    offset: usize,
    len: usize,
    keys: MrKeys,
    access: AccessFlags,
}

impl Mr {
    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.keys.lkey
    }
    /// Remote key.
    pub fn rkey(&self) -> u32 {
        self.keys.rkey
    }
    /// I/O virtual address of the region's first byte.
    pub fn addr(&self) -> u64 {
        self.buf.addr() + self.offset as u64
    }
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Access rights.
    pub fn access(&self) -> AccessFlags {
        self.access
    }
    /// The underlying buffer.
    pub fn buf(&self) -> &Arc<DmaBuf> {
        &self.buf
    }
    /// An SGE for `len` bytes at `offset` into the region.
    pub fn sge(&self, offset: usize, len: u32) -> Sge {
        Sge {
            addr: self.addr() + offset as u64,
            length: len,
            lkey: self.keys.lkey,
        }
    }
    /// An SGE covering the whole region.
    pub fn sge_all(&self) -> Sge {
        self.sge(0, self.len as u32)
    }

    fn check(&self, offset: usize, len: usize) -> Result<usize> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(self.offset + offset),
            _ => Err(VerbsError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies bytes out of the region at `offset`.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        let at = self.check(offset, dst.len())?;
        self.buf.read_at(at, dst)
    }
    /// Copies bytes into the region at `offset`.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<()> {
        let at = self.check(offset, src.len())?;
        self.buf.write_at(at, src)
    }
    /// A copy of `len` bytes at `offset`.
    pub fn to_vec(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        let at = self.check(offset, len)?;
        self.buf.to_vec(at, len)
    }
    /// Runs `f` over the region's bytes, shared.
    pub fn with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        self.buf
            .read(|b| f(&b[self.offset..self.offset + self.len]))
    }
    /// Runs `f` over the region's bytes, exclusive.
    pub fn with_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        self.buf
            .write(|b| f(&mut b[self.offset..self.offset + self.len]))
    }
}

impl Drop for Mr {
    fn drop(&mut self) {
        if let Err(e) = self.pd.inner.ctx.ops.dereg_mr(self.keys.lkey) {
            tracing::debug!(lkey = self.keys.lkey, error = %e, "dereg_mr failed");
        }
    }
}

/// A fast-registration MR, bound by a `SendOp::RegMr` work request.
#[derive(Debug)]
pub struct FastRegMr {
    pd: Pd,
    keys: MrKeys,
}

impl FastRegMr {
    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.keys.lkey
    }
    /// Remote key.
    pub fn rkey(&self) -> u32 {
        self.keys.rkey
    }
}

impl Drop for FastRegMr {
    fn drop(&mut self) {
        let _ = self.pd.inner.ctx.ops.dereg_mr(self.keys.lkey);
    }
}

/// A signature (integrity) MR: bound to data + optional protection memory and
/// [`crate::SigAttrs`] by a `SendOp::RegMrIntegrity` work request; its I/O virtual
/// address is then the data SGE's address and its length the wire-view length.
#[derive(Debug)]
pub struct SigMr {
    pd: Pd,
    keys: MrKeys,
}

impl SigMr {
    /// Local key.
    pub fn lkey(&self) -> u32 {
        self.keys.lkey
    }
    /// Remote key (the same mkey).
    pub fn rkey(&self) -> u32 {
        self.keys.rkey
    }
    /// `check_mr_status(IB_MR_CHECK_SIG_STATUS)`: the signature error of the last
    /// use, reported once and cleared; afterwards the MR may be registered again.
    pub fn check_status(&self) -> Result<Option<SigErr>> {
        self.pd
            .inner
            .ctx
            .ops
            .check_mr_status(self.keys.lkey, MrStatusCheck::SIG_STATUS)
    }
}

impl Drop for SigMr {
    fn drop(&mut self) {
        let _ = self.pd.inner.ctx.ops.dereg_mr(self.keys.lkey);
    }
}

#[derive(Debug)]
struct CqInner {
    ctx: Context,
    id: u32,
    signal: Arc<Signal>,
    /// Whether the consumer drives the device's receive path while it waits.
    poll: parking_lot::Mutex<PollState>,
}

impl Drop for CqInner {
    fn drop(&mut self) {
        let _ = self.ctx.ops.destroy_cq(self.id);
    }
}

/// A completion queue with an async and a blocking wakeup. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cq {
    inner: Arc<CqInner>,
}

impl Cq {
    /// The provider's CQ number.
    pub fn id(&self) -> u32 {
        self.inner.id
    }

    /// Moves up to `max` completions into `out` without waiting; returns how many.
    pub fn poll(&self, out: &mut Vec<WorkCompletion>, max: usize) -> Result<usize> {
        self.inner.ctx.ops.poll_cq(self.inner.id, out, max)
    }

    /// Waits (async, no polling while idle) until at least one completion is
    /// available and moves up to `max` into `out`. When the provider offers it
    /// (see [`crate::poll`]), the wait also watches the device's receive
    /// descriptor and runs its receive path on this task; the runtime must then
    /// have I/O enabled.
    pub async fn next_batch(&self, out: &mut Vec<WorkCompletion>, max: usize) -> Result<usize> {
        loop {
            let waiter = self.inner.signal.wait();
            let n = self.poll(out, max)?;
            if n > 0 {
                return Ok(n);
            }
            match self.driven() {
                Some(d) => {
                    if d.wait(waiter).await == Woken::SourceGone {
                        *self.inner.poll.lock() = PollState::Off;
                    }
                }
                None => waiter.await,
            }
        }
    }

    /// Whether waits on this CQ run the device's receive path (poll mode, see
    /// [`crate::poll`]); known once a wait has looked.
    pub fn consumer_driven(&self) -> bool {
        matches!(*self.inner.poll.lock(), PollState::Driven(_))
    }

    /// The receive path this CQ's consumer drives, resolved on first use.
    fn driven(&self) -> Option<Arc<Driven>> {
        let mut st = self.inner.poll.lock();
        match &*st {
            PollState::Driven(d) => return Some(Arc::clone(d)),
            PollState::Off => return None,
            PollState::Unresolved => {}
        }
        match self.inner.ctx.ops.cq_poll_source(self.inner.id) {
            PollLookup::Ready(src) => match Driven::register(src) {
                Some(d) => {
                    let d = Arc::new(d);
                    *st = PollState::Driven(Arc::clone(&d));
                    Some(d)
                }
                None => {
                    *st = PollState::Off;
                    None
                }
            },
            PollLookup::Later => None,
            PollLookup::Never => {
                *st = PollState::Off;
                None
            }
        }
    }

    /// Waits (async) for one completion.
    pub async fn next(&self) -> Result<WorkCompletion> {
        let mut v = Vec::with_capacity(1);
        self.next_batch(&mut v, 1).await?;
        v.pop().ok_or(VerbsError::Exhausted("completions"))
    }

    /// Blocks the thread up to `timeout` for at least one completion; moves up to
    /// `max` into `out` and returns how many (0 on timeout).
    pub fn wait_blocking(
        &self,
        out: &mut Vec<WorkCompletion>,
        max: usize,
        timeout: Duration,
    ) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.inner.signal.generation();
            let n = self.poll(out, max)?;
            if n > 0 {
                return Ok(n);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(0);
            }
            self.inner.signal.wait_blocking_since(seen, deadline - now);
        }
    }

    /// Blocks up to `timeout` for exactly one completion.
    pub fn next_blocking(&self, timeout: Duration) -> Result<Option<WorkCompletion>> {
        let mut v = Vec::with_capacity(1);
        self.wait_blocking(&mut v, 1, timeout)?;
        Ok(v.pop())
    }
}

/// A reliable-connected queue pair. Share it between tasks with an `Arc`.
#[derive(Debug)]
pub struct Qp {
    pd: Pd,
    qpn: u32,
    /// Raised on the QP's asynchronous events (its state changed to SQD).
    events: Arc<Signal>,
    // Held so that the CQs outlive the QP that completes into them.
    _send_cq: Arc<CqInner>,
    _recv_cq: Arc<CqInner>,
}

impl Qp {
    /// Queue pair number.
    pub fn qp_num(&self) -> u32 {
        self.qpn
    }
    /// Its protection domain.
    pub fn pd(&self) -> &Pd {
        &self.pd
    }
    /// Posts send work requests (`ibv_post_send`).
    pub fn post_send(&self, wrs: &[SendWr]) -> Result<()> {
        self.pd.inner.ctx.ops.post_send(self.qpn, wrs)
    }
    /// Posts one send work request.
    pub fn post_send_one(&self, wr: SendWr) -> Result<()> {
        self.post_send(std::slice::from_ref(&wr))
    }
    /// Posts receive work requests (`ibv_post_recv`).
    pub fn post_recv(&self, wrs: &[RecvWr]) -> Result<()> {
        self.pd.inner.ctx.ops.post_recv(self.qpn, wrs)
    }
    /// Posts one receive work request.
    pub fn post_recv_one(&self, wr: RecvWr) -> Result<()> {
        self.post_recv(std::slice::from_ref(&wr))
    }
    /// Current state.
    pub fn state(&self) -> Result<QpState> {
        self.pd.inner.ctx.ops.query_qp_state(self.qpn)
    }
    /// Moves the QP to the error state; everything outstanding is flushed.
    pub fn to_error(&self) -> Result<()> {
        self.pd.inner.ctx.ops.modify_qp_to_error(self.qpn)
    }
    /// Waits until the send queue has stopped in SQD (`IBV_EVENT_SQ_DRAINED`: on a
    /// signature-pipelining QP, a transfer failed its signature check) or the QP
    /// failed; returns the state then.
    pub async fn sq_drained(&self) -> Result<QpState> {
        loop {
            let waiter = self.events.wait();
            let st = self.state()?;
            if matches!(st, QpState::Sqd | QpState::Error) {
                return Ok(st);
            }
            waiter.await;
        }
    }
    /// Turns every not yet executed send WR with `wr_id` into a NOP (which completes
    /// as the WR would have, signaled or not); only in SQD. Returns how many
    /// (`mlx5dv_qp_cancel_posted_send_wrs`).
    pub fn cancel_posted_send_wrs(&self, wr_id: u64) -> Result<u32> {
        self.pd
            .inner
            .ctx
            .ops
            .cancel_posted_send_wrs(self.qpn, wr_id)
    }
    /// Resumes a send queue stopped in SQD (`ibv_modify_qp` SQD -> RTS).
    pub fn modify_sqd_to_rts(&self) -> Result<()> {
        self.pd.inner.ctx.ops.modify_qp_sqd_to_rts(self.qpn)
    }
}

impl Drop for Qp {
    fn drop(&mut self) {
        let _ = self.pd.inner.ctx.ops.destroy_qp(self.qpn);
    }
}
