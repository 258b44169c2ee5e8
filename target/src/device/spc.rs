//! Primary commands (SPC-4): INQUIRY with a table of VPD page builders, MODE SENSE
//! and MODE SELECT (caching, control, read-write error recovery and informational
//! exceptions pages), REPORT SUPPORTED OPERATION CODES, TEST UNIT READY, and the
//! REPORT LUNS payload the target builds across its LUNs.

use scsi::asc;
use scsi::opcode::{self, maint_in, pr_in, pr_out, sai16, var};
use scsi::{Cdb, Form, ModeSense};
use t10pi::DifType;

use super::lun::{CommandPlan, Direction, Lun};
use super::reason::SenseReason;
use super::Nexus;

/// Largest transfer per command, in bytes (Block Limits MAXIMUM TRANSFER LENGTH).
pub(super) const MAX_TRANSFER_BYTES: u64 = 32 << 20;
/// Largest COMPARE AND WRITE, in blocks.
pub(super) const MAX_CAW_BLOCKS: u8 = 64;
/// Largest UNMAP range and WRITE SAME, in blocks.
pub(super) const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
/// Most UNMAP block descriptors per command.
pub(super) const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest WRITE SAME, in blocks.
pub(super) const MAX_WRITE_SAME_BLOCKS: u32 = 1 << 20;

/// Encodes a LUN number as an 8-byte SAM LUN: peripheral addressing below 256,
/// flat space addressing below 16384, extended flat space above.
pub fn encode_lun(id: u64) -> [u8; 8] {
    let mut b = [0u8; 8];
    if id < 256 {
        b[1] = id as u8;
    } else if id < 0x4000 {
        b[0] = 0x40 | (id >> 8) as u8;
        b[1] = id as u8;
    } else {
        // Extended flat space LUN (length 01b: 3-byte extended LUN).
        b[0] = 0xD2;
        b[1..4].copy_from_slice(&(id as u32).to_be_bytes()[1..]);
    }
    b
}

/// Decodes the first level of an 8-byte SAM LUN (peripheral, flat space and
/// extended flat space addressing); `None` for other methods.
pub fn decode_lun(b: [u8; 8]) -> Option<u64> {
    match b[0] >> 6 {
        0 => Some(u64::from(b[1]) | u64::from(b[0] & 0x3F) << 8),
        1 => Some(u64::from(b[0] & 0x3F) << 8 | u64::from(b[1])),
        3 if b[0] == 0xD2 => Some(u64::from(u32::from_be_bytes([0, b[1], b[2], b[3]]))),
        _ => None,
    }
}

