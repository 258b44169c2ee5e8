//! Command descriptor blocks as typed values: [`Cdb::parse`] for the device server
//! (errors name the byte and bit for the INVALID FIELD IN CDB field pointer) and
//! [`Cdb::to_bytes`] for the initiator.
//!
//! Parsing is structural: it decodes every field and rejects only what cannot be
//! represented (truncated CDBs, unknown operation codes or service actions, reserved
//! enumerations, NACA). Semantic checks that depend on the logical unit (LBA range,
//! PROTECT against the LUN's format, field combinations) belong to the device server.

use thiserror::Error;

use crate::asc;
use crate::opcode::{self, maint_in, sai16, var};
use crate::sense::{FieldPointer, Sense, SenseKey};

/// Why a CDB could not be parsed or built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CdbError {
    /// Fewer bytes than the operation code's CDB length.
    #[error("CDB for opcode {opcode:02X}h too short: {len} bytes, need {need}")]
    TooShort {
        /// Operation code (0 when the CDB is empty).
        opcode: u8,
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The operation code is not one this crate decodes.
    #[error("unsupported operation code {opcode:02X}h")]
    UnsupportedOpcode {
        /// Operation code.
        opcode: u8,
    },
    /// The operation code is known but its service action is not.
    #[error("unsupported service action {service_action:04X}h of opcode {opcode:02X}h")]
    UnsupportedServiceAction {
        /// Operation code.
        opcode: u8,
        /// Service action.
        service_action: u16,
        /// Byte of the SERVICE ACTION field.
        byte: u16,
        /// Most significant bit of the field within that byte.
        bit: Option<u8>,
    },
    /// A field holds a reserved or unsupported value.
    #[error("invalid field in CDB: {what} (byte {byte}{})", bit.map(|b| format!(" bit {b}")).unwrap_or_default())]
    InvalidField {
        /// Byte offset of the field.
        byte: u16,
        /// Most significant bit of the field, when it is narrower than a byte.
        bit: Option<u8>,
        /// Which field, in the standard's words.
        what: &'static str,
    },
    /// Building: a value does not fit the chosen CDB form.
    #[error("{field} does not fit a {len}-byte CDB")]
    DoesNotFit {
        /// Which field.
        field: &'static str,
        /// CDB length of the chosen form.
        len: usize,
    },
}

impl CdbError {
    /// The sense-key-specific field pointer for this error, if it names a field.
    pub fn field_pointer(&self) -> Option<FieldPointer> {
        match *self {
            CdbError::InvalidField { byte, bit, .. }
            | CdbError::UnsupportedServiceAction { byte, bit, .. } => {
                Some(FieldPointer::cdb(byte, bit))
            }
            CdbError::UnsupportedOpcode { .. } => Some(FieldPointer::cdb(0, None)),
            CdbError::TooShort { .. } | CdbError::DoesNotFit { .. } => None,
        }
    }

    /// The sense a device server returns for this error: INVALID COMMAND OPERATION
    /// CODE (20h/00h) for an unknown opcode, otherwise INVALID FIELD IN CDB (24h/00h),
    /// both ILLEGAL REQUEST with the field pointer.
    pub fn to_sense(&self) -> Sense {
        let pair = match self {
            CdbError::UnsupportedOpcode { .. } => asc::INVALID_COMMAND_OPERATION_CODE,
            _ => asc::INVALID_FIELD_IN_CDB,
        };
        let mut s = Sense::new(SenseKey::ILLEGAL_REQUEST, pair);
        s.field_pointer = self.field_pointer();
        s
    }
}

/// The length form of a CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Form {
    /// 6-byte CDB.
    Six,
    /// 10-byte CDB.
    Ten,
    /// 12-byte CDB.
    Twelve,
    /// 16-byte CDB.
    Sixteen,
    /// 32-byte variable-length CDB (opcode 7Fh).
    ThirtyTwo,
}

impl Form {
    /// CDB length in bytes.
    pub fn cdb_len(self) -> usize {
        match self {
            Form::Six => 6,
            Form::Ten => 10,
            Form::Twelve => 12,
            Form::Sixteen => 16,
            Form::ThirtyTwo => 32,
        }
    }

    /// Byte holding the PROTECT/DPO/FUA flags (1, or 10 for the 32-byte form).
    pub fn flags_byte(self) -> u16 {
        if self == Form::ThirtyTwo {
            10
        } else {
            1
        }
    }
}

/// The block command families that move or check logical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RwKind {
    /// READ: data-in.
    Read,
    /// WRITE: data-out.
    Write,
    /// VERIFY: data-out only when BYTCHK != 0.
    Verify,
    /// WRITE AND VERIFY: data-out.
    WriteAndVerify,
}

/// The 32-byte CDBs' expected tags (bytes 20-27), used for Type 2 protection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ExpectedTags {
    /// EXPECTED INITIAL LOGICAL BLOCK REFERENCE TAG (bytes 20-23).
    pub ref_tag: u32,
    /// EXPECTED LOGICAL BLOCK APPLICATION TAG (bytes 24-25).
    pub app_tag: u16,
    /// LOGICAL BLOCK APPLICATION TAG MASK (bytes 26-27).
    pub app_tag_mask: u16,
}

/// READ / WRITE / VERIFY / WRITE AND VERIFY in any length form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReadWrite {
    /// Which family.
    pub kind: RwKind,
    /// Which length form.
    pub form: Form,
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (6-byte READ/WRITE: a CDB value of 0 means 256).
    pub blocks: u32,
    /// RDPROTECT / WRPROTECT / VRPROTECT (bits 7:5 of the flags byte).
    pub protect: u8,
    /// Disable page out.
    pub dpo: bool,
    /// Force unit access (READ and WRITE only).
    pub fua: bool,
    /// BYTCHK (VERIFY and WRITE AND VERIFY; bits 2:1): 0 medium only, 1 compare, 3 compare one block.
    pub bytchk: u8,
    /// GROUP NUMBER.
    pub group: u8,
    /// Expected tags (32-byte form only).
    pub tags: Option<ExpectedTags>,
}

impl ReadWrite {
    /// A command with no flags set.
    pub fn new(kind: RwKind, form: Form, lba: u64, blocks: u32) -> Self {
        ReadWrite {
            kind,
            form,
            lba,
            blocks,
            protect: 0,
            dpo: false,
            fua: false,
            bytchk: 0,
            group: 0,
            tags: (form == Form::ThirtyTwo).then(ExpectedTags::default),
        }
    }

    /// Sets the PROTECT field.
    pub fn with_protect(mut self, protect: u8) -> Self {
        self.protect = protect;
        self
    }

    /// Whether the command transfers data from the initiator (data-out).
    pub fn is_data_out(&self) -> bool {
        match self.kind {
            RwKind::Read => false,
            RwKind::Write | RwKind::WriteAndVerify => true,
            RwKind::Verify => self.bytchk != 0,
        }
    }
}

/// WRITE SAME(10/16/32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteSame {
    /// Which length form (Ten, Sixteen, ThirtyTwo).
    pub form: Form,
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (0: to the end of the medium, if allowed).
    pub blocks: u32,
    /// WRPROTECT.
    pub protect: u8,
    /// ANCHOR.
    pub anchor: bool,
    /// UNMAP.
    pub unmap: bool,
    /// NDOB: no data-out buffer (16 and 32 only).
    pub ndob: bool,
    /// GROUP NUMBER.
    pub group: u8,
    /// Expected tags (32-byte form only).
    pub tags: Option<ExpectedTags>,
}

