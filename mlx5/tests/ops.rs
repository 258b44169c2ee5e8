//! Every work request type, access violations, RNR, QP error and flush, and the CM.

mod common;

use std::time::Duration;

use common::{pair, pair_with, unix_addr, Side, T};
use verbs::cm::{self, CmError, CmListener, ConnParam, DisconnectReason};
use verbs::{AccessFlags, QpInitAttr, QpState, RecvWr, SendWr, Sge, WcOpcode, WcStatus};

const RW: AccessFlags = AccessFlags(
    AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0 | AccessFlags::REMOTE_READ.0,
);

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn send_write_read_move_bytes() {
    let (a, b) = pair();
    let src = a.pd.reg_mr(8192, RW).unwrap();
    src.write_at(0, &pattern(8192, 1)).unwrap();
    let dst = b.pd.reg_mr(8192, RW).unwrap();

    // SEND into a posted receive.
    b.qp.post_recv_one(RecvWr::new(77, dst.sge(0, 8192)))
        .unwrap();
    a.qp.post_send_one(SendWr::send(1, src.sge(0, 3000)))
        .unwrap();
    let wc = a.wait();
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode),
        (1, WcStatus::Success, WcOpcode::Send)
    );
    let wc = b.wait();
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (77, WcStatus::Success, WcOpcode::Recv, 3000)
    );
    assert_eq!(dst.to_vec(0, 3000).unwrap(), pattern(8192, 1)[..3000]);

    // RDMA WRITE to an offset, completed only after placement.
    a.qp.post_send_one(SendWr::rdma_write(
        2,
        src.sge(100, 4000),
        dst.addr() + 4096,
        dst.rkey(),
    ))
    .unwrap();
    let wc = a.wait();
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode, wc.byte_len),
        (2, WcStatus::Success, WcOpcode::RdmaWrite, 4000)
    );
    assert_eq!(dst.to_vec(4096, 4000).unwrap(), pattern(8192, 1)[100..4100]);

    // RDMA READ back into another local MR.
    let back = a.pd.reg_mr(4000, RW).unwrap();
    a.qp.post_send_one(SendWr::rdma_read(
        3,
        back.sge_all(),
        dst.addr() + 4096,
        dst.rkey(),
    ))
    .unwrap();
    let wc = a.wait();
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode),
        (3, WcStatus::Success, WcOpcode::RdmaRead)
    );
    assert_eq!(back.to_vec(0, 4000).unwrap(), pattern(8192, 1)[100..4100]);

    // Unsignaled WRs complete silently; a later signaled one reports.
    let mut w = SendWr::rdma_write(4, src.sge(0, 10), dst.addr(), dst.rkey());
    w.flags = verbs::SendFlags::NONE;
    a.qp.post_send(&[
        w,
        SendWr::rdma_write(5, src.sge(0, 10), dst.addr(), dst.rkey()),
    ])
    .unwrap();
    assert_eq!(a.wait().wr_id, 5);
}

#[test]
fn send_with_invalidate_and_local_invalidate() {
    let (a, b) = pair();
    let src = a.pd.reg_mr(64, RW).unwrap();
    let dst = b.pd.reg_mr(64, RW).unwrap();
    // B's fast-registration MR over its buffer, bound by REG_MR.
    let fr = b.pd.alloc_mr(1).unwrap();
    b.qp.post_send_one(SendWr {
        wr_id: 9,
        op: verbs::SendOp::RegMr {
            mr: fr.lkey(),
            range: dst.sge(0, 64),
            access: RW,
        },
        sg_list: vec![],
        flags: verbs::SendFlags::SIGNALED,
    })
    .unwrap();
    assert_eq!(b.wait().opcode, WcOpcode::RegMr);
    // A writes through the fast-reg rkey, then SEND_WITH_INV invalidates it at B.
    a.qp.post_send_one(SendWr::rdma_write(1, src.sge(0, 8), dst.addr(), fr.rkey()))
        .unwrap();
    assert_eq!(a.wait().status, WcStatus::Success);
    let rbuf = b.pd.reg_mr(64, RW).unwrap();
    b.qp.post_recv_one(RecvWr::new(5, rbuf.sge_all())).unwrap();
    a.qp.post_send_one(SendWr::send_with_inv(2, src.sge(0, 4), fr.rkey()))
        .unwrap();
    assert_eq!(a.wait().status, WcStatus::Success);
    let wc = b.wait();
    assert_eq!((wc.wr_id, wc.invalidated_rkey), (5, Some(fr.rkey())));
    // The invalidated rkey is now refused.
    a.qp.post_send_one(SendWr::rdma_write(3, src.sge(0, 8), dst.addr(), fr.rkey()))
        .unwrap();
    assert_eq!(a.wait().status, WcStatus::RemoteAccessErr);
}

