//! SendTargets discovery text (RFC 7143 appendix C): `TargetName=` starts a record, the
//! `TargetAddress=` keys that follow it (`address[:port],tpgt`) belong to it.

use serde::Serialize;

/// One portal of a discovered target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Portal {
    /// Host or IP (brackets of an IPv6 literal removed).
    pub address: String,
    /// TCP port (3260 when not given).
    pub port: u16,
    /// Target portal group tag.
    pub tpgt: Option<u16>,
}

/// One discovered target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiscoveredTarget {
    /// TargetName.
    pub name: String,
    /// Its portals (none: reach it at the discovery portal).
    pub portals: Vec<Portal>,
}

/// Parse one TargetAddress value.
pub fn parse_target_address(v: &str) -> Option<Portal> {
    let (addr, tpgt) = match v.rsplit_once(',') {
        Some((a, t)) => (a, Some(t.parse().ok()?)),
        None => (v, None),
    };
    let (host, port) = if let Some(rest) = addr.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 3260,
            None => return None,
        };
        (h.to_owned(), port)
    } else {
        match addr.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (addr.to_owned(), 3260),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(Portal {
        address: host,
        port,
        tpgt,
    })
}

/// Group SendTargets keys into targets. Addresses before any TargetName, and
/// malformed addresses, are skipped.
pub fn parse_send_targets(keys: &iscsi::text::TextKeys) -> Vec<DiscoveredTarget> {
    let mut out: Vec<DiscoveredTarget> = Vec::new();
    for (k, v) in keys.iter() {
        match k {
            "TargetName" => out.push(DiscoveredTarget {
                name: v.to_owned(),
                portals: Vec::new(),
            }),
            "TargetAddress" => {
                if let (Some(t), Some(p)) = (out.last_mut(), parse_target_address(v)) {
                    t.portals.push(p);
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use iscsi::text::TextKeys;

    #[test]
    fn send_targets_records() {
        let mut k = TextKeys::new();
        k.push("TargetAddress", "10.0.0.9:3260,1");
        k.push("TargetName", "iqn.2026-11.a:one");
        k.push("TargetAddress", "127.0.0.1:3261,1");
        k.push("TargetAddress", "[::1]:3262,2");
        k.push("TargetName", "iqn.2026-11.a:two");
        k.push("TargetAddress", "example:bad,x");
        let t = parse_send_targets(&k);
        assert_eq!(t.len(), 2);
        assert_eq!(
            t[0].portals,
            vec![
                Portal {
                    address: "127.0.0.1".into(),
                    port: 3261,
                    tpgt: Some(1)
                },
                Portal {
                    address: "::1".into(),
                    port: 3262,
                    tpgt: Some(2)
                },
            ]
        );
        assert!(t[1].portals.is_empty());
        assert_eq!(
            parse_target_address("host"),
            Some(Portal {
                address: "host".into(),
                port: 3260,
                tpgt: None
            })
        );
        assert_eq!(parse_target_address("[::1"), None);
    }
}
