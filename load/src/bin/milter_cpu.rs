//! CPU per message of the verifying milter against OpenDKIM's, in one run, with a light
//! client: one thread per connection, blocking I/O on unix sockets (`milter_wire`), each
//! message's packets written at once. Every feature that is on by default stays on in
//! atsms-milter (replay detection, metrics, one log line per message at `info`, written to a
//! file); each message is signed on its own (its own `jti`) before the clock starts, so no
//! message is a replay of another. OpenDKIM verifies a DKIM signature (RSA-2048,
//! relaxed/relaxed) on the same message.
//!
//! Printed: messages per second, p50/p99 end-of-message latency, the daemon's CPU per
//! message (from /proc), and the client's own CPU per message (getrusage), so the client's
//! cost is stated beside the figures it produced.
//!
//!   scripts/bench/load.sh milter_cpu [--messages 8000] [--connections 16] [--size 4800]
//!   [--log LEVEL]    (atsms-milter's `log.level`, `info` by default: `warn` drops the line per
//!                    message, to see what it costs)
//!   [--only atsms]   (PERF=1 in the environment: print the daemon's pid and wait for Enter
//!   before the timed run, to attach `perf record -g -p PID`)

use atsms_testkit::load as common;
use atsms_testkit::milter_wire::{MilterClient, own_cpu};

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atsms_milter::format::crypto::{Alg, SigningKey};
use atsms_milter::format::envelope::sign;
use atsms_milter::format::message::read_message;

const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

type Fields = Vec<(String, String)>;

struct Figures {
    rate: f64,
    p50: Duration,
    p99: Duration,
    daemon_us: f64,
    client_us: f64,
}

/// Sends `messages[i]` over `connections` threads, each its own connection; `expect` must be
/// in a field the milter adds to each.
fn run(
    socket: &Path,
    pid: u32,
    messages: &Arc<Vec<(Fields, Vec<u8>)>>,
    connections: usize,
    expect: &'static str,
) -> Figures {
    let (cpu_before, _) = common::usage(pid);
    let own_before = own_cpu();
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let (socket, messages) = (socket.to_path_buf(), messages.clone());
            std::thread::spawn(move || {
                let mut client = MilterClient::connect(&socket).expect("connect");
                let mut took = Vec::new();
                for (i, (fields, body)) in messages.iter().enumerate().skip(c).step_by(connections)
                {
                    let eom = client
                        .send(
                            &format!("Q{i:X}"),
                            "sender@example.com",
                            "bob@mx.example.net",
                            fields,
                            body,
                        )
                        .expect("a message");
                    assert!(eom.added_contains(expect), "no {expect}: {eom:?}");
                    took.push(eom.took);
                }
                took
            })
        })
        .collect();
    let mut latencies: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("a client thread"))
        .collect();
    let elapsed = started.elapsed();
    let own = own_cpu() - own_before;
    let (cpu_after, _) = common::usage(pid);
    latencies.sort();
    let n = latencies.len() as f64;
    let at = |q: f64| latencies[((n * q) as usize).min(latencies.len() - 1)];
    Figures {
        rate: n / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        daemon_us: (cpu_after - cpu_before) / n * 1e6,
        client_us: own.as_secs_f64() / n * 1e6,
    }
}

fn fields_and_body(raw: &[u8]) -> (Fields, Vec<u8>) {
    common::split(raw)
}

