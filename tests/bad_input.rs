//! Hostile and broken input: each case ends in a clear result with a reason, within the
//! resolver's time limit, without a panic or unbounded memory.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use atsms_milter::atproto::identity::DocumentError;
use atsms_milter::atproto::identity::IdentityError;
use atsms_milter::atproto::identity::IdentityResolver;
use atsms_milter::atproto::identity::Upstream;
use atsms_milter::format::crypto::Alg;
use atsms_milter::format::crypto::SignatureError;
use atsms_milter::format::crypto::SigningKey;
use atsms_milter::format::envelope::AuthResult;
use atsms_milter::format::message::read_message;
use atsms_milter::infra::config::CacheConfig;
use atsms_milter::infra::config::ResolverConfig;
use atsms_milter::verification::verify::MAX_SIGNATURES;
use atsms_milter::verification::verify::Reason;
use atsms_milter::verification::verify::Verifier;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::io::Write;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use support::daemon::Daemon;
use support::dns::Answer;
use support::dns::DnsServer;
use support::http::HttpServer;
use support::http::Reply;
use support::postfix::free_port;
use support::signing::NOW;
use support::signing::document;
use support::signing::signed_message;
use support::signing::verify_at;
use support::signing::verify_first;
use support::vectors::VectorWorld;

fn envelope_vector(name: &str) -> std::path::PathBuf {
    support::test_data("envelope").join(name)
}

fn verifier(config: &ResolverConfig) -> Verifier {
    let resolver = IdentityResolver::new(config, &CacheConfig::default()).unwrap();
    Verifier::new(Arc::new(resolver), config.timeout())
}

fn vector_bytes(name: &str) -> Vec<u8> {
    std::fs::read(support::test_data("envelope").join(name)).unwrap()
}

/// The first field of a vector file (the AT-SMS-Signature, folded), and the rest.
fn split_first_field(message: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut end = 0;
    loop {
        let next = end + message[end..].iter().position(|b| *b == b'\n').unwrap() + 1;
        end = next;
        if !matches!(message[end], b' ' | b'\t') {
            return (message[..end].to_vec(), message[end..].to_vec());
        }
    }
}

#[tokio::test]
async fn ten_thousand_signatures() {
    let world = VectorWorld::start();
    let verifier = verifier(&world.resolver_config());
    let original = vector_bytes("k256-multikey-pass.eml");
    let (field, rest) = split_first_field(&original);
    let mut message = field.repeat(10_000);
    message.extend_from_slice(&rest);
    let started = Instant::now();
    let verdicts = verify_at(&verifier, &message, world.now()).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(verdicts.len(), 10_000);
    assert!(
        verdicts[..MAX_SIGNATURES]
            .iter()
            .all(|v| v.result == AuthResult::Pass)
    );
    assert!(
        verdicts[MAX_SIGNATURES..]
            .iter()
            .all(|v| v.result == AuthResult::Permerror
                && v.reason == Some(Reason::TooManySignatures)
                && v.did.as_deref() == Some("did:plc:ofurdhfyhjhgomvfygxergep"))
    );
    assert_eq!(world.plc.request_count(), 1, "one DID fetched once");
}

#[tokio::test]
async fn gigantic_unsigned_header_field_and_body() {
    let world = VectorWorld::start();
    let verifier = verifier(&world.resolver_config());
    let original = vector_bytes("k256-multikey-pass.eml");
    let (field, rest) = split_first_field(&original);
    let mut message = field;
    message.extend_from_slice(b"X-Huge: ");
    for _ in 0..100_000 {
        message.extend_from_slice(b"0123456789012345678901234567890123456789\r\n\t");
    }
    message.extend_from_slice(b"end\r\n");
    message.extend_from_slice(&rest);
    let verdicts = verify_at(&verifier, &message, world.now()).await;
    assert_eq!(
        verdicts[0].result,
        AuthResult::Pass,
        "{:?}",
        verdicts[0].reason
    );
    // Over the header section limit: a clear error, not unbounded memory.
    let mut over = b"X-Huge: ".to_vec();
    over.resize(17 * 1024 * 1024, b'x');
    let err = read_message(&over[..]).unwrap_err();
    assert!(
        matches!(
            err,
            atsms_milter::format::message::ReadError::HeaderTooLarge
        ),
        "{err}"
    );
}

