//! The budget's tests: paused clocks, many lookups at once.

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
    let waiting = tokio::spawn(async move { budget.lookup(purpose, Duration::from_secs(5)).await });
    tokio::task::yield_now().await;
    waiting
}

/// When each of `count` lookups for `purpose`, all asked at once, got its slot.
async fn slots(budget: &std::sync::Arc<Budget>, purpose: Purpose, count: usize) -> Vec<Duration> {
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