/// COMPARE AND WRITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CompareAndWrite {
    /// First logical block.
    pub lba: u64,
    /// NUMBER OF LOGICAL BLOCKS (byte 13); the data-out holds twice as many.
    pub blocks: u8,
    /// WRPROTECT.
    pub protect: u8,
    /// DPO.
    pub dpo: bool,
    /// FUA.
    pub fua: bool,
    /// GROUP NUMBER.
    pub group: u8,
}

/// SYNCHRONIZE CACHE and PRE-FETCH (10/16), which share a layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheRange {
    /// Ten or Sixteen.
    pub form: Form,
    /// IMMED.
    pub immed: bool,
    /// First logical block.
    pub lba: u64,
    /// Number of logical blocks (0: to the end of the medium).
    pub blocks: u32,
    /// GROUP NUMBER.
    pub group: u8,
}

/// MODE SENSE(6/10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModeSense {
    /// Six or Ten.
    pub form: Form,
    /// Disable block descriptors.
    pub dbd: bool,
    /// Long LBA accepted (10 only).
    pub llbaa: bool,
    /// Page control: 0 current, 1 changeable, 2 default, 3 saved.
    pub pc: u8,
    /// Page code (3Fh: all pages).
    pub page: u8,
    /// Subpage code.
    pub subpage: u8,
    /// Allocation length.
    pub alloc_len: u16,
}

/// MODE SELECT(6/10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ModeSelect {
    /// Six or Ten.
    pub form: Form,
    /// Page format.
    pub pf: bool,
    /// Save pages.
    pub sp: bool,
    /// Parameter list length.
    pub param_len: u16,
}

/// START STOP UNIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StartStopUnit {
    /// IMMED.
    pub immed: bool,
    /// POWER CONDITION MODIFIER.
    pub power_condition_modifier: u8,
    /// POWER CONDITION.
    pub power_condition: u8,
    /// NO_FLUSH.
    pub no_flush: bool,
    /// LOEJ.
    pub loej: bool,
    /// START.
    pub start: bool,
}

/// REPORT SUPPORTED OPERATION CODES (MAINTENANCE IN, service action 0Ch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReportSupportedOpcodes {
    /// Return command timeouts descriptor.
    pub rctd: bool,
    /// REPORTING OPTIONS (0 all, 1 one opcode, 2 one opcode + service action, 3 either).
    pub options: u8,
    /// REQUESTED OPERATION CODE.
    pub opcode: u8,
    /// REQUESTED SERVICE ACTION.
    pub service_action: u16,
    /// Allocation length.
    pub alloc_len: u32,
}

/// PERSISTENT RESERVE OUT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PersistentReserveOut {
    /// Service action (see [`crate::opcode::pr_out`]).
    pub action: u8,
    /// SCOPE (0: LU_SCOPE).
    pub scope: u8,
    /// TYPE (1 WE, 3 EA, 5 WE-RO, 6 EA-RO, 7 WE-AR, 8 EA-AR).
    pub pr_type: u8,
    /// Parameter list length.
    pub param_len: u32,
}

/// RESERVE / RELEASE (6/10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reservation {
    /// Six or Ten.
    pub form: Form,
    /// 3RDPTY (10 only).
    pub third_party: bool,
    /// LONGID (10 only).
    pub longid: bool,
    /// THIRD-PARTY DEVICE ID (10 only).
    pub third_party_id: u8,
    /// Parameter list length (10 only).
    pub param_len: u16,
}

/// A decoded CDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cdb {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE.
    RequestSense {
        /// DESC: descriptor format requested.
        desc: bool,
        /// Allocation length.
        alloc_len: u8,
    },
    /// INQUIRY.
    Inquiry {
        /// EVPD: a VPD page is requested.
        evpd: bool,
        /// PAGE CODE.
        page: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// MODE SENSE(6/10).
    ModeSense(ModeSense),
    /// MODE SELECT(6/10).
    ModeSelect(ModeSelect),
    /// READ CAPACITY(10).
    ReadCapacity10 {
        /// LOGICAL BLOCK ADDRESS (obsolete).
        lba: u32,
        /// PMI (obsolete).
        pmi: bool,
    },
    /// READ CAPACITY(16).
    ReadCapacity16 {
        /// LOGICAL BLOCK ADDRESS (obsolete).
        lba: u64,
        /// Allocation length.
        alloc_len: u32,
        /// PMI (obsolete).
        pmi: bool,
    },
    /// READ / WRITE / VERIFY / WRITE AND VERIFY.
    ReadWrite(ReadWrite),
    /// WRITE SAME.
    WriteSame(WriteSame),
    /// COMPARE AND WRITE.
    CompareAndWrite(CompareAndWrite),
    /// SYNCHRONIZE CACHE(10/16).
    SynchronizeCache(CacheRange),
    /// PRE-FETCH(10/16).
    PreFetch(CacheRange),
    /// UNMAP.
    Unmap {
        /// ANCHOR.
        anchor: bool,
        /// GROUP NUMBER.
        group: u8,
        /// Parameter list length.
        param_len: u16,
    },
    /// GET LBA STATUS.
    GetLbaStatus {
        /// STARTING LOGICAL BLOCK ADDRESS.
        lba: u64,
        /// Allocation length.
        alloc_len: u32,
    },
    /// REPORT LUNS.
    ReportLuns {
        /// SELECT REPORT.
        select_report: u8,
        /// Allocation length.
        alloc_len: u32,
    },
    /// START STOP UNIT.
    StartStopUnit(StartStopUnit),
    /// PREVENT ALLOW MEDIUM REMOVAL.
    PreventAllowMediumRemoval {
        /// PREVENT (bits 1:0).
        prevent: u8,
    },
    /// REPORT SUPPORTED OPERATION CODES.
    ReportSupportedOpcodes(ReportSupportedOpcodes),
    /// PERSISTENT RESERVE IN.
    PersistentReserveIn {
        /// Service action (see [`crate::opcode::pr_in`]).
        action: u8,
        /// Allocation length.
        alloc_len: u16,
    },
    /// PERSISTENT RESERVE OUT.
    PersistentReserveOut(PersistentReserveOut),
    /// RESERVE(6/10).
    Reserve(Reservation),
    /// RELEASE(6/10).
    Release(Reservation),
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}
fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn be64(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i..i + 8]);
    u64::from_be_bytes(a)
}

fn rw_flags(kind: RwKind, form: Form, f: u8) -> Result<(u8, bool, bool, u8), CdbError> {
    let protect = f >> 5;
    let dpo = f & 0x10 != 0;
    let (fua, bytchk) = match kind {
        RwKind::Read | RwKind::Write => (f & 0x08 != 0, 0),
        RwKind::Verify | RwKind::WriteAndVerify => (false, (f >> 1) & 0x03),
    };
    if bytchk == 2 {
        return Err(CdbError::InvalidField {
            byte: form.flags_byte(),
            bit: Some(2),
            what: "BYTCHK",
        });
    }
    Ok((protect, dpo, fua, bytchk))
}

fn parse_rw(kind: RwKind, form: Form, b: &[u8]) -> Result<ReadWrite, CdbError> {
    let mut rw = ReadWrite::new(kind, form, 0, 0);
    let flags = match form {
        Form::Six => {
            rw.lba = u64::from(b[1] & 0x1F) << 16 | u64::from(be16(b, 2));
            rw.blocks = if b[4] == 0 { 256 } else { u32::from(b[4]) };
            return Ok(rw);
        }
        Form::Ten => {
            rw.lba = u64::from(be32(b, 2));
            rw.group = b[6] & 0x3F;
            rw.blocks = u32::from(be16(b, 7));
            b[1]
        }
        Form::Twelve => {
            rw.lba = u64::from(be32(b, 2));
            rw.blocks = be32(b, 6);
            rw.group = b[10] & 0x3F;
            b[1]
        }
        Form::Sixteen => {
            rw.lba = be64(b, 2);
            rw.blocks = be32(b, 10);
            rw.group = b[14] & 0x3F;
            b[1]
        }
        Form::ThirtyTwo => {
            rw.group = b[6] & 0x3F;
            rw.lba = be64(b, 12);
            rw.tags = Some(parse_tags(b));
            rw.blocks = be32(b, 28);
            b[10]
        }
    };
    (rw.protect, rw.dpo, rw.fua, rw.bytchk) = rw_flags(kind, form, flags)?;
    Ok(rw)
}

