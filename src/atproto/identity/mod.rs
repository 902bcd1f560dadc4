//! Identity resolution: DIDs (did:plc, did:web), keys, device certificates and handles, each
//! cached in one place. Knows nothing of mail transports or policy.

pub mod budget;
pub mod cache;
pub mod device_cert;
pub mod did_doc;
pub mod error;
pub mod inbox;
mod keys;
mod names;
pub mod net;

use std::sync::Arc;
use std::time::Duration;

use crate::format::crypto::PublicKey;
use crate::format::envelope::Kid;
use crate::format::envelope::token::DEVICE_CERT_COLLECTION;
use crate::format::syntax::{self, DidMethod};
use crate::infra::config::{CacheConfig, ResolverConfig};
use cache::{Counters, Found, TimedCache};
pub use device_cert::{CertError, DeviceCertificate};
pub use did_doc::{DidDocument, DocumentError};
pub use error::{ErrorKind, IdentityError, Upstream};
use net::{FetchError, FetchErrorKind, Net};

/// A DID document and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedDid {
    pub document: DidDocument,
    /// The URL the document was fetched from.
    pub source: String,
}

impl cache::Weigh for ResolvedDid {
    fn weight(&self) -> usize {
        self.document.weight() + self.source.len()
    }
}

/// The key a `kid` names, with the document it came from.
#[derive(Debug, Clone)]
pub struct ResolvedKey {
    pub key: PublicKey,
    pub did: Arc<ResolvedDid>,
    /// Served from a cache entry past its maximum age (stale-if-error).
    pub stale: bool,
    /// The document came from the cache, not from a fetch made for this lookup: if the key
    /// fails, the DID may have rotated it since.
    pub cached: bool,
}

/// Why a key could not be had, and whether the document behind the answer was a cached one.
#[derive(Debug, Clone)]
pub struct KeyLookupError {
    pub error: IdentityError,
    pub cached_document: bool,
}

/// Cache statistics, per kind of entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheStats {
    pub documents: Counters,
    pub document_entries: u64,
    pub document_bytes: u64,
    pub certificates: Counters,
    pub certificate_entries: u64,
    pub handles: Counters,
    pub handle_entries: u64,
    pub mail_hosts: Counters,
    pub mail_host_entries: u64,
    /// Bytes held by every kind together, as `cache.max_bytes` counts them.
    pub bytes: u64,
}

impl CacheStats {
    /// The figures `[metrics]` shows.
    pub fn gauges(&self) -> Vec<crate::infra::metrics::CacheGauge> {
        [
            ("document", &self.documents, self.document_entries),
            ("certificate", &self.certificates, self.certificate_entries),
            ("handle", &self.handles, self.handle_entries),
            ("mail_host", &self.mail_hosts, self.mail_host_entries),
        ]
        .into_iter()
        .map(|(kind, c, entries)| crate::infra::metrics::CacheGauge {
            kind,
            hits: c.hits,
            misses: c.misses,
            stale: c.stale_served,
            entries,
        })
        .collect()
    }
}

/// How a handle was resolved to a DID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HandleSource {
    Dns,
    Https,
}

type Cached<T> = Result<Arc<T>, IdentityError>;

/// How long after a forced refresh (a signature failed with a cached key) another one for the
/// same DID is refused: forged mail must not be able to hammer the directory (spec section 6).
pub const ROTATION_CHECK_INTERVAL: Duration = Duration::from_secs(300);

/// Longest `/.well-known/atproto-did` answer read: one DID and a line end.
const MAX_HANDLE_BODY: usize = 2048;
/// Redirects followed for the handle's HTTPS method (atproto allows "a reasonable number";
/// DID documents get none, spec section 6).
const HANDLE_REDIRECTS: usize = 3;

/// A fetch error, in the terms of the upstream it came from.
pub(crate) fn fetch_error(upstream: Upstream, e: FetchError) -> IdentityError {
    tracing::debug!("{upstream}: {}", e.message);
    match e.kind {
        FetchErrorKind::NotFound => IdentityError::NotFound(upstream),
        FetchErrorKind::Refused => IdentityError::Refused(upstream),
        FetchErrorKind::TooLarge => IdentityError::TooLarge(upstream),
        FetchErrorKind::Transient => IdentityError::Unavailable(upstream),
    }
}

