//! Politeness to a PLC directory: `resolver.max_requests_per_second` per directory, shared
//! by lookups (foreground: a message waits for the answer) and background refreshes.
//!
//! The budget holds in every one-second window: requests are spaced `1 / rate` apart (a
//! GCRA, the token bucket written as one timestamp, with no burst), so no window of a second
//! ever sees more than `rate` of them, however many identities arrive at once.
//!
//! Two schedules share the rate (`resolver.mail_share`): one only mail being judged may use
//! (`Purpose::Mail`: the signer's document, its age), and one for everything else anyone can
//! set off for free — socketmap lookups of random DID mailboxes, RCPT consent checks, the
//! HTTPS inbox, XRPC callers (`Purpose::Other`, the default). Together they never exceed the
//! rate.
//! - Mail reserves the next slot of its own schedule at once and waits for it, or takes the
//!   others' slot when that one is free now; a slot further away than it may wait (its own
//!   timeout), and it joins the others' queue ahead of every other lookup; failing that it
//!   fails transiently (the message is deferred, never accepted unverified).
//! - The others' slots go by **fair queueing per client** (`Client`: the connection or the
//!   network that set the lookup off, `with_client`): a lookup that cannot have a slot now
//!   waits in a queue from which each slot goes to the lookup whose client was served least
//!   recently (a client never served first, then first come first served). A client asking
//!   for a thousand random DIDs is served once a turn like any other, so a new client — a
//!   real mail to a real DID mailbox — waits about one slot, not behind the flood. The queue
//!   holds at most `MAX_WAITING` lookups; when full, the one whose client was served most
//!   recently gives its place up (fails transiently).
//! - A refresh takes a slot only when one is free now on a schedule no lookup is waiting
//!   on; otherwise it waits and looks again, for a bounded time. Refreshes thus use only
//!   what lookups leave, and yield to them at once. A refresh first waits for such a moment
//!   (`refresh_free`) before it takes its key's fetch lock, so a lookup of the same key
//!   never queues behind a refresh waiting for the budget.
//! - Waiting is cancel-safe: a lookup dropped while it waits (its message's timeout, a
//!   client gone) leaves the queue (or stops counting as waiting); a slot it reserved is
//!   spent, never handed out twice.
//!
//! Which fetch is a refresh, for what a lookup is made and for which client, is carried by
//! task-locals (`as_refresh`, `for_mail`, `with_client`; `carried` takes them into a spawned
//! task), so the fetch code paths stay the same for all of them.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

tokio::task_local! {
    static REFRESH: ();
    static PURPOSE: Purpose;
    static CLIENT: Client;
}

/// What a lookup is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Judging a message: its signer's document, its age.
    Mail,
    /// Anything else (routing tables, consent at RCPT, XRPC callers, the command line).
    Other,
}

/// Who set a lookup off, for the fair share of the others' schedule: one connection to a
/// listener (a Postfix process asking the socketmap, an LMTP client), or one client network
/// (the HTTPS inbox and the XRPC service: IPv4 /24, IPv6 /48).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Client(u64);

impl Client {
    /// Lookups nobody named a client for (the command line, tests).
    pub const UNKNOWN: Client = Client(0);

    /// A client of its own: one connection.
    pub fn connection() -> Client {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Client(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) | 1 << 63)
    }

    /// The network `ip` is in, as one client.
    pub fn network(ip: std::net::IpAddr) -> Client {
        let prefix = match ip {
            std::net::IpAddr::V4(v4) => (4u8, u128::from(u32::from(v4) >> 8)),
            std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (4, u128::from(u32::from(v4) >> 8)),
                None => (6, u128::from(v6) >> 80),
            },
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        prefix.hash(&mut hasher);
        Client(hasher.finish() & !(1 << 63) | 1)
    }
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

/// Runs `f` for `client`: its lookups on the others' schedule take that client's turns.
pub async fn with_client<F: std::future::Future>(client: Client, f: F) -> F::Output {
    CLIENT.scope(client, f).await
}

/// `f` with the running task's purpose and client, for a task it is spawned on (task-locals
/// do not cross `tokio::spawn`).
pub fn carried<F: std::future::Future>(f: F) -> impl std::future::Future<Output = F::Output> {
    let (purpose, client) = (purpose(), client());
    PURPOSE.scope(purpose, CLIENT.scope(client, f))
}

/// What the running task's lookups are for (`Other` unless said otherwise).
pub fn purpose() -> Purpose {
    PURPOSE.try_with(|p| *p).unwrap_or(Purpose::Other)
}

