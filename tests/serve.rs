//! The daemon as an admin runs it: `serve` on a unix socket, clean shutdown on SIGTERM, and
//! `check-config` naming the key and line of an error.

use atsms_testkit as support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indymilter_test::{Status, TestConnection};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_atsms-milter"))
}

#[tokio::test]
async fn serve_on_a_unix_socket_and_stop_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("milter.sock");
    // A stale socket from an earlier run is replaced.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let config = dir.path().join("atsms-milter.toml");
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = \"unix:{}\"\nsocket_mode = \"0600\"\n\n[policy]\nauthserv_id = \"mx.test\"\n",
            socket.display()
        ),
    )
    .unwrap();
    let mut child = bin()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut conn = loop {
        if let Ok(conn) = TestConnection::configure().open_unix(&socket).await {
            break conn;
        }
        assert!(Instant::now() < deadline, "no socket");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let meta = std::fs::metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // A unix-socket client is not in trusted_networks: the message is judged.
    assert_eq!(
        conn.connect("localhost", indymilter_test::SocketInfo::Unknown)
            .await
            .unwrap(),
        Status::Noreply
    );
    conn.close().await.unwrap();

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "the socket is removed at exit");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        log.contains("SIGTERM received, shutting down") && log.contains("shut down"),
        "{log}"
    );
}

#[test]
fn check_config_prints_defaults_and_names_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[policy]\non_fail = \"reject\"\nauthserv_id = \"mx.test\"\n",
    )
    .unwrap();
    let out = bin()
        .arg("check-config")
        .arg("--config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let effective: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(effective["policy"]["on_fail"].as_str(), Some("reject"));
    assert_eq!(
        effective["policy"]["on_temperror"].as_str(),
        Some("tempfail")
    );
    assert_eq!(
        effective["milter"]["listen"].as_str(),
        Some("inet:127.0.0.1:8898")
    );
    assert_eq!(
        effective["resolver"]["plc_urls"][0].as_str(),
        Some("https://plc.directory")
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[policy]\non_fail = \"reject\"\n\n[resolver]\ntimeout = 5\nplc_url = \"x\"\n",
    )
    .unwrap();
    let out = bin()
        .arg("check-config")
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("plc_url") && err.contains("line 6"), "{err}");

    let missing = bin()
        .arg("check-config")
        .arg("--config")
        .arg(dir.path().join("none.toml"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
}

#[tokio::test]
async fn cache_stats_and_purge_through_the_control_socket() {
    let world = support::vectors::VectorWorld::start();
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("control.sock");
    let port = support::postfix::free_port();
    let config = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n\n[control]\nsocket = \"{}\"\n",
        world.resolver_toml(),
        control.display()
    );
    let daemon = support::daemon::Daemon::start(&config, port);
    // One message: its DID is resolved and cached (the vector is expired by now, but the key
    // is looked up before the expiry is judged).
    let mut conn = TestConnection::open(("127.0.0.1", port)).await.unwrap();
    conn.connect(
        "client.example",
        std::net::SocketAddr::from(([192, 0, 2, 1], 4000)),
    )
    .await
    .unwrap();
    conn.mail(["<a@b.example>"]).await.unwrap();
    conn.rcpt(["<bob@mx.example.net>"]).await.unwrap();
    let raw = std::fs::read(support::test_data("envelope").join("k256-multikey-pass.eml")).unwrap();
    let (fields, body) = support::milter::split_message(&raw);
    for (name, value) in fields {
        conn.header(name.as_str(), value.as_str()).await.unwrap();
    }
    conn.body(body).await.unwrap();
    let eom = conn.eom().await;
    assert!(eom.is_ok(), "{eom:?}\n{}", daemon.log());

    let cache = |args: &[&str]| {
        let out = bin()
            .arg("cache")
            .arg("--socket")
            .arg(&control)
            .args(args)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    let (code, stats) = cache(&["stats"]);
    assert_eq!(code, Some(0), "{}", daemon.log());
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["document_entries"], 1, "{stats}");
    assert_eq!(stats["documents"]["misses"], 1, "{stats}");
    assert_eq!(stats["documents"]["fetches"], 1, "{stats}");
    assert_eq!(
        cache(&["purge", "did:plc:ofurdhfyhjhgomvfygxergep"]),
        (
            Some(0),
            "purged did:plc:ofurdhfyhjhgomvfygxergep\n".to_string()
        )
    );
    assert_eq!(
        cache(&["purge", "did:plc:ofurdhfyhjhgomvfygxergep"]).1,
        "not cached: did:plc:ofurdhfyhjhgomvfygxergep\n"
    );
    let stats: serde_json::Value = serde_json::from_str(&cache(&["stats"]).1).unwrap();
    assert_eq!(stats["document_entries"], 0, "{stats}");
    let missing = bin()
        .args(["cache", "--socket"])
        .arg(dir.path().join("nope.sock"))
        .arg("stats")
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(75));
    drop(daemon);
    assert!(!control.exists(), "the control socket is removed at exit");
}

/// The test stands in for the syslog daemon: a datagram socket where /dev/log would be.
#[test]
fn syslog_destination_sends_mail_facility_lines() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("log");
    let syslog = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    syslog
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let port = support::postfix::free_port();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n\n[log]\ndestination = \"syslog\"\n"
        ),
    )
    .unwrap();
    struct KillOnDrop(std::process::Child);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = bin()
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("ATSMS_MILTER_SYSLOG_SOCKET", &socket_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let mut buf = [0u8; 2048];
    let n = syslog.recv(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]).to_string();
    // <22> = facility mail (2) * 8 + severity info (6).
    assert!(
        line.starts_with(&format!(
            "<22>atsms-milter[{}]: atsms-milter ",
            child.0.id()
        )),
        "{line}"
    );
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert!(child.0.wait().unwrap().success());
}
