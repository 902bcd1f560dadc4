//! The AT-SMS destination under load (issue 33): envelopes taken by `POST /inbox/{did}` and by
//! LMTP (the client's SMTP form, as an MTA hands it over) in the same run, each kept for the
//! DID's two devices, then drained by the devices (list, get, delete with their own tokens).
//! On tmpfs and on disk. Prints envelopes a second and the daemon's CPU per envelope for each
//! carrier, and copies drained a second. The inbox's rate limits are raised for it; documents,
//! records and device certificates are warm in the cache (one envelope a DID first).
//!
//!   scripts/bench/load.sh inbox_load [--envelopes 2000] [--connections 8] [--dids 10]
//!                                    [--store tmpfs|disk|both]

use atsms_testkit::device::{self, Device};
use atsms_testkit::load as common;
use atsms_testkit::load::did;
use atsms_testkit::plc::Plc;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atsms_milter::format::crypto::{Alg, SigningKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const PUBLIC: &str = "https://inbox.bench";
const HOST: &str = "mx.bench";

use atsms_milter::infra::clock::unix_now as now;

fn encoded(did: &str) -> String {
    did.replace(':', "%3A")
}

/// The client's envelope made unique by `n` in its last ciphertext bytes (still sealed: the
/// framing is untouched).
fn envelope(base: &[u8], n: u64) -> Vec<u8> {
    let mut e = base.to_vec();
    let at = e.len() - 8;
    e[at..].copy_from_slice(&n.to_be_bytes());
    e
}

/// A device token as the client's `generateJWT` makes it.
fn token(did: &str, device: &Device) -> String {
    let key = SigningKey::from_pkcs8_pem(&device.key_pem).unwrap();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let fp = &device.fingerprint;
    let header = json!({"alg": "ES256", "typ": "JWT", "kid": fp});
    let claims = json!({"sub": format!("at://{did}/at.atsms.x509/{fp}"), "iss": did,
        "aud": "atsms-api", "iat": now(), "exp": now() + 3000});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    format!("{input}.{}", b64(&key.sign(input.as_bytes())))
}

/// One HTTP/1.1 request on a keep-alive connection: the status and the body.
async fn request(
    stream: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, Vec<u8>) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: inbox.bench\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    let mut status = String::new();
    stream.read_line(&mut status).await.unwrap();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        if line == "\r\n" || line.is_empty() {
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
    (code, answer)
}

async fn connect(port: u16) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.set_nodelay(true).unwrap();
    BufReader::new(stream)
}

/// POSTs each `(did, envelope)` on one keep-alive connection.
async fn poster(port: u16, work: Vec<(String, Vec<u8>)>) {
    let mut stream = connect(port).await;
    for (did, envelope) in work {
        let body = json!({"envelope": STANDARD.encode(&envelope)}).to_string();
        let path = format!("/inbox/{}", encoded(&did));
        let (code, answer) = request(
            &mut stream,
            "POST",
            &path,
            "Content-Type: application/json\r\n",
            &body,
        )
        .await;
        assert_eq!(code, 202, "{}", String::from_utf8_lossy(&answer));
    }
}

/// The mail the client's SMTP form sends to `did`'s mailbox here, and the end of the data.
fn client_mail(did: &str, envelope: &[u8]) -> Vec<u8> {
    let mailbox = format!("{}@{HOST}", did.replace(':', "!"));
    let mut mail = atsms_testkit::device::client_mail(&mailbox, envelope);
    mail.extend_from_slice(b".\r\n");
    mail
}

async fn reply(stream: &mut BufReader<TcpStream>) -> String {
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        if line.as_bytes().get(3) != Some(&b'-') {
            return line;
        }
    }
}

/// Delivers each `(did, envelope)` in a transaction of its own on one LMTP session.
async fn lmtp_sender(port: u16, work: Vec<(String, Vec<u8>)>) {
    let mut stream = connect(port).await;
    reply(&mut stream).await;
    stream.get_mut().write_all(b"LHLO bench\r\n").await.unwrap();
    reply(&mut stream).await;
    for (did, envelope) in work {
        let mailbox = format!("{}@{HOST}", did.replace(':', "!"));
        let head = format!("MAIL FROM:<x@client.bench>\r\nRCPT TO:<{mailbox}>\r\nDATA\r\n");
        stream.get_mut().write_all(head.as_bytes()).await.unwrap();
        for _ in 0..3 {
            let r = reply(&mut stream).await;
            assert!(r.starts_with('2') || r.starts_with('3'), "{r}");
        }
        let mail = client_mail(&did, &envelope);
        stream.get_mut().write_all(&mail).await.unwrap();
        let r = reply(&mut stream).await;
        assert!(r.starts_with("250"), "{r}");
    }
}

