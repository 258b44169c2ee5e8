//! A LUN as a block device: probe its capabilities at login (TEST UNIT READY, INQUIRY,
//! READ CAPACITY(16)), check the protection policy against them, then READ, WRITE and
//! SYNCHRONIZE CACHE with per-command protection. A PI check that fails at the
//! initiator overrides the target's GOOD status with CHECK CONDITION and the
//! initiator's sense; sense from the target is passed through unchanged.

use conf::protection::ProtectionPolicy;
use iscsi::pdu::Residual;
use scsi::{Cdb, ExpectedTags, Form, ReadWrite, RwKind, Sense, SenseKey, Status};
use serde::Serialize;

use crate::command::Completion;
use crate::error::Error;
use crate::link::Link;
use crate::lun::{
    encode_lun, parse_capacity10, parse_capacity16, parse_inquiry, parse_report_luns, LunInfo,
};
use crate::protection::{CommandProtection, Direction};
use crate::session::DataDir;

/// Who produced the sense data of an outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SenseOrigin {
    /// The target sent it.
    Target,
    /// The initiator built it (a PI check on data it handled).
    Initiator,
}

/// The result of one block command.
#[derive(Debug, Clone)]
pub struct IoOutcome {
    /// SCSI status.
    pub status: Status,
    /// Decoded sense, when present and parseable.
    pub sense: Option<Sense>,
    /// Raw sense bytes.
    pub sense_bytes: Vec<u8>,
    /// Who produced the sense.
    pub origin: Option<SenseOrigin>,
    /// Host data (reads).
    pub data: Vec<u8>,
    /// Host DIX PI (reads in pass mode, and strip mode's generated PI).
    pub pi: Option<Vec<u8>>,
    /// The residual the target reported.
    pub residual: Residual,
}

impl IoOutcome {
    /// True for GOOD status.
    pub fn is_good(&self) -> bool {
        self.status == Status::GOOD
    }

    fn from_target(c: Completion) -> Self {
        let sense = (!c.sense.is_empty())
            .then(|| Sense::parse(&c.sense).ok())
            .flatten();
        IoOutcome {
            status: Status(c.status),
            origin: (!c.sense.is_empty()).then_some(SenseOrigin::Target),
            sense,
            sense_bytes: c.sense,
            data: c.data,
            pi: None,
            residual: c.residual,
        }
    }

    fn local_check_condition(sense: Sense) -> Self {
        IoOutcome {
            status: Status::CHECK_CONDITION,
            sense_bytes: sense.to_descriptor(),
            sense: Some(sense),
            origin: Some(SenseOrigin::Initiator),
            data: Vec::new(),
            pi: None,
            residual: Residual::None,
        }
    }
}

/// Run a command, retrying (at most 3 times) while the target reports UNIT ATTENTION.
pub async fn command(
    session: &Link,
    lun: u16,
    cdb: &Cdb,
    dir: DataDir,
) -> Result<IoOutcome, Error> {
    let bytes = cdb
        .to_bytes()
        .map_err(|e| Error::Invalid(format!("CDB: {e}")))?;
    let mut last = None;
    for _ in 0..4 {
        let c = session
            .execute(encode_lun(lun), &bytes, dir.clone())
            .await?;
        let out = IoOutcome::from_target(c);
        let ua = out.status == Status::CHECK_CONDITION
            && out
                .sense
                .as_ref()
                .is_some_and(|s| s.key == SenseKey::UNIT_ATTENTION);
        if !ua {
            return Ok(out);
        }
        last = Some(out);
    }
    last.ok_or_else(|| Error::Protocol("no outcome".into()))
}

fn need_good(what: &str, lun: u16, out: &IoOutcome) -> Result<(), Error> {
    if out.is_good() {
        return Ok(());
    }
    let sense = out
        .sense
        .as_ref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    Err(Error::Invalid(format!(
        "{what} on LUN {lun} failed with status {}{sense}",
        status_name(out.status)
    )))
}

/// The name of a SCSI status.
pub fn status_name(s: Status) -> String {
    match s.name() {
        Some(n) => format!("{n} ({:02X}h)", s.0),
        None => format!("{:02X}h", s.0),
    }
}

