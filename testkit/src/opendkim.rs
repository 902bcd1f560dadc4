//! A throwaway OpenDKIM (Debian's opendkim, installed by scripts/test) verifying on a
//! loopback port, with its own configuration under a temporary directory, in the foreground.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::postfix::free_port;

pub struct OpenDkim {
    pub port: u16,
    _dir: tempfile::TempDir,
    child: Child,
}

impl OpenDkim {
    /// Verifies and always adds its `Authentication-Results` field (`dkim=none` for unsigned
    /// mail) with `authserv_id`.
    pub fn start(authserv_id: &str) -> OpenDkim {
        let dir = crate::public_tempdir();
        let port = free_port();
        let conf = dir.path().join("opendkim.conf");
        std::fs::write(
            &conf,
            format!(
                "Mode v\nSocket inet:{port}@127.0.0.1\nUserID opendkim\nBackground no\nSyslog no\nAuthservID {authserv_id}\nAlwaysAddARHeader yes\nPeerList 255.255.255.255\nInternalHosts 255.255.255.255\n"
            ),
        )
        .unwrap();
        let child = Command::new("/usr/sbin/opendkim")
            .arg("-x")
            .arg(&conf)
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("opendkim (scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "OpenDKIM did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        OpenDkim {
            port,
            _dir: dir,
            child,
        }
    }
}

impl Drop for OpenDkim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
