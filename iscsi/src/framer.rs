//! Streaming PDU framer for the TCP transport: bytes go in as they arrive, whole
//! digest-checked PDUs come out, and it always says how many more bytes it needs.
//!
//! Call order: `needed()` (how much to read) → `feed(bytes)` (returns how many it took,
//! never more than the current PDU) → `poll()` until `None` → repeat. After an error
//! whose [`Action`] is `CloseConnection`, `feed` takes nothing more.

use crate::codec::{Action, Codec, DecodeError};
use crate::pdu::{frame_lengths, Pdu, WireConfig, BHS_LEN};

/// A PDU that failed to decode, with its BHS when one was received (a Reject PDU
/// carries it back to the sender).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct FrameError {
    /// What was wrong.
    pub error: DecodeError,
    /// The offending header.
    pub bhs: Option<[u8; BHS_LEN]>,
}

impl FrameError {
    /// What the receiver must do.
    pub fn action(&self) -> Action {
        self.error.action()
    }
}

/// Accumulates one PDU at a time; never buffers more than the current PDU, whose data
/// segment is bounded by the negotiated MaxRecvDataSegmentLength.
#[derive(Debug)]
pub struct Framer {
    cfg: WireConfig,
    buf: Vec<u8>,
    /// End of BHS + AHS + HeaderDigest while the header digest is not yet checked.
    header_end: Option<usize>,
    total: Option<usize>,
    ready: Option<Result<Pdu, FrameError>>,
    broken: bool,
}

impl Framer {
    /// A framer for a connection with these digests and limits.
    pub fn new(cfg: WireConfig) -> Self {
        Framer {
            cfg,
            buf: Vec::with_capacity(BHS_LEN),
            header_end: None,
            total: None,
            ready: None,
            broken: false,
        }
    }

    /// Change digests/limits (after login). Applies from the next PDU on; call it only
    /// between PDUs (when [`Framer::is_idle`]).
    pub fn set_config(&mut self, cfg: WireConfig) {
        self.cfg = cfg;
    }

    /// The configuration in force.
    pub fn config(&self) -> WireConfig {
        self.cfg
    }

    /// True when no partial PDU is buffered.
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.ready.is_none()
    }

    /// True once an error required closing the connection.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Bytes still needed to complete the current PDU (or its BHS, while the lengths
    /// are not known yet). Zero while a PDU waits in [`Framer::poll`] or when broken.
    pub fn needed(&self) -> usize {
        if self.broken || self.ready.is_some() {
            return 0;
        }
        match (self.header_end, self.total) {
            (Some(h), _) => h - self.buf.len(),
            (None, Some(t)) => t - self.buf.len(),
            (None, None) => BHS_LEN - self.buf.len(),
        }
    }

    /// Take bytes from `input`, at most up to the end of the current PDU. Returns how
    /// many were taken; feed the rest after draining [`Framer::poll`].
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let mut used = 0;
        while used < input.len() {
            let want = self.needed();
            if want == 0 {
                break;
            }
            let n = want.min(input.len() - used);
            self.buf.extend_from_slice(&input[used..used + n]);
            used += n;
            if self.buf.len() == BHS_LEN && self.total.is_none() && self.header_end.is_none() {
                self.bhs_complete();
            }
            if self.header_end == Some(self.buf.len()) {
                self.header_digest_complete();
            }
            if let Some(t) = self.total {
                if self.buf.len() == t {
                    self.pdu_complete();
                }
            }
        }
        used
    }

    /// The next whole PDU, or the error that replaced it.
    pub fn poll(&mut self) -> Option<Result<Pdu, FrameError>> {
        self.ready.take()
    }

    fn bhs(&self) -> [u8; BHS_LEN] {
        let mut b = [0u8; BHS_LEN];
        b.copy_from_slice(&self.buf[..BHS_LEN]);
        b
    }

    fn fail(&mut self, error: DecodeError) {
        let bhs = self.bhs();
        self.ready = Some(Err(FrameError {
            error,
            bhs: Some(bhs),
        }));
        self.broken = true;
        self.buf.clear();
        self.header_end = None;
        self.total = None;
    }

    /// The BHS is in: with header digests, first collect the AHS and the digest and
    /// check them before trusting DataSegmentLength.
    fn bhs_complete(&mut self) {
        if self.cfg.digests.header {
            self.header_end = Some(BHS_LEN + usize::from(self.buf[4]) * 4 + 4);
        } else {
            self.header_complete();
        }
    }

    fn header_digest_complete(&mut self) {
        self.header_end = None;
        let n = self.buf.len();
        let computed = crate::digest::crc32c(&self.buf[..n - 4]);
        let received = crate::digest::digest_from_wire([
            self.buf[n - 4],
            self.buf[n - 3],
            self.buf[n - 2],
            self.buf[n - 1],
        ]);
        if computed != received {
            self.fail(DecodeError::HeaderDigest { computed, received });
            return;
        }
        self.header_complete();
    }

    fn header_complete(&mut self) {
        let bhs = self.bhs();
        let lengths = frame_lengths(&bhs, self.cfg.digests);
        let limit = self.cfg.limits.max_recv_data_segment_length;
        if lengths.data as u64 > u64::from(limit) {
            self.fail(DecodeError::DataSegmentTooLong {
                len: lengths.data as u32,
                limit,
            });
            return;
        }
        self.buf.reserve_exact(lengths.total - self.buf.len());
        self.total = Some(lengths.total);
    }

    fn pdu_complete(&mut self) {
        let result = Pdu::decode(&self.buf, &self.cfg).map_err(|error| FrameError {
            error,
            bhs: Some(self.bhs()),
        });
        if let Err(e) = &result {
            if e.action() == Action::CloseConnection {
                self.broken = true;
            }
        }
        self.ready = Some(result);
        self.buf.clear();
        self.total = None;
    }
}
