//! The boundary between a transport and the SCSI device server: what a transport asks
//! of the logical units of one target (how many bytes a command moves, run it, task
//! management, flush) in wire terms, so that iSCSI/TCP and iSER drive the same LUNs.
//!
//! Data on this boundary is in the *wire form*: when the device server's protection
//! plan puts PI on the wire, Data-Out and Data-In bytes carry the 8-byte tuples
//! interleaved after each block, exactly as the initiator sends and receives them.

use std::fmt;

/// The I_T nexus a command arrives on (for unit attentions and reservations).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// The initiator's iSCSI name.
    pub initiator: String,
    /// The Initiator Session ID.
    pub isid: [u8; 6],
    /// The Target Session Identifying Handle.
    pub tsih: u16,
}

impl Nexus {
    /// The SCSI initiator port name, as RFC 7143 builds it: `name,i,0x<ISID>`.
    pub fn port_name(&self) -> String {
        // Built by hand: this runs for every command.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(self.initiator.len() + 5 + 12);
        s.push_str(&self.initiator);
        s.push_str(",i,0x");
        for b in self.isid {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }
}

/// Data direction a CDB implies, with its length in wire bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// No data phase.
    None,
    /// The initiator sends this many bytes (Data-Out).
    Out(u32),
    /// The target returns up to this many bytes (Data-In).
    In(u32),
}

/// What a command produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Completion {
    /// SCSI status byte.
    pub status: u8,
    /// Sense data (fixed or descriptor format), empty when there is none.
    pub sense: Vec<u8>,
    /// Data-In bytes in wire form (possibly longer than the initiator expects; the
    /// transport truncates and reports the overflow).
    pub data_in: Vec<u8>,
}

impl Completion {
    /// GOOD status with `data_in`.
    pub fn good(data_in: Vec<u8>) -> Self {
        Completion {
            status: 0,
            sense: Vec::new(),
            data_in,
        }
    }

    /// Moves the Data-In into `dst` (as much as fits), leaving the completion
    /// without data; returns it with the Data-In length it had.
    pub fn place(mut self, dst: &mut [u8]) -> (Completion, usize) {
        let len = self.data_in.len();
        let n = len.min(dst.len());
        dst[..n].copy_from_slice(&self.data_in[..n]);
        self.data_in = Vec::new();
        (self, len)
    }

    /// CHECK CONDITION with `sense`.
    pub fn check_condition(sense: Vec<u8>) -> Self {
        Completion {
            status: 0x02,
            sense,
            data_in: Vec::new(),
        }
    }
}

/// The scope of a task management function, as the device server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetScope {
    /// ABORT TASK SET / CLEAR TASK SET on one LUN: tasks were aborted (the device
    /// server sets COMMANDS CLEARED BY ANOTHER INITIATOR where it applies).
    TaskSet {
        /// LUN number.
        lun: u64,
        /// True for CLEAR TASK SET (affects every nexus).
        clear: bool,
    },
    /// LOGICAL UNIT RESET.
    LogicalUnit(u64),
    /// TARGET WARM RESET (every LUN of the target).
    Target,
}

/// One logical unit as the admin view shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LunSummary {
    /// LUN number.
    pub lun: u64,
    /// Capacity in logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// T10 protection type (0 = none).
    pub pi_type: u8,
    /// Backing store, as configured.
    pub backing: String,
}

/// The logical units of one target, as a transport drives them. Implementations are
/// shared between connections and called from blocking worker threads.
pub trait ScsiService: Send + Sync + fmt::Debug {
    /// Whether `lun` exists.
    fn has_lun(&self, lun: u64) -> bool;

    /// The data transfer `cdb` describes for `lun` (Data-Out length including PI bytes
    /// when the protection plan puts PI on the wire). Malformed CDBs report
    /// [`Transfer::None`]; [`ScsiService::execute`] then answers with the sense.
    fn transfer(&self, lun: u64, cdb: &[u8]) -> Transfer;

    /// Runs one command to completion. `data_out` holds the Data-Out bytes received
    /// (at most what [`ScsiService::transfer`] asked for; fewer if the initiator's
    /// Expected Data Transfer Length was shorter).
    fn execute(&self, nexus: &Nexus, lun: u64, cdb: &[u8], data_out: &[u8]) -> Completion;

    /// [`ScsiService::execute`] with the Data-In written into `data_in` (a
    /// transport's registered buffer) rather than a new vector, which saves a copy
    /// of every read. Returns the completion (its `data_in` empty) and the Data-In
    /// length the command produced; only what fits `data_in` is written, the rest
    /// is overflow the transport reports as a residual.
    fn execute_into(
        &self,
        nexus: &Nexus,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        data_in: &mut [u8],
    ) -> (Completion, usize) {
        self.execute(nexus, lun, cdb, data_out).place(data_in)
    }

    /// Runs a READ that asks for its blocks' PI (RDPROTECT not 0) with the blocks
    /// going to `data` and their PI to `pi` (DIX form), for a transport whose
    /// hardware interleaves them on the way out; returns the completion and the
    /// bytes written (data and PI), or `None` when this service does not serve
    /// `cdb` so (the caller then uses [`ScsiService::execute_into`]).
    fn execute_read_dix(
        &self,
        nexus: &Nexus,
        lun: u64,
        cdb: &[u8],
        data: &mut [u8],
        pi: &mut [u8],
    ) -> Option<(Completion, usize)> {
        let _ = (nexus, lun, cdb, data, pi);
        None
    }

    /// Runs a WRITE that carries its blocks' PI (WRPROTECT not 0) with the blocks
    /// in `data` and their PI in `pi` (DIX form), for a transport whose hardware
    /// split them off the wire; returns the completion, or `None` when this
    /// service does not serve `cdb` so (the caller then interleaves them and uses
    /// [`ScsiService::execute`]).
    fn execute_write_dix(
        &self,
        nexus: &Nexus,
        lun: u64,
        cdb: &[u8],
        data: &[u8],
        pi: &[u8],
    ) -> Option<Completion> {
        let _ = (nexus, lun, cdb, data, pi);
        None
    }

    /// Whether `lun`'s commands finish without waiting on I/O (a RAM backing
    /// store): a transport may then run them in place rather than on a blocking
    /// worker thread, saving two thread hand-offs per command.
    fn in_memory(&self, lun: u64) -> bool {
        let _ = lun;
        false
    }

    /// Tells the device server about a reset or task-set abort (unit attentions).
    fn reset(&self, nexus: &Nexus, scope: ResetScope);

    /// The I_T nexus ended (logout or connection loss): forget its unit attentions
    /// and SPC-2 reservation.
    fn nexus_lost(&self, nexus: &Nexus) {
        let _ = nexus;
    }

    /// Flushes every LUN's backing store to stable storage.
    fn sync_all(&self) -> std::io::Result<()>;

    /// The LUNs for the admin view, in LUN order.
    fn luns(&self) -> Vec<LunSummary>;
}

#[cfg(test)]
mod tests {
    use super::Nexus;

    #[test]
    fn port_name_is_name_i_and_the_isid_in_hex() {
        let n = Nexus {
            initiator: "iqn.2026-01.test:a".into(),
            isid: [0x40, 0x00, 0x01, 0x37, 0xab, 0x0f],
            tsih: 1,
        };
        assert_eq!(n.port_name(), "iqn.2026-01.test:a,i,0x40000137ab0f");
    }
}
