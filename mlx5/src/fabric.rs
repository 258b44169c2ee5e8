//! The fabric's connection manager: listeners (TCP or UNIX), the CM handshake
//! (CM_REQ with private data, answered by CM_REP or CM_REJ with private data), and
//! attaching a connected socket to a QP (starting its requester, rx and tx threads).

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use verbs::cm::{
    CmAddr, CmError, ConnEvents, ConnParam, ConnectRequest, DisconnectReason, RequestSink,
};
use verbs::provider::{ConnectRequestOps, ConnectionOps, ListenOps};
use verbs::{QpState, VerbsError};

use crate::frame::{self, FrameError, Header, Op};
use crate::hca::{Hca, Link, Qp};
use crate::receive::RxPort;
use crate::requester::{self, ReqEvent, SqExec};
use crate::transport::{self, Stream, TxItem, Wire};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The congestion control of a link's TCP socket. A RoCE link is lossless and
/// leaves congestion to the fabric; what the emulated link needs is a socket
/// that sends a long run of large frames as fast as its peer takes them. A
/// pacing algorithm (BBR, the default of some distributions) holds one bulk
/// stream to its bandwidth estimate and leaves the cores idle between paced
/// bursts: 128 KiB reads between the daemons ran 1.85 GB/s under BBR against
/// 2.7 GB/s under CUBIC (tests/BENCHMARKS.md, run 13). When the kernel refuses
/// it, the system default stays.
pub const LINK_CONGESTION: &str = "cubic";

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new().name(name).spawn(f).map(|_| ())
}

fn write_frame(s: &mut Stream, op: Op, qpn: u32, payload: &[u8]) -> io::Result<()> {
    let mut h = Header::new(op, 0);
    h.qpn = qpn;
    s.write_all(&frame::encode(&h, payload))?;
    s.flush()
}

/// Sets up a link's TCP socket: no Nagle delay, and [`LINK_CONGESTION`] when the
/// kernel offers it (otherwise the system default stays, with a debug log line).
fn tune_link_socket(t: &TcpStream) -> io::Result<()> {
    t.set_nodelay(true)?;
    if let Err(e) = rustix::net::sockopt::set_tcp_congestion(t, LINK_CONGESTION) {
        tracing::debug!(error = %e, algorithm = LINK_CONGESTION, "keeping the system's TCP congestion control");
    }
    Ok(())
}

/// Binds a connected socket to `qp`, which must be in INIT, and moves it to RTS.
pub fn attach(
    hca: &Arc<Hca>,
    qp: &Arc<Qp>,
    stream: Stream,
    events: Arc<ConnEvents>,
) -> Result<(), CmError> {
    {
        let st = qp.state();
        if st != QpState::Init {
            return Err(CmError::Verbs(VerbsError::InvalidQpState {
                qpn: qp.qpn,
                state: st,
            }));
        }
    }
    if let Stream::Tcp(t) = &stream {
        tune_link_socket(t)?;
    }
    stream.set_read_timeout(None)?;
    let reader = stream.try_clone()?;
    let (req_tx, req_rx) = crate::sync::channel();
    let (tx_tx, tx_rx) = crate::sync::channel();
    let wire = Arc::new(Wire::new(stream));
    let sq = Arc::new(SqExec::new(Arc::clone(&wire)));
    let replies = transport::Replies::new(tx_tx.clone(), Arc::clone(&wire), Arc::clone(qp));
    let rx = Arc::new(RxPort::new(
        Arc::clone(hca),
        Arc::clone(qp),
        reader,
        replies,
        req_tx.clone(),
    )?);
    *qp.link.lock() = Some(Link {
        req: req_tx.clone(),
        sq: Arc::clone(&sq),
        tx: tx_tx.clone(),
        events,
        rx: Arc::clone(&rx),
    });
    qp.state.set(QpState::Rts);
    let n = qp.qpn;
    {
        let (qp, wire) = (Arc::clone(qp), Arc::clone(&wire));
        spawn(format!("mlx5-tx-{n}"), move || {
            transport::tx_loop(qp, wire, tx_rx)
        })?;
    }
    spawn(format!("mlx5-rx-{n}"), move || rx.run())?;
    {
        let (hca, qp) = (Arc::clone(hca), Arc::clone(qp));
        spawn(format!("mlx5-req-{n}"), move || {
            requester::run(hca, qp, req_rx, sq)
        })?;
    }
    // Work posted before the connection came up.
    if let Some(l) = qp.link.lock().as_ref() {
        let _ = l.req.send(ReqEvent::Doorbell);
    }
    Ok(())
}

