//! iSCSI (RFC 7143) and iSER (RFC 7145) on the wire, sans-IO: PDU codec, text-key
//! negotiation, login state machines, CHAP, sequence numbers and the iSER header.
//!
//! Nothing in this crate opens a socket, reads a clock or draws random numbers: the
//! daemons feed bytes (and randomness) in and take PDUs (and bytes) out, so every rule
//! is tested deterministically. See the README for the call order of each machine.
//!
//! ```
//! use iscsi::pdu::{NopOut, RESERVED_TAG};
//! use iscsi::{Codec, Digests, Framer, Pdu, PduLimits, WireConfig};
//!
//! let cfg = WireConfig { digests: Digests { header: true, data: true }, limits: PduLimits::default() };
//! let ping = Pdu::with_data(NopOut { itt: 1, ttt: RESERVED_TAG, ..NopOut::default() }, b"ping".to_vec());
//! let bytes = ping.to_bytes(&cfg);
//!
//! let mut framer = Framer::new(cfg);
//! assert_eq!(framer.needed(), 48);
//! assert_eq!(framer.feed(&bytes), bytes.len());
//! assert_eq!(framer.poll(), Some(Ok(ping)));
//! ```

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
pub use pdu::{Header, Pdu, PduLimits, Role, WireConfig};

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T: Send + 'static>() {}

    #[test]
    fn machines_are_send_and_small() {
        send::<Pdu>();
        send::<Framer>();
        send::<login::TargetLogin>();
        send::<login::InitiatorLogin>();
        send::<negotiate::NegotiatedParams>();
        send::<seq::CmdWindow>();
        send::<seq::CmdSequencer>();
        send::<transfer::WriteTracker>();
        send::<discovery::TextResponder>();
        send::<iser::IserMessage>();
        // PDUs move by value through channels: the header stays a few cache lines.
        assert!(
            std::mem::size_of::<Pdu>() <= 128,
            "Pdu is {} bytes",
            std::mem::size_of::<Pdu>()
        );
        assert!(
            std::mem::size_of::<Header>() <= 104,
            "Header is {} bytes",
            std::mem::size_of::<Header>()
        );
    }
}
