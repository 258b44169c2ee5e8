//! One SCSI command from received CDB to the PDUs that answer it over TCP, run on a
//! blocking worker: the device server call (LUN addressing and absent LUNs in
//! [`crate::session::lun`]), Data-In segmentation with status collapsed into the last
//! PDU, the SCSI Response with sense, and residual counts.

use std::sync::Arc;

use iscsi::pdu::{DataIn, Residual, ScsiResponse, RESERVED_TAG};
use iscsi::Pdu;

use crate::service::{Completion, Nexus, ScsiService};
use crate::session::lun::{execute_on, lun_number};
use crate::session::task::{data_in_segments, residual};
use crate::stats::IoCounters;

/// SCSI status GOOD.
pub const GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 0x02;

/// Everything a worker needs to run one command and build its answer.
#[derive(Debug)]
pub struct Job {
    /// The device server of the session's target.
    pub service: Arc<dyn ScsiService>,
    /// The I_T nexus.
    pub nexus: Arc<Nexus>,
    /// LUN field as received.
    pub lun_field: u64,
    /// The CDB.
    pub cdb: Vec<u8>,
    /// Initiator Task Tag.
    pub itt: u32,
    /// Expected Data Transfer Length.
    pub edtl: u32,
    /// R bit.
    pub read: bool,
    /// Bytes of Data-Out the CDB describes (0 for none), for the write residual.
    pub out_len: u32,
    /// Data-Out received.
    pub data_out: Vec<u8>,
    /// The initiator's MaxRecvDataSegmentLength.
    pub max_segment: u32,
    /// MaxBurstLength.
    pub max_burst: u32,
    /// Counters of the LUN (when it exists) and of the session.
    pub counters: Vec<Arc<IoCounters>>,
}

impl Job {
    /// Bytes the command moves (at least 4 KiB: every command has a fixed cost).
    pub fn weight(&self) -> usize {
        (self.edtl as usize).max(4096)
    }
}

/// The PDUs answering one command (Data-In then status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Initiator Task Tag.
    pub itt: u32,
    /// PDUs in send order; the last one carries the status.
    pub pdus: Vec<Pdu>,
}

/// Run `job` on the device server and build its PDUs.
pub fn run(job: Job) -> Answer {
    let lun = lun_number(job.lun_field).filter(|l| job.service.has_lun(*l));
    let c = execute_on(
        job.service.as_ref(),
        &job.nexus,
        lun,
        &job.cdb,
        &job.data_out,
    );
    let sent = if job.read {
        c.data_in.len().min(job.edtl as usize)
    } else {
        0
    };
    for k in &job.counters {
        k.record(&job.cdb, sent as u64, job.data_out.len() as u64, &c.sense);
    }
    answer(&job, c)
}

