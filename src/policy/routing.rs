//! Mail routed by DID documents (spec section 9): a DID's `#atsms_mail` service is both where
//! its owner receives mail and consent for a host to keep a mailbox for it. The answers of the
//! three Postfix lookup tables (`atsms_alias`, `atsms_transport`, `atsms_mailbox`), and the
//! consent check LMTP applies at RCPT, decided here; transports (`socketmap`, the LMTP server,
//! `atsms-milter route`) only translate. Shares the daemon's identity cache.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::atproto::identity::did_doc::{MailEndpoint, MailHost};
use crate::atproto::identity::{IdentityError, IdentityResolver, ResolvedDid};
use crate::format::address;
use crate::format::syntax;

/// The maps this room answers.
pub const ALIAS: &str = "atsms_alias";
pub const TRANSPORT: &str = "atsms_transport";
pub const MAILBOX: &str = "atsms_mailbox";

/// What `atsms_transport` says of a DID mail host the address policy refuses.
pub const REFUSED_HOST: &str = "DID mail host refused by this site's address policy";

/// How long the address a `mailto:` target was vetted at is kept for `atsms_transport`:
/// Postfix's `maximal_queue_lifetime`, the longest aliased mail may wait in the queue.
pub const PIN_LIFETIME: Duration = Duration::from_secs(5 * 86_400);
/// `mailto:` targets pinned at most (about 100 bytes each).
const MAX_PINS: u64 = 100_000;

/// One lookup's answer, as the socketmap protocol carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `OK <data>`; the data is never empty.
    Found(String),
    /// `NOTFOUND `.
    NotFound,
    /// `TEMP <reason>`: try again later (Postfix defers).
    Temporary(String),
    /// `PERM <reason>`: a configuration error (an unknown map).
    Permanent(String),
}

impl Answer {
    /// The label metrics count lookups by.
    pub fn label(&self) -> &'static str {
        match self {
            Answer::Found(_) => "ok",
            Answer::NotFound => "notfound",
            Answer::Temporary(_) => "temp",
            Answer::Permanent(_) => "perm",
        }
    }

    /// The reply as the socketmap protocol writes it (`NOTFOUND ` with its space).
    pub fn to_socketmap(&self) -> String {
        match self {
            Answer::Found(data) => format!("OK {data}"),
            Answer::NotFound => "NOTFOUND ".to_string(),
            Answer::Temporary(why) => format!("TEMP {why}"),
            Answer::Permanent(why) => format!("PERM {why}"),
        }
    }
}

/// A key read as a DID mailbox address: `did.<method>.<id>@domain` (or with `!`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DidAddress {
    pub did: String,
    /// The dotted, lower-case local part (the form mail is delivered to).
    pub local: String,
    /// The domain, lower-case A-label.
    pub domain: String,
}

impl DidAddress {
    /// Reads a table key (lower-cased first: Postfix passes keys as given). A did:web with a
    /// port, an address with a detail or quotes, or any other key is none.
    pub fn parse(key: &str) -> Option<DidAddress> {
        let key = key.to_ascii_lowercase();
        let (local, domain) = key.rsplit_once('@')?;
        let did = address::did_of_local_part(local)?;
        Some(DidAddress {
            local: address::local_part_of_did(&did),
            did,
            domain: syntax::ascii_domain(domain)?,
        })
    }

    pub fn at(&self, domain: &str) -> String {
        format!("{}@{domain}", self.local)
    }
}

/// Where the DID's document says mail for it goes, as far as routing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// No `#atsms_mail` service (or one this format cannot read).
    None,
    Mailto(String),
    /// `smtp://HOST[:PORT]` with a host name.
    Smtp {
        host: String,
        port: u16,
    },
    /// `smtp://` naming an IP literal: no mailbox address, no route of ours.
    SmtpIp,
}

