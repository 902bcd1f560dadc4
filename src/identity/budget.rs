//! Politeness to a PLC directory: `resolver.max_requests_per_second` per directory, shared
//! by lookups (foreground: a message waits for the answer) and background refreshes.
//!
//! The budget holds in every one-second window: requests are spaced `1 / rate` apart (a
//! GCRA, the token bucket written as one timestamp, with no burst), so no window of a second
//! ever sees more than `rate` of them, however many identities arrive at once.
//!
//! Two schedules share the rate (`resolver.mail_share`): one only mail being judged may use
//! (`Purpose::Mail`: the signer's document, its age), and one for everything else anyone can
//! set off for free — socketmap lookups of random DID mailboxes, RCPT consent checks, XRPC
//! callers (`Purpose::Other`, the default). Mail may also take a slot of the other schedule
//! when that one comes sooner; the others never take mail's. Together they never exceed
//! the rate.
//! - A lookup reserves the next slot at once and waits for it; if that slot is further away
//!   than it may wait (the lookup's own timeout), it reserves nothing and fails transiently
//!   (the message is deferred, never accepted unverified).
//! - A refresh takes a slot only when one is free now on a schedule no lookup is waiting
//!   on; otherwise it waits and looks again, for a bounded time. Refreshes thus use only
//!   what lookups leave, and yield to them at once. A refresh first waits for such a moment
//!   (`refresh_free`) before it takes its key's fetch lock, so a lookup of the same key
//!   never queues behind a refresh waiting for the budget.
//! - Waiting is cancel-safe: a lookup dropped while it waits (its message's timeout, a
//!   client gone) stops counting as waiting; its slot is spent, never handed out twice.
//!
//! Which fetch is a refresh, and for what a lookup is made, is carried by task-locals
//! (`as_refresh`, `for_mail`), so the fetch code paths stay the same for all of them.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

tokio::task_local! {
    static REFRESH: ();
    static PURPOSE: Purpose;
}

/// What a lookup is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Judging a message: its signer's document, its age.
    Mail,
    /// Anything else (routing tables, consent at RCPT, XRPC callers, the command line).
    Other,
}

/// Runs `f` as a background refresh: the budget treats its PLC requests as yielding.
pub async fn as_refresh<F: std::future::Future>(f: F) -> F::Output {
    REFRESH.scope((), f).await
}

/// Runs `f` for `purpose`: its PLC requests use that purpose's schedule.
pub async fn with_purpose<F: std::future::Future>(purpose: Purpose, f: F) -> F::Output {
    PURPOSE.scope(purpose, f).await
}

/// Runs `f` as the judging of a message (its lookups may use mail's own share).
pub async fn for_mail<F: std::future::Future>(f: F) -> F::Output {
    with_purpose(Purpose::Mail, f).await
}

/// What the running task's lookups are for (`Other` unless said otherwise).
pub fn purpose() -> Purpose {
    PURPOSE.try_with(|p| *p).unwrap_or(Purpose::Other)
}

/// Whether the running task is a background refresh.
pub fn is_refresh() -> bool {
    REFRESH.try_with(|_| ()).is_ok()
}

pub struct Budget {
    /// Mail's schedule, then the others' (index `MAIL`, `OTHER`).
    state: Mutex<[Schedule; 2]>,
}

const MAIL: usize = 0;
const OTHER: usize = 1;

struct Schedule {
    /// Time between two requests; `None`: this schedule has no share of the rate.
    interval: Option<Duration>,
    /// The theoretical arrival time: when the schedule is next free.
    tat: Instant,
    /// Lookups reserved on it and waiting for their slot.
    waiting: usize,
}

impl Schedule {
    fn new(per_second: u32, now: Instant) -> Schedule {
        Schedule {
            interval: (per_second > 0).then(|| Duration::from_secs(1) / per_second),
            tat: now,
            waiting: 0,
        }
    }

    /// The wait for this schedule's next slot, if it has a share at all.
    fn wait(&self, now: Instant) -> Option<Duration> {
        self.interval?;
        Some(self.tat.saturating_duration_since(now))
    }
}

/// A slot the budget would not give within the time a lookup may wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverBudget;

impl Budget {
    /// `per_second` requests, of which `floor(per_second × mail_share)` a second are mail's
    /// alone.
    pub fn new(per_second: u32, mail_share: f64) -> Budget {
        let per_second = per_second.max(1);
        let mail = ((per_second as f64) * mail_share.clamp(0.0, 1.0)).floor() as u32;
        let now = Instant::now();
        Budget {
            state: Mutex::new([
                Schedule::new(mail, now),
                Schedule::new(per_second - mail, now),
            ]),
        }
    }

