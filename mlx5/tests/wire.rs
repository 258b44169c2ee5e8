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

/// What the QP under attack reports after the raw peer sent one damaged frame.
struct Outcome {
    reason: Option<DisconnectReason>,
    state: QpState,
    /// The first 15 bytes of the receive buffer.
    received: Vec<u8>,
    /// The flushed receive's status.
    wc: WcStatus,
}

/// A QP with one receive posted on a 64-byte buffer and `mr` bytes of remotely
/// writable memory; the raw peer connects, then sends the frame `frame` builds
/// (given that memory's rkey and address) after `corrupt` damaged it.
fn raw_peer(
    mr: usize,
    frame: impl Fn(u32, u64) -> Vec<u8>,
    corrupt: impl Fn(&mut Vec<u8>),
) -> Outcome {
    let dev = Mlx5Device::new("mlx5_raw");
    let ctx = dev.context();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(16).unwrap();
    let qp = pd.create_qp(&cq, &cq, &QpInitAttr::default()).unwrap();
    let buf = pd
        .reg_mr(64, AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE)
        .unwrap();
    qp.post_recv_one(RecvWr::new(1, buf.sge_all())).unwrap();
    let remote = pd
        .reg_mr(mr, AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE)
        .unwrap();
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
    // A frame whose bytes are damaged after the ICRC was computed.
    let mut f = frame(remote.rkey(), remote.addr());
    corrupt(&mut f);
    s.write_all(&f).unwrap();
    let reason = conn.wait_disconnected_blocking(T);
    let wc = cq.next_blocking(T).unwrap().expect("flushed receive");
    Outcome {
        reason,
        state: qp.state().unwrap(),
        received: buf.to_vec(0, 15).unwrap(),
        wc: wc.status,
    }
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
        let send = |_, _| frame::encode(&Header::new(Op::Send, 0), b"must never land");
        let o = raw_peer(64, send, corrupt);
        assert!(
            matches!(o.reason, Some(DisconnectReason::Transport(_))),
            "{name}: {:?}",
            o.reason
        );
        assert_eq!(o.state, QpState::Error, "{name}");
        assert_eq!(
            o.received,
            vec![0u8; 15],
            "{name}: corrupt data reached memory"
        );
        assert_eq!(o.wc, WcStatus::WrFlushErr, "{name}");
    }
}

/// A bulk RDMA WRITE (received straight into plain memory) whose ICRC fails is a
/// transport error too: the QP goes to error and the message never completes or
/// is acknowledged, whether the damage is in the payload or the trailer.
#[test]
fn corrupted_bulk_write_is_a_transport_error() {
    const N: usize = 256 << 10;
    let write = |rkey, addr| {
        let mut h = Header::new(Op::Write, 0);
        h.key = rkey;
        h.addr = addr;
        frame::encode(&h, &vec![0x5a; N])
    };
    for (name, at) in [
        ("payload", frame::HDR_LEN + N - 1),
        ("icrc", frame::HDR_LEN + N),
    ] {
        let o = raw_peer(N, write, |f| f[at] ^= 0x20);
        assert!(
            matches!(o.reason, Some(DisconnectReason::Transport(ref m)) if m.contains("ICRC")),
            "{name}: {:?}",
            o.reason
        );
        assert_eq!(o.state, QpState::Error, "{name}");
        assert_eq!(o.wc, WcStatus::WrFlushErr, "{name}");
    }
}
