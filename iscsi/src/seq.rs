//! Session sequencing: RFC 1982 serial-number arithmetic on 32-bit sequence numbers,
//! the target's CmdSN window ([`CmdWindow`]), the initiator's "may I send" check
//! ([`CmdSequencer`]), StatSN/ExpStatSN, DataSN and R2TSN tracking, ITT/TTT allocation,
//! and the split of a write into unsolicited and solicited bursts.

use std::collections::BTreeSet;

use crate::pdu::RESERVED_TAG;

/// A 32-bit sequence number compared with RFC 1982 serial arithmetic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Sn(pub u32);

const HALF: u32 = 1 << 31;

impl Sn {
    /// `self < other` in serial arithmetic (undefined pairs 2^31 apart compare false).
    pub fn lt(self, other: Sn) -> bool {
        let (a, b) = (self.0, other.0);
        a != b && ((a < b && b - a < HALF) || (a > b && a - b > HALF))
    }

    /// `self > other`.
    pub fn gt(self, other: Sn) -> bool {
        other.lt(self)
    }

    /// `self <= other`.
    pub fn le(self, other: Sn) -> bool {
        self == other || self.lt(other)
    }

    /// `self >= other`.
    pub fn ge(self, other: Sn) -> bool {
        self == other || self.gt(other)
    }

    /// `self + n` (wrapping).
    pub fn plus(self, n: u32) -> Sn {
        Sn(self.0.wrapping_add(n))
    }

    /// The next number.
    pub fn next(self) -> Sn {
        self.plus(1)
    }

    /// True when `lo <= self <= hi`.
    pub fn in_window(self, lo: Sn, hi: Sn) -> bool {
        self.ge(lo) && self.le(hi)
    }
}

/// What the target does with a received command's CmdSN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmdVerdict {
    /// Immediate, or exactly ExpCmdSN: execute now.
    Deliver,
    /// Inside the window but ahead of ExpCmdSN: hold until the gap fills.
    Hold,
    /// Outside the window (or already received): silently ignore (RFC 7143 3.2.2.1).
    Drop,
}

/// The target's command window: ExpCmdSN, MaxCmdSN and the queue depth behind them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdWindow {
    exp_cmd_sn: Sn,
    depth: u32,
    outstanding: u32,
    max_cmd_sn: Sn,
}

impl CmdWindow {
    /// A window after login: ExpCmdSN is the CmdSN of the login request, and `depth`
    /// commands may be outstanding at once (at least 1).
    pub fn new(exp_cmd_sn: u32, depth: u32) -> Self {
        let depth = depth.max(1);
        let exp = Sn(exp_cmd_sn);
        CmdWindow {
            exp_cmd_sn: exp,
            depth,
            outstanding: 0,
            max_cmd_sn: exp.plus(depth - 1),
        }
    }

    /// ExpCmdSN to advertise.
    pub fn exp_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.0
    }

    /// MaxCmdSN to advertise (ExpCmdSN - 1 when the window is closed). Never decreases.
    pub fn max_cmd_sn(&self) -> u32 {
        self.max_cmd_sn.0
    }

    /// Commands delivered and not yet completed.
    pub fn outstanding(&self) -> u32 {
        self.outstanding
    }

    /// Classify a command PDU. `Deliver` of a non-immediate command advances ExpCmdSN.
    pub fn check(&mut self, cmd_sn: u32, immediate: bool) -> CmdVerdict {
        if immediate {
            return CmdVerdict::Deliver;
        }
        let sn = Sn(cmd_sn);
        if sn == self.exp_cmd_sn && sn.le(self.max_cmd_sn) {
            self.exp_cmd_sn = sn.next();
            self.outstanding += 1;
            CmdVerdict::Deliver
        } else if sn.gt(self.exp_cmd_sn) && sn.le(self.max_cmd_sn) {
            CmdVerdict::Hold
        } else {
            CmdVerdict::Drop
        }
    }

    /// A command completed (its response was sent): the window slides by one.
    pub fn complete(&mut self) {
        if self.outstanding > 0 {
            self.outstanding -= 1;
        }
        self.recompute();
    }

    /// Change the queue depth (MaxCmdSN never moves backwards).
    pub fn set_depth(&mut self, depth: u32) {
        self.depth = depth.max(1);
        self.recompute();
    }

    fn recompute(&mut self) {
        let credits = self.depth.saturating_sub(self.outstanding);
        // ExpCmdSN - 1 + credits.
        let max = self.exp_cmd_sn.plus(credits).plus(u32::MAX);
        if max.gt(self.max_cmd_sn) {
            self.max_cmd_sn = max;
        }
    }
}

