//! The SCSI device server: one [`Lun`] answers SPC and SBC commands over a backing
//! store, in LIO's layers: `sbc` (block commands: parse once, check LBA ranges in
//! one place, decide protection) falling back to `spc` (INQUIRY and VPD pages, MODE
//! SENSE/SELECT, REPORT SUPPORTED OPERATION CODES, REQUEST SENSE), `pr` (persistent
//! and SPC-2 reservations), and `backend` (file, block device, RAM; never parses CDBs).
//! Every handler fails with one [`SenseReason`].
//!
//! # Command life cycle (for transports)
//!
//! 1. [`Lun::prepare`] parses the CDB once, reports a pending unit attention,
//!    enforces reservations, validates fields and LBA ranges, and returns a
//!    [`CommandPlan`]: the data direction, the exact data-out length or the maximum
//!    data-in length *on the wire*, and the [`ProtPlan`] (INSERT / STRIP / PASS,
//!    whether the wire carries 8 bytes of PI per block, the T10-PI domains and the
//!    check mask).
//! 2. The transport moves the data. Block data reaches the device server in DIX
//!    form (data and PI in separate buffers), as a signature MR with a memory DIF
//!    domain delivers it; a transport without a signature engine converts the
//!    wire bytes with [`wire::from_wire`] / [`wire::to_wire`] (or simply calls
//!    [`Lun::execute_wire`]). A PI check failure the transport detects becomes
//!    sense through [`Lun::pi_failure`].
//! 3. [`Lun::execute`] performs the command and returns the data-in (in DIX form
//!    for block reads).
//!
//! A `Lun` is `Send + Sync`; every method takes `&self`, so a transport may run
//! commands concurrently on a thread pool. Medium access locks the blocks it touches
//! (shared for reads, exclusive for writes), so a block's data and tuple always
//! change together and COMPARE AND WRITE is atomic with respect to other commands
//! on its blocks.

pub mod backend;
mod lba_lock;
mod lun;
mod pr;
pub mod prot;
pub mod reason;
mod sbc;
mod spc;
pub mod wire;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use lun::{CommandPlan, CounterSnapshot, DataOut, Direction, Lun, LunError, Response};
pub use prot::{check_prot, ProtDecision, ProtDir, ProtOp, ProtPlan};
pub use reason::{pi_sense, SenseReason};
pub use spc::{decode_lun, encode_lun, inquiry_no_lun, report_luns_payload};
pub use wire::{Dix, PiFailure, WireError};

/// Where a LUN's blocks live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backing {
    /// A regular file (sparse, created and sized when asked) or a block device.
    File {
        /// Path of the data file; PI lives in `<path>.pi`.
        path: PathBuf,
        /// Size in bytes for a regular file (`None`: keep the current size).
        size: Option<u64>,
        /// Create the file when it does not exist.
        create: bool,
    },
    /// Memory, zeroed at start.
    Ram {
        /// Size in bytes.
        size: u64,
    },
}

/// T10 protection of a LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Protection {
    /// Protection type: 0 (no PI), 1, 2 or 3.
    pub pi_type: u8,
    /// Check PI received from the wire on writes (per WRPROTECT).
    pub verify_received: bool,
    /// Check stored PI on reads (per RDPROTECT) before it leaves the target.
    pub verify_medium: bool,
    /// Application tag the target writes when it generates PI (WRPROTECT 0).
    pub app_tag: u16,
}

impl Default for Protection {
    fn default() -> Self {
        Protection {
            pi_type: 0,
            verify_received: true,
            verify_medium: true,
            app_tag: 0,
        }
    }
}

/// Description of one logical unit; the daemon maps its configuration into this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunDesc {
    /// LUN number as the initiator addresses it.
    pub id: u64,
    /// Backing store.
    pub backing: Backing,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Reject every medium modification with DATA PROTECT.
    pub read_only: bool,
    /// T10 vendor identification (8 ASCII characters, padded).
    pub vendor: String,
    /// Product identification (16 ASCII characters, padded).
    pub product: String,
    /// Product revision level (4 ASCII characters, padded).
    pub revision: String,
    /// Unit serial number (VPD page 80h; also seeds the NAA designator).
    pub serial: String,
    /// Volatile write cache enabled (WCE); when false every write is written through.
    pub write_cache: bool,
    /// Thin provisioning: UNMAP, WRITE SAME with UNMAP, LBPME.
    pub thin_provisioning: bool,
    /// T10 protection.
    pub protection: Protection,
}

impl LunDesc {
    /// A RAM LUN with defaults (vendor "ISER-PI", write cache on, thin, no PI).
    pub fn ram(id: u64, size: u64, block_size: u32) -> Self {
        LunDesc {
            id,
            backing: Backing::Ram { size },
            block_size,
            read_only: false,
            vendor: "ISER-PI".into(),
            product: "RAM DISK".into(),
            revision: "0001".into(),
            serial: format!("ram{id:04}"),
            write_cache: true,
            thin_provisioning: true,
            protection: Protection::default(),
        }
    }

    /// A file LUN with defaults (created sparse at `size` when missing).
    pub fn file(id: u64, path: impl Into<PathBuf>, size: u64, block_size: u32) -> Self {
        LunDesc {
            backing: Backing::File {
                path: path.into(),
                size: Some(size),
                create: true,
            },
            product: "FILE DISK".into(),
            serial: format!("file{id:04}"),
            ..LunDesc::ram(id, size, block_size)
        }
    }

    /// The same LUN with protection `pi_type` (0..=3).
    pub fn with_pi(mut self, pi_type: u8) -> Self {
        self.protection.pi_type = pi_type;
        self
    }
}

/// The I_T nexus a command arrived on, as the transport knows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// Opaque id, unique per live I_T nexus (e.g. the session id).
    pub id: u64,
    /// Initiator port name: the iSCSI initiator name, optionally followed by
    /// `,i,0x<ISID>` (as in a TransportID).
    pub initiator: String,
    /// Target port name (e.g. `iqn...,t,0x0001`), for VPD page 83h; may be empty.
    pub target_port: String,
    /// Relative target port identifier (1-based).
    pub relative_port: u16,
}

impl Nexus {
    /// A nexus with an empty target port name and relative port 1.
    pub fn new(id: u64, initiator: impl Into<String>) -> Self {
        Nexus {
            id,
            initiator: initiator.into(),
            target_port: String::new(),
            relative_port: 1,
        }
    }
}
