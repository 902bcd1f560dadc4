//! Mail routed by DID documents between two real Postfix instances: A, the sender's outbound
//! MTA (`virtual_alias_maps` and `transport_maps` on its own daemon), and B, the DID's mail
//! host (`virtual_mailbox_maps` on its own daemon for consent, delivery over LMTP into
//! Maildirs). The DIDs' documents name `localhost` with B's port.

use atsms_testkit as support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use atsms_milter::format::crypto::{Alg, SigningKey};
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
            "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{a_maps}\"\n\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n\n[cache]\nerror = 1\n\n[inbox]\nhosts = [\"a.test\"]\n[routing]\nalias_domains = [\"anything.example\"]\n",
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

/// The domain A's users write DID mailboxes at (`routing.alias_domains`): one A does not keep.
const ALIASED: &str = "did.example";

/// Every spelling of a DID mailbox an outside client might try: at the domains A keeps (its
/// name, `$mydomain`, `localhost`, a virtual domain), in every case and form, at the alias
/// domain and at the victim's.
fn did_forms(did: &str, victim_domain: &str) -> Vec<String> {
    let (dotted, bang) = (mailbox(did), did.replace(':', "!"));
    vec![
        format!("{dotted}@localhost"),
        format!("{}@LOCALHOST", dotted.to_uppercase()),
        format!("{dotted}+x@localhost"),
        format!("{bang}@localhost"),
        format!("{dotted}@[127.0.0.1]"),
        format!("{dotted}@localhost.a.test"),
        format!("{dotted}@mail.a.test"),
        format!("{}@MAIL.A.TEST.", dotted.to_uppercase()),
        format!("\"{dotted}\"@mail.a.test"),
        format!("{dotted}@a.test"),
        format!("{dotted}@mx.a.test"),
        format!("{dotted}@other-virtual.test"),
        format!("{dotted}@{ALIASED}"),
        format!("{}@{}.", dotted.to_uppercase(), ALIASED.to_uppercase()),
        format!("{bang}@{ALIASED}"),
        format!("{dotted}@{victim_domain}"),
        format!("{bang}@{victim_domain}"),
        format!("{dotted}@anything.example"),
    ]
}

