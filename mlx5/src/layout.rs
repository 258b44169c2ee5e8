//! Byte layouts of everything the driver half and the device half exchange: send
//! WQE segments (control, remote address, data, UMR control, mkey context, KLM,
//! strided-block, BSF, SET_PSV), receive WQEs, and the 64-byte CQEs (normal, error,
//! signature error). Field offsets and values follow the kernel's
//! `include/linux/mlx5/qp.h` and `device.h`; all multi-byte fields are big-endian.

use verbs::sig::{GuardType, SigDomain, T10DifDomain};

/// Size of a send WQE basic block.
pub const WQE_BB: usize = 64;
/// Size of a descriptor segment unit ("ds").
pub const WQE_DS: usize = 16;
/// Size of a CQE.
pub const CQE_SIZE: usize = 64;

/// Send WQE opcodes (`MLX5_OPCODE_*`).
pub mod opcode {
    /// NOP (what a cancelled WQE becomes).
    pub const NOP: u8 = 0x00;
    /// SEND with invalidate.
    pub const SEND_INVAL: u8 = 0x01;
    /// RDMA WRITE.
    pub const RDMA_WRITE: u8 = 0x08;
    /// SEND.
    pub const SEND: u8 = 0x0a;
    /// RDMA READ.
    pub const RDMA_READ: u8 = 0x10;
    /// SET_PSV.
    pub const SET_PSV: u8 = 0x20;
    /// UMR (REG_MR, REG_MR_INTEGRITY, LOCAL_INV).
    pub const UMR: u8 = 0x25;
}

/// CQE opcodes (high nibble of `op_own`).
pub mod cqe_op {
    /// Requester completion.
    pub const REQ: u8 = 0x0;
    /// Responder completion of a SEND.
    pub const RESP_SEND: u8 = 0x2;
    /// Responder completion of a SEND with invalidate.
    pub const RESP_SEND_INV: u8 = 0x4;
    /// Signature error.
    pub const SIG_ERR: u8 = 0xc;
    /// Requester error.
    pub const REQ_ERR: u8 = 0xd;
    /// Responder error.
    pub const RESP_ERR: u8 = 0xe;
    /// Never written by the device (initial ring content).
    pub const INVALID: u8 = 0xf;
}

/// Error CQE syndromes (`MLX5_CQE_SYNDROME_*`).
pub mod syndrome {
    /// Local length error.
    pub const LOCAL_LENGTH_ERR: u8 = 0x01;
    /// Local QP operation error.
    pub const LOCAL_QP_OP_ERR: u8 = 0x02;
    /// Local protection error.
    pub const LOCAL_PROT_ERR: u8 = 0x04;
    /// Flushed.
    pub const WR_FLUSH_ERR: u8 = 0x05;
    /// Memory registration failed.
    pub const MW_BIND_ERR: u8 = 0x06;
    /// Bad response.
    pub const BAD_RESP_ERR: u8 = 0x10;
    /// Local access error.
    pub const LOCAL_ACCESS_ERR: u8 = 0x11;
    /// Remote invalid request.
    pub const REMOTE_INVAL_REQ_ERR: u8 = 0x12;
    /// Remote access error.
    pub const REMOTE_ACCESS_ERR: u8 = 0x13;
    /// Remote operation error.
    pub const REMOTE_OP_ERR: u8 = 0x14;
    /// Transport retries exhausted.
    pub const TRANSPORT_RETRY_EXC_ERR: u8 = 0x15;
    /// RNR retries exhausted.
    pub const RNR_RETRY_EXC_ERR: u8 = 0x16;
}

/// `fm_ce_se` bits of the control segment.
pub const CTRL_CQ_UPDATE: u8 = 2 << 2;
/// Solicited event.
pub const CTRL_SOLICITED: u8 = 1 << 1;
/// Fence.
pub const CTRL_FENCE: u8 = 2 << 5;

/// UMR control flag: translation inline.
pub const UMR_INLINE: u8 = 1 << 7;
/// mkey status: free (LOCAL_INV).
pub const MKEY_STATUS_FREE: u8 = 1 << 6;
/// mkey `flags_pd`: remote invalidation allowed.
pub const MKEY_REMOTE_INVAL: u32 = 1 << 24;
/// mkey `flags_pd`: a BSF follows (signature mkey).
pub const MKEY_BSF_EN: u32 = 1 << 30;
/// BSF size in octowords.
pub const MKEY_BSF_OCTO_SIZE: u16 = 4;
/// mkey access mode: KLM list.
pub const MKC_ACCESS_MODE_KLMS: u8 = 0x2;
/// mkey permission bits (in `flags`).
pub const PERM_LOCAL_READ: u8 = 1 << 2;
/// Local write.
pub const PERM_LOCAL_WRITE: u8 = 1 << 3;
/// Remote read.
pub const PERM_REMOTE_READ: u8 = 1 << 4;
/// Remote write.
pub const PERM_REMOTE_WRITE: u8 = 1 << 5;
/// Strided block operation code.
pub const STRIDE_BLOCK_OP: u32 = 0x400;

