//! The logical unit: state (mode parameters, reservations, unit attentions,
//! counters) and the command life cycle `prepare` -> `execute`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use scsi::asc::{self, AscPair};
use scsi::{opcode, Cdb, SenseFormat, Status};
use t10pi::{DifType, PiErrorKind};
use thiserror::Error;

use super::backend::{Backend, BackendError, FileBackend, FileOptions, RamBackend};
use super::lba_lock::LbaLocks;
use super::pr::{Access, ItKey, PrState};
use super::prot::{ProtDir, ProtOp, ProtPlan};
use super::reason::SenseReason;
use super::wire::{self, Dix, PiFailure};
use super::{Backing, LunDesc, Nexus};

/// Why a LUN could not be opened.
#[derive(Debug, Error)]
pub enum LunError {
    /// The description is inconsistent.
    #[error("LUN {id}: {what}")]
    Invalid {
        /// LUN id.
        id: u64,
        /// What is wrong.
        what: String,
    },
    /// The backing store failed to open.
    #[error("LUN {id}: {source}")]
    Backend {
        /// LUN id.
        id: u64,
        /// Cause.
        #[source]
        source: BackendError,
    },
}

/// Which way data moves for a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// No data phase.
    None,
    /// Target to initiator (READ, INQUIRY, ...).
    DataIn,
    /// Initiator to target (WRITE, MODE SELECT, ...).
    DataOut,
}

/// A prepared command: parsed once, checked, with its data and protection plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPlan {
    /// The parsed CDB.
    pub cdb: Cdb,
    /// Data direction.
    pub direction: Direction,
    /// Bytes on the wire: exactly this much data-out is expected; data-in is at
    /// most this long (allocation length, or the blocks with their PI).
    pub transfer_len: usize,
    /// True when the data are logical blocks the protection plan applies to
    /// (false for parameter lists and parameter data).
    pub blocks_on_wire: bool,
    /// The protection plan (a no-PI plan for commands without blocks on the wire).
    pub prot: ProtPlan,
}

/// Data-out handed to [`Lun::execute`].
#[derive(Debug, Clone, Copy)]
pub enum DataOut<'a> {
    /// No data-out.
    None,
    /// Plain bytes: a parameter list, or blocks of a LUN without PI (on a PI LUN
    /// with an INSERT plan the device server generates the PI).
    Bytes(&'a [u8]),
    /// Blocks in DIX form: data and one 8-byte tuple per block (memory domain).
    Dix {
        /// Data blocks.
        data: &'a [u8],
        /// Tuples.
        pi: &'a [u8],
    },
}

/// What a SCSI Response carries for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status byte.
    pub status: Status,
    /// Sense data in the LUN's format (CHECK CONDITION only).
    pub sense: Option<Vec<u8>>,
    /// Data-in in wire form (already cut to the allocation length).
    pub data: Vec<u8>,
}

/// Mode parameters that can change.
#[derive(Debug, Clone, Copy)]
pub(super) struct ModeState {
    pub wce: bool,
    pub d_sense: bool,
}

#[derive(Debug, Default)]
struct UaState {
    /// Live nexuses and their PR identity.
    nexus: HashMap<u64, ItKey>,
    pending: HashMap<u64, VecDeque<AscPair>>,
}

/// Maximum queued unit attentions per nexus (older ones are dropped first).
const MAX_UA: usize = 16;

impl UaState {
    fn push(&mut self, id: u64, pair: AscPair) {
        let q = self.pending.entry(id).or_default();
        if !q.contains(&pair) {
            if q.len() >= MAX_UA {
                q.pop_front();
            }
            q.push_back(pair);
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    pi_guard: AtomicU64,
    pi_app: AtomicU64,
    pi_ref: AtomicU64,
}

/// Counters of one LUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CounterSnapshot {
    /// Read commands completed.
    pub reads: u64,
    /// Write commands completed.
    pub writes: u64,
    /// Data bytes read (without PI).
    pub bytes_read: u64,
    /// Data bytes written (without PI).
    pub bytes_written: u64,
    /// Guard check failures.
    pub pi_guard_errors: u64,
    /// Application tag check failures.
    pub pi_app_errors: u64,
    /// Reference tag check failures.
    pub pi_ref_errors: u64,
}

/// One logical unit and its device server.
#[derive(Debug)]
pub struct Lun {
    pub(super) desc: LunDesc,
    pub(super) pi: Option<DifType>,
    pub(super) backend: Box<dyn Backend>,
    /// Block ranges under I/O: a block's data and tuple change together.
    pub(super) lba_locks: LbaLocks,
    pub(super) mode: Mutex<ModeState>,
    pub(super) pr: Mutex<PrState>,
    ua: Mutex<UaState>,
    aborts: Mutex<Vec<u64>>,
    counters: Counters,
}

fn dif_type(id: u64, t: u8) -> Result<Option<DifType>, LunError> {
    Ok(match t {
        0 => None,
        1 => Some(DifType::Type1),
        2 => Some(DifType::Type2),
        3 => Some(DifType::Type3),
        other => {
            return Err(LunError::Invalid {
                id,
                what: format!("protection type {other}"),
            })
        }
    })
}

impl Lun {
    /// Whether the blocks live in memory (commands never wait on I/O).
    pub fn in_memory(&self) -> bool {
        matches!(self.desc.backing, Backing::Ram { .. })
    }

