//! HPKE (RFC 9180) base mode for the one suite AT-SMS seals with: DHKEM(X25519, HKDF-SHA256)
//! (0x0020), HKDF-SHA256 (0x0001), ChaCha20-Poly1305 (0x0003), single shot (sequence 0).
//!
//! Hand-written on aws-lc-rs's X25519, HMAC and AEAD, rather than the `hpke` crate's, for one
//! reason: speed. The crate's X25519 (curve25519-dalek) costs 122 µs a seal on this machine
//! against 33 µs for aws-lc's (already linked for TLS and ES256), and a sender seals once per
//! recipient device (issue 34's goal: 150 µs of sealing a device, the CMS layer included).
//! Held to RFC 9180's test vector (A.2.1) and, in tests, to the `hpke` crate both ways.
//! Every HKDF output here is at most one SHA-256 block (32 bytes), so Expand is one HMAC.

use aws_lc_rs::{aead, agreement, hmac};

/// `suite_id` of the KEM (§4.1) and of the key schedule (§5.1).
const KEM_SUITE: &[u8] = b"KEM\x00\x20";
const SUITE: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x03";

/// Why a seal or an open failed (no detail: an open that fails is "not for this key").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HPKE: {0}")]
pub struct HpkeError(&'static str);

fn extract(salt: &[u8], ikm: &[&[u8]]) -> [u8; 32] {
    // RFC 5869 §2.2: an absent salt is HashLen zeros.
    let zeros = [0u8; 32];
    let key = hmac::Key::new(
        hmac::HMAC_SHA256,
        if salt.is_empty() { &zeros } else { salt },
    );
    let mut ctx = hmac::Context::with_key(&key);
    for part in ikm {
        ctx.update(part);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// RFC 9180 §4: LabeledExtract.
fn labeled_extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> [u8; 32] {
    extract(salt, &[b"HPKE-v1", suite, label, ikm])
}

/// RFC 9180 §4: LabeledExpand, for `N` ≤ 32 (one block of RFC 5869's Expand).
fn labeled_expand<const N: usize>(
    suite: &[u8],
    prk: &[u8; 32],
    label: &[u8],
    info: &[&[u8]],
) -> [u8; N] {
    const { assert!(N <= 32) };
    let key = hmac::Key::new(hmac::HMAC_SHA256, prk);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&(N as u16).to_be_bytes());
    ctx.update(b"HPKE-v1");
    ctx.update(suite);
    ctx.update(label);
    for part in info {
        ctx.update(part);
    }
    ctx.update(&[1]);
    let mut out = [0u8; N];
    out.copy_from_slice(&ctx.sign().as_ref()[..N]);
    out
}

/// §4.1 ExtractAndExpand: the KEM's shared secret from the DH output and `enc ‖ pkR`.
fn shared_secret(dh: &[u8], enc: &[u8], pk_r: &[u8]) -> [u8; 32] {
    let prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh);
    labeled_expand::<32>(KEM_SUITE, &prk, b"shared_secret", &[enc, pk_r])
}

/// §5.1 KeyScheduleS/R in base mode: the AEAD key and base nonce.
fn key_schedule(shared: &[u8; 32], info: &[u8]) -> ([u8; 32], [u8; 12]) {
    let psk_id_hash = labeled_extract(SUITE, b"", b"psk_id_hash", b"");
    let info_hash = labeled_extract(SUITE, b"", b"info_hash", info);
    let context: [&[u8]; 3] = [&[0x00], &psk_id_hash, &info_hash];
    let secret = labeled_extract(SUITE, shared, b"secret", b"");
    (
        labeled_expand::<32>(SUITE, &secret, b"key", &context),
        labeled_expand::<12>(SUITE, &secret, b"base_nonce", &context),
    )
}

fn dh(private: &agreement::PrivateKey, public: &[u8]) -> Result<[u8; 32], HpkeError> {
    // aws-lc refuses a point of small order (an all-zero result): §7.1.4's check.
    agreement::agree(
        private,
        agreement::UnparsedPublicKey::new(&agreement::X25519, public),
        HpkeError("not a usable X25519 public key"),
        |secret| {
            let mut out = [0u8; 32];
            out.copy_from_slice(secret);
            Ok(out)
        },
    )
}

fn public_of(private: &agreement::PrivateKey) -> Result<[u8; 32], HpkeError> {
    let public = private
        .compute_public_key()
        .map_err(|_| HpkeError("no public key"))?;
    public
        .as_ref()
        .try_into()
        .map_err(|_| HpkeError("no public key"))
}

fn aead_key(key: &[u8; 32]) -> Result<aead::LessSafeKey, HpkeError> {
    aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
        .map(aead::LessSafeKey::new)
        .map_err(|_| HpkeError("AEAD key"))
}

/// SealBase (§6.1) to `pk_r` with the ephemeral key `ephemeral`: `enc` and the ciphertext (tag
/// last).
fn seal_with(
    ephemeral: &agreement::PrivateKey,
    pk_r: &[u8],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; 32], Vec<u8>), HpkeError> {
    let enc = public_of(ephemeral)?;
    let shared = shared_secret(&dh(ephemeral, pk_r)?, &enc, pk_r);
    let (key, nonce) = key_schedule(&shared, info);
    let mut out = Vec::with_capacity(plaintext.len() + 16);
    out.extend_from_slice(plaintext);
    aead_key(&key)?
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut out,
        )
        .map_err(|_| HpkeError("AEAD seal"))?;
    Ok((enc, out))
}

