//! The configuration file (TOML): its model, defaults and validation. Keys and defaults are
//! fixed in docs/configuration.md (from the project's interfaces); every key is optional and
//! an unknown key is an error naming the key and its line.
//!
//! Values are parsed into their types when the file is read (sockets, networks, DNS servers,
//! URLs, modes, log settings), so a bad value is reported with its TOML line and the rest of
//! the program never parses a configuration string again. A leaf: it uses no other room.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use ipnet::IpNet;

/// Where the daemon looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/atsms-milter/atsms-milter.toml";

/// A value type read from a TOML string: `FromStr` gives the error text (toml adds the line),
/// `Display` writes it back for `check-config`.
macro_rules! string_value {
    ($type:ty) => {
        impl TryFrom<String> for $type {
            type Error = String;
            fn try_from(text: String) -> Result<Self, String> {
                text.parse()
            }
        }
        impl From<$type> for String {
            fn from(value: $type) -> String {
                value.to_string()
            }
        }
    };
}

/// A listening socket in Postfix's notation: `inet:HOST:PORT`, `inet:[IPv6]:PORT`,
/// `inet6:[IPv6]:PORT`, `unix:/path`, and libmilter's `inet:PORT@HOST` too.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum SocketSpec {
    Inet { host: String, port: u16 },
    Unix(PathBuf),
}

impl std::str::FromStr for SocketSpec {
    type Err = String;
    fn from_str(spec: &str) -> Result<SocketSpec, String> {
        let bad = || format!("\"{spec}\" is not inet:HOST:PORT, inet6:[HOST]:PORT or unix:/path");
        if let Some(path) = spec
            .strip_prefix("unix:")
            .or_else(|| spec.strip_prefix("local:"))
        {
            if !path.starts_with('/') {
                return Err(format!("\"{spec}\": the socket path must be absolute"));
            }
            return Ok(SocketSpec::Unix(PathBuf::from(path)));
        }
        let rest = spec
            .strip_prefix("inet:")
            .or_else(|| spec.strip_prefix("inet6:"))
            .ok_or_else(bad)?;
        let (host, port) = if let Some((port, host)) = rest.split_once('@') {
            (host, port)
        } else if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, port) = bracketed.split_once("]:").ok_or_else(bad)?;
            (host, port)
        } else {
            rest.rsplit_once(':').ok_or_else(bad)?
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(SocketSpec::Inet {
            host: host.to_string(),
            port,
        })
    }
}

impl SocketSpec {
    pub fn parse(spec: &str) -> Result<SocketSpec, String> {
        spec.parse()
    }
}

impl fmt::Display for SocketSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocketSpec::Unix(path) => write!(f, "unix:{}", path.display()),
            SocketSpec::Inet { host, port } if host.contains(':') => {
                write!(f, "inet:[{host}]:{port}")
            }
            SocketSpec::Inet { host, port } => write!(f, "inet:{host}:{port}"),
        }
    }
}
string_value!(SocketSpec);

/// Octal permissions such as `"0660"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Mode(pub u32);

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(mode: &str) -> Result<Mode, String> {
        u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(Mode)
            .ok_or_else(|| format!("\"{mode}\" is not an octal mode"))
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}
string_value!(Mode);

/// A network in CIDR notation; a bare address is a host route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Network(pub IpNet);

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(text: &str) -> Result<Network, String> {
        text.parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
            .map(Network)
            .map_err(|_| format!("\"{text}\" is not a network (CIDR) or address"))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
string_value!(Network);

impl Network {
    /// Whether `ip` is inside (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.contains(&ip)
    }
}

/// Whether `ip` is inside one of `networks`.
pub fn in_networks(ip: IpAddr, networks: &[Network]) -> bool {
    networks.iter().any(|n| n.contains(ip))
}

/// A DNS server: `"IP:PORT"`, `"[IPv6]:PORT"` or `"IP"` (port 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsServer(pub SocketAddr);

impl std::str::FromStr for DnsServer {
    type Err = String;
    fn from_str(server: &str) -> Result<DnsServer, String> {
        if let Ok(addr) = server.parse::<SocketAddr>() {
            return Ok(DnsServer(addr));
        }
        server
            .parse::<IpAddr>()
            .map(|ip| DnsServer(SocketAddr::new(ip, 53)))
            .map_err(|_| format!("\"{server}\" is not IP or IP:PORT"))
    }
}

impl fmt::Display for DnsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
string_value!(DnsServer);

/// A plain `HOST:PORT` TCP address (an IP address and a port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct TcpAddress(pub SocketAddr);

