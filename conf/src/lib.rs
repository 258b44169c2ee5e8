//! TOML configuration for iser-target and iser-initiator: schema, defaults and validation with file:line:col errors.
