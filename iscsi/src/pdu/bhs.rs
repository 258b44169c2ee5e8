//! One typed struct per RFC 7143 PDU over its 48-byte Basic Header Segment. Each struct
//! writes and parses its opcode-specific bytes; byte 0 (I bit and opcode), byte 4
//! (TotalAHSLength) and bytes 5-7 (DataSegmentLength) belong to [`crate::pdu::Pdu`].

use super::fields::*;
use crate::codec::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use crate::DecodeError;

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;

/// The reserved Initiator Task Tag value (and the ITT of unsolicited target PDUs).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

const F: u8 = 0x80;

/// A residual count with the O (overflow) or U (underflow) flag that gives it meaning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Residual {
    /// Neither O nor U: the transfer matched the expected length.
    #[default]
    None,
    /// O bit: this many bytes could not be transferred (expected length too small).
    Overflow(u32),
    /// U bit: this many expected bytes were not transferred.
    Underflow(u32),
}

impl Residual {
    fn write(self, flags: &mut u8, over: u8, under: u8) -> u32 {
        match self {
            Residual::None => 0,
            Residual::Overflow(n) => {
                *flags |= over;
                n
            }
            Residual::Underflow(n) => {
                *flags |= under;
                n
            }
        }
    }

    fn parse(
        flags: u8,
        over: u8,
        under: u8,
        count: u32,
        field: &'static str,
    ) -> Result<Self, DecodeError> {
        match (flags & over != 0, flags & under != 0) {
            (false, false) => Ok(Residual::None),
            (true, false) => Ok(Residual::Overflow(count)),
            (false, true) => Ok(Residual::Underflow(count)),
            (true, true) => Err(DecodeError::InvalidField {
                field,
                value: flags.into(),
            }),
        }
    }

    /// The residual count (0 when neither flag is set).
    pub fn count(self) -> u32 {
        match self {
            Residual::None => 0,
            Residual::Overflow(n) | Residual::Underflow(n) => n,
        }
    }
}

fn flag(b: u8, mask: u8) -> bool {
    b & mask != 0
}

fn bit(on: bool, mask: u8) -> u8 {
    if on {
        mask
    } else {
        0
    }
}

/// NOP-Out (opcode 0x00): a ping from the initiator, or the answer to a NOP-In.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NopOut {
    /// I bit: an immediate command (CmdSN does not advance).
    pub immediate: bool,
    /// LUN (echoed from a NOP-In when answering one).
    pub lun: u64,
    /// Initiator Task Tag; 0xffffffff when answering a NOP-In with no response wanted.
    pub itt: u32,
    /// Target Transfer Tag of the NOP-In being answered, else 0xffffffff.
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

impl NopOut {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = F;
        put_u64(b, 8, self.lun);
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.ttt);
        put_u32(b, 24, self.cmd_sn);
        put_u32(b, 28, self.exp_stat_sn);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN], immediate: bool) -> Result<Self, DecodeError> {
        Ok(NopOut {
            immediate,
            lun: get_u64(b, 8),
            itt: get_u32(b, 16),
            ttt: get_u32(b, 20),
            cmd_sn: get_u32(b, 24),
            exp_stat_sn: get_u32(b, 28),
        })
    }
}

/// NOP-In (opcode 0x20): the target's ping or its answer to a NOP-Out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NopIn {
    /// LUN.
    pub lun: u64,
    /// ITT of the NOP-Out answered, or 0xffffffff for a target-initiated ping.
    pub itt: u32,
    /// TTT: 0xffffffff unless the target wants a NOP-Out back.
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

impl NopIn {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = F;
        put_u64(b, 8, self.lun);
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.ttt);
        put_u32(b, 24, self.stat_sn);
        put_u32(b, 28, self.exp_cmd_sn);
        put_u32(b, 32, self.max_cmd_sn);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        Ok(NopIn {
            lun: get_u64(b, 8),
            itt: get_u32(b, 16),
            ttt: get_u32(b, 20),
            stat_sn: get_u32(b, 24),
            exp_cmd_sn: get_u32(b, 28),
            max_cmd_sn: get_u32(b, 32),
        })
    }
}

