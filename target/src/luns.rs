//! The LUNs of one target behind the transport boundary: configuration sections
//! mapped to the device server's [`LunDesc`], commands run with wire-form data
//! (software PI conversion, since TCP carries PI interleaved), REPORT LUNS answered
//! across the target's LUNs, resets and flushes fanned out to every LUN.

use std::collections::BTreeMap;
use std::fmt;

use scsi::SenseFormat;

use crate::device::{self, Backing, Direction, Lun, LunDesc, LunError, Protection, SenseReason};
use crate::service::{Completion, LunSummary, Nexus, ResetScope, ScsiService, Transfer};

/// Map one `[[targets.luns]]` section to the device server's description.
pub fn lun_desc(target: &str, l: &conf::target::Lun) -> Result<LunDesc, String> {
    let backing = match &l.backing {
        conf::target::Backing::Ram { size } => Backing::Ram { size: size.0 },
        conf::target::Backing::File { path, create, size } => Backing::File {
            path: path.clone(),
            size: size.map(|s| s.0),
            create: *create,
        },
        conf::target::Backing::Block { path } => Backing::File {
            path: path.clone(),
            size: None,
            create: false,
        },
    };
    if l.protection.pi_type != 0 && l.protection.store != conf::target::PiStore::Sidecar {
        return Err(format!(
            "LUN {}: only the sidecar PI store (<data>.pi) is implemented; set protection.store = \"sidecar\"",
            l.id
        ));
    }
    let serial = if l.serial.is_empty() {
        // Stable per target and LUN: a short hash of the target name.
        let h = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        format!("{:08x}{:04x}", h as u32, l.id)
    } else {
        l.serial.clone()
    };
    Ok(LunDesc {
        id: u64::from(l.id),
        backing,
        block_size: l.block_size,
        read_only: l.read_only,
        vendor: l.vendor.clone(),
        product: l.product.clone(),
        revision: "0001".into(),
        serial,
        write_cache: l.write_cache,
        thin_provisioning: l.thin_provisioning,
        protection: Protection {
            pi_type: l.protection.pi_type,
            verify_received: l.protection.verify_received,
            verify_medium: l.protection.verify_medium,
            app_tag: l.protection.app_tag,
        },
    })
}

/// The logical units of one target.
pub struct TargetLuns {
    iqn: String,
    luns: BTreeMap<u64, Lun>,
    backing: BTreeMap<u64, String>,
}

impl fmt::Debug for TargetLuns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetLuns")
            .field("iqn", &self.iqn)
            .field("luns", &self.luns.keys())
            .finish()
    }
}

impl TargetLuns {
    /// Open every LUN of `target`.
    pub fn open(target: &conf::target::Target) -> Result<Self, OpenError> {
        let iqn = target.iqn.as_str().to_owned();
        let mut luns = BTreeMap::new();
        let mut backing = BTreeMap::new();
        for l in &target.luns {
            let desc = lun_desc(&iqn, l).map_err(|what| OpenError::Config {
                target: iqn.clone(),
                what,
            })?;
            let what = match &desc.backing {
                Backing::Ram { size } => format!("ram {} MiB", size >> 20),
                Backing::File { path, .. } => format!("file {}", path.display()),
            };
            let lun = Lun::open(desc).map_err(|source| OpenError::Lun {
                target: iqn.clone(),
                source,
            })?;
            luns.insert(u64::from(l.id), lun);
            backing.insert(u64::from(l.id), what);
        }
        Ok(TargetLuns { iqn, luns, backing })
    }

    /// A target over LUNs already opened (tests and tools).
    pub fn from_luns(iqn: impl Into<String>, luns: Vec<Lun>) -> Self {
        let luns: BTreeMap<u64, Lun> = luns.into_iter().map(|l| (l.desc().id, l)).collect();
        let backing = luns
            .keys()
            .map(|&id| (id, "preopened".to_owned()))
            .collect();
        TargetLuns {
            iqn: iqn.into(),
            luns,
            backing,
        }
    }

    fn device_nexus(&self, n: &Nexus) -> device::Nexus {
        device::Nexus {
            id: u64::from(n.tsih),
            initiator: n.port_name(),
            target_port: [self.iqn.as_str(), ",t,0x0001"].concat(),
            relative_port: 1,
        }
    }

    fn failure(&self, lun: Option<&Lun>, reason: &SenseReason) -> Completion {
        let sense = match lun {
            Some(l) => l.sense_bytes(reason),
            None => reason.sense().map(|s| s.to_bytes(SenseFormat::Fixed)),
        };
        Completion {
            status: reason.status().0,
            sense: sense.unwrap_or_default(),
            data_in: Vec::new(),
        }
    }

    fn report_luns(&self, cdb: &[u8]) -> Completion {
        if cdb.len() < 12 {
            return self.failure(None, &SenseReason::cdb(0, None));
        }
        let alloc = u32::from_be_bytes([cdb[6], cdb[7], cdb[8], cdb[9]]);
        let ids: Vec<u64> = self.luns.keys().copied().collect();
        match device::report_luns_payload(&ids, cdb[2], alloc) {
            Ok(d) => Completion::good(d),
            Err(r) => self.failure(None, &r),
        }
    }
}

