//! The initiator's login, sans-IO: security stage (AuthMethod None or CHAP, one-way or
//! mutual), operational negotiation through `iscsi::negotiate`, then full feature
//! phase. Text split over several PDUs (C bit) is joined; every Login Response is
//! checked for status, stage and ITT.
//!
//! Call order: [`Login::new`] gives the first Login Request → for each Login Response
//! [`Login::handle`] returns the next request or the [`LoginOutcome`].

use iscsi::chap::{ChapAlgorithm, ChapInitiator};
use iscsi::negotiate::{LocalParams, NegotiatedParams, Negotiation, SessionType};
use iscsi::pdu::{Header, Isid, LoginRequest, LoginResponse, LoginStatus, Pdu, Role, Stage};
use iscsi::text::{TextAssembler, TextKeys};

use crate::error::LoginError;

/// CHAP credentials for one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapConfig {
    /// Our CHAP_N.
    pub username: String,
    /// Our secret.
    pub secret: Vec<u8>,
    /// For mutual CHAP: the secret the target must prove it knows.
    pub target_secret: Option<Vec<u8>>,
}

/// What the login needs to know.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// InitiatorName.
    pub initiator_name: String,
    /// TargetName (normal sessions); `None` for discovery.
    pub target_name: Option<String>,
    /// ISID.
    pub isid: Isid,
    /// TSIH (0 for a new session).
    pub tsih: u16,
    /// The CmdSN of the login (and of the first command).
    pub cmd_sn: u32,
    /// Our key values.
    pub local: LocalParams,
    /// CHAP credentials, if any.
    pub chap: Option<ChapConfig>,
    /// Random bytes for mutual CHAP: our CHAP_I (byte 0) and CHAP_C (the rest, 16+).
    pub mutual_random: Vec<u8>,
}

/// A finished login.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// The negotiated parameters.
    pub params: NegotiatedParams,
    /// The TSIH the target assigned.
    pub tsih: u16,
    /// The next CmdSN.
    pub cmd_sn: u32,
    /// ExpCmdSN of the final response.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN of the final response.
    pub max_cmd_sn: u32,
    /// The next StatSN we expect.
    pub exp_stat_sn: u32,
}

/// What to do after a Login Response.
#[derive(Debug, Clone)]
pub enum LoginStep {
    /// Send this Login Request and wait for the next response.
    Send(Pdu),
    /// Full feature phase reached.
    Done(LoginOutcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    /// AuthMethod offered, waiting for the choice.
    Offered,
    /// CHAP_A sent, waiting for the challenge.
    AlgorithmSent,
    /// CHAP_R sent, waiting for the transit (and the mutual response).
    ResponseSent,
    /// Security stage finished.
    Done,
}

/// The login state machine of one connection.
#[derive(Debug)]
pub struct Login {
    cfg: LoginConfig,
    itt: u32,
    stage: Stage,
    auth: Auth,
    chap: Option<ChapInitiator>,
    neg: Negotiation,
    text: TextAssembler,
    exp_stat_sn: Option<u32>,
    tsih: u16,
    rounds: u32,
}

/// Login exchanges allowed before giving up on a target that never transits.
const MAX_ROUNDS: u32 = 32;

impl Login {
    /// Start a login; returns the machine and the first Login Request.
    pub fn new(cfg: LoginConfig, itt: u32) -> Result<(Login, Pdu), LoginError> {
        let chap = match &cfg.chap {
            None => None,
            Some(c) => {
                let init =
                    ChapInitiator::new(&[ChapAlgorithm::Md5], c.username.clone(), c.secret.clone());
                Some(match &c.target_secret {
                    None => init,
                    Some(ts) => {
                        let id = cfg.mutual_random.first().copied().unwrap_or(0);
                        let challenge = cfg.mutual_random.get(1..).unwrap_or_default().to_vec();
                        init.with_mutual(ts.clone(), id, challenge)?
                    }
                })
            }
        };
        let neg = Negotiation::new(Role::Initiator, cfg.local.clone());
        let mut login = Login {
            tsih: cfg.tsih,
            cfg,
            itt,
            stage: Stage::Security,
            auth: Auth::Offered,
            chap,
            neg,
            text: TextAssembler::default(),
            exp_stat_sn: None,
            rounds: 0,
        };
        let mut keys = TextKeys::new();
        keys.push("InitiatorName", login.cfg.initiator_name.clone());
        match &login.cfg.target_name {
            Some(t) => {
                keys.push("SessionType", "Normal");
                keys.push("TargetName", t.clone());
            }
            None => keys.push("SessionType", "Discovery"),
        }
        let methods: &[&str] = if login.chap.is_some() {
            &["CHAP", "None"]
        } else {
            &["None"]
        };
        keys.0.extend(login.neg.offer_auth_method(methods).0);
        let pdu = login.request(Stage::Security, false, Stage::Security, keys);
        Ok((login, pdu))
    }

