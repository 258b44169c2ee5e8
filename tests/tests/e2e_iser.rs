//! End to end over iSER: `iser-target` and the `iser-initiator` CLI as separate
//! processes on loopback (the soft mlx5 fabric on a UNIX socket in a temp dir), for
//! Type 1 and Type 3 LUNs with 512- and 4096-byte protection intervals (plus one Type 2
//! test for the target's application tag check).
//!
//! Each geometry runs five tests:
//! - `round_trip_every_mode`: random data written and read back in every initiator
//!   mode (insert and pass on a PI LUN, off on a LUN without PI and on a PI LUN, strip
//!   on a LUN without PI); in pass mode the host's PI comes back unchanged; the file
//!   LUN's data file and `.pi` sidecar hold exactly the data and the tuples generated.
//! - `target_hca_faults_on_reads_*` / `_on_writes_*`: `MLX5_SOFT_FAULT` in the TARGET
//!   process flips a data, guard, application-tag or reference-tag bit on the target's
//!   data path; the target answers ABORTED COMMAND 10h/01h (guard) or 10h/03h
//!   (reference tag) with the failing LBA in INFORMATION and counts it; what the target
//!   does not check (application tag on 16-byte CDBs, the Type 3 reference tag) is
//!   caught by the initiator or checked by no one, and then the data must be intact.
//! - `medium_corruption_*`: bits flipped in the file LUN's data file and `.pi` sidecar
//!   behind the running target; the target verifies PI read from the medium.
//! - `initiator_hca_faults_*`: `MLX5_SOFT_FAULT` in the INITIATOR process corrupts
//!   Data-In after the target's check; the initiator reports ILLEGAL REQUEST 10h/01h,
//!   02h or 03h in descriptor format (72h, information descriptor) with the LBA.
//!
//! Every corrupted read goes through [`assert_detected_or_intact`]: it either failed
//! with CHECK CONDITION or returned exactly what was written.

use std::path::{Path, PathBuf};

use tests::cli::{InitiatorCli, Io, Mode};
use tests::pi::{dix, tuple_for, tuples, PiType};
use tests::target::TargetProcess;

const IQN: &str = "iqn.2026-11.io.iser-pi:e2e";
const HOST: &str = "iqn.2026-11.io.iser-pi:e2e-host";
/// RAM LUN with PI.
const LUN_PI: u16 = 0;
/// RAM LUN without PI.
const LUN_PLAIN: u16 = 1;
/// File LUN with PI in a `.pi` sidecar.
const LUN_FILE: u16 = 2;
/// Application tag of the LUNs and of the initiator's policy.
const APP: u16 = 0x0A0B;
/// Blocks per test transfer, and the first LBA used.
const BLOCKS: u64 = 8;
const LBA: u64 = 3;

