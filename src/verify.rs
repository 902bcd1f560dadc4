//! One message in, a `Verdict` out: every `AT-SMS-Signature` field judged on its own by the
//! steps of section 8 of the spec, in order, then the handle and alignment of section 7.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::envelope::{
    self, AuthResult, FIELD_NAME, HeaderField, header_hash, same_address, single_from_address,
    tags, token,
};
use crate::identity::{DidDocument, IdentityResolver};

/// Signatures verified per message; fields beyond this are reported as `permerror` without
/// any lookup, so a message with thousands of fields costs no more than one with ten.
pub const MAX_SIGNATURES: usize = 10;

/// The judgement of one `AT-SMS-Signature` field (the JSON of `verify --json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignatureVerdict {
    pub result: AuthResult,
    /// The `d=` tag's value, whenever the tag list could be read.
    pub did: Option<String>,
    pub kid: Option<String>,
    /// A short human reason; none on pass.
    pub reason: Option<String>,
    /// The handle, only once checked in both directions.
    pub handle: Option<String>,
    /// Whether From is aligned with the DID; only on pass.
    pub aligned: Option<bool>,
    /// The key came from a stale cache entry.
    pub stale: bool,
    /// The From address, on pass (for `header.from`).
    #[serde(skip)]
    pub from: Option<String>,
    /// The token's `rcpt` claim, on pass: the recipients this copy is meant for.
    #[serde(skip)]
    pub rcpt: Option<Vec<String>>,
    /// The token's `jti` and `exp`, on pass (replay detection).
    #[serde(skip)]
    pub jti: Option<String>,
    #[serde(skip)]
    pub exp: Option<i64>,
}

impl SignatureVerdict {
    fn rejected(
        result: AuthResult,
        did: Option<String>,
        kid: Option<String>,
        reason: impl Into<String>,
    ) -> Self {
        SignatureVerdict {
            result,
            did,
            kid,
            reason: Some(reason.into()),
            handle: None,
            aligned: None,
            stale: false,
            from: None,
            rcpt: None,
            jti: None,
            exp: None,
        }
    }
}

/// All signatures of one message, top first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Verdict {
    pub signatures: Vec<SignatureVerdict>,
}

impl Verdict {
    /// The message's result, for choosing an action: `pass` if any signature passes, else the
    /// first present of temperror, fail, permerror, policy; `none` without signatures.
    pub fn message_result(&self) -> AuthResult {
        if self.signatures.is_empty() {
            return AuthResult::None;
        }
        [
            AuthResult::Pass,
            AuthResult::Temperror,
            AuthResult::Fail,
            AuthResult::Permerror,
            AuthResult::Policy,
        ]
        .into_iter()
        .find(|r| self.signatures.iter().any(|s| s.result == *r))
        .unwrap_or(AuthResult::Permerror)
    }

    /// The verdict for a delivery to `recipients` (step 11 of section 8): a passing signature
    /// whose `rcpt` claim leaves out one of them becomes `policy`. Cheap: nothing is verified
    /// again, so LMTP can judge each recipient on its own.
    pub fn restricted_to(&self, recipients: &[String]) -> Verdict {
        let mut verdict = self.clone();
        for sig in &mut verdict.signatures {
            let Some(rcpt) = &sig.rcpt else { continue };
            let outside = recipients
                .iter()
                .any(|r| !rcpt.iter().any(|allowed| allowed.eq_ignore_ascii_case(r)));
            if sig.result == AuthResult::Pass && outside {
                sig.result = AuthResult::Policy;
                sig.reason = Some("recipient not in rcpt".into());
                sig.aligned = None;
                sig.handle = None;
                sig.from = None;
            }
        }
        verdict
    }

    /// The passing signature to report in the log: aligned ones first.
    pub fn best_pass(&self) -> Option<&SignatureVerdict> {
        let passing = || {
            self.signatures
                .iter()
                .filter(|s| s.result == AuthResult::Pass)
        };
        passing()
            .find(|s| s.aligned == Some(true))
            .or_else(|| passing().next())
    }
}

/// What the verifier is told about the message beyond its bytes.
#[derive(Debug, Clone, Default)]
pub struct Context<'a> {
    /// Unix seconds: time is an input, so vectors and tests are deterministic.
    pub now: i64,
    /// Envelope recipients (for the `rcpt` claim); empty when not known.
    pub recipients: &'a [String],
}

