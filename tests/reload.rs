//! SIGHUP re-reads the configuration: new connections get it, a connection in progress keeps
//! what it started with, a broken file is logged and changes nothing, and settings that need a
//! restart are reported.

use atsms_testkit as support;

use std::time::{Duration, Instant};

use indymilter_test::Status;
use support::daemon::Daemon;
use support::milter::{open_client, send};
use support::postfix::free_port;
use support::vectors::VectorWorld;

fn config(world: &VectorWorld, port: u16, policy: &str) -> String {
    format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\nreplay = false\n{policy}\n",
        world.resolver_toml()
    )
}

fn hup_and_wait(daemon: &Daemon, marker: &str, occurrences: usize) {
    unsafe { libc::kill(daemon.pid() as i32, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while daemon.log().matches(marker).count() < occurrences {
        assert!(
            Instant::now() < deadline,
            "no \"{marker}\" in:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn sighup_reloads_and_a_broken_file_changes_nothing() {
    let world = VectorWorld::start();
    let port = free_port();
    let daemon = Daemon::start(&config(&world, port, "on_fail = \"accept\""), port);
    let mut forged = world.sign_now(
        "did:plc:ofurdhfyhjhgomvfygxergep",
        b"From: alice@alice.example.com\r\nSubject: r\r\n\r\npay 100\r\n",
    );
    let at = forged.windows(3).position(|w| w == b"100").unwrap();
    forged[at] = b'9';

    let mut before = open_client(("127.0.0.1", port)).await;
    assert_eq!(
        send(&mut before, &forged).await.1,
        Status::Continue,
        "accepted and tagged"
    );

    std::fs::write(
        &daemon.config_path,
        config(&world, port, "on_fail = \"reject\""),
    )
    .unwrap();
    hup_and_wait(&daemon, "configuration reloaded", 1);
    let mut after = open_client(("127.0.0.1", port)).await;
    assert!(
        matches!(send(&mut after, &forged).await.1, Status::Reject { .. }),
        "new connections use the new file"
    );
    assert_eq!(
        send(&mut before, &forged).await.1,
        Status::Continue,
        "a connection in progress keeps its settings"
    );

    std::fs::write(&daemon.config_path, "[policy]\non_fail = \"explode\"\n").unwrap();
    hup_and_wait(
        &daemon,
        "reload failed, keeping the running configuration",
        1,
    );
    let log = daemon.log();
    assert!(log.contains("explode"), "{log}");
    let mut later = open_client(("127.0.0.1", port)).await;
    assert!(
        matches!(send(&mut later, &forged).await.1, Status::Reject { .. }),
        "still the last good configuration"
    );

    let moved = config(&world, port, "on_fail = \"reject\"")
        .replace(&format!("127.0.0.1:{port}"), "127.0.0.1:1");
    std::fs::write(&daemon.config_path, moved).unwrap();
    hup_and_wait(&daemon, "configuration reloaded", 2);
    assert!(
        daemon.log().contains(
            "reload: [milter] changed; this takes effect only when atsms-milter is restarted"
        ),
        "{}",
        daemon.log()
    );
    let mut still = open_client(("127.0.0.1", port)).await;
    assert!(
        matches!(send(&mut still, &forged).await.1, Status::Reject { .. }),
        "still listening where it was"
    );

    // The Exim scanner's and the signing service's listeners are fixed at start too.
    let more = format!(
        "{}
[exim]
listen = \"inet:127.0.0.1:1\"
[xrpc]
listen = \"inet:127.0.0.1:2\"
",
        config(&world, port, "on_fail = \"reject\"")
    );
    std::fs::write(&daemon.config_path, more).unwrap();
    hup_and_wait(&daemon, "configuration reloaded", 3);
    for what in ["[exim]", "[xrpc] or store.jti_file"] {
        assert!(
            daemon.log().contains(&format!(
                "reload: {what} changed; this takes effect only when atsms-milter is restarted"
            )),
            "{what}: {}",
            daemon.log()
        );
    }
}
