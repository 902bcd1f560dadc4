//! Per-DID rate limits (`reputation.rate_limit` messages per DID per hour): a fixed window of
//! one clock hour, counted in Redis across a fleet (`store.redis`, one atomic script per
//! message), and in this instance's memory when there is no Redis or it cannot be reached.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The window.
const HOUR: i64 = 3600;

pub struct RateCounter {
    memory: moka::sync::Cache<String, Arc<AtomicU64>>,
    shared: Option<Arc<crate::store::SharedStore>>,
}

impl RateCounter {
    pub fn new(shared: Option<Arc<crate::store::SharedStore>>) -> RateCounter {
        RateCounter {
            // A window's counters, for as long as the window (and the next) may need them.
            memory: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(2 * HOUR as u64))
                .build(),
            shared,
        }
    }

    /// Counts one message from `did` at `now`; returns the count in the current window: the
    /// fleet's (Redis), and never less than what this instance saw itself — whoever can write
    /// to Redis may reset its counters, but not below this host's own count.
    pub async fn count(&self, did: &str, now: i64) -> u64 {
        let window = now.div_euclid(HOUR);
        let key = format!("{did}:{window}");
        let fleet = match &self.shared {
            Some(shared) => {
                shared
                    .count(&format!("rate:{key}"), Duration::from_secs(2 * HOUR as u64))
                    .await
            }
            None => None,
        };
        let own = self
            .memory
            .get_with(key, || Arc::new(AtomicU64::new(0)))
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        fleet.unwrap_or(0).max(own)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_per_did_per_hour_in_memory() {
        let counter = RateCounter::new(None);
        let did = "did:plc:ofurdhfyhjhgomvfygxergep";
        assert_eq!(counter.count(did, 7200).await, 1);
        assert_eq!(counter.count(did, 10_799).await, 2);
        assert_eq!(
            counter
                .count("did:plc:hxdv4c2etoo2mbhg4alzhnno", 7300)
                .await,
            1
        );
        assert_eq!(counter.count(did, 10_800).await, 1, "a new hour");
    }
}
