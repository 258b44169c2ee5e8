//! Work requests, scatter/gather elements, access flags and work completions.

use std::fmt;
use std::ops::BitOr;

use crate::sig::SigAttrs;

macro_rules! flags {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident = $v:expr,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
        pub struct $name(pub u32);
        impl $name {
            /// No flag set.
            pub const NONE: $name = $name(0);
            $($(#[$fm])* pub const $f: $name = $name($v);)*
            /// Whether every flag of `other` is set.
            pub fn contains(self, other: $name) -> bool { self.0 & other.0 == other.0 }
        }
        impl BitOr for $name {
            type Output = $name;
            fn bitor(self, rhs: $name) -> $name { $name(self.0 | rhs.0) }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut first = true;
                write!(f, "{}(", stringify!($name))?;
                $(if self.contains($name::$f) && $v != 0 {
                    if !first { f.write_str("|")?; }
                    first = false;
                    f.write_str(stringify!($f))?;
                })*
                let _ = first;
                f.write_str(")")
            }
        }
    };
}

flags! {
    /// Memory access rights of an MR (`IB_ACCESS_*`; local read is always allowed).
    AccessFlags {
        /// The local HCA may write (receive, RDMA READ response placement).
        LOCAL_WRITE = 1,
        /// Peers may RDMA WRITE.
        REMOTE_WRITE = 2,
        /// Peers may RDMA READ.
        REMOTE_READ = 4,
    }
}

flags! {
    /// Send work request flags (`IB_SEND_*`).
    SendFlags {
        /// Wait for earlier RDMA READs to finish first.
        FENCE = 1,
        /// Generate a completion even if the QP does not signal all WRs.
        SIGNALED = 2,
        /// Solicited event at the receiver.
        SOLICITED = 4,
    }
}

/// One scatter/gather element: `length` bytes at I/O virtual address `addr` of the
/// memory region named by `lkey`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sge {
    /// I/O virtual address.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// Local key of the MR.
    pub lkey: u32,
}

/// The operation of a send work request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// SEND into the peer's next receive.
    Send,
    /// SEND that also invalidates `invalidate_rkey` at the receiver.
    SendWithInv {
        /// Remote key to invalidate at the receiver.
        invalidate_rkey: u32,
    },
    /// RDMA WRITE of the gather list to `remote_addr` of `rkey`.
    RdmaWrite {
        /// Remote I/O virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// RDMA READ from `remote_addr` of `rkey` into the scatter list.
    RdmaRead {
        /// Remote I/O virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// Invalidate a local key (fast-registration or signature MR).
    LocalInv {
        /// Key to invalidate.
        key: u32,
    },
    /// Fast registration: bind the MR `mr` (from `Pd::alloc_mr`) to `range` of an
    /// already registered MR with new access rights.
    RegMr {
        /// Key of the fast-registration MR.
        mr: u32,
        /// Memory it maps.
        range: Sge,
        /// Access rights granted through it.
        access: AccessFlags,
    },
    /// Signature registration (`IB_WR_REG_MR_INTEGRITY`): bind data (and optional
    /// separate protection) memory and signature attributes to a signature MR.
    RegMrIntegrity {
        /// Key of the signature MR (from `Pd::alloc_mr_integrity`).
        mr: u32,
        /// Data buffer (DIF-interleaved when mem is DIF and `prot` is `None`).
        data: Sge,
        /// Separate protection buffer (DIX), 8 bytes per block.
        prot: Option<Sge>,
        /// Signature attributes.
        sig: SigAttrs,
        /// Access rights granted through the signature MR.
        access: AccessFlags,
    },
}

impl SendOp {
    /// The completion opcode of this operation.
    pub fn wc_opcode(&self) -> WcOpcode {
        match self {
            SendOp::Send | SendOp::SendWithInv { .. } => WcOpcode::Send,
            SendOp::RdmaWrite { .. } => WcOpcode::RdmaWrite,
            SendOp::RdmaRead { .. } => WcOpcode::RdmaRead,
            SendOp::LocalInv { .. } => WcOpcode::LocalInv,
            SendOp::RegMr { .. } | SendOp::RegMrIntegrity { .. } => WcOpcode::RegMr,
        }
    }
}

/// A send-queue work request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendWr {
    /// Caller's cookie, returned in the completion.
    pub wr_id: u64,
    /// Operation.
    pub op: SendOp,
    /// Gather (SEND, WRITE) or scatter (READ) list.
    pub sg_list: Vec<Sge>,
    /// Flags.
    pub flags: SendFlags,
}

impl SendWr {
    /// A signaled SEND of `sg`.
    pub fn send(wr_id: u64, sg: Sge) -> SendWr {
        SendWr {
            wr_id,
            op: SendOp::Send,
            sg_list: vec![sg],
            flags: SendFlags::SIGNALED,
        }
    }

    /// A signaled SEND of `sg` that invalidates `rkey` at the receiver.
    pub fn send_with_inv(wr_id: u64, sg: Sge, rkey: u32) -> SendWr {
        SendWr {
            wr_id,
            op: SendOp::SendWithInv {
                invalidate_rkey: rkey,
            },
            sg_list: vec![sg],
            flags: SendFlags::SIGNALED,
        }
    }

