//! One connection's verbs resources and the data movement of one SCSI command: the
//! queue pair with its send and receive CQs, the receive ring, the send buffer, and a
//! pool of one command buffer plus one signature MR (the connection runs one command
//! at a time). Data-Out is fetched with RDMA READs from the initiator's Write STag;
//! Data-In is delivered with RDMA WRITEs to its Read STag; when the command's plan
//! puts PI on the wire both go through the signature MR and its status is checked
//! after every transfer.

use std::sync::Arc;
use std::time::Duration;

use iscsi::iser::{RdmaOp, ISER_HEADER_LEN};
use iscsi::pdu::BHS_LEN;
use verbs::{
    AccessFlags, Cq, DmaBuf, Mr, Pd, Qp, QpInitAttr, RecvWr, SendWr, Sge, SigAttrs, SigErr, SigMr,
    WcOpcode, WorkCompletion,
};

use super::IserError;

/// How long one work request may take before the connection is declared dead.
pub const WR_TIMEOUT: Duration = Duration::from_secs(30);

/// Room for AHS (extended CDB, bidirectional read length) in a receive buffer.
pub const AHS_ROOM: usize = 260;

/// Largest data transfer of one command the portal buffers.
pub const MAX_TRANSFER: usize = 64 << 20;

/// The login receive buffer's data room (MaxRecvDataSegmentLength during login).
pub const LOGIN_DATA: usize = 8192;

/// `wr_id` of the single login receive.
pub const LOGIN_WR: u64 = u64::MAX;

/// Bytes of one receive buffer for `data` bytes of data segment.
pub fn recv_slot_len(data: u32) -> usize {
    ISER_HEADER_LEN + BHS_LEN + AHS_ROOM + data as usize + 4
}

/// The verbs objects of one connection.
#[derive(Debug)]
pub struct Fabric {
    /// Protection domain.
    pub pd: Pd,
    /// CQ of the send queue (SENDs, RDMA, registrations).
    pub send_cq: Cq,
    /// CQ of the receive queue.
    pub recv_cq: Cq,
    /// The RC queue pair.
    pub qp: Qp,
    next_wr: u64,
}

impl Fabric {
    /// PD, CQs and a QP deep enough for `recv_depth` receives.
    pub fn new(device: &verbs::Context, recv_depth: u32) -> Result<Fabric, IserError> {
        let pd = device.alloc_pd()?;
        let send_cq = device.create_cq(256)?;
        let recv_cq = device.create_cq(recv_depth + 16)?;
        let attr = QpInitAttr {
            max_send_wr: 128,
            max_recv_wr: recv_depth + 1,
            max_send_sge: 2,
            max_recv_sge: 1,
            ..QpInitAttr::default()
        };
        let qp = pd.create_qp(&send_cq, &recv_cq, &attr)?;
        Ok(Fabric {
            pd,
            send_cq,
            recv_cq,
            qp,
            next_wr: 0,
        })
    }

    /// Posts `wrs` (their `wr_id`s are replaced) and waits for every completion.
    pub async fn run(&mut self, mut wrs: Vec<SendWr>, what: &'static str) -> Result<(), IserError> {
        let first = self.next_wr;
        for wr in &mut wrs {
            wr.wr_id = self.next_wr;
            self.next_wr = self.next_wr.wrapping_add(1) & (u64::MAX >> 1);
        }
        let n = wrs.len();
        if n == 0 {
            return Ok(());
        }
        // Post in chunks the send queue can hold.
        let mut done = 0usize;
        let mut posted = 0usize;
        let mut out = Vec::with_capacity(16);
        while done < n {
            if posted < n && posted - done < 64 {
                let end = (posted + 64 - (posted - done)).min(n);
                self.qp.post_send(&wrs[posted..end])?;
                posted = end;
            }
            out.clear();
            match tokio::time::timeout(WR_TIMEOUT, self.send_cq.next_batch(&mut out, 16)).await {
                Err(_) => return Err(IserError::Timeout(what)),
                Ok(r) => {
                    r?;
                }
            }
            for wc in &out {
                check_wc(wc, what)?;
                if wc.wr_id.wrapping_sub(first) & (u64::MAX >> 1) < n as u64 {
                    done += 1;
                }
            }
        }
        // Signature error CQEs are consumed (and recorded on the MR) while polling.
        out.clear();
        self.send_cq.poll(&mut out, 16)?;
        for wc in &out {
            check_wc(wc, what)?;
        }
        Ok(())
    }
}

