//! Politeness to a PLC directory: `resolver.max_requests_per_second` per directory, shared
//! by lookups (foreground: a message waits for the answer) and background refreshes.
//!
//! The budget is a GCRA (generic cell rate algorithm, the token bucket written as one
//! timestamp): requests are spaced `1 / rate` apart, with a burst of one second's worth.
//! - A lookup reserves the next slot at once and waits for it; if that slot is further away
//!   than it may wait (the lookup's own timeout), it reserves nothing and fails transiently
//!   (the message is deferred, never accepted unverified).
//! - A refresh takes a slot only when one is free now, no lookup is waiting, and taking it
//!   leaves the whole burst to lookups (it never spends headroom); otherwise it waits a slot
//!   and looks again, for a bounded time. Refreshes thus use only what lookups leave, and
//!   yield to them at once. A refresh first waits for such a moment (`refresh_free`) before
//!   it takes its key's fetch lock, so a lookup of the same key never queues behind a
//!   refresh waiting for the budget.
//! - Waiting is cancel-safe: a lookup dropped while it waits (its message's timeout, a
//!   client gone) stops counting as waiting; its slot is spent, never handed out twice.
//!
//! Which fetch is a refresh is carried by a task-local (`as_refresh`), so the fetch code
//! paths stay the same for both.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

tokio::task_local! {
    static REFRESH: ();
}

/// Runs `f` as a background refresh: the budget treats its PLC requests as yielding.
pub async fn as_refresh<F: std::future::Future>(f: F) -> F::Output {
    REFRESH.scope((), f).await
}

/// Whether the running task is a background refresh.
pub fn is_refresh() -> bool {
    REFRESH.try_with(|_| ()).is_ok()
}

pub struct Budget {
    /// Time between two requests at the full rate.
    interval: Duration,
    /// How far ahead of now the schedule may run: the burst, one second's worth.
    tolerance: Duration,
    state: Mutex<State>,
}

struct State {
    /// The theoretical arrival time: when the schedule is next free.
    tat: Instant,
    /// Lookups reserved and waiting for their slot.
    waiting: usize,
}

/// A slot the budget would not give within the time a lookup may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl Budget {
    pub fn new(per_second: u32) -> Budget {
        let per_second = per_second.max(1);
        let interval = Duration::from_secs(1) / per_second;
        Budget {
            interval,
            tolerance: interval * (per_second - 1),
            state: Mutex::new(State {
                tat: Instant::now(),
                waiting: 0,
            }),
        }
    }

    /// Waits for a slot for this task's request: a lookup's or, inside `as_refresh`, a
    /// refresh's. A lookup waits at most `max_wait`.
    pub async fn acquire(&self, max_wait: Duration) -> Result<(), OverBudget> {
        if is_refresh() {
            self.refresh(max_wait).await
        } else {
            self.lookup(max_wait).await
        }
    }

    /// A lookup's slot: reserved now, waited for, unless further away than `max_wait`.
    pub async fn lookup(&self, max_wait: Duration) -> Result<(), OverBudget> {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = s.tat.max(now);
            let wait = start.saturating_duration_since(now + self.tolerance);
            if wait > max_wait {
                return Err(OverBudget);
            }
            s.tat = start + self.interval;
            if !wait.is_zero() {
                s.waiting += 1;
            }
            wait
        };
        if !wait.is_zero() {
            // Counted as waiting (above, under the lock) until it wakes or is dropped,
            // whichever comes first; no await between the two.
            let _waiting = Waiting(self);
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// A refresh's slot: taken only when free now, with no lookup waiting and the whole
    /// burst left to lookups; given up after `max_wait`.
    pub async fn refresh(&self, max_wait: Duration) -> Result<(), OverBudget> {
        let deadline = Instant::now() + max_wait;
        while let Err(pause) = self.refresh_slot(true) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OverBudget);
            }
            tokio::time::sleep(pause.min(left)).await;
        }
        Ok(())
    }

    /// Waits, taking nothing, until a refresh could have a slot now.
    pub async fn refresh_free(&self) {
        while let Err(pause) = self.refresh_slot(false) {
            tokio::time::sleep(pause).await;
        }
    }

    /// Whether a refresh may go now (and, with `take`, its slot taken); else how long to
    /// wait before looking again.
    fn refresh_slot(&self, take: bool) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if s.waiting == 0 && s.tat <= now {
            if take {
                s.tat = now + self.interval;
            }
            return Ok(());
        }
        Err(s.tat.saturating_duration_since(now).max(self.interval))
    }
}

