//! Hostile and failing identity infrastructure: every case ends in permerror or temperror
//! within the time limit, with a reason, and the milter keeps serving other mail.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use atsms_milter::atproto::identity::DocumentError;
use atsms_milter::atproto::identity::IdentityError;
use atsms_milter::atproto::identity::IdentityResolver;
use atsms_milter::atproto::identity::Upstream;
use atsms_milter::format::crypto::Alg;
use atsms_milter::format::crypto::SigningKey;
use atsms_milter::format::envelope::AuthResult;
use atsms_milter::infra::config::CacheConfig;
use atsms_milter::infra::config::PolicyConfig;
use atsms_milter::infra::config::ResolverConfig;
use atsms_milter::verification::verify::Reason;
use atsms_milter::verification::verify::Verifier;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;
use support::dns::Answer;
use support::dns::DnsServer;
use support::http::HttpServer;
use support::http::Reply;
use support::ids::plc_did;
use support::signing::NOW;
use support::signing::document;
use support::signing::signed;
use support::signing::signed_message;
use support::signing::verify_first;

fn verifier_with_cache_defaults(config: ResolverConfig) -> Verifier {
    let timeout = config.timeout();
    Verifier::new(
        Arc::new(IdentityResolver::new(&config, &CacheConfig::default()).unwrap()),
        timeout,
    )
}

fn verifier(config: ResolverConfig) -> Verifier {
    Verifier::new(
        Arc::new(
            IdentityResolver::new(
                &config,
                &CacheConfig {
                    error: 0,
                    negative: 0,
                    ..Default::default()
                },
            )
            .unwrap(),
        ),
        config.timeout(),
    )
}

#[tokio::test]
async fn a_plc_that_answers_500_then_garbage_then_hangs() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let plc = HttpServer::start(Arc::new(move |_: &str| {
        match counter.fetch_add(1, Ordering::SeqCst) {
            0 => Reply::json(500, "{}"),
            1 => Reply::json(200, "\u{1f4a9} not json at all {{{"),
            _ => Reply::Hang,
        }
    }));
    let v = verifier(ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        timeout: std::num::NonZeroU64::new(2).unwrap(),
        ..Default::default()
    });
    let message = signed(&key, "did:plc:ofurdhfyhjhgomvfygxergep");
    let first = verify_first(&v, &message).await;
    assert_eq!(
        (first.result, first.reason),
        (
            AuthResult::Temperror,
            Some(Reason::Identity(IdentityError::Unavailable(Upstream::Plc)))
        )
    );
    let second = verify_first(&v, &message).await;
    assert_eq!(second.result, AuthResult::Permerror);
    assert_eq!(
        second.reason,
        Some(Reason::Identity(IdentityError::Document(
            DocumentError::Invalid
        )))
    );
    let started = Instant::now();
    let third = verify_first(&v, &message).await;
    assert_eq!(third.result, AuthResult::Temperror, "{:?}", third.reason);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "within the time limit"
    );
}

#[tokio::test]
async fn a_server_sending_one_byte_a_second_is_cut_off() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let doc = document("did:plc:ofurdhfyhjhgomvfygxergep", &key, None);
    let plc = HttpServer::start(Arc::new(move |_: &str| {
        Reply::Trickle(
            Duration::from_secs(1),
            Box::new(Reply::json(200, doc.clone())),
        )
    }));
    let v = verifier(ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        timeout: std::num::NonZeroU64::new(2).unwrap(),
        ..Default::default()
    });
    let started = Instant::now();
    let verdict = verify_first(&v, &signed(&key, "did:plc:ofurdhfyhjhgomvfygxergep")).await;
    assert_eq!(
        verdict.result,
        AuthResult::Temperror,
        "{:?}",
        verdict.reason
    );
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test]
async fn invalid_utf8_and_wrong_shapes_are_permerror() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    for body in [
        b"\xff\xfe{\"id\":1}".to_vec(),
        b"[\"an array\"]".to_vec(),
        b"{\"id\":\"did:plc:ofurdhfyhjhgomvfygxergep\",\"verificationMethod\":7}".to_vec(),
    ] {
        let plc = HttpServer::start(Arc::new(move |_: &str| Reply::Body {
            status: 200,
            content_type: "application/json",
            body: body.clone(),
        }));
        let v = verifier(ResolverConfig {
            plc_urls: vec![plc.url().parse().unwrap()],
            ..Default::default()
        });
        let verdict = verify_first(&v, &signed(&key, "did:plc:ofurdhfyhjhgomvfygxergep")).await;
        assert_eq!(
            verdict.result,
            AuthResult::Permerror,
            "{:?}",
            verdict.reason
        );
    }
}

