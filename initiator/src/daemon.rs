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
use tracing::{error, info, warn};

use crate::block::{BlockDevice, PiCounters, SharedLun};
use crate::error::Error;
use crate::iser::IserConfig;
use crate::link::{Link, TransportChoice};
use crate::session::SessionConfig;

/// One session the daemon keeps up.
struct Running {
    portal: String,
    luns: LunStats,
    stop: watch::Sender<bool>,
    status: watch::Receiver<String>,
    task: tokio::task::JoinHandle<()>,
}

type Registry = Arc<tokio::sync::Mutex<HashMap<String, Running>>>;

/// The PI counters of a session's exported LUNs, for `sessions`.
type LunStats = Arc<std::sync::Mutex<Vec<(u16, Arc<PiCounters>)>>>;

fn start_session(reg: &mut HashMap<String, Running>, iqn: conf::Iqn, s: SessionConf) {
    let target = s.target.as_str().to_owned();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (status_tx, status_rx) = watch::channel("connecting".to_owned());
    let portal = s.portal.to_string();
    let t = target.clone();
    let luns = LunStats::default();
    let l = luns.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = supervise(iqn, s, stop_rx, status_tx.clone(), l).await {
            error!(target = %t, "session given up: {e}");
            status_tx.send_replace(format!("given up: {e}"));
        }
    });
    reg.insert(
        target,
        Running {
            portal,
            luns,
            stop: stop_tx,
            status: status_rx,
            task,
        },
    );
}

async fn stop_session(r: Running) {
    r.stop.send_replace(true);
    let mut task = r.task;
    if tokio::time::timeout(Duration::from_secs(15), &mut task)
        .await
        .is_err()
    {
        warn!("session did not log out within 15 s");
        task.abort();
    }
}

/// Run the daemon until SIGINT or SIGTERM, answering `iser-initiator login --daemon`,
/// `logout` and `sessions` on `control` (a UNIX socket; one JSON request and one JSON
/// answer per connection).
pub async fn run(
    config: InitiatorConfig,
    control: Option<std::path::PathBuf>,
) -> Result<(), Error> {
    if config.sessions.is_empty() {
        info!("no sessions configured; waiting for logins on the control socket");
    }
    let reg: Registry = Arc::new(tokio::sync::Mutex::new(HashMap::new()));
    {
        let mut r = reg.lock().await;
        for s in config.sessions.clone() {
            start_session(&mut r, config.iqn.clone(), s);
        }
    }
    let server = match &control {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|e| Error::io(format!("control socket {}", path.display()), e))?;
            info!(socket = %path.display(), "control socket listening");
            let (reg, iqn) = (reg.clone(), config.iqn.clone());
            Some(tokio::spawn(async move {
                // Bounded by the daemon's life: the task is aborted at shutdown.
                while let Ok((stream, _)) = listener.accept().await {
                    let (reg, iqn) = (reg.clone(), iqn.clone());
                    tokio::spawn(async move { control_client(stream, reg, iqn).await });
                }
            }))
        }
        None => None,
    };
    wait_for_signal().await;
    info!("shutting down: logging out");
    if let Some(s) = server {
        s.abort();
    }
    if let Some(p) = &control {
        let _ = std::fs::remove_file(p);
    }
    let all: Vec<Running> = reg.lock().await.drain().map(|(_, r)| r).collect();
    for r in &all {
        r.stop.send_replace(true);
    }
    for r in all {
        stop_session(r).await;
    }
    Ok(())
}

/// A control request.
#[derive(Debug, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum ControlRequest {
    /// List sessions.
    Sessions,
    /// Log in to a target and keep the session up (no exports).
    Login {
        /// TargetName.
        target: String,
        /// iSCSI/TCP portal.
        portal: String,
        /// iSER portal (`ip:port` or `unix:/path`).
        #[serde(default)]
        iser_portal: Option<String>,
        /// "tcp", "iser" or "auto".
        #[serde(default)]
        transport: Option<String>,
    },
    /// Log a session out.
    Logout {
        /// TargetName.
        target: String,
    },
}

