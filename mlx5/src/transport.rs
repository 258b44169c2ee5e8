//! The socket side of a connected QP: the stream type (TCP or UNIX) and the
//! transmit thread (batches frames into few socket writes); the receive side is
//! [`crate::receive`].
//!
//! Threads per connected QP: requester (SQ processing, RNR retransmission; writes
//! its request frames itself, and the doorbell writer does so in its place when
//! it can, without ever waiting on the socket), rx (responder + completer, unless
//! the receive CQ's consumer runs them in poll mode), tx (writes the responses the
//! receive path queues). The receive path never blocks on a socket write, so two
//! HCAs reading from each other cannot deadlock: it writes an ACK itself only when
//! the socket takes it without waiting, and queues everything else.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use crate::sync::Mutex;
use crate::sync::{Receiver, Sender};
use verbs::cm::DisconnectReason;

use crate::bulk::{self, Gathered, Wired};
use crate::frame::{self, Icrc, HDR_LEN};
use crate::hca::Qp;

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
    /// Sends what the socket takes without waiting (`WouldBlock` when it takes
    /// nothing).
    pub fn send_now(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        match self {
            Stream::Tcp(s) => socket2::SockRef::from(s).send_vectored_with_flags(bufs, flags),
            Stream::Unix(s) => socket2::SockRef::from(s).send_vectored_with_flags(bufs, flags),
        }
    }
    /// Receives what the socket holds without waiting (`WouldBlock` when empty,
    /// 0 at the end of the stream).
    pub fn recv_now(&self, b: &mut [u8]) -> io::Result<usize> {
        let flags = rustix::net::RecvFlags::DONTWAIT;
        let r = match self {
            Stream::Tcp(s) => rustix::net::recv(s, b, flags),
            Stream::Unix(s) => rustix::net::recv(s, b, flags),
        };
        r.map(|(n, _)| n).map_err(io::Error::from)
    }
    /// Waits until the socket is readable (`readable`) or writable, or has failed
    /// or been shut down (the next call then reports it).
    pub fn wait(&self, readable: bool) -> io::Result<()> {
        use rustix::event::{poll, PollFd, PollFlags};
        let flags = if readable {
            PollFlags::IN
        } else {
            PollFlags::OUT
        };
        let r = match self {
            Stream::Tcp(s) => poll(&mut [PollFd::new(s, flags)], None),
            Stream::Unix(s) => poll(&mut [PollFd::new(s, flags)], None),
        };
        match r {
            Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
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

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
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
    /// Flush what is buffered (the rx thread left part of a frame there).
    Flush,
    /// Flush and close the socket.
    Shutdown,
}

/// What [`Wire::try_write_now`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteNow {
    /// All of it is on the socket.
    Sent,
    /// Part of it was sent; the rest waits for the next writer or flush.
    Buffered,
    /// Nothing written: another writer holds the socket or has bytes buffered.
    Busy,
}

/// The write side of a connection, shared by the requester (which writes its
/// request frames directly: it may block on a full socket, since the peer's rx
/// thread never blocks on writes) and the transmit thread (responses queued by
/// the rx thread, which must never block).
#[derive(Debug)]
pub struct Wire {
    w: Mutex<WireState>,
    /// A second handle to the socket, for closing it without the lock: a writer
    /// blocked on a peer that stopped reading holds the lock indefinitely.
    ctl: Option<Stream>,
}

#[derive(Debug)]
struct WireState {
    stream: Stream,
    /// Small frames staged for one socket write (at most [`STAGING`] bytes).
    out: Vec<u8>,
    /// The unsent tail of a frame the rx thread started with a non-blocking send
    /// (frame, bytes already sent). Whoever takes the lock next writes it before
    /// anything else; while it is set, the staging buffer is empty.
    rest: Option<(Arc<Vec<u8>>, usize)>,
}

impl WireState {
    fn finish_rest(&mut self) -> io::Result<()> {
        match self.rest.take() {
            Some((f, sent)) => self.stream.write_all(&f[sent..]),
            None => Ok(()),
        }
    }

