//! Prometheus metrics (`[metrics] listen = "127.0.0.1:9898"`): counters kept in one global
//! registry, served as text format 0.0.4 on `GET /metrics`.
//!
//! A leaf: the other rooms report into it; it imports none of them. What it cannot count
//! itself (the identity cache's sizes) is handed to `serve` as a source by the daemon.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds (seconds) of the resolver latency histogram.
const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Default)]
pub struct Metrics {
    /// (mode, result, action) → messages (per recipient for LMTP).
    messages: Mutex<BTreeMap<(&'static str, &'static str, &'static str), u64>>,
    /// outcome → outbound identity requests.
    resolver_requests: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    /// (status class) → LMTP delivery replies.
    lmtp_deliveries: Mutex<BTreeMap<&'static str, u64>>,
    milter_connections: AtomicI64,
    lmtp_connections: AtomicI64,
    /// (map, answer) → socketmap lookups.
    socketmap_lookups: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// (event, reason) → AT-SMS envelopes of the HTTPS inbox and its device copies.
    inbox_envelopes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// (status, try) → recipients of `sendMessage`, at the call and at later tries.
    send_recipients: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// (carrier, outcome) → envelopes the sender handed over, or tried to.
    send_envelopes: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Deliveries waiting in `send.queue`.
    send_queue: AtomicI64,
}

pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::default)
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    if let Ok(mut m) = map.lock() {
        *m.entry(key).or_default() += 1;
    }
}