    /// A signaled RDMA WRITE of `sg` to `remote_addr`/`rkey`.
    pub fn rdma_write(wr_id: u64, sg: Sge, remote_addr: u64, rkey: u32) -> SendWr {
        SendWr {
            wr_id,
            op: SendOp::RdmaWrite { remote_addr, rkey },
            sg_list: vec![sg],
            flags: SendFlags::SIGNALED,
        }
    }

    /// A signaled RDMA READ from `remote_addr`/`rkey` into `sg`.
    pub fn rdma_read(wr_id: u64, sg: Sge, remote_addr: u64, rkey: u32) -> SendWr {
        SendWr {
            wr_id,
            op: SendOp::RdmaRead { remote_addr, rkey },
            sg_list: vec![sg],
            flags: SendFlags::SIGNALED,
        }
    }

    /// A signaled LOCAL_INV of `key`.
    pub fn local_inv(wr_id: u64, key: u32) -> SendWr {
        SendWr {
            wr_id,
            op: SendOp::LocalInv { key },
            sg_list: Vec::new(),
            flags: SendFlags::SIGNALED,
        }
    }

    /// A signaled signature registration.
    pub fn reg_mr_integrity(
        wr_id: u64,
        mr: u32,
        data: Sge,
        prot: Option<Sge>,
        sig: SigAttrs,
        access: AccessFlags,
    ) -> SendWr {
        SendWr {
            wr_id,
            op: SendOp::RegMrIntegrity {
                mr,
                data,
                prot,
                sig,
                access,
            },
            sg_list: Vec::new(),
            flags: SendFlags::SIGNALED,
        }
    }

    /// Total bytes of the gather/scatter list.
    pub fn total_len(&self) -> u64 {
        self.sg_list.iter().map(|s| u64::from(s.length)).sum()
    }
}

/// A receive-queue work request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecvWr {
    /// Caller's cookie, returned in the completion.
    pub wr_id: u64,
    /// Scatter list for the incoming SEND.
    pub sg_list: Vec<Sge>,
}

impl RecvWr {
    /// A receive into one buffer.
    pub fn new(wr_id: u64, sg: Sge) -> RecvWr {
        RecvWr {
            wr_id,
            sg_list: vec![sg],
        }
    }
}

/// Completion status (`ib_wc_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcStatus {
    /// The work request succeeded.
    Success,
    /// A receive buffer was too small, or a gather list too long.
    LocalLengthErr,
    /// Internal consistency error of the local QP (bad WQE).
    LocalQpOpErr,
    /// An lkey was invalid or its access rights did not allow the operation.
    LocalProtErr,
    /// The QP was in error; the request was flushed without being executed.
    WrFlushErr,
    /// A memory registration (UMR) failed.
    MwBindErr,
    /// Unexpected response from the peer.
    BadRespErr,
    /// Local access error on the responder side of an operation.
    LocalAccessErr,
    /// The peer found the request invalid.
    RemoteInvalidReqErr,
    /// The peer refused the rkey, bounds or access rights.
    RemoteAccessErr,
    /// The peer could not complete the operation.
    RemoteOpErr,
    /// The transport gave up (corrupted frame, lost connection).
    RetryExceeded,
    /// The peer had no receive posted for too long.
    RnrRetryExceeded,
    /// Any other error.
    GeneralErr,
}

/// Completion opcode (`ib_wc_opcode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcOpcode {
    /// A SEND (with or without invalidate) finished.
    Send,
    /// An RDMA WRITE finished.
    RdmaWrite,
    /// An RDMA READ finished.
    RdmaRead,
    /// A LOCAL_INV finished.
    LocalInv,
    /// A registration (REG_MR or REG_MR_INTEGRITY) finished.
    RegMr,
    /// A receive consumed an incoming SEND.
    Recv,
}

/// A work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The work request's cookie.
    pub wr_id: u64,
    /// Outcome.
    pub status: WcStatus,
    /// What finished.
    pub opcode: WcOpcode,
    /// Bytes received (receives) or transferred.
    pub byte_len: u32,
    /// Local queue pair number.
    pub qp_num: u32,
    /// For a receive of SEND_WITH_INV: the rkey the sender invalidated here.
    pub invalidated_rkey: Option<u32>,
    /// Provider-specific error syndrome (0 on success).
    pub vendor_err: u32,
}

impl WorkCompletion {
    /// Whether the status is [`WcStatus::Success`].
    pub fn is_ok(&self) -> bool {
        self.status == WcStatus::Success
    }
}

/// Queue pair state (`ib_qp_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QpState {
    /// Created, not connected.
    Reset,
    /// Initialised; receives may be posted.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send (connected).
    Rts,
    /// Send queue drained: posted send WRs wait until the QP is moved back to RTS
    /// (receives go on).
    Sqd,
    /// Error: everything posted is flushed with `WrFlushErr`.
    Error,
}
