//! An idle connection costs no wake-ups: while a consumer waits on its receive CQ in
//! poll mode and nothing arrives, the standing-by rx thread sleeps on the socket
//! instead of looking every few milliseconds, and still takes in the next message.
//!
//! Its own test binary, so that the only rx threads in the process are this pair's
//! (the count is read from `/proc/self/task`).

mod common;

use std::time::Duration;

use common::{pair, T};
use verbs::{AccessFlags, RecvWr, SendWr};

/// Voluntary context switches of every soft-HCA rx thread in this process.
fn rx_thread_sleeps() -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let dir = task.expect("task entry").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("mlx5-rx-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

#[test]
fn an_idle_connection_does_not_wake_its_rx_threads() {
    let (a, b) = pair();
    let rw = AccessFlags(AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0);
    let src = a.pd.reg_mr(2 * 64, rw).unwrap();
    let dst = b.pd.reg_mr(2 * 64, rw).unwrap();
    src.write_at(0, &[7u8; 128]).unwrap();
    for i in 0..2u64 {
        b.qp.post_recv_one(RecvWr::new(i, dst.sge(i as usize * 64, 64)))
            .unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A consumer waits on b's CQ, which is then in poll mode.
        let cq = b.cq.clone();
        let first = tokio::spawn(async move { cq.next().await });
        tokio::task::yield_now().await;
        a.qp.post_send_one(SendWr::send(0, src.sge(0, 64))).unwrap();
        let wc = tokio::time::timeout(T, first)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(wc.is_ok(), "{wc:?}");
        assert!(b.cq.consumer_driven());

        // It waits again; nothing arrives for a while.
        let cq = b.cq.clone();
        let second = tokio::spawn(async move { cq.next().await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = rx_thread_sleeps();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let woken = rx_thread_sleeps() - before;
        // Looking every 5 ms would be about 120 wake-ups; the bound on the
        // sleep (1 s) allows one.
        assert!(
            woken <= 4,
            "the rx threads woke {woken} times in 600 ms on an idle connection"
        );

        // The next message still arrives.
        a.qp.post_send_one(SendWr::send(1, src.sge(64, 64)))
            .unwrap();
        let wc = tokio::time::timeout(T, second)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(wc.is_ok() && wc.wr_id == 1, "{wc:?}");
    });
    for _ in 0..2 {
        assert!(a.wait().is_ok());
    }
    assert_eq!(dst.to_vec(0, 128).unwrap(), vec![7u8; 128]);
}
