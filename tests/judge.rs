//! The one judge decides every effect of a message, and every transport carries out the
//! same: a hold asked for by any rule, a dry run that writes our field and removes forged
//! ones everywhere, a message counted once towards its sender's rate, one inbox rule per
//! transaction in Exim as in the milter.

use atsms_testkit as support;

use std::io::{Read, Write};

use atsms_milter::format::crypto::{Alg, SigningKey};
use indymilter_test::{EomAction, Status};
use support::daemon::Daemon;
use support::ids::plc_did;
use support::milter::send_from;
use support::plc::Plc;
use support::postfix::free_port;
use support::signing::signed_message;

use atsms_milter::infra::clock::unix_now as now;

/// A sender with a published key.
fn sender(plc: &Plc, n: usize) -> (String, SigningKey) {
    let did = plc_did(n);
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    plc.set(&did, &key, None);
    (did, key)
}

fn message(sender: &(String, SigningKey)) -> Vec<u8> {
    signed_message(&sender.1, &format!("{}#atproto", sender.0), now())
}

fn milter_addr(port: u16) -> std::net::SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

fn inserted(actions: &[EomAction]) -> String {
    support::milter::inserted_field(actions)
}

/// One LMTP transaction to `port` for `rcpt`; the per-recipient reply.
fn lmtp(port: u16, rcpt: &str, message: &[u8]) -> String {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(
            format!("LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes(),
        )
        .unwrap();
    stream
        .write_all(&support::lmtp::dot_stuffed(message))
        .unwrap();
    stream.write_all(b"QUIT\r\n").unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    // The reply after DATA's 354 is the recipient's.
    out.lines()
        .skip_while(|l| !l.starts_with("354 "))
        .nth(1)
        .unwrap_or_else(|| panic!("{out}"))
        .to_string()
}

/// A hold asked for by a reputation rule or an inbox rule is carried out by the milter —
/// it asks the MTA for the hold queue whenever anything may ask for it — with the rule's
/// own reason, not "AT-SMS pass".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_asked_for_by_any_rule_is_carried_out_with_its_reason() {
    let plc = Plc::start();
    let (denied, clean) = (sender(&plc, 1), sender(&plc, 2));
    let dir = tempfile::tempdir().unwrap();
    let deny = dir.path().join("deny");
    std::fs::write(&deny, format!("{}\n", denied.0)).unwrap();
    let port = free_port();
    let _daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n[reputation]\ndeny = \"{}\"\non_denied = \"quarantine\"\n[[inbox.rule]]\nrecipients = [\"held@mx.example.net\"]\nrequire = \"aligned\"\naction = \"quarantine\"\n",
            plc.url(),
            deny.display()
        ),
        port,
    );
    let (actions, status) = send_from(milter_addr(port), "192.0.2.25", "", &message(&denied)).await;
    assert_eq!(status, Status::Continue, "{actions:?}");
    let reason = actions
        .iter()
        .find_map(|a| match a {
            EomAction::Quarantine { reason } => Some(reason.to_str().unwrap().to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("not held: {actions:?}"));
    assert_eq!(reason, "AT-SMS sender is on this host's deny list");
    assert!(inserted(&actions).contains("policy.atsms-denied=yes"));
    // The inbox rule: to a recipient whose rule the (unaligned) message does not meet.
    let mut conn = support::milter::open_client(("127.0.0.1", port)).await;
    conn.mail(["<a@b.example>"]).await.unwrap();
    conn.rcpt(["<held@mx.example.net>"]).await.unwrap();
    let (fields, body) = support::milter::split_message(&message(&clean));
    for (name, value) in fields {
        conn.header(name.as_str(), value.as_str()).await.unwrap();
    }
    conn.body(body).await.unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert!(
        actions
            .actions
            .iter()
            .any(|a| matches!(a, EomAction::Quarantine { reason }
            if reason.to_str().unwrap() == "this inbox takes verified, aligned senders only")),
        "{actions:?}"
    );
}

/// A dry run means one thing on every path: the action is logged and not carried out; our
/// field is written; forged fields claiming our authserv-id are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_our_field_and_removes_forged_ones_on_every_path() {
    let plc = Plc::start();
    let forger = sender(&plc, 3);
    let mut forged = message(&forger);
    let at = forged.windows(5).position(|w| w == b"hello").unwrap();
    forged[at] = b'j';
    let forged = [
        b"Authentication-Results: mx.test; atsms=pass header.d=\"did:plc:claimed\"\r\n".as_slice(),
        &forged,
    ]
    .concat();
    let root = support::public_tempdir();
    let (milter, lmtp_port, exim) = (free_port(), free_port(), free_port());
    let daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{milter}\"\n[lmtp]\nlisten = \"inet:127.0.0.1:{lmtp_port}\"\nmaildir = \"{}/%d/%n/Maildir\"\n[exim]\nlisten = \"inet:127.0.0.1:{exim}\"\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\non_fail = \"reject\"\ndry_run = true\n",
            root.path().display(),
            plc.url()
        ),
        lmtp_port,
    );
    // The milter.
    let (actions, status) = send_from(milter_addr(milter), "192.0.2.25", "", &forged).await;
    assert_eq!(status, Status::Continue, "accepted: {actions:?}");
    assert!(inserted(&actions).contains("atsms=fail"), "{actions:?}");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, EomAction::DeleteHeader { name, .. }
            if name.to_str().unwrap() == "Authentication-Results")),
        "the forged field is removed: {actions:?}"
    );
    // LMTP.
    let reply = lmtp(lmtp_port, "bob@mx.example.net", &forged);
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let folder = root.path().join("mx.example.net/bob/Maildir");
    let stored =
        String::from_utf8(support::lmtp::RunningLmtp::new_files(&folder).remove(0)).unwrap();
    assert!(
        stored.contains("Authentication-Results: mx.test;\n\tatsms=fail"),
        "{stored}"
    );
    assert!(!stored.contains("did:plc:claimed"), "{stored}");
    // The Exim scanner.
    let mut mbox = b"From a@b.example Sat Dec  5 00:00:00 2026\n".to_vec();
    mbox.extend(forged.iter().filter(|b| **b != b'\r'));
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", exim)).unwrap();
    stream
        .write_all(format!("CHECK RSPAMC/1.3\r\nContent-length: {}\r\nQueue-Id: 1xDry-000000-00\r\nFrom: <a@b.example>\r\nRcpt: <bob@mx.example.net>\r\nIP: 192.0.2.25\r\n\r\n", mbox.len()).as_bytes())
        .unwrap();
    stream.write_all(&mbox).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("Action: accept"), "{answer}");
    assert!(
        answer.contains("Authentication-Results: mx.test;"),
        "{answer}"
    );
    assert!(answer.contains("atsms=fail"), "{answer}");
    // Logged, each time, as what would have been done.
    let log = daemon.log_when(|log| log.matches("[dry run: action not carried out]").count() >= 3);
    assert_eq!(log.matches("action=reject").count(), 3, "{log}");
    assert_eq!(log.matches("[dry run: action not carried out]").count(), 3);
}

