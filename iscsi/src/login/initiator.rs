//! Initiator side of the login phase.

use std::collections::VecDeque;

use super::{LoginFailure, ISCSI_VERSION, LOGIN_MAX_SEGMENT};
use crate::chap::ChapInitiator;
use crate::negotiate::{LocalParams, NegotiatedParams, Negotiation, SessionType};
use crate::pdu::{Header, Isid, LoginRequest, LoginResponse, Pdu, Role, Stage};
use crate::text::{split_text, TextAssembler, TextKeys, DEFAULT_TEXT_LIMIT};

/// How the initiator authenticates.
#[derive(Debug, Clone)]
pub enum InitiatorAuth {
    /// AuthMethod=None.
    None,
    /// AuthMethod=CHAP (mutual when the [`ChapInitiator`] has a target secret).
    Chap(ChapInitiator),
}

/// Inputs of an initiator login.
#[derive(Debug, Clone)]
pub struct InitiatorLoginConfig {
    /// InitiatorName.
    pub initiator_name: String,
    /// InitiatorAlias to declare.
    pub initiator_alias: Option<String>,
    /// TargetName (required for a normal session).
    pub target_name: Option<String>,
    /// SessionType.
    pub session_type: SessionType,
    /// ISID.
    pub isid: Isid,
    /// TSIH: 0 for a new session.
    pub tsih: u16,
    /// CID.
    pub cid: u16,
    /// ITT of the login requests.
    pub itt: u32,
    /// CmdSN of the login requests (the session's first CmdSN).
    pub cmd_sn: u32,
    /// ExpStatSN for the first request (0 on a new connection).
    pub exp_stat_sn: u32,
    /// Our operational parameters.
    pub local: LocalParams,
    /// Authentication.
    pub auth: InitiatorAuth,
    /// Bound on the text of one response.
    pub max_text: usize,
}

impl InitiatorLoginConfig {
    /// A new normal session to `target_name` with RFC defaults and no authentication.
    pub fn normal(
        initiator_name: impl Into<String>,
        target_name: impl Into<String>,
        isid: Isid,
    ) -> Self {
        InitiatorLoginConfig {
            initiator_name: initiator_name.into(),
            initiator_alias: None,
            target_name: Some(target_name.into()),
            session_type: SessionType::Normal,
            isid,
            tsih: 0,
            cid: 0,
            itt: 0,
            cmd_sn: 1,
            exp_stat_sn: 0,
            local: LocalParams::default(),
            auth: InitiatorAuth::None,
            max_text: DEFAULT_TEXT_LIMIT,
        }
    }

    /// A discovery session.
    pub fn discovery(initiator_name: impl Into<String>, isid: Isid) -> Self {
        InitiatorLoginConfig {
            target_name: None,
            session_type: SessionType::Discovery,
            ..Self::normal(initiator_name, "", isid)
        }
    }
}

/// What the initiator got out of a successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitiatorLoginOutcome {
    /// Negotiated parameters.
    pub params: NegotiatedParams,
    /// TSIH assigned by the target.
    pub tsih: u16,
    /// ISID.
    pub isid: Isid,
    /// CID.
    pub cid: u16,
    /// CmdSN of the first full feature command.
    pub cmd_sn: u32,
    /// ExpCmdSN of the final Login Response.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN of the final Login Response.
    pub max_cmd_sn: u32,
    /// ExpStatSN (final StatSN + 1).
    pub exp_stat_sn: u32,
}

/// What to do after a Login Response.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum InitiatorStep {
    /// Send this Login Request.
    Send(Pdu),
    /// Login complete: enter full feature phase.
    Complete(InitiatorLoginOutcome),
}

#[derive(Debug)]
enum Auth {
    /// AuthMethod=None offered or agreed.
    NoneOffered,
    /// AuthMethod=CHAP offered.
    ChapOffered(ChapInitiator),
    /// CHAP_A sent.
    ChapAlgorithmsSent(ChapInitiator),
    /// CHAP_N/CHAP_R sent.
    ChapResponded(ChapInitiator),
    /// Authentication complete.
    Done,
}

