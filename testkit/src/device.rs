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

/// The mail the AT-SMS client's SMTP form sends to `to` (its inbound-delivery spec §4): one
/// base64 `application/atsms-envelope` part, lines of 76 (no dot-stuffing needed).
pub fn client_mail(to: &str, envelope: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(envelope);
    let lines: Vec<&str> = encoded
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "From: <x@client.example>\r\nTo: <{to}>\r\nSubject: ATSMS\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: application/atsms-envelope\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n--b1--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}