    /// Opens the backing store described by `desc`.
    pub fn open(desc: LunDesc) -> Result<Lun, LunError> {
        let id = desc.id;
        let pi = dif_type(id, desc.protection.pi_type)?.is_some();
        let backend: Box<dyn Backend> = match &desc.backing {
            Backing::Ram { size } => Box::new(
                RamBackend::new(
                    desc.block_size,
                    size / u64::from(desc.block_size.max(1)),
                    pi,
                )
                .map_err(|source| LunError::Backend { id, source })?,
            ),
            Backing::File { path, size, create } => {
                let opts = FileOptions {
                    block_size: desc.block_size,
                    size: *size,
                    create: *create,
                    pi,
                    read_only: desc.read_only,
                };
                Box::new(
                    FileBackend::open(path, &opts)
                        .map_err(|source| LunError::Backend { id, source })?,
                )
            }
        };
        Lun::with_backend(desc, backend)
    }

    /// A LUN over an already opened backend (whose geometry must match `desc`).
    pub fn with_backend(desc: LunDesc, backend: Box<dyn Backend>) -> Result<Lun, LunError> {
        let id = desc.id;
        let pi = dif_type(id, desc.protection.pi_type)?;
        if !matches!(desc.block_size, 512 | 4096) {
            return Err(LunError::Invalid {
                id,
                what: format!("block size {} (512 or 4096)", desc.block_size),
            });
        }
        if backend.block_size() != desc.block_size || backend.has_pi() != pi.is_some() {
            return Err(LunError::Invalid {
                id,
                what: "backend geometry differs from the description".into(),
            });
        }
        if backend.blocks() == 0 {
            return Err(LunError::Invalid {
                id,
                what: "no blocks".into(),
            });
        }
        Ok(Lun {
            mode: Mutex::new(ModeState {
                wce: desc.write_cache,
                d_sense: false,
            }),
            desc,
            pi,
            backend,
            lba_locks: LbaLocks::new(),
            pr: Mutex::new(PrState::default()),
            ua: Mutex::new(UaState::default()),
            aborts: Mutex::new(Vec::new()),
            counters: Counters::default(),
        })
    }

    /// The LUN's description.
    pub fn desc(&self) -> &LunDesc {
        &self.desc
    }

    /// Number of logical blocks.
    pub fn blocks(&self) -> u64 {
        self.backend.blocks()
    }

    /// Logical block size.
    pub fn block_size(&self) -> u32 {
        self.desc.block_size
    }

    /// Protection type (`None`: no PI).
    pub fn pi_type(&self) -> Option<DifType> {
        self.pi
    }

    /// Snapshot of the counters.
    pub fn counters(&self) -> CounterSnapshot {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CounterSnapshot {
            reads: l(&c.reads),
            writes: l(&c.writes),
            bytes_read: l(&c.bytes_read),
            bytes_written: l(&c.bytes_written),
            pi_guard_errors: l(&c.pi_guard),
            pi_app_errors: l(&c.pi_app),
            pi_ref_errors: l(&c.pi_ref),
        }
    }

    /// Sense format for this LUN: descriptor when D_SENSE is set in the control
    /// mode page or when the LUN has more than 2^32 blocks (LBAs need 8 bytes).
    pub fn sense_format(&self) -> SenseFormat {
        if self.mode.lock().d_sense || self.blocks() > 1u64 << 32 {
            SenseFormat::Descriptor
        } else {
            SenseFormat::Fixed
        }
    }

