//! Target side of the login phase.

use std::collections::VecDeque;

use super::{LoginError, LoginFinished, ISCSI_VERSION, LOGIN_MAX_SEGMENT};
use crate::chap::{ChapAlgorithm, ChapCredentials, ChapTarget};
use crate::negotiate::{
    LocalParams, NegotiatedParams, Negotiation, SessionType, NORMAL_OPERATIONAL_KEYS,
};
use crate::pdu::{Header, Isid, LoginRequest, LoginResponse, LoginStatus, Pdu, Role, Stage};
use crate::seq::SnCounter;
use crate::text::{split_text, TextAssembler, TextKeys, DEFAULT_TEXT_LIMIT};

/// Authentication a target requires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthRequirement {
    /// AuthMethod=None.
    #[default]
    None,
    /// AuthMethod=CHAP (mutual when the initiator asks for it and a target secret exists).
    Chap,
}

/// What the policy knows about a TargetName.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetLookup {
    /// Served here.
    Found {
        /// Authentication required.
        auth: AuthRequirement,
        /// TargetAlias to declare, if any.
        alias: Option<String>,
    },
    /// Served elsewhere: redirect to this TargetAddress.
    Moved {
        /// `host:port,tpgt`.
        address: String,
        /// 0x0102 instead of 0x0101.
        permanent: bool,
    },
    /// Not served.
    NotFound,
}

/// The caller's answers to the questions a login raises.
pub trait LoginPolicy {
    /// Look up a TargetName (normal sessions).
    fn lookup_target(&self, target_name: &str) -> TargetLookup;

    /// May `initiator_name` use `target_name` (`None`: a discovery session)?
    fn authorize(&self, initiator_name: &str, target_name: Option<&str>) -> bool {
        let _ = (initiator_name, target_name);
        true
    }

    /// Authentication required for discovery sessions.
    fn discovery_auth(&self) -> AuthRequirement {
        AuthRequirement::None
    }

    /// Are discovery sessions allowed at all?
    fn allow_discovery(&self) -> bool {
        true
    }

    /// CHAP credentials for a CHAP_N, for the given target (`None`: discovery).
    fn chap_credentials(
        &self,
        chap_name: &str,
        target_name: Option<&str>,
    ) -> Option<ChapCredentials> {
        let _ = (chap_name, target_name);
        None
    }

    /// Our operational parameters for this target (`None`: discovery).
    fn local_params(&self, target_name: Option<&str>) -> LocalParams {
        let _ = target_name;
        LocalParams::default()
    }

    /// Does a session with this ISID and non-zero TSIH exist to add a connection to?
    fn session_exists(&self, isid: Isid, tsih: u16) -> bool {
        let _ = (isid, tsih);
        false
    }
}

/// Per-connection inputs of a target login, including the caller's randomness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLoginConfig {
    /// TargetPortalGroupTag of the portal the connection arrived on.
    pub portal_group_tag: u16,
    /// StatSN of the first Login Response.
    pub initial_stat_sn: u32,
    /// Commands the session may have outstanding (sets MaxCmdSN).
    pub queue_depth: u32,
    /// TSIH to give a new session (non-zero, unique among the target's sessions).
    pub new_tsih: u16,
    /// CHAP algorithms accepted, in preference order.
    pub chap_algorithms: Vec<ChapAlgorithm>,
    /// Random CHAP identifier.
    pub chap_id: u8,
    /// Random CHAP challenge (16..=1024 bytes).
    pub chap_challenge: Vec<u8>,
    /// Bound on the text of one request.
    pub max_text: usize,
}

impl Default for TargetLoginConfig {
    fn default() -> Self {
        TargetLoginConfig {
            portal_group_tag: 1,
            initial_stat_sn: 0,
            queue_depth: 128,
            new_tsih: 1,
            chap_algorithms: vec![ChapAlgorithm::Sha256, ChapAlgorithm::Md5],
            chap_id: 0,
            chap_challenge: vec![0; 16],
            max_text: DEFAULT_TEXT_LIMIT,
        }
    }
}