/// Never an open relay, in any set-up the docs show or once showed. A DID names an address
/// at the victim's MX (B) as its mail route; A's name (`mail.a.test`) is neither the name
/// documents use for it (`inbox.hosts`) nor the kernel's, as on most hosts. An
/// unauthenticated client outside `mynetworks` tries every DID mailbox form through A's
/// port 25 with the aliasing map in main.cf (contrib/postfix/main.cf.routing-snippet), on
/// the submission service only (master.cf.routing-snippet), and in main.cf with port 25 not
/// rewriting (`receive_override_options = no_address_mappings`, an alternative the docs once
/// gave). Each recipient is refused at RCPT — nothing is accepted, so nothing can bounce back
/// to the forged sender (backscatter) — and B never sees a connection. Authenticated users
/// are routed by the same DID (the set-ups work).
#[test]
fn an_outside_client_cannot_relay_through_a_did_mailbox() {
    let plc = Plc::start();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let did = plc_did(30);
    // B: the victim's mail host; a@mx.example.net is a real mailbox there.
    let b = Postfix::start(&["a"], "");
    plc.set(&did, &key, Some("mailto:a@mx.example.net"));
    let dns = support::dns::DnsServer::with_records(&[(
        "mx.example.net",
        vec![support::dns::Answer::A(std::net::Ipv4Addr::LOCALHOST)],
    )]);
    let dovecot = support::dovecot::DovecotAuth::start(&[("alice", "alice-secret")]);
    let maps = free_port();
    let _daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{maps}\"\n\n[resolver]\nplc_urls = [\"{}\"]\ndns_servers = [\"{}\"]\nallow_private_addresses = true\n\n[inbox]\nhosts = [\"mx.a.test\"]\n[routing]\nalias_domains = [\"{ALIASED}\"]\n",
            free_port(),
            plc.url(),
            dns.server_arg()
        ),
        maps,
    );
    let with_port =
        |text: String| text.replace("inet:127.0.0.1:8896", &format!("inet:127.0.0.1:{maps}"));
    let read = |file: &str| with_port(std::fs::read_to_string(support::contrib(file)).unwrap());
    // A's own settings, as a Debian host has them: it keeps its name, $mydomain, localhost
    // and a virtual alias domain; mail for mx.example.net goes to B; SASL through Dovecot.
    let dir = support::public_tempdir();
    std::fs::write(
        dir.path().join("transport"),
        format!("mx.example.net smtp:[127.0.0.1]:{}\n", b.smtp_port),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("virtual"),
        "postmaster@other-virtual.test root\n",
    )
    .unwrap();
    let own_virtual = format!("texthash:{}/virtual", dir.path().display());
    let own = format!(
        "myhostname = mail.a.test\nmydomain = a.test\nmydestination = $myhostname, localhost.$mydomain, localhost, $mydomain\nvirtual_alias_domains = other-virtual.test\nmynetworks = 127.0.0.1/32\nlocal_recipient_maps = proxy:unix:passwd.byname\nvirtual_mailbox_domains =\nsmtpd_sasl_type = dovecot\nsmtpd_sasl_path = {}\nsmtpd_sasl_auth_enable = yes\n",
        dovecot.socket().display()
    );
    let routing_main = read("postfix/main.cf.routing-snippet")
        .replace(
            "transport_maps = socketmap:",
            &format!(
                "transport_maps = texthash:{}/transport, socketmap:",
                dir.path().display()
            ),
        )
        .replace(
            "virtual_alias_maps = socketmap:",
            &format!("virtual_alias_maps = {own_virtual}, socketmap:"),
        );
    // The submission-only set-up: main.cf keeps its own aliases, master.cf the DID ones.
    let submission_main = routing_main.replace(
        &format!("virtual_alias_maps = {own_virtual}, socketmap:inet:127.0.0.1:{maps}:atsms_alias"),
        &format!("virtual_alias_maps = {own_virtual}"),
    );
    assert_ne!(submission_main, routing_main);
    // Over plain text here: the throwaway instance has no certificate.
    let submission = free_port();
    let submission_master = support::postfix::master_cf_for_test(
        &read("postfix/master.cf.routing-snippet").replace(
            "smtpd_tls_security_level=encrypt",
            "smtpd_tls_security_level=none",
        ),
        submission,
    );
    let no_mappings = format!("{routing_main}receive_override_options = no_address_mappings\n");
    let message = |to: &str| message(to, "relay attempt");
    let outside = ["--local-interface", "127.0.0.2"];
    let alice = [
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "alice-secret",
    ];
    let routed = format!("{}@{ALIASED}", mailbox(&did));
    let mut delivered = 0;
    for (setup, main_cf, master_cf) in [
        ("aliasing in main.cf", &routing_main, ""),
        (
            "aliasing on submission only",
            &submission_main,
            submission_master.as_str(),
        ),
        ("port 25 not rewriting", &no_mappings, ""),
    ] {
        let a = Postfix::start_with_services(&[], &format!("{own}{main_cf}"), master_cf);
        for to in did_forms(&did, "mx.example.net") {
            let (transcript, ok) = a.swaks_with("x@outside.example", &to, &message(&to), &outside);
            let refusal = transcript
                .lines()
                .find(|l| l.starts_with("<** 5"))
                .unwrap_or_else(|| panic!("{setup}: {to} not refused at RCPT:\n{transcript}"));
            println!("{setup}: RCPT TO:<{to}> from 127.0.0.2: {refusal}");
            assert!(!ok, "{setup}: {to} accepted from outside:\n{transcript}");
            assert!(
                !transcript.contains("<~  250 2.1.5") && !transcript.contains("<-  250 2.1.5"),
                "{setup}: {to}: a recipient was accepted:\n{transcript}"
            );
        }
        // Nothing was accepted: no delivery, no bounce to a forged sender, an empty queue.
        let log = a.maillog();
        assert!(
            !log.contains("status="),
            "{setup}: A delivered or bounced:\n{log}"
        );
        // An authenticated user is routed by the same DID: on submission in that set-up,
        // on port 25 in the others (where main.cf's cleanup rewrites).
        let (port, rewrites) = match setup {
            "aliasing on submission only" => (submission, true),
            "port 25 not rewriting" => (a.smtp_port, false),
            _ => (a.smtp_port, true),
        };
        let (transcript, ok) = support::swaks(
            a.root(),
            port,
            "alice@a.test",
            &routed,
            &message(&routed),
            &alice,
        );
        assert!(ok, "{setup}: {transcript}");
        if rewrites {
            delivered += 1;
            let mail = b.wait_for_mail("a", delivered);
            assert!(
                String::from_utf8_lossy(&mail[delivered - 1]).contains("Subject: relay attempt")
            );
        }
    }
    // (One connection at start is the test's own wait for its banner.) What B received is
    // the authenticated users' mail only.
    assert_eq!(
        b.maillog().matches("from=<alice@a.test>").count(),
        delivered,
        "{}",
        b.maillog()
    );
    assert!(
        !b.maillog().contains("from=<x@outside.example>"),
        "{}",
        b.maillog()
    );
}

