//! The drain API the AT-SMS client calls (issue 33, item 3), spoken over loopback HTTP to the
//! real daemon as the client's `ATSMSWorkerEnvelopeTransport` speaks it: list, get, delete with
//! the device's own token, signed with the key the client made for its recipient device (the
//! project's copy in tests/data/atsms-client, origin in tests/data/SOURCES.md), whose
//! certificate its DID publishes on a loopback PDS; push over WebSocket; copies put in the
//! store by a POST, or as the intake puts them (`DeviceStore` on the daemon's own
//! `inbox.store`).

use atsms_testkit as support;

use std::time::Duration;

use atsms_milter::format::crypto::{Alg, SigningKey, malleate};
use atsms_milter::infra::device_store::DeviceStore;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use support::daemon::Daemon;
use support::plc::Plc;
use support::postfix::free_port;

const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
const PUBLIC: &str = "https://inbox.example.net";
const FP: &str = "b8c287336496ab79c9c905291c01e639dc53a49dc80e36f206f1f81d702cbfc1";

fn text(name: &str) -> String {
    std::fs::read_to_string(support::test_data("atsms-client").join(name)).unwrap()
}

use atsms_milter::infra::clock::unix_now as now;

/// A token as the client's `generateJWT` makes it, with `change` applied to its claims.
fn token(key: &SigningKey, kid: &str, change: impl Fn(&mut Value)) -> String {
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let mut claims = json!({
        "sub": format!("at://{DID}/at.atsms.x509/{kid}"),
        "iss": DID, "aud": "atsms-api", "iat": now(), "exp": now() + 3600
    });
    change(&mut claims);
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    format!("{input}.{}", b64(&key.sign(input.as_bytes())))
}

/// One request on a fresh connection: the status and the whole answer.
fn call(port: u16, method: &str, path: &str, headers: &str) -> (u16, String) {
    call_with_body(port, method, path, &format!("{headers}\r\n"))
}

/// A request with `rest`: its last header lines, the blank line and the body.
fn call_with_body(port: u16, method: &str, path: &str, rest: &str) -> (u16, String) {
    support::http::raw_request(
        port,
        &format!("{method} {path} HTTP/1.1\r\nHost: inbox.test\r\nConnection: close\r\n{rest}"),
    )
}