/// The client the running task's lookups are for.
pub fn client() -> Client {
    CLIENT.try_with(|c| *c).unwrap_or(Client::UNKNOWN)
}

/// Whether the running task is a background refresh.
pub fn is_refresh() -> bool {
    REFRESH.try_with(|_| ()).is_ok()
}

/// Lookups waiting for a slot of the others' schedule at most.
pub const MAX_WAITING: usize = 1024;
/// How long a client is remembered as served (beyond, it counts as never served).
const SERVED_MEMORY: Duration = Duration::from_secs(60);

pub struct Budget {
    state: Mutex<State>,
}

struct State {
    /// Mail's own schedule: reservations, as a GCRA.
    mail: Schedule,
    /// The others' schedule: its slots go through `queue`.
    other: Schedule,
    queue: FairQueue,
}

struct Schedule {
    /// Time between two requests; `None`: this schedule has no share of the rate.
    interval: Option<Duration>,
    /// The theoretical arrival time: when the schedule is next free.
    tat: Instant,
    /// Lookups reserved on it and waiting for their slot (mail's schedule only).
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

    /// Whether a slot is free now.
    fn free(&self, now: Instant) -> bool {
        self.interval.is_some() && self.tat <= now
    }

    /// Takes the slot that is free now.
    fn take(&mut self, now: Instant) {
        self.tat = now + self.interval.unwrap_or_default();
    }
}

/// The lookups waiting for a slot of the others' schedule: mail's first, then one queue per
/// client, taken in turn by when each client was last served.
#[derive(Default)]
struct FairQueue {
    mail: std::collections::VecDeque<u64>,
    clients: HashMap<Client, std::collections::VecDeque<u64>>,
    /// Each waiting lookup's client (`None`: mail).
    owner: HashMap<u64, Option<Client>>,
    served: HashMap<Client, Instant>,
    next: u64,
}

impl FairQueue {
    fn len(&self) -> usize {
        self.owner.len()
    }

    fn is_empty(&self) -> bool {
        self.owner.is_empty()
    }

    fn contains(&self, id: u64) -> bool {
        self.owner.contains_key(&id)
    }

    /// Whose turn it is: mail first, then the front lookup of the client served least
    /// recently (never first; between equals, the one waiting longest).
    fn first(&self) -> Option<u64> {
        if let Some(&id) = self.mail.front() {
            return Some(id);
        }
        self.clients
            .iter()
            .filter_map(|(client, queue)| Some((self.served.get(client), *queue.front()?)))
            .min()
            .map(|(_, id)| id)
    }

    fn remove(&mut self, id: u64) {
        match self.owner.remove(&id) {
            Some(None) => self.mail.retain(|w| *w != id),
            Some(Some(client)) => {
                if let Some(queue) = self.clients.get_mut(&client) {
                    queue.retain(|w| *w != id);
                    if queue.is_empty() {
                        self.clients.remove(&client);
                    }
                }
            }
            None => {}
        }
    }

    fn served(&mut self, client: Client, now: Instant) {
        if self.served.len() >= 4 * MAX_WAITING {
            self.served
                .retain(|_, at| now.saturating_duration_since(*at) < SERVED_MEMORY);
        }
        self.served.insert(client, now);
    }

