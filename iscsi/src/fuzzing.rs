//! Entry points of the cargo-fuzz targets in `iscsi/fuzz/`, shared with the seed-corpus
//! smoke test so that `cargo test` runs the same code. Each function takes arbitrary
//! bytes, must never panic on them, and asserts the codec's round-trip invariants
//! (a failed assertion is a bug the fuzzer reports).

use crate::chap::{ChapAlgorithm, ChapCredentials, ChapInitiator};
use crate::codec::Codec;
use crate::digest::Digests;
use crate::framer::Framer;
use crate::iser::IserMessage;
use crate::login::{
    AuthRequirement, InitiatorAuth, InitiatorLogin, InitiatorLoginConfig, InitiatorStep,
    LoginPolicy, TargetLogin, TargetLoginConfig, TargetLookup, TargetStep,
};
use crate::pdu::{Isid, Pdu, PduLimits, WireConfig};
use crate::text::TextKeys;

/// Target served without authentication.
pub const OPEN_TARGET: &str = "iqn.2026-01.org.example:fuzz";
/// Target served with CHAP.
pub const CHAP_TARGET: &str = "iqn.2026-01.org.example:fuzz-chap";
/// CHAP user of [`CHAP_TARGET`].
pub const CHAP_USER: &str = "fuzz-user";
/// CHAP secret of [`CHAP_USER`].
pub const CHAP_SECRET: &[u8] = b"fuzz-secret-123";
/// Secret the target proves itself with (mutual CHAP).
pub const CHAP_TARGET_SECRET: &[u8] = b"fuzz-target-456";
/// ISID of the fuzzed initiator.
pub const ISID: Isid = Isid([0x80, 0, 0, 0x2a, 0, 1]);

/// The fixed policy of the login fuzz targets.
#[derive(Debug, Clone, Copy, Default)]
pub struct FuzzPolicy;

impl LoginPolicy for FuzzPolicy {
    fn lookup_target(&self, name: &str) -> TargetLookup {
        match name {
            OPEN_TARGET => TargetLookup::Found {
                auth: AuthRequirement::None,
                alias: Some("fuzz".into()),
            },
            CHAP_TARGET => TargetLookup::Found {
                auth: AuthRequirement::Chap,
                alias: None,
            },
            "iqn.2026-01.org.example:moved" => TargetLookup::Moved {
                address: "192.0.2.1:3260,1".into(),
                permanent: false,
            },
            _ => TargetLookup::NotFound,
        }
    }

    fn chap_credentials(&self, chap_name: &str, _target: Option<&str>) -> Option<ChapCredentials> {
        (chap_name == CHAP_USER).then(|| ChapCredentials {
            initiator_secret: CHAP_SECRET.to_vec(),
            target: Some(("fuzz-target".into(), CHAP_TARGET_SECRET.to_vec())),
        })
    }
}

fn target_config() -> TargetLoginConfig {
    TargetLoginConfig {
        chap_id: 1,
        chap_challenge: vec![0x5a; 16],
        new_tsih: 7,
        ..TargetLoginConfig::default()
    }
}

/// Initiator configurations the transcripts and the initiator fuzz target use:
/// 0 open target, 1 CHAP, 2 mutual CHAP, 3 discovery.
pub fn initiator_config(scenario: u8) -> InitiatorLoginConfig {
    let mut cfg =
        InitiatorLoginConfig::normal("iqn.2026-01.org.example:fuzz-host", OPEN_TARGET, ISID);
    match scenario % 4 {
        0 => {}
        1 => {
            cfg.target_name = Some(CHAP_TARGET.into());
            cfg.auth = InitiatorAuth::Chap(ChapInitiator::new(
                &[ChapAlgorithm::Md5],
                CHAP_USER,
                CHAP_SECRET.to_vec(),
            ));
        }
        2 => {
            cfg.target_name = Some(CHAP_TARGET.into());
            let chap = ChapInitiator::new(
                &[ChapAlgorithm::Sha256, ChapAlgorithm::Md5],
                CHAP_USER,
                CHAP_SECRET.to_vec(),
            )
            .with_mutual(CHAP_TARGET_SECRET.to_vec(), 9, vec![0xa5; 16]);
            if let Ok(c) = chap {
                cfg.auth = InitiatorAuth::Chap(c);
            }
        }
        _ => cfg = InitiatorLoginConfig::discovery("iqn.2026-01.org.example:fuzz-host", ISID),
    }
    cfg
}

