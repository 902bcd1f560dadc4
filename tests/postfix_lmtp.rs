//! LMTP with the real thing: a throwaway Postfix hands local delivery to atsms-milter
//! (`virtual_transport = lmtp:…`), over TCP and over a unix socket; the Maildir files are
//! checked byte for byte.

use atsms_testkit as support;

use support::daemon::Daemon;
use support::postfix::{Postfix, free_port};
use support::vectors::VectorWorld;

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: {subject}\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{}@alice.example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

fn lf(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .replace("\r\n", "\n")
}

/// Sends signed, forged and unsigned mail through Postfix into the LMTP daemon and checks
/// each stored file: our fields, Postfix's Received, then the message exactly as sent.
fn deliver_through_postfix(
    transport: &str,
    daemon_listen: &str,
    wait_port: u16,
    root: &std::path::Path,
    world: &VectorWorld,
) {
    let config = world.lmtp_daemon_config(daemon_listen, root, "", "on_fail = \"junk\"");
    let daemon = Daemon::start(&config, wait_port);
    let postfix = Postfix::start(
        &["bob"],
        &format!("virtual_transport = {transport}\nlmtp_line_length_limit = 0"),
    );
    let long_line = "x".repeat(2500);
    let body = format!(
        "Grüße, ünïcödé and a long line:\r\n{long_line}\r\n.leading dot\r\n\r\n-- \r\nAlice\r\n"
    );
    let good = world.sign_now(ALICE, &message("good", &body));
    let mut forged = world.sign_now(ALICE, &message("forged", "pay 100 EUR\r\n"));
    let at = forged.windows(3).position(|w| w == b"100").unwrap();
    forged[at] = b'9';
    let unsigned = message("unsigned", "plain\r\n");
    for m in [&good, &forged, &unsigned] {
        let (transcript, ok) = postfix.swaks("alice@alice.example.com", "bob@mx.example.net", m);
        assert!(ok, "{transcript}");
    }
    let maildir = root.join("mx.example.net/bob/Maildir");
    let inbox = postfix.wait_for_files(&maildir.join("new"), 2);
    let junk = postfix.wait_for_files(&maildir.join(".Junk/new"), 1);

    let find = |files: &[Vec<u8>], subject: &str| -> String {
        files
            .iter()
            .map(|f| String::from_utf8(f.clone()).unwrap())
            .find(|f| f.contains(&format!("\nSubject: {subject}\n")))
            .unwrap()
    };
    let stored = find(&inbox, "good");
    let head = "Return-Path: <alice@alice.example.com>\nDelivered-To: bob@mx.example.net\nAuthentication-Results: mx.test;\n\tatsms=pass header.from=alice@alice.example.com\n\theader.handle=alice.example.com policy.aligned=yes\n\theader.d=\"did:plc:ofurdhfyhjhgomvfygxergep\"\nReceived: from client.example (localhost [127.0.0.1])\n\tby mx.test (Postfix) with ESMTP id ";
    assert!(stored.starts_with(head), "{stored}");
    // After Postfix's Received field: the signed message byte for byte (LF line ends), 8-bit
    // text and the 2500-byte line unchanged. swaks adds one empty line at the end.
    let original = lf(&good);
    let after_received = &stored[stored.find("\nAT-SMS-Signature:").unwrap() + 1..];
    assert_eq!(after_received, format!("{original}\n"), "byte for byte");
    println!(
        "Maildir file {} headers:\n{}",
        maildir.display(),
        stored.split("\n\n").next().unwrap()
    );

    let forged = find(&junk, "forged");
    assert!(
        forged.contains("atsms=fail reason=\"body hash mismatch\""),
        "{forged}"
    );
    let unsigned = find(&inbox, "unsigned");
    assert!(
        unsigned.contains("\nAuthentication-Results: mx.test; atsms=none\n"),
        "{unsigned}"
    );
    let log = daemon.log_with("atsms=fail");
    let line = log
        .lines()
        .find(|l| l.contains("atsms=fail"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains("to=<bob@mx.example.net>")
            && line.contains("action=junk")
            && line.contains("/.Junk"),
        "{line}"
    );
    assert!(
        postfix
            .maillog()
            .contains("status=sent (250 2.0.0 <bob@mx.example.net> "),
        "{}",
        postfix.maillog()
    );
}

#[test]
fn postfix_delivers_over_lmtp_on_tcp() {
    let world = VectorWorld::start();
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    deliver_through_postfix(
        &format!("lmtp:inet:127.0.0.1:{port}"),
        &format!("inet:127.0.0.1:{port}"),
        port,
        root.path(),
        &world,
    );
}

#[test]
fn postfix_delivers_over_lmtp_on_a_unix_socket() {
    let world = VectorWorld::start();
    let root = support::public_tempdir();
    let socket = root.path().join("lmtp.sock");
    // The daemon also runs the (default) milter; its port tells when it is up.
    let milter_port = free_port();
    let milter_section = format!("[milter]\nlisten = \"inet:127.0.0.1:{milter_port}\"\n");
    let config_listen = format!("unix:{}", socket.display());
    deliver_through_postfix_with_milter(
        &milter_section,
        &config_listen,
        milter_port,
        root.path(),
        &world,
        &socket,
    );
}

fn deliver_through_postfix_with_milter(
    milter_section: &str,
    listen: &str,
    milter_port: u16,
    root: &std::path::Path,
    world: &VectorWorld,
    socket: &std::path::Path,
) {
    let config = world.lmtp_daemon_config(listen, root, milter_section, "");
    let daemon = Daemon::start(&config, milter_port);
    // The milter port being up says the daemon is binding; the LMTP socket may
    // come a moment later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        socket.exists(),
        "no LMTP socket; daemon log: {}",
        daemon.log()
    );
    let postfix = Postfix::start(
        &["bob"],
        &format!(
            "virtual_transport = lmtp:unix:{}\nlmtp_line_length_limit = 0",
            socket.display()
        ),
    );
    let good = world.sign_now(ALICE, &message("over unix", "via a unix socket\r\n"));
    let (transcript, ok) = postfix.swaks("alice@alice.example.com", "bob@mx.example.net", &good);
    assert!(ok, "{transcript}");
    let maildir = root.join("mx.example.net/bob/Maildir");
    let stored =
        String::from_utf8(postfix.wait_for_files(&maildir.join("new"), 1).remove(0)).unwrap();
    assert!(
        stored.contains("policy.aligned=yes\n\theader.d=\"did:plc:ofurdhfyhjhgomvfygxergep\""),
        "{stored}"
    );
    assert!(stored.ends_with(&format!("{}\n", lf(&good))), "{stored}");
}
