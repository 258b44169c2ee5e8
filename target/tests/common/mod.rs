//! Test harness: start the `iser-target` binary on a loopback port with a generated
//! configuration, and a minimal blocking iSCSI initiator built from the `iscsi` crate
//! (login with digests or CHAP, SCSI commands with immediate data and R2T, raw PDUs).

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use iscsi::chap::{ChapAlgorithm, ChapInitiator};
use iscsi::login::{
    InitiatorAuth, InitiatorLogin, InitiatorLoginConfig, InitiatorStep, LoginFailure,
};
use iscsi::negotiate::{DigestKind, LocalParams, NegotiatedParams};
use iscsi::pdu::{
    DataOut, Header, Isid, NopOut, Role, ScsiCommand, TaskAttr, TextRequest, RESERVED_TAG,
};
use iscsi::text::TextKeys;
use iscsi::{Codec, Framer, Pdu, WireConfig};

/// Bound on every wait in these tests.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A running `iser-target` started by a test; killed on drop.
#[derive(Debug)]
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub control: PathBuf,
    pub config: PathBuf,
}

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iser-target"))
}

impl Daemon {
    /// Write `config` (with `portals` on 127.0.0.1:0 prepended) into `dir` and start.
    pub fn start(dir: &Path, config_body: &str) -> Daemon {
        let config = dir.join("target.toml");
        let text = format!(
            "worker_threads = 2\nportals = [{{ transport = \"tcp\", listen = \"127.0.0.1:0\" }}]\n{config_body}"
        );
        std::fs::write(&config, text).expect("write config");
        Self::start_with(dir, &config)
    }

    /// Start on an existing configuration file.
    pub fn start_with(dir: &Path, config: &Path) -> Daemon {
        let control = dir.join("control.sock");
        let mut child = Command::new(binary())
            .arg("--config")
            .arg(config)
            .arg("--control-socket")
            .arg(&control)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn iser-target");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the daemon never blocks on stdout.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(TIMEOUT) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("iser-target did not report its portal within {TIMEOUT:?}");
            }
        };
        let addr: SocketAddr = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from iser-target: {line:?}"));
        Daemon {
            child,
            addr,
            dir: dir.to_owned(),
            control,
            config: config.to_owned(),
        }
    }

    /// Send a signal to the daemon (its own pid only).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on the pid of a child this test spawned; no memory is shared.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// Wait for the daemon to exit, bounded by TIMEOUT.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "iser-target did not exit within {TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// How a test client logs in.
#[derive(Debug, Clone, Default)]
pub struct LoginOptions {
    pub digests: bool,
    pub chap: Option<(String, Vec<u8>)>,
    /// Mutual CHAP: the secret the target must prove.
    pub target_secret: Option<Vec<u8>>,
    pub initiator: Option<String>,
    pub isid: Option<[u8; 6]>,
}

/// What a command returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reply {
    pub status: u8,
    pub sense: Vec<u8>,
    pub data: Vec<u8>,
    pub residual: iscsi::pdu::Residual,
}

/// A minimal blocking initiator on one connection.
#[derive(Debug)]
pub struct Client {
    pub stream: TcpStream,
    framer: Framer,
    pub wire: WireConfig,
    pub params: NegotiatedParams,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub itt: u32,
    pending: Vec<u8>,
}

pub const INITIATOR: &str = "iqn.2026-11.io.iser-pi:test-initiator";

