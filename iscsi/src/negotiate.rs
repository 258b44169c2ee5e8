//! Key negotiation (RFC 7143 sections 6 and 13, RFC 7145 section 6): one table of keys
//! with their result functions, a [`Negotiation`] that answers the peer's offers and
//! checks the peer's answers to ours, and the [`NegotiatedParams`] both daemons use.
//!
//! Call order: `Negotiation::new(role, local)` → for each received text
//! `handle(&keys)` (answers to send back) and, when we want to propose keys,
//! `offer(&names)` → once no offer is outstanding ([`Negotiation::is_settled`]),
//! `finish()`.
//!
//! Result functions: InitialR2T OR, ImmediateData AND, DataPDUInOrder OR,
//! DataSequenceInOrder OR, RDMAExtensions AND; MaxBurstLength, FirstBurstLength,
//! MaxOutstandingR2T, ErrorRecoveryLevel, DefaultTime2Retain, MaxConnections,
//! InitiatorRecvDataSegmentLength, TargetRecvDataSegmentLength MIN; DefaultTime2Wait
//! MAX; MaxOutstandingUnexpectedPDUs MIN with 0 meaning unlimited; HeaderDigest,
//! DataDigest, AuthMethod lists; the names, aliases, TargetAddress,
//! TargetPortalGroupTag, SessionType and MaxRecvDataSegmentLength are declarative.

use std::collections::{BTreeMap, BTreeSet};

use crate::pdu::{PduLimits, Role};
use crate::text::TextKeys;

/// How the result of a key is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Boolean, result is the AND of both values.
    And,
    /// Boolean, result is the OR of both values.
    Or,
    /// Numeric, result is the minimum.
    Min,
    /// Numeric, result is the minimum where 0 means unlimited.
    MinZeroUnlimited,
    /// Numeric, result is the maximum.
    Max,
    /// List of values in the offerer's preference order; the responder picks one.
    List,
    /// Declared by one side (or each side for itself); never answered.
    Declarative,
}

/// One entry of the key table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyDef {
    /// Key name as on the wire.
    pub name: &'static str,
    /// Result function.
    pub kind: KeyKind,
    /// Range for numeric keys (inclusive).
    pub range: (u64, u64),
    /// Default value as on the wire.
    pub default: &'static str,
    /// Allowed values for lists (empty: any).
    pub values: &'static [&'static str],
}

const NUM: (u64, u64) = (0, 0);

/// Every key this crate negotiates.
pub const KEYS: &[KeyDef] = &[
    KeyDef {
        name: "HeaderDigest",
        kind: KeyKind::List,
        range: NUM,
        default: "None",
        values: &["None", "CRC32C"],
    },
    KeyDef {
        name: "DataDigest",
        kind: KeyKind::List,
        range: NUM,
        default: "None",
        values: &["None", "CRC32C"],
    },
    KeyDef {
        name: "AuthMethod",
        kind: KeyKind::List,
        range: NUM,
        default: "None",
        values: &["None", "CHAP", "KRB5", "SPKM1", "SPKM2", "SRP"],
    },
    KeyDef {
        name: "MaxConnections",
        kind: KeyKind::Min,
        range: (1, 65535),
        default: "1",
        values: &[],
    },
    KeyDef {
        name: "InitialR2T",
        kind: KeyKind::Or,
        range: NUM,
        default: "Yes",
        values: &[],
    },
    KeyDef {
        name: "ImmediateData",
        kind: KeyKind::And,
        range: NUM,
        default: "Yes",
        values: &[],
    },
    KeyDef {
        name: "MaxRecvDataSegmentLength",
        kind: KeyKind::Declarative,
        range: (512, 16_777_215),
        default: "8192",
        values: &[],
    },
    KeyDef {
        name: "MaxBurstLength",
        kind: KeyKind::Min,
        range: (512, 16_777_215),
        default: "262144",
        values: &[],
    },
    KeyDef {
        name: "FirstBurstLength",
        kind: KeyKind::Min,
        range: (512, 16_777_215),
        default: "65536",
        values: &[],
    },
    KeyDef {
        name: "DefaultTime2Wait",
        kind: KeyKind::Max,
        range: (0, 3600),
        default: "2",
        values: &[],
    },
    KeyDef {
        name: "DefaultTime2Retain",
        kind: KeyKind::Min,
        range: (0, 3600),
        default: "20",
        values: &[],
    },
    KeyDef {
        name: "MaxOutstandingR2T",
        kind: KeyKind::Min,
        range: (1, 65535),
        default: "1",
        values: &[],
    },
    KeyDef {
        name: "DataPDUInOrder",
        kind: KeyKind::Or,
        range: NUM,
        default: "Yes",
        values: &[],
    },
    KeyDef {
        name: "DataSequenceInOrder",
        kind: KeyKind::Or,
        range: NUM,
        default: "Yes",
        values: &[],
    },
    KeyDef {
        name: "ErrorRecoveryLevel",
        kind: KeyKind::Min,
        range: (0, 2),
        default: "0",
        values: &[],
    },
    KeyDef {
        name: "SessionType",
        kind: KeyKind::Declarative,
        range: NUM,
        default: "Normal",
        values: &["Normal", "Discovery"],
    },
    KeyDef {
        name: "TargetName",
        kind: KeyKind::Declarative,
        range: NUM,
        default: "",
        values: &[],
    },
    KeyDef {
        name: "InitiatorName",
        kind: KeyKind::Declarative,
        range: NUM,
        default: "",
        values: &[],
    },
    KeyDef {
        name: "TargetAlias",
        kind: KeyKind::Declarative,
        range: NUM,
        default: "",
        values: &[],
    },
    KeyDef {
        name: "InitiatorAlias",
        kind: KeyKind::Declarative,
        range: NUM,
        default: "",
        values: &[],
    },
    KeyDef {
        name: "TargetAddress",
        kind: KeyKind::Declarative,
        range: NUM,
        default: "",
        values: &[],
    },
    KeyDef {
        name: "TargetPortalGroupTag",
        kind: KeyKind::Declarative,
        range: (0, 65535),
        default: "",
        values: &[],
    },
    KeyDef {
        name: "RDMAExtensions",
        kind: KeyKind::And,
        range: NUM,
        default: "No",
        values: &[],
    },
    KeyDef {
        name: "InitiatorRecvDataSegmentLength",
        kind: KeyKind::Min,
        range: (512, 16_777_215),
        default: "8192",
        values: &[],
    },
    KeyDef {
        name: "TargetRecvDataSegmentLength",
        kind: KeyKind::Min,
        range: (512, 16_777_215),
        default: "8192",
        values: &[],
    },
    KeyDef {
        name: "MaxOutstandingUnexpectedPDUs",
        kind: KeyKind::MinZeroUnlimited,
        range: (0, 4_294_967_295),
        default: "0",
        values: &[],
    },
];