/// The value of `atsms_inbox_envelopes_total` for `event` (0 when absent).
fn envelopes(metrics: u16, event: &str) -> u64 {
    let (_, page) = support::http::raw_request(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    );
    let line = format!("atsms_inbox_envelopes_total{{event=\"{event}\",reason=\"\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&line))
        .map_or(0, |n| n.trim().parse().unwrap())
}

fn body(answer: &str) -> Value {
    serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap_or("")).unwrap_or(Value::Null)
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

/// The DID publishes the recipient device's certificate, and an `at.atsms.inbox` record
/// naming this host's HTTPS inbox for it (as the client writes it when pointed here).
fn publish_device(plc: &Plc) {
    plc.set_with_pds(DID, &SigningKey::generate(Alg::Es256).unwrap(), None);
    plc.put_record(
        DID,
        "at.atsms.x509",
        FP,
        json!({"$type": "at.atsms.x509", "certificate": text("recip.crt.pem"), "serialNumber": "00", "createdAt": "2026-12-05T00:00:00Z"}),
    );
    plc.put_record(
        DID,
        "at.atsms.inbox",
        "self",
        json!({"$type": "at.atsms.inbox", "endpoints": [{"uri": format!("{PUBLIC}/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa")}]}),
    );
}

/// The daemon with the HTTPS inbox at `PUBLIC` and an LMTP listener, as a destination runs.
struct Destination {
    daemon: Daemon,
    /// The daemon's configuration (a restart takes it again).
    config: String,
    _dir: tempfile::TempDir,
    /// The XRPC listener's port.
    port: u16,
    lmtp: u16,
    /// The socketmap's port (Postfix's `atsms_mailbox`).
    maps: u16,
    /// `inbox.store`.
    store: std::path::PathBuf,
    maildirs: std::path::PathBuf,
    metrics: u16,
}

fn start(plc: &Plc) -> Destination {
    start_with(plc, "")
}

/// `start`, with more lines for `[inbox]`.
fn start_with(plc: &Plc, inbox: &str) -> Destination {
    let dir = support::public_tempdir();
    let store = dir.path().join("inbox");
    let (port, lmtp, metrics, maps) = (free_port(), free_port(), free_port(), free_port());
    let config = format!(
        "[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\ninbox = true\npublic_url = \"{PUBLIC}\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{maps}\"\n[lmtp]\nlisten = \"inet:127.0.0.1:{lmtp}\"\nmaildir = \"{0}/%d/%n/Maildir\"\n[inbox]\nhosts = [\"mx.example.net\"]\nstore = \"{1}\"\n{inbox}\n[resolver]\nplc_urls = [\"{2}\"]\nallow_private_addresses = true\n[store]\njti_file = \"{0}/jti\"\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
        dir.path().display(),
        store.display(),
        plc.url()
    );
    Destination {
        daemon: Daemon::start(&config, port),
        config,
        port,
        lmtp,
        maps,
        store,
        maildirs: dir.path().to_path_buf(),
        _dir: dir,
        metrics,
    }
}

#[test]
fn a_device_drains_its_own_copies_with_its_own_token() {
    let plc = Plc::start();
    publish_device(&plc);
    let dest = start(&plc);
    let (port, store, metrics) = (dest.port, dest.store.clone(), dest.metrics);
    // Two envelopes for this device, one for another device of the DID.
    let other = "cd".repeat(32);
    let devices = DeviceStore::new(store.clone(), "mx.example.net", 1000, 1 << 26);
    devices
        .store(DID, &[FP, &other], b"first envelope")
        .unwrap();
    devices.store(DID, &[FP], b"second envelope").unwrap();

    let key = SigningKey::from_pkcs8_pem(&text("recip.key.pem")).unwrap();
    let good = token(&key, FP, |_| {});
    let base = format!("/messages/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa/{FP}");
    let (status, answer) = call(
        port,
        "GET",
        &format!("{base}/list?type=atsms-envelope&limit=100"),
        &bearer(&good),
    );
    assert_eq!(status, 200, "{answer}");
    let messages = body(&answer)["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 2, "{answer}");
    assert_eq!(messages[0]["messageType"], "atsms-envelope");
    assert!(messages[0]["seq"].as_u64() <= messages[1]["seq"].as_u64());
    let id = messages[0]["id"].as_str().unwrap().to_string();
    // The token may be reused (no jti), and a high-S signature (WebCrypto's) is good too.
    let (input, sig) = good.rsplit_once('.').unwrap();
    let high = malleate(Alg::Es256, &URL_SAFE_NO_PAD.decode(sig).unwrap());
    let high_s = format!("{input}.{}", URL_SAFE_NO_PAD.encode(high));
    for t in [&good, &high_s] {
        let (status, answer) = call(port, "GET", &format!("{base}/{id}"), &bearer(t));
        assert_eq!(status, 200, "{answer}");
        let message = &body(&answer)["message"];
        assert_eq!(message["id"], id.as_str());
        let content = STANDARD
            .decode(message["encryptedContent"].as_str().unwrap())
            .unwrap();
        assert_eq!(content, b"first envelope");
    }
    // Deleted for this device only.
    let (status, answer) = call(port, "DELETE", &format!("{base}/{id}"), &bearer(&good));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(body(&answer)["success"], true);
    assert_eq!(envelopes(metrics, "drained"), 1);
    assert_eq!(
        call(port, "DELETE", &format!("{base}/{id}"), &bearer(&good)).0,
        404
    );
    assert_eq!(
        call(port, "GET", &format!("{base}/{id}"), &bearer(&good)).0,
        404
    );
    assert_eq!(devices.list(DID, &other, 100).unwrap().len(), 1);

    // Refused: no token, a forged one, an expired one, another audience, another device's
    // path (403), a token claiming a device the DID does not publish.
    let stranger = SigningKey::generate(Alg::Es256).unwrap();
    let cases = [
        (String::new(), 401, "AuthRequired"),
        (bearer(&token(&stranger, FP, |_| {})), 401, "InvalidToken"),
        (
            bearer(&token(&key, FP, |c| {
                c["iat"] = json!(now() - 7200);
                c["exp"] = json!(now() - 3600);
            })),
            401,
            "ExpiredToken",
        ),
        (
            bearer(&token(&key, FP, |c| c["aud"] = json!("did:web:x"))),
            401,
            "InvalidToken",
        ),
        (bearer(&token(&key, &other, |_| {})), 403, "Forbidden"),
    ];
    for (headers, status, name) in &cases {
        let (got, answer) = call(port, "GET", &format!("{base}/list"), headers);
        assert_eq!(got, *status, "{name}: {answer}");
        assert_eq!(body(&answer)["error"], *name, "{answer}");
    }
    let unpublished = token(&key, &other, |_| {});
    let (status, answer) = call(
        port,
        "GET",
        &format!("/messages/{DID}/{other}/list"),
        &bearer(&unpublished),
    );
    assert_eq!(status, 401, "a device the DID does not publish: {answer}");

    // A browser client's preflight.
    let (status, answer) = call(
        port,
        "OPTIONS",
        &format!("{base}/list"),
        "Origin: https://app.example\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization\r\n",
    );
    assert_eq!(status, 200, "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(lower.contains("access-control-allow-origin: *"), "{answer}");
    assert!(lower.contains("delete"), "{answer}");
}

/// What the client posts to `/inbox/{did}` for a DID with a device (consenting by an
/// `https:` endpoint naming this host): one copy for the device, which drains exactly the
/// bytes posted; the same envelope again is kept once; nothing of the poster is stored.
#[test]
fn an_envelope_posted_for_a_did_with_a_device_is_kept_for_the_device_once() {
    let plc = Plc::start();
    publish_device(&plc);
    let dest = start(&plc);
    let (port, store, metrics) = (dest.port, dest.store.clone(), dest.metrics);
    let envelope = std::fs::read(support::test_data("atsms-client").join("envelope.cbor")).unwrap();
    let posted = json!({"envelope": STANDARD.encode(&envelope)}).to_string();
    let post = format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{posted}",
        posted.len()
    );
    let path = "/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa";
    let (status, answer) = call_with_body(port, "POST", path, &post);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(body(&answer)["stored"], true, "{answer}");
    let (status, answer) = call_with_body(port, "POST", path, &post);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(body(&answer)["stored"], false, "kept once: {answer}");
    assert_eq!(
        (
            envelopes(metrics, "stored"),
            envelopes(metrics, "duplicate")
        ),
        (1, 1)
    );

    let key = SigningKey::from_pkcs8_pem(&text("recip.key.pem")).unwrap();
    let auth = bearer(&token(&key, FP, |_| {}));
    let base = format!("/messages/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa/{FP}");
    let (status, answer) = call(port, "GET", &format!("{base}/list"), &auth);
    assert_eq!(status, 200, "{answer}");
    let messages = body(&answer)["messages"].as_array().unwrap().clone();
    assert_eq!(messages.len(), 1, "{answer}");
    let id = messages[0]["id"].as_str().unwrap();
    let (_, answer) = call(port, "GET", &format!("{base}/{id}"), &auth);
    let content = body(&answer)["message"]["encryptedContent"]
        .as_str()
        .map(|c| STANDARD.decode(c).unwrap());
    assert_eq!(content.as_deref(), Some(envelope.as_slice()));
    // On disk: the envelope's bytes, nothing else (no address, no Received).
    let new = store
        .join("did.plc.aaaaaaaaaaaaaaaaaaaaaaaa")
        .join(FP)
        .join("new");
    let files: Vec<Vec<u8>> = std::fs::read_dir(&new)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert_eq!(files, vec![envelope]);
}

/// The mail the client's SMTP form sends to the DID's mailbox.
fn client_mail(envelope: &[u8]) -> Vec<u8> {
    support::device::client_mail(MAILBOX, envelope)
}

/// The DID's mailbox here, as the client's `mailto:` names it.
const MAILBOX: &str = "did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@mx.example.net";

/// `envelope` by LMTP (swaks, as an MTA hands it over) to the DID's mailbox: the reply to
/// the end of the data.
fn by_lmtp(dest: &Destination, envelope: &[u8]) -> String {
    let (transcript, _) = support::swaks(
        &dest.maildirs,
        dest.lmtp,
        "x@client.example",
        MAILBOX,
        &client_mail(envelope),
        &["--protocol", "LMTP"],
    );
    // The reply after the data: the first server line after the client's ".".
    transcript
        .lines()
        .skip_while(|l| l.trim() != "-> .")
        .find(|l| l.starts_with('<'))
        .map(|l| l.trim_start_matches(['<', '*', '-', ' ']).to_string())
        .unwrap_or_else(|| panic!("no reply to the data: {transcript}"))
}

/// `envelope` by `POST /inbox/{did}`: the status and the answer.
fn by_post(dest: &Destination, envelope: &[u8]) -> (u16, String) {
    let posted = json!({"envelope": STANDARD.encode(envelope)}).to_string();
    call_with_body(
        dest.port,
        "POST",
        "/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa",
        &format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{posted}",
            posted.len()
        ),
    )
}

/// A device's copies, through the drain API with its own token: each copy's bytes.
fn drained(dest: &Destination, key: &SigningKey, fp: &str) -> Vec<(String, Vec<u8>)> {
    let auth = bearer(&token(key, fp, |_| {}));
    let base = format!("/messages/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa/{fp}");
    let (status, answer) = call(dest.port, "GET", &format!("{base}/list"), &auth);
    assert_eq!(status, 200, "{answer}");
    body(&answer)["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let id = m["id"].as_str().unwrap().to_string();
            let (_, answer) = call(dest.port, "GET", &format!("{base}/{id}"), &auth);
            let content = body(&answer)["message"]["encryptedContent"]
                .as_str()
                .map(|c| STANDARD.decode(c).unwrap())
                .unwrap();
            (id, content)
        })
        .collect()
}

