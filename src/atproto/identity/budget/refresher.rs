//! Background refreshes, queued and spread out under the budgets.

use std::sync::Mutex;

use super::as_refresh;

/// Background refreshes, queued: each key at most once, at most `MAX_PENDING` waiting, a
/// few running at a time (each then waits for its directory's budget). A refresh that finds
/// the queue full is dropped: its entry is refreshed on a later use, or refetched before use
/// once past `max_age`. Refreshes are asked for by uses (an entry used between `fresh` and
/// `max_age`), so only identities used since their last fetch are ever refreshed.
pub struct Refresher {
    pending: Mutex<std::collections::HashSet<String>>,
    running: std::sync::Arc<tokio::sync::Semaphore>,
    dropped: std::sync::atomic::AtomicU64,
}

/// Refreshes queued at most; past it new ones are dropped.
pub const MAX_PENDING: usize = 10_000;
/// Refreshes running at once.
const RUNNING: usize = 4;

impl Default for Refresher {
    fn default() -> Self {
        Refresher {
            pending: Mutex::new(std::collections::HashSet::new()),
            running: std::sync::Arc::new(tokio::sync::Semaphore::new(RUNNING)),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Refresher {
    /// Queues `job` (a refresh of `key`) unless it is queued already or the queue is full.
    pub fn submit<F>(self: &std::sync::Arc<Self>, key: String, job: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.contains(&key) {
                return;
            }
            if pending.len() >= MAX_PENDING {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            pending.insert(key.clone());
        }
        let this = self.clone();
        tokio::spawn(async move {
            // Off the queue however the job ends (done, panicked, the runtime shutting down).
            let _queued = Queued(this.clone(), key);
            let _permit = this.running.clone().acquire_owned().await;
            as_refresh(job).await;
        });
    }

    /// Refreshes waiting or running now.
    pub fn pending(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Refreshes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A key on the refresh queue; dropping it takes the key off.
struct Queued(std::sync::Arc<Refresher>, String);

impl Drop for Queued {
    fn drop(&mut self) {
        let mut pending = self.0.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.remove(&self.1);
    }
}
