//! Milter mode with the real thing: a throwaway Postfix (`smtpd_milters`) talking to the real
//! `atsms-milter serve`, mail sent with swaks, results read from the Maildir files Postfix's
//! virtual(8) writes and from what swaks was told.

use atsms_testkit as support;

use std::sync::Arc;

use support::daemon::Daemon;
use support::http::{HttpServer, Reply};
use support::postfix::{Postfix, free_port};
use support::vectors::VectorWorld;

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

fn milter_config(world_resolver: &str, port: u16, policy: &str) -> String {
    format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n\n{world_resolver}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n{policy}\n[log]\nlevel = \"debug\"\n"
    )
}

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: {subject}\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{}@alice.example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

/// The delivered message whose Subject is `subject`.
fn find<'a>(messages: &'a [Vec<u8>], subject: &str) -> &'a str {
    messages
        .iter()
        .map(|m| std::str::from_utf8(m).unwrap())
        .find(|m| m.contains(&format!("\nSubject: {subject}\n")))
        .unwrap_or_else(|| panic!("no message with Subject {subject}"))
}

fn header_section(message: &str) -> &str {
    message.split("\n\n").next().unwrap()
}

#[test]
fn postfix_delivers_each_verdict_in_its_header() {
    let world = VectorWorld::start();
    let milter_port = free_port();
    let daemon = Daemon::start(
        &milter_config(&world.resolver_toml(), milter_port, ""),
        milter_port,
    );
    let postfix = Postfix::start(
        &["bob"],
        &format!("smtpd_milters = inet:127.0.0.1:{milter_port}"),
    );

    let good = world.sign_now(
        ALICE,
        &message("good one", "Grüße aus dem Netz,\r\nAlice\r\n"),
    );
    let mut forged = world.sign_now(ALICE, &message("forged one", "pay 100 EUR\r\n"));
    let at = forged.windows(3).position(|w| w == b"100").unwrap();
    forged[at] = b'9';
    let unsigned = message("unsigned one", "no signature\r\n");
    let with_forged_ar = [
        b"Authentication-Results: mx.test; atsms=pass header.d=\"did:plc:hxdv4c2etoo2mbhg4alzhnno\"\r\n".as_slice(),
        b"Authentication-Results: mx.(c)test; atsms=pass header.d=\"did:plc:hxdv4c2etoo2mbhg4alzhnno\"\r\n",
        b"Authentication-Results: \"mx\".test; atsms=pass header.d=\"did:plc:hxdv4c2etoo2mbhg4alzhnno\"\r\n",
        b"Authentication-Results: mx\\.test; atsms=pass header.d=\"did:plc:hxdv4c2etoo2mbhg4alzhnno\"\r\n",
        b"Authentication-Results: other.example; dkim=pass header.d=other.example\r\n",
        &world.sign_now(ALICE, &message("with forged results", "hello\r\n")),
    ]
    .concat();
    for m in [&good, &forged, &unsigned, &with_forged_ar] {
        let (transcript, ok) = postfix.swaks("alice@alice.example.com", "bob@mx.example.net", m);
        assert!(
            ok && transcript.contains("250 2.0.0 Ok: queued"),
            "{transcript}"
        );
    }
    let delivered = postfix.wait_for_mail("bob", 4);

    let good = find(&delivered, "good one");
    let head = header_section(good);
    assert!(head.contains("Authentication-Results: mx.test;\n\tatsms=pass header.from=alice@alice.example.com\n\theader.handle=alice.example.com policy.aligned=yes\n\theader.d=\"did:plc:ofurdhfyhjhgomvfygxergep\"\n"), "{head}");
    assert!(head.contains("header.handle=alice.example.com"), "{head}");
    assert!(head.contains("policy.aligned=yes"), "{head}");
    assert!(
        good.contains("\n\nGrüße aus dem Netz,\nAlice\n"),
        "8-bit body intact: {good}"
    );
    // Ours sits above Postfix's own Received field.
    assert!(
        head.find("Authentication-Results: mx.test").unwrap()
            < head.find("Received: from client.example").unwrap()
    );
    println!("delivered header section:\n{head}\n");

    let forged = header_section(find(&delivered, "forged one"));
    assert!(forged.contains("atsms=fail reason=\"body hash mismatch\"\n\theader.d=\"did:plc:ofurdhfyhjhgomvfygxergep\""), "{forged}");

    let unsigned = header_section(find(&delivered, "unsigned one"));
    assert!(
        unsigned.contains("Authentication-Results: mx.test; atsms=none\n"),
        "{unsigned}"
    );

    let cleaned = header_section(find(&delivered, "with forged results"));
    assert_eq!(
        cleaned.matches("Authentication-Results: mx.test").count(),
        1,
        "{cleaned}"
    );
    assert!(
        !cleaned.contains("hxdv4c2etoo2mbhg4alzhnno"),
        "the forged result is gone: {cleaned}"
    );
    assert!(
        cleaned.contains("Authentication-Results: other.example; dkim=pass"),
        "another host's stays: {cleaned}"
    );
    assert!(cleaned.contains("atsms=pass"), "{cleaned}");

    // One log line per message, with the queue id Postfix gave it.
    let maillog = postfix.maillog();
    let queue_id = maillog
        .lines()
        .find(|l| l.contains("postfix/cleanup") && l.contains("message-id=<good-one@"))
        .and_then(|l| l.split(": ").nth(1))
        .unwrap_or_else(|| panic!("{maillog}"));
    let log = daemon.log_with(&format!("{queue_id}: atsms=pass"));
    let line = log
        .lines()
        .find(|l| l.contains(&format!("{queue_id}: atsms=pass")))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("did=did:plc:ofurdhfyhjhgomvfygxergep handle=alice.example.com"),
        "{line}"
    );
    assert!(
        line.contains("action=accept") && line.contains("resolve_ms="),
        "{line}"
    );
    println!("milter log line: {line}");
    println!(
        "postfix log: {}",
        maillog
            .lines()
            .find(|l| l.contains(queue_id) && l.contains("status=sent"))
            .unwrap()
    );
}