    fn session_type(&self) -> SessionType {
        if self.cfg.target_name.is_some() {
            SessionType::Normal
        } else {
            SessionType::Discovery
        }
    }

    fn request(&self, csg: Stage, transit: bool, nsg: Stage, keys: TextKeys) -> Pdu {
        let h = LoginRequest {
            transit,
            continue_: false,
            csg,
            nsg: if transit { nsg } else { Stage::Security },
            version_max: 0,
            version_min: 0,
            isid: self.cfg.isid,
            tsih: self.tsih,
            itt: self.itt,
            cid: 0,
            cmd_sn: self.cfg.cmd_sn,
            exp_stat_sn: self.exp_stat_sn.unwrap_or(0),
        };
        Pdu::with_data(h, keys.encode())
    }

    fn operational_request(&mut self, answers: TextKeys) -> Pdu {
        let offer_names = self.neg.local().operational_offer(self.session_type());
        let mut keys = answers;
        keys.0.extend(self.neg.offer(&offer_names).0);
        self.request(Stage::Operational, true, Stage::FullFeature, keys)
    }

    /// Handle one Login Response.
    pub fn handle(&mut self, pdu: &Pdu) -> Result<LoginStep, LoginError> {
        let Header::LoginResponse(rsp) = &pdu.header else {
            return Err(LoginError::Protocol(format!(
                "expected a Login Response, got opcode {:#x}",
                pdu.header.opcode_byte()
            )));
        };
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(LoginError::Protocol(format!(
                "no full feature phase after {MAX_ROUNDS} exchanges"
            )));
        }
        if rsp.itt != self.itt {
            return Err(LoginError::Protocol(format!(
                "Login Response ITT {:#x}, ours is {:#x}",
                rsp.itt, self.itt
            )));
        }
        if rsp.status != LoginStatus::SUCCESS {
            let redirect = TextKeys::parse(&pdu.data)
                .ok()
                .and_then(|k| k.get("TargetAddress").map(str::to_owned));
            return Err(LoginError::Status {
                status: rsp.status,
                redirect,
            });
        }
        if rsp.csg != self.stage {
            return Err(LoginError::Protocol(format!(
                "Login Response for stage {:?} while in {:?}",
                rsp.csg, self.stage
            )));
        }
        self.exp_stat_sn = Some(rsp.stat_sn.wrapping_add(1));
        if rsp.tsih != 0 {
            self.tsih = rsp.tsih;
        }
        let Some(keys) = self.text.push_keys(&pdu.data, rsp.continue_)? else {
            // More text follows: an empty request with C=0, T=0 asks for it.
            return Ok(LoginStep::Send(self.request(
                self.stage,
                false,
                self.stage,
                TextKeys::new(),
            )));
        };
        match self.stage {
            Stage::Security => self.security(rsp, &keys),
            Stage::Operational => self.operational(rsp, &keys),
            Stage::FullFeature => Err(LoginError::Protocol(
                "Login Response after full feature phase".into(),
            )),
        }
    }

    fn security(&mut self, rsp: &LoginResponse, keys: &TextKeys) -> Result<LoginStep, LoginError> {
        // Declarative keys the target sends (TargetPortalGroupTag, TargetAlias...).
        let mut plain = TextKeys::new();
        for (k, v) in keys.iter() {
            if !k.starts_with("CHAP_") {
                plain.push(k, v);
            }
        }
        let answers = self.neg.handle(&plain)?;
        match self.auth {
            Auth::Offered => {
                let method = keys.get("AuthMethod").unwrap_or("None");
                match method {
                    "CHAP" => {
                        let chap = self.chap.as_ref().ok_or(LoginError::NoCredentials)?;
                        self.auth = Auth::AlgorithmSent;
                        let mut out = answers;
                        out.0.extend(chap.offer().0);
                        Ok(LoginStep::Send(self.request(
                            Stage::Security,
                            false,
                            Stage::Security,
                            out,
                        )))
                    }
                    "None" | "Reject" | "NotUnderstood"
                        if self.chap.as_ref().is_some_and(|c| c.is_mutual()) =>
                    {
                        Err(LoginError::Protocol(format!(
                            "mutual CHAP is configured but the target chose AuthMethod={method}"
                        )))
                    }
                    "None" => {
                        self.auth = Auth::Done;
                        self.after_security(rsp, answers)
                    }
                    other => Err(LoginError::Protocol(format!(
                        "target chose AuthMethod={other}"
                    ))),
                }
            }
            Auth::AlgorithmSent => {
                let chap = self.chap.as_mut().ok_or(LoginError::NoCredentials)?;
                let mut out = answers;
                out.0.extend(chap.handle_challenge(keys)?.0);
                self.auth = Auth::ResponseSent;
                Ok(LoginStep::Send(self.request(
                    Stage::Security,
                    true,
                    Stage::Operational,
                    out,
                )))
            }
            Auth::ResponseSent => {
                if let Some(chap) = self.chap.as_mut() {
                    if chap.is_mutual() {
                        chap.handle_target_response(keys)?;
                    }
                }
                self.auth = Auth::Done;
                self.after_security(rsp, answers)
            }
            Auth::Done => self.after_security(rsp, answers),
        }
    }

