//! The command line as admins and scripts use it: the real binary, real loopback servers,
//! the exit codes and JSON fields fixed in the interfaces.

use atsms_testkit as support;

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::http::{HttpServer, Reply};
use support::vectors::VectorWorld;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
}

fn vector(name: &str) -> String {
    support::test_data("envelope")
        .join(name)
        .display()
        .to_string()
}

fn run(args: &[String], stdin: Option<&[u8]>) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(bytes) = stdin {
        input.write_all(bytes).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn args(world: &VectorWorld, command: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    all.extend(world.cli_args());
    all
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&output.stdout)))
}

#[test]
fn verify_json_on_a_passing_vector() {
    let world = VectorWorld::start();
    let mut a = args(&world, &["verify", "--json"]);
    a.push(vector("k256-multikey-pass.eml"));
    let out = run(&a, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v.as_array().unwrap().len(), 1);
    let sig = &v[0];
    assert_eq!(sig["result"], "pass");
    assert_eq!(sig["did"], "did:plc:ofurdhfyhjhgomvfygxergep");
    assert_eq!(sig["kid"], "did:plc:ofurdhfyhjhgomvfygxergep#atproto");
    assert_eq!(sig["reason"], Value::Null);
    assert_eq!(sig["handle"], "alice.example.com");
    assert_eq!(sig["aligned"], true);
    assert_eq!(sig["stale"], false);
}

#[test]
fn verify_prints_one_field_for_two_signatures() {
    let world = VectorWorld::start();
    let mut a = args(&world, &["verify", "--authserv-id", "mx.test"]);
    a.push(vector("two-signatures-pass-fail.eml"));
    let out = run(&a, None);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(
            "Authentication-Results: mx.test;\n\tatsms=fail reason=\"signature does not verify\""
        ),
        "{text}"
    );
    let pass = text
        .find("atsms=pass header.from=alice@alice.example.com")
        .expect(&text);
    assert!(
        pass > text.find("atsms=fail").unwrap(),
        "top signature first"
    );
    assert!(text.contains("header.handle=alice.example.com"), "{text}");
    assert!(text.contains("policy.aligned=yes"), "{text}");
    assert_eq!(text.matches("Authentication-Results:").count(), 1);
}

#[test]
fn exit_codes() {
    let world = VectorWorld::start();
    let code = |extra: &[&str], stdin: Option<&[u8]>| {
        let mut a = args(&world, &["verify"]);
        a.extend(extra.iter().map(|s| s.to_string()));
        run(&a, stdin).status.code()
    };
    assert_eq!(code(&[&vector("no-signature-none.eml")], None), Some(3));
    assert_eq!(code(&[&vector("body-tampered-fail.eml")], None), Some(1));
    assert_eq!(code(&[&vector("unknown-did-permerror.eml")], None), Some(1));
    assert_eq!(code(&["/nonexistent/message.eml"], None), Some(66));
    assert_eq!(code(&["--no-such-option"], None), Some(2));
    // Standard input when no file is named.
    let message = std::fs::read(vector("p256-multikey-pass.eml")).unwrap();
    assert_eq!(code(&[], Some(&message)), Some(0));
    let mut a = args(&world, &["verify", "--json"]);
    a.push(vector("no-signature-none.eml"));
    assert_eq!(json(&run(&a, None)), serde_json::json!([]));
}

#[test]
fn a_plc_that_never_answers_is_temperror_within_the_timeout() {
    let world = VectorWorld::start();
    let dead = HttpServer::start(Arc::new(|_: &str| Reply::Hang));
    let started = Instant::now();
    let out = run(
        &[
            "verify".into(),
            "--json".into(),
            "--now".into(),
            world.now().to_string(),
            "--plc-url".into(),
            dead.url(),
            "--timeout".into(),
            "1".into(),
            vector("k256-multikey-pass.eml"),
        ],
        None,
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by --timeout"
    );
    assert_eq!(out.status.code(), Some(75));
    let v = json(&out);
    assert_eq!(v[0]["result"], "temperror");
    // The fetch's own time limit or the lookup's, whichever comes first.
    assert!(
        ["PLC directory unavailable", "identity lookup timed out"]
            .contains(&v[0]["reason"].as_str().unwrap()),
        "{v}"
    );
    assert_eq!(dead.request_count(), 1);
}

#[test]
fn a_plc_answering_503_is_temperror_and_404_is_permerror() {
    let world = VectorWorld::start();
    for (status, result, code) in [(503, "temperror", 75), (404, "permerror", 1)] {
        let plc = HttpServer::start(Arc::new(move |_: &str| Reply::json(status, "{}")));
        let out = run(
            &[
                "verify".into(),
                "--json".into(),
                "--now".into(),
                world.now().to_string(),
                "--plc-url".into(),
                plc.url(),
                vector("k256-multikey-pass.eml"),
            ],
            None,
        );
        assert_eq!(out.status.code(), Some(code), "HTTP {status}");
        assert_eq!(json(&out)[0]["result"], result, "HTTP {status}");
    }
}

