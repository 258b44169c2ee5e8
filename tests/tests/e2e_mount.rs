//! A mounted remote disk: `iser-target` serves a file LUN with Type 1 PI, the
//! `iser-initiator` daemon logs in over iSER in `insert` mode and exports the LUN as a
//! file on FUSE, and the kernel does the rest as a user would: `losetup` on that file,
//! `mkfs.ext4`, `mount`, files written, unmounted. A second daemon (a new session)
//! then mounts the disk again: `e2fsck` finds it clean and the files read back
//! identical. One bit flipped in the target's data file under a block of a file makes
//! reading that file fail with EIO (never with other bytes), the target reports the
//! failing LBA (LOGICAL BLOCK GUARD CHECK FAILED, counted on the LUN), and with the
//! bit restored the file reads back intact.
//!
//! Loop devices and mounts need root; without it the test says so and does nothing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tests::cli::run_bounded;
use tests::initiator_daemon::InitiatorDaemon;
use tests::target::TargetProcess;

const IQN: &str = "iqn.2026-11.io.iser-pi:e2e-mount";
/// The LUN: 64 MiB of 512-byte blocks.
const LUN_SIZE: u64 = 64 << 20;
const BLOCK: u64 = 512;
/// The file system's block size (8 LUN blocks).
const FS_BLOCK: u64 = 4096;
/// Bound on one system command (mkfs, mount, e2fsck...).
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

fn target_config(dir: &Path) -> String {
    format!(
        r#"worker_threads = 2
portals = [
  {{ transport = "tcp", listen = "127.0.0.1:0" }},
  {{ transport = "iser", listen = "unix:{fabric}" }},
]
[iscsi]
nop_in_interval = 0
[log]
level = "warn"
[[targets]]
iqn = "{IQN}"
[[targets.luns]]
id = 0
block_size = {BLOCK}
backing = {{ type = "file", path = "{data}", create = true, size = {LUN_SIZE} }}
protection = {{ type = 1, store = "sidecar" }}
"#,
        fabric = dir.join("fabric.sock").display(),
        data = dir.join("lun0.img").display(),
    )
}

fn initiator_config(dir: &Path, portal: std::net::SocketAddr) -> String {
    format!(
        r#"iqn = "iqn.2026-11.io.iser-pi:e2e-mount-host"
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
checks = ["guard", "ref"]
[[sessions.luns]]
id = 0
fuse = "{fuse}"
"#,
        fabric = dir.join("fabric.sock").display(),
        fuse = dir.join("fuse").display(),
    )
}

/// Runs a system command, bounded; panics with its output unless it exits 0.
/// Returns its stdout.
fn run(bin: &str, args: &[&str]) -> String {
    let (code, out, err) = run_status(bin, args);
    assert_eq!(code, 0, "{bin} {args:?} failed ({code}): {err}");
    out
}

/// Runs a system command, bounded: (exit code, stdout, stderr).
fn run_status(bin: &str, args: &[&str]) -> (i32, String, String) {
    let args: Vec<OsString> = args.iter().map(OsString::from).collect();
    let (code, out, err) = run_bounded(&system_bin(bin), &args, None, COMMAND_LIMIT)
        .unwrap_or_else(|e| panic!("{bin}: {e} (Debian's mount and e2fsprogs: run scripts/test)"));
    (code, String::from_utf8_lossy(&out).into_owned(), err)
}

/// Where `name` is: on `PATH`, else in the sbin directories a non-login shell may
/// leave out of it.
fn system_bin(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A loop device over a file, detached on drop.
struct LoopDevice(String);

impl LoopDevice {
    fn attach(file: &Path) -> LoopDevice {
        let path = file.to_str().expect("UTF-8 path");
        LoopDevice(
            run("losetup", &["--find", "--show", path])
                .trim()
                .to_owned(),
        )
    }

    fn detach(self) {
        run("losetup", &["-d", &self.0]);
        std::mem::forget(self);
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = run_status("losetup", &["-d", &self.0]);
    }
}

/// A mounted file system, unmounted on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn mount(dev: &LoopDevice, at: &Path, options: &str) -> Mounted {
        let at_s = at.to_str().expect("UTF-8 path");
        run("mount", &["-t", "ext4", "-o", options, &dev.0, at_s]);
        Mounted(at.to_owned())
    }

    fn unmount(self) {
        run("umount", &[self.0.to_str().expect("UTF-8 path")]);
        std::mem::forget(self);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(p) = self.0.to_str() {
            let _ = run_status("umount", &["-l", p]);
        }
    }
}

/// The file system block that holds block `index` of `file` on `dev` (debugfs
/// `bmap`).
fn physical_block(dev: &LoopDevice, file: &str, index: u64) -> u64 {
    let out = run(
        "debugfs",
        &["-R", &format!("bmap {file} {index}"), dev.0.as_str()],
    );
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("debugfs bmap {file} {index}: {out:?}: {e}"))
}

