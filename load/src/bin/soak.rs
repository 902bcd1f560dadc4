//! The long run: messages from many DIDs through the milter (the release daemon, over a unix
//! socket, 16 connections) at a steady rate, with forgeries, unknown DIDs and a PLC directory
//! that fails some requests, sampled every 10 seconds: the daemon's RSS, its open files, the
//! end-of-message p50/p99 of the window, the identity cache's entries, and the results.
//!
//! Phases: warm-up (one message from each DID, as fast as it goes), a maximum (`--max`
//! messages as fast as 16 connections go), then the soak proper at `--rate` (default: half
//! the maximum just measured). Every result must be one its message may have: a good
//! signature `pass` (or `temperror` when the directory failed for that DID), a forgery
//! `fail` (or `temperror`), an unknown DID `permerror` (or `temperror`); anything else
//! stops the run.
//!
//! Settings overridden, stated: `resolver.max_requests_per_second` = 1000 for the whole run
//! (the warm-up fetches 50 000 documents; afterwards the directory sees only the unknown DIDs,
//! the failures' retries and refreshes, far below it); `policy.on_*` = `accept` (every
//! result is marked, none refused, so each can be counted); `policy.replay` = false (the
//! messages are signed once, before the run); `cache.max_bytes` = 256 MiB (`--cache-mib`):
//! 50 000 documents weigh about 70 MiB, more than the default 64 MiB holds, and a cache smaller
//! than the senders that cycle through it misses on most of them (`--cache-mib 64` shows it);
//! `cache.error` = 60 (default).
//!
//! Writes `target/bench-soak/soak.csv`; `scripts/bench/soak.sh` runs it and plots
//! `docs/performance/soak.png`.
//!
//! Run: `scripts/bench/load.sh soak [--messages 1000000] [--dids 50000] [--max 50000] [--rate N]
//! [--cache-mib 256]`

use atsms_testkit::load as common;

use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::format::envelope::sign;
use atsms_milter::format::message::read_message;
use indymilter_test::EomAction;

/// The key of DID `n`, derived from `n` (the directory child derives the same).
fn key(n: usize) -> SigningKey {
    use sha2::Digest;
    let secret = sha2::Sha256::digest(format!("soak key {n}").as_bytes());
    SigningKey::from_secret_bytes(Alg::Es256k, &secret).unwrap()
}

/// DIDs from this index on are unknown to the directory.
const UNKNOWN_BASE: usize = 10_000_000;

