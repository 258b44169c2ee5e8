//! PI operations over a whole transfer of N protection intervals: generate,
//! verify, INSERT, STRIP and PASS over DIX (separate data and PI buffers) and
//! DIF (tuple interleaved after each interval) layouts.
//!
//! Conventions shared by every operation:
//! - `first_block` is the index, within the whole transfer, of the first block
//!   given; it sets the ref tags (`ref_tag + block` when remapped) and the
//!   `block`/`wire_offset` of errors, so a transfer may be processed in
//!   block-aligned pieces with the same results as one call.
//! - The block count comes from the source: a data buffer must be a whole number
//!   of intervals, an interleaved buffer a whole number of `interval + 8`
//!   strides. Other buffers must be at least as long as those blocks need; extra
//!   bytes are neither read nor written.
//! - Escapes are decided by [`T10DifDomain::is_escaped`] of the checking domain;
//!   an escaped block is not checked at all.
//! - Checks use the per-byte `check_mask` ([`crate::check_mask`]); the app tag
//!   comparison is further masked by `apptag_check_mask`.
//! - On a check failure the error names the FIRST failing block; whether blocks
//!   of the destination were already written at that point is unspecified
//!   (currently: every block before the failing one is, and the failing one may
//!   be), so a caller must treat the whole destination as invalid.

use crate::crc16::{CrcImpl, Kernel, Portable};
use crate::csum::ip_checksum_seeded;
use crate::domain::{check_interval, GuardType, T10DifDomain};
use crate::error::{Error, LayoutError, PiError, PiErrorKind};
use crate::tuple::{Tuple, TUPLE_SIZE};

/// Source buffers of a transfer, in either layout.
#[derive(Clone, Copy, Debug)]
pub enum PiBuf<'a> {
    /// Data (N x interval) and PI (N x 8) in separate buffers.
    Dix {
        /// Protection intervals back to back.
        data: &'a [u8],
        /// One 8-byte tuple per interval.
        pi: &'a [u8],
    },
    /// N x (interval + 8): each interval followed by its tuple.
    Dif(&'a [u8]),
}

/// Destination buffers of a transfer, in either layout.
#[derive(Debug)]
pub enum PiBufMut<'a> {
    /// Data (N x interval) and PI (N x 8) in separate buffers.
    Dix {
        /// Protection intervals back to back.
        data: &'a mut [u8],
        /// One 8-byte tuple per interval.
        pi: &'a mut [u8],
    },
    /// N x (interval + 8): each interval followed by its tuple.
    Dif(&'a mut [u8]),
}

/// Which bits of each tuple field are compared, from a per-byte check mask.
#[derive(Clone, Copy, Debug)]
struct Checks {
    guard: u16,
    app: u16,
    reft: u32,
}

impl Checks {
    fn new(mask: u8, dom: &T10DifDomain) -> Checks {
        let byte = |bit: u8, m: u32| if mask & bit != 0 { m } else { 0 };
        Checks {
            guard: (byte(0x80, 0xFF00) | byte(0x40, 0x00FF)) as u16,
            app: (byte(0x20, 0xFF00) | byte(0x10, 0x00FF)) as u16 & dom.apptag_check_mask,
            reft: byte(0x08, 0xFF00_0000)
                | byte(0x04, 0x00FF_0000)
                | byte(0x02, 0x0000_FF00)
                | byte(0x01, 0x0000_00FF),
        }
    }
}

/// The hot-loop form of a tuple check: the whole tuple as one big-endian u64,
/// compared with the expected tuple under a 64-bit mask, escapes as one masked
/// compare, the expected ref tag advanced per block. A handful of
/// instructions per block, which matters because a 512-byte block's CRC is
/// only a few dozen; a mismatch is then explained by [`check_tuple`].
#[derive(Clone, Copy, Debug)]
struct FastCheck {
    mask: u64,
    app: u64,
    ref_tag: u32,
    ref_inc: u32,
    esc_mask: u64,
    esc_val: u64,
}

