//! Doorbell batching for async users of a queue pair: work requests that many tasks
//! queue during one turn of the runtime are posted together, with one `post_send`
//! (one doorbell; on the soft HCA, one socket write), as a poll-mode application
//! posts once per loop iteration.

use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

use crate::wr::SendWr;

/// Send work requests waiting for the next doorbell.
#[derive(Debug, Default)]
pub struct SendBatch {
    queue: Mutex<Vec<SendWr>>,
    ready: Notify,
}

impl SendBatch {
    /// An empty batch.
    pub fn new() -> SendBatch {
        SendBatch::default()
    }

    /// Queues `wrs`, after everything queued before them and without anything in
    /// between (a chain stays a chain).
    pub fn queue(&self, wrs: impl IntoIterator<Item = SendWr>) {
        let first = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let was_empty = q.is_empty();
            q.extend(wrs);
            was_empty && !q.is_empty()
        };
        if first {
            self.ready.notify_one();
        }
    }

    /// Everything queued so far, for a caller that rings the doorbell itself (it
    /// must keep the order between its batch and the ones [`SendBatch::run`] posts).
    pub fn take(&self) -> Vec<SendWr> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Waits until work requests are queued, then yields once, so that every task
    /// ready to run queues its own before the caller takes them.
    pub async fn next_turn(&self) {
        self.ready.notified().await;
        tokio::task::yield_now().await;
    }

    /// Hands what is queued to `post`, once per turn of the runtime: after a
    /// wake-up it yields first, so that every task ready to run queues its work
    /// requests before the doorbell. Returns when `post` returns false.
    pub async fn run(&self, mut post: impl FnMut(Vec<SendWr>) -> bool) {
        loop {
            self.next_turn().await;
            let wrs = self.take();
            if !wrs.is_empty() && !post(wrs) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wr::Sge;
    use std::sync::Arc;

    fn wr(id: u64) -> SendWr {
        SendWr::send(
            id,
            Sge {
                addr: 0,
                length: 0,
                lkey: 0,
            },
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn tasks_of_one_turn_share_a_doorbell_in_queue_order() {
        let batch = Arc::new(SendBatch::new());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let runner = {
            let batch = Arc::clone(&batch);
            tokio::spawn(async move {
                batch
                    .run(|wrs| {
                        let ids: Vec<u64> = wrs.iter().map(|w| w.wr_id).collect();
                        let _ = tx.send(ids.clone());
                        !ids.contains(&99)
                    })
                    .await
            })
        };
        // Ten tasks ready in the same turn: one doorbell for all of them.
        let tasks: Vec<_> = (0..10u64)
            .map(|i| {
                let batch = Arc::clone(&batch);
                tokio::spawn(async move { batch.queue([wr(2 * i), wr(2 * i + 1)]) })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let first = rx.recv().await.unwrap();
        assert_eq!(first, (0..20).collect::<Vec<u64>>());
        // A later turn gets its own doorbell; `post` returning false ends the loop.
        batch.queue([wr(99)]);
        assert_eq!(rx.recv().await.unwrap(), vec![99]);
        runner.await.unwrap();
    }
}
