//! Integration tests of the conf crate: error positions for every rule, defaults,
//! secrets, round trips and the shipped example files.

#[path = "config/target_errors.rs"]
mod target_errors;