#[test]
fn local_invalidate_then_local_use_is_a_protection_error() {
    let (a, b) = pair();
    let buf = a.pd.reg_mr(64, RW).unwrap();
    let fr = a.pd.alloc_mr(1).unwrap();
    let reg = SendWr {
        wr_id: 1,
        op: verbs::SendOp::RegMr {
            mr: fr.lkey(),
            range: buf.sge(0, 64),
            access: RW,
        },
        sg_list: vec![],
        flags: verbs::SendFlags::SIGNALED,
    };
    a.qp.post_send(&[reg, SendWr::local_inv(2, fr.lkey())])
        .unwrap();
    assert_eq!(a.wait().wr_id, 1);
    let wc = a.wait();
    assert_eq!(
        (wc.wr_id, wc.opcode, wc.status),
        (2, WcOpcode::LocalInv, WcStatus::Success)
    );
    let dst = b.pd.reg_mr(64, RW).unwrap();
    let sge = Sge {
        addr: buf.addr(),
        length: 8,
        lkey: fr.lkey(),
    };
    a.qp.post_send_one(SendWr::rdma_write(3, sge, dst.addr(), dst.rkey()))
        .unwrap();
    assert_eq!(a.wait().status, WcStatus::LocalProtErr);
    assert_eq!(a.qp.state().unwrap(), QpState::Error);
}

#[test]
fn remote_violations_fail_and_flush() {
    for case in 0..4 {
        let (a, b) = pair();
        let src = a.pd.reg_mr(4096, RW).unwrap();
        let ro = b.pd.reg_mr(4096, AccessFlags::REMOTE_READ).unwrap();
        let wr = match case {
            0 => SendWr::rdma_write(1, src.sge(0, 8), ro.addr(), ro.rkey() ^ 0x100), // bad rkey
            1 => SendWr::rdma_write(1, src.sge(0, 8), ro.addr() + 4090, ro.rkey()),  // bounds
            2 => SendWr::rdma_write(1, src.sge(0, 8), ro.addr(), ro.rkey()),         // rights
            _ => SendWr::rdma_read(1, src.sge(0, 8), ro.addr() + 4095, ro.rkey()),   // read bounds
        };
        b.qp.post_recv_one(RecvWr::new(50, ro.sge(0, 8))).unwrap();
        a.qp.post_send(&[
            wr,
            SendWr::send(2, src.sge(0, 8)),
            SendWr::send(3, src.sge(0, 8)),
        ])
        .unwrap();
        let wc = a.wait();
        assert_eq!(
            (wc.wr_id, wc.status),
            (1, WcStatus::RemoteAccessErr),
            "case {case}"
        );
        assert_eq!(a.wait().status, WcStatus::WrFlushErr);
        assert_eq!(a.wait().status, WcStatus::WrFlushErr);
        assert_eq!(a.qp.state().unwrap(), QpState::Error);
        // Posting after the error flushes immediately.
        a.qp.post_send_one(SendWr::send(4, src.sge(0, 8))).unwrap();
        let wc = a.wait();
        assert_eq!((wc.wr_id, wc.status), (4, WcStatus::WrFlushErr));
        // The peer sees the disconnect; its posted receive is flushed.
        let r = b.conn.as_ref().unwrap().wait_disconnected_blocking(T);
        assert_eq!(r, Some(DisconnectReason::Remote));
        let wc = b.wait();
        assert_eq!((wc.wr_id, wc.status), (50, WcStatus::WrFlushErr));
    }
}

