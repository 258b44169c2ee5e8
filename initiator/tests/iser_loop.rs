//! The iSER transport against a small in-test target loop built from `iscsi` + `verbs`
//! on two soft mlx5 devices: CM private data, login over SENDs with RDMAExtensions,
//! data moved by the target's RDMA WRITE (reads) and RDMA READ (writes) through the
//! initiator's signature MR in insert, pass, strip and off modes, and a corruption on
//! the wire reported from `check_mr_status` as ILLEGAL REQUEST with the failing LBA.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use conf::protection::{PiCheck, ProtectionMode, ProtectionPolicy};
use initiator::block::SenseOrigin;
use initiator::iser::{IserConfig, IserSession};
use initiator::lun::encode_lun;
use initiator::protection::{CommandProtection, Direction};
use initiator::{BlockDevice, SessionConfig};
use iscsi::iser::{IserCmHdr, IserControl, IserHeader, IserMessage};
use iscsi::negotiate::{LocalParams, Negotiation};
use iscsi::pdu::{
    Header, LoginResponse, LoginStatus, LogoutResponse, LogoutResponseCode, NopIn, Pdu, PduLimits,
    Residual, Role, ScsiResponse, Stage, TmfResponse, TmfResponseCode,
};
use iscsi::text::TextKeys;
use iscsi::Codec;
use scsi::{Cdb, ReadWrite, RwKind};
use verbs::cm::{CmAddr, CmListener};
use verbs::{AccessFlags, Context, Cq, Mr, Pd, Qp, QpInitAttr, RecvWr, SendWr, WcOpcode};

const BS: usize = 512;
const BLOCKS: usize = 2048;
const RING: usize = 16;
const RECV_BUF: usize = 28 + 48 + 256 + 65536;

struct Lun {
    pi: bool,
    data: Vec<u8>,
    tuples: Vec<u8>,
    corrupt_read_lba: Option<usize>,
    /// Reads send only this many blocks and report the rest as underflow.
    short_read: Option<usize>,
}

struct Target {
    pd: Pd,
    qp: Qp,
    send_cq: Cq,
    stat_sn: u32,
    cmds: u32,
    next_wr: u64,
}

impl Target {
    /// Post one send-queue WR and wait for its completion.
    async fn run(&mut self, wr: SendWr) {
        let id = wr.wr_id;
        self.qp.post_send_one(wr).expect("post_send");
        // Bounded by the completion of `id` (the target issues one WR at a time).
        loop {
            let wc = tokio::time::timeout(Duration::from_secs(10), self.send_cq.next())
                .await
                .expect("target WR completion")
                .expect("cq");
            assert!(wc.is_ok(), "target WR failed: {wc:?}");
            if wc.wr_id == id {
                return;
            }
        }
    }

    async fn send(&mut self, mut pdu: Pdu) {
        let (stat_sn, exp, max) = (self.stat_sn, self.cmds + 1, self.cmds + 16);
        match &mut pdu.header {
            Header::LoginResponse(h) => {
                (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max)
            }
            Header::ScsiResponse(h) => {
                (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max)
            }
            Header::NopIn(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max),
            Header::TmfResponse(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max),
            Header::LogoutResponse(h) => {
                (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max)
            }
            _ => {}
        }
        self.stat_sn += 1;
        let msg = IserMessage {
            header: IserHeader::Control(IserControl::default()),
            pdu: Some(pdu),
        };
        let bytes = msg.to_bytes(&PduLimits::default());
        let mr = self
            .pd
            .reg_mr(bytes.len(), AccessFlags::LOCAL_WRITE)
            .unwrap();
        mr.write_at(0, &bytes).unwrap();
        self.next_wr += 1;
        self.run(SendWr::send(self.next_wr, mr.sge_all())).await;
    }
}