impl Endpoint {
    fn of(document: &ResolvedDid) -> Endpoint {
        match document.document.mail_endpoint() {
            None => Endpoint::None,
            Some(MailEndpoint::Mailto(address)) => Endpoint::Mailto(address),
            Some(MailEndpoint::Smtp {
                host: MailHost::Name(host),
                port,
            }) => Endpoint::Smtp {
                host,
                port: port.unwrap_or(25),
            },
            Some(MailEndpoint::Smtp {
                host: MailHost::Ip(_),
                ..
            }) => Endpoint::SmtpIp,
        }
    }
}

/// Why a DID's endpoint could not be had.
enum Lookup {
    /// Definitely none: unknown or deactivated DID, no service.
    Nothing,
    /// For now: the directory or host could not answer in time.
    Later(String),
}

/// Answers the maps and the consent check.
#[derive(Clone)]
pub struct Router {
    identity: Arc<IdentityResolver>,
    /// `inbox.hosts`, A-labels: the names by which documents point at this host.
    hosts: Arc<Vec<String>>,
    /// This host's name (an MTA's own, whatever `inbox.hosts` says).
    host_name: Arc<String>,
    /// How long a lookup may take before the answer is `TEMP` (the fetch goes on).
    timeout: Duration,
    /// `inbox.atsms_records`: the DID's `at.atsms.inbox` record consents too.
    atsms_records: bool,
    /// `xrpc.public_url`: a record's `https:` endpoint naming this host's inbox consents.
    public_url: Option<Arc<str>>,
    /// `routing.alias_domains`, A-labels: the only domains `atsms_alias` rewrites.
    alias_domains: Arc<Vec<String>>,
    /// `mailto:` targets `atsms_alias` handed out → the address their domain's mail
    /// exchange was vetted at, which `atsms_transport` then answers (kept across reloads).
    pins: moka::sync::Cache<String, IpAddr>,
}

impl Router {
    pub fn new(identity: Arc<IdentityResolver>, hosts: &[String], timeout: Duration) -> Router {
        let hosts = hosts
            .iter()
            .filter_map(|h| syntax::ascii_domain(h))
            .collect();
        Router {
            identity,
            hosts: Arc::new(hosts),
            host_name: Arc::new(
                syntax::ascii_domain(&crate::infra::host::name()).unwrap_or_default(),
            ),
            timeout,
            atsms_records: true,
            public_url: None,
            alias_domains: Arc::default(),
            pins: moka::sync::Cache::builder()
                .max_capacity(MAX_PINS)
                .time_to_live(PIN_LIFETIME)
                .build(),
        }
    }

    /// The domains `atsms_alias` rewrites (`routing.alias_domains`, A-labels).
    pub fn with_alias_domains(mut self, domains: &[crate::infra::config::MailDomain]) -> Router {
        self.alias_domains = Arc::new(domains.iter().map(|d| d.as_str().to_string()).collect());
        self
    }

    /// Keeps the `mailto:` targets `previous` pinned (a reload must not let queued mail be
    /// routed by a second lookup).
    pub fn keeping_pins_of(mut self, previous: &Router) -> Router {
        self.pins = previous.pins.clone();
        self
    }

    /// Whether the DID's `at.atsms.inbox` record consents too (`inbox.atsms_records`).
    pub fn with_atsms_records(mut self, on: bool) -> Router {
        self.atsms_records = on;
        self
    }

    /// This host's HTTPS inbox (`xrpc.public_url`): an `at.atsms.inbox` record listing it for
    /// the DID consents as a `mailto:` endpoint naming the DID's mailbox here does.
    pub fn with_public_url(mut self, url: Option<&crate::infra::config::PublicUrl>) -> Router {
        self.public_url = url.map(|u| Arc::from(u.as_str()));
        self
    }

