//! The `iser-target` binary on a loopback port, driven by a minimal initiator built
//! from the `iscsi` crate: discovery, login (plain, digests, CHAP), reads and writes
//! through immediate data and R2T, PI on the wire, malformed PDUs, CmdSN windows,
//! task management, logout, the admin view, clean shutdown and kill -9 durability.

mod common;

use std::time::Duration;

use common::*;
use iscsi::login::LoginFailure;
use iscsi::pdu::{
    Header, LoginStatus, LogoutReason, LogoutRequest, LogoutResponseCode, NopOut, RejectReason,
    ScsiCommand, TaskAttr, TmfFunction, TmfRequest, TmfResponseCode, RESERVED_TAG,
};
use iscsi::Pdu;

const IQN: &str = "iqn.2026-11.io.iser-pi:test";

fn luns_config() -> String {
    format!(
        r#"
[iscsi]
nop_in_interval = 0

[[targets]]
iqn = "{IQN}"

[[targets.luns]]
id = 0
backing = {{ type = "ram", size = "4MiB" }}

[[targets.luns]]
id = 1
backing = {{ type = "ram", size = "4MiB" }}
protection = {{ type = 1 }}
"#
    )
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// PI tuples for `blocks` 512-byte blocks starting at `lba` (Type 1), interleaved.
fn with_pi(data: &[u8], lba: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 512 * 520);
    for (i, b) in data.chunks(512).enumerate() {
        out.extend_from_slice(b);
        out.extend_from_slice(&t10pi::crc16_t10dif(0, b).to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&(lba + i as u32).to_be_bytes());
    }
    out
}

#[test]
fn discovery_login_write_read_and_status() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &luns_config());

    let mut disc = Client::login(d.addr, None, &LoginOptions::default()).expect("discovery login");
    let keys = disc.send_targets("All");
    assert_eq!(keys.get("TargetName"), Some(IQN));
    assert_eq!(
        keys.get("TargetAddress"),
        Some(format!("{},1", d.addr).as_str())
    );

    let mut c = Client::login(d.addr, Some(IQN), &LoginOptions::default()).expect("login");
    // In a normal session SendTargets names the session's own target.
    assert_eq!(c.send_targets("All").get("TargetName"), Some(IQN));
    c.clear_ua(0);
    c.clear_ua(1);

    // 64 KiB write: 8 KiB of immediate data, the rest through R2Ts.
    let data = pattern(65536, 7);
    let r = c.command(0, &rw10(0x2a, 0, 100, 128, false), 65536, false, &data);
    assert_eq!(r.status, 0, "write sense {:02x?}", r.sense);
    let r = c.command(0, &rw10(0x28, 0, 100, 128, false), 65536, true, &[]);
    assert_eq!(r.status, 0);
    assert_eq!(r.data, data);

    // PI on the wire: write with WRPROTECT=1, read it back with RDPROTECT=1.
    let wire = with_pi(&data[..4096], 8);
    let r = c.command(
        1,
        &rw10(0x2a, 1, 8, 8, false),
        wire.len() as u32,
        false,
        &wire,
    );
    assert_eq!(r.status, 0, "PI write sense {:02x?}", r.sense);
    let r = c.command(1, &rw10(0x28, 1, 8, 8, false), wire.len() as u32, true, &[]);
    assert_eq!((r.status, &r.data), (0, &wire));
    // A corrupted guard is refused with ABORTED COMMAND 10h/01h and counted.
    let mut bad = wire.clone();
    bad[3 * 520 + 1] ^= 0xff;
    let r = c.command(
        1,
        &rw10(0x2a, 1, 8, 8, false),
        bad.len() as u32,
        false,
        &bad,
    );
    assert_eq!(r.status, 2);
    assert_eq!(sense_key_asc(&r.sense), Some((0x0b, 0x10, 0x01)));

    // Residuals: the initiator expects more than the CDB reads.
    let r = c.command(0, &rw10(0x28, 0, 0, 1, false), 4096, true, &[]);
    assert_eq!(r.residual, iscsi::pdu::Residual::Underflow(3584));
    // A LUN that does not exist.
    let r = c.command(5, &[0; 6], 0, false, &[]);
    assert_eq!(
        (r.status, sense_key_asc(&r.sense)),
        (2, Some((0x05, 0x25, 0x00)))
    );
    let r = c.command(5, &[0x12, 0, 0, 0, 36, 0], 36, true, &[]);
    assert_eq!((r.status, r.data[0]), (0, 0x7f));
    // REPORT LUNS lists both LUNs.
    let r = c.command(0, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256, true, &[]);
    assert_eq!(&r.data[..4], &16u32.to_be_bytes());

    let out = std::process::Command::new(binary())
        .args(["--control-socket"])
        .arg(&d.control)
        .args(["status", "--json"])
        .output()
        .expect("status");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON status");
    let sessions = report["sessions"].as_array().expect("sessions");
    assert!(sessions
        .iter()
        .any(|s| s["initiator"] == INITIATOR && s["target"] == IQN));
    let luns = report["targets"][0]["luns"].as_array().expect("luns");
    assert_eq!(luns[1]["pi_type"], 1);
    assert_eq!(luns[1]["counters"]["guard_errors"], 1);
    assert_eq!(luns[0]["counters"]["writes"], 1);
}