/// Verifies messages; shares one identity resolver (and its cache) between them.
#[derive(Clone)]
pub struct Verifier {
    identity: Arc<IdentityResolver>,
    timeout: Duration,
}

impl Verifier {
    pub fn new(identity: Arc<IdentityResolver>, timeout: Duration) -> Verifier {
        Verifier { identity, timeout }
    }

    pub fn identity(&self) -> &Arc<IdentityResolver> {
        &self.identity
    }

    pub async fn verify(
        &self,
        headers: &[HeaderField],
        body_hash: &[u8; 32],
        context: &Context<'_>,
    ) -> Verdict {
        let mut signatures = Vec::new();
        for (index, field) in headers.iter().filter(|f| f.is(FIELD_NAME)).enumerate() {
            let verdict = if index < MAX_SIGNATURES {
                self.verify_one(&field.value, headers, body_hash, context)
                    .await
            } else {
                let d = tags::parse(&field.value).ok().map(|t| t.d);
                SignatureVerdict::rejected(
                    AuthResult::Permerror,
                    d,
                    None,
                    format!("more than {MAX_SIGNATURES} signatures; not verified"),
                )
            };
            signatures.push(verdict);
        }
        // Step 11, the rcpt claim, judged against the recipients known here.
        Verdict { signatures }.restricted_to(context.recipients)
    }

    async fn verify_one(
        &self,
        value: &[u8],
        headers: &[HeaderField],
        body_hash: &[u8; 32],
        context: &Context<'_>,
    ) -> SignatureVerdict {
        // Step 1: the tag list.
        let tag_list = match tags::parse(value) {
            Ok(t) => t,
            Err(e) => {
                return SignatureVerdict::rejected(AuthResult::Permerror, e.d, None, e.reason);
            }
        };
        let did = Some(tag_list.d.clone());
        // Steps 2 to 4: token, protected header, claims.
        let token = match token::parse(&tag_list.t, &tag_list.d) {
            Ok(t) => t,
            Err(reason) => {
                return SignatureVerdict::rejected(AuthResult::Permerror, did, None, reason);
            }
        };
        let kid = Some(token.kid.to_string());
        let reject = |result, reason: &str| {
            SignatureVerdict::rejected(result, did.clone(), kid.clone(), reason)
        };
        let claims = &token.claims;
        // Step 5: times.
        if let Err(reason) = claims.check_times(context.now) {
            return reject(AuthResult::Permerror, &reason);
        }
        // Step 6: the key.
        if token.kid.did() != claims.iss {
            return reject(AuthResult::Permerror, "kid names another DID than iss");
        }
        // Steps 6 to 8. If they fail with a cached document, the DID may have rotated its key:
        // fetch it again (at most once per DID per five minutes) and, if it changed, judge again.
        let resolved = match self.key_and_signature(&token, context.now, None).await {
            Ok(resolved) => resolved,
            Err(rejection) => {
                let fresh = match rejection.retry_with_fresh_document {
                    true => tokio::time::timeout(
                        self.timeout,
                        self.identity.refresh_after_failure(&claims.iss),
                    )
                    .await
                    .ok()
                    .flatten(),
                    false => None,
                };
                let Some(document) = fresh else {
                    return reject(rejection.result, &rejection.reason);
                };
                match self
                    .key_and_signature(&token, context.now, Some(document))
                    .await
                {
                    Ok(resolved) => resolved,
                    Err(rejection) => return reject(rejection.result, &rejection.reason),
                }
            }
        };
        // Step 9: the hashes.
        if header_hash(&claims.h, headers) != claims.hh {
            return reject(AuthResult::Fail, "header hash mismatch");
        }
        if *body_hash != claims.bh {
            return reject(AuthResult::Fail, "body hash mismatch");
        }
        // Step 10: From.
        let from = match single_from_address(headers) {
            Ok(from) => from,
            Err(reason) => return reject(AuthResult::Fail, reason),
        };
        if !same_address(&claims.from, &from) {
            return reject(
                AuthResult::Fail,
                "from claim does not match the From address",
            );
        }
        // Step 11 (the rcpt claim) is applied by `restricted_to`, per recipient.
        // Step 12: pass; the handle and alignment never change that.
        let document = &resolved.did.document;
        let handle = tokio::time::timeout(self.timeout, self.identity.checked_handle(document))
            .await
            .ok()
            .flatten()
            .map(|(handle, _)| handle);
        let aligned = is_aligned(&from, handle.as_deref(), document);
        SignatureVerdict {
            result: AuthResult::Pass,
            did,
            kid,
            reason: None,
            handle,
            aligned: Some(aligned),
            stale: resolved.stale,
            from: Some(from),
            rcpt: claims.rcpt.clone(),
            jti: Some(claims.jti.clone()),
            exp: Some(claims.exp),
        }
    }
}

