//! Device certificates (spec 5.2): a self-signed P-256 X.509 certificate published as an
//! `at.atsms.x509` record in the owner's repository. Trust comes from the publication, so the
//! certificate's own signature and basicConstraints are not checked (the spec says so).

use der::DecodePem;
use der::oid::ObjectIdentifier;
use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName, name::GeneralName};

use crate::format::crypto::{Alg, KeyError, PublicKey};

/// Why a device certificate is unusable (spec 5.2; `permerror`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("device certificate does not parse")]
    Unparsable,
    #[error("device certificate key is not P-256")]
    NotP256,
    #[error("device certificate key is not a whole number of bytes")]
    BitString,
    #[error("device certificate: {0}")]
    Key(KeyError),
    #[error("device certificate fingerprint does not match kid")]
    Fingerprint,
    #[error("device certificate extended key usage lacks emailProtection")]
    NoEmailProtection,
    #[error("device certificate extended key usage is malformed")]
    BadKeyUsage,
    #[error("device certificate has no subjectAltName")]
    NoSubjectAltName,
    #[error("device certificate subjectAltName is malformed")]
    BadSubjectAltName,
    #[error("device certificate subjectAltName does not name the kid")]
    SubjectAltNameMismatch,
    #[error("device certificate is not valid yet")]
    NotYetValid,
    #[error("device certificate has expired")]
    Expired,
}

/// id-kp-emailProtection (RFC 5280 §4.2.1.12).
const EMAIL_PROTECTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4");
/// id-ecPublicKey (RFC 5480 §2.1.1) and the P-256 curve (secp256r1).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

/// A published certificate that passed every check that does not depend on the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCertificate {
    pub key: PublicKey,
    pub not_before: i64,
    pub not_after: i64,
}

impl super::cache::Weigh for DeviceCertificate {
    fn weight(&self) -> usize {
        std::mem::size_of::<DeviceCertificate>()
    }
}

impl DeviceCertificate {
    /// Checks a PEM certificate against the `kid` URI and fingerprint that named it.
    pub fn parse(pem: &str, kid: &str, fingerprint: &str) -> Result<DeviceCertificate, CertError> {
        let cert = Certificate::from_pem(pem.as_bytes()).map_err(|_| CertError::Unparsable)?;
        DeviceCertificate::check(&cert, kid, fingerprint)
    }

    /// `parse` for a DER certificate (as a CMS structure carries it).
    pub fn parse_der(
        der: &[u8],
        kid: &str,
        fingerprint: &str,
    ) -> Result<DeviceCertificate, CertError> {
        use der::Decode;
        let cert = Certificate::from_der(der).map_err(|_| CertError::Unparsable)?;
        DeviceCertificate::check(&cert, kid, fingerprint)
    }

    fn check(
        cert: &Certificate,
        kid: &str,
        fingerprint: &str,
    ) -> Result<DeviceCertificate, CertError> {
        let tbs = cert.tbs_certificate();
        let spki = tbs.subject_public_key_info();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if spki.algorithm.oid != EC_PUBLIC_KEY || curve != Some(SECP256R1) {
            return Err(CertError::NotP256);
        }
        let point = spki
            .subject_public_key
            .as_bytes()
            .ok_or(CertError::BitString)?;
        let key = PublicKey::from_sec1(Alg::Es256, point).map_err(CertError::Key)?;
        let actual = crate::format::hex::hex(&Sha256::digest(key.uncompressed_point()));
        if actual != fingerprint {
            return Err(CertError::Fingerprint);
        }
        match tbs.get_extension::<ExtendedKeyUsage>() {
            Ok(Some((_, eku))) if !eku.0.contains(&EMAIL_PROTECTION) => {
                return Err(CertError::NoEmailProtection);
            }
            Err(_) => return Err(CertError::BadKeyUsage),
            _ => {}
        }
        let san = match tbs.get_extension::<SubjectAltName>() {
            Ok(Some((_, san))) => san,
            Ok(None) => return Err(CertError::NoSubjectAltName),
            Err(_) => return Err(CertError::BadSubjectAltName),
        };
        let names_kid = san.0.iter().any(|name| {
            matches!(name, GeneralName::UniformResourceIdentifier(uri) if uri.as_str() == kid)
        });
        if !names_kid {
            return Err(CertError::SubjectAltNameMismatch);
        }
        let validity = tbs.validity();
        let seconds = |t: &x509_cert::time::Time| {
            i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
        };
        Ok(DeviceCertificate {
            key,
            not_before: seconds(&validity.not_before),
            not_after: seconds(&validity.not_after),
        })
    }

    /// notBefore ≤ now ≤ notAfter, inclusive, no skew (spec 5.2).
    pub fn check_validity(&self, now: i64) -> Result<(), CertError> {
        if now < self.not_before {
            return Err(CertError::NotYetValid);
        }
        if now > self.not_after {
            return Err(CertError::Expired);
        }
        Ok(())
    }
}