#[tokio::test]
async fn truncated_and_mangled_tokens_are_permerror() {
    let world = VectorWorld::start();
    let verifier = verifier(&world.resolver_config());
    let original = String::from_utf8(vector_bytes("k256-multikey-pass.eml")).unwrap();
    let (field, rest) = split_first_field(original.as_bytes());
    let field = String::from_utf8(field).unwrap();
    let start = field.find("t=").unwrap() + 2;
    let token: String = field[start..]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let rest = String::from_utf8(rest).unwrap();
    let prefix = &field[..start];
    let claims_end = token.rfind('.').unwrap();
    // Cuts inside the header and claims parts: the token cannot be read.
    for cut in (0..claims_end).step_by(7) {
        let message = format!("{prefix}{}\r\n{rest}", &token[..cut]);
        let v = verify_at(&verifier, message.as_bytes(), world.now()).await;
        assert_eq!(
            v[0].result,
            AuthResult::Permerror,
            "cut at {cut}: {:?}",
            v[0].reason
        );
        assert!(v[0].reason.is_some());
    }
    // A signature cut to 63 bytes (84 base64url characters) is readable but does not verify.
    let signature_start = claims_end + 1;
    assert_eq!(token.len() - signature_start, 86);
    let message = format!("{prefix}{}\r\n{rest}", &token[..signature_start + 84]);
    let v = verify_at(&verifier, message.as_bytes(), world.now()).await;
    assert_eq!(v[0].result, AuthResult::Fail);
    assert_eq!(
        v[0].reason,
        Some(Reason::Signature(SignatureError::WrongLength))
    );
    for mangled in [
        token.replace('e', "*"),
        format!("{token}=="),
        format!("{token}.x"),
        token.replacen('.', "", 1),
    ] {
        let message = format!("{prefix}{mangled}\r\n{rest}");
        let v = verify_at(&verifier, message.as_bytes(), world.now()).await;
        assert_eq!(v[0].result, AuthResult::Permerror, "{mangled}");
    }
}

#[tokio::test]
async fn ten_megabyte_did_document_is_refused() {
    let did = "did:plc:ofurdhfyhjhgomvfygxergep";
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let padding = "x".repeat(10 * 1024 * 1024);
    let big = document(did, &key, Some("https://pds.example.net")).replace(
        "\"alsoKnownAs\":[]",
        &format!("\"alsoKnownAs\":[\"{padding}\"]"),
    );
    let plc = HttpServer::start(Arc::new(move |_: &str| Reply::json(200, big.clone())));
    let config = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        ..Default::default()
    };
    let v = verify_at(
        &verifier(&config),
        &signed_message(&key, &format!("{did}#atproto"), NOW),
        NOW,
    )
    .await;
    assert_eq!(v[0].result, AuthResult::Permerror);
    assert_eq!(
        v[0].reason,
        Some(Reason::Identity(IdentityError::TooLarge(Upstream::Plc)))
    );
}

#[tokio::test]
async fn document_for_another_did_is_refused() {
    let did = "did:plc:ofurdhfyhjhgomvfygxergep";
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let other = document(
        "did:plc:hxdv4c2etoo2mbhg4alzhnno",
        &key,
        Some("https://pds.example.net"),
    );
    let plc = HttpServer::start(Arc::new(move |_: &str| Reply::json(200, other.clone())));
    let config = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        ..Default::default()
    };
    let v = verify_at(
        &verifier(&config),
        &signed_message(&key, &format!("{did}#atproto"), NOW),
        NOW,
    )
    .await;
    assert_eq!(v[0].result, AuthResult::Permerror);
    assert_eq!(
        v[0].reason,
        Some(Reason::Identity(IdentityError::Document(
            DocumentError::OtherDid
        )))
    );
}

