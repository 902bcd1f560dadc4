//! atsms-milter: verifies AT-SMS signatures (mail signed by atproto identities) for Postfix
//! (milter) and for Postfix and Exim local delivery (LMTP).
//!
//! The rooms and the direction of their arrows are in docs/architecture.md: `envelope` and
//! `crypto` are pure; `identity` owns the network and the cache; `verify` turns a message into
//! a `Verdict`; `auth_results` renders it; transports only translate.

pub mod auth_results;
pub mod cli;
pub mod config;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod envelope;
pub mod identity;
pub mod lmtp;
pub mod logging;
pub mod maildir;
pub mod message;
pub mod metrics;
pub mod milter;
pub mod policy;
pub mod replay;
pub mod session;
pub mod socket;
pub mod store;
pub mod syntax;
pub mod verify;