/// BSF inline-segment and basic-segment bits (qp.h).
pub mod bsf {
    /// Inline segment valid.
    pub const INL_VALID: u16 = 1 << 15;
    /// Refresh DIF.
    pub const REFRESH_DIF: u16 = 1 << 14;
    /// Repeating block.
    pub const REPEAT_BLOCK: u8 = 1 << 7;
    /// Increment the ref tag per block.
    pub const INC_REFTAG: u8 = 1 << 6;
    /// App-tag escape.
    pub const APPTAG_ESCAPE: u8 = 0x1;
    /// App+ref-tag escape.
    pub const APPREF_ESCAPE: u8 = 0x2;
    /// Copy guard.
    pub const CPY_GRD_MASK: u8 = 0xc0;
    /// Copy app tag.
    pub const CPY_APP_MASK: u8 = 0x30;
    /// Copy ref tag.
    pub const CPY_REF_MASK: u8 = 0x0f;
    /// `sig_type` CRC guard.
    pub const DIF_CRC: u8 = 0x1;
    /// `sig_type` IP-checksum guard.
    pub const DIF_IPCS: u8 = 0x2;
    /// `bsf_size_sbs`: BSF size bit.
    pub const BSF_SIZE: u8 = 1 << 7;
    /// `bsf_size_sbs`: memory and wire share the block structure.
    pub const SAME_BLOCK_STRUCTURE: u8 = 1 << 4;
}

/// Signature error syndrome bits of the SIGERR CQE.
pub mod sig_syndrome {
    /// Guard mismatch.
    pub const GUARD: u16 = 1 << 13;
    /// App tag mismatch.
    pub const APPTAG: u16 = 1 << 12;
    /// Ref tag mismatch.
    pub const REFTAG: u16 = 1 << 11;
}

/// A malformed WQE or CQE: the device treats it as a local QP operation error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The buffer is shorter than the segment.
    #[error("{what} needs {need} bytes, {have} available")]
    Short {
        /// Segment name.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// A field has a value the device does not implement.
    #[error("{what} has unsupported value {value:#x}")]
    Unsupported {
        /// Field name.
        what: &'static str,
        /// Its value.
        value: u64,
    },
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}
fn need(what: &'static str, b: &[u8], n: usize) -> Result<(), LayoutError> {
    if b.len() < n {
        Err(LayoutError::Short {
            what,
            need: n,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}

/// `mlx5_wqe_ctrl_seg` (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CtrlSeg {
    /// Opcode modifier.
    pub opmod: u8,
    /// WQE index (in basic blocks, wrapping 16 bits).
    pub wqe_index: u16,
    /// Opcode.
    pub opcode: u8,
    /// QP number (24 bits).
    pub qpn: u32,
    /// WQE size in 16-byte units (6 bits).
    pub ds: u8,
    /// Fence / CQ update / solicited bits.
    pub fm_ce_se: u8,
    /// Immediate, invalidate rkey, or UMR mkey.
    pub imm: u32,
}

impl CtrlSeg {
    /// Size.
    pub const SIZE: usize = 16;
    /// Writes the segment into `b[..16]`.
    pub fn encode(&self, b: &mut [u8]) {
        put32(
            b,
            0,
            u32::from(self.opmod) << 24 | u32::from(self.wqe_index) << 8 | u32::from(self.opcode),
        );
        put32(
            b,
            4,
            (self.qpn & 0xff_ffff) << 8 | u32::from(self.ds & 0x3f),
        );
        b[8] = 0;
        b[9] = 0;
        b[10] = 0;
        b[11] = self.fm_ce_se;
        put32(b, 12, self.imm);
    }
    /// Reads the segment.
    pub fn decode(b: &[u8]) -> Result<CtrlSeg, LayoutError> {
        need("ctrl segment", b, Self::SIZE)?;
        let w0 = be32(b, 0);
        let w1 = be32(b, 4);
        Ok(CtrlSeg {
            opmod: (w0 >> 24) as u8,
            wqe_index: (w0 >> 8) as u16,
            opcode: w0 as u8,
            qpn: w1 >> 8,
            ds: (w1 & 0x3f) as u8,
            fm_ce_se: b[11],
            imm: be32(b, 12),
        })
    }
    /// Number of 64-byte basic blocks the WQE occupies.
    pub fn num_bbs(&self) -> usize {
        (usize::from(self.ds) * WQE_DS).div_ceil(WQE_BB).max(1)
    }
}

/// `mlx5_wqe_raddr_seg` (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RaddrSeg {
    /// Remote address.
    pub raddr: u64,
    /// Remote key.
    pub rkey: u32,
}

impl RaddrSeg {
    /// Size.
    pub const SIZE: usize = 16;
    /// Writes the segment.
    pub fn encode(&self, b: &mut [u8]) {
        put64(b, 0, self.raddr);
        put32(b, 8, self.rkey);
        put32(b, 12, 0);
    }
    /// Reads the segment.
    pub fn decode(b: &[u8]) -> Result<RaddrSeg, LayoutError> {
        need("raddr segment", b, Self::SIZE)?;
        Ok(RaddrSeg {
            raddr: be64(b, 0),
            rkey: be32(b, 8),
        })
    }
}

/// `mlx5_wqe_data_seg` (16 bytes), used in send and receive WQEs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DataSeg {
    /// Byte count.
    pub byte_count: u32,
    /// Local key (`0x100`, `MLX5_INVALID_LKEY`, terminates a receive list).
    pub lkey: u32,
    /// Address.
    pub addr: u64,
}

