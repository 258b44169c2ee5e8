//! CHAP (RFC 1994 as used by RFC 7143 section 12.1.3): CHAP_A algorithm choice (5 MD5,
//! 7 SHA-256), CHAP_I identifier, CHAP_C challenge and CHAP_R response in `0x` hex or
//! `0b` base64, `CHAP_R = H(CHAP_I || secret || CHAP_C)`, one-way and mutual.
//!
//! Randomness (identifiers and challenges) is passed in by the caller. Responses are
//! compared in constant time. Mutual CHAP refuses a challenge equal to the one we sent
//! (reflection) and the same secret in both directions.
//!
//! Target side: [`ChapTarget::new`] → [`ChapTarget::handle_algorithms`] (CHAP_A offer;
//! returns CHAP_A/CHAP_I/CHAP_C to send) → [`ChapTarget::handle_response`] (CHAP_N,
//! CHAP_R and optional CHAP_I/CHAP_C; returns the mutual CHAP_N/CHAP_R to send).
//! Initiator side: [`ChapInitiator::offer`] → [`ChapInitiator::handle_challenge`] →
//! (mutual) [`ChapInitiator::handle_target_response`].

use md5::{Digest, Md5};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::text::TextKeys;

/// Shortest challenge we accept or send (RFC 7143: at least as long as the hash of MD5).
pub const MIN_CHALLENGE: usize = 16;
/// Longest challenge we accept.
pub const MAX_CHALLENGE: usize = 1024;

/// CHAP digest algorithm (CHAP_A value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChapAlgorithm {
    /// 5: MD5.
    Md5,
    /// 7: SHA-256.
    Sha256,
}

impl ChapAlgorithm {
    /// The CHAP_A number.
    pub fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha256 => 7,
        }
    }

    /// From a CHAP_A number.
    pub fn from_code(code: u64) -> Option<Self> {
        match code {
            5 => Some(ChapAlgorithm::Md5),
            7 => Some(ChapAlgorithm::Sha256),
            _ => None,
        }
    }

    /// Length of the response in bytes.
    pub fn response_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha256 => 32,
        }
    }
}

/// A CHAP failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    /// No algorithm in the peer's CHAP_A list is acceptable.
    #[error("no acceptable CHAP algorithm in {0:?}")]
    UnsupportedAlgorithm(String),
    /// A required key is missing.
    #[error("missing CHAP key {0}")]
    Missing(&'static str),
    /// A key's value is malformed.
    #[error("malformed value of {0}")]
    Malformed(&'static str),
    /// A challenge is shorter than 16 or longer than 1024 bytes.
    #[error("challenge of {0} bytes")]
    ChallengeLength(usize),
    /// The response does not match: authentication failure.
    #[error("CHAP response does not match")]
    Mismatch,
    /// The CHAP_N is not a user we know.
    #[error("unknown CHAP user {0:?}")]
    UnknownUser(String),
    /// The peer sent back the challenge we sent it (reflection attack).
    #[error("peer reflected our own challenge")]
    Reflection,
    /// The same secret is configured for both directions.
    #[error("the same secret is used in both directions")]
    SameSecret,
    /// The peer wants mutual CHAP but we have no secret for it, or the reverse.
    #[error("mutual CHAP mismatch: {0}")]
    Mutual(&'static str),
    /// A step was called out of order.
    #[error("CHAP step out of order: {0}")]
    OutOfOrder(&'static str),
}

/// `H(id || secret || challenge)`.
pub fn chap_response(alg: ChapAlgorithm, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
    match alg {
        ChapAlgorithm::Md5 => {
            let mut h = Md5::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
        ChapAlgorithm::Sha256 => {
            let mut h = Sha256::new();
            h.update([id]);
            h.update(secret);
            h.update(challenge);
            h.finalize().to_vec()
        }
    }
}

/// Encode binary as `0x` + lowercase hex.
pub fn encode_binary(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

fn b64_val(c: u8) -> Option<u8> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    })
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=');
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = acc << 6 | u32::from(b64_val(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    // Leftover bits must be zero padding of less than one byte.
    if bits >= 6 || acc & ((1 << bits) - 1) != 0 {
        return None;
    }
    Some(out)
}

/// Decode a binary value: `0x`/`0X` hex (odd length allowed, as RFC 7143 permits) or
/// `0b`/`0B` base64.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() {
            return None;
        }
        let padded = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_owned()
        };
        return hex::decode(padded).ok();
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        if b.is_empty() {
            return None;
        }
        return decode_base64(b);
    }
    None
}

fn get<'a>(keys: &'a TextKeys, k: &'static str) -> Result<&'a str, ChapError> {
    keys.get(k).ok_or(ChapError::Missing(k))
}

fn parse_id(v: &str) -> Result<u8, ChapError> {
    crate::negotiate::parse_number(v)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or(ChapError::Malformed("CHAP_I"))
}

