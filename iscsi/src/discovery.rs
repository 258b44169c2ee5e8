//! Text exchanges in full feature phase, and SendTargets discovery on top of them.
//!
//! Target: [`TextResponder::handle`] every Text Request → `Respond(pdu)` (an
//! acknowledgement of partial text, or the next part of a long answer) or
//! `Request(keys)` (the whole request) → answer with [`TextResponder::respond`], for
//! SendTargets with the keys from [`send_targets_keys`]. Initiator:
//! [`TextRequester::start`] → [`TextRequester::handle_response`] until `Done(keys)`,
//! then [`parse_send_targets`].
//!
//! StatSN, ExpCmdSN and MaxCmdSN come from the caller's session state ([`StatusSn`]);
//! the caller advances StatSN once for every response PDU.

use std::collections::VecDeque;

use crate::negotiate::SessionType;
use crate::pdu::{Header, Pdu, TextRequest, TextResponse, RESERVED_TAG};
use crate::text::{split_text, TextAssembler, TextError, TextKeys};

/// One target of a SendTargets answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TargetRecord {
    /// TargetName.
    pub name: String,
    /// TargetAddress values, `host:port,tpgt` (IPv6 hosts in brackets).
    pub addresses: Vec<String>,
}

/// The keys answering `SendTargets=<query>`.
///
/// `All` lists every record in a discovery session (and is rejected in a normal
/// session); a target name lists that target; an empty value lists the session's own
/// target (`session_target`).
pub fn send_targets_keys(
    query: &str,
    records: &[TargetRecord],
    session: SessionType,
    session_target: Option<&str>,
) -> TextKeys {
    let mut out = TextKeys::new();
    let chosen: Vec<&TargetRecord> = match query {
        "All" if session == SessionType::Discovery => records.iter().collect(),
        "All" => {
            out.push("SendTargets", "Reject");
            return out;
        }
        "" => records
            .iter()
            .filter(|r| Some(r.name.as_str()) == session_target)
            .collect(),
        name => records.iter().filter(|r| r.name == name).collect(),
    };
    for r in chosen {
        out.push("TargetName", r.name.clone());
        for a in &r.addresses {
            out.push("TargetAddress", a.clone());
        }
    }
    out
}

/// A malformed SendTargets answer or text exchange.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// TargetAddress before any TargetName.
    #[error("TargetAddress without a preceding TargetName")]
    AddressWithoutName,
    /// The target rejected the query.
    #[error("SendTargets rejected")]
    Rejected,
    /// Malformed text.
    #[error("text: {0}")]
    Text(#[from] TextError),
    /// A PDU that does not belong to this exchange.
    #[error("text exchange protocol error: {0}")]
    Protocol(&'static str),
}

/// Parse the records of a SendTargets answer (other keys are ignored).
pub fn parse_send_targets(keys: &TextKeys) -> Result<Vec<TargetRecord>, DiscoveryError> {
    let mut out: Vec<TargetRecord> = Vec::new();
    for (k, v) in keys.iter() {
        match k {
            "SendTargets" if v == "Reject" => return Err(DiscoveryError::Rejected),
            "TargetName" => out.push(TargetRecord {
                name: v.to_owned(),
                addresses: Vec::new(),
            }),
            "TargetAddress" => out
                .last_mut()
                .ok_or(DiscoveryError::AddressWithoutName)?
                .addresses
                .push(v.to_owned()),
            _ => {}
        }
    }
    Ok(out)
}

/// StatSN, ExpCmdSN and MaxCmdSN for one response PDU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusSn {
    /// StatSN of this response.
    pub stat_sn: u32,
    /// ExpCmdSN.
    pub exp_cmd_sn: u32,
    /// MaxCmdSN.
    pub max_cmd_sn: u32,
}

/// What the target does with a Text Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextStep {
    /// Send this Text Response.
    Respond(Pdu),
    /// The request is complete: compute answers and call [`TextResponder::respond`].
    Request(TextKeys),
}

/// Target side of text exchanges on one connection.
#[derive(Debug)]
pub struct TextResponder {
    incoming: TextAssembler,
    outgoing: VecDeque<Vec<u8>>,
    itt: u32,
    lun: u64,
    ttt: u32,
    next_ttt: u32,
    max_segment: usize,
    max_text: usize,
}

impl TextResponder {
    /// `max_segment` is the initiator's MaxRecvDataSegmentLength; `max_text` bounds a
    /// request's total text.
    pub fn new(max_segment: u32, max_text: usize) -> Self {
        TextResponder {
            incoming: TextAssembler::new(max_text),
            outgoing: VecDeque::new(),
            itt: RESERVED_TAG,
            lun: 0,
            ttt: RESERVED_TAG,
            next_ttt: 1,
            max_segment: max_segment.max(1) as usize,
            max_text,
        }
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }

    fn pdu(&self, final_: bool, continue_: bool, ttt: u32, sn: StatusSn, data: Vec<u8>) -> Pdu {
        Pdu::with_data(
            TextResponse {
                final_,
                continue_,
                lun: self.lun,
                itt: self.itt,
                ttt,
                stat_sn: sn.stat_sn,
                exp_cmd_sn: sn.exp_cmd_sn,
                max_cmd_sn: sn.max_cmd_sn,
            },
            data,
        )
    }

    /// Handle a Text Request PDU.
    pub fn handle(&mut self, pdu: &Pdu, sn: StatusSn) -> Result<TextStep, DiscoveryError> {
        let Header::TextRequest(req) = &pdu.header else {
            return Err(DiscoveryError::Protocol("not a Text Request"));
        };
        if req.itt != self.itt {
            // A new exchange replaces any unfinished one.
            self.incoming = TextAssembler::new(self.max_text);
            self.outgoing.clear();
            self.ttt = RESERVED_TAG;
            self.itt = req.itt;
            self.lun = req.lun;
        } else if req.ttt != RESERVED_TAG && req.ttt != self.ttt {
            return Err(DiscoveryError::Protocol("Text Request TTT does not match"));
        }
        if !self.outgoing.is_empty() {
            if !pdu.data.is_empty() || req.ttt != self.ttt {
                return Err(DiscoveryError::Protocol(
                    "new text while the response continues",
                ));
            }
            return Ok(TextStep::Respond(self.next_segment(sn)));
        }
        match self.incoming.push(&pdu.data, req.continue_)? {
            None => {
                let ttt = self.alloc_ttt();
                self.ttt = ttt;
                Ok(TextStep::Respond(self.pdu(
                    false,
                    false,
                    ttt,
                    sn,
                    Vec::new(),
                )))
            }
            Some(text) => Ok(TextStep::Request(TextKeys::parse(&text)?)),
        }
    }

    /// Answer the complete request with `keys` (the first, possibly only, PDU).
    pub fn respond(&mut self, keys: &TextKeys, sn: StatusSn) -> Pdu {
        self.outgoing = split_text(&keys.encode(), self.max_segment).into();
        self.next_segment(sn)
    }

    fn next_segment(&mut self, sn: StatusSn) -> Pdu {
        let seg = self.outgoing.pop_front().unwrap_or_default();
        if self.outgoing.is_empty() {
            self.ttt = RESERVED_TAG;
            let p = self.pdu(true, false, RESERVED_TAG, sn, seg);
            self.itt = RESERVED_TAG;
            p
        } else {
            let ttt = self.alloc_ttt();
            self.ttt = ttt;
            self.pdu(false, true, ttt, sn, seg)
        }
    }
}

/// What the initiator does with a Text Response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequesterStep {
    /// Send this Text Request (more of ours, or asking for more of theirs).
    Send(Pdu),
    /// The target's complete answer.
    Done(TextKeys),
}

/// Initiator side of one text exchange.
#[derive(Debug)]
pub struct TextRequester {
    itt: u32,
    lun: u64,
    immediate: bool,
    incoming: TextAssembler,
    outgoing: VecDeque<Vec<u8>>,
    max_segment: usize,
    done: bool,
}

impl TextRequester {
    /// An exchange with task tag `itt`; `max_segment` is the target's
    /// MaxRecvDataSegmentLength, `max_text` bounds the answer.
    pub fn new(itt: u32, immediate: bool, max_segment: u32, max_text: usize) -> Self {
        TextRequester {
            itt,
            lun: 0,
            immediate,
            incoming: TextAssembler::new(max_text),
            outgoing: VecDeque::new(),
            max_segment: max_segment.max(1) as usize,
            done: false,
        }
    }

    fn pdu(
        &self,
        final_: bool,
        continue_: bool,
        ttt: u32,
        cmd_sn: u32,
        exp_stat_sn: u32,
        data: Vec<u8>,
    ) -> Pdu {
        Pdu::with_data(
            TextRequest {
                immediate: self.immediate,
                final_,
                continue_,
                lun: self.lun,
                itt: self.itt,
                ttt,
                cmd_sn,
                exp_stat_sn,
            },
            data,
        )
    }

    fn next_segment(&mut self, ttt: u32, cmd_sn: u32, exp_stat_sn: u32) -> Pdu {
        let seg = self.outgoing.pop_front().unwrap_or_default();
        let more = !self.outgoing.is_empty();
        self.pdu(!more, more, ttt, cmd_sn, exp_stat_sn, seg)
    }

    /// The first Text Request carrying `keys` (for discovery: `SendTargets=All`).
    pub fn start(&mut self, keys: &TextKeys, cmd_sn: u32, exp_stat_sn: u32) -> Pdu {
        self.outgoing = split_text(&keys.encode(), self.max_segment).into();
        self.next_segment(RESERVED_TAG, cmd_sn, exp_stat_sn)
    }

