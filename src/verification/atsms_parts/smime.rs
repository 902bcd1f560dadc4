//! What `verify-cms` and `verify` read: DER, PEM, or an S/MIME message (with mail-parser: a
//! file given on the command line is held whole anyway).

use super::*;

/// What a file given to `verify-cms` holds, read into a SignedData (DER) and, for a
/// multipart/signed, its detached content; also a whole AT-SMS part as the MIME scanner
/// read it (`der` then holds a sealed envelope's CBOR when that is what it carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmsInput {
    pub der: Vec<u8>,
    pub detached: Option<Vec<u8>>,
}

/// Reads DER, PEM (`-----BEGIN PKCS7-----` or `CMS`), or an S/MIME message: an
/// `application/pkcs7-mime` part (signed-data), or a `multipart/signed` whose first part is
/// the content as sent (RFC 8551 §3.5: headers and body, line ends as on the wire) and whose
/// second is the `application/pkcs7-signature`. S/MIME is parsed with mail-parser (a file
/// given on the command line is held whole anyway).
pub fn read_input(bytes: &[u8]) -> Result<CmsInput, FloorError> {
    if bytes.first() == Some(&0x30) {
        return Ok(CmsInput {
            der: bytes.to_vec(),
            detached: None,
        });
    }
    let text = String::from_utf8_lossy(bytes);
    for label in ["PKCS7", "CMS"] {
        let begin = format!("-----BEGIN {label}-----");
        if let Some(start) = text.find(&begin) {
            let rest = &text[start + begin.len()..];
            let end = rest
                .find(&format!("-----END {label}-----"))
                .ok_or(FloorError::Malformed("PEM without its end line"))?;
            let b64: String = rest[..end].split_whitespace().collect();
            use base64::Engine;
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| FloorError::Malformed("PEM is not base64"))?;
            return Ok(CmsInput {
                der,
                detached: None,
            });
        }
    }
    smime(bytes)
}

fn smime(bytes: &[u8]) -> Result<CmsInput, FloorError> {
    use mail_parser::{MessageParser, MimeHeaders};
    let message = MessageParser::default()
        .parse(bytes)
        .ok_or(FloorError::Malformed("neither DER, PEM nor a MIME message"))?;
    let is = |part: &mail_parser::MessagePart<'_>, kind: &str, subs: &[&str]| {
        part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case(kind)
                && ct
                    .subtype()
                    .is_some_and(|s| subs.iter().any(|x| s.eq_ignore_ascii_case(x)))
        })
    };
    for part in &message.parts {
        if is(part, "multipart", &["signed"]) {
            let ids = part.sub_parts().unwrap_or_default();
            let (Some(_), Some(signature)) = (
                ids.first().and_then(|&i| message.part(i)),
                ids.get(1).and_then(|&i| message.part(i)),
            ) else {
                return Err(FloorError::Malformed("multipart/signed without two parts"));
            };
            if !is(
                signature,
                "application",
                &["pkcs7-signature", "x-pkcs7-signature"],
            ) {
                return Err(FloorError::Malformed("second part is not pkcs7-signature"));
            }
            let signed = detached_content(&message, part)
                .ok_or(FloorError::Malformed("multipart/signed content not found"))?;
            return Ok(CmsInput {
                der: signature.contents().to_vec(),
                detached: Some(signed),
            });
        }
        if is(part, "application", &["pkcs7-mime", "x-pkcs7-mime"]) {
            return Ok(CmsInput {
                der: part.contents().to_vec(),
                detached: None,
            });
        }
    }
    Err(FloorError::Malformed("no S/MIME part"))
}

/// The AT-SMS content a whole message carries, found with mail-parser: a `multipart/signed`
/// with a `pkcs7-signature` by a device certificate (the X.509 floor, detached), or the first
/// part of type `application/atsms-envelope` or `application/pkcs7-mime` (decoded). `input` is the
/// SignedData to verify when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub kind: EnvelopeKind,
    pub input: Option<CmsInput>,
}

pub fn find_in_message(bytes: &[u8]) -> Option<Found> {
    use mail_parser::{MessageParser, MimeHeaders};
    let message = MessageParser::default().parse(bytes)?;
    let signed_multipart = message.parts.iter().any(|p| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("signed"))
        })
    });
    // A detached signature counts when a device certificate made it (the milter's scanner
    // reads it alike, `mime`).
    if signed_multipart
        && let Ok(input) = smime(bytes)
        && super::device_signed(&input.der)
    {
        return Some(Found {
            kind: EnvelopeKind::CmsSigned,
            input: Some(input),
        });
    }
    let part = message.parts.iter().find(|p| {
        p.content_type().is_some_and(|ct| {
            let kind = format!(
                "{}/{}",
                ct.ctype().to_ascii_lowercase(),
                ct.subtype().unwrap_or_default().to_ascii_lowercase()
            );
            kind == "application/atsms-envelope"
                || kind == "application/pkcs7-mime"
                || kind == "application/x-pkcs7-mime"
        })
    })?;
    let contents = part.contents();
    let kind = classify(contents);
    Some(Found {
        kind,
        input: (kind == EnvelopeKind::CmsSigned).then(|| CmsInput {
            der: contents.to_vec(),
            detached: None,
        }),
    })
}

/// The first part of a multipart/signed exactly as sent (RFC 1847 §2.1, RFC 8551 §3.5):
/// from after the first delimiter line to the CRLF that precedes the next delimiter (that
/// CRLF belongs to the delimiter, RFC 2046 §5.1.1), headers included.
fn detached_content(
    message: &mail_parser::Message<'_>,
    part: &mail_parser::MessagePart<'_>,
) -> Option<Vec<u8>> {
    use mail_parser::MimeHeaders;
    let boundary = part.content_type()?.attribute("boundary")?;
    let delimiter = format!("--{boundary}");
    let raw = message.raw_message();
    let body = raw.get(part.raw_body_offset() as usize..part.raw_end_offset() as usize)?;
    let at_line_start = |i: usize| i == 0 || body[i - 1] == b'\n';
    let first = (0..body.len())
        .find(|&i| at_line_start(i) && body[i..].starts_with(delimiter.as_bytes()))?;
    let start = first + body[first..].iter().position(|&b| b == b'\n')? + 1;
    let next = (start..body.len())
        .find(|&i| at_line_start(i) && body[i..].starts_with(delimiter.as_bytes()))?;
    let mut end = next;
    if end > start && body[end - 1] == b'\n' {
        end -= 1;
        if end > start && body[end - 1] == b'\r' {
            end -= 1;
        }
    }
    Some(body[start..end].to_vec())
}
