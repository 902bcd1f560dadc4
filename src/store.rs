//! Shared state for a fleet of MX hosts (`[store] redis = "redis://…"`): DID documents one
//! instance fetched, and the replay set, visible to every instance. When Redis cannot be
//! reached each instance carries on with its own memory, says so once, and tries Redis again
//! every few seconds. Without the key nothing here is used: one machine needs nothing else.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tracing::{info, warn};

/// How long one Redis operation may take before the instance falls back to its memory: a
/// slow store must not slow mail down.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(500);
/// How often an unreachable Redis is tried again.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(5);

pub struct SharedStore {
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    last_attempt: Mutex<Option<Instant>>,
    healthy: AtomicBool,
}

/// A DID document as one instance fetched it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SharedDocument {
    /// Unix seconds.
    pub fetched: i64,
    pub source: String,
    /// The document's JSON, as served.
    pub body: String,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl SharedStore {
    pub fn new(url: &str) -> Result<SharedStore, String> {
        let client = redis::Client::open(url).map_err(|e| format!("store.redis: {e}"))?;
        Ok(SharedStore {
            client,
            connection: tokio::sync::Mutex::new(None),
            last_attempt: Mutex::new(None),
            healthy: AtomicBool::new(true),
        })
    }

    /// Whether the last operation reached Redis.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn mark(&self, healthy: bool, why: &str) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if was && !healthy {
            warn!(
                "Redis unreachable ({why}); using this instance's own memory for the identity cache and replay set"
            );
        } else if !was && healthy {
            info!("Redis reachable again; sharing the identity cache and replay set");
        }
    }

    async fn connection(&self) -> Option<MultiplexedConnection> {
        let mut slot = self.connection.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Some(conn.clone());
        }
        {
            let mut last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < RECONNECT_INTERVAL) {
                return None;
            }
            *last = Some(Instant::now());
        }
        match tokio::time::timeout(
            OPERATION_TIMEOUT,
            self.client.get_multiplexed_async_connection(),
        )
        .await
        {
            Ok(Ok(conn)) => {
                *slot = Some(conn.clone());
                self.mark(true, "");
                Some(conn)
            }
            Ok(Err(e)) => {
                self.mark(false, &e.to_string());
                None
            }
            Err(_) => {
                self.mark(false, "connect timed out");
                None
            }
        }
    }

    async fn run<T: redis::FromRedisValue>(&self, command: redis::Cmd) -> Option<T> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(OPERATION_TIMEOUT, command.query_async::<T>(&mut conn)).await {
            Ok(Ok(value)) => Some(value),
            Ok(Err(e)) => {
                *self.connection.lock().await = None;
                self.mark(false, &e.to_string());
                None
            }
            Err(_) => {
                *self.connection.lock().await = None;
                self.mark(false, "operation timed out");
                None
            }
        }
    }

    pub async fn replay_seen(&self, key: &str) -> bool {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(format!("atsms:replay:{key}"));
        self.run::<i64>(cmd).await.unwrap_or(0) > 0
    }

    pub async fn replay_record(&self, key: &str, ttl: Duration) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("atsms:replay:{key}"))
            .arg(1)
            .arg("EX")
            .arg(ttl.as_secs().max(1));
        let _ = self.run::<()>(cmd).await;
    }

    /// A document another instance fetched no longer ago than `max_age`.
    pub async fn document(&self, did: &str, max_age: Duration) -> Option<SharedDocument> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("atsms:did:{did}"));
        let text: Option<String> = self.run(cmd).await?;
        let doc: SharedDocument = serde_json::from_str(&text?).ok()?;
        (unix_now() - doc.fetched <= max_age.as_secs() as i64).then_some(doc)
    }

    pub async fn put_document(&self, did: &str, source: &str, body: &[u8], keep: Duration) {
        let Ok(body) = std::str::from_utf8(body) else {
            return;
        };
        let doc = SharedDocument {
            fetched: unix_now(),
            source: source.to_string(),
            body: body.to_string(),
        };
        let Ok(text) = serde_json::to_string(&doc) else {
            return;
        };
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("atsms:did:{did}"))
            .arg(text)
            .arg("EX")
            .arg(keep.as_secs().max(1));
        let _ = self.run::<()>(cmd).await;
    }

    pub async fn forget_document(&self, did: &str) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("atsms:did:{did}"));
        let _ = self.run::<i64>(cmd).await;
    }
}