impl FastCheck {
    fn new(dom: &T10DifDomain, c: Checks, first_block: u64) -> FastCheck {
        let (esc_mask, esc_val) = match (dom.app_escape, dom.ref_escape) {
            (true, true) => (0x0000_FFFF_FFFF_FFFF, 0x0000_FFFF_FFFF_FFFF),
            (true, false) => (0x0000_FFFF_0000_0000, 0x0000_FFFF_0000_0000),
            // Never escaped: no masked value equals 1 under mask 0.
            (false, _) => (0, 1),
        };
        FastCheck {
            mask: u64::from(c.guard) << 48 | u64::from(c.app) << 32 | u64::from(c.reft),
            app: u64::from(dom.app_tag) << 32,
            ref_tag: dom.ref_tag_for(first_block),
            ref_inc: u32::from(dom.ref_remap),
            esc_mask,
            esc_val,
        }
    }

    /// Mismatch bits of the next block's tuple `t` (0 = good or escaped).
    #[inline(always)]
    fn next(&mut self, guard: u16, t: u64) -> u64 {
        let expected = u64::from(guard) << 48 | self.app | u64::from(self.ref_tag);
        self.ref_tag = self.ref_tag.wrapping_add(self.ref_inc);
        let m = (expected ^ t) & self.mask;
        if t & self.esc_mask == self.esc_val {
            0
        } else {
            m
        }
    }
}

#[inline(always)]
fn tuple_word(b: &[u8]) -> u64 {
    u64::from_be_bytes(b.try_into().unwrap_or([0; TUPLE_SIZE]))
}

#[inline(always)]
fn pi_error(kind: PiErrorKind, expected: u32, actual: u32, block: u64, interval: u32) -> PiError {
    PiError {
        kind,
        expected,
        actual,
        block,
        wire_offset: block.wrapping_mul(u64::from(interval) + TUPLE_SIZE as u64),
    }
}

/// Compares a tuple with the domain; `guard` is the guard computed over the
/// data (ignored when the guard is not checked). Order: guard, ref tag, app tag.
#[inline(always)]
fn check_tuple(
    dom: &T10DifDomain,
    c: Checks,
    guard: u16,
    t: &Tuple,
    block: u64,
) -> Result<(), PiError> {
    if (guard ^ t.guard) & c.guard != 0 {
        return Err(pi_error(
            PiErrorKind::Guard,
            guard.into(),
            t.guard.into(),
            block,
            dom.pi_interval,
        ));
    }
    let expected_ref = dom.ref_tag_for(block);
    if (expected_ref ^ t.ref_tag) & c.reft != 0 {
        return Err(pi_error(
            PiErrorKind::RefTag,
            expected_ref,
            t.ref_tag,
            block,
            dom.pi_interval,
        ));
    }
    if (dom.app_tag ^ t.app_tag) & c.app != 0 {
        return Err(pi_error(
            PiErrorKind::AppTag,
            dom.app_tag.into(),
            t.app_tag.into(),
            block,
            dom.pi_interval,
        ));
    }
    Ok(())
}

/// The error of a block whose tuple failed the fast check: guard first, then
/// ref tag, then app tag.
#[cold]
#[inline(never)]
fn tuple_error(dom: &T10DifDomain, c: Checks, guard: u16, t: &[u8], block: u64) -> Error {
    let t = read_tuple(t);
    match check_tuple(dom, c, guard, &t, block) {
        Err(e) => e.into(),
        // Unreachable while FastCheck and check_tuple agree; report the guard.
        Ok(()) => pi_error(
            PiErrorKind::Guard,
            guard.into(),
            t.guard.into(),
            block,
            dom.pi_interval,
        )
        .into(),
    }
}

/// Guard of a block for the fast check (0 when no guard byte is checked),
/// copying `src` to `dst` in the same pass when given.
///
/// # Safety
/// The CPU must support `K`'s features; `dst`, when given, has `src`'s length.
#[inline(always)]
unsafe fn fast_guard<K: Kernel>(
    dom: &T10DifDomain,
    c: Checks,
    src: &[u8],
    dst: Option<&mut [u8]>,
) -> u16 {
    if c.guard == 0 {
        if let Some(d) = dst {
            d.copy_from_slice(src);
        }
        return 0;
    }
    match dst {
        // SAFETY: forwarded caller contract (features, equal lengths).
        Some(d) => unsafe { guard_copy::<K>(dom.bg_type, dom.bg, d, src) },
        // SAFETY: forwarded caller contract.
        None => unsafe { guard_of::<K>(dom.bg_type, dom.bg, src) },
    }
}

