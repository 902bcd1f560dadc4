//! Milter load, side by side: atsms-milter verifying AT-SMS signatures and OpenDKIM verifying
//! DKIM signatures on messages of the same size, driven by the same client (indymilter-test
//! playing the MTA) over unix sockets, N connections at once. Per run: messages per second,
//! p50/p99 end-of-message latency, CPU seconds per 1 000 messages and peak RSS of the daemon.
//!
//! Run by scripts/bench/milter.sh (which installs OpenDKIM if missing):
//!   cargo bench --bench milter_load -- [--sizes 4096,65536,1048576] [--concurrency 1,16,128] [--messages 3000]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use atsms_milter::crypto::{Alg, SigningKey};
use atsms_milter::envelope::sign;
use atsms_milter::message::read_message;
use indymilter_test::{EomAction, ProtoOpts, TestConnection};

const DID: &str = "did:plc:ofurdhfyhjhgomvfygxergep";

struct Daemon {
    name: &'static str,
    child: Child,
    socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "no socket at {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU seconds (user + system) and peak RSS (KiB) of a process, from /proc.
fn usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (ticks(11) + ticks(12)) / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

/// A message's fields (value after the colon, folds as bare LF, as Postfix sends them) and body.
type Message = (Vec<(String, String)>, Vec<u8>);

fn split(raw: &[u8]) -> Message {
    let parsed = read_message(raw).unwrap();
    let fields = parsed
        .headers
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                String::from_utf8_lossy(&f.value).replace("\r\n", "\n"),
            )
        })
        .collect();
    let body_start = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (fields, raw[body_start..].to_vec())
}

async fn send(conn: &mut TestConnection, (fields, body): &Message) -> (Vec<EomAction>, Duration) {
    conn.mail(["<sender@example.com>"]).await.unwrap();
    conn.rcpt(["<bob@mx.example.net>"]).await.unwrap();
    // Like Postfix: the stages the milter did not negotiate away are sent.
    let opts = conn.negotiated_opts();
    if !opts.contains(ProtoOpts::NO_DATA) {
        conn.data().await.unwrap();
    }
    for (name, value) in fields {
        conn.header(name.as_str(), value.as_str()).await.unwrap();
    }
    if !opts.contains(ProtoOpts::NO_EOH) {
        conn.eoh().await.unwrap();
    }
    // libmilter's largest body chunk.
    for chunk in body.chunks(65_535) {
        conn.body(chunk.to_vec()).await.unwrap();
    }
    let started = Instant::now();
    let (actions, _) = conn.eom().await.unwrap();
    (actions.actions, started.elapsed())
}

async fn open(socket: &Path) -> TestConnection {
    let mut conn = TestConnection::configure()
        .read_timeout(Duration::from_secs(120))
        .open_unix(socket)
        .await
        .unwrap();
    conn.connect(
        "client.example",
        std::net::SocketAddr::from(([192, 0, 2, 1], 4000)),
    )
    .await
    .unwrap();
    conn
}

struct Run {
    rate: f64,
    p50: Duration,
    p99: Duration,
    cpu_per_1000: f64,
    peak_rss_kib: u64,
}

async fn load(
    daemon: &Daemon,
    message: &Arc<Message>,
    connections: usize,
    messages: usize,
    expect: &'static str,
) -> Run {
    let pid = daemon.child.id();
    let (cpu_before, _) = usage(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let (socket, message) = (daemon.socket.clone(), message.clone());
        let share = messages / connections + usize::from(c < messages % connections);
        tasks.push(tokio::spawn(async move {
            let mut conn = open(&socket).await;
            let mut latencies = Vec::with_capacity(share);
            for _ in 0..share {
                let (actions, took) = send(&mut conn, &message).await;
                let verdict = actions.iter().any(|a| match a {
                    EomAction::InsertHeader { value, .. } | EomAction::AddHeader { value, .. } => {
                        String::from_utf8_lossy(value.to_bytes()).contains(expect)
                    }
                    _ => false,
                });
                assert!(verdict, "no {expect} in {actions:?}");
                latencies.push(took);
            }
            latencies
        }));
    }
    let mut latencies = Vec::with_capacity(messages);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    let (cpu_after, peak) = usage(pid);
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Run {
        rate: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
        cpu_per_1000: (cpu_after - cpu_before) / latencies.len() as f64 * 1000.0,
        peak_rss_kib: peak,
    }
}

