//! DID-verified inboxes: consent at RCPT (presence equals consent, and its withdrawal), inbox
//! rules answered per recipient over LMTP and one rule per transaction in the milter, and
//! AT-SMS client messages filed into `.AT-SMS`.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use std::sync::Arc;
use std::time::Duration;

use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::infra::config::{Action, Config, PolicyConfig};
use support::ids::plc_did;
use support::lmtp::{RunningLmtp, dot_stuffed};
use support::plc::{Plc, mailbox};
use support::vectors::VectorWorld;

const US: &str = "mx.example.net";
const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

/// An LMTP server with `toml` as its configuration (resolver, cache, inbox, policy).
async fn lmtp(toml: &str, now: i64) -> RunningLmtp {
    let config = Config::from_toml(toml, "test").unwrap();
    RunningLmtp::start_with_config(&config, now).await
}

#[tokio::test]
async fn consent_is_checked_at_rcpt_and_withdrawn_with_the_document() {
    let plc = Plc::start();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let (here, elsewhere, unknown) = (plc_did(1), plc_did(2), plc_did(3));
    plc.set(&here, &key, Some(&format!("smtp://{US}:25")));
    plc.set(&elsewhere, &key, Some("smtp://mx.other.example"));
    let server = lmtp(
        &format!(
            "[resolver]\nplc_urls = [\"{}\"]\n[cache]\nfresh = 1\nmax_age = 1\n[inbox]\nhosts = [\"{US}\"]\n[policy]\nauthserv_id = \"mx.test\"\n",
            plc.url()
        ),
        support::signing::NOW,
    )
    .await;
    let rcpt = |did: &str| format!("RCPT TO:<{}@{US}>\r\n", mailbox(did));
    let mut c = server.client().await;
    c.send(
        format!(
            "LHLO x\r\nMAIL FROM:<a@b.example>\r\n{}{}{}RCPT TO:<{}@{US}>\r\nRCPT TO:<bob@{US}>\r\n",
            rcpt(&here),
            rcpt(&elsewhere),
            rcpt(&unknown),
            here.replace(':', "!")
        )
        .as_bytes(),
    )
    .await;
    let replies = c.replies(7).await;
    assert!(replies[2].starts_with("250 2.1.5"), "{replies:?}");
    assert!(
        replies[3].starts_with("550 5.1.1") && replies[3].contains("names no mailbox at this host"),
        "{replies:?}"
    );
    assert!(
        replies[4].starts_with("550 5.1.1"),
        "an unknown DID: {replies:?}"
    );
    assert!(
        replies[5].starts_with("250 2.1.5"),
        "the ! spelling is the same mailbox: {replies:?}"
    );
    assert!(
        replies[6].starts_with("250 2.1.5"),
        "not a DID mailbox: no consent needed"
    );
    c.send(b"DATA\r\n").await;
    c.reply().await;
    c.send(&dot_stuffed(b"Subject: to a DID\r\n\r\nhi\r\n"))
        .await;
    let delivered = c.replies(3).await;
    assert!(
        delivered.iter().all(|r| r.starts_with("250 2.0.0")),
        "{delivered:?}"
    );
    let folder = server
        .dir
        .path()
        .join(US)
        .join(mailbox(&here))
        .join("Maildir");
    assert_eq!(
        RunningLmtp::new_files(&folder).len(),
        1,
        "the two spellings, one copy"
    );

    // The DID moves its mail elsewhere: once the cache entry is refreshed, no mailbox here.
    plc.set(&here, &key, Some("smtp://mx.other.example"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut c = server.client().await;
    c.send(format!("LHLO x\r\nMAIL FROM:<a@b.example>\r\n{}", rcpt(&here)).as_bytes())
        .await;
    let replies = c.replies(3).await;
    assert!(replies[2].starts_with("550 5.1.1"), "{replies:?}");

    // The directory down: 451 4.4.3, not a refusal.
    let down =
        support::http::HttpServer::start(Arc::new(|_: &str| support::http::Reply::json(503, "{}")));
    let server = lmtp(
        &format!(
            "[resolver]\nplc_urls = [\"{}\"]\n[inbox]\nhosts = [\"{US}\"]\n",
            down.url()
        ),
        support::signing::NOW,
    )
    .await;
    let mut c = server.client().await;
    c.send(format!("LHLO x\r\nMAIL FROM:<a@b.example>\r\n{}", rcpt(&plc_did(4))).as_bytes())
        .await;
    let replies = c.replies(3).await;
    assert!(replies[2].starts_with("451 4.4.3"), "{replies:?}");
}

/// Consent is asked of the mailbox delivery writes to: a detail, another case or the `!`
/// spelling never lets mail into the Maildir of a DID whose document names another host.
#[tokio::test]
async fn consent_is_asked_of_the_mailbox_delivery_writes_to() {
    let plc = Plc::start();
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let (here, elsewhere) = (plc_did(5), plc_did(6));
    plc.set(&here, &key, Some(&format!("smtp://{US}")));
    plc.set(&elsewhere, &key, Some("smtp://mx.other.example"));
    let server = lmtp(
        &format!(
            "[resolver]\nplc_urls = [\"{}\"]\n[inbox]\nhosts = [\"{US}\"]\n[policy]\nauthserv_id = \"mx.test\"\n",
            plc.url()
        ),
        support::signing::NOW,
    )
    .await;
    let bang = |did: &str| did.replace(':', "!");
    let refused = [
        format!(
            "{}+y@{}",
            bang(&elsewhere).to_uppercase(),
            US.to_uppercase()
        ),
        format!("{}+x@{US}", mailbox(&elsewhere)),
        format!("{}+@{US}.", mailbox(&elsewhere)),
    ];
    let accepted = format!("{}+news@{US}", bang(&here));
    let mut c = server.client().await;
    let mut session = "LHLO x\r\nMAIL FROM:<a@b.example>\r\n".to_string();
    for r in refused.iter().chain([&accepted]) {
        session.push_str(&format!("RCPT TO:<{r}>\r\n"));
    }
    c.send(session.as_bytes()).await;
    let replies = c.replies(2 + refused.len() + 1).await;
    for (reply, address) in replies[2..].iter().zip(&refused) {
        assert!(
            reply.starts_with("550 5.1.1") && reply.contains("names no mailbox at this host"),
            "{address}: {reply}"
        );
    }
    assert!(
        replies.last().unwrap().starts_with("250 2.1.5"),
        "{replies:?}"
    );
    c.send(b"DATA\r\n").await;
    c.reply().await;
    c.send(&dot_stuffed(b"Subject: consent\r\n\r\nhi\r\n"))
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    let maildir = |did: &str| {
        server
            .dir
            .path()
            .join(US)
            .join(mailbox(did))
            .join("Maildir")
    };
    assert_eq!(RunningLmtp::new_files(&maildir(&here)).len(), 1);
    assert!(
        !maildir(&elsewhere).exists(),
        "nothing was written for the DID that lives elsewhere"
    );
}

#[tokio::test]
async fn three_recipients_under_three_rules_get_three_answers() {
    let world = VectorWorld::start();
    let server = lmtp(
        &format!(
            "{}\n[inbox]\nhosts = [\"{US}\"]\n[[inbox.rule]]\nrecipients = [\"strict@{US}\"]\nrequire = \"aligned\"\n[[inbox.rule]]\nrecipients = [\"friends@{US}\"]\nallow = [\"*.example.org\"]\n[[inbox.rule]]\nrecipients = [\"*@{US}\"]\nrequire = \"pass\"\naction = \"junk\"\n[policy]\nauthserv_id = \"mx.test\"\n",
            world.resolver_toml()
        ),
        world.now(),
    )
    .await;
    // Alice's mail from an address her DID does not align with: a pass, unaligned.
    let unaligned = world.sign_at(
        ALICE,
        b"From: Alice <alice@mail.alice.example.com>\r\nSubject: three rules\r\n\r\nhi\r\n",
        world.now(),
        &[],
    );
    let mut c = server.client().await;
    c.send(format!("LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<strict@{US}>\r\nRCPT TO:<friends@{US}>\r\nRCPT TO:<anyone@{US}>\r\nDATA\r\n").as_bytes()).await;
    c.replies(6).await;
    c.send(&dot_stuffed(&unaligned)).await;
    let replies = c.replies(3).await;
    assert!(
        replies[0].starts_with("550 5.7.1 <strict@") && replies[0].contains("aligned senders only"),
        "{replies:?}"
    );
    assert!(
        replies[1].starts_with("550 5.7.1 <friends@")
            && replies[1].contains("does not take mail from this sender"),
        "{replies:?}"
    );
    assert!(replies[2].starts_with("250 2.0.0 <anyone@"), "{replies:?}");
    let maildir = server.dir.path().join(US).join("anyone/Maildir");
    assert_eq!(
        RunningLmtp::new_files(&maildir).len(),
        1,
        "a pass meets the third rule: INBOX"
    );
    // Unsigned mail to the third: junk, as that rule says.
    c.send(format!("MAIL FROM:<a@b.example>\r\nRCPT TO:<anyone@{US}>\r\nDATA\r\n").as_bytes())
        .await;
    c.replies(3).await;
    c.send(&dot_stuffed(b"Subject: unsigned\r\n\r\nhi\r\n"))
        .await;
    assert!(c.reply().await.starts_with("250 "));
    assert_eq!(RunningLmtp::new_files(&maildir.join(".Junk")).len(), 1);
}

#[tokio::test]
async fn the_milter_keeps_one_rule_per_transaction() {
    let world = VectorWorld::start();
    let mut config = Config::from_toml(
        &format!(
            "[inbox]\n[[inbox.rule]]\nrecipients = [\"strict@{US}\"]\nrequire = \"pass\"\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n"
        ),
        "test",
    )
    .unwrap();
    config.resolver = world.resolver_config();
    let milter = support::milter::RunningMilter::start_with_config(&config, world.now()).await;
    let mut conn = support::milter::open_client(milter.addr).await;
    conn.mail(["<a@b.example>"]).await.unwrap();
    assert_eq!(
        conn.rcpt([format!("<strict@{US}>")]).await.unwrap(),
        indymilter_test::Status::Continue
    );
    // Another rule (none): back in a transaction of its own.
    let status = conn.rcpt([format!("<bob@{US}>")]).await.unwrap();
    match status {
        indymilter_test::Status::Tempfail { message: Some(m) } => {
            assert!(m.to_str().unwrap().starts_with("452 4.5.3 "), "{m:?}")
        }
        other => panic!("{other:?}"),
    }
    // The same rule again is fine.
    assert_eq!(
        conn.rcpt([format!("<Strict+x@{US}>")]).await.unwrap(),
        indymilter_test::Status::Continue
    );
    drop(conn);
    // Unsigned mail to the strict inbox: refused at end of message.
    let mut conn = support::milter::open_client(milter.addr).await;
    conn.mail(["<a@b.example>"]).await.unwrap();
    conn.rcpt([format!("<strict@{US}>")]).await.unwrap();
    let (fields, body) =
        support::milter::split_message(b"From: x@y.example\r\nSubject: s\r\n\r\nhi\r\n");
    for (name, value) in fields {
        conn.header(name.as_str(), value.as_str()).await.unwrap();
    }
    conn.body(body).await.unwrap();
    let (_, status) = conn.eom().await.unwrap();
    match status {
        indymilter_test::Status::Reject { message: Some(m) } => assert_eq!(
            m.to_str().unwrap(),
            "550 5.7.1 this inbox takes verified senders only"
        ),
        other => panic!("{other:?}"),
    }
    milter.stop().await;
}

#[tokio::test]
async fn atsms_client_messages_are_marked_and_filed() {
    let server = RunningLmtp::start(
        Default::default(),
        PolicyConfig {
            authserv_id: Some("mx.test".parse().unwrap()),
            on_none: Action::Accept,
            ..PolicyConfig::default()
        },
        support::signing::NOW,
        |_, _| {},
    )
    .await;
    // The AT-SMS client's own EnvelopedData (tests/data/atsms-client), as its SMTP form sends it.
    let enveloped = std::fs::read(support::test_data("atsms-client").join("oneshot.der")).unwrap();
    let client_message = format!(
        "From: x@y.example\r\nSubject: from an AT-SMS client\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nOpen this in your AT-SMS client.\r\n--b1\r\nContent-Type: application/pkcs7-mime; name=\"message.p7m\"\r\nContent-Disposition: attachment; filename=\"message.p7m\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &enveloped)
            .as_bytes()
            .chunks(76)
            .map(|line| String::from_utf8_lossy(line).into_owned())
            .collect::<Vec<_>>()
            .join("\r\n")
    )
    .into_bytes();
    let client_message = client_message.as_slice();
    let maildir = server.maildir("bob");
    for with_folder in [false, true] {
        if with_folder {
            std::fs::create_dir_all(maildir.join(".AT-SMS/new")).unwrap();
        }
        let mut c = server.client().await;
        c.send(b"LHLO x\r\nMAIL FROM:<x@y.example>\r\nRCPT TO:<bob@mx.example.net>\r\nDATA\r\n")
            .await;
        c.replies(4).await;
        c.send(&dot_stuffed(client_message)).await;
        assert!(c.reply().await.starts_with("250 "));
    }
    let inbox = RunningLmtp::new_files(&maildir);
    assert_eq!(inbox.len(), 1, "without the folder: INBOX");
    let stored = String::from_utf8_lossy(&inbox[0]).into_owned();
    assert!(
        stored.contains(
            "Authentication-Results: mx.test; atsms=none policy.atsms-envelope=cms-enveloped\n"
        ),
        "{stored}"
    );
    assert_eq!(
        RunningLmtp::new_files(&maildir.join(".AT-SMS")).len(),
        1,
        "with it: .AT-SMS"
    );
}
