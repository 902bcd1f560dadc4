//! Replay detection and the shared store for fleets (a real Redis).

use atsms_testkit as support;

use atsms_milter::atproto::identity::IdentityResolver;
use atsms_milter::format::crypto::Alg;
use atsms_milter::format::crypto::SigningKey;
use atsms_milter::format::envelope::AuthResult;
use atsms_milter::format::message::read_message;
use atsms_milter::infra::config::CacheConfig;
use atsms_milter::infra::config::PolicyConfig;
use atsms_milter::infra::store::SharedStore;
use atsms_milter::policy::replay::ReplaySet;
use atsms_milter::verification::verify::Context;
use atsms_milter::verification::verify::Reason;
use atsms_milter::verification::verify::Verifier;
use indymilter_test::Status;
use std::io::Read;
use std::io::Write;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use support::daemon::Daemon;
use support::http::HttpServer;
use support::http::Reply;
use support::lmtp::RunningLmtp;
use support::lmtp::dot_stuffed;
use support::milter::open_client;
use support::milter::send;
use support::postfix::free_port;
use support::redis::Redis;
use support::signing::document;
use support::vectors::VectorWorld;

fn policy_trusting_no_network() -> PolicyConfig {
    PolicyConfig {
        authserv_id: Some("mx.test".parse().unwrap()),
        trusted_networks: vec![],
        ..PolicyConfig::default()
    }
}

fn envelope_vector(name: &str) -> std::path::PathBuf {
    support::test_data("envelope").join(name)
}

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

// Replay detection bypassed by bob+anything@, and forgotten between --stdio runs.

#[tokio::test]
async fn a_replay_to_another_spelling_of_the_mailbox_is_a_replay() {
    let world = VectorWorld::start();
    let server = RunningLmtp::start(
        world.resolver_config(),
        policy_trusting_no_network(),
        world.now(),
        |_, _| {},
    )
    .await;
    let signed = world.sign_at(
        ALICE,
        b"From: Alice <alice@alice.example.com>\r\nSubject: once\r\n\r\nhi\r\n",
        world.now(),
        &[],
    );
    for rcpt in ["bob@mx.example.net", "Bob+anything@MX.example.net"] {
        let mut c = server.client().await;
        c.send(
            format!("LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes(),
        )
        .await;
        c.replies(4).await;
        c.send(&dot_stuffed(&signed)).await;
        assert!(c.reply().await.starts_with("250 2.0.0"));
    }
    let inbox = RunningLmtp::new_files(&server.maildir("bob"));
    assert_eq!(inbox.len(), 2);
    let second = String::from_utf8_lossy(&inbox[1]).into_owned();
    assert!(
        second.contains("atsms=policy reason=\"replayed\""),
        "{second}"
    );
}

#[test]
fn stdio_runs_share_the_replay_file() {
    let world = VectorWorld::start();
    let root = support::public_tempdir();
    let config = root.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[lmtp]\nmaildir = \"{r}/%d/%n/Maildir\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\n\n[store]\nreplay_file = \"{r}/replay\"\n",
            world.resolver_toml(),
            r = root.path().display()
        ),
    )
    .unwrap();
    let signed = world.sign_now(
        ALICE,
        b"From: Alice <alice@alice.example.com>\r\nSubject: piped twice\r\n\r\nhi\r\n",
    );
    let mut session =
        b"LHLO exim.test\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n"
            .to_vec();
    session.extend(dot_stuffed(&signed));
    session.extend_from_slice(b"QUIT\r\n");
    for _ in 0..2 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
            .args(["serve", "--stdio", "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&session).unwrap();
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert!(
            child.wait().unwrap().success() && out.contains(" Saved"),
            "{out}"
        );
    }
    let inbox = RunningLmtp::new_files(&root.path().join("mx.example.net/bob/Maildir"));
    let texts: Vec<String> = inbox
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert_eq!(
        texts.iter().filter(|t| t.contains("atsms=pass")).count(),
        1,
        "{texts:?}"
    );
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("reason=\"replayed\""))
            .count(),
        1,
        "{texts:?}"
    );
}

// The shared Redis store was trusted blindly.

#[tokio::test]
async fn a_document_written_into_redis_without_the_fleet_key_is_ignored() {
    use atsms_milter::infra::store::SharedStore;
    let redis = support::redis::Redis::start();
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("fleet.key");
    std::fs::write(&key_file, [42u8; 32]).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    // The attacker writes a document for alice holding their own key.
    let attacker = SigningKey::generate(Alg::Es256k).unwrap();
    let forged_doc = serde_json::json!({
        "fetched": atsms_milter::infra::clock::unix_now(),
        "source": "https://plc.directory/x",
        "body": document(ALICE, &attacker, None),
    });
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("atsms:did:{ALICE}"))
        .arg(forged_doc.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let store = Arc::new(SharedStore::new(&redis.url(), &key_file).unwrap());
    let identity = IdentityResolver::new(&world.resolver_config(), &CacheConfig::default())
        .unwrap()
        .with_shared_store(Some(store));
    let v = Verifier::new(Arc::new(identity), Duration::from_secs(5));
    let forged =
        support::signing::signed_message(&attacker, &format!("{ALICE}#atproto"), world.now());
    let verdict = support::signing::verify_at(&v, &forged, world.now())
        .await
        .remove(0);
    assert_eq!(verdict.result, AuthResult::Fail, "{:?}", verdict.reason);
    assert_eq!(
        world.plc.request_count(),
        1,
        "the real document was fetched instead"
    );
}

#[test]
fn a_redis_off_loopback_needs_a_fleet_key_and_rediss_works() {
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(["check-config", "--config"])
        .arg({
            let path = std::env::temp_dir().join(format!("r10-{}.toml", std::process::id()));
            std::fs::write(&path, "[store]\nredis = \"redis://redis.example:6379/\"\n").unwrap();
            path
        })
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.key_file"));

    // TLS: a Redis speaking only TLS, its certificate from a CA the daemon is told to trust.
    let world = VectorWorld::start();
    let redis = support::redis::Redis::start_tls();
    let port = free_port();
    let dir = support::public_tempdir();
    let key_file = dir.path().join("fleet.key");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let config = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n[store]\nredis = \"rediss://localhost:{}/\"\nkey_file = \"{}\"\n",
        world.resolver_toml(),
        redis.port,
        key_file.display()
    );
    let ca = redis.ca_file();
    let daemon = Daemon::start_with_env(&config, port, &[("SSL_CERT_FILE", &ca)]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = support::milter::open_client(("127.0.0.1", port)).await;
        let message = std::fs::read(envelope_vector("k256-multikey-pass.eml")).unwrap();
        support::milter::send(&mut conn, &message).await;
    });
    let stored = redis.cli(&["GET", &format!("atsms:did:{ALICE}")]);
    assert!(
        stored.len() > 64 && stored.contains('.'),
        "{stored}\n{}",
        daemon.log()
    );
    assert!(
        stored.contains(ALICE),
        "a sealed document, shared over TLS: {stored}"
    );
}
