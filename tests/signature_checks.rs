//! What a verified signature may and may not claim: a DID document alone never aligns a
//! domain, `From` is one strict mailbox, a duplicated singleton field fails and is never
//! signed, a Multikey is a 33-byte compressed point, and only a valid DID is reported as
//! `header.d`. Black-box through the command line where it can be.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use atsms_milter::atproto::identity::IdentityResolver;
use atsms_milter::format::crypto::Alg;
use atsms_milter::format::crypto::SigningKey;
use atsms_milter::format::envelope::AuthResult;
use atsms_milter::infra::config::CacheConfig;
use atsms_milter::infra::config::ResolverConfig;
use atsms_milter::verification::verify::Verifier;
use serde_json::Value;
use std::io::Write;
use std::process::Command;
use std::process::Stdio;
use std::sync::Arc;
use support::http::HttpServer;
use support::http::Reply;
use support::signing::verify_first;
use support::vectors::VectorWorld;

fn verifier_with_cache_defaults(config: ResolverConfig) -> Verifier {
    let timeout = config.timeout();
    Verifier::new(
        Arc::new(IdentityResolver::new(&config, &CacheConfig::default()).unwrap()),
        timeout,
    )
}

fn envelope_vector(name: &str) -> std::path::PathBuf {
    support::test_data("envelope").join(name)
}

/// `atsms-milter verify --json` against the vector world (or `dns` instead of its DNS).
fn verify_json_against(world: &VectorWorld, file: &std::path::Path, dns: Option<String>) -> Value {
    let mut args = vec!["verify".to_string(), "--json".into()];
    let mut world_args = world.cli_args();
    if let Some(dns) = dns {
        let at = world_args.iter().position(|a| a == "--dns-server").unwrap();
        world_args[at + 1] = dns;
    }
    args.extend(world_args);
    args.push(file.display().to_string());
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(&args)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
}

const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

// Any DID could make any From address "aligned".

#[test]
fn a_did_document_alone_never_aligns_a_domain() {
    let world = VectorWorld::start();
    // The document names smtp://bank.example, which publishes no _atsms-mail record; and a
    // mailto: address plays no part.
    for name in [
        "mailbox-unvouched-host-pass.eml",
        "mailto-service-unaligned-pass.eml",
    ] {
        let v = verify_json_against(&world, &envelope_vector(name), None);
        assert_eq!(
            (v[0]["result"].as_str(), v[0]["aligned"].as_bool()),
            (Some("pass"), Some(false)),
            "{name}: {v}"
        );
    }
    // The DID's own mailbox at a host that vouches is aligned…
    let v = verify_json_against(&world, &envelope_vector("mailbox-address-pass.eml"), None);
    assert_eq!(v[0]["aligned"], true, "{v}");
    // …and not once the host stops publishing its record.
    let handles_only = support::dns::DnsServer::start(
        [(
            "_atproto.alice.example.com".to_string(),
            vec![support::dns::Answer::Txt(format!("did={ALICE}"))],
        )]
        .into_iter()
        .collect(),
    );
    let v = verify_json_against(
        &world,
        &envelope_vector("mailbox-address-pass.eml"),
        Some(handles_only.server_arg()),
    );
    assert_eq!(v[0]["aligned"], false, "{v}");
}

// From parsed leniently (a parser differential).

#[test]
fn from_must_be_one_strict_mailbox() {
    let world = VectorWorld::start();
    for name in [
        "from-display-name-address-fail.eml",
        "from-two-angle-addresses-fail.eml",
    ] {
        let v = verify_json_against(&world, &envelope_vector(name), None);
        assert_eq!(v[0]["result"], "fail", "{name}: {v}");
        assert_eq!(v[0]["reason"], "From is not one mailbox", "{name}: {v}");
    }
    let v = verify_json_against(
        &world,
        &envelope_vector("from-quoted-local-part-pass.eml"),
        None,
    );
    assert_eq!(v[0]["result"], "pass", "{v}");
}

// Duplicated singleton fields kept `pass`.

#[test]
fn duplicated_singleton_fields_fail_and_are_never_signed() {
    let world = VectorWorld::start();
    for (name, reason) in [
        ("duplicate-reply-to-fail.eml", "duplicate reply-to"),
        ("duplicate-content-type-fail.eml", "duplicate content-type"),
    ] {
        let v = verify_json_against(&world, &envelope_vector(name), None);
        assert_eq!(
            (v[0]["result"].as_str(), v[0]["reason"].as_str()),
            (Some("fail"), Some(reason)),
            "{v}"
        );
    }
    // The signer refuses such a message, and over-signs: an added To breaks the hash.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.pem");
    std::fs::write(&key, world.keys[ALICE]["pkcs8_pem"].as_str().unwrap()).unwrap();
    let kid = world.keys[ALICE]["kid"].as_str().unwrap().to_string();
    let sign = |message: &[u8]| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
            .args(["sign", "--key"])
            .arg(&key)
            .args(["--kid", &kid, "--now", &world.now().to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(message).unwrap();
        child.wait_with_output().unwrap()
    };
    let twice = b"From: alice@alice.example.com\r\nSubject: a\r\nSubject: b\r\n\r\nx\r\n";
    let out = sign(twice);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("duplicate subject"));
    let once =
        b"From: alice@alice.example.com\r\nTo: bob@mx.example.net\r\nSubject: a\r\n\r\nx\r\n";
    let out = sign(once);
    assert!(out.status.success());
    let signed = String::from_utf8(out.stdout).unwrap();
    let added = signed.replacen("\r\nFrom:", "\r\nTo: eve@evil.example\r\nFrom:", 1);
    let file = dir.path().join("added.eml");
    std::fs::write(&file, added).unwrap();
    let v = verify_json_against(&world, &file, None);
    assert_eq!(v[0]["result"], "fail", "{v}");
}

// Multikey keys must be 33-byte compressed points.

#[tokio::test]
async fn an_uncompressed_multikey_is_permerror() {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let mut multikey = vec![0xe7, 0x01];
    multikey.extend(key.public_key().uncompressed_point());
    let multibase = format!("z{}", bs58::encode(multikey).into_string());
    let did = "did:plc:ofurdhfyhjhgomvfygxergep";
    let doc = serde_json::json!({
        "id": did,
        "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": did, "publicKeyMultibase": multibase}],
    })
    .to_string();
    let plc = HttpServer::start(Arc::new(move |_: &str| Reply::json(200, doc.clone())));
    let v = verifier_with_cache_defaults(ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        ..Default::default()
    });
    let verdict = verify_first(&v, &support::signing::signed(&key, did)).await;
    assert_eq!(
        verdict.result,
        AuthResult::Permerror,
        "{:?}",
        verdict.reason
    );
}

// header.d echoed any d= text.

#[test]
fn only_a_valid_did_is_reported() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad-d.eml");
    let d = format!("did:plc:\u{00e9}{}", "x".repeat(3000));
    std::fs::write(
        &file,
        format!("AT-SMS-Signature: v=1; d={d}; t=a.b.c\r\nFrom: a@b.example\r\n\r\nx\r\n"),
    )
    .unwrap();
    let v = verify_json_against(&world, &file, None);
    assert_eq!(v[0]["result"], "permerror");
    assert_eq!(v[0]["did"], Value::Null, "{v}");
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(["verify", "--authserv-id", "mx.test"])
        .args(world.cli_args())
        .arg(&file)
        .output()
        .unwrap();
    let field = String::from_utf8(out.stdout).unwrap();
    assert!(!field.contains("header.d") && field.len() < 300, "{field}");
}