/// The DID's second device, made by OpenSSL as the client makes one (`testkit::device`).
fn publish_second_device(plc: &Plc) -> support::device::Device {
    let device = support::device::make(DID);
    plc.put_record(
        DID,
        "at.atsms.x509",
        &device.fingerprint,
        json!({"$type": "at.atsms.x509", "certificate": device.cert_pem, "serialNumber": "00", "createdAt": "2026-12-05T00:00:00Z"}),
    );
    device
}

/// Issue 33 item 2: one intake for both carriers. The same envelope by SMTP (LMTP, as the
/// MTA hands it over) and by POST, in either order, is kept once for each of the DID's two
/// devices, byte for byte what was posted; each device drains its own copy; the DID mailbox's
/// Maildir holds each envelope once.
#[test]
fn the_same_envelope_by_smtp_and_by_post_is_kept_once_for_each_device() {
    let plc = Plc::start();
    publish_device(&plc);
    let device = publish_second_device(&plc);
    let second_fp = device.fingerprint.clone();
    let dest = start(&plc);
    let first = std::fs::read(support::test_data("atsms-client").join("envelope.cbor")).unwrap();
    let mut second = first.clone();
    let last = second.len() - 1;
    second[last] ^= 1;

    // SMTP first, then POST of the same envelope.
    let reply = by_lmtp(&dest, &first);
    assert!(
        reply.starts_with("250 2.0.0") && reply.contains("Saved"),
        "{reply}"
    );
    let (status, answer) = by_post(&dest, &first);
    assert_eq!(
        (status, body(&answer)["stored"].clone()),
        (202, json!(false)),
        "{answer}"
    );
    // POST first, then SMTP; then SMTP again.
    let (status, answer) = by_post(&dest, &second);
    assert_eq!(
        (status, body(&answer)["stored"].clone()),
        (202, json!(true)),
        "{answer}"
    );
    for _ in 0..2 {
        let reply = by_lmtp(&dest, &second);
        assert!(
            reply.starts_with("250 2.0.0") && reply.contains("already stored"),
            "{reply}"
        );
    }

    let recip = SigningKey::from_pkcs8_pem(&text("recip.key.pem")).unwrap();
    let sender = SigningKey::from_pkcs8_pem(&device.key_pem).unwrap();
    for (key, fp) in [(&recip, FP), (&sender, second_fp.as_str())] {
        let copies: Vec<Vec<u8>> = drained(&dest, key, fp).into_iter().map(|c| c.1).collect();
        assert_eq!(copies, vec![first.clone(), second.clone()], "device {fp}");
    }
    // One device drains its copy of the first: the other device still has both.
    let (id, _) = drained(&dest, &recip, FP).remove(0);
    let path = format!("/messages/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa/{FP}/{id}");
    let auth = bearer(&token(&recip, FP, |_| {}));
    assert_eq!(call(dest.port, "DELETE", &path, &auth).0, 200);
    assert_eq!(drained(&dest, &recip, FP).len(), 1);
    assert_eq!(drained(&dest, &sender, &second_fp).len(), 2);
    // The DID mailbox's Maildir: each envelope once (the judge's copy, as any mail).
    let maildir = dest
        .maildirs
        .join("mx.example.net/did.plc.aaaaaaaaaaaaaaaaaaaaaaaa/Maildir/new");
    assert_eq!(std::fs::read_dir(&maildir).unwrap().count(), 2);
    assert_eq!(
        (
            envelopes(dest.metrics, "stored"),
            envelopes(dest.metrics, "duplicate")
        ),
        (4, 3)
    );
}

