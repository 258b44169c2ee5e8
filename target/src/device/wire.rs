//! Software application of a [`ProtPlan`] for transports without a signature engine
//! (iSCSI/TCP): the wire stream (DIF-interleaved when the plan says so) to and from
//! the device server's DIX memory form, with the plan's checks, using `t10pi`.
//!
//! A failed check becomes a [`PiFailure`] naming the LBA; [`PiFailure::reason`] turns
//! it into the one sense reason (ABORTED COMMAND, 10h/01h..03h, INFORMATION = LBA).

use t10pi::{PiBuf, PiBufMut, PiError, PiErrorKind, T10DifDomain, TUPLE_SIZE};
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
    match data_in_form(plan, data, pi)? {
        DataInForm::Data => Ok(data.to_vec()),
        DataInForm::Interleaved { mem, wire, pi } => {
            let mut out = vec![0u8; plan.wire_len()];
            interleave(plan, &mem, &wire, data, pi, &mut out)?;
            Ok(out)
        }
    }
}

/// [`to_wire`] into `out` (a transport's buffer) instead of a new vector; returns
/// the bytes written, and fails when `out` is too short for them.
pub fn to_wire_into(
    plan: &ProtPlan,
    data: &[u8],
    pi: Option<&[u8]>,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let form = data_in_form(plan, data, pi)?;
    let len = match form {
        DataInForm::Data => data.len(),
        DataInForm::Interleaved { .. } => plan.wire_len(),
    };
    let Some(out) = out.get_mut(..len) else {
        return Err(WireError::Length {
            expected: len,
            got: out.len(),
        });
    };
    match form {
        DataInForm::Data => out.copy_from_slice(data),
        DataInForm::Interleaved { mem, wire, pi } => interleave(plan, &mem, &wire, data, pi, out)?,
    }
    Ok(len)
}

/// What a read's data-in is on the wire.
enum DataInForm<'a> {
    /// The data blocks alone (already checked when the plan strips PI).
    Data,
    /// The blocks with their tuples interleaved (PASS).
    Interleaved {
        mem: T10DifDomain,
        wire: T10DifDomain,
        pi: &'a [u8],
    },
}

/// Checks the lengths of a read's DIX blocks, runs a STRIP's checks, and says
/// which form goes on the wire.
fn data_in_form<'a>(
    plan: &ProtPlan,
    data: &[u8],
    pi: Option<&'a [u8]>,
) -> Result<DataInForm<'a>, WireError> {
    if data.len() != plan.data_len() {
        return Err(WireError::Length {
            expected: plan.data_len(),
            got: data.len(),
        });
    }
    let (Some(mem), Some(pi)) = (plan.mem, pi) else {
        return Ok(DataInForm::Data);
    };
    if pi.len() != plan.pi_len() {
        return Err(WireError::Length {
            expected: plan.pi_len(),
            got: pi.len(),
        });
    }
    match (plan.op, plan.wire) {
        (ProtOp::Pass, Some(wire)) => Ok(DataInForm::Interleaved { mem, wire, pi }),
        _ => {
            if plan.check_mask != 0 {
                t10pi::verify(&mem, plan.check_mask, data, pi, 0)
                    .map_err(|e| map_err(plan, 0, e))?;
            }
            Ok(DataInForm::Data)
        }
    }
}

