//! The JWS token inside `t=`: compact serialization, protected header and claims
//! (spec section 3; RFC 7515 §7.1).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::borrow::Cow;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::format::crypto::Alg;
use crate::format::syntax;

/// The only `typ` a mail signature may carry: keeps atproto service-auth JWTs out.
pub const TYP: &str = "atsms+jwt";
/// The only canonicalization of v1.
pub const CANONICALIZATION: &str = "relaxed/relaxed";
/// Shortest `jti`, in characters.
pub const MIN_JTI_CHARS: usize = 16;
/// How far in the verifier's future `iat` may lie (clock skew).
pub const MAX_FUTURE_SKEW: i64 = 300;
/// Longest lifetime `exp - iat`: mail may sit in queues for days.
pub const MAX_LIFETIME: i64 = 604_800;
/// Grace after `exp` before a signature counts as expired.
pub const EXPIRY_GRACE: i64 = 300;

/// Where the key for a signature is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kid {
    /// `<DID>#<fragment>`: a verification method of the DID document (spec 5.1).
    VerificationMethod { did: String, fragment: String },
    /// `at://<DID>/at.atsms.x509/<fingerprint>`: a device certificate record (spec 5.2).
    DeviceCertificate { did: String, fingerprint: String },
}

/// The record collection holding device certificates.
pub const DEVICE_CERT_COLLECTION: &str = "at.atsms.x509";

impl Kid {
    pub fn parse(kid: &str) -> Option<Kid> {
        if let Some(rest) = kid.strip_prefix("at://") {
            let (did, path) = rest.split_once('/')?;
            let fingerprint = path
                .strip_prefix(DEVICE_CERT_COLLECTION)?
                .strip_prefix('/')?;
            let hex = fingerprint.len() == 64
                && fingerprint
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
            return (syntax::is_valid_did(did) && hex).then(|| Kid::DeviceCertificate {
                did: did.to_string(),
                fingerprint: fingerprint.to_string(),
            });
        }
        let (did, fragment) = kid.split_once('#')?;
        let fragment_ok = !fragment.is_empty()
            && fragment.len() <= 256
            && fragment.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
        (syntax::is_valid_did(did) && fragment_ok).then(|| Kid::VerificationMethod {
            did: did.to_string(),
            fragment: fragment.to_string(),
        })
    }

    pub fn did(&self) -> &str {
        match self {
            Kid::VerificationMethod { did, .. } | Kid::DeviceCertificate { did, .. } => did,
        }
    }
}

impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kid::VerificationMethod { did, fragment } => write!(f, "{did}#{fragment}"),
            Kid::DeviceCertificate { did, fingerprint } => {
                write!(f, "at://{did}/{DEVICE_CERT_COLLECTION}/{fingerprint}")
            }
        }
    }
}

/// The claims of section 3.3, typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub iss: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub from: String,
    pub h: Vec<String>,
    pub hh: [u8; 32],
    pub bh: [u8; 32],
    pub rcpt: Option<Vec<String>>,
    pub aud: Option<Vec<String>>,
}

/// A token that passed steps 2 to 4 of section 8.
#[derive(Debug, Clone)]
pub struct Token {
    pub alg: Alg,
    pub kid: Kid,
    pub claims: Claims,
    /// `BASE64URL(header) "." BASE64URL(claims)`, the bytes the signature covers.
    pub signing_input: String,
    pub signature: Vec<u8>,
}