#[test]
fn local_key_violation_and_length_error() {
    let (a, b) = pair();
    let src = a.pd.reg_mr(64, RW).unwrap();
    let dst = b.pd.reg_mr(64, RW).unwrap();
    let bad = Sge {
        addr: src.addr(),
        length: 8,
        lkey: src.lkey() ^ 0x100,
    };
    a.qp.post_send_one(SendWr::rdma_write(1, bad, dst.addr(), dst.rkey()))
        .unwrap();
    assert_eq!(a.wait().status, WcStatus::LocalProtErr);

    let (a, b2) = pair();
    let src = a.pd.reg_mr(64, RW).unwrap();
    let small = b2.pd.reg_mr(16, RW).unwrap();
    b2.qp
        .post_recv_one(RecvWr::new(7, small.sge_all()))
        .unwrap();
    a.qp.post_send_one(SendWr::send(1, src.sge(0, 64))).unwrap();
    assert_eq!(a.wait().status, WcStatus::RemoteInvalidReqErr);
    let wc = b2.wait();
    assert_eq!((wc.wr_id, wc.status), (7, WcStatus::LocalLengthErr));
    drop(b);
}

/// A responder whose RNR NAKs ask for a 5 ms wait.
fn rnr_5ms() -> QpInitAttr {
    QpInitAttr {
        min_rnr_timer: Duration::from_millis(5),
        ..QpInitAttr::default()
    }
}

/// After several RNR retries, nothing has completed on `a`.
fn assert_send_waits_for_a_receive(a: &Side) {
    std::thread::sleep(Duration::from_millis(30));
    assert!(
        a.cq.next_blocking(Duration::from_millis(1))
            .unwrap()
            .is_none(),
        "SEND must wait for a receive"
    );
}

#[test]
fn rnr_retry_then_success_and_exhaustion() {
    let (a, b) = pair_with(&QpInitAttr::default(), &rnr_5ms());
    let src = a.pd.reg_mr(64, RW).unwrap();
    src.write_at(0, b"hello").unwrap();
    let dst = b.pd.reg_mr(64, RW).unwrap();
    a.qp.post_send(&[
        SendWr::send(1, src.sge(0, 5)),
        SendWr::rdma_write(2, src.sge(0, 5), dst.addr() + 32, dst.rkey()),
    ])
    .unwrap();
    assert_send_waits_for_a_receive(&a);
    b.qp.post_recv_one(RecvWr::new(9, dst.sge(0, 16))).unwrap();
    assert_eq!(a.wait().wr_id, 1);
    assert_eq!(a.wait().wr_id, 2);
    assert_eq!(b.wait().byte_len, 5);
    assert_eq!(dst.to_vec(0, 5).unwrap(), b"hello");
    assert_eq!(dst.to_vec(32, 5).unwrap(), b"hello");

    let attr_a = QpInitAttr {
        rnr_retry: 2,
        ..QpInitAttr::default()
    };
    let (a, _b) = pair_with(&attr_a, &rnr_5ms());
    let src = a.pd.reg_mr(64, RW).unwrap();
    a.qp.post_send(&[
        SendWr::send(1, src.sge(0, 5)),
        SendWr::send(2, src.sge(0, 5)),
    ])
    .unwrap();
    let wc = a.wait();
    assert_eq!((wc.wr_id, wc.status), (1, WcStatus::RnrRetryExceeded));
    assert_eq!(a.wait().status, WcStatus::WrFlushErr);
}

