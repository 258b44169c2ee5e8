//! Value types shared by both schemas: iSCSI names, byte sizes, listen and connect
//! addresses, NBD endpoints. Each parses from its TOML string form and prints back to it.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A malformed value: what was expected and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

/// Longest iSCSI name in bytes (RFC 7143 section 4.2.7.1).
pub const MAX_ISCSI_NAME_LEN: usize = 223;

/// A validated iSCSI name: `iqn.yyyy-mm.reversed.domain[:anything]`, `eui.` + 16 hex
/// digits, or `naa.` + 16 or 32 hex digits (RFC 7143 section 4.2.7, RFC 3980).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Iqn(String);

impl Iqn {
    /// Checks `name` against the iSCSI name rules.
    pub fn new(name: &str) -> Result<Self, ValueError> {
        validate_iscsi_name(name).map(|()| Self(name.to_owned()))
    }

    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Iqn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Iqn {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        Self::new(s)
    }
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The iSCSI name rules; the error says what was expected and what was found.
pub fn validate_iscsi_name(name: &str) -> Result<(), ValueError> {
    iscsi_name_rules(name).map_err(ValueError)
}

fn iscsi_name_rules(name: &str) -> Result<(), String> {
    let expected = "expected an iSCSI name (iqn.yyyy-mm.reversed.domain[:identifier], \
                    eui.<16 hex digits> or naa.<16 or 32 hex digits>)";
    if name.len() > MAX_ISCSI_NAME_LEN {
        return Err(format!(
            "{expected}, found a name of {} bytes (at most {MAX_ISCSI_NAME_LEN})",
            name.len()
        ));
    }
    if let Some(hex) = name.strip_prefix("eui.") {
        if hex.len() == 16 && is_hex(hex) {
            return Ok(());
        }
        return Err(format!(
            "expected eui. followed by 16 hex digits, found {name:?}"
        ));
    }
    if let Some(hex) = name.strip_prefix("naa.") {
        if (hex.len() == 16 || hex.len() == 32) && is_hex(hex) {
            return Ok(());
        }
        return Err(format!(
            "expected naa. followed by 16 or 32 hex digits, found {name:?}"
        ));
    }
    let Some(rest) = name.strip_prefix("iqn.") else {
        return Err(format!("{expected}, found {name:?}"));
    };
    let date_ok = rest.len() >= 8
        && rest.as_bytes()[..4].iter().all(u8::is_ascii_digit)
        && rest.as_bytes()[4] == b'-'
        && rest.as_bytes()[5..7].iter().all(u8::is_ascii_digit)
        && matches!(
            &rest[5..7],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        )
        && rest.as_bytes()[7] == b'.';
    if !date_ok {
        return Err(format!(
            "expected iqn. followed by a date yyyy-mm (month 01..12) and a dot, found {name:?}"
        ));
    }
    let rest = &rest[8..];
    let (domain, ident) = match rest.split_once(':') {
        Some((d, i)) => (d, Some(i)),
        None => (rest, None),
    };
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        let hint = if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            " (iSCSI names are lower case)"
        } else {
            ""
        };
        return Err(format!(
            "expected a reversed domain name after the date (lower-case labels of a-z, 0-9 \
             and '-' separated by dots, e.g. com.example){hint}, found {domain:?} in {name:?}"
        ));
    }
    if let Some(ident) = ident {
        if ident.is_empty() {
            return Err(format!(
                "expected an identifier after ':', found nothing in {name:?}"
            ));
        }
        if let Some(c) = ident
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "-.:".contains(*c)))
        {
            let hint = if c.is_ascii_uppercase() {
                " (iSCSI names are lower case)"
            } else {
                ""
            };
            return Err(format!(
                "expected only a-z, 0-9, '-', '.' and ':' after the naming authority{hint}, \
                 found {c:?} in {name:?}"
            ));
        }
    }
    Ok(())
}

/// A size in bytes, written as an integer or as a string with a unit: `"64MiB"`,
/// `"1GiB"`, `"4096"`, `"1 TiB"`. IEC units (KiB, MiB, GiB, TiB) are powers of 1024;
/// SI units (kB, MB, GB, TB) powers of 1000; units are case-insensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        parse_size(s).map(ByteSize)
    }
}

/// Parses a size string; see [`ByteSize`].
pub fn parse_size(s: &str) -> Result<u64, ValueError> {
    size_rules(s).map_err(ValueError)
}

