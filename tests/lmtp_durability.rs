//! LMTP delivery that loses nothing: a full file system, a kill -9 in the middle of a
//! delivery followed by the MTA's retry, and stale tmp/ files from crashes.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use atsms_milter::infra::config::Action;
use atsms_milter::infra::config::PolicyConfig;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use support::daemon::Daemon;
use support::http::HttpServer;
use support::http::Reply;
use support::lmtp::LmtpClient;
use support::lmtp::RunningLmtp;
use support::lmtp::dot_stuffed;
use support::postfix::Postfix;
use support::postfix::free_port;
use support::vectors::VectorWorld;

fn policy_trusting_no_network() -> PolicyConfig {
    PolicyConfig {
        authserv_id: Some("mx.test".parse().unwrap()),
        trusted_networks: vec![],
        ..PolicyConfig::default()
    }
}

fn envelope_vector(name: &str) -> std::path::PathBuf {
    support::test_data("envelope").join(name)
}

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

fn lmtp_config(resolver: &str, port: u16, root: &std::path::Path, extra: &str) -> String {
    format!(
        "[lmtp]\nlisten = \"inet:127.0.0.1:{port}\"\nmaildir = \"{}/%d/%n/Maildir\"\n{extra}\n{resolver}\n[policy]\nauthserv_id = \"mx.test\"\n",
        root.display()
    )
}

