//! The official atproto interop fixtures (tests/data/atproto), read in place.

use atsms_testkit as support;

use atsms_milter::format::crypto::{Alg, PublicKey, SignatureError, SigningKey};
use atsms_milter::format::syntax;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use serde_json::Value;

fn fixture(path: &str) -> Value {
    serde_json::from_slice(&std::fs::read(support::test_data("atproto").join(path)).unwrap())
        .unwrap()
}

/// One case per line; `#` lines and blank lines skipped, nothing trimmed (some invalid cases
/// have deliberate leading or trailing spaces).
fn lines(path: &str) -> Vec<String> {
    let text = std::fs::read_to_string(support::test_data("atproto").join(path)).unwrap();
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn signature_fixtures() {
    let cases = fixture("crypto/signature-fixtures.json");
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let comment = case["comment"].as_str().unwrap();
        let alg = Alg::from_jws(case["algorithm"].as_str().unwrap()).unwrap();
        let message = STANDARD_NO_PAD
            .decode(case["messageBase64"].as_str().unwrap())
            .unwrap();
        let signature = STANDARD_NO_PAD
            .decode(case["signatureBase64"].as_str().unwrap())
            .unwrap();
        let from_did_key = PublicKey::from_did_key(case["publicKeyDid"].as_str().unwrap()).unwrap();
        let legacy_alg = match case["didDocSuite"].as_str().unwrap() {
            "EcdsaSecp256r1VerificationKey2019" => Alg::Es256,
            "EcdsaSecp256k1VerificationKey2019" => Alg::Es256k,
            other => panic!("unknown suite {other}"),
        };
        let from_legacy = PublicKey::from_legacy_multibase(
            legacy_alg,
            case["publicKeyMultibase"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(
            from_did_key, from_legacy,
            "{comment}: both encodings name one key"
        );
        assert_eq!(from_did_key.alg(), alg, "{comment}");
        let tags: Vec<&str> = case["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        let result = from_did_key.verify(&message, &signature);
        if case["validSignature"].as_bool().unwrap() {
            assert_eq!(result, Ok(()), "{comment}");
        } else if tags.contains(&"high-s") {
            assert_eq!(result, Err(SignatureError::HighS), "{comment}");
        } else if tags.contains(&"der-encoded") {
            assert_eq!(result, Err(SignatureError::WrongLength), "{comment}");
        } else {
            assert!(result.is_err(), "{comment}");
        }
    }
}

#[test]
fn did_key_k256_from_private_keys() {
    let cases = fixture("crypto/w3c_didkey_K256.json");
    for case in cases.as_array().unwrap() {
        let secret: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&case["privateKeyBytesHex"].as_str().unwrap()[i..i + 2], 16)
                    .unwrap()
            })
            .collect();
        let key = SigningKey::from_secret_bytes(Alg::Es256k, &secret).unwrap();
        assert_eq!(
            key.public_key().to_did_key(),
            case["publicDidKey"].as_str().unwrap()
        );
    }
}

#[test]
fn did_key_p256_from_private_keys() {
    let cases = fixture("crypto/w3c_didkey_P256.json");
    for case in cases.as_array().unwrap() {
        let secret = bs58::decode(case["privateKeyBytesBase58"].as_str().unwrap())
            .into_vec()
            .unwrap();
        let key = SigningKey::from_secret_bytes(Alg::Es256, &secret).unwrap();
        let did_key = case["publicDidKey"].as_str().unwrap();
        assert_eq!(key.public_key().to_did_key(), did_key);
        assert_eq!(PublicKey::from_did_key(did_key).unwrap(), key.public_key());
    }
}

#[test]
fn did_syntax() {
    let valid = lines("syntax/did_syntax_valid.txt");
    let invalid = lines("syntax/did_syntax_invalid.txt");
    assert!(valid.len() > 10 && invalid.len() > 10);
    for did in &valid {
        assert!(syntax::is_valid_did(did), "valid: {did:?}");
    }
    for did in &invalid {
        assert!(!syntax::is_valid_did(did), "invalid: {did:?}");
    }
}

#[test]
fn handle_syntax() {
    let valid = lines("syntax/handle_syntax_valid.txt");
    let invalid = lines("syntax/handle_syntax_invalid.txt");
    assert!(valid.len() > 10 && invalid.len() > 10);
    for handle in &valid {
        assert!(syntax::is_valid_handle(handle), "valid: {handle:?}");
    }
    for handle in &invalid {
        assert!(!syntax::is_valid_handle(handle), "invalid: {handle:?}");
    }
}
