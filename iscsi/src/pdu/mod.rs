//! iSCSI PDUs (RFC 7143 section 11): the 48-byte BHS as one typed struct per opcode,
//! the AHS (Extended CDB, Bidirectional Read Data Length), the data segment padded to
//! 4 bytes, and optional CRC32C header and data digests.
//!
//! A PDU on the wire is `BHS (48) | AHS (TotalAHSLength * 4) | HeaderDigest (0/4) |
//! data (DataSegmentLength) | pad to 4 | DataDigest (0/4, only when data is present)`.

mod bhs;
mod fields;

pub use bhs::*;
pub use fields::*;

use crate::codec::{get_u32, pad4, Codec, DecodeError, Reader};
use crate::digest::{crc32c, crc32c_append, digest_from_wire, digest_to_wire, Digests};

/// Largest DataSegmentLength the wire format can express (24 bits).
pub const MAX_DATA_SEGMENT_LENGTH: u32 = (1 << 24) - 1;

/// AHS type 1: Extended CDB.
pub const AHS_EXTENDED_CDB: u8 = 1;
/// AHS type 2: Expected Bidirectional Read Data Length.
pub const AHS_BIDI_READ_LENGTH: u8 = 2;

/// Receive limits applied while decoding, so that a peer cannot make us allocate more
/// than we negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PduLimits {
    /// The MaxRecvDataSegmentLength we declared (8192 until negotiated otherwise).
    pub max_recv_data_segment_length: u32,
}

impl Default for PduLimits {
    fn default() -> Self {
        PduLimits {
            max_recv_data_segment_length: 8192,
        }
    }
}

/// Everything the encoding of a PDU on one connection depends on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct WireConfig {
    /// Digests in force.
    pub digests: Digests,
    /// Receive limits (only used when decoding).
    pub limits: PduLimits,
}

/// Every RFC 7143 opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    /// 0x00 NOP-Out.
    NopOut = 0x00,
    /// 0x01 SCSI Command.
    ScsiCommand = 0x01,
    /// 0x02 SCSI Task Management Function Request.
    TmfRequest = 0x02,
    /// 0x03 Login Request.
    LoginRequest = 0x03,
    /// 0x04 Text Request.
    TextRequest = 0x04,
    /// 0x05 SCSI Data-Out.
    DataOut = 0x05,
    /// 0x06 Logout Request.
    LogoutRequest = 0x06,
    /// 0x10 SNACK Request.
    SnackRequest = 0x10,
    /// 0x20 NOP-In.
    NopIn = 0x20,
    /// 0x21 SCSI Response.
    ScsiResponse = 0x21,
    /// 0x22 SCSI Task Management Function Response.
    TmfResponse = 0x22,
    /// 0x23 Login Response.
    LoginResponse = 0x23,
    /// 0x24 Text Response.
    TextResponse = 0x24,
    /// 0x25 SCSI Data-In.
    DataIn = 0x25,
    /// 0x26 Logout Response.
    LogoutResponse = 0x26,
    /// 0x31 Ready To Transfer.
    R2t = 0x31,
    /// 0x32 Asynchronous Message.
    AsyncMessage = 0x32,
    /// 0x3f Reject.
    Reject = 0x3f,
}

impl Opcode {
    /// Which side sends PDUs with this opcode.
    pub fn sender(self) -> Role {
        if (self as u8) & 0x20 != 0 {
            Role::Target
        } else {
            Role::Initiator
        }
    }
}

/// True for the vendor-specific opcode ranges (0x1c-0x1e, 0x3c-0x3e).
pub fn is_vendor_opcode(op: u8) -> bool {
    matches!(op, 0x1c..=0x1e | 0x3c..=0x3e)
}

/// The typed header of a PDU.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Header {
    /// NOP-Out.
    NopOut(NopOut),
    /// SCSI Command (with its full CDB and bidirectional read length).
    ScsiCommand(ScsiCommand),
    /// Task Management Function Request.
    TmfRequest(TmfRequest),
    /// Login Request.
    LoginRequest(LoginRequest),
    /// Text Request.
    TextRequest(TextRequest),
    /// SCSI Data-Out.
    DataOut(DataOut),
    /// Logout Request.
    LogoutRequest(LogoutRequest),
    /// SNACK Request.
    SnackRequest(SnackRequest),
    /// NOP-In.
    NopIn(NopIn),
    /// SCSI Response.
    ScsiResponse(ScsiResponse),
    /// Task Management Function Response.
    TmfResponse(TmfResponse),
    /// Login Response.
    LoginResponse(LoginResponse),
    /// Text Response.
    TextResponse(TextResponse),
    /// SCSI Data-In.
    DataIn(DataIn),
    /// Logout Response.
    LogoutResponse(LogoutResponse),
    /// Ready To Transfer.
    R2t(R2t),
    /// Asynchronous Message.
    AsyncMessage(AsyncMessage),
    /// Reject.
    Reject(Reject),
    /// A vendor-specific opcode, kept as raw BHS. Bytes 4-7 (lengths) are zero here and
    /// written from the PDU on encode.
    Vendor {
        /// The I bit.
        immediate: bool,
        /// The raw 48 bytes.
        bhs: [u8; BHS_LEN],
    },
}

