//! Byte-exact exchanges: every PDU is written out here (BHS in hex, the text data
//! segment as a literal with its NULs and padding) and the machines must produce and
//! accept exactly these bytes.

use iscsi::chap::{ChapAlgorithm, ChapCredentials, ChapInitiator};
use iscsi::discovery::{
    parse_send_targets, send_targets_keys, send_targets_query, RequesterStep, StatusSn,
    TargetRecord, TextRequester, TextResponder, TextStep,
};
use iscsi::iser::{target_plan, IserControl, IserHeader, IserMessage, RdmaOp, RemoteBuffer};
use iscsi::login::*;
use iscsi::negotiate::SessionType;
use iscsi::pdu::*;
use iscsi::{Codec, WireConfig};
use md5::{Digest, Md5};

const INITIATOR: &str = "iqn.2026-01.t:i";
const TARGET: &str = "iqn.2026-01.t:d";
const ISID: Isid = Isid([0x80, 0x12, 0x34, 0x56, 0x00, 0x01]);

fn pdu_bytes(bhs_hex: &str, data: &[u8]) -> Vec<u8> {
    let clean: String = bhs_hex.split_whitespace().collect();
    let mut v = hex::decode(clean).expect("test hex");
    assert_eq!(v.len(), 48, "BHS literal must be 48 bytes");
    v.extend_from_slice(data);
    v
}

fn decode(bytes: &[u8]) -> Pdu {
    Pdu::decode(bytes, &WireConfig::default()).expect("vector decodes")
}

fn encode(p: &Pdu) -> Vec<u8> {
    p.to_bytes(&WireConfig::default())
}

fn assert_bytes(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(hex::encode(got), hex::encode(want), "{what}: bytes differ");
}

struct OpenPolicy;

impl LoginPolicy for OpenPolicy {
    fn lookup_target(&self, name: &str) -> TargetLookup {
        if name == TARGET {
            TargetLookup::Found {
                auth: AuthRequirement::None,
                alias: None,
            }
        } else {
            TargetLookup::NotFound
        }
    }
}

fn target_cfg() -> TargetLoginConfig {
    TargetLoginConfig {
        initial_stat_sn: 0x100,
        queue_depth: 32,
        new_tsih: 5,
        portal_group_tag: 1,
        ..TargetLoginConfig::default()
    }
}

// Login Request 1: security stage, T=1 CSG=0 NSG=1, DataSegmentLength 92.
const REQ1_BHS: &str = "43 81 00 00 00 00 00 5c  80 12 34 56 00 01 00 00
                        00 00 00 00 00 00 00 00  00 00 00 01 00 00 00 00
                        00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00";
const REQ1_TEXT: &[u8] = b"InitiatorName=iqn.2026-01.t:i\0SessionType=Normal\0TargetName=iqn.2026-01.t:d\0AuthMethod=None\0";

// Login Response 1: T=1 CSG=0 NSG=1, StatSN 0x100, ExpCmdSN 1, MaxCmdSN 32, 39 bytes + 1 pad.
const RESP1_BHS: &str = "23 81 00 00 00 00 00 27  80 12 34 56 00 01 00 00
                         00 00 00 00 00 00 00 00  00 00 01 00 00 00 00 01
                         00 00 00 20 00 00 00 00  00 00 00 00 00 00 00 00";
const RESP1_TEXT: &[u8] = b"TargetPortalGroupTag=1\0AuthMethod=None\0\0";

// Login Request 2: operational stage, T=1 CSG=1 NSG=3, ExpStatSN 0x101, 284 bytes.
const REQ2_BHS: &str = "43 87 00 00 00 00 01 1c  80 12 34 56 00 01 00 00
                        00 00 00 00 00 00 00 00  00 00 00 01 00 00 01 01
                        00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00";
const REQ2_TEXT: &[u8] = b"HeaderDigest=None\0DataDigest=None\0InitialR2T=Yes\0ImmediateData=Yes\0\
MaxBurstLength=262144\0FirstBurstLength=65536\0DefaultTime2Wait=2\0DefaultTime2Retain=20\0\
MaxOutstandingR2T=1\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0ErrorRecoveryLevel=0\0\
MaxConnections=1\0MaxRecvDataSegmentLength=8192\0";

