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
    /// Absent means: on, with defaults, unless an `[lmtp]` section is present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub milter: Option<MilterConfig>,
    /// Absent means LMTP is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lmtp: Option<LmtpConfig>,
    pub resolver: ResolverConfig,
    pub cache: CacheConfig,
    pub policy: PolicyConfig,
    pub store: StoreConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MilterConfig {
    /// `inet:HOST:PORT`, `inet6:[HOST]:PORT`, `unix:/path` or libmilter's `inet:PORT@HOST`.
    pub listen: String,
    /// Octal permissions of a `unix:` socket.
    pub socket_mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    pub max_connections: usize,
}

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            listen: "inet:127.0.0.1:8898".into(),
            socket_mode: "0660".into(),
            socket_group: None,
            max_connections: 1000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LmtpConfig {
    /// `inet:HOST:PORT` or `unix:/path`; unset: only `serve --stdio` speaks LMTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    pub socket_mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// `%u` address, `%n` local part, `%d` domain.
    pub maildir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<String>,
    pub recipient_delimiter: String,
    pub max_message_size: u64,
    pub idle_timeout: u64,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            listen: None,
            socket_mode: "0660".into(),
            socket_group: None,
            maildir: "/var/mail/%d/%n/Maildir".into(),
            recipients: None,
            recipient_delimiter: "+".into(),
            max_message_size: 52_428_800,
            idle_timeout: 300,
        }
    }
}

/// What to do with a message, by result (docs/configuration.md, "Actions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Add the header field and deliver.
    Accept,
    /// Milter: 550 5.7.1. LMTP: 550 5.7.1 for that recipient.
    Reject,
    /// 451 4.7.1.
    Tempfail,
    /// Milter: Postfix's hold queue. LMTP: as `junk`.
    Quarantine,
    /// LMTP: into the `.Junk` folder. Milter: as `accept` (the delivery agent files it).
    Junk,
    /// Milter: accept and drop. LMTP: as `junk`, never dropped.
    Discard,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "accept",
            Action::Reject => "reject",
            Action::Tempfail => "tempfail",
            Action::Quarantine => "quarantine",
            Action::Junk => "junk",
            Action::Discard => "discard",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Unset: this host's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authserv_id: Option<String>,
    pub on_pass: Action,
    pub on_fail: Action,
    pub on_permerror: Action,
    pub on_temperror: Action,
    pub on_policy: Action,
    pub on_none: Action,
    /// Applies when the message passes but no passing signature is aligned.
    pub on_unaligned: Action,
    /// Networks whose mail is not judged (milter).
    pub trusted_networks: Vec<String>,
    /// SMTP-authenticated mail is not judged (milter).
    pub skip_authenticated: bool,
    pub dry_run: bool,
    pub replay: bool,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            authserv_id: None,
            on_pass: Action::Accept,
            on_fail: Action::Accept,
            on_permerror: Action::Accept,
            // Enabling the milter never loses mail: only a lookup failure defers it.
            on_temperror: Action::Tempfail,
            on_policy: Action::Accept,
            on_none: Action::Accept,
            on_unaligned: Action::Accept,
            trusted_networks: vec!["127.0.0.0/8".into(), "::1/128".into()],
            skip_authenticated: true,
            dry_run: false,
            replay: true,
        }
    }
}

impl PolicyConfig {
    /// The authserv-id of our Authentication-Results fields.
    pub fn authserv_id(&self) -> String {
        self.authserv_id.clone().unwrap_or_else(host_name)
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub socket: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: "/run/atsms-milter/control.sock".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    /// `stderr` or `syslog` (facility mail).
    pub destination: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            destination: "stderr".into(),
        }
    }
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

    /// The milter section in force: configured, or the default unless only LMTP is configured.
    pub fn milter_in_force(&self) -> Option<MilterConfig> {
        match (&self.milter, &self.lmtp) {
            (Some(milter), _) => Some(milter.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(MilterConfig::default()),
        }
    }

    /// The configuration with every default written out, as `check-config` prints it.
    pub fn effective(&self) -> Config {
        let mut effective = self.clone();
        effective.milter = self.milter_in_force();
        effective.policy.authserv_id = Some(self.policy.authserv_id());
        effective
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
        if let Some(milter) = &self.milter {
            crate::socket::SocketSpec::parse(&milter.listen)
                .map_err(|e| format!("milter.listen: {e}"))?;
            parse_mode(&milter.socket_mode).map_err(|e| format!("milter.socket_mode: {e}"))?;
            if milter.max_connections == 0 {
                return Err("milter.max_connections: must be at least 1".into());
            }
        }
        if let Some(lmtp) = &self.lmtp {
            if let Some(listen) = &lmtp.listen {
                crate::socket::SocketSpec::parse(listen)
                    .map_err(|e| format!("lmtp.listen: {e}"))?;
            }
            parse_mode(&lmtp.socket_mode).map_err(|e| format!("lmtp.socket_mode: {e}"))?;
        }
        crate::policy::parse_networks(&self.policy.trusted_networks)
            .map_err(|e| format!("policy.trusted_networks: {e}"))?;
        if let Some(listen) = &self.metrics.listen {
            listen.parse::<std::net::SocketAddr>().map_err(|_| {
                format!("metrics.listen: \"{listen}\" is not HOST:PORT (an IP address and port)")
            })?;
        }
        if !matches!(self.log.destination.as_str(), "stderr" | "syslog") {
            return Err(format!(
                "log.destination: \"{}\" is neither stderr nor syslog",
                self.log.destination
            ));
        }
        if !matches!(
            self.log.level.as_str(),
            "error" | "warn" | "info" | "debug" | "trace"
        ) {
            return Err(format!(
                "log.level: \"{}\" is not one of error, warn, info, debug, trace",
                self.log.level
            ));
        }
        if self.resolver.max_concurrent_fetches == 0 || self.resolver.max_concurrent_per_host == 0 {
            return Err("resolver.max_concurrent_*: must be at least 1".into());
        }
        Ok(())
    }
}

/// The name of this host, the default authserv-id.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_string(),
        _ => "localhost".to_string(),
    }
}

/// An octal permission string such as `"0660"`.
pub fn parse_mode(mode: &str) -> Result<u32, String> {
    u32::from_str_radix(mode, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| format!("\"{mode}\" is not an octal mode"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors_name_key_and_line() {
        let config = Config::from_toml("", "x").unwrap();
        assert_eq!(
            config.milter_in_force().unwrap().listen,
            "inet:127.0.0.1:8898"
        );
        assert_eq!(config.policy.on_temperror, Action::Tempfail);
        let only_lmtp =
            Config::from_toml("[lmtp]\nlisten = \"inet:127.0.0.1:2424\"\n", "x").unwrap();
        assert!(only_lmtp.milter_in_force().is_none());
        let err = Config::from_toml("[policy]\n\non_fail = \"accept\"\nbogus = 1\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus") && err.contains("line 4"), "{err}");
        let err = Config::from_toml("[policy]\non_fail = \"explode\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("explode") && err.contains("line 2"), "{err}");
        let err = Config::from_toml("[milter]\nlisten = \"tcp:1\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("milter.listen"), "{err}");
    }

    #[test]
    fn effective_config_round_trips() {
        let config = Config::from_toml("[policy]\nauthserv_id = \"mx.test\"\n", "x").unwrap();
        let text = toml::to_string(&config.effective()).unwrap();
        let again = Config::from_toml(&text, "again").unwrap();
        assert_eq!(again.effective(), config.effective());
        assert!(text.contains("[milter]"));
    }
}
