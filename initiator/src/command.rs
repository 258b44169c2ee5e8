//! One SCSI command's data movement, sans-IO: which Data-Out PDUs carry a write
//! (immediate data in the command PDU, unsolicited Data-Out up to FirstBurstLength,
//! solicited Data-Out per R2T, each PDU at most the target's MaxRecvDataSegmentLength),
//! and the reassembly of Data-In into the read buffer with status from the last
//! Data-In (phase collapse) or from a SCSI Response, and the residuals.

use iscsi::pdu::{DataIn, DataOut, Header, Pdu, R2t, Residual, ScsiResponse, RESERVED_TAG};
use iscsi::seq::{plan_write, SnCheck, SnCounter, WritePlan};

/// Session parameters that shape a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteParams {
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// MaxBurstLength (an R2T may not ask for more).
    pub max_burst_length: u32,
    /// The target's MaxRecvDataSegmentLength (largest data segment we may send).
    pub max_send_segment: u32,
}

impl WriteParams {
    /// From the negotiated parameters.
    pub fn from_negotiated(p: &iscsi::negotiate::NegotiatedParams) -> Self {
        WriteParams {
            immediate_data: p.immediate_data,
            initial_r2t: p.initial_r2t,
            first_burst_length: p.first_burst_length,
            max_burst_length: p.max_burst_length,
            max_send_segment: p
                .max_send_data_segment(iscsi::pdu::Role::Initiator)
                .max(512),
        }
    }

    /// The split of a write of `edtl` bytes.
    pub fn plan(&self, edtl: u32) -> WritePlan {
        plan_write(
            edtl,
            self.immediate_data,
            self.initial_r2t,
            self.first_burst_length,
            self.max_send_segment,
        )
    }
}

/// Data-Out PDUs covering `buf[offset .. offset + len]`, cut at `max_segment`, DataSN
/// from 0, F on the last. `ttt` is 0xFFFFFFFF for unsolicited data or the R2T's TTT.
/// ExpStatSN is filled in by the sender.
pub fn data_out_pdus(
    lun: u64,
    itt: u32,
    ttt: u32,
    buf: &[u8],
    offset: u32,
    len: u32,
    max_segment: u32,
) -> Vec<Pdu> {
    let mut out = Vec::new();
    let end = offset.saturating_add(len).min(buf.len() as u32);
    let step = max_segment.max(1);
    let mut off = offset;
    let mut data_sn = 0u32;
    while off < end {
        let n = step.min(end - off);
        let final_ = off + n == end;
        let hdr = DataOut {
            final_,
            lun,
            itt,
            ttt,
            exp_stat_sn: 0,
            data_sn,
            buffer_offset: off,
        };
        out.push(Pdu::with_data(
            hdr,
            buf[off as usize..(off + n) as usize].to_vec(),
        ));
        data_sn = data_sn.wrapping_add(1);
        off += n;
    }
    out
}

/// The Data-Out PDUs answering an R2T for a write of `buf`, after checking the R2T
/// stays inside the buffer and within MaxBurstLength.
pub fn answer_r2t(r2t: &R2t, buf: &[u8], params: &WriteParams) -> Result<Vec<Pdu>, String> {
    let end = u64::from(r2t.buffer_offset) + u64::from(r2t.desired_data_transfer_length);
    if end > buf.len() as u64 {
        return Err(format!(
            "R2T asks for bytes {}..{} of a {}-byte write",
            r2t.buffer_offset,
            end,
            buf.len()
        ));
    }
    if r2t.desired_data_transfer_length == 0 {
        return Err("R2T with Desired Data Transfer Length 0".into());
    }
    if r2t.desired_data_transfer_length > params.max_burst_length {
        return Err(format!(
            "R2T asks for {} bytes, more than MaxBurstLength {}",
            r2t.desired_data_transfer_length, params.max_burst_length
        ));
    }
    if r2t.ttt == RESERVED_TAG {
        return Err("R2T with the reserved Target Transfer Tag".into());
    }
    Ok(data_out_pdus(
        r2t.lun,
        r2t.itt,
        r2t.ttt,
        buf,
        r2t.buffer_offset,
        r2t.desired_data_transfer_length,
        params.max_send_segment,
    ))
}

/// How a command ended at the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// SCSI status.
    pub status: u8,
    /// Sense data (without the 2-byte SenseLength), when the target sent some.
    pub sense: Vec<u8>,
    /// Residual of the command (from the SCSI Response or the final Data-In).
    pub residual: Residual,
    /// Data received (Data-In), trimmed to the bytes actually transferred.
    pub data: Vec<u8>,
}

