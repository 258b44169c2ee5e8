//! One codec for every wire structure: a zero-copy [`Reader`] that never reads past its
//! slice, the [`Codec`] trait, and the typed [`DecodeError`] that maps to an iSCSI
//! response ([`Action`]).

use crate::pdu::RejectReason;

/// What the receiver of a malformed PDU must do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer with a Reject PDU carrying this reason and the offending header, then
    /// carry on with the connection.
    Reject(RejectReason),
    /// Framing can no longer be trusted (or the peer broke a MUST): drop the connection.
    CloseConnection,
}

/// Why bytes did not decode. Each variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside the named structure.
    #[error("truncated input while reading {0}")]
    Truncated(&'static str),
    /// Bytes were left over after a complete structure.
    #[error("{0} trailing bytes after the structure")]
    TrailingBytes(usize),
    /// A field holds a value the protocol does not allow.
    #[error("invalid value {value:#x} in field {field}")]
    InvalidField {
        /// The field's name as in the RFC.
        field: &'static str,
        /// The value found on the wire.
        value: u64,
    },
    /// A rule linking several fields was broken (for example T and C both set).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The opcode is neither defined by RFC 7143 nor vendor specific.
    #[error("unknown opcode {0:#04x}")]
    UnknownOpcode(u8),
    /// The DataSegmentLength exceeds the MaxRecvDataSegmentLength we declared.
    #[error("data segment of {len} bytes exceeds the limit of {limit}")]
    DataSegmentTooLong {
        /// DataSegmentLength from the BHS.
        len: u32,
        /// Our MaxRecvDataSegmentLength.
        limit: u32,
    },
    /// The CRC32C over the BHS and AHS does not match the HeaderDigest.
    #[error("header digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    HeaderDigest {
        /// CRC32C we computed.
        computed: u32,
        /// CRC32C found on the wire.
        received: u32,
    },
    /// The CRC32C over the data segment does not match the DataDigest.
    #[error("data digest mismatch: computed {computed:#010x}, received {received:#010x}")]
    DataDigest {
        /// CRC32C we computed.
        computed: u32,
        /// CRC32C found on the wire.
        received: u32,
    },
}

impl DecodeError {
    /// The response RFC 7143 calls for.
    pub fn action(&self) -> Action {
        match self {
            DecodeError::Truncated(_)
            | DecodeError::TrailingBytes(_)
            | DecodeError::Protocol(_) => Action::Reject(RejectReason::ProtocolError),
            DecodeError::InvalidField { .. } => Action::Reject(RejectReason::InvalidPduField),
            DecodeError::UnknownOpcode(_) => Action::Reject(RejectReason::CommandNotSupported),
            DecodeError::DataDigest { .. } => Action::Reject(RejectReason::DataDigestError),
            // Without a trustworthy header (or with a segment we refuse to buffer) the
            // byte stream cannot be resynchronised.
            DecodeError::HeaderDigest { .. } | DecodeError::DataSegmentTooLong { .. } => {
                Action::CloseConnection
            }
        }
    }
}

/// A cursor over a byte slice. Reads never go past the end; they fail with
/// [`DecodeError::Truncated`] naming what was being read.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Bytes already read.
    pub fn used(&self) -> usize {
        self.pos
    }

    /// Take the next `n` bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.left() < n {
            return Err(DecodeError::Truncated(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Take a fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, what)?[0])
    }

    /// Big-endian u16.
    pub fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    /// Big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Big-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }

    /// Fail unless every byte was read.
    pub fn expect_end(&self) -> Result<(), DecodeError> {
        match self.left() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// A structure with one wire encoding. `Context` carries what the encoding depends on
/// (digests and limits for PDUs; `()` for fixed layouts).
pub trait Codec: Sized {
    /// Parameters the encoding depends on.
    type Context;

    /// Append the wire form to `out`.
    fn encode(&self, ctx: &Self::Context, out: &mut Vec<u8>);

    /// Read one structure from the front of `r`.
    fn read(r: &mut Reader<'_>, ctx: &Self::Context) -> Result<Self, DecodeError>;

    /// Decode exactly `bytes`: trailing bytes are an error.
    fn decode(bytes: &[u8], ctx: &Self::Context) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::read(&mut r, ctx)?;
        r.expect_end()?;
        Ok(v)
    }

    /// The wire form as a new vector.
    fn to_bytes(&self, ctx: &Self::Context) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(ctx, &mut out);
        out
    }
}

/// Bytes of padding that bring `len` to a multiple of 4.
pub const fn pad4(len: usize) -> usize {
    (4 - (len & 3)) & 3
}

pub(crate) fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

pub(crate) fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

pub(crate) fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

pub(crate) fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_be_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_by_name() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16("a").unwrap(), 0x0102);
        assert_eq!(r.u16("b"), Err(DecodeError::Truncated("b")));
        assert_eq!(r.expect_end(), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(r.u8("c").unwrap(), 3);
        assert!(r.expect_end().is_ok());
    }

    #[test]
    fn pad4_values() {
        assert_eq!([0, 1, 2, 3, 4, 5].map(pad4), [0, 3, 2, 1, 0, 3]);
    }
}
