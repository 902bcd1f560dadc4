//! Replay detection and the shared store for fleets (a real Redis).

mod support;

use std::sync::{Arc, Mutex};

use atsms_milter::config::{CacheConfig, PolicyConfig};
use atsms_milter::envelope::AuthResult;
use atsms_milter::identity::IdentityResolver;
use atsms_milter::message::read_message;
use atsms_milter::replay::ReplaySet;
use atsms_milter::store::SharedStore;
use atsms_milter::verify::{Context, Reason, Verifier};
use indymilter_test::Status;
use support::http::{HttpServer, Reply};
use support::lmtp::{RunningLmtp, dot_stuffed};
use support::milter::{open_client, send};
use support::redis::Redis;
use support::vectors::VectorWorld;

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

fn policy() -> PolicyConfig {
    PolicyConfig {
        authserv_id: Some("mx.test".parse().unwrap()),
        trusted_networks: vec![],
        ..Default::default()
    }
}

fn message() -> Vec<u8> {
    b"From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: once\r\n\r\nsay it once\r\n".to_vec()
}

#[tokio::test]
async fn lmtp_delivers_a_replay_tagged_and_other_recipients_are_not_replays() {
    let world = VectorWorld::start();
    let server =
        RunningLmtp::start(world.resolver_config(), policy(), world.now(), |_, _| {}).await;
    let signed = world.sign_at(ALICE, &message(), world.now(), &[]);
    let mut c = server.client().await;
    c.send(b"LHLO x\r\n").await;
    c.reply().await;
    for to in ["bob", "bob", "carol"] {
        c.send(
            format!("MAIL FROM:<a@b.example>\r\nRCPT TO:<{to}@mx.example.net>\r\nDATA\r\n")
                .as_bytes(),
        )
        .await;
        c.replies(3).await;
        c.send(&dot_stuffed(&signed)).await;
        assert!(c.reply().await.starts_with("250 2.0.0"));
    }
    let bob: Vec<String> = RunningLmtp::new_files(&server.maildir("bob"))
        .into_iter()
        .map(|f| String::from_utf8(f).unwrap())
        .collect();
    assert_eq!(bob.len(), 2);
    assert_eq!(bob.iter().filter(|m| m.contains("atsms=pass")).count(), 1);
    let replayed = bob
        .iter()
        .find(|m| m.contains("atsms=policy"))
        .expect("the second copy is a replay");
    assert!(replayed.contains("reason=\"replayed\""), "{replayed}");
    let carol =
        String::from_utf8(RunningLmtp::new_files(&server.maildir("carol")).remove(0)).unwrap();
    assert!(
        carol.contains("atsms=pass"),
        "another recipient is not a replay"
    );
}

#[tokio::test]
async fn milter_a_retry_after_our_tempfail_is_not_a_replay_a_second_delivery_is() {
    let world = VectorWorld::start();
    // The directory is down at first, then back.
    let up = Arc::new(Mutex::new(false));
    let flag = up.clone();
    let dids: serde_json::Value = serde_json::from_slice(
        &std::fs::read(support::test_data("envelope").join("dids.json")).unwrap(),
    )
    .unwrap();
    let plc = HttpServer::start(Arc::new(move |t: &str| {
        if !*flag.lock().unwrap() {
            return Reply::json(503, "{}");
        }
        Reply::json(200, dids[t.trim_start_matches('/')].to_string())
    }));
    let mut resolver = world.resolver_config();
    resolver.plc_urls = vec![plc.url().parse().unwrap()];
    let milter = support::milter::RunningMilter::start_with_cache(
        resolver,
        policy(),
        world.now(),
        CacheConfig {
            error: 0,
            ..Default::default()
        },
    )
    .await;
    let signed = world.sign_at(ALICE, &message(), world.now(), &[]);
    let (_, status) = send(&mut open_client(milter.addr).await, &signed).await;
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    *up.lock().unwrap() = true;
    let (actions, status) = send(&mut open_client(milter.addr).await, &signed).await;
    assert_eq!(status, Status::Continue);
    assert!(
        support::milter::inserted_field(&actions).contains("atsms=pass"),
        "the MTA's retry is not a replay"
    );
    let (actions, _) = send(&mut open_client(milter.addr).await, &signed).await;
    let header = support::milter::inserted_field(&actions);
    assert!(
        header.contains("atsms=policy reason=\"replayed\""),
        "{header}"
    );
    milter.stop().await;
}

