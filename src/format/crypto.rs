//! ES256 (P-256) and ES256K (secp256k1) keys and signatures, the atproto way.
//!
//! atproto cryptography spec: 64-byte `r || s` signatures only (never DER) and low-S on both
//! curves. libsecp256k1 rejects high-S itself; aws-lc accepts it, so the check here is explicit
//! and comes first for both curves, so the two behave the same (AT-SMS envelope v1, section
//! 3.2). p256 and k256 parse, check ranges and sign; aws-lc (P-256) and libsecp256k1 verify.

use std::fmt;

use p256::ecdsa::signature::Signer;
use p256::elliptic_curve::scalar::IsHigh;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};

/// The JWS algorithms AT-SMS allows (RFC 7518 §3.4, RFC 8812 §3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// ECDSA on secp256k1 with SHA-256.
    Es256k,
}

impl Alg {
    pub fn from_jws(name: &str) -> Option<Alg> {
        match name {
            "ES256" => Some(Alg::Es256),
            "ES256K" => Some(Alg::Es256k),
            _ => None,
        }
    }

    pub fn jws_name(self) -> &'static str {
        match self {
            Alg::Es256 => "ES256",
            Alg::Es256k => "ES256K",
        }
    }

    /// The multicodec varint for the curve's compressed public key (`p256-pub`, `secp256k1-pub`).
    fn multicodec(self) -> [u8; 2] {
        match self {
            Alg::Es256 => [0x80, 0x24],
            Alg::Es256k => [0xe7, 0x01],
        }
    }

    pub fn curve_name(self) -> &'static str {
        match self {
            Alg::Es256 => "P-256",
            Alg::Es256k => "secp256k1",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.jws_name())
    }
}

/// Why a public key could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("multibase encoding is not base58btc ('z')")]
    NotBase58btc,
    #[error("invalid base58btc")]
    InvalidBase58,
    #[error("unsupported multicodec key type")]
    UnsupportedCodec,
    #[error("key is not a valid {0} point")]
    InvalidPoint(&'static str),
    #[error("Multikey is not a 33-byte compressed point")]
    NotCompressed,
    #[error("not a did:key")]
    NotDidKey,
}

/// Why a signature did not verify. Each of these makes an envelope `fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature is not 64 bytes (r||s); DER is not accepted")]
    WrongLength,
    #[error("signature r or s out of range")]
    OutOfRange,
    #[error("high-S signature (s > n/2)")]
    HighS,
    #[error("signature does not verify")]
    Invalid,
    #[error("signature is not a DER ECDSA-Sig-Value")]
    NotDer,
    #[error("signature is not on P-256")]
    NotP256,
}

/// A verification key on one of the two curves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    P256(P256Key),
    K256(K256Key),
}

/// A P-256 key, held twice: p256's form to parse and encode it, aws-lc's (the library rustls
/// already links) to verify with, six times faster than p256 0.14 here (docs/performance.md).
/// A P-256 verification is what every AT-SMS client message's X.509 floor costs.
#[derive(Clone)]
pub struct P256Key {
    key: p256::ecdsa::VerifyingKey,
    verifier: aws_lc_rs::signature::ParsedPublicKey,
}

impl fmt::Debug for P256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.key.fmt(f)
    }
}

/// The same point is the same key (the verifier is made from it).
impl PartialEq for P256Key {
    fn eq(&self, other: &P256Key) -> bool {
        self.key == other.key
    }
}

impl Eq for P256Key {}

impl P256Key {
    fn new(key: p256::ecdsa::VerifyingKey) -> Option<P256Key> {
        // Both libraries check that the point is on the curve; a disagreement refuses it.
        let verifier = aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            key.to_sec1_point(false).as_bytes(),
        )
        .ok()?;
        Some(P256Key { key, verifier })
    }

    /// Verifies `r || s` (already parsed, so in range) over SHA-256(`message`).
    fn verify(
        &self,
        message: &[u8],
        signature: &p256::ecdsa::Signature,
    ) -> Result<(), SignatureError> {
        self.verifier
            .verify_sig(message, &signature.to_bytes())
            .map_err(|_| SignatureError::Invalid)
    }
}

/// A secp256k1 key, held twice: k256's form to encode it (SEC1, multikey) and libsecp256k1's
/// (the `secp256k1` crate, Bitcoin Core's library) to verify with. libsecp256k1 verifies in half
/// the time of k256 0.14, whose verification was the largest single cost of a milter message
/// (docs/performance.md, "CPU per message"); k256 still parses, encodes and signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K256Key {
    key: k256::ecdsa::VerifyingKey,
    verifier: secp256k1::PublicKey,
}

