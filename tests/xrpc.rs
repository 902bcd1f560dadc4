//! The signing service (XRPC) of the real daemon, called over loopback HTTP with service tokens
//! made here exactly as atproto's `createServiceJwt` makes them: every case of interfaces.md's
//! error table gets its status and error name, the daemon keeps serving, and what it signs
//! verifies (through `sign --remote` and `verify`, the commands).

use atsms_testkit as support;

use std::time::Duration;

use atsms_milter::format::crypto::{Alg, SigningKey, malleate};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use support::daemon::Daemon;
use support::postfix::free_port;
use support::vectors::VectorWorld;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep"; // ES256K, handle alice.example.com
const BOB: &str = "did:plc:hxdv4c2etoo2mbhg4alzhnno"; // ES256, handle bob.example.org
const CAROL: &str = "did:plc:rlb4qa26zfkxwsmeln6fmywp"; // a document, no signing key here
const SERVICE: &str = "did:web:signer.test";
const LXM: &str = "org.atsms-milter.mail.signEnvelope";
/// The method's first name, served for one release as a deprecated alias.
const OLD_LXM: &str = "at.atsms.mail.signEnvelope";

use atsms_milter::infra::clock::unix_now as now;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn vector_key(world: &VectorWorld, did: &str) -> SigningKey {
    SigningKey::from_pkcs8_pem(world.keys[did]["pkcs8_pem"].as_str().unwrap()).unwrap()
}

/// A random `jti` as atproto makes it: 16 bytes in hex.
fn jti() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).unwrap();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The claims of a service token, in the order `createServiceJwt` writes them.
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    exp: i64,
    lxm: Option<&'a str>,
    jti: String,
}

impl<'a> Claims<'a> {
    fn new(iss: &'a str) -> Claims<'a> {
        Claims {
            iss,
            aud: SERVICE,
            exp: now() + 60,
            lxm: Some(LXM),
            jti: jti(),
        }
    }

    fn json(&self) -> String {
        let lxm = self
            .lxm
            .map(|l| format!(",\"lxm\":\"{l}\""))
            .unwrap_or_default();
        format!(
            "{{\"iat\":{},\"iss\":\"{}\",\"aud\":\"{}\",\"exp\":{}{lxm},\"jti\":\"{}\"}}",
            now(),
            self.iss,
            self.aud,
            self.exp,
            self.jti
        )
    }

    /// Signed with `key` under `header` (`{"typ":"JWT","alg":…}` when None).
    fn sign_with(&self, key: &SigningKey, header: Option<&str>) -> String {
        let alg = key.alg().jws_name();
        let header = header
            .map(str::to_string)
            .unwrap_or_else(|| format!("{{\"typ\":\"JWT\",\"alg\":\"{alg}\"}}"));
        let input = format!("{}.{}", b64(header.as_bytes()), b64(self.json().as_bytes()));
        format!("{input}.{}", b64(&key.sign(input.as_bytes())))
    }
}

/// A request body for `from`, hashes made up (the service signs what it is given).
fn body(from: &str) -> String {
    serde_json::json!({"from": from, "h": ["from", "subject", "subject"], "hh": b64(&[1; 32]), "bh": b64(&[2; 32])})
        .to_string()
}

/// One HTTP/1.1 exchange on a fresh connection; returns the status and the JSON answer.
async fn exchange(port: u16, request: Vec<u8>) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    parse_answer(&answer)
}

fn parse_answer(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    let json = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| serde_json::from_str(b).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    (status, json)
}

