//! atproto labels (atproto specs, "Labels"): what configured labelers say about a sender's
//! account. A labeler's DID document names its endpoint (`#atproto_labeler`) and its signing
//! key (`#atproto_label`); `com.atproto.label.queryLabels` with `uriPatterns=<DID>` and
//! `sources=<labeler>` lists the labels. Each label is verified as the spec says: the label's
//! fields as received, without `sig`, encoded as DAG-CBOR (serde_ipld_dagcbor: canonical key
//! order, definite lengths), SHA-256, ECDSA with the labeler's key, low-S. A label whose
//! signature fails is ignored and logged; a key that does not verify gets the labeler's
//! document fetched once more (a rotated key). Of the labels with one value, the latest
//! (`cts`) is the current one: a negation (`neg`) withdraws, an expired one (`exp`) is not
//! applied.

use std::sync::Arc;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::atproto::identity::error::{IdentityError, Upstream};
use crate::atproto::identity::{IdentityResolver, ResolvedDid};

/// The most labels read from one labeler about one account (pages of 250).
const MAX_PAGES: usize = 4;
/// The largest page read.
const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// The labeler's service and key (atproto specs, "Labels": Labeler Service Identity).
const LABELER_SERVICE: &str = "atproto_labeler";
const LABELER_SERVICE_TYPE: &str = "AtprotoLabeler";
const LABEL_KEY: &str = "atproto_label";

/// A label's signed fields, as received (spec: only the schema's fields; `sig`, `$type` and
/// anything else left out; absent optional fields absent, never null).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Unsigned {
    ver: i64,
    src: String,
    uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cid: Option<String>,
    val: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    neg: Option<bool>,
    cts: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<String>,
}

/// `{"$bytes": "<base64>"}` (atproto data model, JSON): standard alphabet, padding optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bytes {
    #[serde(rename = "$bytes")]
    bytes: String,
}

/// A label whose signature verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub val: String,
    /// Unix time in nanoseconds, as precise as the label gives it: a negation in the same
    /// second as its label must still come after it.
    pub cts: i128,
    pub exp: Option<i64>,
    pub neg: bool,
}

/// What one labeler says about one account: its verified labels, resolved at use (expiry
/// depends on the time).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSet {
    pub labels: Vec<Label>,
}

impl crate::atproto::identity::cache::Weigh for LabelSet {
    fn weight(&self) -> usize {
        self.labels.iter().map(|l| l.val.len() + 48).sum()
    }
}

impl LabelSet {
    /// The values applied at `now`: per value the latest label, if it is not a negation and
    /// has not expired. Of a label and a negation created at the same instant, the negation
    /// is the later (withdrawing is never undone by a tie).
    pub fn active(&self, now: i64) -> Vec<String> {
        let mut latest: std::collections::BTreeMap<&str, &Label> = Default::default();
        for label in &self.labels {
            let newer = latest
                .get(label.val.as_str())
                .is_none_or(|current| (label.cts, label.neg) > (current.cts, current.neg));
            if newer {
                latest.insert(&label.val, label);
            }
        }
        latest
            .into_values()
            .filter(|l| !l.neg && l.exp.is_none_or(|exp| exp > now))
            .map(|l| l.val.clone())
            .collect()
    }
}

/// An RFC 3339 datetime (atproto's `datetime`), as Unix seconds.
pub fn unix_seconds(datetime: &str) -> Option<i64> {
    parse_datetime(datetime).map(|t| t.unix_timestamp())
}

/// An RFC 3339 datetime as Unix nanoseconds (its fraction of a second kept).
pub fn unix_nanos(datetime: &str) -> Option<i128> {
    parse_datetime(datetime).map(|t| t.unix_timestamp_nanos())
}

fn parse_datetime(datetime: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(datetime, &time::format_description::well_known::Rfc3339).ok()
}