/// Counts an open connection while alive.
pub struct ConnectionGuard(&'static AtomicI64);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    pub fn message(&self, mode: &'static str, result: &'static str, action: &'static str) {
        bump(&self.messages, (mode, result, action));
    }

    pub fn resolver_request(&self, outcome: &'static str, took: Duration) {
        bump(&self.resolver_requests, outcome);
        let secs = took.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// A PLC request not made: the directory's request budget had no slot in time.
    pub fn plc_over_budget(&self) {
        bump(&self.resolver_requests, "over_budget");
    }

    /// A socketmap lookup: the map and the answer (`ok`, `notfound`, `temp`, `perm`).
    pub fn socketmap_lookup(&self, map: &'static str, answer: &'static str) {
        bump(&self.socketmap_lookups, (map, answer));
    }

    /// An AT-SMS envelope event: `stored` (a device copy), `duplicate`, `drained` (a copy
    /// deleted by its device), `refused` (with its `reason`; "" for the others).
    pub fn inbox_envelope(&self, event: &'static str, reason: &'static str) {
        bump(&self.inbox_envelopes, (event, reason));
    }

    /// `status`: "saved", "rejected", "deferred", "failed".
    /// A recipient's status (`delivered`, `queued`, `failed`, `given_up`) at its `try`
    /// (`first`: the call; `retry`: the outbox).
    pub fn send_recipient(&self, status: &'static str, try_: &'static str) {
        bump(&self.send_recipients, (status, try_));
    }

    /// An envelope's hand-over by `carrier` (`post`, `mail`): `taken`, `refused`, `temporary`.
    pub fn send_envelope(&self, carrier: &'static str, outcome: &'static str) {
        bump(&self.send_envelopes, (carrier, outcome));
    }

    pub fn set_send_queue(&self, waiting: usize) {
        self.send_queue.store(
            i64::try_from(waiting).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn lmtp_delivery(&self, status: &'static str) {
        bump(&self.lmtp_deliveries, status);
    }

    pub fn milter_connection(&'static self) -> ConnectionGuard {
        self.milter_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(&self.milter_connections)
    }

    pub fn lmtp_connection(&'static self) -> ConnectionGuard {
        self.lmtp_connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard(&self.lmtp_connections)
    }

    /// The text exposition, with the identity cache's own counters.
    pub fn render(&self, cache: &[CacheGauge]) -> String {
        let mut out = String::new();
        out.push_str("# HELP atsms_messages_total Messages judged (LMTP: per recipient), by mode, result and action.\n# TYPE atsms_messages_total counter\n");
        for ((mode, result, action), n) in
            self.messages.lock().map(|m| m.clone()).unwrap_or_default()
        {
            out.push_str(&format!("atsms_messages_total{{mode=\"{mode}\",result=\"{result}\",action=\"{action}\"}} {n}\n"));
        }
        out.push_str("# HELP atsms_resolver_requests_total Outbound identity requests (HTTP), by outcome.\n# TYPE atsms_resolver_requests_total counter\n");
        for (outcome, n) in self
            .resolver_requests
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
        {
            out.push_str(&format!(
                "atsms_resolver_requests_total{{outcome=\"{outcome}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP atsms_resolver_request_seconds Latency of outbound identity requests.\n# TYPE atsms_resolver_request_seconds histogram\n");
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "atsms_resolver_request_seconds_bucket{{le=\"{bound}\"}} {}\n",
                self.latency_buckets[i].load(Ordering::Relaxed)
            ));
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        out.push_str(&format!(
            "atsms_resolver_request_seconds_bucket{{le=\"+Inf\"}} {count}\n"
        ));
        out.push_str(&format!(
            "atsms_resolver_request_seconds_sum {}\n",
            self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
        out.push_str(&format!("atsms_resolver_request_seconds_count {count}\n"));
        out.push_str("# HELP atsms_cache_lookups_total Identity cache lookups, by kind and outcome.\n# TYPE atsms_cache_lookups_total counter\n");
        for c in cache {
            let kind = c.kind;
            for (outcome, n) in [("hit", c.hits), ("miss", c.misses), ("stale", c.stale)] {
                out.push_str(&format!(
                    "atsms_cache_lookups_total{{kind=\"{kind}\",outcome=\"{outcome}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP atsms_cache_entries Identity cache entries, by kind.\n# TYPE atsms_cache_entries gauge\n");
        for c in cache {
            out.push_str(&format!(
                "atsms_cache_entries{{kind=\"{}\"}} {}\n",
                c.kind, c.entries
            ));
        }
        out.push_str("# HELP atsms_lmtp_deliveries_total LMTP end-of-data replies per recipient, by status.\n# TYPE atsms_lmtp_deliveries_total counter\n");
        for (status, n) in self
            .lmtp_deliveries
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
        {
            out.push_str(&format!(
                "atsms_lmtp_deliveries_total{{status=\"{status}\"}} {n}\n"
            ));
        }
        counter_pairs(
            &mut out,
            "atsms_inbox_envelopes_total",
            "AT-SMS envelopes of the HTTPS inbox and device copies, by event and reason.",
            ("event", "reason"),
            &self.inbox_envelopes,
        );
        counter_pairs(
            &mut out,
            "atsms_send_recipients_total",
            "Recipients of sendMessage, by status and try.",
            ("status", "try"),
            &self.send_recipients,
        );
        counter_pairs(
            &mut out,
            "atsms_send_envelopes_total",
            "Envelopes the sender handed over, by carrier and outcome.",
            ("carrier", "outcome"),
            &self.send_envelopes,
        );
        out.push_str(&format!(
            "# HELP atsms_send_queue Deliveries waiting in send.queue.\n# TYPE atsms_send_queue gauge\natsms_send_queue {}\n",
            self.send_queue.load(Ordering::Relaxed)
        ));
        counter_pairs(
            &mut out,
            "atsms_socketmap_lookups_total",
            "Postfix table lookups, by map and answer.",
            ("map", "answer"),
            &self.socketmap_lookups,
        );
        out.push_str("# HELP atsms_open_connections Open connections, by mode.\n# TYPE atsms_open_connections gauge\n");
        out.push_str(&format!(
            "atsms_open_connections{{mode=\"milter\"}} {}\n",
            self.milter_connections.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "atsms_open_connections{{mode=\"lmtp\"}} {}\n",
            self.lmtp_connections.load(Ordering::Relaxed)
        ));
        out
    }
}

/// A counter with two labels `labels`, one line a pair of values.
fn counter_pairs(
    out: &mut String,
    name: &str,
    help: &str,
    labels: (&str, &str),
    counts: &Mutex<BTreeMap<(&'static str, &'static str), u64>>,
) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n"));
    for ((a, b), n) in counts.lock().map(|m| m.clone()).unwrap_or_default() {
        out.push_str(&format!(
            "{name}{{{}=\"{a}\",{}=\"{b}\"}} {n}\n",
            labels.0, labels.1
        ));
    }
}

/// One kind of identity cache entry, as `render` shows it.
#[derive(Debug, Clone, Default)]
pub struct CacheGauge {
    pub kind: &'static str,
    pub hits: u64,
    pub misses: u64,
    pub stale: u64,
    pub entries: u64,
}

/// Where the cache's figures come from when a scrape asks (the daemon wires the identity
/// cache in).
pub type CacheSource = std::sync::Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Vec<CacheGauge>> + Send>>
        + Send
        + Sync,
>;

/// The routes of the metrics listener: `GET /metrics` (and `/`), Prometheus text format.
/// Served like every HTTP listener (`http::serve`); plain HTTP: keep it on loopback or a
/// management network.
pub fn router(cache: CacheSource) -> axum::Router {
    use axum::routing::get;
    let scrape = move || {
        let cache = cache.clone();
        async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                global().render(&cache().await),
            )
        }
    };
    axum::Router::new()
        .route("/metrics", get(scrape.clone()))
        .route("/", get(scrape))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "not found\n") })
}
