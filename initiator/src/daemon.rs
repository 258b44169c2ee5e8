//! The daemon: log into every configured session, keep each one up under its reconnect
//! policy, probe its LUNs and check their protection policies, and serve the LUN
//! exports (NBD on a UNIX socket or TCP address). On SIGINT/SIGTERM every session
//! logs out.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use conf::initiator::{InitiatorConfig, Session as SessionConf, SessionTransport};
use conf::NbdEndpoint;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::block::{BlockDevice, SharedLun};
use crate::error::Error;
use crate::iser::IserConfig;
use crate::link::{Link, TransportChoice};
use crate::session::SessionConfig;

/// Run the daemon until SIGINT or SIGTERM.
pub async fn run(config: InitiatorConfig) -> Result<(), Error> {
    if config.sessions.is_empty() {
        warn!("no sessions configured; nothing to do");
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut set = JoinSet::new();
    for s in config.sessions.clone() {
        let iqn = config.iqn.clone();
        let stop = stop_rx.clone();
        set.spawn(async move {
            let target = s.target.as_str().to_owned();
            if let Err(e) = supervise(iqn, s, stop).await {
                error!(%target, "session given up: {e}");
            }
        });
    }
    wait_for_signal().await;
    info!("shutting down: logging out");
    stop_tx.send_replace(true);
    let drain = async { while set.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(15), drain)
        .await
        .is_err()
    {
        warn!("sessions did not log out within 15 s");
    }
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

struct Export {
    tx: watch::Sender<Option<BlockDevice>>,
    _server: Option<tokio::task::JoinHandle<()>>,
}

/// Keep one configured session logged in and its exports served.
async fn supervise(
    iqn: conf::Iqn,
    sc: SessionConf,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Error> {
    let target = sc.target.as_str().to_owned();
    let choice = match sc.transport {
        SessionTransport::Tcp => TransportChoice::Tcp,
        SessionTransport::Iser => TransportChoice::Iser,
        SessionTransport::Auto => TransportChoice::Auto,
    };
    let fabric = IserConfig::fabric_for(&sc);
    let cfg = SessionConfig::from_conf(&iqn, &sc)?;
    let mut exports: HashMap<u16, Export> = HashMap::new();
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match Link::connect(cfg.clone(), Some(fabric.clone()), choice).await {
            Ok(session) => {
                failures = 0;
                attach_luns(&session, &sc, &mut exports, cfg.command_timeout).await;
                tokio::select! {
                    _ = session.wait_closed() => {
                        warn!(%target, reason = ?session.closed_reason(), "session lost; reconnecting");
                    }
                    _ = stop.changed() => {
                        if let Err(e) = session.logout().await {
                            warn!(%target, "logout: {e}");
                        }
                        cleanup(&sc);
                        return Ok(());
                    }
                }
                for e in exports.values() {
                    e.tx.send_replace(None);
                }
            }
            Err(e) => {
                failures += 1;
                warn!(%target, attempt = failures, "login failed: {e}");
                if sc.reconnect.max_attempts != 0 && failures >= sc.reconnect.max_attempts {
                    cleanup(&sc);
                    return Err(e);
                }
            }
        }
        let delay = Duration::from_secs(u64::from(sc.reconnect.delay.max(1)));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => { cleanup(&sc); return Ok(()); }
        }
    }
}

async fn attach_luns(
    session: &Link,
    sc: &SessionConf,
    exports: &mut HashMap<u16, Export>,
    wait: Duration,
) {
    let target = sc.target.as_str();
    for l in &sc.luns {
        let policy = sc.policy_for_lun(l.id);
        let dev = match BlockDevice::open(session.clone(), l.id, policy).await {
            Ok(d) => d,
            Err(e) => {
                error!(%target, lun = l.id, "LUN not exported: {e}");
                continue;
            }
        };
        info!(%target, lun = l.id, info = %dev.info(), mode = dev.policy().mode.as_str(), "LUN ready");
        if let Some(e) = exports.get(&l.id) {
            e.tx.send_replace(Some(dev));
            continue;
        }
        let info = dev.info().clone();
        let (tx, rx) = watch::channel(Some(dev));
        let shared = Arc::new(SharedLun::new(info, rx, wait));
        let name = format!("lun{}", l.id);
        let server = match &l.nbd {
            Some(NbdEndpoint::Unix(path)) => {
                let (path, shared) = (path.clone(), shared.clone());
                Some(tokio::spawn(async move {
                    if let Err(e) = crate::nbd::serve_unix(&path, shared, name).await {
                        error!(path = %path.display(), "NBD export stopped: {e}");
                    }
                }))
            }
            Some(NbdEndpoint::Tcp(addr)) => match tokio::net::TcpListener::bind(addr).await {
                Ok(listener) => {
                    let shared = shared.clone();
                    let addr = *addr;
                    Some(tokio::spawn(async move {
                        if let Err(e) = crate::nbd::serve_tcp(listener, shared, name).await {
                            error!(%addr, "NBD export stopped: {e}");
                        }
                    }))
                }
                Err(e) => {
                    error!(%addr, "cannot listen for NBD: {e}");
                    None
                }
            },
            None => None,
        };
        if l.fuse.is_some() {
            warn!(%target, lun = l.id, "FUSE export is not available in this build; only NBD is served");
        }
        exports.insert(
            l.id,
            Export {
                tx,
                _server: server,
            },
        );
    }
}

fn cleanup(sc: &SessionConf) {
    for l in &sc.luns {
        if let Some(NbdEndpoint::Unix(p)) = &l.nbd {
            let _ = std::fs::remove_file(p);
        }
    }
}
