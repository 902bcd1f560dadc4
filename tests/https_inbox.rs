//! The HTTPS inbox under attack: anonymous by design, so it must hold on its own. Each test
//! runs the real daemon and speaks HTTP/1.1 to it over loopback as a hostile client would:
//! bodies far too large for DIDs with no inbox here, floods from one network, slow uploads
//! beside the signing service. (Storing once whatever is cancelled: tests/atsms_client.rs.)

use atsms_testkit as support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use atsms_milter::format::crypto::{Alg, SigningKey};
use support::daemon::Daemon;
use support::ids::plc_did;
use support::plc::Plc;
use support::postfix::free_port;

const US: &str = "mx.example.net";

/// A daemon with the HTTPS inbox, and a DID whose document names this host (consent).
struct Inbox {
    plc: Plc,
    daemon: Daemon,
    port: u16,
    did: String,
    _dir: tempfile::TempDir,
}

/// `xrpc` and `inbox` are lines for those sections.
fn start(xrpc: &str, inbox: &str) -> Inbox {
    let plc = Plc::start();
    let did = plc_did(90);
    plc.set(
        &did,
        &SigningKey::generate(Alg::Es256k).unwrap(),
        Some(&format!("smtp://{US}")),
    );
    let dir = support::public_tempdir();
    let port = free_port();
    let daemon = Daemon::start(
        &format!(
            "[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\ninbox = true\n{xrpc}\n[lmtp]\nmaildir = \"{0}/%d/%n/Maildir\"\n[inbox]\nhosts = [\"{US}\"]\nstore = \"{0}/inbox\"\n{inbox}\n[resolver]\nplc_urls = [\"{1}\"]\n[store]\njti_file = \"{0}/jti\"\n",
            dir.path().display(),
            plc.url()
        ),
        port,
    );
    Inbox {
        plc,
        daemon,
        port,
        did,
        _dir: dir,
    }
}

/// A sealed envelope's shape, `n` making it one of its own.
fn envelope(n: u32) -> String {
    use base64::Engine;
    let mut e = vec![0x85, 0x01, 0x01, 0x01, 0x58, 0x20];
    e.extend([7u8; 32]);
    e.extend([0x44]);
    e.extend(n.to_be_bytes());
    format!(
        "{{\"envelope\": \"{}\"}}",
        base64::engine::general_purpose::STANDARD.encode(e)
    )
}

/// One POST on a fresh connection, with extra header lines: the status line's code and the
/// whole answer.
fn post(port: u16, path: &str, headers: &str, body: &str) -> (u16, String) {
    support::http::raw_request(
        port,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: inbox.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
            body.len()
        ),
    )
}

/// Starts a chunked upload of `megabytes` MiB to `path` on its own thread: the status the
/// daemon answered (0: none, the connection cut) and the bytes it let the client send.
fn upload(port: u16, path: String, megabytes: usize) -> std::thread::JoinHandle<(u16, usize)> {
    std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = stream.try_clone().unwrap();
        let answered = std::thread::spawn(move || {
            let mut head = [0u8; 12];
            match reader.read_exact(&mut head) {
                Ok(()) => String::from_utf8_lossy(&head[9..12]).parse().unwrap_or(0),
                Err(_) => 0,
            }
        });
        let _ = write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: inbox.test\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let chunk = format!("{:x}\r\n{}\r\n", 1 << 20, "A".repeat(1 << 20));
        let mut sent = 0;
        for _ in 0..megabytes {
            if stream.write_all(chunk.as_bytes()).is_err() {
                break;
            }
            sent += 1 << 20;
        }
        let _ = stream.write_all(b"0\r\n\r\n");
        (answered.join().unwrap(), sent)
    })
}

/// 32 uploads of 64 MiB at once to a DID with no inbox here, then to one with: the first are
/// refused before a byte of body is read (the DID's consent is asked from the path), the
/// others once past the cap on what an envelope can be (1.4 MB of JSON). Neither holds what
/// it was sent: 64 POSTs once took 4.18 GB.
#[test]
fn a_did_without_an_inbox_costs_no_body_and_a_body_is_read_under_a_cap() {
    let inbox = start("", "");
    let before = inbox.daemon.peak_rss_kib();
    let stranger = plc_did(91);
    let refused: Vec<_> = (0..32)
        .map(|_| upload(inbox.port, format!("/inbox/{stranger}"), 64))
        .collect();
    for upload in refused {
        let (status, sent) = upload.join().unwrap();
        assert!(status == 404 || status == 0, "{status}");
        assert!(sent < 64 << 20, "the whole body was taken: {sent}");
    }
    let capped: Vec<_> = (0..32)
        .map(|_| upload(inbox.port, format!("/inbox/{}", inbox.did), 64))
        .collect();
    for upload in capped {
        let (status, _) = upload.join().unwrap();
        assert!(status == 413 || status == 0, "{status}");
    }
    let grown = inbox.daemon.peak_rss_kib().saturating_sub(before);
    assert!(
        grown < 80 * 1024,
        "peak RSS grew by {grown} KiB for 64 uploads of 64 MiB"
    );
    // Still serving.
    let (status, answer) = post(
        inbox.port,
        &format!("/inbox/{}", inbox.did),
        "",
        &envelope(1),
    );
    assert_eq!(status, 202, "{answer}");
}