/// SCSI Command (opcode 0x01). The CDB is carried whole: its first 16 bytes go in the
/// BHS and any further bytes in an Extended CDB AHS (type 1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScsiCommand {
    /// I bit.
    pub immediate: bool,
    /// F bit: no unsolicited Data-Out PDUs follow.
    pub final_: bool,
    /// R bit: data will be read from the target.
    pub read: bool,
    /// W bit: data will be written to the target.
    pub write: bool,
    /// ATTR: the task attribute.
    pub attr: TaskAttr,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Expected Data Transfer Length (write length for bidirectional commands).
    pub expected_data_transfer_length: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// The CDB; at least 16 bytes once decoded (shorter CDBs are zero padded to 16).
    pub cdb: Vec<u8>,
    /// Expected Bidirectional Read Data Length (AHS type 2), for bidirectional commands.
    pub bidi_read_length: Option<u32>,
}

impl Default for ScsiCommand {
    fn default() -> Self {
        ScsiCommand {
            immediate: false,
            final_: true,
            read: false,
            write: false,
            attr: TaskAttr::Simple,
            lun: 0,
            itt: 0,
            expected_data_transfer_length: 0,
            cmd_sn: 0,
            exp_stat_sn: 0,
            cdb: vec![0; 16],
            bidi_read_length: None,
        }
    }
}

impl ScsiCommand {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = bit(self.final_, F)
            | bit(self.read, 0x40)
            | bit(self.write, 0x20)
            | (u8::from(self.attr) & 0x07);
        put_u64(b, 8, self.lun);
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.expected_data_transfer_length);
        put_u32(b, 24, self.cmd_sn);
        put_u32(b, 28, self.exp_stat_sn);
        let n = self.cdb.len().min(16);
        b[32..32 + n].copy_from_slice(&self.cdb[..n]);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN], immediate: bool) -> Result<Self, DecodeError> {
        let f = b[1];
        let cmd = ScsiCommand {
            immediate,
            final_: flag(f, F),
            read: flag(f, 0x40),
            write: flag(f, 0x20),
            attr: TaskAttr::from(f & 0x07),
            lun: get_u64(b, 8),
            itt: get_u32(b, 16),
            expected_data_transfer_length: get_u32(b, 20),
            cmd_sn: get_u32(b, 24),
            exp_stat_sn: get_u32(b, 28),
            cdb: b[32..48].to_vec(),
            bidi_read_length: None,
        };
        if let TaskAttr::Unknown(v) = cmd.attr {
            return Err(DecodeError::InvalidField {
                field: "SCSI Command ATTR",
                value: v.into(),
            });
        }
        if !cmd.read && !cmd.write && cmd.expected_data_transfer_length != 0 {
            return Err(DecodeError::InvalidField {
                field: "SCSI Command Expected Data Transfer Length (R=0, W=0)",
                value: cmd.expected_data_transfer_length.into(),
            });
        }
        if !cmd.write && !cmd.final_ {
            return Err(DecodeError::Protocol("SCSI Command with F=0 but W=0"));
        }
        Ok(cmd)
    }
}

/// SCSI Response (opcode 0x21). The data segment holds SenseLength + sense data (or
/// response data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ScsiResponse {
    /// o/u bits with the Bidirectional Read Residual Count.
    pub bidi_read_residual: Residual,
    /// O/U bits with the Residual Count.
    pub residual: Residual,
    /// Response.
    pub response: u8,
    /// SCSI status (valid when Response is 0x00).
    pub status: u8,
    /// Initiator Task Tag.
    pub itt: u32,
    /// SNACK Tag.
    pub snack_tag: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// ExpDataSN.
    pub exp_data_sn: u32,
}

