//! CHAP credentials and their secrets: inline or read from a file whose permissions are
//! checked; secrets never appear in Debug output or in the effective configuration.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{KeyPath, Problem};
use crate::value::resolve_path;

/// What a secret prints as, everywhere.
pub const MASK: &str = "***";
/// Shortest CHAP secret accepted, in bytes (RFC 7143 section 12.1.3: at least 96 bits).
pub const MIN_SECRET_LEN: usize = 12;
/// Longest CHAP secret accepted, in bytes.
pub const MAX_SECRET_LEN: usize = 255;
/// Longest CHAP user name accepted, in bytes.
pub const MAX_USERNAME_LEN: usize = 255;

/// A CHAP secret. `Debug`, `Display` and `Serialize` print `***`; only
/// [`Secret::expose`] gives the bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the CHAP exchange only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

/// One direction of CHAP: a user name and a secret given inline (`secret`) or in a file
/// (`secret_file`), exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Chap {
    /// CHAP_N: the user name (1..255 bytes). No default.
    pub username: String,
    /// The secret inline (12..255 bytes). Prefer `secret_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<Secret>,
    /// A file holding the secret (one trailing newline is ignored). It must not be
    /// readable or writable by group or others (mode & 0o077 == 0). Relative paths
    /// resolve against the configuration file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// The secret read from `secret_file` while loading.
    #[serde(skip)]
    pub(crate) from_file: Option<Secret>,
}

impl Chap {
    /// Credentials with an inline secret.
    pub fn inline(username: &str, secret: &str) -> Self {
        Self {
            username: username.to_owned(),
            secret: Some(Secret::new(secret)),
            secret_file: None,
            from_file: None,
        }
    }

    /// The secret, inline or read from `secret_file`; `None` before a file was read.
    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref().or(self.from_file.as_ref())
    }

    /// Resolves `secret_file` against `base` and reads it, checking its permissions.
    pub(crate) fn load_secret_file(
        &mut self,
        base: Option<&Path>,
        path: &KeyPath,
        problems: &mut Vec<Problem>,
    ) {
        let Some(file) = &self.secret_file else {
            return;
        };
        let file = resolve_path(base, file);
        self.secret_file = Some(file.clone());
        if self.secret.is_some() {
            return; // reported by check()
        }
        match read_secret_file(&file) {
            Ok(s) => self.from_file = Some(s),
            Err(message) => problems.push(Problem::new(path.key("secret_file"), message)),
        }
    }

    /// Checks the user name and secret rules.
    pub(crate) fn check(&self, path: &KeyPath, problems: &mut Vec<Problem>) {
        if self.username.is_empty() || self.username.len() > MAX_USERNAME_LEN {
            problems.push(Problem::new(
                path.key("username"),
                format!(
                    "expected a user name of 1..{MAX_USERNAME_LEN} bytes, found {} bytes",
                    self.username.len()
                ),
            ));
        }
        match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => problems.push(Problem::new(
                path.key("secret"),
                "expected either secret or secret_file, found both",
            )),
            (None, None) => problems.push(Problem::new(
                path.clone(),
                "expected secret or secret_file, found neither",
            )),
            (Some(s), None) => check_secret_len(s, &path.key("secret"), problems),
            (None, Some(_)) => {
                if let Some(s) = &self.from_file {
                    check_secret_len(s, &path.key("secret_file"), problems);
                }
            }
        }
    }
}

fn check_secret_len(secret: &Secret, path: &KeyPath, problems: &mut Vec<Problem>) {
    let n = secret.expose().len();
    if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&n) {
        problems.push(Problem::new(
            path.clone(),
            format!(
                "expected a CHAP secret of {MIN_SECRET_LEN}..{MAX_SECRET_LEN} bytes \
                 (RFC 7143 section 12.1.3 asks for at least 96 bits), found {n} bytes"
            ),
        ));
    }
}

/// Reads a secret file: it must be a regular file with mode & 0o077 == 0. One trailing
/// newline (`\n` or `\r\n`) is removed.
pub(crate) fn read_secret_file(file: &Path) -> Result<Secret, String> {
    let meta = std::fs::metadata(file)
        .map_err(|e| format!("cannot read secret file {}: {e}", file.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "expected secret file {} to be a regular file",
            file.display()
        ));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "secret file {} has mode {mode:04o}; expected no access for group and \
                 others (mode & 0077 == 0, e.g. chmod 600)",
                file.display()
            ));
        }
    }
    let mut text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read secret file {}: {e}", file.display()))?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(Secret(text))
}

/// Checks a one-way/mutual pair: mutual CHAP needs one-way CHAP, and the two directions
/// must not share a secret.
pub(crate) fn check_pair(
    chap: Option<&Chap>,
    mutual: Option<&Chap>,
    path: &KeyPath,
    problems: &mut Vec<Problem>,
) {
    if let Some(c) = chap {
        c.check(&path.key("chap"), problems);
    }
    if let Some(m) = mutual {
        m.check(&path.key("mutual_chap"), problems);
        match chap {
            None => problems.push(Problem::new(
                path.key("mutual_chap"),
                "expected a [chap] section too: mutual CHAP authenticates the target after \
                 the initiator, found mutual_chap alone",
            )),
            Some(c) => {
                if let (Some(a), Some(b)) = (c.secret(), m.secret()) {
                    if a == b {
                        problems.push(Problem::new(
                            path.key("mutual_chap"),
                            "expected a mutual CHAP secret different from the one-way \
                             secret (RFC 7143 section 12.1.3), found the same secret",
                        ));
                    }
                }
            }
        }
    }
}
