//! The fabric frame: the one unit that crosses the socket between two soft HCAs,
//! for both the RC transport and the connection manager.
//!
//! ```text
//! offset size field        meaning
//!  0      2   magic        0x4D35 ("M5")
//!  2      1   version      1
//!  3      1   opcode       SEND 1, SEND_INV 2, WRITE 3, READ_REQ 4, READ_RESP 5,
//!                          ACK 6, NAK 7, CM_REQ 0x10, CM_REP 0x11, CM_REJ 0x12, DREQ 0x13
//!  4      4   psn          message sequence number of the request (ACK/NAK/READ_RESP:
//!                          the request they answer)
//!  8      4   qpn          sender's QP number (for traces)
//! 12      4   key          WRITE/READ_REQ: rkey; SEND_INV: rkey to invalidate;
//!                          NAK: syndrome (RNR 1, REMOTE_ACCESS 2, INVALID_REQ 3, REMOTE_OP 4)
//! 16      8   addr         WRITE/READ_REQ: remote address
//! 24      4   len          READ_REQ: bytes asked; NAK(RNR): delay in microseconds
//! 28      4   payload_len  bytes of payload that follow (at most MAX_PAYLOAD)
//! 32      n   payload      SEND/WRITE/READ_RESP data (wire view); CM private data
//! 32+n    4   icrc         CRC32C over bytes 0..32+n (as RoCE's ICRC)
//! ```
//!
//! One frame carries one whole message (no MTU segmentation); a CM frame carries at
//! most `verbs::cm::MAX_PRIVATE_DATA` bytes. A frame whose magic,
//! version, length or CRC is wrong is a transport error: the QP goes to error and
//! the connection closes; the message never completes. Its bytes never reach
//! memory, except for a bulk WRITE or READ response received in place
//! ([`crate::bulk`]), whose target memory is then undefined, as on RoCE.

use std::io::{self, Read};

/// Frame header length.
pub const HDR_LEN: usize = 32;
/// Trailer (ICRC) length.
pub const TRAILER_LEN: usize = 4;
/// Largest payload of one frame.
pub const MAX_PAYLOAD: usize = 64 << 20;
const MAGIC: u16 = 0x4d35;
const VERSION: u8 = 1;

/// Frame opcodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Op {
    /// SEND.
    Send = 1,
    /// SEND with invalidate.
    SendInv = 2,
    /// RDMA WRITE.
    Write = 3,
    /// RDMA READ request.
    ReadReq = 4,
    /// RDMA READ response.
    ReadResp = 5,
    /// Positive acknowledgement (cumulative up to `psn`).
    Ack = 6,
    /// Negative acknowledgement of `psn`.
    Nak = 7,
    /// CM connect request (private data in the payload).
    CmReq = 0x10,
    /// CM accept reply.
    CmRep = 0x11,
    /// CM reject.
    CmRej = 0x12,
    /// CM disconnect request.
    Dreq = 0x13,
}

impl Op {
    fn from_u8(v: u8) -> Option<Op> {
        Some(match v {
            1 => Op::Send,
            2 => Op::SendInv,
            3 => Op::Write,
            4 => Op::ReadReq,
            5 => Op::ReadResp,
            6 => Op::Ack,
            7 => Op::Nak,
            0x10 => Op::CmReq,
            0x11 => Op::CmRep,
            0x12 => Op::CmRej,
            0x13 => Op::Dreq,
            _ => return None,
        })
    }
}

/// NAK syndromes.
pub mod nak {
    /// Receiver not ready (no receive posted).
    pub const RNR: u32 = 1;
    /// rkey, bounds or access rights refused.
    pub const REMOTE_ACCESS: u32 = 2;
    /// Malformed request (e.g. SEND larger than the receive buffer).
    pub const INVALID_REQ: u32 = 3;
    /// Responder could not perform the operation.
    pub const REMOTE_OP: u32 = 4;
}

