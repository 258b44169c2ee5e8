//! Session behaviour against a small scripted target built from `iscsi` and `scsi`:
//! the CmdSN window (MaxCmdSN), R2T-driven writes, protection on the wire (DIF) in
//! insert and pass modes, corruption on the wire caught by the initiator, target
//! NOP-In pings, task timeouts with ABORT TASK then LOGICAL UNIT RESET, and the NOP-Out
//! keepalive closing a dead connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use conf::protection::{PiCheck, ProtectionMode, ProtectionPolicy};
use initiator::block::SenseOrigin;
use initiator::{BlockDevice, Error, Session, SessionConfig};
use iscsi::negotiate::{LocalParams, Negotiation};
use iscsi::pdu::{
    DataIn, Header, LoginResponse, LoginStatus, LogoutResponse, LogoutResponseCode, NopIn, Pdu,
    R2t, Residual, Role, ScsiResponse, Stage, TmfFunction, TmfResponse, TmfResponseCode,
    WireConfig, RESERVED_TAG,
};
use iscsi::text::TextKeys;
use iscsi::{Codec, Framer};
use scsi::{Cdb, RwKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const BS: usize = 512;
const BLOCKS: u64 = 4096;

/// What the scripted target does.
#[derive(Debug, Clone)]
struct Knobs {
    /// Commands allowed in flight (MaxCmdSN - ExpCmdSN + 1).
    window: u32,
    /// Delay before a command completes.
    delay: Duration,
    /// Protection Type 1 LUN (else no PI).
    pi: bool,
    /// Flip a data bit of this LBA in Data-In when PI is on the wire.
    corrupt_read_lba: Option<u64>,
    /// Never answer the first WRITE.
    swallow_first_write: bool,
    /// The answer to ABORT TASK.
    abort_answer: TmfResponseCode,
    /// Send a NOP-In ping right after login.
    ping_after_login: bool,
    /// Ignore NOP-Outs (a dead peer for the keepalive).
    mute_nops: bool,
    /// Close the first connection when this many SCSI commands have arrived on it.
    drop_first_connection_after: Option<u32>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            window: 4,
            delay: Duration::from_millis(2),
            pi: true,
            corrupt_read_lba: None,
            swallow_first_write: false,
            abort_answer: TmfResponseCode::Complete,
            ping_after_login: false,
            mute_nops: false,
            drop_first_connection_after: None,
        }
    }
}

/// What the scripted target saw.
#[derive(Debug, Default)]
struct Seen {
    max_in_flight: u32,
    window_violations: u32,
    nop_replies: u32,
    tmfs: Vec<TmfFunction>,
    r2ts: u32,
    logouts: u32,
}

struct Store {
    data: Vec<u8>,
    pi: Vec<u8>,
}

struct Shared {
    knobs: Knobs,
    connections: Mutex<u32>,
    seen: Mutex<Seen>,
    store: Mutex<Store>,
    sn: Mutex<Sns>,
}

#[derive(Default)]
struct Sns {
    stat_sn: u32,
    completed: u32,
    in_flight: u32,
}

impl Shared {
    fn max_cmd_sn(&self) -> u32 {
        let s = self.sn.lock().unwrap();
        s.completed + self.knobs.window
    }
}

struct Write {
    lun: u64,
    cdb: Vec<u8>,
    buf: Vec<u8>,
    edtl: u32,
    burst_end: u32,
    ttt: u32,
}

async fn start(knobs: Knobs) -> (SocketAddr, Arc<Shared>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pi = knobs.pi;
    let shared = Arc::new(Shared {
        knobs,
        connections: Mutex::new(0),
        seen: Mutex::new(Seen::default()),
        store: Mutex::new(Store {
            data: vec![0; BLOCKS as usize * BS],
            pi: vec![if pi { 0xFF } else { 0 }; BLOCKS as usize * 8],
        }),
        sn: Mutex::new(Sns::default()),
    });
    let sh = shared.clone();
    tokio::spawn(async move {
        // One connection per test (plus nothing else): bounded by the test's life.
        while let Ok((stream, _)) = listener.accept().await {
            let sh = sh.clone();
            tokio::spawn(async move { connection(stream, sh).await });
        }
    });
    (addr, shared)
}