impl Header {
    /// The raw opcode byte (without the I bit).
    pub fn opcode_byte(&self) -> u8 {
        match self {
            Header::Vendor { bhs, .. } => bhs[0] & 0x3f,
            other => other.opcode().map(|o| o as u8).unwrap_or(0),
        }
    }

    /// The opcode, or `None` for vendor-specific PDUs.
    pub fn opcode(&self) -> Option<Opcode> {
        Some(match self {
            Header::NopOut(_) => Opcode::NopOut,
            Header::ScsiCommand(_) => Opcode::ScsiCommand,
            Header::TmfRequest(_) => Opcode::TmfRequest,
            Header::LoginRequest(_) => Opcode::LoginRequest,
            Header::TextRequest(_) => Opcode::TextRequest,
            Header::DataOut(_) => Opcode::DataOut,
            Header::LogoutRequest(_) => Opcode::LogoutRequest,
            Header::SnackRequest(_) => Opcode::SnackRequest,
            Header::NopIn(_) => Opcode::NopIn,
            Header::ScsiResponse(_) => Opcode::ScsiResponse,
            Header::TmfResponse(_) => Opcode::TmfResponse,
            Header::LoginResponse(_) => Opcode::LoginResponse,
            Header::TextResponse(_) => Opcode::TextResponse,
            Header::DataIn(_) => Opcode::DataIn,
            Header::LogoutResponse(_) => Opcode::LogoutResponse,
            Header::R2t(_) => Opcode::R2t,
            Header::AsyncMessage(_) => Opcode::AsyncMessage,
            Header::Reject(_) => Opcode::Reject,
            Header::Vendor { .. } => return None,
        })
    }

    /// The I bit (immediate delivery; CmdSN does not advance).
    pub fn immediate(&self) -> bool {
        match self {
            Header::NopOut(h) => h.immediate,
            Header::ScsiCommand(h) => h.immediate,
            Header::TmfRequest(h) => h.immediate,
            Header::LoginRequest(_) => true,
            Header::TextRequest(h) => h.immediate,
            Header::LogoutRequest(h) => h.immediate,
            Header::Vendor { immediate, .. } => *immediate,
            _ => false,
        }
    }

    /// The Initiator Task Tag at bytes 16-19.
    pub fn itt(&self) -> u32 {
        match self {
            Header::NopOut(h) => h.itt,
            Header::ScsiCommand(h) => h.itt,
            Header::TmfRequest(h) => h.itt,
            Header::LoginRequest(h) => h.itt,
            Header::TextRequest(h) => h.itt,
            Header::DataOut(h) => h.itt,
            Header::LogoutRequest(h) => h.itt,
            Header::SnackRequest(h) => h.itt,
            Header::NopIn(h) => h.itt,
            Header::ScsiResponse(h) => h.itt,
            Header::TmfResponse(h) => h.itt,
            Header::LoginResponse(h) => h.itt,
            Header::TextResponse(h) => h.itt,
            Header::DataIn(h) => h.itt,
            Header::LogoutResponse(h) => h.itt,
            Header::R2t(h) => h.itt,
            Header::AsyncMessage(_) | Header::Reject(_) => RESERVED_TAG,
            Header::Vendor { bhs, .. } => get_u32(bhs, 16),
        }
    }

    /// The CmdSN of an initiator command PDU (those that carry one).
    pub fn cmd_sn(&self) -> Option<u32> {
        match self {
            Header::NopOut(h) => Some(h.cmd_sn),
            Header::ScsiCommand(h) => Some(h.cmd_sn),
            Header::TmfRequest(h) => Some(h.cmd_sn),
            Header::LoginRequest(h) => Some(h.cmd_sn),
            Header::TextRequest(h) => Some(h.cmd_sn),
            Header::LogoutRequest(h) => Some(h.cmd_sn),
            _ => None,
        }
    }