fn post_request(auth: Option<&str>, body: &str) -> Vec<u8> {
    let auth = auth
        .map(|a| format!("Authorization: Bearer {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /xrpc/{LXM} HTTP/1.1\r\nHost: signer.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{auth}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn post(port: u16, auth: Option<&str>, body: &str) -> (u16, Value) {
    exchange(port, post_request(auth, body)).await
}

async fn get(port: u16, path: &str) -> (u16, Value) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: signer.test\r\nConnection: close\r\n\r\n");
    exchange(port, request.into_bytes()).await
}

fn key_file(world: &VectorWorld, dir: &std::path::Path, did: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("{}.pem", did.replace(':', "_")));
    std::fs::write(&path, world.keys[did]["pkcs8_pem"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// A `[[signing.key]]` table for `did` with `key` (its file written into `dir`), usable by
/// every login.
fn signing_key(dir: &std::path::Path, did: &str, key: &SigningKey) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("{}.pem", did.replace(':', "_")));
    std::fs::write(&path, key.to_pkcs8_pem()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "[[signing.key]]\ndid = \"{did}\"\nkid = \"{did}#atproto\"\nkey_file = \"{}\"\nlogins = [\"*\"]\n\n",
        path.display()
    )
}

/// The daemon with the signing service on a free port, keys for Alice and Bob.
fn service(world: &VectorWorld, dir: &std::path::Path) -> (Daemon, u16) {
    let port = free_port();
    let mut keys = String::new();
    for did in [ALICE, BOB] {
        keys += &format!(
            "[[signing.key]]\ndid = \"{did}\"\nkid = \"{did}#atproto\"\nkey_file = \"{}\"\nlogins = [\"*\"]\n\n",
            key_file(world, dir, did).display()
        );
    }
    let config = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n\n[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\nservice_did = \"{SERVICE}\"\n\n{}\n[log]\nlevel = \"debug\"\n\n[store]\njti_file = \"{}/jti\"\n\n{keys}",
        free_port(),
        world.resolver_toml(),
        dir.display()
    );
    (Daemon::start(&config, port), port)
}

fn assert_error(answer: &(u16, Value), status: u16, name: &str, case: &str) {
    assert_eq!(answer.0, status, "{case}: {answer:?}");
    assert_eq!(answer.1["error"], name, "{case}: {answer:?}");
    assert!(answer.1["message"].is_string(), "{case}: {answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_case_of_the_error_table_gets_its_status_and_name() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = service(&world, dir.path());
    let (alice, bob, carol) = (
        vector_key(&world, ALICE),
        vector_key(&world, BOB),
        vector_key(&world, CAROL),
    );
    let good = body("alice@alice.example.com");
    valid_tokens_on_both_curves(port, &alice, &bob, &good).await;
    each_bad_token_gets_its_status(&world, port, &alice, &carol, &good).await;
    a_jti_works_once(port, &alice, &bob, &good).await;
    bad_bodies_after_authentication(port, &alice).await;
    other_paths_and_methods(port).await;
    let signed =
        format!("xrpc: signed did={ALICE} kid={ALICE}#atproto from=alice@alice.example.com");
    let log = daemon.log_with(&signed);
    assert!(log.contains(&signed), "{log}");
}

async fn valid_tokens_on_both_curves(port: u16, alice: &SigningKey, bob: &SigningKey, good: &str) {
    // Valid, both curves; the answer verifies as a token over what was sent.
    for (did, key, from) in [
        (ALICE, alice, "alice@alice.example.com"),
        (BOB, bob, "bob@bob.example.org"),
    ] {
        let answer = post(
            port,
            Some(&Claims::new(did).sign_with(key, None)),
            &body(from),
        )
        .await;
        assert_eq!(answer.0, 200, "{did}: {answer:?}");
        assert_eq!(answer.1["did"], did);
        assert_eq!(answer.1["kid"], format!("{did}#atproto"));
        let token = answer.1["token"].as_str().unwrap();
        assert_eq!(
            answer.1["signature"],
            format!("v=1; d={did}; t={token}"),
            "unfolded"
        );
        let parsed = atsms_milter::format::envelope::token::parse(token, did).unwrap();
        assert_eq!(parsed.claims.from, from);
        assert_eq!(parsed.claims.hh, [1; 32]);
        assert_eq!(parsed.claims.bh, [2; 32]);
        assert_eq!(parsed.claims.h, ["from", "subject", "subject"]);
        assert_eq!(parsed.claims.exp - parsed.claims.iat, 86_400);
    }
    // A PDS proxying names the bare DID; getServiceAuth may name the service id.
    let mut claims = Claims::new(ALICE);
    claims.aud = "did:web:signer.test#atsms_signer";
    assert_eq!(
        post(port, Some(&claims.sign_with(alice, None)), good)
            .await
            .0,
        200
    );
}

async fn each_bad_token_gets_its_status(
    world: &VectorWorld,
    port: u16,
    alice: &SigningKey,
    carol: &SigningKey,
    good: &str,
) {
    // Alice's token with one claim changed, or under another header.
    let alice_with = |change: &dyn Fn(&mut Claims)| {
        let mut claims = Claims::new(ALICE);
        change(&mut claims);
        Some(claims.sign_with(alice, None))
    };
    let alice_under = |header: &str| Some(Claims::new(ALICE).sign_with(alice, Some(header)));
    let erin = SigningKey::from_pkcs8_pem(
        world.keys["did:plc:lerkoofwvhjrikpmkgu5cy7u"]["pkcs8_pem"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let high_s = {
        let token = Claims::new(ALICE).sign_with(alice, None);
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        format!("{input}.{}", b64(&malleate(Alg::Es256k, &sig)))
    };
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"typ":"JWT","alg":"none"}"#),
        b64(Claims::new(ALICE).json().as_bytes())
    );
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no Authorization", None, 401, "AuthMissing"),
        ("garbage", Some("garbage".into()), 401, "BadJwt"),
        (
            "three parts of garbage",
            Some("a.b.c".into()),
            401,
            "BadJwt",
        ),
        ("alg none", Some(alg_none), 401, "BadJwt"),
        (
            "alg HS256",
            alice_under(r#"{"typ":"JWT","alg":"HS256"}"#),
            401,
            "BadJwt",
        ),
        (
            "an access token",
            alice_under(r#"{"typ":"at+jwt","alg":"ES256K"}"#),
            401,
            "BadJwtType",
        ),
        (
            "a refresh token",
            alice_under(r#"{"typ":"refresh+jwt","alg":"ES256K"}"#),
            401,
            "BadJwtType",
        ),
        (
            "expired",
            alice_with(&|c| c.exp = now() - 5),
            401,
            "JwtExpired",
        ),
        (
            "exp too far ahead",
            alice_with(&|c| c.exp = now() + 3700),
            401,
            "BadJwt",
        ),
        (
            "wrong aud",
            alice_with(&|c| c.aud = "did:web:pds.example.com"),
            401,
            "BadJwtAudience",
        ),
        (
            "another service of ours",
            alice_with(&|c| c.aud = "did:web:signer.test#atproto_pds"),
            401,
            "BadJwtAudience",
        ),
        (
            "wrong lxm",
            alice_with(&|c| c.lxm = Some("com.atproto.repo.createRecord")),
            401,
            "BadJwtLexiconMethod",
        ),
        (
            "missing lxm",
            alice_with(&|c| c.lxm = None),
            401,
            "BadJwtLexiconMethod",
        ),
        (
            "iss with a fragment",
            alice_with(&|c| c.iss = "did:plc:ofurdhfyhjhgomvfygxergep#atproto"),
            401,
            "BadJwtIss",
        ),
        (
            "iss a handle",
            alice_with(&|c| c.iss = "alice.example.com"),
            401,
            "BadJwtIss",
        ),
        (
            "signed by another DID's key",
            Some(Claims::new(ALICE).sign_with(&erin, None)),
            401,
            "BadJwtSignature",
        ),
        ("high-S", Some(high_s), 401, "BadJwtSignature"),
        (
            "iss with no signing key here",
            Some(Claims::new(CAROL).sign_with(carol, None)),
            403,
            "NotAuthorized",
        ),
    ];
    for (case, auth, status, name) in &cases {
        let answer = post(port, auth.as_deref(), good).await;
        assert_error(&answer, *status, name, case);
    }
}

/// A jti once: recorded after the signature verified, so a forged copy cannot burn it.
async fn a_jti_works_once(port: u16, alice: &SigningKey, bob: &SigningKey, good: &str) {
    let claims = Claims::new(ALICE);
    let forged = claims.sign_with(bob, Some(r#"{"typ":"JWT","alg":"ES256K"}"#));
    assert_error(
        &post(port, Some(&forged), good).await,
        401,
        "BadJwtSignature",
        "forged",
    );
    let token = claims.sign_with(alice, None);
    assert_eq!(post(port, Some(&token), good).await.0, 200);
    assert_error(
        &post(port, Some(&token), good).await,
        401,
        "JwtReplayed",
        "replayed",
    );
}

async fn bad_bodies_after_authentication(port: u16, alice: &SigningKey) {
    // Bad bodies, after authentication.
    let auth = || Some(Claims::new(ALICE).sign_with(alice, None));
    for (case, bad) in [
        ("not JSON", "{".to_string()),
        ("no h", serde_json::json!({"from": "alice@alice.example.com", "hh": b64(&[1; 32]), "bh": b64(&[2; 32])}).to_string()),
        ("h without from", serde_json::json!({"from": "alice@alice.example.com", "h": ["subject"], "hh": b64(&[1; 32]), "bh": b64(&[2; 32])}).to_string()),
        ("a short hash", serde_json::json!({"from": "alice@alice.example.com", "h": ["from"], "hh": b64(&[1; 31]), "bh": b64(&[2; 32])}).to_string()),
        ("ttl over a week", serde_json::json!({"from": "alice@alice.example.com", "h": ["from"], "hh": b64(&[1; 32]), "bh": b64(&[2; 32]), "ttl": 604_801}).to_string()),
        ("a display name", body("Alice <alice@alice.example.com>")),
    ] {
        assert_error(&post(port, auth().as_deref(), &bad).await, 400, "InvalidRequest", case);
    }
    let answer = post(port, auth().as_deref(), &body("bob@bob.example.org")).await;
    assert_error(&answer, 400, "UnalignedFrom", "Alice signing as Bob");
    let answer = post(port, auth().as_deref(), &body("alice@evil.example")).await;
    assert_error(&answer, 400, "UnalignedFrom", "Alice at another domain");
}

async fn other_paths_and_methods(port: u16) {
    // Other paths and methods.
    assert_error(
        &get(port, "/xrpc/com.atproto.server.describeServer").await,
        404,
        "XRPCNotSupported",
        "unknown method",
    );
    assert_error(
        &get(port, &format!("/xrpc/{LXM}")).await,
        405,
        "InvalidRequest",
        "GET a procedure",
    );
    let health = get(port, "/xrpc/_health").await;
    assert_eq!(health.0, 200);
    assert_eq!(health.1["version"], env!("CARGO_PKG_VERSION"));
    let (status, document) = get(port, "/.well-known/did.json").await;
    assert_eq!(status, 200);
    assert_eq!(document["id"], SERVICE);
    assert_eq!(
        document["service"],
        serde_json::json!([{"id": "#atsms_signer", "type": "AtsmsSignerService", "serviceEndpoint": "https://signer.test"}])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_and_a_thousand_requests_at_once_leave_it_serving() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, port) = service(&world, dir.path());
    let alice = vector_key(&world, ALICE);
    let auth = || Claims::new(ALICE).sign_with(&alice, None);
    let ten_mb = 10 * 1024 * 1024;

    // 10 MB declared and sent: read and dropped, then 413.
    let head = format!(
        "POST /xrpc/{LXM} HTTP/1.1\r\nHost: signer.test\r\nContent-Type: application/json\r\nContent-Length: {ten_mb}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        auth()
    );
    let request = [head.into_bytes(), vec![b' '; ten_mb]].concat();
    assert_error(
        &exchange(port, request).await,
        413,
        "PayloadTooLarge",
        "10 MB declared",
    );
    // 10 MB chunked, no length declared.
    let mut chunked = format!(
        "POST /xrpc/{LXM} HTTP/1.1\r\nHost: signer.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        auth()
    )
    .into_bytes();
    for _ in 0..160 {
        chunked.extend_from_slice(format!("{:x}\r\n", 65_536).as_bytes());
        chunked.extend_from_slice(&[b' '; 65_536]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    assert_error(
        &exchange(port, chunked).await,
        413,
        "PayloadTooLarge",
        "10 MB chunked",
    );
    // 10 MB announced to a client that waits for 100 Continue: refused before it sends.
    let head = format!(
        "POST /xrpc/{LXM} HTTP/1.1\r\nHost: signer.test\r\nContent-Type: application/json\r\nContent-Length: {ten_mb}\r\nExpect: 100-continue\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        auth()
    );
    assert_error(
        &exchange(port, head.into_bytes()).await,
        413,
        "PayloadTooLarge",
        "100-continue",
    );
    // Without a token, a huge body is not even looked at.
    assert_error(
        &exchange(port, post_request(None, &" ".repeat(100_000))).await,
        401,
        "AuthMissing",
        "unauthenticated",
    );

    // A thousand at once: each is signed or refused with 503 NotEnoughResources.
    let requests: Vec<Vec<u8>> = (0..1000)
        .map(|_| post_request(Some(&auth()), &body("alice@alice.example.com")))
        .collect();
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|r| tokio::spawn(exchange(port, r)))
        .collect();
    let (mut signed, mut busy) = (0, 0);
    for task in tasks {
        let (status, answer) = task.await.unwrap();
        match status {
            200 => {
                assert!(answer["token"].is_string(), "{answer}");
                signed += 1;
            }
            503 => {
                assert_eq!(answer["error"], "NotEnoughResources", "{answer}");
                busy += 1;
            }
            other => panic!("{other}: {answer}"),
        }
    }
    assert_eq!(signed + busy, 1000);
    assert!(signed > 0, "some were signed");
    println!("1000 concurrent requests: {signed} signed, {busy} refused as busy");
    // And it keeps serving.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = post(port, Some(&auth()), &body("alice@alice.example.com")).await;
    assert_eq!(answer.0, 200, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_caller_key_is_fetched_again_and_an_unreachable_document_is_502() {
    let plc = support::plc::Plc::start();
    let caller = support::ids::plc_did(7);
    let (unknown, gone) = (support::ids::plc_did(8), support::ids::plc_did(9));
    let unknown_key = SigningKey::generate(Alg::Es256k).unwrap();
    plc.set(&unknown, &unknown_key, None);
    plc.set(&gone, &unknown_key, None);
    let (old, new) = (
        SigningKey::generate(Alg::Es256k).unwrap(),
        SigningKey::generate(Alg::Es256).unwrap(),
    );
    plc.set(&caller, &old, None);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n\n[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\nservice_did = \"{SERVICE}\"\n\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\ntimeout = 2\n\n[cache]\nfresh = 1\nmax_age = 1\nerror = 1\n\n[store]\njti_file = \"{}/jti\"\n\n{}{}{}",
        free_port(),
        plc.url(),
        dir.path().display(),
        signing_key(dir.path(), &caller, &old),
        signing_key(dir.path(), &unknown, &unknown_key),
        signing_key(dir.path(), &gone, &unknown_key),
    );
    let daemon = Daemon::start(&config, port);
    let published = format!("signing key {caller}#atproto is published");
    let log = daemon.log_with(&published);
    assert!(log.contains(&published), "{log}");
    // The caller's own mailbox is not aligned (no handle, no mail host): 400 UnalignedFrom
    // shows the token was accepted.
    let from = body("someone@example.com");
    let answer = post(
        port,
        Some(&Claims::new(&caller).sign_with(&old, None)),
        &from,
    )
    .await;
    assert_error(&answer, 400, "UnalignedFrom", "the old key, cached");
    plc.set(&caller, &new, None);
    let answer = post(
        port,
        Some(&Claims::new(&caller).sign_with(&new, None)),
        &from,
    )
    .await;
    assert_error(&answer, 400, "UnalignedFrom", "the new key, fetched again");
    let answer = post(
        port,
        Some(&Claims::new(&caller).sign_with(&old, None)),
        &from,
    )
    .await;
    assert_error(&answer, 401, "BadJwtSignature", "the old key, replaced");

    // Past cache.max_age with the directory down, the only copy at hand is out of date
    // (stale_if_error): mail may still be verified with it, a caller is never
    // authenticated by it.
    plc.set_down(true);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = post(
        port,
        Some(&Claims::new(&unknown).sign_with(&unknown_key, None)),
        &from,
    )
    .await;
    assert_error(&answer, 502, "UpstreamFailure", "the PLC directory down");
    plc.set_down(false);
    // A DID the directory no longer knows.
    plc.remove(&gone);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let answer = post(
        port,
        Some(&Claims::new(&gone).sign_with(&unknown_key, None)),
        &from,
    )
    .await;
    assert_error(
        &answer,
        401,
        "BadJwtIss",
        "a DID the directory does not know",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_limit_get_503_and_slow_ones_504() {
    use std::sync::Arc;
    use support::http::{HttpServer, Reply};
    // Every caller has a key here. Once the daemon runs, the documents of "slow" callers
    // no longer come (their cached copies are past max_age), the quick one's at once.
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let quick = support::ids::plc_did(20);
    let quick_key = SigningKey::generate(Alg::Es256).unwrap();
    let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (quick_did, quick_doc_key, doc_key, hanging) =
        (quick.clone(), quick_key.clone(), key.clone(), hang.clone());
    let plc = HttpServer::start(Arc::new(move |target: &str| {
        let did = target.trim_start_matches('/');
        if did == quick_did {
            Reply::json(200, support::signing::document(did, &quick_doc_key, None))
        } else if hanging.load(std::sync::atomic::Ordering::Relaxed) {
            Reply::Hang
        } else {
            Reply::json(200, support::signing::document(did, &doc_key, None))
        }
    }));
    let dir = tempfile::tempdir().unwrap();
    let mut keys = signing_key(dir.path(), &quick, &quick_key);
    for n in [30, 31, 40, 41, 42, 43] {
        keys += &signing_key(dir.path(), &support::ids::plc_did(n), &key);
    }
    let port = free_port();
    let config = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n\n[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\nservice_did = \"{SERVICE}\"\nmax_concurrent = 2\ntimeout = 3\n\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\ntimeout = 10\n\n[cache]\nfresh = 1\nmax_age = 1\n\n[store]\njti_file = \"{}/jti\"\n\n{keys}",
        free_port(),
        plc.url(),
        dir.path().display()
    );
    let daemon = Daemon::start(&config, port);
    hang.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let asked = plc.request_count();
    let from = body("someone@example.com");
    let slow: Vec<_> = (0..2)
        .map(|n| {
            let token = Claims::new(&support::ids::plc_did(30 + n)).sign_with(&key, None);
            let from = from.clone();
            tokio::spawn(async move { post(port, Some(&token), &from).await })
        })
        .collect();
    // Both slow ones are in flight (the directory has been asked for both documents).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while plc.request_count() < asked + 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the service never asked:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in 0..4 {
        let token = Claims::new(&support::ids::plc_did(40 + n)).sign_with(&key, None);
        let answer = post(port, Some(&token), &from).await;
        assert_error(&answer, 503, "NotEnoughResources", "over max_concurrent");
    }
    for task in slow {
        assert_error(
            &task.await.unwrap(),
            504,
            "UpstreamTimeout",
            "over xrpc.timeout",
        );
    }
    // The slots are free again.
    let answer = post(
        port,
        Some(&Claims::new(&quick).sign_with(&quick_key, None)),
        &from,
    )
    .await;
    assert_error(
        &answer,
        400,
        "UnalignedFrom",
        "served again (the token was accepted)",
    );
}

#[test]
fn sign_remote_writes_a_message_that_verifies() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, port) = service(&world, dir.path());
    let alice = vector_key(&world, ALICE);
    let message = dir.path().join("message.eml");
    std::fs::write(
        &message,
        "From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: signed by my server\r\nDate: Wed, 02 Dec 2026 09:00:00 +0000\r\nMessage-ID: <remote@alice.example.com>\r\n\r\nNo private key on this machine.\r\n",
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_atsms-milter");
    let jwt = Claims::new(ALICE).sign_with(&alice, None);
    let sign_remote = |port: u16| {
        std::process::Command::new(bin)
            .args(["sign", "--remote", &format!("http://127.0.0.1:{port}")])
            .args(["--service-auth", &jwt])
            .arg(&message)
            .output()
            .unwrap()
    };
    let output = sign_remote(port);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let signed = output.stdout;
    assert!(signed.starts_with(b"AT-SMS-Signature: v=1; d=did:plc:ofurdhfyhjhgomvfygxergep;"));
    assert!(signed.ends_with(&std::fs::read(&message).unwrap()));
    let signed_path = dir.path().join("signed.eml");
    std::fs::write(&signed_path, &signed).unwrap();
    let now = now().to_string();
    let mut args = world.cli_args();
    args[1] = now; // --now: the service signed as of the real time
    let verified = std::process::Command::new(bin)
        .arg("verify")
        .args(&args)
        .arg(&signed_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{text}");
    assert!(text.contains("atsms=pass"), "{text}");
    assert!(text.contains("policy.aligned=yes"), "{text}");

    // The token is used once; the service refuses it again and the command says why.
    let again = sign_remote(port);
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("JwtReplayed"),
        "{stderr}"
    );
    // A service that is not there: a temporary failure.
    let gone = sign_remote(free_port());
    assert_eq!(gone.status.code(), Some(75));
}

#[test]
fn the_published_lexicon_names_every_error_the_service_gives() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/lexicons/org/atsms-milter/mail/signEnvelope.json"
    );
    let lexicon: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(lexicon["id"], LXM);
    assert_eq!(lexicon["defs"]["main"]["type"], "procedure");
    let names: Vec<&str> = lexicon["defs"]["main"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    // interfaces.md's table, in its order.
    assert_eq!(
        names,
        [
            "AuthMissing",
            "BadJwt",
            "BadJwtType",
            "JwtExpired",
            "BadJwtAudience",
            "BadJwtLexiconMethod",
            "BadJwtIss",
            "BadJwtSignature",
            "JwtReplayed",
            "UpstreamFailure",
            "NotAuthorized",
            "InvalidRequest",
            "UnalignedFrom",
            "PayloadTooLarge",
            "NotEnoughResources"
        ]
    );
    let required = &lexicon["defs"]["main"]["input"]["schema"]["required"];
    assert_eq!(*required, serde_json::json!(["from", "h", "hh", "bh"]));
}

#[test]
fn curl_gets_the_documented_answers() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, port) = service(&world, dir.path());
    let alice = vector_key(&world, ALICE);
    let url = format!("http://127.0.0.1:{port}/xrpc/{LXM}");
    let curl = |token: &str, data: &str| {
        let output = std::process::Command::new("curl")
            .args(["-sS", "-i", &url, "-H", "Content-Type: application/json"])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .args(["--data-binary", data])
            .output()
            .expect("curl is installed by scripts/test");
        String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n")
    };
    let answer = curl(
        &Claims::new(ALICE).sign_with(&alice, None),
        &body("alice@alice.example.com"),
    );
    println!("{answer}");
    assert!(answer.starts_with("HTTP/1.1 200 OK\n"), "{answer}");
    assert!(
        answer.contains("\ncontent-type: application/json\n"),
        "{answer}"
    );
    let json: Value = serde_json::from_str(answer.split("\n\n").nth(1).unwrap()).unwrap();
    assert_eq!(json["did"], ALICE);
    assert!(
        json["signature"]
            .as_str()
            .unwrap()
            .starts_with(&format!("v=1; d={ALICE}; t=ey"))
    );

    // curl sends a large body with `Expect: 100-continue`: refused before it is sent.
    let big = dir.path().join("big.json");
    std::fs::write(&big, vec![b' '; 10 * 1024 * 1024]).unwrap();
    let answer = curl(
        &Claims::new(ALICE).sign_with(&alice, None),
        &format!("@{}", big.display()),
    );
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large\n"),
        "{answer}"
    );
    assert!(answer.contains("\"error\":\"PayloadTooLarge\""), "{answer}");
    let answer = curl("not-a-token", &body("alice@alice.example.com"));
    assert!(
        answer.starts_with("HTTP/1.1 401 Unauthorized\n"),
        "{answer}"
    );
    assert!(
        answer.contains("www-authenticate: Bearer error=\"BadJwt\""),
        "{answer}"
    );
}

/// Anyone can reach the port. A token whose `iss` has no key here is refused before its
/// document is fetched and before its `jti` is remembered: strangers can neither spend the
/// PLC directory's budget nor fill the `jti` set, however many they send. A token accepted
/// before a restart is still used after it (`store.jti_file`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_cost_nothing_and_a_used_token_stays_used_across_a_restart() {
    let plc = support::plc::Plc::start();
    let caller = support::ids::plc_did(50);
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    plc.set(&caller, &key, None);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n\n[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\nservice_did = \"{SERVICE}\"\n\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n\n[store]\njti_file = \"{}/jti\"\n\n{}",
        free_port(),
        plc.url(),
        dir.path().display(),
        signing_key(dir.path(), &caller, &key),
    );
    let mut daemon = Daemon::start(&config, port);
    let from = body("someone@example.com");
    let asked = plc.requests();
    let stranger = SigningKey::generate(Alg::Es256k).unwrap();
    let tokens: Vec<String> = (0..200)
        .map(|n| Claims::new(&support::ids::plc_did(5000 + n)).sign_with(&stranger, None))
        .collect();
    for token in tokens.iter().chain(tokens.iter().take(3)) {
        let answer = post(port, Some(token), &from).await;
        assert_error(&answer, 403, "NotAuthorized", "a stranger, again and again");
    }
    assert_eq!(plc.requests(), asked, "no stranger's document was fetched");

    let token = Claims::new(&caller).sign_with(&key, None);
    let answer = post(port, Some(&token), &from).await;
    assert_error(&answer, 400, "UnalignedFrom", "accepted");
    let answer = post(port, Some(&token), &from).await;
    assert_error(&answer, 401, "JwtReplayed", "the same token again");
    daemon.stop();
    let _daemon = Daemon::start(&config, port);
    let answer = post(port, Some(&token), &from).await;
    assert_error(
        &answer,
        401,
        "JwtReplayed",
        "the same token after a restart",
    );
    let fresh = Claims::new(&caller).sign_with(&key, None);
    let answer = post(port, Some(&fresh), &from).await;
    assert_error(&answer, 400, "UnalignedFrom", "a new token");
}

#[tokio::test]
async fn the_first_name_of_the_method_still_signs_for_one_release_and_says_it_is_deprecated() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let (daemon, port) = service(&world, dir.path());
    let alice = vector_key(&world, ALICE);
    let good = body("alice@alice.example.com");
    let at_old_path = |token: String| {
        format!(
            "POST /xrpc/{OLD_LXM} HTTP/1.1\r\nHost: signer.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n{good}",
            good.len()
        )
        .into_bytes()
    };
    let raw = |request: Vec<u8>| async move {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        stream.write_all(&request).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    };

    // A token for the old name, at the old path: signed, marked deprecated.
    let mut claims = Claims::new(ALICE);
    claims.lxm = Some(OLD_LXM);
    let answer = raw(at_old_path(claims.sign_with(&alice, None))).await;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert_eq!(parse_answer(&answer).0, 200, "{text}");
    assert!(text.contains("\r\ndeprecation: @1796428800\r\n"), "{text}");
    assert!(
        text.contains("</xrpc/org.atsms-milter.mail.signenvelope>; rel=\"successor-version\""),
        "{text}"
    );
    // A token names one method: the new name's token is not good at the old path, nor the
    // old name's at the new one.
    let answer = raw(at_old_path(Claims::new(ALICE).sign_with(&alice, None))).await;
    assert_error(
        &parse_answer(&answer),
        401,
        "BadJwtLexiconMethod",
        "new token, old path",
    );
    assert_error(
        &post(port, Some(&claims.sign_with(&alice, None)), &good).await,
        401,
        "BadJwtLexiconMethod",
        "old token, new path",
    );
    // The new name answers without the marks.
    let mut request = post_request(Some(&Claims::new(ALICE).sign_with(&alice, None)), &good);
    let answer = raw(std::mem::take(&mut request)).await;
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert_eq!(parse_answer(&answer).0, 200, "{text}");
    assert!(!text.contains("deprecation:"), "{text}");

    let health = get(port, "/xrpc/_health").await;
    assert_eq!(health.1["methods"][LXM], "current");
    assert!(
        health.1["methods"][OLD_LXM]
            .as_str()
            .unwrap()
            .starts_with("deprecated: use org.atsms-milter.mail.signEnvelope"),
        "{health:?}"
    );
    // Said once a minute, however often it is called (each call once logged a warning:
    // 100,000 lines in 3 s).
    for _ in 0..300 {
        raw(at_old_path("not.a.token".into())).await;
    }
    let log = daemon.log_with("called the deprecated");
    assert_eq!(log.matches("called the deprecated").count(), 1, "{log}");
}
