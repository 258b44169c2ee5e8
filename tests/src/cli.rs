//! The `iser-initiator` scripting CLI as the suite drives it: one `write` or `read`
//! per process (`--transport iser --json`), data and DIX PI through files, an optional
//! `MLX5_SOFT_FAULT` armed in the initiator's own soft HCA, every run bounded by
//! [`crate::TIMEOUT`] and killed when it overruns.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{bins, SupportError, TIMEOUT};

/// The initiator's protection mode for one command (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No PI anywhere on the initiator side.
    Off,
    /// The initiator's HCA generates PI on writes, verifies and strips it on reads.
    Insert,
    /// Host PI (DIX) travels end to end.
    Pass,
    /// Host PI is verified and dropped (LUN without PI).
    Strip,
}

impl Mode {
    /// The CLI's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Insert => "insert",
            Mode::Pass => "pass",
            Mode::Strip => "strip",
        }
    }

    /// True when host buffers carry DIX PI (reads deliver it, writes take it).
    pub fn host_pi(self) -> bool {
        matches!(self, Mode::Pass | Mode::Strip)
    }
}

/// Decoded sense as the CLI prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sense {
    /// Sense key (0Bh ABORTED COMMAND, 05h ILLEGAL REQUEST, ...).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION field (the failing LBA for PI errors).
    pub information: Option<u64>,
    /// `target` or `initiator`.
    pub origin: String,
    /// The CLI's one-line rendering.
    pub text: String,
}

/// The result of one CLI run.
#[derive(Debug, Clone)]
pub struct Io {
    /// Exit status (0 GOOD, 3 CHECK CONDITION, 4 other status, 1 failure).
    pub code: i32,
    /// SCSI status byte, when the command got that far.
    pub status: Option<u8>,
    /// Sense, when the status carried one.
    pub sense: Option<Sense>,
    /// Data read (empty for writes and failed reads).
    pub data: Vec<u8>,
    /// DIX PI read (pass and strip modes).
    pub pi: Option<Vec<u8>>,
    /// The JSON object printed, if any.
    pub json: Value,
    /// What the CLI said on stderr.
    pub stderr: String,
}

impl Io {
    /// GOOD status and exit 0.
    pub fn is_good(&self) -> bool {
        self.code == 0 && self.status == Some(0)
    }

    /// CHECK CONDITION (status 02h, exit 3).
    pub fn is_check_condition(&self) -> bool {
        self.code == 3 && self.status == Some(2)
    }

    /// (key, ASC, ASCQ, INFORMATION) of the sense, if any.
    pub fn sense_fields(&self) -> Option<(u8, u8, u8, Option<u64>)> {
        self.sense
            .as_ref()
            .map(|s| (s.key, s.asc, s.ascq, s.information))
    }
}

/// Runs `bin args` with `fault` as `MLX5_SOFT_FAULT`, bounded by `limit`; returns exit
/// code, stdout and stderr.
pub fn run_bounded(
    bin: &Path,
    args: &[std::ffi::OsString],
    fault: Option<&str>,
    limit: Duration,
) -> Result<(i32, Vec<u8>, String), SupportError> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("MLX5_SOFT_FAULT")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(f) = fault {
        cmd.env("MLX5_SOFT_FAULT", f);
    }
    let what = format!("{} {:?}", bin.display(), args);
    let mut child = cmd
        .spawn()
        .map_err(|e| SupportError::io(format!("spawning {what}"), e))?;
    let mut out_pipe = child.stdout.take();
    let mut err_pipe = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = out_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(p) = err_pipe.as_mut() {
            let _ = p.read_to_end(&mut v);
        }
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child
            .try_wait()
            .map_err(|e| SupportError::io(format!("waiting for {what}"), e))?
        {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SupportError::Timeout { what, limit });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
    Ok((status.code().unwrap_or(-1), stdout, stderr))
}

/// One target's LUNs as the CLI reaches them over iSER.
#[derive(Debug, Clone)]
pub struct InitiatorCli {
    bin: PathBuf,
    dir: PathBuf,
    config: Option<PathBuf>,
    target: String,
    portal: SocketAddr,
    fabric: String,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

impl InitiatorCli {
    /// Commands to `target` (iSCSI/TCP `portal`, iSER `fabric`), scratch files in `dir`,
    /// with `--config config` when given (its session for `target` supplies the
    /// protection policy's checks and application tag).
    pub fn new(
        dir: &Path,
        target: &str,
        portal: SocketAddr,
        fabric: &str,
        config: Option<PathBuf>,
    ) -> Result<Self, SupportError> {
        Ok(InitiatorCli {
            bin: bins::daemon_bin(bins::INITIATOR)?,
            dir: dir.to_owned(),
            config,
            target: target.to_owned(),
            portal,
            fabric: fabric.to_owned(),
        })
    }

