//! Backing stores for logical units: a file or block device ([`FileBackend`]) and
//! memory ([`RamBackend`]). Backends never parse CDBs; they read and write whole
//! logical blocks, sync, unmap, report mapping status, and keep protection
//! information beside the data.
//!
//! # Where protection information lives
//!
//! A LUN formatted with PI stores one 8-byte tuple per logical block (guard: u16,
//! application tag: u16, reference tag: u32, all big-endian, exactly as on the wire).
//! For a file or block-device LUN the tuples are kept in a *sidecar file* named
//! `<data path>.pi` (for example `/var/lib/iser/lun0.img.pi`): tuple `n` is at byte
//! offset `8 * n`, so the sidecar is `8 * blocks` bytes long. The data file itself is
//! unchanged: plain blocks with no interleaved PI, readable by any tool.
//!
//! - Format: a new sidecar is filled with 0xFF bytes. An all-0xFF tuple has app tag
//!   0xFFFF (and ref tag 0xFFFFFFFF), which escapes every check, so blocks that were
//!   never written read back without PI errors. Growing a LUN fills the new tuples
//!   with 0xFF the same way.
//! - Unmap (UNMAP, WRITE SAME with UNMAP): the tuples are reset to 0xFF first, then
//!   the data range is deallocated (`fallocate(PUNCH_HOLE | KEEP_SIZE)`; zeros are
//!   written where punching is not supported). Deallocated blocks read as zeros.
//! - Inspect a tuple: `xxd -s $((8 * LBA)) -l 8 lun0.img.pi`.
//! - Repair: a tuple rewritten as eight 0xFF bytes disables checking of that block
//!   (the next write regenerates it); deleting the sidecar while the target is
//!   stopped re-formats all PI to 0xFF on the next start.
//!
//! # Crash ordering
//!
//! A write stores the data blocks first, then their tuples. With FUA, with the write
//! cache disabled, or on SYNCHRONIZE CACHE, both files are `fdatasync`ed before the
//! command completes (data first). A crash can therefore leave, per block: the old
//! data with the old tuple, the new data with the new tuple, or one of them new and
//! the other old. The last case is a guard mismatch that the next protected read
//! reports as LOGICAL BLOCK GUARD CHECK FAILED; it never reads back wrong data
//! without an error (short of a CRC-16 collision). Unmap resets tuples before
//! deallocating, so a crash in between leaves old data unchecked, never zeros with a
//! stale tuple that would read back as a false error.

mod file;
mod ram;

use std::fmt;
use std::io;

use thiserror::Error;

pub use file::{FileBackend, FileOptions};
pub use ram::RamBackend;

/// A backing-store failure.
#[derive(Debug, Error)]
pub enum BackendError {
    /// An I/O call failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A block range outside the store (a bug in the caller: ranges are checked first).
    #[error("blocks {lba}..+{blocks} are outside the store of {capacity} blocks")]
    OutOfRange {
        /// First block.
        lba: u64,
        /// Number of blocks.
        blocks: u64,
        /// Blocks in the store.
        capacity: u64,
    },
    /// A buffer is not a whole number of blocks (or tuples).
    #[error("buffer of {len} bytes is not a whole number of {unit}-byte units")]
    BadBuffer {
        /// Buffer length.
        len: usize,
        /// Unit size.
        unit: usize,
    },
    /// The store was opened without PI.
    #[error("the store has no protection information")]
    NoPi,
    /// Invalid geometry when opening.
    #[error("invalid geometry: {0}")]
    Geometry(String),
}

/// Mapping status of a run of blocks (GET LBA STATUS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LbaStatus {
    /// True when the blocks are mapped (allocated), false when deallocated.
    pub mapped: bool,
    /// Number of consecutive blocks from the queried LBA with this status.
    pub blocks: u64,
}

/// Size of the bounce buffer used by repeated-block operations.
pub const CHUNK_BYTES: usize = 1 << 20;

