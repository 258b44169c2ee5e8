//! The receive path of a connected QP: reads each frame from the link socket,
//! checks it, and hands it to the responder or the completer. It runs on the QP's
//! rx thread, or, in poll mode ([`verbs::poll`]), on the consumer of the QP's
//! receive CQ while that consumer waits for completions: the consumer then sees
//! its completions without a thread hand-off, and the rx thread stands by until
//! no consumer has waited for [`TAKE_BACK`].
//!
//! Frames are read without ever waiting on the socket (`FrameReader`): what has
//! arrived is taken in, and a frame cut short is kept and resumed when the rest
//! comes. A consumer's runtime thread, which may serve other connections, is
//! therefore never held up by a peer that stops in the middle of a frame; the rx
//! thread waits for input in `poll`, without holding the receive path.
//!
//! A consumer may wait and still not read: its thread can be blocked elsewhere,
//! for instance writing a large frame to a peer whose own consumer is blocked the
//! same way. The standing-by rx thread therefore also reads whatever has been left
//! unread for [`TAKE_BACK`], so two HCAs writing to each other always progress
//! (the rx thread never blocks on a socket write).

use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use verbs::cm::DisconnectReason;
use verbs::poll::{PollSource, Progress};
use verbs::AccessFlags;

use crate::bulk;
use crate::frame::{self, FrameError, Header, Icrc, Op, HDR_LEN, TRAILER_LEN};
use crate::hca::{Cq, Hca, Qp};
use crate::mr::Segment;
use crate::requester::ReqEvent;
use crate::responder::Responder;
use crate::sync::{Mutex, Sender};
use crate::transport::{Replies, Stream, STAGING};

/// How long no consumer must have waited before the rx thread takes the receive
/// path back (a consumer busy elsewhere must not leave frames unread).
pub const TAKE_BACK: Duration = Duration::from_millis(1);

/// How often the standing-by rx thread looks whether it must take over while
/// input arrives.
const STANDBY_CHECK: Duration = Duration::from_millis(5);

/// How long the standing-by rx thread sleeps on a socket without input before it
/// looks at the connection's state anyway (the socket turns readable when the
/// connection ends, so this is only a bound).
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Frames one call of [`RxPort::progress`] handles at most before it lets its
/// consumer look at the completions.
const PROGRESS_BATCH: usize = 64;

/// The socket's read side, read without ever waiting: `WouldBlock` when nothing
/// has arrived. Waiting for more is the caller's business: the rx thread waits in
/// `poll` after letting go of the engine, a consumer on its runtime's event loop.
#[derive(Debug)]
struct NoWait(Stream);

impl Read for NoWait {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        self.0.recv_now(b)
    }
}

/// What has been received of the frame being read; a frame is read across as
/// many calls as its bytes take to arrive.
#[derive(Debug)]
enum Partial {
    /// The first `got` bytes of a header.
    Header { hb: [u8; HDR_LEN], got: usize },
    /// `got` of the `n` payload bytes, placed in plain memory (`placed`) or in
    /// the payload buffer.
    Payload {
        h: Header,
        n: usize,
        placed: Option<Vec<Segment>>,
        got: usize,
    },
    /// The first `got` bytes of the trailer.
    Trailer {
        h: Header,
        n: usize,
        placed: bool,
        tb: [u8; TRAILER_LEN],
        got: usize,
    },
}

impl Partial {
    fn start() -> Partial {
        Partial::Header {
            hb: [0; HDR_LEN],
            got: 0,
        }
    }
}

/// A whole frame, checked: its header, payload length, and whether the payload
/// went straight to plain memory (else it is in the payload buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Frame {
    h: Header,
    n: usize,
    placed: bool,
}

/// Reads frames from the socket without waiting, resuming where the last call
/// stopped: a peer that stops in the middle of a frame holds up its own
/// connection only, never the thread that reads.
#[derive(Debug)]
struct FrameReader {
    stream: BufReader<NoWait>,
    partial: Partial,
    /// The ICRC over what has arrived of the frame.
    crc: Icrc,
    /// Payloads not placed in plain memory (kept between frames).
    payload: Vec<u8>,
}