#[test]
fn ext4_on_a_fuse_export_over_iser_survives_a_new_session_and_never_reads_corrupted_blocks() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: losetup and mount need root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let fuse_dir = d.join("fuse");
    let mnt = d.join("mnt");
    std::fs::create_dir(&fuse_dir).expect("fuse dir");
    std::fs::create_dir(&mnt).expect("mount point");
    let lun_file = fuse_dir.join("lun0");
    let target = TargetProcess::start(d, &target_config(d), None).expect("start iser-target");
    let config = initiator_config(d, target.portal);

    // One big file over many extents' worth of blocks, and a few small ones.
    let big = tests::random_bytes(3 << 20);
    let small: Vec<Vec<u8>> = (0..4)
        .map(|i| tests::random_bytes(1000 + i * 777))
        .collect();

    // First session: make the file system and fill it.
    {
        let mut ini =
            InitiatorDaemon::start(d, &config, &lun_file, None).expect("start iser-initiator");
        let size = std::fs::metadata(&lun_file).expect("FUSE file").len();
        assert_eq!(size, LUN_SIZE, "the FUSE file is the LUN");
        let dev = LoopDevice::attach(&lun_file);
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-b",
                &FS_BLOCK.to_string(),
                "-E",
                "lazy_itable_init=0,lazy_journal_init=0",
                &dev.0,
            ],
        );
        let m = Mounted::mount(&dev, &mnt, "rw");
        std::fs::write(mnt.join("big.bin"), &big).expect("write big.bin");
        for (i, s) in small.iter().enumerate() {
            std::fs::write(mnt.join(format!("small{i}.bin")), s).expect("write a small file");
        }
        run("sync", &[]);
        m.unmount();
        dev.detach();
        let status = ini.stop().expect("stop iser-initiator");
        assert!(status.success(), "daemon exit {status}: {}", ini.log_text());
    }

    // Second session: clean, and the same files.
    let mut ini =
        InitiatorDaemon::start(d, &config, &lun_file, None).expect("restart iser-initiator");
    let dev = LoopDevice::attach(&lun_file);
    let (code, out, err) = run_status("e2fsck", &["-f", "-n", &dev.0]);
    assert_eq!(code, 0, "e2fsck of the remounted disk: {out}{err}");
    let m = Mounted::mount(&dev, &mnt, "ro");
    assert!(
        std::fs::read(mnt.join("big.bin")).expect("read big.bin") == big,
        "big.bin differs after a new session"
    );
    for (i, s) in small.iter().enumerate() {
        let got = std::fs::read(mnt.join(format!("small{i}.bin"))).expect("read a small file");
        assert!(got == *s, "small{i}.bin differs after a new session");
    }
    m.unmount();

    // A bit of the medium flips under block 100 of big.bin: sector 3 of that file
    // system block.
    let fs_block = physical_block(&dev, "/big.bin", 100);
    let bad_lba = fs_block * (FS_BLOCK / BLOCK) + 3;
    let offset = bad_lba * BLOCK + 77;
    let data_file = d.join("lun0.img");
    let (guard_before, _, _) = target.pi_errors(0).expect("target status");
    dev.detach();
    tests::flip_bit(&data_file, offset, 2).expect("flip a bit of the medium");

    let dev = LoopDevice::attach(&lun_file);
    let m = Mounted::mount(&dev, &mnt, "ro");
    match std::fs::read(mnt.join("big.bin")) {
        Ok(got) => {
            assert!(
                got == big,
                "big.bin read back other bytes: silent corruption"
            );
            panic!("the flipped bit at LBA {bad_lba} was not detected");
        }
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EIO),
            "reading a corrupted block: {e}"
        ),
    }
    // The files that do not touch the block are still there.
    for (i, s) in small.iter().enumerate() {
        let got = std::fs::read(mnt.join(format!("small{i}.bin"))).expect("read a small file");
        assert!(got == *s, "small{i}.bin differs");
    }
    m.unmount();
    dev.detach();
    let (guard_after, _, _) = target.pi_errors(0).expect("target status");
    assert!(
        guard_after > guard_before,
        "the target counts the guard error ({guard_before} -> {guard_after})"
    );
    let log = ini.log_text();
    let sense = format!(
        "ABORTED COMMAND, LOGICAL BLOCK GUARD CHECK FAILED (10h/01h), INFORMATION=0x{bad_lba:X}"
    );
    assert!(
        log.contains(&sense),
        "the initiator logs the target's sense for LBA {bad_lba} ({sense}): {log}"
    );

    // With the bit restored, the file reads back intact.
    tests::flip_bit(&data_file, offset, 2).expect("flip a bit of the medium");
    let dev = LoopDevice::attach(&lun_file);
    let m = Mounted::mount(&dev, &mnt, "ro");
    assert!(
        std::fs::read(mnt.join("big.bin")).expect("read big.bin after repair") == big,
        "big.bin differs after the repair"
    );
    m.unmount();
    dev.detach();
    let status = ini.stop().expect("stop iser-initiator");
    assert!(status.success(), "daemon exit {status}: {}", ini.log_text());
}