/// The same by real SMTP: the client's SMTP form sent to Postfix, which takes the DID mailbox
/// by our `atsms_mailbox` map and hands it to our LMTP — kept once for the device; the same
/// envelope POSTed is already stored, and sent by SMTP again, Postfix is told "already
/// stored" by our LMTP (no second copy anywhere).
#[test]
fn an_envelope_by_smtp_through_postfix_is_kept_for_the_device_once() {
    let plc = Plc::start();
    publish_device(&plc);
    let dest = start(&plc);
    let postfix = support::postfix::Postfix::start(
        &[],
        &format!(
            "myhostname = b.test\nvirtual_mailbox_domains = mx.example.net\nvirtual_mailbox_maps = socketmap:inet:127.0.0.1:{}:atsms_mailbox\nvirtual_transport = lmtp:inet:127.0.0.1:{}\n",
            dest.maps, dest.lmtp
        ),
    );
    let envelope = std::fs::read(support::test_data("atsms-client").join("envelope.cbor")).unwrap();
    let mail = client_mail(&envelope);
    let (transcript, ok) = postfix.swaks("x@client.example", MAILBOX, &mail);
    assert!(ok, "{transcript}");
    let recip = SigningKey::from_pkcs8_pem(&text("recip.key.pem")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while drained(&dest, &recip, FP).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            postfix.maillog()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, answer) = by_post(&dest, &envelope);
    assert_eq!(
        (status, body(&answer)["stored"].clone()),
        (202, json!(false)),
        "{answer}"
    );
    let (transcript, ok) = postfix.swaks("x@client.example", MAILBOX, &mail);
    assert!(ok, "{transcript}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !postfix.maillog().contains("already stored") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            postfix.maillog()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let copies: Vec<Vec<u8>> = drained(&dest, &recip, FP)
        .into_iter()
        .map(|c| c.1)
        .collect();
    assert_eq!(copies, vec![envelope]);
}

/// One device's copy that cannot be written (its `tmp/` taken by a file) while the
/// other's can: not acknowledged, by either carrier (503, 451), nothing noted as stored; once
/// it can be written, the retry stores it — the device that missed it gets it, the one that
/// had it gets it twice (at least once, never lost).
#[test]
fn a_device_copy_that_cannot_be_written_is_not_acknowledged_and_the_retry_stores_it() {
    let plc = Plc::start();
    publish_device(&plc);
    let device = publish_second_device(&plc);
    let dest = start(&plc);
    let first = std::fs::read(support::test_data("atsms-client").join("envelope.cbor")).unwrap();
    let mut second = first.clone();
    let last = second.len() - 1;
    second[last] ^= 1;
    // The device's `new/` can be read (its count known), its `tmp/` cannot be written.
    let folder = dest.store.join("did.plc.aaaaaaaaaaaaaaaaaaaaaaaa").join(FP);
    std::fs::create_dir_all(folder.join("new")).unwrap();
    std::fs::write(folder.join("tmp"), b"in the way").unwrap();
    let (status, answer) = by_post(&dest, &first);
    assert_eq!(status, 503, "{answer}");
    let reply = by_lmtp(&dest, &second);
    assert!(reply.starts_with("451 4.3.0"), "{reply}");
    std::fs::remove_file(folder.join("tmp")).unwrap();
    let (status, answer) = by_post(&dest, &first);
    assert_eq!(
        (status, body(&answer)["stored"].clone()),
        (202, json!(true)),
        "{answer}"
    );
    let reply = by_lmtp(&dest, &second);
    assert!(reply.contains("Saved"), "{reply}");
    let recip = SigningKey::from_pkcs8_pem(&text("recip.key.pem")).unwrap();
    let copies: Vec<Vec<u8>> = drained(&dest, &recip, FP)
        .into_iter()
        .map(|c| c.1)
        .collect();
    assert!(
        copies == [first.clone(), second.clone()],
        "{} copies",
        copies.len()
    );
    let other = SigningKey::from_pkcs8_pem(&device.key_pem).unwrap();
    let copies: Vec<Vec<u8>> = drained(&dest, &other, &device.fingerprint)
        .into_iter()
        .map(|c| c.1)
        .collect();
    // Compared by their last byte (what tells them apart), not printed whole.
    let mut tags: Vec<u8> = copies.iter().map(|c| c[c.len() - 1]).collect();
    tags.sort();
    let mut expected = vec![first[last], first[last], second[last], second[last]];
    expected.sort();
    assert_eq!(tags, expected);
}

/// A sealed envelope's sender is `none` to the host; filed as junk by the judge
/// (`policy.on_none = "junk"`), it still reaches the devices, which open it and check its
/// sender themselves; the Maildir's copy is in `.Junk`.
#[test]
fn an_envelope_filed_as_junk_still_reaches_the_devices() {
    let plc = Plc::start();
    publish_device(&plc);
    let dest = start_with(&plc, "[policy]\non_none = \"junk\"");
    let envelope = std::fs::read(support::test_data("atsms-client").join("envelope.cbor")).unwrap();
    let (status, answer) = by_post(&dest, &envelope);
    assert_eq!(
        (status, body(&answer)["stored"].clone()),
        (202, json!(true)),
        "{answer}"
    );
    let recip = SigningKey::from_pkcs8_pem(&text("recip.key.pem")).unwrap();
    let copies: Vec<Vec<u8>> = drained(&dest, &recip, FP)
        .into_iter()
        .map(|c| c.1)
        .collect();
    assert_eq!(copies, vec![envelope.clone()]);
    let junk = dest
        .maildirs
        .join("mx.example.net/did.plc.aaaaaaaaaaaaaaaaaaaaaaaa/Maildir/.Junk/new");
    assert_eq!(std::fs::read_dir(&junk).unwrap().count(), 1);
    // Kept once: the repeat is a duplicate, not a second junk copy.
    let (_, answer) = by_post(&dest, &envelope);
    assert_eq!(body(&answer)["stored"], false, "{answer}");
    assert_eq!(std::fs::read_dir(&junk).unwrap().count(), 1);
}

/// Push, as the client's `websocket-client.ts` speaks it: `auth` first, `auth_success`, then
/// `new_message` when a copy is kept for the device, `pong` to `ping`; a bad token closes
/// with 1008 (the client then does not reconnect), and so does one of another device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_device_is_told_of_each_new_copy_over_its_socket() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let plc = Plc::start();
    publish_device(&plc);
    let dest = start(&plc);
    let port = dest.port;
    let key = SigningKey::from_pkcs8_pem(&text("recip.key.pem")).unwrap();
    let url = format!("ws://127.0.0.1:{port}/ws/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa/{FP}");
    let next_json = async |socket: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer in time")
            .expect("the socket open")
            .unwrap();
        match message {
            Message::Text(text) => return serde_json::from_str::<Value>(&text).unwrap(),
            Message::Close(frame) => return json!({"closed": frame.map(|f| u16::from(f.code))}),
            _ => continue,
        }
    };

    // Strangers holding sockets open on the device's path without a token take none of its
    // places.
    let mut strangers = Vec::new();
    for _ in 0..6 {
        strangers.push(tokio_tungstenite::connect_async(&url).await.unwrap().0);
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let auth = json!({"type": "auth", "token": token(&key, FP, |_| {})});
    socket
        .send(Message::Text(auth.to_string().into()))
        .await
        .unwrap();
    assert_eq!(
        next_json(&mut socket).await,
        json!({"type": "auth_success"})
    );
    socket
        .send(Message::Text(json!({"type": "ping"}).to_string().into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut socket).await, json!({"type": "pong"}));
    // An envelope posted for the DID: the device is told.
    let envelope = std::fs::read(support::test_data("atsms-client").join("envelope.cbor")).unwrap();
    let posted = json!({"envelope": STANDARD.encode(&envelope)}).to_string();
    let (status, answer) = tokio::task::spawn_blocking(move || {
        call_with_body(
            port,
            "POST",
            "/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa",
            &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{posted}",
                posted.len()
            ),
        )
    })
    .await
    .unwrap();
    assert_eq!(status, 202, "{answer}");
    assert_eq!(next_json(&mut socket).await, json!({"type": "new_message"}));
    // Another by SMTP (LMTP, as the MTA hands it over): the same intake tells the device.
    let mut other = envelope.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    let reply = tokio::task::block_in_place(|| by_lmtp(&dest, &other));
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    assert_eq!(next_json(&mut socket).await, json!({"type": "new_message"}));
    // The device's own places are bounded: four sockets, then 1013 (try again later).
    let mut own = Vec::new();
    for _ in 0..3 {
        let (mut more, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        more.send(Message::Text(auth.to_string().into()))
            .await
            .unwrap();
        assert_eq!(next_json(&mut more).await, json!({"type": "auth_success"}));
        own.push(more);
    }
    let (mut fifth, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    fifth
        .send(Message::Text(auth.to_string().into()))
        .await
        .unwrap();
    assert_eq!(next_json(&mut fifth).await, json!({"closed": 1013}));
    drop(strangers);

    // A forged token, and a good one for another device's path: closed with 1008.
    let stranger = SigningKey::generate(Alg::Es256).unwrap();
    for bad in [
        token(&stranger, FP, |_| {}),
        token(&key, &"cd".repeat(32), |_| {}),
    ] {
        let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let auth = json!({"type": "auth", "token": bad});
        socket
            .send(Message::Text(auth.to_string().into()))
            .await
            .unwrap();
        assert_eq!(next_json(&mut socket).await, json!({"closed": 1008}));
    }
}

/// A device over its quota gets no more copies: with every device of the DID over it the POST
/// is refused (429) and nothing is stored; once its device drains, it is taken again.
#[test]
fn a_device_over_its_quota_is_refused_until_it_drains() {
    let plc = Plc::start();
    publish_device(&plc);
    let dest = start_with(&plc, "max_envelopes_per_device = 1");
    let (port, metrics) = (dest.port, dest.metrics);
    let post = |envelope: &[u8]| {
        let posted = json!({"envelope": STANDARD.encode(envelope)}).to_string();
        call_with_body(
            port,
            "POST",
            "/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa",
            &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{posted}",
                posted.len()
            ),
        )
    };
    let first = std::fs::read(support::test_data("atsms-client").join("envelope.cbor")).unwrap();
    let mut second = first.clone();
    let last = second.len() - 1;
    second[last] ^= 1; // another envelope of the same shape
    assert_eq!(post(&first).0, 202);
    let (status, answer) = post(&second);
    assert_eq!(status, 429, "{answer}");
    assert!(answer.contains("quota"), "{answer}");
    let key = SigningKey::from_pkcs8_pem(&text("recip.key.pem")).unwrap();
    let auth = bearer(&token(&key, FP, |_| {}));
    let base = format!("/messages/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa/{FP}");
    let (_, listed) = call(port, "GET", &format!("{base}/list"), &auth);
    let listed = body(&listed)["messages"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1);
    let id = listed[0]["id"].as_str().unwrap();
    assert_eq!(call(port, "DELETE", &format!("{base}/{id}"), &auth).0, 200);
    assert_eq!(post(&second).0, 202, "taken once the device drained");
    // Full again; the operator purges the device with the command (another process): the
    // daemon's count sees it before it would refuse.
    let mut fourth = first.clone();
    fourth[last] ^= 4;
    assert_eq!(post(&fourth).0, 429);
    let purged = std::process::Command::new(support::binary())
        .args(["inbox", "--store"])
        .arg(&dest.store)
        .args(["purge", &format!("{DID}/{FP}")])
        .output()
        .unwrap();
    assert!(purged.status.success(), "{purged:?}");
    assert_eq!(post(&fourth).0, 202, "taken once purged by the command");
    // By SMTP: 452 4.2.2 while every device is over its quota (RFC 3463: mailbox full).
    let mut third = first.clone();
    third[last] ^= 2;
    let reply = by_lmtp(&dest, &third);
    assert!(reply.starts_with("452 4.2.2"), "{reply}");
    let (_, page) = support::http::raw_request(
        metrics,
        "GET /metrics HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n",
    );
    assert!(
        page.contains("atsms_inbox_envelopes_total{event=\"refused\",reason=\"quota\"} 3"),
        "{page}"
    );
}

