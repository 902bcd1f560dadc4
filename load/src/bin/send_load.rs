//! The PDS-side sender under load (issue 34): `sendMessage` calls, each one message to `--dids`
//! recipient DIDs with `--devices` devices each, every envelope posted to a loopback web inbox
//! that answers 202 (a destination that costs the daemon nothing, so what is measured is the
//! sender's work). Identities and checked prekeys are cached after a first call (prekeys for
//! five minutes). Prints the sealing CPU a device in this process (the library's `seal_for`, one
//! thread), and the daemon's CPU a device with delivery (from /proc: signing once, lookups,
//! sealing, one POST each), the first call (every prekey asked of the PDS and checked) apart.
//!
//!   scripts/bench/load.sh send_load [--messages 20] [--dids 10] [--devices 10]

use atsms_testkit::http::{HttpServer, Reply};
use atsms_testkit::load as common;
use atsms_testkit::load::did;
use atsms_testkit::plc::Plc;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Instant;

use atsms_milter::atproto::device::{new_device, new_prekey};
use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::format::one_shot;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use serde_json::json;

const SERVICE: &str = "did:web:sender.bench";

use atsms_milter::infra::clock::unix_now as now;

/// A service token for sendMessage, as a PDS's getServiceAuth makes it.
fn token(key: &SigningKey, iss: &str, n: usize) -> String {
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let claims = json!({"iat": now(), "iss": iss, "aud": SERVICE, "exp": now() + 60,
        "lxm": "org.atsms-milter.mail.sendMessage", "jti": format!("{n:032x}")});
    let header = json!({"typ": "JWT", "alg": "ES256"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    format!("{input}.{}", b64(&key.sign(input.as_bytes())))
}

/// What the recipients publish, and what sealing to them needs.
struct Recipients {
    dids: Vec<String>,
    /// (certificate, prekey) of every device.
    devices: Vec<(x509_cert::Certificate, [u8; 32])>,
}

fn publish(plc: &Plc, inbox: &str, dids: usize, devices: usize) -> Recipients {
    use der::DecodePem;
    let mut out = Recipients {
        dids: Vec::new(),
        devices: Vec::new(),
    };
    let now_ms = now() * 1000;
    for n in 0..dids {
        let did = did(n);
        plc.set_with_pds(&did, &SigningKey::generate(Alg::Es256).unwrap(), None);
        for _ in 0..devices {
            let device = new_device(&did, 30, now()).unwrap();
            let key = {
                use p256::pkcs8::DecodePrivateKey;
                p256::ecdsa::SigningKey::from_pkcs8_pem(&device.key_pem).unwrap()
            };
            let prekey = new_prekey(&key, now_ms).unwrap();
            plc.put_record(&did, "at.atsms.x509", &device.fingerprint, device.record);
            let public = prekey.record["signedPrekey"]["$bytes"]
                .as_str()
                .map(|b| STANDARD_NO_PAD.decode(b).unwrap())
                .unwrap();
            plc.put_record(&did, "at.atsms.prekey", &device.fingerprint, prekey.record);
            out.devices.push((
                x509_cert::Certificate::from_pem(device.cert_pem.as_bytes()).unwrap(),
                public.try_into().unwrap(),
            ));
        }
        let endpoints = json!([{"uri": format!("{inbox}/inbox/{}", did.replace(':', "%3A"))}]);
        plc.put_record(
            &did,
            "at.atsms.inbox",
            "self",
            json!({"$type": "at.atsms.inbox", "endpoints": endpoints}),
        );
        out.dids.push(did);
    }
    out
}

fn config(work: &Path, plc: &str, port: u16) -> std::path::PathBuf {
    let w = work.display();
    let conf = work.join("atsms.toml");
    std::fs::write(
        &conf,
        format!(
            "[xrpc]\nlisten = \"inet:127.0.0.1:{port}\"\nservice_did = \"{SERVICE}\"\ntimeout = 120\n\n[[device]]\ndid = \"{}\"\ndir = \"{w}/sender\"\n\n[send]\nrate_limit = \"1000000/1s\"\nqueue = \"{w}/outbox\"\n\n[resolver]\nplc_urls = [\"{plc}\"]\nallow_private_addresses = true\nmax_concurrent_per_host = 64\nmax_requests_per_second = 10000\n\n[store]\njti_file = \"{w}/jti\"\n\n[log]\nlevel = \"warn\"\n",
            did(999_999)
        ),
    )
    .unwrap();
    conf
}

fn write_secret(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let messages = common::numbers(&args, "--messages", "20")[0];
    let dids = common::numbers(&args, "--dids", "10")[0];
    let per_did = common::numbers(&args, "--devices", "10")[0];
    let plc = Plc::start();
    let inbox = HttpServer::start(std::sync::Arc::new(|_: &str| {
        Reply::json(202, r#"{"stored":true}"#)
    }));
    let work = common::work_dir("bench-send");
    let sender = did(999_999);
    let key = SigningKey::generate(Alg::Es256).unwrap();
    plc.set_with_pds(&sender, &key, None);
    let device = new_device(&sender, 30, now()).unwrap();
    std::fs::create_dir_all(work.join("sender")).unwrap();
    write_secret(&work.join("sender/device.key"), &device.key_pem);
    std::fs::write(work.join("sender/device.crt"), &device.cert_pem).unwrap();
    plc.put_record(&sender, "at.atsms.x509", &device.fingerprint, device.record);
    let recipients = publish(&plc, &inbox.url(), dids, per_did);
    let total = dids * per_did;

    // Sealing alone, in this process: the one signed message to every device, one thread.
    let sender_cert = {
        use der::DecodePem;
        x509_cert::Certificate::from_pem(device.cert_pem.as_bytes()).unwrap()
    };
    let sender_key = {
        use p256::pkcs8::DecodePrivateKey;
        p256::ecdsa::SigningKey::from_pkcs8_pem(&device.key_pem).unwrap()
    };
    let signed = one_shot::sign_text(
        &one_shot::Sender {
            did: &sender,
            certificate: &sender_cert,
            key: &sender_key,
        },
        &recipients.dids,
        "a message of a hundred characters, or about that, as a chat message would be at most.",
        1,
    )
    .unwrap();
    let started = Instant::now();
    for _ in 0..messages {
        for (certificate, prekey) in &recipients.devices {
            one_shot::seal_for(
                &signed,
                &one_shot::Device {
                    certificate,
                    prekey,
                },
            )
            .unwrap();
        }
    }
    let sealing = started.elapsed().as_secs_f64() / (messages * total) as f64;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = config(&work, &plc.url(), port);
    let daemon = common::start_daemon("atsms-milter", &conf, common::Ready::Port(port));
    let pid = daemon.child.id();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/xrpc/org.atsms-milter.mail.sendMessage");
    let body = json!({"to": recipients.dids, "text": "a message of a hundred characters, or about that, as a chat message would be at most."}).to_string();
    let call = |n: usize| {
        let request = client
            .post(&url)
            .bearer_auth(token(&key, &sender, n))
            .header("content-type", "application/json")
            .body(body.clone());
        async move {
            let text = request.send().await.unwrap().text().await.unwrap();
            let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
            for r in answer["results"].as_array().expect("results") {
                assert_eq!(r["status"], "delivered", "{answer}");
                assert_eq!(r["devices"], per_did, "{answer}");
            }
        }
    };
    // The first call: documents, records, certificates and prekeys asked and cached.
    let cpu_cold = common::usage(pid).0;
    call(0).await;
    let cold = common::usage(pid).0 - cpu_cold;
    let posts0 = inbox.request_count();
    let cpu0 = common::usage(pid).0;
    let started = Instant::now();
    for n in 1..=messages {
        call(n).await;
    }
    let wall = started.elapsed();
    let cpu = common::usage(pid).0 - cpu0;
    assert_eq!(inbox.request_count() - posts0, messages * total);
    println!(
        "{messages} messages, each to {dids} DIDs × {per_did} devices ({} envelopes of {} bytes signed)",
        messages * total,
        signed.len()
    );
    println!("\n| measure | µs a device |\n|---|---|");
    println!(
        "| sealing alone (this process, one thread) | {:.0} |",
        sealing * 1e6
    );
    println!(
        "| daemon CPU with delivery (sign once, cached lookups, seal, POST) | {:.0} |",
        cpu * 1e6 / (messages * total) as f64
    );
    println!(
        "| daemon CPU with delivery, the first call (identities and prekeys asked) | {:.0} |",
        cold * 1e6 / total as f64
    );
    println!(
        "| wall time a message to {total} devices | {:.0} ms |",
        wall.as_secs_f64() * 1e3 / messages as f64
    );
    drop(daemon);
}