/// LUN numbers the target reports.
pub async fn report_luns(session: &(impl Clone + Into<Link>)) -> Result<Vec<u16>, Error> {
    let session: Link = session.clone().into();
    let session = &session;
    let alloc = 8 + 8 * 256;
    let out = command(
        session,
        0,
        &Cdb::ReportLuns {
            select_report: 0,
            alloc_len: alloc,
        },
        DataDir::Read(alloc),
    )
    .await?;
    need_good("REPORT LUNS", 0, &out)?;
    Ok(parse_report_luns(&out.data))
}

/// Probe one LUN: TEST UNIT READY, INQUIRY, READ CAPACITY(16) (10 as a fallback).
pub async fn probe(session: &(impl Clone + Into<Link>), lun: u16) -> Result<LunInfo, Error> {
    let session: Link = session.clone().into();
    let session = &session;
    let tur = command(session, lun, &Cdb::TestUnitReady, DataDir::None).await?;
    need_good("TEST UNIT READY", lun, &tur)?;
    let inq = command(
        session,
        lun,
        &Cdb::Inquiry {
            evpd: false,
            page: 0,
            alloc_len: 96,
        },
        DataDir::Read(96),
    )
    .await?;
    need_good("INQUIRY", lun, &inq)?;
    let inquiry = parse_inquiry(&inq.data)
        .ok_or_else(|| Error::Protocol(format!("LUN {lun}: short INQUIRY data")))?;
    if inquiry.qualifier != 0 || inquiry.device_type != 0 {
        return Err(Error::Invalid(format!(
            "LUN {lun} is not a connected block device (peripheral qualifier {}, device type {:#x})",
            inquiry.qualifier, inquiry.device_type
        )));
    }
    let rc16 = command(
        session,
        lun,
        &Cdb::ReadCapacity16 {
            lba: 0,
            alloc_len: 32,
            pmi: false,
        },
        DataDir::Read(32),
    )
    .await?;
    let (blocks, block_size, pi_type) =
        match parse_capacity16(&rc16.data).filter(|_| rc16.is_good()) {
            Some(c) => (c.blocks, c.block_size, c.pi_type),
            None => {
                let rc10 = command(
                    session,
                    lun,
                    &Cdb::ReadCapacity10 { lba: 0, pmi: false },
                    DataDir::Read(8),
                )
                .await?;
                need_good("READ CAPACITY(10)", lun, &rc10)?;
                let (b, s) = parse_capacity10(&rc10.data)
                    .ok_or_else(|| Error::Protocol("short READ CAPACITY(10) data".into()))?;
                (b, s, None)
            }
        };
    if !(512..=4096).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(Error::Invalid(format!(
            "LUN {lun} has an unsupported block size of {block_size} bytes"
        )));
    }
    Ok(LunInfo {
        lun,
        block_size,
        blocks,
        pi_type,
        protect: inquiry.protect,
        vendor: inquiry.vendor,
        product: inquiry.product,
    })
}

/// PI check failures seen on one LUN: ASC 10h sense detected by the initiator (on data
/// it received or host PI it was given) or reported by the target.
#[derive(Debug, Default)]
pub struct PiCounters {
    initiator: std::sync::atomic::AtomicU64,
    target: std::sync::atomic::AtomicU64,
}