/// Delivers `envelope` by LMTP on an open session (MAIL, RCPT, DATA, the mail): whether the
/// server said 250 for it; an error when the connection broke.
fn lmtp_once(
    session: &mut std::io::BufReader<std::net::TcpStream>,
    envelope: &[u8],
) -> std::io::Result<bool> {
    use std::io::{BufRead, Write};
    let reply = |session: &mut std::io::BufReader<std::net::TcpStream>| loop {
        let mut line = String::new();
        if session.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok::<String, std::io::Error>(line);
        }
    };
    let head = format!("MAIL FROM:<x@client.example>\r\nRCPT TO:<{MAILBOX}>\r\nDATA\r\n");
    session.get_mut().write_all(head.as_bytes())?;
    for _ in 0..3 {
        reply(session)?;
    }
    let mail = support::lmtp::dot_stuffed(&client_mail(envelope));
    session.get_mut().write_all(&mail)?;
    Ok(reply(session)?.starts_with("250"))
}

/// Sends unique envelopes (`next` numbers them) by one carrier until the daemon is gone;
/// each one acknowledged (202, 250) goes into `acked`, each one sent into `sent`.
fn keep_sending(
    dest_port: u16,
    lmtp: Option<u16>,
    base: Vec<u8>,
    next: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    acked: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    let mut session = lmtp.and_then(|port| {
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        let mut session = std::io::BufReader::new(stream);
        let mut line = String::new();
        use std::io::{BufRead, Write};
        session.read_line(&mut line).ok()?;
        session
            .get_mut()
            .write_all(b"LHLO client.example\r\n")
            .ok()?;
        while session.read_line(&mut line).ok()? > 0 && !line.lines().last()?.starts_with("250 ") {}
        Some(session)
    });
    loop {
        let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut envelope = base.clone();
        let at = envelope.len() - 8;
        envelope[at..].copy_from_slice(&n.to_be_bytes());
        sent.lock().unwrap().push(envelope.clone());
        let ok = match session.as_mut() {
            Some(session) => match lmtp_once(session, &envelope) {
                Ok(ok) => ok,
                Err(_) => return,
            },
            None => {
                let posted = json!({"envelope": STANDARD.encode(&envelope)}).to_string();
                let request = format!(
                    "POST /inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: inbox.test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{posted}",
                    posted.len()
                );
                match support::http::try_raw_request(dest_port, &request) {
                    Some((status, _)) => status == 202,
                    None => return,
                }
            }
        };
        if ok {
            acked.lock().unwrap().push(envelope);
        }
    }
}