/// The fixed header of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Opcode.
    pub op: Op,
    /// Sequence number.
    pub psn: u32,
    /// Sender's QP number.
    pub qpn: u32,
    /// Key field.
    pub key: u32,
    /// Address field.
    pub addr: u64,
    /// Length field.
    pub len: u32,
}

impl Header {
    /// A header with only an opcode and PSN.
    pub fn new(op: Op, psn: u32) -> Header {
        Header {
            op,
            psn,
            qpn: 0,
            key: 0,
            addr: 0,
            len: 0,
        }
    }
}

/// A malformed or corrupted frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Socket error or end of stream.
    #[error("fabric I/O: {0}")]
    Io(#[from] io::Error),
    /// Bad magic or version.
    #[error("bad frame magic/version {magic:#06x}/{version}")]
    BadMagic {
        /// Magic found.
        magic: u16,
        /// Version found.
        version: u8,
    },
    /// Unknown opcode.
    #[error("unknown frame opcode {0:#x}")]
    BadOpcode(u8),
    /// Payload length over the limit.
    #[error("frame payload of {0} bytes exceeds the limit")]
    TooLong(usize),
    /// ICRC mismatch.
    #[error("frame ICRC mismatch: computed {computed:#010x}, carried {carried:#010x}")]
    BadCrc {
        /// CRC computed over the received bytes.
        computed: u32,
        /// CRC in the trailer.
        carried: u32,
    },
}

/// The ICRC (CRC32C, as RoCE's) running over a frame's bytes as they pass.
#[derive(Clone)]
pub struct Icrc(crc_fast::Digest);

impl std::fmt::Debug for Icrc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Icrc({:#010x})", self.value())
    }
}

impl Icrc {
    /// Over `first` (a frame's header).
    pub fn over(first: &[u8]) -> Icrc {
        let mut d = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi);
        d.update(first);
        Icrc(d)
    }
    /// Extends over the next bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    /// The ICRC of the bytes so far.
    pub fn value(&self) -> u32 {
        self.0.finalize() as u32
    }
}

/// The ICRC of `bytes`.
pub fn icrc(bytes: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, bytes) as u32
}

