//! What the milter adds to a real MTA's cost: the same signed messages through a throwaway
//! Postfix with and without `smtpd_milters = atsms-milter`, N SMTP connections at once. Mail is
//! delivered to Postfix's discard transport, so the figures are Postfix's receiving path
//! (smtpd, cleanup, the queue file) plus, in one of the two, the milter.
//!
//! Run by scripts/bench/postfix-e2e.sh (as root: Postfix's master runs as root):
//!   cargo bench --bench postfix_e2e -- [--messages 2000] [--connections 1,16] [--size 4096]

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::daemon::Daemon;
use support::postfix::{Postfix, free_port};
use support::vectors::VectorWorld;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let fields: Vec<f64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .take(7)
        .map(|v| v.parse().unwrap())
        .collect();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (fields[0] + fields[1] + fields[2] + fields[5] + fields[6]) / hz
}

async fn reply<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> String {
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert!(!line.is_empty(), "connection closed");
        if line.as_bytes().get(3) != Some(&b'-') {
            return line;
        }
    }
}

/// Sends `count` copies of `message` over one SMTP connection; returns each DATA's latency.
async fn client(port: u16, message: Arc<Vec<u8>>, count: usize) -> Vec<Duration> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    reply(&mut read).await;
    write.write_all(b"EHLO client.example\r\n").await.unwrap();
    reply(&mut read).await;
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        write
            .write_all(b"MAIL FROM:<alice@alice.example.com>\r\n")
            .await
            .unwrap();
        assert!(reply(&mut read).await.starts_with("250"));
        write
            .write_all(b"RCPT TO:<bob@mx.example.net>\r\n")
            .await
            .unwrap();
        assert!(reply(&mut read).await.starts_with("250"));
        write.write_all(b"DATA\r\n").await.unwrap();
        assert!(reply(&mut read).await.starts_with("354"));
        let started = Instant::now();
        write.write_all(&message).await.unwrap();
        write.write_all(b".\r\n").await.unwrap();
        let answer = reply(&mut read).await;
        assert!(answer.starts_with("250"), "{answer}");
        latencies.push(started.elapsed());
    }
    write.write_all(b"QUIT\r\n").await.unwrap();
    latencies
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let messages = common::numbers(&args, "--messages", "2000")[0];
    let connections = common::numbers(&args, "--connections", "1,16");
    let size = common::numbers(&args, "--size", "4096")[0];

    let world = VectorWorld::start();
    let milter_port = free_port();
    let config = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{milter_port}\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\nreplay = false\n\n[log]\nlevel = \"warn\"\n\n[control]\nsocket = \"{}/target/bench-e2e-control.sock\"\n",
        world.resolver_toml(),
        env!("CARGO_MANIFEST_DIR")
    );
    let _milter = Daemon::start(&config, milter_port);
    let discard = "virtual_transport = discard:";
    let plain = Postfix::start(&["bob"], discard);
    let with_milter = Postfix::start(
        &["bob"],
        &format!("{discard}\nsmtpd_milters = inet:127.0.0.1:{milter_port}"),
    );

    let mut body = String::new();
    while body.len() < size {
        body.push_str(
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\r\n",
        );
    }
    let unsigned = format!(
        "From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: e2e\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\nMessage-ID: <e2e@alice.example.com>\r\n\r\n{body}"
    );
    let message = Arc::new(world.sign_now("did:plc:ofurdhfyhjhgomvfygxergep", unsigned.as_bytes()));

    println!("| connections | Postfix | msgs/s | p50 ms | p99 ms | machine CPU ms / msg |");
    println!("|---|---|---|---|---|---|");
    for &n in &connections {
        let mut rates = Vec::new();
        for (name, postfix) in [
            ("without milter", &plain),
            ("with atsms-milter", &with_milter),
        ] {
            // Warm-up: connections, the identity cache, Postfix's processes.
            client(postfix.smtp_port, message.clone(), 20).await;
            let busy = busy_seconds();
            let started = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    tokio::spawn(client(
                        postfix.smtp_port,
                        message.clone(),
                        messages / n + usize::from(i < messages % n),
                    ))
                })
                .collect();
            let mut latencies = Vec::new();
            for t in tasks {
                latencies.extend(t.await.unwrap());
            }
            let elapsed = started.elapsed().as_secs_f64();
            let cpu = (busy_seconds() - busy) / latencies.len() as f64 * 1e3;
            latencies.sort();
            let at = |q: f64| {
                latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)]
                    .as_secs_f64()
                    * 1e3
            };
            let rate = latencies.len() as f64 / elapsed;
            rates.push((rate, cpu));
            println!(
                "| {n} | {name} | {rate:.0} | {:.2} | {:.2} | {cpu:.2} |",
                at(0.5),
                at(0.99)
            );
        }
        println!(
            "| {n} | milter adds | {:.0}% fewer msgs/s | | | +{:.2} ms CPU |",
            (1.0 - rates[1].0 / rates[0].0) * 100.0,
            rates[1].1 - rates[0].1
        );
    }
}