/// did:web names a host the attacker chooses; here its DNS points at this very machine.
#[tokio::test]
async fn did_web_host_resolving_to_loopback_is_refused_unless_allowed() {
    let key = SigningKey::generate(Alg::Es256).unwrap();
    for (name, ip) in [
        ("loop.example.com", Ipv4Addr::LOCALHOST),
        ("meta.example.com", Ipv4Addr::new(169, 254, 169, 254)),
        ("ten.example.com", Ipv4Addr::new(10, 0, 0, 1)),
    ] {
        let did = format!("did:web:{name}");
        let dns = DnsServer::start(HashMap::from([(name.to_string(), vec![Answer::A(ip)])]));
        let config = ResolverConfig {
            dns_servers: vec![dns.server_arg().parse().unwrap()],
            timeout: std::num::NonZeroU64::new(2).unwrap(),
            ..Default::default()
        };
        let started = Instant::now();
        let v = verify_at(
            &verifier(&config),
            &signed_message(&key, &format!("{did}#atproto"), NOW),
            NOW,
        )
        .await;
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(
            v[0].result,
            AuthResult::Permerror,
            "{name}: {:?}",
            v[0].reason
        );
        assert!(
            matches!(
                v[0].reason,
                Some(Reason::Identity(IdentityError::Refused(_)))
            ),
            "{name}: {:?}",
            v[0].reason
        );
    }
}

#[tokio::test]
async fn did_web_on_localhost_with_a_port_passes_in_test_setups_only() {
    let key = SigningKey::generate(Alg::Es256).unwrap();
    let slot: Arc<std::sync::OnceLock<String>> = Arc::new(std::sync::OnceLock::new());
    let served = slot.clone();
    let key_for_server = key.clone();
    let web = HttpServer::start(Arc::new(move |target: &str| {
        assert_eq!(target, "/.well-known/did.json");
        Reply::json(
            200,
            document(
                served.get().unwrap(),
                &key_for_server,
                Some("https://pds.example.net"),
            ),
        )
    }));
    let did = format!("did:web:localhost%3A{}", web.addr.port());
    slot.set(did.clone()).unwrap();
    let message = signed_message(&key, &format!("{did}#atproto"), NOW);
    let allowed = ResolverConfig {
        allow_private_addresses: true,
        ..Default::default()
    };
    let v = verify_at(&verifier(&allowed), &message, NOW).await;
    assert_eq!(v[0].result, AuthResult::Pass, "{:?}", v[0].reason);
    assert_eq!(v[0].aligned(), Some(false));
    let v = verify_at(&verifier(&ResolverConfig::default()), &message, NOW).await;
    assert_eq!(v[0].result, AuthResult::Permerror);
    assert_eq!(
        web.request_count(),
        1,
        "without the flag nothing is fetched"
    );
}

#[tokio::test]
async fn pds_at_a_link_local_address_is_not_contacted() {
    let did = "did:plc:hxdv4c2etoo2mbhg4alzhnno";
    let key = SigningKey::generate(Alg::Es256).unwrap();
    let doc = document(did, &key, Some("https://169.254.169.254"));
    let plc = HttpServer::start(Arc::new(move |_: &str| Reply::json(200, doc.clone())));
    let config = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        ..Default::default()
    };
    let kid = format!("at://{did}/at.atsms.x509/{}", "ab".repeat(32));
    let v = verify_at(&verifier(&config), &signed_message(&key, &kid, NOW), NOW).await;
    assert_eq!(v[0].result, AuthResult::Permerror);
    assert_eq!(
        v[0].reason,
        Some(Reason::Identity(IdentityError::Refused(Upstream::Pds)))
    );
}

