//! CMS EnvelopedData (RFC 5652 §6) as the AT-SMS client makes it, opened with a device's key
//! (what this project read of its code: docs/research/atsms-client-sending.md §6):
//!
//! - one `KeyAgreeRecipientInfo` (RFC 5652 §6.2.2) per recipient certificate: ECDH-ES with an
//!   ephemeral P-256 key (`dhSinglePass-stdDH-sha256kdf-scheme`, RFC 5753 §3.1), the key
//!   derived by the ANSI X9.63 KDF with SHA-256 over `ECC-CMS-SharedInfo` (RFC 5753 §7.2),
//!   the content key wrapped with AES-256 key wrap (RFC 3394);
//! - the content encrypted with AES-256-CBC (RFC 3565), PKCS #7 padding;
//! - the outer layers in BER with indefinite lengths and the content in chunks (`format::ber`).
//!
//! Like the client, every recipient entry is tried with the device's key (the `rid` is not
//! compared: a wrong key fails the key wrap's integrity check), and the `keyInfo` of the
//! SharedInfo is tried without parameters, then with NULL ones.

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::key_wrap::{AES_256 as KW_AES_256, KeyEncryptionKey, KeyWrap};
use cms::enveloped_data::{OriginatorIdentifierOrKey, RecipientInfo, RecipientInfos};
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use sha2::{Digest, Sha256};

use crate::format::ber;

/// id-envelopedData (RFC 5652 §6.1).
pub const ID_ENVELOPED_DATA: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.3");
/// dhSinglePass-stdDH-sha256kdf-scheme (RFC 5753 §7.1.4).
pub const DH_SHA256_KDF: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.1.11.1");
/// id-aes256-wrap (RFC 3394 §3).
pub const ID_AES256_WRAP: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.45");
/// id-aes256-CBC (RFC 3565 §4.1).
pub const ID_AES256_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");
/// Recipient entries read at most (the client's own one-shot puts every device of every
/// recipient in one EnvelopedData).
pub const MAX_RECIPIENT_INFOS: usize = 1024;
/// The largest content decrypted (a SignedData of a 64 KiB bucket, with room).
pub const MAX_CONTENT: usize = 1024 * 1024;

/// Why an EnvelopedData was not opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopedError {
    #[error("not a CMS EnvelopedData")]
    Shape,
    #[error("not encrypted to this device (no recipient entry opens with its key)")]
    NotForThisDevice,
    #[error("a key agreement or content encryption other than the AT-SMS client's")]
    Unsupported,
    #[error("the content does not decrypt")]
    Content,
}

/// What an EnvelopedData carries, read from its BER.
struct Parts {
    infos: RecipientInfos,
    /// The content-encryption algorithm's IV (AES-256-CBC only).
    iv: [u8; 16],
    encrypted: Vec<u8>,
}

fn read(bytes: &[u8]) -> Option<Parts> {
    let mut at = 0;
    let outer = ber::tlv(bytes, &mut at)?;
    // The whole structure, to its last end-of-contents, and nothing after.
    (outer.tag == 0x30 && ber::skip(bytes, outer)? == bytes.len()).then_some(())?;
    let oid = ber::tlv(bytes, &mut at)?;
    let oid_end = oid.content_end?;
    (oid.tag == 0x06
        && ObjectIdentifier::from_bytes(&bytes[oid.content_start..oid_end]).ok()?
            == ID_ENVELOPED_DATA)
        .then_some(())?;
    at = oid_end;
    (ber::tlv(bytes, &mut at)?.tag == 0xa0).then_some(())?;
    (ber::tlv(bytes, &mut at)?.tag == 0x30).then_some(())?;
    let version = ber::tlv(bytes, &mut at)?;
    (version.tag == 0x02).then_some(())?;
    at = version.content_end?;
    let mut set = ber::tlv(bytes, &mut at)?;
    if set.tag == 0xa0 {
        at = ber::skip(bytes, set)?; // originatorInfo
        set = ber::tlv(bytes, &mut at)?;
    }
    (set.tag == 0x31).then_some(())?;
    let infos = RecipientInfos::from_der(bytes.get(set.start..set.content_end?)?).ok()?;
    // Each entry costs an ECDH to try: no more than a message to many devices has.
    (infos.0.len() <= MAX_RECIPIENT_INFOS).then_some(())?;
    at = set.content_end?;
    // EncryptedContentInfo: contentType, contentEncryptionAlgorithm, [0] encryptedContent.
    (ber::tlv(bytes, &mut at)?.tag == 0x30).then_some(())?;
    let content_type = ber::tlv(bytes, &mut at)?;
    at = content_type.content_end?;
    let algorithm_tlv = ber::tlv(bytes, &mut at)?;
    let algorithm_end = algorithm_tlv.content_end?;
    let algorithm = x509_cert::spki::AlgorithmIdentifierOwned::from_der(
        bytes.get(algorithm_tlv.start..algorithm_end)?,
    )
    .ok()?;
    at = algorithm_end;
    let iv = match (&algorithm.oid, &algorithm.parameters) {
        (oid, Some(params)) if *oid == ID_AES256_CBC => {
            let iv = params.decode_as::<der::asn1::OctetString>().ok()?;
            <[u8; 16]>::try_from(iv.as_bytes()).ok()?
        }
        _ => return None,
    };
    let content = ber::tlv(bytes, &mut at)?;
    (content.tag & 0xdf == 0x80).then_some(())?;
    let encrypted = ber::octets(bytes, content, MAX_CONTENT + 16)?;
    Some(Parts {
        infos,
        iv,
        encrypted,
    })
}

