//! The mkey table (device side): memory keys, their translation to registered
//! buffers, access checks, and the signature binding of signature mkeys.
//!
//! Every entry holds `Arc`s of the buffers it maps, so memory reachable through a
//! key stays allocated for as long as the key exists or an operation in flight
//! holds a lookup result.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use verbs::sig::SigDomain;
use verbs::{AccessFlags, DmaBuf};

use crate::hca::IdMap;

/// A contiguous piece of registered memory.
#[derive(Clone, Debug)]
pub struct Segment {
    /// The buffer.
    pub buf: Arc<DmaBuf>,
    /// Offset of the piece in the buffer.
    pub offset: usize,
    /// Length of the piece.
    pub len: usize,
}

impl Segment {
    /// A sub-range of this segment (caller checked bounds).
    pub fn sub(&self, off: usize, len: usize) -> Segment {
        Segment {
            buf: Arc::clone(&self.buf),
            offset: self.offset + off,
            len,
        }
    }
}

/// The signature binding of a registered signature mkey (from UMR + BSF + PSVs).
#[derive(Clone, Debug)]
pub struct SigBinding {
    /// Data memory (DIF-interleaved when mem is DIF and `prot` is `None`).
    pub data: Segment,
    /// Separate PI memory (DIX).
    pub prot: Option<Segment>,
    /// Memory domain.
    pub mem: SigDomain,
    /// Wire domain.
    pub wire: SigDomain,
    /// Per-byte check mask.
    pub check_mask: u8,
    /// Protection interval.
    pub interval: u32,
    /// Number of blocks covered.
    pub blocks: u64,
}

impl SigBinding {
    /// Bytes per block in the wire view.
    pub fn wire_block(&self) -> u64 {
        u64::from(self.interval) + if self.wire.dif().is_some() { 8 } else { 0 }
    }
    /// Bytes per block of the memory data buffer.
    pub fn mem_block(&self) -> u64 {
        u64::from(self.interval)
            + if self.mem.dif().is_some() && self.prot.is_none() {
                8
            } else {
                0
            }
    }
}

/// What a key maps.
#[derive(Clone, Debug)]
pub enum Mapping {
    /// A directly registered buffer range.
    Direct(Segment),
    /// A signature view.
    Sig(Arc<SigBinding>),
}

/// Kind of mkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MkeyKind {
    /// `reg_mr`.
    Direct,
    /// `alloc_mr` (fast registration).
    FastReg,
    /// `alloc_mr_integrity`.
    Sig,
}

/// One mkey.
#[derive(Clone, Debug)]
pub struct Mkey {
    /// Key (index << 8 | variant).
    pub key: u32,
    /// Kind.
    pub kind: MkeyKind,
    /// Protection domain.
    pub pd: u32,
    /// Access rights.
    pub access: AccessFlags,
    /// I/O virtual address of byte 0.
    pub iova: u64,
    /// Length (wire view for a signature mkey).
    pub len: u64,
    /// Mapping, `None` while free (unbound or invalidated).
    pub mapping: Option<Mapping>,
    /// PSV indices (memory, wire) of a signature mkey.
    pub psv: (u32, u32),
}

/// Why an access through a key was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessError {
    /// Unknown, free or invalidated key, or another PD.
    BadKey,
    /// Outside the registered range.
    Bounds,
    /// Access rights missing.
    Rights,
    /// Signature view accessed off block boundaries.
    Unaligned,
}

/// A successful translation.
#[derive(Clone, Debug)]
pub enum Resolved {
    /// Plain memory.
    Plain(Segment),
    /// A range of a signature view: blocks `first_block..first_block + blocks`.
    Sig {
        /// The binding.
        binding: Arc<SigBinding>,
        /// The signature mkey.
        mkey: u32,
        /// First block of the range.
        first_block: u64,
        /// Number of blocks.
        blocks: u64,
    },
}

/// The table.
#[derive(Debug, Default)]
pub struct MkeyTable {
    map: RwLock<IdMap<Arc<Mkey>>>,
    next_index: AtomicU32,
}

