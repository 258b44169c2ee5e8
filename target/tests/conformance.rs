//! libiscsi's conformance suite (`iscsi-test-cu`, Debian package libiscsi-bin)
//! against `iser-target` with three LUNs: 512-byte blocks without PI, 512-byte blocks
//! with Type 1 PI, 4096-byte blocks with Type 3 PI. Fails on any failed test and
//! names them; fails (does not skip) when the tool is missing.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;

const IQN: &str = "iqn.2026-11.io.iser-pi:conformance";
/// Bound on one run of the suite against one LUN.
const SUITE_TIMEOUT: Duration = Duration::from_secs(900);

/// The counts and failures of one `iscsi-test-cu` run.
#[derive(Debug, Default, PartialEq, Eq)]
struct SuiteResult {
    total: u32,
    ran: u32,
    passed: u32,
    failed: u32,
    /// `Suite.Test` names whose verdict was FAILED (each once).
    failures: Vec<String>,
    /// Lines reporting a skipped check.
    skipped: u32,
    /// How often each skip reason was given.
    skip_reasons: std::collections::BTreeMap<String, u32>,
}

/// Parse CUnit's verbose output: `Suite: X`, `  Test: Y ...` then `passed` or
/// `FAILED` (on the same line or after the test's own output), and the run summary.
fn parse(out: &str) -> Option<SuiteResult> {
    let mut r = SuiteResult::default();
    let mut suite = "";
    let mut test = String::new();
    let mut summary = false;
    for line in out.lines() {
        if let Some(s) = line.strip_prefix("Suite: ") {
            suite = s.trim();
            continue;
        }
        if let Some(t) = line.strip_prefix("  Test: ") {
            let name = t.split(" ...").next().unwrap_or(t).trim();
            test = format!("{suite}.{name}");
        }
        if let Some((_, reason)) = line.split_once("[SKIPPED]") {
            r.skipped += 1;
            *r.skip_reasons.entry(reason.trim().to_owned()).or_default() += 1;
        }
        let verdict_failed = line.trim_end() == "FAILED" || line.trim_end().ends_with("...FAILED");
        if verdict_failed && !test.is_empty() && !r.failures.contains(&test) {
            r.failures.push(test.clone());
        }
        if line.starts_with("Run Summary:") {
            summary = true;
        }
        if summary && line.trim_start().starts_with("tests ") {
            let n: Vec<u32> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|w| w.parse().ok())
                .collect();
            if n.len() >= 4 {
                (r.total, r.ran, r.passed, r.failed) = (n[0], n[1], n[2], n[3]);
            }
        }
    }
    summary.then_some(r)
}

fn config(dir: &std::path::Path) -> String {
    let _ = dir;
    format!(
        r#"
[iscsi]
nop_in_interval = 0

[[targets]]
iqn = "{IQN}"

[[targets.luns]]
id = 0
backing = {{ type = "ram", size = "64MiB" }}
block_size = 512
thin_provisioning = true

[[targets.luns]]
id = 1
backing = {{ type = "ram", size = "64MiB" }}
block_size = 512
thin_provisioning = true
protection = {{ type = 1 }}

[[targets.luns]]
id = 2
backing = {{ type = "ram", size = "64MiB" }}
block_size = 4096
thin_provisioning = true
protection = {{ type = 3 }}
"#
    )
}

/// Run the suite against `url`, killing it after SUITE_TIMEOUT.
fn run_suite(url: &str) -> String {
    let mut child = Command::new("iscsi-test-cu")
        // The URL twice: the second session lets the MultipathIO suite run.
        .args(["-d", url, url])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run iscsi-test-cu ({e}): install libiscsi-bin, e.g. by running scripts/test, which installs it")
        });
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let mut stderr = child.stderr.take().expect("stderr");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if start.elapsed() > SUITE_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("iscsi-test-cu against {url} did not finish within {SUITE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = reader.join().expect("stdout reader");
    out.push_str(&err_reader.join().expect("stderr reader"));
    out
}

#[test]
fn libiscsi_conformance_suite() {
    let available = Command::new("iscsi-test-cu")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        available.is_ok(),
        "iscsi-test-cu is not installed: run scripts/test (it installs the Debian package libiscsi-bin)"
    );
    let luns = [
        (0u64, "512-byte blocks, no PI"),
        (1, "512-byte blocks, Type 1 PI"),
        (2, "4096-byte blocks, Type 3 PI"),
    ];
    // One daemon per LUN under test, so that target-wide resets and reservations of
    // one run do not leak into another; the runs go in parallel.
    let dirs: Vec<tempfile::TempDir> = luns
        .iter()
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let daemons: Vec<Daemon> = dirs
        .iter()
        .map(|d| Daemon::start(d.path(), &config(d.path())))
        .collect();
    let runs: Vec<_> = luns
        .iter()
        .zip(&daemons)
        .map(|(&(lun, _), d)| {
            let url = format!("iscsi://{}/{IQN}/{lun}", d.addr);
            std::thread::spawn(move || run_suite(&url))
        })
        .collect();
    let mut failed = Vec::new();
    for ((lun, what), run) in luns.iter().zip(runs) {
        let out = run.join().expect("suite thread");
        let r = parse(&out).unwrap_or_else(|| {
            panic!(
                "no CUnit summary from iscsi-test-cu on LUN {lun}; output tail:\n{}",
                tail(&out)
            )
        });
        println!(
            "LUN {lun} ({what}): tests {} ran {} passed {} failed {}, {} skipped checks",
            r.total, r.ran, r.passed, r.failed, r.skipped
        );
        let mut reasons: Vec<(&String, &u32)> = r.skip_reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        for (reason, n) in reasons {
            println!("  {n:4} skipped: {reason}");
        }
        for f in &r.failures {
            println!("  FAILED {f}");
            failed.push(format!("LUN {lun}: {f}"));
        }
        if r.failed > 0 && r.failures.is_empty() {
            failed.push(format!(
                "LUN {lun}: {} failures (names not parsed)",
                r.failed
            ));
        }
        assert!(
            r.ran > 0,
            "iscsi-test-cu ran no tests on LUN {lun}:\n{}",
            tail(&out)
        );
    }
    assert!(
        failed.is_empty(),
        "libiscsi conformance failures:\n{}",
        failed.join("\n")
    );
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[test]
fn parser_reads_verdicts_and_summary() {
    let out = "\
Suite: CompareAndWrite
  Test: Simple ...    [FAILED] COMPAREANDWRITE successful
FAILED
    1. test_compareandwrite_simple.c:71  - CU_ASSERT_EQUAL(_r,0)
  Test: DpoFua ...passed
  Test: InvalidDataOutSize ...    [SKIPPED] Logical unit is fully provisioned. Skipping test
passed
Suite: iSCSITMF
  Test: LUNReset ...    [FAILED] RESERVE6 command: failed with sense.
passed
  Test: Other ...FAILED
Suite: CompareAndWrite
  Test: Simple ...FAILED

Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites    134    134    n/a      0        0
               tests    615    615    612      3        0
";
    let r = parse(out).expect("summary");
    assert_eq!(
        (r.total, r.ran, r.passed, r.failed, r.skipped),
        (615, 615, 612, 3, 1)
    );
    assert_eq!(
        r.failures,
        vec![
            "CompareAndWrite.Simple".to_owned(),
            "iSCSITMF.Other".to_owned()
        ]
    );
    assert_eq!(
        r.skip_reasons
            .get("Logical unit is fully provisioned. Skipping test"),
        Some(&1)
    );
    assert!(parse("no summary here").is_none());
}
