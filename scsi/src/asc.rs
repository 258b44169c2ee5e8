//! Additional sense codes (ASC/ASCQ pairs, SPC-4 Annex D) with their standard names.
//!
//! Each constant is an `(asc, ascq)` pair; [`name`] looks any pair up in one table so
//! tools can print `INVALID FIELD IN CDB (24h/00h)`.

/// An additional sense code and qualifier.
pub type AscPair = (u8, u8);

macro_rules! asc_table {
    ($( $(#[$doc:meta])* $id:ident = ($asc:expr, $ascq:expr), $name:expr; )*) => {
        $( $(#[$doc])* pub const $id: AscPair = ($asc, $ascq); )*
        /// Every ASC/ASCQ pair this crate names, in table order.
        pub const TABLE: &[(AscPair, &str)] = &[ $( (($asc, $ascq), $name), )* ];
    };
}

asc_table! {
    /// 00h/00h
    NO_ADDITIONAL_SENSE = (0x00, 0x00), "NO ADDITIONAL SENSE INFORMATION";
    /// 00h/16h
    OPERATION_IN_PROGRESS = (0x00, 0x16), "OPERATION IN PROGRESS";
    /// 04h/00h
    NOT_READY_CAUSE_NOT_REPORTABLE = (0x04, 0x00), "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE";
    /// 04h/01h
    BECOMING_READY = (0x04, 0x01), "LOGICAL UNIT IS IN PROCESS OF BECOMING READY";
    /// 04h/02h
    INITIALIZING_COMMAND_REQUIRED = (0x04, 0x02), "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED";
    /// 04h/03h
    MANUAL_INTERVENTION_REQUIRED = (0x04, 0x03), "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED";
    /// 04h/04h
    FORMAT_IN_PROGRESS = (0x04, 0x04), "LOGICAL UNIT NOT READY, FORMAT IN PROGRESS";
    /// 04h/0Ah
    ASYMMETRIC_ACCESS_STATE_TRANSITION = (0x04, 0x0A), "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION";
    /// 08h/00h
    LOGICAL_UNIT_COMMUNICATION_FAILURE = (0x08, 0x00), "LOGICAL UNIT COMMUNICATION FAILURE";
    /// 0Ch/00h
    WRITE_ERROR = (0x0C, 0x00), "WRITE ERROR";
    /// 0Ch/02h
    WRITE_ERROR_AUTO_REALLOCATION_FAILED = (0x0C, 0x02), "WRITE ERROR - AUTO REALLOCATION FAILED";
    /// 0Eh/03h
    INVALID_FIELD_IN_COMMAND_INFORMATION_UNIT = (0x0E, 0x03), "INVALID FIELD IN COMMAND INFORMATION UNIT";
    /// 10h/00h
    ID_CRC_OR_ECC_ERROR = (0x10, 0x00), "ID CRC OR ECC ERROR";
    /// 10h/01h: the guard of a protection information tuple did not match the data.
    LOGICAL_BLOCK_GUARD_CHECK_FAILED = (0x10, 0x01), "LOGICAL BLOCK GUARD CHECK FAILED";
    /// 10h/02h
    LOGICAL_BLOCK_APPLICATION_TAG_CHECK_FAILED = (0x10, 0x02), "LOGICAL BLOCK APPLICATION TAG CHECK FAILED";
    /// 10h/03h
    LOGICAL_BLOCK_REFERENCE_TAG_CHECK_FAILED = (0x10, 0x03), "LOGICAL BLOCK REFERENCE TAG CHECK FAILED";
    /// 11h/00h
    UNRECOVERED_READ_ERROR = (0x11, 0x00), "UNRECOVERED READ ERROR";
    /// 1Ah/00h
    PARAMETER_LIST_LENGTH_ERROR = (0x1A, 0x00), "PARAMETER LIST LENGTH ERROR";
    /// 1Dh/00h
    MISCOMPARE_DURING_VERIFY = (0x1D, 0x00), "MISCOMPARE DURING VERIFY OPERATION";
    /// 20h/00h
    INVALID_COMMAND_OPERATION_CODE = (0x20, 0x00), "INVALID COMMAND OPERATION CODE";
    /// 21h/00h
    LBA_OUT_OF_RANGE = (0x21, 0x00), "LOGICAL BLOCK ADDRESS OUT OF RANGE";
    /// 24h/00h
    INVALID_FIELD_IN_CDB = (0x24, 0x00), "INVALID FIELD IN CDB";
    /// 25h/00h
    LOGICAL_UNIT_NOT_SUPPORTED = (0x25, 0x00), "LOGICAL UNIT NOT SUPPORTED";
    /// 26h/00h
    INVALID_FIELD_IN_PARAMETER_LIST = (0x26, 0x00), "INVALID FIELD IN PARAMETER LIST";
    /// 26h/01h
    PARAMETER_NOT_SUPPORTED = (0x26, 0x01), "PARAMETER NOT SUPPORTED";
    /// 26h/02h
    PARAMETER_VALUE_INVALID = (0x26, 0x02), "PARAMETER VALUE INVALID";
    /// 26h/04h
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION = (0x26, 0x04), "INVALID RELEASE OF PERSISTENT RESERVATION";
    /// 27h/00h
    WRITE_PROTECTED = (0x27, 0x00), "WRITE PROTECTED";
    /// 27h/07h
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT = (0x27, 0x07), "SPACE ALLOCATION FAILED WRITE PROTECT";
    /// 28h/00h
    NOT_READY_TO_READY_CHANGE = (0x28, 0x00), "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED";
    /// 29h/00h
    POWER_ON_RESET = (0x29, 0x00), "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED";
    /// 29h/01h
    POWER_ON_OCCURRED = (0x29, 0x01), "POWER ON OCCURRED";
    /// 29h/02h
    SCSI_BUS_RESET_OCCURRED = (0x29, 0x02), "SCSI BUS RESET OCCURRED";
    /// 29h/03h
    BUS_DEVICE_RESET_FUNCTION_OCCURRED = (0x29, 0x03), "BUS DEVICE RESET FUNCTION OCCURRED";
    /// 29h/04h
    DEVICE_INTERNAL_RESET = (0x29, 0x04), "DEVICE INTERNAL RESET";
    /// 29h/07h
    I_T_NEXUS_LOSS_OCCURRED = (0x29, 0x07), "I_T NEXUS LOSS OCCURRED";
    /// 2Ah/00h
    PARAMETERS_CHANGED = (0x2A, 0x00), "PARAMETERS CHANGED";
    /// 2Ah/01h
    MODE_PARAMETERS_CHANGED = (0x2A, 0x01), "MODE PARAMETERS CHANGED";
    /// 2Ah/03h
    RESERVATIONS_PREEMPTED = (0x2A, 0x03), "RESERVATIONS PREEMPTED";
    /// 2Ah/04h
    RESERVATIONS_RELEASED = (0x2A, 0x04), "RESERVATIONS RELEASED";
    /// 2Ah/05h
    REGISTRATIONS_PREEMPTED = (0x2A, 0x05), "REGISTRATIONS PREEMPTED";
    /// 2Ah/06h
    ASYMMETRIC_ACCESS_STATE_CHANGED = (0x2A, 0x06), "ASYMMETRIC ACCESS STATE CHANGED";
    /// 2Ah/09h
    CAPACITY_DATA_HAS_CHANGED = (0x2A, 0x09), "CAPACITY DATA HAS CHANGED";
    /// 2Ch/00h
    COMMAND_SEQUENCE_ERROR = (0x2C, 0x00), "COMMAND SEQUENCE ERROR";
    /// 2Fh/00h
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = (0x2F, 0x00), "COMMANDS CLEARED BY ANOTHER INITIATOR";
    /// 31h/00h
    MEDIUM_FORMAT_CORRUPTED = (0x31, 0x00), "MEDIUM FORMAT CORRUPTED";
    /// 38h/07h
    THIN_PROVISIONING_SOFT_THRESHOLD_REACHED = (0x38, 0x07), "THIN PROVISIONING SOFT THRESHOLD REACHED";
    /// 39h/00h
    SAVING_PARAMETERS_NOT_SUPPORTED = (0x39, 0x00), "SAVING PARAMETERS NOT SUPPORTED";
    /// 3Ah/00h
    MEDIUM_NOT_PRESENT = (0x3A, 0x00), "MEDIUM NOT PRESENT";
    /// 3Fh/01h
    MICROCODE_HAS_BEEN_CHANGED = (0x3F, 0x01), "MICROCODE HAS BEEN CHANGED";
    /// 3Fh/03h
    INQUIRY_DATA_HAS_CHANGED = (0x3F, 0x03), "INQUIRY DATA HAS CHANGED";
    /// 3Fh/0Eh
    REPORTED_LUNS_DATA_HAS_CHANGED = (0x3F, 0x0E), "REPORTED LUNS DATA HAS CHANGED";
    /// 44h/00h
    INTERNAL_TARGET_FAILURE = (0x44, 0x00), "INTERNAL TARGET FAILURE";
    /// 47h/00h
    SCSI_PARITY_ERROR = (0x47, 0x00), "SCSI PARITY ERROR";
    /// 47h/05h
    PROTOCOL_SERVICE_CRC_ERROR = (0x47, 0x05), "PROTOCOL SERVICE CRC ERROR";
    /// 49h/00h
    INVALID_MESSAGE_ERROR = (0x49, 0x00), "INVALID MESSAGE ERROR";
    /// 4Bh/00h
    DATA_PHASE_ERROR = (0x4B, 0x00), "DATA PHASE ERROR";
    /// 4Bh/03h
    ACK_NAK_TIMEOUT = (0x4B, 0x03), "ACK/NAK TIMEOUT";
    /// 53h/02h
    MEDIUM_REMOVAL_PREVENTED = (0x53, 0x02), "MEDIUM REMOVAL PREVENTED";
    /// 55h/03h
    INSUFFICIENT_RESOURCES = (0x55, 0x03), "INSUFFICIENT RESOURCES";
    /// 55h/04h
    INSUFFICIENT_REGISTRATION_RESOURCES = (0x55, 0x04), "INSUFFICIENT REGISTRATION RESOURCES";
}

/// The standard name of an ASC/ASCQ pair, or `None` when this table does not know it.
pub fn name(asc: u8, ascq: u8) -> Option<&'static str> {
    TABLE
        .iter()
        .find(|(pair, _)| *pair == (asc, ascq))
        .map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let expect: &[(AscPair, &str)] = &[
            ((0x24, 0x00), "INVALID FIELD IN CDB"),
            ((0x10, 0x01), "LOGICAL BLOCK GUARD CHECK FAILED"),
            ((0x10, 0x02), "LOGICAL BLOCK APPLICATION TAG CHECK FAILED"),
            ((0x10, 0x03), "LOGICAL BLOCK REFERENCE TAG CHECK FAILED"),
            ((0x21, 0x00), "LOGICAL BLOCK ADDRESS OUT OF RANGE"),
            ((0x20, 0x00), "INVALID COMMAND OPERATION CODE"),
            ((0x27, 0x00), "WRITE PROTECTED"),
            ((0x1A, 0x00), "PARAMETER LIST LENGTH ERROR"),
            ((0x26, 0x00), "INVALID FIELD IN PARAMETER LIST"),
            (
                (0x29, 0x00),
                "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
            ),
            ((0x2A, 0x01), "MODE PARAMETERS CHANGED"),
            ((0x2A, 0x09), "CAPACITY DATA HAS CHANGED"),
            ((0x2A, 0x03), "RESERVATIONS PREEMPTED"),
            ((0x2A, 0x04), "RESERVATIONS RELEASED"),
            ((0x1D, 0x00), "MISCOMPARE DURING VERIFY OPERATION"),
        ];
        for ((a, q), n) in expect {
            assert_eq!(name(*a, *q), Some(*n), "{a:02X}h/{q:02X}h");
        }
        assert_eq!(name(0x99, 0x99), None);
    }

    #[test]
    fn table_has_no_duplicates() {
        for (i, (p, _)) in TABLE.iter().enumerate() {
            assert!(
                TABLE[i + 1..].iter().all(|(q, _)| q != p),
                "duplicate {p:?}"
            );
        }
    }
}
