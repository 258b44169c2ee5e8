//! The verbs API: devices, protection domains, memory regions (including signature MRs), completion queues, RC queue pairs, work requests and the connection manager, over a provider trait.
//!
//! The shape follows libibverbs and the kernel's `ib_verbs.h`: a [`Context`] is an
//! open device; it hands out [`Pd`]s, [`Cq`]s and [`Qp`]s; memory is registered as
//! [`Mr`]s (plain) or [`SigMr`]s (signature-enabled, see [`sig`]); work is posted as
//! [`SendWr`]/[`RecvWr`] and comes back as [`WorkCompletion`]s. Connections are set
//! up with the rdma_cm-style [`cm`] module.
//!
//! Everything device-specific sits behind [`provider::ContextOps`], one table of
//! operations whose defaults return [`VerbsError::Unsupported`]. A provider (the soft
//! mlx5 HCA, or later real hardware) registers itself with
//! [`provider::register_provider`] and is then found by device name through
//! [`Context::open`], or is used directly with [`Context::open_with`].
//!
//! Memory safety: an [`Mr`] keeps its [`DmaBuf`] alive through an `Arc`, and the
//! provider holds its own clone for as long as the key is registered and for every
//! work request in flight, so registered memory can never be freed or moved under
//! the device. Bytes are reached through the buffer's lock, so the host and the
//! device never alias a `&mut`.

pub mod batch;
pub mod buf;
pub mod cm;
pub mod device;
pub mod error;
pub mod notify;
pub mod poll;
pub mod provider;
pub mod sig;
pub mod wr;

pub use batch::SendBatch;
pub use buf::DmaBuf;
pub use cm::{CmAddr, CmConnection, CmError, CmListener, ConnParam, ConnectRequest};
pub use device::{Context, Cq, Mr, Pd, Qp, QpInitAttr, SigMr};
pub use error::{Result, VerbsError};
pub use sig::{SigAttrs, SigDomain, SigErr, SigErrType};
pub use wr::{
    AccessFlags, QpState, RecvWr, SendFlags, SendOp, SendWr, Sge, WcOpcode, WcStatus,
    WorkCompletion,
};