/// libsecp256k1's context for verification: stateless once made (no randomisation is needed
/// to verify, only to sign).
static SECP256K1_VERIFY: std::sync::LazyLock<secp256k1::Secp256k1<secp256k1::VerifyOnly>> =
    std::sync::LazyLock::new(secp256k1::Secp256k1::verification_only);

impl K256Key {
    fn new(key: k256::ecdsa::VerifyingKey) -> Option<K256Key> {
        // The same point in libsecp256k1's form; both libraries check that it is on the curve,
        // so a disagreement (never seen) refuses the key rather than trusting either alone.
        let verifier =
            secp256k1::PublicKey::from_slice(key.to_sec1_point(false).as_bytes()).ok()?;
        Some(K256Key { key, verifier })
    }

    /// Verifies `r || s` (already checked to be in range and low-S) over SHA-256(`message`).
    fn verify(
        &self,
        message: &[u8],
        signature: &k256::ecdsa::Signature,
    ) -> Result<(), SignatureError> {
        use sha2::Digest;
        let sig = secp256k1::ecdsa::Signature::from_compact(&signature.to_bytes())
            .map_err(|_| SignatureError::Invalid)?;
        let digest = secp256k1::Message::from_digest(sha2::Sha256::digest(message).into());
        SECP256K1_VERIFY
            .verify_ecdsa(digest, &sig, &self.verifier)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl PublicKey {
    /// A SEC1 point, compressed (33 bytes) or not (65 bytes), on the curve of `alg`.
    pub fn from_sec1(alg: Alg, bytes: &[u8]) -> Result<PublicKey, KeyError> {
        let invalid = || KeyError::InvalidPoint(alg.curve_name());
        // SEC1 §2.3.3: 0x02/0x03 + X (compressed) or 0x04 + X + Y (uncompressed); nothing
        // else (the "hybrid" 0x06/0x07 and other tags some decoders take are refused).
        match bytes {
            [0x02 | 0x03, rest @ ..] if rest.len() == 32 => {}
            [0x04, rest @ ..] if rest.len() == 64 => {}
            _ => return Err(invalid()),
        }
        match alg {
            Alg::Es256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .ok()
                .and_then(P256Key::new)
                .map(PublicKey::P256)
                .ok_or_else(invalid),
            Alg::Es256k => k256::ecdsa::VerifyingKey::from_sec1_bytes(bytes)
                .ok()
                .and_then(K256Key::new)
                .map(PublicKey::K256)
                .ok_or_else(invalid),
        }
    }

    /// `Multikey` `publicKeyMultibase`: `z` + base58btc(multicodec varint + compressed point).
    /// Only the 33-byte compressed form (spec 5.1): any other length or tag is refused.
    pub fn from_multikey(multibase: &str) -> Result<PublicKey, KeyError> {
        let bytes = decode_base58btc(multibase)?;
        for alg in [Alg::Es256, Alg::Es256k] {
            if let Some(point) = bytes.strip_prefix(&alg.multicodec()[..]) {
                if point.len() != 33 || !matches!(point[0], 0x02 | 0x03) {
                    return Err(KeyError::NotCompressed);
                }
                return PublicKey::from_sec1(alg, point);
            }
        }
        Err(KeyError::UnsupportedCodec)
    }

    /// Legacy `EcdsaSecp256{k,r}1VerificationKey2019`: `z` + base58btc(raw SEC1 point), the
    /// curve given by the method's `type`.
    pub fn from_legacy_multibase(alg: Alg, multibase: &str) -> Result<PublicKey, KeyError> {
        PublicKey::from_sec1(alg, &decode_base58btc(multibase)?)
    }

    pub fn from_did_key(did_key: &str) -> Result<PublicKey, KeyError> {
        let multibase = did_key
            .strip_prefix("did:key:")
            .ok_or(KeyError::NotDidKey)?;
        PublicKey::from_multikey(multibase)
    }

    pub fn alg(&self) -> Alg {
        match self {
            PublicKey::P256(_) => Alg::Es256,
            PublicKey::K256(_) => Alg::Es256k,
        }
    }

    pub fn compressed_point(&self) -> Vec<u8> {
        match self {
            PublicKey::P256(k) => k.key.to_sec1_point(true).as_bytes().to_vec(),
            PublicKey::K256(k) => k.key.to_sec1_point(true).as_bytes().to_vec(),
        }
    }

    /// `0x04 || X || Y`, 65 bytes: what a device certificate fingerprint hashes (spec 5.2).
    pub fn uncompressed_point(&self) -> Vec<u8> {
        match self {
            PublicKey::P256(k) => k.key.to_sec1_point(false).as_bytes().to_vec(),
            PublicKey::K256(k) => k.key.to_sec1_point(false).as_bytes().to_vec(),
        }
    }

    pub fn to_multikey(&self) -> String {
        let mut bytes = self.alg().multicodec().to_vec();
        bytes.extend_from_slice(&self.compressed_point());
        format!("z{}", bs58::encode(bytes).into_string())
    }

    pub fn to_did_key(&self) -> String {
        format!("did:key:{}", self.to_multikey())
    }

    /// Verifies a compact 64-byte signature over `message` (hashed here with SHA-256).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        if signature.len() != 64 {
            return Err(SignatureError::WrongLength);
        }
        match self {
            PublicKey::P256(key) => {
                let sig = p256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| SignatureError::OutOfRange)?;
                if bool::from(sig.s().is_high()) {
                    return Err(SignatureError::HighS);
                }
                key.verify(message, &sig)
            }
            PublicKey::K256(key) => {
                let sig = k256::ecdsa::Signature::from_slice(signature)
                    .map_err(|_| SignatureError::OutOfRange)?;
                if bool::from(sig.s().is_high()) {
                    return Err(SignatureError::HighS);
                }
                key.verify(message, &sig)
            }
        }
    }
}

