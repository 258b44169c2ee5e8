//! Two soft HCAs in two processes over TCP: the test binary re-runs itself as the
//! passive side (selected by an environment variable), bounded by timeouts.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mlx5::Mlx5Device;
use verbs::cm::{self, CmAddr, CmListener, ConnParam};
use verbs::{AccessFlags, QpInitAttr, RecvWr, SendWr, WcStatus};

const ROLE: &str = "MLX5_TEST_CHILD_ROLE";
const PORT: &str = "MLX5_TEST_CHILD_PORT";
const T: Duration = Duration::from_secs(10);
const RW: AccessFlags = AccessFlags(
    AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0 | AccessFlags::REMOTE_READ.0,
);

/// Passive side: accept one connection, receive one SEND, echo it back with a
/// SEND, then wait for the peer to disconnect.
fn child(port: u16) {
    let dev = Mlx5Device::new("mlx5_child");
    let ctx = dev.context();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(64).unwrap();
    let qp = pd.create_qp(&cq, &cq, &QpInitAttr::default()).unwrap();
    let buf = pd.reg_mr(4096, RW).unwrap();
    qp.post_recv_one(RecvWr::new(1, buf.sge_all())).unwrap();
    let mut l = CmListener::bind(&ctx, &CmAddr::Tcp(format!("127.0.0.1:{port}"))).unwrap();
    let req = l.next_request_blocking(T).expect("connect request");
    let conn = req.accept(&qp, &[0x80, 0, 0, 0]).unwrap();
    let wc = cq.next_blocking(T).unwrap().expect("receive");
    assert_eq!(wc.status, WcStatus::Success);
    qp.post_send_one(SendWr::send(2, buf.sge(0, wc.byte_len)))
        .unwrap();
    assert_eq!(
        cq.next_blocking(T)
            .unwrap()
            .expect("send completion")
            .status,
        WcStatus::Success
    );
    conn.wait_disconnected_blocking(T);
}

#[test]
fn two_processes_over_tcp() {
    if std::env::var(ROLE).as_deref() == Ok("server") {
        let port = std::env::var(PORT).unwrap().parse().unwrap();
        child(port);
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["two_processes_over_tcp", "--exact", "--nocapture"])
        .env(ROLE, "server")
        .env(PORT, port.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let dev = Mlx5Device::new("mlx5_parent");
    let ctx = dev.context();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(64).unwrap();
    let qp = pd.create_qp(&cq, &cq, &QpInitAttr::default()).unwrap();
    let addr = CmAddr::Tcp(format!("127.0.0.1:{port}"));
    let deadline = Instant::now() + T;
    let conn = loop {
        match cm::connect_blocking(
            &ctx,
            &qp,
            &addr,
            &ConnParam::with_private_data(&[0x80, 0, 0, 0]),
        ) {
            Ok(c) => break c,
            Err(cm::CmError::ConnectionRefused { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("connect: {e}");
            }
        }
    };
    assert_eq!(conn.peer_private_data(), &[0x80, 0, 0, 0]);
    let src = pd.reg_mr(4096, RW).unwrap();
    src.write_at(0, b"across processes").unwrap();
    let back = pd.reg_mr(4096, RW).unwrap();
    qp.post_recv_one(RecvWr::new(9, back.sge_all())).unwrap();
    qp.post_send_one(SendWr::send(1, src.sge(0, 16))).unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        match cq.next_blocking(T).unwrap() {
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
    let deadline = Instant::now() + T;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "child failed: {st}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("child did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