/// The SharedInfo of RFC 5753 §7.2 for AES-256 key wrap: `keyInfo` (parameters absent, or
/// NULL), `entityUInfo` the ukm when given, `suppPubInfo` the key length in bits (256).
fn shared_info(ukm: Option<&[u8]>, null_parameters: bool) -> Option<Vec<u8>> {
    use der::asn1::{ContextSpecific, OctetString};
    let key_info = x509_cert::spki::AlgorithmIdentifierOwned {
        oid: ID_AES256_WRAP,
        parameters: null_parameters.then(|| der::Any::from(der::asn1::Null)),
    };
    let mut content = key_info.to_der().ok()?;
    if let Some(ukm) = ukm {
        let entity = ContextSpecific {
            tag_number: der::TagNumber(0),
            tag_mode: der::TagMode::Explicit,
            value: OctetString::new(ukm).ok()?,
        };
        content.extend(entity.to_der().ok()?);
    }
    let supp = ContextSpecific {
        tag_number: der::TagNumber(2),
        tag_mode: der::TagMode::Explicit,
        value: OctetString::new(256u32.to_be_bytes().to_vec()).ok()?,
    };
    content.extend(supp.to_der().ok()?);
    let mut out = vec![0x30];
    let len = der::Length::try_from(content.len()).ok()?;
    out.extend(len.to_der().ok()?);
    out.extend(content);
    Some(out)
}

/// ANSI X9.63 KDF with SHA-256 (SEC 1 §3.6.1) for a 32-byte key: one block.
fn kek(z: &[u8], shared_info: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(z);
    hash.update(1u32.to_be_bytes());
    hash.update(shared_info);
    hash.finalize().into()
}

/// The content-encryption key, if an entry of `info` opens with `key`.
fn content_key(
    info: &cms::enveloped_data::KeyAgreeRecipientInfo,
    key: &p256::SecretKey,
) -> Result<[u8; 32], EnvelopedError> {
    if info.key_enc_alg.oid != DH_SHA256_KDF {
        return Err(EnvelopedError::Unsupported);
    }
    let wrap = info.key_enc_alg.parameters.as_ref().and_then(|p| {
        p.decode_as::<x509_cert::spki::AlgorithmIdentifierOwned>()
            .ok()
    });
    if wrap.is_none_or(|w| w.oid != ID_AES256_WRAP) {
        return Err(EnvelopedError::Unsupported);
    }
    let OriginatorIdentifierOrKey::OriginatorKey(originator) = &info.originator else {
        return Err(EnvelopedError::Unsupported);
    };
    let point = originator
        .public_key
        .as_bytes()
        .ok_or(EnvelopedError::Shape)?;
    let theirs = p256::PublicKey::from_sec1_bytes(point).map_err(|_| EnvelopedError::Shape)?;
    let z = p256::ecdh::diffie_hellman(key.to_nonzero_scalar(), theirs.as_affine());
    let ukm = info.ukm.as_ref().map(|u| u.as_bytes());
    for null_parameters in [false, true] {
        let shared = shared_info(ukm, null_parameters).ok_or(EnvelopedError::Shape)?;
        let kek = kek(z.raw_secret_bytes(), &shared);
        for encrypted in info.recipient_enc_keys.iter() {
            let Ok(unwrapping) = KeyEncryptionKey::new(&KW_AES_256, &kek) else {
                continue;
            };
            let mut out = [0u8; 40];
            if let Ok(cek) = unwrapping.unwrap(encrypted.enc_key.as_bytes(), &mut out)
                && let Ok(cek) = <[u8; 32]>::try_from(&*cek)
            {
                return Ok(cek);
            }
        }
    }
    Err(EnvelopedError::NotForThisDevice)
}

