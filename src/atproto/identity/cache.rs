//! The identity cache: one place for every lifetime rule (docs/configuration.md, `[cache]`).
//!
//! - younger than `fresh`: served as is;
//! - younger than `max_age`: served, and refreshed in the background;
//! - older: refetched before use; if that fails transiently, served for up to
//!   `stale_if_error` past `max_age`, flagged stale (a mail host keeps verifying senders it
//!   knows while the directory is down, and never lets a forgery pass because of it);
//! - definite failures (404/410, NXDOMAIN) are remembered for `negative`, transient ones for
//!   `error`, so a dead directory or a stream of forged mail does not cause a fetch per message;
//! - concurrent lookups of one key are merged into one fetch;
//! - capacity is bounded by bytes (`cache.max_bytes`) and by entries (`cache.max_entries`):
//!   each entry weighs its bytes, but never less than `max_bytes / max_entries`, so one
//!   weighted bound holds both (many tiny entries meet the entry bound, a few huge documents
//!   the byte bound). Eviction is moka's (TinyLFU).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::Expiry;

use super::IdentityError;
use crate::infra::config::CacheConfig;

/// What a cached value weighs, in bytes (roughly: its heap data).
pub trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for () {
    fn weight(&self) -> usize {
        0
    }
}

impl<A: AsRef<str>, B> Weigh for (A, B) {
    fn weight(&self) -> usize {
        self.0.as_ref().len() + std::mem::size_of::<B>()
    }
}

/// Bytes an entry costs beyond its value: the key, the entry, moka's bookkeeping.
const ENTRY_OVERHEAD: usize = 160;

/// A cached outcome and when it was fetched.
pub struct Entry<T> {
    pub value: Result<Arc<T>, IdentityError>,
    pub fetched: Instant,
    /// When refetching a stale value last failed transiently (a good value is kept meanwhile).
    pub failed_refresh: Option<Instant>,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry {
            value: self.value.clone(),
            fetched: self.fetched,
            failed_refresh: self.failed_refresh,
        }
    }
}

/// What a lookup found.
pub struct Found<T> {
    pub value: Arc<T>,
    /// Past `max_age`, served because the refetch failed transiently.
    pub stale: bool,
    /// Came from the cache rather than a fetch made for this lookup.
    pub cached: bool,
}

/// The lifetimes, from `[cache]`.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    pub fresh: Duration,
    pub max_age: Duration,
    pub stale_if_error: Duration,
    pub negative: Duration,
    pub error: Duration,
}

impl From<&CacheConfig> for Lifetimes {
    fn from(c: &CacheConfig) -> Lifetimes {
        Lifetimes {
            fresh: Duration::from_secs(c.fresh),
            max_age: Duration::from_secs(c.max_age.max(c.fresh)),
            stale_if_error: Duration::from_secs(c.stale_if_error),
            negative: Duration::from_secs(c.negative),
            error: Duration::from_secs(c.error),
        }
    }
}

/// moka drops an entry once nothing may serve it any more.
struct EntryExpiry(Lifetimes);

impl<T> Expiry<String, Arc<Entry<T>>> for EntryExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        entry: &Arc<Entry<T>>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(self.0.keep(entry))
    }

    fn expire_after_update(
        &self,
        key: &String,
        entry: &Arc<Entry<T>>,
        now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, entry, now)
    }
}

impl Lifetimes {
    fn keep<T>(&self, entry: &Entry<T>) -> Duration {
        match &entry.value {
            Ok(_) => self.max_age + self.stale_if_error,
            Err(e) if e.is_transient() => self.error,
            Err(_) => self.negative,
        }
    }
}

/// Counters for `cache stats` and metrics.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Counters {
    pub hits: u64,
    pub misses: u64,
    pub stale_served: u64,
    pub refreshes: u64,
    pub fetches: u64,
}

pub struct TimedCache<T> {
    entries: moka::future::Cache<String, Arc<Entry<T>>>,
    lifetimes: Lifetimes,
    /// One lock per key being fetched: concurrent lookups wait for the one fetch.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    counters: Mutex<Counters>,
}

/// What to do with a cached entry.
enum Plan<T> {
    Serve(Found<T>),
    ServeAndRefresh(Found<T>),
    Fail(IdentityError),
    Fetch,
}