    /// The ExpStatSN carried by an initiator PDU.
    pub fn exp_stat_sn(&self) -> Option<u32> {
        match self {
            Header::NopOut(h) => Some(h.exp_stat_sn),
            Header::ScsiCommand(h) => Some(h.exp_stat_sn),
            Header::TmfRequest(h) => Some(h.exp_stat_sn),
            Header::LoginRequest(h) => Some(h.exp_stat_sn),
            Header::TextRequest(h) => Some(h.exp_stat_sn),
            Header::DataOut(h) => Some(h.exp_stat_sn),
            Header::LogoutRequest(h) => Some(h.exp_stat_sn),
            Header::SnackRequest(h) => Some(h.exp_stat_sn),
            _ => None,
        }
    }

    /// StatSN, ExpCmdSN and MaxCmdSN of a target PDU that carries them.
    pub fn stat_fields(&self) -> Option<(u32, u32, u32)> {
        match self {
            Header::NopIn(h) => Some((h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn)),
            Header::ScsiResponse(h) => Some((h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn)),
            Header::TmfResponse(h) => Some((h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn)),
            Header::LoginResponse(h) => Some((h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn)),
            Header::TextResponse(h) => Some((h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn)),
            Header::DataIn(h) => Some((h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn)),
            Header::LogoutResponse(h) => Some((h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn)),
            Header::R2t(h) => Some((h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn)),
            Header::AsyncMessage(h) => Some((h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn)),
            Header::Reject(h) => Some((h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn)),
            _ => None,
        }
    }

    /// Encode the BHS and AHS (lengths filled in from `data_len`).
    fn write(&self, data_len: usize, out: &mut Vec<u8>) {
        let mut b = [0u8; BHS_LEN];
        let mut ahs = Vec::new();
        match self {
            Header::NopOut(h) => h.write(&mut b),
            Header::ScsiCommand(h) => {
                h.write(&mut b);
                if h.cdb.len() > 16 {
                    let ext = &h.cdb[16..];
                    let ahs_len = (ext.len() + 1) as u16;
                    ahs.extend_from_slice(&ahs_len.to_be_bytes());
                    ahs.push(AHS_EXTENDED_CDB);
                    ahs.push(0);
                    ahs.extend_from_slice(ext);
                    ahs.resize(ahs.len() + pad4(ahs.len()), 0);
                }
                if let Some(len) = h.bidi_read_length {
                    ahs.extend_from_slice(&5u16.to_be_bytes());
                    ahs.push(AHS_BIDI_READ_LENGTH);
                    ahs.push(0);
                    ahs.extend_from_slice(&len.to_be_bytes());
                }
            }
            Header::TmfRequest(h) => h.write(&mut b),
            Header::LoginRequest(h) => h.write(&mut b),
            Header::TextRequest(h) => h.write(&mut b),
            Header::DataOut(h) => h.write(&mut b),
            Header::LogoutRequest(h) => h.write(&mut b),
            Header::SnackRequest(h) => h.write(&mut b),
            Header::NopIn(h) => h.write(&mut b),
            Header::ScsiResponse(h) => h.write(&mut b),
            Header::TmfResponse(h) => h.write(&mut b),
            Header::LoginResponse(h) => h.write(&mut b),
            Header::TextResponse(h) => h.write(&mut b),
            Header::DataIn(h) => h.write(&mut b),
            Header::LogoutResponse(h) => h.write(&mut b),
            Header::R2t(h) => h.write(&mut b),
            Header::AsyncMessage(h) => h.write(&mut b),
            Header::Reject(h) => h.write(&mut b),
            Header::Vendor { bhs, .. } => b = *bhs,
        }
        b[0] = (if self.immediate() { 0x40 } else { 0 }) | self.opcode_byte();
        b[4] = (ahs.len() / 4) as u8;
        let dsl = (data_len as u32).min(MAX_DATA_SEGMENT_LENGTH).to_be_bytes();
        b[5..8].copy_from_slice(&dsl[1..]);
        out.extend_from_slice(&b);
        out.extend_from_slice(&ahs);
    }

