//! The LMTP protocol driven directly: pipelining, BDAT, dot-stuffing, per-recipient replies
//! with mixed outcomes, limits and timeouts, and what lands in the Maildirs, byte for byte.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use atsms_milter::infra::config::Action;
use atsms_milter::infra::config::PolicyConfig;
use std::time::Duration;
use std::time::Instant;
use support::lmtp::RunningLmtp;
use support::lmtp::dot_stuffed;
use support::vectors::VectorWorld;

fn policy_trusting_no_network() -> PolicyConfig {
    PolicyConfig {
        authserv_id: Some("mx.test".parse().unwrap()),
        trusted_networks: vec![],
        ..PolicyConfig::default()
    }
}

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

fn policy() -> PolicyConfig {
    PolicyConfig {
        authserv_id: Some("mx.test".parse().unwrap()),
        ..Default::default()
    }
}

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!("From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: {subject}\r\n\r\n{body}").into_bytes()
}

/// The stored form: LF line ends.
fn lf(bytes: &[u8]) -> Vec<u8> {
    String::from_utf8_lossy(bytes)
        .replace("\r\n", "\n")
        .into_bytes()
}

async fn start(world: &VectorWorld, policy: PolicyConfig) -> RunningLmtp {
    RunningLmtp::start(world.resolver_config(), policy, world.now(), |_, _| {}).await
}

#[tokio::test]
async fn pipelined_transaction_with_mixed_outcomes_and_duplicates() {
    let world = VectorWorld::start();
    let reject_policy = PolicyConfig {
        on_policy: Action::Reject,
        ..policy()
    };
    let server = RunningLmtp::start(
        world.resolver_config(),
        reject_policy,
        world.now(),
        |config, dir| {
            let list = dir.join("recipients");
            std::fs::write(&list, "bob@mx.example.net\ncarol@mx.example.net\n").unwrap();
            config.recipients = Some(list.display().to_string());
        },
    )
    .await;
    // Signed for bob only: carol's copy is refused by policy (the rcpt claim).
    let signed = world.sign_at(
        ALICE,
        &message("for bob", "Hi Bob\r\n"),
        world.now(),
        &["bob@mx.example.net".into()],
    );
    let mut c = server.client().await;
    c.send(b"LHLO client.example\r\nMAIL FROM:<alice@alice.example.com> BODY=8BITMIME SIZE=2000\r\nRCPT TO:<bob@mx.example.net>\r\nRCPT TO:<eve@mx.example.net>\r\nRCPT TO:<carol@mx.example.net>\r\nRCPT TO:<Bob@mx.example.net>\r\nDATA\r\n").await;
    let lhlo = c.reply().await;
    for keyword in [
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "SMTPUTF8",
        "CHUNKING",
        "SIZE 52428800",
    ] {
        assert!(lhlo.contains(keyword), "{lhlo}");
    }
    let replies = c.replies(6).await;
    assert_eq!(replies[0], "250 2.1.0 OK");
    assert_eq!(replies[1], "250 2.1.5 OK");
    assert_eq!(replies[2], "550 5.1.1 <eve@mx.example.net> user unknown");
    assert_eq!(replies[3], "250 2.1.5 OK");
    assert_eq!(replies[4], "250 2.1.5 OK");
    assert!(replies[5].starts_with("354 "), "{replies:?}");
    // The message, then QUIT in the same packet: every reply comes before the 221.
    let mut tail = dot_stuffed(&signed);
    tail.extend_from_slice(b"QUIT\r\n");
    c.send(&tail).await;
    let done = c.replies(4).await;
    assert!(
        done[0].starts_with("250 2.0.0 <bob@mx.example.net> ") && done[0].ends_with(" Saved"),
        "{done:?}"
    );
    assert_eq!(
        done[1],
        "550 5.7.1 <carol@mx.example.net> AT-SMS signature policy"
    );
    assert!(
        done[2].starts_with("250 2.0.0 <Bob@mx.example.net> "),
        "duplicates get their own reply: {done:?}"
    );
    assert_eq!(
        done[0].split(' ').nth(3),
        done[2].split(' ').nth(3),
        "but one delivery"
    );
    assert!(done[3].starts_with("221 2.0.0"), "{done:?}");
    assert!(c.closed().await);

    let bob = RunningLmtp::new_files(&server.maildir("bob"));
    assert_eq!(bob.len(), 1);
    assert!(RunningLmtp::new_files(&server.maildir("carol")).is_empty());
    let stored = String::from_utf8(bob[0].clone()).unwrap();
    // Byte for byte: our fields on top, then the message with LF line ends.
    let head = "Return-Path: <alice@alice.example.com>\nAuthentication-Results: mx.test;\n\tatsms=pass header.from=alice@alice.example.com\n\theader.handle=alice.example.com policy.aligned=yes\n\theader.d=\"did:plc:ofurdhfyhjhgomvfygxergep\"\n";
    assert!(stored.starts_with(head), "{stored}");
    assert_eq!(stored.as_bytes()[head.len()..], lf(&signed)[..], "{stored}");
    assert!(
        !stored.contains("Delivered-To"),
        "only with a single recipient"
    );
}

