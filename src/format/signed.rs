//! A CMS SignedData (RFC 5652 §5) as the AT-SMS client signs a message (its `signMessage`;
//! docs/research/atsms-client-sending.md §5): the content attached as id-data, SHA-256, no
//! signed attributes (the signature is over the content itself, §5.4), the signer named by
//! issuer and serial, its device certificate the only one in the set (the client takes the
//! sender from the first), ECDSA with SHA-256 in DER. Read back by
//! `verification::atsms_parts::check_signed`, the X.509 floor.

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{ObjectIdentifier, OctetString, SetOfVec};
use der::{Any, Encode};
use p256::ecdsa::signature::Signer;
use x509_cert::spki::AlgorithmIdentifierOwned;

/// id-signedData (RFC 5652 §5.1).
pub const ID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// id-sha256 (RFC 5754 §2.2) and ecdsa-with-SHA256 (RFC 5754 §3.3).
pub const ID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
pub const ECDSA_WITH_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");

/// `content` signed by the device whose certificate is `certificate` and key `key`.
pub fn sign(
    content: &[u8],
    certificate: &x509_cert::Certificate,
    key: &p256::ecdsa::SigningKey,
) -> Result<Vec<u8>, der::Error> {
    let sha256 = AlgorithmIdentifierOwned {
        oid: ID_SHA256,
        parameters: Some(Any::from(der::asn1::Null)),
    };
    let signature: p256::ecdsa::DerSignature = key.sign(content);
    let tbs = certificate.tbs_certificate();
    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer().clone(),
            serial_number: tbs.serial_number().clone(),
        }),
        digest_alg: sha256.clone(),
        signed_attrs: None,
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: ECDSA_WITH_SHA256,
            parameters: None,
        },
        signature: OctetString::new(signature.to_bytes().to_vec())?,
        unsigned_attrs: None,
    };
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256])?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: crate::format::enveloped::ID_DATA,
            econtent: Some(Any::encode_from(&OctetString::new(content.to_vec())?)?),
        },
        certificates: Some(CertificateSet::try_from(vec![
            CertificateChoices::Certificate(certificate.clone()),
        ])?),
        crls: None,
        signer_infos: SignerInfos::try_from(vec![signer])?,
    };
    ContentInfo {
        content_type: ID_SIGNED_DATA,
        content: Any::encode_from(&signed)?,
    }
    .to_der()
}