#[tokio::test]
async fn retry_after_on_429_is_honoured_and_the_next_directory_asked() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let busy = HttpServer::start(Arc::new(|_: &str| {
        Reply::Headers(
            vec![("Retry-After", "120".into())],
            Box::new(Reply::json(429, "{}")),
        )
    }));
    let k = key.clone();
    let mirror = HttpServer::start(Arc::new(move |t: &str| {
        Reply::json(200, document(t.trim_start_matches('/'), &k, None))
    }));
    // Retry-After is honoured up to cache.error (60 s by default): tests/hostile.rs `retry_after_is_honoured_no_longer_than_cache_error`.
    let config = ResolverConfig {
        plc_urls: vec![busy.url().parse().unwrap(), mirror.url().parse().unwrap()],
        ..Default::default()
    };
    let v = Verifier::new(
        Arc::new(IdentityResolver::new(&config, &CacheConfig::default()).unwrap()),
        config.timeout(),
    );
    for n in 0..5 {
        let verdict = verify_first(&v, &signed(&key, &plc_did(n))).await;
        assert_eq!(verdict.result, AuthResult::Pass, "{:?}", verdict.reason);
    }
    assert_eq!(
        busy.request_count(),
        1,
        "asked once, then left alone for Retry-After"
    );
    assert_eq!(mirror.request_count(), 5);
}

#[tokio::test]
async fn outbound_fetches_are_limited_per_host_and_overall() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let k = key.clone();
    let plc = HttpServer::start(Arc::new(move |t: &str| {
        Reply::Delayed(
            Duration::from_millis(100),
            Box::new(Reply::json(
                200,
                document(t.trim_start_matches('/'), &k, None),
            )),
        )
    }));
    let config = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        max_concurrent_per_host: std::num::NonZeroUsize::new(3).unwrap(),
        timeout: std::num::NonZeroU64::new(10).unwrap(),
        ..Default::default()
    };
    let v = verifier(config);
    let messages: Vec<Vec<u8>> = (0..20).map(|n| signed(&key, &plc_did(n))).collect();
    let verdicts = futures::future::join_all(messages.iter().map(|m| verify_first(&v, m))).await;
    assert!(verdicts.iter().all(|v| v.result == AuthResult::Pass));
    assert_eq!(plc.request_count(), 20);
    let peak = plc.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=3).contains(&peak), "at most 3 at once, saw {peak}");

    let overall = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        max_concurrent_fetches: std::num::NonZeroUsize::new(2).unwrap(),
        timeout: std::num::NonZeroU64::new(10).unwrap(),
        ..Default::default()
    };
    let plc2 = plc.max_in_flight.clone();
    plc2.store(0, Ordering::SeqCst);
    let v = verifier(overall);
    let messages: Vec<Vec<u8>> = (100..120).map(|n| signed(&key, &plc_did(n))).collect();
    futures::future::join_all(messages.iter().map(|m| verify_first(&v, m))).await;
    assert!(plc.max_in_flight.load(Ordering::SeqCst) <= 2);
}

/// DNS rebinding: the did:web host's name answers a public address, then loopback. Every
/// answer is checked where the connection is made, so loopback is never contacted.
#[tokio::test]
async fn a_did_web_host_switching_to_loopback_is_never_contacted() {
    // Anything that reaches 127.0.0.1:443 is counted.
    let listener = std::net::TcpListener::bind("127.0.0.1:443").expect("tests run as root");
    listener.set_nonblocking(true).unwrap();
    let key = SigningKey::generate(Alg::Es256).unwrap();
    let answers = Arc::new(Mutex::new(0usize));
    let name = "rebind.example.com";
    // 8.8.8.8 is public (and unreachable from here); 127.0.0.1 is refused where it is used.
    let dns = DnsServer::start_with(Arc::new(move |qname: &str| {
        if qname != name {
            return None;
        }
        let mut n = answers.lock().unwrap();
        *n += 1;
        Some(vec![Answer::A(if *n % 2 == 1 {
            Ipv4Addr::new(8, 8, 8, 8)
        } else {
            Ipv4Addr::LOCALHOST
        })])
    }));
    let config = ResolverConfig {
        dns_servers: vec![dns.server_arg().parse().unwrap()],
        timeout: std::num::NonZeroU64::new(2).unwrap(),
        ..Default::default()
    };
    let v = verifier(config);
    let message = signed(&key, &format!("did:web:{name}"));
    for _ in 0..4 {
        let verdict = verify_first(&v, &message).await;
        assert!(
            matches!(
                verdict.result,
                AuthResult::Permerror | AuthResult::Temperror
            ),
            "{:?}",
            verdict.reason
        );
    }
    assert!(listener.accept().is_err(), "nothing connected to loopback");
}

