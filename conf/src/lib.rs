//! TOML configuration for iser-target and iser-initiator: schema, defaults and validation with file:line:col errors.
//!
//! Both daemons load their configuration the same way:
//!
//! ```
//! let target = conf::target::TargetConfig::embedded_default();
//! assert_eq!(target.targets.len(), 1);
//! let text = target.effective_toml(); // every default filled in, secrets as "***"
//! assert!(conf::target::TargetConfig::from_str_named(&text, "effective.toml").is_ok());
//! ```
//!
//! Loading is parse (serde, with `deny_unknown_fields`; the first type error stops it),
//! then resolution (relative paths against the file's directory, secret files read and
//! their permissions checked), then validation, which collects every problem. Each
//! error carries file, line, column and key path: see [`ConfigError`].

pub mod cli;
pub mod error;
pub mod initiator;
pub mod protection;
pub mod secret;
mod source;
pub mod target;
pub mod value;

use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use error::{ConfigError, Diagnostic, KeyPath, Problem};
pub use secret::{Chap, Secret};
pub use value::{ByteSize, FabricAddr, Iqn, NbdEndpoint, PortalAddr, ValueError};

/// Log verbosity, lowest to highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Normal operation (default).
    Info,
    /// Per-session detail.
    Debug,
    /// Per-PDU detail.
    Trace,
}

impl LogLevel {
    /// The name as `tracing`'s filter syntax spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

/// The `[log]` section shared by both daemons.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// "error", "warn", "info" (default), "debug" or "trace". RUST_LOG overrides it.
    pub level: LogLevel,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
        }
    }
}

/// Which daemon a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `iser-target`.
    Target,
    /// `iser-initiator`.
    Initiator,
}

/// Reads, validates and renders a configuration as a daemon's `--check-config` does:
/// the effective TOML, or every error. `None` checks the embedded default.
pub fn check(path: Option<&Path>, kind: Kind) -> Result<String, ConfigError> {
    match (kind, path) {
        (Kind::Target, Some(p)) => target::TargetConfig::load(p).map(|c| c.effective_toml()),
        (Kind::Target, None) => {
            target::TargetConfig::from_str_named(target::EMBEDDED_DEFAULT, "<embedded default>")
                .map(|c| c.effective_toml())
        }
        (Kind::Initiator, Some(p)) => {
            initiator::InitiatorConfig::load(p).map(|c| c.effective_toml())
        }
        (Kind::Initiator, None) => initiator::InitiatorConfig::from_str_named(
            initiator::EMBEDDED_DEFAULT,
            "<embedded default>",
        )
        .map(|c| c.effective_toml()),
    }
}

/// What both schemas do after serde: resolve paths and secret files, then check.
pub(crate) trait Loaded: DeserializeOwned + Serialize {
    /// Resolves relative paths against `base` and reads secret files.
    fn resolve(&mut self, base: Option<&Path>, problems: &mut Vec<Problem>);
    /// Every semantic problem.
    fn problems(&self) -> Vec<Problem>;
}

pub(crate) fn load_file<T: Loaded>(path: &Path) -> Result<T, ConfigError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::file(&name, format!("cannot read configuration: {e}")))?;
    load_text(&text, &name)
}

pub(crate) fn load_text<T: Loaded>(text: &str, name: &str) -> Result<T, ConfigError> {
    let (mut config, index): (T, _) = source::parse(text, name)?;
    let base = value::base_dir(name);
    let mut problems = Vec::new();
    config.resolve(base.as_deref(), &mut problems);
    problems.extend(config.problems());
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(index.diagnose(problems))
    }
}

pub(crate) fn effective<T: Serialize>(config: &T, daemon: &str) -> String {
    let body = match toml::to_string(config) {
        Ok(s) => s,
        // The schema types serialize to TOML by construction; tests cover every shape.
        Err(e) => format!("# cannot render the effective configuration: {e}\n"),
    };
    format!(
        "# Effective {daemon} configuration: every default filled in, secrets shown as \"***\".\n\n{body}"
    )
}

/// Reports `value` outside `range` as a problem at `path`.
pub(crate) fn check_range(
    problems: &mut Vec<Problem>,
    path: KeyPath,
    value: u32,
    range: std::ops::RangeInclusive<u32>,
) {
    if !range.contains(&value) {
        problems.push(Problem::new(
            path,
            format!("expected {}..{}, found {value}", range.start(), range.end()),
        ));
    }
}

pub(crate) fn worker_threads(configured: u32) -> usize {
    if configured == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        configured as usize
    }
}