#[tokio::test]
async fn instances_share_documents_and_the_replay_set_through_redis() {
    let redis = Redis::start();
    let world = VectorWorld::start();
    let store = || {
        Some(Arc::new(
            SharedStore::new(&redis.url(), &redis.key_file()).unwrap(),
        ))
    };
    let instance = |shared: Option<Arc<SharedStore>>| {
        let identity = IdentityResolver::new(&world.resolver_config(), &CacheConfig::default())
            .unwrap()
            .with_shared_store(shared);
        Verifier::new(Arc::new(identity), std::time::Duration::from_secs(5))
    };
    let (mx1, mx2) = (instance(store()), instance(store()));
    let raw = std::fs::read(support::test_data("envelope").join("k256-multikey-pass.eml")).unwrap();
    let parsed = read_message(&raw[..]).unwrap();
    let context = Context {
        now: world.now(),
        recipients: &[],
    };
    let first = mx1
        .verify(&parsed.headers, &parsed.body_hash, &context)
        .await;
    assert_eq!(first.signatures[0].result, AuthResult::Pass);
    assert_eq!(world.plc.request_count(), 1);
    let second = mx2
        .verify(&parsed.headers, &parsed.body_hash, &context)
        .await;
    assert_eq!(second.signatures[0].result, AuthResult::Pass);
    assert_eq!(
        world.plc.request_count(),
        1,
        "the second MX host used the document the first fetched"
    );

    let (replay1, replay2) = (ReplaySet::new(1000, store()), ReplaySet::new(1000, store()));
    replay1
        .record(&first, "bob@mx.example.net", world.now())
        .await;
    let mut seen_elsewhere = second.clone();
    replay2
        .check(&mut seen_elsewhere, "bob@mx.example.net")
        .await;
    assert_eq!(
        seen_elsewhere.signatures[0].result,
        AuthResult::Policy,
        "a replay through another MX host"
    );
    assert_eq!(seen_elsewhere.signatures[0].reason, Some(Reason::Replayed));
}

#[tokio::test]
async fn without_redis_each_instance_falls_back_to_its_memory() {
    let world = VectorWorld::start();
    let dead = support::postfix::free_port(); // nothing listens here
    let dir = tempfile::tempdir().unwrap();
    let key_file = support::redis::fleet_key_file(dir.path());
    let shared =
        Arc::new(SharedStore::new(&format!("redis://127.0.0.1:{dead}/"), &key_file).unwrap());
    let identity = IdentityResolver::new(&world.resolver_config(), &CacheConfig::default())
        .unwrap()
        .with_shared_store(Some(shared.clone()));
    let verifier = Verifier::new(Arc::new(identity), std::time::Duration::from_secs(5));
    let raw = std::fs::read(support::test_data("envelope").join("p256-multikey-pass.eml")).unwrap();
    let parsed = read_message(&raw[..]).unwrap();
    let verdict = verifier
        .verify(
            &parsed.headers,
            &parsed.body_hash,
            &Context {
                now: world.now(),
                recipients: &[],
            },
        )
        .await;
    assert_eq!(verdict.signatures[0].result, AuthResult::Pass);
    assert!(!shared.is_healthy(), "it knows Redis is gone");
    let replay = ReplaySet::new(1000, Some(shared));
    replay
        .record(&verdict, "bob@mx.example.net", world.now())
        .await;
    let mut again = verdict.clone();
    replay.check(&mut again, "bob@mx.example.net").await;
    assert_eq!(
        again.signatures[0].result,
        AuthResult::Policy,
        "the replay set still works in memory"
    );
}
