//! Exim delivering to atsms-milter over LMTP (Exim has no milter): with its `lmtp` driver on
//! our unix socket (lock-step), and with the `smtp` driver speaking LMTP over TCP, the only
//! Exim path that sends BDAT.

use atsms_testkit as support;

use support::daemon::Daemon;
use support::exim::Exim;
use support::postfix::free_port;
use support::vectors::VectorWorld;

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

fn message(subject: &str) -> Vec<u8> {
    format!("From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: {subject}\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\nMessage-ID: <{subject}@alice.example.com>\r\n\r\nGrüße über Exim.\r\n{}\r\n", "z".repeat(1500)).into_bytes()
}

fn wait_for_file(dir: &std::path::Path, exim: &Exim, daemon: &Daemon) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(entry) = std::fs::read_dir(dir).ok().and_then(|mut d| d.next()) {
            return String::from_utf8(std::fs::read(entry.unwrap().path()).unwrap()).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing delivered\nexim:\n{}\n{}\ndaemon:\n{}",
            exim.log("main"),
            exim.log("panic"),
            daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn check_delivery(stored: &str, signed: &[u8]) {
    assert!(stored.starts_with("Return-Path: <alice@alice.example.com>\nDelivered-To: bob@mx.example.net\nAuthentication-Results: mx.test;\n\tatsms=pass header.from=alice@alice.example.com\n\theader.handle=alice.example.com policy.aligned=yes\n\theader.d=\"did:plc:ofurdhfyhjhgomvfygxergep\"\n"), "{stored}");
    let original = String::from_utf8(signed.to_vec())
        .unwrap()
        .replace("\r\n", "\n");
    let from_signature = &stored[stored.find("\nAT-SMS-Signature:").unwrap() + 1..];
    assert!(
        from_signature.starts_with(original.trim_end()),
        "byte for byte:\n{stored}"
    );
}

#[test]
fn exim_lmtp_driver_on_a_unix_socket() {
    let world = VectorWorld::start();
    let root = support::public_tempdir();
    let socket = root.path().join("lmtp.sock");
    let milter_port = free_port();
    let milter = format!(
        "[milter]
listen = \"inet:127.0.0.1:{milter_port}\"
"
    );
    let config = world.lmtp_daemon_config(
        &format!("unix:{}", socket.display()),
        root.path(),
        &milter,
        "",
    );
    let daemon = Daemon::start(&config, milter_port);
    let exim = Exim::start(&format!(
        "  driver = lmtp\n  socket = {}\n  user = nobody\n  batch_max = 10\n",
        socket.display()
    ));
    let signed = world.sign_now(ALICE, &message("exim-lmtp"));
    let (transcript, ok) = exim.swaks("alice@alice.example.com", "bob@mx.example.net", &signed);
    assert!(ok, "{transcript}");
    let stored = wait_for_file(
        &root.path().join("mx.example.net/bob/Maildir/new"),
        &exim,
        &daemon,
    );
    check_delivery(&stored, &signed);
    let log = daemon.log_with("via=data");
    assert!(log.contains("via=data"), "{log}");
    exim.stop();
}

#[test]
fn exim_smtp_driver_speaking_lmtp_sends_bdat() {
    let world = VectorWorld::start();
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = world.lmtp_daemon_config(&format!("inet:127.0.0.1:{port}"), root.path(), "", "");
    let daemon = Daemon::start(&config, port);
    let exim = Exim::start(&format!(
        "  driver = smtp\n  protocol = lmtp\n  hosts = 127.0.0.1\n  port = {port}\n  hosts_override\n  allow_localhost\n  hosts_try_chunking = *\n  message_linelength_limit = 1000000000\n"
    ));
    let signed = world.sign_now(ALICE, &message("exim-bdat"));
    let (transcript, ok) = exim.swaks("alice@alice.example.com", "bob@mx.example.net", &signed);
    assert!(ok, "{transcript}");
    let stored = wait_for_file(
        &root.path().join("mx.example.net/bob/Maildir/new"),
        &exim,
        &daemon,
    );
    check_delivery(&stored, &signed);
    let log = daemon.log_with("via=bdat");
    assert!(log.contains("via=bdat"), "Exim used BDAT: {log}");
    exim.stop();
}