/// What the target got out of a successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLoginOutcome {
    /// Negotiated parameters.
    pub params: NegotiatedParams,
    /// ISID.
    pub isid: Isid,
    /// TSIH of the session (assigned for a new one).
    pub tsih: u16,
    /// Connection ID.
    pub cid: u16,
    /// InitiatorName.
    pub initiator_name: String,
    /// TargetName (`None` for discovery).
    pub target_name: Option<String>,
    /// SessionType.
    pub session_type: SessionType,
    /// The CHAP_N that authenticated, if CHAP was used.
    pub chap_name: Option<String>,
    /// ExpCmdSN to start full feature phase with.
    pub exp_cmd_sn: u32,
    /// StatSN of the first full feature response.
    pub next_stat_sn: u32,
}

/// What to do after a Login Request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum TargetStep {
    /// Send this Login Response and wait for the next request.
    Continue(Pdu),
    /// Send this final Login Response, then enter full feature phase.
    Complete {
        /// The final Login Response (T=1, NSG=3).
        response: Pdu,
        /// The session's parameters.
        outcome: TargetLoginOutcome,
    },
    /// Send this Login Response (with a failure status), then close the connection.
    Failed {
        /// The response.
        response: Pdu,
        /// Why.
        error: LoginError,
    },
}

#[derive(Debug)]
enum Auth {
    /// Waiting for AuthMethod.
    Pending(AuthRequirement),
    /// CHAP agreed; waiting for CHAP_A.
    ChapStart(ChapTarget),
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    ChapChallenged(ChapTarget),
    /// Authenticated (or none required).
    Done,
}

#[derive(Debug, Clone, Copy)]
struct First {
    isid: Isid,
    tsih: u16,
    cid: u16,
}

/// The target's login machine for one connection.
#[derive(Debug)]
pub struct TargetLogin {
    cfg: TargetLoginConfig,
    first: Option<First>,
    stage: Stage,
    stat_sn: SnCounter,
    cmd_sn: u32,
    itt: u32,
    incoming: TextAssembler,
    outgoing: VecDeque<Vec<u8>>,
    decision: Option<Stage>,
    neg: Option<Negotiation>,
    auth: Auth,
    initiator_name: Option<String>,
    target_name: Option<String>,
    session_type: SessionType,
    chap_name: Option<String>,
    operational_offered: bool,
    finished: bool,
    requests: u32,
}

/// Login Requests one login may take before the target gives up.
pub const MAX_LOGIN_REQUESTS: u32 = 64;

const AUTH_KEYS: &[&str] = &[
    "AuthMethod",
    "CHAP_A",
    "CHAP_I",
    "CHAP_C",
    "CHAP_N",
    "CHAP_R",
];

impl TargetLogin {
    /// A login machine for a new connection.
    pub fn new(cfg: TargetLoginConfig) -> Self {
        let stat_sn = SnCounter::new(cfg.initial_stat_sn);
        let incoming = TextAssembler::new(cfg.max_text);
        TargetLogin {
            cfg,
            first: None,
            stage: Stage::Security,
            stat_sn,
            cmd_sn: 0,
            itt: 0,
            incoming,
            outgoing: VecDeque::new(),
            decision: None,
            neg: None,
            auth: Auth::Pending(AuthRequirement::None),
            initiator_name: None,
            target_name: None,
            session_type: SessionType::Normal,
            chap_name: None,
            operational_offered: false,
            finished: false,
            requests: 0,
        }
    }

    /// The current stage.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// True once a final or failure response was produced.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Handle one received PDU.
    pub fn handle_request(
        &mut self,
        pdu: &Pdu,
        policy: &dyn LoginPolicy,
    ) -> Result<TargetStep, LoginFinished> {
        if self.finished {
            return Err(LoginFinished);
        }
        self.requests += 1;
        let result = if self.requests > MAX_LOGIN_REQUESTS {
            Err(LoginError::Protocol("too many Login Requests"))
        } else {
            self.step(pdu, policy)
        };
        let step = match result {
            Ok(step) => step,
            Err(error) => self.fail(error),
        };
        if !matches!(step, TargetStep::Continue(_)) {
            self.finished = true;
        }
        Ok(step)
    }

