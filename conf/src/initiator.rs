//! The `iser-initiator` configuration: the initiator's name, discovery portals, sessions
//! (transport, CHAP, digests, reconnect, timers, protection policy) and per-LUN exports.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, KeyPath, Problem};
use crate::protection::{PolicyOverride, ProtectionPolicy};
use crate::secret::{check_pair, Chap};
use crate::value::{resolve_path, FabricAddr, Iqn, NbdEndpoint, PortalAddr};
use crate::{check_range, Loaded, LogSection};

/// The embedded default: one session to `iqn.2026-11.io.iser-pi:target0` on loopback,
/// transport auto, protection mode insert, LUN 0 exported over NBD on
/// `/run/iser-initiator/lun0.sock`.
pub const EMBEDDED_DEFAULT: &str = include_str!("default_initiator.toml");

/// Port of the soft iSER fabric when a session names none (`iser_portal`).
pub const DEFAULT_ISER_PORT: u16 = 3261;

/// The whole `iser-initiator` configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InitiatorConfig {
    /// The initiator's name (iqn., eui. or naa.). No default.
    pub iqn: Iqn,
    /// Portals (`ip:port`) to ask for targets with SendTargets; default [] (none).
    #[serde(default)]
    pub discovery: Vec<PortalAddr>,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// Sessions to log in and keep up; default [] (none).
    #[serde(default)]
    pub sessions: Vec<Session>,
}

/// How a session reaches its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionTransport {
    /// iSER over the soft fabric at `iser_portal`.
    Iser,
    /// iSCSI over TCP at `portal`.
    Tcp,
    /// iSER first; on failure to connect or log in, iSCSI over TCP.
    Auto,
}

/// Header or data digest (iSCSI over TCP only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Digest {
    /// No digest (default).
    None,
    /// CRC32C.
    Crc32c,
}

/// Reconnection after a lost connection.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reconnect {
    /// Seconds between attempts, 1..3600; default 5.
    pub delay: u32,
    /// Attempts before giving up; 0 (default) = forever.
    pub max_attempts: u32,
}

impl Default for Reconnect {
    fn default() -> Self {
        Self {
            delay: 5,
            max_attempts: 0,
        }
    }
}

/// One session to one target.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// The target's name. No default.
    pub target: Iqn,
    /// The target's iSCSI/TCP portal, `ip:port`. No default.
    pub portal: PortalAddr,
    /// The target's soft-fabric iSER portal (`ip:port` or `unix:/path`); default: the
    /// portal's IP with port 3261. Not used (and refused) with transport = "tcp".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iser_portal: Option<FabricAddr>,
    /// "iser", "tcp" or "auto" (default: iSER, falling back to TCP).
    #[serde(default = "default_transport")]
    pub transport: SessionTransport,
    /// HeaderDigest: "none" (default) or "crc32c"; TCP only.
    #[serde(default = "default_digest")]
    pub header_digest: Digest,
    /// DataDigest: "none" (default) or "crc32c"; TCP only.
    #[serde(default = "default_digest")]
    pub data_digest: Digest,
    /// Seconds between NOP-Out pings on an idle connection, 0..3600; 0 = off; default 5.
    #[serde(default = "default_nop_interval")]
    pub nop_interval: u32,
    /// Seconds to wait for the NOP-In answer before reconnecting, 1..3600; default 5.
    #[serde(default = "default_nop_timeout")]
    pub nop_timeout: u32,
    /// Seconds before an outstanding SCSI command is aborted, 1..3600; default 30.
    #[serde(default = "default_command_timeout")]
    pub command_timeout: u32,
    /// CHAP credentials the initiator presents. Absent (default) = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chap: Option<Chap>,
    /// Credentials the target must present back (mutual CHAP). Absent = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mutual_chap: Option<Chap>,
    /// Reconnect policy.
    #[serde(default)]
    pub reconnect: Reconnect,
    /// Protection policy for every LUN of the session (each LUN may override keys).
    #[serde(default)]
    pub protection: ProtectionPolicy,
    /// LUNs to export; default [] (none).
    #[serde(default)]
    pub luns: Vec<LunExport>,
}