/// A `mailto:` target is vetted by its domain's mail exchange and pinned: mail a user sends
/// to a DID whose document names `admin@internal.corp.example` (its MX at 10.0.0.5) is never
/// rewritten towards it, and mail to a DID naming a public address is handed to Postfix with
/// the address vetted, which Postfix connects to without a lookup of its own.
#[test]
fn postfix_delivers_a_mailto_target_to_the_address_vetted_or_not_at_all() {
    let plc = Plc::start();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let (internal, public) = (plc_did(31), plc_did(32));
    plc.set(&internal, &key, Some("mailto:admin@internal.corp.example"));
    plc.set(&public, &key, Some("mailto:admin@public.example"));
    use support::dns::Answer;
    let dns = support::dns::DnsServer::with_records(&[
        (
            "internal.corp.example",
            vec![Answer::Mx(10, "mx.internal.corp.example".into())],
        ),
        (
            "mx.internal.corp.example",
            vec![Answer::A(std::net::Ipv4Addr::new(10, 0, 0, 5))],
        ),
        (
            "public.example",
            vec![Answer::Mx(10, "mx.public.example".into())],
        ),
        (
            "mx.public.example",
            vec![Answer::A(std::net::Ipv4Addr::new(8, 8, 8, 8))],
        ),
    ]);
    let maps = free_port();
    let _daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{maps}\"\n\n[resolver]\nplc_urls = [\"{}\"]\ndns_servers = [\"{}\"]\n[routing]\nalias_domains = [\"{ALIASED}\"]\n",
            free_port(),
            plc.url(),
            dns.server_arg()
        ),
        maps,
    );
    let a = Postfix::start(
        &[],
        &format!(
            "myhostname = a.test\nvirtual_alias_maps = socketmap:inet:127.0.0.1:{maps}:atsms_alias\ntransport_maps = socketmap:inet:127.0.0.1:{maps}:atsms_transport\nsmtp_connect_timeout = 1s\nsmtp_host_lookup = native\n"
        ),
    );
    for did in [&internal, &public] {
        let to = format!("{}@{ALIASED}", mailbox(did));
        sendmail(&a, &to, &message(&to, "to a mailto target"));
    }
    // The public one: rewritten, and Postfix connects to the address vetted (there is no
    // network here, so the attempt fails and the mail waits in the queue).
    let line = wait_for_log(&a, "to=<admin@public.example>");
    assert!(
        line.contains(&format!("orig_to=<{}@{ALIASED}>", mailbox(&public)))
            && line.contains("8.8.8.8"),
        "{line}"
    );
    // The internal one: not rewritten; Postfix tries the alias domain itself, never the
    // internal address.
    let line = wait_for_log(&a, &format!("to=<{}@{ALIASED}>", mailbox(&internal)));
    assert!(!line.contains("internal"), "{line}");
    let log = a.maillog();
    assert!(
        !log.contains("10.0.0.5") && !log.contains("internal.corp"),
        "{log}"
    );
}

