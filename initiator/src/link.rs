//! A session over either transport: iSCSI/TCP ([`Session`]) or iSER ([`IserSession`]).
//! Block I/O and exports work on a [`Link`]; the transport decides who applies
//! protection (software over TCP, the signature MR over iSER).

use std::time::Duration;

use iscsi::negotiate::NegotiatedParams;

use crate::command::Completion;
use crate::error::Error;
use crate::iser::{IserConfig, IserSession};
use crate::session::{DataDir, Session, SessionConfig};

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// iSCSI over TCP.
    Tcp,
    /// iSER.
    Iser,
    /// iSER, falling back to TCP when the iSER connect or login fails.
    Auto,
}

/// A logged-in session over one transport. Cloning shares it.
#[derive(Debug, Clone)]
pub enum Link {
    /// iSCSI over TCP.
    Tcp(Session),
    /// iSER.
    Iser(IserSession),
}

impl From<Session> for Link {
    fn from(s: Session) -> Self {
        Link::Tcp(s)
    }
}

impl From<IserSession> for Link {
    fn from(s: IserSession) -> Self {
        Link::Iser(s)
    }
}

impl Link {
    /// Connect by `choice`; `fabric` is the iSER address (needed for iser and auto).
    pub async fn connect(
        cfg: SessionConfig,
        fabric: Option<verbs::cm::CmAddr>,
        choice: TransportChoice,
    ) -> Result<Link, Error> {
        let iser = |fabric: verbs::cm::CmAddr| IserConfig {
            session: cfg.clone(),
            fabric,
            context: None,
        };
        match (choice, fabric) {
            (TransportChoice::Tcp, _) => Ok(Session::connect(cfg).await?.into()),
            (TransportChoice::Iser, Some(f)) => Ok(IserSession::connect(iser(f)).await?.into()),
            (TransportChoice::Iser, None) => {
                Err(Error::Invalid("transport iser needs an iSER portal".into()))
            }
            (TransportChoice::Auto, Some(f)) => match IserSession::connect(iser(f.clone())).await {
                Ok(s) => Ok(s.into()),
                Err(e) => {
                    tracing::info!(fabric = %f, "iSER failed ({e}); falling back to iSCSI over TCP");
                    Ok(Session::connect(cfg).await?.into())
                }
            },
            (TransportChoice::Auto, None) => Ok(Session::connect(cfg).await?.into()),
        }
    }

    /// "tcp" or "iser".
    pub fn transport_name(&self) -> &'static str {
        match self {
            Link::Tcp(_) => "tcp",
            Link::Iser(_) => "iser",
        }
    }

    /// Run a command with plain (unprotected) data.
    pub async fn execute(&self, lun: u64, cdb: &[u8], dir: DataDir) -> Result<Completion, Error> {
        match self {
            Link::Tcp(s) => s.execute(lun, cdb, dir).await,
            Link::Iser(s) => s.execute(lun, cdb, dir).await,
        }
    }

    /// The negotiated parameters.
    pub fn params(&self) -> Option<&NegotiatedParams> {
        match self {
            Link::Tcp(s) => Some(s.params()),
            Link::Iser(s) => s.params(),
        }
    }

    /// Log out.
    pub async fn logout(&self) -> Result<(), Error> {
        match self {
            Link::Tcp(s) => s.logout().await,
            Link::Iser(s) => s.logout().await,
        }
    }

    /// Why the session closed, once it has.
    pub fn closed_reason(&self) -> Option<String> {
        match self {
            Link::Tcp(s) => s.closed_reason(),
            Link::Iser(s) => s.closed_reason(),
        }
    }

    /// Wait until the session closes.
    pub async fn wait_closed(&self) {
        match self {
            Link::Tcp(s) => s.wait_closed().await,
            Link::Iser(s) => s.wait_closed().await,
        }
    }

    /// NOP-Out ping.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let start = std::time::Instant::now();
        match self {
            Link::Tcp(s) => s.ping().await,
            Link::Iser(s) => s.ping().await.map(|()| start.elapsed()),
        }
    }
}
