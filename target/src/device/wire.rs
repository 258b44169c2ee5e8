//! Software application of a [`ProtPlan`] for transports without a signature engine
//! (iSCSI/TCP): the wire stream (DIF-interleaved when the plan says so) to and from
//! the device server's DIX memory form, with the plan's checks, using `t10pi`.
//!
//! A failed check becomes a [`PiFailure`] naming the LBA; [`PiFailure::reason`] turns
//! it into the one sense reason (ABORTED COMMAND, 10h/01h..03h, INFORMATION = LBA).

use t10pi::{PiBuf, PiBufMut, PiError, PiErrorKind, TUPLE_SIZE};
use thiserror::Error;

use super::prot::{ProtOp, ProtPlan};
use super::reason::SenseReason;

/// A PI check failure located on the medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[error("{kind} check failed at LBA {lba}: expected {expected:#x}, actual {actual:#x}")]
pub struct PiFailure {
    /// Which tuple field failed.
    pub kind: PiErrorKind,
    /// LBA of the first failing block.
    pub lba: u64,
    /// Expected value (computed guard, or the domain's tag).
    pub expected: u32,
    /// Value found in the tuple.
    pub actual: u32,
}

impl PiFailure {
    /// Locates a `t10pi` error (or a signature-engine error with the same fields) of
    /// transfer block `block` (counting across instances) on the medium.
    pub fn from_pi_error(plan: &ProtPlan, e: &PiError) -> Self {
        PiFailure {
            kind: e.kind,
            lba: plan.lba_of(e.block),
            expected: e.expected,
            actual: e.actual,
        }
    }

    /// Locates a signature-engine error from its wire byte offset
    /// (`block = offset / (block_size + 8)`).
    pub fn from_wire_offset(
        plan: &ProtPlan,
        kind: PiErrorKind,
        wire_offset: u64,
        expected: u32,
        actual: u32,
    ) -> Self {
        let stride = plan.block_size as u64 + TUPLE_SIZE as u64;
        PiFailure {
            kind,
            lba: plan.lba_of(wire_offset / stride),
            expected,
            actual,
        }
    }

    /// The sense reason: ABORTED COMMAND, 10h/01h..03h with the LBA in INFORMATION.
    pub fn reason(&self) -> SenseReason {
        SenseReason::PiCheck {
            kind: self.kind,
            lba: self.lba,
        }
    }
}

/// Why wire bytes could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// A PI check failed.
    #[error(transparent)]
    Pi(#[from] PiFailure),
    /// The buffer is not the length the plan describes.
    #[error("expected {expected} bytes, got {got}")]
    Length {
        /// Bytes the plan needs.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// The plan and `t10pi` disagree about the layout (a bug in the plan).
    #[error("layout: {0}")]
    Layout(t10pi::LayoutError),
}

impl WireError {
    /// The sense reason for this error.
    pub fn reason(&self) -> SenseReason {
        match self {
            WireError::Pi(f) => f.reason(),
            WireError::Length { .. } => SenseReason::DataLength,
            WireError::Layout(_) => SenseReason::InternalFailure,
        }
    }
}

/// Blocks in DIX memory form: data, and PI when the LUN stores it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dix {
    /// Data blocks back to back.
    pub data: Vec<u8>,
    /// One 8-byte tuple per block (LUNs with PI).
    pub pi: Option<Vec<u8>>,
}

fn map_err(plan: &ProtPlan, instance: u32, e: t10pi::Error) -> WireError {
    match e {
        t10pi::Error::Pi(mut p) => {
            p.block += u64::from(instance) * u64::from(plan.blocks);
            WireError::Pi(PiFailure::from_pi_error(plan, &p))
        }
        t10pi::Error::Layout(l) => WireError::Layout(l),
    }
}

/// Data-out: converts the wire bytes of a write to DIX memory form, applying the
/// plan (INSERT generates PI in the memory domain; PASS checks with the wire domain
/// and keeps the tuples).
pub fn from_wire(plan: &ProtPlan, wire: &[u8]) -> Result<Dix, WireError> {
    if wire.len() != plan.wire_len() {
        return Err(WireError::Length {
            expected: plan.wire_len(),
            got: wire.len(),
        });
    }
    let mut out = Dix {
        data: vec![0u8; plan.data_len()],
        pi: None,
    };
    let Some(mem) = plan.mem else {
        out.data.copy_from_slice(wire);
        return Ok(out);
    };
    let mut pi = vec![0u8; plan.pi_len()];
    let per_data = plan.block_size as usize * plan.blocks as usize;
    let per_pi = TUPLE_SIZE * plan.blocks as usize;
    let per_wire = plan.wire_stride() * plan.blocks as usize;
    for i in 0..plan.instances {
        let iu = i as usize;
        let w = &wire[iu * per_wire..(iu + 1) * per_wire];
        let d = &mut out.data[iu * per_data..(iu + 1) * per_data];
        let p = &mut pi[iu * per_pi..(iu + 1) * per_pi];
        match (plan.op, plan.wire) {
            (ProtOp::Pass, Some(wdom)) => {
                t10pi::pass(
                    &wdom,
                    plan.check_mask,
                    PiBuf::Dif(w),
                    &mem,
                    PiBufMut::Dix { data: d, pi: p },
                    0,
                )
                .map_err(|e| map_err(plan, i, e))?;
            }
            _ => {
                d.copy_from_slice(w);
                t10pi::generate(&mem, d, p, 0).map_err(WireError::Layout)?;
            }
        }
    }
    out.pi = Some(pi);
    Ok(out)
}

/// Data-in: converts DIX memory blocks of a read to the wire, applying the plan
/// (STRIP checks with the memory domain and drops the PI; PASS checks and
/// interleaves the tuples).
pub fn to_wire(plan: &ProtPlan, data: &[u8], pi: Option<&[u8]>) -> Result<Vec<u8>, WireError> {
    if data.len() != plan.data_len() {
        return Err(WireError::Length {
            expected: plan.data_len(),
            got: data.len(),
        });
    }
    let (Some(mem), Some(pi)) = (plan.mem, pi) else {
        return Ok(data.to_vec());
    };
    if pi.len() != plan.pi_len() {
        return Err(WireError::Length {
            expected: plan.pi_len(),
            got: pi.len(),
        });
    }
    match (plan.op, plan.wire) {
        (ProtOp::Pass, Some(wdom)) => {
            let mut out = vec![0u8; plan.wire_len()];
            t10pi::pass(
                &mem,
                plan.check_mask,
                PiBuf::Dix { data, pi },
                &wdom,
                PiBufMut::Dif(&mut out),
                0,
            )
            .map_err(|e| map_err(plan, 0, e))?;
            Ok(out)
        }
        _ => {
            if plan.check_mask != 0 {
                t10pi::verify(&mem, plan.check_mask, data, pi, 0)
                    .map_err(|e| map_err(plan, 0, e))?;
            }
            Ok(data.to_vec())
        }
    }
}

/// Checks DIX memory blocks in place with the plan's memory domain and checks (the
/// device server's own medium verification: VERIFY, COMPARE AND WRITE).
pub fn verify_dix(plan: &ProtPlan, data: &[u8], pi: &[u8]) -> Result<(), WireError> {
    match plan.mem {
        Some(mem) if plan.check_mask != 0 => {
            t10pi::verify(&mem, plan.check_mask, data, pi, 0).map_err(|e| map_err(plan, 0, e))
        }
        _ => Ok(()),
    }
}