/// One netstring request on a socketmap connection, its answer's text.
fn socketmap_lookup(stream: &mut std::net::TcpStream, map: &str, key: &str) -> Option<String> {
    use std::io::{Read, Write};
    let request = format!("{map} {key}");
    stream
        .write_all(format!("{}:{request},", request.len()).as_bytes())
        .ok()?;
    let mut length = Vec::new();
    let mut byte = [0u8; 1];
    while stream.read(&mut byte).ok()? == 1 && byte[0] != b':' {
        length.push(byte[0]);
    }
    let length: usize = String::from_utf8(length).ok()?.parse().ok()?;
    let mut answer = vec![0u8; length + 1];
    stream.read_exact(&mut answer).ok()?;
    answer.pop();
    String::from_utf8(answer).ok()
}

/// Strangers asking about random DIDs as fast as they can: eight socketmap connections, two
/// HTTPS inbox clients, two SMTP clients naming ten random DID mailboxes a transaction.
struct Flood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// How many of each answer the strangers got.
    answers: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
}

impl Flood {
    fn start(maps: u16, http: u16, smtp: u16) -> Flood {
        use std::io::{BufRead, BufReader, Write};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicUsize::new(100_000));
        let answers: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
        let random = {
            let next = next.clone();
            move || plc_did(next.fetch_add(1, Ordering::Relaxed))
        };
        let count = {
            let answers = answers.clone();
            move |what: String| *answers.lock().unwrap().entry(what).or_default() += 1
        };
        let mut threads = Vec::new();
        for _ in 0..8 {
            let (stop, random, count) = (stop.clone(), random.clone(), count.clone());
            threads.push(std::thread::spawn(move || {
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", maps)).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{}@localhost", mailbox(&random()));
                    let Some(answer) = socketmap_lookup(&mut stream, "atsms_mailbox", &key) else {
                        break;
                    };
                    count(format!(
                        "socketmap {}",
                        answer.split(' ').next().unwrap_or("")
                    ));
                }
            }));
        }
        for _ in 0..2 {
            let (stop, random, count) = (stop.clone(), random.clone(), count.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut s = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
                    let _ = write!(
                        s,
                        "POST /inbox/{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
                        random()
                    );
                    let mut status = String::new();
                    let _ = BufReader::new(s).read_line(&mut status);
                    count(format!("inbox {}", status.split(' ').nth(1).unwrap_or("-")));
                }
            }));
        }
        for _ in 0..2 {
            let (stop, random, count) = (stop.clone(), random.clone(), count.clone());
            let port = smtp;
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let socket = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
                    let mut reader = BufReader::new(socket.try_clone().unwrap());
                    let mut writer = socket;
                    let mut line = String::new();
                    let mut say = |text: &str| {
                        let _ = write!(writer, "{text}\r\n");
                    };
                    let _ = reader.read_line(&mut line);
                    say("HELO flood.example");
                    say("MAIL FROM:<x@flood.example>");
                    for _ in 0..10 {
                        say(&format!("RCPT TO:<{}@localhost>", mailbox(&random())));
                    }
                    say("QUIT");
                    for l in reader.lines().map_while(Result::ok) {
                        if l.starts_with("550") || l.starts_with("450") || l.starts_with("451") {
                            count(format!("smtp {}", &l[..3]));
                        }
                    }
                }
            }));
        }
        Flood {
            stop,
            threads,
            answers,
        }
    }

    /// Stops the flood: what answers it got.
    fn stop(self) -> std::collections::BTreeMap<String, usize> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        self.answers.lock().unwrap().clone()
    }
}

