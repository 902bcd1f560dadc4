//! The request of `signEnvelope`: its JSON body read within bounds and checked field by
//! field (a bad one is 400 `InvalidRequest`, an oversized one 413), and its output.

use axum::body::Body;
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};

use super::XrpcError;

/// The largest request body (interfaces.md: over 64 KiB → 413).
pub const MAX_BODY: usize = 64 * 1024;
/// The most `h` names and `rcpt` addresses one request may carry.
const MAX_NAMES: usize = 64;
const MAX_RECIPIENTS: usize = 1000;
/// The longest `ttl` a caller may ask for (the spec's longest token lifetime).
pub(super) const MAX_TTL: i64 = crate::format::envelope::token::MAX_LIFETIME;

/// The input of `org.atsms-milter.mail.signEnvelope` (docs/lexicons/org/atsms-milter/mail/signEnvelope.json).
#[derive(Debug, Deserialize)]
struct SignEnvelopeInput {
    from: String,
    h: Vec<String>,
    hh: String,
    bh: String,
    #[serde(default)]
    rcpt: Vec<String>,
    #[serde(default)]
    ttl: Option<i64>,
}

/// Its output.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SignEnvelopeOutput {
    pub did: String,
    pub kid: String,
    pub token: String,
    /// `v=1; d=…; t=…`, unfolded: the client folds it and adds it as `AT-SMS-Signature`.
    pub signature: String,
}

/// What the client asks to be signed, checked.
pub(super) struct Request {
    pub(super) from: crate::format::envelope::Mailbox,
    pub(super) h: Vec<String>,
    pub(super) hh: [u8; 32],
    pub(super) bh: [u8; 32],
    pub(super) rcpt: Vec<String>,
    pub(super) ttl: Option<i64>,
}

fn hash(name: &str, value: &str) -> Result<[u8; 32], XrpcError> {
    URL_SAFE_NO_PAD
        .decode(value)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .ok_or_else(|| XrpcError::invalid(format!("{name} must be 32 bytes in base64url")))
}

/// A field name as `h` lists it: RFC 5322 §3.6.8 ftext, lower-case.
fn is_field_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| (33..=126).contains(&b) && b != b':' && !b.is_ascii_uppercase())
}

impl Request {
    /// Parses and checks the JSON body (a bad one is 400 `InvalidRequest`).
    pub(super) fn parse(body: &[u8]) -> Result<Request, XrpcError> {
        let input: SignEnvelopeInput = serde_json::from_slice(body)
            .map_err(|e| XrpcError::invalid(format!("body is not the lexicon's input: {e}")))?;
        let from =
            crate::format::envelope::fields::parse_mailbox(format!(" {}", input.from).as_bytes())
                .filter(|m| m.to_string().eq_ignore_ascii_case(input.from.trim()))
                .ok_or_else(|| XrpcError::invalid("from must be one addr-spec (user@domain)"))?;
        if input.h.is_empty() || input.h.len() > MAX_NAMES {
            return Err(XrpcError::invalid(format!(
                "h must list 1 to {MAX_NAMES} names"
            )));
        }
        if !input.h.iter().all(|n| is_field_name(n)) {
            return Err(XrpcError::invalid(
                "h must list lower-case header field names",
            ));
        }
        if !input.h.iter().any(|n| n == "from") {
            return Err(XrpcError::invalid("h must contain \"from\""));
        }
        if input.rcpt.len() > MAX_RECIPIENTS
            || !input.rcpt.iter().all(|r| {
                r.len() <= 320
                    && crate::format::envelope::fields::parse_mailbox(format!(" {r}").as_bytes())
                        .is_some()
            })
        {
            return Err(XrpcError::invalid(format!(
                "rcpt must list at most {MAX_RECIPIENTS} addr-specs"
            )));
        }
        if let Some(ttl) = input.ttl
            && !(1..=MAX_TTL).contains(&ttl)
        {
            return Err(XrpcError::invalid(format!(
                "ttl must be 1 to {MAX_TTL} seconds"
            )));
        }
        Ok(Request {
            hh: hash("hh", &input.hh)?,
            bh: hash("bh", &input.bh)?,
            from,
            h: input.h,
            rcpt: input.rcpt,
            ttl: input.ttl,
        })
    }
}