fn session_conf(
    target: &str,
    portal: &str,
    iser_portal: Option<&str>,
    transport: Option<&str>,
) -> Result<SessionConf, String> {
    let mut text = format!("target = {target:?}\nportal = {portal:?}\n");
    if let Some(i) = iser_portal {
        text.push_str(&format!("iser_portal = {i:?}\n"));
    }
    if let Some(t) = transport {
        text.push_str(&format!("transport = {t:?}\n"));
    }
    let doc = format!("iqn = \"iqn.2026-11.io.iser-pi:control\"\n[[sessions]]\n{text}[sessions.protection]\nmode = \"off\"\n");
    let c =
        InitiatorConfig::from_str_named(&doc, "<control request>").map_err(|e| e.to_string())?;
    c.sessions
        .into_iter()
        .next()
        .ok_or_else(|| "no session".to_owned())
}

async fn answer(req: ControlRequest, reg: &Registry, iqn: &conf::Iqn) -> serde_json::Value {
    match req {
        ControlRequest::Sessions => {
            let r = reg.lock().await;
            let list: Vec<_> = r
                .iter()
                .map(|(t, run)| {
                    let luns: Vec<_> = run
                        .luns
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .map(|(id, c)| {
                            serde_json::json!({"lun": id, "pi_errors_initiator": c.detected_by_initiator(), "pi_errors_target": c.reported_by_target()})
                        })
                        .collect();
                    serde_json::json!({"target": t, "portal": run.portal, "state": *run.status.borrow(), "luns": luns})
                })
                .collect();
            serde_json::json!({"ok": true, "sessions": list})
        }
        ControlRequest::Login {
            target,
            portal,
            iser_portal,
            transport,
        } => {
            let sc = match session_conf(
                &target,
                &portal,
                iser_portal.as_deref(),
                transport.as_deref(),
            ) {
                Ok(s) => s,
                Err(e) => return serde_json::json!({"ok": false, "error": e}),
            };
            let mut status = {
                let mut r = reg.lock().await;
                if let Some(run) = r.get(&target) {
                    return serde_json::json!({"ok": true, "target": target, "state": *run.status.borrow(), "note": "already logged in"});
                }
                start_session(&mut r, iqn.clone(), sc);
                match r.get(&target) {
                    Some(run) => run.status.clone(),
                    None => return serde_json::json!({"ok": false, "error": "session not started"}),
                }
            };
            // Wait for the first login attempt's outcome.
            let first = async {
                while status.borrow_and_update().as_str() == "connecting" {
                    if status.changed().await.is_err() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(20), first).await;
            let state = status.borrow().clone();
            let ok = state.starts_with("logged in");
            if !ok {
                if let Some(run) = reg.lock().await.remove(&target) {
                    stop_session(run).await;
                }
            }
            serde_json::json!({"ok": ok, "target": target, "state": state})
        }
        ControlRequest::Logout { target } => {
            let run = reg.lock().await.remove(&target);
            match run {
                Some(r) => {
                    stop_session(r).await;
                    serde_json::json!({"ok": true, "target": target, "state": "logged out"})
                }
                None => {
                    serde_json::json!({"ok": false, "error": format!("no session to {target}")})
                }
            }
        }
    }
}

async fn control_client(stream: tokio::net::UnixStream, reg: Registry, iqn: conf::Iqn) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    let mut rd = tokio::io::BufReader::new(rd.take(64 * 1024));
    if rd.read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match serde_json::from_str::<ControlRequest>(line.trim()) {
        Ok(req) => answer(req, &reg, &iqn).await,
        Err(e) => serde_json::json!({"ok": false, "error": format!("bad request: {e}")}),
    };
    let _ = wr.write_all(format!("{reply}\n").as_bytes()).await;
}

