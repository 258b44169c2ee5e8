//! Bulk payloads moved between plain registered memory and the socket without a
//! staging copy, as a real HCA's DMA engine reads and writes host memory while
//! the packet passes.
//!
//! - Out: a SEND or RDMA WRITE of at least [`BULK_MIN`] bytes whose SGEs all map
//!   plain memory becomes a [`Gathered`] frame: its payload goes to the socket
//!   straight from the posted buffers, and a retransmission reads them again.
//! - In: an RDMA WRITE or READ response of at least [`BULK_MIN`] bytes aimed at
//!   plain memory is received straight into that memory ([`recv_some`]), as
//!   much as has arrived at a time.
//!
//! - Through the signature engine: a SEND or RDMA WRITE of at least [`BULK_MIN`]
//!   bytes that reads a signature mkey is converted into the requester's one
//!   reused frame buffer when it is first sent, and kept as its work request's
//!   gather list ([`Converted`]) instead of a frame-sized copy held until the ACK;
//!   a retransmission converts it again, as a real HCA's signature engine runs on
//!   every read of host memory.
//!
//! The ICRC is computed over the bytes as they pass. A buffer's lock is held only
//! for one non-blocking socket call; waiting for the socket happens without it, so
//! two HCAs moving bulk data through the same buffers cannot deadlock. A placed
//! payload whose ICRC then fails has already reached memory: the message is never
//! acknowledged or completed and the QP goes to error, as memory targeted by a
//! failed multi-packet RoCE WRITE is undefined. Signature mkeys never take this
//! path: their data passes through the signature engine, which needs the whole
//! checked frame.

use std::io::{self, BufRead, BufReader, IoSlice, Read};
use std::sync::Arc;

use verbs::AccessFlags;

use crate::frame::{Header, Icrc, HDR_LEN};
use crate::hca::Hca;
use crate::layout::DataSeg;
use crate::mr::{Resolved, Segment};
use crate::transport::Stream;

/// Payload size from which a transfer to or from plain memory skips the staging copy.
pub const BULK_MIN: usize = 32 << 10;

/// A request frame whose payload stays in registered memory until it is written.
#[derive(Debug)]
pub struct Gathered {
    /// Header bytes (payload length filled in).
    pub head: [u8; HDR_LEN],
    /// The payload, in order.
    pub segs: Vec<Segment>,
}

/// A request frame whose payload the signature engine produces from registered
/// memory each time the frame is sent.
#[derive(Debug)]
pub struct Converted {
    /// Header (payload length filled in).
    pub header: Header,
    /// The work request's gather list.
    pub sges: Vec<DataSeg>,
    /// Payload bytes.
    pub len: usize,
}

/// A request frame as the requester keeps it until its ACK: built in one buffer,
/// gathered from memory when written, or converted again when written.
#[derive(Debug, Clone)]
pub enum OutFrame {
    /// Header, payload and ICRC in one buffer.
    Built(Arc<Vec<u8>>),
    /// Header here, payload in registered memory.
    Gathered(Arc<Gathered>),
    /// Header and gather list; the payload passes through the signature engine.
    Converted(Arc<Converted>),
}

