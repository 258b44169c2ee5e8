//! Enumerated PDU fields (opcodes, reasons, response codes, login status). Values the
//! RFC does not define are kept as `Unknown(n)` so they round-trip unchanged.

macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident : $ty:ty {
            $( $(#[$vmeta:meta])* $var:ident = $val:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $var, )*
            /// A value RFC 7143 does not define, kept as received.
            Unknown($ty),
        }

        impl From<$ty> for $name {
            fn from(v: $ty) -> Self {
                match v {
                    $( $val => $name::$var, )*
                    other => $name::Unknown(other),
                }
            }
        }

        impl From<$name> for $ty {
            fn from(v: $name) -> $ty {
                match v {
                    $( $name::$var => $val, )*
                    $name::Unknown(other) => other,
                }
            }
        }
    };
}

wire_enum! {
    /// Reject PDU reason (RFC 7143 section 11.17.1).
    pub enum RejectReason: u8 {
        /// 0x02 Data (payload) digest error.
        DataDigestError = 0x02,
        /// 0x03 SNACK Reject.
        SnackReject = 0x03,
        /// 0x04 Protocol error (for example a SNACK for a status already acknowledged).
        ProtocolError = 0x04,
        /// 0x05 Command not supported.
        CommandNotSupported = 0x05,
        /// 0x06 Immediate command rejected: too many immediate commands.
        ImmediateCommandReject = 0x06,
        /// 0x07 Task in progress.
        TaskInProgress = 0x07,
        /// 0x08 Invalid data ack.
        InvalidDataAck = 0x08,
        /// 0x09 Invalid PDU field.
        InvalidPduField = 0x09,
        /// 0x0a Long operation reject: out of resources to generate a TTT.
        LongOpReject = 0x0a,
        /// 0x0b Deprecated (was Negotiation Reset).
        NegotiationReset = 0x0b,
        /// 0x0c Waiting for Logout.
        WaitingForLogout = 0x0c,
    }
}

wire_enum! {
    /// SCSI task attribute, the ATTR bits of a SCSI Command.
    pub enum TaskAttr: u8 {
        /// 0 Untagged.
        Untagged = 0,
        /// 1 Simple.
        Simple = 1,
        /// 2 Ordered.
        Ordered = 2,
        /// 3 Head of queue.
        HeadOfQueue = 3,
        /// 4 ACA.
        Aca = 4,
    }
}

wire_enum! {
    /// Task Management Function Request function code.
    pub enum TmfFunction: u8 {
        /// 1 ABORT TASK.
        AbortTask = 1,
        /// 2 ABORT TASK SET.
        AbortTaskSet = 2,
        /// 3 CLEAR ACA.
        ClearAca = 3,
        /// 4 CLEAR TASK SET.
        ClearTaskSet = 4,
        /// 5 LOGICAL UNIT RESET.
        LogicalUnitReset = 5,
        /// 6 TARGET WARM RESET.
        TargetWarmReset = 6,
        /// 7 TARGET COLD RESET.
        TargetColdReset = 7,
        /// 8 TASK REASSIGN.
        TaskReassign = 8,
    }
}

wire_enum! {
    /// Task Management Function Response code.
    pub enum TmfResponseCode: u8 {
        /// 0 Function complete.
        Complete = 0,
        /// 1 Task does not exist.
        TaskDoesNotExist = 1,
        /// 2 LUN does not exist.
        LunDoesNotExist = 2,
        /// 3 Task still allegiant.
        TaskStillAllegiant = 3,
        /// 4 Task allegiance reassignment not supported.
        ReassignmentNotSupported = 4,
        /// 5 Task management function not supported.
        NotSupported = 5,
        /// 6 Function authorization failed.
        AuthorizationFailed = 6,
        /// 255 Function rejected.
        Rejected = 255,
    }
}

wire_enum! {
    /// Logout Request reason code.
    pub enum LogoutReason: u8 {
        /// 0 Close the session.
        CloseSession = 0,
        /// 1 Close the connection.
        CloseConnection = 1,
        /// 2 Remove the connection for recovery.
        RemoveForRecovery = 2,
    }
}

wire_enum! {
    /// Logout Response code.
    pub enum LogoutResponseCode: u8 {
        /// 0 Connection or session closed successfully.
        Success = 0,
        /// 1 CID not found.
        CidNotFound = 1,
        /// 2 Connection recovery is not supported.
        RecoveryNotSupported = 2,
        /// 3 Cleanup failed for various reasons.
        CleanupFailed = 3,
    }
}

wire_enum! {
    /// SNACK Request type.
    pub enum SnackType: u8 {
        /// 0 Data/R2T SNACK.
        DataR2t = 0,
        /// 1 Status SNACK.
        Status = 1,
        /// 2 DataACK.
        DataAck = 2,
        /// 3 R-Data SNACK.
        RData = 3,
    }
}

