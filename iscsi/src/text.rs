//! Text keys (RFC 7143 section 6): `key=value` pairs separated by NUL, carried in
//! Login and Text PDUs, possibly split across several PDUs with the C (continue) bit.
//!
//! [`TextAssembler`] joins segments (bounded by a total size limit), [`TextKeys::parse`]
//! splits them into pairs, [`TextKeys::encode`] builds the bytes, and [`split_text`]
//! cuts them into data segments no longer than the peer's MaxRecvDataSegmentLength.

/// Longest key name (RFC 7143 section 6.1).
pub const MAX_KEY_NAME: usize = 63;
/// Longest value we accept (large binary values such as CHAP_C/CHAP_R fit).
pub const MAX_VALUE: usize = 8192;
/// Default bound on the text of one login or text exchange direction.
pub const DEFAULT_TEXT_LIMIT: usize = 64 * 1024;

/// Malformed or oversized text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// The joined text of one request/response exceeded the limit.
    #[error("text exceeds the limit of {limit} bytes")]
    TooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A pair without `=`.
    #[error("text pair without '=' at byte {0}")]
    MissingEquals(usize),
    /// An empty key, a key over 63 bytes, or a key with characters outside the RFC set.
    #[error("invalid key name at byte {0}")]
    BadKeyName(usize),
    /// A value over [`MAX_VALUE`] bytes.
    #[error("value of key {0} is too long")]
    ValueTooLong(String),
    /// A value that is not UTF-8.
    #[error("value at byte {0} is not UTF-8")]
    NotUtf8(usize),
    /// The last pair was not terminated by NUL.
    #[error("text does not end with NUL")]
    Unterminated,
    /// More segments arrived after the final one, or continuation was misused.
    #[error("text continuation error: {0}")]
    Continuation(&'static str),
}

/// An ordered list of `key=value` pairs. Order is kept: responses answer in the order
/// of the offer, and SendTargets records are TargetName followed by its addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TextKeys(pub Vec<(String, String)>);

fn key_char_ok(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_')
}

impl TextKeys {
    /// An empty list.
    pub fn new() -> Self {
        TextKeys(Vec::new())
    }

    /// Append a pair.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True when no pairs are present.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Iterate over pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Parse NUL-terminated pairs. Empty entries (consecutive NULs, as some peers pad)
    /// are skipped.
    pub fn parse(bytes: &[u8]) -> Result<TextKeys, TextError> {
        if bytes.is_empty() {
            return Ok(TextKeys::new());
        }
        if bytes.last() != Some(&0) {
            return Err(TextError::Unterminated);
        }
        let mut out = Vec::new();
        let mut pos = 0;
        for entry in bytes[..bytes.len() - 1].split(|&b| b == 0) {
            let at = pos;
            pos += entry.len() + 1;
            if entry.is_empty() {
                continue;
            }
            let eq = entry
                .iter()
                .position(|&b| b == b'=')
                .ok_or(TextError::MissingEquals(at))?;
            let (key, value) = (&entry[..eq], &entry[eq + 1..]);
            if key.is_empty() || key.len() > MAX_KEY_NAME || !key.iter().all(|&c| key_char_ok(c)) {
                return Err(TextError::BadKeyName(at));
            }
            let key = String::from_utf8_lossy(key).into_owned();
            if value.len() > MAX_VALUE {
                return Err(TextError::ValueTooLong(key));
            }
            let value = std::str::from_utf8(value).map_err(|_| TextError::NotUtf8(at + eq + 1))?;
            out.push((key, value.to_owned()));
        }
        Ok(TextKeys(out))
    }

    /// The wire form: every pair followed by NUL.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in &self.0 {
            out.extend_from_slice(k.as_bytes());
            out.push(b'=');
            out.extend_from_slice(v.as_bytes());
            out.push(0);
        }
        out
    }
}

impl FromIterator<(String, String)> for TextKeys {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        TextKeys(iter.into_iter().collect())
    }
}

/// Joins the data segments of a multi-PDU text (C bit set on all but the last).
#[derive(Debug, Clone)]
pub struct TextAssembler {
    buf: Vec<u8>,
    limit: usize,
}