/// An established connection of the soft fabric.
#[derive(Debug)]
struct SoftConn {
    qp: Arc<Qp>,
}

impl ConnectionOps for SoftConn {
    fn disconnect(&self) {
        if let Some(l) = self.qp.link.lock().as_ref() {
            let _ = l.tx.send(TxItem::Frame(Arc::new(frame::encode(
                &Header::new(Op::Dreq, 0),
                &[],
            ))));
        }
        self.qp.to_error(DisconnectReason::Local);
    }
}

/// A connect request waiting for the ULP's answer.
#[derive(Debug)]
struct PendingReq {
    hca: Arc<Hca>,
    stream: Stream,
}

impl ConnectRequestOps for PendingReq {
    fn accept(
        self: Box<Self>,
        qpn: u32,
        param: &ConnParam,
        events: Arc<ConnEvents>,
    ) -> Result<Box<dyn ConnectionOps>, CmError> {
        let PendingReq { hca, mut stream } = *self;
        let qp = hca.qp(qpn)?;
        write_frame(&mut stream, Op::CmRep, qpn, &param.private_data)?;
        attach(&hca, &qp, stream, events)?;
        Ok(Box::new(SoftConn { qp }))
    }

    fn reject(self: Box<Self>, private_data: &[u8]) -> Result<(), CmError> {
        let mut s = self.stream;
        write_frame(&mut s, Op::CmRej, 0, private_data)?;
        s.shutdown();
        Ok(())
    }
}

