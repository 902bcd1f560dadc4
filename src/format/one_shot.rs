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
