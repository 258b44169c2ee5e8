//! iSER (RFC 7145) on the wire: the 28-byte iSER header in front of every iSCSI PDU
//! SEND, the Hello/HelloReply messages, the CM private data (`iser_cm_hdr`), which PDUs
//! travel as SENDs, and the pure plan that turns a SCSI command's data transfer into
//! RDMA WRITEs (Data-In) and RDMA READs (solicited Data-Out).

use crate::codec::{Action, Codec, DecodeError, Reader};
use crate::pdu::{Header, Pdu, PduLimits, RejectReason, ScsiCommand, WireConfig};
use crate::seq::solicited_bursts;
use crate::Digests;

/// Length of the iSER header.
pub const ISER_HEADER_LEN: usize = 28;
/// Opcode nibble of an iSCSI control-type PDU.
pub const ISER_OPCODE_CONTROL: u8 = 0x1;
/// Opcode nibble of the Hello message.
pub const ISER_OPCODE_HELLO: u8 = 0x2;
/// Opcode nibble of the HelloReply message.
pub const ISER_OPCODE_HELLO_REPLY: u8 = 0x3;
/// Write STag valid.
pub const ISER_WSV: u8 = 0x08;
/// Read STag valid.
pub const ISER_RSV: u8 = 0x04;
/// iSER protocol version carried in Hello/HelloReply (0xA, as RFC 7145 defines it and
/// dissectors expect in both nibbles).
pub const ISER_VERSION: u8 = 10;
/// CM private data flag: zero-based virtual addresses not supported.
pub const ISER_ZBVA_NOT_SUP: u8 = 0x80;
/// CM private data flag: SEND with invalidate not supported.
pub const ISER_SEND_W_INV_NOT_SUP: u8 = 0x40;

/// A tagged buffer the peer advertised: STag (rkey) and base virtual address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct RemoteBuffer {
    /// STag (rkey).
    pub stag: u32,
    /// Base offset (virtual address).
    pub va: u64,
}

/// The iSER header of an iSCSI control-type PDU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IserControl {
    /// Write STag and base offset (WSV): where the target RDMA READs Data-Out from.
    pub write: Option<RemoteBuffer>,
    /// Read STag and base offset (RSV): where the target RDMA WRITEs Data-In to.
    pub read: Option<RemoteBuffer>,
}

/// iSER Hello (initiator to target, iWARP only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IserHello {
    /// Highest iSER version supported.
    pub max_version: u8,
    /// Lowest iSER version supported.
    pub min_version: u8,
    /// iSER-IRD: inbound RDMA Read queue depth.
    pub ird: u16,
}

/// iSER HelloReply (target to initiator).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IserHelloReply {
    /// R bit: the target rejects the Hello.
    pub reject: bool,
    /// Highest iSER version supported.
    pub max_version: u8,
    /// Version in use.
    pub current_version: u8,
    /// iSER-ORD: outbound RDMA Read queue depth.
    pub ord: u16,
}

/// The 28-byte iSER header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IserHeader {
    /// An iSCSI control-type PDU follows.
    Control(IserControl),
    /// Hello message.
    Hello(IserHello),
    /// HelloReply message.
    HelloReply(IserHelloReply),
}

impl Codec for IserHeader {
    type Context = ();

    fn encode(&self, _: &(), out: &mut Vec<u8>) {
        let mut b = [0u8; ISER_HEADER_LEN];
        match self {
            IserHeader::Control(c) => {
                b[0] = ISER_OPCODE_CONTROL << 4;
                if let Some(w) = c.write {
                    b[0] |= ISER_WSV;
                    b[4..8].copy_from_slice(&w.stag.to_be_bytes());
                    b[8..16].copy_from_slice(&w.va.to_be_bytes());
                }
                if let Some(r) = c.read {
                    b[0] |= ISER_RSV;
                    b[16..20].copy_from_slice(&r.stag.to_be_bytes());
                    b[20..28].copy_from_slice(&r.va.to_be_bytes());
                }
            }
            IserHeader::Hello(h) => {
                b[0] = ISER_OPCODE_HELLO << 4;
                b[1] = (h.max_version & 0xf) << 4 | (h.min_version & 0xf);
                b[2..4].copy_from_slice(&h.ird.to_be_bytes());
            }
            IserHeader::HelloReply(h) => {
                b[0] = ISER_OPCODE_HELLO_REPLY << 4 | u8::from(h.reject);
                b[1] = (h.max_version & 0xf) << 4 | (h.current_version & 0xf);
                b[2..4].copy_from_slice(&h.ord.to_be_bytes());
            }
        }
        out.extend_from_slice(&b);
    }

