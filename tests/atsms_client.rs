//! Real AT-SMS mail, as the AT-SMS client makes it (tests/data/atsms-client, SOURCES.md): the
//! X.509 floor (`verify-cms`, and `verify` on a message carrying a SignedData), what an AT-SMS
//! part carries, the recipients of an EnvelopedData, and consent by the DID's own
//! `at.atsms.inbox` record at RCPT. A loopback PLC directory that is the DIDs' PDS too serves
//! the documents and records; no code of the AT-SMS project runs.
// The kit's futures (testkit/) are laid out across a crate boundary, deeper than the
// default limit of 128.
#![recursion_limit = "256"]

use atsms_testkit as support;

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::infra::config::Config;
use base64::Engine;
use serde_json::{Value, json};
use support::lmtp::RunningLmtp;
use support::plc::Plc;

/// The sender of the client's SignedData, and the recipient of its EnvelopedData.
const SENDER: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";
const RECIPIENT: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
const SMIME: &str = "did:plc:smimesmimesmimesmimesmim";
/// The From of smime-signed.eml.
const SMIME_FROM: &str = "plc.smimesmimesmimesmimesmim@example.net";
/// 2026-12-06: inside every test certificate's validity.
const NOW: i64 = 1_796_500_000;
const US: &str = "mx.example.net";

fn data(name: &str) -> Vec<u8> {
    std::fs::read(support::test_data("atsms-client").join(name)).unwrap()
}

