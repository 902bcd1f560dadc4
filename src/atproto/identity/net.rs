//! The network edge of identity resolution: an HTTP client and a DNS resolver that refuse to
//! be pointed at this host's own networks.
//!
//! DID documents (did:web), handles and PDS endpoints name hosts an attacker chooses. The
//! check is made on the addresses the name resolves to, in the resolver the HTTP client
//! connects through, so DNS cannot change the answer between check and connect.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig as DnsConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::error::Upstream;
use crate::infra::config::ResolverConfig;

/// How a fetch failed. `NotFound` and `Refused` are definite; the others may pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchErrorKind {
    /// NXDOMAIN, or no record of the type asked for.
    NotFound,
    /// The target is not allowed: non-public address, plain http, a port where none may be.
    Refused,
    /// The answer is larger than allowed.
    TooLarge,
    /// Timeouts, refused connections, TLS and protocol errors, SERVFAIL.
    Transient,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FetchError {
    pub kind: FetchErrorKind,
    pub message: String,
}

impl FetchError {
    fn new(kind: FetchErrorKind, message: impl Into<String>) -> FetchError {
        FetchError {
            kind,
            message: message.into(),
        }
    }
}

/// MX hosts of one domain vetted at most (RFC 5321 §5.1 sets no limit; Postfix tries five).
pub const MAX_EXCHANGES: usize = 10;