    fn read(r: &mut Reader<'_>, _: &()) -> Result<Self, DecodeError> {
        let b: [u8; ISER_HEADER_LEN] = r.array("iSER header")?;
        let buf = |stag: &[u8], va: &[u8]| RemoteBuffer {
            stag: u32::from_be_bytes([stag[0], stag[1], stag[2], stag[3]]),
            va: u64::from_be_bytes([va[0], va[1], va[2], va[3], va[4], va[5], va[6], va[7]]),
        };
        match b[0] >> 4 {
            ISER_OPCODE_CONTROL => Ok(IserHeader::Control(IserControl {
                write: (b[0] & ISER_WSV != 0).then(|| buf(&b[4..8], &b[8..16])),
                read: (b[0] & ISER_RSV != 0).then(|| buf(&b[16..20], &b[20..28])),
            })),
            ISER_OPCODE_HELLO => Ok(IserHeader::Hello(IserHello {
                max_version: b[1] >> 4,
                min_version: b[1] & 0xf,
                ird: u16::from_be_bytes([b[2], b[3]]),
            })),
            ISER_OPCODE_HELLO_REPLY => Ok(IserHeader::HelloReply(IserHelloReply {
                reject: b[0] & 0x01 != 0,
                max_version: b[1] >> 4,
                current_version: b[1] & 0xf,
                ord: u16::from_be_bytes([b[2], b[3]]),
            })),
            other => Err(DecodeError::InvalidField {
                field: "iSER opcode",
                value: other.into(),
            }),
        }
    }
}

/// The CM private data both sides exchange in the connection request and reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct IserCmHdr {
    /// ZBVA_NOT_SUP (0x80): the sender does not use zero-based virtual addresses.
    pub zbva_not_supported: bool,
    /// SEND_W_INV_NOT_SUP (0x40): the sender does not want SEND with invalidate.
    pub send_w_inv_not_supported: bool,
}

impl IserCmHdr {
    /// Parse from CM private data, which transports may pad beyond 4 bytes.
    pub fn from_private_data(data: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(data);
        Self::read(&mut r, &())
    }
}

impl Codec for IserCmHdr {
    type Context = ();

    fn encode(&self, _: &(), out: &mut Vec<u8>) {
        let mut flags = 0;
        if self.zbva_not_supported {
            flags |= ISER_ZBVA_NOT_SUP;
        }
        if self.send_w_inv_not_supported {
            flags |= ISER_SEND_W_INV_NOT_SUP;
        }
        out.extend_from_slice(&[flags, 0, 0, 0]);
    }

    fn read(r: &mut Reader<'_>, _: &()) -> Result<Self, DecodeError> {
        let b: [u8; 4] = r.array("iser_cm_hdr")?;
        Ok(IserCmHdr {
            zbva_not_supported: b[0] & ISER_ZBVA_NOT_SUP != 0,
            send_w_inv_not_supported: b[0] & ISER_SEND_W_INV_NOT_SUP != 0,
        })
    }
}

/// One iSER SEND: the iSER header and, for control-type messages, an iSCSI PDU (never
/// with digests).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IserMessage {
    /// iSER header.
    pub header: IserHeader,
    /// The iSCSI PDU of a control-type message.
    pub pdu: Option<Pdu>,
}

impl Codec for IserMessage {
    type Context = PduLimits;