#[tokio::test]
async fn single_recipient_gets_delivered_to_and_forged_results_are_dropped() {
    let world = VectorWorld::start();
    let server = start(&world, policy()).await;
    let raw = std::fs::read(support::test_data("envelope").join("p256-multikey-pass.eml")).unwrap();
    // Ours, and ours as some reader would read it (malformed authserv-ids).
    let message = [
        b"Authentication-Results: mx.test; atsms=pass header.d=\"did:plc:forged\"\r\n".as_slice(),
        b"Authentication-Results: mx.(c)test; atsms=pass header.d=\"did:plc:forged\"\r\n",
        b"Authentication-Results: mx\".\"test; atsms=pass header.d=\"did:plc:forged\"\r\n",
        b"Authentication-Results: \"mx\".test; atsms=pass header.d=\"did:plc:forged\"\r\n",
        b"Authentication-Results: mx\\.test; atsms=pass header.d=\"did:plc:forged\"\r\n",
        b"Authentication-Results: other.example; spf=pass\r\n",
        &raw,
    ]
    .concat();
    let mut c = server.client().await;
    c.send(b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(4).await;
    c.send(&dot_stuffed(&message)).await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    let stored =
        String::from_utf8(RunningLmtp::new_files(&server.maildir("bob")).remove(0)).unwrap();
    assert!(stored.starts_with("Return-Path: <>\nDelivered-To: bob@mx.example.net\nAuthentication-Results: mx.test;\n\tatsms=pass"), "{stored}");
    assert!(!stored.contains("did:plc:forged"), "{stored}");
    assert!(
        stored.contains("\nAuthentication-Results: other.example; spf=pass\n"),
        "{stored}"
    );
    assert!(
        stored.ends_with(&String::from_utf8(lf(&raw)).unwrap()),
        "{stored}"
    );
}

#[tokio::test]
async fn forgeries_go_to_junk_and_detail_folders_are_used_when_present() {
    let world = VectorWorld::start();
    let server = start(
        &world,
        PolicyConfig {
            on_fail: Action::Junk,
            ..policy()
        },
    )
    .await;
    let forged =
        std::fs::read(support::test_data("envelope").join("body-tampered-fail.eml")).unwrap();
    let good =
        std::fs::read(support::test_data("envelope").join("k256-multikey-pass.eml")).unwrap();
    std::fs::create_dir_all(server.maildir("bob").join(".Lists/new")).unwrap();
    std::fs::create_dir_all(server.maildir("bob").join(".Lists/tmp")).unwrap();
    std::fs::create_dir_all(server.maildir("bob").join(".Lists/cur")).unwrap();
    let mut c = server.client().await;
    c.send(b"LHLO x\r\n").await;
    c.reply().await;
    for (to, message) in [
        ("bob", &forged),
        ("bob+Lists", &good),
        ("bob+Nowhere", &good),
    ] {
        c.send(
            format!("MAIL FROM:<a@b.example>\r\nRCPT TO:<{to}@mx.example.net>\r\nDATA\r\n")
                .as_bytes(),
        )
        .await;
        c.replies(3).await;
        c.send(&dot_stuffed(message)).await;
        let reply = c.reply().await;
        assert!(reply.starts_with("250 2.0.0"), "{to}: {reply}");
    }
    let junk = server.maildir("bob").join(".Junk");
    assert!(junk.join("maildirfolder").exists());
    let junked = RunningLmtp::new_files(&junk);
    assert_eq!(junked.len(), 1);
    assert!(
        String::from_utf8_lossy(&junked[0]).contains("atsms=fail reason=\"body hash mismatch\"")
    );
    assert_eq!(
        RunningLmtp::new_files(&server.maildir("bob").join(".Lists")).len(),
        1
    );
    assert_eq!(
        RunningLmtp::new_files(&server.maildir("bob")).len(),
        1,
        "no such folder: INBOX"
    );
}

#[tokio::test]
async fn bdat_chunks_and_dot_stuffing() {
    let world = VectorWorld::start();
    let server = start(&world, policy()).await;
    let mut c = server.client().await;
    c.send(b"LHLO x\r\n").await;
    c.reply().await;
    // BDAT: no dot-unstuffing; a chunk may end anywhere; LAST gets the per-recipient replies.
    let body = b"From: a@b.example\r\nSubject: chunks\r\n\r\n.leading dot stays\r\nend\r\n";
    let (one, two) = body.split_at(23);
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nRCPT TO:<carol@mx.example.net>\r\n").await;
    c.replies(3).await;
    c.send(format!("BDAT {}\r\n", one.len()).as_bytes()).await;
    c.send(one).await;
    c.send(format!("BDAT {} LAST\r\n", two.len()).as_bytes())
        .await;
    c.send(two).await;
    assert_eq!(c.reply().await, "250 2.0.0 23 octets received");
    let last = c.replies(2).await;
    assert!(
        last[0].starts_with("250 2.0.0 <bob@") && last[1].starts_with("250 2.0.0 <carol@"),
        "{last:?}"
    );
    let stored =
        String::from_utf8(RunningLmtp::new_files(&server.maildir("bob")).remove(0)).unwrap();
    assert!(
        stored.ends_with("\n\n.leading dot stays\nend\n"),
        "{stored}"
    );

    // DATA: a dot-stuffed first line, and the empty message.
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<dan@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(3).await;
    c.send(b"..first line had a dot\r\nX\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    let stored =
        String::from_utf8(RunningLmtp::new_files(&server.maildir("dan")).remove(0)).unwrap();
    assert!(
        stored.ends_with("\n.first line had a dot\nX\n"),
        "{stored:?}"
    );
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<erin@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(3).await;
    c.send(b".\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    let stored =
        String::from_utf8(RunningLmtp::new_files(&server.maildir("erin")).remove(0)).unwrap();
    assert!(stored.ends_with("atsms=none\n\n"), "{stored:?}");
    // BDAT 0 LAST is a legal empty message; BDAT without recipients is refused after reading it.
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<fay@mx.example.net>\r\nBDAT 0 LAST\r\n")
        .await;
    let r = c.replies(3).await;
    assert!(r[2].starts_with("250 2.0.0 <fay@"), "{r:?}");
    c.send(b"BDAT 5\r\nhello").await;
    assert_eq!(c.reply().await, "503 5.5.1 no valid recipients");
    c.send(b"NOOP\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 OK", "the stream stayed in step");
}

#[tokio::test]
async fn a_bare_lf_dot_does_not_end_the_message() {
    let world = VectorWorld::start();
    let server = start(&world, policy()).await;
    let mut c = server.client().await;
    c.send(b"LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(4).await;
    // "\n.\r\n" is not CRLF.CRLF: the smuggled MAIL stays part of this message.
    c.send(b"Subject: s\r\n\r\nline\n.\r\nMAIL FROM:<evil@x>\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    c.send(b"NOOP\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 OK");
    let stored =
        String::from_utf8(RunningLmtp::new_files(&server.maildir("bob")).remove(0)).unwrap();
    assert!(
        stored.ends_with("line\n.\nMAIL FROM:<evil@x>\n"),
        "{stored:?}"
    );
}

#[tokio::test]
async fn sequence_errors_limits_and_timeouts() {
    let world = VectorWorld::start();
    let server = RunningLmtp::start(
        world.resolver_config(),
        policy(),
        world.now(),
        |config, _| {
            config.max_message_size = 1000;
            config.idle_timeout = std::num::NonZeroU64::new(1).unwrap();
        },
    )
    .await;
    let mut c = server.client().await;
    c.send(
        b"EHLO x\r\nMAIL FROM:<a@b.example>\r\nLHLO x\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n",
    )
    .await;
    let r = c.replies(5).await;
    assert_eq!(r[0], "500 5.5.1 this is LMTP: use LHLO");
    assert_eq!(r[1], "503 5.5.1 LHLO first");
    assert!(r[2].starts_with("250-"));
    assert_eq!(r[3], "503 5.5.1 MAIL first");
    assert_eq!(r[4], "503 5.5.1 MAIL first");
    c.send(b"MAIL FROM:<a@b.example> SIZE=5000\r\nMAIL FROM:<a@b.example> XYZ=1\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\nDATA\r\nRCPT TO:<>\r\nRCPT TO:<../x@y>\r\nRSET\r\nBOGUS\r\nVRFY x\r\n").await;
    let r = c.replies(10).await;
    assert_eq!(
        r[0],
        "552 5.3.4 message size exceeds fixed maximum message size"
    );
    assert_eq!(r[1], "555 5.5.4 unsupported parameter XYZ");
    assert_eq!(r[2], "250 2.1.0 OK");
    assert_eq!(r[3], "503 5.5.1 nested MAIL command");
    assert_eq!(r[4], "503 5.5.1 no valid recipients");
    assert_eq!(r[5], "550 5.1.1 empty recipient address");
    assert_eq!(r[6], "550 5.1.3 <../x@y> unusable address");
    assert_eq!(r[7], "250 2.0.0 OK");
    assert_eq!(r[8], "500 5.5.2 command not recognized");
    assert!(r[9].starts_with("252 "));
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(10_000));
    c.send(long.as_bytes()).await;
    assert_eq!(
        c.replies(2).await,
        vec!["500 5.5.2 line too long", "250 2.0.0 OK"]
    );
    // Over the size limit: the data is read to its end, then each recipient gets 552.
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nRCPT TO:<carol@mx.example.net>\r\nDATA\r\n").await;
    c.replies(4).await;
    let big = format!("Subject: big\r\n\r\n{}\r\n", "y".repeat(2000));
    c.send(&dot_stuffed(big.as_bytes())).await;
    assert_eq!(
        c.replies(2).await,
        vec![
            "552 5.3.4 <bob@mx.example.net> message too large",
            "552 5.3.4 <carol@mx.example.net> message too large"
        ]
    );
    assert!(RunningLmtp::new_files(&server.maildir("bob")).is_empty());
    // Idle: 421 after idle_timeout.
    let started = std::time::Instant::now();
    assert!(c.reply().await.starts_with("421 4.4.2"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(c.closed().await);
}

#[tokio::test]
async fn an_io_error_other_than_a_full_disk_is_451() {
    let world = VectorWorld::start();
    let server = RunningLmtp::start(
        world.resolver_config(),
        policy(),
        world.now(),
        |config, dir| {
            // The template runs through a regular file: creating the Maildir fails with ENOTDIR.
            std::fs::write(dir.join("not-a-directory"), b"").unwrap();
            config.maildir = format!("{}/not-a-directory/%n/Maildir", dir.display());
        },
    )
    .await;
    let mut c = server.client().await;
    c.send(b"LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(4).await;
    c.send(&dot_stuffed(b"Subject: s\r\n\r\nx\r\n")).await;
    assert_eq!(
        c.reply().await,
        "451 4.3.0 <bob@mx.example.net> temporary delivery failure"
    );
}

#[tokio::test]
async fn many_recipients_share_one_written_file() {
    use std::os::unix::fs::MetadataExt;
    let world = VectorWorld::start();
    let server = start(&world, policy()).await;
    let good =
        std::fs::read(support::test_data("envelope").join("k256-multikey-pass.eml")).unwrap();
    for dir in ["new", "tmp", "cur"] {
        std::fs::create_dir_all(server.maildir("frank").join(".Lists").join(dir)).unwrap();
    }
    // A detail folder holds the same bytes: it shares the file too.
    let to = ["bob", "carol", "dan", "frank+Lists", "erin"];
    let mut c = server.client().await;
    let mut command = String::from("LHLO x\r\nMAIL FROM:<a@b.example>\r\n");
    for user in to {
        command.push_str(&format!("RCPT TO:<{user}@mx.example.net>\r\n"));
    }
    command.push_str("DATA\r\n");
    c.send(command.as_bytes()).await;
    c.replies(3 + to.len()).await;
    c.send(&dot_stuffed(&good)).await;
    let replies = c.replies(to.len()).await;
    let mut ids = std::collections::HashSet::new();
    for (user, reply) in to.iter().zip(&replies) {
        assert!(
            reply.starts_with(&format!("250 2.0.0 <{user}@mx.example.net> ")),
            "{replies:?}"
        );
        ids.insert(reply.split(' ').nth(3).unwrap().to_string());
    }
    assert_eq!(
        ids.len(),
        to.len(),
        "each copy has its own name: {replies:?}"
    );
    let folders = [
        server.maildir("bob"),
        server.maildir("carol"),
        server.maildir("dan"),
        server.maildir("frank").join(".Lists"),
        server.maildir("erin"),
    ];
    let mut inodes = std::collections::HashSet::new();
    let mut contents = std::collections::HashSet::new();
    for folder in &folders {
        let files: Vec<_> = std::fs::read_dir(folder.join("new"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(files.len(), 1, "{folder:?}");
        let meta = std::fs::metadata(&files[0]).unwrap();
        assert_eq!(meta.nlink(), to.len() as u64, "{:?}", files[0]);
        inodes.insert(meta.ino());
        contents.insert(std::fs::read(&files[0]).unwrap());
        assert_eq!(std::fs::read_dir(folder.join("tmp")).unwrap().count(), 0);
    }
    assert_eq!(inodes.len(), 1, "written once, linked into every Maildir");
    let stored = String::from_utf8(contents.into_iter().next().unwrap()).unwrap();
    assert!(stored.contains("atsms=pass"), "{stored}");
    assert!(!stored.contains("Delivered-To"), "{stored}");
}

// The LMTP idle timeout acted as a total DATA timeout; 15. a final line without a newline
// was dropped.

#[tokio::test]
async fn a_slow_steady_sender_is_served_and_a_whole_transfer_is_bounded() {
    let world = VectorWorld::start();
    let server = RunningLmtp::start(
        world.resolver_config(),
        policy_trusting_no_network(),
        world.now(),
        |config, _| {
            config.idle_timeout = std::num::NonZeroU64::new(2).unwrap();
            config.data_timeout = std::num::NonZeroU64::new(5).unwrap();
        },
    )
    .await;
    // One line a second for 4 seconds: each read within idle_timeout, the whole within
    // data_timeout.
    let mut c = server.client().await;
    c.send(b"LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(4).await;
    c.send(b"Subject: slow\r\n\r\n").await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.send(b"line\r\n").await;
    }
    c.send(b".\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    // Steady again, but for longer than data_timeout: 421, and nothing delivered.
    c.send(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
        .await;
    c.replies(3).await;
    let started = Instant::now();
    let reply = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.send(b"line\r\n").await;
        if started.elapsed() > Duration::from_secs(4) {
            break c.reply().await;
        }
    };
    assert!(
        reply.starts_with("421 4.4.2") && reply.contains("data timeout"),
        "{reply}"
    );
    assert_eq!(RunningLmtp::new_files(&server.maildir("bob")).len(), 1);
}

#[tokio::test]
async fn a_last_line_without_a_line_end_is_kept() {
    let world = VectorWorld::start();
    let server = RunningLmtp::start(
        world.resolver_config(),
        policy_trusting_no_network(),
        world.now(),
        |_, _| {},
    )
    .await;
    let signed = world.sign_at(
        ALICE,
        b"From: Alice <alice@alice.example.com>\r\nSubject: no end\r\n\r\nline one\r\nthe end, without a newline",
        world.now(),
        &[],
    );
    let mut c = server.client().await;
    c.send(
        format!(
            "LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob@mx.example.net>\r\nBDAT {} LAST\r\n",
            signed.len()
        )
        .as_bytes(),
    )
    .await;
    c.send(&signed).await;
    let replies = c.replies(4).await;
    assert!(replies[3].starts_with("250 2.0.0"), "{replies:?}");
    let stored =
        String::from_utf8(RunningLmtp::new_files(&server.maildir("bob")).remove(0)).unwrap();
    assert!(
        stored.ends_with("\n\nline one\nthe end, without a newline"),
        "{stored}"
    );
    assert!(stored.contains("atsms=pass"), "{stored}");
}

// Control characters from MAIL/RCPT, and Unicode case folding onto another mailbox.

#[tokio::test]
async fn control_characters_are_refused_and_no_mailbox_folds_onto_another() {
    let world = VectorWorld::start();
    let server = RunningLmtp::start(
        world.resolver_config(),
        policy_trusting_no_network(),
        world.now(),
        |_, _| {},
    )
    .await;
    let mut c = server.client().await;
    c.send(b"LHLO x\r\nMAIL FROM:<a\rb@example>\r\nMAIL FROM:<a\x00b@example>\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<bob\r@mx.example.net>\r\nRCPT TO:<bob\x00x@mx.example.net>\r\n").await;
    let replies = c.replies(6).await;
    assert!(
        replies[1].starts_with("501 ") && replies[2].starts_with("501 "),
        "{replies:?}"
    );
    assert!(replies[3].starts_with("250 "));
    assert!(
        replies[4].starts_with("501 ") && replies[5].starts_with("501 "),
        "{replies:?}"
    );
    c.send("RCPT TO:<\u{212A}evin@mx.example.net>\r\nDATA\r\n".as_bytes())
        .await;
    c.replies(2).await;
    c.send(&dot_stuffed(b"Subject: kelvin\r\n\r\nhi\r\n")).await;
    assert!(c.reply().await.starts_with("250 "));
    assert!(RunningLmtp::new_files(&server.maildir("\u{212A}evin")).len() == 1);
    assert!(
        !server.maildir("kevin").exists(),
        "kevin's mailbox was not touched"
    );
}