/// Why steps 6 to 8 failed, and whether a fresher DID document could change that.
struct Rejection {
    result: AuthResult,
    reason: String,
    retry_with_fresh_document: bool,
}

impl Verifier {
    /// Steps 6 (key), 7 (expiry) and 8 (signature), with the cached document or `document`.
    async fn key_and_signature(
        &self,
        token: &envelope::Token,
        now: i64,
        document: Option<Arc<crate::identity::ResolvedDid>>,
    ) -> Result<crate::identity::ResolvedKey, Rejection> {
        let lookup = async {
            match &document {
                Some(document) => {
                    self.identity
                        .key_in(document, &token.kid, now, false, false)
                        .await
                }
                None => self.identity.resolve_key(&token.kid, now).await,
            }
        };
        let resolved = match tokio::time::timeout(self.timeout, lookup).await {
            Ok(Ok(resolved)) => resolved,
            Ok(Err(e)) => {
                return Err(Rejection {
                    result: if e.error.transient {
                        AuthResult::Temperror
                    } else {
                        AuthResult::Permerror
                    },
                    reason: e.error.reason,
                    retry_with_fresh_document: !e.error.transient && e.cached_document,
                });
            }
            Err(_) => {
                let reason = "identity lookup timed out".to_string();
                return Err(Rejection {
                    result: AuthResult::Temperror,
                    reason,
                    retry_with_fresh_document: false,
                });
            }
        };
        if resolved.key.alg() != token.alg {
            let reason = format!(
                "alg {} does not match the key's curve {}",
                token.alg,
                resolved.key.alg().curve_name()
            );
            return Err(Rejection {
                result: AuthResult::Permerror,
                reason,
                retry_with_fresh_document: resolved.cached,
            });
        }
        // Step 7: expiry (no fresher document changes it).
        if token.claims.is_expired(now) {
            let reason = "expired".to_string();
            return Err(Rejection {
                result: AuthResult::Fail,
                reason,
                retry_with_fresh_document: false,
            });
        }
        // Step 8: the signature.
        if let Err(e) = resolved
            .key
            .verify(token.signing_input.as_bytes(), &token.signature)
        {
            return Err(Rejection {
                result: AuthResult::Fail,
                reason: e.to_string(),
                retry_with_fresh_document: resolved.cached,
            });
        }
        Ok(resolved)
    }
}

fn same_domain(a: &str, b: &str) -> bool {
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

/// Section 7: From is aligned with the DID when its domain is the checked handle, or it is
/// the DID's own mailbox address at its `#atsms_mail` host, or the `mailto:` address there.
pub fn is_aligned(from: &str, handle: Option<&str>, document: &DidDocument) -> bool {
    let Some((local, domain)) = from.rsplit_once('@') else {
        return false;
    };
    if handle.is_some_and(|h| same_domain(domain, h)) {
        return true;
    }
    match document.mail_service() {
        Some(endpoint) if endpoint.starts_with("smtp://") => {
            let authority = endpoint["smtp://".len()..]
                .split('/')
                .next()
                .unwrap_or_default();
            let host = match authority.rsplit_once(':') {
                Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
                _ => authority,
            };
            let dotted = document.id.replace(':', ".");
            let bang = document.id.replace(':', "!");
            same_domain(domain, host) && (local == dotted || local == bang)
        }
        Some(endpoint) => endpoint
            .strip_prefix("mailto:")
            .is_some_and(|address| envelope::same_address(from, address)),
        None => false,
    }
}
