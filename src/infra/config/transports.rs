//! The sections of the ways in: `[milter]`, `[lmtp]`, `[socketmap]`, `[exim]`, `[xrpc]`,
//! `[control]`, `[metrics]` and `[log]`.

use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{FileMode, MailDomain, SocketSpec, TcpAddress};

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MilterConfig {
    pub listen: SocketSpec,
    /// Permissions of a `unix:` socket.
    pub socket_mode: FileMode,
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
            socket_mode: FileMode(0o660),
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
    pub socket_mode: FileMode,
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
            socket_mode: FileMode(0o660),
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

/// Postfix lookup tables over the socketmap protocol (`routing`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SocketmapConfig {
    /// Unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketSpec>,
    pub socket_mode: FileMode,
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
            socket_mode: FileMode(0o660),
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

/// Mail routed by DID documents, the sending side (`routing`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// The domains whose DID mailbox addresses `atsms_alias` rewrites by the DID's document
    /// (`did.plc.<id>@<one of these>`): domains this host's MTA does not keep, so that its
    /// relay check refuses them to every client that may not relay. Empty: nothing is
    /// aliased.
    pub alias_domains: Vec<MailDomain>,
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
    /// Serves `POST /inbox/{did}`: the endpoint the AT-SMS client posts envelopes to, stored
    /// as LMTP stores mail (needs `[lmtp]`).
    pub inbox: bool,
    /// Reverse proxies (networks) whose `X-Forwarded-For` names the client: the rightmost
    /// address in it that is not itself one of these. Empty: the peer is the client.
    pub trusted_proxies: Vec<super::Network>,
    /// This listener's public base URL: an `at.atsms.inbox` record's `https:` endpoint equal
    /// to it + `/inbox/<the DID, percent-encoded>` consents to mail here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<super::PublicUrl>,
}

impl Default for XrpcConfig {
    fn default() -> Self {
        XrpcConfig {
            listen: None,
            service_did: None,
            max_concurrent: NonZeroUsize::new(64).expect("non-zero"),
            timeout: NonZeroU64::new(10).expect("non-zero"),
            inbox: false,
            trusted_proxies: Vec::new(),
            public_url: None,
        }
    }
}

impl XrpcConfig {
    pub fn service_did(&self) -> String {
        self.service_did.clone().unwrap_or_else(|| {
            format!(
                "did:web:{}",
                crate::infra::host::name().to_ascii_lowercase()
            )
        })
    }
}

/// Exim at SMTP time: the scanner protocol of Exim's `spam` ACL condition (rspamd variant).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EximConfig {
    /// `inet:HOST:PORT` or `unix:/path`. Unset: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketSpec>,
    pub socket_mode: FileMode,
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
            socket_mode: FileMode(0o660),
            socket_group: None,
            max_connections: NonZeroUsize::new(1000).expect("non-zero"),
            timeout: NonZeroU64::new(60).expect("non-zero"),
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