#[test]
fn cm_reject_refused_and_disconnect() {
    let (_d, addr) = unix_addr();
    let b = Side::new("b", &QpInitAttr::default());
    let mut l = CmListener::bind(&b.ctx, &addr).unwrap();
    let a = Side::new("a", &QpInitAttr::default());
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            cm::connect_blocking(
                &a.ctx,
                &a.qp,
                &addr,
                &ConnParam::with_private_data(&[0x80, 1, 2, 3]),
            )
        });
        let req = l.next_request_blocking(T).unwrap();
        assert_eq!(req.private_data(), &[0x80, 1, 2, 3]);
        req.reject(&[0xde, 0xad]).unwrap();
        match h.join().unwrap() {
            Err(CmError::Rejected { private_data }) => assert_eq!(private_data, vec![0xde, 0xad]),
            other => panic!("expected reject, got {other:?}"),
        }
    });
    let (_d2, nobody) = unix_addr();
    assert!(matches!(
        cm::connect_blocking(&a.ctx, &a.qp, &nobody, &ConnParam::default()),
        Err(CmError::ConnectionRefused { .. })
    ));
    let closed: verbs::CmAddr = "127.0.0.1:1".parse().unwrap();
    assert!(matches!(
        cm::connect_blocking(&a.ctx, &a.qp, &closed, &ConnParam::default()),
        Err(CmError::ConnectionRefused { .. })
    ));
    let unresolvable = verbs::CmAddr::Tcp("no-such-host.invalid:1".into());
    assert!(matches!(
        cm::connect_blocking(&a.ctx, &a.qp, &unresolvable, &ConnParam::default()),
        Err(CmError::AddressResolution { .. })
    ));
    assert!(matches!(
        cm::connect_blocking(
            &a.ctx,
            &a.qp,
            &addr,
            &ConnParam::with_private_data(&[0; 57])
        ),
        Err(CmError::PrivateDataTooLong(57))
    ));

    // Disconnect: both sides get the event; the QPs go to error.
    let (a, b) = pair();
    a.conn.as_ref().unwrap().disconnect();
    assert_eq!(
        b.conn.as_ref().unwrap().wait_disconnected_blocking(T),
        Some(DisconnectReason::Remote)
    );
    assert_eq!(a.qp.state().unwrap(), QpState::Error);
    assert_eq!(b.qp.state().unwrap(), QpState::Error);
}

#[test]
fn tcp_fabric_and_async_cq() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let b = Side::new("b", &QpInitAttr::default());
        let mut l = CmListener::bind(&b.ctx, &"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr();
        let a = Side::new("a", &QpInitAttr::default());
        let buf = b.pd.reg_mr(1 << 20, RW).unwrap();
        b.qp.post_recv_one(RecvWr::new(1, buf.sge_all())).unwrap();
        let param = ConnParam::with_private_data(b"hi");
        let connect = cm::connect(&a.ctx, &a.qp, &addr, &param);
        let answer = async {
            let req = l.next_request().await.unwrap();
            assert_eq!(req.private_data(), b"hi");
            req.accept(&b.qp, b"ok").unwrap()
        };
        let (conn, _bc) = tokio::join!(connect, answer);
        let conn = conn.unwrap();
        assert_eq!(conn.peer_private_data(), b"ok");
        let src = a.pd.reg_mr(1 << 20, RW).unwrap();
        src.write_at(0, &pattern(1 << 20, 3)).unwrap();
        a.qp.post_send_one(SendWr::send(1, src.sge_all())).unwrap();
        let wc = tokio::time::timeout(T, b.cq.next()).await.unwrap().unwrap();
        assert_eq!(wc.byte_len, 1 << 20);
        assert_eq!(buf.to_vec(0, 1 << 20).unwrap(), pattern(1 << 20, 3));
        let wc = tokio::time::timeout(T, a.cq.next()).await.unwrap().unwrap();
        assert!(wc.is_ok());
    });
}

#[test]
fn fenced_write_waits_for_earlier_read() {
    let (a, b) = pair();
    let remote = b.pd.reg_mr(8192, RW).unwrap();
    remote.write_at(0, &pattern(4096, 9)).unwrap();
    let local = a.pd.reg_mr(4096, RW).unwrap();
    // READ remote[0..4096] into local, then (fenced) WRITE local to remote[4096..].
    let mut w = SendWr::rdma_write(2, local.sge_all(), remote.addr() + 4096, remote.rkey());
    w.flags = verbs::SendFlags::SIGNALED | verbs::SendFlags::FENCE;
    a.qp.post_send(&[
        SendWr::rdma_read(1, local.sge_all(), remote.addr(), remote.rkey()),
        w,
    ])
    .unwrap();
    assert_eq!(a.wait().wr_id, 1);
    assert_eq!(a.wait().wr_id, 2);
    assert_eq!(remote.to_vec(4096, 4096).unwrap(), pattern(4096, 9));
}

