//! Function benchmarks (criterion): canonicalization throughput against raw SHA-256 of the same
//! buffer (the physical limit), token parsing, ES256 and ES256K verification, and the whole
//! verification of a message whose signer's identity is cached.
//!
//! `cargo bench --bench engine`; docs/performance.md has figures and what limits each.

use atsms_testkit::load as common;

use std::hint::black_box;
use std::sync::Arc;

use atsms_milter::atproto::identity::IdentityResolver;
use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::format::envelope::{BodyHasher, HeaderField, header_hash, sign, tags, token};
use atsms_milter::format::message::read_message;
use atsms_milter::infra::config::{CacheConfig, ResolverConfig};
use atsms_milter::verification::verify::{Context, Verifier};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use sha2::{Digest, Sha256};

const NOW: i64 = 1_795_000_000;
const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

/// A body of mail-like text: 72-column lines, a few runs of spaces, trailing blanks.
fn body(size: usize) -> Vec<u8> {
    let line = b"Lorem ipsum dolor sit amet,  consectetur adipiscing elit; sed do eiusmod \r\n";
    let mut out = Vec::with_capacity(size + line.len());
    while out.len() < size {
        out.extend_from_slice(line);
    }
    out.truncate(size);
    out
}

fn headers() -> Vec<HeaderField> {
    [
        ("From", " Alice <alice@alice.example.com>"),
        (
            "To",
            " Bob <bob@mx.example.net>,\r\n\tCarol <carol@mx.example.net>",
        ),
        ("Subject", " Quarterly   report\r\n  and figures"),
        ("Date", " Thu, 26 Nov 2026 09:00:00 +0000"),
        ("Message-ID", " <9291e320df606358@alice.example.com>"),
        ("MIME-Version", " 1.0"),
        ("Content-Type", " text/plain; charset=utf-8"),
        ("Content-Transfer-Encoding", " 8bit"),
        (
            "Received",
            " from a by b with ESMTP id X; Thu, 26 Nov 2026 09:00:01 +0000",
        ),
        (
            "Received",
            " from c by d with ESMTP id Y; Thu, 26 Nov 2026 09:00:02 +0000",
        ),
    ]
    .into_iter()
    .map(|(n, v)| HeaderField::new(n, v))
    .collect()
}

fn canonicalization(c: &mut Criterion) {
    let mut group = c.benchmark_group("body");
    for size in [4 * 1024, 64 * 1024, 1024 * 1024] {
        let data = body(size);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("relaxed_hash", size), &data, |b, data| {
            b.iter(|| {
                let mut hasher = BodyHasher::new();
                for chunk in data.chunks(65_535) {
                    hasher.update(chunk);
                }
                black_box(hasher.finish())
            })
        });
        group.bench_with_input(BenchmarkId::new("raw_sha256", size), &data, |b, data| {
            b.iter(|| black_box(<[u8; 32]>::from(Sha256::digest(data))))
        });
    }
    group.finish();

    let fields = headers();
    let h = sign::header_names_to_sign(&fields);
    let bytes: usize = fields
        .iter()
        .map(|f| f.name.len() + f.value.len() + 3)
        .sum();
    let mut group = c.benchmark_group("header");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("relaxed_hash", |b| {
        b.iter(|| black_box(header_hash(&h, &fields)))
    });
    group.finish();
}

fn signed_message(key: &SigningKey, size: usize) -> Vec<u8> {
    let mut message = b"From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: bench\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\nMessage-ID: <b@alice.example.com>\r\n\r\n".to_vec();
    message.extend_from_slice(&body(size));
    let parsed = read_message(&message[..]).unwrap();
    let kid = format!("{DID}#atproto");
    let request = sign::SignRequest {
        key,
        kid: &kid,
        now: NOW,
        ttl: 3600,
        rcpt: &[],
        jti: "bench-0123456789abcdef".into(),
    };
    let token = sign::sign_token(&request, &parsed.headers, parsed.body_hash).unwrap();
    [
        sign::format_field(DID, &token, "\r\n").into_bytes(),
        b"\r\n".to_vec(),
        message,
    ]
    .concat()
}

fn token_and_signatures(c: &mut Criterion) {
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let message = signed_message(&key, 1024);
    let parsed = read_message(&message[..]).unwrap();
    let field = &parsed.headers[0].value;
    c.bench_function("token/parse", |b| {
        b.iter(|| {
            let list = tags::parse(black_box(field)).unwrap();
            black_box(token::parse(&list.t, &list.d).unwrap())
        })
    });
    for alg in [Alg::Es256, Alg::Es256k] {
        let key = SigningKey::generate(alg).unwrap();
        let public = key.public_key();
        let input = b"eyJhbGciOiJFUzI1NksiLCJ0eXAiOiJhdHNtcytqd3QifQ.eyJpc3MiOiJkaWQ6cGxjOm9mdXJkaGZ5aGpoZ29tdmZ5Z3hlcmdlcCJ9";
        let signature = key.sign(input);
        c.bench_function(&format!("verify/{alg}"), |b| {
            b.iter(|| {
                public
                    .verify(black_box(input), black_box(&signature))
                    .unwrap()
            })
        });
    }
}

