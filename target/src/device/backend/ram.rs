//! A memory backing store: data, PI tuples and a per-block mapped bitmap behind one lock.

use parking_lot::RwLock;
use t10pi::TUPLE_SIZE;

use super::{check_range, units, Backend, BackendError, LbaStatus};

#[derive(Debug)]
struct Inner {
    data: Vec<u8>,
    pi: Vec<u8>,
    /// One bit per block: set when written since the last unmap.
    mapped: Vec<u64>,
}

/// A LUN held in memory. Unmapped blocks read as zeros with 0xFF tuples.
#[derive(Debug)]
pub struct RamBackend {
    block_size: u32,
    blocks: u64,
    has_pi: bool,
    inner: RwLock<Inner>,
}

impl RamBackend {
    /// A zeroed, fully deallocated store of `blocks` blocks, with formatted PI when `pi`.
    pub fn new(block_size: u32, blocks: u64, pi: bool) -> Result<Self, BackendError> {
        if !matches!(block_size, 512 | 1024 | 2048 | 4096) {
            return Err(BackendError::Geometry(format!("block size {block_size}")));
        }
        let len = usize::try_from(blocks)
            .ok()
            .and_then(|b| b.checked_mul(block_size as usize))
            .ok_or_else(|| {
                BackendError::Geometry(format!("{blocks} blocks do not fit in memory"))
            })?;
        let pi_len = if pi { blocks as usize * TUPLE_SIZE } else { 0 };
        Ok(RamBackend {
            block_size,
            blocks,
            has_pi: pi,
            inner: RwLock::new(Inner {
                data: vec![0u8; len],
                pi: vec![0xFF; pi_len],
                mapped: vec![0u64; (blocks as usize).div_ceil(64)],
            }),
        })
    }

    fn span(&self, lba: u64, len: usize, unit: usize) -> Result<(usize, usize), BackendError> {
        let n = units(len, unit)?;
        check_range(lba, n, self.blocks)?;
        Ok((lba as usize * unit, lba as usize * unit + len))
    }
}

fn set_mapped(bits: &mut [u64], lba: u64, n: u64, on: bool) {
    for b in lba..lba + n {
        let (w, m) = ((b / 64) as usize, 1u64 << (b % 64));
        if on {
            bits[w] |= m;
        } else {
            bits[w] &= !m;
        }
    }
}

fn is_mapped(bits: &[u64], b: u64) -> bool {
    bits[(b / 64) as usize] & (1u64 << (b % 64)) != 0
}

impl Backend for RamBackend {
    fn block_size(&self) -> u32 {
        self.block_size
    }

    fn blocks(&self) -> u64 {
        self.blocks
    }

    fn has_pi(&self) -> bool {
        self.has_pi
    }

    fn read(&self, lba: u64, data: &mut [u8]) -> Result<(), BackendError> {
        let (a, b) = self.span(lba, data.len(), self.block_size as usize)?;
        data.copy_from_slice(&self.inner.read().data[a..b]);
        Ok(())
    }

    fn write(&self, lba: u64, data: &[u8], _fua: bool) -> Result<(), BackendError> {
        let (a, b) = self.span(lba, data.len(), self.block_size as usize)?;
        let mut g = self.inner.write();
        g.data[a..b].copy_from_slice(data);
        let n = (data.len() / self.block_size as usize) as u64;
        set_mapped(&mut g.mapped, lba, n, true);
        Ok(())
    }

    fn read_pi(&self, lba: u64, pi: &mut [u8]) -> Result<(), BackendError> {
        if !self.has_pi {
            return Err(BackendError::NoPi);
        }
        let (a, b) = self.span(lba, pi.len(), TUPLE_SIZE)?;
        pi.copy_from_slice(&self.inner.read().pi[a..b]);
        Ok(())
    }

    fn write_pi(&self, lba: u64, pi: &[u8], _fua: bool) -> Result<(), BackendError> {
        if !self.has_pi {
            return Err(BackendError::NoPi);
        }
        let (a, b) = self.span(lba, pi.len(), TUPLE_SIZE)?;
        self.inner.write().pi[a..b].copy_from_slice(pi);
        Ok(())
    }

    fn sync(&self) -> Result<(), BackendError> {
        Ok(())
    }

    fn unmap(&self, lba: u64, blocks: u64) -> Result<(), BackendError> {
        check_range(lba, blocks, self.blocks)?;
        let bs = self.block_size as usize;
        let mut g = self.inner.write();
        if self.has_pi {
            g.pi[lba as usize * TUPLE_SIZE..(lba + blocks) as usize * TUPLE_SIZE].fill(0xFF);
        }
        g.data[lba as usize * bs..(lba + blocks) as usize * bs].fill(0);
        set_mapped(&mut g.mapped, lba, blocks, false);
        Ok(())
    }

    fn lba_status(&self, lba: u64) -> Result<LbaStatus, BackendError> {
        check_range(lba, 1, self.blocks)?;
        let g = self.inner.read();
        let mapped = is_mapped(&g.mapped, lba);
        let run = (lba..self.blocks)
            .take_while(|&b| is_mapped(&g.mapped, b) == mapped)
            .count() as u64;
        Ok(LbaStatus {
            mapped,
            blocks: run,
        })
    }

    fn format_pi(&self) -> Result<(), BackendError> {
        if !self.has_pi {
            return Err(BackendError::NoPi);
        }
        self.inner.write().pi.fill(0xFF);
        Ok(())
    }
}