    /// Sense bytes for a failed command (`None` for RESERVATION CONFLICT).
    pub fn sense_bytes(&self, reason: &SenseReason) -> Option<Vec<u8>> {
        reason.sense().map(|s| s.to_bytes(self.sense_format()))
    }

    /// Records a PI check failure (detected by the transport's signature engine or
    /// by the software wire helpers) and returns its sense reason.
    pub fn pi_failure(&self, f: &PiFailure) -> SenseReason {
        let c = match f.kind {
            PiErrorKind::Guard => &self.counters.pi_guard,
            PiErrorKind::AppTag => &self.counters.pi_app,
            PiErrorKind::RefTag => &self.counters.pi_ref,
        };
        c.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(lun = self.desc.id, lba = f.lba, kind = %f.kind, expected = f.expected, actual = f.actual, "PI check failed");
        f.reason()
    }

    pub(super) fn count_read(&self, bytes: usize) {
        self.counters.reads.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_read
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn count_write(&self, bytes: usize) {
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes_written
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) fn wire_err(&self, e: wire::WireError) -> SenseReason {
        match e {
            wire::WireError::Pi(f) => self.pi_failure(&f),
            other => other.reason(),
        }
    }

    // ---- unit attentions -------------------------------------------------

    /// Registers the nexus on first sight (queuing POWER ON, RESET) and pops its
    /// oldest unit attention.
    fn ua_pop(&self, nexus: &Nexus, take: bool) -> Option<AscPair> {
        let mut ua = self.ua.lock();
        if let std::collections::hash_map::Entry::Vacant(e) = ua.nexus.entry(nexus.id) {
            e.insert(ItKey::of(nexus));
            ua.push(nexus.id, asc::POWER_ON_RESET);
        }
        let q = ua.pending.get_mut(&nexus.id)?;
        if take {
            q.pop_front()
        } else {
            q.front().copied()
        }
    }

    /// Queues a unit attention for every known nexus except `except`.
    pub(super) fn ua_others(&self, except: Option<u64>, pair: AscPair) {
        let mut ua = self.ua.lock();
        let ids: Vec<u64> = ua
            .nexus
            .keys()
            .copied()
            .filter(|id| Some(*id) != except)
            .collect();
        for id in ids {
            ua.push(id, pair);
        }
    }

    /// Queues a unit attention for every nexus of the given PR identities.
    /// The live nexus ids of the given PR identities.
    pub(super) fn nexus_ids(&self, keys: &[ItKey]) -> Vec<u64> {
        let ua = self.ua.lock();
        ua.nexus
            .iter()
            .filter(|(_, k)| keys.contains(k))
            .map(|(id, _)| *id)
            .collect()
    }

    /// Records nexuses whose tasks a PREEMPT AND ABORT must abort.
    pub(super) fn push_aborts(&self, ids: Vec<u64>) {
        self.aborts.lock().extend(ids);
    }

    /// Takes the nexus ids whose tasks on this LUN the transport must abort after a
    /// PREEMPT AND ABORT (SPC-4 5.7.11.5); the device server keeps no task list.
    pub fn take_preempted_nexuses(&self) -> Vec<u64> {
        std::mem::take(&mut *self.aborts.lock())
    }

    pub(super) fn ua_for_keys(&self, keys: &[ItKey], pair: AscPair) {
        let mut ua = self.ua.lock();
        let ids: Vec<u64> = ua
            .nexus
            .iter()
            .filter(|(_, k)| keys.contains(k))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            ua.push(id, pair);
        }
    }

    /// LUN RESET (task management): releases an SPC-2 reservation (persistent
    /// reservations survive, per SPC-4) and queues BUS DEVICE RESET FUNCTION
    /// OCCURRED for every nexus. Aborting the tasks is the transport's job.
    pub fn lun_reset(&self) {
        self.pr.lock().spc2_holder = None;
        let mut ua = self.ua.lock();
        let ids: Vec<u64> = ua.nexus.keys().copied().collect();
        for id in ids {
            ua.pending.entry(id).or_default().clear();
            ua.push(id, asc::BUS_DEVICE_RESET_FUNCTION_OCCURRED);
        }
    }