/// Serve one iSER connection: login, SCSI commands with RDMA data, NOP, TMF, logout.
async fn serve(
    ctx: Context,
    mut listener: CmListener,
    lun: Arc<Mutex<Lun>>,
    seen_private: Arc<Mutex<Vec<u8>>>,
) {
    let req = listener.next_request().await.expect("connect request");
    *seen_private.lock().unwrap() = req.private_data().to_vec();
    let pd = ctx.alloc_pd().unwrap();
    let send_cq = ctx.create_cq(256).unwrap();
    let recv_cq = ctx.create_cq(256).unwrap();
    let qp = pd
        .create_qp(&send_cq, &recv_cq, &QpInitAttr::default())
        .unwrap();
    let ring: Vec<Mr> = (0..RING)
        .map(|_| pd.reg_mr(RECV_BUF, AccessFlags::LOCAL_WRITE).unwrap())
        .collect();
    for (i, mr) in ring.iter().enumerate() {
        qp.post_recv_one(RecvWr::new(i as u64, mr.sge_all()))
            .unwrap();
    }
    let mut reply = Vec::new();
    IserCmHdr {
        zbva_not_supported: true,
        send_w_inv_not_supported: true,
    }
    .encode(&(), &mut reply);
    let _conn = req.accept(&qp, &reply).expect("accept");
    let mut t = Target {
        pd,
        qp,
        send_cq,
        stat_sn: 0,
        cmds: 0,
        next_wr: 1000,
    };
    let mut neg = Negotiation::new(
        Role::Target,
        LocalParams {
            rdma_extensions: true,
            ..LocalParams::default()
        },
    );
    loop {
        let Ok(Ok(wc)) = tokio::time::timeout(Duration::from_secs(20), recv_cq.next()).await else {
            return;
        };
        if !wc.is_ok() || wc.opcode != WcOpcode::Recv {
            return;
        }
        let mr = &ring[wc.wr_id as usize];
        let bytes = mr.to_vec(0, wc.byte_len as usize).unwrap();
        t.qp.post_recv_one(RecvWr::new(wc.wr_id, mr.sge_all()))
            .unwrap();
        let msg = IserMessage::decode(
            &bytes,
            &PduLimits {
                max_recv_data_segment_length: 65536,
            },
        )
        .expect("iSER message");
        let IserHeader::Control(ctl) = msg.header else {
            continue;
        };
        let Some(pdu) = msg.pdu else { continue };
        match &pdu.header {
            Header::LoginRequest(r) => {
                let keys = TextKeys::parse(&pdu.data).unwrap_or_default();
                let mut answer = TextKeys::new();
                if r.csg == Stage::Security {
                    if keys.get("AuthMethod").is_some() {
                        answer.push("AuthMethod", "None");
                    }
                } else {
                    answer = neg.handle(&keys).expect("negotiation");
                }
                let rsp = LoginResponse {
                    transit: r.transit,
                    continue_: false,
                    csg: r.csg,
                    nsg: if r.transit { r.nsg } else { Stage::Security },
                    version_max: 0,
                    version_active: 0,
                    isid: r.isid,
                    tsih: 9,
                    itt: r.itt,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                    status: LoginStatus::SUCCESS,
                };
                t.send(Pdu::with_data(rsp, answer.encode())).await;
            }
            Header::ScsiCommand(c) => {
                t.cmds += 1;
                let data_in = if c.write {
                    let w = ctl.write.expect("Write STag on a write");
                    let local =
                        t.pd.reg_mr(
                            c.expected_data_transfer_length as usize,
                            AccessFlags::LOCAL_WRITE,
                        )
                        .unwrap();
                    t.next_wr += 1;
                    t.run(SendWr::rdma_read(t.next_wr, local.sge_all(), w.va, w.stag))
                        .await;
                    let out = local.to_vec(0, local.len()).unwrap();
                    execute(&lun, &c.cdb, &out)
                } else {
                    execute(&lun, &c.cdb, &[])
                };
                let mut residual = Residual::None;
                if c.read && !data_in.is_empty() {
                    let r = ctl.read.expect("Read STag on a read");
                    let mut n = data_in.len().min(c.expected_data_transfer_length as usize);
                    let short = lun.lock().unwrap().short_read;
                    if let (Some(k), Ok(Cdb::ReadWrite(rw))) = (short, Cdb::parse(&c.cdb)) {
                        let stride = data_in.len() / (rw.blocks.max(1) as usize);
                        n = n.min(k * stride);
                    }
                    if n < c.expected_data_transfer_length as usize {
                        residual = Residual::Underflow(c.expected_data_transfer_length - n as u32);
                    }
                    let local = t.pd.reg_mr(n, AccessFlags::LOCAL_WRITE).unwrap();
                    local.write_at(0, &data_in[..n]).unwrap();
                    t.next_wr += 1;
                    t.run(SendWr::rdma_write(t.next_wr, local.sge_all(), r.va, r.stag))
                        .await;
                }
                let rsp = ScsiResponse {
                    bidi_read_residual: Residual::None,
                    residual,
                    response: 0,
                    status: 0,
                    itt: c.itt,
                    snack_tag: 0,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                    exp_data_sn: 0,
                };
                t.send(Pdu::new(rsp)).await;
            }
            Header::NopOut(h) => {
                t.send(Pdu::new(NopIn {
                    lun: 0,
                    itt: h.itt,
                    ttt: iscsi::pdu::RESERVED_TAG,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                }))
                .await;
            }
            Header::TmfRequest(h) => {
                t.send(Pdu::new(TmfResponse {
                    response: TmfResponseCode::Complete,
                    itt: h.itt,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                }))
                .await;
            }
            Header::LogoutRequest(h) => {
                let rsp = LogoutResponse {
                    response: LogoutResponseCode::Success,
                    itt: h.itt,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                    time2wait: 0,
                    time2retain: 0,
                };
                t.send(Pdu::new(rsp)).await;
                return;
            }
            _ => {}
        }
    }
}