impl std::str::FromStr for TcpAddress {
    type Err = String;
    fn from_str(text: &str) -> Result<TcpAddress, String> {
        text.parse()
            .map(TcpAddress)
            .map_err(|_| format!("\"{text}\" is not HOST:PORT (an IP address and port)"))
    }
}

impl fmt::Display for TcpAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
string_value!(TcpAddress);

/// An `http(s)://` URL with a host (a PLC directory), kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HttpUrl(String);

impl std::str::FromStr for HttpUrl {
    type Err = String;
    fn from_str(text: &str) -> Result<HttpUrl, String> {
        let parsed = url::Url::parse(text).map_err(|e| format!("\"{text}\": {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(format!("\"{text}\" is not an http(s) URL"));
        }
        Ok(HttpUrl(text.to_string()))
    }
}

impl HttpUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_value!(HttpUrl);

/// An RFC 8601 authserv-id as we write it: an RFC 2045 token (a host name, say).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct AuthservId(String);

impl std::str::FromStr for AuthservId {
    type Err = String;
    fn from_str(text: &str) -> Result<AuthservId, String> {
        let token = !text.is_empty()
            && text.len() <= 255
            && text
                .chars()
                .all(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c));
        if token {
            Ok(AuthservId(text.to_string()))
        } else {
            Err(format!(
                "\"{}\" is not a valid authserv-id (a host name: letters, digits, dots, hyphens)",
                text.escape_default()
            ))
        }
    }
}

impl AuthservId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AuthservId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_value!(AuthservId);

/// A fraction from 0 to 1 (`resolver.mail_share`); TOML may write it `1` or `0.8`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ShareValue", into = "f64")]
pub struct Share(f64);

#[derive(Deserialize)]
#[serde(untagged)]
enum ShareValue {
    Integer(i64),
    Float(f64),
}

impl TryFrom<ShareValue> for Share {
    type Error = String;

    fn try_from(value: ShareValue) -> Result<Share, String> {
        let value = match value {
            ShareValue::Integer(i) => i as f64,
            ShareValue::Float(f) => f,
        };
        if (0.0..=1.0).contains(&value) {
            Ok(Share(value))
        } else {
            Err(format!("{value} is not a share from 0 to 1"))
        }
    }
}

impl From<Share> for f64 {
    fn from(share: Share) -> f64 {
        share.0
    }
}

impl Share {
    pub fn get(self) -> f64 {
        self.0
    }
}

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
    pub inbox: InboxConfig,
    pub signing: SigningConfig,
    pub xrpc: XrpcConfig,
    pub exim: EximConfig,
    pub reputation: ReputationConfig,
    pub store: StoreConfig,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MilterConfig {
    pub listen: SocketSpec,
    /// Permissions of a `unix:` socket.
    pub socket_mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    pub max_connections: NonZeroUsize,
}

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            listen: SocketSpec::Inet {
                host: "127.0.0.1".into(),
                port: 8898,
            },
            socket_mode: Mode(0o660),
            socket_group: None,
            max_connections: NonZeroUsize::new(1000).expect("non-zero"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LmtpConfig {
    /// Unset: only `serve --stdio` speaks LMTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketSpec>,
    pub socket_mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// `%u` address, `%n` local part, `%d` domain.
    pub maildir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<String>,
    pub recipient_delimiter: String,
    pub max_message_size: u64,
    /// Seconds per read.
    pub idle_timeout: NonZeroU64,
    /// Seconds for one whole DATA or BDAT transfer.
    pub data_timeout: NonZeroU64,
}

impl Default for LmtpConfig {
    fn default() -> Self {
        LmtpConfig {
            listen: None,
            socket_mode: Mode(0o660),
            socket_group: None,
            maildir: "/var/mail/%d/%n/Maildir".into(),
            recipients: None,
            recipient_delimiter: "+".into(),
            max_message_size: 52_428_800,
            idle_timeout: NonZeroU64::new(300).expect("non-zero"),
            data_timeout: NonZeroU64::new(600).expect("non-zero"),
        }
    }
}

/// What to do with a message, by result (docs/configuration.md, "Actions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
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

    /// How strict an action is, for "the strictest action wins": accept < junk < quarantine
    /// < discard < tempfail < reject.
    pub fn strictness(self) -> u8 {
        match self {
            Action::Accept => 0,
            Action::Junk => 1,
            Action::Quarantine => 2,
            Action::Discard => 3,
            Action::Tempfail => 4,
            Action::Reject => 5,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Unset: this host's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authserv_id: Option<AuthservId>,
    pub on_pass: Action,
    pub on_fail: Action,
    pub on_permerror: Action,
    pub on_temperror: Action,
    pub on_policy: Action,
    pub on_none: Action,
    /// Applies when the message passes but no passing signature is aligned.
    pub on_unaligned: Action,
    /// Networks whose mail is not judged (milter).
    pub trusted_networks: Vec<Network>,
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
            trusted_networks: vec![
                "127.0.0.0/8".parse().expect("a network"),
                "::1/128".parse().expect("a network"),
            ],
            skip_authenticated: true,
            dry_run: false,
            replay: true,
        }
    }
}

