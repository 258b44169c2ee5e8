//! The threads iSER connections run on. A lane is one thread driving a
//! single-threaded runtime; each connection is placed on the lane with the fewest
//! connections and all of its tasks (receive loop, completion poller, doorbell,
//! commands that wait) run there. The soft HCA's completion wake-up then reaches one
//! thread, and a command never moves between cores halfway (as LIO gives each
//! connection its own threads and SPDK a poll group per core).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// How long a stopping lane waits for its blocking tasks (file I/O) to finish.
const BLOCKING_GRACE: Duration = Duration::from_secs(10);

/// The lanes of the daemon's iSER portals. Dropping it stops every lane; tasks still
/// on a lane then end with it.
#[derive(Debug)]
pub struct Lanes {
    lanes: Vec<Lane>,
}

#[derive(Debug)]
struct Lane {
    handle: Handle,
    connections: Arc<AtomicUsize>,
    _stop: oneshot::Sender<()>,
}

impl Lanes {
    /// Starts `n` lanes (at least one), each with up to `max_blocking` threads for
    /// blocking device I/O.
    pub fn start(n: usize, max_blocking: usize) -> std::io::Result<Lanes> {
        let lanes = (0..n.max(1))
            .map(|i| Lane::start(i, max_blocking.max(1)))
            .collect::<std::io::Result<_>>()?;
        Ok(Lanes { lanes })
    }

    /// Lanes running.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Whether there is no lane (never, once started).
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Connections placed on each lane and not yet ended.
    pub fn connections(&self) -> Vec<usize> {
        self.lanes
            .iter()
            .map(|l| l.connections.load(Ordering::Relaxed))
            .collect()
    }

    /// Runs `conn` on the least loaded lane, tracked by `set`.
    pub fn spawn<F>(&self, set: &mut JoinSet<()>, conn: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let lane = self
            .lanes
            .iter()
            .min_by_key(|l| l.connections.load(Ordering::Relaxed))
            .expect("Lanes::start makes at least one lane");
        let placed = Placed::new(&lane.connections);
        set.spawn_on(
            async move {
                let _placed = placed;
                conn.await
            },
            &lane.handle,
        );
    }
}

impl Lane {
    fn start(index: usize, max_blocking: usize) -> std::io::Result<Lane> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(max_blocking)
            .thread_name(format!("iser-lane-{index}-blk"))
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("iser-lane-{index}"))
            .spawn(move || {
                // Runs the lane's tasks until the `Lanes` is dropped.
                let _ = rt.block_on(stopped);
                rt.shutdown_timeout(BLOCKING_GRACE);
            })?;
        Ok(Lane {
            handle,
            connections: Arc::new(AtomicUsize::new(0)),
            _stop: stop,
        })
    }
}

/// One connection counted on its lane until dropped.
#[derive(Debug)]
struct Placed(Arc<AtomicUsize>);

impl Placed {
    fn new(count: &Arc<AtomicUsize>) -> Placed {
        count.fetch_add(1, Ordering::Relaxed);
        Placed(count.clone())
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections go to the least loaded lane, all of a connection's tasks run on
    /// its lane's one thread, and a lane's count drops when its connection ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_spread_over_lanes_and_stay_on_their_thread() {
        let lanes = Lanes::start(2, 1).unwrap();
        let mut set = JoinSet::new();
        let (release, released) = tokio::sync::watch::channel(false);
        let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let mut released = released.clone();
            let seen = seen_tx.clone();
            lanes.spawn(&mut set, async move {
                let me = std::thread::current().id();
                // A task the connection spawns runs on the same thread.
                let child = tokio::spawn(async { std::thread::current().id() });
                let child_thread = child.await.unwrap();
                let name = std::thread::current().name().map(str::to_owned);
                seen.send((me, child_thread, name)).unwrap();
                while !*released.borrow() {
                    released.changed().await.unwrap();
                }
            });
        }
        let mut threads = std::collections::HashSet::new();
        for _ in 0..4 {
            let (me, child, name) = seen_rx.recv().await.unwrap();
            assert_eq!(me, child, "a connection's tasks share its lane's thread");
            assert!(name.unwrap().starts_with("iser-lane-"));
            threads.insert(me);
        }
        assert_eq!(threads.len(), 2, "four connections use both lanes");
        assert_eq!(lanes.connections(), vec![2, 2]);
        release.send(true).unwrap();
        while set.join_next().await.is_some() {}
        assert_eq!(lanes.connections(), vec![0, 0]);
    }
}
