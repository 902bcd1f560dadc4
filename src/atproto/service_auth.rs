//! atproto inter-service authentication: the bearer JWT a caller of the signing service
//! presents (atproto specs, "XRPC", Inter-Service Authentication; interfaces.md, "The signing
//! service"). `parse` and `ServiceToken::check` are pure; `Authenticator` adds the caller's
//! `#atproto` key from its DID document (the verifier's resolver and cache) and the `jti` set.
//!
//! Hand-written, as the thin atproto layer is: no maintained crate verifies these tokens
//! against DID documents, the JOSE crates do not all know ES256K, and the rules (the `typ`
//! values refused, `lxm`, the audience forms, the error names) are atproto's own. The checks
//! run in the order of the error table in interfaces.md, so each bad token gets one name.
//!
//! Stricter than atproto's reference verifier (`@atproto/xrpc-server`, which passes
//! `allowMalleableSig`): a high-S signature is refused, as the cryptography spec requires of
//! signatures generally, and so is any `typ` but `JWT` or none, an `exp` more than an hour
//! ahead, a missing `lxm` or `jti`, and an `iss` with a fragment.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Deserialize;

use crate::atproto::identity::{IdentityResolver, ResolvedDid};
use crate::format::crypto::{Alg, PublicKey, SignatureError};

/// The method the signing service serves: the `lxm` its tokens must name. Its authority is
/// `mail.atsms-milter.org`, a name this project can hold; the `at.atsms.*` namespace belongs
/// to the AT-SMS client's lexicons (`at.atsms.inbox`, `at.atsms.x509`, …).
pub const SIGN_ENVELOPE: &str = "org.atsms-milter.mail.signEnvelope";
/// The method's first name, inside a namespace this project does not control: still served
/// for one release (a token for it must name it as its `lxm`), deprecated (docs/signing.md).
pub const SIGN_ENVELOPE_DEPRECATED: &str = "at.atsms.mail.signEnvelope";
/// The PDS-side sender's method (`sending`): sign once, seal for every recipient device.
pub const SEND_MESSAGE: &str = "org.atsms-milter.mail.sendMessage";
/// The service id of the signing service in its DID document (`<service_did>#atsms_signer`).
pub const SERVICE_ID: &str = "atsms_signer";
/// The furthest ahead `exp` may be (what `com.atproto.server.getServiceAuth` grants at most).
pub const MAX_AHEAD: i64 = 3600;
/// The longest token read; atproto's are a few hundred bytes.
const MAX_TOKEN: usize = 8 * 1024;
/// The verification method that signs a DID's service tokens.
const ATPROTO_KEY: &str = "atproto";

/// Why a request is not authenticated: one name each, as the XRPC error (interfaces.md).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authorization header with a bearer token required")]
    AuthMissing,
    #[error("malformed token: {0}")]
    BadJwt(&'static str),
    #[error("token type {0:?} is not a service token")]
    BadJwtType(String),
    #[error("token has expired")]
    JwtExpired,
    #[error("token audience {0:?} is not this service")]
    BadJwtAudience(String),
    #[error("{}", if *.0 { "missing lexicon method (\"lxm\")" } else { "token is for another lexicon method" })]
    BadJwtLexiconMethod(bool),
    #[error("iss is not a usable DID: {0}")]
    BadJwtIss(String),
    #[error("jwt signature does not match jwt issuer: {0}")]
    BadJwtSignature(String),
    #[error("no signing key for {0}")]
    NotAuthorized(String),
    #[error("token was used before")]
    JwtReplayed,
    #[error("the caller's DID document cannot be fetched now: {0}")]
    UpstreamFailure(String),
}

