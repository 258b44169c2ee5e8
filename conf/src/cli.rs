//! The `--check-config` helper both daemons call: print the effective configuration and
//! exit 0, or print every error and exit 78 (EX_CONFIG).

use std::path::Path;
use std::process::ExitCode;

use crate::Kind;

/// Exit status for an invalid configuration (sysexits.h EX_CONFIG).
pub const EXIT_CONFIG: u8 = 78;

/// Checks the configuration at `path` (or the embedded default when `None`): on success
/// prints the effective TOML to stdout and returns success; otherwise prints one error
/// per line to stderr and returns [`EXIT_CONFIG`].
pub fn check_config(path: Option<&Path>, kind: Kind) -> ExitCode {
    match crate::check(path, kind) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            let n = e.diagnostics.len();
            eprintln!(
                "{n} error{} in the configuration",
                if n == 1 { "" } else { "s" }
            );
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