/// PASS: checks the blocks with the memory domain and writes them to `out` with
/// their tuples in the wire domain.
fn interleave(
    plan: &ProtPlan,
    mem: &T10DifDomain,
    wire: &T10DifDomain,
    data: &[u8],
    pi: &[u8],
    out: &mut [u8],
) -> Result<(), WireError> {
    t10pi::pass(
        mem,
        plan.check_mask,
        PiBuf::Dix { data, pi },
        wire,
        PiBufMut::Dif(out),
        0,
    )
    .map_err(|e| map_err(plan, 0, e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::prot::{check_prot, ProtDir};
    use t10pi::{check_mask, DifType, GuardType, T10DifDomain};

    fn type1_plan(dir: ProtDir, protect: u8, lba: u64, blocks: u32) -> ProtPlan {
        let d = check_prot(protect, dir, Some(DifType::Type1), true, 16).unwrap();
        ProtPlan::build(dir, d, Some(DifType::Type1), 512, lba, blocks, None, 0x42)
    }

    fn dif_for(data: &[u8], lba: u64) -> Vec<u8> {
        dif_app(data, lba, 0)
    }

    fn dif_app(data: &[u8], lba: u64, app: u16) -> Vec<u8> {
        let dom = T10DifDomain::type1(GuardType::Crc, 512, lba as u32).with_app_tag(app, 0xFFFF);
        let mut out = vec![0u8; data.len() / 512 * 520];
        t10pi::insert(&dom, data, &mut out, 0).unwrap();
        out
    }

    #[test]
    fn pass_with_two_instances_names_the_lba_of_the_second() {
        let mut plan = type1_plan(ProtDir::Write, 1, 10, 2);
        plan.instances = 2;
        let data: Vec<u8> = (0..2048u32).map(|i| i as u8).collect();
        let mut wire = dif_for(&data[..1024], 10);
        wire.extend(dif_for(&data[1024..], 10));
        let dix = from_wire(&plan, &wire).unwrap();
        assert_eq!(dix.data, data);
        assert_eq!(dix.pi.as_deref().map(<[u8]>::len), Some(32));
        wire[3 * 520 + 512] ^= 0x01; // guard of block 1 of the second instance
        match from_wire(&plan, &wire) {
            Err(WireError::Pi(f)) => assert_eq!((f.kind, f.lba), (PiErrorKind::Guard, 11)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            from_wire(&plan, &wire[..100]),
            Err(WireError::Length {
                expected: 4 * 520,
                got: 100
            })
        );
    }

    #[test]
    fn insert_generates_and_strip_checks() {
        let plan = type1_plan(ProtDir::Write, 0, 7, 2);
        assert_eq!(
            (plan.op, plan.wire_has_pi, plan.check_mask),
            (ProtOp::Insert, false, 0)
        );
        let data = vec![0x5Au8; 1024];
        let dix = from_wire(&plan, &data).unwrap();
        let pi = dix.pi.unwrap();
        let t = t10pi::Tuple::from_slice(&pi[8..]).unwrap();
        assert_eq!((t.app_tag, t.ref_tag), (0x42, 8));
        let read = type1_plan(ProtDir::Read, 0, 7, 2);
        assert_eq!(
            (read.op, read.check_mask),
            (ProtOp::Strip, check_mask::GUARD | check_mask::REFTAG)
        );
        assert_eq!(to_wire(&read, &data, Some(&pi)).unwrap(), data);
        let mut bad = pi.clone();
        bad[8 + 7] ^= 1; // ref tag of block 1
        match to_wire(&read, &data, Some(&bad)) {
            Err(WireError::Pi(f)) => {
                assert_eq!(
                    (f.kind, f.lba, f.expected, f.actual),
                    (PiErrorKind::RefTag, 8, 8, 9)
                );
                assert_eq!(
                    f.reason(),
                    SenseReason::PiCheck {
                        kind: PiErrorKind::RefTag,
                        lba: 8
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // RDPROTECT=1 keeps the tuples on the wire.
        let pass = type1_plan(ProtDir::Read, 1, 7, 2);
        assert_eq!(
            to_wire(&pass, &data, Some(&pi)).unwrap(),
            dif_app(&data, 7, 0x42)
        );
    }

    #[test]
    fn no_pi_is_a_copy() {
        let plan = ProtPlan::none(ProtDir::Write, 4096, 0, 1);
        let data = vec![1u8; 4096];
        assert_eq!(
            from_wire(&plan, &data).unwrap(),
            Dix {
                data: data.clone(),
                pi: None
            }
        );
        assert_eq!(to_wire(&plan, &data, None).unwrap(), data);
        assert_eq!(plan.wire_len(), 4096);
    }
}