/// A message counts once towards its sender's rate limit, when it is accepted: not once per
/// transport (the milter and LMTP in one process), nor once per retry after a deferral.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_counts_once_towards_its_sender_s_rate() {
    let plc = Plc::start();
    let alice = sender(&plc, 4);
    let root = support::public_tempdir();
    let (milter, lmtp_port) = (free_port(), free_port());
    let _daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{milter}\"\n[lmtp]\nlisten = \"inet:127.0.0.1:{lmtp_port}\"\nmaildir = \"{}/%d/%n/Maildir\"\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n[reputation]\nrate_limit = 2\n",
            root.path().display(),
            plc.url()
        ),
        lmtp_port,
    );
    // Two messages, each judged by the milter at SMTP time and by LMTP at delivery.
    for n in 0..2 {
        let m = message(&alice);
        let (actions, status) = send_from(milter_addr(milter), "192.0.2.25", "", &m).await;
        assert_eq!(
            status,
            Status::Continue,
            "message {n} at the milter: {actions:?}"
        );
        let reply = lmtp(lmtp_port, "bob@mx.example.net", &m);
        assert!(
            reply.starts_with("250 2.0.0"),
            "message {n} at LMTP: {reply}"
        );
    }
    // The third is over the limit, and so is each retry of it: deferred, never counted.
    let third = message(&alice);
    for _ in 0..3 {
        let (_, status) = send_from(milter_addr(milter), "192.0.2.25", "", &third).await;
        assert!(
            matches!(&status, Status::Tempfail { message: Some(m) }
                if m.to_str().unwrap().contains("too much mail from this AT-SMS sender")),
            "{status:?}"
        );
    }
}

/// Exim's RCPT ACL keeps one inbox rule per transaction, as the milter does: a recipient under
/// another rule than the first accepted recipient's is deferred `452 4.5.3`.
#[test]
fn exim_keeps_one_inbox_rule_per_transaction() {
    let maps = free_port();
    let _daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{maps}\"\n[inbox]\nhosts = [\"mx.example.net\"]\n[[inbox.rule]]\nrecipients = [\"strict@mx.example.net\"]\nrequire = \"aligned\"\n",
            free_port()
        ),
        maps,
    );
    let contrib = |name: &str| {
        support::contrib(&format!("exim/{name}"))
            .display()
            .to_string()
    };
    let exim = support::exim::Exim::start_with(|root, _| {
        let maildir = root.join("maildir");
        std::fs::create_dir_all(&maildir).unwrap();
        std::os::unix::fs::chown(&maildir, Some(65534), Some(65534)).unwrap();
        format!(
            "ATSMS_SOCKETMAP = inet:127.0.0.1:{maps}
.include {macros}
domainlist local_domains = mx.example.net
acl_smtp_rcpt = acl_check_rcpt
tls_advertise_hosts =

begin acl
acl_check_rcpt:
.include {acl}
  accept  domains = +local_domains
  deny    message = relay not permitted

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
",
            macros = contrib("macros.conf"),
            acl = contrib("acl_rcpt.conf"),
            maildir = maildir.display()
        )
    });
    let body = b"From: a@b.example\r\nSubject: two rules\r\n\r\nhello\r\n";
    let (transcript, _) = exim.swaks_with(
        "a@b.example",
        "strict@mx.example.net,other@mx.example.net,strict+x@mx.example.net",
        body,
        &[],
    );
    let rcpt_replies: Vec<&str> = transcript
        .lines()
        .filter(|l| l.starts_with("<-") || l.starts_with("<**"))
        .collect();
    println!("{transcript}");
    assert!(
        transcript.contains("452 4.5.3 recipient under another inbox rule"),
        "{transcript}"
    );
    assert_eq!(
        rcpt_replies
            .iter()
            .filter(|l| l.contains("452 4.5.3"))
            .count(),
        1,
        "only the recipient under another rule: {rcpt_replies:?}"
    );
    exim.stop();
}
