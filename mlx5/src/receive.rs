//! The receive path of a connected QP: reads each frame from the link socket,
//! checks it, and hands it to the responder or the completer. It runs on the QP's
//! rx thread, or, in poll mode ([`verbs::poll`]), on the consumer of the QP's
//! receive CQ while that consumer waits for completions: the consumer then sees
//! its completions without a thread hand-off, and the rx thread stands by until
//! no consumer has waited for [`TAKE_BACK`].
//!
//! A consumer may wait and still not read: its thread can be blocked elsewhere,
//! for instance writing a large frame to a peer whose own consumer is blocked the
//! same way. The standing-by rx thread therefore also reads whatever has been left
//! unread for [`TAKE_BACK`], so two HCAs writing to each other always progress
//! (the rx thread never blocks on a socket write).

use std::io::{self, BufReader};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use verbs::cm::DisconnectReason;
use verbs::poll::{PollSource, Progress};
use verbs::AccessFlags;

use crate::bulk;
use crate::frame::{self, FrameError, Header, Icrc, Op};
use crate::hca::{Cq, Hca, Qp};
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

/// The receive state of a connection: the socket's read side and the responder.
#[derive(Debug)]
struct RxEngine {
    hca: Arc<Hca>,
    qp: Arc<Qp>,
    stream: BufReader<Stream>,
    payload: Vec<u8>,
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
        self.stream.buffer().is_empty()
    }

    /// Sends the responder's coalesced ACK (before waiting for more input).
    fn flush(&mut self) {
        self.resp.flush(&self.qp, &self.tx);
    }

    /// Reads one frame, waiting for it if need be, and acts on it.
    fn step(&mut self) -> Result<(), Ended> {
        let (qp, hca) = (&self.qp, &self.hca);
        let read = read_frame(hca, qp, &self.resp, &mut self.stream, &mut self.payload);
        let (h, n, placed) = match read {
            Ok(r) => r,
            Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                // What was received before the end still completes.
                self.resp.flush(qp, &self.tx);
                qp.to_error(DisconnectReason::Remote);
                return Err(Ended);
            }
            Err(e) => {
                tracing::warn!(qpn = qp.qpn, error = %e, "transport error");
                self.resp.flush(qp, &self.tx);
                qp.to_error(DisconnectReason::Transport(e.to_string()));
                return Err(Ended);
            }
        };
        let tx = &self.tx;
        match h.op {
            Op::Write if placed => self.resp.placed_write(qp, tx, h.psn),
            Op::ReadResp if placed => crate::completer::read_placed(qp, h.psn, &self.req),
            Op::Send | Op::SendInv | Op::Write | Op::ReadReq => {
                self.resp.handle(hca, qp, &h, &mut self.payload[..n], tx)
            }
            Op::Ack | Op::Nak | Op::ReadResp => {
                crate::completer::handle(hca, qp, &h, &mut self.payload[..n], &self.req)
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
                stream: BufReader::with_capacity(STAGING, stream),
                payload: Vec::new(),
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

    /// Whether `at` (ns since `epoch`) is [`TAKE_BACK`] ago or longer.
    fn long_ago(&self, at: &AtomicU64) -> bool {
        self.older_than(at, TAKE_BACK)
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
        self.waiting.load(Ordering::Acquire) == 0 && self.long_ago(&self.last_left)
    }

    /// Whether input waits and the receive path has not run for [`TAKE_BACK`]
    /// although a consumer waits for it.
    fn neglected(&self) -> bool {
        self.long_ago(&self.last_read) && readable_now(&self.probe)
    }

    /// Notes that the receive path runs now.
    fn reading(&self) {
        self.last_read.store(self.since_epoch(), Ordering::Relaxed);
    }

    /// Lets consumers that found the engine taken look again (called after
    /// letting go of it).
    fn wake_consumers(&self) {
        self.contended.store(false, Ordering::SeqCst);
        self.recv_cq.wake();
    }

    /// The rx thread: reads and handles frames while no consumer waits for them,
    /// stands by while one does (reading only what it leaves unread), and returns
    /// when the connection ends.
    pub fn run(self: Arc<Self>) {
        let mut rescue = false;
        loop {
            {
                let mut e = self.engine.lock();
                loop {
                    // A rescue reads what was left, then stands by again.
                    if e.staged_empty() && !(rescue && readable_now(&self.probe)) {
                        e.flush();
                        self.reading();
                        if self.waiting.load(Ordering::Acquire) > 0 {
                            break;
                        }
                        rescue = false;
                    }
                    if e.step().is_err() {
                        self.ended.store(true, Ordering::Release);
                        drop(e);
                        self.wake_consumers();
                        return;
                    }
                }
            }
            self.wake_consumers();
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
            if e.staged_empty() && !readable_now(&self.probe) {
                e.flush();
                done = Progress::Drained;
                break;
            }
            if e.step().is_err() {
                self.ended.store(true, Ordering::Release);
                done = Progress::Ended;
                break;
            }
        }
        drop(e);
        if self.contended.swap(false, Ordering::SeqCst) {
            self.recv_cq.wake();
        }
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

/// Reads the next frame. A bulk RDMA WRITE the responder will execute, or a bulk
/// READ response, bound for plain memory goes straight there (returned `true`);
/// any other payload lands in `payload`.
fn read_frame(
    hca: &Hca,
    qp: &Qp,
    resp: &Responder,
    stream: &mut BufReader<Stream>,
    payload: &mut Vec<u8>,
) -> Result<(Header, usize, bool), FrameError> {
    let (h, n, hb) = frame::read_header(stream)?;
    let target = match h.op {
        _ if n < bulk::BULK_MIN => None,
        Op::Write if resp.executes(qp, h.psn) => {
            bulk::plain_range(hca, qp.pd, h.key, h.addr, n, AccessFlags::REMOTE_WRITE)
        }
        Op::ReadResp => crate::completer::read_sges(qp, h.psn)
            .and_then(|sges| bulk::plain_segments(hca, qp.pd, &sges, n, AccessFlags::LOCAL_WRITE)),
        _ => None,
    };
    match target {
        Some(segs) => {
            let mut crc = Icrc::over(&hb);
            bulk::recv_into(stream, &segs, n, &mut crc)?;
            frame::check_trailer(stream, crc.value())?;
            Ok((h, n, true))
        }
        None => {
            frame::read_payload_into(stream, &hb, n, payload)?;
            Ok((h, n, false))
        }
    }
}
