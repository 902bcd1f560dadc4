//! The X.509 floor proper: a CMS SignedData (RFC 5652 §5) by an AT-SMS device certificate,
//! checked without a lookup (`check_signed`), then against what the DID's PDS publishes
//! (`verify`).

use std::sync::Arc;

use cms::cert::CertificateChoices;
use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier};
use der::oid::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::ext::pkix::SubjectKeyIdentifier;
use x509_cert::ext::pkix::name::GeneralName;

use super::*;
use crate::atproto::identity::{CertError, DeviceCertificate, IdentityResolver};
use crate::format::crypto::SignatureError;
use crate::format::envelope::{AuthResult, Kid};

/// Why a SignedData could not be verified, each mapped to one result (`result`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FloorError {
    #[error("not a CMS SignedData: {0}")]
    Malformed(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    #[error("no certificate in the SignedData matches its SignerIdentifier")]
    NoSignerCertificate,
    #[error("the signer's certificate names no at://<did>/at.atsms.x509/<fingerprint>")]
    NoDeviceUri,
    #[error("{0}")]
    Certificate(CertError),
    #[error("the message-digest attribute does not match the content")]
    DigestMismatch,
    #[error("{0}")]
    Signature(SignatureError),
    /// Verified, but the DID's PDS does not publish the certificate, or could not say, or
    /// the certificate is not valid now: the reason as found.
    #[error("{0}")]
    Unpublished(String),
}

impl FloorError {
    /// `fail` for a signature that does not verify over what it covers; `permerror` for
    /// everything that could not be checked at all (RFC 6376 §6.1 reads alike).
    pub fn result(&self) -> AuthResult {
        match self {
            FloorError::DigestMismatch | FloorError::Signature(SignatureError::Invalid) => {
                AuthResult::Fail
            }
            _ => AuthResult::Permerror,
        }
    }
}

/// A SignedData whose signature verified with the certificate it names.
#[derive(Debug, Clone)]
pub struct Signed {
    pub did: String,
    pub fingerprint: String,
    pub certificate: DeviceCertificate,
    /// The signed content (the encapsulated content, or the detached one given).
    pub content: Vec<u8>,
}

/// Verifies a DER SignedData (`content`: the detached content of a multipart/signed) without
/// looking anything up: the signer's certificate, the device URI, the signature.
pub fn check_signed(der: &[u8], detached: Option<&[u8]>) -> Result<Signed, FloorError> {
    if der.len() > MAX_CMS {
        return Err(FloorError::Malformed("too large"));
    }
    let info = ContentInfo::from_der(der).map_err(|_| FloorError::Malformed("no ContentInfo"))?;
    if info.content_type != ID_SIGNED_DATA {
        return Err(FloorError::Malformed("another content type"));
    }
    let signed = info
        .content
        .decode_as::<SignedData>()
        .map_err(|_| FloorError::Malformed("SignedData does not decode"))?;
    let mut signers = signed.signer_infos.0.iter();
    let (Some(signer), None) = (signers.next(), signers.next()) else {
        return Err(FloorError::Unsupported("exactly one signer is verified"));
    };
    if signer.digest_alg.oid != ID_SHA256 {
        return Err(FloorError::Unsupported("digest other than SHA-256"));
    }
    if signer.signature_algorithm.oid != ECDSA_WITH_SHA256
        && signer.signature_algorithm.oid != ID_EC_PUBLIC_KEY
    {
        return Err(FloorError::Unsupported("signature other than ECDSA"));
    }
    let content = match (&signed.encap_content_info.econtent, detached) {
        (Some(econtent), None) => econtent
            .decode_as::<der::asn1::OctetString>()
            .map_err(|_| FloorError::Malformed("eContent is not an OCTET STRING"))?
            .into_bytes()
            .into_vec(),
        (None, Some(detached)) => detached.to_vec(),
        (Some(_), Some(_)) => return Err(FloorError::Malformed("content both inside and beside")),
        (None, None) => return Err(FloorError::Malformed("no content")),
    };
    let certificate = signer_certificate(&signed, &signer.sid)?;
    let cert_der = certificate
        .to_der()
        .map_err(|_| FloorError::Malformed("certificate does not encode"))?;
    let (did, fingerprint) = device_uri(&certificate).ok_or(FloorError::NoDeviceUri)?;
    let kid = format!(
        "at://{did}/{}/{fingerprint}",
        crate::format::envelope::token::DEVICE_CERT_COLLECTION
    );
    let device = DeviceCertificate::parse_der(&cert_der, &kid, &fingerprint)
        .map_err(FloorError::Certificate)?;
    // RFC 5652 §5.4: without signed attributes the signature covers the content; with them,
    // the DER of the SET OF attributes, which must carry the content's type and digest.
    let covered = match &signer.signed_attrs {
        None => content.clone(),
        Some(attrs) => {
            let value = |oid| {
                attrs
                    .iter()
                    .find(|a| a.oid == oid)
                    .and_then(|a| a.values.iter().next().cloned())
            };
            let digest = value(ID_MESSAGE_DIGEST)
                .and_then(|v| v.decode_as::<der::asn1::OctetString>().ok())
                .ok_or(FloorError::Malformed("no message-digest attribute"))?;
            if digest.as_bytes() != Sha256::digest(&content).as_slice() {
                return Err(FloorError::DigestMismatch);
            }
            let kind = value(ID_CONTENT_TYPE)
                .and_then(|v| v.decode_as::<ObjectIdentifier>().ok())
                .ok_or(FloorError::Malformed("no content-type attribute"))?;
            if kind != signed.encap_content_info.econtent_type {
                return Err(FloorError::Malformed("content-type attribute differs"));
            }
            attrs
                .to_der()
                .map_err(|_| FloorError::Malformed("signed attributes do not encode"))?
        }
    };
    device
        .key
        .verify_der(&covered, signer.signature.as_bytes())
        .map_err(FloorError::Signature)?;
    Ok(Signed {
        did,
        fingerprint,
        certificate: device,
        content,
    })
}