    /// Waits for a slot for this task's request: a lookup's (for its purpose) or, inside
    /// `as_refresh`, a refresh's. A lookup waits at most `max_wait`.
    pub async fn acquire(&self, max_wait: Duration) -> Result<(), OverBudget> {
        if is_refresh() {
            self.refresh(max_wait).await
        } else {
            self.lookup(purpose(), max_wait).await
        }
    }

    /// A lookup's slot: the soonest on the schedules `purpose` may use, reserved now and
    /// waited for, unless further away than `max_wait`.
    pub async fn lookup(&self, purpose: Purpose, max_wait: Duration) -> Result<(), OverBudget> {
        let (index, wait) = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let usable: &[usize] = match purpose {
                Purpose::Mail => &[MAIL, OTHER],
                Purpose::Other => &[OTHER],
            };
            let Some((index, wait)) = usable
                .iter()
                .filter_map(|&i| s[i].wait(now).map(|w| (i, w)))
                .min_by_key(|(_, w)| *w)
            else {
                return Err(OverBudget);
            };
            if wait > max_wait {
                return Err(OverBudget);
            }
            let schedule = &mut s[index];
            schedule.tat = now + wait + schedule.interval.unwrap_or_default();
            if !wait.is_zero() {
                schedule.waiting += 1;
            }
            (index, wait)
        };
        if !wait.is_zero() {
            // Counted as waiting (above, under the lock) until it wakes or is dropped,
            // whichever comes first; no await between the two.
            let _waiting = Waiting(self, index);
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// A refresh's slot: taken only when free now on a schedule with no lookup waiting;
    /// given up after `max_wait`.
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

    /// Whether a refresh may go now (and, with `take`, its slot taken: the others' schedule
    /// first, mail's only when that one is busy); else how long to wait before looking again.
    fn refresh_slot(&self, take: bool) -> Result<(), Duration> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let mut pause = Duration::MAX;
        for index in [OTHER, MAIL] {
            let schedule = &mut s[index];
            let Some(interval) = schedule.interval else {
                continue;
            };
            if schedule.waiting == 0 && schedule.tat <= now {
                if take {
                    schedule.tat = now + interval;
                }
                return Ok(());
            }
            pause = pause.min(schedule.tat.saturating_duration_since(now).max(interval));
        }
        Err(pause)
    }
}

