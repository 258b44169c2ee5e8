//! Pure per-task rules of the full feature phase, no sockets: the CmdSN window,
//! residual counts, Data-In segmentation and the R2T schedule of a write.

use iscsi::pdu::{LogoutReason, LogoutRequest, LogoutResponse, LogoutResponseCode, Pdu, Residual};

/// Serial-number comparison (RFC 1982, 32-bit): `a < b`.
pub fn sn_lt(a: u32, b: u32) -> bool {
    a != b && b.wrapping_sub(a) < 0x8000_0000
}

/// `a <= b` in serial-number arithmetic.
pub fn sn_le(a: u32, b: u32) -> bool {
    a == b || sn_lt(a, b)
}

/// Where a non-immediate command's CmdSN falls relative to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdSnCheck {
    /// CmdSN == ExpCmdSN: deliver now.
    InOrder,
    /// ExpCmdSN < CmdSN <= MaxCmdSN: hold until the gap is filled.
    Ahead,
    /// Outside [ExpCmdSN, MaxCmdSN]: silently ignore (RFC 7143 section 3.2.2.1).
    OutOfWindow,
}

/// The session's command window: ExpCmdSN and the queue depth that gives MaxCmdSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CmdWindow {
    /// The next CmdSN expected.
    pub exp_cmd_sn: u32,
    /// Commands the initiator may have queued (MaxCmdSN = ExpCmdSN + depth - 1).
    pub depth: u32,
}

impl CmdWindow {
    /// MaxCmdSN.
    pub fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.wrapping_add(self.depth.max(1) - 1)
    }

    /// Classify a non-immediate command's CmdSN.
    pub fn check(&self, cmd_sn: u32) -> CmdSnCheck {
        if cmd_sn == self.exp_cmd_sn {
            CmdSnCheck::InOrder
        } else if sn_lt(self.exp_cmd_sn, cmd_sn) && sn_le(cmd_sn, self.max_cmd_sn()) {
            CmdSnCheck::Ahead
        } else {
            CmdSnCheck::OutOfWindow
        }
    }

    /// True when an immediate command's CmdSN is acceptable (it must equal ExpCmdSN;
    /// tolerate anything inside the window, as Linux and tgt do).
    pub fn immediate_ok(&self, cmd_sn: u32) -> bool {
        self.check(cmd_sn) != CmdSnCheck::OutOfWindow
    }

    /// Accept the command with CmdSN == ExpCmdSN.
    pub fn advance(&mut self) {
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
    }
}

/// COMPARE AND WRITE carries its block count in one byte: a count of 0 with Data-Out
/// offered means the initiator asked for 256 or more blocks, beyond any MAXIMUM
/// COMPARE AND WRITE LENGTH; the transport refuses it (INVALID FIELD IN CDB, byte 13)
/// rather than running a no-op that would report success.
pub fn caw_count_wrapped(cdb: &[u8], write: bool, edtl: u32) -> bool {
    write && edtl > 0 && cdb.len() >= 16 && cdb[0] == 0x89 && cdb[13] == 0
}

/// ABORT TASK for a task the target does not hold (RFC 7143 section 11.6.1): when
/// RefCmdSN is inside the window [ExpCmdSN, MaxCmdSN] and before the TMF's CmdSN, the
/// command was never received and counts as aborted ("Function complete"); otherwise
/// (typically: it already completed) the answer is "Task does not exist".
pub fn abort_of_unreceived(window: &CmdWindow, ref_cmd_sn: u32, tmf_cmd_sn: u32) -> bool {
    sn_le(window.exp_cmd_sn, ref_cmd_sn)
        && sn_le(ref_cmd_sn, window.max_cmd_sn())
        && sn_lt(ref_cmd_sn, tmf_cmd_sn)
}

/// Residual for a transfer: `expected` is the initiator's Expected Data Transfer
/// Length, `actual` the bytes the command wants to move.
pub fn residual(expected: u32, actual: u64) -> Residual {
    let expected64 = u64::from(expected);
    if actual > expected64 {
        Residual::Overflow(u32::try_from(actual - expected64).unwrap_or(u32::MAX))
    } else if actual < expected64 {
        Residual::Underflow((expected64 - actual) as u32)
    } else {
        Residual::None
    }
}

/// One Data-In PDU of a read: where its data lies and its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInSegment {
    /// DataSN.
    pub data_sn: u32,
    /// Buffer Offset.
    pub offset: u32,
    /// Bytes in this PDU.
    pub len: u32,
    /// F bit: last PDU of a sequence (every MaxBurstLength bytes, and the last PDU).
    pub final_: bool,
    /// Last PDU of the whole transfer (carries the status when phase collapse applies).
    pub last: bool,
}