/// Look a key up in [`KEYS`].
pub fn key_def(name: &str) -> Option<&'static KeyDef> {
    KEYS.iter().find(|k| k.name == name)
}

/// Keys evaluated first in a batch because they decide whether others are relevant.
const FIRST: &[&str] = &[
    "SessionType",
    "RDMAExtensions",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
];

/// Keys that only apply with RDMAExtensions=Yes.
const ISER_KEYS: &[&str] = &[
    "InitiatorRecvDataSegmentLength",
    "TargetRecvDataSegmentLength",
    "MaxOutstandingUnexpectedPDUs",
];

/// The operational keys of a normal session that either side offers (digests,
/// MaxRecvDataSegmentLength and the iSER keys aside).
pub(crate) const NORMAL_OPERATIONAL_KEYS: &[&str] = &[
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "MaxConnections",
];

/// Keys that are irrelevant in a discovery session (RFC 7143 section 13).
const NORMAL_ONLY_KEYS: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
];

/// Obsolete RFC 3720 marker keys; RFC 7143 section 13.25 forbids NotUnderstood for them.
const MARKER_KEYS: &[&str] = &["IFMarker", "OFMarker"];
const MARKER_INT_KEYS: &[&str] = &["IFMarkInt", "OFMarkInt"];

/// A negotiation that the peer got wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// The peer sent a key twice in one negotiation.
    #[error("key {0} negotiated twice")]
    Duplicate(String),
    /// The peer's answer to our offer breaks the key's result function.
    #[error("answer {value:?} to our offer of {key} is not allowed")]
    BadAnswer {
        /// Key.
        key: String,
        /// What the peer answered.
        value: String,
    },
    /// A required declarative value is out of range.
    #[error("value {value:?} of {key} is invalid")]
    BadValue {
        /// Key.
        key: String,
        /// Value received.
        value: String,
    },
    /// `finish` was called while our offers were still unanswered.
    #[error("offers still unanswered: {0:?}")]
    Unsettled(Vec<&'static str>),
}

/// A digest choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestKind {
    /// No digest.
    None,
    /// CRC32C.
    Crc32c,
}

impl DigestKind {
    fn wire(self) -> &'static str {
        match self {
            DigestKind::None => "None",
            DigestKind::Crc32c => "CRC32C",
        }
    }
}

/// Session type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum SessionType {
    /// A normal session with a target.
    #[default]
    Normal,
    /// A discovery session (SendTargets only).
    Discovery,
}

/// What one side supports and prefers: its own value for each key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalParams {
    /// HeaderDigest values in preference order.
    pub header_digest: Vec<DigestKind>,
    /// DataDigest values in preference order.
    pub data_digest: Vec<DigestKind>,
    /// MaxConnections.
    pub max_connections: u32,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// Our MaxRecvDataSegmentLength (declared).
    pub max_recv_data_segment_length: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength.
    pub first_burst_length: u32,
    /// DefaultTime2Wait.
    pub default_time2wait: u32,
    /// DefaultTime2Retain.
    pub default_time2retain: u32,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// ErrorRecoveryLevel.
    pub error_recovery_level: u32,
    /// RDMAExtensions (iSER).
    pub rdma_extensions: bool,
    /// InitiatorRecvDataSegmentLength (iSER).
    pub initiator_recv_data_segment_length: u32,
    /// TargetRecvDataSegmentLength (iSER).
    pub target_recv_data_segment_length: u32,
    /// MaxOutstandingUnexpectedPDUs (iSER; 0 = unlimited).
    pub max_outstanding_unexpected_pdus: u32,
}