/// Build the PDUs for a completed command.
pub fn answer(job: &Job, c: Completion) -> Answer {
    let resid = if job.read {
        residual(job.edtl, c.data_in.len() as u64)
    } else if job.out_len > 0 || job.edtl > 0 {
        residual(job.edtl, u64::from(job.out_len))
    } else if !c.data_in.is_empty() {
        // Data the initiator did not ask for (R bit clear): all of it is overflow.
        residual(0, c.data_in.len() as u64)
    } else {
        Residual::None
    };
    let send_len = if job.read {
        c.data_in.len().min(job.edtl as usize) as u32
    } else {
        0
    };
    let segments = data_in_segments(send_len, job.max_segment, job.max_burst);
    let collapse = c.status == GOOD && c.sense.is_empty() && !segments.is_empty();
    let mut pdus = Vec::with_capacity(segments.len() + 1);
    let mut data_in = c.data_in;
    for s in &segments {
        let status_here = collapse && s.last;
        let hdr = DataIn {
            final_: s.final_,
            acknowledge: false,
            residual: if status_here { resid } else { Residual::None },
            status: status_here.then_some(c.status),
            lun: job.lun_field,
            itt: job.itt,
            ttt: RESERVED_TAG,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data_sn: s.data_sn,
            buffer_offset: s.offset,
        };
        let start = s.offset as usize;
        let data = if segments.len() == 1 {
            // One segment (the common case with a large MaxRecvDataSegmentLength):
            // hand the buffer over instead of copying it.
            let mut all = std::mem::take(&mut data_in);
            all.truncate(s.len as usize);
            all
        } else {
            data_in[start..start + s.len as usize].to_vec()
        };
        pdus.push(Pdu::with_data(hdr, data));
    }
    if !collapse {
        let mut data = Vec::new();
        if !c.sense.is_empty() {
            data.extend_from_slice(&(c.sense.len() as u16).to_be_bytes());
            data.extend_from_slice(&c.sense);
        }
        let hdr = ScsiResponse {
            bidi_read_residual: Residual::None,
            residual: resid,
            response: 0,
            status: c.status,
            itt: job.itt,
            snack_tag: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            exp_data_sn: segments.len() as u32,
        };
        pdus.push(Pdu::with_data(hdr, data));
    }
    Answer { itt: job.itt, pdus }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::service::{LunSummary, ResetScope, Transfer};
    use crate::session::lun::{illegal_request, lun_field};
    use iscsi::pdu::Header;

    /// A RAM disk of 512-byte blocks answering READ(10)/WRITE(10)/INQUIRY only, to
    /// exercise the transport's side of the boundary.
    #[derive(Debug)]
    pub(crate) struct RamLun {
        pub(crate) blocks: parking_lot::Mutex<Vec<u8>>,
    }

    impl RamLun {
        pub(crate) fn new(blocks: usize) -> Self {
            RamLun {
                blocks: parking_lot::Mutex::new(vec![0; blocks * 512]),
            }
        }
    }

    fn rw10(cdb: &[u8]) -> (usize, usize) {
        let lba = u32::from_be_bytes([cdb[2], cdb[3], cdb[4], cdb[5]]) as usize;
        let n = u16::from_be_bytes([cdb[7], cdb[8]]) as usize;
        (lba * 512, n * 512)
    }

    impl ScsiService for RamLun {
        fn has_lun(&self, lun: u64) -> bool {
            lun == 0
        }
        fn transfer(&self, _lun: u64, cdb: &[u8]) -> Transfer {
            match cdb[0] {
                0x2a => Transfer::Out(rw10(cdb).1 as u32),
                0x28 => Transfer::In(rw10(cdb).1 as u32),
                _ => Transfer::None,
            }
        }
        fn execute(&self, _nexus: &Nexus, _lun: u64, cdb: &[u8], data_out: &[u8]) -> Completion {
            let mut disk = self.blocks.lock();
            match cdb[0] {
                0x28 => {
                    let (off, len) = rw10(cdb);
                    Completion::good(disk[off..off + len].to_vec())
                }
                0x2a => {
                    let (off, len) = rw10(cdb);
                    if data_out.len() != len {
                        return Completion::check_condition(illegal_request((0x0e, 0x03)));
                    }
                    disk[off..off + len].copy_from_slice(data_out);
                    Completion::good(Vec::new())
                }
                0x12 => Completion::good(vec![0; 96]),
                0x00 => Completion::good(Vec::new()),
                _ => Completion::check_condition(illegal_request((0x20, 0x00))),
            }
        }
        fn reset(&self, _nexus: &Nexus, _scope: ResetScope) {}
        fn sync_all(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn luns(&self) -> Vec<LunSummary> {
            let blocks = self.blocks.lock().len() as u64 / 512;
            vec![LunSummary {
                lun: 0,
                blocks,
                block_size: 512,
                pi_type: 0,
                backing: "ram".into(),
            }]
        }
    }

    fn job(service: Arc<dyn ScsiService>, lun: u64, cdb: Vec<u8>, edtl: u32, read: bool) -> Job {
        Job {
            service,
            nexus: Arc::new(Nexus {
                initiator: "iqn.x".into(),
                isid: [0; 6],
                tsih: 1,
            }),
            lun_field: lun_field(lun),
            cdb,
            itt: 7,
            edtl,
            read,
            out_len: 0,
            data_out: Vec::new(),
            max_segment: 8192,
            max_burst: 262_144,
            counters: Vec::new(),
        }
    }

    #[test]
    fn read_collapses_status_into_last_data_in() {
        let svc = Arc::new(RamLun::new(64));
        let cdb = vec![0x28, 0, 0, 0, 0, 0, 0, 0, 40, 0];
        let a = run(job(svc, 0, cdb, 20_480, true));
        assert_eq!(a.pdus.len(), 3);
        let Header::DataIn(last) = &a.pdus[2].header else {
            panic!("expected Data-In")
        };
        assert_eq!(last.status, Some(GOOD));
        assert_eq!(last.residual, Residual::None);
        assert_eq!(a.pdus[2].data.len(), 20_480 - 16_384);
        let Header::DataIn(first) = &a.pdus[0].header else {
            panic!("expected Data-In")
        };
        assert_eq!(first.status, None);
    }

    #[test]
    fn read_residuals_under_and_over() {
        let svc: Arc<dyn ScsiService> = Arc::new(RamLun::new(64));
        let cdb = vec![0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0];
        // Initiator expects more than the CDB reads: underflow.
        let a = run(job(svc.clone(), 0, cdb.clone(), 4096, true));
        let Header::DataIn(d) = &a.pdus.last().unwrap().header else {
            panic!("expected Data-In")
        };
        assert_eq!(d.residual, Residual::Underflow(3072));
        assert_eq!(a.pdus.iter().map(|p| p.data.len()).sum::<usize>(), 1024);
        // Initiator expects less: send what it expects, report the overflow.
        let a = run(job(svc, 0, cdb, 512, true));
        let Header::DataIn(d) = &a.pdus.last().unwrap().header else {
            panic!("expected Data-In")
        };
        assert_eq!(d.residual, Residual::Overflow(512));
        assert_eq!(a.pdus.iter().map(|p| p.data.len()).sum::<usize>(), 512);
    }

    #[test]
    fn write_residual_from_cdb_length() {
        let svc: Arc<dyn ScsiService> = Arc::new(RamLun::new(64));
        let mut j = job(svc, 0, vec![0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0], 1024, false);
        j.out_len = 512;
        j.data_out = vec![5; 512];
        let a = run(j);
        assert_eq!(a.pdus.len(), 1);
        let Header::ScsiResponse(r) = &a.pdus[0].header else {
            panic!("expected SCSI Response")
        };
        assert_eq!((r.status, r.residual), (GOOD, Residual::Underflow(512)));
    }

    #[test]
    fn absent_lun_answers() {
        let svc: Arc<dyn ScsiService> = Arc::new(RamLun::new(8));
        let a = run(job(svc.clone(), 3, vec![0x12, 0, 0, 0, 96, 0], 96, true));
        assert_eq!(a.pdus[0].data[0], 0x7f);
        let a = run(job(svc.clone(), 3, vec![0x00; 6], 0, false));
        let Header::ScsiResponse(r) = &a.pdus[0].header else {
            panic!("expected SCSI Response")
        };
        assert_eq!(r.status, CHECK_CONDITION);
        let sense = &a.pdus[0].data[2..];
        assert_eq!(crate::stats::sense_key_asc(sense), Some((0x05, 0x25, 0x00)));
        // Sense data is carried with its 2-byte length.
        assert_eq!(
            u16::from_be_bytes([a.pdus[0].data[0], a.pdus[0].data[1]]) as usize,
            sense.len()
        );
    }
}
