//! Mail routed by DID documents between two real Postfix instances: A, the sender's outbound
//! MTA (`virtual_alias_maps` and `transport_maps` on its own daemon), and B, the DID's mail
//! host (`virtual_mailbox_maps` on its own daemon for consent, delivery over LMTP into
//! Maildirs). The DIDs' documents name `localhost` with B's port.

use atsms_testkit as support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atsms_milter::crypto::{Alg, SigningKey};
use support::daemon::Daemon;
use support::ids::plc_did;
use support::plc::{Plc, mailbox};
use support::postfix::{Postfix, free_port};

fn message(to: &str, subject: &str) -> Vec<u8> {
    format!("From: <sender@a.example>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nrouted by a DID document\r\n")
        .into_bytes()
}

/// `sendmail` into A's queue (pickup), so that a temporary failure leaves it queued.
fn sendmail(postfix: &Postfix, to: &str, message: &[u8]) {
    use std::io::Write;
    let mut child = Command::new("/usr/sbin/sendmail")
        .arg("-C")
        .arg(postfix.root().join("etc"))
        .args(["-f", "sender@a.example", to])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(message).unwrap();
    assert!(child.wait().unwrap().success());
}

fn wait_for_log(postfix: &Postfix, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = postfix.maillog();
        if let Some(line) = log.lines().find(|l| l.contains(what)) {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no {what:?} in:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn postfix_a_routes_by_did_document_and_postfix_b_keeps_only_consented_mailboxes() {
    let plc = Plc::start();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let (lives_at_b, elsewhere, silent, queued) = (plc_did(1), plc_did(2), plc_did(3), plc_did(4));

    // B: the DIDs' mail host.
    let b_root = support::public_tempdir();
    let (b_lmtp, b_maps) = (free_port(), free_port());
    let _b_daemon = Daemon::start(
        &format!(
            "[lmtp]\nlisten = \"inet:127.0.0.1:{b_lmtp}\"\nmaildir = \"{}/%d/%n/Maildir\"\n\n[socketmap]\nlisten = \"inet:127.0.0.1:{b_maps}\"\n\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n\n[inbox]\nhosts = [\"localhost\"]\n\n[policy]\nauthserv_id = \"b.test\"\n",
            b_root.path().display(),
            plc.url()
        ),
        b_lmtp,
    );
    let b = Postfix::start(
        &[],
        &format!(
            "myhostname = b.test\nvirtual_mailbox_domains = localhost\nvirtual_mailbox_maps = socketmap:inet:127.0.0.1:{b_maps}:atsms_mailbox\nvirtual_transport = lmtp:inet:127.0.0.1:{b_lmtp}\nlmtp_line_length_limit = 0\n"
        ),
    );
    let endpoint = format!("smtp://localhost:{}", b.smtp_port);
    plc.set(&lives_at_b, &key, Some(&endpoint));
    plc.set(&queued, &key, Some(&endpoint));
    plc.set(&elsewhere, &key, Some("smtp://mx.other.example"));
    plc.set(&silent, &key, None);

    // A: the sender's outbound MTA. No network here: mail with no DID route fails fast.
    let a_maps = free_port();
    let _a_daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{a_maps}\"\n\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n\n[cache]\nerror = 1\n\n[inbox]\nhosts = [\"a.test\"]\n",
            free_port(),
            plc.url()
        ),
        a_maps,
    );
    let a = Postfix::start(
        &[],
        &format!(
            "myhostname = a.test\nvirtual_alias_maps = socketmap:inet:127.0.0.1:{a_maps}:atsms_alias\ntransport_maps = socketmap:inet:127.0.0.1:{a_maps}:atsms_transport\nsmtp_host_lookup = native\ndefault_transport = error:no route here (no network in this test)\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nqueue_run_delay = 1s\n"
        ),
    );

    // 1. To the DID at any domain: A rewrites it to its mailbox at B and hands it to B, B
    //    checks consent and delivers over LMTP into the DID's Maildir.
    let to = format!("{}@anything.example", mailbox(&lives_at_b));
    let (transcript, ok) = a.swaks("sender@a.example", &to, &message(&to, "via A and B"));
    assert!(ok, "{transcript}");
    let maildir = b_root
        .path()
        .join("localhost")
        .join(mailbox(&lives_at_b))
        .join("Maildir");
    let delivered = b.wait_for_files(&maildir.join("new"), 1);
    let text = String::from_utf8_lossy(&delivered[0]).into_owned();
    assert!(text.contains("Subject: via A and B"), "{text}");
    assert!(
        text.contains(&format!("Delivered-To: {}@localhost", mailbox(&lives_at_b))),
        "{text}"
    );
    println!("delivered at B:\n{text}");

    // 2. B refuses a DID whose document names another host.
    let refused_to = format!("{}@localhost", mailbox(&elsewhere));
    let (transcript, ok) = b.swaks(
        "x@outside.example",
        &refused_to,
        &message(&refused_to, "not here"),
    );
    assert!(!ok && transcript.contains("550 5.1.1"), "{transcript}");

    // 3. A DID naming no service has no route: A bounces it (the fallback fails fast here).
    let nowhere = format!("{}@anything.example", mailbox(&silent));
    let (transcript, ok) = a.swaks("sender@a.example", &nowhere, &message(&nowhere, "no route"));
    assert!(
        !ok && transcript.contains("550 5.1.1"),
        "refused at RCPT: {transcript}"
    );
    sendmail(&a, &nowhere, &message(&nowhere, "no route"));
    let line = wait_for_log(&a, "status=bounced");
    assert!(line.contains(&mailbox(&silent)), "{line}");

    // 4. The PLC directory down: A keeps the message (its lookup answers TEMP: "try again
    //    later"); once the directory is back, the next pass delivers it.
    plc.set_down(true);
    let later = format!("{}@anything.example", mailbox(&queued));
    sendmail(&a, &later, &message(&later, "after the outage"));
    let line = wait_for_log(&a, "try again later");
    assert!(
        line.contains("virtual_alias_maps map lookup problem"),
        "{line}"
    );
    let (transcript, ok) = a.swaks("sender@a.example", &later, &message(&later, "by SMTP"));
    assert!(
        !ok && transcript.contains("451 4.3.0"),
        "deferred at SMTP time too: {transcript}"
    );
    plc.set_down(false);
    std::thread::sleep(Duration::from_millis(1500)); // cache.error: the outage is forgotten
    let etc = a.root().join("etc");
    for (program, args) in [
        ("postkick", &["public", "pickup", "W"][..]),
        ("postqueue", &["-f"][..]),
    ] {
        let status = Command::new(format!("/usr/sbin/{program}"))
            .arg("-c")
            .arg(&etc)
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "{program}");
    }
    let maildir = b_root
        .path()
        .join("localhost")
        .join(mailbox(&queued))
        .join("Maildir");
    let delivered = b.wait_for_files(&maildir.join("new"), 1);
    assert!(String::from_utf8_lossy(&delivered[0]).contains("Subject: after the outage"));
}

