//! iser-initiator: discovery, login, sessions, per-command protection and block exports.