/// A request frame as it goes to the socket.
#[derive(Debug, Clone, Copy)]
pub enum Wired<'a> {
    /// Header, payload and ICRC.
    Bytes(&'a [u8]),
    /// Header here, payload in registered memory.
    Gathered(&'a Gathered),
}

/// The plain memory behind `sges` (with rights `need`), in order, covering the
/// first `len` bytes; `None` when any of it is a signature view or is refused
/// (the copying path then reports the error as it always has).
pub fn plain_segments(
    hca: &Hca,
    pd: u32,
    sges: &[DataSeg],
    len: usize,
    need: AccessFlags,
) -> Option<Vec<Segment>> {
    let mut segs = Vec::with_capacity(sges.len());
    let mut left = len;
    for s in sges {
        if left == 0 {
            break;
        }
        let n = (s.byte_count as usize).min(left);
        match hca.mkeys.resolve(s.lkey, pd, s.addr, n as u64, need) {
            Ok(Resolved::Plain(seg)) => segs.push(seg),
            _ => return None,
        }
        left -= n;
    }
    (left == 0).then_some(segs)
}

/// The plain memory at `rkey`/`addr` for `len` bytes with rights `need`.
pub fn plain_range(
    hca: &Hca,
    pd: u32,
    rkey: u32,
    addr: u64,
    len: usize,
    need: AccessFlags,
) -> Option<Vec<Segment>> {
    match hca.mkeys.resolve(rkey, pd, addr, len as u64, need) {
        Ok(Resolved::Plain(seg)) => Some(vec![seg]),
        _ => None,
    }
}

fn layout_error() -> io::Error {
    io::Error::other("segment outside its registered buffer")
}

/// Sends `pre` (bytes already staged: earlier frames, this frame's header), then
/// the payload in `segs`, extending `crc` over the payload. Each non-blocking
/// send holds the buffer's read lock; a full socket is waited for without it when
/// `wait`. Without `wait`, what the socket does not take is left in `pre`: the
/// unsent staged bytes, then the rest of the payload copied from memory; false
/// then. True when everything was sent (`pre` is then empty).
pub fn send_from(
    stream: &Stream,
    pre: &mut Vec<u8>,
    segs: &[Segment],
    crc: &mut Icrc,
    wait: bool,
) -> io::Result<bool> {
    let mut sent_pre = 0usize;
    // Payload bytes sent so far.
    let mut done = 0usize;
    for seg in segs {
        let mut at = 0usize;
        while at < seg.len {
            let r = seg.buf.read(|b| {
                let data = b
                    .get(seg.offset + at..seg.offset + seg.len)
                    .ok_or_else(layout_error)?;
                let head = &pre[sent_pre..];
                let n = stream.send_now(&[IoSlice::new(head), IoSlice::new(data)])?;
                let of_data = n.saturating_sub(head.len());
                crc.update(&data[..of_data]);
                Ok::<_, io::Error>((n - of_data, of_data))
            });
            match r {
                Ok((of_pre, of_data)) => {
                    sent_pre += of_pre;
                    at += of_data;
                    done += of_data;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && wait => stream.wait(false)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pre.drain(..sent_pre);
                    copy_from(pre, segs, done, crc)?;
                    return Ok(false);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    pre.drain(..sent_pre);
    Ok(true)
}

/// Appends the payload in `segs` from payload byte `from` on to `out`, extending
/// `crc` over it.
pub fn copy_from(
    out: &mut Vec<u8>,
    segs: &[Segment],
    from: usize,
    crc: &mut Icrc,
) -> io::Result<()> {
    let mut base = 0usize;
    for seg in segs {
        let end = base + seg.len;
        if from < end {
            let skip = from.saturating_sub(base);
            seg.buf.read(|b| {
                let data = b
                    .get(seg.offset + skip..seg.offset + seg.len)
                    .ok_or_else(layout_error)?;
                crc.update(data);
                out.extend_from_slice(data);
                Ok::<_, io::Error>(())
            })?;
        }
        base = end;
    }
    Ok(())
}

/// Receives what has arrived of an `n`-byte payload into `segs` (which cover at
/// least `n` bytes), from payload offset `*at` on: first what `r` has buffered,
/// then straight from the socket, extending `crc` over the payload. `r` must never
/// wait (its reads give `WouldBlock` when nothing has arrived), and neither does
/// this: true once all `n` bytes are placed, false when the socket has nothing
/// more now (call again from `*at` when it has). Each receive holds the buffer's
/// write lock for one non-blocking socket call.
pub fn recv_some<R: Read>(
    r: &mut BufReader<R>,
    segs: &[Segment],
    at: &mut usize,
    n: usize,
    crc: &mut Icrc,
) -> io::Result<bool> {
    // Payload offset of the segment at hand.
    let mut base = 0usize;
    for seg in segs {
        if base >= n {
            break;
        }
        let end = base + seg.len.min(n - base);
        while *at < end {
            let (from, to) = (seg.offset + *at - base, seg.offset + end - base);
            let buffered = r.buffer().len();
            let got = seg.buf.write(|b| {
                let dst = b.get_mut(from..to).ok_or_else(layout_error)?;
                let k = if buffered > 0 {
                    let k = buffered.min(dst.len());
                    dst[..k].copy_from_slice(&r.buffer()[..k]);
                    k
                } else {
                    r.get_mut().read(dst)?
                };
                crc.update(&dst[..k]);
                Ok::<_, io::Error>(k)
            });
            match got {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => {
                    if buffered > 0 {
                        r.consume(k);
                    }
                    *at += k;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        base = end;
    }
    if *at < n {
        // The segments end before the payload does.
        return Err(layout_error());
    }
    Ok(true)
}
