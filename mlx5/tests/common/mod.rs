//! Shared helpers for the mlx5 integration tests: a connected pair of soft HCAs.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use mlx5::Mlx5Device;
use verbs::cm::{self, CmAddr, CmConnection, CmListener, ConnParam};
use verbs::{Context, Cq, Pd, Qp, QpInitAttr, WorkCompletion};

pub const T: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Side {
    pub dev: Arc<Mlx5Device>,
    pub ctx: Context,
    pub pd: Pd,
    pub cq: Cq,
    pub qp: Qp,
    pub conn: Option<CmConnection>,
}

impl Side {
    pub fn new(name: &str, attr: &QpInitAttr) -> Side {
        let dev = Mlx5Device::new(name);
        let ctx = dev.context();
        let pd = ctx.alloc_pd().unwrap();
        let cq = ctx.create_cq(4096).unwrap();
        let qp = pd.create_qp(&cq, &cq, attr).unwrap();
        Side {
            dev,
            ctx,
            pd,
            cq,
            qp,
            conn: None,
        }
    }

    pub fn wait(&self) -> WorkCompletion {
        self.cq
            .next_blocking(T)
            .unwrap()
            .expect("completion within timeout")
    }

    /// Polls the CQ once (consumes SIGERR CQEs) and asserts nothing else is there.
    pub fn drain_expect_none(&self) {
        let mut v = Vec::new();
        self.cq.poll(&mut v, 16).unwrap();
        assert!(v.is_empty(), "unexpected completions {v:?}");
    }
}

pub fn unix_addr() -> (tempfile::TempDir, CmAddr) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("cm.sock");
    (d, CmAddr::Unix(p))
}

/// A (active) connected to B (passive) over a UNIX socket.
pub fn pair_with(a_attr: &QpInitAttr, b_attr: &QpInitAttr) -> (Side, Side) {
    let (_dir, addr) = unix_addr();
    let mut b = Side::new("mlx5_b", b_attr);
    let mut listener = CmListener::bind(&b.ctx, &addr).unwrap();
    let mut a = Side::new("mlx5_a", a_attr);
    let conn = std::thread::scope(|s| {
        let (actx, aqp, addr) = (&a.ctx, &a.qp, &addr);
        let h = s.spawn(move || {
            cm::connect_blocking(
                actx,
                aqp,
                addr,
                &ConnParam::with_private_data(&[0x80, 0, 0, 0]),
            )
        });
        let req = listener.next_request_blocking(T).expect("connect request");
        assert_eq!(req.private_data(), &[0x80, 0, 0, 0]);
        b.conn = Some(req.accept(&b.qp, &[0x80, 0, 0, 0]).unwrap());
        h.join().unwrap().unwrap()
    });
    assert_eq!(conn.peer_private_data(), &[0x80, 0, 0, 0]);
    a.conn = Some(conn);
    (a, b)
}

pub fn pair() -> (Side, Side) {
    pair_with(&QpInitAttr::default(), &QpInitAttr::default())
}