/// What a corrupted read must end in: `Some((sense key, ASCQ, origin))` of a
/// 10h/xxh CHECK CONDITION, or `None` when no one checks the corrupted field (the read
/// is GOOD and its data intact).
type Expect = Option<(u8, u8, &'static str)>;

const ABORTED_COMMAND: u8 = 0x0b;
const ILLEGAL_REQUEST: u8 = 0x05;
const GUARD: u8 = 0x01;
const APP_TAG: u8 = 0x02;
const REF_TAG: u8 = 0x03;

/// One geometry: a temp dir, the target's configuration and the CLI.
struct Rig {
    dir: tempfile::TempDir,
    ty: PiType,
    bs: usize,
    target: Option<TargetProcess>,
    cli: Option<InitiatorCli>,
}

impl Rig {
    fn new(ty: PiType, bs: usize) -> Rig {
        let mut rig = Rig {
            dir: tempfile::tempdir().expect("tempdir"),
            ty,
            bs,
            target: None,
            cli: None,
        };
        rig.start(None);
        rig
    }

    fn fabric(&self) -> String {
        format!("unix:{}", self.dir.path().join("fabric.sock").display())
    }

    fn data_file(&self) -> PathBuf {
        self.dir.path().join("lun2.img")
    }

    fn pi_file(&self) -> PathBuf {
        self.dir.path().join("lun2.img.pi")
    }

    fn target_config(&self) -> String {
        let (t, bs) = (self.ty.number(), self.bs);
        let size = 64 * bs;
        format!(
            r#"worker_threads = 2
portals = [
  {{ transport = "tcp", listen = "127.0.0.1:0" }},
  {{ transport = "iser", listen = "{fabric}" }},
]

[iscsi]
nop_in_interval = 0
queue_depth = 16

[iser]
initiator_recv_data_segment_length = 8192
target_recv_data_segment_length = 8192

[log]
level = "warn"

[[targets]]
iqn = "{IQN}"

[[targets.luns]]
id = {LUN_PI}
block_size = {bs}
backing = {{ type = "ram", size = {size} }}
protection = {{ type = {t}, app_tag = {APP} }}

[[targets.luns]]
id = {LUN_PLAIN}
block_size = {bs}
backing = {{ type = "ram", size = {size} }}

[[targets.luns]]
id = {LUN_FILE}
block_size = {bs}
backing = {{ type = "file", path = "{data}", create = true, size = {size} }}
protection = {{ type = {t}, app_tag = {APP}, store = "sidecar", verify_medium = true, verify_received = true }}
"#,
            fabric = self.fabric(),
            data = self.data_file().display(),
        )
    }

    /// The initiator's configuration: a session for the target whose policy checks the
    /// guard and the application tag, and the reference tag where Type 1 defines it.
    fn initiator_config(&self, portal: std::net::SocketAddr) -> PathBuf {
        let checks = match self.ty {
            PiType::Type1 | PiType::Type2 => r#"["guard", "ref", "app"]"#,
            PiType::Type3 => r#"["guard", "app"]"#,
        };
        let text = format!(
            r#"iqn = "{HOST}"

[log]
level = "warn"

[[sessions]]
target = "{IQN}"
portal = "{portal}"
iser_portal = "{fabric}"
transport = "iser"
nop_interval = 0

[sessions.protection]
mode = "insert"
checks = {checks}
app_tag = {APP}
"#,
            fabric = self.fabric(),
        );
        let path = self.dir.path().join("initiator.toml");
        std::fs::write(&path, text).expect("write initiator.toml");
        path
    }

    /// (Re)starts the target, with `fault` armed in its HCA when given. RAM LUNs
    /// start empty; the file LUN keeps its contents.
    fn start(&mut self, fault: Option<&str>) {
        if let Some(mut t) = self.target.take() {
            t.stop().expect("stop iser-target");
        }
        let t = TargetProcess::start(self.dir.path(), &self.target_config(), fault)
            .expect("start iser-target");
        let config = self.initiator_config(t.portal);
        self.cli = Some(
            InitiatorCli::new(self.dir.path(), IQN, t.portal, &self.fabric(), Some(config))
                .expect("iser-initiator"),
        );
        self.target = Some(t);
    }

    fn cli(&self) -> &InitiatorCli {
        self.cli.as_ref().expect("started")
    }

    fn log(&self) -> String {
        self.target
            .as_ref()
            .map(|t| t.log_text())
            .unwrap_or_default()
    }

    fn data(&self) -> Vec<u8> {
        tests::random_bytes(BLOCKS as usize * self.bs)
    }

    fn host_pi(&self, data: &[u8], lba: u64) -> Vec<u8> {
        dix(self.ty, data, self.bs, lba, APP)
    }

    fn write(&self, lun: u16, lba: u64, mode: Mode, data: &[u8], pi: Option<&[u8]>) -> Io {
        self.cli()
            .write(lun, lba, mode, data, pi, None)
            .expect("run iser-initiator write")
    }

    fn write_ok(&self, lun: u16, lba: u64, mode: Mode, data: &[u8], pi: Option<&[u8]>) {
        let io = self.write(lun, lba, mode, data, pi);
        assert!(
            io.is_good(),
            "write LUN {lun} LBA {lba} {mode:?}: {io:?}\ntarget log:\n{}",
            self.log()
        );
    }

    fn read(&self, lun: u16, lba: u64, mode: Mode, fault: Option<&str>) -> Io {
        self.cli()
            .read(lun, lba, BLOCKS, mode, fault)
            .expect("run iser-initiator read")
    }

    fn read_ok(&self, lun: u16, lba: u64, mode: Mode) -> Io {
        let io = self.read(lun, lba, mode, None);
        assert!(
            io.is_good(),
            "read LUN {lun} LBA {lba} {mode:?}: {io:?}\ntarget log:\n{}",
            self.log()
        );
        io
    }

    /// One READ through the library probe, returning the raw sense bytes (hex).
    fn read_sense_hex(&self, lba: u64, mode: &str, fault: &str) -> (u64, String, String) {
        let t = self.target.as_ref().expect("started");
        let checks = match self.ty {
            PiType::Type1 | PiType::Type2 => "guard,ref,app",
            PiType::Type3 => "guard,app",
        };
        let args: Vec<std::ffi::OsString> = [
            "read-sense",
            "--target",
            IQN,
            "--portal",
            &t.portal.to_string(),
            "--fabric",
            &self.fabric(),
            "--transport",
            "iser",
            "--lun",
            &LUN_PI.to_string(),
            "--mode",
            mode,
            "--checks",
            checks,
            "--app-tag",
            &APP.to_string(),
            "--lba",
            &lba.to_string(),
            "--blocks",
            &BLOCKS.to_string(),
        ]
        .iter()
        .map(Into::into)
        .collect();
        let (code, out, err) = tests::cli::run_bounded(
            Path::new(env!("CARGO_BIN_EXE_iser-bench")),
            &args,
            Some(fault),
            tests::TIMEOUT,
        )
        .expect("run iser-bench read-sense");
        assert_eq!(code, 0, "iser-bench read-sense: {err}");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        (
            v["status"].as_u64().unwrap_or(0xff),
            v["sense_hex"].as_str().unwrap_or_default().to_owned(),
            v["origin"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// The read either failed with CHECK CONDITION or returned exactly `expected`.
fn assert_detected_or_intact(io: &Io, expected: &[u8], what: &str) {
    if io.is_check_condition() {
        return;
    }
    assert!(
        io.is_good(),
        "{what}: neither GOOD nor CHECK CONDITION: {io:?}"
    );
    assert!(
        io.data == expected,
        "{what}: GOOD status but the data differs from what was written (silent corruption)"
    );
}

/// Whether the command failed with exactly this sense (key, 10h, ascq, INFORMATION =
/// lba) from `origin`; the mismatch, described, if not.
fn pi_sense_mismatch(io: &Io, key: u8, ascq: u8, lba: u64, origin: &str) -> Option<String> {
    let want = (key, 0x10, ascq, Some(lba));
    let origin_got = io.sense.as_ref().map(|s| s.origin.as_str());
    if io.is_check_condition() && io.sense_fields() == Some(want) && origin_got == Some(origin) {
        return None;
    }
    Some(format!(
        "expected CHECK CONDITION with key {key:02x}h 10h/{ascq:02x}h INFORMATION={lba} from the {origin}, got exit {} status {:?} sense {:?}",
        io.code, io.status, io.sense
    ))
}

/// The command failed with exactly this sense from `origin`.
fn assert_pi_sense(io: &Io, key: u8, ascq: u8, lba: u64, origin: &str, what: &str) {
    if let Some(m) = pi_sense_mismatch(io, key, ascq, lba, origin) {
        panic!("{what}: {m}");
    }
}

fn round_trip(ty: PiType, bs: usize) {
    let rig = Rig::new(ty, bs);

    // insert: the initiator's HCA generates PI, the target passes it to the medium.
    let d = rig.data();
    rig.write_ok(LUN_PI, LBA, Mode::Insert, &d, None);
    let r = rig.read_ok(LUN_PI, LBA, Mode::Insert);
    assert!(r.data == d, "insert round trip differs");

    // pass: the host's PI travels end to end and comes back unchanged.
    let lba = LBA + 2 * BLOCKS;
    let d = rig.data();
    let pi = rig.host_pi(&d, lba);
    rig.write_ok(LUN_PI, lba, Mode::Pass, &d, Some(&pi));
    let r = rig.read_ok(LUN_PI, lba, Mode::Pass);
    assert!(r.data == d, "pass round trip data differs");
    assert_eq!(r.pi.as_deref(), Some(&pi[..]), "pass round trip PI differs");
    // Data written in insert mode reads back in pass mode with the tuples the
    // initiator's HCA generated: CRC guard, the policy's application tag, ref = LBA.
    let r = rig.read_ok(LUN_PI, LBA, Mode::Pass);
    let got = tuples(r.pi.as_deref().expect("PI"));
    for (i, (t, block)) in got.iter().zip(r.data.chunks(bs)).enumerate() {
        assert_eq!(t.guard, t10pi::crc16_t10dif(0, block), "block {i} guard");
        assert_eq!(t.app, APP, "block {i} app tag");
        if ty == PiType::Type1 {
            assert_eq!(u64::from(t.reference), LBA + i as u64, "block {i} ref tag");
        }
    }

    // off on a LUN without PI: plain data.
    let d = rig.data();
    rig.write_ok(LUN_PLAIN, LBA, Mode::Off, &d, None);
    let r = rig.read_ok(LUN_PLAIN, LBA, Mode::Off);
    assert!(r.data == d, "off round trip (LUN without PI) differs");

    // off on a PI LUN: the target generates PI on the write and strips it on the read;
    // pass mode then sees the target's tuples (the LUN's application tag).
    let lba = LBA + 4 * BLOCKS;
    let d = rig.data();
    rig.write_ok(LUN_PI, lba, Mode::Off, &d, None);
    let r = rig.read_ok(LUN_PI, lba, Mode::Off);
    assert!(r.data == d, "off round trip (PI LUN) differs");
    let r = rig.read_ok(LUN_PI, lba, Mode::Pass);
    assert!(r.data == d);
    for (i, (t, block)) in tuples(r.pi.as_deref().expect("PI"))
        .iter()
        .zip(d.chunks(bs))
        .enumerate()
    {
        assert_eq!(t.guard, t10pi::crc16_t10dif(0, block), "target guard {i}");
        assert_eq!(t.app, APP, "target app tag {i}");
        if ty == PiType::Type1 {
            assert_eq!(u64::from(t.reference), lba + i as u64, "target ref tag {i}");
        }
    }

    // strip on a LUN without PI: the host's PI is checked and dropped on the write and
    // generated for the host on the read.
    let lba = LBA + 2 * BLOCKS;
    let d = rig.data();
    let pi = dix(PiType::Type1, &d, bs, lba, APP);
    rig.write_ok(LUN_PLAIN, lba, Mode::Strip, &d, Some(&pi));
    let r = rig.read_ok(LUN_PLAIN, lba, Mode::Strip);
    assert!(r.data == d, "strip round trip differs");
    let got = tuples(r.pi.as_deref().expect("generated PI"));
    assert_eq!(got.len(), BLOCKS as usize);
    for (t, block) in got.iter().zip(d.chunks(bs)) {
        assert_eq!(t.guard, t10pi::crc16_t10dif(0, block));
    }

    // The file LUN stores exactly the data and the tuples: data file at LBA x block
    // size, sidecar tuple at LBA x 8.
    let d = rig.data();
    rig.write_ok(LUN_FILE, LBA, Mode::Insert, &d, None);
    let r = rig.read_ok(LUN_FILE, LBA, Mode::Insert);
    assert!(r.data == d, "file LUN round trip differs");
    let file = std::fs::read(rig.data_file()).expect("data file");
    let side = std::fs::read(rig.pi_file()).expect("sidecar");
    let off = LBA as usize * bs;
    assert!(file[off..off + d.len()] == d[..], "data file contents");
    let stored = tuples(&side[LBA as usize * 8..(LBA + BLOCKS) as usize * 8]);
    for (i, (t, block)) in stored.iter().zip(d.chunks(bs)).enumerate() {
        let want = tuple_for(ty, block, LBA + i as u64, i as u32, APP);
        assert_eq!(t.guard, want.guard, "sidecar guard {i}");
        assert_eq!(t.app, APP, "sidecar app tag {i}");
        if ty == PiType::Type1 {
            assert_eq!(t.reference, want.reference, "sidecar ref tag {i}");
        }
    }
    // Blocks never written keep the formatted PI (all 0xFF).
    assert!(side[..LBA as usize * 8].iter().all(|&b| b == 0xFF));
}

/// `MLX5_SOFT_FAULT` in the target's HCA, `dir=out`: the bit flips in the target's
/// memory view going out (stored data and PI), before its signature check. The
/// corrupted block still reaches the initiator (the HCA reports after the transfer),
/// whose own check may fail too; the target's CHECK CONDITION is what the
/// application must see, as the target detected the error first.
fn target_hca_faults_on_reads(ty: PiType, bs: usize) {
    let mut rig = Rig::new(ty, bs);
    let d = rig.data();
    let byte = bs / 2;
    // (fault, block, mode, expected: Some((key, ascq, origin)) or None = not checked)
    let reads: Vec<(String, u64, Mode, Expect)> = vec![
        (
            "dir=out,block=2,target=guard:5,once".into(),
            2,
            Mode::Insert,
            Some((ABORTED_COMMAND, GUARD, "target")),
        ),
        (
            format!("dir=out,block=4,target=data:{byte}:3,once"),
            4,
            Mode::Insert,
            Some((ABORTED_COMMAND, GUARD, "target")),
        ),
        (
            format!("dir=out,block=6,target=data:{byte}:0,once"),
            6,
            Mode::Off,
            Some((ABORTED_COMMAND, GUARD, "target")),
        ),
        (
            "dir=out,block=1,target=reftag:0,once".into(),
            1,
            Mode::Insert,
            match ty {
                PiType::Type1 | PiType::Type2 => Some((ABORTED_COMMAND, REF_TAG, "target")),
                // Type 3 has no reference tag: nobody checks it.
                PiType::Type3 => None,
            },
        ),
        (
            // The target does not check the application tag on 16-byte CDBs (SBC:
            // only with the expected tag of a 32-byte CDB); the tuple it passes on
            // fails the initiator's application tag check.
            "dir=out,block=3,target=apptag:2,once".into(),
            3,
            Mode::Insert,
            Some((ILLEGAL_REQUEST, APP_TAG, "initiator")),
        ),
    ];
    // Every case runs; wrong sense is collected and reported at the end, while a
    // silent corruption fails at once.
    let mut wrong_sense = Vec::new();
    for (fault, block, mode, expect) in reads {
        rig.start(Some(&fault));
        rig.write_ok(LUN_PI, LBA, Mode::Insert, &d, None);
        let io = rig.read(LUN_PI, LBA, mode, None);
        let what = format!("target fault {fault} on a {mode:?} read");
        assert_detected_or_intact(&io, &d, &what);
        match expect {
            Some((key, ascq, origin)) => {
                assert!(io.is_check_condition(), "{what}: not refused: {io:?}");
                if origin == "target" {
                    // The target counted exactly this failure on the LUN.
                    let t = rig.target.as_ref().expect("started");
                    let want = match ascq {
                        GUARD => (1, 0, 0),
                        APP_TAG => (0, 1, 0),
                        _ => (0, 0, 1),
                    };
                    assert_eq!(
                        t.pi_errors(LUN_PI).expect("status"),
                        want,
                        "{what}: counters"
                    );
                }
                if let Some(m) = pi_sense_mismatch(&io, key, ascq, LBA + block, origin) {
                    wrong_sense.push(format!("{what}: {m}"));
                }
            }
            None => assert!(io.is_good(), "{what}: {io:?}"),
        }
        // The fault fired once: the stored data was never touched.
        let again = rig.read_ok(LUN_PI, LBA, Mode::Insert);
        assert!(again.data == d, "{what}: data differs after the fault");
    }
    assert!(
        wrong_sense.is_empty(),
        "{} case(s) with the wrong sense:\n{}",
        wrong_sense.len(),
        wrong_sense.join("\n")
    );
}

/// `MLX5_SOFT_FAULT` in the target's HCA, `dir=in`: the bit flips in the wire view
/// the target READs from the initiator, before its check and before the medium.
fn target_hca_faults_on_writes(ty: PiType, bs: usize) {
    let mut rig = Rig::new(ty, bs);
    let d = rig.data();
    let byte = bs / 2;
    let mut writes: Vec<(String, u64, u8)> = vec![
        ("dir=in,block=5,target=guard:9,once".into(), 5, GUARD),
        (
            format!("dir=in,block=0,target=data:{byte}:6,once"),
            0,
            GUARD,
        ),
    ];
    if ty == PiType::Type1 {
        writes.push(("dir=in,block=7,target=reftag:4,once".into(), 7, REF_TAG));
    }
    for (fault, block, ascq) in writes {
        rig.start(Some(&fault));
        let what = format!("target fault {fault} on an insert write");
        let io = rig.write(LUN_PI, LBA, Mode::Insert, &d, None);
        assert_pi_sense(&io, ABORTED_COMMAND, ascq, LBA + block, "target", &what);
        let want = if ascq == GUARD { (1, 0, 0) } else { (0, 0, 1) };
        let t = rig.target.as_ref().expect("started");
        assert_eq!(
            t.pi_errors(LUN_PI).expect("status"),
            want,
            "{what}: counters"
        );
        // Whatever the target kept, a read never returns wrong data without an error:
        // each block is the old content (never written: zeros, escaped PI) or the new.
        let r = rig.read(LUN_PI, LBA, Mode::Insert, None);
        if r.is_good() {
            for (i, (got, want)) in r.data.chunks(bs).zip(d.chunks(bs)).enumerate() {
                assert!(
                    got == want || got.iter().all(|&b| b == 0),
                    "{what}: block {i} is neither the old nor the new data"
                );
            }
        } else {
            assert!(r.is_check_condition(), "{what}: read back {r:?}");
        }
    }
}

/// Bits flipped in the file LUN's data file and `.pi` sidecar behind the running
/// target (the file is shared through the page cache; each flip is synced).
fn medium_corruption(ty: PiType, bs: usize) {
    let rig = Rig::new(ty, bs);
    let d = rig.data();
    rig.write_ok(LUN_FILE, LBA, Mode::Insert, &d, None);
    let data_off = |block: u64| (LBA + block) * bs as u64;
    let pi_off = |block: u64| (LBA + block) * 8;
    // (what, file, byte offset, bit, block, [(mode, expected)])
    type Case = (&'static str, PathBuf, u64, u8, u64, Vec<(Mode, Expect)>);
    let cases: Vec<Case> = vec![
        (
            "data bit",
            rig.data_file(),
            data_off(2) + 17,
            4,
            2,
            vec![
                (Mode::Insert, Some((ABORTED_COMMAND, GUARD, "target"))),
                (Mode::Off, Some((ABORTED_COMMAND, GUARD, "target"))),
                (Mode::Pass, Some((ABORTED_COMMAND, GUARD, "target"))),
            ],
        ),
        (
            "sidecar guard bit",
            rig.pi_file(),
            pi_off(5),
            1,
            5,
            vec![
                (Mode::Insert, Some((ABORTED_COMMAND, GUARD, "target"))),
                (Mode::Off, Some((ABORTED_COMMAND, GUARD, "target"))),
            ],
        ),
        (
            "sidecar reference tag bit",
            rig.pi_file(),
            pi_off(1) + 7,
            0,
            1,
            match ty {
                PiType::Type1 | PiType::Type2 => vec![
                    (Mode::Insert, Some((ABORTED_COMMAND, REF_TAG, "target"))),
                    (Mode::Off, Some((ABORTED_COMMAND, REF_TAG, "target"))),
                ],
                PiType::Type3 => vec![(Mode::Insert, None), (Mode::Off, None)],
            },
        ),
        (
            // Not checked by the target on 16-byte CDBs; the initiator checks it when
            // PI comes over the wire, and in off mode nobody does (data is intact).
            "sidecar application tag bit",
            rig.pi_file(),
            pi_off(3) + 3,
            2,
            3,
            vec![
                (Mode::Insert, Some((ILLEGAL_REQUEST, APP_TAG, "initiator"))),
                (Mode::Off, None),
            ],
        ),
    ];
    for (name, file, offset, bit, block, reads) in cases {
        tests::flip_bit(&file, offset, bit).expect("flip a bit of the medium");
        for (mode, expect) in reads {
            let what = format!("{name} of LBA {} flipped, {mode:?} read", LBA + block);
            let io = rig.read(LUN_FILE, LBA, mode, None);
            match expect {
                Some((key, ascq, origin)) => {
                    assert_pi_sense(&io, key, ascq, LBA + block, origin, &what)
                }
                None => assert!(io.is_good(), "{what}: {io:?}"),
            }
            assert_detected_or_intact(&io, &d, &what);
        }
        tests::flip_bit(&file, offset, bit).expect("flip a bit of the medium");
        let r = rig.read_ok(LUN_FILE, LBA, Mode::Insert);
        assert!(r.data == d, "{name}: repaired block reads back");
    }
}

/// `MLX5_SOFT_FAULT` in the initiator's HCA, `dir=in`: Data-In is corrupted after the
/// target's check and before the initiator's; the initiator overrides the target's
/// GOOD status with ILLEGAL REQUEST in descriptor format.
fn initiator_hca_faults(ty: PiType, bs: usize) {
    let rig = Rig::new(ty, bs);
    let d = rig.data();
    let pi = rig.host_pi(&d, LBA);
    rig.write_ok(LUN_PI, LBA, Mode::Pass, &d, Some(&pi));
    let byte = bs - 1;
    let mut cases: Vec<(String, u64, Option<u8>)> = vec![
        ("dir=in,block=2,target=guard:0,once".into(), 2, Some(GUARD)),
        (
            format!("dir=in,block=5,target=data:{byte}:7,once"),
            5,
            Some(GUARD),
        ),
        (
            "dir=in,block=6,target=apptag:15,once".into(),
            6,
            Some(APP_TAG),
        ),
    ];
    cases.push((
        "dir=in,block=7,target=reftag:31,once".into(),
        7,
        match ty {
            PiType::Type1 | PiType::Type2 => Some(REF_TAG),
            PiType::Type3 => None,
        },
    ));
    for mode in [Mode::Insert, Mode::Pass] {
        for (fault, block, ascq) in &cases {
            let what = format!("initiator fault {fault} on a {mode:?} read");
            let io = rig.read(LUN_PI, LBA, mode, Some(fault));
            match ascq {
                Some(q) => {
                    assert_pi_sense(&io, ILLEGAL_REQUEST, *q, LBA + block, "initiator", &what)
                }
                None => assert!(io.is_good(), "{what}: {io:?}"),
            }
            assert_detected_or_intact(&io, &d, &what);
            if io.is_good() && mode == Mode::Pass {
                // Only an unchecked field may differ: the Type 3 reference tag, which
                // no one checks, arrives with the bit flipped in flight.
                let got = tuples(io.pi.as_deref().expect("PI"));
                for (i, (g, w)) in got.iter().zip(tuples(&pi)).enumerate() {
                    assert_eq!((g.guard, g.app), (w.guard, w.app), "{what}: tuple {i}");
                    if ty == PiType::Type1 {
                        assert_eq!(g.reference, w.reference, "{what}: tuple {i}");
                    }
                }
            }
        }
    }

    // The raw sense: descriptor format (72h), key 05h, 10h/01h, and an information
    // descriptor (00 0A 80 00) holding the 8-byte LBA.
    let (status, hex, origin) =
        rig.read_sense_hex(LBA, "insert", "dir=in,block=4,target=guard:3,once");
    assert_eq!((status, origin.as_str()), (2, "initiator"));
    let lba = format!("{:016x}", LBA + 4);
    assert!(
        hex.starts_with("72051001") && hex.contains(&format!("000a8000{lba}")),
        "descriptor-format sense with the LBA, got {hex}"
    );

    // Pass-mode write with a data bit flipped in the initiator's memory view going
    // out: the host PI no longer matches; one side or the other refuses the block.
    let fault = format!("dir=out,block=3,target=data:{byte}:1,once");
    let d2 = rig.data();
    let pi2 = rig.host_pi(&d2, LBA);
    let io = rig
        .cli()
        .write(LUN_PI, LBA, Mode::Pass, &d2, Some(&pi2), Some(&fault))
        .expect("run iser-initiator write");
    let what = format!("initiator fault {fault} on a pass write");
    assert!(io.is_check_condition(), "{what}: {io:?}");
    let s = io.sense.as_ref().expect("sense");
    assert_eq!(
        (s.asc, s.ascq, s.information),
        (0x10, GUARD, Some(LBA + 3)),
        "{what}: {s:?}"
    );
    let r = rig.read(LUN_PI, LBA, Mode::Insert, None);
    if r.is_good() {
        for (i, ((got, old), new)) in r
            .data
            .chunks(bs)
            .zip(d.chunks(bs))
            .zip(d2.chunks(bs))
            .enumerate()
        {
            assert!(
                got == old || got == new,
                "{what}: block {i} is neither old nor new"
            );
        }
    } else {
        assert!(r.is_check_condition(), "{what}: read back {r:?}");
    }
}

/// Type 2: the initiator sends 32-byte CDBs carrying the expected application tag and
/// a full mask, so the target checks the application tag of what it reads from the
/// medium and answers ABORTED COMMAND 10h/02h with the LBA (on 10/16-byte CDBs SBC
/// gives it no expected tag to check against).
#[test]
fn type2_application_tag_on_the_medium_is_checked_by_the_target() {
    for bs in [512, 4096] {
        let rig = Rig::new(PiType::Type2, bs);
        let d = rig.data();
        rig.write_ok(LUN_FILE, LBA, Mode::Insert, &d, None);
        let r = rig.read_ok(LUN_FILE, LBA, Mode::Insert);
        assert!(r.data == d, "Type 2 round trip ({bs})");
        let side = std::fs::read(rig.pi_file()).expect("sidecar");
        let stored = tuples(&side[LBA as usize * 8..(LBA + BLOCKS) as usize * 8]);
        for (i, t) in stored.iter().enumerate() {
            assert_eq!(
                (t.app, u64::from(t.reference)),
                (APP, LBA + i as u64),
                "tuple {i}"
            );
        }
        for (offset, ascq, block) in [
            ((LBA + 3) * 8 + 2, APP_TAG, 3),
            ((LBA + 6) * 8 + 6, REF_TAG, 6),
        ] {
            tests::flip_bit(&rig.pi_file(), offset, 5).expect("flip a bit of the medium");
            let what = format!("Type 2 ({bs}) sidecar bit flipped at byte {offset}");
            let io = rig.read(LUN_FILE, LBA, Mode::Insert, None);
            assert_detected_or_intact(&io, &d, &what);
            assert_pi_sense(&io, ABORTED_COMMAND, ascq, LBA + block, "target", &what);
            tests::flip_bit(&rig.pi_file(), offset, 5).expect("flip a bit of the medium");
        }
    }
}

macro_rules! geometry {
    ($name:ident, $ty:expr, $bs:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn round_trip_every_mode() {
                round_trip($ty, $bs);
            }

            #[test]
            fn target_hca_faults_on_reads_give_aborted_command_with_the_lba() {
                target_hca_faults_on_reads($ty, $bs);
            }

            #[test]
            fn target_hca_faults_on_writes_give_aborted_command_with_the_lba() {
                target_hca_faults_on_writes($ty, $bs);
            }

            #[test]
            fn medium_corruption_is_detected_by_the_target() {
                medium_corruption($ty, $bs);
            }

            #[test]
            fn initiator_hca_faults_give_illegal_request_with_the_lba() {
                initiator_hca_faults($ty, $bs);
            }
        }
    };
}

geometry!(type1_512, PiType::Type1, 512);
geometry!(type1_4096, PiType::Type1, 4096);
geometry!(type3_512, PiType::Type3, 512);
geometry!(type3_4096, PiType::Type3, 4096);

/// Sixteen reads in flight on one connection when the target's HCA finds a bad
/// guard in one of them: with signature pipelining every response is posted right
/// behind its Data-In, so the failing one is held in the send queue and replaced by
/// CHECK CONDITION while the fifteen behind it are cancelled and reposted in order.
/// Exactly one read fails, with its own LBA; the others return their data, and the
/// connection carries on.
#[test]
fn pipelined_reads_in_flight_with_one_target_fault() {
    let mut rig = Rig::new(PiType::Type1, 512);
    // Only the one read of eight blocks, in the middle of the list, has a block 6.
    rig.start(Some("dir=out,block=6,target=guard:5,once"));
    const READS: [(u64, u32); 15] = [
        (0, 4),
        (4, 4),
        (8, 4),
        (12, 4),
        (16, 4),
        (20, 4),
        (24, 4),
        (28, 8),
        (36, 4),
        (40, 4),
        (44, 4),
        (48, 4),
        (52, 4),
        (56, 4),
        (60, 4),
    ];
    let blocks = 64u64;
    let data = tests::random_bytes(blocks as usize * rig.bs);
    rig.write_ok(LUN_PI, 0, Mode::Insert, &data, None);
    let t = rig.target.as_ref().expect("started");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (first, second) = rt.block_on(async {
        let mut cfg = initiator::SessionConfig::new(HOST, Some(IQN.to_string()), t.portal);
        cfg.nop_interval = std::time::Duration::ZERO;
        let fabric: verbs::cm::CmAddr = rig.fabric().parse().expect("fabric address");
        let link = initiator::Link::connect(cfg, Some(fabric), initiator::TransportChoice::Iser)
            .await
            .expect("iSER login");
        let policy = conf::protection::ProtectionPolicy {
            mode: conf::protection::ProtectionMode::Insert,
            checks: vec![
                conf::protection::PiCheck::Guard,
                conf::protection::PiCheck::Ref,
                conf::protection::PiCheck::App,
            ],
            app_tag: APP,
            ..Default::default()
        };
        let dev = std::sync::Arc::new(
            initiator::BlockDevice::open(link.clone(), LUN_PI, policy)
                .await
                .expect("open LUN"),
        );
        let round = || {
            let tasks: Vec<_> = READS
                .iter()
                .map(|&(lba, n)| {
                    let dev = dev.clone();
                    tokio::spawn(async move { (lba, n, dev.read(lba, n).await) })
                })
                .collect();
            async move {
                let mut out = Vec::new();
                for task in tasks {
                    let (lba, n, r) = task.await.expect("read task");
                    let r = r.unwrap_or_else(|e| {
                        panic!("read at LBA {lba}: {e}\ntarget log:\n{}", t.log_text())
                    });
                    out.push((lba, n, r));
                }
                out
            }
        };
        let first = round().await;
        let second = round().await;
        let _ = link.logout().await;
        (first, second)
    });
    let bs = rig.bs;
    let failed: Vec<_> = first.iter().filter(|(_, _, o)| !o.is_good()).collect();
    assert_eq!(failed.len(), 1, "exactly one read fails: {failed:?}");
    let (lba, _, o) = failed[0];
    assert_eq!(*lba, 28, "the eight-block read fails");
    let s = o.sense.as_ref().expect("sense data");
    assert_eq!(o.origin, Some(initiator::block::SenseOrigin::Target));
    assert_eq!(
        (s.key.0, s.asc, s.ascq, s.information),
        (ABORTED_COMMAND, 0x10, GUARD, Some(28 + 6)),
        "sense of the failed read"
    );
    for (lba, n, o) in first
        .iter()
        .chain(second.iter())
        .filter(|(_, _, o)| o.is_good())
    {
        let (at, len) = (*lba as usize * bs, *n as usize * bs);
        assert!(
            o.data == data[at..at + len],
            "read at LBA {lba} returned wrong data"
        );
    }
    assert!(
        second.iter().all(|(_, _, o)| o.is_good()),
        "second round: {second:?}"
    );
    assert_eq!(t.pi_errors(LUN_PI).expect("status"), (1, 0, 0));
}
