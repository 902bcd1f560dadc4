//! Mail routed by DID documents: the three Postfix tables over the socketmap protocol (raw
//! netstrings and Postfix's own `postmap -q`), their guards, cold lookups, bad input, and
//! `atsms-milter route`.

use atsms_testkit as support;

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::infra::config::Config;
use support::daemon::Daemon;
use support::dns::{Answer, DnsServer};
use support::http::{HttpServer, Reply};
use support::ids::plc_did;
use support::plc::{Plc, mailbox};
use support::postfix::free_port;
use support::socketmap::{RunningSocketmap, netstring};

const US: &str = "mx.example.net";

/// The domain this site's users write DID mailboxes at (`routing.alias_domains`).
const ALIASED: &str = "anything.example";

/// DNS for the endpoints' hosts (one public, one private) and for `mailto:` domains.
fn dns() -> DnsServer {
    let mut zone = HashMap::new();
    zone.insert(
        "mx.other.example".into(),
        vec![Answer::A(Ipv4Addr::new(8, 8, 4, 4))],
    );
    zone.insert(
        "private.example".into(),
        vec![Answer::A(Ipv4Addr::new(10, 0, 0, 5))],
    );
    zone.insert(
        "example.org".into(),
        vec![Answer::Mx(10, "mx.example.org".into())],
    );
    zone.insert(
        "mx.example.org".into(),
        vec![Answer::A(Ipv4Addr::new(8, 8, 8, 8))],
    );
    DnsServer::start(zone)
}

fn config(plc: &str, dns: &DnsServer, extra: &str) -> Config {
    Config::from_toml(
        &format!(
            "[resolver]\nplc_urls = [\"{plc}\"]\ndns_servers = [\"{}\"]\ntimeout = 3\n\n[inbox]\nhosts = [\"{US}\"]\n[routing]\nalias_domains = [\"{ALIASED}\"]\n{extra}",
            dns.server_arg()
        ),
        "test",
    )
    .unwrap()
}

struct World {
    plc: Plc,
    dns: DnsServer,
    elsewhere: String,
    ours: String,
    mailto: String,
    silent: String,
    private: String,
    unknown: String,
}

fn world() -> World {
    let plc = Plc::start();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let w = World {
        elsewhere: plc_did(1),
        ours: plc_did(2),
        mailto: plc_did(3),
        silent: plc_did(4),
        private: plc_did(5),
        unknown: plc_did(6),
        dns: dns(),
        plc,
    };
    w.plc
        .set(&w.elsewhere, &key, Some("smtp://MX.Other.Example:2525"));
    w.plc.set(&w.ours, &key, Some(&format!("smtp://{US}")));
    w.plc.set(&w.mailto, &key, Some("mailto:alice@example.org"));
    w.plc.set(&w.silent, &key, None);
    w.plc.set(&w.private, &key, Some("smtp://private.example"));
    w
}