/// Opens `bytes` (an EnvelopedData, BER) with the device's `key`: the content (for a one-shot
/// message, a SignedData).
pub fn decrypt(bytes: &[u8], key: &p256::SecretKey) -> Result<Vec<u8>, EnvelopedError> {
    let parts = read(bytes).ok_or(EnvelopedError::Shape)?;
    let mut unsupported = false;
    let mut cek = None;
    for info in parts.infos.0.iter() {
        let RecipientInfo::Kari(kari) = info else {
            unsupported = true;
            continue;
        };
        match content_key(kari, key) {
            Ok(key) => {
                cek = Some(key);
                break;
            }
            Err(EnvelopedError::Unsupported) => unsupported = true,
            Err(_) => {}
        }
    }
    let Some(cek) = cek else {
        return Err(if unsupported {
            EnvelopedError::Unsupported
        } else {
            EnvelopedError::NotForThisDevice
        });
    };
    let key = UnboundCipherKey::new(&AES_256, &cek).map_err(|_| EnvelopedError::Content)?;
    let decrypting =
        PaddedBlockDecryptingKey::cbc_pkcs7(key).map_err(|_| EnvelopedError::Content)?;
    let mut content = parts.encrypted;
    let context = DecryptionContext::Iv128(FixedLength::from(parts.iv));
    let len = decrypting
        .decrypt(&mut content, context)
        .map_err(|_| EnvelopedError::Content)?
        .len();
    content.truncate(len);
    Ok(content)
}

/// id-data (RFC 5652 §4): what the client's EnvelopedData says it holds, a SignedData's DER.
pub const ID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
/// id-ecPublicKey and prime256v1 (RFC 5480 §2.1.1): the originator key's algorithm, with the
/// curve named (the client reads it from there, having no recipient certificate at hand).
pub const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const PRIME256V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");

fn random<const N: usize>() -> Result<[u8; N], EnvelopedError> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(|_| EnvelopedError::Unsupported)?;
    Ok(out)
}

/// One KeyAgreeRecipientInfo for `certificate` (a device's), the content key `cek` wrapped
/// for it with a fresh ephemeral key and a 64-byte ukm, as the client makes one.
fn recipient_info(
    certificate: &x509_cert::Certificate,
    cek: &[u8; 32],
) -> Result<RecipientInfo, EnvelopedError> {
    use aws_lc_rs::agreement::{self, ECDH_P256, PrivateKey, UnparsedPublicKey};
    use cms::enveloped_data::{
        KeyAgreeRecipientIdentifier, KeyAgreeRecipientInfo, OriginatorPublicKey,
        RecipientEncryptedKey,
    };
    let tbs = certificate.tbs_certificate();
    let theirs = tbs.subject_public_key_info().subject_public_key.raw_bytes();
    // aws-lc's P-256 (a scalar multiplication in ~30 µs, where p256's takes ~150: the ephemeral
    // key and the agreement are most of what sealing for a device costs; criterion
    // `one_shot/seal_per_device`).
    let ephemeral = PrivateKey::generate(&ECDH_P256).map_err(|_| EnvelopedError::Unsupported)?;
    let point = ephemeral
        .compute_public_key()
        .map_err(|_| EnvelopedError::Unsupported)?
        .as_ref()
        .to_vec();
    let ukm = random::<64>()?;
    let shared = shared_info(Some(&ukm), false).ok_or(EnvelopedError::Shape)?;
    let kek = agreement::agree(
        &ephemeral,
        UnparsedPublicKey::new(&ECDH_P256, theirs),
        EnvelopedError::Unsupported,
        |z| Ok(kek(z, &shared)),
    )?;
    let wrapping =
        KeyEncryptionKey::new(&KW_AES_256, &kek).map_err(|_| EnvelopedError::Unsupported)?;
    let mut wrapped = [0u8; 40];
    let wrapped = wrapping
        .wrap(cek, &mut wrapped)
        .map_err(|_| EnvelopedError::Unsupported)?
        .to_vec();
    let der_err = |_| EnvelopedError::Shape;
    let wrap_alg = x509_cert::spki::AlgorithmIdentifierOwned {
        oid: ID_AES256_WRAP,
        parameters: None,
    };
    Ok(RecipientInfo::Kari(KeyAgreeRecipientInfo {
        version: cms::content_info::CmsVersion::V3,
        originator: OriginatorIdentifierOrKey::OriginatorKey(OriginatorPublicKey {
            algorithm: x509_cert::spki::AlgorithmIdentifierOwned {
                oid: ID_EC_PUBLIC_KEY,
                parameters: Some(der::Any::from(PRIME256V1)),
            },
            public_key: der::asn1::BitString::from_bytes(&point).map_err(der_err)?,
        }),
        ukm: Some(der::asn1::OctetString::new(ukm.to_vec()).map_err(der_err)?),
        key_enc_alg: x509_cert::spki::AlgorithmIdentifierOwned {
            oid: DH_SHA256_KDF,
            parameters: Some(der::Any::encode_from(&wrap_alg).map_err(der_err)?),
        },
        recipient_enc_keys: vec![RecipientEncryptedKey {
            rid: KeyAgreeRecipientIdentifier::IssuerAndSerialNumber(
                cms::cert::IssuerAndSerialNumber {
                    issuer: tbs.issuer().clone(),
                    serial_number: tbs.serial_number().clone(),
                },
            ),
            enc_key: der::asn1::OctetString::new(wrapped).map_err(der_err)?,
        }],
    }))
}

