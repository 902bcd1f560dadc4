//! DID documents: the parts AT-SMS reads (spec sections 5.1, 7, 9), parsed defensively.

use serde::Deserialize;
use serde_json::Value;

use crate::format::crypto::{Alg, KeyError, PublicKey};
use crate::format::syntax;

/// Why a DID document, or the key it should hold, is unusable (`permerror`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("invalid DID document")]
    Invalid,
    #[error("DID document id is another DID")]
    OtherDid,
    #[error("no key #{0} in DID document")]
    NoKey(String),
    #[error("key #{0} has no publicKeyMultibase")]
    NoMultibase(String),
    #[error("key #{fragment} has unsupported type {kind}")]
    UnsupportedType { fragment: String, kind: String },
    #[error("key #{fragment}: {error}")]
    BadKey { fragment: String, error: KeyError },
}

/// A cached document is kept compact (a host may hold a million, docs/performance.md):
/// strings as `Box<str>`, lists as boxed slices, the few names every document repeats (types,
/// service ids) not allocated at all, and a controller that is the document's own DID (almost
/// always) not stored twice.
pub type Text = Box<str>;

/// The names documents repeat, kept without an allocation each.
const KNOWN: [&str; 9] = [
    "Multikey",
    "EcdsaSecp256k1VerificationKey2019",
    "EcdsaSecp256r1VerificationKey2019",
    "AtprotoPersonalDataServer",
    "AtprotoLabeler",
    "#atproto",
    "#atproto_pds",
    "#atproto_labeler",
    "#atsms_mail",
];