impl DataSeg {
    /// Size.
    pub const SIZE: usize = 16;
    /// Terminator lkey of a short receive scatter list.
    pub const INVALID_LKEY: u32 = 0x100;
    /// Writes the segment.
    pub fn encode(&self, b: &mut [u8]) {
        put32(b, 0, self.byte_count);
        put32(b, 4, self.lkey);
        put64(b, 8, self.addr);
    }
    /// Reads the segment.
    pub fn decode(b: &[u8]) -> Result<DataSeg, LayoutError> {
        need("data segment", b, Self::SIZE)?;
        Ok(DataSeg {
            byte_count: be32(b, 0),
            lkey: be32(b, 4),
            addr: be64(b, 8),
        })
    }
}

/// `mlx5_wqe_umr_ctrl_seg` (48 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UmrCtrlSeg {
    /// Flags (`UMR_INLINE`).
    pub flags: u8,
    /// Translation size in octowords.
    pub xlt_octowords: u16,
    /// BSF size in octowords (signature UMR).
    pub bsf_octowords: u16,
    /// Which mkey fields are modified.
    pub mkey_mask: u64,
}

impl UmrCtrlSeg {
    /// Size.
    pub const SIZE: usize = 48;
    /// Writes the segment.
    pub fn encode(&self, b: &mut [u8]) {
        b[..Self::SIZE].fill(0);
        b[0] = self.flags;
        put16(b, 4, self.xlt_octowords);
        put16(b, 6, self.bsf_octowords);
        put64(b, 8, self.mkey_mask);
    }
    /// Reads the segment.
    pub fn decode(b: &[u8]) -> Result<UmrCtrlSeg, LayoutError> {
        need("UMR control segment", b, Self::SIZE)?;
        Ok(UmrCtrlSeg {
            flags: b[0],
            xlt_octowords: be16(b, 4),
            bsf_octowords: be16(b, 6),
            mkey_mask: be64(b, 8),
        })
    }
}

/// `mlx5_mkey_seg` (64 bytes), the mkey context carried by a UMR.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct MkeySeg {
    /// Status (`MKEY_STATUS_FREE` to invalidate).
    pub status: u8,
    /// Access mode (low 2 bits) and permission bits.
    pub flags: u8,
    /// `qpn << 8 | mkey[7:0]`.
    pub qpn_mkey7_0: u32,
    /// `MKEY_REMOTE_INVAL | MKEY_BSF_EN | pdn`.
    pub flags_pd: u32,
    /// Start (I/O virtual) address.
    pub start_addr: u64,
    /// Length.
    pub len: u64,
    /// BSF size in octowords.
    pub bsfs_octo_size: u32,
    /// Translation size in octowords.
    pub xlt_oct_size: u32,
}

impl MkeySeg {
    /// Size.
    pub const SIZE: usize = 64;
    /// Writes the segment.
    pub fn encode(&self, b: &mut [u8]) {
        b[..Self::SIZE].fill(0);
        b[0] = self.status;
        b[2] = self.flags;
        put32(b, 4, self.qpn_mkey7_0);
        put32(b, 12, self.flags_pd);
        put64(b, 16, self.start_addr);
        put64(b, 24, self.len);
        put32(b, 32, self.bsfs_octo_size);
        put32(b, 52, self.xlt_oct_size);
    }
    /// Reads the segment.
    pub fn decode(b: &[u8]) -> Result<MkeySeg, LayoutError> {
        need("mkey segment", b, Self::SIZE)?;
        Ok(MkeySeg {
            status: b[0],
            flags: b[2],
            qpn_mkey7_0: be32(b, 4),
            flags_pd: be32(b, 12),
            start_addr: be64(b, 16),
            len: be64(b, 24),
            bsfs_octo_size: be32(b, 32),
            xlt_oct_size: be32(b, 52),
        })
    }
}

/// `mlx5_klm` (16 bytes): one contiguous piece of an indirect mkey.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Klm {
    /// Byte count.
    pub bcount: u32,
    /// Key of the memory it points into.
    pub key: u32,
    /// Address within that key.
    pub va: u64,
}

impl Klm {
    /// Size.
    pub const SIZE: usize = 16;
    /// Writes the entry.
    pub fn encode(&self, b: &mut [u8]) {
        put32(b, 0, self.bcount);
        put32(b, 4, self.key);
        put64(b, 8, self.va);
    }
    /// Reads the entry.
    pub fn decode(b: &[u8]) -> Result<Klm, LayoutError> {
        need("KLM", b, Self::SIZE)?;
        Ok(Klm {
            bcount: be32(b, 0),
            key: be32(b, 4),
            va: be64(b, 8),
        })
    }
}

/// `mlx5_stride_block_ctrl_seg` (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StrideBlockCtrl {
    /// Bytes per cycle: interval + 8.
    pub bcount_per_cycle: u32,
    /// `STRIDE_BLOCK_OP`.
    pub op: u32,
    /// Number of cycles (blocks).
    pub repeat_count: u32,
    /// Number of entries that follow (2: data, PI).
    pub num_entries: u16,
}

