//! The iSER portal against a minimal iSER initiator built here from `verbs`, the soft
//! mlx5 HCA and `iscsi`: CM private data, login over SENDs, WRITE/READ with and
//! without PI on the wire (Type 1 / 512 and Type 3 / 4096), a bad guard from the
//! initiator, a fault injected in the target's HCA, Reject, NOP, SendTargets, logout,
//! commands in flight together on one connection, and task management waiting for
//! the commands it names.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use iscsi::iser::{IserControl, IserHeader, IserMessage, RemoteBuffer};
use iscsi::login::{InitiatorLogin, InitiatorLoginConfig, InitiatorStep};
use iscsi::negotiate::LocalParams;
use iscsi::pdu::{
    DataOut, Header, Isid, LogoutReason, LogoutRequest, NopOut, PduLimits, ScsiCommand, TaskAttr,
    TextRequest, TmfFunction, TmfRequest, TmfResponseCode, RESERVED_TAG,
};
use iscsi::text::TextKeys;
use iscsi::{Codec, Pdu};
use mlx5::{FaultDirection, FaultScope, FaultSpec, FaultTarget, Mlx5Device};
use target::device::{Lun, LunDesc};
use target::iser::{run_portal, IserContext, IserLimits, IserPortal, PortalStats};
use target::luns::TargetLuns;
use target::registry::Registry;
use target::service::ScsiService;
use target::session::login::{PortalPolicy, TargetEntry};
use verbs::cm::{self, CmAddr, CmConnection, CmError, ConnParam};
use verbs::device::FastRegMr;
use verbs::{AccessFlags, Cq, Mr, Pd, Qp, QpInitAttr, RecvWr, SendFlags, SendOp, SendWr, WcStatus};

const IQN: &str = "iqn.2026-11.io.iser-pi:iser";
const INITIATOR: &str = "iqn.2026-11.io.iser-pi:ini";
const T: Duration = Duration::from_secs(10);
const RW: AccessFlags = AccessFlags(
    AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0 | AccessFlags::REMOTE_READ.0,
);
const SLOT: usize = 16 * 1024;
const SLOTS: usize = 16;

