//! Data movement of one SCSI command over iSCSI/TCP, as pure functions and a tracker:
//! how read data splits into Data-In PDUs and sequences, how write data splits into
//! Data-Out PDUs, and the target's bookkeeping of R2Ts and received Data-Out
//! ([`WriteTracker`]). Over iSER the same plan becomes RDMA operations (see `iser`).
//!
//! Target write call order: `WriteTracker::new` (after the SCSI Command, with the
//! immediate data length) → `on_data_out` for every Data-Out → `next_r2t` with a fresh TTT while
//! `can_solicit` (false while MaxOutstandingR2T R2Ts are open or nothing is left) →
//! `is_complete`. The tracker requires DataPDUInOrder=Yes and
//! DataSequenceInOrder=Yes (a target keeping the default Yes always gets that, as both
//! keys are OR).

use std::collections::VecDeque;

use crate::codec::Action;
use crate::pdu::{DataIn, DataOut, R2t, RejectReason, RESERVED_TAG};
use crate::seq::SnCounter;

/// One data PDU to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataSegment {
    /// Buffer Offset of the first byte.
    pub buffer_offset: u32,
    /// Bytes in the data segment.
    pub length: u32,
    /// DataSN.
    pub data_sn: u32,
    /// F bit: last PDU of its sequence.
    pub final_: bool,
}

/// Data-In PDUs for `len` bytes of read data starting at `offset`: each at most
/// `max_segment` (the initiator's MaxRecvDataSegmentLength), F set at the end of every
/// MaxBurstLength sequence and on the last PDU; DataSN counts from `first_data_sn`.
pub fn data_in_segments(
    offset: u32,
    len: u32,
    max_segment: u32,
    max_burst: u32,
    first_data_sn: u32,
) -> impl Iterator<Item = DataSegment> {
    let seg = max_segment.max(1);
    let burst = max_burst.max(1);
    let end = offset.saturating_add(len);
    let (mut off, mut in_burst, mut sn) = (offset, 0u32, first_data_sn);
    std::iter::from_fn(move || {
        if off >= end {
            return None;
        }
        let length = seg.min(end - off).min(burst - in_burst);
        in_burst += length;
        let final_ = off + length == end || in_burst == burst;
        let s = DataSegment {
            buffer_offset: off,
            length,
            data_sn: sn,
            final_,
        };
        off += length;
        sn = sn.wrapping_add(1);
        if in_burst == burst {
            in_burst = 0;
        }
        Some(s)
    })
}

/// Data-Out PDUs of one sequence (the unsolicited burst, or the answer to one R2T):
/// at most `max_segment` each (the target's MaxRecvDataSegmentLength), DataSN from 0,
/// F on the last.
pub fn data_out_segments(
    offset: u32,
    len: u32,
    max_segment: u32,
) -> impl Iterator<Item = DataSegment> {
    let seg = max_segment.max(1);
    let end = offset.saturating_add(len);
    let (mut off, mut sn) = (offset, 0u32);
    std::iter::from_fn(move || {
        if off >= end {
            return None;
        }
        let length = seg.min(end - off);
        let s = DataSegment {
            buffer_offset: off,
            length,
            data_sn: sn,
            final_: off + length == end,
        };
        off += length;
        sn = sn.wrapping_add(1);
        Some(s)
    })
}

/// The Data-Out header for a segment (`ttt` 0xffffffff for unsolicited data).
pub fn data_out_header(
    seg: &DataSegment,
    lun: u64,
    itt: u32,
    ttt: u32,
    exp_stat_sn: u32,
) -> DataOut {
    DataOut {
        final_: seg.final_,
        lun,
        itt,
        ttt,
        exp_stat_sn,
        data_sn: seg.data_sn,
        buffer_offset: seg.buffer_offset,
    }
}

