//! Signature (T10-PI) types of the verbs API, after the kernel's `rdma/signature.h`:
//! the domains of a signature MR, its check mask, and the error it reports.
//!
//! The T10-DIF domain itself is the `t10pi` crate's type, re-exported here, so the
//! HCA model and the iSCSI/TCP path share one definition and one implementation.

pub use t10pi::{check_mask, GuardType, T10DifDomain};

/// The protection of one side (memory or wire) of a signature MR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SigDomain {
    /// No protection information on this side.
    #[default]
    None,
    /// T10-DIF protection information.
    T10Dif(T10DifDomain),
}

impl SigDomain {
    /// The T10-DIF domain, if any.
    pub fn dif(&self) -> Option<&T10DifDomain> {
        match self {
            SigDomain::None => None,
            SigDomain::T10Dif(d) => Some(d),
        }
    }
}

/// Signature attributes bound to a signature MR by its registration.
///
/// mem None + wire DIF: INSERT on the way out, STRIP on the way in; mem DIF + wire
/// None: the reverse; both DIF: PASS (check and keep, translating tags and guard type
/// when the domains differ). `check_mask` has one bit per PI byte
/// ([`check_mask::GUARD`], [`check_mask::APPTAG`], [`check_mask::REFTAG`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SigAttrs {
    /// Which PI bytes are checked.
    pub check_mask: u8,
    /// Memory-side domain.
    pub mem: SigDomain,
    /// Wire-side domain.
    pub wire: SigDomain,
}

impl SigAttrs {
    /// The protection interval, from whichever domain carries PI (wire first).
    pub fn interval(&self) -> Option<u32> {
        self.wire.dif().or(self.mem.dif()).map(|d| d.pi_interval)
    }

    /// Length of the wire view of `blocks` protection intervals.
    pub fn wire_len(&self, blocks: u64) -> Option<u64> {
        let iv = u64::from(self.interval()?);
        Some(
            blocks
                * if self.wire.dif().is_some() {
                    iv + 8
                } else {
                    iv
                },
        )
    }
}

/// Which check failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigErrType {
    /// Guard (CRC or checksum) mismatch.
    BadGuard,
    /// Reference tag mismatch.
    BadRefTag,
    /// Application tag mismatch.
    BadAppTag,
}

/// A signature check failure recorded on a signature MR, as `ib_sig_err`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SigErr {
    /// Failing field.
    pub err_type: SigErrType,
    /// Expected value (guard computed over the data, or the domain's tag).
    pub expected: u32,
    /// Value found in the PI.
    pub actual: u32,
    /// Byte offset of the failing block in the wire stream: block x (interval + 8).
    pub sig_err_offset: u64,
    /// Key of the signature MR.
    pub key: u32,
}

impl std::fmt::Display for SigErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} on mkey {:#x} at wire offset {}: expected {:#x}, actual {:#x}",
            self.err_type, self.key, self.sig_err_offset, self.expected, self.actual
        )
    }
}

impl std::error::Error for SigErr {}

/// What `check_mr_status` asks about (`IB_MR_CHECK_SIG_STATUS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MrStatusCheck(pub u32);

impl MrStatusCheck {
    /// Signature status.
    pub const SIG_STATUS: MrStatusCheck = MrStatusCheck(1);
}
