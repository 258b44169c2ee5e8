//! Counters for the admin view: reads, writes, bytes and PI errors by kind, per LUN and
//! per session, classified from each command's CDB and sense data.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Which PI check failed, from the sense's ASC 10h ASCQ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PiKind {
    /// 10h/01h LOGICAL BLOCK GUARD CHECK FAILED.
    Guard,
    /// 10h/02h LOGICAL BLOCK APPLICATION TAG CHECK FAILED.
    AppTag,
    /// 10h/03h LOGICAL BLOCK REFERENCE TAG CHECK FAILED.
    RefTag,
}

/// The sense key, ASC and ASCQ of fixed (70h/71h) or descriptor (72h/73h) sense data.
pub fn sense_key_asc(sense: &[u8]) -> Option<(u8, u8, u8)> {
    match sense.first()? & 0x7f {
        0x70 | 0x71 if sense.len() >= 14 => Some((sense[2] & 0x0f, sense[12], sense[13])),
        0x72 | 0x73 if sense.len() >= 4 => Some((sense[1] & 0x0f, sense[2], sense[3])),
        _ => None,
    }
}

/// The PI failure a sense reports, if it is one.
pub fn pi_kind(sense: &[u8]) -> Option<PiKind> {
    match sense_key_asc(sense)? {
        (_, 0x10, 0x01) => Some(PiKind::Guard),
        (_, 0x10, 0x02) => Some(PiKind::AppTag),
        (_, 0x10, 0x03) => Some(PiKind::RefTag),
        _ => None,
    }
}

/// Whether an opcode reads or writes the medium (for the counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// READ(6/10/12/16/32).
    Read,
    /// WRITE, WRITE AND VERIFY, WRITE SAME, COMPARE AND WRITE.
    Write,
    /// Anything else.
    Other,
}

/// Classify a CDB.
pub fn io_kind(cdb: &[u8]) -> IoKind {
    match cdb.first() {
        Some(0x08 | 0x28 | 0xa8 | 0x88) => IoKind::Read,
        Some(0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 | 0x89) => IoKind::Write,
        Some(0x7f) if cdb.len() >= 10 => match u16::from_be_bytes([cdb[8], cdb[9]]) {
            0x0009 => IoKind::Read,
            0x000b..=0x000d => IoKind::Write,
            _ => IoKind::Other,
        },
        _ => IoKind::Other,
    }
}

/// Counters of one LUN or one session (lock-free, shared between connections).
#[derive(Debug, Default)]
pub struct IoCounters {
    reads: AtomicU64,
    writes: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    other: AtomicU64,
    guard_errors: AtomicU64,
    app_tag_errors: AtomicU64,
    ref_tag_errors: AtomicU64,
}

/// A snapshot of [`IoCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoSnapshot {
    /// Read commands.
    pub reads: u64,
    /// Write commands.
    pub writes: u64,
    /// Bytes sent in Data-In of reads.
    pub read_bytes: u64,
    /// Bytes received in Data-Out of writes.
    pub write_bytes: u64,
    /// Other commands.
    pub other: u64,
    /// Guard check failures (10h/01h).
    pub guard_errors: u64,
    /// Application tag check failures (10h/02h).
    pub app_tag_errors: u64,
    /// Reference tag check failures (10h/03h).
    pub ref_tag_errors: u64,
}

impl IoCounters {
    /// Count one completed command.
    pub fn record(&self, cdb: &[u8], data_in: u64, data_out: u64, sense: &[u8]) {
        match io_kind(cdb) {
            IoKind::Read => {
                self.reads.fetch_add(1, Ordering::Relaxed);
                self.read_bytes.fetch_add(data_in, Ordering::Relaxed);
            }
            IoKind::Write => {
                self.writes.fetch_add(1, Ordering::Relaxed);
                self.write_bytes.fetch_add(data_out, Ordering::Relaxed);
            }
            IoKind::Other => {
                self.other.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.record_sense(sense);
    }

    /// Counts a PI error named by `sense` (nothing for other sense data).
    pub fn record_sense(&self, sense: &[u8]) {
        match pi_kind(sense) {
            Some(PiKind::Guard) => self.guard_errors.fetch_add(1, Ordering::Relaxed),
            Some(PiKind::AppTag) => self.app_tag_errors.fetch_add(1, Ordering::Relaxed),
            Some(PiKind::RefTag) => self.ref_tag_errors.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }

    /// Current values.
    pub fn snapshot(&self) -> IoSnapshot {
        IoSnapshot {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            read_bytes: self.read_bytes.load(Ordering::Relaxed),
            write_bytes: self.write_bytes.load(Ordering::Relaxed),
            other: self.other.load(Ordering::Relaxed),
            guard_errors: self.guard_errors.load(Ordering::Relaxed),
            app_tag_errors: self.app_tag_errors.load(Ordering::Relaxed),
            ref_tag_errors: self.ref_tag_errors.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_pi_sense_in_both_formats() {
        let mut fixed = [0u8; 18];
        fixed[0] = 0xf0;
        fixed[2] = 0x0b;
        fixed[12] = 0x10;
        fixed[13] = 0x03;
        assert_eq!(pi_kind(&fixed), Some(PiKind::RefTag));
        let desc = [0x72, 0x0b, 0x10, 0x01, 0, 0, 0, 0];
        assert_eq!(pi_kind(&desc), Some(PiKind::Guard));
        assert_eq!(pi_kind(&[0x72, 0x05, 0x24, 0x00]), None);
        assert_eq!(pi_kind(&[]), None);
    }

    #[test]
    fn counts_reads_writes_and_pi_errors() {
        let c = IoCounters::default();
        c.record(&[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0], 4096, 0, &[]);
        c.record(&[0x8a; 16], 0, 512, &[0x72, 0x0b, 0x10, 0x02]);
        c.record(&[0x12, 0, 0, 0, 36, 0], 36, 0, &[]);
        let s = c.snapshot();
        assert_eq!((s.reads, s.writes, s.other), (1, 1, 1));
        assert_eq!((s.read_bytes, s.write_bytes), (4096, 512));
        assert_eq!(
            (s.guard_errors, s.app_tag_errors, s.ref_tag_errors),
            (0, 1, 0)
        );
    }
}