#[tokio::test]
async fn an_unresolvable_plc_directory_is_temperror_not_permerror() {
    let dns = DnsServer::start(HashMap::new()); // NXDOMAIN for every name
    let config = ResolverConfig {
        plc_urls: vec!["https://plc.directory.example.com".parse().unwrap()],
        dns_servers: vec![dns.server_arg().parse().unwrap()],
        ..Default::default()
    };
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let v = verify_at(
        &verifier(&config),
        &signed_message(&key, "did:plc:ofurdhfyhjhgomvfygxergep#atproto", NOW),
        NOW,
    )
    .await;
    assert_eq!(v[0].result, AuthResult::Temperror, "{:?}", v[0].reason);
    assert_eq!(
        v[0].reason,
        Some(Reason::Identity(IdentityError::Unavailable(Upstream::Plc)))
    );
}

// Memory from attacker input.

#[test]
fn a_header_section_of_ten_megabytes_is_refused_in_bounded_memory() {
    let world = VectorWorld::start();
    let root = support::public_tempdir();
    let port = free_port();
    let daemon = Daemon::start(
        &world.lmtp_daemon_config(&format!("inet:127.0.0.1:{port}"), root.path(), "", ""),
        port,
    );
    let before = daemon.peak_rss_kib();
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
    let grown = daemon.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 40 * 1024,
        "peak RSS grew by {grown} KiB for a 10 MB header section"
    );
}

#[tokio::test]
async fn the_identity_cache_is_bounded_by_bytes() {
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

// One accept() error (EMFILE) stopped the daemon.

#[test]
fn running_out_of_descriptors_does_not_stop_the_daemon() {
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
        let message = std::fs::read(envelope_vector("no-signature-none.eml")).unwrap();
        let (_, status) = support::milter::send(&mut conn, &message).await;
        assert_eq!(status, indymilter_test::Status::Continue);
    });
    assert!(daemon.log().contains("accept failed"), "{}", daemon.log());
}

// What one listener's clients can make the daemon hold (the Exim scanner and the milter are
// reached by whoever can connect to their ports, local users included).

/// An Exim scanner request names no `Rcpt:` (the judge once indexed the first recipient and
/// panicked), and another sends a first mbox line of 100 MB (it was held whole).
#[test]
fn the_exim_scanner_answers_any_request_and_holds_no_endless_line() {
    let world = VectorWorld::start();
    let root = support::public_tempdir();
    let (lmtp, exim) = (free_port(), free_port());
    let daemon = Daemon::start(
        &world.lmtp_daemon_config(
            &format!("inet:127.0.0.1:{lmtp}"),
            root.path(),
            &format!("[exim]\nlisten = \"inet:127.0.0.1:{exim}\"\nmax_connections = 2\n"),
            "",
        ),
        exim,
    );
    let scan = |head: &str, body: &mut dyn FnMut(&mut std::net::TcpStream)| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", exim)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.write_all(head.as_bytes()).unwrap();
        body(&mut stream);
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    };
    let message = std::fs::read(envelope_vector("no-signature-none.eml")).unwrap();
    let mbox = [
        b"From x@y.example Mon Dec  7 09:00:00 2026\n".as_slice(),
        &message,
    ]
    .concat();
    let answer = scan(
        &format!(
            "CHECK RSPAMC/1.3\r\nContent-length: {}\r\nQueue-Id: 1abc\u{1b}[2J\r\nFrom: <x@y.example>\r\n\r\n",
            mbox.len()
        ),
        &mut |s| s.write_all(&mbox).unwrap(),
    );
    assert!(answer.starts_with("RSPAMD/1.3 0 EX_OK"), "{answer}");
    assert!(answer.contains("atsms=none"), "{answer}");
    // The client's queue id, escaped in the log (it could drive a terminal or forge a line).
    let log = daemon.log_with("atsms=none");
    assert!(log.contains("1abc\\u{1b}[2J: atsms=none"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");

    let before = daemon.peak_rss_kib();
    let line = 100 * 1024 * 1024;
    let rest = [&b"\n"[..], &message].concat();
    let answer = scan(
        &format!(
            "CHECK RSPAMC/1.3\r\nContent-length: {}\r\nRcpt: <bob@mx.example.net>\r\n\r\n",
            line + rest.len()
        ),
        &mut |s| {
            let chunk = vec![b'x'; 1024 * 1024];
            for _ in 0..100 {
                s.write_all(&chunk).unwrap();
            }
            s.write_all(&rest).unwrap();
        },
    );
    assert!(answer.starts_with("RSPAMD/1.3 0 EX_OK"), "{answer}");
    let grown = daemon.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 20 * 1024,
        "peak RSS grew by {grown} KiB for a 100 MB mbox line"
    );
    assert!(!daemon.log().contains("internal error"), "{}", daemon.log());
    // Past exim.max_connections, each connection is closed; that is said once a minute.
    let connect = || {
        let s = std::net::TcpStream::connect(("127.0.0.1", exim)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        s
    };
    // Whether the daemon keeps a connection (waits for its request) or closed it at once.
    let kept = |s: &mut std::net::TcpStream| !matches!(s.read(&mut [0u8; 1]), Ok(0));
    // Two holders the daemon keeps: a connection closed at once (the last scan's place not
    // yet given back) is replaced.
    let mut holders = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while holders.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the holders never took the scans"
        );
        let mut holder = connect();
        if kept(&mut holder) {
            holders.push(holder);
        }
    }
    // Every other connection is closed at once.
    for n in 0..300 {
        assert!(
            !kept(&mut connect()),
            "connection {n} past the two was kept"
        );
    }
    drop(holders);
    let log = daemon.log_with("more than exim.max_connections");
    assert_eq!(
        log.matches("more than exim.max_connections").count(),
        1,
        "{log}"
    );
}