/// Decoded keys kept (the senders seen most recently, whose documents are cached too).
const PARSED_KEYS: u64 = 10_000;

/// Resolves and caches identities. One per process, shared by every connection.
pub struct IdentityResolver {
    net: Net,
    plc_urls: Vec<String>,
    max_document_size: usize,
    documents: TimedCache<ResolvedDid>,
    certificates: TimedCache<DeviceCertificate>,
    /// DIDs' AT-SMS inbox records and device certificates (`inbox`).
    inboxes: TimedCache<inbox::AtsmsInbox>,
    handles: TimedCache<(String, HandleSource)>,
    /// Domains' `_atsms-mail` TXT answers (spec section 9): `Ok` when the domain vouches.
    mail_hosts: TimedCache<()>,
    /// Keys decoded from documents, by their type and multibase text (`keys.rs`): at most
    /// `PARSED_KEYS`, about 150 bytes each.
    parsed_keys: moka::sync::Cache<String, PublicKey>,
    /// Recipients' devices' checked prekeys, by (DID, fingerprint, certificate), for
    /// `inbox::PREKEY_FRESH` (`device_prekeys`).
    prekeys: moka::sync::Cache<(String, String, Vec<u8>), crate::atproto::device::Prekey>,
    /// DIDs refreshed after a failure recently (ROTATION_CHECK_INTERVAL).
    rotation_checks: moka::sync::Cache<String, ()>,
    /// PLC directories that answered 429, and until when they asked us to stay away.
    plc_backoff: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Documents shared with the other instances of a fleet (Redis), if configured.
    shared: Option<Arc<crate::infra::store::SharedStore>>,
    /// `resolver.max_requests_per_second`, one budget per PLC directory.
    plc_budgets: std::collections::HashMap<String, budget::Budget>,
    /// How long a lookup may wait for its slot in a budget.
    lookup_wait: Duration,
    /// Background refreshes, queued and spread out under the budgets.
    refresher: Arc<budget::Refresher>,
    lifetimes: cache::Lifetimes,
}

impl IdentityResolver {
    pub fn new(resolver: &ResolverConfig, cache: &CacheConfig) -> Result<IdentityResolver, String> {
        let plc_urls: Vec<String> = resolver
            .plc_urls
            .iter()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .collect();
        Ok(IdentityResolver {
            net: Net::new(resolver)?,
            plc_budgets: plc_urls
                .iter()
                .map(|u| {
                    let budget = budget::Budget::new(
                        resolver.max_requests_per_second.get(),
                        resolver.mail_share.get(),
                    );
                    (u.clone(), budget)
                })
                .collect(),
            // Half the lookup's time for its slot, half for the request itself.
            lookup_wait: resolver.timeout() / 2,
            refresher: Arc::default(),
            plc_urls,
            max_document_size: resolver.max_document_size,
            // cache.max_bytes and max_entries, shared out: documents are most of it.
            documents: TimedCache::new(cache, 4, 8),
            certificates: TimedCache::new(cache, 1, 8),
            inboxes: TimedCache::new(cache, 1, 8),
            handles: TimedCache::new(cache, 1, 8),
            mail_hosts: TimedCache::new(cache, 1, 8),
            parsed_keys: moka::sync::Cache::new(PARSED_KEYS),
            prekeys: moka::sync::Cache::builder()
                .max_capacity(cache.max_entries)
                .time_to_live(inbox::PREKEY_FRESH)
                .build(),
            rotation_checks: moka::sync::Cache::builder()
                .max_capacity(cache.max_entries)
                .time_to_live(ROTATION_CHECK_INTERVAL)
                .build(),
            plc_backoff: std::sync::Mutex::new(std::collections::HashMap::new()),
            shared: None,
            lifetimes: cache::Lifetimes::from(cache),
        })
    }
    /// Shares fetched documents with the other instances through `store`.
    pub fn with_shared_store(
        mut self,
        store: Option<Arc<crate::infra::store::SharedStore>>,
    ) -> IdentityResolver {
        self.shared = store;
        self
    }

