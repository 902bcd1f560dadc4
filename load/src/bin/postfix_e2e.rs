//! What the milter adds to a real MTA's cost: the same signed messages through a throwaway
//! Postfix with and without `smtpd_milters = atsms-milter`, N SMTP connections at once. Mail is
//! delivered to Postfix's discard transport, so the figures are Postfix's receiving path
//! (smtpd, cleanup, the queue file) plus, in one of the two, the milter.
//!
//! Run by scripts/bench/postfix-e2e.sh (as root: Postfix's master runs as root):
//!   scripts/bench/load.sh postfix_e2e [--messages 2000] [--connections 1,16] [--size 4096]
//!
//! `--tcp`: everything between Postfix and the programs over loopback TCP, side by side in one
//! run — smtpd_milters = OpenDKIM (inet) against atsms-milter (inet), the message carrying both
//! a DKIM and an AT-SMS signature; and Postfix's LMTP client (`lmtp:inet:`) delivering to
//! atsms-milter's LMTP against Dovecot's LMTP, both into Maildirs with their default
//! durability, timed until the last message is in `new/`. Needs OpenDKIM and Dovecot's LMTP
//! (the script installs them).

use atsms_testkit as support;
use atsms_testkit::load as common;

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

/// CPU seconds of process `root` and every process below it (Dovecot's lmtp and auth
/// children), with what their exited children spent.
fn tree_cpu(root: u32) -> f64 {
    let mut parents = std::collections::HashMap::new();
    let mut ticks = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let fields = common::proc_stat(pid);
        if fields.len() > 14 {
            parents.insert(pid, fields[1] as u32);
            ticks.insert(pid, fields[11..=14].iter().sum::<f64>());
        }
    }
    let below = |mut pid: u32| loop {
        if pid == root {
            return true;
        }
        match parents.get(&pid) {
            Some(&parent) if parent != 0 && parent != pid => pid = parent,
            _ => return false,
        }
    };
    ticks
        .iter()
        .filter(|(pid, _)| below(**pid))
        .map(|(_, t)| t)
        .sum::<f64>()
        / common::ticks_per_second()
}

