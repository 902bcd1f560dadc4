//! Keys: the key a `kid` names — a verification method of the DID document, or a device
//! certificate the DID's PDS publishes (`at.atsms.x509`-style records of the envelope spec,
//! spec section 5) — each cached like documents and shared through the fleet's store.

use std::sync::Arc;

use super::*;

impl IdentityResolver {
    /// The key a `kid` names (spec section 5), checked as of `now`.
    pub async fn resolve_key(
        self: &Arc<Self>,
        kid: &Kid,
        now: i64,
    ) -> Result<ResolvedKey, KeyLookupError> {
        let found = self
            .resolve_did(kid.did())
            .await
            .map_err(|error| KeyLookupError {
                error,
                cached_document: false,
            })?;
        self.key_in(&found.value, kid, now, found.stale, found.cached)
            .await
    }

    /// The key a `kid` names in a given document.
    pub async fn key_in(
        self: &Arc<Self>,
        did: &Arc<ResolvedDid>,
        kid: &Kid,
        now: i64,
        stale: bool,
        cached: bool,
    ) -> Result<ResolvedKey, KeyLookupError> {
        let fail = |error| KeyLookupError {
            error,
            cached_document: cached,
        };
        let key = match kid {
            Kid::VerificationMethod { fragment, .. } => {
                // Decoding a key (a point decompression) costs more than the rest of a
                // lookup: a parsed key is kept under the text it came from.
                let text = did
                    .document
                    .key_text(fragment)
                    .map(|(kind, multibase)| format!("{kind} {multibase}"));
                match text.as_deref().and_then(|t| self.parsed_keys.get(t)) {
                    Some(key) => key,
                    None => {
                        let key = did.document.key(fragment).map_err(|e| fail(e.into()))?;
                        if let Some(text) = text {
                            self.parsed_keys.insert(text, key.clone());
                        }
                        key
                    }
                }
            }
            Kid::DeviceCertificate { fingerprint, .. } => {
                let (document, fingerprint) = (did.document.clone(), fingerprint.clone());
                let fetch = move |this: Arc<Self>, kid_uri: String| {
                    let (document, fingerprint) = (document.clone(), fingerprint.clone());
                    async move {
                        this.fetch_device_cert_shared(&document, &kid_uri, &fingerprint)
                            .await
                    }
                };
                let cert = self
                    .cached(|r| &r.certificates, &kid.to_string(), fetch)
                    .await
                    .map_err(fail)?;
                cert.value.check_validity(now).map_err(|e| fail(e.into()))?;
                cert.value.key.clone()
            }
        };
        Ok(ResolvedKey {
            key,
            did: did.clone(),
            stale,
            cached,
        })
    }

    /// A device certificate: one another instance fetched recently (shared store), else the
    /// DID's PDS, whose record's PEM is then shared. Either way it is parsed and checked here
    /// against the `kid` and fingerprint (the store is not trusted to have done so).
    async fn fetch_device_cert_shared(
        &self,
        document: &DidDocument,
        kid: &str,
        fingerprint: &str,
    ) -> Cached<DeviceCertificate> {
        use crate::infra::store::Kind;
        if let Some(shared) = &self.shared
            && let Some(entry) = shared
                .entry(Kind::Certificate, kid, self.lifetimes.fresh)
                .await
            && let Ok(cert) = DeviceCertificate::parse(&entry.body, kid, fingerprint)
        {
            return Ok(Arc::new(cert));
        }
        let (cert, pem, url) = self.fetch_device_cert(document, kid, fingerprint).await?;
        if let Some(shared) = &self.shared {
            let keep = self.lifetimes.max_age + self.lifetimes.stale_if_error;
            shared
                .put_entry(Kind::Certificate, kid, &url, pem.as_bytes(), keep)
                .await;
        }
        Ok(cert)
    }

    /// A device certificate from the DID's PDS: the certificate, its PEM and the URL asked.
    async fn fetch_device_cert(
        &self,
        document: &DidDocument,
        kid: &str,
        fingerprint: &str,
    ) -> Result<(Arc<DeviceCertificate>, String, String), IdentityError> {
        let url = super::inbox::pds_url(
            document,
            "com.atproto.repo.getRecord",
            &[
                ("repo", &document.id),
                ("collection", DEVICE_CERT_COLLECTION),
                ("rkey", fingerprint),
            ],
        )?;
        let record = self
            .pds_get(&url)
            .await?
            .ok_or(IdentityError::UnknownDevice)?;
        let pem = record
            .pointer("/value/certificate")
            .and_then(|c| c.as_str())
            .ok_or(IdentityError::BadRecord)?;
        let cert = DeviceCertificate::parse(pem, kid, fingerprint)?;
        Ok((Arc::new(cert), pem.to_string(), url.to_string()))
    }
}
