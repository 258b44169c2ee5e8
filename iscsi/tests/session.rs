//! Full feature phase over an in-memory byte stream, built only from this crate's
//! pieces the way the daemons will: login, then a write solicited by R2Ts and a read
//! answered with Data-In (status collapsed into the last one), with both digests on and
//! every PDU going through the framer.

use iscsi::login::*;
use iscsi::negotiate::{DigestKind, LocalParams};
use iscsi::pdu::*;
use iscsi::seq::{plan_write, CmdSequencer, CmdVerdict, CmdWindow, SnCounter, TagAllocator};
use iscsi::transfer::{
    data_in_header, data_in_segments, data_out_header, data_out_segments, WriteTracker,
};
use iscsi::{Codec, Framer, Role, WireConfig};

struct Open;

impl LoginPolicy for Open {
    fn lookup_target(&self, _: &str) -> TargetLookup {
        TargetLookup::Found {
            auth: AuthRequirement::None,
            alias: None,
        }
    }

    fn local_params(&self, _: Option<&str>) -> LocalParams {
        LocalParams {
            header_digest: vec![DigestKind::Crc32c, DigestKind::None],
            data_digest: vec![DigestKind::Crc32c, DigestKind::None],
            max_burst_length: 16_384,
            max_recv_data_segment_length: 4096,
            max_outstanding_r2t: 2,
            ..LocalParams::default()
        }
    }
}

/// One direction of the connection: bytes written by one side, framed by the other.
struct Pipe {
    tx: WireConfig,
    bytes: Vec<u8>,
    rx: Framer,
}

impl Pipe {
    fn send(&mut self, p: &Pdu) {
        p.encode(&self.tx, &mut self.bytes);
    }

    /// Deliver everything sent so far, 1000 bytes at a time.
    fn recv_all(&mut self) -> Vec<Pdu> {
        let mut out = Vec::new();
        let bytes = std::mem::take(&mut self.bytes);
        let mut rest = &bytes[..];
        for _ in 0..100_000 {
            if rest.is_empty() {
                break;
            }
            let n = self.rx.feed(&rest[..rest.len().min(1000)]);
            rest = &rest[n..];
            while let Some(r) = self.rx.poll() {
                out.push(r.expect("clean stream"));
            }
        }
        assert!(rest.is_empty() && self.rx.is_idle());
        out
    }
}