#[tokio::test]
async fn redirects_are_not_followed_for_documents_and_checked_for_handles() {
    let key = SigningKey::generate(Alg::Es256).unwrap();
    let web = HttpServer::start(Arc::new(|_: &str| {
        Reply::Headers(
            vec![("Location", "http://127.0.0.1:9/x".into())],
            Box::new(Reply::json(302, "")),
        )
    }));
    let did = format!("did:web:localhost%3A{}", web.addr.port());
    let v = verifier(ResolverConfig {
        allow_private_addresses: true,
        ..Default::default()
    });
    let verdict = verify_first(&v, &signed(&key, &did)).await;
    assert_eq!(verdict.result, AuthResult::Permerror);
    assert_eq!(
        verdict.reason,
        Some(Reason::Identity(IdentityError::Redirected))
    );
}

#[tokio::test]
async fn the_milter_keeps_serving_while_one_identity_hangs() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let good_did = "did:plc:hxdv4c2etoo2mbhg4alzhnno";
    let k = key.clone();
    let plc = HttpServer::start(Arc::new(move |t: &str| {
        let did = t.trim_start_matches('/');
        if did == good_did {
            Reply::json(200, document(did, &k, None))
        } else {
            Reply::Hang
        }
    }));
    let resolver = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        timeout: std::num::NonZeroU64::new(3).unwrap(),
        ..Default::default()
    };
    let policy = PolicyConfig {
        authserv_id: Some("mx.test".parse().unwrap()),
        trusted_networks: vec![],
        ..Default::default()
    };
    let milter = support::milter::RunningMilter::start(resolver, policy, NOW).await;
    let hanging = signed(&key, "did:plc:ofurdhfyhjhgomvfygxergep");
    let good = signed(&key, good_did);
    let send = |message: Vec<u8>| {
        let addr = milter.addr;
        async move {
            let mut conn = indymilter_test::TestConnection::open(addr).await.unwrap();
            conn.connect("c", std::net::SocketAddr::from(([192, 0, 2, 9], 1)))
                .await
                .unwrap();
            conn.mail(["<a@b>"]).await.unwrap();
            conn.rcpt(["<c@d>"]).await.unwrap();
            let (fields, body) = support::milter::split_message(&message);
            for (n, v) in fields {
                conn.header(n.as_str(), v.as_str()).await.unwrap();
            }
            conn.body(body).await.unwrap();
            let started = Instant::now();
            let (_, status) = conn.eom().await.unwrap();
            (status, started.elapsed())
        }
    };
    let (stuck, good) = tokio::join!(send(hanging), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        send(good).await
    });
    assert!(
        matches!(stuck.0, indymilter_test::Status::Tempfail { .. }),
        "{stuck:?}"
    );
    assert!(stuck.1 < Duration::from_secs(5));
    assert_eq!(good.0, indymilter_test::Status::Continue);
    assert!(
        good.1 < Duration::from_secs(2),
        "not held up by the hanging lookup: {:?}",
        good.1
    );
    milter.stop().await;
}

// SSRF through the PLC directory's host.