/// Guard of one interval in `bg_type` with seed `seed`.
///
/// # Safety
/// The CPU must support `K`'s features.
#[inline(always)]
unsafe fn guard_of<K: Kernel>(bg_type: GuardType, seed: u16, data: &[u8]) -> u16 {
    match bg_type {
        // SAFETY: forwarded caller contract.
        GuardType::Crc => unsafe { K::crc(seed, data) },
        GuardType::Csum => ip_checksum_seeded(seed, data),
    }
}

/// Copies `src` to `dst` (same length) and returns its guard, fused for CRC.
///
/// # Safety
/// The CPU must support `K`'s features; `dst.len() == src.len()`.
#[inline(always)]
unsafe fn guard_copy<K: Kernel>(bg_type: GuardType, seed: u16, dst: &mut [u8], src: &[u8]) -> u16 {
    match bg_type {
        // SAFETY: forwarded caller contract.
        GuardType::Crc => unsafe { K::crc_copy(seed, dst, src) },
        GuardType::Csum => {
            dst.copy_from_slice(src);
            ip_checksum_seeded(seed, src)
        }
    }
}

#[inline(always)]
fn read_tuple(b: &[u8]) -> Tuple {
    Tuple::from_slice(b).unwrap_or_default()
}

/// Block count of a DIX pair, after validating the interval and lengths.
fn dix_blocks(interval: u32, data_len: usize, pi_len: usize) -> Result<usize, LayoutError> {
    check_interval(interval)?;
    let iv = interval as usize;
    if !data_len.is_multiple_of(iv) {
        return Err(LayoutError::DataNotMultiple {
            len: data_len,
            interval,
        });
    }
    let n = data_len / iv;
    let needed = n * TUPLE_SIZE;
    if pi_len < needed {
        return Err(LayoutError::PiTooShort {
            needed,
            len: pi_len,
        });
    }
    Ok(n)
}

/// Block count of an interleaved buffer, after validating the interval and length.
fn dif_blocks(interval: u32, dif_len: usize) -> Result<usize, LayoutError> {
    check_interval(interval)?;
    let stride = interval as usize + TUPLE_SIZE;
    if !dif_len.is_multiple_of(stride) {
        return Err(LayoutError::DifNotMultiple {
            len: dif_len,
            stride,
        });
    }
    Ok(dif_len / stride)
}

fn need(len: usize, needed: usize) -> Result<(), LayoutError> {
    if len < needed {
        Err(LayoutError::DstTooShort { needed, len })
    } else {
        Ok(())
    }
}

fn src_blocks(interval: u32, src: &PiBuf<'_>) -> Result<usize, LayoutError> {
    match src {
        PiBuf::Dix { data, pi } => dix_blocks(interval, data.len(), pi.len()),
        PiBuf::Dif(d) => dif_blocks(interval, d.len()),
    }
}

fn dst_fits(interval: u32, n: usize, dst: &PiBufMut<'_>) -> Result<(), LayoutError> {
    check_interval(interval)?;
    let iv = interval as usize;
    match dst {
        PiBufMut::Dix { data, pi } => {
            need(data.len(), n * iv)?;
            if pi.len() < n * TUPLE_SIZE {
                return Err(LayoutError::PiTooShort {
                    needed: n * TUPLE_SIZE,
                    len: pi.len(),
                });
            }
            Ok(())
        }
        PiBufMut::Dif(d) => need(d.len(), n * (iv + TUPLE_SIZE)),
    }
}

/// Data and tuple bytes of source block `i`.
#[inline(always)]
fn src_block<'b>(src: &PiBuf<'b>, iv: usize, i: usize) -> (&'b [u8], &'b [u8]) {
    match *src {
        PiBuf::Dix { data, pi } => (
            &data[i * iv..(i + 1) * iv],
            &pi[i * TUPLE_SIZE..(i + 1) * TUPLE_SIZE],
        ),
        PiBuf::Dif(d) => d[i * (iv + TUPLE_SIZE)..(i + 1) * (iv + TUPLE_SIZE)].split_at(iv),
    }
}

