//! The AT-SMS client's device tokens: how a device proves itself to the inbox it drains (the
//! client's `jwt-auth.ts`; docs/interfaces.md, "Added for the fourth stage").
//!
//! `Authorization: Bearer <JWT>`, compact JWS (RFC 7515 §7.1): header `alg` ES256, `kid` the
//! device fingerprint (64 lower-case hex), `typ` JWT if present; claims `iss` the DID, `sub`
//! `at://<did>/at.atsms.x509/<fingerprint>`, `aud` `atsms-api`, `iat` and `exp` at most an hour
//! apart. Signed by the device key, checked with the certificate the DID publishes under that
//! fingerprint (through the identity cache, its dates checked). High-S is accepted (the client
//! signs through WebCrypto, which does not normalise S). There is no `jti`: the client reuses a
//! token until it expires, so none is remembered; what bounds a stolen token is its hour.
//!
//! The parser is pure; each defect maps to one error and one answer (401 `AuthRequired`,
//! `InvalidToken`, `ExpiredToken`; 403 for a token of another DID or device than the path's).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::atproto::identity::IdentityResolver;
use crate::format::envelope::token::{DEVICE_CERT_COLLECTION, Kid};

/// The audience every device token names.
pub const AUDIENCE: &str = "atsms-api";
/// The longest token read (the client's are about 400 bytes).
pub const MAX_TOKEN: usize = 4096;
/// How long a token may live: the client's one hour.
pub const MAX_LIFETIME: i64 = 3600;
/// Clock skew allowed either way.
pub const LEEWAY: i64 = 60;

/// Why a request is not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
    #[error("token expired")]
    Expired,
    /// A good token for another DID or device than the path names.
    #[error("token of another device")]
    OtherDevice,
    /// The device's certificate could not be had now (its PDS or the directory down).
    #[error("the device's certificate cannot be fetched now")]
    Unavailable,
}

impl TokenError {
    /// The HTTP status and the `error` name the inbox API answers.
    pub fn answer(&self) -> (u16, &'static str) {
        match self {
            TokenError::Missing => (401, "AuthRequired"),
            TokenError::Invalid(_) => (401, "InvalidToken"),
            TokenError::Expired => (401, "ExpiredToken"),
            TokenError::OtherDevice => (403, "Forbidden"),
            TokenError::Unavailable => (503, "Unavailable"),
        }
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: String,
    #[serde(default)]
    typ: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Audience,
    iat: i64,
    exp: i64,
}

/// A device token read and its claims checked, its signature not yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceToken {
    pub did: String,
    pub fingerprint: String,
    pub exp: i64,
    signing_input: String,
    signature: Vec<u8>,
}

fn json<T: serde::de::DeserializeOwned>(part: &str, what: &'static str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Invalid(what))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Invalid(what))
}

/// Reads `authorization` (the header's value: `Bearer <token>`, as the signing service reads
/// it) and checks the token's claims as of `now`.
pub fn parse(authorization: Option<&str>, now: i64) -> Result<DeviceToken, TokenError> {
    let token =
        crate::atproto::service_auth::bearer(authorization).map_err(|_| TokenError::Missing)?;
    parse_token(token, now)
}

/// Checks a token's claims as of `now` (a push socket's `auth` message carries it bare).
pub fn parse_token(token: &str, now: i64) -> Result<DeviceToken, TokenError> {
    if token.is_empty() {
        return Err(TokenError::Missing);
    }
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Invalid("too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(claims), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Invalid("not a compact JWS"));
    };
    let header: Header = json(header, "header")?;
    if header.alg != "ES256" {
        return Err(TokenError::Invalid("alg is not ES256"));
    }
    if header
        .typ
        .as_deref()
        .is_some_and(|t| !t.eq_ignore_ascii_case("JWT"))
    {
        return Err(TokenError::Invalid("typ is not JWT"));
    }
    let claims: Claims = json(claims, "claims")?;
    let expected_sub = format!(
        "at://{}/{DEVICE_CERT_COLLECTION}/{}",
        claims.iss, header.kid
    );
    match Kid::parse(&claims.sub) {
        Some(Kid::DeviceCertificate { did, fingerprint })
            if did == claims.iss && fingerprint == header.kid && claims.sub == expected_sub => {}
        _ => {
            return Err(TokenError::Invalid(
                "sub is not the device record of iss and kid",
            ));
        }
    }
    if crate::format::syntax::supported_did_method(&claims.iss).is_none() {
        return Err(TokenError::Invalid("iss is not a DID"));
    }
    let audience_ok = match &claims.aud {
        Audience::One(aud) => aud == AUDIENCE,
        Audience::Many(auds) => auds.iter().any(|a| a == AUDIENCE),
    };
    if !audience_ok {
        return Err(TokenError::Invalid("aud is not atsms-api"));
    }
    // Checked arithmetic: `iat` and `exp` are the token's, any i64 (a wrapped difference
    // would let `exp` near i64::MAX pass as an hour).
    let lifetime = claims.exp.checked_sub(claims.iat);
    if lifetime.is_none_or(|l| l > MAX_LIFETIME || l <= 0) {
        return Err(TokenError::Invalid("lives longer than an hour"));
    }
    if claims.iat > now.saturating_add(LEEWAY) {
        return Err(TokenError::Invalid("issued in the future"));
    }
    if claims.exp.saturating_add(LEEWAY) < now {
        return Err(TokenError::Expired);
    }
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| TokenError::Invalid("signature"))?;
    let signed = token.len() - token.rsplit('.').next().map_or(0, str::len) - 1;
    Ok(DeviceToken {
        did: claims.iss,
        fingerprint: header.kid,
        exp: claims.exp,
        signing_input: token[..signed].to_string(),
        signature,
    })
}

