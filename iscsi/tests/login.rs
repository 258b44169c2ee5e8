//! Login state machines: an initiator and a target run against each other in memory
//! (every PDU goes through the codec), plus failure statuses and continuation.

use iscsi::chap::{ChapAlgorithm, ChapCredentials, ChapInitiator};
use iscsi::login::*;
use iscsi::negotiate::{DigestKind, LocalParams, SessionType};
use iscsi::pdu::*;
use iscsi::text::TextKeys;
use iscsi::{Codec, WireConfig};

const TARGET: &str = "iqn.2026-01.org.example:disk1";
const INITIATOR: &str = "iqn.2026-01.org.example:host1";
const ISID: Isid = Isid([0x80, 0x12, 0x34, 0x56, 0x00, 0x01]);

#[derive(Default)]
struct Policy {
    chap: bool,
    mutual: bool,
    deny: bool,
    moved: Option<String>,
    local: LocalParams,
}

impl LoginPolicy for Policy {
    fn lookup_target(&self, name: &str) -> TargetLookup {
        if let Some(address) = &self.moved {
            return TargetLookup::Moved {
                address: address.clone(),
                permanent: false,
            };
        }
        if name == TARGET {
            TargetLookup::Found {
                auth: if self.chap {
                    AuthRequirement::Chap
                } else {
                    AuthRequirement::None
                },
                alias: Some("disk one".into()),
            }
        } else {
            TargetLookup::NotFound
        }
    }

    fn authorize(&self, _initiator: &str, _target: Option<&str>) -> bool {
        !self.deny
    }

    fn chap_credentials(&self, name: &str, _target: Option<&str>) -> Option<ChapCredentials> {
        (name == "host1-user").then(|| ChapCredentials {
            initiator_secret: b"initiator-secret-12".to_vec(),
            target: self
                .mutual
                .then(|| ("disk1-user".to_owned(), b"target-secret-34".to_vec())),
        })
    }

    fn local_params(&self, _target: Option<&str>) -> LocalParams {
        self.local.clone()
    }
}

fn through_wire(p: &Pdu) -> Pdu {
    let c = WireConfig::default();
    Pdu::decode(&p.to_bytes(&c), &c).expect("PDU round trip")
}

/// Run a login to completion; returns both outcomes or the failure each side saw.
fn run(
    icfg: InitiatorLoginConfig,
    policy: &Policy,
) -> (
    Result<InitiatorLoginOutcome, LoginFailure>,
    Result<TargetLoginOutcome, LoginError>,
    usize,
) {
    let mut ini = InitiatorLogin::new(icfg);
    let mut tgt = TargetLogin::new(TargetLoginConfig {
        new_tsih: 0x0101,
        initial_stat_sn: 0x1000,
        chap_id: 42,
        chap_challenge: (0u8..32).collect(),
        ..TargetLoginConfig::default()
    });
    let mut req = ini.start().unwrap();
    let mut target_result = None;
    for round in 1..40 {
        let step = tgt.handle_request(&through_wire(&req), policy).unwrap();
        let resp = match step {
            TargetStep::Continue(r) => r,
            TargetStep::Complete { response, outcome } => {
                target_result = Some(Ok(outcome));
                response
            }
            TargetStep::Failed { response, error } => {
                target_result = Some(Err(error));
                response
            }
        };
        match ini.handle_response(&through_wire(&resp)) {
            Ok(InitiatorStep::Send(next)) => {
                assert!(
                    target_result.is_none(),
                    "initiator continues after the target finished"
                );
                req = next;
            }
            Ok(InitiatorStep::Complete(o)) => {
                return (Ok(o), target_result.expect("target finished"), round)
            }
            Err(e) => {
                let t =
                    target_result.unwrap_or(Err(LoginError::Protocol("initiator gave up first")));
                return (Err(e), t, round);
            }
        }
    }
    panic!("login did not finish");
}

