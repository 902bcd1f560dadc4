//! The value types of the configuration, each parsed from its TOML string when the file is
//! read (`FromStr`: the error text, to which toml adds the line) and written back for
//! `check-config` (`Display`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::IpNet;

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

/// Octal permissions of a socket file, such as `"0660"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileMode(pub u32);

impl std::str::FromStr for FileMode {
    type Err = String;
    fn from_str(mode: &str) -> Result<FileMode, String> {
        u32::from_str_radix(mode, 8)
            .ok()
            .filter(|m| *m <= 0o7777)
            .map(FileMode)
            .ok_or_else(|| format!("\"{mode}\" is not an octal mode"))
    }
}

impl fmt::Display for FileMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}
string_value!(FileMode);

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

/// This XRPC listener's public base URL (`xrpc.public_url`): `https://host[:port]`, no path,
/// query or fragment; kept as `url` serializes it (host in lower case, no default port).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicUrl(String);

impl std::str::FromStr for PublicUrl {
    type Err = String;
    fn from_str(text: &str) -> Result<PublicUrl, String> {
        let parsed = url::Url::parse(text).map_err(|e| format!("\"{text}\": {e}"))?;
        let bare = parsed.path() == "/" && parsed.query().is_none() && parsed.fragment().is_none();
        if parsed.scheme() != "https" || parsed.host_str().is_none() || !bare {
            return Err(format!(
                "\"{text}\" is not a base URL https://host[:port] (no path, query or fragment)"
            ));
        }
        Ok(PublicUrl(parsed.as_str().trim_end_matches('/').to_string()))
    }
}

impl PublicUrl {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PublicUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_value!(PublicUrl);

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

/// A domain mail is routed to (`syntax::routable_domain`): two labels or more, not
/// `localhost` nor below it, not an address literal; kept as its lower-case A-label.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct MailDomain(String);

impl std::str::FromStr for MailDomain {
    type Err = String;
    fn from_str(text: &str) -> Result<MailDomain, String> {
        crate::format::syntax::routable_domain(text)
            .map(MailDomain)
            .ok_or_else(|| {
                format!(
                    "\"{}\" is not a domain mail is routed to (two labels or more, not \
                     localhost, not an address literal)",
                    text.escape_default()
                )
            })
    }
}

impl MailDomain {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MailDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_value!(MailDomain);

/// A fraction from 0 to 1 (`resolver.mail_share`); TOML may write it `1` or `0.8`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "ShareValue", into = "f64")]
pub struct Share(pub(super) f64);

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