impl DeviceToken {
    /// Whether this token may act on the path's DID and device.
    pub fn for_path(&self, did: &str, fingerprint: &str) -> Result<(), TokenError> {
        if self.did == did && self.fingerprint == fingerprint {
            Ok(())
        } else {
            Err(TokenError::OtherDevice)
        }
    }

    /// Checks the signature with the certificate the DID publishes for the device, as of
    /// `now` (its dates), through the identity cache.
    pub async fn verify(
        &self,
        identity: &std::sync::Arc<IdentityResolver>,
        now: i64,
    ) -> Result<(), TokenError> {
        let kid = Kid::DeviceCertificate {
            did: self.did.clone(),
            fingerprint: self.fingerprint.clone(),
        };
        let key = match identity.resolve_key(&kid, now).await {
            Ok(resolved) => resolved.key,
            Err(e) if e.error.is_transient() => return Err(TokenError::Unavailable),
            Err(_) => return Err(TokenError::Invalid("no such device published")),
        };
        key.verify_p256_any_s(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| TokenError::Invalid("signature does not verify"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crypto::{Alg, SigningKey, malleate};

    const DID: &str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa";
    const NOW: i64 = 1_765_000_000;

    fn fp() -> String {
        "ab".repeat(32)
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token as the client makes one, with `change` applied to its claims.
    fn token(key: &SigningKey, header: &str, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{input}.{}", b64(&key.sign(input.as_bytes())))
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({
            "sub": format!("at://{DID}/at.atsms.x509/{}", fp()),
            "iss": DID, "aud": "atsms-api", "iat": NOW - 10, "exp": NOW + 3590
        })
    }

    fn header() -> String {
        format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{}"}}"#, fp())
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    #[test]
    fn the_clients_token_reads_and_each_defect_is_its_own_error() {
        let key = SigningKey::generate(Alg::Es256).unwrap();
        let good = parse(Some(&bearer(&token(&key, &header(), claims()))), NOW).unwrap();
        assert_eq!(
            (good.did.as_str(), good.fingerprint.as_str()),
            (DID, fp().as_str())
        );
        assert!(good.for_path(DID, &fp()).is_ok());
        assert_eq!(
            good.for_path(DID, &"cd".repeat(32)),
            Err(TokenError::OtherDevice)
        );
        assert_eq!(
            good.for_path("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb", &fp()),
            Err(TokenError::OtherDevice)
        );
        let with = |field: &str, value: serde_json::Value| {
            let mut c = claims();
            c[field] = value;
            parse(Some(&bearer(&token(&key, &header(), c))), NOW)
        };
        assert_eq!(parse(None, NOW), Err(TokenError::Missing));
        assert_eq!(parse(Some("Basic x"), NOW), Err(TokenError::Missing));
        assert!(matches!(
            parse(Some("Bearer a.b"), NOW),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            with("aud", "did:web:x".into()),
            Err(TokenError::Invalid(_))
        ));
        assert!(with("aud", serde_json::json!(["x", "atsms-api"])).is_ok());
        assert!(matches!(
            with(
                "sub",
                format!("at://{DID}/at.atsms.x509/{}", "cd".repeat(32)).into()
            ),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            with("iss", "did:plc:bbbbbbbbbbbbbbbbbbbbbbbb".into()),
            Err(TokenError::Invalid(_))
        ));
        // Times at the ends of i64: refused, not wrapped into an hour (nor a panic).
        assert!(matches!(
            with("exp", i64::MAX.into()),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            with("iat", i64::MIN.into()),
            Err(TokenError::Invalid(_))
        ));
        let aged = |exp: i64| {
            let mut c = claims();
            c["iat"] = (exp - 3600).into();
            c["exp"] = exp.into();
            parse(Some(&bearer(&token(&key, &header(), c))), NOW)
        };
        assert_eq!(aged(NOW - 61).map(|_| ()), Err(TokenError::Expired));
        assert!(aged(NOW - 59).is_ok(), "60 s of leeway");
        assert!(
            matches!(
                with("exp", (NOW + 7200).into()),
                Err(TokenError::Invalid(_))
            ),
            "over an hour"
        );
        assert!(matches!(
            with("iat", (NOW + 120).into()),
            Err(TokenError::Invalid(_))
        ));
        let other_alg = header().replace("ES256", "ES256K");
        assert!(matches!(
            parse(Some(&bearer(&token(&key, &other_alg, claims()))), NOW),
            Err(TokenError::Invalid(_))
        ));
        let none = header().replace("ES256", "none");
        assert!(matches!(
            parse(Some(&bearer(&token(&key, &none, claims()))), NOW),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            parse(Some(&bearer(&"a".repeat(5000))), NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn a_high_s_signature_from_webcrypto_verifies_and_a_wrong_key_does_not() {
        let key = SigningKey::generate(Alg::Es256).unwrap();
        let low = token(&key, &header(), claims());
        let (input, sig) = low.rsplit_once('.').unwrap();
        let high = malleate(Alg::Es256, &URL_SAFE_NO_PAD.decode(sig).unwrap());
        for t in [low.clone(), format!("{input}.{}", b64(&high))] {
            let parsed = parse(Some(&bearer(&t)), NOW).unwrap();
            assert!(
                key.public_key()
                    .verify_p256_any_s(parsed.signing_input.as_bytes(), &parsed.signature)
                    .is_ok()
            );
        }
        let other = SigningKey::generate(Alg::Es256).unwrap();
        let parsed = parse(Some(&bearer(&low)), NOW).unwrap();
        assert!(
            other
                .public_key()
                .verify_p256_any_s(parsed.signing_input.as_bytes(), &parsed.signature)
                .is_err()
        );
    }
}