    /// [`WireState::finish_rest`] without waiting: what the socket does not take
    /// moves to the (then empty) staging buffer, still ahead of everything else.
    /// False when something is left.
    fn finish_rest_now(&mut self) -> io::Result<bool> {
        let Some((f, sent)) = self.rest.take() else {
            return Ok(true);
        };
        let n = send_all_now(&self.stream, &f[sent..])?;
        if sent + n < f.len() {
            let mut left = f[sent + n..].to_vec();
            left.extend_from_slice(&self.out);
            self.out = left;
            return Ok(false);
        }
        Ok(true)
    }

    /// Sends the staged bytes without waiting; false when some are left.
    fn flush_out_now(&mut self) -> io::Result<bool> {
        let n = send_all_now(&self.stream, &self.out)?;
        self.out.drain(..n);
        Ok(self.out.is_empty())
    }

    /// [`WireState::write`] without waiting: a frame is always taken (what the
    /// socket does not take now is copied behind the staged bytes, for the next
    /// writer that may wait); false when something is left unsent beyond the
    /// staging buffer's normal use, so that the caller stops and lets such a
    /// writer go on.
    fn write_now(&mut self, f: &[u8]) -> io::Result<bool> {
        if !self.finish_rest_now()?
            || (self.out.len() + f.len() > STAGING && !self.flush_out_now()?)
        {
            self.out.extend_from_slice(f);
            return Ok(false);
        }
        if f.len() < STAGING {
            self.out.extend_from_slice(f);
            return Ok(true);
        }
        let n = send_all_now(&self.stream, f)?;
        if n < f.len() {
            self.out.extend_from_slice(&f[n..]);
            return Ok(false);
        }
        Ok(true)
    }

    /// [`Wire::write_gathered`] without waiting, as [`WireState::write_now`]: the
    /// payload the socket does not take now is copied from memory behind the
    /// staged bytes, with the trailer after it.
    fn write_gathered_now(&mut self, g: &Gathered) -> io::Result<bool> {
        let mut crc = Icrc::over(&g.head);
        let clear = self.finish_rest_now()?
            && (self.out.len() + HDR_LEN <= STAGING || self.flush_out_now()?);
        self.out.extend_from_slice(&g.head);
        let sent_all = if clear {
            bulk::send_from(&self.stream, &mut self.out, &g.segs, &mut crc, false)?
        } else {
            bulk::copy_from(&mut self.out, &g.segs, 0, &mut crc)?;
            false
        };
        self.out.extend_from_slice(&crc.value().to_be_bytes());
        Ok(sent_all)
    }

    /// Writes the staged bytes.
    fn flush_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            let r = self.stream.write_all(&self.out);
            self.out.clear();
            r?;
        }
        Ok(())
    }

    /// Stages a frame, or writes it straight from `f` when it is too large to stage.
    fn write(&mut self, f: &[u8]) -> io::Result<()> {
        self.finish_rest()?;
        if self.out.len() + f.len() > STAGING {
            self.flush_out()?;
        }
        if f.len() >= STAGING {
            self.stream.write_all(f)
        } else {
            self.out.extend_from_slice(f);
            Ok(())
        }
    }
}

