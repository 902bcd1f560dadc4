//! AT-SMS's own messages (the AT-SMS client, 3numlabs/atsms), as far as a mail host can see
//! into them (docs/atsms.md):
//!
//! - **Recognising** what an `application/atsms-envelope` or `.p7m` part carries: an HPKE
//!   sealed envelope (`[1, 1, suite, enc, ct]` or `[1, 2, tag, nonce, ct]`, deterministic
//!   CBOR, at most 64 KiB), a CMS EnvelopedData (whose recipients name device certificates by
//!   issuer and serial), a CMS SignedData — or something malformed, which is never a pass.
//! - **The X.509 floor**: an unencrypted CMS SignedData (RFC 5652) by a device certificate is
//!   verified: the signer is the certificate its SignerIdentifier names (never "the first
//!   certificate"), SHA-256 with ECDSA P-256, with or without signed attributes (the client
//!   makes none; other S/MIME agents do, RFC 5652 §5.4), high-S accepted as CMS allows; the
//!   DID and fingerprint come from the certificate's `at://<did>/at.atsms.x509/<fingerprint>`
//!   URI, checked as spec 5.2 checks a device; the certificate must be published by the DID's
//!   PDS under that fingerprint.
//!
//! The signature is checked before anything is fetched: a stranger's garbage costs no lookup.

mod signed;
mod smime;

pub use signed::{
    FloorError, FloorVerdict, Signed, check_signed, claimed_device, published, verify,
};
pub use smime::{CmsInput, Found, find_in_message, read_input};

use crate::format::ber;
use cms::content_info::ContentInfo;
use cms::enveloped_data::{KeyAgreeRecipientIdentifier, RecipientIdentifier, RecipientInfo};
use cms::signed_data::SignedData;
use der::Decode;
use der::oid::ObjectIdentifier;

/// The CMS object identifiers, where the CMS structures are made (RFC 5652 §5.1, §6.1; RFC
/// 5754; RFC 5753 lets id-ecPublicKey stand for ecdsa-with-SHA256).
pub(crate) use crate::format::enveloped::{ID_EC_PUBLIC_KEY, ID_ENVELOPED_DATA};
pub(crate) use crate::format::signed::{ECDSA_WITH_SHA256, ID_SHA256, ID_SIGNED_DATA};
/// The content-type and message-digest signed attributes (RFC 5652 §11.1, §11.2).
pub(crate) const ID_CONTENT_TYPE: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
pub(crate) const ID_MESSAGE_DIGEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// commonName (X.520).
pub(crate) const ID_CN: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");

/// The largest sealed envelope the AT-SMS wire format makes (its largest padding bucket and
/// the framing around it).
pub const MAX_SEALED: usize = crate::format::sealed::MAX_SEALED;
/// The largest CMS structure read (a message is bounded by the MTA; this bounds the parse).
pub const MAX_CMS: usize = 16 * 1024 * 1024;

/// What an AT-SMS part carries (`verify --json`'s `atsms_envelope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeKind {
    Sealed,
    CmsEnveloped,
    CmsSigned,
    Malformed,
}

impl EnvelopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EnvelopeKind::Sealed => "sealed",
            EnvelopeKind::CmsEnveloped => "cms-enveloped",
            EnvelopeKind::CmsSigned => "cms-signed",
            EnvelopeKind::Malformed => "malformed",
        }
    }
}

/// What the decoded bytes of an AT-SMS part are.
pub fn classify(bytes: &[u8]) -> EnvelopeKind {
    if bytes.first() == Some(&0x85) {
        return if sealed_shape(bytes) {
            EnvelopeKind::Sealed
        } else {
            EnvelopeKind::Malformed
        };
    }
    match cms_kind(bytes) {
        Some(kind) => kind,
        None => EnvelopeKind::Malformed,
    }
}

/// A sealed envelope's shape (`format::sealed::shape`).
pub fn sealed_shape(bytes: &[u8]) -> bool {
    crate::format::sealed::shape(bytes)
}

/// Whether `der` is a SignedData whose SignerIdentifier names a device certificate (an
/// `at://…/at.atsms.x509/…` URI): the X.509 floor, not an ordinary S/MIME signature, which is
/// not AT-SMS content and gets no result (as a message without a DKIM-Signature gets no
/// `dkim` result). Whether the signature verifies is `check_signed`'s question.
pub fn device_signed(der: &[u8]) -> bool {
    cms_kind(der) == Some(EnvelopeKind::CmsSigned) && claimed_device(der).is_some()
}

/// The CMS content type of `bytes` when its structure reads: a SignedData in DER, or an
/// EnvelopedData (the client writes its outer layers in BER with indefinite lengths) whose
/// recipient infos decode.
fn cms_kind(bytes: &[u8]) -> Option<EnvelopeKind> {
    if bytes.len() > MAX_CMS {
        return None;
    }
    let mut at = 0;
    let outer = ber::tlv(bytes, &mut at)?;
    let mut inner = outer.content_start;
    let oid = ber::tlv(bytes, &mut inner)?;
    let oid = ObjectIdentifier::from_bytes(&bytes[oid.content_start..oid.content_end?]).ok()?;
    if oid == ID_SIGNED_DATA {
        let info = ContentInfo::from_der(bytes).ok()?;
        info.content.decode_as::<SignedData>().ok()?;
        return Some(EnvelopeKind::CmsSigned);
    }
    if oid == ID_ENVELOPED_DATA {
        enveloped_recipients(bytes)?;
        return Some(EnvelopeKind::CmsEnveloped);
    }
    None
}

