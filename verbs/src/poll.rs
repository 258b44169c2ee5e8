//! Poll mode: a CQ whose completions come from one descriptor the device reads
//! (a soft HCA's link socket) is driven by its own consumer while it waits, as
//! SPDK's poll groups read their sockets, rather than by a device thread that then
//! has to wake the consumer. A consumer waiting in [`crate::Cq::next_batch`]
//! registers the descriptor with its runtime and, when it turns readable, runs the
//! device's receive path in place; the device's thread stands by meanwhile and
//! takes the work back when no consumer has been waiting for a while.
//!
//! A provider offers it through
//! [`ContextOps::cq_poll_source`](crate::provider::ContextOps::cq_poll_source);
//! hardware whose completions arrive by DMA has no such descriptor and offers none.

use std::fmt;
use std::future::Future;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// What [`PollSource::progress`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Everything the descriptor held was handled: wait for it to turn readable
    /// again.
    Drained,
    /// Stopped after a batch with more possibly waiting: call again.
    More,
    /// Another thread holds the receive path. It raises the CQ's event once it
    /// lets go, so wait for that rather than for the descriptor.
    Busy,
    /// The source has ended (the connection closed): only the CQ's event is left
    /// to wait for.
    Ended,
}

/// The receive path behind a CQ, drivable by the CQ's consumer.
pub trait PollSource: Send + Sync + fmt::Debug {
    /// The descriptor that turns readable when [`PollSource::progress`] has work.
    fn fd(&self) -> BorrowedFd<'_>;

    /// Does the receive work that is ready now, never waiting for more input (a
    /// message cut short is kept and finished when the rest arrives).
    fn progress(&self) -> Progress;

    /// A consumer starts waiting on the descriptor: the device's own thread
    /// stands by while any does.
    fn enter(&self);

    /// That consumer stopped waiting.
    fn leave(&self);
}

/// A provider's answer to "can this CQ be driven by its consumer?".
#[derive(Debug, Clone)]
pub enum PollLookup {
    /// Yes, through this source.
    Ready(Arc<dyn PollSource>),
    /// Not yet (its QP is not connected); ask again later.
    Later,
    /// No: completions come from several sources or from none the consumer can
    /// wait on.
    Never,
}

/// How a CQ waits: resolved on first use.
#[derive(Debug, Default)]
pub(crate) enum PollState {
    /// Not asked yet, or the provider said "later".
    #[default]
    Unresolved,
    /// Driven by its consumer.
    Driven(Arc<Driven>),
    /// Waits for the CQ's event only.
    Off,
}

/// A poll source registered with the runtime of the CQ's consumer.
pub(crate) struct Driven {
    src: Arc<dyn PollSource>,
    fd: AsyncFd<OwnedFd>,
}

impl fmt::Debug for Driven {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driven").field("src", &self.src).finish()
    }
}

/// Counts one consumer as waiting on the source until dropped.
struct Waiting<'a>(&'a dyn PollSource);

impl<'a> Waiting<'a> {
    fn new(src: &'a dyn PollSource) -> Waiting<'a> {
        src.enter();
        Waiting(src)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// What ended a [`Driven::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Look at the CQ again.
    Again,
    /// The source is gone: wait for the CQ's event only from now on.
    SourceGone,
}

impl Driven {
    /// Registers `src`'s descriptor with the current runtime; `None` outside a
    /// runtime or when the descriptor cannot be registered.
    pub(crate) fn register(src: Arc<dyn PollSource>) -> Option<Driven> {
        tokio::runtime::Handle::try_current().ok()?;
        let owned = match src.fd().try_clone_to_owned() {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(error = %e, "poll mode off: the descriptor cannot be duplicated");
                return None;
            }
        };
        // SAFETY: `owned` is an open descriptor that the AsyncFd owns from here
        // on, so it stays open on the same file description until the AsyncFd is
        // dropped, and an OwnedFd always reports the same raw descriptor.
        match unsafe { AsyncFd::register_with_interest(owned, Interest::READABLE) } {
            Ok(fd) => Some(Driven { src, fd }),
            Err(e) => {
                let (_, e) = e.into_parts();
                tracing::debug!(error = %e, "poll mode off: the descriptor cannot be registered");
                None
            }
        }
    }

    /// Waits until `event` (the CQ's event) fires or the descriptor turns readable;
    /// in the latter case runs the source's receive path here.
    pub(crate) async fn wait(&self, event: impl Future<Output = ()>) -> Woken {
        let _waiting = Waiting::new(&*self.src);
        tokio::pin!(event);
        tokio::select! {
            biased;
            () = &mut event => Woken::Again,
            r = self.fd.readable() => {
                let Ok(mut ready) = r else {
                    return Woken::SourceGone;
                };
                match self.src.progress() {
                    Progress::Drained => {
                        // Only readiness seen before this guard is cleared: input
                        // arriving meanwhile keeps the descriptor ready.
                        ready.clear_ready();
                        Woken::Again
                    }
                    Progress::More => Woken::Again,
                    Progress::Busy => {
                        drop(ready);
                        event.await;
                        Woken::Again
                    }
                    Progress::Ended => Woken::SourceGone,
                }
            }
        }
    }
}