    fn encode(&self, limits: &PduLimits, out: &mut Vec<u8>) {
        self.header.encode(&(), out);
        if let Some(p) = &self.pdu {
            p.encode(
                &WireConfig {
                    digests: Digests::NONE,
                    limits: *limits,
                },
                out,
            );
        }
    }

    fn read(r: &mut Reader<'_>, limits: &PduLimits) -> Result<Self, DecodeError> {
        let header = IserHeader::read(r, &())?;
        let pdu = match header {
            IserHeader::Control(_) => Some(Pdu::read(
                r,
                &WireConfig {
                    digests: Digests::NONE,
                    limits: *limits,
                },
            )?),
            _ => None,
        };
        Ok(IserMessage { header, pdu })
    }
}

/// How a PDU moves over iSER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IserTransfer {
    /// As a SEND with the iSER header.
    Send,
    /// Data-In: the target RDMA WRITEs the data to the Read STag; no PDU is sent.
    RdmaWrite,
    /// Solicited Data-Out: the target RDMA READs from the Write STag; no PDU is sent.
    RdmaRead,
    /// R2T: has no wire form; the target issues the RDMA READ itself.
    NotSent,
}

/// Which way a PDU travels over iSER.
pub fn transfer_of(header: &Header) -> IserTransfer {
    match header {
        Header::DataIn(_) => IserTransfer::RdmaWrite,
        Header::DataOut(d) if d.ttt != crate::pdu::RESERVED_TAG => IserTransfer::RdmaRead,
        Header::R2t(_) => IserTransfer::NotSent,
        _ => IserTransfer::Send,
    }
}

/// One RDMA operation of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RdmaOp {
    /// Remote STag and address for this operation.
    pub remote: RemoteBuffer,
    /// Offset of the first byte in the command's data buffer.
    pub buffer_offset: u32,
    /// Bytes moved.
    pub length: u32,
}

/// The target's RDMA operations for one SCSI command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IserTargetPlan {
    /// RDMA READs fetching solicited write data (in order).
    pub rdma_reads: Vec<RdmaOp>,
    /// RDMA WRITEs delivering read data (in order).
    pub rdma_writes: Vec<RdmaOp>,
}

/// A SCSI command whose iSER header lacks a buffer its data transfer needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IserPlanError {
    /// Solicited write data expected but WSV is clear.
    #[error("write of {0} solicited bytes without a Write STag")]
    MissingWriteStag(u32),
    /// Read data expected but RSV is clear.
    #[error("read of {0} bytes without a Read STag")]
    MissingReadStag(u32),
    /// The unsolicited data exceeds the expected transfer length.
    #[error("unsolicited data {unsolicited} exceeds Expected Data Transfer Length {edtl}")]
    UnsolicitedTooLong {
        /// Bytes received unsolicited.
        unsolicited: u32,
        /// Expected Data Transfer Length.
        edtl: u32,
    },
}

impl IserPlanError {
    /// The response: the command cannot be carried out as sent.
    pub fn action(&self) -> Action {
        Action::Reject(RejectReason::ProtocolError)
    }
}

