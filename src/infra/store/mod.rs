//! Shared state for a fleet of MX hosts (`[store] redis = "redis://…"`): DID documents one
//! instance fetched, and the replay set, visible to every instance. When Redis cannot be
//! reached each instance carries on with its own memory, says so once, and tries Redis again
//! every few seconds. Without the key nothing here is used: one machine needs nothing else.
//!
//! Redis is not trusted: anyone who can write to it could otherwise hand every instance a
//! document making their key verify as a victim's. The fleet key (`store.key_file`) is
//! required: every entry carries HMAC-SHA-256 (RFC 2104) over its Redis key and value under
//! it; an entry that does not verify is ignored and logged. What a hostile Redis can still do
//! — delete, withhold, replay its own old entries, move the counters — is in
//! docs/scaling.md. `rediss://` URLs speak TLS; credentials go in the URL.

mod file;

pub use file::{SeenDir, SeenFile};

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use redis::aio::MultiplexedConnection;
use sha2::Sha256;
use tracing::{info, warn};

/// How long one Redis operation may take before the instance falls back to its memory: a
/// slow store must not slow mail down.
const OPERATION_TIMEOUT: Duration = Duration::from_millis(500);
/// How often an unreachable Redis is tried again.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(5);
/// The largest entry read or written: a document (64 KiB by default) and its wrapping. An
/// entry larger than this is ignored, so Redis cannot make an instance hold more.
pub const MAX_ENTRY: usize = 256 * 1024;
/// The shortest fleet key accepted.
pub const MIN_KEY_LEN: usize = 32;

pub struct SharedStore {
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    last_attempt: Mutex<Option<Instant>>,
    healthy: AtomicBool,
    /// The fleet key: every entry is authenticated with it.
    key: Vec<u8>,
}

/// The kinds of identity answer a fleet shares, each under its own Redis prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A DID document (`atsms:did:<did>`): the document as served.
    Did,
    /// A handle's DID (`atsms:handle:<handle>`): the DID; the source is `dns` or `https`.
    Handle,
    /// A device certificate (`atsms:cert:<kid>`): the PEM from the record.
    Certificate,
    /// A DID's AT-SMS inbox facts (`atsms:inbox:<did>`): its `at.atsms.inbox` mailboxes and
    /// device certificates, as JSON (`identity::inbox`).
    Inbox,
}

impl Kind {
    fn redis_key(self, key: &str) -> String {
        let prefix = match self {
            Kind::Did => "did",
            Kind::Handle => "handle",
            Kind::Certificate => "cert",
            Kind::Inbox => "inbox",
        };
        format!("atsms:{prefix}:{key}")
    }
}

/// An identity answer (a DID document, a handle's DID, a certificate) as one instance
/// fetched it.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct SharedDocument {
    /// Unix seconds.
    pub fetched: i64,
    pub source: String,
    /// The document's JSON, as served.
    pub body: String,
}

/// Reads the fleet key: at least 32 bytes, not readable or writable by others.
pub fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("store.key_file: {}: {e}", path.display()))?;
    if meta.permissions().mode() & 0o006 != 0 {
        return Err(format!(
            "store.key_file: {} is readable or writable by others (use mode 0600 or 0640)",
            path.display()
        ));
    }
    let key =
        std::fs::read(path).map_err(|e| format!("store.key_file: {}: {e}", path.display()))?;
    if key.len() < MIN_KEY_LEN {
        return Err(format!(
            "store.key_file: {} holds {} bytes; at least {MIN_KEY_LEN} random bytes are needed",
            path.display(),
            key.len()
        ));
    }
    Ok(key)
}

impl SharedStore {
    /// A store on the Redis at `url`, its entries authenticated with the fleet key in
    /// `key_file` (required: see the module's text).
    pub fn new(url: &str, key_file: &Path) -> Result<SharedStore, String> {
        let key = read_key(key_file)?;
        let client = redis::Client::open(url).map_err(|e| format!("store.redis: {e}"))?;
        Ok(SharedStore {
            client,
            connection: tokio::sync::Mutex::new(None),
            last_attempt: Mutex::new(None),
            healthy: AtomicBool::new(true),
            key,
        })
    }

