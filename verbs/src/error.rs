//! Errors of the verbs API: API misuse, unsupported operations and resource problems.

/// Error returned synchronously by a verb (a failed *transfer* is reported in a
/// [`crate::WorkCompletion`] instead).
#[derive(Debug, thiserror::Error)]
pub enum VerbsError {
    /// The provider does not implement this operation.
    #[error("operation {0} is not supported by this provider")]
    Unsupported(&'static str),
    /// No registered provider offers a device of this name.
    #[error("no RDMA device named {0:?}")]
    NoSuchDevice(String),
    /// An argument is out of range or inconsistent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A key, queue or object handle is not known to the device.
    #[error("unknown {what} {id:#x}")]
    UnknownHandle {
        /// Kind of object ("lkey", "cq", "qp", "pd").
        what: &'static str,
        /// Its handle.
        id: u32,
    },
    /// A work queue has no room for the posted work requests.
    #[error("{0} queue is full")]
    QueueFull(&'static str),
    /// The queue pair is not in a state that accepts this operation.
    #[error("queue pair {qpn:#x} is in state {state:?}")]
    InvalidQpState {
        /// Queue pair number.
        qpn: u32,
        /// Its current state.
        state: crate::QpState,
    },
    /// A signature MR was registered again before `check_mr_status` consumed the
    /// outcome of its previous use.
    #[error("signature MR {key:#x} must have its status checked before it is registered again")]
    SigStatusNotChecked {
        /// The signature MR's key.
        key: u32,
    },
    /// A buffer access falls outside the buffer.
    #[error("range {offset}+{len} is outside a buffer of {size} bytes")]
    OutOfBounds {
        /// Start of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Size of the buffer or region.
        size: usize,
    },
    /// A resource could not be allocated.
    #[error("out of {0}")]
    Exhausted(&'static str),
    /// A completion queue was too small for the work in flight and lost
    /// completions (`IBV_EVENT_CQ_ERR`); it stays unusable.
    #[error("completion queue {0} overran: completions were lost")]
    CqOverrun(u32),
    /// The device has been shut down.
    #[error("device {0} is gone")]
    DeviceGone(String),
    /// An operating-system error inside the provider.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// Result of a verb.
pub type Result<T, E = VerbsError> = std::result::Result<T, E>;