    /// Places a lookup of `client` (or mail) in the queue: its id. When the queue is full,
    /// the newest lookup of the client with the most waiting gives its place up — unless
    /// that is `client` itself (none: refused).
    fn join(&mut self, client: Client, mail: bool) -> Option<u64> {
        if self.len() >= MAX_WAITING {
            let own = match mail {
                true => 0,
                false => self.clients.get(&client).map_or(0, |q| q.len()),
            };
            let (most, count) = self
                .clients
                .iter()
                .map(|(c, q)| (*c, q.len()))
                .max_by_key(|(c, n)| (*n, self.served.get(c)))?;
            if count <= own + usize::from(!mail) {
                return None;
            }
            let newest = *self.clients.get(&most)?.back()?;
            self.remove(newest);
        }
        let id = self.next;
        self.next += 1;
        if mail {
            self.mail.push_back(id);
            self.owner.insert(id, None);
        } else {
            self.clients.entry(client).or_default().push_back(id);
            self.owner.insert(id, Some(client));
        }
        Some(id)
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
            state: Mutex::new(State {
                mail: Schedule::new(mail, now),
                other: Schedule::new(per_second - mail, now),
                queue: FairQueue::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a slot for this task's request: a lookup's (for its purpose and client)
    /// or, inside `as_refresh`, a refresh's. A lookup waits at most `max_wait`.
    pub async fn acquire(&self, max_wait: Duration) -> Result<(), OverBudget> {
        if is_refresh() {
            self.refresh(max_wait).await
        } else {
            self.lookup(purpose(), max_wait).await
        }
    }

    /// A lookup's slot for the running task's client (`with_client`).
    pub async fn lookup(&self, purpose: Purpose, max_wait: Duration) -> Result<(), OverBudget> {
        self.lookup_for(purpose, client(), max_wait).await
    }

    /// A lookup's slot: mail's reserved on its own schedule (or the others' when free now),
    /// the others' by their client's turn; none further away than `max_wait`.
    pub async fn lookup_for(
        &self,
        purpose: Purpose,
        client: Client,
        max_wait: Duration,
    ) -> Result<(), OverBudget> {
        let deadline = Instant::now() + max_wait;
        /// What the lock decided: a slot now, mail's reserved slot in a while, or a place
        /// in the queue.
        enum Then {
            Now,
            MailIn(Duration),
            Queue(u64),
        }
        let then = {
            let mut s = self.state();
            let now = Instant::now();
            let mail = purpose == Purpose::Mail;
            if s.queue.is_empty() && s.other.free(now) {
                s.other.take(now);
                s.queue.served(client, now);
                Then::Now
            } else if let Some(wait) = s.mail.wait(now).filter(|w| mail && *w <= max_wait) {
                let interval = s.mail.interval.unwrap_or_default();
                s.mail.tat = now + wait + interval;
                if !wait.is_zero() {
                    s.mail.waiting += 1;
                }
                Then::MailIn(wait)
            } else if s.other.interval.is_none() {
                return Err(OverBudget);
            } else {
                match s.queue.join(client, mail) {
                    Some(id) => Then::Queue(id),
                    None => return Err(OverBudget),
                }
            }
        };
        let id = match then {
            Then::Now | Then::MailIn(Duration::ZERO) => return Ok(()),
            Then::MailIn(wait) => {
                // Counted as waiting (above, under the lock) until it wakes or is dropped,
                // whichever comes first; no await between the two.
                let _waiting = MailWaiting(self);
                tokio::time::sleep(wait).await;
                return Ok(());
            }
            Then::Queue(id) => id,
        };
        // In the queue until it has its slot or gives up (dropped, or past its deadline).
        let _queued = InQueue(self, id);
        loop {
            let wake = {
                let mut s = self.state();
                let now = Instant::now();
                if !s.queue.contains(id) {
                    return Err(OverBudget); // its place was given to a client with a better turn
                }
                let interval = s.other.interval.unwrap_or_default();
                if s.other.free(now) && s.queue.first() == Some(id) {
                    s.other.take(now);
                    s.queue.served(client, now);
                    s.queue.remove(id);
                    return Ok(());
                }
                if s.other.tat > now {
                    s.other.tat
                } else {
                    // Free, and another's turn: look again once it has had time to take it.
                    now + interval / 4
                }
            };
            if wake > deadline {
                return Err(OverBudget);
            }
            tokio::time::sleep_until(wake).await;
        }
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
        let mut s = self.state();
        let now = Instant::now();
        let State { mail, other, queue } = &mut *s;
        let mut pause = Duration::MAX;
        let waiting = [queue.len(), mail.waiting];
        for (schedule, waiting) in [other, mail].into_iter().zip(waiting) {
            let Some(interval) = schedule.interval else {
                continue;
            };
            if waiting == 0 && schedule.tat <= now {
                if take {
                    schedule.take(now);
                }
                return Ok(());
            }
            pause = pause.min(schedule.tat.saturating_duration_since(now).max(interval));
        }
        Err(pause)
    }
}

/// A mail lookup waiting for its reserved slot; dropping it (woken or cancelled) ends the
/// wait.
struct MailWaiting<'a>(&'a Budget);

impl Drop for MailWaiting<'_> {
    fn drop(&mut self) {
        self.0.state().mail.waiting -= 1;
    }
}

/// A lookup in the others' queue; dropping it (served, given up or cancelled) takes it out.
struct InQueue<'a>(&'a Budget, u64);