/// The initiator's CmdSN state: the next CmdSN and the window the target advertised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdSequencer {
    cmd_sn: Sn,
    exp_cmd_sn: Sn,
    max_cmd_sn: Sn,
}

impl CmdSequencer {
    /// After login: the next CmdSN and the ExpCmdSN/MaxCmdSN of the final Login Response.
    pub fn new(cmd_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) -> Self {
        CmdSequencer {
            cmd_sn: Sn(cmd_sn),
            exp_cmd_sn: Sn(exp_cmd_sn),
            max_cmd_sn: Sn(max_cmd_sn),
        }
    }

    /// The CmdSN the next command carries.
    pub fn cmd_sn(&self) -> u32 {
        self.cmd_sn.0
    }

    /// The window as last advertised.
    pub fn window(&self) -> (u32, u32) {
        (self.exp_cmd_sn.0, self.max_cmd_sn.0)
    }

    /// Take ExpCmdSN/MaxCmdSN from a target PDU. Ignored when MaxCmdSN < ExpCmdSN - 1
    /// (RFC 7143 4.2.2.1) or when older than what we have.
    pub fn update(&mut self, exp_cmd_sn: u32, max_cmd_sn: u32) {
        let (exp, max) = (Sn(exp_cmd_sn), Sn(max_cmd_sn));
        if max.lt(exp.plus(u32::MAX)) {
            return;
        }
        if exp.gt(self.exp_cmd_sn) {
            self.exp_cmd_sn = exp;
        }
        if max.gt(self.max_cmd_sn) {
            self.max_cmd_sn = max;
        }
    }

    /// May a non-immediate command be sent now?
    pub fn may_send(&self) -> bool {
        self.cmd_sn.le(self.max_cmd_sn)
    }

    /// The CmdSN for a new command. A non-immediate command advances CmdSN and needs an
    /// open window (`None` otherwise); an immediate one carries CmdSN without advancing.
    pub fn next(&mut self, immediate: bool) -> Option<u32> {
        let sn = self.cmd_sn.0;
        if immediate {
            return Some(sn);
        }
        if !self.may_send() {
            return None;
        }
        self.cmd_sn = self.cmd_sn.next();
        Some(sn)
    }
}

/// Where a received StatSN (or DataSN, R2TSN) falls relative to the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnCheck {
    /// The expected number; the counter advanced.
    InOrder,
    /// Ahead of the expected number: numbers in between were lost.
    Gap {
        /// The number expected.
        expected: u32,
    },
    /// Behind the expected number: a duplicate.
    Stale,
}

/// A counter of an in-order sequence (ExpStatSN at the initiator, ExpDataSN, R2TSN).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnCounter {
    next: Sn,
}

impl SnCounter {
    /// Start expecting (or assigning) `first`.
    pub fn new(first: u32) -> Self {
        SnCounter { next: Sn(first) }
    }

    /// The next expected (or assigned) number.
    pub fn peek(&self) -> u32 {
        self.next.0
    }

    /// Assign the next number (sender side: StatSN, DataSN, R2TSN).
    pub fn assign(&mut self) -> u32 {
        let v = self.next.0;
        self.next = self.next.next();
        v
    }

    /// Check a received number (receiver side). In-order advances; a gap jumps past it
    /// (the caller decides about recovery); stale leaves the counter.
    pub fn check(&mut self, got: u32) -> SnCheck {
        let g = Sn(got);
        if g == self.next {
            self.next = g.next();
            SnCheck::InOrder
        } else if g.gt(self.next) {
            let expected = self.next.0;
            self.next = g.next();
            SnCheck::Gap { expected }
        } else {
            SnCheck::Stale
        }
    }
}

