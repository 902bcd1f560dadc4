//! The AT-SMS sealed envelope, as the client writes and reads it (its `dcgka/envelope.ts` and
//! `dcgka/hpke.ts`; spec/sealed-sender.md §3–§5, spec/wire-format.md §6; what this project read
//! of them: docs/research/atsms-client-sending.md §7):
//!
//! ```text
//! envelope  = [1 (version), 1 (to a device's prekey), 1 (suite), enc: bstr 32, ct: bstr]
//! ct        = HPKE base mode (RFC 9180 §5.1.1) to the device's X25519 prekey:
//!             DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305;
//!             info "atsms-seal:v1", aad cbor([1, 1, 1]) = 83 01 01 01
//! plaintext = [content type, body: bstr, pad: bstr of zeros], exactly one of the
//!             buckets 1, 2, 4 … 64 KiB long
//! ```
//!
//! Content type 2 is a one-shot message: `body` is a CMS EnvelopedData (`format::enveloped`).
//! Every CBOR item here is of the client's strict profile (definite lengths, shortest heads),
//! read by hand: a general decoder would take what the client refuses. The HPKE itself is
//! `format::hpke`.

use crate::format::hpke;

/// HPKE `info` (the client's `SEAL_ASYM_INFO`).
pub const INFO: &[u8] = b"atsms-seal:v1";
/// HPKE `aad`: `cbor([version 1, mode 1, suite 1])` (the client's `asymAad`).
pub const AAD: [u8; 4] = [0x83, 0x01, 0x01, 0x01];
/// The sizes a plaintext is padded to (the client's `BUCKETS`).
pub const BUCKETS: [usize; 7] = [1024, 2048, 4096, 8192, 16384, 32768, 65536];
/// Content type of a one-shot message: the body is a CMS EnvelopedData.
pub const CONTENT_CMS: u64 = 2;
/// The largest sealed envelope: the largest bucket, the AEAD tag and the CBOR around them.
pub const MAX_SEALED: usize = 65536 + 16 + 64;

/// Why a sealed envelope was not opened or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealedError {
    #[error("not a sealed envelope to a device (version 1, mode 1, suite 1)")]
    Shape,
    #[error("none of the device's prekeys opens it")]
    NotForThisDevice,
    #[error("its plaintext is not [content type, body, zero pad]")]
    Plaintext,
    #[error("larger than the largest padding bucket (64 KiB)")]
    TooLarge,
    #[error("not an X25519 public key")]
    Key,
}

/// One CBOR head at `at` (major type, argument), shortest form only.
pub(crate) fn head(bytes: &[u8], at: &mut usize) -> Option<(u8, u64)> {
    let first = *bytes.get(*at)?;
    *at += 1;
    let (major, info) = (first >> 5, first & 0x1f);
    let value = match info {
        0..=23 => return Some((major, u64::from(info))),
        24..=27 => {
            let n = 1usize << (info - 24);
            let raw = bytes.get(*at..*at + n)?;
            *at += n;
            raw.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b))
        }
        _ => return None,
    };
    let shortest = match info {
        24 => value >= 24,
        25 => value > 0xff,
        26 => value > 0xffff,
        _ => value > 0xffff_ffff,
    };
    shortest.then_some((major, value))
}

fn uint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    match head(bytes, at)? {
        (0, v) => Some(v),
        _ => None,
    }
}

/// A byte string at `at`: its bytes.
fn bstr<'a>(bytes: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let (2, len) = head(bytes, at)? else {
        return None;
    };
    let end = at.checked_add(usize::try_from(len).ok()?)?;
    let out = bytes.get(*at..end)?;
    *at = end;
    Some(out)
}

