//! Block commands (SBC-3): each CDB is parsed once in `prepare`, where LBA ranges,
//! transfer limits and the protection decision are checked in one place; `execute`
//! then moves blocks between DIX memory and the backend.

use std::borrow::Cow;

use scsi::{Cdb, Form, RwKind};
use t10pi::{Tuple, TUPLE_SIZE};

use super::backend::{BackendError, CHUNK_BYTES};
use super::lun::{CommandPlan, DataOut, Direction, Lun};
use super::prot::{check_prot, ProtDecision, ProtDir, ProtOp, ProtPlan};
use super::reason::SenseReason;
use super::spc::{
    MAX_CAW_BLOCKS, MAX_TRANSFER_BYTES, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS,
    MAX_WRITE_SAME_BLOCKS,
};
use super::wire::{self, Dix};

/// Data-out blocks in DIX form: data, and PI on a PI LUN.
type BlockData<'a> = (Cow<'a, [u8]>, Option<Cow<'a, [u8]>>);

/// Byte of the TRANSFER LENGTH / NUMBER OF LOGICAL BLOCKS field per CDB form.
fn len_byte(form: Form) -> u16 {
    match form {
        Form::Six => 4,
        Form::Ten => 7,
        Form::Twelve => 6,
        Form::Sixteen => 10,
        Form::ThirtyTwo => 28,
    }
}

fn read_err(e: BackendError) -> SenseReason {
    tracing::error!(error = %e, "backend read failed");
    SenseReason::ReadError
}

fn write_err(e: BackendError) -> SenseReason {
    tracing::error!(error = %e, "backend write failed");
    SenseReason::WriteError
}

/// Offset of the first differing byte, if any.
fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