/// The child: a PLC directory serving DIDs below `UNKNOWN_BASE`, failing every 20th request.
async fn plc_child(dids: usize) {
    let documents: Arc<std::collections::HashMap<String, String>> = Arc::new(
        (0..dids)
            .map(|n| {
                let d = common::ids::plc_did(n);
                let doc = serde_json::json!({
                    "@context": ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/multikey/v1"],
                    "id": d,
                    "alsoKnownAs": [],
                    "verificationMethod": [{"id": format!("{d}#atproto"), "type": "Multikey", "controller": d, "publicKeyMultibase": key(n).public_key().to_multikey()}],
                    "service": [{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": "https://pds.example.net"}],
                })
                .to_string();
                (d, doc)
            })
            .collect(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    let counter = Arc::new(AtomicU64::new(0));
    let app = axum::Router::new().route(
        "/{did}",
        axum::routing::get(
            move |axum::extract::Path(did): axum::extract::Path<String>| {
                let (documents, counter) = (documents.clone(), counter.clone());
                async move {
                    use axum::http::StatusCode;
                    if counter.fetch_add(1, Ordering::Relaxed) % 20 == 19 {
                        return (StatusCode::SERVICE_UNAVAILABLE, "{}".to_string());
                    }
                    match documents.get(&did) {
                        Some(doc) => (StatusCode::OK, doc.clone()),
                        None => (
                            StatusCode::NOT_FOUND,
                            r#"{"message":"DID not registered"}"#.to_string(),
                        ),
                    }
                }
            },
        ),
    );
    axum::serve(listener, app).await.unwrap();
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Good,
    Forged,
    Unknown,
}

/// Message `i`: 1% forgeries, 1% from unknown DIDs (a pool of 5 000), the rest from DID
/// `i % dids`.
fn kind(i: usize) -> Kind {
    match i % 100 {
        37 => Kind::Forged,
        73 => Kind::Unknown,
        _ => Kind::Good,
    }
}

fn make(i: usize, dids: usize, now: i64) -> common::Message {
    let n = match kind(i) {
        Kind::Unknown => UNKNOWN_BASE + (i / 100) % 5000,
        _ => i % dids,
    };
    let d = common::ids::plc_did(n);
    let body = format!(
        "From: sender@example.com\r\nTo: <bob@mx.example.net>\r\nSubject: soak {i}\r\nMessage-ID: <{i}@soak.test>\r\n\r\nMessage {i} of the soak.\r\n"
    );
    let parsed = read_message(body.as_bytes()).unwrap();
    let kid = format!("{d}#atproto");
    let request = sign::SignRequest {
        key: &key(n % 1_000_000),
        kid: &kid,
        now,
        ttl: 7200,
        rcpt: &[],
        jti: format!("soak-{i}-0123456789abcdef"),
    };
    let token = sign::sign_token(&request, &parsed.headers, parsed.body_hash).unwrap();
    let mut raw = [
        sign::format_field(&d, &token, "\r\n").into_bytes(),
        b"\r\n".to_vec(),
        body.into_bytes(),
    ]
    .concat();
    if kind(i) == Kind::Forged {
        let at = raw.windows(7).rposition(|w| w == b"Message").unwrap();
        raw[at] = b'm';
    }
    common::split(&raw)
}

fn result_of(actions: &[EomAction]) -> &'static str {
    for a in actions {
        if let EomAction::InsertHeader { value, .. } | EomAction::AddHeader { value, .. } = a {
            let v = String::from_utf8_lossy(value.to_bytes());
            for r in ["pass", "fail", "permerror", "temperror", "policy", "none"] {
                if v.contains(&format!("atsms={r}")) {
                    return r;
                }
            }
        }
    }
    "missing"
}

fn allowed(kind: Kind, result: &str) -> bool {
    matches!(
        (kind, result),
        (_, "temperror")
            | (Kind::Good, "pass")
            | (Kind::Forged, "fail")
            | (Kind::Unknown, "permerror")
    )
}

#[derive(Default)]
struct Window {
    latencies: Vec<Duration>,
    results: std::collections::BTreeMap<&'static str, u64>,
}

/// Sends messages `range` over 16 connections, the k-th at `start + k / rate` when paced.
async fn drive(
    daemon: &common::Daemon,
    messages: &Arc<Vec<common::Message>>,
    range: std::ops::Range<usize>,
    rate: Option<f64>,
    window: &Arc<Mutex<Window>>,
) -> f64 {
    let next = Arc::new(AtomicUsize::new(range.start));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (socket, messages, next, window) = (
            daemon.socket.clone(),
            messages.clone(),
            next.clone(),
            window.clone(),
        );
        let (first, end) = (range.start, range.end);
        tasks.push(tokio::spawn(async move {
            let mut conn = common::open(&socket).await;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return;
                }
                if let Some(rate) = rate {
                    let at = started + Duration::from_secs_f64((i - first) as f64 / rate);
                    tokio::time::sleep_until(at.into()).await;
                }
                let (actions, took) = common::send(&mut conn, &messages[i % messages.len()]).await;
                let result = result_of(&actions);
                assert!(
                    allowed(kind(i), result),
                    "message {i}: {result} is not a result it may have: {actions:?}"
                );
                let mut w = window.lock().unwrap();
                w.latencies.push(took);
                *w.results.entry(result).or_default() += 1;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    range.len() as f64 / started.elapsed().as_secs_f64()
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Cached documents, from the control socket's `stats`.
fn cache_entries(control: &std::path::Path) -> u64 {
    use std::io::{BufRead, BufReader};
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(control) else {
        return 0;
    };
    let _ = stream.write_all(b"stats\n");
    let mut text = String::new();
    for line in BufReader::new(stream).lines().map_while(Result::ok) {
        text.push_str(&line);
    }
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["document_entries"].as_u64())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dids = common::numbers(&args, "--dids", "50000")[0];
    if args.iter().any(|a| a == "--plc-child") {
        return plc_child(dids).await;
    }
    let total = common::numbers(&args, "--messages", "1000000")[0];
    let max_messages = common::numbers(&args, "--max", "50000")[0];
    let fixed_rate = common::numbers(&args, "--rate", "0")[0];
    let cache_mib = common::numbers(&args, "--cache-mib", "256")[0];

    let (mut child, port) = common::spawn_child(&["--plc-child", "--dids", &dids.to_string()]);

    // Signed before the run, on both cores.
    let now = atsms_milter::infra::clock::unix_now();
    let signing = Instant::now();
    let messages: Vec<common::Message> = {
        let halves: Vec<_> = (0..2)
            .map(|h| {
                std::thread::spawn(move || {
                    (0..total)
                        .filter(|i| i % 2 == h)
                        .map(|i| (i, make(i, dids, now)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<(usize, common::Message)> =
            halves.into_iter().flat_map(|h| h.join().unwrap()).collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, m)| m).collect()
    };
    let messages = Arc::new(messages);
    eprintln!(
        "soak: {total} messages signed in {:.0} s",
        signing.elapsed().as_secs_f64()
    );

    let work = common::work_dir("bench-soak");
    let w = work.display();
    let conf = work.join("atsms.toml");
    std::fs::write(
        &conf,
        format!(
            "[milter]\nlisten = \"unix:{w}/atsms.sock\"\n\n[resolver]\nplc_urls = [\"http://127.0.0.1:{port}\"]\nallow_private_addresses = true\nmax_requests_per_second = 1000\n\n[cache]\nmax_bytes = {}\n\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\nreplay = false\non_fail = \"accept\"\non_permerror = \"accept\"\non_temperror = \"accept\"\non_policy = \"accept\"\n\n[log]\nlevel = \"warn\"\n\n[control]\nsocket = \"{w}/control.sock\"\n",
            cache_mib << 20
        ),
    )
    .unwrap();
    let daemon = common::start_daemon(
        "atsms-milter",
        &conf,
        common::Ready::Socket(work.join("atsms.sock")),
    );
    let pid = daemon.child.id();
    let control = work.join("control.sock");
    let window = Arc::new(Mutex::new(Window::default()));

    let warm = drive(&daemon, &messages, 0..dids.min(total), None, &window).await;
    eprintln!("soak: warm-up, one message from each of {dids} DIDs: {warm:.0} msgs/s");
    let max = drive(&daemon, &messages, dids..dids + max_messages, None, &window).await;
    let rate = if fixed_rate > 0 {
        fixed_rate as f64
    } else {
        (max / 2.0).round()
    };
    eprintln!("soak: maximum {max:.0} msgs/s; the soak runs at {rate:.0} msgs/s");
    *window.lock().unwrap() = Window::default();

    let csv_path = work.join("soak.csv");
    let mut csv = std::fs::File::create(&csv_path).unwrap();
    writeln!(
        csv,
        "# rate={rate:.0} max={max:.0} messages={total} dids={dids} forged=1% unknown=1% plc_failures=5% budget=1000/s cache={cache_mib}MiB"
    )
    .unwrap();
    writeln!(
        csv,
        "seconds,messages,rss_mib,open_files,p50_ms,p99_ms,cache_entries,pass,fail,permerror,temperror"
    )
    .unwrap();
    let sampler = {
        let (window, control) = (window.clone(), control.clone());
        let mut csv = csv.try_clone().unwrap();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut sent = 0u64;
            let mut totals: std::collections::BTreeMap<&'static str, u64> = Default::default();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                // Asked off the runtime: a blocking read here would hold up a worker that
                // is timing messages.
                let entries = {
                    let control = control.clone();
                    tokio::task::spawn_blocking(move || cache_entries(&control))
                        .await
                        .unwrap()
                };
                let w = std::mem::take(&mut *window.lock().unwrap());
                let mut l = w.latencies;
                l.sort();
                let at = |q: f64| {
                    l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
                        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
                };
                sent += l.len() as u64;
                for (k, v) in w.results {
                    *totals.entry(k).or_default() += v;
                }
                let get = |k| totals.get(k).copied().unwrap_or(0);
                let line = format!(
                    "{:.0},{sent},{:.1},{},{:.3},{:.3},{},{},{},{},{}",
                    started.elapsed().as_secs_f64(),
                    common::rss(pid) as f64 / 1024.0,
                    open_files(pid),
                    at(0.5),
                    at(0.99),
                    entries,
                    get("pass"),
                    get("fail"),
                    get("permerror"),
                    get("temperror")
                );
                eprintln!("soak: {line}");
                writeln!(csv, "{line}").unwrap();
            }
        })
    };
    let achieved = drive(&daemon, &messages, 0..total, Some(rate), &window).await;
    tokio::time::sleep(Duration::from_secs(11)).await;
    sampler.abort();
    eprintln!(
        "soak: {total} messages at {achieved:.0} msgs/s (asked {rate:.0}); samples in {}",
        csv_path.display()
    );
    println!("{}", csv_path.display());
    drop(daemon);
    let _ = child.kill();
    let _ = child.wait();
}
