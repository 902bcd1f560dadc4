//! The PDS-side sender (issue 34): `sendMessage` signs once with the device the service holds,
//! seals one envelope per recipient device and delivers it — to the recipient's web inbox (our
//! own destination, the daemon's HTTPS inbox), or when that refuses to its `mailto:` through a
//! throwaway Postfix into our LMTP — and every device opens its own copy exactly once with
//! `atsms-milter open`, which checks the signer's device is published (the X.509 floor).
//! Devices made by `device new`; records on a loopback PDS; tokens made here as a PDS's
//! `getServiceAuth` makes them.

use atsms_testkit as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::infra::device_store::DeviceStore;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use support::daemon::Daemon;
use support::http::{HttpServer, Reply};
use support::plc::Plc;
use support::postfix::free_port;

const SENDER: &str = "did:plc:ssssssssssssssssssssssss";
const R1: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
const R2: &str = "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb";
const R3: &str = "did:plc:cccccccccccccccccccccccc";
const SERVICE: &str = "did:web:sender.test";
const LXM: &str = "org.atsms-milter.mail.sendMessage";

use atsms_milter::infra::clock::unix_now as now;

/// A service token as a PDS's `com.atproto.server.getServiceAuth` makes it.
fn service_token(key: &SigningKey, iss: &str, lxm: &str) -> String {
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let mut jti = [0u8; 16];
    getrandom::fill(&mut jti).unwrap();
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let header = json!({"typ": "JWT", "alg": "ES256"});
    let claims = json!({"iat": now(), "iss": iss, "aud": SERVICE, "exp": now() + 60, "lxm": lxm, "jti": jti});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    format!("{input}.{}", b64(&key.sign(input.as_bytes())))
}

fn run(args: &[&str]) -> (Option<i32>, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), value, stderr)
}

