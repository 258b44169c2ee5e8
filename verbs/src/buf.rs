//! Registered memory: a page-aligned, fixed-address, zero-initialised byte buffer
//! shared between the host (through a lock) and the device (through an `Arc`).

use std::alloc::{self, Layout};
use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{Result, VerbsError};

/// Alignment of every [`DmaBuf`]: one 4 KiB page, as the HCA's MTT pages.
pub const PAGE_SIZE: usize = 4096;

/// An owned, page-aligned heap allocation that never moves.
struct PageBytes {
    ptr: NonNull<u8>,
    len: usize,
}

impl PageBytes {
    fn layout(len: usize) -> Layout {
        // A zero-size allocation is not allowed by the global allocator, so an empty
        // buffer still owns one page.
        Layout::from_size_align(len.max(1), PAGE_SIZE).expect("page alignment is a power of two")
    }

    fn zeroed(len: usize) -> Result<PageBytes> {
        if len > isize::MAX as usize - PAGE_SIZE {
            return Err(VerbsError::Exhausted("memory"));
        }
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size (at least 1 byte) and a power-of-two
        // alignment, which is all `alloc_zeroed` requires.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).ok_or(VerbsError::Exhausted("memory"))?;
        Ok(PageBytes { ptr, len })
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to an allocation of at least `len` bytes that this
        // value owns exclusively and that was zero-initialised at allocation; it lives
        // until `drop`, and `&self` prevents a concurrent `&mut` through `as_mut_slice`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` guarantees this is the only reference
        // into the allocation for the returned lifetime.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PageBytes {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with exactly `Self::layout(self.len)`
        // and is freed only here, once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

// SAFETY: `PageBytes` owns its allocation like a `Box<[u8]>` does; it has no shared
// or thread-bound state, so moving it to another thread is sound.
unsafe impl Send for PageBytes {}
// SAFETY: shared access only yields `&[u8]` (via `&self`), which is `Sync`; mutation
// needs `&mut self`. This is the same reasoning as for `Box<[u8]>`.
unsafe impl Sync for PageBytes {}

/// A buffer of registrable memory.
///
/// Its address ([`DmaBuf::addr`]) is fixed for its whole life, so it can serve as the
/// I/O virtual address of memory regions. The host reads and writes it through
/// [`DmaBuf::read`]/[`DmaBuf::write`] (or the `_at` copies); the device does the same
/// from its own threads. The lock makes each access atomic with respect to the other
/// side, which is stronger than real DMA and keeps Rust's aliasing rules intact.
pub struct DmaBuf {
    bytes: RwLock<PageBytes>,
    addr: u64,
    len: usize,
}

impl fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaBuf")
            .field("addr", &format_args!("{:#x}", self.addr))
            .field("len", &self.len)
            .finish()
    }
}

impl DmaBuf {
    /// Allocates `len` zero bytes, page-aligned.
    pub fn new(len: usize) -> Result<Arc<DmaBuf>> {
        let bytes = PageBytes::zeroed(len)?;
        let addr = bytes.ptr.as_ptr() as usize as u64;
        Ok(Arc::new(DmaBuf {
            bytes: RwLock::new(bytes),
            addr,
            len,
        }))
    }

    /// Allocates a buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Result<Arc<DmaBuf>> {
        let buf = DmaBuf::new(data.len())?;
        buf.write(|b| b.copy_from_slice(data));
        Ok(buf)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer's fixed virtual address (the I/O virtual address of byte 0).
    pub fn addr(&self) -> u64 {
        self.addr
    }

    /// Runs `f` over the whole buffer, shared.
    pub fn read<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let g = self.bytes.read_recursive();
        f(g.as_slice())
    }

    /// Runs `f` over the whole buffer, exclusive.
    pub fn write<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut g = self.bytes.write();
        f(g.as_mut_slice())
    }

    fn check(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(VerbsError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies `dst.len()` bytes starting at `offset` out of the buffer.
    pub fn read_at(&self, offset: usize, dst: &mut [u8]) -> Result<()> {
        self.check(offset, dst.len())?;
        self.read(|b| dst.copy_from_slice(&b[offset..offset + dst.len()]));
        Ok(())
    }

    /// Copies `src` into the buffer at `offset`.
    pub fn write_at(&self, offset: usize, src: &[u8]) -> Result<()> {
        self.check(offset, src.len())?;
        self.write(|b| b[offset..offset + src.len()].copy_from_slice(src));
        Ok(())
    }

    /// Appends `len` bytes starting at `offset` to `out`.
    pub fn extend_into(&self, offset: usize, len: usize, out: &mut Vec<u8>) -> Result<()> {
        self.check(offset, len)?;
        self.read(|b| out.extend_from_slice(&b[offset..offset + len]));
        Ok(())
    }

    /// A copy of `len` bytes starting at `offset`.
    pub fn to_vec(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        let mut v = Vec::with_capacity(len);
        self.extend_into(offset, len, &mut v)?;
        Ok(v)
    }

    /// Fills `len` bytes starting at `offset` with `byte`.
    pub fn fill(&self, offset: usize, len: usize, byte: u8) -> Result<()> {
        self.check(offset, len)?;
        self.write(|b| b[offset..offset + len].fill(byte));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_bounded() {
        let b = DmaBuf::new(10_000).unwrap();
        assert_eq!(b.addr() % PAGE_SIZE as u64, 0);
        assert_eq!(b.len(), 10_000);
        assert!(b.read(|s| s.iter().all(|&x| x == 0)));
        b.write_at(9_990, &[7; 10]).unwrap();
        let mut out = [0u8; 10];
        b.read_at(9_990, &mut out).unwrap();
        assert_eq!(out, [7; 10]);
        assert!(matches!(
            b.write_at(9_991, &[1; 10]),
            Err(VerbsError::OutOfBounds { .. })
        ));
        assert!(matches!(
            b.read_at(usize::MAX, &mut out),
            Err(VerbsError::OutOfBounds { .. })
        ));
        assert_eq!(b.to_vec(9_995, 5).unwrap(), vec![7; 5]);
    }

    #[test]
    fn empty_buffer_is_valid() {
        let b = DmaBuf::new(0).unwrap();
        assert!(b.is_empty());
        assert_eq!(b.read(|s| s.len()), 0);
        assert!(b.write_at(0, &[]).is_ok());
    }

    #[test]
    fn shared_between_threads() {
        let b = DmaBuf::from_slice(&[1, 2, 3, 4]).unwrap();
        let b2 = Arc::clone(&b);
        let t = std::thread::spawn(move || b2.write(|s| s[0] = 9));
        t.join().unwrap();
        assert_eq!(b.to_vec(0, 4).unwrap(), vec![9, 2, 3, 4]);
    }
}