fn check_wc(wc: &WorkCompletion, what: &'static str) -> Result<(), IserError> {
    if wc.is_ok() {
        Ok(())
    } else if wc.status == verbs::WcStatus::WrFlushErr {
        Err(IserError::Closed)
    } else {
        Err(IserError::Completion {
            wr_id: wc.wr_id,
            what,
            status: wc.status,
        })
    }
}

/// The receive buffers: `slots` buffers of `slot_len` bytes in one registration.
#[derive(Debug)]
pub struct RecvRing {
    mr: Mr,
    slot_len: usize,
    slots: usize,
}

impl RecvRing {
    /// Registers `slots` buffers of `slot_len` bytes.
    pub fn new(pd: &Pd, slots: usize, slot_len: usize) -> Result<RecvRing, IserError> {
        let len = slots
            .checked_mul(slot_len)
            .ok_or(IserError::Protocol("receive ring too large".into()))?;
        let mr = pd.reg_mr(len, AccessFlags::LOCAL_WRITE)?;
        Ok(RecvRing {
            mr,
            slot_len,
            slots,
        })
    }

    /// Number of buffers.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// The receive work request of buffer `slot`.
    pub fn recv_wr(&self, slot: usize) -> RecvWr {
        RecvWr::new(
            slot as u64,
            self.mr.sge(slot * self.slot_len, self.slot_len as u32),
        )
    }

    /// Posts every buffer.
    pub fn post_all(&self, qp: &Qp) -> Result<(), IserError> {
        let wrs: Vec<RecvWr> = (0..self.slots).map(|s| self.recv_wr(s)).collect();
        qp.post_recv(&wrs)?;
        Ok(())
    }

    /// Copies the `len` received bytes out of buffer `slot`.
    pub fn take(&self, slot: usize, len: usize) -> Result<Vec<u8>, IserError> {
        if slot >= self.slots || len > self.slot_len {
            return Err(IserError::Protocol(format!(
                "receive completion for slot {slot} with {len} bytes"
            )));
        }
        Ok(self.mr.to_vec(slot * self.slot_len, len)?)
    }
}

/// The buffer every SEND goes out of (one in flight at a time).
#[derive(Debug)]
pub struct SendBuf {
    mr: Mr,
}

impl SendBuf {
    /// A send buffer of `len` bytes.
    pub fn new(pd: &Pd, len: usize) -> Result<SendBuf, IserError> {
        Ok(SendBuf {
            mr: pd.reg_mr(len, AccessFlags::NONE)?,
        })
    }

    /// Copies `msg` in and returns its SGE.
    pub fn load(&self, msg: &[u8]) -> Result<Sge, IserError> {
        if msg.len() > self.mr.len() {
            return Err(IserError::Protocol(format!(
                "{} byte message exceeds the {} byte send buffer",
                msg.len(),
                self.mr.len()
            )));
        }
        self.mr.write_at(0, msg)?;
        Ok(self.mr.sge(0, msg.len() as u32))
    }
}

/// The command buffer and signature MR of a connection.
#[derive(Debug)]
pub struct CmdPool {
    data: Option<Mr>,
    sig: SigMr,
}

impl CmdPool {
    /// A pool with one signature MR (one data and one metadata SGE).
    pub fn new(pd: &Pd) -> Result<CmdPool, IserError> {
        Ok(CmdPool {
            data: None,
            sig: pd.alloc_mr_integrity(1, 1)?,
        })
    }