    /// The I_T nexus is gone (logout or connection loss): forgets its unit
    /// attentions and releases its SPC-2 reservation. PR registrations persist.
    pub fn nexus_lost(&self, nexus_id: u64) {
        {
            let mut pr = self.pr.lock();
            if pr.spc2_holder == Some(nexus_id) {
                pr.spc2_holder = None;
            }
        }
        let mut ua = self.ua.lock();
        ua.nexus.remove(&nexus_id);
        ua.pending.remove(&nexus_id);
    }

    /// Queues CAPACITY DATA HAS CHANGED for every nexus (after the daemon resized
    /// the backing store and reopened the LUN, or grew it underneath).
    pub fn capacity_changed(&self) {
        self.ua_others(None, asc::CAPACITY_DATA_HAS_CHANGED);
    }

    // ---- life cycle ------------------------------------------------------

    /// Parses and checks a command. `fabric_pi_capable` says whether the transport
    /// can carry PI on the wire (PROTECT != 0 is refused otherwise).
    pub fn prepare(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        fabric_pi_capable: bool,
    ) -> Result<CommandPlan, SenseReason> {
        let op = cdb.first().copied().unwrap_or(0xFF);
        let parsed = Cdb::parse(cdb);
        // Unit attentions come first, except for the commands that never report them.
        let ua_exempt = matches!(
            op,
            opcode::INQUIRY | opcode::REPORT_LUNS | opcode::REQUEST_SENSE
        );
        if let Some(pair) = self.ua_pop(nexus, !ua_exempt) {
            if !ua_exempt {
                return Err(SenseReason::UnitAttention(pair));
            }
        }
        let cdb = parsed?;
        self.check_reservation(nexus, &cdb)?;
        if self.desc.read_only
            && super::pr::access_of(&cdb) == Access::Write
            && modifies_medium(&cdb)
        {
            return Err(SenseReason::WriteProtected);
        }
        let bs = self.desc.block_size;
        let none = |direction, transfer_len: usize| CommandPlan {
            cdb,
            direction,
            transfer_len,
            blocks_on_wire: false,
            prot: ProtPlan::none(ProtDir::Read, bs, 0, 0),
        };
        let plan = match cdb {
            Cdb::ReadWrite(_)
            | Cdb::WriteSame(_)
            | Cdb::CompareAndWrite(_)
            | Cdb::SynchronizeCache(_)
            | Cdb::PreFetch(_)
            | Cdb::Unmap { .. }
            | Cdb::GetLbaStatus { .. }
            | Cdb::ReadCapacity10 { .. }
            | Cdb::ReadCapacity16 { .. }
            | Cdb::StartStopUnit(_)
            | Cdb::PreventAllowMediumRemoval { .. } => self.sbc_prepare(&cdb, fabric_pi_capable)?,
            Cdb::PersistentReserveOut(p) => none(Direction::DataOut, p.param_len as usize),
            other => {
                let (dir, len) = self.spc_prepare(&other)?;
                none(dir, len)
            }
        };
        Ok(plan)
    }

    /// Executes a prepared command with its data-out; returns the data-in (blocks in
    /// DIX form for reads, otherwise `data` only), already cut to the allocation length.
    pub fn execute(
        &self,
        nexus: &Nexus,
        plan: &CommandPlan,
        out: DataOut<'_>,
    ) -> Result<Dix, SenseReason> {
        match plan.cdb {
            Cdb::ReadWrite(_)
            | Cdb::WriteSame(_)
            | Cdb::CompareAndWrite(_)
            | Cdb::SynchronizeCache(_)
            | Cdb::PreFetch(_)
            | Cdb::Unmap { .. }
            | Cdb::GetLbaStatus { .. }
            | Cdb::ReadCapacity10 { .. }
            | Cdb::ReadCapacity16 { .. }
            | Cdb::StartStopUnit(_)
            | Cdb::PreventAllowMediumRemoval { .. } => self.sbc_execute(plan, out),
            Cdb::PersistentReserveIn { action, alloc_len } => {
                let mut d = self.pr_in(action)?;
                d.truncate(alloc_len as usize);
                Ok(Dix { data: d, pi: None })
            }
            Cdb::PersistentReserveOut(p) => {
                let DataOut::Bytes(b) = out else {
                    return if p.param_len == 0 {
                        self.pr_out(nexus, &p, &[]).map(|_| Dix::default())
                    } else {
                        Err(SenseReason::ParameterListLength)
                    };
                };
                self.pr_out(nexus, &p, b)?;
                Ok(Dix::default())
            }
            Cdb::Reserve(_) => {
                self.spc2_reserve(nexus)?;
                Ok(Dix::default())
            }
            Cdb::Release(_) => {
                self.spc2_release(nexus);
                Ok(Dix::default())
            }
            Cdb::RequestSense { desc, alloc_len } => {
                // The UA (if any) is reported as sense data with GOOD status and cleared.
                let sense = match self.ua_pop(nexus, true) {
                    Some(pair) => scsi::Sense::new(scsi::SenseKey::UNIT_ATTENTION, pair),
                    None => scsi::Sense::new(scsi::SenseKey::NO_SENSE, asc::NO_ADDITIONAL_SENSE),
                };
                let fmt = if desc {
                    SenseFormat::Descriptor
                } else {
                    SenseFormat::Fixed
                };
                let mut d = sense.to_bytes(fmt);
                d.truncate(alloc_len as usize);
                Ok(Dix { data: d, pi: None })
            }
            _ => {
                let bytes = match out {
                    DataOut::Bytes(b) => b,
                    DataOut::Dix { data, .. } => data,
                    DataOut::None => &[],
                };
                let data = self.spc_execute(nexus, plan, bytes)?;
                Ok(Dix { data, pi: None })
            }
        }
    }