/// Why one label is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLabel {
    #[error("not a label object")]
    Shape,
    #[error("ver is not 1")]
    Version,
    #[error("no sig")]
    Unsigned,
    #[error("unreadable cts or exp")]
    Time,
    #[error("signature does not verify with the labeler's #atproto_label key")]
    Signature,
}

/// A label as received, checked for shape (not yet for its signature).
#[derive(Debug)]
struct Received {
    unsigned: Unsigned,
    sig: Vec<u8>,
}

impl Received {
    fn parse(value: &serde_json::Value) -> Result<Received, BadLabel> {
        let unsigned: Unsigned =
            serde_json::from_value(value.clone()).map_err(|_| BadLabel::Shape)?;
        if unsigned.ver != 1 {
            return Err(BadLabel::Version);
        }
        let sig: Bytes = value
            .get("sig")
            .cloned()
            .ok_or(BadLabel::Unsigned)
            .and_then(|s| serde_json::from_value(s).map_err(|_| BadLabel::Unsigned))?;
        let engine = base64::engine::GeneralPurpose::new(
            &base64::alphabet::STANDARD,
            base64::engine::GeneralPurposeConfig::new()
                .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
        );
        let sig = engine.decode(&sig.bytes).map_err(|_| BadLabel::Unsigned)?;
        Ok(Received { unsigned, sig })
    }

    /// The bytes the signature covers: the fields as received, DAG-CBOR.
    fn signed_bytes(&self) -> Result<Vec<u8>, BadLabel> {
        serde_ipld_dagcbor::to_vec(&self.unsigned).map_err(|_| BadLabel::Shape)
    }

    fn verify(&self, key: &crate::format::crypto::PublicKey) -> Result<(), BadLabel> {
        key.verify(&self.signed_bytes()?, &self.sig)
            .map_err(|_| BadLabel::Signature)
    }

    fn into_label(self) -> Result<Label, BadLabel> {
        let cts = unix_nanos(&self.unsigned.cts).ok_or(BadLabel::Time)?;
        let exp = match &self.unsigned.exp {
            Some(exp) => Some(unix_seconds(exp).ok_or(BadLabel::Time)?),
            None => None,
        };
        Ok(Label {
            val: self.unsigned.val,
            cts,
            exp,
            neg: self.unsigned.neg.unwrap_or(false),
        })
    }
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    cursor: Option<String>,
    labels: Vec<serde_json::Value>,
}

/// Asks `labeler` about `did` and verifies what it says (no cache: `Reputation` caches).
pub async fn query(
    identity: &Arc<IdentityResolver>,
    labeler: &str,
    did: &str,
) -> Result<Arc<LabelSet>, IdentityError> {
    let document = identity.resolve_did(labeler).await?.value;
    let endpoint = document
        .document
        .service(LABELER_SERVICE)
        .filter(|s| s.kind == LABELER_SERVICE_TYPE)
        .and_then(|s| s.endpoint.as_deref().map(str::to_string))
        .ok_or(IdentityError::Rejected(Upstream::Service))?;
    let mut received = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut url =
            url::Url::parse(&endpoint).map_err(|_| IdentityError::Rejected(Upstream::Service))?;
        url.set_path("/xrpc/com.atproto.label.queryLabels");
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("uriPatterns", did)
                .append_pair("sources", labeler)
                .append_pair("limit", "250");
            if let Some(cursor) = &cursor {
                query.append_pair("cursor", cursor);
            }
        }
        let response = identity
            .net()
            .get(
                url.as_str(),
                Upstream::Service,
                "application/json",
                MAX_PAGE_BYTES,
                0,
            )
            .await
            .map_err(|e| crate::atproto::identity::fetch_error(Upstream::Service, e))?;
        if !(200..300).contains(&response.status) {
            tracing::debug!("labeler {labeler}: HTTP {} for {did}", response.status);
            return Err(IdentityError::Unavailable(Upstream::Service));
        }
        let page: Page = serde_json::from_slice(&response.body)
            .map_err(|_| IdentityError::Rejected(Upstream::Service))?;
        let last = page.labels.is_empty();
        received.extend(page.labels);
        cursor = page.cursor;
        if cursor.is_none() || last {
            break;
        }
    }
    Ok(Arc::new(
        verify_all(identity, labeler, did, &document, received).await,
    ))
}

