//! Two soft HCAs in two processes over TCP: the test binary re-runs itself as the
//! passive side (selected by an environment variable), bounded by timeouts. One
//! child is armed through `MLX5_SOFT_FAULT`, as a daemon would be.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mlx5::Mlx5Device;
use t10pi::{GuardType, T10DifDomain};
use verbs::cm::{self, CmAddr, CmConnection, CmListener, ConnParam};
use verbs::sig::{check_mask, SigAttrs, SigDomain, SigErrType};
use verbs::{AccessFlags, Context, Qp, QpInitAttr, RecvWr, SendWr, WcOpcode, WcStatus};

const ROLE: &str = "MLX5_TEST_CHILD_ROLE";
const PORT: &str = "MLX5_TEST_CHILD_PORT";
const T: Duration = Duration::from_secs(10);
const RW: AccessFlags = AccessFlags(
    AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0 | AccessFlags::REMOTE_READ.0,
);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_child(test: &str, role: &str, port: u16, fault: Option<&str>) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([test, "--exact", "--nocapture"])
        .env(ROLE, role)
        .env(PORT, port.to_string())
        .stdout(Stdio::null());
    match fault {
        Some(f) => cmd.env("MLX5_SOFT_FAULT", f),
        None => cmd.env_remove("MLX5_SOFT_FAULT"),
    };
    cmd.spawn().unwrap()
}

fn connect_retry(ctx: &Context, qp: &Qp, port: u16, child: &mut Child) -> CmConnection {
    let addr = CmAddr::Tcp(format!("127.0.0.1:{port}"));
    let deadline = Instant::now() + T;
    loop {
        match cm::connect_blocking(
            ctx,
            qp,
            &addr,
            &ConnParam::with_private_data(&[0x80, 0, 0, 0]),
        ) {
            Ok(c) => return c,
            Err(cm::CmError::ConnectionRefused { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("connect: {e}");
            }
        }
    }
}

fn wait_child(mut child: Child) {
    let deadline = Instant::now() + T;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "child failed: {st}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Ends {
    ctx: Context,
    pd: verbs::Pd,
    cq: verbs::Cq,
    qp: Qp,
}

fn ends(name: &str) -> (std::sync::Arc<Mlx5Device>, Ends) {
    let dev = Mlx5Device::new(name);
    let ctx = dev.context();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(64).unwrap();
    let qp = pd.create_qp(&cq, &cq, &QpInitAttr::default()).unwrap();
    (dev, Ends { ctx, pd, cq, qp })
}

fn accept_one(e: &Ends, port: u16) -> CmConnection {
    let mut l = CmListener::bind(&e.ctx, &CmAddr::Tcp(format!("127.0.0.1:{port}"))).unwrap();
    let req = l.next_request_blocking(T).expect("connect request");
    assert_eq!(req.private_data(), &[0x80, 0, 0, 0]);
    req.accept(&e.qp, &[0x80, 0, 0, 0]).unwrap()
}

/// Passive side: receive one SEND, echo it back, wait for the disconnect.
fn echo_child(port: u16) {
    let (_dev, e) = ends("mlx5_child");
    let buf = e.pd.reg_mr(4096, RW).unwrap();
    e.qp.post_recv_one(RecvWr::new(1, buf.sge_all())).unwrap();
    let conn = accept_one(&e, port);
    let wc = e.cq.next_blocking(T).unwrap().expect("receive");
    assert_eq!(wc.status, WcStatus::Success);
    e.qp.post_send_one(SendWr::send(2, buf.sge(0, wc.byte_len)))
        .unwrap();
    assert_eq!(
        e.cq.next_blocking(T)
            .unwrap()
            .expect("send completion")
            .status,
        WcStatus::Success
    );
    conn.wait_disconnected_blocking(T);
}

#[test]
fn two_processes_over_tcp() {
    if std::env::var(ROLE).as_deref() == Ok("echo") {
        echo_child(std::env::var(PORT).unwrap().parse().unwrap());
        return;
    }
    let port = free_port();
    let mut child = spawn_child("two_processes_over_tcp", "echo", port, None);
    let (_dev, e) = ends("mlx5_parent");
    let conn = connect_retry(&e.ctx, &e.qp, port, &mut child);
    assert_eq!(conn.peer_private_data(), &[0x80, 0, 0, 0]);
    let src = e.pd.reg_mr(4096, RW).unwrap();
    src.write_at(0, b"across processes").unwrap();
    let back = e.pd.reg_mr(4096, RW).unwrap();
    e.qp.post_recv_one(RecvWr::new(9, back.sge_all())).unwrap();
    e.qp.post_send_one(SendWr::send(1, src.sge(0, 16))).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match e.cq.next_blocking(T).unwrap() {
            Some(wc) => got.push(wc),
            None => {
                let _ = child.kill();
                panic!("timed out; completions so far {got:?}");
            }
        }
    }
    assert!(got.iter().all(|w| w.status == WcStatus::Success), "{got:?}");
    assert_eq!(back.to_vec(0, 16).unwrap(), b"across processes");
    conn.disconnect();
    wait_child(child);
}