/// Plan the target's RDMA operations for `cmd`.
///
/// `unsolicited` is the write data the initiator sent itself (immediate data plus
/// unsolicited Data-Out): the advertised Write VA points at the first byte after it, so
/// buffer offset `x` is read from `write.va + (x - unsolicited)`. Read data of `read_len`
/// bytes (the EDTL of a read, or the bidirectional read length) goes to
/// `read.va + x`. Each operation moves at most `min(max_burst_length, max_rdma_op)`.
pub fn target_plan(
    cmd: &ScsiCommand,
    iser: &IserControl,
    unsolicited: u32,
    max_burst_length: u32,
    max_rdma_op: u32,
) -> Result<IserTargetPlan, IserPlanError> {
    let chunk = max_burst_length.min(max_rdma_op).max(1);
    let mut plan = IserTargetPlan::default();
    if cmd.write {
        let edtl = cmd.expected_data_transfer_length;
        if unsolicited > edtl {
            return Err(IserPlanError::UnsolicitedTooLong { unsolicited, edtl });
        }
        if edtl > unsolicited {
            let w = iser
                .write
                .ok_or(IserPlanError::MissingWriteStag(edtl - unsolicited))?;
            plan.rdma_reads = solicited_bursts(unsolicited, edtl, chunk)
                .map(|(off, len)| RdmaOp {
                    remote: RemoteBuffer {
                        stag: w.stag,
                        va: w.va.wrapping_add(u64::from(off - unsolicited)),
                    },
                    buffer_offset: off,
                    length: len,
                })
                .collect();
        }
    }
    let read_len = match (cmd.read, cmd.write) {
        (true, true) => cmd.bidi_read_length.unwrap_or(0),
        (true, false) => cmd.expected_data_transfer_length,
        _ => 0,
    };
    if read_len > 0 {
        let r = iser.read.ok_or(IserPlanError::MissingReadStag(read_len))?;
        plan.rdma_writes = solicited_bursts(0, read_len, chunk)
            .map(|(off, len)| RdmaOp {
                remote: RemoteBuffer {
                    stag: r.stag,
                    va: r.va.wrapping_add(u64::from(off)),
                },
                buffer_offset: off,
                length: len,
            })
            .collect();
    }
    Ok(plan)
}

/// The iSER header an initiator puts in front of a SCSI Command: the Write STag/VA
/// (pointing past the `unsolicited` bytes) when solicited write data remains, and the
/// Read STag/VA when data is to be read.
pub fn initiator_control(
    cmd: &ScsiCommand,
    unsolicited: u32,
    write_mr: Option<RemoteBuffer>,
    read_mr: Option<RemoteBuffer>,
) -> IserControl {
    let write = if cmd.write && cmd.expected_data_transfer_length > unsolicited {
        write_mr.map(|m| RemoteBuffer {
            stag: m.stag,
            va: m.va.wrapping_add(u64::from(unsolicited)),
        })
    } else {
        None
    };
    let read = if cmd.read { read_mr } else { None };
    IserControl { write, read }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_bytes() {
        let h = IserHeader::Control(IserControl {
            write: Some(RemoteBuffer {
                stag: 0x1122_3344,
                va: 0x0102_0304_0506_0708,
            }),
            read: None,
        });
        let b = h.to_bytes(&());
        assert_eq!(b.len(), 28);
        assert_eq!(b[0], 0x18);
        assert_eq!(&b[4..16], &[0x11, 0x22, 0x33, 0x44, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(b[16..].iter().all(|&x| x == 0));
        assert_eq!(IserHeader::decode(&b, &()).unwrap(), h);
        assert!(IserHeader::decode(&[0x40; 28], &()).is_err());
        assert!(IserHeader::decode(&[0x10; 27], &()).is_err());
        let hello = IserHeader::Hello(IserHello {
            max_version: ISER_VERSION,
            min_version: ISER_VERSION,
            ird: 16,
        });
        assert_eq!(&hello.to_bytes(&())[..4], &[0x20, 0xaa, 0x00, 0x10]);
        let reply = IserHeader::HelloReply(IserHelloReply {
            reject: true,
            max_version: ISER_VERSION,
            current_version: ISER_VERSION,
            ord: 4,
        });
        assert_eq!(&reply.to_bytes(&())[..4], &[0x31, 0xaa, 0x00, 0x04]);
        assert_eq!(
            IserHeader::decode(&reply.to_bytes(&()), &()).unwrap(),
            reply
        );
    }

    #[test]
    fn cm_private_data() {
        let h = IserCmHdr {
            zbva_not_supported: true,
            send_w_inv_not_supported: true,
        };
        assert_eq!(h.to_bytes(&()), vec![0xc0, 0, 0, 0]);
        let mut padded = vec![0x80, 0, 0, 0];
        padded.resize(56, 0);
        assert_eq!(
            IserCmHdr::from_private_data(&padded).unwrap(),
            IserCmHdr {
                zbva_not_supported: true,
                send_w_inv_not_supported: false
            }
        );
        assert!(IserCmHdr::from_private_data(&[0x80]).is_err());
    }
}
