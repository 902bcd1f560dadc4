//! The sections of identity resolution and what it keeps: `[resolver]`, `[cache]`, `[store]`.

use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{DnsServer, HttpUrl, Share};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `redis://…` or `rediss://…` (TLS), credentials in the URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
    /// The fleet key authenticating every shared entry (HMAC-SHA-256).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The replay set of `serve --stdio` runs without Redis.
    pub replay_file: PathBuf,
    /// The XRPC service's `jti` set without Redis: tokens accepted before a restart stay
    /// used until they expire.
    pub jti_file: PathBuf,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            redis: None,
            key_file: None,
            replay_file: PathBuf::from("/var/lib/atsms-milter/replay"),
            jti_file: PathBuf::from("/var/lib/atsms-milter/jti"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// PLC directories, tried in order (a site's own mirror first).
    pub plc_urls: Vec<HttpUrl>,
    /// Empty means the system resolver (/etc/resolv.conf).
    pub dns_servers: Vec<DnsServer>,
    /// Permit loopback, private and link-local targets and plain http to them (test setups).
    pub allow_private_addresses: bool,
    /// Seconds for one identity lookup, every fetch included.
    pub timeout: NonZeroU64,
    /// Bytes; larger DID documents and records are refused.
    pub max_document_size: usize,
    pub max_concurrent_fetches: NonZeroUsize,
    pub max_concurrent_per_host: NonZeroUsize,
    /// Requests per second to each PLC directory, lookups and background refreshes together
    /// (refreshes use only what lookups leave). plc.directory limits clients per IP; a fleet
    /// behind one address shares that limit.
    pub max_requests_per_second: NonZeroU32,
    /// The share of `max_requests_per_second` only mail being judged may use: socketmap
    /// lookups, consent checks at RCPT and XRPC callers — set off by anyone, for free —
    /// share the rest.
    pub mail_share: Share,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            plc_urls: vec!["https://plc.directory".parse().expect("a URL")],
            dns_servers: Vec::new(),
            allow_private_addresses: false,
            timeout: NonZeroU64::new(5).expect("non-zero"),
            max_document_size: 65_536,
            max_concurrent_fetches: NonZeroUsize::new(64).expect("non-zero"),
            max_concurrent_per_host: NonZeroUsize::new(8).expect("non-zero"),
            max_requests_per_second: NonZeroU32::new(10).expect("non-zero"),
            mail_share: Share(0.8),
        }
    }
}

impl ResolverConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.get())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Seconds an identity is served without refresh.
    pub fresh: u64,
    /// Seconds after which an identity is refetched before use.
    pub max_age: u64,
    /// Seconds past `max_age` an identity may still serve while refetching fails transiently.
    pub stale_if_error: u64,
    /// Seconds a definite not-found is remembered.
    pub negative: u64,
    /// Seconds a transient error is remembered.
    pub error: u64,
    pub max_entries: u64,
    /// Bytes the identity cache may hold, all kinds of entry together.
    pub max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            fresh: 3600,
            max_age: 86_400,
            stale_if_error: 259_200,
            negative: 600,
            error: 60,
            max_entries: 100_000,
            max_bytes: 67_108_864,
        }
    }
}
