//! Milter protocol details, driven in-process by indymilter-test as the MTA.

use atsms_testkit as support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use atsms_milter::infra::config::{Action, PolicyConfig};
use indymilter_test::{EomAction, MacroStage, ProtoOpts, Status, TestConnection};
use support::http::{HttpServer, Reply};
use support::milter::{RunningMilter, split_message};
use support::vectors::VectorWorld;

const CLIENT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 25)), 40000);

fn policy() -> PolicyConfig {
    PolicyConfig {
        authserv_id: Some("mx.test".parse().unwrap()),
        trusted_networks: vec![],
        ..Default::default()
    }
}

fn vector(name: &str) -> Vec<u8> {
    std::fs::read(support::test_data("envelope").join(name)).unwrap()
}

/// Sends one message on `conn` as Postfix would, returning the end-of-message result.
async fn send(
    conn: &mut TestConnection,
    raw: &[u8],
    extra_headers: &[(&str, &str)],
) -> (Vec<EomAction>, Status) {
    send_as(conn, raw, extra_headers, "").await
}

/// As `send`, from the SMTP AUTH login `login` (none when empty).
async fn send_as(
    conn: &mut TestConnection,
    raw: &[u8],
    extra_headers: &[(&str, &str)],
    login: &str,
) -> (Vec<EomAction>, Status) {
    conn.macros(
        MacroStage::Mail,
        [("i", "4ABCDEF"), ("{auth_authen}", login)],
    )
    .await
    .unwrap();
    // Steps that only ever continue go unanswered (SMFIP_NR_*): one round trip a message.
    assert_eq!(
        conn.mail(["<alice@alice.example.com>"]).await.unwrap(),
        Status::Noreply
    );
    assert_eq!(
        conn.rcpt(["<bob@mx.example.net>"]).await.unwrap(),
        Status::Noreply
    );
    let (fields, body) = split_message(raw);
    for (name, value) in extra_headers {
        conn.header(*name, *value).await.unwrap();
    }
    for (name, value) in fields {
        conn.header(name.as_str(), value.as_str()).await.unwrap();
    }
    let status = conn.body(body).await.unwrap();
    assert_eq!(status, Status::Noreply);
    conn.macros(MacroStage::Eom, [("i", "4ABCDEF")])
        .await
        .unwrap();
    let (actions, status) = conn.eom().await.unwrap();
    (actions.actions, status)
}

async fn open(milter: &RunningMilter) -> TestConnection {
    let mut conn = TestConnection::configure()
        .open_tcp(milter.addr)
        .await
        .unwrap();
    assert_eq!(
        conn.connect("client.example", CLIENT).await.unwrap(),
        Status::Noreply
    );
    conn
}

