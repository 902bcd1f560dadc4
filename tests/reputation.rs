//! Sender reputation with the real daemon (milter, driven as Postfix drives it): a loopback
//! labeler speaking `com.atproto.label.queryLabels` with labels signed by test keys, a PLC
//! directory serving documents and audit logs, deny and allow files reloaded on SIGHUP, and
//! per-DID rate limits — in memory, and across two daemons sharing a real Redis.

use atsms_testkit as support;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atsms_milter::format::crypto::{Alg, SigningKey};
use base64::Engine;
use indymilter_test::{EomAction, Status};
use serde_json::{Value, json};
use support::daemon::Daemon;
use support::http::{HttpServer, Reply, query_param};
use support::ids::plc_did;
use support::milter::send_from;
use support::plc::Plc;
use support::postfix::free_port;
use support::signing::signed_message;

use atsms_milter::infra::clock::unix_now as now;

fn datetime(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A label as a labeler serves it: the fields signed as DAG-CBOR (encoded here from a JSON
/// map, not from the daemon's struct), `sig` as `{"$bytes": base64}`.
fn label(key: &SigningKey, src: &str, uri: &str, val: &str, extra: Value) -> Value {
    let mut fields =
        json!({"ver": 1, "src": src, "uri": uri, "val": val, "cts": datetime(now() - 60)});
    for (k, v) in extra.as_object().unwrap() {
        fields[k] = v.clone();
    }
    let bytes = serde_ipld_dagcbor::to_vec(&fields).unwrap();
    let sig = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.sign(&bytes));
    fields["sig"] = json!({"$bytes": sig});
    fields
}

/// A labeler: its labels by subject DID, and subjects it never answers about.
struct Labeler {
    did: String,
    key: SigningKey,
    labels: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    hangs: Arc<Mutex<HashSet<String>>>,
    _server: HttpServer,
}

impl Labeler {
    fn start(plc: &Plc, did: String) -> Labeler {
        let key = SigningKey::generate(Alg::Es256k).unwrap();
        let labels: Arc<Mutex<HashMap<String, Vec<Value>>>> = Arc::default();
        let hangs: Arc<Mutex<HashSet<String>>> = Arc::default();
        let (l, h, me) = (labels.clone(), hangs.clone(), did.clone());
        let server = HttpServer::start(Arc::new(move |target: &str| {
            if !target.starts_with("/xrpc/com.atproto.label.queryLabels?") {
                return Reply::json(404, r#"{"error":"XRPCNotSupported"}"#);
            }
            let subject = query_param(target, "uriPatterns").unwrap_or_default();
            assert_eq!(query_param(target, "sources").as_deref(), Some(me.as_str()));
            if h.lock().unwrap().contains(&subject) {
                return Reply::Hang;
            }
            let labels = l.lock().unwrap().get(&subject).cloned().unwrap_or_default();
            Reply::json(200, json!({"labels": labels}).to_string())
        }));
        plc.set_document(
            &did,
            json!({
                "id": did,
                "alsoKnownAs": [],
                "verificationMethod": [
                    {"id": "#atproto", "type": "Multikey", "controller": did, "publicKeyMultibase": SigningKey::generate(Alg::Es256k).unwrap().public_key().to_multikey()},
                    {"id": "#atproto_label", "type": "Multikey", "controller": did, "publicKeyMultibase": key.public_key().to_multikey()},
                ],
                "service": [{"id": "#atproto_labeler", "type": "AtprotoLabeler", "serviceEndpoint": server.url()}],
            })
            .to_string(),
        );
        Labeler {
            did,
            key,
            labels,
            hangs,
            _server: server,
        }
    }

    fn says(&self, subject: &str, labels: Vec<Value>) {
        self.labels
            .lock()
            .unwrap()
            .insert(subject.to_string(), labels);
    }
}

/// A sender: a DID with a key, an old identity unless made young.
fn sender(plc: &Plc, n: usize, created: i64) -> (String, SigningKey) {
    let did = plc_did(n);
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    plc.set(&did, &key, None);
    plc.set_created(&did, &datetime(created), 3);
    (did, key)
}

/// The refusal: `550 5.7.1 …` or `451 4.7.1 …`; empty when the message went on.
fn refusal(status: &Status) -> String {
    match status {
        Status::Reject { message: Some(m) } | Status::Tempfail { message: Some(m) } => {
            m.to_str().unwrap().to_string()
        }
        _ => String::new(),
    }
}

fn header(actions: &[EomAction]) -> String {
    actions
        .iter()
        .find_map(|a| match a {
            EomAction::InsertHeader { name, value, .. }
                if name.as_bytes() == b"Authentication-Results" =>
            {
                Some(value.to_str().unwrap().to_string())
            }
            _ => None,
        })
        .unwrap_or_default()
}

async fn send(port: u16, did: &str, key: &SigningKey) -> (Vec<EomAction>, Status) {
    let message = signed_message(key, &format!("{did}#atproto"), now());
    send_from(
        format!("127.0.0.1:{port}").parse().unwrap(),
        "192.0.2.25",
        "",
        &message,
    )
    .await
}

fn config(plc: &Plc, port: u16, reputation: &str, store: &str) -> String {
    format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\ntimeout = 2\n\n[cache]\nerror = 1\n\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\nreplay = false\n\n[reputation]\n{reputation}\n\n{store}\n[log]\nlevel = \"debug\"\n",
        plc.url()
    )
}

/// What the labeler says: `spam` and `porn` labels, a `spam` label withdrawn (later, and
/// within its second), one expired, one signed by a stranger, one on an allowed sender; and
/// it never answers about `hanging`.
fn publish_labels(
    l: &Labeler,
    [
        spam,
        porn,
        negated,
        negated_at_once,
        expired,
        forged,
        allowed,
        hanging,
    ]: [&str; 8],
) {
    l.says(spam, vec![label(&l.key, &l.did, spam, "spam", json!({}))]);
    l.says(porn, vec![label(&l.key, &l.did, porn, "porn", json!({}))]);
    l.says(
        negated,
        vec![
            label(
                &l.key,
                &l.did,
                negated,
                "spam",
                json!({"cts": datetime(now() - 600)}),
            ),
            label(&l.key, &l.did, negated, "spam", json!({"neg": true})),
        ],
    );
    // Labelled and withdrawn within one second.
    let second = datetime(now() - 120).replace('Z', "");
    l.says(
        negated_at_once,
        vec![
            label(
                &l.key,
                &l.did,
                negated_at_once,
                "spam",
                json!({"cts": format!("{second}.100Z")}),
            ),
            label(
                &l.key,
                &l.did,
                negated_at_once,
                "spam",
                json!({"neg": true, "cts": format!("{second}.900Z")}),
            ),
        ],
    );
    l.says(
        expired,
        vec![label(
            &l.key,
            &l.did,
            expired,
            "spam",
            json!({"exp": datetime(now() - 1)}),
        )],
    );
    let stranger = SigningKey::generate(Alg::Es256k).unwrap();
    l.says(
        forged,
        vec![label(&stranger, &l.did, forged, "spam", json!({}))],
    );
    l.says(
        allowed,
        vec![label(&l.key, &l.did, allowed, "spam", json!({}))],
    );
    l.hangs.lock().unwrap().insert(hanging.to_string());
}

/// The log's lines for the labels, lists and age decided above.
fn the_log_says_what_was_decided(daemon: &Daemon, [clean, spam, forged, allowed]: [&str; 4]) {
    // The last message's line (lines keep their order: the earlier ones are there too).
    let clean_did = format!("did={} ", clean);
    let last_line = |log: &str| {
        log.lines()
            .any(|l| l.contains(&clean_did) && l.contains(" denied=yes"))
    };
    let log = daemon.log_when(last_line);
    assert!(last_line(&log), "{log}");
    let spam_line = log
        .lines()
        .find(|l| l.contains(&format!("did={}", spam)) && l.contains("atsms=pass"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(spam_line.contains(" label=spam"), "{spam_line}");
    assert!(spam_line.contains("action=reject"), "{spam_line}");
    println!("{spam_line}");
    assert!(
        log.contains(&format!(
            "label \"spam\" about {} ignored: signature does not verify",
            forged
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("did={} ", allowed)) && log.contains(" allowed=yes"),
        "{log}"
    );
    assert!(log.contains(" age=young"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_lists_and_age_decide_with_the_judge() {
    let plc = Plc::start();
    let labeler = Labeler::start(&plc, plc_did(100));
    let old = now() - 400 * 86_400;
    let senders: Vec<(String, SigningKey)> = (1..=11).map(|n| sender(&plc, n, old)).collect();
    let [
        clean,
        spam,
        porn,
        negated,
        expired,
        forged,
        hanging,
        denied,
        allowed,
        young,
        negated_at_once,
    ] = senders.iter().collect::<Vec<_>>().try_into().unwrap();
    plc.set_created(&young.0, &datetime(now() - 86_400), 0);

    publish_labels(
        &labeler,
        [
            &spam.0,
            &porn.0,
            &negated.0,
            &negated_at_once.0,
            &expired.0,
            &forged.0,
            &allowed.0,
            &hanging.0,
        ],
    );

    let dir = tempfile::tempdir().unwrap();
    let (deny, allow) = (dir.path().join("deny"), dir.path().join("allow"));
    std::fs::write(&deny, format!("# known spammers\n{}\n", denied.0)).unwrap();
    std::fs::write(&allow, format!("{}\n", allowed.0)).unwrap();
    let port = free_port();
    let daemon = Daemon::start(
        &config(
            &plc,
            port,
            &format!(
                "deny = \"{}\"\nallow = \"{}\"\nlabelers = [\"{}\"]\nlabel_actions = {{ spam = \"reject\", porn = \"accept\" }}\nmin_did_age = 2592000\non_young = \"junk\"",
                deny.display(),
                allow.display(),
                labeler.did
            ),
            "",
        ),
        port,
    );

    let refused = |status: &Status, text: &str| {
        assert!(matches!(status, Status::Reject { .. }), "{status:?}");
        assert!(refusal(status).contains(text), "{status:?}");
    };
    // Nothing applies: a plain pass.
    let (actions, status) = send(port, &clean.0, &clean.1).await;
    assert_eq!(status, Status::Continue);
    let value = header(&actions);
    assert!(
        value.contains("atsms=pass") && !value.contains("policy.atsms-"),
        "{value}"
    );
    // A verified `spam` label, mapped to reject.
    let (actions, status) = send(port, &spam.0, &spam.1).await;
    refused(&status, "550 5.7.1 AT-SMS sender is labelled \"spam\"");
    assert!(header(&actions).is_empty());
    // A label mapped to accept is shown, nothing else.
    let (actions, status) = send(port, &porn.0, &porn.1).await;
    assert_eq!(status, Status::Continue);
    let value = header(&actions);
    let (label, d) = (
        value.find("policy.atsms-label=porn"),
        value.find("header.d="),
    );
    assert!(label.is_some() && label < d, "before header.d: {value}");
    // Withdrawn, expired, and badly signed labels: nothing.
    for who in [negated, negated_at_once, expired, forged] {
        let (actions, status) = send(port, &who.0, &who.1).await;
        assert_eq!(status, Status::Continue, "{}", who.0);
        assert!(
            !header(&actions).contains("atsms-label"),
            "{}",
            header(&actions)
        );
    }
    // A labeler that never answers: the mail passes once resolver.timeout is out.
    let (actions, status) = send(port, &hanging.0, &hanging.1).await;
    assert_eq!(status, Status::Continue);
    assert!(header(&actions).contains("atsms=pass"));
    // The lists: denied refused; allowed skips the labels.
    let (_, status) = send(port, &denied.0, &denied.1).await;
    refused(&status, "deny list");
    let (actions, status) = send(port, &allowed.0, &allowed.1).await;
    assert_eq!(status, Status::Continue);
    assert!(!header(&actions).contains("atsms-"), "{}", header(&actions));
    // A day-old identity.
    let (actions, status) = send(port, &young.0, &young.1).await;
    assert_eq!(
        status,
        Status::Continue,
        "junk: the delivery agent files it"
    );
    assert!(
        header(&actions).contains("policy.atsms-age=young"),
        "{}",
        header(&actions)
    );

    // SIGHUP re-reads the lists.
    std::fs::write(&deny, format!("{}\n{}\n", denied.0, clean.0)).unwrap();
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = send(port, &clean.0, &clean.1).await;
        if refusal(&status).contains("deny list") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not reloaded: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    the_log_says_what_was_decided(&daemon, [&clean.0, &spam.0, &forged.0, &allowed.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limit_is_counted_across_a_fleet_and_alone_in_memory() {
    let plc = Plc::start();
    let (did, key) = sender(&plc, 1, now() - 400 * 86_400);
    let rules = "rate_limit = 3";

    // Two daemons sharing a real Redis: 2 + 1 messages are within the limit, the 4th not.
    let redis = support::redis::Redis::start();
    let store = redis.store_toml();
    let (a, b) = (free_port(), free_port());
    let _daemon_a = Daemon::start(&config(&plc, a, rules, &store), a);
    let _daemon_b = Daemon::start(&config(&plc, b, rules, &store), b);
    for port in [a, b, a] {
        assert_eq!(send(port, &did, &key).await.1, Status::Continue);
    }
    let (_, status) = send(b, &did, &key).await;
    assert!(matches!(status, Status::Tempfail { .. }), "{status:?}");
    assert_eq!(
        refusal(&status),
        "451 4.7.1 too much mail from this AT-SMS sender, try again later"
    );
    let count = redis.cli(&["--scan", "--pattern", "atsms:count:rate:*"]);
    assert!(count.contains(&did), "{count}");

    // Without Redis, one daemon counts alone.
    let (other, other_key) = sender(&plc, 2, now() - 400 * 86_400);
    let c = free_port();
    let _daemon_c = Daemon::start(&config(&plc, c, rules, ""), c);
    for _ in 0..3 {
        assert_eq!(send(c, &other, &other_key).await.1, Status::Continue);
    }
    let (_, status) = send(c, &other, &other_key).await;
    assert!(refusal(&status).starts_with("451 4.7.1 "), "{status:?}");
}

/// Anyone can set off PLC lookups for free (socketmap lookups of random DID mailboxes, RCPT
/// checks, XRPC calls) and try to spend the directory's budget so that a new identity's age
/// cannot be learnt. Mail keeps its own share, and an age that cannot be learnt is never
/// taken for "old": a 10-minute-old identity is refused during the flood, and one whose
/// age the directory cannot tell is deferred (`on_age_unknown`), never accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spending_the_budget_from_outside_never_lets_a_new_identity_through() {
    let plc = Plc::start();
    let young = sender(&plc, 41, now() - 600);
    let ageless = {
        let did = plc_did(42);
        let key = SigningKey::generate(Alg::Es256k).unwrap();
        plc.set(&did, &key, None);
        (did, key)
    };
    let (port, maps) = (free_port(), free_port());
    let _daemon = Daemon::start(
        &config(
            &plc,
            port,
            "min_did_age = 86400\non_young = \"reject\"",
            &format!(
                "[socketmap]\nlisten = \"inet:127.0.0.1:{maps}\"\ntimeout = 1\n[inbox]\nhosts = [\"mx.test\"]\n"
            ),
        )
        .replace("timeout = 2\n", "timeout = 2\nmax_requests_per_second = 5\n"),
        port,
    );
    // The flood: random DID mailboxes from fifty connections, without a pause, until the
    // test ends (each asks the directory unless its budget says no).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..50)
        .map(|worker| {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut c = support::socketmap::SocketmapClient::connect(("127.0.0.1", maps)).await;
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let did = plc_did(10_000 + worker * 10_000 + n);
                    let key = format!("did.plc.{}@anything.example", &did["did:plc:".len()..]);
                    c.lookup("atsms_alias", &key).await;
                    n += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (actions, status) = send(port, &young.0, &young.1).await;
    assert!(
        refusal(&status).starts_with("550 5.7.1 AT-SMS sender identity is too new"),
        "{status:?} {actions:?}"
    );
    let (actions, status) = send(port, &ageless.0, &ageless.1).await;
    assert!(
        matches!(status, Status::Tempfail { .. })
            && refusal(&status)
                .starts_with("451 4.7.1 AT-SMS sender identity's age cannot be learnt now"),
        "{status:?} {actions:?}"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    futures::future::join_all(workers).await;
}