fn execute(lun: &Mutex<Lun>, cdb: &[u8], data_out: &[u8]) -> Vec<u8> {
    let mut l = lun.lock().unwrap();
    match Cdb::parse(cdb) {
        Ok(Cdb::Inquiry { .. }) => {
            let mut b = vec![0u8; 36];
            b[2] = 6;
            b[4] = 31;
            b[5] = u8::from(l.pi);
            b[8..16].copy_from_slice(b"LOOPISER");
            b[16..32].copy_from_slice(b"IN-TEST TARGET  ");
            b
        }
        Ok(Cdb::ReadCapacity16 { .. }) => {
            let mut b = vec![0u8; 32];
            b[0..8].copy_from_slice(&(BLOCKS as u64 - 1).to_be_bytes());
            b[8..12].copy_from_slice(&(BS as u32).to_be_bytes());
            b[12] = u8::from(l.pi);
            b
        }
        Ok(Cdb::ReadWrite(rw)) => {
            let (lba, n) = (rw.lba as usize, rw.blocks as usize);
            let dif = l.pi && rw.protect != 0;
            let stride = if dif { BS + 8 } else { BS };
            if rw.kind == RwKind::Write {
                for b in 0..n {
                    let src = data_out[b * stride..b * stride + BS].to_vec();
                    l.data[(lba + b) * BS..(lba + b + 1) * BS].copy_from_slice(&src);
                    if dif {
                        let tup = data_out[b * stride + BS..(b + 1) * stride].to_vec();
                        l.tuples[(lba + b) * 8..(lba + b + 1) * 8].copy_from_slice(&tup);
                    }
                }
                Vec::new()
            } else {
                let mut out = Vec::with_capacity(n * stride);
                for b in 0..n {
                    out.extend_from_slice(&l.data[(lba + b) * BS..(lba + b + 1) * BS]);
                    if dif {
                        out.extend_from_slice(&l.tuples[(lba + b) * 8..(lba + b + 1) * 8]);
                    }
                    if l.corrupt_read_lba == Some(lba + b) {
                        let at = b * stride + 7;
                        out[at] ^= 0x10;
                    }
                }
                out
            }
        }
        _ => Vec::new(),
    }
}

struct Setup {
    session: IserSession,
    lun: Arc<Mutex<Lun>>,
    private: Arc<Mutex<Vec<u8>>>,
    _dir: tempfile::TempDir,
}