    /// Parse a BHS and its AHS bytes.
    fn parse(b: &[u8; BHS_LEN], ahs: &[u8]) -> Result<Header, DecodeError> {
        let immediate = b[0] & 0x40 != 0;
        let op = b[0] & 0x3f;
        let no_ahs = |name: &'static str| -> Result<(), DecodeError> {
            if ahs.is_empty() {
                Ok(())
            } else {
                Err(DecodeError::InvalidField {
                    field: name,
                    value: (ahs.len() / 4) as u64,
                })
            }
        };
        let h = match op {
            0x01 => {
                let mut cmd = ScsiCommand::parse(b, immediate)?;
                parse_command_ahs(&mut cmd, ahs)?;
                return Ok(Header::ScsiCommand(cmd));
            }
            _ if is_vendor_opcode(op) => {
                let mut bhs = *b;
                // Keep only the I bit and opcode of byte 0 (bit 7 is reserved).
                bhs[0] &= 0x7f;
                bhs[4..8].fill(0);
                return Ok(Header::Vendor { immediate, bhs });
            }
            _ => {
                no_ahs("TotalAHSLength")?;
                match op {
                    0x00 => Header::NopOut(NopOut::parse(b, immediate)?),
                    0x02 => Header::TmfRequest(TmfRequest::parse(b, immediate)?),
                    0x03 => Header::LoginRequest(LoginRequest::parse(b)?),
                    0x04 => Header::TextRequest(TextRequest::parse(b, immediate)?),
                    0x05 => Header::DataOut(DataOut::parse(b)?),
                    0x06 => Header::LogoutRequest(LogoutRequest::parse(b, immediate)?),
                    0x10 => Header::SnackRequest(SnackRequest::parse(b)?),
                    0x20 => Header::NopIn(NopIn::parse(b)?),
                    0x21 => Header::ScsiResponse(ScsiResponse::parse(b)?),
                    0x22 => Header::TmfResponse(TmfResponse::parse(b)?),
                    0x23 => Header::LoginResponse(LoginResponse::parse(b)?),
                    0x24 => Header::TextResponse(TextResponse::parse(b)?),
                    0x25 => Header::DataIn(DataIn::parse(b)?),
                    0x26 => Header::LogoutResponse(LogoutResponse::parse(b)?),
                    0x31 => Header::R2t(R2t::parse(b)?),
                    0x32 => Header::AsyncMessage(AsyncMessage::parse(b)?),
                    0x3f => Header::Reject(Reject::parse(b)?),
                    other => return Err(DecodeError::UnknownOpcode(other)),
                }
            }
        };
        Ok(h)
    }
}

fn parse_command_ahs(cmd: &mut ScsiCommand, ahs: &[u8]) -> Result<(), DecodeError> {
    let mut r = Reader::new(ahs);
    while r.left() > 0 {
        let len = usize::from(r.u16("AHSLength")?);
        let ty = r.u8("AHSType")?;
        if len == 0 {
            return Err(DecodeError::InvalidField {
                field: "AHSLength",
                value: 0,
            });
        }
        // AHSLength counts the AHS-specific byte and what follows.
        let body = r.take(len, "AHS")?;
        r.take(pad4(len + 3), "AHS padding")?;
        match ty {
            AHS_EXTENDED_CDB => {
                if cmd.cdb.len() > 16 {
                    return Err(DecodeError::Protocol("two Extended CDB AHS"));
                }
                cmd.cdb.extend_from_slice(&body[1..]);
            }
            AHS_BIDI_READ_LENGTH => {
                if len != 5 {
                    return Err(DecodeError::InvalidField {
                        field: "Bidirectional Read AHSLength",
                        value: len as u64,
                    });
                }
                if cmd.bidi_read_length.is_some() {
                    return Err(DecodeError::Protocol(
                        "two Bidirectional Read Data Length AHS",
                    ));
                }
                cmd.bidi_read_length = Some(get_u32(body, 1));
            }
            other => {
                return Err(DecodeError::InvalidField {
                    field: "AHSType",
                    value: other.into(),
                })
            }
        }
    }
    Ok(())
}

/// One whole PDU: typed header plus data segment (without padding).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pdu {
    /// The typed BHS (and AHS content).
    pub header: Header,
    /// The data segment, unpadded.
    pub data: Vec<u8>,
}

impl Pdu {
    /// A PDU with an empty data segment.
    pub fn new(header: impl Into<Header>) -> Self {
        Pdu {
            header: header.into(),
            data: Vec::new(),
        }
    }

    /// A PDU with a data segment.
    pub fn with_data(header: impl Into<Header>, data: Vec<u8>) -> Self {
        Pdu {
            header: header.into(),
            data,
        }
    }