#[tokio::test]
async fn urls_on_the_plc_host_are_checked_like_any_other() {
    let key = SigningKey::generate(Alg::Es256).unwrap();
    let trap = HttpServer::start(Arc::new(|_: &str| Reply::json(500, "{}")));
    let trap_port = trap.addr.port();
    for pds in [
        format!("http://127.0.0.1:{trap_port}"),
        format!("http://2130706433:{trap_port}"),
        format!("https://[3fff::1]:{trap_port}"),
    ] {
        let doc = document("did:plc:hxdv4c2etoo2mbhg4alzhnno", &key, Some(&pds));
        let plc = HttpServer::start(Arc::new(move |_: &str| Reply::json(200, doc.clone())));
        // The operator's PLC directory is on 127.0.0.1 (plain http): that makes nothing else
        // on 127.0.0.1 the operator's.
        let v = verifier_with_cache_defaults(ResolverConfig {
            plc_urls: vec![plc.url().parse().unwrap()],
            ..Default::default()
        });
        let kid = format!(
            "at://did:plc:hxdv4c2etoo2mbhg4alzhnno/at.atsms.x509/{}",
            "ab".repeat(32)
        );
        let verdict = verify_first(&v, &signed_message(&key, &kid, NOW)).await;
        assert_eq!(verdict.result, AuthResult::Permerror, "{pds}");
        assert_eq!(
            verdict.reason,
            Some(Reason::Identity(IdentityError::Refused(Upstream::Pds))),
            "{pds}"
        );
    }
    assert_eq!(trap.request_count(), 0, "the trap was never reached");
}

#[tokio::test]
async fn reasons_name_no_http_status() {
    let key = SigningKey::generate(Alg::Es256).unwrap();
    let pds = HttpServer::start(Arc::new(|_: &str| Reply::json(503, "{}")));
    let doc = document("did:plc:hxdv4c2etoo2mbhg4alzhnno", &key, Some(&pds.url()));
    let plc = HttpServer::start(Arc::new(move |_: &str| Reply::json(200, doc.clone())));
    let v = verifier_with_cache_defaults(ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        allow_private_addresses: true,
        ..Default::default()
    });
    let kid = format!(
        "at://did:plc:hxdv4c2etoo2mbhg4alzhnno/at.atsms.x509/{}",
        "ab".repeat(32)
    );
    let verdict = verify_first(&v, &signed_message(&key, &kid, NOW)).await;
    let reason = verdict.reason.unwrap().to_string();
    assert_eq!(reason, "PDS unavailable");
    assert!(!reason.contains("503"));
}

// A slow did:web host held every fetch permit; one 429 blocked did:plc lookups for an hour.

#[tokio::test]
async fn a_hanging_did_web_host_does_not_starve_did_plc() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let k = key.clone();
    let plc = HttpServer::start(Arc::new(move |t: &str| {
        Reply::json(200, document(t.trim_start_matches('/'), &k, None))
    }));
    let hang = HttpServer::start(Arc::new(|_: &str| Reply::Hang));
    let v = verifier_with_cache_defaults(ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        allow_private_addresses: true,
        max_concurrent_fetches: std::num::NonZeroUsize::new(2).unwrap(),
        timeout: std::num::NonZeroU64::new(5).unwrap(),
        ..Default::default()
    });
    let web = format!("did:web:localhost%3A{}", hang.addr.port());
    let hanging: Vec<_> = (0..4)
        .map(|_| {
            let (v, m) = (v.clone(), support::signing::signed(&key, &web));
            tokio::spawn(async move { verify_first(&v, &m).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let verdict = verify_first(
        &v,
        &support::signing::signed(&key, &support::ids::plc_did(1)),
    )
    .await;
    assert_eq!(verdict.result, AuthResult::Pass);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "did:plc waited {:?}",
        started.elapsed()
    );
    for h in hanging {
        h.abort();
    }
}

#[tokio::test]
async fn retry_after_is_honoured_no_longer_than_cache_error() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let k = key.clone();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let plc = HttpServer::start(Arc::new(move |t: &str| {
        if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            return Reply::Headers(
                vec![("Retry-After", "3600".into())],
                Box::new(Reply::json(429, "{}")),
            );
        }
        Reply::json(200, document(t.trim_start_matches('/'), &k, None))
    }));
    let config = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        ..Default::default()
    };
    let cache = CacheConfig {
        error: 2,
        ..CacheConfig::default()
    };
    let v = Verifier::new(
        Arc::new(IdentityResolver::new(&config, &cache).unwrap()),
        Duration::from_secs(5),
    );
    let first = verify_first(
        &v,
        &support::signing::signed(&key, &support::ids::plc_did(1)),
    )
    .await;
    assert_eq!(first.result, AuthResult::Temperror);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let later = verify_first(
        &v,
        &support::signing::signed(&key, &support::ids::plc_did(2)),
    )
    .await;
    assert_eq!(
        later.result,
        AuthResult::Pass,
        "asked again after cache.error, not an hour"
    );
}