fn text(name: &str) -> String {
    String::from_utf8(data(name)).unwrap().trim().to_string()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A directory (and PDS) where `did` publishes the device certificate `pem` under `fp`.
fn publish(plc: &Plc, did: &str, pem: &str, fp: &str) {
    plc.set_with_pds(did, &SigningKey::generate(Alg::Es256).unwrap(), None);
    plc.put_record(
        did,
        "at.atsms.x509",
        fp,
        json!({"$type": "at.atsms.x509", "certificate": pem, "serialNumber": "00", "createdAt": "2026-12-05T00:00:00Z"}),
    );
}

/// The OpenSSL-made device of smime-signed.eml, published by its DID.
fn publish_smime_device(plc: &Plc) {
    publish(
        plc,
        SMIME,
        &text("smime-device.crt.pem"),
        &text("smime-device.fp"),
    );
}

/// smime-signed.eml as sent, and with its signed text changed in transit.
fn smime_as_sent_and_altered() -> [Vec<u8>; 2] {
    let sent = data("smime-signed.eml");
    let altered = String::from_utf8(sent.clone())
        .unwrap()
        .replace("Signed by a device", "Signed by a forger")
        .into_bytes();
    [sent, altered]
}

/// Our field for the X.509 floor passing (`pass`) and failing (`fail`) for `did`, the
/// message from `from`.
fn assert_floor_pass_and_fail(pass: &str, fail: &str, from: &str, did: &str) {
    assert!(
        pass.contains(&format!(
            "atsms=pass header.from={from} policy.aligned=no policy.atsms-envelope=cms-signed header.d=\"{did}\""
        )),
        "{pass}"
    );
    assert!(
        fail.contains("atsms=fail reason=") && fail.contains(&format!("header.d=\"{did}\"")),
        "{fail}"
    );
}

fn run(plc: &Plc, command: &str, json: bool, input: &[u8]) -> (Output, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("input");
    std::fs::write(&file, input).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atsms-milter"));
    cmd.arg(command);
    if json {
        cmd.arg("--json");
    }
    let out = cmd
        .args([
            "--plc-url",
            &plc.url(),
            "--allow-private-addresses",
            "--now",
        ])
        .arg(NOW.to_string())
        .arg(&file)
        .output()
        .unwrap();
    let value = if json {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{e}: {} {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    } else {
        Value::Null
    };
    (out, value)
}

fn pem(der: &[u8]) -> Vec<u8> {
    let lines: Vec<String> = b64(der)
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    format!(
        "-----BEGIN PKCS7-----\n{}\n-----END PKCS7-----\n",
        lines.join("\n")
    )
    .into_bytes()
}

/// A mail carrying `bytes` as one base64 part of `content_type`, in lines of 76 as mail is
/// written (RFC 2045 §6.8).
fn mail_with_part(content_type: &str, bytes: &[u8]) -> Vec<u8> {
    let lines: Vec<String> = b64(bytes)
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    format!(
        "From: <a@example.net>\r\nTo: <did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@{US}>\r\nSubject: part\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

#[test]
fn the_clients_signed_data_passes_only_while_its_did_publishes_the_certificate() {
    let plc = Plc::start();
    let fp = text("sender.fp");
    publish(&plc, SENDER, &text("sender.crt.pem"), &fp);
    let signed = data("signed.der");

    for input in [signed.clone(), pem(&signed)] {
        let (out, v) = run(&plc, "verify-cms", true, &input);
        assert_eq!(out.status.code(), Some(0), "{v}");
        assert_eq!(v["result"], "pass");
        assert_eq!(v["did"], SENDER);
        assert_eq!(v["fingerprint"], fp.as_str());
        assert_eq!(v["published"], true);
        assert_eq!(v["reason"], Value::Null);
    }

    // One byte of the content changed: the signature no longer covers it.
    let content = data("signed.content");
    let at = signed
        .windows(content.len())
        .position(|w| w == content.as_slice())
        .unwrap();
    let mut tampered = signed.clone();
    tampered[at + content.len() - 1] ^= 0x01;
    let (out, v) = run(&plc, "verify-cms", true, &tampered);
    assert_eq!(
        (out.status.code(), v["result"].as_str()),
        (Some(1), Some("fail")),
        "{v}"
    );

    // The PDS cannot answer: temperror, whether it is published unknown.
    plc.set_pds_down(true);
    let (out, v) = run(&plc, "verify-cms", true, &signed);
    assert_eq!(out.status.code(), Some(75), "{v}");
    assert_eq!(v["result"], "temperror");
    assert_eq!(v["published"], Value::Null);
    plc.set_pds_down(false);

    // The record withdrawn: a certificate the DID does not publish vouches for nothing.
    plc.delete_record(SENDER, "at.atsms.x509", &fp);
    let (out, v) = run(&plc, "verify-cms", true, &signed);
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["result"], "permerror");
    assert_eq!(v["published"], false);
    assert_eq!(v["did"], SENDER);

    // Garbage is malformed, and costs no lookup.
    let before = plc.requests();
    let (out, v) = run(&plc, "verify-cms", true, b"\x30\x03\x02\x01\x01");
    assert_eq!(
        (out.status.code(), v["result"].as_str()),
        (Some(1), Some("permerror"))
    );
    assert_eq!(plc.requests(), before);
}

/// The signer is the certificate the SignerIdentifier names: another certificate placed first
/// in the set changes nothing, and a SignerIdentifier naming another certificate does not
/// verify with the signer's.
#[test]
fn the_signer_is_the_certificate_its_identifier_names() {
    use cms::cert::CertificateChoices;
    use cms::content_info::ContentInfo;
    use cms::signed_data::{SignedData, SignerIdentifier};
    use der::{Decode, DecodePem, Encode};

    let plc = Plc::start();
    publish(&plc, SENDER, &text("sender.crt.pem"), &text("sender.fp"));
    let other = x509_cert::Certificate::from_pem(data("recip.crt.pem")).unwrap();
    let info = ContentInfo::from_der(&data("signed.der")).unwrap();
    let signed: SignedData = info.content.decode_as().unwrap();
    let rebuild = |signed: &SignedData| {
        ContentInfo {
            content_type: info.content_type,
            content: der::Any::encode_from(signed).unwrap(),
        }
        .to_der()
        .unwrap()
    };

    let mut first = signed.clone();
    let mut set: Vec<CertificateChoices> = vec![CertificateChoices::Certificate(other.clone())];
    set.extend(first.certificates.take().unwrap().0.into_vec());
    first.certificates = Some(cms::signed_data::CertificateSet(
        der::asn1::SetOfVec::try_from(set).unwrap(),
    ));
    let (_, v) = run(&plc, "verify-cms", true, &rebuild(&first));
    assert_eq!(v["result"], "pass", "{v}");

    let mut misnamed = first.clone();
    let mut signers = misnamed.signer_infos.0.into_vec();
    signers[0].sid = SignerIdentifier::IssuerAndSerialNumber(cms::cert::IssuerAndSerialNumber {
        issuer: other.tbs_certificate().issuer().clone(),
        serial_number: other.tbs_certificate().serial_number().clone(),
    });
    misnamed.signer_infos =
        cms::signed_data::SignerInfos(der::asn1::SetOfVec::try_from(signers).unwrap());
    let (_, v) = run(&plc, "verify-cms", true, &rebuild(&misnamed));
    assert_ne!(v["result"], "pass", "{v}");
    assert_ne!(v["did"], SENDER, "{v}");

    let mut nobody = signed.clone();
    nobody.certificates = None;
    let (_, v) = run(&plc, "verify-cms", true, &rebuild(&nobody));
    assert_eq!(v["result"], "permerror", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("SignerIdentifier"),
        "{v}"
    );
}

#[test]
fn a_detached_s_mime_signature_with_signed_attributes_verifies() {
    let plc = Plc::start();
    publish_smime_device(&plc);
    let [message, altered] = smime_as_sent_and_altered();
    let (out, v) = run(&plc, "verify-cms", true, &message);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["result"], "pass");
    assert_eq!(v["did"], SMIME);

    // `verify` judges the message as the milter does (the same field).
    let (out, _) = run(&plc, "verify", false, &message);
    let field = String::from_utf8_lossy(&out.stdout).replace("\n\t", " ");
    assert!(
        field.contains(&format!(
            "atsms=pass header.from={SMIME_FROM} policy.aligned=no policy.atsms-envelope=cms-signed header.d=\"{SMIME}\""
        )),
        "{field}"
    );
    assert_eq!(out.status.code(), Some(0));

    // The signed text changed in transit: the message digest no longer matches.
    let (_, v) = run(&plc, "verify-cms", true, &altered);
    assert_eq!(v["result"], "fail", "{v}");
}

#[test]
fn verify_says_what_an_atsms_part_carries() {
    let plc = Plc::start();
    publish(&plc, SENDER, &text("sender.crt.pem"), &text("sender.fp"));
    let cases: [(Vec<u8>, &str, &str, i32); 5] = [
        (data("sample-atsms-envelope.eml"), "sealed", "none", 3),
        (
            mail_with_part(
                "application/pkcs7-mime; smime-type=enveloped-data; name=message.p7m",
                &data("oneshot.der"),
            ),
            "cms-enveloped",
            "none",
            3,
        ),
        (
            mail_with_part(
                "application/pkcs7-mime; smime-type=signed-data; name=message.p7m",
                &data("signed.der"),
            ),
            "cms-signed",
            "pass",
            0,
        ),
        (
            mail_with_part(
                "application/atsms-envelope",
                b"\x85\x01\x01\x01\x41\x00\x40",
            ),
            "malformed",
            "none",
            3,
        ),
        (
            mail_with_part("application/atsms-envelope", &data("signed.der")[..200]),
            "malformed",
            "none",
            3,
        ),
    ];
    for (message, envelope, result, code) in cases {
        let (out, v) = run(&plc, "verify", true, &message);
        assert_eq!(out.status.code(), Some(code), "{envelope}: {v}");
        let objects = v.as_array().unwrap();
        assert_eq!(objects.len(), 1, "{envelope}: {v}");
        assert_eq!(objects[0]["atsms_envelope"], envelope, "{v}");
        assert_eq!(objects[0]["result"], result, "{envelope}: {v}");
    }
    // A message with neither: still `[]`.
    let (out, v) = run(&plc, "verify", true, b"From: <a@example.net>\r\n\r\nhi\r\n");
    assert_eq!((out.status.code(), v), (Some(3), json!([])));
}

#[test]
fn an_enveloped_data_names_its_recipients_by_the_did_and_the_certificate_serial() {
    let recipients =
        atsms_milter::verification::atsms_parts::enveloped_recipients(&data("oneshot.der"))
            .unwrap();
    assert_eq!(
        recipients,
        vec![atsms_milter::verification::atsms_parts::Recipient {
            issuer_cn: Some(RECIPIENT.to_string()),
            serial: vec![
                0x0b, 0xe2, 0x3f, 0x11, 0xd3, 0x9b, 0xa7, 0xc0, 0xa8, 0x71, 0x2d, 0x3a, 0x79, 0x8e,
                0xf2, 0x0f
            ],
        }]
    );
    assert_eq!(
        atsms_milter::verification::atsms_parts::classify(&data("oneshot.der")),
        atsms_milter::verification::atsms_parts::EnvelopeKind::CmsEnveloped
    );
    assert_eq!(
        atsms_milter::verification::atsms_parts::classify(&data("envelope.cbor")),
        atsms_milter::verification::atsms_parts::EnvelopeKind::Sealed
    );
}

/// The recipient device's certificate fingerprint (its record key).
fn recipient_fp() -> String {
    "b8c287336496ab79c9c905291c01e639dc53a49dc80e36f206f1f81d702cbfc1".into()
}

async fn lmtp(plc: &Plc, records: bool) -> RunningLmtp {
    lmtp_with(plc, records, "").await
}

/// `extra`: more sections of the configuration.
async fn lmtp_with(plc: &Plc, records: bool, extra: &str) -> RunningLmtp {
    let toml = format!(
        "[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n[cache]\nfresh = 1\nmax_age = 1\nerror = 0\nnegative = 0\n[inbox]\nhosts = [\"{US}\"]\natsms_records = {records}\n[policy]\nauthserv_id = \"mx.test\"\n{extra}",
        plc.url()
    );
    RunningLmtp::start_with_config(&Config::from_toml(&toml, "test").unwrap(), NOW).await
}

async fn rcpt(server: &RunningLmtp, address: &str) -> String {
    let mut c = server.client().await;
    c.send(format!("LHLO x\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<{address}>\r\n").as_bytes())
        .await;
    c.replies(3).await.remove(2)
}

#[tokio::test]
async fn the_dids_inbox_record_and_a_published_device_are_consent() {
    let plc = Plc::start();
    let bang = format!("did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@{US}");
    let dotted = format!("did.plc.aaaaaaaaaaaaaaaaaaaaaaaa@{US}");
    // No #atsms_mail in the document: consent only by the records.
    publish(&plc, RECIPIENT, &text("recip.crt.pem"), &recipient_fp());
    let inbox = |uri: &str| json!({"$type": "at.atsms.inbox", "endpoints": [{"uri": "https://inbox.example.net/inbox"}, {"uri": uri}]});
    plc.put_record(
        RECIPIENT,
        "at.atsms.inbox",
        "self",
        inbox(&format!("mailto:{bang}")),
    );

    let server = lmtp(&plc, true).await;
    for address in [&bang, &dotted] {
        let reply = rcpt(&server, address).await;
        assert!(reply.starts_with("250 2.1.5"), "{address}: {reply}");
    }
    // Switched off: the document alone decides, and it names no host.
    let without = lmtp(&plc, false).await;
    assert!(rcpt(&without, &bang).await.starts_with("550 5.1.1"));

    // The record names a mailbox at another host: not this one.
    plc.put_record(
        RECIPIENT,
        "at.atsms.inbox",
        "self",
        inbox("mailto:did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@mx.other.example"),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = rcpt(&server, &bang).await;
    assert!(reply.starts_with("550 5.1.1"), "{reply}");

    // Named again, but no device published: no consent.
    plc.put_record(
        RECIPIENT,
        "at.atsms.inbox",
        "self",
        inbox(&format!("mailto:{bang}")),
    );
    plc.delete_record(RECIPIENT, "at.atsms.x509", &recipient_fp());
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = rcpt(&server, &bang).await;
    assert!(reply.starts_with("550 5.1.1"), "{reply}");

    // A certificate under a record key that is not its fingerprint is no device.
    plc.put_record(
        RECIPIENT,
        "at.atsms.x509",
        &"0".repeat(64),
        json!({"certificate": text("recip.crt.pem")}),
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = rcpt(&server, &bang).await;
    assert!(reply.starts_with("550 5.1.1"), "{reply}");

    // The PDS down, nothing cached: 4xx, never a refusal.
    let fresh = Plc::start();
    publish(&fresh, RECIPIENT, &text("recip.crt.pem"), &recipient_fp());
    fresh.put_record(
        RECIPIENT,
        "at.atsms.inbox",
        "self",
        inbox(&format!("mailto:{bang}")),
    );
    fresh.set_pds_down(true);
    let server = lmtp(&fresh, true).await;
    let reply = rcpt(&server, &bang).await;
    assert!(reply.starts_with("451 4.4.3"), "{reply}");
    fresh.set_pds_down(false);
    let reply = rcpt(&server, &bang).await;
    assert!(reply.starts_with("250 2.1.5"), "{reply}");
}

/// A client pointed at this host publishes its inbox as an `https:` endpoint only (it adds a
/// `mailto:` one only when it has one): the endpoint naming this host's inbox for the DID
/// (`xrpc.public_url` + `/inbox/` + the DID as `encodeURIComponent` writes it) is consent.
#[tokio::test]
async fn an_https_endpoint_naming_this_hosts_inbox_is_consent() {
    let plc = Plc::start();
    let bang = format!("did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@{US}");
    publish(&plc, RECIPIENT, &text("recip.crt.pem"), &recipient_fp());
    let only = |uri: &str| json!({"$type": "at.atsms.inbox", "endpoints": [{"uri": uri}]});
    let ours = "[xrpc]\npublic_url = \"https://Inbox.Example.net\"\n";
    for (endpoint, public_url, taken) in [
        (
            "https://inbox.example.net/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa",
            ours,
            true,
        ),
        // Host case, the default port, a DID written without encoding: the same URL.
        (
            "https://INBOX.example.net:443/inbox/did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
            ours,
            true,
        ),
        // Not configured: this host does not know its public name.
        (
            "https://inbox.example.net/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa",
            "",
            false,
        ),
        // Another host, another port, another DID, another path, plain HTTP.
        (
            "https://relay.example.org/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa",
            ours,
            false,
        ),
        (
            "https://inbox.example.net:8443/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa",
            ours,
            false,
        ),
        (
            "https://inbox.example.net/inbox/did%3Aplc%3Abbbbbbbbbbbbbbbbbbbbbbbb",
            ours,
            false,
        ),
        (
            "https://inbox.example.net/x/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa",
            ours,
            false,
        ),
        (
            "http://inbox.example.net/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa",
            ours,
            false,
        ),
    ] {
        plc.put_record(RECIPIENT, "at.atsms.inbox", "self", only(endpoint));
        let server = lmtp_with(&plc, true, public_url).await;
        let reply = rcpt(&server, &bang).await;
        let expected = if taken { "250 2.1.5" } else { "550 5.1.1" };
        assert!(
            reply.starts_with(expected),
            "{endpoint} ({public_url:?}): {reply}"
        );
    }
    // Named, but no device published: no consent, as for a mailto: endpoint.
    plc.put_record(
        RECIPIENT,
        "at.atsms.inbox",
        "self",
        only("https://inbox.example.net/inbox/did%3Aplc%3Aaaaaaaaaaaaaaaaaaaaaaaaa"),
    );
    plc.delete_record(RECIPIENT, "at.atsms.x509", &recipient_fp());
    let server = lmtp_with(&plc, true, ours).await;
    assert!(rcpt(&server, &bang).await.starts_with("550 5.1.1"));
}

/// A mail carrying `der` the way the AT-SMS client's SMTP form does: one base64 part, lines
/// of 76.
fn client_mail(der: &[u8]) -> Vec<u8> {
    let lines: Vec<String> = b64(der)
        .as_bytes()
        .chunks(76)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    format!(
        "From: <plc.ewvi7nxzyoun6zhxrhs64oiz@demo.atsms.at>\r\nTo: <bob@{US}>\r\nSubject: ATSMS\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: application/pkcs7-mime; smime-type=signed-data; name=\"message.p7m\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

#[tokio::test]
async fn lmtp_verifies_the_x509_floor_as_a_signature_with_its_did() {
    let plc = Plc::start();
    publish(&plc, SENDER, &text("sender.crt.pem"), &text("sender.fp"));
    publish_smime_device(&plc);
    let toml = format!(
        "[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n[inbox]\nhosts = [\"{US}\"]\n[policy]\nauthserv_id = \"mx.test\"\non_fail = \"accept\"\non_none = \"accept\"\n",
        plc.url()
    );
    let server =
        RunningLmtp::start_with_config(&Config::from_toml(&toml, "test").unwrap(), NOW).await;
    let signed = data("signed.der");
    let content = data("signed.content");
    let at = signed
        .windows(content.len())
        .position(|w| w == content.as_slice())
        .unwrap();
    let mut tampered = signed.clone();
    tampered[at + 3] ^= 0x20;
    // A detached S/MIME signature by a device (multipart/signed), as sent and altered.
    let [smime, smime_altered] = smime_as_sent_and_altered();
    for message in [
        client_mail(&signed),
        client_mail(&tampered),
        data("sample-atsms-envelope.eml"),
        smime,
        smime_altered,
    ] {
        let mut c = server.client().await;
        c.send(
            format!("LHLO x\r\nMAIL FROM:<x@demo.atsms.at>\r\nRCPT TO:<bob@{US}>\r\nDATA\r\n")
                .as_bytes(),
        )
        .await;
        c.replies(4).await;
        c.send(&support::lmtp::dot_stuffed(&message)).await;
        let reply = c.reply().await;
        assert!(reply.starts_with("250 "), "{reply}");
    }
    let stored: Vec<String> = RunningLmtp::new_files(&server.maildir("bob"))
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(m).into_owned();
            let start = text.find("Authentication-Results:").unwrap();
            let end = text[start..].find("\nFrom:").unwrap();
            text[start..start + end].replace("\n\t", " ")
        })
        .collect();
    assert_eq!(stored.len(), 5);
    assert_floor_pass_and_fail(
        &stored[0],
        &stored[1],
        "plc.ewvi7nxzyoun6zhxrhs64oiz@demo.atsms.at",
        SENDER,
    );
    assert_eq!(
        stored[2], "Authentication-Results: mx.test; atsms=none policy.atsms-envelope=sealed",
        "{stored:?}"
    );
    assert_floor_pass_and_fail(&stored[3], &stored[4], SMIME_FROM, SMIME);
}

#[tokio::test]
async fn an_enveloped_data_is_taken_only_for_a_device_its_did_publishes() {
    // A mailbox that does not exist is not policy: a dry run refuses it all the same.
    for dry_run in [false, true] {
        enveloped_data_for(dry_run).await;
    }
}

async fn enveloped_data_for(dry_run: bool) {
    let plc = Plc::start();
    let bang = format!("did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@{US}");
    publish(&plc, RECIPIENT, &text("recip.crt.pem"), &recipient_fp());
    plc.put_record(
        RECIPIENT,
        "at.atsms.inbox",
        "self",
        json!({"endpoints": [{"uri": format!("mailto:{bang}")}]}),
    );
    let toml = format!(
        "[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n[inbox]\nhosts = [\"{US}\"]\n[policy]\nauthserv_id = \"mx.test\"\non_none = \"accept\"\ndry_run = {dry_run}\n",
        plc.url()
    );
    let server =
        RunningLmtp::start_with_config(&Config::from_toml(&toml, "test").unwrap(), NOW).await;
    let enveloped = data("oneshot.der");
    // The same envelope, its recipient entry naming a serial the DID does not publish.
    let serial = [
        0x0b, 0xe2, 0x3f, 0x11, 0xd3, 0x9b, 0xa7, 0xc0, 0xa8, 0x71, 0x2d, 0x3a, 0x79, 0x8e, 0xf2,
        0x0f,
    ];
    let at = enveloped.windows(16).position(|w| w == serial).unwrap();
    let mut elsewhere = enveloped.clone();
    elsewhere[at + 15] ^= 0x01;
    let mail = |der: &[u8]| {
        String::from_utf8(client_mail(der))
            .unwrap()
            .replace("smime-type=signed-data", "smime-type=enveloped-data")
            .replace(&format!("bob@{US}"), &bang)
            .into_bytes()
    };
    let mut replies = Vec::new();
    for der in [&enveloped, &elsewhere] {
        let mut c = server.client().await;
        c.send(
            format!("LHLO x\r\nMAIL FROM:<x@demo.atsms.at>\r\nRCPT TO:<{bang}>\r\nDATA\r\n")
                .as_bytes(),
        )
        .await;
        let before = c.replies(4).await;
        assert!(before[2].starts_with("250 2.1.5"), "{before:?}");
        c.send(&support::lmtp::dot_stuffed(&mail(der))).await;
        replies.push(c.reply().await);
    }
    assert!(replies[0].starts_with("250 "), "{replies:?}");
    assert!(
        replies[1].starts_with("550 5.1.1"),
        "dry run {dry_run}: {replies:?}"
    );
    let folder = server
        .dir
        .path()
        .join(US)
        .join("did.plc.aaaaaaaaaaaaaaaaaaaaaaaa")
        .join("Maildir");
    let stored = RunningLmtp::new_files(&folder);
    assert_eq!(stored.len(), 1);
    let stored = String::from_utf8_lossy(&stored[0]).into_owned();
    assert!(
        stored.contains(
            "Authentication-Results: mx.test; atsms=none policy.atsms-consent=yes policy.atsms-envelope=cms-enveloped\n"
        ),
        "{stored}"
    );
}

/// One HTTP/1.1 POST on a fresh connection: the status and the JSON answer.
fn post(port: u16, path: &str, body: &str) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: inbox.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
    let json = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[test]
fn the_https_inbox_stores_an_envelope_once_as_the_smtp_path_does() {
    use support::daemon::Daemon;
    use support::postfix::free_port;
    let plc = Plc::start();
    let bang = format!("did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@{US}");
    publish(&plc, RECIPIENT, &text("recip.crt.pem"), &recipient_fp());
    plc.put_record(
        RECIPIENT,
        "at.atsms.inbox",
        "self",
        json!({"endpoints": [{"uri": "https://inbox.test/inbox"}, {"uri": format!("mailto:{bang}")}]}),
    );
    let stranger = support::ids::plc_did(77);
    plc.set_with_pds(&stranger, &SigningKey::generate(Alg::Es256).unwrap(), None);
    let dir = support::public_tempdir();
    let port = free_port();
    let config = format!(
        "[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\ninbox = true\n\n[lmtp]\nmaildir = \"{0}/%d/%n/Maildir\"\nmax_message_size = 100000\n\n[inbox]\nhosts = [\"{US}\"]\nstore = \"{0}/inbox\"\n\n[resolver]\nplc_urls = [\"{1}\"]\nallow_private_addresses = true\n\n[reputation]\nrate_limit = 4\n\n[policy]\nauthserv_id = \"mx.test\"\n\n[store]\njti_file = \"{0}/jti\"\n\n[log]\nlevel = \"debug\"\n",
        dir.path().display(),
        plc.url()
    );
    let daemon = Daemon::start(&config, port);
    let folder = dir
        .path()
        .join(US)
        .join("did.plc.aaaaaaaaaaaaaaaaaaaaaaaa")
        .join("Maildir");
    let body = |bytes: &[u8]| json!({"envelope": b64(bytes)}).to_string();
    let to = format!("/inbox/{RECIPIENT}");

    let sealed = data("envelope.cbor");
    let (status, answer) = post(port, &to, &body(&sealed));
    assert_eq!(status, 202, "{answer} {}", daemon.log());
    assert_eq!(answer["stored"], true);
    // The same envelope again (a client retrying): accepted, stored once.
    let (status, again) = post(port, &to, &body(&sealed));
    assert_eq!((status, &again["stored"]), (202, &json!(false)));
    assert_eq!(again["sha256"], answer["sha256"]);
    let stored = RunningLmtp::new_files(&folder);
    assert_eq!(stored.len(), 1);
    let stored = String::from_utf8_lossy(&stored[0]).into_owned();
    assert!(
        stored.contains("Authentication-Results: mx.test; atsms=none policy.atsms-consent=yes policy.atsms-envelope=sealed\n"),
        "{stored}"
    );
    assert!(stored.contains("Content-Type: application/atsms-envelope"));
    let kept: String = stored
        .split("base64\n\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.starts_with("--"))
        .collect();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(kept)
            .unwrap(),
        sealed,
        "the envelope byte for byte"
    );
    assert!(
        !stored.contains("127.0.0.1"),
        "the poster's address is not kept: {stored}"
    );
    let log = daemon.log_with("inbox: stored ");
    assert!(log.contains("inbox: stored "), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains("inbox") && l.contains("127.0.0.1:")),
        "nor logged with it: {log}"
    );

    // The client's EnvelopedData, encrypted to the recipient's device.
    let (status, _) = post(port, &to, &body(&data("oneshot.der")));
    assert_eq!(status, 202);
    // What is not an envelope; a DID with no inbox here; too large; malformed requests.
    assert_eq!(post(port, &to, &body(b"hello")).0, 400);
    assert_eq!(post(port, &to, "{\"envelope\": 5}").0, 400);
    assert_eq!(
        post(port, &format!("/inbox/{stranger}"), &body(&sealed)).0,
        404
    );
    assert_eq!(post(port, "/inbox/not-a-did", &body(&sealed)).0, 404);
    let mut huge = vec![0x85, 0x01, 0x01, 0x01, 0x58, 0x20];
    huge.extend([7u8; 32]);
    huge.extend([0x5a, 0x00, 0x01, 0x86, 0xa0]);
    huge.extend(vec![0u8; 100_000]);
    assert_eq!(post(port, &to, &body(&huge)).0, 413);

    // The recipient's rate (4 an hour): two stored so far, two more, then 429.
    let distinct = |n: u8| {
        let mut e = vec![0x85, 0x01, 0x01, 0x01, 0x58, 0x20];
        e.extend([n; 32]);
        e.extend([0x41, n]);
        e
    };
    assert_eq!(post(port, &to, &body(&distinct(1))).0, 202);
    assert_eq!(post(port, &to, &body(&distinct(2))).0, 202);
    assert_eq!(post(port, &to, &body(&distinct(3))).0, 429);
    assert_eq!(RunningLmtp::new_files(&folder).len(), 4);

    // The PDS down for a DID not seen yet: 503, not a refusal.
    let later = support::ids::plc_did(78);
    plc.set_with_pds(&later, &SigningKey::generate(Alg::Es256).unwrap(), None);
    plc.set_pds_down(true);
    assert_eq!(
        post(port, &format!("/inbox/{later}"), &body(&sealed)).0,
        503
    );
    plc.set_pds_down(false);
}

#[tokio::test]
async fn the_milter_verifies_a_detached_s_mime_signature_by_a_device() {
    let plc = Plc::start();
    publish_smime_device(&plc);
    let toml = format!(
        "[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n[policy]\nauthserv_id = \"mx.test\"\non_fail = \"accept\"\n",
        plc.url()
    );
    let milter = support::milter::RunningMilter::start_with_config(
        &Config::from_toml(&toml, "test").unwrap(),
        NOW,
    )
    .await;
    let mut fields = Vec::new();
    for message in &smime_as_sent_and_altered() {
        let mut conn = support::milter::open_client(milter.addr).await;
        let (actions, _) = support::milter::send(&mut conn, message).await;
        fields.push(support::milter::inserted_field(&actions).replace("\n\t", " "));
    }
    assert_floor_pass_and_fail(&fields[0], &fields[1], SMIME_FROM, SMIME);
    milter.stop().await;
}

/// A SignedData by a certificate its DID does not publish: `permerror`, and `header.d` names
/// the DID the certificate claims, as a failing DKIM signature's `d=` is reported (RFC 8601
/// §2.7.1 and RFC 6376 §6.1: the property says who the signature claims, the result whether
/// that held). A reader trusts `header.d` only beside `atsms=pass` (docs/atsms.md).
#[tokio::test]
async fn an_unpublished_certificate_is_permerror_and_header_d_names_the_did_it_claims() {
    let plc = Plc::start(); // nothing published
    let toml = format!(
        "[resolver]\nplc_urls = [\"{}\"]\nallow_private_addresses = true\n[policy]\nauthserv_id = \"mx.test\"\non_permerror = \"accept\"\n",
        plc.url()
    );
    let milter = support::milter::RunningMilter::start_with_config(
        &Config::from_toml(&toml, "test").unwrap(),
        NOW,
    )
    .await;
    let mut conn = support::milter::open_client(milter.addr).await;
    let (actions, _) = support::milter::send(&mut conn, &data("smime-signed.eml")).await;
    let field = support::milter::inserted_field(&actions).replace("\n\t", " ");
    assert!(
        field.contains("atsms=permerror reason=\"certificate not published")
            && field.ends_with(&format!("header.d=\"{SMIME}\"")),
        "{field}"
    );
    milter.stop().await;
}

/// An envelope is either stored or not acknowledged, whatever is cancelled when. Its store
/// takes longer than `xrpc.timeout` (the signer's PDS, asked by the X.509 floor, answers
/// slowly), or the client hangs up: the POST is answered 503 (or not at all), the storing
/// goes on, and a retry is told it is stored — and it is, once. (The storing once ran inside
/// the request: cancelled half-way, it left the envelope marked in flight, and every retry
/// was told "stored" while nothing ever was.)
#[test]
fn an_envelope_is_stored_or_not_acknowledged_whatever_is_cancelled() {
    use support::daemon::Daemon;
    use support::postfix::free_port;
    let plc = Plc::start();
    publish(&plc, SENDER, &text("sender.crt.pem"), &text("sender.fp"));
    publish(&plc, RECIPIENT, &text("recip.crt.pem"), &recipient_fp());
    let bang = format!("did!plc!aaaaaaaaaaaaaaaaaaaaaaaa@{US}");
    plc.put_record(
        RECIPIENT,
        "at.atsms.inbox",
        "self",
        json!({"endpoints": [{"uri": format!("mailto:{bang}")}]}),
    );
    let dir = support::public_tempdir();
    let port = free_port();
    let daemon = Daemon::start(
        &format!(
            "[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\ninbox = true\ntimeout = 1\n[lmtp]\nmaildir = \"{0}/%d/%n/Maildir\"\n[inbox]\nhosts = [\"{US}\"]\nstore = \"{0}/inbox\"\n[resolver]\nplc_urls = [\"{1}\"]\nallow_private_addresses = true\n[policy]\nauthserv_id = \"mx.test\"\n[store]\njti_file = \"{0}/jti\"\n",
            dir.path().display(),
            plc.url()
        ),
        port,
    );
    let folder = dir
        .path()
        .join(US)
        .join("did.plc.aaaaaaaaaaaaaaaaaaaaaaaa")
        .join("Maildir");
    let to = format!("/inbox/{RECIPIENT}");
    let body = |bytes: &[u8]| json!({"envelope": b64(bytes)}).to_string();
    // The recipient's consent is cached; then its PDS (the signer's too) turns slow.
    assert_eq!(post(port, &to, &body(&data("envelope.cbor"))).0, 202);
    plc.set_pds_delay(Duration::from_millis(2500));

    // Past xrpc.timeout: not acknowledged.
    let signed = data("signed.der");
    let (status, answer) = post(port, &to, &body(&signed));
    assert_eq!(status, 503, "{answer}");
    // The client that hangs up as soon as it has sent its POST.
    let mut tampered = signed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1; // another envelope (its signature fails: stored, judged so)
    {
        use std::io::Write;
        let text = body(&tampered);
        let mut gone = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            gone,
            "POST {to} HTTP/1.1\r\nHost: inbox.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )
        .unwrap();
    }
    // The one past the timeout went on and was stored: a retry is told so. The one whose
    // client hung up was stored, or was never begun (dropped before it was handed to its
    // task): either way its retry is acknowledged only once it is stored, and one copy of
    // each is kept.
    std::thread::sleep(Duration::from_secs(4));
    plc.set_pds_delay(Duration::ZERO);
    let (status, answer) = post(port, &to, &body(&signed));
    assert_eq!(
        (status, &answer["stored"]),
        (202, &json!(false)),
        "{answer}"
    );
    let (status, answer) = post(port, &to, &body(&tampered));
    assert_eq!(status, 202, "{answer}");
    let (status, answer) = post(port, &to, &body(&tampered));
    assert_eq!(
        (status, &answer["stored"]),
        (202, &json!(false)),
        "{answer}"
    );
    let stored = RunningLmtp::new_files(&folder);
    assert_eq!(stored.len(), 3, "{}", daemon.log());
    let with = |kind: &str| {
        stored
            .iter()
            .filter(|m| String::from_utf8_lossy(m).contains(kind))
            .count()
    };
    assert_eq!(with("policy.atsms-envelope=cms-signed"), 2);
}

/// `atsms-milter open --json --device DEVICE FILE` against `plc` (as of `now`, when given): the
/// exit status and the JSON.
fn open_json(
    plc: &Plc,
    device: &std::path::Path,
    file: &std::path::Path,
    now: Option<i64>,
) -> (Option<i32>, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_atsms-milter"));
    cmd.args(["open", "--json", "--device"]).arg(device).args([
        "--plc-url",
        &plc.url(),
        "--allow-private-addresses",
    ]);
    if let Some(now) = now {
        cmd.args(["--now", &now.to_string()]);
    }
    let out = cmd.arg(file).output().unwrap();
    let value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), value)
}

/// `atsms-milter ARGS`, which must succeed: the JSON it prints.
fn run_ok(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `atsms-milter device new --did DID --receive --out DIR`: what it prints.
fn device_new(did: &str, dir: &std::path::Path) -> Value {
    let dir = dir.to_str().unwrap();
    run_ok(&["device", "new", "--did", did, "--receive", "--out", dir])
}

/// A device directory as `device new --receive` makes it: the recipient device of the client's
/// artefacts (its key, its prekey secret), each readable by its owner only.
fn recipient_device() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("device.key", data("recip.key.pem")),
        ("prekey-2026-12-01T00:00:00.000Z.key", data("prekey.sk")),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    dir
}

/// `open` with the device's directory: the client's envelope opens layer by layer (the sealed
/// envelope with the prekey, the EnvelopedData with the device key, the SignedData by the X.509
/// floor) to the sender and the text — proof that this project reads the client's layers as
/// the client writes them. `ok` only while the sender's certificate is published.
#[test]
fn open_reads_the_clients_envelope_as_its_recipient_device() {
    let plc = Plc::start();
    publish(&plc, SENDER, &text("sender.crt.pem"), &text("sender.fp"));
    let device = recipient_device();
    let open = |input: &[u8]| {
        let file = device.path().join("input");
        std::fs::write(&file, input).unwrap();
        open_json(&plc, device.path(), &file, Some(NOW))
    };
    let (code, v) = open(&data("envelope.cbor"));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["sender_did"], SENDER);
    assert_eq!(v["sender_fingerprint"], text("sender.fp"));
    assert_eq!(v["content_type"], 2);
    assert!(v["text"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    // The bare EnvelopedData, as a device without a prekey is sent it.
    let (code, v) = open(&data("oneshot.der"));
    assert_eq!((code, v["ok"].clone()), (Some(0), json!(true)), "{v}");
    assert_eq!(v["text"], "hello from the real ATSMS client code");
    // Tampered: not opened.
    let mut bad = data("envelope.cbor");
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let (code, v) = open(&bad);
    assert_eq!((code, v["ok"].clone()), (Some(1), json!(false)), "{v}");
    // The sender's certificate withdrawn: opened, but not ok.
    plc.delete_record(SENDER, "at.atsms.x509", &text("sender.fp"));
    let (code, v) = open(&data("envelope.cbor"));
    assert_eq!((code, v["ok"].clone()), (Some(1), json!(false)), "{v}");
    assert_eq!(v["sender_did"], SENDER);
    // A key others can read is refused.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        device.path().join("device.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (_, v) = open(&data("envelope.cbor"));
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("readable by others")),
        "{v}"
    );
}