fn inserted_header(actions: &[EomAction]) -> String {
    let inserted: Vec<String> = actions
        .iter()
        .filter_map(|a| match a {
            EomAction::InsertHeader {
                index: 0,
                name,
                value,
            } if name.as_bytes() == b"Authentication-Results" => {
                Some(value.to_str().unwrap().to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(inserted.len(), 1, "{actions:?}");
    inserted[0].clone()
}

#[tokio::test]
async fn pass_adds_authentication_results_at_the_top() {
    let world = VectorWorld::start();
    let milter = RunningMilter::start(world.resolver_config(), policy(), world.now()).await;
    let mut conn = open(&milter).await;
    let (actions, status) = send(&mut conn, &vector("k256-multikey-pass.eml"), &[]).await;
    assert_eq!(status, Status::Continue);
    let value = inserted_header(&actions);
    assert!(
        value.starts_with(" mx.test;\n\tatsms=pass header.from=alice@alice.example.com\n\theader.handle=alice.example.com policy.aligned=yes\n\theader.d=\"did:plc:ofurdhfyhjhgomvfygxergep\""),
        "{value:?}"
    );
    assert!(value.contains("header.handle=alice.example.com"), "{value}");
    assert!(value.contains("policy.aligned=yes"), "{value}");
    // The negotiated session: exact leading space, only the actions used.
    assert!(conn.negotiated_opts().contains(ProtoOpts::LEADING_SPACE));
    // Header fields are only recorded: no reply (and no round trip) per field.
    assert!(conn.negotiated_opts().contains(ProtoOpts::NOREPLY_HEADER));
    conn.close().await.unwrap();
    milter.stop().await;
}

#[tokio::test]
async fn forged_authentication_results_are_removed_last_first() {
    let world = VectorWorld::start();
    let milter = RunningMilter::start(world.resolver_config(), policy(), world.now()).await;
    let mut conn = open(&milter).await;
    let forged = [
        (
            "Authentication-Results",
            " mx.test; atsms=pass header.d=\"did:plc:forged\"",
        ),
        (
            "Authentication-Results",
            " other.example; spf=pass smtp.mailfrom=example.com",
        ),
        ("Authentication-Results", " MX.TEST (spoof); dkim=pass"),
        ("Authentication-Results", " ;;;"),
    ];
    let (actions, _) = send(&mut conn, &vector("p256-multikey-pass.eml"), &forged).await;
    let deleted = deleted(&actions);
    assert_eq!(
        deleted,
        vec![4, 3, 1],
        "ours and unreadable ones, in reverse order; other.example stays"
    );
    assert!(inserted_header(&actions).contains("atsms=pass"));
    milter.stop().await;
}

#[tokio::test]
async fn forged_message_is_rejected_or_tagged_by_policy() {
    let world = VectorWorld::start();
    let reject = PolicyConfig {
        on_fail: Action::Reject,
        ..policy()
    };
    let milter = RunningMilter::start(world.resolver_config(), reject, world.now()).await;
    let mut conn = open(&milter).await;
    let (_, status) = send(&mut conn, &vector("body-tampered-fail.eml"), &[]).await;
    match status {
        Status::Reject { message: Some(m) } => {
            let m = m.to_str().unwrap();
            assert!(m.starts_with("550 5.7.1 "), "{m}");
            assert!(m.contains("fail"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // The next message on the same connection is judged afresh.
    let (actions, status) = send(&mut conn, &vector("k256-multikey-pass.eml"), &[]).await;
    assert_eq!(status, Status::Continue);
    assert!(inserted_header(&actions).contains("atsms=pass"));
    milter.stop().await;

    let milter = RunningMilter::start(world.resolver_config(), policy(), world.now()).await;
    let mut conn = open(&milter).await;
    let (actions, status) = send(&mut conn, &vector("body-tampered-fail.eml"), &[]).await;
    assert_eq!(status, Status::Continue);
    let value = inserted_header(&actions);
    assert!(
        value.contains("atsms=fail reason=\"body hash mismatch\""),
        "{value}"
    );
    milter.stop().await;
}

#[tokio::test]
async fn unsigned_mail_gets_none_and_its_body_is_skipped() {
    let world = VectorWorld::start();
    let milter = RunningMilter::start(world.resolver_config(), policy(), world.now()).await;
    // An MTA that waits for every body chunk's answer: told to skip the rest.
    let mut conn = TestConnection::configure()
        .available_opts(ProtoOpts::all() - ProtoOpts::NOREPLY_BODY)
        .open_tcp(milter.addr)
        .await
        .unwrap();
    conn.connect("client.example", CLIENT).await.unwrap();
    conn.macros(MacroStage::Mail, [("i", "4UNSIGNED")])
        .await
        .unwrap();
    conn.mail(["<a@example.com>"]).await.unwrap();
    conn.rcpt(["<bob@mx.example.net>"]).await.unwrap();
    let (fields, body) = split_message(&vector("no-signature-none.eml"));
    for (name, value) in fields {
        conn.header(name.as_str(), value.as_str()).await.unwrap();
    }
    assert_eq!(conn.body(body).await.unwrap(), Status::Skip);
    let (actions, status) = conn.eom().await.unwrap();
    assert_eq!(status, Status::Continue);
    assert_eq!(inserted_header(&actions.actions), " mx.test; atsms=none");
    milter.stop().await;
}

#[tokio::test]
async fn dead_plc_directory_is_a_tempfail() {
    let world = VectorWorld::start();
    let dead = HttpServer::start(Arc::new(|_: &str| Reply::json(503, "{}")));
    let mut resolver = world.resolver_config();
    resolver.plc_urls = vec![dead.url().parse().unwrap()];
    let milter = RunningMilter::start(resolver, policy(), world.now()).await;
    let mut conn = open(&milter).await;
    let (_, status) = send(&mut conn, &vector("k256-multikey-pass.eml"), &[]).await;
    match status {
        Status::Tempfail { message: Some(m) } => {
            assert!(m.to_str().unwrap().starts_with("451 4.7.1 "), "{m:?}")
        }
        other => panic!("{other:?}"),
    }
    milter.stop().await;
}

/// The deletions of `Authentication-Results` fields an end of message asked for.
fn deleted(actions: &[EomAction]) -> Vec<i32> {
    actions
        .iter()
        .filter_map(|a| match a {
            EomAction::DeleteHeader { name, index }
                if name.as_bytes() == b"Authentication-Results" =>
            {
                Some(*index)
            }
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn trusted_and_authenticated_mail_is_not_judged_but_loses_forged_results() {
    let world = VectorWorld::start();
    let forged = [(
        "Authentication-Results",
        " mx.test; atsms=pass header.d=\"did:plc:forged\"",
    )];
    let trusting = PolicyConfig {
        trusted_networks: vec!["192.0.2.0/24".parse().unwrap()],
        ..policy()
    };
    let milter = RunningMilter::start(world.resolver_config(), trusting, world.now()).await;
    let mut conn = open(&milter).await;
    let (actions, status) = send(&mut conn, &vector("p256-multikey-pass.eml"), &forged).await;
    assert_eq!(status, Status::Continue);
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, EomAction::InsertHeader { .. })),
        "not judged: no result of ours"
    );
    assert_eq!(deleted(&actions), vec![1], "but the forged result goes");
    milter.stop().await;

    let milter = RunningMilter::start(world.resolver_config(), policy(), world.now()).await;
    let mut conn = open(&milter).await;
    let (actions, _) = send_as(
        &mut conn,
        &vector("p256-multikey-pass.eml"),
        &forged,
        "alice",
    )
    .await;
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, EomAction::InsertHeader { .. }))
    );
    assert_eq!(deleted(&actions), vec![1]);
    // A later unauthenticated message on the same connection is judged again.
    let (actions, _) = send(&mut conn, &vector("no-signature-none.eml"), &[]).await;
    assert_eq!(inserted_header(&actions), " mx.test; atsms=none");
    milter.stop().await;
}

#[tokio::test]
async fn quarantine_dry_run_and_discard() {
    let world = VectorWorld::start();
    let quarantine = PolicyConfig {
        on_fail: Action::Quarantine,
        ..policy()
    };
    let milter = RunningMilter::start(world.resolver_config(), quarantine, world.now()).await;
    let mut conn = open(&milter).await;
    let (actions, status) = send(&mut conn, &vector("subject-tampered-fail.eml"), &[]).await;
    assert_eq!(status, Status::Continue);
    assert!(
        actions.iter().any(
            |a| matches!(a, EomAction::Quarantine { reason } if reason.as_bytes() == b"AT-SMS signature fail")
        ),
        "{actions:?}"
    );
    milter.stop().await;

    let dry = PolicyConfig {
        on_fail: Action::Reject,
        dry_run: true,
        ..policy()
    };
    let milter = RunningMilter::start(world.resolver_config(), dry, world.now()).await;
    let mut conn = open(&milter).await;
    let (actions, status) = send(
        &mut conn,
        &vector("subject-tampered-fail.eml"),
        &[("Authentication-Results", " mx.test; atsms=pass")],
    )
    .await;
    // A dry run carries out no action, but writes our field and removes forged ones.
    assert_eq!(status, Status::Continue);
    assert_eq!(deleted(&actions), vec![1], "{actions:?}");
    assert!(
        inserted_header(&actions).contains("atsms=fail"),
        "{actions:?}"
    );
    milter.stop().await;

    let discard = PolicyConfig {
        on_fail: Action::Discard,
        ..policy()
    };
    let milter = RunningMilter::start(world.resolver_config(), discard, world.now()).await;
    let mut conn = open(&milter).await;
    let (_, status) = send(&mut conn, &vector("subject-tampered-fail.eml"), &[]).await;
    assert_eq!(status, Status::Discard);
    milter.stop().await;
}

#[tokio::test]
async fn an_mta_without_leading_space_or_header_changes_is_refused() {
    let world = VectorWorld::start();
    let milter = RunningMilter::start(world.resolver_config(), policy(), world.now()).await;
    let no_leadspc = ProtoOpts::all() - ProtoOpts::LEADING_SPACE;
    let refused = TestConnection::configure()
        .available_opts(no_leadspc)
        .open_tcp(milter.addr)
        .await;
    assert!(refused.is_err());
    let no_change = indymilter_test::Actions::ADD_HEADER;
    let refused = TestConnection::configure()
        .available_actions(no_change)
        .open_tcp(milter.addr)
        .await;
    assert!(refused.is_err());
    // The milter keeps serving.
    let mut conn = open(&milter).await;
    let (actions, _) = send(&mut conn, &vector("no-signature-none.eml"), &[]).await;
    assert_eq!(inserted_header(&actions), " mx.test; atsms=none");
    milter.stop().await;
}

/// Postfix sends MAIL, RCPT, header fields and body chunks without waiting when the milter
/// asks (SMFIP_NR_*): one round trip a message. RCPT stays answered when an inbox rule may
/// refuse a recipient there.
#[tokio::test]
async fn steps_that_only_continue_are_not_answered() {
    let world = VectorWorld::start();
    let milter = RunningMilter::start(world.resolver_config(), policy(), world.now()).await;
    let conn = open(&milter).await;
    let unanswered = ProtoOpts::NOREPLY_CONNECT
        | ProtoOpts::NOREPLY_MAIL
        | ProtoOpts::NOREPLY_RCPT
        | ProtoOpts::NOREPLY_HEADER
        | ProtoOpts::NOREPLY_BODY;
    assert!(
        conn.negotiated_opts().contains(unanswered),
        "{:?}",
        conn.negotiated_opts()
    );
    milter.stop().await;

    let mut config = atsms_milter::infra::config::Config {
        resolver: world.resolver_config(),
        policy: policy(),
        ..Default::default()
    };
    config.inbox.rules = vec![atsms_milter::infra::config::InboxRuleConfig {
        recipients: vec!["did.*@mx.example.net".into()],
        require: atsms_milter::infra::config::Require::Pass,
        allow: None,
        action: Action::Reject,
    }];
    let milter = RunningMilter::start_with_config(&config, world.now()).await;
    let conn = open(&milter).await;
    assert!(!conn.negotiated_opts().contains(ProtoOpts::NOREPLY_RCPT));
    assert!(conn.negotiated_opts().contains(ProtoOpts::NOREPLY_MAIL));
    milter.stop().await;
}

/// One milter protocol packet: length (kind included), kind, payload (libmilter's framing).
fn packet(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(payload);
    out
}

/// A whole milter session as an MTA sends it, byte for byte: negotiation (every protocol
/// option offered), connect, macros, envelope, the header fields, the body in two chunks,
/// end of message, quit.
fn raw_session(message: &[u8]) -> Vec<u8> {
    let nul = |parts: &[&[u8]]| -> Vec<u8> {
        parts
            .iter()
            .flat_map(|p| p.iter().copied().chain([0]))
            .collect()
    };
    let mut out = Vec::new();
    let mut negotiate = 6u32.to_be_bytes().to_vec();
    negotiate.extend_from_slice(&0x1ffu32.to_be_bytes());
    negotiate.extend_from_slice(&0x1f_ffffu32.to_be_bytes());
    out.extend(packet(b'O', &negotiate));
    let mut connect = b"client.example\0".to_vec();
    connect.push(b'4');
    connect.extend_from_slice(&40000u16.to_be_bytes());
    connect.extend_from_slice(b"192.0.2.25\0");
    out.extend(packet(b'C', &connect));
    out.extend(packet(
        b'D',
        &[&b"M"[..], &nul(&[b"i", b"4ABCDEF"])].concat(),
    ));
    out.extend(packet(b'M', &nul(&[b"<alice@alice.example.com>"])));
    out.extend(packet(b'R', &nul(&[b"<bob@mx.example.net>"])));
    let (fields, body) = split_message(message);
    // A field larger than the milter's read chunk (8 KiB), unsigned, so the verdict stays.
    let filler = format!(" {}", "x".repeat(40_000));
    out.extend(packet(b'L', &nul(&[b"X-Filler", filler.as_bytes()])));
    for (name, value) in fields {
        out.extend(packet(b'L', &nul(&[name.as_bytes(), value.as_bytes()])));
    }
    out.extend(packet(b'N', b""));
    let (first, second) = body.split_at(body.len() / 2);
    out.extend(packet(b'B', first));
    out.extend(packet(b'B', second));
    out.extend(packet(
        b'D',
        &[&b"E"[..], &nul(&[b"i", b"4ABCDEF"])].concat(),
    ));
    out.extend(packet(b'E', b""));
    out.extend(packet(b'Q', b""));
    out
}

/// Sends `session` to a fresh milter in writes of the sizes `chunks` gives (cycled), and
/// returns every byte the milter answered until it closed the connection.
async fn answers(world: &VectorWorld, session: &[u8], chunks: &[usize]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let milter = RunningMilter::start(world.resolver_config(), policy(), world.now()).await;
    let stream = tokio::net::TcpStream::connect(milter.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut read, mut write) = stream.into_split();
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        read.read_to_end(&mut all).await.unwrap();
        all
    });
    let mut rest = session;
    for (n, size) in chunks.iter().cycle().enumerate() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at((*size).min(rest.len()));
        write.write_all(now).await.unwrap();
        write.flush().await.unwrap();
        // Let the milter read what has arrived so far, so its reads end mid-packet.
        if n % 4 == 0 {
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        rest = later;
    }
    let all = tokio::time::timeout(std::time::Duration::from_secs(20), reader)
        .await
        .unwrap()
        .unwrap();
    milter.stop().await;
    all
}

/// The milter's framing is split-invariant: the same session sent in one write, or cut into
/// pieces of 1 to 13 bytes (length prefixes, kinds and payloads cut everywhere), or into
/// pieces larger than its read chunk, gets the same answers, byte for byte. One field's
/// packet (40 KB) is larger than the read chunk.
#[tokio::test]
async fn a_session_cut_anywhere_gets_the_same_answers() {
    let world = VectorWorld::start();
    let session = raw_session(&vector("k256-multikey-pass.eml"));
    let whole = answers(&world, &session, &[session.len()]).await;
    let text = String::from_utf8_lossy(&whole);
    assert!(text.contains("atsms=pass"), "{text:?}");
    let cut = answers(
        &world,
        &session,
        &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
    )
    .await;
    assert_eq!(cut, whole, "{:?}", String::from_utf8_lossy(&cut));
    let in_two = answers(&world, &session, &[2, session.len()]).await;
    assert_eq!(in_two, whole);
    // The big field's packet arriving in pieces larger than the read chunk.
    let large = answers(&world, &session, &[5, 20_000, 7]).await;
    assert_eq!(large, whole);
}
