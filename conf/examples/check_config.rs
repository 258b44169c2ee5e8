//! Checks a configuration file the way the daemons' `--check-config` does.
//!
//! `cargo run -p conf --example check_config -- target conf/examples/target-ram.toml`
//! prints the effective configuration (exit 0) or every error (exit 78). Without a path
//! it checks the embedded default.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let kind = match args.next().as_deref() {
        Some("target") => conf::Kind::Target,
        Some("initiator") => conf::Kind::Initiator,
        _ => {
            eprintln!("usage: check_config target|initiator [FILE]");
            return ExitCode::from(64);
        }
    };
    let path = args.next().map(PathBuf::from);
    conf::cli::check_config(path.as_deref(), kind)
}