/// `device new`: a device as the client makes one — its fingerprint what the AT-SMS spec's own
/// OpenSSL pipeline computes, keys readable by their owner only, the X25519 prekey readable by
/// OpenSSL, `bundleSig` verifying with the device key over the record's own strings — and
/// the printed `at.atsms.x509` record, published as printed, makes a SignedData OpenSSL signs
/// with the device pass the X.509 floor. `device rotate` keeps three prekeys.
#[test]
fn device_new_makes_what_the_client_publishes_and_openssl_signs_with_it() {
    use std::os::unix::fs::PermissionsExt;
    let plc = Plc::start();
    plc.set_with_pds(SENDER, &SigningKey::generate(Alg::Es256).unwrap(), None);
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("alice");
    let run = run_ok;
    let made = run(&[
        "device",
        "new",
        "--did",
        SENDER,
        "--out",
        device.to_str().unwrap(),
        "--receive",
    ]);
    let fp = made["fingerprint"].as_str().unwrap().to_string();
    let mode = |name: &str| {
        std::fs::metadata(device.join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("device.key"), 0o600);
    let openssl = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&device)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let theirs = openssl(
        "openssl x509 -in device.crt -pubkey -noout | openssl pkey -pubin -outform DER | tail -c 65 | sha256sum",
    );
    assert!(theirs.starts_with(&fp), "{theirs} {fp}");
    let text = openssl("openssl x509 -in device.crt -noout -text");
    assert!(
        text.contains(&format!("URI:at://{SENDER}/at.atsms.x509/{fp}")),
        "{text}"
    );
    assert!(
        text.contains("CA:FALSE") && text.contains("Key Agreement"),
        "{text}"
    );
    assert!(openssl("openssl pkey -in prekey-*.key -noout -text").contains("X25519"));

    // bundleSig: ECDSA P-256 by the device key over the CBOR array of the record's values.
    let prekey = &made["records"]["at.atsms.prekey"];
    let bytes = |v: &Value| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(v["$bytes"].as_str().unwrap())
            .unwrap()
    };
    let input = atsms_milter::atproto::device::bundle_input(
        &bytes(&prekey["signedPrekey"]).try_into().unwrap(),
        &bytes(&prekey["signingPk"]).try_into().unwrap(),
        prekey["createdAt"].as_str().unwrap(),
        prekey["expiresAt"].as_str().unwrap(),
    );
    let cert_pem = std::fs::read_to_string(device.join("device.crt")).unwrap();
    let cert = <x509_cert::Certificate as der::DecodePem>::from_pem(&cert_pem).unwrap();
    let point = cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&bytes(&prekey["bundleSig"])).unwrap();
    use p256::ecdsa::signature::Verifier as _;
    verifying
        .verify(&input, &signature)
        .expect("bundleSig verifies");

    // Published as printed: OpenSSL's SignedData by the device passes the floor.
    plc.put_record(
        SENDER,
        "at.atsms.x509",
        &fp,
        made["records"]["at.atsms.x509"].clone(),
    );
    std::fs::write(device.join("content"), b"hello").unwrap();
    openssl(
        "openssl cms -sign -binary -nodetach -noattr -md sha256 -in content -signer device.crt -inkey device.key -outform DER -out signed.der",
    );
    let (out, v) = run_cms(&plc, &std::fs::read(device.join("signed.der")).unwrap());
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(
        (v["result"].as_str(), v["did"].as_str()),
        (Some("pass"), Some(SENDER))
    );
    assert_eq!(v["fingerprint"], fp);

    // Three prekeys kept: the new one and the two before it.
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let rotated = run(&["device", "rotate", device.to_str().unwrap()]);
        assert_eq!(rotated["fingerprint"], fp);
    }
    let prekeys = std::fs::read_dir(&device)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("prekey-")
        })
        .count();
    assert_eq!(prekeys, 3);
}

