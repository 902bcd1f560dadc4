//! The signing milter, driven in-process by indymilter-test as the MTA: who gets signed (SASL
//! logins, `signing.networks`, the keys' `senders` and `logins`), what is never signed (step 10
//! failures), and that everything it signs — with each of the public vectors' keys, both
//! curves — verifies with the verifier.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use atsms_milter::format::envelope::AuthResult;
use indymilter_test::{EomAction, Status};
use support::milter::{RunningMilter, send_from as send};
use support::vectors::VectorWorld;

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";
const BOB: &str = "did:plc:hxdv4c2etoo2mbhg4alzhnno";

/// Writes the vector key of `did` as a private key file (mode 0600).
fn key_file(world: &VectorWorld, dir: &std::path::Path, did: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(format!("{}.pem", did.replace(':', "_")));
    std::fs::write(&path, world.keys[did]["pkcs8_pem"].as_str().unwrap()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn config(world: &VectorWorld, signing: &str) -> atsms_milter::infra::config::Config {
    let text = format!(
        "{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n\n{signing}",
        world.resolver_toml()
    );
    atsms_milter::infra::config::Config::from_toml(&text, "test").unwrap()
}

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: <bob@mx.example.net>\r\nSubject: {subject}\r\nDate: Wed, 02 Dec 2026 09:00:00 +0000\r\nMessage-ID: <{}@signing.test>\r\n\r\nsigned on the way out\r\n",
        subject.replace(' ', "-")
    )
    .into_bytes()
}

/// The fields inserted with this name.
fn inserted(actions: &[EomAction], field: &str) -> Vec<(usize, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            EomAction::InsertHeader { index, name, value }
                if name.as_bytes() == field.as_bytes() =>
            {
                Some((*index as usize, value.to_str().unwrap().to_string()))
            }
            _ => None,
        })
        .collect()
}

/// The message as the next hop gets it: the inserted signature on top (LF folds made CRLF).
fn with_signature(actions: &[EomAction], raw: &[u8]) -> Vec<u8> {
    let signatures = inserted(actions, "AT-SMS-Signature");
    assert_eq!(signatures.len(), 1, "{actions:?}");
    let (index, value) = &signatures[0];
    assert_eq!(*index, 0, "on top");
    let field = format!("AT-SMS-Signature:{}\r\n", value.replace('\n', "\r\n"));
    [field.as_bytes(), raw].concat()
}

#[tokio::test]
async fn every_vector_key_signs_what_the_verifier_accepts() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let mut keys = String::new();
    let mut signers = Vec::new();
    for (i, (did, entry)) in world.keys.as_object().unwrap().iter().enumerate() {
        let kid = entry["kid"].as_str().unwrap();
        if !kid.starts_with("did:") {
            continue; // a device certificate's key: signing.key names DID#fragment keys
        }
        let sender = format!("user{i}@signer{i}.example");
        keys += &format!(
            "[[signing.key]]\nsenders = [\"{sender}\"]\ndid = \"{did}\"\nkid = \"{kid}\"\nkey_file = \"{}\"\nlogins = [\"*\"]\n\n",
            key_file(&world, dir.path(), did).display()
        );
        signers.push((
            sender,
            did.clone(),
            entry["alg"].as_str().unwrap().to_string(),
        ));
    }
    let milter = RunningMilter::start_with_config(&config(&world, &keys), world.now()).await;
    let verifier = world.verifier();
    let mut curves = std::collections::BTreeSet::new();
    for (sender, did, alg) in &signers {
        let raw = message(&format!("<{sender}>"), &format!("from {did}"));
        let (actions, status) = send(milter.addr, "192.0.2.25", "someone", &raw).await;
        assert_eq!(status, Status::Continue);
        assert!(
            inserted(&actions, "Authentication-Results").is_empty(),
            "not judged"
        );
        let signed = with_signature(&actions, &raw);
        let verdict = support::signing::verify_at(&verifier, &signed, world.now()).await;
        assert_eq!(verdict.len(), 1);
        assert_eq!(
            verdict[0].result,
            AuthResult::Pass,
            "{did}: {:?}",
            verdict[0]
        );
        assert_eq!(verdict[0].did.as_deref(), Some(did.as_str()));
        curves.insert(alg.clone());
    }
    assert_eq!(
        curves.into_iter().collect::<Vec<_>>(),
        ["ES256", "ES256K"],
        "both curves"
    );
    milter.stop().await;
}