impl StrideBlockCtrl {
    /// Size.
    pub const SIZE: usize = 16;
    /// Writes the segment.
    pub fn encode(&self, b: &mut [u8]) {
        put32(b, 0, self.bcount_per_cycle);
        put32(b, 4, self.op);
        put32(b, 8, self.repeat_count);
        put16(b, 12, 0);
        put16(b, 14, self.num_entries);
    }
    /// Reads the segment.
    pub fn decode(b: &[u8]) -> Result<StrideBlockCtrl, LayoutError> {
        need("stride block control", b, Self::SIZE)?;
        Ok(StrideBlockCtrl {
            bcount_per_cycle: be32(b, 0),
            op: be32(b, 4),
            repeat_count: be32(b, 8),
            num_entries: be16(b, 14),
        })
    }
}

/// `mlx5_stride_block_entry` (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct StrideBlockEntry {
    /// Stride between cycles.
    pub stride: u16,
    /// Bytes taken per cycle.
    pub bcount: u16,
    /// Key.
    pub key: u32,
    /// Start address.
    pub va: u64,
}

impl StrideBlockEntry {
    /// Size.
    pub const SIZE: usize = 16;
    /// Writes the entry.
    pub fn encode(&self, b: &mut [u8]) {
        put16(b, 0, self.stride);
        put16(b, 2, self.bcount);
        put32(b, 4, self.key);
        put64(b, 8, self.va);
    }
    /// Reads the entry.
    pub fn decode(b: &[u8]) -> Result<StrideBlockEntry, LayoutError> {
        need("stride block entry", b, Self::SIZE)?;
        Ok(StrideBlockEntry {
            stride: be16(b, 0),
            bcount: be16(b, 2),
            key: be32(b, 4),
            va: be64(b, 8),
        })
    }
}

/// `mlx5_bsf_inl` (16 bytes): one domain's inline signature parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BsfInl {
    /// `INL_VALID | REFRESH_DIF` when the domain has PI.
    pub vld_refresh: u16,
    /// App tag.
    pub dif_apptag: u16,
    /// Initial ref tag.
    pub dif_reftag: u32,
    /// `DIF_CRC` or `DIF_IPCS`.
    pub sig_type: u8,
    /// `REPEAT_BLOCK`.
    pub rp_inv_seed: u8,
    /// `INC_REFTAG`, `APPTAG_ESCAPE`, `APPREF_ESCAPE`.
    pub dif_inc_ref_guard_check: u8,
    /// App-tag bits compared.
    pub dif_app_bitmask_check: u16,
}

impl BsfInl {
    /// Size.
    pub const SIZE: usize = 16;

    /// The inline segment for a domain (`mlx5_fill_inl_bsf`).
    pub fn from_domain(d: &T10DifDomain) -> BsfInl {
        let mut flags = 0;
        if d.ref_remap {
            flags |= bsf::INC_REFTAG;
        }
        if d.app_escape {
            flags |= if d.ref_escape {
                bsf::APPREF_ESCAPE
            } else {
                bsf::APPTAG_ESCAPE
            };
        }
        BsfInl {
            vld_refresh: bsf::INL_VALID | bsf::REFRESH_DIF,
            dif_apptag: d.app_tag,
            dif_reftag: d.ref_tag,
            sig_type: match d.bg_type {
                GuardType::Crc => bsf::DIF_CRC,
                GuardType::Csum => bsf::DIF_IPCS,
            },
            rp_inv_seed: bsf::REPEAT_BLOCK,
            dif_inc_ref_guard_check: flags,
            dif_app_bitmask_check: d.apptag_check_mask,
        }
    }

    /// Writes the segment.
    pub fn encode(&self, b: &mut [u8]) {
        b[..Self::SIZE].fill(0);
        put16(b, 0, self.vld_refresh);
        put16(b, 2, self.dif_apptag);
        put32(b, 4, self.dif_reftag);
        b[8] = self.sig_type;
        b[9] = self.rp_inv_seed;
        b[13] = self.dif_inc_ref_guard_check;
        put16(b, 14, self.dif_app_bitmask_check);
    }

    /// Reads the segment.
    pub fn decode(b: &[u8]) -> Result<BsfInl, LayoutError> {
        need("BSF inline segment", b, Self::SIZE)?;
        Ok(BsfInl {
            vld_refresh: be16(b, 0),
            dif_apptag: be16(b, 2),
            dif_reftag: be32(b, 4),
            sig_type: b[8],
            rp_inv_seed: b[9],
            dif_inc_ref_guard_check: b[13],
            dif_app_bitmask_check: be16(b, 14),
        })
    }
}

/// `bs_selector` of a protection interval (kernel `bs_selector()`), or `None` when
/// mlx5 has no encoding for it.
pub fn bs_selector(interval: u32) -> Option<u8> {
    match interval {
        512 => Some(1),
        520 => Some(2),
        4096 => Some(3),
        4160 => Some(4),
        _ => None,
    }
}