impl MkeyTable {
    /// Creates a key of `kind` with `mapping`.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        kind: MkeyKind,
        pd: u32,
        access: AccessFlags,
        iova: u64,
        len: u64,
        mapping: Option<Mapping>,
        psv: (u32, u32),
    ) -> u32 {
        let index = self.next_index.fetch_add(1, Ordering::Relaxed) + 1;
        let key = (index << 8) | (index.wrapping_mul(0x9d) & 0xff);
        let m = Mkey {
            key,
            kind,
            pd,
            access,
            iova,
            len,
            mapping,
            psv,
        };
        self.map.write().insert(key, Arc::new(m));
        key
    }

    /// Reads a key's state with `f` (under the table's read lock, without taking a
    /// reference that a later [`MkeyTable::update`] would have to copy around).
    pub fn inspect<R>(&self, key: u32, f: impl FnOnce(&Mkey) -> R) -> Option<R> {
        self.map.read().get(&key).map(|m| f(m))
    }

    /// Changes a key's state (UMR, SET_PSV): in place when no transfer holds the
    /// key's current state, else on a copy that replaces it (transfers in flight
    /// keep the state they resolved).
    pub fn update(&self, key: u32, f: impl FnOnce(&mut Mkey)) -> bool {
        match self.map.write().get_mut(&key) {
            Some(m) => {
                f(Arc::make_mut(m));
                true
            }
            None => false,
        }
    }

    /// Remote invalidation (SEND_WITH_INV): only fast-registration and signature
    /// keys of PD `pd` qualify. Returns whether the key was invalidated.
    pub fn invalidate_remote(&self, key: u32, pd: u32) -> bool {
        let mut map = self.map.write();
        match map.get(&key) {
            Some(m) if m.pd == pd && m.kind != MkeyKind::Direct => {
                let mut n = (**m).clone();
                n.mapping = None;
                map.insert(key, Arc::new(n));
                true
            }
            _ => false,
        }
    }

    /// Destroys a key.
    pub fn remove(&self, key: u32) -> Option<Arc<Mkey>> {
        self.map.write().remove(&key)
    }

    /// Translates `len` bytes at `addr` through `key` for PD `pd`, requiring `need`
    /// rights (local read is always allowed).
    pub fn resolve(
        &self,
        key: u32,
        pd: u32,
        addr: u64,
        len: u64,
        need: AccessFlags,
    ) -> Result<Resolved, AccessError> {
        let map = self.map.read();
        let m = map.get(&key).ok_or(AccessError::BadKey)?;
        if m.pd != pd {
            return Err(AccessError::BadKey);
        }
        let mapping = m.mapping.as_ref().ok_or(AccessError::BadKey)?;
        if !m.access.contains(need) {
            return Err(AccessError::Rights);
        }
        let off = addr.checked_sub(m.iova).ok_or(AccessError::Bounds)?;
        if off.checked_add(len).ends_past(m.len) {
            return Err(AccessError::Bounds);
        }
        match mapping {
            Mapping::Direct(seg) => Ok(Resolved::Plain(seg.sub(off as usize, len as usize))),
            Mapping::Sig(b) => {
                let wb = b.wire_block();
                if off % wb != 0 || !len.is_multiple_of(wb) {
                    return Err(AccessError::Unaligned);
                }
                Ok(Resolved::Sig {
                    binding: Arc::clone(b),
                    mkey: key,
                    first_block: off / wb,
                    blocks: len / wb,
                })
            }
        }
    }
}

trait OptExt {
    fn ends_past(self, limit: u64) -> bool;
}

impl OptExt for Option<u64> {
    fn ends_past(self, limit: u64) -> bool {
        match self {
            Some(end) => end > limit,
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_checks_key_pd_bounds_rights() {
        let t = MkeyTable::default();
        let buf = DmaBuf::new(4096).unwrap();
        let seg = Segment {
            buf: Arc::clone(&buf),
            offset: 0,
            len: 4096,
        };
        let k = t.create(
            MkeyKind::Direct,
            1,
            AccessFlags::REMOTE_READ,
            buf.addr(),
            4096,
            Some(Mapping::Direct(seg)),
            (0, 0),
        );
        let a = buf.addr();
        assert!(
            matches!(t.resolve(k, 1, a + 100, 100, AccessFlags::REMOTE_READ), Ok(Resolved::Plain(s)) if s.offset == 100 && s.len == 100)
        );
        assert_eq!(
            t.resolve(k, 2, a, 1, AccessFlags::NONE).unwrap_err(),
            AccessError::BadKey
        );
        assert_eq!(
            t.resolve(k ^ 1, 1, a, 1, AccessFlags::NONE).unwrap_err(),
            AccessError::BadKey
        );
        assert_eq!(
            t.resolve(k, 1, a + 4000, 97, AccessFlags::NONE)
                .unwrap_err(),
            AccessError::Bounds
        );
        assert_eq!(
            t.resolve(k, 1, a - 1, 1, AccessFlags::NONE).unwrap_err(),
            AccessError::Bounds
        );
        assert_eq!(
            t.resolve(k, 1, a, u64::MAX, AccessFlags::NONE).unwrap_err(),
            AccessError::Bounds
        );
        assert_eq!(
            t.resolve(k, 1, a, 1, AccessFlags::REMOTE_WRITE)
                .unwrap_err(),
            AccessError::Rights
        );
        assert!(t.update(k, |m| m.mapping = None));
        assert_eq!(
            t.resolve(k, 1, a, 1, AccessFlags::NONE).unwrap_err(),
            AccessError::BadKey
        );
    }
}