    /// The whole command for a transport without a signature engine: prepare was
    /// done; `wire_out` holds the data-out exactly as received (DIF-interleaved when
    /// the plan says so); the result is the data-in as it goes on the wire.
    ///
    /// A WRITE or WRITE AND VERIFY whose data-out is shorter than the CDB's transfer
    /// length (an iSCSI Expected Data Transfer Length below it) writes the whole
    /// blocks received and nothing else; a partial block is INVALID FIELD IN COMMAND
    /// INFORMATION UNIT. The transport reports the residual.
    pub fn execute_wire(
        &self,
        nexus: &Nexus,
        plan: &CommandPlan,
        wire_out: &[u8],
    ) -> Result<Vec<u8>, SenseReason> {
        if plan.direction == Direction::DataOut
            && plan.blocks_on_wire
            && wire_out.len() < plan.transfer_len
        {
            if let Cdb::ReadWrite(mut rw) = plan.cdb {
                if matches!(rw.kind, scsi::RwKind::Write | scsi::RwKind::WriteAndVerify) {
                    let stride = plan.prot.wire_stride();
                    if !wire_out.len().is_multiple_of(stride) {
                        return Err(SenseReason::DataLength);
                    }
                    let blocks = (wire_out.len() / stride) as u32;
                    if blocks == 0 {
                        return Ok(Vec::new());
                    }
                    rw.blocks = blocks;
                    let mut short = plan.clone();
                    short.cdb = Cdb::ReadWrite(rw);
                    short.prot.blocks = blocks;
                    short.transfer_len = wire_out.len();
                    return self.execute_wire(nexus, &short, wire_out);
                }
            }
        }
        // Blocks without PI on either side are the same bytes on the wire and in
        // memory: handed over as received, with no conversion copy.
        let dix;
        let out = if plan.direction == Direction::DataOut
            && plan.blocks_on_wire
            && (plan.prot.mem.is_some() || plan.prot.wire_has_pi)
        {
            dix = wire::from_wire(&plan.prot, wire_out).map_err(|e| self.wire_err(e))?;
            match &dix.pi {
                Some(pi) => DataOut::Dix {
                    data: &dix.data,
                    pi,
                },
                None => DataOut::Bytes(&dix.data),
            }
        } else if plan.direction == Direction::DataOut {
            DataOut::Bytes(wire_out)
        } else {
            DataOut::None
        };
        let din = self.execute(nexus, plan, out)?;
        if plan.direction == Direction::DataIn && plan.blocks_on_wire {
            wire::to_wire(&plan.prot, &din.data, din.pi.as_deref()).map_err(|e| self.wire_err(e))
        } else {
            Ok(din.data)
        }
    }