impl FrameReader {
    fn new(stream: Stream) -> FrameReader {
        FrameReader {
            stream: BufReader::with_capacity(STAGING, NoWait(stream)),
            partial: Partial::start(),
            crc: Icrc::over(&[]),
            payload: Vec::new(),
        }
    }

    /// Whether no received byte waits in the staging buffer.
    fn staged_empty(&self) -> bool {
        self.stream.buffer().is_empty()
    }

    /// Reads on with what has arrived; `Some` once a frame is complete and its
    /// ICRC checked, `None` when the socket has nothing more now (a partial frame
    /// is kept for the next call). `place` says, once the header is in, where
    /// the payload goes: plain memory segments, or `None` for the payload buffer.
    fn read_on(
        &mut self,
        place: impl FnOnce(&Header, usize) -> Option<Vec<Segment>>,
    ) -> Result<Option<Frame>, FrameError> {
        let mut place = Some(place);
        loop {
            match &mut self.partial {
                Partial::Header { hb, got } => {
                    if !read_some(&mut self.stream, hb, got)? {
                        return Ok(None);
                    }
                    let hb = *hb;
                    let (h, n) = frame::decode_header(&hb)?;
                    let placed = place.take().and_then(|p| p(&h, n));
                    if placed.is_none() && self.payload.len() < n {
                        self.payload.resize(n, 0);
                    }
                    self.crc = Icrc::over(&hb);
                    self.partial = Partial::Payload {
                        h,
                        n,
                        placed,
                        got: 0,
                    };
                }
                Partial::Payload { h, n, placed, got } => {
                    let crc = &mut self.crc;
                    let done = match placed {
                        Some(segs) => bulk::recv_some(&mut self.stream, segs, got, *n, crc)?,
                        None => {
                            let p = &mut self.payload[..*n];
                            let done = read_some(&mut self.stream, p, got)?;
                            if done {
                                crc.update(p);
                            }
                            done
                        }
                    };
                    if !done {
                        return Ok(None);
                    }
                    self.partial = Partial::Trailer {
                        h: *h,
                        n: *n,
                        placed: placed.is_some(),
                        tb: [0; TRAILER_LEN],
                        got: 0,
                    };
                }
                Partial::Trailer {
                    h,
                    n,
                    placed,
                    tb,
                    got,
                } => {
                    if !read_some(&mut self.stream, tb, got)? {
                        return Ok(None);
                    }
                    let (computed, carried) = (self.crc.value(), u32::from_be_bytes(*tb));
                    let f = Frame {
                        h: *h,
                        n: *n,
                        placed: *placed,
                    };
                    self.partial = Partial::start();
                    if computed != carried {
                        return Err(FrameError::BadCrc { computed, carried });
                    }
                    return Ok(Some(f));
                }
            }
        }
    }
}

