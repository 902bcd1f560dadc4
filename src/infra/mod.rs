//! Infrastructure every room may stand on: configuration, sockets and the HTTP server, logging
//! and metrics, the clock and the host, `Live` values, rate limits, stores and Maildir, secret files.

pub mod clock;
pub mod config;
pub mod device_store;
pub mod host;
pub mod http;
pub mod limit;
pub mod live;
pub mod logging;
pub mod maildir;
pub mod metrics;
pub mod secret;
pub mod socket;
pub mod store;
