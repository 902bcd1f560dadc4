//! Regressions for the hostile review of the first stage: one test (or more) per finding, each
//! named by its number, black-box where it can be (the command line, sockets, the daemon, real
//! Postfix, OpenDKIM and Redis). Each fails against the first-stage binary.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atsms_milter::config::{Action, CacheConfig, PolicyConfig, ResolverConfig};
use atsms_milter::crypto::{Alg, SigningKey};
use atsms_milter::envelope::AuthResult;
use atsms_milter::identity::{IdentityError, IdentityResolver, Upstream};
use atsms_milter::verify::{Reason, Verifier};
use serde_json::Value;
use support::daemon::Daemon;
use support::http::{HttpServer, Reply};
use support::lmtp::{RunningLmtp, dot_stuffed};
use support::postfix::{Postfix, free_port};
use support::signing::{NOW, document, signed_message, verify_first};
use support::vectors::VectorWorld;

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

fn vector(name: &str) -> std::path::PathBuf {
    support::test_data("envelope").join(name)
}

/// `atsms-milter verify --json` against the vector world (or `dns` instead of its DNS).
fn verify_json(world: &VectorWorld, file: &std::path::Path, dns: Option<String>) -> Value {
    let mut args = vec!["verify".to_string(), "--json".into()];
    let mut world_args = world.cli_args();
    if let Some(dns) = dns {
        let at = world_args.iter().position(|a| a == "--dns-server").unwrap();
        world_args[at + 1] = dns;
    }
    args.extend(world_args);
    args.push(file.display().to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(&args)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
}

fn policy() -> PolicyConfig {
    PolicyConfig {
        authserv_id: Some("mx.test".parse().unwrap()),
        trusted_networks: vec![],
        ..PolicyConfig::default()
    }
}

fn verifier(config: ResolverConfig) -> Verifier {
    let timeout = config.timeout();
    Verifier::new(
        Arc::new(IdentityResolver::new(&config, &CacheConfig::default()).unwrap()),
        timeout,
    )
}

// 1. Any DID could make any From address "aligned".

#[test]
fn r01_a_did_document_alone_never_aligns_a_domain() {
    let world = VectorWorld::start();
    // The document names smtp://bank.example, which publishes no _atsms-mail record; and a
    // mailto: address plays no part.
    for name in [
        "mailbox-unvouched-host-pass.eml",
        "mailto-service-unaligned-pass.eml",
    ] {
        let v = verify_json(&world, &vector(name), None);
        assert_eq!(
            (v[0]["result"].as_str(), v[0]["aligned"].as_bool()),
            (Some("pass"), Some(false)),
            "{name}: {v}"
        );
    }
    // The DID's own mailbox at a host that vouches is aligned…
    let v = verify_json(&world, &vector("mailbox-address-pass.eml"), None);
    assert_eq!(v[0]["aligned"], true, "{v}");
    // …and not once the host stops publishing its record.
    let handles_only = support::dns::DnsServer::start(
        [(
            "_atproto.alice.example.com".to_string(),
            vec![support::dns::Answer::Txt(format!("did={ALICE}"))],
        )]
        .into_iter()
        .collect(),
    );
    let v = verify_json(
        &world,
        &vector("mailbox-address-pass.eml"),
        Some(handles_only.server_arg()),
    );
    assert_eq!(v[0]["aligned"], false, "{v}");
}

// 2. From parsed leniently (a parser differential).

#[test]
fn r02_from_must_be_one_strict_mailbox() {
    let world = VectorWorld::start();
    for name in [
        "from-display-name-address-fail.eml",
        "from-two-angle-addresses-fail.eml",
    ] {
        let v = verify_json(&world, &vector(name), None);
        assert_eq!(v[0]["result"], "fail", "{name}: {v}");
        assert_eq!(v[0]["reason"], "From is not one mailbox", "{name}: {v}");
    }
    let v = verify_json(&world, &vector("from-quoted-local-part-pass.eml"), None);
    assert_eq!(v[0]["result"], "pass", "{v}");
}

// 3. Duplicated singleton fields kept `pass`.

#[test]
fn r03_duplicated_singleton_fields_fail_and_are_never_signed() {
    let world = VectorWorld::start();
    for (name, reason) in [
        ("duplicate-reply-to-fail.eml", "duplicate reply-to"),
        ("duplicate-content-type-fail.eml", "duplicate content-type"),
    ] {
        let v = verify_json(&world, &vector(name), None);
        assert_eq!(
            (v[0]["result"].as_str(), v[0]["reason"].as_str()),
            (Some("fail"), Some(reason)),
            "{v}"
        );
    }
    // The signer refuses such a message, and over-signs: an added To breaks the hash.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    std::fs::write(&key, world.keys[ALICE]["pkcs8_pem"].as_str().unwrap()).unwrap();
    let kid = world.keys[ALICE]["kid"].as_str().unwrap().to_string();
    let sign = |message: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
            .args(["sign", "--key"])
            .arg(&key)
            .args(["--kid", &kid, "--now", &world.now().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(message).unwrap();
        child.wait_with_output().unwrap()
    };
    let twice = b"From: alice@alice.example.com\r\nSubject: a\r\nSubject: b\r\n\r\nx\r\n";
    let out = sign(twice);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("duplicate subject"));
    let once =
        b"From: alice@alice.example.com\r\nTo: bob@mx.example.net\r\nSubject: a\r\n\r\nx\r\n";
    let out = sign(once);
    assert!(out.status.success());
    let signed = String::from_utf8(out.stdout).unwrap();
    let added = signed.replacen("\r\nFrom:", "\r\nTo: eve@evil.example\r\nFrom:", 1);
    let file = dir.path().join("added.eml");
    std::fs::write(&file, added).unwrap();
    let v = verify_json(&world, &file, None);
    assert_eq!(v[0]["result"], "fail", "{v}");
}

// 4. Forged Authentication-Results escaped removal.

#[tokio::test]
async fn r04_forged_results_are_found_by_the_grammar() {
    let world = VectorWorld::start();
    let milter =
        support::milter::RunningMilter::start(world.resolver_config(), policy(), world.now()).await;
    let forged = [
        "Authentication-Results: (a\\)b) mx.test; atsms=pass header.d=\"did:plc:forged\"\r\n",
        "Authentication-Results: \"mx\\.test\"; atsms=pass\r\n",
        "Authentication-Results: mx.test.; atsms=pass\r\n",
        "X-Innocent: x\rAuthentication-Results: mx.test; atsms=pass\r\n",
        "Authentication-Results: other.example; dkim=pass\r\n",
    ]
    .concat();
    let message = [
        forged.as_bytes(),
        &std::fs::read(vector("k256-multikey-pass.eml")).unwrap(),
    ]
    .concat();
    let mut conn = support::milter::open_client(milter.addr).await;
    let (actions, _) = support::milter::send(&mut conn, &message).await;
    let deleted: Vec<(String, i32)> = actions
        .iter()
        .filter_map(|a| match a {
            indymilter_test::EomAction::DeleteHeader { name, index } => {
                Some((name.to_str().unwrap().to_string(), *index))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted,
        vec![
            ("X-Innocent".to_string(), 1),
            ("Authentication-Results".to_string(), 3),
            ("Authentication-Results".to_string(), 2),
            ("Authentication-Results".to_string(), 1),
        ],
        "every spelling of our id goes, other.example's stays"
    );
    milter.stop().await;
}

// 6. The documented milter order deleted OpenDKIM's results.

#[test]
fn r06_the_documented_milter_order_keeps_opendkims_results() {
    let world = VectorWorld::start();
    let opendkim = support::opendkim::OpenDkim::start("mx.test");
    let port = free_port();
    let _daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n",
            world.resolver_toml()
        ),
        port,
    );
    let ours = format!("inet:127.0.0.1:{port}");
    let theirs = format!("inet:127.0.0.1:{}", opendkim.port);
    for (milters, both) in [
        (format!("{ours}, {theirs}"), true),
        (format!("{theirs}, {ours}"), false),
    ] {
        let postfix = Postfix::start(&["bob"], &format!("smtpd_milters = {milters}"));
        let signed = world.sign_now(
            ALICE,
            format!("From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: {milters}\r\n\r\nhi\r\n").as_bytes(),
        );
        let (transcript, ok) =
            postfix.swaks("alice@alice.example.com", "bob@mx.example.net", &signed);
        assert!(ok, "{transcript}");
        let delivered = String::from_utf8(postfix.wait_for_mail("bob", 1).remove(0)).unwrap();
        let head = delivered.split("\n\n").next().unwrap();
        assert!(head.contains("atsms=pass"), "{head}");
        // Documented (atsms-milter first): OpenDKIM's result reaches the mailbox too. The
        // other way round, OpenDKIM's field is ours-by-id when we see it, and goes.
        assert_eq!(
            head.contains("dkim="),
            both,
            "smtpd_milters = {milters}:\n{head}"
        );
    }
}

// 7. SSRF through the PLC directory's host.

#[tokio::test]
async fn r07_urls_on_the_plc_host_are_checked_like_any_other() {
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
        let v = verifier(ResolverConfig {
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
async fn r07_reasons_name_no_http_status() {
    let key = SigningKey::generate(Alg::Es256).unwrap();
    let pds = HttpServer::start(Arc::new(|_: &str| Reply::json(503, "{}")));
    let doc = document("did:plc:hxdv4c2etoo2mbhg4alzhnno", &key, Some(&pds.url()));
    let plc = HttpServer::start(Arc::new(move |_: &str| Reply::json(200, doc.clone())));
    let v = verifier(ResolverConfig {
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

// 8. Replay detection bypassed by bob+anything@, and forgotten between --stdio runs.

#[tokio::test]
async fn r08_a_replay_to_another_spelling_of_the_mailbox_is_a_replay() {
    let world = VectorWorld::start();
    let server =
        RunningLmtp::start(world.resolver_config(), policy(), world.now(), |_, _| {}).await;
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
fn r08_stdio_runs_share_the_replay_file() {
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

// 9. Memory from attacker input.

/// The daemon's peak resident set, in KiB (VmHWM).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn r09_a_header_section_of_ten_megabytes_is_refused_in_bounded_memory() {
    let world = VectorWorld::start();
    let root = support::public_tempdir();
    let port = free_port();
    let daemon = Daemon::start(
        &world.lmtp_daemon_config(&format!("inet:127.0.0.1:{port}"), root.path(), "", ""),
        port,
    );
    let before = peak_rss_kib(daemon.pid());
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(b"LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .unwrap();
    let mut lines = String::new();
    stream
        .write_all(&b"a:\r\n".repeat(10 * 1024 * 1024 / 4))
        .unwrap();
    stream.write_all(b"\r\nbody\r\n.\r\nQUIT\r\n").unwrap();
    stream.read_to_string(&mut lines).unwrap();
    assert!(
        lines.contains("552 5.3.4 <bob@mx.example.net> header section too large"),
        "{lines}"
    );
    let grown = peak_rss_kib(daemon.pid()).saturating_sub(before);
    assert!(
        grown < 40 * 1024,
        "peak RSS grew by {grown} KiB for a 10 MB header section"
    );
}

#[tokio::test]
async fn r09_the_identity_cache_is_bounded_by_bytes() {
    // 300 DIDs, each with a 44 KB document (a long alsoKnownAs list), into a 2 MiB cache.
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let k = key.clone();
    let plc = HttpServer::start(Arc::new(move |t: &str| {
        let did = t.trim_start_matches('/');
        let mut doc: Value = serde_json::from_str(&document(did, &k, None)).unwrap();
        doc["alsoKnownAs"] = Value::Array(
            (0..600)
                .map(|i| Value::String(format!("at://padding-{i:050}.example")))
                .collect(),
        );
        Reply::json(200, doc.to_string())
    }));
    let config = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        // 300 new DIDs one after another: not a test of the directory's budget.
        max_requests_per_second: std::num::NonZeroU32::new(100_000).unwrap(),
        ..Default::default()
    };
    let cache = CacheConfig {
        max_bytes: 2 * 1024 * 1024,
        ..CacheConfig::default()
    };
    let identity = Arc::new(IdentityResolver::new(&config, &cache).unwrap());
    let v = Verifier::new(identity.clone(), Duration::from_secs(5));
    for n in 0..300 {
        let did = support::ids::plc_did(n);
        let verdict = verify_first(&v, &support::signing::signed(&key, &did)).await;
        assert_eq!(verdict.result, AuthResult::Pass, "{:?}", verdict.reason);
    }
    let stats = identity.stats().await;
    assert!(
        stats.bytes <= 2 * 1024 * 1024,
        "{} bytes cached",
        stats.bytes
    );
    assert!(
        stats.document_entries < 300,
        "evicted by bytes: {} left",
        stats.document_entries
    );
}

// 10. The shared Redis store was trusted blindly.

#[tokio::test]
async fn r10_a_document_written_into_redis_without_the_fleet_key_is_ignored() {
    use atsms_milter::store::SharedStore;
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
        "fetched": atsms_milter::clock::unix_now(),
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
fn r10_a_redis_off_loopback_needs_a_fleet_key_and_rediss_works() {
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
        let message = std::fs::read(vector("k256-multikey-pass.eml")).unwrap();
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

// 11. One accept() error (EMFILE) stopped the daemon.

#[test]
fn r11_running_out_of_descriptors_does_not_stop_the_daemon() {
    let world = VectorWorld::start();
    let root = support::public_tempdir();
    let (milter_port, lmtp_port) = (free_port(), free_port());
    let config = world.lmtp_daemon_config(
        &format!("inet:127.0.0.1:{lmtp_port}"),
        root.path(),
        &format!("[milter]\nlisten = \"inet:127.0.0.1:{milter_port}\"\n"),
        "",
    );
    let daemon = Daemon::start_with_nofile(&config, milter_port, 64);
    // Take every descriptor the daemon has, and some: accept() fails with EMFILE.
    let hogs: Vec<_> = (0..80)
        .flat_map(|_| {
            [milter_port, lmtp_port]
                .into_iter()
                .filter_map(|p| std::net::TcpStream::connect(("127.0.0.1", p)).ok())
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    drop(hogs);
    std::thread::sleep(Duration::from_millis(500));
    // Both listeners serve again.
    let mut lmtp = std::net::TcpStream::connect(("127.0.0.1", lmtp_port)).unwrap();
    lmtp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 3];
    lmtp.read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"220");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = support::milter::open_client(("127.0.0.1", milter_port)).await;
        let message = std::fs::read(vector("no-signature-none.eml")).unwrap();
        let (_, status) = support::milter::send(&mut conn, &message).await;
        assert_eq!(status, indymilter_test::Status::Continue);
    });
    assert!(daemon.log().contains("accept failed"), "{}", daemon.log());
}

// 12. Multikey keys must be 33-byte compressed points.

#[tokio::test]
async fn r12_an_uncompressed_multikey_is_permerror() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let mut multikey = vec![0xe7, 0x01];
    multikey.extend(key.public_key().uncompressed_point());
    let multibase = format!("z{}", bs58::encode(multikey).into_string());
    let did = "did:plc:ofurdhfyhjhgomvfygxergep";
    let doc = serde_json::json!({
        "id": did,
        "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": did, "publicKeyMultibase": multibase}],
    })
    .to_string();
    let plc = HttpServer::start(Arc::new(move |_: &str| Reply::json(200, doc.clone())));
    let v = verifier(ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        ..Default::default()
    });
    let verdict = verify_first(&v, &support::signing::signed(&key, did)).await;
    assert_eq!(
        verdict.result,
        AuthResult::Permerror,
        "{:?}",
        verdict.reason
    );
}

// 13. header.d echoed any d= text.

#[test]
fn r13_only_a_valid_did_is_reported() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad-d.eml");
    let d = format!("did:plc:\u{00e9}{}", "x".repeat(3000));
    std::fs::write(
        &file,
        format!("AT-SMS-Signature: v=1; d={d}; t=a.b.c\r\nFrom: a@b.example\r\n\r\nx\r\n"),
    )
    .unwrap();
    let v = verify_json(&world, &file, None);
    assert_eq!(v[0]["result"], "permerror");
    assert_eq!(v[0]["did"], Value::Null, "{v}");
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(["verify", "--authserv-id", "mx.test"])
        .args(world.cli_args())
        .arg(&file)
        .output()
        .unwrap();
    let field = String::from_utf8(out.stdout).unwrap();
    assert!(!field.contains("header.d") && field.len() < 300, "{field}");
}

// 14. The LMTP idle timeout acted as a total DATA timeout; 15. a final line without a newline
// was dropped.

#[tokio::test]
async fn r14_a_slow_steady_sender_is_served_and_a_whole_transfer_is_bounded() {
    let world = VectorWorld::start();
    let server = RunningLmtp::start(
        world.resolver_config(),
        policy(),
        world.now(),
        |config, _| {
            config.idle_timeout = std::num::NonZeroU64::new(2).unwrap();
            config.data_timeout = std::num::NonZeroU64::new(5).unwrap();
        },
    )
    .await;
    // One line a second for 4 seconds: each read within idle_timeout, the whole within
    // data_timeout.
    let mut c = server.client().await;
    c.send(b"LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(4).await;
    c.send(b"Subject: slow\r\n\r\n").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.send(b"line\r\n").await;
    }
    c.send(b".\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    // Steady again, but for longer than data_timeout: 421, and nothing delivered.
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(3).await;
    let started = Instant::now();
    let reply = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.send(b"line\r\n").await;
        if started.elapsed() > Duration::from_secs(4) {
            break c.reply().await;
        }
    };
    assert!(
        reply.starts_with("421 4.4.2") && reply.contains("data timeout"),
        "{reply}"
    );
    assert_eq!(RunningLmtp::new_files(&server.maildir("bob")).len(), 1);
}

#[tokio::test]
async fn r15_a_last_line_without_a_line_end_is_kept() {
    let world = VectorWorld::start();
    let server =
        RunningLmtp::start(world.resolver_config(), policy(), world.now(), |_, _| {}).await;
    let signed = world.sign_at(
        ALICE,
        b"From: Alice <alice@alice.example.com>\r\nSubject: no end\r\n\r\nline one\r\nthe end, without a newline",
        world.now(),
        &[],
    );
    let mut c = server.client().await;
    c.send(
        format!(
            "LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nBDAT {} LAST\r\n",
            signed.len()
        )
        .as_bytes(),
    )
    .await;
    c.send(&signed).await;
    let replies = c.replies(4).await;
    assert!(replies[3].starts_with("250 2.0.0"), "{replies:?}");
    let stored =
        String::from_utf8(RunningLmtp::new_files(&server.maildir("bob")).remove(0)).unwrap();
    assert!(
        stored.ends_with("\n\nline one\nthe end, without a newline"),
        "{stored}"
    );
    assert!(stored.contains("atsms=pass"), "{stored}");
}

// 16. Control characters from MAIL/RCPT, and Unicode case folding onto another mailbox.

#[tokio::test]
async fn r16_control_characters_are_refused_and_no_mailbox_folds_onto_another() {
    let world = VectorWorld::start();
    let server =
        RunningLmtp::start(world.resolver_config(), policy(), world.now(), |_, _| {}).await;
    let mut c = server.client().await;
    c.send(b"LHLO x\r\nMAIL FROM:<a\rb@example>\r\nMAIL FROM:<a\x00b@example>\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob\r@mx.example.net>\r\nRCPT TO:<bob\x00x@mx.example.net>\r\n").await;
    let replies = c.replies(6).await;
    assert!(
        replies[1].starts_with("501 ") && replies[2].starts_with("501 "),
        "{replies:?}"
    );
    assert!(replies[3].starts_with("250 "));
    assert!(
        replies[4].starts_with("501 ") && replies[5].starts_with("501 "),
        "{replies:?}"
    );
    c.send("RCPT TO:<\u{212A}evin@mx.example.net>\r\nDATA\r\n".as_bytes())
        .await;
    c.replies(2).await;
    c.send(&dot_stuffed(b"Subject: kelvin\r\n\r\nhi\r\n")).await;
    assert!(c.reply().await.starts_with("250 "));
    assert!(RunningLmtp::new_files(&server.maildir("\u{212A}evin")).len() == 1);
    assert!(
        !server.maildir("kevin").exists(),
        "kevin's mailbox was not touched"
    );
}

// 17. Maildir delivery followed symlinks.

#[tokio::test]
async fn r17_symlinked_folders_are_refused() {
    let world = VectorWorld::start();
    let junk_policy = PolicyConfig {
        on_fail: Action::Junk,
        ..policy()
    };
    let server =
        RunningLmtp::start(world.resolver_config(), junk_policy, world.now(), |_, _| {}).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let maildir = server.maildir("bob");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::os::unix::fs::symlink(elsewhere.path(), maildir.join(".Junk")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), maildir.join(".Lists")).unwrap();
    let forged = std::fs::read(vector("body-tampered-fail.eml")).unwrap();
    let good = world.sign_at(
        ALICE,
        b"From: Alice <alice@alice.example.com>\r\nSubject: to lists\r\n\r\nhi\r\n",
        world.now(),
        &[],
    );
    let mut c = server.client().await;
    for (message, rcpt) in [
        (&forged, "bob@mx.example.net"),
        (&good, "bob+Lists@mx.example.net"),
    ] {
        c.send(
            format!("LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes(),
        )
        .await;
        c.replies(4).await;
        c.send(&dot_stuffed(message)).await;
        let reply = c.reply().await;
        if rcpt.contains("Lists") {
            // A symlinked .Detail is no folder: the copy goes to INBOX.
            assert!(reply.starts_with("250 "), "{reply}");
        } else {
            assert!(
                reply.starts_with("451 4.3.0"),
                "the symlinked .Junk is refused: {reply}"
            );
        }
    }
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing written elsewhere"
    );
    assert_eq!(RunningLmtp::new_files(&maildir).len(), 1);
}

// 18. A slow did:web host held every fetch permit; one 429 blocked did:plc lookups for an hour.

#[tokio::test]
async fn r18_a_hanging_did_web_host_does_not_starve_did_plc() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let k = key.clone();
    let plc = HttpServer::start(Arc::new(move |t: &str| {
        Reply::json(200, document(t.trim_start_matches('/'), &k, None))
    }));
    let hang = HttpServer::start(Arc::new(|_: &str| Reply::Hang));
    let v = verifier(ResolverConfig {
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
async fn r18_retry_after_is_honoured_no_longer_than_cache_error() {
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

// 19. authserv_id was not validated.

#[test]
fn r19_an_authserv_id_that_would_break_the_field_is_refused() {
    let path = std::env::temp_dir().join(format!("r19-{}.toml", std::process::id()));
    std::fs::write(&path, "[policy]\nauthserv_id = \"mx.test; atsms=pass\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("authserv_id") || err.contains("authserv-id"),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");
}
