//! Login phase state machines (RFC 7143 sections 6.3 and 11.12-11.13) for both roles:
//! security stage (CSG 0, AuthMethod and CHAP), operational stage (CSG 1, key
//! negotiation), transition to full feature phase (3); text continuation with the C
//! bit in both directions; ISID/TSIH, version, names and status classes.
//!
//! Target: [`TargetLogin::new`] → for every received PDU
//! [`TargetLogin::handle_request`] → send the PDU in the returned [`TargetStep`];
//! `Continue` means stay in login, `Complete` means enter full feature phase with the
//! [`TargetLoginOutcome`], `Failed` means send the response and close the connection.
//!
//! Initiator: [`InitiatorLogin::new`] → send [`InitiatorLogin::start`] → for every
//! Login Response [`InitiatorLogin::handle_response`] → `Send` the next request, or
//! `Complete` with an [`InitiatorLoginOutcome`]; errors are a typed [`LoginFailure`]
//! (including redirection with the TargetAddress to try next).

mod initiator;
mod target;

pub use initiator::*;
pub use target::*;

use crate::chap::ChapError;
use crate::negotiate::NegotiationError;
use crate::pdu::LoginStatus;
use crate::text::TextError;

/// The only iSCSI version defined (Version-max and Version-min 0x00).
pub const ISCSI_VERSION: u8 = 0x00;

/// MaxRecvDataSegmentLength in force during login (RFC 7143: the default, 8192).
pub const LOGIN_MAX_SEGMENT: usize = 8192;

/// Why a target refused a login; each maps to a Login Response status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// A PDU other than a Login Request arrived during login.
    #[error("PDU other than Login Request during login")]
    NotLoginRequest,
    /// Version-min above what we support.
    #[error("unsupported iSCSI version range {min}..={max}")]
    UnsupportedVersion {
        /// Version-min of the request.
        min: u8,
        /// Version-max of the request.
        max: u8,
    },
    /// A required key is missing (InitiatorName, TargetName for a normal session).
    #[error("missing key {0}")]
    MissingKey(&'static str),
    /// The TargetName is not served here.
    #[error("target {0:?} not found")]
    TargetNotFound(String),
    /// The target has moved (redirection, status class 1).
    #[error("target moved to {address}")]
    Moved {
        /// TargetAddress returned to the initiator.
        address: String,
        /// Permanently (0x0102) or temporarily (0x0101).
        permanent: bool,
    },
    /// The initiator may not access this target.
    #[error("initiator {0:?} is not authorized")]
    NotAuthorized(String),
    /// Authentication failed.
    #[error("authentication failed: {0}")]
    Authentication(String),
    /// Malformed text.
    #[error("text: {0}")]
    Text(#[from] TextError),
    /// Key negotiation failed.
    #[error("negotiation: {0}")]
    Negotiation(#[from] NegotiationError),
    /// The initiator broke a login rule.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// TSIH names a session that does not exist.
    #[error("session {0:#06x} does not exist")]
    SessionDoesNotExist(u16),
    /// The session type is not supported here.
    #[error("session type not supported")]
    SessionTypeNotSupported,
    /// The target cannot proceed (configuration, resources).
    #[error("target error: {0}")]
    Target(&'static str),
}

impl LoginError {
    /// The Login Response status this error produces.
    pub fn status(&self) -> LoginStatus {
        match self {
            LoginError::NotLoginRequest => LoginStatus::INVALID_DURING_LOGIN,
            LoginError::UnsupportedVersion { .. } => LoginStatus::UNSUPPORTED_VERSION,
            LoginError::MissingKey(_) => LoginStatus::MISSING_PARAMETER,
            LoginError::TargetNotFound(_) => LoginStatus::NOT_FOUND,
            LoginError::Moved {
                permanent: false, ..
            } => LoginStatus::TARGET_MOVED_TEMPORARILY,
            LoginError::Moved {
                permanent: true, ..
            } => LoginStatus::TARGET_MOVED_PERMANENTLY,
            LoginError::NotAuthorized(_) => LoginStatus::AUTHORIZATION_FAILURE,
            LoginError::Authentication(_) => LoginStatus::AUTHENTICATION_FAILURE,
            LoginError::Text(_) | LoginError::Negotiation(_) | LoginError::Protocol(_) => {
                LoginStatus::INITIATOR_ERROR
            }
            LoginError::SessionDoesNotExist(_) => LoginStatus::SESSION_DOES_NOT_EXIST,
            LoginError::SessionTypeNotSupported => LoginStatus::SESSION_TYPE_NOT_SUPPORTED,
            LoginError::Target(_) => LoginStatus::TARGET_ERROR,
        }
    }
}

impl From<ChapError> for LoginError {
    fn from(e: ChapError) -> Self {
        LoginError::Authentication(e.to_string())
    }
}

/// Why an initiator's login did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginFailure {
    /// The target answered with a non-success status.
    #[error("target refused login with status {0:?}")]
    Status(LoginStatus),
    /// The target redirected us (status class 1).
    #[error("redirected to {address}")]
    Redirect {
        /// TargetAddress to log in to instead (`host:port,tpgt`).
        address: String,
        /// Permanent (0x0102) or temporary (0x0101).
        permanent: bool,
    },
    /// The response broke a login rule.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// CHAP failed (including mutual authentication of the target).
    #[error("CHAP: {0}")]
    Chap(#[from] ChapError),
    /// Malformed text.
    #[error("text: {0}")]
    Text(#[from] TextError),
    /// The target answered our offers against the rules.
    #[error("negotiation: {0}")]
    Negotiation(#[from] NegotiationError),
    /// The login already finished.
    #[error("login already finished")]
    Finished,
}

/// Returned when a finished login machine is fed more input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("login already finished")]
pub struct LoginFinished;