/// LUN 0: Type 1, 512-byte blocks; LUN 1: Type 3, 4096-byte blocks; LUN 2: no PI.
struct TargetUnderTest {
    rt: tokio::runtime::Runtime,
    dev: Arc<Mlx5Device>,
    addr: CmAddr,
    registry: Arc<Registry>,
    stats: Arc<PortalStats>,
    _shutdown: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

fn start_target() -> TargetUnderTest {
    start_target_with(LocalParams::default())
}

fn start_target_with(local: LocalParams) -> TargetUnderTest {
    let dir = tempfile::tempdir().unwrap();
    let luns = vec![
        Lun::open(LunDesc::ram(0, 1 << 20, 512).with_pi(1)).unwrap(),
        Lun::open(LunDesc::ram(1, 4 << 20, 4096).with_pi(3)).unwrap(),
        Lun::open(LunDesc::ram(2, 1 << 20, 512)).unwrap(),
    ];
    let svc: Arc<dyn ScsiService> = Arc::new(TargetLuns::from_luns(IQN, luns));
    let registry = Arc::new(Registry::new(vec![(IQN.to_owned(), svc)]));
    let policy = PortalPolicy {
        targets: vec![TargetEntry {
            iqn: IQN.into(),
            acl: vec![],
            chap: None,
        }],
        discovery_chap: None,
        local,
        queue_depth: 8,
        tpgt: 1,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stats = Arc::new(PortalStats::default());
    let ctx = Arc::new(IserContext {
        policy: Arc::new(policy),
        registry: registry.clone(),
        limits: IserLimits {
            initiator_recv_data_segment_length: 8192,
            target_recv_data_segment_length: 8192,
        },
        portals: vec!["127.0.0.1:3260".parse().unwrap()],
        app_tags: HashMap::new(),
        shutdown: rx,
        stats: stats.clone(),
        lanes: target::iser::lanes::Lanes::start(2, 4).unwrap(),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dev = Mlx5Device::new("iser_target_hca");
    let addr = CmAddr::Unix(dir.path().join("iser.sock"));
    let portal = {
        let _g = rt.enter();
        IserPortal::bind(&dev.context(), &addr).unwrap()
    };
    rt.spawn(run_portal(portal, ctx));
    TargetUnderTest {
        rt,
        dev,
        addr,
        registry,
        stats,
        _shutdown: tx,
        _dir: dir,
    }
}

/// What a SCSI command came back with.
#[derive(Debug)]
struct Outcome {
    status: u8,
    sense: Vec<u8>,
    data: Vec<u8>,
    invalidated: Option<u32>,
    read_stag: Option<u32>,
}

impl Outcome {
    /// (sense key, ASC, ASCQ, INFORMATION) of fixed-format sense.
    fn sense_fields(&self) -> (u8, u8, u8, u32) {
        let s = &self.sense;
        assert!(s.len() >= 14, "sense {s:02x?}");
        assert_eq!(s[0] & 0x7f, 0x70);
        (
            s[2] & 0x0f,
            s[12],
            s[13],
            u32::from_be_bytes([s[3], s[4], s[5], s[6]]),
        )
    }
}

/// A minimal iSER initiator: one RC QP, a receive ring, blocking calls.
struct Initiator {
    _dev: Arc<Mlx5Device>,
    pd: Pd,
    send_cq: Cq,
    recv_cq: Cq,
    qp: Qp,
    conn: Option<CmConnection>,
    recv: Mr,
    send: Mr,
    cmd_sn: u32,
    exp_stat_sn: u32,
    itt: u32,
    /// Advertise read buffers through fast-registration MRs (which a SEND with
    /// invalidate may invalidate) instead of plain MRs.
    fast_reg_reads: bool,
}

impl Initiator {
    fn connect(addr: &CmAddr, flags: u8) -> Result<Initiator, CmError> {
        let dev = Mlx5Device::new("iser_initiator_hca");
        let ctx = dev.context();
        let pd = ctx.alloc_pd().unwrap();
        let send_cq = ctx.create_cq(64).unwrap();
        let recv_cq = ctx.create_cq(64).unwrap();
        let qp = pd
            .create_qp(&send_cq, &recv_cq, &QpInitAttr::default())
            .unwrap();
        let recv = pd.reg_mr(SLOT * SLOTS, AccessFlags::LOCAL_WRITE).unwrap();
        let wrs: Vec<RecvWr> = (0..SLOTS)
            .map(|i| RecvWr::new(i as u64, recv.sge(i * SLOT, SLOT as u32)))
            .collect();
        qp.post_recv(&wrs).unwrap();
        let send = pd.reg_mr(SLOT, AccessFlags::NONE).unwrap();
        let conn = cm::connect_blocking(
            &ctx,
            &qp,
            addr,
            &ConnParam::with_private_data(&[flags, 0, 0, 0]),
        )?;
        Ok(Initiator {
            _dev: dev,
            pd,
            send_cq,
            recv_cq,
            qp,
            conn: Some(conn),
            recv,
            send,
            cmd_sn: 0,
            exp_stat_sn: 0,
            itt: 0x100,
            fast_reg_reads: false,
        })
    }

    fn peer_private_data(&self) -> Vec<u8> {
        self.conn.as_ref().unwrap().peer_private_data().to_vec()
    }

    fn send_bytes(&self, bytes: &[u8]) {
        self.send.write_at(0, bytes).unwrap();
        self.qp
            .post_send_one(SendWr::send(1, self.send.sge(0, bytes.len() as u32)))
            .unwrap();
        let wc = self
            .send_cq
            .next_blocking(T)
            .unwrap()
            .expect("SEND completion");
        assert_eq!(wc.status, WcStatus::Success, "SEND");
    }

    fn send_pdu(&self, ctl: IserControl, pdu: Pdu) {
        let msg = IserMessage {
            header: IserHeader::Control(ctl),
            pdu: Some(pdu),
        };
        self.send_bytes(&msg.to_bytes(&PduLimits::default()));
    }

    /// The next PDU the target sent, and the rkey it invalidated (if any).
    fn recv_pdu(&mut self) -> (Pdu, Option<u32>) {
        let wc = self
            .recv_cq
            .next_blocking(T)
            .unwrap()
            .expect("a PDU from the target");
        assert_eq!(wc.status, WcStatus::Success, "receive");
        let slot = wc.wr_id as usize;
        let bytes = self.recv.to_vec(slot * SLOT, wc.byte_len as usize).unwrap();
        self.qp
            .post_recv_one(RecvWr::new(
                wc.wr_id,
                self.recv.sge(slot * SLOT, SLOT as u32),
            ))
            .unwrap();
        let msg = IserMessage::decode(
            &bytes,
            &PduLimits {
                max_recv_data_segment_length: SLOT as u32,
            },
        )
        .expect("well-formed iSER message");
        let pdu = msg.pdu.expect("control PDU");
        if let Some((stat_sn, _, _)) = pdu.header.stat_fields() {
            if !matches!(pdu.header, Header::NopIn(ref n) if n.itt == RESERVED_TAG) {
                self.exp_stat_sn = stat_sn.wrapping_add(1);
            }
        }
        (pdu, wc.invalidated_rkey)
    }

    fn login(&mut self) {
        self.login_with(LocalParams::default());
    }

    fn login_with(&mut self, base: LocalParams) {
        let local = LocalParams {
            rdma_extensions: true,
            initiator_recv_data_segment_length: 8192,
            target_recv_data_segment_length: 8192,
            ..base
        };
        let cfg = InitiatorLoginConfig {
            local,
            ..InitiatorLoginConfig::normal(INITIATOR, IQN, Isid([0x40, 0, 0, 0, 0, 1]))
        };
        let mut m = InitiatorLogin::new(cfg);
        let mut pdu = m.start().unwrap();
        for _ in 0..16 {
            self.send_pdu(IserControl::default(), pdu);
            let (resp, _) = self.recv_pdu();
            match m.handle_response(&resp).unwrap() {
                InitiatorStep::Send(p) => pdu = p,
                InitiatorStep::Complete(o) => {
                    assert!(o.params.rdma_extensions, "RDMAExtensions=Yes");
                    assert_eq!(o.params.target_recv_data_segment_length, 8192);
                    assert!(!o.params.header_digest && !o.params.data_digest);
                    self.cmd_sn = o.cmd_sn;
                    self.exp_stat_sn = o.exp_stat_sn;
                    return;
                }
            }
        }
        panic!("login did not complete");
    }

    fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// One SCSI command: `write` is the Data-Out (the first `immediate` bytes go as
    /// immediate data, the rest is fetched by the target with RDMA READ), `read_len`
    /// the Data-In expected.
    fn scsi(
        &mut self,
        lun: u64,
        cdb: &[u8],
        write: Option<&[u8]>,
        immediate: usize,
        read_len: usize,
    ) -> Outcome {
        let itt = self.next_itt();
        let wmr = write.map(|w| {
            let m = self.pd.reg_mr(w.len().max(1), RW).unwrap();
            m.write_at(0, w).unwrap();
            m
        });
        let rmr = (read_len > 0).then(|| self.pd.reg_mr(read_len, RW).unwrap());
        let fast = rmr.as_ref().filter(|_| self.fast_reg_reads).map(|m| {
            let fr = self.pd.alloc_mr(1).unwrap();
            let wr = SendWr {
                wr_id: 2,
                op: SendOp::RegMr {
                    mr: fr.lkey(),
                    range: m.sge_all(),
                    access: RW,
                },
                sg_list: Vec::new(),
                flags: SendFlags::SIGNALED,
            };
            self.qp.post_send_one(wr).unwrap();
            let wc = self.send_cq.next_blocking(T).unwrap().expect("REG_MR");
            assert_eq!(wc.status, WcStatus::Success, "REG_MR");
            fr
        });
        let read_stag = fast
            .as_ref()
            .map(FastRegMr::rkey)
            .or(rmr.as_ref().map(Mr::rkey));
        let edtl = write.map_or(read_len, <[u8]>::len) as u32;
        let imm = write.map_or(0, |w| immediate.min(w.len()));
        let ctl = IserControl {
            write: wmr
                .as_ref()
                .filter(|_| imm < edtl as usize)
                .map(|m| RemoteBuffer {
                    stag: m.rkey(),
                    va: m.addr() + imm as u64,
                }),
            read: rmr.as_ref().map(|m| RemoteBuffer {
                stag: read_stag.unwrap_or(m.rkey()),
                va: m.addr(),
            }),
        };
        let cmd = ScsiCommand {
            immediate: false,
            final_: true,
            read: read_len > 0,
            write: write.is_some(),
            attr: TaskAttr::Simple,
            lun: lun << 48,
            itt,
            expected_data_transfer_length: edtl,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            cdb: cdb.to_vec(),
            bidi_read_length: None,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        let data = write.map_or(Vec::new(), |w| w[..imm].to_vec());
        self.send_pdu(ctl, Pdu::with_data(cmd, data));
        let (resp, invalidated) = self.recv_pdu();
        let Header::ScsiResponse(r) = resp.header else {
            panic!("expected a SCSI Response, got {:?}", resp.header);
        };
        assert_eq!(r.itt, itt);
        let sense = if resp.data.len() >= 2 {
            let n = u16::from_be_bytes([resp.data[0], resp.data[1]]) as usize;
            resp.data[2..2 + n].to_vec()
        } else {
            Vec::new()
        };
        let data = rmr
            .as_ref()
            .map(|m| m.to_vec(0, read_len).unwrap())
            .unwrap_or_default();
        Outcome {
            status: r.status,
            sense,
            data,
            invalidated,
            read_stag,
        }
    }

    fn logout(&mut self) {
        let itt = self.next_itt();
        let req = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.send_pdu(IserControl::default(), Pdu::new(req));
        let (resp, _) = self.recv_pdu();
        assert!(
            matches!(resp.header, Header::LogoutResponse(ref l) if l.itt == itt),
            "{:?}",
            resp.header
        );
        let conn = self.conn.take().unwrap();
        assert!(
            conn.wait_disconnected_blocking(T).is_some(),
            "the target disconnects after logout"
        );
    }
}

fn rw16(op: u8, protect: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = protect << 5;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

const READ16: u8 = 0x88;
const WRITE16: u8 = 0x8a;

/// Data for `blocks` blocks: a pattern that differs per block and per `seed`.
fn pattern(blocks: u32, bs: usize, seed: u8) -> Vec<u8> {
    (0..blocks as usize * bs)
        .map(|i| (i as u8).wrapping_mul(7) ^ seed ^ (i / bs) as u8)
        .collect()
}

/// DIF-interleave `data` with tuples: Type 1 ref tag = LBA, Type 3 ref tag 0xFFFFFFFF.
fn with_pi(data: &[u8], bs: usize, lba: u64, type3: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / bs * (bs + 8));
    for (i, b) in data.chunks(bs).enumerate() {
        out.extend_from_slice(b);
        out.extend_from_slice(&t10pi::crc16_t10dif(0, b).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        let r = if type3 {
            0xFFFF_FFFF
        } else {
            (lba + i as u64) as u32
        };
        out.extend_from_slice(&r.to_be_bytes());
    }
    out
}

fn strip(wire: &[u8], bs: usize) -> Vec<u8> {
    wire.chunks(bs + 8).flat_map(|c| c[..bs].to_vec()).collect()
}

fn logged_in(t: &TargetUnderTest, flags: u8) -> Initiator {
    let mut ini = Initiator::connect(&t.addr, flags).expect("connect");
    ini.login();
    // Each LUN first reports POWER ON, RESET; TEST UNIT READY takes it.
    for lun in 0..3 {
        let first = ini.scsi(lun, &[0u8; 6], None, 0, 0);
        if first.status != 0 {
            assert_eq!(first.sense_fields().0, 0x06, "unit attention first");
            assert_eq!(ini.scsi(lun, &[0u8; 6], None, 0, 0).status, 0);
        }
    }
    ini
}

fn write_read_roundtrip(lun: u64, bs: usize, type3: bool) {
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    // PI on the wire: WRPROTECT/RDPROTECT 1, PASS through the target's sig MR.
    let (lba, blocks) = (10u64, 8u32);
    let wire = with_pi(&pattern(blocks, bs, 1), bs, lba, type3);
    let w = ini.scsi(lun, &rw16(WRITE16, 1, lba, blocks), Some(&wire), 0, 0);
    assert_eq!((w.status, w.sense.len()), (0, 0), "protected WRITE: {w:?}");
    let r = ini.scsi(lun, &rw16(READ16, 1, lba, blocks), None, 0, wire.len());
    assert_eq!(r.status, 0, "protected READ: {r:?}");
    assert!(r.data == wire, "data and PI read back as written");
    // No PI on the wire: the target inserts PI on the write and strips it on the read.
    let (lba2, blocks2) = (40u64, 4u32);
    let plain = pattern(blocks2, bs, 2);
    let w = ini.scsi(lun, &rw16(WRITE16, 0, lba2, blocks2), Some(&plain), 0, 0);
    assert_eq!(w.status, 0, "plain WRITE: {w:?}");
    let r = ini.scsi(lun, &rw16(READ16, 0, lba2, blocks2), None, 0, plain.len());
    assert_eq!(r.status, 0, "plain READ: {r:?}");
    assert!(r.data == plain, "plain data read back");
    // The PI the target generated is valid on a protected read.
    let r = ini.scsi(
        lun,
        &rw16(READ16, 1, lba2, blocks2),
        None,
        0,
        plain.len() / bs * (bs + 8),
    );
    assert_eq!(r.status, 0, "protected READ of generated PI: {r:?}");
    assert!(r.data == with_pi(&plain, bs, lba2, type3), "generated PI");
    // Immediate data (one whole wire block) plus RDMA READ of the rest.
    let wire3 = with_pi(&pattern(blocks, bs, 3), bs, 100, type3);
    let w = ini.scsi(lun, &rw16(WRITE16, 1, 100, blocks), Some(&wire3), bs + 8, 0);
    assert_eq!(w.status, 0, "WRITE with immediate data: {w:?}");
    let r = ini.scsi(
        lun,
        &rw16(READ16, 0, 100, blocks),
        None,
        0,
        blocks as usize * bs,
    );
    assert!(
        r.status == 0 && r.data == strip(&wire3, bs),
        "immediate + solicited data"
    );
    ini.logout();
}

#[test]
fn type1_512_write_read_with_and_without_pi() {
    write_read_roundtrip(0, 512, false);
}

#[test]
fn type3_4096_write_read_with_and_without_pi() {
    write_read_roundtrip(1, 4096, true);
}

#[test]
fn lun_without_pi_moves_plain_data_and_refuses_protect() {
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    let data = pattern(16, 512, 9);
    let w = ini.scsi(2, &rw16(WRITE16, 0, 0, 16), Some(&data), 1024, 0);
    assert_eq!(w.status, 0, "{w:?}");
    let r = ini.scsi(2, &rw16(READ16, 0, 0, 16), None, 0, data.len());
    assert!(r.status == 0 && r.data == data);
    // RDPROTECT != 0 on a LUN without PI: ILLEGAL REQUEST, INVALID FIELD IN CDB.
    let r = ini.scsi(2, &rw16(READ16, 1, 0, 1), None, 0, 520);
    assert_eq!(r.status, 2);
    let (key, asc, ascq, _) = r.sense_fields();
    assert_eq!((key, asc, ascq), (0x05, 0x24, 0x00));
}

#[test]
fn bad_guard_from_the_initiator_is_aborted_command_with_its_lba() {
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    let (lba, blocks) = (200u64, 6u32);
    let good = with_pi(&pattern(blocks, 512, 4), 512, lba, false);
    assert_eq!(
        ini.scsi(0, &rw16(WRITE16, 1, lba, blocks), Some(&good), 0, 0)
            .status,
        0
    );
    let mut bad = with_pi(&pattern(blocks, 512, 5), 512, lba, false);
    bad[3 * 520 + 512] ^= 0x01; // guard of block 3
    let w = ini.scsi(0, &rw16(WRITE16, 1, lba, blocks), Some(&bad), 0, 0);
    assert_eq!(w.status, 2, "CHECK CONDITION");
    assert_eq!(w.sense_fields(), (0x0b, 0x10, 0x01, (lba + 3) as u32));
    // Nothing of the failed write reached the medium.
    let r = ini.scsi(0, &rw16(READ16, 1, lba, blocks), None, 0, good.len());
    assert!(r.status == 0 && r.data == good, "old data kept");
    // A bad reference tag names its own LBA and ASCQ.
    let mut bad_ref = good.clone();
    bad_ref[5 * 520 + 519] ^= 0x10;
    let w = ini.scsi(0, &rw16(WRITE16, 1, lba, blocks), Some(&bad_ref), 0, 0);
    assert_eq!(w.sense_fields(), (0x0b, 0x10, 0x03, (lba + 5) as u32));
    let status = t.registry.report();
    let counters = &status.targets[0].luns[0].counters;
    assert_eq!((counters.guard_errors, counters.ref_tag_errors), (1, 1));
}

#[test]
fn fault_in_the_target_hca_on_read_is_reported_with_its_lba() {
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    let (lba, blocks) = (300u64, 4u32);
    let wire = with_pi(&pattern(blocks, 512, 6), 512, lba, false);
    assert_eq!(
        ini.scsi(0, &rw16(WRITE16, 1, lba, blocks), Some(&wire), 0, 0)
            .status,
        0
    );
    t.dev.inject_fault(FaultSpec {
        scope: FaultScope::Any,
        direction: FaultDirection::Outbound,
        block: 2,
        target: FaultTarget::Data { byte: 17, bit: 3 },
        once: true,
    });
    let r = ini.scsi(0, &rw16(READ16, 1, lba, blocks), None, 0, wire.len());
    assert_eq!(r.status, 2, "CHECK CONDITION: {r:?}");
    assert_eq!(r.sense_fields(), (0x0b, 0x10, 0x01, (lba + 2) as u32));
    assert!(t.dev.armed_faults().is_empty(), "the fault fired once");
    // The medium is intact: the next read is good.
    let r = ini.scsi(0, &rw16(READ16, 1, lba, blocks), None, 0, wire.len());
    assert!(r.status == 0 && r.data == wire);
}

#[test]
fn send_with_invalidate_only_when_the_initiator_allows_it() {
    let t = start_target();
    let mut ini = logged_in(&t, 0x80);
    assert_eq!(ini.peer_private_data()[..4], [0x80, 0, 0, 0]);
    ini.fast_reg_reads = true;
    let r = ini.scsi(2, &rw16(READ16, 0, 0, 2), None, 0, 1024);
    assert_eq!(r.status, 0);
    assert_eq!(r.invalidated, r.read_stag, "the Read STag is invalidated");
    let t2 = start_target();
    let mut ini2 = logged_in(&t2, 0xc0);
    assert_eq!(ini2.peer_private_data()[..4], [0xc0, 0, 0, 0]);
    let r = ini2.scsi(2, &rw16(READ16, 0, 0, 2), None, 0, 1024);
    assert_eq!((r.status, r.invalidated), (0, None));
}

#[test]
fn connect_requests_without_zbva_not_sup_or_short_private_data_are_rejected() {
    let t = start_target();
    for flags in [0x00u8, 0x40] {
        match Initiator::connect(&t.addr, flags) {
            Err(CmError::Rejected { private_data }) => {
                assert_eq!(private_data.get(..4), Some(&[0x80, 0, 0, 0][..]));
            }
            other => panic!("expected a reject, got {:?}", other.map(|_| ())),
        }
    }
}

#[test]
fn nop_text_reject_and_unknown_lun() {
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    // NOP-Out ping: echoed.
    let itt = ini.next_itt();
    let nop = NopOut {
        immediate: true,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: ini.cmd_sn,
        exp_stat_sn: ini.exp_stat_sn,
    };
    ini.send_pdu(
        IserControl::default(),
        Pdu::with_data(nop, b"ping".to_vec()),
    );
    let (p, _) = ini.recv_pdu();
    assert!(matches!(p.header, Header::NopIn(ref n) if n.itt == itt));
    assert_eq!(p.data, b"ping");
    // SendTargets=All inside a normal session lists its own target.
    let itt = ini.next_itt();
    let mut keys = TextKeys::new();
    keys.push("SendTargets", "All");
    let text = TextRequest {
        immediate: false,
        final_: true,
        continue_: false,
        lun: 0,
        itt,
        ttt: RESERVED_TAG,
        cmd_sn: ini.cmd_sn,
        exp_stat_sn: ini.exp_stat_sn,
    };
    ini.cmd_sn += 1;
    ini.send_pdu(IserControl::default(), Pdu::with_data(text, keys.encode()));
    let (p, _) = ini.recv_pdu();
    assert!(matches!(p.header, Header::TextResponse(ref r) if r.itt == itt));
    let got = TextKeys::parse(&p.data).unwrap();
    let map: BTreeMap<_, _> = got.iter().collect();
    assert_eq!(map.get("TargetName"), Some(&IQN));
    // A vendor-specific opcode: Reject, and the connection carries on.
    let mut msg = IserMessage {
        header: IserHeader::Control(IserControl::default()),
        pdu: None,
    }
    .to_bytes(&PduLimits::default());
    let mut bhs = [0u8; 48];
    bhs[0] = 0x1c;
    bhs[16..20].copy_from_slice(&0x77u32.to_be_bytes());
    msg.extend_from_slice(&bhs);
    ini.send_bytes(&msg);
    let (p, _) = ini.recv_pdu();
    assert!(matches!(p.header, Header::Reject(_)), "{:?}", p.header);
    assert_eq!(&p.data[..48], &bhs[..]);
    // A LUN that does not exist: LOGICAL UNIT NOT SUPPORTED.
    let r = ini.scsi(9, &rw16(READ16, 0, 0, 1), None, 0, 512);
    assert_eq!(r.status, 2);
    assert_eq!(r.sense_fields().1, 0x25);
    // The session is still usable.
    let r = ini.scsi(2, &rw16(READ16, 0, 0, 1), None, 0, 512);
    assert_eq!(r.status, 0);
    ini.logout();
    // The registry forgot the session.
    let deadline = std::time::Instant::now() + T;
    while t.registry.session_count() != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(t.registry.session_count(), 0);
    drop(t.rt);
}

#[test]
fn disconnect_mid_session_frees_the_connection() {
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    let r = ini.scsi(2, &rw16(READ16, 0, 0, 1), None, 0, 512);
    assert_eq!(r.status, 0);
    assert_eq!(t.registry.session_count(), 1);
    drop(ini);
    let deadline = std::time::Instant::now() + T;
    while t.registry.session_count() != 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        t.registry.session_count(),
        0,
        "session closed on disconnect"
    );
    // A new initiator can log in again.
    let mut again = logged_in(&t, 0xc0);
    assert_eq!(
        again.scsi(2, &rw16(READ16, 0, 0, 1), None, 0, 512).status,
        0
    );
}

#[test]
fn fault_in_the_target_hca_on_strip_read_and_pass_write() {
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    let (lba, blocks) = (400u64, 4u32);
    let plain = pattern(blocks, 512, 7);
    assert_eq!(
        ini.scsi(0, &rw16(WRITE16, 0, lba, blocks), Some(&plain), 0, 0)
            .status,
        0
    );
    // RDPROTECT 0: the HCA checks the stored PI while stripping it.
    t.dev.inject_fault(FaultSpec {
        scope: FaultScope::Any,
        direction: FaultDirection::Outbound,
        block: 1,
        target: FaultTarget::Data { byte: 100, bit: 0 },
        once: true,
    });
    let r = ini.scsi(0, &rw16(READ16, 0, lba, blocks), None, 0, plain.len());
    assert_eq!(r.status, 2, "{r:?}");
    assert_eq!(r.sense_fields(), (0x0b, 0x10, 0x01, (lba + 1) as u32));
    let r = ini.scsi(0, &rw16(READ16, 0, lba, blocks), None, 0, plain.len());
    assert!(r.status == 0 && r.data == plain, "medium intact");
    // A reference tag bit flipped on arrival of a protected write: 10h/03h, not stored.
    t.dev.inject_fault(FaultSpec {
        scope: FaultScope::Any,
        direction: FaultDirection::Inbound,
        block: 3,
        target: FaultTarget::RefTag { bit: 9 },
        once: true,
    });
    let other = with_pi(&pattern(blocks, 512, 8), 512, lba, false);
    let w = ini.scsi(0, &rw16(WRITE16, 1, lba, blocks), Some(&other), 0, 0);
    assert_eq!(w.sense_fields(), (0x0b, 0x10, 0x03, (lba + 3) as u32));
    let r = ini.scsi(0, &rw16(READ16, 0, lba, blocks), None, 0, plain.len());
    assert!(r.status == 0 && r.data == plain, "failed write not stored");
}

/// One command posted but not yet answered.
struct Submitted {
    itt: u32,
    lba: u64,
    _write: Option<Mr>,
    read: Option<Mr>,
}

#[test]
fn sixteen_commands_in_flight_on_one_connection_overlap_and_complete() {
    const N: usize = 16;
    const BLOCKS: u32 = 8;
    const BS: usize = 512;
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    // The LBAs the reads will fetch get known data first, one command at a time.
    let read_lba = |i: usize| 1000 + (i * BLOCKS as usize) as u64;
    let write_lba = |i: usize| 1500 + (i * BLOCKS as usize) as u64;
    for i in 0..N / 2 {
        let d = pattern(BLOCKS, BS, 0x40 + i as u8);
        let w = ini.scsi(2, &rw16(WRITE16, 0, read_lba(i), BLOCKS), Some(&d), 0, 0);
        assert_eq!(w.status, 0, "prefill {i}");
    }
    // 16 SENDs in one post: eight writes and eight reads to distinct LBAs.
    let len = BLOCKS as usize * BS;
    let out = ini.pd.reg_mr(N * SLOT, AccessFlags::NONE).unwrap();
    let mut wrs = Vec::new();
    let mut pending = Vec::new();
    for k in 0..N {
        let i = k / 2;
        let itt = ini.next_itt();
        let (ctl, cdb, write, read, lba) = if k % 2 == 0 {
            let m = ini.pd.reg_mr(len, RW).unwrap();
            m.write_at(0, &pattern(BLOCKS, BS, 0x80 + i as u8)).unwrap();
            let ctl = IserControl {
                write: Some(RemoteBuffer {
                    stag: m.rkey(),
                    va: m.addr(),
                }),
                read: None,
            };
            let lba = write_lba(i);
            (ctl, rw16(WRITE16, 0, lba, BLOCKS), Some(m), None, lba)
        } else {
            let m = ini.pd.reg_mr(len, RW).unwrap();
            let ctl = IserControl {
                write: None,
                read: Some(RemoteBuffer {
                    stag: m.rkey(),
                    va: m.addr(),
                }),
            };
            let lba = read_lba(i);
            (ctl, rw16(READ16, 0, lba, BLOCKS), None, Some(m), lba)
        };
        let cmd = ScsiCommand {
            immediate: false,
            final_: true,
            read: read.is_some(),
            write: write.is_some(),
            attr: TaskAttr::Simple,
            lun: 2 << 48,
            itt,
            expected_data_transfer_length: len as u32,
            cmd_sn: ini.cmd_sn,
            exp_stat_sn: ini.exp_stat_sn,
            cdb,
            bidi_read_length: None,
        };
        ini.cmd_sn = ini.cmd_sn.wrapping_add(1);
        let msg = IserMessage {
            header: IserHeader::Control(ctl),
            pdu: Some(Pdu::new(cmd)),
        };
        let bytes = msg.to_bytes(&PduLimits::default());
        out.write_at(k * SLOT, &bytes).unwrap();
        wrs.push(SendWr::send(
            100 + k as u64,
            out.sge(k * SLOT, bytes.len() as u32),
        ));
        pending.push(Submitted {
            itt,
            lba,
            _write: write,
            read,
        });
    }
    ini.qp.post_send(&wrs).unwrap();
    for _ in 0..N {
        let wc = ini
            .send_cq
            .next_blocking(T)
            .unwrap()
            .expect("SEND completion");
        assert_eq!(wc.status, WcStatus::Success, "SEND");
    }
    let mut stat_sns = Vec::new();
    let mut answered = BTreeMap::new();
    for _ in 0..N {
        let (resp, _) = ini.recv_pdu();
        let Header::ScsiResponse(r) = resp.header else {
            panic!("expected a SCSI Response, got {:?}", resp.header);
        };
        assert_eq!(r.status, 0, "ITT {:#x}: sense {:02x?}", r.itt, resp.data);
        stat_sns.push(r.stat_sn);
        assert!(answered.insert(r.itt, ()).is_none(), "one response per ITT");
    }
    // StatSN counts up by one per response, in the order they arrived.
    for w in stat_sns.windows(2) {
        assert_eq!(w[1], w[0].wrapping_add(1), "StatSN in send order");
    }
    for (k, p) in pending.iter().enumerate() {
        assert!(answered.contains_key(&p.itt), "command {k} answered");
        if let Some(m) = &p.read {
            let i = k / 2;
            assert_eq!(
                m.to_vec(0, len).unwrap(),
                pattern(BLOCKS, BS, 0x40 + i as u8),
                "read of LBA {}",
                p.lba
            );
        }
    }
    // What the concurrent writes stored reads back.
    for i in 0..N / 2 {
        let r = ini.scsi(2, &rw16(READ16, 0, write_lba(i), BLOCKS), None, 0, len);
        assert_eq!(r.status, 0);
        assert_eq!(r.data, pattern(BLOCKS, BS, 0x80 + i as u8), "write {i}");
    }
    assert!(
        t.stats.in_flight_high_water() > 1,
        "commands overlapped (high-water {})",
        t.stats.in_flight_high_water()
    );
    ini.logout();
    assert_eq!(t.stats.in_flight(), 0, "no command left in flight");
}

/// Posts every message as one SEND in a single post and waits for their completions.
fn post_batch(ini: &Initiator, msgs: Vec<(IserControl, Pdu)>) {
    let out = ini.pd.reg_mr(msgs.len() * SLOT, AccessFlags::NONE).unwrap();
    let mut wrs = Vec::new();
    for (k, (ctl, pdu)) in msgs.into_iter().enumerate() {
        let msg = IserMessage {
            header: IserHeader::Control(ctl),
            pdu: Some(pdu),
        };
        let bytes = msg.to_bytes(&PduLimits::default());
        out.write_at(k * SLOT, &bytes).unwrap();
        wrs.push(SendWr::send(
            200 + k as u64,
            out.sge(k * SLOT, bytes.len() as u32),
        ));
    }
    let n = wrs.len();
    ini.qp.post_send(&wrs).unwrap();
    for _ in 0..n {
        let wc = ini
            .send_cq
            .next_blocking(T)
            .unwrap()
            .expect("SEND completion");
        assert_eq!(wc.status, WcStatus::Success, "SEND");
    }
}

#[test]
fn task_management_answers_after_the_commands_it_names() {
    const READS: usize = 6;
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    let len = 8 * 512;
    let mut bufs = Vec::new();
    let mut msgs = Vec::new();
    let mut itts = Vec::new();
    let mut cmd_sns = Vec::new();
    for i in 0..READS {
        let m = ini.pd.reg_mr(len, RW).unwrap();
        let itt = ini.next_itt();
        let ctl = IserControl {
            write: None,
            read: Some(RemoteBuffer {
                stag: m.rkey(),
                va: m.addr(),
            }),
        };
        let cmd = ScsiCommand {
            immediate: false,
            final_: true,
            read: true,
            write: false,
            attr: TaskAttr::Simple,
            lun: 2 << 48,
            itt,
            expected_data_transfer_length: len as u32,
            cmd_sn: ini.cmd_sn,
            exp_stat_sn: ini.exp_stat_sn,
            cdb: rw16(READ16, 0, 64 * i as u64, 8),
            bidi_read_length: None,
        };
        cmd_sns.push(ini.cmd_sn);
        ini.cmd_sn = ini.cmd_sn.wrapping_add(1);
        itts.push(itt);
        bufs.push(m);
        msgs.push((ctl, Pdu::new(cmd)));
    }
    let tmf = |ini: &mut Initiator, function, rtt, ref_cmd_sn| {
        let itt = ini.next_itt();
        let req = TmfRequest {
            immediate: true,
            function,
            lun: 2 << 48,
            itt,
            referenced_task_tag: rtt,
            cmd_sn: ini.cmd_sn,
            exp_stat_sn: ini.exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn: 0,
        };
        (itt, (IserControl::default(), Pdu::new(req)))
    };
    let named = READS - 2;
    let (abort_itt, abort) = tmf(
        &mut ini,
        TmfFunction::AbortTask,
        itts[named],
        cmd_sns[named],
    );
    let (reset_itt, reset) = tmf(&mut ini, TmfFunction::LogicalUnitReset, RESERVED_TAG, 0);
    msgs.push(abort);
    msgs.push(reset);
    post_batch(&ini, msgs);
    let mut order = Vec::new();
    for _ in 0..READS + 2 {
        let (resp, _) = ini.recv_pdu();
        match resp.header {
            Header::ScsiResponse(r) => {
                assert_eq!(r.status, 0, "read {:#x}", r.itt);
                order.push((r.itt, None));
            }
            Header::TmfResponse(r) => order.push((r.itt, Some(r.response))),
            h => panic!("unexpected {h:?}"),
        }
    }
    let at = |itt: u32| order.iter().position(|(i, _)| *i == itt).unwrap();
    // ABORT TASK waited for the running command it names, which had answered.
    assert!(at(abort_itt) > at(itts[named]), "{order:x?}");
    assert_eq!(
        order[at(abort_itt)].1,
        Some(TmfResponseCode::TaskDoesNotExist)
    );
    // LOGICAL UNIT RESET waited for every command of the LUN.
    for &itt in &itts {
        assert!(at(reset_itt) > at(itt), "{order:x?}");
    }
    assert_eq!(order[at(reset_itt)].1, Some(TmfResponseCode::Complete));
    ini.logout();
}

#[test]
fn unsolicited_data_out_sends_with_initial_r2t_no() {
    let params = LocalParams {
        initial_r2t: false,
        first_burst_length: 4096,
        ..LocalParams::default()
    };
    let t = start_target_with(params.clone());
    let mut ini = Initiator::connect(&t.addr, 0xc0).expect("connect");
    ini.login_with(params);
    for lun in 0..3 {
        ini.scsi(lun, &[0u8; 6], None, 0, 0);
    }
    // 8 KiB to the LUN without PI: 1 KiB immediate, 3 KiB in two Data-Out SENDs (the
    // first burst), the last 4 KiB fetched by RDMA READ at the Write VA.
    let data = pattern(16, 512, 11);
    let wmr = ini.pd.reg_mr(data.len(), RW).unwrap();
    wmr.write_at(0, &data).unwrap();
    let itt = ini.next_itt();
    let cmd = ScsiCommand {
        immediate: false,
        final_: false,
        read: false,
        write: true,
        attr: TaskAttr::Simple,
        lun: 2 << 48,
        itt,
        expected_data_transfer_length: data.len() as u32,
        cmd_sn: ini.cmd_sn,
        exp_stat_sn: ini.exp_stat_sn,
        cdb: rw16(WRITE16, 0, 32, 16),
        bidi_read_length: None,
    };
    ini.cmd_sn += 1;
    let ctl = IserControl {
        write: Some(RemoteBuffer {
            stag: wmr.rkey(),
            va: wmr.addr() + 4096,
        }),
        read: None,
    };
    ini.send_pdu(ctl, Pdu::with_data(cmd, data[..1024].to_vec()));
    for (sn, (off, len, fin)) in [(1024usize, 1024usize, false), (2048, 2048, true)]
        .into_iter()
        .enumerate()
    {
        let d = DataOut {
            final_: fin,
            lun: 2 << 48,
            itt,
            ttt: RESERVED_TAG,
            exp_stat_sn: ini.exp_stat_sn,
            data_sn: sn as u32,
            buffer_offset: off as u32,
        };
        ini.send_pdu(
            IserControl::default(),
            Pdu::with_data(d, data[off..off + len].to_vec()),
        );
    }
    let (resp, _) = ini.recv_pdu();
    assert!(
        matches!(resp.header, Header::ScsiResponse(ref r) if r.itt == itt && r.status == 0),
        "{:?}",
        resp.header
    );
    let r = ini.scsi(2, &rw16(READ16, 0, 32, 16), None, 0, data.len());
    assert!(
        r.status == 0 && r.data == data,
        "all three parts landed in order"
    );
}

/// The `iser-target` binary with an iSER portal on a UNIX socket from its
/// configuration, and `MLX5_SOFT_FAULT` arming a fault in its HCA; killed on drop.
struct DaemonProcess {
    child: std::process::Child,
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(dir: &std::path::Path, fault: &str) -> (DaemonProcess, CmAddr) {
    use std::io::BufRead;
    let sock = dir.join("fabric.sock");
    let config = dir.join("target.toml");
    let text = format!(
        r#"worker_threads = 2
portals = [
  {{ transport = "tcp", listen = "127.0.0.1:0" }},
  {{ transport = "iser", listen = "unix:{}" }},
]

[iscsi]
nop_in_interval = 0
queue_depth = 8

[iser]
initiator_recv_data_segment_length = 8192
target_recv_data_segment_length = 8192

[[targets]]
iqn = "{IQN}"

[[targets.luns]]
id = 0
backing = {{ type = "ram", size = "4MiB" }}
protection = {{ type = 1, app_tag = 0x1234 }}
"#,
        sock.display()
    );
    std::fs::write(&config, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_iser-target"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "error")
        .env("MLX5_SOFT_FAULT", fault)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn iser-target");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {}
    });
    let d = DaemonProcess { child };
    let line = rx.recv_timeout(T).expect("iser-target reports its portals");
    assert!(line.starts_with("listening "), "{line}");
    (d, CmAddr::Unix(sock))
}

#[test]
fn daemon_serves_iser_portal_from_config_with_env_fault() {
    let dir = tempfile::tempdir().unwrap();
    let (_d, addr) = start_daemon(dir.path(), "dir=out,block=1,target=guard:5,once");
    let mut ini = Initiator::connect(&addr, 0xc0).expect("connect to the daemon's iSER portal");
    assert_eq!(ini.peer_private_data()[..4], [0xc0, 0, 0, 0]);
    ini.login();
    if ini.scsi(0, &[0u8; 6], None, 0, 0).status != 0 {
        assert_eq!(ini.scsi(0, &[0u8; 6], None, 0, 0).status, 0);
    }
    // WRPROTECT 0: the target's HCA inserts PI with the LUN's application tag.
    let (lba, blocks) = (8u64, 4u32);
    let plain = pattern(blocks, 512, 12);
    assert_eq!(
        ini.scsi(0, &rw16(WRITE16, 0, lba, blocks), Some(&plain), 0, 0)
            .status,
        0
    );
    // The armed fault flips a guard bit of block 1 on the first outbound transfer.
    let r = ini.scsi(
        0,
        &rw16(READ16, 1, lba, blocks),
        None,
        0,
        blocks as usize * 520,
    );
    assert_eq!(r.status, 2, "{r:?}");
    assert_eq!(r.sense_fields(), (0x0b, 0x10, 0x01, (lba + 1) as u32));
    let r = ini.scsi(
        0,
        &rw16(READ16, 1, lba, blocks),
        None,
        0,
        blocks as usize * 520,
    );
    assert_eq!(r.status, 0, "the fault fired once: {r:?}");
    for (i, b) in r.data.chunks(520).enumerate() {
        assert_eq!(&b[..512], &plain[i * 512..(i + 1) * 512]);
        assert_eq!(
            u16::from_be_bytes([b[512], b[513]]),
            t10pi::crc16_t10dif(0, &b[..512])
        );
        assert_eq!(u16::from_be_bytes([b[514], b[515]]), 0x1234, "LUN app tag");
        assert_eq!(
            u32::from_be_bytes([b[516], b[517], b[518], b[519]]),
            (lba + i as u64) as u32
        );
    }
    ini.logout();
}

#[test]
fn transfers_larger_than_max_burst_split_on_wire_blocks() {
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    // 1024 blocks: 532 480 wire bytes with PI, more than MaxBurstLength (256 KiB), so
    // several RDMA operations, each on whole 520-byte blocks of the signature MR.
    let (lba, blocks) = (1000u64, 1024u32);
    let wire = with_pi(&pattern(blocks, 512, 13), 512, lba, false);
    let w = ini.scsi(0, &rw16(WRITE16, 1, lba, blocks), Some(&wire), 0, 0);
    assert_eq!(w.status, 0, "{w:?}");
    let r = ini.scsi(0, &rw16(READ16, 1, lba, blocks), None, 0, wire.len());
    assert!(r.status == 0 && r.data == wire, "PASS both ways");
    let r = ini.scsi(
        0,
        &rw16(READ16, 0, lba, blocks),
        None,
        0,
        blocks as usize * 512,
    );
    assert!(r.status == 0 && r.data == strip(&wire, 512), "STRIP");
    let plain = pattern(blocks, 512, 14);
    let w = ini.scsi(0, &rw16(WRITE16, 0, lba, blocks), Some(&plain), 0, 0);
    assert_eq!(w.status, 0, "INSERT: {w:?}");
    let r = ini.scsi(0, &rw16(READ16, 1, lba, blocks), None, 0, wire.len());
    assert!(
        r.status == 0 && r.data == with_pi(&plain, 512, lba, false),
        "generated PI"
    );
    // A bad guard far into the transfer names its LBA.
    let mut bad = with_pi(&plain, 512, lba, false);
    bad[700 * 520 + 513] ^= 0x80;
    let w = ini.scsi(0, &rw16(WRITE16, 1, lba, blocks), Some(&bad), 0, 0);
    assert_eq!(w.sense_fields(), (0x0b, 0x10, 0x01, (lba + 700) as u32));
    // Type 3 with 4096-byte blocks: 100 blocks, 410 400 wire bytes.
    let wire3 = with_pi(&pattern(100, 4096, 15), 4096, 0, true);
    assert_eq!(
        ini.scsi(1, &rw16(WRITE16, 1, 500, 100), Some(&wire3), 0, 0)
            .status,
        0
    );
    let r = ini.scsi(1, &rw16(READ16, 1, 500, 100), None, 0, wire3.len());
    assert!(r.status == 0 && r.data == wire3);
}

#[test]
fn throughput_of_one_connection() {
    // Bounded: 16 MiB each way per mode. Prints MB/s (run with --nocapture).
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    let blocks = 1024u32; // 512 KiB per command
    let rounds = 32u64;
    for (name, lun, protect, bs) in [("T1/512 PASS", 0u64, 1u8, 512usize), ("no PI", 2, 0, 512)] {
        let data = pattern(blocks, bs, 21);
        let payload = if protect != 0 {
            with_pi(&data, bs, 0, false)
        } else {
            data.clone()
        };
        let start = std::time::Instant::now();
        for i in 0..rounds {
            let lba = (i % 2) * u64::from(blocks);
            let p = if protect != 0 {
                with_pi(&data, bs, lba, false)
            } else {
                payload.clone()
            };
            let w = ini.scsi(lun, &rw16(WRITE16, protect, lba, blocks), Some(&p), 0, 0);
            assert_eq!(w.status, 0);
        }
        let write_s = start.elapsed().as_secs_f64();
        let start = std::time::Instant::now();
        for i in 0..rounds {
            let lba = (i % 2) * u64::from(blocks);
            let r = ini.scsi(
                lun,
                &rw16(READ16, protect, lba, blocks),
                None,
                0,
                payload.len(),
            );
            assert_eq!(r.status, 0);
            assert_eq!(strip_if(&r.data, bs, protect != 0), data);
        }
        let read_s = start.elapsed().as_secs_f64();
        let mb = (rounds as f64) * data.len() as f64 / 1e6;
        eprintln!(
            "iSER {name}: {blocks}-block commands, write {:.0} MB/s, read {:.0} MB/s",
            mb / write_s,
            mb / read_s
        );
    }
}

fn strip_if(wire: &[u8], bs: usize, pi: bool) -> Vec<u8> {
    if pi {
        strip(wire, bs)
    } else {
        wire.to_vec()
    }
}

impl Initiator {
    /// The next PDU, or `None` when the connection failed or nothing came in time.
    fn try_recv_pdu(&mut self, timeout: Duration) -> Option<Pdu> {
        let wc = self.recv_cq.next_blocking(timeout).ok()??;
        if wc.status != WcStatus::Success {
            return None;
        }
        let slot = wc.wr_id as usize;
        let bytes = self.recv.to_vec(slot * SLOT, wc.byte_len as usize).ok()?;
        self.qp
            .post_recv_one(RecvWr::new(
                wc.wr_id,
                self.recv.sge(slot * SLOT, SLOT as u32),
            ))
            .ok()?;
        let limits = PduLimits {
            max_recv_data_segment_length: SLOT as u32,
        };
        IserMessage::decode(&bytes, &limits).ok()?.pdu
    }

    /// Sends raw bytes; false when the SEND failed (the connection is gone).
    fn try_send_bytes(&self, bytes: &[u8]) -> bool {
        if bytes.len() > SLOT || self.send.write_at(0, bytes).is_err() {
            return false;
        }
        let posted = self
            .qp
            .post_send_one(SendWr::send(1, self.send.sge(0, bytes.len() as u32)));
        posted.is_ok()
            && matches!(
                self.send_cq.next_blocking(Duration::from_millis(500)),
                Ok(Some(wc)) if wc.status == WcStatus::Success
            )
    }
}

/// xorshift64*: deterministic noise for the garbage test.
fn noise(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[test]
fn garbage_sends_get_reject_or_disconnect_never_a_dead_target() {
    let t = start_target();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut ini = logged_in(&t, 0xc0);
    let mut reconnects = 0;
    let mut rejects = 0;
    for round in 0..60 {
        // A message of 1..200 bytes: sometimes a valid iSER header with a random
        // BHS, sometimes random from the first byte, sometimes truncated.
        let len = 1 + (noise(&mut state) % 200) as usize;
        let mut msg: Vec<u8> = (0..len).map(|_| noise(&mut state) as u8).collect();
        if round % 3 != 0 && msg.len() >= 28 {
            msg[..28].fill(0);
            msg[0] = 0x10;
        }
        let alive = ini.try_send_bytes(&msg) && {
            // Ping: the answer (after any Reject or response) proves the connection
            // still works; silence or an error means the target closed it.
            let itt = 0x7000_0000 + round;
            let nop = NopOut {
                immediate: true,
                lun: 0,
                itt,
                ttt: RESERVED_TAG,
                cmd_sn: ini.cmd_sn,
                exp_stat_sn: ini.exp_stat_sn,
            };
            let m = IserMessage {
                header: IserHeader::Control(IserControl::default()),
                pdu: Some(Pdu::new(nop)),
            };
            ini.try_send_bytes(&m.to_bytes(&PduLimits::default())) && {
                let mut answered = false;
                for _ in 0..8 {
                    match ini.try_recv_pdu(Duration::from_secs(2)) {
                        Some(Pdu {
                            header: Header::NopIn(ref n),
                            ..
                        }) if n.itt == itt => {
                            answered = true;
                            break;
                        }
                        Some(Pdu {
                            header: Header::Reject(_),
                            ..
                        }) => rejects += 1,
                        Some(_) => {}
                        None => break,
                    }
                }
                answered
            }
        };
        if !alive {
            reconnects += 1;
            drop(ini);
            ini = logged_in(&t, 0xc0);
        }
    }
    // The target survived all of it and still moves data.
    let r = ini.scsi(2, &rw16(READ16, 0, 0, 1), None, 0, 512);
    assert_eq!(r.status, 0);
    assert!(reconnects > 0, "some garbage must have closed a connection");
    assert!(
        rejects > 0,
        "some garbage must have been answered with Reject"
    );
}

#[test]
fn cmd_sn_order_is_restored_and_out_of_window_commands_are_ignored() {
    let t = start_target();
    let mut ini = logged_in(&t, 0xc0);
    let nop = |ini: &Initiator, itt: u32, cmd_sn: u32, immediate: bool| {
        let n = NopOut {
            immediate,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn,
            exp_stat_sn: ini.exp_stat_sn,
        };
        ini.send_pdu(IserControl::default(), Pdu::new(n));
    };
    let sn = ini.cmd_sn;
    // Far outside the window: silently ignored.
    nop(&ini, 0x500, sn.wrapping_add(1000), false);
    // CmdSN n+1 arrives before n: held, then both run in CmdSN order.
    nop(&ini, 0x502, sn.wrapping_add(1), false);
    nop(&ini, 0x501, sn, false);
    let mut order = Vec::new();
    for _ in 0..2 {
        let (p, _) = ini.recv_pdu();
        match p.header {
            Header::NopIn(n) => order.push((n.itt, n.exp_cmd_sn)),
            other => panic!("expected NOP-In, got {other:?}"),
        }
    }
    assert_eq!(
        order,
        vec![(0x501, sn.wrapping_add(1)), (0x502, sn.wrapping_add(2))]
    );
    ini.cmd_sn = sn.wrapping_add(2);
    // An immediate ping is answered next: nothing came for the ignored one.
    nop(&ini, 0x503, ini.cmd_sn, true);
    let (p, _) = ini.recv_pdu();
    match p.header {
        Header::NopIn(n) => {
            assert_eq!(n.itt, 0x503);
            assert_eq!(n.exp_cmd_sn, sn.wrapping_add(2));
            assert_eq!(n.max_cmd_sn, sn.wrapping_add(2 + 8 - 1), "queue depth 8");
        }
        other => panic!("expected NOP-In, got {other:?}"),
    }
}