#[tokio::test]
async fn the_three_maps_answer_as_the_interfaces_say() {
    let w = world();
    let server = RunningSocketmap::start(&config(&w.plc.url(), &w.dns, "")).await;
    let mut c = server.client().await;
    let m = mailbox;
    let cases = [
        // atsms_alias: an alias domain → where the document says; a mailto: target's
        // domain's mail exchange vetted and pinned for atsms_transport.
        (
            "atsms_alias",
            format!("{}@anything.example", m(&w.elsewhere)),
            format!("OK {}@mx.other.example", m(&w.elsewhere)),
        ),
        (
            "atsms_alias",
            format!("{}@anything.example", m(&w.ours)),
            format!("OK {}@{US}", m(&w.ours)),
        ),
        (
            "atsms_alias",
            format!("{}@anything.example", m(&w.mailto)),
            "OK alice@example.org".into(),
        ),
        (
            "atsms_transport",
            "alice@example.org".into(),
            "OK smtp:[8.8.8.8]:25".into(),
        ),
        (
            "atsms_transport",
            "bob@example.org".into(),
            "NOTFOUND ".into(),
        ),
        // Only the alias domains: elsewhere the address is left to the MTA.
        (
            "atsms_alias",
            format!("{}@elsewhere.example", m(&w.elsewhere)),
            "NOTFOUND ".into(),
        ),
        (
            "atsms_alias",
            format!("{}@mx.other.example", m(&w.elsewhere)),
            "NOTFOUND ".into(),
        ),
        (
            "atsms_alias",
            format!("{}@{US}", m(&w.ours)),
            "NOTFOUND ".into(),
        ),
        (
            "atsms_alias",
            format!("{}@anything.example", m(&w.silent)),
            "NOTFOUND ".into(),
        ),
        (
            "atsms_alias",
            format!("{}@anything.example", m(&w.unknown)),
            "NOTFOUND ".into(),
        ),
        // `!` and `.` spellings, any case, are one mailbox.
        (
            "atsms_alias",
            format!(
                "{}@Anything.Example",
                w.elsewhere.replace(':', "!").to_uppercase()
            ),
            format!("OK {}@mx.other.example", m(&w.elsewhere)),
        ),
        // atsms_transport: the endpoint's host → smtp:[its vetted address]:port, no MX
        // lookup and no second lookup by Postfix.
        (
            "atsms_transport",
            format!("{}@mx.other.example", m(&w.elsewhere)),
            "OK smtp:[8.8.4.4]:2525".into(),
        ),
        (
            "atsms_transport",
            format!("{}@elsewhere.example", m(&w.elsewhere)),
            "NOTFOUND ".into(),
        ),
        // Guards: never ourselves (a loop), never a private address (SSRF by mail).
        (
            "atsms_transport",
            format!("{}@{US}", m(&w.ours)),
            "NOTFOUND ".into(),
        ),
        // A refused host is an error, never NOTFOUND: Postfix would route it by MX.
        (
            "atsms_transport",
            format!("{}@private.example", m(&w.private)),
            "OK error:5.7.1 DID mail host refused by this site's address policy".into(),
        ),
        // atsms_alias never rewrites towards a host the address policy refuses.
        (
            "atsms_alias",
            format!("{}@anything.example", m(&w.private)),
            "NOTFOUND ".into(),
        ),
        ("atsms_transport", "*".into(), "NOTFOUND ".into()),
        (
            "atsms_transport",
            "sender@example.org".into(),
            "NOTFOUND ".into(),
        ),
        // atsms_mailbox: consent, only for our host and a DID naming it.
        (
            "atsms_mailbox",
            format!("{}@{US}", m(&w.ours)),
            format!("OK {US}/{}/Maildir/", m(&w.ours)),
        ),
        (
            "atsms_mailbox",
            format!("{}@{US}", m(&w.elsewhere)),
            "NOTFOUND ".into(),
        ),
        (
            "atsms_mailbox",
            format!("{}@mx.other.example", m(&w.elsewhere)),
            "NOTFOUND ".into(),
        ),
        (
            "atsms_mailbox",
            format!("did.web.localhost%3a8080@{US}"),
            "NOTFOUND ".into(),
        ),
        ("atsms_other", "x@y".into(), "PERM unknown map".into()),
    ];
    for (map, key, want) in &cases {
        assert_eq!(&c.lookup(map, key).await, want, "{map} {key}");
    }
}

/// An open relay, closed: Postfix aliases after smtpd's relay check, so an outside client's
/// `RCPT TO:<did.plc.…@localhost>` (or at any domain Postfix keeps: its name, `$mydomain`,
/// a virtual domain) must never be rewritten to what a DID document names. Only the alias
/// domains are, which the MTA does not keep; and a `mailto:` value is one plain mailbox or
/// nothing.
#[tokio::test]
async fn the_alias_map_rewrites_only_its_alias_domains() {
    let w = world();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let (list, local_target, display) = (plc_did(20), plc_did(21), plc_did(23));
    w.plc.set(
        &list,
        &key,
        Some("mailto:a@victim.example,b@victim.example,c@victim.example"),
    );
    w.plc
        .set(&local_target, &key, Some("mailto:root@localhost"));
    w.plc
        .set(&display, &key, Some("mailto:Victim <a@victim.example>"));
    let server = RunningSocketmap::start(&config(&w.plc.url(), &w.dns, "")).await;
    let mut c = server.client().await;
    let m = mailbox(&w.mailto);
    let bang = w.mailto.replace(':', "!");
    let host = atsms_milter::infra::host::name();
    for key in [
        format!("{m}@localhost"),
        format!("{m}@LOCALHOST."),
        format!("{bang}@localhost"),
        format!("{m}@localhost.localdomain"),
        format!("{m}@localhost.example.net"),
        format!("{m}@mailhost"),
        format!("{m}@[127.0.0.1]"),
        format!("{m}@127.0.0.1"),
        format!("{m}@[ipv6:::1]"),
        format!("{m}@{US}"),
        format!("{m}@{}", US.to_uppercase()),
        format!("{m}@{host}"),
        // Domains an MTA keeps that no daemon can know of.
        format!("{m}@example.net"),
        format!("{m}@mail.example.net"),
        format!("{m}@other-virtual.example"),
        format!("{}@{}.", m.to_uppercase(), US.to_uppercase()),
        // Near the alias domain, not it.
        format!("{m}@sub.{ALIASED}"),
        format!("{m}@{ALIASED}.evil.example"),
    ] {
        assert_eq!(c.lookup("atsms_alias", &key).await, "NOTFOUND ", "{key}");
    }
    for did in [&list, &local_target, &display] {
        let key = format!("{}@anything.example", mailbox(did));
        assert_eq!(c.lookup("atsms_alias", &key).await, "NOTFOUND ", "{key}");
    }
    // The same DID at the alias domain, any case, with a trailing dot, is routed.
    for key in [
        format!("{m}@{ALIASED}"),
        format!("{}@{}.", m.to_uppercase(), ALIASED.to_uppercase()),
    ] {
        assert_eq!(
            c.lookup("atsms_alias", &key).await,
            "OK alice@example.org",
            "{key}"
        );
    }
}

