#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| iscsi::fuzzing::text(data));