/// `device new --did DID --receive --out DIR`, its records published on the PDS.
fn new_device(plc: &Plc, did: &str, dir: &Path) -> String {
    let (code, made, stderr) = run(&[
        "device",
        "new",
        "--did",
        did,
        "--receive",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{stderr}");
    let fp = made["fingerprint"].as_str().unwrap().to_string();
    for collection in ["at.atsms.x509", "at.atsms.prekey"] {
        plc.put_record(did, collection, &fp, made["records"][collection].clone());
    }
    fp
}

fn encoded(did: &str) -> String {
    did.replace(':', "%3A")
}

fn inbox_record(web: &str, did: &str) -> Value {
    json!({"$type": "at.atsms.inbox", "endpoints": [
        {"uri": format!("{web}/inbox/{}", encoded(did))},
        {"uri": format!("mailto:{}@mx.example.net", did.replace(':', "!"))},
    ]})
}

/// What a device opens of each copy kept for it: `open --json` of every copy.
fn opened(plc: &Plc, store: &Path, did: &str, fp: &str, device: &Path) -> Vec<Value> {
    let devices = DeviceStore::new(store.to_path_buf(), "mx.example.net", 1000, 1 << 26);
    let dir = tempfile::tempdir().unwrap();
    devices
        .list(did, fp, 100)
        .unwrap()
        .iter()
        .map(|copy| {
            let bytes = devices.get(did, fp, &copy.id).unwrap().unwrap();
            let file = dir.path().join(&copy.id);
            std::fs::write(&file, bytes).unwrap();
            let (_, value, stderr) = run(&[
                "open",
                "--json",
                "--device",
                device.to_str().unwrap(),
                "--plc-url",
                &plc.url(),
                "--allow-private-addresses",
                file.to_str().unwrap(),
            ]);
            assert!(value.is_object(), "{stderr}");
            value
        })
        .collect()
}

struct World {
    plc: Plc,
    dir: tempfile::TempDir,
    /// The sender's atproto key (its service tokens).
    key: SigningKey,
    /// Each recipient's devices: (DID, fingerprint, directory).
    devices: Vec<(&'static str, String, PathBuf)>,
}

fn world() -> World {
    let plc = Plc::start();
    let dir = support::public_tempdir();
    let key = SigningKey::generate(Alg::Es256).unwrap();
    plc.set_with_pds(SENDER, &key, None);
    new_device(&plc, SENDER, &dir.path().join("sender"));
    let mut devices = Vec::new();
    for did in [R1, R2, R3] {
        plc.set_with_pds(did, &SigningKey::generate(Alg::Es256).unwrap(), None);
        for n in 1..=2 {
            let at = dir.path().join(format!("{}-{n}", &did[8..12]));
            devices.push((did, new_device(&plc, did, &at), at));
        }
    }
    World {
        plc,
        dir,
        key,
        devices,
    }
}

/// The daemon as both ends run it: the sender (`[[device]]`, `send.smtp` the MTA) and the
/// destination (HTTPS inbox, LMTP, the `atsms_mailbox` map) for `mx.example.net`.
struct Service {
    daemon: Daemon,
    config: String,
    port: u16,
    /// The metrics listener's port.
    metrics: u16,
    store: PathBuf,
    queue: PathBuf,
}

/// The ports of a daemon about to start (Postfix is told its map and LMTP first).
#[derive(Clone, Copy)]
struct Ports {
    xrpc: u16,
    lmtp: u16,
    maps: u16,
}

fn ports() -> Ports {
    Ports {
        xrpc: free_port(),
        lmtp: free_port(),
        maps: free_port(),
    }
}

/// A throwaway Postfix handing `mx.example.net` to the daemon's map and LMTP at `ports`.
fn postfix(ports: &Ports) -> support::postfix::Postfix {
    support::postfix::Postfix::start(
        &[],
        &format!(
            "myhostname = b.test\nvirtual_mailbox_domains = mx.example.net\nvirtual_mailbox_maps = socketmap:inet:127.0.0.1:{}:atsms_mailbox\nvirtual_transport = lmtp:inet:127.0.0.1:{}\n",
            ports.maps, ports.lmtp
        ),
    )
}

fn service(world: &World, ports: &Ports, smtp: u16, send: &str) -> Service {
    let d = world.dir.path();
    let Ports { xrpc, lmtp, maps } = *ports;
    let metrics = free_port();
    let config = format!(
        "[xrpc]\nlisten = \"inet:127.0.0.1:{xrpc}\"\ninbox = true\nservice_did = \"{SERVICE}\"\ntimeout = 5\n\
         [[device]]\ndid = \"{SENDER}\"\ndir = \"{0}/sender\"\n\
         [send]\nsmtp = \"127.0.0.1:{smtp}\"\nqueue = \"{0}/outbox\"\n{send}\n\
         [socketmap]\nlisten = \"inet:127.0.0.1:{maps}\"\n\
         [lmtp]\nlisten = \"inet:127.0.0.1:{lmtp}\"\nmaildir = \"{0}/mail/%d/%n/Maildir\"\n\
         [inbox]\nhosts = [\"mx.example.net\"]\nstore = \"{0}/store\"\n\
         [resolver]\nplc_urls = [\"{1}\"]\nallow_private_addresses = true\n\
         [store]\njti_file = \"{0}/jti\"\nreplay_file = \"{0}/replay\"\n\
         [metrics]\nlisten = \"127.0.0.1:{metrics}\"\n",
        d.display(),
        world.plc.url()
    );
    Service {
        daemon: Daemon::start(&config, xrpc),
        config,
        port: xrpc,
        metrics,
        store: d.join("store"),
        queue: d.join("outbox"),
    }
}

fn send(world: &World, port: u16, to: &[&str], text: &str) -> (Option<i32>, Value, String) {
    send_with(&service_token(&world.key, SENDER, LXM), port, to, text)
}

/// `atsms-milter send` to the service on `port` with the service token `token`.
fn send_with(token: &str, port: u16, to: &[&str], text: &str) -> (Option<i32>, Value, String) {
    let url = format!("http://127.0.0.1:{port}");
    let mut args = vec!["send", "--remote", &url, "--service-auth", token];
    for did in to {
        args.extend(["--to", did]);
    }
    args.extend(["--text", text]);
    run(&args)
}

/// Issue 34's end-to-end case: three recipients with two devices each; two take the envelopes
/// at our own HTTPS inbox, the third's web endpoint refuses, so its envelopes go by SMTP through
/// Postfix into our LMTP. Each of the six devices opens exactly one copy — its own — as sent
/// by the sender's held device, with the text and the whole recipient list.
#[test]
fn one_message_to_three_dids_is_opened_by_each_of_their_six_devices_exactly_once() {
    let world = world();
    let refuser = HttpServer::start(std::sync::Arc::new(|_: &str| {
        Reply::json(403, r#"{"error":"Forbidden","message":"not here"}"#)
    }));
    let ports = ports();
    let postfix = postfix(&ports);
    let svc = service(&world, &ports, postfix.smtp_port, "");
    let web = format!("http://127.0.0.1:{}", svc.port);
    world
        .plc
        .put_record(R1, "at.atsms.inbox", "self", inbox_record(&web, R1));
    world
        .plc
        .put_record(R2, "at.atsms.inbox", "self", inbox_record(&web, R2));
    world.plc.put_record(
        R3,
        "at.atsms.inbox",
        "self",
        inbox_record(&refuser.url(), R3),
    );

    let (code, answer, stderr) = send(&world, svc.port, &[R1, R2, R3], "hello, six devices");
    assert_eq!(code, Some(0), "{stderr}\n{answer}");
    let results = answer["results"].as_array().unwrap();
    let status = |did: &str| {
        let r = results.iter().find(|r| r["did"] == did).unwrap();
        (
            r["status"].as_str().unwrap().to_string(),
            r["devices"].clone(),
        )
    };
    assert_eq!(status(R1), ("delivered".into(), json!(2)), "{answer}");
    assert_eq!(status(R2), ("delivered".into(), json!(2)), "{answer}");
    assert_eq!(status(R3), ("queued".into(), json!(2)), "{answer}");
    assert_eq!(answer["messageId"].as_str().unwrap().len(), 64);
    assert_eq!(
        refuser.request_count(),
        2,
        "one POST per device of the third, refused"
    );

    // The third's two envelopes reach its devices through Postfix and LMTP.
    let store = DeviceStore::new(svc.store.clone(), "mx.example.net", 1000, 1 << 26);
    let deadline = Instant::now() + Duration::from_secs(30);
    let r3: Vec<_> = world.devices.iter().filter(|d| d.0 == R3).collect();
    while r3
        .iter()
        .any(|(did, fp, _)| store.list(did, fp, 100).unwrap().len() < 2)
    {
        assert!(Instant::now() < deadline, "{}", postfix.maillog());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = postfix.maillog();
    assert!(
        log.contains("from=<did.plc.ssssssssssssssssssssssss@mx.example.net>"),
        "MAIL FROM the sender's DID mailbox here: {log}"
    );
    assert!(
        log.contains("mail=2 rcpt=2 data=2"),
        "the recipient's two envelopes in one SMTP session: {log}"
    );

    for (did, fp, dir) in &world.devices {
        let copies = opened(&world.plc, &svc.store, did, fp, dir);
        // Each DID's inbox keeps every envelope for each of its devices (the client's rule):
        // two copies, one sealed to this device.
        assert_eq!(copies.len(), 2, "{did} {fp}: {copies:?}");
        let ok: Vec<&Value> = copies.iter().filter(|c| c["ok"] == true).collect();
        assert_eq!(ok.len(), 1, "{did} {fp} opens exactly one: {copies:?}");
        assert_eq!(ok[0]["sender_did"], SENDER);
        assert_eq!(ok[0]["text"], "hello, six devices");
    }
    let (_, metrics) = support::http::raw_request(
        svc.metrics,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    for line in [
        "atsms_send_recipients_total{status=\"delivered\",try=\"first\"} 2",
        "atsms_send_recipients_total{status=\"queued\",try=\"first\"} 1",
        "atsms_send_envelopes_total{carrier=\"post\",outcome=\"taken\"} 4",
        "atsms_send_envelopes_total{carrier=\"post\",outcome=\"refused\"} 2",
        "atsms_send_envelopes_total{carrier=\"mail\",outcome=\"taken\"} 2",
        "atsms_send_queue 0",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    drop(svc);
}

/// Bounds: a DID with no held device, too many recipients, a text over the largest bucket,
/// the rate per sender, and a recipient that publishes nothing each get their answer; a
/// `mailto:` naming someone else's mailbox is never mailed.
#[test]
fn what_cannot_be_sent_is_refused_and_said_why() {
    let world = world();
    let svc = service(
        &world,
        &ports(),
        free_port(),
        "rate_limit = \"1/1h\"\nmax_recipients = 2",
    );
    // R1: an inbox record whose only endpoint is another's mailbox; R2: no record at all.
    world.plc.put_record(
        R1,
        "at.atsms.inbox",
        "self",
        json!({"$type": "at.atsms.inbox", "endpoints": [{"uri": "mailto:victim@example.com"}]}),
    );
    let (code, answer, stderr) = send(&world, svc.port, &[R1, R2], "hi");
    assert_eq!(code, Some(1), "{stderr}");
    for r in answer["results"].as_array().unwrap() {
        assert_eq!(r["status"], "failed", "{answer}");
        assert!(
            r["reason"].as_str().unwrap().contains("at.atsms.inbox"),
            "{answer}"
        );
    }
    let (code, _, stderr) = send(&world, svc.port, &[R1, R2, R3], "hi");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("InvalidRequest"), "{stderr}");
    let big = "x".repeat(70_000);
    let (code, _, stderr) = send(&world, svc.port, &[R1], &big);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("PayloadTooLarge"), "{stderr}");
    // Another DID: no device held for it; a token for signEnvelope is not one for sendMessage.
    for (token, error) in [
        (service_token(&world.key, R1, LXM), "NotAuthorized"),
        (
            service_token(&world.key, SENDER, "org.atsms-milter.mail.signEnvelope"),
            "BadJwtLexiconMethod",
        ),
    ] {
        let (code, _, stderr) = send_with(&token, svc.port, &[R2], "hi");
        assert_eq!(code, Some(1));
        assert!(stderr.contains(error), "{stderr}");
    }
    // The second call in the hour that got past the checks before the rate (the first one did).
    let (code, _, stderr) = send(&world, svc.port, &[R2], "hi");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("RateLimitExceeded"), "{stderr}");
    assert!(std::fs::read_dir(&svc.queue).unwrap().next().is_none());
    // Every error name given here is one the published lexicon lists.
    let lexicon: Value = serde_json::from_slice(
        &std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("docs/lexicons/org/atsms-milter/mail/sendMessage.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(lexicon["id"], LXM);
    let listed: Vec<&str> = lexicon["defs"]["main"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    for name in [
        "InvalidRequest",
        "PayloadTooLarge",
        "NotAuthorized",
        "BadJwtLexiconMethod",
        "RateLimitExceeded",
    ] {
        assert!(listed.contains(&name), "{name} is not in the lexicon");
    }
}

/// A destination that cannot take the envelope now (503) or answers too slowly: the call still
/// answers before its deadline, `queued`, the delivery kept in `send.queue`; after a restart
/// the daemon tries again and the device gets its copy.
#[test]
fn a_delivery_that_cannot_finish_now_is_queued_and_survives_a_restart() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let world = world();
    let open = std::sync::Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let mut svc = service(&world, &ports(), free_port(), "");
    let inbox_port = svc.port;
    // R1's endpoint: hangs (a destination answering slowly) until opened, then forwards to
    // our inbox by answering 307 to it.
    let slow = HttpServer::start(std::sync::Arc::new(move |target: &str| {
        if gate.load(Ordering::SeqCst) {
            Reply::Headers(
                vec![("location", format!("http://127.0.0.1:{inbox_port}{target}"))],
                Box::new(Reply::json(307, "{}")),
            )
        } else {
            Reply::Hang
        }
    }));
    world.plc.put_record(
        R1,
        "at.atsms.inbox",
        "self",
        json!({"$type": "at.atsms.inbox", "endpoints": [
            {"uri": format!("{}/inbox/{}", slow.url(), encoded(R1))},
            {"uri": format!("mailto:{}@mx.example.net", R1.replace(':', "!"))}]}),
    );
    let started = Instant::now();
    let (code, answer, stderr) = send(&world, svc.port, &[R1], "later");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "answered within xrpc.timeout (5 s)"
    );
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(answer["results"][0]["status"], "queued", "{answer}");
    let queued: Vec<_> = std::fs::read_dir(&svc.queue).unwrap().flatten().collect();
    assert_eq!(queued.len(), 1, "{queued:?}");
    svc.daemon.stop();
    open.store(true, Ordering::SeqCst);
    let svc = Service {
        daemon: Daemon::start(&svc.config, svc.port),
        ..svc
    };
    let store = DeviceStore::new(svc.store.clone(), "mx.example.net", 1000, 1 << 26);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mine: Vec<_> = world.devices.iter().filter(|d| d.0 == R1).collect();
    while mine
        .iter()
        .any(|(did, fp, _)| store.list(did, fp, 100).unwrap().len() < 2)
    {
        assert!(Instant::now() < deadline, "{}", svc.daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    for (did, fp, dir) in &mine {
        let copies = opened(&world.plc, &svc.store, did, fp, dir);
        assert_eq!(copies.iter().filter(|c| c["ok"] == true).count(), 1);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&svc.queue).unwrap().next().is_some() {
        assert!(
            Instant::now() < deadline,
            "the queue empties once delivered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One recipient's two devices, its inbox taking the first envelope posted and not the second
/// (503): `queued`, the device served not served again — the retry posts once, for the other
/// device — and each device then holds exactly one copy it opens.
#[test]
fn a_device_that_could_not_be_served_now_is_served_later_and_the_other_not_again() {
    served_later(|| Reply::json(503, r#"{"error":"Unavailable"}"#));
}

/// The same when the second POST hangs until the call's deadline cuts the try: the device
/// served before the cut is kept as served.
#[test]
fn a_try_cut_at_its_deadline_keeps_the_devices_it_served() {
    served_later(|| Reply::Hang);
}

/// Sends to R2, whose inbox forwards every POST to ours (307) but the second, answered by
/// `second`; then waits for the queue to empty: three POSTs in all, one copy each device opens.
fn served_later(second: fn() -> Reply) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let world = world();
    let svc = service(&world, &ports(), free_port(), "");
    let inbox_port = svc.port;
    let posts = std::sync::Arc::new(AtomicUsize::new(0));
    let count = posts.clone();
    let flaky = HttpServer::start(std::sync::Arc::new(move |target: &str| {
        if count.fetch_add(1, Ordering::SeqCst) == 1 {
            second()
        } else {
            Reply::Headers(
                vec![("location", format!("http://127.0.0.1:{inbox_port}{target}"))],
                Box::new(Reply::json(307, "{}")),
            )
        }
    }));
    world
        .plc
        .put_record(R2, "at.atsms.inbox", "self", inbox_record(&flaky.url(), R2));
    let (code, answer, stderr) = send(&world, svc.port, &[R2], "one now, one later");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(answer["results"][0]["status"], "queued", "{answer}");
    let mine: Vec<_> = world.devices.iter().filter(|d| d.0 == R2).collect();
    let deadline = Instant::now() + Duration::from_secs(40);
    while std::fs::read_dir(&svc.queue).unwrap().next().is_some() {
        assert!(Instant::now() < deadline, "{}", svc.daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        posts.load(Ordering::SeqCst),
        3,
        "two, then one for the device left"
    );
    for (did, fp, dir) in &mine {
        let copies = opened(&world.plc, &svc.store, did, fp, dir);
        assert_eq!(copies.len(), 2, "{copies:?}");
        let ok: Vec<_> = copies.iter().filter(|c| c["ok"] == true).collect();
        assert_eq!(ok.len(), 1, "{copies:?}");
        assert_eq!(ok[0]["text"], "one now, one later");
    }
}

/// A web inbox that cannot take the envelope now and says when to ask again (`429`,
/// `Retry-After: 3600`): `queued`, and the try again waits the hour asked, not the backoff's
/// ten seconds.
#[test]
fn a_web_inboxs_retry_after_is_honoured() {
    let world = world();
    let svc = service(&world, &ports(), free_port(), "");
    let busy = HttpServer::start(std::sync::Arc::new(|_: &str| {
        Reply::Headers(
            vec![("retry-after", "3600".to_string())],
            Box::new(Reply::json(429, r#"{"error":"RateLimitExceeded"}"#)),
        )
    }));
    world
        .plc
        .put_record(R1, "at.atsms.inbox", "self", inbox_record(&busy.url(), R1));
    let (code, answer, stderr) = send(&world, svc.port, &[R1], "later, as asked");
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(answer["results"][0]["status"], "queued", "{answer}");
    let files: Vec<_> = std::fs::read_dir(&svc.queue).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let kept: Value = serde_json::from_slice(&std::fs::read(files[0].path()).unwrap()).unwrap();
    let wait = kept["next_at"].as_i64().unwrap() - now();
    assert!(
        (3500..=3600).contains(&wait),
        "next try in {wait} s: {kept}"
    );
}
