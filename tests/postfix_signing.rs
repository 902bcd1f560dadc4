//! Signing with the real thing: a throwaway Postfix submission server (A) authenticating with
//! SASL through a throwaway Dovecot, our milter signing; it relays from 127.0.0.2 to a second
//! throwaway Postfix (B) whose milter verifies, and which rewrites some fields on the way in
//! (`header_checks`). Both daemons trust only 127.0.0.1, so B really judges what A relays.

use atsms_testkit as support;

use support::daemon::Daemon;
use support::dovecot::DovecotAuth;
use support::postfix::{Postfix, free_port};
use support::vectors::VectorWorld;

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

fn message(subject: &str, extra: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: {subject}\r\nDate: Wed, 02 Dec 2026 09:00:00 +0000\r\nMessage-ID: <{}@alice.example.com>\r\n{extra}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSigned by my submission server.\r\n",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

fn find<'a>(messages: &'a [String], subject: &str) -> &'a str {
    messages
        .iter()
        .find(|m| m.contains(&format!("\nSubject: {subject}\n")))
        .unwrap_or_else(|| panic!("no message with Subject {subject} in {messages:#?}"))
}

fn head(message: &str) -> &str {
    message.split("\n\n").next().unwrap()
}

#[test]
fn submission_signs_sasl_mail_and_the_next_hop_verifies_it() {
    let world = VectorWorld::start();
    let dovecot = DovecotAuth::start(&[("alice", "alice-secret"), ("mallory", "mallory-secret")]);
    let dir = support::public_tempdir();

    // B: the recipient's MX, verifying; rewrites two fields before its milter sees them.
    let checks = dir.path().join("header_checks");
    std::fs::write(
        &checks,
        "/^X-Mailer: rewrite me/ REPLACE X-Mailer: rewritten on the way\n/^Subject: rewrite me/ REPLACE Subject: rewritten on the way\n",
    )
    .unwrap();
    let b_milter = free_port();
    let _b_daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{b_milter}\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = [\"127.0.0.1/32\"]\n",
            world.resolver_toml()
        ),
        b_milter,
    );
    let b = Postfix::start(
        &["bob"],
        &format!(
            "smtpd_milters = inet:127.0.0.1:{b_milter}\nheader_checks = regexp:{}\n",
            checks.display()
        ),
    );

    // A: submission, signing for Alice's login only.
    let key_file = dir.path().join("alice.pem");
    std::fs::write(&key_file, world.keys[ALICE]["pkcs8_pem"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let a_milter = free_port();
    let a_daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{a_milter}\"\n\n{}\n[policy]\nauthserv_id = \"submission.test\"\ntrusted_networks = [\"127.0.0.1/32\"]\n\n[[signing.key]]\nsenders = [\"alice@alice.example.com\"]\ndid = \"{ALICE}\"\nkid = \"{ALICE}#atproto\"\nkey_file = \"{}\"\nlogins = [\"alice\"]\n",
            world.resolver_toml(),
            key_file.display()
        ),
        a_milter,
    );
    let a = Postfix::start(
        &[],
        &format!(
            "myhostname = submission.test\nvirtual_mailbox_domains =\nrelayhost = [127.0.0.1]:{}\nsmtp_bind_address = 127.0.0.2\nsmtpd_milters = inet:127.0.0.1:{a_milter}\nsmtpd_sasl_auth_enable = yes\nsmtpd_sasl_type = dovecot\nsmtpd_sasl_path = {}\nsmtpd_relay_restrictions = permit_sasl_authenticated, permit_mynetworks, reject_unauth_destination\n",
            b.smtp_port,
            dovecot.socket().display()
        ),
    );
    let auth = |user: &'static str, password: &'static str| {
        vec![
            "--auth",
            "PLAIN",
            "--auth-user",
            user,
            "--auth-password",
            password,
        ]
    };
    let outside = vec!["--local-interface", "127.0.0.2"];
    let sends: Vec<(&str, &str, Vec<&str>)> = vec![
        ("signed", "", auth("alice", "alice-secret")),
        ("from outside", "", outside.clone()),
        ("another login", "", auth("mallory", "mallory-secret")),
        ("rewrite me", "", auth("alice", "alice-secret")),
        (
            "unsigned field rewritten",
            "X-Mailer: rewrite me\r\n",
            auth("alice", "alice-secret"),
        ),
    ];
    for (subject, extra, options) in &sends {
        let (transcript, ok) = a.swaks_with(
            "alice@alice.example.com",
            "bob@mx.example.net",
            &message(subject, extra),
            options,
        );
        assert!(
            ok && transcript.contains("250 2.0.0 Ok: queued"),
            "{transcript}"
        );
    }
    let delivered: Vec<String> = b
        .wait_for_mail("bob", sends.len())
        .into_iter()
        .map(|m| String::from_utf8(m).unwrap())
        .collect();

    // Signed at A, verified at B: pass, aligned by Alice's handle.
    let signed = find(&delivered, "signed");
    let fields = head(signed);
    assert!(
        fields.contains(&format!("AT-SMS-Signature: v=1; d={ALICE};")),
        "{signed}"
    );
    assert!(
        fields.contains("Authentication-Results: mx.test;\n\tatsms=pass header.from=alice@alice.example.com\n\theader.handle=alice.example.com policy.aligned=yes"),
        "{signed}"
    );
    // On top of what the client sent; B's and A's Received fields are above it, unsigned.
    let order: Vec<&str> = fields
        .lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    let at = |name: &str| order.iter().position(|n| *n == name).unwrap();
    assert!(at("AT-SMS-Signature") < at("From"), "{order:?}");
    println!("delivered by B:\n{signed}");

    // Not authenticated, from outside: not signed (and A judged it).
    let outside = find(&delivered, "from outside");
    assert!(!outside.contains("AT-SMS-Signature"), "{outside}");
    assert!(
        outside.contains("Authentication-Results: mx.test; atsms=none"),
        "{outside}"
    );
    // A login that may not use Alice's key: not signed, and A says why.
    let mallory = find(&delivered, "another login");
    assert!(!mallory.contains("AT-SMS-Signature"), "{mallory}");
    let log = a_daemon
        .log_with("not signed: login mallory may not use the key for alice@alice.example.com");
    assert!(
        log.contains("not signed: login mallory may not use the key for alice@alice.example.com"),
        "{log}"
    );
    assert_eq!(
        log.matches(&format!(": signed did={ALICE} kid={ALICE}#atproto"))
            .count(),
        3,
        "{log}"
    );
    // A relay rewriting a field the signature does not cover: still passes. Rewriting the
    // Subject: fails.
    let unsigned_field = find(&delivered, "unsigned field rewritten");
    assert!(
        unsigned_field.contains("X-Mailer: rewritten on the way"),
        "{unsigned_field}"
    );
    assert!(unsigned_field.contains("atsms=pass"), "{unsigned_field}");
    let subject = find(&delivered, "rewritten on the way");
    assert!(
        subject.contains("atsms=fail reason=\"header hash mismatch\""),
        "{subject}"
    );
}
