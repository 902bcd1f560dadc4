//! Prometheus metrics scraped from a running daemon while mail goes through both modes.

use atsms_testkit as support;

use std::io::{Read, Write};

use support::daemon::Daemon;
use support::lmtp::{LmtpClient, dot_stuffed};
use support::postfix::free_port;
use support::vectors::VectorWorld;

fn scrape(port: u16) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    text
}

#[tokio::test]
async fn counters_move_with_the_mail() {
    let world = VectorWorld::start();
    let root = tempfile::tempdir().unwrap();
    let (milter_port, lmtp_port, metrics_port) = (free_port(), free_port(), free_port());
    let sections = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{milter_port}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n"
    );
    let config = world.lmtp_daemon_config(
        &format!("inet:127.0.0.1:{lmtp_port}"),
        root.path(),
        &sections,
        "trusted_networks = []",
    );
    let daemon = Daemon::start(&config, milter_port);
    let before = scrape(metrics_port);
    assert!(
        before.contains("atsms_open_connections{mode=\"milter\"} 0"),
        "{before}"
    );

    // One message by LMTP, signed now.
    let signed = world.sign_now(
        "did:plc:ofurdhfyhjhgomvfygxergep",
        b"From: Alice <alice@alice.example.com>\r\nSubject: m\r\n\r\nx\r\n",
    );
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", lmtp_port))
        .await
        .unwrap();
    let mut c = LmtpClient {
        stream: tokio::io::BufReader::new(stream),
    };
    c.reply().await;
    c.send(b"LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(4).await;
    c.send(&dot_stuffed(&signed)).await;
    assert!(c.reply().await.starts_with("250 "));
    let during = scrape(metrics_port);
    assert!(
        during.contains("atsms_open_connections{mode=\"lmtp\"} 1"),
        "{during}"
    );
    c.send(b"QUIT\r\n").await;
    c.reply().await;

    // One unsigned message by milter.
    let mut conn = indymilter_test::TestConnection::open(("127.0.0.1", milter_port))
        .await
        .unwrap();
    conn.connect("c", std::net::SocketAddr::from(([192, 0, 2, 1], 1)))
        .await
        .unwrap();
    conn.mail(["<a@b.example>"]).await.unwrap();
    conn.rcpt(["<bob@mx.example.net>"]).await.unwrap();
    conn.header("Subject", " plain").await.unwrap();
    conn.body(&b"x\r\n"[..]).await.unwrap();
    conn.eom().await.unwrap();

    let after = scrape(metrics_port);
    println!(
        "metrics scrape:\n{}",
        after.split("\r\n\r\n").nth(1).unwrap()
    );
    for line in [
        "atsms_messages_total{mode=\"lmtp\",result=\"pass\",action=\"accept\"} 1",
        "atsms_messages_total{mode=\"milter\",result=\"none\",action=\"accept\"} 1",
        "atsms_lmtp_deliveries_total{status=\"saved\"} 1",
        "atsms_resolver_requests_total{outcome=\"ok\"} 1",
        "atsms_resolver_request_seconds_count 1",
        "atsms_cache_lookups_total{kind=\"document\",outcome=\"miss\"} 1",
        "atsms_cache_entries{kind=\"document\"} 1",
        "atsms_open_connections{mode=\"milter\"} 1",
    ] {
        assert!(after.contains(line), "missing {line}:\n{after}");
    }
    drop(daemon);
}
