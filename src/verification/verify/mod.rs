//! One message in, a `Verdict` out: every `AT-SMS-Signature` field judged on its own by the
//! steps of section 8 of the spec, in order, then the handle and alignment of section 7.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::ser::SerializeStruct;

use crate::atproto::identity::{IdentityError, IdentityResolver, ResolvedDid, ResolvedKey};
use crate::format::crypto::{Alg, SignatureError};
use crate::format::envelope::tags::TagProblem;
use crate::format::envelope::token::{TimeError, TokenError};
use crate::format::envelope::{
    self, AuthResult, FIELD_NAME, FieldError, HeaderField, Mailbox, check_fields, header_hash,
    tags, token,
};
use crate::format::syntax;

mod alignment;
mod floor;

pub use alignment::{aligned_by_handle, vouching_domain};

/// Signatures verified per message; fields beyond this are reported as `permerror` without
/// any lookup, so a message with thousands of fields costs no more than one with ten.
pub const MAX_SIGNATURES: usize = 10;

/// Why a signature did not pass, typed; `Display` is the short English reason written into
/// `reason=` (never holding `"` or `\`: attacker-chosen parts are filtered where they enter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// Step 1.
    #[error("{0}")]
    Tags(TagProblem),
    /// Steps 2 to 4.
    #[error("{0}")]
    Token(TokenError),
    /// Step 5.
    #[error("{0}")]
    Times(TimeError),
    /// Step 6: the DID in `kid` is not `iss`.
    #[error("kid names another DID than iss")]
    KidOtherDid,
    /// Step 6: the DID, its key or device certificate could not be had.
    #[error("{0}")]
    Identity(IdentityError),
    /// Step 6: `alg` does not match the key's curve.
    #[error("alg {alg} does not match the key's curve {}", key.curve_name())]
    AlgMismatch { alg: Alg, key: Alg },
    /// Step 7.
    #[error("expired")]
    Expired,
    /// Step 8.
    #[error("{0}")]
    Signature(SignatureError),
    /// Step 9.
    #[error("header hash mismatch")]
    HeaderHash,
    #[error("body hash mismatch")]
    BodyHash,
    /// Step 10.
    #[error("{0}")]
    Fields(FieldError),
    #[error("from claim does not match the From address")]
    FromClaim,
    /// Step 11: a recipient outside the `rcpt` claim.
    #[error("recipient not in rcpt")]
    NotInRcpt,
    /// Step 11: the same (DID, jti, mailbox) was accepted before.
    #[error("replayed")]
    Replayed,
    /// The X.509 floor (an AT-SMS client's CMS SignedData, `floor`).
    #[error("{0}")]
    Floor(crate::verification::atsms_parts::FloorError),
    #[error("more than {MAX_SIGNATURES} signatures; not verified")]
    TooManySignatures,
}

/// What only a passing signature has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passed {
    /// The From mailbox (for `header.from`).
    pub from: Mailbox,
    /// The handle, only once checked in both directions.
    pub handle: Option<String>,
    /// Whether From is aligned with the DID (section 7).
    pub aligned: bool,
    /// The token's `rcpt` claim: the recipients this copy is meant for.
    pub rcpt: Option<Vec<String>>,
    /// The token's `jti` and `exp` (replay detection).
    pub jti: String,
    pub exp: i64,
}

/// The judgement of one `AT-SMS-Signature` field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureVerdict {
    pub result: AuthResult,
    /// The `d=` tag's value, when the tag list could be read and it is a valid DID.
    pub did: Option<String>,
    pub kid: Option<String>,
    /// Why it did not pass; none on pass.
    pub reason: Option<Reason>,
    /// The key came from a stale cache entry.
    pub stale: bool,
    /// Present exactly when `result` is `pass`.
    pub passed: Option<Passed>,
}

impl SignatureVerdict {
    fn rejected(
        result: AuthResult,
        did: Option<String>,
        kid: Option<String>,
        reason: Reason,
    ) -> Self {
        SignatureVerdict {
            result,
            did,
            kid,
            reason: Some(reason),
            stale: false,
            passed: None,
        }
    }

    pub fn handle(&self) -> Option<&str> {
        self.passed.as_ref().and_then(|p| p.handle.as_deref())
    }

    pub fn aligned(&self) -> Option<bool> {
        self.passed.as_ref().map(|p| p.aligned)
    }

    /// A passing signature turned into `policy` by local policy (step 11).
    pub fn refuse_by_policy(&mut self, reason: Reason) {
        self.result = AuthResult::Policy;
        self.reason = Some(reason);
        self.passed = None;
    }
}