/// Issue 33 item 5: `kill -9` at any moment, three times over, while envelopes arrive by POST
/// and by LMTP: every envelope acknowledged is in each device's folder, whole; no copy a
/// device can see (`new/`) is ever anything but a whole envelope that was sent; after the
/// restart each device drains exactly what its folder holds. (The kernel survives here, so
/// this shows the order of writes and links, not the fsyncs a power cut would need.)
#[test]
fn kill_9_at_any_moment_loses_nothing_acknowledged_and_shows_nothing_half_written() {
    use std::sync::{Arc, Mutex, atomic::AtomicU64};
    let plc = Plc::start();
    publish_device(&plc);
    let device = publish_second_device(&plc);
    let mut dest = start(&plc);
    let base = std::fs::read(support::test_data("atsms-client").join("envelope.cbor")).unwrap();
    let (next, sent, acked) = (
        Arc::new(AtomicU64::new(1)),
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    for round in 0..3u64 {
        let senders: Vec<_> = [None, None, None, Some(dest.lmtp), Some(dest.lmtp)]
            .into_iter()
            .map(|lmtp| {
                let (port, base, next) = (dest.port, base.clone(), next.clone());
                let (sent, acked) = (sent.clone(), acked.clone());
                std::thread::spawn(move || keep_sending(port, lmtp, base, next, sent, acked))
            })
            .collect();
        let before = acked.lock().unwrap().len();
        while acked.lock().unwrap().len() < before + 10 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // A different moment each round, somewhere inside the writes.
        std::thread::sleep(Duration::from_millis(7 * round + 3));
        dest.daemon.kill_dash_9();
        for sender in senders {
            sender.join().unwrap();
        }
        dest.daemon = Daemon::start(&dest.config, dest.port);
        support::load::wait_for_port(dest.lmtp, "LMTP");
    }
    let sent = sent.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let recip = SigningKey::from_pkcs8_pem(&text("recip.key.pem")).unwrap();
    let second = SigningKey::from_pkcs8_pem(&device.key_pem).unwrap();
    for (key, fp) in [(&recip, FP), (&second, device.fingerprint.as_str())] {
        let new = dest
            .store
            .join("did.plc.aaaaaaaaaaaaaaaaaaaaaaaa")
            .join(fp)
            .join("new");
        let on_disk: Vec<Vec<u8>> = std::fs::read_dir(&new)
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect();
        for copy in &on_disk {
            assert!(
                sent.contains(copy),
                "a copy that is no whole envelope sent ({} bytes)",
                copy.len()
            );
        }
        for envelope in &acked {
            assert!(
                on_disk.contains(envelope),
                "an acknowledged envelope lost for {fp}"
            );
        }
        let mut drained: Vec<Vec<u8>> = drained(&dest, key, fp).into_iter().map(|c| c.1).collect();
        let mut expected = on_disk.clone();
        drained.sort();
        expected.sort();
        assert_eq!(drained, expected, "the drain serves what the folder holds");
    }
    assert!(acked.len() >= 30, "{} acknowledged", acked.len());
    eprintln!("{} sent, {} acknowledged, 3 kills", sent.len(), acked.len());
}