#[test]
fn no_auth_normal_session() {
    let policy = Policy::default();
    let (i, t, rounds) = run(
        InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID),
        &policy,
    );
    let (i, t) = (i.unwrap(), t.unwrap());
    assert_eq!(rounds, 2, "security then operational");
    assert_eq!(i.tsih, 0x0101);
    assert_eq!(t.tsih, 0x0101);
    assert_eq!(t.initiator_name, INITIATOR);
    assert_eq!(t.target_name.as_deref(), Some(TARGET));
    assert_eq!(i.params.target_portal_group_tag, Some(1));
    assert_eq!(i.params.target_alias.as_deref(), Some("disk one"));
    assert_eq!(t.params.initiator_name.as_deref(), Some(INITIATOR));
    assert_eq!(i.exp_stat_sn, 0x1002);
    assert_eq!(t.next_stat_sn, 0x1002);
    assert_eq!((i.cmd_sn, i.exp_cmd_sn, i.max_cmd_sn), (1, 1, 128));
    assert_eq!(t.exp_cmd_sn, 1);
    // Both sides agree on every negotiated value.
    let (mut a, mut b) = (i.params.clone(), t.params.clone());
    for p in [&mut a, &mut b] {
        p.initiator_name = None;
        p.target_name = None;
        p.target_alias = None;
        p.target_portal_group_tag = None;
    }
    assert_eq!(a, b);
}

#[test]
fn negotiated_values_reach_both_sides() {
    let target_local = LocalParams {
        max_burst_length: 131_072,
        max_recv_data_segment_length: 32_768,
        header_digest: vec![DigestKind::Crc32c, DigestKind::None],
        data_digest: vec![DigestKind::None],
        immediate_data: false,
        default_time2wait: 4,
        ..LocalParams::default()
    };
    let policy = Policy {
        local: target_local,
        ..Policy::default()
    };
    let mut cfg = InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID);
    cfg.local = LocalParams {
        header_digest: vec![DigestKind::Crc32c, DigestKind::None],
        data_digest: vec![DigestKind::Crc32c, DigestKind::None],
        max_recv_data_segment_length: 65_536,
        initial_r2t: false,
        ..LocalParams::default()
    };
    let (i, t, _) = run(cfg, &policy);
    let (i, t) = (i.unwrap().params, t.unwrap().params);
    for p in [&i, &t] {
        assert!(p.header_digest);
        assert!(!p.data_digest);
        assert_eq!(p.max_burst_length, 131_072);
        assert!(!p.immediate_data);
        assert!(p.initial_r2t, "InitialR2T is OR: the target's Yes wins");
        assert_eq!(p.default_time2wait, 4);
        assert_eq!(p.initiator_max_recv_data_segment_length, 65_536);
        assert_eq!(p.target_max_recv_data_segment_length, 32_768);
    }
    assert_eq!(i.max_send_data_segment(Role::Initiator), 32_768);
    assert_eq!(t.max_send_data_segment(Role::Target), 65_536);
}

#[test]
fn target_offers_its_own_limits_when_the_initiator_does_not() {
    let policy = Policy {
        local: LocalParams {
            max_burst_length: 65_536,
            ..LocalParams::default()
        },
        ..Policy::default()
    };
    let mut tgt = TargetLogin::new(TargetLoginConfig::default());
    // A minimal initiator, driven by hand: it offers only HeaderDigest.
    let r1 = login_request(
        Stage::Security,
        Stage::Operational,
        true,
        &[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("AuthMethod", "None"),
        ],
    );
    let TargetStep::Continue(a1) = tgt.handle_request(&r1, &policy).unwrap() else {
        panic!()
    };
    let Header::LoginResponse(h) = &a1.header else {
        panic!()
    };
    assert!(h.transit && h.nsg == Stage::Operational);
    let r2 = login_request(
        Stage::Operational,
        Stage::FullFeature,
        true,
        &[("HeaderDigest", "None")],
    );
    let TargetStep::Continue(a2) = tgt.handle_request(&r2, &policy).unwrap() else {
        panic!("target should offer first")
    };
    let Header::LoginResponse(h) = &a2.header else {
        panic!()
    };
    assert!(!h.transit, "target waits for answers to its offers");
    let offered = TextKeys::parse(&a2.data).unwrap();
    assert_eq!(offered.get("MaxBurstLength"), Some("65536"));
    assert_eq!(offered.get("MaxRecvDataSegmentLength"), Some("8192"));
    assert_eq!(
        offered.get("ImmediateData"),
        None,
        "defaults are not offered"
    );
    let r3 = login_request(
        Stage::Operational,
        Stage::FullFeature,
        true,
        &[("MaxBurstLength", "65536")],
    );
    let TargetStep::Complete { outcome, .. } = tgt.handle_request(&r3, &policy).unwrap() else {
        panic!()
    };
    assert_eq!(outcome.params.max_burst_length, 65_536);
    assert_eq!(outcome.params.first_burst_length, 65_536);
}

