//! Error-injection helpers for tests: flip one bit of a block's data or of its
//! tuple, or overwrite a tuple, in DIX or DIF buffers.
//!
//! Tuple bits are numbered 0..64 from the most significant bit of byte 0:
//! bits 0..16 are the guard, 16..32 the app tag, 32..64 the ref tag. Data bits
//! are numbered the same way within the block (0..interval*8).

use crate::error::LayoutError;
use crate::tuple::{Tuple, TUPLE_SIZE};

fn flip(buf: &mut [u8], offset: Option<usize>, bit: u32, block: u64) -> Result<(), LayoutError> {
    let byte = offset
        .and_then(|o| o.checked_add((bit / 8) as usize))
        .and_then(|o| buf.get_mut(o))
        .ok_or(LayoutError::OutOfRange { block, bit })?;
    *byte ^= 0x80 >> (bit % 8);
    Ok(())
}

fn block_offset(block: u64, stride: usize) -> Option<usize> {
    usize::try_from(block).ok()?.checked_mul(stride)
}

/// Flips data bit `bit` of block `block` of a DIX data buffer.
pub fn flip_dix_data_bit(
    data: &mut [u8],
    interval: u32,
    block: u64,
    bit: u32,
) -> Result<(), LayoutError> {
    if bit >= interval * 8 {
        return Err(LayoutError::OutOfRange { block, bit });
    }
    flip(data, block_offset(block, interval as usize), bit, block)
}

/// Flips tuple bit `bit` (0..64) of block `block` of a DIX PI buffer.
pub fn flip_dix_pi_bit(pi: &mut [u8], block: u64, bit: u32) -> Result<(), LayoutError> {
    if bit >= 64 {
        return Err(LayoutError::OutOfRange { block, bit });
    }
    flip(pi, block_offset(block, TUPLE_SIZE), bit, block)
}

/// Flips data bit `bit` of block `block` of an interleaved buffer.
pub fn flip_dif_data_bit(
    dif: &mut [u8],
    interval: u32,
    block: u64,
    bit: u32,
) -> Result<(), LayoutError> {
    if bit >= interval * 8 {
        return Err(LayoutError::OutOfRange { block, bit });
    }
    flip(
        dif,
        block_offset(block, interval as usize + TUPLE_SIZE),
        bit,
        block,
    )
}

/// Flips tuple bit `bit` (0..64) of block `block` of an interleaved buffer.
pub fn flip_dif_pi_bit(
    dif: &mut [u8],
    interval: u32,
    block: u64,
    bit: u32,
) -> Result<(), LayoutError> {
    if bit >= 64 {
        return Err(LayoutError::OutOfRange { block, bit });
    }
    let off = block_offset(block, interval as usize + TUPLE_SIZE)
        .and_then(|o| o.checked_add(interval as usize));
    flip(dif, off, bit, block)
}

fn put(buf: &mut [u8], offset: Option<usize>, t: &Tuple, block: u64) -> Result<(), LayoutError> {
    let slot = offset
        .and_then(|o| buf.get_mut(o..o.checked_add(TUPLE_SIZE)?))
        .ok_or(LayoutError::OutOfRange { block, bit: 0 })?;
    slot.copy_from_slice(&t.to_bytes());
    Ok(())
}

/// Overwrites the tuple of block `block` of a DIX PI buffer.
pub fn set_dix_tuple(pi: &mut [u8], block: u64, t: &Tuple) -> Result<(), LayoutError> {
    put(pi, block_offset(block, TUPLE_SIZE), t, block)
}

/// Overwrites the tuple of block `block` of an interleaved buffer.
pub fn set_dif_tuple(
    dif: &mut [u8],
    interval: u32,
    block: u64,
    t: &Tuple,
) -> Result<(), LayoutError> {
    let off = block_offset(block, interval as usize + TUPLE_SIZE)
        .and_then(|o| o.checked_add(interval as usize));
    put(dif, off, t, block)
}

/// Reads the tuple of block `block` of a DIX PI buffer.
pub fn dix_tuple(pi: &[u8], block: u64) -> Option<Tuple> {
    Tuple::from_slice(pi.get(block_offset(block, TUPLE_SIZE)?..)?)
}

/// Reads the tuple of block `block` of an interleaved buffer.
pub fn dif_tuple(dif: &[u8], interval: u32, block: u64) -> Option<Tuple> {
    let off =
        block_offset(block, interval as usize + TUPLE_SIZE)?.checked_add(interval as usize)?;
    Tuple::from_slice(dif.get(off..)?)
}