impl ScsiResponse {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        let mut f = F;
        let bidi = self.bidi_read_residual.write(&mut f, 0x10, 0x08);
        let res = self.residual.write(&mut f, 0x04, 0x02);
        b[1] = f;
        b[2] = self.response;
        b[3] = self.status;
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.snack_tag);
        put_u32(b, 24, self.stat_sn);
        put_u32(b, 28, self.exp_cmd_sn);
        put_u32(b, 32, self.max_cmd_sn);
        put_u32(b, 36, self.exp_data_sn);
        put_u32(b, 40, bidi);
        put_u32(b, 44, res);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        let f = b[1];
        Ok(ScsiResponse {
            bidi_read_residual: Residual::parse(
                f,
                0x10,
                0x08,
                get_u32(b, 40),
                "SCSI Response o/u bits",
            )?,
            residual: Residual::parse(f, 0x04, 0x02, get_u32(b, 44), "SCSI Response O/U bits")?,
            response: b[2],
            status: b[3],
            itt: get_u32(b, 16),
            snack_tag: get_u32(b, 20),
            stat_sn: get_u32(b, 24),
            exp_cmd_sn: get_u32(b, 28),
            max_cmd_sn: get_u32(b, 32),
            exp_data_sn: get_u32(b, 36),
        })
    }
}

/// Task Management Function Request (opcode 0x02).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TmfRequest {
    /// I bit.
    pub immediate: bool,
    /// Function.
    pub function: TmfFunction,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag of this request.
    pub itt: u32,
    /// Referenced Task Tag (ITT of the task to abort), else 0xffffffff.
    pub referenced_task_tag: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// RefCmdSN.
    pub ref_cmd_sn: u32,
    /// ExpDataSN.
    pub exp_data_sn: u32,
}

impl TmfRequest {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = F | (u8::from(self.function) & 0x7f);
        put_u64(b, 8, self.lun);
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.referenced_task_tag);
        put_u32(b, 24, self.cmd_sn);
        put_u32(b, 28, self.exp_stat_sn);
        put_u32(b, 32, self.ref_cmd_sn);
        put_u32(b, 36, self.exp_data_sn);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN], immediate: bool) -> Result<Self, DecodeError> {
        Ok(TmfRequest {
            immediate,
            function: TmfFunction::from(b[1] & 0x7f),
            lun: get_u64(b, 8),
            itt: get_u32(b, 16),
            referenced_task_tag: get_u32(b, 20),
            cmd_sn: get_u32(b, 24),
            exp_stat_sn: get_u32(b, 28),
            ref_cmd_sn: get_u32(b, 32),
            exp_data_sn: get_u32(b, 36),
        })
    }
}

/// Task Management Function Response (opcode 0x22).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TmfResponse {
    /// Response.
    pub response: TmfResponseCode,
    /// Initiator Task Tag of the request.
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

impl TmfResponse {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = F;
        b[2] = self.response.into();
        put_u32(b, 16, self.itt);
        put_u32(b, 24, self.stat_sn);
        put_u32(b, 28, self.exp_cmd_sn);
        put_u32(b, 32, self.max_cmd_sn);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        Ok(TmfResponse {
            response: TmfResponseCode::from(b[2]),
            itt: get_u32(b, 16),
            stat_sn: get_u32(b, 24),
            exp_cmd_sn: get_u32(b, 28),
            max_cmd_sn: get_u32(b, 32),
        })
    }
}

fn stage_bits(csg: Stage, nsg: Stage) -> u8 {
    (csg as u8) << 2 | nsg as u8
}

fn login_flags(b: u8, what: &'static str) -> Result<(bool, bool, Stage, Stage), DecodeError> {
    let transit = flag(b, 0x80);
    let cont = flag(b, 0x40);
    if transit && cont {
        return Err(DecodeError::Protocol(what));
    }
    let csg = Stage::from_bits((b >> 2) & 3, "CSG")?;
    // NSG is reserved when T is 0: accept any value then and report Security.
    let nsg = if transit {
        Stage::from_bits(b & 3, "NSG")?
    } else {
        Stage::from_bits(b & 3, "NSG").unwrap_or(Stage::Security)
    };
    Ok((transit, cont, csg, nsg))
}

/// Login Request (opcode 0x03; the I bit is always 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginRequest {
    /// T bit: the initiator is ready to move to NSG.
    pub transit: bool,
    /// C bit: the text in this PDU continues in the next.
    pub continue_: bool,
    /// Current stage.
    pub csg: Stage,
    /// Next stage (meaningful when T is set).
    pub nsg: Stage,
    /// Version-max.
    pub version_max: u8,
    /// Version-min.
    pub version_min: u8,
    /// ISID.
    pub isid: Isid,
    /// TSIH: 0 for a new session.
    pub tsih: u16,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Connection ID.
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