/// Protection interval of a `bs_selector` (only the PI-less sizes are intervals).
pub fn interval_of_selector(sel: u8) -> Option<u32> {
    match sel {
        1 => Some(512),
        3 => Some(4096),
        _ => None,
    }
}

/// `mlx5_bsf` (64 bytes: basic, ext, w_inl, m_inl).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Bsf {
    /// `BSF_SIZE`, plus `SAME_BLOCK_STRUCTURE` when both domains share it.
    pub bsf_size_sbs: u8,
    /// Per-byte check mask.
    pub check_byte_mask: u8,
    /// Wire copy byte mask (same block structure) or wire `bs_selector`.
    pub wire_byte: u8,
    /// Memory `bs_selector`.
    pub mem_bs_selector: u8,
    /// Data bytes covered.
    pub raw_data_size: u32,
    /// Wire PSV index.
    pub w_bfs_psv: u32,
    /// Memory PSV index.
    pub m_bfs_psv: u32,
    /// Wire inline segment.
    pub w_inl: BsfInl,
    /// Memory inline segment.
    pub m_inl: BsfInl,
}

impl Bsf {
    /// Size.
    pub const SIZE: usize = 64;

    /// Builds the BSF for `check_mask`/`mem`/`wire` as `mlx5_set_bsf` does.
    /// Returns `None` for an interval mlx5 cannot encode.
    pub fn build(
        check_mask: u8,
        mem: &SigDomain,
        wire: &SigDomain,
        data_size: u32,
        mem_psv: u32,
        wire_psv: u32,
    ) -> Option<Bsf> {
        let mut b = Bsf {
            bsf_size_sbs: bsf::BSF_SIZE,
            check_byte_mask: check_mask,
            raw_data_size: data_size,
            ..Bsf::default()
        };
        if let SigDomain::T10Dif(m) = mem {
            b.mem_bs_selector = bs_selector(m.pi_interval)?;
            b.m_bfs_psv = mem_psv;
            b.m_inl = BsfInl::from_domain(m);
        }
        if let SigDomain::T10Dif(w) = wire {
            match mem {
                SigDomain::T10Dif(m) if m.pi_interval == w.pi_interval => {
                    b.bsf_size_sbs |= bsf::SAME_BLOCK_STRUCTURE;
                    if m.bg_type == w.bg_type {
                        b.wire_byte |= bsf::CPY_GRD_MASK;
                    }
                    if m.app_tag == w.app_tag {
                        b.wire_byte |= bsf::CPY_APP_MASK;
                    }
                    if m.ref_tag == w.ref_tag {
                        b.wire_byte |= bsf::CPY_REF_MASK;
                    }
                }
                _ => b.wire_byte = bs_selector(w.pi_interval)?,
            }
            b.w_bfs_psv = wire_psv;
            b.w_inl = BsfInl::from_domain(w);
        }
        Some(b)
    }

    /// Writes the BSF (the `ext` segment is all zero).
    pub fn encode(&self, b: &mut [u8]) {
        b[..Self::SIZE].fill(0);
        b[0] = self.bsf_size_sbs;
        b[1] = self.check_byte_mask;
        b[2] = self.wire_byte;
        b[3] = self.mem_bs_selector;
        put32(b, 4, self.raw_data_size);
        put32(b, 8, self.w_bfs_psv);
        put32(b, 12, self.m_bfs_psv);
        self.w_inl.encode(&mut b[32..48]);
        self.m_inl.encode(&mut b[48..64]);
    }

    /// Reads a BSF.
    pub fn decode(b: &[u8]) -> Result<Bsf, LayoutError> {
        need("BSF", b, Self::SIZE)?;
        Ok(Bsf {
            bsf_size_sbs: b[0],
            check_byte_mask: b[1],
            wire_byte: b[2],
            mem_bs_selector: b[3],
            raw_data_size: be32(b, 4),
            w_bfs_psv: be32(b, 8),
            m_bfs_psv: be32(b, 12),
            w_inl: BsfInl::decode(&b[32..48])?,
            m_inl: BsfInl::decode(&b[48..64])?,
        })
    }

    /// The memory and wire domains this BSF describes, given the guard seeds from
    /// the two PSVs. Inverse of [`Bsf::build`] (a lone `ref_escape` has no BSF
    /// encoding and reads back as no escape).
    pub fn domains(
        &self,
        mem_seed: u16,
        wire_seed: u16,
    ) -> Result<(SigDomain, SigDomain), LayoutError> {
        let dom = |inl: &BsfInl, sel: u8, seed: u16| -> Result<SigDomain, LayoutError> {
            if inl.vld_refresh & bsf::INL_VALID == 0 {
                return Ok(SigDomain::None);
            }
            let pi_interval = interval_of_selector(sel).ok_or(LayoutError::Unsupported {
                what: "bs_selector",
                value: u64::from(sel),
            })?;
            let bg_type = match inl.sig_type {
                bsf::DIF_CRC => GuardType::Crc,
                bsf::DIF_IPCS => GuardType::Csum,
                v => {
                    return Err(LayoutError::Unsupported {
                        what: "sig_type",
                        value: u64::from(v),
                    })
                }
            };
            let f = inl.dif_inc_ref_guard_check;
            Ok(SigDomain::T10Dif(T10DifDomain {
                bg_type,
                pi_interval,
                bg: seed,
                app_tag: inl.dif_apptag,
                ref_tag: inl.dif_reftag,
                ref_remap: f & bsf::INC_REFTAG != 0,
                app_escape: f & (bsf::APPTAG_ESCAPE | bsf::APPREF_ESCAPE) != 0,
                ref_escape: f & bsf::APPREF_ESCAPE != 0,
                apptag_check_mask: inl.dif_app_bitmask_check,
            }))
        };
        let mem = dom(&self.m_inl, self.mem_bs_selector, mem_seed)?;
        let wire_sel = if self.bsf_size_sbs & bsf::SAME_BLOCK_STRUCTURE != 0 {
            self.mem_bs_selector
        } else {
            self.wire_byte
        };
        let wire = dom(&self.w_inl, wire_sel, wire_seed)?;
        Ok((mem, wire))
    }
}