/// The daemon, killed when dropped (a panic of this program leaves no daemon behind).
fn start_atsms(work: &Path, plc: &str, log_level: &str) -> common::Daemon {
    let w = work.display();
    let socket = work.join("atsms.sock");
    let conf = work.join("atsms.toml");
    std::fs::write(
        &conf,
        format!(
            "[milter]\nlisten = \"unix:{w}/atsms.sock\"\n\n[resolver]\nplc_urls = [\"{plc}\"]\nallow_private_addresses = true\n\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n\n[control]\nsocket = \"{w}/control.sock\"\n\n[log]\nlevel = \"{log_level}\"\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(work.join("atsms.log")).unwrap();
    let child = std::process::Command::new(atsms_testkit::binary())
        .arg("serve")
        .arg("--config")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("atsms-milter");
    common::wait_for_socket(&socket);
    common::Daemon {
        name: "atsms-milter",
        child,
        socket,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count = common::numbers(&args, "--messages", "8000")[0];
    let connections = common::numbers(&args, "--connections", "16")[0];
    let size = common::numbers(&args, "--size", "4800")[0];
    let only_atsms = args.windows(2).any(|w| w[0] == "--only" && w[1] == "atsms");
    let rt = tokio::runtime::Runtime::new().unwrap();

    let work = common::work_dir("bench-milter-cpu");
    let key = SigningKey::generate(Alg::Es256k).unwrap();
    let document = serde_json::json!({
        "id": DID,
        "verificationMethod": [{"id": "#atproto", "type": "Multikey", "controller": DID, "publicKeyMultibase": key.public_key().to_multikey()}],
    });
    let plc = common::serve_document(document.to_string());
    let log_level = args
        .windows(2)
        .find(|w| w[0] == "--log")
        .map_or("info", |w| w[1].as_str());
    let atsms = start_atsms(&work, &plc, log_level);
    let atsms_socket = atsms.socket.clone();

    // Each message signed on its own: replay detection is on.
    let base = common::base_message(size);
    let parsed = read_message(&base[..]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let kid = format!("{DID}#atproto");
    let sign_one = || {
        let request = sign::SignRequest {
            key: &key,
            kid: &kid,
            now,
            ttl: 86400,
            rcpt: &[],
            jti: sign::random_jti(),
        };
        let token = sign::sign_token(&request, &parsed.headers, parsed.body_hash).unwrap();
        fields_and_body(
            &[
                sign::format_field(DID, &token, "\r\n").into_bytes(),
                b"\r\n".to_vec(),
                base.clone(),
            ]
            .concat(),
        )
    };
    let warm: Arc<Vec<_>> = Arc::new((0..50).map(|_| sign_one()).collect());
    let ours: Arc<Vec<_>> = Arc::new((0..count).map(|_| sign_one()).collect());
    let pid = atsms.child.id();
    run(&atsms_socket, pid, &warm, 1, "atsms=pass");

    let theirs = (!only_atsms).then(|| {
        let signer = common::OpenDkim::signer(&work);
        let opendkim = common::OpenDkim::verifier(&work);
        let dkim = rt.block_on(common::OpenDkim::signed(&signer, &base));
        let message = fields_and_body(&dkim);
        let warm = Arc::new(vec![message.clone(); 50]);
        run(&opendkim.socket, opendkim.child.id(), &warm, 1, "dkim=pass");
        (signer, opendkim, Arc::new(vec![message; count]))
    });

    if std::env::var_os("PERF").is_some() {
        eprintln!("atsms-milter pid {pid}: attach now (perf record -g -p {pid}), then press Enter");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
    }
    println!(
        "{count} messages of {size} bytes, {connections} connections (one blocking thread each), unix sockets\n"
    );
    println!("| program | msgs/s | p50 ms | p99 ms | daemon CPU µs / msg | client CPU µs / msg |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, f: &Figures| {
        println!(
            "| {name} | {:.0} | {:.2} | {:.2} | {:.0} | {:.0} |",
            f.rate,
            f.p50.as_secs_f64() * 1e3,
            f.p99.as_secs_f64() * 1e3,
            f.daemon_us,
            f.client_us
        );
    };
    let a = run(&atsms_socket, pid, &ours, connections, "atsms=pass");
    row("atsms-milter (ES256K)", &a);
    if let Some((_signer, opendkim, messages)) = &theirs {
        let o = run(
            &opendkim.socket,
            opendkim.child.id(),
            messages,
            connections,
            "dkim=pass",
        );
        row("OpenDKIM 2.11 (RSA-2048)", &o);
        println!(
            "\natsms-milter / OpenDKIM: {:.2}x the rate at {:.2}x the CPU per message",
            a.rate / o.rate,
            a.daemon_us / o.daemon_us
        );
    }
    drop(atsms);
}