async fn read_one(rd: &mut tokio::net::tcp::OwnedReadHalf, framer: &mut Framer) -> Option<Pdu> {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Some(r) = framer.poll() {
            return r.ok();
        }
        let want = framer.needed().min(buf.len());
        let n = rd.read(&mut buf[..want]).await.ok()?;
        if n == 0 {
            return None;
        }
        framer.feed(&buf[..n]);
    }
}

async fn connection(stream: tokio::net::TcpStream, sh: Arc<Shared>) {
    let conn_no = {
        let mut c = sh.connections.lock().unwrap();
        *c += 1;
        *c
    };
    let mut commands_here = 0u32;
    let (mut rd, mut wr) = stream.into_split();
    let wire = WireConfig {
        limits: iscsi::PduLimits {
            max_recv_data_segment_length: 1 << 20,
        },
        ..WireConfig::default()
    };
    let mut framer = Framer::new(wire);
    // Login: transit whenever asked; operational keys through iscsi::negotiate.
    let mut neg = Negotiation::new(
        Role::Target,
        LocalParams {
            initial_r2t: true,
            max_burst_length: 16384,
            first_burst_length: 8192,
            ..LocalParams::default()
        },
    );
    loop {
        let Some(pdu) = read_one(&mut rd, &mut framer).await else {
            return;
        };
        let Header::LoginRequest(req) = &pdu.header else {
            return;
        };
        let keys = TextKeys::parse(&pdu.data).unwrap_or_default();
        let mut answer = TextKeys::new();
        if req.csg == Stage::Security {
            if keys.get("AuthMethod").is_some() {
                answer.push("AuthMethod", "None");
            }
        } else {
            answer = neg.handle(&keys).unwrap_or_default();
            answer
                .0
                .extend(neg.declare("MaxRecvDataSegmentLength", "8192").0);
        }
        let sn = {
            let mut s = sh.sn.lock().unwrap();
            s.stat_sn += 1;
            s.stat_sn - 1
        };
        let rsp = LoginResponse {
            transit: req.transit,
            continue_: false,
            csg: req.csg,
            nsg: if req.transit {
                req.nsg
            } else {
                Stage::Security
            },
            version_max: 0,
            version_active: 0,
            isid: req.isid,
            tsih: 7,
            itt: req.itt,
            stat_sn: sn,
            exp_cmd_sn: 1,
            max_cmd_sn: sh.knobs.window,
            status: LoginStatus::SUCCESS,
        };
        wr.write_all(&Pdu::with_data(rsp, answer.encode()).to_bytes(&WireConfig::default()))
            .await
            .unwrap();
        if req.transit && req.nsg == Stage::FullFeature {
            break;
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Pdu>();
    let wsh = sh.clone();
    tokio::spawn(async move {
        while let Some(mut pdu) = rx.recv().await {
            let max = wsh.max_cmd_sn();
            let bump = !matches!(&pdu.header, Header::R2t(_))
                && !matches!(&pdu.header, Header::DataIn(d) if d.status.is_none())
                && !matches!(&pdu.header, Header::NopIn(n) if n.itt == RESERVED_TAG);
            let (exp, stat_sn) = {
                let mut s = wsh.sn.lock().unwrap();
                let stat_sn = s.stat_sn;
                if bump {
                    s.stat_sn += 1;
                }
                (s.completed + 1, stat_sn)
            };
            match &mut pdu.header {
                Header::ScsiResponse(h) => {
                    (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max)
                }
                Header::DataIn(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max),
                Header::R2t(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max),
                Header::NopIn(h) => (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max),
                Header::TmfResponse(h) => {
                    (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max)
                }
                Header::LogoutResponse(h) => {
                    (h.stat_sn, h.exp_cmd_sn, h.max_cmd_sn) = (stat_sn, exp, max)
                }
                _ => {}
            }
            if wr
                .write_all(&pdu.to_bytes(&WireConfig::default()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    if sh.knobs.ping_after_login {
        let _ = tx.send(Pdu::with_data(
            NopIn {
                lun: 0,
                itt: RESERVED_TAG,
                ttt: 0x1234,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
            },
            b"ping".to_vec(),
        ));
    }
    let mut writes: HashMap<u32, Write> = HashMap::new();
    let mut swallowed = false;
    let mut next_ttt = 100u32;
    while let Some(pdu) = read_one(&mut rd, &mut framer).await {
        match &pdu.header {
            Header::ScsiCommand(h) => {
                commands_here += 1;
                if conn_no == 1 && sh.knobs.drop_first_connection_after == Some(commands_here) {
                    // Vanish without an answer: the reader and the writer both end.
                    return;
                }
                {
                    let mut s = sh.sn.lock().unwrap();
                    if h.cmd_sn > s.completed + sh.knobs.window {
                        sh.seen.lock().unwrap().window_violations += 1;
                    }
                    s.in_flight += 1;
                    let mut seen = sh.seen.lock().unwrap();
                    seen.max_in_flight = seen.max_in_flight.max(s.in_flight);
                }
                if h.write {
                    if sh.knobs.swallow_first_write && !swallowed {
                        swallowed = true;
                        continue;
                    }
                    let mut w = Write {
                        lun: h.lun,
                        cdb: h.cdb.clone(),
                        buf: pdu.data.clone(),
                        edtl: h.expected_data_transfer_length,
                        burst_end: 0,
                        ttt: 0,
                    };
                    if (w.buf.len() as u32) < w.edtl {
                        next_ttt += 1;
                        send_r2t(&tx, &sh, h.itt, &mut w, next_ttt);
                        writes.insert(h.itt, w);
                    } else {
                        complete(
                            &tx,
                            &sh,
                            h.itt,
                            h.lun,
                            &w.cdb,
                            &w.buf,
                            h.expected_data_transfer_length,
                        );
                    }
                } else {
                    complete(
                        &tx,
                        &sh,
                        h.itt,
                        h.lun,
                        &h.cdb,
                        &[],
                        h.expected_data_transfer_length,
                    );
                }
            }
            Header::DataOut(h) => {
                let Some(w) = writes.get_mut(&h.itt) else {
                    continue;
                };
                if h.ttt != w.ttt || h.buffer_offset as usize != w.buf.len() {
                    continue;
                }
                w.buf.extend_from_slice(&pdu.data);
                if w.buf.len() as u32 == w.edtl {
                    let w = writes.remove(&h.itt).unwrap();
                    complete(&tx, &sh, h.itt, w.lun, &w.cdb, &w.buf, w.edtl);
                } else if w.buf.len() as u32 == w.burst_end {
                    next_ttt += 1;
                    send_r2t(&tx, &sh, h.itt, w, next_ttt);
                }
            }
            Header::NopOut(h) => {
                if sh.knobs.mute_nops {
                    continue;
                }
                if h.ttt != RESERVED_TAG {
                    sh.seen.lock().unwrap().nop_replies += 1;
                } else {
                    let _ = tx.send(Pdu::with_data(
                        NopIn {
                            lun: 0,
                            itt: h.itt,
                            ttt: RESERVED_TAG,
                            stat_sn: 0,
                            exp_cmd_sn: 0,
                            max_cmd_sn: 0,
                        },
                        pdu.data.clone(),
                    ));
                }
            }
            Header::TmfRequest(h) => {
                sh.seen.lock().unwrap().tmfs.push(h.function);
                let response = match h.function {
                    TmfFunction::AbortTask => sh.knobs.abort_answer,
                    _ => TmfResponseCode::Complete,
                };
                if response == TmfResponseCode::Complete {
                    let mut s = sh.sn.lock().unwrap();
                    s.in_flight = s.in_flight.saturating_sub(1);
                    s.completed += 1;
                }
                let _ = tx.send(Pdu::new(TmfResponse {
                    response,
                    itt: h.itt,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                }));
            }
            Header::LogoutRequest(h) => {
                sh.seen.lock().unwrap().logouts += 1;
                let _ = tx.send(Pdu::new(LogoutResponse {
                    response: LogoutResponseCode::Success,
                    itt: h.itt,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                    time2wait: 0,
                    time2retain: 0,
                }));
            }
            _ => {}
        }
    }
}

fn send_r2t(tx: &mpsc::UnboundedSender<Pdu>, sh: &Shared, itt: u32, w: &mut Write, ttt: u32) {
    let off = w.buf.len() as u32;
    let len = (w.edtl - off).min(16384);
    w.burst_end = off + len;
    w.ttt = ttt;
    sh.seen.lock().unwrap().r2ts += 1;
    let _ = tx.send(Pdu::new(R2t {
        lun: w.lun,
        itt,
        ttt,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        r2t_sn: 0,
        buffer_offset: off,
        desired_data_transfer_length: len,
    }));
}

/// Execute a command after the knob's delay and send its Data-In / SCSI Response.
fn complete(
    tx: &mpsc::UnboundedSender<Pdu>,
    sh: &Arc<Shared>,
    itt: u32,
    lun: u64,
    cdb: &[u8],
    data_out: &[u8],
    edtl: u32,
) {
    let (tx, sh, cdb, data_out) = (tx.clone(), sh.clone(), cdb.to_vec(), data_out.to_vec());
    tokio::spawn(async move {
        tokio::time::sleep(sh.knobs.delay).await;
        let data_in = execute(&sh, &cdb, &data_out);
        {
            let mut s = sh.sn.lock().unwrap();
            s.in_flight -= 1;
            s.completed += 1;
        }
        let _ = lun;
        if data_in.is_empty() {
            let _ = tx.send(Pdu::new(ScsiResponse {
                bidi_read_residual: Residual::None,
                residual: Residual::None,
                response: 0,
                status: 0,
                itt,
                snack_tag: 0,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                exp_data_sn: 0,
            }));
            return;
        }
        let data_in = &data_in[..data_in.len().min(edtl as usize)];
        let chunks: Vec<&[u8]> = data_in.chunks(8192).collect();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let _ = tx.send(Pdu::with_data(
                DataIn {
                    final_: last,
                    acknowledge: false,
                    residual: Residual::None,
                    status: last.then_some(0),
                    lun: 0,
                    itt,
                    ttt: RESERVED_TAG,
                    stat_sn: 0,
                    exp_cmd_sn: 0,
                    max_cmd_sn: 0,
                    data_sn: i as u32,
                    buffer_offset: (i * 8192) as u32,
                },
                c.to_vec(),
            ));
        }
    });
}

fn execute(sh: &Shared, cdb: &[u8], data_out: &[u8]) -> Vec<u8> {
    let pi = sh.knobs.pi;
    match Cdb::parse(cdb) {
        Ok(Cdb::TestUnitReady) | Ok(Cdb::SynchronizeCache(_)) => Vec::new(),
        Ok(Cdb::Inquiry { .. }) => {
            let mut b = vec![0u8; 36];
            b[2] = 6;
            b[4] = 31;
            b[5] = u8::from(pi);
            b[8..16].copy_from_slice(b"SCRIPTED");
            b[16..32].copy_from_slice(b"FAKE-TARGET     ");
            b
        }
        Ok(Cdb::ReadCapacity16 { .. }) => {
            let mut b = vec![0u8; 32];
            b[0..8].copy_from_slice(&(BLOCKS - 1).to_be_bytes());
            b[8..12].copy_from_slice(&(BS as u32).to_be_bytes());
            b[12] = u8::from(pi);
            b
        }
        Ok(Cdb::ReadWrite(rw)) => {
            let mut st = sh.store.lock().unwrap();
            let (lba, n) = (rw.lba as usize, rw.blocks as usize);
            let dif = pi && rw.protect != 0;
            let stride = if dif { BS + 8 } else { BS };
            match rw.kind {
                RwKind::Write => {
                    for b in 0..n {
                        let src = &data_out[b * stride..b * stride + BS];
                        st.data[(lba + b) * BS..(lba + b + 1) * BS].copy_from_slice(src);
                        if dif {
                            let t = data_out[b * stride + BS..b * stride + BS + 8].to_vec();
                            st.pi[(lba + b) * 8..(lba + b + 1) * 8].copy_from_slice(&t);
                        }
                    }
                    Vec::new()
                }
                _ => {
                    let mut out = Vec::with_capacity(n * stride);
                    for b in 0..n {
                        out.extend_from_slice(&st.data[(lba + b) * BS..(lba + b + 1) * BS]);
                        if dif {
                            out.extend_from_slice(&st.pi[(lba + b) * 8..(lba + b + 1) * 8]);
                        }
                        if dif && sh.knobs.corrupt_read_lba == Some((lba + b) as u64) {
                            let at = b * stride + 100;
                            out[at] ^= 0x04;
                        }
                    }
                    out
                }
            }
        }
        _ => Vec::new(),
    }
}

fn cfg(addr: SocketAddr) -> SessionConfig {
    let mut c = SessionConfig::new(
        "iqn.2026-11.io.iser-pi:fake-init",
        Some("iqn.2026-11.io.iser-pi:fake".into()),
        addr,
    );
    c.nop_interval = Duration::ZERO;
    c.command_timeout = Duration::from_secs(5);
    c
}

fn policy(mode: ProtectionMode) -> ProtectionPolicy {
    ProtectionPolicy {
        mode,
        ..ProtectionPolicy::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_r2t_and_insert_mode_end_to_end() {
    let (addr, sh) = start(Knobs {
        window: 3,
        ..Knobs::default()
    })
    .await;
    let s = Session::connect(cfg(addr)).await.expect("login");
    assert!(
        s.params().initial_r2t,
        "the target asked for InitialR2T=Yes"
    );
    let dev = BlockDevice::open(s.clone(), 0, policy(ProtectionMode::Insert))
        .await
        .expect("open");
    assert_eq!(dev.info().pi_type, Some(1));
    let mut set = tokio::task::JoinSet::new();
    for i in 0..12u8 {
        let dev = dev.clone();
        set.spawn(async move {
            let lba = u64::from(i) * 100;
            let data = pattern(64 * BS, i);
            assert!(dev.write(lba, &data, None).await.expect("write").is_good());
            let r = dev.read(lba, 64).await.expect("read");
            assert!(r.is_good() && r.data == data, "LBA {lba}");
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
    {
        let seen = sh.seen.lock().unwrap();
        assert_eq!(
            seen.window_violations, 0,
            "a command was sent beyond MaxCmdSN"
        );
        assert!(
            seen.max_in_flight <= 3 && seen.max_in_flight >= 2,
            "in flight {}",
            seen.max_in_flight
        );
        // 64 blocks x 520 bytes with InitialR2T=Yes: immediate data, then R2Ts of 16 KiB.
        assert!(seen.r2ts >= 12, "R2Ts {}", seen.r2ts);
    }
    {
        // The stored PI is what INSERT generated: CRC guard, ref tag = LBA, app tag 0.
        let st = sh.store.lock().unwrap();
        let t = t10pi::Tuple::from_slice(&st.pi[(305 * 8)..]).unwrap();
        assert_eq!((t.app_tag, t.ref_tag), (0, 305));
        assert_eq!(
            t.guard,
            t10pi::crc16_t10dif(0, &st.data[305 * BS..306 * BS])
        );
    }
    s.logout().await.expect("logout");
    assert_eq!(sh.seen.lock().unwrap().logouts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_mode_and_wire_corruption_caught_by_the_initiator() {
    let (addr, _sh) = start(Knobs {
        corrupt_read_lba: Some(42),
        ..Knobs::default()
    })
    .await;
    let s = Session::connect(cfg(addr)).await.expect("login");
    let mut pol = policy(ProtectionMode::Pass);
    pol.app_tag = 0x0BAD;
    pol.checks = vec![PiCheck::Guard, PiCheck::Ref, PiCheck::App];
    let dev = BlockDevice::open(s.clone(), 0, pol).await.expect("open");
    let data = pattern(8 * BS, 9);
    let host_pi = {
        let dom = t10pi::T10DifDomain::type1(t10pi::GuardType::Crc, BS as u32, 40)
            .with_app_tag(0x0BAD, 0xFFFF);
        let mut pi = vec![0u8; 64];
        t10pi::generate(&dom, &data, &mut pi, 0).unwrap();
        pi
    };
    assert!(dev
        .write(40, &data, Some(&host_pi))
        .await
        .expect("write")
        .is_good());
    // Blocks 40..48 include the corrupted LBA 42: GOOD from the target becomes
    // CHECK CONDITION, ILLEGAL REQUEST, guard check failed, INFORMATION = 42.
    let r = dev.read(40, 8).await.expect("read");
    assert_eq!(r.status, scsi::Status::CHECK_CONDITION);
    assert_eq!(r.origin, Some(SenseOrigin::Initiator));
    let sense = r.sense.expect("sense");
    assert_eq!(
        (sense.key, sense.asc, sense.ascq, sense.information),
        (scsi::SenseKey::ILLEGAL_REQUEST, 0x10, 0x01, Some(42))
    );
    assert_eq!(r.sense_bytes[0], 0x72, "descriptor format");
    // A range without the corrupted block passes PI through to the host unchanged.
    let r = dev.read(43, 5).await.expect("read");
    assert!(r.is_good());
    assert_eq!(r.data, data[3 * BS..]);
    assert_eq!(r.pi.expect("host PI"), host_pi[24..]);
    // Host PI with a wrong app tag never leaves the initiator.
    let mut bad = host_pi.clone();
    bad[2] ^= 1;
    let r = dev.write(40, &data, Some(&bad)).await.expect("write");
    let sense = r.sense.expect("sense");
    assert_eq!(
        (sense.asc, sense.ascq, sense.information),
        (0x10, 0x02, Some(40))
    );
    assert_eq!(
        (
            dev.counters().detected_by_initiator(),
            dev.counters().reported_by_target()
        ),
        (2, 0)
    );
    s.logout().await.expect("logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_ping_answered_and_timeout_aborts_then_resets() {
    let (addr, sh) = start(Knobs {
        ping_after_login: true,
        swallow_first_write: true,
        ..Knobs::default()
    })
    .await;
    let mut c = cfg(addr);
    c.command_timeout = Duration::from_millis(700);
    let s = Session::connect(c).await.expect("login");
    let dev = BlockDevice::open(s.clone(), 0, policy(ProtectionMode::Insert))
        .await
        .expect("open");
    assert_eq!(
        sh.seen.lock().unwrap().nop_replies,
        1,
        "the target's NOP-In was answered"
    );
    match dev.write(0, &pattern(BS, 1), None).await {
        Err(Error::Timeout { recovery, .. }) => {
            assert!(recovery.contains("ABORT TASK succeeded"), "{recovery}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(sh.seen.lock().unwrap().tmfs, vec![TmfFunction::AbortTask]);
    // The session goes on.
    assert!(dev
        .write(0, &pattern(BS, 2), None)
        .await
        .expect("write")
        .is_good());
    s.logout().await.expect("logout");

    let (addr, sh) = start(Knobs {
        swallow_first_write: true,
        abort_answer: TmfResponseCode::NotSupported,
        ..Knobs::default()
    })
    .await;
    let mut c = cfg(addr);
    c.command_timeout = Duration::from_millis(700);
    let s = Session::connect(c).await.expect("login");
    let dev = BlockDevice::open(s.clone(), 0, policy(ProtectionMode::Insert))
        .await
        .expect("open");
    match dev.write(0, &pattern(BS, 1), None).await {
        Err(Error::Timeout { recovery, .. }) => assert!(
            recovery.contains("LOGICAL UNIT RESET succeeded"),
            "{recovery}"
        ),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(
        sh.seen.lock().unwrap().tmfs,
        vec![TmfFunction::AbortTask, TmfFunction::LogicalUnitReset]
    );
    s.logout().await.expect("logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_closes_a_silent_connection() {
    let (addr, _sh) = start(Knobs {
        mute_nops: true,
        pi: false,
        ..Knobs::default()
    })
    .await;
    let mut c = cfg(addr);
    c.nop_interval = Duration::from_millis(300);
    c.nop_timeout = Duration::from_millis(300);
    let s = Session::connect(c).await.expect("login");
    tokio::time::timeout(Duration::from_secs(3), s.wait_closed())
        .await
        .expect("keepalive closed the session");
    let reason = s.closed_reason().expect("reason");
    assert!(reason.contains("NOP-Out"), "{reason}");
    assert!(matches!(s.ping().await, Err(Error::ConnectionLost(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_reconnects_and_the_export_carries_on() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("nbdcopy").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "nbdcopy is not installed: run scripts/test, which installs libnbd-bin"
    );
    // The first connection dies at its 5th command: after the LUN probe (TEST UNIT
    // READY, INQUIRY, READ CAPACITY(16)), during the NBD writes.
    let (addr, sh) = start(Knobs {
        drop_first_connection_after: Some(5),
        delay: Duration::ZERO,
        ..Knobs::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lun0.sock");
    let config = dir.path().join("initiator.toml");
    std::fs::write(
        &config,
        format!(
            "iqn = \"iqn.2026-11.io.iser-pi:reconnect\"\n[[sessions]]\ntarget = \"iqn.2026-11.io.iser-pi:fake\"\nportal = \"{addr}\"\n\
             transport = \"tcp\"\nnop_interval = 0\ncommand_timeout = 10\n[sessions.reconnect]\ndelay = 1\n\
             [sessions.protection]\nmode = \"insert\"\n[[sessions.luns]]\nid = 0\nnbd = \"unix:{}\"\n",
            sock.display()
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");
    let daemon = std::process::Command::new(env!("CARGO_BIN_EXE_iser-initiator"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--control-socket",
            dir.path().join("ctl.sock").to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut daemon = KillOnDrop(daemon);
    let start_wait = std::time::Instant::now();
    while !sock.exists() {
        assert!(
            start_wait.elapsed() < Duration::from_secs(10),
            "NBD socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let src = dir.path().join("src.bin");
    let data = pattern(1 << 20, 77);
    std::fs::write(&src, &data).unwrap();
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let (s2, u2) = (src.clone(), uri.clone());
    let st = tokio::task::spawn_blocking(move || {
        std::process::Command::new("nbdcopy")
            .args([s2.to_str().unwrap(), &u2])
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(st.success(), "nbdcopy through the reconnect");
    let dst = dir.path().join("dst.bin");
    let (d2, u2) = (dst.clone(), uri.clone());
    let st = tokio::task::spawn_blocking(move || {
        std::process::Command::new("nbdcopy")
            .args([&u2, d2.to_str().unwrap()])
            .status()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(st.success());
    let got = std::fs::read(&dst).unwrap();
    assert_eq!(
        got.len(),
        BLOCKS as usize * BS,
        "the whole export was copied out"
    );
    assert!(
        got[..data.len()] == data[..],
        "data differs after the reconnect"
    );
    assert!(
        *sh.connections.lock().unwrap() >= 2,
        "the daemon logged in again"
    );
    std::process::Command::new("kill")
        .args(["-INT", &daemon.0.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while daemon.0.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "daemon did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("session lost; reconnecting"), "{text}");
}

/// A child process killed (if still running) when the test ends, pass or fail.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
