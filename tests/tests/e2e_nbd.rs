//! The initiator daemon's NBD export over iSER, driven by libnbd's `nbdcopy`: both
//! daemons as separate processes on loopback, 1 MiB copied in and out through the
//! export of a Type 1 LUN in insert mode and compared; with a guard bit flipped in the
//! initiator's HCA on Data-In, the NBD read fails (EIO) instead of returning the
//! block, and the export serves correct data again once the fault has fired.

use std::path::Path;

use tests::cli::run_bounded;
use tests::initiator_daemon::InitiatorDaemon;
use tests::target::TargetProcess;

const IQN: &str = "iqn.2026-11.io.iser-pi:e2e-nbd";
const SIZE: usize = 1 << 20;

fn target_config(dir: &Path) -> String {
    format!(
        r#"worker_threads = 2
portals = [
  {{ transport = "tcp", listen = "127.0.0.1:0" }},
  {{ transport = "iser", listen = "unix:{}" }},
]
[iscsi]
nop_in_interval = 0
[log]
level = "warn"
[[targets]]
iqn = "{IQN}"
[[targets.luns]]
id = 0
backing = {{ type = "ram", size = {SIZE} }}
protection = {{ type = 1 }}
"#,
        dir.join("fabric.sock").display()
    )
}

fn initiator_config(dir: &Path, portal: std::net::SocketAddr) -> String {
    format!(
        r#"iqn = "iqn.2026-11.io.iser-pi:e2e-nbd-host"
[log]
level = "warn"
[[sessions]]
target = "{IQN}"
portal = "{portal}"
iser_portal = "unix:{fabric}"
transport = "iser"
nop_interval = 0
[sessions.protection]
mode = "insert"
[[sessions.luns]]
id = 0
nbd = "unix:{sock}"
"#,
        fabric = dir.join("fabric.sock").display(),
        sock = dir.join("lun0.sock").display(),
    )
}

/// `nbdcopy SRC DST`, bounded; (exit code, stderr).
fn nbdcopy(src: &str, dst: &str) -> (i32, String) {
    let (code, _, err) = run_bounded(
        Path::new("nbdcopy"),
        &[src.into(), dst.into()],
        None,
        tests::TIMEOUT,
    )
    .expect("nbdcopy (libnbd-bin) must be installed: run scripts/test");
    (code, err)
}

#[test]
fn nbd_export_over_iser_round_trip_and_corrupted_read_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let target = TargetProcess::start(d, &target_config(d), None).expect("start iser-target");
    let sock = d.join("lun0.sock");
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let input = d.join("in.bin");
    let data = tests::random_bytes(SIZE);
    std::fs::write(&input, &data).expect("write input");
    let input = input.display().to_string();
    let out = d.join("out.bin");
    let out_s = out.display().to_string();

    // A guard bit of block 5 of the first read command flips in the initiator's HCA.
    let mut ini = InitiatorDaemon::start(
        d,
        &initiator_config(d, target.portal),
        &sock,
        Some("dir=in,block=5,target=guard:2,once"),
    )
    .expect("start iser-initiator daemon");

    let (code, err) = nbdcopy(&input, &uri);
    assert_eq!(
        code,
        0,
        "nbdcopy into the export: {err}\n{}",
        ini.log_text()
    );

    // The first read hits the fault: the copy fails rather than deliver the block.
    let _ = std::fs::remove_file(&out);
    let (code, _) = nbdcopy(&uri, &out_s);
    if code == 0 {
        let got = std::fs::read(&out).expect("output");
        assert!(
            got == data,
            "nbdcopy succeeded with different data: silent corruption"
        );
        panic!("the armed fault did not make the NBD read fail");
    }
    assert!(
        ini.log_text().contains("signature error")
            || ini.log_text().to_lowercase().contains("guard"),
        "the daemon logs the PI failure: {}",
        ini.log_text()
    );

    // The fault fired once: the export now reads back exactly what was written.
    let (code, err) = nbdcopy(&uri, &out_s);
    assert_eq!(
        code,
        0,
        "nbdcopy out of the export: {err}\n{}",
        ini.log_text()
    );
    let got = std::fs::read(&out).expect("output");
    assert!(got == data, "NBD round trip over iSER differs");

    let status = ini.stop().expect("stop iser-initiator");
    assert!(status.success(), "daemon exit {status}: {}", ini.log_text());
    assert!(!sock.exists(), "the daemon removes its NBD socket");
}