/// Allocates task tags (ITT at the initiator, TTT at the target), never 0xffffffff,
/// never one still in use, at most `capacity` at once.
#[derive(Debug, Clone)]
pub struct TagAllocator {
    next: u32,
    in_use: BTreeSet<u32>,
    capacity: usize,
}

impl TagAllocator {
    /// Up to `capacity` tags in use at once, starting at `first`.
    pub fn new(first: u32, capacity: usize) -> Self {
        TagAllocator {
            next: first,
            in_use: BTreeSet::new(),
            capacity,
        }
    }

    /// A fresh tag, or `None` when `capacity` tags are in use.
    pub fn alloc(&mut self) -> Option<u32> {
        if self.in_use.len() >= self.capacity {
            return None;
        }
        // At most capacity + 1 probes find a free, non-reserved tag.
        for _ in 0..=self.capacity + 1 {
            let t = self.next;
            self.next = self.next.wrapping_add(1);
            if t != RESERVED_TAG && self.in_use.insert(t) {
                return Some(t);
            }
        }
        None
    }

    /// Release a tag; returns false if it was not allocated.
    pub fn free(&mut self, tag: u32) -> bool {
        self.in_use.remove(&tag)
    }

    /// True when `tag` is allocated.
    pub fn is_in_use(&self, tag: u32) -> bool {
        self.in_use.contains(&tag)
    }

    /// Tags in use.
    pub fn len(&self) -> usize {
        self.in_use.len()
    }

    /// True when no tag is in use.
    pub fn is_empty(&self) -> bool {
        self.in_use.is_empty()
    }
}

/// How the data of one write command is sent: immediate data in the command PDU,
/// unsolicited Data-Out after it, and the rest solicited by R2Ts (or RDMA READs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WritePlan {
    /// Bytes in the SCSI Command PDU's data segment.
    pub immediate: u32,
    /// Bytes in unsolicited Data-Out PDUs (offset `immediate`).
    pub unsolicited: u32,
    /// Bytes the target solicits, starting at `immediate + unsolicited`.
    pub solicited: u32,
}

/// Split a write of `edtl` bytes by the session's parameters. `max_send_segment` is
/// the peer's receive limit for one data segment.
pub fn plan_write(
    edtl: u32,
    immediate_data: bool,
    initial_r2t: bool,
    first_burst_length: u32,
    max_send_segment: u32,
) -> WritePlan {
    let unsolicited_cap = if initial_r2t && !immediate_data {
        0
    } else {
        first_burst_length.min(edtl)
    };
    let immediate = if immediate_data {
        unsolicited_cap.min(max_send_segment)
    } else {
        0
    };
    let unsolicited = if initial_r2t {
        0
    } else {
        unsolicited_cap - immediate
    };
    WritePlan {
        immediate,
        unsolicited,
        solicited: edtl - immediate - unsolicited,
    }
}