fn parse_tags(b: &[u8]) -> ExpectedTags {
    ExpectedTags {
        ref_tag: be32(b, 20),
        app_tag: be16(b, 24),
        app_tag_mask: be16(b, 26),
    }
}

fn parse_write_same(form: Form, b: &[u8]) -> WriteSame {
    let (f, lba, blocks, group, tags) = match form {
        Form::Ten => (
            b[1],
            u64::from(be32(b, 2)),
            u32::from(be16(b, 7)),
            b[6],
            None,
        ),
        Form::Sixteen => (b[1], be64(b, 2), be32(b, 10), b[14], None),
        _ => (b[10], be64(b, 12), be32(b, 28), b[6], Some(parse_tags(b))),
    };
    WriteSame {
        form,
        lba,
        blocks,
        protect: f >> 5,
        anchor: f & 0x10 != 0,
        unmap: f & 0x08 != 0,
        ndob: form != Form::Ten && f & 0x01 != 0,
        group: group & 0x3F,
        tags,
    }
}

fn parse_cache_range(form: Form, b: &[u8]) -> CacheRange {
    let (lba, blocks, group) = match form {
        Form::Ten => (u64::from(be32(b, 2)), u32::from(be16(b, 7)), b[6]),
        _ => (be64(b, 2), be32(b, 10), b[14]),
    };
    CacheRange {
        form,
        immed: b[1] & 0x02 != 0,
        lba,
        blocks,
        group: group & 0x3F,
    }
}

fn parse_reservation(form: Form, b: &[u8]) -> Reservation {
    match form {
        Form::Six => Reservation {
            form,
            third_party: false,
            longid: false,
            third_party_id: 0,
            param_len: 0,
        },
        _ => Reservation {
            form,
            third_party: b[1] & 0x10 != 0,
            longid: b[1] & 0x02 != 0,
            third_party_id: b[3],
            param_len: be16(b, 7),
        },
    }
}

impl Cdb {
    /// Decodes a CDB. Trailing bytes beyond the operation code's CDB length are
    /// ignored (an iSCSI BHS always carries 16 CDB bytes).
    pub fn parse(b: &[u8]) -> Result<Cdb, CdbError> {
        let opcode = *b.first().ok_or(CdbError::TooShort {
            opcode: 0,
            len: 0,
            need: 1,
        })?;
        let need = opcode::cdb_len(opcode).unwrap_or(if opcode == opcode::VARIABLE_LENGTH {
            32
        } else {
            1
        });
        if b.len() < need {
            return Err(CdbError::TooShort {
                opcode,
                len: b.len(),
                need,
            });
        }
        let control = if opcode == opcode::VARIABLE_LENGTH {
            1
        } else {
            need - 1
        };
        if need > 1 && b[control] & 0x04 != 0 {
            return Err(CdbError::InvalidField {
                byte: control as u16,
                bit: Some(2),
                what: "NACA",
            });
        }
        let sa5 = b.get(1).map_or(0, |x| x & 0x1F);
        let bad_sa = |service_action: u16| CdbError::UnsupportedServiceAction {
            opcode,
            service_action,
            byte: 1,
            bit: Some(4),
        };
        use opcode::*;
        use RwKind::*;
        Ok(match opcode {
            TEST_UNIT_READY => Cdb::TestUnitReady,
            REQUEST_SENSE => Cdb::RequestSense {
                desc: b[1] & 1 != 0,
                alloc_len: b[4],
            },
            INQUIRY => {
                if b[1] & 0x02 != 0 {
                    return Err(CdbError::InvalidField {
                        byte: 1,
                        bit: Some(1),
                        what: "CMDDT",
                    });
                }
                Cdb::Inquiry {
                    evpd: b[1] & 1 != 0,
                    page: b[2],
                    alloc_len: be16(b, 3),
                }
            }
            MODE_SENSE_6 | MODE_SENSE_10 => {
                let ten = opcode == MODE_SENSE_10;
                Cdb::ModeSense(ModeSense {
                    form: if ten { Form::Ten } else { Form::Six },
                    dbd: b[1] & 0x08 != 0,
                    llbaa: ten && b[1] & 0x10 != 0,
                    pc: b[2] >> 6,
                    page: b[2] & 0x3F,
                    subpage: b[3],
                    alloc_len: if ten { be16(b, 7) } else { u16::from(b[4]) },
                })
            }
            MODE_SELECT_6 | MODE_SELECT_10 => {
                let ten = opcode == MODE_SELECT_10;
                Cdb::ModeSelect(ModeSelect {
                    form: if ten { Form::Ten } else { Form::Six },
                    pf: b[1] & 0x10 != 0,
                    sp: b[1] & 0x01 != 0,
                    param_len: if ten { be16(b, 7) } else { u16::from(b[4]) },
                })
            }
            READ_CAPACITY_10 => Cdb::ReadCapacity10 {
                lba: be32(b, 2),
                pmi: b[8] & 1 != 0,
            },
            SERVICE_ACTION_IN_16 => match sa5 {
                sai16::READ_CAPACITY_16 => Cdb::ReadCapacity16 {
                    lba: be64(b, 2),
                    alloc_len: be32(b, 10),
                    pmi: b[14] & 1 != 0,
                },
                sai16::GET_LBA_STATUS => Cdb::GetLbaStatus {
                    lba: be64(b, 2),
                    alloc_len: be32(b, 10),
                },
                other => return Err(bad_sa(u16::from(other))),
            },
            READ_6 => Cdb::ReadWrite(parse_rw(Read, Form::Six, b)?),
            WRITE_6 => Cdb::ReadWrite(parse_rw(Write, Form::Six, b)?),
            READ_10 => Cdb::ReadWrite(parse_rw(Read, Form::Ten, b)?),
            WRITE_10 => Cdb::ReadWrite(parse_rw(Write, Form::Ten, b)?),
            VERIFY_10 => Cdb::ReadWrite(parse_rw(Verify, Form::Ten, b)?),
            WRITE_AND_VERIFY_10 => Cdb::ReadWrite(parse_rw(WriteAndVerify, Form::Ten, b)?),
            READ_12 => Cdb::ReadWrite(parse_rw(Read, Form::Twelve, b)?),
            WRITE_12 => Cdb::ReadWrite(parse_rw(Write, Form::Twelve, b)?),
            VERIFY_12 => Cdb::ReadWrite(parse_rw(Verify, Form::Twelve, b)?),
            WRITE_AND_VERIFY_12 => Cdb::ReadWrite(parse_rw(WriteAndVerify, Form::Twelve, b)?),
            READ_16 => Cdb::ReadWrite(parse_rw(Read, Form::Sixteen, b)?),
            WRITE_16 => Cdb::ReadWrite(parse_rw(Write, Form::Sixteen, b)?),
            VERIFY_16 => Cdb::ReadWrite(parse_rw(Verify, Form::Sixteen, b)?),
            WRITE_AND_VERIFY_16 => Cdb::ReadWrite(parse_rw(WriteAndVerify, Form::Sixteen, b)?),
            VARIABLE_LENGTH => {
                if b[7] != 0x18 {
                    return Err(CdbError::InvalidField {
                        byte: 7,
                        bit: None,
                        what: "ADDITIONAL CDB LENGTH",
                    });
                }
                let sa = be16(b, 8);
                let kind = match sa {
                    var::READ_32 => Read,
                    var::WRITE_32 => Write,
                    var::VERIFY_32 => Verify,
                    var::WRITE_AND_VERIFY_32 => WriteAndVerify,
                    var::WRITE_SAME_32 => {
                        return Ok(Cdb::WriteSame(parse_write_same(Form::ThirtyTwo, b)))
                    }
                    other => {
                        return Err(CdbError::UnsupportedServiceAction {
                            opcode,
                            service_action: other,
                            byte: 8,
                            bit: None,
                        })
                    }
                };
                Cdb::ReadWrite(parse_rw(kind, Form::ThirtyTwo, b)?)
            }
            WRITE_SAME_10 => Cdb::WriteSame(parse_write_same(Form::Ten, b)),
            WRITE_SAME_16 => Cdb::WriteSame(parse_write_same(Form::Sixteen, b)),
            COMPARE_AND_WRITE => Cdb::CompareAndWrite(CompareAndWrite {
                lba: be64(b, 2),
                blocks: b[13],
                protect: b[1] >> 5,
                dpo: b[1] & 0x10 != 0,
                fua: b[1] & 0x08 != 0,
                group: b[14] & 0x3F,
            }),
            SYNCHRONIZE_CACHE_10 => Cdb::SynchronizeCache(parse_cache_range(Form::Ten, b)),
            SYNCHRONIZE_CACHE_16 => Cdb::SynchronizeCache(parse_cache_range(Form::Sixteen, b)),
            PRE_FETCH_10 => Cdb::PreFetch(parse_cache_range(Form::Ten, b)),
            PRE_FETCH_16 => Cdb::PreFetch(parse_cache_range(Form::Sixteen, b)),
            UNMAP => Cdb::Unmap {
                anchor: b[1] & 1 != 0,
                group: b[6] & 0x3F,
                param_len: be16(b, 7),
            },
            REPORT_LUNS => Cdb::ReportLuns {
                select_report: b[2],
                alloc_len: be32(b, 6),
            },
            START_STOP_UNIT => Cdb::StartStopUnit(StartStopUnit {
                immed: b[1] & 1 != 0,
                power_condition_modifier: b[3] & 0x0F,
                power_condition: b[4] >> 4,
                no_flush: b[4] & 0x04 != 0,
                loej: b[4] & 0x02 != 0,
                start: b[4] & 0x01 != 0,
            }),
            PREVENT_ALLOW_MEDIUM_REMOVAL => Cdb::PreventAllowMediumRemoval {
                prevent: b[4] & 0x03,
            },
            MAINTENANCE_IN => match sa5 {
                maint_in::REPORT_SUPPORTED_OPERATION_CODES => {
                    let options = b[2] & 0x07;
                    if options > 3 {
                        return Err(CdbError::InvalidField {
                            byte: 2,
                            bit: Some(2),
                            what: "REPORTING OPTIONS",
                        });
                    }
                    Cdb::ReportSupportedOpcodes(ReportSupportedOpcodes {
                        rctd: b[2] & 0x80 != 0,
                        options,
                        opcode: b[3],
                        service_action: be16(b, 4),
                        alloc_len: be32(b, 6),
                    })
                }
                other => return Err(bad_sa(u16::from(other))),
            },
            PERSISTENT_RESERVE_IN => {
                if sa5 > opcode::pr_in::READ_FULL_STATUS {
                    return Err(bad_sa(u16::from(sa5)));
                }
                Cdb::PersistentReserveIn {
                    action: sa5,
                    alloc_len: be16(b, 7),
                }
            }
            PERSISTENT_RESERVE_OUT => {
                if sa5 > opcode::pr_out::REGISTER_AND_MOVE {
                    return Err(bad_sa(u16::from(sa5)));
                }
                Cdb::PersistentReserveOut(PersistentReserveOut {
                    action: sa5,
                    scope: b[2] >> 4,
                    pr_type: b[2] & 0x0F,
                    param_len: be32(b, 5),
                })
            }
            RESERVE_6 => Cdb::Reserve(parse_reservation(Form::Six, b)),
            RELEASE_6 => Cdb::Release(parse_reservation(Form::Six, b)),
            RESERVE_10 => Cdb::Reserve(parse_reservation(Form::Ten, b)),
            RELEASE_10 => Cdb::Release(parse_reservation(Form::Ten, b)),
            _ => return Err(CdbError::UnsupportedOpcode { opcode }),
        })
    }