/// 200 milter connections each stop one byte short of a 1 MiB packet: together they may
/// hold at most `milter::bounds::MAX_HELD` (64 MiB); the others are closed at once, and the
/// milter serves the next MTA as before. (That a packet begun gets 30 s to finish is a unit
/// test of `milter::bounds`, on a paused clock.)
#[test]
fn unfinished_milter_packets_hold_bounded_memory() {
    let world = VectorWorld::start();
    let root = support::public_tempdir();
    let (milter, lmtp) = (free_port(), free_port());
    let daemon = Daemon::start(
        &world.lmtp_daemon_config(
            &format!("inet:127.0.0.1:{lmtp}"),
            root.path(),
            &format!("[milter]\nlisten = \"inet:127.0.0.1:{milter}\"\n"),
            "",
        ),
        milter,
    );
    let before = daemon.peak_rss_kib();
    let almost = vec![b'B'; 1024 * 1024 - 2];
    let mut held = Vec::new();
    let mut closed = 0;
    for _ in 0..200 {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", milter)).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        // A write to a connection already closed may fail: it is counted below.
        let _ = s
            .write_all(&(1024u32 * 1024 - 1).to_be_bytes())
            .and_then(|()| s.write_all(&almost));
        held.push(s);
    }
    // Those past the bound were closed by the daemon: reading them ends at once, where
    // reading one it holds waits.
    std::thread::sleep(Duration::from_millis(500));
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let mut byte = [0u8; 1];
        match s.read(&mut byte) {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            _ => closed += 1,
        }
    }
    assert!(
        (120..=150).contains(&closed),
        "{closed} of 200 closed; 64 MiB holds about 64 of them"
    );
    let grown = daemon.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 110 * 1024,
        "peak RSS grew by {grown} KiB for 200 unfinished 1 MiB packets"
    );
    // Said, once for all of them.
    let log = daemon.log_with("unfinished packets hold more than 64 MiB");
    assert_eq!(log.matches("unfinished packets hold").count(), 1, "{log}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = support::milter::open_client(("127.0.0.1", milter)).await;
        let message = std::fs::read(envelope_vector("no-signature-none.eml")).unwrap();
        let (_, status) = support::milter::send(&mut conn, &message).await;
        assert_eq!(status, indymilter_test::Status::Continue);
    });
    assert!(!daemon.log().contains("internal error"), "{}", daemon.log());
}
