//! Operation codes and service actions (SPC-4, SBC-3) with their names.

/// TEST UNIT READY
pub const TEST_UNIT_READY: u8 = 0x00;
/// REQUEST SENSE
pub const REQUEST_SENSE: u8 = 0x03;
/// FORMAT UNIT
pub const FORMAT_UNIT: u8 = 0x04;
/// READ(6)
pub const READ_6: u8 = 0x08;
/// WRITE(6)
pub const WRITE_6: u8 = 0x0A;
/// INQUIRY
pub const INQUIRY: u8 = 0x12;
/// MODE SELECT(6)
pub const MODE_SELECT_6: u8 = 0x15;
/// RESERVE(6)
pub const RESERVE_6: u8 = 0x16;
/// RELEASE(6)
pub const RELEASE_6: u8 = 0x17;
/// MODE SENSE(6)
pub const MODE_SENSE_6: u8 = 0x1A;
/// START STOP UNIT
pub const START_STOP_UNIT: u8 = 0x1B;
/// SEND DIAGNOSTIC
pub const SEND_DIAGNOSTIC: u8 = 0x1D;
/// PREVENT ALLOW MEDIUM REMOVAL
pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1E;
/// READ CAPACITY(10)
pub const READ_CAPACITY_10: u8 = 0x25;
/// READ(10)
pub const READ_10: u8 = 0x28;
/// WRITE(10)
pub const WRITE_10: u8 = 0x2A;
/// WRITE AND VERIFY(10)
pub const WRITE_AND_VERIFY_10: u8 = 0x2E;
/// VERIFY(10)
pub const VERIFY_10: u8 = 0x2F;
/// PRE-FETCH(10)
pub const PRE_FETCH_10: u8 = 0x34;
/// SYNCHRONIZE CACHE(10)
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
/// WRITE BUFFER
pub const WRITE_BUFFER: u8 = 0x3B;
/// READ BUFFER
pub const READ_BUFFER: u8 = 0x3C;
/// WRITE SAME(10)
pub const WRITE_SAME_10: u8 = 0x41;
/// UNMAP
pub const UNMAP: u8 = 0x42;
/// LOG SENSE
pub const LOG_SENSE: u8 = 0x4D;
/// MODE SELECT(10)
pub const MODE_SELECT_10: u8 = 0x55;
/// RESERVE(10)
pub const RESERVE_10: u8 = 0x56;
/// RELEASE(10)
pub const RELEASE_10: u8 = 0x57;
/// MODE SENSE(10)
pub const MODE_SENSE_10: u8 = 0x5A;
/// PERSISTENT RESERVE IN
pub const PERSISTENT_RESERVE_IN: u8 = 0x5E;
/// PERSISTENT RESERVE OUT
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5F;
/// Variable-length CDB (32-byte forms); the service action is in bytes 8-9.
pub const VARIABLE_LENGTH: u8 = 0x7F;
/// EXTENDED COPY
pub const EXTENDED_COPY: u8 = 0x83;
/// READ(16)
pub const READ_16: u8 = 0x88;
/// COMPARE AND WRITE
pub const COMPARE_AND_WRITE: u8 = 0x89;
/// WRITE(16)
pub const WRITE_16: u8 = 0x8A;
/// WRITE AND VERIFY(16)
pub const WRITE_AND_VERIFY_16: u8 = 0x8E;
/// VERIFY(16)
pub const VERIFY_16: u8 = 0x8F;
/// PRE-FETCH(16)
pub const PRE_FETCH_16: u8 = 0x90;
/// SYNCHRONIZE CACHE(16)
pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
/// WRITE SAME(16)
pub const WRITE_SAME_16: u8 = 0x93;
/// SERVICE ACTION IN(16); READ CAPACITY(16) and GET LBA STATUS live here.
pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
/// REPORT LUNS
pub const REPORT_LUNS: u8 = 0xA0;
/// MAINTENANCE IN; REPORT SUPPORTED OPERATION CODES lives here.
pub const MAINTENANCE_IN: u8 = 0xA3;
/// MAINTENANCE OUT
pub const MAINTENANCE_OUT: u8 = 0xA4;
/// READ(12)
pub const READ_12: u8 = 0xA8;
/// WRITE(12)
pub const WRITE_12: u8 = 0xAA;
/// WRITE AND VERIFY(12)
pub const WRITE_AND_VERIFY_12: u8 = 0xAE;
/// VERIFY(12)
pub const VERIFY_12: u8 = 0xAF;