impl LoginRequest {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = bit(self.transit, 0x80) | bit(self.continue_, 0x40) | stage_bits(self.csg, self.nsg);
        b[2] = self.version_max;
        b[3] = self.version_min;
        b[8..14].copy_from_slice(&self.isid.0);
        put_u16(b, 14, self.tsih);
        put_u32(b, 16, self.itt);
        put_u16(b, 20, self.cid);
        put_u32(b, 24, self.cmd_sn);
        put_u32(b, 28, self.exp_stat_sn);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        let (transit, continue_, csg, nsg) =
            login_flags(b[1], "Login Request with both T and C set")?;
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b[8..14]);
        Ok(LoginRequest {
            transit,
            continue_,
            csg,
            nsg,
            version_max: b[2],
            version_min: b[3],
            isid: Isid(isid),
            tsih: get_u16(b, 14),
            itt: get_u32(b, 16),
            cid: get_u16(b, 20),
            cmd_sn: get_u32(b, 24),
            exp_stat_sn: get_u32(b, 28),
        })
    }
}

/// Login Response (opcode 0x23).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginResponse {
    /// T bit: the target agrees to move to NSG.
    pub transit: bool,
    /// C bit: the text continues in the next Login Response.
    pub continue_: bool,
    /// Current stage.
    pub csg: Stage,
    /// Next stage (meaningful when T is set).
    pub nsg: Stage,
    /// Version-max.
    pub version_max: u8,
    /// Version-active.
    pub version_active: u8,
    /// ISID (echoed).
    pub isid: Isid,
    /// TSIH: assigned by the target in the final response of a new session.
    pub tsih: u16,
    /// Initiator Task Tag (echoed).
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Status-Class and Status-Detail.
    pub status: LoginStatus,
}

impl LoginResponse {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = bit(self.transit, 0x80) | bit(self.continue_, 0x40) | stage_bits(self.csg, self.nsg);
        b[2] = self.version_max;
        b[3] = self.version_active;
        b[8..14].copy_from_slice(&self.isid.0);
        put_u16(b, 14, self.tsih);
        put_u32(b, 16, self.itt);
        put_u32(b, 24, self.stat_sn);
        put_u32(b, 28, self.exp_cmd_sn);
        put_u32(b, 32, self.max_cmd_sn);
        b[36] = self.status.class();
        b[37] = self.status.detail();
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        let (transit, continue_, csg, nsg) =
            login_flags(b[1], "Login Response with both T and C set")?;
        let mut isid = [0u8; 6];
        isid.copy_from_slice(&b[8..14]);
        Ok(LoginResponse {
            transit,
            continue_,
            csg,
            nsg,
            version_max: b[2],
            version_active: b[3],
            isid: Isid(isid),
            tsih: get_u16(b, 14),
            itt: get_u32(b, 16),
            stat_sn: get_u32(b, 24),
            exp_cmd_sn: get_u32(b, 28),
            max_cmd_sn: get_u32(b, 32),
            status: LoginStatus::new(b[36], b[37]),
        })
    }
}

fn text_flags(b: u8, what: &'static str) -> Result<(bool, bool), DecodeError> {
    let (f, c) = (flag(b, F), flag(b, 0x40));
    if f && c {
        return Err(DecodeError::Protocol(what));
    }
    Ok((f, c))
}

/// Text Request (opcode 0x04).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TextRequest {
    /// I bit.
    pub immediate: bool,
    /// F bit: the last PDU of this text exchange from the initiator.
    pub final_: bool,
    /// C bit: the text continues in the next PDU.
    pub continue_: bool,
    /// LUN (reserved unless used by a key).
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// TTT: 0xffffffff to start, else the TTT of the Text Response being continued.
    pub ttt: u32,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

impl TextRequest {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = bit(self.final_, F) | bit(self.continue_, 0x40);
        put_u64(b, 8, self.lun);
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.ttt);
        put_u32(b, 24, self.cmd_sn);
        put_u32(b, 28, self.exp_stat_sn);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN], immediate: bool) -> Result<Self, DecodeError> {
        let (final_, continue_) = text_flags(b[1], "Text Request with both F and C set")?;
        Ok(TextRequest {
            immediate,
            final_,
            continue_,
            lun: get_u64(b, 8),
            itt: get_u32(b, 16),
            ttt: get_u32(b, 20),
            cmd_sn: get_u32(b, 24),
            exp_stat_sn: get_u32(b, 28),
        })
    }
}

