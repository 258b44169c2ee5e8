//! Negotiation properties: for AND/OR/MIN/MAX keys the result does not depend on
//! which side offered; both sides always agree; a full login with random parameters on
//! each side ends with the result functions applied.

use iscsi::login::*;
use iscsi::negotiate::*;
use iscsi::pdu::{Isid, Role};
use iscsi::text::TextKeys;
use proptest::prelude::*;

fn digests() -> impl Strategy<Value = Vec<DigestKind>> {
    prop_oneof![
        Just(vec![DigestKind::None]),
        Just(vec![DigestKind::Crc32c]),
        Just(vec![DigestKind::Crc32c, DigestKind::None]),
        Just(vec![DigestKind::None, DigestKind::Crc32c]),
    ]
}

prop_compose! {
    fn local()(
        header_digest in digests(),
        data_digest in digests(),
        max_connections in 1u32..=65535,
        bools in any::<[bool; 5]>(),
        max_recv_data_segment_length in 512u32..=16_777_215,
        max_burst_length in 512u32..=16_777_215,
        first_burst_length in 512u32..=16_777_215,
        default_time2wait in 0u32..=3600,
        default_time2retain in 0u32..=3600,
        max_outstanding_r2t in 1u32..=65535,
        error_recovery_level in 0u32..=2,
        iser in (512u32..=16_777_215, 512u32..=16_777_215, prop_oneof![Just(0u32), 1u32..100]),
    ) -> LocalParams {
        LocalParams {
            header_digest,
            data_digest,
            max_connections,
            initial_r2t: bools[0],
            immediate_data: bools[1],
            max_recv_data_segment_length,
            max_burst_length,
            first_burst_length,
            default_time2wait,
            default_time2retain,
            max_outstanding_r2t,
            data_pdu_in_order: bools[2],
            data_sequence_in_order: bools[3],
            error_recovery_level,
            rdma_extensions: bools[4],
            initiator_recv_data_segment_length: iser.0,
            target_recv_data_segment_length: iser.1,
            max_outstanding_unexpected_pdus: iser.2,
        }
    }
}

const SYMMETRIC: &[&str] = &[
    "InitialR2T",
    "ImmediateData",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "RDMAExtensions",
    "MaxBurstLength",
    "MaxOutstandingR2T",
    "ErrorRecoveryLevel",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxConnections",
    "MaxOutstandingUnexpectedPDUs",
];