/// The first socket address a `host:port` resolves to.
fn resolve(a: &str) -> Result<SocketAddr, CmError> {
    a.to_socket_addrs()
        .map_err(|e| CmError::AddressResolution {
            addr: a.to_owned(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| CmError::AddressResolution {
            addr: a.to_owned(),
            reason: "no address".into(),
        })
}

enum AnyListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// A listening endpoint; dropping it stops the accept thread.
#[derive(Debug)]
struct SoftListener {
    addr: CmAddr,
    stop: Arc<AtomicBool>,
}

impl ListenOps for SoftListener {
    fn local_addr(&self) -> CmAddr {
        self.addr.clone()
    }
}

impl Drop for SoftListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        match &self.addr {
            CmAddr::Tcp(a) => {
                if let Some(sa) = a.to_socket_addrs().ok().and_then(|mut i| i.next()) {
                    let _ = TcpStream::connect_timeout(&sa, Duration::from_secs(1));
                }
            }
            CmAddr::Unix(p) => {
                let _ = UnixStream::connect(p);
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn handshake(hca: Arc<Hca>, mut stream: Stream, requests: RequestSink) {
    if stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).is_err() {
        return;
    }
    let mut payload = Vec::new();
    match frame::read_frame(&mut stream, &mut payload) {
        Ok(h) if h.op == Op::CmReq => {
            let peer = stream.peer();
            let req = ConnectRequest::new(payload, peer, Box::new(PendingReq { hca, stream }));
            if let Err(req) = requests.deliver(req) {
                // Listener gone: refuse.
                let _ = req.reject(&[]);
            }
        }
        Ok(h) => tracing::debug!(op = ?h.op, "CM: expected CM_REQ"),
        Err(e) => tracing::debug!(error = %e, "CM: bad connect request"),
    }
}

/// Listens on `addr`.
pub fn listen(
    hca: &Arc<Hca>,
    addr: &CmAddr,
    requests: RequestSink,
) -> Result<Box<dyn ListenOps>, CmError> {
    let in_use = |e: io::Error| {
        if e.kind() == io::ErrorKind::AddrInUse {
            CmError::AddressInUse(addr.to_string())
        } else {
            CmError::Io(e)
        }
    };
    let (l, bound) = match addr {
        CmAddr::Tcp(a) => {
            let sa = resolve(a)?;
            let l = TcpListener::bind(sa).map_err(in_use)?;
            let local = l.local_addr()?;
            (AnyListener::Tcp(l), CmAddr::Tcp(local.to_string()))
        }
        CmAddr::Unix(p) => {
            let l = UnixListener::bind(p).map_err(in_use)?;
            (AnyListener::Unix(l, p.clone()), addr.clone())
        }
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (hca2, stop2) = (Arc::clone(hca), Arc::clone(&stop));
    spawn(format!("mlx5-cm-{bound}"), move || loop {
        let s = match &l {
            AnyListener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
            AnyListener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
        };
        if stop2.load(Ordering::SeqCst) || requests.is_closed() {
            if let AnyListener::Unix(_, p) = &l {
                let _ = std::fs::remove_file(p);
            }
            return;
        }
        match s {
            Ok(s) => {
                let (hca, requests) = (Arc::clone(&hca2), requests.clone());
                let _ = spawn("mlx5-cm-handshake".into(), move || {
                    handshake(hca, s, requests)
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "CM accept failed");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    })?;
    Ok(Box::new(SoftListener { addr: bound, stop }))
}

/// Connects `qpn` to `addr` (blocking).
pub fn connect(
    hca: &Arc<Hca>,
    qpn: u32,
    addr: &CmAddr,
    param: &ConnParam,
    events: Arc<ConnEvents>,
) -> Result<(Vec<u8>, Box<dyn ConnectionOps>), CmError> {
    let qp = hca.qp(qpn)?;
    let st = qp.state();
    if st != QpState::Init {
        return Err(CmError::Verbs(VerbsError::InvalidQpState {
            qpn,
            state: st,
        }));
    }
    let refused = |e: io::Error| match e.kind() {
        io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound => CmError::ConnectionRefused {
            addr: addr.to_string(),
        },
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => CmError::Timeout {
            addr: addr.to_string(),
            timeout: param.timeout,
        },
        _ => CmError::Io(e),
    };
    let mut stream = match addr {
        CmAddr::Tcp(a) => {
            let sa = resolve(a)?;
            Stream::Tcp(TcpStream::connect_timeout(&sa, param.timeout).map_err(refused)?)
        }
        CmAddr::Unix(p) => Stream::Unix(UnixStream::connect(p).map_err(refused)?),
    };
    stream.set_read_timeout(Some(param.timeout))?;
    write_frame(&mut stream, Op::CmReq, qpn, &param.private_data)?;
    let mut payload = Vec::new();
    match frame::read_frame(&mut stream, &mut payload) {
        Ok(h) if h.op == Op::CmRep => {
            attach(hca, &qp, stream, events)?;
            Ok((payload, Box::new(SoftConn { qp })))
        }
        Ok(h) if h.op == Op::CmRej => Err(CmError::Rejected {
            private_data: payload,
        }),
        Ok(h) => Err(CmError::Protocol(format!(
            "expected CM_REP, got {:?}",
            h.op
        ))),
        Err(FrameError::Io(e)) => Err(match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => CmError::Timeout {
                addr: addr.to_string(),
                timeout: param.timeout,
            },
            _ => CmError::Protocol(format!("connection closed during CM handshake: {e}")),
        }),
        Err(e) => Err(CmError::Protocol(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link's socket leaves the system's congestion control (here often BBR,
    /// which paces a bulk stream) for [`LINK_CONGESTION`], and sends without
    /// Nagle's delay.
    #[test]
    fn link_sockets_use_the_link_congestion_control() {
        let available =
            std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
                .unwrap_or_default();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let t = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        tune_link_socket(&t).unwrap();
        assert!(t.nodelay().unwrap());
        if available.split_whitespace().any(|a| a == LINK_CONGESTION) {
            assert_eq!(
                rustix::net::sockopt::tcp_congestion(&t).unwrap(),
                LINK_CONGESTION
            );
        }
    }
}