    fn response(
        &mut self,
        transit: bool,
        continue_: bool,
        nsg: Stage,
        tsih: u16,
        status: LoginStatus,
        data: Vec<u8>,
    ) -> Pdu {
        let isid = self.first.map(|f| f.isid).unwrap_or_default();
        let depth = self.cfg.queue_depth.max(1);
        Pdu::with_data(
            LoginResponse {
                transit,
                continue_,
                csg: self.stage,
                nsg: if transit { nsg } else { Stage::Security },
                version_max: ISCSI_VERSION,
                version_active: ISCSI_VERSION,
                isid,
                tsih,
                itt: self.itt,
                stat_sn: self.stat_sn.assign(),
                exp_cmd_sn: self.cmd_sn,
                max_cmd_sn: self.cmd_sn.wrapping_add(depth - 1),
                status,
            },
            data,
        )
    }

    fn fail(&mut self, error: LoginError) -> TargetStep {
        let data = match &error {
            LoginError::Moved { address, .. } => {
                let mut k = TextKeys::new();
                k.push("TargetAddress", address.clone());
                k.encode()
            }
            _ => Vec::new(),
        };
        let response = self.response(false, false, Stage::Security, 0, error.status(), data);
        TargetStep::Failed { response, error }
    }

    fn neg(&mut self) -> Result<&mut Negotiation, LoginError> {
        self.neg
            .as_mut()
            .ok_or(LoginError::Protocol("negotiation before the leading keys"))
    }

    fn step(&mut self, pdu: &Pdu, policy: &dyn LoginPolicy) -> Result<TargetStep, LoginError> {
        let Header::LoginRequest(req) = &pdu.header else {
            return Err(LoginError::NotLoginRequest);
        };
        self.itt = req.itt;
        self.cmd_sn = req.cmd_sn;
        self.check_header(req, policy)?;

        // Our own text still has segments to deliver: the initiator asks for them with
        // empty Login Requests.
        if !self.outgoing.is_empty() {
            if !pdu.data.is_empty() || req.continue_ || req.transit {
                return Err(LoginError::Protocol(
                    "new text while the target's response continues",
                ));
            }
            return self.send_segment();
        }

        let Some(text) = self.incoming.push(&pdu.data, req.continue_)? else {
            // Acknowledge a partial text with an empty response.
            return Ok(TargetStep::Continue(self.response(
                false,
                false,
                Stage::Security,
                self.tsih_now(),
                LoginStatus::SUCCESS,
                Vec::new(),
            )));
        };
        let keys = TextKeys::parse(&text)?;
        if req.transit && req.nsg <= req.csg {
            return Err(LoginError::Protocol(
                "transition to a stage that is not later",
            ));
        }

        let mut answers = TextKeys::new();
        if self.initiator_name.is_none() {
            self.leading_keys(&keys, policy, &mut answers)?;
        }
        let transit = match self.stage {
            Stage::Security => self.security(req, &keys, policy, &mut answers)?,
            Stage::Operational => self.operational(req, &keys, &mut answers)?,
            Stage::FullFeature => return Err(LoginError::Protocol("CSG is full feature phase")),
        };
        self.decision = transit.then_some(req.nsg);
        self.outgoing = split_text(&answers.encode(), LOGIN_MAX_SEGMENT).into();
        self.send_segment()
    }

    fn tsih_now(&self) -> u16 {
        self.first.map(|f| f.tsih).unwrap_or(0)
    }

    fn check_header(
        &mut self,
        req: &LoginRequest,
        policy: &dyn LoginPolicy,
    ) -> Result<(), LoginError> {
        if req.version_min > ISCSI_VERSION {
            return Err(LoginError::UnsupportedVersion {
                min: req.version_min,
                max: req.version_max,
            });
        }
        match self.first {
            None => {
                self.first = Some(First {
                    isid: req.isid,
                    tsih: req.tsih,
                    cid: req.cid,
                });
                if req.tsih != 0 && !policy.session_exists(req.isid, req.tsih) {
                    return Err(LoginError::SessionDoesNotExist(req.tsih));
                }
                self.stage = req.csg;
                if req.csg == Stage::FullFeature {
                    return Err(LoginError::Protocol("CSG is full feature phase"));
                }
            }
            Some(f) => {
                if f.isid != req.isid || f.tsih != req.tsih || f.cid != req.cid {
                    return Err(LoginError::Protocol(
                        "ISID, TSIH or CID changed during login",
                    ));
                }
                if req.csg != self.stage {
                    return Err(LoginError::Protocol("CSG does not match the current stage"));
                }
            }
        }
        Ok(())
    }