impl PublicKey {
    /// Verifies a DER `ECDSA-Sig-Value` over `message` (hashed here with SHA-256) by a P-256
    /// key, as CMS carries it (RFC 5753 §2.1.1 with RFC 5652 §5.6). High-S is accepted: CMS
    /// and X.509 allow both forms and the AT-SMS client does not normalise; low-S is a rule
    /// of our envelope format (`verify`), not of CMS.
    pub fn verify_der(&self, message: &[u8], der: &[u8]) -> Result<(), SignatureError> {
        let PublicKey::P256(key) = self else {
            return Err(SignatureError::NotP256);
        };
        let sig = p256::ecdsa::Signature::from_der(der).map_err(|_| SignatureError::NotDer)?;
        key.verify(message, &sig.normalize_s())
    }
}

impl PublicKey {
    /// Verifies a compact 64-byte ES256 signature (JWS, RFC 7518 §3.4) by a P-256 key,
    /// accepting high-S: the AT-SMS client signs its device tokens through WebCrypto, which
    /// does not normalise S. Only for those tokens; our envelope format keeps `verify`'s rule.
    pub fn verify_p256_any_s(
        &self,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let PublicKey::P256(key) = self else {
            return Err(SignatureError::NotP256);
        };
        if signature.len() != 64 {
            return Err(SignatureError::WrongLength);
        }
        let sig = p256::ecdsa::Signature::from_slice(signature)
            .map_err(|_| SignatureError::OutOfRange)?;
        key.verify(message, &sig.normalize_s())
    }
}

fn decode_base58btc(multibase: &str) -> Result<Vec<u8>, KeyError> {
    let encoded = multibase.strip_prefix('z').ok_or(KeyError::NotBase58btc)?;
    // A key is at most 67 bytes; refuse long strings before decoding (base58 is quadratic).
    if encoded.len() > 128 {
        return Err(KeyError::InvalidBase58);
    }
    bs58::decode(encoded)
        .into_vec()
        .map_err(|_| KeyError::InvalidBase58)
}

/// Why a private key could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error("not a PKCS#8 P-256 or secp256k1 private key in PEM")]
    Unsupported,
    #[error("the system random number generator failed: {0}")]
    Random(String),
}

/// A private key, for `sign` and `keygen`.
#[derive(Clone)]
pub enum SigningKey {
    P256(p256::ecdsa::SigningKey),
    K256(k256::ecdsa::SigningKey),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "SigningKey({})", self.alg())
    }
}

impl SigningKey {
    pub fn from_pkcs8_pem(pem: &str) -> Result<SigningKey, SigningKeyError> {
        // Editors and `echo` leave blank lines or CRLF around a PEM block; the parser is strict.
        let pem = format!("{}\n", pem.trim().replace("\r\n", "\n"));
        let pem = pem.as_str();
        if let Ok(key) = p256::ecdsa::SigningKey::from_pkcs8_pem(pem) {
            return Ok(SigningKey::P256(key));
        }
        k256::ecdsa::SigningKey::from_pkcs8_pem(pem)
            .map(SigningKey::K256)
            .map_err(|_| SigningKeyError::Unsupported)
    }

