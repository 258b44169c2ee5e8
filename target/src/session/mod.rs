//! The iSCSI rules both portals share, whatever carries the PDUs (TCP or iSER): who
//! may log in and with what ([`login`]), the per-task rules of the full feature
//! phase ([`task`]), and how a command reaches the device server ([`lun`]).

pub mod login;
pub mod lun;
pub mod task;
