//! iser-initiator: discovery, login, sessions, per-command protection and block exports.
//!
//! The crate is one library used by the `iser-initiator` daemon and its scripting CLI:
//!
//! - sans-IO pieces, tested without sockets: [`login`] (the initiator's login state
//!   machine over `iscsi` PDUs, CHAP included), [`command`] (Data-Out planning for
//!   immediate/unsolicited/solicited data, Data-In reassembly, residuals), [`protection`]
//!   (the per-command PI decision of DESIGN section 5 and the software PI engine used
//!   over TCP, with the sense data a failed check becomes), [`discovery`] (SendTargets
//!   text), [`lun`] (LUN addressing and capability parsing);
//! - the async session over TCP ([`session`]): one reader task, a CmdSN window, many
//!   tagged commands in flight, R2T service, NOP keepalive, task timeouts, logout;
//! - [`block`]: a LUN as a block device (probe, read, write, flush) under a policy;
//! - exports and the daemon: [`nbd`] and [`daemon`].

pub mod block;
pub mod command;
pub mod daemon;
pub mod discovery;
pub mod error;
pub mod fuse;
pub mod iser;
pub mod link;
pub mod login;
pub mod lun;
pub mod nbd;
pub mod protection;
pub mod session;

pub use block::{BlockDevice, IoOutcome};
pub use error::{Error, LoginError};
pub use link::{Link, TransportChoice};
pub use session::{Session, SessionConfig};