/// How much of an oversized body is read and thrown away before answering 413: closing a
/// connection with unread data makes the kernel send a reset, which can destroy the answer
/// before the client reads it (nginx's lingering close does the same).
const DRAIN_LIMIT: u64 = 16 * 1024 * 1024;

/// The body, at most `MAX_BODY` bytes of JSON.
pub(super) async fn read_body(headers: &HeaderMap, body: Body) -> Result<Vec<u8>, XrpcError> {
    read_json_body(headers, body, MAX_BODY).await
}

/// A JSON body of at most `max` bytes (the HTTPS inbox's bound is the message size limit).
pub(super) async fn read_json_body(
    headers: &HeaderMap,
    mut body: Body,
    max: usize,
) -> Result<Vec<u8>, XrpcError> {
    let too_large = || {
        XrpcError::new(
            413,
            "PayloadTooLarge",
            format!("the body is limited to {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        // A client waiting for `100 Continue` (RFC 9110 §10.1.1) never sends the body if it
        // is answered at once; any other is drained, unless it is huge.
        let waits = headers.contains_key(header::EXPECT);
        if !waits && declared.is_some_and(|n| n <= DRAIN_LIMIT) {
            drain(body, 0).await;
        }
        return Err(too_large());
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| XrpcError::invalid(format!("the body could not be read: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > max {
                drain(body, (bytes.len() + data.len()) as u64).await;
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
    }
    if !json {
        return Err(XrpcError::invalid("Content-Type must be application/json"));
    }
    Ok(bytes)
}

/// Reads and drops the rest of a body, up to `DRAIN_LIMIT` bytes in all.
async fn drain(mut body: Body, mut read: u64) {
    while read <= DRAIN_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len() as u64),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn body(from: &str, h: &[&str]) -> String {
        serde_json::json!({"from": from, "h": h, "hh": b64(&[1; 32]), "bh": b64(&[2; 32])})
            .to_string()
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        assert!(Request::parse(body("alice@example.com", &["from", "subject"]).as_bytes()).is_ok());
        let bad = |b: &str| Request::parse(b.as_bytes()).err().map(|e| e.name);
        assert_eq!(bad("{"), Some("InvalidRequest"));
        assert_eq!(
            bad(&body("Alice <alice@example.com>", &["from"])),
            Some("InvalidRequest")
        );
        assert_eq!(
            bad(&body("alice@example.com, bob@example.com", &["from"])),
            Some("InvalidRequest")
        );
        assert_eq!(
            bad(&body("alice@example.com", &["subject"])),
            Some("InvalidRequest")
        );
        assert_eq!(
            bad(&body("alice@example.com", &["From"])),
            Some("InvalidRequest")
        );
        assert_eq!(
            bad(&body("alice@example.com", &["from", "x:y"])),
            Some("InvalidRequest")
        );
        let short = serde_json::json!({"from": "a@example.com", "h": ["from"], "hh": b64(&[1; 31]), "bh": b64(&[2; 32])});
        assert_eq!(bad(&short.to_string()), Some("InvalidRequest"));
        let long_ttl = serde_json::json!({"from": "a@example.com", "h": ["from"], "hh": b64(&[1; 32]), "bh": b64(&[2; 32]), "ttl": MAX_TTL + 1});
        assert_eq!(bad(&long_ttl.to_string()), Some("InvalidRequest"));
        let rcpt = serde_json::json!({"from": "a@example.com", "h": ["from"], "hh": b64(&[1; 32]), "bh": b64(&[2; 32]), "rcpt": ["not an address"]});
        assert_eq!(bad(&rcpt.to_string()), Some("InvalidRequest"));
    }
}