/// Text Response (opcode 0x24).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TextResponse {
    /// F bit: the target's last PDU of the exchange.
    pub final_: bool,
    /// C bit: the text continues in the next PDU.
    pub continue_: bool,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag (echoed).
    pub itt: u32,
    /// TTT: 0xffffffff when final, else a tag the initiator echoes to continue.
    pub ttt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

impl TextResponse {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = bit(self.final_, F) | bit(self.continue_, 0x40);
        put_u64(b, 8, self.lun);
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.ttt);
        put_u32(b, 24, self.stat_sn);
        put_u32(b, 28, self.exp_cmd_sn);
        put_u32(b, 32, self.max_cmd_sn);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        let (final_, continue_) = text_flags(b[1], "Text Response with both F and C set")?;
        Ok(TextResponse {
            final_,
            continue_,
            lun: get_u64(b, 8),
            itt: get_u32(b, 16),
            ttt: get_u32(b, 20),
            stat_sn: get_u32(b, 24),
            exp_cmd_sn: get_u32(b, 28),
            max_cmd_sn: get_u32(b, 32),
        })
    }
}

/// SCSI Data-Out (opcode 0x05).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DataOut {
    /// F bit: last PDU of this unsolicited burst or R2T sequence.
    pub final_: bool,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// TTT of the R2T answered, or 0xffffffff for unsolicited data.
    pub ttt: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// DataSN within the sequence.
    pub data_sn: u32,
    /// Buffer Offset.
    pub buffer_offset: u32,
}

impl DataOut {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = bit(self.final_, F);
        put_u64(b, 8, self.lun);
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.ttt);
        put_u32(b, 28, self.exp_stat_sn);
        put_u32(b, 36, self.data_sn);
        put_u32(b, 40, self.buffer_offset);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        Ok(DataOut {
            final_: flag(b[1], F),
            lun: get_u64(b, 8),
            itt: get_u32(b, 16),
            ttt: get_u32(b, 20),
            exp_stat_sn: get_u32(b, 28),
            data_sn: get_u32(b, 36),
            buffer_offset: get_u32(b, 40),
        })
    }
}

/// SCSI Data-In (opcode 0x25).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DataIn {
    /// F bit: last PDU of the sequence.
    pub final_: bool,
    /// A bit: the target asks for a DataACK (ErrorRecoveryLevel > 0).
    pub acknowledge: bool,
    /// O/U bits and Residual Count (meaningful with status).
    pub residual: Residual,
    /// S bit and Status: the PDU carries the command's status (phase collapse).
    pub status: Option<u8>,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag (0xffffffff unless A is set).
    pub ttt: u32,
    /// StatSN (meaningful when S is set).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN.
    pub data_sn: u32,
    /// Buffer Offset.
    pub buffer_offset: u32,
}

impl DataIn {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        let mut f = bit(self.final_, F) | bit(self.acknowledge, 0x40);
        let res = self.residual.write(&mut f, 0x04, 0x02);
        if let Some(s) = self.status {
            f |= 0x01;
            b[3] = s;
        }
        b[1] = f;
        put_u64(b, 8, self.lun);
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.ttt);
        put_u32(b, 24, self.stat_sn);
        put_u32(b, 28, self.exp_cmd_sn);
        put_u32(b, 32, self.max_cmd_sn);
        put_u32(b, 36, self.data_sn);
        put_u32(b, 40, self.buffer_offset);
        put_u32(b, 44, res);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        let f = b[1];
        let status = flag(f, 0x01).then_some(b[3]);
        if status.is_some() && !flag(f, F) {
            return Err(DecodeError::Protocol("Data-In with S set but F clear"));
        }
        Ok(DataIn {
            final_: flag(f, F),
            acknowledge: flag(f, 0x40),
            residual: Residual::parse(f, 0x04, 0x02, get_u32(b, 44), "Data-In O/U bits")?,
            status,
            lun: get_u64(b, 8),
            itt: get_u32(b, 16),
            ttt: get_u32(b, 20),
            stat_sn: get_u32(b, 24),
            exp_cmd_sn: get_u32(b, 28),
            max_cmd_sn: get_u32(b, 32),
            data_sn: get_u32(b, 36),
            buffer_offset: get_u32(b, 40),
        })
    }
}

