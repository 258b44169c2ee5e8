//! T10 protection information: CRC-16/T10-DIF and IP-checksum guards, tuple
//! generate/verify, and DIF/DIX layout transforms (INSERT, STRIP, PASS).
//!
//! This crate is the project's one place for T10-PI math; the soft mlx5 HCA's
//! signature engine and the iSCSI/TCP transport both call it.
//!
//! ```
//! use t10pi::{check_mask, GuardType, T10DifDomain, TUPLE_SIZE};
//! let dom = T10DifDomain::type1(GuardType::Crc, 512, 1000);
//! let data = vec![0xA5u8; 4 * 512];
//! let mut dif = vec![0u8; 4 * (512 + TUPLE_SIZE)];
//! t10pi::insert(&dom, &data, &mut dif, 0).unwrap();
//! let mut back = vec![0u8; data.len()];
//! t10pi::strip(&dom, check_mask::ALL, &dif, &mut back, 0).unwrap();
//! assert_eq!(back, data);
//! ```

pub mod crc16;
pub mod csum;
pub mod domain;
pub mod error;
pub mod ops;
pub mod testing;
pub mod tuple;

pub use crc16::{crc16_t10dif, crc16_t10dif_copy, CrcImpl};
pub use csum::{ip_checksum, ip_checksum_seeded};
pub use domain::{check_mask, DifType, GuardType, T10DifDomain};
pub use error::{Error, LayoutError, PiError, PiErrorKind};
pub use ops::{
    generate, generate_dif_in_place, insert, interleave, pass, split, strip, verify, verify_dif,
    Engine, PiBuf, PiBufMut,
};
pub use tuple::{Tuple, TUPLE_SIZE};

/// Guard of `data` in the given guard type with seed `seed` (CRC initial value,
/// or IP-checksum initial partial sum).
pub fn guard(bg_type: GuardType, seed: u16, data: &[u8]) -> u16 {
    match bg_type {
        GuardType::Crc => crc16_t10dif(seed, data),
        GuardType::Csum => ip_checksum_seeded(seed, data),
    }
}
