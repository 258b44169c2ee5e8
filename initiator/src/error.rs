//! Typed errors of the initiator library, by fault domain: the connection, the login,
//! the target's behaviour on the wire, and the caller's request.

use iscsi::pdu::LoginStatus;

/// Why a login did not reach full feature phase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The target answered with a non-success Status-Class.
    #[error("login rejected by the target: status {:#06x} ({})", status.0, login_status_name(*status))]
    Status {
        /// Status-Class and Status-Detail.
        status: LoginStatus,
        /// TargetAddress on a redirection, if the target sent one.
        redirect: Option<String>,
    },
    /// Key negotiation failed.
    #[error("negotiation: {0}")]
    Negotiation(#[from] iscsi::negotiate::NegotiationError),
    /// CHAP failed (including a wrong mutual CHAP response from the target).
    #[error("CHAP: {0}")]
    Chap(#[from] iscsi::chap::ChapError),
    /// The target's login text is malformed.
    #[error("login text: {0}")]
    Text(#[from] iscsi::text::TextError),
    /// The target broke the login sequence.
    #[error("login protocol: {0}")]
    Protocol(String),
    /// CHAP is required by the target but no credentials are configured.
    #[error("the target requires CHAP but no chap credentials are configured for it")]
    NoCredentials,
}

/// A readable name for a login status.
pub fn login_status_name(s: LoginStatus) -> &'static str {
    match s {
        LoginStatus::SUCCESS => "success",
        LoginStatus::TARGET_MOVED_TEMPORARILY => "target moved temporarily",
        LoginStatus::TARGET_MOVED_PERMANENTLY => "target moved permanently",
        LoginStatus::INITIATOR_ERROR => "initiator error",
        LoginStatus::AUTHENTICATION_FAILURE => "authentication failure",
        LoginStatus::AUTHORIZATION_FAILURE => "authorization failure",
        LoginStatus::NOT_FOUND => "target not found",
        LoginStatus::TARGET_REMOVED => "target removed",
        LoginStatus::UNSUPPORTED_VERSION => "unsupported version",
        LoginStatus::TOO_MANY_CONNECTIONS => "too many connections",
        LoginStatus::MISSING_PARAMETER => "missing parameter",
        LoginStatus::CANT_INCLUDE_IN_SESSION => "cannot include in session",
        LoginStatus::SESSION_TYPE_NOT_SUPPORTED => "session type not supported",
        LoginStatus::SESSION_DOES_NOT_EXIST => "session does not exist",
        LoginStatus::INVALID_DURING_LOGIN => "invalid request during login",
        LoginStatus::TARGET_ERROR => "target error",
        LoginStatus::SERVICE_UNAVAILABLE => "service unavailable",
        LoginStatus::OUT_OF_RESOURCES => "out of resources",
        _ => "unknown status",
    }
}

/// Errors of sessions and commands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Socket I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Login failed.
    #[error("login to {target}: {source}")]
    Login {
        /// The target name (or "discovery").
        target: String,
        /// Why.
        source: LoginError,
    },
    /// A PDU from the target could not be decoded; the connection was closed.
    #[error("bad PDU from the target: {0}")]
    Framing(#[from] iscsi::FrameError),
    /// The target broke the protocol (a PDU that makes no sense in its context).
    #[error("protocol violation by the target: {0}")]
    Protocol(String),
    /// The target rejected one of our PDUs.
    #[error("the target rejected a PDU: reason {0:?}")]
    Rejected(iscsi::pdu::RejectReason),
    /// The connection is gone (closed by the target, the keepalive or a logout).
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// A command did not complete in time and was aborted.
    #[error("command timed out after {secs} s and was aborted ({recovery})")]
    Timeout {
        /// The command timeout.
        secs: u32,
        /// What the recovery did (ABORT TASK, LUN RESET).
        recovery: String,
    },
    /// The target answered a SCSI command with a non-zero iSCSI Response (target failure).
    #[error("target failure (iSCSI response {0:#x})")]
    TargetFailure(u8),
    /// The protection policy does not fit the LUN.
    #[error("LUN {lun}: {source}; the LUN reports {caps}")]
    Policy {
        /// The LUN.
        lun: u16,
        /// The mismatch.
        source: conf::protection::PolicyError,
        /// What the LUN supports, in words.
        caps: String,
    },
    /// The caller asked for something impossible (bad length, LBA out of range...).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A PI buffer layout error (lengths that do not fit the geometry).
    #[error("PI layout: {0}")]
    Layout(#[from] t10pi::LayoutError),
    /// A block command ended with a status other than GOOD (for exports, which can only
    /// report an errno).
    #[error("{0}")]
    Status(String),
    /// No target answered discovery, or the named target was not found.
    #[error("{0}")]
    NotFound(String),
}

impl Error {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// True when the session is gone and a reconnect may help.
    pub fn is_connection_loss(&self) -> bool {
        matches!(
            self,
            Error::Io { .. } | Error::ConnectionLost(_) | Error::Framing(_)
        )
    }
}