#[test]
fn digests_and_unsolicited_data() {
    let dir = tempdir();
    let cfg = luns_config().replace("nop_in_interval = 0", "nop_in_interval = 0\ninitial_r2t = false\nmax_outstanding_r2t = 4\nmax_burst_length = 16384\nfirst_burst_length = 16384");
    let d = Daemon::start(dir.path(), &cfg);
    let mut c = Client::login(
        d.addr,
        Some(IQN),
        &LoginOptions {
            digests: true,
            ..Default::default()
        },
    )
    .expect("login");
    assert!(c.params.header_digest && c.params.data_digest);
    assert!(!c.params.initial_r2t);
    assert_eq!(c.params.max_outstanding_r2t, 4);
    c.clear_ua(0);
    // 256 KiB: immediate, unsolicited Data-Out up to FirstBurstLength, then 16 KiB bursts.
    let data = pattern(262_144, 3);
    let r = c.command(
        0,
        &rw10(0x2a, 0, 0, 512, true),
        data.len() as u32,
        false,
        &data,
    );
    assert_eq!(r.status, 0, "sense {:02x?}", r.sense);
    let r = c.command(
        0,
        &rw10(0x28, 0, 0, 512, false),
        data.len() as u32,
        true,
        &[],
    );
    assert_eq!(r.data, data);
}

#[test]
fn data_digest_error_on_data_out_ends_the_task() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &luns_config());
    let mut c = Client::login(
        d.addr,
        Some(IQN),
        &LoginOptions {
            digests: true,
            ..Default::default()
        },
    )
    .expect("login");
    c.clear_ua(0);
    let itt = c.next_itt();
    let cmd = ScsiCommand {
        immediate: false,
        final_: true,
        read: false,
        write: true,
        attr: TaskAttr::Simple,
        lun: 0,
        itt,
        expected_data_transfer_length: 4096,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
        cdb: rw10(0x2a, 0, 0, 8, false),
        bidi_read_length: None,
    };
    c.cmd_sn += 1;
    c.send(&Pdu::new(cmd));
    let p = c.recv();
    let Header::R2t(r) = p.header else {
        panic!("expected R2T, got {:?}", p.header)
    };
    let out = iscsi::pdu::DataOut {
        final_: true,
        lun: 0,
        itt,
        ttt: r.ttt,
        exp_stat_sn: c.exp_stat_sn,
        data_sn: 0,
        buffer_offset: 0,
    };
    let mut bytes = iscsi::Codec::to_bytes(&Pdu::with_data(out, vec![0x5a; 4096]), &c.wire);
    bytes[48 + 4 + 100] ^= 1; // BHS, header digest, then data: corrupt one data byte
    c.stream.write_all_bytes(&bytes);
    let p = c.recv();
    let Header::Reject(rej) = p.header else {
        panic!("expected Reject, got {:?}", p.header)
    };
    assert_eq!(rej.reason, RejectReason::DataDigestError);
    let p = c.recv();
    let Header::ScsiResponse(resp) = p.header else {
        panic!("expected SCSI Response, got {:?}", p.header)
    };
    assert_eq!((resp.itt, resp.status), (itt, 2));
    assert_eq!(sense_key_asc(&p.data[2..]), Some((0x0b, 0x47, 0x05)));
}