/// Data and tuple bytes of destination block `i`.
#[inline(always)]
fn dst_block<'b>(dst: &'b mut PiBufMut<'_>, iv: usize, i: usize) -> (&'b mut [u8], &'b mut [u8]) {
    match dst {
        PiBufMut::Dix { data, pi } => (
            &mut data[i * iv..(i + 1) * iv],
            &mut pi[i * TUPLE_SIZE..(i + 1) * TUPLE_SIZE],
        ),
        PiBufMut::Dif(d) => d[i * (iv + TUPLE_SIZE)..(i + 1) * (iv + TUPLE_SIZE)].split_at_mut(iv),
    }
}

// The generic operations below are `unsafe` only because of the kernel
// contract: the CPU must support `K`'s target features. They are instantiated
// per kernel inside `#[target_feature]` wrappers by `dispatch!`.

#[inline(always)]
unsafe fn generate_g<K: Kernel>(
    dom: &T10DifDomain,
    data: &[u8],
    pi: &mut [u8],
    first_block: u64,
) -> Result<(), LayoutError> {
    let n = dix_blocks(dom.pi_interval, data.len(), pi.len())?;
    let iv = dom.pi_interval as usize;
    let blocks = data
        .chunks_exact(iv)
        .zip(pi[..n * TUPLE_SIZE].chunks_exact_mut(TUPLE_SIZE));
    for (i, (blk, t)) in blocks.enumerate() {
        // SAFETY: kernel contract of this function.
        let g = unsafe { guard_of::<K>(dom.bg_type, dom.bg, blk) };
        t.copy_from_slice(
            &dom.tuple_for(g, first_block.wrapping_add(i as u64))
                .to_bytes(),
        );
    }
    Ok(())
}

#[inline(always)]
unsafe fn verify_g<K: Kernel>(
    dom: &T10DifDomain,
    check_mask: u8,
    data: &[u8],
    pi: &[u8],
    first_block: u64,
) -> Result<(), Error> {
    let n = dix_blocks(dom.pi_interval, data.len(), pi.len())?;
    let iv = dom.pi_interval as usize;
    let c = Checks::new(check_mask, dom);
    let mut fc = FastCheck::new(dom, c, first_block);
    for (i, (blk, t)) in data
        .chunks_exact(iv)
        .zip(pi[..n * TUPLE_SIZE].chunks_exact(TUPLE_SIZE))
        .enumerate()
    {
        // SAFETY: kernel contract of this function.
        let g = unsafe { fast_guard::<K>(dom, c, blk, None) };
        if fc.next(g, tuple_word(t)) != 0 {
            return Err(tuple_error(
                dom,
                c,
                g,
                t,
                first_block.wrapping_add(i as u64),
            ));
        }
    }
    Ok(())
}

#[inline(always)]
unsafe fn generate_dif_g<K: Kernel>(
    dom: &T10DifDomain,
    dif: &mut [u8],
    first_block: u64,
) -> Result<(), LayoutError> {
    dif_blocks(dom.pi_interval, dif.len())?;
    let iv = dom.pi_interval as usize;
    for (i, blk) in dif.chunks_exact_mut(iv + TUPLE_SIZE).enumerate() {
        let (data, t) = blk.split_at_mut(iv);
        // SAFETY: kernel contract of this function.
        let g = unsafe { guard_of::<K>(dom.bg_type, dom.bg, data) };
        t.copy_from_slice(
            &dom.tuple_for(g, first_block.wrapping_add(i as u64))
                .to_bytes(),
        );
    }
    Ok(())
}

#[inline(always)]
unsafe fn verify_dif_g<K: Kernel>(
    dom: &T10DifDomain,
    check_mask: u8,
    dif: &[u8],
    first_block: u64,
) -> Result<(), Error> {
    dif_blocks(dom.pi_interval, dif.len())?;
    let iv = dom.pi_interval as usize;
    let c = Checks::new(check_mask, dom);
    let mut fc = FastCheck::new(dom, c, first_block);
    for (i, blk) in dif.chunks_exact(iv + TUPLE_SIZE).enumerate() {
        let (data, t) = blk.split_at(iv);
        // SAFETY: kernel contract of this function.
        let g = unsafe { fast_guard::<K>(dom, c, data, None) };
        if fc.next(g, tuple_word(t)) != 0 {
            return Err(tuple_error(
                dom,
                c,
                g,
                t,
                first_block.wrapping_add(i as u64),
            ));
        }
    }
    Ok(())
}