#[test]
fn write_then_read_over_tcp_framing() {
    // Login (no digests yet).
    let mut cfg = InitiatorLoginConfig::normal(
        "iqn.2026-01.t:i",
        "iqn.2026-01.t:d",
        Isid([0x80, 0, 0, 0, 0, 7]),
    );
    cfg.local = LocalParams {
        header_digest: vec![DigestKind::Crc32c],
        data_digest: vec![DigestKind::Crc32c],
        max_recv_data_segment_length: 8192,
        immediate_data: true,
        ..LocalParams::default()
    };
    let mut ini = InitiatorLogin::new(cfg);
    let mut tgt = TargetLogin::new(TargetLoginConfig {
        queue_depth: 4,
        ..TargetLoginConfig::default()
    });
    let mut req = ini.start().unwrap();
    let (io, to) = loop {
        let (resp, t) = match tgt.handle_request(&req, &Open).unwrap() {
            TargetStep::Continue(r) => (r, None),
            TargetStep::Complete { response, outcome } => (response, Some(outcome)),
            TargetStep::Failed { error, .. } => panic!("{error}"),
        };
        match ini.handle_response(&resp).unwrap() {
            InitiatorStep::Send(r) => req = r,
            InitiatorStep::Complete(o) => break (o, t.unwrap()),
        }
    };
    let p = io.params.clone();
    assert!(p.header_digest && p.data_digest);
    assert_eq!(p.max_burst_length, 16_384);

    // Full feature phase: digests on, each side's receive limit.
    let to_target = |p: &iscsi::negotiate::NegotiatedParams| WireConfig {
        digests: p.digests(),
        limits: p.recv_limits(Role::Target),
    };
    let to_initiator = |p: &iscsi::negotiate::NegotiatedParams| WireConfig {
        digests: p.digests(),
        limits: p.recv_limits(Role::Initiator),
    };
    let mut up = Pipe {
        tx: to_target(&p),
        bytes: Vec::new(),
        rx: Framer::new(to_target(&to.params)),
    };
    let mut down = Pipe {
        tx: to_initiator(&to.params),
        bytes: Vec::new(),
        rx: Framer::new(to_initiator(&p)),
    };

    let mut seq = CmdSequencer::new(io.cmd_sn, io.exp_cmd_sn, io.max_cmd_sn);
    let mut itts = TagAllocator::new(1, 16);
    let mut window = CmdWindow::new(to.exp_cmd_sn, 4);
    let mut stat_sn = SnCounter::new(to.next_stat_sn);
    let mut exp_stat_sn = io.exp_stat_sn;
    let mut ttts = TagAllocator::new(0x100, 16);
    let mut disk = vec![0u8; 64 * 1024];

    // WRITE(10) of 40000 bytes at offset 0.
    let payload: Vec<u8> = (0..40_000u32).map(|i| (i * 7) as u8).collect();
    let edtl = payload.len() as u32;
    let plan = plan_write(
        edtl,
        p.immediate_data,
        p.initial_r2t,
        p.first_burst_length,
        p.max_send_data_segment(Role::Initiator),
    );
    assert_eq!(
        plan.immediate, 4096,
        "immediate data limited by the target's MaxRecvDataSegmentLength"
    );
    let itt = itts.alloc().unwrap();
    let cmd = ScsiCommand {
        write: true,
        final_: plan.unsolicited == 0,
        itt,
        expected_data_transfer_length: edtl,
        cmd_sn: seq.next(false).unwrap(),
        exp_stat_sn,
        cdb: vec![0x2a, 0, 0, 0, 0, 0, 0, 0, 79, 0],
        ..ScsiCommand::default()
    };
    up.send(&Pdu::with_data(
        cmd,
        payload[..plan.immediate as usize].to_vec(),
    ));

    // Target: accept the command, solicit the rest, collect Data-Out, respond.
    let mut tracker = None;
    for _ in 0..100 {
        let mut progressed = false;
        for pdu in up.recv_all() {
            progressed = true;
            match &pdu.header {
                Header::ScsiCommand(c) => {
                    assert_eq!(window.check(c.cmd_sn, c.immediate), CmdVerdict::Deliver);
                    disk[..pdu.data.len()].copy_from_slice(&pdu.data);
                    let mut t = WriteTracker::new(
                        c.expected_data_transfer_length,
                        pdu.data.len() as u32,
                        0,
                        to.params.max_burst_length,
                        to.params.max_outstanding_r2t,
                    );
                    while t.can_solicit() {
                        let g = t.next_r2t(ttts.alloc().unwrap()).unwrap();
                        down.send(&Pdu::new(g.header(
                            0,
                            c.itt,
                            stat_sn.peek(),
                            window.exp_cmd_sn(),
                            window.max_cmd_sn(),
                        )));
                    }
                    tracker = Some((c.itt, t));
                }
                Header::DataOut(d) => {
                    let (titt, t) = tracker.as_mut().unwrap();
                    assert_eq!(d.itt, *titt);
                    let prog = t.on_data_out(d, pdu.data.len() as u32).unwrap();
                    let off = d.buffer_offset as usize;
                    disk[off..off + pdu.data.len()].copy_from_slice(&pdu.data);
                    if prog.sequence_done {
                        ttts.free(d.ttt);
                        while t.can_solicit() {
                            let g = t.next_r2t(ttts.alloc().unwrap()).unwrap();
                            down.send(&Pdu::new(g.header(
                                0,
                                d.itt,
                                stat_sn.peek(),
                                window.exp_cmd_sn(),
                                window.max_cmd_sn(),
                            )));
                        }
                    }
                    if prog.all_received {
                        window.complete();
                        down.send(&Pdu::new(ScsiResponse {
                            itt: *titt,
                            status: 0,
                            stat_sn: stat_sn.assign(),
                            exp_cmd_sn: window.exp_cmd_sn(),
                            max_cmd_sn: window.max_cmd_sn(),
                            ..ScsiResponse::default()
                        }));
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        // Initiator: answer R2Ts, take the response.
        let mut done = false;
        for pdu in down.recv_all() {
            progressed = true;
            if let Some((_, exp, max)) = pdu.header.stat_fields() {
                seq.update(exp, max);
            }
            match &pdu.header {
                Header::R2t(r) => {
                    for s in data_out_segments(
                        r.buffer_offset,
                        r.desired_data_transfer_length,
                        p.max_send_data_segment(Role::Initiator),
                    ) {
                        let data = payload
                            [s.buffer_offset as usize..(s.buffer_offset + s.length) as usize]
                            .to_vec();
                        up.send(&Pdu::with_data(
                            data_out_header(&s, 0, r.itt, r.ttt, exp_stat_sn),
                            data,
                        ));
                    }
                }
                Header::ScsiResponse(r) => {
                    assert_eq!((r.itt, r.status, r.residual), (itt, 0, Residual::None));
                    exp_stat_sn = r.stat_sn.wrapping_add(1);
                    assert!(itts.free(r.itt));
                    done = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        if done {
            break;
        }
        assert!(progressed, "stalled");
    }
    assert_eq!(&disk[..payload.len()], &payload[..]);
    assert!(ttts.is_empty());

    // READ(10) of the same 40000 bytes: Data-In in MaxBurstLength sequences, status in
    // the last Data-In.
    let itt = itts.alloc().unwrap();
    up.send(&Pdu::new(ScsiCommand {
        read: true,
        itt,
        expected_data_transfer_length: edtl,
        cmd_sn: seq.next(false).unwrap(),
        exp_stat_sn,
        cdb: vec![0x28, 0, 0, 0, 0, 0, 0, 0, 79, 0],
        ..ScsiCommand::default()
    }));
    for pdu in up.recv_all() {
        let Header::ScsiCommand(c) = &pdu.header else {
            panic!()
        };
        assert_eq!(window.check(c.cmd_sn, false), CmdVerdict::Deliver);
        let segs: Vec<_> = data_in_segments(
            0,
            c.expected_data_transfer_length,
            to.params.max_send_data_segment(Role::Target),
            to.params.max_burst_length,
            0,
        )
        .collect();
        let last = segs.len() - 1;
        window.complete();
        for (i, s) in segs.iter().enumerate() {
            let mut h = data_in_header(s, 0, c.itt, window.exp_cmd_sn(), window.max_cmd_sn());
            if i == last {
                h.status = Some(0);
                h.stat_sn = stat_sn.assign();
                h.residual = residual(c.expected_data_transfer_length, s.buffer_offset + s.length);
            }
            let range = s.buffer_offset as usize..(s.buffer_offset + s.length) as usize;
            down.send(&Pdu::with_data(h, disk[range].to_vec()));
        }
    }
    let mut read_back = vec![0u8; payload.len()];
    let mut data_sn = SnCounter::new(0);
    let mut finals = 0;
    let mut status = None;
    for pdu in down.recv_all() {
        let Header::DataIn(d) = &pdu.header else {
            panic!()
        };
        assert_eq!(data_sn.check(d.data_sn), iscsi::seq::SnCheck::InOrder);
        assert!(pdu.data.len() <= 8192);
        finals += usize::from(d.final_);
        let off = d.buffer_offset as usize;
        read_back[off..off + pdu.data.len()].copy_from_slice(&pdu.data);
        if let Some(s) = d.status {
            status = Some((s, d.stat_sn, d.residual));
        }
    }
    assert_eq!(read_back, payload);
    assert_eq!(finals, 3, "40000 bytes in 16384-byte sequences");
    let (s, sn, res) = status.unwrap();
    assert_eq!((s, sn, res), (0, exp_stat_sn, Residual::None));
}
