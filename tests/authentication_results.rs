//! Our Authentication-Results field and the ones we must not trust: forged fields claiming our
//! authserv-id are found by the RFC 8601 grammar and removed, another verifier's results
//! (OpenDKIM before us, as docs/postfix.md orders the milters) are kept, and an authserv-id
//! that would break the field is refused when the configuration is read.

use atsms_testkit as support;

use atsms_milter::infra::config::PolicyConfig;
use std::process::Command;
use support::daemon::Daemon;
use support::postfix::Postfix;
use support::postfix::free_port;
use support::vectors::VectorWorld;

fn policy_trusting_no_network() -> PolicyConfig {
    PolicyConfig {
        authserv_id: Some("mx.test".parse().unwrap()),
        trusted_networks: vec![],
        ..PolicyConfig::default()
    }
}

fn envelope_vector(name: &str) -> std::path::PathBuf {
    support::test_data("envelope").join(name)
}

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

// Forged Authentication-Results escaped removal.

#[tokio::test]
async fn forged_results_are_found_by_the_grammar() {
    let world = VectorWorld::start();
    let milter = support::milter::RunningMilter::start(
        world.resolver_config(),
        policy_trusting_no_network(),
        world.now(),
    )
    .await;
    let forged = [
        "Authentication-Results: (a\\)b) mx.test; atsms=pass header.d=\"did:plc:forged\"\r\n",
        "Authentication-Results: \"mx\\.test\"; atsms=pass\r\n",
        "Authentication-Results: mx.test.; atsms=pass\r\n",
        "X-Innocent: x\rAuthentication-Results: mx.test; atsms=pass\r\n",
        "Authentication-Results: other.example; dkim=pass\r\n",
    ]
    .concat();
    let message = [
        forged.as_bytes(),
        &std::fs::read(envelope_vector("k256-multikey-pass.eml")).unwrap(),
    ]
    .concat();
    let mut conn = support::milter::open_client(milter.addr).await;
    let (actions, _) = support::milter::send(&mut conn, &message).await;
    let deleted: Vec<(String, i32)> = actions
        .iter()
        .filter_map(|a| match a {
            indymilter_test::EomAction::DeleteHeader { name, index } => {
                Some((name.to_str().unwrap().to_string(), *index))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        deleted,
        vec![
            ("X-Innocent".to_string(), 1),
            ("Authentication-Results".to_string(), 3),
            ("Authentication-Results".to_string(), 2),
            ("Authentication-Results".to_string(), 1),
        ],
        "every spelling of our id goes, other.example's stays"
    );
    milter.stop().await;
}

// The documented milter order deleted OpenDKIM's results.

#[test]
fn the_documented_milter_order_keeps_opendkims_results() {
    let world = VectorWorld::start();
    let opendkim = support::opendkim::OpenDkim::start("mx.test");
    let port = free_port();
    let _daemon = Daemon::start(
        &format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n",
            world.resolver_toml()
        ),
        port,
    );
    let ours = format!("inet:127.0.0.1:{port}");
    let theirs = format!("inet:127.0.0.1:{}", opendkim.port);
    for (milters, both) in [
        (format!("{ours}, {theirs}"), true),
        (format!("{theirs}, {ours}"), false),
    ] {
        let postfix = Postfix::start(&["bob"], &format!("smtpd_milters = {milters}"));
        let signed = world.sign_now(
            ALICE,
            format!("From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: {milters}\r\n\r\nhi\r\n").as_bytes(),
        );
        let (transcript, ok) =
            postfix.swaks("alice@alice.example.com", "bob@mx.example.net", &signed);
        assert!(ok, "{transcript}");
        let delivered = String::from_utf8(postfix.wait_for_mail("bob", 1).remove(0)).unwrap();
        let head = delivered.split("\n\n").next().unwrap();
        assert!(head.contains("atsms=pass"), "{head}");
        // Documented (atsms-milter first): OpenDKIM's result reaches the mailbox too. The
        // other way round, OpenDKIM's field is ours-by-id when we see it, and goes.
        assert_eq!(
            head.contains("dkim="),
            both,
            "smtpd_milters = {milters}:\n{head}"
        );
    }
}

// authserv_id was not validated.

#[test]
fn an_authserv_id_that_would_break_the_field_is_refused() {
    let path = std::env::temp_dir().join(format!("r19-{}.toml", std::process::id()));
    std::fs::write(&path, "[policy]\nauthserv_id = \"mx.test; atsms=pass\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("authserv_id") || err.contains("authserv-id"),
        "{err}"
    );
    assert!(err.contains("line 2"), "{err}");
}
