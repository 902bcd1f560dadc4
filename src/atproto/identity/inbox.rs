//! What a DID publishes for AT-SMS delivery in its own repository (the AT-SMS client's
//! lexicons, not our envelope spec): the `at.atsms.inbox` record (rkey `self`: `endpoints:
//! [{uri}]`, `mailto:` and `https:` URIs) and its device certificates (`at.atsms.x509`, rkey
//! = the device fingerprint). Together they are the DID's consent to AT-SMS mail at a
//! mailbox (interfaces.md, `inbox.atsms_records`); the certificates' issuer and serial are
//! what a CMS EnvelopedData names its recipients by. Fetched from the DID's PDS, cached like
//! documents and shared through the fleet's store.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::*;

/// The inbox record's collection and key.
pub const INBOX_COLLECTION: &str = "at.atsms.inbox";
pub const INBOX_RKEY: &str = "self";
/// Device certificates read per DID (one page of `listRecords`); a DID with more devices is
/// judged by the first hundred.
const MAX_DEVICES: usize = 100;

/// A DID's AT-SMS inbox facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AtsmsInbox {
    /// The `mailto:` endpoints of the inbox record, addresses as written (no `mailto:`).
    pub mailto: Vec<String>,
    /// The web endpoints of the inbox record (`https:`, and `http:` a sender reaches only
    /// under `resolver.allow_private_addresses`), as written, in the record's order.
    #[serde(default)]
    pub https: Vec<String>,
    /// The published device certificates that passed the checks of spec 5.2 (fingerprint,
    /// subjectAltName naming their record, P-256).
    pub devices: Vec<Device>,
}

/// One published device certificate, as a CMS recipient or signer names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// Lower-case hex SHA-256 of the raw public key point: the record key.
    pub fingerprint: String,
    /// The certificate's serial number (DER content octets, as issuerAndSerialNumber has it).
    pub serial: Vec<u8>,
    /// The certificate, DER (the X.509 floor compares it byte for byte).
    pub der: Vec<u8>,
    /// The certificate's dates (Unix seconds): a device outside them gets no copy.
    #[serde(default)]
    pub not_before: i64,
    #[serde(default)]
    pub not_after: i64,
}

impl cache::Weigh for AtsmsInbox {
    fn weight(&self) -> usize {
        self.mailto
            .iter()
            .chain(&self.https)
            .map(String::len)
            .sum::<usize>()
            + self
                .devices
                .iter()
                .map(|d| d.fingerprint.len() + d.serial.len() + d.der.len() + 64)
                .sum::<usize>()
    }
}

impl AtsmsInbox {
    /// Whether the record lists `mailto:` for the DID mailbox `local@domain` (either spelling
    /// of the local part: `did!plc!…` as the AT-SMS client writes it, `did.plc.…` as we do).
    pub fn names_mailbox(&self, did: &str, domain: &str) -> bool {
        self.mailto.iter().any(|address| {
            let Some((local, host)) = address.rsplit_once('@') else {
                return false;
            };
            crate::format::address::did_of_local_part(local).as_deref() == Some(did)
                && crate::format::syntax::ascii_domain(host).as_deref() == Some(domain)
        })
    }

    /// Whether the record lists the HTTPS inbox of `did` at `public_url` (a base URL,
    /// `xrpc.public_url`): an `https:` endpoint that is `public_url` + `/inbox/` + the DID,
    /// percent-encoded as the AT-SMS client writes it (`encodeURIComponent`) or not — compared
    /// as URLs (host case, default port) and the DID decoded.
    pub fn names_inbox_url(&self, public_url: &str, did: &str) -> bool {
        let Ok(base) = url::Url::parse(public_url) else {
            return false;
        };
        self.https.iter().any(|endpoint| {
            let Ok(url) = url::Url::parse(endpoint) else {
                return false;
            };
            let same_origin = url.scheme() == base.scheme()
                && url.host_str() == base.host_str()
                && url.port_or_known_default() == base.port_or_known_default();
            let named = url
                .path()
                .strip_prefix("/inbox/")
                .filter(|_| url.query().is_none() && url.fragment().is_none())
                .and_then(|encoded| {
                    percent_encoding::percent_decode_str(encoded)
                        .decode_utf8()
                        .ok()
                });
            same_origin && named.is_some_and(|named| named == did)
        })
    }

