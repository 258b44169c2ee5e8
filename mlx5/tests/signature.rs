//! The signature engine end to end: INSERT/STRIP/PASS x Type 1/2/3 x 512/4096 x
//! DIF/DIX in memory, through RDMA WRITE, RDMA READ and SEND in both directions,
//! with a bit flipped (fault hook) in data, guard, app tag and ref tag giving the
//! exact SigErr while the work completion stays successful.

mod common;

use common::{pair, Side};
use mlx5::{FaultDirection, FaultScope, FaultSpec, FaultTarget};
use t10pi::{DifType, GuardType, T10DifDomain};
use verbs::sig::{check_mask, SigAttrs, SigDomain, SigErr, SigErrType};
use verbs::{AccessFlags, Mr, RecvWr, SendWr, Sge, SigMr, VerbsError, WcStatus};

const RW: AccessFlags = AccessFlags(
    AccessFlags::LOCAL_WRITE.0 | AccessFlags::REMOTE_WRITE.0 | AccessFlags::REMOTE_READ.0,
);
const BLOCKS: usize = 4;
const BAD_BLOCK: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Insert,
    Strip,
    Pass,
}
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Write,
    Read,
    Send,
}

struct Case {
    attrs: SigAttrs,
    dix: bool,
    iv: usize,
    mem_data: Vec<u8>,
    mem_pi: Vec<u8>,
    wire: Vec<u8>,
}

fn case(mode: Mode, ty: DifType, iv: u32, dix: bool) -> Case {
    case_of(mode, ty, iv, dix, BLOCKS)
}

fn case_of(mode: Mode, ty: DifType, iv: u32, dix: bool, n: usize) -> Case {
    let data: Vec<u8> = (0..n * iv as usize).map(|i| (i * 7 + 3) as u8).collect();
    let memg = if dix { GuardType::Csum } else { GuardType::Crc };
    let mem = T10DifDomain::new(ty, memg, iv, 1000).with_app_tag(0x1234, 0xffff);
    let wire = T10DifDomain::new(ty, GuardType::Crc, iv, 1000).with_app_tag(0x1234, 0xffff);
    let ivu = iv as usize;
    let mut wire_dif = vec![0; n * (ivu + 8)];
    t10pi::insert(&wire, &data, &mut wire_dif, 0).unwrap();
    let (mem_data, mem_pi) = if dix {
        let mut pi = vec![0; n * 8];
        t10pi::generate(&mem, &data, &mut pi, 0).unwrap();
        (data.clone(), pi)
    } else {
        let mut d = vec![0; n * (ivu + 8)];
        t10pi::insert(&mem, &data, &mut d, 0).unwrap();
        (d, Vec::new())
    };
    let (m, w) = (SigDomain::T10Dif(mem), SigDomain::T10Dif(wire));
    let attrs = |mem, wire| SigAttrs {
        check_mask: check_mask::ALL,
        mem,
        wire,
    };
    match mode {
        Mode::Insert => Case {
            attrs: attrs(SigDomain::None, w),
            dix: false,
            iv: ivu,
            mem_data: data,
            mem_pi: Vec::new(),
            wire: wire_dif,
        },
        Mode::Strip => Case {
            attrs: attrs(m, SigDomain::None),
            dix,
            iv: ivu,
            mem_data,
            mem_pi,
            wire: data,
        },
        Mode::Pass => Case {
            attrs: attrs(m, w),
            dix,
            iv: ivu,
            mem_data,
            mem_pi,
            wire: wire_dif,
        },
    }
}

