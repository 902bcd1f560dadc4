//! The AT-SMS-Signature value as it arrives from the wire: tag list, then token, then the
//! time checks. Must never panic, whatever the bytes.

use crate::format::envelope::{tags, token};

/// The target: any bytes.
pub fn run(data: &[u8]) {
    if let Ok(list) = tags::parse(data)
        && let Ok(token) = token::parse(&list.t, &list.d)
    {
        let _ = token.claims.check_times(1_795_000_000);
        let _ = token.claims.is_expired(i64::MAX);
        let _ = token.kid.to_string();
    }
    // The token parser directly too, so the fuzzer need not find a tag list first.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = token::parse(text, "did:plc:ofurdhfyhjhgomvfygxergep");
    }
}