/// A block store with optional per-block protection information.
///
/// All methods take `&self`: implementations lock internally, and the device
/// server calls them from many threads. Ranges are in logical blocks and are
/// checked by the caller; implementations still return [`BackendError::OutOfRange`]
/// rather than panic.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Logical block size in bytes.
    fn block_size(&self) -> u32;
    /// Number of logical blocks.
    fn blocks(&self) -> u64;
    /// Whether the store keeps PI tuples.
    fn has_pi(&self) -> bool;
    /// Reads whole blocks starting at `lba` into `data`.
    fn read(&self, lba: u64, data: &mut [u8]) -> Result<(), BackendError>;
    /// Writes whole blocks starting at `lba`; with `fua` they are durable on return.
    fn write(&self, lba: u64, data: &[u8], fua: bool) -> Result<(), BackendError>;
    /// Reads the tuples of the blocks starting at `lba` (8 bytes each).
    fn read_pi(&self, lba: u64, pi: &mut [u8]) -> Result<(), BackendError>;
    /// Writes the tuples of the blocks starting at `lba`; with `fua` durable on return.
    fn write_pi(&self, lba: u64, pi: &[u8], fua: bool) -> Result<(), BackendError>;
    /// Makes every completed write durable (data, then PI).
    fn sync(&self) -> Result<(), BackendError>;
    /// Deallocates blocks: tuples reset to 0xFF, then data deallocated (reads as zeros).
    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BackendError>;
    /// Mapping status of the run of blocks starting at `lba`.
    fn lba_status(&self, lba: u64) -> Result<LbaStatus, BackendError>;
    /// Fills every tuple with 0xFF.
    fn format_pi(&self) -> Result<(), BackendError>;

    /// Writes data then PI (the crash ordering documented in the module), both
    /// durable on return with `fua`.
    fn write_blocks(
        &self,
        lba: u64,
        data: &[u8],
        pi: Option<&[u8]>,
        fua: bool,
    ) -> Result<(), BackendError> {
        self.write(lba, data, fua)?;
        if let Some(pi) = pi {
            self.write_pi(lba, pi, fua)?;
        }
        Ok(())
    }

    /// Reads data and, when `pi` is given, the tuples.
    fn read_blocks(
        &self,
        lba: u64,
        data: &mut [u8],
        pi: Option<&mut [u8]>,
    ) -> Result<(), BackendError> {
        self.read(lba, data)?;
        if let Some(pi) = pi {
            self.read_pi(lba, pi)?;
        }
        Ok(())
    }

    /// Writes `block` (one logical block) to `blocks` blocks starting at `lba`, in
    /// bounded chunks. PI, when the store has it, is written by the caller.
    fn write_same(
        &self,
        lba: u64,
        blocks: u64,
        block: &[u8],
        fua: bool,
    ) -> Result<(), BackendError> {
        let bs = self.block_size() as usize;
        if block.len() != bs {
            return Err(BackendError::BadBuffer {
                len: block.len(),
                unit: bs,
            });
        }
        let per_chunk = (CHUNK_BYTES / bs).max(1) as u64;
        let chunk: Vec<u8> = block
            .iter()
            .copied()
            .cycle()
            .take(bs * per_chunk.min(blocks) as usize)
            .collect();
        let mut done = 0u64;
        while done < blocks {
            let n = per_chunk.min(blocks - done);
            self.write(lba + done, &chunk[..n as usize * bs], false)?;
            done += n;
        }
        if fua {
            self.sync()?;
        }
        Ok(())
    }
}

/// Checks that `[lba, lba + n)` lies inside `capacity` blocks.
pub(crate) fn check_range(lba: u64, n: u64, capacity: u64) -> Result<(), BackendError> {
    match lba.checked_add(n) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(BackendError::OutOfRange {
            lba,
            blocks: n,
            capacity,
        }),
    }
}

/// Number of whole units in `len`, or an error when `len` is not a multiple.
pub(crate) fn units(len: usize, unit: usize) -> Result<u64, BackendError> {
    if unit == 0 || !len.is_multiple_of(unit) {
        return Err(BackendError::BadBuffer { len, unit });
    }
    Ok((len / unit) as u64)
}