#[inline(always)]
unsafe fn insert_g<K: Kernel>(
    dom: &T10DifDomain,
    data: &[u8],
    dif: &mut [u8],
    first_block: u64,
) -> Result<(), LayoutError> {
    check_interval(dom.pi_interval)?;
    let iv = dom.pi_interval as usize;
    if !data.len().is_multiple_of(iv) {
        return Err(LayoutError::DataNotMultiple {
            len: data.len(),
            interval: dom.pi_interval,
        });
    }
    let n = data.len() / iv;
    need(dif.len(), n * (iv + TUPLE_SIZE))?;
    for (i, (src, out)) in data
        .chunks_exact(iv)
        .zip(dif.chunks_exact_mut(iv + TUPLE_SIZE))
        .enumerate()
    {
        let (d, t) = out.split_at_mut(iv);
        // SAFETY: kernel contract of this function; d and src are both iv long.
        let g = unsafe { guard_copy::<K>(dom.bg_type, dom.bg, d, src) };
        t.copy_from_slice(
            &dom.tuple_for(g, first_block.wrapping_add(i as u64))
                .to_bytes(),
        );
    }
    Ok(())
}

#[inline(always)]
unsafe fn strip_g<K: Kernel>(
    dom: &T10DifDomain,
    check_mask: u8,
    dif: &[u8],
    data: &mut [u8],
    first_block: u64,
) -> Result<(), Error> {
    let n = dif_blocks(dom.pi_interval, dif.len())?;
    let iv = dom.pi_interval as usize;
    need(data.len(), n * iv)?;
    let c = Checks::new(check_mask, dom);
    let mut fc = FastCheck::new(dom, c, first_block);
    for (i, (blk, out)) in dif
        .chunks_exact(iv + TUPLE_SIZE)
        .zip(data.chunks_exact_mut(iv))
        .enumerate()
    {
        let (src, t) = blk.split_at(iv);
        // SAFETY: kernel contract of this function; out and src are both iv long.
        let g = unsafe { fast_guard::<K>(dom, c, src, Some(out)) };
        if fc.next(g, tuple_word(t)) != 0 {
            return Err(tuple_error(
                dom,
                c,
                g,
                t,
                first_block.wrapping_add(i as u64),
            ));
        }
    }
    Ok(())
}

#[inline(always)]
unsafe fn pass_g<K: Kernel>(
    src_dom: &T10DifDomain,
    check_mask: u8,
    src: PiBuf<'_>,
    dst_dom: &T10DifDomain,
    mut dst: PiBufMut<'_>,
    first_block: u64,
) -> Result<(), Error> {
    if src_dom.pi_interval != dst_dom.pi_interval {
        return Err(LayoutError::IntervalMismatch {
            src: src_dom.pi_interval,
            dst: dst_dom.pi_interval,
        }
        .into());
    }
    let n = src_blocks(src_dom.pi_interval, &src)?;
    dst_fits(dst_dom.pi_interval, n, &dst)?;
    let iv = src_dom.pi_interval as usize;
    let c = Checks::new(check_mask, src_dom);
    let new_guard = src_dom.bg_type != dst_dom.bg_type || src_dom.bg != dst_dom.bg;
    let new_app = src_dom.app_tag != dst_dom.app_tag;
    let new_ref = src_dom.ref_tag != dst_dom.ref_tag || src_dom.ref_remap != dst_dom.ref_remap;
    let mut fc = FastCheck::new(src_dom, c, first_block);
    for i in 0..n {
        let block = first_block.wrapping_add(i as u64);
        let (sd, st) = src_block(&src, iv, i);
        let (dd, dt) = dst_block(&mut dst, iv, i);
        // SAFETY: kernel contract of this function; dd and sd are both iv long.
        let g = unsafe { fast_guard::<K>(src_dom, c, sd, Some(&mut *dd)) };
        if fc.next(g, tuple_word(st)) != 0 {
            return Err(tuple_error(src_dom, c, g, st, block));
        }
        let t = read_tuple(st);
        let out = if src_dom.is_escaped(&t) {
            t
        } else {
            Tuple {
                guard: if new_guard {
                    // SAFETY: kernel contract of this function.
                    unsafe { guard_of::<K>(dst_dom.bg_type, dst_dom.bg, dd) }
                } else {
                    t.guard
                },
                app_tag: if new_app { dst_dom.app_tag } else { t.app_tag },
                ref_tag: if new_ref {
                    dst_dom.ref_tag_for(block)
                } else {
                    t.ref_tag
                },
            }
        };
        dt.copy_from_slice(&out.to_bytes());
    }
    Ok(())
}

