//! Devices this service holds for a sending identity, made as the AT-SMS client makes its own
//! (its `p256-endpoint-certificate.ts`, `dcgka/records.ts`; spec/identity-devices.md §2–§4; what
//! this project read of them: docs/research/atsms-client-sending.md §1–§2):
//!
//! - a P-256 key and its self-signed certificate: subject and issuer `CN=<did>`, a random
//!   positive serial of 16 bytes, Basic Constraints CA:FALSE and Key Usage digitalSignature +
//!   keyAgreement (both critical), Extended Key Usage serverAuth, clientAuth, emailProtection,
//!   Subject Alternative Name the URI `at://<did>/at.atsms.x509/<fingerprint>`; the
//!   fingerprint the SHA-256 of the raw public point (`04‖X‖Y`), the record key;
//! - the `at.atsms.x509` record that publishes it;
//! - a prekey bundle (`at.atsms.prekey`, same record key): an X25519 key the sealed envelopes
//!   are sealed to (`format::sealed`), an Ed25519 key the client's conversations would sign
//!   with (one-shot messages do not: its secret is not kept), the dates, and `bundleSig`, an
//!   ECDSA P-256 signature by the device key over the CBOR array `[signedPrekey, signingPk,
//!   createdAt, expiresAt]`, 64 bytes `r‖s`.

use std::time::Duration;

use base64::Engine;
use der::EncodePem;
use p256::ecdsa::signature::Signer;
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use x509_cert::builder::profile::BuilderProfile;
use x509_cert::builder::{Builder, CertificateBuilder};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages, SubjectAltName,
};
use x509_cert::ext::{Extension, ToExtension};
use x509_cert::name::Name;

/// How long a prekey bundle is good for (the client's `prekeyTtlMs`).
pub const PREKEY_TTL: Duration = Duration::from_secs(7 * 86_400);

/// serverAuth, clientAuth, emailProtection (RFC 5280 §4.2.1.12).
const EKU: [der::asn1::ObjectIdentifier; 3] = [
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.1"),
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.2"),
    der::asn1::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.4"),
];

/// A device made for `did`.
pub struct NewDevice {
    /// PKCS#8 PEM.
    pub key_pem: String,
    pub cert_pem: String,
    pub fingerprint: String,
    /// The `at.atsms.x509` record, as `com.atproto.repo.putRecord` takes it.
    pub record: Value,
}

/// A prekey made for a device.
pub struct NewPrekey {
    /// The X25519 secret, PKCS#8 PEM (RFC 8410).
    pub secret_pem: String,
    pub created_at: String,
    /// The `at.atsms.prekey` record.
    pub record: Value,
}

/// A device's key, `dir/device.key` (PKCS#8 P-256 PEM), refused when others may read it
/// (`infra::secret`): the one reading of it, for `send`, `open` and `device rotate`.
pub fn read_key(dir: &std::path::Path) -> Result<p256::ecdsa::SigningKey, String> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = String::from_utf8(crate::infra::secret::read(&dir.join("device.key"))?)
        .map_err(|_| "device.key is not PEM".to_string())?;
    p256::ecdsa::SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| format!("device.key is not a PKCS#8 P-256 key ({e})"))
}

/// The fingerprint of a device key: lower-case hex SHA-256 of the raw public point.
pub fn fingerprint(key: &p256::PublicKey) -> String {
    let point = key.to_sec1_bytes();
    crate::format::hex::hex(&Sha256::digest(&point))
}

/// ISO 8601 with milliseconds and `Z`, as JavaScript's `toISOString` writes it.
pub fn iso_time(unix_millis: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_millis) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The device certificate's profile: self-signed, the extensions the client writes.
struct DeviceProfile {
    subject: Name,
    uri: String,
}

impl BuilderProfile for DeviceProfile {
    fn get_issuer(&self, subject: &Name) -> Name {
        subject.clone()
    }

    fn get_subject(&self) -> Name {
        self.subject.clone()
    }

    fn build_extensions(
        &self,
        _spk: x509_cert::spki::SubjectPublicKeyInfoRef<'_>,
        _issuer_spk: x509_cert::spki::SubjectPublicKeyInfoRef<'_>,
        tbs: &x509_cert::TbsCertificate,
    ) -> x509_cert::builder::Result<Vec<Extension>> {
        let subject = tbs.subject();
        let none = Vec::new();
        let uri = der::asn1::Ia5String::new(&self.uri)?;
        Ok(vec![
            BasicConstraints {
                ca: false,
                path_len_constraint: None,
            }
            .to_extension(subject, &none)?,
            KeyUsage(KeyUsages::DigitalSignature | KeyUsages::KeyAgreement)
                .to_extension(subject, &none)?,
            ExtendedKeyUsage(EKU.to_vec()).to_extension(subject, &none)?,
            SubjectAltName(vec![GeneralName::UniformResourceIdentifier(uri)])
                .to_extension(subject, &none)?,
        ])
    }
}