/// A `mailto:` target is mail sent on a DID document's word: its domain's mail exchange must
/// be one the address policy lets mail go to (SSRF by mail: `admin@internal.corp.example`),
/// every MX host of it (the MTA may fall back to any), and the MTA is then given the address
/// vetted, which a second lookup cannot change (DNS rebinding).
#[tokio::test]
async fn a_mailto_target_is_vetted_by_its_mail_exchange_and_pinned() {
    let rebound = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = rebound.clone();
    let dns = DnsServer::start_with(Arc::new(move |name: &str| {
        let public = Answer::A(Ipv4Addr::new(8, 8, 8, 8));
        let private = Answer::A(Ipv4Addr::new(10, 0, 0, 5));
        Some(match name {
            "internal.corp.example" => vec![Answer::Mx(10, "mx.internal.corp.example".into())],
            "mx.internal.corp.example" => vec![private],
            "fallback.example" => vec![
                Answer::Mx(10, "mx1.fallback.example".into()),
                Answer::Mx(20, "mx2.fallback.example".into()),
            ],
            "mx1.fallback.example" => vec![public],
            "mx2.fallback.example" => vec![private],
            "nullmx.example" => vec![Answer::Mx(0, ".".into()), public],
            "implicit.example" => vec![Answer::A(Ipv4Addr::new(9, 9, 9, 9))],
            "rebinding.example" => vec![Answer::Mx(10, "mx.rebinding.example".into())],
            "mx.rebinding.example" if flag.load(std::sync::atomic::Ordering::SeqCst) => {
                vec![private]
            }
            "mx.rebinding.example" => vec![public],
            _ => return None,
        })
    }));
    let plc = Plc::start();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let cases = [
        ("admin@internal.corp.example", "NOTFOUND "),
        ("admin@fallback.example", "NOTFOUND "),
        ("admin@nullmx.example", "NOTFOUND "),
        ("admin@nowhere.example", "NOTFOUND "),
        ("admin@implicit.example", "OK admin@implicit.example"),
        ("admin@rebinding.example", "OK admin@rebinding.example"),
    ];
    let dids: Vec<String> = (0..cases.len()).map(|i| plc_did(40 + i)).collect();
    for (did, (target, _)) in dids.iter().zip(&cases) {
        plc.set(did, &key, Some(&format!("mailto:{target}")));
    }
    let server = RunningSocketmap::start(&config(&plc.url(), &dns, "")).await;
    let mut c = server.client().await;
    for (did, (target, want)) in dids.iter().zip(&cases) {
        let alias = format!("{}@{ALIASED}", mailbox(did));
        assert_eq!(&c.lookup("atsms_alias", &alias).await, want, "{target}");
        let pinned = c.lookup("atsms_transport", target).await;
        let want_pin = match *target {
            "admin@implicit.example" => "OK smtp:[9.9.9.9]:25",
            "admin@rebinding.example" => "OK smtp:[8.8.8.8]:25",
            _ => "NOTFOUND ",
        };
        assert_eq!(pinned, want_pin, "{target}");
    }
    // The exchange now resolves to a private address: what was handed out stays pinned to
    // the address vetted, and a new alias lookup refuses it.
    rebound.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        c.lookup("atsms_transport", "ADMIN@Rebinding.Example").await,
        "OK smtp:[8.8.8.8]:25"
    );
    drop(c);
    let server = RunningSocketmap::start(&config(
        &plc.url(),
        &dns,
        "[cache]\nfresh = 0\nmax_age = 0\n",
    ))
    .await;
    let mut c = server.client().await;
    let alias = format!("{}@{ALIASED}", mailbox(&dids[5]));
    assert_eq!(c.lookup("atsms_alias", &alias).await, "NOTFOUND ");
}