    /// The operation code this CDB encodes to.
    pub fn opcode(&self) -> u8 {
        use opcode::*;
        match self {
            Cdb::TestUnitReady => TEST_UNIT_READY,
            Cdb::RequestSense { .. } => REQUEST_SENSE,
            Cdb::Inquiry { .. } => INQUIRY,
            Cdb::ModeSense(m) => pick(m.form, MODE_SENSE_6, MODE_SENSE_10),
            Cdb::ModeSelect(m) => pick(m.form, MODE_SELECT_6, MODE_SELECT_10),
            Cdb::ReadCapacity10 { .. } => READ_CAPACITY_10,
            Cdb::ReadCapacity16 { .. } | Cdb::GetLbaStatus { .. } => SERVICE_ACTION_IN_16,
            Cdb::ReadWrite(rw) => rw_opcode(rw.kind, rw.form),
            Cdb::WriteSame(ws) => match ws.form {
                Form::Ten => WRITE_SAME_10,
                Form::Sixteen => WRITE_SAME_16,
                _ => VARIABLE_LENGTH,
            },
            Cdb::CompareAndWrite(_) => COMPARE_AND_WRITE,
            Cdb::SynchronizeCache(c) => pick(c.form, SYNCHRONIZE_CACHE_10, SYNCHRONIZE_CACHE_16),
            Cdb::PreFetch(c) => pick(c.form, PRE_FETCH_10, PRE_FETCH_16),
            Cdb::Unmap { .. } => UNMAP,
            Cdb::ReportLuns { .. } => REPORT_LUNS,
            Cdb::StartStopUnit(_) => START_STOP_UNIT,
            Cdb::PreventAllowMediumRemoval { .. } => PREVENT_ALLOW_MEDIUM_REMOVAL,
            Cdb::ReportSupportedOpcodes(_) => MAINTENANCE_IN,
            Cdb::PersistentReserveIn { .. } => PERSISTENT_RESERVE_IN,
            Cdb::PersistentReserveOut(_) => PERSISTENT_RESERVE_OUT,
            Cdb::Reserve(r) => pick(r.form, RESERVE_6, RESERVE_10),
            Cdb::Release(r) => pick(r.form, RELEASE_6, RELEASE_10),
        }
    }

    /// The service action, for the opcodes that carry one (0 otherwise).
    pub fn service_action(&self) -> u16 {
        match self {
            Cdb::ReadCapacity16 { .. } => u16::from(sai16::READ_CAPACITY_16),
            Cdb::GetLbaStatus { .. } => u16::from(sai16::GET_LBA_STATUS),
            Cdb::ReportSupportedOpcodes(_) => u16::from(maint_in::REPORT_SUPPORTED_OPERATION_CODES),
            Cdb::PersistentReserveIn { action, .. } => u16::from(*action),
            Cdb::PersistentReserveOut(p) => u16::from(p.action),
            Cdb::ReadWrite(rw) if rw.form == Form::ThirtyTwo => match rw.kind {
                RwKind::Read => var::READ_32,
                RwKind::Write => var::WRITE_32,
                RwKind::Verify => var::VERIFY_32,
                RwKind::WriteAndVerify => var::WRITE_AND_VERIFY_32,
            },
            Cdb::WriteSame(ws) if ws.form == Form::ThirtyTwo => var::WRITE_SAME_32,
            _ => 0,
        }
    }