/// The SigErr the HCA must report when `t` is flipped in block BAD_BLOCK of the
/// checked view: computed independently by flipping a copy and verifying.
fn expected_err(c: &Case, outbound: bool, t: FaultTarget, key: u32) -> SigErr {
    let flip_dif = |buf: &mut Vec<u8>| {
        let at = BAD_BLOCK as usize * (c.iv + 8);
        match t {
            FaultTarget::Data { byte, bit } => buf[at + byte as usize] ^= 1 << bit,
            FaultTarget::Guard { bit } => buf[at + c.iv + 1 - bit as usize / 8] ^= 1 << (bit % 8),
            FaultTarget::AppTag { bit } => buf[at + c.iv + 3 - bit as usize / 8] ^= 1 << (bit % 8),
            FaultTarget::RefTag { bit } => buf[at + c.iv + 7 - bit as usize / 8] ^= 1 << (bit % 8),
        }
    };
    let e = if outbound {
        let dom = c.attrs.mem.dif().unwrap();
        if c.dix {
            let mut d = c.mem_data.clone();
            let mut pi = c.mem_pi.clone();
            let at = BAD_BLOCK as usize * 8;
            match t {
                FaultTarget::Data { byte, bit } => {
                    d[BAD_BLOCK as usize * c.iv + byte as usize] ^= 1 << bit
                }
                FaultTarget::Guard { bit } => pi[at + 1 - bit as usize / 8] ^= 1 << (bit % 8),
                FaultTarget::AppTag { bit } => pi[at + 3 - bit as usize / 8] ^= 1 << (bit % 8),
                FaultTarget::RefTag { bit } => pi[at + 7 - bit as usize / 8] ^= 1 << (bit % 8),
            }
            t10pi::verify(dom, check_mask::ALL, &d, &pi, 0).unwrap_err()
        } else {
            let mut d = c.mem_data.clone();
            flip_dif(&mut d);
            t10pi::verify_dif(dom, check_mask::ALL, &d, 0).unwrap_err()
        }
    } else {
        let mut w = c.wire.clone();
        flip_dif(&mut w);
        t10pi::verify_dif(c.attrs.wire.dif().unwrap(), check_mask::ALL, &w, 0).unwrap_err()
    };
    let e = *e.pi().unwrap();
    let err_type = match e.kind {
        t10pi::PiErrorKind::Guard => SigErrType::BadGuard,
        t10pi::PiErrorKind::AppTag => SigErrType::BadAppTag,
        t10pi::PiErrorKind::RefTag => SigErrType::BadRefTag,
    };
    let want_type = match t {
        FaultTarget::Data { .. } | FaultTarget::Guard { .. } => SigErrType::BadGuard,
        FaultTarget::AppTag { .. } => SigErrType::BadAppTag,
        FaultTarget::RefTag { .. } => SigErrType::BadRefTag,
    };
    assert_eq!(err_type, want_type);
    assert_eq!(e.wire_offset, BAD_BLOCK * (c.iv as u64 + 8));
    SigErr {
        err_type,
        expected: e.expected,
        actual: e.actual,
        sig_err_offset: e.wire_offset,
        key,
    }
}

struct Bound {
    sig: SigMr,
    data: Mr,
    pi: Option<Mr>,
    wire_len: u32,
}

fn register(a: &Side, c: &Case, sig: SigMr) -> Bound {
    let data = a.pd.reg_mr(c.mem_data.len(), RW).unwrap();
    data.write_at(0, &c.mem_data).unwrap();
    let pi = c.dix.then(|| {
        let m = a.pd.reg_mr(c.mem_pi.len(), RW).unwrap();
        m.write_at(0, &c.mem_pi).unwrap();
        m
    });
    let wr = SendWr::reg_mr_integrity(
        100,
        sig.lkey(),
        data.sge_all(),
        pi.as_ref().map(Mr::sge_all),
        c.attrs,
        RW,
    );
    a.qp.post_send_one(wr).unwrap();
    let wc = a.wait();
    assert_eq!(wc.status, WcStatus::Success, "registration");
    Bound {
        sig,
        data,
        pi,
        wire_len: c.wire.len() as u32,
    }
}