fn chap_config(mutual_secret: Option<&[u8]>, secret: &[u8]) -> InitiatorLoginConfig {
    let mut cfg = InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID);
    let mut chap = ChapInitiator::new(&[ChapAlgorithm::Md5], "host1-user", secret.to_vec());
    if let Some(s) = mutual_secret {
        chap = chap.with_mutual(s.to_vec(), 7, vec![0xa5; 16]).unwrap();
    }
    cfg.auth = InitiatorAuth::Chap(chap);
    cfg
}

#[test]
fn chap_one_way_and_mutual() {
    let policy = Policy {
        chap: true,
        ..Policy::default()
    };
    let (i, t, rounds) = run(chap_config(None, b"initiator-secret-12"), &policy);
    assert!(i.is_ok(), "{i:?}");
    assert_eq!(t.unwrap().chap_name.as_deref(), Some("host1-user"));
    assert_eq!(rounds, 4, "AuthMethod, CHAP_A, CHAP_R, operational");

    let policy = Policy {
        chap: true,
        mutual: true,
        ..Policy::default()
    };
    let (i, t, _) = run(
        chap_config(Some(b"target-secret-34"), b"initiator-secret-12"),
        &policy,
    );
    assert!(i.is_ok() && t.is_ok());

    // The target proves a different secret than the initiator expects: the initiator
    // gives up while the target is still in login.
    let (i, t, _) = run(
        chap_config(Some(b"other-target-secret"), b"initiator-secret-12"),
        &policy,
    );
    assert_eq!(t, Err(LoginError::Protocol("initiator gave up first")));
    assert!(
        matches!(i, Err(LoginFailure::Chap(iscsi::chap::ChapError::Mismatch))),
        "{i:?}"
    );
}

#[test]
fn chap_wrong_secret_is_authentication_failure() {
    let policy = Policy {
        chap: true,
        ..Policy::default()
    };
    let (i, t, _) = run(chap_config(None, b"wrong-secret"), &policy);
    assert_eq!(
        i,
        Err(LoginFailure::Status(LoginStatus::AUTHENTICATION_FAILURE))
    );
    assert_eq!(t.unwrap_err().status(), LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn chap_required_but_initiator_offers_none() {
    let policy = Policy {
        chap: true,
        ..Policy::default()
    };
    let (i, t, rounds) = run(
        InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID),
        &policy,
    );
    assert_eq!(rounds, 1);
    assert_eq!(
        i,
        Err(LoginFailure::Status(LoginStatus::AUTHENTICATION_FAILURE))
    );
    assert!(matches!(t, Err(LoginError::Authentication(_))));
}

#[test]
fn failure_statuses() {
    let (i, _, _) = run(
        InitiatorLoginConfig::normal(INITIATOR, "iqn.2026-01.org.example:nope", ISID),
        &Policy::default(),
    );
    assert_eq!(i, Err(LoginFailure::Status(LoginStatus::NOT_FOUND)));

    let (i, t, _) = run(
        InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID),
        &Policy {
            deny: true,
            ..Policy::default()
        },
    );
    assert_eq!(
        i,
        Err(LoginFailure::Status(LoginStatus::AUTHORIZATION_FAILURE))
    );
    assert_eq!(t, Err(LoginError::NotAuthorized(INITIATOR.into())));

    let moved = Policy {
        moved: Some("192.0.2.7:3260,2".into()),
        ..Policy::default()
    };
    let (i, t, _) = run(
        InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID),
        &moved,
    );
    assert_eq!(
        i,
        Err(LoginFailure::Redirect {
            address: "192.0.2.7:3260,2".into(),
            permanent: false
        })
    );
    assert_eq!(
        t.unwrap_err().status(),
        LoginStatus::TARGET_MOVED_TEMPORARILY
    );
}

fn login_request(csg: Stage, nsg: Stage, transit: bool, keys: &[(&str, &str)]) -> Pdu {
    let mut k = TextKeys::new();
    for (a, b) in keys {
        k.push(*a, *b);
    }
    Pdu::with_data(
        LoginRequest {
            transit,
            continue_: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: ISID,
            tsih: 0,
            itt: 9,
            cid: 1,
            cmd_sn: 5,
            exp_stat_sn: 0,
        },
        k.encode(),
    )
}