// Final Login Response: T=1 CSG=1 NSG=3, TSIH 5, StatSN 0x101, 284 bytes.
const RESP2_BHS: &str = "23 87 00 00 00 00 01 1c  80 12 34 56 00 01 00 05
                         00 00 00 00 00 00 00 00  00 00 01 01 00 00 00 01
                         00 00 00 20 00 00 00 00  00 00 00 00 00 00 00 00";
const RESP2_TEXT: &[u8] = b"InitialR2T=Yes\0ImmediateData=Yes\0MaxBurstLength=262144\0\
HeaderDigest=None\0DataDigest=None\0FirstBurstLength=65536\0DefaultTime2Wait=2\0\
DefaultTime2Retain=20\0MaxOutstandingR2T=1\0DataPDUInOrder=Yes\0DataSequenceInOrder=Yes\0\
ErrorRecoveryLevel=0\0MaxConnections=1\0MaxRecvDataSegmentLength=8192\0";

#[test]
fn security_less_login_exchange_byte_exact() {
    let req1 = pdu_bytes(REQ1_BHS, REQ1_TEXT);
    let resp1 = pdu_bytes(RESP1_BHS, RESP1_TEXT);
    let req2 = pdu_bytes(REQ2_BHS, REQ2_TEXT);
    let resp2 = pdu_bytes(RESP2_BHS, RESP2_TEXT);

    // Initiator: produces exactly req1 and req2 given resp1 and resp2.
    let mut ini = InitiatorLogin::new(InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID));
    assert_bytes("request 1", &encode(&ini.start().unwrap()), &req1);
    let InitiatorStep::Send(r2) = ini.handle_response(&decode(&resp1)).unwrap() else {
        panic!("expected request 2")
    };
    assert_bytes("request 2", &encode(&r2), &req2);
    let InitiatorStep::Complete(io) = ini.handle_response(&decode(&resp2)).unwrap() else {
        panic!("expected completion")
    };
    assert_eq!(
        (io.tsih, io.exp_stat_sn, io.exp_cmd_sn, io.max_cmd_sn),
        (5, 0x102, 1, 32)
    );

    // Target: produces exactly resp1 and resp2 given req1 and req2.
    let mut tgt = TargetLogin::new(target_cfg());
    let TargetStep::Continue(a1) = tgt.handle_request(&decode(&req1), &OpenPolicy).unwrap() else {
        panic!()
    };
    assert_bytes("response 1", &encode(&a1), &resp1);
    let TargetStep::Complete { response, outcome } =
        tgt.handle_request(&decode(&req2), &OpenPolicy).unwrap()
    else {
        panic!()
    };
    assert_bytes("final response", &encode(&response), &resp2);
    assert_eq!(outcome.tsih, 5);
    assert_eq!(outcome.next_stat_sn, 0x102);
    assert_eq!(
        outcome.params, io.params,
        "both sides see the same parameters"
    );
    assert_eq!(io.params.target_portal_group_tag, Some(1));
}

#[test]
fn send_targets_discovery_byte_exact() {
    let request = pdu_bytes(
        "44 80 00 00 00 00 00 10  00 00 00 00 00 00 00 00
         00 00 00 11 ff ff ff ff  00 00 00 02 00 00 01 02
         00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00",
        b"SendTargets=All\0",
    );
    let response = pdu_bytes(
        "24 80 00 00 00 00 00 3a  00 00 00 00 00 00 00 00
         00 00 00 11 ff ff ff ff  00 00 01 02 00 00 00 02
         00 00 00 21 00 00 00 00  00 00 00 00 00 00 00 00",
        b"TargetName=iqn.2026-01.t:d\0TargetAddress=192.0.2.5:3260,1\0\0\0",
    );
    let records = vec![TargetRecord {
        name: TARGET.into(),
        addresses: vec!["192.0.2.5:3260,1".into()],
    }];

    let mut requester = TextRequester::new(0x11, true, 8192, 65536);
    assert_bytes(
        "SendTargets request",
        &encode(&requester.start(&send_targets_query("All"), 2, 0x102)),
        &request,
    );

    let mut responder = TextResponder::new(8192, 65536);
    let sn = StatusSn {
        stat_sn: 0x102,
        exp_cmd_sn: 2,
        max_cmd_sn: 0x21,
    };
    let TextStep::Request(keys) = responder.handle(&decode(&request), sn).unwrap() else {
        panic!()
    };
    assert_eq!(keys.get("SendTargets"), Some("All"));
    let answer = responder.respond(
        &send_targets_keys("All", &records, SessionType::Discovery, None),
        sn,
    );
    assert_bytes("SendTargets response", &encode(&answer), &response);

    let RequesterStep::Done(keys) = requester
        .handle_response(&decode(&response), 3, 0x103)
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(parse_send_targets(&keys).unwrap(), records);
}