/// Service actions of SERVICE ACTION IN(16) (byte 1 bits 4:0).
pub mod sai16 {
    /// READ CAPACITY(16)
    pub const READ_CAPACITY_16: u8 = 0x10;
    /// GET LBA STATUS
    pub const GET_LBA_STATUS: u8 = 0x12;
}

/// Service actions of MAINTENANCE IN (byte 1 bits 4:0).
pub mod maint_in {
    /// REPORT TARGET PORT GROUPS
    pub const REPORT_TARGET_PORT_GROUPS: u8 = 0x0A;
    /// REPORT SUPPORTED OPERATION CODES
    pub const REPORT_SUPPORTED_OPERATION_CODES: u8 = 0x0C;
    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
    pub const REPORT_SUPPORTED_TMFS: u8 = 0x0D;
}

/// Service actions of the 32-byte variable-length CDB (bytes 8-9).
pub mod var {
    /// READ(32)
    pub const READ_32: u16 = 0x0009;
    /// VERIFY(32)
    pub const VERIFY_32: u16 = 0x000A;
    /// WRITE(32)
    pub const WRITE_32: u16 = 0x000B;
    /// WRITE AND VERIFY(32)
    pub const WRITE_AND_VERIFY_32: u16 = 0x000C;
    /// WRITE SAME(32)
    pub const WRITE_SAME_32: u16 = 0x000D;
}

/// Service actions of PERSISTENT RESERVE IN (byte 1 bits 4:0).
pub mod pr_in {
    /// READ KEYS
    pub const READ_KEYS: u8 = 0x00;
    /// READ RESERVATION
    pub const READ_RESERVATION: u8 = 0x01;
    /// REPORT CAPABILITIES
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    /// READ FULL STATUS
    pub const READ_FULL_STATUS: u8 = 0x03;
}

/// Service actions of PERSISTENT RESERVE OUT (byte 1 bits 4:0).
pub mod pr_out {
    /// REGISTER
    pub const REGISTER: u8 = 0x00;
    /// RESERVE
    pub const RESERVE: u8 = 0x01;
    /// RELEASE
    pub const RELEASE: u8 = 0x02;
    /// CLEAR
    pub const CLEAR: u8 = 0x03;
    /// PREEMPT
    pub const PREEMPT: u8 = 0x04;
    /// PREEMPT AND ABORT
    pub const PREEMPT_AND_ABORT: u8 = 0x05;
    /// REGISTER AND IGNORE EXISTING KEY
    pub const REGISTER_AND_IGNORE_EXISTING_KEY: u8 = 0x06;
    /// REGISTER AND MOVE
    pub const REGISTER_AND_MOVE: u8 = 0x07;
}

