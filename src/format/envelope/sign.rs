//! Making an `AT-SMS-Signature` field (spec sections 2 and 3, signer's side).

use serde_json::json;

use super::canon::{HeaderField, header_hash};
use super::token::{self, CANONICALIZATION, Kid, TYP, b64url};
use super::{FIELD_NAME, FieldError, check_fields};
use crate::format::crypto::SigningKey;

/// The fields section 3.3 tells signers to cover.
pub const RECOMMENDED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "reply-to",
    "in-reply-to",
    "references",
];

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("kid is neither DID#fragment nor at://DID/at.atsms.x509/FINGERPRINT")]
    BadKid,
    #[error("the DID in kid is not a did:plc or did:web DID")]
    UnsupportedDid,
    #[error("{0}")]
    Fields(#[from] FieldError),
    #[error("ttl must be between 1 and 604800 seconds")]
    BadTtl,
}

/// What to sign with.
pub struct SignRequest<'a> {
    pub key: &'a SigningKey,
    pub kid: &'a str,
    pub now: i64,
    pub ttl: i64,
    pub rcpt: &'a [String],
    /// Unique per message, at least 16 characters.
    pub jti: String,
}

/// Fields an MTA adds to a message that lacks them (RFC 5321 §4.4, Postfix's cleanup(8)
/// adds both): signing them while absent would break the signature in transit.
const ADDED_IN_TRANSIT: &[&str] = &["date", "message-id"];

/// The `h` list (section 3.3): every recommended field once more than it occurs
/// (over-signing, RFC 6376 §5.4.2), so that an added copy of any of them breaks the hash —
/// except that those MTAs add in transit are not listed while absent.
pub fn header_names_to_sign(headers: &[HeaderField]) -> Vec<String> {
    let mut names = Vec::new();
    for name in RECOMMENDED_HEADERS {
        let present = headers.iter().filter(|f| f.is(name)).count();
        let count = if present == 0 && ADDED_IN_TRANSIT.contains(name) {
            0
        } else {
            present + 1
        };
        names.extend(std::iter::repeat_n(name.to_string(), count));
    }
    names
}

/// A fresh random `jti`: 18 random bytes, 24 base64url characters.
pub fn random_jti() -> String {
    let mut bytes = [0u8; 18];
    // Without an OS RNG there is no safe way to sign at all; fall back to the clock only
    // to keep jti unique, since jti is not a secret.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes[..16].copy_from_slice(&nanos.to_be_bytes());
    }
    b64url(&bytes)
}

/// What a token covers, computed by whoever has the message (this process, or a client of the
/// signing service that hashed its message itself).
#[derive(Debug, Clone)]
pub struct Covered<'a> {
    /// The `from` claim: the From addr-spec, domain lower-cased.
    pub from: &'a str,
    /// The `h` list, lower-case names.
    pub h: &'a [String],
    pub hh: [u8; 32],
    pub bh: [u8; 32],
}

/// Signs a message given its header fields and relaxed body hash; returns the JWS token.
pub fn sign_token(
    request: &SignRequest<'_>,
    headers: &[HeaderField],
    body_hash: [u8; 32],
) -> Result<String, SignError> {
    // Step 10 holds before signing, or no verifier would accept the result.
    let from = check_fields(headers)?.claim_form();
    let h = header_names_to_sign(headers);
    let covered = Covered {
        from: &from,
        h: &h,
        hh: header_hash(&h, headers),
        bh: body_hash,
    };
    token_for(request, &covered)
}

/// The JWS token for `covered` (section 3): the claims this signer sets itself (`iss` from the
/// `kid`, `iat`, `exp`, `jti`, `c`) around what the message gave.
pub fn token_for(request: &SignRequest<'_>, covered: &Covered<'_>) -> Result<String, SignError> {
    let kid = Kid::parse(request.kid).ok_or(SignError::BadKid)?;
    let did = kid.did();
    if crate::format::syntax::supported_did_method(did).is_none() {
        return Err(SignError::UnsupportedDid);
    }
    if !(1..=token::MAX_LIFETIME).contains(&request.ttl) {
        return Err(SignError::BadTtl);
    }
    let header = json!({ "alg": request.key.alg().jws_name(), "typ": TYP, "kid": request.kid });
    let mut claims = json!({
        "iss": did,
        "iat": request.now,
        "exp": request.now + request.ttl,
        "jti": request.jti,
        "from": covered.from,
        "h": covered.h,
        "hh": b64url(&covered.hh),
        "bh": b64url(&covered.bh),
        "c": CANONICALIZATION,
    });
    if !request.rcpt.is_empty() {
        let rcpt: Vec<String> = request
            .rcpt
            .iter()
            .map(|r| r.to_ascii_lowercase())
            .collect();
        claims["rcpt"] = json!(rcpt);
    }
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let signature = request.key.sign(signing_input.as_bytes());
    Ok(format!("{signing_input}.{}", b64url(&signature)))
}

/// The field's value as it follows `AT-SMS-Signature:` — `v=1; d=…; t=…` — unfolded.
pub fn field_value(did: &str, token: &str) -> String {
    format!("v=1; d={did}; t={token}")
}

/// The whole field, `AT-SMS-Signature: v=1; d=…; t=…`, folded at 78 columns with
/// `newline` + TAB (RFC 5322 §2.2.3), without a final line end.
pub fn format_field(did: &str, token: &str, newline: &str) -> String {
    const WIDTH: usize = 78;
    let mut out = format!("{FIELD_NAME}: v=1; d={did}; t=");
    let mut column = out.len();
    let mut rest = token;
    while !rest.is_empty() {
        let room = WIDTH.saturating_sub(column).max(1);
        let (line, tail) = rest.split_at(room.min(rest.len()));
        out.push_str(line);
        rest = tail;
        if !rest.is_empty() {
            out.push_str(newline);
            out.push('\t');
            column = 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recommended_field_is_over_signed_except_those_added_in_transit() {
        let headers = [
            HeaderField::new("From", " a@b.example"),
            HeaderField::new("To", " x@y"),
            HeaderField::new("Cc", " z@y"),
        ];
        let names = header_names_to_sign(&headers);
        assert_eq!(names.iter().filter(|n| *n == "to").count(), 2);
        assert_eq!(names.iter().filter(|n| *n == "references").count(), 1);
        assert_eq!(
            names.iter().filter(|n| *n == "reply-to").count(),
            1,
            "absent: listed to block additions"
        );
        assert!(!names.contains(&"date".to_string()) && !names.contains(&"message-id".to_string()));
        assert_eq!(names.iter().filter(|n| *n == "from").count(), 2);
        let with_date = [
            HeaderField::new("From", " a@b.example"),
            HeaderField::new("Date", " now"),
        ];
        let names = header_names_to_sign(&with_date);
        assert_eq!(names.iter().filter(|n| *n == "date").count(), 2);
    }
}