/// Drains one device: list, get each, delete each, until its list is empty. Copies drained.
async fn drainer(port: u16, did: String, device: Device) -> usize {
    let mut stream = connect(port).await;
    let auth = format!("Authorization: Bearer {}\r\n", token(&did, &device));
    let base = format!("/messages/{}/{}", encoded(&did), device.fingerprint);
    let mut drained = 0;
    loop {
        let list = format!("{base}/list?type=atsms-envelope&limit=100");
        let (code, answer) = request(&mut stream, "GET", &list, &auth, "").await;
        assert_eq!(code, 200, "{}", String::from_utf8_lossy(&answer));
        let listed: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        let ids: Vec<String> = listed["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect();
        if ids.is_empty() {
            return drained;
        }
        for id in ids {
            let (code, _) = request(&mut stream, "GET", &format!("{base}/{id}"), &auth, "").await;
            assert_eq!(code, 200);
            let (code, _) =
                request(&mut stream, "DELETE", &format!("{base}/{id}"), &auth, "").await;
            assert_eq!(code, 200);
            drained += 1;
        }
    }
}

/// Runs `make(share)` for each of `connections` shares of `work` at once: the wall time.
async fn run<F, Fut>(work: Vec<(String, Vec<u8>)>, connections: usize, make: F) -> Duration
where
    F: Fn(Vec<(String, Vec<u8>)>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut shares: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); connections];
    for (i, w) in work.into_iter().enumerate() {
        shares[i % connections].push(w);
    }
    let started = Instant::now();
    let tasks: Vec<_> = shares.into_iter().map(|s| tokio::spawn(make(s))).collect();
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

struct Setup {
    plc: Plc,
    dids: Vec<String>,
    devices: Vec<[Device; 2]>,
}

/// `dids` DIDs, each with two devices (made by OpenSSL) and an inbox record naming this host.
fn publish(dids: usize) -> Setup {
    let plc = Plc::start();
    let mut setup = Setup {
        plc,
        dids: Vec::new(),
        devices: Vec::new(),
    };
    for n in 0..dids {
        let did = did(n);
        setup
            .plc
            .set_with_pds(&did, &SigningKey::generate(Alg::Es256).unwrap(), None);
        let pair = [device::make(&did), device::make(&did)];
        for d in &pair {
            setup.plc.put_record(
                &did,
                "at.atsms.x509",
                &d.fingerprint,
                json!({"$type": "at.atsms.x509", "certificate": d.cert_pem, "serialNumber": "00", "createdAt": "2026-12-05T00:00:00Z"}),
            );
        }
        let endpoints = json!([{"uri": format!("{PUBLIC}/inbox/{}", encoded(&did))},
            {"uri": format!("mailto:{}@{HOST}", did.replace(':', "!"))}]);
        setup.plc.put_record(
            &did,
            "at.atsms.inbox",
            "self",
            json!({"$type": "at.atsms.inbox", "endpoints": endpoints}),
        );
        setup.dids.push(did);
        setup.devices.push(pair);
    }
    setup
}