impl Default for LocalParams {
    /// The RFC defaults (digests: None only).
    fn default() -> Self {
        LocalParams {
            header_digest: vec![DigestKind::None],
            data_digest: vec![DigestKind::None],
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            max_recv_data_segment_length: 8192,
            max_burst_length: 262_144,
            first_burst_length: 65_536,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            rdma_extensions: false,
            initiator_recv_data_segment_length: 8192,
            target_recv_data_segment_length: 8192,
            max_outstanding_unexpected_pdus: 0,
        }
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_owned()
}

impl LocalParams {
    /// Our own value of `key` as sent in an offer or used to compute an answer.
    fn wire_value(&self, key: &str) -> Option<String> {
        let digests = |l: &[DigestKind]| l.iter().map(|d| d.wire()).collect::<Vec<_>>().join(",");
        Some(match key {
            "HeaderDigest" => digests(&self.header_digest),
            "DataDigest" => digests(&self.data_digest),
            "MaxConnections" => self.max_connections.to_string(),
            "InitialR2T" => yes_no(self.initial_r2t),
            "ImmediateData" => yes_no(self.immediate_data),
            "MaxRecvDataSegmentLength" => self.max_recv_data_segment_length.to_string(),
            "MaxBurstLength" => self.max_burst_length.to_string(),
            "FirstBurstLength" => self.first_burst_length.to_string(),
            "DefaultTime2Wait" => self.default_time2wait.to_string(),
            "DefaultTime2Retain" => self.default_time2retain.to_string(),
            "MaxOutstandingR2T" => self.max_outstanding_r2t.to_string(),
            "DataPDUInOrder" => yes_no(self.data_pdu_in_order),
            "DataSequenceInOrder" => yes_no(self.data_sequence_in_order),
            "ErrorRecoveryLevel" => self.error_recovery_level.to_string(),
            "RDMAExtensions" => yes_no(self.rdma_extensions),
            "InitiatorRecvDataSegmentLength" => self.initiator_recv_data_segment_length.to_string(),
            "TargetRecvDataSegmentLength" => self.target_recv_data_segment_length.to_string(),
            "MaxOutstandingUnexpectedPDUs" => self.max_outstanding_unexpected_pdus.to_string(),
            _ => return None,
        })
    }

    /// The operational keys an initiator offers in a normal session (iSER keys only
    /// when RDMAExtensions is wanted).
    pub fn operational_offer(&self, session_type: SessionType) -> Vec<&'static str> {
        // RDMAExtensions goes first: it decides which other keys are relevant.
        let mut v = Vec::new();
        if session_type == SessionType::Normal && self.rdma_extensions {
            v.push("RDMAExtensions");
        }
        v.extend_from_slice(&["HeaderDigest", "DataDigest"]);
        if session_type == SessionType::Normal {
            v.extend_from_slice(NORMAL_OPERATIONAL_KEYS);
            if self.rdma_extensions {
                v.extend_from_slice(ISER_KEYS);
            }
        }
        // Declared even when iSER is wanted: should RDMAExtensions end up No, both
        // sides still need it.
        v.push("MaxRecvDataSegmentLength");
        v
    }
}

/// Parse a numeric value (decimal or 0x hex).
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn min_zero_unlimited(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    }
}

/// The result of a key between an offer and our own value (responder side). `None`
/// means the offer is malformed or out of range (answer Reject).
fn respond_value(def: &KeyDef, offer: &str, ours: &str) -> Option<String> {
    match def.kind {
        KeyKind::And => Some(yes_no(parse_bool(offer)? && parse_bool(ours)?)),
        KeyKind::Or => Some(yes_no(parse_bool(offer)? || parse_bool(ours)?)),
        KeyKind::Min | KeyKind::Max | KeyKind::MinZeroUnlimited => {
            let o = parse_number(offer)?;
            if o < def.range.0 || o > def.range.1 {
                return None;
            }
            let m = parse_number(ours)?;
            Some(
                match def.kind {
                    KeyKind::Min => o.min(m),
                    KeyKind::Max => o.max(m),
                    _ => min_zero_unlimited(o, m),
                }
                .to_string(),
            )
        }
        KeyKind::List => {
            let ours: Vec<&str> = ours.split(',').collect();
            let pick = offer.split(',').find(|v| ours.contains(v))?;
            Some(pick.to_owned())
        }
        KeyKind::Declarative => None,
    }
}