#[test]
fn bad_fast_registration_completes_with_bind_error() {
    let (a, _b) = pair();
    let fr = a.pd.alloc_mr(1).unwrap();
    let other_pd = a.ctx.alloc_pd().unwrap();
    let foreign = other_pd.reg_mr(64, RW).unwrap();
    a.qp.post_send_one(SendWr {
        wr_id: 3,
        op: verbs::SendOp::RegMr {
            mr: fr.lkey(),
            range: foreign.sge_all(),
            access: RW,
        },
        sg_list: vec![],
        flags: verbs::SendFlags::SIGNALED,
    })
    .unwrap();
    let wc = a.wait();
    assert_eq!((wc.wr_id, wc.status), (3, WcStatus::MwBindErr));
}

#[test]
fn registry_opens_the_soft_device_by_name() {
    mlx5::register();
    assert!(verbs::provider::device_list()
        .iter()
        .any(|d| d.name == mlx5::SOFT_DEVICE && d.provider == "mlx5_soft"));
    let ctx = verbs::Context::open(mlx5::SOFT_DEVICE).unwrap();
    assert_eq!(ctx.name(), mlx5::SOFT_DEVICE);
    assert!(ctx.query_device().unwrap().sig_offload);
    assert!(matches!(
        verbs::Context::open("mlx5_9"),
        Err(verbs::VerbsError::NoSuchDevice(_))
    ));
    // Posting on an unconnected QP is refused.
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(8).unwrap();
    let qp = pd.create_qp(&cq, &cq, &QpInitAttr::default()).unwrap();
    let mr = pd.reg_mr(8, RW).unwrap();
    assert!(matches!(
        qp.post_send_one(SendWr::send(1, mr.sge_all())),
        Err(verbs::VerbsError::InvalidQpState { .. })
    ));
}

/// Bulk messages (at least `mlx5::bulk::BULK_MIN` bytes of plain memory) are sent
/// straight from their SGEs and placed straight into the target memory: a SEND
/// gathered from three SGEs of two MRs, an RDMA WRITE at an offset, an RDMA READ
/// scattered over two SGEs, every byte where it belongs and nothing beyond.
#[test]
fn bulk_messages_gather_and_place_every_byte() {
    let (a, b) = pair();
    const N: usize = 192 << 10;
    const { assert!(N / 3 >= mlx5::bulk::BULK_MIN) };
    let src1 = a.pd.reg_mr(N, RW).unwrap();
    let src2 = a.pd.reg_mr(N, RW).unwrap();
    src1.write_at(0, &pattern(N, 3)).unwrap();
    src2.write_at(0, &pattern(N, 7)).unwrap();
    let dst = b.pd.reg_mr(2 * N, RW).unwrap();
    let want: Vec<u8> = [
        &pattern(N, 3)[..N / 2],
        &pattern(N, 7)[..],
        &pattern(N, 3)[N / 2..],
    ]
    .concat();

    let mut send = SendWr::send(1, src1.sge(0, (N / 2) as u32));
    send.sg_list.push(src2.sge(0, N as u32));
    send.sg_list.push(src1.sge(N / 2, (N / 2) as u32));
    b.qp.post_recv_one(RecvWr::new(2, dst.sge(0, (2 * N) as u32)))
        .unwrap();
    a.qp.post_send_one(send).unwrap();
    assert_eq!(a.wait().status, WcStatus::Success);
    let wc = b.wait();
    assert_eq!((wc.status, wc.byte_len), (WcStatus::Success, 2 * N as u32));
    assert_eq!(dst.to_vec(0, 2 * N).unwrap(), want);

    let dst = b.pd.reg_mr(2 * N, RW).unwrap();
    a.qp.post_send_one(SendWr::rdma_write(
        3,
        src2.sge(0, N as u32),
        dst.addr() + 4097,
        dst.rkey(),
    ))
    .unwrap();
    assert_eq!(a.wait().status, WcStatus::Success);
    assert_eq!(dst.to_vec(0, 4097).unwrap(), vec![0u8; 4097]);
    assert_eq!(dst.to_vec(4097, N).unwrap(), pattern(N, 7));
    assert!(dst
        .to_vec(4097 + N, N - 4097)
        .unwrap()
        .iter()
        .all(|&x| x == 0));

    let back1 = a.pd.reg_mr(N, RW).unwrap();
    let back2 = a.pd.reg_mr(N, RW).unwrap();
    let mut read = SendWr::rdma_read(
        4,
        back1.sge(100, (N / 2) as u32),
        dst.addr() + 4097,
        dst.rkey(),
    );
    read.sg_list.push(back2.sge(0, (N / 2) as u32));
    a.qp.post_send_one(read).unwrap();
    assert_eq!(a.wait().status, WcStatus::Success);
    assert_eq!(back1.to_vec(100, N / 2).unwrap(), pattern(N, 7)[..N / 2]);
    assert_eq!(back2.to_vec(0, N / 2).unwrap(), pattern(N, 7)[N / 2..]);
    assert_eq!(back1.to_vec(0, 100).unwrap(), vec![0u8; 100]);
}

