//! Replay detection (docs/configuration.md, "Replay"): a signature's (DID, `jti`, envelope
//! recipient) is recorded once the message is accepted for that recipient, until the token
//! expires; the same triple again is `policy` with reason "replayed". Nothing is recorded for a
//! message we refused or deferred, so an MTA's retry after our own tempfail is not a replay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;

use crate::envelope::AuthResult;
use crate::envelope::token::EXPIRY_GRACE;
use crate::verify::Verdict;

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
/// configured: see `store`).
pub struct ReplaySet {
    memory: moka::sync::Cache<String, Duration>,
    shared: Option<Arc<crate::store::SharedStore>>,
}

fn key(did: &str, jti: &str, recipient: &str) -> String {
    // NUL cannot occur in any of the three.
    format!("{did}\0{jti}\0{}", recipient.to_ascii_lowercase())
}

impl ReplaySet {
    pub fn new(max_entries: u64, shared: Option<Arc<crate::store::SharedStore>>) -> ReplaySet {
        ReplaySet {
            memory: moka::sync::Cache::builder()
                .max_capacity(max_entries)
                .expire_after(UntilExpiry)
                .build(),
            shared,
        }
    }

    async fn seen(&self, key: &str) -> bool {
        if self.memory.contains_key(key) {
            return true;
        }
        match &self.shared {
            Some(shared) => shared.replay_seen(key).await,
            None => false,
        }
    }

    /// Marks passing signatures that were already accepted for `recipient` as replays.
    pub async fn check(&self, verdict: &mut Verdict, recipient: &str) {
        for sig in &mut verdict.signatures {
            let (Some(did), Some(jti)) = (&sig.did, &sig.jti) else {
                continue;
            };
            if sig.result == AuthResult::Pass && self.seen(&key(did, jti, recipient)).await {
                sig.result = AuthResult::Policy;
                sig.reason = Some("replayed".into());
                sig.aligned = None;
                sig.handle = None;
                sig.from = None;
            }
        }
    }

    /// Records the passing signatures of a message accepted for `recipient`, until their
    /// tokens expire (`exp` + the verifier's grace).
    pub async fn record(&self, verdict: &Verdict, recipient: &str, now: i64) {
        for sig in &verdict.signatures {
            let (Some(did), Some(jti), Some(exp)) = (&sig.did, &sig.jti, sig.exp) else {
                continue;
            };
            if sig.result != AuthResult::Pass {
                continue;
            }
            let ttl = Duration::from_secs((exp + EXPIRY_GRACE - now).max(1) as u64);
            let key = key(did, jti, recipient);
            if let Some(shared) = &self.shared {
                shared.replay_record(&key, ttl).await;
            }
            self.memory.insert(key, ttl);
        }
    }
}