    /// How long a lookup may take before its answer is `TEMP` (`socketmap.timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether `host` is one of `inbox.hosts`.
    pub fn is_ours(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h == host)
    }

    /// Whether `domain` is one an MTA would not treat as its own: routable (not
    /// `localhost`, a single label or an address literal: `syntax::routable_domain`), not
    /// one of `inbox.hosts` nor this host's name.
    fn is_remote(&self, domain: &str) -> bool {
        syntax::routable_domain(domain)
            .is_some_and(|d| !self.is_ours(&d) && d != self.host_name.as_str())
    }

    /// The DID's endpoint. A cold lookup that has not finished within `timeout` answers
    /// "later" while the fetch goes on in the background and fills the cache: a slow answer
    /// would stall every client of Postfix's trivial-rewrite. The fetch takes the turn of
    /// the client that asked (`budget::carried`). For `consent`, a document past
    /// `cache.max_age` is answered while it is refreshed
    /// (`IdentityResolver::resolve_did_for_consent`): a mailbox keeps its consent while a
    /// flood of lookups has spent the directory's budget.
    async fn endpoint(&self, did: &str, consent: bool) -> Result<Endpoint, Lookup> {
        let identity = self.identity.clone();
        let owned = did.to_string();
        let fetch = tokio::spawn(crate::atproto::identity::budget::carried(async move {
            if consent {
                identity.resolve_did_for_consent(&owned).await
            } else {
                identity.resolve_did(&owned).await
            }
        }));
        match tokio::time::timeout(self.timeout, fetch).await {
            Ok(Ok(Ok(found))) => Ok(Endpoint::of(&found.value)),
            Ok(Ok(Err(e))) if e.is_transient() => Err(Lookup::Later(e.to_string())),
            Ok(Ok(Err(_))) => Err(Lookup::Nothing),
            Ok(Err(_)) => Err(Lookup::Later("lookup failed".into())),
            Err(_) => Err(Lookup::Later(IdentityError::TimedOut.to_string())),
        }
    }

    /// Answers `map` for `key`.
    pub async fn lookup(&self, map: &str, key: &str) -> Answer {
        match map {
            ALIAS => self.alias(key).await,
            TRANSPORT => self.transport(key).await,
            MAILBOX => self.mailbox(key).await,
            _ => Answer::Permanent("unknown map".into()),
        }
    }

    /// `atsms_alias` (virtual_alias_maps, sending side): a DID mailbox address at one of
    /// `routing.alias_domains` → where the document says its owner receives mail.
    ///
    /// Only those domains: aliasing runs after smtpd's relay check, so a domain the MTA
    /// keeps (its name, `$mydomain`, a virtual domain, `localhost`) would let an outside
    /// client's `RCPT TO:<did.plc.…@that.domain>` be forwarded to wherever a DID document
    /// points — an open relay — and this daemon cannot know every domain an MTA keeps
    /// (tables in SQL or LDAP, Exim's domain lists, several MTAs). Alias domains are ones the
    /// MTA does not keep, which its relay check refuses to every client that may not relay
    /// (docs/security.md). Never `localhost`, a single label, an address literal, one of
    /// `inbox.hosts` or this host's name, whatever the list says; never towards a host or a
    /// `mailto:` domain the address policy refuses.
    pub async fn alias(&self, key: &str) -> Answer {
        let Some(address) = DidAddress::parse(key) else {
            return Answer::NotFound;
        };
        if !self.alias_domains.contains(&address.domain) || !self.is_remote(&address.domain) {
            return Answer::NotFound;
        }
        let target = match self.endpoint(&address.did, false).await {
            // One plain mailbox at a routable domain (`syntax::plain_mailbox`), possibly
            // a user of this very host: never a list, a file, a pipe or `localhost`; its
            // domain's mail exchange vetted and pinned (`pin`).
            Ok(Endpoint::Mailto(target)) => match self.pin(&target).await {
                Ok(true) => target,
                Ok(false) => return Answer::NotFound,
                Err(why) => return Answer::Temporary(why),
            },
            // Its mailbox here: a DID that lives on this host, delivered locally.
            Ok(Endpoint::Smtp { host, .. }) if self.is_ours(&host) => address.at(&host),
            // Elsewhere: only a host the address policy lets mail go to (which refuses
            // `localhost` and private addresses unless `allow_private_addresses`).
            Ok(Endpoint::Smtp { host, .. }) => match self.vetted(&host).await {
                Ok(Some(_)) => address.at(&host),
                Ok(None) => return Answer::NotFound,
                Err(why) => return Answer::Temporary(why),
            },
            Ok(Endpoint::None | Endpoint::SmtpIp) | Err(Lookup::Nothing) => {
                return Answer::NotFound;
            }
            Err(Lookup::Later(why)) => return Answer::Temporary(why),
        };
        // The key itself: no rewrite (and no virtual-alias recursion).
        if target.eq_ignore_ascii_case(key) {
            Answer::NotFound
        } else {
            Answer::Found(target)
        }
    }

    /// Vets where mail for the `mailto:` address `target` would go, by its domain's MX
    /// records (`Net::vetted_mail_exchange`), and pins that address for `atsms_transport`,
    /// so the MTA connects to it and to nothing a second lookup could answer (a private
    /// address, DNS rebinding). `Ok(false)`: the address policy refuses it. A domain of this
    /// host, or an exchange at one of its own addresses, is local mail: nothing to pin (a
    /// pin would send it back to this host by SMTP).
    async fn pin(&self, target: &str) -> Result<bool, String> {
        let Some((_, domain)) = target.rsplit_once('@') else {
            return Ok(false);
        };
        if self.is_ours(domain) || domain == self.host_name.as_str() {
            return Ok(true);
        }
        let vetted =
            tokio::time::timeout(self.timeout, self.identity.vetted_mail_exchange(domain)).await;
        match vetted {
            Ok(Ok(Some(ip))) => {
                if !crate::infra::host::is_own_address(ip) {
                    self.pins.insert(target.to_ascii_lowercase(), ip);
                }
                Ok(true)
            }
            Ok(Ok(None)) => Ok(false),
            Ok(Err(e)) if e.is_transient() => Err(e.to_string()),
            Ok(Err(_)) => Ok(false),
            Err(_) => Err(IdentityError::TimedOut.to_string()),
        }
    }

    /// The address mail for `host` may go to under the address policy (bounded by the
    /// lookup timeout); `Err` with the reason when DNS cannot say now.
    async fn vetted(&self, host: &str) -> Result<Option<IpAddr>, String> {
        match tokio::time::timeout(self.timeout, self.identity.vetted_mail_address(host)).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) if e.is_transient() => Err(e.to_string()),
            Ok(Err(_)) => Ok(None),
            Err(_) => Err(IdentityError::TimedOut.to_string()),
        }
    }

    /// `atsms_transport` (transport_maps): `<did mailbox>@HOST` where the document's endpoint
    /// is `smtp://HOST[:PORT]` → `smtp:[<address>]:PORT`, the address vetted by the address
    /// policy (no MX lookup, and no second lookup by the MTA that could be answered
    /// otherwise). A host the policy refuses gets `error:5.7.1` — never `NOTFOUND`, which
    /// would let the MTA route the address by MX to that very host (SSRF by mail). Never a
    /// host of ours (local delivery). A `mailto:` target `atsms_alias` handed out in the
    /// last `PIN_LIFETIME` → `smtp:[<address>]:25`, the address its mail exchange was vetted
    /// at then.
    pub async fn transport(&self, key: &str) -> Answer {
        if let Some(ip) = self.pins.get(&key.to_ascii_lowercase()) {
            return Answer::Found(format!("smtp:[{ip}]:25"));
        }
        let Some(address) = DidAddress::parse(key) else {
            return Answer::NotFound;
        };
        let (host, port) = match self.endpoint(&address.did, false).await {
            Ok(Endpoint::Smtp { host, port }) => (host, port),
            Ok(_) | Err(Lookup::Nothing) => return Answer::NotFound,
            Err(Lookup::Later(why)) => return Answer::Temporary(why),
        };
        if host != address.domain || self.is_ours(&host) {
            return Answer::NotFound;
        }
        match self.vetted(&host).await {
            Ok(Some(ip)) => Answer::Found(format!("smtp:[{ip}]:{port}")),
            Ok(None) => Answer::Found(format!("error:5.7.1 {REFUSED_HOST}")),
            Err(why) => Answer::Temporary(why),
        }
    }

    /// `atsms_mailbox` (virtual_mailbox_maps, the consent check): this host keeps a mailbox
    /// for `<did mailbox>@DOMAIN` only while the document's `smtp://` endpoint names DOMAIN
    /// and DOMAIN is one of `inbox.hosts` → `DOMAIN/<did mailbox>/Maildir/`.
    pub async fn mailbox(&self, key: &str) -> Answer {
        let Some(address) = DidAddress::parse(key) else {
            return Answer::NotFound;
        };
        match self.consent(&address).await {
            Consent::Given => {
                Answer::Found(format!("{}/{}/Maildir/", address.domain, address.local))
            }
            Consent::Refused => Answer::NotFound,
            Consent::Unknown(why) => Answer::Temporary(why),
        }
    }

    /// Whether this host may keep a mailbox for `address`: the DID document's `smtp://`
    /// endpoint names its domain (spec section 9: presence equals consent), or — as the
    /// AT-SMS client consents — the DID's `at.atsms.inbox` record lists exactly that mailbox
    /// (`mailto:`) or this host's HTTPS inbox for the DID (`https:`, `xrpc.public_url`) and
    /// the DID publishes at least one device certificate (`inbox.atsms_records`).
    pub async fn consent(&self, address: &DidAddress) -> Consent {
        if !self.is_ours(&address.domain) {
            return Consent::Refused;
        }
        match self.endpoint(&address.did, true).await {
            Ok(Endpoint::Smtp { host, .. }) if host == address.domain => Consent::Given,
            Ok(_) if self.atsms_records => self.record_consent(address).await,
            Ok(_) | Err(Lookup::Nothing) => Consent::Refused,
            Err(Lookup::Later(why)) => Consent::Unknown(why),
        }
    }

    /// Consent by the DID's AT-SMS records, within `timeout` (the fetch goes on); records
    /// past `cache.max_age` answer while they are refreshed.
    async fn record_consent(&self, address: &DidAddress) -> Consent {
        let inbox = match self.atsms_inbox(&address.did).await {
            Ok(Some(inbox)) => inbox,
            Ok(None) => return Consent::Refused,
            Err(why) => return Consent::Unknown(why),
        };
        let named = inbox.names_mailbox(&address.did, &address.domain)
            || (self.public_url.as_deref())
                .is_some_and(|url| inbox.names_inbox_url(url, &address.did));
        if named && !inbox.devices.is_empty() {
            Consent::Given
        } else {
            Consent::Refused
        }
    }

    /// The DID's AT-SMS records (`at.atsms.inbox`, `at.atsms.x509`), within `timeout` (the
    /// fetch goes on, on a task of its own); records past `cache.max_age` answer while they are
    /// refreshed. `Ok(None)`: it has none (or they are not to be had); `Err`: not known now.
    async fn atsms_inbox(
        &self,
        did: &str,
    ) -> Result<Option<Arc<crate::atproto::identity::inbox::AtsmsInbox>>, String> {
        let identity = self.identity.clone();
        let did = did.to_string();
        let fetch = tokio::spawn(crate::atproto::identity::budget::carried(async move {
            identity.atsms_inbox_for_consent(&did).await
        }));
        match tokio::time::timeout(self.timeout, fetch).await {
            Ok(Ok(Ok(found))) => Ok(Some(found.value)),
            Ok(Ok(Err(e))) if e.is_transient() => Err(e.to_string()),
            Ok(Ok(Err(_))) => Ok(None),
            Ok(Err(_)) => Err("lookup failed".into()),
            Err(_) => Err(IdentityError::TimedOut.to_string()),
        }
    }
}

