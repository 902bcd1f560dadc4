//! The Exim path against the milter path, and reputation against none, by the daemon's CPU per
//! message on the same signed messages (4 KiB, ES256K, the sender's document warm):
//! - the milter, driven by indymilter-test playing Postfix (unix socket);
//! - the Exim scanner, driven by a client speaking what Exim 4.96's `spam` condition sends
//!   (`CHECK RSPAMC/1.3`, the mbox copy, read until the daemon closes);
//! - the milter of a second daemon with every reputation rule on and warm: a deny list of
//!   10 000 DIDs, a labeler whose label is applied, an identity age, a rate limit in memory.
//!
//!   scripts/bench/load.sh scanner_load [--messages 5000] [--connections 16]

use atsms_testkit::http;
use atsms_testkit::load as common;

use std::sync::Arc;
use std::time::Instant;

use atsms_milter::format::crypto::SigningKey;
use atsms_milter::format::envelope::sign;
use base64::Engine;
use common::{Ready, load, split, usage};
use http::{HttpServer, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";
const LABELER: &str = "did:plc:ar7c4by46qjdydhdevvrndac";

use atsms_milter::infra::clock::unix_now as now;

/// A signed label as a labeler serves it.
fn label(key: &SigningKey, val: &str) -> serde_json::Value {
    let mut fields = serde_json::json!({"ver": 1, "src": LABELER, "uri": DID, "val": val,
        "cts": "2026-01-01T00:00:00.000Z"});
    let bytes = serde_ipld_dagcbor::to_vec(&fields).unwrap();
    let sig = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.sign(&bytes));
    fields["sig"] = serde_json::json!({"$bytes": sig});
    fields
}

