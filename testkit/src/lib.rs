//! The project's test kit, shared by the integration tests (tests/) and the load drivers
//! (load/): throwaway instances of the real mail software on loopback (Postfix, Exim, Dovecot,
//! OpenDKIM, rspamd, Redis), the daemon under test, clients for its protocols, and loopback
//! stand-ins for what is outside this machine's reach (a PLC directory and PDS over HTTP,
//! DNS) that speak the real protocols to the real client code.
#![allow(dead_code)]
// The daemon's futures (an identity lookup carried into its own task for its client's
// turn) are laid out deeper than the default limit of 128.
#![recursion_limit = "256"]

pub mod daemon;
pub mod device;
pub mod dns;
pub mod dovecot;
pub mod exim;
pub mod http;
pub mod ids;
pub mod lmtp;
pub mod load;
pub mod milter;
pub mod milter_wire;
pub mod opendkim;
pub mod plc;
pub mod postfix;
pub mod redis;
pub mod rspamd;
pub mod signing;
pub mod socketmap;
pub mod vectors;

use std::path::{Path, PathBuf};

/// The project's root (this kit lives in its `testkit/`).
pub fn project() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lies in the project")
        .to_path_buf()
}

/// The `atsms-milter` binary Cargo built beside the running test or load driver
/// (`target/PROFILE/`, the test itself being in `target/PROFILE/deps/`), or the one named by
/// `ATSMS_MILTER_BIN`.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ATSMS_MILTER_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("the running executable");
    let mut dir = exe.parent().expect("a directory");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("the profile directory");
    }
    let binary = dir.join("atsms-milter");
    assert!(
        binary.exists(),
        "no {} (build it first: cargo build [--release])",
        binary.display()
    );
    binary
}

/// `tests/data/<sub>`: the project's own copy of the vectors (tests/data/SOURCES.md).
pub fn test_data(sub: &str) -> PathBuf {
    project().join("tests/data").join(sub)
}

/// A temporary directory other users may enter (mode 0755): MTAs running as their own users
/// (postfix, nobody) reach sockets and Maildirs below it.
pub fn public_tempdir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// Waits up to `timeout` for a child that was asked to stop, then kills it; never leaves it
/// behind.
pub fn reap(mut child: std::process::Child, timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `message` with swaks (a real SMTP client) to 127.0.0.1:`port`, the message file kept
/// in `dir`; returns its transcript and success.
pub fn swaks(
    dir: &std::path::Path,
    port: u16,
    from: &str,
    to: &str,
    message: &[u8],
    options: &[&str],
) -> (String, bool) {
    let file = dir.join(format!("swaks-{}.eml", postfix::free_port()));
    std::fs::write(&file, message).unwrap();
    let output = std::process::Command::new("swaks")
        .args([
            "--server",
            &format!("127.0.0.1:{port}"),
            "--from",
            from,
            "--to",
            to,
        ])
        .args(["--helo", "client.example", "--data"])
        .arg(&file)
        .args(options)
        .output()
        .expect("swaks is not installed: run scripts/test");
    let transcript = String::from_utf8_lossy(&output.stdout).into_owned();
    (transcript, output.status.success())
}

/// A file of the project's contrib/ directory (the files admins copy, tested as they are).
pub fn contrib(path: &str) -> PathBuf {
    project().join("contrib").join(path)
}