async fn setup(pi: bool, corrupt_read_lba: Option<usize>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let addr = CmAddr::Unix(dir.path().join("iser.sock"));
    let tctx = mlx5::Mlx5Device::new("mlx5_loop_tgt").context();
    let listener = CmListener::bind(&tctx, &addr).expect("listen");
    let lun = Arc::new(Mutex::new(Lun {
        pi,
        data: vec![0; BLOCKS * BS],
        tuples: vec![0xFF; BLOCKS * 8],
        corrupt_read_lba,
        short_read: None,
    }));
    let private = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(serve(tctx, listener, lun.clone(), private.clone()));
    let mut scfg = SessionConfig::new(
        "iqn.2026-11.io.iser-pi:loop-init",
        Some("iqn.2026-11.io.iser-pi:loop".into()),
        "127.0.0.1:9".parse().unwrap(),
    );
    scfg.command_timeout = Duration::from_secs(10);
    scfg.nop_interval = Duration::ZERO;
    let cfg = IserConfig {
        session: scfg,
        fabric: addr,
        context: Some(mlx5::Mlx5Device::new("mlx5_loop_ini").context()),
    };
    let session = IserSession::connect(cfg).await.expect("iSER login");
    Setup {
        session,
        lun,
        private,
        _dir: dir,
    }
}

