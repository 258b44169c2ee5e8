//! CRC-16/T10-DIF (polynomial 0x8BB7, init 0, not reflected, xorout 0) with
//! runtime CPU dispatch between a portable slice-by-16 kernel and x86 carry-less
//! multiply folding kernels. Every kernel computes the same function; chaining
//! holds: `crc(a || b) == crc16_t10dif(crc(a), b)`.

pub mod consts;
pub(crate) mod table;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use std::sync::OnceLock;

/// One CRC kernel implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CrcImpl {
    /// Slice-by-16 tables; runs everywhere.
    Portable,
    /// 128-bit PCLMULQDQ folding, 8 lanes (SSE4.1 + PCLMULQDQ).
    Pclmul,
    /// 256-bit VPCLMULQDQ folding in AVX2 registers (AVX2 + VPCLMULQDQ).
    Vpclmul256,
    /// 512-bit VPCLMULQDQ folding in the bit-reflected domain (AVX-512F/BW/VL +
    /// VPCLMULQDQ + GFNI).
    Vpclmul512,
}

impl CrcImpl {
    /// Every implementation, slowest first.
    pub const ALL: [CrcImpl; 4] = [
        CrcImpl::Portable,
        CrcImpl::Pclmul,
        CrcImpl::Vpclmul256,
        CrcImpl::Vpclmul512,
    ];