fn config(work: &Path, store: &Path, plc: &str, port: u16, lmtp: u16) -> PathBuf {
    let (w, s) = (work.display(), store.display());
    let conf = work.join("atsms.toml");
    std::fs::write(
        &conf,
        format!(
            "[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\ninbox = true\npublic_url = \"{PUBLIC}\"\nmax_concurrent = 64\n\n[lmtp]\nlisten = \"inet:127.0.0.1:{lmtp}\"\nmaildir = \"{s}/mail/%d/%n/Maildir\"\n\n[inbox]\nhosts = [\"{HOST}\"]\nstore = \"{s}/inbox\"\npost_rate_per_network = \"4000000/1s\"\npost_rate_per_did = \"4000000/1s\"\nmax_concurrent_posts = 64\nmax_envelopes_per_device = 1000000\nmax_bytes_per_device = 68719476736\n\n[resolver]\nplc_urls = [\"{plc}\"]\nallow_private_addresses = true\n\n[store]\njti_file = \"{w}/jti\"\n\n[log]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    conf
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `| store | what | count | connections | per second | daemon CPU µs each |`
fn row(store: &str, what: &str, count: usize, connections: usize, wall: Duration, cpu: f64) {
    println!(
        "| {store} | {what} | {count} | {connections} | {:.0} | {:.0} |",
        count as f64 / wall.as_secs_f64(),
        cpu * 1e6 / count as f64
    );
}

async fn bench(
    setup: &Setup,
    store_name: &str,
    store: &Path,
    envelopes: usize,
    connections: usize,
) {
    let _ = std::fs::remove_dir_all(store);
    std::fs::create_dir_all(store).unwrap();
    let work = common::work_dir("bench-inbox");
    let (port, lmtp) = (port(), port());
    let conf = config(&work, store, &setup.plc.url(), port, lmtp);
    let daemon = common::start_daemon("atsms-milter", &conf, common::Ready::Port(port));
    common::wait_for_port(lmtp, "LMTP");
    let pid = daemon.child.id();
    let base =
        std::fs::read(atsms_testkit::test_data("atsms-client").join("envelope.cbor")).unwrap();
    let mut n = 0u64;
    let mut batch = |count: usize| -> Vec<(String, Vec<u8>)> {
        (0..count)
            .map(|i| {
                n += 1;
                (setup.dids[i % setup.dids.len()].clone(), envelope(&base, n))
            })
            .collect()
    };
    // Warm: each DID's document, records and devices into the cache, by both carriers.
    let warm = batch(setup.dids.len());
    run(warm, 1, move |s| poster(port, s)).await;
    let warm = batch(setup.dids.len());
    run(warm, 1, move |s| lmtp_sender(lmtp, s)).await;

    let (posts, delivered) = (batch(envelopes), batch(envelopes));
    let cpu0 = common::usage(pid).0;
    let wall = run(posts, connections, move |s| poster(port, s)).await;
    let cpu1 = common::usage(pid).0;
    row(
        store_name,
        "POST",
        envelopes,
        connections,
        wall,
        cpu1 - cpu0,
    );
    let wall = run(delivered, connections, move |s| lmtp_sender(lmtp, s)).await;
    let cpu2 = common::usage(pid).0;
    row(
        store_name,
        "LMTP",
        envelopes,
        connections,
        wall,
        cpu2 - cpu1,
    );

    // Each device drains its copies, `connections` devices at once.
    let devices: Vec<(String, Device)> = setup
        .dids
        .iter()
        .zip(&setup.devices)
        .flat_map(|(did, pair)| pair.iter().map(move |d| (did.clone(), d.clone())))
        .collect();
    let started = Instant::now();
    let mut drained = 0;
    for chunk in devices.chunks(connections) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|(did, d)| tokio::spawn(drainer(port, did.clone(), d.clone())))
            .collect();
        for t in tasks {
            drained += t.await.unwrap();
        }
    }
    let wall = started.elapsed();
    let cpu3 = common::usage(pid).0;
    let expected = 2 * (2 * envelopes + 2 * setup.dids.len());
    assert_eq!(drained, expected, "every copy drained once");
    row(
        store_name,
        "drain (copies)",
        drained,
        connections.min(devices.len()),
        wall,
        cpu3 - cpu2,
    );
    drop(daemon);
    let _ = std::fs::remove_dir_all(store);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let envelopes = common::numbers(&args, "--envelopes", "2000")[0];
    let connections = common::numbers(&args, "--connections", "8")[0];
    let dids = common::numbers(&args, "--dids", "10")[0];
    let store = args
        .iter()
        .position(|a| a == "--store")
        .and_then(|i| args.get(i + 1))
        .map_or("both", String::as_str)
        .to_string();
    let setup = tokio::task::spawn_blocking(move || publish(dids))
        .await
        .unwrap();
    println!(
        "{envelopes} envelopes of {} bytes by each carrier to {dids} DIDs × 2 devices; daemon CPU from /proc",
        std::fs::metadata(atsms_testkit::test_data("atsms-client").join("envelope.cbor"))
            .unwrap()
            .len()
    );
    println!("\n| store | carrier | envelopes | connections | per second | daemon CPU µs each |");
    println!("|---|---|---|---|---|---|");
    if store == "tmpfs" || store == "both" {
        let dir = PathBuf::from("/dev/shm/atsms-bench-inbox");
        bench(&setup, "tmpfs", &dir, envelopes, connections).await;
    }
    if store == "disk" || store == "both" {
        let dir = atsms_testkit::project().join("target/bench-inbox-store");
        bench(&setup, "disk", &dir, envelopes, connections).await;
    }
}