/// Sends as much of `b` as the socket takes now; how many bytes that was.
fn send_all_now(stream: &Stream, b: &[u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < b.len() {
        match stream.send_now(&[IoSlice::new(&b[n..])]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
/// Bytes of the socket write staging and read buffers. Frames at least this long
/// bypass them, so bulk data is copied once between frame and socket (or not at
/// all, see [`crate::bulk`]).
pub const STAGING: usize = 32 << 10;

/// How long [`Wire::shutdown`] waits for the lock, and then for the final flush.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

impl Wire {
    /// Wraps the socket with a [`STAGING`]-byte write buffer: small frames (ACKs,
    /// iSER control messages) are batched into few writes, larger ones go to the
    /// socket straight from the frame, without a copy into the buffer.
    pub fn new(stream: Stream) -> Wire {
        Wire {
            ctl: stream.try_clone().ok(),
            w: Mutex::new(WireState {
                stream,
                out: Vec::with_capacity(STAGING),
                rest: None,
            }),
        }
    }
    /// Writes one frame (buffered; large frames go straight to the socket).
    pub fn write(&self, f: &[u8]) -> io::Result<()> {
        self.w.lock().write(f)
    }
    /// Writes a frame whose payload is read from registered memory as it goes to
    /// the socket, with the ICRC computed on the way (the trailer is staged).
    pub fn write_gathered(&self, g: &Gathered) -> io::Result<()> {
        let mut w = self.w.lock();
        w.finish_rest()?;
        if w.out.len() + HDR_LEN > STAGING {
            w.flush_out()?;
        }
        w.out.extend_from_slice(&g.head);
        let WireState { stream, out, .. } = &mut *w;
        let mut crc = Icrc::over(&g.head);
        bulk::send_from(stream, out, &g.segs, &mut crc, true)?;
        w.write(&crc.value().to_be_bytes())
    }
    /// Writes a request frame.
    pub fn write_wired(&self, f: Wired<'_>) -> io::Result<()> {
        match f {
            Wired::Bytes(b) => self.write(b),
            Wired::Gathered(g) => self.write_gathered(g),
        }
    }
    /// The wire for a thread that posts work and must never wait on the socket
    /// (as posting to a hardware queue never blocks): `None` when another writer
    /// holds it, which may be waiting on a peer that stopped reading.
    pub fn try_now(&self) -> Option<WireNow<'_>> {
        self.w.try_lock().map(WireNow)
    }
    /// Writes a frame without ever blocking, when no other writer holds the lock
    /// or has bytes waiting: a non-blocking send, and whatever the socket does not
    /// take at once is left for the next writer (the caller must make sure there
    /// is one: [`WriteNow::Buffered`]).
    pub fn try_write_now(&self, f: &Arc<Vec<u8>>) -> WriteNow {
        let Some(mut w) = self.w.try_lock() else {
            return WriteNow::Busy;
        };
        if !w.out.is_empty() || w.rest.is_some() {
            return WriteNow::Busy;
        }
        let sent = w.stream.send_now(&[IoSlice::new(f)]);
        let n = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            // Let the transmit thread meet the error on its own write.
            Err(_) => return WriteNow::Busy,
        };
        if n == f.len() {
            return WriteNow::Sent;
        }
        w.rest = Some((Arc::clone(f), n));
        WriteNow::Buffered
    }

    /// Pushes buffered frames to the socket.
    pub fn flush(&self) -> io::Result<()> {
        let mut w = self.w.lock();
        w.finish_rest()?;
        w.flush_out()
    }

    /// Flushes (for at most `SHUTDOWN_WAIT` (2 s)) and closes both directions. When a
    /// writer holds the lock past `SHUTDOWN_WAIT` (2 s) (its peer stopped reading), the
    /// socket is closed under it, which fails its write instead of leaving it and
    /// this call blocked forever.
    pub fn shutdown(&self) {
        match (self.w.try_lock_for(SHUTDOWN_WAIT), &self.ctl) {
            (Some(mut w), _) => {
                let _ = w.stream.set_write_timeout(Some(SHUTDOWN_WAIT));
                let _ = w.finish_rest().and_then(|()| w.flush_out());
                w.stream.shutdown();
            }
            (None, Some(ctl)) => ctl.shutdown(),
            (None, None) => {
                let w = self.w.lock();
                w.stream.shutdown();
            }
        }
    }
}

/// The wire held by a writer that never waits on the socket ([`Wire::try_now`]).
#[derive(Debug)]
pub struct WireNow<'a>(MutexGuard<'a, WireState>);

impl WireNow<'_> {
    /// Writes a request frame without waiting. The frame is always taken; false
    /// when part of it (or of what was staged before) is left in the staging
    /// buffer for a writer that may wait: the caller then writes nothing more and
    /// hands over to such a writer, which sends what is left first.
    pub fn write_wired(&mut self, f: Wired<'_>) -> io::Result<bool> {
        match f {
            Wired::Bytes(b) => self.0.write_now(b),
            Wired::Gathered(g) => self.0.write_gathered_now(g),
        }
    }

    /// [`Wire::flush`] without waiting; false when something is left for a
    /// writer that may wait.
    pub fn flush(&mut self) -> io::Result<bool> {
        Ok(self.0.finish_rest_now()? && self.0.flush_out_now()?)
    }
}