    /// The bytes of the BHS this PDU encodes to (what a Reject's data segment carries).
    pub fn bhs_bytes(&self) -> [u8; BHS_LEN] {
        let mut out = Vec::with_capacity(BHS_LEN);
        self.header.write(self.data.len(), &mut out);
        let mut b = [0u8; BHS_LEN];
        b.copy_from_slice(&out[..BHS_LEN]);
        b
    }
}

impl Codec for Pdu {
    type Context = WireConfig;

    fn encode(&self, ctx: &WireConfig, out: &mut Vec<u8>) {
        let start = out.len();
        self.header.write(self.data.len(), out);
        if ctx.digests.header {
            let crc = crc32c(&out[start..]);
            out.extend_from_slice(&digest_to_wire(crc));
        }
        if !self.data.is_empty() {
            out.extend_from_slice(&self.data);
            let pad = [0u8; 3];
            out.extend_from_slice(&pad[..pad4(self.data.len())]);
            if ctx.digests.data {
                let crc = crc32c_append(crc32c(&self.data), &pad[..pad4(self.data.len())]);
                out.extend_from_slice(&digest_to_wire(crc));
            }
        }
    }

    fn read(r: &mut Reader<'_>, ctx: &WireConfig) -> Result<Self, DecodeError> {
        let start = r.clone();
        let bhs: [u8; BHS_LEN] = r.array("BHS")?;
        let ahs_len = usize::from(bhs[4]) * 4;
        let dsl = get_u32(&bhs, 4) & 0x00ff_ffff;
        if dsl > ctx.limits.max_recv_data_segment_length {
            return Err(DecodeError::DataSegmentTooLong {
                len: dsl,
                limit: ctx.limits.max_recv_data_segment_length,
            });
        }
        let ahs = r.take(ahs_len, "AHS")?;
        if ctx.digests.header {
            let received = digest_from_wire(r.array("HeaderDigest")?);
            let mut covered = start;
            let computed = crc32c(covered.take(BHS_LEN + ahs_len, "BHS")?);
            if computed != received {
                return Err(DecodeError::HeaderDigest { computed, received });
            }
        }
        let dsl = dsl as usize;
        let data = r.take(dsl, "data segment")?;
        let pad = r.take(pad4(dsl), "data segment padding")?;
        if ctx.digests.data && dsl > 0 {
            let received = digest_from_wire(r.array("DataDigest")?);
            let computed = crc32c_append(crc32c(data), pad);
            if computed != received {
                return Err(DecodeError::DataDigest { computed, received });
            }
        }
        let header = Header::parse(&bhs, ahs)?;
        Ok(Pdu {
            header,
            data: data.to_vec(),
        })
    }
}

/// Lengths read from a BHS, enough to frame the rest of the PDU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLengths {
    /// TotalAHSLength in bytes.
    pub ahs: usize,
    /// DataSegmentLength (unpadded).
    pub data: usize,
    /// Bytes of the whole PDU, digests and padding included.
    pub total: usize,
}

/// Read the framing lengths out of a BHS.
pub fn frame_lengths(bhs: &[u8; BHS_LEN], digests: Digests) -> FrameLengths {
    let ahs = usize::from(bhs[4]) * 4;
    let data = (get_u32(bhs, 4) & 0x00ff_ffff) as usize;
    let mut total = BHS_LEN + ahs + data + pad4(data);
    if digests.header {
        total += 4;
    }
    if digests.data && data > 0 {
        total += 4;
    }
    FrameLengths { ahs, data, total }
}

macro_rules! into_header {
    ($($t:ident),*) => { $( impl From<$t> for Header { fn from(h: $t) -> Header { Header::$t(h) } } )* };
}
into_header!(
    NopOut,
    ScsiCommand,
    TmfRequest,
    LoginRequest,
    TextRequest,
    DataOut,
    LogoutRequest,
    SnackRequest,
    NopIn,
    ScsiResponse,
    TmfResponse,
    LoginResponse,
    TextResponse,
    DataIn,
    LogoutResponse,
    AsyncMessage,
    Reject
);

impl From<R2t> for Header {
    fn from(h: R2t) -> Header {
        Header::R2t(h)
    }
}

/// The Reject PDU answering a PDU whose header is `bad_bhs`.
pub fn reject_pdu(
    reason: RejectReason,
    bad_bhs: &[u8; BHS_LEN],
    stat_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
) -> Pdu {
    Pdu::with_data(
        Reject {
            reason,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            data_sn_or_r2t_sn: 0,
        },
        bad_bhs.to_vec(),
    )
}