/// Why a Data-In sequence or response could not be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassemblyError {
    /// Data-In outside the expected transfer length.
    #[error("Data-In at offset {offset} with {len} bytes overruns the {edtl}-byte buffer")]
    Overrun {
        /// Buffer offset.
        offset: u32,
        /// Segment length.
        len: usize,
        /// Expected Data Transfer Length.
        edtl: u32,
    },
    /// A DataSN was skipped (ErrorRecoveryLevel 0 cannot recover).
    #[error("Data-In DataSN {got} where {expected} was expected")]
    DataSnGap {
        /// The DataSN expected.
        expected: u32,
        /// The DataSN received.
        got: u32,
    },
    /// The SCSI Response's data segment is not a valid sense.
    #[error("SCSI Response sense length {len} exceeds the {have}-byte data segment")]
    BadSenseLength {
        /// SenseLength field.
        len: usize,
        /// Data segment length.
        have: usize,
    },
    /// The target failed the command (iSCSI Response != 0).
    #[error("iSCSI response {0:#x} (target failure)")]
    TargetFailure(u8),
}

/// Collects Data-In for one read command.
#[derive(Debug, Clone)]
pub struct DataInAssembler {
    buf: Vec<u8>,
    edtl: u32,
    received: u64,
    data_sn: SnCounter,
}