    fn leading_keys(
        &mut self,
        keys: &TextKeys,
        policy: &dyn LoginPolicy,
        answers: &mut TextKeys,
    ) -> Result<(), LoginError> {
        let initiator = keys
            .get("InitiatorName")
            .ok_or(LoginError::MissingKey("InitiatorName"))?;
        if initiator.is_empty() {
            return Err(LoginError::MissingKey("InitiatorName"));
        }
        self.session_type = match keys.get("SessionType").unwrap_or("Normal") {
            "Normal" => SessionType::Normal,
            "Discovery" => SessionType::Discovery,
            _ => return Err(LoginError::SessionTypeNotSupported),
        };
        let (auth, alias) = match self.session_type {
            SessionType::Discovery => {
                if !policy.allow_discovery() {
                    return Err(LoginError::SessionTypeNotSupported);
                }
                (policy.discovery_auth(), None)
            }
            SessionType::Normal => {
                let name = keys
                    .get("TargetName")
                    .ok_or(LoginError::MissingKey("TargetName"))?;
                match policy.lookup_target(name) {
                    TargetLookup::Found { auth, alias } => {
                        self.target_name = Some(name.to_owned());
                        (auth, alias)
                    }
                    TargetLookup::Moved { address, permanent } => {
                        return Err(LoginError::Moved { address, permanent })
                    }
                    TargetLookup::NotFound => {
                        return Err(LoginError::TargetNotFound(name.to_owned()))
                    }
                }
            }
        };
        if !policy.authorize(initiator, self.target_name.as_deref()) {
            return Err(LoginError::NotAuthorized(initiator.to_owned()));
        }
        if self.stage == Stage::Operational && auth != AuthRequirement::None {
            return Err(LoginError::Authentication("security stage skipped".into()));
        }
        self.initiator_name = Some(initiator.to_owned());
        self.auth = Auth::Pending(auth);
        let mut neg = Negotiation::new(
            Role::Target,
            policy.local_params(self.target_name.as_deref()),
        );
        if self.session_type == SessionType::Normal {
            answers.0.extend(
                neg.declare(
                    "TargetPortalGroupTag",
                    self.cfg.portal_group_tag.to_string(),
                )
                .0,
            );
            if let Some(a) = alias {
                answers.0.extend(neg.declare("TargetAlias", a).0);
            }
        }
        self.neg = Some(neg);
        Ok(())
    }

