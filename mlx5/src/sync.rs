//! Locks and queues for the device's threads that sleep instead of spinning with
//! `sched_yield`. On a host with few cores a waiter that yields in a loop takes
//! the CPU from the very thread it waits for; the device has three threads per
//! connected QP next to the application's, so its waits go straight to the
//! kernel (futex) after a short busy spin.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Condvar, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// A mutex that ignores poisoning (a panicked device thread already took its QP
/// down) and never yields while waiting: std's futex lock spins briefly, then
/// sleeps.
#[derive(Default)]
pub struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    /// A mutex holding `t`.
    pub const fn new(t: T) -> Mutex<T> {
        Mutex(std::sync::Mutex::new(t))
    }

    /// Waits for the lock.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The lock if it is free now.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        match self.0.try_lock() {
            Ok(g) => Some(g),
            Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The lock if it frees up within `wait` (polled every millisecond; for
    /// shutdown paths only).
    pub fn try_lock_for(&self, wait: Duration) -> Option<MutexGuard<'_, T>> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(g) = self.try_lock() {
                return Some(g);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.try_lock() {
            Some(g) => f.debug_tuple("Mutex").field(&*g).finish(),
            None => f.write_str("Mutex(<locked>)"),
        }
    }
}

struct Queue<T> {
    items: VecDeque<T>,
    senders: usize,
}

struct Shared<T> {
    q: std::sync::Mutex<Queue<T>>,
    cv: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Queue<T>> {
        self.q.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending half of an unbounded queue to one device thread.
pub struct Sender<T>(Arc<Shared<T>>);

/// The receiving half; `recv` fails once every [`Sender`] is gone and the queue
/// is empty.
pub struct Receiver<T>(Arc<Shared<T>>);

/// Every sender is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Disconnected;

/// Why [`Receiver::recv_timeout`] returned without an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvTimeoutError {
    /// Nothing arrived in time.
    Timeout,
    /// Every sender is gone.
    Disconnected,
}

/// An unbounded queue: a mutex-protected deque and a condition variable.
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let s = Arc::new(Shared {
        q: std::sync::Mutex::new(Queue {
            items: VecDeque::new(),
            senders: 1,
        }),
        cv: Condvar::new(),
    });
    (Sender(Arc::clone(&s)), Receiver(s))
}

impl<T> Sender<T> {
    /// Queues `t` and wakes the receiver. Never blocks (beyond the queue lock).
    pub fn send(&self, t: T) -> Result<(), Disconnected> {
        self.0.lock().items.push_back(t);
        self.0.cv.notify_one();
        Ok(())
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.0.lock().items.is_empty()
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Sender(Arc::clone(&self.0))
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let last = {
            let mut q = self.0.lock();
            q.senders -= 1;
            q.senders == 0
        };
        if last {
            self.0.cv.notify_all();
        }
    }
}

impl<T> Receiver<T> {
    /// Waits for the next item.
    pub fn recv(&self) -> Result<T, Disconnected> {
        let mut q = self.0.lock();
        loop {
            if let Some(t) = q.items.pop_front() {
                return Ok(t);
            }
            if q.senders == 0 {
                return Err(Disconnected);
            }
            q = self.0.cv.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits up to `wait` for the next item.
    pub fn recv_timeout(&self, wait: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now() + wait;
        let mut q = self.0.lock();
        loop {
            if let Some(t) = q.items.pop_front() {
                return Ok(t);
            }
            if q.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvTimeoutError::Timeout);
            }
            q = self
                .0
                .cv
                .wait_timeout(q, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Option<T> {
        self.0.lock().items.pop_front()
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sender")
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Receiver")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_arrive_in_order_and_the_last_sender_disconnects() {
        let (tx, rx) = channel();
        let tx2 = tx.clone();
        let t = std::thread::spawn(move || {
            for i in 0..1000 {
                tx2.send(i).unwrap();
            }
        });
        for i in 0..1000 {
            assert_eq!(rx.recv(), Ok(i));
        }
        t.join().unwrap();
        assert!(tx.is_empty());
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(5)),
            Err(RecvTimeoutError::Timeout)
        );
        drop(tx);
        assert_eq!(rx.recv(), Err(Disconnected));
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(5)),
            Err(RecvTimeoutError::Disconnected)
        );
    }

    #[test]
    fn try_lock_for_gives_up_while_held() {
        let m = Mutex::new(1);
        let g = m.lock();
        assert!(m.try_lock().is_none());
        assert!(m.try_lock_for(Duration::from_millis(3)).is_none());
        drop(g);
        assert_eq!(*m.try_lock_for(Duration::from_millis(3)).unwrap(), 1);
    }
}