/// A bulk SEND refused for want of a receive (RNR NAK) and the bulk WRITE behind
/// it are gathered from memory again (go-back-N) until a receive is posted.
#[test]
fn rnr_retransmission_of_bulk_messages_gathers_them_again() {
    let (a, b) = pair_with(&QpInitAttr::default(), &rnr_5ms());
    const N: usize = 64 << 10;
    let src = a.pd.reg_mr(N, RW).unwrap();
    src.write_at(0, &pattern(N, 1)).unwrap();
    let dst = b.pd.reg_mr(2 * N, RW).unwrap();
    a.qp.post_send(&[
        SendWr::send(1, src.sge(0, N as u32)),
        SendWr::rdma_write(2, src.sge(0, N as u32), dst.addr() + N as u64, dst.rkey()),
    ])
    .unwrap();
    assert_send_waits_for_a_receive(&a);
    b.qp.post_recv_one(RecvWr::new(9, dst.sge(0, N as u32)))
        .unwrap();
    assert_eq!(a.wait().wr_id, 1);
    assert_eq!(a.wait().wr_id, 2);
    assert_eq!(b.wait().byte_len, N as u32);
    assert_eq!(dst.to_vec(0, N).unwrap(), pattern(N, 1));
    assert_eq!(dst.to_vec(N, N).unwrap(), pattern(N, 1));
}

#[test]
fn bidirectional_bulk_traffic_does_not_deadlock() {
    let (a, b) = pair();
    const N: usize = 256 << 10;
    let (am, bm) = (
        a.pd.reg_mr(2 * N, RW).unwrap(),
        b.pd.reg_mr(2 * N, RW).unwrap(),
    );
    am.write_at(0, &pattern(N, 1)).unwrap();
    bm.write_at(0, &pattern(N, 2)).unwrap();
    for round in 0..4u64 {
        let wrs = |mine: &verbs::Mr, theirs: &verbs::Mr| -> Vec<SendWr> {
            (0..16u64)
                .map(|i| {
                    if i % 2 == 0 {
                        SendWr::rdma_read(
                            round * 100 + i,
                            mine.sge(N, N as u32),
                            theirs.addr(),
                            theirs.rkey(),
                        )
                    } else {
                        SendWr::rdma_write(
                            round * 100 + i,
                            mine.sge(0, N as u32),
                            theirs.addr() + N as u64,
                            theirs.rkey(),
                        )
                    }
                })
                .collect()
        };
        a.qp.post_send(&wrs(&am, &bm)).unwrap();
        b.qp.post_send(&wrs(&bm, &am)).unwrap();
        for side in [&a, &b] {
            for i in 0..16u64 {
                let wc = side.wait();
                assert_eq!((wc.wr_id, wc.status), (round * 100 + i, WcStatus::Success));
            }
        }
    }
    assert_eq!(am.to_vec(N, N).unwrap(), pattern(N, 2));
    assert_eq!(bm.to_vec(N, N).unwrap(), pattern(N, 1));
}