impl Client {
    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        s
    }

    /// Log in to `target` (None: a discovery session).
    pub fn login(
        addr: SocketAddr,
        target: Option<&str>,
        opts: &LoginOptions,
    ) -> Result<Client, LoginFailure> {
        let mut stream = Self::connect(addr);
        let initiator = opts
            .initiator
            .clone()
            .unwrap_or_else(|| INITIATOR.to_owned());
        let isid = Isid(opts.isid.unwrap_or([0x80, 0, 0, 0x12, 0x34, 0]));
        let mut cfg = match target {
            Some(t) => InitiatorLoginConfig::normal(initiator, t, isid),
            None => InitiatorLoginConfig::discovery(initiator, isid),
        };
        cfg.local = LocalParams {
            header_digest: if opts.digests {
                vec![DigestKind::Crc32c]
            } else {
                vec![DigestKind::None]
            },
            data_digest: if opts.digests {
                vec![DigestKind::Crc32c]
            } else {
                vec![DigestKind::None]
            },
            max_recv_data_segment_length: 65536,
            // Ask for the most; the target's limits win (OR / MIN).
            initial_r2t: false,
            max_outstanding_r2t: 16,
            max_burst_length: 1 << 20,
            first_burst_length: 1 << 20,
            ..LocalParams::default()
        };
        if let Some((user, secret)) = &opts.chap {
            let mut chap = ChapInitiator::new(&[ChapAlgorithm::Md5], user.clone(), secret.clone());
            if let Some(ts) = &opts.target_secret {
                chap = chap
                    .with_mutual(ts.clone(), 0x42, (0..32).collect())
                    .expect("mutual CHAP setup");
            }
            cfg.auth = InitiatorAuth::Chap(chap);
        }
        let mut login = InitiatorLogin::new(cfg);
        let mut framer = Framer::new(WireConfig::default());
        let mut pending = Vec::new();
        let first = login.start()?;
        stream
            .write_all(&first.to_bytes(&WireConfig::default()))
            .expect("send login");
        for _ in 0..16 {
            let pdu = read_pdu(&mut stream, &mut framer, &mut pending).expect("login response");
            match login.handle_response(&pdu)? {
                InitiatorStep::Send(p) => stream
                    .write_all(&p.to_bytes(&WireConfig::default()))
                    .expect("send"),
                InitiatorStep::Complete(o) => {
                    let wire = WireConfig {
                        digests: o.params.digests(),
                        limits: o.params.recv_limits(Role::Initiator),
                    };
                    framer.set_config(wire);
                    return Ok(Client {
                        stream,
                        framer,
                        wire,
                        params: o.params,
                        cmd_sn: o.cmd_sn,
                        exp_stat_sn: o.exp_stat_sn,
                        itt: 1,
                        pending,
                    });
                }
            }
        }
        Err(LoginFailure::Protocol("login did not finish in 16 steps"))
    }

    pub fn send(&mut self, pdu: &Pdu) {
        self.stream
            .write_all(&pdu.to_bytes(&self.wire))
            .expect("send PDU");
    }

    /// The next PDU from the target (panics after TIMEOUT).
    pub fn recv(&mut self) -> Pdu {
        let p = read_pdu(&mut self.stream, &mut self.framer, &mut self.pending)
            .expect("PDU from target");
        if let Some((stat_sn, _, _)) = p.header.stat_fields() {
            let counts = match &p.header {
                Header::DataIn(d) => d.status.is_some(),
                Header::R2t(_) => false,
                Header::NopIn(n) => n.itt != RESERVED_TAG,
                _ => true,
            };
            if counts {
                self.exp_stat_sn = stat_sn.wrapping_add(1);
            }
        }
        p
    }

    /// Wait up to `wait` for a PDU; None if none came.
    pub fn try_recv(&mut self, wait: Duration) -> Option<Pdu> {
        self.stream.set_read_timeout(Some(wait)).expect("timeout");
        let r = read_pdu(&mut self.stream, &mut self.framer, &mut self.pending);
        self.stream
            .set_read_timeout(Some(TIMEOUT))
            .expect("timeout");
        r
    }

    pub fn next_itt(&mut self) -> u32 {
        self.itt += 1;
        self.itt
    }

    /// Run one SCSI command to completion (immediate data, R2T-driven Data-Out).
    pub fn command(
        &mut self,
        lun: u64,
        cdb: &[u8],
        edtl: u32,
        read: bool,
        data_out: &[u8],
    ) -> Reply {
        let itt = self.next_itt();
        let write = !data_out.is_empty();
        let imm = if write && self.params.immediate_data {
            data_out
                .len()
                .min(self.params.first_burst_length as usize)
                .min(self.params.max_send_data_segment(Role::Initiator) as usize)
        } else {
            0
        };
        let unsolicited = write && !self.params.initial_r2t && imm < data_out.len();
        let cmd = ScsiCommand {
            immediate: false,
            final_: !unsolicited,
            read,
            write,
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
        self.send(&Pdu::with_data(cmd, data_out[..imm].to_vec()));
        if unsolicited {
            let end = (self.params.first_burst_length as usize).min(data_out.len());
            self.send_data_out(itt, RESERVED_TAG, lun, data_out, imm, end);
        }
        let mut reply = Reply::default();
        for _ in 0..100_000 {
            let p = self.recv();
            match p.header {
                Header::R2t(r) => {
                    let start = r.buffer_offset as usize;
                    let end = start + r.desired_data_transfer_length as usize;
                    self.send_data_out(itt, r.ttt, lun, data_out, start, end);
                }
                Header::DataIn(d) => {
                    assert_eq!(
                        d.buffer_offset as usize,
                        reply.data.len(),
                        "Data-In in order"
                    );
                    reply.data.extend_from_slice(&p.data);
                    if let Some(s) = d.status {
                        reply.status = s;
                        reply.residual = d.residual;
                        return reply;
                    }
                }
                Header::ScsiResponse(r) => {
                    reply.status = r.status;
                    reply.residual = r.residual;
                    if p.data.len() >= 2 {
                        let n = u16::from_be_bytes([p.data[0], p.data[1]]) as usize;
                        reply.sense = p.data[2..2 + n.min(p.data.len() - 2)].to_vec();
                    }
                    return reply;
                }
                Header::NopIn(n) if n.ttt != RESERVED_TAG => {
                    self.send(&Pdu::new(NopOut {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn: self.cmd_sn,
                        exp_stat_sn: self.exp_stat_sn,
                    }));
                }
                other => panic!("unexpected PDU during a command: {other:?}"),
            }
        }
        panic!("command did not complete");
    }

    /// TEST UNIT READY until GOOD: consumes the unit attentions of a new nexus.
    pub fn clear_ua(&mut self, lun: u64) {
        for _ in 0..8 {
            if self.command(lun, &[0; 6], 0, false, &[]).status == 0 {
                return;
            }
        }
        panic!("LUN {lun} keeps reporting unit attentions");
    }

    fn send_data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        lun: u64,
        data: &[u8],
        start: usize,
        end: usize,
    ) {
        let seg = self.params.max_send_data_segment(Role::Initiator) as usize;
        let mut off = start;
        let mut data_sn = 0;
        while off < end {
            let n = seg.min(end - off);
            let hdr = DataOut {
                final_: off + n == end,
                lun: lun << 48,
                itt,
                ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn,
                buffer_offset: off as u32,
            };
            self.send(&Pdu::with_data(hdr, data[off..off + n].to_vec()));
            off += n;
            data_sn += 1;
        }
    }

    /// SendTargets=`what` in a Text Request; returns the keys.
    pub fn send_targets(&mut self, what: &str) -> TextKeys {
        let itt = self.next_itt();
        let mut k = TextKeys::new();
        k.push("SendTargets", what);
        let req = TextRequest {
            immediate: false,
            final_: true,
            continue_: false,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        };
        self.cmd_sn = self.cmd_sn.wrapping_add(1);
        self.send(&Pdu::with_data(req, k.encode()));
        let p = self.recv();
        let Header::TextResponse(r) = p.header else {
            panic!("expected Text Response, got {:?}", p.header)
        };
        assert!(r.final_);
        TextKeys::parse(&p.data).expect("SendTargets text")
    }
}

fn read_pdu(stream: &mut TcpStream, framer: &mut Framer, pending: &mut Vec<u8>) -> Option<Pdu> {
    let mut buf = [0u8; 65536];
    for _ in 0..1_000_000 {
        if let Some(p) = framer.poll() {
            return Some(p.expect("well-formed PDU from the target"));
        }
        if !pending.is_empty() {
            let used = framer.feed(pending);
            pending.drain(..used);
            continue;
        }
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
    None
}

/// READ(10)/WRITE(10) CDBs.
pub fn rw10(op: u8, protect: u8, lba: u32, blocks: u16, fua: bool) -> Vec<u8> {
    let mut c = vec![0u8; 10];
    c[0] = op;
    c[1] = protect << 5 | if fua { 0x08 } else { 0 };
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A deterministic test pattern.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// Sense key, ASC, ASCQ of fixed or descriptor sense.
pub fn sense_key_asc(sense: &[u8]) -> Option<(u8, u8, u8)> {
    target::stats::sense_key_asc(sense)
}