/// A lookup waiting for its slot; dropping it (woken or cancelled) ends the wait.
struct Waiting<'a>(&'a Budget);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.waiting -= 1;
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Spends the burst of a budget of 10 a second.
    async fn spend_the_burst(budget: &Budget) {
        for _ in 0..10 {
            budget.lookup(Duration::ZERO).await.unwrap();
        }
    }

    /// A lookup that waits (up to 5 s) for the next slot, started and parked.
    async fn waiting_lookup(
        budget: &std::sync::Arc<Budget>,
    ) -> tokio::task::JoinHandle<Result<(), OverBudget>> {
        let budget = budget.clone();
        let waiting = tokio::spawn(async move { budget.lookup(Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        waiting
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_get_a_burst_then_the_rate_and_give_up_past_their_wait() {
        let budget = Budget::new(10);
        let start = tokio::time::Instant::now();
        for _ in 0..10 {
            budget.lookup(Duration::ZERO).await.unwrap();
        }
        assert_eq!(start.elapsed(), Duration::ZERO, "one second's burst");
        assert_eq!(budget.lookup(Duration::ZERO).await, Err(OverBudget));
        budget.lookup(Duration::from_secs(1)).await.unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_never_spend_the_burst_and_wait_for_lookups() {
        let budget = std::sync::Arc::new(Budget::new(10));
        let start = tokio::time::Instant::now();
        // Refreshes alone: one per interval, not a burst.
        for _ in 0..5 {
            as_refresh(budget.acquire(Duration::from_secs(10)))
                .await
                .unwrap();
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        // After that the burst is whole for lookups.
        tokio::time::sleep(Duration::from_secs(1)).await;
        spend_the_burst(&budget).await;
        // A lookup waiting for its slot keeps a refresh out until it has gone.
        let waiting = waiting_lookup(&budget).await;
        let before = tokio::time::Instant::now();
        as_refresh(budget.acquire(Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(waiting.is_finished(), "the lookup went first");
        assert!(before.elapsed() >= Duration::from_millis(100));
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_dropped_while_waiting_no_longer_holds_refreshes_back() {
        let budget = Budget::new(10);
        spend_the_burst(&budget).await;
        // Its message timed out while it waited for its slot.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(10),
            budget.lookup(Duration::from_secs(5)),
        )
        .await;
        assert!(cancelled.is_err());
        assert_eq!(budget.state.lock().unwrap().waiting, 0);
        // Refreshes go on once the schedule is free; its slot stayed spent.
        let start = tokio::time::Instant::now();
        as_refresh(budget.acquire(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(90));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_gives_up_while_lookups_keep_the_budget() {
        let budget = std::sync::Arc::new(Budget::new(10));
        spend_the_burst(&budget).await;
        let waiting = waiting_lookup(&budget).await;
        let start = tokio::time::Instant::now();
        assert_eq!(
            as_refresh(budget.acquire(Duration::from_millis(50))).await,
            Err(OverBudget)
        );
        assert!(start.elapsed() <= Duration::from_millis(60));
        waiting.await.unwrap().unwrap();
        // `refresh_free` takes nothing: a lookup after it still has the next slot.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (before, at) = (
            budget.state.lock().unwrap().tat,
            tokio::time::Instant::now(),
        );
        budget.refresh_free().await;
        assert_eq!(at.elapsed(), Duration::ZERO);
        assert_eq!(budget.state.lock().unwrap().tat, before);
    }

    #[tokio::test]
    async fn a_refresh_that_panics_leaves_the_queue() {
        let refresher = std::sync::Arc::new(Refresher::default());
        refresher.submit("k".into(), async { panic!("refresh failed badly") });
        for _ in 0..100 {
            if refresher.pending() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(refresher.pending(), 0);
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        refresher.submit("k".into(), async move {
            let _ = done_tx.send(());
        });
        done_rx.await.expect("the key could be queued again");
    }
}
