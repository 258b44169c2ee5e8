//! A wakeup usable from both tokio tasks and plain threads: the completion channel
//! of a CQ and the event cell of a CM connection.

use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::Notify;

/// An edge-triggered event: [`Signal::raise`] wakes one async waiter (or stores a
/// permit for the next) and every blocked thread. Waiters re-check their condition
/// after waking, so spurious wakeups are harmless and a raise is never lost.
#[derive(Debug, Default)]
pub struct Signal {
    notify: Notify,
    generation: Mutex<u64>,
    cv: Condvar,
}

impl Signal {
    /// A signal with no pending event.
    pub fn new() -> Signal {
        Signal::default()
    }

    /// Reports an event.
    pub fn raise(&self) {
        self.notify.notify_one();
        let mut g = self.generation.lock();
        *g = g.wrapping_add(1);
        self.cv.notify_all();
    }

    /// Waits (async) until an event is raised after the last one consumed.
    pub async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Current event generation, for [`Signal::wait_blocking_since`].
    pub fn generation(&self) -> u64 {
        *self.generation.lock()
    }

    /// Blocks the thread until the generation moves past `seen` or `timeout` passes;
    /// returns whether it moved.
    pub fn wait_blocking_since(&self, seen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.generation.lock();
        while *g == seen {
            if self.cv.wait_until(&mut g, deadline).timed_out() {
                return *g != seen;
            }
        }
        true
    }
}