    /// A document: one another instance fetched recently (shared store; unless
    /// `network_only`), else the network, whose answer is then shared. Only the parsed
    /// document is kept: the document as served goes to the shared store and is dropped.
    async fn fetch_did_shared(&self, did: &str, network_only: bool) -> Cached<ResolvedDid> {
        if let Some(shared) = self.shared.as_ref().filter(|_| !network_only)
            && let Some(doc) = shared.document(did, self.lifetimes.fresh).await
            && let Ok(document) = DidDocument::parse(doc.body.as_bytes(), did)
        {
            return Ok(Arc::new(ResolvedDid {
                document,
                source: doc.source,
            }));
        }
        let (resolved, raw) = self.fetch_did(did).await?;
        if let Some(shared) = &self.shared {
            let keep = self.lifetimes.max_age + self.lifetimes.stale_if_error;
            shared.put_document(did, &resolved.source, &raw, keep).await;
        }
        Ok(resolved)
    }

    /// The HTTP clients and resolver (reputation asks labelers and the PLC audit log through
    /// them, under the same address rules and budgets).
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// The configured PLC directories, in order.
    pub fn plc_urls(&self) -> &[String] {
        &self.plc_urls
    }

    /// Waits for a slot in `plc`'s request budget (the PLC audit log of reputation's age rule
    /// is asked under it too).
    pub async fn plc_budget(&self, plc: &str) -> Result<(), budget::OverBudget> {
        match self.plc_budgets.get(plc) {
            Some(budget) => budget.acquire(self.lookup_wait).await,
            None => Ok(()),
        }
    }

    /// Background refreshes queued or running, and dropped for a full queue.
    pub fn refreshes(&self) -> (usize, u64) {
        (self.refresher.pending(), self.refresher.dropped())
    }

    /// The store shared with the other instances of a fleet, if configured.
    pub fn shared_store(&self) -> Option<Arc<crate::infra::store::SharedStore>> {
        self.shared.clone()
    }

    /// The DID document of `did`, from the cache when it may serve (cache.rs has the rules).
    /// Concurrent lookups of one DID are merged into one fetch.
    pub async fn resolve_did(
        self: &Arc<Self>,
        did: &str,
    ) -> Result<Found<ResolvedDid>, IdentityError> {
        self.cached(
            |r| &r.documents,
            did,
            |this, did| async move { this.fetch_did_shared(&did, false).await },
        )
        .await
    }

    /// The document of `did` for a DID mailbox's consent: as `resolve_did`, but a document
    /// past `max_age` (still kept for `stale_if_error`) is served while it is refreshed in
    /// the background (`TimedCache::get_stale_while_refreshing`), so a mailbox keeps its
    /// consent while a flood of lookups has spent the directory's budget. Never for a key.
    pub async fn resolve_did_for_consent(
        self: &Arc<Self>,
        did: &str,
    ) -> Result<Found<ResolvedDid>, IdentityError> {
        self.cached_with(
            |r| &r.documents,
            did,
            |this, did| async move { this.fetch_did_shared(&did, false).await },
            true,
        )
        .await
    }

    /// `key` from the cache `cache` picks, fetched with `fetch` when the lifetimes say so;
    /// an entry between `fresh` and `max_age` is served and refreshed in the background.
    async fn cached<T, F, Fut>(
        self: &Arc<Self>,
        cache: fn(&IdentityResolver) -> &TimedCache<T>,
        key: &str,
        fetch: F,
    ) -> Result<Found<T>, IdentityError>
    where
        T: cache::Weigh + Send + Sync + 'static,
        F: Fn(Arc<IdentityResolver>, String) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Cached<T>> + Send + 'static,
    {
        self.cached_with(cache, key, fetch, false).await
    }

    /// As `cached`; with `stale_ok`, an entry past `max_age` is served too while it is
    /// refreshed (consent only).
    async fn cached_with<T, F, Fut>(
        self: &Arc<Self>,
        cache: fn(&IdentityResolver) -> &TimedCache<T>,
        key: &str,
        fetch: F,
        stale_ok: bool,
    ) -> Result<Found<T>, IdentityError>
    where
        T: cache::Weigh + Send + Sync + 'static,
        F: Fn(Arc<IdentityResolver>, String) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Cached<T>> + Send + 'static,
    {
        let refresh = || {
            let (this, key, fetch) = (self.clone(), key.to_string(), fetch.clone());
            // One queue for every kind: the key names the cache too (its address).
            let queued = format!("{:p}:{key}", cache(self));
            self.refresher.submit(queued, async move {
                // Wait for the directory's budget to have room for a refresh before taking
                // the key's fetch lock: a lookup of the same key must not queue behind a
                // refresh that waits for the budget.
                if key.starts_with("did:plc:")
                    && let Some(budget) =
                        this.plc_urls.first().and_then(|p| this.plc_budgets.get(p))
                {
                    budget.refresh_free().await;
                }
                let again = || fetch(this.clone(), key.clone());
                let _ = cache(&this).fetch(&key, again, true).await;
            });
        };
        let fetch_now = || fetch(self.clone(), key.to_string());
        if stale_ok {
            cache(self)
                .get_stale_while_refreshing(key, fetch_now, refresh)
                .await
        } else {
            cache(self).get(key, fetch_now, refresh).await
        }
    }

