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
        match self.total {
            None => BHS_LEN - self.buf.len(),
            Some(t) => t - self.buf.len(),
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
            if self.buf.len() == BHS_LEN && self.total.is_none() {
                self.header_complete();
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

    fn header_complete(&mut self) {
        let bhs = self.bhs();
        let lengths = frame_lengths(&bhs, self.cfg.digests);
        let limit = self.cfg.limits.max_recv_data_segment_length;
        if lengths.data as u64 > u64::from(limit) {
            self.ready = Some(Err(FrameError {
                error: DecodeError::DataSegmentTooLong {
                    len: lengths.data as u32,
                    limit,
                },
                bhs: Some(bhs),
            }));
            self.broken = true;
            self.buf.clear();
            return;
        }
        self.buf.reserve_exact(lengths.total - BHS_LEN);
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