/// Runs generic operation `$g` with the kernel of `$imp`, each x86 kernel inside
/// a `#[target_feature]` wrapper so that the kernel inlines into the block loop.
macro_rules! dispatch {
    // Copying operations: where the 512-bit kernel is chosen they run the
    // 256-bit one, whose fused copy measured about 10% faster (pibench
    // insert/strip rows of both kernels).
    (copy $imp:expr, $g:ident($($a:ident: $t:ty),*) -> $r:ty) => {{
        let imp = match $imp {
            CrcImpl::Vpclmul512 => CrcImpl::Vpclmul256,
            other => other,
        };
        dispatch!(imp, $g($($a: $t),*) -> $r)
    }};
    ($imp:expr, $g:ident($($a:ident: $t:ty),*) -> $r:ty) => {{
        match $imp {
            #[cfg(target_arch = "x86_64")]
            CrcImpl::Vpclmul512 => {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,vpclmulqdq,gfni,avx2,pclmulqdq,sse2,ssse3,sse4.1")]
                unsafe fn run($($a: $t),*) -> $r {
                    // SAFETY: callers reach this only with the kernel's features present.
                    unsafe { $g::<crate::crc16::x86::V512>($($a),*) }
                }
                // SAFETY: an Engine holds Vpclmul512 only when the CPU supports it.
                unsafe { run($($a),*) }
            }
            #[cfg(target_arch = "x86_64")]
            CrcImpl::Vpclmul256 => {
                #[target_feature(enable = "avx2,vpclmulqdq,pclmulqdq,sse2,ssse3,sse4.1")]
                unsafe fn run($($a: $t),*) -> $r {
                    // SAFETY: callers reach this only with the kernel's features present.
                    unsafe { $g::<crate::crc16::x86::V256>($($a),*) }
                }
                // SAFETY: reached from an Engine holding Vpclmul256 or (copy arm)
                // Vpclmul512, each only when the CPU supports it; the 512-bit
                // kernel's features include the 256-bit one's (has_vpclmul512).
                unsafe { run($($a),*) }
            }
            #[cfg(target_arch = "x86_64")]
            CrcImpl::Pclmul => {
                #[target_feature(enable = "pclmulqdq,sse2,ssse3,sse4.1")]
                unsafe fn run($($a: $t),*) -> $r {
                    // SAFETY: callers reach this only with the kernel's features present.
                    unsafe { $g::<crate::crc16::x86::V128>($($a),*) }
                }
                // SAFETY: an Engine holds Pclmul only when the CPU supports it.
                unsafe { run($($a),*) }
            }
            // SAFETY: the portable kernel needs no CPU feature.
            _ => unsafe { $g::<Portable>($($a),*) },
        }
    }};
}

