//! Protection-information domains: guard type, protection interval, tag seeds,
//! ref-tag remapping and escapes (the fields of a T10-DIF signature domain).

use crate::error::LayoutError;
use crate::tuple::Tuple;

/// Per-byte check mask over the 8-byte PI tuple: bit 7 is tuple byte 0 (guard
/// MSB), bit 0 is tuple byte 7 (ref tag LSB), as in the verbs signature API.
pub mod check_mask {
    /// Both guard bytes.
    pub const GUARD: u8 = 0xC0;
    /// Both application-tag bytes.
    pub const APPTAG: u8 = 0x30;
    /// All four reference-tag bytes.
    pub const REFTAG: u8 = 0x0F;
    /// Every byte of the tuple.
    pub const ALL: u8 = GUARD | APPTAG | REFTAG;
}

/// Which function computes the 16-bit guard of a protection interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GuardType {
    /// CRC-16/T10-DIF (polynomial 0x8BB7), the only guard allowed on the wire.
    Crc,
    /// IP checksum (16-bit ones'-complement sum), a cheaper memory-domain guard.
    Csum,
}

/// T10 DIF protection type of a logical unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DifType {
    /// Ref tag = low 32 bits of the LBA, incremented per block.
    Type1,
    /// Ref tag = expected initial ref tag from the 32-byte CDB, incremented per block.
    Type2,
    /// Ref tag not defined and not incremented.
    Type3,
}

/// Smallest protection interval accepted.
pub const MIN_INTERVAL: u32 = 512;
/// Largest protection interval accepted.
pub const MAX_INTERVAL: u32 = 4096;

/// One T10-DIF signature domain: how the PI of one side (memory or wire) of a
/// transfer looks and how it is checked.
///
/// The escape flags are applied exactly as given (see [`T10DifDomain::is_escaped`]);
/// they are never inferred from the DIF type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct T10DifDomain {
    /// Guard function.
    pub bg_type: GuardType,
    /// Protection interval in bytes: a power of two from 512 to 4096.
    pub pi_interval: u32,
    /// Guard seed (initial CRC value, or initial partial sum for the IP checksum).
    pub bg: u16,
    /// Application tag generated, and expected when checked.
    pub app_tag: u16,
    /// Reference tag of block 0 of the transfer.
    pub ref_tag: u32,
    /// Increment the ref tag per block (Types 1 and 2).
    pub ref_remap: bool,
    /// App tag 0xFFFF escapes the block (alone: Types 1/2 behaviour).
    pub app_escape: bool,
    /// Together with `app_escape`: escape only when app tag is 0xFFFF *and* ref
    /// tag is 0xFFFFFFFF (APPREF escape). Without `app_escape` it has no effect.
    pub ref_escape: bool,
    /// Bits of the app tag that are compared when the app tag is checked.
    pub apptag_check_mask: u16,
}

impl T10DifDomain {
    /// A domain for `dif_type`: Types 1/2 remap the ref tag and escape on app tag
    /// 0xFFFF; Type 3 keeps a fixed ref tag and escapes only on app tag 0xFFFF
    /// with ref tag 0xFFFFFFFF. App tag 0, all app-tag bits compared, guard seed 0.
    pub fn new(dif_type: DifType, bg_type: GuardType, pi_interval: u32, ref_tag: u32) -> Self {
        let type3 = dif_type == DifType::Type3;
        T10DifDomain {
            bg_type,
            pi_interval,
            bg: 0,
            app_tag: 0,
            ref_tag,
            ref_remap: !type3,
            app_escape: true,
            ref_escape: type3,
            apptag_check_mask: 0xFFFF,
        }
    }

    /// Type 1: `ref_tag` is the low 32 bits of the first LBA, incremented per block.
    pub fn type1(bg_type: GuardType, pi_interval: u32, ref_tag: u32) -> Self {
        Self::new(DifType::Type1, bg_type, pi_interval, ref_tag)
    }

    /// Type 2: `ref_tag` is the expected initial ref tag of the 32-byte CDB.
    pub fn type2(bg_type: GuardType, pi_interval: u32, ref_tag: u32) -> Self {
        Self::new(DifType::Type2, bg_type, pi_interval, ref_tag)
    }

    /// Type 3: fixed `ref_tag`, not incremented.
    pub fn type3(bg_type: GuardType, pi_interval: u32, ref_tag: u32) -> Self {
        Self::new(DifType::Type3, bg_type, pi_interval, ref_tag)
    }