/// The JSON of `verify --json` (interfaces: result, did, kid, reason, handle, aligned, stale).
impl Serialize for SignatureVerdict {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("SignatureVerdict", 7)?;
        s.serialize_field("result", &self.result)?;
        s.serialize_field("did", &self.did)?;
        s.serialize_field("kid", &self.kid)?;
        s.serialize_field("reason", &self.reason.as_ref().map(|r| r.to_string()))?;
        s.serialize_field("handle", &self.handle())?;
        s.serialize_field("aligned", &self.aligned())?;
        s.serialize_field("stale", &self.stale)?;
        s.end()
    }
}

/// All signatures of one message, top first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(transparent)]
pub struct Verdict {
    pub signatures: Vec<SignatureVerdict>,
}

/// The message's result, for choosing an action (interfaces: "A message's result"): `pass` if
/// any signature passes, else the first present of temperror, fail, permerror, policy; `none`
/// without signatures.
pub fn message_result(results: impl Iterator<Item = AuthResult> + Clone) -> AuthResult {
    [
        AuthResult::Pass,
        AuthResult::Temperror,
        AuthResult::Fail,
        AuthResult::Permerror,
        AuthResult::Policy,
    ]
    .into_iter()
    .find(|r| results.clone().any(|s| s == *r))
    .unwrap_or(AuthResult::None)
}

impl Verdict {
    pub fn message_result(&self) -> AuthResult {
        message_result(self.signatures.iter().map(|s| s.result))
    }

    /// The verdict for a delivery to `recipients` (step 11 of section 8): a passing signature
    /// whose `rcpt` claim leaves out one of them becomes `policy`. Cheap: nothing is verified
    /// again, so each recipient can be judged on its own.
    pub fn restricted_to(&self, recipients: &[String]) -> Verdict {
        let mut verdict = self.clone();
        for sig in &mut verdict.signatures {
            let outside = sig
                .passed
                .as_ref()
                .and_then(|p| p.rcpt.as_ref())
                .is_some_and(|rcpt| {
                    recipients
                        .iter()
                        .any(|r| !rcpt.iter().any(|allowed| allowed.eq_ignore_ascii_case(r)))
                });
            if outside {
                sig.refuse_by_policy(Reason::NotInRcpt);
            }
        }
        verdict
    }

    /// The passing signature to report: aligned ones first.
    pub fn best_pass(&self) -> Option<&SignatureVerdict> {
        self.best_pass_index().map(|i| &self.signatures[i])
    }

    fn best_pass_index(&self) -> Option<usize> {
        let passing = || {
            self.signatures
                .iter()
                .enumerate()
                .filter(|(_, s)| s.passed.is_some())
        };
        passing()
            .find(|(_, s)| s.aligned() == Some(true))
            .or_else(|| passing().next())
            .map(|(i, _)| i)
    }