fn status_of(step: &TargetStep) -> LoginStatus {
    let (TargetStep::Continue(r)
    | TargetStep::Failed { response: r, .. }
    | TargetStep::Complete { response: r, .. }) = step;
    match &r.header {
        Header::LoginResponse(h) => h.status,
        other => panic!("not a login response: {other:?}"),
    }
}

#[test]
fn target_rejects_bad_requests() {
    let p = Policy::default();
    let t = || TargetLogin::new(TargetLoginConfig::default());
    // Missing InitiatorName.
    let s = t()
        .handle_request(
            &login_request(
                Stage::Security,
                Stage::Operational,
                true,
                &[("TargetName", TARGET)],
            ),
            &p,
        )
        .unwrap();
    assert_eq!(status_of(&s), LoginStatus::MISSING_PARAMETER);
    // Missing TargetName on a normal session.
    let s = t()
        .handle_request(
            &login_request(
                Stage::Security,
                Stage::Operational,
                true,
                &[("InitiatorName", INITIATOR)],
            ),
            &p,
        )
        .unwrap();
    assert_eq!(status_of(&s), LoginStatus::MISSING_PARAMETER);
    // Unsupported version.
    let mut r = login_request(
        Stage::Security,
        Stage::Operational,
        true,
        &[("InitiatorName", INITIATOR), ("TargetName", TARGET)],
    );
    if let Header::LoginRequest(h) = &mut r.header {
        h.version_min = 2;
        h.version_max = 3;
    }
    let s = t().handle_request(&r, &p).unwrap();
    assert_eq!(status_of(&s), LoginStatus::UNSUPPORTED_VERSION);
    // A SCSI command during login.
    let s = t()
        .handle_request(&Pdu::new(ScsiCommand::default()), &p)
        .unwrap();
    assert_eq!(status_of(&s), LoginStatus::INVALID_DURING_LOGIN);
    // Joining a session that does not exist.
    let mut r = login_request(
        Stage::Security,
        Stage::Operational,
        true,
        &[("InitiatorName", INITIATOR), ("TargetName", TARGET)],
    );
    if let Header::LoginRequest(h) = &mut r.header {
        h.tsih = 77;
    }
    let s = t().handle_request(&r, &p).unwrap();
    assert_eq!(status_of(&s), LoginStatus::SESSION_DOES_NOT_EXIST);
    // Unknown session type.
    let s = t()
        .handle_request(
            &login_request(
                Stage::Security,
                Stage::Operational,
                true,
                &[("InitiatorName", INITIATOR), ("SessionType", "Other")],
            ),
            &p,
        )
        .unwrap();
    assert_eq!(status_of(&s), LoginStatus::SESSION_TYPE_NOT_SUPPORTED);
    // Skipping the security stage when CHAP is required.
    let chap = Policy {
        chap: true,
        ..Policy::default()
    };
    let s = t()
        .handle_request(
            &login_request(
                Stage::Operational,
                Stage::FullFeature,
                true,
                &[("InitiatorName", INITIATOR), ("TargetName", TARGET)],
            ),
            &chap,
        )
        .unwrap();
    assert_eq!(status_of(&s), LoginStatus::AUTHENTICATION_FAILURE);
    // Going back a stage.
    let mut tl = t();
    let s = tl
        .handle_request(
            &login_request(
                Stage::Operational,
                Stage::Security,
                true,
                &[("InitiatorName", INITIATOR), ("TargetName", TARGET)],
            ),
            &p,
        )
        .unwrap();
    assert_eq!(status_of(&s), LoginStatus::INITIATOR_ERROR);
    assert!(tl.is_finished());
    assert_eq!(
        tl.handle_request(
            &login_request(Stage::Operational, Stage::FullFeature, true, &[]),
            &p
        ),
        Err(LoginFinished)
    );
}