impl PiCounters {
    /// Failures the initiator detected.
    pub fn detected_by_initiator(&self) -> u64 {
        self.initiator.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Failures the target reported.
    pub fn reported_by_target(&self) -> u64 {
        self.target.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn record(&self, out: &IoOutcome) {
        let pi = out.status == Status::CHECK_CONDITION
            && out
                .sense
                .as_ref()
                .is_some_and(|s| s.asc == 0x10 && (1..=3).contains(&s.ascq));
        if !pi {
            return;
        }
        let c = match out.origin {
            Some(SenseOrigin::Initiator) => &self.initiator,
            _ => &self.target,
        };
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// One LUN of a session under a protection policy.
#[derive(Debug, Clone)]
pub struct BlockDevice {
    session: Link,
    info: LunInfo,
    policy: ProtectionPolicy,
    counters: std::sync::Arc<PiCounters>,
}

/// Largest number of blocks [`BlockDevice::read_range`] and
/// [`BlockDevice::write_range`] put in one command.
pub const MAX_BLOCKS_PER_COMMAND: u32 = 2048;

impl BlockDevice {
    /// Probe `lun` and check `policy` against it (a mismatch names the LUN and what it
    /// supports).
    pub async fn open(
        session: impl Into<Link>,
        lun: u16,
        policy: ProtectionPolicy,
    ) -> Result<Self, Error> {
        let session: Link = session.into();
        let info = probe(&session, lun).await?;
        policy
            .check_against(info.caps())
            .map_err(|source| Error::Policy {
                lun,
                source,
                caps: info.to_string(),
            })?;
        Ok(BlockDevice {
            session,
            info,
            policy,
            counters: std::sync::Arc::default(),
        })
    }

    /// Count PI failures in `counters` (shared across reconnects of one LUN).
    pub fn with_counters(mut self, counters: std::sync::Arc<PiCounters>) -> Self {
        self.counters = counters;
        self
    }

    /// The PI failure counters of this LUN.
    pub fn counters(&self) -> &std::sync::Arc<PiCounters> {
        &self.counters
    }

    /// What the LUN reported.
    pub fn info(&self) -> &LunInfo {
        &self.info
    }

    /// The policy in force.
    pub fn policy(&self) -> &ProtectionPolicy {
        &self.policy
    }

    /// The session.
    pub fn session(&self) -> &Link {
        &self.session
    }

    /// Reject empty and overflowing ranges; a range past the end is left to the target,
    /// whose LOGICAL BLOCK ADDRESS OUT OF RANGE sense is what an operator expects.
    fn check_range(&self, lba: u64, blocks: u32) -> Result<(), Error> {
        if blocks == 0 {
            return Err(Error::Invalid("transfer of 0 blocks".into()));
        }
        if lba.checked_add(u64::from(blocks)).is_none() {
            return Err(Error::Invalid(format!(
                "LBA {lba} + {blocks} blocks overflows"
            )));
        }
        Ok(())
    }

    fn cdb(&self, p: &CommandProtection, kind: RwKind, lba: u64, blocks: u32) -> Cdb {
        let mut rw = ReadWrite::new(kind, p.form, lba, blocks).with_protect(p.protect);
        if p.form == Form::ThirtyTwo {
            let app = p.check_mask & t10pi::check_mask::APPTAG != 0;
            rw.tags = Some(ExpectedTags {
                ref_tag: lba as u32,
                app_tag: p.app_tag,
                app_tag_mask: if app { 0xFFFF } else { 0 },
            });
        }
        Cdb::ReadWrite(rw)
    }

    /// READ `blocks` blocks at `lba`; the outcome carries host data (and DIX PI in pass
    /// and strip modes).
    pub async fn read(&self, lba: u64, blocks: u32) -> Result<IoOutcome, Error> {
        let out = self.read_inner(lba, blocks).await?;
        self.counters.record(&out);
        Ok(out)
    }

    async fn read_inner(&self, lba: u64, blocks: u32) -> Result<IoOutcome, Error> {
        self.check_range(lba, blocks)?;
        let p = CommandProtection::select(&self.policy, &self.info, Direction::Read, lba, blocks);
        let edtl = u64::from(blocks) * u64::from(p.wire_block());
        let edtl =
            u32::try_from(edtl).map_err(|_| Error::Invalid("read larger than 4 GiB".into()))?;
        let cdb = self.cdb(&p, RwKind::Read, lba, blocks);
        if let Link::Iser(s) = &self.session {
            return self.iser_io(s, &p, &cdb, lba, blocks, None).await;
        }
        let mut out = command(&self.session, self.info.lun, &cdb, DataDir::Read(edtl)).await?;
        if !out.is_good() {
            return Ok(out);
        }
        if out.data.len() != edtl as usize {
            return Err(Error::Protocol(format!(
                "READ returned {} of {edtl} bytes with GOOD status",
                out.data.len()
            )));
        }
        match p.finish_read(lba, &out.data)? {
            Ok(host) => {
                out.data = host.data;
                out.pi = host.pi;
                Ok(out)
            }
            Err(sense) => {
                tracing::warn!(lun = self.info.lun, lba, %sense, "PI check failed on data received from the target");
                Ok(IoOutcome::local_check_condition(sense))
            }
        }
    }

    /// A protected READ or WRITE over iSER: the signature MR does the PI work; a
    /// signature error it recorded overrides the target's status.
    async fn iser_io(
        &self,
        s: &crate::iser::IserSession,
        p: &CommandProtection,
        cdb: &Cdb,
        lba: u64,
        blocks: u32,
        write: Option<(&[u8], Option<&[u8]>)>,
    ) -> Result<IoOutcome, Error> {
        let bytes = cdb
            .to_bytes()
            .map_err(|e| Error::Invalid(format!("CDB: {e}")))?;
        let lun = encode_lun(self.info.lun);
        // At most 3 tries while the target reports UNIT ATTENTION.
        for _ in 0..3 {
            let pc = s
                .execute_protected(lun, &bytes, p, lba, blocks, write)
                .await?;
            let mut out = IoOutcome::from_target(pc.completion);
            if let Some(sense) = pc.sig_sense {
                // The initiator's own check overrides a GOOD status only (DESIGN
                // section 5); when the target already failed the command, its sense
                // names who detected the error first and is the more precise one.
                if out.is_good() {
                    return Ok(IoOutcome::local_check_condition(sense));
                }
                tracing::warn!(lba, %sense, "PI check failed at the initiator too; reporting the target's sense");
            }
            let ua = out.status == Status::CHECK_CONDITION
                && out
                    .sense
                    .as_ref()
                    .is_some_and(|s| s.key == SenseKey::UNIT_ATTENTION);
            if ua {
                continue;
            }
            if out.is_good() {
                if let (None, Residual::Underflow(u @ 1..)) = (write, out.residual) {
                    // As over TCP: a READ's blocks all come with GOOD status.
                    let edtl = u64::from(blocks) * u64::from(p.wire_block());
                    return Err(Error::Protocol(format!(
                        "READ returned {} of {edtl} bytes with GOOD status",
                        edtl.saturating_sub(u64::from(u))
                    )));
                }
                out.pi = pc.pi;
            } else {
                out.data.clear();
            }
            return Ok(out);
        }
        Err(Error::Protocol("UNIT ATTENTION did not clear".into()))
    }

    /// WRITE `data` at `lba`; `pi` is the host's DIX PI (pass and strip modes; when
    /// absent in those modes the initiator generates it, as for an export without PI).
    pub async fn write(
        &self,
        lba: u64,
        data: &[u8],
        pi: Option<&[u8]>,
    ) -> Result<IoOutcome, Error> {
        let out = self.write_inner(lba, data, pi).await?;
        self.counters.record(&out);
        Ok(out)
    }

    async fn write_inner(
        &self,
        lba: u64,
        data: &[u8],
        pi: Option<&[u8]>,
    ) -> Result<IoOutcome, Error> {
        let bs = self.info.block_size as usize;
        if data.is_empty() || !data.len().is_multiple_of(bs) {
            return Err(Error::Invalid(format!(
                "write of {} bytes is not a whole number of {bs}-byte blocks",
                data.len()
            )));
        }
        let blocks =
            u32::try_from(data.len() / bs).map_err(|_| Error::Invalid("write too large".into()))?;
        self.check_range(lba, blocks)?;
        let p = CommandProtection::select(&self.policy, &self.info, Direction::Write, lba, blocks);
        let generated;
        let pi = match pi {
            Some(pi) => Some(pi),
            None if p.op.pi_in_memory() => {
                generated = p.host_pi(lba, data)?;
                Some(generated.as_slice())
            }
            None => None,
        };
        let cdb = self.cdb(&p, RwKind::Write, lba, blocks);
        if let Link::Iser(s) = &self.session {
            return self
                .iser_io(s, &p, &cdb, lba, blocks, Some((data, pi)))
                .await;
        }
        let wire = match p.build_write(lba, data, pi)? {
            Ok(w) => w,
            Err(sense) => return Ok(IoOutcome::local_check_condition(sense)),
        };
        command(&self.session, self.info.lun, &cdb, DataDir::Write(wire)).await
    }

    /// SYNCHRONIZE CACHE over the whole LUN.
    pub async fn flush(&self) -> Result<IoOutcome, Error> {
        let form = if self.info.blocks > u64::from(u32::MAX) {
            Form::Sixteen
        } else {
            Form::Ten
        };
        let cdb = Cdb::SynchronizeCache(scsi::CacheRange {
            form,
            immed: false,
            lba: 0,
            blocks: 0,
            group: 0,
        });
        command(&self.session, self.info.lun, &cdb, DataDir::None).await
    }

    /// Blocks per command for [`BlockDevice::read_range`] and
    /// [`BlockDevice::write_range`]: at most [`MAX_BLOCKS_PER_COMMAND`]; over iSER also
    /// at most one MaxBurstLength of wire bytes, so that the target moves each command
    /// with one RDMA operation and never splits a protection interval between two.
    pub fn blocks_per_command(&self) -> u32 {
        let mut n = MAX_BLOCKS_PER_COMMAND;
        if let Link::Iser(s) = &self.session {
            let p = CommandProtection::select(&self.policy, &self.info, Direction::Read, 0, 1);
            let burst = s.params().map_or(262_144, |p| p.max_burst_length);
            n = n.min((burst / p.wire_block().max(1)).max(1));
        }
        n
    }

    /// Read any number of blocks in commands of at most
    /// [`BlockDevice::blocks_per_command`]; stops at the first non-GOOD outcome and
    /// returns it.
    pub async fn read_range(&self, lba: u64, blocks: u64) -> Result<IoOutcome, Error> {
        let mut data = Vec::new();
        let mut pi: Option<Vec<u8>> = None;
        let mut done = 0u64;
        let per = self.blocks_per_command();
        while done < blocks {
            let n = (blocks - done).min(u64::from(per)) as u32;
            let out = self.read(lba + done, n).await?;
            if !out.is_good() {
                return Ok(out);
            }
            data.extend_from_slice(&out.data);
            if let Some(p) = out.pi {
                pi.get_or_insert_with(Vec::new).extend_from_slice(&p);
            }
            done += u64::from(n);
        }
        Ok(IoOutcome {
            status: Status::GOOD,
            sense: None,
            sense_bytes: Vec::new(),
            origin: None,
            data,
            pi,
            residual: Residual::None,
        })
    }

    /// Write whole blocks in commands of at most [`BlockDevice::blocks_per_command`].
    pub async fn write_range(
        &self,
        lba: u64,
        data: &[u8],
        pi: Option<&[u8]>,
    ) -> Result<IoOutcome, Error> {
        let bs = self.info.block_size as usize;
        let per = self.blocks_per_command() as usize;
        let chunk = per * bs;
        let mut last = None;
        for (i, part) in data.chunks(chunk).enumerate() {
            let first = i * per;
            let part_pi = pi.map(|p| {
                p.get(first * 8..(first + part.len() / bs) * 8)
                    .unwrap_or_default()
            });
            let out = self.write(lba + first as u64, part, part_pi).await?;
            if !out.is_good() {
                return Ok(out);
            }
            last = Some(out);
        }
        last.ok_or_else(|| Error::Invalid("write of 0 bytes".into()))
    }
}

/// A LUN shared by exports across reconnects: the daemon publishes the current
/// [`BlockDevice`] (or `None` while reconnecting) and each request waits for one.
#[derive(Debug)]
pub struct SharedLun {
    info: LunInfo,
    current: tokio::sync::watch::Receiver<Option<BlockDevice>>,
    wait: std::time::Duration,
    rmw: tokio::sync::Mutex<()>,
}

fn outcome_ok(what: &str, lba: u64, out: &IoOutcome) -> Result<(), Error> {
    if out.is_good() {
        return Ok(());
    }
    let sense = out
        .sense
        .as_ref()
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    Err(Error::Status(format!(
        "{what} at LBA {lba}: {}{sense}",
        status_name(out.status)
    )))
}

impl SharedLun {
    /// A shared LUN fed by `current`; requests wait up to `wait` for a device.
    pub fn new(
        info: LunInfo,
        current: tokio::sync::watch::Receiver<Option<BlockDevice>>,
        wait: std::time::Duration,
    ) -> Self {
        SharedLun {
            info,
            current,
            wait,
            rmw: tokio::sync::Mutex::new(()),
        }
    }

    /// A shared LUN over one device that never changes.
    pub fn fixed(dev: BlockDevice) -> Self {
        let info = dev.info().clone();
        let (tx, rx) = tokio::sync::watch::channel(Some(dev));
        // The receiver keeps the value after the sender is gone.
        drop(tx);
        SharedLun::new(info, rx, std::time::Duration::from_secs(1))
    }

    /// The LUN's geometry.
    pub fn info(&self) -> &LunInfo {
        &self.info
    }

    async fn device(&self) -> Result<BlockDevice, Error> {
        let mut rx = self.current.clone();
        let wait = async {
            // Bounded by the timeout around it.
            loop {
                if let Some(d) = rx.borrow_and_update().clone() {
                    if d.session().closed_reason().is_none() {
                        return Ok(d);
                    }
                }
                if rx.changed().await.is_err() {
                    let d = rx.borrow().clone();
                    return d.ok_or_else(|| Error::ConnectionLost("the session is gone".into()));
                }
            }
        };
        tokio::time::timeout(self.wait, wait).await.map_err(|_| {
            Error::ConnectionLost(format!(
                "no session for LUN {} within {:?}",
                self.info.lun, self.wait
            ))
        })?
    }

    async fn with_retry<T, F, Fut>(&self, f: F) -> Result<T, Error>
    where
        F: Fn(BlockDevice) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let r = f(self.device().await?).await;
        match r {
            Err(e) if e.is_connection_loss() => f(self.device().await?).await,
            other => other,
        }
    }

    fn span(&self, offset: u64, len: u64) -> (u64, u64, usize) {
        let bs = u64::from(self.info.block_size);
        let first = offset / bs;
        let end = (offset + len).div_ceil(bs);
        (first, end - first, (offset - first * bs) as usize)
    }

    /// Read `len` bytes at byte `offset`.
    pub async fn read_bytes(&self, offset: u64, len: u32) -> Result<Vec<u8>, Error> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (lba, blocks, skip) = self.span(offset, u64::from(len));
        let out = self
            .with_retry(|d| async move { d.read_range(lba, blocks).await })
            .await?;
        outcome_ok("READ", lba, &out)?;
        out.data
            .get(skip..skip + len as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| Error::Protocol("short read".into()))
    }

    /// Write `data` at byte `offset` (partial blocks are read, patched and written).
    pub async fn write_bytes(&self, offset: u64, data: &[u8]) -> Result<(), Error> {
        if data.is_empty() {
            return Ok(());
        }
        let bs = u64::from(self.info.block_size);
        let (lba, blocks, skip) = self.span(offset, data.len() as u64);
        if offset.is_multiple_of(bs) && (data.len() as u64).is_multiple_of(bs) {
            let out = self
                .with_retry(|d| async move { d.write_range(lba, data, None).await })
                .await?;
            return outcome_ok("WRITE", lba, &out);
        }
        let _guard = self.rmw.lock().await;
        let old = self
            .with_retry(|d| async move { d.read_range(lba, blocks).await })
            .await?;
        outcome_ok("READ (read-modify-write)", lba, &old)?;
        let mut buf = old.data;
        buf.get_mut(skip..skip + data.len())
            .ok_or_else(|| Error::Protocol("short read".into()))?
            .copy_from_slice(data);
        let buf = &buf;
        let out = self
            .with_retry(|d| async move { d.write_range(lba, buf, None).await })
            .await?;
        outcome_ok("WRITE", lba, &out)
    }

    /// SYNCHRONIZE CACHE.
    pub async fn flush(&self) -> Result<(), Error> {
        let out = self.with_retry(|d| async move { d.flush().await }).await?;
        outcome_ok("SYNCHRONIZE CACHE", 0, &out)
    }
}