fn parse_challenge(v: &str) -> Result<Vec<u8>, ChapError> {
    let c = decode_binary(v).ok_or(ChapError::Malformed("CHAP_C"))?;
    if !(MIN_CHALLENGE..=MAX_CHALLENGE).contains(&c.len()) {
        return Err(ChapError::ChallengeLength(c.len()));
    }
    Ok(c)
}

/// Pick the first algorithm of the peer's CHAP_A list we accept.
pub fn pick_algorithm(offer: &str, accept: &[ChapAlgorithm]) -> Result<ChapAlgorithm, ChapError> {
    offer
        .split(',')
        .filter_map(|v| crate::negotiate::parse_number(v).and_then(ChapAlgorithm::from_code))
        .find(|a| accept.contains(a))
        .ok_or_else(|| ChapError::UnsupportedAlgorithm(offer.to_owned()))
}

/// Credentials the target checks: the initiator's secret for a CHAP_N, and optionally
/// the target's own name and secret for mutual CHAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapCredentials {
    /// The initiator's CHAP secret.
    pub initiator_secret: Vec<u8>,
    /// For mutual CHAP: the name (CHAP_N) and secret the target answers with.
    pub target: Option<(String, Vec<u8>)>,
}

/// Target side (authenticator) of one CHAP exchange.
#[derive(Debug, Clone)]
pub struct ChapTarget {
    accept: Vec<ChapAlgorithm>,
    id: u8,
    challenge: Vec<u8>,
    alg: Option<ChapAlgorithm>,
    done: bool,
}

impl ChapTarget {
    /// `id` and `challenge` come from the caller's random source; the challenge must be
    /// 16..=1024 bytes.
    pub fn new(accept: &[ChapAlgorithm], id: u8, challenge: Vec<u8>) -> Result<Self, ChapError> {
        if !(MIN_CHALLENGE..=MAX_CHALLENGE).contains(&challenge.len()) {
            return Err(ChapError::ChallengeLength(challenge.len()));
        }
        Ok(ChapTarget {
            accept: accept.to_vec(),
            id,
            challenge,
            alg: None,
            done: false,
        })
    }

    /// The algorithm chosen, once chosen.
    pub fn algorithm(&self) -> Option<ChapAlgorithm> {
        self.alg
    }

    /// True once the initiator was authenticated.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Handle CHAP_A; returns CHAP_A, CHAP_I and CHAP_C to send.
    pub fn handle_algorithms(&mut self, keys: &TextKeys) -> Result<TextKeys, ChapError> {
        if self.alg.is_some() {
            return Err(ChapError::OutOfOrder("CHAP_A received twice"));
        }
        let alg = pick_algorithm(get(keys, "CHAP_A")?, &self.accept)?;
        self.alg = Some(alg);
        let mut out = TextKeys::new();
        out.push("CHAP_A", alg.code().to_string());
        out.push("CHAP_I", self.id.to_string());
        out.push("CHAP_C", encode_binary(&self.challenge));
        Ok(out)
    }

    /// Handle CHAP_N/CHAP_R (and CHAP_I/CHAP_C for mutual CHAP). `lookup` maps the
    /// CHAP_N to credentials. Returns the keys to send (empty for one-way CHAP).
    pub fn handle_response(
        &mut self,
        keys: &TextKeys,
        lookup: impl FnOnce(&str) -> Option<ChapCredentials>,
    ) -> Result<TextKeys, ChapError> {
        let alg = self
            .alg
            .ok_or(ChapError::OutOfOrder("CHAP_R before CHAP_A"))?;
        if self.done {
            return Err(ChapError::OutOfOrder("CHAP_R received twice"));
        }
        let name = get(keys, "CHAP_N")?;
        let r = decode_binary(get(keys, "CHAP_R")?).ok_or(ChapError::Malformed("CHAP_R"))?;
        if r.len() != alg.response_len() {
            return Err(ChapError::Malformed("CHAP_R"));
        }
        let creds = lookup(name).ok_or_else(|| ChapError::UnknownUser(name.to_owned()))?;
        let expected = chap_response(alg, self.id, &creds.initiator_secret, &self.challenge);
        if !bool::from(expected.ct_eq(&r)) {
            return Err(ChapError::Mismatch);
        }
        let mut out = TextKeys::new();
        match (keys.get("CHAP_I"), keys.get("CHAP_C")) {
            (None, None) => {}
            (Some(i), Some(c)) => {
                let (tname, tsecret) = creds
                    .target
                    .ok_or(ChapError::Mutual("no target secret configured"))?;
                let id = parse_id(i)?;
                let challenge = parse_challenge(c)?;
                if challenge == self.challenge {
                    return Err(ChapError::Reflection);
                }
                if bool::from(tsecret.ct_eq(&creds.initiator_secret)) {
                    return Err(ChapError::SameSecret);
                }
                out.push("CHAP_N", tname);
                out.push(
                    "CHAP_R",
                    encode_binary(&chap_response(alg, id, &tsecret, &challenge)),
                );
            }
            (Some(_), None) => return Err(ChapError::Missing("CHAP_C")),
            (None, Some(_)) => return Err(ChapError::Missing("CHAP_I")),
        }
        self.done = true;
        Ok(out)
    }
}