/// Cut `total` bytes of Data-In into PDUs of at most `max_segment` bytes (the
/// initiator's MaxRecvDataSegmentLength), with sequences of at most `max_burst` bytes.
pub fn data_in_segments(total: u32, max_segment: u32, max_burst: u32) -> Vec<DataInSegment> {
    let max_segment = max_segment.max(1);
    let max_burst = max_burst.max(max_segment);
    let mut out = Vec::with_capacity(total.div_ceil(max_segment) as usize);
    let mut offset = 0u32;
    let mut in_burst = 0u32;
    while offset < total {
        let len = max_segment.min(total - offset).min(max_burst - in_burst);
        in_burst += len;
        let last = offset + len == total;
        let final_ = last || in_burst == max_burst;
        out.push(DataInSegment {
            data_sn: out.len() as u32,
            offset,
            len,
            final_,
            last,
        });
        if in_burst == max_burst {
            in_burst = 0;
        }
        offset += len;
    }
    out
}

/// One R2T to send: the range the target solicits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct R2tRange {
    /// Buffer Offset.
    pub offset: u32,
    /// Desired Data Transfer Length (at most MaxBurstLength).
    pub len: u32,
}

/// The R2T schedule of one write: bytes `[solicit_from, total)` are solicited in
/// bursts of at most `max_burst`, with at most `max_outstanding` R2Ts in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2tSchedule {
    next: u32,
    total: u32,
    max_burst: u32,
    max_outstanding: u32,
    outstanding: u32,
    next_r2t_sn: u32,
}

impl R2tSchedule {
    /// Solicit `[solicit_from, total)`.
    pub fn new(solicit_from: u32, total: u32, max_burst: u32, max_outstanding: u32) -> Self {
        R2tSchedule {
            next: solicit_from.min(total),
            total,
            max_burst: max_burst.max(1),
            max_outstanding: max_outstanding.max(1),
            outstanding: 0,
            next_r2t_sn: 0,
        }
    }

    /// The R2Ts that may be sent now, each with its R2TSN.
    pub fn issue(&mut self) -> Vec<(u32, R2tRange)> {
        let mut out = Vec::new();
        while self.outstanding < self.max_outstanding && self.next < self.total {
            let len = self.max_burst.min(self.total - self.next);
            out.push((
                self.next_r2t_sn,
                R2tRange {
                    offset: self.next,
                    len,
                },
            ));
            self.next_r2t_sn = self.next_r2t_sn.wrapping_add(1);
            self.next += len;
            self.outstanding += 1;
        }
        out
    }

    /// One solicited burst was completed (Data-Out with F bit).
    pub fn burst_done(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
    }

    /// R2Ts sent whose burst has not completed.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// True once every byte was solicited.
    pub fn all_issued(&self) -> bool {
        self.next >= self.total
    }
}

/// Tracks which bytes of a Data-Out buffer arrived, for offset checks and completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOutBuffer {
    /// The bytes (length = bytes to receive).
    pub buf: Vec<u8>,
    received: u64,
    /// Ranges filled so far, sorted and merged, to refuse overlaps.
    ranges: Vec<(u32, u32)>,
}

/// A Data-Out PDU that cannot be placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataOutError {
    /// The data lies beyond the expected length.
    #[error("data at offset {offset} + {len} beyond the expected {expected} bytes")]
    OutOfRange {
        /// Buffer Offset.
        offset: u32,
        /// Data length.
        len: u32,
        /// Bytes expected.
        expected: u32,
    },
    /// The data overlaps bytes already received.
    #[error("data at offset {offset} + {len} overlaps data already received")]
    Overlap {
        /// Buffer Offset.
        offset: u32,
        /// Data length.
        len: u32,
    },
}

impl DataOutBuffer {
    /// A buffer for `len` bytes.
    pub fn new(len: u32) -> Self {
        DataOutBuffer {
            buf: vec![0; len as usize],
            received: 0,
            ranges: Vec::new(),
        }
    }

    /// Bytes expected in total.
    pub fn len(&self) -> u32 {
        self.buf.len() as u32
    }

    /// True when nothing is expected.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// True once every byte arrived.
    pub fn is_complete(&self) -> bool {
        self.received == self.buf.len() as u64
    }