impl PolicyConfig {
    /// The authserv-id of our Authentication-Results fields.
    pub fn authserv_id(&self) -> String {
        match &self.authserv_id {
            Some(id) => id.to_string(),
            None => host_name(),
        }
    }
}

/// Postfix lookup tables over the socketmap protocol (`routing`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SocketmapConfig {
    /// Unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketSpec>,
    pub socket_mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Seconds a lookup may take before the answer is `TEMP` (the fetch goes on).
    pub timeout: NonZeroU64,
    pub max_connections: NonZeroUsize,
}

impl Default for SocketmapConfig {
    fn default() -> Self {
        SocketmapConfig {
            listen: None,
            socket_mode: Mode(0o660),
            socket_group: None,
            timeout: NonZeroU64::new(2).expect("non-zero"),
            max_connections: NonZeroUsize::new(4096).expect("non-zero"),
        }
    }
}

impl SocketmapConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout.get())
    }
}

/// What an inbox rule requires of a message (`[[inbox.rule]] require`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Require {
    /// No requirement (an `allow` list may still apply).
    #[default]
    Any,
    /// A passing signature.
    Pass,
    /// A passing signature aligned with From.
    Aligned,
}

fn reject() -> Action {
    Action::Reject
}

/// One `[[inbox.rule]]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboxRuleConfig {
    /// Address patterns: `user@domain`, `*@domain`, `did.*@domain`.
    pub recipients: Vec<String>,
    #[serde(default)]
    pub require: Require,
    /// When present, only these senders: DIDs, handles, `*.domain` handle patterns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    /// For mail that does not meet the rule.
    #[serde(default = "reject")]
    pub action: Action,
}

/// DID-verified inboxes: the host names DID documents point at, and the inbox rules.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct InboxConfig {
    /// The names by which DID documents' `smtp://` endpoints point at this host. Unset: this
    /// host's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    #[serde(rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<InboxRuleConfig>,
}

impl InboxConfig {
    pub fn hosts(&self) -> Vec<String> {
        self.hosts.clone().unwrap_or_else(|| vec![host_name()])
    }
}

/// One `[[signing.key]]`: a signing identity.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SigningKeyConfig {
    /// From addresses this key signs for: `user@domain` or `*@domain`.
    #[serde(default)]
    pub senders: Vec<String>,
    /// The signing DID (`d=`).
    pub did: String,
    /// The full key id, `DID#fragment`; the DID document must list it.
    pub kid: String,
    /// PKCS#8 PEM, P-256 or secp256k1; refused if others may read it.
    pub key_file: PathBuf,
    /// SASL logins allowed to use this key (required): `["*"]` is any authenticated client
    /// or a client in `signing.networks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logins: Option<Vec<String>>,
}

/// What a signing failure does (`signing.on_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnSignError {
    /// `451 4.3.0`: the client tries again; mail is never silently unsigned.
    #[default]
    Tempfail,
    /// Pass the message on unsigned (logged).
    Accept,
}

/// Signing outbound mail (milter) and the signing service's keys.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    #[serde(rename = "key", skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<SigningKeyConfig>,
    /// Seconds a signature is valid (at most 604800).
    pub ttl: NonZeroU64,
    /// The token carries the envelope recipients (`rcpt`).
    pub rcpt_claim: bool,
    /// Clients whose mail is signed without SASL (not `policy.trusted_networks`: mail a local
    /// content filter re-injects must not be signed by accident).
    pub networks: Vec<Network>,
    pub on_error: OnSignError,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            keys: Vec::new(),
            ttl: NonZeroU64::new(86_400).expect("non-zero"),
            rcpt_claim: false,
            networks: Vec::new(),
            on_error: OnSignError::Tempfail,
        }
    }
}

/// The signing service (XRPC, the PDS-side signer).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct XrpcConfig {
    /// `inet:HOST:PORT`, plain HTTP (TLS by a reverse proxy). Unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketSpec>,
    /// The `aud` callers must name. Unset: `did:web:<host name>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_did: Option<String>,
    /// Requests served at once; more get 503 `NotEnoughResources`.
    pub max_concurrent: NonZeroUsize,
    /// Seconds a request may take, reading it included.
    pub timeout: NonZeroU64,
}