/// Keeps the labels by `labeler` about `did` whose signatures verify.
async fn verify_all(
    identity: &Arc<IdentityResolver>,
    labeler: &str,
    did: &str,
    document: &Arc<ResolvedDid>,
    received: Vec<serde_json::Value>,
) -> LabelSet {
    let mut key = document.document.key(LABEL_KEY).ok();
    let mut refreshed = false;
    let mut set = LabelSet::default();
    for value in received {
        let label = match Received::parse(&value) {
            Ok(label) => label,
            Err(e) => {
                tracing::warn!("labeler {labeler}: a label about {did} ignored: {e}");
                continue;
            }
        };
        // Labels about other subjects or by other sources are not this question's answer.
        if label.unsigned.uri != did || label.unsigned.src != labeler {
            continue;
        }
        let mut verified = key
            .as_ref()
            .map_or(Err(BadLabel::Signature), |k| label.verify(k));
        if verified.is_err() && !refreshed {
            // Spec: re-resolve the labeler's document once; its key may have been rotated.
            refreshed = true;
            // Not to be had now: the label stays unverified (and unapplied) this time.
            if let Ok(Some(fresh)) = identity.refresh_after_failure(labeler).await {
                key = fresh.document.key(LABEL_KEY).ok();
                verified = key
                    .as_ref()
                    .map_or(Err(BadLabel::Signature), |k| label.verify(k));
            }
        }
        let val = label.unsigned.val.clone();
        match verified.and_then(|()| label.into_label()) {
            Ok(label) => set.labels.push(label),
            Err(e) => tracing::warn!("labeler {labeler}: label {val:?} about {did} ignored: {e}"),
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crypto::{Alg, SigningKey};

    /// The spec's example encoding, checked byte by byte: keys in DAG-CBOR order (length
    /// first, then bytewise: all are three letters here), `ver` an integer, no nulls.
    #[test]
    fn the_signed_bytes_are_canonical_dag_cbor() {
        let value = serde_json::json!({
            "ver": 1, "src": "did:plc:a", "uri": "did:plc:b", "val": "spam",
            "cts": "2026-01-01T00:00:00.000Z", "neg": false, "sig": {"$bytes": "AAAA"},
            "$type": "com.atproto.label.defs#label",
        });
        let received = Received::parse(&value).unwrap();
        let bytes = received.signed_bytes().unwrap();
        // A map of 6: cts, neg, src, uri, val, ver.
        assert_eq!(bytes[0], 0xa6);
        let keys: Vec<&[u8]> = [b"cts", b"neg", b"src", b"uri", b"val", b"ver"]
            .iter()
            .map(|k| k.as_slice())
            .collect();
        let mut at = 0;
        for key in keys {
            let found = bytes[at..]
                .windows(4)
                .position(|w| w[0] == 0x63 && &w[1..] == key);
            let found = found.unwrap_or_else(|| panic!("{key:?} in order"));
            at += found + 4;
        }
        assert!(
            bytes.ends_with(&[0x63, b'v', b'e', b'r', 0x01]),
            "ver is the integer 1"
        );
        assert!(
            bytes
                .windows(5)
                .any(|w| w == [0x63, b'n', b'e', b'g', 0xf4]),
            "neg false kept as received"
        );
        // Without neg, neg is absent (not null), and the signature would differ.
        let mut without = value.clone();
        without.as_object_mut().unwrap().remove("neg");
        let other = Received::parse(&without).unwrap().signed_bytes().unwrap();
        assert_eq!(other[0], 0xa5);
        assert!(!other.contains(&0xf6), "no null");
    }

    fn signed(key: &SigningKey, fields: serde_json::Value) -> serde_json::Value {
        let unsigned: Unsigned = serde_json::from_value(fields.clone()).unwrap();
        let bytes = serde_ipld_dagcbor::to_vec(&unsigned).unwrap();
        let sig = base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.sign(&bytes));
        let mut out = fields;
        out["sig"] = serde_json::json!({"$bytes": sig});
        out
    }

    #[test]
    fn signatures_verify_low_s_and_only_as_received() {
        for alg in [Alg::Es256k, Alg::Es256] {
            let key = SigningKey::generate(alg).unwrap();
            let fields = serde_json::json!({"ver": 1, "src": "did:plc:a", "uri": "did:plc:b",
                "val": "spam", "cts": "2026-01-01T00:00:00Z"});
            let label = signed(&key, fields);
            let received = Received::parse(&label).unwrap();
            assert_eq!(received.verify(&key.public_key()), Ok(()));
            // Another value under the same signature.
            let mut forged = label.clone();
            forged["val"] = "ok".into();
            assert_eq!(
                Received::parse(&forged).unwrap().verify(&key.public_key()),
                Err(BadLabel::Signature)
            );
            // High-S: the same signature made malleable.
            let mut high = Received::parse(&label).unwrap();
            high.sig = crate::format::crypto::malleate(alg, &high.sig);
            assert_eq!(high.verify(&key.public_key()), Err(BadLabel::Signature));
            // A padded base64 signature reads the same.
            let mut padded = label.clone();
            let raw = received.sig.clone();
            padded["sig"] = serde_json::json!({"$bytes": base64::engine::general_purpose::STANDARD.encode(raw)});
            assert_eq!(
                Received::parse(&padded).unwrap().verify(&key.public_key()),
                Ok(())
            );
        }
        let no_sig = serde_json::json!({"ver": 1, "src": "a", "uri": "b", "val": "v", "cts": "x"});
        assert_eq!(Received::parse(&no_sig).unwrap_err(), BadLabel::Unsigned);
        let v2 = serde_json::json!({"ver": 2, "src": "a", "uri": "b", "val": "v", "cts": "x"});
        assert_eq!(Received::parse(&v2).unwrap_err(), BadLabel::Version);
    }

    #[test]
    fn the_latest_label_of_a_value_decides() {
        let label = |val: &str, cts: i128, exp: Option<i64>, neg: bool| Label {
            val: val.into(),
            cts,
            exp,
            neg,
        };
        let set = LabelSet {
            labels: vec![
                label("spam", 10, None, false),
                label("spam", 20, None, true), // withdrawn
                label("porn", 10, Some(100), false),
                label("!takedown", 30, None, false),
                label("!takedown", 5, None, true), // an older negation does not withdraw
            ],
        };
        assert_eq!(set.active(50), ["!takedown", "porn"]);
        assert_eq!(set.active(100), ["!takedown"], "expired at 100");
        // Within one second: the fraction decides; at the same instant, the negation wins,
        // whichever order the labeler lists them in.
        let at = |text: &str| unix_nanos(text).unwrap();
        let same_second = LabelSet {
            labels: vec![
                label("spam", at("2026-12-02T10:00:00.900Z"), None, true),
                label("spam", at("2026-12-02T10:00:00.100Z"), None, false),
                label("porn", at("2026-12-02T10:00:00.500Z"), None, false),
                label("porn", at("2026-12-02T10:00:00.500Z"), None, true),
                label("gore", at("2026-12-02T10:00:00.500Z"), None, true),
                label("gore", at("2026-12-02T10:00:00.500Z"), None, false),
            ],
        };
        assert!(
            same_second.active(0).is_empty(),
            "{:?}",
            same_second.active(0)
        );
        assert_eq!(
            unix_seconds("2026-12-02T10:00:00.123Z"),
            Some(1_796_205_600)
        );
        assert_eq!(unix_seconds("2026-12-02"), None);
    }
}