/// A new device for `did`, its certificate good for `days` from `now` (Unix seconds).
pub fn new_device(did: &str, days: u32, now: i64) -> Result<NewDevice, String> {
    let key = loop {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
        if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&bytes) {
            break key;
        }
    };
    let public = p256::PublicKey::from(key.verifying_key());
    let fp = fingerprint(&public);
    let subject: Name = format!("CN={did}")
        .parse()
        .map_err(|e| format!("CN={did}: {e}"))?;
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| e.to_string())?;
    serial[0] &= 0x7f;
    serial[0] |= 0x01; // positive, and no leading zero byte to strip
    let not_before =
        der::asn1::GeneralizedTime::from_unix_duration(Duration::from_secs(now.max(0) as u64))
            .map_err(|e| e.to_string())?;
    let not_after = der::asn1::GeneralizedTime::from_unix_duration(Duration::from_secs(
        now.max(0) as u64 + u64::from(days) * 86_400,
    ))
    .map_err(|e| e.to_string())?;
    let validity = x509_cert::time::Validity::new(not_before.into(), not_after.into());
    let spki =
        x509_cert::spki::SubjectPublicKeyInfoOwned::from_key(&public).map_err(|e| e.to_string())?;
    let profile = DeviceProfile {
        subject,
        uri: format!("at://{did}/at.atsms.x509/{fp}"),
    };
    let serial_number =
        x509_cert::serial_number::SerialNumber::new(&serial).map_err(|e| e.to_string())?;
    let builder = CertificateBuilder::new(profile, serial_number, validity, spki)
        .map_err(|e| e.to_string())?;
    let certificate = builder
        .build::<_, p256::ecdsa::DerSignature>(&key)
        .map_err(|e| e.to_string())?;
    let cert_pem = certificate
        .to_pem(LineEnding::LF)
        .map_err(|e| e.to_string())?;
    let key_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| e.to_string())?
        .to_string();
    let serial_hex: String = crate::format::hex::hex(&serial);
    let record = json!({
        "$type": "at.atsms.x509",
        "certificate": cert_pem,
        "serialNumber": serial_hex,
        "validUntil": iso_time((now + i64::from(days) * 86_400) * 1000),
        "createdAt": iso_time(now * 1000),
    });
    Ok(NewDevice {
        key_pem,
        cert_pem,
        fingerprint: fp,
        record,
    })
}

/// The PKCS#8 (RFC 8410) of an X25519 secret.
fn x25519_pkcs8(secret: &[u8; 32]) -> String {
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x6e, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(secret);
    der::pem::encode_string("PRIVATE KEY", der::pem::LineEnding::LF, &der).unwrap_or_default()
}

/// The bytes `bundleSig` signs: the CBOR array `[signedPrekey, signingPk, createdAt,
/// expiresAt]`.
pub fn bundle_input(
    prekey: &[u8; 32],
    signing: &[u8; 32],
    created: &str,
    expires: &str,
) -> Vec<u8> {
    let mut out = vec![0x84];
    for bytes in [&prekey[..], &signing[..]] {
        crate::format::sealed::write_head(&mut out, 2, bytes.len() as u64);
        out.extend_from_slice(bytes);
    }
    for text in [created, expires] {
        crate::format::sealed::write_head(&mut out, 3, text.len() as u64);
        out.extend_from_slice(text.as_bytes());
    }
    out
}

/// A new prekey bundle for the device whose key is `device_key`, good for `PREKEY_TTL` from
/// `now_millis`.
pub fn new_prekey(
    device_key: &p256::ecdsa::SigningKey,
    now_millis: i64,
) -> Result<NewPrekey, String> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| e.to_string())?;
    let prekey = crate::format::sealed::public_key(&secret).map_err(|e| e.to_string())?;
    let signing = {
        use aws_lc_rs::signature::KeyPair;
        let pair = aws_lc_rs::signature::Ed25519KeyPair::generate().map_err(|e| e.to_string())?;
        <[u8; 32]>::try_from(pair.public_key().as_ref()).map_err(|e| e.to_string())?
    };
    let created = iso_time(now_millis);
    let expires = iso_time(now_millis + PREKEY_TTL.as_millis() as i64);
    let signature: p256::ecdsa::Signature =
        device_key.sign(&bundle_input(&prekey, &signing, &created, &expires));
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD_NO_PAD.encode(b);
    let record = json!({
        "$type": "at.atsms.prekey",
        "signedPrekey": {"$bytes": b64(&prekey)},
        "signingPk": {"$bytes": b64(&signing)},
        "bundleSig": {"$bytes": b64(&signature.to_bytes())},
        "createdAt": created,
        "expiresAt": expires,
    });
    Ok(NewPrekey {
        secret_pem: x25519_pkcs8(&secret),
        created_at: created,
        record,
    })
}

/// A device's prekey as its `at.atsms.prekey` record publishes it, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prekey {
    /// The X25519 key envelopes to the device are sealed to.
    pub key: [u8; 32],
    /// When it stops being good (Unix seconds).
    pub expires_at: i64,
}