impl Router {
    /// The devices of `did` an envelope is kept for (`at.atsms.x509` certificates within
    /// their dates at `now`), within `timeout`; records past `cache.max_age` answer while they
    /// are refreshed. `Err` when they cannot be known now.
    pub async fn devices_of(&self, did: &str, now: i64) -> Result<Vec<String>, String> {
        Ok(self
            .atsms_inbox(did)
            .await?
            .map(|inbox| inbox.current_devices(now))
            .unwrap_or_default())
    }
}

impl Router {
    /// The consent of the recipient `mailbox`, when it is a DID mailbox at one of
    /// `inbox.hosts` (none otherwise: consent is this host's to check for its own mailboxes
    /// only); with the recipients of a CMS EnvelopedData the message carries, consent also
    /// needs the envelope to name a device certificate that DID publishes, and every entry
    /// naming that DID to be one (issuer CN = the DID, serial of a published certificate).
    pub async fn consent_of(
        &self,
        mailbox: &str,
        enveloped_to: Option<&[crate::verification::atsms_parts::Recipient]>,
    ) -> Option<Consent> {
        let address = DidAddress::parse(mailbox).filter(|a| self.is_ours(&a.domain))?;
        let consent = self.consent(&address).await;
        let (Consent::Given, Some(recipients)) = (&consent, enveloped_to) else {
            return Some(consent);
        };
        let for_this: Vec<&crate::verification::atsms_parts::Recipient> = recipients
            .iter()
            .filter(|r| r.issuer_cn.as_deref() == Some(address.did.as_str()))
            .collect();
        if for_this.is_empty() {
            return Some(Consent::Refused);
        }
        Some(match self.atsms_inbox(&address.did).await {
            Ok(Some(inbox)) => {
                let published = |r: &&crate::verification::atsms_parts::Recipient| {
                    inbox.device_by_serial(&r.serial).is_some()
                };
                if for_this.iter().all(published) {
                    Consent::Given
                } else {
                    Consent::Refused
                }
            }
            Ok(None) => Consent::Refused,
            Err(why) => Consent::Unknown(why),
        })
    }
}