#[tokio::test]
async fn logins_networks_and_senders_decide_what_is_signed() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let signing = format!(
        "[signing]\nnetworks = [\"192.0.2.0/24\"]\n\n[[signing.key]]\nsenders = [\"alice@alice.example.com\"]\ndid = \"{ALICE}\"\nkid = \"{ALICE}#atproto\"\nkey_file = \"{}\"\nlogins = [\"alice\"]\n\n[[signing.key]]\nsenders = [\"*@bob.example.org\"]\ndid = \"{BOB}\"\nkid = \"{BOB}#atproto\"\nkey_file = \"{}\"\nlogins = [\"*\"]\n",
        key_file(&world, dir.path(), ALICE).display(),
        key_file(&world, dir.path(), BOB).display()
    );
    let milter = RunningMilter::start_with_config(&config(&world, &signing), world.now()).await;
    let verifier = world.verifier();
    let outside = "198.51.100.7";

    // Alice's login, Alice's address: signed, and aligned by her handle at the next hop.
    let raw = message("Alice <alice@alice.example.com>", "alice signs");
    let (actions, status) = send(milter.addr, outside, "alice", &raw).await;
    assert_eq!(status, Status::Continue);
    let verdict = support::signing::verify_first(&verifier, &with_signature(&actions, &raw)).await;
    assert_eq!(verdict.result, AuthResult::Pass, "{verdict:?}");
    assert_eq!(verdict.aligned(), Some(true));

    // Another login may not use Alice's key: not signed, not judged either.
    let (actions, status) = send(milter.addr, outside, "mallory", &raw).await;
    assert_eq!(status, Status::Continue);
    assert!(
        inserted(&actions, "AT-SMS-Signature").is_empty(),
        "{actions:?}"
    );
    assert!(
        inserted(&actions, "Authentication-Results").is_empty(),
        "{actions:?}"
    );

    // Nobody's key for this address.
    let (actions, _) = send(
        milter.addr,
        outside,
        "alice",
        &message("<eve@evil.example>", "eve"),
    )
    .await;
    assert!(
        inserted(&actions, "AT-SMS-Signature").is_empty(),
        "{actions:?}"
    );

    // Step 10 would fail: two From fields, or two mailboxes in one.
    let two_froms = [b"From: <alice@alice.example.com>\r\n".as_slice(), &raw].concat();
    let (actions, _) = send(milter.addr, outside, "alice", &two_froms).await;
    assert!(
        inserted(&actions, "AT-SMS-Signature").is_empty(),
        "{actions:?}"
    );
    let two_mailboxes = message("alice@alice.example.com, eve@evil.example", "two");
    let (actions, _) = send(milter.addr, outside, "alice", &two_mailboxes).await;
    assert!(
        inserted(&actions, "AT-SMS-Signature").is_empty(),
        "{actions:?}"
    );

    // signing.networks without SASL: a key without `logins` signs; Alice's (with) does not.
    let bobs = message("<someone@bob.example.org>", "from the network");
    let (actions, _) = send(milter.addr, "192.0.2.25", "", &bobs).await;
    let verdict = support::signing::verify_first(&verifier, &with_signature(&actions, &bobs)).await;
    assert_eq!(verdict.result, AuthResult::Pass, "{verdict:?}");
    assert_eq!(verdict.did.as_deref(), Some(BOB));
    let (actions, _) = send(milter.addr, "192.0.2.25", "", &raw).await;
    assert!(
        inserted(&actions, "AT-SMS-Signature").is_empty(),
        "{actions:?}"
    );

    // Outside without SASL: inbound mail, judged and never signed.
    let (actions, _) = send(milter.addr, outside, "", &bobs).await;
    assert!(
        inserted(&actions, "AT-SMS-Signature").is_empty(),
        "{actions:?}"
    );
    let results = inserted(&actions, "Authentication-Results");
    assert_eq!(results.len(), 1, "{actions:?}");
    assert!(results[0].1.contains("atsms=none"), "{results:?}");
    milter.stop().await;
}

#[tokio::test]
async fn a_message_signed_once_more_keeps_both_and_the_top_one_verifies() {
    // A client that signed (sign --remote, say) and submits through the signing milter: the
    // milter adds its own on top; both verify.
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let signing = format!(
        "[[signing.key]]\nsenders = [\"alice@alice.example.com\"]\ndid = \"{ALICE}\"\nkid = \"{ALICE}#atproto\"\nkey_file = \"{}\"\nlogins = [\"*\"]\n",
        key_file(&world, dir.path(), ALICE).display()
    );
    let milter = RunningMilter::start_with_config(&config(&world, &signing), world.now()).await;
    let raw = world.sign_at(
        ALICE,
        &message("<alice@alice.example.com>", "signed twice"),
        world.now(),
        &[],
    );
    let (actions, _) = send(milter.addr, "198.51.100.7", "alice", &raw).await;
    let signed = with_signature(&actions, &raw);
    let verdicts = support::signing::verify_at(&world.verifier(), &signed, world.now()).await;
    assert_eq!(verdicts.len(), 2);
    assert!(
        verdicts.iter().all(|v| v.result == AuthResult::Pass),
        "{verdicts:?}"
    );
    milter.stop().await;
}

/// `serve` with one signing key; the daemon must refuse to start: its exit and stderr.
fn refused_start(key_pem: &[u8], mode: u32, plc: &support::plc::Plc, did: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, key_pem).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
    let config = dir.path().join("atsms.toml");
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{}\"\n[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n[[signing.key]]\ndid = \"{did}\"\nkid = \"{did}#atsms\"\nkey_file = \"{}\"\nlogins = [\"*\"]\n",
            support::postfix::free_port(),
            plc.url(),
            key.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the daemon started with a bad signing key");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    stderr
}

#[test]
fn a_bad_signing_key_stops_the_start_and_says_why() {
    use atsms_milter::format::crypto::{Alg, SigningKey};
    let plc = support::plc::Plc::start();
    let did = support::ids::plc_did(3);
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    // The document lists another key under #atsms.
    let listed = SigningKey::generate(Alg::Es256k).unwrap();
    plc.set_document(
        &did,
        serde_json::json!({"id": did, "verificationMethod": [{"id": "#atsms", "type": "Multikey",
            "controller": did, "publicKeyMultibase": listed.public_key().to_multikey()}]})
        .to_string(),
    );
    let pem = key.to_pkcs8_pem();
    let why = refused_start(pem.as_bytes(), 0o600, &plc, &did);
    assert!(
        why.contains(&format!(
            "signing key {did}#atsms: the DID document lists another key under this id"
        )),
        "{why}"
    );
    let why = refused_start(pem.as_bytes(), 0o644, &plc, &did);
    assert!(why.contains("is readable by others"), "{why}");
    let why = refused_start(
        b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
        0o600,
        &plc,
        &did,
    );
    assert!(
        why.contains("not a PKCS#8 P-256 or secp256k1 private key"),
        "{why}"
    );
}