/// The bursts `(buffer offset, length)` a target solicits for the rest of a write,
/// each at most MaxBurstLength: the Desired Data Transfer Lengths of successive R2Ts.
pub fn solicited_bursts(
    start: u32,
    end: u32,
    max_burst_length: u32,
) -> impl Iterator<Item = (u32, u32)> {
    let step = max_burst_length.max(1);
    let mut off = start;
    std::iter::from_fn(move || {
        if off >= end {
            return None;
        }
        let len = step.min(end - off);
        let r = (off, len);
        off += len;
        Some(r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_arithmetic_wraps() {
        assert!(Sn(0xffff_fff0).lt(Sn(5)));
        assert!(Sn(5).gt(Sn(0xffff_fff0)));
        assert!(Sn(1).lt(Sn(2)));
        assert!(!Sn(0).lt(Sn(HALF)) && !Sn(HALF).lt(Sn(0)), "undefined pair");
        assert!(Sn(3).in_window(Sn(0xffff_ffff), Sn(10)));
        assert!(!Sn(11).in_window(Sn(0xffff_ffff), Sn(10)));
    }

    #[test]
    fn target_window() {
        let mut w = CmdWindow::new(0xffff_fffe, 2);
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (0xffff_fffe, 0xffff_ffff));
        assert_eq!(w.check(0xffff_ffff, false), CmdVerdict::Hold);
        assert_eq!(w.check(0, false), CmdVerdict::Drop, "beyond MaxCmdSN");
        assert_eq!(w.check(0xffff_fffe, false), CmdVerdict::Deliver);
        assert_eq!(w.check(0xffff_fffe, false), CmdVerdict::Drop, "duplicate");
        assert_eq!(w.check(0xffff_ffff, false), CmdVerdict::Deliver);
        // Window closed: MaxCmdSN = ExpCmdSN - 1.
        assert_eq!(w.max_cmd_sn(), w.exp_cmd_sn().wrapping_sub(1));
        assert_eq!(w.check(0, false), CmdVerdict::Drop);
        assert_eq!(
            w.check(0, true),
            CmdVerdict::Deliver,
            "immediate commands bypass the window"
        );
        w.complete();
        assert_eq!(w.max_cmd_sn(), 0);
        assert_eq!(w.check(0, false), CmdVerdict::Deliver);
        w.complete();
        w.complete();
        assert_eq!((w.exp_cmd_sn(), w.max_cmd_sn()), (1, 2));
    }

    #[test]
    fn initiator_sequencer() {
        let mut s = CmdSequencer::new(10, 10, 11);
        assert_eq!(s.next(true), Some(10));
        assert_eq!(s.next(false), Some(10));
        assert_eq!(s.next(false), Some(11));
        assert_eq!(s.next(false), None);
        assert!(!s.may_send());
        s.update(12, 10); // MaxCmdSN < ExpCmdSN - 1: ignored
        assert_eq!(s.window(), (10, 11));
        s.update(12, 12);
        assert_eq!(s.next(false), Some(12));
        s.update(11, 11); // older: ignored
        assert_eq!(s.window(), (12, 12));
    }

    #[test]
    fn counters_and_tags() {
        let mut c = SnCounter::new(5);
        assert_eq!(c.check(5), SnCheck::InOrder);
        assert_eq!(c.check(8), SnCheck::Gap { expected: 6 });
        assert_eq!(c.check(7), SnCheck::Stale);
        assert_eq!(c.assign(), 9);
        let mut t = TagAllocator::new(0xffff_fffe, 2);
        assert_eq!(t.alloc(), Some(0xffff_fffe));
        assert_eq!(t.alloc(), Some(0), "0xffffffff is skipped");
        assert_eq!(t.alloc(), None);
        assert!(t.free(0));
        assert!(!t.free(0));
        assert_eq!(t.alloc(), Some(1));
    }

    #[test]
    fn write_plans() {
        // Defaults: ImmediateData=Yes, InitialR2T=Yes, FirstBurstLength 65536, MRDSL 8192.
        assert_eq!(
            plan_write(100_000, true, true, 65_536, 8192),
            WritePlan {
                immediate: 8192,
                unsolicited: 0,
                solicited: 91_808
            }
        );
        assert_eq!(
            plan_write(100_000, true, false, 65_536, 8192),
            WritePlan {
                immediate: 8192,
                unsolicited: 57_344,
                solicited: 34_464
            }
        );
        assert_eq!(
            plan_write(4096, false, true, 65_536, 8192),
            WritePlan {
                immediate: 0,
                unsolicited: 0,
                solicited: 4096
            }
        );
        assert_eq!(
            plan_write(4096, false, false, 65_536, 8192),
            WritePlan {
                immediate: 0,
                unsolicited: 4096,
                solicited: 0
            }
        );
        let b: Vec<_> = solicited_bursts(8192, 300_000, 131_072).collect();
        assert_eq!(
            b,
            vec![(8192, 131_072), (139_264, 131_072), (270_336, 29_664)]
        );
    }
}