fn default_transport() -> SessionTransport {
    SessionTransport::Auto
}
fn default_digest() -> Digest {
    Digest::None
}
fn default_nop_interval() -> u32 {
    5
}
fn default_nop_timeout() -> u32 {
    5
}
fn default_command_timeout() -> u32 {
    30
}

/// How one LUN is exported to the host.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LunExport {
    /// LUN number, 0..16383. No default.
    pub id: u16,
    /// NBD server: "unix:/path" or "tcp:ip:port". Absent (default) = no NBD export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbd: Option<NbdEndpoint>,
    /// FUSE mount point directory holding the LUN as a file. Absent (default) = none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuse: Option<PathBuf>,
    /// Keys overriding the session's protection policy for this LUN; default none.
    #[serde(default, skip_serializing_if = "is_empty_override")]
    pub protection: PolicyOverride,
}

fn is_empty_override(o: &PolicyOverride) -> bool {
    *o == PolicyOverride::default()
}

impl Session {
    /// The protection policy for LUN `id`: the session's, with the LUN's overrides.
    pub fn policy_for_lun(&self, id: u16) -> ProtectionPolicy {
        match self.luns.iter().find(|l| l.id == id) {
            Some(l) => self.protection.merged(&l.protection),
            None => self.protection.clone(),
        }
    }
}

impl InitiatorConfig {
    /// Reads and validates a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        crate::load_file(path.as_ref())
    }

    /// Parses and validates `text`; `name` is the file name used in errors, and relative
    /// paths resolve against its directory.
    pub fn from_str_named(text: &str, name: &str) -> Result<Self, ConfigError> {
        crate::load_text(text, name)
    }

    /// The embedded default configuration (valid on loopback).
    pub fn embedded_default() -> Self {
        match Self::from_str_named(EMBEDDED_DEFAULT, "<embedded initiator default>") {
            Ok(c) => c,
            // The embedded text is checked by this crate's tests.
            Err(e) => panic!("embedded initiator default is invalid: {e}"),
        }
    }

    /// The effective configuration as TOML: every default filled in, paths resolved,
    /// secrets printed as "***".
    pub fn effective_toml(&self) -> String {
        crate::effective(self, "iser-initiator")
    }

    /// Semantic checks, every problem collected (no positions: use `from_str_named` for
    /// file positions). Secret files must have been read (as `load` does).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::unpositioned("<config>", problems))
        }
    }
}

impl Loaded for InitiatorConfig {
    fn resolve(&mut self, base: Option<&Path>, problems: &mut Vec<Problem>) {
        for (si, s) in self.sessions.iter_mut().enumerate() {
            let sp = KeyPath::root().key("sessions").index(si);
            if s.transport != SessionTransport::Tcp && s.iser_portal.is_none() {
                s.iser_portal = Some(FabricAddr::Tcp((s.portal.0.ip(), DEFAULT_ISER_PORT).into()));
            }
            if let Some(a) = &mut s.iser_portal {
                a.resolve(base);
            }
            if let Some(c) = &mut s.chap {
                c.load_secret_file(base, &sp.key("chap"), problems);
            }
            if let Some(c) = &mut s.mutual_chap {
                c.load_secret_file(base, &sp.key("mutual_chap"), problems);
            }
            for l in &mut s.luns {
                if let Some(n) = &mut l.nbd {
                    n.resolve(base);
                }
                if let Some(f) = &mut l.fuse {
                    *f = resolve_path(base, f);
                }
            }
        }
    }

    fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let p = &mut problems;
        let root = KeyPath::root();
        let mut seen_disc = HashMap::new();
        for (i, d) in self.discovery.iter().enumerate() {
            if let Some(first) = seen_disc.insert(*d, i) {
                p.push(Problem::new(
                    root.key("discovery").index(i),
                    format!("expected each portal once, found {d} again (also discovery[{first}])"),
                ));
            }
        }
        let mut sessions = HashMap::new();
        let mut nbds: HashMap<String, String> = HashMap::new();
        let mut fuses: HashMap<PathBuf, String> = HashMap::new();
        for (si, s) in self.sessions.iter().enumerate() {
            let sp = root.key("sessions").index(si);
            if let Some(first) = sessions.insert((s.target.clone(), s.portal), si) {
                p.push(Problem::new(
                    sp.key("target"),
                    format!(
                        "expected one session per target and portal, found {} at {} again (also sessions[{first}])",
                        s.target, s.portal
                    ),
                ));
            }
            check_session(s, &sp, p);
            let mut ids = HashMap::new();
            for (li, l) in s.luns.iter().enumerate() {
                let lp = sp.key("luns").index(li);
                let owner = format!("sessions[{si}].luns[{li}]");
                if l.id > crate::target::MAX_LUN_ID {
                    p.push(Problem::new(
                        lp.key("id"),
                        format!("expected 0..{}, found {}", crate::target::MAX_LUN_ID, l.id),
                    ));
                }
                if let Some(first) = ids.insert(l.id, li) {
                    p.push(Problem::new(
                        lp.key("id"),
                        format!(
                            "expected a LUN id not used before in this session, found {} (also luns[{first}])",
                            l.id
                        ),
                    ));
                }
                if let Some(n) = &l.nbd {
                    if let Some(other) = nbds.insert(n.to_string(), owner.clone()) {
                        p.push(Problem::new(
                            lp.key("nbd"),
                            format!("expected an NBD endpoint not used by another LUN, found {n} (also {other})"),
                        ));
                    }
                }
                if let Some(f) = &l.fuse {
                    if let Some(other) = fuses.insert(f.clone(), owner.clone()) {
                        p.push(Problem::new(
                            lp.key("fuse"),
                            format!(
                                "expected a FUSE mount point not used by another LUN, found {} (also {other})",
                                f.display()
                            ),
                        ));
                    }
                }
                if l.protection != PolicyOverride::default() {
                    // Problems the session's own policy has are reported once, there.
                    let session: Vec<&str> = s
                        .protection
                        .static_problems()
                        .into_iter()
                        .map(|(k, _)| k)
                        .collect();
                    let merged = s.protection.merged(&l.protection);
                    for (key, msg) in merged.static_problems() {
                        if !session.contains(&key) {
                            p.push(Problem::new(lp.key("protection").key(key), msg));
                        }
                    }
                }
            }
        }
        problems
    }
}

fn check_session(s: &Session, sp: &KeyPath, p: &mut Vec<Problem>) {
    if s.transport == SessionTransport::Iser {
        for (key, d) in [
            ("header_digest", s.header_digest),
            ("data_digest", s.data_digest),
        ] {
            if d != Digest::None {
                p.push(Problem::new(
                    sp.key(key),
                    "expected \"none\" with transport \"iser\" (digests are not used over iSER; RFC 7145), found \"crc32c\"",
                ));
            }
        }
    }
    if s.transport == SessionTransport::Tcp {
        if let Some(a) = &s.iser_portal {
            p.push(Problem::new(
                sp.key("iser_portal"),
                format!("expected no iser_portal with transport \"tcp\", found {a}"),
            ));
        }
    }
    check_range(p, sp.key("nop_interval"), s.nop_interval, 0..=3600);
    check_range(p, sp.key("nop_timeout"), s.nop_timeout, 1..=3600);
    check_range(p, sp.key("command_timeout"), s.command_timeout, 1..=3600);
    check_range(
        p,
        sp.key("reconnect").key("delay"),
        s.reconnect.delay,
        1..=3600,
    );
    check_pair(s.chap.as_ref(), s.mutual_chap.as_ref(), sp, p);
    for (key, msg) in s.protection.static_problems() {
        p.push(Problem::new(sp.key("protection").key(key), msg));
    }
}