/// Whether an address is on the public Internet. Everything else (loopback, RFC 1918,
/// link-local including 169.254.169.254, CGNAT, documentation, multicast, reserved, and
/// IPv6 forms that embed such IPv4 addresses) is refused unless the operator allows it.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || a >= 240
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, shared address space
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24, IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19))) // 198.18.0.0/15, benchmarking
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they embed.
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0, 0, 0, 0] {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    if segments[0] == 0x2002 {
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    // Global unicast is 2000::/3; within it, documentation (2001:db8::/32 and, RFC 9637,
    // 3fff::/20) and Teredo 2001::/32 are not somewhere to fetch a DID document from.
    (segments[0] & 0xe000) == 0x2000
        && !(segments[0] == 0x2001 && (segments[1] == 0x0db8 || segments[1] == 0))
        && !(segments[0] == 0x3fff && segments[1] < 0x1000)
}

/// Marks a resolution refused by address policy, so the HTTP error can be told apart.
#[derive(Debug, thiserror::Error)]
#[error("{0} resolves only to non-public addresses")]
struct AddressRefused(String);

/// The resolver reqwest connects through: hickory, then the address policy. The client for
/// the operator's own URLs (PLC directories) has `allow_any`; the client for every URL a DID
/// document, handle or message chose has it only with `allow_private_addresses`.
struct GuardedResolver {
    dns: Arc<TokioResolver>,
    allow_any: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().trim_end_matches('.').to_ascii_lowercase();
        let dns = self.dns.clone();
        let allow_any = self.allow_any;
        Box::pin(async move {
            let ips: Vec<IpAddr> = if host == "localhost" {
                // RFC 6761 §6.3: localhost is loopback, never asked of DNS.
                vec![
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ]
            } else {
                dns.lookup_ip(format!("{host}.")).await?.iter().collect()
            };
            let allowed: Vec<SocketAddr> = ips
                .into_iter()
                .filter(|ip| allow_any || is_public(*ip))
                .map(|ip| SocketAddr::new(ip, 0))
                .collect();
            if allowed.is_empty() {
                return Err(
                    Box::new(AddressRefused(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// What is asked of a URL.
#[derive(Clone, Copy)]
enum Method<'a> {
    Get {
        accept: &'a str,
    },
    /// A JSON body (an envelope to an inbox).
    PostJson(&'a [u8]),
}

/// An HTTP answer whose body was read within the size limit.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After` in seconds (RFC 9110 §10.2.3), when given as a number.
    pub retry_after: Option<u64>,
}

/// The HTTP clients and DNS resolver every identity lookup goes through.
///
/// Who chose a URL decides the rules: only URLs built from a configured PLC directory
/// (`Upstream::Plc`) are the operator's, fetched over plain http if so configured and without
/// address checks (a site's own mirror may be private). Every other URL — did:web, PDS,
/// handle, labeler — is checked, even when its host happens to be a PLC directory's (a DID
/// document naming `http://<plc host>:<port>/` must not reach whatever listens there).
pub struct Net {
    operator: reqwest::Client,
    untrusted: reqwest::Client,
    dns: Arc<TokioResolver>,
    allow_private: bool,
    /// Fetches in flight per kind of upstream (`resolver.max_concurrent_fetches` each): a slow
    /// did:web host cannot take the permits did:plc lookups need.
    per_kind: HashMap<Upstream, Arc<tokio::sync::Semaphore>>,
    /// Fetches in flight per host (`resolver.max_concurrent_per_host`).
    per_host: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    per_host_limit: usize,
}

const USER_AGENT: &str = concat!("atsms-milter/", env!("CARGO_PKG_VERSION"));

impl Net {
    pub fn new(config: &ResolverConfig) -> Result<Net, String> {
        let dns = Arc::new(build_dns(config)?);
        let client = |allow_any: bool| {
            let resolver = GuardedResolver {
                dns: dns.clone(),
                allow_any,
            };
            reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .no_proxy()
                // Redirects are followed by hand, one checked hop at a time (`get`).
                .redirect(reqwest::redirect::Policy::none())
                .dns_resolver(Arc::new(resolver))
                .timeout(config.timeout())
                .connect_timeout(config.timeout())
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))
        };
        let limit = config.max_concurrent_fetches.get();
        let per_kind = [
            Upstream::Plc,
            Upstream::DidWeb,
            Upstream::Pds,
            Upstream::Handle,
            Upstream::MailHost,
            Upstream::Service,
            Upstream::Inbox,
        ]
        .into_iter()
        .map(|kind| (kind, Arc::new(tokio::sync::Semaphore::new(limit))))
        .collect();
        Ok(Net {
            operator: client(true)?,
            untrusted: client(config.allow_private_addresses)?,
            dns,
            allow_private: config.allow_private_addresses,
            per_kind,
            per_host: std::sync::Mutex::new(HashMap::new()),
            per_host_limit: config.max_concurrent_per_host.get(),
        })
    }

    /// Checks a URL before any connection: scheme, and an IP-literal host (which reqwest
    /// connects to without asking the resolver).
    fn check_url(&self, url: &Url, upstream: Upstream) -> Result<(), FetchError> {
        let refused = |why: String| Err(FetchError::new(FetchErrorKind::Refused, why));
        let operator = upstream == Upstream::Plc;
        match url.scheme() {
            "https" => {}
            "http" if operator || self.allow_private => {}
            scheme => return refused(format!("refusing {scheme}: URL {url}")),
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(v4)) => Some(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => Some(IpAddr::V6(v6)),
            Some(url::Host::Domain(_)) => None,
            None => return refused(format!("URL without a host: {url}")),
        };
        if let Some(ip) = ip
            && !operator
            && !self.allow_private
            && !is_public(ip)
        {
            return refused(format!("refusing non-public address {ip}"));
        }
        Ok(())
    }

    /// GET with a body limit, following at most `max_redirects` redirects, each checked as
    /// the first URL was.
    pub async fn get(
        &self,
        url: &str,
        upstream: Upstream,
        accept: &str,
        max_body: usize,
        max_redirects: usize,
    ) -> Result<HttpResponse, FetchError> {
        self.exchange(
            url,
            upstream,
            Method::Get { accept },
            Body::Whole(max_body),
            max_redirects,
        )
        .await
    }

    /// POST of a JSON body, the first `max_body` bytes of the answer read (a longer one is cut,
    /// not refused: what was posted was taken or not by the status); only a 307 or 308
    /// redirect is followed (RFC 9110 §15.4.8, §15.4.9: the method and body are kept), at most
    /// `max_redirects`, each checked as the first URL was.
    pub async fn post_json(
        &self,
        url: &str,
        upstream: Upstream,
        json: &[u8],
        max_body: usize,
        max_redirects: usize,
    ) -> Result<HttpResponse, FetchError> {
        self.exchange(
            url,
            upstream,
            Method::PostJson(json),
            Body::Prefix(max_body),
            max_redirects,
        )
        .await
    }

    /// GET the first `max` bytes of an answer (a PLC audit log's first entry): a longer body
    /// is cut there, not refused.
    pub async fn get_prefix(
        &self,
        url: &str,
        upstream: Upstream,
        accept: &str,
        max: usize,
    ) -> Result<HttpResponse, FetchError> {
        self.exchange(url, upstream, Method::Get { accept }, Body::Prefix(max), 0)
            .await
    }

    async fn exchange(
        &self,
        url: &str,
        upstream: Upstream,
        method: Method<'_>,
        body_limit: Body,
        max_redirects: usize,
    ) -> Result<HttpResponse, FetchError> {
        let mut url = Url::parse(url)
            .map_err(|e| FetchError::new(FetchErrorKind::Refused, format!("bad URL {url}: {e}")))?;
        let mut redirects = 0;
        let http = match upstream {
            Upstream::Plc => &self.operator,
            _ => &self.untrusted,
        };
        loop {
            self.check_url(&url, upstream)?;
            // Bounded concurrency: a flood of mail from many DIDs queues here instead of
            // opening thousands of connections, and no single host gets more than its share.
            let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
            let host_limit = {
                let mut per_host = self.per_host.lock().unwrap_or_else(|e| e.into_inner());
                if per_host.len() > 10_000 {
                    per_host.retain(|_, s| Arc::strong_count(s) > 1);
                }
                per_host
                    .entry(host)
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_host_limit)))
                    .clone()
            };
            let _host_permit = host_limit
                .acquire_owned()
                .await
                .map_err(|_| FetchError::new(FetchErrorKind::Transient, "shutting down"))?;
            let _permit = self.per_kind[&upstream]
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| FetchError::new(FetchErrorKind::Transient, "shutting down"))?;
            let sent = std::time::Instant::now();
            let request = match method {
                Method::Get { accept } => http
                    .get(url.clone())
                    .header(reqwest::header::ACCEPT, accept),
                Method::PostJson(json) => http
                    .post(url.clone())
                    .header(reqwest::header::ACCEPT, "application/json")
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(json.to_vec()),
            };
            let response = request.send().await;
            let response = match response {
                Ok(r) => {
                    let outcome = match r.status().as_u16() {
                        200..=299 => "ok",
                        404 | 410 => "not_found",
                        429 => "rate_limited",
                        500..=599 => "server_error",
                        _ => "other_status",
                    };
                    crate::infra::metrics::global().resolver_request(outcome, sent.elapsed());
                    r
                }
                Err(e) => {
                    let error = classify_http_error(&url, &e);
                    let outcome = match error.kind {
                        FetchErrorKind::Refused => "refused",
                        FetchErrorKind::NotFound => "nxdomain",
                        _ => "failed",
                    };
                    crate::infra::metrics::global().resolver_request(outcome, sent.elapsed());
                    return Err(error);
                }
            };
            let status = response.status();
            let follow = match method {
                Method::Get { .. } => status.is_redirection(),
                Method::PostJson(_) => matches!(status.as_u16(), 307 | 308),
            };
            if follow && redirects < max_redirects {
                let next = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok());
                if let Some(next) = next {
                    redirects += 1;
                    url = next;
                    continue;
                }
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            let body = read_limited(response, body_limit, &url).await?;
            return Ok(HttpResponse {
                status: status.as_u16(),
                body,
                retry_after,
            });
        }
    }

    /// TXT records of `name`, each record's strings joined (RFC 7208 §3.3 does the same).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, FetchError> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.dns.txt_lookup(fqdn).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    hickory_resolver::proto::rr::RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect::<String>(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Err(FetchError::new(
                FetchErrorKind::NotFound,
                format!("no TXT record at {name}"),
            )),
            Err(e) => Err(FetchError::new(
                FetchErrorKind::Transient,
                format!("DNS lookup of {name}: {e}"),
            )),
        }
    }

    pub fn allow_private(&self) -> bool {
        self.allow_private
    }

    /// The address mail for `domain` goes to by MX routing (RFC 5321 §5.1), under the
    /// address policy: its MX hosts in order of preference (at most [`MAX_EXCHANGES`]),
    /// every one vetted as [`Net::vetted_address`] vets a host — an MTA may fall back to
    /// any of them, so one refused refuses the domain — or, without MX records, the domain
    /// itself (the implicit MX). The most preferred host's first address is given, for the
    /// MTA to connect to and nothing else. `None`: refused (a private address anywhere, a
    /// null MX (RFC 7505), an MX host without an address, NXDOMAIN, too many hosts).
    pub async fn vetted_mail_exchange(&self, domain: &str) -> Result<Option<IpAddr>, FetchError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let mut hosts: Vec<(u16, String)> = match self.dns.mx_lookup(fqdn).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    hickory_resolver::proto::rr::RData::MX(mx) => Some((
                        mx.preference,
                        mx.exchange.to_ascii().trim_end_matches('.').to_string(),
                    )),
                    _ => None,
                })
                .collect(),
            Err(e) if e.is_nx_domain() => return Ok(None),
            Err(e) if e.is_no_records_found() => Vec::new(),
            Err(e) => {
                return Err(FetchError::new(
                    FetchErrorKind::Transient,
                    format!("DNS MX lookup of {domain}: {e}"),
                ));
            }
        };
        if hosts.is_empty() {
            return self.vetted_address(domain).await;
        }
        if hosts.len() > MAX_EXCHANGES || hosts.iter().any(|(_, host)| host.is_empty()) {
            return Ok(None);
        }
        hosts.sort();
        let mut first = None;
        for (_, host) in &hosts {
            match self.vetted_address(host).await? {
                Some(ip) => {
                    first.get_or_insert(ip);
                }
                None => return Ok(None),
            }
        }
        Ok(first)
    }

    /// The address mail for `host` may go to under the address policy: every address the
    /// host resolves to must be public (any of them could be picked), unless
    /// `allow_private_addresses`; the first of them is given, so that the MTA connects to
    /// the very address vetted here and a second lookup cannot rebind it. `None`: refused
    /// (a private address among them, NXDOMAIN, no address, `localhost` without
    /// `allow_private_addresses`).
    pub async fn vetted_address(&self, host: &str) -> Result<Option<IpAddr>, FetchError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok((self.allow_private || is_public(ip)).then_some(ip));
        }
        if host.eq_ignore_ascii_case("localhost") {
            // RFC 6761 §6.3: localhost is the loopback address, whatever DNS says.
            return Ok(self
                .allow_private
                .then_some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)));
        }
        match self
            .dns
            .lookup_ip(format!("{}.", host.trim_end_matches('.')))
            .await
        {
            Ok(lookup) => {
                let ips: Vec<IpAddr> = lookup.iter().collect();
                let allowed = self.allow_private || ips.iter().all(|ip| is_public(*ip));
                Ok(ips.first().copied().filter(|_| allowed))
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => Ok(None),
            Err(e) => Err(FetchError::new(
                FetchErrorKind::Transient,
                format!("DNS lookup of {host}: {e}"),
            )),
        }
    }
}

