//! The identity cache and key rotation, against a loopback PLC directory whose behaviour the
//! test changes as it goes. Lifetimes are set to seconds so the rules can be watched.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use atsms_milter::atproto::identity::budget::for_mail;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use atsms_milter::atproto::identity::IdentityResolver;
use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::format::envelope::AuthResult;
use atsms_milter::infra::config::{CacheConfig, ResolverConfig};
use atsms_milter::verification::verify::Verifier;
use support::http::{HttpServer, Reply};
use support::signing::{document, signed, verify_first};

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

#[derive(Clone)]
enum Plc {
    Serve(SigningKey),
    Unavailable,
    NotFound,
    Slow(SigningKey, Duration),
}

/// A PLC directory doing what `mode` says at the time of each request.
fn plc(mode: Arc<Mutex<Plc>>) -> HttpServer {
    HttpServer::start(Arc::new(move |target: &str| {
        let did = target.trim_start_matches('/');
        match mode.lock().unwrap().clone() {
            Plc::Serve(key) => Reply::json(200, document(did, &key, None)),
            Plc::Slow(key, delay) => {
                Reply::Delayed(delay, Box::new(Reply::json(200, document(did, &key, None))))
            }
            Plc::Unavailable => Reply::json(503, "{}"),
            Plc::NotFound => Reply::json(404, "{\"message\":\"DID not registered\"}"),
        }
    }))
}

/// A fresh key, and a directory serving it until its mode is changed.
fn serving() -> (SigningKey, Arc<Mutex<Plc>>, HttpServer) {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let mode = Arc::new(Mutex::new(Plc::Serve(key.clone())));
    let directory = plc(mode.clone());
    (key, mode, directory)
}

fn verifier(plc: &HttpServer, cache: CacheConfig) -> Verifier {
    let config = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        timeout: std::num::NonZeroU64::new(3).unwrap(),
        ..Default::default()
    };
    Verifier::new(
        Arc::new(IdentityResolver::new(&config, &cache).unwrap()),
        config.timeout(),
    )
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn fresh_refresh_stale_and_expiry() {
    let (key, mode, directory) = serving();
    let cache = CacheConfig {
        fresh: 1,
        max_age: 2,
        stale_if_error: 2,
        error: 1,
        ..Default::default()
    };
    let v = verifier(&directory, cache);
    let message = signed(&key, ALICE);

    assert_eq!(verify_first(&v, &message).await.result, AuthResult::Pass);
    assert_eq!(verify_first(&v, &message).await.result, AuthResult::Pass);
    assert_eq!(directory.request_count(), 1, "fresh: served from the cache");

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        verify_first(&v, &message).await.result,
        AuthResult::Pass,
        "between fresh and max_age: served"
    );
    settle().await;
    assert_eq!(
        directory.request_count(),
        2,
        "…and refreshed in the background"
    );

    // The directory goes down; past max_age the refetch fails and the entry serves stale.
    *mode.lock().unwrap() = Plc::Unavailable;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let stale = verify_first(&v, &message).await;
    assert_eq!(stale.result, AuthResult::Pass, "{:?}", stale.reason);
    assert!(stale.stale, "flagged stale");
    assert!(stale.reason.is_none(), "stale is not a reason");
    let requests = directory.request_count();
    assert_eq!(verify_first(&v, &message).await.result, AuthResult::Pass);
    assert_eq!(
        directory.request_count(),
        requests,
        "a failed refetch is not retried for cache.error"
    );

    // Past max_age + stale_if_error nothing may serve: temperror, never a pass on old data.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let gone = verify_first(&v, &message).await;
    assert_eq!(gone.result, AuthResult::Temperror, "{:?}", gone.reason);

    // The directory is back: a good answer replaces everything.
    *mode.lock().unwrap() = Plc::Serve(key.clone());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let back = verify_first(&v, &message).await;
    assert_eq!(back.result, AuthResult::Pass);
    assert!(!back.stale);
}

#[tokio::test]
async fn negative_and_error_answers_are_remembered() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let mode = Arc::new(Mutex::new(Plc::NotFound));
    let directory = plc(mode.clone());
    let v = verifier(
        &directory,
        CacheConfig {
            negative: 600,
            error: 1,
            ..Default::default()
        },
    );
    let message = signed(&key, ALICE);
    for _ in 0..5 {
        assert_eq!(
            verify_first(&v, &message).await.result,
            AuthResult::Permerror
        );
    }
    assert_eq!(
        directory.request_count(),
        1,
        "404 remembered for cache.negative"
    );

    let bob = "did:plc:hxdv4c2etoo2mbhg4alzhnno";
    *mode.lock().unwrap() = Plc::Unavailable;
    let message = signed(&key, bob);
    for _ in 0..5 {
        assert_eq!(
            verify_first(&v, &message).await.result,
            AuthResult::Temperror
        );
    }
    assert_eq!(
        directory.request_count(),
        2,
        "503 remembered for cache.error"
    );
    *mode.lock().unwrap() = Plc::Serve(key.clone());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        verify_first(&v, &message).await.result,
        AuthResult::Pass,
        "then asked again"
    );
    assert_eq!(directory.request_count(), 3);
}

