//! The provider interface: one table of device operations ([`ContextOps`], after
//! rdma-core's `verbs_context_ops`) whose defaults return `Unsupported`, and a
//! registry through which providers make their devices openable by name.
//!
//! Objects are named by plain handles (PD number, CQ number, QP number, memory keys);
//! the safe wrappers in [`crate::device`] own those handles and release them on drop.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use crate::buf::DmaBuf;
use crate::cm::{CmAddr, CmError, ConnEvents, ConnParam, RequestSink};
use crate::device::QpInitAttr;
use crate::error::{Result, VerbsError};
use crate::notify::Signal;
use crate::poll::PollLookup;
use crate::sig::{MrStatusCheck, SigErr};
use crate::wr::{AccessFlags, QpState, RecvWr, SendWr, WorkCompletion};

/// Local and remote key of a registered memory region.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MrKeys {
    /// Local key (used in SGEs).
    pub lkey: u32,
    /// Remote key (given to peers).
    pub rkey: u32,
}

/// Static attributes of a device (`ibv_device_attr`, the parts ULPs look at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceAttr {
    /// Device name.
    pub name: String,
    /// Largest number of SGEs per work request.
    pub max_sge: u32,
    /// Largest send or receive queue.
    pub max_qp_wr: u32,
    /// Largest CQ.
    pub max_cqe: u32,
    /// Largest single message.
    pub max_msg_size: u64,
    /// Whether signature (integrity) MRs are offered.
    pub sig_offload: bool,
    /// Whether QPs can be created with signature pipelining (mlx5 `drain_sigerr`).
    pub sig_pipelining: bool,
}

/// An established connection as seen by the provider.
pub trait ConnectionOps: Send + Sync + Debug {
    /// Starts a disconnect (DREQ); the local QP moves to the error state.
    fn disconnect(&self);
}

/// A pending incoming connect request as seen by the provider.
pub trait ConnectRequestOps: Send + Debug {
    /// Accepts with `param.private_data`, binding the connection to QP `qpn`.
    fn accept(
        self: Box<Self>,
        qpn: u32,
        param: &ConnParam,
        events: Arc<ConnEvents>,
    ) -> Result<Box<dyn ConnectionOps>, CmError>;
    /// Rejects with `private_data`.
    fn reject(self: Box<Self>, private_data: &[u8]) -> Result<(), CmError>;
}

/// A listening endpoint as seen by the provider; dropping it stops listening.
pub trait ListenOps: Send + Sync + Debug {
    /// The address actually bound (with the port chosen when 0 was asked).
    fn local_addr(&self) -> CmAddr;
}

macro_rules! unsupported {
    ($name:literal) => {
        Err(VerbsError::Unsupported($name))
    };
}

/// Every device operation. A provider overrides what it implements; the rest
/// report [`VerbsError::Unsupported`].
#[allow(unused_variables)]
pub trait ContextOps: Send + Sync + Debug {
    /// Device name.
    fn device_name(&self) -> &str;

    /// Device attributes.
    fn query_device(&self) -> Result<DeviceAttr> {
        unsupported!("query_device")
    }

    /// Allocates a protection domain.
    fn alloc_pd(&self) -> Result<u32> {
        unsupported!("alloc_pd")
    }
    /// Frees a protection domain.
    fn dealloc_pd(&self, pd: u32) -> Result<()> {
        unsupported!("dealloc_pd")
    }

    /// Registers `len` bytes of `buf` from `offset` (firmware-created mkey).
    fn reg_mr(
        &self,
        pd: u32,
        buf: Arc<DmaBuf>,
        offset: usize,
        len: usize,
        access: AccessFlags,
    ) -> Result<MrKeys> {
        unsupported!("reg_mr")
    }
    /// Allocates a fast-registration MR for up to `max_sge` entries (unbound).
    fn alloc_mr(&self, pd: u32, max_sge: u32) -> Result<MrKeys> {
        unsupported!("alloc_mr")
    }
    /// Allocates a signature MR for up to `max_data_sge` data and `max_meta_sge`
    /// protection entries (unbound until a `RegMrIntegrity` work request).
    fn alloc_mr_integrity(&self, pd: u32, max_data_sge: u32, max_meta_sge: u32) -> Result<MrKeys> {
        unsupported!("alloc_mr_integrity")
    }
    /// Destroys a memory key.
    fn dereg_mr(&self, lkey: u32) -> Result<()> {
        unsupported!("dereg_mr")
    }
    /// Reports (once) and clears the signature error recorded on a signature MR;
    /// marks its status checked so that it can be registered again.
    fn check_mr_status(&self, lkey: u32, check: MrStatusCheck) -> Result<Option<SigErr>> {
        unsupported!("check_mr_status")
    }