/// The REPORT LUNS parameter data for `luns`, cut to `alloc_len`. SELECT REPORT
/// 00h, 01h and 02h are accepted (this target has no well-known LUNs); an
/// allocation length below 16 is INVALID FIELD IN CDB (SPC-4).
pub fn report_luns_payload(
    luns: &[u64],
    select_report: u8,
    alloc_len: u32,
) -> Result<Vec<u8>, SenseReason> {
    if select_report > 2 {
        return Err(SenseReason::cdb(2, None));
    }
    if alloc_len < 16 {
        return Err(SenseReason::cdb(6, None));
    }
    let mut d = Vec::with_capacity(8 + 8 * luns.len());
    d.extend_from_slice(&((8 * luns.len()) as u32).to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    for &l in luns {
        d.extend_from_slice(&encode_lun(l));
    }
    d.truncate(alloc_len as usize);
    Ok(d)
}

/// Standard INQUIRY data for a LUN the target does not have (peripheral qualifier
/// 011b, device type 1Fh), cut to `alloc_len`.
pub fn inquiry_no_lun(alloc_len: u16) -> Vec<u8> {
    let mut d = vec![0u8; 36];
    d[0] = 0x7F;
    d[2] = 0x06;
    d[3] = 0x12;
    d[4] = 31;
    d.truncate(alloc_len as usize);
    d
}

fn pad(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s
        .bytes()
        .filter(|b| (0x20..0x7F).contains(b))
        .take(n)
        .collect();
    v.resize(n, b' ');
    v
}

/// FNV-1a, for a stable NAA identifier from the serial number.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// One command the device server supports, with its CDB usage data.
struct OpInfo {
    op: u8,
    sa: Option<u16>,
    usage: &'static [u8],
}

const C: u8 = 0x04; // control byte: NACA is examined

#[rustfmt::skip]
static OPS: &[OpInfo] = &[
    OpInfo { op: opcode::TEST_UNIT_READY, sa: None, usage: &[0x00, 0, 0, 0, 0, C] },
    OpInfo { op: opcode::REQUEST_SENSE, sa: None, usage: &[0x03, 0x01, 0, 0, 0xFF, C] },
    OpInfo { op: opcode::READ_6, sa: None, usage: &[0x08, 0x1F, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::WRITE_6, sa: None, usage: &[0x0A, 0x1F, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::INQUIRY, sa: None, usage: &[0x12, 0x01, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::MODE_SELECT_6, sa: None, usage: &[0x15, 0x11, 0, 0, 0xFF, C] },
    OpInfo { op: opcode::RESERVE_6, sa: None, usage: &[0x16, 0, 0, 0, 0, C] },
    OpInfo { op: opcode::RELEASE_6, sa: None, usage: &[0x17, 0, 0, 0, 0, C] },
    OpInfo { op: opcode::MODE_SENSE_6, sa: None, usage: &[0x1A, 0x08, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::START_STOP_UNIT, sa: None, usage: &[0x1B, 0x01, 0, 0x0F, 0xF7, C] },
    OpInfo { op: opcode::PREVENT_ALLOW_MEDIUM_REMOVAL, sa: None, usage: &[0x1E, 0, 0, 0, 0x03, C] },
    OpInfo { op: opcode::READ_CAPACITY_10, sa: None, usage: &[0x25, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0x01, C] },
    OpInfo { op: opcode::READ_10, sa: None, usage: &[0x28, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::WRITE_10, sa: None, usage: &[0x2A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::WRITE_AND_VERIFY_10, sa: None, usage: &[0x2E, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::VERIFY_10, sa: None, usage: &[0x2F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PRE_FETCH_10, sa: None, usage: &[0x34, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::SYNCHRONIZE_CACHE_10, sa: None, usage: &[0x35, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::WRITE_SAME_10, sa: None, usage: &[0x41, 0xE8, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::UNMAP, sa: None, usage: &[0x42, 0x00, 0, 0, 0, 0, 0x3F, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::MODE_SELECT_10, sa: None, usage: &[0x55, 0x11, 0, 0, 0, 0, 0, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::RESERVE_10, sa: None, usage: &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, C] },
    OpInfo { op: opcode::RELEASE_10, sa: None, usage: &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, C] },
    OpInfo { op: opcode::MODE_SENSE_10, sa: None, usage: &[0x5A, 0x18, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_IN, sa: Some(pr_in::READ_KEYS as u16), usage: &[0x5E, 0x00, 0, 0, 0, 0, 0, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_IN, sa: Some(pr_in::READ_RESERVATION as u16), usage: &[0x5E, 0x01, 0, 0, 0, 0, 0, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_IN, sa: Some(pr_in::REPORT_CAPABILITIES as u16), usage: &[0x5E, 0x02, 0, 0, 0, 0, 0, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_IN, sa: Some(pr_in::READ_FULL_STATUS as u16), usage: &[0x5E, 0x03, 0, 0, 0, 0, 0, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_OUT, sa: Some(pr_out::REGISTER as u16), usage: &[0x5F, 0x00, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_OUT, sa: Some(pr_out::RESERVE as u16), usage: &[0x5F, 0x01, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_OUT, sa: Some(pr_out::RELEASE as u16), usage: &[0x5F, 0x02, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_OUT, sa: Some(pr_out::CLEAR as u16), usage: &[0x5F, 0x03, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_OUT, sa: Some(pr_out::PREEMPT as u16), usage: &[0x5F, 0x04, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_OUT, sa: Some(pr_out::PREEMPT_AND_ABORT as u16), usage: &[0x5F, 0x05, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::PERSISTENT_RESERVE_OUT, sa: Some(pr_out::REGISTER_AND_IGNORE_EXISTING_KEY as u16), usage: &[0x5F, 0x06, 0xFF, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, C] },
    OpInfo { op: opcode::VARIABLE_LENGTH, sa: Some(var::READ_32), usage: &[0x7F, C, 0, 0, 0, 0, 0x3F, 0x18, 0x00, 0x09, 0xF8, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] },
    OpInfo { op: opcode::VARIABLE_LENGTH, sa: Some(var::VERIFY_32), usage: &[0x7F, C, 0, 0, 0, 0, 0x3F, 0x18, 0x00, 0x0A, 0xF6, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] },
    OpInfo { op: opcode::VARIABLE_LENGTH, sa: Some(var::WRITE_32), usage: &[0x7F, C, 0, 0, 0, 0, 0x3F, 0x18, 0x00, 0x0B, 0xF8, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] },
    OpInfo { op: opcode::VARIABLE_LENGTH, sa: Some(var::WRITE_AND_VERIFY_32), usage: &[0x7F, C, 0, 0, 0, 0, 0x3F, 0x18, 0x00, 0x0C, 0xF6, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] },
    OpInfo { op: opcode::VARIABLE_LENGTH, sa: Some(var::WRITE_SAME_32), usage: &[0x7F, C, 0, 0, 0, 0, 0x3F, 0x18, 0x00, 0x0D, 0xE9, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF] },
    OpInfo { op: opcode::READ_16, sa: None, usage: &[0x88, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::COMPARE_AND_WRITE, sa: None, usage: &[0x89, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::WRITE_16, sa: None, usage: &[0x8A, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::WRITE_AND_VERIFY_16, sa: None, usage: &[0x8E, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::VERIFY_16, sa: None, usage: &[0x8F, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::PRE_FETCH_16, sa: None, usage: &[0x90, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::SYNCHRONIZE_CACHE_16, sa: None, usage: &[0x91, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::WRITE_SAME_16, sa: None, usage: &[0x93, 0xE9, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::SERVICE_ACTION_IN_16, sa: Some(sai16::READ_CAPACITY_16 as u16), usage: &[0x9E, 0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01, C] },
    OpInfo { op: opcode::SERVICE_ACTION_IN_16, sa: Some(sai16::GET_LBA_STATUS as u16), usage: &[0x9E, 0x12, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C] },
    OpInfo { op: opcode::REPORT_LUNS, sa: None, usage: &[0xA0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, C] },
    OpInfo { op: opcode::MAINTENANCE_IN, sa: Some(maint_in::REPORT_SUPPORTED_OPERATION_CODES as u16), usage: &[0xA3, 0x0C, 0x87, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0, C] },
    OpInfo { op: opcode::READ_12, sa: None, usage: &[0xA8, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::WRITE_12, sa: None, usage: &[0xAA, 0xF8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::WRITE_AND_VERIFY_12, sa: None, usage: &[0xAE, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
    OpInfo { op: opcode::VERIFY_12, sa: None, usage: &[0xAF, 0xF6, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x3F, C] },
];

/// Opcodes that carry a service action (REPORT SUPPORTED OPERATION CODES).
fn has_service_actions(op: u8) -> bool {
    matches!(
        op,
        opcode::PERSISTENT_RESERVE_IN
            | opcode::PERSISTENT_RESERVE_OUT
            | opcode::VARIABLE_LENGTH
            | opcode::SERVICE_ACTION_IN_16
            | opcode::MAINTENANCE_IN
    )
}

/// Mode page codes.
const PAGE_RW_ERROR_RECOVERY: u8 = 0x01;
const PAGE_CACHING: u8 = 0x08;
const PAGE_CONTROL: u8 = 0x0A;
const PAGE_INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
const PAGE_ALL: u8 = 0x3F;
const PAGES: [u8; 4] = [
    PAGE_RW_ERROR_RECOVERY,
    PAGE_CACHING,
    PAGE_CONTROL,
    PAGE_INFORMATIONAL_EXCEPTIONS,
];

impl Lun {
    fn op_supported(&self, o: &OpInfo) -> bool {
        match o.op {
            opcode::VARIABLE_LENGTH => self.pi == Some(DifType::Type2),
            opcode::UNMAP => self.desc.thin_provisioning,
            _ => true,
        }
    }

    /// Direction and maximum transfer length of the SPC commands handled here.
    pub(super) fn spc_prepare(&self, cdb: &Cdb) -> Result<(Direction, usize), SenseReason> {
        Ok(match *cdb {
            Cdb::TestUnitReady => (Direction::None, 0),
            Cdb::Inquiry {
                evpd,
                page,
                alloc_len,
            } => {
                if !evpd && page != 0 {
                    return Err(SenseReason::cdb(2, None));
                }
                (Direction::DataIn, alloc_len as usize)
            }
            Cdb::RequestSense { alloc_len, .. } => (Direction::DataIn, alloc_len as usize),
            Cdb::ModeSense(m) => {
                if m.pc == 3 {
                    return Err(SenseReason::SavingParametersNotSupported);
                }
                if m.page != PAGE_ALL && !PAGES.contains(&m.page) {
                    return Err(SenseReason::cdb(2, Some(5)));
                }
                if m.subpage != 0 && !(m.subpage == 0xFF && m.page == PAGE_ALL) {
                    return Err(SenseReason::cdb(3, None));
                }
                (Direction::DataIn, m.alloc_len as usize)
            }
            Cdb::ModeSelect(m) => {
                if !m.pf {
                    return Err(SenseReason::cdb(1, Some(4)));
                }
                if m.sp {
                    return Err(SenseReason::cdb(1, Some(0)));
                }
                (Direction::DataOut, m.param_len as usize)
            }
            Cdb::ReportLuns {
                select_report,
                alloc_len,
            } => {
                report_luns_payload(&[], select_report, alloc_len)?;
                (Direction::DataIn, alloc_len as usize)
            }
            Cdb::ReportSupportedOpcodes(r) => (Direction::DataIn, r.alloc_len as usize),
            Cdb::PersistentReserveIn { alloc_len, .. } => (Direction::DataIn, alloc_len as usize),
            Cdb::Reserve(r) | Cdb::Release(r) => {
                if r.third_party || r.longid {
                    return Err(SenseReason::cdb(1, Some(4)));
                }
                (Direction::None, 0)
            }
            _ => return Err(SenseReason::InvalidOpcode),
        })
    }

    /// Executes the SPC commands handled here; returns data-in cut to the allocation length.
    pub(super) fn spc_execute(
        &self,
        nexus: &Nexus,
        plan: &CommandPlan,
        out: &[u8],
    ) -> Result<Vec<u8>, SenseReason> {
        let mut d = match plan.cdb {
            Cdb::TestUnitReady => Vec::new(),
            Cdb::Inquiry { evpd: false, .. } => self.inquiry_standard(),
            Cdb::Inquiry {
                evpd: true, page, ..
            } => self.vpd(nexus, page)?,
            Cdb::ModeSense(m) => self.mode_sense(&m),
            Cdb::ModeSelect(m) => {
                let n = (m.param_len as usize).min(out.len());
                if n < m.param_len as usize {
                    return Err(SenseReason::ParameterListLength);
                }
                self.mode_select(nexus, m.form, &out[..n])?;
                Vec::new()
            }
            Cdb::ReportLuns {
                select_report,
                alloc_len,
            } => self.report_luns_self(select_report, alloc_len)?,
            Cdb::ReportSupportedOpcodes(r) => {
                self.rsoc(r.rctd, r.options, r.opcode, r.service_action)?
            }
            _ => return Err(SenseReason::InvalidOpcode),
        };
        d.truncate(plan.transfer_len);
        Ok(d)
    }

    /// Standard INQUIRY data (74 bytes, SPC-4).
    fn inquiry_standard(&self) -> Vec<u8> {
        let mut d = vec![0u8; 74];
        d[0] = 0x00; // connected, direct access block device
        d[2] = 0x06; // SPC-4
        d[3] = 0x12; // HISUP, response data format 2
        d[4] = (d.len() - 5) as u8;
        d[5] = u8::from(self.pi.is_some()); // PROTECT
        d[7] = 0x02; // CMDQUE
        d[8..16].copy_from_slice(&pad(&self.desc.vendor, 8));
        d[16..32].copy_from_slice(&pad(&self.desc.product, 16));
        d[32..36].copy_from_slice(&pad(&self.desc.revision, 4));
        // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
        for (i, v) in [0x00A0u16, 0x0960, 0x0460, 0x04C0].iter().enumerate() {
            d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
        d
    }

    fn naa(&self) -> [u8; 8] {
        // NAA 3h (locally assigned): 60 bits from the vendor, serial and LUN id.
        let h = fnv1a(&[
            self.desc.vendor.as_bytes(),
            self.desc.serial.as_bytes(),
            &self.desc.id.to_be_bytes(),
        ]);
        ((3u64 << 60) | (h >> 4)).to_be_bytes()
    }

    fn vpd(&self, nexus: &Nexus, page: u8) -> Result<Vec<u8>, SenseReason> {
        let thin = self.desc.thin_provisioning;
        let body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83, 0x86, 0xB0, 0xB1, 0xB2],
            0x80 => self
                .desc
                .serial
                .bytes()
                .filter(|b| (0x20..0x7F).contains(b))
                .collect(),
            0x83 => {
                let mut b = Vec::new();
                // Logical unit: NAA, binary.
                b.extend_from_slice(&[0x01, 0x03, 0x00, 0x08]);
                b.extend_from_slice(&self.naa());
                // Logical unit: T10 vendor ID, ASCII: vendor (8) + serial.
                let mut t10 = pad(&self.desc.vendor, 8);
                t10.extend(
                    self.desc
                        .serial
                        .bytes()
                        .filter(|c| (0x20..0x7F).contains(c)),
                );
                b.extend_from_slice(&[0x02, 0x01, 0x00, t10.len().min(255) as u8]);
                b.extend_from_slice(&t10[..t10.len().min(255)]);
                // Target port: relative target port identifier (iSCSI, PIV).
                b.extend_from_slice(&[0x51, 0x94, 0x00, 0x04, 0x00, 0x00]);
                b.extend_from_slice(&nexus.relative_port.to_be_bytes());
                if !nexus.target_port.is_empty() {
                    // Target port: SCSI name string, UTF-8, NUL-terminated, padded to 4.
                    let mut name = nexus.target_port.as_bytes().to_vec();
                    name.truncate(250);
                    name.push(0);
                    while !name.len().is_multiple_of(4) {
                        name.push(0);
                    }
                    b.extend_from_slice(&[0x53, 0x98, 0x00, name.len() as u8]);
                    b.extend_from_slice(&name);
                }
                b
            }
            0x86 => {
                let mut b = vec![0u8; 60];
                b[0] = match self.pi {
                    Some(DifType::Type1) => 0x05,        // SPT 000b, GRD_CHK, REF_CHK
                    Some(DifType::Type2) => 0x10 | 0x07, // SPT 010b, GRD_CHK, APP_CHK, REF_CHK
                    Some(DifType::Type3) => 0x20 | 0x04, // SPT 100b, GRD_CHK
                    None => 0,
                };
                b[1] = 0x07; // HEADSUP, ORDSUP, SIMPSUP
                b[2] = u8::from(self.mode.lock().wce); // V_SUP
                b
            }
            0xB0 => {
                let bs = u64::from(self.desc.block_size);
                let mut b = vec![0u8; 60];
                b[0] = 0x01; // WSNZ
                b[1] = MAX_CAW_BLOCKS;
                b[2..4].copy_from_slice(&1u16.to_be_bytes());
                let max_xfer = (MAX_TRANSFER_BYTES / bs) as u32;
                b[4..8].copy_from_slice(&max_xfer.to_be_bytes());
                b[8..12].copy_from_slice(&max_xfer.to_be_bytes());
                b[12..16].copy_from_slice(&max_xfer.to_be_bytes());
                if thin {
                    b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                    b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                    b[24..28].copy_from_slice(&1u32.to_be_bytes());
                }
                b[32..40].copy_from_slice(&u64::from(MAX_WRITE_SAME_BLOCKS).to_be_bytes());
                b
            }
            0xB1 => {
                let mut b = vec![0u8; 60];
                b[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
                b
            }
            0xB2 => {
                // THRESHOLD EXPONENT 0; LBPU, LBPWS, LBPWS10, LBPRZ when thin; type thin (2).
                if thin {
                    vec![0x00, 0x80 | 0x40 | 0x20 | 0x04, 0x02, 0x00]
                } else {
                    vec![0x00, 0x00, 0x00, 0x00]
                }
            }
            _ => return Err(SenseReason::cdb(2, None)),
        };
        let mut d = vec![0x00, page];
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&body);
        Ok(d)
    }

    /// One mode page with page control `pc` (0 current, 1 changeable, 2 default).
    fn mode_page(&self, page: u8, pc: u8) -> Vec<u8> {
        let st = *self.mode.lock();
        let (wce, d_sense) = match pc {
            1 => (true, true),
            2 => (self.desc.write_cache, false),
            _ => (st.wce, st.d_sense),
        };
        match page {
            PAGE_RW_ERROR_RECOVERY => {
                let mut p = vec![0u8; 12];
                p[0] = PAGE_RW_ERROR_RECOVERY;
                p[1] = 0x0A;
                p
            }
            PAGE_CACHING => {
                let mut p = vec![0u8; 20];
                p[0] = PAGE_CACHING;
                p[1] = 0x12;
                if wce {
                    p[2] |= 0x04;
                }
                p
            }
            PAGE_CONTROL => {
                let mut p = vec![0u8; 12];
                p[0] = PAGE_CONTROL;
                p[1] = 0x0A;
                if d_sense {
                    p[2] |= 0x04;
                }
                if pc != 1 {
                    p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
                    p[5] = if self.pi.is_some() { 0x80 } else { 0 }; // ATO
                    p[8..10].copy_from_slice(&0xFFFFu16.to_be_bytes()); // BUSY TIMEOUT PERIOD: unlimited
                }
                p
            }
            _ => {
                let mut p = vec![0u8; 12];
                p[0] = PAGE_INFORMATIONAL_EXCEPTIONS;
                p[1] = 0x0A;
                p
            }
        }
    }

    fn mode_sense(&self, m: &ModeSense) -> Vec<u8> {
        let pages: Vec<u8> = if m.page == PAGE_ALL {
            PAGES.to_vec()
        } else {
            vec![m.page]
        };
        let mut body = Vec::new();
        for p in pages {
            body.extend(self.mode_page(p, m.pc));
        }
        let ten = m.form == Form::Ten;
        let blocks = self.blocks();
        let long = ten && m.llbaa && blocks > u64::from(u32::MAX);
        let mut bd = Vec::new();
        if !m.dbd {
            if long {
                bd.extend_from_slice(&blocks.to_be_bytes());
                bd.extend_from_slice(&[0; 4]);
                bd.extend_from_slice(&self.desc.block_size.to_be_bytes());
            } else {
                let n = u32::try_from(blocks).unwrap_or(u32::MAX);
                bd.extend_from_slice(&n.to_be_bytes());
                bd.push(0);
                bd.extend_from_slice(&self.desc.block_size.to_be_bytes()[1..]);
            }
        }
        let dsp = 0x10 | if self.desc.read_only { 0x80 } else { 0 }; // DPOFUA, WP
        let mut d = Vec::new();
        if ten {
            let len = (6 + bd.len() + body.len()) as u16;
            d.extend_from_slice(&len.to_be_bytes());
            d.extend_from_slice(&[0, dsp, u8::from(long), 0]);
            d.extend_from_slice(&(bd.len() as u16).to_be_bytes());
        } else {
            let len = (3 + bd.len() + body.len()).min(255) as u8;
            d.extend_from_slice(&[len, 0, dsp, bd.len() as u8]);
        }
        d.extend(bd);
        d.extend(body);
        d
    }

    fn mode_select(&self, nexus: &Nexus, form: Form, list: &[u8]) -> Result<(), SenseReason> {
        if list.is_empty() {
            return Ok(());
        }
        let (hdr, bd_len) = if form == Form::Ten {
            if list.len() < 8 {
                return Err(SenseReason::ParameterListLength);
            }
            (8usize, u16::from_be_bytes([list[6], list[7]]) as usize)
        } else {
            if list.len() < 4 {
                return Err(SenseReason::ParameterListLength);
            }
            (4usize, list[3] as usize)
        };
        let mut off = hdr + bd_len;
        if off > list.len() {
            return Err(SenseReason::ParameterListLength);
        }
        if bd_len >= 8 {
            // A block descriptor may restate, but not change, the block length.
            let bl = &list[hdr + bd_len - 3..hdr + bd_len];
            let want = &self.desc.block_size.to_be_bytes()[1..];
            if bl != want {
                return Err(SenseReason::param((hdr + bd_len - 3) as u16, None));
            }
        }
        let mut new = *self.mode.lock();
        let mut pages_seen = 0usize;
        while off < list.len() && pages_seen < 64 {
            pages_seen += 1;
            if off + 2 > list.len() {
                return Err(SenseReason::ParameterListLength);
            }
            let code = list[off] & 0x3F;
            if list[off] & 0x40 != 0 || !PAGES.contains(&code) {
                return Err(SenseReason::param(off as u16, Some(5)));
            }
            let cur = self.mode_page(code, 0);
            let chg = self.mode_page(code, 1);
            let len = list[off + 1] as usize + 2;
            if len != cur.len() {
                return Err(SenseReason::param(off as u16 + 1, None));
            }
            if off + len > list.len() {
                return Err(SenseReason::ParameterListLength);
            }
            let page = &list[off..off + len];
            for i in 2..len {
                if (page[i] ^ cur[i]) & !chg[i] != 0 {
                    return Err(SenseReason::param((off + i) as u16, None));
                }
            }
            match code {
                PAGE_CACHING => new.wce = page[2] & 0x04 != 0,
                PAGE_CONTROL => new.d_sense = page[2] & 0x04 != 0,
                _ => {}
            }
            off += len;
        }
        let changed = {
            let mut st = self.mode.lock();
            let changed = st.wce != new.wce || st.d_sense != new.d_sense;
            *st = new;
            changed
        };
        if changed {
            self.ua_others(Some(nexus.id), asc::MODE_PARAMETERS_CHANGED);
        }
        Ok(())
    }

    fn rsoc(&self, rctd: bool, options: u8, op: u8, sa: u16) -> Result<Vec<u8>, SenseReason> {
        let supported = |o: &&OpInfo| self.op_supported(o);
        let timeouts = |d: &mut Vec<u8>| {
            // Command timeouts descriptor: length 0Ah, no nominal or recommended timeout.
            d.extend_from_slice(&[0x00, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        };
        if options == 0 {
            let mut body = Vec::new();
            for o in OPS.iter().filter(supported) {
                body.push(o.op);
                body.push(0);
                body.extend_from_slice(&o.sa.unwrap_or(0).to_be_bytes());
                body.push(0);
                body.push(if rctd { 0x02 } else { 0 } | u8::from(o.sa.is_some()));
                body.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
                if rctd {
                    timeouts(&mut body);
                }
            }
            let mut d = (body.len() as u32).to_be_bytes().to_vec();
            d.extend(body);
            return Ok(d);
        }
        let with_sa = match options {
            1 => {
                if has_service_actions(op) {
                    return Err(SenseReason::cdb(2, Some(2)));
                }
                false
            }
            2 => {
                if !has_service_actions(op) {
                    return Err(SenseReason::cdb(2, Some(2)));
                }
                true
            }
            _ => has_service_actions(op),
        };
        let found = OPS
            .iter()
            .filter(supported)
            .find(|o| o.op == op && (!with_sa || o.sa == Some(sa)));
        let mut d = vec![0u8, if rctd { 0x80 } else { 0 }];
        match found {
            Some(o) => {
                d[1] |= 0x03; // SUPPORT: supported as the standard describes
                d.extend_from_slice(&(o.usage.len() as u16).to_be_bytes());
                d.extend_from_slice(o.usage);
                if rctd {
                    timeouts(&mut d);
                }
            }
            None => {
                d[1] |= 0x01; // SUPPORT: not supported
                d.extend_from_slice(&[0, 0]);
            }
        }
        Ok(d)
    }
}