#[test]
fn send_with_invalidate_of_a_plain_key_is_refused() {
    let (a, b) = pair();
    let src = a.pd.reg_mr(64, RW).unwrap();
    let dst = b.pd.reg_mr(64, RW).unwrap();
    b.qp.post_recv_one(RecvWr::new(5, dst.sge_all())).unwrap();
    a.qp.post_send_one(SendWr::send_with_inv(1, src.sge(0, 4), dst.rkey()))
        .unwrap();
    assert_eq!(a.wait().status, WcStatus::RemoteInvalidReqErr);
    let wc = b.wait();
    assert_eq!((wc.wr_id, wc.status), (5, WcStatus::LocalProtErr));
}

#[test]
fn cq_overrun_is_reported() {
    let a = Side::new("a", &QpInitAttr::default());
    let small = a.ctx.create_cq(2).unwrap();
    let qp =
        a.pd.create_qp(&small, &small, &QpInitAttr::default())
            .unwrap();
    let mr = a.pd.reg_mr(8, RW).unwrap();
    for i in 0..3 {
        qp.post_recv_one(RecvWr::new(i, mr.sge_all())).unwrap();
    }
    // Flushing three receives into a 2-entry CQ overruns it.
    qp.to_error().unwrap();
    let mut v = Vec::new();
    assert!(matches!(
        small.poll(&mut v, 8),
        Err(verbs::VerbsError::CqOverrun(_))
    ));
}

#[test]
fn cq_size_beyond_max_cqe_is_refused() {
    let dev = mlx5::Mlx5Device::new("cq-size");
    let ctx = dev.context();
    let max = ctx.query_device().unwrap().max_cqe;
    assert!(ctx.create_cq(1).is_ok());
    for entries in [max + 1, u32::MAX] {
        assert!(
            matches!(
                ctx.create_cq(entries),
                Err(verbs::VerbsError::InvalidArgument(_))
            ),
            "{entries} entries"
        );
    }
}

/// A poster never waits on the socket: a message larger than any socket buffer
/// fills it, the rest is kept and sent by the requester thread, and the messages
/// posted behind it (in the same call and in later ones) still arrive whole and
/// in order.
#[test]
fn a_message_larger_than_the_socket_buffer_and_those_behind_it_arrive_in_order() {
    let (a, b) = pair();
    const BIG: usize = 24 << 20;
    const SMALL: usize = 100;
    let src = a.pd.reg_mr(BIG, RW).unwrap();
    src.write_at(0, &pattern(BIG, 5)).unwrap();
    let dst = b.pd.reg_mr(BIG + 8 * SMALL, RW).unwrap();
    b.qp.post_recv_one(RecvWr::new(0, dst.sge(0, BIG as u32)))
        .unwrap();
    for i in 1..=8u64 {
        let at = BIG + (i as usize - 1) * SMALL;
        b.qp.post_recv_one(RecvWr::new(i, dst.sge(at, SMALL as u32)))
            .unwrap();
    }
    let mut first = vec![SendWr::send(0, src.sge(0, BIG as u32))];
    first.extend((1..=4u64).map(|i| SendWr::send(i, src.sge(i as usize * 1000, SMALL as u32))));
    a.qp.post_send(&first).unwrap();
    for i in 5..=8u64 {
        a.qp.post_send_one(SendWr::send(i, src.sge(i as usize * 1000, SMALL as u32)))
            .unwrap();
    }
    for i in 0..=8u64 {
        let wc = b.wait();
        assert_eq!((wc.wr_id, wc.status), (i, WcStatus::Success), "receive {i}");
    }
    for i in 0..=8u64 {
        let wc = a.wait();
        assert_eq!((wc.wr_id, wc.status), (i, WcStatus::Success), "send {i}");
    }
    assert!(dst.to_vec(0, BIG).unwrap() == pattern(BIG, 5));
    for i in 1..=8usize {
        let at = i * 1000;
        assert_eq!(
            dst.to_vec(BIG + (i - 1) * SMALL, SMALL).unwrap(),
            pattern(BIG, 5)[at..at + SMALL]
        );
    }
}