/// `offerer` offers `key`, `responder` answers; returns both sides' result.
fn negotiate_key(
    key: &str,
    offerer: &LocalParams,
    responder: &LocalParams,
) -> (Option<String>, Option<String>) {
    let mut o = Negotiation::new(Role::Initiator, offerer.clone());
    let mut r = Negotiation::new(Role::Target, responder.clone());
    // iSER keys are only relevant once RDMAExtensions=Yes is agreed.
    if key == "MaxOutstandingUnexpectedPDUs" {
        let mut k = TextKeys::new();
        k.push("RDMAExtensions", "Yes");
        let mut yes = offerer.clone();
        yes.rdma_extensions = true;
        o = Negotiation::new(Role::Initiator, yes);
        let mut ryes = responder.clone();
        ryes.rdma_extensions = true;
        r = Negotiation::new(Role::Target, ryes);
        let a = r.handle(&o.offer(&["RDMAExtensions"])).unwrap();
        o.handle(&a).unwrap();
    }
    let offer = o.offer(&[key]);
    let answer = r.handle(&offer).unwrap();
    o.handle(&answer).unwrap();
    assert!(o.is_settled());
    (
        o.result(key).map(str::to_owned),
        r.result(key).map(str::to_owned),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn result_does_not_depend_on_who_offers(a in local(), b in local()) {
        for key in SYMMETRIC {
            let (ab_o, ab_r) = negotiate_key(key, &a, &b);
            let (ba_o, ba_r) = negotiate_key(key, &b, &a);
            prop_assert_eq!(&ab_o, &ab_r, "{} sides disagree", key);
            prop_assert_eq!(&ba_o, &ba_r, "{} sides disagree", key);
            prop_assert_eq!(&ab_o, &ba_o, "{} depends on the offerer", key);
        }
    }

    #[test]
    fn digest_lists_pick_a_common_value(a in digests(), b in digests()) {
        let la = LocalParams { header_digest: a.clone(), ..LocalParams::default() };
        let lb = LocalParams { header_digest: b.clone(), ..LocalParams::default() };
        let mut o = Negotiation::new(Role::Initiator, la);
        let mut r = Negotiation::new(Role::Target, lb);
        let answer = r.handle(&o.offer(&["HeaderDigest"])).unwrap();
        o.handle(&answer).unwrap();
        let common = a.iter().find(|d| b.contains(d));
        match common {
            Some(d) => {
                let want = if *d == DigestKind::Crc32c { "CRC32C" } else { "None" };
                prop_assert_eq!(o.result("HeaderDigest"), Some(want));
                prop_assert_eq!(r.result("HeaderDigest"), Some(want));
            }
            None => {
                prop_assert_eq!(answer.get("HeaderDigest"), Some(REJECT));
                prop_assert_eq!(o.finish().unwrap().header_digest, false);
            }
        }
    }

    #[test]
    fn full_login_applies_result_functions(a in local(), b in local()) {
        struct P(LocalParams);
        impl LoginPolicy for P {
            fn lookup_target(&self, _: &str) -> TargetLookup {
                TargetLookup::Found { auth: AuthRequirement::None, alias: None }
            }
            fn local_params(&self, _: Option<&str>) -> LocalParams {
                self.0.clone()
            }
        }
        let mut cfg = InitiatorLoginConfig::normal("iqn.2026-01.t:i", "iqn.2026-01.t:d", Isid([0x80, 0, 0, 0, 0, 1]));
        cfg.local = a.clone();
        let mut ini = InitiatorLogin::new(cfg);
        let mut tgt = TargetLogin::new(TargetLoginConfig::default());
        let policy = P(b.clone());
        let mut req = ini.start().unwrap();
        let mut result = None;
        for _ in 0..10 {
            let resp = match tgt.handle_request(&req, &policy).unwrap() {
                TargetStep::Continue(r) => r,
                TargetStep::Complete { response, outcome } => {
                    result = Some(outcome);
                    response
                }
                TargetStep::Failed { error, .. } => panic!("target failed: {error}"),
            };
            match ini.handle_response(&resp).unwrap() {
                InitiatorStep::Send(next) => req = next,
                InitiatorStep::Complete(io) => {
                    let t = result.take().expect("target completed");
                    prop_assert_eq!(&io.params, &t.params);
                    let p = io.params;
                    prop_assert_eq!(p.max_burst_length, a.max_burst_length.min(b.max_burst_length));
                    prop_assert_eq!(p.initial_r2t, a.initial_r2t || b.initial_r2t);
                    prop_assert_eq!(p.immediate_data, a.immediate_data && b.immediate_data);
                    prop_assert_eq!(p.default_time2wait, a.default_time2wait.max(b.default_time2wait));
                    prop_assert_eq!(p.error_recovery_level as u32, a.error_recovery_level.min(b.error_recovery_level));
                    prop_assert_eq!(p.rdma_extensions, a.rdma_extensions && b.rdma_extensions);
                    prop_assert!(p.first_burst_length <= p.max_burst_length);
                    if p.initial_r2t && !p.immediate_data {
                        prop_assert_eq!(p.first_burst_length, 0);
                    }
                    if p.rdma_extensions {
                        prop_assert_eq!(p.target_recv_data_segment_length, a.target_recv_data_segment_length.min(b.target_recv_data_segment_length));
                        prop_assert_eq!(p.digests(), iscsi::Digests::NONE);
                    } else {
                        prop_assert_eq!(p.initiator_max_recv_data_segment_length, a.max_recv_data_segment_length);
                        prop_assert_eq!(p.target_max_recv_data_segment_length, b.max_recv_data_segment_length);
                    }
                    return Ok(());
                }
            }
        }
        prop_assert!(false, "login did not complete");
    }
}
