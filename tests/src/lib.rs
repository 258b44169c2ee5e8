//! Test support for the end-to-end suite: finds (and builds once) the two daemons'
//! binaries, runs `iser-target` as a child process on loopback with a generated
//! configuration, drives the `iser-initiator` scripting CLI with bounded waits, and
//! builds and compares T10 PI the way a host would. The tests live in `tests/tests/`.

pub mod bins;
pub mod cli;
pub mod initiator_daemon;
pub mod pi;
pub mod target;

use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Bound on every wait in the suite: process start, one CLI command, shutdown.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A failure of the test support itself (not of the system under test).
#[derive(Debug, thiserror::Error)]
pub enum SupportError {
    /// Starting or talking to a child process failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `cargo build` of the daemons failed.
    #[error("building the daemons failed ({status}):\n{stderr}")]
    Build {
        /// Exit status of cargo.
        status: std::process::ExitStatus,
        /// What cargo said.
        stderr: String,
    },
    /// A binary is not where it should be.
    #[error("binary {0} not found (set ISER_E2E_BIN_DIR or run from a cargo build tree)")]
    MissingBinary(PathBuf),
    /// A child process did not finish or report in time.
    #[error("{what} did not finish within {limit:?}")]
    Timeout {
        /// The process.
        what: String,
        /// The bound.
        limit: Duration,
    },
    /// A child process said something unexpected.
    #[error("{0}")]
    Unexpected(String),
}

impl SupportError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        SupportError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Flips bit `bit` of the byte at `offset` in the file at `path` (a LUN's data file
/// or `.pi` sidecar behind a running target) and syncs it, so that the target reads
/// the corrupted byte however it opened the file.
pub fn flip_bit(path: &std::path::Path, offset: u64, bit: u8) -> Result<(), SupportError> {
    use std::os::unix::fs::FileExt;
    let what = |w: &str| format!("{w} byte {offset} of {}", path.display());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| SupportError::io(what("opening the file to flip"), e))?;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset)
        .map_err(|e| SupportError::io(what("reading"), e))?;
    b[0] ^= 1 << (bit & 7);
    f.write_all_at(&b, offset)
        .map_err(|e| SupportError::io(what("writing"), e))?;
    f.sync_data()
        .map_err(|e| SupportError::io(what("syncing after flipping"), e))
}

/// `len` random bytes from the OS.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    // The OS random source does not fail on Linux after boot; fall back to a pattern
    // so that a test still gets distinct bytes if it ever does.
    if getrandom::getrandom(&mut v).is_err() {
        for (i, b) in v.iter_mut().enumerate() {
            *b = (i.wrapping_mul(131) ^ (i >> 7)) as u8;
        }
    }
    v
}

/// SIGTERM to a child this process spawned, then a bounded wait for its exit; SIGKILL
/// (and an error) if it does not exit within [`TIMEOUT`].
pub fn terminate(child: &mut Child, what: &str) -> Result<ExitStatus, SupportError> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| SupportError::Unexpected("pid out of range".into()))?;
    if child
        .try_wait()
        .map_err(|e| SupportError::io(format!("waiting for {what}"), e))?
        .is_none()
    {
        // SAFETY: kill(2) on the pid of a child this process spawned and has not
        // reaped (try_wait just saw it running), so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let start = Instant::now();
    loop {
        if let Some(s) = child
            .try_wait()
            .map_err(|e| SupportError::io(format!("waiting for {what}"), e))?
        {
            return Ok(s);
        }
        if start.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SupportError::Timeout {
                what: format!("{what} shutdown"),
                limit: TIMEOUT,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