/// Initiator side of one CHAP exchange.
#[derive(Debug, Clone)]
pub struct ChapInitiator {
    accept: Vec<ChapAlgorithm>,
    name: String,
    secret: Vec<u8>,
    /// Mutual: (expected target secret, our CHAP_I, our CHAP_C).
    mutual: Option<(Vec<u8>, u8, Vec<u8>)>,
    alg: Option<ChapAlgorithm>,
    target_challenge: Option<Vec<u8>>,
}

impl ChapInitiator {
    /// One-way CHAP with our CHAP_N and secret.
    pub fn new(accept: &[ChapAlgorithm], name: impl Into<String>, secret: Vec<u8>) -> Self {
        ChapInitiator {
            accept: accept.to_vec(),
            name: name.into(),
            secret,
            mutual: None,
            alg: None,
            target_challenge: None,
        }
    }

    /// Also authenticate the target: its expected secret and our random id and challenge.
    pub fn with_mutual(
        mut self,
        target_secret: Vec<u8>,
        id: u8,
        challenge: Vec<u8>,
    ) -> Result<Self, ChapError> {
        if !(MIN_CHALLENGE..=MAX_CHALLENGE).contains(&challenge.len()) {
            return Err(ChapError::ChallengeLength(challenge.len()));
        }
        if bool::from(target_secret.ct_eq(&self.secret)) {
            return Err(ChapError::SameSecret);
        }
        self.mutual = Some((target_secret, id, challenge));
        Ok(self)
    }

    /// True when mutual CHAP is configured.
    pub fn is_mutual(&self) -> bool {
        self.mutual.is_some()
    }