/// Reads into `dst[*got..]` what has arrived; true once `dst` is full, false when
/// the socket has nothing more now. The end of the stream is an error: it never
/// comes inside a frame, and between frames it ends the connection.
fn read_some(r: &mut BufReader<NoWait>, dst: &mut [u8], got: &mut usize) -> io::Result<bool> {
    while *got < dst.len() {
        match r.read(&mut dst[*got..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => *got += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The receive state of a connection: the frame reader and the responder.
#[derive(Debug)]
struct RxEngine {
    hca: Arc<Hca>,
    qp: Arc<Qp>,
    reader: FrameReader,
    resp: Responder,
    tx: Replies,
    req: Sender<ReqEvent>,
}

/// The connection ended (the QP is in error).
#[derive(Debug)]
struct Ended;

impl RxEngine {
    /// Whether no received byte waits in the staging buffer.
    fn staged_empty(&self) -> bool {
        self.reader.staged_empty()
    }

    /// Sends the responder's coalesced ACK (before waiting for more input).
    fn flush(&mut self) {
        self.resp.flush(&self.qp, &self.tx);
    }

    /// Reads on without waiting and acts on the next frame once it is complete:
    /// true when a frame was handled, false when the socket has nothing more now.
    fn advance(&mut self) -> Result<bool, Ended> {
        let (hca, qp, resp) = (&self.hca, &self.qp, &self.resp);
        // A bulk RDMA WRITE the responder will execute, or a bulk READ response,
        // bound for plain memory goes straight there.
        let place = |h: &Header, n: usize| match h.op {
            _ if n < bulk::BULK_MIN => None,
            Op::Write if resp.executes(qp, h.psn) => {
                bulk::plain_range(hca, qp.pd, h.key, h.addr, n, AccessFlags::REMOTE_WRITE)
            }
            Op::ReadResp => crate::completer::read_sges(qp, h.psn).and_then(|sges| {
                bulk::plain_segments(hca, qp.pd, &sges, n, AccessFlags::LOCAL_WRITE)
            }),
            _ => None,
        };
        match self.reader.read_on(place) {
            Ok(Some(f)) => self.act(f).map(|()| true),
            Ok(None) => Ok(false),
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // What was received before the end still completes.
                self.resp.flush(&self.qp, &self.tx);
                self.qp.to_error(DisconnectReason::Remote);
                Err(Ended)
            }
            Err(e) => {
                tracing::warn!(qpn = self.qp.qpn, error = %e, "transport error");
                self.resp.flush(&self.qp, &self.tx);
                self.qp.to_error(DisconnectReason::Transport(e.to_string()));
                Err(Ended)
            }
        }
    }

    /// Hands a complete frame to the responder or the completer.
    fn act(&mut self, f: Frame) -> Result<(), Ended> {
        let (qp, hca, tx) = (&self.qp, &self.hca, &self.tx);
        let Frame { h, n, placed } = f;
        match h.op {
            Op::Write if placed => self.resp.placed_write(qp, tx, h.psn),
            Op::ReadResp if placed => crate::completer::read_placed(qp, h.psn, &self.req),
            Op::Send | Op::SendInv | Op::Write | Op::ReadReq => {
                self.resp
                    .handle(hca, qp, &h, &mut self.reader.payload[..n], tx)
            }
            Op::Ack | Op::Nak | Op::ReadResp => {
                crate::completer::handle(hca, qp, &h, &mut self.reader.payload[..n], &self.req)
            }
            Op::Dreq => {
                self.resp.flush(qp, tx);
                qp.to_error(DisconnectReason::Remote);
                return Err(Ended);
            }
            Op::CmReq | Op::CmRep | Op::CmRej => {
                self.resp.flush(qp, tx);
                qp.to_error(DisconnectReason::Transport(format!(
                    "unexpected {:?} on a connected QP",
                    h.op
                )));
                return Err(Ended);
            }
        }
        Ok(())
    }
}

/// The receive path of one connection, shared by its rx thread and the consumer
/// of its receive CQ. Whoever holds `engine` reads the socket; the rx thread
/// holds it unless a consumer waits (`waiting > 0`).
#[derive(Debug)]
pub struct RxPort {
    qpn: u32,
    /// Raised when a consumer must look again.
    recv_cq: Arc<Cq>,
    engine: Mutex<RxEngine>,
    /// A handle to the socket for readiness checks without the engine.
    probe: Stream,
    /// Consumers waiting on the socket now.
    waiting: AtomicUsize,
    /// When a consumer last stopped waiting, in ns since `epoch`.
    last_left: AtomicU64,
    /// When the receive path last ran, in ns since `epoch`.
    last_read: AtomicU64,
    epoch: Instant,
    ended: AtomicBool,
    /// A consumer found the engine taken and waits for the CQ's event: whoever
    /// lets go of the engine raises it.
    contended: AtomicBool,
}

impl RxPort {
    /// The receive path of `qp` over `stream` (the socket's read side).
    pub fn new(
        hca: Arc<Hca>,
        qp: Arc<Qp>,
        stream: Stream,
        tx: Replies,
        req: Sender<ReqEvent>,
    ) -> io::Result<RxPort> {
        let probe = stream.try_clone()?;
        Ok(RxPort {
            qpn: qp.qpn,
            recv_cq: Arc::clone(&qp.recv_cq),
            engine: Mutex::new(RxEngine {
                hca,
                qp,
                reader: FrameReader::new(stream),
                resp: Responder::new(),
                tx,
                req,
            }),
            probe,
            waiting: AtomicUsize::new(0),
            last_left: AtomicU64::new(0),
            last_read: AtomicU64::new(0),
            epoch: Instant::now(),
            ended: AtomicBool::new(false),
            contended: AtomicBool::new(false),
        })
    }

    fn since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether `at` (ns since `epoch`) is `d` ago or longer.
    fn older_than(&self, at: &AtomicU64, d: Duration) -> bool {
        self.since_epoch()
            .saturating_sub(at.load(Ordering::Relaxed))
            >= u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether the receive path has not run for [`STANDBY_CHECK`]: the connection
    /// is idle, or its consumer neglects it.
    fn quiet(&self) -> bool {
        self.older_than(&self.last_read, STANDBY_CHECK)
    }

    /// Whether no consumer has waited on the socket for [`TAKE_BACK`].
    fn unattended(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0 && self.older_than(&self.last_left, TAKE_BACK)
    }

    /// Whether input waits and the receive path has not run for [`TAKE_BACK`]
    /// although a consumer waits for it.
    fn neglected(&self) -> bool {
        self.older_than(&self.last_read, TAKE_BACK) && readable_now(&self.probe)
    }

    /// Notes that the receive path runs now.
    fn reading(&self) {
        self.last_read.store(self.since_epoch(), Ordering::Relaxed);
    }

    /// Lets go of the engine; a consumer that found it taken (and waits for the
    /// CQ's event) looks again.
    fn let_go(&self, e: MutexGuard<'_, RxEngine>) {
        drop(e);
        if self.contended.swap(false, Ordering::SeqCst) {
            self.recv_cq.wake();
        }
    }

    /// Takes the engine and handles what has arrived, until the socket has
    /// nothing more now or (unless `rescue`: the waiting consumer is not reading)
    /// a consumer waits to read on and nothing is staged; then sends the
    /// coalesced ACK and lets go.
    fn drain(&self, rescue: bool) -> Result<(), Ended> {
        let mut e = self.engine.lock();
        self.reading();
        let r = loop {
            match e.advance() {
                Ok(true)
                    if !rescue && e.staged_empty() && self.waiting.load(Ordering::Acquire) > 0 =>
                {
                    e.flush();
                    break Ok(());
                }
                Ok(true) => {}
                Ok(false) => {
                    e.flush();
                    break Ok(());
                }
                Err(Ended) => break Err(Ended),
            }
        };
        self.let_go(e);
        r
    }

    /// The rx thread: reads and handles frames while no consumer waits for them,
    /// stands by while one does (reading only what it leaves unread), and returns
    /// when the connection ends. It never holds the engine while it waits, so a
    /// consumer that starts waiting takes the receive path over at once.
    pub fn run(self: Arc<Self>) {
        let mut rescue = false;
        loop {
            loop {
                if self.drain(rescue).is_err() {
                    self.ended.store(true, Ordering::Release);
                    self.recv_cq.wake();
                    return;
                }
                if self.waiting.load(Ordering::Acquire) > 0 {
                    break;
                }
                rescue = false;
                wait_readable(&self.probe, IDLE_CHECK);
                if self.ended.load(Ordering::Acquire) {
                    return;
                }
            }
            loop {
                // On a quiet connection nothing needs this thread until input
                // arrives (or the connection ends: both make the socket readable),
                // so an idle connection costs no wake-ups. On a busy one it looks
                // once per STANDBY_CHECK without waking for every frame.
                if self.quiet() {
                    let input = wait_readable(&self.probe, IDLE_CHECK);
                    if self.ended.load(Ordering::Acquire) {
                        return;
                    }
                    if !input {
                        continue;
                    }
                    if self.unattended() {
                        rescue = false;
                        break;
                    }
                }
                std::thread::park_timeout(STANDBY_CHECK);
                if self.ended.load(Ordering::Acquire) {
                    return;
                }
                if self.unattended() {
                    rescue = false;
                    break;
                }
                if self.neglected() {
                    tracing::trace!(
                        qpn = self.qpn,
                        "reading input a waiting consumer left unread"
                    );
                    rescue = true;
                    break;
                }
            }
        }
    }
}

/// Waits until `s` has input (or an end or error to report), for `limit` at most;
/// false when the time ran out.
fn wait_readable(s: &Stream, limit: Duration) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(s, PollFlags::IN)];
    let limit = Timespec {
        tv_sec: limit.as_secs().try_into().unwrap_or(i64::MAX),
        tv_nsec: limit.subsec_nanos().into(),
    };
    // An interrupted or failed wait counts as input: the caller looks again.
    !matches!(poll(&mut fds, Some(&limit)), Ok(0))
}

/// Whether `s` has input (or an end or error to report) right now.
fn readable_now(s: &Stream) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(s, PollFlags::IN)];
    matches!(poll(&mut fds, Some(&rustix::event::Timespec::default())), Ok(n) if n > 0)
}

