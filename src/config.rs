//! The configuration file (TOML), its defaults and validation. Keys and defaults are fixed in
//! docs/configuration.md (from the project's interfaces); every key is optional and an unknown
//! key is an error naming the key and its line.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/atsms-milter/atsms-milter.toml";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub resolver: ResolverConfig,
    pub cache: CacheConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// PLC directories, tried in order (a site's own mirror first).
    pub plc_urls: Vec<String>,
    /// `IP:PORT` or `IP`; empty means the system resolver (/etc/resolv.conf).
    pub dns_servers: Vec<String>,
    /// Permit loopback, private and link-local targets and plain http to them (test setups).
    pub allow_private_addresses: bool,
    /// Seconds for one identity lookup, every fetch included.
    pub timeout: u64,
    /// Bytes; larger DID documents and records are refused.
    pub max_document_size: usize,
    pub max_concurrent_fetches: usize,
    pub max_concurrent_per_host: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            plc_urls: vec!["https://plc.directory".to_string()],
            dns_servers: Vec::new(),
            allow_private_addresses: false,
            timeout: 5,
            max_document_size: 65_536,
            max_concurrent_fetches: 64,
            max_concurrent_per_host: 8,
        }
    }
}

impl ResolverConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.max(1))
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    pub fn from_toml(text: &str, path: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_string(),
            message,
        })?;
        Ok(config)
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        Config::from_toml(&text, &display)
    }

    /// Checks that serde cannot express: value ranges and formats.
    pub fn validate(&self) -> Result<(), String> {
        if self.resolver.plc_urls.is_empty() {
            return Err("resolver.plc_urls: at least one PLC directory is needed".into());
        }
        for url in &self.resolver.plc_urls {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| format!("resolver.plc_urls: \"{url}\": {e}"))?;
            if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
                return Err(format!(
                    "resolver.plc_urls: \"{url}\" is not an http(s) URL"
                ));
            }
        }
        for server in &self.resolver.dns_servers {
            crate::identity::net::parse_dns_server(server)
                .map_err(|e| format!("resolver.dns_servers: {e}"))?;
        }
        if self.resolver.timeout == 0 {
            return Err("resolver.timeout: must be at least 1 second".into());
        }
        if self.resolver.max_concurrent_fetches == 0 || self.resolver.max_concurrent_per_host == 0 {
            return Err("resolver.max_concurrent_*: must be at least 1".into());
        }
        Ok(())
    }
}
