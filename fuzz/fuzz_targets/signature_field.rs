#![no_main]
//! `atsms_milter::fuzzing::signature_field` under libFuzzer (the same target runs, unguided and bounded,
//! in the test suite: tests/fuzz_targets.rs).

libfuzzer_sys::fuzz_target!(|data: &[u8]| atsms_milter::fuzzing::signature_field::run(data));
