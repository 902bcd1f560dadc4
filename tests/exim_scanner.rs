//! Exim at SMTP time with the real Exim 4.96 and the contrib files as they are
//! (`contrib/exim/main.conf`, `contrib/exim/acl_data.conf`): Exim's `spam` condition asks the
//! daemon's scanner; forgeries are refused at DATA, passes get our field, forged fields go, a
//! dead daemon defers, authenticated submissions are not judged. The daemon trusts only
//! 127.0.0.1; "outside" mail comes from 127.0.0.2.

use atsms_testkit as support;

use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::exim::Exim;
use support::postfix::free_port;
use support::vectors::VectorWorld;

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

fn contrib(name: &str) -> String {
    support::contrib(&format!("exim/{name}"))
        .display()
        .to_string()
}

fn message(from: &str, subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: <bob@mx.example.net>\r\nSubject: {subject}\r\nDate: Wed, 02 Dec 2026 09:00:00 +0000\r\nMessage-ID: <{}@alice.example.com>\r\n\r\n{body}",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

/// PLAIN for alice, over plain text (a test).
const AUTHENTICATORS: &str = "begin authenticators
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${if and{{eq{$auth2}{alice}}{eq{$auth3}{alice-secret}}}}
  server_set_id = $auth2
  server_advertise_condition = true
";

/// Exim with the contrib files, asking the scanner on `scanner_port`; mail for
/// bob@mx.example.net into `<root>/maildir`; PLAIN AUTH for alice.
fn exim(scanner_port: u16) -> Exim {
    Exim::start_with(|root, _| {
        let maildir = root.join("maildir");
        std::fs::create_dir_all(&maildir).unwrap();
        std::os::unix::fs::chown(&maildir, Some(65534), Some(65534)).unwrap();
        format!(
            "ATSMS_SCANNER = 127.0.0.1 {scanner_port}
.include {main}
domainlist local_domains = mx.example.net
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data
tls_advertise_hosts =
auth_advertise_hosts = *

begin acl
acl_check_rcpt:
  accept domains = +local_domains
  deny message = relay not permitted

acl_check_data:
.include {acl}
  accept

begin routers
local:
  driver = accept
  domains = +local_domains
  transport = maildir

begin transports
maildir:
  driver = appendfile
  directory = {maildir}
  maildir_format
  user = nobody
  group = nogroup

begin retry
* * F,2h,1m

{AUTHENTICATORS}",
            main = contrib("main.conf"),
            acl = contrib("acl_data.conf"),
            maildir = maildir.display()
        )
    })
}

/// The delivered messages, by subject.
fn delivered(exim: &Exim, count: usize) -> Vec<String> {
    let new = exim.dir.path().join("maildir/new");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let files: Vec<_> = std::fs::read_dir(&new)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if files.len() >= count {
            return files
                .iter()
                .map(|f| std::fs::read_to_string(f).unwrap())
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} delivered:\n{}\n{}",
            files.len(),
            exim.log("main"),
            exim.log("panic")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn find<'a>(messages: &'a [String], subject: &str) -> &'a str {
    messages
        .iter()
        .find(|m| m.contains(&format!("\nSubject: {subject}\n")))
        .unwrap_or_else(|| panic!("no {subject:?} in {messages:#?}"))
}