    /// Short name used in benchmark output.
    pub fn name(self) -> &'static str {
        match self {
            CrcImpl::Portable => "portable",
            CrcImpl::Pclmul => "pclmul",
            CrcImpl::Vpclmul256 => "vpclmul256",
            CrcImpl::Vpclmul512 => "vpclmul512",
        }
    }

    /// Whether this CPU can run the implementation.
    pub fn is_available(self) -> bool {
        match self {
            CrcImpl::Portable => true,
            #[cfg(target_arch = "x86_64")]
            CrcImpl::Pclmul => x86::has_pclmul(),
            #[cfg(target_arch = "x86_64")]
            CrcImpl::Vpclmul256 => x86::has_vpclmul256(),
            #[cfg(target_arch = "x86_64")]
            CrcImpl::Vpclmul512 => x86::has_vpclmul512(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest implementation this CPU runs, detected once and cached.
    pub fn detect() -> CrcImpl {
        static BEST: OnceLock<CrcImpl> = OnceLock::new();
        *BEST.get_or_init(|| {
            // The 512-bit kernel is preferred where it exists; the benchmark
            // compares all of them.
            CrcImpl::ALL
                .into_iter()
                .rev()
                .find(|i| i.is_available())
                .unwrap_or(CrcImpl::Portable)
        })
    }
}

/// A CRC kernel: the unit the PI operations are generic over.
pub(crate) trait Kernel {
    /// CRC of `data` from `seed`.
    ///
    /// # Safety
    /// The CPU must support the kernel's target features.
    unsafe fn crc(seed: u16, data: &[u8]) -> u16;
    /// Copies `src` to `dst` (same length) and returns the CRC of `src`.
    ///
    /// # Safety
    /// The CPU must support the kernel's target features, and
    /// `dst.len() == src.len()`.
    unsafe fn crc_copy(seed: u16, dst: &mut [u8], src: &[u8]) -> u16;
}

/// The portable kernel.
#[derive(Debug)]
pub(crate) struct Portable;

impl Kernel for Portable {
    #[inline(always)]
    unsafe fn crc(seed: u16, data: &[u8]) -> u16 {
        table::crc(seed, data)
    }
    #[inline(always)]
    unsafe fn crc_copy(seed: u16, dst: &mut [u8], src: &[u8]) -> u16 {
        table::crc_copy(seed, dst, src)
    }
}

/// CRC-16/T10-DIF of `data` continuing from `seed`, with the implementation `imp`;
/// `None` when this CPU cannot run `imp`.
pub fn crc_with(imp: CrcImpl, seed: u16, data: &[u8]) -> Option<u16> {
    match imp {
        CrcImpl::Portable => Some(table::crc(seed, data)),
        #[cfg(target_arch = "x86_64")]
        CrcImpl::Pclmul if imp.is_available() => {
            // SAFETY: the CPU supports PCLMULQDQ and SSE4.1 (checked just above).
            Some(unsafe { x86::crc_pclmul(seed, data) })
        }
        #[cfg(target_arch = "x86_64")]
        CrcImpl::Vpclmul256 if imp.is_available() => {
            // SAFETY: the CPU supports AVX2 and VPCLMULQDQ (checked just above).
            Some(unsafe { x86::crc_vpclmul256(seed, data) })
        }
        #[cfg(target_arch = "x86_64")]
        CrcImpl::Vpclmul512 if imp.is_available() => {
            // SAFETY: the CPU supports AVX-512F/BW/VL, VPCLMULQDQ and GFNI (checked just above).
            Some(unsafe { x86::crc_vpclmul512(seed, data) })
        }
        _ => None,
    }
}

/// Copies `src` into `dst[..src.len()]` while computing its CRC in the same pass,
/// with the implementation `imp`. `None` when this CPU cannot run `imp` or `dst`
/// is shorter than `src`.
pub fn crc_copy_with(imp: CrcImpl, seed: u16, dst: &mut [u8], src: &[u8]) -> Option<u16> {
    let dst = dst.get_mut(..src.len())?;
    match imp {
        CrcImpl::Portable => Some(table::crc_copy(seed, dst, src)),
        #[cfg(target_arch = "x86_64")]
        CrcImpl::Pclmul if imp.is_available() => {
            // SAFETY: features checked just above; dst has src's length.
            Some(unsafe { x86::crc_copy_pclmul(seed, dst, src) })
        }
        #[cfg(target_arch = "x86_64")]
        CrcImpl::Vpclmul256 if imp.is_available() => {
            // SAFETY: features checked just above; dst has src's length.
            Some(unsafe { x86::crc_copy_vpclmul256(seed, dst, src) })
        }
        #[cfg(target_arch = "x86_64")]
        CrcImpl::Vpclmul512 if imp.is_available() => {
            // SAFETY: features checked just above; dst has src's length.
            Some(unsafe { x86::crc_copy_vpclmul512(seed, dst, src) })
        }
        _ => None,
    }
}

/// The portable kernel (always available).
pub fn portable(seed: u16, data: &[u8]) -> u16 {
    table::crc(seed, data)
}

/// The 128-bit PCLMULQDQ kernel; `None` on a CPU without it.
pub fn pclmul(seed: u16, data: &[u8]) -> Option<u16> {
    crc_with(CrcImpl::Pclmul, seed, data)
}

/// The 256-bit VPCLMULQDQ (AVX2 registers) kernel; `None` on a CPU without it.
pub fn vpclmul256(seed: u16, data: &[u8]) -> Option<u16> {
    crc_with(CrcImpl::Vpclmul256, seed, data)
}

/// The 512-bit VPCLMULQDQ kernel; `None` on a CPU without it.
pub fn vpclmul512(seed: u16, data: &[u8]) -> Option<u16> {
    crc_with(CrcImpl::Vpclmul512, seed, data)
}

/// CRC-16/T10-DIF of `data` continuing from `seed` with the fastest kernel.
///
/// `seed` is the CRC register's initial value: 0 for a fresh CRC, or the CRC of
/// the preceding bytes to continue it.
pub fn crc16_t10dif(seed: u16, data: &[u8]) -> u16 {
    crc_with(CrcImpl::detect(), seed, data).unwrap_or_else(|| table::crc(seed, data))
}

/// Copies `src` into `dst[..src.len()]` and returns CRC-16/T10-DIF of `src`,
/// fused in one pass; `None` when `dst` is shorter than `src`.
///
/// Where the 512-bit kernel is the default, the copy runs the 256-bit one,
/// whose fused copy is faster (see `pibench` insert/strip rows).
pub fn crc16_t10dif_copy(seed: u16, dst: &mut [u8], src: &[u8]) -> Option<u16> {
    let imp = match CrcImpl::detect() {
        CrcImpl::Vpclmul512 => CrcImpl::Vpclmul256,
        other => other,
    };
    crc_copy_with(imp, seed, dst, src)
}