impl AuthError {
    /// The XRPC error name.
    pub fn name(&self) -> &'static str {
        match self {
            AuthError::AuthMissing => "AuthMissing",
            AuthError::BadJwt(_) => "BadJwt",
            AuthError::BadJwtType(_) => "BadJwtType",
            AuthError::JwtExpired => "JwtExpired",
            AuthError::BadJwtAudience(_) => "BadJwtAudience",
            AuthError::BadJwtLexiconMethod(_) => "BadJwtLexiconMethod",
            AuthError::BadJwtIss(_) => "BadJwtIss",
            AuthError::BadJwtSignature(_) => "BadJwtSignature",
            AuthError::NotAuthorized(_) => "NotAuthorized",
            AuthError::JwtReplayed => "JwtReplayed",
            AuthError::UpstreamFailure(_) => "UpstreamFailure",
        }
    }

    /// The HTTP status: 401 for the token, 403 for a caller this service does not sign
    /// for, 502 when the caller's document cannot be had.
    pub fn status(&self) -> u16 {
        match self {
            AuthError::UpstreamFailure(_) => 502,
            AuthError::NotAuthorized(_) => 403,
            _ => 401,
        }
    }
}

/// A service token, parsed: its header and claims, and what its signature covers.
#[derive(Debug, Clone)]
pub struct ServiceToken {
    pub alg: Alg,
    pub iss: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub lxm: Option<String>,
    pub jti: String,
    /// `header.payload`, as received.
    signing_input: String,
    signature: Vec<u8>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    aud: String,
    exp: i64,
    iat: i64,
    #[serde(default)]
    lxm: Option<String>,
    jti: String,
}

fn decode(part: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::BadJwt("a part is not base64url"))
}

/// The token of an `Authorization` header value: `Bearer <token>` (the scheme is
/// case-insensitive, RFC 9110 §11.1).
pub fn bearer(authorization: Option<&str>) -> Result<&str, AuthError> {
    let value = authorization.ok_or(AuthError::AuthMissing)?.trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::AuthMissing)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::AuthMissing);
    }
    Ok(token)
}

