//! The daemon: log into every configured session, keep it up, serve its exports.

use conf::initiator::InitiatorConfig;

use crate::error::Error;

/// Run the daemon until SIGINT/SIGTERM.
pub async fn run(config: InitiatorConfig) -> Result<(), Error> {
    let _ = config;
    Err(Error::Invalid("daemon mode is being written".into()))
}