#[tokio::test]
async fn a_cold_lookup_answers_temp_in_time_and_costs_one_request() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let did = plc_did(7);
    let doc = {
        let mut d: serde_json::Value =
            serde_json::from_str(&support::signing::document(&did, &key, None)).unwrap();
        d["service"] = serde_json::json!([{"id": "#atsms_mail", "serviceEndpoint": "smtp://mx.other.example"}]);
        d.to_string()
    };
    let slow = HttpServer::start(Arc::new(move |_: &str| {
        Reply::Delayed(
            Duration::from_millis(1500),
            Box::new(Reply::json(200, doc.clone())),
        )
    }));
    let dns = dns();
    let server =
        RunningSocketmap::start(&config(&slow.url(), &dns, "[socketmap]\ntimeout = 1\n")).await;
    let key = format!("{}@{ALIASED}", mailbox(&did));
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(server.client().await);
    }
    let started = Instant::now();
    let answers =
        futures::future::join_all(clients.iter_mut().map(|c| c.lookup("atsms_alias", &key))).await;
    assert!(
        started.elapsed() < Duration::from_millis(1400),
        "{:?}",
        started.elapsed()
    );
    assert!(
        answers.iter().all(|a| a.starts_with("TEMP ")),
        "{answers:?}"
    );
    // The fetch went on and filled the cache.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut c = server.client().await;
    assert_eq!(
        c.lookup("atsms_alias", &key).await,
        format!("OK {}@mx.other.example", mailbox(&did))
    );
    assert_eq!(
        slow.request_count(),
        1,
        "one PLC request however many lookups"
    );
    // A directory that fails answers TEMP too.
    let down = HttpServer::start(Arc::new(|_: &str| Reply::json(503, "{}")));
    let server = RunningSocketmap::start(&config(&down.url(), &dns, "")).await;
    let mut c = server.client().await;
    assert!(
        c.lookup("atsms_transport", &key.replace(ALIASED, "mx.other.example"))
            .await
            .starts_with("TEMP ")
    );
}