/// The data segment of a SCSI Response (or Data-In with status) carrying sense data:
/// SenseLength (2 bytes, big-endian) followed by the sense bytes; the codec pads it.
pub fn sense_segment(sense: &[u8]) -> Vec<u8> {
    let len = sense.len().min(usize::from(u16::MAX));
    let mut v = Vec::with_capacity(2 + len);
    v.extend_from_slice(&(len as u16).to_be_bytes());
    v.extend_from_slice(&sense[..len]);
    v
}

/// The sense bytes of a SCSI Response data segment (empty when there is none).
pub fn sense_from_segment(data: &[u8]) -> Result<&[u8], DecodeError> {
    if data.is_empty() {
        return Ok(&[]);
    }
    let mut r = Reader::new(data);
    let len = usize::from(r.u16("SenseLength")?);
    r.take(len, "sense data")
}

/// The residual of a transfer of `transferred` bytes against an expected length.
pub fn residual(expected: u32, transferred: u32) -> Residual {
    match transferred.cmp(&expected) {
        std::cmp::Ordering::Equal => Residual::None,
        std::cmp::Ordering::Less => Residual::Underflow(expected - transferred),
        std::cmp::Ordering::Greater => Residual::Overflow(transferred - expected),
    }
}

impl NopIn {
    /// The NOP-In answering a NOP-Out that wants one (ITT not 0xffffffff): same ITT and
    /// LUN, TTT 0xffffffff. The ping data, if any, is echoed by the caller.
    pub fn reply_to(nop: &NopOut, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) -> NopIn {
        NopIn {
            lun: nop.lun,
            itt: nop.itt,
            ttt: RESERVED_TAG,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
        }
    }
}

impl NopOut {
    /// The NOP-Out answering a target's NOP-In ping (TTT not 0xffffffff): ITT
    /// 0xffffffff, the ping's TTT and LUN, sent as an immediate command.
    pub fn reply_to(ping: &NopIn, cmd_sn: u32, exp_stat_sn: u32) -> NopOut {
        NopOut {
            immediate: true,
            lun: ping.lun,
            itt: RESERVED_TAG,
            ttt: ping.ttt,
            cmd_sn,
            exp_stat_sn,
        }
    }
}

impl LogoutResponse {
    /// The response to a Logout Request.
    pub fn reply_to(
        req: &LogoutRequest,
        response: LogoutResponseCode,
        stat_sn: u32,
        exp_cmd_sn: u32,
        max_cmd_sn: u32,
    ) -> LogoutResponse {
        LogoutResponse {
            response,
            itt: req.itt,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            time2wait: 0,
            time2retain: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sense_segments_and_residuals() {
        let sense = [
            0x70, 0, 0x05, 0, 0, 0, 0, 0x0a, 0, 0, 0, 0, 0x24, 0, 0, 0, 0, 0,
        ];
        let seg = sense_segment(&sense);
        assert_eq!(&seg[..2], &[0, 18]);
        assert_eq!(sense_from_segment(&seg).unwrap(), &sense);
        assert_eq!(sense_from_segment(&[]).unwrap(), &[] as &[u8]);
        assert_eq!(
            sense_from_segment(&[0, 20, 1]),
            Err(DecodeError::Truncated("sense data"))
        );
        assert_eq!(residual(4096, 4096), Residual::None);
        assert_eq!(residual(4096, 1024), Residual::Underflow(3072));
        assert_eq!(residual(1024, 4096), Residual::Overflow(3072));
    }

    #[test]
    fn replies_echo_tags() {
        let ping = NopOut {
            immediate: true,
            lun: 5,
            itt: 9,
            ttt: RESERVED_TAG,
            cmd_sn: 3,
            exp_stat_sn: 4,
        };
        let pong = NopIn::reply_to(&ping, 4, 3, 10);
        assert_eq!((pong.itt, pong.ttt, pong.lun), (9, RESERVED_TAG, 5));
        let back = NopOut::reply_to(&NopIn { ttt: 0x77, ..pong }, 3, 5);
        assert_eq!(
            (back.itt, back.ttt, back.immediate),
            (RESERVED_TAG, 0x77, true)
        );
        let req = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt: 12,
            cid: 0,
            cmd_sn: 3,
            exp_stat_sn: 5,
        };
        assert_eq!(
            LogoutResponse::reply_to(&req, LogoutResponseCode::Success, 5, 4, 10).itt,
            12
        );
    }
}
