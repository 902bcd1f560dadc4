//! Keys, DID documents and signed messages made on the spot, for tests that run their own
//! loopback directory.

use atsms_milter::format::crypto::SigningKey;
use atsms_milter::format::envelope::sign;
use atsms_milter::format::message::read_message;

/// The vectors' verification time; in-process servers are given it as their clock.
pub const NOW: i64 = 1_795_000_000;

/// A DID document with one `#atproto` Multikey for `key`, and a PDS when given.
pub fn document(did: &str, key: &SigningKey, pds: Option<&str>) -> String {
    let mut doc = serde_json::json!({
        "id": did,
        "alsoKnownAs": [],
        "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": did, "publicKeyMultibase": key.public_key().to_multikey()}],
    });
    if let Some(pds) = pds {
        doc["service"] = serde_json::json!([{"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds}]);
    }
    doc.to_string()
}

/// A small message signed as of `now` by `key` under `kid` (`DID#atproto` or a device URI).
pub fn signed_message(key: &SigningKey, kid: &str, now: i64) -> Vec<u8> {
    let body = b"From: someone@example.com\r\nSubject: test\r\n\r\nhello\r\n";
    let parsed = read_message(&body[..]).unwrap();
    let request = sign::SignRequest {
        key,
        kid,
        now,
        ttl: 3600,
        rcpt: &[],
        jti: sign::random_jti(),
    };
    let token = sign::sign_token(&request, &parsed.headers, parsed.body_hash).unwrap();
    let did = kid
        .trim_start_matches("at://")
        .split(['#', '/'])
        .next()
        .unwrap();
    [
        sign::format_field(did, &token, "\r\n").into_bytes(),
        b"\r\n".to_vec(),
        body.to_vec(),
    ]
    .concat()
}

/// `signed_message` by the `#atproto` key of `did` at `NOW`.
pub fn signed(key: &SigningKey, did: &str) -> Vec<u8> {
    signed_message(key, &format!("{did}#atproto"), NOW)
}

/// Every signature's verdict for a raw message, judged as of `now` with no recipients known.
pub async fn verify_at(
    verifier: &atsms_milter::verification::verify::Verifier,
    message: &[u8],
    now: i64,
) -> Vec<atsms_milter::verification::verify::SignatureVerdict> {
    let parsed = read_message(message).unwrap();
    let context = atsms_milter::verification::verify::Context {
        now,
        recipients: &[],
    };
    verifier
        .verify(&parsed.headers, &parsed.body_hash, &context)
        .await
        .signatures
}

/// The top signature's verdict, as of `NOW`.
pub async fn verify_first(
    verifier: &atsms_milter::verification::verify::Verifier,
    message: &[u8],
) -> atsms_milter::verification::verify::SignatureVerdict {
    verify_at(verifier, message, NOW).await.remove(0)
}
