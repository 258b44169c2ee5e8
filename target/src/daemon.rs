//! The running daemon: configuration to LUNs, login policy and portals; the control
//! socket; orderly shutdown (stop accepting, finish in-flight commands, flush every
//! LUN) on SIGINT/SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use conf::target::{TargetConfig, Transport};
use conf::FabricAddr;
use iscsi::negotiate::{DigestKind, LocalParams};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::iscsi_tcp::{self, PortalContext};
use crate::luns::TargetLuns;
use crate::registry::Registry;
use crate::service::ScsiService;
use crate::session::login::{ChapPolicy, PortalPolicy, TargetEntry};

/// How long shutdown waits for connections to finish their in-flight commands.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

fn chap_policy(chap: &Option<conf::Chap>, mutual: &Option<conf::Chap>) -> Option<ChapPolicy> {
    let c = chap.as_ref()?;
    let secret = c.secret()?.expose().as_bytes().to_vec();
    let mutual = mutual.as_ref().and_then(|m| {
        m.secret()
            .map(|s| (m.username.clone(), s.expose().as_bytes().to_vec()))
    });
    Some(ChapPolicy {
        username: c.username.clone(),
        secret,
        mutual,
    })
}

/// The login policy a configuration describes.
pub fn portal_policy(cfg: &TargetConfig) -> PortalPolicy {
    let i = &cfg.iscsi;
    let local = LocalParams {
        header_digest: vec![DigestKind::None, DigestKind::Crc32c],
        data_digest: vec![DigestKind::None, DigestKind::Crc32c],
        max_connections: 1,
        initial_r2t: i.initial_r2t,
        immediate_data: i.immediate_data,
        max_recv_data_segment_length: i.max_recv_data_segment_length,
        max_burst_length: i.max_burst_length,
        first_burst_length: i.first_burst_length,
        max_outstanding_r2t: i.max_outstanding_r2t,
        error_recovery_level: 0,
        ..LocalParams::default()
    };
    PortalPolicy {
        targets: cfg
            .targets
            .iter()
            .map(|t| TargetEntry {
                iqn: t.iqn.as_str().to_owned(),
                acl: t.acl.iter().map(|a| a.as_str().to_owned()).collect(),
                chap: chap_policy(&t.chap, &t.mutual_chap),
            })
            .collect(),
        discovery_chap: chap_policy(&cfg.discovery.chap, &cfg.discovery.mutual_chap),
        local,
        queue_depth: i.queue_depth.max(1),
        tpgt: 1,
    }
}

/// Open every LUN of every target (blocking: backing stores are opened and sized).
pub fn open_targets(cfg: &TargetConfig) -> anyhow::Result<Vec<(String, Arc<dyn ScsiService>)>> {
    let mut out = Vec::new();
    for t in &cfg.targets {
        let luns = TargetLuns::open(t).with_context(|| {
            format!(
                "cannot open the LUNs of target {}; check the backing paths and sizes",
                t.iqn.as_str()
            )
        })?;
        out.push((
            t.iqn.as_str().to_owned(),
            Arc::new(luns) as Arc<dyn ScsiService>,
        ));
    }
    Ok(out)
}

/// A daemon ready to run: sockets bound, LUNs open.
#[derive(Debug)]
pub struct Daemon {
    registry: Arc<Registry>,
    listeners: Vec<(TcpListener, Arc<PortalContext>)>,
    control: Option<(tokio::net::UnixListener, PathBuf)>,
    shutdown: watch::Sender<bool>,
    /// The iSER portal tasks (already serving; awaited at shutdown).
    iser_portals: Vec<tokio::task::JoinHandle<()>>,
    /// The TCP portal addresses actually bound (port 0 resolved).
    pub portals: Vec<SocketAddr>,
}