    /// The command's name, e.g. `READ(16)`.
    pub fn name(&self) -> &'static str {
        opcode::name(self.opcode(), self.service_action()).unwrap_or("UNKNOWN")
    }

    /// Encodes the CDB (control byte 0). Fails when a value does not fit the form.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CdbError> {
        let op = self.opcode();
        let len = match op {
            opcode::VARIABLE_LENGTH => 32,
            _ => opcode::cdb_len(op).unwrap_or(16),
        };
        let mut b = vec![0u8; len];
        b[0] = op;
        let fits32 =
            |v: u64, field| u32::try_from(v).map_err(|_| CdbError::DoesNotFit { field, len });
        let fits16 =
            |v: u64, field| u16::try_from(v).map_err(|_| CdbError::DoesNotFit { field, len });
        let check_protect = |p: u8| {
            if p > 7 {
                Err(CdbError::DoesNotFit {
                    field: "PROTECT",
                    len,
                })
            } else {
                Ok(p)
            }
        };
        match *self {
            Cdb::TestUnitReady => {}
            Cdb::RequestSense { desc, alloc_len } => {
                b[1] = u8::from(desc);
                b[4] = alloc_len;
            }
            Cdb::Inquiry {
                evpd,
                page,
                alloc_len,
            } => {
                b[1] = u8::from(evpd);
                b[2] = page;
                b[3..5].copy_from_slice(&alloc_len.to_be_bytes());
            }
            Cdb::ModeSense(m) => {
                b[1] = if m.dbd { 0x08 } else { 0 } | if m.llbaa { 0x10 } else { 0 };
                if m.pc > 3 || m.page > 0x3F {
                    return Err(CdbError::DoesNotFit {
                        field: "PAGE CONTROL/PAGE CODE",
                        len,
                    });
                }
                b[2] = m.pc << 6 | m.page;
                b[3] = m.subpage;
                if m.form == Form::Ten {
                    b[7..9].copy_from_slice(&m.alloc_len.to_be_bytes());
                } else {
                    b[4] = u8::try_from(m.alloc_len).map_err(|_| CdbError::DoesNotFit {
                        field: "ALLOCATION LENGTH",
                        len,
                    })?;
                }
            }
            Cdb::ModeSelect(m) => {
                b[1] = if m.pf { 0x10 } else { 0 } | u8::from(m.sp);
                if m.form == Form::Ten {
                    b[7..9].copy_from_slice(&m.param_len.to_be_bytes());
                } else {
                    b[4] = u8::try_from(m.param_len).map_err(|_| CdbError::DoesNotFit {
                        field: "PARAMETER LIST LENGTH",
                        len,
                    })?;
                }
            }
            Cdb::ReadCapacity10 { lba, pmi } => {
                b[2..6].copy_from_slice(&lba.to_be_bytes());
                b[8] = u8::from(pmi);
            }
            Cdb::ReadCapacity16 {
                lba,
                alloc_len,
                pmi,
            } => {
                b[1] = sai16::READ_CAPACITY_16;
                b[2..10].copy_from_slice(&lba.to_be_bytes());
                b[10..14].copy_from_slice(&alloc_len.to_be_bytes());
                b[14] = u8::from(pmi);
            }
            Cdb::GetLbaStatus { lba, alloc_len } => {
                b[1] = sai16::GET_LBA_STATUS;
                b[2..10].copy_from_slice(&lba.to_be_bytes());
                b[10..14].copy_from_slice(&alloc_len.to_be_bytes());
            }
            Cdb::ReadWrite(rw) => {
                let mut f = check_protect(rw.protect)? << 5 | if rw.dpo { 0x10 } else { 0 };
                match rw.kind {
                    RwKind::Read | RwKind::Write => f |= if rw.fua { 0x08 } else { 0 },
                    _ => {
                        if rw.bytchk > 3 || rw.bytchk == 2 {
                            return Err(CdbError::DoesNotFit {
                                field: "BYTCHK",
                                len,
                            });
                        }
                        f |= rw.bytchk << 1;
                    }
                }
                match rw.form {
                    Form::Six => {
                        if f != 0 || rw.group != 0 {
                            return Err(CdbError::DoesNotFit {
                                field: "PROTECT/DPO/FUA/GROUP",
                                len,
                            });
                        }
                        if rw.lba >= 1 << 21 {
                            return Err(CdbError::DoesNotFit {
                                field: "LOGICAL BLOCK ADDRESS",
                                len,
                            });
                        }
                        if rw.blocks == 0
                            || rw.blocks > 256
                            || !matches!(rw.kind, RwKind::Read | RwKind::Write)
                        {
                            return Err(CdbError::DoesNotFit {
                                field: "TRANSFER LENGTH",
                                len,
                            });
                        }
                        b[1..4].copy_from_slice(&(rw.lba as u32).to_be_bytes()[1..]);
                        b[4] = rw.blocks as u8; // 256 encodes as 0
                    }
                    Form::Ten => {
                        b[1] = f;
                        b[2..6].copy_from_slice(
                            &fits32(rw.lba, "LOGICAL BLOCK ADDRESS")?.to_be_bytes(),
                        );
                        b[6] = rw.group & 0x3F;
                        b[7..9].copy_from_slice(
                            &fits16(u64::from(rw.blocks), "TRANSFER LENGTH")?.to_be_bytes(),
                        );
                    }
                    Form::Twelve => {
                        b[1] = f;
                        b[2..6].copy_from_slice(
                            &fits32(rw.lba, "LOGICAL BLOCK ADDRESS")?.to_be_bytes(),
                        );
                        b[6..10].copy_from_slice(&rw.blocks.to_be_bytes());
                        b[10] = rw.group & 0x3F;
                    }
                    Form::Sixteen => {
                        b[1] = f;
                        b[2..10].copy_from_slice(&rw.lba.to_be_bytes());
                        b[10..14].copy_from_slice(&rw.blocks.to_be_bytes());
                        b[14] = rw.group & 0x3F;
                    }
                    Form::ThirtyTwo => {
                        put_var_header(&mut b, self.service_action(), rw.group);
                        b[10] = f;
                        b[12..20].copy_from_slice(&rw.lba.to_be_bytes());
                        put_tags(&mut b, rw.tags.unwrap_or_default());
                        b[28..32].copy_from_slice(&rw.blocks.to_be_bytes());
                    }
                }
            }
            Cdb::WriteSame(ws) => {
                let mut f = check_protect(ws.protect)? << 5
                    | if ws.anchor { 0x10 } else { 0 }
                    | if ws.unmap { 0x08 } else { 0 };
                if ws.ndob {
                    if ws.form == Form::Ten {
                        return Err(CdbError::DoesNotFit { field: "NDOB", len });
                    }
                    f |= 0x01;
                }
                match ws.form {
                    Form::Ten => {
                        b[1] = f;
                        b[2..6].copy_from_slice(
                            &fits32(ws.lba, "LOGICAL BLOCK ADDRESS")?.to_be_bytes(),
                        );
                        b[6] = ws.group & 0x3F;
                        b[7..9].copy_from_slice(
                            &fits16(u64::from(ws.blocks), "NUMBER OF LOGICAL BLOCKS")?
                                .to_be_bytes(),
                        );
                    }
                    Form::Sixteen => {
                        b[1] = f;
                        b[2..10].copy_from_slice(&ws.lba.to_be_bytes());
                        b[10..14].copy_from_slice(&ws.blocks.to_be_bytes());
                        b[14] = ws.group & 0x3F;
                    }
                    Form::ThirtyTwo => {
                        put_var_header(&mut b, var::WRITE_SAME_32, ws.group);
                        b[10] = f;
                        b[12..20].copy_from_slice(&ws.lba.to_be_bytes());
                        put_tags(&mut b, ws.tags.unwrap_or_default());
                        b[28..32].copy_from_slice(&ws.blocks.to_be_bytes());
                    }
                    _ => {
                        return Err(CdbError::DoesNotFit {
                            field: "WRITE SAME form",
                            len,
                        })
                    }
                }
            }
            Cdb::CompareAndWrite(c) => {
                b[1] = check_protect(c.protect)? << 5
                    | if c.dpo { 0x10 } else { 0 }
                    | if c.fua { 0x08 } else { 0 };
                b[2..10].copy_from_slice(&c.lba.to_be_bytes());
                b[13] = c.blocks;
                b[14] = c.group & 0x3F;
            }
            Cdb::SynchronizeCache(c) | Cdb::PreFetch(c) => {
                b[1] = if c.immed { 0x02 } else { 0 };
                if c.form == Form::Ten {
                    b[2..6].copy_from_slice(&fits32(c.lba, "LOGICAL BLOCK ADDRESS")?.to_be_bytes());
                    b[6] = c.group & 0x3F;
                    b[7..9].copy_from_slice(
                        &fits16(u64::from(c.blocks), "NUMBER OF LOGICAL BLOCKS")?.to_be_bytes(),
                    );
                } else {
                    b[2..10].copy_from_slice(&c.lba.to_be_bytes());
                    b[10..14].copy_from_slice(&c.blocks.to_be_bytes());
                    b[14] = c.group & 0x3F;
                }
            }
            Cdb::Unmap {
                anchor,
                group,
                param_len,
            } => {
                b[1] = u8::from(anchor);
                b[6] = group & 0x3F;
                b[7..9].copy_from_slice(&param_len.to_be_bytes());
            }
            Cdb::ReportLuns {
                select_report,
                alloc_len,
            } => {
                b[2] = select_report;
                b[6..10].copy_from_slice(&alloc_len.to_be_bytes());
            }
            Cdb::StartStopUnit(s) => {
                b[1] = u8::from(s.immed);
                b[3] = s.power_condition_modifier & 0x0F;
                b[4] = s.power_condition << 4
                    | if s.no_flush { 0x04 } else { 0 }
                    | if s.loej { 0x02 } else { 0 }
                    | u8::from(s.start);
            }
            Cdb::PreventAllowMediumRemoval { prevent } => b[4] = prevent & 0x03,
            Cdb::ReportSupportedOpcodes(r) => {
                b[1] = maint_in::REPORT_SUPPORTED_OPERATION_CODES;
                b[2] = if r.rctd { 0x80 } else { 0 } | (r.options & 0x07);
                b[3] = r.opcode;
                b[4..6].copy_from_slice(&r.service_action.to_be_bytes());
                b[6..10].copy_from_slice(&r.alloc_len.to_be_bytes());
            }
            Cdb::PersistentReserveIn { action, alloc_len } => {
                b[1] = action & 0x1F;
                b[7..9].copy_from_slice(&alloc_len.to_be_bytes());
            }
            Cdb::PersistentReserveOut(p) => {
                b[1] = p.action & 0x1F;
                b[2] = p.scope << 4 | (p.pr_type & 0x0F);
                b[5..9].copy_from_slice(&p.param_len.to_be_bytes());
            }
            Cdb::Reserve(r) | Cdb::Release(r) => {
                if r.form == Form::Ten {
                    b[1] = if r.third_party { 0x10 } else { 0 } | if r.longid { 0x02 } else { 0 };
                    b[3] = r.third_party_id;
                    b[7..9].copy_from_slice(&r.param_len.to_be_bytes());
                }
            }
        }
        Ok(b)
    }
}