    /// After a signature failed with a cached key (spec section 6: keys rotate): fetch the
    /// document again, at most once per DID per five minutes. `Ok(Some)`: a new document,
    /// different from the cached one; `Ok(None)`: nothing new (or checked recently, or the
    /// DID is gone); `Err`: the directory could not be asked or answer now (transient), so
    /// whether the key rotated is unknown — RFC 6376 §6.1.2 makes that a TEMPFAIL. A check
    /// that could not be made does not count against the five minutes.
    pub async fn refresh_after_failure(
        self: &Arc<Self>,
        did: &str,
    ) -> Result<Option<Arc<ResolvedDid>>, IdentityError> {
        if self.rotation_checks.contains_key(did) {
            return Ok(None);
        }
        self.rotation_checks.insert(did.to_string(), ());
        let before = self
            .documents
            .peek(did)
            .await
            .and_then(|e| e.value.clone().ok());
        let found = match self
            .documents
            .fetch(did, || self.fetch_did_shared(did, true), false)
            .await
        {
            Ok(found) => found,
            Err(e) if e.is_transient() => {
                self.rotation_checks.invalidate(did);
                return Err(e);
            }
            Err(_) => return Ok(None),
        };
        let changed = before.is_none_or(|b| b.document != found.value.document);
        Ok((changed && !found.cached).then_some(found.value))
    }

    /// Drops what is cached for `did`, here and in the fleet's store: its document, its
    /// device certificates and the handle its document claimed.
    pub async fn purge(&self, did: &str) -> bool {
        let handle = self.documents.peek(did).await.and_then(|entry| {
            let claimed = entry.value.as_ref().ok()?.document.handle_claim()?;
            Some(claimed.to_ascii_lowercase())
        });
        if let Some(shared) = &self.shared {
            shared.forget_identity(did, handle.as_deref()).await;
        }
        if let Some(handle) = &handle {
            self.handles.invalidate(handle).await;
        }
        let removed = self.documents.invalidate(did).await;
        self.rotation_checks.invalidate(did);
        self.certificates.invalidate_prefix(&format!("at://{did}/"));
        self.inboxes.invalidate(did).await;
        removed
    }

    pub async fn stats(&self) -> CacheStats {
        let document_bytes = self.documents.weighted_size().await;
        CacheStats {
            documents: self.documents.counters(),
            document_entries: self.documents.entry_count().await,
            document_bytes,
            certificates: self.certificates.counters(),
            certificate_entries: self.certificates.entry_count().await,
            handles: self.handles.counters(),
            handle_entries: self.handles.entry_count().await,
            mail_hosts: self.mail_hosts.counters(),
            mail_host_entries: self.mail_hosts.entry_count().await,
            bytes: document_bytes
                + self.certificates.weighted_size().await
                + self.inboxes.weighted_size().await
                + self.handles.weighted_size().await
                + self.mail_hosts.weighted_size().await,
        }
    }