#[test]
fn postfix_rejects_forgeries_when_told_to() {
    let world = VectorWorld::start();
    let milter_port = free_port();
    let daemon = Daemon::start(
        &milter_config(
            &world.resolver_toml(),
            milter_port,
            "on_fail = \"reject\"\n",
        ),
        milter_port,
    );
    let postfix = Postfix::start(
        &["bob"],
        &format!("smtpd_milters = inet:127.0.0.1:{milter_port}"),
    );
    let mut forged = world.sign_now(ALICE, &message("forged", "pay 100 EUR\r\n"));
    let at = forged.windows(3).position(|w| w == b"100").unwrap();
    forged[at] = b'9';
    let (transcript, ok) = postfix.swaks("alice@alice.example.com", "bob@mx.example.net", &forged);
    assert!(!ok, "{transcript}");
    assert!(
        transcript.contains("<** 550 5.7.1 AT-SMS signature fail"),
        "{transcript}"
    );
    // A good message still goes through, and only it arrives.
    let good = world.sign_now(ALICE, &message("fine", "all good\r\n"));
    let (transcript, ok) = postfix.swaks("alice@alice.example.com", "bob@mx.example.net", &good);
    assert!(ok, "{transcript}");
    let delivered = postfix.wait_for_mail("bob", 1);
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        std::fs::read_dir(postfix.new_dir("bob")).unwrap().count(),
        1
    );
    assert!(header_section(find(&delivered, "fine")).contains("atsms=pass"));
    let log = daemon.log_with("action=reject");
    assert!(
        log.contains("atsms=fail") && log.contains("action=reject"),
        "{log}"
    );
}

#[test]
fn postfix_defers_when_the_plc_directory_is_down() {
    let world = VectorWorld::start();
    let down = HttpServer::start(Arc::new(|_: &str| {
        Reply::json(503, "{\"message\":\"unavailable\"}")
    }));
    let resolver = world.resolver_toml().replace(&world.plc.url(), &down.url());
    let milter_port = free_port();
    let _daemon = Daemon::start(&milter_config(&resolver, milter_port, ""), milter_port);
    let postfix = Postfix::start(
        &["bob"],
        &format!("smtpd_milters = inet:127.0.0.1:{milter_port}"),
    );
    let signed = world.sign_now(ALICE, &message("deferred", "later\r\n"));
    let (transcript, ok) = postfix.swaks("alice@alice.example.com", "bob@mx.example.net", &signed);
    assert!(!ok);
    assert!(
        transcript.contains("<** 451 4.7.1 AT-SMS signature temperror"),
        "{transcript}"
    );
    assert!(down.request_count() >= 1);
}