/// The opcode of a two-form command: `small` for the shorter form, `large` otherwise.
fn pick(form: Form, small: u8, large: u8) -> u8 {
    match (form, small >> 5) {
        (Form::Six, _) | (Form::Ten, 1 | 2) => small,
        _ => large,
    }
}

fn rw_opcode(kind: RwKind, form: Form) -> u8 {
    use opcode::*;
    match (kind, form) {
        (RwKind::Read, Form::Six) => READ_6,
        (RwKind::Write, Form::Six) => WRITE_6,
        (RwKind::Read, Form::Ten) => READ_10,
        (RwKind::Write, Form::Ten) => WRITE_10,
        (RwKind::Verify, Form::Ten) => VERIFY_10,
        (RwKind::WriteAndVerify, Form::Ten) => WRITE_AND_VERIFY_10,
        (RwKind::Read, Form::Twelve) => READ_12,
        (RwKind::Write, Form::Twelve) => WRITE_12,
        (RwKind::Verify, Form::Twelve) => VERIFY_12,
        (RwKind::WriteAndVerify, Form::Twelve) => WRITE_AND_VERIFY_12,
        (RwKind::Read, Form::Sixteen) => READ_16,
        (RwKind::Write, Form::Sixteen) => WRITE_16,
        (RwKind::Verify, Form::Sixteen) => VERIFY_16,
        (RwKind::WriteAndVerify, Form::Sixteen) => WRITE_AND_VERIFY_16,
        (_, Form::ThirtyTwo) => VARIABLE_LENGTH,
        // VERIFY(6) and WRITE AND VERIFY(6) do not exist; to_bytes rejects the form.
        (RwKind::Verify | RwKind::WriteAndVerify, Form::Six) => VERIFY_10,
    }
}

fn put_var_header(b: &mut [u8], service_action: u16, group: u8) {
    b[6] = group & 0x3F;
    b[7] = 0x18;
    b[8..10].copy_from_slice(&service_action.to_be_bytes());
}