/// A lookup waiting for its slot on a schedule; dropping it (woken or cancelled) ends the
/// wait.
struct Waiting<'a>(&'a Budget, usize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s[self.1].waiting -= 1;
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

    const LONG: Duration = Duration::from_secs(60);

    /// Takes what there is now on the others' schedule of a budget of 10 a second.
    async fn spend_the_slot(budget: &Budget) {
        budget.lookup(Purpose::Other, Duration::ZERO).await.unwrap();
    }

    /// A lookup that waits (up to 5 s) for the next slot, started and parked.
    async fn waiting_lookup(
        budget: &std::sync::Arc<Budget>,
        purpose: Purpose,
    ) -> tokio::task::JoinHandle<Result<(), OverBudget>> {
        let budget = budget.clone();
        let waiting =
            tokio::spawn(async move { budget.lookup(purpose, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        waiting
    }

    /// When each of `count` lookups for `purpose`, all asked at once, got its slot.
    async fn slots(
        budget: &std::sync::Arc<Budget>,
        purpose: Purpose,
        count: usize,
    ) -> Vec<Duration> {
        let start = Instant::now();
        let lookups: Vec<_> = (0..count)
            .map(|_| {
                let budget = budget.clone();
                tokio::spawn(async move {
                    budget.lookup(purpose, LONG).await.unwrap();
                    start.elapsed()
                })
            })
            .collect();
        let mut times = Vec::new();
        for lookup in lookups {
            times.push(lookup.await.unwrap());
        }
        times.sort();
        times
    }

    /// The most slots in any one-second window (half-open, as a rate is counted).
    fn most_in_a_second(times: &[Duration]) -> usize {
        times
            .iter()
            .map(|&from| {
                times
                    .iter()
                    .filter(|&&t| t >= from && t < from + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    #[tokio::test(start_paused = true)]
    async fn every_second_holds_the_rate_however_many_arrive_at_once() {
        // 40 new identities at once under 5 a second: never 9 within a second.
        let budget = std::sync::Arc::new(Budget::new(5, 0.0));
        let times = slots(&budget, Purpose::Mail, 40).await;
        assert_eq!(most_in_a_second(&times), 5, "{times:?}");
        assert_eq!(times[0], Duration::ZERO, "the first at once");
        assert!(times[39] >= Duration::from_millis(7800), "{times:?}");
        // Mail and the others together, on a shared budget.
        let budget = std::sync::Arc::new(Budget::new(10, 0.8));
        let (mail, other) = tokio::join!(
            slots(&budget, Purpose::Mail, 30),
            slots(&budget, Purpose::Other, 30)
        );
        let mut all = [mail, other].concat();
        all.sort();
        assert!(most_in_a_second(&all) <= 10, "{all:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_are_spaced_and_give_up_past_their_wait() {
        let budget = Budget::new(10, 0.0);
        let start = Instant::now();
        budget.lookup(Purpose::Other, Duration::ZERO).await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            budget.lookup(Purpose::Other, Duration::ZERO).await,
            Err(OverBudget)
        );
        budget
            .lookup(Purpose::Other, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(
            start.elapsed() >= Duration::from_millis(100),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn mail_keeps_its_share_whatever_the_others_set_off() {
        // 10 a second, 8 of them mail's alone: a flood of socketmap lookups of random DIDs
        // gets 2 a second, and mail arriving in the middle of it is not kept waiting.
        let budget = std::sync::Arc::new(Budget::new(10, 0.8));
        let flood = {
            let budget = budget.clone();
            tokio::spawn(async move { slots(&budget, Purpose::Other, 20).await })
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let start = Instant::now();
        for _ in 0..8 {
            budget
                .lookup(Purpose::Mail, Duration::from_secs(1))
                .await
                .unwrap();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        let others = flood.await.unwrap();
        assert_eq!(most_in_a_second(&others), 2, "{others:?}");
        // Nothing of mail's is the others' to spend, however long they would wait.
        let only_mail = Budget::new(10, 1.0);
        assert_eq!(
            only_mail.lookup(Purpose::Other, LONG).await,
            Err(OverBudget)
        );
        only_mail
            .lookup(Purpose::Mail, Duration::ZERO)
            .await
            .unwrap();
        // A task's lookups are the others' unless it judges mail.
        assert_eq!(purpose(), Purpose::Other);
        assert_eq!(for_mail(async { purpose() }).await, Purpose::Mail);
    }

    #[tokio::test(start_paused = true)]
    async fn refreshes_take_only_free_slots_and_wait_for_lookups() {
        let budget = std::sync::Arc::new(Budget::new(10, 0.0));
        let start = Instant::now();
        // Refreshes alone: one per interval.
        for _ in 0..5 {
            as_refresh(budget.acquire(Duration::from_secs(10)))
                .await
                .unwrap();
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        // A lookup waiting for its slot keeps a refresh out until it has gone.
        tokio::time::sleep(Duration::from_secs(1)).await;
        spend_the_slot(&budget).await;
        let waiting = waiting_lookup(&budget, Purpose::Other).await;
        let before = Instant::now();
        as_refresh(budget.acquire(Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(waiting.is_finished(), "the lookup went first");
        assert!(before.elapsed() >= Duration::from_millis(100));
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_lookup_dropped_while_waiting_no_longer_holds_refreshes_back() {
        let budget = Budget::new(10, 0.0);
        spend_the_slot(&budget).await;
        // Its message timed out while it waited for its slot.
        let cancelled = tokio::time::timeout(
            Duration::from_millis(10),
            budget.lookup(Purpose::Other, Duration::from_secs(5)),
        )
        .await;
        assert!(cancelled.is_err());
        assert_eq!(budget.state.lock().unwrap()[OTHER].waiting, 0);
        // Refreshes go on once the schedule is free; its slot stayed spent.
        let start = Instant::now();
        as_refresh(budget.acquire(Duration::from_secs(5)))
            .await
            .unwrap();
        assert!(start.elapsed() >= Duration::from_millis(90));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_gives_up_while_lookups_keep_the_budget() {
        let budget = std::sync::Arc::new(Budget::new(10, 0.0));
        spend_the_slot(&budget).await;
        let waiting = waiting_lookup(&budget, Purpose::Mail).await;
        let start = Instant::now();
        assert_eq!(
            as_refresh(budget.acquire(Duration::from_millis(50))).await,
            Err(OverBudget)
        );
        assert!(start.elapsed() <= Duration::from_millis(60));
        waiting.await.unwrap().unwrap();
        // `refresh_free` takes nothing: a lookup after it still has the next slot.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (before, at) = (budget.state.lock().unwrap()[OTHER].tat, Instant::now());
        budget.refresh_free().await;
        assert_eq!(at.elapsed(), Duration::ZERO);
        assert_eq!(budget.state.lock().unwrap()[OTHER].tat, before);
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