impl PollSource for RxPort {
    fn fd(&self) -> BorrowedFd<'_> {
        self.probe.as_fd()
    }

    fn progress(&self) -> Progress {
        if self.ended.load(Ordering::Acquire) {
            return Progress::Ended;
        }
        let mut e = match self.engine.try_lock() {
            Some(e) => e,
            None => {
                // Flag it before trying again: a holder that lets go after this
                // second try sees the flag and raises the CQ's event.
                self.contended.store(true, Ordering::SeqCst);
                match self.engine.try_lock() {
                    Some(e) => e,
                    None => return Progress::Busy,
                }
            }
        };
        self.reading();
        let mut done = Progress::More;
        for _ in 0..PROGRESS_BATCH {
            match e.advance() {
                Ok(true) => {}
                Ok(false) => {
                    // Everything that has arrived is handled; a partial frame
                    // waits in the reader for the rest.
                    e.flush();
                    done = Progress::Drained;
                    break;
                }
                Err(Ended) => {
                    self.ended.store(true, Ordering::Release);
                    done = Progress::Ended;
                    break;
                }
            }
        }
        self.let_go(e);
        done
    }

    fn enter(&self) {
        self.waiting.fetch_add(1, Ordering::AcqRel);
    }

    fn leave(&self) {
        self.last_left.store(self.since_epoch(), Ordering::Relaxed);
        self.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;

    use verbs::DmaBuf;

    use super::*;

    fn header(op: Op, psn: u32, len: usize) -> Header {
        Header {
            op,
            psn,
            qpn: 7,
            key: 0x1234,
            addr: 0x10_0000,
            len: len as u32,
        }
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
            .collect()
    }

    /// Runs `f` on its own thread and fails if it does not finish in time: a
    /// reader that waited for the rest of a frame would hang there.
    fn bounded(f: impl FnOnce() + Send + 'static) {
        let (done_tx, done_rx) = mpsc::channel();
        let t = std::thread::spawn(move || {
            f();
            let _ = done_tx.send(());
        });
        match done_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(()) => t.join().unwrap(),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The body panicked: report its panic.
                if let Err(p) = t.join() {
                    std::panic::resume_unwind(p);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("the frame reader waited"),
        }
    }

    fn pair() -> (UnixStream, FrameReader) {
        let (w, r) = UnixStream::pair().unwrap();
        (w, FrameReader::new(Stream::Unix(r)))
    }

    /// A frame arriving a few bytes at a time (header, payload and trailer each
    /// split) is read across as many calls, none of which waits: `None` until the
    /// last byte, then the frame, checked; the next frame starts afresh.
    #[test]
    fn a_frame_arriving_in_pieces_is_read_without_waiting() {
        bounded(|| {
            for n in [0usize, 5, 4096, 40 << 10] {
                let (mut w, mut r) = pair();
                let h = header(Op::Send, 3, n);
                let payload = pattern(n, n as u8);
                let f = frame::encode(&h, &payload);
                let cuts = [1, 7, HDR_LEN, HDR_LEN + n / 3, f.len() - 3, f.len() - 1];
                let mut from = 0;
                for &cut in cuts.iter().filter(|&&c| c > 0 && c < f.len()) {
                    if cut <= from {
                        continue;
                    }
                    w.write_all(&f[from..cut]).unwrap();
                    from = cut;
                    assert_eq!(r.read_on(|_, _| None).unwrap(), None, "n={n} at {cut}");
                }
                w.write_all(&f[from..]).unwrap();
                let got = r.read_on(|_, _| None).unwrap().expect("the whole frame");
                assert_eq!(
                    got,
                    Frame {
                        h,
                        n,
                        placed: false
                    }
                );
                assert_eq!(&r.payload[..n], &payload[..], "n={n}");
                // Nothing more: no frame, and no wait.
                assert_eq!(r.read_on(|_, _| None).unwrap(), None);
                // The next frame reads whole.
                let h2 = header(Op::Ack, 4, 0);
                w.write_all(&frame::encode(&h2, &[])).unwrap();
                assert_eq!(r.read_on(|_, _| None).unwrap().map(|f| f.h), Some(h2));
            }
        });
    }

    /// A bulk payload placed in plain memory as it arrives: `place` is asked once,
    /// the bytes land in the segments (across a segment boundary) piece by piece,
    /// and the ICRC over them is checked at the end.
    #[test]
    fn a_placed_payload_lands_piece_by_piece() {
        bounded(|| {
            let n = 48 << 10;
            let (mut w, mut r) = pair();
            let a = DmaBuf::new(64 << 10).unwrap();
            let b = DmaBuf::new(64 << 10).unwrap();
            let segs = vec![
                Segment {
                    buf: Arc::clone(&a),
                    offset: 100,
                    len: 20_000,
                },
                Segment {
                    buf: Arc::clone(&b),
                    offset: 8,
                    len: n,
                },
            ];
            let h = header(Op::Write, 9, n);
            let payload = pattern(n, 3);
            let f = frame::encode(&h, &payload);
            let mut asked = 0;
            for chunk in f.chunks(9_999) {
                w.write_all(chunk).unwrap();
                let got = r
                    .read_on(|hh, len| {
                        asked += 1;
                        assert_eq!((*hh, len), (h, n));
                        Some(segs.clone())
                    })
                    .unwrap();
                if let Some(got) = got {
                    assert_eq!(got, Frame { h, n, placed: true });
                }
            }
            assert_eq!(asked, 1, "the placement is decided once, at the header");
            assert_eq!(a.to_vec(100, 20_000).unwrap(), payload[..20_000]);
            assert_eq!(b.to_vec(8, n - 20_000).unwrap(), payload[20_000..]);
        });
    }

    /// Several small frames in one write come out one per call; a frame whose ICRC
    /// does not match is refused once it is complete; the end of the stream in
    /// the middle of a frame is an error, not a wait.
    #[test]
    fn staged_frames_bad_icrc_and_an_early_end() {
        bounded(|| {
            let (mut w, mut r) = pair();
            let frames: Vec<Vec<u8>> = (0..5)
                .map(|i| frame::encode(&header(Op::Send, i, 10), &pattern(10, i as u8)))
                .collect();
            w.write_all(&frames.concat()).unwrap();
            for i in 0..5 {
                let f = r.read_on(|_, _| None).unwrap().expect("a staged frame");
                assert_eq!(f.h.psn, i);
                assert_eq!(&r.payload[..10], &pattern(10, i as u8)[..]);
            }
            assert_eq!(r.read_on(|_, _| None).unwrap(), None);

            let mut bad = frame::encode(&header(Op::Send, 6, 100), &pattern(100, 1));
            bad[HDR_LEN + 50] ^= 0x10;
            w.write_all(&bad).unwrap();
            assert!(matches!(
                r.read_on(|_, _| None),
                Err(FrameError::BadCrc { .. })
            ));

            let (mut w, mut r) = pair();
            let f = frame::encode(&header(Op::Send, 1, 100), &pattern(100, 2));
            w.write_all(&f[..HDR_LEN + 10]).unwrap();
            assert_eq!(r.read_on(|_, _| None).unwrap(), None);
            drop(w);
            match r.read_on(|_, _| None) {
                Err(FrameError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
                other => panic!("an end inside a frame gave {other:?}"),
            }
        });
    }
}