/// Outsiders flood every way a DID lookup can be set off from outside — socketmap lookups
/// from eight connections (Postfix processes), POSTs to the HTTPS inbox, RCPTs through
/// Postfix from another client — each naming a random DID, which costs the directory a
/// request, far more than its budget for what is not mail (2 a second here). Mail to the
/// real DID mailboxes of this host is still accepted: their documents, past `cache.max_age`
/// by then, answer their consent while they are refreshed, and what lookups they need take
/// their client's turn (it once got `451 4.4.3 … budget spent`).
#[test]
fn real_did_mailboxes_take_mail_while_strangers_flood_lookups_of_random_dids() {
    let plc = Plc::start();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let real = [plc_did(50), plc_did(51)];
    let root = support::public_tempdir();
    let (lmtp, maps, http) = (free_port(), free_port(), free_port());
    let _daemon = Daemon::start(
        &format!(
            "[lmtp]\nlisten = \"inet:127.0.0.1:{lmtp}\"\nmaildir = \"{0}/%d/%n/Maildir\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{maps}\"\n[xrpc]\nlisten = \"inet:127.0.0.1:{http}\"\ninbox = true\n[resolver]\nplc_urls = [\"{1}\"]\nallow_private_addresses = true\nmax_requests_per_second = 4\nmail_share = 0.5\n[cache]\nfresh = 1\nmax_age = 2\n[inbox]\nhosts = [\"localhost\"]\nstore = \"{0}/inbox\"\n[policy]\nauthserv_id = \"b.test\"\n[store]\njti_file = \"{0}/jti\"\n",
            root.path().display(),
            plc.url()
        ),
        lmtp,
    );
    let b = Postfix::start(
        &[],
        &format!(
            "myhostname = b.test\nvirtual_mailbox_domains = localhost\nvirtual_mailbox_maps = socketmap:inet:127.0.0.1:{maps}:atsms_mailbox\nvirtual_transport = lmtp:inet:127.0.0.1:{lmtp}\nlmtp_line_length_limit = 0\nsmtpd_error_sleep_time = 0\nsmtpd_soft_error_limit = 1000\nsmtpd_hard_error_limit = 1000\n"
        ),
    );
    for did in &real {
        plc.set(
            did,
            &key,
            Some(&format!("smtp://localhost:{}", b.smtp_port)),
        );
    }
    // Each has taken mail here before the flood.
    let maildir = |did: &str| {
        root.path()
            .join("localhost")
            .join(mailbox(did))
            .join("Maildir/new")
    };
    for did in &real {
        let to = format!("{}@localhost", mailbox(did));
        let (transcript, ok) = b.swaks("alice@a.example", &to, &message(&to, "before"));
        assert!(ok, "{transcript}");
        b.wait_for_files(&maildir(did), 1);
    }
    std::thread::sleep(Duration::from_secs(3)); // past cache.max_age

    let flood = Flood::start(maps, http, b.smtp_port);
    // The flood has filled the others' schedule (2 lookups a second) many times over.
    let (flooding, asked_before) = (Instant::now(), plc.requests());
    std::thread::sleep(Duration::from_secs(3));
    let mut took = Vec::new();
    for did in &real {
        let to = format!("{}@localhost", mailbox(did));
        let started = Instant::now();
        let (transcript, ok) = b.swaks("alice@a.example", &to, &message(&to, "under a flood"));
        took.push(started.elapsed());
        assert!(ok, "{transcript}");
    }
    let answers = flood.stop();
    let (flooded, asked) = (flooding.elapsed(), plc.requests() - asked_before);
    println!("while the flood ran: {answers:?}; the real mail took {took:?}");
    for did in &real {
        let delivered = b.wait_for_files(&maildir(did), 2);
        assert!(
            delivered
                .iter()
                .any(|m| String::from_utf8_lossy(m).contains("Subject: under a flood"))
        );
    }
    // It was a flood: more was asked than the budget gives, and the directory was asked no
    // more than the budget allows (4 a second, mail's share included).
    assert!(
        answers.get("socketmap TEMP").copied().unwrap_or(0) >= 8,
        "{answers:?}"
    );
    assert!(
        asked as f64 <= 4.0 * flooded.as_secs_f64() + 2.0,
        "the directory asked {asked} times in {flooded:?}: {answers:?}"
    );
}
