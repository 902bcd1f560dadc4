#![no_main]
//! `atsms_milter::fuzzing::netstring` under libFuzzer (the same target runs, unguided and bounded,
//! in the test suite: tests/fuzz_targets.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| atsms_milter::fuzzing::netstring::run(data));