fn size_rules(s: &str) -> Result<u64, String> {
    let expected = "expected a size such as 4096, \"64MiB\" or \"1GiB\"";
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!("{expected}, found {s:?}"));
    }
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{expected}, found {s:?} (too large)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "{expected} (units B, KiB, MiB, GiB, TiB, kB, MB, GB, TB), found {s:?}"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{expected}, found {s:?} (more than 2^64-1 bytes)"))
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 4] = [
            (1 << 40, "TiB"),
            (1 << 30, "GiB"),
            (1 << 20, "MiB"),
            (1 << 10, "KiB"),
        ];
        for (m, u) in UNITS {
            if self.0 >= m && self.0.is_multiple_of(m) {
                return write!(f, "{}{u}", self.0 / m);
            }
        }
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes (integer) or a string such as \"64MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| {
                    E::custom(format!("expected a size of 0 bytes or more, found {v}"))
                })
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 >= 1024 && self.to_string().ends_with('B') {
            s.serialize_str(&self.to_string())
        } else {
            // TOML integers are i64; sizes past i64::MAX print as a string.
            match i64::try_from(self.0) {
                Ok(v) => s.serialize_i64(v),
                Err(_) => s.serialize_str(&self.0.to_string()),
            }
        }
    }
}

/// Where a daemon listens or connects on a socket fabric: an IP socket address
/// (`"127.0.0.1:3261"`, `"[::1]:3261"`) or a UNIX socket (`"unix:/run/iser.sock"`).
/// IP addresses are literals (no host name lookup happens while loading a configuration).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FabricAddr {
    /// An IP address and port.
    Tcp(SocketAddr),
    /// A UNIX socket path (relative paths resolve against the configuration's directory).
    Unix(PathBuf),
}

impl FabricAddr {
    pub(crate) fn resolve(&mut self, base: Option<&Path>) {
        if let Self::Unix(p) = self {
            *p = resolve_path(base, p);
        }
    }
}

impl FromStr for FabricAddr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(ValueError(format!(
                    "expected unix:<socket path>, found {s:?}"
                )));
            }
            return Ok(Self::Unix(PathBuf::from(p)));
        }
        parse_socket_addr(s).map(Self::Tcp)
    }
}

impl fmt::Display for FabricAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parses `ip:port` or `[ipv6]:port`.
pub fn parse_socket_addr(s: &str) -> Result<SocketAddr, ValueError> {
    s.parse().map_err(|_| {
        ValueError(format!(
            "expected an IP address and port such as \"127.0.0.1:3260\" or \"[::1]:3260\", found {s:?}"
        ))
    })
}

/// An address of an iSCSI portal: `ip:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortalAddr(pub SocketAddr);

impl FromStr for PortalAddr {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        parse_socket_addr(s).map(Self)
    }
}

