//! Where the daemons' binaries are. `CARGO_BIN_EXE_<name>` exists only for the bins
//! of the package that owns a test, so the suite finds `iser-target` and
//! `iser-initiator` in the cargo profile directory its own executable was built into
//! (`build/<profile>/`), after one `cargo build -p target -p initiator --bins` per
//! test process to make sure they exist and are current (a no-op when `cargo test
//! --workspace` or `cargo nextest run --workspace` just built them). Setting
//! `ISER_E2E_BIN_DIR` skips the build and uses the binaries in that directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::SupportError;

/// The target daemon.
pub const TARGET: &str = "iser-target";
/// The initiator daemon and CLI.
pub const INITIATOR: &str = "iser-initiator";

/// The cargo profile directory this process was built into (`build/debug`).
fn profile_dir() -> Result<PathBuf, SupportError> {
    let exe = std::env::current_exe().map_err(|e| SupportError::io("current_exe", e))?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| SupportError::Unexpected(format!("{} has no parent", exe.display())))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().unwrap_or(dir);
    }
    Ok(dir.to_path_buf())
}

/// Builds both daemons into `dir`'s profile with the cargo that runs this test.
fn build(dir: &Path) -> Result<(), SupportError> {
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(p) => p.to_owned(),
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new(env!("CARGO_MANIFEST_DIR")));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--quiet", "--profile", &profile])
        .args([
            "-p",
            "target",
            "--bin",
            TARGET,
            "-p",
            "initiator",
            "--bin",
            INITIATOR,
        ])
        .output()
        .map_err(|e| SupportError::io("running cargo build", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SupportError::Build {
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The path of daemon binary `name` ([`TARGET`] or [`INITIATOR`]), built once per
/// process unless `ISER_E2E_BIN_DIR` names a directory holding it.
pub fn daemon_bin(name: &str) -> Result<PathBuf, SupportError> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("ISER_E2E_BIN_DIR") {
            return Ok(PathBuf::from(d));
        }
        let dir = profile_dir().map_err(|e| e.to_string())?;
        build(&dir).map_err(|e| e.to_string())?;
        Ok(dir)
    });
    let dir = dir.clone().map_err(SupportError::Unexpected)?;
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(SupportError::MissingBinary(path))
    }
}