fn put_tags(b: &mut [u8], t: ExpectedTags) {
    b[20..24].copy_from_slice(&t.ref_tag.to_be_bytes());
    b[24..26].copy_from_slice(&t.app_tag.to_be_bytes());
    b[26..28].copy_from_slice(&t.app_tag_mask.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn round(c: Cdb, bytes: &str) {
        let b = hex(bytes);
        assert_eq!(c.to_bytes().unwrap(), b, "{c:?}");
        assert_eq!(Cdb::parse(&b).unwrap(), c, "{bytes}");
    }

    #[test]
    fn read_write_forms_byte_exact() {
        round(
            Cdb::ReadWrite(ReadWrite::new(RwKind::Read, Form::Six, 0x12345, 256)),
            "08 01 23 45 00 00",
        );
        let mut w10 = ReadWrite::new(RwKind::Write, Form::Ten, 0x0102_0304, 8).with_protect(1);
        w10.fua = true;
        round(Cdb::ReadWrite(w10), "2A 28 01 02 03 04 00 00 08 00");
        let mut r12 = ReadWrite::new(RwKind::Read, Form::Twelve, 7, 0x10000).with_protect(3);
        r12.dpo = true;
        round(Cdb::ReadWrite(r12), "A8 70 00 00 00 07 00 01 00 00 00 00");
        round(
            Cdb::ReadWrite(
                ReadWrite::new(RwKind::Read, Form::Sixteen, 0x1_0000_0000, 1).with_protect(5),
            ),
            "88 A0 00 00 00 01 00 00 00 00 00 00 00 01 00 00",
        );
        let mut v16 = ReadWrite::new(RwKind::Verify, Form::Sixteen, 0x20, 4).with_protect(2);
        v16.bytchk = 1;
        round(
            Cdb::ReadWrite(v16),
            "8F 42 00 00 00 00 00 00 00 20 00 00 00 04 00 00",
        );
        let mut wv10 = ReadWrite::new(RwKind::WriteAndVerify, Form::Ten, 1, 1);
        wv10.bytchk = 3;
        round(Cdb::ReadWrite(wv10), "2E 06 00 00 00 01 00 00 01 00");
    }

    #[test]
    fn thirty_two_byte_forms_byte_exact() {
        let mut r32 = ReadWrite::new(RwKind::Read, Form::ThirtyTwo, 0x1000, 8).with_protect(1);
        r32.tags = Some(ExpectedTags {
            ref_tag: 0x1000,
            app_tag: 0xBEEF,
            app_tag_mask: 0xFFFF,
        });
        round(
            Cdb::ReadWrite(r32),
            "7F 00 00 00 00 00 00 18 00 09 20 00 00 00 00 00 00 00 10 00 \
             00 00 10 00 BE EF FF FF 00 00 00 08",
        );
        let w32 = ReadWrite::new(RwKind::Write, Form::ThirtyTwo, 0, 1).with_protect(1);
        let b = Cdb::ReadWrite(w32).to_bytes().unwrap();
        assert_eq!(&b[8..11], &[0x00, 0x0B, 0x20]);
        let ws = WriteSame {
            form: Form::ThirtyTwo,
            lba: 2,
            blocks: 3,
            protect: 1,
            anchor: false,
            unmap: true,
            ndob: true,
            group: 0,
            tags: Some(ExpectedTags {
                ref_tag: 2,
                app_tag: 0,
                app_tag_mask: 0,
            }),
        };
        round(
            Cdb::WriteSame(ws),
            "7F 00 00 00 00 00 00 18 00 0D 29 00 00 00 00 00 00 00 00 02 \
             00 00 00 02 00 00 00 00 00 00 00 03",
        );
        let mut v32 = ReadWrite::new(RwKind::Verify, Form::ThirtyTwo, 0, 1);
        v32.bytchk = 1;
        assert_eq!(
            &Cdb::ReadWrite(v32).to_bytes().unwrap()[8..11],
            &[0x00, 0x0A, 0x02]
        );
        let wv32 = ReadWrite::new(RwKind::WriteAndVerify, Form::ThirtyTwo, 0, 1);
        assert_eq!(
            &Cdb::ReadWrite(wv32).to_bytes().unwrap()[8..10],
            &[0x00, 0x0C]
        );
    }

    #[test]
    fn write_same_and_compare_and_write() {
        let ws10 = WriteSame {
            form: Form::Ten,
            lba: 9,
            blocks: 2,
            protect: 0,
            anchor: true,
            unmap: true,
            ndob: false,
            group: 0,
            tags: None,
        };
        round(Cdb::WriteSame(ws10), "41 18 00 00 00 09 00 00 02 00");
        let ws16 = WriteSame {
            form: Form::Sixteen,
            ndob: true,
            anchor: false,
            ..ws10
        };
        round(
            Cdb::WriteSame(ws16),
            "93 09 00 00 00 00 00 00 00 09 00 00 00 02 00 00",
        );
        let caw = CompareAndWrite {
            lba: 0x55,
            blocks: 1,
            protect: 1,
            dpo: false,
            fua: true,
            group: 0,
        };
        round(
            Cdb::CompareAndWrite(caw),
            "89 28 00 00 00 00 00 00 00 55 00 00 00 01 00 00",
        );
    }

    #[test]
    fn common_cdbs_byte_exact() {
        round(Cdb::TestUnitReady, "00 00 00 00 00 00");
        round(
            Cdb::RequestSense {
                desc: true,
                alloc_len: 252,
            },
            "03 01 00 00 FC 00",
        );
        round(
            Cdb::Inquiry {
                evpd: true,
                page: 0x86,
                alloc_len: 0x200,
            },
            "12 01 86 02 00 00",
        );
        round(
            Cdb::ModeSense(ModeSense {
                form: Form::Six,
                dbd: true,
                llbaa: false,
                pc: 1,
                page: 0x3F,
                subpage: 0,
                alloc_len: 0xFF,
            }),
            "1A 08 7F 00 FF 00",
        );
        round(
            Cdb::ModeSense(ModeSense {
                form: Form::Ten,
                dbd: false,
                llbaa: true,
                pc: 0,
                page: 0x08,
                subpage: 0,
                alloc_len: 0x1000,
            }),
            "5A 10 08 00 00 00 00 10 00 00",
        );
        round(
            Cdb::ModeSelect(ModeSelect {
                form: Form::Six,
                pf: true,
                sp: false,
                param_len: 24,
            }),
            "15 10 00 00 18 00",
        );
        round(
            Cdb::ModeSelect(ModeSelect {
                form: Form::Ten,
                pf: true,
                sp: true,
                param_len: 28,
            }),
            "55 11 00 00 00 00 00 00 1C 00",
        );
        round(
            Cdb::ReadCapacity10 { lba: 0, pmi: false },
            "25 00 00 00 00 00 00 00 00 00",
        );
        round(
            Cdb::ReadCapacity16 {
                lba: 0,
                alloc_len: 32,
                pmi: false,
            },
            "9E 10 00 00 00 00 00 00 00 00 00 00 00 20 00 00",
        );
        round(
            Cdb::GetLbaStatus {
                lba: 0x10,
                alloc_len: 24,
            },
            "9E 12 00 00 00 00 00 00 00 10 00 00 00 18 00 00",
        );
        round(
            Cdb::SynchronizeCache(CacheRange {
                form: Form::Ten,
                immed: true,
                lba: 0,
                blocks: 0,
                group: 0,
            }),
            "35 02 00 00 00 00 00 00 00 00",
        );
        round(
            Cdb::SynchronizeCache(CacheRange {
                form: Form::Sixteen,
                immed: false,
                lba: 1,
                blocks: 2,
                group: 0,
            }),
            "91 00 00 00 00 00 00 00 00 01 00 00 00 02 00 00",
        );
        round(
            Cdb::PreFetch(CacheRange {
                form: Form::Ten,
                immed: false,
                lba: 3,
                blocks: 4,
                group: 0,
            }),
            "34 00 00 00 00 03 00 00 04 00",
        );
        round(
            Cdb::PreFetch(CacheRange {
                form: Form::Sixteen,
                immed: true,
                lba: 3,
                blocks: 4,
                group: 0,
            }),
            "90 02 00 00 00 00 00 00 00 03 00 00 00 04 00 00",
        );
        round(
            Cdb::Unmap {
                anchor: false,
                group: 0,
                param_len: 24,
            },
            "42 00 00 00 00 00 00 00 18 00",
        );
        round(
            Cdb::ReportLuns {
                select_report: 0,
                alloc_len: 16,
            },
            "A0 00 00 00 00 00 00 00 00 10 00 00",
        );
        round(
            Cdb::StartStopUnit(StartStopUnit {
                immed: true,
                power_condition_modifier: 0,
                power_condition: 0,
                no_flush: false,
                loej: true,
                start: false,
            }),
            "1B 01 00 00 02 00",
        );
        round(
            Cdb::PreventAllowMediumRemoval { prevent: 1 },
            "1E 00 00 00 01 00",
        );
        round(
            Cdb::ReportSupportedOpcodes(ReportSupportedOpcodes {
                rctd: false,
                options: 2,
                opcode: 0x9E,
                service_action: 0x10,
                alloc_len: 0x100,
            }),
            "A3 0C 02 9E 00 10 00 00 01 00 00 00",
        );
        round(
            Cdb::PersistentReserveIn {
                action: 1,
                alloc_len: 0x2000,
            },
            "5E 01 00 00 00 00 00 20 00 00",
        );
        round(
            Cdb::PersistentReserveOut(PersistentReserveOut {
                action: 1,
                scope: 0,
                pr_type: 3,
                param_len: 24,
            }),
            "5F 01 03 00 00 00 00 00 18 00",
        );
        let r6 = Reservation {
            form: Form::Six,
            third_party: false,
            longid: false,
            third_party_id: 0,
            param_len: 0,
        };
        round(Cdb::Reserve(r6), "16 00 00 00 00 00");
        round(Cdb::Release(r6), "17 00 00 00 00 00");
        let r10 = Reservation {
            form: Form::Ten,
            ..r6
        };
        round(Cdb::Reserve(r10), "56 00 00 00 00 00 00 00 00 00");
        round(Cdb::Release(r10), "57 00 00 00 00 00 00 00 00 00");
    }

    #[test]
    fn errors_name_byte_and_bit() {
        assert_eq!(
            Cdb::parse(&hex("D0 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00")),
            Err(CdbError::UnsupportedOpcode { opcode: 0xD0 })
        );
        let e = Cdb::parse(&hex("9E 1F 00 00 00 00 00 00 00 00 00 00 00 00 00 00")).unwrap_err();
        assert_eq!(e.field_pointer(), Some(FieldPointer::cdb(1, Some(4))));
        assert_eq!(e.to_sense().to_fixed()[12], 0x24);
        let e = Cdb::parse(&hex("12 02 00 00 FF 00")).unwrap_err();
        assert_eq!(e.field_pointer(), Some(FieldPointer::cdb(1, Some(1))));
        // NACA in the control byte.
        let e = Cdb::parse(&hex("00 00 00 00 00 04")).unwrap_err();
        assert_eq!(e.field_pointer(), Some(FieldPointer::cdb(5, Some(2))));
        // BYTCHK 10b is reserved.
        let e = Cdb::parse(&hex("2F 04 00 00 00 00 00 00 01 00")).unwrap_err();
        assert_eq!(e.field_pointer(), Some(FieldPointer::cdb(1, Some(2))));
        // 32-byte CDB with a wrong additional length, and an unknown service action.
        let mut v = vec![0u8; 32];
        v[0] = 0x7F;
        v[7] = 0x10;
        assert_eq!(
            Cdb::parse(&v).unwrap_err().field_pointer(),
            Some(FieldPointer::cdb(7, None))
        );
        v[7] = 0x18;
        v[9] = 0x42;
        assert_eq!(
            Cdb::parse(&v).unwrap_err().field_pointer(),
            Some(FieldPointer::cdb(8, None))
        );
        assert!(matches!(
            Cdb::parse(&[0x28, 0, 0]),
            Err(CdbError::TooShort { need: 10, .. })
        ));
        assert!(matches!(Cdb::parse(&[]), Err(CdbError::TooShort { .. })));
        let s = CdbError::UnsupportedOpcode { opcode: 0xD0 }.to_sense();
        assert_eq!(
            s.to_string(),
            "ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE (20h/00h), FIELD POINTER=CDB byte 0"
        );
    }

    #[test]
    fn build_rejects_what_does_not_fit() {
        let too_far = ReadWrite::new(RwKind::Read, Form::Ten, 1 << 32, 1);
        assert!(matches!(
            Cdb::ReadWrite(too_far).to_bytes(),
            Err(CdbError::DoesNotFit { .. })
        ));
        let six = ReadWrite::new(RwKind::Write, Form::Six, 0, 1).with_protect(1);
        assert!(Cdb::ReadWrite(six).to_bytes().is_err());
        let big = ReadWrite::new(RwKind::Read, Form::Six, 0, 257);
        assert!(Cdb::ReadWrite(big).to_bytes().is_err());
        let v6 = ReadWrite::new(RwKind::Verify, Form::Six, 0, 1);
        assert!(Cdb::ReadWrite(v6).to_bytes().is_err());
    }

    #[test]
    fn names() {
        assert_eq!(
            Cdb::parse(&hex("9E 10 00 00 00 00 00 00 00 00 00 00 00 20 00 00"))
                .unwrap()
                .name(),
            "READ CAPACITY(16)"
        );
        let w32 = Cdb::ReadWrite(ReadWrite::new(RwKind::Write, Form::ThirtyTwo, 0, 1));
        assert_eq!(w32.name(), "WRITE(32)");
    }

    fn arb_rw() -> impl Strategy<Value = ReadWrite> {
        let kinds = prop_oneof![
            Just(RwKind::Read),
            Just(RwKind::Write),
            Just(RwKind::Verify),
            Just(RwKind::WriteAndVerify)
        ];
        let forms = prop_oneof![
            Just(Form::Six),
            Just(Form::Ten),
            Just(Form::Twelve),
            Just(Form::Sixteen),
            Just(Form::ThirtyTwo)
        ];
        (
            kinds,
            forms,
            any::<u64>(),
            any::<u32>(),
            0u8..8,
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0u8), Just(1), Just(3)],
            0u8..64,
            any::<(u32, u16, u16)>(),
        )
            .prop_filter_map(
                "representable",
                |(kind, form, lba, blocks, protect, dpo, fua, bytchk, group, (r, a, m))| {
                    let mut rw = ReadWrite::new(kind, form, lba, blocks);
                    let rwk = matches!(kind, RwKind::Read | RwKind::Write);
                    match form {
                        Form::Six => {
                            if !rwk {
                                return None;
                            }
                            rw.lba = lba & 0x1F_FFFF;
                            rw.blocks = blocks % 256 + 1;
                            return Some(rw);
                        }
                        Form::Ten => {
                            rw.lba = lba & 0xFFFF_FFFF;
                            rw.blocks = blocks & 0xFFFF;
                        }
                        Form::Twelve => rw.lba = lba & 0xFFFF_FFFF,
                        Form::Sixteen => {}
                        Form::ThirtyTwo => {
                            rw.tags = Some(ExpectedTags {
                                ref_tag: r,
                                app_tag: a,
                                app_tag_mask: m,
                            })
                        }
                    }
                    rw.protect = protect;
                    rw.dpo = dpo;
                    rw.group = group;
                    if rwk {
                        rw.fua = fua;
                    } else {
                        rw.bytchk = bytchk;
                    }
                    Some(rw)
                },
            )
    }

    proptest! {
        #[test]
        fn read_write_round_trip(rw in arb_rw()) {
            let c = Cdb::ReadWrite(rw);
            let b = c.to_bytes().unwrap();
            prop_assert_eq!(Cdb::parse(&b).unwrap(), c);
        }

        #[test]
        fn write_same_round_trip(form in prop_oneof![Just(Form::Ten), Just(Form::Sixteen), Just(Form::ThirtyTwo)],
                                 lba in any::<u64>(), blocks in any::<u32>(), protect in 0u8..8,
                                 anchor in any::<bool>(), unmap in any::<bool>(), ndob in any::<bool>(),
                                 tags in any::<(u32, u16, u16)>()) {
            let ws = WriteSame {
                form,
                lba: if form == Form::Ten { lba & 0xFFFF_FFFF } else { lba },
                blocks: if form == Form::Ten { blocks & 0xFFFF } else { blocks },
                protect, anchor, unmap,
                ndob: ndob && form != Form::Ten,
                group: 0,
                tags: (form == Form::ThirtyTwo).then_some(ExpectedTags { ref_tag: tags.0, app_tag: tags.1, app_tag_mask: tags.2 }),
            };
            let c = Cdb::WriteSame(ws);
            prop_assert_eq!(Cdb::parse(&c.to_bytes().unwrap()).unwrap(), c);
        }

        #[test]
        fn parse_never_panics_and_reencodes(b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(c) = Cdb::parse(&b) {
                // Whatever parses must build, and build back to the same value.
                let again = c.to_bytes().unwrap();
                prop_assert_eq!(Cdb::parse(&again).unwrap(), c);
            }
        }
    }
}