    fn security(
        &mut self,
        req: &LoginRequest,
        keys: &TextKeys,
        policy: &dyn LoginPolicy,
        answers: &mut TextKeys,
    ) -> Result<bool, LoginError> {
        let others: TextKeys = keys
            .iter()
            .filter(|(k, _)| !AUTH_KEYS.contains(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        if let Auth::Pending(requirement) = self.auth {
            if let Some(offer) = keys.get("AuthMethod") {
                let supported: &[&str] = match requirement {
                    AuthRequirement::None => &["None"],
                    AuthRequirement::Chap => &["CHAP"],
                };
                let answer = self.neg()?.answer_auth_method(offer, supported);
                answers.push("AuthMethod", answer.clone());
                self.auth = match answer.as_str() {
                    "None" => Auth::Done,
                    "CHAP" => Auth::ChapStart(
                        ChapTarget::new(
                            &self.cfg.chap_algorithms,
                            self.cfg.chap_id,
                            self.cfg.chap_challenge.clone(),
                        )
                        .map_err(|_| LoginError::Target("CHAP challenge misconfigured"))?,
                    ),
                    _ => {
                        return Err(LoginError::Authentication(format!(
                            "no acceptable AuthMethod in {offer:?}"
                        )));
                    }
                };
            } else if requirement == AuthRequirement::None && req.transit {
                self.auth = Auth::Done;
            }
        }
        if let Auth::ChapStart(chap) = &mut self.auth {
            if keys.get("CHAP_A").is_some() {
                answers.0.extend(chap.handle_algorithms(keys)?.0);
                let chap = std::mem::replace(&mut self.auth, Auth::Done);
                if let Auth::ChapStart(c) = chap {
                    self.auth = Auth::ChapChallenged(c);
                }
            }
        } else if let Auth::ChapChallenged(chap) = &mut self.auth {
            let target = self.target_name.clone();
            let name = keys.get("CHAP_N").map(str::to_owned);
            answers.0.extend(
                chap.handle_response(keys, |n| policy.chap_credentials(n, target.as_deref()))?
                    .0,
            );
            self.chap_name = name;
            self.auth = Auth::Done;
        } else if keys.iter().any(|(k, _)| k.starts_with("CHAP_")) {
            return Err(LoginError::Protocol("CHAP keys outside a CHAP exchange"));
        }
        if !others.is_empty() {
            answers.0.extend(self.neg()?.handle(&others)?.0);
        }
        if !req.transit {
            return Ok(false);
        }
        match self.auth {
            Auth::Done => Ok(self.neg()?.is_settled()),
            // CHAP agreed or the challenge just went out: the initiator must go on.
            Auth::ChapStart(_) | Auth::ChapChallenged(_) => Ok(false),
            Auth::Pending(AuthRequirement::Chap) => Err(LoginError::Authentication(
                "transit requested before authentication".into(),
            )),
            Auth::Pending(AuthRequirement::None) => Ok(true),
        }
    }

    fn operational(
        &mut self,
        req: &LoginRequest,
        keys: &TextKeys,
        answers: &mut TextKeys,
    ) -> Result<bool, LoginError> {
        if keys.iter().any(|(k, _)| AUTH_KEYS.contains(&k)) {
            return Err(LoginError::Protocol(
                "security keys in the operational stage",
            ));
        }
        let offered = self.operational_offered;
        let discovery = self.session_type == SessionType::Discovery;
        let neg = self.neg()?;
        answers.0.extend(neg.handle(keys)?.0);
        if req.transit {
            neg.settle_implicit();
        }
        if !offered {
            if !neg.rdma_extensions() {
                answers.0.extend(neg.offer(&["MaxRecvDataSegmentLength"]).0);
            }
            if !discovery {
                let extra = neg.keys_off_default(NORMAL_OPERATIONAL_KEYS);
                answers.0.extend(neg.offer(&extra).0);
            }
            self.operational_offered = true;
        }
        Ok(req.transit && self.neg()?.is_settled())
    }

    fn send_segment(&mut self) -> Result<TargetStep, LoginError> {
        let seg = self.outgoing.pop_front().unwrap_or_default();
        let tsih_now = self.tsih_now();
        if !self.outgoing.is_empty() {
            return Ok(TargetStep::Continue(self.response(
                false,
                true,
                Stage::Security,
                tsih_now,
                LoginStatus::SUCCESS,
                seg,
            )));
        }
        match self.decision.take() {
            None => Ok(TargetStep::Continue(self.response(
                false,
                false,
                Stage::Security,
                tsih_now,
                LoginStatus::SUCCESS,
                seg,
            ))),
            Some(Stage::FullFeature) => {
                let params = self.neg()?.finish()?;
                let first = self.first.ok_or(LoginError::Protocol("no login request"))?;
                let tsih = if first.tsih == 0 {
                    self.cfg.new_tsih
                } else {
                    first.tsih
                };
                if tsih == 0 {
                    return Err(LoginError::Target("no TSIH to assign"));
                }
                let response = self.response(
                    true,
                    false,
                    Stage::FullFeature,
                    tsih,
                    LoginStatus::SUCCESS,
                    seg,
                );
                let outcome = TargetLoginOutcome {
                    params,
                    isid: first.isid,
                    tsih,
                    cid: first.cid,
                    initiator_name: self.initiator_name.clone().unwrap_or_default(),
                    target_name: self.target_name.clone(),
                    session_type: self.session_type,
                    chap_name: self.chap_name.clone(),
                    exp_cmd_sn: self.cmd_sn,
                    next_stat_sn: self.stat_sn.peek(),
                };
                self.stage = Stage::FullFeature;
                Ok(TargetStep::Complete { response, outcome })
            }
            Some(nsg) => {
                let response = self.response(true, false, nsg, tsih_now, LoginStatus::SUCCESS, seg);
                self.stage = nsg;
                Ok(TargetStep::Continue(response))
            }
        }
    }
}
