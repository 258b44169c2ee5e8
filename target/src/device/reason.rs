//! The one sense reason type every handler returns, and the one table that maps a
//! reason to a SCSI status and sense data (key, ASC/ASCQ, INFORMATION, field pointer).

use scsi::asc::{self, AscPair};
use scsi::{CdbError, FieldPointer, Sense, SenseKey, Status};
use t10pi::PiErrorKind;
use thiserror::Error;

/// Why a command did not complete with GOOD status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
pub enum SenseReason {
    /// ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20h/00h).
    #[error("invalid command operation code")]
    InvalidOpcode,
    /// ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h) with a CDB field pointer.
    #[error("invalid field in CDB byte {byte}")]
    InvalidCdbField {
        /// Byte of the field.
        byte: u16,
        /// Most significant bit of the field, when narrower than a byte.
        bit: Option<u8>,
    },
    /// ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (26h/00h) with a data pointer.
    #[error("invalid field in parameter list byte {byte}")]
    InvalidParameterField {
        /// Byte of the field in the parameter list.
        byte: u16,
        /// Most significant bit of the field, when narrower than a byte.
        bit: Option<u8>,
    },
    /// ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (1Ah/00h).
    #[error("parameter list length error")]
    ParameterListLength,
    /// ILLEGAL REQUEST, INVALID FIELD IN COMMAND INFORMATION UNIT (0Eh/03h): the
    /// data-out did not match what the CDB describes.
    #[error("data-out length does not match the CDB")]
    DataLength,
    /// ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h).
    #[error("logical block address out of range")]
    LbaOutOfRange,
    /// DATA PROTECT, WRITE PROTECTED (27h/00h).
    #[error("write protected")]
    WriteProtected,
    /// RESERVATION CONFLICT status, no sense data.
    #[error("reservation conflict")]
    ReservationConflict,
    /// UNIT ATTENTION with the given ASC/ASCQ.
    #[error("unit attention {:02X}h/{:02X}h", .0.0, .0.1)]
    UnitAttention(AscPair),
    /// ABORTED COMMAND, LOGICAL BLOCK GUARD/APPLICATION TAG/REFERENCE TAG CHECK FAILED
    /// (10h/01h..03h) with the failing LBA in INFORMATION.
    #[error("{kind} check failed at LBA {lba}")]
    PiCheck {
        /// Which tuple field failed.
        kind: PiErrorKind,
        /// LBA of the first failing block.
        lba: u64,
    },
    /// MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION (1Dh/00h) with the byte offset of
    /// the first difference in INFORMATION.
    #[error("miscompare at offset {offset}")]
    Miscompare {
        /// Offset of the first differing byte from the start of the compared data.
        offset: u64,
    },
    /// ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h): for a LUN the target
    /// does not have (INQUIRY answers with [`super::inquiry_no_lun`] instead).
    #[error("logical unit not supported")]
    LunNotSupported,
    /// ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION (26h/04h).
    #[error("invalid release of persistent reservation")]
    InvalidRelease,
    /// ILLEGAL REQUEST, INSUFFICIENT REGISTRATION RESOURCES (55h/04h).
    #[error("insufficient registration resources")]
    InsufficientRegistrationResources,
    /// ILLEGAL REQUEST, SAVING PARAMETERS NOT SUPPORTED (39h/00h).
    #[error("saving parameters not supported")]
    SavingParametersNotSupported,
    /// MEDIUM ERROR, UNRECOVERED READ ERROR (11h/00h): the backing store failed a read.
    #[error("unrecovered read error")]
    ReadError,
    /// MEDIUM ERROR, WRITE ERROR (0Ch/00h): the backing store failed a write or sync.
    #[error("write error")]
    WriteError,
    /// HARDWARE ERROR, INTERNAL TARGET FAILURE (44h/00h).
    #[error("internal target failure")]
    InternalFailure,
}

impl SenseReason {
    /// INVALID FIELD IN CDB at `byte`, `bit`.
    pub fn cdb(byte: u16, bit: Option<u8>) -> Self {
        SenseReason::InvalidCdbField { byte, bit }
    }

    /// INVALID FIELD IN PARAMETER LIST at `byte`, `bit`.
    pub fn param(byte: u16, bit: Option<u8>) -> Self {
        SenseReason::InvalidParameterField { byte, bit }
    }

    /// The SCSI status this reason completes the command with.
    pub fn status(&self) -> Status {
        match self {
            SenseReason::ReservationConflict => Status::RESERVATION_CONFLICT,
            _ => Status::CHECK_CONDITION,
        }
    }