    fn after_security(
        &mut self,
        rsp: &LoginResponse,
        answers: TextKeys,
    ) -> Result<LoginStep, LoginError> {
        if rsp.transit {
            match rsp.nsg {
                Stage::Operational => {
                    self.stage = Stage::Operational;
                    Ok(LoginStep::Send(self.operational_request(answers)))
                }
                Stage::FullFeature => self.finish(rsp),
                Stage::Security => {
                    Err(LoginError::Protocol("transit to the security stage".into()))
                }
            }
        } else {
            // Ask to move on; the target decides when.
            Ok(LoginStep::Send(self.request(
                Stage::Security,
                true,
                Stage::Operational,
                answers,
            )))
        }
    }

    fn operational(
        &mut self,
        rsp: &LoginResponse,
        keys: &TextKeys,
    ) -> Result<LoginStep, LoginError> {
        let answers = self.neg.handle(keys)?;
        if rsp.transit
            && rsp.nsg == Stage::FullFeature
            && answers.is_empty()
            && self.neg.is_settled()
        {
            return self.finish(rsp);
        }
        if rsp.transit && rsp.nsg == Stage::FullFeature && !answers.is_empty() {
            return Err(LoginError::Protocol(
                "target transited to full feature phase with keys still to answer".into(),
            ));
        }
        Ok(LoginStep::Send(self.operational_request(answers)))
    }

    fn finish(&mut self, rsp: &LoginResponse) -> Result<LoginStep, LoginError> {
        if self.auth != Auth::Done {
            return Err(LoginError::Protocol(
                "full feature phase before authentication finished".into(),
            ));
        }
        self.stage = Stage::FullFeature;
        let params = self.neg.finish()?;
        Ok(LoginStep::Done(LoginOutcome {
            params,
            tsih: self.tsih,
            cmd_sn: self.cfg.cmd_sn,
            exp_cmd_sn: rsp.exp_cmd_sn,
            max_cmd_sn: rsp.max_cmd_sn,
            exp_stat_sn: rsp.stat_sn.wrapping_add(1),
        }))
    }
}