impl Lun {
    fn check_range(&self, lba: u64, blocks: u64) -> Result<(), SenseReason> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks() => Ok(()),
            _ => Err(SenseReason::LbaOutOfRange),
        }
    }

    /// Applies the LUN's verify switches to a decision.
    fn masked(&self, dir: ProtDir, mut d: ProtDecision) -> ProtDecision {
        let p = &self.desc.protection;
        if (dir == ProtDir::Write && !p.verify_received)
            || (dir == ProtDir::Read && !p.verify_medium)
        {
            d.check_mask = 0;
        }
        d
    }

    pub(super) fn sbc_prepare(
        &self,
        cdb: &Cdb,
        fabric_pi: bool,
    ) -> Result<CommandPlan, SenseReason> {
        let bs = self.desc.block_size;
        let app = self.desc.protection.app_tag;
        let max_blocks = MAX_TRANSFER_BYTES / u64::from(bs);
        let plan = |direction, prot: ProtPlan, blocks_on_wire: bool| {
            let transfer_len = match direction {
                Direction::None => 0,
                _ => prot.wire_len(),
            };
            CommandPlan {
                cdb: *cdb,
                direction,
                transfer_len,
                blocks_on_wire,
                prot,
            }
        };
        let bytes = |direction, len: usize| CommandPlan {
            cdb: *cdb,
            direction,
            transfer_len: len,
            blocks_on_wire: false,
            prot: ProtPlan::none(ProtDir::Read, bs, 0, 0),
        };
        Ok(match *cdb {
            Cdb::ReadWrite(rw) => {
                let dir = match rw.kind {
                    RwKind::Read | RwKind::Verify => ProtDir::Read,
                    RwKind::Write | RwKind::WriteAndVerify => ProtDir::Write,
                };
                let d = self.masked(
                    dir,
                    check_prot(rw.protect, dir, self.pi, fabric_pi, rw.form.cdb_len())?,
                );
                if u64::from(rw.blocks) > max_blocks {
                    return Err(SenseReason::cdb(len_byte(rw.form), None));
                }
                self.check_range(rw.lba, u64::from(rw.blocks))?;
                let full = ProtPlan::build(dir, d, self.pi, bs, rw.lba, rw.blocks, rw.tags, app);
                match rw.kind {
                    _ if rw.blocks == 0 => plan(Direction::None, full, false),
                    RwKind::Read => plan(Direction::DataIn, full, true),
                    RwKind::Write | RwKind::WriteAndVerify => plan(Direction::DataOut, full, true),
                    RwKind::Verify => match rw.bytchk {
                        0 => plan(Direction::None, full, false),
                        1 => plan(Direction::DataOut, full, true),
                        _ => {
                            let one = ProtPlan::build(dir, d, self.pi, bs, rw.lba, 1, rw.tags, app);
                            plan(Direction::DataOut, one, true)
                        }
                    },
                }
            }
            Cdb::WriteSame(ws) => {
                let fb = ws.form.flags_byte();
                let d = self.masked(
                    ProtDir::Write,
                    check_prot(
                        ws.protect,
                        ProtDir::Write,
                        self.pi,
                        fabric_pi,
                        ws.form.cdb_len(),
                    )?,
                );
                if ws.anchor {
                    return Err(SenseReason::cdb(fb, Some(4)));
                }
                if ws.unmap && !self.desc.thin_provisioning {
                    return Err(SenseReason::cdb(fb, Some(3)));
                }
                if ws.ndob && ws.protect != 0 {
                    return Err(SenseReason::cdb(fb, Some(7)));
                }
                if ws.blocks == 0 || ws.blocks > MAX_WRITE_SAME_BLOCKS {
                    return Err(SenseReason::cdb(len_byte(ws.form), None));
                }
                self.check_range(ws.lba, u64::from(ws.blocks))?;
                let one = ProtPlan::build(ProtDir::Write, d, self.pi, bs, ws.lba, 1, ws.tags, app);
                if ws.ndob {
                    plan(Direction::None, one, false)
                } else {
                    plan(Direction::DataOut, one, true)
                }
            }
            Cdb::CompareAndWrite(c) => {
                let d = self.masked(
                    ProtDir::Write,
                    check_prot(c.protect, ProtDir::Write, self.pi, fabric_pi, 16)?,
                );
                if c.blocks > MAX_CAW_BLOCKS {
                    return Err(SenseReason::cdb(13, None));
                }
                self.check_range(c.lba, u64::from(c.blocks))?;
                let mut p = ProtPlan::build(
                    ProtDir::Write,
                    d,
                    self.pi,
                    bs,
                    c.lba,
                    u32::from(c.blocks),
                    None,
                    app,
                );
                p.instances = 2;
                if c.blocks == 0 {
                    plan(Direction::None, p, false)
                } else {
                    plan(Direction::DataOut, p, true)
                }
            }
            Cdb::SynchronizeCache(c) | Cdb::PreFetch(c) => {
                if c.lba > self.blocks() {
                    return Err(SenseReason::LbaOutOfRange);
                }
                self.check_range(c.lba, u64::from(c.blocks))?;
                bytes(Direction::None, 0)
            }
            Cdb::Unmap {
                anchor, param_len, ..
            } => {
                if !self.desc.thin_provisioning {
                    return Err(SenseReason::InvalidOpcode);
                }
                if anchor {
                    return Err(SenseReason::cdb(1, Some(0)));
                }
                bytes(Direction::DataOut, param_len as usize)
            }
            Cdb::GetLbaStatus { lba, alloc_len } => {
                if lba >= self.blocks() {
                    return Err(SenseReason::LbaOutOfRange);
                }
                bytes(Direction::DataIn, alloc_len as usize)
            }
            Cdb::ReadCapacity10 { lba, pmi } => {
                if !pmi && lba != 0 {
                    return Err(SenseReason::cdb(2, None));
                }
                bytes(Direction::DataIn, 8)
            }
            Cdb::ReadCapacity16 { alloc_len, .. } => bytes(Direction::DataIn, alloc_len as usize),
            Cdb::StartStopUnit(s) => {
                if s.power_condition != 0 {
                    return Err(SenseReason::cdb(4, Some(7)));
                }
                if s.loej {
                    // The medium is not removable.
                    return Err(SenseReason::cdb(4, Some(1)));
                }
                bytes(Direction::None, 0)
            }
            Cdb::PreventAllowMediumRemoval { .. } => bytes(Direction::None, 0),
            _ => return Err(SenseReason::InvalidOpcode),
        })
    }

    /// Data-out blocks in DIX form for `plan`, generating PI when the transport gave
    /// plain bytes on a PI LUN (an INSERT plan applied in software).
    fn block_data<'a>(
        &self,
        plan: &ProtPlan,
        out: DataOut<'a>,
    ) -> Result<BlockData<'a>, SenseReason> {
        let want = plan.data_len();
        match out {
            DataOut::Dix { data, pi } if data.len() == want => {
                if plan.mem.is_none() {
                    return Ok((Cow::Borrowed(data), None));
                }
                if pi.len() != plan.pi_len() {
                    return Err(SenseReason::DataLength);
                }
                Ok((Cow::Borrowed(data), Some(Cow::Borrowed(pi))))
            }
            DataOut::Bytes(b) if b.len() == want => {
                if plan.mem.is_none() {
                    return Ok((Cow::Borrowed(b), None));
                }
                if plan.op == ProtOp::Pass {
                    // PASS needs the initiator's tuples; plain bytes cannot carry them.
                    return Err(SenseReason::DataLength);
                }
                let mut insert = *plan;
                insert.op = ProtOp::Insert;
                insert.wire_has_pi = false;
                insert.wire = None;
                let dix = wire::from_wire(&insert, b).map_err(|e| self.wire_err(e))?;
                Ok((Cow::Owned(dix.data), dix.pi.map(Cow::Owned)))
            }
            _ => Err(SenseReason::DataLength),
        }
    }

    fn fua(&self, fua: bool) -> bool {
        fua || !self.mode.lock().wce
    }

    fn read_dix(&self, lba: u64, blocks: u32) -> Result<Dix, SenseReason> {
        let bs = self.desc.block_size as usize;
        let mut data = vec![0u8; bs * blocks as usize];
        let mut pi = self.pi.map(|_| vec![0u8; TUPLE_SIZE * blocks as usize]);
        self.backend
            .read_blocks(lba, &mut data, pi.as_deref_mut())
            .map_err(read_err)?;
        Ok(Dix { data, pi })
    }

    /// A READ of `plan` straight into `dst` (a transport's buffer) in wire form:
    /// the medium's blocks land there without an intermediate copy unless PI has to
    /// be checked or interleaved. Returns the bytes written.
    pub(super) fn read_into(
        &self,
        plan: &CommandPlan,
        lba: u64,
        blocks: u32,
        dst: &mut [u8],
    ) -> Result<usize, SenseReason> {
        let len = self.desc.block_size as usize * blocks as usize;
        let _range = self.lba_locks.read(lba, u64::from(blocks));
        let n = if self.pi.is_none() || plan.prot.mem.is_none() {
            let dst = dst.get_mut(..len).ok_or(SenseReason::DataLength)?;
            self.backend.read_blocks(lba, dst, None).map_err(read_err)?;
            len
        } else {
            let d = self.read_dix(lba, blocks)?;
            wire::to_wire_into(&plan.prot, &d.data, d.pi.as_deref(), dst)
                .map_err(|e| self.wire_err(e))?
        };
        self.count_read(len);
        Ok(n)
    }

    /// A READ of `plan` whose blocks go with their stored PI (the plan passes PI)
    /// straight into `data` and `pi` in DIX form: the caller's hardware interleaves
    /// them on the way out. Returns the bytes written (data and PI).
    pub(super) fn read_dix_into(
        &self,
        plan: &CommandPlan,
        data: &mut [u8],
        pi: &mut [u8],
    ) -> Result<usize, SenseReason> {
        // The transport sized the buffers from the same CDB: a mismatch is a bug.
        let (Cdb::ReadWrite(rw), Some(_)) = (&plan.cdb, self.pi) else {
            return Err(SenseReason::InternalFailure);
        };
        let blocks = rw.blocks as usize;
        let len = self.desc.block_size as usize * blocks;
        let (Some(data), Some(pi)) = (data.get_mut(..len), pi.get_mut(..TUPLE_SIZE * blocks))
        else {
            return Err(SenseReason::InternalFailure);
        };
        let _range = self.lba_locks.read(rw.lba, u64::from(rw.blocks));
        self.backend
            .read_blocks(rw.lba, data, Some(pi))
            .map_err(read_err)?;
        wire::verify_dix(&plan.prot, data, pi).map_err(|e| self.wire_err(e))?;
        self.count_read(len);
        Ok(len + pi.len())
    }

    pub(super) fn sbc_execute(
        &self,
        plan: &CommandPlan,
        out: DataOut<'_>,
    ) -> Result<Dix, SenseReason> {
        match plan.cdb {
            Cdb::ReadWrite(rw) if rw.blocks == 0 => Ok(Dix::default()),
            Cdb::ReadWrite(rw) => match rw.kind {
                RwKind::Read => {
                    let d = {
                        let _range = self.lba_locks.read(rw.lba, u64::from(rw.blocks));
                        self.read_dix(rw.lba, rw.blocks)?
                    };
                    self.count_read(d.data.len());
                    Ok(d)
                }
                RwKind::Write | RwKind::WriteAndVerify => {
                    let (data, pi) = self.block_data(&plan.prot, out)?;
                    let fua = self.fua(rw.fua);
                    {
                        let _range = self.lba_locks.write(rw.lba, u64::from(rw.blocks));
                        self.backend
                            .write_blocks(rw.lba, &data, pi.as_deref(), fua)
                            .map_err(write_err)?;
                    }
                    self.count_write(data.len());
                    Ok(Dix::default())
                }
                RwKind::Verify => self.verify(plan, rw.lba, rw.blocks, rw.bytchk, out),
            },
            Cdb::WriteSame(ws) => self.write_same(plan, ws.lba, ws.blocks, ws.unmap, ws.ndob, out),
            Cdb::CompareAndWrite(c) if c.blocks == 0 => Ok(Dix::default()),
            Cdb::CompareAndWrite(c) => {
                let (data, pi) = self.block_data(&plan.prot, out)?;
                let half = data.len() / 2;
                let fua = self.fua(c.fua);
                let _range = self.lba_locks.write(c.lba, u64::from(c.blocks));
                let medium = self.read_dix(c.lba, u32::from(c.blocks))?;
                if let Some(off) = first_difference(&data[..half], &medium.data) {
                    return Err(SenseReason::Miscompare { offset: off as u64 });
                }
                let pi_half = pi.as_deref().map(|p| &p[p.len() / 2..]);
                self.backend
                    .write_blocks(c.lba, &data[half..], pi_half, fua)
                    .map_err(write_err)?;
                self.count_write(half);
                Ok(Dix::default())
            }
            Cdb::SynchronizeCache(_) => {
                self.backend.sync().map_err(write_err)?;
                Ok(Dix::default())
            }
            Cdb::PreFetch(_) | Cdb::StartStopUnit(_) | Cdb::PreventAllowMediumRemoval { .. } => {
                Ok(Dix::default())
            }
            Cdb::Unmap { param_len, .. } => {
                let list = match out {
                    DataOut::Bytes(b) => b,
                    _ => &[],
                };
                self.unmap(param_len as usize, list)?;
                Ok(Dix::default())
            }
            Cdb::GetLbaStatus { lba, alloc_len } => Ok(Dix {
                data: self.get_lba_status(lba, alloc_len)?,
                pi: None,
            }),
            Cdb::ReadCapacity10 { .. } => {
                let last = u32::try_from(self.blocks() - 1).unwrap_or(u32::MAX);
                let mut d = last.to_be_bytes().to_vec();
                d.extend_from_slice(&self.desc.block_size.to_be_bytes());
                Ok(Dix { data: d, pi: None })
            }
            Cdb::ReadCapacity16 { alloc_len, .. } => {
                let mut d = vec![0u8; 32];
                d[0..8].copy_from_slice(&(self.blocks() - 1).to_be_bytes());
                d[8..12].copy_from_slice(&self.desc.block_size.to_be_bytes());
                if self.pi.is_some() {
                    // P_TYPE = type - 1, PROT_EN; P_I_EXPONENT 0 (one interval per block).
                    d[12] = (self.desc.protection.pi_type - 1) << 1 | 1;
                }
                if self.desc.thin_provisioning {
                    d[14] = 0x80 | 0x40; // LBPME, LBPRZ
                }
                d.truncate(alloc_len as usize);
                Ok(Dix { data: d, pi: None })
            }
            _ => Err(SenseReason::InvalidOpcode),
        }
    }

    fn verify(
        &self,
        plan: &CommandPlan,
        lba: u64,
        blocks: u32,
        bytchk: u8,
        out: DataOut<'_>,
    ) -> Result<Dix, SenseReason> {
        let medium = {
            let _range = self.lba_locks.read(lba, u64::from(blocks));
            self.read_dix(lba, blocks)?
        };
        if bytchk == 0 {
            if let Some(pi) = &medium.pi {
                wire::verify_dix(&plan.prot, &medium.data, pi).map_err(|e| self.wire_err(e))?;
            }
            return Ok(Dix::default());
        }
        let (data, _) = self.block_data(&plan.prot, out)?;
        let bs = self.desc.block_size as usize;
        if bytchk == 1 {
            if let Some(off) = first_difference(&data, &medium.data) {
                return Err(SenseReason::Miscompare { offset: off as u64 });
            }
        } else {
            for (i, block) in medium.data.chunks_exact(bs).enumerate() {
                if let Some(off) = first_difference(&data, block) {
                    return Err(SenseReason::Miscompare {
                        offset: (i * bs + off) as u64,
                    });
                }
            }
        }
        Ok(Dix::default())
    }

    fn write_same(
        &self,
        plan: &CommandPlan,
        lba: u64,
        blocks: u32,
        unmap: bool,
        ndob: bool,
        out: DataOut<'_>,
    ) -> Result<Dix, SenseReason> {
        let bs = self.desc.block_size as usize;
        let (block, pi): BlockData<'_> = if ndob {
            (Cow::Owned(vec![0u8; bs]), None)
        } else {
            self.block_data(&plan.prot, out)?
        };
        let n = u64::from(blocks);
        let fua = self.fua(false);
        let _range = self.lba_locks.write(lba, n);
        if unmap && block.iter().all(|&b| b == 0) {
            // Deallocated blocks read as zeros (LBPRZ), so unmapping stores the same data.
            self.backend.unmap(lba, n).map_err(write_err)?;
            if fua {
                self.backend.sync().map_err(write_err)?;
            }
            return Ok(Dix::default());
        }
        self.backend
            .write_same(lba, n, &block, false)
            .map_err(write_err)?;
        if let Some(mem) = plan.prot.mem {
            // The tuple of the first block: received (PASS), generated (INSERT), or
            // generated for NDOB's zero block; later blocks follow the ref tag rules.
            let first = match &pi {
                Some(p) => Tuple::from_slice(p).unwrap_or(Tuple::FORMATTED),
                None => mem.tuple_for(t10pi::guard(mem.bg_type, mem.bg, &block), 0),
            };
            let escaped = mem.is_escaped(&first);
            let per_chunk = (CHUNK_BYTES / TUPLE_SIZE) as u64;
            let mut buf = Vec::with_capacity(per_chunk.min(n) as usize * TUPLE_SIZE);
            let mut done = 0u64;
            while done < n {
                let k = per_chunk.min(n - done);
                buf.clear();
                for i in done..done + k {
                    let mut t = first;
                    if mem.ref_remap && !escaped {
                        t.ref_tag = first.ref_tag.wrapping_add(i as u32);
                    }
                    buf.extend_from_slice(&t.to_bytes());
                }
                self.backend
                    .write_pi(lba + done, &buf, false)
                    .map_err(write_err)?;
                done += k;
            }
        }
        if fua {
            self.backend.sync().map_err(write_err)?;
        }
        self.count_write(bs * blocks as usize);
        Ok(Dix::default())
    }

    fn unmap(&self, param_len: usize, list: &[u8]) -> Result<(), SenseReason> {
        if param_len == 0 {
            return Ok(());
        }
        if param_len < 8 || list.len() < 8 {
            return Err(SenseReason::ParameterListLength);
        }
        let list = &list[..param_len.min(list.len())];
        let bd_len = u16::from_be_bytes([list[2], list[3]]) as usize;
        let avail = bd_len.min(list.len() - 8);
        let count = avail / 16;
        if count as u32 > MAX_UNMAP_DESCRIPTORS {
            return Err(SenseReason::param(2, None));
        }
        let mut ranges = Vec::with_capacity(count);
        for i in 0..count {
            let off = 8 + 16 * i;
            let d = &list[off..off + 16];
            let lba = u64::from_be_bytes(d[0..8].try_into().unwrap_or_default());
            let n = u32::from_be_bytes(d[8..12].try_into().unwrap_or_default());
            if n > MAX_UNMAP_BLOCKS {
                return Err(SenseReason::param((off + 8) as u16, None));
            }
            self.check_range(lba, u64::from(n))?;
            if n > 0 {
                ranges.push((lba, u64::from(n)));
            }
        }
        for (lba, n) in ranges {
            let _range = self.lba_locks.write(lba, n);
            self.backend.unmap(lba, n).map_err(write_err)?;
        }
        if self.fua(false) {
            self.backend.sync().map_err(write_err)?;
        }
        Ok(())
    }

    fn get_lba_status(&self, lba: u64, alloc_len: u32) -> Result<Vec<u8>, SenseReason> {
        let max_desc = ((alloc_len as usize).saturating_sub(8) / 16).clamp(1, 64);
        let mut descs = Vec::new();
        let mut cur = lba;
        while cur < self.blocks() && descs.len() < max_desc * 16 {
            let st = if self.desc.thin_provisioning {
                self.backend.lba_status(cur).map_err(read_err)?
            } else {
                // Fully provisioned (LBPME clear): every block is mapped.
                super::backend::LbaStatus {
                    mapped: true,
                    blocks: self.blocks() - cur,
                }
            };
            let n = st.blocks.clamp(1, u64::from(u32::MAX));
            descs.extend_from_slice(&cur.to_be_bytes());
            descs.extend_from_slice(&(n as u32).to_be_bytes());
            descs.extend_from_slice(&[u8::from(!st.mapped), 0, 0, 0]);
            cur += n;
        }
        let mut d = ((descs.len() + 4) as u32).to_be_bytes().to_vec();
        d.extend_from_slice(&[0; 4]);
        d.extend(descs);
        d.truncate(alloc_len as usize);
        Ok(d)
    }
}