/// Passive side armed by `MLX5_SOFT_FAULT` (ref tag bit 0 of block 1, inbound):
/// exposes a signature MR (STRIP on arrival), tells the peer where it is, waits
/// for the peer's "done" SEND and checks the SigErr the armed fault produced.
fn sigfault_child(port: u16) {
    let (dev, e) = ends("mlx5_child");
    assert_eq!(dev.armed_faults().len(), 1, "MLX5_SOFT_FAULT armed");
    let data = e.pd.reg_mr(4 * 512, RW).unwrap();
    let note = e.pd.reg_mr(64, RW).unwrap();
    e.qp.post_recv_one(RecvWr::new(1, note.sge_all())).unwrap();
    let conn = accept_one(&e, port);
    let sig = e.pd.alloc_mr_integrity(1, 1).unwrap();
    let wire = T10DifDomain::type1(GuardType::Crc, 512, 77);
    let attrs = SigAttrs {
        check_mask: check_mask::ALL,
        mem: SigDomain::None,
        wire: SigDomain::T10Dif(wire),
    };
    e.qp.post_send_one(SendWr::reg_mr_integrity(
        2,
        sig.lkey(),
        data.sge_all(),
        None,
        attrs,
        RW,
    ))
    .unwrap();
    assert_eq!(
        e.cq.next_blocking(T).unwrap().expect("registration").status,
        WcStatus::Success
    );
    let mut msg = data.addr().to_be_bytes().to_vec();
    msg.extend_from_slice(&sig.rkey().to_be_bytes());
    let out = e.pd.reg_mr(64, RW).unwrap();
    out.write_at(0, &msg).unwrap();
    e.qp.post_send_one(SendWr::send(3, out.sge(0, 12))).unwrap();
    let mut seen_recv = false;
    while !seen_recv {
        let wc = e.cq.next_blocking(T).unwrap().expect("completion");
        assert_eq!(wc.status, WcStatus::Success);
        seen_recv = wc.opcode == WcOpcode::Recv;
    }
    let err = sig
        .check_status()
        .unwrap()
        .expect("the armed fault must be detected");
    assert_eq!(err.err_type, SigErrType::BadRefTag);
    assert_eq!(
        (err.expected, err.actual, err.sig_err_offset, err.key),
        (78, 79, 520, sig.lkey())
    );
    assert!(
        dev.armed_faults().is_empty(),
        "a once fault is disarmed after firing"
    );
    conn.wait_disconnected_blocking(T);
}

#[test]
fn fault_armed_by_environment_in_child() {
    if std::env::var(ROLE).as_deref() == Ok("sigfault") {
        sigfault_child(std::env::var(PORT).unwrap().parse().unwrap());
        return;
    }
    let port = free_port();
    let mut child = spawn_child(
        "fault_armed_by_environment_in_child",
        "sigfault",
        port,
        Some("dir=in,block=1,target=reftag:0,once"),
    );
    let (_dev, e) = ends("mlx5_parent");
    let note = e.pd.reg_mr(64, RW).unwrap();
    e.qp.post_recv_one(RecvWr::new(1, note.sge_all())).unwrap();
    let conn = connect_retry(&e.ctx, &e.qp, port, &mut child);
    let wc =
        e.cq.next_blocking(T)
            .unwrap()
            .expect("peer's buffer notice");
    assert_eq!((wc.status, wc.byte_len), (WcStatus::Success, 12));
    let m = note.to_vec(0, 12).unwrap();
    let raddr = u64::from_be_bytes(m[..8].try_into().unwrap());
    let rkey = u32::from_be_bytes(m[8..12].try_into().unwrap());
    // Valid wire DIF for 4 blocks; the child's HCA flips a ref tag bit on arrival.
    let data: Vec<u8> = (0..2048).map(|i| i as u8).collect();
    let mut wire = vec![0u8; 4 * 520];
    t10pi::insert(
        &T10DifDomain::type1(GuardType::Crc, 512, 77),
        &data,
        &mut wire,
        0,
    )
    .unwrap();
    let src = e.pd.reg_mr(wire.len(), RW).unwrap();
    src.write_at(0, &wire).unwrap();
    e.qp.post_send_one(SendWr::rdma_write(5, src.sge_all(), raddr, rkey))
        .unwrap();
    assert_eq!(
        e.cq.next_blocking(T).unwrap().expect("write").status,
        WcStatus::Success
    );
    e.qp.post_send_one(SendWr::send(6, src.sge(0, 4))).unwrap();
    assert_eq!(
        e.cq.next_blocking(T).unwrap().expect("send").status,
        WcStatus::Success
    );
    conn.wait_disconnected_blocking(Duration::from_millis(200));
    conn.disconnect();
    wait_child(child);
}