/// ES256K verification by each library that could do it, the same key and signature, in the
/// same run: libsecp256k1 (what `crypto` verifies with), aws-lc (already linked for ES256 and
/// rustls) and k256. Keep libsecp256k1 only while aws-lc is more than 10 % slower.
fn secp256k1_libraries(c: &mut Criterion) {
    use sha2::Digest;
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let point = key.public_key().uncompressed_point();
    let input = b"eyJhbGciOiJFUzI1NksiLCJ0eXAiOiJhdHNtcytqd3QifQ.eyJpc3MiOiJkaWQ6cGxjOm9mdXJkaGZ5aGpoZ29tdmZ5Z3hlcmdlcCJ9";
    let signature = key.sign(input);
    let mut group = c.benchmark_group("es256k_verify");
    let secp = secp256k1::Secp256k1::verification_only();
    let libsecp_key = secp256k1::PublicKey::from_slice(&point).unwrap();
    group.bench_function("libsecp256k1", |b| {
        b.iter(|| {
            let sig = secp256k1::ecdsa::Signature::from_compact(black_box(&signature)).unwrap();
            let digest =
                secp256k1::Message::from_digest(sha2::Sha256::digest(black_box(input)).into());
            secp.verify_ecdsa(digest, &sig, &libsecp_key).unwrap()
        })
    });
    let aws_key = aws_lc_rs::signature::ParsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256K1_SHA256_FIXED,
        &point,
    )
    .unwrap();
    group.bench_function("aws-lc", |b| {
        b.iter(|| {
            aws_key
                .verify_sig(black_box(input), black_box(&signature))
                .unwrap()
        })
    });
    let k256_key = k256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
    group.bench_function("k256", |b| {
        use k256::ecdsa::signature::Verifier;
        b.iter(|| {
            let sig = k256::ecdsa::Signature::from_slice(black_box(&signature)).unwrap();
            k256_key.verify(black_box(input), &sig).unwrap()
        })
    });
    group.finish();
}

fn end_to_end(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("verify_message_cached");
    for alg in [Alg::Es256k, Alg::Es256] {
        let key = SigningKey::generate(alg).unwrap();
        let document = serde_json::json!({
            "id": DID,
            "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": DID, "publicKeyMultibase": key.public_key().to_multikey()}],
        })
        .to_string();
        let resolver = ResolverConfig {
            plc_urls: vec![common::serve_document(document).parse().unwrap()],
            ..Default::default()
        };
        let identity = Arc::new(IdentityResolver::new(&resolver, &CacheConfig::default()).unwrap());
        let verifier = Verifier::new(identity, resolver.timeout());
        for size in [4 * 1024, 64 * 1024] {
            let message = signed_message(&key, size);
            let context = Context {
                now: NOW,
                recipients: &[],
            };
            // Warm the cache: the benchmark measures a sender seen recently.
            let parsed = read_message(&message[..]).unwrap();
            let first =
                runtime.block_on(verifier.verify(&parsed.headers, &parsed.body_hash, &context));
            assert_eq!(first.signatures[0].result.as_str(), "pass");
            group.throughput(Throughput::Bytes(message.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(alg.to_string(), size),
                &message,
                |b, message| {
                    b.iter(|| {
                        let parsed = read_message(&message[..]).unwrap();
                        runtime.block_on(verifier.verify(
                            &parsed.headers,
                            &parsed.body_hash,
                            &context,
                        ))
                    })
                },
            );
        }
    }
    group.finish();
}

/// Issue 34's bar: the sealing CPU per recipient device (≤ 150 µs on this machine): the
/// EnvelopedData to the device's certificate (an ephemeral P-256 key, ECDH, key wrap, AES-CBC)
/// and the HPKE seal to its prekey, of a signed one-shot message — per device, as a
/// message to 10 DIDs × 10 devices makes it 100 times; the one signature apart.
fn seal_per_device(c: &mut Criterion) {
    use atsms_milter::atproto::device;
    use atsms_milter::format::one_shot;
    use der::DecodePem;
    use p256::pkcs8::DecodePrivateKey;
    let made = |did: &str| {
        let d = device::new_device(did, 30, NOW).unwrap();
        (
            x509_cert::Certificate::from_pem(&d.cert_pem).unwrap(),
            p256::ecdsa::SigningKey::from_pkcs8_pem(&d.key_pem).unwrap(),
        )
    };
    let (sender_cert, sender_key) = made(DID);
    let (recipient_cert, _) = made("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa");
    let prekey = atsms_milter::format::sealed::public_key(&[7; 32]).unwrap();
    let sender = one_shot::Sender {
        did: DID,
        certificate: &sender_cert,
        key: &sender_key,
    };
    let recipients: Vec<String> = (0..10).map(|i| format!("did:plc:{i:0>24}")).collect();
    let signed = one_shot::sign_text(&sender, &recipients, &"x".repeat(200), 1).unwrap();
    let target = one_shot::Device {
        certificate: &recipient_cert,
        prekey: &prekey,
    };
    let mut group = c.benchmark_group("one_shot");
    group.bench_function("sign_once", |b| {
        b.iter(|| one_shot::sign_text(&sender, &recipients, &"x".repeat(200), 1).unwrap())
    });
    group.bench_function("seal_per_device", |b| {
        b.iter(|| one_shot::seal_for(&signed, &target).unwrap())
    });
    // Its two parts: the EnvelopedData to the device's certificate, the HPKE seal of it.
    group.bench_function("enveloped_encrypt", |b| {
        b.iter(|| {
            atsms_milter::format::enveloped::encrypt(&signed, std::slice::from_ref(&recipient_cert))
                .unwrap()
        })
    });
    let enveloped =
        atsms_milter::format::enveloped::encrypt(&signed, std::slice::from_ref(&recipient_cert))
            .unwrap();
    group.bench_function("hpke_seal", |b| {
        b.iter(|| atsms_milter::format::sealed::seal(&prekey, 2, &enveloped).unwrap())
    });
    group.finish();
}

criterion_group!(
    benches,
    canonicalization,
    token_and_signatures,
    secp256k1_libraries,
    end_to_end,
    seal_per_device
);
criterion_main!(benches);