    /// The fingerprints of the devices whose certificates are within their dates at `now`:
    /// the devices a copy of an envelope is kept for.
    pub fn current_devices(&self, now: i64) -> Vec<String> {
        self.devices
            .iter()
            .filter(|d| d.not_before <= now && now <= d.not_after)
            .map(|d| d.fingerprint.clone())
            .collect()
    }

    /// The device whose certificate has this serial number (a CMS recipient's or signer's
    /// issuerAndSerialNumber; the issuer is the DID itself, the certificates are self-signed).
    pub fn device_by_serial(&self, serial: &[u8]) -> Option<&Device> {
        self.devices.iter().find(|d| d.serial == serial)
    }
}

impl IdentityResolver {
    /// `did`'s AT-SMS inbox facts, from the cache when it may serve. A DID without an inbox
    /// record or certificates has empty facts (not an error); a PDS that cannot answer now is
    /// an error of kind `Temporary`.
    pub async fn atsms_inbox(
        self: &Arc<Self>,
        did: &str,
    ) -> Result<Found<AtsmsInbox>, IdentityError> {
        self.cached(
            |r| &r.inboxes,
            did,
            |this, did| async move { this.fetch_inbox_shared(&did).await },
        )
        .await
    }

    /// As `atsms_inbox`, for consent: records past `max_age` are served while refreshed
    /// (`resolve_did_for_consent`).
    pub async fn atsms_inbox_for_consent(
        self: &Arc<Self>,
        did: &str,
    ) -> Result<Found<AtsmsInbox>, IdentityError> {
        self.cached_with(
            |r| &r.inboxes,
            did,
            |this, did| async move { this.fetch_inbox_shared(&did).await },
            true,
        )
        .await
    }

    async fn fetch_inbox_shared(self: &Arc<Self>, did: &str) -> Cached<AtsmsInbox> {
        use crate::infra::store::Kind;
        if let Some(shared) = &self.shared
            && let Some(entry) = shared.entry(Kind::Inbox, did, self.lifetimes.fresh).await
            && let Ok(inbox) = serde_json::from_str::<AtsmsInbox>(&entry.body)
        {
            // The store is not trusted to have checked the certificates: check them again.
            let devices = inbox
                .devices
                .iter()
                .filter_map(|d| device_of(did, &d.fingerprint, &d.der))
                .collect();
            return Ok(Arc::new(AtsmsInbox {
                mailto: inbox.mailto,
                https: inbox.https,
                devices,
            }));
        }
        let document = self.resolve_did(did).await?.value;
        let inbox = self.fetch_inbox(&document.document).await?;
        if let Some(shared) = &self.shared {
            let keep = self.lifetimes.max_age + self.lifetimes.stale_if_error;
            let body = serde_json::to_vec(&inbox).unwrap_or_default();
            shared.put_entry(Kind::Inbox, did, "pds", &body, keep).await;
        }
        Ok(Arc::new(inbox))
    }