#[tokio::test]
async fn concurrent_lookups_of_one_did_are_one_request() {
    let key = SigningKey::generate(Alg::Es256).unwrap();
    let directory = plc(Arc::new(Mutex::new(Plc::Slow(
        key.clone(),
        Duration::from_millis(300),
    ))));
    let v = verifier(&directory, CacheConfig::default());
    let message = signed(&key, ALICE);
    let all = futures::future::join_all((0..50).map(|_| verify_first(&v, &message))).await;
    assert!(all.iter().all(|s| s.result == AuthResult::Pass));
    assert_eq!(directory.request_count(), 1);
}

#[tokio::test]
async fn a_rotated_key_is_noticed_at_once_and_the_old_key_then_fails() {
    let old = SigningKey::generate(Alg::Es256k).unwrap();
    let new = SigningKey::generate(Alg::Es256k).unwrap();
    let mode = Arc::new(Mutex::new(Plc::Serve(old.clone())));
    let directory = plc(mode.clone());
    let v = verifier(&directory, CacheConfig::default());
    assert_eq!(
        verify_first(&v, &signed(&old, ALICE)).await.result,
        AuthResult::Pass
    );
    assert_eq!(directory.request_count(), 1);

    // The DID rotates its key in the directory; the cache still holds the old document.
    *mode.lock().unwrap() = Plc::Serve(new.clone());
    let next = verify_first(&v, &signed(&new, ALICE)).await;
    assert_eq!(
        next.result,
        AuthResult::Pass,
        "the next message passes: {:?}",
        next.reason
    );
    assert_eq!(directory.request_count(), 2, "one refetch");
    let stale_key = verify_first(&v, &signed(&old, ALICE)).await;
    assert_eq!(stale_key.result, AuthResult::Fail, "the old key then fails");
    // Forged mail cannot make us hammer the directory: one forced refetch per DID per 5 min.
    for _ in 0..10 {
        assert_eq!(
            verify_first(&v, &signed(&old, ALICE)).await.result,
            AuthResult::Fail
        );
    }
    assert_eq!(directory.request_count(), 2);
}

/// The most requests in any one-second window.
fn most_in_a_second(times: &[std::time::Instant]) -> usize {
    let mut times = times.to_vec();
    times.sort();
    (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|t| t.duration_since(times[i]) < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// `resolver.max_requests_per_second`: a directory never sees more than the budget in any
/// second, refreshes take only what lookups leave, and only entries used since their last
/// fetch are refreshed. The lookups are mail's (they may use both shares of the budget).
#[tokio::test(flavor = "multi_thread")]
async fn the_directory_sees_the_budget_and_refreshes_yield_to_lookups() {
    const RATE: usize = 5;
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let log: Arc<Mutex<Vec<(std::time::Instant, String)>>> = Arc::default();
    let seen = log.clone();
    let plc = HttpServer::start(Arc::new(move |target: &str| {
        let did = target.trim_start_matches('/').to_string();
        seen.lock()
            .unwrap()
            .push((std::time::Instant::now(), did.clone()));
        Reply::json(200, document(&did, &key, None))
    }));
    let config = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        timeout: std::num::NonZeroU64::new(10).unwrap(),
        max_requests_per_second: std::num::NonZeroU32::new(RATE as u32).unwrap(),
        ..Default::default()
    };
    let cache = CacheConfig {
        fresh: 1,
        max_age: 3600,
        ..CacheConfig::default()
    };
    let identity = Arc::new(IdentityResolver::new(&config, &cache).unwrap());
    let did = |n: usize| support::ids::plc_did(9000 + n);
    let requests_for = |dids: &[String]| {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(_, d)| dids.contains(d))
            .count()
    };

    // 1. Twenty new senders at once: all resolved, the directory sees the budget.
    let first: Vec<String> = (0..20).map(did).collect();
    let found =
        futures::future::join_all(first.iter().map(|d| for_mail(identity.resolve_did(d)))).await;
    assert!(found.iter().all(|f| f.as_ref().is_ok_and(|f| !f.cached)));
    let times: Vec<_> = log.lock().unwrap().iter().map(|(t, _)| *t).collect();
    assert_eq!(times.len(), 20);
    // The budget's slots hold the rate in every second (its unit tests, on a paused clock);
    // seen from the directory, requests' own delays (a loaded machine running the other
    // tests) may move one or two across a second's edge. A second's burst on top of the rate
    // would show 2 × RATE.
    assert!(
        most_in_a_second(&times) <= RATE + 2,
        "the rate at most in any second: {}",
        most_in_a_second(&times)
    );

    // 2. All twenty are used again past `fresh`: served from the cache at once, and twenty
    // refreshes queued. Five new senders arriving meanwhile are not kept waiting behind them.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for d in &first {
        assert!(identity.resolve_did(d).await.unwrap().cached);
    }
    let second: Vec<String> = (20..25).map(did).collect();
    let asked = std::time::Instant::now();
    let found =
        futures::future::join_all(second.iter().map(|d| for_mail(identity.resolve_did(d)))).await;
    assert!(found.iter().all(|f| f.is_ok()));
    // Refreshes may take the slots that were free before the lookups came (how many depends
    // on how long this busy machine took to get here). From then on the lookups go first:
    // while they wait on mail's schedule (4 a second), a refresh gets at most the others'
    // slot (1 a second) across their span of about 1.25 s. Refreshes queued ahead of them
    // would show some fifteen here.
    let last_lookup = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, d)| second.contains(d))
        .map(|(t, _)| *t)
        .max()
        .unwrap();
    let refreshed_meanwhile = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, d)| first.contains(d) && *t >= asked && *t <= last_lookup)
        .count();
    assert!(
        refreshed_meanwhile <= 3,
        "the lookups waited behind the queued refreshes ({refreshed_meanwhile} refreshes went while they waited)"
    );
    // The refreshes then come, spaced at the rate, never a burst.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while requests_for(&first) < 40 {
        assert!(std::time::Instant::now() < deadline, "refreshes stalled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refresh_times: Vec<_> = log.lock().unwrap()[25..]
        .iter()
        .filter(|(_, d)| first.contains(d))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        most_in_a_second(&refresh_times) <= RATE + 1,
        "refreshes are spread out: {} in a second",
        most_in_a_second(&refresh_times)
    );
    let times: Vec<_> = log.lock().unwrap().iter().map(|(t, _)| *t).collect();
    assert!(most_in_a_second(&times) <= RATE + 2);

    // 3. Only entries used since their last fetch are refreshed: three of twenty-five here.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = log.lock().unwrap().len();
    for d in &first[..3] {
        identity.resolve_did(d).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(log.lock().unwrap().len() - before, 3);
    assert_eq!(identity.refreshes(), (0, 0), "nothing queued or dropped");
}