impl Daemon {
    /// Bind the portals and the control socket of `cfg`. Must run inside a tokio runtime.
    pub async fn bind(
        cfg: &TargetConfig,
        control_socket: Option<PathBuf>,
    ) -> anyhow::Result<Daemon> {
        let targets = {
            let cfg = cfg.clone();
            tokio::task::spawn_blocking(move || open_targets(&cfg))
                .await
                .context("LUN opening task failed")??
        };
        let registry = Arc::new(Registry::new(targets));
        let policy = Arc::new(portal_policy(cfg));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut bound = Vec::new();
        for p in &cfg.portals {
            match (p.transport, &p.listen) {
                (Transport::Tcp, FabricAddr::Tcp(addr)) => {
                    let l = TcpListener::bind(addr).await.with_context(|| {
                        format!("cannot listen on the iSCSI/TCP portal {addr}; is another target running there?")
                    })?;
                    bound.push(l);
                }
                (Transport::Tcp, other) => {
                    anyhow::bail!("TCP portal with a non-TCP address {other:?}")
                }
                // Bound and served by `crate::iser::spawn_portals` below.
                (Transport::Iser, _) => {}
            }
        }
        let portals: Vec<SocketAddr> = bound.iter().filter_map(iscsi_tcp::portal_addr).collect();
        let pool = crate::iscsi_tcp::pool::CommandPool::new(cfg.effective_worker_threads())
            .context("cannot start the command worker threads")?;
        let ctx = Arc::new(PortalContext {
            pool,
            policy,
            registry: registry.clone(),
            nop_in_interval: Duration::from_secs(cfg.iscsi.nop_in_interval.into()),
            nop_in_timeout: Duration::from_secs(cfg.iscsi.nop_in_timeout.max(1).into()),
            portals: portals.clone(),
            shutdown: shutdown_rx,
        });
        let iser_portals = crate::iser::spawn_portals(cfg, &ctx)?;
        let listeners = bound.into_iter().map(|l| (l, ctx.clone())).collect();
        let control = match control_socket {
            None => None,
            Some(path) => match crate::control::bind(&path) {
                Ok(l) => Some((l, path)),
                Err(e) => {
                    tracing::warn!(error = %e, "admin control socket disabled");
                    None
                }
            },
        };
        Ok(Daemon {
            registry,
            listeners,
            control,
            shutdown,
            iser_portals,
            portals,
        })
    }

    /// Serve until `stop` resolves, then shut down in order: stop accepting, let
    /// connections finish their in-flight commands, flush every LUN.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for (l, ctx) in self.listeners {
            if let Some(a) = iscsi_tcp::portal_addr(&l) {
                tracing::info!(portal = %a, "iSCSI/TCP portal listening");
            }
            tasks.spawn(iscsi_tcp::run_portal(l, ctx));
        }
        if let Some((l, path)) = self.control {
            tracing::info!(socket = %path.display(), "control socket listening");
            tasks.spawn(crate::control::serve(
                l,
                path,
                self.registry.clone(),
                self.shutdown.subscribe(),
            ));
        }
        stop.await;
        tracing::info!(
            sessions = self.registry.session_count(),
            "shutting down: finishing in-flight commands"
        );
        self.shutdown.send_replace(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while tasks.join_next().await.is_some() {}
            for portal in self.iser_portals {
                let _ = portal.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections did not finish within {DRAIN_TIMEOUT:?}; flushing anyway");
        }
        let registry = self.registry.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            let mut errors = Vec::new();
            for (iqn, s) in registry.services() {
                if let Err(e) = s.sync_all() {
                    errors.push(format!("{iqn}: {e}"));
                }
            }
            errors
        })
        .await
        .context("flush task failed")?;
        if !flushed.is_empty() {
            anyhow::bail!("flushing the backing stores failed: {}", flushed.join("; "));
        }
        tracing::info!("backing stores flushed; exiting");
        Ok(())
    }
}

/// SIGINT and SIGTERM watchers, installed before the portals open so that a signal
/// arriving at any later moment starts an orderly shutdown.
#[derive(Debug)]
pub struct Termination {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Termination {
    /// Install the handlers (inside a tokio runtime).
    pub fn install() -> std::io::Result<Termination> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Termination {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// Resolves on the first SIGINT or SIGTERM.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => tracing::info!("SIGINT received"),
            _ = self.term.recv() => tracing::info!("SIGTERM received"),
        }
    }
}
