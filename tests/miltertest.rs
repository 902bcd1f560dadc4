//! A second, independent milter client: OpenDKIM's miltertest runs a Lua script against the
//! real daemon.

use atsms_testkit as support;

use std::process::Command;

use support::daemon::Daemon;
use support::postfix::free_port;
use support::vectors::VectorWorld;

#[test]
fn miltertest_script_passes() {
    let world = VectorWorld::start();
    let port = free_port();
    let config = format!(
        "[milter]\nlisten = \"inet:127.0.0.1:{port}\"\n\n{}\n[policy]\nauthserv_id = \"mx.test\"\ntrusted_networks = []\n",
        world.resolver_toml()
    );
    let daemon = Daemon::start(&config, port);
    let message = b"From: Alice <alice@alice.example.com>\r\nTo: <bob@mx.example.net>\r\nSubject: miltertest\r\n\r\nHello from miltertest.\r\n";
    let signed = world.sign_now("did:plc:ofurdhfyhjhgomvfygxergep", message);
    let signed = String::from_utf8(signed).unwrap();
    // The field value as a milter receives it: after the colon, folds as bare LF.
    let field = signed.split("\r\nFrom:").next().unwrap();
    let value = field
        .strip_prefix("AT-SMS-Signature:")
        .unwrap()
        .replace("\r\n", "\n");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/miltertest/verify.lua");
    let output = Command::new("miltertest")
        .args(["-D", &format!("port={port}"), "-D", "authserv=mx.test"])
        .arg("-D")
        .arg(format!("sig={value}"))
        .args(["-s", script])
        .output()
        .expect("miltertest is not installed: run scripts/test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "miltertest failed:\n{stdout}\n{stderr}\ndaemon log:\n{}",
        daemon.log()
    );
    assert!(
        stdout.contains("inserted: Authentication-Results: mx.test;"),
        "{stdout}"
    );
    let log = daemon.log_with("MTQUEUE1: atsms=pass");
    assert!(log.contains("MTQUEUE1: atsms=pass"), "{log}");
}
