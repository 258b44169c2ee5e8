//! The signature engine: converts a range of blocks of a signature MR between its
//! memory view and its wire view on the data path (INSERT, STRIP, PASS), checking
//! the source domain's PI with the MR's check mask. All PI math is `t10pi`'s.
//!
//! A failed check does not stop the transfer: the output is produced anyway (with
//! checks off) and the first failing block is reported for a SIGERR CQE.

use std::ops::Range;
use std::sync::Arc;

use t10pi::{Engine, PiBuf, PiBufMut, PiError};
use verbs::sig::SigDomain;
use verbs::DmaBuf;

use crate::fault::{FaultSpec, FaultTarget};
use crate::mr::SigBinding;

/// The engine could not run: the binding's buffers do not fit its geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature layout: {0}")]
pub struct SigLayoutError(#[from] pub t10pi::LayoutError);

fn layout(e: t10pi::Error) -> Result<Option<PiError>, SigLayoutError> {
    match e {
        t10pi::Error::Pi(p) => Ok(Some(p)),
        t10pi::Error::Layout(l) => Err(SigLayoutError(l)),
    }
}

/// Flips the fault's bit in a block-range view. `interleaved`: PI follows each
/// interval inside `data`; otherwise PI (if any) is in `pi`.
fn flip(
    t: &FaultTarget,
    rel: usize,
    iv: usize,
    has_pi: bool,
    interleaved: bool,
    data: &mut [u8],
    pi: Option<&mut [u8]>,
) {
    let stride = if interleaved { iv + 8 } else { iv };
    match t.pi_byte() {
        None => {
            if let FaultTarget::Data { byte, bit } = *t {
                if let Some(b) = data.get_mut(rel * stride + byte as usize) {
                    *b ^= 1 << (bit & 7);
                }
            }
        }
        Some((tb, mask)) if has_pi => {
            let slot = if interleaved {
                data.get_mut(rel * stride + iv + tb)
            } else {
                pi.and_then(|p| p.get_mut(rel * 8 + tb))
            };
            if let Some(b) = slot {
                *b ^= mask;
            }
        }
        Some(_) => {}
    }
}

fn mem_to_wire(
    eng: &Engine,
    b: &SigBinding,
    mask: u8,
    data: &[u8],
    pi: Option<&[u8]>,
    dst: &mut [u8],
    first: u64,
) -> Result<(), t10pi::Error> {
    match (&b.mem, &b.wire) {
        (SigDomain::None, SigDomain::None) => {
            dst.copy_from_slice(&data[..dst.len()]);
            Ok(())
        }
        (SigDomain::None, SigDomain::T10Dif(w)) => Ok(eng.insert(w, data, dst, first)?),
        (SigDomain::T10Dif(m), SigDomain::None) => match pi {
            None => eng.strip(m, mask, data, dst, first),
            Some(pi) => {
                eng.verify(m, mask, data, pi, first)?;
                dst.copy_from_slice(&data[..dst.len()]);
                Ok(())
            }
        },
        (SigDomain::T10Dif(m), SigDomain::T10Dif(w)) => {
            let src = match pi {
                None => PiBuf::Dif(data),
                Some(pi) => PiBuf::Dix { data, pi },
            };
            eng.pass(m, mask, src, w, PiBufMut::Dif(dst), first)
        }
    }
}

fn wire_to_mem(
    eng: &Engine,
    b: &SigBinding,
    mask: u8,
    wire: &[u8],
    data: &mut [u8],
    pi: Option<&mut [u8]>,
    first: u64,
) -> Result<(), t10pi::Error> {
    match (&b.mem, &b.wire) {
        (SigDomain::None, SigDomain::None) => {
            data.copy_from_slice(&wire[..data.len()]);
            Ok(())
        }
        (SigDomain::None, SigDomain::T10Dif(w)) => eng.strip(w, mask, wire, data, first),
        (SigDomain::T10Dif(m), SigDomain::None) => match pi {
            None => Ok(eng.insert(m, wire, data, first)?),
            Some(pi) => {
                data.copy_from_slice(&wire[..data.len()]);
                Ok(eng.generate(m, wire, pi, first)?)
            }
        },
        (SigDomain::T10Dif(m), SigDomain::T10Dif(w)) => {
            let dst = match pi {
                None => PiBufMut::Dif(data),
                Some(pi) => PiBufMut::Dix { data, pi },
            };
            eng.pass(w, mask, PiBuf::Dif(wire), m, dst, first)
        }
    }
}

/// Memory view -> wire view of blocks `first..first + n`, written over all of
/// `dst` (which must be exactly their wire length: every byte is written, so a
/// recycled frame buffer needs no clearing first). `fault` (already matched to
/// this range) is applied to a copy of the memory view before the check.
pub fn outbound(
    eng: &Engine,
    b: &SigBinding,
    first: u64,
    n: u64,
    dst: &mut [u8],
    fault: Option<&FaultSpec>,
) -> Result<Option<PiError>, SigLayoutError> {
    let iv = b.interval as usize;
    let nb = n as usize;
    let mem_block = b.mem_block() as usize;
    let doff = b.data.offset + first as usize * mem_block;
    let dlen = nb * mem_block;
    let stride = b.wire_block() as usize;
    if dst.len() != nb * stride {
        return Err(SigLayoutError(if b.wire.dif().is_some() {
            t10pi::LayoutError::DifNotMultiple {
                len: dst.len(),
                stride,
            }
        } else {
            t10pi::LayoutError::DataNotMultiple {
                len: dst.len(),
                interval: b.interval,
            }
        }));
    }
    let has_pi = b.mem.dif().is_some();
    let run = |data: &[u8],
               pi: Option<&[u8]>,
               dst: &mut [u8]|
     -> Result<Option<PiError>, SigLayoutError> {
        match mem_to_wire(eng, b, b.check_mask, data, pi, dst, first) {
            Ok(()) => Ok(None),
            Err(e) => {
                let r = layout(e)?;
                // The transfer goes on: produce the output without checks.
                mem_to_wire(eng, b, 0, data, pi, dst, first).map_err(|e| match e {
                    t10pi::Error::Layout(l) => SigLayoutError(l),
                    t10pi::Error::Pi(_) => SigLayoutError(t10pi::LayoutError::BadInterval(0)),
                })?;
                Ok(r)
            }
        }
    };
    b.data.buf.read(|d| {
        let data = &d[doff..doff + dlen];
        let with_pi = |pi: Option<&[u8]>, dst: &mut [u8]| match fault {
            None => run(data, pi, dst),
            Some(f) => {
                let mut data = data.to_vec();
                let mut pi = pi.map(<[u8]>::to_vec);
                let rel = (f.block - first) as usize;
                flip(
                    &f.target,
                    rel,
                    iv,
                    has_pi,
                    has_pi && b.prot.is_none(),
                    &mut data,
                    pi.as_deref_mut(),
                );
                run(&data, pi.as_deref(), dst)
            }
        };
        match &b.prot {
            None => with_pi(None, dst),
            Some(p) => p.buf.read(|pb| {
                let poff = p.offset + first as usize * 8;
                with_pi(Some(&pb[poff..poff + nb * 8]), dst)
            }),
        }
    })
}

/// Wire view -> memory view of blocks `first..first + n` (`wire` holds exactly
/// those blocks; the fault, if any, is flipped in it before the check).
pub fn inbound(
    eng: &Engine,
    b: &SigBinding,
    first: u64,
    wire: &mut [u8],
    fault: Option<&FaultSpec>,
) -> Result<Option<PiError>, SigLayoutError> {
    let iv = b.interval as usize;
    let wb = b.wire_block() as usize;
    let nb = wire.len() / wb;
    if let Some(f) = fault {
        let wire_pi = b.wire.dif().is_some();
        flip(
            &f.target,
            (f.block - first) as usize,
            iv,
            wire_pi,
            wire_pi,
            wire,
            None,
        );
    }
    let wire: &[u8] = wire;
    let mem_block = b.mem_block() as usize;
    let doff = b.data.offset + first as usize * mem_block;
    let dlen = nb * mem_block;
    let run = |data: &mut [u8], pi: Option<&mut [u8]>| -> Result<Option<PiError>, SigLayoutError> {
        let mut pi = pi;
        match wire_to_mem(eng, b, b.check_mask, wire, data, pi.as_deref_mut(), first) {
            Ok(()) => Ok(None),
            Err(e) => {
                let r = layout(e)?;
                wire_to_mem(eng, b, 0, wire, data, pi, first).map_err(|e| match e {
                    t10pi::Error::Layout(l) => SigLayoutError(l),
                    t10pi::Error::Pi(_) => SigLayoutError(t10pi::LayoutError::BadInterval(0)),
                })?;
                Ok(r)
            }
        }
    };
    match &b.prot {
        None => b.data.buf.write(|d| run(&mut d[doff..doff + dlen], None)),
        Some(p) => {
            let poff = p.offset + first as usize * 8;
            let placed = split_pair(
                &b.data.buf,
                doff..doff + dlen,
                &p.buf,
                poff..poff + nb * 8,
                |data, pi| run(data, Some(pi)),
            );
            match placed {
                Some(r) => r,
                None => {
                    // Two buffers, or one with data and PI overlapping: convert
                    // into scratch, then store each piece under its own lock.
                    let mut data = vec![0u8; dlen];
                    let mut pi = vec![0u8; nb * 8];
                    let r = run(&mut data, Some(&mut pi))?;
                    b.data
                        .buf
                        .write(|d| d[doff..doff + dlen].copy_from_slice(&data));
                    p.buf
                        .write(|pb| pb[poff..poff + nb * 8].copy_from_slice(&pi));
                    Ok(r)
                }
            }
        }
    }
}

/// Runs `f` over range `ra` and range `rb` of one buffer (data and PI of a DIX
/// binding over a single buffer, as a target registers its command buffer) under
/// one exclusive lock; `None` when they are in two buffers or overlap.
///
/// Two buffers go through scratch instead (and are stored one lock at a time):
/// measured side by side, converting straight into an initiator's separate data
/// and PI buffers made 128 KiB PASS reads 4-6 % slower than converting into
/// scratch and copying out, while a single command buffer gains 2-6 % on PASS
/// and INSERT writes.
fn split_pair<R>(
    a: &Arc<DmaBuf>,
    ra: Range<usize>,
    b: &Arc<DmaBuf>,
    rb: Range<usize>,
    f: impl FnOnce(&mut [u8], &mut [u8]) -> R,
) -> Option<R> {
    if !Arc::ptr_eq(a, b) {
        return None;
    }
    if ra.end <= rb.start {
        Some(a.write(|x| {
            let (lo, hi) = x.split_at_mut(rb.start);
            f(&mut lo[ra], &mut hi[..rb.len()])
        }))
    } else if rb.end <= ra.start {
        Some(a.write(|x| {
            let (lo, hi) = x.split_at_mut(ra.start);
            f(&mut hi[..ra.len()], &mut lo[rb])
        }))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use t10pi::{check_mask, GuardType, T10DifDomain};
    use verbs::DmaBuf;

    use super::*;
    use crate::mr::Segment;

    fn segment(len: usize, seed: u8) -> Segment {
        let buf = DmaBuf::new(len).unwrap();
        buf.write(|b| {
            for (i, x) in b.iter_mut().enumerate() {
                *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
            }
        });
        Segment {
            buf,
            offset: 0,
            len,
        }
    }

    /// Wire view -> DIX memory places the same data and tuples whether data and PI
    /// share one buffer (a target's command buffer, converted in place), live in
    /// two (an initiator's host buffers) or overlap (both through scratch); the
    /// memory view goes back out as the same wire view, and a bad tuple is
    /// reported at its block.
    #[test]
    fn inbound_dix_places_data_and_pi_in_shared_or_separate_buffers() {
        let (iv, blocks) = (512usize, 6usize);
        let dom = T10DifDomain::type1(GuardType::Crc, iv as u32, 100);
        let dif = SigDomain::T10Dif(dom);
        let host = segment(iv * blocks, 3).buf.to_vec(0, iv * blocks).unwrap();
        let mut wire = vec![0u8; (iv + 8) * blocks];
        t10pi::insert(&dom, &host, &mut wire, 0).unwrap();
        let mut pi = vec![0u8; 8 * blocks];
        t10pi::generate(&dom, &host, &mut pi, 0).unwrap();
        let dlen = iv * blocks;
        let shared = DmaBuf::new(dlen + 8 * blocks + 64).unwrap();
        let (x, y) = (DmaBuf::new(dlen).unwrap(), DmaBuf::new(dlen).unwrap());
        let seg = |buf: &Arc<DmaBuf>, offset, len| Segment {
            buf: Arc::clone(buf),
            offset,
            len,
        };
        let layouts = [
            (
                "shared, PI after data",
                seg(&shared, 0, dlen),
                seg(&shared, dlen + 64, 8 * blocks),
            ),
            (
                "shared, PI before data",
                seg(&shared, 8 * blocks + 64, dlen),
                seg(&shared, 0, 8 * blocks),
            ),
            ("separate", seg(&x, 0, dlen), seg(&y, 0, 8 * blocks)),
            (
                "separate, other order",
                seg(&y, 0, dlen),
                seg(&x, 0, 8 * blocks),
            ),
        ];
        let eng = Engine::new();
        for (name, data, prot) in layouts {
            let b = SigBinding {
                data: data.clone(),
                prot: Some(prot.clone()),
                mem: dif,
                wire: dif,
                check_mask: check_mask::ALL,
                interval: iv as u32,
                blocks: blocks as u64,
            };
            // In two pieces, as RDMA operations split on block boundaries.
            let (w0, w1) = wire.split_at(2 * (iv + 8));
            assert_eq!(
                inbound(&eng, &b, 0, &mut w0.to_vec(), None),
                Ok(None),
                "{name}"
            );
            assert_eq!(
                inbound(&eng, &b, 2, &mut w1.to_vec(), None),
                Ok(None),
                "{name}"
            );
            assert_eq!(data.buf.to_vec(data.offset, dlen).unwrap(), host, "{name}");
            assert_eq!(
                prot.buf.to_vec(prot.offset, 8 * blocks).unwrap(),
                pi,
                "{name}"
            );
            let mut out = vec![0u8; wire.len()];
            assert_eq!(
                outbound(&eng, &b, 0, blocks as u64, &mut out, None),
                Ok(None)
            );
            assert_eq!(out, wire, "{name}");
            let mut bad = wire.clone();
            bad[4 * (iv + 8) + iv] ^= 1;
            let e = inbound(&eng, &b, 0, &mut bad, None)
                .unwrap()
                .expect("a guard error");
            assert_eq!(e.block, 4, "{name}");
        }
        // PI overlapping the data in one buffer: placed through scratch, the tuples
        // (stored last) intact.
        let b = SigBinding {
            data: seg(&shared, 0, dlen),
            prot: Some(seg(&shared, dlen - 8, 8 * blocks)),
            mem: dif,
            wire: dif,
            check_mask: check_mask::ALL,
            interval: iv as u32,
            blocks: blocks as u64,
        };
        assert_eq!(inbound(&eng, &b, 0, &mut wire.clone(), None), Ok(None));
        assert_eq!(shared.to_vec(dlen - 8, 8 * blocks).unwrap(), pi);
    }

    /// The wire view of every domain pair and memory layout is written over all of
    /// the destination: a destination holding anything beforehand (a recycled
    /// frame buffer) ends up with the same bytes; a destination of the wrong length
    /// is refused.
    #[test]
    fn outbound_writes_every_byte_of_the_destination() {
        let (iv, blocks) = (512usize, 4u64);
        let dif = SigDomain::T10Dif(T10DifDomain::type1(GuardType::Crc, iv as u32, 7));
        let cases = [
            (SigDomain::None, SigDomain::None, false),
            (SigDomain::None, dif, false),
            (dif, SigDomain::None, false),
            (dif, SigDomain::None, true),
            (dif, dif, false),
            (dif, dif, true),
        ];
        let eng = Engine::new();
        for (mem, wire, dix) in cases {
            let mem_block = iv + if mem.dif().is_some() && !dix { 8 } else { 0 };
            let b = SigBinding {
                data: segment(mem_block * blocks as usize, 1),
                prot: dix.then(|| segment(8 * blocks as usize, 2)),
                mem,
                wire,
                check_mask: check_mask::ALL,
                interval: iv as u32,
                blocks,
            };
            let len = (b.wire_block() * blocks) as usize;
            let views: Vec<Vec<u8>> = [0x00u8, 0xFF]
                .into_iter()
                .map(|fill| {
                    let mut dst = vec![fill; len];
                    outbound(&eng, &b, 0, blocks, &mut dst, None).unwrap();
                    dst
                })
                .collect();
            assert_eq!(views[0], views[1], "{mem:?} -> {wire:?} dix={dix}");
            let mut short = vec![0; len - 1];
            assert!(outbound(&eng, &b, 0, blocks, &mut short, None).is_err());
        }
    }
}