fn name(value: String) -> std::borrow::Cow<'static, str> {
    match KNOWN.iter().find(|k| **k == value) {
        Some(known) => std::borrow::Cow::Borrowed(known),
        None => std::borrow::Cow::Owned(value),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerificationMethod {
    pub id: std::borrow::Cow<'static, str>,
    pub kind: std::borrow::Cow<'static, str>,
    /// `None`: the document's own DID.
    pub controller: Option<Text>,
    pub public_key_multibase: Option<Text>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub id: std::borrow::Cow<'static, str>,
    pub kind: std::borrow::Cow<'static, str>,
    /// Only string endpoints are kept: atproto uses no other form.
    pub endpoint: Option<Text>,
}

/// The fields of a DID document that verification needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DidDocument {
    pub id: String,
    pub also_known_as: Box<[Text]>,
    pub verification_methods: Box<[VerificationMethod]>,
    pub services: Box<[Service]>,
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

fn text_member(value: &Value, name: &str) -> Option<Text> {
    value.get(name)?.as_str().map(Text::from)
}

impl DidDocument {
    /// Parses a document fetched for `did`; its `id` must be that DID (spec section 6).
    pub fn parse(bytes: &[u8], did: &str) -> Result<DidDocument, DocumentError> {
        // serde_json refuses nesting deeper than 128 levels, so hostile nesting is an error,
        // not a stack overflow.
        let raw: RawDocument = serde_json::from_slice(bytes).map_err(|_| DocumentError::Invalid)?;
        if raw.id != did {
            return Err(DocumentError::OtherDid);
        }
        let verification_methods = raw
            .verification_method
            .iter()
            .filter_map(|vm| {
                let controller = vm.get("controller")?.as_str()?;
                Some(VerificationMethod {
                    id: name(string_member(vm, "id")?),
                    kind: name(string_member(vm, "type")?),
                    controller: (controller != raw.id).then(|| Text::from(controller)),
                    public_key_multibase: text_member(vm, "publicKeyMultibase"),
                })
            })
            .collect();
        let services = raw
            .service
            .iter()
            .filter_map(|s| {
                Some(Service {
                    id: name(string_member(s, "id")?),
                    kind: name(string_member(s, "type").unwrap_or_default()),
                    endpoint: text_member(s, "serviceEndpoint"),
                })
            })
            .collect();
        let also_known_as = raw
            .also_known_as
            .iter()
            .filter_map(|a| a.as_str().map(Text::from))
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

    /// The text `key` would decode for `#fragment` (its type and multibase value): the same
    /// text is the same key, so a parsed key may be cached under it.
    pub fn key_text(&self, fragment: &str) -> Option<(&str, &str)> {
        let method = self
            .verification_methods
            .iter()
            .find(|m| self.matches_fragment(&m.id, fragment) && m.controller.is_none())?;
        Some((&method.kind, method.public_key_multibase.as_deref()?))
    }

    /// The key of `#fragment` (spec 5.1): the first method with that id and this DID as
    /// controller decides; a defect in it is an error, with no fallback to later entries.
    pub fn key(&self, fragment: &str) -> Result<PublicKey, DocumentError> {
        let method = self
            .verification_methods
            .iter()
            .find(|m| self.matches_fragment(&m.id, fragment) && m.controller.is_none())
            .ok_or_else(|| DocumentError::NoKey(fragment.to_string()))?;
        let multibase = method
            .public_key_multibase
            .as_deref()
            .ok_or_else(|| DocumentError::NoMultibase(fragment.to_string()))?;
        let decoded = match &*method.kind {
            "Multikey" => PublicKey::from_multikey(multibase),
            "EcdsaSecp256k1VerificationKey2019" => {
                PublicKey::from_legacy_multibase(Alg::Es256k, multibase)
            }
            "EcdsaSecp256r1VerificationKey2019" => {
                PublicKey::from_legacy_multibase(Alg::Es256, multibase)
            }
            other => {
                return Err(DocumentError::UnsupportedType {
                    fragment: fragment.to_string(),
                    kind: other
                        .chars()
                        .filter(char::is_ascii_graphic)
                        .take(64)
                        .collect(),
                });
            }
        };
        decoded.map_err(|error| DocumentError::BadKey {
            fragment: fragment.to_string(),
            error,
        })
    }

    /// Bytes this document holds, roughly (what the identity cache weighs it by): its strings
    /// and 48 bytes a string or item for the structures around them.
    pub fn weight(&self) -> usize {
        let strings = |v: &[Text]| v.iter().map(|s| s.len() + 48).sum::<usize>();
        let methods: usize = self
            .verification_methods
            .iter()
            .map(|m| {
                m.id.len()
                    + m.kind.len()
                    + m.controller.as_ref().map_or(0, |c| c.len())
                    + m.public_key_multibase.as_ref().map_or(0, |k| k.len())
                    + 4 * 48
            })
            .sum();
        let services: usize = self
            .services
            .iter()
            .map(|s| {
                s.id.len() + s.kind.len() + s.endpoint.as_ref().map_or(0, |e| e.len()) + 3 * 48
            })
            .sum();
        self.id.len() + strings(&self.also_known_as) + methods + services + 4 * 48
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

    /// The `#atsms_mail` endpoint as written (spec section 9).
    pub fn mail_service(&self) -> Option<&str> {
        self.service("atsms_mail")
            .and_then(|s| s.endpoint.as_deref())
    }

    /// The `#atsms_mail` endpoint, read (spec section 9); `None` when absent or unreadable.
    pub fn mail_endpoint(&self) -> Option<MailEndpoint> {
        MailEndpoint::parse(self.mail_service()?)
    }

    /// The DID's own mailbox local part (spec section 9): the DID with `:` replaced by `.`,
    /// lower-case.
    pub fn mailbox_local_part(&self) -> String {
        self.id.replace(':', ".").to_ascii_lowercase()
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

/// Where a DID receives mail (spec section 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailEndpoint {
    /// `smtp://HOST[:PORT]`: deliver by SMTP to that host directly, no MX lookup.
    Smtp { host: MailHost, port: Option<u16> },
    /// `mailto:ADDRESS`: deliver to that address as usual.
    Mailto(String),
}

/// The host of an `smtp://` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailHost {
    /// A domain name in A-label form (UTS #46), lower-case, without a trailing dot.
    Name(String),
    /// An IP literal: it gives no mailbox address and never aligns (spec section 7).
    Ip(std::net::IpAddr),
}

impl MailEndpoint {
    pub fn parse(endpoint: &str) -> Option<MailEndpoint> {
        // One RFC 5321 mailbox or nothing: a list, a display name, `:include:` or a local
        // host would have an MTA deliver where no DID may send it (an open relay).
        if let Some(address) = endpoint.strip_prefix("mailto:") {
            return syntax::plain_mailbox(address).map(MailEndpoint::Mailto);
        }
        let authority = endpoint.strip_prefix("smtp://")?;
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        if authority.contains(['/', '?', '#', '@']) {
            return None;
        }
        // `[v6]:port`, `v4:port`, `name:port`, or without the port.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(':') && !port.contains(']') => {
                let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
                (host, Some(port))
            }
            _ => (authority, None),
        };
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            MailHost::Ip(std::net::IpAddr::V6(v6.parse().ok()?))
        } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
            MailHost::Ip(std::net::IpAddr::V4(ip))
        } else {
            MailHost::Name(syntax::ascii_domain(host)?)
        };
        Some(MailEndpoint::Smtp { host, port })
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
        assert!(matches!(
            d.key("atproto"),
            Err(DocumentError::BadKey { .. })
        ));
        assert_eq!(d.key("other"), Err(DocumentError::NoKey("other".into())));
        assert_eq!(d.handle_claim().as_deref(), Some("alice.example.com"));
        assert_eq!(d.pds(), Some("https://pds.example"));
    }

    #[test]
    fn mail_endpoints() {
        let smtp = |host: &str, port| MailEndpoint::Smtp {
            host: MailHost::Name(host.into()),
            port,
        };
        assert_eq!(
            MailEndpoint::parse("smtp://MX.Example.net.:25"),
            Some(smtp("mx.example.net", Some(25)))
        );
        assert_eq!(
            MailEndpoint::parse("smtp://bücher.example"),
            Some(smtp("xn--bcher-kva.example", None))
        );
        assert_eq!(
            MailEndpoint::parse("smtp://192.0.2.1:2525"),
            Some(MailEndpoint::Smtp {
                host: MailHost::Ip("192.0.2.1".parse().unwrap()),
                port: Some(2525)
            })
        );
        assert_eq!(
            MailEndpoint::parse("smtp://[2001:db8::1]:25"),
            Some(MailEndpoint::Smtp {
                host: MailHost::Ip("2001:db8::1".parse().unwrap()),
                port: Some(25)
            })
        );
        assert_eq!(
            MailEndpoint::parse("mailto:ceo@bank.example"),
            Some(MailEndpoint::Mailto("ceo@bank.example".into()))
        );
        for bad in [
            "smtp://",
            "smtp://host:0",
            "smtp://host:99999",
            "smtp://user@host",
            "smtp://host/path",
            "smtp://-bad-.example",
            "https://mx.example.net",
            "mailto:nobody",
            "mailto:a@b.example,c@d.example",
            "mailto:Victim <a@b.example>",
            "mailto::include:/etc/aliases",
            "mailto:root@localhost",
        ] {
            assert_eq!(MailEndpoint::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn hostile_documents() {
        assert_eq!(
            DidDocument::parse(doc("[]").as_bytes(), "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"),
            Err(DocumentError::OtherDid)
        );
        assert_eq!(DidDocument::parse(b"[]", DID), Err(DocumentError::Invalid));
        assert_eq!(
            DidDocument::parse(b"\xff\xfe", DID),
            Err(DocumentError::Invalid)
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            DidDocument::parse(deep.as_bytes(), DID),
            Err(DocumentError::Invalid)
        );
        assert_eq!(
            DidDocument::parse(doc(r#"{"not":"an array"}"#).as_bytes(), DID),
            Err(DocumentError::Invalid)
        );
    }
}