/// Recycled frame buffers of one connection. Large frames allocated and freed
/// per message cost page faults (glibc serves them with mmap) and a clearing
/// pass; keeping a few buffers around avoids both. A buffer keeps its last
/// frame's bytes, so that [`crate::frame::FrameBuilder::sized`] need not clear
/// a buffer that already held a frame as long as the next.
///
/// Small frames (ACKs, control SENDs) are neither taken from nor kept in the
/// pool: the allocator serves them cheaply, and a pool filled with them would
/// turn the large buffers away (and hand them out truncated, to be cleared
/// again when a large frame reuses them).
#[derive(Debug, Default)]
pub struct BufPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufPool {
    const KEEP: usize = 64;
    const MIN_BUF: usize = 4 << 10;
    const MAX_BUF: usize = 4 << 20;

    /// A buffer for a frame with `payload_len` payload bytes: preferably one that
    /// already holds a frame at least that long, then one with the capacity.
    pub fn for_frame(&self, payload_len: usize) -> Vec<u8> {
        let len = frame::HDR_LEN + payload_len + frame::TRAILER_LEN;
        if len < Self::MIN_BUF {
            return Vec::with_capacity(len);
        }
        let mut free = self.free.lock();
        let pick = free
            .iter()
            .rposition(|b| b.len() >= len)
            .or_else(|| free.iter().rposition(|b| b.capacity() >= len));
        match pick {
            Some(i) => free.swap_remove(i),
            None => Vec::with_capacity(len),
        }
    }

    /// Returns a frame for reuse, if nobody else holds it.
    pub fn put(&self, f: Arc<Vec<u8>>) {
        if !(Self::MIN_BUF..=Self::MAX_BUF).contains(&f.capacity()) {
            return;
        }
        if let Ok(b) = Arc::try_unwrap(f) {
            let mut free = self.free.lock();
            if free.len() < Self::KEEP {
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
                TxItem::Flush => {}
                TxItem::Shutdown => break 'outer,
            }
            match rx.try_recv() {
                Some(next) => item = next,
                None => break,
            }
        }
        if let Err(e) = wire.flush() {
            qp.to_error(DisconnectReason::Transport(e.to_string()));
            break;
        }
    }
    wire.shutdown();
}

/// Where the receive thread's responses go.
#[derive(Debug)]
pub struct Replies {
    tx: Sender<TxItem>,
    wire: Arc<Wire>,
    qp: Arc<Qp>,
}

impl Replies {
    /// Responses of `qp` through `tx` (the transmit thread), or straight to `wire`
    /// when that cannot block.
    pub fn new(tx: Sender<TxItem>, wire: Arc<Wire>, qp: Arc<Qp>) -> Replies {
        Replies { tx, wire, qp }
    }

