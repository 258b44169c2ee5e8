//! iSCSI over TCP (RFC 7143): the portal accept loop; each connection is served by
//! [`conn`] (login, then the full feature phase) on the tokio runtime, SCSI commands
//! run on blocking workers.

pub mod command;
pub mod conn;
pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use conn::PortalContext;

/// Accept connections on `listener` until shutdown; each connection runs on its own
/// task. Returns once shutdown was signalled and every connection ended.
pub async fn run_portal(listener: TcpListener, ctx: Arc<PortalContext>) {
    let mut shutdown = ctx.shutdown.clone();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "connection accepted");
                    conns.spawn(conn::serve(stream, peer, ctx.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            r = shutdown.changed() => {
                if r.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// The address a portal listens on, for logs and SendTargets.
pub fn portal_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