/// The device a SignedData claims to be signed by (DID and fingerprint of the certificate
/// its SignerIdentifier names), whether or not the signature verifies: reported as
/// `header.d` of a failing signature, as DKIM reports `d=`.
pub fn claimed_device(der: &[u8]) -> Option<(String, String)> {
    let info = ContentInfo::from_der(der).ok()?;
    let signed = info.content.decode_as::<SignedData>().ok()?;
    let signer = signed.signer_infos.0.iter().next()?;
    device_uri(&signer_certificate(&signed, &signer.sid).ok()?)
}

/// The certificate the SignerIdentifier names (RFC 5652 §5.3), among those the SignedData
/// carries: by issuer and serial number, or by subject key identifier.
fn signer_certificate(
    signed: &SignedData,
    sid: &SignerIdentifier,
) -> Result<Certificate, FloorError> {
    let certificates = signed.certificates.iter().flat_map(|set| set.0.iter());
    for choice in certificates {
        let CertificateChoices::Certificate(cert) = choice else {
            continue;
        };
        let tbs = cert.tbs_certificate();
        let named = match sid {
            SignerIdentifier::IssuerAndSerialNumber(i) => {
                tbs.issuer() == &i.issuer && tbs.serial_number() == &i.serial_number
            }
            SignerIdentifier::SubjectKeyIdentifier(ski) => {
                matches!(tbs.get_extension::<SubjectKeyIdentifier>(), Ok(Some((_, own))) if own == *ski)
            }
        };
        if named {
            return Ok(cert.clone());
        }
    }
    Err(FloorError::NoSignerCertificate)
}

/// The DID and fingerprint of a certificate's `at://<did>/at.atsms.x509/<fingerprint>` URI.
fn device_uri(cert: &Certificate) -> Option<(String, String)> {
    let (_, san) = cert
        .tbs_certificate()
        .get_extension::<x509_cert::ext::pkix::SubjectAltName>()
        .ok()??;
    san.0.iter().find_map(|name| match name {
        GeneralName::UniformResourceIdentifier(uri) => match Kid::parse(uri.as_str())? {
            Kid::DeviceCertificate { did, fingerprint } => Some((did, fingerprint)),
            Kid::VerificationMethod { .. } => None,
        },
        _ => None,
    })
}

/// The X.509 floor's answer (`verify-cms --json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FloorVerdict {
    pub result: AuthResult,
    pub did: Option<String>,
    pub fingerprint: Option<String>,
    /// Whether the DID's PDS publishes that certificate under that fingerprint: unknown
    /// (`None`) when it was not asked or could not answer.
    pub published: Option<bool>,
    pub reason: Option<String>,
}

/// Verifies a SignedData and asks the DID's PDS (through the identity cache) whether it
/// publishes the signer's certificate, as of `now`.
pub async fn verify(
    identity: &Arc<IdentityResolver>,
    der: &[u8],
    detached: Option<&[u8]>,
    now: i64,
) -> FloorVerdict {
    match check_signed(der, detached) {
        Ok(signed) => published(identity, &signed, now).await,
        Err(e) => FloorVerdict::unchecked(&e),
    }
}

impl FloorVerdict {
    /// The verdict on a SignedData whose signature could not be checked.
    pub fn unchecked(e: &FloorError) -> FloorVerdict {
        FloorVerdict {
            result: e.result(),
            did: None,
            fingerprint: None,
            published: None,
            reason: Some(e.to_string()),
        }
    }
}

/// The verdict on a SignedData whose signature verified: pass when its certificate is valid
/// now and the DID's PDS publishes it under its fingerprint.
pub async fn published(
    identity: &Arc<IdentityResolver>,
    signed: &Signed,
    now: i64,
) -> FloorVerdict {
    let verdict = |result, published, reason: Option<String>| FloorVerdict {
        result,
        did: Some(signed.did.clone()),
        fingerprint: Some(signed.fingerprint.clone()),
        published,
        reason,
    };
    if let Err(e) = signed.certificate.check_validity(now) {
        return verdict(AuthResult::Permerror, None, Some(e.to_string()));
    }
    let kid = Kid::DeviceCertificate {
        did: signed.did.clone(),
        fingerprint: signed.fingerprint.clone(),
    };
    match identity.resolve_key(&kid, now).await {
        Ok(published) if published.key == signed.certificate.key => {
            verdict(AuthResult::Pass, Some(true), None)
        }
        Ok(_) => verdict(
            AuthResult::Permerror,
            Some(false),
            Some("the DID publishes another certificate under that fingerprint".into()),
        ),
        Err(e) if e.error.is_transient() => {
            verdict(AuthResult::Temperror, None, Some(e.error.to_string()))
        }
        // As DKIM with no key record (RFC 6376 §6.1.2): a permanent error, not a fail.
        Err(e) => verdict(
            AuthResult::Permerror,
            Some(false),
            Some(format!(
                "certificate not published by {}: {}",
                signed.did, e.error
            )),
        ),
    }
}