    /// A registered buffer of at least `len` bytes (reused when big enough).
    pub fn buffer(&mut self, pd: &Pd, len: usize) -> Result<&Mr, IserError> {
        if len > MAX_TRANSFER {
            return Err(IserError::Protocol(format!(
                "data transfer of {len} bytes exceeds {MAX_TRANSFER}"
            )));
        }
        let fits = self.data.as_ref().is_some_and(|m| m.len() >= len);
        if !fits {
            // Whole pages, at least 64 KiB, so small commands do not re-register.
            let want = len.max(64 << 10).next_multiple_of(verbs::buf::PAGE_SIZE);
            self.data = None;
            let buf = DmaBuf::new(want)?;
            self.data = Some(pd.reg_buf(Arc::clone(&buf), 0, want, AccessFlags::LOCAL_WRITE)?);
        }
        self.data
            .as_ref()
            .ok_or(IserError::Protocol("command buffer missing".into()))
    }

    /// The current command buffer.
    pub fn data(&self) -> Option<&Mr> {
        self.data.as_ref()
    }

    /// The signature MR.
    pub fn sig(&self) -> &SigMr {
        &self.sig
    }
}

/// The registration binding the signature MR over the first `len` bytes of the
/// command buffer. Posted in the same chain as the RDMA operations that use it: the
/// send queue executes in order, as a ULP chains IB_WR_REG_MR_INTEGRITY before its
/// RDMA work requests.
pub fn sig_reg_wr(pool: &CmdPool, len: usize, attrs: SigAttrs) -> Result<SendWr, IserError> {
    let data = pool
        .data()
        .ok_or(IserError::Protocol("command buffer missing".into()))?;
    // A status never read (an earlier transfer failed midway) would block the
    // registration; it belongs to a command that is already answered.
    let _ = pool.sig.check_status()?;
    Ok(SendWr::reg_mr_integrity(
        0,
        pool.sig.lkey(),
        data.sge(0, len as u32),
        None,
        attrs,
        AccessFlags::LOCAL_WRITE,
    ))
}

/// Where one RDMA operation's local side lies: plain buffer or signature MR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalView {
    /// The command buffer's own key.
    Plain,
    /// The signature MR bound over the command buffer.
    Signature,
}

fn local_sge(pool: &CmdPool, view: LocalView, offset: u32, len: u32) -> Result<Sge, IserError> {
    let data = pool
        .data()
        .ok_or(IserError::Protocol("command buffer missing".into()))?;
    let lkey = match view {
        LocalView::Plain => data.lkey(),
        LocalView::Signature => pool.sig.lkey(),
    };
    Ok(Sge {
        addr: data.addr() + u64::from(offset),
        length: len,
        lkey,
    })
}

/// RDMA READs of `ops` into the command buffer (Data-Out).
pub fn read_wrs(pool: &CmdPool, ops: &[RdmaOp], view: LocalView) -> Result<Vec<SendWr>, IserError> {
    ops.iter()
        .map(|op| {
            let sge = local_sge(pool, view, op.buffer_offset, op.length)?;
            Ok(SendWr::rdma_read(0, sge, op.remote.va, op.remote.stag))
        })
        .collect()
}

/// RDMA WRITEs of `ops` out of the command buffer (Data-In).
pub fn write_wrs(
    pool: &CmdPool,
    ops: &[RdmaOp],
    view: LocalView,
) -> Result<Vec<SendWr>, IserError> {
    ops.iter()
        .map(|op| {
            let sge = local_sge(pool, view, op.buffer_offset, op.length)?;
            Ok(SendWr::rdma_write(0, sge, op.remote.va, op.remote.stag))
        })
        .collect()
}

/// `check_mr_status` of the signature MR after a transfer.
pub fn sig_status(pool: &CmdPool) -> Result<Option<SigErr>, IserError> {
    Ok(pool.sig.check_status()?)
}

/// Keeps only the parts of `ops` below `limit` bytes of the buffer.
pub fn clip(ops: &[RdmaOp], limit: u32) -> Vec<RdmaOp> {
    ops.iter()
        .filter(|op| op.buffer_offset < limit)
        .map(|op| RdmaOp {
            length: op.length.min(limit - op.buffer_offset),
            ..*op
        })
        .collect()
}

/// Whether a completion is a receive.
pub fn is_recv(wc: &WorkCompletion) -> bool {
    wc.opcode == WcOpcode::Recv
}
