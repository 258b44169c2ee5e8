//! Poll mode: a consumer waiting on its receive CQ runs the QP's receive path
//! itself, and the rx thread keeps every connection moving when no consumer reads
//! (it stopped waiting, or its thread is blocked elsewhere).

mod common;

use common::{pair, Side, T};
use verbs::{AccessFlags, RecvWr, SendWr, WorkCompletion};

const RW: AccessFlags = AccessFlags(
    AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0 | AccessFlags::REMOTE_READ.0,
);
const MSG: usize = 4096;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
        .collect()
}

/// `n` messages of [`MSG`] bytes on `a`, each its own pattern, and a receive for
/// each on `b`; returns both regions.
fn messages(a: &Side, b: &Side, n: usize) -> (verbs::Mr, verbs::Mr) {
    let src = a.pd.reg_mr(n * MSG, RW).unwrap();
    let dst = b.pd.reg_mr(n * MSG, RW).unwrap();
    for i in 0..n {
        src.write_at(i * MSG, &pattern(MSG, i as u8)).unwrap();
        b.qp.post_recv_one(RecvWr::new(i as u64, dst.sge(i * MSG, MSG as u32)))
            .unwrap();
    }
    (src, dst)
}

fn send(a: &Side, src: &verbs::Mr, i: usize) {
    a.qp.post_send_one(SendWr::send(i as u64, src.sge(i * MSG, MSG as u32)))
        .unwrap();
}

/// Waits (blocking) for `n` successful completions on `side`.
fn completed(side: &Side, n: usize) -> Vec<WorkCompletion> {
    (0..n)
        .map(|_| {
            let wc = side.wait();
            assert!(wc.is_ok(), "{wc:?}");
            wc
        })
        .collect()
}

/// Waits (async) for `n` completions on `cq`.
async fn received(cq: &verbs::Cq, n: usize) -> Vec<WorkCompletion> {
    let mut wcs = Vec::new();
    while wcs.len() < n {
        let mut batch = Vec::new();
        cq.next_batch(&mut batch, n).await.unwrap();
        wcs.extend(batch);
    }
    wcs
}

/// Message 0 from `a` to a consumer already waiting on `b`'s CQ, which is then
/// in poll mode.
async fn first_message_in_poll_mode(a: &Side, b: &Side, src: &verbs::Mr) {
    let cq = b.cq.clone();
    let waiter = tokio::spawn(async move { cq.next().await });
    tokio::task::yield_now().await;
    send(a, src, 0);
    let wc = tokio::time::timeout(T, waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(wc.is_ok());
    assert!(b.cq.consumer_driven());
}

fn assert_landed(dst: &verbs::Mr, n: usize) {
    for i in 0..n {
        assert_eq!(
            dst.to_vec(i * MSG, MSG).unwrap(),
            pattern(MSG, i as u8),
            "message {i}"
        );
    }
}

#[test]
fn waiting_consumer_runs_the_receive_path() {
    let (a, b) = pair();
    let n = 16;
    let (src, dst) = messages(&a, &b, n);
    runtime().block_on(async {
        // The consumer waits on an empty CQ first (the wait resolves poll mode).
        let cq = b.cq.clone();
        let waiter = tokio::spawn(async move { received(&cq, n).await });
        tokio::task::yield_now().await;
        for i in 0..n {
            send(&a, &src, i);
        }
        let wcs = tokio::time::timeout(T, waiter)
            .await
            .expect("receives within the timeout")
            .unwrap();
        assert!(b.cq.consumer_driven());
        let mut ids: Vec<u64> = wcs.iter().map(|w| w.wr_id).collect();
        ids.sort_unstable();
        assert_eq!(ids, (0..n as u64).collect::<Vec<_>>());
        assert!(wcs.iter().all(|w| w.is_ok() && w.byte_len == MSG as u32));
    });
    completed(&a, n);
    assert_landed(&dst, n);
}

#[test]
fn rx_thread_takes_the_receive_path_back_when_no_consumer_waits() {
    let (a, b) = pair();
    let n = 8;
    let (src, dst) = messages(&a, &b, n);
    runtime().block_on(first_message_in_poll_mode(&a, &b, &src));
    // Nobody waits on b's CQ any more: its sends are still acknowledged and land.
    completed(&a, 1);
    for i in 1..n {
        send(&a, &src, i);
    }
    completed(&a, n - 1);
    let mut got = Vec::new();
    while got.len() < n - 1 {
        b.cq.wait_blocking(&mut got, n, T).unwrap();
    }
    assert_landed(&dst, n);
}

#[test]
fn rx_thread_reads_what_a_blocked_consumer_leaves() {
    let (a, b) = pair();
    let n = 6;
    let (src, dst) = messages(&a, &b, n);
    let rt = runtime();
    rt.block_on(async {
        first_message_in_poll_mode(&a, &b, &src).await;
        let cq = b.cq.clone();
        let waiter = tokio::spawn(async move { received(&cq, n - 1).await });
        // The waiter starts waiting on b's socket...
        tokio::task::yield_now().await;
        // ...and this runtime's only thread then blocks, so it cannot read. The
        // sends still complete: b's rx thread reads what the waiter leaves.
        completed(&a, 1);
        for i in 1..n {
            send(&a, &src, i);
        }
        completed(&a, n - 1);
        let wcs = tokio::time::timeout(T, waiter).await.unwrap().unwrap();
        assert!(wcs.iter().all(|w| w.is_ok()));
    });
    assert_landed(&dst, n);
}