    /// A fresh key from the operating system's random number generator.
    pub fn generate(alg: Alg) -> Result<SigningKey, SigningKeyError> {
        // Rejection sampling: a 32-byte string is a valid scalar unless it is zero or >= n,
        // which happens with negligible probability; retry rather than reduce (no bias).
        loop {
            let mut secret = [0u8; 32];
            getrandom::fill(&mut secret).map_err(|e| SigningKeyError::Random(e.to_string()))?;
            let key = match alg {
                Alg::Es256 => p256::ecdsa::SigningKey::from_slice(&secret).map(SigningKey::P256),
                Alg::Es256k => k256::ecdsa::SigningKey::from_slice(&secret).map(SigningKey::K256),
            };
            if let Ok(key) = key {
                return Ok(key);
            }
        }
    }

    /// A key from its 32-byte big-endian secret scalar.
    pub fn from_secret_bytes(alg: Alg, secret: &[u8]) -> Result<SigningKey, SigningKeyError> {
        match alg {
            Alg::Es256 => p256::ecdsa::SigningKey::from_slice(secret).map(SigningKey::P256),
            Alg::Es256k => k256::ecdsa::SigningKey::from_slice(secret).map(SigningKey::K256),
        }
        .map_err(|_| SigningKeyError::Unsupported)
    }

    pub fn to_pkcs8_pem(&self) -> String {
        let pem = match self {
            SigningKey::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
            SigningKey::K256(k) => k.to_pkcs8_pem(LineEnding::LF),
        };
        // Encoding a valid in-memory key cannot fail.
        pem.map(|p| p.to_string()).unwrap_or_default()
    }

    pub fn alg(&self) -> Alg {
        match self {
            SigningKey::P256(_) => Alg::Es256,
            SigningKey::K256(_) => Alg::Es256k,
        }
    }

    pub fn public_key(&self) -> PublicKey {
        match self {
            SigningKey::P256(k) => PublicKey::P256(
                // A private key's public point is on the curve: aws-lc cannot refuse it.
                P256Key::new(*k.verifying_key()).expect("a signing key's point is on the curve"),
            ),
            SigningKey::K256(k) => PublicKey::K256(
                // A private key's public point is on the curve: libsecp256k1 cannot refuse it.
                K256Key::new(*k.verifying_key()).expect("a signing key's point is on the curve"),
            ),
        }
    }

    /// A deterministic (RFC 6979) compact signature, normalised to low-S as atproto requires.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        match self {
            SigningKey::P256(k) => {
                let sig: p256::ecdsa::Signature = k.sign(message);
                out.copy_from_slice(&sig.normalize_s().to_bytes());
            }
            SigningKey::K256(k) => {
                let sig: k256::ecdsa::Signature = k.sign(message);
                out.copy_from_slice(&sig.normalize_s().to_bytes());
            }
        }
        out
    }
}