    /// The CHAP_A offer.
    pub fn offer(&self) -> TextKeys {
        let mut out = TextKeys::new();
        out.push(
            "CHAP_A",
            self.accept
                .iter()
                .map(|a| a.code().to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        out
    }

    /// Handle CHAP_A/CHAP_I/CHAP_C from the target; returns CHAP_N, CHAP_R (and our
    /// CHAP_I, CHAP_C when mutual).
    pub fn handle_challenge(&mut self, keys: &TextKeys) -> Result<TextKeys, ChapError> {
        if self.alg.is_some() {
            return Err(ChapError::OutOfOrder("challenge received twice"));
        }
        let alg = pick_algorithm(get(keys, "CHAP_A")?, &self.accept)?;
        let id = parse_id(get(keys, "CHAP_I")?)?;
        let challenge = parse_challenge(get(keys, "CHAP_C")?)?;
        let mut out = TextKeys::new();
        out.push("CHAP_N", self.name.clone());
        out.push(
            "CHAP_R",
            encode_binary(&chap_response(alg, id, &self.secret, &challenge)),
        );
        if let Some((_, my_id, my_challenge)) = &self.mutual {
            if *my_challenge == challenge {
                return Err(ChapError::Reflection);
            }
            out.push("CHAP_I", my_id.to_string());
            out.push("CHAP_C", encode_binary(my_challenge));
        }
        self.alg = Some(alg);
        self.target_challenge = Some(challenge);
        Ok(out)
    }

    /// Verify the target's CHAP_N/CHAP_R (mutual CHAP).
    pub fn handle_target_response(&mut self, keys: &TextKeys) -> Result<(), ChapError> {
        let alg = self
            .alg
            .ok_or(ChapError::OutOfOrder("target response before challenge"))?;
        let (secret, id, challenge) = self.mutual.as_ref().ok_or(ChapError::Mutual(
            "target answered a challenge we did not send",
        ))?;
        get(keys, "CHAP_N")?;
        let r = decode_binary(get(keys, "CHAP_R")?).ok_or(ChapError::Malformed("CHAP_R"))?;
        let expected = chap_response(alg, *id, secret, challenge);
        if r.len() != expected.len() || !bool::from(expected.ct_eq(&r)) {
            return Err(ChapError::Mismatch);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_encodings() {
        assert_eq!(decode_binary("0x0102ff"), Some(vec![1, 2, 0xff]));
        assert_eq!(decode_binary("0X102"), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQL/"), Some(vec![1, 2, 0xff]));
        assert_eq!(decode_binary("0bAQI="), Some(vec![1, 2]));
        assert_eq!(decode_binary("0bAQ=="), Some(vec![1]));
        assert_eq!(decode_binary("0bAR=="), None, "non-zero pad bits");
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("1234"), None);
        assert_eq!(encode_binary(&[0xab, 0x01]), "0xab01");
    }

    #[test]
    fn rfc1994_md5_by_construction() {
        // MD5 over id || secret || challenge, checked against the md-5 crate directly.
        let r = chap_response(ChapAlgorithm::Md5, 1, b"secret", &[0u8; 16]);
        let mut buf = vec![1u8];
        buf.extend_from_slice(b"secret");
        buf.extend_from_slice(&[0u8; 16]);
        assert_eq!(r, Md5::digest(&buf).to_vec());
        assert_eq!(
            chap_response(ChapAlgorithm::Sha256, 1, b"secret", &[0u8; 16]).len(),
            32
        );
    }

    fn creds(mutual: bool) -> ChapCredentials {
        ChapCredentials {
            initiator_secret: b"initiator-secret".to_vec(),
            target: mutual.then(|| {
                (
                    "iqn.2026-01.test:tgt".to_owned(),
                    b"target-secret!!".to_vec(),
                )
            }),
        }
    }

    #[test]
    fn mutual_exchange_both_algorithms() {
        for alg in [ChapAlgorithm::Md5, ChapAlgorithm::Sha256] {
            let mut t = ChapTarget::new(&[alg], 7, vec![0x11; 16]).unwrap();
            let mut i = ChapInitiator::new(
                &[ChapAlgorithm::Sha256, ChapAlgorithm::Md5],
                "user",
                b"initiator-secret".to_vec(),
            )
            .with_mutual(b"target-secret!!".to_vec(), 9, vec![0x22; 20])
            .unwrap();
            let challenge = t.handle_algorithms(&i.offer()).unwrap();
            assert_eq!(
                challenge.get("CHAP_A"),
                Some(alg.code().to_string().as_str())
            );
            let resp = i.handle_challenge(&challenge).unwrap();
            let back = t
                .handle_response(&resp, |n| (n == "user").then(|| creds(true)))
                .unwrap();
            assert!(t.is_done());
            i.handle_target_response(&back).unwrap();
        }
    }

    #[test]
    fn failures() {
        let mut t = ChapTarget::new(&[ChapAlgorithm::Md5], 1, vec![0x33; 16]).unwrap();
        let mut k = TextKeys::new();
        k.push("CHAP_A", "6,99");
        assert!(matches!(
            t.handle_algorithms(&k),
            Err(ChapError::UnsupportedAlgorithm(_))
        ));
        let mut k = TextKeys::new();
        k.push("CHAP_A", "5");
        t.handle_algorithms(&k).unwrap();
        // Wrong secret.
        let mut r = TextKeys::new();
        r.push("CHAP_N", "user");
        r.push(
            "CHAP_R",
            encode_binary(&chap_response(ChapAlgorithm::Md5, 1, b"wrong", &[0x33; 16])),
        );
        assert_eq!(
            t.clone().handle_response(&r, |_| Some(creds(false))),
            Err(ChapError::Mismatch)
        );
        assert_eq!(
            t.clone().handle_response(&r, |_| None),
            Err(ChapError::UnknownUser("user".into()))
        );
        // Reflection: the initiator sends our own challenge back.
        let mut r = TextKeys::new();
        r.push("CHAP_N", "user");
        r.push(
            "CHAP_R",
            encode_binary(&chap_response(
                ChapAlgorithm::Md5,
                1,
                b"initiator-secret",
                &[0x33; 16],
            )),
        );
        r.push("CHAP_I", "1");
        r.push("CHAP_C", encode_binary(&[0x33; 16]));
        assert_eq!(
            t.clone().handle_response(&r, |_| Some(creds(true))),
            Err(ChapError::Reflection)
        );
        // Same secret both ways.
        let mut r2 = r.clone();
        r2.0[3].1 = encode_binary(&[0x44; 16]);
        let same = ChapCredentials {
            initiator_secret: b"initiator-secret".to_vec(),
            target: Some(("t".into(), b"initiator-secret".to_vec())),
        };
        assert_eq!(
            t.clone().handle_response(&r2, |_| Some(same)),
            Err(ChapError::SameSecret)
        );
        // Short challenge.
        r2.0[3].1 = encode_binary(&[0x44; 8]);
        assert_eq!(
            t.clone().handle_response(&r2, |_| Some(creds(true))),
            Err(ChapError::ChallengeLength(8))
        );
        assert!(ChapTarget::new(&[ChapAlgorithm::Md5], 1, vec![0; 15]).is_err());
        assert!(
            ChapInitiator::new(&[ChapAlgorithm::Md5], "u", b"s".to_vec())
                .with_mutual(b"s".to_vec(), 1, vec![0; 16])
                .is_err()
        );
    }
}