/// Run a login of `scenario` between the two machines and return the request and
/// response byte streams (the seeds of the login fuzz targets).
pub fn login_transcript(scenario: u8) -> (Vec<u8>, Vec<u8>) {
    let c = WireConfig::default();
    let (mut requests, mut responses) = (Vec::new(), Vec::new());
    let mut ini = InitiatorLogin::new(initiator_config(scenario));
    let mut tgt = TargetLogin::new(target_config());
    let Ok(mut req) = ini.start() else {
        return (requests, responses);
    };
    for _ in 0..32 {
        req.encode(&c, &mut requests);
        let resp = match tgt.handle_request(&req, &FuzzPolicy) {
            Ok(TargetStep::Continue(r)) => r,
            Ok(TargetStep::Complete { response, .. } | TargetStep::Failed { response, .. }) => {
                response.encode(&c, &mut responses);
                break;
            }
            Err(_) => break,
        };
        resp.encode(&c, &mut responses);
        match ini.handle_response(&resp) {
            Ok(InitiatorStep::Send(next)) => req = next,
            _ => break,
        }
    }
    (requests, responses)
}

fn wire_config(selector: u8) -> WireConfig {
    WireConfig {
        digests: Digests {
            header: selector & 1 != 0,
            data: selector & 2 != 0,
        },
        limits: PduLimits {
            max_recv_data_segment_length: if selector & 4 != 0 { 512 } else { 8192 },
        },
    }
}

/// Decode one whole PDU (first byte selects digests and limits); a decoded PDU must
/// re-encode to bytes that decode to the same PDU.
pub fn pdu(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let cfg = wire_config(sel);
    if let Ok(p) = Pdu::decode(rest, &cfg) {
        let again = p.to_bytes(&cfg);
        let back = Pdu::decode(&again, &cfg);
        assert_eq!(
            back.as_ref(),
            Ok(&p),
            "re-encoded PDU must decode to itself"
        );
    }
}

/// Feed a byte stream to the framer in chunks (first byte: digests and limits; second
/// byte: chunk size). Never takes more than offered; every PDU round-trips.
pub fn framer(data: &[u8]) {
    let [sel, chunk, rest @ ..] = data else {
        return;
    };
    let cfg = wire_config(*sel);
    let chunk = usize::from(*chunk).max(1);
    let mut f = Framer::new(cfg);
    let mut input = rest;
    for _ in 0..=rest.len() {
        if input.is_empty() || f.is_broken() {
            break;
        }
        let take = chunk.min(input.len());
        let n = f.feed(&input[..take]);
        assert!(n <= take);
        input = &input[n..];
        while let Some(r) = f.poll() {
            if let Ok(p) = r {
                assert_eq!(Pdu::decode(&p.to_bytes(&cfg), &cfg).as_ref(), Ok(&p));
            }
        }
    }
}

fn frame_all(bytes: &[u8]) -> Vec<Pdu> {
    let mut f = Framer::new(WireConfig::default());
    let mut out = Vec::new();
    let mut input = bytes;
    for _ in 0..=bytes.len() {
        if input.is_empty() || f.is_broken() {
            break;
        }
        let n = f.feed(input);
        input = &input[n..];
        while let Some(r) = f.poll() {
            match r {
                Ok(p) => out.push(p),
                Err(_) => return out,
            }
        }
    }
    out
}

/// Frame arbitrary bytes into PDUs and feed them to a target login machine.
pub fn login_target(data: &[u8]) {
    let mut tgt = TargetLogin::new(target_config());
    let c = WireConfig::default();
    for pdu in frame_all(data) {
        match tgt.handle_request(&pdu, &FuzzPolicy) {
            Ok(TargetStep::Continue(r)) => {
                let _ = r.to_bytes(&c);
            }
            Ok(_) | Err(_) => break,
        }
    }
}

/// Frame arbitrary bytes into Login Responses for an initiator login machine (first
/// byte selects the scenario of [`initiator_config`]).
pub fn login_initiator(data: &[u8]) {
    let Some((&scenario, rest)) = data.split_first() else {
        return;
    };
    let mut ini = InitiatorLogin::new(initiator_config(scenario));
    if ini.start().is_err() {
        return;
    }
    for pdu in frame_all(rest) {
        match ini.handle_response(&pdu) {
            Ok(InitiatorStep::Send(_)) => {}
            _ => break,
        }
    }
}

/// Parse text keys; parsed keys re-encode to text that parses to the same keys.
pub fn text(data: &[u8]) {
    if let Ok(keys) = TextKeys::parse(data) {
        assert_eq!(TextKeys::parse(&keys.encode()).as_ref(), Ok(&keys));
    }
}

/// Decode an iSER SEND (iSER header plus PDU); a decoded message round-trips.
pub fn iser(data: &[u8]) {
    let limits = PduLimits::default();
    if let Ok(m) = IserMessage::decode(data, &limits) {
        assert_eq!(
            IserMessage::decode(&m.to_bytes(&limits), &limits).as_ref(),
            Ok(&m)
        );
    }
}