impl fmt::Display for PortalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where the initiator serves one LUN over NBD: `"unix:/path"` or `"tcp:127.0.0.1:10809"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NbdEndpoint {
    /// A UNIX socket path (relative paths resolve against the configuration's directory).
    Unix(PathBuf),
    /// A TCP listen address.
    Tcp(SocketAddr),
}

impl NbdEndpoint {
    pub(crate) fn resolve(&mut self, base: Option<&Path>) {
        if let Self::Unix(p) = self {
            *p = resolve_path(base, p);
        }
    }
}

impl FromStr for NbdEndpoint {
    type Err = ValueError;
    fn from_str(s: &str) -> Result<Self, ValueError> {
        if let Some(p) = s.strip_prefix("unix:") {
            if !p.is_empty() {
                return Ok(Self::Unix(PathBuf::from(p)));
            }
        } else if let Some(a) = s.strip_prefix("tcp:") {
            return parse_socket_addr(a).map(Self::Tcp);
        }
        Err(ValueError(format!(
            "expected \"unix:<socket path>\" or \"tcp:<ip>:<port>\", found {s:?}"
        )))
    }
}

impl fmt::Display for NbdEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
            Self::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// Visits a string and parses it inside the deserializer call, so that the TOML
/// deserializer gives the error the span of this very value (an array element, say).
struct FromStrVisitor<T>(std::marker::PhantomData<T>);

impl<T: FromStr<Err = ValueError>> serde::de::Visitor<'_> for FromStrVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

/// Serde through `FromStr` and `Display` for the string-shaped value types.
macro_rules! serde_via_str {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(FromStrVisitor(std::marker::PhantomData))
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
    )*};
}
serde_via_str!(Iqn, FabricAddr, PortalAddr, NbdEndpoint);

/// `path` joined to `base` when it is relative and a base is known.
pub(crate) fn resolve_path(base: Option<&Path>, path: &Path) -> PathBuf {
    match base {
        Some(b) if path.is_relative() => b.join(path),
        _ => path.to_path_buf(),
    }
}

/// The directory relative paths in a configuration named `name` resolve against:
/// the file's directory, made absolute with the working directory.
pub(crate) fn base_dir(name: &str) -> Option<PathBuf> {
    let parent = Path::new(name).parent()?;
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    if parent.is_absolute() {
        return Some(parent.to_path_buf());
    }
    let cwd = std::env::current_dir().ok()?;
    let joined = cwd.join(parent);
    // Drop `.` components so printed paths stay readable.
    Some(joined.components().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_name_table() {
        let good = [
            "iqn.2026-11.io.iser-pi:target0",
            "iqn.2026-11.io.iser-pi",
            "iqn.1994-05.com.redhat:client1",
            "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
            "iqn.2001-04.com.example.storage.tape1.sys1.xyz",
            "eui.02004567A425678D",
            "eui.0123456789abcdef",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ];
        for name in good {
            assert_eq!(validate_iscsi_name(name), Ok(()), "{name}");
            assert_eq!(
                Iqn::new(name).map(|i| i.to_string()).ok(),
                Some(name.to_owned())
            );
        }
        let bad: [(&str, &str); 16] = [
            ("", "expected an iSCSI name"),
            ("iqn", "expected an iSCSI name"),
            ("iqn.2026.io.x:a", "expected iqn. followed by a date"),
            ("iqn.26-11.io.x:a", "expected iqn. followed by a date"),
            ("iqn.2026-13.io.x:a", "month 01..12"),
            ("iqn.2026-00.io.x:a", "month 01..12"),
            ("iqn.2026-11:a", "expected iqn. followed by a date"),
            ("iqn.2026-11.local:a", "reversed domain name"),
            ("iqn.2026-11.io..x:a", "reversed domain name"),
            ("iqn.2026-11.IO.x:a", "(iSCSI names are lower case)"),
            ("iqn.2026-11.io.x:", "expected an identifier after ':'"),
            ("iqn.2026-11.io.x:Disk", "(iSCSI names are lower case)"),
            ("iqn.2026-11.io.x:a b", "found ' '"),
            (
                "eui.0123456789abcde",
                "expected eui. followed by 16 hex digits",
            ),
            (
                "naa.0123456789abcdef0",
                "expected naa. followed by 16 or 32 hex digits",
            ),
            (
                "naa.0123456789abcdeg",
                "expected naa. followed by 16 or 32 hex digits",
            ),
        ];
        for (name, want) in bad {
            let err = validate_iscsi_name(name).expect_err(name).to_string();
            assert!(err.contains(want), "{name}: {err}");
        }
        let long = format!("iqn.2026-11.io.x:{}", "a".repeat(MAX_ISCSI_NAME_LEN));
        assert!(validate_iscsi_name(&long)
            .expect_err("too long")
            .0
            .contains("at most 223"));
        let exact = format!("iqn.2026-11.io.x:{}", "a".repeat(MAX_ISCSI_NAME_LEN - 17));
        assert_eq!(exact.len(), MAX_ISCSI_NAME_LEN);
        assert_eq!(validate_iscsi_name(&exact), Ok(()));
    }

    #[test]
    fn size_table() {
        let good: [(&str, u64); 14] = [
            ("0", 0),
            ("4096", 4096),
            ("512B", 512),
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("1 GiB", 1 << 30),
            ("2TiB", 2 << 40),
            ("4KiB", 4096),
            ("4kib", 4096),
            ("1kB", 1000),
            ("1MB", 1_000_000),
            ("3GB", 3_000_000_000),
            ("1TB", 1_000_000_000_000),
            (" 8MiB ", 8 << 20),
        ];
        for (s, n) in good {
            assert_eq!(parse_size(s).ok(), Some(n), "{s}");
        }
        let bad = [
            ("", "found \"\""),
            ("MiB", "found \"MiB\""),
            ("-1", "found \"-1\""),
            ("1.5GiB", "units B, KiB"),
            ("64XB", "units B, KiB"),
            ("64 M", "units B, KiB"),
            ("99999999999999999999", "too large"),
            ("17000000TiB", "more than 2^64-1 bytes"),
        ];
        for (s, want) in bad {
            let err = parse_size(s).expect_err(s).to_string();
            assert!(err.contains(want), "{s}: {err}");
        }
    }

    #[test]
    fn size_display_uses_the_largest_exact_unit() {
        let cases: [(u64, &str); 6] = [
            (0, "0"),
            (512, "512"),
            (4096, "4KiB"),
            (64 << 20, "64MiB"),
            ((1 << 30) + 512, "1073742336"),
            (3 << 40, "3TiB"),
        ];
        for (n, s) in cases {
            assert_eq!(ByteSize(n).to_string(), s);
            assert_eq!(parse_size(s).ok(), Some(n));
        }
    }

    #[test]
    fn addresses_parse_and_print_back() {
        for s in ["127.0.0.1:3261", "[::1]:3261", "unix:/run/iser.sock"] {
            let a: FabricAddr = s.parse().expect(s);
            assert_eq!(a.to_string(), s);
        }
        for s in [
            "unix:/tmp/nbd.sock",
            "tcp:127.0.0.1:10809",
            "tcp:[::1]:10809",
        ] {
            let a: NbdEndpoint = s.parse().expect(s);
            assert_eq!(a.to_string(), s);
        }
        for s in ["localhost:3260", "127.0.0.1", "unix:", "127.0.0.1:70000"] {
            assert!(s.parse::<FabricAddr>().is_err(), "{s}");
        }
        for s in ["/tmp/x.sock", "tcp:localhost:1", "unix:", "nbd:1"] {
            let e = s.parse::<NbdEndpoint>().expect_err(s).to_string();
            assert!(e.contains("expected"), "{s}: {e}");
        }
    }
}