/// A LUN that could not be opened at start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The configuration asks for something the device server does not do.
    #[error("target {target}: {what}")]
    Config {
        /// Target name.
        target: String,
        /// What is wrong.
        what: String,
    },
    /// The device server refused the LUN or its backing store.
    #[error("target {target}: {source}")]
    Lun {
        /// Target name.
        target: String,
        /// Why.
        source: LunError,
    },
}

impl ScsiService for TargetLuns {
    fn has_lun(&self, lun: u64) -> bool {
        self.luns.contains_key(&lun)
    }

    fn transfer(&self, lun: u64, cdb: &[u8]) -> Transfer {
        let Some(l) = self.luns.get(&lun) else {
            return Transfer::None;
        };
        if cdb.first() == Some(&0xa0) {
            return Transfer::None;
        }
        match l.transfer(cdb, true) {
            Ok((Direction::DataOut, n)) => Transfer::Out(u32::try_from(n).unwrap_or(u32::MAX)),
            Ok((Direction::DataIn, n)) => Transfer::In(u32::try_from(n).unwrap_or(u32::MAX)),
            _ => Transfer::None,
        }
    }

    fn execute(&self, nexus: &Nexus, lun: u64, cdb: &[u8], data_out: &[u8]) -> Completion {
        let Some(l) = self.luns.get(&lun) else {
            return self.failure(None, &SenseReason::cdb(0, None));
        };
        if cdb.first() == Some(&0xa0) {
            return self.report_luns(cdb);
        }
        let r = l.run_wire(&self.device_nexus(nexus), cdb, true, data_out);
        Completion {
            status: r.status.0,
            sense: r.sense.unwrap_or_default(),
            data_in: r.data,
        }
    }

    fn execute_into(
        &self,
        nexus: &Nexus,
        lun: u64,
        cdb: &[u8],
        data_out: &[u8],
        data_in: &mut [u8],
    ) -> (Completion, usize) {
        let Some(l) = self.luns.get(&lun) else {
            return self
                .failure(None, &SenseReason::cdb(0, None))
                .place(data_in);
        };
        if cdb.first() == Some(&0xa0) {
            return self.report_luns(cdb).place(data_in);
        }
        let (r, len) = l.run_wire_into(&self.device_nexus(nexus), cdb, true, data_out, data_in);
        (answer_without_data(r), len)
    }

    fn execute_read_dix(
        &self,
        nexus: &Nexus,
        lun: u64,
        cdb: &[u8],
        data: &mut [u8],
        pi: &mut [u8],
    ) -> Option<(Completion, usize)> {
        let l = self.luns.get(&lun).filter(|l| l.reads_dix(cdb))?;
        let (r, len) = l.run_read_dix(&self.device_nexus(nexus), cdb, true, data, pi);
        Some((answer_without_data(r), len))
    }

    fn execute_write_dix(
        &self,
        nexus: &Nexus,
        lun: u64,
        cdb: &[u8],
        data: &[u8],
        pi: &[u8],
    ) -> Option<Completion> {
        let l = self.luns.get(&lun).filter(|l| l.writes_dix(cdb))?;
        let r = l.run_write_dix(&self.device_nexus(nexus), cdb, true, data, pi);
        Some(answer_without_data(r))
    }

    fn in_memory(&self, lun: u64) -> bool {
        self.luns.get(&lun).is_some_and(Lun::in_memory)
    }

    fn reset(&self, _nexus: &Nexus, scope: ResetScope) {
        match scope {
            // The transport aborted the tasks; the device server keeps no task list.
            ResetScope::TaskSet { .. } => {}
            ResetScope::LogicalUnit(lun) => {
                if let Some(l) = self.luns.get(&lun) {
                    l.lun_reset();
                }
            }
            ResetScope::Target => self.luns.values().for_each(Lun::lun_reset),
        }
    }

    fn nexus_lost(&self, nexus: &Nexus) {
        let id = u64::from(nexus.tsih);
        self.luns.values().for_each(|l| l.nexus_lost(id));
    }

    fn sync_all(&self) -> std::io::Result<()> {
        let mut failed = Vec::new();
        for (id, l) in &self.luns {
            if let Err(e) = l.flush() {
                failed.push(format!("LUN {id}: {e}"));
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "target {}: flush failed: {}",
                self.iqn,
                failed.join("; ")
            )))
        }
    }

    fn luns(&self) -> Vec<LunSummary> {
        self.luns
            .iter()
            .map(|(&id, l)| LunSummary {
                lun: id,
                blocks: l.blocks(),
                block_size: l.block_size(),
                pi_type: l.desc().protection.pi_type,
                backing: self.backing.get(&id).cloned().unwrap_or_default(),
            })
            .collect()
    }
}

/// The SCSI Response part of a device server's answer whose Data-In went straight
/// into the transport's buffer.
fn answer_without_data(r: device::Response) -> Completion {
    Completion {
        status: r.status.0,
        sense: r.sense.unwrap_or_default(),
        data_in: Vec::new(),
    }
}
