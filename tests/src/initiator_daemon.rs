//! `iser-initiator` as a daemon child process: started on a configuration file in a
//! temp dir (optionally with `MLX5_SOFT_FAULT` in its own soft HCA), ready when the
//! NBD socket or FUSE file it was asked to serve exists; stopped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{bins, SupportError, TIMEOUT};

/// A running `iser-initiator` daemon.
#[derive(Debug)]
pub struct InitiatorDaemon {
    child: Child,
    log: PathBuf,
}

impl InitiatorDaemon {
    /// Writes `config` to `dir/initiator.toml`, starts the daemon on it (control socket
    /// in `dir`), and waits until `ready` (an NBD UNIX socket or a FUSE file of the
    /// configuration) exists.
    pub fn start(
        dir: &Path,
        config: &str,
        ready: &Path,
        fault: Option<&str>,
    ) -> Result<Self, SupportError> {
        let path = dir.join("initiator.toml");
        std::fs::write(&path, config).map_err(|e| SupportError::io("writing initiator.toml", e))?;
        let log = dir.join("initiator-daemon.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| SupportError::io("creating the log", e))?;
        let mut cmd = Command::new(bins::daemon_bin(bins::INITIATOR)?);
        cmd.arg("--config")
            .arg(&path)
            .arg("--control-socket")
            .arg(dir.join("initiator-control.sock"))
            .env("RUST_LOG", "warn")
            .env_remove("MLX5_SOFT_FAULT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some(f) = fault {
            cmd.env("MLX5_SOFT_FAULT", f);
        }
        let child = cmd
            .spawn()
            .map_err(|e| SupportError::io("spawning iser-initiator", e))?;
        let mut d = InitiatorDaemon { child, log };
        let start = Instant::now();
        while !ready.exists() {
            if let Ok(Some(s)) = d.child.try_wait() {
                return Err(SupportError::Unexpected(format!(
                    "iser-initiator exited ({s}) before serving {}; log: {}",
                    ready.display(),
                    d.log_text()
                )));
            }
            if start.elapsed() > TIMEOUT {
                return Err(SupportError::Timeout {
                    what: format!(
                        "iser-initiator serving {} (log: {})",
                        ready.display(),
                        d.log_text()
                    ),
                    limit: TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM (the daemon logs its sessions out), bounded wait.
    pub fn stop(&mut self) -> Result<ExitStatus, SupportError> {
        crate::terminate(&mut self.child, "iser-initiator")
    }
}

impl Drop for InitiatorDaemon {
    /// SIGTERM first, so that the daemon unmounts its FUSE exports (a killed
    /// one leaves a dead mount behind); SIGKILL if it does not exit in time.
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = crate::terminate(&mut self.child, "iser-initiator");
        }
    }
}