#[test]
fn chap_wrong_secret_fails_and_right_secret_logs_in() {
    let dir = tempdir();
    let cfg = luns_config().replace(
        &format!("iqn = \"{IQN}\"\n"),
        &format!(
            "iqn = \"{IQN}\"\nchap = {{ username = \"alice\", secret = \"correct-horse-1\" }}\n"
        ),
    );
    let d = Daemon::start(dir.path(), &cfg);
    let wrong = LoginOptions {
        chap: Some(("alice".into(), b"wrong-secret-99".to_vec())),
        ..Default::default()
    };
    match Client::login(d.addr, Some(IQN), &wrong) {
        Err(LoginFailure::Status(s)) => assert_eq!(s, LoginStatus::AUTHENTICATION_FAILURE),
        other => panic!("expected an authentication failure, got {other:?}"),
    }
    let none = Client::login(d.addr, Some(IQN), &LoginOptions::default());
    assert!(
        matches!(none, Err(LoginFailure::Status(_))),
        "login without CHAP must fail"
    );
    let right = LoginOptions {
        chap: Some(("alice".into(), b"correct-horse-1".to_vec())),
        ..Default::default()
    };
    let mut c = Client::login(d.addr, Some(IQN), &right).expect("CHAP login");
    assert_eq!(
        c.command(0, &[0; 6], 0, false, &[]).status,
        2,
        "first command reports the power-on unit attention"
    );
}

#[test]
fn mutual_chap_and_discovery_chap() {
    let dir = tempdir();
    let cfg = luns_config()
        .replace(
            &format!("iqn = \"{IQN}\"\n"),
            &format!(
                "iqn = \"{IQN}\"\nchap = {{ username = \"bob\", secret = \"initiator-secret-1\" }}\n\
                 mutual_chap = {{ username = \"target-name\", secret = \"target-secret-22\" }}\n"
            ),
        )
        .replace(
            "[iscsi]",
            "[discovery]\nchap = { username = \"disco\", secret = \"discovery-secret\" }\n\n[iscsi]",
        );
    let d = Daemon::start(dir.path(), &cfg);
    // Discovery requires its own credentials.
    assert!(Client::login(d.addr, None, &LoginOptions::default()).is_err());
    let disco = LoginOptions {
        chap: Some(("disco".into(), b"discovery-secret".to_vec())),
        ..Default::default()
    };
    let mut c = Client::login(d.addr, None, &disco).expect("discovery CHAP login");
    assert_eq!(c.send_targets("All").get("TargetName"), Some(IQN));
    // Mutual CHAP: the target proves its secret too.
    let good = LoginOptions {
        chap: Some(("bob".into(), b"initiator-secret-1".to_vec())),
        target_secret: Some(b"target-secret-22".to_vec()),
        ..Default::default()
    };
    Client::login(d.addr, Some(IQN), &good).expect("mutual CHAP login");
    // An initiator expecting another target secret refuses the target.
    let bad = LoginOptions {
        target_secret: Some(b"some-other-secret".to_vec()),
        ..good
    };
    assert!(matches!(
        Client::login(d.addr, Some(IQN), &bad),
        Err(LoginFailure::Chap(_))
    ));
}

#[test]
fn acl_refuses_other_initiators() {
    let dir = tempdir();
    let cfg = luns_config().replace(
        &format!("iqn = \"{IQN}\"\n"),
        &format!("iqn = \"{IQN}\"\nacl = [\"iqn.2026-11.io.iser-pi:someone-else\"]\n"),
    );
    let d = Daemon::start(dir.path(), &cfg);
    match Client::login(d.addr, Some(IQN), &LoginOptions::default()) {
        Err(LoginFailure::Status(s)) => assert_eq!(s, LoginStatus::AUTHORIZATION_FAILURE),
        other => panic!("expected an authorization failure, got {other:?}"),
    }
    let mut disc = Client::login(d.addr, None, &LoginOptions::default()).expect("discovery");
    assert!(
        disc.send_targets("All").get("TargetName").is_none(),
        "hidden from initiators outside the ACL"
    );
}

#[test]
fn malformed_pdu_gets_reject_and_session_survives() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &luns_config());
    let mut c = Client::login(d.addr, Some(IQN), &LoginOptions::default()).expect("login");
    // Opcode 0x0f is not defined by RFC 7143.
    let mut bhs = [0u8; 48];
    bhs[0] = 0x0f;
    bhs[16..20].copy_from_slice(&0x1234u32.to_be_bytes());
    c.stream.write_all_bytes(&bhs);
    let p = c.recv();
    let Header::Reject(r) = p.header else {
        panic!("expected Reject, got {:?}", p.header)
    };
    assert_eq!(r.reason, RejectReason::CommandNotSupported);
    assert_eq!(p.data, bhs.to_vec(), "Reject carries the offending header");
    // The connection still works.
    assert!(c.command(0, &[0x12, 0, 0, 0, 36, 0], 36, true, &[]).status == 0);
}

