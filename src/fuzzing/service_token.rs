//! atproto service tokens: any string parses to a token or one named error, never a panic,
//! and a parsed token's checks never panic either.

use crate::atproto::service_auth::{SIGN_ENVELOPE, bearer, parse};

/// The target: any bytes.
pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = bearer(Some(text));
    match parse(text) {
        Ok(token) => {
            let _ = token.check(1_800_000_000, "did:web:signer.example", SIGN_ENVELOPE);
        }
        Err(e) => {
            assert!(!e.name().is_empty());
        }
    }
}