/// The PI engine: every operation, running one CRC implementation.
///
/// [`Engine::new`] picks the fastest kernel of this CPU; [`Engine::with_impl`]
/// forces one (tests, benchmarks). An engine on the 512-bit kernel runs the
/// copying operations (insert, strip, pass) on the 256-bit kernel, whose fused
/// copy is faster. The free functions of this crate use
/// `Engine::new()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Engine {
    imp: CrcImpl,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl Engine {
    /// The engine with the fastest CRC kernel of this CPU.
    pub fn new() -> Engine {
        Engine {
            imp: CrcImpl::detect(),
        }
    }

    /// An engine with the given CRC kernel; `None` when the CPU cannot run it.
    pub fn with_impl(imp: CrcImpl) -> Option<Engine> {
        imp.is_available().then_some(Engine { imp })
    }

    /// The CRC kernel this engine runs.
    pub fn crc_impl(&self) -> CrcImpl {
        self.imp
    }

    /// DIX generate: writes one tuple per interval of `data` into `pi`.
    pub fn generate(
        &self,
        dom: &T10DifDomain,
        data: &[u8],
        pi: &mut [u8],
        first_block: u64,
    ) -> Result<(), LayoutError> {
        dispatch!(self.imp, generate_g(dom: &T10DifDomain, data: &[u8], pi: &mut [u8], first_block: u64) -> Result<(), LayoutError>)
    }

    /// DIX verify: checks each interval of `data` against its tuple in `pi`.
    pub fn verify(
        &self,
        dom: &T10DifDomain,
        check_mask: u8,
        data: &[u8],
        pi: &[u8],
        first_block: u64,
    ) -> Result<(), Error> {
        dispatch!(self.imp, verify_g(dom: &T10DifDomain, check_mask: u8, data: &[u8], pi: &[u8], first_block: u64) -> Result<(), Error>)
    }

    /// DIF generate: fills the tuple slot after each interval of `dif`.
    pub fn generate_dif_in_place(
        &self,
        dom: &T10DifDomain,
        dif: &mut [u8],
        first_block: u64,
    ) -> Result<(), LayoutError> {
        dispatch!(self.imp, generate_dif_g(dom: &T10DifDomain, dif: &mut [u8], first_block: u64) -> Result<(), LayoutError>)
    }

    /// DIF verify: checks each interval of `dif` against the tuple after it.
    pub fn verify_dif(
        &self,
        dom: &T10DifDomain,
        check_mask: u8,
        dif: &[u8],
        first_block: u64,
    ) -> Result<(), Error> {
        dispatch!(self.imp, verify_dif_g(dom: &T10DifDomain, check_mask: u8, dif: &[u8], first_block: u64) -> Result<(), Error>)
    }

    /// INSERT: copies DIX data into interleaved `dif`, generating each tuple in
    /// the same pass (copy and CRC fused).
    pub fn insert(
        &self,
        dom: &T10DifDomain,
        data: &[u8],
        dif: &mut [u8],
        first_block: u64,
    ) -> Result<(), LayoutError> {
        dispatch!(copy self.imp, insert_g(dom: &T10DifDomain, data: &[u8], dif: &mut [u8], first_block: u64) -> Result<(), LayoutError>)
    }

    /// STRIP: copies the intervals of `dif` into `data`, verifying each tuple in
    /// the same pass, and drops the PI.
    pub fn strip(
        &self,
        dom: &T10DifDomain,
        check_mask: u8,
        dif: &[u8],
        data: &mut [u8],
        first_block: u64,
    ) -> Result<(), Error> {
        dispatch!(copy self.imp, strip_g(dom: &T10DifDomain, check_mask: u8, dif: &[u8], data: &mut [u8], first_block: u64) -> Result<(), Error>)
    }

    /// PASS: verifies `src` with `src_dom` and `check_mask`, copies data and PI
    /// to `dst`, translating each tuple to `dst_dom`:
    /// - guard recomputed in the destination's guard type and seed when either
    ///   differs (the check uses the source's), else kept;
    /// - app tag set to `dst_dom.app_tag` when the domains' app tags differ, else kept;
    /// - ref tag set to `dst_dom.ref_tag_for(block)` when the domains' ref tag or
    ///   remapping differ, else kept.
    ///
    /// Escaped source blocks are copied with their tuple unchanged. The
    /// intervals of both domains must be equal. Any layout pair works.
    pub fn pass(
        &self,
        src_dom: &T10DifDomain,
        check_mask: u8,
        src: PiBuf<'_>,
        dst_dom: &T10DifDomain,
        dst: PiBufMut<'_>,
        first_block: u64,
    ) -> Result<(), Error> {
        dispatch!(copy self.imp, pass_g(src_dom: &T10DifDomain, check_mask: u8, src: PiBuf<'_>, dst_dom: &T10DifDomain, dst: PiBufMut<'_>, first_block: u64) -> Result<(), Error>)
    }
}