    /// One `com.atproto.repo.*` query to the DID's PDS: `None` for a record or repository
    /// that is not there (400 `RecordNotFound`, 404, 410).
    pub(super) async fn pds_query(
        &self,
        document: &DidDocument,
        method: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<serde_json::Value>, IdentityError> {
        self.pds_get(&pds_url(document, method, query)?).await
    }

    /// A GET of `url` at a PDS, its JSON answer: `None` for what is not there.
    pub(super) async fn pds_get(
        &self,
        url: &reqwest::Url,
    ) -> Result<Option<serde_json::Value>, IdentityError> {
        let upstream = Upstream::Pds;
        let response = self
            .net
            .get(
                url.as_str(),
                upstream,
                "application/json",
                self.max_document_size,
                0,
            )
            .await
            .map_err(|e| fetch_error(upstream, e))?;
        match response.status {
            200..=299 => {}
            400 | 404 | 410 => return Ok(None),
            status @ (408 | 429 | 500..=599) => {
                tracing::debug!("{url}: HTTP {status}");
                return Err(IdentityError::Unavailable(upstream));
            }
            status => {
                tracing::debug!("{url}: HTTP {status}");
                return Err(IdentityError::Rejected(upstream));
            }
        }
        serde_json::from_slice(&response.body)
            .map(Some)
            .map_err(|_| IdentityError::BadRecord)
    }

    async fn fetch_inbox(&self, document: &DidDocument) -> Result<AtsmsInbox, IdentityError> {
        let did = document.id.as_str();
        let record = self
            .pds_query(
                document,
                "com.atproto.repo.getRecord",
                &[
                    ("repo", did),
                    ("collection", INBOX_COLLECTION),
                    ("rkey", INBOX_RKEY),
                ],
            )
            .await?;
        let mailto: Vec<String> = record
            .as_ref()
            .and_then(|r| r.pointer("/value/endpoints"))
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("uri")?.as_str()?.strip_prefix("mailto:"))
            // One address per URI, kept only to be compared with a DID mailbox
            // (`names_mailbox`), never handed to an MTA: the client's `did!plc!…` spelling
            // is not a plain RFC 5321 mailbox (`!` reads as a bang path to some MTAs).
            .filter(|a| {
                a.len() <= 254
                    && a.matches('@').count() == 1
                    && a.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(str::to_ascii_lowercase)
            .collect();
        // Compared with this host's own inbox URL (`names_inbox_url`) and, when sending, the
        // first one the untrusted client may reach is where envelopes are posted (`http:` only
        // under `resolver.allow_private_addresses`, as for every fetch: `Net::check_url`).
        let https: Vec<String> = record
            .as_ref()
            .and_then(|r| r.pointer("/value/endpoints"))
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
            .filter_map(|e| e.get("uri")?.as_str())
            .filter(|uri| {
                (uri.starts_with("https://") || uri.starts_with("http://")) && uri.len() <= 2048
            })
            .map(str::to_string)
            .collect();
        let limit = MAX_DEVICES.to_string();
        let listed = self
            .pds_query(
                document,
                "com.atproto.repo.listRecords",
                &[
                    ("repo", did),
                    ("collection", DEVICE_CERT_COLLECTION),
                    ("limit", &limit),
                ],
            )
            .await?;
        let prefix = format!("at://{did}/{DEVICE_CERT_COLLECTION}/");
        let devices = listed
            .as_ref()
            .and_then(|l| l.get("records"))
            .and_then(|r| r.as_array())
            .into_iter()
            .flatten()
            .take(MAX_DEVICES)
            .filter_map(|record| {
                let fingerprint = record.get("uri")?.as_str()?.strip_prefix(&prefix)?;
                let pem = record.pointer("/value/certificate")?.as_str()?;
                let der = pem_to_der(pem)?;
                device_of(did, fingerprint, &der)
            })
            .collect();
        Ok(AtsmsInbox {
            mailto,
            https,
            devices,
        })
    }
}

/// The prekey records' collection (rkey: the device fingerprint).
pub const PREKEY_COLLECTION: &str = "at.atsms.prekey";

/// Why a device has no prekey to seal to now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoPrekey {
    /// Its record could not be read now: try again later.
    #[error("its prekey record: {0}")]
    Unavailable(String),
    /// None the client would seal to: absent, forged, expired.
    #[error("{0}")]
    Invalid(String),
}

/// A current device of a DID and what its prekey record says: the key to seal to, or why it
/// has none (then the device gets no sealed copy).
pub type DevicePrekey = (Device, Result<crate::atproto::device::Prekey, NoPrekey>);

/// How long a checked prekey is used without asking again: a device keeps its previous
/// prekey for a grace week after rotating, so minutes cost nothing; a device withdrawn goes
/// with its certificate (the inbox facts' own lifetime).
pub(super) const PREKEY_FRESH: std::time::Duration = std::time::Duration::from_secs(300);

impl IdentityResolver {
    /// The devices of `did` current at `now` (certificate within its dates), each with its
    /// prekey checked as the client's sender checks it (`atproto::device::verify_prekey`), at
    /// most `max` of them. One device's record that cannot be read now is that device's
    /// `Unavailable`, not the DID's. A checked prekey is kept `PREKEY_FRESH`.
    pub async fn device_prekeys(
        self: &Arc<Self>,
        did: &str,
        now: i64,
        max: usize,
    ) -> Result<Vec<DevicePrekey>, IdentityError> {
        let inbox = self.atsms_inbox(did).await?.value;
        let document = self.resolve_did(did).await?.value;
        let current = inbox
            .devices
            .iter()
            .filter(|d| d.not_before <= now && now <= d.not_after)
            .take(max);
        // One getRecord a current device, as the client's sender asks (a listing could leave a
        // current device's record on a later page behind those of withdrawn ones), at once.
        let asked = current.map(|device| async {
            let key = (
                did.to_string(),
                device.fingerprint.clone(),
                device.der.clone(),
            );
            if let Some(prekey) = self.prekeys.get(&key).filter(|p| p.expires_at > now) {
                return (device.clone(), Ok(prekey));
            }
            let record = self
                .pds_query(
                    &document.document,
                    "com.atproto.repo.getRecord",
                    &[
                        ("repo", did),
                        ("collection", PREKEY_COLLECTION),
                        ("rkey", &device.fingerprint),
                    ],
                )
                .await;
            let prekey = match record {
                Ok(Some(record)) => match record.get("value") {
                    Some(value) => crate::atproto::device::verify_prekey(value, &device.der, now)
                        .map_err(|e| NoPrekey::Invalid(e.to_string())),
                    None => Err(NoPrekey::Invalid("no prekey record".into())),
                },
                Ok(None) => Err(NoPrekey::Invalid("no prekey record".into())),
                Err(e) if e.is_transient() => Err(NoPrekey::Unavailable(e.to_string())),
                Err(e) => Err(NoPrekey::Invalid(e.to_string())),
            };
            if let Ok(prekey) = &prekey {
                self.prekeys.insert(key, prekey.clone());
            }
            (device.clone(), prekey)
        });
        Ok(futures::future::join_all(asked).await)
    }
}

/// A device certificate (DER) as its record `fingerprint` of `did` publishes it, checked as
/// spec 5.2 checks a signing device (fingerprint, subjectAltName, P-256), or none.
pub fn device_of(did: &str, fingerprint: &str, der: &[u8]) -> Option<Device> {
    use der::Decode;
    let kid = format!("at://{did}/{DEVICE_CERT_COLLECTION}/{fingerprint}");
    let checked = DeviceCertificate::parse_der(der, &kid, fingerprint).ok()?;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    Some(Device {
        fingerprint: fingerprint.to_string(),
        serial: cert.tbs_certificate().serial_number().as_bytes().to_vec(),
        der: der.to_vec(),
        not_before: checked.not_before,
        not_after: checked.not_after,
    })
}

/// The DER of one PEM certificate.
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use der::DecodePem;
    use der::Encode;
    x509_cert::Certificate::from_pem(pem.as_bytes())
        .ok()?
        .to_der()
        .ok()
}

/// The URL of the XRPC query `method` with `query` at the DID's PDS.
pub(super) fn pds_url(
    document: &DidDocument,
    method: &str,
    query: &[(&str, &str)],
) -> Result<reqwest::Url, IdentityError> {
    let pds = document.pds().ok_or(IdentityError::NoPds)?;
    let mut url = reqwest::Url::parse(pds).map_err(|_| IdentityError::NoPds)?;
    url.set_path(&format!("/xrpc/{method}"));
    url.query_pairs_mut().extend_pairs(query);
    Ok(url)
}
