//! Milter load, side by side: atsms-milter verifying AT-SMS signatures and OpenDKIM verifying
//! DKIM signatures on messages of the same size, driven by the same client (indymilter-test
//! playing the MTA) over unix sockets, N connections at once. Per run: messages per second,
//! p50/p99 end-of-message latency, CPU seconds per 1 000 messages and peak RSS of the daemon.
//!
//! Run by scripts/bench/milter.sh (which installs OpenDKIM if missing):
//!   scripts/bench/load.sh milter_load [--sizes 4096,65536,1048576] [--concurrency 1,16,128] [--messages 3000]

use atsms_testkit::load as common;

use common::{Daemon, base_message, load, open, rss, split, usage};

use std::sync::Arc;
use std::time::Duration;

use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::format::envelope::sign;
use atsms_milter::format::message::read_message;

const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

/// The memory goals: a 50 MB message raises peak RSS by less than 5 MB (the body streams
/// through the hasher); 1 000 idle connections cost less than 50 MB.
async fn memory(atsms: &Daemon, key: &SigningKey) {
    let pid = atsms.child.id();
    let base = base_message(50 * 1024 * 1024);
    let parsed = read_message(&base[..]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let kid = format!("{DID}#atproto");
    let request = sign::SignRequest {
        key,
        kid: &kid,
        now,
        ttl: 86400,
        rcpt: &[],
        jti: sign::random_jti(),
    };
    let token = sign::sign_token(&request, &parsed.headers, parsed.body_hash).unwrap();
    let big = Arc::new(split(
        &[
            sign::format_field(DID, &token, "\r\n").into_bytes(),
            b"\r\n".to_vec(),
            base,
        ]
        .concat(),
    ));
    let (_, before) = usage(pid);
    let run = load(atsms, &big, 1, 1, "atsms=pass").await;
    let (_, after) = usage(pid);
    println!(
        "\nmemory: one 50 MiB message: peak RSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB), end-of-message {:.0} ms",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after - before) as f64 / 1024.0,
        run.p50.as_secs_f64() * 1e3
    );
    let idle_before = rss(pid);
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(open(&atsms.socket).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_after = rss(pid);
    println!(
        "memory: 1000 idle connections: RSS {:.1} MiB -> {:.1} MiB (+{:.1} MiB, {:.1} KiB each)",
        idle_before as f64 / 1024.0,
        idle_after as f64 / 1024.0,
        (idle_after - idle_before) as f64 / 1024.0,
        (idle_after - idle_before) as f64 / 1000.0
    );
    drop(idle);
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes = common::numbers(&args, "--sizes", "4096,65536,1048576");
    let concurrency = common::numbers(&args, "--concurrency", "1,16,128");
    let messages = common::numbers(&args, "--messages", "3000")[0];

    let work = common::work_dir("bench-milter");
    let conf = |name: &str, body: String| {
        let path = work.join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let w = work.display();
    let signer = common::OpenDkim::signer(&work);
    let opendkim = common::OpenDkim::verifier(&work);

    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let document = serde_json::json!({
        "id": DID,
        "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": DID, "publicKeyMultibase": key.public_key().to_multikey()}],
    });
    let plc = common::serve_document(document.to_string());
    let atsms_conf = conf(
        "atsms.toml",
        format!(
            "[milter]\nlisten = \"unix:{w}/atsms.sock\"\n\n[resolver]\nplc_urls = [\"{plc}\"]\nallow_private_addresses = true\n\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\nreplay = false\n\n[log]\nlevel = \"warn\"\n\n[control]\nsocket = \"{w}/control.sock\"\n"
        ),
    );
    let atsms = common::start_daemon(
        "atsms-milter",
        &atsms_conf,
        common::Ready::Socket(work.join("atsms.sock")),
    );

    println!(
        "| size | connections | program | msgs/s | p50 ms | p99 ms | CPU s / 1000 msgs | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for &size in &sizes {
        let base = base_message(size);
        // DKIM: OpenDKIM signs; AT-SMS: our signer. Same bytes otherwise.
        let dkim_message = common::OpenDkim::signed(&signer, &base).await;
        let parsed = read_message(&base[..]).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let kid = format!("{DID}#atproto");
        let request = sign::SignRequest {
            key: &key,
            kid: &kid,
            now,
            ttl: 86400,
            rcpt: &[],
            jti: sign::random_jti(),
        };
        let token = sign::sign_token(&request, &parsed.headers, parsed.body_hash).unwrap();
        let atsms_message = [
            sign::format_field(DID, &token, "\r\n").into_bytes(),
            b"\r\n".to_vec(),
            base.clone(),
        ]
        .concat();
        let (dkim_message, atsms_message) = (
            Arc::new(split(&dkim_message)),
            Arc::new(split(&atsms_message)),
        );
        let count = if size >= 1024 * 1024 {
            messages / 10
        } else {
            messages
        };
        // Warm-up: the identity cache and both daemons' lazy state.
        load(&atsms, &atsms_message, 1, 20, "atsms=pass").await;
        load(&opendkim, &dkim_message, 1, 20, "dkim=pass").await;
        for &connections in &concurrency {
            let ours = load(&atsms, &atsms_message, connections, count, "atsms=pass").await;
            let theirs = load(&opendkim, &dkim_message, connections, count, "dkim=pass").await;
            for (daemon, r) in [(&atsms, &ours), (&opendkim, &theirs)] {
                common::print_row(&format!("{} KiB", size / 1024), connections, daemon, r);
            }
            ratios.push((
                size,
                connections,
                ours.rate / theirs.rate,
                ours.cpu_per_1000 / theirs.cpu_per_1000,
            ));
        }
    }
    if args.iter().any(|a| a == "--memory") {
        memory(&atsms, &key).await;
    }
    println!("\n| size | connections | msgs/s atsms/opendkim | CPU per msg atsms/opendkim |");
    println!("|---|---|---|---|");
    for (size, connections, rate, cpu) in ratios {
        println!(
            "| {} KiB | {connections} | {rate:.2}x | {cpu:.2}x |",
            size / 1024
        );
    }
    drop(signer);
}