/// `content` encrypted to each of `recipients` (devices' certificates) as the client encrypts
/// a one-shot message: AES-256-CBC under a fresh key, one KeyAgreeRecipientInfo a
/// certificate. DER (the client reads BER, of which DER is a part).
pub fn encrypt(
    content: &[u8],
    recipients: &[x509_cert::Certificate],
) -> Result<Vec<u8>, EnvelopedError> {
    use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey};
    use cms::enveloped_data::{EncryptedContentInfo, EnvelopedData};
    let der_err = |_| EnvelopedError::Shape;
    let cek = random::<32>()?;
    let iv = random::<16>()?;
    let key = UnboundCipherKey::new(&AES_256, &cek).map_err(|_| EnvelopedError::Content)?;
    let encrypting =
        PaddedBlockEncryptingKey::cbc_pkcs7(key).map_err(|_| EnvelopedError::Content)?;
    let mut encrypted = content.to_vec();
    encrypting
        .less_safe_encrypt(
            &mut encrypted,
            EncryptionContext::Iv128(FixedLength::from(iv)),
        )
        .map_err(|_| EnvelopedError::Content)?;
    let infos = recipients
        .iter()
        .map(|c| recipient_info(c, &cek))
        .collect::<Result<Vec<_>, _>>()?;
    let enveloped = EnvelopedData {
        version: cms::content_info::CmsVersion::V2,
        originator_info: None,
        recip_infos: RecipientInfos::try_from(infos).map_err(der_err)?,
        encrypted_content: EncryptedContentInfo {
            content_type: ID_DATA,
            content_enc_alg: x509_cert::spki::AlgorithmIdentifierOwned {
                oid: ID_AES256_CBC,
                parameters: Some(
                    der::Any::encode_from(
                        &der::asn1::OctetString::new(iv.to_vec()).map_err(der_err)?,
                    )
                    .map_err(der_err)?,
                ),
            },
            encrypted_content: Some(der::asn1::OctetString::new(encrypted).map_err(der_err)?),
        },
        unprotected_attrs: None,
    };
    cms::content_info::ContentInfo {
        content_type: ID_ENVELOPED_DATA,
        content: der::Any::encode_from(&enveloped).map_err(der_err)?,
    }
    .to_der()
    .map_err(der_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::DecodePrivateKey;

    const ONESHOT: &[u8] = include_bytes!("../../tests/data/atsms-client/oneshot.der");
    const ONESHOT_CONTENT: &[u8] = include_bytes!("../../tests/data/atsms-client/oneshot.content");
    const SIGNED: &[u8] = include_bytes!("../../tests/data/atsms-client/signed.der");
    const RECIPIENT_KEY: &[u8] = include_bytes!("../../tests/data/atsms-client/recip.key.pem");

    fn recipient() -> p256::SecretKey {
        let pem = String::from_utf8(RECIPIENT_KEY.to_vec()).unwrap();
        p256::SecretKey::from_pkcs8_pem(&pem).unwrap()
    }

    #[test]
    fn the_clients_one_shot_opens_with_the_recipients_key_to_its_signed_data() {
        let content = decrypt(ONESHOT, &recipient()).unwrap();
        // A SignedData (id-signedData) whose content is the message's.
        assert_eq!(&content[4..15], &[6, 9, 42, 134, 72, 134, 247, 13, 1, 7, 2]);
        let inner = ONESHOT_CONTENT;
        assert!(content.windows(inner.len()).any(|w| w == inner));
        // A device the message is not for.
        let other = p256::SecretKey::from_slice(&[7; 32]).unwrap();
        assert_eq!(
            decrypt(ONESHOT, &other),
            Err(EnvelopedError::NotForThisDevice)
        );
    }

    #[test]
    fn a_damaged_or_foreign_structure_is_refused_without_panic() {
        let der = ONESHOT;
        assert_eq!(decrypt(SIGNED, &recipient()), Err(EnvelopedError::Shape));
        for cut in (0..der.len()).step_by(37) {
            assert!(decrypt(&der[..cut], &recipient()).is_err(), "{cut}");
        }
        for at in (0..der.len()).step_by(53) {
            let mut bad = der.to_vec();
            bad[at] ^= 0x40;
            let _ = decrypt(&bad, &recipient());
        }
    }
}
