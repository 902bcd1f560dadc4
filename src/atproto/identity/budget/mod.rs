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

use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

tokio::task_local! {
    static REFRESH: ();
    static PURPOSE: Purpose;
    static CLIENT: Client;
    static NO_WAIT: ();
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

/// Runs `f` with lookups that take a slot only if one is free now (a stale answer can stand
/// in while it is refreshed: consent).
pub async fn without_waiting<F: std::future::Future>(f: F) -> F::Output {
    NO_WAIT.scope((), f).await
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
        } else if NO_WAIT.try_with(|_| ()).is_ok() {
            self.lookup(purpose(), Duration::ZERO).await
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

mod queue;
mod refresher;
#[cfg(test)]
mod tests;

use queue::FairQueue;
pub use refresher::{MAX_PENDING, Refresher};
