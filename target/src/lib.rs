//! iser-target: the SCSI device server, backing stores, and the iSCSI/TCP and iSER portals.
//!
//! [`device`] answers SCSI commands for one logical unit at a time (SPC/SBC, T10-PI
//! decisions, persistent reservations, unit attentions) over a pluggable backing
//! store; the transports move bytes and apply the protection plan it returns.

pub mod control;
pub mod daemon;
pub mod device;
pub mod iscsi_tcp;
pub mod iser;
pub mod luns;
pub mod registry;
pub mod service;
pub mod session;
pub mod stats;