/// Logout Request (opcode 0x06).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogoutRequest {
    /// I bit.
    pub immediate: bool,
    /// Reason Code.
    pub reason: LogoutReason,
    /// Initiator Task Tag.
    pub itt: u32,
    /// CID of the connection to close (reserved when closing the session).
    pub cid: u16,
    /// CmdSN.
    pub cmd_sn: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
}

impl LogoutRequest {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = F | (u8::from(self.reason) & 0x7f);
        put_u32(b, 16, self.itt);
        put_u16(b, 20, self.cid);
        put_u32(b, 24, self.cmd_sn);
        put_u32(b, 28, self.exp_stat_sn);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN], immediate: bool) -> Result<Self, DecodeError> {
        Ok(LogoutRequest {
            immediate,
            reason: LogoutReason::from(b[1] & 0x7f),
            itt: get_u32(b, 16),
            cid: get_u16(b, 20),
            cmd_sn: get_u32(b, 24),
            exp_stat_sn: get_u32(b, 28),
        })
    }
}

/// Logout Response (opcode 0x26).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LogoutResponse {
    /// Response.
    pub response: LogoutResponseCode,
    /// Initiator Task Tag (echoed).
    pub itt: u32,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// Time2Wait in seconds.
    pub time2wait: u16,
    /// Time2Retain in seconds.
    pub time2retain: u16,
}

impl LogoutResponse {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = F;
        b[2] = self.response.into();
        put_u32(b, 16, self.itt);
        put_u32(b, 24, self.stat_sn);
        put_u32(b, 28, self.exp_cmd_sn);
        put_u32(b, 32, self.max_cmd_sn);
        put_u16(b, 40, self.time2wait);
        put_u16(b, 42, self.time2retain);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        Ok(LogoutResponse {
            response: LogoutResponseCode::from(b[2]),
            itt: get_u32(b, 16),
            stat_sn: get_u32(b, 24),
            exp_cmd_sn: get_u32(b, 28),
            max_cmd_sn: get_u32(b, 32),
            time2wait: get_u16(b, 40),
            time2retain: get_u16(b, 42),
        })
    }
}

/// SNACK Request (opcode 0x10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SnackRequest {
    /// Type.
    pub snack_type: SnackType,
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag, or 0xffffffff.
    pub itt: u32,
    /// Target Transfer Tag (DataACK) or SNACK Tag (R-Data), else 0xffffffff.
    pub ttt_or_snack_tag: u32,
    /// ExpStatSN.
    pub exp_stat_sn: u32,
    /// BegRun.
    pub beg_run: u32,
    /// RunLength.
    pub run_length: u32,
}

impl SnackRequest {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = F | (u8::from(self.snack_type) & 0x0f);
        put_u64(b, 8, self.lun);
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.ttt_or_snack_tag);
        put_u32(b, 28, self.exp_stat_sn);
        put_u32(b, 40, self.beg_run);
        put_u32(b, 44, self.run_length);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        Ok(SnackRequest {
            snack_type: SnackType::from(b[1] & 0x0f),
            lun: get_u64(b, 8),
            itt: get_u32(b, 16),
            ttt_or_snack_tag: get_u32(b, 20),
            exp_stat_sn: get_u32(b, 28),
            beg_run: get_u32(b, 40),
            run_length: get_u32(b, 44),
        })
    }
}

/// Ready To Transfer (opcode 0x31).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct R2t {
    /// LUN.
    pub lun: u64,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Target Transfer Tag the Data-Out PDUs must echo.
    pub ttt: u32,
    /// StatSN (the next StatSN; not advanced).
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// R2TSN.
    pub r2t_sn: u32,
    /// Buffer Offset.
    pub buffer_offset: u32,
    /// Desired Data Transfer Length.
    pub desired_data_transfer_length: u32,
}