/// A verifier and its resolver with a budget of one request a second and a lookup wait of
/// half a second: a second new sender within the second is not asked.
fn one_a_second(plc: &HttpServer, cache: CacheConfig) -> (Arc<IdentityResolver>, Verifier) {
    let config = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        timeout: std::num::NonZeroU64::new(1).unwrap(),
        max_requests_per_second: std::num::NonZeroU32::new(1).unwrap(),
        ..Default::default()
    };
    let identity = Arc::new(IdentityResolver::new(&config, &cache).unwrap());
    let verifier = Verifier::new(identity.clone(), config.timeout());
    (identity, verifier)
}

#[tokio::test]
async fn a_spent_budget_never_lets_an_old_key_pass() {
    let (key, mode, directory) = serving();

    // 1. Past max_age, a directory that is down lets the stale document serve
    //    (stale_if_error); a budget spent by someone else's new senders must not.
    let cache = CacheConfig {
        fresh: 1,
        max_age: 2,
        stale_if_error: 600,
        ..Default::default()
    };
    let (identity, v) = one_a_second(&directory, cache);
    let message = signed(&key, ALICE);
    assert_eq!(verify_first(&v, &message).await.result, AuthResult::Pass);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    identity
        .resolve_did(&support::ids::plc_did(7001))
        .await
        .unwrap();
    let busy = verify_first(&v, &message).await;
    assert_eq!(busy.result, AuthResult::Temperror, "{:?}", busy.reason);
    assert!(
        busy.reason.as_ref().unwrap().to_string().contains("budget"),
        "{:?}",
        busy.reason
    );
    // Nothing was remembered for it: a second later the sender is fetched and passes.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let back = verify_first(&v, &message).await;
    assert_eq!(back.result, AuthResult::Pass, "{:?}", back.reason);
    assert!(!back.stale);

    // 2. A signature failing with a cached key needs the document again (keys rotate);
    //    when the budget has no slot for it the answer is temperror, not fail, and the
    //    check is not used up: a second later the new key is found.
    let cache = CacheConfig {
        fresh: 100,
        max_age: 200,
        ..Default::default()
    };
    let (identity, v) = one_a_second(&directory, cache);
    assert_eq!(verify_first(&v, &message).await.result, AuthResult::Pass);
    let rotated = SigningKey::generate(Alg::Es256k).unwrap();
    *mode.lock().unwrap() = Plc::Serve(rotated.clone());
    let new_message = signed(&rotated, ALICE);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    identity
        .resolve_did(&support::ids::plc_did(7002))
        .await
        .unwrap();
    let busy = verify_first(&v, &new_message).await;
    assert_eq!(busy.result, AuthResult::Temperror, "{:?}", busy.reason);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let found = verify_first(&v, &new_message).await;
    assert_eq!(found.result, AuthResult::Pass, "{:?}", found.reason);
}