    /// Place `data` at `offset`.
    pub fn place(&mut self, offset: u32, data: &[u8]) -> Result<(), DataOutError> {
        let len = data.len() as u32;
        let end = u64::from(offset) + data.len() as u64;
        if end > self.buf.len() as u64 {
            return Err(DataOutError::OutOfRange {
                offset,
                len,
                expected: self.len(),
            });
        }
        if len == 0 {
            return Ok(());
        }
        let end = end as u32;
        if self.ranges.iter().any(|&(s, e)| offset < e && s < end) {
            return Err(DataOutError::Overlap { offset, len });
        }
        self.buf[offset as usize..end as usize].copy_from_slice(data);
        self.received += u64::from(len);
        let pos = self.ranges.partition_point(|&(s, _)| s < offset);
        self.ranges.insert(pos, (offset, end));
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.ranges.len());
        for &(s, e) in &self.ranges {
            match merged.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => merged.push((s, e)),
            }
        }
        self.ranges = merged;
        Ok(())
    }
}

/// When the initiator expects to send fewer bytes than a WRITE or WRITE AND VERIFY
/// CDB describes (residual overflow), shorten the CDB's TRANSFER LENGTH to the whole
/// blocks the Expected Data Transfer Length covers, so that only data the initiator
/// actually sends reaches the medium. `out_len` is the wire length the CDB describes
/// (PI bytes included). Returns the new wire length, or `None` when the CDB is not a
/// block write or needs no change.
pub fn shorten_write(cdb: &mut [u8], out_len: u32, edtl: u32) -> Option<u32> {
    if edtl >= out_len {
        return None;
    }
    let (at, width) = match cdb.first()? {
        0x2a | 0x2e => (7, 2),
        0xaa | 0xae => (6, 4),
        0x8a | 0x8e => (10, 4),
        _ => return None,
    };
    let field = cdb.get(at..at + width)?;
    let blocks = field.iter().fold(0u32, |acc, b| acc << 8 | u32::from(*b));
    if blocks == 0 || !out_len.is_multiple_of(blocks) {
        return None;
    }
    let stride = out_len / blocks;
    let fit = edtl / stride;
    let bytes = fit.to_be_bytes();
    cdb[at..at + width].copy_from_slice(&bytes[4 - width..]);
    Some(fit * stride)
}

