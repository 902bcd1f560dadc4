//! The X.509 floor as one more signature of a message (docs/atsms.md): an AT-SMS client's
//! CMS SignedData, verified by `floor`, judged like an `AT-SMS-Signature` from there on — the
//! same result words, `header.d`, alignment of From with the DID (section 7), replays by
//! (DID, SHA-256 of the SignedData, mailbox), inbox rules and reputation.

use sha2::{Digest, Sha256};

use super::*;
use crate::verification::atsms_parts::{self, FloorError};

impl Verifier {
    /// The verdict of the SignedData `der` a message carries (`detached`: the content a
    /// `multipart/signed` signs), as of `now`.
    pub async fn floor(
        &self,
        headers: &[HeaderField],
        der: &[u8],
        detached: Option<&[u8]>,
        now: i64,
    ) -> SignatureVerdict {
        let signed = match atsms_parts::check_signed(der, detached) {
            Ok(signed) => signed,
            Err(e) => {
                let claimed = atsms_parts::claimed_device(der);
                let did = claimed.as_ref().map(|(did, _)| did.clone());
                let kid = claimed
                    .map(|(did, fp)| format!("at://{did}/{}/{fp}", token::DEVICE_CERT_COLLECTION));
                return SignatureVerdict::rejected(e.result(), did, kid, Reason::Floor(e));
            }
        };
        let did = signed.did.clone();
        let kid = format!(
            "at://{did}/{}/{}",
            token::DEVICE_CERT_COLLECTION,
            signed.fingerprint
        );
        let checked = atsms_parts::published(&self.identity, &signed, now).await;
        if checked.result != AuthResult::Pass {
            let why = FloorError::Unpublished(checked.reason.unwrap_or_default());
            return SignatureVerdict::rejected(
                checked.result,
                Some(did),
                Some(kid),
                Reason::Floor(why),
            );
        }
        let from = match check_fields(headers) {
            Ok(from) => from,
            Err(e) => {
                return SignatureVerdict::rejected(
                    AuthResult::Permerror,
                    Some(did),
                    Some(kid),
                    Reason::Fields(e),
                );
            }
        };
        let (handle, aligned) = match self.identity.resolve_did(&did).await {
            Ok(found) => self.alignment(&from, &found.value.document).await,
            Err(_) => (None, false),
        };
        SignatureVerdict {
            result: AuthResult::Pass,
            did: Some(did),
            kid: Some(kid),
            reason: None,
            stale: false,
            passed: Some(Passed {
                from,
                handle,
                aligned,
                rcpt: None,
                // The same SignedData to the same mailbox twice is a replay.
                jti: crate::format::hex::hex(&Sha256::digest(der)),
                // Remembered for a week, or until the certificate expires.
                exp: signed.certificate.not_after.min(now + 7 * 86_400),
            }),
        }
    }
}