impl R2t {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = F;
        put_u64(b, 8, self.lun);
        put_u32(b, 16, self.itt);
        put_u32(b, 20, self.ttt);
        put_u32(b, 24, self.stat_sn);
        put_u32(b, 28, self.exp_cmd_sn);
        put_u32(b, 32, self.max_cmd_sn);
        put_u32(b, 36, self.r2t_sn);
        put_u32(b, 40, self.buffer_offset);
        put_u32(b, 44, self.desired_data_transfer_length);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        let r = R2t {
            lun: get_u64(b, 8),
            itt: get_u32(b, 16),
            ttt: get_u32(b, 20),
            stat_sn: get_u32(b, 24),
            exp_cmd_sn: get_u32(b, 28),
            max_cmd_sn: get_u32(b, 32),
            r2t_sn: get_u32(b, 36),
            buffer_offset: get_u32(b, 40),
            desired_data_transfer_length: get_u32(b, 44),
        };
        if r.desired_data_transfer_length == 0 {
            return Err(DecodeError::InvalidField {
                field: "R2T Desired Data Transfer Length",
                value: 0,
            });
        }
        if r.ttt == RESERVED_TAG {
            return Err(DecodeError::InvalidField {
                field: "R2T Target Transfer Tag",
                value: r.ttt.into(),
            });
        }
        Ok(r)
    }
}

/// Asynchronous Message (opcode 0x32). The ITT is always 0xffffffff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AsyncMessage {
    /// LUN (for SCSI events).
    pub lun: u64,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// AsyncEvent.
    pub async_event: AsyncEvent,
    /// AsyncVCode (vendor code).
    pub async_vcode: u8,
    /// Parameter1.
    pub parameter1: u16,
    /// Parameter2.
    pub parameter2: u16,
    /// Parameter3.
    pub parameter3: u16,
}

impl AsyncMessage {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = F;
        put_u64(b, 8, self.lun);
        put_u32(b, 16, RESERVED_TAG);
        put_u32(b, 24, self.stat_sn);
        put_u32(b, 28, self.exp_cmd_sn);
        put_u32(b, 32, self.max_cmd_sn);
        b[36] = self.async_event.into();
        b[37] = self.async_vcode;
        put_u16(b, 38, self.parameter1);
        put_u16(b, 40, self.parameter2);
        put_u16(b, 42, self.parameter3);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        let itt = get_u32(b, 16);
        if itt != RESERVED_TAG {
            return Err(DecodeError::InvalidField {
                field: "Async Message ITT",
                value: itt.into(),
            });
        }
        Ok(AsyncMessage {
            lun: get_u64(b, 8),
            stat_sn: get_u32(b, 24),
            exp_cmd_sn: get_u32(b, 28),
            max_cmd_sn: get_u32(b, 32),
            async_event: AsyncEvent::from(b[36]),
            async_vcode: b[37],
            parameter1: get_u16(b, 38),
            parameter2: get_u16(b, 40),
            parameter3: get_u16(b, 42),
        })
    }
}

/// Reject (opcode 0x3f). The data segment carries the rejected PDU's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reject {
    /// Reason.
    pub reason: RejectReason,
    /// StatSN.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
    /// DataSN/R2TSN (for a rejected SNACK), else 0.
    pub data_sn_or_r2t_sn: u32,
}

impl Reject {
    pub(crate) fn write(&self, b: &mut [u8; BHS_LEN]) {
        b[1] = F;
        b[2] = self.reason.into();
        put_u32(b, 16, RESERVED_TAG);
        put_u32(b, 24, self.stat_sn);
        put_u32(b, 28, self.exp_cmd_sn);
        put_u32(b, 32, self.max_cmd_sn);
        put_u32(b, 36, self.data_sn_or_r2t_sn);
    }

    pub(crate) fn parse(b: &[u8; BHS_LEN]) -> Result<Self, DecodeError> {
        Ok(Reject {
            reason: RejectReason::from(b[2]),
            stat_sn: get_u32(b, 24),
            exp_cmd_sn: get_u32(b, 28),
            max_cmd_sn: get_u32(b, 32),
            data_sn_or_r2t_sn: get_u32(b, 36),
        })
    }
}