/// The other valid signature of the same message: `(r, n − s)` (ECDSA's malleability). For
/// tests that high-S signatures are refused; the curve orders are SEC 2's.
#[doc(hidden)]
pub fn malleate(alg: Alg, signature: &[u8]) -> Vec<u8> {
    const P256_N: &str = "ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551";
    const K256_N: &str = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141";
    let order = match alg {
        Alg::Es256 => P256_N,
        Alg::Es256k => K256_N,
    };
    let n: Vec<u8> = (0..64)
        .step_by(2)
        .map(|i| u8::from_str_radix(&order[i..i + 2], 16).unwrap_or(0))
        .collect();
    let mut out = signature.to_vec();
    if out.len() != 64 {
        return out;
    }
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let d = i16::from(n[i]) - i16::from(signature[32 + i]) - borrow;
        borrow = i16::from(d < 0);
        out[32 + i] = (d + 256 * borrow) as u8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_both_curves() {
        for alg in [Alg::Es256, Alg::Es256k] {
            let key = SigningKey::generate(alg).unwrap();
            let public = key.public_key();
            let sig = key.sign(b"hello");
            assert_eq!(public.verify(b"hello", &sig), Ok(()));
            assert_eq!(public.verify(b"hellO", &sig), Err(SignatureError::Invalid));
            assert_eq!(
                public.verify(b"hello", &sig[..63]),
                Err(SignatureError::WrongLength)
            );
            assert_eq!(
                PublicKey::from_multikey(&public.to_multikey()).unwrap(),
                public
            );
            let reloaded = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem()).unwrap();
            assert_eq!(reloaded.public_key(), public);
            let untidy = format!("\n{}\n\n", key.to_pkcs8_pem().replace('\n', "\r\n"));
            assert_eq!(
                SigningKey::from_pkcs8_pem(&untidy).unwrap().public_key(),
                public
            );
        }
    }

    /// The verifying library and the parsing one (`reference`: does this key accept these
    /// `r || s` for this message?) agree on every outcome: a valid signature, the message
    /// altered, the signature altered, another key. `also` adds a curve's own checks.
    fn assert_libraries_agree(
        alg: Alg,
        reference: impl Fn(&PublicKey, &[u8], &[u8]) -> bool,
        also: impl Fn(&PublicKey, &[u8], &[u8], &[u8; 64]),
    ) {
        let other = SigningKey::generate(alg).unwrap().public_key();
        for i in 0..64u32 {
            let key = SigningKey::generate(alg).unwrap();
            let public = key.public_key();
            let message = format!("message {i}").into_bytes();
            let mut sig = key.sign(&message);
            let mut altered = message.clone();
            altered[i as usize % message.len()] ^= 1;
            assert!(reference(&public, &message, &sig));
            assert_eq!(public.verify(&message, &sig), Ok(()));
            assert!(!reference(&public, &altered, &sig));
            assert_eq!(public.verify(&altered, &sig), Err(SignatureError::Invalid));
            assert_eq!(other.verify(&message, &sig), Err(SignatureError::Invalid));
            also(&public, &message, &altered, &sig);
            sig[(i as usize * 7) % 64] ^= 0x10;
            assert!(!reference(&public, &message, &sig));
            assert!(public.verify(&message, &sig).is_err());
        }
    }

    #[test]
    fn libsecp256k1_and_k256_agree() {
        use k256::ecdsa::signature::Verifier as _;
        let by_k256 = |public: &PublicKey, message: &[u8], sig: &[u8]| {
            let PublicKey::K256(k) = public else {
                unreachable!()
            };
            k256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.key.verify(message, &s).is_ok())
        };
        assert_libraries_agree(Alg::Es256k, by_k256, |_, _, _, _| {});
    }

    /// For P-256 also CMS's DER signatures, in both S forms.
    #[test]
    fn aws_lc_and_p256_agree() {
        use p256::ecdsa::signature::Verifier as _;
        let by_p256 = |public: &PublicKey, message: &[u8], sig: &[u8]| {
            let PublicKey::P256(k) = public else {
                unreachable!()
            };
            p256::ecdsa::Signature::from_slice(sig).is_ok_and(|s| k.key.verify(message, &s).is_ok())
        };
        let der = |public: &PublicKey, message: &[u8], altered: &[u8], sig: &[u8; 64]| {
            let low = p256::ecdsa::Signature::from_slice(sig).unwrap();
            let high = p256::ecdsa::Signature::from_slice(&malleate(Alg::Es256, sig)).unwrap();
            for der in [low.to_der(), high.to_der()] {
                assert_eq!(public.verify_der(message, der.as_bytes()), Ok(()));
                assert_eq!(
                    public.verify_der(altered, der.as_bytes()),
                    Err(SignatureError::Invalid)
                );
            }
        };
        assert_libraries_agree(Alg::Es256, by_p256, der);
    }

    #[test]
    fn zero_scalars_are_out_of_range() {
        let key = SigningKey::generate(Alg::Es256).unwrap().public_key();
        assert_eq!(
            key.verify(b"x", &[0u8; 64]),
            Err(SignatureError::OutOfRange)
        );
    }

    #[test]
    fn multikey_takes_only_compressed_points() {
        for alg in [Alg::Es256, Alg::Es256k] {
            let public = SigningKey::generate(alg).unwrap().public_key();
            let multikey = |point: &[u8]| {
                let mut bytes = alg.multicodec().to_vec();
                bytes.extend_from_slice(point);
                format!("z{}", bs58::encode(bytes).into_string())
            };
            let uncompressed = public.uncompressed_point();
            assert_eq!(
                PublicKey::from_multikey(&multikey(&uncompressed)),
                Err(KeyError::NotCompressed),
                "65-byte point"
            );
            // The "compact" tag 0x05 some decoders read as a negated point.
            let mut compact = public.compressed_point();
            compact[0] = 0x05;
            assert_eq!(
                PublicKey::from_multikey(&multikey(&compact)),
                Err(KeyError::NotCompressed)
            );
            assert_eq!(
                PublicKey::from_multikey(&multikey(&public.compressed_point())),
                Ok(public.clone())
            );
            compact[0] = 0x07;
            assert!(PublicKey::from_sec1(alg, &compact).is_err());
        }
    }
}