fn policy(mode: ProtectionMode) -> ProtectionPolicy {
    ProtectionPolicy {
        mode,
        ..ProtectionPolicy::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iser_login_and_insert_mode_through_the_signature_mr() {
    let s = setup(true, None).await;
    assert_eq!(
        s.private.lock().unwrap()[0],
        0xC0,
        "iser_cm_hdr ZBVA_NOT_SUP | SEND_W_INV_NOT_SUP"
    );
    let p = s.session.params().expect("params");
    assert!(p.rdma_extensions && !p.immediate_data && p.initial_r2t);
    s.session.ping().await.expect("NOP over iSER");
    let dev = BlockDevice::open(s.session.clone(), 0, policy(ProtectionMode::Insert))
        .await
        .expect("open");
    assert_eq!(dev.info().pi_type, Some(1));
    let data = pattern(64 * BS, 5);
    assert!(dev.write(100, &data, None).await.expect("write").is_good());
    {
        // The target READ the wire view: DIF generated by the HCA (CRC, ref tag = LBA).
        let l = s.lun.lock().unwrap();
        assert_eq!(l.data[100 * BS..164 * BS], data[..]);
        let t = t10pi::Tuple::from_slice(&l.tuples[130 * 8..]).unwrap();
        assert_eq!((t.ref_tag, t.app_tag), (130, 0));
        assert_eq!(t.guard, t10pi::crc16_t10dif(0, &data[30 * BS..31 * BS]));
    }
    let r = dev.read(100, 64).await.expect("read");
    assert!(r.is_good());
    assert!(r.data == data, "read back differs");
    // Plain commands too: the sig MR is only for protected READ/WRITE.
    assert!(dev.flush().await.expect("flush").is_good());
    s.session.logout().await.expect("logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iser_corruption_on_the_wire_is_a_sig_error_with_the_lba() {
    let s = setup(true, Some(203)).await;
    let mut pol = policy(ProtectionMode::Pass);
    pol.checks = vec![PiCheck::Guard, PiCheck::Ref];
    let dev = BlockDevice::open(s.session.clone(), 0, pol)
        .await
        .expect("open");
    let data = pattern(8 * BS, 1);
    assert!(dev.write(200, &data, None).await.expect("write").is_good());
    let r = dev.read(200, 8).await.expect("read");
    assert_eq!(
        r.status,
        scsi::Status::CHECK_CONDITION,
        "GOOD from the target overridden"
    );
    assert_eq!(r.origin, Some(SenseOrigin::Initiator));
    let sense = r.sense.expect("sense");
    assert_eq!(
        (sense.key, sense.asc, sense.ascq, sense.information),
        (scsi::SenseKey::ILLEGAL_REQUEST, 0x10, 0x01, Some(203))
    );
    assert_eq!(r.sense_bytes[0], 0x72);
    assert_eq!(dev.counters().detected_by_initiator(), 1);
    // Blocks without the corruption deliver data and the host's PI.
    let r = dev.read(204, 4).await.expect("read");
    assert!(r.is_good());
    assert_eq!(r.data, data[4 * BS..]);
    let pi = r.pi.expect("host PI in pass mode");
    assert_eq!(t10pi::Tuple::from_slice(&pi[8..]).unwrap().ref_tag, 205);
    s.session.logout().await.expect("logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iser_strip_and_off_modes_on_a_lun_without_pi() {
    let s = setup(false, None).await;
    let dev = BlockDevice::open(s.session.clone(), 0, policy(ProtectionMode::Strip))
        .await
        .expect("open strip");
    let data = pattern(16 * BS, 9);
    assert!(dev.write(7, &data, None).await.expect("write").is_good());
    let r = dev.read(7, 16).await.expect("read");
    assert!(r.is_good() && r.data == data);
    // The HCA generated host PI on the read (memory domain DIF, wire none).
    let pi = r.pi.expect("host PI");
    let t = t10pi::Tuple::from_slice(&pi[15 * 8..]).unwrap();
    assert_eq!(
        (t.ref_tag, t.guard),
        (22, t10pi::crc16_t10dif(0, &data[15 * BS..]))
    );
    let off = BlockDevice::open(s.session.clone(), 0, policy(ProtectionMode::Off))
        .await
        .expect("open off");
    let r = off.read(7, 16).await.expect("read");
    assert!(r.is_good() && r.data == data && r.pi.is_none());
    assert!(
        BlockDevice::open(s.session.clone(), 0, policy(ProtectionMode::Insert))
            .await
            .is_err(),
        "insert needs a PI LUN"
    );
    s.session.logout().await.expect("logout");
}

/// A read the target answers with fewer blocks than asked for (GOOD, underflow):
/// the block device refuses it as it does over TCP, and one level down the
/// completion holds the blocks sent and zeros, never the bytes an earlier read
/// left in the reused buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iser_short_read_returns_no_stale_bytes_of_an_earlier_read() {
    let s = setup(true, None).await;
    let pol = policy(ProtectionMode::Pass);
    let dev = BlockDevice::open(s.session.clone(), 0, pol.clone())
        .await
        .expect("open");
    let data = pattern(8 * BS, 3);
    assert!(dev.write(40, &data, None).await.expect("write").is_good());
    // Fills the pooled data and PI buffers with these blocks.
    let r = dev.read(40, 8).await.expect("read");
    assert!(r.is_good() && r.data == data);

    s.lun.lock().unwrap().short_read = Some(3);
    match dev.read(40, 8).await {
        Err(initiator::Error::Protocol(m)) => assert!(m.contains("1560 of 4160"), "{m}"),
        other => panic!("a short GOOD read must fail: {other:?}"),
    }
    let p = CommandProtection::select(&pol, dev.info(), Direction::Read, 40, 8);
    let cdb = Cdb::ReadWrite(ReadWrite::new(RwKind::Read, p.form, 40, 8).with_protect(p.protect))
        .to_bytes()
        .unwrap();
    let pc = s
        .session
        .execute_protected(encode_lun(0), &cdb, &p, 40, 8, None)
        .await
        .expect("command");
    let c = pc.completion;
    assert_eq!((c.status, c.residual), (0, Residual::Underflow(5 * 520)));
    assert_eq!(c.data[..3 * BS], data[..3 * BS]);
    assert!(
        c.data[3 * BS..].iter().all(|&b| b == 0),
        "stale data after the blocks sent"
    );
    let pi = pc.pi.expect("host PI in pass mode");
    assert_eq!(t10pi::Tuple::from_slice(&pi[16..]).unwrap().ref_tag, 42);
    assert!(
        pi[3 * 8..].iter().all(|&b| b == 0),
        "stale PI after the blocks sent"
    );
    s.session.logout().await.expect("logout");
}