impl Default for TextAssembler {
    fn default() -> Self {
        TextAssembler::new(DEFAULT_TEXT_LIMIT)
    }
}

impl TextAssembler {
    /// An assembler refusing more than `limit` bytes in total.
    pub fn new(limit: usize) -> Self {
        TextAssembler {
            buf: Vec::new(),
            limit,
        }
    }

    /// True while a continued text is partly received.
    pub fn in_progress(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Add one data segment. With `continue_` set, returns `Ok(None)` (more to come);
    /// otherwise returns the joined text and resets.
    pub fn push(&mut self, segment: &[u8], continue_: bool) -> Result<Option<Vec<u8>>, TextError> {
        if self.buf.len() + segment.len() > self.limit {
            self.buf.clear();
            return Err(TextError::TooLong { limit: self.limit });
        }
        self.buf.extend_from_slice(segment);
        if continue_ {
            Ok(None)
        } else {
            Ok(Some(std::mem::take(&mut self.buf)))
        }
    }

    /// Add a segment and parse when complete.
    pub fn push_keys(
        &mut self,
        segment: &[u8],
        continue_: bool,
    ) -> Result<Option<TextKeys>, TextError> {
        match self.push(segment, continue_)? {
            None => Ok(None),
            Some(all) => TextKeys::parse(&all).map(Some),
        }
    }
}

/// Cut encoded text into segments of at most `max_segment` bytes (at least 1). Every
/// segment but the last is sent with the C bit set. Empty text gives one empty segment.
pub fn split_text(text: &[u8], max_segment: usize) -> Vec<Vec<u8>> {
    let max = max_segment.max(1);
    if text.is_empty() {
        return vec![Vec::new()];
    }
    text.chunks(max).map(<[u8]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let raw = b"InitiatorName=iqn.1994-05.com.example:host\0SessionType=Normal\0";
        let keys = TextKeys::parse(raw).unwrap();
        assert_eq!(keys.get("SessionType"), Some("Normal"));
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.encode(), raw.to_vec());
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(TextKeys::parse(b"A=1"), Err(TextError::Unterminated));
        assert_eq!(
            TextKeys::parse(b"A=1\0B\0"),
            Err(TextError::MissingEquals(4))
        );
        assert_eq!(TextKeys::parse(b"=1\0"), Err(TextError::BadKeyName(0)));
        assert_eq!(TextKeys::parse(b"A B=1\0"), Err(TextError::BadKeyName(0)));
        assert_eq!(TextKeys::parse(b"A=\xff\0"), Err(TextError::NotUtf8(2)));
        let long = format!("{}=1\0", "K".repeat(64));
        assert_eq!(
            TextKeys::parse(long.as_bytes()),
            Err(TextError::BadKeyName(0))
        );
        let big = format!("K={}\0", "v".repeat(MAX_VALUE + 1));
        assert_eq!(
            TextKeys::parse(big.as_bytes()),
            Err(TextError::ValueTooLong("K".into()))
        );
        // Empty entries are skipped, empty values are kept.
        let keys = TextKeys::parse(b"A=\0\0\0").unwrap();
        assert_eq!(keys.get("A"), Some(""));
    }

    #[test]
    fn continuation_across_segments() {
        let mut keys = TextKeys::new();
        for i in 0..50 {
            keys.push(format!("X-key{i}"), "v".repeat(i));
        }
        let text = keys.encode();
        let segs = split_text(&text, 100);
        assert!(segs.len() > 10);
        let mut asm = TextAssembler::default();
        for (i, s) in segs.iter().enumerate() {
            let r = asm.push_keys(s, i + 1 < segs.len()).unwrap();
            assert_eq!(r.is_some(), i + 1 == segs.len());
            if let Some(k) = r {
                assert_eq!(k, keys);
            }
        }
        let mut small = TextAssembler::new(150);
        assert_eq!(small.push(&segs[0], true), Ok(None));
        assert_eq!(
            small.push(&segs[1], true),
            Err(TextError::TooLong { limit: 150 })
        );
        assert!(!small.in_progress());
        assert_eq!(split_text(b"", 10), vec![Vec::<u8>::new()]);
    }
}