/// `mlx5_seg_set_psv` (16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SetPsvSeg {
    /// PSV index.
    pub psv_num: u32,
    /// `bg << 16 | app_tag`.
    pub transient_sig: u32,
    /// Ref tag.
    pub ref_tag: u32,
}

impl SetPsvSeg {
    /// Size.
    pub const SIZE: usize = 16;
    /// The PSV of a domain (`set_psv_wr`): zero for a domain without PI.
    pub fn for_domain(psv_num: u32, d: &SigDomain) -> SetPsvSeg {
        match d {
            SigDomain::None => SetPsvSeg {
                psv_num,
                transient_sig: 0,
                ref_tag: 0,
            },
            SigDomain::T10Dif(d) => SetPsvSeg {
                psv_num,
                transient_sig: u32::from(d.bg) << 16 | u32::from(d.app_tag),
                ref_tag: d.ref_tag,
            },
        }
    }
    /// Writes the segment.
    pub fn encode(&self, b: &mut [u8]) {
        put32(b, 0, self.psv_num);
        put16(b, 4, 0);
        put16(b, 6, 0);
        put32(b, 8, self.transient_sig);
        put32(b, 12, self.ref_tag);
    }
    /// Reads the segment.
    pub fn decode(b: &[u8]) -> Result<SetPsvSeg, LayoutError> {
        need("SET_PSV segment", b, Self::SIZE)?;
        Ok(SetPsvSeg {
            psv_num: be32(b, 0),
            transient_sig: be32(b, 8),
            ref_tag: be32(b, 12),
        })
    }
}

/// A decoded CQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cqe {
    /// Requester success (`mlx5_cqe64`, opcode REQ).
    Req {
        /// Send opcode of the completed WQE (`sop_drop_qpn >> 24`).
        sop: u8,
        /// QP number.
        qpn: u32,
        /// Index of the completed WQE.
        wqe_counter: u16,
        /// Bytes transferred.
        byte_cnt: u32,
    },
    /// Responder success (RESP_SEND or RESP_SEND_INV).
    Resp {
        /// QP number.
        qpn: u32,
        /// Index of the consumed receive WQE.
        wqe_counter: u16,
        /// Bytes received.
        byte_cnt: u32,
        /// Invalidated rkey (RESP_SEND_INV).
        inval_rkey: Option<u32>,
    },
    /// Requester or responder error (`mlx5_err_cqe`).
    Err {
        /// Whether it is a responder (receive queue) error.
        responder: bool,
        /// Syndrome.
        syndrome: u8,
        /// Vendor syndrome.
        vendor_err_synd: u8,
        /// Opcode of the failed WQE.
        wqe_opcode: u8,
        /// QP number.
        qpn: u32,
        /// Index of the failed WQE.
        wqe_counter: u16,
    },
    /// Signature error (`mlx5_sig_err_cqe`).
    SigErr {
        /// Expected `bg << 16 | app_tag`.
        expected_trans_sig: u32,
        /// Actual `bg << 16 | app_tag`.
        actual_trans_sig: u32,
        /// Expected ref tag.
        expected_reftag: u32,
        /// Actual ref tag.
        actual_reftag: u32,
        /// `sig_syndrome` bits.
        syndrome: u16,
        /// Signature mkey.
        mkey: u32,
        /// Wire-stream offset of the failing block.
        err_offset: u64,
        /// QP number.
        qpn: u32,
    },
}