fn count(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

async fn client(port: u16) -> LmtpClient {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut c = LmtpClient {
        stream: tokio::io::BufReader::new(stream),
    };
    assert!(c.reply().await.starts_with("220 "));
    c
}

#[tokio::test]
async fn a_full_file_system_gives_452_and_leaves_no_partial_file() {
    let world = VectorWorld::start();
    let root = tempfile::tempdir().unwrap();
    let port = free_port();
    // Files may not grow past 200 KiB: the Maildir write of a 240 KiB message fails with EFBIG,
    // as it would with ENOSPC (the spool of a message this size stays in memory).
    let _daemon = Daemon::start_limited(
        &lmtp_config(&world.resolver_toml(), port, root.path(), ""),
        port,
        Some(200 * 1024),
    );
    let mut c = client(port).await;
    c.send(b"LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(4).await;
    let big = format!(
        "Subject: big\r\n\r\n{}",
        "0123456789abcdef\r\n".repeat(240 * 1024 / 18)
    );
    c.send(&dot_stuffed(big.as_bytes())).await;
    assert_eq!(
        c.reply().await,
        "452 4.3.1 <bob@mx.example.net> insufficient system storage"
    );
    let maildir = root.path().join("mx.example.net/bob/Maildir");
    assert_eq!(count(&maildir.join("new")), 0);
    assert_eq!(count(&maildir.join("tmp")), 0, "the tmp file is removed");
    // Small mail still goes through on the same connection.
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(3).await;
    c.send(&dot_stuffed(b"Subject: small\r\n\r\nfits\r\n"))
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    assert_eq!(count(&maildir.join("new")), 1);
}

#[test]
fn stale_tmp_files_are_cleaned_at_start() {
    let world = VectorWorld::start();
    let root = tempfile::tempdir().unwrap();
    let maildir = root.path().join("mx.example.net/bob/Maildir");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let old = maildir.join("tmp/1795000000.M1P1Q1.crashed");
    let fresh = maildir.join("tmp/1795600000.M1P2Q1.in-progress");
    std::fs::write(&old, b"half a message").unwrap();
    std::fs::write(&fresh, b"someone else's delivery").unwrap();
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(48 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let recipients = root.path().join("recipients");
    std::fs::write(&recipients, "bob@mx.example.net\n").unwrap();
    let port = free_port();
    let extra = format!("recipients = \"{}\"", recipients.display());
    let daemon = Daemon::start(
        &lmtp_config(&world.resolver_toml(), port, root.path(), &extra),
        port,
    );
    assert!(!old.exists(), "older than 36 hours: removed");
    assert!(fresh.exists(), "recent: left alone");
    let log = daemon.log_with("removed 1 stale file(s)");
    assert!(log.contains("removed 1 stale file(s)"), "{log}");
}

#[test]
fn kill_dash_9_mid_delivery_then_the_mta_retries_and_delivers() {
    let world = VectorWorld::start();
    let root = support::public_tempdir();
    let port = free_port();
    // First life: the PLC never answers, so the daemon is mid-delivery (message received,
    // verifying) when it is killed.
    let stuck = HttpServer::start(Arc::new(|_: &str| Reply::Hang));
    let hanging = world
        .resolver_toml()
        .replace(&world.plc.url(), &stuck.url())
        .replace("timeout = 3", "timeout = 60");
    let mut first = Daemon::start(&lmtp_config(&hanging, port, root.path(), ""), port);
    let postfix = Postfix::start(
        &["bob"],
        &format!(
            "virtual_transport = lmtp:inet:127.0.0.1:{port}\nlmtp_line_length_limit = 0\nminimal_backoff_time = 300s\nmaximal_backoff_time = 300s\nqueue_run_delay = 300s"
        ),
    );
    let signed = world.sign_now(ALICE, b"From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: survives\r\n\r\nkill -9 cannot lose me\r\n");
    let (transcript, ok) = postfix.swaks("alice@alice.example.com", "bob@mx.example.net", &signed);
    assert!(ok, "{transcript}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stuck.request_count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the daemon never started verifying; maillog:\n{}",
            postfix.maillog()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    first.kill_dash_9();
    let maildir = root.path().join("mx.example.net/bob/Maildir");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !postfix.maillog().contains("status=deferred") {
        assert!(
            Instant::now() < deadline,
            "Postfix did not defer:\n{}",
            postfix.maillog()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&maildir.join("new")), 0, "nothing half-delivered");
    assert_eq!(count(&maildir.join("tmp")), 0);

    // Second life, PLC reachable: Postfix's retry (flushed, to skip its backoff) delivers.
    let _second = Daemon::start(
        &lmtp_config(&world.resolver_toml(), port, root.path(), ""),
        port,
    );
    let etc = postfix.root().join("etc");
    let status = std::process::Command::new("postqueue")
        .arg("-c")
        .arg(&etc)
        .arg("-f")
        .status()
        .unwrap();
    assert!(status.success());
    let delivered = postfix.wait_for_files(&maildir.join("new"), 1);
    let text = String::from_utf8(delivered[0].clone()).unwrap();
    assert!(
        text.contains("atsms=pass") && text.contains("\n\nkill -9 cannot lose me\n"),
        "{text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(count(&maildir.join("new")), 1, "delivered once");
}

// Maildir delivery followed symlinks.

#[tokio::test]
async fn symlinked_folders_are_refused() {
    let world = VectorWorld::start();
    let junk_policy = PolicyConfig {
        on_fail: Action::Junk,
        ..policy_trusting_no_network()
    };
    let server =
        RunningLmtp::start(world.resolver_config(), junk_policy, world.now(), |_, _| {}).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let maildir = server.maildir("bob");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    std::os::unix::fs::symlink(elsewhere.path(), maildir.join(".Junk")).unwrap();
    std::os::unix::fs::symlink(elsewhere.path(), maildir.join(".Lists")).unwrap();
    let forged = std::fs::read(envelope_vector("body-tampered-fail.eml")).unwrap();
    let good = world.sign_at(
        ALICE,
        b"From: Alice <alice@alice.example.com>\r\nSubject: to lists\r\n\r\nhi\r\n",
        world.now(),
        &[],
    );
    let mut c = server.client().await;
    for (message, rcpt) in [
        (&forged, "bob@mx.example.net"),
        (&good, "bob+Lists@mx.example.net"),
    ] {
        c.send(
            format!("LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes(),
        )
        .await;
        c.replies(4).await;
        c.send(&dot_stuffed(message)).await;
        let reply = c.reply().await;
        if rcpt.contains("Lists") {
            // A symlinked .Detail is no folder: the copy goes to INBOX.
            assert!(reply.starts_with("250 "), "{reply}");
        } else {
            assert!(
                reply.starts_with("451 4.3.0"),
                "the symlinked .Junk is refused: {reply}"
            );
        }
    }
    assert_eq!(
        std::fs::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing written elsewhere"
    );
    assert_eq!(RunningLmtp::new_files(&maildir).len(), 1);
}
