//! AT-SMS devices made the way the client makes them (its identity-devices spec §2): a P-256
//! key and a self-signed certificate, CN = the DID, SAN URI `at://<did>/at.atsms.x509/<fp>`,
//! `fp` the SHA-256 of the raw (uncompressed) public key. Made by OpenSSL, an implementation
//! independent of ours, as tests/data/atsms-client/make-smime.sh makes its one.

use std::path::Path;
use std::process::Command;

use sha2::{Digest, Sha256};

/// A device: its private key (PKCS#8 PEM), certificate (PEM) and fingerprint.
#[derive(Clone)]
pub struct Device {
    pub key_pem: String,
    pub cert_pem: String,
    pub fingerprint: String,
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is not installed: run scripts/test");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A new device of `did`.
pub fn make(did: &str) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path();
    openssl(
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.pem",
        ],
        at,
    );
    openssl(
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "ec.pem", "-out", "key.pem",
        ],
        at,
    );
    let spki = openssl(
        &["pkey", "-in", "key.pem", "-pubout", "-outform", "DER"],
        at,
    );
    let point = &spki[spki.len() - 65..];
    let fingerprint: String = Sha256::digest(point)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    openssl(
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            "key.pem",
            "-days",
            "365",
            "-subj",
            &format!("/CN={did}"),
            "-addext",
            &format!("subjectAltName=URI:at://{did}/at.atsms.x509/{fingerprint}"),
            "-addext",
            "keyUsage=digitalSignature",
            "-addext",
            "basicConstraints=CA:FALSE",
            "-out",
            "crt.pem",
        ],
        at,
    );
    Device {
        key_pem: std::fs::read_to_string(at.join("key.pem")).unwrap(),
        cert_pem: std::fs::read_to_string(at.join("crt.pem")).unwrap(),
        fingerprint,
    }
}