impl Cqe {
    /// Writes the CQE with ownership bit `owner`.
    pub fn encode(&self, b: &mut [u8; CQE_SIZE], owner: bool) {
        b.fill(0);
        let op = match *self {
            Cqe::Req {
                sop,
                qpn,
                wqe_counter,
                byte_cnt,
            } => {
                put32(b, 44, byte_cnt);
                put32(b, 56, u32::from(sop) << 24 | (qpn & 0xff_ffff));
                put16(b, 60, wqe_counter);
                cqe_op::REQ
            }
            Cqe::Resp {
                qpn,
                wqe_counter,
                byte_cnt,
                inval_rkey,
            } => {
                put32(b, 36, inval_rkey.unwrap_or(0));
                put32(b, 44, byte_cnt);
                put32(b, 56, qpn & 0xff_ffff);
                put16(b, 60, wqe_counter);
                if inval_rkey.is_some() {
                    cqe_op::RESP_SEND_INV
                } else {
                    cqe_op::RESP_SEND
                }
            }
            Cqe::Err {
                responder,
                syndrome,
                vendor_err_synd,
                wqe_opcode,
                qpn,
                wqe_counter,
            } => {
                b[54] = vendor_err_synd;
                b[55] = syndrome;
                put32(b, 56, u32::from(wqe_opcode) << 24 | (qpn & 0xff_ffff));
                put16(b, 60, wqe_counter);
                if responder {
                    cqe_op::RESP_ERR
                } else {
                    cqe_op::REQ_ERR
                }
            }
            Cqe::SigErr {
                expected_trans_sig,
                actual_trans_sig,
                expected_reftag,
                actual_reftag,
                syndrome,
                mkey,
                err_offset,
                qpn,
            } => {
                put32(b, 16, expected_trans_sig);
                put32(b, 20, actual_trans_sig);
                put32(b, 24, expected_reftag);
                put32(b, 28, actual_reftag);
                put16(b, 32, syndrome);
                put32(b, 36, mkey);
                put64(b, 40, err_offset);
                put32(b, 56, qpn & 0xff_ffff);
                cqe_op::SIG_ERR
            }
        };
        b[63] = op << 4 | u8::from(owner);
    }