/// Builds one frame in a single buffer: header, then payload appended by the
/// caller (gathered straight from memory), then [`FrameBuilder::finish`].
#[derive(Debug)]
pub struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    /// Starts a frame expecting about `payload_hint` payload bytes.
    pub fn new(h: &Header, payload_hint: usize) -> FrameBuilder {
        let mut buf = Vec::with_capacity(HDR_LEN + payload_hint.min(MAX_PAYLOAD) + TRAILER_LEN);
        buf.extend_from_slice(&header_bytes(h, 0));
        FrameBuilder { buf }
    }

    /// Starts a frame of exactly `payload_len` payload bytes in a recycled buffer,
    /// for a caller that then writes all of [`FrameBuilder::payload_mut`]. The
    /// buffer keeps the bytes of its last frame: only what lies past them is
    /// zeroed, so a recycled 128 KiB buffer costs no clearing pass.
    pub fn sized(mut buf: Vec<u8>, h: &Header, payload_len: usize) -> FrameBuilder {
        let len = HDR_LEN + payload_len;
        buf.reserve((len + TRAILER_LEN).saturating_sub(buf.len()));
        buf.resize(len, 0);
        buf[..HDR_LEN].copy_from_slice(&header_bytes(h, 0));
        FrameBuilder { buf }
    }

    /// The payload area, to append to.
    pub fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The payload area of a [`FrameBuilder::sized`] frame, to write over.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[HDR_LEN..]
    }

    /// Fixes the payload length and appends the ICRC.
    pub fn finish(mut self) -> Vec<u8> {
        let n = (self.buf.len() - HDR_LEN) as u32;
        self.buf[28..32].copy_from_slice(&n.to_be_bytes());
        let crc = icrc(&self.buf);
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

/// The header of a frame carrying `payload_len` bytes of payload.
pub fn header_bytes(h: &Header, payload_len: usize) -> [u8; HDR_LEN] {
    let mut b = [0u8; HDR_LEN];
    b[0..2].copy_from_slice(&MAGIC.to_be_bytes());
    b[2] = VERSION;
    b[3] = h.op as u8;
    b[4..8].copy_from_slice(&h.psn.to_be_bytes());
    b[8..12].copy_from_slice(&h.qpn.to_be_bytes());
    b[12..16].copy_from_slice(&h.key.to_be_bytes());
    b[16..24].copy_from_slice(&h.addr.to_be_bytes());
    b[24..28].copy_from_slice(&h.len.to_be_bytes());
    b[28..32].copy_from_slice(&(payload_len as u32).to_be_bytes());
    b
}

/// A whole frame with a payload slice.
pub fn encode(h: &Header, payload: &[u8]) -> Vec<u8> {
    let mut b = FrameBuilder::new(h, payload.len());
    b.payload().extend_from_slice(payload);
    b.finish()
}

pub(crate) fn decode_header(b: &[u8; HDR_LEN]) -> Result<(Header, usize), FrameError> {
    let magic = u16::from_be_bytes([b[0], b[1]]);
    if magic != MAGIC || b[2] != VERSION {
        return Err(FrameError::BadMagic {
            magic,
            version: b[2],
        });
    }
    let op = Op::from_u8(b[3]).ok_or(FrameError::BadOpcode(b[3]))?;
    let w = |at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[16..24]);
    let n = w(28) as usize;
    // CM frames carry only private data, which the verbs CM caps; refusing more here
    // keeps an unauthenticated connection from sizing a large buffer.
    let cm = matches!(op, Op::CmReq | Op::CmRep | Op::CmRej | Op::Dreq);
    if n > MAX_PAYLOAD || (cm && n > verbs::cm::MAX_PRIVATE_DATA) {
        return Err(FrameError::TooLong(n));
    }
    Ok((
        Header {
            op,
            psn: w(4),
            qpn: w(8),
            key: w(12),
            addr: u64::from_be_bytes(a),
            len: w(24),
        },
        n,
    ))
}

/// Reads one frame into `payload` (reused between calls), checking the ICRC.
pub fn read_frame(r: &mut impl Read, payload: &mut Vec<u8>) -> Result<Header, FrameError> {
    let (h, n) = read_frame_into(r, payload)?;
    payload.truncate(n);
    Ok(h)
}

/// Reads one frame's payload into the first bytes of `buf`, checking the ICRC, and
/// returns the header and the payload length. `buf` only grows: a receive loop
/// that alternates small and bulk frames does not clear the bulk size again for
/// every bulk frame.
pub fn read_frame_into(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
) -> Result<(Header, usize), FrameError> {
    let (h, n, hb) = read_header(r)?;
    read_payload_into(r, &hb, n, buf)?;
    Ok((h, n))
}

/// Reads and decodes a frame header; returns it with the payload length and the
/// raw bytes (the start of the ICRC).
pub fn read_header(r: &mut impl Read) -> Result<(Header, usize, [u8; HDR_LEN]), FrameError> {
    let mut hb = [0u8; HDR_LEN];
    r.read_exact(&mut hb)?;
    let (h, n) = decode_header(&hb)?;
    Ok((h, n, hb))
}

/// Reads the `n` payload bytes and the trailer of the frame whose header is `hb`
/// into the first bytes of `buf`, checking the ICRC.
pub fn read_payload_into(
    r: &mut impl Read,
    hb: &[u8; HDR_LEN],
    n: usize,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if buf.len() < n {
        buf.resize(n, 0);
    }
    let payload = &mut buf[..n];
    // One read for the whole payload (`read_to_end` would grow its reads from
    // 8 KiB, costing several system calls and buffer copies per bulk frame).
    r.read_exact(payload)?;
    let mut crc = Icrc::over(hb);
    crc.update(payload);
    check_trailer(r, crc.value())
}

