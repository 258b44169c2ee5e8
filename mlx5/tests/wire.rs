//! The fabric as seen by a raw peer: a hand-made CM handshake, then a corrupted
//! frame (bad ICRC) and malformed frames, which must be transport errors (QP to
//! error, DISCONNECTED with a transport reason), never data and never a panic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use mlx5::frame::{self, Header, Op};
use mlx5::Mlx5Device;
use verbs::cm::{CmAddr, CmListener, DisconnectReason};
use verbs::{AccessFlags, QpInitAttr, QpState, RecvWr, WcStatus};

const T: Duration = Duration::from_secs(10);

fn raw_peer(
    corrupt: impl Fn(&mut Vec<u8>),
) -> (Option<DisconnectReason>, QpState, Vec<u8>, WcStatus) {
    let dev = Mlx5Device::new("mlx5_raw");
    let ctx = dev.context();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(16).unwrap();
    let qp = pd.create_qp(&cq, &cq, &QpInitAttr::default()).unwrap();
    let buf = pd
        .reg_mr(64, AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE)
        .unwrap();
    qp.post_recv_one(RecvWr::new(1, buf.sge_all())).unwrap();
    let mut l = CmListener::bind(&ctx, &"tcp:127.0.0.1:0".parse().unwrap()).unwrap();
    let CmAddr::Tcp(a) = l.local_addr() else {
        unreachable!()
    };
    let mut s = TcpStream::connect(a).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(&frame::encode(&Header::new(Op::CmReq, 0), &[0x80, 0, 0, 0]))
        .unwrap();
    let req = l.next_request_blocking(T).unwrap();
    assert_eq!(req.private_data(), &[0x80, 0, 0, 0]);
    let conn = req.accept(&qp, &[0x40, 0, 0, 0]).unwrap();
    let mut rep = vec![0u8; frame::HDR_LEN + 4 + frame::TRAILER_LEN];
    s.read_exact(&mut rep).unwrap();
    let (h, p) = frame::decode(&rep).unwrap();
    assert_eq!((h.op, p), (Op::CmRep, vec![0x40, 0, 0, 0]));
    // A SEND whose bytes are damaged after the ICRC was computed.
    let mut f = frame::encode(&Header::new(Op::Send, 0), b"must never land");
    corrupt(&mut f);
    s.write_all(&f).unwrap();
    let reason = conn.wait_disconnected_blocking(T);
    let wc = cq.next_blocking(T).unwrap().expect("flushed receive");
    (
        reason,
        qp.state().unwrap(),
        buf.to_vec(0, 15).unwrap(),
        wc.status,
    )
}

#[test]
fn corrupted_frame_is_a_transport_error_not_data() {
    for (name, corrupt) in [
        (
            "payload bit",
            Box::new(|f: &mut Vec<u8>| f[40] ^= 0x04) as Box<dyn Fn(&mut Vec<u8>)>,
        ),
        ("header psn", Box::new(|f: &mut Vec<u8>| f[7] ^= 0x01)),
        (
            "icrc",
            Box::new(|f: &mut Vec<u8>| *f.last_mut().unwrap() ^= 0xff),
        ),
        ("bad magic", Box::new(|f: &mut Vec<u8>| f[0] = 0)),
        ("bad opcode", Box::new(|f: &mut Vec<u8>| f[3] = 0x66)),
        (
            "huge length",
            Box::new(|f: &mut Vec<u8>| f[28..32].copy_from_slice(&u32::MAX.to_be_bytes())),
        ),
    ] {
        let (reason, state, bytes, wc) = raw_peer(corrupt);
        assert!(
            matches!(reason, Some(DisconnectReason::Transport(_))),
            "{name}: {reason:?}"
        );
        assert_eq!(state, QpState::Error, "{name}");
        assert_eq!(bytes, vec![0u8; 15], "{name}: corrupt data reached memory");
        assert_eq!(wc, WcStatus::WrFlushErr, "{name}");
    }
}
