//! Signing load, side by side: the signing milter (ES256K) and OpenDKIM signing (RSA-2048, the
//! usual default; relaxed/relaxed) on the same messages, driven by the same client
//! (indymilter-test playing the MTA) over unix sockets, N connections at once. Per run:
//! messages per second, p50/p99 end-of-message latency, CPU seconds per 1 000 messages and peak
//! RSS of the daemon.
//!
//! Run by scripts/bench/signing.sh (which installs OpenDKIM if missing):
//!   scripts/bench/load.sh signing_load [--sizes 4800] [--concurrency 1,16] [--messages 5000]

use atsms_testkit::load as common;

use std::sync::Arc;

use common::{OpenDkim, Ready, base_message, load, split};

const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let sizes = common::numbers(&args, "--sizes", "4800");
    let concurrency = common::numbers(&args, "--concurrency", "1,16");
    let messages = common::numbers(&args, "--messages", "5000")[0];

    let work = common::work_dir("bench-signing");
    let opendkim = OpenDkim::signer(&work);

    let (key, key_file) = common::key_file(&work, "atsms.pem");
    let document = serde_json::json!({
        "id": DID,
        "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": DID, "publicKeyMultibase": key.public_key().to_multikey()}],
    });
    let plc = common::serve_document(document.to_string());
    let w = work.display();
    let conf = work.join("atsms.toml");
    std::fs::write(
        &conf,
        format!(
            "[milter]\nlisten = \"unix:{w}/atsms.sock\"\n\n[resolver]\nplc_urls = [\"{plc}\"]\nallow_private_addresses = true\n\n[signing]\nnetworks = [\"192.0.2.0/24\"]\n\n[[signing.key]]\nsenders = [\"*@example.com\"]\ndid = \"{DID}\"\nkid = \"{DID}#atproto\"\nkey_file = \"{}\"\nlogins = [\"*\"]\n\n[log]\nlevel = \"warn\"\n\n[control]\nsocket = \"{w}/control.sock\"\n",
            key_file.display()
        ),
    )
    .unwrap();
    let atsms = common::start_daemon(
        "atsms-milter",
        &conf,
        Ready::Socket(work.join("atsms.sock")),
    );

    println!(
        "| size | connections | program | msgs/s | p50 ms | p99 ms | CPU s / 1000 msgs | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for &size in &sizes {
        let message = Arc::new(split(&base_message(size)));
        load(&atsms, &message, 1, 20, "AT-SMS-Signature").await;
        load(&opendkim, &message, 1, 20, "DKIM-Signature").await;
        for &connections in &concurrency {
            let ours = load(&atsms, &message, connections, messages, "AT-SMS-Signature").await;
            let theirs = load(&opendkim, &message, connections, messages, "DKIM-Signature").await;
            for (daemon, r) in [(&atsms, &ours), (&opendkim, &theirs)] {
                common::print_row(
                    &format!("{:.1} KB", size as f64 / 1000.0),
                    connections,
                    daemon,
                    r,
                );
            }
            ratios.push((
                size,
                connections,
                ours.rate / theirs.rate,
                ours.cpu_per_1000 / theirs.cpu_per_1000,
            ));
        }
    }
    println!("\n| size | connections | msgs/s atsms/opendkim | CPU per msg atsms/opendkim |");
    println!("|---|---|---|---|");
    for (size, connections, rate, cpu) in ratios {
        println!(
            "| {:.1} KB | {connections} | {rate:.2}x | {cpu:.2}x |",
            size as f64 / 1000.0
        );
    }
}
