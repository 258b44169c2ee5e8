//! iSCSI (RFC 7143) and iSER (RFC 7145) on the wire, sans-IO: PDU codec, text-key negotiation, login state machines, CHAP, sequence numbers and the iSER header.