/// Why a prekey record does not count (the client then treats the device as having none).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrekeyError {
    #[error("not an at.atsms.prekey record of the client's shape")]
    Shape,
    #[error("bundleSig does not verify with the device's certificate")]
    Signature,
    #[error("expired")]
    Expired,
}

/// A `{"$bytes": base64}` value (padded or not) of exactly `N` bytes.
fn record_bytes<const N: usize>(value: &Value) -> Option<[u8; N]> {
    let text = value.get("$bytes")?.as_str()?;
    let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()?;
    <[u8; N]>::try_from(decoded.as_slice()).ok()
}

/// Unix seconds of an RFC 3339 time.
fn unix_time(text: &str) -> Option<i64> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Checks a prekey record (its `value`) as the client's `verifyPrekeyRecord` does: the shape,
/// `bundleSig` by the key of the device's certificate (`device_der`) over the CBOR array of the
/// record's own values — ECDSA P-256 with SHA-256, `r‖s`, high-S accepted as WebCrypto and noble
/// sign — and not expired at `now`.
pub fn verify_prekey(value: &Value, device_der: &[u8], now: i64) -> Result<Prekey, PrekeyError> {
    use der::Decode;
    if value.get("$type").and_then(Value::as_str) != Some("at.atsms.prekey") {
        return Err(PrekeyError::Shape);
    }
    let shape = || -> Option<_> {
        Some((
            record_bytes::<32>(value.get("signedPrekey")?)?,
            record_bytes::<32>(value.get("signingPk")?)?,
            record_bytes::<64>(value.get("bundleSig")?)?,
            value.get("createdAt")?.as_str()?,
            value.get("expiresAt")?.as_str()?,
        ))
    };
    let (prekey, signing, signature, created, expires) = shape().ok_or(PrekeyError::Shape)?;
    let expires_at = unix_time(expires).ok_or(PrekeyError::Shape)?;
    let cert = x509_cert::Certificate::from_der(device_der).map_err(|_| PrekeyError::Shape)?;
    let point = cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes();
    let key = crate::format::crypto::PublicKey::from_sec1(crate::format::crypto::Alg::Es256, point)
        .map_err(|_| PrekeyError::Shape)?;
    key.verify_p256_any_s(
        &bundle_input(&prekey, &signing, created, expires),
        &signature,
    )
    .map_err(|_| PrekeyError::Signature)?;
    if expires_at <= now {
        return Err(PrekeyError::Expired);
    }
    Ok(Prekey {
        key: prekey,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::{DecodePem, Encode};
    use p256::pkcs8::DecodePrivateKey;

    fn device() -> (NewDevice, p256::ecdsa::SigningKey, Vec<u8>) {
        let made = new_device("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa", 30, 1_765_000_000).unwrap();
        let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&made.key_pem).unwrap();
        let der = x509_cert::Certificate::from_pem(&made.cert_pem)
            .unwrap()
            .to_der()
            .unwrap();
        (made, key, der)
    }

    #[test]
    fn a_bundle_made_here_verifies_with_its_device_and_no_other() {
        let (_, key, der) = device();
        let now_ms = 1_765_000_000_000;
        let made = new_prekey(&key, now_ms).unwrap();
        let prekey = verify_prekey(&made.record, &der, now_ms / 1000).unwrap();
        assert_eq!(
            prekey.expires_at,
            now_ms / 1000 + PREKEY_TTL.as_secs() as i64
        );
        // Expired, at its end.
        assert_eq!(
            verify_prekey(&made.record, &der, prekey.expires_at),
            Err(PrekeyError::Expired)
        );
        // Another device's certificate, a changed date, a missing `$bytes`.
        let (_, _, other) = device();
        assert_eq!(
            verify_prekey(&made.record, &other, 0),
            Err(PrekeyError::Signature)
        );
        let mut changed = made.record.clone();
        changed["expiresAt"] = json!("2099-01-01T00:00:00.000Z");
        assert_eq!(
            verify_prekey(&changed, &der, 0),
            Err(PrekeyError::Signature)
        );
        let mut bare = made.record.clone();
        bare["signedPrekey"] = json!("AAAA");
        assert_eq!(verify_prekey(&bare, &der, 0), Err(PrekeyError::Shape));
    }

    #[test]
    fn a_high_s_bundle_signature_is_accepted_as_the_client_makes_them() {
        let (_, key, der) = device();
        let made = new_prekey(&key, 1_765_000_000_000).unwrap();
        let mut record = made.record.clone();
        let sig = record_bytes::<64>(&record["bundleSig"]).unwrap();
        let flipped = crate::format::crypto::malleate(crate::format::crypto::Alg::Es256, &sig);
        record["bundleSig"] =
            json!({"$bytes": base64::engine::general_purpose::STANDARD.encode(flipped)});
        assert!(verify_prekey(&record, &der, 1_765_000_000).is_ok());
    }
}
