//! A throwaway Dovecot that only authenticates (SASL for Postfix's `smtpd_sasl_type =
//! dovecot`): its own config, run and state directories and auth socket under a temporary
//! directory, `dovecot -F -c FILE`, users from a passwd-file. Never the system instance.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct DovecotAuth {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl DovecotAuth {
    /// Starts Dovecot's auth service for `users` (login, password).
    pub fn start(users: &[(&str, &str)]) -> DovecotAuth {
        assert!(
            Path::new("/usr/sbin/dovecot").exists(),
            "Dovecot is not installed: run scripts/test"
        );
        let dir = crate::public_tempdir();
        let root = dir.path();
        let passwd: String = users
            .iter()
            .map(|(user, password)| format!("{user}:{{PLAIN}}{password}\n"))
            .collect();
        std::fs::write(root.join("passwd"), passwd).unwrap();
        let r = root.display();
        let conf = format!(
            "protocols =
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
ssl = no
auth_mechanisms = plain login
disable_plaintext_auth = no
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {r}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={r}/home
}}
service auth {{
  unix_listener {r}/auth-client {{
    mode = 0666
  }}
}}
"
        );
        let conf_path = root.join("dovecot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new("/usr/sbin/dovecot")
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dovecot -F");
        let dovecot = DovecotAuth {
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !dovecot.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "Dovecot did not start:\n{}",
                dovecot.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dovecot
    }

    /// The auth socket, for `smtpd_sasl_path`.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("auth-client")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for DovecotAuth {
    fn drop(&mut self) {
        // SIGTERM: the master stops its auth, log, config and anvil processes, then itself.
        if let Some(child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            crate::reap(child, Duration::from_secs(10));
        }
    }
}