/// The initiator's login machine for one connection.
#[derive(Debug)]
pub struct InitiatorLogin {
    cfg: InitiatorLoginConfig,
    stage: Stage,
    neg: Negotiation,
    auth: Auth,
    exp_stat_sn: u32,
    incoming: TextAssembler,
    outgoing: VecDeque<Vec<u8>>,
    /// T bit and NSG of the request whose text is in `outgoing`.
    request_transit: Option<Stage>,
    /// T bit and NSG of the last complete request.
    asked_transit: Option<Stage>,
    started: bool,
    finished: bool,
    responses: u32,
}

/// Login Responses one login may take before the initiator gives up.
pub const MAX_LOGIN_RESPONSES: u32 = 64;

const CHAP_KEYS: &[&str] = &["CHAP_A", "CHAP_I", "CHAP_C", "CHAP_N", "CHAP_R"];

impl InitiatorLogin {
    /// A login machine; call [`InitiatorLogin::start`] for the first request.
    pub fn new(cfg: InitiatorLoginConfig) -> Self {
        let neg = Negotiation::new(Role::Initiator, cfg.local.clone());
        let auth = match &cfg.auth {
            InitiatorAuth::None => Auth::NoneOffered,
            InitiatorAuth::Chap(c) => Auth::ChapOffered(c.clone()),
        };
        InitiatorLogin {
            exp_stat_sn: cfg.exp_stat_sn,
            incoming: TextAssembler::new(cfg.max_text),
            cfg,
            stage: Stage::Security,
            neg,
            auth,
            outgoing: VecDeque::new(),
            request_transit: None,
            asked_transit: None,
            started: false,
            finished: false,
            responses: 0,
        }
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The first Login Request (security stage, leading keys and AuthMethod).
    pub fn start(&mut self) -> Result<Pdu, LoginFailure> {
        if self.started {
            return Err(LoginFailure::Protocol("login already started"));
        }
        self.started = true;
        let mut keys = TextKeys::new();
        keys.0.extend(
            self.neg
                .declare("InitiatorName", self.cfg.initiator_name.clone())
                .0,
        );
        if let Some(a) = self.cfg.initiator_alias.clone() {
            keys.0.extend(self.neg.declare("InitiatorAlias", a).0);
        }
        match self.cfg.session_type {
            SessionType::Normal => {
                keys.0.extend(self.neg.declare("SessionType", "Normal").0);
                let t = self
                    .cfg
                    .target_name
                    .clone()
                    .ok_or(LoginFailure::Protocol("normal session without TargetName"))?;
                keys.0.extend(self.neg.declare("TargetName", t).0);
            }
            SessionType::Discovery => keys
                .0
                .extend(self.neg.declare("SessionType", "Discovery").0),
        }
        let transit = match self.auth {
            Auth::NoneOffered => {
                keys.0.extend(self.neg.offer_auth_method(&["None"]).0);
                Some(Stage::Operational)
            }
            _ => {
                keys.0.extend(self.neg.offer_auth_method(&["CHAP"]).0);
                None
            }
        };
        Ok(self.request(keys, transit))
    }

    fn pdu(&self, transit: Option<Stage>, continue_: bool, data: Vec<u8>) -> Pdu {
        Pdu::with_data(
            LoginRequest {
                transit: transit.is_some(),
                continue_,
                csg: self.stage,
                nsg: transit.unwrap_or(Stage::Security),
                version_max: ISCSI_VERSION,
                version_min: ISCSI_VERSION,
                isid: self.cfg.isid,
                tsih: self.cfg.tsih,
                itt: self.cfg.itt,
                cid: self.cfg.cid,
                cmd_sn: self.cfg.cmd_sn,
                exp_stat_sn: self.exp_stat_sn,
            },
            data,
        )
    }

    fn request(&mut self, keys: TextKeys, transit: Option<Stage>) -> Pdu {
        self.outgoing = split_text(&keys.encode(), LOGIN_MAX_SEGMENT).into();
        self.request_transit = transit;
        self.next_segment()
    }

    fn next_segment(&mut self) -> Pdu {
        let seg = self.outgoing.pop_front().unwrap_or_default();
        if self.outgoing.is_empty() {
            self.asked_transit = self.request_transit;
            self.pdu(self.request_transit, false, seg)
        } else {
            self.asked_transit = None;
            self.pdu(None, true, seg)
        }
    }

    /// Handle one received PDU.
    pub fn handle_response(&mut self, pdu: &Pdu) -> Result<InitiatorStep, LoginFailure> {
        if self.finished || !self.started {
            return Err(LoginFailure::Finished);
        }
        self.responses += 1;
        let r = if self.responses > MAX_LOGIN_RESPONSES {
            Err(LoginFailure::Protocol("too many Login Responses"))
        } else {
            self.step(pdu)
        };
        if !matches!(r, Ok(InitiatorStep::Send(_))) {
            self.finished = true;
        }
        r
    }

    fn step(&mut self, pdu: &Pdu) -> Result<InitiatorStep, LoginFailure> {
        let Header::LoginResponse(resp) = &pdu.header else {
            return Err(LoginFailure::Protocol(
                "PDU other than Login Response during login",
            ));
        };
        self.check_header(resp)?;
        if resp.status.class() != 0 {
            if resp.status.class() == 1 {
                let keys = TextKeys::parse(&pdu.data)?;
                let address = keys
                    .get("TargetAddress")
                    .ok_or(LoginFailure::Protocol("redirection without TargetAddress"))?;
                return Err(LoginFailure::Redirect {
                    address: address.to_owned(),
                    permanent: resp.status.detail() == 2,
                });
            }
            return Err(LoginFailure::Status(resp.status));
        }
        self.exp_stat_sn = resp.stat_sn.wrapping_add(1);

        if !self.outgoing.is_empty() {
            if !pdu.data.is_empty() || resp.transit || resp.continue_ {
                return Err(LoginFailure::Protocol("target answered a partial request"));
            }
            return Ok(InitiatorStep::Send(self.next_segment()));
        }
        if resp.csg != self.stage {
            return Err(LoginFailure::Protocol(
                "response CSG does not match our stage",
            ));
        }
        let Some(text) = self.incoming.push(&pdu.data, resp.continue_)? else {
            // Ask for the rest of the target's text.
            return Ok(InitiatorStep::Send(self.pdu(None, false, Vec::new())));
        };
        let keys = TextKeys::parse(&text)?;
        if resp.transit {
            match self.asked_transit {
                Some(nsg) if resp.nsg <= nsg && resp.nsg > self.stage => {}
                _ => {
                    return Err(LoginFailure::Protocol(
                        "target moved to a stage we did not ask for",
                    ))
                }
            }
        }
        match self.stage {
            Stage::Security => self.security(resp, &keys),
            Stage::Operational => self.operational(resp, &keys),
            Stage::FullFeature => Err(LoginFailure::Finished),
        }
    }

    fn check_header(&self, resp: &LoginResponse) -> Result<(), LoginFailure> {
        if resp.itt != self.cfg.itt {
            return Err(LoginFailure::Protocol("Login Response ITT does not match"));
        }
        if resp.isid != self.cfg.isid {
            return Err(LoginFailure::Protocol("Login Response ISID does not match"));
        }
        if resp.status.class() == 0 && resp.version_active != ISCSI_VERSION {
            return Err(LoginFailure::Protocol("unsupported Version-active"));
        }
        Ok(())
    }

    fn security(
        &mut self,
        resp: &LoginResponse,
        keys: &TextKeys,
    ) -> Result<InitiatorStep, LoginFailure> {
        let chap_keys: TextKeys = keys
            .iter()
            .filter(|(k, _)| CHAP_KEYS.contains(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let others: TextKeys = keys
            .iter()
            .filter(|(k, _)| !CHAP_KEYS.contains(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut out = self.neg.handle(&others)?;
        let auth = std::mem::replace(&mut self.auth, Auth::Done);
        let mut transit = Some(Stage::Operational);
        self.auth = match auth {
            Auth::NoneOffered => {
                if !chap_keys.is_empty() {
                    return Err(LoginFailure::Protocol("CHAP keys without CHAP"));
                }
                if self.neg.result("AuthMethod") == Some("None") {
                    Auth::Done
                } else {
                    Auth::NoneOffered
                }
            }
            Auth::ChapOffered(chap) => {
                if self.neg.result("AuthMethod") != Some("CHAP") {
                    return Err(LoginFailure::Protocol("target did not agree to CHAP"));
                }
                out.0.extend(chap.offer().0);
                transit = None;
                Auth::ChapAlgorithmsSent(chap)
            }
            Auth::ChapAlgorithmsSent(mut chap) => {
                if chap_keys.is_empty() {
                    transit = None;
                    Auth::ChapAlgorithmsSent(chap)
                } else {
                    out.0.extend(chap.handle_challenge(&chap_keys)?.0);
                    Auth::ChapResponded(chap)
                }
            }
            Auth::ChapResponded(mut chap) => {
                if chap.is_mutual() {
                    chap.handle_target_response(&chap_keys)?;
                } else if !chap_keys.is_empty() {
                    return Err(LoginFailure::Protocol(
                        "CHAP response from the target without mutual CHAP",
                    ));
                }
                Auth::Done
            }
            Auth::Done => {
                if !chap_keys.is_empty() {
                    return Err(LoginFailure::Protocol("CHAP keys after authentication"));
                }
                Auth::Done
            }
        };
        if resp.transit {
            if !matches!(self.auth, Auth::Done) {
                return Err(LoginFailure::Protocol(
                    "target left the security stage before authentication completed",
                ));
            }
            return self.enter(resp, out);
        }
        Ok(InitiatorStep::Send(self.request(out, transit)))
    }

    /// The target agreed to move to `resp.nsg`.
    fn enter(
        &mut self,
        resp: &LoginResponse,
        answers: TextKeys,
    ) -> Result<InitiatorStep, LoginFailure> {
        self.neg.settle_implicit();
        if resp.nsg == Stage::FullFeature {
            return self.complete(resp);
        }
        self.stage = resp.nsg;
        let mut keys = answers;
        let offer = self.cfg.local.operational_offer(self.cfg.session_type);
        keys.0.extend(self.neg.offer(&offer).0);
        Ok(InitiatorStep::Send(
            self.request(keys, Some(Stage::FullFeature)),
        ))
    }

    fn operational(
        &mut self,
        resp: &LoginResponse,
        keys: &TextKeys,
    ) -> Result<InitiatorStep, LoginFailure> {
        if keys
            .iter()
            .any(|(k, _)| CHAP_KEYS.contains(&k) || k == "AuthMethod")
        {
            return Err(LoginFailure::Protocol(
                "security keys in the operational stage",
            ));
        }
        let answers = self.neg.handle(keys)?;
        if resp.transit {
            if !answers.is_empty() {
                return Err(LoginFailure::Protocol(
                    "target offered keys in its final response",
                ));
            }
            return self.enter(resp, answers);
        }
        Ok(InitiatorStep::Send(
            self.request(answers, Some(Stage::FullFeature)),
        ))
    }

    fn complete(&mut self, resp: &LoginResponse) -> Result<InitiatorStep, LoginFailure> {
        if resp.tsih == 0 || (self.cfg.tsih != 0 && resp.tsih != self.cfg.tsih) {
            return Err(LoginFailure::Protocol(
                "final Login Response with a wrong TSIH",
            ));
        }
        let params = self.neg.finish()?;
        self.stage = Stage::FullFeature;
        Ok(InitiatorStep::Complete(InitiatorLoginOutcome {
            params,
            tsih: resp.tsih,
            isid: self.cfg.isid,
            cid: self.cfg.cid,
            cmd_sn: self.cfg.cmd_sn,
            exp_cmd_sn: resp.exp_cmd_sn,
            max_cmd_sn: resp.max_cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
        }))
    }
}