impl DataInAssembler {
    /// A buffer for `edtl` bytes.
    pub fn new(edtl: u32) -> Self {
        DataInAssembler {
            buf: vec![0u8; edtl as usize],
            edtl,
            received: 0,
            data_sn: SnCounter::new(0),
        }
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Take one Data-In; returns the completion when it carries status (S bit).
    pub fn data_in(
        &mut self,
        h: &DataIn,
        data: &[u8],
    ) -> Result<Option<Completion>, ReassemblyError> {
        let end = u64::from(h.buffer_offset) + data.len() as u64;
        if end > u64::from(self.edtl) {
            return Err(ReassemblyError::Overrun {
                offset: h.buffer_offset,
                len: data.len(),
                edtl: self.edtl,
            });
        }
        match self.data_sn.check(h.data_sn) {
            SnCheck::InOrder => {}
            SnCheck::Gap { expected } => {
                return Err(ReassemblyError::DataSnGap {
                    expected,
                    got: h.data_sn,
                })
            }
            SnCheck::Stale => {
                return Err(ReassemblyError::DataSnGap {
                    expected: self.data_sn.peek(),
                    got: h.data_sn,
                })
            }
        }
        self.buf[h.buffer_offset as usize..end as usize].copy_from_slice(data);
        self.received += data.len() as u64;
        Ok(h.status
            .map(|status| self.complete(status, Vec::new(), h.residual)))
    }

    /// Take the SCSI Response.
    pub fn response(
        &mut self,
        h: &ScsiResponse,
        data: &[u8],
    ) -> Result<Completion, ReassemblyError> {
        if h.response != 0 {
            return Err(ReassemblyError::TargetFailure(h.response));
        }
        let sense = parse_sense_segment(data)?;
        Ok(self.complete(h.status, sense, h.residual))
    }

    fn complete(&mut self, status: u8, sense: Vec<u8>, residual: Residual) -> Completion {
        let mut data = std::mem::take(&mut self.buf);
        let transferred = match residual {
            Residual::Underflow(n) => u64::from(self.edtl.saturating_sub(n)),
            _ => u64::from(self.edtl),
        };
        data.truncate(transferred as usize);
        Completion {
            status,
            sense,
            residual,
            data,
        }
    }
}

/// The sense bytes of a SCSI Response data segment: 2-byte SenseLength, then sense.
pub fn parse_sense_segment(data: &[u8]) -> Result<Vec<u8>, ReassemblyError> {
    if data.len() < 2 {
        return Ok(Vec::new());
    }
    let len = usize::from(u16::from_be_bytes([data[0], data[1]]));
    if len + 2 > data.len() {
        return Err(ReassemblyError::BadSenseLength {
            len,
            have: data.len() - 2,
        });
    }
    Ok(data[2..2 + len].to_vec())
}

/// True when `h` is a PDU whose ITT names a command of ours (not unsolicited).
pub fn is_task_pdu(h: &Header) -> bool {
    !matches!(h, Header::AsyncMessage(_) | Header::Reject(_)) && h.itt() != RESERVED_TAG
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> WriteParams {
        WriteParams {
            immediate_data: true,
            initial_r2t: false,
            first_burst_length: 65536,
            max_burst_length: 262144,
            max_send_segment: 8192,
        }
    }

    #[test]
    fn write_plan_immediate_unsolicited_solicited() {
        let p = params();
        let plan = p.plan(300_000);
        assert_eq!(
            (plan.immediate, plan.unsolicited, plan.solicited),
            (8192, 65536 - 8192, 300_000 - 65536)
        );
        let buf: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let pdus = data_out_pdus(
            0,
            7,
            RESERVED_TAG,
            &buf,
            plan.immediate,
            plan.unsolicited,
            p.max_send_segment,
        );
        assert_eq!(pdus.len(), 7);
        let mut expect_off = 8192;
        for (i, pdu) in pdus.iter().enumerate() {
            let Header::DataOut(h) = &pdu.header else {
                panic!("not Data-Out")
            };
            assert_eq!(
                (h.data_sn, h.buffer_offset, h.ttt, h.itt),
                (i as u32, expect_off, RESERVED_TAG, 7)
            );
            assert_eq!(h.final_, i == 6);
            assert_eq!(
                pdu.data,
                buf[expect_off as usize..expect_off as usize + pdu.data.len()]
            );
            expect_off += pdu.data.len() as u32;
        }
        assert_eq!(expect_off, 65536);
        // InitialR2T=Yes, ImmediateData=No: everything solicited.
        let plan = WriteParams {
            immediate_data: false,
            initial_r2t: true,
            ..p
        }
        .plan(4096);
        assert_eq!(
            (plan.immediate, plan.unsolicited, plan.solicited),
            (0, 0, 4096)
        );
    }

    #[test]
    fn r2t_answers_are_bounded_and_checked() {
        let p = params();
        let buf = vec![3u8; 100_000];
        let r2t = R2t {
            lun: 0,
            itt: 9,
            ttt: 0x55,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            r2t_sn: 0,
            buffer_offset: 65536,
            desired_data_transfer_length: 100_000 - 65536,
        };
        let pdus = answer_r2t(&r2t, &buf, &p).unwrap();
        assert_eq!(pdus.len(), 5);
        let total: usize = pdus.iter().map(|p| p.data.len()).sum();
        assert_eq!(total, 100_000 - 65536);
        let Header::DataOut(last) = &pdus[4].header else {
            panic!()
        };
        assert!(last.final_ && last.ttt == 0x55 && last.data_sn == 4);
        let beyond = R2t {
            buffer_offset: 90_000,
            desired_data_transfer_length: 20_000,
            ..r2t
        };
        assert!(answer_r2t(&beyond, &buf, &p).is_err());
        let too_big = R2t {
            buffer_offset: 0,
            desired_data_transfer_length: 100_000,
            ..r2t
        };
        let small = WriteParams {
            max_burst_length: 65536,
            ..p
        };
        assert!(answer_r2t(&too_big, &buf, &small).is_err());
    }

    fn data_in(off: u32, sn: u32, status: Option<u8>, residual: Residual) -> DataIn {
        DataIn {
            final_: status.is_some(),
            acknowledge: false,
            residual,
            status,
            lun: 0,
            itt: 1,
            ttt: RESERVED_TAG,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data_sn: sn,
            buffer_offset: off,
        }
    }

    #[test]
    fn data_in_reassembly_with_status_in_last_pdu() {
        let mut a = DataInAssembler::new(1024);
        assert_eq!(
            a.data_in(&data_in(0, 0, None, Residual::None), &[1u8; 512])
                .unwrap(),
            None
        );
        let done = a
            .data_in(&data_in(512, 1, Some(0), Residual::None), &[2u8; 512])
            .unwrap()
            .unwrap();
        assert_eq!(done.status, 0);
        assert_eq!(&done.data[..512], &[1u8; 512]);
        assert_eq!(&done.data[512..], &[2u8; 512]);
    }

    #[test]
    fn data_in_errors_and_underflow() {
        let mut a = DataInAssembler::new(1024);
        assert!(matches!(
            a.data_in(&data_in(768, 0, None, Residual::None), &[0u8; 512]),
            Err(ReassemblyError::Overrun { .. })
        ));
        let mut a = DataInAssembler::new(1024);
        a.data_in(&data_in(0, 0, None, Residual::None), &[1u8; 256])
            .unwrap();
        assert!(matches!(
            a.data_in(&data_in(256, 2, None, Residual::None), &[1u8; 256]),
            Err(ReassemblyError::DataSnGap {
                expected: 1,
                got: 2
            })
        ));
        // Underflow: the target sent 512 of 1024 bytes.
        let mut a = DataInAssembler::new(1024);
        let done = a
            .data_in(
                &data_in(0, 0, Some(0), Residual::Underflow(512)),
                &[9u8; 512],
            )
            .unwrap()
            .unwrap();
        assert_eq!(done.data.len(), 512);
        assert_eq!(done.residual, Residual::Underflow(512));
    }

    #[test]
    fn scsi_response_carries_sense() {
        let mut a = DataInAssembler::new(0);
        let sense = scsi::Sense::new(
            scsi::SenseKey::ABORTED_COMMAND,
            scsi::asc::LOGICAL_BLOCK_GUARD_CHECK_FAILED,
        )
        .with_information(77)
        .to_fixed();
        let mut seg = (sense.len() as u16).to_be_bytes().to_vec();
        seg.extend_from_slice(&sense);
        let rsp = ScsiResponse {
            bidi_read_residual: Residual::None,
            residual: Residual::None,
            response: 0,
            status: 2,
            itt: 1,
            snack_tag: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            exp_data_sn: 0,
        };
        let done = a.response(&rsp, &seg).unwrap();
        assert_eq!(done.status, 2);
        let parsed = scsi::Sense::parse(&done.sense).unwrap();
        assert_eq!(
            (parsed.key, parsed.information),
            (scsi::SenseKey::ABORTED_COMMAND, Some(77))
        );
        assert!(matches!(
            a.response(&rsp, &[0, 40, 1]),
            Err(ReassemblyError::BadSenseLength { .. })
        ));
        let failed = ScsiResponse { response: 1, ..rsp };
        assert_eq!(
            a.response(&failed, &[]),
            Err(ReassemblyError::TargetFailure(1))
        );
    }
}
