#![recursion_limit = "256"]
//! atsms-milter: verifies AT-SMS signatures (mail signed by atproto identities) for Postfix
//! (milter) and for Postfix and Exim local delivery (LMTP).
//!
//! This is the implementation of one program, split into a library so that its tests and
//! benchmarks can reach the rooms; it is **not a stable library API**. Its stable interfaces
//! are the command line, the configuration file, the sockets and the header fields it writes
//! (docs/configuration.md, docs/envelope-v1.md).
//!
//! The rooms, grouped by what they are for, and the direction of their arrows are in
//! docs/architecture.md: `transport` (the protocols), `policy` (the judge and what it weighs),
//! `verification` (a message to a `Verdict`), `sending` (the PDS-side sender: sign once, seal
//! for every recipient device, deliver), `atproto` (identities, service auth), `format`
//! (wire formats, pure), `infra` (what every room stands on); `cli`, `daemon` and `fuzzing` are
//! the program's entry points.

pub mod atproto;
pub mod cli;
pub mod daemon;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod infra;
pub mod policy;
pub mod sending;
pub mod transport;
pub mod verification;
