//! The connection manager, in the style of rdma_cm: a passive side listens and gets
//! connect requests carrying the initiator's private data, which it accepts or
//! rejects with private data of its own; the active side connects a QP and learns
//! the outcome (established with the peer's private data, rejected with the peer's
//! private data, refused, unresolvable). Established connections report
//! disconnection. Async (tokio) and blocking forms are both offered.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::device::{Context, Qp};
use crate::error::VerbsError;
use crate::notify::Signal;
use crate::provider::{ConnectRequestOps, ConnectionOps, ListenOps};

/// Largest private data in a connect request or reply (the InfiniBand CM REQ limit).
pub const MAX_PRIVATE_DATA: usize = 56;

/// Where a CM endpoint listens or connects.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CmAddr {
    /// A TCP endpoint, `host:port` (resolved when used).
    Tcp(String),
    /// A UNIX stream socket path (same host).
    Unix(PathBuf),
}

impl fmt::Display for CmAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CmAddr::Tcp(a) => write!(f, "tcp:{a}"),
            CmAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl FromStr for CmAddr {
    type Err = CmError;

    /// `tcp:HOST:PORT`, `unix:/PATH`, or a bare `HOST:PORT` (TCP).
    fn from_str(s: &str) -> Result<CmAddr, CmError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(CmError::AddressResolution {
                    addr: s.to_string(),
                    reason: "empty socket path".into(),
                });
            }
            return Ok(CmAddr::Unix(PathBuf::from(p)));
        }
        let hp = s.strip_prefix("tcp:").unwrap_or(s);
        match hp.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
                Ok(CmAddr::Tcp(hp.to_string()))
            }
            _ => Err(CmError::AddressResolution {
                addr: s.to_string(),
                reason: "expected HOST:PORT or unix:PATH".into(),
            }),
        }
    }
}

/// Connection parameters (`rdma_conn_param`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnParam {
    /// Private data for the peer (at most [`MAX_PRIVATE_DATA`] bytes).
    pub private_data: Vec<u8>,
    /// How long to wait for the peer's answer.
    pub timeout: Duration,
}