    fn scratch(&self, what: &str) -> PathBuf {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("cli-{n}.{what}"))
    }

    fn base_args(&self, op: &str, lun: u16, lba: u64, mode: Mode) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = Vec::new();
        if let Some(c) = &self.config {
            a.push("--config".into());
            a.push(c.into());
        }
        for s in [
            op.to_owned(),
            "--target".into(),
            self.target.clone(),
            "--portal".into(),
            self.portal.to_string(),
            "--transport".into(),
            "iser".into(),
            "--iser-portal".into(),
            self.fabric.clone(),
            "--lun".into(),
            lun.to_string(),
            "--lba".into(),
            lba.to_string(),
            "--mode".into(),
            mode.as_str().into(),
            "--timeout".into(),
            "20".into(),
            "--json".into(),
        ] {
            a.push(s.into());
        }
        a
    }

    fn finish(
        &self,
        (code, stdout, stderr): (i32, Vec<u8>, String),
        data: Option<&Path>,
        pi: Option<&Path>,
    ) -> Result<Io, SupportError> {
        let text = String::from_utf8_lossy(&stdout);
        let json = text
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or(Value::Null);
        if code != 1 && json.is_null() {
            return Err(SupportError::Unexpected(format!(
                "iser-initiator exit {code} without JSON; stdout {text:?}, stderr {stderr:?}"
            )));
        }
        let status = json["status"].as_u64().and_then(|s| u8::try_from(s).ok());
        let sense = json["sense"].as_object().map(|s| Sense {
            key: s["key"].as_u64().unwrap_or(0xff) as u8,
            asc: s["asc"].as_u64().unwrap_or(0xff) as u8,
            ascq: s["ascq"].as_u64().unwrap_or(0xff) as u8,
            information: s["information"].as_u64(),
            origin: s["origin"].as_str().unwrap_or_default().to_owned(),
            text: s["text"].as_str().unwrap_or_default().to_owned(),
        });
        let read = |p: Option<&Path>| p.and_then(|p| std::fs::read(p).ok());
        let io = Io {
            code,
            status,
            sense,
            data: if code == 0 {
                read(data).unwrap_or_default()
            } else {
                Vec::new()
            },
            pi: if code == 0 { read(pi) } else { None },
            json,
            stderr,
        };
        for p in [data, pi].into_iter().flatten() {
            let _ = std::fs::remove_file(p);
        }
        Ok(io)
    }

    /// `iser-initiator write` of `data` (and DIX `pi`) at `lba`, with `fault` armed in
    /// the initiator's HCA when given.
    pub fn write(
        &self,
        lun: u16,
        lba: u64,
        mode: Mode,
        data: &[u8],
        pi: Option<&[u8]>,
        fault: Option<&str>,
    ) -> Result<Io, SupportError> {
        let din = self.scratch("in");
        std::fs::write(&din, data).map_err(|e| SupportError::io("writing input", e))?;
        let mut args = self.base_args("write", lun, lba, mode);
        args.push("--in".into());
        args.push(din.clone().into());
        let pin = match pi {
            Some(pi) => {
                let p = self.scratch("pi-in");
                std::fs::write(&p, pi).map_err(|e| SupportError::io("writing PI input", e))?;
                args.push("--pi".into());
                args.push(p.clone().into());
                Some(p)
            }
            None => None,
        };
        let r = run_bounded(&self.bin, &args, fault, TIMEOUT)?;
        let io = self.finish(r, None, None);
        let _ = std::fs::remove_file(&din);
        if let Some(p) = pin {
            let _ = std::fs::remove_file(p);
        }
        io
    }

    /// `iser-initiator read` of `blocks` blocks at `lba` (DIX PI too in pass and strip
    /// modes), with `fault` armed in the initiator's HCA when given.
    pub fn read(
        &self,
        lun: u16,
        lba: u64,
        blocks: u64,
        mode: Mode,
        fault: Option<&str>,
    ) -> Result<Io, SupportError> {
        let out = self.scratch("out");
        let mut args = self.base_args("read", lun, lba, mode);
        args.push("--blocks".into());
        args.push(blocks.to_string().into());
        args.push("--out".into());
        args.push(out.clone().into());
        let pi = mode.host_pi().then(|| self.scratch("pi-out"));
        if let Some(p) = &pi {
            args.push("--pi".into());
            args.push(p.into());
        }
        let r = run_bounded(&self.bin, &args, fault, TIMEOUT)?;
        self.finish(r, Some(&out), pi.as_deref())
    }
}