/// Check the peer's answer `ans` to our offer `off`; returns the result.
fn check_answer(def: &KeyDef, off: &str, ans: &str) -> Option<String> {
    match def.kind {
        KeyKind::And => {
            let (o, a) = (parse_bool(off)?, parse_bool(ans)?);
            (o || !a).then(|| yes_no(o && a))
        }
        KeyKind::Or => {
            let (o, a) = (parse_bool(off)?, parse_bool(ans)?);
            (!o || a).then(|| yes_no(o || a))
        }
        KeyKind::Min | KeyKind::Max | KeyKind::MinZeroUnlimited => {
            let (o, a) = (parse_number(off)?, parse_number(ans)?);
            if a < def.range.0 || a > def.range.1 {
                return None;
            }
            let ok = match def.kind {
                KeyKind::Min => a <= o,
                KeyKind::Max => a >= o,
                _ => min_zero_unlimited(o, a) == a,
            };
            ok.then(|| a.to_string())
        }
        KeyKind::List => off.split(',').any(|v| v == ans).then(|| ans.to_owned()),
        KeyKind::Declarative => Some(ans.to_owned()),
    }
}

/// The special answers of RFC 7143 section 6.2.
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
/// Answer for a key whose value cannot be accepted.
pub const REJECT: &str = "Reject";
/// Answer for a key that does not apply given other results.
pub const IRRELEVANT: &str = "Irrelevant";

/// One side's view of a key negotiation.
#[derive(Debug, Clone)]
pub struct Negotiation {
    role: Role,
    local: LocalParams,
    results: BTreeMap<&'static str, String>,
    peer_declared: BTreeMap<String, String>,
    offered: BTreeMap<&'static str, String>,
    peer_sent: BTreeSet<String>,
}

