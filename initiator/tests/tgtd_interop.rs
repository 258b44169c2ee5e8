//! Interoperability with tgtd (Debian package `tgt`): discovery, login (no auth,
//! mutual CHAP, digests), many commands in flight with immediate, unsolicited and
//! solicited data, keepalive, logout; the CLI's exit codes and decoded sense; the
//! daemon's NBD export driven by libnbd's nbdcopy and nbdinfo.

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use initiator::block::{probe, report_luns};
use initiator::login::ChapConfig;
use initiator::{BlockDevice, Error, LoginError, Session, SessionConfig};

const IQN_INIT: &str = "iqn.2026-11.io.iser-pi:test-initiator";

fn need_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: run scripts/test, which installs tgt and libnbd-bin"
    );
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

static NEXT_CONTROL: AtomicU16 = AtomicU16::new(0);

/// One tgtd on its own portal and control port, killed on drop.
struct Tgtd {
    child: Child,
    control: String,
    portal: SocketAddr,
    dir: tempfile::TempDir,
}

impl Tgtd {
    fn start() -> Tgtd {
        need_tool("tgtd");
        need_tool("tgtadm");
        let dir = tempfile::tempdir().expect("tempdir");
        let portal: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        // tgtd takes control ports up to 32767.
        let control = (8000
            + (std::process::id() % 3000) as u16 * 8
            + NEXT_CONTROL.fetch_add(1, Ordering::SeqCst))
        .to_string();
        let log = std::fs::File::create(dir.path().join("tgtd.log")).expect("log file");
        let child = Command::new("tgtd")
            .args(["-f", "-C", &control, "--iscsi", &format!("portal={portal}")])
            .stdout(Stdio::from(log.try_clone().expect("dup")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start tgtd");
        let t = Tgtd {
            child,
            control,
            portal,
            dir,
        };
        let start = Instant::now();
        while Command::new("tgtadm")
            .args([
                "-C", &t.control, "--lld", "iscsi", "--op", "show", "--mode", "target",
            ])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "tgtd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        t
    }

    fn adm(&self, args: &[&str]) {
        let mut all = vec!["-C", &self.control, "--lld", "iscsi"];
        all.extend_from_slice(args);
        let o = Command::new("tgtadm")
            .args(&all)
            .output()
            .expect("run tgtadm");
        assert!(
            o.status.success(),
            "tgtadm {all:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Target `tid` named `iqn` with LUN 1 on a zeroed file of `mib` MiB.
    fn add_target(&self, tid: u32, iqn: &str, mib: u64) -> PathBuf {
        let path = self.dir.path().join(format!("lun-{tid}.img"));
        let f = std::fs::File::create(&path).expect("backing file");
        f.set_len(mib << 20).expect("size backing file");
        let tid = tid.to_string();
        self.adm(&["--op", "new", "--mode", "target", "--tid", &tid, "-T", iqn]);
        self.adm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            &tid,
            "--lun",
            "1",
            "-b",
            path.to_str().expect("utf-8 path"),
        ]);
        self.adm(&[
            "--op", "bind", "--mode", "target", "--tid", &tid, "-I", "ALL",
        ]);
        path
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn off_policy() -> conf::protection::ProtectionPolicy {
    conf::protection::ProtectionPolicy {
        mode: conf::protection::ProtectionMode::Off,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_login_io_in_flight_keepalive_logout() {
    let tgt = Tgtd::start();
    let iqn = "iqn.2026-11.io.iser-pi:tgt-io";
    let backing = tgt.add_target(1, iqn, 8);

    let disc = Session::connect(SessionConfig::new(IQN_INIT, None, tgt.portal))
        .await
        .expect("discovery login");
    let found = disc.send_targets().await.expect("SendTargets");
    disc.logout().await.expect("discovery logout");
    let t = found
        .iter()
        .find(|t| t.name == iqn)
        .expect("target discovered");
    assert_eq!(t.portals[0].port, tgt.portal.port());

    let mut cfg = SessionConfig::new(IQN_INIT, Some(iqn.into()), tgt.portal);
    cfg.nop_interval = Duration::from_millis(500);
    cfg.nop_timeout = Duration::from_secs(2);
    let s = Session::connect(cfg).await.expect("login");
    assert_eq!(report_luns(&s).await.expect("REPORT LUNS"), vec![0, 1]);
    let info = probe(&s, 1).await.expect("probe");
    assert_eq!(
        (info.block_size, info.blocks, info.pi_type),
        (512, 8 * 2048, None)
    );
    let dev = BlockDevice::open(s.clone(), 1, off_policy())
        .await
        .expect("open LUN 1");

    // 1 MiB: immediate data, unsolicited Data-Out up to FirstBurstLength, R2Ts after.
    let big = pattern(1 << 20, 1);
    assert!(dev.write(100, &big, None).await.expect("write").is_good());
    let back = dev.read(100, 2048).await.expect("read");
    assert!(back.is_good());
    assert!(back.data == big, "1 MiB read back differs");
    let on_disk = std::fs::read(&backing).expect("read backing file");
    assert!(
        on_disk[100 * 512..100 * 512 + big.len()] == big[..],
        "backing file differs"
    );

    // 48 commands in flight at once, then each read back.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..48u32 {
        let dev = dev.clone();
        set.spawn(async move {
            let data = pattern(8 * 512, 100 + i);
            let lba = 4000 + u64::from(i) * 8;
            assert!(dev
                .write(lba, &data, None)
                .await
                .expect("write in flight")
                .is_good());
            (lba, data)
        });
    }
    let mut written = Vec::new();
    while let Some(r) = set.join_next().await {
        written.push(r.expect("task"));
    }
    let mut set = tokio::task::JoinSet::new();
    for (lba, data) in written {
        let dev = dev.clone();
        set.spawn(async move {
            let r = dev.read(lba, 8).await.expect("read in flight");
            assert!(r.is_good() && r.data == data, "LBA {lba} read back differs");
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("task");
    }
    assert!(dev.flush().await.expect("flush").is_good());

    // Idle past several NOP intervals: the keepalive keeps the session up.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert_eq!(s.closed_reason(), None);
    s.ping().await.expect("ping");

    // Past the end: the target's sense comes back decoded.
    let r = dev
        .read(info.blocks - 1, 2)
        .await
        .expect("read past the end");
    assert_eq!(r.status, scsi::Status::CHECK_CONDITION);
    let sense = r.sense.expect("sense");
    assert_eq!(
        (sense.key, sense.asc, sense.ascq),
        (scsi::SenseKey::ILLEGAL_REQUEST, 0x21, 0x00)
    );

    // A policy the LUN cannot honour is refused with the LUN's capabilities.
    let insert = conf::protection::ProtectionPolicy::default();
    let err = BlockDevice::open(s.clone(), 1, insert)
        .await
        .expect_err("insert on a LUN without PI");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Policy { lun: 1, .. }) && msg.contains("no protection information"),
        "{msg}"
    );

    s.logout().await.expect("logout");
    assert!(s.closed_reason().is_some());
    assert!(dev.read(0, 1).await.is_err(), "I/O after logout must fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_chap_and_digests() {
    let tgt = Tgtd::start();
    let iqn = "iqn.2026-11.io.iser-pi:tgt-chap";
    tgt.add_target(1, iqn, 4);
    tgt.adm(&[
        "--op",
        "new",
        "--mode",
        "account",
        "--user",
        "alice",
        "--password",
        "alice-secret-123",
    ]);
    tgt.adm(&[
        "--op", "bind", "--mode", "account", "--tid", "1", "--user", "alice",
    ]);
    tgt.adm(&[
        "--op",
        "new",
        "--mode",
        "account",
        "--user",
        "tgtuser",
        "--password",
        "target-secret-456",
    ]);
    tgt.adm(&[
        "--op",
        "bind",
        "--mode",
        "account",
        "--tid",
        "1",
        "--user",
        "tgtuser",
        "--outgoing",
    ]);
    // InitialR2T=No: writes carry immediate data and unsolicited Data-Out up to
    // FirstBurstLength before the R2Ts.
    tgt.adm(&[
        "--op",
        "update",
        "--mode",
        "target",
        "--tid",
        "1",
        "-n",
        "InitialR2T",
        "-v",
        "No",
    ]);
    for key in ["HeaderDigest", "DataDigest"] {
        tgt.adm(&[
            "--op",
            "update",
            "--mode",
            "target",
            "--tid",
            "1",
            "-n",
            key,
            "-v",
            "CRC32C,None",
        ]);
    }

    let chap = |secret: &str, target_secret: Option<&str>| ChapConfig {
        username: "alice".into(),
        secret: secret.as_bytes().to_vec(),
        target_secret: target_secret.map(|s| s.as_bytes().to_vec()),
    };
    // No credentials, wrong secret, wrong target secret: all refused.
    let plain = SessionConfig::new(IQN_INIT, Some(iqn.into()), tgt.portal);
    assert!(
        Session::connect(plain.clone()).await.is_err(),
        "login without CHAP must fail"
    );
    let mut wrong = plain.clone();
    wrong.chap = Some(chap("not-the-secret-1", None));
    match Session::connect(wrong).await {
        Err(Error::Login {
            source: LoginError::Status { status, .. },
            ..
        }) => assert_eq!(status.class(), 2),
        other => panic!("wrong secret: {other:?}"),
    }
    let mut bad_mutual = plain.clone();
    bad_mutual.chap = Some(chap("alice-secret-123", Some("wrong-target-secret")));
    match Session::connect(bad_mutual).await {
        Err(Error::Login {
            source: LoginError::Chap(_),
            ..
        }) => {}
        other => panic!("wrong mutual secret: {other:?}"),
    }

    let mut cfg = plain;
    cfg.chap = Some(chap("alice-secret-123", Some("target-secret-456")));
    cfg.header_digest = true;
    cfg.data_digest = true;
    let s = Session::connect(cfg).await.expect("mutual CHAP login");
    assert!(
        s.params().header_digest && s.params().data_digest,
        "digests negotiated"
    );
    assert!(
        !s.params().initial_r2t && s.params().immediate_data,
        "InitialR2T=No, ImmediateData=Yes"
    );
    let dev = BlockDevice::open(s.clone(), 1, off_policy())
        .await
        .expect("open");
    let data = pattern(300 * 512, 7);
    assert!(dev.write(10, &data, None).await.expect("write").is_good());
    let r = dev.read(10, 300).await.expect("read");
    assert!(r.is_good() && r.data == data);
    s.logout().await.expect("logout");
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_iser-initiator")
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut c = Command::new(bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run iser-initiator");
    if let Some(data) = stdin {
        c.stdin
            .take()
            .expect("stdin")
            .write_all(data)
            .expect("feed stdin");
    }
    drop(c.stdin.take());
    c.wait_with_output().expect("wait")
}

#[test]
fn cli_discover_write_read_and_exit_codes() {
    let tgt = Tgtd::start();
    let iqn = "iqn.2026-11.io.iser-pi:tgt-cli";
    tgt.add_target(1, iqn, 4);
    let portal = tgt.portal.to_string();

    let o = run(&["discover", "--portal", &portal, "--json"], None);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["targets"][0]["name"], iqn);

    let data = pattern(64 * 512, 3);
    let common = [
        "--target",
        iqn,
        "--portal",
        &portal,
        "--lun",
        "1",
        "--transport",
        "tcp",
    ];
    let mut w = vec!["write"];
    w.extend_from_slice(&common);
    w.extend_from_slice(&["--lba", "32"]);
    let o = run(&w, Some(&data));
    assert!(
        o.status.success(),
        "write: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let mut r = vec!["read"];
    r.extend_from_slice(&common);
    r.extend_from_slice(&["--lba", "32", "--blocks", "64"]);
    let o = run(&r, None);
    assert!(
        o.status.success(),
        "read: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.stdout == data, "CLI read differs from what was written");

    // Past the end: CHECK CONDITION, exit 3, decoded sense in text and JSON.
    let mut r = vec!["read"];
    r.extend_from_slice(&common);
    r.extend_from_slice(&["--lba", "8191", "--blocks", "2"]);
    let o = run(&r, None);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("CHECK CONDITION")
            && err.contains("LOGICAL BLOCK ADDRESS OUT OF RANGE (21h/00h)"),
        "{err}"
    );
    r.push("--json");
    let o = run(&r, None);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(
        (
            v["status"].as_u64(),
            v["sense"]["key"].as_u64(),
            v["sense"]["asc"].as_u64()
        ),
        (Some(2), Some(5), Some(0x21))
    );
    assert_eq!(v["sense"]["origin"], "target");

    // A protection mode the LUN cannot honour names the LUN and what it supports.
    let mut r = vec!["read"];
    r.extend_from_slice(&common);
    r.extend_from_slice(&["--lba", "0", "--blocks", "1", "--mode", "insert"]);
    let o = run(&r, None);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("LUN 1") && err.contains("no protection information"),
        "{err}"
    );

    // iSER is refused with a clear message until the transport exists.
    let mut r = vec![
        "read",
        "--target",
        iqn,
        "--portal",
        &portal,
        "--lun",
        "1",
        "--lba",
        "0",
        "--blocks",
        "1",
        "--transport",
        "iser",
    ];
    r.push("--json");
    let o = run(&r, None);
    assert_eq!(o.status.code(), Some(1));

    let o = run(
        &["login", "--target", iqn, "--portal", &portal, "--json"],
        None,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["luns"][0]["block_size"], 512);
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn daemon_serves_nbd_export() {
    need_tool("nbdcopy");
    need_tool("nbdinfo");
    let tgt = Tgtd::start();
    let iqn = "iqn.2026-11.io.iser-pi:tgt-nbd";
    let backing = tgt.add_target(1, iqn, 8);
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("lun1.sock");
    let mnt = dir.path().join("mnt");
    let config = dir.path().join("initiator.toml");
    std::fs::write(
        &config,
        format!(
            "iqn = \"{IQN_INIT}\"\n[[sessions]]\ntarget = \"{iqn}\"\nportal = \"{}\"\ntransport = \"tcp\"\nnop_interval = 1\n\
             [sessions.protection]\nmode = \"off\"\n[[sessions.luns]]\nid = 1\nnbd = \"unix:{}\"\nfuse = \"{}\"\n",
            tgt.portal,
            sock.display(),
            mnt.display()
        ),
    )
    .expect("write config");
    let o = run(
        &[
            "--config",
            config.to_str().expect("utf-8"),
            "--check-config",
        ],
        None,
    );
    assert!(
        o.status.success(),
        "check-config: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let control = dir.path().join("control.sock");
    let control_s = control.to_str().expect("utf-8").to_owned();
    let daemon = Command::new(bin())
        .args([
            "--config",
            config.to_str().expect("utf-8"),
            "--control-socket",
            &control_s,
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("daemon.log")).expect("log"),
        ))
        .spawn()
        .expect("start daemon");
    let mut daemon = KillOnDrop(daemon);
    wait_for(&sock);
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let info = Command::new("nbdinfo")
        .args(["--size", &uri])
        .output()
        .expect("nbdinfo");
    assert_eq!(
        String::from_utf8_lossy(&info.stdout).trim(),
        (8u64 << 20).to_string()
    );

    let src = dir.path().join("src.bin");
    let data = pattern(8 << 20, 11);
    std::fs::write(&src, &data).expect("write src");
    let st = Command::new("nbdcopy")
        .args([src.to_str().expect("utf-8"), &uri])
        .status()
        .expect("nbdcopy in");
    assert!(st.success());
    let dst = dir.path().join("dst.bin");
    let st = Command::new("nbdcopy")
        .args([&uri, dst.to_str().expect("utf-8")])
        .status()
        .expect("nbdcopy out");
    assert!(st.success());
    assert!(
        std::fs::read(&dst).expect("read dst") == data,
        "NBD round trip differs"
    );

    // FUSE: the same LUN as a file; writes (aligned and not) reach the backing file.
    let file = mnt.join("lun1");
    wait_for(&file);
    assert_eq!(std::fs::metadata(&file).expect("stat").len(), 8 << 20);
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .expect("open FUSE file");
        let chunk = pattern(256 << 10, 21);
        f.seek(SeekFrom::Start(64 << 10)).expect("seek");
        f.write_all(&chunk).expect("write FUSE file");
        f.seek(SeekFrom::Start(1000)).expect("seek");
        f.write_all(b"xyz").expect("unaligned write");
        f.sync_all().expect("fsync");
        let mut back = vec![0u8; chunk.len()];
        f.seek(SeekFrom::Start(64 << 10)).expect("seek");
        f.read_exact(&mut back).expect("read FUSE file");
        assert!(back == chunk, "FUSE read back differs");
        let disk = std::fs::read(&backing).expect("backing file");
        assert!(
            disk[64 << 10..(64 << 10) + chunk.len()] == chunk[..],
            "backing file differs"
        );
        assert_eq!(&disk[1000..1003], b"xyz");
    }

    // The control socket: list, log a second target in and out.
    wait_for(&control);
    let o = run(
        &["sessions", "--json", "--control-socket", &control_s],
        None,
    );
    assert!(
        o.status.success(),
        "sessions: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["sessions"][0]["target"], iqn);
    assert_eq!(v["sessions"][0]["state"], "logged in over tcp");
    assert_eq!(v["sessions"][0]["luns"][0]["pi_errors_initiator"], 0);
    let iqn2 = "iqn.2026-11.io.iser-pi:tgt-nbd2";
    tgt.add_target(2, iqn2, 1);
    let portal = tgt.portal.to_string();
    let o = run(
        &[
            "login",
            "--daemon",
            "--target",
            iqn2,
            "--portal",
            &portal,
            "--transport",
            "tcp",
            "--control-socket",
            &control_s,
        ],
        None,
    );
    assert!(
        o.status.success(),
        "login --daemon: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(&["sessions", "--control-socket", &control_s], None);
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains(iqn2) && text.lines().count() == 2, "{text}");
    let o = run(
        &["logout", "--target", iqn2, "--control-socket", &control_s],
        None,
    );
    assert!(
        o.status.success(),
        "logout: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = run(
        &["logout", "--target", iqn2, "--control-socket", &control_s],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "a second logout has no session");
    let o = run(
        &[
            "login",
            "--daemon",
            "--target",
            "iqn.2026-11.io.iser-pi:nobody",
            "--portal",
            &portal,
            "--transport",
            "tcp",
            "--control-socket",
            &control_s,
        ],
        None,
    );
    assert_eq!(o.status.code(), Some(1), "login to an unknown target fails");

    // SIGINT: the daemon logs out and removes its socket.
    let pid = daemon.0.id().to_string();
    Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill -INT");
    let start = Instant::now();
    let status = loop {
        if let Some(st) = daemon.0.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!("daemon did not exit on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    assert!(!sock.exists(), "socket left behind");
    assert!(!control.exists(), "control socket left behind");
    assert!(!file.exists(), "FUSE mount left behind");
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(log.contains("logged out"), "{log}");
}

/// A child process killed (if still running) when the test ends, pass or fail.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