/// A recipient of a CMS EnvelopedData, as it names the device certificate: the issuer's
/// common name (the DID, for a device's self-signed certificate) and the serial number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub issuer_cn: Option<String>,
    pub serial: Vec<u8>,
}

/// The recipients of a CMS EnvelopedData (RFC 5652 §6.1: `[0] { SEQUENCE { version,
/// [0] originatorInfo OPTIONAL, recipientInfos SET, … } }`), read through the BER of the
/// outer layers; none for anything else. A recipient named by key identifier has no serial
/// and is left out (no device certificate can match it).
pub fn enveloped_recipients(bytes: &[u8]) -> Option<Vec<Recipient>> {
    let mut at = 0;
    let outer = ber::tlv(bytes, &mut at)?;
    let mut at = outer.content_start;
    let oid = ber::tlv(bytes, &mut at)?;
    if ObjectIdentifier::from_bytes(&bytes[oid.content_start..oid.content_end?]).ok()?
        != ID_ENVELOPED_DATA
    {
        return None;
    }
    at = oid.content_end?;
    let explicit = ber::tlv(bytes, &mut at)?;
    (explicit.tag == 0xa0).then_some(())?;
    let mut at = explicit.content_start;
    let sequence = ber::tlv(bytes, &mut at)?;
    (sequence.tag == 0x30).then_some(())?;
    let mut at = sequence.content_start;
    let version = ber::tlv(bytes, &mut at)?;
    (version.tag == 0x02).then_some(())?;
    at = version.content_end?;
    let mut set = ber::tlv(bytes, &mut at)?;
    if set.tag == 0xa0 {
        // originatorInfo
        at = ber::skip(bytes, set)?;
        set = ber::tlv(bytes, &mut at)?;
    }
    (set.tag == 0x31).then_some(())?;
    let end = set.content_end?;
    let infos = cms::enveloped_data::RecipientInfos::from_der(&bytes[set.start..end]).ok()?;
    let mut out = Vec::new();
    for info in infos.0.iter() {
        let named = match info {
            RecipientInfo::Ktri(k) => match &k.rid {
                RecipientIdentifier::IssuerAndSerialNumber(i) => vec![i.clone()],
                RecipientIdentifier::SubjectKeyIdentifier(_) => vec![],
            },
            RecipientInfo::Kari(k) => k
                .recipient_enc_keys
                .iter()
                .filter_map(|r| match &r.rid {
                    KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(i) => Some(i.clone()),
                    KeyAgreeRecipientIdentifier::RKeyId(_) => None,
                })
                .collect(),
            _ => vec![],
        };
        out.extend(named.into_iter().map(|i| Recipient {
            issuer_cn: common_name(&i.issuer),
            serial: i.serial_number.as_bytes().to_vec(),
        }));
    }
    Some(out)
}

fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.iter_rdn()
        .flat_map(|rdn| rdn.iter())
        .find(|atv| atv.oid == ID_CN)
        .and_then(|atv| {
            atv.value
                .decode_as::<der::asn1::PrintableStringRef<'_>>()
                .map(|s| s.as_str().to_string())
                .or_else(|_| {
                    atv.value
                        .decode_as::<der::asn1::Utf8StringRef<'_>>()
                        .map(|s| s.as_str().to_string())
                })
                .ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_envelopes_have_one_strict_shape() {
        let mut mode1 = vec![0x85, 0x01, 0x01, 0x01, 0x58, 0x20];
        mode1.extend([7u8; 32]);
        mode1.extend([0x43, 1, 2, 3]);
        assert!(sealed_shape(&mode1));
        assert_eq!(classify(&mode1), EnvelopeKind::Sealed);
        let mut mode2 = vec![0x85, 0x01, 0x02, 0x48];
        mode2.extend([1u8; 8]);
        mode2.extend([0x58, 0x18]);
        mode2.extend([2u8; 24]);
        mode2.extend([0x40]);
        assert!(sealed_shape(&mode2));
        // Trailing bytes, a short enc, a non-shortest length, another version, a map.
        let mut trailing = mode1.clone();
        trailing.push(0);
        let mut short = vec![0x85, 0x01, 0x01, 0x01, 0x58, 0x1f];
        short.extend([7u8; 31]);
        short.extend([0x40]);
        let mut long_form = vec![0x85, 0x01, 0x01, 0x18, 0x01, 0x58, 0x20];
        long_form.extend([7u8; 32]);
        long_form.extend([0x40]);
        let mut v2 = mode1.clone();
        v2[1] = 0x02;
        for bad in [trailing, short, long_form, v2, vec![0x85], vec![0xa0]] {
            assert!(!sealed_shape(&bad), "{bad:02x?}");
            assert_eq!(classify(&bad), EnvelopeKind::Malformed);
        }
        // The largest bucket (64 KiB and the AEAD's tag) is taken; past it, not.
        let sealed = |ct: usize| {
            let mut e = vec![0x85, 0x01, 0x01, 0x01, 0x58, 0x20];
            e.extend([7u8; 32]);
            e.push(0x5a);
            e.extend((ct as u32).to_be_bytes());
            e.extend(vec![0u8; ct]);
            e
        };
        assert!(sealed_shape(&sealed(65536 + 16)));
        assert!(!sealed_shape(&sealed(65536 + 16 + 100)));
    }

    #[test]
    fn ber_lengths_are_bounded_and_never_panic() {
        for bytes in [
            &b""[..],
            &[0x30],
            &[0x30, 0x80],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x02, 0x80],
            &[0x30, 0x80, 0x30, 0x80, 0x30, 0x80],
        ] {
            assert_eq!(classify(bytes), EnvelopeKind::Malformed, "{bytes:02x?}");
            assert_eq!(enveloped_recipients(bytes), None);
        }
    }
}