    /// Reads a CQE (the caller has checked ownership).
    pub fn decode(b: &[u8; CQE_SIZE]) -> Result<Cqe, LayoutError> {
        let op = b[63] >> 4;
        Ok(match op {
            cqe_op::REQ => Cqe::Req {
                sop: b[56],
                qpn: be32(b, 56) & 0xff_ffff,
                wqe_counter: be16(b, 60),
                byte_cnt: be32(b, 44),
            },
            cqe_op::RESP_SEND | cqe_op::RESP_SEND_INV => Cqe::Resp {
                qpn: be32(b, 56) & 0xff_ffff,
                wqe_counter: be16(b, 60),
                byte_cnt: be32(b, 44),
                inval_rkey: (op == cqe_op::RESP_SEND_INV).then(|| be32(b, 36)),
            },
            cqe_op::REQ_ERR | cqe_op::RESP_ERR => Cqe::Err {
                responder: op == cqe_op::RESP_ERR,
                syndrome: b[55],
                vendor_err_synd: b[54],
                wqe_opcode: b[56],
                qpn: be32(b, 56) & 0xff_ffff,
                wqe_counter: be16(b, 60),
            },
            cqe_op::SIG_ERR => Cqe::SigErr {
                expected_trans_sig: be32(b, 16),
                actual_trans_sig: be32(b, 20),
                expected_reftag: be32(b, 24),
                actual_reftag: be32(b, 28),
                syndrome: be16(b, 32),
                mkey: be32(b, 36),
                err_offset: be64(b, 40),
                qpn: be32(b, 56) & 0xff_ffff,
            },
            v => {
                return Err(LayoutError::Unsupported {
                    what: "CQE opcode",
                    value: u64::from(v),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_segment_bytes() {
        let c = CtrlSeg {
            opmod: 0,
            wqe_index: 0x1234,
            opcode: opcode::RDMA_WRITE,
            qpn: 0xabcdef,
            ds: 3,
            fm_ce_se: CTRL_CQ_UPDATE,
            imm: 0,
        };
        let mut b = [0u8; 16];
        c.encode(&mut b);
        assert_eq!(&b[0..4], &[0x00, 0x12, 0x34, 0x08]);
        assert_eq!(&b[4..8], &[0xab, 0xcd, 0xef, 0x03]);
        assert_eq!(b[11], 0x08);
        assert_eq!(CtrlSeg::decode(&b).unwrap(), c);
        assert_eq!(c.num_bbs(), 1);
        assert_eq!(CtrlSeg { ds: 15, ..c }.num_bbs(), 4);
    }

    #[test]
    fn bsf_bytes_for_insert_type1_512() {
        // mem None, wire T10-DIF CRC Type 1, interval 512, ref tag 0x11223344.
        let wire = T10DifDomain::type1(GuardType::Crc, 512, 0x1122_3344);
        let b = Bsf::build(0xff, &SigDomain::None, &SigDomain::T10Dif(wire), 4096, 7, 9).unwrap();
        let mut raw = [0u8; 64];
        b.encode(&mut raw);
        // basic: bsf_size_sbs = 1 << 7, check mask, wire bs_selector 1 (512), mem 0.
        assert_eq!(&raw[0..4], &[0x80, 0xff, 0x01, 0x00]);
        assert_eq!(&raw[4..8], &4096u32.to_be_bytes());
        assert_eq!(&raw[8..12], &9u32.to_be_bytes());
        assert_eq!(&raw[12..16], &[0; 4]);
        assert_eq!(&raw[16..32], &[0; 16]);
        // w_inl: INL_VALID|REFRESH_DIF, app tag 0, ref tag, CRC, repeat block,
        // INC_REFTAG|APPTAG_ESCAPE, app mask 0xffff.
        assert_eq!(
            &raw[32..48],
            &[
                0xc0, 0x00, 0x00, 0x00, 0x11, 0x22, 0x33, 0x44, 0x01, 0x80, 0, 0, 0, 0x41, 0xff,
                0xff
            ]
        );
        assert_eq!(&raw[48..64], &[0; 16]);
        let back = Bsf::decode(&raw).unwrap();
        assert_eq!(back, b);
        assert_eq!(
            back.domains(0, 0).unwrap(),
            (SigDomain::None, SigDomain::T10Dif(wire))
        );
    }

    #[test]
    fn bsf_bytes_for_pass_csum_to_crc_type3_4096() {
        let mem = T10DifDomain::type3(GuardType::Csum, 4096, 5).with_app_tag(0x0a0b, 0xff00);
        let wire = T10DifDomain::type3(GuardType::Crc, 4096, 5).with_app_tag(0x0a0b, 0xff00);
        let b = Bsf::build(
            0xcf,
            &SigDomain::T10Dif(mem),
            &SigDomain::T10Dif(wire),
            8192,
            1,
            2,
        )
        .unwrap();
        let mut raw = [0u8; 64];
        b.encode(&mut raw);
        // Same block structure: copy app and ref, not the guard (types differ).
        assert_eq!(&raw[0..4], &[0x90, 0xcf, 0x3f, 0x03]);
        // m_inl: IPCS guard, no INC_REFTAG, APPREF escape.
        assert_eq!(raw[48 + 8], 0x02);
        assert_eq!(raw[48 + 13], 0x02);
        assert_eq!(&raw[48 + 14..64], &[0xff, 0x00]);
        assert_eq!(&raw[32 + 2..32 + 8], &[0x0a, 0x0b, 0, 0, 0, 5]);
        let (m, w) = Bsf::decode(&raw).unwrap().domains(0, 0).unwrap();
        assert_eq!((m, w), (SigDomain::T10Dif(mem), SigDomain::T10Dif(wire)));
        assert!(Bsf::build(
            0xff,
            &SigDomain::T10Dif(T10DifDomain::type1(GuardType::Crc, 1024, 0)),
            &SigDomain::None,
            0,
            0,
            0
        )
        .is_none());
    }

    #[test]
    fn psv_bytes() {
        let d = T10DifDomain::type1(GuardType::Crc, 512, 0xdeadbeef)
            .with_app_tag(0x1234, 0xffff)
            .with_guard_seed(0xabcd);
        let p = SetPsvSeg::for_domain(0x55, &SigDomain::T10Dif(d));
        let mut b = [0u8; 16];
        p.encode(&mut b);
        assert_eq!(
            b,
            [0, 0, 0, 0x55, 0, 0, 0, 0, 0xab, 0xcd, 0x12, 0x34, 0xde, 0xad, 0xbe, 0xef]
        );
        assert_eq!(SetPsvSeg::decode(&b).unwrap(), p);
    }

    #[test]
    fn sig_err_cqe_bytes() {
        let c = Cqe::SigErr {
            expected_trans_sig: 0x1111_0000,
            actual_trans_sig: 0x2222_0000,
            expected_reftag: 3,
            actual_reftag: 3,
            syndrome: sig_syndrome::GUARD,
            mkey: 0x0000_4201,
            err_offset: 520 * 2,
            qpn: 0x42,
        };
        let mut b = [0u8; 64];
        c.encode(&mut b, true);
        assert_eq!(&b[16..20], &[0x11, 0x11, 0, 0]);
        assert_eq!(&b[20..24], &[0x22, 0x22, 0, 0]);
        assert_eq!(&b[32..34], &[0x20, 0x00]);
        assert_eq!(&b[36..40], &[0, 0, 0x42, 0x01]);
        assert_eq!(&b[40..48], &1040u64.to_be_bytes());
        assert_eq!(b[63], 0xc1);
        assert_eq!(Cqe::decode(&b).unwrap(), c);
    }

    #[test]
    fn normal_and_error_cqe_bytes() {
        let c = Cqe::Req {
            sop: opcode::SEND,
            qpn: 7,
            wqe_counter: 9,
            byte_cnt: 100,
        };
        let mut b = [0u8; 64];
        c.encode(&mut b, false);
        assert_eq!(&b[56..64], &[0x0a, 0, 0, 7, 0, 9, 0, 0x00]);
        assert_eq!(Cqe::decode(&b).unwrap(), c);
        let e = Cqe::Err {
            responder: false,
            syndrome: syndrome::REMOTE_ACCESS_ERR,
            vendor_err_synd: 0,
            wqe_opcode: opcode::RDMA_WRITE,
            qpn: 7,
            wqe_counter: 3,
        };
        e.encode(&mut b, true);
        assert_eq!(b[55], 0x13);
        assert_eq!(b[63], 0xd1);
        assert_eq!(Cqe::decode(&b).unwrap(), e);
        let r = Cqe::Resp {
            qpn: 7,
            wqe_counter: 1,
            byte_cnt: 48,
            inval_rkey: Some(0x1234),
        };
        r.encode(&mut b, false);
        assert_eq!(b[63] >> 4, cqe_op::RESP_SEND_INV);
        assert_eq!(Cqe::decode(&b).unwrap(), r);
        b[63] = 0x70;
        assert!(Cqe::decode(&b).is_err());
    }
}