#[test]
fn out_of_window_cmd_sn_is_ignored() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &luns_config());
    let mut c = Client::login(d.addr, Some(IQN), &LoginOptions::default()).expect("login");
    let cmd = ScsiCommand {
        immediate: false,
        final_: true,
        read: true,
        write: false,
        attr: TaskAttr::Simple,
        lun: 0,
        itt: 0x77,
        expected_data_transfer_length: 36,
        cmd_sn: c.cmd_sn.wrapping_add(100_000),
        exp_stat_sn: c.exp_stat_sn,
        cdb: vec![0x12, 0, 0, 0, 36, 0],
        bidi_read_length: None,
    };
    c.send(&Pdu::new(cmd));
    assert!(
        c.try_recv(Duration::from_millis(500)).is_none(),
        "out-of-window command must be ignored"
    );
    // A NOP-Out with the right CmdSN is answered, and so is the next command.
    let itt = c.next_itt();
    c.send(&Pdu::with_data(
        NopOut {
            immediate: false,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: c.cmd_sn,
            exp_stat_sn: c.exp_stat_sn,
        },
        b"ping".to_vec(),
    ));
    c.cmd_sn += 1;
    let p = c.recv();
    let Header::NopIn(n) = p.header else {
        panic!("expected NOP-In, got {:?}", p.header)
    };
    assert_eq!((n.itt, p.data.as_slice()), (itt, &b"ping"[..]));
    let r = c.command(0, &[0x12, 0, 0, 0, 36, 0], 36, true, &[]);
    assert_eq!(r.status, 0);
}

#[test]
fn task_management_and_logout() {
    let dir = tempdir();
    let d = Daemon::start(dir.path(), &luns_config());
    let mut c = Client::login(d.addr, Some(IQN), &LoginOptions::default()).expect("login");
    let tmf = |c: &mut Client, function, lun: u64, rtt| {
        let itt = c.next_itt();
        c.send(&Pdu::new(TmfRequest {
            immediate: true,
            function,
            lun: lun << 48,
            itt,
            referenced_task_tag: rtt,
            cmd_sn: c.cmd_sn,
            exp_stat_sn: c.exp_stat_sn,
            ref_cmd_sn: c.cmd_sn.wrapping_add(5),
            exp_data_sn: 0,
        }));
        let p = c.recv();
        let Header::TmfResponse(r) = p.header else {
            panic!("expected TMF Response, got {:?}", p.header)
        };
        assert_eq!(r.itt, itt);
        r.response
    };
    assert_eq!(
        tmf(&mut c, TmfFunction::AbortTask, 0, 0x999),
        TmfResponseCode::TaskDoesNotExist
    );
    assert_eq!(
        tmf(&mut c, TmfFunction::AbortTaskSet, 0, RESERVED_TAG),
        TmfResponseCode::Complete
    );
    assert_eq!(
        tmf(&mut c, TmfFunction::LogicalUnitReset, 9, RESERVED_TAG),
        TmfResponseCode::LunDoesNotExist
    );
    assert_eq!(
        tmf(&mut c, TmfFunction::LogicalUnitReset, 0, RESERVED_TAG),
        TmfResponseCode::Complete
    );
    assert_eq!(
        tmf(&mut c, TmfFunction::TaskReassign, 0, 1),
        TmfResponseCode::ReassignmentNotSupported
    );
    // After the LUN reset: UNIT ATTENTION (29h/xx) on LUN 0.
    let r = c.command(0, &[0; 6], 0, false, &[]);
    let (key, asc, _) = sense_key_asc(&r.sense).expect("sense");
    assert_eq!((r.status, key, asc), (2, 0x06, 0x29));
    assert_eq!(
        tmf(&mut c, TmfFunction::TargetWarmReset, 0, RESERVED_TAG),
        TmfResponseCode::Complete
    );

    let itt = c.next_itt();
    c.send(&Pdu::new(LogoutRequest {
        immediate: true,
        reason: LogoutReason::CloseSession,
        itt,
        cid: 0,
        cmd_sn: c.cmd_sn,
        exp_stat_sn: c.exp_stat_sn,
    }));
    let p = c.recv();
    let Header::LogoutResponse(r) = p.header else {
        panic!("expected Logout Response, got {:?}", p.header)
    };
    assert_eq!((r.itt, r.response), (itt, LogoutResponseCode::Success));
    assert!(
        c.try_recv(Duration::from_secs(5)).is_none(),
        "connection closed after logout"
    );
}

