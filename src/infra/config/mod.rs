//! The configuration file (TOML): its model, defaults and validation. Keys and defaults are
//! fixed in docs/configuration.md (from the project's interfaces); every key is optional and
//! an unknown key is an error naming the key and its line.
//!
//! Values are parsed into their types when the file is read (sockets, networks, DNS servers,
//! URLs, modes, log settings), so a bad value is reported with its TOML line and the rest of
//! the program never parses a configuration string again. Split by concern: the value types
//! (`values`), the sections of the ways in (`transports`), of what is done with mail
//! (`judging`), and of identity resolution (`identity`); here the file as a whole, its cross-key
//! rules and its loading. Uses only the leaves `action`, `host` and `senders`.

use std::path::Path;

use serde::{Deserialize, Serialize};

pub use ipnet::IpNet;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/atsms-milter/atsms-milter.toml";

mod identity;
mod judging;
mod transports;
mod values;

pub use crate::policy::action::Action;
pub use identity::*;
pub use judging::*;
pub use transports::*;
pub use values::*;

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
    pub limits: LimitsConfig,
    pub socketmap: SocketmapConfig,
    pub routing: RoutingConfig,
    pub inbox: InboxConfig,
    pub signing: SigningConfig,
    /// `[[device]]`: devices held for sending identities (`sendMessage`).
    #[serde(rename = "device", skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceConfig>,
    pub send: SendConfig,
    pub xrpc: XrpcConfig,
    pub exim: EximConfig,
    pub reputation: ReputationConfig,
    pub store: StoreConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
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
        effective.policy.authserv_id = self.policy.authserv_id().parse().ok();
        effective.inbox.hosts = Some(self.inbox.hosts());
        effective.xrpc.service_did = Some(self.xrpc.service_did());
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

    /// `[send]` and `[[device]]`: at most 100 recipients, one held device per DID.
    fn validate_sending(&self) -> Result<(), String> {
        if self.send.max_recipients.get() > 100 {
            return Err("send.max_recipients: at most 100".into());
        }
        for (i, device) in self.devices.iter().enumerate() {
            if crate::format::syntax::supported_did_method(&device.did).is_none() {
                return Err(format!(
                    "device #{}: \"{}\" is not a DID",
                    i + 1,
                    device.did
                ));
            }
            if self.devices[..i].iter().any(|d| d.did == device.did) {
                return Err(format!(
                    "device #{}: {} has a device already (one held device per DID)",
                    i + 1,
                    device.did
                ));
            }
        }
        Ok(())
    }

    /// Rules between keys, which no single value's type can hold.
    pub fn validate(&self) -> Result<(), String> {
        if self.resolver.plc_urls.is_empty() {
            return Err("resolver.plc_urls: at least one PLC directory is needed".into());
        }
        if self.signing.ttl.get() > 604_800 {
            return Err("signing.ttl: at most 604800 seconds (7 days, spec section 3.3)".into());
        }
        for (i, key) in self.signing.keys.iter().enumerate() {
            if key.logins.as_ref().is_none_or(|l| l.is_empty()) {
                return Err(format!(
                    "signing.key #{} ({}): logins must name the SASL logins that may sign with it; logins = [\"*\"] lets every authenticated login sign every sender it lists",
                    i + 1,
                    key.kid
                ));
            }
            let (did, fragment) = key.kid.split_once('#').unwrap_or_default();
            if did != key.did || fragment.is_empty() {
                return Err(format!(
                    "signing.key #{}: kid \"{}\" must be {}#<fragment>",
                    i + 1,
                    key.kid,
                    key.did
                ));
            }
        }
        if self.xrpc.inbox && self.lmtp.as_ref().is_none_or(|l| l.maildir.is_empty()) {
            return Err(
                "xrpc.inbox: the HTTPS inbox stores as LMTP does: it needs an [lmtp] section \
                 with its maildir"
                    .into(),
            );
        }
        self.validate_sending()?;
        if let Some(did) = &self.xrpc.service_did
            && !did.starts_with("did:")
        {
            return Err(format!("xrpc.service_did: \"{did}\" is not a DID"));
        }
        for (i, rule) in self.inbox.rules.iter().enumerate() {
            if rule.recipients.is_empty() {
                return Err(format!(
                    "inbox.rule #{}: recipients must name at least one address pattern",
                    i + 1
                ));
            }
            if let Some(allow) = &rule.allow
                && let Err((_, why)) = crate::policy::senders::SenderList::from_entries(
                    allow.iter().map(String::as_str),
                )
            {
                return Err(format!("inbox.rule #{}: allow: {why}", i + 1));
            }
        }
        if self
            .inbox
            .hosts
            .as_ref()
            .is_some_and(|hosts| hosts.iter().any(|h| h.trim().is_empty() || h.contains('@')))
        {
            return Err("inbox.hosts: host names, without '@'".into());
        }
        // An alias domain is one the MTA refuses to relay to: never a name this host keeps
        // (docs/security.md, "Open relay through DID aliases").
        let hosts: Vec<String> = self
            .inbox
            .hosts()
            .iter()
            .chain(std::iter::once(&crate::infra::host::name()))
            .filter_map(|h| crate::format::syntax::ascii_domain(h))
            .collect();
        if let Some(own) = self
            .routing
            .alias_domains
            .iter()
            .find(|d| hosts.iter().any(|h| h == d.as_str()))
        {
            return Err(format!(
                "routing.alias_domains: {own} is a name of this host (inbox.hosts or its host \
                 name); alias domains must be domains the MTA does not keep, or a client on \
                 the internet could relay through a DID's document"
            ));
        }
        if self.limits.max_header_fields == 0 || self.limits.max_header_bytes < 1024 {
            return Err(
                "limits: max_header_fields must be at least 1, max_header_bytes at least 1024"
                    .into(),
            );
        }
        if let Some(redis) = &self.store.redis {
            let parsed = url::Url::parse(redis).map_err(|e| format!("store.redis: {e}"))?;
            if !matches!(parsed.scheme(), "redis" | "rediss" | "redis+unix" | "unix") {
                return Err(format!(
                    "store.redis: \"{}\" is not a redis:// or rediss:// URL",
                    parsed.scheme()
                ));
            }
            if self.store.key_file.is_none() {
                return Err(
                    "store.redis needs store.key_file: whoever can write to the Redis server \
                     could otherwise hand this host DID documents, keys and replay records \
                     of their choosing (docs/scaling.md)"
                        .into(),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        Config::from_toml(text, "t.toml").unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_errors_name_key_and_line() {
        let config = Config::from_toml("", "x").unwrap();
        assert_eq!(
            config.milter_in_force().unwrap().listen.to_string(),
            "inet:127.0.0.1:8898"
        );
        assert_eq!(config.policy.on_temperror, Action::Tempfail);
        let only_lmtp =
            Config::from_toml("[lmtp]\nlisten = \"inet:127.0.0.1:2424\"\n", "x").unwrap();
        assert!(only_lmtp.milter_in_force().is_none());
        let err = error("[policy]\n\non_fail = \"accept\"\nbogus = 1\n");
        assert!(err.contains("bogus") && err.contains("line 4"), "{err}");
        let err = error("[policy]\non_fail = \"explode\"\n");
        assert!(err.contains("explode") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn typed_values_report_their_line() {
        for (text, line, words) in [
            ("[milter]\nlisten = \"tcp:1\"\n", 2, "is not inet:HOST:PORT"),
            (
                "[milter]\n\nsocket_mode = \"999\"\n",
                3,
                "not an octal mode",
            ),
            ("[milter]\nmax_connections = 0\n", 2, "nonzero"),
            (
                "[resolver]\ndns_servers = [\"1.2.3.4\", \"x\"]\n",
                2,
                "is not IP or IP:PORT",
            ),
            (
                "[resolver]\nplc_urls = [\"ftp://x\"]\n",
                2,
                "is not an http(s) URL",
            ),
            ("[resolver]\ntimeout = 0\n", 2, "nonzero"),
            (
                "[policy]\ntrusted_networks = [\"10.0.0.0/33\"]\n",
                2,
                "not a network",
            ),
            (
                "[policy]\nauthserv_id = \"mx; evil\"\n",
                2,
                "not a valid authserv-id",
            ),
            ("[metrics]\nlisten = \"localhost\"\n", 2, "is not HOST:PORT"),
            ("\n[log]\nlevel = \"loud\"\n", 3, "loud"),
            ("[log]\ndestination = \"file\"\n", 2, "file"),
        ] {
            let err = error(text);
            assert!(
                err.contains(&format!("line {line}")) && err.contains(words),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn cross_key_rules() {
        assert!(error("[resolver]\nplc_urls = []\n").contains("at least one"));
        // An alias domain is never one this host keeps, nor an MTA's own kind of name.
        let ok = Config::from_toml(
            "[routing]\nalias_domains = [\"DID.Example.NET.\"]\n[inbox]\nhosts = [\"mx.example.net\"]\n",
            "t",
        )
        .unwrap();
        assert_eq!(ok.routing.alias_domains[0].as_str(), "did.example.net");
        for (domain, words) in [
            ("mx.example.net", "a name of this host"),
            ("MX.EXAMPLE.NET.", "a name of this host"),
            ("localhost", "not a domain mail is routed to"),
            ("mail.localhost", "not a domain mail is routed to"),
            ("example", "not a domain mail is routed to"),
            ("[127.0.0.1]", "not a domain mail is routed to"),
            ("127.0.0.1", "not a domain mail is routed to"),
        ] {
            let err = error(&format!(
                "[routing]\nalias_domains = [\"{domain}\"]\n[inbox]\nhosts = [\"mx.example.net\"]\n"
            ));
            assert!(err.contains(words), "{domain}: {err}");
        }
        // A fleet key whenever Redis is used, on loopback too (anything on the host that can
        // reach the port could write to it).
        for url in [
            "redis://10.0.0.5/",
            "redis://127.0.0.1:6379/",
            "redis+unix:///r.sock",
        ] {
            assert!(
                error(&format!("[store]\nredis = \"{url}\"\n")).contains("key_file"),
                "{url}"
            );
        }
        // Every signing key names who may use it.
        let key = "[[signing.key]]\nsenders = [\"*@example.org\"]\ndid = \"did:plc:ofurdhfyhjhgomvfygxergep\"\nkid = \"did:plc:ofurdhfyhjhgomvfygxergep#atsms\"\nkey_file = \"/k.pem\"\n";
        assert!(error(key).contains("logins = [\"*\"]"));
        assert!(error(&format!("{key}logins = []\n")).contains("logins"));
        assert!(Config::from_toml(&format!("{key}logins = [\"*\"]\n"), "x").is_ok());
        assert!(Config::from_toml("[resolver]\nmail_share = 1\n", "x").is_ok());
        // An inbox rule's allow list is read as the reputation lists are: every entry valid.
        let rule = |allow: &str| {
            format!("[[inbox.rule]]\nrecipients = [\"*@mx.test\"]\nallow = [{allow}]\n")
        };
        assert!(
            Config::from_toml(
                &rule("\"*.example.org\", \"did:plc:ofurdhfyhjhgomvfygxergep\""),
                "x"
            )
            .is_ok()
        );
        assert!(error(&rule("\"did:key:zQ3sh\"")).contains("inbox.rule #1: allow"));
        assert!(error(&rule("\"not a handle\"")).contains("neither a DID"));
        assert!(error("[resolver]\nmail_share = 1.5\n").contains("share from 0 to 1"));
        let public = |url: &str| {
            Config::from_toml(&format!("[xrpc]\npublic_url = \"{url}\"\n"), "x")
                .map(|c| c.xrpc.public_url.unwrap().to_string())
        };
        assert_eq!(
            public("https://Inbox.Example.net:443/").unwrap(),
            "https://inbox.example.net"
        );
        assert_eq!(
            public("https://inbox.example.net:8443").unwrap(),
            "https://inbox.example.net:8443"
        );
        for bad in [
            "http://inbox.example.net",
            "https://inbox.example.net/inbox",
            "https://inbox.example.net/?x",
            "inbox.example.net",
        ] {
            assert!(public(bad).is_err(), "{bad}");
        }
        assert!(
            Config::from_toml(
                "[store]\nredis = \"rediss://u:p@redis.example:6380/\"\nkey_file = \"/k\"\n",
                "x"
            )
            .is_ok()
        );
        assert!(error("[store]\nredis = \"http://x/\"\n").contains("redis://"));
    }

    #[test]
    fn effective_config_round_trips() {
        let config = Config::from_toml(
            "[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = [\"192.0.2.7\"]\n[milter]\nsocket_mode = \"660\"\n",
            "x",
        )
        .unwrap();
        let text = toml::to_string(&config.effective()).unwrap();
        let again = Config::from_toml(&text, "again").unwrap();
        assert_eq!(again.effective(), config.effective());
        assert!(
            text.contains("[milter]") && text.contains("socket_mode = \"0660\""),
            "{text}"
        );
        assert!(text.contains("\"192.0.2.7/32\""), "{text}");
    }

    #[test]
    fn inbox_rules_and_socketmap() {
        let config = Config::from_toml(
            "[socketmap]\nlisten = \"inet:127.0.0.1:2525\"\n[inbox]\nhosts = [\"mx.test\"]\n[[inbox.rule]]\nrecipients = [\"did.*@mx.test\"]\nrequire = \"pass\"\n[[inbox.rule]]\nrecipients = [\"*@mx.test\"]\nallow = [\"*.example.com\"]\naction = \"junk\"\n",
            "x",
        )
        .unwrap();
        assert_eq!(config.inbox.rules.len(), 2);
        assert_eq!(config.inbox.rules[0].action, Action::Reject, "the default");
        assert_eq!(config.inbox.rules[1].require, Require::Any);
        assert_eq!(
            config.socketmap.timeout(),
            std::time::Duration::from_secs(2)
        );
        let text = toml::to_string(&config.effective()).unwrap();
        assert_eq!(
            Config::from_toml(&text, "again").unwrap().effective(),
            config.effective()
        );
        assert!(error("[[inbox.rule]]\nrecipients = []\n").contains("inbox.rule #1"));
        assert!(
            error("[[inbox.rule]]\nrecipients = [\"a\"]\nrequire = \"maybe\"\n").contains("line 3")
        );
    }

    #[test]
    fn networks_hold_mapped_addresses() {
        let nets: Vec<Network> = ["127.0.0.0/8", "::1/128", "192.0.2.7"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(in_networks("127.0.0.1".parse().unwrap(), &nets));
        assert!(in_networks("::ffff:127.0.0.1".parse().unwrap(), &nets));
        assert!(in_networks("192.0.2.7".parse().unwrap(), &nets));
        assert!(!in_networks("192.0.2.8".parse().unwrap(), &nets));
    }
}