    /// Whether the last operation reached Redis.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn hmac(&self, key: &str, value: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        mac.update(key.as_bytes());
        mac.update(&[0]);
        mac.update(value);
        mac
    }

    /// The value as stored: `<hex HMAC>.<value>`.
    fn seal(&self, key: &str, value: &str) -> String {
        let mac =
            crate::format::hex::hex(&self.hmac(key, value.as_bytes()).finalize().into_bytes());
        format!("{mac}.{value}")
    }

    /// The value of a stored entry, if it is authentic (and not too large).
    fn open(&self, key: &str, stored: &str) -> Option<String> {
        if stored.len() > MAX_ENTRY {
            warn!("shared store: {key} is larger than {MAX_ENTRY} bytes; ignored");
            return None;
        }
        let verified = stored.split_once('.').and_then(|(mac, value)| {
            let check = self.hmac(key, value.as_bytes());
            let mac = (0..mac.len())
                .step_by(2)
                .map(|i| {
                    mac.get(i..i + 2)
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                })
                .collect::<Option<Vec<u8>>>()?;
            check.verify_slice(&mac).ok()?;
            Some(value.to_string())
        });
        if verified.is_none() {
            warn!("shared store: {key} does not carry a valid HMAC under the fleet key; ignored");
        }
        verified
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

    /// An entry's value, read at most `MAX_ENTRY` (+ the HMAC) bytes, if authentic.
    async fn get(&self, key: &str) -> Option<String> {
        let mut cmd = redis::cmd("GETRANGE");
        cmd.arg(key).arg(0).arg(MAX_ENTRY + 65);
        let stored: String = self.run(cmd).await?;
        if stored.is_empty() {
            return None;
        }
        self.open(key, &stored)
    }

    async fn set(&self, key: &str, value: &str, ttl: Duration) {
        if value.len() > MAX_ENTRY {
            return;
        }
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(self.seal(key, value))
            .arg("EX")
            .arg(ttl.as_secs().max(1));
        let _ = self.run::<()>(cmd).await;
    }

    pub async fn replay_seen(&self, key: &str) -> bool {
        self.get(&format!("atsms:replay:{key}")).await.as_deref() == Some("1")
    }

    pub async fn replay_record(&self, key: &str, ttl: Duration) {
        self.set(&format!("atsms:replay:{key}"), "1", ttl).await;
    }

    /// Claims `key` for `ttl` (Redis `SET NX`, atomic across the fleet): `Some(true)` if this
    /// call made the claim, `Some(false)` if someone had, `None` when Redis cannot say.
    pub async fn claim(&self, key: &str, ttl: Duration) -> Option<bool> {
        let key = format!("atsms:claim:{key}");
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key)
            .arg(self.seal(&key, "1"))
            .arg("NX")
            .arg("EX")
            .arg(ttl.as_secs().max(1));
        self.run::<Option<String>>(cmd)
            .await
            .map(|set| set.is_some())
    }

    /// Adds one to the fleet's counter `key` for the event `once` — only the first time the
    /// fleet sees that event (`SET NX` on it, then `INCR`; one script: atomic in Redis) — and
    /// returns the count; the counter and the event live `ttl` from their first count.
    /// Counters carry no HMAC (INCR works on bare integers): whoever can write to Redis can
    /// move them either way — raise a sender's to have its mail deferred, reset it to lift
    /// the limit (each instance still counts on its own; docs/scaling.md). `None` when Redis
    /// cannot say.
    pub async fn count_once(&self, key: &str, once: &str, ttl: Duration) -> Option<u64> {
        const SCRIPT: &str = "if redis.call('SET', KEYS[2], '1', 'NX', 'EX', ARGV[1]) then \
            local n = redis.call('INCR', KEYS[1]) \
            if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end return n \
            else return tonumber(redis.call('GET', KEYS[1]) or '0') end";
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SCRIPT)
            .arg(2)
            .arg(format!("atsms:count:{key}"))
            .arg(format!("atsms:counted:{once}"))
            .arg(ttl.as_secs().max(1));
        self.run::<u64>(cmd).await
    }

    /// Whether the fleet counted the event `once` (`count_once`); `None` when Redis cannot
    /// say.
    pub async fn counted(&self, once: &str) -> Option<bool> {
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(format!("atsms:counted:{once}"));
        self.run::<u64>(cmd).await.map(|n| n > 0)
    }

    /// The fleet's counter `key` as it stands (0 when absent); `None` when Redis cannot say.
    pub async fn counter(&self, key: &str) -> Option<u64> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("atsms:count:{key}"));
        self.run::<Option<u64>>(cmd).await.map(|n| n.unwrap_or(0))
    }

    /// A document another instance fetched no longer ago than `max_age`.
    pub async fn document(&self, did: &str, max_age: Duration) -> Option<SharedDocument> {
        self.entry(Kind::Did, did, max_age).await
    }

    pub async fn put_document(&self, did: &str, source: &str, body: &[u8], keep: Duration) {
        self.put_entry(Kind::Did, did, source, body, keep).await;
    }

    /// An identity answer of `kind` another instance fetched no longer ago than `max_age`.
    pub async fn entry(&self, kind: Kind, key: &str, max_age: Duration) -> Option<SharedDocument> {
        let text = self.get(&kind.redis_key(key)).await?;
        let doc: SharedDocument = serde_json::from_str(&text).ok()?;
        (crate::infra::clock::unix_now() - doc.fetched <= max_age.as_secs() as i64).then_some(doc)
    }

    /// Shares an identity answer as fetched (`body` as served, `source` where from) for `keep`.
    pub async fn put_entry(
        &self,
        kind: Kind,
        key: &str,
        source: &str,
        body: &[u8],
        keep: Duration,
    ) {
        let Ok(body) = std::str::from_utf8(body) else {
            return;
        };
        let doc = SharedDocument {
            fetched: crate::infra::clock::unix_now(),
            source: source.to_string(),
            body: body.to_string(),
        };
        let Ok(text) = serde_json::to_string(&doc) else {
            return;
        };
        self.set(&kind.redis_key(key), &text, keep).await;
    }

    /// Drops what the fleet shares about `did`: its document, the device certificates of its
    /// keys (`atsms:cert:at://<did>/…`, found with SCAN: purging is an operator's rare act)
    /// and the entry of `handle` (the handle its document claimed).
    pub async fn forget_identity(&self, did: &str, handle: Option<&str>) {
        let mut keys = vec![Kind::Did.redis_key(did), Kind::Inbox.redis_key(did)];
        keys.extend(handle.map(|h| Kind::Handle.redis_key(h)));
        let pattern = glob_escape(&Kind::Certificate.redis_key(&format!("at://{did}/"))) + "*";
        let mut cursor = 0u64;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let Some((next, found)) = self.run::<(u64, Vec<String>)>(cmd).await else {
                break;
            };
            keys.extend(found);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        let mut cmd = redis::cmd("DEL");
        for key in &keys {
            cmd.arg(key);
        }
        let _ = self.run::<i64>(cmd).await;
    }
}

