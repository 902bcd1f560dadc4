//! Recipient addresses from the network, on every path that reads them (LMTP over a socket
//! and on stdin, the milter's RCPT, the Exim scanner's request): an address holding a
//! multi-byte character, malformed or not, is answered like any other and never ends the
//! session, let alone another one.

use atsms_testkit as support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use support::daemon::Daemon;
use support::postfix::free_port;

/// Addresses whose bytes once cut a character in two where a DID prefix is looked for.
const AWKWARD: [&str; 5] = [
    "abc\u{e9}@mx.example.net",
    "did\u{e9}x@mx.example.net",
    "d\u{1F600}@mx.example.net",
    "did.\u{e9}\u{e9}@mx.example.net",
    "\u{e9}+\u{e9}@mx.example.net",
];

fn lmtp_session(recipients: &[&str]) -> Vec<u8> {
    let mut session = b"LHLO client.example\r\nMAIL FROM:<a@b.example>\r\n".to_vec();
    for r in recipients {
        session.extend_from_slice(format!("RCPT TO:<{r}>\r\n").as_bytes());
    }
    session.extend_from_slice(b"DATA\r\nSubject: awkward\r\n\r\nhello\r\n.\r\nQUIT\r\n");
    session
}

/// Every reply line of a pipelined LMTP session, once the server closes.
fn replies(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| l.len() > 3 && l.as_bytes()[3] == b' ')
        .collect()
}

#[test]
fn awkward_recipients_are_answered_on_every_path() {
    let root = support::public_tempdir();
    let (lmtp, milter, exim) = (free_port(), free_port(), free_port());
    let config = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{milter}\"\n[lmtp]\nlisten = \"inet:127.0.0.1:{lmtp}\"\nmaildir = \"{}/%d/%n/Maildir\"\n[exim]\nlisten = \"inet:127.0.0.1:{exim}\"\n[policy]\nauthserv_id = \"mx.test\"\n",
        root.path().display()
    );
    let daemon = Daemon::start(&config, lmtp);
    let mut all: Vec<&str> = AWKWARD.to_vec();
    all.push("bob@mx.example.net");

    // LMTP over TCP, pipelined: one reply per command, in order, the last recipient saved.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", lmtp)).unwrap();
    stream.write_all(&lmtp_session(&all)).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let got = replies(&out);
    // 220, LHLO, MAIL, six RCPTs, 354, six per-recipient replies, 221.
    assert_eq!(got.len(), 3 + all.len() + 1 + all.len() + 1, "{out}");
    assert!(got.last().unwrap().starts_with("221 "), "{out}");
    assert!(
        out.contains("250 2.0.0 <bob@mx.example.net> "),
        "the session went on: {out}"
    );

    // `serve --stdio`: the same session, exit status 0.
    let config_file = root.path().join("stdio.toml");
    std::fs::write(
        &config_file,
        format!(
            "[lmtp]\nmaildir = \"{}/%d/%n/Maildir\"\n[policy]\nauthserv_id = \"mx.test\"\n[store]\nreplay_file = \"{}/replay\"\n",
            root.path().display(),
            root.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(["serve", "--stdio", "--config"])
        .arg(&config_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&lmtp_session(&all))
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{:?}: {out}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(out.contains("250 2.0.0 <bob@mx.example.net> "), "{out}");

    // The milter's RCPT: each gets an answer, the connection stays usable.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut conn = support::milter::open_client(("127.0.0.1", milter)).await;
        conn.mail(["<a@b.example>"]).await.unwrap();
        for r in &all {
            let status = conn.rcpt([format!("<{r}>").as_str()]).await.unwrap();
            assert!(
                matches!(
                    status,
                    indymilter_test::Status::Continue | indymilter_test::Status::Noreply
                ),
                "{r}: {status:?}"
            );
        }
        conn.header("Subject", "awkward").await.unwrap();
        conn.body(b"hello\r\n".to_vec()).await.unwrap();
        let (_, status) = conn.eom().await.unwrap();
        assert_eq!(status, indymilter_test::Status::Continue);
        conn.close().await.unwrap();
    });

    // The Exim scanner: a request naming them all gets its answer.
    let mbox = b"From a@b.example Sat Dec  5 00:00:00 2026\nX-Envelope-From: <a@b.example>\nSubject: awkward\n\nhello\n";
    let mut head = format!(
        "CHECK RSPAMC/1.3\r\nContent-length: {}\r\nQueue-Id: 1xAwkw-000000-00\r\nFrom: <a@b.example>\r\nRecipient-Number: {}\r\n",
        mbox.len(),
        all.len()
    );
    for r in &all {
        head.push_str(&format!("Rcpt: <{r}>\r\n"));
    }
    head.push_str("IP: 192.0.2.1\r\n\r\n");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", exim)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(mbox).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("RSPAMD/1.3 0 EX_OK"), "{answer:?}");
    assert!(answer.contains("Action: "), "{answer:?}");

    // The daemon served all of it and is still there.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", lmtp)).unwrap();
    stream.write_all(b"QUIT\r\n").unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("220 "), "{out}");
    // The panic hook's line (src/infra/logging.rs), at error level: written at once.
    let log = daemon.log();
    assert!(!log.contains("internal error"), "{log}");
}