impl Negotiation {
    /// Start a negotiation for `role` with our own values.
    pub fn new(role: Role, local: LocalParams) -> Self {
        Negotiation {
            role,
            local,
            results: BTreeMap::new(),
            peer_declared: BTreeMap::new(),
            offered: BTreeMap::new(),
            peer_sent: BTreeSet::new(),
        }
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Our parameters.
    pub fn local(&self) -> &LocalParams {
        &self.local
    }

    /// True when none of our offers awaits an answer.
    pub fn is_settled(&self) -> bool {
        self.offered.is_empty()
    }

    /// The agreed value of a key, if negotiated.
    pub fn result(&self, key: &str) -> Option<&str> {
        self.results.get(key).map(String::as_str)
    }

    /// A declarative value the peer sent (names, aliases, its MaxRecvDataSegmentLength).
    pub fn peer_declared(&self, key: &str) -> Option<&str> {
        self.peer_declared.get(key).map(String::as_str)
    }

    /// True when the peer already sent `key` in this negotiation.
    pub fn peer_sent(&self, key: &str) -> bool {
        self.peer_sent.contains(key)
    }

    /// The current value of a key: result if negotiated, else the default.
    fn current(&self, key: &str) -> String {
        if let Some(v) = self.results.get(key) {
            return v.clone();
        }
        key_def(key)
            .map(|d| d.default.to_owned())
            .unwrap_or_default()
    }

    fn current_bool(&self, key: &str) -> bool {
        parse_bool(&self.current(key)).unwrap_or(false)
    }

    /// The value a key will have if our outstanding offer is accepted: the result if
    /// negotiated, else our offer, else the default.
    fn prospective_bool(&self, key: &str) -> bool {
        match (self.results.get(key), self.offered.get(key)) {
            (Some(v), _) | (None, Some(v)) => parse_bool(v).unwrap_or(false),
            (None, None) => self.current_bool(key),
        }
    }

    fn irrelevant(&self, key: &str) -> bool {
        let discovery = self.peer_declared("SessionType") == Some("Discovery")
            || self.result("SessionType") == Some("Discovery");
        if discovery && NORMAL_ONLY_KEYS.contains(&key) {
            return true;
        }
        if ISER_KEYS.contains(&key) {
            return !self.prospective_bool("RDMAExtensions");
        }
        if key == "FirstBurstLength" {
            return self.prospective_bool("InitialR2T") && !self.prospective_bool("ImmediateData");
        }
        // iSER carries no digests (RFC 7145): they keep their default, None.
        if matches!(key, "HeaderDigest" | "DataDigest") {
            return self.prospective_bool("RDMAExtensions");
        }
        false
    }

    /// Propose our values for `keys` (skipping keys already negotiated, offered or
    /// irrelevant, and keys this table does not know). Declarative keys are recorded as
    /// sent; the others await the peer's answer.
    pub fn offer(&mut self, keys: &[&str]) -> TextKeys {
        let mut out = TextKeys::new();
        for &k in keys {
            let Some(def) = key_def(k) else { continue };
            // A declarative key is ours to declare whatever the peer declared for itself.
            let peer_has = def.kind != KeyKind::Declarative && self.peer_sent(def.name);
            if self.results.contains_key(def.name)
                || self.offered.contains_key(def.name)
                || peer_has
            {
                continue;
            }
            if self.irrelevant(def.name) {
                continue;
            }
            let Some(v) = self.local.wire_value(def.name) else {
                continue;
            };
            if def.kind == KeyKind::Declarative {
                self.results.insert(def.name, v.clone());
            } else {
                self.offered.insert(def.name, v.clone());
            }
            out.push(def.name, v);
        }
        out
    }

    /// Declare a declarative key (names, aliases, TargetPortalGroupTag).
    pub fn declare(&mut self, key: &'static str, value: impl Into<String>) -> TextKeys {
        let value = value.into();
        self.results.insert(key, value.clone());
        let mut out = TextKeys::new();
        out.push(key, value);
        out
    }

    /// Keys whose local value differs from the RFC default and that neither side has
    /// negotiated yet (a target offers these so its limits are not silently ignored).
    pub fn keys_off_default(&self, keys: &[&'static str]) -> Vec<&'static str> {
        keys.iter()
            .copied()
            .filter(|k| {
                let Some(def) = key_def(k) else { return false };
                def.kind != KeyKind::Declarative
                    && !self.results.contains_key(k)
                    && !self.offered.contains_key(k)
                    && !self.peer_sent(k)
                    && self.local.wire_value(k).as_deref() != Some(def.default)
            })
            .collect()
    }

    /// Process received keys: record answers to our offers and answer the peer's
    /// offers. Returns the answers to send.
    pub fn handle(&mut self, incoming: &TextKeys) -> Result<TextKeys, NegotiationError> {
        let mut order: Vec<(&str, &str)> = incoming.iter().collect();
        order.sort_by_key(|(k, _)| FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()));
        let mut out = TextKeys::new();
        for (k, v) in order {
            if let Some(off) = self.offered.remove(k) {
                self.take_answer(k, &off, v)?;
                continue;
            }
            if !self.peer_sent.insert(k.to_owned()) {
                return Err(NegotiationError::Duplicate(k.to_owned()));
            }
            if let Some(answer) = self.answer_offer(k, v)? {
                out.push(k, answer);
            }
        }
        Ok(out)
    }

    fn take_answer(&mut self, key: &str, off: &str, ans: &str) -> Result<(), NegotiationError> {
        let Some(def) = key_def(key) else {
            return Ok(());
        };
        if matches!(ans, NOT_UNDERSTOOD | REJECT | IRRELEVANT) {
            // The key keeps its default.
            return Ok(());
        }
        match check_answer(def, off, ans) {
            Some(result) => {
                self.results.insert(def.name, result);
                Ok(())
            }
            None => Err(NegotiationError::BadAnswer {
                key: key.to_owned(),
                value: ans.to_owned(),
            }),
        }
    }

    fn answer_offer(&mut self, key: &str, value: &str) -> Result<Option<String>, NegotiationError> {
        if MARKER_KEYS.contains(&key) {
            return Ok(Some("No".to_owned()));
        }
        if MARKER_INT_KEYS.contains(&key) {
            return Ok(Some(REJECT.to_owned()));
        }
        let Some(def) = key_def(key) else {
            return Ok(Some(NOT_UNDERSTOOD.to_owned()));
        };
        if def.kind == KeyKind::Declarative {
            if def.range != NUM {
                let ok = parse_number(value).is_some_and(|n| n >= def.range.0 && n <= def.range.1);
                if !ok {
                    return Err(NegotiationError::BadValue {
                        key: key.to_owned(),
                        value: value.to_owned(),
                    });
                }
            }
            if !def.values.is_empty() && !def.values.contains(&value) {
                return Err(NegotiationError::BadValue {
                    key: key.to_owned(),
                    value: value.to_owned(),
                });
            }
            self.peer_declared.insert(key.to_owned(), value.to_owned());
            return Ok(None);
        }
        if matches!(value, NOT_UNDERSTOOD | REJECT | IRRELEVANT) {
            // An answer to an offer we never made: ignore it.
            return Ok(None);
        }
        if self.irrelevant(def.name) {
            return Ok(Some(IRRELEVANT.to_owned()));
        }
        let ours = match def.name {
            "AuthMethod" => return Ok(Some(REJECT.to_owned())),
            "FirstBurstLength" => {
                // FirstBurstLength must not exceed MaxBurstLength.
                let burst = parse_number(&self.current("MaxBurstLength")).unwrap_or(262_144);
                self.local.first_burst_length.min(burst as u32).to_string()
            }
            name => match self.local.wire_value(name) {
                Some(v) => v,
                None => return Ok(Some(NOT_UNDERSTOOD.to_owned())),
            },
        };
        match respond_value(def, value, &ours) {
            Some(result) => {
                self.results.insert(def.name, result.clone());
                Ok(Some(result))
            }
            None => Ok(Some(REJECT.to_owned())),
        }
    }

    /// Answer an AuthMethod offer from our list of supported methods (security stage).
    pub fn answer_auth_method(&mut self, offer: &str, supported: &[&str]) -> String {
        self.peer_sent.insert("AuthMethod".to_owned());
        let ours = supported.join(",");
        match key_def("AuthMethod").and_then(|def| respond_value(def, offer, &ours)) {
            Some(r) => {
                self.results.insert("AuthMethod", r.clone());
                r
            }
            None => REJECT.to_owned(),
        }
    }

    /// Offer AuthMethod with our list (initiator, security stage).
    pub fn offer_auth_method(&mut self, methods: &[&str]) -> TextKeys {
        let v = methods.join(",");
        self.offered.insert("AuthMethod", v.clone());
        let mut out = TextKeys::new();
        out.push("AuthMethod", v);
        out
    }

    /// Resolve unanswered offers whose outcome the offer alone decides (AND with "No",
    /// OR with "Yes"): RFC 7143 section 6.2.1 makes answering them optional.
    pub fn settle_implicit(&mut self) {
        let decided: Vec<&'static str> = self
            .offered
            .iter()
            .filter(|(k, v)| match key_def(k).map(|d| d.kind) {
                Some(KeyKind::And) => v.as_str() == "No",
                Some(KeyKind::Or) => v.as_str() == "Yes",
                _ => false,
            })
            .map(|(k, _)| *k)
            .collect();
        for k in decided {
            if let Some(v) = self.offered.remove(k) {
                self.results.insert(k, v);
            }
        }
    }

    /// True when RDMAExtensions=Yes was agreed.
    pub fn rdma_extensions(&self) -> bool {
        self.current_bool("RDMAExtensions")
    }

    /// The agreed parameters. Fails while offers are unanswered.
    pub fn finish(&self) -> Result<NegotiatedParams, NegotiationError> {
        if !self.offered.is_empty() {
            return Err(NegotiationError::Unsettled(
                self.offered.keys().copied().collect(),
            ));
        }
        let num = |k: &str| parse_number(&self.current(k)).unwrap_or(0) as u32;
        let peer_mrdsl = self
            .peer_declared("MaxRecvDataSegmentLength")
            .and_then(parse_number)
            .map(|n| n as u32)
            .unwrap_or(8192);
        // Our own value counts only once declared; undeclared means the default.
        let own_mrdsl = self
            .result("MaxRecvDataSegmentLength")
            .and_then(parse_number)
            .map(|n| n as u32)
            .unwrap_or(8192);
        let (initiator_mrdsl, target_mrdsl) = match self.role {
            Role::Initiator => (own_mrdsl, peer_mrdsl),
            Role::Target => (peer_mrdsl, own_mrdsl),
        };
        let declared = |k: &str| {
            self.peer_declared(k)
                .or_else(|| self.result(k))
                .map(str::to_owned)
        };
        let max_burst_length = num("MaxBurstLength");
        let initial_r2t = self.current_bool("InitialR2T");
        let immediate_data = self.current_bool("ImmediateData");
        Ok(NegotiatedParams {
            header_digest: self.current("HeaderDigest") == "CRC32C",
            data_digest: self.current("DataDigest") == "CRC32C",
            max_connections: num("MaxConnections"),
            initial_r2t,
            immediate_data,
            initiator_max_recv_data_segment_length: initiator_mrdsl,
            target_max_recv_data_segment_length: target_mrdsl,
            max_burst_length,
            first_burst_length: if initial_r2t && !immediate_data {
                0
            } else {
                num("FirstBurstLength").min(max_burst_length)
            },
            default_time2wait: num("DefaultTime2Wait"),
            default_time2retain: num("DefaultTime2Retain"),
            max_outstanding_r2t: num("MaxOutstandingR2T"),
            data_pdu_in_order: self.current_bool("DataPDUInOrder"),
            data_sequence_in_order: self.current_bool("DataSequenceInOrder"),
            error_recovery_level: num("ErrorRecoveryLevel") as u8,
            session_type: if declared("SessionType").as_deref() == Some("Discovery") {
                SessionType::Discovery
            } else {
                SessionType::Normal
            },
            initiator_name: declared("InitiatorName"),
            target_name: declared("TargetName"),
            initiator_alias: declared("InitiatorAlias"),
            target_alias: declared("TargetAlias"),
            target_portal_group_tag: declared("TargetPortalGroupTag")
                .and_then(|v| parse_number(&v))
                .map(|n| n as u16),
            rdma_extensions: self.current_bool("RDMAExtensions"),
            initiator_recv_data_segment_length: num("InitiatorRecvDataSegmentLength"),
            target_recv_data_segment_length: num("TargetRecvDataSegmentLength"),
            max_outstanding_unexpected_pdus: num("MaxOutstandingUnexpectedPDUs"),
        })
    }
}

/// The outcome of a login negotiation, as both daemons use it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NegotiatedParams {
    /// HeaderDigest=CRC32C.
    pub header_digest: bool,
    /// DataDigest=CRC32C.
    pub data_digest: bool,
    /// MaxConnections.
    pub max_connections: u32,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// ImmediateData.
    pub immediate_data: bool,
    /// MaxRecvDataSegmentLength declared by the initiator (the target sends at most this).
    pub initiator_max_recv_data_segment_length: u32,
    /// MaxRecvDataSegmentLength declared by the target (the initiator sends at most this).
    pub target_max_recv_data_segment_length: u32,
    /// MaxBurstLength.
    pub max_burst_length: u32,
    /// FirstBurstLength (0 when irrelevant: InitialR2T=Yes and ImmediateData=No).
    pub first_burst_length: u32,
    /// DefaultTime2Wait.
    pub default_time2wait: u32,
    /// DefaultTime2Retain.
    pub default_time2retain: u32,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
    /// ErrorRecoveryLevel.
    pub error_recovery_level: u8,
    /// SessionType.
    pub session_type: SessionType,
    /// InitiatorName.
    pub initiator_name: Option<String>,
    /// TargetName.
    pub target_name: Option<String>,
    /// InitiatorAlias.
    pub initiator_alias: Option<String>,
    /// TargetAlias.
    pub target_alias: Option<String>,
    /// TargetPortalGroupTag.
    pub target_portal_group_tag: Option<u16>,
    /// RDMAExtensions (iSER in use).
    pub rdma_extensions: bool,
    /// InitiatorRecvDataSegmentLength (iSER).
    pub initiator_recv_data_segment_length: u32,
    /// TargetRecvDataSegmentLength (iSER).
    pub target_recv_data_segment_length: u32,
    /// MaxOutstandingUnexpectedPDUs (iSER; 0 = unlimited).
    pub max_outstanding_unexpected_pdus: u32,
}

impl NegotiatedParams {
    /// Largest data segment `role` may receive in one PDU. Over iSER this is
    /// Initiator/TargetRecvDataSegmentLength (MaxRecvDataSegmentLength is irrelevant).
    pub fn max_recv_data_segment(&self, role: Role) -> u32 {
        match (role, self.rdma_extensions) {
            (Role::Initiator, false) => self.initiator_max_recv_data_segment_length,
            (Role::Target, false) => self.target_max_recv_data_segment_length,
            (Role::Initiator, true) => self.initiator_recv_data_segment_length,
            (Role::Target, true) => self.target_recv_data_segment_length,
        }
    }