/// The Data-In header for a segment (without status; set `status` and `residual` on
/// the last one to collapse the SCSI Response into it).
pub fn data_in_header(
    seg: &DataSegment,
    lun: u64,
    itt: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
) -> DataIn {
    DataIn {
        final_: seg.final_,
        lun,
        itt,
        ttt: RESERVED_TAG,
        exp_cmd_sn,
        max_cmd_sn,
        data_sn: seg.data_sn,
        buffer_offset: seg.buffer_offset,
        ..DataIn::default()
    }
}

/// A Data-Out the target cannot accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    /// The TTT matches no open R2T (and is not 0xffffffff for unsolicited data).
    #[error("Data-Out with unknown TTT {0:#010x}")]
    UnknownTtt(u32),
    /// Unsolicited Data-Out when none was expected, or beyond FirstBurstLength.
    #[error("unexpected unsolicited data")]
    UnexpectedUnsolicited,
    /// Buffer Offset out of order.
    #[error("Data-Out at offset {got}, expected {expected}")]
    BadOffset {
        /// The next offset of the sequence.
        expected: u32,
        /// Buffer Offset received.
        got: u32,
    },
    /// DataSN out of order.
    #[error("Data-Out with DataSN {got}, expected {expected}")]
    BadDataSn {
        /// The next DataSN of the sequence.
        expected: u32,
        /// DataSN received.
        got: u32,
    },
    /// More data than the sequence allows.
    #[error("Data-Out runs past the end of its sequence")]
    Overrun,
    /// F set before the end of the sequence, or missing at its end.
    #[error("F bit does not match the end of the sequence")]
    FinalMismatch,
}

impl TransferError {
    /// The Reject reason for the offending Data-Out.
    pub fn action(&self) -> Action {
        Action::Reject(RejectReason::ProtocolError)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sequence {
    ttt: u32,
    next_offset: u32,
    end: u32,
    next_data_sn: u32,
}

/// An R2T to send: the caller fills LUN, ITT and the StatSN fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct R2tGrant {
    /// Target Transfer Tag the Data-Out PDUs will echo.
    pub ttt: u32,
    /// R2TSN.
    pub r2t_sn: u32,
    /// Buffer Offset.
    pub buffer_offset: u32,
    /// Desired Data Transfer Length.
    pub length: u32,
}

impl R2tGrant {
    /// The R2T header.
    pub fn header(
        &self,
        lun: u64,
        itt: u32,
        stat_sn: u32,
        exp_cmd_sn: u32,
        max_cmd_sn: u32,
    ) -> R2t {
        R2t {
            lun,
            itt,
            ttt: self.ttt,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            r2t_sn: self.r2t_sn,
            buffer_offset: self.buffer_offset,
            desired_data_transfer_length: self.length,
        }
    }
}

/// What a Data-Out did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOutProgress {
    /// The sequence (R2T or the unsolicited burst) is now complete; its TTT is free.
    pub sequence_done: bool,
    /// Every byte of the command's Expected Data Transfer Length has arrived.
    pub all_received: bool,
}

/// The target's view of one write command's data.
#[derive(Debug, Clone)]
pub struct WriteTracker {
    edtl: u32,
    received: u32,
    next_solicit: u32,
    unsolicited: Option<Sequence>,
    open: VecDeque<Sequence>,
    r2t_sn: SnCounter,
    max_burst: u32,
    max_outstanding: usize,
}

impl WriteTracker {
    /// After a SCSI Command with `immediate` bytes of immediate data, when
    /// `unsolicited` more bytes will follow as unsolicited Data-Out (0 with
    /// InitialR2T=Yes; else min(FirstBurstLength, EDTL) - immediate, or less when the
    /// command's F bit is set).
    pub fn new(
        edtl: u32,
        immediate: u32,
        unsolicited: u32,
        max_burst: u32,
        max_outstanding_r2t: u32,
    ) -> Self {
        let immediate = immediate.min(edtl);
        let unsolicited = unsolicited.min(edtl - immediate);
        let seq = (unsolicited > 0).then_some(Sequence {
            ttt: RESERVED_TAG,
            next_offset: immediate,
            end: immediate + unsolicited,
            next_data_sn: 0,
        });
        WriteTracker {
            edtl,
            received: immediate,
            next_solicit: immediate + unsolicited,
            unsolicited: seq,
            open: VecDeque::new(),
            r2t_sn: SnCounter::new(0),
            max_burst: max_burst.max(1),
            max_outstanding: max_outstanding_r2t.max(1) as usize,
        }
    }