impl Default for XrpcConfig {
    fn default() -> Self {
        XrpcConfig {
            listen: None,
            service_did: None,
            max_concurrent: NonZeroUsize::new(64).expect("non-zero"),
            timeout: NonZeroU64::new(10).expect("non-zero"),
        }
    }
}

impl XrpcConfig {
    pub fn service_did(&self) -> String {
        self.service_did
            .clone()
            .unwrap_or_else(|| format!("did:web:{}", host_name().to_ascii_lowercase()))
    }
}

/// Exim at SMTP time: the scanner protocol of Exim's `spam` ACL condition (rspamd variant).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EximConfig {
    /// `inet:HOST:PORT` or `unix:/path`. Unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketSpec>,
    pub socket_mode: Mode,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket_group: Option<String>,
    /// Scans at once; more connections are closed at once (Exim defers those messages).
    pub max_connections: NonZeroUsize,
    /// Seconds Exim may stay silent while sending a request.
    pub timeout: NonZeroU64,
}

impl Default for EximConfig {
    fn default() -> Self {
        EximConfig {
            listen: None,
            socket_mode: Mode(0o660),
            socket_group: None,
            max_connections: NonZeroUsize::new(1000).expect("non-zero"),
            timeout: NonZeroU64::new(60).expect("non-zero"),
        }
    }
}

/// Sender reputation: rules on the identity of passing signatures (docs/reputation.md).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReputationConfig {
    /// DIDs, handles and `*.domain` handle patterns, one a line; reloaded on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<PathBuf>,
    /// The same; listed senders skip every rule below (never verification).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow: Option<PathBuf>,
    pub on_denied: Action,
    /// Labeler DIDs asked about each passing sender.
    pub labelers: Vec<String>,
    /// Label value → action (`accept` shows the label and does nothing else).
    pub label_actions: std::collections::BTreeMap<String, Action>,
    /// Seconds a labeler's answer is served before it is asked again (in the background).
    pub label_ttl: NonZeroU64,
    /// Seconds; a did:plc younger than this (first operation of its audit log) is young.
    pub min_did_age: u64,
    pub on_young: Action,
    /// When `min_did_age` > 0 and the identity's age cannot be learnt now (the directory
    /// down or its budget spent): never "not young" by default, or an outage — which anyone
    /// can cause by spending the budget — would let a new identity through.
    pub on_age_unknown: Action,
    /// Messages per DID per hour; 0 = off. Counted across hosts through `store.redis`.
    pub rate_limit: u64,
    pub on_rate_limited: Action,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        ReputationConfig {
            deny: None,
            allow: None,
            on_denied: Action::Reject,
            labelers: Vec::new(),
            label_actions: std::collections::BTreeMap::new(),
            label_ttl: NonZeroU64::new(300).expect("non-zero"),
            min_did_age: 0,
            on_young: Action::Accept,
            on_age_unknown: Action::Tempfail,
            rate_limit: 0,
            on_rate_limited: Action::Tempfail,
        }
    }
}

impl ReputationConfig {
    /// Whether any rule is configured (else nothing is looked up for reputation).
    pub fn is_active(&self) -> bool {
        self.deny.is_some()
            || self.allow.is_some()
            || !self.labelers.is_empty()
            || self.min_did_age > 0
            || self.rate_limit > 0
    }
}

/// Bounds on what a message may make us hold (a header section is kept in memory).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_header_bytes: u64,
    pub max_header_fields: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_header_bytes: 1_048_576,
            max_header_fields: 1000,
        }
    }
}

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

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unset: `DEFAULT_CONTROL_SOCKET`, and a daemon that cannot make it runs without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// The control socket's default path.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/atsms-milter/control.sock";

impl ControlConfig {
    pub fn path(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<TcpAddress>,
}

/// `log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// `log.destination`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogDestination {
    /// Standard error (journald picks it up under systemd).
    Stderr,
    /// The local syslog socket, facility mail.
    Syslog,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: LogLevel,
    pub destination: LogDestination,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
            destination: LogDestination::Stderr,
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
                    "signing.key #{} ({}): logins must name the SASL logins that may sign with                      it; logins = [\"*\"] lets every authenticated login sign every sender it                      lists",
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
                && let Err((_, why)) =
                    crate::senders::SenderList::from_entries(allow.iter().map(String::as_str))
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
        assert_eq!(config.socketmap.timeout(), Duration::from_secs(2));
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