struct ChapPolicy;

impl LoginPolicy for ChapPolicy {
    fn lookup_target(&self, _name: &str) -> TargetLookup {
        TargetLookup::Found {
            auth: AuthRequirement::Chap,
            alias: None,
        }
    }

    fn chap_credentials(&self, name: &str, _target: Option<&str>) -> Option<ChapCredentials> {
        (name == "user").then(|| ChapCredentials {
            initiator_secret: b"abcdefghijkl".to_vec(),
            target: None,
        })
    }
}

fn login_bhs(byte1: u8, dsl: u8, exp_stat_sn: u32) -> String {
    format!(
        "43 {byte1:02x} 00 00 00 00 00 {dsl:02x}  80 12 34 56 00 01 00 00
         00 00 00 00 00 00 00 00  00 00 00 01 {exp_stat_sn:08x}
         00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00"
    )
}

/// CHAP with a known secret and challenge: CHAP_R = MD5(CHAP_I || secret || CHAP_C),
/// computed here with the md-5 crate independently of the crate's CHAP code.
#[test]
fn chap_md5_exchange_byte_exact() {
    let challenge: Vec<u8> = (0u8..16).collect();
    let mut h = Md5::new();
    h.update([0x2a]);
    h.update(b"abcdefghijkl");
    h.update(&challenge);
    let expected_r = h.finalize();

    let mut tgt = TargetLogin::new(TargetLoginConfig {
        chap_algorithms: vec![ChapAlgorithm::Md5],
        chap_id: 0x2a,
        chap_challenge: challenge.clone(),
        ..target_cfg()
    });
    // 1: leading keys and AuthMethod=CHAP, T=0 (CSG 0, NSG 0). 92 bytes.
    let r1 = pdu_bytes(&login_bhs(0x00, 0x5c, 0), b"InitiatorName=iqn.2026-01.t:i\0SessionType=Normal\0TargetName=iqn.2026-01.t:d\0AuthMethod=CHAP\0");
    let TargetStep::Continue(a1) = tgt.handle_request(&decode(&r1), &ChapPolicy).unwrap() else {
        panic!()
    };
    assert_eq!(a1.data, b"TargetPortalGroupTag=1\0AuthMethod=CHAP\0");
    // 2: CHAP_A=5 (9 bytes + 3 pad).
    let r2 = pdu_bytes(&login_bhs(0x00, 0x09, 0x101), b"CHAP_A=5\0\0\0\0");
    let TargetStep::Continue(a2) = tgt.handle_request(&decode(&r2), &ChapPolicy).unwrap() else {
        panic!()
    };
    let want2 = pdu_bytes(
        "23 00 00 00 00 00 00 3d  80 12 34 56 00 01 00 00
         00 00 00 00 00 00 00 00  00 00 01 01 00 00 00 01
         00 00 00 20 00 00 00 00  00 00 00 00 00 00 00 00",
        b"CHAP_A=5\0CHAP_I=42\0CHAP_C=0x000102030405060708090a0b0c0d0e0f\0\0\0\0",
    );
    assert_bytes("challenge", &encode(&a2), &want2);
    // 3: CHAP_N=user, CHAP_R=0x<md5>, T=1 NSG=1.
    let text3 = format!("CHAP_N=user\0CHAP_R=0x{}\0", hex::encode(expected_r));
    assert_eq!(text3.len(), 12 + 42);
    let mut data3 = text3.into_bytes();
    data3.extend_from_slice(&[0, 0]);
    let r3 = pdu_bytes(&login_bhs(0x81, 0x36, 0x102), &data3);
    let TargetStep::Continue(a3) = tgt.handle_request(&decode(&r3), &ChapPolicy).unwrap() else {
        panic!()
    };
    let want3 = pdu_bytes(
        "23 81 00 00 00 00 00 00  80 12 34 56 00 01 00 00
         00 00 00 00 00 00 00 00  00 00 01 02 00 00 00 01
         00 00 00 20 00 00 00 00  00 00 00 00 00 00 00 00",
        b"",
    );
    assert_bytes(
        "authenticated, transit to operational",
        &encode(&a3),
        &want3,
    );

    // The initiator side computes the same CHAP_R from the same challenge PDU.
    let mut cfg = InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID);
    cfg.auth = InitiatorAuth::Chap(ChapInitiator::new(
        &[ChapAlgorithm::Md5],
        "user",
        b"abcdefghijkl".to_vec(),
    ));
    let mut ini = InitiatorLogin::new(cfg);
    ini.start().unwrap();
    let InitiatorStep::Send(i2) = ini.handle_response(&a1).unwrap() else {
        panic!()
    };
    assert_eq!(i2.data, b"CHAP_A=5\0");
    let InitiatorStep::Send(i3) = ini.handle_response(&a2).unwrap() else {
        panic!()
    };
    assert_bytes("initiator CHAP response", &encode(&i3), &r3);
}

