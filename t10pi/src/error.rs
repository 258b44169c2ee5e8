//! Errors: a failed PI check ([`PiError`]), a malformed buffer layout
//! ([`LayoutError`]), and their union returned by checking operations ([`Error`]).

use std::fmt;

/// Which field of the tuple failed its check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PiErrorKind {
    /// The guard stored in the tuple differs from the guard computed over the data.
    Guard,
    /// The application tag differs (under `apptag_check_mask` and the check mask).
    AppTag,
    /// The reference tag differs from the domain's expected ref tag for the block.
    RefTag,
}

impl fmt::Display for PiErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PiErrorKind::Guard => "guard",
            PiErrorKind::AppTag => "application tag",
            PiErrorKind::RefTag => "reference tag",
        })
    }
}

/// A PI check failure in the first failing block of a transfer.
///
/// When several fields of that block fail, `kind` is the first of guard, ref
/// tag, app tag (the order in which the Linux kernel decodes HCA syndromes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{kind} check failed in block {block} (wire offset {wire_offset}): expected {expected:#x}, actual {actual:#x}")]
pub struct PiError {
    /// Failing field.
    pub kind: PiErrorKind,
    /// For a guard, the guard computed over the data; for tags, the domain's value.
    pub expected: u32,
    /// The value found in the tuple.
    pub actual: u32,
    /// Index of the failing block within the whole transfer (includes `first_block`).
    pub block: u64,
    /// Byte offset of the failing block in the interleaved wire stream:
    /// `block * (interval + 8)`.
    pub wire_offset: u64,
}

/// A buffer geometry that the operation cannot work on. Never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum LayoutError {
    /// The protection interval is not a power of two in 512..=4096.
    #[error("protection interval {0} is not a power of two in 512..=4096")]
    BadInterval(u32),
    /// A data buffer is not a whole number of protection intervals.
    #[error("data length {len} is not a multiple of the protection interval {interval}")]
    DataNotMultiple {
        /// Data buffer length.
        len: usize,
        /// Protection interval.
        interval: u32,
    },
    /// An interleaved (DIF) buffer is not a whole number of `interval + 8` strides.
    #[error("interleaved length {len} is not a multiple of interval + 8 = {stride}")]
    DifNotMultiple {
        /// Interleaved buffer length.
        len: usize,
        /// `interval + 8`.
        stride: usize,
    },
    /// The separate PI buffer holds fewer than 8 bytes per block.
    #[error("PI buffer of {len} bytes is shorter than the {needed} bytes needed")]
    PiTooShort {
        /// Bytes needed (blocks x 8).
        needed: usize,
        /// PI buffer length.
        len: usize,
    },
    /// The destination buffer is shorter than the source's blocks need.
    #[error("destination buffer of {len} bytes is shorter than the {needed} bytes needed")]
    DstTooShort {
        /// Bytes needed.
        needed: usize,
        /// Destination length.
        len: usize,
    },
    /// Source and destination domains of a PASS use different intervals.
    #[error("source interval {src} differs from destination interval {dst}")]
    IntervalMismatch {
        /// Source domain interval.
        src: u32,
        /// Destination domain interval.
        dst: u32,
    },
    /// A test helper was asked for a block or bit outside the buffer.
    #[error("block {block} bit {bit} is outside the buffer")]
    OutOfRange {
        /// Requested block.
        block: u64,
        /// Requested bit.
        bit: u32,
    },
}

/// Error of a checking operation (verify, strip, pass): either the buffers are
/// malformed, or a PI check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// Buffers or domain are malformed; nothing was checked.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A PI check failed.
    #[error(transparent)]
    Pi(#[from] PiError),
}

impl Error {
    /// The PI check failure, if this is one.
    pub fn pi(&self) -> Option<&PiError> {
        match self {
            Error::Pi(e) => Some(e),
            Error::Layout(_) => None,
        }
    }
}