/// `verify-cms --json` of `der` against `plc`, as of now (the device was made now).
fn run_cms(plc: &Plc, der: &[u8]) -> (Output, Value) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("signed.der");
    std::fs::write(&file, der).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .args([
            "verify-cms",
            "--json",
            "--plc-url",
            &plc.url(),
            "--allow-private-addresses",
        ])
        .arg(&file)
        .output()
        .unwrap();
    let value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, value)
}

/// What this project seals, layer by layer as the client does (content v2 → SignedData by the
/// sender's device → EnvelopedData to the recipient's device → HPKE to its prekey), opens with
/// `open` as the recipient device (sender published: ok, the text back); OpenSSL decrypts the
/// EnvelopedData with the recipient's key and verifies the SignedData inside — an
/// implementation not ours reads each CMS layer.
#[test]
fn what_is_sealed_here_opens_with_open_and_its_cms_with_openssl() {
    use atsms_milter::format::{atsms_content, enveloped, sealed, signed};
    let plc = Plc::start();
    let dir = tempfile::tempdir().unwrap();
    let make = |did: &str, name: &str| device_new(did, &dir.path().join(name));
    let (sender, recipient) = (make(SENDER, "sender"), make(RECIPIENT, "recipient"));
    plc.set_with_pds(SENDER, &SigningKey::generate(Alg::Es256).unwrap(), None);
    plc.put_record(
        SENDER,
        "at.atsms.x509",
        sender["fingerprint"].as_str().unwrap(),
        sender["records"]["at.atsms.x509"].clone(),
    );
    let cert = |name: &str| {
        let pem = std::fs::read_to_string(dir.path().join(name).join("device.crt")).unwrap();
        <x509_cert::Certificate as der::DecodePem>::from_pem(&pem).unwrap()
    };
    let key_pem = std::fs::read_to_string(dir.path().join("sender/device.key")).unwrap();
    let key = <p256::ecdsa::SigningKey as p256::pkcs8::DecodePrivateKey>::from_pkcs8_pem(&key_pem)
        .unwrap();
    let content = atsms_content::encode_text(
        SENDER,
        &[RECIPIENT.to_string()],
        "sealed here, opened there",
        1_765_000_000_000,
        [3; 16],
    );
    let signed_der = signed::sign(&content, &cert("sender"), &key).unwrap();
    let enveloped_der = enveloped::encrypt(&signed_der, &[cert("recipient")]).unwrap();
    let prekey = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(
            recipient["records"]["at.atsms.prekey"]["signedPrekey"]["$bytes"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    let sealed_bytes = sealed::seal(&prekey, sealed::CONTENT_CMS, &enveloped_der).unwrap();
    std::fs::write(dir.path().join("enveloped.der"), &enveloped_der).unwrap();
    // `open` as the recipient device of what is written to `name`.
    let open_as_recipient = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        open_json(
            &plc,
            &dir.path().join("recipient"),
            &dir.path().join(name),
            None,
        )
    };

    let (code, v) = open_as_recipient("sealed.cbor", &sealed_bytes);
    assert_eq!((code, v["ok"].clone()), (Some(0), json!(true)), "{v}");
    assert_eq!(v["sender_did"], SENDER);
    assert_eq!(v["text"], "sealed here, opened there");
    // Signed by the sender, but its conversation id is another sender's (a message replayed
    // into another thread): the client drops it, so `open` says not ok and shows no text.
    let forged = atsms_content::encode_text(
        "did:plc:someoneelsesomeoneelseso",
        &[RECIPIENT.to_string()],
        "not my thread",
        1_765_000_000_000,
        [4; 16],
    );
    let forged = signed::sign(&forged, &cert("sender"), &key).unwrap();
    let forged = atsms_milter::format::one_shot::seal_for(
        &forged,
        &atsms_milter::format::one_shot::Device {
            certificate: &cert("recipient"),
            prekey: &prekey.clone().try_into().unwrap(),
        },
    )
    .unwrap();
    let (code, v) = open_as_recipient("forged.cbor", &forged);
    assert_eq!((code, v["ok"].clone()), (Some(1), json!(false)), "{v}");
    assert_eq!(v["text"], Value::Null);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("conversation id")),
        "{v}"
    );

    let openssl = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let inner = openssl(
        "openssl cms -decrypt -inform DER -in enveloped.der -recip recipient/device.crt -inkey recipient/device.key -binary",
    );
    assert_eq!(inner, signed_der, "OpenSSL decrypts to the SignedData");
    std::fs::write(dir.path().join("signed.der"), &inner).unwrap();
    let verified = openssl(
        "openssl cms -verify -inform DER -in signed.der -binary -CAfile sender/device.crt -purpose any",
    );
    assert_eq!(
        verified, content,
        "OpenSSL verifies the signature and gives the content"
    );
}