    /// Handle a Text Response; `cmd_sn`/`exp_stat_sn` go into the next request.
    pub fn handle_response(
        &mut self,
        pdu: &Pdu,
        cmd_sn: u32,
        exp_stat_sn: u32,
    ) -> Result<RequesterStep, DiscoveryError> {
        if self.done {
            return Err(DiscoveryError::Protocol("text exchange already finished"));
        }
        let Header::TextResponse(resp) = &pdu.header else {
            return Err(DiscoveryError::Protocol("not a Text Response"));
        };
        if resp.itt != self.itt {
            return Err(DiscoveryError::Protocol("Text Response ITT does not match"));
        }
        if !self.outgoing.is_empty() {
            if !pdu.data.is_empty() || resp.final_ {
                return Err(DiscoveryError::Protocol(
                    "target answered a partial request",
                ));
            }
            return Ok(RequesterStep::Send(self.next_segment(
                resp.ttt,
                cmd_sn,
                exp_stat_sn,
            )));
        }
        if resp.final_ && resp.ttt != RESERVED_TAG {
            return Err(DiscoveryError::Protocol("final Text Response with a TTT"));
        }
        match self.incoming.push(&pdu.data, resp.continue_)? {
            Some(text) if resp.final_ => {
                self.done = true;
                Ok(RequesterStep::Done(TextKeys::parse(&text)?))
            }
            Some(_) => Err(DiscoveryError::Protocol(
                "Text Response neither final nor continued",
            )),
            None => Ok(RequesterStep::Send(self.pdu(
                true,
                false,
                resp.ttt,
                cmd_sn,
                exp_stat_sn,
                Vec::new(),
            ))),
        }
    }
}

/// The keys of a SendTargets query.
pub fn send_targets_query(value: &str) -> TextKeys {
    let mut k = TextKeys::new();
    k.push("SendTargets", value);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<TargetRecord> {
        (0..3)
            .map(|i| TargetRecord {
                name: format!("iqn.2026-01.org.example:disk{i}"),
                addresses: vec![format!("192.0.2.1:3260,1"), format!("[2001:db8::1]:3260,1")],
            })
            .collect()
    }

    #[test]
    fn queries() {
        let r = records();
        let all = send_targets_keys("All", &r, SessionType::Discovery, None);
        assert_eq!(all.len(), 9);
        assert_eq!(parse_send_targets(&all).unwrap(), r);
        let one = send_targets_keys(
            "iqn.2026-01.org.example:disk1",
            &r,
            SessionType::Discovery,
            None,
        );
        assert_eq!(parse_send_targets(&one).unwrap(), vec![r[1].clone()]);
        let own = send_targets_keys(
            "",
            &r,
            SessionType::Normal,
            Some("iqn.2026-01.org.example:disk2"),
        );
        assert_eq!(parse_send_targets(&own).unwrap(), vec![r[2].clone()]);
        let rejected = send_targets_keys("All", &r, SessionType::Normal, None);
        assert_eq!(parse_send_targets(&rejected), Err(DiscoveryError::Rejected));
        let mut bad = TextKeys::new();
        bad.push("TargetAddress", "x");
        assert_eq!(
            parse_send_targets(&bad),
            Err(DiscoveryError::AddressWithoutName)
        );
    }

    #[test]
    fn long_answer_continues_over_several_pdus() {
        let many: Vec<TargetRecord> = (0..200)
            .map(|i| TargetRecord {
                name: format!("iqn.2026-01.org.example:disk{i:03}"),
                addresses: vec!["192.0.2.1:3260,1".into()],
            })
            .collect();
        let mut t = TextResponder::new(512, 4096);
        let mut i = TextRequester::new(0x44, true, 8192, 1 << 20);
        let mut req = i.start(&send_targets_query("All"), 3, 10);
        let mut stat_sn = 10;
        for _ in 0..1000 {
            let sn = StatusSn {
                stat_sn,
                exp_cmd_sn: 3,
                max_cmd_sn: 10,
            };
            stat_sn += 1;
            let resp = match t.handle(&req, sn).unwrap() {
                TextStep::Respond(p) => p,
                TextStep::Request(keys) => {
                    assert_eq!(keys.get("SendTargets"), Some("All"));
                    t.respond(
                        &send_targets_keys("All", &many, SessionType::Discovery, None),
                        sn,
                    )
                }
            };
            assert!(resp.data.len() <= 512);
            match i.handle_response(&resp, 3, stat_sn).unwrap() {
                RequesterStep::Send(next) => req = next,
                RequesterStep::Done(keys) => {
                    assert_eq!(parse_send_targets(&keys).unwrap(), many);
                    return;
                }
            }
        }
        panic!("exchange did not finish");
    }
}
