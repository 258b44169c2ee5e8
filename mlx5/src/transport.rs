//! The socket side of a connected QP: the stream type (TCP or UNIX), the transmit
//! thread (batches frames into few socket writes), and the receive thread that
//! checks each frame and hands it to the responder or the completer.
//!
//! Threads per connected QP: requester (SQ processing, RNR retransmission; writes
//! its request frames itself), rx (responder + completer), tx (writes the
//! responses the rx thread queues). The rx thread never blocks on a socket write,
//! so two HCAs reading from each other cannot deadlock.

use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use parking_lot::Mutex;
use verbs::cm::DisconnectReason;

use crate::frame::{self, FrameError, Op};
use crate::hca::{Hca, Qp};
use crate::requester::ReqEvent;

/// A fabric stream.
#[derive(Debug)]
pub enum Stream {
    /// Across hosts.
    Tcp(TcpStream),
    /// Same host.
    Unix(UnixStream),
}

impl Stream {
    /// Another handle to the same socket.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }
    /// Closes both directions.
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
    /// Sets the write timeout.
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }
    /// Sets the read timeout.
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }
    /// Peer address, for logs.
    pub fn peer(&self) -> String {
        match self {
            Stream::Tcp(s) => s.peer_addr().map(|a| a.to_string()).unwrap_or_default(),
            Stream::Unix(_) => "unix".to_string(),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// Work for the transmit thread.
#[derive(Debug)]
pub enum TxItem {
    /// Send this frame.
    Frame(Arc<Vec<u8>>),
    /// Flush and close the socket.
    Shutdown,
}

/// The write side of a connection, shared by the requester (which writes its
/// request frames directly: it may block on a full socket, since the peer's rx
/// thread never blocks on writes) and the transmit thread (responses queued by
/// the rx thread, which must never block).
#[derive(Debug)]
pub struct Wire {
    w: Mutex<BufWriter<Stream>>,
    /// A second handle to the socket, for closing it without the lock: a writer
    /// blocked on a peer that stopped reading holds the lock indefinitely.
    ctl: Option<Stream>,
}

/// How long [`Wire::shutdown`] waits for the lock, and then for the final flush.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

impl Wire {
    /// Wraps the socket with a 256 KiB write buffer.
    pub fn new(stream: Stream) -> Wire {
        Wire {
            ctl: stream.try_clone().ok(),
            w: Mutex::new(BufWriter::with_capacity(256 << 10, stream)),
        }
    }
    /// Writes one frame (buffered; large frames go straight to the socket).
    pub fn write(&self, f: &[u8]) -> io::Result<()> {
        self.w.lock().write_all(f)
    }
    /// Pushes buffered frames to the socket.
    pub fn flush(&self) -> io::Result<()> {
        self.w.lock().flush()
    }
    /// Flushes (for at most [`SHUTDOWN_WAIT`]) and closes both directions. When a
    /// writer holds the lock past [`SHUTDOWN_WAIT`] (its peer stopped reading), the
    /// socket is closed under it, which fails its write instead of leaving it and
    /// this call blocked forever.
    pub fn shutdown(&self) {
        match (self.w.try_lock_for(SHUTDOWN_WAIT), &self.ctl) {
            (Some(mut w), _) => {
                let _ = w.get_ref().set_write_timeout(Some(SHUTDOWN_WAIT));
                let _ = w.flush();
                w.get_ref().shutdown();
            }
            (None, Some(ctl)) => ctl.shutdown(),
            (None, None) => {
                let w = self.w.lock();
                w.get_ref().shutdown();
            }
        }
    }
}

/// Recycled frame buffers of one connection. Large frames allocated and freed
/// per message cost page faults (glibc serves them with mmap); keeping a few
/// buffers around avoids that.
#[derive(Debug, Default)]
pub struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    const KEEP: usize = 64;
    const MAX_BUF: usize = 4 << 20;

    /// A buffer with at least `cap` bytes of capacity if one is available.
    pub fn get(&self, cap: usize) -> Vec<u8> {
        let mut free = self.free.lock();
        match free.iter().rposition(|b| b.capacity() >= cap) {
            Some(i) => free.swap_remove(i),
            None => free.pop().unwrap_or_default(),
        }
    }

    /// Returns a frame for reuse, if nobody else holds it.
    pub fn put(&self, f: Arc<Vec<u8>>) {
        if let Ok(b) = Arc::try_unwrap(f) {
            let mut free = self.free.lock();
            if free.len() < Self::KEEP && b.capacity() <= Self::MAX_BUF {
                free.push(b);
            }
        }
    }
}

/// Transmit thread: writes queued frames, flushing once the queue is empty.
pub fn tx_loop(qp: Arc<Qp>, wire: Arc<Wire>, rx: Receiver<TxItem>) {
    'outer: while let Ok(mut item) = rx.recv() {
        loop {
            match item {
                TxItem::Frame(f) => {
                    if let Err(e) = wire.write(&f) {
                        qp.to_error(DisconnectReason::Transport(e.to_string()));
                        break 'outer;
                    }
                    qp.bufs.put(f);
                }
                TxItem::Shutdown => break 'outer,
            }
            match rx.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        if let Err(e) = wire.flush() {
            qp.to_error(DisconnectReason::Transport(e.to_string()));
            break;
        }
    }
    wire.shutdown();
}

/// Receive thread: reads and checks frames until the connection ends.
pub fn rx_loop(
    hca: Arc<Hca>,
    qp: Arc<Qp>,
    mut stream: Stream,
    tx: Sender<TxItem>,
    req: Sender<ReqEvent>,
) {
    let mut payload = Vec::new();
    let mut resp = crate::responder::Responder::new();
    loop {
        let h = match frame::read_frame(&mut stream, &mut payload) {
            Ok(h) => h,
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                qp.to_error(DisconnectReason::Remote);
                return;
            }
            Err(e) => {
                tracing::warn!(qpn = qp.qpn, error = %e, "transport error");
                qp.to_error(DisconnectReason::Transport(e.to_string()));
                return;
            }
        };
        match h.op {
            Op::Send | Op::SendInv | Op::Write | Op::ReadReq => {
                resp.handle(&hca, &qp, &h, &mut payload, &tx)
            }
            Op::Ack | Op::Nak | Op::ReadResp => {
                crate::completer::handle(&hca, &qp, &h, &mut payload, &req)
            }
            Op::Dreq => {
                qp.to_error(DisconnectReason::Remote);
                return;
            }
            Op::CmReq | Op::CmRep | Op::CmRej => {
                qp.to_error(DisconnectReason::Transport(format!(
                    "unexpected {:?} on a connected QP",
                    h.op
                )));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A writer blocked on a peer that stopped reading holds the wire lock; closing
    /// the connection must still finish and unblock that writer.
    #[test]
    fn shutdown_unblocks_a_writer_stuck_on_a_silent_peer() {
        let (a, _silent_peer) = UnixStream::pair().unwrap();
        let wire = Arc::new(Wire::new(Stream::Unix(a)));
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        {
            let (wire, done_tx) = (Arc::clone(&wire), done_tx.clone());
            std::thread::spawn(move || {
                let chunk = vec![0u8; 1 << 20];
                let t0 = Instant::now();
                let mut r = Ok(());
                // The socket buffer fills within a few writes; bounded regardless.
                while r.is_ok() && t0.elapsed() < Duration::from_secs(30) {
                    r = wire.write(&chunk);
                }
                let _ = done_tx.send(("writer", r.is_err()));
            });
        }
        std::thread::sleep(Duration::from_millis(200));
        {
            let wire = Arc::clone(&wire);
            std::thread::spawn(move || {
                wire.shutdown();
                let _ = done_tx.send(("shutdown", true));
            });
        }
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match done_rx.recv_timeout(Duration::from_secs(10)) {
                Ok(x) => seen.push(x),
                Err(_) => panic!("shutdown or writer still blocked; finished: {seen:?}"),
            }
        }
        assert!(seen.contains(&("shutdown", true)));
        assert!(
            seen.contains(&("writer", true)),
            "writer ended without an error"
        );
    }
}