    /// Creates a CQ of at least `entries` entries; the provider raises `signal`
    /// whenever it adds a completion.
    fn create_cq(&self, entries: u32, signal: Arc<Signal>) -> Result<u32> {
        unsupported!("create_cq")
    }
    /// Destroys a CQ.
    fn destroy_cq(&self, cq: u32) -> Result<()> {
        unsupported!("destroy_cq")
    }
    /// Whether `cq`'s consumer can drive the device's receive path itself while
    /// it waits (poll mode, [`crate::poll`]). None can by default.
    fn cq_poll_source(&self, cq: u32) -> PollLookup {
        let _ = cq;
        PollLookup::Never
    }
    /// Moves up to `max` completions into `out`; returns how many.
    fn poll_cq(&self, cq: u32, out: &mut Vec<WorkCompletion>, max: usize) -> Result<usize> {
        unsupported!("poll_cq")
    }

    /// Creates an RC QP.
    fn create_qp(&self, pd: u32, send_cq: u32, recv_cq: u32, attr: &QpInitAttr) -> Result<u32> {
        unsupported!("create_qp")
    }
    /// Destroys a QP (flushing and disconnecting it).
    fn destroy_qp(&self, qpn: u32) -> Result<()> {
        unsupported!("destroy_qp")
    }
    /// Current state of a QP.
    fn query_qp_state(&self, qpn: u32) -> Result<QpState> {
        unsupported!("query_qp_state")
    }
    /// Moves a QP to the error state (flushing outstanding work).
    fn modify_qp_to_error(&self, qpn: u32) -> Result<()> {
        unsupported!("modify_qp_to_error")
    }
    /// Arms `signal` to be raised on the QP's asynchronous events (entering SQD).
    fn set_qp_event_signal(&self, qpn: u32, signal: Arc<Signal>) -> Result<()> {
        unsupported!("set_qp_event_signal")
    }
    /// Replaces the not yet executed send WRs with `wr_id` by NOPs (QP in SQD);
    /// returns how many.
    fn cancel_posted_send_wrs(&self, qpn: u32, wr_id: u64) -> Result<u32> {
        unsupported!("cancel_posted_send_wrs")
    }
    /// Moves a QP from SQD back to RTS; its send queue resumes.
    fn modify_qp_sqd_to_rts(&self, qpn: u32) -> Result<()> {
        unsupported!("modify_qp_sqd_to_rts")
    }
    /// Posts send work requests; on error none after the failing one was posted.
    fn post_send(&self, qpn: u32, wrs: &[SendWr]) -> Result<()> {
        unsupported!("post_send")
    }
    /// Posts receive work requests.
    fn post_recv(&self, qpn: u32, wrs: &[RecvWr]) -> Result<()> {
        unsupported!("post_recv")
    }

    /// Listens for connect requests on `addr`, delivering them to `requests`.
    fn cm_listen(
        &self,
        addr: &CmAddr,
        requests: RequestSink,
    ) -> Result<Box<dyn ListenOps>, CmError> {
        Err(CmError::Verbs(VerbsError::Unsupported("cm_listen")))
    }
    /// Connects QP `qpn` to the listener at `addr` (blocking). Returns the peer's
    /// private data and the connection.
    fn cm_connect(
        &self,
        qpn: u32,
        addr: &CmAddr,
        param: &ConnParam,
        events: Arc<ConnEvents>,
    ) -> Result<(Vec<u8>, Box<dyn ConnectionOps>), CmError> {
        Err(CmError::Verbs(VerbsError::Unsupported("cm_connect")))
    }
}

/// A source of devices (a driver).
pub trait Provider: Send + Sync + Debug {
    /// Provider name (e.g. `mlx5_soft`).
    fn name(&self) -> &str;
    /// Names of the devices it offers.
    fn devices(&self) -> Vec<String>;
    /// Opens one of its devices.
    fn open(&self, device: &str) -> Result<Arc<dyn ContextOps>>;
}

static PROVIDERS: Mutex<Vec<Arc<dyn Provider>>> = Mutex::new(Vec::new());

fn providers() -> Vec<Arc<dyn Provider>> {
    PROVIDERS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Makes a provider's devices visible to [`device_list`] and [`crate::Context::open`].
/// Registering a provider of the same name again replaces it.
pub fn register_provider(p: Arc<dyn Provider>) {
    let mut list = PROVIDERS.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|q| q.name() != p.name());
    list.push(p);
}

/// One entry of the device list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device name.
    pub name: String,
    /// Name of the provider that offers it.
    pub provider: String,
}

/// All devices of all registered providers (`ibv_get_device_list`).
pub fn device_list() -> Vec<DeviceInfo> {
    providers()
        .iter()
        .flat_map(|p| {
            p.devices().into_iter().map(|name| DeviceInfo {
                name,
                provider: p.name().to_string(),
            })
        })
        .collect()
}

/// Opens the device called `name` from whichever registered provider offers it.
pub(crate) fn open_by_name(name: &str) -> Result<Arc<dyn ContextOps>> {
    for p in providers() {
        if p.devices().iter().any(|d| d == name) {
            return p.open(name);
        }
    }
    Err(VerbsError::NoSuchDevice(name.to_string()))
}