/// The default limits, with the client named by a trusted proxy: one network may POST 300 a
/// minute whatever it sends (10,308 envelopes in 8 s went through before), one DID may be
/// posted to 60 times a minute from anywhere; another network is not held back by either,
/// and a forged X-Forwarded-For entry is not believed.
#[test]
fn each_network_and_each_did_is_rate_limited_by_default() {
    let inbox = start("trusted_proxies = [\"127.0.0.1/32\"]", "");
    let from = |net: &str| format!("X-Forwarded-For: {net}\r\n");
    let unknown = format!("/inbox/{}", plc_did(92));
    // 400 as fast as they go: the first 300 at once, then one every 200 ms at most.
    let started = Instant::now();
    let statuses: Vec<u16> = (0..400)
        .map(|_| post(inbox.port, &unknown, &from("198.51.100.7"), "{}").0)
        .collect();
    let allowed = 300 + (started.elapsed().as_millis() / 200) as usize + 1;
    let passed = statuses.iter().filter(|s| **s == 404).count();
    assert!(
        (300..=allowed).contains(&passed),
        "{passed} passed, {allowed} allowed"
    );
    assert_eq!(passed + statuses.iter().filter(|s| **s == 429).count(), 400);
    // A forged entry left of the proxy's own does not move the client to another network.
    let (status, answer) = post(
        inbox.port,
        &unknown,
        &from("203.0.113.1, 198.51.100.8"),
        "{}",
    );
    assert_eq!(status, 429, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nretry-after: "),
        "{answer}"
    );
    assert_eq!(
        post(inbox.port, &unknown, &from("203.0.113.1"), "{}").0,
        404
    );
    // One DID, from many networks: 60, then 429.
    let to = format!("/inbox/{}", inbox.did);
    for n in 0..60 {
        let (status, answer) = post(inbox.port, &to, &from(&format!("10.{n}.0.1")), &envelope(n));
        assert_eq!(status, 202, "envelope {n}: {answer}");
    }
    let (status, answer) = post(inbox.port, &to, &from("10.200.0.1"), &envelope(60));
    assert_eq!(status, 429, "{answer}");
    // The directory was asked once for the unknown DID (cached as not found), not 300 times.
    assert!(inbox.plc.requests() < 10, "{}", inbox.plc.requests());
}

/// `reputation.rate_limit` holds for what is posted to a DID (an envelope names no sender):
/// the judge admits each new envelope or refuses it (429), a dry run included; a repeat of one
/// stored is not counted again and is stored once.
#[test]
fn the_judge_limits_envelopes_a_did_is_sent_an_hour_even_in_a_dry_run() {
    let inbox = start(
        "",
        "[policy]\ndry_run = true\n[reputation]\nrate_limit = 2\n",
    );
    let to = format!("/inbox/{}", inbox.did);
    for n in [1, 2] {
        let (status, answer) = post(inbox.port, &to, "", &envelope(n));
        assert_eq!(status, 202, "envelope {n}: {answer}");
    }
    let (status, answer) = post(inbox.port, &to, "", &envelope(3));
    assert_eq!(status, 429, "{answer}");
    assert!(answer.contains("RateLimitExceeded"), "{answer}");
    let (status, answer) = post(inbox.port, &to, "", &envelope(1));
    assert!(status / 100 == 2, "a repeat of a stored envelope: {answer}");
    let new = inbox
        ._dir
        .path()
        .join(US)
        .join(support::plc::mailbox(&inbox.did))
        .join("Maildir/new");
    assert_eq!(std::fs::read_dir(&new).unwrap().count(), 2, "{new:?}");
}

/// Slow uploads hold the inbox's own share only: with every inbox permit taken by clients
/// sending a byte at a time, the signing service answers as ever, and each slow upload is
/// ended after `inbox.upload_timeout` (64 such uploads once made signing answer 503 for 10 s).
#[test]
fn slow_uploads_hold_the_inbox_share_only_and_end_in_time() {
    let inbox = start(
        "max_concurrent = 2",
        "max_concurrent_posts = 4\nupload_timeout = 2",
    );
    let to = format!("/inbox/{}", inbox.did);
    let started = Instant::now();
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let (port, to) = (inbox.port, to.clone());
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let _ = write!(
                    stream,
                    "POST {to} HTTP/1.1\r\nHost: inbox.test\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                );
                let mut reader = stream.try_clone().unwrap();
                let answered = std::thread::spawn(move || {
                    let mut head = [0u8; 12];
                    reader.read_exact(&mut head).ok()?;
                    String::from_utf8_lossy(&head[9..12]).parse::<u16>().ok()
                });
                for _ in 0..100 {
                    if stream.write_all(b"{").is_err() || answered.is_finished() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                answered.join().unwrap()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The signing service, meanwhile, answers as ever (403: this daemon has no signing key),
    // never 503 for want of room.
    let (status, answer) = post(
        inbox.port,
        "/xrpc/org.atsms-milter.mail.signEnvelope",
        "",
        "{}",
    );
    assert_eq!(status, 403, "{answer}");
    let mut answers: Vec<u16> = slow
        .into_iter()
        .map(|t| t.join().unwrap().unwrap_or(0))
        .collect();
    answers.sort();
    assert_eq!(
        answers,
        [408, 408, 408, 408, 503, 503],
        "{}",
        inbox.daemon.log()
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}