/// A random ISID of the "random" type (T = 10b, RFC 7143 section 11.12.5).
pub fn random_isid() -> Isid {
    let mut b = [0u8; 6];
    // A failing OS RNG leaves zeros, which is still a valid ISID qualifier.
    let _ = getrandom::getrandom(&mut b[1..4]);
    b[0] = 0x80;
    Isid(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use iscsi::chap::ChapTarget;

    fn cfg(chap: Option<ChapConfig>) -> LoginConfig {
        LoginConfig {
            initiator_name: "iqn.2026-11.test:init".into(),
            target_name: Some("iqn.2026-11.test:tgt".into()),
            isid: Isid([0x80, 1, 2, 3, 0, 0]),
            tsih: 0,
            cmd_sn: 1,
            local: LocalParams::default(),
            chap,
            mutual_random: (0u8..17).collect(),
        }
    }

    fn response(req: &Pdu, transit: bool, nsg: Stage, keys: &TextKeys, stat_sn: u32) -> Pdu {
        let Header::LoginRequest(r) = &req.header else {
            panic!("not a login request")
        };
        Pdu::with_data(
            LoginResponse {
                transit,
                continue_: false,
                csg: r.csg,
                nsg: if transit { nsg } else { Stage::Security },
                version_max: 0,
                version_active: 0,
                isid: r.isid,
                tsih: 0x22,
                itt: r.itt,
                stat_sn,
                exp_cmd_sn: 1,
                max_cmd_sn: 32,
                status: LoginStatus::SUCCESS,
            },
            keys.encode(),
        )
    }

    fn keys_of(p: &Pdu) -> TextKeys {
        TextKeys::parse(&p.data).unwrap()
    }

    /// A target side made of `iscsi::negotiate` answering the operational offer.
    fn operational_answer(req: &Pdu) -> TextKeys {
        let mut t = Negotiation::new(
            Role::Target,
            LocalParams {
                max_recv_data_segment_length: 65536,
                ..LocalParams::default()
            },
        );
        let mut ans = t.handle(&keys_of(req)).unwrap();
        ans.0
            .extend(t.declare("MaxRecvDataSegmentLength", "65536").0);
        ans
    }

    #[test]
    fn login_without_auth_reaches_full_feature() {
        let (mut l, first) = Login::new(cfg(None), 5).unwrap();
        let k = keys_of(&first);
        assert_eq!(k.get("AuthMethod"), Some("None"));
        assert_eq!(k.get("SessionType"), Some("Normal"));
        let mut tk = TextKeys::new();
        tk.push("AuthMethod", "None");
        tk.push("TargetPortalGroupTag", "1");
        let LoginStep::Send(op) = l
            .handle(&response(&first, true, Stage::Operational, &tk, 7))
            .unwrap()
        else {
            panic!()
        };
        let Header::LoginRequest(h) = &op.header else {
            panic!()
        };
        assert_eq!(
            (h.csg, h.nsg, h.transit, h.exp_stat_sn),
            (Stage::Operational, Stage::FullFeature, true, 8)
        );
        let ans = operational_answer(&op);
        let step = l
            .handle(&response(&op, true, Stage::FullFeature, &ans, 8))
            .unwrap();
        let LoginStep::Done(out) = step else {
            panic!("{step:?} after {ans:?}")
        };
        assert_eq!(out.params.target_max_recv_data_segment_length, 65536);
        assert_eq!((out.tsih, out.exp_stat_sn, out.max_cmd_sn), (0x22, 9, 32));
    }

    fn chap_to_response(l: &mut Login) -> (Pdu, ChapTarget) {
        let chap = ChapConfig {
            username: "user".into(),
            secret: b"initiator-secret".to_vec(),
            target_secret: Some(b"target-secret-1".to_vec()),
        };
        let (login, first) = Login::new(cfg(Some(chap)), 5).unwrap();
        *l = login;
        assert_eq!(keys_of(&first).get("AuthMethod"), Some("CHAP,None"));
        let mut tk = TextKeys::new();
        tk.push("AuthMethod", "CHAP");
        let LoginStep::Send(a) = l
            .handle(&response(&first, false, Stage::Security, &tk, 0))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(keys_of(&a).get("CHAP_A"), Some("5"));
        let mut target = ChapTarget::new(&[ChapAlgorithm::Md5], 9, vec![0xAB; 16]).unwrap();
        let challenge = target.handle_algorithms(&keys_of(&a)).unwrap();
        let LoginStep::Send(r) = l
            .handle(&response(&a, false, Stage::Security, &challenge, 1))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(keys_of(&r).get("CHAP_N"), Some("user"));
        (r, target)
    }

    #[test]
    fn mutual_chap_is_verified() {
        let mut l = Login::new(cfg(None), 1).unwrap().0;
        let (r, mut target) = chap_to_response(&mut l);
        let creds = iscsi::chap::ChapCredentials {
            initiator_secret: b"initiator-secret".to_vec(),
            target: Some(("target".into(), b"target-secret-1".to_vec())),
        };
        let mutual = target
            .handle_response(&keys_of(&r), |_| Some(creds))
            .unwrap();
        let LoginStep::Send(op) = l
            .handle(&response(&r, true, Stage::Operational, &mutual, 2))
            .unwrap()
        else {
            panic!()
        };
        let Header::LoginRequest(h) = &op.header else {
            panic!()
        };
        assert_eq!(h.csg, Stage::Operational);
        // A wrong mutual response from the target fails the login.
        let (r, _) = chap_to_response(&mut l);
        let mut bad = TextKeys::new();
        bad.push("CHAP_N", "target");
        bad.push("CHAP_R", "0x00112233445566778899aabbccddeeff");
        assert!(matches!(
            l.handle(&response(&r, true, Stage::Operational, &bad, 2)),
            Err(LoginError::Chap(_))
        ));
    }

    #[test]
    fn chap_demanded_without_credentials_and_bad_status_are_errors() {
        let (mut l, first) = Login::new(cfg(None), 5).unwrap();
        let mut tk = TextKeys::new();
        tk.push("AuthMethod", "CHAP");
        assert!(matches!(
            l.handle(&response(&first, false, Stage::Security, &tk, 0)),
            Err(LoginError::Negotiation(_) | LoginError::NoCredentials)
        ));
        let (mut l, first) = Login::new(cfg(None), 5).unwrap();
        let mut rsp = response(&first, false, Stage::Security, &TextKeys::new(), 0);
        if let Header::LoginResponse(h) = &mut rsp.header {
            h.status = LoginStatus::AUTHENTICATION_FAILURE;
        }
        assert!(matches!(
            l.handle(&rsp),
            Err(LoginError::Status {
                status: LoginStatus::AUTHENTICATION_FAILURE,
                ..
            })
        ));
    }
}