fn base_message(size: usize) -> Vec<u8> {
    let mut m = format!("From: Alice <alice@example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: load {size}\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\nMessage-ID: <load-{size}@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").into_bytes();
    let line =
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}

/// Current RSS (KiB) of a process.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

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

    // OpenDKIM checks that no directory above its key is writable by others: not /tmp.
    let work = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-milter");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let run = |cmd: &mut Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    run(Command::new("opendkim-genkey")
        .args(["-b", "2048", "-d", "example.com", "-s", "bench", "-D"])
        .arg(&work));
    let txt = std::fs::read_to_string(work.join("bench.txt")).unwrap();
    let record: String = txt.split('"').skip(1).step_by(2).collect();
    std::fs::write(
        work.join("keys"),
        format!("bench._domainkey.example.com {record}\n"),
    )
    .unwrap();
    run(Command::new("chown")
        .args(["-R", "opendkim:opendkim"])
        .arg(&work));
    let conf = |name: &str, body: String| {
        let path = work.join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    let w = work.display();
    let signer_conf = conf(
        "sign.conf",
        format!(
            "Mode s\nDomain example.com\nSelector bench\nKeyFile {w}/bench.private\nSocket local:{w}/sign.sock\nUserID opendkim\nBackground no\nSyslog no\nInternalHosts 0.0.0.0/0\nCanonicalization relaxed/relaxed\nRequireSafeKeys no\n"
        ),
    );
    let verify_conf = conf(
        "verify.conf",
        format!(
            "Mode v\nSocket local:{w}/opendkim.sock\nUserID opendkim\nBackground no\nSyslog no\nTestPublicKeys {w}/keys\nPeerList 255.255.255.255\nInternalHosts 255.255.255.255\nAuthservID mx.test\n"
        ),
    );
    let start_opendkim = |name, conf: &Path, socket: PathBuf| {
        let child = Command::new("opendkim")
            .arg("-x")
            .arg(conf)
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_socket(&socket);
        Daemon {
            name,
            child,
            socket,
        }
    };
    let signer = start_opendkim("opendkim-signer", &signer_conf, work.join("sign.sock"));
    let opendkim = start_opendkim("opendkim", &verify_conf, work.join("opendkim.sock"));

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
    let child = Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
        .arg("serve")
        .arg("--config")
        .arg(&atsms_conf)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_socket(&work.join("atsms.sock"));
    let atsms = Daemon {
        name: "atsms-milter",
        child,
        socket: work.join("atsms.sock"),
    };

    println!(
        "| size | connections | program | msgs/s | p50 ms | p99 ms | CPU s / 1000 msgs | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for &size in &sizes {
        let base = base_message(size);
        // DKIM: OpenDKIM signs; AT-SMS: our signer. Same bytes otherwise.
        let mut conn = open(&signer.socket).await;
        let (actions, _) = send(&mut conn, &split(&base)).await;
        let dkim = actions
            .iter()
            .find_map(|a| match a {
                EomAction::InsertHeader { name, value, .. }
                | EomAction::AddHeader { name, value }
                    if name.to_bytes() == b"DKIM-Signature" =>
                {
                    Some(String::from_utf8_lossy(value.to_bytes()).into_owned())
                }
                _ => None,
            })
            .expect("OpenDKIM signed the message");
        let dkim_message = [
            format!("DKIM-Signature:{dkim}\r\n")
                .replace('\n', "\r\n")
                .replace("\r\r\n", "\r\n")
                .into_bytes(),
            base.clone(),
        ]
        .concat();
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
                println!(
                    "| {} KiB | {connections} | {} | {:.0} | {:.2} | {:.2} | {:.3} | {:.1} |",
                    size / 1024,
                    daemon.name,
                    r.rate,
                    r.p50.as_secs_f64() * 1e3,
                    r.p99.as_secs_f64() * 1e3,
                    r.cpu_per_1000,
                    r.peak_rss_kib as f64 / 1024.0
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
