//! The admin control socket: a UNIX stream socket where the daemon answers `status`
//! with its [`StatusReport`] as one JSON document, and the client side that
//! `iser-target status` uses.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;

use crate::registry::{Registry, StatusReport};

/// Default path of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/iser-target.sock";

/// Why the control socket could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another daemon answers on this socket.
    #[error("another iser-target is already listening on {0}")]
    InUse(PathBuf),
    /// Socket I/O failed.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon's answer was not a status report.
    #[error("control socket {path}: unexpected answer: {source}")]
    Answer {
        /// The socket path.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// Bind the control socket at `path`, replacing a stale socket file.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_owned()));
        }
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| ControlError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Serve `status` requests until shutdown, then remove the socket file.
pub async fn serve(
    listener: UnixListener,
    path: PathBuf,
    registry: Arc<Registry>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let registry = registry.clone();
                tokio::spawn(async move {
                    let (rd, mut wr) = stream.into_split();
                    let mut line = String::new();
                    let mut rd = BufReader::new(rd);
                    let read = tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await;
                    if !matches!(read, Ok(Ok(_))) {
                        return;
                    }
                    let answer = match line.trim() {
                        "status" => serde_json::to_string(&registry.report()).unwrap_or_default(),
                        other => format!("{{\"error\":\"unknown request {other:?}\"}}"),
                    };
                    let _ = wr.write_all(answer.as_bytes()).await;
                    let _ = wr.write_all(b"\n").await;
                    let _ = wr.shutdown().await;
                });
            }
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// Ask the daemon at `path` for its status (blocking client).
pub fn query_status(path: &Path) -> Result<StatusReport, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut s = std::os::unix::net::UnixStream::connect(path).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    s.write_all(b"status\n").map_err(io)?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(io)?;
    serde_json::from_str(&text).map_err(|source| ControlError::Answer {
        path: path.to_owned(),
        source,
    })
}