/// The command's name; `service_action` is consulted for the opcodes that have them.
pub fn name(opcode: u8, service_action: u16) -> Option<&'static str> {
    Some(match opcode {
        TEST_UNIT_READY => "TEST UNIT READY",
        REQUEST_SENSE => "REQUEST SENSE",
        FORMAT_UNIT => "FORMAT UNIT",
        READ_6 => "READ(6)",
        WRITE_6 => "WRITE(6)",
        INQUIRY => "INQUIRY",
        MODE_SELECT_6 => "MODE SELECT(6)",
        RESERVE_6 => "RESERVE(6)",
        RELEASE_6 => "RELEASE(6)",
        MODE_SENSE_6 => "MODE SENSE(6)",
        START_STOP_UNIT => "START STOP UNIT",
        SEND_DIAGNOSTIC => "SEND DIAGNOSTIC",
        PREVENT_ALLOW_MEDIUM_REMOVAL => "PREVENT ALLOW MEDIUM REMOVAL",
        READ_CAPACITY_10 => "READ CAPACITY(10)",
        READ_10 => "READ(10)",
        WRITE_10 => "WRITE(10)",
        WRITE_AND_VERIFY_10 => "WRITE AND VERIFY(10)",
        VERIFY_10 => "VERIFY(10)",
        PRE_FETCH_10 => "PRE-FETCH(10)",
        SYNCHRONIZE_CACHE_10 => "SYNCHRONIZE CACHE(10)",
        WRITE_BUFFER => "WRITE BUFFER",
        READ_BUFFER => "READ BUFFER",
        WRITE_SAME_10 => "WRITE SAME(10)",
        UNMAP => "UNMAP",
        LOG_SENSE => "LOG SENSE",
        MODE_SELECT_10 => "MODE SELECT(10)",
        RESERVE_10 => "RESERVE(10)",
        RELEASE_10 => "RELEASE(10)",
        MODE_SENSE_10 => "MODE SENSE(10)",
        PERSISTENT_RESERVE_IN => "PERSISTENT RESERVE IN",
        PERSISTENT_RESERVE_OUT => "PERSISTENT RESERVE OUT",
        VARIABLE_LENGTH => match service_action {
            var::READ_32 => "READ(32)",
            var::VERIFY_32 => "VERIFY(32)",
            var::WRITE_32 => "WRITE(32)",
            var::WRITE_AND_VERIFY_32 => "WRITE AND VERIFY(32)",
            var::WRITE_SAME_32 => "WRITE SAME(32)",
            _ => return None,
        },
        EXTENDED_COPY => "EXTENDED COPY",
        READ_16 => "READ(16)",
        COMPARE_AND_WRITE => "COMPARE AND WRITE",
        WRITE_16 => "WRITE(16)",
        WRITE_AND_VERIFY_16 => "WRITE AND VERIFY(16)",
        VERIFY_16 => "VERIFY(16)",
        PRE_FETCH_16 => "PRE-FETCH(16)",
        SYNCHRONIZE_CACHE_16 => "SYNCHRONIZE CACHE(16)",
        WRITE_SAME_16 => "WRITE SAME(16)",
        SERVICE_ACTION_IN_16 => match service_action as u8 {
            sai16::READ_CAPACITY_16 => "READ CAPACITY(16)",
            sai16::GET_LBA_STATUS => "GET LBA STATUS",
            _ => return None,
        },
        REPORT_LUNS => "REPORT LUNS",
        MAINTENANCE_IN => match service_action as u8 {
            maint_in::REPORT_TARGET_PORT_GROUPS => "REPORT TARGET PORT GROUPS",
            maint_in::REPORT_SUPPORTED_OPERATION_CODES => "REPORT SUPPORTED OPERATION CODES",
            maint_in::REPORT_SUPPORTED_TMFS => "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS",
            _ => return None,
        },
        MAINTENANCE_OUT => "MAINTENANCE OUT",
        READ_12 => "READ(12)",
        WRITE_12 => "WRITE(12)",
        WRITE_AND_VERIFY_12 => "WRITE AND VERIFY(12)",
        VERIFY_12 => "VERIFY(12)",
        _ => return None,
    })
}

/// The CDB length implied by the operation code's group (SAM-5 5.2), or `None` for
/// the variable-length (7Fh) and vendor-specific groups.
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_lengths() {
        assert_eq!(name(READ_16, 0), Some("READ(16)"));
        assert_eq!(name(VARIABLE_LENGTH, var::WRITE_32), Some("WRITE(32)"));
        assert_eq!(name(SERVICE_ACTION_IN_16, 0x10), Some("READ CAPACITY(16)"));
        assert_eq!(name(0xC0, 0), None);
        assert_eq!(cdb_len(READ_6), Some(6));
        assert_eq!(cdb_len(READ_10), Some(10));
        assert_eq!(cdb_len(UNMAP), Some(10));
        assert_eq!(cdb_len(MODE_SENSE_10), Some(10));
        assert_eq!(cdb_len(READ_16), Some(16));
        assert_eq!(cdb_len(READ_12), Some(12));
        assert_eq!(cdb_len(VARIABLE_LENGTH), None);
    }
}
