#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| iscsi::fuzzing::login_target(data));