/// Parses a compact JWS service token (RFC 7515 §7.1): the malformed and the wrongly typed
/// are refused here, before anything is looked up.
pub fn parse(token: &str) -> Result<ServiceToken, AuthError> {
    if token.len() > MAX_TOKEN {
        return Err(AuthError::BadJwt("token too long"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::BadJwt("not three parts"));
    };
    let head: Header = serde_json::from_slice(&decode(header)?)
        .map_err(|_| AuthError::BadJwt("header is not a JSON object with alg"))?;
    // `none`, HS256 and the rest: only the two curves atproto signs with.
    let alg = match head.alg.as_str() {
        "ES256" | "ES256K" => Alg::from_jws(&head.alg).ok_or(AuthError::BadJwt("alg"))?,
        _ => return Err(AuthError::BadJwt("alg is not ES256 or ES256K")),
    };
    // RFC 7515 §4.1.9: typ compares case-insensitively. atproto refuses its access,
    // refresh and DPoP tokens by name; a service token is `JWT` or untyped.
    if let Some(typ) = head.typ
        && !typ.eq_ignore_ascii_case("jwt")
    {
        return Err(AuthError::BadJwtType(typ));
    }
    let claims: Claims = serde_json::from_slice(&decode(payload)?).map_err(|_| {
        AuthError::BadJwt("claims need iss, aud, jti (strings), exp and iat (integers)")
    })?;
    Ok(ServiceToken {
        alg,
        iss: claims.iss,
        aud: claims.aud,
        exp: claims.exp,
        iat: claims.iat,
        lxm: claims.lxm,
        jti: claims.jti,
        signing_input: format!("{header}.{payload}"),
        signature: decode(signature)?,
    })
}

impl ServiceToken {
    /// The claims, as of `now`, for the service `service_did` and the method `lxm`.
    pub fn check(&self, now: i64, service_did: &str, lxm: &str) -> Result<(), AuthError> {
        if now > self.exp {
            return Err(AuthError::JwtExpired);
        }
        if self.exp - now > MAX_AHEAD {
            return Err(AuthError::BadJwt("exp is more than an hour ahead"));
        }
        // A PDS proxying the call names the bare DID; getServiceAuth passes `did#service`.
        let aud_ok = self.aud == service_did
            || self
                .aud
                .strip_prefix(service_did)
                .and_then(|rest| rest.strip_prefix('#'))
                == Some(SERVICE_ID);
        if !aud_ok {
            return Err(AuthError::BadJwtAudience(self.aud.clone()));
        }
        match &self.lxm {
            None => return Err(AuthError::BadJwtLexiconMethod(true)),
            Some(m) if m != lxm => return Err(AuthError::BadJwtLexiconMethod(false)),
            Some(_) => {}
        }
        if crate::format::syntax::supported_did_method(&self.iss).is_none() {
            return Err(AuthError::BadJwtIss(format!(
                "{:?} is not a did:plc or did:web DID without a fragment",
                self.iss
            )));
        }
        if self.jti.is_empty() || self.jti.len() > 256 {
            return Err(AuthError::BadJwt("jti must be 1 to 256 characters"));
        }
        Ok(())
    }

    /// Verifies the signature with `key`, as `Authenticator` does with the caller's key.
    pub fn verify_signature(&self, key: &PublicKey) -> Result<(), AuthError> {
        self.verify_with(key).map_err(Unverified::into_error)
    }

    /// Verifies the signature with `key` (64-byte r‖s, low-S; the key's curve must be `alg`'s).
    fn verify_with(&self, key: &PublicKey) -> Result<(), Unverified> {
        if key.alg() != self.alg {
            return Err(Unverified::OtherKey("the #atproto key is of another curve"));
        }
        match key.verify(self.signing_input.as_bytes(), &self.signature) {
            Ok(()) => Ok(()),
            Err(SignatureError::Invalid) => Err(Unverified::OtherKey("does not verify")),
            Err(e) => Err(Unverified::Malformed(e)),
        }
    }
}

/// Why a signature did not verify: with another key (a rotation may explain it: fetch the
/// document again), or not at all (high-S, wrong length: no key would help).
enum Unverified {
    OtherKey(&'static str),
    Malformed(SignatureError),
}

impl Unverified {
    fn into_error(self) -> AuthError {
        match self {
            Unverified::OtherKey(why) => AuthError::BadJwtSignature(why.to_string()),
            Unverified::Malformed(e) => AuthError::BadJwtSignature(e.to_string()),
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub did: String,
    /// The document its key came from (alignment reads its handle and mail host).
    pub document: Arc<ResolvedDid>,
}

/// Checks service tokens for one service DID and method, remembering each `jti` until its
/// token expires (`JtiSet`).
pub struct Authenticator {
    identity: Arc<IdentityResolver>,
    service_did: String,
    seen: JtiSet,
}

impl Authenticator {
    pub fn new(
        identity: Arc<IdentityResolver>,
        service_did: String,
        seen: JtiSet,
    ) -> Authenticator {
        Authenticator {
            identity,
            service_did,
            seen,
        }
    }

    pub fn service_did(&self) -> &str {
        &self.service_did
    }

    /// Authenticates a request to the method `lxm` by its `Authorization` header, as of
    /// `now`, for a caller
    /// `may_sign` says this service signs for. Anyone can reach the port: nothing is looked
    /// up and nothing remembered for a token that is malformed, for another service or
    /// method, or whose `iss` has no key here — so strangers can neither spend the PLC
    /// budget nor fill the `jti` set — and a `jti` is claimed only once the signature has
    /// verified.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
        lxm: &str,
        now: i64,
        may_sign: impl Fn(&str) -> bool,
    ) -> Result<Caller, AuthError> {
        let token = parse(bearer(authorization)?)?;
        token.check(now, &self.service_did, lxm)?;
        if !may_sign(&token.iss) {
            return Err(AuthError::NotAuthorized(token.iss));
        }
        let document = self.verify(&token).await?;
        if !self.seen.claim(&token, now).await {
            return Err(AuthError::JwtReplayed);
        }
        Ok(Caller {
            did: token.iss,
            document,
        })
    }

    /// The signature, with the `#atproto` key of the issuer's document; a key that does not
    /// verify gets the document fetched once more (the key may have been rotated).
    async fn verify(&self, token: &ServiceToken) -> Result<Arc<ResolvedDid>, AuthError> {
        let found = self.identity.resolve_did(&token.iss).await.map_err(|e| {
            if e.is_transient() {
                AuthError::UpstreamFailure(e.to_string())
            } else {
                AuthError::BadJwtIss(e.to_string())
            }
        })?;
        // A document past `max_age` that serves only because its directory cannot be asked
        // now (`stale_if_error`) never authenticates: the key in it may have been rotated
        // away from a thief. Mail verification may use it (and says so); a caller waits.
        if found.stale {
            return Err(AuthError::UpstreamFailure(
                "only an out-of-date copy of the caller's DID document is at hand".into(),
            ));
        }
        let document = found.value;
        let first = match document.document.key(ATPROTO_KEY) {
            Ok(key) => token.verify_with(&key),
            Err(_) => Err(Unverified::OtherKey("the DID document has no #atproto key")),
        };
        match first {
            Ok(()) => Ok(document),
            Err(Unverified::Malformed(e)) => Err(Unverified::Malformed(e).into_error()),
            Err(other) => {
                let fresh = match self.identity.refresh_after_failure(&token.iss).await {
                    Ok(Some(fresh)) => fresh,
                    Ok(None) => return Err(other.into_error()),
                    // Whether the key rotated cannot be known now: the caller may retry.
                    Err(e) => return Err(AuthError::UpstreamFailure(e.to_string())),
                };
                let key = fresh.document.key(ATPROTO_KEY).map_err(|_| {
                    AuthError::BadJwtSignature("the DID document has no #atproto key".into())
                })?;
                token.verify_with(&key).map_err(Unverified::into_error)?;
                Ok(fresh)
            }
        }
    }
}

/// The `jti` of every token accepted, until the token expires: in memory, bounded
/// (`MAX_REMEMBERED` entries of a SHA-256 and an expiry, about 100 bytes each); shared
/// through Redis (`SET NX`) in a fleet; kept in a file (`store.jti_file`) otherwise, so
/// that a restart does not make the last hour's tokens usable again. Only authorized
/// callers' tokens whose signatures verified get here. When memory is full of unexpired
/// entries a new token is refused, never an old one forgotten early.
pub struct JtiSet {
    memory: std::sync::Mutex<Remembered>,
    shared: Option<Arc<crate::infra::store::SharedStore>>,
    file: Option<Arc<crate::infra::store::SeenFile>>,
}

/// Entries the `jti` set holds at most: 300 000 × ~100 bytes ≈ 30 MiB, an hour of tokens at
/// 80 a second.
pub const MAX_REMEMBERED: usize = 300_000;

#[derive(Default)]
struct Remembered {
    expiry: std::collections::HashMap<[u8; 32], i64>,
    /// The same entries by expiry, soonest first (`Reverse`), for dropping the expired.
    by_expiry: std::collections::BinaryHeap<std::cmp::Reverse<(i64, [u8; 32])>>,
}

/// The `jti` set has no room for another unexpired token.
#[derive(Debug, PartialEq, Eq)]
struct Full;

impl Remembered {
    /// Drops what expired before `now`.
    fn purge(&mut self, now: i64) {
        while let Some(std::cmp::Reverse((expiry, hash))) = self.by_expiry.peek().copied() {
            if expiry >= now {
                break;
            }
            self.by_expiry.pop();
            if self.expiry.get(&hash) == Some(&expiry) {
                self.expiry.remove(&hash);
            }
        }
    }

    /// Remembers `hash` until `expiry`: false when it is remembered already.
    fn insert(&mut self, hash: [u8; 32], expiry: i64, now: i64) -> Result<bool, Full> {
        self.purge(now);
        if self.expiry.contains_key(&hash) {
            return Ok(false);
        }
        if self.expiry.len() >= MAX_REMEMBERED {
            return Err(Full);
        }
        self.expiry.insert(hash, expiry);
        self.by_expiry.push(std::cmp::Reverse((expiry, hash)));
        Ok(true)
    }
}

impl JtiSet {
    /// A set in memory only.
    pub fn in_memory() -> JtiSet {
        JtiSet {
            memory: std::sync::Mutex::default(),
            shared: None,
            file: None,
        }
    }

    /// A set shared through `shared` (Redis) when there is one, else kept in `file` too (its
    /// unexpired entries are read back now).
    pub fn new(
        shared: Option<Arc<crate::infra::store::SharedStore>>,
        file: Option<std::path::PathBuf>,
        now: i64,
    ) -> JtiSet {
        let mut set = JtiSet::in_memory();
        match (shared, file) {
            (Some(shared), _) => set.shared = Some(shared),
            (None, Some(path)) => {
                let file = crate::infra::store::SeenFile::new(path);
                {
                    let mut memory = set.memory.lock().unwrap_or_else(|e| e.into_inner());
                    for (expiry, hash) in file.unexpired(now) {
                        let _ = memory.insert(hash, expiry, now);
                    }
                }
                set.file = Some(Arc::new(file));
            }
            (None, None) => {}
        }
        set
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.memory.lock().map(|m| m.expiry.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Claims the token's `jti` (per issuer) until the token expires: true the first time.
    async fn claim(&self, token: &ServiceToken, now: i64) -> bool {
        use sha2::Digest;
        let hash: [u8; 32] = sha2::Sha256::new()
            .chain_update(token.iss.as_bytes())
            .chain_update([0])
            .chain_update(token.jti.as_bytes())
            .finalize()
            .into();
        let expiry = token.exp + 1;
        let fresh = {
            let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
            memory.insert(hash, expiry, now)
        };
        match fresh {
            Ok(true) => {}
            Ok(false) => return false,
            Err(Full) => {
                tracing::warn!(
                    "xrpc: the jti set holds {MAX_REMEMBERED} unexpired tokens; refusing more"
                );
                return false;
            }
        }
        let ttl = Duration::from_secs((expiry - now).max(1) as u64);
        if let Some(shared) = &self.shared {
            // Another instance of the fleet may have seen it; a Redis that cannot answer
            // leaves this instance's memory as the only guard (logged by the store).
            let hex: String = crate::format::hex::hex(&hash);
            if shared.claim(&format!("jti:{hex}"), ttl).await == Some(false) {
                return false;
            }
        }
        if let Some(file) = &self.file {
            let file = file.clone();
            let _ = tokio::task::spawn_blocking(move || {
                file.append(&hash, expiry, now)
                    .inspect_err(|e| file.warn(e))
            })
            .await;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crypto::SigningKey;

    const SERVICE: &str = "did:web:signer.example.net";
    const ALICE: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn token(key: &SigningKey, header: serde_json::Value, claims: serde_json::Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        format!("{input}.{}", b64(&key.sign(input.as_bytes())))
    }

    fn claims(exp: i64) -> serde_json::Value {
        serde_json::json!({"iat": 1000, "iss": ALICE, "aud": SERVICE, "exp": exp,
            "lxm": SIGN_ENVELOPE, "jti": "0123456789abcdef0123456789abcdef"})
    }

    #[test]
    fn bearer_is_the_scheme_case_insensitively() {
        assert_eq!(bearer(Some("Bearer abc")), Ok("abc"));
        assert_eq!(bearer(Some("bearer  abc ")), Ok("abc"));
        assert_eq!(bearer(None), Err(AuthError::AuthMissing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::AuthMissing));
        assert_eq!(bearer(Some("Bearer ")), Err(AuthError::AuthMissing));
    }

    #[test]
    fn each_bad_token_gets_its_name_in_the_table_order() {
        let key = SigningKey::generate(Alg::Es256k).unwrap();
        let head = serde_json::json!({"typ": "JWT", "alg": "ES256K"});
        let name = |t: &str| match parse(t).and_then(|t| t.check(1010, SERVICE, SIGN_ENVELOPE)) {
            Ok(()) => "ok",
            Err(e) => e.name(),
        };
        assert_eq!(name(&token(&key, head.clone(), claims(1060))), "ok");
        assert_eq!(name("garbage"), "BadJwt");
        assert_eq!(name("a.b.c.d"), "BadJwt");
        assert_eq!(name(&"x".repeat(MAX_TOKEN + 1)), "BadJwt");
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(claims(1060).to_string().as_bytes())
        );
        assert_eq!(name(&none), "BadJwt");
        assert_eq!(
            name(&token(
                &key,
                serde_json::json!({"alg": "HS256"}),
                claims(1060)
            )),
            "BadJwt"
        );
        // No typ is a service token too; at+jwt is an access token, even expired.
        assert_eq!(
            name(&token(
                &key,
                serde_json::json!({"alg": "ES256K"}),
                claims(1060)
            )),
            "ok"
        );
        for typ in ["at+jwt", "refresh+jwt", "dpop+jwt"] {
            let t = token(
                &key,
                serde_json::json!({"alg": "ES256K", "typ": typ}),
                claims(10),
            );
            assert_eq!(name(&t), "BadJwtType", "{typ}");
        }
        assert_eq!(name(&token(&key, head.clone(), claims(1009))), "JwtExpired");
        assert_eq!(name(&token(&key, head.clone(), claims(1010 + 3600))), "ok");
        assert_eq!(
            name(&token(&key, head.clone(), claims(1011 + 3600))),
            "BadJwt"
        );
        let with = |field: &str, value: serde_json::Value| {
            let mut c = claims(1060);
            c[field] = value;
            name(&token(&key, head.clone(), c))
        };
        assert_eq!(with("aud", format!("{SERVICE}#atsms_signer").into()), "ok");
        assert_eq!(
            with("aud", format!("{SERVICE}#atproto_pds").into()),
            "BadJwtAudience"
        );
        assert_eq!(
            with("aud", "did:web:other.example".into()),
            "BadJwtAudience"
        );
        assert_eq!(
            with("lxm", "com.atproto.repo.createRecord".into()),
            "BadJwtLexiconMethod"
        );
        let mut no_lxm = claims(1060);
        no_lxm.as_object_mut().unwrap().remove("lxm");
        assert_eq!(
            name(&token(&key, head.clone(), no_lxm)),
            "BadJwtLexiconMethod"
        );
        assert_eq!(with("iss", format!("{ALICE}#atproto").into()), "BadJwtIss");
        assert_eq!(with("iss", "alice.example.com".into()), "BadJwtIss");
        assert_eq!(with("exp", "1060".into()), "BadJwt");
        assert_eq!(with("jti", serde_json::Value::Null), "BadJwt");
    }

    #[test]
    fn the_signature_is_low_s_with_the_callers_curve() {
        for alg in [Alg::Es256, Alg::Es256k] {
            let key = SigningKey::generate(alg).unwrap();
            let head = serde_json::json!({"typ": "JWT", "alg": alg.jws_name()});
            let t = parse(&token(&key, head, claims(1060))).unwrap();
            assert!(t.verify_with(&key.public_key()).is_ok());
            let other = SigningKey::generate(alg).unwrap().public_key();
            assert!(matches!(
                t.verify_with(&other),
                Err(Unverified::OtherKey(_))
            ));
            let curve = SigningKey::generate(if alg == Alg::Es256 {
                Alg::Es256k
            } else {
                Alg::Es256
            })
            .unwrap()
            .public_key();
            assert!(matches!(
                t.verify_with(&curve),
                Err(Unverified::OtherKey(_))
            ));
            let mut high = t.clone();
            high.signature = crate::format::crypto::malleate(alg, &t.signature);
            assert!(matches!(
                high.verify_with(&key.public_key()),
                Err(Unverified::Malformed(SignatureError::HighS))
            ));
        }
    }
}