/// Runs one transfer; returns the bytes that ended where they were going.
fn transfer(a: &Side, b: &Side, bd: &Bound, op: Op, outbound: bool, wire_mr: &Mr) {
    let sig_sge = Sge {
        addr: bd.data.addr(),
        length: bd.wire_len,
        lkey: bd.sig.lkey(),
    };
    let sig_rkey = bd.sig.rkey();
    match (op, outbound) {
        (Op::Write, true) => {
            a.qp.post_send_one(SendWr::rdma_write(
                1,
                sig_sge,
                wire_mr.addr(),
                wire_mr.rkey(),
            ))
            .unwrap();
            assert_eq!(a.wait().status, WcStatus::Success);
        }
        (Op::Send, true) => {
            b.qp.post_recv_one(RecvWr::new(2, wire_mr.sge_all()))
                .unwrap();
            a.qp.post_send_one(SendWr::send(1, sig_sge)).unwrap();
            assert_eq!(a.wait().status, WcStatus::Success);
            assert_eq!(b.wait().status, WcStatus::Success);
        }
        (Op::Read, true) => {
            b.qp.post_send_one(SendWr::rdma_read(
                1,
                wire_mr.sge_all(),
                bd.data.addr(),
                sig_rkey,
            ))
            .unwrap();
            assert_eq!(b.wait().status, WcStatus::Success);
        }
        (Op::Write, false) => {
            b.qp.post_send_one(SendWr::rdma_write(
                1,
                wire_mr.sge_all(),
                bd.data.addr(),
                sig_rkey,
            ))
            .unwrap();
            assert_eq!(b.wait().status, WcStatus::Success);
        }
        (Op::Send, false) => {
            a.qp.post_recv_one(RecvWr::new(2, sig_sge)).unwrap();
            b.qp.post_send_one(SendWr::send(1, wire_mr.sge_all()))
                .unwrap();
            assert_eq!(b.wait().status, WcStatus::Success);
            assert_eq!(a.wait().status, WcStatus::Success);
        }
        (Op::Read, false) => {
            a.qp.post_send_one(SendWr::rdma_read(
                1,
                sig_sge,
                wire_mr.addr(),
                wire_mr.rkey(),
            ))
            .unwrap();
            assert_eq!(a.wait().status, WcStatus::Success);
        }
    }
    // Consume any SIGERR CQE the device wrote for A's signature MR.
    a.drain_expect_none();
}

/// One transfer of `c` through `sig` (with `fault` injected once), checked: the
/// bytes that arrived, or the exact SigErr, reported once. Returns the MR.
#[allow(clippy::too_many_arguments)]
fn run_case(
    a: &Side,
    b: &Side,
    c: &Case,
    sig: SigMr,
    op: Op,
    outbound: bool,
    fault: Option<FaultTarget>,
    label: &str,
) -> SigMr {
    let bd = register(a, c, sig);
    let wire_mr = b.pd.reg_mr(c.wire.len(), RW).unwrap();
    if !outbound {
        wire_mr.write_at(0, &c.wire).unwrap();
        bd.data.with_mut(|d| d.fill(0));
        if let Some(p) = &bd.pi {
            p.with_mut(|d| d.fill(0));
        }
    }
    if let Some(t) = fault {
        a.dev.inject_fault(FaultSpec {
            scope: FaultScope::Mkey(bd.sig.lkey()),
            direction: if outbound {
                FaultDirection::Outbound
            } else {
                FaultDirection::Inbound
            },
            block: BAD_BLOCK,
            target: t,
            once: true,
        });
    }
    transfer(a, b, &bd, op, outbound, &wire_mr);
    let st = bd.sig.check_status().unwrap();
    match fault {
        None => {
            assert_eq!(st, None, "{label}");
            if outbound {
                assert_eq!(wire_mr.to_vec(0, c.wire.len()).unwrap(), c.wire, "{label}");
            } else {
                assert_eq!(
                    bd.data.to_vec(0, c.mem_data.len()).unwrap(),
                    c.mem_data,
                    "{label}"
                );
                if let Some(p) = &bd.pi {
                    assert_eq!(p.to_vec(0, c.mem_pi.len()).unwrap(), c.mem_pi, "{label}");
                }
            }
        }
        Some(t) => {
            let want = expected_err(c, outbound, t, bd.sig.lkey());
            assert_eq!(st, Some(want), "{label}");
            assert!(
                a.dev.armed_faults().is_empty(),
                "{label}: fault did not fire"
            );
        }
    }
    // Reported once, then cleared.
    assert_eq!(bd.sig.check_status().unwrap(), None);
    bd.sig
}