#[test]
fn skip_security_stage_and_continue_text_across_pdus() {
    let p = Policy::default();
    let mut tl = TargetLogin::new(TargetLoginConfig::default());
    let full = login_request(
        Stage::Operational,
        Stage::FullFeature,
        true,
        &[
            ("InitiatorName", INITIATOR),
            ("TargetName", TARGET),
            ("MaxBurstLength", "65536"),
            ("ImmediateData", "No"),
        ],
    );
    // Split the text in two PDUs: C=1 on the first (and T=0), then the rest with T=1.
    let (a, b) = full.data.split_at(20);
    let mut first = full.clone();
    first.data = a.to_vec();
    if let Header::LoginRequest(h) = &mut first.header {
        h.transit = false;
        h.continue_ = true;
    }
    let mut second = full.clone();
    second.data = b.to_vec();
    let TargetStep::Continue(ack) = tl.handle_request(&first, &p).unwrap() else {
        panic!()
    };
    assert!(ack.data.is_empty());
    let TargetStep::Complete { response, outcome } = tl.handle_request(&second, &p).unwrap() else {
        panic!()
    };
    let keys = TextKeys::parse(&response.data).unwrap();
    assert_eq!(keys.get("MaxBurstLength"), Some("65536"));
    assert_eq!(keys.get("ImmediateData"), Some("No"));
    assert_eq!(keys.get("TargetPortalGroupTag"), Some("1"));
    assert_eq!(outcome.params.max_burst_length, 65_536);
    assert_eq!(outcome.exp_cmd_sn, 5);
}

#[test]
fn discovery_session() {
    let (i, t, _) = run(
        InitiatorLoginConfig::discovery(INITIATOR, ISID),
        &Policy::default(),
    );
    let (i, t) = (i.unwrap(), t.unwrap());
    assert_eq!(t.session_type, SessionType::Discovery);
    assert_eq!(i.params.session_type, SessionType::Discovery);
    assert_eq!(t.target_name, None);
}

#[test]
fn initiator_rejects_bad_responses() {
    let mut ini = InitiatorLogin::new(InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID));
    let _ = ini.start().unwrap();
    // A response for another ITT.
    let bad = Pdu::new(LoginResponse {
        transit: true,
        continue_: false,
        csg: Stage::Security,
        nsg: Stage::Operational,
        version_max: 0,
        version_active: 0,
        isid: ISID,
        tsih: 0,
        itt: 99,
        stat_sn: 0,
        exp_cmd_sn: 1,
        max_cmd_sn: 1,
        status: LoginStatus::SUCCESS,
    });
    assert!(matches!(
        ini.handle_response(&bad),
        Err(LoginFailure::Protocol(_))
    ));
    assert_eq!(ini.handle_response(&bad), Err(LoginFailure::Finished));
}

#[test]
fn iser_login_negotiates_rdma_keys() {
    let target_local = LocalParams {
        rdma_extensions: true,
        header_digest: vec![DigestKind::Crc32c, DigestKind::None],
        initiator_recv_data_segment_length: 8192,
        target_recv_data_segment_length: 262_144,
        max_outstanding_unexpected_pdus: 0,
        ..LocalParams::default()
    };
    let policy = Policy {
        local: target_local,
        ..Policy::default()
    };
    let mut cfg = InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID);
    cfg.local = LocalParams {
        rdma_extensions: true,
        header_digest: vec![DigestKind::Crc32c],
        initiator_recv_data_segment_length: 65_536,
        target_recv_data_segment_length: 65_536,
        max_outstanding_unexpected_pdus: 32,
        ..LocalParams::default()
    };
    let (i, t, _) = run(cfg, &policy);
    let (i, t) = (i.unwrap().params, t.unwrap().params);
    assert_eq!(i, t);
    assert!(i.rdma_extensions);
    assert!(!i.header_digest, "digests are irrelevant over iSER");
    assert_eq!(i.initiator_recv_data_segment_length, 8192);
    assert_eq!(i.target_recv_data_segment_length, 65_536);
    assert_eq!(i.max_outstanding_unexpected_pdus, 32, "0 means unlimited");
    assert_eq!(i.max_send_data_segment(Role::Initiator), 65_536);
    assert_eq!(i.max_send_data_segment(Role::Target), 8192);
    assert_eq!(i.digests(), iscsi::Digests::NONE);

    // A TCP-only target answers RDMAExtensions=No: the iSER keys become irrelevant.
    let (i, _, _) = run(
        {
            let mut c = InitiatorLoginConfig::normal(INITIATOR, TARGET, ISID);
            c.local.rdma_extensions = true;
            c
        },
        &Policy::default(),
    );
    let i = i.unwrap().params;
    assert!(!i.rdma_extensions);
    assert_eq!(i.initiator_recv_data_segment_length, 8192);
}
