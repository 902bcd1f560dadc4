//! Proof under load: 5 000 messages from 500 distinct DIDs through the milter, the PLC
//! directory adding 100 ms to every answer. The directory must see exactly 500 requests
//! (merged lookups and the cache), nothing may be dropped; the run reports messages per second
//! and the 99th-percentile end-of-message latency (reported, never asserted: machines are
//! shared and noisy).

use atsms_testkit as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::format::envelope::sign;
use atsms_milter::format::message::read_message;
use atsms_milter::infra::config::{PolicyConfig, ResolverConfig};
use indymilter_test::{EomAction, Status, TestConnection};
use support::http::{HttpServer, Reply};
use support::ids::plc_did;
use support::milter::{RunningMilter, split_message};

const NOW: i64 = 1_795_000_000;
const DIDS: usize = 500;
const PER_DID: usize = 10;
const CONNECTIONS: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_messages_from_five_hundred_dids() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let multikey = key.public_key().to_multikey();
    let plc = HttpServer::start(Arc::new(move |target: &str| {
        let did = target.trim_start_matches('/');
        let doc = serde_json::json!({
            "id": did,
            "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": did, "publicKeyMultibase": multikey}],
        });
        Reply::Delayed(
            Duration::from_millis(100),
            Box::new(Reply::json(200, doc.to_string())),
        )
    }));

    // Messages, interleaved so that each DID's ten messages arrive close together.
    let body =
        b"From: sender@example.com\r\nTo: <bob@mx.example.net>\r\nSubject: load\r\n\r\nhello\r\n";
    let parsed = read_message(&body[..]).unwrap();
    let mut messages = Vec::with_capacity(DIDS * PER_DID);
    for round in 0..PER_DID {
        for n in 0..DIDS {
            let did = plc_did(n);
            let kid = format!("{did}#atproto");
            let request = sign::SignRequest {
                key: &key,
                kid: &kid,
                now: NOW,
                ttl: 3600,
                rcpt: &[],
                jti: format!("load-{n}-{round}-0123456789"),
            };
            let token = sign::sign_token(&request, &parsed.headers, parsed.body_hash).unwrap();
            let field = sign::format_field(&did, &token, "\r\n");
            messages.push(split_message(&[field.as_bytes(), b"\r\n", body].concat()));
        }
    }
    let messages = Arc::new(messages);

    let resolver = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        timeout: std::num::NonZeroU64::new(30).unwrap(),
        // 500 new DIDs at once: this test is about load, not the directory's budget.
        max_requests_per_second: std::num::NonZeroU32::new(100_000).unwrap(),
        ..Default::default()
    };
    let policy = PolicyConfig {
        authserv_id: Some("mx.test".parse().unwrap()),
        trusted_networks: vec![],
        replay: false,
        ..Default::default()
    };
    let milter = RunningMilter::start(resolver, policy, NOW).await;

    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CONNECTIONS {
        let messages = messages.clone();
        let addr = milter.addr;
        clients.push(tokio::spawn(async move {
            let mut conn = TestConnection::configure().read_timeout(Duration::from_secs(120)).open_tcp(addr).await.unwrap();
            conn.connect("client.example", std::net::SocketAddr::from(([192, 0, 2, 1], 4000))).await.unwrap();
            let mut latencies = Vec::new();
            let mut passed = 0;
            for i in (c..messages.len()).step_by(CONNECTIONS) {
                let (fields, body) = &messages[i];
                conn.mail(["<sender@example.com>"]).await.unwrap();
                conn.rcpt(["<bob@mx.example.net>"]).await.unwrap();
                for (name, value) in fields {
                    conn.header(name.as_str(), value.as_str()).await.unwrap();
                }
                conn.body(body.clone()).await.unwrap();
                let sent = Instant::now();
                let (actions, status) = conn.eom().await.unwrap();
                latencies.push(sent.elapsed());
                assert_eq!(status, Status::Continue);
                let pass = actions.actions.iter().any(|a| matches!(a, EomAction::InsertHeader { value, .. } if value.to_bytes().windows(10).any(|w| w == b"atsms=pass")));
                passed += pass as usize;
            }
            (passed, latencies)
        }));
    }
    let mut passed = 0;
    let mut latencies = Vec::new();
    for client in clients {
        let (p, l) = client.await.unwrap();
        passed += p;
        latencies.extend(l);
    }
    let elapsed = started.elapsed();
    milter.stop().await;

    assert_eq!(latencies.len(), DIDS * PER_DID, "every message answered");
    assert_eq!(passed, DIDS * PER_DID, "every message passed");
    assert_eq!(plc.request_count(), DIDS, "one directory request per DID");

    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    println!(
        "load: {} messages from {DIDS} DIDs over {CONNECTIONS} connections in {:.2} s: {:.0} messages/s; end-of-message latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; PLC requests {}",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        p(0.50).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        plc.request_count()
    );
}