#[test]
fn exim_refuses_forgeries_at_data_and_delivers_passes_with_our_field() {
    let world = VectorWorld::start();
    let port = free_port();
    let mut daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n\n[exim]\nlisten = \"inet:127.0.0.1:{port}\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = [\"127.0.0.1/32\"]\non_fail = \"reject\"\non_unaligned = \"junk\"\n",
            free_port(),
            world.resolver_toml()
        ),
        port,
    );
    let exim = exim(port);
    let outside = ["--local-interface", "127.0.0.2"];
    let send = |m: &[u8], options: &[&str]| {
        exim.swaks_with("alice@alice.example.com", "bob@mx.example.net", m, options)
    };

    // A pass from outside, with forged results claiming our authserv-id and another host's.
    let pass = [
        b"Authentication-Results: mx.test; atsms=pass header.d=\"did:plc:hxdv4c2etoo2mbhg4alzhnno\"\r\n".as_slice(),
        b"Authentication-Results: other.example; dkim=pass header.d=other.example\r\n",
        &world.sign_now(ALICE, &message("Alice <alice@alice.example.com>", "a pass", "hello\r\n")),
    ]
    .concat();
    let (transcript, ok) = send(&pass, &outside);
    assert!(ok, "{transcript}");
    // A forgery: refused at DATA with our reply.
    let mut forged = world.sign_now(
        ALICE,
        &message(
            "Alice <alice@alice.example.com>",
            "a forgery",
            "pay 100 EUR\r\n",
        ),
    );
    let at = forged.windows(3).position(|w| w == b"100").unwrap();
    forged[at] = b'9';
    let (transcript, ok) = send(&forged, &outside);
    assert!(!ok, "{transcript}");
    assert!(
        transcript.contains("<** 550 5.7.1 AT-SMS signature fail"),
        "{transcript}"
    );
    // Signed but not aligned with From: junk, marked for the delivery agent.
    let unaligned = world.sign_now(
        ALICE,
        &message("<someone@elsewhere.example>", "unaligned", "hi\r\n"),
    );
    assert!(send(&unaligned, &outside).1);
    // An authenticated submission, even a forgery, is not judged.
    let auth = [
        "--local-interface",
        "127.0.0.2",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "alice-secret",
    ];
    let submitted = format!(
        "Authentication-Results: mx.test; atsms=pass\r\n{}",
        String::from_utf8_lossy(&forged).replace("Subject: a forgery", "Subject: submitted")
    )
    .into_bytes();
    let (transcript, ok) = send(&submitted, &auth);
    assert!(ok, "{transcript}");
    // From the trusted address, unsigned: not judged either.
    assert!(send(&message("<x@y.example>", "trusted", "hi\r\n"), &[]).1);

    let messages = delivered(&exim, 4);
    let pass = find(&messages, "a pass");
    assert!(
        pass.starts_with("Authentication-Results: mx.test;\n\tatsms=pass header.from=alice@alice.example.com\n\theader.handle=alice.example.com policy.aligned=yes\n\theader.d=\"did:plc:ofurdhfyhjhgomvfygxergep\"\nReceived: from "),
        "ours on top, above Exim's Received:\n{pass}"
    );
    assert_eq!(pass.matches("Authentication-Results:").count(), 1, "{pass}");
    assert!(!pass.contains("X-Spam-Flag"), "{pass}");
    println!("delivered by Exim:\n{pass}");
    let unaligned = find(&messages, "unaligned");
    assert!(unaligned.contains("policy.aligned=no"), "{unaligned}");
    assert!(unaligned.contains("\nX-Spam-Flag: YES\n"), "{unaligned}");
    let submitted = find(&messages, "submitted");
    assert!(
        !submitted.contains("Authentication-Results"),
        "removed, none added: {submitted}"
    );
    let trusted = find(&messages, "trusted");
    assert!(!trusted.contains("Authentication-Results"), "{trusted}");

    let main = exim.log("main");
    let refused = main
        .lines()
        .find(|l| l.contains("rejected after DATA"))
        .unwrap_or_else(|| panic!("{main}"));
    assert!(refused.contains("AT-SMS signature fail"), "{refused}");
    println!("Exim's log: {refused}");
    let log = daemon.log_with(": atsms=fail did=did:plc:ofurdhfyhjhgomvfygxergep");
    assert!(
        log.contains(": atsms=fail did=did:plc:ofurdhfyhjhgomvfygxergep"),
        "{log}"
    );
    assert!(log.contains("action=reject"), "{log}");

    // A dead daemon: Exim defers, never accepts.
    daemon.stop();
    let late = world.sign_now(
        ALICE,
        &message("Alice <alice@alice.example.com>", "late", "hi\r\n"),
    );
    let (transcript, ok) = send(&late, &outside);
    assert!(!ok && transcript.contains("<** 451 "), "{transcript}");
    assert_eq!(delivered(&exim, 4).len(), 4);
    exim.stop();
}
