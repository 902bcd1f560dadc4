//! Replay detection (docs/configuration.md, "Replay"): a signature's (DID, `jti`, recipient
//! mailbox) is recorded once the message is accepted for that recipient, until the token
//! expires; the same triple again is `policy` with reason "replayed". Nothing is recorded for a
//! message we refused or deferred, so an MTA's retry after our own tempfail is not a replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::format::envelope::token::EXPIRY_GRACE;
use crate::verification::verify::{Reason, Verdict};

/// Keeps each entry until the token it records can no longer verify.
struct UntilExpiry;

impl Expiry<String, Duration> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &String,
        ttl: &Duration,
        _now: Instant,
    ) -> Option<Duration> {
        Some(*ttl)
    }
}

/// The set of (DID, jti, recipient) seen, in memory (and shared through Redis when a store is
/// configured: see `store`; or through a file for `serve --stdio` runs: `store::SeenFile`).
pub struct ReplaySet {
    memory: moka::sync::Cache<String, Duration>,
    shared: Option<Arc<crate::infra::store::SharedStore>>,
    file: Option<Arc<crate::infra::store::SeenFile>>,
}

fn key(did: &str, jti: &str, mailbox: &str) -> String {
    // NUL cannot occur in any of the three.
    format!("{did}\0{jti}\0{mailbox}")
}

impl ReplaySet {
    pub fn new(
        max_entries: u64,
        shared: Option<Arc<crate::infra::store::SharedStore>>,
    ) -> ReplaySet {
        ReplaySet {
            memory: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExpiry)
                .build(),
            shared,
            file: None,
        }
    }

    /// Keeps the set in `file` too (for `serve --stdio` runs without Redis).
    pub fn with_file(mut self, file: crate::infra::store::SeenFile) -> ReplaySet {
        self.file = Some(Arc::new(file));
        self
    }

    async fn seen(&self, key: &str) -> bool {
        if self.memory.contains_key(key) {
            return true;
        }
        if let Some(file) = &self.file {
            let (file, key) = (file.clone(), key.to_string());
            let now = crate::infra::clock::unix_now();
            let found = tokio::task::spawn_blocking(move || {
                file.contains(&key, now).inspect_err(|e| file.warn(e))
            })
            .await;
            if let Ok(Ok(true)) = found {
                return true;
            }
        }
        match &self.shared {
            Some(shared) => shared.replay_seen(key).await,
            None => false,
        }
    }

    /// Marks passing signatures that were already accepted for `mailbox` as replays.
    pub async fn check(&self, verdict: &mut Verdict, mailbox: &str) {
        for sig in &mut verdict.signatures {
            let (Some(did), Some(passed)) = (&sig.did, &sig.passed) else {
                continue;
            };
            if self.seen(&key(did, &passed.jti, mailbox)).await {
                sig.refuse_by_policy(Reason::Replayed);
            }
        }
    }

    /// Records the passing signatures of a message accepted for `recipient`, until their
    /// tokens expire (`exp` + the verifier's grace).
    pub async fn record(&self, verdict: &Verdict, mailbox: &str, now: i64) {
        for sig in &verdict.signatures {
            let (Some(did), Some(passed)) = (&sig.did, &sig.passed) else {
                continue;
            };
            let ttl = Duration::from_secs((passed.exp + EXPIRY_GRACE - now).max(1) as u64);
            let key = key(did, &passed.jti, mailbox);
            if let Some(shared) = &self.shared {
                shared.replay_record(&key, ttl).await;
            }
            if let Some(file) = &self.file {
                let (file, key) = (file.clone(), key.clone());
                let expiry = passed.exp + EXPIRY_GRACE;
                let wall = crate::infra::clock::unix_now();
                let _ = tokio::task::spawn_blocking(move || {
                    file.insert(&key, expiry, wall)
                        .inspect_err(|e| file.warn(e))
                })
                .await;
            }
            self.memory.insert(key, ttl);
        }
    }
}