    /// True once all data arrived.
    pub fn is_complete(&self) -> bool {
        self.received >= self.edtl
    }

    /// Bytes received so far (immediate data included).
    pub fn received(&self) -> u32 {
        self.received
    }

    /// True when an R2T may go out now: data remains unsolicited and fewer than
    /// MaxOutstandingR2T are open. Check it before allocating a TTT.
    pub fn can_solicit(&self) -> bool {
        self.next_solicit < self.edtl && self.open.len() < self.max_outstanding
    }

    /// The next R2T to send with tag `ttt`, if [`WriteTracker::can_solicit`].
    pub fn next_r2t(&mut self, ttt: u32) -> Option<R2tGrant> {
        if !self.can_solicit() || ttt == RESERVED_TAG {
            return None;
        }
        let length = self.max_burst.min(self.edtl - self.next_solicit);
        let grant = R2tGrant {
            ttt,
            r2t_sn: self.r2t_sn.assign(),
            buffer_offset: self.next_solicit,
            length,
        };
        self.open.push_back(Sequence {
            ttt,
            next_offset: self.next_solicit,
            end: self.next_solicit + length,
            next_data_sn: 0,
        });
        self.next_solicit += length;
        Some(grant)
    }

    /// Account a received Data-Out carrying `data_len` bytes.
    pub fn on_data_out(
        &mut self,
        h: &DataOut,
        data_len: u32,
    ) -> Result<DataOutProgress, TransferError> {
        let (seq, idx) = if h.ttt == RESERVED_TAG {
            (
                self.unsolicited
                    .as_mut()
                    .ok_or(TransferError::UnexpectedUnsolicited)?,
                None,
            )
        } else {
            let i = self
                .open
                .iter()
                .position(|s| s.ttt == h.ttt)
                .ok_or(TransferError::UnknownTtt(h.ttt))?;
            (&mut self.open[i], Some(i))
        };
        if h.buffer_offset != seq.next_offset {
            return Err(TransferError::BadOffset {
                expected: seq.next_offset,
                got: h.buffer_offset,
            });
        }
        if h.data_sn != seq.next_data_sn {
            return Err(TransferError::BadDataSn {
                expected: seq.next_data_sn,
                got: h.data_sn,
            });
        }
        let end = h
            .buffer_offset
            .checked_add(data_len)
            .ok_or(TransferError::Overrun)?;
        if end > seq.end {
            return Err(TransferError::Overrun);
        }
        let done = end == seq.end;
        if h.final_ != done {
            return Err(TransferError::FinalMismatch);
        }
        seq.next_offset = end;
        seq.next_data_sn = seq.next_data_sn.wrapping_add(1);
        self.received += data_len;
        if done {
            match idx {
                None => self.unsolicited = None,
                Some(i) => {
                    self.open.remove(i);
                }
            }
        }
        Ok(DataOutProgress {
            sequence_done: done,
            all_received: self.is_complete(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_in_sequences_follow_max_burst() {
        let segs: Vec<_> = data_in_segments(0, 20_000, 8192, 16_384, 0).collect();
        assert_eq!(
            segs,
            vec![
                DataSegment {
                    buffer_offset: 0,
                    length: 8192,
                    data_sn: 0,
                    final_: false
                },
                DataSegment {
                    buffer_offset: 8192,
                    length: 8192,
                    data_sn: 1,
                    final_: true
                },
                DataSegment {
                    buffer_offset: 16_384,
                    length: 3616,
                    data_sn: 2,
                    final_: true
                },
            ]
        );
        // A burst that is not a multiple of the segment size.
        let segs: Vec<_> = data_in_segments(0, 10_000, 4096, 6000, 5)
            .map(|s| (s.length, s.final_, s.data_sn))
            .collect();
        assert_eq!(
            segs,
            vec![(4096, false, 5), (1904, true, 6), (4000, true, 7)]
        );
        assert_eq!(data_in_segments(0, 0, 8192, 8192, 0).count(), 0);
    }

    #[test]
    fn write_with_immediate_unsolicited_and_r2ts() {
        let mut t = WriteTracker::new(100_000, 8192, 57_344, 20_000, 2);
        let unsolicited: Vec<_> = data_out_segments(8192, 57_344, 16_384).collect();
        assert_eq!(unsolicited.len(), 4);
        // Solicit while unsolicited data is still arriving.
        let g1 = t.next_r2t(0x10).unwrap();
        let g2 = t.next_r2t(0x11).unwrap();
        assert_eq!(t.next_r2t(0x12), None, "MaxOutstandingR2T reached");
        assert_eq!(
            (g1.buffer_offset, g1.length, g1.r2t_sn),
            (65_536, 20_000, 0)
        );
        assert_eq!(
            (g2.buffer_offset, g2.length, g2.r2t_sn),
            (85_536, 14_464, 1)
        );
        for s in &unsolicited {
            let p = t
                .on_data_out(&data_out_header(s, 0, 1, RESERVED_TAG, 0), s.length)
                .unwrap();
            assert_eq!(p.sequence_done, s.final_);
        }
        assert_eq!(
            t.on_data_out(&data_out_header(&unsolicited[0], 0, 1, RESERVED_TAG, 0), 1),
            Err(TransferError::UnexpectedUnsolicited)
        );
        for g in [g2, g1] {
            let segs: Vec<_> = data_out_segments(g.buffer_offset, g.length, 8192).collect();
            // Out of order DataSN is refused.
            let mut bad = data_out_header(&segs[1], 0, 1, g.ttt, 0);
            bad.buffer_offset = segs[0].buffer_offset;
            assert!(matches!(
                t.on_data_out(&bad, segs[1].length),
                Err(TransferError::BadDataSn { .. })
            ));
            for s in &segs {
                t.on_data_out(&data_out_header(s, 0, 1, g.ttt, 0), s.length)
                    .unwrap();
            }
        }
        assert!(t.is_complete());
        assert_eq!(t.next_r2t(0x13), None);
        assert_eq!(
            t.on_data_out(
                &DataOut {
                    ttt: 0x10,
                    ..DataOut::default()
                },
                1
            ),
            Err(TransferError::UnknownTtt(0x10))
        );
    }

    #[test]
    fn data_out_errors() {
        let mut t = WriteTracker::new(4096, 0, 0, 65_536, 1);
        let g = t.next_r2t(7).unwrap();
        let mut h = DataOut {
            ttt: 7,
            buffer_offset: 512,
            ..DataOut::default()
        };
        assert_eq!(
            t.on_data_out(&h, 512),
            Err(TransferError::BadOffset {
                expected: 0,
                got: 512
            })
        );
        h.buffer_offset = 0;
        assert_eq!(t.on_data_out(&h, 8192), Err(TransferError::Overrun));
        h.final_ = true;
        assert_eq!(t.on_data_out(&h, 512), Err(TransferError::FinalMismatch));
        h.final_ = false;
        assert_eq!(t.on_data_out(&h, 4096), Err(TransferError::FinalMismatch));
        h.final_ = true;
        assert!(t.on_data_out(&h, g.length).unwrap().all_received);
        assert_eq!(
            TransferError::Overrun.action(),
            Action::Reject(RejectReason::ProtocolError)
        );
    }
}