#[tokio::test]
async fn bad_input_is_answered_or_closed_and_the_server_keeps_serving() {
    let w = world();
    let server = RunningSocketmap::start(&config(&w.plc.url(), &w.dns, "")).await;
    for garbage in [
        &b"hello world\r\n"[..],
        b"999999999:",
        b"3:abcX",
        b"01:a,",
        b"5000:",
    ] {
        let mut c = server.client().await;
        c.send(garbage).await;
        assert_eq!(c.reply().await, None, "{garbage:?}: closed");
    }
    // A request cut into many packets.
    let mut c = server.client().await;
    let request = netstring("atsms_transport *");
    for byte in &request {
        c.send(&[*byte]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(c.reply().await.as_deref(), Some("NOTFOUND "));
    // 10 000 pipelined requests, answered in order.
    let key = format!("{}@anything.example", mailbox(&w.mailto));
    let mut pipelined = Vec::new();
    for i in 0..10_000 {
        let request = if i % 2 == 0 {
            format!("atsms_alias {key}")
        } else {
            "atsms_transport *".into()
        };
        pipelined.extend(netstring(&request));
    }
    let mut c = server.client().await;
    c.send(&pipelined).await;
    for i in 0..10_000 {
        let want = if i % 2 == 0 {
            "OK alice@example.org"
        } else {
            "NOTFOUND "
        };
        assert_eq!(c.reply().await.as_deref(), Some(want), "reply {i}");
    }
    // The client half-closes: what is pending is answered, then the connection closes.
    let mut c = server.client().await;
    c.send(
        &[
            netstring("atsms_transport *"),
            netstring(&format!("atsms_alias {key}")),
        ]
        .concat(),
    )
    .await;
    c.stream.shutdown().await.unwrap();
    assert_eq!(c.reply().await.as_deref(), Some("NOTFOUND "));
    assert_eq!(c.reply().await.as_deref(), Some("OK alice@example.org"));
    assert_eq!(c.reply().await, None);
    // A thousand idle connections do not keep the next one waiting.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let mut c = server.client().await;
    let started = Instant::now();
    assert_eq!(c.lookup("atsms_transport", "*").await, "NOTFOUND ");
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(idle);
}

use tokio::io::AsyncWriteExt;

/// A minimal Postfix configuration directory for `postmap -c`. `myhostname` is set (else
/// postmap asks DNS for this host's name) and main.cf dated in the past (postmap waits while
/// its configuration is less than a second old).
fn postfix_config() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let main_cf = dir.path().join("main.cf");
    std::fs::write(
        &main_cf,
        "compatibility_level = 3.6\nmyhostname = mx.test\n",
    )
    .unwrap();
    std::fs::File::options()
        .write(true)
        .open(&main_cf)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    dir
}

/// `postmap -q KEY socketmap:inet:127.0.0.1:PORT:MAP`.
fn postmap(
    config: &std::path::Path,
    port: u16,
    map: &str,
    key: &str,
) -> (Option<i32>, String, String) {
    let out = Command::new("postmap")
        .arg("-c")
        .arg(config)
        .args(["-q", key, &format!("socketmap:inet:127.0.0.1:{port}:{map}")])
        .output()
        .expect("postmap (scripts/test installs Postfix)");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn postmap_queries_every_map_of_the_daemon() {
    let w = world();
    let postfix = postfix_config();
    let port = free_port();
    let slow_did = plc_did(9);
    let slow = HttpServer::start(Arc::new(|_: &str| Reply::Hang));
    let daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n[socketmap]\nlisten = \"inet:127.0.0.1:{port}\"\ntimeout = 1\n\n[resolver]\nplc_urls = [\"{}\", \"{}\"]\ndns_servers = [\"{}\"]\ntimeout = 3\n\n[inbox]\nhosts = [\"{US}\"]\n[routing]\nalias_domains = [\"{ALIASED}\"]\n\n[metrics]\nlisten = \"127.0.0.1:{}\"\n",
            free_port(),
            w.plc.url(),
            slow.url(),
            w.dns.server_arg(),
            free_port()
        ),
        port,
    );
    let m = mailbox;
    for (map, key, code, out) in [
        (
            "atsms_alias",
            format!("{}@anything.example", m(&w.elsewhere)),
            0,
            format!("{}@mx.other.example", m(&w.elsewhere)),
        ),
        (
            "atsms_alias",
            format!("{}@anything.example", m(&w.mailto)),
            0,
            "alice@example.org".into(),
        ),
        (
            "atsms_alias",
            format!("{}@anything.example", m(&w.silent)),
            1,
            String::new(),
        ),
        (
            "atsms_transport",
            format!("{}@mx.other.example", m(&w.elsewhere)),
            0,
            "smtp:[8.8.4.4]:2525".into(),
        ),
        ("atsms_transport", "*".into(), 1, String::new()),
        (
            "atsms_transport",
            "sender@example.org".into(),
            1,
            String::new(),
        ),
        (
            "atsms_mailbox",
            format!("{}@{US}", m(&w.ours)),
            0,
            format!("{US}/{}/Maildir/", m(&w.ours)),
        ),
        (
            "atsms_mailbox",
            format!("{}@{US}", m(&w.elsewhere)),
            1,
            String::new(),
        ),
    ] {
        let (got_code, got_out, err) = postmap(postfix.path(), port, map, &key);
        println!(
            "$ postmap -q '{key}' socketmap:inet:127.0.0.1:PORT:{map}   # exit {}\n{got_out}",
            got_code.unwrap_or(-1)
        );
        assert_eq!(
            (got_code, got_out.as_str()),
            (Some(code), out.as_str()),
            "{map} {key}: {err}"
        );
    }
    // A DID the first directory does not know and the second never answers: TEMP in time.
    let started = Instant::now();
    let (code, _, err) = postmap(
        postfix.path(),
        port,
        "atsms_alias",
        &format!("{}@anything.example", m(&slow_did)),
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("temporary error"), "{err}");
    // socketmap.timeout is 1 s a query; postmap asks again after a temporary error.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    let (_, _, err) = postmap(postfix.path(), port, "atsms_nonesuch", "x@y");
    assert!(err.contains("permanent error: unknown map"), "{err}");
    drop(daemon);
}

