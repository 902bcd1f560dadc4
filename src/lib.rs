#![recursion_limit = "256"]
//! atsms-milter: verifies AT-SMS signatures (mail signed by atproto identities) for Postfix
//! (milter) and for Postfix and Exim local delivery (LMTP).
//!
//! This is the implementation of one program, split into a library so that its tests and
//! benchmarks can reach the rooms; it is **not a stable library API**. Its stable interfaces
//! are the command line, the configuration file, the sockets and the header fields it writes
//! (docs/configuration.md, docs/envelope-v1.md).
//!
//! The rooms and the direction of their arrows are in docs/architecture.md: `envelope` and
//! `crypto` are pure; `identity` owns the network and the cache; `verify` turns a message into
//! a `Verdict`; the judge in `session` turns a verdict and the recipients into decisions;
//! transports only translate.

pub mod action;
pub mod address;
pub mod auth_results;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod envelope;
pub mod exim;
pub mod floor;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
pub mod http;
pub mod identity;
pub mod inbox;
pub mod limit;
pub mod live;
pub mod lmtp;
pub mod logging;
pub mod maildir;
pub mod message;
pub mod metrics;
pub mod milter;
pub mod mime;
pub mod policy;
pub mod replay;
pub mod reply;
pub mod reputation;
pub mod routing;
pub mod senders;
pub mod service_auth;
pub mod session;
pub mod signer;
pub mod socket;
pub mod socketmap;
pub mod store;
pub mod syntax;
pub mod verify;
pub mod xrpc;