/// DIX -> DIF copy of data and tuples, without checks or generation.
pub fn interleave(
    interval: u32,
    data: &[u8],
    pi: &[u8],
    dif: &mut [u8],
) -> Result<(), LayoutError> {
    let n = dix_blocks(interval, data.len(), pi.len())?;
    let iv = interval as usize;
    need(dif.len(), n * (iv + TUPLE_SIZE))?;
    let blocks = data
        .chunks_exact(iv)
        .zip(pi.chunks_exact(TUPLE_SIZE))
        .zip(dif.chunks_exact_mut(iv + TUPLE_SIZE));
    for ((d, t), out) in blocks {
        let (od, ot) = out.split_at_mut(iv);
        od.copy_from_slice(d);
        ot.copy_from_slice(t);
    }
    Ok(())
}

/// DIF -> DIX copy of data and tuples, without checks.
pub fn split(interval: u32, dif: &[u8], data: &mut [u8], pi: &mut [u8]) -> Result<(), LayoutError> {
    let n = dif_blocks(interval, dif.len())?;
    let iv = interval as usize;
    need(data.len(), n * iv)?;
    if pi.len() < n * TUPLE_SIZE {
        return Err(LayoutError::PiTooShort {
            needed: n * TUPLE_SIZE,
            len: pi.len(),
        });
    }
    let blocks = dif
        .chunks_exact(iv + TUPLE_SIZE)
        .zip(data.chunks_exact_mut(iv))
        .zip(pi.chunks_exact_mut(TUPLE_SIZE));
    for ((src, od), ot) in blocks {
        let (d, t) = src.split_at(iv);
        od.copy_from_slice(d);
        ot.copy_from_slice(t);
    }
    Ok(())
}

/// DIX generate with the fastest kernel; see [`Engine::generate`].
pub fn generate(
    dom: &T10DifDomain,
    data: &[u8],
    pi: &mut [u8],
    first_block: u64,
) -> Result<(), LayoutError> {
    Engine::new().generate(dom, data, pi, first_block)
}

/// DIX verify with the fastest kernel; see [`Engine::verify`].
pub fn verify(
    dom: &T10DifDomain,
    check_mask: u8,
    data: &[u8],
    pi: &[u8],
    first_block: u64,
) -> Result<(), Error> {
    Engine::new().verify(dom, check_mask, data, pi, first_block)
}

/// DIF generate in place with the fastest kernel; see [`Engine::generate_dif_in_place`].
pub fn generate_dif_in_place(
    dom: &T10DifDomain,
    dif: &mut [u8],
    first_block: u64,
) -> Result<(), LayoutError> {
    Engine::new().generate_dif_in_place(dom, dif, first_block)
}

/// DIF verify with the fastest kernel; see [`Engine::verify_dif`].
pub fn verify_dif(
    dom: &T10DifDomain,
    check_mask: u8,
    dif: &[u8],
    first_block: u64,
) -> Result<(), Error> {
    Engine::new().verify_dif(dom, check_mask, dif, first_block)
}

/// INSERT with the fastest kernel; see [`Engine::insert`].
pub fn insert(
    dom: &T10DifDomain,
    data: &[u8],
    dif: &mut [u8],
    first_block: u64,
) -> Result<(), LayoutError> {
    Engine::new().insert(dom, data, dif, first_block)
}

/// STRIP with the fastest kernel; see [`Engine::strip`].
pub fn strip(
    dom: &T10DifDomain,
    check_mask: u8,
    dif: &[u8],
    data: &mut [u8],
    first_block: u64,
) -> Result<(), Error> {
    Engine::new().strip(dom, check_mask, dif, data, first_block)
}

/// PASS with the fastest kernel; see [`Engine::pass`].
pub fn pass(
    src_dom: &T10DifDomain,
    check_mask: u8,
    src: PiBuf<'_>,
    dst_dom: &T10DifDomain,
    dst: PiBufMut<'_>,
    first_block: u64,
) -> Result<(), Error> {
    Engine::new().pass(src_dom, check_mask, src, dst_dom, dst, first_block)
}
