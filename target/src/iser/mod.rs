//! The iSER portal (RFC 7145): a connection-manager listener on the RDMA fabric whose
//! connections run the iSCSI login and full feature phase over SENDs carrying the
//! 28-byte iSER header, and move SCSI data by RDMA READ (Data-Out) and RDMA WRITE
//! (Data-In) through signature MRs that check T10-PI in the HCA.
//!
//! [`conn`] serves one connection (CM accept, login, full feature phase, SCSI commands
//! running concurrently as tasks); [`io`] moves commands' data (buffers, signature
//! registration, RDMA operations, status checks); [`lanes`] are the threads
//! connections run on; [`adapter`] holds what the portal needs from the device
//! server and the login policy in iSER terms. `target/ISER.md` documents the wire contract.

pub mod adapter;
pub mod conn;
pub mod io;
pub mod lanes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use verbs::cm::{CmAddr, CmError, CmListener};
use verbs::VerbsError;

use crate::registry::Registry;
use crate::session::login::PortalPolicy;

/// Why the iSER portal or one of its connections failed.
#[derive(Debug, thiserror::Error)]
pub enum IserError {
    /// A verbs call failed.
    #[error("verbs: {0}")]
    Verbs(#[from] VerbsError),
    /// The connection manager failed.
    #[error("connection manager: {0}")]
    Cm(#[from] CmError),
    /// A work request completed with an error status.
    #[error("work request {wr_id} ({what}) completed with {status:?}")]
    Completion {
        /// The work request's cookie.
        wr_id: u64,
        /// What it was.
        what: &'static str,
        /// Its status.
        status: verbs::WcStatus,
    },
    /// No completion arrived in time.
    #[error("no completion for {0} within the timeout")]
    Timeout(&'static str),
    /// The peer disconnected or the QP was flushed.
    #[error("connection closed")]
    Closed,
    /// The peer broke the iSER or iSCSI protocol so that the connection must end.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// iSER receive lengths and queue sizes the portal offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IserLimits {
    /// InitiatorRecvDataSegmentLength offered.
    pub initiator_recv_data_segment_length: u32,
    /// TargetRecvDataSegmentLength offered; sizes every receive buffer.
    pub target_recv_data_segment_length: u32,
}

impl Default for IserLimits {
    fn default() -> Self {
        IserLimits {
            initiator_recv_data_segment_length: 131_072,
            target_recv_data_segment_length: 131_072,
        }
    }
}

impl From<&conf::target::IserParams> for IserLimits {
    fn from(p: &conf::target::IserParams) -> Self {
        IserLimits {
            initiator_recv_data_segment_length: p.initiator_recv_data_segment_length,
            target_recv_data_segment_length: p.target_recv_data_segment_length,
        }
    }
}

/// What every connection of an iSER portal shares.
#[derive(Debug)]
pub struct IserContext {
    /// Login rules and operational values (the TCP portals' policy; the iSER keys
    /// are added by [`adapter::IserLoginPolicy`]).
    pub policy: Arc<PortalPolicy>,
    /// Sessions and LUNs.
    pub registry: Arc<Registry>,
    /// iSER receive lengths.
    pub limits: IserLimits,
    /// The TCP portals, for SendTargets' TargetAddress.
    pub portals: Vec<SocketAddr>,
    /// Application tag of the PI the target generates, by (target name, LUN); the
    /// signature MR inserts it on WRPROTECT 0 writes (absent = 0).
    pub app_tags: HashMap<(String, u64), u16>,
    /// Turns true when the daemon shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Commands in flight on the portal's connections.
    pub stats: Arc<PortalStats>,
    /// The threads connections run on.
    pub lanes: lanes::Lanes,
}

/// How many SCSI commands the portal's connections run at once.
#[derive(Debug, Default)]
pub struct PortalStats {
    in_flight: AtomicUsize,
    high_water: AtomicUsize,
}

impl PortalStats {
    /// Commands holding a command slot now (between their start and their response).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The most commands that were in flight at once since the portal started.
    pub fn in_flight_high_water(&self) -> usize {
        self.high_water.load(Ordering::Relaxed)
    }

    /// Counts one command in flight until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.high_water.fetch_max(now, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// One command counted in [`PortalStats::in_flight`].
#[derive(Debug)]
pub struct InFlight(Arc<PortalStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A bound iSER portal: a CM listener on one device.
#[derive(Debug)]
pub struct IserPortal {
    device: verbs::Context,
    listener: CmListener,
}

impl IserPortal {
    /// Listens on `addr` of `device` (`unix:/path` or `host:port` on the soft fabric).
    pub fn bind(device: &verbs::Context, addr: &CmAddr) -> Result<IserPortal, IserError> {
        let listener = CmListener::bind(device, addr)?;
        Ok(IserPortal {
            device: device.clone(),
            listener,
        })
    }

    /// The address actually bound (TCP port 0 resolved).
    pub fn local_addr(&self) -> CmAddr {
        self.listener.local_addr()
    }
}

/// Accept connections on `portal` until shutdown; each runs on a lane of
/// `ctx.lanes`. Returns once shutdown was signalled and every connection ended.
pub async fn run_portal(mut portal: IserPortal, ctx: Arc<IserContext>) {
    let mut shutdown = ctx.shutdown.clone();
    let mut conns = tokio::task::JoinSet::new();
    let local = portal.local_addr().to_string();
    loop {
        tokio::select! {
            r = portal.listener.next_request() => match r {
                Some(req) => {
                    tracing::debug!(peer = req.peer(), "iSER connect request");
                    let serve = conn::serve(req, portal.device.clone(), local.clone(), ctx.clone());
                    ctx.lanes.spawn(&mut conns, serve);
                }
                None => {
                    tracing::warn!(portal = %local, "iSER listener failed; portal closed");
                    break;
                }
            },
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(portal);
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// The soft mlx5 device the daemon's iSER portals use (registered on first use;
/// `MLX5_SOFT_FAULT` arms its fault injection).
pub fn soft_device() -> Result<verbs::Context, IserError> {
    mlx5::register();
    Ok(verbs::Context::open(mlx5::SOFT_DEVICE)?)
}

/// Bind every iSER portal of `cfg` and serve it on a task of the current runtime,
/// sharing the TCP portals' login policy, registry and shutdown signal. Returns the
/// portal tasks, which end once the shutdown signal fired and their connections
/// finished: the daemon awaits them before it flushes the LUNs.
pub fn spawn_portals(
    cfg: &conf::target::TargetConfig,
    tcp: &crate::iscsi_tcp::PortalContext,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    use anyhow::Context as _;
    let mut tasks = Vec::new();
    let iser: Vec<&conf::target::Portal> = cfg
        .portals
        .iter()
        .filter(|p| p.transport == conf::target::Transport::Iser)
        .collect();
    if iser.is_empty() {
        return Ok(tasks);
    }
    let ctx = Arc::new(IserContext {
        policy: tcp.policy.clone(),
        registry: tcp.registry.clone(),
        limits: IserLimits::from(&cfg.iser),
        portals: tcp.portals.clone(),
        app_tags: cfg
            .targets
            .iter()
            .flat_map(|t| {
                t.luns.iter().map(move |l| {
                    (
                        (t.iqn.as_str().to_owned(), u64::from(l.id)),
                        l.protection.app_tag,
                    )
                })
            })
            .collect(),
        shutdown: tcp.shutdown.clone(),
        stats: Arc::default(),
        lanes: lanes::Lanes::start(
            cfg.effective_worker_threads(),
            (cfg.effective_worker_threads() * 2).max(4),
        )
        .context("cannot start the iSER connection threads")?,
    });
    for p in iser {
        if let Some(dev) = &p.device {
            anyhow::bail!("iSER portal on device {dev:?}: only the soft mlx5 fabric is built in");
        }
        let device = soft_device().context("cannot open the soft mlx5 device")?;
        let addr = match &p.listen {
            conf::FabricAddr::Tcp(a) => CmAddr::Tcp(a.to_string()),
            conf::FabricAddr::Unix(path) => CmAddr::Unix(path.clone()),
        };
        let portal = IserPortal::bind(&device, &addr).with_context(|| {
            format!("cannot listen on the iSER portal {addr}; is another target running there?")
        })?;
        let local = portal.local_addr();
        tracing::info!(portal = %local, "iSER portal listening");
        tasks.push(tokio::spawn(run_portal(portal, ctx.clone())));
    }
    Ok(tasks)
}