wire_enum! {
    /// Asynchronous Message event code.
    pub enum AsyncEvent: u8 {
        /// 0 A SCSI asynchronous event is reported in the sense data.
        ScsiEvent = 0,
        /// 1 The target requests a logout.
        LogoutRequest = 1,
        /// 2 The target will drop the connection.
        DropConnection = 2,
        /// 3 The target will drop all connections of the session.
        DropAllConnections = 3,
        /// 4 The target requests parameter negotiation.
        RequestNegotiation = 4,
        /// 5 The target indicates it will not accept more tasks on this connection.
        TaskTerminationNotification = 5,
        /// 255 Vendor-specific event.
        VendorSpecific = 255,
    }
}

wire_enum! {
    /// SCSI Response "Response" field.
    pub enum ScsiResponseCode: u8 {
        /// 0x00 Command completed at target (see Status).
        Completed = 0x00,
        /// 0x01 Target failure.
        TargetFailure = 0x01,
    }
}

/// Login stage (CSG/NSG field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    /// 0 SecurityNegotiation.
    Security = 0,
    /// 1 LoginOperationalNegotiation.
    Operational = 1,
    /// 3 FullFeaturePhase.
    FullFeature = 3,
}

impl Stage {
    pub(crate) fn from_bits(v: u8, field: &'static str) -> Result<Self, crate::DecodeError> {
        match v {
            0 => Ok(Stage::Security),
            1 => Ok(Stage::Operational),
            3 => Ok(Stage::FullFeature),
            other => Err(crate::DecodeError::InvalidField {
                field,
                value: other.into(),
            }),
        }
    }
}

/// Login Response Status-Class and Status-Detail (RFC 7143 section 11.13.5), as one
/// `class << 8 | detail` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginStatus(pub u16);

impl LoginStatus {
    /// 0x0000 Success.
    pub const SUCCESS: Self = Self(0x0000);
    /// 0x0101 Target moved temporarily (redirect; TargetAddress is returned).
    pub const TARGET_MOVED_TEMPORARILY: Self = Self(0x0101);
    /// 0x0102 Target moved permanently.
    pub const TARGET_MOVED_PERMANENTLY: Self = Self(0x0102);
    /// 0x0200 Initiator error (miscellaneous).
    pub const INITIATOR_ERROR: Self = Self(0x0200);
    /// 0x0201 Authentication failure.
    pub const AUTHENTICATION_FAILURE: Self = Self(0x0201);
    /// 0x0202 Authorization failure.
    pub const AUTHORIZATION_FAILURE: Self = Self(0x0202);
    /// 0x0203 Target not found.
    pub const NOT_FOUND: Self = Self(0x0203);
    /// 0x0204 Target removed.
    pub const TARGET_REMOVED: Self = Self(0x0204);
    /// 0x0205 Unsupported version.
    pub const UNSUPPORTED_VERSION: Self = Self(0x0205);
    /// 0x0206 Too many connections.
    pub const TOO_MANY_CONNECTIONS: Self = Self(0x0206);
    /// 0x0207 Missing parameter.
    pub const MISSING_PARAMETER: Self = Self(0x0207);
    /// 0x0208 Can't include in session.
    pub const CANT_INCLUDE_IN_SESSION: Self = Self(0x0208);
    /// 0x0209 Session type not supported.
    pub const SESSION_TYPE_NOT_SUPPORTED: Self = Self(0x0209);
    /// 0x020a Session does not exist.
    pub const SESSION_DOES_NOT_EXIST: Self = Self(0x020a);
    /// 0x020b Invalid request during login.
    pub const INVALID_DURING_LOGIN: Self = Self(0x020b);
    /// 0x0300 Target error (miscellaneous).
    pub const TARGET_ERROR: Self = Self(0x0300);
    /// 0x0301 Service unavailable.
    pub const SERVICE_UNAVAILABLE: Self = Self(0x0301);
    /// 0x0302 Out of resources.
    pub const OUT_OF_RESOURCES: Self = Self(0x0302);

    /// Status-Class (0 success, 1 redirection, 2 initiator error, 3 target error).
    pub fn class(self) -> u8 {
        (self.0 >> 8) as u8
    }

    /// Status-Detail.
    pub fn detail(self) -> u8 {
        self.0 as u8
    }

    /// Build from the two bytes.
    pub fn new(class: u8, detail: u8) -> Self {
        Self(u16::from(class) << 8 | u16::from(detail))
    }
}

/// The 6-byte Initiator Session ID (T, A, B, C, D fields).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Isid(pub [u8; 6]);

/// Which end of a connection sends a PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The iSCSI initiator.
    Initiator,
    /// The iSCSI target.
    Target,
}