/// An iSER SEND: the 28-byte iSER header (control PDU, WSV and RSV) in front of a
/// SCSI Command BHS, and the target's RDMA plan for it.
#[test]
fn iser_header_and_plan_byte_exact() {
    let bytes = hex::decode(
        "1c000000 00001234 00007f0000100200 00005678 00007f0000200000\
         01e10000 00000200 0000000000000000 00000007 00040000 00000009 00000003\
         2a000000 00000000 02000000 00000000"
            .replace(' ', ""),
    )
    .unwrap();
    assert_eq!(bytes.len(), 28 + 48);
    let mut send = bytes.clone();
    send.extend_from_slice(&[0xee; 512]);
    let msg = IserMessage::decode(&send, &PduLimits::default()).unwrap();
    let IserHeader::Control(ctl) = msg.header else {
        panic!()
    };
    assert_eq!(
        ctl.write,
        Some(RemoteBuffer {
            stag: 0x1234,
            va: 0x7f00_0010_0200
        })
    );
    assert_eq!(
        ctl.read,
        Some(RemoteBuffer {
            stag: 0x5678,
            va: 0x7f00_0020_0000
        })
    );
    let pdu = msg.pdu.clone().unwrap();
    let Header::ScsiCommand(cmd) = &pdu.header else {
        panic!()
    };
    assert!(cmd.read && cmd.write && cmd.final_);
    assert_eq!(cmd.expected_data_transfer_length, 0x40000);
    assert_eq!(pdu.data, vec![0xee; 512], "immediate data");
    assert_bytes("iSER SEND", &msg.to_bytes(&PduLimits::default()), &send);
    assert!(
        IserMessage::decode(&bytes, &PduLimits::default()).is_err(),
        "data segment missing"
    );

    // 256 KiB write with 512 bytes of immediate data: RDMA READs of at most 128 KiB from
    // the Write VA, which points just past the immediate data.
    let write_only = ScsiCommand {
        read: false,
        ..cmd.clone()
    };
    let plan = target_plan(
        &write_only,
        &IserControl {
            write: ctl.write,
            read: None,
        },
        512,
        131_072,
        1 << 20,
    )
    .unwrap();
    assert_eq!(
        plan.rdma_reads,
        vec![
            RdmaOp {
                remote: RemoteBuffer {
                    stag: 0x1234,
                    va: 0x7f00_0010_0200
                },
                buffer_offset: 512,
                length: 131_072
            },
            RdmaOp {
                remote: RemoteBuffer {
                    stag: 0x1234,
                    va: 0x7f00_0012_0200
                },
                buffer_offset: 131_584,
                length: 130_560
            },
        ]
    );
    assert!(plan.rdma_writes.is_empty());
    assert!(target_plan(&write_only, &IserControl::default(), 512, 131_072, 1 << 20).is_err());
}