#[test]
fn insert_strip_pass_matrix_with_faults() {
    let (a, b) = pair();
    let mut sig = Some(a.pd.alloc_mr_integrity(1, 1).unwrap());
    let mut runs = 0;
    for op in [Op::Write, Op::Read, Op::Send] {
        for mode in [Mode::Insert, Mode::Strip, Mode::Pass] {
            for ty in [DifType::Type1, DifType::Type2, DifType::Type3] {
                for iv in [512u32, 4096] {
                    for dix in [false, true] {
                        if mode == Mode::Insert && dix {
                            continue; // no PI in memory: DIF/DIX does not apply
                        }
                        let c = case(mode, ty, iv, dix);
                        for outbound in [true, false] {
                            let checks = match mode {
                                Mode::Insert => !outbound,
                                Mode::Strip => outbound,
                                Mode::Pass => true,
                            };
                            let faults: &[Option<FaultTarget>] = if checks {
                                &[
                                    None,
                                    Some(FaultTarget::Data { byte: 100, bit: 2 }),
                                    Some(FaultTarget::Guard { bit: 3 }),
                                    Some(FaultTarget::AppTag { bit: 9 }),
                                    Some(FaultTarget::RefTag { bit: 0 }),
                                ]
                            } else {
                                &[None]
                            };
                            for fault in faults {
                                let label = format!("{op:?} {mode:?} {ty:?} {iv} dix={dix} out={outbound} fault={fault:?}");
                                let used = sig.take().unwrap();
                                sig =
                                    Some(run_case(&a, &b, &c, used, op, outbound, *fault, &label));
                                runs += 1;
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(runs > 300, "{runs}");
}

#[test]
fn reregistration_before_status_check_is_refused() {
    let (a, _b) = pair();
    let c = case(Mode::Insert, DifType::Type1, 512, false);
    let sig = a.pd.alloc_mr_integrity(1, 1).unwrap();
    let bd = register(&a, &c, sig);
    let again = SendWr::reg_mr_integrity(5, bd.sig.lkey(), bd.data.sge_all(), None, c.attrs, RW);
    assert!(matches!(
        a.qp.post_send_one(again.clone()),
        Err(VerbsError::SigStatusNotChecked { .. })
    ));
    assert_eq!(bd.sig.check_status().unwrap(), None);
    a.qp.post_send_one(again).unwrap();
    assert_eq!(a.wait().status, WcStatus::Success);
}

#[test]
fn block_aligned_sub_range_write_uses_block_ref_tags() {
    let (a, b) = pair();
    let c = case(Mode::Insert, DifType::Type1, 512, false);
    let bd = register(&a, &c, a.pd.alloc_mr_integrity(1, 1).unwrap());
    // B writes blocks 1..3 of the wire view into A's sig MR (STRIP on arrival).
    let wire_mr = b.pd.reg_mr(2 * 520, RW).unwrap();
    wire_mr.write_at(0, &c.wire[520..3 * 520]).unwrap();
    bd.data.with_mut(|d| d.fill(0));
    b.qp.post_send_one(SendWr::rdma_write(
        1,
        wire_mr.sge_all(),
        bd.data.addr() + 520,
        bd.sig.rkey(),
    ))
    .unwrap();
    assert_eq!(b.wait().status, WcStatus::Success);
    a.drain_expect_none();
    assert_eq!(bd.sig.check_status().unwrap(), None);
    assert_eq!(bd.data.to_vec(512, 1024).unwrap(), c.mem_data[512..1536]);
    // Off block boundaries is refused.
    b.qp.post_send_one(SendWr::rdma_write(
        2,
        wire_mr.sge(0, 100),
        bd.data.addr() + 8,
        bd.sig.rkey(),
    ))
    .unwrap();
    assert_eq!(b.wait().status, WcStatus::RemoteAccessErr);
}

#[test]
fn bad_signature_registration_completes_with_bind_error() {
    let (a, _b) = pair();
    let c = case(Mode::Insert, DifType::Type1, 512, false);
    let sig = a.pd.alloc_mr_integrity(1, 1).unwrap();
    let other_pd = a.ctx.alloc_pd().unwrap();
    let foreign = other_pd.reg_mr(c.mem_data.len(), RW).unwrap();
    let wr = SendWr::reg_mr_integrity(11, sig.lkey(), foreign.sge_all(), None, c.attrs, RW);
    a.qp.post_send_one(wr).unwrap();
    let wc = a.wait();
    assert_eq!((wc.wr_id, wc.status), (11, WcStatus::MwBindErr));
    // Geometry errors are refused at post time.
    let (a, _b) = pair();
    let sig = a.pd.alloc_mr_integrity(1, 1).unwrap();
    let data = a.pd.reg_mr(1000, RW).unwrap();
    let wr = SendWr::reg_mr_integrity(12, sig.lkey(), data.sge_all(), None, c.attrs, RW);
    assert!(matches!(
        a.qp.post_send_one(wr),
        Err(VerbsError::InvalidArgument(_))
    ));
    let mut odd = c.attrs;
    odd.wire = SigDomain::T10Dif(T10DifDomain::type1(GuardType::Crc, 1024, 0));
    let data = a.pd.reg_mr(2048, RW).unwrap();
    let wr = SendWr::reg_mr_integrity(13, sig.lkey(), data.sge_all(), None, odd, RW);
    assert!(matches!(
        a.qp.post_send_one(wr),
        Err(VerbsError::InvalidArgument(_))
    ));
}

#[test]
fn check_mask_selects_the_checked_fields() {
    let (a, b) = pair();
    // PASS with only the ref tag checked: guard and app tag corruption pass
    // silently (and are carried to the wire), a ref tag corruption is caught.
    let mut c = case(Mode::Pass, DifType::Type1, 512, false);
    c.attrs.check_mask = check_mask::REFTAG;
    let mut sig = Some(a.pd.alloc_mr_integrity(1, 1).unwrap());
    for (t, caught) in [
        (FaultTarget::Guard { bit: 1 }, false),
        (FaultTarget::AppTag { bit: 1 }, false),
        (FaultTarget::Data { byte: 3, bit: 0 }, false),
        (FaultTarget::RefTag { bit: 1 }, true),
    ] {
        let bd = register(&a, &c, sig.take().unwrap());
        let wire_mr = b.pd.reg_mr(c.wire.len(), RW).unwrap();
        a.dev.inject_fault(FaultSpec {
            scope: FaultScope::Qp(a.qp.qp_num()),
            direction: FaultDirection::Outbound,
            block: 1,
            target: t,
            once: true,
        });
        transfer(&a, &b, &bd, Op::Write, true, &wire_mr);
        let st = bd.sig.check_status().unwrap();
        assert_eq!(st.is_some(), caught, "{t:?}: {st:?}");
        if let Some(e) = st {
            assert_eq!(
                (e.err_type, e.sig_err_offset, e.expected, e.actual),
                (SigErrType::BadRefTag, 520, 1001, 1003)
            );
        }
        sig = Some(bd.sig);
    }
}

/// Signature pipelining: the response SEND is posted right behind the RDMA WRITE
/// whose data fails its check; the send queue stops in SQD before the response, the
/// owner cancels it (and what follows), posts the error response, resumes, and the
/// peer sees the error response and then the later message, never the good one.
#[test]
fn pipelining_qp_stops_after_a_failed_transfer_and_resumes_with_the_replacement() {
    let attr = verbs::QpInitAttr {
        sig_pipelining: true,
        ..verbs::QpInitAttr::default()
    };
    let (a, b) = common::pair_with(&attr, &verbs::QpInitAttr::default());
    let mut c = case(Mode::Pass, DifType::Type1, 512, false);
    // A bad guard in block BAD_BLOCK of the stored (interleaved) PI.
    c.mem_data[BAD_BLOCK as usize * 520 + 512] ^= 0x01;
    let bd = register(&a, &c, a.pd.alloc_mr_integrity(1, 1).unwrap());
    let wire_mr = b.pd.reg_mr(c.wire.len(), RW).unwrap();
    let msgs = a.pd.reg_mr(64, RW).unwrap();
    msgs.write_at(0, b"good").unwrap();
    msgs.write_at(16, b"later").unwrap();
    msgs.write_at(32, b"bad").unwrap();
    let inbox = b.pd.reg_mr(3 * 16, RW).unwrap();
    for i in 0..3u64 {
        b.qp.post_recv_one(RecvWr::new(10 + i, inbox.sge(i as usize * 16, 16)))
            .unwrap();
    }
    let write = unsignaled_write_through(&bd, &wire_mr);
    let mut good = SendWr::send(2, msgs.sge(0, 4));
    good.flags = good.flags | verbs::SendFlags::FENCE;
    let later = SendWr::send(3, msgs.sge(16, 5));
    // Cancelling needs SQD.
    assert!(matches!(
        a.qp.cancel_posted_send_wrs(2),
        Err(VerbsError::InvalidQpState { .. })
    ));
    a.qp.post_send(&[write, good, later.clone()]).unwrap();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let st = rt
        .block_on(async { tokio::time::timeout(common::T, a.qp.sq_drained()).await })
        .expect("SQ drained within the timeout")
        .unwrap();
    assert_eq!(st, verbs::QpState::Sqd);
    // The SIGERR CQE is on the CQ before the event: polling records it.
    a.drain_expect_none();
    let e = bd.sig.check_status().unwrap().expect("signature error");
    assert_eq!(e.err_type, SigErrType::BadGuard);
    assert_eq!(e.sig_err_offset, BAD_BLOCK * 520);
    // Nothing behind the failed WRITE went out.
    std::thread::sleep(std::time::Duration::from_millis(50));
    b.drain_expect_none();

    assert_eq!(
        a.qp.cancel_posted_send_wrs(1).unwrap(),
        0,
        "already executed"
    );
    assert_eq!(a.qp.cancel_posted_send_wrs(2).unwrap(), 1);
    assert_eq!(a.qp.cancel_posted_send_wrs(3).unwrap(), 1);
    let mut bad = SendWr::send(4, msgs.sge(32, 3));
    bad.flags = bad.flags | verbs::SendFlags::FENCE;
    let mut later_again = later;
    later_again.wr_id = 5;
    a.qp.post_send(&[bad, later_again]).unwrap();
    assert_eq!(a.qp.state().unwrap(), verbs::QpState::Sqd);
    a.qp.modify_sqd_to_rts().unwrap();
    assert_eq!(a.qp.state().unwrap(), verbs::QpState::Rts);

    // Cancelled WRs complete (as NOPs) in their place, then the new ones.
    let ids: Vec<(u64, WcStatus)> = (0..4)
        .map(|_| a.wait())
        .map(|w| (w.wr_id, w.status))
        .collect();
    assert_eq!(ids, [2, 3, 4, 5].map(|i| (i, WcStatus::Success)).to_vec());
    let got: Vec<(u64, u32)> = (0..2)
        .map(|_| b.wait())
        .map(|w| (w.wr_id, w.byte_len))
        .collect();
    assert_eq!(got, vec![(10, 3), (11, 5)]);
    assert_eq!(inbox.to_vec(0, 3).unwrap(), b"bad");
    assert_eq!(inbox.to_vec(16, 5).unwrap(), b"later");
    // The data did move (the peer's own check would catch it), with the bad guard.
    let mut want = c.wire.clone();
    want[BAD_BLOCK as usize * 520 + 512] ^= 0x01;
    assert_eq!(wire_mr.to_vec(0, want.len()).unwrap(), want);
    b.drain_expect_none();
}

/// Without pipelining a failed check neither stops the queue nor changes the state.
#[test]
fn plain_qp_keeps_sending_after_a_failed_transfer() {
    let (a, b) = common::pair();
    let mut c = case(Mode::Pass, DifType::Type1, 512, false);
    c.mem_data[BAD_BLOCK as usize * 520 + 512] ^= 0x01;
    let bd = register(&a, &c, a.pd.alloc_mr_integrity(1, 1).unwrap());
    let wire_mr = b.pd.reg_mr(c.wire.len(), RW).unwrap();
    let inbox = b.pd.reg_mr(16, RW).unwrap();
    b.qp.post_recv_one(RecvWr::new(10, inbox.sge_all()))
        .unwrap();
    let write = unsignaled_write_through(&bd, &wire_mr);
    let src = a.pd.reg_mr(8, RW).unwrap();
    a.qp.post_send(&[write, SendWr::send(2, src.sge_all())])
        .unwrap();
    assert_eq!(a.wait().wr_id, 2);
    assert_eq!(b.wait().wr_id, 10);
    assert_eq!(a.qp.state().unwrap(), verbs::QpState::Rts);
    assert!(bd.sig.check_status().unwrap().is_some());
}

/// An unsignaled RDMA WRITE (wr_id 1) of the whole signature MR's wire view to `to`.
fn unsignaled_write_through(bd: &Bound, to: &Mr) -> SendWr {
    let sig_sge = Sge {
        addr: bd.data.addr(),
        length: bd.wire_len,
        lkey: bd.sig.lkey(),
    };
    let mut write = SendWr::rdma_write(1, sig_sge, to.addr(), to.rkey());
    write.flags = verbs::SendFlags(0);
    write
}

/// Frames of at least 32 KiB through a signature MR, which the requester converts
/// into its reused frame buffer as it sends them (smaller ones are built and kept
/// whole): the same bytes and the same exact SigErr as the small frames above.
#[test]
fn large_outbound_frames_are_converted_as_they_are_sent() {
    let (a, b) = pair();
    let mut sig = Some(a.pd.alloc_mr_integrity(1, 1).unwrap());
    let mut runs = 0;
    for op in [Op::Write, Op::Send] {
        for mode in [Mode::Insert, Mode::Strip, Mode::Pass] {
            // At least 32 KiB on the wire (and in memory) at either interval.
            for (iv, blocks) in [(512u32, 64usize), (4096, 8)] {
                for dix in [false, true] {
                    if mode == Mode::Insert && dix {
                        continue;
                    }
                    let c = case_of(mode, DifType::Type1, iv, dix, blocks);
                    assert!(c.wire.len() >= 32 << 10);
                    let faults: &[Option<FaultTarget>] = match mode {
                        Mode::Insert => &[None],
                        _ => &[
                            None,
                            Some(FaultTarget::Guard { bit: 3 }),
                            Some(FaultTarget::RefTag { bit: 0 }),
                        ],
                    };
                    for fault in faults {
                        let label = format!("{op:?} {mode:?} {iv} dix={dix} fault={fault:?}");
                        let used = sig.take().unwrap();
                        sig = Some(run_case(&a, &b, &c, used, op, true, *fault, &label));
                        runs += 1;
                    }
                }
            }
        }
    }
    assert_eq!(runs, 2 * (2 + 2 * 2 * 3 * 2));
}

/// A large SEND through a signature MR refused for want of a receive (RNR NAK),
/// and the large signature WRITE behind it, are converted again from memory for
/// every retransmission: the first transmission's fault (once) is not in what
/// the peer finally places, and a check that fails is reported once, not once per
/// transmission.
#[test]
fn rnr_retransmission_converts_signature_frames_again() {
    let rnr = verbs::QpInitAttr {
        min_rnr_timer: std::time::Duration::from_millis(5),
        ..verbs::QpInitAttr::default()
    };
    let (a, b) = common::pair_with(&verbs::QpInitAttr::default(), &rnr);
    // 64 blocks of 512: 33,280 bytes on the wire.
    let mut bad = case_of(Mode::Pass, DifType::Type1, 512, false, 64);
    bad.mem_data[BAD_BLOCK as usize * 520 + 512] ^= 0x01;
    let good = case_of(Mode::Insert, DifType::Type1, 512, false, 64);
    let bd_bad = register(&a, &bad, a.pd.alloc_mr_integrity(1, 1).unwrap());
    let bd_good = register(&a, &good, a.pd.alloc_mr_integrity(1, 1).unwrap());
    let inbox = b.pd.reg_mr(bad.wire.len(), RW).unwrap();
    let wire_mr = b.pd.reg_mr(good.wire.len(), RW).unwrap();
    // Flips a data bit of the WRITE's first transmission only; the peer drops that
    // one (it follows the refused SEND), so only a kept copy would deliver it.
    a.dev.inject_fault(FaultSpec {
        scope: FaultScope::Mkey(bd_good.sig.lkey()),
        direction: FaultDirection::Outbound,
        block: BAD_BLOCK,
        target: FaultTarget::Data { byte: 100, bit: 2 },
        once: true,
    });
    let through = |bd: &Bound| Sge {
        addr: bd.data.addr(),
        length: bd.wire_len,
        lkey: bd.sig.lkey(),
    };
    a.qp.post_send(&[
        SendWr::send(1, through(&bd_bad)),
        SendWr::rdma_write(2, through(&bd_good), wire_mr.addr(), wire_mr.rkey()),
    ])
    .unwrap();
    // Several RNR rounds go by.
    std::thread::sleep(std::time::Duration::from_millis(30));
    assert!(
        a.cq.next_blocking(std::time::Duration::from_millis(1))
            .unwrap()
            .is_none(),
        "the SEND must wait for a receive"
    );
    assert!(a.dev.armed_faults().is_empty(), "fault did not fire");
    // The first transmission's check, recorded by that poll.
    let e = bd_bad.sig.check_status().unwrap().expect("signature error");
    assert_eq!(
        (e.err_type, e.sig_err_offset),
        (SigErrType::BadGuard, BAD_BLOCK * 520)
    );
    b.qp.post_recv_one(RecvWr::new(9, inbox.sge_all())).unwrap();
    assert_eq!(a.wait().wr_id, 1);
    assert_eq!(a.wait().wr_id, 2);
    assert_eq!(b.wait().byte_len, bad.wire.len() as u32);
    let mut want = bad.wire.clone();
    want[BAD_BLOCK as usize * 520 + 512] ^= 0x01;
    assert_eq!(inbox.to_vec(0, want.len()).unwrap(), want);
    assert_eq!(wire_mr.to_vec(0, good.wire.len()).unwrap(), good.wire);
    // The retransmissions after it reported nothing more.
    assert_eq!(bd_bad.sig.check_status().unwrap(), None, "reported once");
    assert_eq!(bd_good.sig.check_status().unwrap(), None);
}
