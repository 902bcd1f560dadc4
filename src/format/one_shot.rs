//! A one-shot AT-SMS message made for every recipient device (N. Gerakines' proposal: the
//! user's server signs once and seals a copy for each device): the v2 content
//! (`format::atsms_content`, the recipients extension binding the whole list, which every
//! recipient therefore sees), signed once by the sender's held device (`format::signed`),
//! then for each device an EnvelopedData to its certificate alone (`format::enveloped`; the
//! client puts every device of every recipient in one, which overflows the 64 KiB bucket past
//! about 200) sealed to its prekey (`format::sealed`). Pure: what to send where is the
//! caller's.

use crate::format::atsms_content;
use crate::format::enveloped;
use crate::format::sealed;
use crate::format::signed;

/// The sending device this service holds.
pub struct Sender<'a> {
    pub did: &'a str,
    pub certificate: &'a x509_cert::Certificate,
    pub key: &'a p256::ecdsa::SigningKey,
}

/// One recipient device: its certificate and checked prekey.
pub struct Device<'a> {
    pub certificate: &'a x509_cert::Certificate,
    pub prekey: &'a [u8; 32],
}

/// Why no envelope was made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    #[error("the message cannot be signed: {0}")]
    Sign(String),
    #[error("the device's certificate: {0}")]
    Encrypt(#[from] enveloped::EnvelopedError),
    #[error("{0}")]
    Seal(#[from] sealed::SealedError),
}

/// The signed message: the content and its SignedData (one signature for every copy).
pub fn sign_text(
    sender: &Sender<'_>,
    recipients: &[String],
    text: &str,
    created_at_ms: u64,
) -> Result<Vec<u8>, ComposeError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| ComposeError::Sign(e.to_string()))?;
    let content = atsms_content::encode_text(sender.did, recipients, text, created_at_ms, salt);
    signed::sign(&content, sender.certificate, sender.key)
        .map_err(|e| ComposeError::Sign(e.to_string()))
}

/// The signed message sealed for one device.
pub fn seal_for(signed_der: &[u8], device: &Device<'_>) -> Result<Vec<u8>, ComposeError> {
    let enveloped = enveloped::encrypt(signed_der, std::slice::from_ref(device.certificate))?;
    Ok(sealed::seal(
        device.prekey,
        sealed::CONTENT_CMS,
        &enveloped,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_opens_its_own_copy_of_the_one_signed_message() {
        use der::DecodePem;
        use p256::pkcs8::DecodePrivateKey;
        let made = |did: &str| {
            let d = crate::atproto::device::new_device(did, 30, 1_765_000_000).unwrap();
            (
                x509_cert::Certificate::from_pem(&d.cert_pem).unwrap(),
                p256::ecdsa::SigningKey::from_pkcs8_pem(&d.key_pem).unwrap(),
            )
        };
        let (sender_cert, sender_key) = made("did:plc:ssssssssssssssssssssssss");
        let sender = Sender {
            did: "did:plc:ssssssssssssssssssssssss",
            certificate: &sender_cert,
            key: &sender_key,
        };
        let recipients = vec!["did:plc:aaaaaaaaaaaaaaaaaaaaaaaa".to_string()];
        let signed_der = sign_text(&sender, &recipients, "one signature", 1).unwrap();
        for secret in [[1u8; 32], [2u8; 32]] {
            let (cert, key) = made(&recipients[0]);
            let prekey = sealed::public_key(&secret).unwrap();
            let copy = seal_for(
                &signed_der,
                &Device {
                    certificate: &cert,
                    prekey: &prekey,
                },
            )
            .unwrap();
            let (kind, body) = sealed::open(&copy, &[secret]).unwrap();
            assert_eq!(kind, sealed::CONTENT_CMS);
            let key = p256::SecretKey::from(key.as_nonzero_scalar());
            assert_eq!(enveloped::decrypt(&body, &key).unwrap(), signed_der);
            // Another device's prekey does not open it.
            assert!(sealed::open(&copy, &[[9; 32]]).is_err());
        }
    }
}
