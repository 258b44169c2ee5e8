//! `iser-target` as a child process: started on a configuration file in a temp dir,
//! optionally with `MLX5_SOFT_FAULT` arming a fault in its soft HCA; its TCP portal is
//! read from the `listening ADDR` line it prints; it is killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::{bins, SupportError, TIMEOUT};

/// A running `iser-target`.
#[derive(Debug)]
pub struct TargetProcess {
    child: Child,
    /// The iSCSI/TCP portal it reported.
    pub portal: SocketAddr,
    /// Its control socket (for `iser-target status`).
    pub control: PathBuf,
    log: PathBuf,
}

impl TargetProcess {
    /// Writes `config` to `dir/target.toml` and starts the daemon on it, with
    /// `MLX5_SOFT_FAULT=fault` when given. The configuration must have a TCP portal
    /// (use `127.0.0.1:0`: the bound address is read back). Returns once the daemon
    /// has reported its portals, which it does after binding every one of them.
    pub fn start(dir: &Path, config: &str, fault: Option<&str>) -> Result<Self, SupportError> {
        let path = dir.join("target.toml");
        std::fs::write(&path, config).map_err(|e| SupportError::io("writing target.toml", e))?;
        let control = dir.join("target-control.sock");
        let log = dir.join(match fault {
            Some(_) => "target-fault.log",
            None => "target.log",
        });
        let log_file =
            std::fs::File::create(&log).map_err(|e| SupportError::io("creating the log", e))?;
        let mut cmd = Command::new(bins::daemon_bin(bins::TARGET)?);
        cmd.arg("--config")
            .arg(&path)
            .arg("--control-socket")
            .arg(&control)
            .env("RUST_LOG", "warn")
            .env_remove("MLX5_SOFT_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        if let Some(f) = fault {
            cmd.env("MLX5_SOFT_FAULT", f);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| SupportError::io("spawning iser-target", e))?;
        let Some(stdout) = child.stdout.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SupportError::Unexpected("no stdout pipe".into()));
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the daemon never blocks on stdout.
            for _ in lines {}
        });
        let mut t = TargetProcess {
            child,
            portal: SocketAddr::from(([127, 0, 0, 1], 0)),
            control,
            log,
        };
        let line = rx
            .recv_timeout(TIMEOUT)
            .map_err(|_| SupportError::Timeout {
                what: format!("iser-target start (log: {})", t.log_text()),
                limit: TIMEOUT,
            })?;
        t.portal = line
            .strip_prefix("listening ")
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                SupportError::Unexpected(format!(
                    "iser-target's first line is {line:?}, not `listening ADDR`; log: {}",
                    t.log_text()
                ))
            })?;
        Ok(t)
    }

    /// The daemon's stderr so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `iser-target status --json` of this daemon (sessions, LUNs, PI error counters).
    pub fn status_json(&self) -> Result<serde_json::Value, SupportError> {
        let args: Vec<std::ffi::OsString> = vec![
            "--control-socket".into(),
            self.control.clone().into(),
            "status".into(),
            "--json".into(),
        ];
        let (code, out, err) =
            crate::cli::run_bounded(&bins::daemon_bin(bins::TARGET)?, &args, None, TIMEOUT)?;
        if code != 0 {
            return Err(SupportError::Unexpected(format!(
                "iser-target status exit {code}: {err}"
            )));
        }
        serde_json::from_slice(&out)
            .map_err(|e| SupportError::Unexpected(format!("iser-target status JSON: {e}")))
    }

    /// The PI error counters (guard, application tag, reference tag) of LUN `lun` of
    /// the first target.
    pub fn pi_errors(&self, lun: u16) -> Result<(u64, u64, u64), SupportError> {
        let v = self.status_json()?;
        let luns = v["targets"][0]["luns"]
            .as_array()
            .ok_or_else(|| SupportError::Unexpected(format!("no LUNs in status: {v}")))?;
        let l = luns
            .iter()
            .find(|l| {
                l["id"].as_u64() == Some(u64::from(lun))
                    || l["lun"].as_u64() == Some(u64::from(lun))
            })
            .ok_or_else(|| SupportError::Unexpected(format!("LUN {lun} not in status: {v}")))?;
        let c = &l["counters"];
        let n = |k: &str| c[k].as_u64().unwrap_or(0);
        Ok((n("guard_errors"), n("app_tag_errors"), n("ref_tag_errors")))
    }

    /// SIGTERM, then wait (bounded) for a clean exit; SIGKILL if it does not come.
    pub fn stop(&mut self) -> Result<ExitStatus, SupportError> {
        crate::terminate(&mut self.child, "iser-target")
    }
}

impl Drop for TargetProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