/// One scan as Exim makes it: connect, head and mbox copy, read until the daemon closes.
async fn scan(port: u16, head: &[u8], mbox: &[u8]) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(head).await.unwrap();
    stream.write_all(mbox).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).contains("atsms=pass"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let messages = common::numbers(&args, "--messages", "5000")[0];
    let connections = common::numbers(&args, "--connections", "16")[0];
    let work = common::work_dir("bench-scanner");
    let (key, _) = common::key_file(&work, "sender.pem");
    let labeler_key = SigningKey::generate(atsms_milter::format::crypto::Alg::Es256k).unwrap();

    let labels = serde_json::json!({"labels": [label(&labeler_key, "porn")]}).to_string();
    let labeler = HttpServer::start(Arc::new(move |_: &str| Reply::json(200, labels.clone())));
    let sender_doc = serde_json::json!({
        "id": DID, "alsoKnownAs": [],
        "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": DID, "publicKeyMultibase": key.public_key().to_multikey()}],
    })
    .to_string();
    let labeler_doc = serde_json::json!({
        "id": LABELER,
        "verificationMethod": [{"id": "#atproto_label", "type": "Multikey", "controller": LABELER, "publicKeyMultibase": labeler_key.public_key().to_multikey()}],
        "service": [{"id": "#atproto_labeler", "type": "AtprotoLabeler", "serviceEndpoint": labeler.url()}],
    })
    .to_string();
    let audit = format!(r#"[{{"did":"{DID}","createdAt":"2024-01-01T00:00:00.000Z"}}]"#);
    let plc = HttpServer::start(Arc::new(move |target: &str| {
        match target.trim_start_matches('/') {
            t if t.ends_with("/log/audit") => Reply::json(200, audit.clone()),
            t if t == LABELER => Reply::json(200, labeler_doc.clone()),
            _ => Reply::json(200, sender_doc.clone()),
        }
    }));

    let deny = work.join("deny");
    let list: String = (0..10_000)
        .map(|n| {
            let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
            let id: String = (0..24)
                .map(|i| alphabet[(n >> (i % 14)) % 32] as char)
                .collect();
            format!("did:plc:{id}\n")
        })
        .collect();
    std::fs::write(&deny, list).unwrap();
    let w = work.display();
    let exim_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = |name: &str, extra: &str| {
        format!(
            "[milter]\nlisten = \"unix:{w}/{name}.sock\"\n\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\nreplay = false\n\n[log]\nlevel = \"warn\"\n\n[control]\nsocket = \"{w}/{name}-control.sock\"\n\n{extra}",
            plc.url()
        )
    };
    let write = |name: &str, text: String| {
        let path = work.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let plain = common::start_daemon(
        "atsms-milter",
        &write(
            "plain",
            base(
                "plain",
                &format!("[exim]\nlisten = \"inet:127.0.0.1:{exim_port}\"\n"),
            ),
        ),
        Ready::Socket(work.join("plain.sock")),
    );
    let reputation = common::start_daemon(
        "atsms-milter + reputation",
        &write(
            "reputation",
            base(
                "reputation",
                &format!(
                    "[reputation]\ndeny = \"{}\"\nlabelers = [\"{LABELER}\"]\nlabel_actions = {{ porn = \"accept\" }}\nmin_did_age = 86400\nrate_limit = 100000000\n",
                    deny.display()
                ),
            ),
        ),
        Ready::Socket(work.join("reputation.sock")),
    );

    // The message, signed now; as the milter gets it and as Exim's mbox copy.
    let raw = common::base_message(4096);
    let parsed = atsms_milter::format::message::read_message(&raw[..]).unwrap();
    let kid = format!("{DID}#atproto");
    let request = sign::SignRequest {
        key: &key,
        kid: &kid,
        now: now(),
        ttl: 86_400,
        rcpt: &[],
        jti: sign::random_jti(),
    };
    let token = sign::sign_token(&request, &parsed.headers, parsed.body_hash).unwrap();
    let signed = [
        sign::format_field(DID, &token, "\r\n").into_bytes(),
        b"\r\n".to_vec(),
        raw,
    ]
    .concat();
    let milter_message = Arc::new(split(&signed));
    let mbox = [
        b"From alice@example.com Wed Dec  2 09:00:00 2026\nX-Envelope-From: <alice@example.com>\nX-Envelope-To: bob@mx.example.net\nReceived: from client.example ([192.0.2.1])\n\tby exim.test with esmtp (Exim 4.96)\n\tid 1xYoXk-0001vK-1G\n\tfor bob@mx.example.net; Wed, 02 Dec 2026 09:00:00 +0000\n".to_vec(),
        String::from_utf8(signed.clone()).unwrap().replace("\r\n", "\n").into_bytes(),
    ]
    .concat();
    let head = format!(
        "CHECK RSPAMC/1.3\r\nContent-length: {}\r\nQueue-Id: 1xYoXk-0001vK-1G\r\nFrom: <alice@example.com>\r\nRecipient-Number: 1\r\nRcpt: <bob@mx.example.net>\r\nHelo: client.example\r\nIP: 192.0.2.1\r\n\r\n",
        mbox.len()
    )
    .into_bytes();
    let (head, mbox) = (Arc::new(head), Arc::new(mbox));

    // Warm: the sender's document, the labels and the age in the caches.
    load(&plain, &milter_message, 1, 20, "atsms=pass").await;
    load(&reputation, &milter_message, 1, 20, "atsms-label=porn").await;
    scan(exim_port, &head, &mbox).await;

    let milter = load(&plain, &milter_message, connections, messages, "atsms=pass").await;
    let (cpu_before, _) = usage(plain.child.id());
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let (head, mbox) = (head.clone(), mbox.clone());
            let share = messages / connections + usize::from(c < messages % connections);
            tokio::spawn(async move {
                for _ in 0..share {
                    scan(exim_port, &head, &mbox).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let exim_rate = messages as f64 / started.elapsed().as_secs_f64();
    let (cpu_after, _) = usage(plain.child.id());
    let exim_cpu = (cpu_after - cpu_before) / messages as f64 * 1000.0;
    let with_reputation = load(
        &reputation,
        &milter_message,
        connections,
        messages,
        "atsms-label=porn",
    )
    .await;

    println!(
        "| path ({connections} connections, 4 KiB, ES256K, warm) | msgs/s | CPU s / 1000 msgs |"
    );
    println!("|---|---|---|");
    println!(
        "| milter | {:.0} | {:.3} |",
        milter.rate, milter.cpu_per_1000
    );
    println!(
        "| Exim scanner (a connection per message, as Exim) | {exim_rate:.0} | {exim_cpu:.3} |"
    );
    println!(
        "| milter, every reputation rule on | {:.0} | {:.3} |",
        with_reputation.rate, with_reputation.cpu_per_1000
    );
    println!(
        "\nExim path / milter path, CPU per message: {:.2}x (goal ≤ 1.5x)\nreputation adds {:+.1}% to the milter's CPU per message (goal < 10%)",
        exim_cpu / milter.cpu_per_1000,
        (with_reputation.cpu_per_1000 / milter.cpu_per_1000 - 1.0) * 100.0
    );
}