/// The consent check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Consent {
    Given,
    Refused,
    /// The document could not be had in time.
    Unknown(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_as_did_mailboxes() {
        let a = DidAddress::parse("DID!PLC!ofurdhfyhjhgomvfygxergep@MX.Example.NET").unwrap();
        assert_eq!(a.did, "did:plc:ofurdhfyhjhgomvfygxergep");
        assert_eq!(a.local, "did.plc.ofurdhfyhjhgomvfygxergep");
        assert_eq!(a.domain, "mx.example.net");
        assert_eq!(
            a.at("mx.example.net"),
            "did.plc.ofurdhfyhjhgomvfygxergep@mx.example.net"
        );
        let web = DidAddress::parse("did.web.alice.example.com@mx.example.net").unwrap();
        assert_eq!(web.did, "did:web:alice.example.com");
        for key in [
            "*",
            "alice@example.com",
            "did.web.localhost%3a8080@mx.example.net",
            "did.plc.ofurdhfyhjhgomvfygxergep",
            "did.plc.ofurdhfyhjhgomvfygxergep+x@mx.example.net",
            "did.plc.short@mx.example.net",
        ] {
            assert_eq!(DidAddress::parse(key), None, "{key}");
        }
    }

    #[test]
    fn answers_as_the_protocol_writes_them() {
        assert_eq!(Answer::NotFound.to_socketmap(), "NOTFOUND ");
        assert_eq!(Answer::Found("x@y".into()).to_socketmap(), "OK x@y");
        assert_eq!(
            Answer::Temporary("later".into()).to_socketmap(),
            "TEMP later"
        );
        assert_eq!(
            Answer::Permanent("unknown map".into()).to_socketmap(),
            "PERM unknown map"
        );
    }
}