/// How much of an answer is read.
#[derive(Debug, Clone, Copy)]
enum Body {
    /// All of it, refused when larger.
    Whole(usize),
    /// At most this much of it; the rest is not read.
    Prefix(usize),
}

async fn read_limited(
    mut response: reqwest::Response,
    limit: Body,
    url: &Url,
) -> Result<Vec<u8>, FetchError> {
    let max_body = match limit {
        Body::Whole(max) => max,
        Body::Prefix(max) => {
            let mut body = Vec::new();
            while body.len() < max {
                match response
                    .chunk()
                    .await
                    .map_err(|e| classify_http_error(url, &e))?
                {
                    Some(chunk) => {
                        let take = chunk.len().min(max - body.len());
                        body.extend_from_slice(&chunk[..take]);
                    }
                    None => break,
                }
            }
            return Ok(body);
        }
    };
    let too_large = || {
        FetchError::new(
            FetchErrorKind::TooLarge,
            format!("{url}: answer larger than {max_body} bytes"),
        )
    };
    if response
        .content_length()
        .is_some_and(|len| len > max_body as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| classify_http_error(url, &e))?
    {
        if body.len() + chunk.len() > max_body {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn classify_http_error(url: &Url, error: &reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(refused) = e.downcast_ref::<AddressRefused>() {
            return FetchError::new(FetchErrorKind::Refused, refused.to_string());
        }
        if let Some(net) = e.downcast_ref::<hickory_resolver::net::NetError>()
            && (net.is_nx_domain() || net.is_no_records_found())
        {
            let host = url.host_str().unwrap_or_default();
            return FetchError::new(
                FetchErrorKind::NotFound,
                format!("{host} does not exist (NXDOMAIN)"),
            );
        }
        source = e.source();
    }
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    FetchError::new(
        FetchErrorKind::Transient,
        format!("{}: {what}", url.host_str().unwrap_or_default()),
    )
}

fn build_dns(config: &ResolverConfig) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = if config.dns_servers.is_empty() {
        TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system DNS configuration: {e}"))?
    } else {
        let mut servers = Vec::new();
        for server in &config.dns_servers {
            let addr = server.0;
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            ns.connections = vec![udp, tcp];
            servers.push(ns);
        }
        TokioResolver::builder_with_config(DnsConfig::from_name_servers(servers), provider)
    };
    let options = builder.options_mut();
    options.timeout = config.timeout().min(Duration::from_secs(2));
    options.attempts = 2;
    builder
        .build()
        .map_err(|e| format!("cannot build the DNS resolver: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_and_not() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "169.254.169.254",
            "192.168.0.1",
            "172.16.5.4",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fc00::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
            "2002:a00:1::",
            "2001:db8::1",
            "3fff::1",
            "3fff:fff::1",
            "ff02::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "3fff:1000::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