    /// The signature a message is reported by (logs, the rules' properties): the best pass,
    /// else the first.
    pub fn reported_index(&self) -> usize {
        self.best_pass_index().unwrap_or(0)
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

/// The DID reported for a field (section 8): the `d=` value when it is a valid DID.
fn reported_did(d: Option<String>) -> Option<String> {
    d.filter(|d| syntax::is_valid_did(d))
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
        // A message being judged: its lookups use mail's own share of the PLC budget.
        crate::atproto::identity::budget::for_mail(self.verify_all(headers, body_hash, context))
            .await
    }

    async fn verify_all(
        &self,
        headers: &[HeaderField],
        body_hash: &[u8; 32],
        context: &Context<'_>,
    ) -> Verdict {
        // Step 10 depends on the message only: read it once for all signatures.
        let fields = check_fields(headers);
        let mut signatures = Vec::new();
        for (index, field) in headers.iter().filter(|f| f.is(FIELD_NAME)).enumerate() {
            let verdict = if index < MAX_SIGNATURES {
                self.verify_one(&field.value, headers, &fields, body_hash, context)
                    .await
            } else {
                let d = tags::parse(&field.value).ok().map(|t| t.d);
                SignatureVerdict::rejected(
                    AuthResult::Permerror,
                    reported_did(d),
                    None,
                    Reason::TooManySignatures,
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
        fields: &Result<Mailbox, FieldError>,
        body_hash: &[u8; 32],
        context: &Context<'_>,
    ) -> SignatureVerdict {
        // Step 1: the tag list.
        let tag_list = match tags::parse(value) {
            Ok(t) => t,
            Err(e) => {
                return SignatureVerdict::rejected(
                    AuthResult::Permerror,
                    reported_did(e.d),
                    None,
                    Reason::Tags(e.problem),
                );
            }
        };
        let did = reported_did(Some(tag_list.d.clone()));
        // Steps 2 to 4: token, protected header, claims.
        let token = match token::parse(&tag_list.t, &tag_list.d) {
            Ok(t) => t,
            Err(e) => {
                return SignatureVerdict::rejected(
                    AuthResult::Permerror,
                    did,
                    None,
                    Reason::Token(e),
                );
            }
        };
        let kid = Some(token.kid.to_string());
        let reject = |result, reason: Reason| {
            SignatureVerdict::rejected(result, did.clone(), kid.clone(), reason)
        };
        let claims = &token.claims;
        // Step 5: times.
        if let Err(e) = claims.check_times(context.now) {
            return reject(AuthResult::Permerror, Reason::Times(e));
        }
        // Step 6: the key.
        if token.kid.did() != claims.iss {
            return reject(AuthResult::Permerror, Reason::KidOtherDid);
        }
        // Steps 6 to 8.
        let resolved = match self.key_with_rotation(&token, context.now).await {
            Ok(resolved) => resolved,
            Err((result, reason)) => return reject(result, reason),
        };
        let fail = |reason| {
            let mut v = reject(AuthResult::Fail, reason);
            v.stale = resolved.stale;
            v
        };
        // Step 9: the hashes.
        if header_hash(&claims.h, headers) != claims.hh {
            return fail(Reason::HeaderHash);
        }
        if *body_hash != claims.bh {
            return fail(Reason::BodyHash);
        }
        // Step 10: one strict From mailbox, no duplicated singleton field, the claim names it.
        let from = match fields {
            Ok(from) => from.clone(),
            Err(e) => return fail(Reason::Fields(e.clone())),
        };
        if !envelope::claim_names(&claims.from, &from) {
            return fail(Reason::FromClaim);
        }
        // Step 11 (the rcpt claim) is applied by `restricted_to`, per recipient.
        // Step 12: pass; the handle and alignment never change that.
        let document = &resolved.did.document;
        let (handle, aligned) = tokio::time::timeout(self.timeout, self.alignment(&from, document))
            .await
            .unwrap_or((None, false));
        SignatureVerdict {
            result: AuthResult::Pass,
            did,
            kid,
            reason: None,
            stale: resolved.stale,
            passed: Some(Passed {
                from,
                handle,
                aligned,
                rcpt: claims.rcpt.clone(),
                jti: claims.jti.clone(),
                exp: claims.exp,
            }),
        }
    }
}

/// Verdicts made up for unit tests of the rooms that read them.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A passing signature by alice's DID from `from`, valid until 1000.
    pub fn passing(
        from: &str,
        handle: Option<&str>,
        aligned: bool,
        rcpt: Option<Vec<String>>,
    ) -> SignatureVerdict {
        SignatureVerdict {
            result: AuthResult::Pass,
            did: Some("did:plc:ofurdhfyhjhgomvfygxergep".into()),
            kid: None,
            reason: None,
            stale: false,
            passed: Some(Passed {
                from: crate::format::envelope::fields::parse_mailbox(
                    format!(" <{from}>").as_bytes(),
                )
                .expect("a mailbox"),
                handle: handle.map(str::to_string),
                aligned,
                rcpt,
                jti: "0123456789abcdef".into(),
                exp: 1000,
            }),
        }
    }

    /// A signature that did not pass, for `reason`.
    pub fn failing(result: AuthResult, reason: Reason) -> SignatureVerdict {
        SignatureVerdict::rejected(result, None, None, reason)
    }
}

/// Why steps 6 to 8 failed, and whether a fresher DID document could change that.
struct Rejection {
    result: AuthResult,
    reason: Reason,
    retry_with_fresh_document: bool,
}

impl Verifier {
    /// Steps 6 to 8. If they fail with a cached document, the DID may have rotated its key:
    /// fetch it again (at most once per DID per five minutes) and, if it changed, judge again.
    async fn key_with_rotation(
        &self,
        token: &envelope::Token,
        now: i64,
    ) -> Result<ResolvedKey, (AuthResult, Reason)> {
        let rejection = match self.key_and_signature(token, now, None).await {
            Ok(resolved) => return Ok(resolved),
            Err(rejection) => rejection,
        };
        if !rejection.retry_with_fresh_document {
            return Err((rejection.result, rejection.reason));
        }
        // Rare (a key that failed): boxed, so it does not enlarge every message's future.
        let refresh = Box::pin(self.identity.refresh_after_failure(&token.claims.iss));
        let document = match tokio::time::timeout(self.timeout, refresh).await {
            Ok(Ok(Some(document))) => document,
            Ok(Ok(None)) => return Err((rejection.result, rejection.reason)),
            // Whether the key rotated cannot be known now: temperror, as DKIM answers a key it
            // cannot retrieve for now (RFC 6376 §6.1.2).
            Ok(Err(e)) => return Err((AuthResult::Temperror, Reason::Identity(e))),
            Err(_) => {
                let timed_out = Reason::Identity(IdentityError::TimedOut);
                return Err((AuthResult::Temperror, timed_out));
            }
        };
        Box::pin(self.key_and_signature(token, now, Some(document)))
            .await
            .map_err(|rejection| (rejection.result, rejection.reason))
    }

    /// Steps 6 (key), 7 (expiry) and 8 (signature), with the cached document or `document`.
    async fn key_and_signature(
        &self,
        token: &envelope::Token,
        now: i64,
        document: Option<Arc<ResolvedDid>>,
    ) -> Result<ResolvedKey, Rejection> {
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
                    result: if e.error.is_transient() {
                        AuthResult::Temperror
                    } else {
                        AuthResult::Permerror
                    },
                    retry_with_fresh_document: !e.error.is_transient() && e.cached_document,
                    reason: Reason::Identity(e.error),
                });
            }
            Err(_) => {
                return Err(Rejection {
                    result: AuthResult::Temperror,
                    reason: Reason::Identity(IdentityError::TimedOut),
                    retry_with_fresh_document: false,
                });
            }
        };
        if resolved.key.alg() != token.alg {
            return Err(Rejection {
                result: AuthResult::Permerror,
                reason: Reason::AlgMismatch {
                    alg: token.alg,
                    key: resolved.key.alg(),
                },
                retry_with_fresh_document: resolved.cached,
            });
        }
        // Step 7: expiry (no fresher document changes it).
        if token.claims.is_expired(now) {
            return Err(Rejection {
                result: AuthResult::Fail,
                reason: Reason::Expired,
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
                reason: Reason::Signature(e),
                retry_with_fresh_document: resolved.cached,
            });
        }
        Ok(resolved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passing(aligned: bool, rcpt: Option<Vec<String>>) -> SignatureVerdict {
        testing::passing("a@b.example", None, aligned, rcpt)
    }

    fn failing(result: AuthResult) -> SignatureVerdict {
        testing::failing(result, Reason::Expired)
    }

    #[test]
    fn the_message_result_rule() {
        use AuthResult::{Fail, Pass, Permerror, Policy, Temperror};
        let result = |sigs: Vec<SignatureVerdict>| Verdict { signatures: sigs }.message_result();
        assert_eq!(result(vec![]), AuthResult::None);
        assert_eq!(result(vec![failing(Fail), passing(false, None)]), Pass);
        assert_eq!(result(vec![failing(Fail), failing(Temperror)]), Temperror);
        assert_eq!(result(vec![failing(Permerror), failing(Fail)]), Fail);
        assert_eq!(result(vec![failing(Policy), failing(Permerror)]), Permerror);
        assert_eq!(result(vec![failing(Policy)]), Policy);
    }

    #[test]
    fn restricted_to_turns_outsiders_into_policy() {
        let verdict = Verdict {
            signatures: vec![
                passing(true, Some(vec!["bob@x.example".into()])),
                passing(false, None),
            ],
        };
        let for_bob = verdict.restricted_to(&["BOB@x.example".into()]);
        assert_eq!(for_bob, verdict);
        let for_carol = verdict.restricted_to(&["carol@x.example".into()]);
        assert_eq!(for_carol.signatures[0].result, AuthResult::Policy);
        assert_eq!(for_carol.signatures[0].reason, Some(Reason::NotInRcpt));
        assert_eq!(for_carol.signatures[0].passed, None);
        assert_eq!(for_carol.signatures[1], verdict.signatures[1]);
        assert_eq!(for_carol.best_pass(), Some(&verdict.signatures[1]));
        assert_eq!(verdict.best_pass(), Some(&verdict.signatures[0]));
        let both = verdict.restricted_to(&["bob@x.example".into(), "carol@x.example".into()]);
        assert_eq!(both.signatures[0].result, AuthResult::Policy);
    }
}
