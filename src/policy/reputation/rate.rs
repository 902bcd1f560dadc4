//! Per-DID rate limits (`reputation.rate_limit` messages per DID per hour): a fixed window of
//! one clock hour. A message counts once, when it is accepted, keyed by its signature's
//! (DID, `jti`) as the replay set is: a host running the milter and LMTP, several recipients,
//! several MX hosts, and an MTA's retries after our own tempfail all count it once. Counted
//! in Redis across a fleet (`store.redis`, one atomic script) and always in this instance's
//! memory too; the higher of the two counts decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The window.
const HOUR: i64 = 3600;

pub struct RateCounter {
    memory: moka::sync::Cache<String, Arc<AtomicU64>>,
    /// The messages (SHA-256 of DID and `jti`) this instance counted already.
    counted: moka::sync::Cache<[u8; 32], ()>,
    shared: Option<Arc<crate::infra::store::SharedStore>>,
}

/// A message as the counter knows it: SHA-256 of its signature's DID and `jti`.
fn message_hash(did: &str, jti: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::new()
        .chain_update(did.as_bytes())
        .chain_update([0])
        .chain_update(jti.as_bytes())
        .finalize()
        .into()
}

fn window_key(did: &str, now: i64) -> String {
    format!("{did}:{}", now.div_euclid(HOUR))
}

impl RateCounter {
    pub fn new(shared: Option<Arc<crate::infra::store::SharedStore>>) -> RateCounter {
        let keep = Duration::from_secs(2 * HOUR as u64);
        RateCounter {
            // A window's counters, for as long as the window (and the next) may need them.
            memory: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(keep)
                .build(),
            counted: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(keep)
                .build(),
            shared,
        }
    }

    /// Whether the message (`did`, `jti`) would take `did` past `limit` messages in the
    /// current window: the messages accepted so far, and this one unless it is among them
    /// (the milter counted it before LMTP sees it, say).
    pub async fn would_exceed(&self, did: &str, jti: &str, limit: u64, now: i64) -> bool {
        let key = window_key(did, now);
        let message = message_hash(did, jti);
        let fleet = match &self.shared {
            Some(shared) => shared.counter(&format!("rate:{key}")).await,
            None => None,
        };
        let own = self
            .memory
            .get(&key)
            .map_or(0, |n| n.load(Ordering::Relaxed));
        let counted = self.counted.contains_key(&message)
            || match &self.shared {
                Some(shared) => {
                    shared.counted(&crate::format::hex::hex(&message)).await == Some(true)
                }
                None => false,
            };
        fleet.unwrap_or(0).max(own) + u64::from(!counted) > limit
    }

    /// Counts the accepted message (`did`, `jti`) at `now`, once however often it is
    /// accepted (recipients, transports, hosts, retries).
    pub async fn count(&self, did: &str, jti: &str, now: i64) {
        let message = message_hash(did, jti);
        let key = window_key(did, now);
        if let Some(shared) = &self.shared {
            let once = crate::format::hex::hex(&message);
            let _ = shared
                .count_once(
                    &format!("rate:{key}"),
                    &once,
                    Duration::from_secs(2 * HOUR as u64),
                )
                .await;
        }
        if self.counted.entry(message).or_insert(()).is_fresh() {
            self.memory
                .get_with(key, || Arc::new(AtomicU64::new(0)))
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_each_message_once_per_did_per_hour_in_memory() {
        let counter = RateCounter::new(None);
        let did = "did:plc:ofurdhfyhjhgomvfygxergep";
        assert!(!counter.would_exceed(did, "jti-1", 2, 7200).await);
        counter.count(did, "jti-1", 7200).await;
        // The same message again (another recipient, LMTP after the milter, a retry): not
        // counted again, and not over the limit for being seen again.
        counter.count(did, "jti-1", 7300).await;
        assert!(!counter.would_exceed(did, "jti-1", 1, 7300).await);
        assert!(counter.would_exceed(did, "jti-2", 1, 7300).await);
        counter.count(did, "jti-2", 10_799).await;
        assert!(!counter.would_exceed(did, "jti-2", 2, 10_799).await);
        assert!(counter.would_exceed(did, "jti-3", 2, 10_799).await);
        counter
            .count("did:plc:hxdv4c2etoo2mbhg4alzhnno", "jti-9", 7300)
            .await;
        assert!(
            !counter.would_exceed(did, "jti-1", 2, 10_799).await,
            "another DID's"
        );
        assert!(
            !counter.would_exceed(did, "jti-3", 1, 10_800).await,
            "a new hour"
        );
    }
}