    /// Largest data segment `role` may send in one PDU.
    pub fn max_send_data_segment(&self, role: Role) -> u32 {
        match role {
            Role::Initiator => self.max_recv_data_segment(Role::Target),
            Role::Target => self.max_recv_data_segment(Role::Initiator),
        }
    }

    /// Receive limits for `role` in full feature phase.
    pub fn recv_limits(&self, role: Role) -> PduLimits {
        PduLimits {
            max_recv_data_segment_length: self.max_recv_data_segment(role),
        }
    }

    /// Digests in force in full feature phase (never over iSER).
    pub fn digests(&self) -> crate::Digests {
        crate::Digests {
            header: self.header_digest && !self.rdma_extensions,
            data: self.data_digest && !self.rdma_extensions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(pairs: &[(&str, &str)]) -> TextKeys {
        let mut k = TextKeys::new();
        for (a, b) in pairs {
            k.push(*a, *b);
        }
        k
    }

    #[test]
    fn responder_applies_result_functions() {
        let local = LocalParams {
            header_digest: vec![DigestKind::Crc32c, DigestKind::None],
            max_burst_length: 131_072,
            initial_r2t: false,
            immediate_data: false,
            default_time2wait: 5,
            ..LocalParams::default()
        };
        let mut n = Negotiation::new(Role::Target, local);
        let ans = n
            .handle(&keys(&[
                ("HeaderDigest", "None,CRC32C"),
                ("DataDigest", "CRC32C"),
                ("InitialR2T", "No"),
                ("ImmediateData", "Yes"),
                ("MaxBurstLength", "262144"),
                ("FirstBurstLength", "262144"),
                ("DefaultTime2Wait", "2"),
                ("MaxOutstandingR2T", "70000"),
                ("X-com.example.foo", "1"),
                ("OFMarker", "No"),
                ("IFMarkInt", "2048"),
                ("MaxRecvDataSegmentLength", "65536"),
            ]))
            .unwrap();
        assert_eq!(ans.get("HeaderDigest"), Some("None"));
        assert_eq!(ans.get("DataDigest"), Some(REJECT));
        assert_eq!(ans.get("InitialR2T"), Some("No"));
        assert_eq!(ans.get("ImmediateData"), Some("No"));
        assert_eq!(ans.get("MaxBurstLength"), Some("131072"));
        // FirstBurstLength is capped by the negotiated MaxBurstLength.
        assert_eq!(ans.get("FirstBurstLength"), Some("65536"));
        assert_eq!(ans.get("DefaultTime2Wait"), Some("5"));
        assert_eq!(ans.get("MaxOutstandingR2T"), Some(REJECT));
        assert_eq!(ans.get("X-com.example.foo"), Some(NOT_UNDERSTOOD));
        assert_eq!(ans.get("OFMarker"), Some("No"));
        assert_eq!(ans.get("IFMarkInt"), Some(REJECT));
        assert_eq!(
            ans.get("MaxRecvDataSegmentLength"),
            None,
            "declarative keys are not answered"
        );
        let p = n.finish().unwrap();
        assert_eq!(p.initiator_max_recv_data_segment_length, 65536);
        assert_eq!(p.target_max_recv_data_segment_length, 8192);
        assert_eq!(p.max_burst_length, 131_072);
        assert!(!p.header_digest);
        assert_eq!(p.max_outstanding_r2t, 1);
        assert_eq!(
            n.handle(&keys(&[("InitialR2T", "Yes")])),
            Err(NegotiationError::Duplicate("InitialR2T".into()))
        );
    }

    #[test]
    fn first_burst_irrelevant_and_iser_keys() {
        let mut n = Negotiation::new(
            Role::Target,
            LocalParams {
                immediate_data: false,
                ..LocalParams::default()
            },
        );
        let ans = n
            .handle(&keys(&[
                ("InitialR2T", "Yes"),
                ("ImmediateData", "Yes"),
                ("FirstBurstLength", "4096"),
                ("TargetRecvDataSegmentLength", "4096"),
            ]))
            .unwrap();
        assert_eq!(ans.get("ImmediateData"), Some("No"));
        assert_eq!(ans.get("FirstBurstLength"), Some(IRRELEVANT));
        assert_eq!(ans.get("TargetRecvDataSegmentLength"), Some(IRRELEVANT));
        assert_eq!(n.finish().unwrap().first_burst_length, 0);

        let local = LocalParams {
            rdma_extensions: true,
            target_recv_data_segment_length: 262_144,
            ..LocalParams::default()
        };
        let mut n = Negotiation::new(Role::Target, local);
        // RDMAExtensions is evaluated first even when it comes last.
        let ans = n
            .handle(&keys(&[
                ("TargetRecvDataSegmentLength", "1048576"),
                ("MaxOutstandingUnexpectedPDUs", "0"),
                ("HeaderDigest", "CRC32C,None"),
                ("RDMAExtensions", "Yes"),
            ]))
            .unwrap();
        assert_eq!(ans.get("HeaderDigest"), Some(IRRELEVANT));
        assert_eq!(ans.get("RDMAExtensions"), Some("Yes"));
        assert_eq!(ans.get("TargetRecvDataSegmentLength"), Some("262144"));
        assert_eq!(ans.get("MaxOutstandingUnexpectedPDUs"), Some("0"));
        let p = n.finish().unwrap();
        assert!(p.rdma_extensions);
        assert_eq!(p.max_recv_data_segment(Role::Target), 262_144);
        assert_eq!(p.digests(), crate::Digests::NONE);
    }

    #[test]
    fn offerer_checks_answers() {
        let mut n = Negotiation::new(Role::Initiator, LocalParams::default());
        let offer = n.offer(&[
            "MaxBurstLength",
            "ImmediateData",
            "HeaderDigest",
            "MaxRecvDataSegmentLength",
        ]);
        assert_eq!(offer.get("MaxBurstLength"), Some("262144"));
        assert!(!n.is_settled());
        assert!(matches!(n.finish(), Err(NegotiationError::Unsettled(_))));
        let bad = n.clone().handle(&keys(&[("MaxBurstLength", "300000")]));
        assert!(matches!(bad, Err(NegotiationError::BadAnswer { .. })));
        let bad = n.clone().handle(&keys(&[("HeaderDigest", "CRC32C")]));
        assert!(matches!(bad, Err(NegotiationError::BadAnswer { .. })));
        n.handle(&keys(&[
            ("MaxBurstLength", "65536"),
            ("ImmediateData", "No"),
            ("HeaderDigest", "None"),
        ]))
        .unwrap();
        assert!(n.is_settled());
        let p = n.finish().unwrap();
        assert_eq!(p.max_burst_length, 65536);
        // InitialR2T=Yes (default) with ImmediateData=No: FirstBurstLength is irrelevant.
        assert_eq!(p.first_burst_length, 0);
        assert!(!p.immediate_data);
    }

    #[test]
    fn discovery_sessions_ignore_normal_only_keys() {
        let mut n = Negotiation::new(Role::Target, LocalParams::default());
        let ans = n
            .handle(&keys(&[
                ("SessionType", "Discovery"),
                ("MaxBurstLength", "4096"),
                ("HeaderDigest", "None"),
                ("DefaultTime2Wait", "5"),
            ]))
            .unwrap();
        assert_eq!(ans.get("MaxBurstLength"), Some(IRRELEVANT));
        assert_eq!(ans.get("HeaderDigest"), Some("None"));
        assert_eq!(ans.get("DefaultTime2Wait"), Some("5"));
        assert_eq!(n.finish().unwrap().session_type, SessionType::Discovery);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_number("0x10"), Some(16));
        assert_eq!(parse_number("512"), Some(512));
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
    }
}
