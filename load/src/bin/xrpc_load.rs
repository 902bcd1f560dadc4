//! The signing service under load — k256 callers, their documents and handles warm in the
//! cache — against a bare in-process loop doing the same work per request: parse and check the
//! service token, verify its signature with the caller's key, sign the envelope token. Both in
//! the same run. The service is the real daemon over loopback HTTP/1.1 (keep-alive), driven by
//! N connections at once; each request carries its own token (a `jti` is good once).
//!
//!   scripts/bench/load.sh xrpc_load [--requests 5000] [--connections 16]

use atsms_testkit::dns;
use atsms_testkit::load as common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use atsms_milter::atproto::service_auth::{self, SIGN_ENVELOPE};
use atsms_milter::format::crypto::SigningKey;
use atsms_milter::format::envelope::sign::Covered;
use atsms_milter::infra::config::{SigningConfig, SigningKeyConfig};
use atsms_milter::policy::signer::Signer;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";
const SERVICE: &str = "did:web:signer.test";
const FROM: &str = "alice@alice.example.com";

use atsms_milter::infra::clock::unix_now as now;

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A service token as atproto's createServiceJwt makes it, with the n-th `jti`.
fn token(key: &SigningKey, n: usize) -> String {
    let t = now();
    let claims = format!(
        "{{\"iat\":{t},\"iss\":\"{DID}\",\"aud\":\"{SERVICE}\",\"exp\":{},\"lxm\":\"{SIGN_ENVELOPE}\",\"jti\":\"{n:032x}\"}}",
        t + 3000
    );
    let input = format!(
        "{}.{}",
        b64(br#"{"typ":"JWT","alg":"ES256K"}"#),
        b64(claims.as_bytes())
    );
    format!("{input}.{}", b64(&key.sign(input.as_bytes())))
}

fn body() -> String {
    serde_json::json!({"from": FROM, "h": ["from", "from", "to", "to", "subject", "subject", "date", "date"], "hh": b64(&[1; 32]), "bh": b64(&[2; 32])}).to_string()
}

/// One keep-alive connection sending `tokens`' requests one after another.
async fn client(port: u16, tokens: Vec<String>, body: String) {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let mut stream = tokio::io::BufReader::new(stream);
    for token in tokens {
        let request = format!(
            "POST /xrpc/{SIGN_ENVELOPE} HTTP/1.1\r\nHost: signer.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nAuthorization: Bearer {token}\r\n\r\n{body}",
            body.len()
        );
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut status = String::new();
        stream.read_line(&mut status).await.unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut answer = vec![0; length];
        stream.read_exact(&mut answer).await.unwrap();
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "{status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

async fn service_run(port: u16, tokens: Vec<String>, connections: usize) -> Duration {
    let body = body();
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); connections];
    for (i, t) in tokens.into_iter().enumerate() {
        shares[i % connections].push(t);
    }
    let started = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| tokio::spawn(client(port, share, body.clone())))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let requests = common::numbers(&args, "--requests", "5000")[0];
    let connections = common::numbers(&args, "--connections", "16")[0];

    let work = common::work_dir("bench-xrpc");
    let (key, key_file) = common::key_file(&work, "signing.pem");
    let document = serde_json::json!({
        "id": DID,
        "alsoKnownAs": ["at://alice.example.com"],
        "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": DID, "publicKeyMultibase": key.public_key().to_multikey()}],
    });
    let plc = common::serve_document(document.to_string());
    let mut zone = HashMap::new();
    zone.insert(
        "_atproto.alice.example.com".to_string(),
        vec![dns::Answer::Txt(format!("did={DID}"))],
    );
    let dns = dns::DnsServer::start(zone);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let w = work.display();
    let conf = work.join("atsms.toml");
    std::fs::write(
        &conf,
        format!(
            "[milter]\nlisten = \"unix:{w}/milter.sock\"\n\n[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\nservice_did = \"{SERVICE}\"\n\n[resolver]\nplc_urls = [\"{plc}\"]\ndns_servers = [\"{}\"]\nallow_private_addresses = true\n\n[[signing.key]]\ndid = \"{DID}\"\nkid = \"{DID}#atproto\"\nkey_file = \"{}\"\nlogins = [\"*\"]\n\n[log]\nlevel = \"warn\"\n\n[control]\nsocket = \"{w}/control.sock\"\n",
            dns.server_arg(),
            key_file.display()
        ),
    )
    .unwrap();
    let daemon = common::start_daemon("atsms-milter", &conf, common::Ready::Port(port));
    let pid = daemon.child.id();

    // Tokens made beforehand: the client's signing is not the service's cost.
    let tokens: Vec<String> = (0..requests + 50).map(|n| token(&key, n)).collect();
    let (warm, tokens) = tokens.split_at(50);
    service_run(port, warm.to_vec(), 1).await; // the document and handle into the cache

    // The bare loop: the same checks and signing, one thread, no HTTP.
    let signer = Signer::load(&SigningConfig {
        keys: vec![SigningKeyConfig {
            senders: vec![],
            did: DID.into(),
            kid: format!("{DID}#atproto"),
            key_file: key_file.clone(),
            logins: None,
        }],
        ..SigningConfig::default()
    })
    .unwrap()
    .unwrap();
    let public = key.public_key();
    let h: Vec<String> = [
        "from", "from", "to", "to", "subject", "subject", "date", "date",
    ]
    .map(String::from)
    .to_vec();
    let bare_tokens: Vec<String> = (0..requests).map(|n| token(&key, 1_000_000 + n)).collect();
    let started = Instant::now();
    for t in &bare_tokens {
        let parsed = service_auth::parse(t).unwrap();
        parsed.check(now(), SERVICE, SIGN_ENVELOPE).unwrap();
        parsed.verify_signature(&public).unwrap();
        let covered = Covered {
            from: FROM,
            h: &h,
            hh: [1; 32],
            bh: [2; 32],
        };
        let signing_key = signer.key_of_did(DID).unwrap();
        std::hint::black_box(
            signer
                .sign_covered(signing_key, &covered, &[], None, now())
                .unwrap(),
        );
    }
    let bare = started.elapsed();

    let (cpu_before, _) = common::usage(pid);
    let elapsed = service_run(port, tokens.to_vec(), connections).await;
    let (cpu_after, peak) = common::usage(pid);

    let bare_rate = requests as f64 / bare.as_secs_f64();
    let rate = requests as f64 / elapsed.as_secs_f64();
    let cpu_per_request = (cpu_after - cpu_before) / requests as f64;
    let bare_per_op = bare.as_secs_f64() / requests as f64;
    println!("| what | requests/s | CPU ms per request | peak RSS MiB |");
    println!("|---|---|---|---|");
    println!(
        "| bare loop (parse, check, verify ES256K, sign ES256K; one thread) | {bare_rate:.0} | {:.3} | |",
        bare_per_op * 1e3
    );
    println!(
        "| signing service, {connections} keep-alive connections | {rate:.0} | {:.3} | {:.1} |",
        cpu_per_request * 1e3,
        peak as f64 / 1024.0
    );
    println!(
        "\nservice / bare loop: {:.2}x the rate, {:.2}x the CPU per request",
        rate / bare_rate,
        cpu_per_request / bare_per_op
    );
    drop(daemon);
}