/// A member's value, as much of it as the checks read. Strings are borrowed from the decoded
/// part unless they hold escapes: a token is parsed on every message, and serde_json's
/// `Value` allocated each name, string and array (the largest share of the allocations per
/// message in docs/performance.md's profile).
#[derive(Debug)]
enum Json<'a> {
    String(Cow<'a, str>),
    /// A number: `Some` when it is an integer that fits in an i64 (what `Value::as_i64` says).
    Number(Option<i64>),
    /// An array: `Some` when every item is a string.
    Array(Option<Vec<Cow<'a, str>>>),
    /// `true`, `false`, `null` or an object (read through, never kept).
    Other,
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct JsonVisitor;
        impl<'de> Visitor<'de> for JsonVisitor {
            type Value = Json<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
                Ok(Json::String(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
                Ok(Json::String(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
                Ok(Json::String(Cow::Owned(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
                Ok(Json::Number(Some(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
                Ok(Json::Number(i64::try_from(v).ok()))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Json<'de>, E> {
                Ok(Json::Number(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Json<'de>, E> {
                Ok(Json::Other)
            }
            fn visit_unit<E>(self) -> Result<Json<'de>, E> {
                Ok(Json::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
                let mut strings = Some(Vec::new());
                while let Some(item) = seq.next_element::<Json<'de>>()? {
                    match (&mut strings, item) {
                        (Some(all), Json::String(s)) => all.push(s),
                        _ => strings = None,
                    }
                }
                Ok(Json::Array(strings))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
                // Read, not skipped: serde_json's skipping checks neither UTF-8, escapes,
                // number range nor depth, and a token `Value` refused must stay refused.
                while map.next_entry::<Json<'de>, Json<'de>>()?.is_some() {}
                Ok(Json::Other)
            }
        }
        deserializer.deserialize_any(JsonVisitor)
    }
}

/// A JSON object read member by member, so that repeated names are seen (serde_json's own
/// maps keep the last one silently).
struct Members<'a>(Vec<(Cow<'a, str>, Json<'a>)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::with_capacity(12);
                // Names read as `Json` too: serde's `Cow<str>` would always copy them.
                while let Some((name, value)) = map.next_entry::<Json<'de>, Json<'de>>()? {
                    let Json::String(name) = name else {
                        return Err(serde::de::Error::custom("a member name is not a string"));
                    };
                    members.push((name, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// The three parts of a compact JWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Header,
    Claims,
    Signature,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Header => "header",
            Part::Claims => "claims",
            Part::Signature => "signature",
        })
    }
}

/// Why a token fails steps 2 to 4 of section 8 (always `permerror`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is not three base64url parts")]
    NotThreeParts,
    #[error("padded base64url in token {0}")]
    Padded(Part),
    #[error("invalid base64url in token {0}")]
    BadBase64(Part),
    #[error("token {0} is not a JSON object")]
    NotObject(Part),
    #[error("repeated member {name} in token {part}")]
    RepeatedMember { part: Part, name: String },
    #[error("typ missing")]
    TypMissing,
    #[error("typ is not atsms+jwt")]
    TypWrong,
    #[error("alg missing")]
    AlgMissing,
    #[error("alg is not a string")]
    AlgNotString,
    #[error("unsupported alg {0}")]
    AlgUnsupported(String),
    #[error("kid missing")]
    KidMissing,
    #[error("kid is not a string")]
    KidNotString,
    #[error("kid is not a DID key or device URI")]
    KidInvalid,
    #[error("crit is not allowed")]
    Crit,
    #[error("claim {0} missing")]
    ClaimMissing(&'static str),
    #[error("claim {0} is not a string")]
    ClaimNotString(&'static str),
    #[error("claim {0} is not an integer")]
    ClaimNotInteger(&'static str),
    #[error("claim {0} is not an array of strings")]
    ClaimNotStrings(&'static str),
    #[error("claim {0} is not a SHA-256 digest")]
    ClaimNotDigest(&'static str),
    #[error("c is not relaxed/relaxed")]
    Canonicalization,
    #[error("iss does not equal d=")]
    IssNotD,
    #[error("iss is not a did:plc or did:web DID")]
    IssUnsupported,
    #[error("h does not include from")]
    HWithoutFrom,
    #[error("jti shorter than 16 characters")]
    JtiShort,
}

/// Why the times of step 5 do not hold (`permerror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("iat is in the future")]
    IatInFuture,
    #[error("exp is not after iat")]
    ExpNotAfterIat,
    #[error("lifetime longer than 7 days")]
    LifetimeTooLong,
}

/// Attacker-chosen text shown in a reason: printable ASCII, at most 32 characters.
fn shown(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(32)
        .collect()
}

fn decode_part(part: &str, which: Part) -> Result<Vec<u8>, TokenError> {
    if part.contains('=') {
        return Err(TokenError::Padded(which));
    }
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::BadBase64(which))
}

/// The members of a part that must be a JSON object, checked for repeated names.
fn decode_object(bytes: &[u8], which: Part) -> Result<Vec<(Cow<'_, str>, Json<'_>)>, TokenError> {
    let Members(members) =
        serde_json::from_slice(bytes).map_err(|_| TokenError::NotObject(which))?;
    for (i, (name, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(other, _)| other == name) {
            return Err(TokenError::RepeatedMember {
                part: which,
                name: shown(name),
            });
        }
    }
    Ok(members)
}

fn member<'a, 'b>(members: &'a [(Cow<'b, str>, Json<'b>)], name: &str) -> Option<&'a Json<'b>> {
    members.iter().find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Parses and checks the token: steps 2, 3 and 4 of section 8. `d` is the `d=` tag.
pub fn parse(t: &str, d: &str) -> Result<Token, TokenError> {
    // Step 2: three base64url parts, two JSON objects.
    let mut parts = t.split('.');
    let (Some(header_b64), Some(claims_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::NotThreeParts);
    };
    let header_json = decode_part(header_b64, Part::Header)?;
    let header = decode_object(&header_json, Part::Header)?;
    let claims_json = decode_part(claims_b64, Part::Claims)?;
    let claims = decode_object(&claims_json, Part::Claims)?;
    let signature = decode_part(sig_b64, Part::Signature)?;

    // Step 3: protected header.
    match member(&header, "typ") {
        Some(Json::String(typ)) if typ == TYP => {}
        Some(_) => return Err(TokenError::TypWrong),
        None => return Err(TokenError::TypMissing),
    }
    let alg = match member(&header, "alg") {
        Some(Json::String(alg)) => {
            Alg::from_jws(alg).ok_or_else(|| TokenError::AlgUnsupported(shown(alg)))?
        }
        Some(_) => return Err(TokenError::AlgNotString),
        None => return Err(TokenError::AlgMissing),
    };
    let kid = match member(&header, "kid") {
        Some(Json::String(kid)) => Kid::parse(kid).ok_or(TokenError::KidInvalid)?,
        Some(_) => return Err(TokenError::KidNotString),
        None => return Err(TokenError::KidMissing),
    };
    if member(&header, "crit").is_some() {
        return Err(TokenError::Crit);
    }

    // Step 4: claims present and typed, then their rules.
    let claims = read_claims(&claims)?;
    if claims.iss != d {
        return Err(TokenError::IssNotD);
    }
    if syntax::supported_did_method(&claims.iss).is_none() {
        return Err(TokenError::IssUnsupported);
    }
    if !claims
        .h
        .iter()
        .any(|name| name.eq_ignore_ascii_case("from"))
    {
        return Err(TokenError::HWithoutFrom);
    }
    if claims.jti.chars().count() < MIN_JTI_CHARS {
        return Err(TokenError::JtiShort);
    }
    let signing_input = format!("{header_b64}.{claims_b64}");
    Ok(Token {
        alg,
        kid,
        claims,
        signing_input,
        signature,
    })
}

fn read_claims(members: &[(Cow<'_, str>, Json<'_>)]) -> Result<Claims, TokenError> {
    let str = |name: &'static str| match member(members, name) {
        Some(Json::String(s)) => Ok(s.as_ref()),
        Some(_) => Err(TokenError::ClaimNotString(name)),
        None => Err(TokenError::ClaimMissing(name)),
    };
    // "integer": a JSON number without fraction or exponent that fits in 64 bits.
    let integer = |name: &'static str| match member(members, name) {
        Some(Json::Number(n)) => n.ok_or(TokenError::ClaimNotInteger(name)),
        Some(_) => Err(TokenError::ClaimNotInteger(name)),
        None => Err(TokenError::ClaimMissing(name)),
    };
    let strings = |name: &'static str| -> Result<Option<Vec<String>>, TokenError> {
        match member(members, name) {
            None => Ok(None),
            Some(Json::Array(items)) => items
                .as_ref()
                .map(|items| Some(items.iter().map(|s| s.to_string()).collect()))
                .ok_or(TokenError::ClaimNotStrings(name)),
            Some(_) => Err(TokenError::ClaimNotStrings(name)),
        }
    };
    // A value that can never be a SHA-256 digest is a malformed claim, not a mismatch.
    let digest = |name: &'static str| -> Result<[u8; 32], TokenError> {
        let encoded = str(name)?;
        if encoded.contains('=') {
            return Err(TokenError::ClaimNotDigest(name));
        }
        URL_SAFE_NO_PAD
            .decode(encoded)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(TokenError::ClaimNotDigest(name))
    };
    let claims = Claims {
        iss: str("iss")?.to_string(),
        iat: integer("iat")?,
        exp: integer("exp")?,
        jti: str("jti")?.to_string(),
        from: str("from")?.to_string(),
        h: strings("h")?.ok_or(TokenError::ClaimMissing("h"))?,
        hh: digest("hh")?,
        bh: digest("bh")?,
        rcpt: strings("rcpt")?,
        aud: strings("aud")?,
    };
    if str("c")? != CANONICALIZATION {
        return Err(TokenError::Canonicalization);
    }
    Ok(claims)
}

impl Claims {
    /// Step 5: `iat ≤ now + 300` and `iat < exp ≤ iat + 604800`.
    pub fn check_times(&self, now: i64) -> Result<(), TimeError> {
        if self.iat > now.saturating_add(MAX_FUTURE_SKEW) {
            return Err(TimeError::IatInFuture);
        }
        if self.exp <= self.iat {
            return Err(TimeError::ExpNotAfterIat);
        }
        if self.exp > self.iat.saturating_add(MAX_LIFETIME) {
            return Err(TimeError::LifetimeTooLong);
        }
        Ok(())
    }

    /// Step 7: `now ≤ exp + 300`.
    pub fn is_expired(&self, now: i64) -> bool {
        now > self.exp.saturating_add(EXPIRY_GRACE)
    }
}

/// base64url without padding, as JWS uses it.
pub fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(header: &str, claims: &str) -> String {
        format!(
            "{}.{}.{}",
            b64url(header.as_bytes()),
            b64url(claims.as_bytes()),
            b64url(&[1; 64])
        )
    }

    const HEADER: &str =
        r#"{"alg":"ES256K","typ":"atsms+jwt","kid":"did:plc:ofurdhfyhjhgomvfygxergep#atproto"}"#;
    const D: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

    fn claims(extra: &str) -> String {
        let hash = b64url(&[7; 32]);
        format!(
            r#"{{"iss":"{D}","iat":1000,"exp":2000,"jti":"0123456789abcdef","from":"a@b.c","h":["from"],"hh":"{hash}","bh":"{hash}","c":"relaxed/relaxed"{extra}}}"#
        )
    }

    #[test]
    fn good_token_parses() {
        let t = parse(&token(HEADER, &claims("")), D).unwrap();
        assert_eq!(t.alg, Alg::Es256k);
        assert_eq!(t.claims.iat, 1000);
        assert_eq!(t.kid.did(), D);
        // Escaped strings read as what they spell; unknown members of any type are ignored;
        // a large negative integer is still an integer.
        let escaped = claims(r#","x":{"y":[1,{"z":null}]},"aud":["did:web:a\u002eexample"]"#)
            .replace("0123456789abcdef", r#"0123456789abcde\u0066"#)
            .replace(r#""from":"a@b.c""#, r#""from":"a\/@b.c""#);
        let t = parse(&token(HEADER, &escaped), D).unwrap();
        assert_eq!(t.claims.jti, "0123456789abcdef");
        assert_eq!(t.claims.from, "a/@b.c");
        assert_eq!(t.claims.aud, Some(vec!["did:web:a.example".to_string()]));
        let negative = claims("").replace(":1000,", ":-9223372036854775808,");
        assert_eq!(
            parse(&token(HEADER, &negative), D).unwrap().claims.iat,
            i64::MIN
        );
    }

    /// Each token parses to exactly its own error.
    fn assert_each_error<const N: usize>(cases: [(String, TokenError); N]) {
        for (case, error) in cases {
            assert_eq!(parse(&case, D).unwrap_err(), error, "{case}");
        }
    }

    /// The protected header and the compact form (RFC 7515 §7.1).
    #[test]
    fn each_header_and_framing_defect_is_its_own_error() {
        use TokenError::*;
        assert_each_error([
            (
                token(&HEADER.replace("ES256K", "none"), &claims("")),
                AlgUnsupported("none".into()),
            ),
            (
                token(&HEADER.replace("atsms+jwt", "ATSMS+JWT"), &claims("")),
                TypWrong,
            ),
            (
                token(&HEADER.replace("}", r#","crit":["x"]}"#), &claims("")),
                Crit,
            ),
            (
                format!("{}=", token(HEADER, &claims(""))),
                Padded(Part::Signature),
            ),
            ("a.b".to_string(), NotThreeParts),
            (
                token(&HEADER.replace(r#""ES256K""#, "null"), &claims("")),
                AlgNotString,
            ),
        ]);
    }

    /// The claims: types, values, `iss` against `d=`.
    #[test]
    fn each_claim_defect_is_its_own_error() {
        use TokenError::*;
        assert_each_error([
            (
                token(HEADER, &claims("").replace("1000", "1000.0")),
                ClaimNotInteger("iat"),
            ),
            (
                token(HEADER, &claims("").replace("1000", "1e3")),
                ClaimNotInteger("iat"),
            ),
            (
                token(HEADER, &claims("").replace("1000", "true")),
                ClaimNotInteger("iat"),
            ),
            (
                token(
                    HEADER,
                    &claims("").replace("relaxed/relaxed", "simple/simple"),
                ),
                Canonicalization,
            ),
            (
                token(HEADER, &claims("").replace(r#"["from"]"#, r#"["to"]"#)),
                HWithoutFrom,
            ),
            (
                token(HEADER, &claims("").replace("0123456789abcdef", "short")),
                JtiShort,
            ),
            (
                token(HEADER, &claims("").replace("1000", "9223372036854775808")),
                ClaimNotInteger("iat"),
            ),
            (
                token(HEADER, &claims("").replace("1000", r#""1000""#)),
                ClaimNotInteger("iat"),
            ),
            (
                token(HEADER, &claims("").replace(r#"["from"]"#, r#"["from",1]"#)),
                ClaimNotStrings("h"),
            ),
            (
                token(HEADER, &claims("").replace(r#"["from"]"#, r#""from""#)),
                ClaimNotStrings("h"),
            ),
            (
                token(HEADER, &claims(r#","rcpt":[["a@b.c"]]"#)),
                ClaimNotStrings("rcpt"),
            ),
            (
                token(HEADER, &claims("").replace(r#""a@b.c""#, "{}")),
                ClaimNotString("from"),
            ),
        ]);
        assert_eq!(
            parse(
                &token(HEADER, &claims("")),
                "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
            )
            .unwrap_err(),
            IssNotD
        );
    }

    /// The JSON of a part: repeated names, however spelled, and what no JSON value may hold.
    #[test]
    fn each_json_defect_is_its_own_error() {
        use TokenError::*;
        assert_each_error([
            (
                token(HEADER, &claims(r#","iat":5"#)),
                RepeatedMember {
                    part: Part::Claims,
                    name: "iat".into(),
                },
            ),
            (token(HEADER, "[]"), NotObject(Part::Claims)),
            // A name spelled with an escape is the same name (RFC 8259 §7).
            (
                token(HEADER, &claims(r#","i\u0061t":5"#)),
                RepeatedMember {
                    part: Part::Claims,
                    name: "iat".into(),
                },
            ),
            // What serde_json's `Value` refused anywhere in a part is still refused, however
            // deep in a member nobody reads.
            (
                token(HEADER, &claims(r#","x":{"y":"\ud800"}"#)),
                NotObject(Part::Claims),
            ),
            (
                token(HEADER, &claims(r#","x":{"y":1e400}"#)),
                NotObject(Part::Claims),
            ),
            (
                token(HEADER, &claims(r#","x":[{"y":"\ud800"}]"#)),
                NotObject(Part::Claims),
            ),
            (
                token(
                    HEADER,
                    &claims(&format!(
                        r#","x":{}1{}"#,
                        r#"{"y":["#.repeat(100),
                        "]}".repeat(100)
                    )),
                ),
                NotObject(Part::Claims),
            ),
        ]);
    }

    #[test]
    fn times() {
        let t = parse(&token(HEADER, &claims("")), D).unwrap().claims;
        assert!(t.check_times(1000).is_ok());
        assert_eq!(t.check_times(699), Err(TimeError::IatInFuture));
        assert!(t.check_times(700).is_ok());
        assert!(!t.is_expired(2300));
        assert!(t.is_expired(2301));
    }
}