fn write_temp(dir: &tempfile::TempDir, name: &str, contents: &[u8]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, contents).unwrap();
    path.display().to_string()
}

#[test]
fn sign_then_verify_round_trip_with_every_vector_key() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let plain = b"From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: round trip\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\nMessage-ID: <rt@alice.example.com>\r\n\r\nHello  \r\n\r\n";
    let bob = b"From: Bob <bob@bob.example.org>\nTo: <alice@mx.example.net>\nSubject: round trip\n\nHi there\n";
    for entry in world.keys.as_object().unwrap().values() {
        let kid = entry["kid"].as_str().unwrap().to_string();
        let key = write_temp(
            &dir,
            "key.pem",
            entry["pkcs8_pem"].as_str().unwrap().as_bytes(),
        );
        let (message, from_did): (&[u8], &str) = if kid.contains("hxdv4c2etoo2mbhg4alzhnno") {
            (bob, "did:plc:hxdv4c2etoo2mbhg4alzhnno")
        } else {
            (
                plain,
                kid.split('#').next().unwrap().trim_start_matches("at://"),
            )
        };
        let input = write_temp(&dir, "in.eml", message);
        let signed = run(
            &[
                "sign".into(),
                "--key".into(),
                key,
                "--kid".into(),
                kid.clone(),
                "--now".into(),
                world.now().to_string(),
                input,
            ],
            None,
        );
        assert_eq!(
            signed.status.code(),
            Some(0),
            "{kid}: {}",
            String::from_utf8_lossy(&signed.stderr)
        );
        assert!(
            signed.stdout.starts_with(b"AT-SMS-Signature: v=1; d="),
            "{kid}"
        );
        assert!(
            signed.stdout.ends_with(message),
            "{kid}: the message follows unchanged"
        );
        let out = run(&args(&world, &["verify", "--json"]), Some(&signed.stdout));
        let v = json(&out);
        assert_eq!(v[0]["result"], "pass", "{kid}: {v}");
        assert_eq!(v[0]["did"], from_did, "{kid}");
        assert_eq!(out.status.code(), Some(0), "{kid}");
    }
}