    /// Sends a response (ACK, NAK, READ response): straight to the socket when the
    /// transmit thread has nothing queued and the socket takes it without waiting,
    /// which saves waking that thread; otherwise queued behind earlier responses.
    pub fn send(&self, f: Arc<Vec<u8>>) {
        if self.tx.is_empty() {
            match self.wire.try_write_now(&f) {
                WriteNow::Sent => {
                    self.qp.bufs.put(f);
                    return;
                }
                WriteNow::Buffered => {
                    // The transmit thread finishes the frame.
                    let _ = self.tx.send(TxItem::Flush);
                    return;
                }
                WriteNow::Busy => {}
            }
        }
        let _ = self.tx.send(TxItem::Frame(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Op;
    use std::time::Instant;

    /// A large frame reuses a buffer that already held one at least as long (no
    /// clearing pass), before one that merely has the capacity; small frames and
    /// frames someone still holds are not kept.
    #[test]
    fn frame_buffers_are_reused_whole_and_small_ones_are_not_pooled() {
        let pool = BufPool::default();
        let payload = 128 << 10;
        let need = frame::HDR_LEN + payload + frame::TRAILER_LEN;
        let mut truncated = Vec::with_capacity(2 * need);
        truncated.resize(100, 1);
        pool.put(Arc::new(truncated));
        pool.put(Arc::new(vec![7u8; need]));
        pool.put(Arc::new(vec![0u8; 64]));
        let held = Arc::new(vec![0u8; need]);
        pool.put(Arc::clone(&held));
        assert_eq!(pool.free.lock().len(), 2);

        let whole = pool.for_frame(payload);
        assert_eq!((whole.len(), whole[need - 1]), (need, 7));
        let roomy = pool.for_frame(payload);
        assert_eq!(roomy.len(), 100);
        assert!(roomy.capacity() >= need);
        let fresh = pool.for_frame(payload);
        assert!(fresh.is_empty() && fresh.capacity() >= need);
        assert!(pool.for_frame(16).capacity() >= frame::HDR_LEN + 16);
    }

    /// A frame the socket takes only in part is finished, in order and before any
    /// later frame, by the next writer; the non-blocking path never blocks.
    #[test]
    fn partly_sent_frame_is_finished_before_the_next_one() {
        let (a, b) = UnixStream::pair().unwrap();
        let wire = Wire::new(Stream::Unix(a));
        // Fill the socket buffer without blocking.
        let filler = Arc::new(vec![0xeeu8; 64 << 10]);
        let mut filled = 0usize;
        let first = loop {
            match wire.try_write_now(&filler) {
                WriteNow::Sent => filled += filler.len(),
                other => break other,
            }
            assert!(filled < 64 << 20, "socket never filled");
        };
        assert_eq!(first, WriteNow::Buffered, "a full socket leaves the rest");
        let tail = Arc::new((0..100_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        assert_eq!(wire.try_write_now(&tail), WriteNow::Busy, "rest pending");
        let expected = filled + filler.len() + tail.len();
        let reader = std::thread::spawn(move || {
            let mut b = b;
            let mut got = vec![0u8; expected];
            b.read_exact(&mut got).unwrap();
            got
        });
        wire.write(&tail).unwrap();
        wire.flush().unwrap();
        let got = reader.join().unwrap();
        assert!(got[..filled + filler.len()].iter().all(|&x| x == 0xee));
        assert_eq!(&got[filled + filler.len()..], &tail[..]);
    }

    /// A posting thread's writes never wait: with a peer that does not read,
    /// large, gathered and small frames are all taken (what the socket refuses is
    /// kept, copied behind the staged bytes), each write after the socket filled
    /// says so, and a writer that may wait then sends everything, in order, with
    /// the gathered frame's ICRC over the payload it copied.
    #[test]
    fn writes_without_waiting_keep_what_a_full_socket_refuses_in_order() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let wire = Arc::new(Wire::new(Stream::Unix(a)));
        let big: Vec<u8> = (0..(8 << 20) as u32).map(|i| (i % 251) as u8).collect();
        let mem = verbs::DmaBuf::new(1 << 20).unwrap();
        mem.write(|m| {
            for (i, x) in m.iter_mut().enumerate() {
                *x = (i % 241) as u8;
            }
        });
        let h = frame::Header::new(Op::Write, 1);
        let gathered = Gathered {
            head: frame::header_bytes(&h, 1 << 20),
            segs: vec![
                crate::mr::Segment {
                    buf: Arc::clone(&mem),
                    offset: 0,
                    len: 300_000,
                },
                crate::mr::Segment {
                    buf: Arc::clone(&mem),
                    offset: 300_000,
                    len: (1 << 20) - 300_000,
                },
            ],
        };
        let small = frame::encode(&frame::Header::new(Op::Send, 2), b"after");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        {
            let (wire, big, small) = (Arc::clone(&wire), big.clone(), small.clone());
            std::thread::spawn(move || {
                let mut w = wire.try_now().expect("no other writer");
                let r = (
                    w.write_wired(Wired::Bytes(&big)).unwrap(),
                    w.write_wired(Wired::Gathered(&gathered)).unwrap(),
                    w.write_wired(Wired::Bytes(&small)).unwrap(),
                    w.flush().unwrap(),
                );
                let _ = done_tx.send(r);
            });
        }
        let r = done_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a write without waiting waited for a peer that does not read");
        assert_eq!(
            r,
            (false, false, false, false),
            "each write reports the full socket"
        );

        let want = [
            &big[..],
            &frame::encode(&h, &mem.to_vec(0, 1 << 20).unwrap()),
            &small,
        ]
        .concat();
        let reader = std::thread::spawn(move || {
            let mut got = vec![0u8; want.len()];
            b.read_exact(&mut got).unwrap();
            assert!(
                got == want,
                "bytes on the wire differ from the frames in order"
            );
            b
        });
        wire.flush().unwrap();
        let _peer = reader.join().unwrap();
        // Nothing is left: a write now is staged, a flush now sends it.
        let mut w = wire.try_now().expect("no other writer");
        assert!(w.write_wired(Wired::Bytes(&small)).unwrap());
        assert!(w.flush().unwrap());
        drop(w);
        // A writer waiting on the socket holds the wire: a poster does not wait
        // for it.
        let held = wire.w.lock();
        assert!(wire.try_now().is_none());
        drop(held);
    }

    /// A writer blocked on a peer that stopped reading holds the wire lock; closing
    /// the connection must still finish and unblock that writer.
    #[test]
    fn shutdown_unblocks_a_writer_stuck_on_a_silent_peer() {
        stuck_writer_is_unblocked(false);
    }

    /// The same for a gathered frame, whose writer also leaves the buffer it
    /// sends from unlocked while it waits for the socket.
    #[test]
    fn shutdown_unblocks_a_gathered_writer_that_holds_no_buffer_lock() {
        stuck_writer_is_unblocked(true);
    }

    fn stuck_writer_is_unblocked(gathered: bool) {
        let (a, _silent_peer) = UnixStream::pair().unwrap();
        let wire = Arc::new(Wire::new(Stream::Unix(a)));
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let mem = verbs::DmaBuf::new(1 << 20).unwrap();
        let frame = Gathered {
            head: frame::header_bytes(&frame::Header::new(Op::Write, 0), 1 << 20),
            segs: vec![crate::mr::Segment {
                buf: Arc::clone(&mem),
                offset: 0,
                len: 1 << 20,
            }],
        };
        {
            let (wire, done_tx) = (Arc::clone(&wire), done_tx.clone());
            std::thread::spawn(move || {
                let chunk = vec![0u8; 1 << 20];
                let t0 = Instant::now();
                let mut r = Ok(());
                // The socket buffer fills within a few writes; bounded regardless.
                while r.is_ok() && t0.elapsed() < Duration::from_secs(30) {
                    r = if gathered {
                        wire.write_gathered(&frame)
                    } else {
                        wire.write(&chunk)
                    };
                }
                let _ = done_tx.send(("writer", r.is_err()));
            });
        }
        std::thread::sleep(Duration::from_millis(200));
        if gathered {
            // The host can still write the memory the blocked frame comes from.
            let mem = Arc::clone(&mem);
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                mem.fill(0, 16, 0xaa).unwrap();
                let _ = tx.send(());
            });
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the waiting writer holds the buffer's lock");
        }
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