/// `text` as a Redis glob pattern matching only itself.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(key: &[u8]) -> SharedStore {
        SharedStore {
            client: redis::Client::open("redis://127.0.0.1:1/").unwrap(),
            connection: tokio::sync::Mutex::new(None),
            last_attempt: Mutex::new(None),
            healthy: AtomicBool::new(true),
            key: key.to_vec(),
        }
    }

    #[test]
    fn glob_patterns_match_only_the_text_given() {
        assert_eq!(
            glob_escape("atsms:cert:at://did:web:a*b/"),
            "atsms:cert:at://did:web:a\\*b/"
        );
        assert_eq!(glob_escape("x[?]\\"), "x\\[\\?\\]\\\\");
    }

    #[test]
    fn sealed_entries_open_only_under_their_key_and_name() {
        let a = store(&[7; 32]);
        let sealed = a.seal("atsms:did:x", "{\"doc\":1}");
        assert_eq!(
            a.open("atsms:did:x", &sealed).as_deref(),
            Some("{\"doc\":1}")
        );
        assert_eq!(a.open("atsms:did:y", &sealed), None, "moved to another key");
        let other = store(&[8; 32]);
        assert_eq!(
            other.open("atsms:did:x", &sealed),
            None,
            "another fleet's key"
        );
        assert_eq!(
            a.open("atsms:did:x", "{\"doc\":1}"),
            None,
            "written without a MAC"
        );
        let tampered = sealed.replace("1}", "2}");
        assert_eq!(a.open("atsms:did:x", &tampered), None);
        let big = "x".repeat(MAX_ENTRY);
        assert_eq!(a.open("k", &a.seal("k", &big)), None, "too large");
    }

    #[test]
    fn the_key_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, [1u8; 32]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(read_key(&path).unwrap().len(), 32);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            read_key(&path)
                .unwrap_err()
                .contains("readable or writable by others")
        );
        std::fs::write(&path, [1u8; 16]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key(&path).unwrap_err().contains("at least 32"));
    }
}