/// Sends `messages` over `n` SMTP connections to `port` (after a warm-up of 20) and returns
/// messages/s, p50 and p99 of the DATA reply (ms), and the machine's CPU ms per message. With
/// `delivered` (a `new/` directory and how many files it held before), the clock runs until
/// every message is in it: the rate is then end to end. With `server` (a process id), also
/// that process tree's CPU ms per message.
async fn measure(
    port: u16,
    message: &Arc<Vec<u8>>,
    messages: usize,
    n: usize,
    delivered: Option<(&std::path::Path, usize)>,
    server: Option<u32>,
) -> (f64, f64, f64, f64, f64) {
    // Warm-up: connections, the identity cache, Postfix's processes.
    client(port, message.clone(), 20).await;
    if let Some((dir, before)) = delivered {
        wait_for_count(dir, before + 20).await;
    }
    let busy = busy_seconds();
    let server_cpu = server.map_or(0.0, tree_cpu);
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(client(
                port,
                message.clone(),
                messages / n + usize::from(i < messages % n),
            ))
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    if let Some((dir, before)) = delivered {
        wait_for_count(dir, before + 20 + messages).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (busy_seconds() - busy) / latencies.len() as f64 * 1e3;
    let server_cpu = (server.map_or(0.0, tree_cpu) - server_cpu) / latencies.len() as f64 * 1e3;
    latencies.sort();
    let at = |q: f64| {
        latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1e3
    };
    (
        latencies.len() as f64 / elapsed,
        at(0.5),
        at(0.99),
        cpu,
        server_cpu,
    )
}

fn count_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

async fn wait_for_count(dir: &std::path::Path, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while count_files(dir) < count {
        assert!(
            Instant::now() < deadline,
            "{}: {} of {count}",
            dir.display(),
            count_files(dir)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A throwaway Dovecot with only LMTP, on a loopback TCP port, delivering bob@mx.example.net
/// into `mail/mx.example.net/bob/Maildir`.
struct Dovecot {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    mail: std::path::PathBuf,
}

impl Dovecot {
    fn start(port: u16) -> Dovecot {
        let dir = support::public_tempdir();
        let d = dir.path().display();
        let mail = dir.path().join("mail");
        for sub in ["run", "state", "mail"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let chown = std::process::Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(&mail)
            .status()
            .unwrap();
        assert!(chown.success());
        std::fs::write(
            dir.path().join("users"),
            format!(
                "bob@mx.example.net::65534:65534::{}/mx.example.net/bob\n",
                mail.display()
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("dovecot.conf"),
            format!(
                "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\nprotocols = lmtp\nlisten = 127.0.0.1\nssl = no\ndefault_internal_user = nobody\ndefault_internal_group = nogroup\ndefault_login_user = nobody\nfirst_valid_uid = 1\nmail_location = maildir:~/Maildir\nuserdb {{\n  driver = passwd-file\n  args = username_format=%u {d}/users\n}}\npassdb {{\n  driver = passwd-file\n  args = username_format=%u {d}/users\n}}\nservice lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n"
            ),
        )
        .unwrap();
        let child = std::process::Command::new("dovecot")
            .args(["-F", "-c"])
            .arg(dir.path().join("dovecot.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        common::wait_for_port(port, "Dovecot");
        Dovecot {
            child,
            _dir: dir,
            mail,
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

async fn tcp_main(messages: usize, connections: &[usize], size: usize) {
    let world = VectorWorld::start();
    let work = common::work_dir("bench-e2e-tcp");
    let (milter_port, lmtp_port, dkim_port, dovecot_port) =
        (free_port(), free_port(), free_port(), free_port());
    let mail = support::public_tempdir();
    let config = world.lmtp_daemon_config(
        &format!("inet:127.0.0.1:{lmtp_port}"),
        mail.path(),
        &format!("[milter]\nlisten = \"inet:127.0.0.1:{milter_port}\"\n\n[log]\nlevel = \"warn\"\n\n[control]\nsocket = \"{}/control.sock\"\n", work.display()),
        "trusted_networks = []\nreplay = false",
    );
    let atsms = Daemon::start(&config, milter_port);
    let dkim_signer = common::OpenDkim::signer(&work);
    let opendkim = common::OpenDkim::verifier_inet(&work, dkim_port);
    let dovecot = Dovecot::start(dovecot_port);
    let discard = "virtual_transport = discard:";
    let postfix = |main_cf: String| Postfix::start(&["bob"], &main_cf);
    let plain = postfix(discard.to_string());
    let with_opendkim = postfix(format!(
        "{discard}\nsmtpd_milters = inet:127.0.0.1:{dkim_port}"
    ));
    let with_atsms = postfix(format!(
        "{discard}\nsmtpd_milters = inet:127.0.0.1:{milter_port}"
    ));
    let to_atsms = postfix(format!(
        "virtual_transport = lmtp:inet:127.0.0.1:{lmtp_port}"
    ));
    let to_dovecot = postfix(format!(
        "virtual_transport = lmtp:inet:127.0.0.1:{dovecot_port}"
    ));

    // One message with both signatures: AT-SMS by alice, then DKIM over the result.
    let signed = world.sign_now("did:plc:ofurdhfyhjhgomvfygxergep", body(size).as_bytes());
    let message = Arc::new(common::OpenDkim::signed(&dkim_signer, &signed).await);

    let (atsms_pid, opendkim_pid, dovecot_pid) =
        (atsms.pid(), opendkim.child.id(), dovecot.child.id());
    println!("Milters over TCP (Postfix's discard transport):\n");
    println!(
        "| connections | Postfix | msgs/s | p50 ms | p99 ms | machine CPU ms / msg | milter CPU ms / msg |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &n in connections {
        let mut rows = Vec::new();
        for (name, postfix, pid) in [
            ("without milter", &plain, None),
            ("with OpenDKIM (inet)", &with_opendkim, Some(opendkim_pid)),
            ("with atsms-milter (inet)", &with_atsms, Some(atsms_pid)),
        ] {
            let (rate, p50, p99, cpu, own) =
                measure(postfix.smtp_port, &message, messages, n, None, pid).await;
            let own = pid.map_or(String::new(), |_| format!("{own:.3}"));
            println!("| {n} | {name} | {rate:.0} | {p50:.2} | {p99:.2} | {cpu:.2} | {own} |");
            rows.push((rate, p50));
        }
        println!(
            "| {n} | atsms-milter / OpenDKIM | {:.2}x msgs/s | {:.2}x | | | |",
            rows[2].0 / rows[1].0,
            rows[2].1 / rows[1].1
        );
    }
    println!("\nLMTP over TCP (Postfix's lmtp:inet: client), until the last message is in new/:\n");
    println!(
        "| connections | Postfix delivers to | msgs/s end to end | p50 ms | p99 ms | machine CPU ms / msg | LMTP server CPU ms / msg |"
    );
    println!("|---|---|---|---|---|---|---|");
    let atsms_new = mail.path().join("mx.example.net/bob/Maildir/new");
    let dovecot_new = dovecot.mail.join("mx.example.net/bob/Maildir/new");
    for &n in connections {
        let mut rows = Vec::new();
        for (name, postfix, dir, pid) in [
            ("atsms-milter LMTP (inet)", &to_atsms, &atsms_new, atsms_pid),
            (
                "Dovecot LMTP (inet)",
                &to_dovecot,
                &dovecot_new,
                dovecot_pid,
            ),
        ] {
            let before = count_files(dir);
            let (rate, p50, p99, cpu, own) = measure(
                postfix.smtp_port,
                &message,
                messages,
                n,
                Some((dir, before)),
                Some(pid),
            )
            .await;
            println!("| {n} | {name} | {rate:.0} | {p50:.2} | {p99:.2} | {cpu:.2} | {own:.3} |");
            rows.push((rate, cpu, own));
        }
        println!(
            "| {n} | atsms-milter / Dovecot | {:.2}x msgs/s | | | {:.2}x | {:.2}x |",
            rows[0].0 / rows[1].0,
            rows[0].1 / rows[1].1,
            rows[0].2 / rows[1].2
        );
    }
}

fn body(size: usize) -> String {
    let mut body = String::new();
    while body.len() < size {
        body.push_str(
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\r\n",
        );
    }
    format!(
        "From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: e2e\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\nMessage-ID: <e2e@alice.example.com>\r\n\r\n{body}"
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let messages = common::numbers(&args, "--messages", "2000")[0];
    let connections = common::numbers(&args, "--connections", "1,16");
    let size = common::numbers(&args, "--size", "4096")[0];
    if args.iter().any(|a| a == "--tcp") {
        return tcp_main(messages, &connections, size).await;
    }

    let world = VectorWorld::start();
    let milter_port = free_port();
    let config = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{milter_port}\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\nreplay = false\n\n[log]\nlevel = \"warn\"\n\n[control]\nsocket = \"{}/target/bench-e2e-control.sock\"\n",
        world.resolver_toml(),
        support::project().display()
    );
    let _milter = Daemon::start(&config, milter_port);
    let discard = "virtual_transport = discard:";
    let plain = Postfix::start(&["bob"], discard);
    let with_milter = Postfix::start(
        &["bob"],
        &format!("{discard}\nsmtpd_milters = inet:127.0.0.1:{milter_port}"),
    );

    let message =
        Arc::new(world.sign_now("did:plc:ofurdhfyhjhgomvfygxergep", body(size).as_bytes()));

    println!("| connections | Postfix | msgs/s | p50 ms | p99 ms | machine CPU ms / msg |");
    println!("|---|---|---|---|---|---|");
    for &n in &connections {
        let mut rates = Vec::new();
        for (name, postfix) in [
            ("without milter", &plain),
            ("with atsms-milter", &with_milter),
        ] {
            let (rate, p50, p99, cpu, _) =
                measure(postfix.smtp_port, &message, messages, n, None, None).await;
            rates.push((rate, cpu));
            println!("| {n} | {name} | {rate:.0} | {p50:.2} | {p99:.2} | {cpu:.2} |");
        }
        println!(
            "| {n} | milter adds | {:.0}% fewer msgs/s | | | +{:.2} ms CPU |",
            (1.0 - rates[1].0 / rates[0].0) * 100.0,
            rates[1].1 - rates[0].1
        );
    }
}
