//! A device this service holds for a sending identity (`[[device]]`, made by `device new`):
//! its key and certificate, checked when loaded as the client's receive path will check the
//! signer (P-256, the fingerprint, the subjectAltName naming its `at.atsms.x509` record, the
//! DID), so a message is never signed by a device no recipient could verify.

use std::path::Path;

use crate::atproto::identity::device_cert::DeviceCertificate;

/// The held device of one DID.
pub struct HeldDevice {
    pub did: String,
    pub fingerprint: String,
    pub certificate: x509_cert::Certificate,
    pub key: p256::ecdsa::SigningKey,
    /// Unix seconds the certificate expires.
    pub not_after: i64,
}

impl HeldDevice {
    /// Loads `dir/device.key` (refused when others may read it) and `dir/device.crt`.
    pub fn load(did: &str, dir: &Path) -> Result<HeldDevice, String> {
        use der::DecodePem;
        use der::Encode;
        let where_ = |what: &str| format!("device {did} ({}): {what}", dir.display());
        let key = crate::atproto::device::read_key(dir).map_err(|e| where_(&e))?;
        let crt = std::fs::read(dir.join("device.crt"))
            .map_err(|e| where_(&format!("device.crt: {e}")))?;
        let certificate = x509_cert::Certificate::from_pem(&crt)
            .map_err(|e| where_(&format!("device.crt is not a PEM certificate ({e})")))?;
        let fingerprint =
            crate::atproto::device::fingerprint(&p256::PublicKey::from(key.verifying_key()));
        let der = certificate
            .to_der()
            .map_err(|e| where_(&format!("device.crt: {e}")))?;
        let kid = format!(
            "at://{did}/{}/{fingerprint}",
            crate::format::envelope::token::DEVICE_CERT_COLLECTION
        );
        let checked = DeviceCertificate::parse_der(&der, &kid, &fingerprint).map_err(|e| {
            where_(&format!(
                "device.crt is not this key's certificate for {did} ({e})"
            ))
        })?;
        Ok(HeldDevice {
            did: did.to_string(),
            fingerprint,
            certificate,
            key,
            not_after: checked.not_after,
        })
    }

    /// As `format::one_shot` signs with it.
    pub fn sender(&self) -> crate::format::one_shot::Sender<'_> {
        crate::format::one_shot::Sender {
            did: &self.did,
            certificate: &self.certificate,
            key: &self.key,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(dir.join(name), text).unwrap();
        std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_device_loads_only_with_its_own_certificate_for_its_did_and_a_private_key() {
        const DID: &str = "did:plc:ssssssssssssssssssssssss";
        let made = crate::atproto::device::new_device(DID, 30, 1_765_000_000).unwrap();
        let other = crate::atproto::device::new_device(DID, 30, 1_765_000_000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "device.key", &made.key_pem, 0o600);
        write(dir.path(), "device.crt", &made.cert_pem, 0o644);
        let held = HeldDevice::load(DID, dir.path()).unwrap();
        assert_eq!(held.fingerprint, made.fingerprint);
        // Another DID's name for it.
        let e = HeldDevice::load("did:plc:tttttttttttttttttttttttt", dir.path())
            .err()
            .unwrap();
        assert!(e.contains("not this key's certificate"), "{e}");
        // Another key's certificate.
        write(dir.path(), "device.crt", &other.cert_pem, 0o644);
        assert!(HeldDevice::load(DID, dir.path()).is_err());
        // A key others may read.
        write(dir.path(), "device.crt", &made.cert_pem, 0o644);
        write(dir.path(), "device.key", &made.key_pem, 0o644);
        let e = HeldDevice::load(DID, dir.path()).err().unwrap();
        assert!(e.contains("readable by others"), "{e}");
    }
}
