//! Postfix lookup tables under load: warm `atsms_transport` lookups against the daemon (the
//! release binary, its identity cache warm), beside a minimal socketmap server that answers
//! every request with a fixed `OK` and looks nothing up — same client, same run. Serial
//! round trips on one connection, as Postfix's trivial-rewrite makes them, then pipelined.
//!
//! Run: `scripts/bench/load.sh socketmap_load [--lookups 20000]` (or scripts/bench/socketmap.sh).

use atsms_testkit::load as common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

fn netstring(payload: &str) -> Vec<u8> {
    format!("{}:{payload},", payload.len()).into_bytes()
}

/// A minimal socketmap server: parses netstrings, answers each with a fixed `OK`.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 65536];
                let reply = netstring("OK smtp:[mx.example.net]:25");
                loop {
                    let n = match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    let mut out = Vec::new();
                    while let Some(colon) = buf.iter().position(|b| *b == b':') {
                        let len: usize =
                            std::str::from_utf8(&buf[..colon]).unwrap().parse().unwrap();
                        if buf.len() < colon + len + 2 {
                            break;
                        }
                        buf.drain(..colon + len + 2);
                        out.extend_from_slice(&reply);
                    }
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Reads one netstring reply.
async fn reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    let mut chunk = [0u8; 65536];
    loop {
        if let Some(colon) = buf.iter().position(|b| *b == b':') {
            let len: usize = std::str::from_utf8(&buf[..colon]).unwrap().parse().unwrap();
            if buf.len() >= colon + len + 2 {
                let payload = buf[colon + 1..colon + 1 + len].to_vec();
                buf.drain(..colon + len + 2);
                return payload;
            }
        }
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct Serial {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

async fn serial(port: u16, request: &[u8], lookups: usize, expect: &[u8]) -> Serial {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut latencies = Vec::with_capacity(lookups);
    let started = Instant::now();
    for _ in 0..lookups {
        let t = Instant::now();
        stream.write_all(request).await.unwrap();
        let answer = reply(&mut stream, &mut buf).await;
        latencies.push(t.elapsed());
        assert_eq!(answer, expect, "{}", String::from_utf8_lossy(&answer));
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Serial {
        rate: lookups as f64 / elapsed.as_secs_f64(),
        p50: latencies[lookups / 2],
        p99: latencies[lookups * 99 / 100],
    }
}

async fn pipelined(port: u16, request: &[u8], lookups: usize) -> f64 {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let all: Vec<u8> = request.repeat(lookups);
    let started = Instant::now();
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move { write.write_all(&all).await.unwrap() });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    let mut seen = 0;
    while seen < lookups {
        let n = read.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&chunk[..n]);
        seen += buf.iter().filter(|b| **b == b',').count();
        buf.clear();
    }
    writer.await.unwrap();
    lookups as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let lookups = common::numbers(&args, "--lookups", "20000")[0];
    let key = SigningKeyless::document();
    let plc = common::serve_document(key);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("atsms.toml");
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = \"inet:127.0.0.1:0\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{port}\"\n[resolver]\nplc_urls = [\"{plc}\"]\nallow_private_addresses = true\n[inbox]\nhosts = [\"mx.test\"]\n[log]\nlevel = \"warn\"\n[control]\nsocket = \"{}/control.sock\"\n",
            work.path().display()
        ),
    )
    .unwrap();
    let daemon = common::start_daemon("atsms-milter", &config, common::Ready::Port(port));
    let local = DID.replace(':', ".");
    let request = netstring(&format!("atsms_transport {local}@mx.example.net"));
    let expect = b"OK smtp:[mx.example.net]:25".to_vec();
    // Warm the cache: the first lookup fetches the document.
    serial(port, &request, 10, &expect).await;
    let echo = echo_server().await;
    // Warm-up rounds for both, then the measured ones.
    serial(echo, &request, 1000, &expect).await;
    serial(port, &request, 1000, &expect).await;
    let theirs = serial(echo, &request, lookups, &expect).await;
    let ours = serial(port, &request, lookups, &expect).await;
    let ours_pipelined = pipelined(port, &request, lookups * 5).await;
    let theirs_pipelined = pipelined(echo, &request, lookups * 5).await;
    println!("| server | serial lookups/s | p50 µs | p99 µs | pipelined lookups/s |");
    println!("|---|---|---|---|---|");
    for (name, s, p) in [
        ("atsms-milter (warm)", &ours, ours_pipelined),
        ("minimal echo server", &theirs, theirs_pipelined),
    ] {
        println!(
            "| {name} | {:.0} | {} | {} | {:.0} |",
            s.rate,
            s.p50.as_micros(),
            s.p99.as_micros(),
            p
        );
    }
    println!(
        "\nserial rate ratio atsms/echo: {:.2} (goal ≥ 0.5); p99 {} µs (goal < 1000)",
        ours.rate / theirs.rate,
        ours.p99.as_micros()
    );
    drop(daemon);
}

/// The DID document the loopback PLC serves: a key is not needed for routing.
struct SigningKeyless;

impl SigningKeyless {
    fn document() -> String {
        format!(
            r##"{{"id":"{DID}","alsoKnownAs":[],"verificationMethod":[],"service":[{{"id":"#atsms_mail","type":"AtsmsMailService","serviceEndpoint":"smtp://mx.example.net"}}]}}"##
        )
    }
}