    /// [`Lun::execute_wire`] with the data-in written into `dst` (a transport's
    /// registered buffer) instead of a new vector: a READ's blocks go there from
    /// the medium directly. Returns the data-in length the command produced; only
    /// what fits `dst` is written (the rest is overflow for the transport to report).
    pub fn execute_wire_into(
        &self,
        nexus: &Nexus,
        plan: &CommandPlan,
        wire_out: &[u8],
        dst: &mut [u8],
    ) -> Result<usize, SenseReason> {
        if let (Direction::DataIn, true, Cdb::ReadWrite(rw)) =
            (plan.direction, plan.blocks_on_wire, &plan.cdb)
        {
            if rw.kind == scsi::RwKind::Read && rw.blocks > 0 && dst.len() >= plan.transfer_len {
                return self.read_into(plan, rw.lba, rw.blocks, dst);
            }
        }
        let din = self.execute_wire(nexus, plan, wire_out)?;
        let n = din.len().min(dst.len());
        dst[..n].copy_from_slice(&din[..n]);
        Ok(din.len())
    }

    /// Makes every completed write durable (the daemon's flush at shutdown).
    pub fn flush(&self) -> Result<(), BackendError> {
        self.backend.sync()
    }

    /// The data phase `cdb` implies, without side effects (no unit attention is
    /// consumed, reservations are not consulted): for transports that size buffers
    /// before running the command. Errors are reported again by [`Lun::prepare`].
    pub fn transfer(
        &self,
        cdb: &[u8],
        fabric_pi_capable: bool,
    ) -> Result<(Direction, usize), SenseReason> {
        let cdb = Cdb::parse(cdb)?;
        Ok(match cdb {
            Cdb::ReadWrite(_)
            | Cdb::WriteSame(_)
            | Cdb::CompareAndWrite(_)
            | Cdb::SynchronizeCache(_)
            | Cdb::PreFetch(_)
            | Cdb::Unmap { .. }
            | Cdb::GetLbaStatus { .. }
            | Cdb::ReadCapacity10 { .. }
            | Cdb::ReadCapacity16 { .. }
            | Cdb::StartStopUnit(_)
            | Cdb::PreventAllowMediumRemoval { .. } => {
                let p = self.sbc_prepare(&cdb, fabric_pi_capable)?;
                (p.direction, p.transfer_len)
            }
            Cdb::PersistentReserveOut(p) => (Direction::DataOut, p.param_len as usize),
            Cdb::PersistentReserveIn { alloc_len, .. } => (Direction::DataIn, alloc_len as usize),
            Cdb::RequestSense { alloc_len, .. } => (Direction::DataIn, alloc_len as usize),
            other => self.spc_prepare(&other)?,
        })
    }

    /// Prepares and executes one command with wire-form data (see
    /// [`Lun::execute_wire`]) and returns what the SCSI Response carries.
    pub fn run_wire(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        fabric_pi_capable: bool,
        wire_out: &[u8],
    ) -> Response {
        let result = self
            .prepare(nexus, cdb, fabric_pi_capable)
            .and_then(|plan| self.execute_wire(nexus, &plan, wire_out));
        match result {
            Ok(data) => Response {
                status: Status::GOOD,
                sense: None,
                data,
            },
            Err(reason) => self.failed(cdb, &reason),
        }
    }

    /// [`Lun::run_wire`] with the data-in written into `dst` (see
    /// [`Lun::execute_wire_into`]); the response carries no data, and the length
    /// is the data-in the command produced.
    pub fn run_wire_into(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        fabric_pi_capable: bool,
        wire_out: &[u8],
        dst: &mut [u8],
    ) -> (Response, usize) {
        let result = self
            .prepare(nexus, cdb, fabric_pi_capable)
            .and_then(|plan| self.execute_wire_into(nexus, &plan, wire_out, dst));
        self.answer_placed(cdb, result)
    }

    /// The SCSI Response of a command whose Data-In (`Ok(length)`) went into the
    /// transport's buffer.
    fn answer_placed(&self, cdb: &[u8], result: Result<usize, SenseReason>) -> (Response, usize) {
        match result {
            Ok(len) => (
                Response {
                    status: Status::GOOD,
                    sense: None,
                    data: Vec::new(),
                },
                len,
            ),
            Err(reason) => (self.failed(cdb, &reason), 0),
        }
    }

    /// Whether [`Lun::run_read_dix`] serves `cdb`: a READ of at least one block
    /// that asks for its PI (RDPROTECT not 0) from a LUN that stores PI.
    pub fn reads_dix(&self, cdb: &[u8]) -> bool {
        self.moves_pi(cdb, scsi::RwKind::Read)
    }