/// The Logout Response for `l` on connection `cid` (StatSN and the window are stamped
/// when it is sent): closing the session or this connection succeeds; there is no
/// connection recovery (ErrorRecoveryLevel 0).
pub fn logout_response(l: &LogoutRequest, cid: u16) -> (LogoutResponseCode, Pdu) {
    let response = match l.reason {
        LogoutReason::CloseSession => LogoutResponseCode::Success,
        LogoutReason::CloseConnection if l.cid == cid => LogoutResponseCode::Success,
        LogoutReason::CloseConnection => LogoutResponseCode::CidNotFound,
        LogoutReason::RemoveForRecovery => LogoutResponseCode::RecoveryNotSupported,
        _ => LogoutResponseCode::CleanupFailed,
    };
    let pdu = Pdu::new(LogoutResponse {
        response,
        itt: l.itt,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        time2wait: 0,
        time2retain: 0,
    });
    (response, pdu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_classifies_cmd_sn_with_wraparound() {
        let w = CmdWindow {
            exp_cmd_sn: u32::MAX - 1,
            depth: 4,
        };
        assert_eq!(w.max_cmd_sn(), 1);
        assert_eq!(w.check(u32::MAX - 1), CmdSnCheck::InOrder);
        assert_eq!(w.check(u32::MAX), CmdSnCheck::Ahead);
        assert_eq!(w.check(1), CmdSnCheck::Ahead);
        assert_eq!(w.check(2), CmdSnCheck::OutOfWindow);
        assert_eq!(w.check(u32::MAX - 2), CmdSnCheck::OutOfWindow);
        let mut w = w;
        w.advance();
        w.advance();
        assert_eq!(w.exp_cmd_sn, 0);
        assert_eq!(w.max_cmd_sn(), 3);
    }

    #[test]
    fn shorten_write_cuts_to_whole_blocks() {
        let mut w10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 2, 0];
        assert_eq!(shorten_write(&mut w10, 1024, 512), Some(512));
        assert_eq!(w10[8], 1);
        let mut w10 = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(shorten_write(&mut w10, 512, 200), Some(0));
        assert_eq!(w10[8], 0);
        // PI on the wire: 520-byte stride.
        let mut w16 = [0u8; 16];
        w16[0] = 0x8a;
        w16[13] = 4;
        assert_eq!(shorten_write(&mut w16, 2080, 1100), Some(1040));
        assert_eq!(w16[13], 2);
        // No overflow, or not a block write: untouched.
        let mut w12 = [0xaa, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0];
        assert_eq!(shorten_write(&mut w12, 1024, 1024), None);
        let mut caw = [0x89u8; 16];
        assert_eq!(shorten_write(&mut caw, 1024, 512), None);
        assert_eq!(caw, [0x89u8; 16]);
    }

    #[test]
    fn abort_of_completed_task_is_task_does_not_exist() {
        let w = CmdWindow {
            exp_cmd_sn: 10,
            depth: 8,
        };
        // Completed (CmdSN 9 < ExpCmdSN): does not exist.
        assert!(!abort_of_unreceived(&w, 9, 10));
        // A gap inside the window before the TMF: counted as received and aborted.
        assert!(abort_of_unreceived(&w, 11, 12));
        // Not before the TMF itself.
        assert!(!abort_of_unreceived(&w, 12, 12));
        // Beyond MaxCmdSN.
        assert!(!abort_of_unreceived(&w, 18, 20));
    }

    #[test]
    fn caw_with_wrapped_count() {
        let mut caw = [0u8; 16];
        caw[0] = 0x89;
        assert!(caw_count_wrapped(&caw, true, 262_144));
        assert!(
            !caw_count_wrapped(&caw, true, 0),
            "0 blocks and no data is a no-op"
        );
        caw[13] = 1;
        assert!(!caw_count_wrapped(&caw, true, 1024));
    }

    #[test]
    fn residual_flags() {
        assert_eq!(residual(4096, 4096), Residual::None);
        assert_eq!(residual(4096, 512), Residual::Underflow(3584));
        assert_eq!(residual(512, 4096), Residual::Overflow(3584));
        assert_eq!(residual(0, 36), Residual::Overflow(36));
    }

    #[test]
    fn data_in_segments_respect_segment_and_burst() {
        let s = data_in_segments(20_000, 8192, 262_144);
        let lens: Vec<u32> = s.iter().map(|x| x.len).collect();
        assert_eq!(lens, [8192, 8192, 3616]);
        assert_eq!(
            s.iter().map(|x| x.offset).collect::<Vec<_>>(),
            [0, 8192, 16384]
        );
        assert_eq!(s.iter().map(|x| x.data_sn).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(!s[0].final_ && !s[1].final_ && s[2].final_ && s[2].last);

        // Bursts of 10000 bytes with 4096-byte segments: F every burst.
        let s = data_in_segments(20_000, 4096, 10_000);
        let lens: Vec<u32> = s.iter().map(|x| x.len).collect();
        assert_eq!(lens, [4096, 4096, 1808, 4096, 4096, 1808]);
        assert_eq!(s.iter().filter(|x| x.final_).count(), 2);
        assert_eq!(s.iter().map(|x| u64::from(x.len)).sum::<u64>(), 20_000);
        assert!(data_in_segments(0, 8192, 8192).is_empty());
    }

    #[test]
    fn r2t_schedule_bursts_and_outstanding_limit() {
        // 1 MiB write, 64 KiB already sent unsolicited, 256 KiB bursts, 2 outstanding.
        let mut s = R2tSchedule::new(65_536, 1 << 20, 262_144, 2);
        let first = s.issue();
        assert_eq!(
            first,
            vec![
                (
                    0,
                    R2tRange {
                        offset: 65_536,
                        len: 262_144
                    }
                ),
                (
                    1,
                    R2tRange {
                        offset: 327_680,
                        len: 262_144
                    }
                ),
            ]
        );
        assert!(s.issue().is_empty());
        s.burst_done();
        assert_eq!(
            s.issue(),
            vec![(
                2,
                R2tRange {
                    offset: 589_824,
                    len: 262_144
                }
            )]
        );
        s.burst_done();
        assert_eq!(
            s.issue(),
            vec![(
                3,
                R2tRange {
                    offset: 851_968,
                    len: 196_608
                }
            )]
        );
        assert!(s.all_issued());
        s.burst_done();
        s.burst_done();
        assert_eq!(s.outstanding(), 0);
        assert!(s.issue().is_empty());
        // Everything came unsolicited: nothing to solicit.
        let mut s = R2tSchedule::new(4096, 4096, 262_144, 1);
        assert!(s.issue().is_empty());
        assert!(s.all_issued());
    }

    #[test]
    fn data_out_buffer_checks_offsets() {
        let mut b = DataOutBuffer::new(8192);
        b.place(4096, &[2; 4096]).unwrap();
        assert!(!b.is_complete());
        assert_eq!(
            b.place(4000, &[0; 200]),
            Err(DataOutError::Overlap {
                offset: 4000,
                len: 200
            })
        );
        assert_eq!(
            b.place(8000, &[0; 200]),
            Err(DataOutError::OutOfRange {
                offset: 8000,
                len: 200,
                expected: 8192
            })
        );
        b.place(0, &[1; 4096]).unwrap();
        assert!(b.is_complete());
        assert_eq!(b.buf[4095], 1);
        assert_eq!(b.buf[4096], 2);
    }
}
