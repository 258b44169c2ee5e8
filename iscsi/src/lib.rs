//! iSCSI (RFC 7143) and iSER (RFC 7145) on the wire, sans-IO: PDU codec, text-key
//! negotiation, login state machines, CHAP, sequence numbers and the iSER header.
//!
//! Nothing in this crate opens a socket, reads a clock or draws random numbers: the
//! daemons feed bytes (and randomness) in and take PDUs (and bytes) out, so every rule
//! is tested deterministically. See the README for the call order of each machine.

#![forbid(unsafe_code)]

pub mod chap;
pub mod codec;
pub mod digest;
pub mod discovery;
pub mod framer;
#[doc(hidden)]
pub mod fuzzing;
pub mod iser;
pub mod login;
pub mod negotiate;
pub mod pdu;
pub mod seq;
pub mod text;
pub mod transfer;

pub use codec::{Action, Codec, DecodeError, Reader};
pub use digest::Digests;
pub use framer::{FrameError, Framer};
pub use pdu::{Header, Pdu, PduLimits, WireConfig};
