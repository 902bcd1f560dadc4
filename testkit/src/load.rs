//! Helpers shared by the bench binaries.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};

use atsms_milter::format::message::read_message;
use indymilter_test::{EomAction, ProtoOpts, TestConnection};

/// Serves one JSON document to every request on a loopback port (a PLC directory that knows
/// one DID) until the process ends; returns its URL.
pub fn serve_document(document: String) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let reply = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{document}",
                document.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    url
}

/// `--name 1,2,3` from the command line, or `default`.
pub fn numbers(args: &[String], name: &str, default: &str) -> Vec<usize> {
    let value = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
        .unwrap_or(default);
    value
        .split(',')
        .map(|v| v.parse().expect("a number"))
        .collect()
}

pub struct Daemon {
    pub name: &'static str,
    pub child: Child,
    pub socket: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts connections on loopback TCP `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// This bench binary again, with `args`, as a child whose first line of output is the loopback
/// port it serves on (a directory kept out of the measured process).
pub fn spawn_child(args: &[&str]) -> (Child, String) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_string())
}

pub use crate::ids;

pub fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(Instant::now() < deadline, "no socket at {}", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The numeric fields of `/proc/PID/stat` after the command name, from the state on (the
/// state itself reads 0): index 1 the parent, 11 and 12 user and system ticks, 13 and 14
/// those of waited-for children. Empty for a process that is gone.
pub fn proc_stat(pid: u32) -> Vec<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect()
}

/// Clock ticks per second, the unit of /proc's CPU times.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// CPU seconds (user + system) and peak RSS (KiB) of a process, from /proc.
pub fn usage(pid: u32) -> (f64, u64) {
    let fields = proc_stat(pid);
    let ticks = |i: usize| fields.get(i).copied().unwrap_or(0.0);
    let cpu = (ticks(11) + ticks(12)) / ticks_per_second();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

/// A message's fields (value after the colon, folds as bare LF, as Postfix sends them) and body.
pub type Message = (Vec<(String, String)>, Vec<u8>);

pub fn split(raw: &[u8]) -> Message {
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

pub async fn send(
    conn: &mut TestConnection,
    (fields, body): &Message,
) -> (Vec<EomAction>, Duration) {
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

pub async fn open(socket: &Path) -> TestConnection {
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

pub struct Run {
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub cpu_per_1000: f64,
    pub peak_rss_kib: u64,
}

/// Sends `messages` messages over `connections` connections at once; each end-of-message's
/// actions must contain a header field (inserted or added) whose name or value contains
/// `expect`.
pub async fn load(
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
                    EomAction::InsertHeader { name, value, .. }
                    | EomAction::AddHeader { name, value } => {
                        name.to_bytes() == expect.as_bytes()
                            || String::from_utf8_lossy(value.to_bytes()).contains(expect)
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

pub fn base_message(size: usize) -> Vec<u8> {
    let mut m = format!("From: Alice <alice@example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: load {size}\r\nDate: Thu, 26 Nov 2026 09:00:00 +0000\r\nMessage-ID: <load-{size}@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n").into_bytes();
    let line =
        b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor\r\n";
    while m.len() < size {
        m.extend_from_slice(line);
    }
    m
}

/// Current RSS (KiB) of a process.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// A fresh work directory under target/ (OpenDKIM checks that no directory above its key is
/// writable by others: not /tmp).
pub fn work_dir(name: &str) -> PathBuf {
    let work = crate::project().join("target").join(name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    work
}

/// OpenDKIM 2.11 as the baseline: an RSA-2048 key for example.com (selector `bench`), published
/// to the verifier through `TestPublicKeys` (no DNS).
pub struct OpenDkim;

impl OpenDkim {
    fn key(work: &Path) {
        if work.join("bench.private").exists() {
            return;
        }
        let run =
            |cmd: &mut std::process::Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
        run(std::process::Command::new("opendkim-genkey")
            .args(["-b", "2048", "-d", "example.com", "-s", "bench", "-D"])
            .arg(work));
        let txt = std::fs::read_to_string(work.join("bench.txt")).unwrap();
        let record: String = txt.split('"').skip(1).step_by(2).collect();
        std::fs::write(
            work.join("keys"),
            format!("bench._domainkey.example.com {record}\n"),
        )
        .unwrap();
        run(std::process::Command::new("chown")
            .args(["-R", "opendkim:opendkim"])
            .arg(work));
    }

    /// Starts OpenDKIM with `conf`, listening on the unix socket `socket` under `work` or,
    /// when `port` is given, on that loopback TCP port.
    fn start(
        work: &Path,
        name: &'static str,
        file: &str,
        conf: String,
        socket: &str,
        port: Option<u16>,
    ) -> Daemon {
        OpenDkim::key(work);
        let path = work.join(file);
        std::fs::write(&path, conf).unwrap();
        let child = std::process::Command::new("opendkim")
            .arg("-x")
            .arg(&path)
            .arg("-f")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let socket = work.join(socket);
        match port {
            Some(port) => wait_for_port(port, name),
            None => wait_for_socket(&socket),
        }
        Daemon {
            name,
            child,
            socket,
        }
    }

    /// Signs mail from example.com and its subdomains (d=example.com; relaxed/relaxed, as
    /// atsms-milter canonicalizes). OpenDKIM accepts a message from any other domain at the
    /// end of its header and takes nothing more of it.
    pub fn signer(work: &Path) -> Daemon {
        let w = work.display();
        OpenDkim::start(
            work,
            "opendkim-signer",
            "sign.conf",
            format!(
                "Mode s\nDomain example.com\nSelector bench\nKeyFile {w}/bench.private\nSocket local:{w}/sign.sock\nUserID opendkim\nBackground no\nSyslog no\nInternalHosts 0.0.0.0/0\nSubDomains yes\nCanonicalization relaxed/relaxed\nRequireSafeKeys no\n"
            ),
            "sign.sock",
            None,
        )
    }

    /// Verifies everything, authserv-id mx.test.
    pub fn verifier(work: &Path) -> Daemon {
        let socket = format!("local:{}/opendkim.sock", work.display());
        OpenDkim::verifying(work, "opendkim", "verify.conf", &socket, None)
    }

    /// As `verifier`, listening on loopback TCP `port` (`Socket inet:PORT@127.0.0.1`).
    pub fn verifier_inet(work: &Path, port: u16) -> Daemon {
        let socket = format!("inet:{port}@127.0.0.1");
        OpenDkim::verifying(
            work,
            "opendkim (inet)",
            "verify-inet.conf",
            &socket,
            Some(port),
        )
    }

    /// A verifier on `socket` (OpenDKIM's `Socket` value): the TCP `port` in it, or
    /// `opendkim.sock` under `work`.
    fn verifying(
        work: &Path,
        name: &'static str,
        file: &str,
        socket: &str,
        port: Option<u16>,
    ) -> Daemon {
        let w = work.display();
        OpenDkim::start(
            work,
            name,
            file,
            format!(
                "Mode v\nSocket {socket}\nUserID opendkim\nBackground no\nSyslog no\nTestPublicKeys {w}/keys\nPeerList 255.255.255.255\nInternalHosts 255.255.255.255\nAuthservID mx.test\n"
            ),
            "opendkim.sock",
            port,
        )
    }

    /// `message` with the DKIM-Signature field `signer` (an `OpenDkim::signer`) made for it
    /// in front, as Postfix would pass it on (CRLF line ends).
    pub async fn signed(signer: &Daemon, message: &[u8]) -> Vec<u8> {
        let mut conn = open(&signer.socket).await;
        let (actions, _) = send(&mut conn, &split(message)).await;
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
        let field = format!("DKIM-Signature:{dkim}\r\n")
            .replace('\n', "\r\n")
            .replace("\r\r\n", "\r\n");
        [field.as_bytes(), message].concat()
    }
}

/// A fresh ES256K key in a private key file (mode 0600) under `work`.
pub fn key_file(work: &Path, name: &str) -> (atsms_milter::format::crypto::SigningKey, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let key = atsms_milter::format::crypto::SigningKey::generate(
        atsms_milter::format::crypto::Alg::Es256k,
    )
    .unwrap();
    let path = work.join(name);
    std::fs::write(&path, key.to_pkcs8_pem()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    (key, path)
}

/// How the bench knows the daemon is up: its unix socket, or a loopback TCP port.
pub enum Ready {
    Socket(PathBuf),
    Port(u16),
}

/// Starts the release daemon (`serve --config conf`) and waits until it is ready.
pub fn start_daemon(name: &'static str, conf: &Path, ready: Ready) -> Daemon {
    let child = std::process::Command::new(crate::binary())
        .arg("serve")
        .arg("--config")
        .arg(conf)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let socket = match ready {
        Ready::Socket(path) => {
            wait_for_socket(&path);
            path
        }
        Ready::Port(port) => {
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(Instant::now() < deadline, "the daemon did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            PathBuf::new()
        }
    };
    Daemon {
        name,
        child,
        socket,
    }
}

/// One row of the load tables: `| size | connections | program | msgs/s | p50 ms | p99 ms | CPU s / 1000 msgs | peak RSS MiB |`.
pub fn print_row(size: &str, connections: usize, daemon: &Daemon, r: &Run) {
    println!(
        "| {size} | {connections} | {} | {:.0} | {:.2} | {:.2} | {:.3} | {:.1} |",
        daemon.name,
        r.rate,
        r.p50.as_secs_f64() * 1e3,
        r.p99.as_secs_f64() * 1e3,
        r.cpu_per_1000,
        r.peak_rss_kib as f64 / 1024.0
    );
}

/// The n-th DID of a load run: `did:plc:` and 24 base32 letters.
pub fn did(n: usize) -> String {
    let letters: String = format!("{n:0>24}")
        .bytes()
        .map(|d| (b'a' + (d - b'0')) as char)
        .collect();
    format!("did:plc:{letters}")
}