#[test]
fn route_prints_every_maps_answer_without_a_daemon() {
    let w = world();
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(["route", "--json", "--inbox-host", US, "--plc-url"])
        .arg(w.plc.url())
        .args(["--dns-server", &w.dns.server_arg()])
        .arg(format!("{}@{US}", mailbox(&w.ours).replace('.', "!")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["did"], w.ours.as_str());
    assert_eq!(v["endpoint"], format!("smtp://{US}"));
    assert_eq!(v["consent"], true);
    assert_eq!(
        v["mailhost_txt"], false,
        "no _atsms-mail record in this DNS"
    );
    assert_eq!(v["maps"]["atsms_alias"], "NOTFOUND ");
    assert_eq!(v["maps"]["atsms_transport"], "NOTFOUND ");
    assert_eq!(
        v["maps"]["atsms_mailbox"],
        format!("OK {US}/{}/Maildir/", mailbox(&w.ours))
    );
}

/// A client that sends requests and never reads the answers is not waited for: once its
/// window is shut, the write gives up within `socketmap.timeout` and the connection closes.
#[tokio::test]
async fn a_client_that_never_reads_is_closed() {
    use tokio::io::AsyncReadExt;
    let w = world();
    let server =
        RunningSocketmap::start(&config(&w.plc.url(), &w.dns, "[socketmap]\ntimeout = 1\n")).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // A million short requests: their answers (21 MB of `PERM unknown map`) are more than
    // any socket buffer holds.
    let requests: Vec<u8> = (0..1_000_000).flat_map(|_| netstring("x y")).collect();
    // The writing half stays open (no end of input to end the connection by), and writing
    // fails once the server has given up on us.
    let sender = tokio::spawn(async move {
        let _ = writer.write_all(&requests).await;
        writer
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut sink = vec![0u8; 1 << 20];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the server still waits on a client that does not read"
    );
    drop(sender);
}

/// A DID mailbox keeps its consent while the directory's budget has no slot to refetch its
/// document: the last document known answers (as RFC 8767 serves stale DNS), where a DID
/// never seen waits for a slot like any other. Another client (a second connection) has just
/// taken the others' only slot of the second, and a lookup may wait half a second.
#[tokio::test]
async fn a_mailbox_keeps_its_consent_while_the_budget_has_no_slot_to_refetch_it() {
    let w = world();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let never_seen = plc_did(60);
    w.plc.set(&never_seen, &key, Some(&format!("smtp://{US}")));
    let config = Config::from_toml(
        &format!(
            "[resolver]\nplc_urls = [\"{}\"]\ntimeout = 1\nmax_requests_per_second = 2\nmail_share = 0.5\n[cache]\nfresh = 1\nmax_age = 2\n[inbox]\nhosts = [\"{US}\"]\n",
            w.plc.url()
        ),
        "test",
    )
    .unwrap();
    let server = RunningSocketmap::start(&config).await;
    let (mut ours, mut other) = (server.client().await, server.client().await);
    let mailbox_of = |did: &str| format!("{}@{US}", mailbox(did));
    let consented = format!("OK {US}/{}/Maildir/", mailbox(&w.ours));
    assert_eq!(
        ours.lookup("atsms_mailbox", &mailbox_of(&w.ours)).await,
        consented
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // past cache.max_age
    // The other connection takes the slot of this second; ours would wait a whole second.
    other
        .lookup("atsms_mailbox", &mailbox_of(&plc_did(61)))
        .await;
    let before = w.plc.requests();
    assert_eq!(
        ours.lookup("atsms_mailbox", &mailbox_of(&w.ours)).await,
        consented
    );
    assert_eq!(
        w.plc.requests(),
        before,
        "answered from the last document known"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    other
        .lookup("atsms_mailbox", &mailbox_of(&plc_did(62)))
        .await;
    let answer = ours.lookup("atsms_mailbox", &mailbox_of(&never_seen)).await;
    assert!(answer.starts_with("TEMP "), "{answer}");
}