/// SealBase (§6.1) to the X25519 public key `pk_r`, with a fresh ephemeral key.
pub fn seal(
    pk_r: &[u8],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; 32], Vec<u8>), HpkeError> {
    let ephemeral = agreement::PrivateKey::generate(&agreement::X25519)
        .map_err(|_| HpkeError("no ephemeral key"))?;
    seal_with(&ephemeral, pk_r, info, aad, plaintext)
}

/// OpenBase (§6.1) with the X25519 secret `sk_r`: the plaintext, or none when it does not open.
pub fn open(sk_r: &[u8; 32], enc: &[u8], info: &[u8], aad: &[u8], ct: &[u8]) -> Option<Vec<u8>> {
    let private = agreement::PrivateKey::from_private_key(&agreement::X25519, sk_r).ok()?;
    let pk_r = public_of(&private).ok()?;
    let shared = shared_secret(&dh(&private, enc).ok()?, enc, &pk_r);
    let (key, nonce) = key_schedule(&shared, info);
    let mut buffer = ct.to_vec();
    let plaintext = aead_key(&key)
        .ok()?
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut buffer,
        )
        .ok()?;
    let n = plaintext.len();
    buffer.truncate(n);
    Some(buffer)
}

/// The X25519 public key of the secret `sk`.
pub fn public_key(sk: &[u8; 32]) -> Result<[u8; 32], HpkeError> {
    let private = agreement::PrivateKey::from_private_key(&agreement::X25519, sk)
        .map_err(|_| HpkeError("not an X25519 secret"))?;
    public_of(&private)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// §7.1.3 DeriveKeyPair for X25519: the ephemeral secret of a test vector's `ikmE`.
    fn derive_secret(ikm: &[u8]) -> [u8; 32] {
        let prk = labeled_extract(KEM_SUITE, b"", b"dkp_prk", ikm);
        labeled_expand::<32>(KEM_SUITE, &prk, b"sk", &[])
    }

    /// RFC 9180 appendix A.2.1 (DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305,
    /// base mode), its first encryption.
    #[test]
    fn it_is_rfc_9180s_by_its_test_vector() {
        let ikm_e = hex("909a9b35d3dc4713a5e72a4da274b55d3d3821a37e5d099e74a647db583a904b");
        let pk_r = hex("4310ee97d88cc1f088a5576c77ab0cf5c3ac797f3d95139c6c84b5429c59662a");
        let sk_r: [u8; 32] =
            hex("8057991eef8f1f1af18f4a9491d16a1ce333f695d4db8e38da75975c4478e0fb")
                .try_into()
                .unwrap();
        let info = hex("4f6465206f6e2061204772656369616e2055726e");
        let enc = hex("1afa08d3dec047a643885163f1180476fa7ddb54c6a8029ea33f95796bf2ac4a");
        let aad = hex("436f756e742d30");
        let pt = hex("4265617574792069732074727574682c20747275746820626561757479");
        let ct = hex(
            "1c5250d8034ec2b784ba2cfd69dbdb8af406cfe3ff938e131f0def8c8b60b4db21993c62ce81883d2dd1b51a28",
        );
        let ephemeral =
            agreement::PrivateKey::from_private_key(&agreement::X25519, &derive_secret(&ikm_e))
                .unwrap();
        let (sealed_enc, sealed_ct) = seal_with(&ephemeral, &pk_r, &info, &aad, &pt).unwrap();
        assert_eq!((sealed_enc.to_vec(), sealed_ct), (enc.clone(), ct.clone()));
        assert_eq!(open(&sk_r, &enc, &info, &aad, &ct), Some(pt.clone()));
        assert_eq!(public_key(&sk_r).unwrap().to_vec(), pk_r);
        // Another key, another aad, a changed byte: nothing opens.
        assert_eq!(open(&[7; 32], &enc, &info, &aad, &ct), None);
        assert_eq!(open(&sk_r, &enc, &info, b"", &ct), None);
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_eq!(open(&sk_r, &enc, &info, &aad, &bad), None);
        // A point of small order (here zero) is refused, not used.
        assert!(seal(&[0; 32], &info, &aad, &pt).is_err());
        assert_eq!(open(&sk_r, &[0; 32], &info, &aad, &ct), None);
    }

    /// The `hpke` crate (an independent implementation) opens what this seals, and this opens
    /// what it seals.
    #[test]
    fn the_hpke_crate_and_this_open_each_others_seals() {
        use hpke::kem::X25519HkdfSha256;
        use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};
        type Aead = hpke::aead::ChaCha20Poly1305;
        type Kdf = hpke::kdf::HkdfSha256;
        let (sk, pk) = X25519HkdfSha256::gen_keypair();
        let sk_bytes: [u8; 32] = sk.to_bytes().as_slice().try_into().unwrap();
        let pk_bytes = pk.to_bytes();
        assert_eq!(
            public_key(&sk_bytes).unwrap().as_slice(),
            pk_bytes.as_slice()
        );
        for len in [0usize, 1, 64, 4096] {
            let pt = vec![0x5a; len];
            let (enc, ct) = seal(&pk_bytes, b"atsms-seal:v1", &[0x83, 1, 1, 1], &pt).unwrap();
            let enc = <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(&enc).unwrap();
            let opened = hpke::single_shot_open::<Aead, Kdf, X25519HkdfSha256>(
                &OpModeR::Base,
                &sk,
                &enc,
                b"atsms-seal:v1",
                &ct,
                &[0x83, 1, 1, 1],
            )
            .unwrap();
            assert_eq!(opened, pt);
            let mut rng = hpke::rand_core::UnwrapErr(getrandom::SysRng);
            let (enc, ct) = hpke::single_shot_seal_with_rng::<Aead, Kdf, X25519HkdfSha256>(
                &OpModeS::Base,
                &pk,
                b"atsms-seal:v1",
                &pt,
                &[0x83, 1, 1, 1],
                &mut rng,
            )
            .unwrap();
            assert_eq!(
                open(
                    &sk_bytes,
                    &enc.to_bytes(),
                    b"atsms-seal:v1",
                    &[0x83, 1, 1, 1],
                    &ct
                ),
                Some(pt)
            );
        }
    }
}