/// Reads the trailer and compares it with the ICRC `computed` over header and
/// payload.
pub fn check_trailer(r: &mut impl Read, computed: u32) -> Result<(), FrameError> {
    let mut tb = [0u8; TRAILER_LEN];
    r.read_exact(&mut tb)?;
    let carried = u32::from_be_bytes(tb);
    if computed != carried {
        return Err(FrameError::BadCrc { computed, carried });
    }
    Ok(())
}

/// Decodes one frame held entirely in `b` (tests, fuzzing).
pub fn decode(b: &[u8]) -> Result<(Header, Vec<u8>), FrameError> {
    let mut r = b;
    let mut payload = Vec::new();
    let h = read_frame(&mut r, &mut payload)?;
    if !r.is_empty() {
        return Err(FrameError::TooLong(b.len()));
    }
    Ok((h, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_bytes() {
        let h = Header {
            op: Op::Write,
            psn: 5,
            qpn: 0x11,
            key: 0x2233,
            addr: 0x1000,
            len: 0,
        };
        let f = encode(&h, b"abc");
        assert_eq!(f.len(), HDR_LEN + 3 + TRAILER_LEN);
        assert_eq!(&f[0..4], &[0x4d, 0x35, 1, 3]);
        assert_eq!(&f[28..32], &[0, 0, 0, 3]);
        assert_eq!(&f[f.len() - 4..], &icrc(&f[..f.len() - 4]).to_be_bytes());
        let (h2, p) = decode(&f).unwrap();
        assert_eq!(h2, h);
        assert_eq!(p, b"abc");
    }

    /// A frame built in a recycled buffer is the frame `encode` makes: its length,
    /// header and trailer, whatever the buffer held before (longer, shorter or
    /// empty).
    #[test]
    fn sized_frame_in_a_recycled_buffer_is_exact() {
        let h = Header {
            op: Op::ReadResp,
            psn: 9,
            qpn: 3,
            key: 0,
            addr: 0,
            len: 0,
        };
        let payload: Vec<u8> = (0..700u32).map(|i| (i * 7) as u8).collect();
        for old_len in [0, 100, 734, 4096] {
            let mut b = FrameBuilder::sized(vec![0xEE; old_len], &h, payload.len());
            assert_eq!(b.payload_mut().len(), payload.len(), "old {old_len}");
            b.payload_mut().copy_from_slice(&payload);
            assert_eq!(b.finish(), encode(&h, &payload), "old {old_len}");
        }
    }

    #[test]
    fn cm_frames_carry_at_most_the_cm_private_data_limit() {
        let max = verbs::cm::MAX_PRIVATE_DATA;
        for op in [Op::CmReq, Op::CmRep, Op::CmRej, Op::Dreq] {
            assert!(decode(&encode(&Header::new(op, 0), &vec![0x80; max])).is_ok());
            assert!(
                matches!(
                    decode(&encode(&Header::new(op, 0), &vec![0x80; max + 1])),
                    Err(FrameError::TooLong(_))
                ),
                "{op:?}"
            );
        }
        // Data frames are not held to it.
        assert!(decode(&encode(&Header::new(Op::Send, 0), &vec![0; 4096])).is_ok());
    }

    #[test]
    fn corruption_is_a_transport_error() {
        let f = encode(&Header::new(Op::Send, 1), &[0u8; 100]);
        for at in [5, 40, f.len() - 1] {
            let mut g = f.clone();
            g[at] ^= 0x10;
            assert!(
                matches!(decode(&g), Err(FrameError::BadCrc { .. })),
                "byte {at}"
            );
        }
        let mut g = f.clone();
        g[3] = 0x7f;
        assert!(matches!(decode(&g), Err(FrameError::BadOpcode(0x7f))));
        let mut g = f.clone();
        g[0] = 0;
        assert!(matches!(decode(&g), Err(FrameError::BadMagic { .. })));
        let mut g = f.clone();
        g[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(decode(&g), Err(FrameError::TooLong(_))));
        assert!(matches!(decode(&f[..20]), Err(FrameError::Io(_))));
    }
}