/// Every spelling of a DID mailbox an outside client might try, at `victim`'s domain and at
/// the domains the sending host keeps itself.
fn did_forms(did: &str, victim_domain: &str) -> Vec<String> {
    let (dotted, bang) = (mailbox(did), did.replace(':', "!"));
    vec![
        format!("{dotted}@localhost"),
        format!("{}@LOCALHOST", dotted.to_uppercase()),
        format!("{dotted}+x@localhost"),
        format!("{bang}@localhost"),
        format!("{dotted}@[127.0.0.1]"),
        format!("{dotted}@a.test"),
        format!("{dotted}@localhost.test"),
        format!("{dotted}@{victim_domain}"),
        format!("{bang}@{victim_domain}"),
        format!("{dotted}@anything.example"),
    ]
}

/// Never an open relay. A DID names an address at the victim's MX (B) as its mail route;
/// an unauthenticated client outside `mynetworks` tries every DID mailbox form through A on
/// port 25, first with A set up as contrib/postfix says (the aliasing map on submission
/// only), then with the map in main.cf, where only atsms-milter's own guard stands between
/// the internet and the victim. Each recipient is refused at RCPT — `Relay access denied`
/// for every domain A does not keep — and B never sees a connection. An authenticated user
/// on A's submission port is routed by the same DID (the set-up works).
#[test]
fn an_outside_client_cannot_relay_through_a_did_mailbox() {
    let plc = Plc::start();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let did = plc_did(30);
    // B: the victim's mail host; a@mx.example.net is a real mailbox there.
    let b = Postfix::start(&["a"], "");
    plc.set(&did, &key, Some("mailto:a@mx.example.net"));
    let dovecot = support::dovecot::DovecotAuth::start(&[("alice", "alice-secret")]);
    let maps = free_port();
    let _daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{maps}\"\n\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n\n[inbox]\nhosts = [\"a.test\"]\n",
            free_port(),
            plc.url()
        ),
        maps,
    );
    let with_port =
        |text: String| text.replace("inet:127.0.0.1:8896", &format!("inet:127.0.0.1:{maps}"));
    let read = |file: &str| with_port(std::fs::read_to_string(support::contrib(file)).unwrap());
    // A's own settings: a host that keeps localhost and its name, as Debian's defaults do;
    // mail for mx.example.net goes to B; SASL through Dovecot.
    let transport = support::public_tempdir();
    std::fs::write(
        transport.path().join("transport"),
        format!("mx.example.net smtp:[127.0.0.1]:{}\n", b.smtp_port),
    )
    .unwrap();
    let own = format!(
        "myhostname = a.test\nmydomain = test\nmydestination = $myhostname, localhost.$mydomain, localhost\nmynetworks = 127.0.0.1/32\nlocal_recipient_maps = proxy:unix:passwd.byname\nvirtual_mailbox_domains =\nsmtpd_sasl_type = dovecot\nsmtpd_sasl_path = {}\n",
        dovecot.socket().display()
    );
    let documented_main = read("postfix/main.cf.routing-snippet").replace(
        "transport_maps = socketmap:",
        &format!(
            "transport_maps = texthash:{}/transport, socketmap:",
            transport.path().display()
        ),
    );
    // Over plain text here: the throwaway instance has no certificate.
    let submission = free_port();
    let documented_master = support::postfix::master_cf_for_test(
        &read("postfix/master.cf.routing-snippet").replace(
            "smtpd_tls_security_level=encrypt",
            "smtpd_tls_security_level=none",
        ),
        submission,
    );
    let legacy_main = format!(
        "{documented_main}virtual_alias_maps = socketmap:inet:127.0.0.1:{maps}:atsms_alias\n"
    );
    let message = |to: &str| message(to, "relay attempt");
    let outside = ["--local-interface", "127.0.0.2"];
    for (setup, main_cf, master_cf) in [
        (
            "as documented",
            &documented_main,
            documented_master.as_str(),
        ),
        ("aliasing in main.cf", &legacy_main, ""),
    ] {
        let a = Postfix::start_with_services(&[], &format!("{own}{main_cf}"), master_cf);
        for to in did_forms(&did, "mx.example.net") {
            let (transcript, ok) = a.swaks_with("x@outside.example", &to, &message(&to), &outside);
            println!(
                "{setup}: RCPT TO:<{to}> from 127.0.0.2:\n{}",
                transcript
                    .lines()
                    .filter(|l| l.contains("RCPT") || l.starts_with("<**"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            assert!(!ok, "{setup}: {to} accepted from outside:\n{transcript}");
            let refusal = transcript
                .lines()
                .find(|l| l.starts_with("<** 5"))
                .unwrap_or_else(|| panic!("{setup}: {to} not refused at RCPT:\n{transcript}"));
            let local = to.ends_with("@localhost")
                || to.ends_with("@LOCALHOST")
                || to.ends_with("@a.test")
                || to.ends_with("@localhost.test")
                || to.ends_with("@[127.0.0.1]");
            if !local || to.contains('!') {
                assert!(
                    refusal.contains("554 5.7.1") && refusal.contains("Relay access denied"),
                    "{setup}: {to}: {refusal}"
                );
            }
        }
        let log = a.maillog();
        assert!(
            !log.contains("relay=127.0.0.1["),
            "{setup}: A relayed:\n{log}"
        );
    }
    // (One connection at start is the test's own wait for its banner.)
    assert!(
        !b.maillog().contains("from=<"),
        "the victim's MX received mail:\n{}",
        b.maillog()
    );
    assert!(
        std::fs::read_dir(b.new_dir("a"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)
    );

    // The documented set-up still routes what its users submit.
    let a =
        Postfix::start_with_services(&[], &format!("{own}{documented_main}"), &documented_master);
    let to = format!("{}@anything.example", mailbox(&did));
    let (transcript, ok) = support::swaks(
        a.root(),
        submission,
        "alice@a.test",
        &to,
        &message(&to),
        &[
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice",
            "--auth-password",
            "alice-secret",
        ],
    );
    assert!(ok, "{transcript}");
    let delivered = b.wait_for_mail("a", 1);
    assert!(String::from_utf8_lossy(&delivered[0]).contains("Subject: relay attempt"));
}