/// What to do with a cached entry at `now` (the rules at the top of this file).
fn plan<T>(l: &Lifetimes, entry: &Entry<T>, now: Instant) -> Plan<T> {
    let age = now.saturating_duration_since(entry.fetched);
    match &entry.value {
        Ok(value) if age < l.fresh => Plan::Serve(Found {
            value: value.clone(),
            stale: false,
            cached: true,
        }),
        Ok(value) if age < l.max_age => Plan::ServeAndRefresh(Found {
            value: value.clone(),
            stale: false,
            cached: true,
        }),
        Ok(value) => {
            let recently_failed = entry
                .failed_refresh
                .is_some_and(|t| now.saturating_duration_since(t) < l.error);
            if recently_failed && age < l.max_age + l.stale_if_error {
                Plan::Serve(Found {
                    value: value.clone(),
                    stale: true,
                    cached: true,
                })
            } else {
                Plan::Fetch
            }
        }
        Err(e) if e.is_transient() && age < l.error => Plan::Fail(e.clone()),
        Err(e) if !e.is_transient() && age < l.negative => Plan::Fail(e.clone()),
        Err(_) => Plan::Fetch,
    }
}

impl<T: Weigh + Send + Sync + 'static> TimedCache<T> {
    /// A cache taking `share_num / share_den` of `cache.max_bytes` and `max_entries`.
    pub fn new(config: &CacheConfig, share_num: u64, share_den: u64) -> TimedCache<T> {
        let lifetimes = Lifetimes::from(config);
        let capacity = config.max_bytes.saturating_mul(share_num) / share_den.max(1);
        let floor = (config.max_bytes / config.max_entries.max(1)).max(1);
        let floor = u32::try_from(floor).unwrap_or(u32::MAX);
        TimedCache {
            entries: moka::future::Cache::builder()
                .max_capacity(capacity)
                .weigher(move |key: &String, entry: &Arc<Entry<T>>| {
                    let value = entry.value.as_ref().map_or(64, |v| v.weight());
                    let bytes = key.len() + value + ENTRY_OVERHEAD;
                    u32::try_from(bytes).unwrap_or(u32::MAX).max(floor)
                })
                .expire_after(EntryExpiry(lifetimes))
                .support_invalidation_closures()
                .build(),
            lifetimes,
            fetching: Mutex::new(HashMap::new()),
            counters: Mutex::new(Counters::default()),
        }
    }

    fn count(&self, f: impl FnOnce(&mut Counters)) {
        if let Ok(mut c) = self.counters.lock() {
            f(&mut c);
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters.lock().map(|c| *c).unwrap_or_default()
    }

    /// Entries held now (pending inserts and evictions applied first: moka counts lazily).
    pub async fn entry_count(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.entry_count()
    }

    /// What the entries held weigh, in bytes (as the bound counts them).
    pub async fn weighted_size(&self) -> u64 {
        self.entries.run_pending_tasks().await;
        self.entries.weighted_size()
    }

    /// The value for `key`, fetching with `fetch` as the rules above say. `refresh` is run in
    /// the background for an entry between `fresh` and `max_age`.
    pub async fn get<F, Fut>(
        &self,
        key: &str,
        fetch: F,
        refresh: impl FnOnce(),
    ) -> Result<Found<T>, IdentityError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<T>, IdentityError>>,
    {
        if let Some(entry) = self.entries.get(key).await {
            match plan(&self.lifetimes, &entry, Instant::now()) {
                Plan::Serve(found) => {
                    self.count(|c| {
                        c.hits += 1;
                        c.stale_served += found.stale as u64;
                    });
                    return Ok(found);
                }
                Plan::ServeAndRefresh(found) => {
                    self.count(|c| c.hits += 1);
                    refresh();
                    return Ok(found);
                }
                Plan::Fail(e) => {
                    self.count(|c| c.hits += 1);
                    return Err(e);
                }
                Plan::Fetch => {}
            }
        }
        self.count(|c| c.misses += 1);
        // A miss goes to the network: its future (HTTP, DNS, the fetch lock) is boxed, so the
        // hit above, the path of nearly every message, carries a pointer to it instead of the
        // whole state and every future awaiting this one stays small (docs/performance.md).
        Box::pin(self.fetch(key, fetch, false)).await
    }

    /// As `get`, for a use that may take a value past `max_age` (a DID mailbox's consent,
    /// never a key): an entry past `max_age` is refetched if the directory's budget has a
    /// slot free now; if it has none (a flood of lookups spent it), the value still kept
    /// (`max_age` + `stale_if_error`) is served, flagged stale, and refreshed in the
    /// background — RFC 5861's stale-while-revalidate, only while it is needed.
    pub async fn get_stale_while_refreshing<F, Fut>(
        &self,
        key: &str,
        fetch: F,
        refresh: impl FnOnce(),
    ) -> Result<Found<T>, IdentityError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<T>, IdentityError>>,
    {
        let kept = self.entries.get(key).await.and_then(|entry| {
            let age = entry.fetched.elapsed();
            let keep = self.lifetimes.max_age + self.lifetimes.stale_if_error;
            let value = entry.value.as_ref().ok()?;
            (age >= self.lifetimes.max_age && age < keep).then(|| value.clone())
        });
        let Some(value) = kept else {
            return self.get(key, fetch, refresh).await;
        };
        let without_waiting = super::budget::without_waiting(self.get(key, fetch, || {}));
        match without_waiting.await {
            Err(IdentityError::Busy(_)) => {
                self.count(|c| c.stale_served += 1);
                refresh();
                Ok(Found {
                    value,
                    stale: true,
                    cached: true,
                })
            }
            other => other,
        }
    }

    /// Fetches `key` now (merged with a fetch already running), updating the entry. A
    /// transient failure keeps a good value that may still serve stale. With
    /// `only_if_not_fresh` (background refreshes) nothing is fetched if the entry is fresh.
    pub async fn fetch<F, Fut>(
        &self,
        key: &str,
        fetch: F,
        only_if_not_fresh: bool,
    ) -> Result<Found<T>, IdentityError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Arc<T>, IdentityError>>,
    {
        let lock = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            fetching.entry(key.to_string()).or_default().clone()
        };
        let requested = Instant::now();
        let guard = lock.lock().await;
        let previous = self.entries.get(key).await;
        if let Some(entry) = &previous {
            // A fetch finished while we waited for the lock: that is our answer too. A
            // background refresh is moot if the entry became fresh meanwhile.
            let fetched_meanwhile = entry.fetched >= requested;
            let still_fresh = only_if_not_fresh
                && entry.value.is_ok()
                && entry.fetched.elapsed() < self.lifetimes.fresh;
            if fetched_meanwhile || still_fresh {
                let result = match &entry.value {
                    Ok(value) => Ok(Found {
                        value: value.clone(),
                        stale: false,
                        cached: true,
                    }),
                    Err(e) => Err(e.clone()),
                };
                drop(guard);
                self.release(key, &lock);
                return result;
            }
        }
        self.count(|c| {
            c.fetches += 1;
            c.refreshes += only_if_not_fresh as u64;
        });
        let result = fetch().await;
        let now = Instant::now();
        let outcome = match result {
            // Nothing was asked, so nothing was learned: the entry stays as it was (a stale
            // one is not served for it) and nothing is remembered for the next lookup.
            Err(e @ IdentityError::Busy(_)) => Err(e),
            Ok(value) => {
                self.entries
                    .insert(
                        key.to_string(),
                        Arc::new(Entry {
                            value: Ok(value.clone()),
                            fetched: now,
                            failed_refresh: None,
                        }),
                    )
                    .await;
                Ok(Found {
                    value,
                    stale: false,
                    cached: false,
                })
            }
            Err(e) => {
                let keep_stale = e.is_transient()
                    && previous.as_ref().is_some_and(|p| {
                        p.value.is_ok()
                            && now.saturating_duration_since(p.fetched)
                                < self.lifetimes.max_age + self.lifetimes.stale_if_error
                    });
                if let (true, Some(previous)) = (keep_stale, previous) {
                    let mut kept = (*previous).clone();
                    kept.failed_refresh = Some(now);
                    let value = kept.value.clone().expect("checked is_ok");
                    let stale =
                        now.saturating_duration_since(kept.fetched) >= self.lifetimes.max_age;
                    self.entries.insert(key.to_string(), Arc::new(kept)).await;
                    self.count(|c| c.stale_served += stale as u64);
                    Ok(Found {
                        value,
                        stale,
                        cached: true,
                    })
                } else {
                    self.entries
                        .insert(
                            key.to_string(),
                            Arc::new(Entry {
                                value: Err(e.clone()),
                                fetched: now,
                                failed_refresh: None,
                            }),
                        )
                        .await;
                    Err(e)
                }
            }
        };
        drop(guard);
        self.release(key, &lock);
        outcome
    }

    fn release(&self, key: &str, lock: &Arc<tokio::sync::Mutex<()>>) {
        let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        // Two references: the map's and ours. Nobody else waits: the key can go.
        if Arc::strong_count(lock) <= 2 {
            fetching.remove(key);
        }
    }

    /// What the cache holds for `key`, if anything.
    pub async fn peek(&self, key: &str) -> Option<Arc<Entry<T>>> {
        self.entries.get(key).await
    }

    pub async fn invalidate(&self, key: &str) -> bool {
        self.entries.remove(key).await.is_some()
    }

    /// Drops every entry whose key starts with `prefix`.
    pub fn invalidate_prefix(&self, prefix: &str) {
        let prefix = prefix.to_string();
        let _ = self
            .entries
            .invalidate_entries_if(move |key, _| key.starts_with(&prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::atproto::identity::{IdentityError, Upstream};

    const LIFETIMES: Lifetimes = Lifetimes {
        fresh: Duration::from_secs(100),
        max_age: Duration::from_secs(1000),
        stale_if_error: Duration::from_secs(5000),
        negative: Duration::from_secs(60),
        error: Duration::from_secs(10),
    };

    fn entry(value: Result<(), IdentityError>, fetched: Instant) -> Entry<()> {
        Entry {
            value: value.map(Arc::new),
            fetched,
            failed_refresh: None,
        }
    }

    fn what<T>(p: Plan<T>) -> &'static str {
        match p {
            Plan::Serve(f) if f.stale => "serve stale",
            Plan::Serve(_) => "serve",
            Plan::ServeAndRefresh(_) => "serve and refresh",
            Plan::Fail(_) => "fail",
            Plan::Fetch => "fetch",
        }
    }

    #[test]
    fn a_good_entry_ages_through_every_stage() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let good = entry(Ok(()), t0);
        assert_eq!(what(plan(&LIFETIMES, &good, at(0))), "serve");
        assert_eq!(what(plan(&LIFETIMES, &good, at(99))), "serve");
        assert_eq!(what(plan(&LIFETIMES, &good, at(100))), "serve and refresh");
        assert_eq!(what(plan(&LIFETIMES, &good, at(999))), "serve and refresh");
        assert_eq!(what(plan(&LIFETIMES, &good, at(1000))), "fetch");
        // Past max_age, a refetch that just failed transiently lets it serve, flagged stale,
        // until stale_if_error runs out.
        let mut failing = entry(Ok(()), t0);
        failing.failed_refresh = Some(at(2000));
        assert_eq!(what(plan(&LIFETIMES, &failing, at(2005))), "serve stale");
        assert_eq!(
            what(plan(&LIFETIMES, &failing, at(2010))),
            "fetch",
            "error lifetime over"
        );
        failing.failed_refresh = Some(at(5999));
        assert_eq!(
            what(plan(&LIFETIMES, &failing, at(6000))),
            "fetch",
            "too old to serve"
        );
    }

    #[test]
    fn failures_are_remembered_for_their_own_lifetimes() {
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let gone = entry(Err(IdentityError::NotFound(Upstream::Plc)), t0);
        assert_eq!(what(plan(&LIFETIMES, &gone, at(59))), "fail");
        assert_eq!(what(plan(&LIFETIMES, &gone, at(60))), "fetch");
        let down = entry(Err(IdentityError::Unavailable(Upstream::Plc)), t0);
        assert_eq!(what(plan(&LIFETIMES, &down, at(9))), "fail");
        assert_eq!(what(plan(&LIFETIMES, &down, at(10))), "fetch");
    }

    struct Blob(usize);
    impl Weigh for Blob {
        fn weight(&self) -> usize {
            self.0
        }
    }

    #[tokio::test]
    async fn the_bound_is_bytes_and_entries() {
        let config = CacheConfig {
            max_bytes: 100_000,
            max_entries: 100,
            ..CacheConfig::default()
        };
        let cache: TimedCache<Blob> = TimedCache::new(&config, 1, 1);
        let fill = |size: usize| {
            let cache = &cache;
            async move {
                for i in 0..1000 {
                    let _ = cache
                        .get(
                            &format!("k{i}"),
                            || async { Ok(Arc::new(Blob(size))) },
                            || {},
                        )
                        .await;
                }
                (cache.entry_count().await, cache.weighted_size().await)
            }
        };
        // Small entries: the entry bound (each weighs at least 1000 bytes here).
        let (entries, bytes) = fill(10).await;
        assert!(entries <= 100, "{entries} entries");
        assert!(bytes <= 100_000, "{bytes} bytes");
        // Large entries: the byte bound.
        let cache2: TimedCache<Blob> = TimedCache::new(&config, 1, 1);
        for i in 0..100 {
            let _ = cache2
                .get(
                    &format!("k{i}"),
                    || async { Ok(Arc::new(Blob(20_000))) },
                    || {},
                )
                .await;
        }
        assert!(cache2.entry_count().await <= 5);
        assert!(cache2.weighted_size().await <= 100_000);
    }
}
