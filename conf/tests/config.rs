//! Integration tests of the conf crate: error positions for every rule, defaults,
//! secrets, round trips and the shipped example files.

#[path = "config/behaviour.rs"]
mod behaviour;
#[path = "config/initiator_errors.rs"]
mod initiator_errors;
#[path = "config/parse_errors.rs"]
mod parse_errors;
#[path = "config/roundtrip.rs"]
mod roundtrip;
#[path = "config/secrets.rs"]
mod secrets;
#[path = "config/target_errors.rs"]
mod target_errors;