/// The devices a sender seals to: each current device of the recipient with its prekey
/// checked as the client's sender checks it — one published by `device new --receive` counts,
/// a device without a prekey record or with a forged one gets none (and is said why).
#[tokio::test]
async fn a_recipients_devices_are_sealed_to_only_with_a_valid_prekey() {
    use atsms_milter::atproto::identity::IdentityResolver;
    use atsms_milter::atproto::identity::inbox::NoPrekey;
    use atsms_milter::infra::config::{CacheConfig, ResolverConfig};
    let plc = Plc::start();
    plc.set_with_pds(RECIPIENT, &SigningKey::generate(Alg::Es256).unwrap(), None);
    let dir = tempfile::tempdir().unwrap();
    let mut fingerprints = Vec::new();
    for (name, prekey) in [
        ("good", "as made"),
        ("none", "absent"),
        ("forged", "forged"),
    ] {
        let made = device_new(RECIPIENT, &dir.path().join(name));
        let fp = made["fingerprint"].as_str().unwrap().to_string();
        plc.put_record(
            RECIPIENT,
            "at.atsms.x509",
            &fp,
            made["records"]["at.atsms.x509"].clone(),
        );
        let mut record = made["records"]["at.atsms.prekey"].clone();
        match prekey {
            "absent" => {}
            "forged" => {
                record["expiresAt"] = json!("2099-01-01T00:00:00.000Z");
                plc.put_record(RECIPIENT, "at.atsms.prekey", &fp, record);
            }
            _ => plc.put_record(RECIPIENT, "at.atsms.prekey", &fp, record),
        }
        fingerprints.push((
            fp,
            made["records"]["at.atsms.prekey"]["signedPrekey"]["$bytes"].clone(),
        ));
    }
    let config = ResolverConfig {
        plc_urls: vec![plc.url().parse().unwrap()],
        allow_private_addresses: true,
        ..Default::default()
    };
    let resolver = Arc::new(IdentityResolver::new(&config, &CacheConfig::default()).unwrap());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let devices = resolver.device_prekeys(RECIPIENT, now, 100).await.unwrap();
    assert_eq!(devices.len(), 3);
    let of = |fp: &str| {
        devices
            .iter()
            .find(|(d, _)| d.fingerprint == fp)
            .unwrap()
            .1
            .clone()
    };
    let good = of(&fingerprints[0].0).expect("the good device's prekey");
    assert_eq!(
        json!(base64::engine::general_purpose::STANDARD_NO_PAD.encode(good.key)),
        fingerprints[0].1
    );
    assert_eq!(
        of(&fingerprints[1].0),
        Err(NoPrekey::Invalid("no prekey record".to_string()))
    );
    assert!(
        of(&fingerprints[2].0)
            .unwrap_err()
            .to_string()
            .contains("bundleSig")
    );
}