#[test]
fn nop_in_keepalive_drops_a_silent_initiator() {
    let dir = tempdir();
    let cfg = luns_config().replace(
        "nop_in_interval = 0",
        "nop_in_interval = 1\nnop_in_timeout = 1",
    );
    let d = Daemon::start(dir.path(), &cfg);
    let mut c = Client::login(d.addr, Some(IQN), &LoginOptions::default()).expect("login");
    let p = c.try_recv(Duration::from_secs(5)).expect("NOP-In ping");
    let Header::NopIn(n) = p.header else {
        panic!("expected NOP-In, got {:?}", p.header)
    };
    assert_eq!(n.itt, RESERVED_TAG);
    assert_ne!(n.ttt, RESERVED_TAG);
    // We do not answer: the target closes the connection.
    assert!(
        c.try_recv(Duration::from_secs(6)).is_none(),
        "connection closed after the NOP-In timeout"
    );
}

#[test]
fn sigterm_finishes_and_exits_cleanly() {
    let dir = tempdir();
    let mut d = Daemon::start(dir.path(), &luns_config());
    let mut c = Client::login(d.addr, Some(IQN), &LoginOptions::default()).expect("login");
    assert_eq!(
        c.command(
            0,
            &rw10(0x2a, 0, 0, 8, false),
            4096,
            false,
            &pattern(4096, 1)
        )
        .status,
        2,
        "power-on UA"
    );
    d.signal(libc::SIGTERM);
    let status = d.wait();
    assert!(status.success(), "exit status {status:?}");
    assert!(!d.control.exists(), "control socket removed at exit");
}

#[test]
fn kill_9_keeps_flushed_data_and_pi() {
    let dir = tempdir();
    let data_path = dir.path().join("lun0.img");
    let cfg = format!(
        r#"
[iscsi]
nop_in_interval = 0

[[targets]]
iqn = "{IQN}"

[[targets.luns]]
id = 0
backing = {{ type = "file", path = "{}", create = true, size = "8MiB" }}
protection = {{ type = 1 }}
"#,
        data_path.display()
    );
    let data = pattern(16 * 512, 9);
    let wire = with_pi(&data, 40);
    {
        let mut d = Daemon::start(dir.path(), &cfg);
        let mut c = Client::login(d.addr, Some(IQN), &LoginOptions::default()).expect("login");
        let _ = c.command(0, &[0; 6], 0, false, &[]); // consume the power-on UA
                                                      // WRITE(10) with FUA and PI, then WRITE + SYNCHRONIZE CACHE.
        let r = c.command(
            0,
            &rw10(0x2a, 1, 40, 16, true),
            wire.len() as u32,
            false,
            &wire,
        );
        assert_eq!(r.status, 0, "sense {:02x?}", r.sense);
        let wire2 = with_pi(&data, 200);
        let r = c.command(
            0,
            &rw10(0x2a, 1, 200, 16, false),
            wire2.len() as u32,
            false,
            &wire2,
        );
        assert_eq!(r.status, 0);
        assert_eq!(
            c.command(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, false, &[])
                .status,
            0
        );
        d.signal(libc::SIGKILL);
        let _ = d.wait();
    }
    assert!(
        dir.path().join("lun0.img.pi").exists(),
        "PI sidecar beside the data file"
    );
    let d = Daemon::start_with(dir.path(), &dir.path().join("target.toml"));
    let mut c =
        Client::login(d.addr, Some(IQN), &LoginOptions::default()).expect("login after restart");
    let _ = c.command(0, &[0; 6], 0, false, &[]);
    let r = c.command(
        0,
        &rw10(0x28, 1, 40, 16, false),
        wire.len() as u32,
        true,
        &[],
    );
    assert_eq!(r.status, 0, "sense {:02x?}", r.sense);
    assert_eq!(r.data, wire, "data and PI after kill -9");
    let r = c.command(
        0,
        &rw10(0x28, 1, 200, 16, false),
        wire.len() as u32,
        true,
        &[],
    );
    assert_eq!(r.data, with_pi(&data, 200));
}

trait WriteAll {
    fn write_all_bytes(&mut self, b: &[u8]);
}

impl WriteAll for std::net::TcpStream {
    fn write_all_bytes(&mut self, b: &[u8]) {
        use std::io::Write;
        self.write_all(b).expect("write");
    }
}