    /// Fetches a document from the network: the parsed document, and the bytes as served.
    async fn fetch_did(&self, did: &str) -> Result<(Arc<ResolvedDid>, Vec<u8>), IdentityError> {
        let accept = "application/did+ld+json, application/json";
        match syntax::supported_did_method(did) {
            Some(DidMethod::Plc) => {
                // Directories in order; a definite "no such DID" needs every one to say so.
                let mut last = IdentityError::Unavailable(Upstream::Plc);
                let mut any_transient = false;
                let mut over_budget = false;
                for plc in &self.plc_urls {
                    // A directory that answered 429 is left alone for as long as it asked
                    // (RFC 6585 §4, Retry-After), but never longer than a transient error is
                    // remembered (`cache.error`): one 429 asking for an hour must not stop
                    // every lookup of an unknown did:plc for an hour. The next configured
                    // directory is asked meanwhile.
                    let backing_off = self
                        .plc_backoff
                        .lock()
                        .ok()
                        .and_then(|b| b.get(plc).copied())
                        .is_some_and(|until| std::time::Instant::now() < until);
                    if backing_off {
                        any_transient = true;
                        last = IdentityError::Unavailable(Upstream::Plc);
                        continue;
                    }
                    // The directory's request budget: a lookup waits for its slot (at most
                    // `resolver.timeout`), a background refresh for one nobody else wants.
                    if let Some(budget) = self.plc_budgets.get(plc)
                        && budget.acquire(self.lookup_wait).await.is_err()
                    {
                        tracing::debug!("{plc}: request budget spent; {did} not asked");
                        crate::infra::metrics::global().plc_over_budget();
                        over_budget = true;
                        continue;
                    }
                    let url = format!("{plc}/{did}");
                    match self
                        .net
                        .get(&url, Upstream::Plc, accept, self.max_document_size, 0)
                        .await
                    {
                        Ok(r) if (200..300).contains(&r.status) => {
                            return self.document(r.body, did, url);
                        }
                        Ok(r) if r.status == 404 || r.status == 410 => {
                            last = IdentityError::NotFound(Upstream::Plc);
                        }
                        Ok(r) => {
                            if r.status == 429 {
                                let wait = Duration::from_secs(r.retry_after.unwrap_or(60))
                                    .min(self.lifetimes.error);
                                if let Ok(mut backoff) = self.plc_backoff.lock() {
                                    backoff.insert(plc.clone(), std::time::Instant::now() + wait);
                                }
                            }
                            tracing::debug!("{plc}: HTTP {} for {did}", r.status);
                            any_transient = true;
                            last = IdentityError::Unavailable(Upstream::Plc);
                        }
                        // A document the directory did serve but that is too large is the DID's.
                        Err(e) if e.kind == FetchErrorKind::TooLarge => {
                            last = fetch_error(Upstream::Plc, e);
                        }
                        Err(e) => {
                            // The directory is the operator's own infrastructure: that it cannot
                            // be reached (even NXDOMAIN for its host, or a refused address) says
                            // nothing about the DID. Only its 404/410 is definite.
                            tracing::debug!("{plc}: {}", e.message);
                            any_transient = true;
                            last = IdentityError::Unavailable(Upstream::Plc);
                        }
                    }
                }
                // A directory not asked for the budget's sake leaves the answer open, and
                // open by this host's choice: not a reason to serve stale (`Busy`).
                if over_budget {
                    last = IdentityError::Busy(Upstream::Plc);
                } else if any_transient && !last.is_transient() {
                    last = IdentityError::Unavailable(Upstream::Plc);
                }
                Err(last)
            }
            Some(DidMethod::Web) => {
                let identifier = &did["did:web:".len()..];
                let Some((host, port)) = syntax::web_did_host(identifier) else {
                    return Err(IdentityError::UnsupportedDid);
                };
                let url = match port {
                    Some(port) if self.net.allow_private() => {
                        format!("http://{host}:{port}/.well-known/did.json")
                    }
                    Some(_) => return Err(IdentityError::WebPort),
                    None => format!("https://{host}/.well-known/did.json"),
                };
                let upstream = Upstream::DidWeb;
                match self
                    .net
                    .get(&url, upstream, accept, self.max_document_size, 0)
                    .await
                {
                    Ok(r) if (200..300).contains(&r.status) => self.document(r.body, did, url),
                    Ok(r) if r.status == 404 || r.status == 410 => {
                        Err(IdentityError::NotFound(upstream))
                    }
                    Ok(r) if (300..400).contains(&r.status) => Err(IdentityError::Redirected),
                    Ok(r) => {
                        tracing::debug!("{url}: HTTP {}", r.status);
                        Err(IdentityError::Unavailable(upstream))
                    }
                    Err(e) => Err(fetch_error(upstream, e)),
                }
            }
            None => Err(IdentityError::UnsupportedDid),
        }
    }

    fn document(
        &self,
        body: Vec<u8>,
        did: &str,
        source: String,
    ) -> Result<(Arc<ResolvedDid>, Vec<u8>), IdentityError> {
        let document = DidDocument::parse(&body, did)?;
        Ok((Arc::new(ResolvedDid { document, source }), body))
    }
}