/// Appends a CBOR head (shortest form).
pub(crate) fn write_head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    match value {
        0..=23 => out.push(m | value as u8),
        24..=0xff => out.extend([m | 24, value as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((value as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(value.to_be_bytes());
        }
    }
}

fn head_len(value: u64) -> usize {
    match value {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// A sealed envelope's shape (either mode: 1 to a device's prekey — suite, `enc` of 32 bytes,
/// ciphertext; 2 symmetric, inside the client's conversations — a tag of 8 bytes, a nonce of
/// 24, ciphertext), nothing after it, at most `MAX_SEALED`.
pub fn shape(bytes: &[u8]) -> bool {
    let check = || -> Option<()> {
        let mut at = 0;
        if bytes.len() > MAX_SEALED || head(bytes, &mut at)? != (4, 5) {
            return None;
        }
        (uint(bytes, &mut at)? == 1).then_some(())?;
        match uint(bytes, &mut at)? {
            1 => {
                uint(bytes, &mut at)?;
                (bstr(bytes, &mut at)?.len() == 32).then_some(())?;
            }
            2 => {
                (bstr(bytes, &mut at)?.len() == 8).then_some(())?;
                (bstr(bytes, &mut at)?.len() == 24).then_some(())?;
            }
            _ => return None,
        }
        bstr(bytes, &mut at)?;
        (at == bytes.len()).then_some(())
    };
    check().is_some()
}

/// The `enc` and ciphertext of an envelope sealed to a device (mode 1, suite 1).
fn to_device(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut at = 0;
    if bytes.len() > MAX_SEALED || head(bytes, &mut at)? != (4, 5) {
        return None;
    }
    for expected in [1, 1, 1] {
        (uint(bytes, &mut at)? == expected).then_some(())?;
    }
    let enc = bstr(bytes, &mut at)?;
    let ct = bstr(bytes, &mut at)?;
    (enc.len() == 32 && at == bytes.len()).then_some((enc, ct))
}

/// Opens an envelope sealed to a device with one of its prekey `secrets` (X25519, 32 bytes;
/// the current first, then the previous week's, as the client tries them): the content type
/// and the body.
pub fn open(bytes: &[u8], secrets: &[[u8; 32]]) -> Result<(u64, Vec<u8>), SealedError> {
    let (enc, ct) = to_device(bytes).ok_or(SealedError::Shape)?;
    for secret in secrets {
        if let Some(plaintext) = hpke::open(secret, enc, INFO, &AAD, ct) {
            return read_plaintext(&plaintext).ok_or(SealedError::Plaintext);
        }
    }
    Err(SealedError::NotForThisDevice)
}

/// `[content type, body, pad]`, the pad all zeros, nothing after (the client's
/// `decodeSealedPlaintext`; like it, the length is not checked against the buckets).
fn read_plaintext(plaintext: &[u8]) -> Option<(u64, Vec<u8>)> {
    let mut at = 0;
    (head(plaintext, &mut at)? == (4, 3)).then_some(())?;
    let content_type = uint(plaintext, &mut at)?;
    let body = bstr(plaintext, &mut at)?.to_vec();
    let pad = bstr(plaintext, &mut at)?;
    (pad.iter().all(|b| *b == 0) && at == plaintext.len()).then_some((content_type, body))
}

/// `[content type, body, zero pad]` made exactly the smallest bucket it fits. Where no pad
/// length lands on a bucket exactly (the pad's own head grows by a byte or two at 24 and 256),
/// the next bucket: the client's writer fails there, its reader takes any length.
pub fn pad_to_bucket(content_type: u64, body: &[u8]) -> Result<Vec<u8>, SealedError> {
    let prefix = 1 + head_len(content_type) + head_len(body.len() as u64) + body.len();
    for bucket in BUCKETS {
        let Some(room) = bucket.checked_sub(prefix) else {
            continue;
        };
        // room = the pad's head + the pad.
        let Some(pad) = [1usize, 2, 3, 5]
            .into_iter()
            .filter_map(|h| room.checked_sub(h))
            .find(|p| head_len(*p as u64) + p == room)
        else {
            continue;
        };
        let mut out = Vec::with_capacity(bucket);
        write_head(&mut out, 4, 3);
        write_head(&mut out, 0, content_type);
        write_head(&mut out, 2, body.len() as u64);
        out.extend_from_slice(body);
        write_head(&mut out, 2, pad as u64);
        out.resize(bucket, 0);
        return Ok(out);
    }
    Err(SealedError::TooLarge)
}

/// Seals `body` of `content_type` to a device's prekey `recipient` (X25519 public key).
pub fn seal(recipient: &[u8], content_type: u64, body: &[u8]) -> Result<Vec<u8>, SealedError> {
    let plaintext = pad_to_bucket(content_type, body)?;
    let (enc, ct) = hpke::seal(recipient, INFO, &AAD, &plaintext).map_err(|_| SealedError::Key)?;
    let mut out = Vec::with_capacity(ct.len() + 48);
    write_head(&mut out, 4, 5);
    out.extend([0x01, 0x01, 0x01]);
    write_head(&mut out, 2, enc.len() as u64);
    out.extend_from_slice(&enc);
    write_head(&mut out, 2, ct.len() as u64);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// The X25519 public key of a prekey secret.
pub fn public_key(secret: &[u8; 32]) -> Result<[u8; 32], SealedError> {
    hpke::public_key(secret).map_err(|_| SealedError::Key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENVELOPE: &[u8] = include_bytes!("../../tests/data/atsms-client/envelope.cbor");
    const PREKEY: &[u8] = include_bytes!("../../tests/data/atsms-client/prekey.sk");
    const ONESHOT: &[u8] = include_bytes!("../../tests/data/atsms-client/oneshot.der");

    fn prekey() -> [u8; 32] {
        PREKEY.try_into().unwrap()
    }

    #[test]
    fn the_clients_envelope_opens_with_its_prekey_to_the_enveloped_data() {
        let (content_type, body) = open(ENVELOPE, &[[7; 32], prekey()]).unwrap();
        assert_eq!(content_type, CONTENT_CMS);
        assert_eq!(
            body,
            ONESHOT.to_vec(),
            "the body is the one-shot EnvelopedData"
        );
        assert_eq!(
            open(ENVELOPE, &[[7; 32]]),
            Err(SealedError::NotForThisDevice)
        );
    }

    #[test]
    fn what_is_sealed_opens_and_fills_a_bucket_exactly() {
        let secret = prekey();
        let public = public_key(&secret).unwrap();
        for len in [0, 1, 761, 994, 1000, 1785, 5000, 65000] {
            let body = vec![0xab; len];
            let sealed = seal(&public, CONTENT_CMS, &body).unwrap();
            assert!(shape(&sealed), "{len}");
            assert_eq!(open(&sealed, &[secret]).unwrap(), (CONTENT_CMS, body));
            let plaintext = pad_to_bucket(CONTENT_CMS, &vec![0xab; len]).unwrap();
            assert!(
                BUCKETS.contains(&plaintext.len()),
                "{len}: {}",
                plaintext.len()
            );
        }
        assert_eq!(
            pad_to_bucket(CONTENT_CMS, &vec![0; 65536]),
            Err(SealedError::TooLarge)
        );
    }

    #[test]
    fn a_tampered_or_misshapen_envelope_is_refused_without_panic() {
        let sealed = ENVELOPE.to_vec();
        for at in [0, 1, 4, 6, 40, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(open(&bad, &[prekey()]).is_err(), "{at}");
        }
        for cut in 0..sealed.len().min(64) {
            assert!(open(&sealed[..cut], &[prekey()]).is_err());
        }
    }
}