    /// The sense data for this reason (`None` for RESERVATION CONFLICT).
    pub fn sense(&self) -> Option<Sense> {
        use SenseKey as K;
        let s = match *self {
            SenseReason::InvalidOpcode => {
                Sense::new(K::ILLEGAL_REQUEST, asc::INVALID_COMMAND_OPERATION_CODE)
                    .with_field_pointer(FieldPointer::cdb(0, None))
            }
            SenseReason::InvalidCdbField { byte, bit } => Sense::invalid_field_in_cdb(byte, bit),
            SenseReason::InvalidParameterField { byte, bit } => {
                Sense::invalid_field_in_parameter_list(byte, bit)
            }
            SenseReason::ParameterListLength => {
                Sense::new(K::ILLEGAL_REQUEST, asc::PARAMETER_LIST_LENGTH_ERROR)
            }
            SenseReason::DataLength => Sense::new(
                K::ILLEGAL_REQUEST,
                asc::INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT,
            ),
            SenseReason::LbaOutOfRange => Sense::new(K::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE),
            SenseReason::WriteProtected => Sense::new(K::DATA_PROTECT, asc::WRITE_PROTECTED),
            SenseReason::ReservationConflict => return None,
            SenseReason::UnitAttention(pair) => Sense::new(K::UNIT_ATTENTION, pair),
            SenseReason::PiCheck { kind, lba } => pi_sense(kind, lba),
            SenseReason::Miscompare { offset } => {
                Sense::new(K::MISCOMPARE, asc::MISCOMPARE_DURING_VERIFY).with_information(offset)
            }
            SenseReason::LunNotSupported => {
                Sense::new(K::ILLEGAL_REQUEST, asc::LOGICAL_UNIT_NOT_SUPPORTED)
            }
            SenseReason::InvalidRelease => Sense::new(
                K::ILLEGAL_REQUEST,
                asc::INVALID_RELEASE_OF_PERSISTENT_RESERVATION,
            ),
            SenseReason::InsufficientRegistrationResources => {
                Sense::new(K::ILLEGAL_REQUEST, asc::INSUFFICIENT_REGISTRATION_RESOURCES)
            }
            SenseReason::SavingParametersNotSupported => {
                Sense::new(K::ILLEGAL_REQUEST, asc::SAVING_PARAMETERS_NOT_SUPPORTED)
            }
            SenseReason::ReadError => Sense::new(K::MEDIUM_ERROR, asc::UNRECOVERED_READ_ERROR),
            SenseReason::WriteError => Sense::new(K::MEDIUM_ERROR, asc::WRITE_ERROR),
            SenseReason::InternalFailure => {
                Sense::new(K::HARDWARE_ERROR, asc::INTERNAL_TARGET_FAILURE)
            }
        };
        Some(s)
    }
}

/// The sense for a failed PI check detected by the target: ABORTED COMMAND (0Bh),
/// ASC 10h with ASCQ 01h guard / 02h application tag / 03h reference tag, and the LBA
/// of the first failing block in INFORMATION.
pub fn pi_sense(kind: PiErrorKind, lba: u64) -> Sense {
    let pair = match kind {
        PiErrorKind::Guard => asc::LOGICAL_BLOCK_GUARD_CHECK_FAILED,
        PiErrorKind::AppTag => asc::LOGICAL_BLOCK_APPLICATION_TAG_CHECK_FAILED,
        PiErrorKind::RefTag => asc::LOGICAL_BLOCK_REFERENCE_TAG_CHECK_FAILED,
    };
    Sense::new(SenseKey::ABORTED_COMMAND, pair).with_information(lba)
}

impl From<CdbError> for SenseReason {
    fn from(e: CdbError) -> Self {
        match e {
            CdbError::UnsupportedOpcode { .. } => SenseReason::InvalidOpcode,
            other => match other.field_pointer() {
                Some(fp) => SenseReason::InvalidCdbField {
                    byte: fp.byte,
                    bit: fp.bit,
                },
                None => SenseReason::InvalidCdbField { byte: 0, bit: None },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases: &[(SenseReason, &str)] = &[
            (SenseReason::InvalidOpcode, "ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20h/00h), FIELD POINTER=CDB byte 0"),
            (SenseReason::cdb(1, Some(7)), "ILLEGAL REQUEST, INVALID FIELD IN CDB (24h/00h), FIELD POINTER=CDB byte 1 bit 7"),
            (SenseReason::param(20, Some(0)), "ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST (26h/00h), FIELD POINTER=PARAMETER byte 20 bit 0"),
            (SenseReason::ParameterListLength, "ILLEGAL REQUEST, PARAMETER LIST LENGTH ERROR (1Ah/00h)"),
            (SenseReason::LbaOutOfRange, "ILLEGAL REQUEST, LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h)"),
            (SenseReason::WriteProtected, "DATA PROTECT, WRITE PROTECTED (27h/00h)"),
            (SenseReason::PiCheck { kind: PiErrorKind::Guard, lba: 0x1234 }, "ABORTED COMMAND, LOGICAL BLOCK GUARD CHECK FAILED (10h/01h), INFORMATION=0x1234"),
            (SenseReason::PiCheck { kind: PiErrorKind::AppTag, lba: 7 }, "ABORTED COMMAND, LOGICAL BLOCK APPLICATION TAG CHECK FAILED (10h/02h), INFORMATION=0x7"),
            (SenseReason::PiCheck { kind: PiErrorKind::RefTag, lba: 9 }, "ABORTED COMMAND, LOGICAL BLOCK REFERENCE TAG CHECK FAILED (10h/03h), INFORMATION=0x9"),
            (SenseReason::Miscompare { offset: 3 }, "MISCOMPARE, MISCOMPARE DURING VERIFY OPERATION (1Dh/00h), INFORMATION=0x3"),
            (SenseReason::UnitAttention(asc::POWER_ON_RESET), "UNIT ATTENTION, POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (29h/00h)"),
            (SenseReason::LunNotSupported, "ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h)"),
            (SenseReason::LunNotSupported, "ILLEGAL REQUEST, LOGICAL UNIT NOT SUPPORTED (25h/00h)"),
            (SenseReason::InvalidRelease, "ILLEGAL REQUEST, INVALID RELEASE OF PERSISTENT RESERVATION (26h/04h)"),
        ];
        for (r, text) in cases {
            assert_eq!(r.status(), Status::CHECK_CONDITION);
            assert_eq!(r.sense().unwrap().to_string(), *text);
        }
        assert_eq!(
            SenseReason::ReservationConflict.status(),
            Status::RESERVATION_CONFLICT
        );
        assert_eq!(SenseReason::ReservationConflict.sense(), None);
    }
}
