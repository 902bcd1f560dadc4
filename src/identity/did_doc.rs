//! DID documents: the parts AT-SMS reads (spec sections 5.1, 7, 9), parsed defensively.

use serde::Deserialize;
use serde_json::Value;

use crate::crypto::{Alg, PublicKey};
use crate::syntax;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationMethod {
    pub id: String,
    pub kind: String,
    pub controller: String,
    pub public_key_multibase: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub id: String,
    pub kind: String,
    /// Only string endpoints are kept: atproto uses no other form.
    pub endpoint: Option<String>,
}

/// The fields of a DID document that verification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DidDocument {
    pub id: String,
    pub also_known_as: Vec<String>,
    pub verification_methods: Vec<VerificationMethod>,
    pub services: Vec<Service>,
}

#[derive(Deserialize)]
struct RawDocument {
    id: String,
    #[serde(default, rename = "alsoKnownAs")]
    also_known_as: Vec<Value>,
    #[serde(default, rename = "verificationMethod")]
    verification_method: Vec<Value>,
    #[serde(default)]
    service: Vec<Value>,
}

fn string_member(value: &Value, name: &str) -> Option<String> {
    value.get(name)?.as_str().map(str::to_string)
}

impl DidDocument {
    /// Parses a document fetched for `did`; its `id` must be that DID (spec section 6).
    pub fn parse(bytes: &[u8], did: &str) -> Result<DidDocument, String> {
        // serde_json refuses nesting deeper than 128 levels, so hostile nesting is an error,
        // not a stack overflow.
        let raw: RawDocument =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid DID document: {e}"))?;
        if raw.id != did {
            return Err("DID document id is another DID".into());
        }
        let verification_methods = raw
            .verification_method
            .iter()
            .filter_map(|vm| {
                Some(VerificationMethod {
                    id: string_member(vm, "id")?,
                    kind: string_member(vm, "type")?,
                    controller: string_member(vm, "controller")?,
                    public_key_multibase: string_member(vm, "publicKeyMultibase"),
                })
            })
            .collect();
        let services = raw
            .service
            .iter()
            .filter_map(|s| {
                Some(Service {
                    id: string_member(s, "id")?,
                    kind: string_member(s, "type").unwrap_or_default(),
                    endpoint: string_member(s, "serviceEndpoint"),
                })
            })
            .collect();
        let also_known_as = raw
            .also_known_as
            .iter()
            .filter_map(|a| a.as_str().map(str::to_string))
            .collect();
        Ok(DidDocument {
            id: raw.id,
            also_known_as,
            verification_methods,
            services,
        })
    }

    fn matches_fragment(&self, id: &str, fragment: &str) -> bool {
        id.strip_prefix('#') == Some(fragment)
            || id
                .strip_prefix(self.id.as_str())
                .and_then(|r| r.strip_prefix('#'))
                == Some(fragment)
    }

    /// The key of `#fragment` (spec 5.1): the first method with that id and this DID as
    /// controller decides; a defect in it is an error, with no fallback to later entries.
    pub fn key(&self, fragment: &str) -> Result<PublicKey, String> {
        let method = self
            .verification_methods
            .iter()
            .find(|m| self.matches_fragment(&m.id, fragment) && m.controller == self.id)
            .ok_or_else(|| format!("no key #{fragment} in DID document"))?;
        let multibase = method
            .public_key_multibase
            .as_deref()
            .ok_or_else(|| format!("key #{fragment} has no publicKeyMultibase"))?;
        let decoded = match method.kind.as_str() {
            "Multikey" => PublicKey::from_multikey(multibase),
            "EcdsaSecp256k1VerificationKey2019" => {
                PublicKey::from_legacy_multibase(Alg::Es256k, multibase)
            }
            "EcdsaSecp256r1VerificationKey2019" => {
                PublicKey::from_legacy_multibase(Alg::Es256, multibase)
            }
            other => {
                return Err(format!(
                    "key #{fragment} has unsupported type \"{}\"",
                    other.escape_default()
                ));
            }
        };
        decoded.map_err(|e| format!("key #{fragment}: {e}"))
    }

    /// The first service with id `#name` or `<DID>#name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| self.matches_fragment(&s.id, name))
    }

    /// The PDS endpoint: `#atproto_pds` of type `AtprotoPersonalDataServer`.
    pub fn pds(&self) -> Option<&str> {
        self.service("atproto_pds")
            .filter(|s| s.kind == "AtprotoPersonalDataServer")
            .and_then(|s| s.endpoint.as_deref())
    }

    /// The `#atsms_mail` endpoint (spec section 9).
    pub fn mail_service(&self) -> Option<&str> {
        self.service("atsms_mail")
            .and_then(|s| s.endpoint.as_deref())
    }

    /// The claimed handle: the first `alsoKnownAs` entry `at://<handle>`, lower-cased
    /// (spec section 7). Not trustworthy until checked in the other direction.
    pub fn handle_claim(&self) -> Option<String> {
        self.also_known_as
            .iter()
            .find_map(|aka| aka.strip_prefix("at://"))
            .filter(|h| syntax::is_valid_handle(h))
            .map(|h| h.to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

    fn doc(methods: &str) -> String {
        format!(
            r##"{{"id":"{DID}","alsoKnownAs":["at://Alice.example.com"],"verificationMethod":{methods},"service":[{{"id":"#atproto_pds","type":"AtprotoPersonalDataServer","serviceEndpoint":"https://pds.example"}}]}}"##
        )
    }

    #[test]
    fn first_matching_method_decides() {
        let good = format!(
            r##"{{"id":"#atproto","type":"Multikey","controller":"{DID}","publicKeyMultibase":"zQ3shQiS1yTKJR5D5YJqFuyhgAYLhbSQXMH2BBwzWaAg21U3X"}}"##
        );
        let bad = format!(
            r##"{{"id":"{DID}#atproto","type":"Multikey","controller":"{DID}","publicKeyMultibase":"zBAD"}}"##
        );
        let other_controller = r##"{"id":"#atproto","type":"Multikey","controller":"did:plc:aaaaaaaaaaaaaaaaaaaaaaaa","publicKeyMultibase":"zBAD"}"##;
        let d = DidDocument::parse(
            doc(&format!("[{other_controller},{good},{bad}]")).as_bytes(),
            DID,
        )
        .unwrap();
        assert_eq!(d.key("atproto").unwrap().alg(), Alg::Es256k);
        let d = DidDocument::parse(doc(&format!("[{bad},{good}]")).as_bytes(), DID).unwrap();
        assert!(d.key("atproto").is_err());
        assert!(d.key("other").is_err());
        assert_eq!(d.handle_claim().as_deref(), Some("alice.example.com"));
        assert_eq!(d.pds(), Some("https://pds.example"));
    }

    #[test]
    fn hostile_documents() {
        assert!(
            DidDocument::parse(doc("[]").as_bytes(), "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").is_err()
        );
        assert!(DidDocument::parse(b"[]", DID).is_err());
        assert!(DidDocument::parse(b"\xff\xfe", DID).is_err());
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(DidDocument::parse(deep.as_bytes(), DID).is_err());
        assert!(DidDocument::parse(doc(r#"{"not":"an array"}"#).as_bytes(), DID).is_err());
    }
}