    /// The same domain with another application tag and app-tag check mask.
    pub fn with_app_tag(mut self, app_tag: u16, apptag_check_mask: u16) -> Self {
        self.app_tag = app_tag;
        self.apptag_check_mask = apptag_check_mask;
        self
    }

    /// The same domain with another escape configuration.
    pub fn with_escapes(mut self, app_escape: bool, ref_escape: bool) -> Self {
        self.app_escape = app_escape;
        self.ref_escape = ref_escape;
        self
    }

    /// The same domain with another guard seed.
    pub fn with_guard_seed(mut self, bg: u16) -> Self {
        self.bg = bg;
        self
    }

    /// Rejects a protection interval that is not a power of two in 512..=4096.
    pub fn validate(&self) -> Result<(), LayoutError> {
        check_interval(self.pi_interval)
    }

    /// Ref tag of block `block` of the transfer: `ref_tag + block` (wrapping u32)
    /// when remapped, otherwise `ref_tag`.
    #[inline]
    pub fn ref_tag_for(&self, block: u64) -> u32 {
        if self.ref_remap {
            self.ref_tag.wrapping_add(block as u32)
        } else {
            self.ref_tag
        }
    }

    /// The tuple this domain generates for `block` with guard `guard`.
    #[inline]
    pub fn tuple_for(&self, guard: u16, block: u64) -> Tuple {
        Tuple {
            guard,
            app_tag: self.app_tag,
            ref_tag: self.ref_tag_for(block),
        }
    }

    /// Whether a block carrying `tuple` is exempt from every check:
    /// - `app_escape && ref_escape` (APPREF escape): app tag 0xFFFF and ref tag 0xFFFFFFFF;
    /// - `app_escape` alone: app tag 0xFFFF;
    /// - otherwise (including `ref_escape` alone): never.
    #[inline]
    pub fn is_escaped(&self, tuple: &Tuple) -> bool {
        if !self.app_escape {
            return false;
        }
        tuple.app_tag == 0xFFFF && (!self.ref_escape || tuple.ref_tag == 0xFFFF_FFFF)
    }
}

/// Rejects a protection interval that is not a power of two in 512..=4096.
pub fn check_interval(interval: u32) -> Result<(), LayoutError> {
    if interval.is_power_of_two() && (MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
        Ok(())
    } else {
        Err(LayoutError::BadInterval(interval))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_constructors_set_remap_and_escapes() {
        let t1 = T10DifDomain::type1(GuardType::Crc, 512, 7);
        assert!(t1.ref_remap && t1.app_escape && !t1.ref_escape);
        let t2 = T10DifDomain::type2(GuardType::Crc, 4096, 7);
        assert!(t2.ref_remap && t2.app_escape && !t2.ref_escape);
        let t3 = T10DifDomain::type3(GuardType::Csum, 512, 7);
        assert!(!t3.ref_remap && t3.app_escape && t3.ref_escape);
        assert_eq!(t1.ref_tag_for(3), 10);
        assert_eq!(t3.ref_tag_for(3), 7);
        let wrap = T10DifDomain::type1(GuardType::Crc, 512, u32::MAX);
        assert_eq!(wrap.ref_tag_for(2), 1);
    }

    #[test]
    fn escape_rules_follow_flags_not_type() {
        let t = |a, r| Tuple {
            guard: 0,
            app_tag: a,
            ref_tag: r,
        };
        let app = T10DifDomain::type1(GuardType::Crc, 512, 0);
        assert!(app.is_escaped(&t(0xFFFF, 5)));
        assert!(!app.is_escaped(&t(0xFFFE, 0xFFFF_FFFF)));
        let appref = app.with_escapes(true, true);
        assert!(appref.is_escaped(&t(0xFFFF, 0xFFFF_FFFF)));
        assert!(!appref.is_escaped(&t(0xFFFF, 5)));
        assert!(!appref.is_escaped(&t(0, 0xFFFF_FFFF)));
        let refonly = app.with_escapes(false, true);
        assert!(!refonly.is_escaped(&t(0xFFFF, 0xFFFF_FFFF)));
        let none = app.with_escapes(false, false);
        assert!(!none.is_escaped(&t(0xFFFF, 0xFFFF_FFFF)));
    }

    #[test]
    fn intervals() {
        for ok in [512, 1024, 2048, 4096] {
            assert!(check_interval(ok).is_ok());
        }
        for bad in [0, 256, 520, 4104, 8192, 3000] {
            assert_eq!(check_interval(bad), Err(LayoutError::BadInterval(bad)));
        }
    }
}