    /// Whether `cdb` is a `kind` of at least one block whose PROTECT field asks for
    /// its PI to move with it, on a LUN that stores PI.
    fn moves_pi(&self, cdb: &[u8], kind: scsi::RwKind) -> bool {
        self.pi.is_some()
            && matches!(Cdb::parse(cdb), Ok(Cdb::ReadWrite(rw))
                if rw.kind == kind && rw.protect != 0 && rw.blocks > 0)
    }

    /// Prepares and executes a READ that [`Lun::reads_dix`] accepts, with its
    /// blocks and their stored PI straight into `data` and `pi` (DIX form, for a
    /// transport whose hardware interleaves them on the way out); returns what
    /// the SCSI Response carries and the bytes written.
    pub fn run_read_dix(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        fabric_pi_capable: bool,
        data: &mut [u8],
        pi: &mut [u8],
    ) -> (Response, usize) {
        let result = self
            .prepare(nexus, cdb, fabric_pi_capable)
            .and_then(|plan| match (plan.direction, plan.prot.op, plan.prot.mem) {
                (Direction::DataIn, ProtOp::Pass, Some(_)) => self.read_dix_into(&plan, data, pi),
                // `reads_dix` and the plan disagree: a device server bug.
                _ => Err(SenseReason::InternalFailure),
            });
        self.answer_placed(cdb, result)
    }

    /// Whether [`Lun::run_write_dix`] serves `cdb`: a WRITE of at least one block
    /// that carries its PI (WRPROTECT not 0) to a LUN that stores PI.
    pub fn writes_dix(&self, cdb: &[u8]) -> bool {
        self.moves_pi(cdb, scsi::RwKind::Write)
    }

    /// Prepares and executes a WRITE that [`Lun::writes_dix`] accepts, with its
    /// blocks in `data` and their tuples in `pi` (DIX form, from a transport whose
    /// hardware split them off the wire): the tuples are checked as WRPROTECT asks
    /// (WRPROTECT 3, none: the hardware did it) and stored with the blocks.
    pub fn run_write_dix(
        &self,
        nexus: &Nexus,
        cdb: &[u8],
        fabric_pi_capable: bool,
        data: &[u8],
        pi: &[u8],
    ) -> Response {
        let result = self
            .prepare(nexus, cdb, fabric_pi_capable)
            .and_then(|plan| {
                match (&plan.cdb, plan.prot.op, plan.prot.mem) {
                    (Cdb::ReadWrite(rw), ProtOp::Pass, Some(_))
                        if rw.kind == scsi::RwKind::Write =>
                    {
                        if data.len() != plan.prot.data_len() || pi.len() != plan.prot.pi_len() {
                            return Err(SenseReason::DataLength);
                        }
                        wire::verify_dix(&plan.prot, data, pi).map_err(|e| self.wire_err(e))?;
                        self.execute(nexus, &plan, DataOut::Dix { data, pi })
                    }
                    // `writes_dix` and the plan disagree: a device server bug.
                    _ => Err(SenseReason::InternalFailure),
                }
            });
        match result {
            Ok(_) => Response {
                status: Status::GOOD,
                sense: None,
                data: Vec::new(),
            },
            Err(reason) => self.failed(cdb, &reason),
        }
    }

    fn failed(&self, cdb: &[u8], reason: &SenseReason) -> Response {
        tracing::debug!(lun = self.desc.id, cdb = ?cdb.get(..cdb.len().min(16)), %reason, "command failed");
        Response {
            status: reason.status(),
            sense: self.sense_bytes(reason),
            data: Vec::new(),
        }
    }

    /// Builds the REPORT LUNS answer for this LUN alone (a target with several
    /// LUNs answers with [`super::report_luns_payload`] instead).
    pub fn report_luns_self(
        &self,
        select_report: u8,
        alloc_len: u32,
    ) -> Result<Vec<u8>, SenseReason> {
        super::spc::report_luns_payload(&[self.desc.id], select_report, alloc_len)
    }
}

/// Whether a write-class command changes the medium (as opposed to SYNCHRONIZE
/// CACHE, START STOP UNIT and the like, which a write-protected LUN still accepts).
fn modifies_medium(cdb: &Cdb) -> bool {
    match cdb {
        Cdb::ReadWrite(rw) => matches!(rw.kind, scsi::RwKind::Write | scsi::RwKind::WriteAndVerify),
        Cdb::WriteSame(_) | Cdb::CompareAndWrite(_) | Cdb::Unmap { .. } => true,
        _ => false,
    }
}