/// Send one request to a running daemon and return its answer.
pub async fn control_request(
    path: &std::path::Path,
    req: &serde_json::Value,
) -> Result<serde_json::Value, Error> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = tokio::net::UnixStream::connect(path).await.map_err(|e| {
        Error::io(
            format!(
                "no daemon at {} (start `iser-initiator --config ...` first)",
                path.display()
            ),
            e,
        )
    })?;
    let (rd, mut wr) = stream.into_split();
    wr.write_all(format!("{req}\n").as_bytes())
        .await
        .map_err(|e| Error::io("control request", e))?;
    let mut line = String::new();
    let mut rd = tokio::io::BufReader::new(rd);
    let read = tokio::time::timeout(Duration::from_secs(60), rd.read_line(&mut line)).await;
    match read {
        Ok(Ok(_)) => serde_json::from_str(line.trim())
            .map_err(|e| Error::Protocol(format!("control answer: {e}"))),
        Ok(Err(e)) => Err(Error::io("control answer", e)),
        Err(_) => Err(Error::ConnectionLost(
            "the daemon did not answer within 60 s".into(),
        )),
    }
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
    counters: Arc<PiCounters>,
    shared: Arc<SharedLun>,
    _server: Option<tokio::task::JoinHandle<()>>,
}

/// Keep one configured session logged in and its exports served.
async fn supervise(
    iqn: conf::Iqn,
    sc: SessionConf,
    mut stop: watch::Receiver<bool>,
    status: watch::Sender<String>,
    stats: LunStats,
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
    // Dropping a mount's session unmounts it, when this function returns.
    let mut mounts: HashMap<std::path::PathBuf, fuser::BackgroundSession> = HashMap::new();
    let mut failures = 0u32;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        match Link::connect(cfg.clone(), Some(fabric.clone()), choice).await {
            Ok(session) => {
                failures = 0;
                status.send_replace(format!("logged in over {}", session.transport_name()));
                attach_luns(
                    &session,
                    &sc,
                    &mut exports,
                    &mut mounts,
                    &stats,
                    cfg.command_timeout,
                )
                .await;
                tokio::select! {
                    _ = session.wait_closed() => {
                        warn!(%target, reason = ?session.closed_reason(), "session lost; reconnecting");
                        status.send_replace(format!("reconnecting: {}", session.closed_reason().unwrap_or_default()));
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
                status.send_replace(format!("login failed (attempt {failures}): {e}"));
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
    mounts: &mut HashMap<std::path::PathBuf, fuser::BackgroundSession>,
    stats: &LunStats,
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
            e.tx.send_replace(Some(dev.with_counters(e.counters.clone())));
            continue;
        }
        let counters = Arc::new(PiCounters::default());
        stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((l.id, counters.clone()));
        let dev = dev.with_counters(counters.clone());
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
        exports.insert(
            l.id,
            Export {
                tx,
                counters,
                shared,
                _server: server,
            },
        );
    }
    // FUSE: one mount per directory, one file per LUN exported there.
    let mut dirs: HashMap<&std::path::Path, Vec<(String, Arc<SharedLun>)>> = HashMap::new();
    for l in &sc.luns {
        if let (Some(dir), Some(e)) = (&l.fuse, exports.get(&l.id)) {
            if !mounts.contains_key(dir) {
                dirs.entry(dir.as_path())
                    .or_default()
                    .push((format!("lun{}", l.id), e.shared.clone()));
            }
        }
    }
    for (dir, files) in dirs {
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        match crate::fuse::mount(dir, files, tokio::runtime::Handle::current()) {
            Ok(m) => {
                info!(%target, dir = %dir.display(), files = ?names, "FUSE export mounted");
                mounts.insert(dir.to_path_buf(), m);
            }
            Err(e) => error!(%target, dir = %dir.display(), "FUSE mount failed: {e}"),
        }
    }
}

fn cleanup(sc: &SessionConf) {
    for l in &sc.luns {
        if let Some(NbdEndpoint::Unix(p)) = &l.nbd {
            let _ = std::fs::remove_file(p);
        }
    }
}