#[test]
fn signed_messages_resist_tampering_and_rcpt_is_enforced() {
    let world = VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let entry = &world.keys["did:plc:ofurdhfyhjhgomvfygxergep"];
    let key = write_temp(
        &dir,
        "key.pem",
        entry["pkcs8_pem"].as_str().unwrap().as_bytes(),
    );
    let input = write_temp(
        &dir,
        "in.eml",
        b"From: alice@alice.example.com\r\nSubject: hi\r\n\r\nbody\r\n",
    );
    let signed = run(
        &[
            "sign".into(),
            "--key".into(),
            key,
            "--kid".into(),
            "did:plc:ofurdhfyhjhgomvfygxergep#atproto".into(),
            "--now".into(),
            world.now().to_string(),
            "--rcpt".into(),
            "Bob@MX.example.net".into(),
            input,
        ],
        None,
    );
    assert_eq!(signed.status.code(), Some(0));
    let verify = |message: &[u8], rcpt: &[&str]| {
        let mut a = args(&world, &["verify", "--json"]);
        for r in rcpt {
            a.push("--rcpt".into());
            a.push(r.to_string());
        }
        json(&run(&a, Some(message)))[0]["result"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(verify(&signed.stdout, &["bob@mx.example.net"]), "pass");
    assert_eq!(verify(&signed.stdout, &["eve@mx.example.net"]), "policy");
    let tampered = String::from_utf8(signed.stdout.clone())
        .unwrap()
        .replace("body", "bodY");
    assert_eq!(verify(tampered.as_bytes(), &[]), "fail");
    let added = [b"Subject: injected\r\n".as_slice(), &signed.stdout].concat();
    assert_eq!(
        verify(&added, &[]),
        "fail",
        "over-signed Subject breaks on an added copy"
    );
}

#[test]
fn sign_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let key = write_temp(&dir, "key.pem", b"not a key");
    let input = write_temp(&dir, "in.eml", b"From: a@b.example\r\n\r\nx\r\n");
    let out = run(
        &[
            "sign".into(),
            "--key".into(),
            key,
            "--kid".into(),
            "did:plc:ofurdhfyhjhgomvfygxergep#atproto".into(),
            input.clone(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PKCS#8"));
    let out = run(
        &[
            "sign".into(),
            "--key".into(),
            "/nonexistent.pem".into(),
            "--kid".into(),
            "x".into(),
            input,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(66));
}

#[test]
fn keygen_prints_a_key_its_multikey_and_did_key() {
    for (curve, prefix) in [("k256", "zQ3s"), ("p256", "zDna")] {
        let out = run(&["keygen".into(), "--curve".into(), curve.into()], None);
        assert_eq!(out.status.code(), Some(0));
        let pem = String::from_utf8(out.stdout).unwrap();
        let key = atsms_milter::format::crypto::SigningKey::from_pkcs8_pem(&pem).unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        let multikey = key.public_key().to_multikey();
        assert!(multikey.starts_with(prefix));
        assert!(
            stderr.contains(&format!("multikey: {multikey}\n")),
            "{stderr}"
        );
        assert!(
            stderr.contains(&format!("did:key: did:key:{multikey}\n")),
            "{stderr}"
        );
    }
    assert_eq!(
        run(&["keygen".into()], None).status.code(),
        Some(2),
        "--curve is required"
    );
}

#[test]
fn resolve_a_did_and_a_handle() {
    let world = VectorWorld::start();
    let out = run(
        &args(
            &world,
            &["resolve", "did:plc:ofurdhfyhjhgomvfygxergep", "--json"],
        ),
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = json(&out);
    assert_eq!(v["did"], "did:plc:ofurdhfyhjhgomvfygxergep");
    assert_eq!(v["handle"], "alice.example.com");
    assert_eq!(v["handle_claimed"], "alice.example.com");
    assert_eq!(
        v["key"],
        "zQ3shQiS1yTKJR5D5YJqFuyhgAYLhbSQXMH2BBwzWaAg21U3X"
    );
    assert_eq!(v["alg"], "ES256K");
    assert_eq!(v["mail_service"], "smtp://mx.example.net:25");
    assert_eq!(v["source"]["handle"], "dns");
    assert_eq!(
        v["source"]["document"],
        format!("{}/did:plc:ofurdhfyhjhgomvfygxergep", world.plc.url())
    );

    let out = run(
        &args(&world, &["resolve", "bob.example.org", "--json"]),
        None,
    );
    assert_eq!(json(&out)["did"], "did:plc:hxdv4c2etoo2mbhg4alzhnno");

    // dave's handle names another DID: claimed, not checked.
    let out = run(
        &args(
            &world,
            &["resolve", "did:plc:g52q64shscka6ocq42ygccug", "--json"],
        ),
        None,
    );
    let v = json(&out);
    assert_eq!(v["handle"], Value::Null);
    assert_eq!(v["handle_claimed"], "dave.example.com");

    let out = run(
        &args(&world, &["resolve", "did:plc:7k5nm7ahyz7dpgkr2w26llae"]),
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}

#[test]
fn every_command_has_help() {
    for command in ["verify", "sign", "keygen", "resolve"] {
        let out = run(&[command.into(), "--help".into()], None);
        assert_eq!(out.status.code(), Some(0), "{command}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: atsms-milter"),
            "{command}"
        );
    }
}

/// `inbox list|show|purge`: the operator's view of the AT-SMS device copies, read from the
/// store's files as the daemon keeps them.
#[test]
fn inbox_lists_shows_and_purges_device_copies() {
    use atsms_milter::infra::device_store::DeviceStore;
    let dir = tempfile::tempdir().unwrap();
    let did = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    let (a, b) = ("ab".repeat(32), "cd".repeat(32));
    let store = DeviceStore::new(dir.path().to_path_buf(), "mx.test", 10, 1 << 20);
    store.store(did, &[&a, &b], b"sealed").unwrap();
    let inbox = |more: &[&str]| {
        let mut all = vec![
            "inbox".to_string(),
            "--store".into(),
            dir.path().display().to_string(),
        ];
        all.extend(more.iter().map(|s| s.to_string()));
        run(&all, None)
    };
    assert_eq!(json(&inbox(&["list"])), serde_json::json!([did]));
    let devices = json(&inbox(&["list", did]));
    assert_eq!(devices["devices"][0]["fingerprint"], a.as_str());
    assert_eq!(devices["devices"][1]["copies"], 1);
    assert_eq!(devices["devices"][1]["bytes"], 6);
    let shown = json(&inbox(&["show", &format!("{did}/{a}")]));
    assert_eq!(shown["devices"][0]["copies"][0]["size"], 6);
    let purged = json(&inbox(&["purge", &format!("{did}/{a}")]));
    assert_eq!(purged["purged"], 1);
    assert_eq!(store.list(did, &a, 10).unwrap(), vec![]);
    assert_eq!(
        store.list(did, &b, 10).unwrap().len(),
        1,
        "the other device's copy stays"
    );
    let bad = inbox(&["purge", &format!("{did}/../x")]);
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
