//! Fuzz targets: what comes off the wire, parsed, must never panic, and parsers fed in pieces
//! must agree with themselves fed whole (split-invariance). Each target is `run(&[u8])`; the
//! fuzz crate (fuzz/, libFuzzer, coverage-guided: `scripts/fuzz`) and the test suite
//! (tests/fuzz_targets.rs, unguided, bounded in time, on every CI run) drive the same code.
//! Not part of the program's interface.

pub mod addresses;
pub mod exim_request;
pub mod lmtp_decoder;
pub mod message;
pub mod mime_scanner;
pub mod netstring;
pub mod service_token;
pub mod signature_field;