impl ConnParam {
    /// Parameters carrying `private_data`, with a 10 s answer timeout.
    pub fn with_private_data(private_data: &[u8]) -> ConnParam {
        ConnParam {
            private_data: private_data.to_vec(),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Default for ConnParam {
    fn default() -> Self {
        ConnParam::with_private_data(&[])
    }
}

/// Connection-manager failure.
#[derive(Debug, thiserror::Error)]
pub enum CmError {
    /// The address could not be parsed or resolved (`RDMA_CM_EVENT_ADDR_ERROR`).
    #[error("cannot resolve {addr}: {reason}")]
    AddressResolution {
        /// The address as given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Nobody listens there (`RDMA_CM_EVENT_UNREACHABLE` / connection refused).
    #[error("connection to {addr} refused")]
    ConnectionRefused {
        /// The address.
        addr: String,
    },
    /// The peer rejected the request (`RDMA_CM_EVENT_REJECTED`), with its private data.
    #[error("connection rejected by the peer ({} bytes of private data)", private_data.len())]
    Rejected {
        /// The peer's private data.
        private_data: Vec<u8>,
    },
    /// No answer in time.
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Private data longer than [`MAX_PRIVATE_DATA`].
    #[error("private data of {0} bytes exceeds {MAX_PRIVATE_DATA}")]
    PrivateDataTooLong(usize),
    /// The peer broke the CM protocol or the connection dropped during set-up.
    #[error("CM protocol error: {0}")]
    Protocol(String),
    /// The address is already in use (listen).
    #[error("address {0} already in use")]
    AddressInUse(String),
    /// A verbs error (unsupported, bad QP, ...).
    #[error(transparent)]
    Verbs(#[from] VerbsError),
    /// Socket error.
    #[error("CM I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Why an established connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// This side called disconnect.
    Local,
    /// The peer disconnected (DREQ or socket closed).
    Remote,
    /// The transport failed (corrupt frame, socket error).
    Transport(String),
}

/// State shared between a [`CmConnection`] and its provider.
#[derive(Debug, Default)]
pub struct ConnEvents {
    ended: Mutex<Option<DisconnectReason>>,
    signal: Signal,
}

impl ConnEvents {
    /// Fresh, connected state.
    pub fn new() -> Arc<ConnEvents> {
        Arc::new(ConnEvents::default())
    }

    /// Provider side: the connection ended (the first reason wins).
    pub fn disconnected(&self, reason: DisconnectReason) {
        let mut e = self.ended.lock();
        if e.is_none() {
            *e = Some(reason);
            drop(e);
            self.signal.raise();
        }
    }

    /// Why it ended, if it has.
    pub fn reason(&self) -> Option<DisconnectReason> {
        self.ended.lock().clone()
    }
}

/// An established connection. Dropping it disconnects.
#[derive(Debug)]
pub struct CmConnection {
    peer_private_data: Vec<u8>,
    ops: Box<dyn ConnectionOps>,
    events: Arc<ConnEvents>,
}

impl CmConnection {
    /// The private data the peer sent (its accept reply, or its connect request).
    pub fn peer_private_data(&self) -> &[u8] {
        &self.peer_private_data
    }

    /// Disconnects; the QP goes to the error state and flushes.
    pub fn disconnect(&self) {
        self.ops.disconnect();
        self.events.disconnected(DisconnectReason::Local);
    }

    /// Whether the connection has ended, and why.
    pub fn disconnect_reason(&self) -> Option<DisconnectReason> {
        self.events.reason()
    }

    /// Waits for the `DISCONNECTED` event.
    pub async fn disconnected(&self) -> DisconnectReason {
        loop {
            let waiter = self.events.signal.wait();
            if let Some(r) = self.events.reason() {
                return r;
            }
            waiter.await;
        }
    }

    /// Blocks up to `timeout` for the `DISCONNECTED` event.
    pub fn wait_disconnected_blocking(&self, timeout: Duration) -> Option<DisconnectReason> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let seen = self.events.signal.generation();
            if let Some(r) = self.events.reason() {
                return Some(r);
            }
            let now = std::time::Instant::now();
            if now >= deadline || !self.events.signal.wait_blocking_since(seen, deadline - now) {
                return self.events.reason();
            }
        }
    }
}

impl Drop for CmConnection {
    fn drop(&mut self) {
        if self.events.reason().is_none() {
            self.ops.disconnect();
            self.events.disconnected(DisconnectReason::Local);
        }
    }
}

fn check_private_data(p: &[u8]) -> Result<(), CmError> {
    if p.len() > MAX_PRIVATE_DATA {
        Err(CmError::PrivateDataTooLong(p.len()))
    } else {
        Ok(())
    }
}

/// An incoming connect request (`RDMA_CM_EVENT_CONNECT_REQUEST`).
#[derive(Debug)]
pub struct ConnectRequest {
    private_data: Vec<u8>,
    peer: String,
    ops: Box<dyn ConnectRequestOps>,
}

impl ConnectRequest {
    /// Provider side: wraps a pending request.
    pub fn new(
        private_data: Vec<u8>,
        peer: String,
        ops: Box<dyn ConnectRequestOps>,
    ) -> ConnectRequest {
        ConnectRequest {
            private_data,
            peer,
            ops,
        }
    }

    /// The initiator's private data.
    pub fn private_data(&self) -> &[u8] {
        &self.private_data
    }

    /// The peer's address, for logs.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Accepts, binding the connection to `qp` and answering with `private_data`.
    pub fn accept(self, qp: &Qp, private_data: &[u8]) -> Result<CmConnection, CmError> {
        check_private_data(private_data)?;
        let events = ConnEvents::new();
        let param = ConnParam::with_private_data(private_data);
        let ops = self.ops.accept(qp.qp_num(), &param, Arc::clone(&events))?;
        Ok(CmConnection {
            peer_private_data: self.private_data,
            ops,
            events,
        })
    }

    /// Rejects, answering with `private_data`.
    pub fn reject(self, private_data: &[u8]) -> Result<(), CmError> {
        check_private_data(private_data)?;
        self.ops.reject(private_data)
    }
}

/// Where a provider delivers the connect requests of one listener.
#[derive(Debug, Clone)]
pub struct RequestSink {
    tx: tokio::sync::mpsc::Sender<ConnectRequest>,
    signal: Arc<Signal>,
}

impl RequestSink {
    /// Hands a request to the listener, waiting while its queue is full. Call it
    /// from a provider thread, not from inside an async task. Gives the request
    /// back when the listener is gone.
    pub fn deliver(&self, req: ConnectRequest) -> Result<(), ConnectRequest> {
        self.tx.blocking_send(req).map_err(|e| e.0)?;
        self.signal.raise();
        Ok(())
    }

    /// Whether the listener has been dropped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A listening CM endpoint. Dropping it stops listening.
#[derive(Debug)]
pub struct CmListener {
    requests: tokio::sync::mpsc::Receiver<ConnectRequest>,
    signal: Arc<Signal>,
    ops: Box<dyn ListenOps>,
}

impl CmListener {
    /// Listens on `addr` (`rdma_bind_addr` + `rdma_listen`). TCP port 0 picks a port.
    pub fn bind(ctx: &Context, addr: &CmAddr) -> Result<CmListener, CmError> {
        let (tx, requests) = tokio::sync::mpsc::channel(64);
        let signal = Arc::new(Signal::new());
        let ops = ctx.ops().cm_listen(
            addr,
            RequestSink {
                tx,
                signal: Arc::clone(&signal),
            },
        )?;
        Ok(CmListener {
            requests,
            signal,
            ops,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> CmAddr {
        self.ops.local_addr()
    }

    /// Next connect request; `None` once the listener has failed.
    pub async fn next_request(&mut self) -> Option<ConnectRequest> {
        self.requests.recv().await
    }

    /// Next connect request, blocking the thread up to `timeout`.
    pub fn next_request_blocking(&mut self, timeout: Duration) -> Option<ConnectRequest> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let seen = self.signal.generation();
            match self.requests.try_recv() {
                Ok(r) => return Some(r),
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return None,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    self.signal.wait_blocking_since(seen, deadline - now);
                }
            }
        }
    }
}

/// Connects `qp` to the listener at `addr` with `param.private_data`, blocking the
/// thread (`rdma_resolve_addr` + `rdma_connect` + waiting for ESTABLISHED).
pub fn connect_blocking(
    ctx: &Context,
    qp: &Qp,
    addr: &CmAddr,
    param: &ConnParam,
) -> Result<CmConnection, CmError> {
    check_private_data(&param.private_data)?;
    let events = ConnEvents::new();
    let (peer_private_data, ops) =
        ctx.ops()
            .cm_connect(qp.qp_num(), addr, param, Arc::clone(&events))?;
    Ok(CmConnection {
        peer_private_data,
        ops,
        events,
    })
}

/// Async form of [`connect_blocking`]; runs the handshake on tokio's blocking pool.
pub async fn connect(
    ctx: &Context,
    qp: &Qp,
    addr: &CmAddr,
    param: &ConnParam,
) -> Result<CmConnection, CmError> {
    let (ctx, qpn, addr, param) = (ctx.clone(), qp.qp_num(), addr.clone(), param.clone());
    check_private_data(&param.private_data)?;
    tokio::task::spawn_blocking(move || {
        let events = ConnEvents::new();
        let (peer_private_data, ops) =
            ctx.ops()
                .cm_connect(qpn, &addr, &param, Arc::clone(&events))?;
        Ok(CmConnection {
            peer_private_data,
            ops,
            events,
        })
    })
    .await
    .map_err(|e| CmError::Protocol(format!("connect task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_addresses() {
        assert_eq!(
            "tcp:127.0.0.1:4420".parse::<CmAddr>().unwrap(),
            CmAddr::Tcp("127.0.0.1:4420".into())
        );
        assert_eq!(
            "localhost:1".parse::<CmAddr>().unwrap(),
            CmAddr::Tcp("localhost:1".into())
        );
        assert_eq!(
            "unix:/tmp/x".parse::<CmAddr>().unwrap(),
            CmAddr::Unix("/tmp/x".into())
        );
        for bad in ["", "unix:", "nohost", ":80", "h:99999", "tcp:h:x"] {
            assert!(
                matches!(
                    bad.parse::<CmAddr>(),
                    Err(CmError::AddressResolution { .. })
                ),
                "{bad}"
            );
        }
        assert_eq!(CmAddr::Tcp("h:1".into()).to_string(), "tcp:h:1");
    }
}