impl Drop for InQueue<'_> {
    fn drop(&mut self) {
        self.0.state().queue.remove(self.1);
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
        assert!(budget.state().queue.is_empty());
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
        let (before, at) = (budget.state().other.tat, Instant::now());
        budget.refresh_free().await;
        assert_eq!(at.elapsed(), Duration::ZERO);
        assert_eq!(budget.state().other.tat, before);
    }

    /// `count` lookups of `client` started at once, each waiting as long as it takes.
    fn flood(budget: &std::sync::Arc<Budget>, client: Client, count: usize) {
        for _ in 0..count {
            let budget = budget.clone();
            tokio::spawn(async move {
                let _ = budget.lookup_for(Purpose::Other, client, LONG).await;
            });
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_flooding_the_others_schedule_cannot_keep_another_from_its_turn() {
        // 10 a second, none of them mail's. One client asks for 100 random DIDs, thirty
        // others for 10 each: a new client (a real mail to a real DID mailbox) is still
        // served within a slot or two, however long the queue.
        let budget = std::sync::Arc::new(Budget::new(10, 0.0));
        flood(&budget, Client(1), 100);
        for c in 0..30 {
            flood(&budget, Client(100 + c), 10);
        }
        // Every flooding client has had a turn by now (31 slots), and 350 lookups wait.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(budget.state().queue.len() > 300);
        let start = Instant::now();
        let r = budget
            .lookup_for(Purpose::Other, Client(7), Duration::from_millis(300))
            .await;
        assert!(r.is_ok(), "{:?} after {:?}", r, start.elapsed());
        assert!(
            start.elapsed() <= Duration::from_millis(200),
            "{:?}",
            start.elapsed()
        );
        // Its next lookup, a second later, waits for its turn in the round: each of the 32
        // clients once, not behind the 350 waiting.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        budget
            .lookup_for(Purpose::Other, Client(7), Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            start.elapsed() <= Duration::from_millis(3300),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn turns_go_round_the_clients_and_the_rate_holds() {
        let budget = std::sync::Arc::new(Budget::new(10, 0.0));
        let served = std::sync::Arc::new(Mutex::new(Vec::new()));
        for c in 1..=3u64 {
            for _ in 0..5 {
                let (budget, served) = (budget.clone(), served.clone());
                tokio::spawn(async move {
                    budget
                        .lookup_for(Purpose::Other, Client(c), LONG)
                        .await
                        .unwrap();
                    served.lock().unwrap().push((c, Instant::now()));
                });
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let served = served.lock().unwrap().clone();
        assert_eq!(served.len(), 15);
        // After the first (free at once), each client in turn: never the same client twice
        // while another waits.
        let order: Vec<u64> = served.iter().map(|(c, _)| *c).collect();
        for pair in order[1..13].windows(2) {
            assert_ne!(pair[0], pair[1], "{order:?}");
        }
        let times: Vec<Duration> = served
            .iter()
            .map(|(_, t)| t.duration_since(served[0].1))
            .collect();
        assert!(most_in_a_second(&times) <= 10, "{times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_is_bounded_and_the_last_in_turn_gives_way() {
        let budget = std::sync::Arc::new(Budget::new(1, 0.0));
        spend_the_slot(&budget).await;
        flood(&budget, Client(1), MAX_WAITING);
        while budget.state().queue.len() < MAX_WAITING {
            tokio::task::yield_now().await;
        }
        // Full: one more of the same client's is refused at once.
        assert_eq!(
            budget.lookup_for(Purpose::Other, Client(1), LONG).await,
            Err(OverBudget)
        );
        // A client with a better turn takes the place of the last in turn.
        let newcomer = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.lookup_for(Purpose::Other, Client(2), LONG).await })
        };
        while !budget.state().queue.clients.contains_key(&Client(2)) {
            tokio::task::yield_now().await;
        }
        assert_eq!(budget.state().queue.len(), MAX_WAITING);
        assert_eq!(
            budget.state().queue.clients[&Client(1)].len(),
            MAX_WAITING - 1
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(newcomer.await.unwrap(), Ok(()));
    }

    #[test]
    fn a_network_is_one_client() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(
            Client::network(ip("192.0.2.1")),
            Client::network(ip("192.0.2.200"))
        );
        assert_eq!(
            Client::network(ip("192.0.2.1")),
            Client::network(ip("::ffff:192.0.2.9"))
        );
        assert_ne!(
            Client::network(ip("192.0.2.1")),
            Client::network(ip("192.0.3.1"))
        );
        assert_eq!(
            Client::network(ip("2001:db8:1::1")),
            Client::network(ip("2001:db8:1:ff::2"))
        );
        assert_ne!(
            Client::network(ip("2001:db8:1::1")),
            Client::network(ip("2001:db8:2::1"))
        );
        assert_ne!(Client::network(ip("192.0.2.1")), Client::UNKNOWN);
        assert_ne!(Client::connection(), Client::connection());
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
