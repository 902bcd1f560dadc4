//! Routing and consent for Exim with the real Exim 4.96 and the contrib files as they are
//! (`contrib/exim/macros.conf`, `routers.conf`, `acl_rcpt.conf`): ${readsocket} against the
//! daemon's lookup tables.

use atsms_testkit as support;

use std::path::Path;
use std::time::{Duration, Instant};

use atsms_milter::format::crypto::{Alg, SigningKey};
use support::daemon::Daemon;
use support::exim::Exim;
use support::ids::plc_did;
use support::plc::{Plc, mailbox};
use support::postfix::free_port;

const EXIM_DOMAIN: &str = "mx.exim.test";

fn contrib(name: &str) -> String {
    support::contrib(&format!("exim/{name}"))
        .display()
        .to_string()
}

fn message(to: &str) -> Vec<u8> {
    format!("From: <sender@exim.test>\r\nTo: <{to}>\r\nSubject: routed by Exim\r\n\r\nhello\r\n")
        .into_bytes()
}

fn wait_for_file(dir: &Path, exim: &Exim) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(entry) = std::fs::read_dir(dir).ok().and_then(|mut d| d.next()) {
            return std::fs::read_to_string(entry.unwrap().path()).unwrap();
        }
        if Instant::now() > deadline {
            panic!(
                "nothing in {}:\n{}\n{}\n{}",
                dir.display(),
                exim.log("main"),
                exim.log("panic"),
                exim.run_queue()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Exim for `EXIM_DOMAIN` with the contrib ACL and routers, its socketmap at `maps` and
/// delivery over LMTP to `lmtp`.
fn exim_config(maps: u16, lmtp: u16) -> String {
    format!(
        "domainlist local_domains = {EXIM_DOMAIN}
ATSMS_SOCKETMAP = inet:127.0.0.1:{maps}
ATSMS_ROUTE_SELF = send
.include {macros}
acl_smtp_rcpt = acl_check_rcpt
tls_advertise_hosts =

begin acl
acl_check_rcpt:
.include {acl}
  # Exim's default: no '@', '%', '!', '/' or '|' in local parts (the DID statements above
  # come first).
  deny    local_parts = ^.*[@%!/|]
  accept  domains = +local_domains
  accept  hosts = 127.0.0.1
  deny    message = relay not permitted

begin routers
.include {routers}
local:
  driver = accept
  domains = +local_domains
  transport = atsms_lmtp

begin transports
# The DID's smtp:// host is B's LMTP listener in this test.
remote_smtp:
  driver = smtp
  protocol = lmtp
  port = 25
  allow_localhost
  message_linelength_limit = 1000000000
atsms_lmtp:
  driver = smtp
  protocol = lmtp
  hosts = 127.0.0.1
  port = {lmtp}
  hosts_override
  allow_localhost
  message_linelength_limit = 1000000000

begin retry
* * F,2h,1m
",
        macros = contrib("macros.conf"),
        acl = contrib("acl_rcpt.conf"),
        routers = contrib("routers.conf"),
    )
}

/// What Exim's routers make of DID mailboxes whose documents name no host of ours.
fn addresses_routed_nowhere_else(exim: &Exim, refused: &str, pinned: &str, listed: &str) {
    // A mail host the address policy refuses: the address fails, never routed by MX.
    let routed = exim.route_test(&format!("{}@nowhere.example", mailbox(refused)));
    assert!(
        routed.contains("is undeliverable")
            && routed.contains("refused by this site's address policy"),
        "{routed}"
    );
    // A mailto: address at another domain: to the address its mail exchange was vetted at.
    let routed = exim.route_test(&format!("{}@anywhere.example", mailbox(pinned)));
    assert!(
        routed.contains("admin@public.example")
            && routed.contains("router = atsms_pinned")
            && routed.contains("8.8.8.8"),
        "{routed}"
    );
    // A DID mailbox at a domain that is not an alias domain is not aliased.
    let routed = exim.route_test(&format!("{}@elsewhere.example", mailbox(pinned)));
    assert!(!routed.contains("public.example"), "{routed}");
    // A mailto: value that is not one plain address routes nowhere (no pipe, no list).
    let routed = exim.route_test(&format!("{}@anywhere.example", mailbox(listed)));
    assert!(
        routed.contains("Unrouteable address") && !routed.contains("/bin/sh"),
        "{routed}"
    );
}

#[test]
fn exim_routes_by_did_document_and_checks_consent_at_rcpt() {
    let plc = Plc::start();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let (here, remote, elsewhere, mailto) = (plc_did(1), plc_did(2), plc_did(3), plc_did(4));
    let (refused, listed, pinned) = (plc_did(5), plc_did(6), plc_did(7));
    // DNS for the DIDs' hosts: nowhere.example does not exist (NXDOMAIN); public.example's
    // mail exchange is at 8.8.8.8.
    use support::dns::Answer;
    let dns = support::dns::DnsServer::with_records(&[
        (
            "public.example",
            vec![Answer::Mx(10, "mx.public.example".into())],
        ),
        (
            "mx.public.example",
            vec![Answer::A(std::net::Ipv4Addr::new(8, 8, 8, 8))],
        ),
    ]);

    // B: another host keeping DID mailboxes (its LMTP is the "remote host" in this test).
    let b_root = support::public_tempdir();
    let b_lmtp = free_port();
    let _b = Daemon::start(
        &format!(
            "[lmtp]\nlisten = \"inet:127.0.0.1:{b_lmtp}\"\nmaildir = \"{}/%d/%n/Maildir\"\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n[inbox]\nhosts = [\"localhost\"]\n",
            b_root.path().display(),
            plc.url()
        ),
        b_lmtp,
    );
    plc.set(&here, &key, Some(&format!("smtp://{EXIM_DOMAIN}")));
    plc.set(&remote, &key, Some(&format!("smtp://localhost:{b_lmtp}")));
    plc.set(&elsewhere, &key, Some("smtp://mx.other.example"));
    plc.set(&mailto, &key, Some(&format!("mailto:bob@{EXIM_DOMAIN}")));
    plc.set(&refused, &key, Some("smtp://nowhere.example"));
    plc.set(&pinned, &key, Some("mailto:admin@public.example"));
    plc.set(
        &listed,
        &key,
        Some(&format!("mailto:bob@{EXIM_DOMAIN},|/bin/sh")),
    );

    // Exim's own daemon: the lookup tables and LMTP delivery for its domain.
    let root = support::public_tempdir();
    let (maps, lmtp) = (free_port(), free_port());
    let mut daemon = Daemon::start(
        &format!(
            "[lmtp]\nlisten = \"inet:127.0.0.1:{lmtp}\"\nmaildir = \"{}/%d/%n/Maildir\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{maps}\"\n[resolver]\nplc_urls = [\"{}\"]\ndns_servers = [\"{}\"]\nallow_private_addresses = true\n[inbox]\nhosts = [\"{EXIM_DOMAIN}\"]\n[routing]\nalias_domains = [\"anywhere.example\"]\n",
            root.path().display(),
            plc.url(),
            dns.server_arg()
        ),
        lmtp,
    );
    let exim = Exim::start_with(|_, _| exim_config(maps, lmtp));

    // To a DID whose document names another host: routed straight there.
    let to = format!("{}@anywhere.example", mailbox(&remote));
    let (transcript, ok) = exim.swaks("sender@exim.test", &to, &message(&to));
    assert!(ok, "{transcript}");
    let stored = wait_for_file(
        &b_root
            .path()
            .join("localhost")
            .join(mailbox(&remote))
            .join("Maildir/new"),
        &exim,
    );
    assert!(
        stored.contains(&format!("Delivered-To: {}@localhost", mailbox(&remote))),
        "{stored}"
    );

    // To a DID naming this host, in the AT-SMS client spelling: consent, then LMTP.
    let to = format!("{}@{EXIM_DOMAIN}", here.replace(':', "!"));
    let (transcript, ok) = exim.swaks("sender@exim.test", &to, &message(&to));
    assert!(ok, "{transcript}");
    wait_for_file(
        &root
            .path()
            .join(EXIM_DOMAIN)
            .join(mailbox(&here))
            .join("Maildir/new"),
        &exim,
    );

    // To a DID whose document names another host, at this host: refused at RCPT.
    let to = format!("{}@{EXIM_DOMAIN}", mailbox(&elsewhere));
    let (transcript, ok) = exim.swaks("sender@exim.test", &to, &message(&to));
    assert!(
        !ok && transcript.contains("550 5.1.1 no mailbox here"),
        "{transcript}"
    );

    // A mailto: endpoint: redirected to that address.
    let to = format!("{}@anywhere.example", mailbox(&mailto));
    let (transcript, ok) = exim.swaks("sender@exim.test", &to, &message(&to));
    assert!(ok, "{transcript}");
    wait_for_file(
        &root.path().join(EXIM_DOMAIN).join("bob/Maildir/new"),
        &exim,
    );

    // A detail does not hide whose mailbox it is: consent is the folded mailbox's.
    let to = format!("{}+news@{EXIM_DOMAIN}", mailbox(&here));
    let (transcript, ok) = exim.swaks("sender@exim.test", &to, &message(&to));
    assert!(ok, "{transcript}");
    let to = format!(
        "{}+x@{EXIM_DOMAIN}",
        elsewhere.replace(':', "!").to_uppercase()
    );
    let (transcript, ok) = exim.swaks("sender@exim.test", &to, &message(&to));
    assert!(
        !ok && transcript.contains("550 5.1.1 no mailbox here"),
        "{transcript}"
    );

    addresses_routed_nowhere_else(&exim, &refused, &pinned, &listed);

    // The daemon gone: RCPT to a DID mailbox here is deferred, never accepted blind.
    daemon.stop();
    let to = format!("{}@{EXIM_DOMAIN}", mailbox(&here));
    let (transcript, ok) = exim.swaks("sender@exim.test", &to, &message(&to));
    assert!(!ok && transcript.contains("451 4.4.3"), "{transcript}");
    exim.stop();
}
